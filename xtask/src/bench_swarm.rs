//! `cargo xtask bench swarm`: a local deployment (origin with a synthetic live stream of 2 s
//! segments at 2 Mbit/s, signaling server) and `p2pcdn-load` against it, first HTTP-only (the
//! baseline), then P2P with the same viewers. Prints both and their ratio, CPU and memory per
//! native peer (from /proc, measured by the load process, which hosts only viewers), and ends
//! with one JSON line.
//!
//! `--browsers B` adds B headless Chromium pages (the demo page with the wasm browser peer,
//! served by `p2pcdn-load` from `demo-site/` + `dist/`, which is built first) to both runs. The
//! synthetic stream is not playable media, so with browsers (or `--sample`) every viewer plays
//! the looping live sample `media/sample` instead (≈ 0.9 Mbit/s, 2 s segments).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Native viewers.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    /// Headless Chromium viewers (demo page + wasm browser peer); implies --sample.
    #[arg(long, default_value_t = 0)]
    browsers: usize,
    /// Play the looping live sample (media/sample) instead of the synthetic 2 Mbit/s stream.
    #[arg(long)]
    sample: bool,
    /// Seconds per run (baseline and P2P each).
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Viewers join evenly over this many seconds.
    #[arg(long, default_value_t = 10)]
    ramp: u64,
    /// Upload cap of each native viewer, kbit/s (peer-core's `upload_cap`; default: none).
    /// The capacity bound in the JSON line is min(1 − 1/N, cap ÷ bitrate).
    #[arg(long)]
    upload_kbit: Option<u64>,
    /// Skip `cargo build` (use the binaries already built).
    #[arg(long)]
    no_build: bool,
    /// Cargo profile of the servers and p2pcdn-load (`ci`: the tests' build, optimised like
    /// release, reused when warm).
    #[arg(long, default_value = "release")]
    profile: String,
}

/// Bitrate of the synthetic stream, kbit/s (2 s segments).
const SYNTHETIC_KBIT: u64 = 2000;

/// Server processes, killed (and reaped) on drop. Shared with `bench lab`.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

/// Starts `cmd` and returns it with the address from its first stdout line `... <prefix><addr>`.
pub(crate) fn start(children: &mut Children, mut cmd: Command, prefix: &str) -> Result<String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let out = child.stdout.take().context("stdout")?;
    children.0.push(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit_once(prefix)
        .map(|x| x.1.to_string())
        .with_context(|| format!("{cmd:?} printed {line:?}"))?;
    Ok(addr)
}

fn load(
    bin: &PathBuf,
    signal: &str,
    playlist: &str,
    args: &Args,
    http_only: bool,
) -> Result<Value> {
    let mut cmd = Command::new(bin);
    cmd.args(["--signal", signal, "--playlist", playlist])
        .args(["--viewers", &args.viewers.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--ramp", &args.ramp.to_string()])
        .args(["--udp", "127.0.0.1:0"])
        .args(["--browsers", &args.browsers.to_string()]);
    if args.browsers > 0 {
        let logs = std::env::temp_dir().join(format!(
            "p2pcdn-bench-browsers-{}",
            if http_only { "http" } else { "p2p" }
        ));
        cmd.arg("--browser-logs").arg(logs);
    }
    if http_only {
        cmd.arg("--http-only");
    }
    if let Some(k) = args.upload_kbit {
        cmd.args(["--upload-kbit", &k.to_string()]);
    }
    eprintln!("xtask: running {cmd:?}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running p2pcdn-load")?;
    if !out.status.success() {
        bail!("p2pcdn-load failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line from p2pcdn-load")?;
    Ok(serde_json::from_str(line)?)
}

pub(crate) fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

pub fn run(args: Args) -> Result<()> {
    let sample = args.sample || args.browsers > 0;
    if args.browsers > 0 {
        crate::preflight::ensure(crate::preflight::Needs { browser: true })?;
    }
    if args.browsers > 0 && !args.no_build {
        // The page's bundle (dist/), from this tree, with the pinned wasm-opt like the tests.
        crate::wasm::build(true)?;
    }
    if !args.no_build {
        util::run(util::cargo().args([
            "build",
            "--profile",
            &args.profile,
            "-p",
            "origin",
            "-p",
            "signaling-server",
            "-p",
            "peer-native",
            "--bins",
        ]))?;
    }
    let bin = target_dir().join(&args.profile);
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
    let mut children = Children(Vec::new());
    let mut o = Command::new(&origin_bin);
    o.args(["--listen", "127.0.0.1:0"]).env("RUST_LOG", "warn");
    if sample {
        // The pages are served from another port: they need CORS.
        o.arg("--media-dir").arg(util::root().join("media")).args([
            "--live",
            "sample",
            "--allow-origin",
            "*",
        ]);
    } else {
        o.args(["--synthetic", &format!("swarm={SYNTHETIC_KBIT}:2")]);
    }
    let origin = start(&mut children, o, "http://")?;
    let mut s = Command::new(&signal_bin);
    s.args(["--listen", "127.0.0.1:0", "--max-conns-per-ip", "100000"])
        .env("RUST_LOG", "warn");
    let signal = start(&mut children, s, "listening on ")?;
    let playlist = if sample {
        format!("http://{origin}/live/sample/index.m3u8")
    } else {
        format!("http://{origin}/synthetic/swarm/index.m3u8")
    };
    let signal = format!("ws://{signal}/ws");
    std::thread::sleep(Duration::from_millis(300));

    let t0 = Instant::now();
    let base = load(&load_bin, &signal, &playlist, &args, true)?;
    let p2p = load(&load_bin, &signal, &playlist, &args, false)?;
    let ob = f(&base, "origin_bytes");
    let op = f(&p2p, "origin_bytes");
    println!(
        "\nbench swarm: {} native viewers + {} browsers, {} stream, {} s each run ({:.0} s total)",
        args.viewers,
        args.browsers,
        if sample { "sample" } else { "synthetic" },
        args.seconds,
        t0.elapsed().as_secs_f64()
    );
    println!("{:<24} {:>14} {:>14}", "", "HTTP only", "P2P");
    println!("{:<24} {:>14.1} {:>14.1}", "origin MB", ob / 1e6, op / 1e6);
    println!(
        "{:<24} {:>14.3} {:>14.3}",
        "offload",
        f(&base, "offload"),
        f(&p2p, "offload")
    );
    println!(
        "{:<24} {:>14} {:>14}",
        "stalls",
        f(&base, "stalls"),
        f(&p2p, "stalls")
    );
    println!(
        "{:<24} {:>14} {:>14}",
        "startup p50 ms",
        f(&base, "startup_ms_p50"),
        f(&p2p, "startup_ms_p50")
    );
    println!(
        "{:<24} {:>14} {:>14}",
        "corrupt to player",
        f(&base, "corrupt_to_player"),
        f(&p2p, "corrupt_to_player")
    );
    println!(
        "{:<24} {:>14.2} {:>14.2}",
        "CPU % per native peer",
        f(&base, "cpu_pct_per_peer"),
        f(&p2p, "cpu_pct_per_peer")
    );
    println!(
        "{:<24} {:>14.2} {:>14.2}",
        "RSS MB per native peer",
        f(&base, "rss_mb_per_peer"),
        f(&p2p, "rss_mb_per_peer")
    );
    if args.browsers > 0 {
        let b = |v: &Value, k: &str| v["browsers"].get(k).and_then(Value::as_f64).unwrap_or(0.0);
        for (name, k, scale) in [
            ("browsers playing", "started", 1.0),
            ("browser HTTP MB", "delivered_http", 1e6),
            ("browser P2P MB", "delivered_p2p", 1e6),
            ("browser uploaded MB", "uploaded", 1e6),
            ("browser stalls", "stalls", 1.0),
            ("browser startup p50 ms", "startup_ms_p50", 1.0),
            ("browser integrity fails", "integrity_failures", 1.0),
        ] {
            println!(
                "{name:<24} {:>14.1} {:>14.1}",
                b(&base, k) / scale,
                b(&p2p, k) / scale
            );
        }
    }
    let ratio = if ob > 0.0 { op / ob } else { 0.0 };
    println!("origin bytes P2P / HTTP-only: {ratio:.3}");
    // The capacity bound, as `cargo xtask sim` reports it: the origin sends each segment at
    // least once (1 − 1/N), and the viewers cannot upload more than their uplinks carry.
    let bitrate = if sample {
        crate::bench_lab::playlist_bitrate(&util::root().join("media/sample/index.m3u8"))?
    } else {
        SYNTHETIC_KBIT as f64 * 1000.0
    };
    let n = (args.viewers + args.browsers).max(1) as f64;
    let bound = (1.0 - 1.0 / n).min(
        args.upload_kbit
            .map_or(f64::INFINITY, |k| k as f64 * 1000.0 / bitrate),
    );
    let saved = 1.0 - ratio;
    let r4 = |x: f64| (x * 10_000.0).round() / 10_000.0;
    println!(
        "origin saved {saved:.3} of the HTTP-only run's bytes, bound {bound:.3} ({:.2} of it); \
         uploaded {:.1} MB; waste {:.1} MB ({:.1} % of delivered: {:.1} MB received and not \
         played, of which {:.1} MB twice from the origin and {:.1} MB twice from peers; {:.1} MB \
         uploaded and not kept)",
        saved / bound.max(1e-9),
        f(&p2p, "uploaded_bytes") / 1e6,
        f(&p2p, "wasted_bytes") / 1e6,
        f(&p2p, "waste_ratio") * 100.0,
        f(&p2p, "received_unplayed") / 1e6,
        f(&p2p, "dup_http_bytes") / 1e6,
        f(&p2p, "dup_p2p_bytes") / 1e6,
        f(&p2p, "uploaded_unreceived") / 1e6,
    );
    let json = serde_json::json!({
        "viewers": args.viewers,
        // The P2P run's browser figures (count, bytes, stalls, startup), already in the totals.
        "browsers": p2p.get("browsers").cloned().unwrap_or(Value::Null),
        "baseline_browsers": base.get("browsers").cloned().unwrap_or(Value::Null),
        "stream": if sample { "sample" } else { "synthetic" },
        "seconds": args.seconds,
        "offload": f(&p2p, "offload"),
        "limit": f(&p2p, "limit"),
        "stalls": f(&p2p, "stalls"),
        "baseline_stalls": f(&base, "stalls"),
        "startup_ms_p50": f(&p2p, "startup_ms_p50"),
        "baseline_startup_ms_p50": f(&base, "startup_ms_p50"),
        "origin_bytes": op,
        "baseline_origin_bytes": ob,
        "origin_ratio": r4(ratio),
        "origin_saved": r4(saved),
        "bound": r4(bound),
        "saved_over_bound": r4(saved / bound.max(1e-9)),
        "upload_kbit": args.upload_kbit,
        "bitrate_kbit": (bitrate / 1e3).round(),
        "p2p_bytes": f(&p2p, "p2p_bytes"),
        "uploaded_bytes": f(&p2p, "uploaded_bytes"),
        "delivered_bytes": f(&p2p, "delivered_bytes"),
        "wasted_bytes": f(&p2p, "wasted_bytes"),
        "waste_ratio": f(&p2p, "waste_ratio"),
        "received_unplayed": f(&p2p, "received_unplayed"),
        "uploaded_unreceived": f(&p2p, "uploaded_unreceived"),
        "dup_http_bytes": f(&p2p, "dup_http_bytes"),
        "dup_p2p_bytes": f(&p2p, "dup_p2p_bytes"),
        "corrupt_to_player": f(&p2p, "corrupt_to_player"),
        "banned_bad": f(&p2p, "banned_bad"),
        "cpu_pct_per_peer": f(&p2p, "cpu_pct_per_peer"),
        "rss_mb_per_peer": f(&p2p, "rss_mb_per_peer"),
    });
    println!("{json}");
    Ok(())
}
