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
//! ## Bounds
//! * Outgoing messages wait in one queue of `--cluster-queue` messages; when it is full the
//!   message is dropped and counted (`signaling_cluster_dropped_total`): a dropped relay is
//!   retried by the viewers, a dropped notice is healed by the next resync or `gone`.
//! * Incoming messages wait in async-nats' subscription buffer (its default, 65,536); a
//!   subscriber that falls behind loses messages there (NATS "slow consumer"), same policy.
//! * The view holds at most [`MAX_NODES`] nodes (heartbeats of further ones are ignored).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use protocol::PeerId;
use protocol::signaling::SignalData;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::state::{AppState, Class, lock};

/// Heartbeats a node may miss before the others consider it dead.
pub const EXPIRY_FACTOR: u32 = 4;
/// Nodes in one view (further heartbeats are ignored).
pub const MAX_NODES: usize = 1024;
/// Node ids are in `1..2^NODE_BITS`; peer ids are `node << 32 | counter`.
pub const NODE_BITS: u32 = 20;
const LOCAL_SHARDS: usize = 16;
/// Members per `resync` message (an owner change for a large swarm becomes several messages).
const RESYNC_CHUNK: usize = 512;

/// Errors of the cluster link.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
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

/// Counters of the cluster link (rendered in `/metrics`).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub bad: AtomicU64,
    pub relays_forwarded: AtomicU64,
    pub resyncs: AtomicU64,
    pub nodes_expired: AtomicU64,
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
    pub metrics: ClusterMetrics,
}

/// The `to` of heartbeats in the outgoing queue.
const HB_SUBJECT: u32 = 0;

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
            metrics: ClusterMetrics::default(),
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
            self.metrics.dropped.fetch_add(1, Relaxed);
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
            self.metrics.resyncs.fetch_add(1, Relaxed);
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

    fn subject(&self, to: u32) -> String {
        if to == HB_SUBJECT {
            format!("{}.hb", self.prefix)
        } else {
            format!("{}.n.{to}", self.prefix)
        }
    }

    /// Connects to NATS and runs the node's side of the cluster until aborted. Until the first
    /// connection, and while NATS is away, the node serves alone (module docs).
    pub async fn run(self: Arc<Self>, state: AppState) -> Result<(), ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("signaling-node-{}", self.node))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None::<usize>)
            // Back within a second of NATS returning (the default backoff grows to seconds):
            // until then the nodes serve alone.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50u64 << attempts.min(5)).min(1_000))
            })
            .connect(self.url.as_str())
            .await
            .map_err(|e| ClusterError::Connect {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let sub = |subject: String| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| ClusterError::Subscribe {
                        subject,
                        reason: e.to_string(),
                    })
            }
        };
        let mut inbox = sub(self.subject(self.node)).await?;
        let mut hbs = sub(self.subject(HB_SUBJECT)).await?;
        tracing::info!(node = self.node, url = %self.url, "joined the signaling cluster");

        let Some(mut out_rx) = lock(&self.out_rx).take() else {
            return Ok(());
        };
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
                            me.metrics.sent.fetch_add(1, Relaxed);
                        } else {
                            me.metrics.dropped.fetch_add(1, Relaxed);
                        }
                    }
                }
            })
        };
        let inbound = {
            let me = self.clone();
            let state = state.clone();
            tokio::spawn(async move {
                while let Some(msg) = inbox.next().await {
                    me.metrics.received.fetch_add(1, Relaxed);
                    match serde_json::from_slice::<Wire>(&msg.payload) {
                        Ok(w) => state.on_cluster_msg(&me, w),
                        Err(e) => {
                            me.metrics.bad.fetch_add(1, Relaxed);
                            tracing::warn!(error = %e, "bad message from the cluster");
                        }
                    }
                }
            })
        };
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A periodic pass catches views that changed while a resync was in flight.
        let settle_every = 10u32;
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                m = hbs.next() => {
                    let Some(m) = m else { break };
                    if let Ok(Wire::Hb { node }) = serde_json::from_slice::<Wire>(&m.payload)
                        && self.heard(node, Instant::now())
                    {
                        tracing::info!(node, "cluster node joined");
                        self.rebuild_view();
                        self.reconcile(&state, &[]);
                    }
                }
                _ = tick.tick() => {
                    self.send(HB_SUBJECT, &Wire::Hb { node: self.node });
                    let gone = self.expire(Instant::now());
                    ticks = ticks.wrapping_add(1);
                    if !gone.is_empty() {
                        tracing::warn!(nodes = ?gone, "cluster nodes expired");
                        self.metrics.nodes_expired.fetch_add(gone.len() as u64, Relaxed);
                        self.rebuild_view();
                        self.reconcile(&state, &gone);
                    } else if ticks.is_multiple_of(settle_every) {
                        self.reconcile(&state, &[]);
                    }
                }
            }
        }
        publisher.abort();
        inbound.abort();
        Ok(())
    }

    /// Sends `text` to viewer `to` on another node.
    pub(crate) fn forward(&self, to: PeerId, text: String, class: Class, swarm: Option<&str>) {
        self.send(
            node_of(to),
            &Wire::Deliver {
                to,
                control: class == Class::Control,
                text,
                swarm: swarm.map(str::to_owned),
            },
        );
    }

    pub(crate) fn render_metrics(&self, o: &mut String) {
        use std::fmt::Write;
        let m = &self.metrics;
        let view = self.view();
        let _ = writeln!(
            o,
            "# HELP signaling_cluster_nodes Live signaling nodes this node sees (itself included).\n# TYPE signaling_cluster_nodes gauge\nsignaling_cluster_nodes {}",
            view.len()
        );
        for (name, help, v) in [
            (
                "signaling_cluster_sent_total",
                "Messages published to other nodes.",
                &m.sent,
            ),
            (
                "signaling_cluster_received_total",
                "Messages received from other nodes.",
                &m.received,
            ),
            (
                "signaling_cluster_dropped_total",
                "Messages to other nodes dropped (queue full or NATS away).",
                &m.dropped,
            ),
            (
                "signaling_cluster_bad_total",
                "Undecodable messages from the cluster.",
                &m.bad,
            ),
            (
                "signaling_cluster_relays_forwarded_total",
                "Handshake relays sent to another node.",
                &m.relays_forwarded,
            ),
            (
                "signaling_cluster_resyncs_total",
                "Swarms re-announced to a new owner.",
                &m.resyncs,
            ),
            (
                "signaling_cluster_nodes_expired_total",
                "Nodes seen dying (missed heartbeats).",
                &m.nodes_expired,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
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
