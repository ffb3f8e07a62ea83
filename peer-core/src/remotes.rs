//! Peers: who we connect to, the WebRTC handshake through signaling (who offers, glare,
//! re-offers, pending candidates), the open grace and `Hello`, their `Have`s, and bans.
//!
//! One connection per peer id, numbered by a [`ConnId`] the drivers echo back; a new attempt to
//! the same peer gets a new number, so whatever still arrives for the old one is ignored. A
//! viewer seen under two ids (after a signaling restart gave everybody new ids) is recognised by
//! the `instance` in its `Hello`: the newer connection is closed on both sides.

use std::collections::VecDeque;

// Sorted vectors, not std's B-trees: a fraction of the wasm bundle (crate::sorted).
use crate::sorted::{SortedMap as BTreeMap, SortedSet as BTreeSet};

use bytes::Bytes;
use protocol::frame::MAX_HAVE_ENTRIES;
use protocol::signaling::{ClientMsg, SignalData};
use protocol::{AbsentReason, Frame, HaveEntry, PeerId};

use crate::store::visible_entry;
use crate::upload::{Serve, queued_chunks};
use crate::{BanReason, Config, ConnId, DisconnectReason, Event, Output, PeerCore, Time};

/// Peer `have` entries kept per remote (oldest sequence numbers dropped first).
pub const MAX_REMOTE_HAVE: usize = 1024;
/// Bitmap bytes of `have` entries kept per remote (oldest sequence numbers dropped first).
pub const MAX_REMOTE_HAVE_BYTES: usize = 128 * 1024;
/// Cancelled request ids remembered per remote, so late chunks are ignored rather than punished.
pub const MAX_CANCELLED: usize = 256;
/// Banned peer ids remembered (the oldest ban is forgotten first beyond this).
pub const MAX_BANNED: usize = 4096;
/// Candidates (introduced, not yet connected) kept.
pub const MAX_CANDIDATES: usize = 64;
/// Remote ICE candidates held while the remote description is not applied yet.
pub const MAX_PENDING_CANDIDATES: usize = 64;
/// After a peer timed out or refused, prefer others for this long.
pub(crate) const PEER_PENALTY: std::time::Duration = std::time::Duration::from_millis(2000);
/// Bytes of control frames a peer's send buffer may hold beyond its send window before the
/// peer counts as not reading its channel (see [`Remote::stuck`]). An honest peer's buffer
/// ends at most one chunk frame past the window, plus the few small frames sent before the
/// driver reports it again.
pub const CONTROL_BUDGET: usize = 64 * 1024;
/// A peer whose send buffer stays over its window this long without going down is not
/// reading its channel (see [`Remote::stuck`]).
pub const STUCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Frames a peer may send per second, sustained, whatever they are. An honest peer sends a few
/// hundred at most (the chunks we asked for, at our downlink's rate; a `Have` per chunk it
/// stores; a request per few chunks it needs); past the burst a peer is banned
/// ([`crate::BanReason::Flood`]).
pub const FLOOD_RATE: u64 = 2000;
/// Frames a peer may send at once above [`FLOOD_RATE`].
pub const FLOOD_BURST: u64 = 4000;
/// Microseconds of [`FLOOD_RATE`] one frame uses.
const FRAME_COST_US: u64 = 1_000_000 / FLOOD_RATE;
/// After a peer said busy, prefer others for this long.
const BUSY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug)]
pub struct Remote {
    pub conn: ConnId,
    /// We made the offer.
    pub offerer: bool,
    /// The remote offer/answer is applied: candidates go straight to the driver.
    pub remote_set: bool,
    pub pending: Vec<SignalData>,
    /// When the channel opened (for the open grace), if it has.
    pub opened: Option<Time>,
    /// The channel is open and the open grace is over: we have sent our `Hello`.
    pub open: bool,
    /// When the attempt started, or when the channel opened.
    pub since: Time,
    pub hello: bool,
    pub instance: Option<u64>,
    pub their_max_inflight: usize,
    pub have: Haves,
    pub inflight: usize,
    pub serve: VecDeque<Serve>,
    pub cancelled: VecDeque<(u32, u64, u16, u16)>,
    /// Its last `Status`: its uplink (bytes/s; 0: not told), the wait it announced for a new
    /// request (s), and when it came. A holder's expected delivery counts the wait down from
    /// then.
    pub their_uplink: f64,
    pub their_wait: f64,
    pub their_status_at: Time,
    /// We sent it our `Status` since our figures last moved.
    pub status_told: bool,
    /// Received bytes/s (EWMA), for picking the fastest holder.
    pub rate: f64,
    pub penalty_until: Time,
    /// It answered `Busy`: not asked until then.
    pub busy_until: Time,
    /// It answered `Refused`: it serves nobody (download only). Never asked again on this
    /// connection, and what it announces is ignored.
    pub refuses: bool,
    /// Bytes waiting in the channel's send buffer (driver-reported, plus what we sent since).
    pub buffered: usize,
    /// Since when `buffered` is over the send window with no report of it going down.
    pub full_since: Option<Time>,
    /// Frame rate limit (a virtual clock, GCRA): every frame moves it [`FLOOD_RATE`]'s share
    /// of a second ahead of the real one; more than [`FLOOD_BURST`] frames ahead is a flood.
    pub frames_due: Time,
    /// Last chunk from this peer, or when our first outstanding request to it was sent.
    pub last_progress: Time,
}

impl Remote {
    fn new(now: Time, conn: ConnId, offerer: bool) -> Self {
        Remote {
            conn,
            offerer,
            remote_set: false,
            pending: Vec::new(),
            opened: None,
            open: false,
            since: now,
            hello: false,
            instance: None,
            their_max_inflight: 8,
            have: Haves::default(),
            inflight: 0,
            serve: VecDeque::new(),
            cancelled: VecDeque::new(),
            rate: 256.0 * 1024.0,
            their_uplink: 0.0,
            their_wait: 0.0,
            their_status_at: now,
            status_told: false,
            penalty_until: Time::ZERO,
            busy_until: Time::ZERO,
            refuses: false,
            buffered: 0,
            full_since: None,
            frames_due: now,
            last_progress: now,
        }
    }
    pub fn has(&self, seq: u64, index: usize) -> bool {
        self.have.get(seq).is_some_and(|e| e.has(index))
    }

    /// The peer does not read its channel: its send buffer holds more than its window plus
    /// [`CONTROL_BUDGET`], or has stayed over its window for [`STUCK_TIMEOUT`] without going
    /// down. Chunk frames stop at the window, so what piles up beyond it are control frames
    /// (`Absent` answers to a request flood, `Have`s); an honest peer's buffer drains. Such a
    /// peer is disconnected: its buffer would otherwise count against the total send window
    /// for good and stop uploads to everybody.
    pub fn stuck(&self, now: Time, cfg: &Config) -> bool {
        self.buffered > cfg.send_window_per_peer.saturating_add(CONTROL_BUDGET)
            || self.full_since.is_some_and(|t| now >= t + STUCK_TIMEOUT)
    }

    /// One frame from the peer: `false` when it is over the frame rate limit.
    fn frame_in(&mut self, now: Time) -> bool {
        let due = self.frames_due.0.max(now.0) + FRAME_COST_US;
        if due > now.0 + FLOOD_BURST * FRAME_COST_US {
            return false;
        }
        self.frames_due = Time(due);
        true
    }

    /// The peer has used half its burst: it sends far above any honest rate, and its frames
    /// that change nothing run no scheduling pass (an honest peer never gets here, so its
    /// frames always do, as before the limit existed).
    pub fn hurried(&self, now: Time) -> bool {
        self.frames_due.0 > now.0 + FLOOD_BURST * FRAME_COST_US / 2
    }

    /// Our estimate of the send buffer grew by `n` bytes (a frame sent).
    pub(crate) fn sent(&mut self, now: Time, n: usize, window: usize) {
        self.buffered += n;
        if self.buffered > window && self.full_since.is_none() {
            self.full_since = Some(now);
        }
    }

    /// The driver reported the send buffer holds `amount` bytes.
    pub(crate) fn reported(&mut self, now: Time, amount: usize, window: usize) {
        if amount <= window {
            self.full_since = None;
        } else if amount < self.buffered || self.full_since.is_none() {
            // Going down (or newly over): it drains, count from now.
            self.full_since = Some(now);
        }
        self.buffered = amount;
    }
}

/// A remote's announcements, one entry per segment. Each bitmap is copied out of the frame it
/// came in: a slice would keep the whole frame (up to 64 KiB) alive for as long as the entry,
/// and the memory of a wasm module never shrinks. At most [`MAX_REMOTE_HAVE`] entries and
/// [`MAX_REMOTE_HAVE_BYTES`] bitmap bytes are kept; beyond either, the lowest sequence numbers
/// are dropped first.
#[derive(Debug, Default)]
pub struct Haves {
    entries: BTreeMap<u64, HaveEntry>,
    /// Bitmap bytes held.
    bytes: usize,
}

impl Haves {
    pub fn get(&self, seq: u64) -> Option<&HaveEntry> {
        self.entries.get(&seq)
    }
    pub fn contains(&self, seq: u64) -> bool {
        self.entries.contains_key(&seq)
    }
    pub fn values(&self) -> impl Iterator<Item = &HaveEntry> + '_ {
        self.entries.values()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Bitmap bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores `e` (its bitmap copied) in place of any entry for its segment; returns whether
    /// anything changed. Call [`Haves::trim`] after a frame's entries.
    fn insert(&mut self, e: HaveEntry) -> bool {
        if self.entries.get(&e.seq) == Some(&e) {
            return false;
        }
        let e = HaveEntry {
            seq: e.seq,
            chunk_count: e.chunk_count,
            bitmap: Bytes::copy_from_slice(&e.bitmap),
        };
        self.bytes += e.bitmap.len();
        if let Some(old) = self.entries.insert(e.seq, e) {
            self.bytes -= old.bitmap.len();
        }
        true
    }

    pub(crate) fn remove(&mut self, seq: u64) -> bool {
        match self.entries.remove(&seq) {
            Some(old) => {
                self.bytes -= old.bitmap.len();
                true
            }
            None => false,
        }
    }

    /// Drops the lowest sequence numbers while over a bound; returns whether it dropped any.
    fn trim(&mut self) -> bool {
        let mut dropped = false;
        while self.entries.len() > MAX_REMOTE_HAVE || self.bytes > MAX_REMOTE_HAVE_BYTES {
            let Some((_, old)) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= old.bitmap.len();
            dropped = true;
        }
        dropped
    }
}

#[derive(Debug, Default)]
pub struct Remotes {
    pub peers: BTreeMap<PeerId, Remote>,
    pub by_conn: BTreeMap<ConnId, PeerId>,
    pub next_conn: ConnId,
    pub candidates: VecDeque<PeerId>,
    pub banned: BTreeSet<PeerId>,
    pub banned_order: VecDeque<PeerId>,
    /// Ids closed as duplicates, with the id we keep for that viewer: not dialed again while
    /// that one is connected (at most [`MAX_CANDIDATES`], oldest forgotten first).
    pub duplicates: VecDeque<(PeerId, PeerId)>,
}

impl PeerCore {
    fn new_conn(&mut self, now: Time, peer: PeerId, offerer: bool) -> ConnId {
        self.remotes.next_conn += 1;
        let conn = self.remotes.next_conn;
        self.remotes
            .peers
            .insert(peer, Remote::new(now, conn, offerer));
        self.remotes.by_conn.insert(conn, peer);
        self.remotes.candidates.retain(|p| *p != peer);
        self.out.push_back(Output::RtcCreate {
            conn,
            peer,
            offerer,
        });
        conn
    }

    fn peer_of(&self, conn: ConnId) -> Option<PeerId> {
        self.remotes.by_conn.get(&conn).copied()
    }

    pub(crate) fn add_candidates(&mut self, peers: Vec<PeerId>) {
        for p in peers {
            if Some(p) != self.session.me
                && !self.remotes.banned.contains(&p)
                && !self.remotes.peers.contains_key(&p)
                && !self.remotes.candidates.contains(&p)
                && !self.is_duplicate(p)
            {
                self.remotes.candidates.push_back(p);
            }
        }
        while self.remotes.candidates.len() > MAX_CANDIDATES {
            self.remotes.candidates.pop_front();
        }
    }

    /// `p` was closed as a duplicate of a viewer we are still connected to.
    fn is_duplicate(&self, p: PeerId) -> bool {
        self.remotes
            .duplicates
            .iter()
            .any(|(d, kept)| *d == p && self.remotes.peers.contains_key(kept))
    }

    /// A handshake message relayed from `from`.
    pub(crate) fn on_remote_signal(&mut self, now: Time, from: PeerId, data: SignalData) {
        if !(self.cfg.p2p || self.cfg.upload) {
            return;
        }
        match data {
            SignalData::Offer { .. } => {
                if self.remotes.banned.contains(&from) || Some(from) == self.session.me {
                    return;
                }
                if let Some(r) = self.remotes.peers.get(&from) {
                    if r.offerer && !r.remote_set && self.session.me.is_some_and(|me| me < from) {
                        // Glare (both offered): the lower peer id's offer wins; the other side
                        // answers ours.
                        return;
                    }
                    // Glare lost, or a re-offer on a live connection: the old connection is
                    // gone for the core too (its Hello and Haves are sent again on the new one).
                    let reason = if r.offerer && !r.remote_set {
                        DisconnectReason::Left
                    } else {
                        DisconnectReason::Reoffered
                    };
                    self.drop_peer(now, from, reason);
                } else if self.remotes.peers.len() >= self.cfg.max_peers {
                    return;
                }
                let conn = self.new_conn(now, from, false);
                self.out.push_back(Output::RtcRemote { conn, data });
            }
            SignalData::Answer { .. } => {
                let Some(r) = self.remotes.peers.get(&from) else {
                    return;
                };
                if r.offerer && !r.remote_set {
                    let conn = r.conn;
                    self.out.push_back(Output::RtcRemote { conn, data });
                }
            }
            SignalData::Candidate { ref candidate, .. } => {
                if candidate.is_empty() {
                    return;
                }
                let Some(r) = self.remotes.peers.get_mut(&from) else {
                    return;
                };
                if r.remote_set {
                    let conn = r.conn;
                    self.out.push_back(Output::RtcRemote { conn, data });
                } else if r.pending.len() < MAX_PENDING_CANDIDATES {
                    r.pending.push(data);
                }
            }
        }
    }

    /// Our side produced an offer, an answer or a candidate: relay it.
    pub(crate) fn on_rtc_local(&mut self, conn: ConnId, data: SignalData) {
        let Some(to) = self.peer_of(conn) else { return };
        self.out.push_back(Output::SignalSend(ClientMsg::Signal {
            swarm: self.cfg.swarm.clone(),
            to,
            data,
        }));
    }

    pub(crate) fn on_rtc_remote_applied(&mut self, conn: ConnId) {
        let Some(peer) = self.peer_of(conn) else {
            return;
        };
        let Some(r) = self.remotes.peers.get_mut(&peer) else {
            return;
        };
        r.remote_set = true;
        for data in std::mem::take(&mut r.pending) {
            self.out.push_back(Output::RtcRemote { conn, data });
        }
    }

    pub(crate) fn on_rtc_open(&mut self, now: Time, conn: ConnId) {
        let Some(peer) = self.peer_of(conn) else {
            return;
        };
        if self.remotes.banned.contains(&peer) {
            return self.drop_peer(now, peer, DisconnectReason::Banned);
        }
        let Some(r) = self.remotes.peers.get_mut(&peer) else {
            return;
        };
        if r.opened.is_some() {
            return;
        }
        r.opened = Some(now);
        r.since = now;
        r.remote_set = true;
        if self.cfg.open_grace.is_zero() {
            self.release(now, peer);
        }
    }

    /// The channel may be used: our `Hello` and everything we hold, newest first.
    fn release(&mut self, now: Time, peer: PeerId) {
        let Some(r) = self.remotes.peers.get_mut(&peer) else {
            return;
        };
        if r.open {
            return;
        }
        r.open = true;
        let hello = Frame::Hello {
            swarm: self.cfg.swarm.clone(),
            max_inflight: self.cfg.serve_queue_per_peer.min(u16::MAX as usize) as u16,
            instance: Some(self.instance),
        };
        self.send(peer, &hello);
        let entries: Vec<HaveEntry> = self
            .store
            .segments
            .values()
            .rev()
            .filter(|s| s.have > 0)
            .take(MAX_HAVE_ENTRIES)
            .map(|s| visible_entry(s, now, 0, 1))
            .collect();
        // Nothing to announce when we serve nobody (see `announce`).
        if !entries.is_empty() && self.cfg.upload {
            self.send(peer, &Frame::Have { entries });
        }
        self.out
            .push_back(Output::Event(Event::PeerConnected { peer }));
    }

    /// A frame from the peer on `conn`. Returns whether a scheduling pass is due: always,
    /// except for a frame that changed nothing from a peer sending far above any honest rate
    /// (see [`Remote::hurried`]).
    pub(crate) fn on_rtc_message(&mut self, now: Time, conn: ConnId, data: Bytes) -> bool {
        let Some(peer) = self.peer_of(conn) else {
            return true;
        };
        let Some(r) = self.remotes.peers.get_mut(&peer) else {
            return true;
        };
        // Every frame counts, whatever the state of the connection: not open yet, in its open
        // grace, before `Hello`.
        if !r.frame_in(now) {
            self.ban(now, peer, BanReason::Flood);
            return true;
        }
        let calm = !r.hurried(now);
        let mut changed = false;
        if r.opened.is_none() {
            // A message proves the channel open: the driver's open event may come after the
            // other side's first frames (native: they travel on different tasks), and those
            // are its Hello and Haves, which must not be lost.
            r.opened = Some(now);
            r.since = now;
            r.remote_set = true;
            changed = true;
        }
        if !r.open {
            // The other side spoke: its channel is ready, the grace is over.
            self.release(now, peer);
            changed = true;
        }
        match Frame::decode_bytes(data) {
            Ok(frame) => self.on_frame(now, peer, frame) || changed || calm,
            Err(e) => {
                self.ban(now, peer, BanReason::Malformed(e.to_string()));
                true
            }
        }
    }

    pub(crate) fn on_rtc_buffered(&mut self, now: Time, conn: ConnId, amount: usize) {
        if let Some(peer) = self.peer_of(conn)
            && let Some(r) = self.remotes.peers.get_mut(&peer)
        {
            let drained = r.buffered.saturating_sub(amount);
            r.reported(now, amount, self.cfg.send_window_per_peer);
            let left = self.total_buffered();
            self.upload.meter.drained(now, drained, left);
            self.stats.uplink_bps = self.upload.meter.bps.map_or(0, |b| (b * 8.0) as u64);
        }
    }

    pub(crate) fn on_rtc_closed(&mut self, _now: Time, conn: ConnId) {
        let Some(peer) = self.peer_of(conn) else {
            return;
        };
        self.forget_peer(peer);
        self.out.push_back(Output::Event(Event::PeerDisconnected {
            peer,
            reason: DisconnectReason::Left,
        }));
    }

    /// Returns whether anything changed that a scheduling pass depends on.
    fn on_frame(&mut self, now: Time, peer: PeerId, frame: Frame) -> bool {
        match frame {
            Frame::Hello {
                swarm,
                max_inflight,
                instance,
            } => {
                if swarm != self.cfg.swarm {
                    self.drop_peer(now, peer, DisconnectReason::WrongSwarm);
                    return true;
                }
                let twin = instance.and_then(|_| {
                    self.remotes
                        .peers
                        .iter()
                        .find(|(p, r)| **p != peer && r.hello && r.instance == instance)
                        .map(|(p, _)| *p)
                });
                if let Some(kept) = twin {
                    // Already connected to this viewer under another id: this connection is
                    // the newer one on both sides, so both close it, and neither dials it
                    // again while the older one lasts (the server may list it again).
                    let dups = &mut self.remotes.duplicates;
                    dups.retain(|(d, _)| *d != peer);
                    dups.push_back((peer, kept));
                    if dups.len() > MAX_CANDIDATES {
                        dups.pop_front();
                    }
                    self.drop_peer(now, peer, DisconnectReason::Duplicate);
                    return true;
                }
                let Some(r) = self.remotes.peers.get_mut(&peer) else {
                    return false;
                };
                let max_inflight = (max_inflight as usize).max(1);
                let changed =
                    !r.hello || r.instance != instance || r.their_max_inflight != max_inflight;
                r.hello = true;
                r.instance = instance;
                r.their_max_inflight = max_inflight;
                changed
            }
            Frame::Have { entries } => {
                let Some(r) = self.remotes.peers.get_mut(&peer) else {
                    return false;
                };
                if r.refuses {
                    return false;
                }
                let mut changed = false;
                for e in entries {
                    // Entries that disagree with our manifest are ignored, not punished: the
                    // peer may have a newer manifest.
                    if let Some(s) = self.store.segments.get(&e.seq)
                        && s.chunks.len() != e.chunk_count as usize
                    {
                        continue;
                    }
                    changed |= r.have.insert(e);
                }
                r.have.trim() || changed
            }
            Frame::Drop { seqs } => {
                let Some(r) = self.remotes.peers.get_mut(&peer) else {
                    return false;
                };
                let mut changed = false;
                for s in seqs {
                    changed |= r.have.remove(s);
                }
                changed
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
                let Some(r) = self.remotes.peers.get_mut(&peer) else {
                    return false;
                };
                let before = queued_chunks(&r.serve);
                r.serve.retain(|s| s.req_id != req_id);
                let freed = before - queued_chunks(&r.serve);
                self.upload.serve_total -= freed;
                freed > 0
            }
            Frame::Status {
                uplink_kbps,
                wait_ms,
            } => {
                let Some(r) = self.remotes.peers.get_mut(&peer) else {
                    return false;
                };
                // Advisory only (a liar about its own uplink hurts only its own share of
                // requests): kept within what a residential link can mean.
                r.their_uplink = (uplink_kbps.min(10_000_000) as f64) * 1000.0 / 8.0;
                r.their_wait = wait_ms as f64 / 1000.0;
                r.their_status_at = now;
                true
            }
            Frame::Absent { req_id, reason } => {
                let Some(req) = self.sched.requests.get(&req_id) else {
                    return false;
                };
                if req.peer != peer {
                    self.ban(now, peer, BanReason::Unsolicited);
                    return true;
                }
                let seq = req.seq;
                self.release_request(req_id);
                if let Some(r) = self.remotes.peers.get_mut(&peer) {
                    match reason {
                        AbsentReason::NotFound => {
                            r.have.remove(seq);
                        }
                        // Not asked again until the backoff is over, even as the only
                        // holder: asked at once it answers `Busy` again, at the round-trip
                        // rate (measured in bench lab: ~200 `Busy` a second per page).
                        AbsentReason::Busy => r.busy_until = now + BUSY_BACKOFF,
                        // A penalty alone still left it the pick when it was the only
                        // holder: asked again at once, refused again, at the round-trip rate.
                        AbsentReason::Refused => {
                            r.refuses = true;
                            r.have = Haves::default();
                        }
                    }
                }
                true
            }
        }
    }

    pub(crate) fn ban(&mut self, now: Time, peer: PeerId, reason: BanReason) {
        if self.remotes.banned.insert(peer) {
            self.remotes.banned_order.push_back(peer);
            if self.remotes.banned_order.len() > MAX_BANNED
                && let Some(old) = self.remotes.banned_order.pop_front()
            {
                self.remotes.banned.remove(&old);
            }
            self.stats.peers_banned += 1;
        }
        self.out
            .push_back(Output::Event(Event::PeerBanned { peer, reason }));
        self.drop_peer(now, peer, DisconnectReason::Banned);
    }

    /// Closes the connection to `peer` and forgets it.
    pub(crate) fn drop_peer(&mut self, _now: Time, peer: PeerId, reason: DisconnectReason) {
        let Some(conn) = self.remotes.peers.get(&peer).map(|r| r.conn) else {
            return;
        };
        self.forget_peer(peer);
        self.out.push_back(Output::RtcClose { conn });
        self.out
            .push_back(Output::Event(Event::PeerDisconnected { peer, reason }));
    }

    /// Removes all state about `peer`; its outstanding chunks become missing again.
    pub(crate) fn forget_peer(&mut self, peer: PeerId) {
        if let Some(r) = self.remotes.peers.remove(&peer) {
            self.upload.serve_total -= queued_chunks(&r.serve);
            self.remotes.by_conn.remove(&r.conn);
        }
        let ids: Vec<u32> = self
            .sched
            .requests
            .iter()
            .filter(|(_, r)| r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.release_request(id);
        }
    }

    /// Drops attempts that did not open and say `Hello` in time, opens new ones up to
    /// `max_peers`, and asks for more members when short.
    pub(crate) fn manage_peers(&mut self, now: Time) {
        let timed_out: Vec<PeerId> = self
            .remotes
            .peers
            .iter()
            // Not open, or open but silent (no `Hello`): a channel that never speaks would
            // hold a connection slot for good. `since` restarts when the channel opens.
            .filter(|(_, r)| !r.hello && now >= r.since + self.cfg.connect_timeout)
            .map(|(p, _)| *p)
            // A channel that does not drain (see `Remote::stuck`).
            .chain(
                self.remotes
                    .peers
                    .iter()
                    .filter(|(_, r)| r.stuck(now, &self.cfg))
                    .map(|(p, _)| *p),
            )
            .collect();
        for p in timed_out {
            self.drop_peer(now, p, DisconnectReason::Timeout);
        }
        if !(self.cfg.p2p || self.cfg.upload) || !self.session.joined {
            return;
        }
        while self.remotes.peers.len() < self.cfg.max_peers {
            let Some(p) = self.remotes.candidates.pop_front() else {
                break;
            };
            if self.remotes.banned.contains(&p) || self.remotes.peers.contains_key(&p) {
                continue;
            }
            self.new_conn(now, p, true);
        }
        self.want_more_peers(now);
    }

    /// Open graces that ended.
    pub(crate) fn remote_timers(&mut self, now: Time) {
        let grace = self.cfg.open_grace;
        let due: Vec<PeerId> = self
            .remotes
            .peers
            .iter()
            .filter(|(_, r)| !r.open && r.opened.is_some_and(|t| now >= t + grace))
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.release(now, p);
        }
    }

    pub(crate) fn remote_timeouts(&self, at: &mut impl FnMut(Time)) {
        for r in self.remotes.peers.values() {
            if !r.hello {
                at(r.since + self.cfg.connect_timeout);
            }
            if !r.open
                && let Some(t) = r.opened
            {
                at(t + self.cfg.open_grace);
            }
            if r.inflight > 0 {
                at(r.last_progress + self.cfg.peer_stall_timeout);
            }
        }
    }

    pub(crate) fn total_buffered(&self) -> usize {
        self.remotes.peers.values().map(|r| r.buffered).sum()
    }
}
