//! Server limits and settings. Every field is a clap flag with an env var (`SIGNAL_*`), so the
//! binary and the library share one definition and one set of defaults.

use std::time::Duration;

/// Limits and settings of one server. `Config::default()` is what the binary runs without flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Interval at which clients must send something (`ping`); told to them in `welcome`.
    #[arg(long, env = "SIGNAL_HEARTBEAT_MS", default_value_t = 30_000)]
    pub heartbeat_ms: u32,
    /// A connection that sent nothing for `idle_factor × heartbeat_ms` is closed.
    #[arg(long, env = "SIGNAL_IDLE_FACTOR", default_value_t = 3)]
    pub idle_factor: u32,
    /// Largest text message accepted (bytes of JSON). Larger ones get `error too_large`; frames
    /// over 2× this close the connection (the WebSocket layer refuses to buffer them).
    #[arg(long, env = "SIGNAL_MAX_MESSAGE_BYTES", default_value_t = protocol::signaling::MAX_SIGNAL_LEN)]
    pub max_message_bytes: usize,
    /// Sustained messages per second per connection (token bucket refill).
    #[arg(long, env = "SIGNAL_RATE_PER_S", default_value_t = 50.0)]
    pub rate_per_s: f32,
    /// Burst of messages per connection (token bucket size). ICE candidates come in bursts.
    #[arg(long, env = "SIGNAL_RATE_BURST", default_value_t = 200.0)]
    pub rate_burst: f32,
    /// Sustained `join`s per second per connection (a separate, stricter bucket: every join
    /// changes the swarm for everybody else). `leave` needs a previous join, so it is bounded too.
    #[arg(long, env = "SIGNAL_JOIN_RATE_PER_S", default_value_t = 0.5)]
    pub join_rate_per_s: f32,
    /// Burst of `join`s per connection (one per rendition a player may switch between).
    #[arg(long, env = "SIGNAL_JOIN_BURST", default_value_t = 4.0)]
    pub join_burst: f32,
    /// `slot` notices are coalesced: a member is told its latest slot at most once per this
    /// interval per swarm (0: at once, on every join and leave).
    #[arg(long, env = "SIGNAL_SLOT_NOTICE_MS", default_value_t = 500)]
    pub slot_notice_ms: u64,
    /// Largest plausible rate of each byte counter in `stats` reports, in Mbit/s (with 10 s of
    /// burst). Faster growth, counters going down and absurd `peers` are ignored and counted in
    /// `signaling_stats_rejected_total`.
    #[arg(long, env = "SIGNAL_STATS_MAX_MBPS", default_value_t = 200)]
    pub stats_max_mbps: u32,
    /// Errors a connection may cause in a burst before it is closed (refills 1 per 5 s).
    #[arg(long, env = "SIGNAL_ERROR_BUDGET", default_value_t = 10)]
    pub error_budget: u32,
    /// Swarms one connection may be in at once (one per rendition it plays).
    #[arg(long, env = "SIGNAL_MAX_SWARMS_PER_CONN", default_value_t = 4)]
    pub max_swarms_per_conn: usize,
    /// Members returned in `joined` / `peers`.
    #[arg(long, env = "SIGNAL_INTRO_PEERS", default_value_t = 8)]
    pub intro_peers: usize,
    /// Upper bound of the seeding slot count per swarm.
    #[arg(long, env = "SIGNAL_MAX_SLOTS", default_value_t = 256)]
    pub max_slots: u32,
    /// Open WebSocket connections in total; more get `error server_full` and are closed.
    #[arg(long, env = "SIGNAL_MAX_CONNECTIONS", default_value_t = 200_000)]
    pub max_connections: usize,
    /// Open connections per client address (an IPv4 address, or an IPv6 /64: one subscriber's
    /// prefix), counted from accept; more get `error rate_limited` and are closed.
    #[arg(long, env = "SIGNAL_MAX_CONNS_PER_IP", default_value_t = 64)]
    pub max_conns_per_ip: u32,
    /// Allowed `Origin` header values (comma separated, exact match, e.g.
    /// `https://player.example`). Empty: any origin. A request with another origin gets HTTP 403.
    #[arg(long, env = "SIGNAL_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// With an allow-list, refuse requests that carry no `Origin` at all (native clients send
    /// none; browsers always do, so this only matters against non-browser abuse).
    #[arg(long, env = "SIGNAL_REQUIRE_ORIGIN", default_value_t = false)]
    pub require_origin: bool,
    /// HMAC-SHA256 secret for join tokens (see `token.rs`); when set, `join` requires a token.
    #[arg(long, env = "SIGNAL_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Messages waiting for one slow client; further relays to it are dropped (and counted).
    #[arg(long, env = "SIGNAL_OUTBOX_MSGS", default_value_t = 64)]
    pub outbox_msgs: usize,
    /// Bytes waiting for one slow client (same drop policy as `outbox_msgs`).
    #[arg(long, env = "SIGNAL_OUTBOX_BYTES", default_value_t = 256 * 1024)]
    pub outbox_bytes: usize,
    /// A write to a client that does not finish within this time closes that client.
    #[arg(long, env = "SIGNAL_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// Initial WebSocket read buffer per connection (tungstenite's default is 128 KiB; a
    /// signaling message is usually < 1 KiB, and the buffer grows for larger frames).
    #[arg(long, env = "SIGNAL_READ_BUFFER_BYTES", default_value_t = 256)]
    pub read_buffer_bytes: usize,
    /// A client must send a complete HTTP request head within this time of connecting (or of
    /// its previous response, on a keep-alive connection): slowloris sockets are closed.
    #[arg(long, env = "SIGNAL_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// An HTTP connection (not yet a WebSocket) on which no byte moves for this long is closed.
    #[arg(long, env = "SIGNAL_HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub http_idle_timeout_ms: u64,
    /// A WebSocket that sends no message within this time of its `welcome` is closed (a viewer
    /// joins at once). Later silence is bounded by `heartbeat_ms × idle_factor`.
    #[arg(
        long,
        env = "SIGNAL_FIRST_MESSAGE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub first_message_timeout_ms: u64,
    /// Proxy addresses or CIDR networks whose `Forwarded` / `X-Forwarded-For` headers are
    /// believed (repeat or comma-separate). From anyone else, the socket address is the client's.
    #[arg(
        long = "trusted-proxy",
        env = "SIGNAL_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = http_guard::parse_cidr
    )]
    pub trusted_proxies: Vec<http_guard::IpNet>,
    /// Token for the operator endpoints (`/api/swarms`, `/`, `/dashboard`): `Authorization:
    /// Bearer <token>`, or HTTP Basic with the token as password (browsers). Without it, those
    /// endpoints answer local requests only. At least 16 bytes.
    #[arg(long, env = "SIGNAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// On shutdown clients are told to reconnect after `reconnect_min_ms` plus a random jitter of
    /// up to `reconnect_jitter_ms`, so they do not all come back at once.
    #[arg(long, env = "SIGNAL_RECONNECT_MIN_MS", default_value_t = 1_000)]
    pub reconnect_min_ms: u32,
    #[arg(long, env = "SIGNAL_RECONNECT_JITTER_MS", default_value_t = 10_000)]
    pub reconnect_jitter_ms: u32,
    /// Longest wait for clients to be told about a shutdown before the server stops anyway.
    #[arg(long, env = "SIGNAL_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
    /// Enables the integrity service (`/integrity`, see `integrity.rs`) for media playlists whose
    /// URL starts with one of these prefixes (repeat or comma-separate; an absolute http(s) URL
    /// with a path, e.g. `https://cdn.example/live/`). None: `/integrity` answers 404.
    #[arg(
        long = "integrity-origin",
        env = "SIGNAL_INTEGRITY_ORIGINS",
        value_delimiter = ','
    )]
    pub integrity_origins: Vec<String>,
    /// Interval at which the integrity service re-fetches a followed live playlist.
    #[arg(long, env = "SIGNAL_INTEGRITY_POLL_MS", default_value_t = 500)]
    pub integrity_poll_ms: u64,
    /// Playlists the integrity service follows at once; a request for another gets 503.
    #[arg(long, env = "SIGNAL_INTEGRITY_MAX_PLAYLISTS", default_value_t = 64)]
    pub integrity_max_playlists: usize,
    /// A followed playlist nobody asked about for this long is dropped (its memory freed).
    #[arg(long, env = "SIGNAL_INTEGRITY_IDLE_MS", default_value_t = 60_000)]
    pub integrity_idle_ms: u64,
    /// STUN/TURN server URLs handed to every viewer in `welcome` (repeat or comma-separate;
    /// `stun:host:3478`, `turn:host:3478?transport=udp`, `turns:host:5349`). Without any, viewers
    /// use the ICE servers of their page, or none (host candidates only: viewers on one network).
    #[arg(long = "ice-server", env = "SIGNAL_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<String>,
    /// Shared secret of the TURN server (coturn `use-auth-secret` + `static-auth-secret`): each
    /// viewer gets its own TURN credentials for the `turn:`/`turns:` URLs, valid
    /// `turn_ttl_s`. At least 16 bytes.
    #[arg(long, env = "SIGNAL_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Lifetime of the TURN credentials handed out (seconds). A viewer reconnecting gets new ones.
    #[arg(long, env = "SIGNAL_TURN_TTL_S", default_value_t = 3600)]
    pub turn_ttl_s: u64,
    /// NATS server URL (`nats://host:4222`) of a signaling cluster: nodes given the same URL
    /// and `--cluster-prefix` share swarms (see `cluster.rs`). Without it the node runs alone.
    #[arg(long, env = "SIGNAL_CLUSTER_NATS")]
    pub cluster_nats: Option<String>,
    /// Subject prefix of the cluster on NATS (several clusters can share one NATS server).
    #[arg(long, env = "SIGNAL_CLUSTER_PREFIX", default_value = "p2pcdn.signal")]
    pub cluster_prefix: String,
    /// Interval of the cluster heartbeats; a node silent for 4 of them is considered dead and
    /// its swarms move to the others.
    #[arg(long, env = "SIGNAL_CLUSTER_HEARTBEAT_MS", default_value_t = 500)]
    pub cluster_heartbeat_ms: u64,
    /// Messages waiting to be published to other nodes; further ones are dropped (and counted
    /// in `signaling_cluster_dropped_total`).
    #[arg(long, env = "SIGNAL_CLUSTER_QUEUE", default_value_t = 65_536)]
    pub cluster_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_ms: 30_000,
            idle_factor: 3,
            max_message_bytes: protocol::signaling::MAX_SIGNAL_LEN,
            rate_per_s: 50.0,
            rate_burst: 200.0,
            join_rate_per_s: 0.5,
            join_burst: 4.0,
            slot_notice_ms: 500,
            stats_max_mbps: 200,
            error_budget: 10,
            max_swarms_per_conn: 4,
            intro_peers: 8,
            max_slots: 256,
            max_connections: 200_000,
            max_conns_per_ip: 64,
            allowed_origins: Vec::new(),
            require_origin: false,
            token_secret: None,
            outbox_msgs: 64,
            outbox_bytes: 256 * 1024,
            write_timeout_ms: 10_000,
            read_buffer_bytes: 256,
            header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            first_message_timeout_ms: 10_000,
            trusted_proxies: Vec::new(),
            admin_token: None,
            reconnect_min_ms: 1_000,
            reconnect_jitter_ms: 10_000,
            shutdown_grace_ms: 5_000,
            integrity_origins: Vec::new(),
            integrity_poll_ms: 500,
            integrity_max_playlists: 64,
            integrity_idle_ms: 60_000,
            ice_servers: Vec::new(),
            turn_secret: None,
            turn_ttl_s: 3600,
            cluster_nats: None,
            cluster_prefix: "p2pcdn.signal".to_owned(),
            cluster_heartbeat_ms: 500,
            cluster_queue: 65_536,
        }
    }
}

impl Config {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.heartbeat_ms) * u64::from(self.idle_factor.max(1)))
    }

    /// Checks values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: &str| Err(crate::Error::Config(what.to_owned()));
        if self.heartbeat_ms == 0 {
            return bad("heartbeat_ms must be > 0");
        }
        if self.max_message_bytes < 64 {
            return bad("max_message_bytes must be >= 64");
        }
        // Written so that NaN fails too.
        if !self.rate_per_s.is_finite()
            || self.rate_per_s <= 0.0
            || !(self.rate_burst.is_finite() && self.rate_burst >= 1.0)
        {
            return bad("rate_per_s must be > 0 and rate_burst >= 1");
        }
        if !self.join_rate_per_s.is_finite()
            || self.join_rate_per_s <= 0.0
            || !(self.join_burst.is_finite() && self.join_burst >= 1.0)
        {
            return bad("join_rate_per_s must be > 0 and join_burst >= 1");
        }
        if self.stats_max_mbps == 0 {
            return bad("stats_max_mbps must be > 0");
        }
        if self.header_timeout_ms == 0
            || self.http_idle_timeout_ms == 0
            || self.first_message_timeout_ms == 0
        {
            return bad(
                "header_timeout_ms, http_idle_timeout_ms, first_message_timeout_ms must be > 0",
            );
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.len() < http_guard::admin::MIN_TOKEN_LEN)
        {
            return bad("admin_token must be at least 16 bytes");
        }
        if self.slot_notice_ms > 60_000 {
            return bad("slot_notice_ms must be <= 60000");
        }
        if self.max_swarms_per_conn == 0 || self.max_connections == 0 || self.max_conns_per_ip == 0
        {
            return bad("max_swarms_per_conn, max_connections, max_conns_per_ip must be > 0");
        }
        if self.outbox_msgs == 0 || self.outbox_bytes < self.max_message_bytes {
            return bad("outbox_msgs must be > 0 and outbox_bytes >= max_message_bytes");
        }
        if self.token_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return bad("token_secret must be at least 16 bytes");
        }
        if let Err(e) = crate::ice::check(self) {
            return bad(&e);
        }
        if let Err(e) = crate::integrity::Prefixes::parse(&self.integrity_origins) {
            return Err(crate::Error::Config(e));
        }
        if !(50..=60_000).contains(&self.integrity_poll_ms)
            || self.integrity_idle_ms == 0
            || self.integrity_max_playlists == 0
        {
            return bad(
                "integrity_poll_ms must be in 50..=60000, integrity_idle_ms and integrity_max_playlists > 0",
            );
        }
        if self.cluster_nats.is_some() {
            if !(20..=60_000).contains(&self.cluster_heartbeat_ms) || self.cluster_queue == 0 {
                return bad("cluster_heartbeat_ms must be in 20..=60000 and cluster_queue > 0");
            }
            let p = &self.cluster_prefix;
            if p.is_empty()
                || p.len() > 64
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                || p.starts_with('.')
                || p.ends_with('.')
            {
                return bad(
                    "cluster_prefix must be 1..=64 of [A-Za-z0-9._-], not starting or ending with '.'",
                );
            }
        }
        Ok(())
    }

    /// The integrity service's settings (invalid prefixes, refused by [`Self::validate`], are
    /// dropped here: the service is then disabled).
    pub fn integrity_settings(&self) -> crate::integrity::Settings {
        crate::integrity::Settings {
            prefixes: crate::integrity::Prefixes::parse(&self.integrity_origins)
                .unwrap_or_default(),
            poll: Duration::from_millis(self.integrity_poll_ms.max(1)),
            idle: Duration::from_millis(self.integrity_idle_ms),
            max_playlists: self.integrity_max_playlists,
        }
    }
}
