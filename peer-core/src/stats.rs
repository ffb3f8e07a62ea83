//! Counters of one peer (cumulative). Bounded: the per-peer map keeps at most
//! [`MAX_PEER_COUNTERS`] peers.

// A sorted vector, not std's B-tree: a fraction of the wasm bundle (crate::sorted).
use crate::sorted::SortedMap as BTreeMap;

use protocol::PeerId;
use serde::{Deserialize, Serialize};

/// Peers whose received bytes are counted separately; beyond it the peer with the fewest bytes
/// is dropped from the map (its bytes stay in `p2p_bytes`).
pub const MAX_PEER_COUNTERS: usize = 64;

/// Why a request went to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpCause {
    /// This member's slot makes it the first fetcher of (a part of) the segment.
    Designated,
    /// The designated seeder's part did not show up on any neighbour in time.
    Backup,
    /// The deadline left no time for peers.
    Late,
    /// No open peer and nobody holds it.
    Alone,
    /// This member's origin share (see [`crate::share`]), fetched when the segment appears.
    Share,
}

/// Traffic and health counters of one peer (cumulative).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes received from the origin (including any later discarded).
    pub http_bytes: u64,
    /// Verified bytes received from peers (duplicates included).
    pub p2p_bytes: u64,
    /// Bytes handed to the player that came from the origin / from peers.
    pub delivered_http_bytes: u64,
    pub delivered_p2p_bytes: u64,
    /// Chunk payload bytes sent to peers.
    pub uploaded_bytes: u64,
    /// Verified bytes received from each peer (the [`MAX_PEER_COUNTERS`] biggest senders).
    pub bytes_from_peer: BTreeMap<PeerId, u64>,
    pub segments_delivered: u64,
    /// Chunks that failed verification (from peers or the origin).
    pub integrity_failures: u32,
    pub peers_banned: u32,
    /// Stalls reported by the player.
    pub stalls: u32,
    pub http_requests: u64,
    pub http_failures: u64,
    pub peer_requests: u64,
    pub peer_request_timeouts: u64,
    /// Origin requests by cause (see [`HttpCause`]).
    pub http_designated: u64,
    pub http_backup: u64,
    pub http_late: u64,
    pub http_alone: u64,
    pub http_share: u64,
    /// Integrity manifest fetches.
    pub manifest_fetches: u64,
    /// Signaling connections lost (or closed on the server's `reconnect`).
    pub signal_reconnects: u32,
    /// Segments the origin re-published with other bytes (a manifest entry changed).
    pub republished: u64,
    /// Chunks from peers that matched a re-published segment's old entry, not its new one
    /// (dropped; the peer is not banned).
    pub skewed_chunks: u64,
    /// Verified bytes that arrived for a chunk already held (from the origin / from peers):
    /// bytes received twice.
    pub dup_http_bytes: u64,
    pub dup_p2p_bytes: u64,
    /// Our uplink as measured from the send buffers' drain, bits/s (0: not measured yet; see
    /// `upload::UplinkMeter`).
    pub uplink_bps: u64,
    /// Requests answered `Busy` because our uplink would not get them out within
    /// `Config::serve_horizon`.
    pub serve_busy: u64,
    /// Scheduling passes run (one per input that may change a decision; see
    /// `remotes::Remote::hurried`).
    pub passes: u64,
    /// Verified chunks from peers by how long after our request each arrived: within each of
    /// [`CHUNK_MS_BOUNDS`] in turn, then longer. Where a chunk's time goes on a scarce
    /// uplink (the holder's queue, the pair's transfer) shows here before it shows as origin
    /// bytes (issue 17: the lab's pages fetched 2–3× the simulator's deadline fetches).
    /// Chunks of a request we had cancelled that arrive and are kept anyway are not timed.
    #[serde(default)]
    pub chunk_ms: [u64; 6],
}

/// Upper bounds (ms) of [`Stats::chunk_ms`]'s buckets; the last bucket is everything longer.
pub const CHUNK_MS_BOUNDS: [u64; 5] = [250, 500, 1000, 2000, 4000];

impl Stats {
    /// Share of delivered bytes that came from peers.
    pub fn offload(&self) -> f64 {
        let total = self.delivered_http_bytes + self.delivered_p2p_bytes;
        if total == 0 {
            0.0
        } else {
            self.delivered_p2p_bytes as f64 / total as f64
        }
    }

    /// Adds `other`'s counters to these (a driver that replaced its core keeps the page's
    /// totals); per-peer counters stay bounded.
    pub fn absorb(&mut self, other: &Stats) {
        self.http_bytes += other.http_bytes;
        self.p2p_bytes += other.p2p_bytes;
        self.delivered_http_bytes += other.delivered_http_bytes;
        self.delivered_p2p_bytes += other.delivered_p2p_bytes;
        self.uploaded_bytes += other.uploaded_bytes;
        self.segments_delivered += other.segments_delivered;
        self.integrity_failures += other.integrity_failures;
        self.peers_banned += other.peers_banned;
        self.stalls += other.stalls;
        self.http_requests += other.http_requests;
        self.http_failures += other.http_failures;
        self.peer_requests += other.peer_requests;
        self.peer_request_timeouts += other.peer_request_timeouts;
        self.http_designated += other.http_designated;
        self.http_backup += other.http_backup;
        self.http_late += other.http_late;
        self.http_alone += other.http_alone;
        self.http_share += other.http_share;
        self.manifest_fetches += other.manifest_fetches;
        self.signal_reconnects += other.signal_reconnects;
        self.republished += other.republished;
        self.skewed_chunks += other.skewed_chunks;
        self.dup_http_bytes += other.dup_http_bytes;
        self.dup_p2p_bytes += other.dup_p2p_bytes;
        self.serve_busy += other.serve_busy;
        self.passes += other.passes;
        for (a, b) in self.chunk_ms.iter_mut().zip(other.chunk_ms) {
            *a += b;
        }
        for (p, b) in &other.bytes_from_peer {
            // Already counted in p2p_bytes above: only the per-peer split is merged.
            self.p2p_bytes -= b;
            self.count_from_peer(*p, *b);
        }
    }

    /// Counts a chunk that arrived `ms` after we asked for it (see [`Stats::chunk_ms`]).
    pub fn count_chunk_ms(&mut self, ms: u64) {
        let i = CHUNK_MS_BOUNDS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(CHUNK_MS_BOUNDS.len());
        self.chunk_ms[i] += 1;
    }

    /// `chunk_ms` as a line: `≤250 ms 61 %, ≤500 ms 20 %, …` (empty without chunks).
    pub fn chunk_ms_line(&self) -> String {
        let total: u64 = self.chunk_ms.iter().sum();
        if total == 0 {
            return String::new();
        }
        let mut parts: Vec<String> = CHUNK_MS_BOUNDS
            .iter()
            .zip(&self.chunk_ms)
            .map(|(b, n)| format!("≤{b} ms {:.0} %", 100.0 * *n as f64 / total as f64))
            .collect();
        parts.push(format!(
            ">{} ms {:.0} %",
            CHUNK_MS_BOUNDS[CHUNK_MS_BOUNDS.len() - 1],
            100.0 * self.chunk_ms[CHUNK_MS_BOUNDS.len()] as f64 / total as f64
        ));
        format!("{total} chunks: {}", parts.join(", "))
    }

    /// Origin requests made for `cause`.
    pub fn http_by_cause(&self, cause: HttpCause) -> u64 {
        match cause {
            HttpCause::Designated => self.http_designated,
            HttpCause::Backup => self.http_backup,
            HttpCause::Late => self.http_late,
            HttpCause::Alone => self.http_alone,
            HttpCause::Share => self.http_share,
        }
    }

    pub(crate) fn count_http(&mut self, cause: HttpCause) {
        match cause {
            HttpCause::Designated => self.http_designated += 1,
            HttpCause::Backup => self.http_backup += 1,
            HttpCause::Late => self.http_late += 1,
            HttpCause::Alone => self.http_alone += 1,
            HttpCause::Share => self.http_share += 1,
        }
    }

    pub(crate) fn count_from_peer(&mut self, peer: PeerId, len: u64) {
        self.p2p_bytes += len;
        *self.bytes_from_peer.entry(peer).or_insert(0) += len;
        if self.bytes_from_peer.len() > MAX_PEER_COUNTERS
            && let Some(smallest) = self
                .bytes_from_peer
                .iter()
                .filter(|(p, _)| **p != peer)
                .min_by_key(|(_, b)| **b)
                .map(|(p, _)| *p)
        {
            self.bytes_from_peer.remove(&smallest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn absorb_adds_counters_once() {
        let mut a = Stats::default();
        a.count_from_peer(1, 100);
        a.delivered_p2p_bytes = 100;
        let mut b = Stats::default();
        b.count_from_peer(1, 50);
        b.count_from_peer(2, 10);
        b.delivered_http_bytes = 30;
        a.absorb(&b);
        assert_eq!(a.p2p_bytes, 160);
        assert_eq!(a.bytes_from_peer.get(&1), Some(&150));
        assert_eq!(a.bytes_from_peer.get(&2), Some(&10));
        assert_eq!(a.delivered_http_bytes + a.delivered_p2p_bytes, 130);
    }
}
