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
        core: sim::peer_core::Config {
            store_cap: a.store_mb * 1024 * 1024,
            origin_seeders: a.origin_seeders,
            ..Default::default()
        },
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let report = sim::run(cfg);
    println!("{}", report.summary());
    println!(
        "(simulated in {:.1} s of wall time)",
        started.elapsed().as_secs_f64()
    );
    println!("{}", report.to_json());
    Ok(())
}
