//! `cargo xtask bench lab`: real browsers on shaped links (issue 17). As root, each headless
//! Chromium page gets its own network namespace, joined to a Linux bridge by a veth pair, with
//! its egress (its upload) shaped by `tc` tbf to `--upload-kbit`. The origin (the looping live
//! sample `media/sample`) and the signaling server listen on the bridge's address; the pages
//! reach them there and each other over the bridge (WebRTC host candidates on the veth
//! addresses). The pages are driven by `p2pcdn-load --browsers N --browser-netns ...` (which
//! serves the demo page, collects each page's counters, and reads the origin's byte counter),
//! once over HTTP only and once with P2P, with the same pages and namespaces. Ends with one JSON
//! line: origin saved against the HTTP-only run, the capacity bound min(1 − 1/N, upload ÷
//! bitrate) with the bitrate measured from the sample's files, uploaded bytes, stalls, waste.
//!
//! The namespaces and the bridge are removed when the command ends, on error too (a `Drop`
//! guard); Ctrl-C / SIGTERM end the running pass early (p2pcdn-load still reports) and then
//! clean up. Leftovers of a killed run (same names) are removed before a new run starts.
//! No netem here: the links have a rate and a queue, no added delay or loss.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench_swarm::{Children, f, start, target_dir};
use crate::util;

/// Most pages (each is a Chromium process and a namespace; 2 shared cores).
const MAX_PAGES: usize = 16;
/// Longest pass.
const MAX_SECONDS: u64 = 900;
/// Names of what we create: namespaces `p2plab-<k>`, bridge `p2plab-br`, veth pairs
/// `p2plab-h<k>` (bridge side) / `p2plab-p<k>` (page side). Interface names ≤ 15 bytes.
const NS_PREFIX: &str = "p2plab-";
const BRIDGE: &str = "p2plab-br";

#[derive(clap::Args)]
pub struct Args {
    /// Chromium pages, each in its own namespace.
    #[arg(long, default_value_t = 6)]
    pages: usize,
    /// Upload of each page, kbit/s (tbf on its egress).
    #[arg(long, default_value_t = 1000)]
    upload_kbit: u64,
    /// Seconds per pass (HTTP only, then P2P).
    #[arg(long, default_value_t = 90)]
    seconds: u64,
    /// Pages join evenly over this many seconds.
    #[arg(long, default_value_t = 5)]
    ramp: u64,
    /// tbf bucket, KiB: how much a page may send at line rate before the rate applies.
    #[arg(long, default_value_t = 16)]
    burst_kb: u64,
    /// tbf queue, ms at the shaped rate: packets that would wait longer are dropped (a home
    /// router's uplink buffer; 200 ms is a modest one).
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
    /// The bridge's /24: 10.<x>.<y>.0, given as "x.y".
    #[arg(long, default_value = "213.0")]
    subnet: String,
    /// Seed of p2pcdn-load's choices (join times, cores' seeds); the same in both passes.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Skip building (use the binaries and dist/ bundle already built).
    #[arg(long)]
    no_build: bool,
    /// Cargo profile of the servers and p2pcdn-load (`ci`: the tests' build, optimised like
    /// release, reused when warm).
    #[arg(long, default_value = "release")]
    profile: String,
}

/// The namespaces, veth pairs and bridge of a run; removed on drop.
struct Lab {
    pages: usize,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Best effort: removes what a run with these names may have left.
fn remove_quietly(pages: usize) {
    for k in 0..pages.max(MAX_PAGES) {
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{NS_PREFIX}{k}")])
            .stderr(Stdio::null())
            .status();
        // Deleting the namespace deletes the veth pair; a pair whose page side never moved
        // into it is still here.
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{NS_PREFIX}h{k}")])
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(Stdio::null())
        .status();
}

impl Lab {
    /// The bridge at `.1` and page `k` at `.(k + 2)` of `net` (a /24), each page's egress
    /// shaped by tbf.
    fn new(a: &Args, net: [u8; 3]) -> Result<Lab> {
        remove_quietly(a.pages);
        // From here on, whatever was made is removed on return, error or not.
        let lab = Lab { pages: a.pages };
        let addr = |host: u8| format!("{}.{}.{}.{host}", net[0], net[1], net[2]);
        let bridge = addr(1);
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{bridge}/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        let rate = format!("{}kbit", a.upload_kbit);
        let burst = format!("{}kb", a.burst_kb);
        let latency = format!("{}ms", a.latency_ms);
        for k in 0..a.pages {
            let ns = format!("{NS_PREFIX}{k}");
            let (host, page) = (format!("{NS_PREFIX}h{k}"), format!("{NS_PREFIX}p{k}"));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &page])?;
            ip(&["link", "set", &page, "netns", &ns])?;
            ip(&["link", "set", &host, "master", BRIDGE])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", addr(k as u8 + 2)),
                "dev",
                &page,
            ])?;
            ip(&["-n", &ns, "link", "set", &page, "up"])?;
            // Chromium gathers host candidates only with a route out (toolchain notes).
            ip(&["-n", &ns, "route", "add", "default", "via", &bridge])?;
            let out = Command::new("tc")
                .args(["-n", &ns, "qdisc", "add", "dev", &page, "root", "tbf"])
                .args(["rate", &rate, "burst", &burst, "latency", &latency])
                .output()
                .context("running tc")?;
            if !out.status.success() {
                bail!(
                    "tc qdisc add (tbf) in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(lab)
    }

    /// Bytes sent and packets dropped by page `k`'s tbf so far.
    fn tbf_counters(&self, k: usize) -> (u64, u64) {
        let out = Command::new("tc")
            .args(["-s", "-n", &format!("{NS_PREFIX}{k}"), "qdisc", "show"])
            .args(["dev", &format!("{NS_PREFIX}p{k}")])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        parse_tc_sent(&text)
    }

    fn counters(&self) -> Vec<(u64, u64)> {
        (0..self.pages).map(|k| self.tbf_counters(k)).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        remove_quietly(self.pages);
    }
}

/// `Sent 123 bytes 4 pkt (dropped 5, ...` of `tc -s qdisc show` → (123, 5).
fn parse_tc_sent(text: &str) -> (u64, u64) {
    let Some(rest) = text.split("Sent ").nth(1) else {
        return (0, 0);
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    let sent = words.first().and_then(|w| w.parse().ok()).unwrap_or(0);
    let dropped = rest
        .split("dropped ")
        .nth(1)
        .and_then(|d| d.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    (sent, dropped)
}

/// The stream's bitrate (bits/s) from a media playlist's segment files and `#EXTINF`
/// durations (the init segment, fetched once per viewer, left out).
pub(crate) fn playlist_bitrate(playlist: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(playlist)
        .with_context(|| format!("reading {}", playlist.display()))?;
    let dir = playlist.parent().unwrap_or(Path::new("."));
    let (mut secs, mut bytes) = (0.0f64, 0u64);
    let mut dur: Option<f64> = None;
    for line in text.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("#EXTINF:") {
            dur = d.split(',').next().and_then(|x| x.trim().parse().ok());
        } else if !line.is_empty()
            && !line.starts_with('#')
            && let Some(d) = dur.take()
        {
            let len = std::fs::metadata(dir.join(line))
                .with_context(|| format!("segment {line} of {}", playlist.display()))?
                .len();
            secs += d;
            bytes += len;
        }
    }
    if secs <= 0.0 {
        bail!("{}: no segments", playlist.display());
    }
    Ok(bytes as f64 * 8.0 / secs)
}

/// One `p2pcdn-load` pass; returns its JSON line and full report (per page).
#[allow(clippy::too_many_arguments)]
fn pass(
    load_bin: &Path,
    a: &Args,
    signal: &str,
    playlist: &str,
    page_listen: SocketAddr,
    chromium_flag: &str,
    admin_token: &str,
    out_dir: &Path,
    http_only: bool,
    stop: &AtomicBool,
) -> Result<(Value, Value)> {
    let name = if http_only { "http" } else { "p2p" };
    let full = out_dir.join(format!("{name}.json"));
    // Bounded even if p2pcdn-load hangs: its own teardown is ≤ 2 min past the run.
    let limit = a.seconds + a.ramp + 180;
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", &format!("{limit}s")])
        .arg(load_bin)
        .args(["--signal", signal, "--playlist", playlist])
        .args(["--viewers", "0", "--browsers", &a.pages.to_string()])
        .args(["--seconds", &a.seconds.to_string()])
        .args(["--ramp", &a.ramp.to_string()])
        .args(["--seed", &a.seed.to_string()])
        .args(["--browser-netns", NS_PREFIX])
        .arg(format!("--chromium-arg={chromium_flag}"))
        .args(["--page-listen", &page_listen.to_string()])
        .arg("--browser-logs")
        .arg(out_dir.join(format!("{name}-logs")))
        .arg("--output")
        .arg(&full)
        .arg("--quiet")
        .env("P2PCDN_ORIGIN_ADMIN_TOKEN", admin_token);
    if http_only {
        cmd.arg("--http-only");
    }
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting p2pcdn-load")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    // The JSON line is all it prints on stdout: read it on a thread so the pipe never fills.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut asked = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stop.load(Ordering::Relaxed) && !asked {
            // It ends its run early and still reports (a Ctrl-C in a terminal reached it too).
            asked = true;
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("p2pcdn-load ({name}) failed: {status}");
    }
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line from p2pcdn-load")?;
    let report: Value = std::fs::read(&full)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    Ok((serde_json::from_str(line)?, report))
}

/// Per-page lines of a pass (from p2pcdn-load's full report) plus each page's tbf counters;
/// returns the pages' chunk latencies summed (see [`chunk_ms`]).
fn print_pages(name: &str, report: &Value, tbf: &[(u64, u64)]) -> [u64; 6] {
    println!(
        "\n{name}: page | playing | stalls | origin MB | P2P in MB | up MB | tbf sent MB | tbf drops | uplink kbit/s | busy | origin req (seeder/backup/deadline/alone) | peer timeouts | dup MB (origin/peers)"
    );
    let pages = report["pages"].as_array().cloned().unwrap_or_default();
    for (k, p) in pages.iter().enumerate() {
        let n = |key: &str| p[key].as_f64().unwrap_or(0.0);
        let r = |key: &str| p["origin_requests"][key].as_u64().unwrap_or(0);
        let (sent, drops) = tbf.get(k).copied().unwrap_or_default();
        println!(
            "{:>6} | {:>7} | {:>6} | {:>9.2} | {:>9.2} | {:>5.2} | {:>11.2} | {:>9} | {:>13.0} | {:>4} | {:>5}/{}/{}/{} | {:>5} | {:.2}/{:.2}",
            p["id"].as_str().unwrap_or("?"),
            p["started"].as_bool().unwrap_or(false),
            n("stalls"),
            n("http_bytes") / 1e6,
            n("p2p_bytes") / 1e6,
            n("uploaded") / 1e6,
            sent as f64 / 1e6,
            drops,
            n("uplink_bps") / 1e3,
            n("serve_busy"),
            r("designated"),
            r("backup"),
            r("deadline"),
            r("alone"),
            n("peer_timeouts"),
            n("dup_http_bytes") / 1e6,
            n("dup_p2p_bytes") / 1e6,
        );
    }
    let mut all = [0u64; 6];
    for p in &pages {
        let ms = chunk_ms(p);
        if ms.iter().sum::<u64>() > 0 {
            println!(
                "{:>6} {:.2} s behind live; chunks from peers, request → arrival: {}",
                p["id"].as_str().unwrap_or("?"),
                p["latency"].as_f64().unwrap_or(0.0),
                chunk_ms_line(ms)
            );
        }
        for (a, b) in all.iter_mut().zip(ms) {
            *a += b;
        }
    }
    if all.iter().sum::<u64>() > 0 {
        println!(
            "   all chunks from peers, request → arrival: {}",
            chunk_ms_line(all)
        );
    }
    for e in report["errors"].as_array().into_iter().flatten().take(8) {
        println!("  error: {}", e.as_str().unwrap_or_default());
    }
    all
}

/// One pass's JSON line, per-page tbf counters and chunk latencies (all pages).
type Pass = (Value, Vec<(u64, u64)>, [u64; 6]);

/// A page's chunks from peers by request → arrival time (peer-core's `Stats::chunk_ms`).
fn chunk_ms(page: &Value) -> [u64; 6] {
    std::array::from_fn(|i| page["chunk_ms"][i].as_u64().unwrap_or(0))
}

fn chunk_ms_line(ms: [u64; 6]) -> String {
    sim::peer_core::Stats {
        chunk_ms: ms,
        ..Default::default()
    }
    .chunk_ms_line()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn parse_subnet(s: &str) -> Result<[u8; 3]> {
    let parts: Vec<u8> = s
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--subnet {s:?}: want \"x.y\" (10.x.y.0/24)"))?;
    match parts[..] {
        [x, y] => Ok([10, x, y]),
        _ => bail!("--subnet {s:?}: want \"x.y\" (10.x.y.0/24)"),
    }
}

/// Each delta of two counter snapshots.
fn delta(after: &[(u64, u64)], before: &[(u64, u64)]) -> Vec<(u64, u64)> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
        .collect()
}

pub fn run(a: Args) -> Result<()> {
    if !(2..=MAX_PAGES).contains(&a.pages) {
        bail!("--pages must be 2..={MAX_PAGES} (each is a Chromium process)");
    }
    if a.upload_kbit == 0 || a.seconds == 0 || a.seconds > MAX_SECONDS {
        bail!("--upload-kbit must be > 0 and --seconds 1..={MAX_SECONDS}");
    }
    let net = parse_subnet(&a.subnet)?;
    if !is_root() {
        bail!("bench lab makes network namespaces, veth pairs and a bridge: run it as root");
    }
    crate::preflight::ensure(crate::preflight::Needs { browser: true })?;
    if !a.no_build {
        crate::wasm::build(true)?;
        util::run(util::cargo().args([
            "build",
            "--profile",
            &a.profile,
            "-p",
            "origin",
            "-p",
            "signaling-server",
            "-p",
            "peer-native",
            "--bins",
        ]))?;
    }
    let bin = target_dir().join(&a.profile);
    let (origin_bin, signal_bin, load_bin) = (
        bin.join("origin"),
        bin.join("signaling-server"),
        bin.join("p2pcdn-load"),
    );
    for b in [&origin_bin, &signal_bin, &load_bin] {
        if !b.exists() {
            bail!("missing {}", b.display());
        }
    }
    let media = util::root().join("media");
    let bitrate = playlist_bitrate(&media.join("sample").join("index.m3u8"))?;
    let n = a.pages as f64;
    let bound = (1.0 - 1.0 / n).min(a.upload_kbit as f64 * 1000.0 / bitrate);

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            eprintln!("xtask: interrupted: ending the pass, then cleaning up");
            stop.store(true, Ordering::Relaxed);
        })
        .context("installing the Ctrl-C handler")?;
    }

    // Declared before the servers: dropped after them (the namespaces outlive their users).
    let lab = Lab::new(&a, net)?;
    let bridge = Ipv4Addr::new(net[0], net[1], net[2], 1);
    let mut children = Children(Vec::new());
    // A throwaway admin token: the origin's /stats answers loopback only without one, and the
    // origin is on the bridge address.
    let admin_token = format!(
        "lab-{:x}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let mut o = Command::new(&origin_bin);
    o.args(["--listen", &format!("{bridge}:0")])
        .arg("--media-dir")
        .arg(&media)
        .args(["--live", "sample", "--allow-origin", "*"])
        .env("ORIGIN_ADMIN_TOKEN", &admin_token)
        .env("RUST_LOG", "warn");
    let origin = start(&mut children, o, "http://")?;
    let mut s = Command::new(&signal_bin);
    s.args([
        "--listen",
        &format!("{bridge}:0"),
        "--max-conns-per-ip",
        "1000",
    ])
    .env("RUST_LOG", "warn");
    let signal = start(&mut children, s, "listening on ")?;
    // The page server's port, chosen here: the secure-context flag must name it.
    let page_listen = std::net::TcpListener::bind((bridge, 0))?.local_addr()?;
    let chromium_flag = format!(
        "--unsafely-treat-insecure-origin-as-secure=http://{page_listen},http://{origin},ws://{signal}"
    );
    let playlist = format!("http://{origin}/live/sample/index.m3u8");
    let signal = format!("ws://{signal}/ws");
    let out_dir = target_dir().join("bench-lab");
    std::fs::create_dir_all(&out_dir)?;
    std::thread::sleep(Duration::from_millis(300));

    let t0 = Instant::now();
    let mut results = Vec::new();
    for http_only in [true, false] {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let before = lab.counters();
        let (line, full) = pass(
            &load_bin,
            &a,
            &signal,
            &playlist,
            page_listen,
            &chromium_flag,
            &admin_token,
            &out_dir,
            http_only,
            &stop,
        )?;
        let tbf = delta(&lab.counters(), &before);
        let ms = print_pages(if http_only { "HTTP only" } else { "P2P" }, &full, &tbf);
        results.push((line, tbf, ms));
    }
    drop(children);
    drop(lab);
    let [(base, tbf_base, _), (p2p, tbf_p2p, chunk_ms_p2p)]: [Pass; 2] = results
        .try_into()
        .map_err(|_| anyhow::anyhow!("two passes expected"))?;
    if stop.load(Ordering::Relaxed) {
        eprintln!("xtask: interrupted: the figures below are of a shortened pass");
    }
    let b = |v: &Value, k: &str| v["browsers"][k].as_f64().unwrap_or(0.0);
    let (ob, op) = (f(&base, "origin_bytes"), f(&p2p, "origin_bytes"));
    let saved = if ob > 0.0 { 1.0 - op / ob } else { 0.0 };
    let r4 = |x: f64| (x * 10_000.0).round() / 10_000.0;
    let drops = |t: &[(u64, u64)]| t.iter().map(|x| x.1).sum::<u64>();
    println!(
        "\nbench lab: {} pages, upload {} kbit/s each (tbf burst {} KiB, queue {} ms), stream {:.0} kbit/s, {} s per pass ({:.0} s total)",
        a.pages,
        a.upload_kbit,
        a.burst_kb,
        a.latency_ms,
        bitrate / 1e3,
        a.seconds,
        t0.elapsed().as_secs_f64()
    );
    println!("{:<24} {:>14} {:>14}", "", "HTTP only", "P2P");
    println!("{:<24} {:>14.2} {:>14.2}", "origin MB", ob / 1e6, op / 1e6);
    for (name, k, scale) in [
        ("pages playing", "started", 1.0),
        ("stalls", "stalls", 1.0),
        ("delivered HTTP MB", "delivered_http", 1e6),
        ("delivered P2P MB", "delivered_p2p", 1e6),
        ("uploaded MB", "uploaded", 1e6),
        ("startup p50 ms", "startup_ms_p50", 1.0),
        ("hls.js fallbacks", "fallbacks", 1.0),
    ] {
        println!(
            "{name:<24} {:>14.1} {:>14.1}",
            b(&base, k) / scale,
            b(&p2p, k) / scale
        );
    }
    println!(
        "{:<24} {:>14} {:>14}",
        "tbf drops (packets)",
        drops(&tbf_base),
        drops(&tbf_p2p)
    );
    println!(
        "origin saved {saved:.3}, bound {bound:.3} (min(1 − 1/{}, {} kbit/s ÷ {:.0} kbit/s)): {:.2} of the bound; waste {:.1} % of delivered",
        a.pages,
        a.upload_kbit,
        bitrate / 1e3,
        saved / bound.max(1e-9),
        f(&p2p, "waste_ratio") * 100.0
    );
    let json = json!({
        "pages": a.pages,
        "upload_kbit": a.upload_kbit,
        "tbf_burst_kb": a.burst_kb,
        "tbf_latency_ms": a.latency_ms,
        "seconds": a.seconds,
        "seed": a.seed,
        "bitrate_kbit": (bitrate / 1e3).round(),
        "origin_bytes_p2p": op,
        "origin_bytes_http_only": ob,
        "origin_bytes_source": p2p["origin_bytes_source"],
        "origin_saved": r4(saved),
        "bound": r4(bound),
        "saved_over_bound": r4(saved / bound.max(1e-9)),
        "offload": f(&p2p, "offload"),
        "uploaded_bytes": f(&p2p, "uploaded_bytes"),
        "p2p_bytes": f(&p2p, "p2p_bytes"),
        "delivered_bytes": f(&p2p, "delivered_bytes"),
        "wasted_bytes": f(&p2p, "wasted_bytes"),
        "waste_ratio": f(&p2p, "waste_ratio"),
        "received_unplayed": f(&p2p, "received_unplayed"),
        "uploaded_unreceived": f(&p2p, "uploaded_unreceived"),
        "dup_http_bytes": f(&p2p, "dup_http_bytes"),
        "dup_p2p_bytes": f(&p2p, "dup_p2p_bytes"),
        "stalls_p2p": b(&p2p, "stalls"),
        "stalls_http_only": b(&base, "stalls"),
        "started_p2p": b(&p2p, "started"),
        "started_http_only": b(&base, "started"),
        "fallbacks_p2p": b(&p2p, "fallbacks"),
        "tbf_drops_p2p": drops(&tbf_p2p),
        "tbf_drops_http_only": drops(&tbf_base),
        // Chunks from peers by request → arrival, ≤ 250/500/1000/2000/4000 ms, longer.
        "chunk_ms_p2p": chunk_ms_p2p,
        "errors": f(&p2p, "errors") + f(&base, "errors"),
        "interrupted": stop.load(Ordering::Relaxed),
        "reports": out_dir.display().to_string(),
    });
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc_counters() {
        let t = "qdisc tbf 8001: root refcnt 2 rate 1Mbit burst 16Kb lat 200ms \n Sent 123456 bytes 789 pkt (dropped 12, overlimits 3 requeues 0) \n backlog 0b 0p requeues 0\n";
        assert_eq!(parse_tc_sent(t), (123_456, 12));
        assert_eq!(parse_tc_sent(""), (0, 0));
    }

    #[test]
    fn sample_bitrate() {
        let b = playlist_bitrate(&util::root().join("media/sample/index.m3u8")).unwrap_or_default();
        // The sample is ≈ 0.87 Mbit/s (toolchain notes).
        assert!((700_000.0..1_100_000.0).contains(&b), "{b}");
    }

    #[test]
    fn subnets() {
        assert_eq!(parse_subnet("213.0").ok(), Some([10, 213, 0]));
        assert!(parse_subnet("213").is_err() && parse_subnet("300.1").is_err());
    }
}
