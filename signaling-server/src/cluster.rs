//! Several signaling nodes sharing swarms through NATS (`--cluster-nats`).
//!
//! ## How the state is split
//! * **Connections** stay on the node that accepted them. A peer id carries its node in its
//!   high bits (`node << 32 | counter`, under 2^52 so JavaScript reads it exactly), so any node
//!   can route a message to any viewer without a lookup table.
//! * **Swarms**: each swarm has one *owner* node, chosen by rendezvous hashing of the swarm id
//!   over the live nodes. Only the owner holds the swarm's registry (members, pairs, slots):
//!   joins, leaves, `want_peers` and relays of members on other nodes are sent to it, and it
//!   sends the replies and notices to the members' nodes. No node holds the whole state: a node
//!   holds its own connections and the swarms it owns (≈ 1/N of them).
//! * **Live nodes** come from heartbeats on `<prefix>.hb` (every `--cluster-heartbeat-ms`); a
//!   node silent for [`EXPIRY_FACTOR`] heartbeats is dead. Each node also keeps, per swarm, the
//!   ids of its own members and the owner it last told (`Local`), so it can re-announce them.
//!
//! ## Liveness apart from the traffic
//! Heartbeats are sent and read on an OS thread of their own (`cluster-liveness`, a
//! current-thread tokio runtime) over a NATS connection of their own. At 30,000 connections a
//! saturated node's tokio workers ran thousands of ready tasks before a heartbeat task, and its
//! heartbeats waited in the same outgoing queue and NATS connection as the relays: nodes
//! missed 4 heartbeats in a row, declared each other dead and moved swarms back and forth
//! (10,326 `unknown_peer` errors in `cargo xtask bench cluster`). A thread is scheduled by the
//! kernel however busy the workers are, and its connection carries nothing else, so a heartbeat
//! no longer waits behind relays at the sender, in NATS, or at the receiver. Two more guards:
//! * a node only claims to be alive while its main connection (the one that carries the
//!   traffic) is connected, so the others do not route to a node that cannot hear them;
//! * a liveness tick that itself ran more than a heartbeat late (the node was stalled:
//!   swapped, stopped, starved) first reads the heartbeats waiting for it and skips expiry
//!   once (`signaling_cluster_liveness_late_total`): the others were not silent, this node was
//!   deaf.
//!
//! ## When the set of live nodes changes ([`Cluster::reconcile`])
//! * A node drops the swarms it no longer owns (without notices: their new owner tells the
//!   members);
//! * for each swarm its own members are in whose owner changed, it sends the new owner a
//!   `resync` with those members; the owner joins the ones it does not know and sends each a
//!   fresh `joined` (new introductions and slot), so the swarm heals;
//! * an owner forgets the members of a node that expired, silently (no `peer_left`: those
//!   viewers are alive, only their signaling node died; their WebRTC channels stay up, and
//!   they come back through another node with a new id).
//!
//! A lost message cannot leave a ghost member for long: a node asked to deliver to a viewer it
//! does not hold any more answers the owner with `gone`, and the owner removes it.
//!
//! ## The engine restarting
//! While NATS is away, heartbeats stop: every node soon sees only itself, owns every swarm its
//! viewers are in, and goes on serving them as a single node (viewers on one node still find
//! each other). When NATS is back (async-nats reconnects and resubscribes by itself), the
//! heartbeats bring the view back, ownership moves back, and the resync above rebuilds each
//! swarm at its owner.
//!
//! ## The integrity service: one node per playlist
//! `/integrity?playlist=` may be asked of any node, but only the playlist's owner (the same
//! rendezvous hash, over the playlist URL without query) follows it and fetches its segments;
//! the others ask it with a NATS request on `<prefix>.integrity.<node>` and answer with its
//! manifest (ETag and `If-None-Match` handled by the node that was asked). So the origin sees
//! one fetch per segment for the whole cluster. A node answers itself when the owner does not
//! (NATS away, owner just died, no answer within 3 s): the service stays up, at the cost of a
//! second follower until the views agree again. A view change stops the followers a node no
//! longer owns (`reconcile`).
//!
//! ## Bounds
//! * Outgoing messages wait in one queue of `--cluster-queue` messages; when it is full the
//!   message is dropped and counted (`signaling_cluster_dropped_total`): a dropped relay is
//!   retried by the viewers, a dropped notice is healed by the next resync or `gone`.
//! * A cross-node relay that waited over [`STALE_RELAY`] (5 s, from the stamp the sender's node
//!   put on it) is dropped by the next node it reaches and counted
//!   (`signaling_cluster_relays_stale_total`): load shedding, see the constant.
//! * Incoming messages wait in async-nats' subscription buffer (its default, 65,536); a
//!   subscriber that falls behind loses messages there (NATS "slow consumer"), same policy.
//! * The view holds at most [`MAX_NODES`] nodes (heartbeats of further ones are ignored).
//! * An owner serves at most [`MAX_INTEGRITY_REQUESTS`] proxied `/integrity` requests at once;
//!   further ones are answered "at cap" (HTTP 503 with `Retry-After` to the viewer) at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use protocol::PeerId;
use protocol::signaling::SignalData;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::state::{AppState, Class, Overview, lock};

/// Heartbeats a node may miss before the others consider it dead.
pub const EXPIRY_FACTOR: u32 = 4;
/// Nodes in one view (further heartbeats are ignored).
pub const MAX_NODES: usize = 1024;
/// Node ids are in `1..2^NODE_BITS`; peer ids are `node << 32 | counter`.
pub const NODE_BITS: u32 = 20;
const LOCAL_SHARDS: usize = 16;
/// Members per `resync` message (an owner change for a large swarm becomes several messages).
const RESYNC_CHUNK: usize = 512;
/// Proxied `/integrity` requests an owner serves at once; beyond, it answers "at cap" (503,
/// retry later) at once rather than queueing: each may wait for a first pass.
pub const MAX_INTEGRITY_REQUESTS: usize = 256;
/// A cross-node relay older than this (from its `t0`) is dropped by the owner or the
/// receiver's node instead of being passed on (`signaling_cluster_relays_stale_total`). Load
/// shedding for a saturated cluster: serving the oldest relays first makes every relay late,
/// while one this old leaves its handshake at most half of peer-core's 10 s `connect_timeout`;
/// the viewers retry, and the relays behind it get through sooner.
pub const STALE_RELAY: Duration = Duration::from_secs(5);
/// How long a node waits for the owner's `/integrity` answer (the owner waits up to
/// `integrity::FIRST_PASS_WAIT` for a first pass) before answering itself.
const INTEGRITY_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `/api/swarms` waits for the other nodes' overviews.
const OVERVIEW_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the cluster link.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
    #[error("cannot start the liveness thread: {0}")]
    Liveness(String),
}

/// The node a peer id was issued by (0 for ids of a server not in a cluster).
pub fn node_of(peer: PeerId) -> u32 {
    (peer >> 32) as u32
}

/// Messages between nodes (JSON on NATS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Wire {
    /// On `<prefix>.hb`: this node is alive.
    Hb {
        node: u32,
    },
    /// To a swarm's owner.
    Join {
        swarm: String,
        peer: PeerId,
    },
    WantPeers {
        swarm: String,
        peer: PeerId,
    },
    Leave {
        swarm: String,
        peer: PeerId,
    },
    Relay {
        swarm: String,
        from: PeerId,
        to: PeerId,
        data: SignalData,
        /// `metrics::unix_us` when the sender's node parsed the `signal` (for the latency
        /// histogram; absent from nodes that predate it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t0: Option<u64>,
    },
    /// These members (all of the sender's node) are in the swarm: join those not known.
    Resync {
        swarm: String,
        peers: Vec<PeerId>,
    },
    /// The sender was asked to deliver to `peer` but holds no such connection.
    Gone {
        swarm: String,
        peer: PeerId,
    },
    /// To a viewer's node: queue `text` (a `ServerMsg` as JSON) for viewer `to`.
    Deliver {
        to: PeerId,
        control: bool,
        text: String,
        /// The swarm the message is about (for `gone`).
        swarm: Option<String>,
        /// For a relayed `signal`: `t0` of its `relay`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t0: Option<u64>,
    },
}

/// A swarm this node's viewers are in.
#[derive(Debug, Default)]
struct Local {
    peers: Vec<PeerId>,
    /// The owner the members were last announced to.
    owner: u32,
}

/// This node's viewers per swarm (one shard).
type LocalShard = Mutex<HashMap<Box<str>, Local>>;

/// Series of the cluster link, registered in the server's `/metrics` registry
/// ([`ClusterMetrics::register`]).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub sent: Counter,
    pub received: Counter,
    pub dropped: Counter,
    pub bad: Counter,
    pub relays_forwarded: Counter,
    pub resyncs: Counter,
    pub nodes_expired: Counter,
    pub heartbeats_sent: Counter,
    /// Cross-node relays dropped for being older than [`STALE_RELAY`].
    pub relays_stale: Counter,
    /// `/integrity` requests answered by the playlist's owner on another node.
    pub integrity_proxied: Counter,
    /// Liveness ticks that ran late (this node stalled): no expiry in those.
    pub liveness_late: Counter,
    nodes: Gauge,
    queued: Gauge,
}

impl ClusterMetrics {
    /// Adds the series to `reg` (counter names without `_total`: the encoder appends it).
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "signaling_cluster_nodes",
            "Live signaling nodes this node sees (itself included).",
            self.nodes.clone(),
        );
        reg.register(
            "signaling_cluster_queued",
            "Messages waiting in the outgoing queue to other nodes (bounded by --cluster-queue).",
            self.queued.clone(),
        );
        for (name, help, c) in [
            (
                "signaling_cluster_sent",
                "Messages published to other nodes (heartbeats apart).",
                &self.sent,
            ),
            (
                "signaling_cluster_received",
                "Messages received from other nodes (heartbeats apart).",
                &self.received,
            ),
            (
                "signaling_cluster_dropped",
                "Messages to other nodes dropped (queue full or NATS away).",
                &self.dropped,
            ),
            (
                "signaling_cluster_bad",
                "Undecodable messages from the cluster.",
                &self.bad,
            ),
            (
                "signaling_cluster_relays_forwarded",
                "Handshake relays sent to another node.",
                &self.relays_forwarded,
            ),
            (
                "signaling_cluster_resyncs",
                "Swarms re-announced to a new owner.",
                &self.resyncs,
            ),
            (
                "signaling_cluster_nodes_expired",
                "Nodes seen dying (missed heartbeats).",
                &self.nodes_expired,
            ),
            (
                "signaling_cluster_relays_stale",
                "Cross-node relays dropped for waiting over 5 s (load shedding).",
                &self.relays_stale,
            ),
            (
                "signaling_cluster_integrity_proxied",
                "/integrity requests answered by the playlist's owner on another node.",
                &self.integrity_proxied,
            ),
            (
                "signaling_cluster_heartbeats_sent",
                "Heartbeats this node published.",
                &self.heartbeats_sent,
            ),
            (
                "signaling_cluster_liveness_late",
                "Liveness ticks over a heartbeat late (this node stalled): expiry skipped.",
                &self.liveness_late,
            ),
        ] {
            reg.register(name, help, c.clone());
        }
    }
}

/// One node's share of the cluster.
#[derive(Debug)]
pub struct Cluster {
    node: u32,
    url: String,
    prefix: String,
    heartbeat: Duration,
    /// Live nodes (sorted, this one included).
    view: RwLock<Arc<[u32]>>,
    /// Last heartbeat per other node (at most `MAX_NODES`).
    seen: Mutex<HashMap<u32, Instant>>,
    out: mpsc::Sender<(u32, Bytes)>,
    out_rx: Mutex<Option<mpsc::Receiver<(u32, Bytes)>>>,
    /// This node's members per swarm, sharded like the registry.
    local: Box<[LocalShard]>,
    /// The main NATS connection, once made (for `/integrity` requests to a playlist's owner).
    client: OnceLock<async_nats::Client>,
    pub metrics: ClusterMetrics,
}

/// The node number that stands for the heartbeat subject in [`Cluster::subject`].
const HB_SUBJECT: u32 = 0;

/// Aborts a task when dropped (with the future of [`Cluster::run`]).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(crate) fn swarm_hash(swarm: &str) -> u64 {
    // FNV-1a: fast and stable across nodes (std's hasher is keyed per process).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in swarm.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Rendezvous (highest random weight) choice: removing a node moves only its swarms, adding
/// one moves ≈ 1/N of them, and any two nodes whose views agree pick the same owner.
pub fn owner_of(view: &[u32], swarm_hash: u64) -> u32 {
    view.iter()
        .copied()
        .max_by_key(|&n| (mix(swarm_hash ^ mix(u64::from(n))), n))
        .unwrap_or(0)
}

impl Cluster {
    pub fn new(url: String, prefix: String, heartbeat: Duration, queue: usize, node: u32) -> Self {
        let (out, out_rx) = mpsc::channel(queue.max(1));
        let metrics = ClusterMetrics::default();
        metrics.nodes.set(1);
        Cluster {
            node,
            url,
            prefix,
            heartbeat,
            view: RwLock::new(Arc::from(vec![node])),
            seen: Mutex::new(HashMap::new()),
            out,
            out_rx: Mutex::new(Some(out_rx)),
            local: (0..LOCAL_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            client: OnceLock::new(),
            metrics,
        }
    }

    pub fn node(&self) -> u32 {
        self.node
    }

    pub fn view(&self) -> Arc<[u32]> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn owner(&self, swarm: &str) -> u32 {
        owner_of(&self.view(), swarm_hash(swarm))
    }

    fn local_shard(&self, swarm: &str) -> &LocalShard {
        &self.local[(swarm_hash(swarm) % LOCAL_SHARDS as u64) as usize]
    }

    /// Queues `msg` for node `to` (drop policy: see the module docs).
    pub(crate) fn send(&self, to: u32, msg: &Wire) {
        let bytes = match serde_json::to_vec(msg) {
            Ok(b) => Bytes::from(b),
            Err(_) => return,
        };
        if self.out.try_send((to, bytes)).is_err() {
            self.metrics.dropped.inc();
        }
    }

    /// Records that local viewer `peer` is in `swarm`; returns the swarm's owner now.
    pub(crate) fn note_join(&self, swarm: &str, peer: PeerId) -> u32 {
        let owner = self.owner(swarm);
        let mut l = lock(self.local_shard(swarm));
        let e = l.entry(swarm.into()).or_insert_with(|| Local {
            peers: Vec::new(),
            owner,
        });
        if !e.peers.contains(&peer) {
            e.peers.push(peer);
        }
        owner
    }

    /// This node has viewers in `swarm`.
    pub(crate) fn has_local(&self, swarm: &str) -> bool {
        lock(self.local_shard(swarm)).contains_key(swarm)
    }

    /// Records that local viewer `peer` left `swarm`; returns the swarm's owner now.
    pub(crate) fn note_leave(&self, swarm: &str, peer: PeerId) -> u32 {
        let mut l = lock(self.local_shard(swarm));
        if let Some(e) = l.get_mut(swarm) {
            e.peers.retain(|p| *p != peer);
            if e.peers.is_empty() {
                l.remove(swarm);
            }
        }
        drop(l);
        self.owner(swarm)
    }

    /// A heartbeat from `node`; true if the view changed.
    fn heard(&self, node: u32, now: Instant) -> bool {
        if node == self.node || node == 0 {
            return false;
        }
        let mut seen = lock(&self.seen);
        if seen.len() >= MAX_NODES && !seen.contains_key(&node) {
            return false;
        }
        seen.insert(node, now).is_none()
    }

    /// Forgets nodes silent for too long; returns them.
    fn expire(&self, now: Instant) -> Vec<u32> {
        let limit = self.heartbeat * EXPIRY_FACTOR;
        let mut gone = Vec::new();
        lock(&self.seen).retain(|&n, t| {
            let alive = now.duration_since(*t) <= limit;
            if !alive {
                gone.push(n);
            }
            alive
        });
        gone
    }

    fn rebuild_view(&self) {
        let mut v: Vec<u32> = lock(&self.seen).keys().copied().collect();
        v.push(self.node);
        v.sort_unstable();
        self.metrics
            .nodes
            .set(i64::try_from(v.len()).unwrap_or(i64::MAX));
        *self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(v);
    }

    /// Brings the registry and the owners in line with the current view (module docs).
    /// `expired`: nodes that just died, whose members the swarms this node owns forget.
    fn reconcile(&self, state: &AppState, expired: &[u32]) {
        let view = self.view();
        state.drop_unowned_and_purge(&view, self.node, expired);
        state
            .integrity()
            .stop_where(|key| owner_of(&view, swarm_hash(key)) != self.node);
        let mut resyncs: Vec<(u32, String, Vec<PeerId>)> = Vec::new();
        for shard in self.local.iter() {
            for (swarm, l) in lock(shard).iter_mut() {
                let owner = owner_of(&view, swarm_hash(swarm));
                if owner != l.owner {
                    l.owner = owner;
                    resyncs.push((owner, swarm.to_string(), l.peers.clone()));
                }
            }
        }
        for (owner, swarm, peers) in resyncs {
            self.metrics.resyncs.inc();
            if owner == self.node {
                state.resync_owned(&swarm, &peers);
            } else {
                for chunk in peers.chunks(RESYNC_CHUNK) {
                    self.send(
                        owner,
                        &Wire::Resync {
                            swarm: swarm.clone(),
                            peers: chunk.to_vec(),
                        },
                    );
                }
            }
        }
    }

    /// Where node `to` answers overview requests (`/api/swarms` of the cluster).
    fn overview_subject(&self, to: u32) -> String {
        format!("{}.overview.{to}", self.prefix)
    }

    /// The cluster's `/api/swarms`: this node's overview merged with every other live node's,
    /// asked over NATS at once (a node that does not answer within
    /// [`OVERVIEW_REQUEST_TIMEOUT`] is listed in `nodes_missing`).
    pub(crate) async fn overview(&self, state: &AppState) -> Overview {
        let view = self.view();
        let others: Vec<u32> = view.iter().copied().filter(|&n| n != self.node).collect();
        let client = self.client.get().cloned();
        let asks = others.iter().map(|&n| {
            let client = client.clone();
            let subject = self.overview_subject(n);
            async move {
                let client = client?;
                let msg = tokio::time::timeout(
                    OVERVIEW_REQUEST_TIMEOUT,
                    client.request(subject, Bytes::new()),
                )
                .await
                .ok()?
                .ok()?;
                // A node's answer is not trusted more than a client's: undecodable is missing.
                serde_json::from_slice::<Overview>(&msg.payload).ok()
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut parts = vec![state.overview()];
        let mut missing = Vec::new();
        for (n, a) in others.into_iter().zip(answers) {
            match a {
                // One node's figures: a bigger claim is a confused or hostile node.
                Some(mut o) => {
                    o.nodes = 1;
                    o.nodes_missing.clear();
                    o.top.truncate(crate::state::API_TOP_SWARMS);
                    parts.push(o);
                }
                None => missing.push(n),
            }
        }
        Overview::merge(parts, missing)
    }

    /// Answers other nodes' overview requests with this node's own overview.
    async fn serve_overview(
        client: async_nats::Client,
        mut requests: async_nats::Subscriber,
        state: AppState,
    ) {
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply else { continue };
            if let Ok(b) = serde_json::to_vec(&state.overview()) {
                let _ = client.publish(reply, Bytes::from(b)).await;
            }
        }
    }

    /// Where node `to` takes `/integrity` requests (NATS request/reply).
    fn integrity_subject(&self, to: u32) -> String {
        format!("{}.integrity.{to}", self.prefix)
    }

    /// Asks node `owner` for its integrity answer on `url` (Err: not connected, no answer in
    /// time, or an undecodable one; the caller then answers itself).
    pub(crate) async fn integrity_request(
        &self,
        owner: u32,
        url: &reqwest::Url,
    ) -> Result<crate::integrity::Lookup, String> {
        let client = self.client.get().ok_or("not connected to NATS yet")?;
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err("NATS connection down".into());
        }
        let req = client.request(
            self.integrity_subject(owner),
            Bytes::copy_from_slice(url.as_str().as_bytes()),
        );
        let msg = tokio::time::timeout(INTEGRITY_REQUEST_TIMEOUT, req)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        self.metrics.integrity_proxied.inc();
        serde_json::from_slice::<crate::integrity::WireLookup>(&msg.payload)
            .map(crate::integrity::WireLookup::into_lookup)
            .map_err(|e| e.to_string())
    }

    /// Answers the `/integrity` requests other nodes send this one (the owner of their
    /// playlists), at most [`MAX_INTEGRITY_REQUESTS`] at once.
    async fn serve_integrity(
        client: async_nats::Client,
        mut requests: async_nats::Subscriber,
        state: AppState,
    ) {
        use crate::integrity::{AtCap, WireLookup};
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_INTEGRITY_REQUESTS));
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply else { continue };
            let svc = state.integrity().clone();
            let client = client.clone();
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                let busy = WireLookup::from_lookup(Err(AtCap));
                if let Ok(b) = serde_json::to_vec(&busy) {
                    let _ = client.publish(reply, Bytes::from(b)).await;
                }
                continue;
            };
            tokio::spawn(async move {
                let _permit = permit;
                // The asking node checked the URL; checked again: NATS is not trusted more
                // than a client.
                let found = match std::str::from_utf8(&msg.payload)
                    .map_err(|_| "not UTF-8")
                    .and_then(|raw| svc.check_url(raw).map_err(|(_, why)| why))
                {
                    Ok(url) => svc.lookup(&url).await,
                    Err(why) => Ok(crate::integrity::Published::Failed(why.to_owned())),
                };
                if let Ok(b) = serde_json::to_vec(&WireLookup::from_lookup(found)) {
                    let _ = client.publish(reply, Bytes::from(b)).await;
                }
            });
        }
    }

    fn subject(&self, to: u32) -> String {
        if to == HB_SUBJECT {
            format!("{}.hb", self.prefix)
        } else {
            format!("{}.n.{to}", self.prefix)
        }
    }

    fn connect_options(&self, role: &str) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .name(format!("signaling-node-{}{role}", self.node))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None::<usize>)
            // Back within a second of NATS returning (the default backoff grows to seconds):
            // until then the nodes serve alone.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50u64 << attempts.min(5)).min(1_000))
            })
    }

    /// Connects to NATS and runs the node's side of the cluster until aborted (dropping this
    /// future stops its tasks and the liveness thread). Until the first connection, and while
    /// NATS is away, the node serves alone (module docs).
    pub async fn run(self: Arc<Self>, state: AppState) -> Result<(), ClusterError> {
        let client = self
            .connect_options("")
            .connect(self.url.as_str())
            .await
            .map_err(|e| ClusterError::Connect {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let mut inbox = subscribe(&client, self.subject(self.node)).await?;
        let integrity_requests = subscribe(&client, self.integrity_subject(self.node)).await?;
        let overview_requests = subscribe(&client, self.overview_subject(self.node)).await?;
        let _ = self.client.set(client.clone());
        tracing::info!(node = self.node, url = %self.url, "joined the signaling cluster");
        let _integrity = AbortOnDrop(tokio::spawn(Self::serve_integrity(
            client.clone(),
            integrity_requests,
            state.clone(),
        )));
        let _overview = AbortOnDrop(tokio::spawn(Self::serve_overview(
            client.clone(),
            overview_requests,
            state.clone(),
        )));

        let Some(mut out_rx) = lock(&self.out_rx).take() else {
            return Ok(());
        };
        // Dropped with this future: the liveness thread's runtime then ends its loop.
        let (_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let (me, state, main) = (self.clone(), state.clone(), client.clone());
            std::thread::Builder::new()
                .name("cluster-liveness".into())
                .spawn(move || me.run_liveness(state, main, stop_rx))
                .map_err(|e| ClusterError::Liveness(e.to_string()))?;
        }
        let publisher = {
            let me = self.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let mut subjects: HashMap<u32, async_nats::Subject> = HashMap::new();
                let mut batch = Vec::with_capacity(256);
                while out_rx.recv_many(&mut batch, 256).await > 0 {
                    for (to, bytes) in batch.drain(..) {
                        if subjects.len() > MAX_NODES {
                            subjects.clear();
                        }
                        let subject = subjects
                            .entry(to)
                            .or_insert_with(|| me.subject(to).into())
                            .clone();
                        if client.publish(subject, bytes).await.is_ok() {
                            me.metrics.sent.inc();
                        } else {
                            me.metrics.dropped.inc();
                        }
                    }
                }
            })
        };
        let _publisher = AbortOnDrop(publisher);
        while let Some(msg) = inbox.next().await {
            self.metrics.received.inc();
            match serde_json::from_slice::<Wire>(&msg.payload) {
                Ok(w) => state.on_cluster_msg(&self, w),
                Err(e) => {
                    self.metrics.bad.inc();
                    tracing::warn!(error = %e, "bad message from the cluster");
                }
            }
        }
        Ok(())
    }

    /// The liveness thread (module docs): its own runtime and NATS connection; publishes this
    /// node's heartbeats while `main` is connected, reads the others', expires the silent ones
    /// and reconciles on every view change. Returns when `stop` fires or is dropped.
    fn run_liveness(
        self: Arc<Self>,
        state: AppState,
        main: async_nats::Client,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cluster liveness runtime failed: serving alone");
                return;
            }
        };
        rt.block_on(async move {
            let connect = self.connect_options("-liveness").connect(self.url.as_str());
            let client = tokio::select! {
                c = connect => match c {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cluster liveness link failed: serving alone");
                        return;
                    }
                },
                _ = &mut stop => return,
            };
            let hb_subject: async_nats::Subject = self.subject(HB_SUBJECT).into();
            let mut hbs = match client.subscribe(hb_subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot subscribe to heartbeats: serving alone");
                    return;
                }
            };
            let hb = match serde_json::to_vec(&Wire::Hb { node: self.node }) {
                Ok(b) => Bytes::from(b),
                Err(_) => return,
            };
            let mut tick = tokio::time::interval(self.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A periodic pass catches views that changed while a resync was in flight.
            let settle_every = 10u32;
            let mut ticks = 0u32;
            let mut last_tick = Instant::now();
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    m = hbs.next() => {
                        let Some(m) = m else { break };
                        self.on_heartbeat(&state, &m.payload);
                    }
                    _ = tick.tick() => {
                        if main.connection_state() == async_nats::connection::State::Connected
                            && client.publish(hb_subject.clone(), hb.clone()).await.is_ok()
                        {
                            self.metrics.heartbeats_sent.inc();
                        }
                        let now = Instant::now();
                        let late = now.duration_since(last_tick) > self.heartbeat * 2;
                        last_tick = now;
                        if late {
                            // Heard nothing because this thread did not run: read what
                            // waited, and judge the others at the next tick.
                            self.metrics.liveness_late.inc();
                            while let Some(Some(m)) = hbs.next().now_or_never() {
                                self.on_heartbeat(&state, &m.payload);
                            }
                            continue;
                        }
                        let gone = self.expire(now);
                        ticks = ticks.wrapping_add(1);
                        if !gone.is_empty() {
                            tracing::warn!(nodes = ?gone, "cluster nodes expired");
                            self.metrics.nodes_expired.inc_by(gone.len() as u64);
                            self.rebuild_view();
                            self.reconcile(&state, &gone);
                        } else if ticks.is_multiple_of(settle_every) {
                            self.reconcile(&state, &[]);
                        }
                    }
                }
            }
        });
    }

    fn on_heartbeat(&self, state: &AppState, payload: &[u8]) {
        if let Ok(Wire::Hb { node }) = serde_json::from_slice::<Wire>(payload)
            && self.heard(node, Instant::now())
        {
            tracing::info!(node, "cluster node joined");
            self.rebuild_view();
            self.reconcile(state, &[]);
        }
    }

    /// True (and counted) if a relay stamped `t0` is older than [`STALE_RELAY`].
    pub(crate) fn shed_stale(&self, t0: Option<u64>) -> bool {
        let Some(t0) = t0 else { return false };
        let stale = crate::metrics::unix_us().saturating_sub(t0)
            > u64::try_from(STALE_RELAY.as_micros()).unwrap_or(u64::MAX);
        if stale {
            self.metrics.relays_stale.inc();
        }
        stale
    }

    /// Sends `text` to viewer `to` on another node; `t0`: a relay's stamp.
    pub(crate) fn forward(
        &self,
        to: PeerId,
        text: String,
        class: Class,
        swarm: Option<&str>,
        t0: Option<u64>,
    ) {
        self.send(
            node_of(to),
            &Wire::Deliver {
                to,
                control: class == Class::Control,
                text,
                swarm: swarm.map(str::to_owned),
                t0,
            },
        );
    }

    /// Sets the link's live metrics, before a scrape.
    pub fn refresh_metrics(&self) {
        let queued = self.out.max_capacity() - self.out.capacity();
        self.metrics
            .queued
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}

/// Subscribes to `subject`, naming it in the error.
async fn subscribe(
    client: &async_nats::Client,
    subject: String,
) -> Result<async_nats::Subscriber, ClusterError> {
    client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Subscribe {
            subject,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_dead_nodes_swarms() {
        let full = [3, 9, 17, 40];
        let less = [3, 9, 40];
        let mut owned_by_17 = 0;
        for i in 0..2000 {
            let h = swarm_hash(&format!("https://cdn.example/{i}.m3u8"));
            let a = owner_of(&full, h);
            let b = owner_of(&less, h);
            if a == 17 {
                owned_by_17 += 1;
                assert_ne!(b, 17);
            } else {
                assert_eq!(a, b, "swarm {i} moved though its owner lives");
            }
        }
        // Spread: each of 4 nodes owns roughly a quarter.
        assert!((300..700).contains(&owned_by_17), "{owned_by_17}");
    }

    #[test]
    fn peer_ids_name_their_node() {
        let node = (1u32 << NODE_BITS) - 1;
        let id = (u64::from(node) << 32) | 0x7fff_ffff;
        assert_eq!(node_of(id), node);
        assert!(id < (1 << 53));
    }
}
