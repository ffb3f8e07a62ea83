//! Property tests of `PeerCore` against scripted fake peers and an in-test origin (see
//! `common/mod.rs`). Besides each property's own assertions, the harness checks after every
//! input: the core's accounting (`check_invariants`), `store_bytes() <= store_cap`, that no
//! chunk is outstanding at two peers at once before the segment's HTTP fallback started, and
//! that every `SegmentReady` carries exactly the origin's bytes.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::net::Net;
use common::*;
use peer_core::{BanReason, Config, Event, Input, Output, Time};
use proptest::prelude::*;
use protocol::signaling::ServerMsg;
use protocol::{AbsentReason, CHUNK_SIZE, Frame, HaveEntry, PeerId};

fn behaviour() -> impl Strategy<Value = PeerBehaviour> {
    prop_oneof![
        4 => Just(PeerBehaviour::Honest),
        1 => Just(PeerBehaviour::Corrupt),
        1 => Just(PeerBehaviour::ExtraBytes),
        1 => Just(PeerBehaviour::Short),
        1 => Just(PeerBehaviour::Stall),
        1 => (0usize..6).prop_map(PeerBehaviour::StallAfter),
        1 => prop_oneof![
            Just(AbsentReason::NotFound),
            Just(AbsentReason::Busy),
            Just(AbsentReason::Refused)
        ]
        .prop_map(PeerBehaviour::Absent),
        1 => Just(PeerBehaviour::Unsolicited),
        1 => Just(PeerBehaviour::Duplicate),
        1 => Just(PeerBehaviour::Malformed),
    ]
}

fn bad_behaviour() -> impl Strategy<Value = PeerBehaviour> {
    prop_oneof![
        Just(PeerBehaviour::Corrupt),
        Just(PeerBehaviour::ExtraBytes),
        Just(PeerBehaviour::Short),
        Just(PeerBehaviour::Unsolicited),
        Just(PeerBehaviour::Duplicate),
        Just(PeerBehaviour::Malformed),
    ]
}

fn http_behaviour() -> impl Strategy<Value = HttpBehaviour> {
    prop_oneof![
        2 => Just(HttpBehaviour::Honest),
        1 => (0u16..1000).prop_map(HttpBehaviour::Truncate),
        1 => (0u16..1000).prop_map(HttpBehaviour::Fail),
        1 => Just(HttpBehaviour::Longer),
        1 => Just(HttpBehaviour::Corrupt),
    ]
}

#[derive(Debug, Clone)]
struct PeerSpec {
    behaviour: PeerBehaviour,
    latency_ms: u64,
    per_chunk_ms: u64,
    /// Bit i: holds segment i.
    holds: u32,
    /// Connects this long after the start.
    join_ms: u64,
}

fn peer_spec() -> impl Strategy<Value = PeerSpec> {
    (behaviour(), 1u64..150, 1u64..60, any::<u32>(), 0u64..2000).prop_map(
        |(behaviour, latency_ms, per_chunk_ms, holds, join_ms)| PeerSpec {
            behaviour,
            latency_ms,
            per_chunk_ms,
            holds,
            join_ms,
        },
    )
}

/// Runs a harness until every wanted segment is delivered (or `limit`), connecting the peers
/// at their join times.
fn run_with_peers(h: &mut Harness, specs: &[PeerSpec], segs: &[(u64, usize)], limit: Time) {
    let mut joins: Vec<(u64, usize)> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.join_ms, i))
        .collect();
    joins.sort();
    for (join, i) in joins {
        h.run_until(at_ms(join));
        let s = &specs[i];
        let holds = segs
            .iter()
            .enumerate()
            .filter(|(k, _)| s.holds & (1 << (k % 32)) != 0)
            .map(|(_, (seq, _))| *seq);
        let p =
            FakePeer::new(s.behaviour.clone(), holds).timing(ms(s.latency_ms), ms(s.per_chunk_ms));
        h.connect(100 + i as u64, p);
    }
    let wanted = h.deadlines.len().max(segs.len());
    h.run_while(limit, |h| h.delivered.len() < wanted);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Properties 1 and 4 (and liveness): whatever the peers and the origin do, every segment
    /// handed to the player is exactly the origin's, no chunk is asked from two peers at once
    /// before the HTTP fallback, honest peers are never banned, and every wanted segment is
    /// delivered once the origin behaves.
    #[test]
    fn delivered_segments_are_verified(
        sizes in prop::collection::vec(1usize..100_000, 1..5),
        specs in prop::collection::vec(peer_spec(), 0..5),
        script in prop::collection::vec(http_behaviour(), 0..4),
        want_gaps in prop::collection::vec((0u64..1500, 1500u64..8000), 5),
    ) {
        let segs: Vec<(u64, usize)> = sizes.iter().enumerate().map(|(i, l)| (10 + i as u64, *l)).collect();
        let mut h = Harness::new(config(), &segs);
        h.origin.script = script.into();
        let mut t = 0;
        for (k, (seq, _)) in segs.iter().enumerate() {
            let (gap, dl) = want_gaps[k];
            t += gap;
            h.want_at(at_ms(t), *seq, at_ms(t + dl));
        }
        run_with_peers(&mut h, &specs, &segs, at_ms(120_000));
        for (seq, _) in &segs {
            prop_assert_eq!(h.delivered.get(seq).map(|v| v.len()), Some(1), "segment {} delivered once", seq);
        }
        for (i, s) in specs.iter().enumerate() {
            if !s.behaviour.is_bad() {
                prop_assert!(h.ban_events(100 + i as u64).is_empty(), "peer {} ({:?}) banned", 100 + i, s.behaviour);
            }
        }
    }

    /// Property 2: with a store of 3 segments' worth and many segments wanted one after the
    /// other, `store_bytes() <= store_cap` after every input (checked by the harness), and all
    /// segments are still delivered.
    #[test]
    fn store_stays_under_cap(
        sizes in prop::collection::vec(1usize..48_000, 8..16),
        specs in prop::collection::vec(peer_spec(), 0..4),
        gap in 200u64..1200,
    ) {
        let segs: Vec<(u64, usize)> = sizes.iter().enumerate().map(|(i, l)| (10 + i as u64, *l)).collect();
        let max = *sizes.iter().max().unwrap_or(&1);
        let mut cfg = config();
        cfg.store_cap = 3 * max;
        let mut h = Harness::new(cfg, &segs);
        for (k, (seq, _)) in segs.iter().enumerate() {
            let t = k as u64 * gap;
            h.want_at(at_ms(t), *seq, at_ms(t + 4000));
        }
        run_with_peers(&mut h, &specs, &segs, at_ms(200_000));
        prop_assert_eq!(h.delivered.len(), segs.len());
        prop_assert!(h.steps > 0);
    }

    /// Property 3: the only holder stops answering after `k` chunks. The core must go to the
    /// origin for the rest in time.
    ///
    /// Timing asserted: let `H(m) = ORIGIN_RTT + m / ORIGIN_RATE` be the time the origin takes
    /// for `m` bytes (200 ms + 1 MB/s: the in-test origin serves exactly this, and it is also
    /// the core's initial estimate, which nothing has updated since no HTTP ran before). The
    /// first `HttpStart` for the segment must be emitted at `t_h <= deadline - http_margin -
    /// H(missing)`, where `missing` is the bytes of the chunks not received at `t_h`; the
    /// requests emitted at `t_h` must cover every such chunk; and since the origin answers
    /// each range within `H(its length) <= H(missing)`, the segment is delivered by
    /// `deadline - http_margin` (so, before its deadline).
    #[test]
    fn stalled_holder_falls_back_to_http_in_time(
        len in (CHUNK_SIZE + 1)..(10 * CHUNK_SIZE),
        k in 0usize..8,
        latency in 1u64..200,
        per_chunk in 1u64..80,
        deadline_ms in 2500u64..12_000,
        want_ms in 0u64..500,
    ) {
        let seq = 20;
        let mut h = Harness::new(config(), &[(seq, len)]);
        let n = h.chunk_count(seq);
        let k = k.min(n - 1);
        h.connect(100, FakePeer::new(PeerBehaviour::StallAfter(k), [seq]).timing(ms(latency), ms(per_chunk)));
        let deadline = at_ms(want_ms + deadline_ms);
        h.want_at(at_ms(want_ms), seq, deadline);
        h.run_while(deadline + Duration::from_secs(5), |h| h.delivered.is_empty());

        let first = h.http_for(seq).first().map(|x| x.at);
        prop_assert!(first.is_some(), "no HTTP fallback");
        let t_h = first.unwrap_or(Time::ZERO);
        let received: std::collections::BTreeSet<usize> = h
            .chunks_in
            .iter()
            .filter(|c| c.0 <= t_h && c.3 == seq)
            .map(|c| c.4 as usize)
            .collect();
        let missing: Vec<usize> = (0..n).filter(|i| !received.contains(i)).collect();
        let missing_bytes: u64 = missing
            .iter()
            .map(|&i| { let (a, b) = protocol::manifest::chunk_range(len as u64, i); b - a })
            .sum();
        let budget = ORIGIN_RTT + Duration::from_secs_f64(missing_bytes as f64 / ORIGIN_RATE);
        let margin = h.cfg.http_margin;
        prop_assert!(
            t_h <= deadline - margin - budget,
            "HTTP fallback at {:?}, later than deadline {:?} - margin - H({} bytes) = {:?}",
            t_h, deadline, missing_bytes, deadline - margin - budget
        );
        let at_th: Vec<&HttpLog> = h.http_for(seq).into_iter().filter(|x| x.at == t_h).collect();
        for i in &missing {
            prop_assert!(
                at_th.iter().any(|x| x.covers_chunk(len as u64, *i)),
                "chunk {} missing at {:?} not covered by {:?}", i, t_h, at_th
            );
        }
        let done = h.delivered.get(&seq).and_then(|v| v.first().copied());
        prop_assert!(done.is_some(), "not delivered");
        prop_assert!(done.unwrap_or(Time(u64::MAX)) <= deadline - margin, "delivered at {:?}, deadline {:?}", done, deadline);
    }

    /// Property 5: a peer that misbehaves on a request is banned with the matching reason and
    /// an event, is never accepted or connected again, and the segment still arrives intact
    /// (from the honest peer or the origin). The honest peer is never banned.
    #[test]
    fn misbehaving_peers_are_banned(
        bad in bad_behaviour(),
        len in 1usize..(8 * CHUNK_SIZE),
        bad_latency in 1u64..100,
        good_latency in 1u64..100,
        per_chunk in 1u64..20,
        good_holds in any::<bool>(),
    ) {
        let seq = 30;
        let mut h = Harness::new(config(), &[(seq, len)]);
        h.connect(100, FakePeer::new(bad.clone(), [seq]).timing(ms(bad_latency), ms(per_chunk)));
        let good_holds_v: Vec<u64> = if good_holds { vec![seq] } else { vec![] };
        h.connect(101, FakePeer::new(PeerBehaviour::Honest, good_holds_v).timing(ms(good_latency), ms(per_chunk)));
        h.want_at(at_ms(200), seq, at_ms(8000));
        h.run_while(at_ms(20_000), |h| h.delivered.is_empty());
        // Let the frames still in flight arrive (e.g. the second copy of a duplicate).
        h.run_until(h.now + Duration::from_secs(2));
        prop_assert_eq!(h.delivered.get(&seq).map(|v| v.len()), Some(1));
        prop_assert!(h.ban_events(101).is_empty());
        if h.requests_to(100) > 0 {
            let bans = h.ban_events(100);
            let want = bad.expected_ban().unwrap_or(BanReason::BadChunk);
            prop_assert_eq!(bans.len(), 1, "bans of the bad peer: {:?}", bans);
            prop_assert!(same_ban_kind(&bans[0].1, &want), "ban reason {:?}, expected {:?}", bans[0].1, want);
            prop_assert!(h.core.is_banned(100));
            prop_assert_eq!(h.disconnects(100), vec![peer_core::DisconnectReason::Banned]);
            // Never again: its offers are not answered, and it is not connected when the
            // server lists it.
            prop_assert_eq!(h.offer_from(100), None);
            h.input(Input::SignalMessage(ServerMsg::Peers { swarm: SWARM.into(), peers: vec![100, 102] }));
            h.run_until(h.now + Duration::from_secs(1));
            prop_assert!(h.connects(100).is_empty());
            prop_assert_eq!(h.creates(100).len(), 1, "only the first connection");
            prop_assert_eq!(h.connects(102).len(), 1, "the other listed peer is connected");
            // Whatever still arrives on the banned peer's old connection is ignored.
            let old = h.creates(100)[0].1;
            let sent = h.sent.len();
            h.input(Input::RtcOpen { conn: old });
            h.input(Input::RtcMessage { conn: old, data: hello(4, 77).encode() });
            prop_assert!(h.core.open_peers().all(|p| p != 100));
            prop_assert_eq!(h.sent.len(), sent, "nothing sent for the old connection");
        }
    }

    /// Property 6: truncated, failed, corrupt or over-long origin responses are never
    /// delivered; the chunks they did not bring are asked again by later requests; an
    /// over-long body is refused (`HttpCancel`).
    #[test]
    fn http_faults_are_retried(
        len in 1usize..(8 * CHUNK_SIZE),
        script in prop::collection::vec(http_behaviour(), 1..5),
        piece in 1000usize..40_000,
    ) {
        let seq = 40;
        let mut h = Harness::new(config(), &[(seq, len)]);
        h.origin.script = script.into();
        h.origin.piece = piece;
        h.want_at(at_ms(0), seq, at_ms(5000));
        h.run_while(at_ms(60_000), |h| h.delivered.is_empty());
        prop_assert_eq!(h.delivered.get(&seq).map(|v| v.len()), Some(1));
        let logs: Vec<HttpLog> = h.http_for(seq).into_iter().cloned().collect();
        let seg_len = len as u64;
        for (k, f) in logs.iter().enumerate() {
            let (a, b) = f.bytes(seg_len);
            let full = (b - a) as usize;
            // Bytes of this response the core may have kept (whole verified chunks in them).
            let kept = match f.behaviour {
                HttpBehaviour::Honest => continue,
                HttpBehaviour::Truncate(pm) => (full * pm as usize / 1000).min(full.saturating_sub(1)),
                HttpBehaviour::Fail(pm) => full * pm as usize / 1000,
                // The piece carrying the extra bytes is refused whole.
                HttpBehaviour::Longer => ((full + 10 - 1) / piece) * piece,
                HttpBehaviour::Corrupt => full / 2,
            } as u64;
            if matches!(f.behaviour, HttpBehaviour::Longer | HttpBehaviour::Corrupt) {
                prop_assert!(h.http_cancels().contains(&f.id), "response {} not refused", f.id);
            }
            let n = h.chunk_count(seq);
            for i in 0..n {
                let (cs, ce) = protocol::manifest::chunk_range(seg_len, i);
                if cs < a || ce > b || ce <= a + kept.min(full as u64) {
                    continue;
                }
                prop_assert!(
                    logs[k + 1..].iter().any(|l| l.covers_chunk(seg_len, i)),
                    "chunk {} lost by {:?} never asked again: {:?}", i, f, logs
                );
            }
        }
    }

    /// Property 7: arbitrary bytes from a connected peer never panic the core; bytes that do
    /// not decode ban it (`Malformed`).
    #[test]
    fn arbitrary_frames_never_panic(
        frames in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..80),
                (1u8..8, prop::collection::vec(any::<u8>(), 0..80)).prop_map(|(t, mut v)| { v.insert(0, t); v.insert(0, 1); v }),
            ],
            1..20,
        ),
    ) {
        let seq = 50;
        let mut h = Harness::new(config(), &[(seq, 3 * CHUNK_SIZE)]);
        h.connect(100, FakePeer::new(PeerBehaviour::Honest, [seq]));
        h.want_at(at_ms(0), seq, at_ms(5000));
        h.run_until(at_ms(10));
        let mut expect_ban = false;
        for (i, f) in frames.iter().enumerate() {
            if Frame::decode(f).is_err() && !expect_ban && h.core.open_peers().any(|p| p == 100) {
                expect_ban = true;
            }
            h.inject_at(at_ms(20 + i as u64), 100, Bytes::from(f.clone()));
        }
        h.run_while(at_ms(20_000), |h| h.delivered.is_empty());
        prop_assert_eq!(h.delivered.get(&seq).map(|v| v.len()), Some(1));
        if expect_ban {
            prop_assert!(h.core.is_banned(100));
            prop_assert_eq!(h.ban_events(100).len(), 1);
        }
    }

    /// Property 7, structured: well-formed frames with random fields (requests for anything,
    /// chunks under random ids, `Have`s with wrong counts, ...) never panic the core nor break
    /// its accounting; the player still gets the right bytes.
    #[test]
    fn random_valid_frames_never_panic(
        frames in prop::collection::vec(
            prop_oneof![
                (any::<u32>(), 48u64..54, 0u16..8, 1u16..8).prop_map(|(req_id, seq, first, count)| Frame::Request { req_id, seq, first, count }),
                (0u32..20, 48u64..54, 0u16..8, prop::collection::vec(any::<u8>(), 0..(CHUNK_SIZE + 2))).prop_map(|(req_id, seq, index, d)| Frame::Chunk { req_id, seq, index, data: Bytes::from(d) }),
                (48u64..54, 0u16..10).prop_map(|(seq, n)| Frame::Have { entries: vec![HaveEntry::complete(seq, n)] }),
                prop::collection::vec(48u64..54, 0..4).prop_map(|seqs| Frame::Drop { seqs }),
                (0u32..20).prop_map(|req_id| Frame::Cancel { req_id }),
                (0u32..20).prop_map(|req_id| Frame::Absent { req_id, reason: AbsentReason::Busy }),
                // Its own instance, none, or the other peer's (then it is a duplicate of 100).
                prop_oneof![Just(0u64), Just(0xF00D_0000 + 101), Just(0xF00D_0000 + 100)]
                    .prop_map(|instance| hello(0, instance)),
            ],
            1..30,
        ),
    ) {
        let segs = [(50, 3 * CHUNK_SIZE), (51, CHUNK_SIZE + 5)];
        let mut h = Harness::new(config(), &segs);
        h.connect(100, FakePeer::new(PeerBehaviour::Honest, [50, 51]));
        h.connect(101, FakePeer::new(PeerBehaviour::Honest, [50, 51]));
        h.want_at(at_ms(0), 50, at_ms(4000));
        h.want_at(at_ms(0), 51, at_ms(4000));
        for (i, f) in frames.iter().enumerate() {
            h.inject_at(at_ms(50 + 7 * i as u64), 101, f.encode());
        }
        h.run_while(at_ms(30_000), |h| h.delivered.len() < 2);
        prop_assert_eq!(h.delivered.len(), 2);
        prop_assert!(h.ban_events(100).is_empty());
        // Nothing the injected peer did reached the player unverified; if banned, it was told.
        if h.core.is_banned(101) {
            let told = h.outputs.iter().any(|(_, o)| matches!(o, Output::Event(Event::PeerBanned { peer: 101, .. })));
            prop_assert!(told, "ban without event");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Two real cores, introduced to each other (both ways, or one way only), at random
    /// latencies: whether or not both offer (glare), they end with exactly one connection each,
    /// paired with each other and open, and it stays up; when both offered, the lower id's
    /// offer is the one used, on both sides. Each core's `check_invariants()` runs after every
    /// input (in `Net`).
    #[test]
    fn two_cores_pair_exactly_once(
        ids in (1u64..100, 1u64..100).prop_filter("distinct", |(a, b)| a != b),
        lat in (1u64..80, 1u64..80),
        both_introduced in any::<bool>(),
        first_added in any::<bool>(),
    ) {
        let (a, b) = ids;
        let mut net = Net::new(2);
        let mut order = [(a, 0u32, b, lat.0), (b, 1u32, a, lat.1)];
        if first_added {
            order.swap(0, 1);
        }
        for (k, (id, slot, other, l)) in order.into_iter().enumerate() {
            let introduce = if both_introduced || k == 0 { vec![other] } else { vec![] };
            net.add(id, Config { seed: id, ..config() }, slot, introduce);
            if let Some(n) = net.nodes.get_mut(&id) {
                n.latency = ms(l);
            }
        }
        net.run_until(at_ms(25_000));
        let mut wires = Vec::new();
        for (me, other) in [(a, b), (b, a)] {
            let n = net.node(me);
            prop_assert!(n.core.open_peers().eq([other]), "{} not open to {}", me, other);
            prop_assert_eq!(n.wires.len(), 1);
            let (c, w) = n.wires.iter().next().map(|(c, w)| (*c, w.clone())).expect("wire");
            wires.push((me, c, w));
        }
        let (ma, ca, wa) = wires[0].clone();
        let (mb, cb, wb) = wires[1].clone();
        prop_assert_eq!(wa.remote, Some(cb));
        prop_assert_eq!(wb.remote, Some(ca));
        prop_assert!(wa.offerer != wb.offerer);
        let offered = |id: PeerId| net.node(id).outputs.iter().any(|(_, o)| matches!(o, Output::RtcCreate { offerer: true, .. }));
        if offered(ma) && offered(mb) {
            let lo_offers = if ma < mb { wa.offerer } else { wb.offerer };
            prop_assert!(lo_offers, "glare won by the higher id");
        }
    }
}
