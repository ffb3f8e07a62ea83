//! One native peer (webrtc crate) and one headless Chromium page (the browser peer, demo site)
//! in the same swarm of a live stream: each receives verified segment bytes from the other.
//!
//! Uses the `tests` crate's harness (origin with `media/sample` live, signaling server, demo site
//! and `dist/` bundle). Skipped with a message when `/usr/bin/chromium` is missing and `CI` is
//! unset (like the browser tests).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peer_native::{PeerOptions, run_peer};
use tests::harness::{self, root};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium_available() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{CHROMIUM} is missing and CI is set"
    );
    eprintln!("SKIPPED: {CHROMIUM} not found");
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

struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn launch(url: &str) -> Browser {
    let profile =
        std::env::temp_dir().join(format!("p2p-cdn-native-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).expect("profile dir");
    let log = std::env::temp_dir().join("p2p-cdn-native-interop-page.log");
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--mute-audio",
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("starting chromium");
    Browser { child, profile }
}

/// KNOWN FAILING (ignored): both peers join the same swarm and play, but no bytes flow between
/// them yet (native: 0 B from the browser, 0 B uploaded; page: 0 P2P bytes). Run with
/// `-- --ignored` while debugging the native <-> Chromium handshake.
#[test]
#[ignore = "native <-> Chromium exchange not working yet: see the comment"]
fn native_and_chromium_peers_exchange_verified_segments() {
    if !chromium_available() {
        return;
    }
    ensure_bundle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let env = harness::start(0).await.expect("harness");
        let browser = launch(&env.page_url("&report=1&id=chromium&p2p=1&tamper=0"));
        // Let the page join first, so the native peer connects to it.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if env.reports.lock().map(|r| r.contains_key("chromium")).unwrap_or(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut opts = PeerOptions::new(
            format!("ws://{}/ws", env.signal),
            format!("http://{}/live/sample/index.m3u8", env.origin),
        );
        opts.rtc.udp_addrs = vec!["127.0.0.1:0".into(), "0.0.0.0:0".into()];
        let (stop, rx) = tokio::sync::watch::channel(false);
        let native = tokio::spawn(run_peer(opts, reqwest_client(), rx));
        tokio::time::sleep(Duration::from_secs(40)).await;
        let _ = stop.send(true);
        let n = native.await.expect("native peer");
        let page = env.reports.lock().map(|r| r.get("chromium").cloned()).ok().flatten().expect("page report");
        drop(browser);
        let browser_id = page["stats"]["peerId"].as_u64().expect("browser peer id");
        let from_browser = n.stats.bytes_from_peer.get(&browser_id).copied().unwrap_or(0);
        let browser_p2p = page["stats"]["deliveredP2pBytes"].as_f64().unwrap_or(0.0);
        eprintln!(
            "native {:?}: from browser {from_browser} B, uploaded {} B, delivered {} http + {} p2p, stalls {}; \
             browser {browser_id}: delivered p2p {browser_p2p} B, integrity failures {}",
            n.id,
            n.stats.uploaded_bytes,
            n.stats.delivered_http_bytes,
            n.stats.delivered_p2p_bytes,
            n.stalls,
            page["stats"]["integrityFailures"]
        );
        assert!(n.error.is_none(), "native: {:?}", n.error);
        assert!(from_browser > 0, "the native peer received verified bytes from Chromium");
        assert!(n.stats.uploaded_bytes > 0, "the native peer served Chromium");
        assert!(browser_p2p > 0.0, "Chromium played bytes from the native peer");
        assert_eq!(n.corrupt_segments, 0);
        assert_eq!(n.stats.integrity_failures, 0);
        assert_eq!(page["stats"]["integrityFailures"].as_f64().unwrap_or(0.0), 0.0);
    });
}

fn reqwest_client() -> reqwest::Client {
    reqwest::Client::new()
}
