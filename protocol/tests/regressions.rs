//! Regression tests for bugs found while hardening the crate. Each test failed before its fix.

use protocol::frame::{Frame, MAX_SWARM_LEN};
use protocol::manifest::{CHUNK_SIZE, Manifest, ManifestError, SegmentManifest, chunk_range};
use protocol::signaling::{MAX_SIGNAL_LEN, MAX_SWARM_ID_LEN, ServerMsg, SignalingError, swarm_id};

/// `swarm_id` kept ids of exactly 256 bytes, but a `Hello` frame carries at most 255: the id was
/// cut, never matched the receiver's, and every peer connection in that swarm failed.
#[test]
fn every_swarm_id_fits_in_a_hello_frame() {
    assert_eq!(MAX_SWARM_ID_LEN, MAX_SWARM_LEN);
    for len in 250..=260 {
        // "x|r" layout: url of len - 2 bytes, '|', one-byte rendition.
        let id = swarm_id(&"x".repeat(len - 2), "r");
        assert!(id.len() <= MAX_SWARM_LEN, "{len}: {}", id.len());
        let hello = Frame::Hello {
            swarm: id.clone(),
            max_inflight: 4,
            instance: Some(7),
        };
        assert_eq!(Frame::decode(&hello.encode()), Ok(hello), "{len}");
    }
    // Ids that fit are kept verbatim, longer ones hashed.
    assert_eq!(swarm_id(&"x".repeat(253), "r").len(), 255);
    assert!(swarm_id(&"x".repeat(254), "r").starts_with("sha256:"));
}

/// `encode` cut an over-long Hello swarm at byte 255 even inside a UTF-8 sequence, producing a
/// frame that its own `decode` rejected as `BadUtf8`.
#[test]
fn over_long_hello_swarm_is_cut_at_a_char_boundary() {
    // 254 ASCII bytes then a 2-byte char straddling the limit.
    let swarm = format!("{}é", "a".repeat(254));
    let bytes = Frame::Hello {
        swarm,
        max_inflight: 1,
        instance: Some(2),
    }
    .encode();
    assert_eq!(
        Frame::decode(&bytes),
        Ok(Frame::Hello {
            swarm: "a".repeat(254),
            max_inflight: 1,
            instance: Some(2),
        })
    );
}

/// `chunk_range` returned `start > end` past the last chunk (and overflowed for huge
/// indices), so `chunk_len` on a hand-built manifest underflowed.
#[test]
fn chunk_range_past_the_end_is_empty() {
    assert_eq!(chunk_range(10, 1), (10, 10));
    assert_eq!(chunk_range(10, usize::MAX), (10, 10));
    assert_eq!(
        chunk_range(CHUNK_SIZE as u64 + 1, 1),
        (CHUNK_SIZE as u64, CHUNK_SIZE as u64 + 1)
    );
    // More hashes than the length needs (only possible when built by hand).
    let seg = SegmentManifest {
        seq: 1,
        uri: String::new(),
        len: 10,
        sha256: [0; 32],
        chunks: vec![[0; 32]; 2],
    };
    assert_eq!(seg.chunk_len(1), 0);
    assert!(!seg.verify_chunk(1, &[]));
}

/// A manifest could list the same media sequence number twice with different hashes; lookups
/// by `seq` then depend on the implementation.
#[test]
fn manifest_with_duplicate_seq_is_rejected() {
    let a = SegmentManifest::compute(5, "a.ts", b"one");
    let b = SegmentManifest::compute(5, "b.ts", b"two");
    let text = Manifest {
        segments: vec![a, b],
    }
    .to_json();
    assert_eq!(
        Manifest::from_json(&text),
        Err(ManifestError::DuplicateSeq { seq: 5 })
    );
}

/// `joined`/`slot` with `slots: 0` decoded fine, and a client computing `seq % slots` panicked.
#[test]
fn slot_out_of_range_is_rejected() {
    for (slot, slots) in [(0, 0), (3, 3), (9, 2)] {
        for json in [
            format!(
                r#"{{"v":1,"type":"joined","swarm":"s","peers":[],"slot":{slot},"slots":{slots}}}"#
            ),
            format!(r#"{{"v":1,"type":"slot","swarm":"s","slot":{slot},"slots":{slots}}}"#),
        ] {
            assert!(
                matches!(
                    ServerMsg::from_json(&json, MAX_SIGNAL_LEN),
                    Err(SignalingError::Bad(_))
                ),
                "{json}"
            );
        }
    }
    let ok = r#"{"v":1,"type":"slot","swarm":"s","slot":2,"slots":3}"#;
    assert!(ServerMsg::from_json(ok, MAX_SIGNAL_LEN).is_ok());
}

/// A `Hello` from a peer of before the `instance` field (no trailing 8 bytes) still decodes,
/// as no instance (never taken for a duplicate).
#[test]
fn hello_without_instance_decodes_as_unknown() {
    let bytes = [1u8, 1, 1, b's', 0, 8];
    assert_eq!(
        Frame::decode(&bytes),
        Ok(Frame::Hello {
            swarm: "s".into(),
            max_inflight: 8,
            instance: None,
        })
    );
}
