//! Scenario tests of `PeerCore`: two cores wired back to back, upload policy, bans, cancels,
//! stalls and origin faults, each on a hand-written script.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::net::Net;
use common::*;
use peer_core::{
    BanReason, Config, DisconnectReason, Event, Input, MAX_PEER_COUNTERS, Output, Time,
};
use protocol::signaling::ServerMsg;
use protocol::{AbsentReason, CHUNK_SIZE, Frame, Manifest, PeerId};

/// Two cores wired back to back through the in-test relay (signaling, handshake, data
/// channels, origin); A is the designated origin fetcher of the segment, B is not (and its
/// backup/deadline fallbacks are far away), so B must get every byte from A.
#[test]
fn two_cores_back_to_back() {
    const A: PeerId = 10;
    const B: PeerId = 11;
    let seq = 6; // 6 % 2 == 0: A's slot. B's backup slot would be (6 + 1) % 2 == 1, but only
    // after `backup_seed_delay` with no chunk at its neighbour, which A provides long before.
    let len = 5 * CHUNK_SIZE + 1234;
    let data = segment_data(seq, len);
    let mut cfg = config();
    cfg.backup_seed_delay = Duration::from_secs(60);
    let mut net = Net::new(2);
    net.origin.insert(url_of(seq), data.clone());
    net.manifest = Manifest {
        segments: vec![manifest_entry(seq, &data)],
    };
    // B is introduced to A: A offers, B answers.
    net.add(
        A,
        Config {
            seed: A,
            ..cfg.clone()
        },
        0,
        vec![B],
    );
    net.add(
        B,
        Config {
            seed: B,
            ..cfg.clone()
        },
        1,
        vec![],
    );
    net.run_while(at_ms(5_000), |n| {
        [A, B]
            .iter()
            .any(|id| n.node(*id).core.open_peers().count() == 0)
    });
    assert!(net.node(A).core.open_peers().eq([B]), "A sees B");
    assert!(net.node(B).core.open_peers().eq([A]), "B sees A");
    // Both players want the segment.
    let t0 = net.now;
    for id in [A, B] {
        net.input(
            id,
            Input::Want {
                url: url_of(seq),
                seq: Some(seq),
                deadline: t0 + Duration::from_secs(30),
                duration: SEG_DURATION,
            },
        );
    }
    let ready = |n: &Net, id: PeerId| -> Option<Bytes> {
        n.node(id).outputs.iter().find_map(|(_, o)| match o {
            Output::SegmentReady { seq: s, data, .. } if *s == seq => Some(data.clone()),
            _ => None,
        })
    };
    net.run_while(t0 + Duration::from_secs(10), |n| {
        ready(n, A).is_none() || ready(n, B).is_none()
    });
    assert_eq!(ready(&net, A), Some(data.clone()), "A delivered");
    assert_eq!(ready(&net, B), Some(data), "B delivered");
    for id in [A, B] {
        let closes: Vec<&Output> = net
            .node(id)
            .outputs
            .iter()
            .map(|(_, o)| o)
            .filter(|o| matches!(o, Output::RtcClose { .. }))
            .collect();
        assert!(closes.is_empty(), "{id} closed: {closes:?}");
    }
    let http_starts = |id: PeerId| {
        net.node(id)
            .outputs
            .iter()
            .filter(|(_, o)| matches!(o, Output::HttpStart { .. }))
            .count()
    };
    let (a, b) = (&net.node(A).core, &net.node(B).core);
    assert_eq!(a.stats().delivered_http_bytes, len as u64);
    assert_eq!(b.stats().delivered_p2p_bytes, len as u64);
    assert_eq!(b.stats().delivered_http_bytes, 0);
    assert_eq!(b.stats().http_bytes, 0);
    assert_eq!(http_starts(B), 0, "B never went to the origin");
    assert!(http_starts(A) > 0);
    assert_eq!(
        a.stats().uploaded_bytes,
        len as u64,
        "A uploaded each byte once"
    );
    assert!(
        net.now < t0 + Duration::from_secs(5),
        "took until {:?}",
        net.now
    );
}

/// A core that holds a segment and a requester that keeps asking for it: bytes sent in chunk
/// frames over any window `W` stay within `cap × W + burst`, with `burst = cap / 4 +
/// CHUNK_SIZE` (the token bucket's depth). The requester asks for much more than the cap
/// allows, so the cap is what limits the rate (checked from below too).
#[test]
fn upload_cap_is_respected() {
    upload_cap_run(true);
}

/// Same without the driver's periodic inputs: the core must wake itself (at `poll_timeout`)
/// when the token bucket has refilled.
#[test]
fn upload_cap_wakes_itself() {
    upload_cap_run(false);
}

fn upload_cap_run(ticks: bool) {
    let cap: u64 = 150_000;
    let seq = 3;
    let len = 40 * CHUNK_SIZE;
    let mut cfg = config();
    cfg.upload_cap = Some(cap);
    cfg.serve_queue_per_peer = 100_000;
    cfg.serve_queue_total = 100_000;
    // We are the designated fetcher (slot 0 of 1): the segment comes from the origin first.
    let mut h = Harness::with_slot(cfg, &[(seq, len)], 0, 1);
    h.want_at(at_ms(0), seq, at_ms(10_000));
    h.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    assert!(h.core.has_segment(seq));
    let t0 = h.now + ms(100);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    // 8 passes over the 40 chunks: 320 chunks = 5.2 MB, far more than 20 s at the cap.
    for r in 0..80u32 {
        let f = Frame::Request {
            req_id: r + 1,
            seq,
            first: (r % 10) as u16 * 4,
            count: 4,
        };
        h.inject_at(t0, 100, f.encode());
    }
    let t_end = t0 + Duration::from_secs(20);
    if ticks {
        // A driver reporting the channel's buffer every 20 ms (e.g. on `bufferedamountlow`).
        let mut t = t0;
        while t < t_end {
            h.buffered_at(t, 100);
            t = t + ms(20);
        }
    }
    h.run_until(t_end);
    let sends: Vec<(Time, usize)> = h.peers[&100]
        .chunks_received
        .iter()
        .map(|c| (c.0, c.4))
        .collect();
    let total: usize = sends.iter().map(|s| s.1).sum();
    let burst = cap as f64 / 4.0 + CHUNK_SIZE as f64;
    for w in [
        Duration::from_millis(500),
        Duration::from_secs(2),
        Duration::from_secs(10),
    ] {
        for (i, (start, _)) in sends.iter().enumerate() {
            let in_window: usize = sends[i..]
                .iter()
                .take_while(|(t, _)| *t < *start + w)
                .map(|s| s.1)
                .sum();
            let allowed = cap as f64 * w.as_secs_f64() + burst;
            assert!(
                in_window as f64 <= allowed,
                "{in_window} bytes sent in {w:?} from {start:?}, cap allows {allowed}"
            );
        }
    }
    // Not vacuous: the uplink was used close to the cap the whole time.
    let secs = t_end.since(t0).as_secs_f64();
    assert!(
        total as f64 >= 0.9 * cap as f64 * secs,
        "only {total} bytes in {secs} s at cap {cap}"
    );
    assert!(h.ban_events(100).is_empty());
}

/// `Have` frames the fake peer `peer` received.
fn haves(h: &Harness, peer: PeerId) -> usize {
    h.peers[&peer]
        .frames_received
        .iter()
        .filter(|(_, f)| matches!(f, Frame::Have { .. }))
        .count()
}

/// `upload = false`: nothing is announced (no `Have`: nobody should ask), and every request
/// is answered `Absent{Refused}`, even for a held segment.
#[test]
fn upload_disabled_refuses() {
    let seq = 3;
    let mut cfg = config();
    cfg.upload = false;
    let mut h = Harness::with_slot(cfg, &[(seq, 3 * CHUNK_SIZE)], 0, 1);
    h.want_at(at_ms(0), seq, at_ms(10_000));
    h.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    assert!(h.core.has_segment(seq));
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    let t = h.now + ms(50);
    for (id, first) in [(7u32, 0u16), (8, 2)] {
        let f = Frame::Request {
            req_id: id,
            seq,
            first,
            count: 1,
        };
        h.inject_at(t, 100, f.encode());
    }
    h.run_until(t + Duration::from_secs(1));
    let p = &h.peers[&100];
    assert!(p.chunks_received.is_empty(), "no chunk uploaded");
    assert_eq!(haves(&h, 100), 0, "a download-only peer announces nothing");
    let absents: Vec<&Frame> = p
        .frames_received
        .iter()
        .map(|(_, f)| f)
        .filter(|f| matches!(f, Frame::Absent { .. }))
        .collect();
    assert_eq!(
        absents,
        vec![
            &Frame::Absent {
                req_id: 7,
                reason: AbsentReason::Refused
            },
            &Frame::Absent {
                req_id: 8,
                reason: AbsentReason::Refused
            }
        ]
    );
    // With upload on, the same request is served (the test can fail).
    let mut h2 = Harness::with_slot(config(), &[(seq, 3 * CHUNK_SIZE)], 0, 1);
    h2.want_at(at_ms(0), seq, at_ms(10_000));
    h2.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    assert!(h2.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    let t = h2.now + ms(50);
    let f = Frame::Request {
        req_id: 7,
        seq,
        first: 0,
        count: 1,
    };
    h2.inject_at(t, 100, f.encode());
    h2.run_until(t + Duration::from_secs(1));
    assert_eq!(h2.peers[&100].chunks_received.len(), 1);
    assert!(
        haves(&h2, 100) > 0,
        "upload on: the held segment is announced"
    );
}

/// A peer that answers `Refused` serves nobody (download only): it is asked once (one
/// scheduling pass), never again on that connection, even while it is the only holder, and its
/// announcements stop counting (the origin delivers). Asking again after each refusal was a request loop at the round-trip
/// rate, which the refusing side rightly banned as a flood.
#[test]
fn refusing_peer_is_asked_once() {
    let seq = 5;
    let mut h = Harness::new(config(), &[(seq, 4 * CHUNK_SIZE)]);
    assert!(h.connect(
        100,
        FakePeer::new(PeerBehaviour::Absent(AbsentReason::Refused), [seq])
    ));
    h.want_at(at_ms(0), seq, at_ms(8_000));
    h.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    assert!(
        h.delivered.contains_key(&seq),
        "delivered (from the origin)"
    );
    // One scheduling pass may ask for several chunks at once; none after the refusals.
    let reqs = &h.peers[&100].requests;
    assert!(!reqs.is_empty(), "never asked");
    assert!(
        reqs.iter().all(|r| r.0 == reqs[0].0),
        "asked again after a refusal: {} requests",
        reqs.len()
    );
    assert!(h.ban_events(100).is_empty());
}

/// The `ChunkReceived` / `ChunkUploaded` events of a run, sorted.
fn chunk_events(h: &Harness) -> Vec<Event> {
    let mut v: Vec<Event> = h
        .outputs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Event(e @ (Event::ChunkReceived { .. } | Event::ChunkUploaded { .. })) => {
                Some(e.clone())
            }
            _ => None,
        })
        .collect();
    v.sort_by_key(|e| format!("{e:?}"));
    v
}

/// `chunk_events`: every verified chunk received (from a peer, from the origin) and every
/// chunk uploaded is one event with its size; without it (the default: one output per 16 KiB
/// that most drivers ignore) there are none.
#[test]
fn chunk_events_report_every_chunk_in_and_out() {
    let received = |peer, seq, chunk, bytes| Event::ChunkReceived {
        peer,
        seq,
        chunk,
        bytes,
    };
    let mut cfg = config();
    cfg.chunk_events = true;
    // From a peer: three chunks, the last one short.
    let seq = 5;
    let mut h = Harness::new(cfg.clone(), &[(seq, 2 * CHUNK_SIZE + 100)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [seq])));
    h.want_at(at_ms(0), seq, at_ms(20_000));
    h.run_while(at_ms(20_000), |h| h.delivered.is_empty());
    assert!(h.http.is_empty(), "went to the origin");
    assert_eq!(
        chunk_events(&h),
        vec![
            received(Some(100), seq, 0, CHUNK_SIZE),
            received(Some(100), seq, 1, CHUNK_SIZE),
            received(Some(100), seq, 2, 100),
        ]
    );
    // From the origin (the designated seeder), then two chunks uploaded to a peer.
    let seq = 3;
    let mut h = Harness::with_slot(cfg.clone(), &[(seq, 3 * CHUNK_SIZE)], 0, 1);
    h.want_at(at_ms(0), seq, at_ms(10_000));
    h.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    let t = h.now + ms(50);
    let f = Frame::Request {
        req_id: 7,
        seq,
        first: 1,
        count: 2,
    };
    h.inject_at(t, 100, f.encode());
    h.run_until(t + Duration::from_secs(1));
    assert_eq!(h.peers[&100].chunks_received.len(), 2);
    let uploaded = |chunk| Event::ChunkUploaded {
        peer: 100,
        seq,
        chunk,
        bytes: CHUNK_SIZE,
    };
    assert_eq!(
        chunk_events(&h),
        vec![
            received(None, seq, 0, CHUNK_SIZE),
            received(None, seq, 1, CHUNK_SIZE),
            received(None, seq, 2, CHUNK_SIZE),
            uploaded(1),
            uploaded(2),
        ]
    );
    // Off: the same run reports none.
    let mut h = Harness::with_slot(config(), &[(seq, 3 * CHUNK_SIZE)], 0, 1);
    h.want_at(at_ms(0), seq, at_ms(10_000));
    h.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    h.inject_at(h.now + ms(50), 100, f.encode());
    h.run_until(h.now + Duration::from_secs(1));
    assert_eq!(h.peers[&100].chunks_received.len(), 2);
    assert!(chunk_events(&h).is_empty());
}

/// Each kind of misbehaviour, with the bad peer the only one first: it is banned with the
/// matching reason, and every chunk it was asked for is then asked from the honest peer that
/// joins later (none from the origin, whose fallback is far away).
#[test]
fn each_misbehaviour_bans_and_chunks_go_elsewhere() {
    for bad in [
        PeerBehaviour::Corrupt,
        PeerBehaviour::ExtraBytes,
        PeerBehaviour::Short,
        PeerBehaviour::Unsolicited,
        PeerBehaviour::Duplicate,
        PeerBehaviour::Malformed,
    ] {
        let seq = 5;
        let len = 4 * CHUNK_SIZE + 10;
        let mut h = Harness::new(config(), &[(seq, len)]);
        assert!(h.connect(100, FakePeer::new(bad.clone(), [seq])));
        h.want_at(at_ms(0), seq, at_ms(20_000));
        h.run_until(at_ms(1000));
        let bans = h.ban_events(100);
        let want = bad.expected_ban().unwrap_or(BanReason::BadChunk);
        assert_eq!(bans.len(), 1, "{bad:?}: {bans:?}");
        assert!(same_ban_kind(&bans[0].1, &want), "{bad:?}: {bans:?}");
        assert_eq!(
            h.disconnects(100),
            vec![DisconnectReason::Banned],
            "{bad:?}"
        );
        if matches!(bad, PeerBehaviour::Corrupt | PeerBehaviour::Short) {
            let integrity = h.outputs.iter().any(|(_, o)| {
                matches!(
                    o,
                    Output::Event(Event::IntegrityFailure {
                        peer: Some(100),
                        ..
                    })
                )
            });
            assert!(integrity, "{bad:?}: IntegrityFailure event");
        }
        // Chunks asked from the bad peer and not validly received from it (a `Duplicate`
        // peer's first copies are good and kept).
        let ban_at = bans[0].0;
        let kept: Vec<u16> = if bad == PeerBehaviour::Duplicate {
            h.chunks_in
                .iter()
                .filter(|c| c.1 == 100 && c.0 <= ban_at)
                .map(|c| c.4)
                .collect()
        } else {
            vec![]
        };
        let asked_bad: Vec<u16> = h.peers[&100]
            .requests
            .iter()
            .flat_map(|r| r.3..r.3 + r.4)
            .filter(|i| !kept.contains(i))
            .collect();
        assert!(!asked_bad.is_empty() || bad == PeerBehaviour::Duplicate);
        // The peer comes back under the same id with a new offer: refused (no connection).
        let creates = h.creates(100).len();
        assert_eq!(
            h.offer_from(100),
            None,
            "{bad:?}: banned peer accepted again"
        );
        assert_eq!(h.creates(100).len(), creates);
        // An honest holder joins: the chunks go there.
        assert!(h.connect(101, FakePeer::new(PeerBehaviour::Honest, [seq])));
        h.input(Input::SignalMessage(ServerMsg::Peers {
            swarm: SWARM.into(),
            peers: vec![100],
        }));
        h.run_while(at_ms(30_000), |h| h.delivered.is_empty());
        assert!(h.connects(100).is_empty(), "{bad:?}: reconnected");
        assert_eq!(h.delivered.get(&seq).map(|v| v.len()), Some(1), "{bad:?}");
        assert!(h.http.is_empty(), "{bad:?}: went to the origin");
        let asked_good: Vec<u16> = h.peers[&101]
            .requests
            .iter()
            .flat_map(|r| r.3..r.3 + r.4)
            .collect();
        for i in &asked_bad {
            assert!(
                asked_good.contains(i),
                "{bad:?}: chunk {i} not asked elsewhere"
            );
        }
        assert_eq!(h.core.stats().peers_banned, 1);
    }
}

/// A peer slower than `peer_stall_timeout`: the core cancels the request and asks another
/// peer; when the slow peer's chunk arrives after the `Cancel`, it is not punished, and since
/// it verifies and is still missing it is kept (its upload is not wasted): the request to the
/// second peer, now covered, is cancelled in turn.
#[test]
fn late_chunk_after_our_cancel_is_kept_not_punished() {
    let seq = 5;
    let len = CHUNK_SIZE;
    let mut h = Harness::new(config(), &[(seq, len)]);
    // One chunk, 4 s to send it: the stall timeout (1.5 s in the tests' config) fires first.
    assert!(h.connect(
        100,
        FakePeer::new(PeerBehaviour::Honest, [seq]).timing(ms(10), ms(4000))
    ));
    h.want_at(at_ms(0), seq, at_ms(20_000));
    h.run_until(at_ms(1000));
    assert!(h.connect(
        101,
        FakePeer::new(PeerBehaviour::Honest, [seq]).timing(ms(10), ms(6000))
    ));
    h.run_until(at_ms(6000));
    let cancel_at = |peer| {
        h.sent
            .iter()
            .find(|s| s.peer == peer && matches!(s.frame, Frame::Cancel { .. }))
            .map(|s| s.at)
    };
    let cancel_100 = cancel_at(100).expect("request to the slow peer cancelled");
    let late = h
        .chunks_in
        .iter()
        .find(|c| c.1 == 100)
        .map(|c| c.0)
        .expect("slow peer's chunk arrived");
    assert!(
        late > cancel_100,
        "chunk at {late:?}, cancel at {cancel_100:?}"
    );
    assert!(h.ban_events(100).is_empty(), "late chunk punished");
    assert!(h.disconnects(100).is_empty());
    assert!(h.core.open_peers().any(|p| p == 100));
    assert!(h.core.stats().peer_request_timeouts >= 1);
    // Kept: the segment came from the late chunk, and peer 101 was told to stop.
    assert_eq!(
        h.core.stats().bytes_from_peer.get(&100).copied(),
        Some(CHUNK_SIZE as u64)
    );
    assert!(h.delivered.contains_key(&seq), "segment not delivered");
    assert!(
        h.sent
            .iter()
            .any(|s| s.peer == 101 && s.at >= late && matches!(s.frame, Frame::Cancel { .. })),
        "the request to 101, covered by the late chunk, was not cancelled"
    );
}

/// The only holder stops after two chunks; the deadline fallback fetches the rest from the
/// origin by Range and the segment is ready before its deadline.
#[test]
fn stalled_holder_fallback() {
    let seq = 9;
    let len = 6 * CHUNK_SIZE;
    let mut h = Harness::new(config(), &[(seq, len)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::StallAfter(2), [seq])));
    let deadline = at_ms(4000);
    h.want_at(at_ms(0), seq, deadline);
    h.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    let done = h.delivered[&seq][0];
    assert!(done <= deadline, "ready at {done:?}");
    let http = h.http_for(seq);
    assert!(!http.is_empty());
    // 4 chunks missing: H = 200 ms + 65536 B / 1 MB/s ≈ 265.5 ms.
    let budget = ORIGIN_RTT + Duration::from_secs_f64(4.0 * CHUNK_SIZE as f64 / ORIGIN_RATE);
    assert!(http[0].at <= deadline - h.cfg.http_margin - budget);
    // Before the fallback the core waited for the peer (not designated, a holder is open).
    assert!(
        http[0].at >= at_ms(1500),
        "went to origin at {:?}",
        http[0].at
    );
    let stored_http = h.core.stats().delivered_http_bytes;
    assert_eq!(stored_http, 4 * CHUNK_SIZE as u64);
}

/// A truncated origin body and a failed request are not delivered; the chunks they did not
/// bring are requested again; an over-long body is refused with `HttpCancel`.
#[test]
fn origin_faults() {
    let seq = 4;
    let len = 4 * CHUNK_SIZE + 100;
    // Truncated after 1.5 chunks: chunk 0 is kept, chunks 1.. asked again.
    let mut h = Harness::new(config(), &[(seq, len)]);
    h.origin.script = [HttpBehaviour::Truncate(300)].into();
    h.want_at(at_ms(0), seq, at_ms(3000));
    h.run_while(at_ms(20_000), |h| h.delivered.is_empty());
    let logs: Vec<HttpLog> = h.http_for(seq).into_iter().cloned().collect();
    assert!(logs.len() >= 2, "{logs:?}");
    assert_eq!(logs[0].range, None);
    let kept = (len as u64 * 300 / 1000) / CHUNK_SIZE as u64 * CHUNK_SIZE as u64;
    assert_eq!(logs[1].range, Some((kept, len as u64)), "{logs:?}");
    assert!(h.delivered[&seq][0] > logs[1].at);
    assert_eq!(h.core.stats().http_failures, 1);

    // Failed request: everything asked again.
    let mut h = Harness::new(config(), &[(seq, len)]);
    h.origin.script = [HttpBehaviour::Fail(0)].into();
    h.want_at(at_ms(0), seq, at_ms(3000));
    h.run_while(at_ms(20_000), |h| h.delivered.is_empty());
    let logs = h.http_for(seq);
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[1].range, None);

    // Over-long body in one piece: refused, cancelled, asked again.
    let mut h = Harness::new(config(), &[(seq, len)]);
    h.origin.script = [HttpBehaviour::Longer].into();
    h.origin.piece = 1 << 20;
    h.want_at(at_ms(0), seq, at_ms(3000));
    h.run_while(at_ms(20_000), |h| h.delivered.is_empty());
    let logs: Vec<HttpLog> = h.http_for(seq).into_iter().cloned().collect();
    assert_eq!(logs.len(), 2);
    assert!(h.http_cancels().contains(&logs[0].id));
    assert_eq!(h.delivered[&seq].len(), 1);
    assert_eq!(h.core.stats().delivered_http_bytes, len as u64);
}

/// A frame that does not decode bans its sender at once.
#[test]
fn malformed_frame_bans() {
    let mut h = Harness::new(config(), &[(1, 100)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    h.run_until(at_ms(100));
    assert!(h.ban_events(100).is_empty());
    h.inject_at(at_ms(200), 100, Bytes::from_static(&[9, 9, 9]));
    h.run_until(at_ms(300));
    let bans = h.ban_events(100);
    assert_eq!(bans.len(), 1);
    assert!(matches!(bans[0].1, BanReason::Malformed(_)));
    assert!(h.core.is_banned(100));
}

/// A peer whose channel opens but that never says `Hello` is dropped after `connect_timeout`
/// (it would otherwise hold a connection slot for as long as we stay), and not banned.
#[test]
fn silent_peer_is_dropped_after_connect_timeout() {
    let cfg = config();
    let timeout_ms = cfg.connect_timeout.as_millis() as u64;
    let mut h = Harness::new(cfg, &[(5, 4 * CHUNK_SIZE)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Mute, [])));
    h.run_until(at_ms(timeout_ms - 100));
    assert!(h.disconnects(100).is_empty(), "dropped too early");
    h.run_until(at_ms(timeout_ms + 100));
    assert_eq!(h.disconnects(100), vec![DisconnectReason::Timeout]);
    assert!(h.ban_events(100).is_empty());
}

/// Many peers each serve us one segment: the per-peer byte counters keep at most
/// `MAX_PEER_COUNTERS` peers (the biggest senders), while the total counts every byte.
#[test]
fn per_peer_counters_stay_bounded() {
    let n = 3 * MAX_PEER_COUNTERS as u64 / 2;
    let mut cfg = config();
    cfg.max_peers = 2 * n as usize;
    // Segment `i` is held by peer `1000 + i` only; sizes grow with `i`, one chunk each.
    let segs: Vec<(u64, usize)> = (1..=n).map(|i| (i, 1000 + 100 * i as usize)).collect();
    let mut h = Harness::new(cfg, &segs);
    for i in 1..=n {
        assert!(h.connect(1000 + i, FakePeer::new(PeerBehaviour::Honest, [i])));
    }
    for i in 1..=n {
        h.want_at(at_ms(100), i, at_ms(30_000));
    }
    h.run_while(at_ms(30_000), |h| h.delivered.len() < n as usize);
    assert_eq!(h.delivered.len(), n as usize);
    assert!(h.http.is_empty());
    let s = h.core.stats();
    let total: u64 = segs.iter().map(|(_, l)| *l as u64).sum();
    assert_eq!(s.p2p_bytes, total);
    assert_eq!(s.bytes_from_peer.len(), MAX_PEER_COUNTERS);
    for (p, b) in &s.bytes_from_peer {
        assert_eq!(*b, h.seg_len(p - 1000), "peer {p}");
    }
    // The biggest sender is among them.
    assert!(s.bytes_from_peer.contains_key(&(1000 + n)));
}
