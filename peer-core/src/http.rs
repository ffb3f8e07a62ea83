//! Origin requests: Range requests over missing chunks, bodies verified chunk by chunk as they
//! stream in, and the origin's measured first-byte time and throughput (for deadline planning).

// A sorted vector, not std's B-tree: a fraction of the wasm bundle (crate::sorted).
use crate::sorted::SortedMap as BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use protocol::CHUNK_SIZE;

use crate::stats::HttpCause;
use crate::{Event, Output, PeerCore, Time};

/// HTTP Range requests issued for one segment at once.
pub const MAX_HTTP_RUNS: usize = 8;

/// A peer request past the origin cutoff that sent nothing for this long is no longer trusted
/// to make the deadline: the origin fetches its chunks (the scheduler wakes up this often
/// while such requests run).
pub const ON_TRACK_SILENCE: Duration = Duration::from_millis(300);
/// A failed request is retried after this.
const HTTP_RETRY_BACKOFF: Duration = Duration::from_millis(300);

#[derive(Debug)]
pub struct HttpReq {
    pub seq: u64,
    /// Absolute offsets of the first and the next expected byte, and the end.
    pub start: u64,
    pub pos: u64,
    pub end: u64,
    pub started: Time,
    /// Bytes of the chunk currently arriving.
    pub buf: Vec<u8>,
    pub first_byte: bool,
}

#[derive(Debug)]
pub struct Http {
    pub reqs: BTreeMap<u64, HttpReq>,
    pub next: u64,
    /// Origin download rate (bytes/s, EWMA) and first-byte time.
    pub rate: f64,
    pub rtt: Duration,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            reqs: BTreeMap::new(),
            next: 1,
            rate: 1_000_000.0,
            rtt: Duration::from_millis(200),
        }
    }
}

impl Http {
    pub fn ids(&self) -> Vec<u64> {
        self.reqs.keys().copied().collect()
    }
}

impl PeerCore {
    pub(crate) fn on_http_data(&mut self, now: Time, id: u64, data: &[u8]) {
        if !self.http.reqs.contains_key(&id) {
            // Cancelled or finished: the driver was told to stop it; nothing to count.
            return;
        }
        self.stats.http_bytes += data.len() as u64;
        if let Err(reason) = self.http_data(now, id, data) {
            self.http_fail(now, id, reason, true);
        }
    }

    /// A body shorter than asked is a failure (never kept).
    pub(crate) fn on_http_done(&mut self, now: Time, id: u64) {
        let Some(h) = self.http.reqs.get(&id) else {
            return;
        };
        if h.pos != h.end {
            return self.http_fail(now, id, "truncated body", false);
        }
        if let Some(h) = self.http.reqs.remove(&id) {
            // Transfer rate after the first byte; coarse but robust: whole-request rate, EWMA.
            let took = now.since(h.started + self.http.rtt).as_secs_f64().max(0.01);
            let bytes = (h.end - h.start) as f64;
            self.http.rate = 0.7 * self.http.rate + 0.3 * (bytes / took).max(50_000.0);
        }
    }

    pub(crate) fn on_http_failed(&mut self, now: Time, id: u64) {
        self.http_fail(now, id, "request failed", false);
    }

    fn http_data(&mut self, now: Time, id: u64, mut data: &[u8]) -> Result<(), &'static str> {
        let Some(h) = self.http.reqs.get_mut(&id) else {
            return Ok(());
        };
        if !h.first_byte && !data.is_empty() {
            h.first_byte = true;
            let rtt = now.since(h.started);
            self.http.rtt = (self.http.rtt * 7 + rtt * 3) / 10;
        }
        let seq = h.seq;
        let Some(s) = self.store.segments.get(&seq) else {
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
                .store
                .segments
                .get_mut(&seq)
                .and_then(|s| s.chunks.get_mut(idx))
                && c.http == Some(id)
            {
                c.http = None;
            }
            if self.cfg.chunk_events {
                self.out.push_back(Output::Event(Event::ChunkReceived {
                    peer: None,
                    seq,
                    chunk: idx,
                    bytes: chunk.len(),
                }));
            }
            self.store_chunk(now, seq, idx, chunk, true);
        }
        Ok(())
    }

    fn http_fail(&mut self, now: Time, id: u64, _reason: &'static str, cancel: bool) {
        let Some(h) = self.http.reqs.remove(&id) else {
            return;
        };
        self.stats.http_failures += 1;
        if cancel {
            self.out.push_back(Output::HttpCancel { id });
        }
        if let Some(s) = self.store.segments.get_mut(&h.seq) {
            for c in &mut s.chunks {
                if c.http == Some(id) {
                    c.http = None;
                }
            }
            s.http_retry_at = now + HTTP_RETRY_BACKOFF;
        }
    }

    /// Aborts every origin request for `seq` (nothing is retried for it meanwhile).
    pub(crate) fn cancel_http(&mut self, seq: u64) {
        let ids: Vec<u64> = self
            .http
            .reqs
            .iter()
            .filter(|(_, h)| h.seq == seq)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.http.reqs.remove(&id);
            self.out.push_back(Output::HttpCancel { id });
        }
        if let Some(s) = self.store.segments.get_mut(&seq) {
            for c in &mut s.chunks {
                c.http = None;
            }
        }
    }

    /// Whether our peer request `id` will deliver its remaining chunks before `deadline`: it
    /// is flowing (a chunk within [`ON_TRACK_SILENCE`]) and its peer's rate covers the rest
    /// with the same 1.5× margin and `http_margin` the origin cutoff takes.
    fn on_track(&self, now: Time, id: u32, deadline: Option<Time>) -> bool {
        let (Some(req), Some(deadline)) = (self.sched.requests.get(&id), deadline) else {
            return false;
        };
        let Some(r) = self.remotes.peers.get(&req.peer) else {
            return false;
        };
        if req.received == 0 || now.since(req.last_progress) > ON_TRACK_SILENCE {
            return false;
        }
        let eta = req.remaining() as f64 * CHUNK_SIZE as f64 / r.rate.max(1.0);
        now + Duration::from_secs_f64(eta * 1.5) + self.cfg.http_margin < deadline
    }

    /// Fetches the missing chunks of `seq` in `only` from the origin, by Range. When `late`,
    /// chunks still requested from peers are fetched too (the deadline demands it), except
    /// those of requests that are on track ([`Self::on_track`]): fetching them as well was the
    /// main source of bytes received twice on scarce uplinks. Returns whether a request went
    /// out.
    pub(crate) fn request_from_http(
        &mut self,
        now: Time,
        seq: u64,
        late: bool,
        only: std::ops::Range<usize>,
        cause: HttpCause,
    ) -> bool {
        let Some(s) = self.store.segments.get(&seq) else {
            return false;
        };
        if now < s.http_retry_at {
            return false;
        }
        let deadline = s.want.or(s.prefetch);
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, c) in s.chunks.iter().enumerate() {
            let need = only.contains(&i)
                && c.data.is_none()
                && c.http.is_none()
                && c.peer_req
                    .is_none_or(|id| late && !self.on_track(now, id, deadline));
            if need {
                match runs.last_mut() {
                    Some((_, end)) if *end == i => *end = i + 1,
                    _ => runs.push((i, i + 1)),
                }
            }
        }
        // Too fragmented: merge the runs separated by the smallest gaps until few enough are
        // left (each gap's chunks, held already, arrive twice: the fewest possible). It used
        // to be one range over the whole span, and most late fetches then re-downloaded much
        // of what peers had delivered.
        while runs.len() > MAX_HTTP_RUNS {
            let Some(i) = (0..runs.len() - 1).min_by_key(|&i| runs[i + 1].0 - runs[i].1) else {
                break;
            };
            runs[i].1 = runs[i + 1].1;
            runs.remove(i + 1);
        }
        let len = s.m.len;
        let n = s.chunks.len();
        let url = s.url.clone();
        let issued = !runs.is_empty();
        for (a, b) in runs {
            let id = self.http.next;
            self.http.next += 1;
            let start = (a * CHUNK_SIZE) as u64;
            let end = ((b * CHUNK_SIZE) as u64).min(len);
            let range = if a == 0 && b == n {
                None
            } else {
                Some((start, end))
            };
            self.http.reqs.insert(
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
            if let Some(s) = self.store.segments.get_mut(&seq) {
                for c in &mut s.chunks[a..b] {
                    if c.data.is_none() {
                        c.http = Some(id);
                        if late {
                            s.late_chunks = s.late_chunks.saturating_add(1);
                        }
                    }
                }
            }
            self.stats.http_requests += 1;
            self.out.push_back(Output::HttpStart {
                id,
                url: url.clone(),
                range,
            });
        }
        if issued {
            self.stats.count_http(cause);
            self.cancel_covered_requests(seq);
        }
        issued
    }

    /// Cancels our peer requests for `seq` whose every missing chunk we now hold or the origin
    /// is now fetching (a late fetch takes chunks still requested from peers; a late chunk
    /// came from another peer): the uploader drops them from its queue and serves someone
    /// else, instead of sending bytes we would receive twice.
    pub(crate) fn cancel_covered_requests(&mut self, seq: u64) {
        let Some(s) = self.store.segments.get(&seq) else {
            return;
        };
        let covered: Vec<u32> = self
            .sched
            .requests
            .iter()
            .filter(|(_, r)| r.seq == seq)
            .filter(|(_, r)| {
                (0..r.count).all(|k| {
                    r.received & (1u64 << k) != 0
                        || s.chunks
                            .get(r.first as usize + k as usize)
                            .is_none_or(|c| c.data.is_some() || c.http.is_some())
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in covered {
            self.cancel_request(id);
        }
    }
}
