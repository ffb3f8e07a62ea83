//! Serving other peers: bounded serve queues, round robin over requesters, the per-channel and
//! total send windows, the upload cap (a token bucket), and the measured uplink that bounds the
//! serve queue in time.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use protocol::{AbsentReason, CHUNK_SIZE, Frame, PeerId};

use crate::{Config, Event, Output, PeerCore, Time};

/// Chunks `next .. end` of `seq` still to send for request `req_id`.
#[derive(Debug)]
pub struct Serve {
    pub req_id: u32,
    pub seq: u64,
    pub next: u16,
    pub end: u16,
}

/// The send window never shrinks below two chunks (with frame headers): one draining, one
/// waiting, so the link never idles for want of a refill.
const MIN_SEND_WINDOW: usize = 2 * (CHUNK_SIZE + 64);

/// The send buffers count as backlogged (the link busy until the next report) while they hold
/// at least half a chunk. Less is control frames (`Have`, `Request`, `Absent`): a page that
/// sends only those keeps a few hundred bytes in its buffers all the time, and its drain is
/// what it had to say, not what its link carries (measured in `cargo xtask bench lab` before
/// this threshold: 16–60 kbit/s read on 1 Mbit/s links, and every request answered `Busy`).
const BACKLOGGED: usize = CHUNK_SIZE / 2;

/// A window that drained less than this part of the measured uplink leaves it under-used: the
/// send windows then keep a chunk per waiting requester (see [`PeerCore::send_windows`]).
const UNDER_USED: f64 = 0.8;

/// Length of one uplink measurement window. Long enough that what the transport below the send
/// buffers absorbs in a burst (a browser's SCTP stack takes data faster than the link carries
/// it, up to its congestion window) is a small part of the window's drain: with 500 ms windows,
/// pages behind a 1,000 kbit/s tbf read 1,140–2,000 kbit/s (`cargo xtask bench lab --pages 6
/// --upload-kbit 1000 --seconds 60`); with 2 s, 797–1,061. The simulator's figures did not
/// move (20 viewers, seed 1: up 1 Mbit/s 0.836 → 0.834 of the bound; 4 Mbit/s, 80–300 ms,
/// 3 % loss 0.798 → 0.795).
const METER_WINDOW: Duration = Duration::from_millis(2000);
/// Per-window decay of the uplink estimate (see [`UplinkMeter::drained`]).
const METER_DECAY: f64 = 0.995;

/// Our uplink, measured: bytes our send buffers drained per second over windows in which they
/// stayed backlogged (never under [`BACKLOGGED`]: the link was busy all along, so what it
/// drained is what it can carry), kept
/// as a slowly decaying maximum. A window in which they ran dry only ever raises the estimate
/// (the link carried at least that). `None` until a busy window was seen: a peer that never
/// had more to send than its link carries has no uplink problem to plan around.
///
/// Measured in the simulator (`cargo xtask sim --up-mbps 1`): 1.00 Mbit/s on 1 Mbit/s links.
/// Where each pair is slower than the uplink (80–300 ms RTT, 3 % loss, 4 Mbit/s links) it
/// reads what the pairs in use carry together (~2.7 Mbit/s), which is what the windows need.
#[derive(Debug, Default)]
pub struct UplinkMeter {
    start: Time,
    drained: u64,
    /// The buffers ran dry in this window.
    idled: bool,
    /// Bytes/s.
    pub bps: Option<f64>,
    /// What the last whole window drained, bytes/s.
    pub last: f64,
}

impl UplinkMeter {
    /// The send buffers drained `bytes`; `left` bytes wait in all of them now.
    pub fn drained(&mut self, now: Time, bytes: usize, left: usize) {
        self.drained += bytes as u64;
        if left < BACKLOGGED {
            self.idled = true;
        }
        let len = now.since(self.start);
        if len < METER_WINDOW {
            return;
        }
        let sample = self.drained as f64 / len.as_secs_f64();
        self.last = sample;
        self.bps = match self.bps {
            // A window that followed an idle spell is longer than METER_WINDOW and mostly idle:
            // only its rate above the estimate says anything.
            _ if self.idled || len > METER_WINDOW * 4 => self.bps.map(|b| b.max(sample)),
            None => Some(sample),
            // A slowly decaying maximum: a busy window drains at the link's rate only when
            // enough channels hold data (each pair gets what its congestion controller allows,
            // which on long or lossy paths is less than the uplink), so a lower sample may mean
            // fewer channels in use, not a slower link. The estimate follows a slower link down
            // by halves in about a minute (×0.995 a window); meanwhile the windows are as deep
            // as they were before the link slowed.
            Some(b) => Some(sample.max(b * METER_DECAY)),
        };
        self.start = now;
        self.drained = 0;
        self.idled = left < BACKLOGGED;
    }
}

/// `Status` goes out no more often than this, and only when our figures moved by
/// [`STATUS_UPLINK_CHANGE`] or [`STATUS_WAIT_CHANGE`] (or to a peer that has not had it).
/// 1 s, not 250 ms: on scarce uplinks the wait moved often enough that `Status` frames
/// outnumbered `Have`s, each a packet plus the receiver's SACK (see `store::HAVE_EVERY`).
const STATUS_EVERY: Duration = Duration::from_millis(1000);
const STATUS_UPLINK_CHANGE: f64 = 0.2;
const STATUS_WAIT_CHANGE: f64 = 0.25;

#[derive(Debug)]
pub struct Upload {
    /// Bytes we may send now under the cap.
    pub tokens: f64,
    pub tokens_at: Time,
    /// Chunks queued over all requesters.
    pub serve_total: usize,
    /// Requester served last: the round robin starts after it, so no requester starves.
    pub rr_last: PeerId,
    pub meter: UplinkMeter,
    /// What our last `Status` said (uplink bytes/s, wait s), and when.
    pub told: (f64, f64, Time),
}

impl Upload {
    pub fn new(cfg: &Config) -> Self {
        Upload {
            tokens: cfg.upload_cap.map_or(0.0, |c| c as f64 / 4.0),
            tokens_at: Time::ZERO,
            serve_total: 0,
            rr_last: 0,
            meter: UplinkMeter::default(),
            told: (0.0, 0.0, Time::ZERO),
        }
    }
}

/// Chunks still to send in a requester's serve queue.
pub fn queued_chunks(q: &VecDeque<Serve>) -> usize {
    q.iter().map(|s| (s.end - s.next) as usize).sum()
}

impl PeerCore {
    /// A request from `peer`: queued (returns `true`), or answered `Absent` at once.
    pub(crate) fn on_request(
        &mut self,
        now: Time,
        peer: PeerId,
        req_id: u32,
        seq: u64,
        first: u16,
        count: u16,
    ) -> bool {
        let absent = |reason| Frame::Absent { req_id, reason };
        if !self.cfg.upload {
            self.send(peer, &absent(AbsentReason::Refused));
            return false;
        }
        let end = first as usize + count as usize;
        let held = self.store.segments.get(&seq).is_some_and(|s| {
            end <= s.chunks.len()
                && s.chunks[first as usize..end]
                    .iter()
                    .all(|c| c.data.is_some())
        });
        if !held {
            self.send(peer, &absent(AbsentReason::NotFound));
            return false;
        }
        // A chunk we fetched from the origin and nobody has yet (our seeding part) goes before
        // relays already queued for this requester: until its first copy is out, the whole
        // swarm waits for it, and a slow first copy sends backup seeders to the origin.
        let fresh = self.store.segments.get(&seq).is_some_and(|s| {
            s.chunks[first as usize..end]
                .iter()
                .any(|c| c.from_http && c.uploads == 0)
        });
        // Only behind other work: an idle uplink takes the request whatever the estimate says
        // (an estimate too low, from a driver that reports drains late, would otherwise refuse
        // everything, send nothing, and never measure again).
        let busy = self.upload.serve_total > 0 || self.total_buffered() >= BACKLOGGED;
        if busy && self.serve_wait(fresh, count as usize) > self.cfg.serve_horizon.as_secs_f64() {
            // Our uplink could not get it out in time: said now, the requester asks someone
            // else or the origin at once, instead of waiting for bytes it would then fetch
            // twice (and that would cost our uplink for nothing).
            self.stats.serve_busy += 1;
            self.send(peer, &absent(AbsentReason::Busy));
            return false;
        }
        let Some(r) = self.remotes.peers.get_mut(&peer) else {
            return false;
        };
        let queued = queued_chunks(&r.serve);
        if queued + count as usize > self.cfg.serve_queue_per_peer
            || self.upload.serve_total + count as usize > self.cfg.serve_queue_total
        {
            self.send(peer, &absent(AbsentReason::Busy));
            return false;
        }
        let sv = Serve {
            req_id,
            seq,
            next: first,
            end: end as u16,
        };
        if fresh {
            r.serve.push_front(sv);
        } else {
            r.serve.push_back(sv);
        }
        self.upload.serve_total += count as usize;
        if let Some(s) = self.store.segments.get_mut(&seq) {
            s.last_used = now;
        }
        true
    }

    /// Seconds before the last of `count` more chunks would leave our uplink, at its measured
    /// rate: behind what the send buffers hold, and behind the serve queue unless the chunks go
    /// first (`fresh`). 0 while the uplink is unmeasured.
    pub(crate) fn serve_wait(&self, fresh: bool, count: usize) -> f64 {
        let Some(bps) = self.upload.meter.bps else {
            return 0.0;
        };
        let queued = if fresh { 0 } else { self.upload.serve_total };
        let ahead = self.total_buffered() + (queued + count) * CHUNK_SIZE;
        ahead as f64 / bps.max(1.0)
    }

    /// The send windows in force (per channel, all channels): the configured ones, and once
    /// the uplink is measured no more than `Config::send_window_time` of it. A chunk in a send buffer
    /// can no longer be cancelled or reordered; in the serve queue it still can, and fresh
    /// seeding chunks still go first.
    ///
    /// And, while the last measurement window drained less than [`UNDER_USED`] of the
    /// measured uplink, never less than one chunk per requester waiting to be served: a link
    /// whose pairs are slower than its uplink (long RTTs, loss: each pair gets what its
    /// congestion controller allows) drains only as fast as the channels that hold data, so a
    /// window cut to the drain measured on a few channels would keep the others empty and the
    /// uplink under-used for good. On a link that is the bottleneck, a chunk per requester
    /// would only lengthen every chunk's wait. Measured in the simulator (20 viewers, 300 s,
    /// seed 1), origin saved / waste: at 1 Mbit/s up, 80–300 ms RTT, 3 % loss, 0.29 / 3.5 %
    /// with the floor only during a 1 s probe every 10 s (before), 0.367 / 5.8 % with it always,
    /// 0.338 / 4.9 % with this rule; at 1 Mbit/s, 20–100 ms, 1 %: 0.417 / 2.8 %, 0.397 / 5.6 %,
    /// 0.420 / 2.2 %; at 4 Mbit/s, 80–300 ms, 3 %: always 0.757 / 3.5 %, this rule 0.758 /
    /// 3.6 %.
    pub(crate) fn send_windows(&self) -> (usize, usize) {
        let all = match self.upload.meter.bps {
            Some(bps) => {
                let waiting = self
                    .remotes
                    .peers
                    .values()
                    .filter(|r| !r.serve.is_empty() || r.buffered > 0)
                    .count();
                let floor = if self.upload.meter.last < UNDER_USED * bps {
                    waiting * (CHUNK_SIZE + 64)
                } else {
                    0
                };
                ((bps * self.cfg.send_window_time.as_secs_f64()) as usize)
                    .max(floor)
                    .clamp(
                        MIN_SEND_WINDOW,
                        self.cfg.send_window_total.max(MIN_SEND_WINDOW),
                    )
            }
            None => self.cfg.send_window_total,
        };
        (self.cfg.send_window_per_peer.min(all), all)
    }

    /// Tells our neighbours our measured uplink and the wait a request would have now
    /// (`Status`), when it moved since we last did; so that they ask a slow or busy uploader
    /// for less, before it has to answer `Busy`.
    pub(crate) fn advertise_status(&mut self, now: Time) {
        let Some(bps) = self.upload.meter.bps else {
            return;
        };
        if !self.cfg.upload {
            return;
        }
        let wait = self.serve_wait(false, 0);
        let (told_bps, told_wait, at) = self.upload.told;
        if now < at + STATUS_EVERY {
            return;
        }
        let moved = (bps - told_bps).abs() > STATUS_UPLINK_CHANGE * told_bps
            || (wait - told_wait).abs() >= STATUS_WAIT_CHANGE;
        if moved {
            for r in self.remotes.peers.values_mut() {
                r.status_told = false;
            }
        }
        let frame = Frame::Status {
            uplink_kbps: (bps * 8.0 / 1000.0).min(u32::MAX as f64) as u32,
            wait_ms: (wait * 1000.0).min(u16::MAX as f64) as u16,
        };
        let to: Vec<PeerId> = self
            .remotes
            .peers
            .iter()
            .filter(|(_, r)| r.open && r.hello && !r.status_told)
            .map(|(p, _)| *p)
            .collect();
        if to.is_empty() {
            return;
        }
        let bytes = frame.encode();
        for p in to {
            if let Some(r) = self.remotes.peers.get_mut(&p) {
                r.status_told = true;
            }
            self.send_bytes(p, bytes.clone());
        }
        self.upload.told = (bps, wait, now);
    }

    pub(crate) fn upload_timeouts(&self, at: &mut impl FnMut(Time)) {
        if let Some(cap) = self.cfg.upload_cap
            && self.upload.serve_total > 0
        {
            let need = (CHUNK_SIZE as f64 - self.upload.tokens).max(0.0);
            // Rounded up, plus 1 µs: `Time` has µs resolution, and a wake-up that lands a hair
            // before the bucket holds a full chunk would find it short and set no new timer.
            let wait_us = (need * 1e6 / cap.max(1) as f64).ceil() as u64 + 1;
            at(self.upload.tokens_at + Duration::from_micros(wait_us));
        }
    }

    pub(crate) fn pump_uploads(&mut self, now: Time) {
        if let Some(cap) = self.cfg.upload_cap {
            let dt = now.since(self.upload.tokens_at).as_secs_f64();
            let burst = cap as f64 / 4.0 + CHUNK_SIZE as f64;
            self.upload.tokens = (self.upload.tokens + dt * cap as f64).min(burst);
        }
        self.upload.tokens_at = now;
        if self.upload.serve_total == 0 {
            return;
        }
        // Round robin over requesters, one chunk each per turn, starting after the last served.
        let last = self.upload.rr_last;
        let mut peers: Vec<PeerId> = self
            .remotes
            .peers
            .range(last.saturating_add(1)..)
            .map(|(p, _)| *p)
            .collect();
        peers.extend(self.remotes.peers.range(..=last).map(|(p, _)| *p));
        let (per_peer, all) = self.send_windows();
        loop {
            let mut sent_any = false;
            for &p in &peers {
                let total = self.total_buffered();
                let Some(r) = self.remotes.peers.get_mut(&p) else {
                    continue;
                };
                if r.buffered >= per_peer || total >= all {
                    continue;
                }
                let Some(sv) = r.serve.front_mut() else {
                    continue;
                };
                let (req_id, seq, index) = (sv.req_id, sv.seq, sv.next);
                let data = self
                    .store
                    .segments
                    .get(&seq)
                    .and_then(|s| s.chunks.get(index as usize))
                    .and_then(|c| c.data.clone());
                let Some(data) = data else {
                    // Evicted meanwhile: the rest of this request is absent.
                    let left = (sv.end - sv.next) as usize;
                    r.serve.pop_front();
                    self.upload.serve_total -= left;
                    let reason = AbsentReason::NotFound;
                    self.send(p, &Frame::Absent { req_id, reason });
                    sent_any = true;
                    continue;
                };
                if self.cfg.upload_cap.is_some() && self.upload.tokens < data.len() as f64 {
                    // Out of budget: poll_timeout wakes us when enough has refilled.
                    return;
                }
                sv.next += 1;
                if sv.next >= sv.end {
                    r.serve.pop_front();
                }
                if let Some(s) = self.store.segments.get_mut(&seq) {
                    if let Some(c) = s.chunks.get_mut(index as usize) {
                        c.uploads = c.uploads.saturating_add(1);
                    }
                    if s.reveal_at.is_some_and(|t| t > now)
                        && s.complete()
                        && s.chunks.iter().all(|c| !c.from_http || c.uploads > 0)
                    {
                        // Every chunk is out once: super-seeding is over, announce everything.
                        s.reveal_at = Some(now);
                    }
                }
                self.upload.serve_total -= 1;
                self.upload.tokens -= data.len() as f64;
                self.stats.uploaded_bytes += data.len() as u64;
                if self.cfg.chunk_events {
                    self.out.push_back(Output::Event(Event::ChunkUploaded {
                        peer: p,
                        seq,
                        chunk: index as usize,
                        bytes: data.len(),
                    }));
                }
                let data = if self.cfg.corrupt_uploads {
                    corrupt(&data)
                } else {
                    data
                };
                self.send(
                    p,
                    &Frame::Chunk {
                        req_id,
                        seq,
                        index,
                        data,
                    },
                );
                self.upload.rr_last = p;
                sent_any = true;
            }
            if !sent_any || self.upload.serve_total == 0 {
                break;
            }
        }
    }
}

/// The test hook [`Config::corrupt_uploads`]: the first byte flipped.
fn corrupt(data: &Bytes) -> Bytes {
    let mut d = data.to_vec();
    if let Some(b) = d.first_mut() {
        *b ^= 0xff;
    }
    Bytes::from(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `secs` of drains at `bps` bytes/s, a report every 50 ms, `left` bytes still
    /// buffered after each.
    fn drain(m: &mut UplinkMeter, from: &mut Time, secs: f64, bps: f64, left: usize) {
        let step = Duration::from_millis(50);
        let n = (secs / step.as_secs_f64()) as usize;
        for _ in 0..n {
            *from = *from + step;
            m.drained(*from, (bps * step.as_secs_f64()) as usize, left);
        }
    }

    #[test]
    fn meter_reads_a_busy_link() {
        let mut m = UplinkMeter::default();
        let mut t = Time::ZERO;
        drain(&mut m, &mut t, 0.2, 125_000.0, 10_000);
        assert_eq!(m.bps, None, "no whole window yet");
        drain(&mut m, &mut t, 3.0, 125_000.0, 10_000);
        let b = m.bps.expect("measured");
        assert!((b - 125_000.0).abs() < 2_000.0, "{b}");
    }

    #[test]
    fn idle_windows_only_raise_the_estimate() {
        let mut m = UplinkMeter::default();
        let mut t = Time::ZERO;
        // The buffers run dry after every drain: the link had spare time; no estimate.
        drain(&mut m, &mut t, 3.0, 20_000.0, 0);
        assert_eq!(m.bps, None);
        drain(&mut m, &mut t, 3.0, 125_000.0, 10_000);
        drain(&mut m, &mut t, 3.0, 20_000.0, 0);
        let b = m.bps.expect("measured");
        assert!(b > 120_000.0, "an idle spell says nothing of the link: {b}");
    }

    #[test]
    fn estimate_follows_a_slower_link_down_slowly() {
        let mut m = UplinkMeter::default();
        let mut t = Time::ZERO;
        drain(&mut m, &mut t, 3.0, 500_000.0, 10_000);
        drain(&mut m, &mut t, 10.0, 125_000.0, 10_000);
        let b = m.bps.expect("measured");
        // 20 windows at ×0.995: still most of the old rate (busy windows drain at the link's
        // rate only when enough channels hold data, so a lower sample is weak evidence).
        assert!(b > 400_000.0 && b < 500_000.0, "{b}");
        drain(&mut m, &mut t, 600.0, 125_000.0, 10_000);
        let b = m.bps.expect("measured");
        assert!(
            (b - 125_000.0).abs() < 2_000.0,
            "down to the link in the end: {b}"
        );
    }
}
