//! Wire fixtures shared by `wire_fixtures.rs` (which pins them) and `fuzz_corpus.rs` (which
//! checks they are in the fuzz seed corpus). The hex and JSON strings were written by hand from
//! `docs/PROTOCOL.md`, not captured from the encoder, so a change to the encoder fails the tests.
#![allow(dead_code)] // each test crate uses part of this module

use bytes::Bytes;
use protocol::frame::{AbsentReason, Frame, HaveEntry};
use protocol::signaling::{ClientMsg, ErrorCode, IceServer, ServerMsg, SignalData, StatsReport};

/// `(frame, exact wire bytes as hex)`; one or more per frame type.
pub fn frame_fixtures() -> Vec<(Frame, &'static str)> {
    vec![
        (
            Frame::Hello {
                swarm: "live|720p".into(),
                max_inflight: 8,
                instance: Some(0x0102_0304_0506_0708),
            },
            // ver type len "live|720p"         max_inflight instance
            "01 01 09 6c6976657c37323070 0008 0102030405060708",
        ),
        (
            Frame::Have {
                entries: vec![
                    // 10 chunks, all held: 8 bits + 2 bits, padding bits zero.
                    HaveEntry::complete(0x0102_0304_0506_0708, 10),
                    // 3 chunks, only chunk 1 held: bit 1 of byte 0 (LSB first).
                    HaveEntry::from_fn(9, 3, |i| i == 1),
                    // An empty segment: no bitmap bytes.
                    HaveEntry {
                        seq: 42,
                        chunk_count: 0,
                        bitmap: Bytes::new(),
                    },
                ],
            },
            "01 02 0003 \
             0102030405060708 000a ff03 \
             0000000000000009 0003 02 \
             000000000000002a 0000",
        ),
        (
            Frame::Drop {
                seqs: vec![1, u64::MAX],
            },
            "01 03 0002 0000000000000001 ffffffffffffffff",
        ),
        (
            Frame::Request {
                req_id: 7,
                seq: 300,
                first: 4,
                count: 12,
            },
            "01 04 00000007 000000000000012c 0004 000c",
        ),
        (
            Frame::Chunk {
                req_id: 7,
                seq: 300,
                index: 5,
                data: Bytes::from_static(b"abc"),
            },
            "01 05 00000007 000000000000012c 0005 616263",
        ),
        (
            Frame::Cancel {
                req_id: 0xdead_beef,
            },
            "01 06 deadbeef",
        ),
        (
            Frame::Absent {
                req_id: 7,
                reason: AbsentReason::NotFound,
            },
            "01 07 00000007 00",
        ),
        (
            Frame::Absent {
                req_id: 7,
                reason: AbsentReason::Busy,
            },
            "01 07 00000007 01",
        ),
        (
            Frame::Absent {
                req_id: 7,
                reason: AbsentReason::Refused,
            },
            "01 07 00000007 02",
        ),
        (
            Frame::Status {
                uplink_kbps: 1000,
                wait_ms: 250,
            },
            "01 08 000003e8 00fa",
        ),
    ]
}

/// Hex with optional spaces (as written in the fixtures) to bytes.
pub fn unhex(s: &str) -> Vec<u8> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(compact).expect("fixture hex")
}

/// `(message, exact JSON)`; every client message type.
pub fn client_fixtures() -> Vec<(ClientMsg, &'static str)> {
    vec![
        (
            ClientMsg::Join {
                swarm: "s".into(),
                token: None,
            },
            r#"{"v":1,"type":"join","swarm":"s"}"#,
        ),
        (
            ClientMsg::Join {
                swarm: "https://cdn.example/live/index.m3u8|720p".into(),
                token: Some("t0k".into()),
            },
            r#"{"v":1,"type":"join","swarm":"https://cdn.example/live/index.m3u8|720p","token":"t0k"}"#,
        ),
        (
            ClientMsg::WantPeers { swarm: "s".into() },
            r#"{"v":1,"type":"want_peers","swarm":"s"}"#,
        ),
        (
            ClientMsg::Leave { swarm: "s".into() },
            r#"{"v":1,"type":"leave","swarm":"s"}"#,
        ),
        (
            ClientMsg::Signal {
                swarm: "s".into(),
                to: 42,
                data: SignalData::Offer {
                    sdp: "v=0\r\n".into(),
                },
            },
            r#"{"v":1,"type":"signal","swarm":"s","to":42,"data":{"kind":"offer","sdp":"v=0\r\n"}}"#,
        ),
        (
            ClientMsg::Signal {
                swarm: "s".into(),
                to: 42,
                data: SignalData::Answer { sdp: "v=0".into() },
            },
            r#"{"v":1,"type":"signal","swarm":"s","to":42,"data":{"kind":"answer","sdp":"v=0"}}"#,
        ),
        (
            ClientMsg::Signal {
                swarm: "s".into(),
                to: 42,
                data: SignalData::Candidate {
                    candidate: "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                },
            },
            r#"{"v":1,"type":"signal","swarm":"s","to":42,"data":{"kind":"candidate","candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host","sdp_mid":"0","sdp_m_line_index":0}}"#,
        ),
        (
            // End-of-candidates: empty candidate, optional fields omitted.
            ClientMsg::Signal {
                swarm: "s".into(),
                to: 42,
                data: SignalData::Candidate {
                    candidate: String::new(),
                    sdp_mid: None,
                    sdp_m_line_index: None,
                },
            },
            r#"{"v":1,"type":"signal","swarm":"s","to":42,"data":{"kind":"candidate","candidate":""}}"#,
        ),
        (
            ClientMsg::Stats {
                swarm: "s".into(),
                stats: StatsReport {
                    http_bytes: 1000,
                    p2p_bytes: 3000,
                    uploaded_bytes: 2000,
                    stalls: 1,
                    peers: 4,
                    integrity_failures: 0,
                },
            },
            r#"{"v":1,"type":"stats","swarm":"s","stats":{"http_bytes":1000,"p2p_bytes":3000,"uploaded_bytes":2000,"stalls":1,"peers":4,"integrity_failures":0}}"#,
        ),
        (ClientMsg::Ping, r#"{"v":1,"type":"ping"}"#),
    ]
}

/// `(message, exact JSON)`; every server message type.
pub fn server_fixtures() -> Vec<(ServerMsg, &'static str)> {
    vec![
        (
            ServerMsg::Welcome {
                peer_id: 7,
                heartbeat_ms: 20_000,
                ice_servers: Vec::new(),
            },
            r#"{"v":1,"type":"welcome","peer_id":7,"heartbeat_ms":20000}"#,
        ),
        (
            ServerMsg::Welcome {
                peer_id: 8,
                heartbeat_ms: 20_000,
                ice_servers: vec![
                    IceServer {
                        urls: vec!["stun:stun.example:3478".into()],
                        username: None,
                        credential: None,
                    },
                    IceServer {
                        urls: vec!["turn:turn.example:3478?transport=udp".into()],
                        username: Some("1767225600:8".into()),
                        credential: Some("c2VjcmV0".into()),
                    },
                ],
            },
            r#"{"v":1,"type":"welcome","peer_id":8,"heartbeat_ms":20000,"ice_servers":[{"urls":["stun:stun.example:3478"]},{"urls":["turn:turn.example:3478?transport=udp"],"username":"1767225600:8","credential":"c2VjcmV0"}]}"#,
        ),
        (
            ServerMsg::Joined {
                swarm: "s".into(),
                peers: vec![3, 5],
                slot: 1,
                slots: 4,
            },
            r#"{"v":1,"type":"joined","swarm":"s","peers":[3,5],"slot":1,"slots":4}"#,
        ),
        (
            ServerMsg::Peers {
                swarm: "s".into(),
                peers: vec![],
            },
            r#"{"v":1,"type":"peers","swarm":"s","peers":[]}"#,
        ),
        (
            ServerMsg::Slot {
                swarm: "s".into(),
                slot: 0,
                slots: 3,
            },
            r#"{"v":1,"type":"slot","swarm":"s","slot":0,"slots":3}"#,
        ),
        (
            ServerMsg::Signal {
                swarm: "s".into(),
                from: 9,
                data: SignalData::Answer { sdp: "x".into() },
            },
            r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"answer","sdp":"x"}}"#,
        ),
        (
            ServerMsg::PeerLeft {
                swarm: "s".into(),
                peer: 5,
            },
            r#"{"v":1,"type":"peer_left","swarm":"s","peer":5}"#,
        ),
        (
            ServerMsg::error(ErrorCode::RateLimited, "slow down"),
            r#"{"v":1,"type":"error","code":"rate_limited","message":"slow down"}"#,
        ),
        (
            ServerMsg::Error {
                code: ErrorCode::NotInSwarm,
                message: "join first".into(),
                swarm: Some("s".into()),
            },
            r#"{"v":1,"type":"error","code":"not_in_swarm","message":"join first","swarm":"s"}"#,
        ),
        (ServerMsg::Pong, r#"{"v":1,"type":"pong"}"#),
        (
            ServerMsg::Reconnect { after_ms: 1500 },
            r#"{"v":1,"type":"reconnect","after_ms":1500}"#,
        ),
    ]
}

/// Every error code and its wire string.
pub const ERROR_CODES: [(ErrorCode, &str); 12] = [
    (ErrorCode::BadMessage, "bad_message"),
    (ErrorCode::UnsupportedVersion, "unsupported_version"),
    (ErrorCode::TooLarge, "too_large"),
    (ErrorCode::BinaryFrame, "binary_frame"),
    (ErrorCode::RateLimited, "rate_limited"),
    (ErrorCode::TooManySwarms, "too_many_swarms"),
    (ErrorCode::BadSwarm, "bad_swarm"),
    (ErrorCode::NotInSwarm, "not_in_swarm"),
    (ErrorCode::UnknownPeer, "unknown_peer"),
    (ErrorCode::Unauthorized, "unauthorized"),
    (ErrorCode::ServerFull, "server_full"),
    (ErrorCode::ShuttingDown, "shutting_down"),
];

/// A manifest of three segments: "hello" (one short chunk), an empty segment (no chunks) and
/// 16385 bytes of 'a' (one full chunk and a one-byte chunk). Hashes computed with `sha256sum`
/// and `base64`, independently of this crate.
pub const MANIFEST_JSON: &str = concat!(
    r#"{"v":1,"chunk_size":16384,"segments":["#,
    r#"{"seq":7,"uri":"seg7.ts","len":5,"#,
    r#""sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","#,
    r#""chunks":"LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="},"#,
    r#"{"seq":8,"uri":"seg8.ts","len":0,"#,
    r#""sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","#,
    r#""chunks":""},"#,
    r#"{"seq":9,"uri":"https://cdn.example/seg9.ts","len":16385,"#,
    r#""sha256":"608b801060d579a7b659a01755259a13dec8853b97d3d8062763c97ffac6ddae","#,
    r#""chunks":"8zNr6nUrWih0MDPdLIRKSmP7oIhxqu4lhqK/LWm+g6LKl4ESyhu9yvrCMbOaI9xNp4bv+BR8TnK5gHeFr+5Iuw=="}"#,
    r#"]}"#
);

/// The segments of [`MANIFEST_JSON`], as `(seq, uri, data)`.
pub fn manifest_segments() -> Vec<(u64, &'static str, Vec<u8>)> {
    vec![
        (7, "seg7.ts", b"hello".to_vec()),
        (8, "seg8.ts", Vec::new()),
        (9, "https://cdn.example/seg9.ts", vec![b'a'; 16_385]),
    ]
}
