//! `signaling-server`: the thin binary around the library (flags, logs, signals).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use signaling_server::{AppState, Config, serve, token};

/// mimalloc rather than glibc's malloc: the relay path's small allocations cross worker threads
/// (allocated where a frame is read, freed where it is written). Measured with `cargo xtask
/// bench signaling`: −10 % CPU per message (docs/ARCHITECTURE.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "signaling-server", about = "P2P CDN signaling server", version)]
struct Cli {
    /// Address to listen on (`:0` picks a free port; the bound address is printed on stdout).
    #[arg(long, env = "SIGNAL_LISTEN", default_value = "0.0.0.0:8090")]
    listen: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long, env = "SIGNAL_WORKERS")]
    workers: Option<usize>,
    /// Log lines as text, or as one JSON object per line for a log pipeline.
    #[arg(long, env = "SIGNAL_LOG_FORMAT", value_enum, default_value_t)]
    log_format: http_guard::LogFormat,
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints a join token for swarms matching PATTERN (`*` suffix = prefix match), signed with
    /// `--token-secret` / `SIGNAL_TOKEN_SECRET`.
    SignToken {
        #[arg(long)]
        swarm: String,
        /// Validity from now, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::SignToken { swarm, ttl_s }) = &cli.cmd {
        let secret = cli
            .config
            .token_secret
            .as_deref()
            .context("--token-secret is required")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        println!("{}", token::sign(secret.as_bytes(), swarm, now + ttl_s));
        return Ok(());
    }
    // Logs on stderr: stdout carries only the machine-readable "listening on" line.
    http_guard::logging::init(cli.log_format);
    cli.config.validate()?;
    // Every connection is a file descriptor: lift the soft limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(fd_limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!("cannot raise the file descriptor limit: {e}"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.workers {
        rt.worker_threads(n.max(1));
    }
    rt.build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot bind {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let stop = http_guard::shutdown_signal();
    // Machine-readable for scripts (xtask bench) that start us on port 0.
    println!("listening on {addr}");
    tracing::info!(%addr, "signaling server listening");
    let state = AppState::new(cli.config);
    serve(listener, state, stop).await?;
    tracing::info!("stopped");
    Ok(())
}
