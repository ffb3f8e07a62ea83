//! `cargo xtask bench cluster --nodes N --connections C --seconds S`: a signaling cluster on
//! loopback.
//!
//! Starts nats-server (Debian `nats-server`, installed when missing) on a free port and N
//! `signaling-server` processes sharing swarms through it (`--cluster-nats`), waits until every
//! node sees the N nodes, then starts load generators (`signal-load`, one process per ~15,000
//! clients: one process holds at most 20,000 fds; each client binds its own 127.x.y.1 source
//! address per 1,000 clients, so ports do not run out). Client `g` connects to node `g % N`,
//! so every swarm spans the nodes. After the connect phase, offers/answers flow for `--seconds`.
//! Ends with one JSON line:
//! `{"connections","nodes","msgs_per_s","cpu_us_per_msg","relay_p50_ms","relay_p99_ms",
//! "cross_node_relays","rss_kib_per_conn","errors", ...context, "nodes_expired"}` where
//! `cpu_us_per_msg` is the nodes' and nats-server's CPU per relayed message (the load
//! generators' own CPU is reported apart, `loadgen_cpu_us_per_msg`) and `nodes_expired` counts
//! false node deaths (every node lives through the run).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench_signaling::{
    CLIENTS_PER_LOADGEN, Children, clock_ticks, collect, cpu_us, percentile, rss_kib, start_server,
    target_dir,
};
use crate::{preflight, util};

const NATS: &str = "/usr/sbin/nats-server";

#[derive(clap::Args)]
pub struct Args {
    /// Signaling nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// WebSocket clients, spread evenly over the nodes.
    #[arg(long, default_value_t = 30_000)]
    connections: u64,
    /// Length of the offer/answer phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Target relayed messages per second (offers + answers), over the whole cluster.
    #[arg(long, default_value_t = 25_000.0)]
    msgs_per_s: f64,
    /// Viewers per swarm.
    #[arg(long, default_value_t = 10)]
    swarm_size: u64,
    /// Padding bytes per sdp.
    #[arg(long, default_value_t = 400)]
    sdp_bytes: usize,
    /// Use the binaries already built.
    #[arg(long)]
    no_build: bool,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A node's `/metrics` (HTTP/1.0, so the reply ends with the connection).
fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// One value of a node's `/metrics`.
fn metric(addr: &str, name: &str) -> Option<f64> {
    scrape(addr)?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The nodes' own relay latency (`signaling_relay_latency_seconds{path}`, summed over the
/// nodes): the upper bounds, in ms, of the buckets holding the 50th and 99th percentiles.
/// Unlike the load generators' figure it stops where the relay is queued for the receiver
/// (not written to it) and is not capped at 200 ms.
fn server_latency(nodes: &[(u32, String)], path: &str) -> (f64, f64) {
    let prefix = format!("signaling_relay_latency_seconds_bucket{{path=\"{path}\",le=\"");
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (_, addr) in nodes {
        let Some(text) = scrape(addr) else { continue };
        for (i, l) in text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .enumerate()
        {
            let Some((le, count)) = l.split_once("\"} ") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let e = buckets.entry(i as u64).or_insert((le, 0.0));
            e.1 += count.parse::<f64>().unwrap_or(0.0);
        }
    }
    let total = buckets.values().last().map_or(0.0, |b| b.1);
    let q = |q: f64| {
        buckets
            .values()
            .find(|(_, c)| total > 0.0 && *c >= total * q)
            .map_or(0.0, |(le, _)| le * 1000.0)
    };
    (q(0.50), q(0.99))
}

pub fn run(args: Args) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    preflight::ensure_debian_packages(&[(NATS, "nats-server")])?;
    if !args.no_build {
        util::run(util::cargo().args(["build", "--release", "-p", "signaling-server", "--bins"]))?;
    }
    let bin = target_dir().join("release");
    let (server_bin, load_bin) = (bin.join("signaling-server"), bin.join("signal-load"));
    if !server_bin.exists() || !load_bin.exists() {
        bail!("missing {} or {}", server_bin.display(), load_bin.display());
    }
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let per_node = args.connections.div_ceil(args.nodes);
    if per_node + 200 > hard {
        bail!(
            "{per_node} connections per node, but one process holds at most {hard} fds here: \
             use more --nodes"
        );
    }

    let mut children = Children(Vec::new());
    let nats_port = free_port()?;
    let nats = Command::new(NATS)
        .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    let nats_pid = nats.id();
    children.0.push(nats);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", nats_port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut nodes: Vec<(u32, String)> = Vec::new();
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    for _ in 0..args.nodes {
        let (pid, addr) = start_server(
            &mut children,
            &server_bin,
            per_node,
            &["--cluster-nats", &nats_url],
        )?;
        nodes.push((pid, addr));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (_, addr) in &nodes {
        while metric(addr, "signaling_cluster_nodes") != Some(args.nodes as f64) {
            if Instant::now() > deadline {
                bail!("node {addr} does not see {} nodes", args.nodes);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_base: u64 = nodes.iter().map(|(p, _)| rss_kib(*p).unwrap_or(0)).sum();

    let connections = args.connections;
    let procs = connections.div_ceil(CLIENTS_PER_LOADGEN).max(1);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut stdins: Vec<ChildStdin> = Vec::new();
    let mut loadgen_pids = Vec::new();
    let offers_per_s = args.msgs_per_s / 2.0;
    for p in 0..procs {
        let offset = p * connections / procs;
        let n = (p + 1) * connections / procs - offset;
        let mut cmd = Command::new(&load_bin);
        for (_, addr) in &nodes {
            cmd.args(["--server", addr]);
        }
        let mut child = cmd
            .args([
                "--connections",
                &n.to_string(),
                "--offset",
                &offset.to_string(),
            ])
            .args(["--swarm-size", &args.swarm_size.to_string()])
            .args([
                "--offers-per-s",
                &(offers_per_s * n as f64 / connections as f64).to_string(),
            ])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--sdp-bytes", &args.sdp_bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting signal-load")?;
        loadgen_pids.push(child.id());
        stdins.push(child.stdin.take().context("stdin")?);
        let out = child.stdout.take().context("stdout")?;
        let tx = tx.clone();
        let i = p as usize;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((i, line)).is_err() {
                    break;
                }
            }
        });
        children.0.push(child);
    }
    let t_connect = Instant::now();
    let connected = collect(
        &rx,
        procs as usize,
        "connected",
        Duration::from_secs(60 + connections / 500),
    )?;
    let ok: u64 = connected
        .iter()
        .map(|v| v["ok"].as_u64().unwrap_or(0))
        .sum();
    let connect_errors: u64 = connected
        .iter()
        .map(|v| v["errors"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "xtask: {ok} clients connected and joined over {} nodes in {:.1} s ({connect_errors} failed)",
        args.nodes,
        t_connect.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_connected: u64 = nodes.iter().map(|(p, _)| rss_kib(*p).unwrap_or(0)).sum();
    let ticks = clock_ticks();
    let cpu = |pids: &mut dyn Iterator<Item = u32>| -> u64 {
        pids.map(|p| cpu_us(p, ticks).unwrap_or(0)).sum()
    };
    let nodes_cpu0 = cpu(&mut nodes.iter().map(|(p, _)| *p));
    let nats_cpu0 = cpu(&mut std::iter::once(nats_pid));
    let load_cpu0 = cpu(&mut loadgen_pids.iter().copied());
    let dropped0: f64 = nodes
        .iter()
        .filter_map(|(_, a)| metric(a, "signaling_cluster_dropped_total"))
        .sum();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "null".into());
    for s in &mut stdins {
        writeln!(s, "go")?;
        s.flush()?;
    }
    // The nodes' counters, read just before the load generators report (and exit).
    std::thread::sleep(Duration::from_secs(args.seconds));
    let nodes_cpu1 = cpu(&mut nodes.iter().map(|(p, _)| *p));
    let nats_cpu1 = cpu(&mut std::iter::once(nats_pid));
    let load_cpu1 = cpu(&mut loadgen_pids.iter().copied());
    let dropped1: f64 = nodes
        .iter()
        .filter_map(|(_, a)| metric(a, "signaling_cluster_dropped_total"))
        .sum();
    // False deaths under load show here (a node that lives must never be expired).
    let expired: f64 = nodes
        .iter()
        .filter_map(|(_, a)| metric(a, "signaling_cluster_nodes_expired_total"))
        .sum();
    let stale: f64 = nodes
        .iter()
        .filter_map(|(_, a)| metric(a, "signaling_cluster_relays_stale_total"))
        .sum();
    let late: f64 = nodes
        .iter()
        .filter_map(|(_, a)| metric(a, "signaling_cluster_liveness_late_total"))
        .sum();
    let rss_after: u64 = nodes.iter().map(|(p, _)| rss_kib(*p).unwrap_or(0)).sum();
    // Over the top bucket (5 s): null.
    let ms = |v: f64| {
        if v.is_finite() {
            format!("{v}")
        } else {
            "null".to_owned()
        }
    };
    let (local_p50, local_p99) = server_latency(&nodes, "local");
    let (cluster_p50, cluster_p99) = server_latency(&nodes, "cluster");
    let (local_p50, local_p99) = (ms(local_p50), ms(local_p99));
    let (cluster_p50, cluster_p99) = (ms(cluster_p50), ms(cluster_p99));
    let done = collect(&rx, procs as usize, "done", Duration::from_secs(60))?;

    let (mut relays, mut cross, mut errors) = (0u64, 0u64, 0u64);
    let mut secs: f64 = 0.0;
    let mut hist: BTreeMap<u64, u64> = BTreeMap::new();
    for v in &done {
        relays += v["relays_received"].as_u64().unwrap_or(0);
        cross += v["cross_node"].as_u64().unwrap_or(0);
        errors += v["errors"].as_u64().unwrap_or(0);
        secs = secs.max(v["seconds"].as_f64().unwrap_or(0.0));
        for pair in v["hist_us"].as_array().into_iter().flatten() {
            if let (Some(us), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) {
                *hist.entry(us).or_default() += c;
            }
        }
    }
    drop(children);

    let per_msg = |us: u64| {
        if relays == 0 {
            0.0
        } else {
            us as f64 / relays as f64
        }
    };
    let per_conn = |rss: u64| {
        if ok == 0 {
            0.0
        } else {
            rss.saturating_sub(rss_base) as f64 / ok as f64
        }
    };
    let nodes_cpu = nodes_cpu1.saturating_sub(nodes_cpu0);
    let nats_cpu = nats_cpu1.saturating_sub(nats_cpu0);
    let msgs_per_s = if secs > 0.0 {
        relays as f64 / secs
    } else {
        0.0
    };
    let out = format!(
        "{{\"connections\":{ok},\"nodes\":{},\"msgs_per_s\":{msgs_per_s:.0},\"cpu_us_per_msg\":{:.2},\
         \"relay_p50_ms\":{:.2},\"relay_p99_ms\":{:.2},\"cross_node_relays\":{cross},\
         \"rss_kib_per_conn\":{:.2},\"errors\":{errors},\"nodes_cpu_us_per_msg\":{:.2},\
         \"nats_cpu_us_per_msg\":{:.2},\"loadgen_cpu_us_per_msg\":{:.2},\"relays\":{relays},\
         \"cluster_msgs_dropped\":{},\"requested_connections\":{},\"loadgens\":{procs},\
         \"rss_kib_per_conn_after_traffic\":{:.2},\"seconds\":{secs:.1},\"loadavg_1m_at_start\":{loadavg},\
         \"nodes_expired\":{expired},\"liveness_late_ticks\":{late},\"relays_shed_stale\":{stale},\
         \"server_relay_local_p50_p99_ms\":[{local_p50},{local_p99}],\
         \"server_relay_cluster_p50_p99_ms\":[{cluster_p50},{cluster_p99}]}}",
        args.nodes,
        per_msg(nodes_cpu + nats_cpu),
        percentile(&hist, 0.50),
        percentile(&hist, 0.99),
        per_conn(rss_connected),
        per_msg(nodes_cpu),
        per_msg(nats_cpu),
        per_msg(load_cpu1.saturating_sub(load_cpu0)),
        dropped1 - dropped0,
        args.connections,
        per_conn(rss_after),
    );
    println!("{out}");
    Ok(())
}
