//! Metrics, exposed at `/metrics` in the Prometheus text format (0.0.4) through
//! `prometheus-client`.
//!
//! Every series exists from the start: labels come from fixed enums here, never from clients,
//! so the exposition stays bounded (about 150 series). Hot paths hold clones of the series
//! (`Counter` is an `Arc<AtomicU64>`): counting is one atomic add, never a family lookup.
//!
//! Values that are a state rather than an event (connections, swarms, members) are set just
//! before each scrape ([`Metrics::set_live`]); the `process_*` series are read from `/proc` at
//! each scrape ([`ProcessCollector`]).
//!
//! Ratios are not exported: a since-start ratio hides what happens now. Offload is
//! `rate(signaling_p2p_bytes_total[5m]) / (rate(signaling_p2p_bytes_total[5m]) +
//! rate(signaling_http_bytes_total[5m]))` in PromQL (`deploy/grafana/signaling.json`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use protocol::signaling::ErrorCode;

pub const MSG_KINDS: [&str; 7] = [
    "join",
    "want_peers",
    "leave",
    "signal",
    "stats",
    "ping",
    "other",
];

pub const ERROR_CODES: [ErrorCode; 12] = ErrorCode::ALL;

/// Why a connection was refused or closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// `Origin` not in the allow-list (HTTP 403, before the upgrade).
    Origin = 0,
    /// `max_connections` reached.
    ServerFull,
    /// `max_conns_per_ip` reached.
    PerIp,
    /// Error budget exhausted (repeated errors, rate limit exceeded hard).
    Abuse,
    /// Outbox overflowed with messages that cannot be dropped, or a write timed out.
    SlowConsumer,
    /// Nothing received for `idle_factor × heartbeat`.
    Idle,
    /// Frame over the hard size cap.
    Oversized,
    /// New connection while shutting down.
    ShuttingDown,
}

pub const REJECT_NAMES: [&str; 8] = [
    "origin",
    "server_full",
    "per_ip",
    "abuse",
    "slow_consumer",
    "idle",
    "oversized",
    "shutting_down",
];

/// Why a `signal` was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRefused {
    /// `to` is not a member of the swarm (left, never was, or is the sender).
    UnknownPeer = 0,
    /// Both are members, but the server never introduced one to the other.
    NotIntroduced,
    /// The handshake data is over the size limits or empty.
    BadData,
}

pub const RELAY_REFUSED_NAMES: [&str; 3] = ["unknown_peer", "not_introduced", "bad_data"];

/// Which way a relayed `signal` went, for the latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPath {
    /// Received and queued for the receiver on the same node (the owner's check there too).
    Local = 0,
    /// Crossed NATS once or twice (sender's node → owner → receiver's node).
    Cluster,
}

pub const RELAY_PATH_NAMES: [&str; 2] = ["local", "cluster"];

/// Bounds of `signaling_relay_latency_seconds`: 50 µs (a local relay on an idle node) to 5 s
/// (a saturated cluster), about ×2.5 apart.
pub const RELAY_LATENCY_BUCKETS_S: [f64; 13] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
];
const RELAY_LATENCY_TOP_BUCKETS_S: [f64; 3] = [1.0, 2.5, 5.0];

/// Microseconds since the Unix epoch: the stamp a relay carries from the node that received
/// it. Wall clock, not `Instant`, because it is compared on another node; on different hosts
/// the cluster path's latency is off by their clock offset (NTP keeps it to about a
/// millisecond), and a stamp from the future counts as 0.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

type Labels = Vec<(&'static str, &'static str)>;

/// Registers a counter family over fixed label values; returns one handle per value.
fn counters<const N: usize>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<Labels, Counter>::default();
    reg.register(name, help, family.clone());
    values.map(|v| family.get_or_create(&vec![(label, v)]).clone())
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    reg.register(name, help, c.clone());
    c
}

fn gauge(reg: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    reg.register(name, help, g.clone());
    g
}

fn relay_histogram() -> Histogram {
    Histogram::new(
        RELAY_LATENCY_BUCKETS_S
            .into_iter()
            .chain(RELAY_LATENCY_TOP_BUCKETS_S),
    )
}

/// The server's own series (the integrity service and the cluster register theirs next to
/// them, `AppState::new`).
#[derive(Debug)]
pub struct Metrics {
    pub connections_total: Counter,
    pub messages_in: [Counter; 7],
    pub messages_out: Counter,
    pub relays: Counter,
    pub relays_dropped: Counter,
    relays_refused: [Counter; 3],
    stats_rejected: [Counter; 3],
    errors: [Counter; 12],
    rejects: [Counter; 8],
    pub binary_frames: Counter,
    pub http_bytes: Counter,
    pub p2p_bytes: Counter,
    pub uploaded_bytes: Counter,
    pub stalls: Counter,
    pub integrity_failures: Counter,
    relay_latency: [Histogram; 2],
    connections: Gauge,
    swarms: Gauge,
    members: Gauge,
}

pub fn kind_index(kind: &str) -> usize {
    MSG_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(MSG_KINDS.len() - 1)
}

pub fn code_index(code: ErrorCode) -> usize {
    ERROR_CODES.iter().position(|c| *c == code).unwrap_or(0)
}

impl Metrics {
    /// Creates the series and registers them in `reg`. Counter names are given without
    /// `_total`: the encoder appends it.
    pub fn new(reg: &mut Registry) -> Self {
        let connections = gauge(reg, "signaling_connections", "Open WebSocket connections.");
        let swarms = gauge(
            reg,
            "signaling_swarms",
            "Swarms with at least one member (in a cluster: the swarms this node owns).",
        );
        let members = gauge(
            reg,
            "signaling_members",
            "Swarm memberships (a connection may hold several; in a cluster: in the swarms this node owns).",
        );
        let connections_total = counter(
            reg,
            "signaling_connections",
            "Connections accepted since start.",
        );
        let messages_in = counters(
            reg,
            "signaling_messages_in",
            "Client messages by type.",
            "type",
            MSG_KINDS,
        );
        let messages_out = counter(reg, "signaling_messages_out", "Messages sent to clients.");
        let relays = counter(
            reg,
            "signaling_relays",
            "Signal messages relayed (queued for the receiver, or sent to its node).",
        );
        let relays_dropped = counter(
            reg,
            "signaling_relays_dropped",
            "Relays dropped because the receiver's outbox was full.",
        );
        let binary_frames = counter(reg, "signaling_binary_frames", "Binary frames refused.");
        let http_bytes = counter(
            reg,
            "signaling_http_bytes",
            "Bytes viewers fetched over HTTP (reported; plausible deltas only).",
        );
        let p2p_bytes = counter(
            reg,
            "signaling_p2p_bytes",
            "Bytes viewers got from peers (reported).",
        );
        let uploaded_bytes = counter(
            reg,
            "signaling_uploaded_bytes",
            "Bytes viewers uploaded (reported).",
        );
        let stalls = counter(reg, "signaling_stalls", "Playback stalls (reported).");
        let integrity_failures = counter(
            reg,
            "signaling_integrity_failures",
            "Chunks that failed verification (reported).",
        );
        let relays_refused = counters(
            reg,
            "signaling_relays_refused",
            "Signals not relayed, by reason.",
            "reason",
            RELAY_REFUSED_NAMES,
        );
        let stats_rejected = counters(
            reg,
            "signaling_stats_rejected",
            "Implausible stats reports ignored, by reason.",
            "reason",
            crate::reports::REJECTED_NAMES,
        );
        let errors = counters(
            reg,
            "signaling_errors",
            "Error messages sent, by code.",
            "code",
            ERROR_CODES.map(ErrorCode::as_str),
        );
        let rejects = counters(
            reg,
            "signaling_rejects",
            "Connections refused or closed by the server, by reason.",
            "reason",
            REJECT_NAMES,
        );
        let latency =
            Family::<Labels, Histogram>::new_with_constructor(relay_histogram as fn() -> Histogram);
        reg.register(
            "signaling_relay_latency_seconds",
            "From a signal parsed on the sender's node to its relay queued in the receiver's outbox; path=cluster crossed NATS (wall clocks of two hosts).",
            latency.clone(),
        );
        let relay_latency =
            RELAY_PATH_NAMES.map(|p| latency.get_or_create(&vec![("path", p)]).clone());
        Metrics {
            connections_total,
            messages_in,
            messages_out,
            relays,
            relays_dropped,
            relays_refused,
            stats_rejected,
            errors,
            rejects,
            binary_frames,
            http_bytes,
            p2p_bytes,
            uploaded_bytes,
            stalls,
            integrity_failures,
            relay_latency,
            connections,
            swarms,
            members,
        }
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors[code_index(code)].inc();
    }

    pub fn reject(&self, r: Reject) {
        self.rejects[r as usize].inc();
    }

    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejects[r as usize].get()
    }

    pub fn relay_refused(&self, r: RelayRefused) {
        self.relays_refused[r as usize].inc();
    }

    pub fn stats_rejected(&self, r: crate::reports::Rejected) {
        self.stats_rejected[r as usize].inc();
    }

    pub fn relays_refused(&self, r: RelayRefused) -> u64 {
        self.relays_refused[r as usize].get()
    }

    pub fn errors_sent(&self, code: ErrorCode) -> u64 {
        self.errors[code_index(code)].get()
    }

    /// A relay queued for its receiver now; `t0_us`: [`unix_us`] when its `signal` was parsed.
    pub fn relay_delivered(&self, path: RelayPath, t0_us: u64) {
        let us = unix_us().saturating_sub(t0_us);
        self.relay_latency[path as usize].observe(Duration::from_micros(us).as_secs_f64());
    }

    /// The live values, set before a scrape.
    pub fn set_live(&self, connections: usize, swarms: usize, members: usize) {
        let g = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.connections.set(g(connections));
        self.swarms.set(g(swarms));
        self.members.set(g(members));
    }
}

pub fn offload(p2p: u64, http: u64) -> f64 {
    let total = p2p.saturating_add(http);
    if total == 0 {
        0.0
    } else {
        p2p as f64 / total as f64
    }
}

/// `process_*` series, read from `/proc/self` at each scrape (through the `procfs` crate:
/// clock ticks and page size need `sysconf`, which std does not expose and this crate may not
/// call itself without `unsafe`). Names and meanings are those of the Prometheus client
/// libraries' process collectors, so stock dashboards work. On other systems: none.
#[derive(Debug, Default)]
pub struct ProcessCollector;

#[cfg(target_os = "linux")]
impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        // A failed read leaves its series out of this scrape (Prometheus shows a gap) rather
        // than failing the whole exposition.
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let mut gauge = |name: &str, help: &str, v: f64| -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        if let Ok(stat) = me.stat() {
            let tps = procfs::ticks_per_second() as f64;
            let rss = stat.rss.saturating_mul(procfs::page_size());
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss as f64,
            )?;
            gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.vsize as f64,
            )?;
            gauge(
                "process_threads",
                "Number of OS threads in the process.",
                stat.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    boot as f64 + stat.starttime as f64 / tps,
                )?;
            }
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / tps);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
        }
        let mut gauge = |name: &str, help: &str, v: f64| -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        if let Ok(n) = me.fd_count() {
            gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                n as f64,
            )?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        _encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}
