//! Serving other peers: bounded serve queues, round robin over requesters, the per-channel and
//! total send windows, and the upload cap (a token bucket).

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

#[derive(Debug)]
pub struct Upload {
    /// Bytes we may send now under the cap.
    pub tokens: f64,
    pub tokens_at: Time,
    /// Chunks queued over all requesters.
    pub serve_total: usize,
    /// Requester served last: the round robin starts after it, so no requester starves.
    pub rr_last: PeerId,
}

impl Upload {
    pub fn new(cfg: &Config) -> Self {
        Upload {
            tokens: cfg.upload_cap.map_or(0.0, |c| c as f64 / 4.0),
            tokens_at: Time::ZERO,
            serve_total: 0,
            rr_last: 0,
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
        // A chunk we fetched from the origin and nobody has yet (our seeding part) goes before
        // relays already queued for this requester: until its first copy is out, the whole
        // swarm waits for it, and a slow first copy sends backup seeders to the origin.
        let fresh = self.store.segments.get(&seq).is_some_and(|s| {
            s.chunks[first as usize..end]
                .iter()
                .any(|c| c.from_http && c.uploads == 0)
        });
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
        loop {
            let mut sent_any = false;
            for &p in &peers {
                let total = self.total_buffered();
                let Some(r) = self.remotes.peers.get_mut(&p) else {
                    continue;
                };
                if r.buffered >= self.cfg.send_window_per_peer
                    || total >= self.cfg.send_window_total
                {
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
