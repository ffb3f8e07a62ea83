//! The sans-IO brain of a viewer: the signaling session, peer connections, swarm membership, a
//! deadline-aware scheduler, chunk-level multi-source transfer with cut-through relay,
//! integrity checks, a bounded store, an upload policy, manifest polling and stats.
//!
//! It never performs IO and never reads a clock. A driver (browser, native, simulator) is a
//! short loop, as in str0m:
//! * turn whatever happened (a socket message, a finished fetch, a timer) into one [`Input`] and
//!   call [`PeerCore::handle`] with the current [`Time`];
//! * perform every [`Output`] from [`PeerCore::poll_output`];
//! * call `handle(now, Input::Timeout)` at [`PeerCore::poll_timeout`].
//!
//! Every policy lives here: reconnect backoff, ping cadence, who offers, glare, pending ICE
//! candidates, open and Hello timers, re-offers, manifest polling, prefetch, scheduling. Both
//! enums serialize, so a session is a list of `(Time, Input)` that can be recorded and
//! replayed (`cargo xtask replay`).
//!
//! ## State, one owner each (one module each)
//! * [`session`]: the signaling connection (connect, welcome, join, backoff, pings).
//! * [`remotes`]: peers: connections, handshake, Hello, their `Have`s, bans, candidates.
//! * [`store`]: segments and their chunks, the byte budget and eviction; segment URLs.
//! * [`http`]: origin requests in flight and the origin's measured RTT and rate.
//! * [`scheduler`]: what to fetch from whom and when (live-edge seeding, deadlines).
//! * [`upload`]: serving requests under the send windows and the upload cap.
//! * [`manifest`]: polling the integrity manifest; wants from the player; prefetch.
//! * `stats`: counters ([`Stats`]).
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
//!   (each chunk shown to one neighbour until it has been uploaded once). Backups: see
//!   [`Config::backup_seed_delay`] and docs/ARCHITECTURE.md.
//! * **Deadline**: at `deadline − 1.5 × (expected HTTP time) − http_margin` every chunk still
//!   missing (or still in flight from a peer) is fetched from the origin by Range; the expected
//!   time uses the measured HTTP round trip and throughput.
//! * A peer request with no progress for `peer_stall_timeout` is cancelled and its chunks go
//!   elsewhere.
//! * A peer that does not read its channel (its send buffer holds
//!   [`remotes::CONTROL_BUDGET`] past its send window, or stays over the window for
//!   [`remotes::STUCK_TIMEOUT`]) is disconnected: its buffer would hold the total send window.
//! * A segment the origin re-published (its manifest entry changed) takes the new entry; a
//!   chunk matching the old entry is skew, not corruption: dropped, its peer not banned.
//! * A peer that sends a chunk failing verification, a chunk not asked for, more bytes than a
//!   chunk holds, a malformed frame, or frames faster than [`remotes::FLOOD_RATE`] past a burst
//!   of [`remotes::FLOOD_BURST`] is disconnected and banned (the ban list is bounded:
//!   beyond [`remotes::MAX_BANNED`] the oldest ban is forgotten).

mod config;
mod core;
pub mod http;
pub mod manifest;
pub mod remotes;
pub mod replay;
pub mod scheduler;
pub mod session;
pub mod share;
pub mod sorted;
mod stats;
pub mod store;
mod time;
pub mod upload;

pub use crate::config::{Config, ConfigError, MIN_TIMER};
pub use crate::core::PeerCore;
pub use crate::stats::{CHUNK_MS_BOUNDS, HttpCause, MAX_PEER_COUNTERS, Stats};
pub use crate::time::Time;

use std::time::Duration;

use bytes::Bytes;
use protocol::signaling::{ClientMsg, ErrorCode, IceServer, ServerMsg, SignalData};
use protocol::{Manifest, PeerId};
use serde::{Deserialize, Serialize};

/// A peer connection attempt, numbered by the core. A new attempt to the same peer (a re-offer,
/// glare) gets a new id: inputs for an old one are ignored.
pub type ConnId = u64;

/// Everything that can happen to a peer. Fed with the time to [`PeerCore::handle`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// A timer from [`PeerCore::poll_timeout`] (or any wake-up: extra ones are harmless).
    Timeout,

    // ---- signaling transport ([`Output::SignalConnect`] and friends)
    /// The WebSocket to the signaling server opened.
    SignalOpened,
    /// A message from the signaling server (the driver decodes the JSON).
    SignalMessage(ServerMsg),
    /// The WebSocket closed, failed to open, or sent something undecodable.
    SignalClosed,

    // ---- peer connections ([`Output::RtcCreate`] and friends)
    /// The connection produced a local description (the offer or answer the core asked for
    /// with [`Output::RtcCreate`] / [`Output::RtcRemote`]) or a local ICE candidate.
    RtcLocal { conn: ConnId, data: SignalData },
    /// A remote offer or answer was applied (`setRemoteDescription` succeeded): queued remote
    /// candidates may now be added.
    RtcRemoteApplied { conn: ConnId },
    /// The data channel opened.
    RtcOpen { conn: ConnId },
    /// A binary message from the data channel (a text message is passed as empty bytes: it
    /// is malformed input).
    RtcMessage { conn: ConnId, data: Bytes },
    /// Bytes waiting in the channel's send buffer now (`bufferedAmount`), reported whenever it
    /// drops (e.g. on `bufferedamountlow`) and after sends.
    RtcBuffered { conn: ConnId, amount: usize },
    /// The connection or its channel closed or failed (any step of its setup included).
    RtcClosed { conn: ConnId },

    // ---- origin requests ([`Output::HttpStart`])
    /// Bytes of a response body, in order.
    HttpData { id: u64, data: Bytes },
    /// The response ended.
    HttpDone { id: u64 },
    /// The request failed (network error, bad status).
    HttpFailed { id: u64 },

    // ---- integrity manifest ([`Output::FetchManifest`])
    /// The manifest at `url` was fetched and validated (the driver decodes the JSON).
    ManifestLoaded { url: String, manifest: Manifest },
    /// Fetching or validating it failed.
    ManifestFailed { url: String },

    // ---- the player
    /// The player wants the segment at `url` (media sequence number `seq` when the player
    /// knows it) by `deadline`; it lasts `duration`. Answered by [`Output::SegmentReady`] or
    /// [`Output::WantFailed`] carrying the same `url`.
    Want {
        url: String,
        seq: Option<u64>,
        deadline: Time,
        duration: Duration,
    },
    /// The player no longer needs the segment at `url` (seek, quality switch, abort).
    Cancel { url: String },
    /// The player stalled (its buffer ran dry).
    Stall,
    /// A fresh join token (the page's backend minted a new one before the old expired): sent
    /// with every `join` from now on (after a reconnect, or the next swarm).
    SetToken { token: Option<String> },
    /// The viewer leaves: the core says goodbye to the server and closes everything.
    Close,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Open the WebSocket to the signaling server (closing any previous one).
    SignalConnect,
    /// Send this message on the open WebSocket (dropped when it is not open).
    SignalSend(ClientMsg),
    /// Close the WebSocket (no [`Input::SignalClosed`] expected for it).
    SignalClose,

    /// Create a peer connection for `peer` with the protocol's negotiated data channel (id 0,
    /// reliable, ordered). When `offerer`, create an offer, set it as the local description and
    /// report it as [`Input::RtcLocal`]. Report local ICE candidates as they come.
    RtcCreate {
        conn: ConnId,
        peer: PeerId,
        offerer: bool,
    },
    /// Apply what the remote side sent: an offer (set it, then create, set and report an
    /// answer), an answer (set it), or a candidate (add it). Report
    /// [`Input::RtcRemoteApplied`] after an offer or answer is set.
    RtcRemote {
        conn: ConnId,
        data: SignalData,
    },
    /// Send a binary frame on the data channel.
    RtcSend {
        conn: ConnId,
        frame: Bytes,
    },
    /// Close the connection (no [`Input::RtcClosed`] expected for it).
    RtcClose {
        conn: ConnId,
    },

    /// GET `url` (with `Range: bytes=start-(end-1)` when `range` is set) and report the body
    /// with [`Input::HttpData`] / [`Input::HttpDone`] / [`Input::HttpFailed`] and `id`.
    HttpStart {
        id: u64,
        url: String,
        range: Option<(u64, u64)>,
    },
    /// Abort HTTP request `id`; report nothing more for it.
    HttpCancel {
        id: u64,
    },
    /// Fetch and decode the integrity manifest at `url`; answer with
    /// [`Input::ManifestLoaded`] or [`Input::ManifestFailed`].
    FetchManifest {
        url: String,
    },

    /// A verified segment for the player (answers [`Input::Want`] for `url`), with how many of
    /// its bytes came from where.
    SegmentReady {
        url: String,
        seq: u64,
        data: Bytes,
        http_bytes: u64,
        p2p_bytes: u64,
    },
    /// The core will not deliver the segment at `url` (unknown to the integrity manifest, or
    /// too many waiting): the player loads it itself.
    WantFailed {
        url: String,
    },
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DisconnectReason {
    Banned,
    Left,
    Timeout,
    WrongSwarm,
    /// A second connection to a viewer we are already connected to (its `Hello` instance).
    Duplicate,
    /// The peer sent a new offer: the old connection is replaced.
    Reoffered,
    Closing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BanReason {
    /// A chunk failed verification against the manifest.
    BadChunk,
    /// A chunk we never asked for (unknown request, outside its range, or twice).
    Unsolicited,
    /// More bytes than the chunk holds.
    TooManyBytes,
    /// A frame that does not decode.
    Malformed(String),
    /// More frames than [`remotes::FLOOD_RATE`] a second, past a burst of
    /// [`remotes::FLOOD_BURST`] (whatever they are, in any state of the connection).
    Flood,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    PeerConnected {
        peer: PeerId,
    },
    PeerDisconnected {
        peer: PeerId,
        reason: DisconnectReason,
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
    /// A chunk of `bytes` arrived and matched the manifest: from `peer`, or from the origin
    /// (`None`). Only with [`Config::chunk_events`].
    ChunkReceived {
        peer: Option<PeerId>,
        seq: u64,
        chunk: usize,
        bytes: usize,
    },
    /// A chunk of `bytes` went to `peer`. Only with [`Config::chunk_events`].
    ChunkUploaded {
        peer: PeerId,
        seq: u64,
        chunk: usize,
        bytes: usize,
    },
    /// The signaling server welcomed us under this id (again after a reconnect), with the ICE
    /// servers its operator configured (at most [`protocol::signaling::MAX_ICE_SERVERS`]; empty:
    /// none). The driver uses them for the connections it makes from then on, unless its page
    /// set its own.
    Welcomed {
        peer_id: PeerId,
        #[serde(default)]
        ice_servers: Vec<IceServer>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("segment {0} is not in the integrity manifest")]
    UnknownSegment(u64),
}

/// The integrity manifest published next to a media playlist: `<dir>/<name>.integrity.json`
/// for `<dir>/<name>.m3u8`, query kept (signed URLs), fragment dropped. `None` when the URL
/// does not end in `.m3u8`.
pub fn sidecar_url(playlist: &str) -> Option<String> {
    let playlist = playlist.split('#').next().unwrap_or(playlist);
    let (path, query) = match playlist.find('?') {
        Some(i) => playlist.split_at(i),
        None => (playlist, ""),
    };
    let stem = path.strip_suffix(".m3u8")?;
    // `concat`, not `format!`: no formatting code in the browser bundle (docs/BUNDLE.md).
    Some([stem, ".integrity.json", query].concat())
}

/// Where the integrity manifest of the media playlist `playlist` is fetched from: the
/// operator's integrity service when the client was given one
/// (`<service>?playlist=<playlist URL, query included, percent-encoded>`, `&` when the service
/// URL already has a query; the service follows third-party origins, PROTOCOL §3.1), else the
/// sidecar next to the playlist ([`sidecar_url`]).
pub fn manifest_url(playlist: &str, service: Option<&str>) -> Option<String> {
    let Some(service) = service else {
        return sidecar_url(playlist);
    };
    let playlist = playlist.split('#').next().unwrap_or(playlist);
    let sep = if service.contains('?') { '&' } else { '?' };
    let mut out = String::with_capacity(service.len() + 10 + playlist.len() * 3 / 2);
    out.push_str(service);
    out.push(sep);
    out.push_str("playlist=");
    // Percent-encoding by hand (RFC 3986 unreserved kept): a URL crate would cost the wasm
    // bundle tens of KiB for this one call.
    for b in playlist.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    Some(out)
}

/// The swarm of a media playlist (PROTOCOL: stream URL `|` rendition). The stream is the
/// multivariant (master) playlist the player loaded; the rendition is the media playlist's URL
/// without query, relative to the stream's directory when it lies below it (`v360p/index.m3u8`,
/// `vaudio/index.m3u8`), else absolute. Each media playlist (each video rendition, each audio
/// rendition) is its own swarm: viewers of one never meet viewers of another, whose segments
/// share sequence numbers but not bytes. Without a stream (a media playlist played alone), the
/// playlist is the stream and the rendition is empty.
pub fn rendition_swarm(stream: Option<&str>, playlist: &str) -> String {
    let strip = |u: &str| u.split(['?', '#']).next().unwrap_or_default().to_owned();
    let media = strip(playlist);
    match stream.map(strip).filter(|s| !s.is_empty() && *s != media) {
        None => protocol::signaling::swarm_id(&media, ""),
        Some(stream) => {
            let dir = &stream[..stream.rfind('/').map_or(0, |i| i + 1)];
            let rendition = media
                .strip_prefix(dir)
                .filter(|_| !dir.is_empty())
                .unwrap_or(&media);
            protocol::signaling::swarm_id(&stream, rendition)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{manifest_url, rendition_swarm, sidecar_url};

    #[test]
    fn manifest_from_the_integrity_service() {
        assert_eq!(
            manifest_url(
                "http://o/live/v1/index.m3u8?tok=a b#x",
                Some("https://s/integrity")
            )
            .as_deref(),
            Some(
                "https://s/integrity?playlist=http%3A%2F%2Fo%2Flive%2Fv1%2Findex.m3u8%3Ftok%3Da%20b"
            )
        );
        assert_eq!(
            manifest_url("http://o/a.m3u8", Some("https://s/i?k=1")).as_deref(),
            Some("https://s/i?k=1&playlist=http%3A%2F%2Fo%2Fa.m3u8")
        );
        assert_eq!(
            manifest_url("http://o/a.m3u8", None).as_deref(),
            Some("http://o/a.integrity.json")
        );
    }

    #[test]
    fn one_swarm_per_media_playlist() {
        let master = Some("https://cdn/live/master.m3u8?t=1");
        assert_eq!(
            rendition_swarm(master, "https://cdn/live/v360p/index.m3u8?t=2"),
            "https://cdn/live/master.m3u8|v360p/index.m3u8"
        );
        assert_eq!(
            rendition_swarm(master, "https://cdn/live/vaudio/index.m3u8"),
            "https://cdn/live/master.m3u8|vaudio/index.m3u8"
        );
        assert_eq!(
            rendition_swarm(master, "https://other/a.m3u8"),
            "https://cdn/live/master.m3u8|https://other/a.m3u8"
        );
        assert_eq!(
            rendition_swarm(None, "https://cdn/live/index.m3u8?t=1"),
            "https://cdn/live/index.m3u8|"
        );
        assert_eq!(
            rendition_swarm(
                Some("https://cdn/live/index.m3u8"),
                "https://cdn/live/index.m3u8?x"
            ),
            "https://cdn/live/index.m3u8|"
        );
    }

    #[test]
    fn sidecar_next_to_playlist() {
        assert_eq!(
            sidecar_url("http://o/live/index.m3u8?tok=1#x").as_deref(),
            Some("http://o/live/index.integrity.json?tok=1")
        );
        assert_eq!(sidecar_url("http://o/a.mpd"), None);
    }
}
