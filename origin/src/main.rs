//! `origin`: the HLS origin server binary (thin wrapper over the `origin` library).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use origin::{AppState, Config, SyntheticSpec, URL_LAYOUT};

#[derive(Parser)]
#[command(
    name = "origin",
    version,
    about = "HLS origin for the P2P CDN: VOD folders, looping live streams, synthetic streams, \
             integrity sidecars and byte accounting",
    after_long_help = URL_LAYOUT,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes <name>.integrity.json next to every media playlist under DIR (for nginx & co).
    Hash {
        /// Folder of HLS streams (searched recursively).
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ORIGIN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder of VOD streams, one HLS stream per sub-folder (served under /vod/<stream>/).
    #[arg(long, env = "ORIGIN_MEDIA_DIR")]
    media_dir: Option<PathBuf>,
    /// Sub-folder of --media-dir also published as a looping live stream (/live/<stream>/);
    /// repeat or comma-separate.
    #[arg(long = "live", env = "ORIGIN_LIVE", value_delimiter = ',')]
    live: Vec<String>,
    /// Synthetic live stream NAME=RATE_KBPS:SEG_SECS, e.g. bench=2000:2 (/synthetic/<name>/);
    /// repeat or comma-separate.
    #[arg(long = "synthetic", env = "ORIGIN_SYNTHETIC", value_delimiter = ',')]
    synthetic: Vec<SyntheticSpec>,
    /// CORS origin allowed to fetch (e.g. http://localhost:3000, or * for any); repeat or
    /// comma-separate. None: no CORS headers.
    #[arg(
        long = "allow-origin",
        env = "ORIGIN_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    allow_origin: Vec<String>,
    /// Segments listed in a live playlist.
    #[arg(long, env = "ORIGIN_WINDOW", default_value_t = 6)]
    window: usize,
    /// Segment cache budget in MiB (LRU).
    #[arg(long, env = "ORIGIN_CACHE_MB", default_value_t = 256)]
    cache_mb: usize,
    /// A client must send a complete request head within this time of connecting, or of its
    /// previous response on a keep-alive connection (so idle keep-alive connections are closed
    /// after it too): slowloris sockets are closed.
    #[arg(long, env = "ORIGIN_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// A connection on which no byte moves either way for this long is closed (a trickled
    /// request, a download the client stopped reading).
    #[arg(long, env = "ORIGIN_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Proxy address or CIDR network whose Forwarded / X-Forwarded-For headers are believed
    /// (logs, the local-only admin check); repeat or comma-separate. From anyone else the
    /// socket address is the client's.
    #[arg(
        long = "trusted-proxy",
        env = "ORIGIN_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = http_guard::parse_cidr
    )]
    trusted_proxies: Vec<http_guard::IpNet>,
    /// Token for the admin endpoints (/stats, POST /stats/reset, the stream list of /):
    /// Authorization: Bearer <token>; at least 16 bytes. Without it they answer local requests
    /// only.
    #[arg(long, env = "ORIGIN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Log lines as text, or as one JSON object per line for a log pipeline.
    #[arg(long, env = "ORIGIN_LOG_FORMAT", value_enum, default_value_t)]
    log_format: http_guard::LogFormat,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    http_guard::logging::init(cli.serve.log_format);
    match cli.cmd {
        Some(Cmd::Hash { dir }) => {
            let written = origin::write_sidecars(&dir)
                .with_context(|| format!("hashing {}", dir.display()))?;
            for p in &written {
                println!("{}", p.display());
            }
            tracing::info!(files = written.len(), "sidecars written");
            Ok(())
        }
        None => serve(cli.serve),
    }
}

#[tokio::main]
async fn serve(a: ServeArgs) -> Result<()> {
    let config = Config {
        media_dir: a.media_dir,
        live: a.live,
        synthetic: a.synthetic,
        allow_origins: a.allow_origin,
        window: a.window,
        cache_bytes: a.cache_mb.saturating_mul(1024 * 1024),
        header_timeout: std::time::Duration::from_millis(a.header_timeout_ms),
        idle_timeout: std::time::Duration::from_millis(a.idle_timeout_ms),
        trusted_proxies: a.trusted_proxies,
        admin_token: a.admin_token,
        ..Config::default()
    };
    let state = AppState::new(config).context("invalid configuration")?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    let stop = http_guard::shutdown_signal();
    // One plain stdout line that scripts (cargo xtask bench origin) wait for and parse.
    println!("origin listening on http://{addr}");
    tracing::info!(%addr, live = ?state.live_names(), synthetic = ?state.synthetic_names(), "origin started");
    origin::serve(listener, state, async {
        stop.await;
        tracing::info!("shutdown signal received, finishing in-flight requests");
    })
    .await
    .context("serving")?;
    tracing::info!("origin stopped");
    Ok(())
}
