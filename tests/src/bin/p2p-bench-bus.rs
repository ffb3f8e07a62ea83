//! `cargo xtask bench bus`: the signaling cluster's traffic over NATS and over Redis pub/sub,
//! side by side, to choose the engine with figures (issue 15; docs/ARCHITECTURE.md, "Why NATS").
//!
//! Starts each engine from Debian (`nats-server`, `redis-server`) on a free loopback port and
//! plays `--nodes` cluster nodes against it, as the nodes use it: each node subscribes to its
//! own subject (channel) and publishes `--msgs-per-s` ÷ nodes messages of `--size` bytes per
//! second, round robin to the other nodes' subjects, in per-millisecond batches (a NATS
//! client buffers and flushes; Redis gets one pipeline per batch, so neither pays a round trip
//! per message). Measured over `--seconds` after a 1 s warm-up: messages delivered per second,
//! the engine's CPU per message (from `/proc/<pid>/stat`, the clients' apart), and publish →
//! delivery latency; the CPU of this process (the nodes' client side: publishing, replies,
//! subscriptions) apart. Ends with one JSON line.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::StreamExt;

#[derive(Parser, Debug)]
#[command(about = "NATS against Redis pub/sub for the signaling cluster's traffic")]
struct Args {
    /// Engines to measure, in order.
    #[arg(long, default_value = "nats,redis", value_delimiter = ',')]
    engines: Vec<String>,
    /// Cluster nodes played (a subscriber and a publisher each).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Messages per second offered, all nodes together.
    #[arg(long, default_value_t = 20_000)]
    msgs_per_s: u64,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes per message (a cross-node relay of an ICE candidate is ~300, of an SDP ~1,500).
    #[arg(long, default_value_t = 400)]
    size: usize,
}

/// Latency samples kept per run (the rest are counted, not sampled).
const MAX_SAMPLES: usize = 4_000_000;

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start(engine: &str) -> Result<Server> {
    let port = free_port()?;
    let p = port.to_string();
    let mut cmd = match engine {
        "nats" => {
            let mut c = Command::new("/usr/sbin/nats-server");
            c.args(["-a", "127.0.0.1", "-p", &p]);
            c
        }
        "redis" => {
            let mut c = Command::new("/usr/bin/redis-server");
            c.args(["--bind", "127.0.0.1", "--port", &p, "--save", ""])
                .args(["--appendonly", "no"]);
            c
        }
        other => bail!("unknown engine {other:?} (nats, redis)"),
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("starting {engine} (install: apt-get install nats-server redis-server)")
        })?;
    let server = Server { child, port };
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("{engine} did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// CPU time of `pid` so far, µs (utime + stime; the kernel's clock ticks are 100 Hz here).
fn cpu_us(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // After the command name: state is field 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) * 10_000
}

/// What the publishers and subscribers share.
struct Shared {
    t0: Instant,
    received: AtomicU64,
    sent: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
    samples: std::sync::Mutex<Vec<u32>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    fn delivered(&self, payload: &[u8]) {
        self.received.fetch_add(1, Relaxed);
        if !self.measuring.load(Relaxed) {
            return;
        }
        let Some(stamp) = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            return;
        };
        let lat = self.now_us().saturating_sub(u64::from_le_bytes(stamp));
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < MAX_SAMPLES {
            s.push(lat.min(u64::from(u32::MAX)) as u32);
        }
    }
}

enum Publisher {
    Nats(async_nats::Client),
    Redis(redis::aio::MultiplexedConnection),
}

impl Publisher {
    async fn send_batch(&mut self, batch: &[(String, Vec<u8>)]) -> Result<()> {
        match self {
            Publisher::Nats(c) => {
                // No flush: the client flushes its write buffer by itself, as the nodes'
                // publisher relies on (a flush is a PING round trip).
                for (subject, payload) in batch {
                    c.publish(subject.clone(), payload.clone().into()).await?;
                }
            }
            Publisher::Redis(c) => {
                let mut pipe = redis::pipe();
                for (chan, payload) in batch {
                    pipe.cmd("PUBLISH")
                        .arg(chan)
                        .arg(payload.as_slice())
                        .ignore();
                }
                pipe.query_async::<()>(c).await?;
            }
        }
        Ok(())
    }
}

fn subject(node: usize) -> String {
    format!("bench.n.{node}")
}

async fn subscribe(engine: &str, url: &str, node: usize, sh: Arc<Shared>) -> Result<()> {
    match engine {
        "nats" => {
            let c = async_nats::connect(url).await?;
            let mut sub = c.subscribe(subject(node)).await?;
            c.flush().await?;
            tokio::spawn(async move {
                let _keep = c;
                while let Some(m) = sub.next().await {
                    sh.delivered(&m.payload);
                }
            });
        }
        _ => {
            let client = redis::Client::open(url)?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(subject(node)).await?;
            tokio::spawn(async move {
                let mut msgs = ps.into_on_message();
                while let Some(m) = msgs.next().await {
                    sh.delivered(m.get_payload_bytes());
                }
            });
        }
    }
    Ok(())
}

async fn publisher(engine: &str, url: &str) -> Result<Publisher> {
    Ok(match engine {
        "nats" => Publisher::Nats(async_nats::connect(url).await?),
        _ => Publisher::Redis(
            redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await?,
        ),
    })
}

/// One node's publishing loop: every millisecond, what is due at its rate, round robin over
/// the other nodes.
async fn publish(
    mut p: Publisher,
    node: usize,
    nodes: usize,
    rate: f64,
    size: usize,
    sh: Arc<Shared>,
) {
    let start = Instant::now();
    let (mut sent, mut next) = (0u64, 0usize);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut batch = Vec::new();
    while !sh.stop.load(Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        batch.clear();
        while sent < due && batch.len() < 1_000 {
            next = (next + 1) % nodes;
            if next == node {
                next = (next + 1) % nodes;
            }
            let mut payload = sh.now_us().to_le_bytes().to_vec();
            payload.resize(size.max(8), b'x');
            batch.push((subject(next), payload));
            sent += 1;
        }
        if batch.is_empty() {
            continue;
        }
        if p.send_batch(&batch).await.is_err() {
            return;
        }
        sh.sent.fetch_add(batch.len() as u64, Relaxed);
    }
    if let Publisher::Nats(c) = &p {
        let _ = c.flush().await;
    }
}

struct Figures {
    msgs_per_s: f64,
    cpu_us_per_msg: f64,
    client_cpu_us_per_msg: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: u64,
}

async fn measure(engine: &str, a: &Args) -> Result<Figures> {
    let server = start(engine)?;
    let url = match engine {
        "nats" => format!("nats://127.0.0.1:{}", server.port),
        _ => format!("redis://127.0.0.1:{}/", server.port),
    };
    let sh = Arc::new(Shared {
        t0: Instant::now(),
        received: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        samples: std::sync::Mutex::new(Vec::new()),
    });
    let nodes = a.nodes.max(2);
    for n in 0..nodes {
        subscribe(engine, &url, n, sh.clone()).await?;
    }
    let rate = a.msgs_per_s as f64 / nodes as f64;
    let mut pubs = Vec::new();
    for n in 0..nodes {
        let p = publisher(engine, &url).await?;
        pubs.push(tokio::spawn(publish(p, n, nodes, rate, a.size, sh.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.child.id();
    let me = std::process::id();
    let (cpu0, own0) = (cpu_us(pid), cpu_us(me));
    let (got0, t) = (sh.received.load(Relaxed), Instant::now());
    sh.measuring.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    sh.measuring.store(false, Relaxed);
    let (cpu1, own1) = (cpu_us(pid), cpu_us(me));
    let (got1, dt) = (sh.received.load(Relaxed), t.elapsed());
    sh.stop.store(true, Relaxed);
    for p in pubs {
        let _ = p.await;
    }
    // What is still on its way arrives (or is lost).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = got1 - got0;
    let mut s = std::mem::take(&mut *sh.samples.lock().unwrap_or_else(|e| e.into_inner()));
    s.sort_unstable();
    let q = |f: f64| {
        s.get(((s.len() as f64 * f) as usize).min(s.len().saturating_sub(1)))
            .map_or(0.0, |&v| f64::from(v) / 1000.0)
    };
    Ok(Figures {
        msgs_per_s: got as f64 / dt.as_secs_f64(),
        cpu_us_per_msg: (cpu1 - cpu0) as f64 / got.max(1) as f64,
        client_cpu_us_per_msg: (own1 - own0) as f64 / got.max(1) as f64,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        lost: sh
            .sent
            .load(Relaxed)
            .saturating_sub(sh.received.load(Relaxed)),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    println!(
        "bench bus: {} nodes, {} msgs/s offered, {} B each, {} s measured",
        a.nodes, a.msgs_per_s, a.size, a.seconds
    );
    println!("engine |  msgs/s | engine CPU µs/msg | clients' CPU µs/msg | p50 ms | p99 ms | lost");
    let mut json = Vec::new();
    for e in &a.engines {
        let f = measure(e, &a).await?;
        println!(
            "{e:>6} | {:>7.0} | {:>17.2} | {:>19.2} | {:>6.2} | {:>6.2} | {}",
            f.msgs_per_s, f.cpu_us_per_msg, f.client_cpu_us_per_msg, f.p50_ms, f.p99_ms, f.lost
        );
        json.push(format!(
            "\"{e}\":{{\"msgs_per_s\":{:.0},\"cpu_us_per_msg\":{:.3},\"client_cpu_us_per_msg\":{:.3},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"lost\":{}}}",
            f.msgs_per_s, f.cpu_us_per_msg, f.client_cpu_us_per_msg, f.p50_ms, f.p99_ms, f.lost
        ));
    }
    println!(
        "{{\"nodes\":{},\"offered_msgs_per_s\":{},\"size\":{},\"seconds\":{},{}}}",
        a.nodes,
        a.msgs_per_s,
        a.size,
        a.seconds,
        json.join(",")
    );
    Ok(())
}
