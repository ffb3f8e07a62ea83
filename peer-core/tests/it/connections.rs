//! Peer connections through the `Input`/`Output` API: re-offers, duplicate viewers after a
//! signaling restart, glare between two real cores, pending ICE candidates, the open grace.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::net::Net;
use common::*;
use peer_core::remotes::MAX_PENDING_CANDIDATES;
use peer_core::{ConnId, DisconnectReason, Event, Input, Output, Time};
use protocol::signaling::{ServerMsg, SignalData};
use protocol::{CHUNK_SIZE, Frame, Manifest, PeerId};

fn signal(from: PeerId, data: SignalData) -> Input {
    Input::SignalMessage(ServerMsg::Signal {
        swarm: SWARM.into(),
        from,
        data,
    })
}

fn candidate(i: usize) -> SignalData {
    SignalData::Candidate {
        candidate: format!("candidate:{i} 1 udp 2122260223 10.0.0.{i} 5000 typ host"),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
    }
}

/// Chunk requests the core sent for `seq`, with their connection.
fn requests_for(h: &Harness, seq: u64) -> Vec<(Time, ConnId)> {
    h.sent
        .iter()
        .filter(|s| matches!(s.frame, Frame::Request { seq: q, .. } if q == seq))
        .map(|s| (s.at, s.conn))
        .collect()
}

/// A connected peer (channel open, `Hello` both ways, its `Have` received and a segment served
/// from it) sends a new offer. The core closes the old connection, answers on a new one, sends
/// its `Hello` and `Have` there once it opens, and keeps fetching from the peer over it; the
/// old connection's late inputs are ignored.
#[test]
fn reoffer_replaces_the_connection() {
    let segs = [(1, 3 * CHUNK_SIZE), (2, 2 * CHUNK_SIZE + 7)];
    let mut h = Harness::new(config(), &segs);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [1, 2])));
    let old = h.conn_of(100).expect("conn");
    h.want_at(at_ms(0), 1, at_ms(20_000));
    h.run_while(at_ms(5_000), |h| h.delivered.is_empty());
    assert_eq!(h.delivered.get(&1).map(Vec::len), Some(1));
    assert!(h.http.is_empty(), "segment 1 came from the peer");
    assert!(requests_for(&h, 1).iter().all(|r| r.1 == old));
    assert!(matches!(h.sent_on(old)[0].frame, Frame::Hello { .. }));
    h.run_until(h.now + ms(100));

    // The new offer.
    let t = h.now;
    let new = h.offer_from(100).expect("re-offer answered");
    assert_ne!(new, old);
    assert!(h.closes().contains(&(t, old)), "old connection closed");
    assert_eq!(h.disconnects(100), vec![DisconnectReason::Reoffered]);
    let creates = h.creates(100);
    assert_eq!(
        creates.last(),
        Some(&(t, new, false)),
        "answering connection"
    );
    assert!(
        h.sent_on(new).is_empty(),
        "nothing sent before the channel opens"
    );
    assert_eq!(h.core.connections(), 1);

    // The old connection's leftovers: a frame that would get the peer banned, an open, a close.
    let outputs = h.outputs.len();
    h.input(Input::RtcMessage {
        conn: old,
        data: Bytes::from_static(&[9, 9, 9]),
    });
    h.input(Input::RtcOpen { conn: old });
    h.input(Input::RtcBuffered {
        conn: old,
        amount: 1 << 20,
    });
    h.input(Input::RtcClosed { conn: old });
    let extra: Vec<&Output> = h.outputs[outputs..]
        .iter()
        .map(|(_, o)| o)
        .filter(|o| !matches!(o, Output::SignalSend(_)))
        .collect();
    assert!(
        extra.is_empty(),
        "old connection inputs acted on: {extra:?}"
    );
    assert!(h.ban_events(100).is_empty());
    assert_eq!(h.core.connections(), 1);

    // The new channel opens: our Hello and Have go on it.
    h.open(100, new);
    let on_new: Vec<Frame> = h.sent_on(new).iter().map(|s| s.frame.clone()).collect();
    assert!(
        matches!(on_new.first(), Some(Frame::Hello { .. })),
        "{on_new:?}"
    );
    let have = on_new.iter().any(|f| match f {
        Frame::Have { entries } => entries.iter().any(|e| e.seq == 1 && e.is_complete()),
        _ => false,
    });
    assert!(have, "Have for the segment we hold: {on_new:?}");
    assert!(h.core.open_peers().eq([100]));

    // Segments keep flowing from the peer, over the new connection.
    let t = h.now;
    h.want_at(t, 2, t + Duration::from_secs(20));
    h.run_while(t + Duration::from_secs(5), |h| {
        !h.delivered.contains_key(&2)
    });
    assert_eq!(h.delivered.get(&2).map(Vec::len), Some(1));
    let reqs = requests_for(&h, 2);
    assert!(!reqs.is_empty());
    assert!(reqs.iter().all(|r| r.1 == new), "{reqs:?}");
    assert!(h.http.is_empty());
    assert_eq!(h.core.stats().delivered_http_bytes, 0);
}

/// Connected to viewer A (id 5, instance X), the signaling link drops; the core reconnects on
/// its timer, is welcomed under a new id, joins, and is introduced to A under its new id 9.
/// Both ways of meeting again (we offer to 9, or 9 offers to us) end with 9's `Hello` carrying
/// X: that new connection is closed as a duplicate, and the one to 5 stays open and serving.
#[test]
fn duplicate_after_signaling_restart() {
    const X: u64 = 0x5EED_0000_0000_0001;
    for incoming in [false, true] {
        let segs = [(1, 2 * CHUNK_SIZE), (2, 2 * CHUNK_SIZE)];
        let mut h = Harness::new(config(), &segs);
        assert!(h.connect(5, FakePeer::new(PeerBehaviour::Honest, [1, 2]).instance(X)));
        let c5 = h.conn_of(5).expect("conn to 5");
        h.want_at(at_ms(0), 1, at_ms(20_000));
        h.run_while(at_ms(5_000), |h| h.delivered.is_empty());
        assert_eq!(h.delivered.get(&1).map(Vec::len), Some(1));

        // The signaling server restarts: new ids for everybody.
        h.server.me = 2;
        h.server.join_peers = if incoming { vec![] } else { vec![9] };
        h.peers
            .insert(9, FakePeer::new(PeerBehaviour::Honest, [1, 2]).instance(X));
        let t = h.now;
        h.input(Input::SignalClosed);
        assert!(!h.core.joined());
        h.run_while(t + Duration::from_secs(5), |h| !h.core.joined());
        assert!(h.core.joined(), "rejoined");
        assert_eq!(h.core.peer_id(), Some(2));
        let reconnect = h.server.connects[1];
        // First failure: base = reconnect_min, ±50 %.
        let delay = reconnect.since(t);
        assert!(
            delay >= h.cfg.reconnect_min / 2 && delay <= h.cfg.reconnect_min * 3 / 2,
            "reconnect after {delay:?}"
        );
        assert_eq!(h.core.stats().signal_reconnects, 1);
        assert_eq!(h.conn_of(5), Some(c5), "channel to 5 kept meanwhile");

        let c9 = if incoming {
            let c = h.offer_from(9).expect("offer from 9 answered");
            h.open(9, c);
            c
        } else {
            h.run_while(h.now + Duration::from_secs(1), |h| h.creates(9).is_empty());
            let creates = h.creates(9);
            assert_eq!(creates.len(), 1, "one connection to 9");
            assert!(creates[0].2, "we offer to an introduced member");
            creates[0].1
        };
        h.run_while(h.now + Duration::from_secs(2), |h| {
            !h.closes().iter().any(|c| c.1 == c9)
        });
        assert!(
            h.closes().iter().any(|c| c.1 == c9),
            "duplicate connection closed ({incoming})"
        );
        assert_eq!(h.disconnects(9), vec![DisconnectReason::Duplicate]);
        assert!(h.disconnects(5).is_empty());
        assert!(h.core.open_peers().eq([5]));
        assert!(!h.closes().iter().any(|c| c.1 == c5));

        // 5 still serves.
        let t = h.now;
        h.want_at(t, 2, t + Duration::from_secs(20));
        h.run_while(t + Duration::from_secs(5), |h| {
            !h.delivered.contains_key(&2)
        });
        assert_eq!(h.delivered.get(&2).map(Vec::len), Some(1));
        let reqs = requests_for(&h, 2);
        assert!(
            !reqs.is_empty() && reqs.iter().all(|r| r.1 == c5),
            "{reqs:?}"
        );
        assert!(h.http.is_empty());
        assert!(h.core.connections() == 1);
    }
}

/// Two real cores introduced to each other at once both offer (glare). The lower id's offer
/// wins on both sides: the higher one drops its own attempt and answers; the lower one ignores
/// the higher one's offer. One connection each, paired, open, and it stays up.
fn glare(lo: PeerId, hi: PeerId, lat_lo: u64, lat_hi: u64) -> Net {
    assert!(lo < hi);
    let mut net = Net::new(2);
    // Insertion order must not matter: add the higher one first half of the time.
    let order = if (lat_lo + lat_hi).is_multiple_of(2) {
        [(lo, 0, hi), (hi, 1, lo)]
    } else {
        [(hi, 1, lo), (lo, 0, hi)]
    };
    for (id, slot, other) in order {
        let cfg = peer_core::Config {
            seed: id,
            ..config()
        };
        net.add(id, cfg, slot, vec![other]);
        net.nodes.get_mut(&id).expect("node").latency = ms(if id == lo { lat_lo } else { lat_hi });
    }
    net.run_until(at_ms(15_000));
    for (me, other) in [(lo, hi), (hi, lo)] {
        let n = net.node(me);
        assert!(
            n.core.open_peers().eq([other]),
            "{me} open to {other} ({lat_lo}/{lat_hi})"
        );
        assert_eq!(n.wires.len(), 1, "{me}: one connection");
        let connected = n
            .outputs
            .iter()
            .filter(|(_, o)| matches!(o, Output::Event(Event::PeerConnected { .. })))
            .count();
        assert_eq!(connected, 1, "{me}: connected once");
    }
    let (lc, lw) = net
        .node(lo)
        .wires
        .iter()
        .next()
        .map(|(c, w)| (*c, w.clone()))
        .expect("w");
    let (hc, hw) = net
        .node(hi)
        .wires
        .iter()
        .next()
        .map(|(c, w)| (*c, w.clone()))
        .expect("w");
    assert!(lw.offerer, "the lower id's offer is the one used");
    assert!(!hw.offerer);
    assert_eq!(lw.remote, Some(hc));
    assert_eq!(hw.remote, Some(lc));
    // The lower one never gave up its connection.
    let lo_closes = net
        .node(lo)
        .outputs
        .iter()
        .filter(|(_, o)| matches!(o, Output::RtcClose { .. }))
        .count();
    assert_eq!(lo_closes, 0);
    net
}

fn offered(net: &Net, id: PeerId) -> bool {
    net.node(id)
        .outputs
        .iter()
        .any(|(_, o)| matches!(o, Output::RtcCreate { offerer: true, .. }))
}

#[test]
fn glare_lower_id_wins_on_both_sides() {
    for (lo, hi) in [(10, 11), (3, 40)] {
        for (lat_lo, lat_hi) in [(10, 10), (10, 15), (15, 10), (7, 13)] {
            let net = glare(lo, hi, lat_lo, lat_hi);
            assert!(
                offered(&net, lo) && offered(&net, hi),
                "no glare with {lat_lo}/{lat_hi}"
            );
            // The higher one dropped its own attempt.
            let hi_closes = net
                .node(hi)
                .outputs
                .iter()
                .filter(|(_, o)| matches!(o, Output::RtcClose { .. }))
                .count();
            assert_eq!(hi_closes, 1);
        }
    }
}

/// Candidates that arrive before the remote description is applied are held (at most
/// `MAX_PENDING_CANDIDATES`) and handed over, in order, on `RtcRemoteApplied`; later ones go
/// straight through. Answering side and offering side alike.
#[test]
fn pending_candidates_are_bounded_and_flushed() {
    for offerer in [false, true] {
        let mut h = Harness::new(config(), &[]);
        let peer: PeerId = 100;
        if offerer {
            h.input(Input::SignalMessage(ServerMsg::Peers {
                swarm: SWARM.into(),
                peers: vec![peer],
            }));
        } else {
            h.input(signal(
                peer,
                SignalData::Offer {
                    sdp: "remote offer".into(),
                },
            ));
        }
        let creates = h.creates(peer);
        assert_eq!(creates.len(), 1);
        let (_, conn, we_offer) = creates[0];
        assert_eq!(we_offer, offerer);
        let remote_candidates = |h: &Harness| -> Vec<SignalData> {
            h.outputs
                .iter()
                .filter_map(|(_, o)| match o {
                    Output::RtcRemote {
                        conn: c,
                        data: d @ SignalData::Candidate { .. },
                    } if *c == conn => Some(d.clone()),
                    _ => None,
                })
                .collect()
        };
        for i in 0..100 {
            h.input(signal(peer, candidate(i)));
        }
        // End of candidates (empty): nothing to add.
        h.input(signal(
            peer,
            SignalData::Candidate {
                candidate: String::new(),
                sdp_mid: None,
                sdp_m_line_index: None,
            },
        ));
        assert!(
            remote_candidates(&h).is_empty(),
            "candidates before the description"
        );
        if offerer {
            h.input(signal(
                peer,
                SignalData::Answer {
                    sdp: "remote answer".into(),
                },
            ));
            assert!(h.outputs.iter().any(|(_, o)| matches!(
                o,
                Output::RtcRemote { conn: c, data: SignalData::Answer { .. } } if *c == conn
            )));
            assert!(remote_candidates(&h).is_empty());
        }
        h.input(Input::RtcRemoteApplied { conn });
        let flushed = remote_candidates(&h);
        let expected: Vec<SignalData> = (0..MAX_PENDING_CANDIDATES).map(candidate).collect();
        assert_eq!(flushed, expected, "held candidates, in order, bounded");
        h.input(signal(peer, candidate(500)));
        assert_eq!(remote_candidates(&h).last(), Some(&candidate(500)));
        assert_eq!(remote_candidates(&h).len(), MAX_PENDING_CANDIDATES + 1);
    }
}

/// With `open_grace`, nothing goes out on a channel that opened until the grace is over (the
/// core wakes itself for it) or the other side speaks first.
#[test]
fn open_grace_holds_our_first_frames() {
    let grace = ms(300);
    // The core holds segment 1 (its designated fetch), so it has a `Have` to send too.
    let start = |mute: bool, latency: Duration| {
        let mut cfg = config();
        cfg.open_grace = grace;
        let mut h = Harness::with_slot(cfg, &[(1, 2 * CHUNK_SIZE)], 1, SLOTS);
        h.want_at(at_ms(0), 1, at_ms(10_000));
        h.run_while(at_ms(5_000), |h| h.delivered.is_empty());
        assert!(h.core.has_segment(1));
        let behaviour = if mute {
            PeerBehaviour::Mute
        } else {
            PeerBehaviour::Honest
        };
        let t0 = h.now;
        assert!(h.connect(100, FakePeer::new(behaviour, []).timing(latency, ms(5))));
        (h, t0)
    };
    let first_frames = |h: &Harness| -> Vec<(Time, &'static str)> {
        let conn = h.conn_of(100).expect("conn");
        h.sent_on(conn)
            .iter()
            .map(|s| (s.at, s.frame.kind()))
            .collect()
    };

    // The peer stays silent: Hello and Have exactly when the grace ends.
    let (mut h, t0) = start(true, ms(20));
    h.run_until(t0 + grace - ms(1));
    assert!(first_frames(&h).is_empty(), "sent during the grace");
    h.run_until(t0 + grace + ms(50));
    let f = first_frames(&h);
    assert_eq!(
        f.iter().map(|x| x.1).collect::<Vec<_>>(),
        ["hello", "have"],
        "{f:?}"
    );
    assert!(f.iter().all(|x| x.0 == t0 + grace), "{f:?}");

    // The peer speaks first (its Hello after 100 ms): ours goes out then.
    let (mut h, t0) = start(false, ms(100));
    h.run_until(t0 + ms(99));
    assert!(first_frames(&h).is_empty());
    h.run_until(t0 + ms(100));
    let f = first_frames(&h);
    assert_eq!(f.first().map(|x| x.1), Some("hello"), "{f:?}");
    assert!(f.iter().all(|x| x.0 == t0 + ms(100)), "{f:?}");

    // Control: without a grace, Hello goes out on open.
    let mut h = Harness::new(config(), &[]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Mute, [])));
    let conn = h.conn_of(100).expect("conn");
    assert!(matches!(
        h.sent_on(conn).first().map(|s| &s.frame),
        Some(Frame::Hello { .. })
    ));
}

/// The glare relay itself, used by the two-core test elsewhere: a manifest is not needed.
#[test]
fn glare_then_transfer() {
    let mut net = glare(10, 11, 10, 10);
    let data = segment_data(4, 3 * CHUNK_SIZE);
    net.origin.insert(url_of(4), data.clone());
    net.manifest = Manifest {
        segments: vec![manifest_entry(4, &data)],
    };
    // Both cores see the segment at their next poll and want it; node 10 is slot 0 of 2,
    // designated for even segments, and shares it with 11 over the glare-made connection.
    net.run_until(net.now + ms(600));
    let t = net.now;
    for id in [10, 11] {
        net.input(
            id,
            Input::Want {
                url: url_of(4),
                seq: Some(4),
                deadline: t + Duration::from_secs(30),
                duration: SEG_DURATION,
            },
        );
    }
    net.run_until(t + Duration::from_secs(3));
    for id in [10, 11] {
        let got =
            net.node(id).outputs.iter().any(
                |(_, o)| matches!(o, Output::SegmentReady { seq: 4, data: d, .. } if *d == data),
            );
        assert!(got, "{id} delivered");
    }
    assert_eq!(
        net.node(11).core.stats().delivered_p2p_bytes,
        data.len() as u64
    );
}

/// After closing a duplicate (viewer X reached as 5 and, after a signaling restart, as 9), the
/// core does not dial 9 again each time the server lists it (it asks for members every few
/// seconds while it has few): one handshake, not one per `peers` answer. Once the connection to
/// 5 is gone, 9 is the way to that viewer and is connected again.
#[test]
fn duplicate_is_not_dialed_again() {
    const X: u64 = 0x77;
    let mut h = Harness::new(config(), &[(1, 2 * CHUNK_SIZE)]);
    assert!(h.connect(5, FakePeer::new(PeerBehaviour::Honest, [1]).instance(X)));
    h.server.me = 2;
    h.server.join_peers = vec![9];
    h.peers
        .insert(9, FakePeer::new(PeerBehaviour::Honest, [1]).instance(X));
    h.input(Input::SignalClosed);
    // The server answers every `want_peers` with 9.
    let mut answered = 0;
    let mut serve_members = |h: &mut Harness, until: Time| {
        while h.now < until {
            let t = h.now + ms(100);
            h.run_until(t);
            let asked = h
                .signal_sent()
                .iter()
                .filter(|(_, m)| matches!(m, protocol::signaling::ClientMsg::WantPeers { .. }))
                .count();
            while answered < asked {
                answered += 1;
                h.input(Input::SignalMessage(ServerMsg::Peers {
                    swarm: SWARM.into(),
                    peers: vec![9],
                }));
            }
        }
    };
    serve_members(&mut h, at_ms(60_000));
    let asked = h
        .signal_sent()
        .iter()
        .filter(|(_, m)| matches!(m, protocol::signaling::ClientMsg::WantPeers { .. }))
        .count();
    assert!(asked >= 5, "the core asked for members {asked} times");
    assert_eq!(h.creates(9).len(), 1, "9 dialed again and again");
    assert_eq!(h.disconnects(9), vec![DisconnectReason::Duplicate]);
    assert!(h.core.open_peers().eq([5]));

    // 5 leaves: 9 is dialed when listed again, and stays.
    h.close_at(h.now, 5);
    serve_members(&mut h, at_ms(80_000));
    assert_eq!(h.creates(9).len(), 2);
    assert!(h.core.open_peers().eq([9]));
}

/// The other side's first frames can reach the core before the driver's own "channel open"
/// event (the native driver reads them on another task): they prove the channel open and are
/// processed, not dropped. Dropping them lost the peer's Hello and Haves: it was never asked for
/// a chunk (native ↔ Chromium interop: the browser uploaded nothing).
#[test]
fn frames_before_the_open_event_are_not_lost() {
    use peer_core::{Config, PeerCore};

    let cfg = Config {
        swarm: "s".into(),
        ..Config::default()
    };
    let mut core = PeerCore::new(cfg);
    let t = Time::from_millis(10);
    core.handle(t, Input::SignalOpened);
    core.handle(
        t,
        Input::SignalMessage(ServerMsg::Welcome {
            peer_id: 1,
            heartbeat_ms: 20_000,
            ice_servers: Vec::new(),
        }),
    );
    core.handle(
        t,
        Input::SignalMessage(ServerMsg::Joined {
            swarm: "s".into(),
            peers: vec![7],
            slot: 0,
            slots: 2,
        }),
    );
    let mut conn = None;
    while let Some(o) = core.poll_output() {
        if let Output::RtcCreate {
            conn: c, peer: 7, ..
        } = o
        {
            conn = Some(c);
        }
    }
    let conn = conn.expect("a connection to the introduced peer");
    let hello = Frame::Hello {
        swarm: "s".into(),
        max_inflight: 8,
        instance: Some(42),
    }
    .encode();
    // No Input::RtcOpen yet.
    core.handle(
        Time::from_millis(20),
        Input::RtcMessage { conn, data: hello },
    );
    let outs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Event(Event::PeerConnected { peer: 7 }))),
        "{outs:?}"
    );
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::RtcSend { conn: c, .. } if *c == conn)),
        "our Hello went out: {outs:?}"
    );
    assert_eq!(core.open_peers().collect::<Vec<_>>(), vec![7]);
    // The late open event changes nothing.
    core.handle(Time::from_millis(30), Input::RtcOpen { conn });
}
