//! Counters of one peer (cumulative). Bounded: the per-peer map keeps at most
//! [`MAX_PEER_COUNTERS`] peers.

use std::collections::BTreeMap;

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
    /// Integrity manifest fetches.
    pub manifest_fetches: u64,
    /// Signaling connections lost (or closed on the server's `reconnect`).
    pub signal_reconnects: u32,
}

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

    /// Origin requests made for `cause`.
    pub fn http_by_cause(&self, cause: HttpCause) -> u64 {
        match cause {
            HttpCause::Designated => self.http_designated,
            HttpCause::Backup => self.http_backup,
            HttpCause::Late => self.http_late,
            HttpCause::Alone => self.http_alone,
        }
    }

    pub(crate) fn count_http(&mut self, cause: HttpCause) {
        match cause {
            HttpCause::Designated => self.http_designated += 1,
            HttpCause::Backup => self.http_backup += 1,
            HttpCause::Late => self.http_late += 1,
            HttpCause::Alone => self.http_alone += 1,
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
