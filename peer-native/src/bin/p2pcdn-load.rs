//! `p2pcdn-load`: puts N native viewers (real WebRTC, real HTTP, real signaling) on any
//! deployment and reports offload, stalls, startup, origin bytes and integrity; ends with one
//! JSON line.

use anyhow::{Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use peer_native::swarm::{SwarmOptions, run_swarm};

#[derive(Parser, Debug)]
#[command(
    name = "p2pcdn-load",
    about = "Swarm load test of a P2P CDN deployment with native viewers"
)]
struct Cli {
    /// Signaling WebSocket URL, e.g. ws://127.0.0.1:8080/ws
    #[arg(long)]
    signal: String,
    /// Media playlist URL (its sidecar <name>.integrity.json must exist)
    #[arg(long)]
    playlist: String,
    /// Native viewers
    #[arg(long, default_value_t = 10)]
    viewers: usize,
    /// Headless Chromium viewers with the browser peer (needs peer-wasm's demo; not available yet)
    #[arg(long, default_value_t = 0)]
    browsers: usize,
    /// Run time in seconds
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Viewers join evenly over this many seconds
    #[arg(long, default_value_t = 5.0)]
    ramp: f64,
    /// Percent of viewers leaving (and replaced) per minute
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Fraction of viewers corrupting every chunk they upload
    #[arg(long, default_value_t = 0.0)]
    bad_peers: f64,
    /// Origin only (baseline)
    #[arg(long)]
    http_only: bool,
    /// Local UDP addresses for WebRTC (comma separated; 0.0.0.0:0 = every non-loopback interface)
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:0,0.0.0.0:0")]
    udp: Vec<String>,
    /// No progress bar
    #[arg(long)]
    quiet: bool,
}

/// Default log filter: the webrtc stack warns about routine races of non-trickle ICE (checks that
/// arrive before the answer is applied); keep its errors only.
const QUIET_LOGS: &str = "warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error";

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| QUIET_LOGS.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.viewers == 0 || cli.viewers > 5000 {
        bail!("--viewers must be 1..=5000");
    }
    if !(0.0..=1.0).contains(&cli.bad_peers) {
        bail!("--bad-peers is a fraction in 0..=1");
    }
    if cli.browsers > 0 {
        bail!("--browsers: the browser peer (peer-wasm demo) is not available in this build yet");
    }
    let mut opts = SwarmOptions::new(cli.signal, cli.playlist, cli.viewers, cli.seconds);
    opts.ramp = cli.ramp;
    opts.churn_pct_per_min = cli.churn;
    opts.bad_peers = cli.bad_peers;
    opts.http_only = cli.http_only;
    opts.udp_addrs = cli.udp;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bar = if cli.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(cli.seconds.ceil() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = rt.block_on(run_swarm(opts, |t, n| {
        bar.set_position(t as u64);
        bar.set_message(format!("{n} viewers"));
    }));
    bar.finish_and_clear();
    eprint!("{}", report.table());
    println!("{}", report.to_json());
    Ok(())
}
