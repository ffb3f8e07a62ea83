//! `signal-load`: load generator for the signaling server (driven by `cargo xtask bench
//! signaling`, which may start several of them to spread file descriptors).
//!
//! 1. Opens `--connections` WebSockets to the `--server`s (client `g = --offset + i` goes to
//!    server `g % servers`: the nodes of a cluster, so each swarm spans them; client `g` binds to its own 127.x.y.1 source
//!    address, ~1000 clients per address, so ephemeral ports never run out), each joins swarm
//!    `bench-{(offset + i) / swarm_size}`. Prints `{"phase":"connected",...}`.
//! 2. Waits for a line `go` on stdin, then every client sends offers to peers it knows at a steady
//!    total rate of `--offers-per-s`; receivers answer each offer. The sdp carries the send time
//!    (µs since the Unix epoch), so the receiving client measures relay latency.
//! 3. After `--seconds`, prints `{"phase":"done",...}` with counts and a latency histogram, exits.
//!
//! Loopback only; everything is bounded in time.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use protocol::PeerId;
use protocol::signaling::{ClientMsg, ServerMsg, SignalData};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser, Clone)]
struct Args {
    /// Server address (loopback); repeat for the nodes of a cluster.
    #[arg(long, required = true)]
    server: Vec<SocketAddr>,
    #[arg(long, default_value_t = 1000)]
    connections: u64,
    /// Global index of this process's first client (several processes share one run).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    #[arg(long, default_value_t = 10)]
    swarm_size: u64,
    /// Offers per second sent by this process's clients together (each is answered).
    #[arg(long, default_value_t = 1000.0)]
    offers_per_s: f64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes of padding in each sdp (a data-channel-only browser offer is ~500 bytes).
    #[arg(long, default_value_t = 400)]
    sdp_bytes: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

/// Latency histogram: 10 µs buckets up to 200 ms.
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 20_000;

#[derive(Default)]
struct Counters {
    connect_errors: AtomicU64,
    errors: AtomicU64,
    offers_sent: AtomicU64,
    relays_received: AtomicU64,
    /// Relays whose sender sits on another node (peer ids name their node: `id >> 32`).
    cross_node: AtomicU64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn source_ip(global: u64) -> Ipv4Addr {
    let n = global / 1000;
    Ipv4Addr::new(127, 1 + (n / 250) as u8, (n % 250) as u8 + 1, 1)
}

type Ws = WebSocketStream<TcpStream>;

async fn open(args: &Args, global: u64) -> Result<(Ws, PeerId, Vec<PeerId>)> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(source_ip(global), 0)))?;
    let server = args.server[(global % args.server.len() as u64) as usize];
    let stream = sock.connect(server).await?;
    stream.set_nodelay(true)?;
    // Small buffers: this process holds thousands of clients (tungstenite's default 128 KiB
    // read buffer is zero-filled, i.e. resident, per connection).
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{server}/ws");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg)).await?;
    let id = match next_msg(&mut ws).await? {
        ServerMsg::Welcome { peer_id, .. } => peer_id,
        other => bail!("expected welcome, got {other:?}"),
    };
    let swarm = format!("bench-{}", global / args.swarm_size);
    ws.send(Message::Text(
        ClientMsg::Join { swarm, token: None }.to_json().into(),
    ))
    .await?;
    loop {
        match next_msg(&mut ws).await? {
            ServerMsg::Joined { peers, .. } => return Ok((ws, id, peers)),
            ServerMsg::Slot { .. } => continue,
            other => bail!("expected joined, got {other:?}"),
        }
    }
}

async fn next_msg(ws: &mut Ws) -> Result<ServerMsg> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("timeout")?
            .context("closed")??;
        if let Message::Text(t) = m {
            return Ok(ServerMsg::from_json(t.as_str(), 1 << 20)?);
        }
    }
}

/// How the server starts every relayed signal (`ServerMsg::Signal` serialization).
const SIGNAL_PREFIX: &str = r#"{"v":1,"type":"signal","#;

/// The decimal number right after the first `key` in `text` (the send time is carried in the
/// sdp as `t=<µs since the Unix epoch> <padding>`).
fn field_u64(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[allow(clippy::too_many_arguments)]
async fn client(
    args: Arc<Args>,
    global: u64,
    me: PeerId,
    mut ws: Ws,
    mut known: Vec<PeerId>,
    mut go: watch::Receiver<bool>,
    counters: Arc<Counters>,
    hist: Arc<Vec<AtomicU64>>,
    pad: Arc<str>,
) {
    let swarm = format!("bench-{}", global / args.swarm_size);
    let mut rng = SmallRng::seed_from_u64(global);
    // Wait for "go" while reading whatever arrives (slot notices).
    loop {
        tokio::select! {
            r = go.changed() => {
                if r.is_err() {
                    return;
                }
                if *go.borrow() {
                    break;
                }
            }
            m = ws.next() => match m {
                Some(Ok(_)) => {}
                _ => { counters.errors.fetch_add(1, Relaxed); return; }
            }
        }
    }
    // Per-client period so that the process total is `offers_per_s`; random phase.
    let period = Duration::from_secs_f64(args.connections as f64 / args.offers_per_s.max(0.001));
    let start = tokio::time::Instant::now() + period.mul_f64(rng.gen_range(0.0..1.0));
    let mut tick = tokio::time::interval_at(start, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => {
                if known.is_empty() { continue; }
                let to = known[rng.gen_range(0..known.len())];
                let sdp = format!("t={} {pad}", now_us());
                let msg = ClientMsg::Signal { swarm: swarm.clone(), to, data: SignalData::Offer { sdp } };
                if ws.send(Message::Text(msg.to_json().into())).await.is_err() {
                    counters.errors.fetch_add(1, Relaxed);
                    return;
                }
                counters.offers_sent.fetch_add(1, Relaxed);
            }
            m = ws.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => { counters.errors.fetch_add(1, Relaxed); return; }
                };
                let text = text.as_str();
                // Fast path for relays (most traffic): a substring scan instead of a full JSON
                // parse, so the load generator does not starve the server of CPU.
                if text.starts_with(SIGNAL_PREFIX) {
                    let (Some(from), Some(t)) = (field_u64(text, "\"from\":"), field_u64(text, "t=")) else {
                        counters.errors.fetch_add(1, Relaxed);
                        continue;
                    };
                    let lat = now_us().saturating_sub(t);
                    let b = ((lat / BUCKET_US) as usize).min(BUCKETS - 1);
                    hist[b].fetch_add(1, Relaxed);
                    counters.relays_received.fetch_add(1, Relaxed);
                    if from >> 32 != me >> 32 {
                        counters.cross_node.fetch_add(1, Relaxed);
                    }
                    if !known.contains(&from) && known.len() < 32 {
                        known.push(from);
                    }
                    if text.contains("\"kind\":\"offer\"") {
                        let sdp = format!("t={} {pad}", now_us());
                        let msg = ClientMsg::Signal { swarm: swarm.clone(), to: from, data: SignalData::Answer { sdp } };
                        if ws.send(Message::Text(msg.to_json().into())).await.is_err() {
                            counters.errors.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                    continue;
                }
                match ServerMsg::from_json(text, 1 << 20) {
                    Ok(ServerMsg::PeerLeft { peer, .. }) => known.retain(|p| *p != peer),
                    Ok(ServerMsg::Error { .. }) | Err(_) => {
                        counters.errors.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    // Leave the socket open until the process exits: closing 100k sockets at once would add
    // churn (and peer_left storms) to the end of the measurement.
    let _keep_open = ws;
    std::future::pending::<()>().await;
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let args = Arc::new(args);
    let counters = Arc::new(Counters::default());
    let hist: Arc<Vec<AtomicU64>> = Arc::new((0..BUCKETS).map(|_| AtomicU64::new(0)).collect());
    let pad: Arc<str> = "x".repeat(args.sdp_bytes).into();
    let (go_tx, go_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = std::time::Instant::now();
    let mut opens = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        let global = args.offset + i;
        let (args, sem, counters) = (args.clone(), sem.clone(), counters.clone());
        let (go, hist, pad) = (go_rx.clone(), hist.clone(), pad.clone());
        opens.spawn(async move {
            let Ok(_permit) = sem.acquire().await else {
                return false;
            };
            match open(&args, global).await {
                Ok((ws, id, peers)) => {
                    drop(_permit);
                    tokio::spawn(client(args, global, id, ws, peers, go, counters, hist, pad));
                    true
                }
                Err(e) => {
                    if counters.connect_errors.fetch_add(1, Relaxed) < 3 {
                        eprintln!("signal-load: client {global}: {e:#}");
                    }
                    false
                }
            }
        });
    }
    let mut ok = 0u64;
    while let Some(r) = opens.join_next().await {
        ok += u64::from(matches!(r, Ok(true)));
    }
    println!(
        "{{\"phase\":\"connected\",\"ok\":{ok},\"errors\":{},\"seconds\":{:.1}}}",
        counters.connect_errors.load(Relaxed),
        started.elapsed().as_secs_f64()
    );
    // Wait for the driver's "go" (or stdin closing: then stop).
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    match lines.next_line().await? {
        Some(l) if l.trim() == "go" => {}
        _ => return Ok(()),
    }
    let t0 = std::time::Instant::now();
    let _ = go_tx.send(true);
    tokio::time::sleep(Duration::from_secs(args.seconds) + Duration::from_millis(300)).await;
    let secs = t0.elapsed().as_secs_f64();
    let sparse: Vec<String> = hist
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let c = c.load(Relaxed);
            (c > 0).then(|| format!("[{},{c}]", i as u64 * BUCKET_US))
        })
        .collect();
    println!(
        "{{\"phase\":\"done\",\"seconds\":{secs:.3},\"offers_sent\":{},\"relays_received\":{},\"cross_node\":{},\"errors\":{},\"hist_us\":[{}]}}",
        counters.offers_sent.load(Relaxed),
        counters.relays_received.load(Relaxed),
        counters.cross_node.load(Relaxed),
        counters.errors.load(Relaxed) + counters.connect_errors.load(Relaxed),
        sparse.join(",")
    );
    // Exit without closing every socket gracefully (the driver stops the server next).
    std::process::exit(0);
}
