//! Native peers (webrtc crate) and one headless Chromium page (the browser peer, demo site) in
//! the same swarm of a live stream: each side receives verified segment bytes from the other.
//!
//! Native A joins before the page and native B after it, so that both WebRTC roles are used
//! across the native/browser boundary (the newcomer usually makes the offer). Both drivers open
//! the one data channel as negotiated (id 0); see `peer_native::rtc`.
//!
//! Uses test-support's harness (origin with `media/sample` live, signaling server, demo site
//! and `dist/` bundle). Skipped with a message when `/usr/bin/chromium` is missing and `CI` is
//! unset (like the browser tests). Chromium's log: `<tmp>/p2p-cdn-native-interop-page.log`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use peer_native::{PeerOptions, PeerReport, run_peer};
use serde_json::Value;
use test_support::browser::{Chromium, ChromiumOptions, DEFAULT_CHROMIUM, PageReport};
use test_support::harness::{self, Env, root};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn chromium_available() -> bool {
    if Path::new(DEFAULT_CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{DEFAULT_CHROMIUM} is missing and CI is set"
    );
    eprintln!("SKIPPED: {DEFAULT_CHROMIUM} not found");
    false
}

/// Builds the wasm bundle when `dist/` lacks it.
fn ensure_bundle() {
    let dist = root().join("dist");
    if dist.join("p2p-cdn.js").exists() && dist.join("p2p-cdn_bg.wasm").exists() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["run", "-p", "xtask", "--", "wasm"])
        .status()
        .expect("running cargo xtask wasm");
    assert!(status.success(), "cargo xtask wasm failed");
}

fn native(env: &Env) -> (watch::Sender<bool>, JoinHandle<PeerReport>) {
    let mut opts = PeerOptions::new(
        format!("ws://{}/ws", env.signal),
        format!("http://{}/live/sample/index.m3u8", env.origin),
    );
    // Loopback and the machine's other interfaces, like Chromium's host candidates.
    opts.rtc.udp_addrs = vec!["127.0.0.1:0".into(), "0.0.0.0:0".into()];
    let (stop, rx) = watch::channel(false);
    (
        stop,
        tokio::spawn(run_peer(opts, reqwest::Client::new(), rx)),
    )
}

async fn finish(peer: (watch::Sender<bool>, JoinHandle<PeerReport>)) -> PeerReport {
    let _ = peer.0.send(true);
    peer.1.await.expect("native peer task")
}

fn page(env: &Env) -> Option<Value> {
    env.reports
        .lock()
        .ok()
        .and_then(|r| r.get("chromium").cloned())
}

/// The page saw its channel to `peer` open (the Hello exchange completed).
fn page_connected_to(page: &Value, peer: Option<u64>) -> bool {
    page["peerEvents"].as_array().is_some_and(|evs| {
        evs.iter()
            .any(|e| e["peer"].as_u64() == peer && e["state"] == "connected")
    })
}

#[test]
fn native_and_chromium_peers_exchange_verified_segments() {
    if !chromium_available() {
        return;
    }
    let _serial = crate::serial();
    ensure_bundle();
    // `RUST_LOG=warn` shows the webrtc stack's warnings (e.g. dropped early messages).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Known flake (stop 20): in some runs a channel between the page and a native peer is
    // aborted about 10 s in (Chromium logs an SCTP "User-Initiated Abort" from the native side)
    // and the page then serves nobody. One retry, said out loud; a second failure fails.
    for attempt in 1..=2 {
        match rt.block_on(exchange()) {
            Ok(()) => return,
            Err(e) if attempt == 1 => eprintln!("attempt 1 failed: {e}; trying once more"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// One run: the integrity and ban checks assert; the direction that depends on the flake
/// (bytes from Chromium to the native peers) returns an error.
async fn exchange() -> Result<(), String> {
    {
        let t0 = Instant::now();
        let env = harness::start(0).await.expect("harness");
        let a = native(&env);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let browser = Chromium::launch(
            &ChromiumOptions {
                deadline: Duration::from_secs(180),
                log: Some(std::env::temp_dir().join("p2p-cdn-native-interop-page.log")),
                ..Default::default()
            },
            &env.page_url("&report=1&id=chromium&p2p=1&tamper=0"),
        )
        .expect("starting chromium");
        let joined = Instant::now();
        while joined.elapsed() < Duration::from_secs(20) && page(&env).is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let b = native(&env);
        // Several segments (2 s each) after everybody joined: enough for both directions.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let v = page(&env).expect("page report");
        drop(browser);
        let (a, b) = (finish(a).await, finish(b).await);
        let p = PageReport::parse("chromium", &v);
        let browser_id = p.peer_id.expect("browser peer id");
        let from_browser = |n: &PeerReport| {
            n.stats
                .bytes_from_peer
                .get(&browser_id)
                .copied()
                .unwrap_or(0)
        };
        for (name, n) in [("A (before the page)", &a), ("B (after the page)", &b)] {
            eprintln!(
                "native {name} {:?}: from browser {} B, uploaded {} B, delivered {} http + {} p2p, \
                 stalls {}, page connected: {}; origin requests {} designated, {} backup, {} late, \
                 {} alone",
                n.id,
                from_browser(n),
                n.stats.uploaded_bytes,
                n.stats.delivered_http_bytes,
                n.stats.delivered_p2p_bytes,
                n.stalls,
                page_connected_to(&v, n.id),
                n.stats.http_designated,
                n.stats.http_backup,
                n.stats.http_late,
                n.stats.http_alone
            );
        }
        eprintln!(
            "browser {browser_id}: delivered {} http + {} p2p B, uploaded {} B, integrity \
             failures {}, errors {:?}; {:.0} s in all",
            p.delivered_http,
            p.delivered_p2p,
            p.uploaded,
            p.integrity_failures,
            p.errors,
            t0.elapsed().as_secs_f64()
        );
        for n in [&a, &b] {
            assert!(n.error.is_none(), "native: {:?}", n.error);
            assert!(
                page_connected_to(&v, n.id),
                "the page never opened a channel with native {:?}",
                n.id
            );
            assert_eq!(n.corrupt_segments, 0);
            assert_eq!(n.stats.integrity_failures, 0);
            assert!(n.banned.is_empty(), "native banned {:?}", n.banned);
        }
        if from_browser(&a) + from_browser(&b) == 0 || p.uploaded == 0 {
            return Err("the native peers received no verified bytes from Chromium".into());
        }
        // Its only peers are the native ones.
        assert!(
            p.delivered_p2p > 0,
            "Chromium played bytes from native peers"
        );
        assert!(
            a.stats.uploaded_bytes + b.stats.uploaded_bytes > 0,
            "the native peers served"
        );
        assert_eq!(p.integrity_failures, 0, "integrity failures in Chromium");
        assert!(p.banned.is_empty(), "Chromium banned {:?}", p.banned);
    }
    Ok(())
}
