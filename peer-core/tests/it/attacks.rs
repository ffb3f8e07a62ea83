//! A hostile public swarm: each attack is tried here, and fails.
//!
//! * Have flood: `Have` frames padded to 64 KiB do not pin their frames in memory.
//! * Upload starvation: a peer that never reads its channel and floods requests does not stop
//!   uploads to the others.
//! * Frame floods: a peer over the frame rate is banned, whatever state its connection is in.
//! * Request bitmaps: more than 64 chunks per request is clamped, not an overflow.
//! * Config: nonsense is rejected (`try_new`) or clamped (`new`).
//! * Manifest skew: a peer serving a segment the origin re-published is not banned for it.

use crate::common;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use peer_core::remotes::{FLOOD_BURST, FLOOD_RATE, MAX_REMOTE_HAVE_BYTES, STUCK_TIMEOUT};
use peer_core::{
    BanReason, Config, ConfigError, DisconnectReason, Input, MIN_TIMER, PeerCore, Time,
};
use protocol::{CHUNK_SIZE, Frame, PeerId};

// ------------------------------------------------------------ helpers

/// A core that holds segment `seq` (fetched from the origin as its designated seeder).
fn holding(cfg: peer_core::Config, seq: u64, len: usize) -> Harness {
    let mut h = Harness::with_slot(cfg, &[(seq, len)], 0, 1);
    h.want_at(at_ms(0), seq, at_ms(10_000));
    h.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    assert!(h.core.has_segment(seq));
    h
}

fn request(req_id: u32, seq: u64, first: u16, count: u16) -> Bytes {
    Frame::Request {
        req_id,
        seq,
        first,
        count,
    }
    .encode()
}

/// `frames` `Cancel` frames from `peer`, evenly spread over `over`: returns how many the core
/// took in (the harness delivers nothing on a closed connection).
fn cancel_flood(h: &mut Harness, peer: PeerId, frames: u32, over: Duration) -> u64 {
    let t0 = h.now + ms(10);
    let steps = h.steps;
    let gap = over.as_micros() as u64 / frames as u64;
    for i in 0..frames {
        let f = Frame::Cancel { req_id: i }.encode();
        h.inject_at(Time(t0.0 + i as u64 * gap), peer, f);
    }
    h.run_until(t0 + over + ms(10));
    h.steps - steps
}

// ------------------------------------------------------------ 1. Have pinning

/// One `Have` frame padded to 65 254 bytes: 124 junk entries (sequence numbers 0..124, 4096
/// chunks each), then one entry for `seq` (4096 chunks, a 512-byte bitmap).
fn padded_have(seq: u64) -> Bytes {
    let mut entries: Vec<protocol::HaveEntry> = (0..124)
        .map(|s| protocol::HaveEntry::from_fn(s, 4096, |i| i % 3 == 0))
        .collect();
    entries.push(protocol::HaveEntry::from_fn(seq, 4096, |i| i % 2 == 0));
    let f = Frame::Have { entries }.encode();
    assert!(f.len() > 65_000 && f.len() <= protocol::frame::MAX_FRAME_LEN);
    f
}

/// 10 000 `Have` frames of 64 KiB, each announcing one new segment. What the core keeps for
/// the peer is measured by memory, not by `len()`: an entry whose bitmap points inside a frame
/// the test still holds pins that whole frame (counted once per frame); an entry with its own
/// copy costs its bitmap. Before: every kept entry was a slice of its frame, so the newest 1024
/// entries pinned 1024 frames (64 MiB). Now each bitmap is copied out of its frame, and the
/// bitmap bytes kept per peer are bounded by [`MAX_REMOTE_HAVE_BYTES`].
#[test]
fn have_flood_does_not_pin_frames() {
    let mut h = Harness::new(config(), &[(1, 3 * CHUNK_SIZE)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    h.run_until(at_ms(100));
    let mut template = padded_have(0).to_vec();
    let seq_at = template.len() - (8 + 2 + 512);
    // The newest frames sent, still held here (the core keeps at most 1024 entries).
    let mut sent: VecDeque<Bytes> = VecDeque::new();
    for k in 0..10_000u64 {
        template[seq_at..seq_at + 8].copy_from_slice(&(1_000_000 + k).to_be_bytes());
        let frame = Bytes::from(template.clone());
        let t = h.now + ms(1);
        h.inject_at(t, 100, frame.clone());
        h.run_until(t);
        sent.push_back(frame);
        if sent.len() > 1100 {
            sent.pop_front();
        }
    }
    assert!(!h.core.is_banned(100));
    let mut pinned = vec![false; sent.len()];
    let mut own = 0;
    let mut entries = 0;
    for e in h.core.peer_haves(100) {
        entries += 1;
        let p = e.bitmap.as_ptr() as usize;
        let inside = sent
            .iter()
            .position(|f| (f.as_ptr() as usize..f.as_ptr() as usize + f.len()).contains(&p));
        match inside {
            Some(i) => pinned[i] = true,
            None => own += e.bitmap.len(),
        }
    }
    let pinned_bytes: usize = sent
        .iter()
        .zip(&pinned)
        .filter(|(_, p)| **p)
        .map(|(f, _)| f.len())
        .sum();
    let retained = pinned_bytes + own;
    println!(
        "Have flood: 10000 frames of {} bytes; {entries} entries kept, {retained} bytes retained ({pinned_bytes} in pinned frames, {own} in own bitmaps)",
        sent[0].len()
    );
    assert_eq!(pinned_bytes, 0, "entries pin their frames");
    assert!(
        retained <= MAX_REMOTE_HAVE_BYTES,
        "{retained} bytes retained"
    );
    assert_eq!(retained, h.core.retained_have_bytes());
    assert!(entries > 0);
}

// ------------------------------------------------------------ 2. upload starvation

/// A peer that never reads its channel (no `RtcBuffered` ever lowers its send buffer) sends
/// 1500 requests a second for 30 s; an honest requester asks for one chunk every 50 ms. Before:
/// the `Absent{Busy}` answers queued to the stuck peer filled the *total* send window after
/// ~12 s and nothing was uploaded to anybody after that. Now the stuck peer is disconnected
/// once its buffer is one frame past its window plus a control budget, and its buffer never
/// held the total window.
#[test]
fn stuck_requester_cannot_starve_uploads() {
    let seq = 3;
    let mut h = holding(config(), seq, 8 * CHUNK_SIZE);
    let mut hostile = FakePeer::new(PeerBehaviour::Honest, []);
    hostile.stuck = true;
    assert!(h.connect(200, hostile));
    assert!(h.connect(300, FakePeer::new(PeerBehaviour::Honest, [])));
    let t0 = h.now + ms(100);
    h.run_until(t0);
    let mut id = 1u32;
    for s in 0..30u64 {
        let start = t0 + Duration::from_secs(s);
        // (Until the core closes its connection.)
        for i in 0..1500u64 {
            if h.conn_of(200).is_some() {
                let f = request(id, seq, (id % 8) as u16, 1);
                h.inject_at(Time(start.0 + i * 666), 200, f);
            }
            id += 1;
        }
        for i in 0..20u64 {
            h.inject_at(
                Time(start.0 + i * 50_000),
                300,
                request(id, seq, (id % 8) as u16, 1),
            );
            id += 1;
        }
        h.run_until(start + Duration::from_secs(1));
    }
    let late = t0 + Duration::from_secs(20);
    let honest = &h.peers[&300].chunks_received;
    let in_last_10s = honest.iter().filter(|c| c.0 >= late).count();
    let closed = h.closes().first().map(|c| c.0.since(t0));
    println!(
        "starvation: honest requester got {} chunks in 30 s, {in_last_10s} in the last 10 s; stuck peer closed after {closed:?}",
        honest.len()
    );
    assert!(
        in_last_10s >= 150,
        "honest requester starved: {in_last_10s} chunks in the last 10 s"
    );
    assert!(h.ban_events(300).is_empty() && h.disconnects(300).is_empty());
    assert!(!h.core.is_banned(200), "not reading is not banned");
    assert_eq!(h.disconnects(200), vec![DisconnectReason::Timeout]);
}

/// A peer that stops reading with its buffer just over its window (two chunk frames out, no
/// drain reported) and then stays quiet: after [`STUCK_TIMEOUT`] it is disconnected, while an
/// honest requester is served all along.
#[test]
fn quiet_stuck_peer_is_dropped_after_stuck_timeout() {
    let seq = 3;
    let mut h = holding(config(), seq, 8 * CHUNK_SIZE);
    let mut hostile = FakePeer::new(PeerBehaviour::Honest, []);
    hostile.stuck = true;
    assert!(h.connect(200, hostile));
    assert!(h.connect(300, FakePeer::new(PeerBehaviour::Honest, [])));
    let t0 = h.now + ms(100);
    h.inject_at(t0, 200, request(1, seq, 0, 4));
    for i in 0..300u32 {
        let f = request(100 + i, seq, (i % 8) as u16, 1);
        h.inject_at(t0 + ms(50 * i as u64), 300, f);
    }
    h.run_until(t0 + Duration::from_secs(15));
    assert_eq!(
        h.peers[&200].chunks_received.len(),
        2,
        "window full after two"
    );
    let closed: Vec<Time> = h.closes().iter().map(|c| c.0).collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    let after = closed[0].since(t0);
    assert!(
        after >= STUCK_TIMEOUT && after < STUCK_TIMEOUT + ms(100),
        "closed after {after:?}"
    );
    assert_eq!(h.disconnects(200), vec![DisconnectReason::Timeout]);
    assert_eq!(h.peers[&300].chunks_received.len(), 300);
}

// ------------------------------------------------------------ 3. frame floods

fn banned_for(h: &Harness, peer: PeerId) -> Option<BanReason> {
    h.ban_events(peer).first().map(|b| b.1.clone())
}

/// 100 000 `Cancel` frames within one second: the peer is banned early, and the core took in
/// a bounded number of its frames.
#[test]
fn cancel_flood_is_banned() {
    let mut h = Harness::new(config(), &[(1, 3 * CHUNK_SIZE)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [1])));
    h.run_until(at_ms(100));
    let passes = h.core.stats().passes;
    let taken = cancel_flood(&mut h, 100, 100_000, Duration::from_secs(1));
    let passes = h.core.stats().passes - passes;
    println!(
        "Cancel flood: {taken} of 100000 frames taken in before the ban, {passes} scheduling passes"
    );
    assert_eq!(
        h.ban_events(100),
        vec![(h.ban_events(100)[0].0, BanReason::Flood)]
    );
    assert!(taken <= FLOOD_BURST + FLOOD_RATE, "{taken} frames taken in");
    assert!(passes <= FLOOD_BURST / 2 + 200, "{passes} passes");
}

// ------------------------------------------------------------ 4. no way around the limit

/// A peer that never says `Hello` is rate-limited all the same.
#[test]
fn flood_before_hello_is_banned() {
    let mut h = Harness::new(config(), &[(1, 3 * CHUNK_SIZE)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Mute, [])));
    let taken = cancel_flood(&mut h, 100, 20_000, Duration::from_secs(1));
    assert_eq!(banned_for(&h, 100), Some(BanReason::Flood));
    assert!(taken <= FLOOD_BURST + FLOOD_RATE, "{taken} frames taken in");
}

/// Frames on a connection whose channel has not opened yet (ignored) count too.
#[test]
fn flood_before_open_is_banned() {
    let mut h = Harness::new(config(), &[(1, 3 * CHUNK_SIZE)]);
    h.peers
        .insert(100, FakePeer::new(PeerBehaviour::Honest, []));
    let conn = h.offer_from(100).expect("offer answered");
    let f = Frame::Cancel { req_id: 1 }.encode();
    let mut taken = 0;
    for i in 0..20_000u64 {
        h.now = Time(h.now.0 + 50);
        h.input(Input::RtcMessage {
            conn,
            data: f.clone(),
        });
        taken = i + 1;
        if h.core.is_banned(100) {
            break;
        }
    }
    assert_eq!(banned_for(&h, 100), Some(BanReason::Flood));
    assert!(taken <= FLOOD_BURST + FLOOD_RATE, "{taken} frames taken in");
}

/// Frames during the open grace (they end it) count too.
#[test]
fn flood_during_open_grace_is_banned() {
    let mut cfg = config();
    cfg.open_grace = ms(300);
    let mut h = Harness::new(cfg, &[(1, 3 * CHUNK_SIZE)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Mute, [])));
    let taken = cancel_flood(&mut h, 100, 20_000, ms(200));
    assert_eq!(banned_for(&h, 100), Some(BanReason::Flood));
    assert!(taken <= FLOOD_BURST + FLOOD_RATE, "{taken} frames taken in");
}

// ------------------------------------------------------------ 5. request bitmaps

/// `max_chunks_per_request = 200` (over the 64 bits of a request's bitmap) with a peer that
/// takes 300 chunks at once: requests are cut at 64 chunks and a 150-chunk segment arrives
/// whole, without an overflow (overflow checks are on in tests).
#[test]
fn oversized_requests_are_clamped() {
    let seq = 1;
    let len = 150 * CHUNK_SIZE - 100;
    let mut cfg = config();
    cfg.max_chunks_per_request = 200;
    cfg.max_inflight_per_peer = 300;
    let mut h = Harness::new(cfg, &[(seq, len)]);
    let mut p = FakePeer::new(PeerBehaviour::Honest, [seq]).timing(ms(20), Duration::ZERO);
    p.max_inflight = 300;
    assert!(h.connect(100, p));
    h.want_at(at_ms(0), seq, at_ms(30_000));
    h.run_while(at_ms(30_000), |h| h.delivered.is_empty());
    assert_eq!(h.delivered.get(&seq).map(Vec::len), Some(1));
    assert!(h.http.is_empty(), "all from the peer");
    let counts: Vec<u16> = h.peers[&100].requests.iter().map(|r| r.4).collect();
    assert!(counts.iter().all(|c| *c <= 64), "{counts:?}");
}

// ------------------------------------------------------------ 6. config

/// Nonsense configs are refused by `validate` / `try_new`; `new` fixes what the core cannot
/// run with (a zero poll period polled the manifest in a loop) and keeps the rest.
#[test]
fn config_is_validated() {
    let good = config();
    assert_eq!(good.validate(), Ok(()));
    assert_eq!(
        good.clone().clamped(),
        good,
        "a valid config is kept as it is"
    );
    let default = Config {
        swarm: "s".into(),
        ..Config::default()
    };
    assert_eq!(default.validate(), Ok(()));
    assert_eq!(default.clone().clamped(), default);
    let http_only = Config {
        p2p: false,
        upload: false,
        max_peers: 0,
        ..Config::default()
    };
    assert_eq!(
        http_only.validate(),
        Ok(()),
        "no swarm needed without peers"
    );

    let with = |f: &dyn Fn(&mut Config)| {
        let mut c = config();
        f(&mut c);
        c
    };
    let frame = CHUNK_SIZE + 16;
    let bad = [
        (with(&|c| c.max_peers = 0), ConfigError::Zero("max_peers")),
        (with(&|c| c.swarm.clear()), ConfigError::EmptySwarm),
        (
            with(&|c| c.swarm = "x".repeat(300)),
            ConfigError::SwarmTooLong(300),
        ),
        (
            with(&|c| c.manifest_poll = Duration::ZERO),
            ConfigError::TooShort("manifest_poll"),
        ),
        (
            with(&|c| c.peer_stall_timeout = Duration::ZERO),
            ConfigError::TooShort("peer_stall_timeout"),
        ),
        (
            with(&|c| c.connect_timeout = ms(1)),
            ConfigError::TooShort("connect_timeout"),
        ),
        (
            with(&|c| c.reconnect_max = ms(100)),
            ConfigError::ReconnectMaxUnderMin,
        ),
        (
            with(&|c| c.send_window_per_peer = 1000),
            ConfigError::TooSmall {
                field: "send_window_per_peer",
                value: 1000,
                min: frame,
            },
        ),
        (
            with(&|c| c.send_window_total = 20_000),
            ConfigError::TooSmall {
                field: "send_window_total",
                value: 20_000,
                min: 32 * 1024,
            },
        ),
        (
            with(&|c| c.store_cap = 1000),
            ConfigError::TooSmall {
                field: "store_cap",
                value: 1000,
                min: CHUNK_SIZE,
            },
        ),
        (
            with(&|c| c.max_chunks_per_request = 200),
            ConfigError::ChunksPerRequest(200),
        ),
        (
            with(&|c| c.max_chunks_per_request = 0),
            ConfigError::ChunksPerRequest(0),
        ),
        (
            with(&|c| c.upload_cap = Some(0)),
            ConfigError::Zero("upload_cap"),
        ),
        (
            with(&|c| c.serve_queue_total = 0),
            ConfigError::Zero("serve_queue_total"),
        ),
    ];
    for (cfg, err) in bad {
        assert_eq!(cfg.validate(), Err(err.clone()), "{err}");
        assert!(PeerCore::try_new(cfg).is_err());
    }

    // `new` clamps what the core cannot run with, and nothing else.
    let mut cfg = config();
    cfg.manifest_poll = Duration::ZERO;
    cfg.peer_stall_timeout = Duration::ZERO;
    cfg.reconnect_max = Duration::ZERO;
    cfg.max_chunks_per_request = 200;
    cfg.swarm = "é".repeat(200);
    cfg.store_cap = 1000;
    let core = PeerCore::new(cfg.clone());
    let c = core.config();
    assert_eq!(c.manifest_poll, MIN_TIMER);
    assert_eq!(c.peer_stall_timeout, MIN_TIMER);
    assert_eq!(c.reconnect_max, c.reconnect_min);
    assert_eq!(c.max_chunks_per_request, 64);
    assert!(
        c.swarm.starts_with("sha256:") && c.swarm.len() == 71,
        "{}",
        c.swarm
    );
    assert_eq!(c.store_cap, 1000, "what the core can run with is kept");

    // Before, a zero poll period fetched the manifest in a loop (the harness' origin answers
    // at once): now at most every MIN_TIMER.
    let mut cfg = config();
    cfg.manifest_poll = Duration::ZERO;
    cfg.manifest_idle_poll = Duration::ZERO;
    let mut h = Harness::new(cfg, &[(1, CHUNK_SIZE)]);
    h.run_until(at_ms(1_000));
    let fetches = h.manifest_fetches.len();
    assert!(
        fetches <= 1 + 1000 / MIN_TIMER.as_millis() as usize,
        "{fetches} fetches in 1 s"
    );
}

// ------------------------------------------------------------ 7. manifest skew

/// The origin re-publishes segment 5 with other bytes after the core and a peer fetched it.
/// The peer still holds the old bytes and serves them: they fail the new manifest entry but
/// match the old one, so the peer is not banned; the player gets the new bytes (from the
/// origin).
#[test]
fn republished_segment_does_not_ban_a_stale_peer() {
    let seq = 5;
    let len = 4 * CHUNK_SIZE;
    let mut h = Harness::new(config(), &[(seq, len)]);
    let old = h.origin.segs[&seq].clone();
    let mut p = FakePeer::new(PeerBehaviour::Honest, [seq]);
    p.own.insert(seq, old.clone());
    assert!(h.connect(100, p));
    // Re-published: new bytes, new manifest entry; the core sees it at its next poll.
    let new = segment_data(1005, len);
    h.origin.entries.insert(seq, manifest_entry(seq, &new));
    h.origin.segs.insert(seq, new);
    let fetches = h.manifest_fetches.len();
    h.run_while(at_ms(5_000), |h| h.manifest_fetches.len() == fetches);
    h.run_until(h.now + ms(10));
    let t = h.now;
    h.want_at(t, seq, t + Duration::from_secs(6));
    h.run_while(t + Duration::from_secs(8), |h| h.delivered.is_empty());
    assert_eq!(h.delivered.get(&seq).map(Vec::len), Some(1), "delivered");
    assert!(h.ban_events(100).is_empty(), "{:?}", h.ban_events(100));
    assert!(!h.core.is_banned(100));
    assert!(
        !h.peers[&100].requests.is_empty(),
        "the stale peer was asked"
    );
    assert_eq!(h.core.stats().delivered_http_bytes, len as u64);
    assert_eq!(h.core.stats().republished, 1);
    assert!(h.core.stats().skewed_chunks >= 1);
    assert_eq!(h.core.stats().integrity_failures, 0);
}

/// A segment we hold when the origin re-publishes it: the old bytes are dropped (our peers are
/// told with `Drop`) and a player that wants it again gets the new ones.
#[test]
fn republished_segment_replaces_held_data() {
    let seq = 5;
    let len = 3 * CHUNK_SIZE + 10;
    let mut h = Harness::with_slot(config(), &[(seq, len)], 0, 1);
    h.want_at(at_ms(0), seq, at_ms(10_000));
    h.run_while(at_ms(10_000), |h| h.delivered.is_empty());
    assert!(h.core.has_segment(seq));
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    let new = segment_data(2005, len);
    h.origin.entries.insert(seq, manifest_entry(seq, &new));
    h.origin.segs.insert(seq, new);
    let fetches = h.manifest_fetches.len();
    h.run_while(h.now + Duration::from_secs(30), |h| {
        h.manifest_fetches.len() == fetches
    });
    h.run_until(h.now + ms(10));
    assert!(!h.core.has_segment(seq), "old bytes dropped");
    let dropped = h.peers[&100]
        .frames_received
        .iter()
        .any(|(_, f)| *f == Frame::Drop { seqs: vec![seq] });
    assert!(dropped, "peer told");
    let t = h.now;
    h.want_at(t, seq, t + Duration::from_secs(10));
    h.run_while(t + Duration::from_secs(10), |h| h.delivered[&seq].len() < 2);
    // The harness checks every `SegmentReady` against the origin's bytes (the new ones).
    assert_eq!(h.delivered[&seq].len(), 2);
}

/// A corrupting peer is banned on a re-published segment as on any other: its chunk matches
/// neither the new entry nor the old one.
#[test]
fn corrupt_peer_is_banned_on_a_republished_segment() {
    let seq = 5;
    let len = 4 * CHUNK_SIZE;
    let mut h = Harness::new(config(), &[(seq, len)]);
    let new = segment_data(1005, len);
    h.origin.entries.insert(seq, manifest_entry(seq, &new));
    h.origin.segs.insert(seq, new);
    let fetches = h.manifest_fetches.len();
    h.run_while(at_ms(5_000), |h| h.manifest_fetches.len() == fetches);
    h.run_until(h.now + ms(10));
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Corrupt, [seq])));
    let t = h.now;
    h.want_at(t, seq, t + Duration::from_secs(6));
    h.run_while(t + Duration::from_secs(8), |h| h.delivered.is_empty());
    assert_eq!(h.delivered.get(&seq).map(Vec::len), Some(1), "delivered");
    assert!(h.core.is_banned(100));
}

/// A peer that answers with another rendition's segment under the same sequence number (the
/// bytes a viewer of the 240p playlist holds for `seq`, offered in the 360p swarm; a shorter
/// segment, as a lower rendition's is) is banned at its first chunk, and the player gets the
/// origin's bytes of its own rendition (the harness checks every delivery against them).
#[test]
fn peer_serving_another_renditions_bytes_is_banned() {
    let seq = 5;
    let len = 4 * CHUNK_SIZE;
    let mut h = Harness::new(config(), &[(seq, len)]);
    let mut other = FakePeer::new(PeerBehaviour::Honest, [seq]);
    other
        .own
        .insert(seq, segment_data(2000 + seq, len - CHUNK_SIZE / 2));
    assert!(h.connect(100, other));
    let t = h.now;
    h.want_at(t, seq, t + Duration::from_secs(6));
    h.run_while(t + Duration::from_secs(8), |h| h.delivered.is_empty());
    assert_eq!(h.delivered.get(&seq).map(Vec::len), Some(1), "delivered");
    assert_eq!(banned_for(&h, 100), Some(BanReason::BadChunk));
    assert!(h.core.stats().integrity_failures >= 1);
}
