use std::time::Duration;

use protocol::signaling::MAX_SWARM_ID_LEN;
use protocol::{CHUNK_SIZE, manifest::sha256};
use serde::{Deserialize, Serialize};

use crate::scheduler::MAX_REQUEST_CHUNKS;

/// The shortest poll period, timeout or backoff a [`Config`] may ask for: below it the core
/// would poll, time out or reconnect in a loop.
pub const MIN_TIMER: Duration = Duration::from_millis(50);

/// A chunk frame: the chunk and its 16-byte header.
const CHUNK_FRAME: usize = CHUNK_SIZE + 16;

/// Tunables of a peer. Defaults are what the browser and native drivers use.
///
/// [`Config::validate`] says what makes no sense; [`crate::PeerCore::try_new`] refuses such a
/// config, [`crate::PeerCore::new`] runs it after [`Config::clamped`] (which fixes only what the
/// core cannot run with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Swarm id (stream URL without query + rendition); checked in the peers' `Hello`.
    pub swarm: String,
    /// Join token handed to the signaling server (when the operator requires one).
    pub token: Option<String>,
    /// Integrity manifest to poll (see [`crate::sidecar_url`]); `None`: no manifest, so every
    /// want fails over to the player's own loader.
    pub manifest_url: Option<String>,
    /// The media playlist the manifest describes: the manifest's segment URIs are written as in
    /// the playlist, so they resolve against it. `None`: against the manifest URL (right for a
    /// sidecar next to its playlist, not for an integrity service elsewhere).
    #[serde(default)]
    pub playlist_url: Option<String>,
    /// How often the manifest is polled while it changes (a live stream); a manifest that has
    /// not changed for [`Config::manifest_idle_after`] is polled every
    /// [`Config::manifest_idle_poll`] (VOD, ended streams).
    pub manifest_poll: Duration,
    pub manifest_idle_after: Duration,
    pub manifest_idle_poll: Duration,
    /// Signaling reconnect backoff: doubles per failure from `min` to `max`, ±50 % jitter.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// A signaling connection that has not said `welcome` after this long is dropped.
    pub signal_timeout: Duration,
    /// After our data channel opens, how long we stay silent unless the other side speaks
    /// first. Zero for browsers. The native driver needs 300 ms: webrtc-rs drops messages that
    /// reach a negotiated channel before its own side counts it as open (webrtc-rs#748).
    pub open_grace: Duration,
    /// The connection and HTTP request ids this core hands out start above this. A driver that
    /// replaces its core (the browser peer on an ABR switch) gives the new one a base above the
    /// old one's ids, so late callbacks of the old core's connections and requests never match
    /// the new core's.
    pub id_base: u64,
    /// Report every verified chunk received and every chunk uploaded
    /// ([`crate::Event::ChunkReceived`], [`crate::Event::ChunkUploaded`]): one output per
    /// 16 KiB, for drivers whose users watch them (the browser's `chunk` and `upload` events).
    /// Off by default.
    #[serde(default)]
    pub chunk_events: bool,
    /// Test hook: corrupt the payload of every chunk we upload (ban-logic tests, the sim's bad
    /// peers, the browser's `__tamper`). One copy, here.
    pub corrupt_uploads: bool,
    /// Seed of the core's random choices (peer picks, tie breaks).
    pub seed: u64,
    /// Most peer connections (incoming and outgoing together).
    pub max_peers: usize,
    /// Fetch from peers at all.
    pub p2p: bool,
    /// Serve other peers.
    pub upload: bool,
    /// Upload cap in bytes per second (`None`: no cap).
    pub upload_cap: Option<u64>,
    /// Segment store capacity in bytes (LRU beyond it).
    pub store_cap: usize,
    /// Chunks we keep in flight towards one peer (a count of chunks, not of requests).
    pub max_inflight_per_peer: usize,
    /// Chunks per request frame.
    pub max_chunks_per_request: u16,
    /// Chunks we queue for one requester before answering `Busy`; sent in our `Hello` as
    /// `max_inflight` (a count of chunks).
    pub serve_queue_per_peer: usize,
    /// Chunks we queue for all requesters together before answering `Busy`.
    pub serve_queue_total: usize,
    /// Longest a request may wait for our uplink (at its measured rate, behind what is queued
    /// and buffered) before we answer `Busy`: beyond it the requester is better served by
    /// another peer or the origin than by bytes that arrive after it gave up on them.
    pub serve_horizon: Duration,
    /// Bytes we let wait in one data channel's send buffer (the driver reports it with
    /// `handle_buffered`); more would only queue behind the uplink and delay everybody.
    pub send_window_per_peer: usize,
    /// Bytes we let wait in all send buffers together.
    pub send_window_total: usize,
    /// Once our uplink is measured, the send buffers together hold no more than this much of
    /// its time (and no more than `send_window_total`): a chunk in a send buffer can no longer
    /// be cancelled or put behind a fresher one, and everything sent after it waits for it.
    pub send_window_time: Duration,
    /// A peer request with no chunk for this long is given up (its chunks go elsewhere).
    pub peer_stall_timeout: Duration,
    /// Extra margin kept before a deadline when falling back to HTTP.
    pub http_margin: Duration,
    /// Members that split the origin fetch of each segment: the member with slot
    /// `(seq + j) % slots` fetches part `j` of `origin_seeders` (by Range) and super-seeds it.
    pub origin_seeders: usize,
    /// Backup seeder: the member after the designated one fetches from the origin when no
    /// neighbour has any chunk of the segment this long after it was announced.
    pub backup_seed_delay: Duration,
    /// Backup seeders tried one after another per part, each `backup_seed_delay` after the
    /// previous: round `m` is the member `origin_seeders + m − 1` slots after the designated one.
    /// Rounds after the first only once this peer has banned somebody (see `schedule`).
    pub backup_rounds: usize,
    /// How long chunks fetched from the origin are announced to one neighbour each
    /// (super-seeding) before they are announced to all.
    pub super_seed_time: Duration,
    /// A connection attempt whose channel has not opened and said `Hello` after this long is
    /// dropped (it restarts when the channel opens: an open channel must say `Hello` in time).
    pub connect_timeout: Duration,
    /// Known segments kept (metadata), oldest dropped first.
    pub max_known_segments: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            swarm: String::new(),
            token: None,
            manifest_url: None,
            playlist_url: None,
            manifest_poll: Duration::from_millis(500),
            manifest_idle_after: Duration::from_secs(20),
            manifest_idle_poll: Duration::from_secs(15),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            signal_timeout: Duration::from_secs(10),
            open_grace: Duration::ZERO,
            chunk_events: false,
            corrupt_uploads: false,
            id_base: 0,
            seed: 0,
            // 16, was 12: on long, lossy links each pair carries only what its congestion
            // controller allows (~350 kbit/s at 190 ms and 3 %), so a viewer needs more pairs
            // to fill its uplink and its downlink. Sim, 300 s, origin saved (seed 1):
            // 20 viewers at 4 Mbit/s, 80-300 ms, 3 %: 0.744 -> 0.809 (seed 2: 0.719 -> 0.780);
            // 50 viewers there: 0.649 -> 0.828; 50 viewers default: 0.960 -> 0.969; 20 viewers
            // at 1 Mbit/s, 20-100 ms: 0.419 -> 0.414 (the one row that lost, by 0.005).
            max_peers: 16,
            p2p: true,
            upload: true,
            upload_cap: None,
            store_cap: 64 * 1024 * 1024,
            max_inflight_per_peer: 8,
            max_chunks_per_request: 4,
            serve_queue_per_peer: 16,
            serve_queue_total: 96,
            serve_horizon: Duration::from_millis(1500),
            // 32 KiB (two chunks): on a loss-limited pair (~1 Mbit/s at 100 ms RTT) 64 KiB was
            // half a second of queue in front of every other frame on the uplink. Sim, 50
            // viewers, 300 s, seeds 1-4: offload 94.5/91.8/94.6/93.2 % -> 95.7/95.1/95.1/95.5 %.
            send_window_per_peer: 32 * 1024,
            send_window_total: 160 * 1024,
            // 500 ms, was 250: on pair-limited links (long RTTs, loss) each channel drains at
            // its pair's rate, and 250 ms of uplink in all send buffers kept only two or three
            // channels busy, the uplink ~63 % used. Sim, 20 viewers, 300 s, seed 1 (with
            // max_peers 16), origin saved / bound: 1 Mbit/s up, 80-300 ms, 3 %: 0.644 -> 0.780;
            // 2 Mbit/s there: 0.688 -> 0.770; 4 Mbit/s there: 0.851 -> 0.869; default 0.936
            // unchanged; max waste 5.7 % -> 3.9 %. Lab (6 Chromium pages, 1,000 kbit/s tbf):
            // 0.535 and 0.529 saved, within the 0.49-0.54 of earlier runs.
            send_window_time: Duration::from_millis(500),
            peer_stall_timeout: Duration::from_millis(3000),
            http_margin: Duration::from_millis(500),
            backup_seed_delay: Duration::from_millis(1500),
            backup_rounds: 3,
            origin_seeders: 10,
            connect_timeout: Duration::from_secs(10),
            super_seed_time: Duration::from_millis(1500),
            max_known_segments: 4096,
        }
    }
}

/// Why a [`Config`] makes no sense (see [`Config::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the swarm id is empty (with p2p or upload on)")]
    EmptySwarm,
    #[error("the swarm id is {0} bytes, over {MAX_SWARM_ID_LEN}")]
    SwarmTooLong(usize),
    #[error("{0} is zero")]
    Zero(&'static str),
    #[error("{0} is under {MIN_TIMER:?}")]
    TooShort(&'static str),
    #[error("reconnect_max is under reconnect_min")]
    ReconnectMaxUnderMin,
    #[error("{field} is {value} bytes, under {min}")]
    TooSmall {
        field: &'static str,
        value: usize,
        min: usize,
    },
    #[error("max_chunks_per_request is {0}, outside 1..={MAX_REQUEST_CHUNKS}")]
    ChunksPerRequest(u16),
}

impl Config {
    /// Checks that every field makes sense: a swarm id (when peers are used) of at most
    /// [`MAX_SWARM_ID_LEN`] bytes; no zero counts (`max_peers` when peers are used,
    /// `max_inflight_per_peer`, serve queues, `origin_seeders`, `backup_rounds`,
    /// `max_known_segments`, an `upload_cap` of zero: turn `upload` off instead); poll periods,
    /// timeouts and backoffs of at least [`MIN_TIMER`], `reconnect_max ≥ reconnect_min`; send
    /// windows of at least one chunk frame, the total at least the per-peer one; a store of at
    /// least one chunk; `max_chunks_per_request` in `1..=64` (a request's bitmap has 64 bits).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let peers = self.p2p || self.upload;
        if peers && self.swarm.is_empty() {
            return Err(ConfigError::EmptySwarm);
        }
        if self.swarm.len() > MAX_SWARM_ID_LEN {
            return Err(ConfigError::SwarmTooLong(self.swarm.len()));
        }
        let zeros = [
            ("max_peers", peers && self.max_peers == 0),
            ("max_inflight_per_peer", self.max_inflight_per_peer == 0),
            ("serve_queue_per_peer", self.serve_queue_per_peer == 0),
            ("serve_queue_total", self.serve_queue_total == 0),
            ("origin_seeders", self.origin_seeders == 0),
            ("backup_rounds", self.backup_rounds == 0),
            ("max_known_segments", self.max_known_segments == 0),
            ("upload_cap", self.upload_cap == Some(0)),
        ];
        if let Some((field, _)) = zeros.iter().find(|(_, zero)| *zero) {
            return Err(ConfigError::Zero(field));
        }
        for (field, d) in self.timers() {
            if d < MIN_TIMER {
                return Err(ConfigError::TooShort(field));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::ReconnectMaxUnderMin);
        }
        let sizes = [
            (
                "send_window_per_peer",
                self.send_window_per_peer,
                CHUNK_FRAME,
            ),
            (
                "send_window_total",
                self.send_window_total,
                self.send_window_per_peer,
            ),
            ("store_cap", self.store_cap, CHUNK_SIZE),
        ];
        for (field, value, min) in sizes {
            if value < min {
                return Err(ConfigError::TooSmall { field, value, min });
            }
        }
        if !(1..=MAX_REQUEST_CHUNKS).contains(&self.max_chunks_per_request) {
            return Err(ConfigError::ChunksPerRequest(self.max_chunks_per_request));
        }
        Ok(())
    }

    /// This config with what the core cannot run with fixed, everything else unchanged (a
    /// valid config comes back as it is): poll periods, timeouts and backoffs raised to
    /// [`MIN_TIMER`] (below it the core would loop), `reconnect_max` to `reconnect_min`,
    /// `max_chunks_per_request` brought into `1..=64`, and a swarm id over [`MAX_SWARM_ID_LEN`]
    /// bytes replaced by `sha256:<hex of the id>` (as `protocol::signaling::swarm_id` does; a
    /// `Hello` could not carry it).
    pub fn clamped(mut self) -> Self {
        for d in [
            &mut self.manifest_poll,
            &mut self.manifest_idle_poll,
            &mut self.reconnect_min,
            &mut self.signal_timeout,
            &mut self.peer_stall_timeout,
            &mut self.connect_timeout,
        ] {
            *d = (*d).max(MIN_TIMER);
        }
        self.reconnect_max = self.reconnect_max.max(self.reconnect_min);
        self.max_chunks_per_request = self.max_chunks_per_request.clamp(1, MAX_REQUEST_CHUNKS);
        if self.swarm.len() > MAX_SWARM_ID_LEN {
            // Written out, not `format!`: no formatting code in the browser bundle.
            self.swarm = ["sha256:", &hex::encode(sha256(self.swarm.as_bytes()))].concat();
        }
        self
    }

    /// The durations that must be at least [`MIN_TIMER`].
    fn timers(&self) -> [(&'static str, Duration); 6] {
        [
            ("manifest_poll", self.manifest_poll),
            ("manifest_idle_poll", self.manifest_idle_poll),
            ("reconnect_min", self.reconnect_min),
            ("signal_timeout", self.signal_timeout),
            ("peer_stall_timeout", self.peer_stall_timeout),
            ("connect_timeout", self.connect_timeout),
        ]
    }
}
