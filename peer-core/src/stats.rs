use std::collections::BTreeMap;

use protocol::PeerId;

/// Traffic and health counters of one peer (cumulative).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Verified bytes received from each peer.
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
    /// Origin requests by cause: designated seeder, backup seeder, deadline, no peers.
    pub http_designated: u64,
    pub http_backup: u64,
    pub http_late: u64,
    pub http_alone: u64,
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
}
