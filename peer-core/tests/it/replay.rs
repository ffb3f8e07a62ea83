//! Record and replay: a session recorded with `replay::Recorder`, written as JSON lines and
//! read back, re-runs through a new core with the same outputs; a tampered recording does not.

use crate::common;

use std::time::Duration;

use common::*;
use peer_core::replay::{Record, ReplayError, replay};
use peer_core::{Input, Output};
use protocol::CHUNK_SIZE;

/// A session with signaling, a manifest, a peer that serves one segment, the origin for
/// another, a re-offer and a player that wants both: every record is written and read back.
fn recorded_session() -> Vec<Record> {
    let segs = [(1, 2 * CHUNK_SIZE + 5), (2, CHUNK_SIZE + 300)];
    let mut cfg = config();
    cfg.seed = 7;
    let mut h = Harness::recording(cfg, &segs);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [1])));
    h.want_at(at_ms(0), 1, at_ms(8_000));
    h.want_at(at_ms(50), 2, at_ms(3_000));
    h.run_while(at_ms(10_000), |h| h.delivered.len() < 2);
    assert_eq!(h.delivered.len(), 2);
    let c = h.offer_from(100).expect("re-offer");
    h.open(100, c);
    h.input(Input::SignalClosed);
    h.run_until(h.now + Duration::from_secs(3));
    assert!(!h.http.is_empty() && !h.sent.is_empty());

    let text: String = h
        .records
        .iter()
        .map(|r| serde_json::to_string(r).expect("serialize") + "\n")
        .collect();
    let back: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("deserialize"))
        .collect();
    assert_eq!(back, h.records, "JSON lines round trip");
    assert!(matches!(back.first(), Some(Record::Config(_))));
    back
}

#[test]
fn recorded_session_replays() {
    let records = recorded_session();
    let inputs = records
        .iter()
        .filter(|r| matches!(r, Record::Input { .. }))
        .count();
    let outputs = records
        .iter()
        .filter(|r| matches!(r, Record::Output(_)))
        .count();
    let report = replay(records).expect("replays");
    assert_eq!(report.inputs, inputs);
    assert_eq!(report.outputs, outputs);
    assert!(
        inputs > 30 && outputs > 30,
        "{inputs} inputs, {outputs} outputs"
    );
}

#[test]
fn tampered_recording_is_a_mismatch() {
    let records = recorded_session();
    // Index among outputs of the first origin request.
    let (pos, index) = records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Record::Output(_)))
        .enumerate()
        .find_map(|(k, (i, r))| {
            matches!(r, Record::Output(Output::HttpStart { .. })).then_some((i, k))
        })
        .expect("an HttpStart");

    // One output changed.
    let mut changed = records.clone();
    if let Record::Output(Output::HttpStart { url, .. }) = &mut changed[pos] {
        url.push_str("?x");
    }
    match replay(changed) {
        Err(ReplayError::Mismatch {
            index: i,
            recorded,
            replayed,
        }) => {
            assert_eq!(i, index);
            assert!(recorded.contains("?x") && !replayed.contains("?x"));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }

    // One output missing: the replay produces one the recording does not have.
    let mut missing = records.clone();
    missing.remove(pos);
    assert!(matches!(
        replay(missing),
        Err(ReplayError::Mismatch { index: i, .. }) if i == index
    ));

    // One input changed: the peer's first frame garbled (it would be banned).
    let mut input = records.clone();
    let data = input
        .iter_mut()
        .find_map(|r| match r {
            Record::Input {
                input: Input::RtcMessage { data, .. },
                ..
            } => Some(data),
            _ => None,
        })
        .expect("a frame");
    *data = bytes::Bytes::from_static(&[9, 9, 9]);
    assert!(matches!(replay(input), Err(ReplayError::Mismatch { .. })));

    // No config first.
    assert_eq!(replay(records[1..].to_vec()), Err(ReplayError::NoConfig));
}
