//! `cargo xtask demo`: origin (live `media/sample`), signaling server and the demo page on
//! localhost; prints the page URL and runs until Ctrl-C.

use anyhow::Result;

#[tokio::main]
async fn main() -> Result<()> {
    let port = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let env = test_support::harness::start(port).await?;
    println!("origin      http://{}/live/sample/index.m3u8", env.origin);
    println!(
        "signaling   ws://{}/ws  (dashboard http://{}/)",
        env.signal, env.signal
    );
    println!("demo page   {}", env.page_url(""));
    println!("Open the page in two tabs: the second one gets its segments from the first.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
