//! A cluster of three signaling nodes (separate processes of the real binary) sharing swarms
//! through a real NATS server (Debian `nats-server`, installed when missing, started here on a
//! free port).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, offer};
use protocol::PeerId;
use protocol::signaling::{ClientMsg, ErrorCode, ServerMsg};
use signaling_server::cluster::node_of;

const BIN: &str = env!("CARGO_BIN_EXE_signaling-server");
const NATS: &str = "/usr/sbin/nats-server";
const HEARTBEAT_MS: u64 = 100;

/// A child process killed (SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ensure_nats() -> PathBuf {
    let path = PathBuf::from(NATS);
    if !path.exists() {
        eprintln!("{NATS} is missing: apt-get install -y nats-server");
        let install = "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server >/dev/null";
        let ok = Command::new("sh")
            .args([
                "-c",
                &format!("{install} || (apt-get update >/dev/null && {install})"),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok && path.exists(), "could not install nats-server");
    }
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nats-server on 127.0.0.1:`port`, accepting connections when this returns.
fn start_nats(port: u16) -> Proc {
    let child = Command::new(ensure_nats())
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

struct Node {
    addr: SocketAddr,
    proc: Proc,
}

fn start_node(nats_port: u16, prefix: &str, extra: &[String]) -> Node {
    let mut child = Command::new(BIN)
        .args(extra)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-nats",
            &format!("nats://127.0.0.1:{nats_port}"),
            "--cluster-prefix",
            prefix,
            "--cluster-heartbeat-ms",
            &HEARTBEAT_MS.to_string(),
            // Slot notices at once: the test reads them.
            "--slot-notice-ms",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    Node {
        addr,
        proc: Proc(child),
    }
}

async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

/// Waits until every node sees `n` live nodes.
async fn wait_for_view(nodes: &[SocketAddr], n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    for &a in nodes {
        loop {
            if metric(a, "signaling_cluster_nodes").await == Some(n as f64) {
                break;
            }
            assert!(Instant::now() < deadline, "{a} does not see {n} nodes");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn cluster(prefix: &str) -> (Proc, u16, Vec<Node>) {
    cluster_with(prefix, &[]).await
}

async fn cluster_with(prefix: &str, extra: &[String]) -> (Proc, u16, Vec<Node>) {
    let port = free_port();
    let nats = start_nats(port);
    let nodes: Vec<Node> = (0..3).map(|_| start_node(port, prefix, extra)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    wait_for_view(&addrs, 3, Duration::from_secs(10)).await;
    (nats, port, nodes)
}

/// Reads messages until `joined` for `swarm` (slot notices and others are skipped).
async fn joined(c: &mut Client, swarm: &str) -> Vec<PeerId> {
    loop {
        match c.recv().await {
            ServerMsg::Joined {
                swarm: s, peers, ..
            } if s == swarm => return peers,
            _ => continue,
        }
    }
}

/// Reads messages until a `signal` arrives; returns its sender.
async fn signal_from(c: &mut Client) -> PeerId {
    loop {
        match c.recv().await {
            ServerMsg::Signal { from, .. } => return from,
            _ => continue,
        }
    }
}

/// A node's `/api/swarms` at `path` (`None`: not reachable).
async fn api_swarms(a: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(a).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let json = body.split("\r\n\r\n").nth(1).unwrap();
    Some(serde_json::from_str(json).unwrap())
}

/// The members of `swarm` summed over the nodes' own `/api/swarms?scope=node` (only its owner
/// lists it).
async fn members_everywhere(nodes: &[SocketAddr], swarm: &str) -> (usize, usize) {
    let (mut total, mut listing) = (0, 0);
    for &a in nodes {
        let Some(v) = api_swarms(a, "/api/swarms?scope=node").await else {
            continue;
        };
        for sw in v["top"].as_array().unwrap() {
            if sw["swarm"] == swarm {
                total += sw["peers"].as_u64().unwrap() as usize;
                listing += 1;
            }
        }
    }
    (total, listing)
}

/// One swarm spanning three nodes: every member is introduced to members on the other nodes,
/// handshakes are relayed across nodes both ways, slots are consistent (one owner), relays to
/// a peer that was not introduced are refused across nodes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_spans_three_nodes() {
    let (_nats, _port, nodes) = cluster(&format!("t{}", std::process::id())).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let swarm = "https://cdn.example/live/cluster.m3u8|720p";
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = Client::connect(addrs[i % 3]).await;
        c.send(&ClientMsg::Join {
            swarm: swarm.into(),
            token: None,
        })
        .await;
        let peers = joined(&mut c, swarm).await;
        // 8 introductions: everybody who came before.
        assert_eq!(peers.len(), i, "client {i} got {peers:?}");
        clients.push(c);
    }
    let ids: Vec<PeerId> = clients.iter().map(|c| c.id).collect();
    let node_ids: HashSet<u32> = ids.iter().map(|&p| node_of(p)).collect();
    assert_eq!(node_ids.len(), 3, "ids name three nodes: {ids:?}");

    // The last one signals everybody; each answers (both directions cross nodes).
    for &to in &ids[..5] {
        clients[5]
            .send(&ClientMsg::Signal {
                swarm: swarm.into(),
                to,
                data: offer("v=0 x"),
            })
            .await;
    }
    for c in clients.iter_mut().take(5) {
        assert_eq!(signal_from(c).await, ids[5]);
        c.send(&ClientMsg::Signal {
            swarm: swarm.into(),
            to: ids[5],
            data: offer("v=0 y"),
        })
        .await;
    }
    let mut answered = HashSet::new();
    for _ in 0..5 {
        answered.insert(signal_from(&mut clients[5]).await);
    }
    assert_eq!(answered, ids[..5].iter().copied().collect());

    // A peer id that is not in the swarm: refused, even when the owner is elsewhere.
    let stranger = (u64::from(node_of(ids[1])) << 32) | 12345;
    clients[0]
        .send(&ClientMsg::Signal {
            swarm: swarm.into(),
            to: stranger,
            data: offer("v=0 z"),
        })
        .await;
    loop {
        match clients[0].recv().await {
            ServerMsg::Error { code, .. } => {
                assert_eq!(code, ErrorCode::UnknownPeer);
                break;
            }
            _ => continue,
        }
    }

    // Slots: one owner numbers the members 0..6.
    let mut slots = HashMap::new();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&ClientMsg::Join {
            swarm: swarm.into(),
            token: None,
        })
        .await;
        loop {
            match c.recv().await {
                ServerMsg::Joined { slot, slots: n, .. } => {
                    assert_eq!(n, 6);
                    slots.insert(i, slot);
                    break;
                }
                _ => continue,
            }
        }
    }
    let distinct: HashSet<u32> = slots.values().copied().collect();
    assert_eq!(distinct, (0..6).collect(), "{slots:?}");
    let (members, owners) = members_everywhere(&addrs, swarm).await;
    assert_eq!((members, owners), (6, 1), "one node owns the swarm");
    // Traffic reports go to each viewer's own node; the cluster's view adds them up.
    for c in clients.iter_mut() {
        c.send(&ClientMsg::Stats {
            swarm: swarm.into(),
            stats: protocol::signaling::StatsReport {
                http_bytes: 1_000,
                p2p_bytes: 3_000,
                peers: 1,
                ..Default::default()
            },
        })
        .await;
        c.ping_pong().await;
    }
    // Any node's `/api/swarms` is the cluster's: three nodes' connections, the swarm once.
    for &a in &addrs {
        let v = api_swarms(a, "/api/swarms").await.unwrap();
        assert_eq!(v["nodes"], 3, "{v}");
        assert_eq!(v["nodes_missing"].as_array().map(Vec::len), Some(0), "{v}");
        assert_eq!(
            (v["connections"].as_u64(), v["members"].as_u64()),
            (Some(6), Some(6)),
            "{v}"
        );
        let listed: Vec<&serde_json::Value> = v["top"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|sw| sw["swarm"] == swarm)
            .collect();
        assert_eq!(listed.len(), 1, "{v}");
        assert_eq!(listed[0]["peers"], 6, "{v}");
        let sw = listed[0];
        assert_eq!(
            (
                sw["http_bytes"].as_u64(),
                sw["p2p_bytes"].as_u64(),
                sw["peer_links"].as_i64()
            ),
            (Some(6_000), Some(18_000), Some(6)),
            "{v}"
        );
        assert!((sw["offload"].as_f64().unwrap() - 0.75).abs() < 1e-9, "{v}");
        let own = api_swarms(a, "/api/swarms?scope=node").await.unwrap();
        assert_eq!(
            (own["nodes"].as_u64(), own["connections"].as_u64()),
            (Some(1), Some(2)),
            "{own}"
        );
    }
}

/// A node is killed (SIGKILL) mid-run: its viewers, given the list of nodes, reconnect to
/// another one and are back in the swarm within 10 s; the swarm's count heals (no ghosts of the
/// dead node's viewers); a rejoined viewer is introduced across nodes again and can relay. Then
/// NATS itself restarts: the nodes keep serving, see each other again, and share the swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_viewers_rejoin_and_engine_restart_heals() {
    let (nats, port, mut nodes) = cluster(&format!("k{}", std::process::id())).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // Several swarms, so that the dead node owned some and not others.
    let swarms: Vec<String> = (0..4)
        .map(|i| format!("https://cdn.example/live/{i}.m3u8|360p"))
        .collect();
    // 4 viewers per node, each in one swarm: every swarm spans all nodes.
    let mut viewers: Vec<(usize, String, Client)> = Vec::new();
    for (n, &addr) in addrs.iter().enumerate() {
        for s in &swarms {
            let mut c = Client::connect(addr).await;
            c.send(&ClientMsg::Join {
                swarm: s.clone(),
                token: None,
            })
            .await;
            joined(&mut c, s).await;
            viewers.push((n, s.clone(), c));
        }
    }
    for s in &swarms {
        assert_eq!(members_everywhere(&addrs, s).await, (3, 1));
    }

    let victim = 1;
    let killed_at = Instant::now();
    drop(nodes.remove(victim).proc);
    let live: Vec<SocketAddr> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, a)| *a)
        .collect();

    // The victim's viewers: the socket dies; they try the next URL of their list.
    let mut rejoined = 0;
    for (n, s, c) in viewers.iter_mut().filter(|(n, ..)| *n == victim) {
        // Messages sent before the kill may still be read; then the socket fails.
        while c.try_recv(Duration::from_secs(5)).await.is_ok() {}
        let mut next = (*n + 1) % 3;
        let mut fresh = loop {
            match tokio::time::timeout(
                Duration::from_secs(2),
                tokio_tungstenite::connect_async(format!("ws://{}/ws", addrs[next])),
            )
            .await
            {
                Ok(Ok(_)) if next != victim => break Client::connect(addrs[next]).await,
                _ => next = (next + 1) % 3,
            }
        };
        fresh
            .send(&ClientMsg::Join {
                swarm: s.clone(),
                token: None,
            })
            .await;
        let peers = joined(&mut fresh, s).await;
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "rejoin took {:?}",
            killed_at.elapsed()
        );
        // Introduced to viewers on the other live node too (the swarm spans nodes again).
        assert!(!peers.is_empty(), "{s}: no introductions after the rejoin");
        *c = fresh;
        *n = next;
        rejoined += 1;
    }
    assert_eq!(rejoined, 4);
    wait_for_view(&live, 2, Duration::from_secs(5)).await;
    // No ghosts: each swarm counts exactly its three live viewers, at one owner.
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in &swarms {
        loop {
            let got = members_everywhere(&live, s).await;
            if got == (3, 1) {
                break;
            }
            assert!(Instant::now() < deadline, "{s}: members/owners {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A relay across nodes from a rejoined viewer to a viewer of the other live node.
    assert_cross_node_relay(&mut viewers, &swarms[0]).await;

    // The engine restarts: nodes serve alone meanwhile, then share swarms again.
    drop(nats);
    wait_for_view(&live, 1, Duration::from_secs(5)).await;
    let _nats = start_nats(port);
    wait_for_view(&live, 2, Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in &swarms {
        loop {
            let got = members_everywhere(&live, s).await;
            if got == (3, 1) {
                break;
            }
            assert!(Instant::now() < deadline, "{s} after the restart: {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Membership was re-announced: every viewer got a fresh `joined`; relays cross nodes again.
    assert_cross_node_relay(&mut viewers, &swarms[1]).await;
}

/// Two viewers of `swarm` on different nodes: one asks for peers until it is introduced to
/// the other, then signals it.
async fn assert_cross_node_relay(viewers: &mut [(usize, String, Client)], swarm: &str) {
    let idx: Vec<usize> = viewers
        .iter()
        .enumerate()
        .filter(|(_, (_, s, _))| s == swarm)
        .map(|(i, _)| i)
        .collect();
    let (a, b) = idx
        .iter()
        .flat_map(|&a| idx.iter().map(move |&b| (a, b)))
        .find(|&(a, b)| viewers[a].0 != viewers[b].0)
        .unwrap();
    let to = viewers[b].2.id;
    // The pair may already exist; a fresh `join` re-introduces when it does not.
    viewers[a]
        .2
        .send(&ClientMsg::Signal {
            swarm: swarm.into(),
            to,
            data: offer("v=0 heal"),
        })
        .await;
    let from = viewers[a].2.id;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match viewers[b].2.try_recv(Duration::from_secs(3)).await {
            Ok(ServerMsg::Signal { from: f, .. }) if f == from => return,
            Ok(_) => {}
            Err(e) => panic!("no relay {from} -> {to} across nodes: {e}"),
        }
        assert!(Instant::now() < deadline, "no relay {from} -> {to}");
    }
}

/// An origin in memory: VOD playlists `/live/<i>.m3u8` of three segments each; counts the
/// requests per path.
#[derive(Clone, Default)]
struct Origin {
    hits: std::sync::Arc<std::sync::Mutex<HashMap<String, u32>>>,
}

const PLAYLISTS: usize = 4;
const SEGMENTS: usize = 3;

impl Origin {
    async fn start() -> (Origin, SocketAddr) {
        use axum::extract::{Request, State};
        async fn serve(State(o): State<Origin>, req: Request) -> axum::response::Response {
            use axum::response::IntoResponse;
            let path = req.uri().path().to_owned();
            *o.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
            if path.ends_with(".m3u8") {
                let name = path.trim_start_matches("/live/").trim_end_matches(".m3u8");
                let mut pl = String::from(
                    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n",
                );
                for s in 0..SEGMENTS {
                    pl.push_str(&format!("#EXTINF:2.0,\n{name}-{s}.ts\n"));
                }
                pl.push_str("#EXT-X-ENDLIST\n");
                pl.into_response()
            } else {
                // 40 KiB of bytes that differ per path.
                let seed = path
                    .bytes()
                    .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
                (0..40_000u32)
                    .map(|i| seed.wrapping_add(i as u8))
                    .collect::<Vec<u8>>()
                    .into_response()
            }
        }
        let o = Origin::default();
        let app = axum::Router::new().fallback(serve).with_state(o.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (o, addr)
    }

    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A metric summed over the nodes, and how many nodes have it above 0.
async fn metric_everywhere(nodes: &[SocketAddr], name: &str) -> (f64, usize) {
    let (mut sum, mut nonzero) = (0.0, 0);
    for &a in nodes {
        let v = metric(a, name).await.unwrap_or(0.0);
        sum += v;
        if v > 0.0 {
            nonzero += 1;
        }
    }
    (sum, nonzero)
}

/// The integrity service in a cluster: every node answers `/integrity` for every playlist,
/// with the same manifest, but only the playlist's owner follows it, so the origin serves each
/// playlist and each segment exactly once for the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_follows_each_playlist() {
    let (origin, origin_addr) = Origin::start().await;
    let extra = vec![
        "--integrity-origin".to_owned(),
        format!("http://{origin_addr}/live/"),
    ];
    let (_nats, _port, nodes) = cluster_with(&format!("i{}", std::process::id()), &extra).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let http = reqwest::Client::new();
    for i in 0..PLAYLISTS {
        let playlist = format!("http://{origin_addr}/live/{i}.m3u8?token=t{i}");
        let mut bodies = HashSet::new();
        // Each node is asked (twice: the second answer comes from memory) until it has all
        // segments.
        for &a in addrs.iter().chain(&addrs) {
            bodies.insert(whole_manifest(&http, a, &playlist, "").await);
        }
        assert_eq!(
            bodies.len(),
            1,
            "nodes answer different manifests for {playlist}"
        );
        assert_eq!(origin.hits(&format!("/live/{i}.m3u8")), 1, "playlist {i}");
        for s in 0..SEGMENTS {
            assert_eq!(
                origin.hits(&format!("/live/{i}-{s}.ts")),
                1,
                "segment {i}-{s} fetched by more than one node"
            );
        }
    }
    // One follower per playlist over the cluster; with 4 playlists over 3 nodes, others than
    // the first node asked did the following, and requests crossed nodes.
    assert_eq!(
        metric_everywhere(&addrs, "signaling_integrity_playlists")
            .await
            .0,
        PLAYLISTS as f64
    );
    assert_eq!(
        metric_everywhere(&addrs, "signaling_integrity_segment_fetches_total")
            .await
            .0,
        (PLAYLISTS * SEGMENTS) as f64
    );
    let (proxied, _) = metric_everywhere(&addrs, "signaling_cluster_integrity_proxied_total").await;
    assert!(proxied >= PLAYLISTS as f64, "{proxied} requests proxied");

    // A following node dies: the others still answer for every playlist (the asked node
    // follows it itself until the view moves the playlist to a live owner).
    let mut nodes = nodes;
    let mut victim = None;
    for (i, &a) in addrs.iter().enumerate() {
        if metric(a, "signaling_integrity_playlists")
            .await
            .unwrap_or(0.0)
            > 0.0
        {
            victim = Some(i);
            break;
        }
    }
    let victim = victim.unwrap();
    drop(nodes.remove(victim).proc);
    let live: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    for i in 0..PLAYLISTS {
        let playlist = format!("http://{origin_addr}/live/{i}.m3u8?token=t{i}");
        for &a in &live {
            whole_manifest(&http, a, &playlist, " after a node died").await;
        }
    }
}

/// Asks node `a` for `playlist`'s manifest until it lists all [`SEGMENTS`] (10 s at most), and
/// returns its body; `when` goes into the failure messages.
async fn whole_manifest(
    http: &reqwest::Client,
    a: SocketAddr,
    playlist: &str,
    when: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = http
            .get(format!("http://{a}/integrity"))
            .query(&[("playlist", playlist)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{a} {playlist}{when}");
        let body = resp.text().await.unwrap();
        let m = protocol::manifest::Manifest::from_json(&body).unwrap();
        if m.segments.len() == SEGMENTS {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{a}: {playlist} not hashed{when}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
