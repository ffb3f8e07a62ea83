//! The sans-IO brain of a viewer: swarm membership, a deadline-aware scheduler, chunk-level
//! multi-source transfer with cut-through relay, integrity checks, a bounded store, an upload
//! policy and stats.
//!
//! It never performs IO and never reads a clock: drivers (browser, native, simulator) feed it
//! inputs through `handle_*` / `add_segment` / `want_segment` with the current [`Time`], drain
//! [`PeerCore::poll_output`], and call [`PeerCore::handle_timeout`] at
//! [`PeerCore::poll_timeout`].
//!
//! ## How a segment is fetched
//! * Each segment is split in 16 KiB chunks; the origin's manifest gives each chunk's SHA-256.
//! * Chunks any open peer holds (from its `Have` frames, also for segments it is still
//!   receiving) are requested from the peer expected to deliver soonest, a few per request.
//!   Every chunk is verified before it is stored, announced to other peers (cut-through relay)
//!   or handed to the player.
//! * **Live edge**: the signaling server gives every member a slot. Each segment is split into
//!   `k = min(origin_seeders, slots)` parts; the member with slot `(seq + j) % slots` fetches
//!   part `j` from the origin by Range as soon as the segment is announced, and super-seeds it
//!   (each chunk shown to one neighbour until it has been uploaded once). If no neighbour holds
//!   any chunk of a part `backup_seed_delay` later, the next slot's member fetches that part too.
//!   See docs/ARCHITECTURE.md.
//! * **Deadline**: at `deadline − 1.5 × (expected HTTP time) − http_margin` every chunk still
//!   missing (or still in flight from a peer) is fetched from the origin by Range; the expected
//!   time uses the measured HTTP round trip and throughput.
//! * A peer request with no progress for `peer_stall_timeout` is cancelled and its chunks go
//!   elsewhere.
//! * A peer that sends a chunk failing verification, a chunk not asked for, more bytes than a
//!   chunk holds, or a malformed frame is disconnected and banned for the life of this core.

mod config;
mod core;
mod stats;
mod time;

pub use crate::config::Config;
pub use crate::core::PeerCore;
pub use crate::stats::Stats;
pub use crate::time::Time;

use bytes::Bytes;
use protocol::PeerId;
use protocol::signaling::{ClientMsg, ErrorCode};

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this message to the signaling server.
    Signal(ClientMsg),
    /// Open a WebRTC connection to `peer` (we make the offer).
    Connect {
        peer: PeerId,
    },
    /// Close the connection to `peer`.
    Disconnect {
        peer: PeerId,
        reason: DisconnectReason,
    },
    /// Send a binary frame on `peer`'s data channel.
    Send {
        peer: PeerId,
        frame: Bytes,
    },
    /// GET `url` (with `Range: bytes=start-(end-1)` when `range` is set) and feed the body to
    /// `handle_http_data` / `handle_http_done` / `handle_http_failed` with `id`.
    HttpStart {
        id: u64,
        seq: u64,
        url: String,
        range: Option<(u64, u64)>,
    },
    /// Abort HTTP request `id`; feed nothing more for it.
    HttpCancel {
        id: u64,
    },
    /// A verified segment for the player, with how many of its bytes came from where.
    SegmentReady {
        seq: u64,
        data: Bytes,
        http_bytes: u64,
        p2p_bytes: u64,
    },
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    Banned,
    Left,
    Timeout,
    WrongSwarm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanReason {
    /// A chunk failed verification against the manifest.
    BadChunk,
    /// A chunk we never asked for (unknown request, outside its range, or twice).
    Unsolicited,
    /// More bytes than the chunk holds.
    TooManyBytes,
    /// A frame that does not decode.
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PeerConnected {
        peer: PeerId,
    },
    PeerDisconnected {
        peer: PeerId,
    },
    PeerBanned {
        peer: PeerId,
        reason: BanReason,
    },
    /// A chunk failed verification (`peer: None` when it came from the origin).
    IntegrityFailure {
        peer: Option<PeerId>,
        seq: u64,
        chunk: usize,
    },
    SignalingError {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("segment {0} is not in the integrity manifest")]
    UnknownSegment(u64),
}
