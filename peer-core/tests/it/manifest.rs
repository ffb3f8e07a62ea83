//! The integrity manifest as the core polls it, the player's wants by URL, and prefetch of the
//! live edge.

use crate::common;

use std::time::Duration;

use common::*;
use peer_core::manifest::MAX_PARKED;
use peer_core::{Config, Input, Time};
use protocol::{CHUNK_SIZE, Frame};

const LEN: usize = 2 * CHUNK_SIZE + 100;

fn failed(h: &Harness, seq: u64) -> Vec<Time> {
    h.want_failed
        .iter()
        .filter(|(_, u)| *u == url_of(seq))
        .map(|(t, _)| *t)
        .collect()
}

/// Runs until the next `FetchManifest` is emitted (the fetch is then in flight).
fn until_next_fetch(h: &mut Harness, limit: Time) -> Time {
    let n = h.manifest_fetches.len();
    h.run_while(limit, |h| h.manifest_fetches.len() == n);
    *h.manifest_fetches.last().expect("a fetch")
}

/// A want for a segment the manifest does not list yet makes the core fetch the manifest at
/// once; listed by then, it is served; listed by no manifest fetched after the want, it fails.
#[test]
fn want_for_unknown_segment_fetches_the_manifest() {
    let segs = [(1, LEN), (2, LEN), (3, LEN)];
    let mut h = Harness::listing(config(), &segs, &[1], SLOT, SLOTS);
    h.origin.manifest_latency = ms(40);
    assert_eq!(h.manifest_fetches, vec![Time::ZERO]);

    // Listed at the origin, not yet seen by the core: the want fetches at once and is served.
    h.run_until(at_ms(100));
    h.origin.list(2);
    h.want_at(at_ms(120), 2, at_ms(10_000));
    h.run_until(at_ms(121));
    assert!(
        h.manifest_fetches.contains(&at_ms(120)),
        "{:?}",
        h.manifest_fetches
    );
    h.run_while(at_ms(10_000), |h| !h.delivered.contains_key(&2));
    assert_eq!(h.delivered.get(&2).map(Vec::len), Some(1));
    assert!(failed(&h, 2).is_empty());

    // Listed by none: fails as soon as the manifest fetched for it is in. (Wanted while no
    // fetch is out: just after one came back.)
    let limit = h.now + Duration::from_secs(5);
    let fetch = until_next_fetch(&mut h, limit);
    let t = fetch + ms(50);
    h.want_at(t, 3, t + Duration::from_secs(10));
    h.run_until(t + ms(39));
    assert!(
        failed(&h, 3).is_empty(),
        "failed before the manifest came back"
    );
    assert!(h.manifest_fetches.contains(&t));
    h.run_until(t + ms(40));
    assert_eq!(failed(&h, 3), vec![t + ms(40)]);
    assert!(!h.delivered.contains_key(&3));
}

/// A want that arrives while a fetch is already out is not failed by that fetch's (older)
/// manifest: the core fetches again right away and decides on that one.
#[test]
fn want_waits_for_a_manifest_fetched_after_it() {
    for listed_meanwhile in [true, false] {
        let segs = [(1, LEN), (4, LEN)];
        let mut h = Harness::listing(config(), &segs, &[1], SLOT, SLOTS);
        h.origin.manifest_latency = ms(40);
        let fetch = until_next_fetch(&mut h, at_ms(5_000));
        assert!(fetch > Time::ZERO);
        // Segment 4 appears at the origin after that fetch went out; the player wants it.
        if listed_meanwhile {
            h.origin.list(4);
        }
        h.want_at(fetch + ms(10), 4, fetch + Duration::from_secs(10));
        h.run_until(fetch + ms(40));
        assert!(
            failed(&h, 4).is_empty(),
            "failed by a manifest older than the want"
        );
        assert_eq!(
            h.manifest_fetches.last(),
            Some(&(fetch + ms(40))),
            "fetched again"
        );
        h.run_while(fetch + Duration::from_secs(10), |h| {
            h.delivered.is_empty() && h.want_failed.is_empty()
        });
        if listed_meanwhile {
            assert_eq!(h.delivered.get(&4).map(Vec::len), Some(1));
            assert!(h.want_failed.is_empty());
        } else {
            assert_eq!(failed(&h, 4), vec![fetch + ms(80)]);
        }
    }
}

/// Wants that wait for a manifest are bounded: beyond `MAX_PARKED` they fail at once. Without a
/// manifest URL, every want fails at once.
#[test]
fn parked_wants_are_bounded() {
    let mut h = Harness::listing(config(), &[(1, LEN)], &[1], SLOT, SLOTS);
    h.origin.manifest_latency = ms(100);
    for i in 0..(MAX_PARKED as u64 + 5) {
        h.want_at(at_ms(10), 1000 + i, at_ms(10_000));
    }
    h.run_until(at_ms(10));
    assert_eq!(h.want_failed.len(), 5, "{:?}", h.want_failed);
    h.run_until(at_ms(200));
    assert_eq!(h.want_failed.len(), MAX_PARKED + 5);

    let mut cfg = config();
    cfg.manifest_url = None;
    let mut h = Harness::unstarted(cfg);
    assert!(h.manifest_fetches.is_empty());
    h.want_at(at_ms(10), 1, at_ms(10_000));
    h.run_until(at_ms(10));
    assert_eq!(h.want_failed, vec![(at_ms(10), url_of(1))]);
}

/// Live: while segments keep appearing the manifest is polled every `manifest_poll` (no want
/// yet, so no learnt phase); once nothing changed for `manifest_idle_after`, every
/// `manifest_idle_poll`.
#[test]
fn manifest_polling_live_then_idle() {
    let mut cfg = config();
    cfg.manifest_poll = ms(500);
    cfg.manifest_idle_after = Duration::from_secs(20);
    cfg.manifest_idle_poll = Duration::from_secs(15);
    let (poll, idle_after, idle_poll) = (
        cfg.manifest_poll,
        cfg.manifest_idle_after,
        cfg.manifest_idle_poll,
    );
    let segs: Vec<(u64, usize)> = (1..=15).map(|s| (s, 1000)).collect();
    let mut h = Harness::listing(cfg, &segs, &[1], SLOT, SLOTS);
    let lat = ms(30);
    h.origin.manifest_latency = lat;
    // A new segment every 2 s until 28 s.
    for s in 2..=15u64 {
        h.run_until(at_ms(2_000 * (s - 1)));
        h.origin.list(s);
    }
    h.run_until(at_ms(100_000));
    let f = &h.manifest_fetches;
    // The fetch that saw the last segment: the first after it was listed (a fetch at that
    // very instant ran before the listing).
    let last_change = *f.iter().find(|t| **t > at_ms(28_000)).expect("fetch");
    for w in f.windows(2) {
        let gap = w[1].since(w[0]);
        if w[1] <= last_change + idle_after {
            assert!(
                gap >= poll && gap <= poll + lat,
                "live gap {gap:?} at {:?}: {f:?}",
                w[1]
            );
        } else if w[0] >= last_change + idle_after {
            assert!(
                gap >= idle_poll && gap <= idle_poll + lat,
                "idle gap {gap:?} at {:?}",
                w[1]
            );
        }
    }
    let idle_fetches = f.iter().filter(|t| **t > last_change + idle_after).count();
    assert!(
        (3..=5).contains(&idle_fetches),
        "{idle_fetches} idle fetches: {f:?}"
    );
    // Every segment was seen within one poll (plus the round trip) of appearing.
    for s in 2..=15u64 {
        let listed = at_ms(2_000 * (s - 1));
        let seen = f.iter().find(|t| **t > listed).expect("seen");
        assert!(seen.since(listed) <= poll, "segment {s} seen late");
    }
}

/// With the player watching (wants give the segment duration) the core learns when segments
/// appear and aims its polls at that: each new segment is still found within one
/// `manifest_poll` of appearing, with fewer fetches than polling every quarter of it.
#[test]
fn manifest_polling_with_wants_finds_the_edge() {
    let mut cfg = config();
    cfg.manifest_poll = ms(1_000);
    let poll = cfg.manifest_poll;
    let segs: Vec<(u64, usize)> = (1..=12).map(|s| (s, 1000)).collect();
    let mut h = Harness::listing(cfg, &segs, &[1], 1, 1);
    let lat = ms(30);
    h.origin.manifest_latency = lat;
    for s in 1..=12u64 {
        let t = at_ms(2_000 * (s - 1) + 300);
        if s > 1 {
            h.run_until(t - ms(300));
            h.origin.list(s);
        }
        h.want_at(t, s, t + Duration::from_secs(6));
    }
    h.run_until(at_ms(24_000));
    let f = &h.manifest_fetches;
    let quarter_cadence = (24_000 / (poll.as_millis() as usize / 4)) + 12;
    assert!(
        f.len() < quarter_cadence / 2,
        "{} fetches in 24 s: {f:?}",
        f.len()
    );
    for s in 2..=12u64 {
        let listed = at_ms(2_000 * (s - 1));
        let seen = f.iter().find(|t| **t > listed).expect("seen");
        assert!(seen.since(listed) <= poll, "segment {s} seen late: {f:?}");
    }
    assert_eq!(h.delivered.len(), 12);
    assert!(h.want_failed.is_empty());
}

/// A segment that appears after the player's newest want is fetched before the player asks:
/// from the origin by its designated seeder, from a peer that holds it otherwise. Segments the
/// player is past, a core without wants, or one without a neighbour to serve are not
/// prefetched; a later want is answered at once from the store.
#[test]
fn new_segments_are_prefetched() {
    // Designated for segment 11 (slot 11 of 1000), not for 10 or 9.
    let segs = [(9, LEN), (10, LEN), (11, LEN)];

    // Control: no want, nothing to extrapolate from: 11 is known but not fetched.
    let mut h = Harness::listing(config(), &segs, &[10], 11, 1000);
    h.run_until(at_ms(2_000));
    h.origin.list(11);
    h.run_until(at_ms(6_000));
    assert!(h.http.is_empty(), "{:?}", h.http);

    // Control: a want, but no neighbour to serve: 11 waits for the player's want.
    let mut h = Harness::listing(config(), &segs, &[10], 11, 1000);
    h.want_at(at_ms(0), 10, at_ms(6_000));
    h.run_until(at_ms(3_000));
    h.origin.list(11);
    h.run_until(at_ms(6_000));
    assert!(h.http_for(11).is_empty(), "{:?}", h.http);

    // With a want for 10 and a neighbour (holding nothing): 11 is fetched as soon as it is
    // seen; 9 (behind the want) is not.
    let mut h = Harness::listing(config(), &segs, &[10], 11, 1000);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    h.want_at(at_ms(0), 10, at_ms(6_000));
    h.run_while(at_ms(6_000), |h| h.delivered.is_empty());
    assert_eq!(h.delivered.get(&10).map(Vec::len), Some(1));
    h.run_until(at_ms(3_000));
    h.origin.list(11);
    h.origin.list(9);
    let seen = until_next_fetch(&mut h, at_ms(5_000));
    h.run_until(seen + ms(1));
    let started = h.http_started.get(&11).copied();
    assert_eq!(started, Some(seen), "prefetch of 11 at discovery");
    h.run_until(at_ms(8_000));
    assert!(h.core.has_segment(11));
    assert!(
        !h.delivered.contains_key(&11),
        "prefetch hands nothing to the player"
    );
    assert!(h.http_for(9).is_empty(), "9 is behind the player");
    // The player asks: answered at once.
    h.want_at(at_ms(8_000), 11, at_ms(12_000));
    h.run_until(at_ms(8_000));
    assert_eq!(h.delivered.get(&11), Some(&vec![at_ms(8_000)]));
    assert_eq!(h.http_for(11).len(), 1, "fetched once");

    // Not designated, a peer holds the new segment: it is requested from the peer.
    let mut h = Harness::listing(config(), &segs, &[10], SLOT, SLOTS);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [9, 10, 11])));
    h.want_at(at_ms(0), 10, at_ms(6_000));
    h.run_while(at_ms(6_000), |h| h.delivered.is_empty());
    h.run_until(at_ms(3_000));
    h.origin.list(11);
    h.origin.list(9);
    let seen = until_next_fetch(&mut h, at_ms(5_000));
    h.run_until(seen + ms(1));
    let asked: Vec<(Time, u64)> = h
        .sent
        .iter()
        .filter_map(|s| match s.frame {
            Frame::Request { seq, .. } => Some((s.at, seq)),
            _ => None,
        })
        .collect();
    assert!(asked.contains(&(seen, 11)), "{asked:?}");
    assert!(!asked.iter().any(|a| a.1 == 9), "{asked:?}");
    h.run_until(at_ms(8_000));
    assert!(h.core.has_segment(11));
    assert!(h.http.is_empty());
    assert!(!h.delivered.contains_key(&11));
}

/// `Cancel` by URL: a parked want is dropped (no answer), a waiting one no longer delivered.
#[test]
fn cancel_by_url() {
    let segs = [(1, LEN), (2, LEN)];
    let mut h = Harness::listing(config(), &segs, &[1], SLOT, SLOTS);
    h.origin.manifest_latency = ms(50);
    h.want_at(at_ms(10), 2, at_ms(10_000));
    h.input_at(at_ms(20), Input::Cancel { url: url_of(2) });
    h.want_at(at_ms(30), 1, at_ms(10_000));
    h.input_at(at_ms(40), Input::Cancel { url: url_of(1) });
    h.run_until(at_ms(20_000));
    assert!(h.delivered.is_empty(), "{:?}", h.delivered);
    assert!(h.want_failed.is_empty(), "{:?}", h.want_failed);
}

/// A want by URL only (the player does not know the sequence number) is matched against the
/// manifest's URLs, for a listed segment and for one listed only later.
#[test]
fn want_by_url_only() {
    let segs = [(1, LEN), (2, LEN)];
    let mut h = Harness::listing(config(), &segs, &[1], SLOT, SLOTS);
    h.want_url_at(at_ms(10), url_of(1), None, at_ms(5_000));
    h.want_url_at(at_ms(20), url_of(2), None, at_ms(5_000));
    h.run_until(at_ms(15));
    h.origin.list(2);
    h.run_while(at_ms(10_000), |h| h.delivered.len() < 2);
    assert_eq!(h.delivered.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert!(h.want_failed.is_empty());
}

/// Another playlist's segment with the same sequence number (another rendition, the audio
/// track): its bytes are not this core's segment `seq`, so the want fails at once (the player
/// loads it itself) and nothing of this playlist's segment reaches it.
#[test]
fn want_for_another_playlists_seq_fails() {
    let segs = [(1, LEN), (2, LEN)];
    let mut h = Harness::listing(config(), &segs, &[1, 2], SLOT, SLOTS);
    let other = url_of(2).replace("seg", "audio/seg");
    assert_ne!(other, url_of(2));
    h.want_url_at(at_ms(10), other.clone(), Some(2), at_ms(5_000));
    h.want_url_at(at_ms(10), url_of(1), Some(1), at_ms(5_000));
    h.run_while(at_ms(6_000), |h| h.delivered.is_empty());
    h.run_until(at_ms(6_000));
    assert!(
        h.want_failed.iter().any(|(_, u)| *u == other),
        "{:?}",
        h.want_failed
    );
    assert_eq!(h.delivered.keys().copied().collect::<Vec<_>>(), vec![1]);
}

/// A manifest from the operator's integrity service (not a sidecar next to the playlist): its
/// segment URIs are written as in the playlist, so they resolve against the playlist's URL,
/// not the service's. The player's wants by URL are served (they failed as "another
/// playlist's segment" when resolved against the service URL).
#[test]
fn service_manifest_uris_resolve_against_the_playlist() {
    let segs = [(1, LEN), (2, LEN)];
    let cfg = Config {
        manifest_url: Some(
            "https://integrity.test/integrity?playlist=https%3A%2F%2Fcdn.test%2Flive%2Fstream.m3u8"
                .into(),
        ),
        playlist_url: Some("https://cdn.test/live/stream.m3u8?token=t".into()),
        ..config()
    };
    let mut h = Harness::listing(cfg, &segs, &[1, 2], SLOT, SLOTS);
    h.want_url_at(at_ms(10), url_of(1), Some(1), at_ms(5_000));
    h.want_url_at(at_ms(10), url_of(2), Some(2), at_ms(5_000));
    h.run_while(at_ms(6_000), |h| h.delivered.len() < 2);
    assert!(h.want_failed.is_empty(), "{:?}", h.want_failed);
    assert_eq!(h.delivered.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
}
