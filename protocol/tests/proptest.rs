//! Property tests: round trips within the documented limits, hostile input never panics, cut
//! frames are rejected, `HaveEntry` bitmap invariants.
//!
//! Case counts are kept small enough for `cargo test -p protocol` to stay fast in debug builds;
//! the fuzz targets (`protocol/fuzz`) explore the same properties for longer.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use protocol::frame::{
    AbsentReason, DecodeError, Frame, HaveEntry, MAX_CHUNKS, MAX_DROP_ENTRIES, MAX_FRAME_LEN,
    MAX_HAVE_ENTRIES, MAX_SWARM_LEN,
};
use protocol::fuzzing::{fuzz_frame, fuzz_manifest, fuzz_signaling};
use protocol::manifest::{MAX_SEGMENT_LEN, Manifest, SegmentManifest, chunk_count};
use protocol::signaling::{
    ClientMsg, ErrorCode, IceServer, MAX_SIGNAL_LEN, ServerMsg, SignalData, StatsReport,
};

const CHUNK_HEADER_LEN: usize = 16;

// ---------------------------------------------------------------------------------------------
// Frames

/// A bitmap of `ceil(n / 8)` random bytes with the padding bits cleared.
fn have_entry(max_chunks: u16) -> impl Strategy<Value = HaveEntry> {
    (any::<u64>(), 0..=max_chunks).prop_flat_map(|(seq, n)| {
        vec(any::<u8>(), (n as usize).div_ceil(8)).prop_map(move |mut bm| {
            if !n.is_multiple_of(8)
                && let Some(last) = bm.last_mut()
            {
                *last &= (1u8 << (n % 8)) - 1;
            }
            HaveEntry {
                seq,
                chunk_count: n,
                bitmap: Bytes::from(bm),
            }
        })
    })
}

fn swarm() -> impl Strategy<Value = String> {
    prop_oneof![
        // Any Unicode, up to 63 chars (at most 252 bytes).
        vec(any::<char>(), 0..64).prop_map(String::from_iter),
        // Exactly the limit.
        Just("s".repeat(MAX_SWARM_LEN)),
    ]
}

fn absent_reason() -> impl Strategy<Value = AbsentReason> {
    prop_oneof![
        Just(AbsentReason::NotFound),
        Just(AbsentReason::Busy),
        Just(AbsentReason::Refused)
    ]
}

/// Every frame variant, within the limits of `docs/PROTOCOL.md` and the 64 KiB frame size.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (swarm(), any::<u16>(), any::<Option<u64>>()).prop_map(
            |(swarm, max_inflight, instance)| {
                Frame::Hello {
                    swarm,
                    max_inflight,
                    instance,
                }
            }
        ),
        // Few entries with up to the full 4096 chunks (at most 8 * 522 bytes)...
        vec(have_entry(MAX_CHUNKS), 0..8).prop_map(|entries| Frame::Have { entries }),
        // ...or up to the full 512 entries of small segments (at most 512 * 18 bytes).
        vec(have_entry(64), 0..=MAX_HAVE_ENTRIES).prop_map(|entries| Frame::Have { entries }),
        vec(any::<u64>(), 0..=MAX_DROP_ENTRIES).prop_map(|seqs| Frame::Drop { seqs }),
        (any::<u32>(), any::<u64>(), 0..MAX_CHUNKS)
            .prop_flat_map(|(req_id, seq, first)| {
                (Just(req_id), Just(seq), Just(first), 1..=MAX_CHUNKS - first)
            })
            .prop_map(|(req_id, seq, first, count)| Frame::Request {
                req_id,
                seq,
                first,
                count
            }),
        (
            any::<u32>(),
            any::<u64>(),
            0..MAX_CHUNKS,
            prop_oneof![
                vec(any::<u8>(), 0..=64),
                vec(any::<u8>(), 0..=MAX_FRAME_LEN - CHUNK_HEADER_LEN),
            ],
        )
            .prop_map(|(req_id, seq, index, data)| Frame::Chunk {
                req_id,
                seq,
                index,
                data: Bytes::from(data),
            }),
        any::<u32>().prop_map(|req_id| Frame::Cancel { req_id }),
        (any::<u32>(), absent_reason())
            .prop_map(|(req_id, reason)| Frame::Absent { req_id, reason }),
        (any::<u32>(), any::<u16>()).prop_map(|(uplink_kbps, wait_ms)| Frame::Status {
            uplink_kbps,
            wait_ms
        }),
    ]
}

fn type_byte(f: &Frame) -> u8 {
    match f {
        Frame::Hello { .. } => 1,
        Frame::Have { .. } => 2,
        Frame::Drop { .. } => 3,
        Frame::Request { .. } => 4,
        Frame::Chunk { .. } => 5,
        Frame::Cancel { .. } => 6,
        Frame::Absent { .. } => 7,
        Frame::Status { .. } => 8,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn frame_round_trip(f in frame()) {
        let bytes = f.encode();
        prop_assert!(bytes.len() <= MAX_FRAME_LEN, "{} bytes", bytes.len());
        prop_assert_eq!(&bytes[..2], &[1, type_byte(&f)]);
        prop_assert_eq!(Frame::decode(&bytes), Ok(f.clone()));
        prop_assert_eq!(Frame::decode_bytes(bytes), Ok(f));
    }

    /// Every strict prefix is an error, except a chunk cut inside its payload (the data channel
    /// delivers whole messages; the manifest check rejects the short chunk).
    #[test]
    fn cut_frames_are_rejected(f in frame()) {
        let bytes = f.encode();
        for cut in 0..bytes.len() {
            match Frame::decode_bytes(bytes.slice(..cut)) {
                Err(_) => {}
                Ok(Frame::Chunk { data, .. }) if cut >= CHUNK_HEADER_LEN => {
                    let is_chunk = matches!(f, Frame::Chunk { .. });
                    prop_assert!(is_chunk, "only chunks have a valid prefix");
                    prop_assert_eq!(data.len(), cut - CHUNK_HEADER_LEN);
                }
                // The instance is optional on the wire: the Hello without it.
                Ok(Frame::Hello { instance: None, .. })
                    if cut + 8 == bytes.len()
                        && matches!(f, Frame::Hello { instance: Some(_), .. }) => {}
                Ok(other) => prop_assert!(false, "cut at {}/{}: {:?}", cut, bytes.len(), other),
            }
        }
    }

    /// One byte too many: trailing garbage, except for chunks whose payload runs to the end.
    #[test]
    fn extended_frames_are_rejected(f in frame(), extra in any::<u8>()) {
        let mut bytes = f.encode().to_vec();
        bytes.push(extra);
        let got = Frame::decode(&bytes);
        if matches!(f, Frame::Chunk { .. }) && bytes.len() <= MAX_FRAME_LEN {
            prop_assert!(got.is_ok());
        } else if bytes.len() > MAX_FRAME_LEN {
            prop_assert_eq!(got, Err(DecodeError::TooLong(bytes.len())));
        } else {
            prop_assert_eq!(got, Err(DecodeError::Trailing(1)));
        }
    }

    /// Arbitrary bytes, biased towards a valid header so the decoders get past the first check.
    #[test]
    fn arbitrary_bytes_never_panic(
        header in prop_oneof![Just(vec![]), (0u8..=8).prop_map(|t| vec![1, t])],
        body in vec(any::<u8>(), 0..256),
    ) {
        let mut data = header;
        data.extend_from_slice(&body);
        // Panics if decoding panics or an accepted frame does not re-encode to `data`.
        fuzz_frame(&data);
    }

    /// Valid frames with one byte changed: decode to an error or to a frame that re-encodes to
    /// exactly the changed bytes.
    #[test]
    fn mutated_frames_never_panic(f in frame(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = f.encode().to_vec();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        fuzz_frame(&bytes);
    }

    #[test]
    fn have_entry_invariants(n in 0..=MAX_CHUNKS, held in vec(any::<bool>(), MAX_CHUNKS as usize)) {
        let e = HaveEntry::from_fn(3, n, |i| held[i]);
        let n = n as usize;
        prop_assert_eq!(e.bitmap.len(), n.div_ceil(8));
        for (i, &h) in held[..n].iter().enumerate() {
            prop_assert_eq!(e.has(i), h);
            // LSB first: chunk i is bit i % 8 of byte i / 8.
            prop_assert_eq!(e.bitmap[i / 8] >> (i % 8) & 1 == 1, h);
        }
        prop_assert!(!e.has(n) && !e.has(n + 8) && !e.has(usize::MAX));
        if !n.is_multiple_of(8) {
            prop_assert_eq!(e.bitmap[n / 8] >> (n % 8), 0, "padding bits must be zero");
        }
        prop_assert_eq!(e.is_complete(), held[..n].iter().all(|&b| b));

        let c = HaveEntry::complete(3, n as u16);
        prop_assert!(c.is_complete());
        prop_assert_eq!(&c, &HaveEntry::from_fn(3, n as u16, |_| true));

        // Both survive the wire.
        let f = Frame::Have { entries: vec![e, c] };
        prop_assert_eq!(Frame::decode(&f.encode()), Ok(f));
    }
}

// ---------------------------------------------------------------------------------------------
// Signaling

const ERROR_CODES: [ErrorCode; 12] = ErrorCode::ALL;

/// Any Unicode text, including characters JSON must escape.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\/\u{0}-\u{1f}\u{7f}\u{2028}\u{fffd}a]{0,8}"
    ]
}

fn signal_data() -> impl Strategy<Value = SignalData> {
    prop_oneof![
        text().prop_map(|sdp| SignalData::Offer { sdp }),
        text().prop_map(|sdp| SignalData::Answer { sdp }),
        (
            text(),
            proptest::option::of(text()),
            proptest::option::of(any::<u16>())
        )
            .prop_map(
                |(candidate, sdp_mid, sdp_m_line_index)| SignalData::Candidate {
                    candidate,
                    sdp_mid,
                    sdp_m_line_index
                }
            ),
    ]
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        (text(), proptest::option::of(text()))
            .prop_map(|(swarm, token)| ClientMsg::Join { swarm, token }),
        text().prop_map(|swarm| ClientMsg::WantPeers { swarm }),
        text().prop_map(|swarm| ClientMsg::Leave { swarm }),
        (text(), any::<u64>(), signal_data()).prop_map(|(swarm, to, data)| ClientMsg::Signal {
            swarm,
            to,
            data
        }),
        (text(), any::<(u64, u64, u64, u32, u32, u32)>()).prop_map(|(swarm, s)| ClientMsg::Stats {
            swarm,
            stats: StatsReport {
                http_bytes: s.0,
                p2p_bytes: s.1,
                uploaded_bytes: s.2,
                stalls: s.3,
                peers: s.4,
                integrity_failures: s.5,
            },
        }),
        Just(ClientMsg::Ping),
    ]
}

/// `(slot, slots)` with `slot < slots`, as the decoder requires.
fn slot() -> impl Strategy<Value = (u32, u32)> {
    (1..=u32::MAX).prop_flat_map(|slots| (0..slots, Just(slots)))
}

fn ice_server() -> impl Strategy<Value = IceServer> {
    (
        vec(text(), 1..3),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(urls, username, credential)| IceServer {
            urls,
            username,
            credential,
        })
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (any::<(u64, u32)>(), vec(ice_server(), 0..3)).prop_map(
            |((peer_id, heartbeat_ms), ice_servers)| ServerMsg::Welcome {
                peer_id,
                heartbeat_ms,
                ice_servers,
            }
        ),
        (text(), vec(any::<u64>(), 0..16), slot()).prop_map(|(swarm, peers, (slot, slots))| {
            ServerMsg::Joined {
                swarm,
                peers,
                slot,
                slots,
            }
        }),
        (text(), vec(any::<u64>(), 0..16))
            .prop_map(|(swarm, peers)| ServerMsg::Peers { swarm, peers }),
        (text(), slot()).prop_map(|(swarm, (slot, slots))| ServerMsg::Slot { swarm, slot, slots }),
        (text(), any::<u64>(), signal_data()).prop_map(|(swarm, from, data)| ServerMsg::Signal {
            swarm,
            from,
            data
        }),
        (text(), any::<u64>()).prop_map(|(swarm, peer)| ServerMsg::PeerLeft { swarm, peer }),
        (
            proptest::sample::select(&ERROR_CODES[..]),
            text(),
            proptest::option::of(text())
        )
            .prop_map(|(code, message, swarm)| ServerMsg::Error {
                code,
                message,
                swarm
            }),
        Just(ServerMsg::Pong),
        any::<u32>().prop_map(|after_ms| ServerMsg::Reconnect { after_ms }),
    ]
}

/// The envelope every message carries: an object with integer `"v": 1` first and its `"type"`.
fn check_envelope(json: &str, kind: &str) -> Result<(), TestCaseError> {
    let prefix = format!(r#"{{"v":1,"type":"{kind}""#);
    prop_assert!(json.starts_with(&prefix), "{}", json);
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&value["v"], &serde_json::json!(1));
    prop_assert_eq!(&value["type"], &serde_json::json!(kind));
    Ok(())
}

/// Replaces `text[start..start+len]` (char-aligned) with `with`: structure-aware garbage.
fn splice(text: &str, start: prop::sample::Index, len: usize, with: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let s = start.index(chars.len() + 1);
    let e = (s + len).min(chars.len());
    chars[..s]
        .iter()
        .copied()
        .chain(with.chars())
        .chain(chars[e..].iter().copied())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn client_msg_round_trip(m in client_msg()) {
        let json = m.to_json();
        check_envelope(&json, m.kind())?;
        prop_assert_eq!(ClientMsg::from_json(&json, usize::MAX), Ok(m));
    }

    #[test]
    fn server_msg_round_trip(m in server_msg()) {
        let json = m.to_json();
        check_envelope(&json, m.kind())?;
        prop_assert_eq!(ServerMsg::from_json(&json, usize::MAX), Ok(m));
    }

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        fuzz_signaling(s.as_bytes());
    }

    /// Valid messages with a piece replaced by JSON-ish garbage: errors or consistent values.
    #[test]
    fn mutated_messages_never_panic(
        m in prop_oneof![client_msg().prop_map(|m| m.to_json()), server_msg().prop_map(|m| m.to_json())],
        start in any::<prop::sample::Index>(),
        len in 0usize..8,
        with in "[{}\\[\\]\":,0-9a-z\\\\ -]{0,6}",
    ) {
        fuzz_signaling(splice(&m, start, len, &with).as_bytes());
    }

    /// Messages over the limit are refused before parsing, with `too_large`.
    #[test]
    fn size_limit(m in client_msg(), max in 0usize..64) {
        let json = m.to_json();
        let got = ClientMsg::from_json(&json, max);
        if json.len() > max {
            prop_assert_eq!(got.map_err(|e| e.code()), Err(ErrorCode::TooLarge));
        } else {
            prop_assert!(got.is_ok());
        }
        prop_assert!(MAX_SIGNAL_LEN >= 64 * 1024);
    }
}

// ---------------------------------------------------------------------------------------------
// Manifest

fn segment() -> impl Strategy<Value = (String, u64, [u8; 32])> {
    (
        text(),
        prop_oneof![0u64..=200_000, Just(MAX_SEGMENT_LEN), 0..=MAX_SEGMENT_LEN],
        any::<[u8; 32]>(),
    )
}

/// Manifests with unique seqs and random (not computed) hashes: only the encoding is tested.
fn manifest() -> impl Strategy<Value = Manifest> {
    (
        proptest::collection::btree_set(any::<u64>(), 0..6),
        vec(segment(), 6),
        any::<u8>(),
    )
        .prop_map(|(seqs, segs, fill)| Manifest {
            segments: seqs
                .into_iter()
                .zip(segs)
                .map(|(seq, (uri, len, sha256))| SegmentManifest {
                    seq,
                    uri,
                    len,
                    sha256,
                    chunks: (0..chunk_count(len))
                        .map(|i| [fill ^ (i as u8); 32])
                        .collect(),
                })
                .collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn manifest_round_trip(m in manifest()) {
        let json = m.to_json();
        prop_assert_eq!(Manifest::from_json(&json), Ok(m));
    }

    #[test]
    fn arbitrary_manifest_text_never_panics(s in any::<String>()) {
        fuzz_manifest(s.as_bytes());
    }

    /// Small valid manifests with a piece replaced: errors or consistent values.
    #[test]
    fn mutated_manifests_never_panic(
        data in vec(vec(any::<u8>(), 0..40_000), 0..3),
        start in any::<prop::sample::Index>(),
        len in 0usize..8,
        with in "[{}\\[\\]\":,0-9a-zA-Z+/=\\\\ -]{0,6}",
    ) {
        let m = Manifest {
            segments: data.iter().enumerate().map(|(i, d)| SegmentManifest::compute(i as u64, "s.ts", d)).collect(),
        };
        fuzz_manifest(splice(&m.to_json(), start, len, &with).as_bytes());
    }

    /// Computed entries verify their own chunks and nothing else.
    #[test]
    fn computed_manifest_verifies_its_chunks(data in vec(any::<u8>(), 0..50_000), flip in any::<prop::sample::Index>()) {
        let seg = SegmentManifest::compute(1, "s", &data);
        prop_assert_eq!(seg.chunk_count(), chunk_count(data.len() as u64));
        for (i, c) in data.chunks(protocol::CHUNK_SIZE).enumerate() {
            prop_assert!(seg.verify_chunk(i, c));
        }
        prop_assert!(seg.verify_segment(&data));
        if !data.is_empty() {
            let mut bad = data.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1;
            let chunk = i / protocol::CHUNK_SIZE;
            let (s, e) = seg.chunk_range(chunk);
            prop_assert!(!seg.verify_chunk(chunk, &bad[s as usize..e as usize]));
            prop_assert!(!seg.verify_segment(&bad));
        }
    }
}
