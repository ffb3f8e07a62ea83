//! What to fetch from whom and when: rarest-first chunk requests to the holder expected to
//! deliver soonest, the live-edge seeding plan (designated and backup seeders by slot), and the
//! deadline cutoff to the origin.

// A sorted vector, not std's B-tree: a fraction of the wasm bundle (crate::sorted).
use crate::sorted::SortedMap as BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use protocol::{CHUNK_SIZE, Frame, PeerId};
use rand::Rng;

use crate::http::ON_TRACK_SILENCE;
use crate::remotes::{MAX_CANCELLED, PEER_PENALTY};
use crate::stats::HttpCause;
use crate::store::Segment;
use crate::{BanReason, Event, Output, PeerCore, Time};

/// One of our requests to a peer: chunks `first .. first + count` of `seq`.
#[derive(Debug)]
pub struct OurReq {
    pub peer: PeerId,
    pub seq: u64,
    pub first: u16,
    pub count: u16,
    /// Bit `i`: chunk `first + i` arrived (`count` ≤ 64, see [`MAX_REQUEST_CHUNKS`]).
    pub received: u64,
    pub last_progress: Time,
    /// When we sent it (for [`crate::Stats::chunk_ms`]).
    pub sent: Time,
}

/// What [`PeerCore::check_chunk`] found.
enum Check {
    Good,
    /// Matches the segment's previous manifest entry (re-published): dropped, not banned.
    Skewed,
    /// Too long or corrupt: its sender is banned.
    Banned,
    /// The segment is not known (any more).
    Unknown,
}

/// Most chunks in one of our requests: the `received` bitmap has 64 bits.
pub const MAX_REQUEST_CHUNKS: u16 = 64;

impl OurReq {
    pub fn remaining(&self) -> usize {
        self.count as usize - self.received.count_ones() as usize
    }
}

#[derive(Debug)]
pub struct Scheduler {
    pub requests: BTreeMap<u32, OurReq>,
    pub next_req: u32,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            requests: BTreeMap::new(),
            next_req: 1,
        }
    }
}

impl PeerCore {
    /// Time at which segment `s` must go to the origin to make `deadline`.
    pub(crate) fn cutoff(&self, s: &Segment, deadline: Time) -> Time {
        let missing = s.m.len as f64 * (1.0 - s.have as f64 / s.chunks.len().max(1) as f64);
        let est = self.http.rtt + Duration::from_secs_f64(missing / self.http.rate.max(1.0));
        deadline - est.mul_f64(1.5) - self.cfg.http_margin
    }

    fn designated(&self, seq: u64, offset: u64) -> bool {
        match self.session.slot {
            Some((slot, slots)) => (seq + offset) % slots as u64 == slot as u64,
            None => false,
        }
    }

    /// Number of parts the origin fetch of a segment is split in (never more than members).
    fn parts(&self) -> usize {
        let slots = self.session.slot.map_or(1, |(_, n)| n as usize);
        self.cfg.origin_seeders.clamp(1, slots.max(1))
    }

    /// The part of `seq` this member fetches from the origin first, if any.
    fn seed_part(&self, seq: u64) -> Option<usize> {
        (0..self.parts()).find(|j| self.designated(seq, *j as u64))
    }

    /// Backup rounds in force: extra rounds only once we have banned someone (see `schedule`).
    fn backup_rounds(&self) -> usize {
        if self.remotes.banned.is_empty() {
            1
        } else {
            self.cfg.backup_rounds.max(1)
        }
    }

    pub(crate) fn scheduler_timeouts(&self, at: &mut impl FnMut(Time)) {
        // Peer requests for segments past their origin cutoff are left to run only while they
        // flow (see `on_track`): look again when one falls silent.
        for req in self.sched.requests.values() {
            if let Some(s) = self.store.segments.get(&req.seq)
                && let Some(deadline) = s.want.or(s.prefetch)
                && self.now >= self.cutoff(s, deadline)
            {
                at(req.last_progress + ON_TRACK_SILENCE + Duration::from_micros(1));
            }
        }
        // A holder that answered `Busy` may be asked again when its backoff ends.
        for r in self.remotes.peers.values() {
            if r.busy_until > self.now {
                at(r.busy_until);
            }
        }
        let rounds = self.backup_rounds();
        for s in self.store.segments.values() {
            if let Some(deadline) = s.want.or(s.prefetch)
                && !s.complete()
            {
                at(self.cutoff(s, deadline));
                for m in 1..=rounds {
                    at(s.discovered + self.cfg.backup_seed_delay * m as u32);
                }
                if s.http_retry_at > Time::ZERO {
                    at(s.http_retry_at);
                }
            }
            if let Some(t) = s.reveal_at {
                at(t);
            }
        }
    }

    pub(crate) fn schedule(&mut self, now: Time) {
        let wanted: Vec<(u64, Time)> = self
            .store
            .segments
            .iter()
            .filter_map(|(seq, s)| {
                s.want
                    .or(s.prefetch)
                    .filter(|_| !s.complete())
                    .map(|d| (*seq, d))
            })
            .collect();
        for (seq, deadline) in wanted {
            let Some(s) = self.store.segments.get(&seq) else {
                continue;
            };
            let cutoff = self.cutoff(s, deadline);
            let late = now >= cutoff;
            if self.cfg.p2p && !late {
                let fair = cutoff.since(now) >= self.cfg.backup_seed_delay;
                self.fetch_share(now, seq, fair);
            }
            let Some(s) = self.store.segments.get(&seq) else {
                continue;
            };
            let peers = &self.remotes.peers;
            let any_peer_has = peers.values().any(|r| r.open && r.have.contains(seq));
            let open = peers.values().any(|r| r.open && r.hello);
            let waited = now >= s.discovered + self.cfg.backup_seed_delay;
            let parts = self.parts();
            let n = s.chunks.len();
            let part = self.seed_part(seq);
            // Backup per part: the member `parts` slots further fetches part `j` when no
            // neighbour holds any of its chunks a while after the segment appeared (its seeder
            // left, was banned, or is slow). Once we have banned a peer we know the swarm has
            // corrupting members, and the backup may be one of them: then the next member tries
            // after twice the delay, and so on for `backup_rounds` (consecutive members:
            // `m × parts` would cycle back to the designated one when there are `2 × parts`
            // slots). Only then: in an honest swarm the extra rounds fire on slow propagation
            // and their super-seeding hides chunks, which costs more origin bytes than it saves.
            let since = now.since(s.discovered);
            let rounds = self.backup_rounds();
            let backup_part = if waited {
                (0..parts).find(|&j| {
                    let r = (j * n / parts)..((j + 1) * n / parts);
                    (1..=rounds).any(|m| {
                        since >= self.cfg.backup_seed_delay * m as u32
                            && self.designated(seq, (j + parts + m - 1) as u64)
                    }) && !r.clone().any(|i| {
                        s.chunks[i].data.is_some()
                            || peers.values().any(|p| p.open && p.has(seq, i))
                    })
                })
            } else {
                None
            };
            // A segment only prefetched (the player has not asked for it) is fetched for our
            // neighbours' sake: with none open, nobody would ever be served it, and the player
            // fetches it when it wants it. (A page's kept rendition whose swarm held no one
            // else downloaded its whole live edge for nothing: 782 KB of the 6.7 MB the
            // origin sent in `ladder_from_a_third_party_origin_with_the_integrity_service`.)
            let cause = if s.want.is_none() && !open {
                None
            } else if !self.cfg.p2p || late {
                Some(HttpCause::Late)
            } else if part.is_some() {
                Some(HttpCause::Designated)
            } else if backup_part.is_some() {
                Some(HttpCause::Backup)
            } else if !open && !any_peer_has && waited {
                Some(HttpCause::Alone)
            } else {
                None
            };
            if self.cfg.p2p {
                self.request_from_peers(now, seq);
            }
            // A designated seeder fetches its part only; everything else fetches what is missing.
            let range = match (cause, part, backup_part) {
                (Some(HttpCause::Designated), Some(j), _)
                | (Some(HttpCause::Backup), _, Some(j)) => (j * n / parts)..((j + 1) * n / parts),
                _ => 0..n,
            };
            if let Some(cause) = cause
                && self.request_from_http(now, seq, late, range, cause)
                && matches!(cause, HttpCause::Designated | HttpCause::Backup)
                && let Some(s) = self.store.segments.get_mut(&seq)
            {
                s.seeding = true;
            }
        }
    }

    fn request_from_peers(&mut self, now: Time, seq: u64) {
        let Some(s) = self.store.segments.get(&seq) else {
            return;
        };
        let mut missing: Vec<(usize, u32, usize)> = s
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.data.is_none() && c.peer_req.is_none() && c.http.is_none())
            .map(|(i, _)| {
                let holders = self
                    .remotes
                    .peers
                    .values()
                    .filter(|r| r.open && r.has(seq, i))
                    .count();
                (holders, self.rng.r#gen::<u32>(), i)
            })
            .filter(|(h, _, _)| *h > 0)
            .collect();
        if missing.is_empty() {
            return;
        }
        // Time left before the origin takes over: a holder not expected to deliver by then is
        // not asked (its uplink is better spent on someone it can serve in time, and the chunk
        // would come twice: from it and from the origin).
        let left = s.want.or(s.prefetch).map_or(f64::INFINITY, |d| {
            self.cutoff(s, d).since(now).as_secs_f64()
        });
        // Rarest first, random among equals: requesters then hold different chunks and trade
        // them with each other instead of all queueing at the first holder for the same ones.
        missing.sort_unstable();
        let missing: Vec<usize> = missing.into_iter().map(|(_, _, i)| i).collect();
        let per_request = self.cfg.max_chunks_per_request.clamp(1, MAX_REQUEST_CHUNKS) as usize;
        let mut i = 0;
        while i < missing.len() {
            let idx = missing[i];
            // The holder expected to deliver soonest; random among near-equals.
            let mut best: Option<(f64, PeerId)> = None;
            for (p, r) in &self.remotes.peers {
                let cap = self.cfg.max_inflight_per_peer.min(r.their_max_inflight);
                if !r.open
                    || !r.hello
                    || r.inflight >= cap
                    || r.busy_until > now
                    || !r.has(seq, idx)
                {
                    continue;
                }
                // Its announced wait (counted down since it told us), then our chunks at the
                // rate it delivered to us, or its whole uplink if that is less.
                let rate = if r.their_uplink > 0.0 {
                    r.rate.min(r.their_uplink)
                } else {
                    r.rate
                };
                let waits = (r.their_wait - now.since(r.their_status_at).as_secs_f64()).max(0.0);
                let mut eta = waits + (r.inflight as f64 + 1.0) * CHUNK_SIZE as f64 / rate.max(1.0);
                if eta > left {
                    continue;
                }
                if r.penalty_until > now {
                    eta += 10.0;
                }
                eta *= 1.0 + 0.3 * self.rng.r#gen::<f64>();
                if best.is_none_or(|(b, _)| eta < b) {
                    best = Some((eta, *p));
                }
            }
            let Some((_, peer)) = best else {
                i += 1;
                continue;
            };
            let r = &self.remotes.peers[&peer];
            let room = self.cfg.max_inflight_per_peer.min(r.their_max_inflight) - r.inflight;
            let max = room.min(per_request).max(1);
            // Extend to consecutive missing chunks this peer holds.
            let mut count = 1;
            while count < max
                && i + count < missing.len()
                && missing[i + count] == idx + count
                && r.has(seq, idx + count)
            {
                count += 1;
            }
            let req_id = self.sched.next_req;
            self.sched.next_req = self.sched.next_req.wrapping_add(1).max(1);
            self.sched.requests.insert(
                req_id,
                OurReq {
                    peer,
                    seq,
                    first: idx as u16,
                    count: count as u16,
                    received: 0,
                    last_progress: now,
                    sent: now,
                },
            );
            if let Some(r) = self.remotes.peers.get_mut(&peer) {
                if r.inflight == 0 {
                    r.last_progress = now;
                }
                r.inflight += count;
            }
            if let Some(s) = self.store.segments.get_mut(&seq) {
                for c in &mut s.chunks[idx..idx + count] {
                    c.peer_req = Some(req_id);
                }
            }
            self.stats.peer_requests += 1;
            self.send(
                peer,
                &Frame::Request {
                    req_id,
                    seq,
                    first: idx as u16,
                    count: count as u16,
                },
            );
            i += count;
        }
    }

    /// A chunk from `peer`: verified against the manifest before anything else sees it.
    /// Returns whether anything changed (anything but a late chunk of a cancelled request).
    pub(crate) fn on_chunk(
        &mut self,
        now: Time,
        peer: PeerId,
        req_id: u32,
        seq: u64,
        index: u16,
        data: Bytes,
    ) -> bool {
        let idx = index as usize;
        let Some(req) = self.sched.requests.get(&req_id).filter(|r| r.peer == peer) else {
            // Late chunk of a request we cancelled: ignore. Anything else was never asked for.
            let cancelled = self.remotes.peers.get(&peer).is_some_and(|r| {
                r.cancelled.iter().any(|&(id, s, f, c)| {
                    id == req_id && s == seq && index >= f && (index as u32) < f as u32 + c as u32
                })
            });
            if !cancelled {
                self.ban(now, peer, BanReason::Unsolicited);
                return true;
            }
            // A chunk we cancelled (stalled peer, origin took over) that arrives anyway is kept
            // when we still lack it and it verifies: its upload is then not wasted.
            return self.late_chunk(now, peer, seq, index as usize, data);
        };
        if req.seq != seq || index < req.first || index >= req.first + req.count {
            self.ban(now, peer, BanReason::Unsolicited);
            return true;
        }
        let bit = 1u64 << (index - req.first);
        let sent = req.sent;
        if req.received & bit != 0 {
            self.ban(now, peer, BanReason::Unsolicited);
            return true;
        }
        match self.check_chunk(now, peer, seq, idx, &data) {
            Check::Unknown => return false,
            Check::Banned => return true,
            Check::Skewed => {
                // The peer still holds the version it verified: not asked for it again until
                // it announces it anew (after its next manifest fetch).
                self.cancel_request(req_id);
                if let Some(r) = self.remotes.peers.get_mut(&peer) {
                    r.have.remove(seq);
                }
                return true;
            }
            Check::Good => {}
        }
        let len = data.len() as u64;
        self.stats
            .count_chunk_ms(now.since(sent).as_millis().min(u64::MAX as u128) as u64);
        self.chunk_from_peer(peer, seq, idx, data.len());
        if let Some(req) = self.sched.requests.get_mut(&req_id) {
            req.received |= bit;
            req.last_progress = now;
            let done = req.remaining() == 0;
            if let Some(r) = self.remotes.peers.get_mut(&peer) {
                let elapsed = now.since(r.last_progress).as_secs_f64().max(0.001);
                r.last_progress = now;
                r.inflight = r.inflight.saturating_sub(1);
                r.rate = 0.8 * r.rate + 0.2 * (len as f64 / elapsed).min(50e6);
            }
            if done {
                self.sched.requests.remove(&req_id);
            }
        }
        if let Some(s) = self.store.segments.get_mut(&seq)
            && let Some(c) = s.chunks.get_mut(idx)
            && c.peer_req == Some(req_id)
        {
            c.peer_req = None;
        }
        self.store_chunk(now, seq, idx, data, false);
        true
    }

    /// A chunk of a request we cancelled: stored if still missing and verified (a corrupt one
    /// bans its sender like any other). Returns whether anything changed.
    fn late_chunk(&mut self, now: Time, peer: PeerId, seq: u64, idx: usize, data: Bytes) -> bool {
        let Some(s) = self.store.segments.get(&seq) else {
            return false;
        };
        let Some(c) = s.chunks.get(idx) else {
            return false;
        };
        if c.data.is_some() {
            return false;
        }
        // Corrupt is corrupt, asked for or not: a peer must not be able to hide bad chunks
        // behind our cancellations. A skewed one is dropped.
        match self.check_chunk(now, peer, seq, idx, &data) {
            Check::Good => {}
            Check::Banned => return true,
            Check::Unknown | Check::Skewed => return false,
        }
        self.chunk_from_peer(peer, seq, idx, data.len());
        self.store_chunk(now, seq, idx, data, false);
        self.cancel_covered_requests(seq);
        true
    }

    /// Verifies chunk `idx` of `seq` from `peer` against the manifest. Too long or corrupt:
    /// the peer is banned (and a corrupt chunk reported). One that matches the segment's
    /// previous manifest entry is skew, not corruption (the origin re-published the segment):
    /// counted, never banned.
    fn check_chunk(&mut self, now: Time, peer: PeerId, seq: u64, idx: usize, data: &[u8]) -> Check {
        let Some(s) = self.store.segments.get(&seq) else {
            return Check::Unknown;
        };
        if data.len() > s.m.chunk_len(idx) {
            self.ban(now, peer, BanReason::TooManyBytes);
            return Check::Banned;
        }
        if s.m.verify_chunk(idx, data) {
            return Check::Good;
        }
        if s.prev.as_ref().is_some_and(|p| p.verify_chunk(idx, data)) {
            self.stats.skewed_chunks += 1;
            return Check::Skewed;
        }
        self.stats.integrity_failures += 1;
        self.out.push_back(Output::Event(Event::IntegrityFailure {
            peer: Some(peer),
            seq,
            chunk: idx,
        }));
        self.ban(now, peer, BanReason::BadChunk);
        Check::Banned
    }

    /// Counts a verified chunk from `peer` (and tells the page, when it listens for chunks).
    fn chunk_from_peer(&mut self, peer: PeerId, seq: u64, idx: usize, bytes: usize) {
        self.stats.count_from_peer(peer, bytes as u64);
        if self.cfg.chunk_events {
            self.out.push_back(Output::Event(Event::ChunkReceived {
                peer: Some(peer),
                seq,
                chunk: idx,
                bytes,
            }));
        }
    }

    /// A peer with requests outstanding that sent no chunk for `peer_stall_timeout` has stalled:
    /// all our requests to it are cancelled and go elsewhere.
    pub(crate) fn expire_requests(&mut self, now: Time) {
        let timeout = self.cfg.peer_stall_timeout;
        let stale: Vec<u32> = self
            .sched
            .requests
            .iter()
            .filter(|(_, r)| {
                self.remotes
                    .peers
                    .get(&r.peer)
                    .is_none_or(|p| now >= p.last_progress + timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(peer) = self.sched.requests.get(&id).map(|r| r.peer)
                && let Some(r) = self.remotes.peers.get_mut(&peer)
            {
                r.penalty_until = now + PEER_PENALTY;
            }
            self.stats.peer_request_timeouts += 1;
            self.cancel_request(id);
        }
    }

    /// Forgets our request `id`; its unreceived chunks become missing.
    pub(crate) fn release_request(&mut self, id: u32) {
        let Some(req) = self.sched.requests.remove(&id) else {
            return;
        };
        if let Some(r) = self.remotes.peers.get_mut(&req.peer) {
            r.inflight = r.inflight.saturating_sub(req.remaining());
        }
        if let Some(s) = self.store.segments.get_mut(&req.seq) {
            for c in &mut s.chunks {
                if c.peer_req == Some(id) {
                    c.peer_req = None;
                }
            }
        }
    }

    /// Cancels our request `id` at its peer (late chunks are then ignored).
    pub(crate) fn cancel_request(&mut self, id: u32) {
        let Some(req) = self.sched.requests.get(&id) else {
            return;
        };
        let (peer, seq, first, count) = (req.peer, req.seq, req.first, req.count);
        if let Some(r) = self.remotes.peers.get_mut(&peer) {
            r.cancelled.push_back((id, seq, first, count));
            if r.cancelled.len() > MAX_CANCELLED {
                r.cancelled.pop_front();
            }
        }
        self.send(peer, &Frame::Cancel { req_id: id });
        self.release_request(id);
    }
}
