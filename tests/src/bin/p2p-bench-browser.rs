//! `cargo xtask bench browser-cpu`: what P2P costs a page, in one run. The same demo page on the
//! live sample with P2P off, then on (N headless Chromiums each, one page per browser, launched
//! 1 s apart, in-process origin + signaling server of `test_support::harness`):
//!
//! * CPU seconds per page-minute: the Chromium process trees' CPU time (`test_support::cpu`,
//!   from /proc: browser, renderer, GPU, network service...) over a window that starts
//!   `--settle` s after the last page opened, divided by pages × window minutes;
//! * startup p50/max: navigation → first `playing` (the page's `startupMs`);
//! * the longest main-thread task (`longtask` entries, > 50 ms) and the longest script run that
//!   was ours (long-animation-frame script attribution: p2p-cdn.js and the wasm it calls);
//! * with `--profile S`: V8's CPU profile of the first P2P page for S seconds of the window,
//!   through the DevTools protocol (that page is then left out of the CPU figures), self time
//!   by script and the top functions.
//!
//! Ends with one JSON line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{Value, json};
use test_support::browser::{Chromium, ChromiumOptions};
use test_support::{cdp, cpu, harness};

#[derive(Parser)]
struct Args {
    /// Pages (browsers) per mode.
    #[arg(long, default_value_t = 12)]
    pages: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds between the last page opening and the start of the window.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Modes, in order: `off`, `on` (comma-separated).
    #[arg(long, default_value = "off,on")]
    modes: String,
    /// Profile the first P2P page's main thread for this many seconds (0: no profile).
    #[arg(long, default_value_t = 0)]
    profile: u64,
    /// Functions listed from the profile.
    #[arg(long, default_value_t = 25)]
    top: usize,
}

struct ModeResult {
    /// CPU seconds per page-minute over the window, and by process kind.
    cpu_per_page_min: f64,
    by_kind: BTreeMap<String, f64>,
    /// Including each page's startup: CPU since launch / minutes since launch.
    cpu_per_page_min_lifetime: f64,
    startup: Vec<f64>,
    never_started: usize,
    longest_task_ms: f64,
    long_tasks: f64,
    /// Longest script run by owner (`p2p`, `hls`, `demo`, `other`): ms and what.
    longest_scripts: BTreeMap<String, (f64, String)>,
    stalls: f64,
    offload: f64,
    profile: Option<Value>,
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_f64().filter(|x| x.is_finite()).unwrap_or(0.0)
}

async fn run_mode(env: &harness::Env, args: &Args, p2p: bool) -> Result<ModeResult> {
    let tag = if p2p { "on" } else { "off" };
    let profiled = p2p && args.profile > 0;
    let mut browsers: Vec<(String, Chromium, Instant)> = Vec::new();
    for i in 0..args.pages {
        let id = format!("{tag}{i}");
        let url = env.page_url(&format!("&report=1&id={id}&p2p={}", u8::from(p2p)));
        let opts = ChromiumOptions {
            deadline: Duration::from_secs(args.pages as u64 + args.settle + args.seconds + 300),
            extra_args: if profiled && i == 0 {
                vec![cdp::REMOTE_DEBUGGING_FLAG.to_string()]
            } else {
                Vec::new()
            },
            ..ChromiumOptions::default()
        };
        let b = Chromium::launch(&opts, &url).context("starting chromium")?;
        browsers.push((id, b, Instant::now()));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "p2p {tag}: {} pages open, settling {} s",
        args.pages, args.settle
    );
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    // The profiled page is measured by the profiler, not by the CPU figures.
    let skip = usize::from(profiled);
    let c0: Vec<_> = browsers
        .iter()
        .map(|(_, b, _)| cpu::tree_cpu(b.pid()))
        .collect();
    let t0 = Instant::now();
    let profile = if profiled {
        let secs = args.profile.min(args.seconds) as f64;
        let mut c =
            cdp::Cdp::attach_page(browsers[0].1.profile_dir(), Duration::from_secs(10)).await?;
        eprintln!("p2p {tag}: profiling page {} for {secs} s", browsers[0].0);
        Some(c.cpu_profile(secs, 500).await?)
    } else {
        None
    };
    let left = Duration::from_secs(args.seconds).saturating_sub(t0.elapsed());
    tokio::time::sleep(left).await;
    let window = t0.elapsed().as_secs_f64();
    let c1: Vec<_> = browsers
        .iter()
        .map(|(_, b, _)| cpu::tree_cpu(b.pid()))
        .collect();
    let lifetime: Vec<f64> = browsers
        .iter()
        .map(|(_, _, at)| at.elapsed().as_secs_f64())
        .collect();
    // One more report round, then read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reports = env.reports.lock().map(|r| r.clone()).unwrap_or_default();
    for (_, b, _) in &mut browsers {
        b.terminate();
    }
    let measured = browsers.len() - skip;
    let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
    let (mut total, mut life_cpu, mut life_min) = (0.0, 0.0, 0.0);
    for i in skip..browsers.len() {
        let d = cpu::diff(&c0[i], &c1[i]);
        total += cpu::total(&d);
        for (k, v) in d {
            *by_kind.entry(k).or_default() += v;
        }
        life_cpu += cpu::total(&c1[i]);
        life_min += lifetime[i] / 60.0;
    }
    let page_min = measured as f64 * window / 60.0;
    for v in by_kind.values_mut() {
        *v /= page_min.max(1e-9);
    }
    let mut r = ModeResult {
        cpu_per_page_min: total / page_min.max(1e-9),
        by_kind,
        cpu_per_page_min_lifetime: life_cpu / f64::max(life_min, 1e-9),
        startup: Vec::new(),
        never_started: 0,
        longest_task_ms: 0.0,
        long_tasks: 0.0,
        longest_scripts: BTreeMap::new(),
        stalls: 0.0,
        offload: 0.0,
        profile,
    };
    let (mut p2p_b, mut all_b) = (0.0, 0.0);
    for (id, _, _) in &browsers {
        let Some(v) = reports.get(id) else {
            eprintln!("p2p {tag}: page {id} never reported");
            r.never_started += 1;
            continue;
        };
        match v["startupMs"].as_f64() {
            Some(ms) if v["started"] == true => r.startup.push(ms),
            _ => r.never_started += 1,
        }
        r.longest_task_ms = r.longest_task_ms.max(f(v, &["longTaskMs"]));
        r.long_tasks += f(v, &["longTasks"]);
        if let Some(o) = v["longScripts"].as_object() {
            for (who, s) in o {
                let ms = f(s, &["ms"]);
                let e = r
                    .longest_scripts
                    .entry(who.clone())
                    .or_insert((0.0, String::new()));
                if ms > e.0 {
                    *e = (ms, s["what"].as_str().unwrap_or("").to_string());
                }
            }
        }
        r.stalls += f(v, &["waiting"]);
        if p2p {
            p2p_b += f(v, &["stats", "deliveredP2pBytes"]);
            all_b += f(v, &["stats", "deliveredP2pBytes"]) + f(v, &["stats", "deliveredHttpBytes"]);
        }
        if let Some(e) = v["errors"].as_array().filter(|e| !e.is_empty()) {
            eprintln!("p2p {tag}: page {id} errors: {e:?}");
        }
    }
    r.offload = if all_b > 0.0 { p2p_b / all_b } else { 0.0 };
    // Waited for off the async threads (dropping a browser waits for it to exit).
    let _ = tokio::task::spawn_blocking(move || drop(browsers)).await;
    Ok(r)
}

fn print_profile(p: &Value, top: usize) {
    let times = cdp::self_times(p);
    let all: f64 = times.iter().map(|t| t.2).sum();
    println!(
        "\nV8 profile of the first P2P page ({:.0} ms sampled): self time by script",
        all
    );
    for (s, ms) in cdp::by_script(&times) {
        println!("  {ms:>9.1} ms {:>5.1} %  {s}", 100.0 * ms / all.max(1e-9));
    }
    println!("top functions (self time):");
    for (s, func, ms) in times.iter().take(top) {
        println!("  {ms:>9.1} ms  {s}  {func}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let env = harness::start(0).await?;
    let mut results: Vec<(bool, ModeResult)> = Vec::new();
    for m in args.modes.split(',').map(str::trim) {
        let p2p = match m {
            "on" => true,
            "off" => false,
            _ => anyhow::bail!("--modes: `on` or `off`, not {m:?}"),
        };
        let r = run_mode(&env, &args, p2p).await?;
        results.push((p2p, r));
    }
    println!(
        "\nbench browser-cpu: {} pages per mode, {} s window after {} s settle",
        args.pages, args.seconds, args.settle
    );
    let get = |p2p: bool| results.iter().find(|r| r.0 == p2p).map(|r| &r.1);
    let (off, on) = (get(false), get(true));
    let cols = |g: &dyn Fn(&ModeResult) -> String| {
        format!(
            "{:>12} {:>12}",
            off.map(g).unwrap_or_default(),
            on.map(g).unwrap_or_default()
        )
    };
    println!("{:<34} {:>12} {:>12}", "", "P2P off", "P2P on");
    println!(
        "{:<34} {}",
        "CPU s per page-minute",
        cols(&|r| format!("{:.2}", r.cpu_per_page_min))
    );
    let kinds: std::collections::BTreeSet<&String> =
        results.iter().flat_map(|r| r.1.by_kind.keys()).collect();
    for k in kinds {
        println!(
            "{:<34} {}",
            format!("  {k}"),
            cols(&|r| format!("{:.2}", r.by_kind.get(k).copied().unwrap_or(0.0)))
        );
    }
    println!(
        "{:<34} {}",
        "CPU s per page-minute (lifetime)",
        cols(&|r| format!("{:.2}", r.cpu_per_page_min_lifetime))
    );
    println!(
        "{:<34} {}",
        "startup p50 ms",
        cols(&|r| format!("{:.0}", pct(&r.startup, 0.5)))
    );
    println!(
        "{:<34} {}",
        "startup max ms",
        cols(&|r| format!("{:.0}", pct(&r.startup, 1.0)))
    );
    println!(
        "{:<34} {}",
        "pages never playing",
        cols(&|r| r.never_started.to_string())
    );
    println!(
        "{:<34} {}",
        "longest task ms (all, > 50 ms)",
        cols(&|r| format!("{:.0}", r.longest_task_ms))
    );
    println!(
        "{:<34} {}",
        "long tasks (all pages)",
        cols(&|r| format!("{:.0}", r.long_tasks))
    );
    for who in ["p2p", "hls", "demo", "other"] {
        println!(
            "{:<34} {}",
            format!("longest script run ms: {who}"),
            cols(&|r| format!("{:.0}", r.longest_scripts.get(who).map_or(0.0, |x| x.0)))
        );
    }
    if let Some((ms, what)) = on.and_then(|r| r.longest_scripts.get("p2p")) {
        println!("  ours, P2P on: {ms:.0} ms in {what}");
    }
    println!("{:<34} {}", "stalls", cols(&|r| format!("{:.0}", r.stalls)));
    if let Some(r) = on {
        println!("offload (P2P on): {:.3}", r.offload);
    }
    if let Some(p) = on.and_then(|r| r.profile.as_ref()) {
        print_profile(p, args.top);
    }
    let side = |g: &dyn Fn(&ModeResult) -> Value| json!({"off": off.map(g).unwrap_or(Value::Null), "on": on.map(g).unwrap_or(Value::Null)});
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let overhead = match (off, on) {
        (Some(a), Some(b)) if a.cpu_per_page_min > 0.0 => {
            Value::from(r2(100.0 * (b.cpu_per_page_min / a.cpu_per_page_min - 1.0)))
        }
        _ => Value::Null,
    };
    let line = json!({
        "pages": args.pages,
        "seconds": args.seconds,
        "cpu_s_per_page_min": side(&|r| r2(r.cpu_per_page_min).into()),
        "p2p_cpu_overhead_pct": overhead,
        "cpu_by_kind": side(&|r| json!(r.by_kind.iter().map(|(k, v)| (k.clone(), r2(*v))).collect::<BTreeMap<_, _>>())),
        "startup_ms_p50": side(&|r| pct(&r.startup, 0.5).into()),
        "startup_ms_max": side(&|r| pct(&r.startup, 1.0).into()),
        "never_started": side(&|r| r.never_started.into()),
        "longest_task_ms": side(&|r| r.longest_task_ms.into()),
        "longest_ours_ms": side(&|r| r.longest_scripts.get("p2p").map_or(0.0, |x| x.0).into()),
        "stalls": side(&|r| r.stalls.into()),
        "offload": on.map(|r| r2(r.offload * 10.0) / 10.0),
    });
    println!("{line}");
    Ok(())
}
