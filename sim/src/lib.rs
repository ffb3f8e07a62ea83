//! Seeded discrete-event simulator of a swarm of [`peer_core::PeerCore`]s.
//!
//! Virtual time, one event queue, one RNG: the same seed gives the same run. It models
//! * the **origin**: a live stream (or a VOD) of deterministic segments with their integrity
//!   manifest; responses stream in 16 KiB pieces after one round trip;
//! * **links**: each viewer has a downlink and an uplink (FIFO serialization); each pair of
//!   viewers has an RTT drawn from a range, a loss rate (each lost packet costs one RTT, and the
//!   pair's throughput is capped at what a loss-limited congestion controller gets, Mathis et
//!   al.), and delivers in order like a reliable ordered data channel;
//! * **signaling**: the real [`swarm_registry::Registry`] behind a fixed latency;
//!   connection setup costs the SDP relay plus two RTTs;
//! * a **model player** per viewer: joins, polls the playlist every segment duration (random
//!   phase), starts `live_delay` segments behind the live edge, plays at 1×, counts stalls;
//! * **churn** (viewers leaving and replaced) and **bad peers** that corrupt every chunk they
//!   upload.

pub use peer_core;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use peer_core::{Config, Event, Output, PeerCore, Time};
use protocol::signaling::{ClientMsg, ServerMsg};
use protocol::{Frame, PeerId, SegmentManifest};
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
    /// The driver polls the integrity manifest this often (live) and prefetches new segments;
    /// 0 turns it off (then only the player's playlist polls discover segments).
    pub manifest_poll_secs: f64,
    /// VOD: seconds of media the player buffers ahead.
    pub buffer_ahead_secs: f64,
    /// Peer-core configuration (swarm and seed are set per viewer).
    pub core: Config,
    /// Fetch everything from the origin (baseline).
    pub http_only: bool,
    /// Check every core's internal invariants after every event (tests).
    pub check_invariants: bool,
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
    /// Origin requests by cause (designated, backup, late, alone) and peer request timeouts.
    pub http_causes: [u64; 4],
    pub peer_timeouts: u64,
}

impl Report {
    pub fn to_json(&self) -> String {
        format!(
            "{{\"viewers\":{},\"seconds\":{},\"offload\":{:.4},\"limit\":{:.4},\"stalls\":{},\"startup_ms_p50\":{:.0},\"http_bytes\":{},\"p2p_bytes\":{},\"corrupt_to_player\":{},\"banned_bad\":{},\"banned_honest\":{}}}",
            self.viewers,
            self.seconds,
            self.offload,
            self.limit,
            self.stalls,
            self.startup_ms_p50,
            self.http_bytes,
            self.p2p_bytes,
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
             origin requests: {} designated, {} backup, {} deadline, {} alone; {} peer request timeouts",
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
            self.http_causes[0],
            self.http_causes[1],
            self.http_causes[2],
            self.http_causes[3],
            self.peer_timeouts
        )
    }
}

type V = usize;

#[derive(Debug)]
enum Ev {
    Join(V),
    Churn,
    ToServer(V, ClientMsg),
    ToViewer(V, ServerMsg),
    Offer {
        from: V,
        to: V,
    },
    Answer {
        from: V,
        to: V,
    },
    Open {
        v: V,
        peer: V,
        epoch: u64,
    },
    Closed {
        v: V,
        peer: V,
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
    Poll(V),
    ManifestPoll(V),
    PlayerCheck {
        v: V,
        seq: u64,
    },
    Timer(V, Time),
    /// A frame left `v`'s send buffer towards `peer`.
    Sent {
        v: V,
        peer: V,
        epoch: u64,
        len: usize,
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
    /// Newest segment the driver added to the core (playlist or manifest poll).
    added_max: Option<u64>,
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
}

#[derive(Default)]
struct Link {
    epoch: u64,
    open: bool,
    /// Per direction (from lower index, from higher index): pair pipe free time and the
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
}

fn t_secs(s: f64) -> Time {
    Time::from_secs_f64(s)
}

fn dur(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let rng = SmallRng::seed_from_u64(cfg.seed);
        let registry = Registry::new(RegistryConfig::default());
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
        if self.cfg.http_only {
            core_cfg.p2p = false;
            core_cfg.upload = false;
        }
        let signal_ms = self.cfg.signal_ms * (0.5 + self.rng.r#gen::<f64>());
        self.viewers.push(Viewer {
            core: PeerCore::new(core_cfg),
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
                added_max: None,
            },
            up_free: Time::ZERO,
            down_free: Time::ZERO,
            timer: None,
            http_active: BTreeSet::new(),
            signal_ms,
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

    // ------------------------------------------------------------------ events

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(v) => {
                self.viewers[v].alive = true;
                self.viewers[v].player.joined = self.now;
                let lat = self.viewers[v].signal_ms / 1000.0;
                let msg = ServerMsg::Welcome {
                    peer_id: Self::id(v),
                    heartbeat_ms: 20_000,
                };
                self.at(self.now + dur(2.0 * lat), Ev::ToViewer(v, msg));
                self.at(
                    self.now + dur(2.0 * self.cfg.origin_ms / 1000.0),
                    Ev::Poll(v),
                );
                if !self.cfg.vod && self.cfg.manifest_poll_secs > 0.0 {
                    let first = self.rng.r#gen::<f64>() * self.cfg.manifest_poll_secs;
                    self.at(self.now + dur(first), Ev::ManifestPoll(v));
                }
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
            Ev::ToViewer(v, msg) => {
                if self.viewers[v].alive {
                    self.viewers[v].core.handle_signal(self.now, msg);
                    self.drain(v);
                }
            }
            Ev::Offer { from, to } => {
                if !self.viewers[to].alive || !self.viewers[from].alive {
                    return;
                }
                if self.viewers[to]
                    .core
                    .accept_incoming(self.now, Self::id(from))
                {
                    let lat = (self.viewers[to].signal_ms + self.viewers[from].signal_ms) / 1000.0;
                    self.at(self.now + dur(lat), Ev::Answer { from: to, to: from });
                }
                self.drain(to);
            }
            Ev::Answer { from, to } => {
                // `to` made the offer; ICE + DTLS + SCTP take about two round trips.
                if !self.viewers[to].alive || !self.viewers[from].alive {
                    return;
                }
                let key = (from.min(to), from.max(to));
                let link = self.links.entry(key).or_default();
                link.epoch += 1;
                link.open = true;
                link.pipe_free = [Time::ZERO; 2];
                link.last_arrive = [Time::ZERO; 2];
                link.buffered = [0; 2];
                let epoch = link.epoch;
                let rtt = self.rtt(from, to);
                self.at(
                    self.now + dur(2.0 * rtt),
                    Ev::Open {
                        v: to,
                        peer: from,
                        epoch,
                    },
                );
                self.at(
                    self.now + dur(2.5 * rtt),
                    Ev::Open {
                        v: from,
                        peer: to,
                        epoch,
                    },
                );
            }
            Ev::Open { v, peer, epoch } => {
                let key = (v.min(peer), v.max(peer));
                let ok = self
                    .links
                    .get(&key)
                    .is_some_and(|l| l.open && l.epoch == epoch);
                if ok && self.viewers[v].alive {
                    self.viewers[v]
                        .core
                        .handle_channel_open(self.now, Self::id(peer));
                    self.drain(v);
                }
            }
            Ev::Closed { v, peer } => {
                if self.viewers[v].alive {
                    self.viewers[v]
                        .core
                        .handle_channel_closed(self.now, Self::id(peer));
                    self.drain(v);
                }
            }
            Ev::Arrive {
                to,
                from,
                epoch,
                frame,
            } => {
                let down = self.cfg.down_bps / 8.0;
                let vw = &mut self.viewers[to];
                let t = self.now.max(vw.down_free) + dur(frame.len() as f64 / down);
                vw.down_free = t;
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
                let key = (to.min(from), to.max(from));
                let ok = self
                    .links
                    .get(&key)
                    .is_some_and(|l| l.open && l.epoch == epoch);
                if ok && self.viewers[to].alive {
                    self.viewers[to]
                        .core
                        .handle_frame(self.now, Self::id(from), frame);
                    self.drain(to);
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
                self.viewers[v].core.handle_http_data(self.now, id, &data);
                if last {
                    self.viewers[v].http_active.remove(&id);
                    self.viewers[v].core.handle_http_done(self.now, id);
                }
                self.drain(v);
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
                if self.viewers[v].alive {
                    self.viewers[v]
                        .core
                        .handle_buffered(self.now, Self::id(peer), amount);
                    self.drain(v);
                }
            }
            Ev::Poll(v) => self.poll(v),
            Ev::ManifestPoll(v) => self.manifest_poll(v),
            Ev::PlayerCheck { v, seq } => self.player_check(v, seq),
            Ev::Timer(v, t) => {
                if self.viewers[v].alive && self.viewers[v].timer == Some(t) {
                    self.viewers[v].timer = None;
                    self.viewers[v].core.handle_timeout(self.now);
                    self.drain(v);
                }
            }
        }
    }

    fn leave(&mut self, v: V) {
        if !self.viewers[v].alive {
            return;
        }
        self.viewers[v].alive = false;
        let keys: Vec<(V, V)> = self
            .links
            .iter()
            .filter(|(k, l)| l.open && (k.0 == v || k.1 == v))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let other = if k.0 == v { k.1 } else { k.0 };
            if let Some(l) = self.links.get_mut(&k) {
                l.open = false;
            }
            let rtt = self.rtt(v, other);
            self.at(self.now + dur(rtt / 2.0), Ev::Closed { v: other, peer: v });
        }
        let lat = self.viewers[v].signal_ms / 1000.0;
        let swarm = self.swarm.clone();
        self.at(
            self.now + dur(lat),
            Ev::ToServer(v, ClientMsg::Leave { swarm }),
        );
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
            _ => Vec::new(),
        };
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
            match out {
                Output::Signal(msg) => {
                    let lat = self.viewers[v].signal_ms / 1000.0;
                    self.at(self.now + dur(lat), Ev::ToServer(v, msg));
                }
                Output::Connect { peer } => {
                    let to = Self::idx(peer);
                    if to < self.viewers.len() {
                        let lat = (self.viewers[v].signal_ms + self.viewers[to].signal_ms) / 1000.0;
                        self.at(self.now + dur(lat), Ev::Offer { from: v, to });
                    }
                }
                Output::Disconnect { peer, .. } => {
                    let other = Self::idx(peer);
                    let key = (v.min(other), v.max(other));
                    if let Some(l) = self.links.get_mut(&key)
                        && l.open
                    {
                        l.open = false;
                        let rtt = self.rtt(v, other);
                        self.at(self.now + dur(rtt / 2.0), Ev::Closed { v: other, peer: v });
                    }
                }
                Output::Send { peer, frame } => self.send(v, Self::idx(peer), frame),
                Output::HttpStart { id, seq, range, .. } => self.http(v, id, seq, range),
                Output::HttpCancel { id } => {
                    self.viewers[v].http_active.remove(&id);
                }
                Output::SegmentReady {
                    seq,
                    data,
                    http_bytes,
                    p2p_bytes,
                } => self.segment_ready(v, seq, data, http_bytes, p2p_bytes),
                Output::Event(Event::PeerBanned { peer, .. }) => {
                    self.banned_by.entry(Self::idx(peer)).or_default().insert(v);
                }
                Output::Event(_) => {}
            }
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

    fn send(&mut self, from: V, to: V, mut frame: Bytes) {
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
        if self.viewers[from].bad {
            frame = corrupt_chunk(frame);
        }
        let len = frame.len() as f64;
        let rtt = self.rtt(from, to);
        let up = self.cfg.up_bps / 8.0;
        // A loss-limited congestion controller (Mathis): 1.22 · MSS / (RTT · √p).
        let pair_rate = if self.cfg.loss > 0.0 {
            (1.22 * 1200.0 / (rtt * self.cfg.loss.sqrt())).min(up)
        } else {
            up
        };
        let vw = &mut self.viewers[from];
        let t_up = self.now.max(vw.up_free) + dur(len / up);
        vw.up_free = t_up;
        let packets = (frame.len() / 1200 + 1) as u32;
        let mut lost = 0;
        for _ in 0..packets {
            if self.rng.r#gen::<f64>() < self.cfg.loss {
                lost += 1;
            }
        }
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        let t_pipe = t_up.max(link.pipe_free[dir] + dur(len / pair_rate));
        link.pipe_free[dir] = t_pipe;
        let arrive = (t_pipe + dur(rtt / 2.0 + lost as f64 * rtt)).max(link.last_arrive[dir]);
        link.last_arrive[dir] = arrive;
        link.buffered[dir] += frame.len();
        let len = frame.len();
        self.at(
            t_pipe,
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

    fn poll(&mut self, v: V) {
        if !self.viewers[v].alive {
            return;
        }
        let d = self.cfg.segment_secs;
        // The playlist response left the origin one latency ago.
        let newest = self.live_newest();
        let (first, last) = if self.cfg.vod {
            (0, self.total_vod_segments() as i64 - 1)
        } else {
            (newest - self.cfg.playlist_window as i64 + 1, newest)
        };
        if last < 0 {
            self.at(self.now + dur(d), Ev::Poll(v));
            return;
        }
        let first = first.max(0) as u64;
        let last = last as u64;
        let from = self.viewers[v]
            .player
            .added_max
            .map_or(first, |k| (k + 1).max(first));
        for seq in from..=last {
            let (_, m) = self.segment(seq);
            let url = m.uri.clone();
            self.viewers[v].core.add_segment(self.now, m, url);
        }
        let p = &mut self.viewers[v].player;
        p.known_max = Some(p.known_max.map_or(last, |k| k.max(last)));
        p.added_max = Some(p.added_max.map_or(last, |k| k.max(last)));
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
            // hls.js refreshes a live playlist every target duration.
            self.at(self.now + dur(d), Ev::Poll(v));
        }
    }

    /// Newest live segment the origin lists at `now` (the response left it one latency ago).
    fn live_newest(&self) -> i64 {
        let t_origin = self.now - dur(self.cfg.origin_ms / 1000.0);
        // The live stream has been running for a minute when the simulation starts, so early
        // joiners see a full playlist window, as with a real encoder.
        ((t_origin.as_secs_f64() + 60.0) / self.cfg.segment_secs).floor() as i64 - 1
    }

    /// The driver's own poll of the integrity manifest: new live segments are prefetched.
    fn manifest_poll(&mut self, v: V) {
        if !self.viewers[v].alive {
            return;
        }
        let newest = self.live_newest();
        let started = self.viewers[v].player.start_seq.is_some();
        let known = self.viewers[v].player.added_max;
        if started && newest >= 0 && known.is_some_and(|k| (newest as u64) > k) {
            let from = known.map_or(0, |k| k + 1);
            for seq in from..=newest as u64 {
                let (_, m) = self.segment(seq);
                let url = m.uri.clone();
                self.viewers[v].core.add_segment(self.now, m, url);
                let deadline = self.deadline(v, seq);
                let _ = self.viewers[v]
                    .core
                    .prefetch_segment(self.now, seq, deadline);
            }
            self.viewers[v].player.added_max = Some(newest as u64);
            self.drain(v);
        }
        self.at(
            self.now + dur(self.cfg.manifest_poll_secs),
            Ev::ManifestPoll(v),
        );
    }

    fn want_more(&mut self, v: V) {
        let p = &self.viewers[v].player;
        let Some(known) = p.known_max else { return };
        let ahead = (self.cfg.buffer_ahead_secs / self.cfg.segment_secs).ceil() as u64;
        let last = known.min(p.next_needed + ahead);
        let from = p.next_needed;
        for seq in from..=last {
            if self.viewers[v].player.wanted.contains(&seq)
                || self.viewers[v].player.ready.contains(&seq)
            {
                continue;
            }
            let deadline = self.deadline(v, seq);
            if self.viewers[v]
                .core
                .want_segment(self.now, seq, deadline)
                .is_ok()
            {
                self.viewers[v].player.wanted.insert(seq);
            }
        }
    }

    fn segment_ready(&mut self, v: V, seq: u64, data: Bytes, http: u64, p2p: u64) {
        if std::env::var("SIM_TRACE_SEQ")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            == Some(seq)
        {
            let dl = self.deadline(v, seq);
            eprintln!(
                "ready seq={seq} v={v} t={:.2} slack={:.2} http={http} p2p={p2p} slot={:?}",
                self.now.as_secs_f64(),
                dl.as_secs_f64() - self.now.as_secs_f64(),
                self.viewers[v].core.slot()
            );
        }
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
            if std::env::var_os("SIM_DEBUG").is_some() {
                eprintln!(
                    "stall t={:.2} v={v} started={:.2} {}",
                    self.now.as_secs_f64(),
                    p.started.map_or(0.0, |t| t.as_secs_f64()),
                    self.viewers[v].core.describe_segment(seq)
                );
            }
            self.viewers[v].core.report_stall(self.now);
            // Urgent now: re-want with the current time as deadline.
            if self.viewers[v].player.wanted.contains(&seq) {
                let _ = self.viewers[v].core.want_segment(self.now, seq, self.now);
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
            ..Default::default()
        };
        let (mut honest_http, mut honest_p2p) = (0u64, 0u64);
        for vw in &self.viewers {
            let s = vw.core.stats();
            if !vw.bad {
                honest_http += s.delivered_http_bytes;
                honest_p2p += s.delivered_p2p_bytes;
            }
            r.stalls += s.stalls as u64;
            r.p2p_bytes += s.p2p_bytes;
            r.delivered_http += s.delivered_http_bytes;
            r.delivered_p2p += s.delivered_p2p_bytes;
            r.http_causes[0] += s.http_designated;
            r.http_causes[1] += s.http_backup;
            r.http_causes[2] += s.http_late;
            r.http_causes[3] += s.http_alone;
            r.peer_timeouts += s.peer_request_timeouts;
        }
        if std::env::var_os("SIM_VIEWERS").is_some() {
            for (v, vw) in self.viewers.iter().enumerate() {
                let s = vw.core.stats();
                eprintln!(
                    "v{v:>3} open {:>2} late {:>4} designated {:>3} offload {:.3} slot {:?}",
                    vw.core.open_peers().count(),
                    s.http_late,
                    s.http_designated,
                    s.offload(),
                    vw.core.slot()
                );
            }
        }
        r.offload_honest = honest_p2p as f64 / (honest_http + honest_p2p).max(1) as f64;
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

/// A tampered peer flips one byte in every chunk it uploads.
fn corrupt_chunk(frame: Bytes) -> Bytes {
    match Frame::decode_bytes(frame.clone()) {
        Ok(Frame::Chunk {
            req_id,
            seq,
            index,
            data,
        }) if !data.is_empty() => {
            let mut d = data.to_vec();
            d[0] ^= 0xff;
            Frame::Chunk {
                req_id,
                seq,
                index,
                data: Bytes::from(d),
            }
            .encode()
        }
        _ => frame,
    }
}

/// Runs one simulation.
pub fn run(cfg: SimConfig) -> Report {
    Sim::new(cfg).run()
}
