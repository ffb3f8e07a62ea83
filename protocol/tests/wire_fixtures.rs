//! Pins the wire format: exact bytes of one frame of each type, exact JSON of each signaling
//! message and of a manifest. Browser (JS) and native peers are written against these bytes;
//! if one of these tests fails, the change breaks interoperability and needs a new version.

mod common;

use bytes::Bytes;
use common::*;
use protocol::frame::{DecodeError, Frame, MAX_FRAME_LEN};
use protocol::manifest::{Manifest, SegmentManifest};
use protocol::signaling::{ClientMsg, ErrorCode, MAX_SIGNAL_LEN, ServerMsg, SignalingError};

#[test]
fn frames_encode_to_fixture_bytes() {
    for (frame, hex) in frame_fixtures() {
        assert_eq!(
            hex::encode(frame.encode()),
            hex::encode(unhex(hex)),
            "{frame:?}"
        );
    }
}

#[test]
fn fixture_bytes_decode_to_frames() {
    for (frame, hex) in frame_fixtures() {
        let bytes = unhex(hex);
        assert_eq!(Frame::decode(&bytes), Ok(frame.clone()));
        assert_eq!(Frame::decode_bytes(Bytes::from(bytes)), Ok(frame));
    }
}

#[test]
fn fixtures_cover_every_frame_type() {
    let mut types: Vec<u8> = frame_fixtures().iter().map(|(_, h)| unhex(h)[1]).collect();
    types.dedup();
    assert_eq!(types, [1, 2, 3, 4, 5, 6, 7, 8]);
}

/// Frames a decoder must reject, with the reason; each is one byte away from a valid frame.
#[test]
fn malformed_frames_are_rejected() {
    use DecodeError::*;
    let cases: &[(&str, DecodeError)] = &[
        ("", Empty),
        ("00 06 00000001", Version(0)),
        ("02 06 00000001", Version(2)),
        ("01", Truncated("type")),
        ("01 00", UnknownType(0)),
        ("01 09", UnknownType(9)),
        ("01 06 000000", Truncated("cancel")),
        ("01 06 00000001 00", Trailing(1)),
        // Hello: swarm not UTF-8; length prefix longer than the rest.
        ("01 01 01 ff 0008", BadUtf8),
        ("01 01 05 61 0008", Truncated("swarm")),
        // Have: padding bit 3 set with 3 chunks; 513 entries; 4097 chunks.
        (
            "01 02 0001 0000000000000009 0003 0a",
            BadValue("bitmap padding", 9),
        ),
        ("01 02 0201", BadValue("have count", 513)),
        (
            "01 02 0001 0000000000000009 1001",
            BadValue("chunk count", 4097),
        ),
        (
            "01 02 0001 0000000000000009 0009 ff",
            Truncated("have bitmap"),
        ),
        // Drop: 4097 entries; fewer entries than announced.
        ("01 03 1001", BadValue("drop count", 4097)),
        ("01 03 0002 0000000000000001", Truncated("drop entries")),
        // Request: empty range; range past chunk 4095.
        (
            "01 04 00000007 000000000000012c 0004 0000",
            BadValue("request range", 0),
        ),
        (
            "01 04 00000007 000000000000012c 0fff 0002",
            BadValue("request range", 2),
        ),
        // Chunk: index 4096.
        (
            "01 05 00000007 000000000000012c 1000 61",
            BadValue("chunk index", 4096),
        ),
        // Absent: unknown reason.
        ("01 07 00000007 03", BadValue("absent reason", 3)),
        // Status: one byte short; one byte too many.
        ("01 08 000003e8 00", Truncated("status")),
        ("01 08 000003e8 00fa 00", Trailing(1)),
    ];
    for (hex, err) in cases {
        assert_eq!(Frame::decode(&unhex(hex)), Err(err.clone()), "{hex}");
    }
}

#[test]
fn frame_size_limit() {
    // The largest chunk frame is accepted, one byte more is not.
    let mut max = unhex("01 05 00000007 000000000000012c 0005");
    max.resize(MAX_FRAME_LEN, 0xab);
    assert!(
        matches!(Frame::decode(&max), Ok(Frame::Chunk { data, .. }) if data.len() == MAX_FRAME_LEN - 16)
    );
    max.push(0);
    assert_eq!(
        Frame::decode(&max),
        Err(DecodeError::TooLong(MAX_FRAME_LEN + 1))
    );
}

#[test]
fn client_messages_encode_to_fixture_json() {
    for (msg, json) in client_fixtures() {
        assert_eq!(msg.to_json(), json);
        assert_eq!(ClientMsg::from_json(json, MAX_SIGNAL_LEN), Ok(msg));
    }
}

#[test]
fn server_messages_encode_to_fixture_json() {
    for (msg, json) in server_fixtures() {
        assert_eq!(msg.to_json(), json);
        assert_eq!(ServerMsg::from_json(json, MAX_SIGNAL_LEN), Ok(msg));
    }
}

#[test]
fn fixtures_cover_every_message_type() {
    let mut client: Vec<_> = client_fixtures().iter().map(|(m, _)| m.kind()).collect();
    client.dedup();
    assert_eq!(
        client,
        ["join", "want_peers", "leave", "signal", "stats", "ping"]
    );
    let mut server: Vec<_> = server_fixtures().iter().map(|(m, _)| m.kind()).collect();
    server.dedup();
    assert_eq!(
        server,
        [
            "welcome",
            "joined",
            "peers",
            "slot",
            "signal",
            "peer_left",
            "error",
            "pong",
            "reconnect"
        ]
    );
}

#[test]
fn error_code_strings() {
    for (code, s) in ERROR_CODES {
        assert_eq!(code.as_str(), s);
        assert_eq!(
            serde_json::to_string(&code).expect("serialize"),
            format!("\"{s}\"")
        );
        let json = format!(r#"{{"v":1,"type":"error","code":"{s}","message":""}}"#);
        assert_eq!(
            ServerMsg::from_json(&json, MAX_SIGNAL_LEN),
            Ok(ServerMsg::error(code, ""))
        );
    }
}

/// What receivers accept beyond the canonical encoding: any key order, unknown fields
/// (forward compatibility), a missing `integrity_failures`.
#[test]
fn lenient_decoding() {
    assert_eq!(
        ClientMsg::from_json(r#"{"type":"ping","v":1}"#, 100),
        Ok(ClientMsg::Ping)
    );
    assert_eq!(
        ClientMsg::from_json(
            r#"{"v":1,"type":"leave","swarm":"s","future":[1,{"x":2}]}"#,
            100
        ),
        Ok(ClientMsg::Leave { swarm: "s".into() })
    );
    assert_eq!(
        ServerMsg::from_json(r#" { "v" : 1 , "type" : "pong" } "#, 100),
        Ok(ServerMsg::Pong)
    );
    let stats = r#"{"v":1,"type":"stats","swarm":"s","stats":{"http_bytes":1,"p2p_bytes":2,"uploaded_bytes":3,"stalls":4,"peers":5}}"#;
    match ClientMsg::from_json(stats, MAX_SIGNAL_LEN) {
        Ok(ClientMsg::Stats { stats, .. }) => {
            assert_eq!(
                (stats.http_bytes, stats.peers, stats.integrity_failures),
                (1, 5, 0)
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_signaling_is_rejected() {
    let bad = |text: &str| ClientMsg::from_json(text, MAX_SIGNAL_LEN);
    assert_eq!(bad(r#"{"type":"ping"}"#), Err(SignalingError::NoVersion));
    // "v" must be the integer 1.
    assert_eq!(
        bad(r#"{"v":"1","type":"ping"}"#),
        Err(SignalingError::NoVersion)
    );
    assert_eq!(
        bad(r#"{"v":0,"type":"ping"}"#),
        Err(SignalingError::Version(0))
    );
    assert_eq!(
        bad(r#"{"v":2,"type":"ping"}"#),
        Err(SignalingError::Version(2))
    );
    for text in [
        r#"{"v":1}"#,
        r#"{"v":1,"type":"Ping"}"#,
        r#"{"v":1,"type":"join"}"#,
        r#"{"v":1,"type":"signal","swarm":"s","to":-1,"data":{"kind":"offer","sdp":""}}"#,
        r#"{"v":1,"type":"signal","swarm":"s","to":1.5,"data":{"kind":"offer","sdp":""}}"#,
        r#"{"v":1,"type":"signal","swarm":"s","to":1,"data":{"kind":"pranswer","sdp":""}}"#,
        r#"{"v":1,"type":"pong"}"#, // a server message sent by a client
        "[1]",
        "\"ping\"",
        "",
    ] {
        let err = bad(text).expect_err(text);
        assert_eq!(err.code(), ErrorCode::BadMessage, "{text}");
    }
    let err = ClientMsg::from_json(r#"{"v":1,"type":"ping"}"#, 20).expect_err("too large");
    assert_eq!(
        (err.clone(), err.code()),
        (SignalingError::TooLarge(21), ErrorCode::TooLarge)
    );
}

#[test]
fn manifest_fixture() {
    let segments = manifest_segments()
        .into_iter()
        .map(|(seq, uri, data)| SegmentManifest::compute(seq, uri, &data))
        .collect();
    let manifest = Manifest { segments };
    assert_eq!(manifest.to_json(), MANIFEST_JSON);
    assert_eq!(Manifest::from_json(MANIFEST_JSON), Ok(manifest.clone()));
    // The last chunk is short: 16385 = 16384 + 1.
    let seg9 = &manifest.segments[2];
    assert_eq!(
        (seg9.chunk_count(), seg9.chunk_len(0), seg9.chunk_len(1)),
        (2, 16_384, 1)
    );
    assert!(seg9.verify_chunk(1, b"a"));
    assert!(!seg9.verify_chunk(1, b"aa"));
    assert_eq!(manifest.segments[1].chunk_count(), 0);
}
