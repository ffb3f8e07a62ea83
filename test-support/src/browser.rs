//! Headless Chromium viewers: the demo page (hls.js + the wasm browser peer, `demo-site/` and
//! the `dist/` bundle) in the same swarm as native viewers. Shared by `p2pcdn-load --browsers`,
//! this crate's `harness` (the browser tests, `cargo xtask demo`) and the native <-> Chromium
//! interop test.
//!
//! * [`page_router`]: serves the page's files from a list of folders and collects what each
//!   page reports: with `report=1` the demo page POSTs its counters to `/report?id=<id>` every
//!   second (to `reportTo=<url>` instead when given, for a page served elsewhere).
//! * [`Chromium`]: one headless browser showing one page. One browser per page: in one headless
//!   browser only the foreground tab keeps running. It is ended when dropped, and by `timeout`
//!   at a deadline should this process die without dropping it.
//! * [`PageReport`]: one page's counters, parsed from its latest report.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;

/// Debian's Chromium.
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Latest report body of each page, by page id.
pub type Reports = Arc<Mutex<HashMap<String, Value>>>;

/// Most pages whose reports are kept (a load test runs a few dozen browsers at most; the cap
/// keeps a stray client from growing the map).
pub const MAX_REPORTS: usize = 1024;
/// Counters above this (2^53, exact in a JS number) are clamped, so sums cannot overflow.
const MAX_COUNTER: f64 = 9_007_199_254_740_992.0;
/// Largest report accepted. A report is a few KiB plus ~80 bytes per segment played.
const MAX_REPORT_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("chromium not found at {0}")]
    Missing(PathBuf),
    #[error("{what}: {err}")]
    Io {
        what: String,
        #[source]
        err: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrowserError {
    let what = what.into();
    move |err| BrowserError::Io { what, err }
}

#[derive(Clone)]
struct Pages {
    dirs: Arc<[PathBuf]>,
    reports: Reports,
}

/// `POST /report?id=<id>` (the page's counters) plus the files of `dirs` (first match wins;
/// `/` is `index.html`). Cross-origin reports are accepted, so that a page served by another
/// host can report here.
pub fn page_router(dirs: Vec<PathBuf>, reports: Reports) -> Router {
    Router::new()
        .route("/report", post(report))
        .fallback(static_file)
        .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES))
        .with_state(Pages {
            dirs: dirs.into(),
            reports,
        })
}

async fn report(
    State(p): State<Pages>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let cors = [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];
    let Some(id) = q.get("id").filter(|id| !id.is_empty() && id.len() <= 64) else {
        return (StatusCode::BAD_REQUEST, cors).into_response();
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, cors).into_response();
    };
    if let Ok(mut r) = p.reports.lock()
        && (r.len() < MAX_REPORTS || r.contains_key(id))
    {
        r.insert(id.clone(), v);
    }
    (StatusCode::NO_CONTENT, cors).into_response()
}

async fn static_file(State(p): State<Pages>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    // Plain relative names only: nothing outside the folders is served.
    if path
        .split('/')
        .any(|c| c == ".." || c == "." || c.is_empty() || c.contains('\\'))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    for dir in p.dirs.iter() {
        let file = dir.join(path);
        if let Ok(data) = tokio::fs::read(&file).await {
            let ct = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("wasm") => "application/wasm",
                Some("css") => "text/css",
                Some("json") => "application/json",
                _ => "application/octet-stream",
            };
            return (
                [
                    (header::CONTENT_TYPE, ct),
                    // A rebuilt bundle must be picked up by the next page.
                    (header::CACHE_CONTROL, "no-store"),
                ],
                data,
            )
                .into_response();
        }
    }
    StatusCode::NOT_FOUND.into_response()
}

/// [`page_router`] listening on `addr`, served by a background task until the runtime ends.
pub async fn serve_pages(
    addr: SocketAddr,
    dirs: Vec<PathBuf>,
    reports: Reports,
) -> Result<SocketAddr, BrowserError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(io(format!("binding {addr}")))?;
    let local = l.local_addr().map_err(io("local address"))?;
    let app = page_router(dirs, reports);
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(local)
}

/// Percent-encodes everything but unreserved characters (a query parameter value).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The demo page at `base` (e.g. `http://127.0.0.1:8000/index.html`) playing `playlist` with the
/// signaling server `signal`, reporting as `id` (to `report_to` when given, else to its own
/// `/report`), P2P on or off.
pub fn demo_page_url(
    base: &str,
    playlist: &str,
    signal: &str,
    id: &str,
    p2p: bool,
    report_to: Option<&str>,
) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut u = format!(
        "{base}{sep}src={}&signal={}&report=1&id={}&p2p={}",
        enc(playlist),
        enc(signal),
        enc(id),
        u8::from(p2p)
    );
    if let Some(r) = report_to {
        u.push_str(&format!("&reportTo={}", enc(r)));
    }
    u
}

#[derive(Clone, Debug)]
pub struct ChromiumOptions {
    pub binary: PathBuf,
    /// Chromium is stopped by `timeout` after this long even if this process died first.
    pub deadline: Duration,
    /// The browser's log (page console included); `None`: discarded.
    pub log: Option<PathBuf>,
    /// Flags added to [`CHROMIUM_FLAGS`] (e.g. a certificate to trust).
    pub extra_args: Vec<String>,
    /// Network namespace to run the browser in (`ip netns exec <name>`, which needs root):
    /// `cargo xtask bench lab` gives each page its own shaped link. `None`: this host's network.
    pub netns: Option<String>,
}

impl Default for ChromiumOptions {
    fn default() -> Self {
        ChromiumOptions {
            binary: PathBuf::from(DEFAULT_CHROMIUM),
            deadline: Duration::from_secs(600),
            log: None,
            extra_args: Vec::new(),
            netns: None,
        }
    }
}

/// The flags every browser runs with. Without the background-networking ones Chromium keeps
/// trying to reach Google's hosts; loopback candidates and plain host IPs (no mDNS names) let
/// it connect to native peers and to other browsers on this machine.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    // A headless page counts as hidden: keep its timers and rendering at full speed.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--mute-audio",
];

/// One headless Chromium showing one page, with a fresh profile; ended (and its profile
/// removed) on drop.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
    terminated: bool,
}

impl Chromium {
    pub fn launch(opts: &ChromiumOptions, url: &str) -> Result<Chromium, BrowserError> {
        static N: AtomicU32 = AtomicU32::new(0);
        if !opts.binary.exists() {
            return Err(BrowserError::Missing(opts.binary.clone()));
        }
        let n = N.fetch_add(1, Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("p2pcdn-chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).map_err(io(format!("creating {}", profile.display())))?;
        let stderr = match &opts.log {
            Some(p) => Stdio::from(
                std::fs::File::create(p).map_err(io(format!("creating {}", p.display())))?,
            ),
            None => Stdio::null(),
        };
        // Under `timeout` (its own process group, so a terminal's Ctrl-C reaches only us, and
        // we end the browser): a process killed before `Drop` runs leaves no browser behind
        // past the deadline. `-k 10`: SIGKILL when SIGTERM was not enough. In a namespace,
        // `ip netns exec` enters it and execs `timeout` in its own place (no fork), so the
        // child's pid is still `timeout`'s and `terminate` reaches it.
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str(), "timeout"]);
                c
            }
            None => Command::new("timeout"),
        };
        cmd.args(["-k", "10"])
            .arg(format!("{}s", opts.deadline.as_secs().max(1)))
            .arg(&opts.binary)
            .args(CHROMIUM_FLAGS)
            .args(&opts.extra_args);
        if opts.log.is_some() {
            cmd.args(["--enable-logging=stderr", "--v=0"]);
        }
        let child = cmd
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(io("starting chromium (under timeout)"))?;
        Ok(Chromium {
            child,
            profile,
            terminated: false,
        })
    }

    /// Asks the browser to exit (SIGTERM to `timeout`, which passes it on; a SIGKILL would
    /// orphan Chromium). Does not wait: end many browsers at once, then drop them.
    pub fn terminate(&mut self) {
        if std::mem::replace(&mut self.terminated, true) {
            return;
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Process id of the `timeout` wrapper, the root of the browser's process tree (see
    /// [`crate::cpu::tree_cpu`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The browser's profile folder (where `--remote-debugging-port=0` makes it write
    /// `DevToolsActivePort`).
    pub fn profile_dir(&self) -> &Path {
        &self.profile
    }

    /// The browser is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.terminate();
        // Bounded: `timeout -k 10` SIGKILLs Chromium 10 s after passing SIGTERM on.
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A page's counters from its latest report (demo-site/app.js; the core's under `stats`).
#[derive(Debug, Clone, Default)]
pub struct PageReport {
    pub id: String,
    pub peer_id: Option<u64>,
    /// P2P was on.
    pub p2p: bool,
    pub started: bool,
    /// Milliseconds from navigation to the first `playing` event.
    pub startup_ms: Option<f64>,
    pub current_time: f64,
    /// Seconds behind the live edge, as hls.js estimates it (`hls.latency`; 0 for VOD).
    pub latency: f64,
    /// `waiting` events after playback started.
    pub stalls: u64,
    /// Bytes handed to the player: over HTTP (the core's, or hls.js's own loader with P2P off)
    /// and from peers.
    pub delivered_http: u64,
    pub delivered_p2p: u64,
    /// Bytes received: from the origin by the core, from peers (verified or not).
    pub http_bytes: u64,
    pub p2p_bytes: u64,
    pub uploaded: u64,
    pub integrity_failures: u64,
    pub banned: Vec<u64>,
    /// Fragments hls.js loaded itself because P2P could not deliver them.
    pub fallbacks: u64,
    /// Verified bytes received a second time, from the origin / from peers.
    pub dup_http_bytes: u64,
    pub dup_p2p_bytes: u64,
    /// The page's uplink as its core measures it, bits/s (0: not measured yet).
    pub uplink_bps: u64,
    /// Requests the page answered `Busy` (its uplink would not get them out in time).
    pub serve_busy: u64,
    /// Origin requests by cause: designated seeder, backup seeder, deadline, no peers, origin
    /// share (peer-core's `HttpCause`).
    pub http_causes: [u64; 5],
    pub peer_timeouts: u64,
    /// Chunks from peers by request → arrival time (peer-core's `Stats::chunk_ms`).
    pub chunk_ms: [u64; 6],
    pub fatal: Vec<String>,
    pub errors: Vec<String>,
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_f64().filter(|x| x.is_finite()).unwrap_or(0.0)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .take(64)
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl PageReport {
    /// Parses a report; missing or malformed fields read as zero / empty (it is untrusted
    /// input from a page).
    pub fn parse(id: &str, v: &Value) -> PageReport {
        let p2p = v["p2p"].as_bool().unwrap_or(true);
        let b = |path: &[&str]| num(v, path).clamp(0.0, MAX_COUNTER) as u64;
        PageReport {
            id: id.to_string(),
            peer_id: v["stats"]["peerId"].as_u64(),
            p2p,
            started: v["started"].as_bool().unwrap_or(false),
            startup_ms: v["startupMs"]
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0),
            current_time: num(v, &["currentTime"]),
            latency: num(v, &["latency"]).clamp(0.0, 86_400.0),
            stalls: b(&["waiting"]),
            // With P2P off the core is idle and hls.js loads everything itself.
            delivered_http: if p2p {
                b(&["stats", "deliveredHttpBytes"])
            } else {
                b(&["httpLoaderBytes"])
            },
            delivered_p2p: if p2p {
                b(&["stats", "deliveredP2pBytes"])
            } else {
                0
            },
            http_bytes: if p2p {
                b(&["stats", "httpBytes"])
            } else {
                b(&["httpLoaderBytes"])
            },
            p2p_bytes: b(&["stats", "p2pBytes"]),
            uploaded: b(&["stats", "uploadedBytes"]),
            integrity_failures: b(&["stats", "integrityFailures"]),
            banned: v["stats"]["banned"]
                .as_array()
                .map(|a| a.iter().take(256).filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
            fallbacks: b(&["fallbacks"]),
            dup_http_bytes: b(&["stats", "dupHttpBytes"]),
            dup_p2p_bytes: b(&["stats", "dupP2pBytes"]),
            uplink_bps: b(&["stats", "uplinkBps"]),
            serve_busy: b(&["stats", "serveBusy"]),
            http_causes: [
                b(&["stats", "httpDesignated"]),
                b(&["stats", "httpBackup"]),
                b(&["stats", "httpLate"]),
                b(&["stats", "httpAlone"]),
                b(&["stats", "httpShare"]),
            ],
            peer_timeouts: b(&["stats", "peerRequestTimeouts"]),
            chunk_ms: {
                let a = v["stats"]["chunkMs"].as_array();
                std::array::from_fn(|i| {
                    a.and_then(|a| a.get(i))
                        .and_then(Value::as_f64)
                        .map_or(0, |x| x.clamp(0.0, MAX_COUNTER) as u64)
                })
            },
            fatal: strings(&v["fatal"]),
            errors: strings(&v["errors"]),
        }
    }
}

/// The demo site and bundle folders of this source tree (`demo-site/`, `dist/`), for a tool
/// run from the workspace.
pub fn default_site_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    vec![root.join("demo-site"), root.join("dist")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_url_encodes_parameters() {
        let u = demo_page_url(
            "http://h/index.html",
            "http://o/a b.m3u8",
            "ws://s/ws",
            "b1",
            true,
            Some("http://c/report"),
        );
        assert_eq!(
            u,
            "http://h/index.html?src=http%3A%2F%2Fo%2Fa%20b.m3u8&signal=ws%3A%2F%2Fs%2Fws&report=1&id=b1&p2p=1&reportTo=http%3A%2F%2Fc%2Freport"
        );
        assert!(
            demo_page_url("http://h/?x=1", "p", "s", "i", false, None)
                .starts_with("http://h/?x=1&src=p")
        );
    }

    #[test]
    fn malformed_reports_read_as_zero() {
        let v: Value = serde_json::json!({
            "p2p": true, "started": "yes", "waiting": -3, "startupMs": "x",
            "stats": {"deliveredP2pBytes": 1e300, "peerId": "7", "banned": [1, "2", 3]},
            "fatal": [1, "a"], "errors": "no"
        });
        let r = PageReport::parse("p", &v);
        assert!(!r.started);
        assert_eq!(r.stalls, 0);
        assert_eq!(r.startup_ms, None);
        assert_eq!(r.peer_id, None);
        assert_eq!(r.banned, vec![1, 3]);
        assert_eq!(r.fatal, vec!["a".to_string()]);
        assert!(r.errors.is_empty());
        assert_eq!(r.delivered_p2p, 1 << 53);
        let r = PageReport::parse("q", &Value::Null);
        assert!(r.p2p && r.delivered_http == 0 && r.peer_id.is_none());
    }
}
