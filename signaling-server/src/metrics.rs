//! Process-wide counters, rendered as Prometheus text. A fixed set of atomics (no labels chosen by
//! clients, so the exposition stays bounded); hand-rendered because ~40 lines of text do not
//! justify a metrics registry dependency.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub messages_in: [AtomicU64; 7],
    pub messages_out: AtomicU64,
    pub relays: AtomicU64,
    pub relays_dropped: AtomicU64,
    pub relays_refused: [AtomicU64; 3],
    pub stats_rejected: [AtomicU64; 3],
    pub errors: [AtomicU64; 12],
    pub rejects: [AtomicU64; 8],
    pub binary_frames: AtomicU64,
    pub http_bytes: AtomicU64,
    pub p2p_bytes: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub stalls: AtomicU64,
    pub integrity_failures: AtomicU64,
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
    pub fn error(&self, code: ErrorCode) {
        self.errors[code_index(code)].fetch_add(1, Relaxed);
    }

    pub fn reject(&self, r: Reject) {
        self.rejects[r as usize].fetch_add(1, Relaxed);
    }

    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejects[r as usize].load(Relaxed)
    }

    pub fn relay_refused(&self, r: RelayRefused) {
        self.relays_refused[r as usize].fetch_add(1, Relaxed);
    }

    pub fn stats_rejected(&self, r: crate::reports::Rejected) {
        self.stats_rejected[r as usize].fetch_add(1, Relaxed);
    }

    pub fn relays_refused(&self, r: RelayRefused) -> u64 {
        self.relays_refused[r as usize].load(Relaxed)
    }

    pub fn errors_sent(&self, code: ErrorCode) -> u64 {
        self.errors[code_index(code)].load(Relaxed)
    }

    /// Prometheus text exposition; `gauges` are the live values (connections, swarms, members).
    pub fn render(&self, connections: usize, swarms: usize, members: usize) -> String {
        let mut o = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        metric(
            "signaling_connections",
            "gauge",
            "Open WebSocket connections.",
        );
        metric(
            "signaling_swarms",
            "gauge",
            "Swarms with at least one member.",
        );
        metric(
            "signaling_members",
            "gauge",
            "Swarm memberships (a connection may hold several).",
        );
        let _ = writeln!(
            o,
            "signaling_connections {connections}\nsignaling_swarms {swarms}\nsignaling_members {members}"
        );
        let c = |a: &AtomicU64| a.load(Relaxed);
        let _ = writeln!(
            o,
            "# HELP signaling_connections_total Connections accepted since start.\n# TYPE signaling_connections_total counter\nsignaling_connections_total {}",
            c(&self.connections_total)
        );
        let _ = writeln!(
            o,
            "# HELP signaling_messages_in_total Client messages by type.\n# TYPE signaling_messages_in_total counter"
        );
        for (k, a) in MSG_KINDS.iter().zip(&self.messages_in) {
            let _ = writeln!(o, "signaling_messages_in_total{{type=\"{k}\"}} {}", c(a));
        }
        let simple: [(&str, &str, &AtomicU64); 9] = [
            (
                "signaling_messages_out_total",
                "Messages sent to clients.",
                &self.messages_out,
            ),
            (
                "signaling_relays_total",
                "Signal messages relayed.",
                &self.relays,
            ),
            (
                "signaling_relays_dropped_total",
                "Relays dropped because the receiver's outbox was full.",
                &self.relays_dropped,
            ),
            (
                "signaling_binary_frames_total",
                "Binary frames refused.",
                &self.binary_frames,
            ),
            (
                "signaling_http_bytes_total",
                "Bytes viewers fetched over HTTP (reported; plausible deltas only).",
                &self.http_bytes,
            ),
            (
                "signaling_p2p_bytes_total",
                "Bytes viewers got from peers (reported).",
                &self.p2p_bytes,
            ),
            (
                "signaling_uploaded_bytes_total",
                "Bytes viewers uploaded (reported).",
                &self.uploaded_bytes,
            ),
            (
                "signaling_stalls_total",
                "Playback stalls (reported).",
                &self.stalls,
            ),
            (
                "signaling_integrity_failures_total",
                "Chunks that failed verification (reported).",
                &self.integrity_failures,
            ),
        ];
        for (name, help, a) in simple {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c(a)
            );
        }
        let _ = writeln!(
            o,
            "# HELP signaling_relays_refused_total Signals not relayed, by reason.\n# TYPE signaling_relays_refused_total counter"
        );
        for (r, a) in RELAY_REFUSED_NAMES.iter().zip(&self.relays_refused) {
            let _ = writeln!(
                o,
                "signaling_relays_refused_total{{reason=\"{r}\"}} {}",
                c(a)
            );
        }
        let _ = writeln!(
            o,
            "# HELP signaling_stats_rejected_total Implausible stats reports ignored, by reason.\n# TYPE signaling_stats_rejected_total counter"
        );
        for (r, a) in crate::reports::REJECTED_NAMES
            .iter()
            .zip(&self.stats_rejected)
        {
            let _ = writeln!(
                o,
                "signaling_stats_rejected_total{{reason=\"{r}\"}} {}",
                c(a)
            );
        }
        let _ = writeln!(
            o,
            "# HELP signaling_errors_total Error messages sent, by code.\n# TYPE signaling_errors_total counter"
        );
        for (code, a) in ERROR_CODES.iter().zip(&self.errors) {
            let _ = writeln!(
                o,
                "signaling_errors_total{{code=\"{}\"}} {}",
                code.as_str(),
                c(a)
            );
        }
        let _ = writeln!(
            o,
            "# HELP signaling_rejects_total Connections refused or closed by the server, by reason.\n# TYPE signaling_rejects_total counter"
        );
        for (r, a) in REJECT_NAMES.iter().zip(&self.rejects) {
            let _ = writeln!(o, "signaling_rejects_total{{reason=\"{r}\"}} {}", c(a));
        }
        let (p2p, http) = (c(&self.p2p_bytes), c(&self.http_bytes));
        let _ = writeln!(
            o,
            "# HELP signaling_offload_ratio p2p / (p2p + http) over all reported bytes.\n# TYPE signaling_offload_ratio gauge\nsignaling_offload_ratio {}",
            offload(p2p, http)
        );
        o
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
