//! Seeded discrete-event simulator of a swarm of [`peer_core::PeerCore`]s.
//!
//! Virtual time, one event queue, one RNG: the same seed gives the same run. It models
//! * the **origin**: a live stream (or a VOD) of deterministic segments with their integrity
//!   manifest; responses stream in 16 KiB pieces after one round trip;
//! * **links**: each viewer has a downlink and an uplink (FIFO serialization); each pair of
//!   viewers has an RTT drawn from a range, a loss rate (each lost packet costs one RTT, and the
//!   pair's throughput is capped at what a loss-limited congestion controller gets, Mathis et
//!   al.), and delivers in order like a reliable ordered data channel;
//! * **signaling**: the real [`swarm_registry::Registry`] (the signaling server's) behind a
//!   fixed latency, relaying the cores' handshakes; connection setup costs the SDP relay plus
//!   two RTTs;
//! * a **model player** per viewer: joins, polls the playlist every segment duration (random
//!   phase), starts `live_delay` segments behind the live edge, plays at 1×, counts stalls;
//! * **churn** (viewers leaving and replaced) and **bad peers** that corrupt every chunk they
//!   upload (the core's own `corrupt_uploads` hook).
//!
//! The simulator is a driver like the browser and native ones: it feeds each core only
//! [`peer_core::Input`]s and performs its [`peer_core::Output`]s — the signaling session, the
//! handshakes, the manifest polling and the prefetch are the shipped core's.

pub use peer_core;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use peer_core::{Config, ConnId, Event, Input, Output, PeerCore, Stats, Time};
use protocol::frame::Frame;
use protocol::signaling::{ClientMsg, ServerMsg, SignalData};
use protocol::{Manifest, PeerId, SegmentManifest};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use swarm_registry::{Registry, RegistryConfig};

/// Simulation parameters. Defaults are the realistic setting of the project's issue.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub viewers: usize,
    pub seconds: f64,
    pub seed: u64,
    /// Percent of viewers leaving (and replaced by newcomers) per minute.
    pub churn_pct_per_min: f64,
    /// Fraction of viewers that corrupt every chunk they upload.
    pub bad_peers: f64,
    pub vod: bool,
    pub segment_secs: f64,
    pub bitrate_bps: f64,
    pub down_bps: f64,
    pub up_bps: f64,
    pub rtt_min_ms: f64,
    pub rtt_max_ms: f64,
    pub loss: f64,
    /// One-way latency to the origin.
    pub origin_ms: f64,
    /// One-way latency to the signaling server.
    pub signal_ms: f64,
    /// Viewers join uniformly over this many seconds.
    pub join_window_secs: f64,
    /// The player starts this many segments behind the live edge.
    pub live_delay_segments: u64,
    /// Segments in the live playlist window.
    pub playlist_window: u64,
    /// The cores poll the integrity manifest this often while it changes (their
    /// `Config::manifest_poll`).
    pub manifest_poll_secs: f64,
    /// VOD: seconds of media the player buffers ahead.
    pub buffer_ahead_secs: f64,
    /// Peer-core configuration (swarm and seed are set per viewer).
    pub core: Config,
    /// Fetch everything from the origin (baseline).
    pub http_only: bool,
    /// Check every core's internal invariants after every event (tests).
    pub check_invariants: bool,
    /// Print a line for every stall (debugging).
    pub trace_stalls: bool,
    /// Charge links what a data channel really puts on the wire (see [`wire`]): packet headers,
    /// retransmitted packets, and the receiver's SACKs on the receiver's uplink. Off, a link
    /// carries frame bytes only (the model before stop 26).
    pub wire_overhead: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            viewers: 20,
            seconds: 600.0,
            seed: 1,
            churn_pct_per_min: 0.0,
            bad_peers: 0.0,
            vod: false,
            segment_secs: 2.0,
            bitrate_bps: 2_000_000.0,
            down_bps: 20_000_000.0,
            up_bps: 4_000_000.0,
            rtt_min_ms: 20.0,
            rtt_max_ms: 100.0,
            loss: 0.01,
            origin_ms: 50.0,
            signal_ms: 30.0,
            join_window_secs: 30.0,
            live_delay_segments: 3,
            playlist_window: 6,
            buffer_ahead_secs: 30.0,
            manifest_poll_secs: 0.5,
            core: Config::default(),
            http_only: false,
            check_invariants: false,
            trace_stalls: false,
            wire_overhead: true,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub viewers: usize,
    pub seconds: f64,
    /// P2P bytes ÷ all bytes delivered to players.
    pub offload: f64,
    /// The same over honest viewers only: bad viewers, once banned by everybody, play from
    /// the origin alone and pull `offload` down by themselves.
    pub offload_honest: f64,
    /// 1 − 1/N.
    pub limit: f64,
    pub stalls: u64,
    pub startup_ms_p50: f64,
    /// Segment bytes the origin sent.
    pub http_bytes: u64,
    /// Verified bytes viewers received from peers.
    pub p2p_bytes: u64,
    pub delivered_http: u64,
    pub delivered_p2p: u64,
    /// Segments handed to a player whose bytes differ from the origin's.
    pub corrupt_to_player: u64,
    pub bad: usize,
    /// Bad viewers banned by at least one honest viewer.
    pub banned_bad: usize,
    /// Honest viewers banned by anybody.
    pub banned_honest: usize,
    pub joins: usize,
    pub segments_played: u64,
    pub events: u64,
    /// Origin requests by cause, and peer request timeouts.
    pub http_designated: u64,
    pub http_backup: u64,
    pub http_late: u64,
    pub http_alone: u64,
    pub http_share: u64,
    pub peer_timeouts: u64,
    /// Integrity manifest fetches, all viewers.
    pub manifest_fetches: u64,
    /// Chunk bytes viewers uploaded to each other.
    pub uploaded_bytes: u64,
    /// Bytes viewers received (origin + verified from peers) and never handed to a player:
    /// received twice (from a peer and the origin, or from two peers), or fetched and never
    /// played (a few segments are still ahead of the players when the run ends).
    pub received_unplayed: u64,
    /// Bytes uploaded that no viewer kept: cancelled or lost in flight, or corrupt.
    pub uploaded_unreceived: u64,
    /// Of `received_unplayed`: chunks that came a second time from the origin / from a peer.
    pub dup_http: u64,
    pub dup_p2p: u64,
    /// The capacity bound on origin savings: min(1 − 1/N, uplink ÷ bitrate).
    pub bound: f64,
    /// Viewers whose core measured its uplink, and the mean of what they measured (bits/s, at
    /// the end of the run).
    pub uplinks_measured: usize,
    /// The simulated uplink, Mbit/s.
    pub up_mbps: f64,
    pub uplink_measured_mean: f64,
    /// Requests answered `Busy` because the uploader's uplink would not get them out in time.
    pub serve_busy: u64,
    /// What viewers' uplinks carried, bytes on the wire: [`UPLINK_KINDS`] in order (chunk
    /// frames, `Have`, `Status`, other control frames, SACKs, retransmitted packets).
    pub uplink_wire: [u64; 6],
    /// Frames sent, by the same kinds (SACKs and retransmissions: packets).
    pub uplink_frames: [u64; 6],
    /// Chunks from peers by request → arrival time (peer-core's `Stats::chunk_ms`).
    pub chunk_ms: [u64; 6],
}

/// Names of [`Report::uplink_wire`]'s entries.
pub const UPLINK_KINDS: [&str; 6] = ["chunks", "have", "status", "other", "sacks", "resent"];

impl Report {
    /// Bytes sent (by the origin and by viewers) that no player used.
    pub fn wasted_bytes(&self) -> u64 {
        self.received_unplayed + self.uploaded_unreceived
    }

    /// Bytes handed to players.
    pub fn delivered_bytes(&self) -> u64 {
        self.delivered_http + self.delivered_p2p
    }

    pub fn to_json(&self) -> String {
        format!(
            "{{\"viewers\":{},\"seconds\":{},\"offload\":{:.4},\"limit\":{:.4},\"bound\":{:.4},\"stalls\":{},\"startup_ms_p50\":{:.0},\"origin_bytes\":{},\"http_bytes\":{},\"p2p_bytes\":{},\"uploaded_bytes\":{},\"delivered_bytes\":{},\"wasted_bytes\":{},\"received_unplayed\":{},\"uploaded_unreceived\":{},\"corrupt_to_player\":{},\"banned_bad\":{},\"banned_honest\":{}}}",
            self.viewers,
            self.seconds,
            self.offload,
            self.limit,
            self.bound,
            self.stalls,
            self.startup_ms_p50,
            self.http_bytes,
            self.http_bytes,
            self.p2p_bytes,
            self.uploaded_bytes,
            self.delivered_bytes(),
            self.wasted_bytes(),
            self.received_unplayed,
            self.uploaded_unreceived,
            self.corrupt_to_player,
            self.banned_bad,
            self.banned_honest
        )
    }

    pub fn summary(&self) -> String {
        format!(
            "{} viewers ({} joins, {} bad), {:.0} s: offload {:.1} % (honest viewers {:.1} %, limit {:.1} %), stalls {}, startup p50 {:.0} ms\n\
             origin sent {:.1} MB, peers sent {:.1} MB; delivered {:.1} MB HTTP + {:.1} MB P2P in {} segments\n\
             integrity: {} corrupt segments to players, {}/{} bad peers banned, {} honest banned; {} events\n\
             origin requests: {} designated, {} backup, {} deadline, {} alone, {} share; {} peer request timeouts; {:.1} manifest fetches per viewer-minute\n\
             waste: {:.1} MB ({:.1} % of delivered): {:.1} MB received and never played ({:.1} MB a second time from the origin, {:.1} MB from a peer), {:.1} MB uploaded and not kept; bound on origin savings {:.3}\n\
             uplink measured by {} viewers: {:.2} Mbit/s on average (links {:.2}); {} requests answered busy for want of uplink\n\
             uplinks carried {}\n\
             chunks from peers, request → arrival: {}",
            self.viewers,
            self.joins,
            self.bad,
            self.seconds,
            self.offload * 100.0,
            self.offload_honest * 100.0,
            self.limit * 100.0,
            self.stalls,
            self.startup_ms_p50,
            self.http_bytes as f64 / 1e6,
            self.p2p_bytes as f64 / 1e6,
            self.delivered_http as f64 / 1e6,
            self.delivered_p2p as f64 / 1e6,
            self.segments_played,
            self.corrupt_to_player,
            self.banned_bad,
            self.bad,
            self.banned_honest,
            self.events,
            self.http_designated,
            self.http_backup,
            self.http_late,
            self.http_alone,
            self.http_share,
            self.peer_timeouts,
            self.manifest_fetches as f64 / (self.joins.max(1) as f64 * self.seconds / 60.0),
            self.wasted_bytes() as f64 / 1e6,
            100.0 * self.wasted_bytes() as f64 / self.delivered_bytes().max(1) as f64,
            self.received_unplayed as f64 / 1e6,
            self.dup_http as f64 / 1e6,
            self.dup_p2p as f64 / 1e6,
            self.uploaded_unreceived as f64 / 1e6,
            self.bound,
            self.uplinks_measured,
            self.uplink_measured_mean / 1e6,
            self.up_mbps,
            self.serve_busy,
            self.uplink_breakdown(),
            Stats {
                chunk_ms: self.chunk_ms,
                ..Stats::default()
            }
            .chunk_ms_line(),
        )
    }

    /// `chunks 81.0 % (…MB, … frames), have …`: shares of what uplinks carried.
    pub fn uplink_breakdown(&self) -> String {
        let total = self.uplink_wire.iter().sum::<u64>().max(1) as f64;
        let parts: Vec<String> = UPLINK_KINDS
            .iter()
            .zip(self.uplink_wire.iter().zip(&self.uplink_frames))
            .map(|(k, (&b, &n))| {
                format!(
                    "{k} {:.1} % ({:.1} MB, {n})",
                    100.0 * b as f64 / total,
                    b as f64 / 1e6
                )
            })
            .collect();
        format!("{:.1} MB: {}", total / 1e6, parts.join(", "))
    }
}

type V = usize;

#[derive(Debug)]
enum Ev {
    Join(V),
    Churn,
    ToServer(V, ClientMsg),
    /// The server accepted `v`'s WebSocket.
    SignalUp(V),
    ToViewer(V, ServerMsg),
    /// A core's input that the model produces after a delay (handshake steps, closes).
    Input(V, Input),
    /// The offerer `v` applied the answer of `peer`: the pair's transport comes up.
    Connected {
        v: V,
        peer: V,
    },
    Open {
        v: V,
        peer: V,
        epoch: u64,
    },
    Closed {
        v: V,
        peer: V,
        epoch: u64,
    },
    /// A frame reached `to`'s downlink.
    Arrive {
        to: V,
        from: V,
        epoch: u64,
        frame: Bytes,
    },
    Frame {
        to: V,
        from: V,
        epoch: u64,
        frame: Bytes,
    },
    HttpArrive {
        v: V,
        id: u64,
        data: Bytes,
        last: bool,
    },
    HttpData {
        v: V,
        id: u64,
        data: Bytes,
        last: bool,
    },
    Manifest(V, String),
    Poll(V),
    PlayerCheck {
        v: V,
        seq: u64,
    },
    Timer(V, Time),
    /// The server's periodic flush of coalesced `slot` notices.
    SlotNotices,
    /// A frame left `v`'s send buffer towards `peer`.
    Sent {
        v: V,
        peer: V,
        epoch: u64,
        len: usize,
    },
    /// The pair's congestion controller lets a frame go onto `from`'s uplink.
    Release {
        from: V,
        to: V,
        epoch: u64,
        frame: Bytes,
    },
}

struct Player {
    joined: Time,
    started: Option<Time>,
    start_seq: Option<u64>,
    next_needed: u64,
    ready: BTreeSet<u64>,
    wanted: BTreeSet<u64>,
    stalled_since: Option<Time>,
    stall_total: Duration,
    /// Newest segment in the player's playlist view.
    known_max: Option<u64>,
}

struct Viewer {
    core: PeerCore,
    alive: bool,
    bad: bool,
    player: Player,
    up_free: Time,
    down_free: Time,
    timer: Option<Time>,
    http_active: BTreeSet<u64>,
    signal_ms: f64,
    /// The core's connection to each peer.
    conns: BTreeMap<V, ConnId>,
}

#[derive(Default)]
struct Link {
    epoch: u64,
    open: bool,
    /// Per direction (from lower index, from higher index): when the pair's congestion
    /// controller lets the next frame go (see `Sim::send`), and the
    /// latest arrival (ordered delivery).
    pipe_free: [Time; 2],
    last_arrive: [Time; 2],
    /// Bytes in each direction's send buffer.
    buffered: [usize; 2],
}

pub struct Sim {
    cfg: SimConfig,
    rng: SmallRng,
    now: Time,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: BTreeMap<usize, Ev>,
    next_ev: u64,
    viewers: Vec<Viewer>,
    links: BTreeMap<(V, V), Link>,
    registry: Registry,
    segments: BTreeMap<u64, (Bytes, SegmentManifest)>,
    swarm: String,
    http_bytes: u64,
    startups: Vec<f64>,
    corrupt: u64,
    banned_by: BTreeMap<V, BTreeSet<V>>,
    played: u64,
    processed: u64,
    /// See [`Report::uplink_wire`].
    uplink_wire: [u64; 6],
    uplink_frames: [u64; 6],
}

/// What a data channel puts on the wire for a frame, measured in the lab (`cargo xtask bench
/// lab`, a packet capture on its bridge, Chromium's dcsctp over DTLS 1.3): full packets carry
/// 1,210 bytes of UDP payload, 1,160 of them frame bytes; each packet costs 78 bytes of
/// IP/UDP/DTLS/SCTP headers; a bare SACK is 78 bytes on the wire, and a receiver sent about one
/// per packet it received (a single-packet control frame gets its own; a chunk's train about
/// one per two). Without these the simulator's uplinks carried ~1.3–1.45× what the lab's did
/// (a page's tbf counted 1.33–1.48× the chunk bytes it uploaded) and its savings were fiction
/// on scarce uplinks.
pub mod wire {
    /// Frame bytes per full packet.
    pub const PACKET_PAYLOAD: usize = 1160;
    /// IP + UDP + DTLS 1.3 + SCTP common and DATA chunk headers of one packet.
    pub const PACKET_HEADERS: usize = 78;
    /// A SACK packet, all headers included.
    pub const SACK: usize = 78;

    /// Packets a frame of `len` bytes takes.
    pub fn packets(len: usize) -> usize {
        len.div_ceil(PACKET_PAYLOAD).max(1)
    }

    /// Bytes a frame of `len` bytes puts on the sender's uplink, `lost` of its packets sent
    /// twice.
    pub fn sent(len: usize, lost: usize) -> usize {
        len + packets(len) * PACKET_HEADERS + lost * (PACKET_PAYLOAD + PACKET_HEADERS)
    }

    /// Bytes the receiver's SACKs for a frame of `len` bytes put on the receiver's uplink.
    pub fn acks(len: usize) -> usize {
        packets(len).div_ceil(2) * SACK
    }
}

const MANIFEST_URL: &str = "sim://live/index.integrity.json";
/// The signaling server's default `slot_notice_ms`.
const SLOT_NOTICE_EVERY: Duration = Duration::from_millis(500);

fn t_secs(s: f64) -> Time {
    Time::from_secs_f64(s)
}

fn dur(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn seg_url(seq: u64) -> String {
    format!("sim://live/seg_{seq}.bin")
}

fn url_seq(url: &str) -> Option<u64> {
    url.strip_prefix("sim://live/seg_")?
        .strip_suffix(".bin")?
        .parse()
        .ok()
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let rng = SmallRng::seed_from_u64(cfg.seed);
        // As the signaling server runs it: slot notices coalesced (sent every 500 ms, see
        // `Ev::SlotNotices`), `peer_left` only to members that knew the leaver.
        let registry = Registry::new(RegistryConfig {
            defer_slot_notices: true,
            peer_left_only_if_known: true,
            ..RegistryConfig::default()
        });
        Sim {
            rng,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_ev: 0,
            viewers: Vec::new(),
            links: BTreeMap::new(),
            registry,
            segments: BTreeMap::new(),
            swarm: "sim://live|0".into(),
            http_bytes: 0,
            startups: Vec::new(),
            corrupt: 0,
            banned_by: BTreeMap::new(),
            played: 0,
            processed: 0,
            uplink_wire: [0; 6],
            uplink_frames: [0; 6],
            cfg,
        }
    }

    fn at(&mut self, t: Time, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        let key = id as usize;
        self.events.insert(key, ev);
        self.queue.push(Reverse((t.max(self.now), id, key)));
    }

    /// Runs the simulation to the end and reports.
    pub fn run(mut self) -> Report {
        let n = self.cfg.viewers;
        let bad_count = (self.cfg.bad_peers * n as f64).round() as usize;
        for i in 0..n {
            let t = self.rng.r#gen::<f64>() * self.cfg.join_window_secs;
            let bad = i < bad_count;
            self.spawn_viewer(t_secs(t), bad);
        }
        self.at(Time::ZERO + SLOT_NOTICE_EVERY, Ev::SlotNotices);
        if self.cfg.churn_pct_per_min > 0.0 {
            let t = self.churn_gap();
            self.at(t_secs(t), Ev::Churn);
        }
        let end = t_secs(self.cfg.seconds);
        while let Some(Reverse((t, _, key))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            let Some(ev) = self.events.remove(&key) else {
                continue;
            };
            self.processed += 1;
            self.handle(ev);
        }
        self.report(bad_count)
    }

    fn churn_gap(&mut self) -> f64 {
        // Poisson: rate = viewers × pct / 100 per minute.
        let rate = self.cfg.viewers as f64 * self.cfg.churn_pct_per_min / 100.0 / 60.0;
        let u: f64 = self.rng.r#gen::<f64>().max(1e-12);
        -u.ln() / rate
    }

    fn spawn_viewer(&mut self, t: Time, bad: bool) -> V {
        let v = self.viewers.len();
        let mut core_cfg = self.cfg.core.clone();
        core_cfg.swarm = self.swarm.clone();
        core_cfg.seed = self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(v as u64);
        core_cfg.manifest_url = Some(MANIFEST_URL.into());
        core_cfg.manifest_poll = dur(self.cfg.manifest_poll_secs);
        core_cfg.corrupt_uploads = bad;
        if self.cfg.http_only {
            core_cfg.p2p = false;
            core_cfg.upload = false;
        }
        let signal_ms = self.cfg.signal_ms * (0.5 + self.rng.r#gen::<f64>());
        self.viewers.push(Viewer {
            core: PeerCore::new_at(core_cfg, t),
            alive: false,
            bad,
            player: Player {
                joined: t,
                started: None,
                start_seq: None,
                next_needed: 0,
                ready: BTreeSet::new(),
                wanted: BTreeSet::new(),
                stalled_since: None,
                stall_total: Duration::ZERO,
                known_max: None,
            },
            up_free: Time::ZERO,
            down_free: Time::ZERO,
            timer: None,
            http_active: BTreeSet::new(),
            signal_ms,
            conns: BTreeMap::new(),
        });
        self.at(t, Ev::Join(v));
        v
    }

    fn id(v: V) -> PeerId {
        v as PeerId + 1
    }

    fn idx(p: PeerId) -> V {
        (p as usize).saturating_sub(1)
    }

    fn rtt(&self, a: V, b: V) -> f64 {
        // Deterministic per pair, uniform in [min, max] ms.
        let (x, y) = (a.min(b) as u64, a.max(b) as u64);
        let h = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ y.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
            .wrapping_add(self.cfg.seed)
            .wrapping_mul(0x1656_67B1_9E37_79F9);
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        (self.cfg.rtt_min_ms + u * (self.cfg.rtt_max_ms - self.cfg.rtt_min_ms)) / 1000.0
    }

    // ------------------------------------------------------------------ origin model

    fn segment(&mut self, seq: u64) -> (Bytes, SegmentManifest) {
        if let Some(s) = self.segments.get(&seq) {
            return s.clone();
        }
        let mean = self.cfg.bitrate_bps * self.cfg.segment_secs / 8.0;
        let mut r =
            SmallRng::seed_from_u64(self.cfg.seed ^ seq.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let len = (mean * (0.85 + 0.3 * r.r#gen::<f64>())) as usize;
        let mut data = vec![0u8; len];
        r.fill_bytes(&mut data);
        let data = Bytes::from(data);
        let m = SegmentManifest::compute(seq, format!("seg_{seq}.bin"), &data);
        self.segments.insert(seq, (data.clone(), m.clone()));
        // Bounded cache: live viewers only need recent segments.
        if !self.cfg.vod && self.segments.len() > 64 {
            self.segments.pop_first();
        }
        (data, m)
    }

    fn total_vod_segments(&self) -> u64 {
        (self.cfg.seconds / self.cfg.segment_secs) as u64 + 2
    }

    /// The segments the origin lists at `now` (its playlist window; the whole VOD).
    fn listed(&self) -> Option<(u64, u64)> {
        if self.cfg.vod {
            return Some((0, self.total_vod_segments() - 1));
        }
        let newest = self.live_newest();
        if newest < 0 {
            return None;
        }
        let first = (newest - self.cfg.playlist_window as i64 + 1).max(0) as u64;
        Some((first, newest as u64))
    }

    /// Newest live segment the origin lists at `now` (the response left it one latency ago).
    fn live_newest(&self) -> i64 {
        let t_origin = self.now - dur(self.cfg.origin_ms / 1000.0);
        // The live stream has been running for a minute when the simulation starts, so early
        // joiners see a full playlist window, as with a real encoder.
        ((t_origin.as_secs_f64() + 60.0) / self.cfg.segment_secs).floor() as i64 - 1
    }

    // ------------------------------------------------------------------ events

    fn input(&mut self, v: V, input: Input) {
        if self.viewers[v].alive {
            self.viewers[v].core.handle(self.now, input);
            self.drain(v);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(v) => {
                self.viewers[v].alive = true;
                self.viewers[v].player.joined = self.now;
                self.at(
                    self.now + dur(2.0 * self.cfg.origin_ms / 1000.0),
                    Ev::Poll(v),
                );
                self.drain(v);
            }
            Ev::Churn => {
                let alive: Vec<V> = (0..self.viewers.len())
                    .filter(|v| self.viewers[*v].alive)
                    .collect();
                if !alive.is_empty() {
                    let v = alive[self.rng.gen_range(0..alive.len())];
                    let bad = self.viewers[v].bad;
                    self.leave(v);
                    self.spawn_viewer(self.now + dur(1.0), bad);
                }
                let t = self.churn_gap();
                self.at(self.now + dur(t), Ev::Churn);
            }
            Ev::ToServer(v, msg) => self.server(v, msg),
            Ev::SignalUp(v) => {
                self.input(v, Input::SignalOpened);
                let lat = self.viewers[v].signal_ms / 1000.0;
                let msg = ServerMsg::Welcome {
                    peer_id: Self::id(v),
                    heartbeat_ms: 20_000,
                    ice_servers: Vec::new(),
                };
                self.at(self.now + dur(lat), Ev::ToViewer(v, msg));
            }
            Ev::ToViewer(v, msg) => self.input(v, Input::SignalMessage(msg)),
            Ev::Input(v, input) => self.input(v, input),
            Ev::Connected { v, peer } => {
                // `v` made the offer; ICE + DTLS + SCTP take about two round trips.
                if !self.viewers[v].alive || !self.viewers[peer].alive {
                    return;
                }
                let key = (v.min(peer), v.max(peer));
                let link = self.links.entry(key).or_default();
                link.epoch += 1;
                link.open = true;
                link.pipe_free = [Time::ZERO; 2];
                link.last_arrive = [Time::ZERO; 2];
                link.buffered = [0; 2];
                let epoch = link.epoch;
                let rtt = self.rtt(v, peer);
                self.at(self.now + dur(2.0 * rtt), Ev::Open { v, peer, epoch });
                let (v, peer) = (peer, v);
                self.at(self.now + dur(2.5 * rtt), Ev::Open { v, peer, epoch });
            }
            Ev::Open { v, peer, epoch } => {
                if self.link_live(v, peer, epoch)
                    && let Some(&conn) = self.viewers[v].conns.get(&peer)
                {
                    self.input(v, Input::RtcOpen { conn });
                }
            }
            Ev::Closed { v, peer, epoch } => {
                let key = (v.min(peer), v.max(peer));
                if self.links.get(&key).is_some_and(|l| l.epoch == epoch)
                    && let Some(conn) = self.viewers[v].conns.remove(&peer)
                {
                    self.input(v, Input::RtcClosed { conn });
                }
            }
            Ev::Arrive {
                to,
                from,
                epoch,
                frame,
            } => {
                let down = self.cfg.down_bps / 8.0;
                let wired = self.cfg.wire_overhead;
                let len = frame.len();
                let on_wire = if wired { wire::sent(len, 0) } else { len };
                let vw = &mut self.viewers[to];
                let t = self.now.max(vw.down_free) + dur(on_wire as f64 / down);
                vw.down_free = t;
                if wired && vw.alive {
                    // The receiver's SACKs share its uplink with what it uploads.
                    let up = self.cfg.up_bps / 8.0;
                    let acks = wire::acks(len);
                    vw.up_free = self.now.max(vw.up_free) + dur(acks as f64 / up);
                    self.uplink_wire[4] += acks as u64;
                    self.uplink_frames[4] += (acks / wire::SACK) as u64;
                }
                self.at(
                    t,
                    Ev::Frame {
                        to,
                        from,
                        epoch,
                        frame,
                    },
                );
            }
            Ev::Frame {
                to,
                from,
                epoch,
                frame,
            } => {
                if self.link_live(to, from, epoch)
                    && let Some(&conn) = self.viewers[to].conns.get(&from)
                {
                    self.input(to, Input::RtcMessage { conn, data: frame });
                }
            }
            Ev::HttpArrive { v, id, data, last } => {
                if !self.viewers[v].http_active.contains(&id) {
                    return;
                }
                self.http_bytes += data.len() as u64;
                let down = self.cfg.down_bps / 8.0;
                let vw = &mut self.viewers[v];
                let t = self.now.max(vw.down_free) + dur(data.len() as f64 / down);
                vw.down_free = t;
                self.at(t, Ev::HttpData { v, id, data, last });
            }
            Ev::HttpData { v, id, data, last } => {
                if !self.viewers[v].alive || !self.viewers[v].http_active.contains(&id) {
                    return;
                }
                self.viewers[v]
                    .core
                    .handle(self.now, Input::HttpData { id, data });
                if last {
                    self.viewers[v].http_active.remove(&id);
                    self.viewers[v]
                        .core
                        .handle(self.now, Input::HttpDone { id });
                }
                self.drain(v);
            }
            Ev::Manifest(v, url) => {
                let mut manifest = Manifest::default();
                if let Some((first, last)) = self.listed() {
                    for seq in first..=last {
                        manifest.segments.push(self.segment(seq).1);
                    }
                }
                self.input(v, Input::ManifestLoaded { url, manifest });
            }
            Ev::Sent {
                v,
                peer,
                epoch,
                len,
            } => {
                let key = (v.min(peer), v.max(peer));
                let dir = usize::from(v > peer);
                let Some(l) = self.links.get_mut(&key) else {
                    return;
                };
                if l.epoch != epoch || !l.open {
                    return;
                }
                l.buffered[dir] = l.buffered[dir].saturating_sub(len);
                let amount = l.buffered[dir];
                if let Some(&conn) = self.viewers[v].conns.get(&peer) {
                    self.input(v, Input::RtcBuffered { conn, amount });
                }
            }
            Ev::Release {
                from,
                to,
                epoch,
                frame,
            } => self.release(from, to, epoch, frame),
            Ev::Poll(v) => self.poll(v),
            Ev::PlayerCheck { v, seq } => self.player_check(v, seq),
            Ev::SlotNotices => {
                let notices = self.registry.take_slot_notices();
                self.notify(notices);
                self.at(self.now + SLOT_NOTICE_EVERY, Ev::SlotNotices);
            }
            Ev::Timer(v, t) => {
                if self.viewers[v].alive && self.viewers[v].timer == Some(t) {
                    self.viewers[v].timer = None;
                    self.input(v, Input::Timeout);
                }
            }
        }
    }

    fn link_live(&self, v: V, peer: V, epoch: u64) -> bool {
        let key = (v.min(peer), v.max(peer));
        self.viewers[v].alive
            && self
                .links
                .get(&key)
                .is_some_and(|l| l.open && l.epoch == epoch)
    }

    /// Closes the pair's transport; the other side hears of it half a round trip later.
    fn close_link(&mut self, v: V, other: V) {
        let key = (v.min(other), v.max(other));
        let Some(l) = self.links.get_mut(&key) else {
            return;
        };
        if !l.open {
            return;
        }
        l.open = false;
        let epoch = l.epoch;
        let rtt = self.rtt(v, other);
        self.at(
            self.now + dur(rtt / 2.0),
            Ev::Closed {
                v: other,
                peer: v,
                epoch,
            },
        );
    }

    fn leave(&mut self, v: V) {
        if !self.viewers[v].alive {
            return;
        }
        // The core says goodbye (its `leave` reaches the server) and closes its connections.
        self.viewers[v].core.handle(self.now, Input::Close);
        self.drain(v);
        self.viewers[v].alive = false;
        let others: Vec<V> = self
            .links
            .iter()
            .filter(|(k, l)| l.open && (k.0 == v || k.1 == v))
            .map(|(k, _)| if k.0 == v { k.1 } else { k.0 })
            .collect();
        for other in others {
            self.close_link(v, other);
        }
    }

    fn server(&mut self, v: V, msg: ClientMsg) {
        let me = Self::id(v);
        let notices = match msg {
            ClientMsg::Join { swarm, .. } => {
                if !self.viewers[v].alive {
                    return;
                }
                let j = self.registry.join(&swarm, me, &mut self.rng);
                let mut n = j.notices;
                n.push((me, j.reply));
                n
            }
            ClientMsg::WantPeers { swarm } => {
                if !self.viewers[v].alive || !self.registry.is_member(&swarm, me) {
                    return;
                }
                let peers = self.registry.introduce(&swarm, me, &mut self.rng);
                vec![(me, ServerMsg::Peers { swarm, peers })]
            }
            ClientMsg::Leave { swarm } => self.registry.leave(&swarm, me),
            ClientMsg::Signal { swarm, to, data } => {
                // Relayed only within pairs the server introduced, as the server does.
                if !self.viewers[v].alive
                    || self.registry.relay(&swarm, me, to) != swarm_registry::Relay::Allowed
                {
                    return;
                }
                vec![(
                    to,
                    ServerMsg::Signal {
                        swarm,
                        from: me,
                        data,
                    },
                )]
            }
            ClientMsg::Stats { .. } | ClientMsg::Ping => Vec::new(),
        };
        self.notify(notices);
    }

    /// Delivers the server's messages, each after its receiver's signaling latency.
    fn notify(&mut self, notices: Vec<(PeerId, ServerMsg)>) {
        for (p, m) in notices {
            let to = Self::idx(p);
            if to < self.viewers.len() {
                let lat = self.viewers[to].signal_ms / 1000.0;
                self.at(self.now + dur(lat), Ev::ToViewer(to, m));
            }
        }
    }

    /// Performs everything viewer `v`'s core asked for.
    fn drain(&mut self, v: V) {
        while let Some(out) = self.viewers[v].core.poll_output() {
            self.perform(v, out);
        }
        if self.cfg.check_invariants
            && let Err(e) = self.viewers[v].core.check_invariants()
        {
            panic!("viewer {v} at {:.3} s: {e}", self.now.as_secs_f64());
        }
        if self.viewers[v].alive
            && let Some(t) = self.viewers[v].core.poll_timeout()
        {
            let t = t.max(self.now + Duration::from_micros(100));
            if self.viewers[v]
                .timer
                .is_none_or(|old| t < old || old <= self.now)
            {
                self.viewers[v].timer = Some(t);
                self.at(t, Ev::Timer(v, t));
            }
        }
    }

    fn perform(&mut self, v: V, out: Output) {
        let lat = self.viewers[v].signal_ms / 1000.0;
        match out {
            Output::SignalConnect => self.at(self.now + dur(lat), Ev::SignalUp(v)),
            Output::SignalSend(msg) => self.at(self.now + dur(lat), Ev::ToServer(v, msg)),
            Output::SignalClose => {}
            Output::RtcCreate {
                conn,
                peer,
                offerer,
            } => {
                let peer = Self::idx(peer);
                if let Some(old) = self.viewers[v].conns.insert(peer, conn)
                    && old != conn
                {
                    self.close_link(v, peer);
                }
                if offerer {
                    // The sim has no SDP: a placeholder offer, created at once.
                    let data = SignalData::Offer { sdp: String::new() };
                    self.at(self.now, Ev::Input(v, Input::RtcLocal { conn, data }));
                }
            }
            Output::RtcRemote { conn, data } => match data {
                SignalData::Offer { .. } => {
                    self.at(self.now, Ev::Input(v, Input::RtcRemoteApplied { conn }));
                    let data = SignalData::Answer { sdp: String::new() };
                    self.at(self.now, Ev::Input(v, Input::RtcLocal { conn, data }));
                }
                SignalData::Answer { .. } => {
                    self.at(self.now, Ev::Input(v, Input::RtcRemoteApplied { conn }));
                    if let Some(peer) = self.peer_of(v, conn) {
                        self.at(self.now, Ev::Connected { v, peer });
                    }
                }
                SignalData::Candidate { .. } => {}
            },
            Output::RtcClose { conn } => {
                if let Some(peer) = self.peer_of(v, conn) {
                    self.viewers[v].conns.remove(&peer);
                    self.close_link(v, peer);
                }
            }
            Output::RtcSend { conn, frame } => {
                if let Some(peer) = self.peer_of(v, conn) {
                    self.send(v, peer, frame);
                }
            }
            Output::HttpStart { id, url, range } => {
                if let Some(seq) = url_seq(&url) {
                    self.http(v, id, seq, range);
                } else {
                    self.at(self.now, Ev::Input(v, Input::HttpFailed { id }));
                }
            }
            Output::HttpCancel { id } => {
                self.viewers[v].http_active.remove(&id);
            }
            Output::FetchManifest { url } => {
                let rtt = 2.0 * self.cfg.origin_ms / 1000.0;
                self.at(self.now + dur(rtt), Ev::Manifest(v, url));
            }
            Output::SegmentReady {
                seq,
                data,
                http_bytes,
                p2p_bytes,
                ..
            } => self.segment_ready(v, seq, data, http_bytes, p2p_bytes),
            Output::WantFailed { url } => {
                if let Some(seq) = url_seq(&url) {
                    self.viewers[v].player.wanted.remove(&seq);
                }
            }
            Output::Event(Event::PeerBanned { peer, .. }) => {
                self.banned_by.entry(Self::idx(peer)).or_default().insert(v);
            }
            Output::Event(_) => {}
        }
    }

    /// The peer viewer `v`'s connection `conn` goes to.
    fn peer_of(&self, v: V, conn: ConnId) -> Option<V> {
        self.viewers[v]
            .conns
            .iter()
            .find(|(_, c)| **c == conn)
            .map(|(p, _)| *p)
    }

    fn send(&mut self, from: V, to: V, frame: Bytes) {
        if to >= self.viewers.len() {
            return;
        }
        let key = (from.min(to), from.max(to));
        let dir = usize::from(from > to);
        let Some(link) = self.links.get(&key) else {
            return;
        };
        if !link.open {
            return;
        }
        let epoch = link.epoch;
        let len = frame.len() as f64;
        let rtt = self.rtt(from, to);
        let up = self.cfg.up_bps / 8.0;
        // A loss-limited congestion controller (Mathis): 1.22 · MSS / (RTT · √p).
        let pair_rate = if self.cfg.loss > 0.0 {
            (1.22 * 1200.0 / (rtt * self.cfg.loss.sqrt())).min(up)
        } else {
            up
        };
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        // Stage 1, the pair's congestion controller: frames leave the channel's send buffer at
        // no more than the pair's rate, in order. Stage 2 (`release`), the viewer's uplink: a
        // FIFO shared by all its channels. In that order, as on a real link: the controller
        // decides what goes on the wire, the uplink serialises it. (The other order let the
        // uplink "carry" frames a slow pair then held back, and a window later the drains of
        // several slow pairs landed together: the core's meter read 1.4 Mbit/s on 1 Mbit/s
        // links at 80–300 ms RTT and 3 % loss.)
        let start = self.now.max(link.pipe_free[dir]);
        let cc_done = start + dur(len / pair_rate);
        link.pipe_free[dir] = cc_done;
        link.buffered[dir] += frame.len();
        self.at(
            cc_done,
            Ev::Release {
                from,
                to,
                epoch,
                frame,
            },
        );
    }

    /// A frame the pair's congestion controller let go (see [`Self::send`]): serialised on
    /// `from`'s uplink, lost packets cost a round trip each, delivered in order.
    fn release(&mut self, from: V, to: V, epoch: u64, frame: Bytes) {
        let key = (from.min(to), from.max(to));
        let dir = usize::from(from > to);
        if self
            .links
            .get(&key)
            .is_none_or(|l| l.epoch != epoch || !l.open)
        {
            return;
        }
        let len = frame.len();
        let rtt = self.rtt(from, to);
        let up = self.cfg.up_bps / 8.0;
        let packets = wire::packets(len);
        let mut lost = 0;
        for _ in 0..packets {
            if self.rng.r#gen::<f64>() < self.cfg.loss {
                lost += 1;
            }
        }
        let on_wire = if self.cfg.wire_overhead {
            wire::sent(len, lost)
        } else {
            len
        };
        // [`UPLINK_KINDS`]' index (decoding is zero-copy for chunks, the bulk of frames).
        let kind = match Frame::decode_bytes(frame.clone()).as_ref().map(Frame::kind) {
            Ok("chunk") => 0,
            Ok("have") => 1,
            Ok("status") => 2,
            _ => 3,
        };
        let resent = if self.cfg.wire_overhead {
            lost * (wire::PACKET_PAYLOAD + wire::PACKET_HEADERS)
        } else {
            0
        };
        self.uplink_frames[kind] += 1;
        self.uplink_wire[kind] += (on_wire - resent) as u64;
        if resent > 0 {
            self.uplink_wire[5] += resent as u64;
            self.uplink_frames[5] += lost as u64;
        }
        let vw = &mut self.viewers[from];
        let t_up = self.now.max(vw.up_free) + dur(on_wire as f64 / up);
        vw.up_free = t_up;
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        let arrive = (t_up + dur(rtt / 2.0 + lost as f64 * rtt)).max(link.last_arrive[dir]);
        link.last_arrive[dir] = arrive;
        self.at(
            t_up,
            Ev::Sent {
                v: from,
                peer: to,
                epoch,
                len,
            },
        );
        self.at(
            arrive,
            Ev::Arrive {
                to,
                from,
                epoch,
                frame,
            },
        );
    }

    fn http(&mut self, v: V, id: u64, seq: u64, range: Option<(u64, u64)>) {
        let (data, _) = self.segment(seq);
        let (start, end) = range.unwrap_or((0, data.len() as u64));
        let end = end.min(data.len() as u64);
        let start = start.min(end);
        self.viewers[v].http_active.insert(id);
        // Request travels, the first byte comes back; the origin (a CDN edge) sends at 50 Mbit/s
        // per connection, the viewer's downlink does the rest.
        let origin_rate = 50_000_000.0 / 8.0;
        let t0 = self.now + dur(2.0 * self.cfg.origin_ms / 1000.0);
        let mut pos = start;
        let piece = 16 * 1024;
        if start == end {
            self.at(
                t0,
                Ev::HttpArrive {
                    v,
                    id,
                    data: Bytes::new(),
                    last: true,
                },
            );
            return;
        }
        while pos < end {
            let e = (pos + piece).min(end);
            let t = t0 + dur((e - start) as f64 / origin_rate);
            let slice = data.slice(pos as usize..e as usize);
            self.at(
                t,
                Ev::HttpArrive {
                    v,
                    id,
                    data: slice,
                    last: e == end,
                },
            );
            pos = e;
        }
    }

    // ------------------------------------------------------------------ player

    fn deadline(&self, v: V, seq: u64) -> Time {
        let p = &self.viewers[v].player;
        let d = self.cfg.segment_secs;
        match (p.started, p.start_seq) {
            (Some(ts), Some(s0)) => {
                if p.stalled_since.is_some() && seq == p.next_needed {
                    return self.now;
                }
                ts + p.stall_total + dur(seq.saturating_sub(s0) as f64 * d)
            }
            (_, Some(s0)) => self.now + dur(seq.saturating_sub(s0) as f64 * d),
            _ => self.now,
        }
    }

    /// The player's playlist refresh (hls.js polls a live playlist every target duration).
    fn poll(&mut self, v: V) {
        if !self.viewers[v].alive {
            return;
        }
        let d = self.cfg.segment_secs;
        let Some((first, last)) = self.listed() else {
            self.at(self.now + dur(d), Ev::Poll(v));
            return;
        };
        let p = &mut self.viewers[v].player;
        p.known_max = Some(p.known_max.map_or(last, |k| k.max(last)));
        if p.start_seq.is_none() {
            let s0 = if self.cfg.vod {
                0
            } else {
                last.saturating_sub(self.cfg.live_delay_segments - 1)
                    .max(first)
            };
            p.start_seq = Some(s0);
            p.next_needed = s0;
        }
        self.want_more(v);
        self.drain(v);
        if !self.cfg.vod {
            self.at(self.now + dur(d), Ev::Poll(v));
        }
    }

    fn want(&mut self, v: V, seq: u64) {
        let deadline = self.deadline(v, seq);
        let input = Input::Want {
            url: seg_url(seq),
            seq: Some(seq),
            deadline,
            duration: dur(self.cfg.segment_secs),
        };
        self.viewers[v].core.handle(self.now, input);
    }

    fn want_more(&mut self, v: V) {
        let p = &self.viewers[v].player;
        let Some(known) = p.known_max else { return };
        let ahead = (self.cfg.buffer_ahead_secs / self.cfg.segment_secs).ceil() as u64;
        let last = known.min(p.next_needed + ahead);
        let from = p.next_needed;
        for seq in from..=last {
            let p = &self.viewers[v].player;
            if p.wanted.contains(&seq) || p.ready.contains(&seq) {
                continue;
            }
            self.viewers[v].player.wanted.insert(seq);
            self.want(v, seq);
        }
    }

    fn segment_ready(&mut self, v: V, seq: u64, data: Bytes, http: u64, p2p: u64) {
        let _ = (http, p2p);
        let truth = self.segment(seq).0;
        if truth != data {
            self.corrupt += 1;
        }
        let d = self.cfg.segment_secs;
        let p = &mut self.viewers[v].player;
        p.wanted.remove(&seq);
        if seq < p.next_needed {
            return;
        }
        p.ready.insert(seq);
        if p.started.is_none() && Some(seq) == p.start_seq {
            p.started = Some(self.now);
            let startup = self.now.since(p.joined).as_secs_f64() * 1000.0;
            self.startups.push(startup);
            p.ready.remove(&seq);
            p.next_needed = seq + 1;
            self.played += 1;
            self.at(self.now + dur(d), Ev::PlayerCheck { v, seq: seq + 1 });
        } else if let Some(since) = p.stalled_since
            && seq == p.next_needed
        {
            p.stall_total += self.now.since(since);
            p.stalled_since = None;
            p.ready.remove(&seq);
            p.next_needed = seq + 1;
            self.played += 1;
            self.at(self.now + dur(d), Ev::PlayerCheck { v, seq: seq + 1 });
        }
        self.want_more(v);
    }

    fn player_check(&mut self, v: V, seq: u64) {
        if !self.viewers[v].alive {
            return;
        }
        let d = self.cfg.segment_secs;
        let p = &mut self.viewers[v].player;
        if p.next_needed != seq || p.stalled_since.is_some() {
            return;
        }
        if p.ready.remove(&seq) {
            p.next_needed = seq + 1;
            self.played += 1;
            self.at(self.now + dur(d), Ev::PlayerCheck { v, seq: seq + 1 });
            self.want_more(v);
        } else {
            p.stalled_since = Some(self.now);
            if self.cfg.trace_stalls {
                eprintln!(
                    "stall t={:.2} v={v} started={:.2} {}",
                    self.now.as_secs_f64(),
                    p.started.map_or(0.0, |t| t.as_secs_f64()),
                    self.viewers[v].core.describe_segment(seq)
                );
            }
            self.viewers[v].core.handle(self.now, Input::Stall);
            // Urgent now: re-want with the current time as deadline.
            if self.viewers[v].player.wanted.contains(&seq) {
                self.want(v, seq);
            }
            self.want_more(v);
        }
        self.drain(v);
    }

    fn report(&self, bad: usize) -> Report {
        let mut r = Report {
            viewers: self.cfg.viewers,
            seconds: self.cfg.seconds,
            limit: 1.0 - 1.0 / self.cfg.viewers.max(1) as f64,
            http_bytes: self.http_bytes,
            corrupt_to_player: self.corrupt,
            bad,
            joins: self.viewers.len(),
            segments_played: self.played,
            events: self.processed,
            uplink_wire: self.uplink_wire,
            uplink_frames: self.uplink_frames,
            ..Default::default()
        };
        r.bound = r.limit.min(self.cfg.up_bps / self.cfg.bitrate_bps.max(1.0));
        r.up_mbps = self.cfg.up_bps / 1e6;
        let (mut honest_http, mut honest_p2p) = (0u64, 0u64);
        let mut received = 0u64;
        for vw in &self.viewers {
            let s = vw.core.stats();
            received += s.http_bytes + s.p2p_bytes;
            r.uploaded_bytes += s.uploaded_bytes;
            r.dup_http += s.dup_http_bytes;
            r.dup_p2p += s.dup_p2p_bytes;
            if !vw.bad {
                honest_http += s.delivered_http_bytes;
                honest_p2p += s.delivered_p2p_bytes;
            }
            r.stalls += s.stalls as u64;
            r.p2p_bytes += s.p2p_bytes;
            r.delivered_http += s.delivered_http_bytes;
            r.delivered_p2p += s.delivered_p2p_bytes;
            r.http_designated += s.http_designated;
            r.http_backup += s.http_backup;
            r.http_late += s.http_late;
            r.http_alone += s.http_alone;
            r.http_share += s.http_share;
            r.peer_timeouts += s.peer_request_timeouts;
            r.manifest_fetches += s.manifest_fetches;
            r.serve_busy += s.serve_busy;
            for (a, b) in r.chunk_ms.iter_mut().zip(s.chunk_ms) {
                *a += b;
            }
            if s.uplink_bps > 0 {
                r.uplinks_measured += 1;
                r.uplink_measured_mean += s.uplink_bps as f64;
            }
        }
        r.uplink_measured_mean /= r.uplinks_measured.max(1) as f64;
        r.offload_honest = honest_p2p as f64 / (honest_http + honest_p2p).max(1) as f64;
        r.received_unplayed = received.saturating_sub(r.delivered_http + r.delivered_p2p);
        r.uploaded_unreceived = r.uploaded_bytes.saturating_sub(r.p2p_bytes);
        let total = r.delivered_http + r.delivered_p2p;
        r.offload = if total == 0 {
            0.0
        } else {
            r.delivered_p2p as f64 / total as f64
        };
        let mut st = self.startups.clone();
        st.sort_by(|a, b| a.total_cmp(b));
        r.startup_ms_p50 = st.get(st.len() / 2).copied().unwrap_or(0.0);
        for (target, by) in &self.banned_by {
            let honest_banners = by.iter().any(|b| !self.viewers[*b].bad);
            if self.viewers[*target].bad {
                if honest_banners {
                    r.banned_bad += 1;
                }
            } else {
                r.banned_honest += 1;
            }
        }
        r
    }
}

/// Runs one simulation.
pub fn run(cfg: SimConfig) -> Report {
    Sim::new(cfg).run()
}
