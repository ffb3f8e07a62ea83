//! The signaling session as the core runs it: reconnect backoff with jitter, the welcome
//! timeout, pings at half the heartbeat, the server's `reconnect`, and joining again.

use crate::common;

use std::time::Duration;

use common::*;
use peer_core::{Event, Input, Output, Time};
use protocol::signaling::{ClientMsg, ServerMsg};

fn welcome(peer_id: u64, heartbeat_ms: u32) -> Input {
    Input::SignalMessage(ServerMsg::Welcome {
        peer_id,
        heartbeat_ms,
        ice_servers: Vec::new(),
    })
}

fn joins(h: &Harness) -> Vec<(Time, Option<String>)> {
    h.signal_sent()
        .iter()
        .filter_map(|(t, m)| match m {
            ClientMsg::Join { swarm, token } => {
                assert_eq!(swarm, SWARM);
                Some((*t, token.clone()))
            }
            _ => None,
        })
        .collect()
}

fn pings(h: &Harness) -> Vec<Time> {
    h.signal_sent()
        .iter()
        .filter(|(_, m)| *m == ClientMsg::Ping)
        .map(|(t, _)| *t)
        .collect()
}

fn signal_closes(h: &Harness) -> Vec<Time> {
    h.outputs
        .iter()
        .filter(|(_, o)| *o == Output::SignalClose)
        .map(|(t, _)| *t)
        .collect()
}

/// Failure `n` in a row waits `min(reconnect_min · 2^n, reconnect_max)` ±50 % before the next
/// `SignalConnect`; the jitter is real (delays differ from the base, both ways, across seeds);
/// a `welcome` resets the count.
#[test]
fn reconnect_backoff_grows_with_jitter() {
    let min = ms(500);
    let max = ms(8_000);
    let mut ratios = Vec::new();
    for seed in 1..=6 {
        let mut cfg = config();
        cfg.seed = seed;
        cfg.reconnect_min = min;
        cfg.reconnect_max = max;
        let mut h = Harness::unstarted(cfg);
        assert_eq!(h.server.connects, vec![Time::ZERO], "connects at start");
        for n in 0..10u32 {
            let closed = h.now;
            h.input(Input::SignalClosed);
            if n == 3 {
                // A close while already waiting is not another failure.
                h.input(Input::SignalClosed);
            }
            let k = h.server.connects.len();
            h.run_while(closed + Duration::from_secs(60), |h| {
                h.server.connects.len() == k
            });
            assert_eq!(
                h.server.connects.len(),
                k + 1,
                "reconnected after failure {n}"
            );
            let delay = h.server.connects[k].since(closed);
            let base = min.saturating_mul(1 << n).min(max);
            assert!(
                delay >= base / 2 && delay <= base * 3 / 2,
                "seed {seed}, failure {n}: {delay:?} for base {base:?}"
            );
            ratios.push(delay.as_secs_f64() / base.as_secs_f64());
        }
        // Welcomed: the next failure waits about `min` again.
        h.input(Input::SignalOpened);
        h.input(welcome(3, 20_000));
        assert_eq!(h.core.peer_id(), Some(3));
        let closed = h.now;
        h.input(Input::SignalClosed);
        let k = h.server.connects.len();
        h.run_while(closed + Duration::from_secs(60), |h| {
            h.server.connects.len() == k
        });
        let delay = h.server.connects[k].since(closed);
        assert!(
            delay >= min / 2 && delay <= min * 3 / 2,
            "after welcome: {delay:?}"
        );
    }
    let lo = ratios.iter().copied().fold(f64::MAX, f64::min);
    let hi = ratios.iter().copied().fold(f64::MIN, f64::max);
    assert!(lo < 0.8 && hi > 1.2, "no jitter: ratios in [{lo}, {hi}]");
}

/// A connection that never says `welcome` is closed after `signal_timeout` and retried after
/// the backoff.
#[test]
fn welcome_timeout_closes_and_retries() {
    let cfg = config();
    let timeout = cfg.signal_timeout;
    let min = cfg.reconnect_min;
    let mut h = Harness::unstarted(cfg);
    h.input(Input::SignalOpened);
    h.run_until(Time::ZERO + timeout - ms(1));
    assert!(signal_closes(&h).is_empty());
    assert_eq!(h.server.connects.len(), 1);
    h.run_until(Time::ZERO + timeout);
    assert_eq!(signal_closes(&h), vec![Time::ZERO + timeout]);
    h.run_until(Time::ZERO + timeout + min * 3 / 2);
    assert_eq!(h.server.connects.len(), 2);
    let delay = h.server.connects[1].since(Time::ZERO + timeout);
    assert!(delay >= min / 2, "{delay:?}");
}

/// Pings every half heartbeat from the welcome on; none while the link is down.
#[test]
fn pings_at_half_the_heartbeat() {
    for heartbeat_ms in [20_000u32, 6_000] {
        let mut cfg = config();
        cfg.reconnect_min = Duration::from_secs(100);
        cfg.reconnect_max = Duration::from_secs(100);
        let mut h = Harness::unstarted(cfg);
        let t0 = at_ms(1_234);
        h.run_until(t0);
        h.input(Input::SignalOpened);
        h.input(welcome(1, heartbeat_ms));
        let half = ms(u64::from(heartbeat_ms) / 2);
        let end = t0 + half * 5 + ms(10);
        h.run_until(end);
        let want: Vec<Time> = (1..=5).map(|k| t0 + half * k).collect();
        assert_eq!(pings(&h), want, "heartbeat {heartbeat_ms}");
        // The link drops: no more pings.
        h.input(Input::SignalClosed);
        h.run_until(end + half * 4);
        assert_eq!(pings(&h).len(), 5);
    }
}

/// The server's `reconnect { after_ms }`: the core closes at once, connects again exactly
/// `after_ms` later, and joins again (with its token) when welcomed, under its new id. A later
/// loss of the link (by its own backoff) joins again too.
#[test]
fn server_reconnect_and_rejoin() {
    let mut cfg = config();
    cfg.token = Some("tok-1".into());
    let mut h = Harness::new(cfg, &[(1, 1000)]);
    assert_eq!(joins(&h), vec![(Time::ZERO, Some("tok-1".into()))]);
    h.run_until(at_ms(1_000));
    h.server.me = 7;
    h.input(Input::SignalMessage(ServerMsg::Reconnect {
        after_ms: 3_000,
    }));
    assert_eq!(signal_closes(&h), vec![at_ms(1_000)]);
    assert!(!h.core.joined());
    h.run_until(at_ms(3_999));
    assert_eq!(h.server.connects.len(), 1, "not before after_ms");
    h.run_until(at_ms(4_000));
    assert_eq!(h.server.connects, vec![Time::ZERO, at_ms(4_000)]);
    assert!(h.core.joined());
    assert_eq!(h.core.peer_id(), Some(7));
    assert_eq!(
        joins(&h),
        vec![
            (Time::ZERO, Some("tok-1".into())),
            (at_ms(4_000), Some("tok-1".into()))
        ]
    );
    let welcomed: Vec<u64> = h
        .outputs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Event(Event::Welcomed { peer_id, .. }) => Some(*peer_id),
            _ => None,
        })
        .collect();
    assert_eq!(welcomed, vec![ME, 7]);
    assert_eq!(h.core.stats().signal_reconnects, 1);

    // The page refreshed its token; the link drops: back after the backoff, joined again
    // with the fresh token.
    h.run_until(at_ms(6_000));
    h.input(Input::SetToken {
        token: Some("tok-2".into()),
    });
    h.server.me = 8;
    h.input(Input::SignalClosed);
    assert!(!h.core.joined());
    h.run_until(at_ms(8_000));
    assert_eq!(h.server.connects.len(), 3);
    assert!(h.core.joined());
    assert_eq!(h.core.peer_id(), Some(8));
    assert_eq!(joins(&h).len(), 3);
    assert_eq!(joins(&h)[2].1.as_deref(), Some("tok-2"));
    assert_eq!(h.core.stats().signal_reconnects, 2);
}

/// `Close`: goodbye (`leave`), the socket closed, no timers, nothing more.
#[test]
fn close_leaves() {
    let mut h = Harness::new(config(), &[(1, 1000)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    let conn = h.conn_of(100).expect("conn");
    // Wanted and not delivered yet: one listed, one waiting for the manifest.
    h.origin.manifest_latency = ms(100);
    h.want_at(at_ms(10), 1, at_ms(9_000));
    h.want_url_at(at_ms(10), url_of(2), Some(2), at_ms(9_000));
    h.run_until(at_ms(20));
    assert!(h.want_failed.is_empty() && h.delivered.is_empty());
    h.input(Input::Close);
    let mut failed: Vec<String> = h.want_failed.iter().map(|w| w.1.clone()).collect();
    failed.sort();
    assert_eq!(failed, vec![url_of(1), url_of(2)], "open wants answered");
    assert!(matches!(
        h.signal_sent().last(),
        Some((_, ClientMsg::Leave { .. }))
    ));
    assert!(h.closes().iter().any(|c| c.1 == conn));
    assert!(h.outputs.iter().any(|o| o.1 == Output::SignalClose));
    assert_eq!(h.core.poll_timeout(), None);
    let n = h.outputs.len();
    h.input(Input::Timeout);
    h.input(Input::SignalClosed);
    assert_eq!(h.outputs.len(), n);
}

/// With a list of signaling URLs (the nodes of a cluster), each connection after a lost or
/// failed one goes to the next server, and a `reconnect` moves on too; the first one depends on
/// the seed, so viewers spread over the nodes.
#[test]
fn each_reconnect_tries_the_next_signaling_server() {
    let mut starts = std::collections::HashSet::new();
    for seed in 1..=8 {
        let mut cfg = config();
        cfg.seed = seed;
        let mut h = Harness::unstarted(cfg);
        let first = h.core.signal_server();
        starts.insert(first % 3);
        // Failures without a welcome: one server further each time.
        for n in 1..=3u32 {
            let k = h.server.connects.len();
            h.input(Input::SignalClosed);
            let closed = h.now;
            h.run_while(closed + Duration::from_secs(60), |h| {
                h.server.connects.len() == k
            });
            assert_eq!(h.core.signal_server(), first.wrapping_add(n));
        }
        // Welcomed, then the server says it is going away: the next node.
        h.input(Input::SignalOpened);
        h.input(welcome(7, 20_000));
        let before = h.core.signal_server();
        h.input(Input::SignalMessage(ServerMsg::Reconnect { after_ms: 100 }));
        assert_eq!(h.core.signal_server(), before.wrapping_add(1));
    }
    assert!(
        starts.len() >= 2,
        "every seed starts on the same node: {starts:?}"
    );
}
