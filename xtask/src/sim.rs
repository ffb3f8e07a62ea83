//! `cargo xtask sim`: a seeded swarm simulation of peer-core (see the `sim` crate).

use anyhow::Result;
use sim::SimConfig;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 20)]
    viewers: usize,
    #[arg(long, default_value_t = 600.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Percent of viewers leaving (replaced by newcomers) per minute.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Fraction of viewers that corrupt every chunk they upload.
    #[arg(long, default_value_t = 0.0)]
    bad_peers: f64,
    /// A VOD instead of a live stream.
    #[arg(long)]
    vod: bool,
    /// Everybody fetches from the origin (baseline).
    #[arg(long)]
    http_only: bool,
    /// Stream bitrate, kbit/s.
    #[arg(long, default_value_t = 2000.0)]
    bitrate_kbps: f64,
    #[arg(long, default_value_t = 2.0)]
    segment_secs: f64,
    /// Viewer downlink / uplink, Mbit/s.
    #[arg(long, default_value_t = 20.0)]
    down_mbps: f64,
    #[arg(long, default_value_t = 4.0)]
    up_mbps: f64,
    /// RTT between viewers, ms (uniform in [min, max]).
    #[arg(long, default_value_t = 20.0)]
    rtt_min_ms: f64,
    #[arg(long, default_value_t = 100.0)]
    rtt_max_ms: f64,
    /// Packet loss between viewers.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// One-way latency to the origin, ms.
    #[arg(long, default_value_t = 50.0)]
    origin_ms: f64,
    /// Viewers join uniformly over this many seconds.
    #[arg(long, default_value_t = 30.0)]
    join_window: f64,
    /// Members that split each segment's origin fetch.
    #[arg(long, default_value_t = 10)]
    origin_seeders: usize,
    /// Segment store of each peer, MB.
    #[arg(long, default_value_t = 64)]
    store_mb: usize,
    /// Segments behind the live edge where the player starts.
    #[arg(long, default_value_t = 3)]
    live_delay: u64,
    /// Skip the HTTP-only run of the same viewers (and seed) that `origin_saved` compares with.
    #[arg(long)]
    no_baseline: bool,
    /// Longest a request may wait for a viewer's measured uplink before it answers `Busy`
    /// (peer-core's `serve_horizon`), ms.
    #[arg(long)]
    serve_horizon_ms: Option<u64>,
    /// Most of a viewer's measured uplink time its send buffers may hold (peer-core's
    /// `send_window_time`), ms.
    #[arg(long)]
    send_window_ms: Option<u64>,
    /// Links carry frame bytes only: no packet headers, retransmissions or SACKs (the model
    /// before the lab's packet capture; see `sim::wire`).
    #[arg(long)]
    no_wire_overhead: bool,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = SimConfig {
        viewers: a.viewers,
        seconds: a.seconds,
        seed: a.seed,
        churn_pct_per_min: a.churn,
        bad_peers: a.bad_peers,
        vod: a.vod,
        http_only: a.http_only,
        bitrate_bps: a.bitrate_kbps * 1000.0,
        segment_secs: a.segment_secs,
        down_bps: a.down_mbps * 1e6,
        up_bps: a.up_mbps * 1e6,
        rtt_min_ms: a.rtt_min_ms,
        rtt_max_ms: a.rtt_max_ms,
        loss: a.loss,
        origin_ms: a.origin_ms,
        join_window_secs: a.join_window,
        live_delay_segments: a.live_delay,
        wire_overhead: !a.no_wire_overhead,
        core: sim::peer_core::Config {
            store_cap: a.store_mb * 1024 * 1024,
            origin_seeders: a.origin_seeders,
            serve_horizon: a.serve_horizon_ms.map_or(
                sim::peer_core::Config::default().serve_horizon,
                std::time::Duration::from_millis,
            ),
            send_window_time: a.send_window_ms.map_or(
                sim::peer_core::Config::default().send_window_time,
                std::time::Duration::from_millis,
            ),
            ..Default::default()
        },
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let baseline = !(a.http_only || a.no_baseline);
    let (report, base) = run_pair(cfg, baseline);
    println!("{}", report.summary());
    if let Some(b) = &base {
        println!(
            "origin: {:.1} MB against {:.1} MB for the same viewers over HTTP only: {:.3} saved (bound {:.3})",
            report.http_bytes as f64 / 1e6,
            b.http_bytes as f64 / 1e6,
            saved(&report, b),
            report.bound
        );
    }
    println!(
        "(simulated in {:.1} s of wall time)",
        started.elapsed().as_secs_f64()
    );
    println!("{}", json_with_baseline(&report, base.as_ref()));
    Ok(())
}

/// Runs `cfg` and, with `baseline`, the same viewers and seed over HTTP only (on two threads).
fn run_pair(cfg: SimConfig, baseline: bool) -> (sim::Report, Option<sim::Report>) {
    if !baseline {
        return (sim::run(cfg), None);
    }
    let http = SimConfig {
        http_only: true,
        ..cfg.clone()
    };
    std::thread::scope(|s| {
        let b = s.spawn(|| sim::run(http));
        let r = sim::run(cfg);
        // A panic in the simulator is a bug worth its backtrace: pass it on.
        let b = b.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (r, Some(b))
    })
}

/// 1 − origin bytes ÷ origin bytes of the HTTP-only run: what the operator's bill shows.
fn saved(r: &sim::Report, http_only: &sim::Report) -> f64 {
    1.0 - r.http_bytes as f64 / http_only.http_bytes.max(1) as f64
}

fn json_with_baseline(r: &sim::Report, base: Option<&sim::Report>) -> String {
    let mut j = r.to_json();
    j.pop();
    j += &format!(
        ",\"waste_ratio\":{:.4}",
        r.wasted_bytes() as f64 / r.delivered_bytes().max(1) as f64
    );
    if let Some(b) = base {
        j += &format!(
            ",\"http_only_origin_bytes\":{},\"origin_saved\":{:.4},\"saved_over_bound\":{:.4}",
            b.http_bytes,
            saved(r, b),
            saved(r, b) / r.bound.max(1e-9)
        );
    }
    j.push('}');
    j
}

#[derive(clap::Args)]
pub struct GridArgs {
    /// Simulated seconds per run.
    #[arg(long, default_value_t = 300.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Viewer counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "20,50")]
    viewers: Vec<usize>,
    /// Uplinks in Mbit/s (comma-separated); the stream is 2 Mbit/s.
    #[arg(long, value_delimiter = ',', default_value = "1,1.5,2,4")]
    up_mbps: Vec<f64>,
    /// Rows run at once (each runs its P2P and HTTP-only runs on two threads).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Links carry frame bytes only (see `cargo xtask sim --no-wire-overhead`).
    #[arg(long)]
    no_wire_overhead: bool,
}

/// One row of the grid: links and swarm size.
#[derive(Clone, Copy)]
struct Row {
    viewers: usize,
    up_mbps: f64,
    rtt: (f64, f64),
    loss: f64,
}

/// `cargo xtask sim-grid`: issue 17's table — every combination of uplink, RTT range, loss and
/// swarm size, each against an HTTP-only run of the same seed. Prints one line per row as it
/// finishes, the table, and one JSON line.
pub fn grid(a: GridArgs) -> Result<()> {
    let mut rows = Vec::new();
    for &viewers in &a.viewers {
        for &up_mbps in &a.up_mbps {
            for rtt in [(20.0, 100.0), (80.0, 300.0)] {
                for loss in [0.01, 0.03] {
                    rows.push(Row {
                        viewers,
                        up_mbps,
                        rtt,
                        loss,
                    });
                }
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..a.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(row) = rows.get(i).copied() else {
                        break;
                    };
                    let cfg = SimConfig {
                        viewers: row.viewers,
                        seconds: a.seconds,
                        seed: a.seed,
                        up_bps: row.up_mbps * 1e6,
                        rtt_min_ms: row.rtt.0,
                        rtt_max_ms: row.rtt.1,
                        loss: row.loss,
                        wire_overhead: !a.no_wire_overhead,
                        ..SimConfig::default()
                    };
                    let (r, b) = run_pair(cfg, true);
                    let b = b.unwrap_or_default();
                    eprintln!("{}", line(&row, &r, &b));
                    if let Ok(mut v) = results.lock() {
                        v.push((i, row, r, b));
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|x| x.0);
    println!(
        "viewers | up Mbit/s | RTT ms  | loss | offload | origin MB (HTTP-only) | saved | bound | saved/bound | waste % | stalls"
    );
    let mut json_rows = Vec::new();
    let (mut worst_ratio, mut worst_waste, mut stalls) = (f64::INFINITY, 0.0f64, 0u64);
    for (_, row, r, b) in &results {
        println!("{}", line(row, r, b));
        let sv = saved(r, b);
        let waste = r.wasted_bytes() as f64 / r.delivered_bytes().max(1) as f64;
        worst_ratio = worst_ratio.min(sv / r.bound.max(1e-9));
        worst_waste = worst_waste.max(waste);
        stalls += r.stalls;
        json_rows.push(format!(
            "{{\"viewers\":{},\"up_mbps\":{},\"rtt_ms\":[{},{}],\"loss\":{},\"offload\":{:.4},\"origin_bytes\":{},\"http_only_origin_bytes\":{},\"origin_saved\":{:.4},\"bound\":{:.4},\"waste_ratio\":{:.4},\"stalls\":{}}}",
            row.viewers, row.up_mbps, row.rtt.0, row.rtt.1, row.loss, r.offload, r.http_bytes, b.http_bytes, sv, r.bound, waste, r.stalls
        ));
    }
    println!(
        "{{\"seed\":{},\"seconds\":{},\"rows\":[{}],\"min_saved_over_bound\":{:.4},\"max_waste_ratio\":{:.4},\"stalls\":{}}}",
        a.seed,
        a.seconds,
        json_rows.join(","),
        worst_ratio,
        worst_waste,
        stalls
    );
    Ok(())
}

fn line(row: &Row, r: &sim::Report, b: &sim::Report) -> String {
    format!(
        "{:>7} | {:>9} | {:>3}-{:<3} | {:>3.0}% | {:>7.3} | {:>8.0} ({:>8.0}) | {:>5.3} | {:>5.3} | {:>11.3} | {:>7.1} | {}",
        row.viewers,
        row.up_mbps,
        row.rtt.0,
        row.rtt.1,
        row.loss * 100.0,
        r.offload,
        r.http_bytes as f64 / 1e6,
        b.http_bytes as f64 / 1e6,
        saved(r, b),
        r.bound,
        saved(r, b) / r.bound.max(1e-9),
        100.0 * r.wasted_bytes() as f64 / r.delivered_bytes().max(1) as f64,
        r.stalls
    )
}
