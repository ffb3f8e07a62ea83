//! The peer state machine. See the crate docs for the model; this file holds the logic.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use protocol::frame::MAX_HAVE_ENTRIES;
use protocol::signaling::{ClientMsg, ServerMsg, StatsReport};
use protocol::{AbsentReason, CHUNK_SIZE, Frame, HaveEntry, PeerId, SegmentManifest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{BanReason, Config, CoreError, DisconnectReason, Event, Output, Stats, Time};

/// Peer `have` entries kept per remote (oldest sequence numbers dropped first).
const MAX_REMOTE_HAVE: usize = 1024;
/// Cancelled request ids remembered per remote, so late chunks are ignored rather than punished.
const MAX_CANCELLED: usize = 256;
/// Banned peer ids remembered (the oldest ban is forgotten first beyond this).
const MAX_BANNED: usize = 4096;
/// Candidates (introduced, not yet connected) kept.
const MAX_CANDIDATES: usize = 64;
/// HTTP Range requests issued for one segment at once.
const MAX_HTTP_RUNS: usize = 4;
/// Outputs queued before the driver polls; beyond it the oldest frames are still kept (they
/// are produced only in answer to inputs, so the queue is bounded by one input's work).
const STATS_INTERVAL: Duration = Duration::from_secs(5);
const WANT_PEERS_INTERVAL: Duration = Duration::from_secs(5);
const HTTP_RETRY_BACKOFF: Duration = Duration::from_millis(300);
/// After a peer timed out or said busy, prefer others for this long.
const PEER_PENALTY: Duration = Duration::from_millis(2000);
/// After a peer said busy, prefer others for this long.
const BUSY_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, Default, Clone)]
struct ChunkSt {
    data: Option<Bytes>,
    from_http: bool,
    /// Times we uploaded this chunk (saturating).
    uploads: u8,
    peer_req: Option<u32>,
    http: Option<u64>,
}

#[derive(Debug)]
struct Segment {
    m: SegmentManifest,
    url: String,
    chunks: Vec<ChunkSt>,
    have: usize,
    discovered: Time,
    want: Option<Time>,
    /// Fetch ahead of the player (live edge): scheduled like a want, not handed over.
    prefetch: Option<Time>,
    delivered: bool,
    last_used: Time,
    http_retry_at: Time,
    stored: usize,
    /// Super-seeding: chunks we fetched from the origin are announced to one neighbour each
    /// until uploaded once, or until this time (then to everybody).
    reveal_at: Option<Time>,
    /// We fetch this segment from the origin as its (designated or backup) seeder.
    seeding: bool,
}

impl Segment {
    fn complete(&self) -> bool {
        self.have == self.chunks.len()
    }
    fn busy(&self) -> bool {
        self.chunks
            .iter()
            .any(|c| c.peer_req.is_some() || c.http.is_some())
    }
}

#[derive(Debug)]
struct Serve {
    req_id: u32,
    seq: u64,
    next: u16,
    end: u16,
}

#[derive(Debug)]
struct Remote {
    open: bool,
    since: Time,
    hello: bool,
    their_max_inflight: usize,
    have: BTreeMap<u64, HaveEntry>,
    inflight: usize,
    serve: VecDeque<Serve>,
    cancelled: VecDeque<(u32, u64, u16, u16)>,
    /// Received bytes/s (EWMA), for picking the fastest holder.
    rate: f64,
    penalty_until: Time,
    /// Bytes waiting in the channel's send buffer (driver-reported, plus what we sent since).
    buffered: usize,
    /// Last chunk from this peer, or when our first outstanding request to it was sent.
    last_progress: Time,
}

impl Remote {
    fn new(now: Time) -> Self {
        Remote {
            open: false,
            since: now,
            hello: false,
            their_max_inflight: 8,
            have: BTreeMap::new(),
            inflight: 0,
            serve: VecDeque::new(),
            cancelled: VecDeque::new(),
            rate: 256.0 * 1024.0,
            penalty_until: Time::ZERO,
            buffered: 0,
            last_progress: now,
        }
    }
    fn has(&self, seq: u64, index: usize) -> bool {
        self.have.get(&seq).is_some_and(|e| e.has(index))
    }
}

#[derive(Debug)]
struct OurReq {
    peer: PeerId,
    seq: u64,
    first: u16,
    count: u16,
    received: u64,
    last_progress: Time,
}

impl OurReq {
    fn remaining(&self) -> usize {
        self.count as usize - self.received.count_ones() as usize
    }
}

#[derive(Debug)]
struct HttpReq {
    seq: u64,
    /// Absolute offsets of the first and the next expected byte.
    start: u64,
    pos: u64,
    end: u64,
    started: Time,
    /// Bytes of the chunk currently arriving.
    buf: Vec<u8>,
    first_byte: bool,
}

/// The sans-IO peer. Drivers feed it with `handle_*` (always with the current time), drain
/// [`PeerCore::poll_output`], and call [`PeerCore::handle_timeout`] at
/// [`PeerCore::poll_timeout`].
pub struct PeerCore {
    cfg: Config,
    rng: SmallRng,
    me: Option<PeerId>,
    joined: bool,
    slot: Option<(u32, u32)>,
    peers: BTreeMap<PeerId, Remote>,
    candidates: VecDeque<PeerId>,
    banned: BTreeSet<PeerId>,
    banned_order: VecDeque<PeerId>,
    segments: BTreeMap<u64, Segment>,
    requests: BTreeMap<u32, OurReq>,
    http: BTreeMap<u64, HttpReq>,
    next_req: u32,
    next_http: u64,
    out: VecDeque<Output>,
    dirty_have: BTreeSet<u64>,
    stats: Stats,
    store_bytes: usize,
    want_peers_at: Time,
    stats_at: Time,
    /// Origin download rate (bytes/s, EWMA) and first-byte time, for deadline planning.
    http_rate: f64,
    http_rtt: Duration,
    upload_tokens: f64,
    upload_tokens_at: Time,
    serve_total: usize,
    /// Time of the latest input (timers at or before it have been handled).
    now: Time,
    /// Requester served last: the upload round robin starts after it, so no requester starves.
    rr_last: PeerId,
}

impl PeerCore {
    pub fn new(cfg: Config) -> Self {
        let rng = SmallRng::seed_from_u64(cfg.seed);
        let upload_tokens = cfg.upload_cap.map_or(0.0, |c| c as f64 / 4.0);
        PeerCore {
            cfg,
            rng,
            me: None,
            joined: false,
            slot: None,
            peers: BTreeMap::new(),
            candidates: VecDeque::new(),
            banned: BTreeSet::new(),
            banned_order: VecDeque::new(),
            segments: BTreeMap::new(),
            requests: BTreeMap::new(),
            http: BTreeMap::new(),
            next_req: 1,
            next_http: 1,
            out: VecDeque::new(),
            dirty_have: BTreeSet::new(),
            stats: Stats::default(),
            store_bytes: 0,
            want_peers_at: Time::ZERO,
            stats_at: Time::ZERO,
            http_rate: 1_000_000.0,
            http_rtt: Duration::from_millis(200),
            upload_tokens,
            upload_tokens_at: Time::ZERO,
            serve_total: 0,
            now: Time::ZERO,
            rr_last: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn peer_id(&self) -> Option<PeerId> {
        self.me
    }
    /// This viewer's seeding slot and the slot count, once joined.
    pub fn slot(&self) -> Option<(u32, u32)> {
        self.slot
    }
    /// Bytes held in the segment store.
    pub fn store_bytes(&self) -> usize {
        self.store_bytes
    }
    pub fn is_banned(&self, peer: PeerId) -> bool {
        self.banned.contains(&peer)
    }
    /// Peers with an open data channel.
    pub fn open_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.iter().filter(|(_, r)| r.open).map(|(p, _)| *p)
    }
    /// Whether the store holds segment `seq` completely.
    pub fn has_segment(&self, seq: u64) -> bool {
        self.segments.get(&seq).is_some_and(|s| s.complete())
    }
    /// Chunks of `seq` requested from peers right now, with the peer they were asked from.
    pub fn chunks_in_flight(&self, seq: u64) -> Vec<(usize, PeerId)> {
        let mut v = Vec::new();
        if let Some(s) = self.segments.get(&seq) {
            for (i, c) in s.chunks.iter().enumerate() {
                if let Some(r) = c.peer_req.and_then(|r| self.requests.get(&r)) {
                    v.push((i, r.peer));
                }
            }
        }
        v
    }
    /// Whether chunk `index` of `seq` is being fetched from the origin right now.
    pub fn chunk_on_http(&self, seq: u64, index: usize) -> bool {
        self.segments
            .get(&seq)
            .and_then(|s| s.chunks.get(index))
            .is_some_and(|c| c.http.is_some())
    }

    /// Checks the core's internal accounting; `Err` describes the first broken invariant.
    /// Cheap enough to call after every input in tests and simulations.
    pub fn check_invariants(&self) -> Result<(), String> {
        let queued: usize = self.peers.values().map(|r| queued_chunks(&r.serve)).sum();
        if queued != self.serve_total {
            return Err(format!(
                "serve_total {} != queued chunks {queued}",
                self.serve_total
            ));
        }
        let stored: usize = self
            .segments
            .values()
            .flat_map(|s| s.chunks.iter())
            .filter_map(|c| c.data.as_ref().map(|d| d.len()))
            .sum();
        if stored != self.store_bytes {
            return Err(format!(
                "store_bytes {} != stored chunk bytes {stored}",
                self.store_bytes
            ));
        }
        let largest = self
            .segments
            .values()
            .map(|s| s.m.len as usize)
            .max()
            .unwrap_or(0);
        if self.store_bytes > self.cfg.store_cap.max(largest) {
            return Err(format!(
                "store {} over cap {}",
                self.store_bytes, self.cfg.store_cap
            ));
        }
        for (p, r) in &self.peers {
            let inflight: usize = self
                .requests
                .values()
                .filter(|q| q.peer == *p)
                .map(|q| q.remaining())
                .sum();
            if inflight != r.inflight {
                return Err(format!(
                    "peer {p}: inflight {} != outstanding {inflight}",
                    r.inflight
                ));
            }
        }
        for (seq, s) in &self.segments {
            let have = s.chunks.iter().filter(|c| c.data.is_some()).count();
            if have != s.have {
                return Err(format!("segment {seq}: have {} != {have}", s.have));
            }
            for c in &s.chunks {
                if let Some(id) = c.peer_req
                    && !self.requests.contains_key(&id)
                {
                    return Err(format!("segment {seq}: chunk points to gone request {id}"));
                }
                if let Some(id) = c.http
                    && !self.http.contains_key(&id)
                {
                    return Err(format!(
                        "segment {seq}: chunk points to gone HTTP request {id}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// One line describing segment `seq` (for logs and debugging).
    pub fn describe_segment(&self, seq: u64) -> String {
        let Some(s) = self.segments.get(&seq) else {
            return format!("{seq}: unknown");
        };
        let on_peer = s.chunks.iter().filter(|c| c.peer_req.is_some()).count();
        let on_http = s.chunks.iter().filter(|c| c.http.is_some()).count();
        let holders = self
            .peers
            .values()
            .filter(|r| r.open && r.have.contains_key(&seq))
            .count();
        let detail: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, r)| r.open && r.have.contains_key(&seq))
            .map(|(p, r)| {
                let n = (0..s.chunks.len()).filter(|i| r.has(seq, *i)).count();
                format!(
                    "{p}:has{n},inf{},buf{},pen{}",
                    r.inflight,
                    r.buffered,
                    r.penalty_until > self.now
                )
            })
            .collect();
        format!(
            "[{}] {seq}: have {}/{} (peer {on_peer}, http {on_http}), discovered {:.2}, want {:?}, cutoff {:?}, holders {holders}, open peers {}, http est {:.0} kB/s",
            detail.join(" "),
            s.have,
            s.chunks.len(),
            s.discovered.as_secs_f64(),
            s.want.map(|t| t.as_secs_f64()),
            s.want.map(|d| self.cutoff(s, d).as_secs_f64()),
            self.peers.values().filter(|r| r.open).count(),
            self.http_rate / 1000.0,
        )
    }

    /// Next output for the driver to perform.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the driver must call [`PeerCore::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let now = self.now;
        let mut at = |x: Time| {
            if x > now {
                t = Some(t.map_or(x, |y: Time| y.min(x)));
            }
        };
        if self.joined {
            at(self.stats_at);
        }
        for s in self.segments.values() {
            if let Some(deadline) = s.want.or(s.prefetch)
                && !s.complete()
            {
                at(self.cutoff(s, deadline));
                let rounds = if self.banned.is_empty() {
                    1
                } else {
                    self.cfg.backup_rounds.max(1)
                };
                for m in 1..=rounds {
                    at(s.discovered + self.cfg.backup_seed_delay * m as u32);
                }
                if s.http_retry_at > Time::ZERO {
                    at(s.http_retry_at);
                }
            }
        }
        for s in self.segments.values() {
            if let Some(t) = s.reveal_at {
                at(t);
            }
        }
        for r in self.peers.values() {
            if r.inflight > 0 {
                at(r.last_progress + self.cfg.peer_stall_timeout);
            }
        }
        for rem in self.peers.values() {
            if !rem.hello {
                at(rem.since + self.cfg.connect_timeout);
            }
        }
        if let Some(cap) = self.cfg.upload_cap
            && self.serve_total > 0
        {
            let need = (CHUNK_SIZE as f64 - self.upload_tokens).max(0.0);
            // Rounded up, plus 1 µs: `Time` has µs resolution, and a wake-up that lands a hair
            // before the bucket holds a full chunk would find it short and set no new timer.
            let wait_us = (need * 1e6 / cap.max(1) as f64).ceil() as u64 + 1;
            at(self.upload_tokens_at + Duration::from_micros(wait_us));
        }
        t
    }

    // ---------------------------------------------------------------- inputs

    /// A message from the signaling server. `Signal` messages (SDP/ICE) are the driver's: it
    /// calls [`PeerCore::accept_incoming`] on the first offer from a peer.
    pub fn handle_signal(&mut self, now: Time, msg: ServerMsg) {
        match msg {
            ServerMsg::Welcome { peer_id, .. } => {
                self.me = Some(peer_id);
                self.out.push_back(Output::Signal(ClientMsg::Join {
                    swarm: self.cfg.swarm.clone(),
                    token: None,
                }));
            }
            ServerMsg::Joined {
                swarm,
                peers,
                slot,
                slots,
            } if swarm == self.cfg.swarm => {
                self.joined = true;
                self.slot = Some((slot, slots.max(1)));
                self.add_candidates(peers);
                self.stats_at = now + STATS_INTERVAL;
            }
            ServerMsg::Peers { swarm, peers } if swarm == self.cfg.swarm => {
                self.add_candidates(peers);
            }
            ServerMsg::Slot { swarm, slot, slots } if swarm == self.cfg.swarm => {
                self.slot = Some((slot, slots.max(1)));
            }
            ServerMsg::PeerLeft { swarm, peer } if swarm == self.cfg.swarm => {
                if self.peers.contains_key(&peer) {
                    self.drop_peer(now, peer, DisconnectReason::Left);
                }
                self.candidates.retain(|p| *p != peer);
            }
            ServerMsg::Error { code, message, .. } => {
                self.out
                    .push_back(Output::Event(Event::SignalingError { code, message }));
            }
            ServerMsg::Reconnect { .. } => {
                // The driver reconnects; our swarm state stays (peers keep their channels).
                self.joined = false;
            }
            _ => {}
        }
        self.step(now);
    }

    /// Whether to answer an offer from `peer` (not banned, a free connection slot). Accepting
    /// registers the peer as connecting.
    pub fn accept_incoming(&mut self, now: Time, peer: PeerId) -> bool {
        if self.banned.contains(&peer) || Some(peer) == self.me {
            return false;
        }
        if self.peers.contains_key(&peer) {
            return true;
        }
        if self.peers.len() >= self.cfg.max_peers {
            return false;
        }
        self.peers.insert(peer, Remote::new(now));
        self.candidates.retain(|p| *p != peer);
        true
    }

    /// The data channel to `peer` opened.
    pub fn handle_channel_open(&mut self, now: Time, peer: PeerId) {
        if self.banned.contains(&peer) {
            self.out.push_back(Output::Disconnect {
                peer,
                reason: DisconnectReason::Banned,
            });
            return;
        }
        let rem = self.peers.entry(peer).or_insert_with(|| Remote::new(now));
        if rem.open {
            return;
        }
        rem.open = true;
        rem.since = now;
        let hello = Frame::Hello {
            swarm: self.cfg.swarm.clone(),
            max_inflight: self.cfg.serve_queue_per_peer as u16,
        };
        self.send(peer, &hello);
        // Everything we hold, newest first.
        let entries: Vec<HaveEntry> = self
            .segments
            .values()
            .rev()
            .filter(|s| s.have > 0)
            .take(MAX_HAVE_ENTRIES)
            .map(|s| visible_entry(s, now, 0, 1))
            .collect();
        if !entries.is_empty() {
            self.send(peer, &Frame::Have { entries });
        }
        self.out
            .push_back(Output::Event(Event::PeerConnected { peer }));
        self.step(now);
    }

    /// The connection to `peer` closed or failed.
    pub fn handle_channel_closed(&mut self, now: Time, peer: PeerId) {
        if self.peers.contains_key(&peer) {
            self.forget_peer(peer);
            self.out
                .push_back(Output::Event(Event::PeerDisconnected { peer }));
        }
        self.step(now);
    }

    /// A binary frame from `peer`'s data channel. Malformed frames ban the peer.
    pub fn handle_frame(&mut self, now: Time, peer: PeerId, data: Bytes) {
        if !self.peers.get(&peer).is_some_and(|r| r.open) {
            return;
        }
        match Frame::decode_bytes(data) {
            Ok(frame) => self.on_frame(now, peer, frame),
            Err(e) => self.ban(now, peer, BanReason::Malformed(e.to_string())),
        }
        self.step(now);
    }

    /// Integrity data (and URL) of a segment, from the origin's manifest sidecar. Segments are
    /// identified by media sequence number; a changed manifest for a known number is ignored.
    pub fn add_segment(&mut self, now: Time, m: SegmentManifest, url: String) {
        if self.segments.contains_key(&m.seq) {
            return;
        }
        let n = m.chunk_count();
        let seq = m.seq;
        self.segments.insert(
            seq,
            Segment {
                m,
                url,
                chunks: vec![ChunkSt::default(); n],
                have: 0,
                discovered: now,
                want: None,
                prefetch: None,
                delivered: false,
                last_used: now,
                http_retry_at: Time::ZERO,
                stored: 0,
                reveal_at: None,
                seeding: false,
            },
        );
        self.prune_known();
        self.step(now);
    }

    /// The player wants segment `seq` by `deadline`. Errors when the segment's manifest is not
    /// known: the driver then loads it with the player's own loader.
    pub fn want_segment(&mut self, now: Time, seq: u64, deadline: Time) -> Result<(), CoreError> {
        let s = self
            .segments
            .get_mut(&seq)
            .ok_or(CoreError::UnknownSegment(seq))?;
        s.want = Some(s.want.map_or(deadline, |d| d.min(deadline)));
        s.prefetch = None;
        s.delivered = false;
        s.last_used = now;
        self.step(now);
        Ok(())
    }

    /// The player will want `seq` by about `deadline` (a live-edge segment it has not asked for
    /// yet): fetch it like a wanted one, but hand nothing over until `want_segment`. Drivers
    /// call it when the integrity manifest shows a new segment, which they may poll more often
    /// than the player polls its playlist.
    pub fn prefetch_segment(
        &mut self,
        now: Time,
        seq: u64,
        deadline: Time,
    ) -> Result<(), CoreError> {
        let s = self
            .segments
            .get_mut(&seq)
            .ok_or(CoreError::UnknownSegment(seq))?;
        if s.want.is_none() && !s.complete() {
            s.prefetch = Some(s.prefetch.map_or(deadline, |d| d.min(deadline)));
        }
        self.step(now);
        Ok(())
    }

    /// The player no longer needs `seq` (seek, quality switch).
    pub fn cancel_want(&mut self, now: Time, seq: u64) {
        if let Some(s) = self.segments.get_mut(&seq) {
            s.want = None;
        }
        self.step(now);
    }

    /// The player stalled (its buffer ran dry).
    pub fn report_stall(&mut self, _now: Time) {
        self.stats.stalls += 1;
    }

    /// Bytes of an HTTP response body, in order.
    pub fn handle_http_data(&mut self, now: Time, id: u64, data: &[u8]) {
        self.stats.http_bytes += data.len() as u64;
        if let Err(reason) = self.http_data(now, id, data) {
            self.http_fail(now, id, reason, true);
        }
        self.step(now);
    }

    /// The HTTP response ended. A body shorter than asked is a failure (never kept).
    pub fn handle_http_done(&mut self, now: Time, id: u64) {
        if let Some(h) = self.http.get(&id) {
            if h.pos != h.end {
                self.http_fail(now, id, "truncated body", false);
            } else if let Some(h) = self.http.remove(&id) {
                // Transfer rate after the first byte.
                let took = now.since(h.started + self.http_rtt).as_secs_f64().max(0.01);
                let bytes = (h.end - h.start) as f64;
                // Coarse but robust: whole-request rate, EWMA.
                self.http_rate = 0.7 * self.http_rate + 0.3 * (bytes / took).max(50_000.0);
            }
        }
        self.step(now);
    }

    /// The HTTP request failed (network error, bad status).
    pub fn handle_http_failed(&mut self, now: Time, id: u64) {
        self.http_fail(now, id, "request failed", false);
        self.step(now);
    }

    /// How many bytes wait in `peer`'s data channel send buffer now (`bufferedAmount`). Drivers
    /// report it whenever it drops (e.g. on `bufferedamountlow`, or after each send completes);
    /// chunks are only sent while it is under the send window.
    pub fn handle_buffered(&mut self, now: Time, peer: PeerId, amount: usize) {
        if let Some(r) = self.peers.get_mut(&peer) {
            r.buffered = amount;
        }
        self.step(now);
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Time) {
        self.step(now);
    }

    // ---------------------------------------------------------------- frames

    fn on_frame(&mut self, now: Time, peer: PeerId, frame: Frame) {
        match frame {
            Frame::Hello {
                swarm,
                max_inflight,
            } => {
                if swarm != self.cfg.swarm {
                    self.drop_peer(now, peer, DisconnectReason::WrongSwarm);
                    return;
                }
                if let Some(r) = self.peers.get_mut(&peer) {
                    r.hello = true;
                    r.their_max_inflight = (max_inflight as usize).max(1);
                }
            }
            Frame::Have { entries } => {
                let Some(r) = self.peers.get_mut(&peer) else {
                    return;
                };
                for e in entries {
                    // Entries that disagree with our manifest are ignored, not punished: the
                    // peer may have a newer manifest.
                    if let Some(s) = self.segments.get(&e.seq)
                        && s.chunks.len() != e.chunk_count as usize
                    {
                        continue;
                    }
                    r.have.insert(e.seq, e);
                }
                while r.have.len() > MAX_REMOTE_HAVE {
                    r.have.pop_first();
                }
            }
            Frame::Drop { seqs } => {
                if let Some(r) = self.peers.get_mut(&peer) {
                    for s in seqs {
                        r.have.remove(&s);
                    }
                }
            }
            Frame::Request {
                req_id,
                seq,
                first,
                count,
            } => self.on_request(now, peer, req_id, seq, first, count),
            Frame::Chunk {
                req_id,
                seq,
                index,
                data,
            } => self.on_chunk(now, peer, req_id, seq, index, data),
            Frame::Cancel { req_id } => {
                if let Some(r) = self.peers.get_mut(&peer) {
                    let before = queued_chunks(&r.serve);
                    r.serve.retain(|s| s.req_id != req_id);
                    self.serve_total -= before - queued_chunks(&r.serve);
                }
            }
            Frame::Absent { req_id, reason } => {
                let Some(req) = self.requests.get(&req_id) else {
                    return;
                };
                if req.peer != peer {
                    return self.ban(now, peer, BanReason::Unsolicited);
                }
                let seq = req.seq;
                self.release_request(req_id);
                if let Some(r) = self.peers.get_mut(&peer) {
                    match reason {
                        AbsentReason::NotFound => {
                            r.have.remove(&seq);
                        }
                        AbsentReason::Busy => r.penalty_until = now + BUSY_BACKOFF,
                        AbsentReason::Refused => r.penalty_until = now + PEER_PENALTY,
                    }
                }
            }
        }
    }

    fn on_request(
        &mut self,
        now: Time,
        peer: PeerId,
        req_id: u32,
        seq: u64,
        first: u16,
        count: u16,
    ) {
        let absent = |reason| Frame::Absent { req_id, reason };
        if !self.cfg.upload {
            return self.send(peer, &absent(AbsentReason::Refused));
        }
        let end = first as usize + count as usize;
        let held = self.segments.get(&seq).is_some_and(|s| {
            end <= s.chunks.len()
                && s.chunks[first as usize..end]
                    .iter()
                    .all(|c| c.data.is_some())
        });
        if !held {
            return self.send(peer, &absent(AbsentReason::NotFound));
        }
        let Some(r) = self.peers.get_mut(&peer) else {
            return;
        };
        let queued = queued_chunks(&r.serve);
        if queued + count as usize > self.cfg.serve_queue_per_peer
            || self.serve_total + count as usize > self.cfg.serve_queue_total
        {
            return self.send(peer, &absent(AbsentReason::Busy));
        }
        r.serve.push_back(Serve {
            req_id,
            seq,
            next: first,
            end: end as u16,
        });
        self.serve_total += count as usize;
        if let Some(s) = self.segments.get_mut(&seq) {
            s.last_used = now;
        }
    }

    fn on_chunk(
        &mut self,
        now: Time,
        peer: PeerId,
        req_id: u32,
        seq: u64,
        index: u16,
        data: Bytes,
    ) {
        let idx = index as usize;
        let Some(req) = self.requests.get(&req_id).filter(|r| r.peer == peer) else {
            // Late chunk of a request we cancelled: ignore. Anything else was never asked for.
            let cancelled = self.peers.get(&peer).is_some_and(|r| {
                r.cancelled.iter().any(|&(id, s, f, c)| {
                    id == req_id && s == seq && index >= f && (index as u32) < f as u32 + c as u32
                })
            });
            if !cancelled {
                self.ban(now, peer, BanReason::Unsolicited);
            }
            return;
        };
        if req.seq != seq || index < req.first || index >= req.first + req.count {
            return self.ban(now, peer, BanReason::Unsolicited);
        }
        let bit = 1u64 << (index - req.first);
        if req.received & bit != 0 {
            return self.ban(now, peer, BanReason::Unsolicited);
        }
        let Some(s) = self.segments.get(&seq) else {
            return;
        };
        if data.len() > s.m.chunk_len(idx) {
            return self.ban(now, peer, BanReason::TooManyBytes);
        }
        if !s.m.verify_chunk(idx, &data) {
            self.stats.integrity_failures += 1;
            self.out.push_back(Output::Event(Event::IntegrityFailure {
                peer: Some(peer),
                seq,
                chunk: idx,
            }));
            return self.ban(now, peer, BanReason::BadChunk);
        }
        let len = data.len() as u64;
        self.stats.p2p_bytes += len;
        *self.stats.bytes_from_peer.entry(peer).or_insert(0) += len;
        if let Some(req) = self.requests.get_mut(&req_id) {
            req.received |= bit;
            req.last_progress = now;
            let done = req.remaining() == 0;
            if let Some(r) = self.peers.get_mut(&peer) {
                let elapsed = now.since(r.last_progress).as_secs_f64().max(0.001);
                r.last_progress = now;
                r.inflight = r.inflight.saturating_sub(1);
                r.rate = 0.8 * r.rate + 0.2 * (len as f64 / elapsed).min(50e6);
            }
            if done {
                self.requests.remove(&req_id);
            }
        }
        if let Some(s) = self.segments.get_mut(&seq)
            && let Some(c) = s.chunks.get_mut(idx)
            && c.peer_req == Some(req_id)
        {
            c.peer_req = None;
        }
        self.store_chunk(now, seq, idx, data, false);
    }

    // ---------------------------------------------------------------- http

    fn http_data(&mut self, now: Time, id: u64, mut data: &[u8]) -> Result<(), &'static str> {
        let Some(h) = self.http.get_mut(&id) else {
            return Ok(());
        };
        if !h.first_byte && !data.is_empty() {
            h.first_byte = true;
            let rtt = now.since(h.started);
            self.http_rtt = (self.http_rtt * 7 + rtt * 3) / 10;
        }
        let seq = h.seq;
        let Some(s) = self.segments.get(&seq) else {
            return Err("unknown segment");
        };
        if h.pos + data.len() as u64 > h.end {
            return Err("body longer than asked");
        }
        let mut done_chunks = Vec::new();
        while !data.is_empty() {
            let idx = (h.pos / CHUNK_SIZE as u64) as usize;
            let clen = s.m.chunk_len(idx);
            let take = (clen - h.buf.len()).min(data.len());
            h.buf.extend_from_slice(&data[..take]);
            h.pos += take as u64;
            data = &data[take..];
            if h.buf.len() == clen {
                let chunk = Bytes::from(std::mem::take(&mut h.buf));
                if !s.m.verify_chunk(idx, &chunk) {
                    self.stats.integrity_failures += 1;
                    self.out.push_back(Output::Event(Event::IntegrityFailure {
                        peer: None,
                        seq,
                        chunk: idx,
                    }));
                    return Err("chunk from origin does not match manifest");
                }
                done_chunks.push((idx, chunk));
            }
        }
        for (idx, chunk) in done_chunks {
            if let Some(c) = self
                .segments
                .get_mut(&seq)
                .and_then(|s| s.chunks.get_mut(idx))
                && c.http == Some(id)
            {
                c.http = None;
            }
            self.store_chunk(now, seq, idx, chunk, true);
        }
        Ok(())
    }

    fn http_fail(&mut self, now: Time, id: u64, _reason: &'static str, cancel: bool) {
        let Some(h) = self.http.remove(&id) else {
            return;
        };
        self.stats.http_failures += 1;
        if cancel {
            self.out.push_back(Output::HttpCancel { id });
        }
        if let Some(s) = self.segments.get_mut(&h.seq) {
            for c in &mut s.chunks {
                if c.http == Some(id) {
                    c.http = None;
                }
            }
            s.http_retry_at = now + HTTP_RETRY_BACKOFF;
        }
    }

    // ---------------------------------------------------------------- store

    fn store_chunk(&mut self, now: Time, seq: u64, idx: usize, data: Bytes, from_http: bool) {
        let Some(s) = self.segments.get_mut(&seq) else {
            return;
        };
        let Some(c) = s.chunks.get_mut(idx) else {
            return;
        };
        if c.data.is_some() {
            return;
        }
        self.store_bytes += data.len();
        s.stored += data.len();
        c.data = Some(data);
        c.from_http = from_http;
        if from_http && s.seeding && s.reveal_at.is_none() {
            s.reveal_at = Some(now + self.cfg.super_seed_time);
        }
        s.have += 1;
        s.last_used = now;
        self.dirty_have.insert(seq);
        self.evict(now, seq);
    }

    /// Keeps the store under its cap: least recently used first, segments the player still
    /// waits for last, never the one being written.
    fn evict(&mut self, _now: Time, keep: u64) {
        while self.store_bytes > self.cfg.store_cap {
            let victim = self
                .segments
                .iter()
                .filter(|(seq, s)| **seq != keep && s.stored > 0)
                .min_by_key(|(_, s)| (s.want.is_some() && !s.delivered, s.last_used))
                .map(|(seq, _)| *seq);
            let Some(seq) = victim else { break };
            self.drop_segment_data(seq);
            let frame = Frame::Drop { seqs: vec![seq] };
            let open: Vec<PeerId> = self.open_peers().collect();
            for p in open {
                self.send(p, &frame);
            }
        }
    }

    fn drop_segment_data(&mut self, seq: u64) {
        let Some(s) = self.segments.get_mut(&seq) else {
            return;
        };
        for c in &mut s.chunks {
            c.data = None;
        }
        self.store_bytes -= s.stored;
        s.stored = 0;
        s.prefetch = None;
        s.have = 0;
        self.dirty_have.remove(&seq);
        // Requests for it are answered NotFound from now on.
        for r in self.peers.values_mut() {
            let before = queued_chunks(&r.serve);
            r.serve.retain(|x| x.seq != seq);
            self.serve_total -= before - queued_chunks(&r.serve);
        }
    }

    fn prune_known(&mut self) {
        while self.segments.len() > self.cfg.max_known_segments {
            let victim = self
                .segments
                .iter()
                .find(|(_, s)| !s.busy() && (s.want.is_none() || s.delivered))
                .map(|(seq, _)| *seq);
            let Some(seq) = victim else { break };
            self.drop_segment_data(seq);
            self.segments.remove(&seq);
        }
    }

    // ---------------------------------------------------------------- peers

    fn add_candidates(&mut self, peers: Vec<PeerId>) {
        for p in peers {
            if Some(p) != self.me
                && !self.banned.contains(&p)
                && !self.peers.contains_key(&p)
                && !self.candidates.contains(&p)
            {
                self.candidates.push_back(p);
            }
        }
        while self.candidates.len() > MAX_CANDIDATES {
            self.candidates.pop_front();
        }
    }

    fn send(&mut self, peer: PeerId, frame: &Frame) {
        let bytes = frame.encode();
        if let Some(r) = self.peers.get_mut(&peer) {
            r.buffered += bytes.len();
        }
        self.out.push_back(Output::Send { peer, frame: bytes });
    }

    fn total_buffered(&self) -> usize {
        self.peers.values().map(|r| r.buffered).sum()
    }

    fn ban(&mut self, now: Time, peer: PeerId, reason: BanReason) {
        if self.banned.insert(peer) {
            self.banned_order.push_back(peer);
            if self.banned_order.len() > MAX_BANNED
                && let Some(old) = self.banned_order.pop_front()
            {
                self.banned.remove(&old);
            }
            self.stats.peers_banned += 1;
        }
        self.out
            .push_back(Output::Event(Event::PeerBanned { peer, reason }));
        self.drop_peer(now, peer, DisconnectReason::Banned);
    }

    fn drop_peer(&mut self, _now: Time, peer: PeerId, reason: DisconnectReason) {
        if self.peers.contains_key(&peer) {
            self.forget_peer(peer);
            self.out.push_back(Output::Disconnect { peer, reason });
        }
    }

    /// Removes all state about `peer`; its outstanding chunks become missing again.
    fn forget_peer(&mut self, peer: PeerId) {
        if let Some(r) = self.peers.remove(&peer) {
            self.serve_total -= queued_chunks(&r.serve);
        }
        let ids: Vec<u32> = self
            .requests
            .iter()
            .filter(|(_, r)| r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.release_request(id);
        }
    }

    /// Forgets our request `id`; its unreceived chunks become missing.
    fn release_request(&mut self, id: u32) {
        let Some(req) = self.requests.remove(&id) else {
            return;
        };
        if let Some(r) = self.peers.get_mut(&req.peer) {
            r.inflight = r.inflight.saturating_sub(req.remaining());
        }
        if let Some(s) = self.segments.get_mut(&req.seq) {
            for c in &mut s.chunks {
                if c.peer_req == Some(id) {
                    c.peer_req = None;
                }
            }
        }
    }

    /// Cancels our request `id` at its peer (late chunks are then ignored).
    fn cancel_request(&mut self, id: u32) {
        let Some(req) = self.requests.get(&id) else {
            return;
        };
        let (peer, seq, first, count) = (req.peer, req.seq, req.first, req.count);
        if let Some(r) = self.peers.get_mut(&peer) {
            r.cancelled.push_back((id, seq, first, count));
            if r.cancelled.len() > MAX_CANCELLED {
                r.cancelled.pop_front();
            }
        }
        self.send(peer, &Frame::Cancel { req_id: id });
        self.release_request(id);
    }

    // ---------------------------------------------------------------- scheduling

    /// Time at which segment `s` must go to the origin to make `deadline`.
    fn cutoff(&self, s: &Segment, deadline: Time) -> Time {
        let missing = s.m.len as f64 * (1.0 - s.have as f64 / s.chunks.len().max(1) as f64);
        let est = self.http_rtt + Duration::from_secs_f64(missing / self.http_rate.max(1.0));
        deadline - est.mul_f64(1.5) - self.cfg.http_margin
    }

    fn designated(&self, seq: u64, offset: u64) -> bool {
        match self.slot {
            Some((slot, slots)) => (seq + offset) % slots as u64 == slot as u64,
            None => false,
        }
    }

    /// Number of parts the origin fetch of a segment is split in (never more than members).
    fn parts(&self) -> usize {
        let slots = self.slot.map_or(1, |(_, n)| n as usize);
        self.cfg.origin_seeders.clamp(1, slots.max(1))
    }

    /// The part of `seq` this member fetches from the origin first, if any.
    fn seed_part(&self, seq: u64) -> Option<usize> {
        (0..self.parts()).find(|j| self.designated(seq, *j as u64))
    }

    /// Runs after every input: connections, timeouts, deliveries, requests, uploads, announces.
    fn step(&mut self, now: Time) {
        self.now = self.now.max(now);
        self.manage_peers(now);
        self.expire_requests(now);
        self.deliver(now);
        self.schedule(now);
        self.pump_uploads(now);
        self.flush_have();
        if self.joined && now >= self.stats_at {
            self.stats_at = now + STATS_INTERVAL;
            let s = &self.stats;
            let report = StatsReport {
                http_bytes: s.delivered_http_bytes,
                p2p_bytes: s.delivered_p2p_bytes,
                uploaded_bytes: s.uploaded_bytes,
                stalls: s.stalls,
                peers: self.peers.values().filter(|r| r.open).count() as u32,
                integrity_failures: s.integrity_failures,
            };
            self.out.push_back(Output::Signal(ClientMsg::Stats {
                swarm: self.cfg.swarm.clone(),
                stats: report,
            }));
        }
    }

    fn manage_peers(&mut self, now: Time) {
        let timed_out: Vec<PeerId> = self
            .peers
            .iter()
            // Not open, or open but silent (no `Hello`): a channel that never speaks would
            // hold a connection slot for good. `since` restarts when the channel opens.
            .filter(|(_, r)| !r.hello && now >= r.since + self.cfg.connect_timeout)
            .map(|(p, _)| *p)
            .collect();
        for p in timed_out {
            self.drop_peer(now, p, DisconnectReason::Timeout);
        }
        if !self.cfg.p2p && !self.cfg.upload {
            return;
        }
        while self.peers.len() < self.cfg.max_peers {
            let Some(p) = self.candidates.pop_front() else {
                break;
            };
            if self.banned.contains(&p) || self.peers.contains_key(&p) {
                continue;
            }
            self.peers.insert(p, Remote::new(now));
            self.out.push_back(Output::Connect { peer: p });
        }
        if self.joined
            && self.peers.len() < self.cfg.max_peers / 2
            && self.candidates.is_empty()
            && now >= self.want_peers_at
        {
            self.want_peers_at = now + WANT_PEERS_INTERVAL;
            self.out.push_back(Output::Signal(ClientMsg::WantPeers {
                swarm: self.cfg.swarm.clone(),
            }));
        }
    }

    /// A peer with requests outstanding that sent no chunk for `peer_stall_timeout` has stalled:
    /// all our requests to it are cancelled and go elsewhere.
    fn expire_requests(&mut self, now: Time) {
        let timeout = self.cfg.peer_stall_timeout;
        let stale: Vec<u32> = self
            .requests
            .iter()
            .filter(|(_, r)| {
                self.peers
                    .get(&r.peer)
                    .is_none_or(|p| now >= p.last_progress + timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(peer) = self.requests.get(&id).map(|r| r.peer)
                && let Some(r) = self.peers.get_mut(&peer)
            {
                r.penalty_until = now + PEER_PENALTY;
            }
            self.stats.peer_request_timeouts += 1;
            self.cancel_request(id);
        }
    }

    fn deliver(&mut self, now: Time) {
        let ready: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| s.want.is_some() && !s.delivered && s.complete())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in ready {
            let Some(s) = self.segments.get_mut(&seq) else {
                continue;
            };
            let mut buf = Vec::with_capacity(s.m.len as usize);
            let (mut from_http, mut from_p2p) = (0u64, 0u64);
            for c in &s.chunks {
                if let Some(d) = &c.data {
                    buf.extend_from_slice(d);
                    if c.from_http {
                        from_http += d.len() as u64;
                    } else {
                        from_p2p += d.len() as u64;
                    }
                }
            }
            // Every chunk was verified on arrival; the whole-segment hash guards the assembly.
            if !s.m.verify_segment(&buf) {
                self.stats.integrity_failures += 1;
                self.drop_segment_data(seq);
                continue;
            }
            s.delivered = true;
            s.want = None;
            s.prefetch = None;
            s.last_used = now;
            self.stats.delivered_http_bytes += from_http;
            self.stats.delivered_p2p_bytes += from_p2p;
            self.stats.segments_delivered += 1;
            self.out.push_back(Output::SegmentReady {
                seq,
                data: Bytes::from(buf),
                http_bytes: from_http,
                p2p_bytes: from_p2p,
            });
        }
    }

    fn schedule(&mut self, now: Time) {
        let wanted: Vec<(u64, Time)> = self
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
            let Some(s) = self.segments.get(&seq) else {
                continue;
            };
            let cutoff = self.cutoff(s, deadline);
            let late = now >= cutoff;
            let any_peer_has = self
                .peers
                .values()
                .any(|r| r.open && r.have.contains_key(&seq));
            let open = self.peers.values().any(|r| r.open && r.hello);
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
            let rounds = if self.banned.is_empty() {
                1
            } else {
                self.cfg.backup_rounds.max(1)
            };
            let backup_part = if waited {
                (0..parts).find(|&j| {
                    let r = (j * n / parts)..((j + 1) * n / parts);
                    (1..=rounds).any(|m| {
                        since >= self.cfg.backup_seed_delay * m as u32
                            && self.designated(seq, (j + parts + m - 1) as u64)
                    }) && !r.clone().any(|i| {
                        s.chunks[i].data.is_some()
                            || self.peers.values().any(|p| p.open && p.has(seq, i))
                    })
                })
            } else {
                None
            };
            let cause = if !self.cfg.p2p || late {
                Some(0)
            } else if part.is_some() {
                Some(1)
            } else if backup_part.is_some() {
                Some(2)
            } else if !open && !any_peer_has && waited {
                Some(3)
            } else {
                None
            };
            if self.cfg.p2p {
                self.request_from_peers(now, seq);
            }
            // A designated seeder fetches its part only; everything else fetches what is missing.
            let range = match (cause, part, backup_part) {
                (Some(1), Some(j), _) | (Some(2), _, Some(j)) => {
                    (j * n / parts)..((j + 1) * n / parts)
                }
                _ => 0..n,
            };
            if let Some(cause) = cause
                && self.request_from_http(now, seq, late, range)
            {
                if (cause == 1 || cause == 2)
                    && let Some(s) = self.segments.get_mut(&seq)
                {
                    s.seeding = true;
                }
                match cause {
                    0 => self.stats.http_late += 1,
                    1 => self.stats.http_designated += 1,
                    2 => self.stats.http_backup += 1,
                    _ => self.stats.http_alone += 1,
                }
            }
        }
    }

    fn request_from_peers(&mut self, now: Time, seq: u64) {
        let Some(s) = self.segments.get(&seq) else {
            return;
        };
        let mut missing: Vec<(usize, u32, usize)> = s
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.data.is_none() && c.peer_req.is_none() && c.http.is_none())
            .map(|(i, _)| {
                let holders = self
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
        // Rarest first, random among equals: requesters then hold different chunks and trade
        // them with each other instead of all queueing at the first holder for the same ones.
        missing.sort_unstable();
        let missing: Vec<usize> = missing.into_iter().map(|(_, _, i)| i).collect();
        let mut i = 0;
        while i < missing.len() {
            let idx = missing[i];
            // The holder expected to deliver soonest; random among near-equals.
            let mut best: Option<(f64, PeerId)> = None;
            for (p, r) in &self.peers {
                let cap = self.cfg.max_inflight_per_peer.min(r.their_max_inflight);
                if !r.open || !r.hello || r.inflight >= cap || !r.has(seq, idx) {
                    continue;
                }
                let mut eta = (r.inflight as f64 + 1.0) * CHUNK_SIZE as f64 / r.rate.max(1.0);
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
            let r = &self.peers[&peer];
            let room = self.cfg.max_inflight_per_peer.min(r.their_max_inflight) - r.inflight;
            let max = room.min(self.cfg.max_chunks_per_request as usize).max(1);
            // Extend to consecutive missing chunks this peer holds.
            let mut count = 1;
            while count < max
                && i + count < missing.len()
                && missing[i + count] == idx + count
                && r.has(seq, idx + count)
            {
                count += 1;
            }
            let req_id = self.next_req;
            self.next_req = self.next_req.wrapping_add(1).max(1);
            self.requests.insert(
                req_id,
                OurReq {
                    peer,
                    seq,
                    first: idx as u16,
                    count: count as u16,
                    received: 0,
                    last_progress: now,
                },
            );
            if let Some(r) = self.peers.get_mut(&peer) {
                if r.inflight == 0 {
                    r.last_progress = now;
                }
                r.inflight += count;
            }
            if let Some(s) = self.segments.get_mut(&seq) {
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

    /// Fetches the missing chunks of `seq` from the origin, by Range. When `late`, chunks still
    /// in flight from peers are fetched too (the deadline demands it).
    fn request_from_http(
        &mut self,
        now: Time,
        seq: u64,
        late: bool,
        only: std::ops::Range<usize>,
    ) -> bool {
        let Some(s) = self.segments.get(&seq) else {
            return false;
        };
        if now < s.http_retry_at {
            return false;
        }
        let need: Vec<bool> = s
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                only.contains(&i)
                    && c.data.is_none()
                    && c.http.is_none()
                    && (late || c.peer_req.is_none())
            })
            .collect();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, n) in need.iter().enumerate() {
            if *n {
                match runs.last_mut() {
                    Some((_, end)) if *end == i => *end = i + 1,
                    _ => runs.push((i, i + 1)),
                }
            }
        }
        if runs.len() > MAX_HTTP_RUNS {
            // Too fragmented: one range over the span (some chunks arrive twice).
            let first = runs[0].0;
            let last = runs[runs.len() - 1].1;
            runs = vec![(first, last)];
        }
        let len = s.m.len;
        let n = s.chunks.len();
        let url = s.url.clone();
        let issued = !runs.is_empty();
        for (a, b) in runs {
            let id = self.next_http;
            self.next_http += 1;
            let start = (a * CHUNK_SIZE) as u64;
            let end = ((b * CHUNK_SIZE) as u64).min(len);
            let range = if a == 0 && b == n {
                None
            } else {
                Some((start, end))
            };
            self.http.insert(
                id,
                HttpReq {
                    seq,
                    start,
                    pos: start,
                    end,
                    started: now,
                    buf: Vec::new(),
                    first_byte: false,
                },
            );
            if let Some(s) = self.segments.get_mut(&seq) {
                for c in &mut s.chunks[a..b] {
                    if c.data.is_none() {
                        c.http = Some(id);
                    }
                }
            }
            self.stats.http_requests += 1;
            self.out.push_back(Output::HttpStart {
                id,
                seq,
                url: url.clone(),
                range,
            });
        }
        issued
    }

    fn pump_uploads(&mut self, now: Time) {
        if let Some(cap) = self.cfg.upload_cap {
            let dt = now.since(self.upload_tokens_at).as_secs_f64();
            let burst = cap as f64 / 4.0 + CHUNK_SIZE as f64;
            self.upload_tokens = (self.upload_tokens + dt * cap as f64).min(burst);
        }
        self.upload_tokens_at = now;
        if self.serve_total == 0 {
            return;
        }
        // Round robin over requesters, one chunk each per turn, starting after the last served.
        let mut peers: Vec<PeerId> = self
            .peers
            .range(self.rr_last + 1..)
            .map(|(p, _)| *p)
            .collect();
        peers.extend(self.peers.range(..=self.rr_last).map(|(p, _)| *p));
        loop {
            let mut sent_any = false;
            for &p in &peers {
                let total = self.total_buffered();
                let Some(r) = self.peers.get_mut(&p) else {
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
                    .segments
                    .get(&seq)
                    .and_then(|s| s.chunks.get(index as usize))
                    .and_then(|c| c.data.clone());
                let Some(data) = data else {
                    // Evicted meanwhile: the rest of this request is absent.
                    let left = (sv.end - sv.next) as usize;
                    r.serve.pop_front();
                    self.serve_total -= left;
                    self.send(
                        p,
                        &Frame::Absent {
                            req_id,
                            reason: AbsentReason::NotFound,
                        },
                    );
                    sent_any = true;
                    continue;
                };
                if self.cfg.upload_cap.is_some() && self.upload_tokens < data.len() as f64 {
                    // Out of budget: poll_timeout wakes us when enough has refilled.
                    return;
                }
                sv.next += 1;
                if sv.next >= sv.end {
                    r.serve.pop_front();
                }
                if let Some(c) = self
                    .segments
                    .get_mut(&seq)
                    .and_then(|s| s.chunks.get_mut(index as usize))
                {
                    c.uploads = c.uploads.saturating_add(1);
                }
                if let Some(s) = self.segments.get_mut(&seq)
                    && s.reveal_at.is_some_and(|t| t > now)
                    && s.complete()
                    && s.chunks.iter().all(|c| !c.from_http || c.uploads > 0)
                {
                    // Every chunk is out once: super-seeding is over, announce everything.
                    s.reveal_at = Some(now);
                }
                self.serve_total -= 1;
                self.upload_tokens -= data.len() as f64;
                self.stats.uploaded_bytes += data.len() as u64;
                self.send(
                    p,
                    &Frame::Chunk {
                        req_id,
                        seq,
                        index,
                        data,
                    },
                );
                self.rr_last = p;
                sent_any = true;
            }
            if !sent_any || self.serve_total == 0 {
                break;
            }
        }
    }

    fn flush_have(&mut self) {
        // Segments whose super-seeding time is over are announced in full.
        let now = self.now;
        for (seq, s) in &mut self.segments {
            if s.reveal_at.is_some_and(|t| now >= t) {
                s.reveal_at = Some(Time(u64::MAX));
                if s.chunks
                    .iter()
                    .any(|c| c.data.is_some() && c.from_http && c.uploads == 0)
                {
                    self.dirty_have.insert(*seq);
                }
            }
        }
        if self.dirty_have.is_empty() {
            return;
        }
        let seqs: Vec<u64> = std::mem::take(&mut self.dirty_have).into_iter().collect();
        let open: Vec<PeerId> = self.open_peers().collect();
        for (rank, &p) in open.iter().enumerate() {
            let entries: Vec<HaveEntry> = seqs
                .iter()
                .filter_map(|seq| self.segments.get(seq))
                .filter(|s| s.have > 0)
                .map(|s| visible_entry(s, now, rank, open.len()))
                .collect();
            for chunk in entries.chunks(MAX_HAVE_ENTRIES) {
                self.send(
                    p,
                    &Frame::Have {
                        entries: chunk.to_vec(),
                    },
                );
            }
        }
    }
}

/// What we announce of `s` to the open peer of rank `rank` among `peers`: every chunk, except
/// that chunks fetched from the origin and not uploaded yet are shown to one peer each (chunk
/// `i` to rank `i % peers`) while super-seeding lasts. The seeder's uplink then sends each
/// chunk once, and its neighbours trade the rest among themselves.
fn visible_entry(s: &Segment, now: Time, rank: usize, peers: usize) -> HaveEntry {
    let seeding = s.reveal_at.is_some_and(|t| now < t);
    HaveEntry::from_fn(s.m.seq, s.chunks.len() as u16, |i| {
        let c = &s.chunks[i];
        c.data.is_some() && (!seeding || !c.from_http || i % peers.max(1) == rank)
    })
}

/// Chunks still to send in a requester's serve queue.
fn queued_chunks(q: &VecDeque<Serve>) -> usize {
    q.iter().map(|s| (s.end - s.next) as usize).sum()
}
