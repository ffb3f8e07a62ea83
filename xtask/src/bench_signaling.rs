//! `cargo xtask bench signaling`: memory per connection, relay rate and latency of the signaling
//! server, on loopback.
//!
//! Builds `signaling-server` and `signal-load` in release, starts the server (its own process),
//! reads its RSS, starts load generators (one per ~15,000 clients, to stay under each process's
//! fd limit) that connect and join, reads RSS again, then lets them exchange offers/answers for
//! `--seconds` and reads the server's CPU time. Ends with one JSON line:
//! `{"connections","rss_kib_per_conn","msgs_per_s","cpu_us_per_msg","relay_p50_ms",
//! "relay_p99_ms","errors", ...extra context fields}`.
//!
//! Every wait has a deadline and every child is killed on the way out.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// WebSocket clients to hold open (capped by the file descriptor hard limit).
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Length of the offer/answer phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Target relayed messages per second (offers + answers).
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

/// Clients per load-generator process (each needs one fd per client).
pub(crate) const CLIENTS_PER_LOADGEN: u64 = 15_000;

/// Kills the children when the bench ends, however it ends.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `signaling-server` for a load run (owned by `children`): limits above the load, no
/// idle closes, no rate limiting of the load itself, plus `extra` flags. Returns its pid and
/// the address it printed.
pub(crate) fn start_server(
    children: &mut Children,
    bin: &std::path::Path,
    connections: u64,
    extra: &[&str],
) -> Result<(u32, String)> {
    let mut server = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .args(["--max-connections", &(connections + 1000).to_string()])
        .args(["--max-conns-per-ip", "1000000"])
        .args([
            "--heartbeat-ms",
            "600000",
            "--rate-per-s",
            "10000",
            "--rate-burst",
            "10000",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting signaling-server")?;
    let pid = server.id();
    let out = server.stdout.take().context("server stdout")?;
    children.0.push(server);
    let mut first = String::new();
    BufReader::new(out).read_line(&mut first)?;
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .context("server did not start")?
        .to_owned();
    Ok((pid, addr))
}

pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                util::root().join(d)
            }
        }
        None => util::root().join("target"),
    }
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// utime + stime of `pid`, in microseconds.
pub(crate) fn cpu_us(pid: u32, ticks_per_s: u64) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) * 1_000_000 / ticks_per_s)
}

pub(crate) fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Receives one JSON line with `"phase": phase` from each load generator.
pub(crate) fn collect(
    rx: &mpsc::Receiver<(usize, String)>,
    n: usize,
    phase: &str,
    timeout: Duration,
) -> Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + timeout;
    let mut got: BTreeMap<usize, serde_json::Value> = BTreeMap::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, line) = rx
            .recv_timeout(left)
            .with_context(|| format!("load generators did not report '{phase}' in time"))?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["phase"] == phase
        {
            got.insert(i, v);
        }
    }
    Ok(got.into_values().collect())
}

pub(crate) fn percentile(hist: &BTreeMap<u64, u64>, q: f64) -> f64 {
    let total: u64 = hist.values().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64) * q).ceil() as u64;
    let mut seen = 0;
    for (us, c) in hist {
        seen += c;
        if seen >= rank {
            // Upper edge of the 10 µs bucket.
            return (us + 10) as f64 / 1000.0;
        }
    }
    0.0
}

pub fn run(args: Args) -> Result<()> {
    if !args.no_build {
        util::run(util::cargo().args(["build", "--release", "-p", "signaling-server", "--bins"]))?;
    }
    let bin = target_dir().join("release");
    let (server_bin, load_bin) = (bin.join("signaling-server"), bin.join("signal-load"));
    if !server_bin.exists() || !load_bin.exists() {
        bail!("missing {} or {}", server_bin.display(), load_bin.display());
    }

    // One fd per connection in the server: the hard limit is the ceiling (raising it needs
    // CAP_SYS_RESOURCE, which a sandbox may not grant).
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let max_conns = hard.saturating_sub(200);
    let connections = if args.connections > max_conns {
        eprintln!(
            "xtask: {} connections requested but the fd hard limit is {hard}: running {max_conns} \
             (one server process cannot hold more here)",
            args.connections
        );
        max_conns
    } else {
        args.connections
    };

    let mut children = Children(Vec::new());
    let (pid, addr) = start_server(&mut children, &server_bin, connections, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_base = rss_kib(pid)?;

    // Load generators.
    let procs = connections.div_ceil(CLIENTS_PER_LOADGEN).max(1);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut stdins: Vec<ChildStdin> = Vec::new();
    let offers_per_s = args.msgs_per_s / 2.0;
    for p in 0..procs {
        let offset = p * connections / procs;
        let n = (p + 1) * connections / procs - offset;
        let mut child = Command::new(&load_bin)
            .args(["--server", &addr])
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
    let connect_timeout = Duration::from_secs(60 + connections / 500);
    let t_connect = Instant::now();
    let connected = collect(&rx, procs as usize, "connected", connect_timeout)?;
    let ok: u64 = connected
        .iter()
        .map(|v| v["ok"].as_u64().unwrap_or(0))
        .sum();
    let connect_errors: u64 = connected
        .iter()
        .map(|v| v["errors"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "xtask: {ok} clients connected and joined in {:.1} s ({connect_errors} failed)",
        t_connect.elapsed().as_secs_f64()
    );
    // Let the allocator settle before reading RSS.
    std::thread::sleep(Duration::from_secs(2));
    let rss_connected = rss_kib(pid)?;
    let ticks = clock_ticks();
    let cpu0 = cpu_us(pid, ticks)?;
    // Context for the latency figures: the box is shared (other builds compete for 2 cores).
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "null".into());
    for s in &mut stdins {
        writeln!(s, "go")?;
        s.flush()?;
    }
    let done = collect(
        &rx,
        procs as usize,
        "done",
        Duration::from_secs(args.seconds + 60),
    )?;
    let cpu1 = cpu_us(pid, ticks)?;
    let rss_after = rss_kib(pid)?;

    let mut relays = 0u64;
    // The load generators' counts include their failed connects.
    let mut errors = 0u64;
    let mut secs: f64 = 0.0;
    let mut hist: BTreeMap<u64, u64> = BTreeMap::new();
    for v in &done {
        relays += v["relays_received"].as_u64().unwrap_or(0);
        errors += v["errors"].as_u64().unwrap_or(0);
        secs = secs.max(v["seconds"].as_f64().unwrap_or(0.0));
        for pair in v["hist_us"].as_array().into_iter().flatten() {
            if let (Some(us), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) {
                *hist.entry(us).or_default() += c;
            }
        }
    }
    drop(children);

    let per_conn = |rss: u64| {
        if ok == 0 {
            0.0
        } else {
            rss.saturating_sub(rss_base) as f64 / ok as f64
        }
    };
    let msgs_per_s = if secs > 0.0 {
        relays as f64 / secs
    } else {
        0.0
    };
    let cpu_per_msg = if relays > 0 {
        (cpu1 - cpu0) as f64 / relays as f64
    } else {
        0.0
    };
    // Spelled out (not `json!`) to keep the documented key order.
    let out = format!(
        "{{\"connections\":{ok},\"rss_kib_per_conn\":{:.2},\"msgs_per_s\":{:.0},\"cpu_us_per_msg\":{:.2},\
         \"relay_p50_ms\":{:.2},\"relay_p99_ms\":{:.2},\"errors\":{errors},\
         \"requested_connections\":{},\"fd_hard_limit\":{hard},\"rss_kib_base\":{rss_base},\
         \"rss_kib_connected\":{rss_connected},\"rss_kib_after_traffic\":{rss_after},\
         \"rss_kib_per_conn_after_traffic\":{:.2},\"relays\":{relays},\"seconds\":{secs:.1},\"loadavg_1m_at_start\":{loadavg}}}",
        per_conn(rss_connected),
        msgs_per_s,
        cpu_per_msg,
        percentile(&hist, 0.50),
        percentile(&hist, 0.99),
        args.connections,
        per_conn(rss_after),
    );
    println!("{out}");
    Ok(())
}
