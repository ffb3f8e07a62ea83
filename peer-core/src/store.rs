//! Segments: integrity data, chunks held, the byte budget (LRU eviction) and what we announce.

// Sorted vectors, not std's B-trees: a fraction of the wasm bundle (crate::sorted).
use crate::sorted::{SortedMap as BTreeMap, SortedSet as BTreeSet};

use std::time::Duration;

use bytes::Bytes;
use protocol::frame::MAX_HAVE_ENTRIES;
use protocol::{Frame, HaveEntry, PeerId, SegmentManifest};

use crate::http::Http;
use crate::scheduler::Scheduler;
use crate::{Output, PeerCore, Time};

/// Player URLs remembered per segment (answers go to each).
pub const MAX_WANT_URLS: usize = 4;

#[derive(Debug, Default, Clone)]
pub struct ChunkSt {
    pub data: Option<Bytes>,
    pub from_http: bool,
    /// Times we uploaded this chunk (saturating).
    pub uploads: u8,
    pub peer_req: Option<u32>,
    pub http: Option<u64>,
}

#[derive(Debug)]
pub struct Segment {
    pub m: SegmentManifest,
    /// Where the origin serves it: the player's URL once it asked (signed URLs keep their
    /// query), the manifest's before.
    pub url: String,
    /// The URL the manifest lists it under (resolved against the manifest's URL): a want for
    /// this `seq` under another path is for another playlist.
    pub listed_url: String,
    pub chunks: Vec<ChunkSt>,
    pub have: usize,
    pub discovered: Time,
    pub want: Option<Time>,
    /// The URLs the player asked for it under (answered on delivery).
    pub want_urls: Vec<String>,
    /// Fetch ahead of the player (live edge): scheduled like a want, not handed over.
    pub prefetch: Option<Time>,
    pub delivered: bool,
    pub last_used: Time,
    pub http_retry_at: Time,
    pub stored: usize,
    /// Super-seeding: chunks we fetched from the origin are announced to one neighbour each
    /// until uploaded once, or until this time (then to everybody).
    pub reveal_at: Option<Time>,
    /// We fetch this segment from the origin as its (designated or backup) seeder.
    pub seeding: bool,
    /// The integrity data `m` replaced when the origin re-published the segment (see
    /// [`PeerCore::add_segment`]): a peer that fetched the old manifest may still serve the old
    /// bytes, honestly.
    pub prev: Option<SegmentManifest>,
    /// Our origin share of it was decided (fetched, or none: see [`crate::share`]), and
    /// whether its outcome was counted.
    pub share_decided: bool,
    pub share_judged: bool,
    /// Chunks fetched from the origin after the deadline cutoff.
    pub late_chunks: u16,
}

impl Segment {
    pub fn complete(&self) -> bool {
        self.have == self.chunks.len()
    }
    pub fn busy(&self) -> bool {
        self.chunks
            .iter()
            .any(|c| c.peer_req.is_some() || c.http.is_some())
    }
}

#[derive(Debug, Default)]
pub struct Store {
    pub segments: BTreeMap<u64, Segment>,
    /// Bytes of chunk data held.
    pub bytes: usize,
    /// Segments whose availability changed since the last `Have`.
    pub dirty_have: BTreeSet<u64>,
    /// When the last `Have` went out (see [`HAVE_EVERY`]).
    pub have_sent_at: Time,
}

/// `Have` goes out at most this often: what changed meanwhile waits and goes in one frame per
/// peer. Without it every input that stored a chunk (each piece of an HTTP body, each chunk from a
/// peer) sent a frame to every open peer, and `RTCDataChannel.send` was the page's costliest
/// native call with `fetch` (`cargo xtask bench browser-cpu --pages 4 --profile 30`: `send`
/// 208 → 102 ms of self time in 30 s of the profiled page; CPU per page-minute did not move
/// beyond noise). The first change after a quiet spell goes at once. Simulator (20 viewers,
/// 4 Mbit/s, 80–300 ms, 3 % loss), of the bound without → with: seed 1 0.795 → 0.783, seed 2
/// 0.749 → 0.756, seed 3 0.706 → 0.727.
pub const HAVE_EVERY: Duration = Duration::from_millis(100);

/// [`HAVE_EVERY`] while requests wait for our uplink: each `Have` is a packet of its own on the
/// wire, answered by a SACK on the receiver's uplink (`sim::wire`), and at 100 ms and 16 peers
/// that was ~7 % of a 1 Mbit/s uplink taken from chunks. With an idle uplink the packets cost
/// nothing that was wanted, and announcing late costs every relay hop: 250 ms always lost
/// 0.02–0.04 of the bound at 4 Mbit/s and 80–300 ms RTT. `cargo xtask sim-grid --viewers 20
/// --seconds 300 --seed 1` with the wire's costs, of the bound, 100 ms always → this rule (with
/// `Status` every 1 s): up 1 Mbit/s 0.568–0.635 → 0.602–0.671, 1.5 Mbit/s 0.617–0.693 →
/// 0.648–0.725, 2 Mbit/s 0.663–0.750 → 0.681–0.764, 4 Mbit/s 0.874–0.985 → 0.866–0.985.
pub const HAVE_EVERY_BUSY: Duration = Duration::from_millis(250);

impl Store {
    /// The segment listed under `url` (the manifest's or the player's); failing an exact
    /// match, the one whose URL is the same without its query (a signed player URL for the
    /// manifest's plain one).
    pub fn find_url(&self, url: &str) -> Option<u64> {
        let exact = self
            .segments
            .iter()
            .rev()
            .find(|(_, s)| s.url == url || s.want_urls.iter().any(|u| u == url));
        let path = crate::manifest::url_path;
        exact
            .or_else(|| {
                let p = path(url);
                self.segments
                    .iter()
                    .rev()
                    .find(|(_, s)| path(&s.listed_url) == p)
            })
            .map(|(seq, _)| *seq)
    }

    pub(crate) fn check(&self, cap: usize, sched: &Scheduler, http: &Http) -> Result<(), String> {
        let stored: usize = self
            .segments
            .values()
            .flat_map(|s| s.chunks.iter())
            .filter_map(|c| c.data.as_ref().map(|d| d.len()))
            .sum();
        if stored != self.bytes {
            return Err(format!(
                "store bytes {} != stored chunk bytes {stored}",
                self.bytes
            ));
        }
        let largest = self
            .segments
            .values()
            .map(|s| s.m.len as usize)
            .max()
            .unwrap_or(0);
        if self.bytes > cap.max(largest) {
            return Err(format!("store {} over cap {cap}", self.bytes));
        }
        for (seq, s) in &self.segments {
            let have = s.chunks.iter().filter(|c| c.data.is_some()).count();
            if have != s.have {
                return Err(format!("segment {seq}: have {} != {have}", s.have));
            }
            for c in &s.chunks {
                if let Some(id) = c.peer_req
                    && !sched.requests.contains_key(&id)
                {
                    return Err(format!("segment {seq}: chunk points to gone request {id}"));
                }
                if let Some(id) = c.http
                    && !http.reqs.contains_key(&id)
                {
                    return Err(format!(
                        "segment {seq}: chunk points to gone HTTP request {id}"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl PeerCore {
    /// Integrity data (and URL) of a segment; returns whether anything changed. Segments are
    /// identified by media sequence number. When a known number comes with other integrity data
    /// (the origin re-published it: a skewed live window, a restarted packager), the new entry
    /// wins: see [`PeerCore::republish`].
    pub(crate) fn add_segment(&mut self, now: Time, m: SegmentManifest, url: String) -> bool {
        if let Some(s) = self.store.segments.get(&m.seq) {
            let same = s.m.len == m.len && s.m.sha256 == m.sha256 && s.m.chunks == m.chunks;
            if !same {
                self.republish(m, url);
            }
            return !same;
        }
        let n = m.chunk_count();
        let seq = m.seq;
        self.store.segments.insert(
            seq,
            Segment {
                m,
                listed_url: url.clone(),
                url,
                chunks: vec![ChunkSt::default(); n],
                have: 0,
                discovered: now,
                want: None,
                want_urls: Vec::new(),
                prefetch: None,
                delivered: false,
                last_used: now,
                http_retry_at: Time::ZERO,
                stored: 0,
                reveal_at: None,
                seeding: false,
                prev: None,
                share_decided: false,
                share_judged: false,
                late_chunks: 0,
            },
        );
        self.prune_known();
        true
    }

    /// The origin re-published segment `m.seq` with other bytes: what we hold or fetch of the
    /// old version is dropped (peers are told with `Drop`; requests are cancelled), the want
    /// stays, and the old entry is kept in `prev`. A chunk a peer sends that fails the new
    /// entry but matches the old one is skew, not corruption (see `on_chunk`).
    fn republish(&mut self, m: SegmentManifest, url: String) {
        let seq = m.seq;
        let reqs: Vec<u32> = self
            .sched
            .requests
            .iter()
            .filter(|(_, r)| r.seq == seq)
            .map(|(id, _)| *id)
            .collect();
        for id in reqs {
            self.cancel_request(id);
        }
        self.cancel_http(seq);
        let held = self.store.segments.get(&seq).is_some_and(|s| s.stored > 0);
        self.drop_segment_data(seq);
        if held {
            let frame = Frame::Drop { seqs: vec![seq] };
            let open: Vec<PeerId> = self.open_peers().collect();
            for p in open {
                self.send(p, &frame);
            }
        }
        let n = m.chunk_count();
        // Announcements for another chunk count describe the old version.
        for r in self.remotes.peers.values_mut() {
            if r.have.get(seq).is_some_and(|e| e.chunk_count as usize != n) {
                r.have.remove(seq);
            }
        }
        let Some(s) = self.store.segments.get_mut(&seq) else {
            return;
        };
        if s.want_urls.is_empty() {
            s.url = url;
        }
        s.chunks = vec![ChunkSt::default(); n];
        s.reveal_at = None;
        s.seeding = false;
        s.http_retry_at = Time::ZERO;
        s.prev = Some(std::mem::replace(&mut s.m, m));
        self.stats.republished += 1;
    }

    pub(crate) fn store_chunk(
        &mut self,
        now: Time,
        seq: u64,
        idx: usize,
        data: Bytes,
        from_http: bool,
    ) {
        let Some(s) = self.store.segments.get_mut(&seq) else {
            return;
        };
        let Some(c) = s.chunks.get_mut(idx) else {
            return;
        };
        if c.data.is_some() {
            if from_http {
                self.stats.dup_http_bytes += data.len() as u64;
            } else {
                self.stats.dup_p2p_bytes += data.len() as u64;
            }
            return;
        }
        self.store.bytes += data.len();
        s.stored += data.len();
        c.data = Some(data);
        c.from_http = from_http;
        if from_http && s.seeding && s.reveal_at.is_none() {
            s.reveal_at = Some(now + self.cfg.super_seed_time);
        }
        s.have += 1;
        s.last_used = now;
        let complete = s.complete();
        self.store.dirty_have.insert(seq);
        if complete {
            self.judge_share(seq);
        }
        self.evict(seq);
    }

    /// Keeps the store under its cap: least recently used first, segments the player still
    /// waits for last, never the one being written.
    fn evict(&mut self, keep: u64) {
        while self.store.bytes > self.cfg.store_cap {
            let victim = self
                .store
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

    pub(crate) fn drop_segment_data(&mut self, seq: u64) {
        let Some(s) = self.store.segments.get_mut(&seq) else {
            return;
        };
        for c in &mut s.chunks {
            c.data = None;
        }
        self.store.bytes -= s.stored;
        s.stored = 0;
        s.prefetch = None;
        s.have = 0;
        self.store.dirty_have.remove(&seq);
        // Requests for it are answered NotFound from now on.
        for r in self.remotes.peers.values_mut() {
            let before = crate::upload::queued_chunks(&r.serve);
            r.serve.retain(|x| x.seq != seq);
            self.upload.serve_total -= before - crate::upload::queued_chunks(&r.serve);
        }
    }

    /// Keeps at most `max_known_segments` segments: oldest first among those nobody waits for.
    fn prune_known(&mut self) {
        while self.store.segments.len() > self.cfg.max_known_segments {
            let victim = self
                .store
                .segments
                .iter()
                .find(|(_, s)| !s.busy() && (s.want.is_none() || s.delivered))
                .map(|(seq, _)| *seq);
            let Some(seq) = victim else { break };
            self.drop_segment_data(seq);
            self.store.segments.remove(&seq);
        }
    }

    /// Hands every complete wanted segment to the player.
    pub(crate) fn deliver(&mut self, now: Time) {
        let ready: Vec<u64> = self
            .store
            .segments
            .iter()
            .filter(|(_, s)| s.want.is_some() && !s.delivered && s.complete())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in ready {
            let Some(s) = self.store.segments.get_mut(&seq) else {
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
            let urls = std::mem::take(&mut s.want_urls);
            self.stats.delivered_http_bytes += from_http;
            self.stats.delivered_p2p_bytes += from_p2p;
            self.stats.segments_delivered += 1;
            let data = Bytes::from(buf);
            for url in urls {
                self.out.push_back(Output::SegmentReady {
                    url,
                    seq,
                    data: data.clone(),
                    http_bytes: from_http,
                    p2p_bytes: from_p2p,
                });
            }
        }
    }

    /// How long changes wait to go out in one `Have` ([`HAVE_EVERY`], [`HAVE_EVERY_BUSY`]).
    pub(crate) fn have_every(&self) -> Duration {
        if self.upload.serve_total > 0 {
            HAVE_EVERY_BUSY
        } else {
            HAVE_EVERY
        }
    }

    /// Announces what changed (and segments whose super-seeding time is over, in full).
    pub(crate) fn flush_have(&mut self) {
        let now = self.now;
        for (seq, s) in &mut self.store.segments {
            if s.reveal_at.is_some_and(|t| now >= t) {
                s.reveal_at = Some(Time(u64::MAX));
                if s.chunks
                    .iter()
                    .any(|c| c.data.is_some() && c.from_http && c.uploads == 0)
                {
                    self.store.dirty_have.insert(*seq);
                }
            }
        }
        // A peer that serves nobody announces nothing: every request for what it announced
        // would be refused, and its neighbours would ask again after each refusal (two
        // download-only pages in a browser swarm banned their neighbours for the flood).
        if self.store.dirty_have.is_empty() || !self.cfg.upload {
            self.store.dirty_have.clear();
            return;
        }
        if now < self.store.have_sent_at + self.have_every() {
            return;
        }
        self.store.have_sent_at = now;
        let seqs: Vec<u64> = std::mem::take(&mut self.store.dirty_have)
            .into_iter()
            .collect();
        let open: Vec<PeerId> = self.open_peers().collect();
        for (rank, &p) in open.iter().enumerate() {
            let entries: Vec<HaveEntry> = seqs
                .iter()
                .filter_map(|seq| self.store.segments.get(seq))
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
pub(crate) fn visible_entry(s: &Segment, now: Time, rank: usize, peers: usize) -> HaveEntry {
    let seeding = s.reveal_at.is_some_and(|t| now < t);
    HaveEntry::from_fn(s.m.seq, s.chunks.len() as u16, |i| {
        let c = &s.chunks[i];
        c.data.is_some() && (!seeding || !c.from_http || i % peers.max(1) == rank)
    })
}
