//! Fuzz entry points, shared by the cargo-fuzz targets in `protocol/fuzz/` and by
//! `tests/fuzz_corpus.rs`, which replays the committed corpus under `cargo test`.
//!
//! Each function feeds untrusted bytes to a decoder and panics (the failure signal of a fuzzer)
//! only when an invariant breaks: a decoder panic, or a decoded value that does not re-encode
//! consistently. Not part of the stable API.

use bytes::Bytes;

use crate::frame::{Frame, MAX_FRAME_LEN};
use crate::manifest::{Manifest, chunk_count};
use crate::signaling::{ClientMsg, MAX_SIGNAL_LEN, ServerMsg};

/// Header bytes of a `Chunk` frame before its payload (version, type, req_id, seq, index).
const CHUNK_HEADER_LEN: usize = 16;

/// Frames: decoding never panics; a decoded frame re-encodes to exactly the input (the encoding
/// is canonical); every strict prefix of a valid frame is rejected, except a `Chunk` cut inside
/// its payload, which is a valid shorter chunk (the manifest check rejects its length).
pub fn fuzz_frame(data: &[u8]) {
    let buf = Bytes::copy_from_slice(data);
    let decoded = Frame::decode(data);
    assert_eq!(
        decoded,
        Frame::decode_bytes(buf.clone()),
        "decode and decode_bytes disagree"
    );
    let Ok(frame) = decoded else { return };
    assert!(
        data.len() <= MAX_FRAME_LEN,
        "accepted a frame over the size limit"
    );
    assert_eq!(
        &frame.encode()[..],
        data,
        "decoded {} frame re-encodes differently",
        frame.kind()
    );
    for cut in 0..data.len() {
        // `slice` shares the buffer: checking every cut stays linear in copies.
        let prefix = Frame::decode_bytes(buf.slice(..cut));
        match (&frame, prefix) {
            (
                Frame::Chunk {
                    req_id,
                    seq,
                    index,
                    data: payload,
                },
                Ok(got),
            ) if cut >= CHUNK_HEADER_LEN => {
                let want = Frame::Chunk {
                    req_id: *req_id,
                    seq: *seq,
                    index: *index,
                    data: payload.slice(..cut - CHUNK_HEADER_LEN),
                };
                assert_eq!(got, want, "cut chunk frame decodes to something else");
            }
            // The instance is optional on the wire (older peers): the Hello without it.
            (
                Frame::Hello {
                    swarm,
                    max_inflight,
                    instance: Some(_),
                },
                Ok(got),
            ) if cut == buf.len() - 8 => {
                let want = Frame::Hello {
                    swarm: swarm.clone(),
                    max_inflight: *max_inflight,
                    instance: None,
                };
                assert_eq!(
                    got, want,
                    "hello without its instance decodes to something else"
                );
            }
            (_, Ok(got)) => panic!(
                "{cut}-byte prefix of a {} frame decodes: {got:?}",
                frame.kind()
            ),
            (_, Err(_)) => {}
        }
    }
}

/// Signaling: UTF-8 input parsed as both a client and a server message. Decoding never panics;
/// an accepted message re-encodes to JSON that decodes to the same message, and re-encoding that
/// is stable (byte-identical).
pub fn fuzz_signaling(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMsg::from_json(text, MAX_SIGNAL_LEN) {
        Ok(msg) => {
            let json = msg.to_json();
            let back = ClientMsg::from_json(&json, usize::MAX);
            assert_eq!(
                back.as_ref(),
                Ok(&msg),
                "client message does not round-trip: {json}"
            );
            assert_eq!(msg.to_json(), json);
            let _ = msg.kind();
        }
        Err(e) => {
            let _ = e.code();
        }
    }
    match ServerMsg::from_json(text, MAX_SIGNAL_LEN) {
        Ok(msg) => {
            let json = msg.to_json();
            let back = ServerMsg::from_json(&json, usize::MAX);
            assert_eq!(
                back.as_ref(),
                Ok(&msg),
                "server message does not round-trip: {json}"
            );
            let _ = msg.kind();
        }
        Err(e) => {
            let _ = e.code();
        }
    }
}

/// Manifest: UTF-8 input parsed as a JSON sidecar. Decoding never panics; an accepted manifest
/// is internally consistent (chunk counts and lengths) and round-trips through `to_json`.
pub fn fuzz_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::from_json(text) else {
        return;
    };
    for seg in &manifest.segments {
        assert_eq!(
            seg.chunk_count(),
            chunk_count(seg.len),
            "segment {}",
            seg.seq
        );
        let total: u64 = (0..seg.chunk_count())
            .map(|i| seg.chunk_len(i) as u64)
            .sum();
        assert_eq!(
            total, seg.len,
            "chunk lengths of segment {} do not add up",
            seg.seq
        );
        // Out-of-range indices and garbage data are rejected, not a panic.
        assert!(!seg.verify_chunk(seg.chunk_count(), &[]));
        let _ = seg.verify_chunk(0, data);
    }
    let json = manifest.to_json();
    assert_eq!(
        Manifest::from_json(&json).as_ref(),
        Ok(&manifest),
        "manifest does not round-trip"
    );
}
