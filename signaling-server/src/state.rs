//! Shared server state: live connections (their outboxes), the swarm registry (sharded by swarm
//! id), per-swarm traffic stats, admission counters and metrics.
//!
//! Locking: every lock is a short, synchronous critical section (never held across `.await`).
//! Connections are sharded by peer id and swarms by a hash of their id, so the two cores rarely
//! contend. A relay takes the sender's swarm-shard lock (membership check) and then the
//! receiver's connection-shard and outbox locks, one after the other, never nested.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Context;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use protocol::PeerId;
use protocol::signaling::{ServerMsg, SignalData, StatsReport};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Wire, node_of, owner_of, swarm_hash};
use crate::config::Config;
use crate::metrics::{Metrics, Reject, RelayPath, RelayRefused};
use crate::registry::{Notices, Registry, RegistryConfig, Relay};

const CONN_SHARDS: usize = 16;
const SWARM_SHARDS: usize = 16;
/// Swarms listed individually by `/api/swarms` (the largest ones); totals cover all.
pub const API_TOP_SWARMS: usize = 100;

/// Locks a mutex; a panic elsewhere while holding it must not take the server down, and our
/// critical sections leave the data consistent at every step, so a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// 64 random bits from the OS (std keys its hash maps randomly), without pulling in `getrandom`
/// (the workspace builds `rand` without it).
fn os_random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Why the server wants a connection's task to close it (set from outside the task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CloseReason {
    Shutdown = 1,
    Idle = 2,
    Slow = 3,
}

/// What became of a message for a connection of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    Queued,
    /// Outbox full: dropped (a relay) or the connection is being closed (a notice).
    Full,
    NoConnection,
}

/// How much a message matters if the receiver's outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A relayed handshake: dropped (and counted) when the outbox is full; the viewers retry.
    Relay,
    /// Membership/slot notices: losing one leaves the viewer with a wrong view of the swarm, so a
    /// full outbox closes that viewer instead (it reconnects and rejoins with a fresh view).
    Control,
}

/// Messages waiting for one connection. Allocated lazily (an idle connection's `VecDeque` holds
/// no buffer) and bounded by `outbox_msgs` and `outbox_bytes`.
#[derive(Debug, Default)]
struct Outbox {
    msgs: VecDeque<Utf8Bytes>,
    bytes: usize,
}

/// The part of a connection that other connections touch. Kept small: it exists once per
/// connection (about 100 bytes).
///
/// Wake-ups use an `AtomicWaker` plus a flag rather than a `tokio::sync::Notify`: waiting on a
/// `Notify` needs a `Notified` future (a waiter node) inside every idle connection's task, the
/// flag needs nothing there.
#[derive(Debug)]
pub(crate) struct Conn {
    outbox: Mutex<Outbox>,
    waker: AtomicWaker,
    /// Set when the outbox got a message or a close was requested; cleared by the task.
    wake: AtomicBool,
    last_seen_ms: AtomicU64,
    close: AtomicU8,
    /// The client sent a message (a data frame) since its `welcome`.
    heard: AtomicBool,
}

impl Conn {
    fn new(now_ms: u64) -> Self {
        Conn {
            outbox: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
            wake: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(now_ms),
            close: AtomicU8::new(0),
            heard: AtomicBool::new(false),
        }
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Relaxed);
    }

    /// A message (not a WebSocket ping) arrived: the first-message timeout no longer applies.
    pub(crate) fn heard(&self) {
        self.heard.store(true, Relaxed);
    }

    /// Asks the connection's task to close (the first reason wins).
    pub(crate) fn close(&self, reason: CloseReason) {
        if self
            .close
            .compare_exchange(0, reason as u8, Relaxed, Relaxed)
            .is_ok()
        {
            self.wake();
        }
    }

    fn wake(&self) {
        self.wake.store(true, Release);
        self.waker.wake();
    }

    /// Registers the task's waker; true if there is something to do (mail or a close request).
    pub(crate) fn poll_wake(&self, cx: &mut Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.wake.swap(false, AcqRel)
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        match self.close.load(Relaxed) {
            1 => Some(CloseReason::Shutdown),
            2 => Some(CloseReason::Idle),
            3 => Some(CloseReason::Slow),
            _ => None,
        }
    }

    pub(crate) fn pop(&self) -> Option<Utf8Bytes> {
        let mut o = lock(&self.outbox);
        let m = o.msgs.pop_front()?;
        o.bytes -= m.as_str().len();
        if o.msgs.is_empty() {
            // Most connections are idle most of the time: hold no queue buffer between messages
            // (one small allocation per burst is cheaper than keeping it on every connection).
            o.msgs = VecDeque::new();
        }
        Some(m)
    }
}

/// Traffic totals of one swarm, summed from its viewers' `stats` deltas.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SwarmStats {
    pub http_bytes: u64,
    pub p2p_bytes: u64,
    pub uploaded_bytes: u64,
    pub stalls: u64,
    pub integrity_failures: u64,
    /// Sum of the latest `peers` each current member reported.
    pub peer_links: i64,
}

struct SwarmShard {
    reg: Registry,
    rng: SmallRng,
    /// Only for swarms that exist in `reg` (removed with the swarm's last member).
    stats: HashMap<String, SwarmStats>,
}

/// Connections over `max_conns_per_ip` that are still served, so the client reads a typed
/// refusal (`error rate_limited`); beyond this many the server closes them at accept.
pub const PER_IP_REFUSALS: u32 = 4;

/// One connection counted against its address's per-IP limit, until dropped.
#[derive(Debug)]
pub struct IpSlot {
    state: AppState,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = lock(&self.state.0.per_ip);
        if let Some(c) = m.get_mut(&self.key) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// What the accept loop learned about a TCP connection (in every request's extensions).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Counted at accept under the socket address (None: from a trusted proxy, counted at the
    /// upgrade under the forwarded address instead).
    slot: Option<Arc<IpSlot>>,
    /// Over the per-IP limit: its WebSocket upgrade gets a refusal.
    over_limit: bool,
}

/// Holds one admission slot (total and per-IP counters) until dropped.
#[derive(Debug)]
pub struct ConnGuard {
    state: AppState,
    _ip: Option<Arc<IpSlot>>,
    /// The client's address (forwarded, behind a trusted proxy), for logs.
    pub(crate) client: Option<IpAddr>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.0.open.fetch_sub(1, Relaxed);
    }
}

type ConnShard = Mutex<HashMap<PeerId, Arc<Conn>>>;

pub struct Inner {
    pub(crate) cfg: Config,
    pub(crate) metrics: Metrics,
    /// Every series of `/metrics`: ours, the integrity service's, the cluster's, `process_*`.
    registry: prometheus_client::registry::Registry,
    started: Instant,
    next_id: AtomicU64,
    conns: Box<[ConnShard]>,
    /// Admitted connections (including those still in the WebSocket handshake).
    open: AtomicUsize,
    /// Open connections per address key (`http_guard::ip_key`: the IPv4 address, or the IPv6
    /// /64), counted from accept.
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// `--trusted-proxy`: whose forwarding headers are believed.
    proxies: http_guard::TrustedProxies,
    /// `--admin-token`, or local-only.
    admin: http_guard::AdminAccess,
    swarms: Box<[Mutex<SwarmShard>]>,
    shutting_down: AtomicBool,
    /// `/integrity` (disabled without `--integrity-origin`).
    integrity: Arc<crate::integrity::Service>,
    /// This node's share of a cluster (`--cluster-nats`); None: a single node.
    cluster: Option<Arc<Cluster>>,
}

/// Cheap to clone; shared by the router, the connection tasks and the sweeper.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("open", &self.open_connections())
            .finish()
    }
}

/// One swarm as shown by `/api/swarms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmView {
    pub swarm: String,
    pub peers: usize,
    #[serde(flatten)]
    pub stats: SwarmStats,
    pub offload: f64,
}

/// `/api/swarms`: one node's, or a cluster's ([`Overview::merge`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    /// Nodes whose figures these are.
    #[serde(default = "one")]
    pub nodes: usize,
    /// Live nodes that did not answer in time (their figures are missing).
    #[serde(default)]
    pub nodes_missing: Vec<u32>,
    pub connections: usize,
    pub swarms: usize,
    pub members: usize,
    pub relays: u64,
    pub relays_dropped: u64,
    pub http_bytes: u64,
    pub p2p_bytes: u64,
    pub offload: f64,
    /// The largest swarms (at most [`API_TOP_SWARMS`]).
    pub top: Vec<SwarmView>,
}

fn one() -> usize {
    1
}

impl Overview {
    /// A cluster's overview from its nodes'. Each swarm's registry lives at one node (its
    /// owner), so swarms and members add up without double counting; connections, relays and
    /// bytes are per node and add up too. A swarm listed by several nodes (an ownership move
    /// in flight) counts its largest member count, and its traffic summed.
    pub fn merge(parts: Vec<Overview>, missing: Vec<u32>) -> Overview {
        let mut o = Overview {
            nodes: 0,
            nodes_missing: missing,
            connections: 0,
            swarms: 0,
            members: 0,
            relays: 0,
            relays_dropped: 0,
            http_bytes: 0,
            p2p_bytes: 0,
            offload: 0.0,
            top: Vec::new(),
        };
        let mut top: HashMap<String, SwarmView> = HashMap::new();
        for p in parts {
            o.nodes += p.nodes;
            o.connections += p.connections;
            o.swarms += p.swarms;
            o.members += p.members;
            o.relays += p.relays;
            o.relays_dropped += p.relays_dropped;
            o.http_bytes += p.http_bytes;
            o.p2p_bytes += p.p2p_bytes;
            // Bounded: each part lists at most API_TOP_SWARMS, and at most MAX_NODES answer.
            for v in p.top {
                match top.get_mut(&v.swarm) {
                    Some(t) => {
                        t.peers = t.peers.max(v.peers);
                        let (a, b) = (&mut t.stats, v.stats);
                        a.http_bytes += b.http_bytes;
                        a.p2p_bytes += b.p2p_bytes;
                        a.uploaded_bytes += b.uploaded_bytes;
                        a.stalls += b.stalls;
                        a.integrity_failures += b.integrity_failures;
                        a.peer_links += b.peer_links;
                    }
                    None => {
                        top.insert(v.swarm.clone(), v);
                    }
                }
            }
        }
        o.offload = crate::metrics::offload(o.p2p_bytes, o.http_bytes);
        let mut top: Vec<SwarmView> = top.into_values().collect();
        for v in &mut top {
            v.offload = crate::metrics::offload(v.stats.p2p_bytes, v.stats.http_bytes);
        }
        top.sort_unstable_by(|a, b| b.peers.cmp(&a.peers).then(a.swarm.cmp(&b.swarm)));
        top.truncate(API_TOP_SWARMS);
        o.top = top;
        o
    }
}

impl AppState {
    pub fn new(cfg: Config) -> Self {
        let mut seed = SmallRng::seed_from_u64(os_random_u64());
        let reg_cfg = RegistryConfig {
            intro_peers: cfg.intro_peers,
            max_slots: cfg.max_slots,
            defer_slot_notices: cfg.slot_notice_ms > 0,
            peer_left_only_if_known: true,
            ..RegistryConfig::default()
        };
        let swarms = (0..SWARM_SHARDS)
            .map(|_| {
                Mutex::new(SwarmShard {
                    reg: Registry::new(reg_cfg.clone()),
                    rng: SmallRng::seed_from_u64(seed.r#gen()),
                    stats: HashMap::new(),
                })
            })
            .collect();
        // Ids start at a random point so they do not reveal how many viewers came before; 2^40
        // leaves room for 2^53 - 2^40 connections before reaching JavaScript's exact range.
        let mut first_id = seed.gen_range(1..(1u64 << 40));
        // In a cluster the id names its node (`cluster::node_of`): `node << 32 | counter`, the
        // counter starting at a random point below 2^31.
        let cluster = cfg.cluster_nats.as_ref().map(|url| {
            let node = seed.gen_range(1..(1u32 << crate::cluster::NODE_BITS));
            first_id = (u64::from(node) << 32) | seed.gen_range(0..(1u64 << 31));
            Arc::new(Cluster::new(
                url.clone(),
                cfg.cluster_prefix.clone(),
                Duration::from_millis(cfg.cluster_heartbeat_ms),
                cfg.cluster_queue,
                node,
            ))
        });
        let proxies = http_guard::TrustedProxies::new(cfg.trusted_proxies.iter().copied());
        let admin = http_guard::AdminAccess::new(cfg.admin_token.clone(), proxies.clone());
        let integrity = Arc::new(crate::integrity::Service::new(cfg.integrity_settings()));
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        integrity.metrics.register(&mut registry);
        if let Some(c) = &cluster {
            c.metrics.register(&mut registry);
        }
        registry.register_collector(Box::new(crate::metrics::ProcessCollector));
        AppState(Arc::new(Inner {
            integrity,
            cfg,
            metrics,
            registry,
            started: Instant::now(),
            next_id: AtomicU64::new(first_id),
            conns: (0..CONN_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            admin,
            proxies,
            swarms,
            shutting_down: AtomicBool::new(false),
            cluster,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.cfg
    }

    /// This node's share of the cluster (None: a single node).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.0.cluster.as_ref()
    }

    /// The cluster node of `swarm`'s owner when it is another node (None: handled here).
    fn remote_owner(&self, swarm: &str) -> Option<(&Cluster, u32)> {
        let c = self.0.cluster.as_deref()?;
        let owner = c.owner(swarm);
        (owner != c.node()).then_some((c, owner))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The `/metrics` exposition (Prometheus text format 0.0.4), live values read now.
    pub fn render_metrics(&self) -> String {
        let (swarms, members) = self.swarm_totals();
        self.0
            .metrics
            .set_live(self.open_connections(), swarms, members);
        self.0.integrity.refresh_metrics();
        if let Some(c) = &self.0.cluster {
            c.refresh_metrics();
        }
        let mut body = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; an encoder error would be a bug in a collector,
        // which then shows as a truncated exposition rather than a dead endpoint.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut body, &self.0.registry)
        {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        body
    }

    /// The integrity service (`/integrity`).
    pub fn integrity(&self) -> &Arc<crate::integrity::Service> {
        &self.0.integrity
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.0.started.elapsed().as_millis() as u64
    }

    /// Connections admitted and not yet closed.
    pub fn open_connections(&self) -> usize {
        self.0.open.load(Relaxed)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Relaxed)
    }

    /// The client address of a request from socket peer `peer`: forwarding headers are believed
    /// only from `--trusted-proxy` addresses.
    pub fn client_ip(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        self.0.proxies.client_ip(peer, headers)
    }

    /// Whether a request from socket peer `peer` may use the operator endpoints.
    pub fn admin_check(
        &self,
        peer: Option<IpAddr>,
        headers: &axum::http::HeaderMap,
    ) -> Result<(), http_guard::admin::Denied> {
        self.0.admin.check(peer, headers)
    }

    /// Counts one connection under `key`; `allow` more than the limit (for refusals).
    fn take_ip_slot(&self, key: IpAddr, allow: u32) -> Option<(Arc<IpSlot>, bool)> {
        let limit = self.0.cfg.max_conns_per_ip;
        let mut m = lock(&self.0.per_ip);
        let c = m.entry(key).or_insert(0);
        if *c >= limit.saturating_add(allow) {
            return None;
        }
        *c += 1;
        let over = *c > limit;
        drop(m);
        let slot = Arc::new(IpSlot {
            state: self.clone(),
            key,
        });
        Some((slot, over))
    }

    /// Connections counted against `ip`'s per-IP limit now (its /64 for IPv6): what an operator
    /// behind a proxy checks to see that viewers are told apart.
    pub fn connections_from(&self, ip: IpAddr) -> u32 {
        lock(&self.0.per_ip)
            .get(&http_guard::ip_key(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Called by the accept loop for every TCP connection, before a byte is read: counts it
    /// against its address's limit (unless it comes from a trusted proxy, whose clients are
    /// counted at the upgrade under their forwarded addresses).
    pub fn admit_tcp(&self, peer: IpAddr) -> http_guard::Admission<Accepted> {
        use http_guard::Admission;
        if self.0.proxies.contains(peer) {
            return Admission::Serve(Accepted {
                slot: None,
                over_limit: false,
            });
        }
        match self.take_ip_slot(http_guard::ip_key(peer), PER_IP_REFUSALS) {
            Some((slot, false)) => Admission::Serve(Accepted {
                slot: Some(slot),
                over_limit: false,
            }),
            Some((slot, true)) => Admission::Serve(Accepted {
                slot: Some(slot),
                over_limit: true,
            }),
            None => {
                self.0.metrics.reject(Reject::PerIp);
                Admission::Close
            }
        }
    }

    /// Reserves a WebSocket slot: the total limit, and the per-IP one unless the accept loop
    /// counted the connection already (`accepted`). `client` is the client's address (the
    /// forwarded one behind a trusted proxy); None when unknown (no per-IP limit then).
    pub(crate) fn admit(
        &self,
        accepted: Option<Accepted>,
        client: Option<IpAddr>,
    ) -> Result<ConnGuard, Reject> {
        let inner = &self.0;
        let slot = match accepted {
            Some(Accepted {
                over_limit: true, ..
            }) => return Err(Reject::PerIp),
            Some(Accepted {
                slot: Some(slot), ..
            }) => Some(slot),
            _ => match client {
                Some(ip) => match self.take_ip_slot(http_guard::ip_key(ip), 0) {
                    Some((slot, _)) => Some(slot),
                    None => return Err(Reject::PerIp),
                },
                None => None,
            },
        };
        if inner.open.fetch_add(1, Relaxed) >= inner.cfg.max_connections {
            inner.open.fetch_sub(1, Relaxed);
            return Err(Reject::ServerFull);
        }
        Ok(ConnGuard {
            state: self.clone(),
            _ip: slot,
            client,
        })
    }

    fn conn_shard(&self, id: PeerId) -> &ConnShard {
        &self.0.conns[(id % CONN_SHARDS as u64) as usize]
    }

    fn swarm_shard(&self, swarm: &str) -> &Mutex<SwarmShard> {
        // FNV-1a: fast and stable; only spreads swarms over the shards.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in swarm.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.0.swarms[(h % SWARM_SHARDS as u64) as usize]
    }

    /// Creates the shared half of a new connection.
    pub(crate) fn register(&self) -> (PeerId, Arc<Conn>) {
        let id = self.0.next_id.fetch_add(1, Relaxed);
        let conn = Arc::new(Conn::new(self.now_ms()));
        lock(self.conn_shard(id)).insert(id, conn.clone());
        self.0.metrics.connections_total.inc();
        if self.is_shutting_down() {
            conn.close(CloseReason::Shutdown);
        }
        (id, conn)
    }

    pub(crate) fn unregister(&self, id: PeerId) {
        lock(self.conn_shard(id)).remove(&id);
    }

    /// Queues `text` for `to` (on its node, in a cluster). Returns false if it was dropped here
    /// (full outbox or gone peer); a message for another node counts as sent.
    #[cfg(test)]
    pub(crate) fn deliver(&self, to: PeerId, text: String, class: Class) -> bool {
        self.route(to, text, class, None)
    }

    /// [`Self::deliver`], naming the swarm the message is about (so that a node that no longer
    /// holds `to` can tell the swarm's owner).
    fn route(&self, to: PeerId, text: String, class: Class, swarm: Option<&str>) -> bool {
        if let Some(c) = self.0.cluster.as_deref()
            && node_of(to) != c.node()
        {
            c.forward(to, text, class, swarm, None);
            return true;
        }
        self.deliver_local(to, text, class) == Delivered::Queued
    }

    /// Queues `text` for a connection of this node.
    fn deliver_local(&self, to: PeerId, text: String, class: Class) -> Delivered {
        let Some(conn) = lock(self.conn_shard(to)).get(&to).cloned() else {
            return Delivered::NoConnection;
        };
        let cfg = &self.0.cfg;
        {
            let mut o = lock(&conn.outbox);
            if o.msgs.len() >= cfg.outbox_msgs || o.bytes + text.len() > cfg.outbox_bytes {
                drop(o);
                match class {
                    Class::Relay => {
                        self.0.metrics.relays_dropped.inc();
                    }
                    Class::Control => conn.close(CloseReason::Slow),
                }
                return Delivered::Full;
            }
            o.bytes += text.len();
            o.msgs.push_back(Utf8Bytes::from(text));
        }
        conn.wake();
        Delivered::Queued
    }

    pub(crate) fn deliver_notices(&self, notices: Notices) {
        for (to, msg) in notices {
            let swarm = match &msg {
                ServerMsg::Slot { swarm, .. } | ServerMsg::PeerLeft { swarm, .. } => {
                    Some(swarm.as_str())
                }
                _ => None,
            };
            self.route(to, msg.to_json(), Class::Control, swarm);
        }
    }

    /// Joins `peer` to `swarm`: returns the `joined` reply, or None when the swarm's owner is
    /// another node (which sends the reply through the cluster).
    pub(crate) fn join(&self, swarm: &str, peer: PeerId) -> Option<ServerMsg> {
        if let Some(c) = self.0.cluster.as_deref() {
            let owner = c.note_join(swarm, peer);
            if owner != c.node() {
                c.send(
                    owner,
                    &Wire::Join {
                        swarm: swarm.to_owned(),
                        peer,
                    },
                );
                return None;
            }
        }
        Some(self.join_owned(swarm, peer))
    }

    /// Registry join in a swarm this node owns; returns the `joined` reply (notices are
    /// delivered here).
    fn join_owned(&self, swarm: &str, peer: PeerId) -> ServerMsg {
        let joined = {
            let mut sh = lock(self.swarm_shard(swarm));
            let SwarmShard { reg, rng, .. } = &mut *sh;
            reg.join(swarm, peer, rng)
        };
        self.deliver_notices(joined.notices);
        joined.reply
    }

    /// More members for `peer`; None when the owner is another node (it sends `peers`).
    pub(crate) fn introduce(&self, swarm: &str, peer: PeerId) -> Option<Vec<PeerId>> {
        if let Some((c, owner)) = self.remote_owner(swarm) {
            let (swarm, peer) = (swarm.to_owned(), peer);
            c.send(owner, &Wire::WantPeers { swarm, peer });
            return None;
        }
        Some(self.introduce_owned(swarm, peer))
    }

    fn introduce_owned(&self, swarm: &str, peer: PeerId) -> Vec<PeerId> {
        let mut sh = lock(self.swarm_shard(swarm));
        let SwarmShard { reg, rng, .. } = &mut *sh;
        reg.introduce(swarm, peer, rng)
    }

    /// Registry leave; `last_peers` is the member's latest reported `peers` (taken back out of
    /// the swarm's link sum).
    pub(crate) fn leave(&self, swarm: &str, peer: PeerId, last_peers: u32) {
        if let Some(c) = self.0.cluster.as_deref() {
            let owner = c.note_leave(swarm, peer);
            if owner != c.node() {
                self.leave_local_stats(swarm, last_peers, c.has_local(swarm));
                let swarm = swarm.to_owned();
                c.send(owner, &Wire::Leave { swarm, peer });
                return;
            }
        }
        self.leave_owned(swarm, peer, last_peers);
    }

    /// A local viewer left a swarm another node owns: the traffic figures this node keeps for
    /// it (its own viewers' reports, see [`AppState::add_stats`]) go with its last local viewer.
    fn leave_local_stats(&self, swarm: &str, last_peers: u32, still_local: bool) {
        let mut sh = lock(self.swarm_shard(swarm));
        if sh.reg.member_count(swarm) > 0 {
            return; // owned here after all (a view change in flight): the registry decides
        }
        if !still_local {
            sh.stats.remove(swarm);
        } else if let Some(s) = sh.stats.get_mut(swarm) {
            s.peer_links -= i64::from(last_peers);
        }
    }

    fn leave_owned(&self, swarm: &str, peer: PeerId, last_peers: u32) {
        let notices = {
            let mut sh = lock(self.swarm_shard(swarm));
            let notices = sh.reg.leave(swarm, peer);
            if sh.reg.member_count(swarm) == 0 {
                sh.stats.remove(swarm);
            } else if let Some(s) = sh.stats.get_mut(swarm) {
                s.peer_links -= i64::from(last_peers);
            }
            notices
        };
        self.deliver_notices(notices);
    }

    /// Relays a handshake from `from` to `to` in `swarm`: only within a pair the server
    /// introduced (either direction), both still members. The data was checked by the caller.
    /// In a cluster, when the swarm's owner is another node, the relay goes there to be
    /// checked, and a refusal comes back to `from` as an `error` message.
    /// `t0`: `metrics::unix_us` when the `signal` was parsed (relay latency).
    pub(crate) fn relay(
        &self,
        swarm: &str,
        from: PeerId,
        to: PeerId,
        data: SignalData,
        t0: u64,
    ) -> Result<(), RelayRefused> {
        if let Some((c, owner)) = self.remote_owner(swarm) {
            c.metrics.relays_forwarded.inc();
            let swarm = swarm.to_owned();
            c.send(
                owner,
                &Wire::Relay {
                    swarm,
                    from,
                    to,
                    data,
                    t0: Some(t0),
                },
            );
            return Ok(());
        }
        self.relay_owned(swarm, from, to, data, Some(t0), RelayPath::Local)
    }

    /// The owner's relay check, then the relay queued (or sent to the receiver's node). `path`:
    /// [`RelayPath::Cluster`] when the relay already crossed NATS to get here.
    fn relay_owned(
        &self,
        swarm: &str,
        from: PeerId,
        to: PeerId,
        data: SignalData,
        t0: Option<u64>,
        path: RelayPath,
    ) -> Result<(), RelayRefused> {
        match lock(self.swarm_shard(swarm)).reg.relay(swarm, from, to) {
            Relay::Allowed => {}
            Relay::UnknownPeer => return Err(RelayRefused::UnknownPeer),
            Relay::NotIntroduced => return Err(RelayRefused::NotIntroduced),
        }
        let text = ServerMsg::Signal {
            swarm: swarm.to_owned(),
            from,
            data,
        }
        .to_json();
        let m = &self.0.metrics;
        if let Some(c) = self.0.cluster.as_deref()
            && node_of(to) != c.node()
        {
            c.forward(to, text, Class::Relay, Some(swarm), t0);
            m.relays.inc();
        } else if self.deliver_local(to, text, Class::Relay) == Delivered::Queued {
            m.relays.inc();
            if let Some(t0) = t0 {
                m.relay_delivered(path, t0);
            }
        }
        Ok(())
    }

    /// A message from another node of the cluster.
    pub(crate) fn on_cluster_msg(&self, c: &Cluster, msg: Wire) {
        match msg {
            Wire::Hb { .. } => {}
            Wire::Join { swarm, peer } => {
                let reply = self.join_owned(&swarm, peer);
                self.route(peer, reply.to_json(), Class::Control, Some(&swarm));
            }
            Wire::WantPeers { swarm, peer } => {
                let peers = self.introduce_owned(&swarm, peer);
                let text = ServerMsg::Peers {
                    swarm: swarm.clone(),
                    peers,
                }
                .to_json();
                self.route(peer, text, Class::Control, Some(&swarm));
            }
            Wire::Leave { swarm, peer } | Wire::Gone { swarm, peer } => {
                self.leave_owned(&swarm, peer, 0);
            }
            Wire::Relay {
                swarm,
                from,
                to,
                data,
                t0,
            } => {
                if c.shed_stale(t0) {
                    return;
                }
                if let Err(why) = self.relay_owned(&swarm, from, to, data, t0, RelayPath::Cluster) {
                    self.0.metrics.relay_refused(why);
                    let err = ServerMsg::Error {
                        code: protocol::signaling::ErrorCode::UnknownPeer,
                        message: format!("peer {to} is not in this swarm or not introduced"),
                        swarm: Some(swarm.clone()),
                    };
                    self.route(from, err.to_json(), Class::Relay, Some(&swarm));
                }
            }
            Wire::Resync { swarm, peers } => self.resync_owned(&swarm, &peers),
            Wire::Deliver {
                to,
                control,
                text,
                swarm,
                t0,
            } => {
                if node_of(to) != c.node() || c.shed_stale(t0) {
                    return;
                }
                let class = if control {
                    Class::Control
                } else {
                    Class::Relay
                };
                let delivered = self.deliver_local(to, text, class);
                if delivered == Delivered::Queued
                    && let Some(t0) = t0
                {
                    self.0.metrics.relay_delivered(RelayPath::Cluster, t0);
                }
                if delivered == Delivered::NoConnection
                    && let Some(swarm) = swarm
                {
                    // The viewer left while the message was on its way, or its leave was lost:
                    // the owner must not keep a ghost.
                    let owner = c.owner(&swarm);
                    if owner == c.node() {
                        self.leave_owned(&swarm, to, 0);
                    } else {
                        c.send(owner, &Wire::Gone { swarm, peer: to });
                    }
                }
            }
        }
    }

    /// Joins the `peers` (all of one node) this owner does not know yet to `swarm`, and sends
    /// each of them a fresh `joined`.
    pub(crate) fn resync_owned(&self, swarm: &str, peers: &[PeerId]) {
        let mut out = Vec::new();
        {
            let mut sh = lock(self.swarm_shard(swarm));
            let SwarmShard { reg, rng, .. } = &mut *sh;
            for &p in peers {
                if !reg.is_member(swarm, p) {
                    let j = reg.join(swarm, p, rng);
                    out.push((p, j));
                }
            }
        }
        for (p, j) in out {
            self.deliver_notices(j.notices);
            self.route(p, j.reply.to_json(), Class::Control, Some(swarm));
        }
    }

    /// After a view change: forgets the swarms this node no longer owns, and the members of
    /// `expired` nodes in the ones it owns (silently: see `cluster.rs`).
    pub(crate) fn drop_unowned_and_purge(&self, view: &[u32], me: u32, expired: &[u32]) {
        let mut notices = Vec::new();
        for shard in self.0.swarms.iter() {
            let mut sh = lock(shard);
            let ids: Vec<String> = sh.reg.swarms().map(|(k, _)| k.to_owned()).collect();
            for id in ids {
                if owner_of(view, swarm_hash(&id)) != me {
                    sh.reg.remove_swarm(&id);
                    sh.stats.remove(&id);
                    continue;
                }
                if expired.is_empty() {
                    continue;
                }
                let dead: Vec<PeerId> = sh
                    .reg
                    .members(&id)
                    .iter()
                    .copied()
                    .filter(|p| expired.contains(&node_of(*p)))
                    .collect();
                for p in dead {
                    notices.extend(
                        sh.reg
                            .leave(&id, p)
                            .into_iter()
                            .filter(|(_, m)| !matches!(m, ServerMsg::PeerLeft { .. })),
                    );
                }
                if sh.reg.member_count(&id) == 0 {
                    sh.stats.remove(&id);
                }
            }
        }
        self.deliver_notices(notices);
    }

    /// Adds one viewer's stats delta to its swarm and to the global counters. In a cluster a
    /// node keeps the figures of its own viewers, also in swarms another node owns (bounded:
    /// only swarms it has viewers in); `/api/swarms` of the cluster adds them up.
    pub(crate) fn add_stats(&self, swarm: &str, d: &StatsReport, peers_delta: i64) {
        let m = &self.0.metrics;
        m.http_bytes.inc_by(d.http_bytes);
        m.p2p_bytes.inc_by(d.p2p_bytes);
        m.uploaded_bytes.inc_by(d.uploaded_bytes);
        m.stalls.inc_by(u64::from(d.stalls));
        m.integrity_failures.inc_by(u64::from(d.integrity_failures));
        let local = self
            .0
            .cluster
            .as_deref()
            .is_some_and(|c| c.has_local(swarm));
        let mut sh = lock(self.swarm_shard(swarm));
        if sh.reg.member_count(swarm) == 0 && !local {
            return;
        }
        let s = sh.stats.entry(swarm.to_owned()).or_default();
        s.http_bytes = s.http_bytes.saturating_add(d.http_bytes);
        s.p2p_bytes = s.p2p_bytes.saturating_add(d.p2p_bytes);
        s.uploaded_bytes = s.uploaded_bytes.saturating_add(d.uploaded_bytes);
        s.stalls = s.stalls.saturating_add(u64::from(d.stalls));
        s.integrity_failures = s
            .integrity_failures
            .saturating_add(u64::from(d.integrity_failures));
        s.peer_links += peers_delta;
    }

    /// Stats of one swarm (None if it has no members).
    pub fn swarm_stats(&self, swarm: &str) -> Option<(usize, SwarmStats)> {
        let sh = lock(self.swarm_shard(swarm));
        let n = sh.reg.member_count(swarm);
        (n > 0).then(|| (n, sh.stats.get(swarm).cloned().unwrap_or_default()))
    }

    /// (swarms, memberships) over all shards.
    pub fn swarm_totals(&self) -> (usize, usize) {
        self.0.swarms.iter().fold((0, 0), |(s, m), sh| {
            let sh = lock(sh);
            (
                s + sh.reg.swarm_count(),
                m + sh.reg.swarms().map(|(_, n)| n).sum::<usize>(),
            )
        })
    }

    pub fn overview(&self) -> Overview {
        let mut top: Vec<SwarmView> = Vec::new();
        let (mut swarms, mut members) = (0, 0);
        for sh in self.0.swarms.iter() {
            let sh = lock(sh);
            swarms += sh.reg.swarm_count();
            let mut sizes: Vec<(usize, &str)> = sh.reg.swarms().map(|(k, n)| (n, k)).collect();
            members += sizes.iter().map(|(n, _)| n).sum::<usize>();
            // Only this shard's largest swarms can be in the global top: bounded copying.
            // Swarms another node owns, with viewers here (a cluster): their traffic, no
            // member count (the owner's is the swarm's).
            sizes.extend(
                sh.stats
                    .keys()
                    .filter(|k| sh.reg.member_count(k) == 0)
                    .map(|k| (0, k.as_str())),
            );
            sizes.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            sizes.truncate(API_TOP_SWARMS);
            for (n, k) in sizes {
                let stats = sh.stats.get(k).cloned().unwrap_or_default();
                let offload = crate::metrics::offload(stats.p2p_bytes, stats.http_bytes);
                top.push(SwarmView {
                    swarm: k.to_owned(),
                    peers: n,
                    stats,
                    offload,
                });
            }
        }
        top.sort_unstable_by(|a, b| b.peers.cmp(&a.peers).then(a.swarm.cmp(&b.swarm)));
        top.truncate(API_TOP_SWARMS);
        let m = &self.0.metrics;
        let (http, p2p) = (m.http_bytes.get(), m.p2p_bytes.get());
        Overview {
            nodes: 1,
            nodes_missing: Vec::new(),
            connections: self.open_connections(),
            swarms,
            members,
            relays: m.relays.get(),
            relays_dropped: m.relays_dropped.get(),
            http_bytes: http,
            p2p_bytes: p2p,
            offload: crate::metrics::offload(p2p, http),
            top,
        }
    }

    /// Asks every connection that sent nothing for the idle timeout to close, and those that
    /// sent no message since their `welcome` for the first-message timeout.
    pub fn sweep_idle(&self) -> usize {
        let now = self.now_ms();
        let idle = self.0.cfg.idle_timeout().as_millis() as u64;
        let first = self.0.cfg.first_message_timeout_ms.min(idle);
        let mut n = 0;
        for shard in self.0.conns.iter() {
            for conn in lock(shard).values() {
                let limit = if conn.heard.load(Relaxed) {
                    idle
                } else {
                    first
                };
                if now.saturating_sub(conn.last_seen_ms.load(Relaxed)) > limit {
                    conn.close(CloseReason::Idle);
                    n += 1;
                }
            }
        }
        n
    }

    /// Runs [`Self::sweep_idle`] a few times per heartbeat, forever. One timer for all
    /// connections instead of one per connection.
    pub async fn run_sweeper(self) {
        let cfg = &self.0.cfg;
        let period = u64::from(cfg.heartbeat_ms / 4).min(cfg.first_message_timeout_ms / 4);
        let period = Duration::from_millis(period.max(25));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep_idle();
        }
    }

    /// Sends the coalesced `slot` notices of every shard (see `Config::slot_notice_ms`).
    pub fn flush_slot_notices(&self) {
        for shard in self.0.swarms.iter() {
            let notices = lock(shard).reg.take_slot_notices();
            self.deliver_notices(notices);
        }
    }

    /// Runs [`Self::flush_slot_notices`] every `slot_notice_ms`, forever (nothing to do when 0:
    /// the notices then go out at once).
    pub async fn run_slot_notices(self) {
        let ms = self.0.cfg.slot_notice_ms;
        if ms == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_slot_notices();
        }
    }

    /// Stops admitting connections and asks every connection to send `reconnect` and close.
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Relaxed);
        for shard in self.0.conns.iter() {
            for conn in lock(shard).values() {
                conn.close(CloseReason::Shutdown);
            }
        }
    }

    /// Waits until every connection closed, or `grace` passed.
    pub async fn drained(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        while self.open_connections() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The `after_ms` told to one client on shutdown.
    pub(crate) fn reconnect_after_ms(&self) -> u32 {
        let c = &self.0.cfg;
        let mut rng = SmallRng::seed_from_u64(os_random_u64());
        c.reconnect_min_ms
            .saturating_add(rng.gen_range(0..=c.reconnect_jitter_ms))
    }

    pub(crate) fn next_reconnect(&self) -> ServerMsg {
        ServerMsg::Reconnect {
            after_ms: self.reconnect_after_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_outbox_drops_relays_and_closes_on_notices() {
        let cfg = Config {
            outbox_msgs: 2,
            outbox_bytes: 64 * 1024,
            ..Config::default()
        };
        let state = AppState::new(cfg);
        let (id, conn) = state.register();
        assert!(state.deliver(id, "a".into(), Class::Relay));
        assert!(state.deliver(id, "b".into(), Class::Relay));
        assert!(!state.deliver(id, "c".into(), Class::Relay));
        assert_eq!(state.metrics().relays_dropped.get(), 1);
        assert_eq!(conn.close_reason(), None);
        assert!(!state.deliver(id, "notice".into(), Class::Control));
        assert_eq!(conn.close_reason(), Some(CloseReason::Slow));
        assert_eq!(
            conn.pop().map(|m| m.as_str().to_owned()).as_deref(),
            Some("a")
        );
        // Byte cap too.
        let big = "x".repeat(64 * 1024);
        let (id2, _c2) = state.register();
        assert!(state.deliver(id2, big.clone(), Class::Relay));
        assert!(!state.deliver(id2, "y".into(), Class::Relay));
        // Gone peers: dropped silently.
        state.unregister(id2);
        assert!(!state.deliver(id2, "z".into(), Class::Relay));
    }

    #[test]
    fn stale_cross_node_relays_are_shed() {
        let state = AppState::new(Config {
            cluster_nats: Some("nats://127.0.0.1:1".into()),
            ..Config::default()
        });
        let Some(c) = state.cluster().cloned() else {
            panic!("a cluster node has a Cluster");
        };
        let (id, conn) = state.register();
        let deliver = |t0| Wire::Deliver {
            to: id,
            control: false,
            text: "{}".into(),
            swarm: None,
            t0: Some(t0),
        };
        let now = crate::metrics::unix_us();
        let stale = now - crate::cluster::STALE_RELAY.as_micros() as u64 - 1_000_000;
        state.on_cluster_msg(&c, deliver(stale));
        assert!(conn.pop().is_none(), "a stale relay was delivered");
        assert_eq!(c.metrics.relays_stale.get(), 1);
        state.on_cluster_msg(&c, deliver(now));
        assert!(conn.pop().is_some());
        // Without a stamp (a node that predates it): delivered.
        state.on_cluster_msg(
            &c,
            Wire::Deliver {
                to: id,
                control: false,
                text: "{}".into(),
                swarm: None,
                t0: None,
            },
        );
        assert!(conn.pop().is_some());
        assert_eq!(c.metrics.relays_stale.get(), 1);
    }

    #[test]
    fn admission_counts_total_and_per_ip() {
        use http_guard::Admission;
        let cfg = Config {
            max_connections: 3,
            max_conns_per_ip: 2,
            ..Config::default()
        };
        let state = AppState::new(cfg);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = state.admit(None, Some(ip));
        let b = state.admit(None, Some(ip));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(state.admit(None, Some(ip)).err(), Some(Reject::PerIp));
        let c = state.admit(None, Some([10, 0, 0, 2].into()));
        assert!(c.is_ok());
        assert_eq!(state.admit(None, None).err(), Some(Reject::ServerFull));
        drop(a);
        assert_eq!(state.open_connections(), 2);
        assert!(state.admit(None, Some(ip)).is_ok());
        drop((b, c));
        assert_eq!(state.open_connections(), 0);
        assert!(lock(&state.0.per_ip).is_empty());

        // At accept: served up to the limit, then a few refusals, then closed.
        let other: IpAddr = [10, 0, 0, 3].into();
        let mut held = Vec::new();
        for i in 0..2 + PER_IP_REFUSALS + 2 {
            let adm = state.admit_tcp(other);
            match (i, &adm) {
                (0..2, Admission::Serve(a)) => assert!(!a.over_limit),
                (i, Admission::Serve(a)) if (2..2 + PER_IP_REFUSALS).contains(&i) => {
                    assert!(a.over_limit);
                    assert_eq!(
                        state.admit(Some(a.clone()), None).err(),
                        Some(Reject::PerIp)
                    );
                }
                (i, Admission::Close) if i >= 2 + PER_IP_REFUSALS => {}
                (i, other) => panic!("connection {i}: {other:?}"),
            }
            held.push(adm);
        }
        // A WebSocket of a counted connection is not counted twice.
        if let Admission::Serve(a) = &held[0] {
            let g = state.admit(Some(a.clone()), Some(other));
            assert!(g.is_ok());
        }
        drop(held);
        assert!(lock(&state.0.per_ip).is_empty());
    }
}
