//! `p2pcdn-load`: puts N native viewers (real WebRTC, real HTTP, real signaling), and
//! optionally B headless Chromium pages running the browser peer, on any deployment and reports
//! offload, stalls, startup, origin bytes and integrity; ends with one JSON line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use peer_native::swarm::{BrowserSetup, SwarmOptions, run_swarm_until};
use peer_native::tls::Roots;
use peer_native::token::{self, TokenSource};
use test_support::browser::DEFAULT_CHROMIUM;

#[derive(Parser, Debug)]
#[command(
    name = "p2pcdn-load",
    about = "Swarm load test of a P2P CDN deployment with native viewers and headless Chromium pages",
    after_help = "BROWSERS: with --browsers B, B headless Chromium processes (one page each) open the \
demo page (demo-site/ + the dist/ bundle of `cargo xtask wasm`: hls.js and the wasm browser peer) \
with ?src=<playlist>&signal=<signal>&report=1&id=b<k>, so they join the same swarm as the native \
viewers. By default this tool serves that page itself (--site-dir, on --page-listen); the \
deployment's origin must then allow CORS from it (origin --allow-origin '*'). With --page-url the \
deployment's own copy of the demo page is opened instead, and it reports to this tool's collector \
(reportTo=http://<page-listen>/report). Each page posts its counters every second; their HTTP \
bytes, P2P bytes, stalls and startup are added to the totals and shown under `browsers` in the \
JSON line. The browsers are ended when the run ends or on Ctrl-C / SIGTERM (a second signal exits \
at once; `timeout` then ends them at run time + ramp + 120 s).

TLS AND TOKENS: wss:// signaling and https:// origins are checked against the public (webpki) \
roots plus every --ca-cert (PEM): a private CA that signed the server's certificate, or the \
server's own self-signed certificate (e.g. an nginx TLS proxy's from `openssl req -x509`; trusted \
when the server presents exactly it, for its host name). There is no mode that accepts any \
certificate. With \
--token every viewer joins with that token (as minted by the site's backend); with \
--token-secret the tool mints its own (the signaling server's --token-secret), one per signaling \
connection, valid --token-ttl seconds, for the swarms under --token-scope. Browser pages get theirs \
as the page's token= parameter (minted to last the run). Chromium is told to trust the keys of \
the --ca-cert certificates (--ignore-certificate-errors-spki-list): that covers a self-signed \
server certificate, or a private CA the server sends in its chain.

REPRODUCING A RUN: every random choice of the tool (join times within the ramp, which viewers \
tamper, churn times and victims, the cores' seeds) derives from --seed; without it a seed is \
drawn and printed (table and JSON line), so a run can be repeated with --seed <printed>."
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
    /// Headless Chromium viewers (the demo page with the browser peer), joining over the ramp
    #[arg(long, default_value_t = 0)]
    browsers: usize,
    /// Chromium binary
    #[arg(long, default_value = DEFAULT_CHROMIUM)]
    chromium: PathBuf,
    /// A deployed copy of the demo page, e.g. https://cdn.example/demo/index.html (default:
    /// serve --site-dir)
    #[arg(long)]
    page_url: Option<String>,
    /// Folders served as the demo page, first match wins (repeat; default: demo-site/ and dist/
    /// of the source tree this tool was built from)
    #[arg(long)]
    site_dir: Vec<PathBuf>,
    /// Address of the page server / report collector
    #[arg(long, default_value = "127.0.0.1:0")]
    page_listen: SocketAddr,
    /// Folder for one Chromium log per page (<id>.log)
    #[arg(long)]
    browser_logs: Option<PathBuf>,
    /// Run page b<k> in the network namespace <PREFIX><k> (`ip netns exec`, as root; the
    /// namespaces must exist, e.g. made by `cargo xtask bench lab`)
    #[arg(long, value_name = "PREFIX")]
    browser_netns: Option<String>,
    /// Extra Chromium flag for every page (repeat), e.g.
    /// --chromium-arg=--unsafely-treat-insecure-origin-as-secure=http://10.0.0.1:8080
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    chromium_arg: Vec<String>,
    /// Upload cap of each native viewer, kbit/s (peer-core's `upload_cap`; default: none)
    #[arg(long)]
    upload_kbit: Option<u64>,
    /// The origin's --admin-token, to read its byte counter (/stats) when it is not on
    /// loopback (otherwise the viewers' own counts are used)
    #[arg(long, env = "P2PCDN_ORIGIN_ADMIN_TOKEN", hide_env_values = true)]
    origin_admin_token: Option<String>,
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
    /// Record the first native viewer's session (its core's config, every input and output) to
    /// FILE as JSON lines, for `cargo xtask replay FILE`; only that viewer is recorded
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Trusted root certificate(s) for wss:// and https:// (PEM; repeat), on top of the public
    /// roots: the self-signed certificate or private CA of a test deployment
    #[arg(long, value_name = "FILE")]
    ca_cert: Vec<PathBuf>,
    /// Join token for every viewer, as the site's backend mints it
    #[arg(
        long,
        env = "P2PCDN_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_secret"
    )]
    token: Option<String>,
    /// Mint join tokens with the signaling server's --token-secret (keep it out of shell
    /// history: the environment variable works too)
    #[arg(long, env = "P2PCDN_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Swarms the minted tokens cover: a swarm id, or a prefix ending in `*` (default: the
    /// playlist's folder, `https://host/path/*`)
    #[arg(long, requires = "token_secret")]
    token_scope: Option<String>,
    /// Lifetime of each minted token, seconds (a fresh one per signaling connection)
    #[arg(long, default_value_t = 300, requires = "token_secret")]
    token_ttl: u64,
    /// Relay-only ICE (TURN servers from the signaling server's welcome), native viewers and
    /// pages (relay=1)
    #[arg(long)]
    relay: bool,
    /// Seed of every random choice of the tool (default: drawn, and printed)
    #[arg(long)]
    seed: Option<u64>,
    /// Write the full report (per viewer and page, every error) to FILE as JSON
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
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
    if cli.viewers > 5000 || cli.viewers + cli.browsers == 0 {
        bail!("--viewers must be 0..=5000, with at least one viewer or browser");
    }
    if cli.browsers > 64 {
        bail!("--browsers must be 0..=64 (each is a Chromium process)");
    }
    if !(0.0..=1.0).contains(&cli.bad_peers) {
        bail!("--bad-peers is a fraction in 0..=1");
    }
    let mut browser = BrowserSetup {
        chromium: cli.chromium,
        page_url: cli.page_url,
        listen: cli.page_listen,
        log_dir: cli.browser_logs,
        netns_prefix: cli.browser_netns,
        chromium_args: cli.chromium_arg,
        ..BrowserSetup::default()
    };
    if !cli.site_dir.is_empty() {
        browser.site_dirs = cli.site_dir;
    }
    if cli.browsers > 0 {
        if !browser.chromium.exists() {
            bail!(
                "--browsers: {} not found (apt-get install chromium, or --chromium PATH)",
                browser.chromium.display()
            );
        }
        if browser.page_url.is_none() {
            for f in ["index.html", "app.js", "p2p-cdn.js", "p2p-cdn_bg.wasm"] {
                if !browser.site_dirs.iter().any(|d| d.join(f).is_file()) {
                    bail!(
                        "--browsers: {f} is in none of {:?} (build the bundle with `cargo xtask wasm`, \
                         or pass --site-dir / --page-url)",
                        browser.site_dirs
                    );
                }
            }
        }
        if let Some(d) = &browser.log_dir {
            std::fs::create_dir_all(d)?;
        }
    }
    let mut roots = Roots::default();
    for f in &cli.ca_cert {
        roots.load_pem(f)?;
    }
    let token = match (cli.token, cli.token_secret) {
        (Some(t), _) => TokenSource::Fixed(t),
        (None, Some(secret)) => TokenSource::Mint {
            secret,
            scope: cli
                .token_scope
                .unwrap_or_else(|| token::default_scope(&cli.playlist)),
            ttl: Duration::from_secs(cli.token_ttl.max(1)),
        },
        (None, None) => TokenSource::None,
    };
    // Without --seed, one from the clock: printed, so the run can be repeated.
    let seed = cli.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Nine digits: easy to type back, and exact in any JSON reader (< 2^53).
        ((t.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
    });
    if let Some(out) = &cli.output {
        // Fail before the run, not after it.
        std::fs::write(out, b"")
            .with_context(|| format!("--output {}: cannot write", out.display()))?;
    }
    let mut opts = SwarmOptions::new(cli.signal, cli.playlist, cli.viewers, cli.seconds);
    opts.seed = seed;
    opts.roots = roots;
    opts.token = token;
    opts.relay = cli.relay;
    opts.ramp = cli.ramp;
    opts.churn_pct_per_min = cli.churn;
    opts.bad_peers = cli.bad_peers;
    opts.http_only = cli.http_only;
    opts.udp_addrs = cli.udp;
    opts.browsers = cli.browsers;
    opts.browser = browser;
    opts.record = cli.record;
    opts.origin_admin_token = cli.origin_admin_token;
    if let Some(k) = cli.upload_kbit {
        if k == 0 {
            bail!("--upload-kbit must be > 0 (an uplink of nothing: run --http-only instead)");
        }
        opts.core.upload_cap = Some(k * 1000 / 8);
    }
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
    let report = rt.block_on(async {
        // The first Ctrl-C / SIGTERM ends the run early (browsers are ended, the report is
        // still printed); a second one exits at once.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            interrupted().await;
            let _ = stop_tx.send(true);
            interrupted().await;
            eprintln!("p2pcdn-load: interrupted twice, exiting now");
            std::process::exit(130);
        });
        run_swarm_until(
            opts,
            |t, n| {
                bar.set_position(t as u64);
                bar.set_message(format!("{n} viewers"));
            },
            stop,
        )
        .await
    });
    bar.finish_and_clear();
    eprint!("{}", report.table());
    if let Some(out) = &cli.output {
        let full = serde_json::to_string_pretty(&report.to_report_json())?;
        std::fs::write(out, full + "\n").with_context(|| format!("--output {}", out.display()))?;
    }
    println!("{}", report.to_json());
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
