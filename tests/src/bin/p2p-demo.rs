//! `cargo xtask demo`: origin (live `media/sample`), signaling server and the demo page on
//! localhost; prints the page URL and runs until Ctrl-C. With `--src URL` the page plays that
//! HLS stream instead (any origin or CDN that allows the page's origin by CORS), and the
//! signaling server runs its integrity service for that stream's origin, so the stream needs no
//! sidecar manifest.

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Port of the demo page (origin and signaling get free ports).
    #[arg(default_value_t = 8080)]
    port: u16,
    /// Any HLS playlist URL to play with P2P instead of the bundled live sample.
    #[arg(long)]
    src: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let integrity = match &args.src {
        // The integrity service follows playlists of the stream's origin only.
        Some(src) => vec![origin_of(src).context("--src must be an http(s) URL")?],
        None => Vec::new(),
    };
    let env = test_support::harness::start_with(
        args.port,
        signaling_server::config::Config {
            integrity_origins: integrity,
            ..Default::default()
        },
    )
    .await?;
    let signal = format!("ws://{}/ws", env.signal);
    let page = match &args.src {
        Some(src) => {
            println!("origin      {src}  (not ours: integrity from the signaling server)");
            let svc = format!("http://{}/integrity", env.signal);
            env.page_url_with(
                src,
                &signal,
                &format!("&integrity={}", test_support::harness::enc(&svc)),
            )
        }
        None => {
            println!("origin      http://{}/live/sample/index.m3u8", env.origin);
            env.page_url("")
        }
    };
    println!("signaling   {signal}  (dashboard http://{}/)", env.signal);
    println!("demo page   {page}");
    println!("Open the page in two tabs: the second one gets its segments from the first.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// `scheme://host[:port]/` of an http(s) URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest
        .split(['/', '?', '#'])
        .next()
        .filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}/"))
}
