//! Many native viewers in one process against any deployment (signaling URL + playlist URL):
//! ramp-up, churn, tampered peers, HTTP-only baseline; optionally headless Chromium viewers
//! (the demo page with the browser peer) in the same swarm; one aggregated report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use peer_core::Config;
use reqwest::Url;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::browser::{self, Chromium, ChromiumOptions, PageReport, Reports};
use crate::peer::{PeerOptions, PeerReport, run_peer};
use crate::player::PlayerConfig;
use crate::rtc::RtcOptions;
use crate::tls::Roots;
use crate::token::TokenSource;

#[derive(Clone)]
pub struct SwarmOptions {
    pub signal_url: String,
    /// Other nodes of a signaling cluster (`PeerOptions::more_signal_urls`).
    pub more_signal_urls: Vec<String>,
    pub playlist_url: String,
    pub viewers: usize,
    pub seconds: f64,
    /// Viewers join evenly over this many seconds.
    pub ramp: f64,
    /// Percent of viewers leaving (replaced by a newcomer 1 s later) per minute.
    pub churn_pct_per_min: f64,
    /// Fraction of viewers that corrupt every chunk they upload.
    pub bad_peers: f64,
    pub http_only: bool,
    pub udp_addrs: Vec<String>,
    pub core: Config,
    pub player: PlayerConfig,
    /// Every random choice of the run derives from it (see [`Schedule`]).
    pub seed: u64,
    /// Extra trusted roots for `wss://` signaling and `https://` origins.
    pub roots: Roots,
    /// Join tokens of the native viewers and of the browser pages (`token=`).
    pub token: TokenSource,
    /// Relay-only ICE (TURN from the welcome), native viewers and pages (`relay=1`).
    pub relay: bool,
    /// Headless Chromium viewers, joining evenly over the ramp like the native ones.
    pub browsers: usize,
    pub browser: BrowserSetup,
    /// Record the first viewer to join (join number 0; not a churned newcomer) to this file,
    /// as JSON lines (see [`crate::record`]).
    pub record: Option<PathBuf>,
    /// Bearer token for the origin's admin `/stats` (its `--admin-token`): without it only an
    /// origin on loopback answers, and the origin's bytes are summed by the viewers instead.
    pub origin_admin_token: Option<String>,
}

/// Where the browsers' page comes from and how they run.
#[derive(Clone, Debug)]
pub struct BrowserSetup {
    pub chromium: PathBuf,
    /// A deployed copy of the demo page (`demo-site/` + the `dist/` bundle), e.g.
    /// `https://cdn.example/demo/index.html`; the page is told to report to our collector
    /// (`reportTo`). `None`: we serve `site_dirs` ourselves.
    pub page_url: Option<String>,
    /// Folders served as the page (first match wins): the demo site and the bundle.
    pub site_dirs: Vec<PathBuf>,
    /// Address of our page server and report collector.
    pub listen: SocketAddr,
    /// Folder for one Chromium log per page (`<id>.log`); `None`: logs discarded.
    pub log_dir: Option<PathBuf>,
    /// Page `b<k>` runs in the network namespace `<prefix><k>` (made beforehand, e.g. by
    /// `cargo xtask bench lab`); `None`: on this host's network.
    pub netns_prefix: Option<String>,
    /// Flags added to every browser's command line.
    pub chromium_args: Vec<String>,
}

impl Default for BrowserSetup {
    fn default() -> Self {
        BrowserSetup {
            chromium: PathBuf::from(browser::DEFAULT_CHROMIUM),
            page_url: None,
            site_dirs: browser::default_site_dirs(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_dir: None,
            netns_prefix: None,
            chromium_args: Vec::new(),
        }
    }
}

impl SwarmOptions {
    pub fn new(
        signal_url: impl Into<String>,
        playlist_url: impl Into<String>,
        viewers: usize,
        seconds: f64,
    ) -> Self {
        SwarmOptions {
            signal_url: signal_url.into(),
            more_signal_urls: Vec::new(),
            playlist_url: playlist_url.into(),
            viewers,
            seconds,
            ramp: 5.0,
            churn_pct_per_min: 0.0,
            bad_peers: 0.0,
            http_only: false,
            udp_addrs: vec!["127.0.0.1:0".into()],
            core: Config::default(),
            player: PlayerConfig::default(),
            seed: 1,
            roots: Roots::default(),
            token: TokenSource::None,
            relay: false,
            browsers: 0,
            browser: BrowserSetup::default(),
            record: None,
            origin_admin_token: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SwarmReport {
    pub viewers: usize,
    pub browsers: usize,
    pub seconds: f64,
    /// P2P bytes ÷ all bytes delivered to players.
    pub offload: f64,
    /// 1 − 1/N.
    pub limit: f64,
    pub stalls: u64,
    /// Seconds the native viewers' players spent stalled (the pages report stall counts only).
    pub stall_secs: f64,
    pub startup_ms_p50: f64,
    pub startup_ms_p95: f64,
    /// The run's seed ([`SwarmOptions::seed`]).
    pub seed: u64,
    /// Chunks from peers that failed verification (native viewers and pages).
    pub integrity_failures: u64,
    /// Viewers whose join the signaling server refused as `unauthorized` (token).
    pub unauthorized_viewers: usize,
    /// Origin bytes (from the origin's `/stats` when available, else summed by the viewers).
    pub origin_bytes: u64,
    /// `"origin"` or `"client"`.
    pub origin_bytes_source: &'static str,
    pub p2p_bytes: u64,
    /// Bytes the viewers' cores received from the origin (segments; playlists and manifests
    /// not included). With P2P off, the pages' hls.js loads.
    pub http_bytes: u64,
    /// Chunk bytes the viewers sent to peers.
    pub uploaded_bytes: u64,
    /// Verified bytes received a second time, from the origin / from peers.
    pub dup_http_bytes: u64,
    pub dup_p2p_bytes: u64,
    pub delivered_http: u64,
    pub delivered_p2p: u64,
    pub corrupt_to_player: u64,
    /// Wants the viewers' cores refused (`WantFailed`).
    pub want_failures: u64,
    /// Segments the viewers' players jumped over after falling behind the live window.
    pub skipped: u64,
    pub bad: usize,
    /// Tampered viewers banned by at least one honest viewer.
    pub banned_bad: usize,
    /// Honest viewers banned by anybody.
    pub banned_honest: usize,
    pub joins: usize,
    /// Origin segment requests by cause: designated seeder, backup seeder, deadline, no peers.
    pub http_causes: [u64; 5],
    pub peer_timeouts: u64,
    /// Chunks from peers by request → arrival time (peer-core's `Stats::chunk_ms`), native
    /// viewers and pages.
    pub chunk_ms: [u64; 6],
    pub errors: Vec<String>,
    /// Process CPU seconds and peak RSS while the swarm ran (this process hosts only viewers).
    pub cpu_secs: f64,
    pub rss_peak_bytes: u64,
    /// The run was cut short (Ctrl-C): `seconds` is how long it ran.
    pub interrupted: bool,
    pub peers: Vec<PeerReport>,
    /// The browsers' latest reports (a browser that never reported is missing).
    pub pages: Vec<PageReport>,
}

/// Browser figures (already included in the totals of [`SwarmReport`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrowserTotals {
    pub count: usize,
    pub reported: usize,
    pub started: usize,
    pub delivered_http: u64,
    pub delivered_p2p: u64,
    pub http_bytes: u64,
    pub p2p_bytes: u64,
    pub uploaded: u64,
    pub stalls: u64,
    pub startup_ms_p50: f64,
    pub integrity_failures: u64,
    pub fallbacks: u64,
    pub dup_http_bytes: u64,
    pub dup_p2p_bytes: u64,
}

impl SwarmReport {
    pub fn browser_totals(&self) -> BrowserTotals {
        let mut t = BrowserTotals {
            count: self.browsers,
            reported: self.pages.len(),
            ..Default::default()
        };
        let mut startups = Vec::new();
        for p in &self.pages {
            t.started += usize::from(p.started);
            t.delivered_http += p.delivered_http;
            t.delivered_p2p += p.delivered_p2p;
            t.http_bytes += p.http_bytes;
            t.p2p_bytes += p.p2p_bytes;
            t.uploaded += p.uploaded;
            t.stalls += p.stalls;
            t.integrity_failures += p.integrity_failures;
            t.fallbacks += p.fallbacks;
            t.dup_http_bytes += p.dup_http_bytes;
            t.dup_p2p_bytes += p.dup_p2p_bytes;
            startups.extend(p.startup_ms);
        }
        t.startup_ms_p50 = median(&mut startups);
        t
    }

    /// The final JSON line.
    pub fn to_json(&self) -> String {
        self.summary().to_string()
    }

    /// Bytes the viewers received (from the origin, and verified from peers) and never handed
    /// to a player: received twice, or still ahead of the player when the run ended. The
    /// simulator's `received_unplayed`.
    pub fn received_unplayed(&self) -> u64 {
        (self.http_bytes + self.p2p_bytes).saturating_sub(self.delivered_http + self.delivered_p2p)
    }

    /// Bytes uploaded that no viewer kept (cancelled, lost in flight, or failed verification).
    /// The simulator's `uploaded_unreceived`.
    pub fn uploaded_unreceived(&self) -> u64 {
        self.uploaded_bytes.saturating_sub(self.p2p_bytes)
    }

    /// Bytes sent (by the origin and by viewers) that no player used.
    pub fn wasted_bytes(&self) -> u64 {
        self.received_unplayed() + self.uploaded_unreceived()
    }

    /// [`Self::wasted_bytes`] ÷ bytes handed to players.
    pub fn waste_ratio(&self) -> f64 {
        self.wasted_bytes() as f64 / (self.delivered_http + self.delivered_p2p).max(1) as f64
    }

    /// The full report (`p2pcdn-load --output`): the JSON line's figures under `summary`, one
    /// entry per native viewer (every join, churned ones included) and per browser page, and
    /// every error.
    pub fn to_report_json(&self) -> serde_json::Value {
        let viewers: Vec<_> = self.peers.iter().map(peer_json).collect();
        let pages: Vec<_> = self
            .pages
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "peer_id": p.peer_id,
                    "p2p": p.p2p,
                    "started": p.started,
                    "startup_ms": p.startup_ms.map(f64::round),
                    "latency": (p.latency * 100.0).round() / 100.0,
                    "stalls": p.stalls,
                    "delivered_http": p.delivered_http,
                    "delivered_p2p": p.delivered_p2p,
                    "http_bytes": p.http_bytes,
                    "p2p_bytes": p.p2p_bytes,
                    "uploaded": p.uploaded,
                    "integrity_failures": p.integrity_failures,
                    "banned": p.banned,
                    "fallbacks": p.fallbacks,
                    "dup_http_bytes": p.dup_http_bytes,
                    "dup_p2p_bytes": p.dup_p2p_bytes,
                    "uplink_bps": p.uplink_bps,
                    "serve_busy": p.serve_busy,
                    "origin_requests": {
                        "designated": p.http_causes[0],
                        "backup": p.http_causes[1],
                        "deadline": p.http_causes[2],
                        "alone": p.http_causes[3],
                        "share": p.http_causes[4],
                    },
                    "peer_timeouts": p.peer_timeouts,
                    "chunk_ms": p.chunk_ms,
                    "fatal": p.fatal,
                    "errors": p.errors,
                })
            })
            .collect();
        serde_json::json!({
            "summary": self.summary(),
            "delivered_http": self.delivered_http,
            "delivered_p2p": self.delivered_p2p,
            "origin_requests": {
                "designated": self.http_causes[0],
                "backup": self.http_causes[1],
                "deadline": self.http_causes[2],
                "alone": self.http_causes[3],
                "share": self.http_causes[4],
            },
            "peer_timeouts": self.peer_timeouts,
            "joins": self.joins,
            "viewers": viewers,
            "pages": pages,
            "errors": self.errors,
        })
    }

    fn summary(&self) -> serde_json::Value {
        let b = self.browser_totals();
        serde_json::json!({
            "seed": self.seed,
            "viewers": self.viewers,
            "browsers": {
                "count": b.count,
                "reported": b.reported,
                "started": b.started,
                "delivered_http": b.delivered_http,
                "delivered_p2p": b.delivered_p2p,
                "http_bytes": b.http_bytes,
                "p2p_bytes": b.p2p_bytes,
                "uploaded": b.uploaded,
                "stalls": b.stalls,
                "startup_ms_p50": b.startup_ms_p50.round(),
                "integrity_failures": b.integrity_failures,
                "fallbacks": b.fallbacks,
                "dup_http_bytes": b.dup_http_bytes,
                "dup_p2p_bytes": b.dup_p2p_bytes,
            },
            "interrupted": self.interrupted,
            "offload": (self.offload * 10_000.0).round() / 10_000.0,
            "limit": (self.limit * 10_000.0).round() / 10_000.0,
            "stalls": self.stalls,
            "stall_secs": (self.stall_secs * 100.0).round() / 100.0,
            "startup_ms_p50": self.startup_ms_p50.round(),
            "startup_ms_p95": self.startup_ms_p95.round(),
            "origin_bytes": self.origin_bytes,
            "p2p_bytes": self.p2p_bytes,
            "http_bytes": self.http_bytes,
            "delivered_bytes": self.delivered_http + self.delivered_p2p,
            "uploaded_bytes": self.uploaded_bytes,
            "dup_http_bytes": self.dup_http_bytes,
            "dup_p2p_bytes": self.dup_p2p_bytes,
            "chunk_ms": self.chunk_ms,
            "received_unplayed": self.received_unplayed(),
            "uploaded_unreceived": self.uploaded_unreceived(),
            "wasted_bytes": self.wasted_bytes(),
            "waste_ratio": (self.waste_ratio() * 10_000.0).round() / 10_000.0,
            "corrupt_to_player": self.corrupt_to_player,
            "integrity_failures": self.integrity_failures,
            "unauthorized_viewers": self.unauthorized_viewers,
            "errors": self.errors.len(),
            "want_failures": self.want_failures,
            "skipped_segments": self.skipped,
            "banned_bad": self.banned_bad,
            "bad": self.bad,
            "banned_honest": self.banned_honest,
            "origin_bytes_source": self.origin_bytes_source,
            "seconds": self.seconds,
            "cpu_ms_per_peer": (self.cpu_secs * 1000.0 / self.joins.max(1) as f64).round(),
            "cpu_pct_per_peer": (self.cpu_secs * 100.0 / self.seconds.max(0.001) / self.viewers.max(1) as f64 * 100.0).round() / 100.0,
            "rss_mb_per_peer": (self.rss_peak_bytes as f64 / 1e6 / self.viewers.max(1) as f64 * 100.0).round() / 100.0,
        })
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let rows: Vec<(&str, String)> = vec![
            (
                "viewers (joins)",
                format!("{} ({})", self.viewers, self.joins),
            ),
            ("browsers", {
                let b = self.browser_totals();
                format!(
                    "{} ({} reported, {} playing): {:.1} MB HTTP + {:.1} MB P2P, {:.1} MB up, \
                     {} stalls, startup p50 {:.0} ms, {} integrity failures, {} fallbacks",
                    b.count,
                    b.reported,
                    b.started,
                    b.delivered_http as f64 / 1e6,
                    b.delivered_p2p as f64 / 1e6,
                    b.uploaded as f64 / 1e6,
                    b.stalls,
                    b.startup_ms_p50,
                    b.integrity_failures,
                    b.fallbacks
                )
            }),
            ("seconds", format!("{:.0}", self.seconds)),
            (
                "offload",
                format!(
                    "{:.1} % (limit {:.1} %)",
                    self.offload * 100.0,
                    self.limit * 100.0
                ),
            ),
            (
                "stalls",
                format!(
                    "{} ({:.1} s stalled, {} segments skipped to the live window)",
                    self.stalls, self.stall_secs, self.skipped
                ),
            ),
            (
                "startup",
                format!(
                    "p50 {:.0} ms, p95 {:.0} ms",
                    self.startup_ms_p50, self.startup_ms_p95
                ),
            ),
            ("seed", self.seed.to_string()),
            (
                "origin bytes",
                format!(
                    "{:.1} MB ({})",
                    self.origin_bytes as f64 / 1e6,
                    self.origin_bytes_source
                ),
            ),
            (
                "p2p bytes",
                format!("{:.1} MB", self.p2p_bytes as f64 / 1e6),
            ),
            (
                "uploaded",
                format!("{:.1} MB", self.uploaded_bytes as f64 / 1e6),
            ),
            (
                "waste",
                format!(
                    "{:.1} MB ({:.1} % of delivered): {:.1} MB received and not played \
                     ({:.1} MB twice from the origin, {:.1} MB twice from peers), {:.1} MB \
                     uploaded and not kept",
                    self.wasted_bytes() as f64 / 1e6,
                    self.waste_ratio() * 100.0,
                    self.received_unplayed() as f64 / 1e6,
                    self.dup_http_bytes as f64 / 1e6,
                    self.dup_p2p_bytes as f64 / 1e6,
                    self.uploaded_unreceived() as f64 / 1e6
                ),
            ),
            (
                "delivered",
                format!(
                    "{:.1} MB HTTP + {:.1} MB P2P",
                    self.delivered_http as f64 / 1e6,
                    self.delivered_p2p as f64 / 1e6
                ),
            ),
            (
                "origin requests",
                format!(
                    "{} designated, {} backup, {} deadline, {} alone, {} share; {} peer timeouts",
                    self.http_causes[0],
                    self.http_causes[1],
                    self.http_causes[2],
                    self.http_causes[3],
                    self.http_causes[4],
                    self.peer_timeouts
                ),
            ),
            (
                "corrupt to player",
                format!(
                    "{} ({} integrity failures from peers)",
                    self.corrupt_to_player, self.integrity_failures
                ),
            ),
            (
                "bad peers banned",
                format!(
                    "{}/{} ({} honest banned)",
                    self.banned_bad, self.bad, self.banned_honest
                ),
            ),
            (
                "chunks from peers",
                format!(
                    "request → arrival: {}",
                    peer_core::Stats {
                        chunk_ms: self.chunk_ms,
                        ..Default::default()
                    }
                    .chunk_ms_line()
                ),
            ),
            (
                "per native peer",
                format!(
                    "{:.2} % CPU, {:.2} MB RSS",
                    self.cpu_secs * 100.0 / self.seconds.max(0.001) / self.viewers.max(1) as f64,
                    self.rss_peak_bytes as f64 / 1e6 / self.viewers.max(1) as f64
                ),
            ),
        ];
        for (k, v) in rows {
            s.push_str(&format!("{k:<20} {v}\n"));
        }
        for e in self.errors.iter().take(5) {
            s.push_str(&format!("error: {e}\n"));
        }
        s
    }
}

/// CPU seconds (user + system) of this process, from /proc.
pub fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set size of this process in bytes, from /proc.
pub fn process_rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The origin's own byte counter (`GET <origin>/stats` → `totals.bytes`), when it is ours.
/// `admin_token`: the origin's `--admin-token` (without one it answers loopback clients only).
pub async fn origin_stats_bytes(
    client: &reqwest::Client,
    playlist_url: &str,
    admin_token: Option<&str>,
) -> Option<u64> {
    let mut u = Url::parse(playlist_url).ok()?;
    u.set_path("/stats");
    u.set_query(None);
    let mut req = client.get(u).timeout(Duration::from_secs(3));
    if let Some(t) = admin_token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.bytes().await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v.get("totals")?.get("bytes")?.as_u64()
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<PeerReport>,
    /// Join number.
    index: usize,
}

/// SplitMix64: a small deterministic generator, the same sequence on every platform and build
/// (a run is reproduced from its printed seed).
#[derive(Clone, Debug)]
pub struct SeedRng(u64);

impl SeedRng {
    /// The generator of one concern (`stream`) of the run with `seed`: the concerns draw from
    /// separate sequences, so adding browsers does not move the viewers' choices.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = SeedRng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential delay (seconds) of a Poisson process with `rate` events per second.
    fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - self.next_f64()).max(1e-12).ln() / rate
    }
}

/// Most churn events planned for one run (bounds the plan of an absurd `--churn`).
const MAX_CHURN_EVENTS: usize = 100_000;

/// Every random choice of a run, drawn from [`SwarmOptions::seed`] before it starts: two runs
/// with the same seed and options make the same choices (what the network then does differs).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Join time (seconds from the start) of the first `viewers` viewers: evenly spread over the
    /// ramp, each jittered within its own slot (viewers of a real audience do not arrive on a
    /// grid, and a grid synchronises their timers).
    pub viewer_starts: Vec<f64>,
    /// Which of those viewers tamper (exactly `round(bad_peers × viewers)`, chosen at random).
    pub bad: Vec<bool>,
    /// Launch time of each browser page, jittered within its slot like the viewers.
    pub browser_starts: Vec<f64>,
    /// Churn: (time in seconds, which running viewer leaves as a fraction of those running).
    pub churn: Vec<(f64, f64)>,
    /// Seed of the core of join number `k` is `core_seeds[k]` for the first viewers; later
    /// joins (churn newcomers) use [`Schedule::core_seed`].
    pub seed: u64,
}

impl Schedule {
    pub fn new(opts: &SwarmOptions) -> Schedule {
        let n = opts.viewers;
        let ramp = opts.ramp.max(0.0);
        let slots = |count: usize, rng: &mut SeedRng| -> Vec<f64> {
            (0..count)
                .map(|i| ramp * (i as f64 + rng.next_f64()) / count as f64)
                .collect()
        };
        let viewer_starts = slots(n, &mut SeedRng::new(opts.seed, 1));
        let browser_starts = slots(opts.browsers, &mut SeedRng::new(opts.seed, 2));
        let bad_count = ((opts.bad_peers.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
        // A partial Fisher-Yates shuffle picks exactly `bad_count` distinct viewers.
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = SeedRng::new(opts.seed, 3);
        for i in 0..bad_count {
            let j = i + (rng.next_u64() % (n - i) as u64) as usize;
            order.swap(i, j);
        }
        let mut bad = vec![false; n];
        for &i in &order[..bad_count] {
            bad[i] = true;
        }
        let mut churn = Vec::new();
        let rate = n as f64 * opts.churn_pct_per_min.max(0.0) / 100.0 / 60.0;
        if rate > 0.0 && rate.is_finite() {
            let mut rng = SeedRng::new(opts.seed, 4);
            let mut t = rng.exp(rate);
            while t < opts.seconds && churn.len() < MAX_CHURN_EVENTS {
                churn.push((t, rng.next_f64()));
                t += rng.exp(rate);
            }
        }
        Schedule {
            viewer_starts,
            bad,
            browser_starts,
            churn,
            seed: opts.seed,
        }
    }

    /// The core seed of join number `index` (the first viewers, then churn newcomers).
    pub fn core_seed(&self, index: usize) -> u64 {
        SeedRng::new(self.seed, 1000 + index as u64).next_u64()
    }
}

fn spawn_viewer(
    opts: &SwarmOptions,
    schedule: &Schedule,
    client: &reqwest::Client,
    tls: &crate::net::SignalTls,
    bad: bool,
    index: usize,
) -> Running {
    let mut p = PeerOptions::new(opts.signal_url.clone(), opts.playlist_url.clone());
    p.more_signal_urls = opts.more_signal_urls.clone();
    p.core = opts.core.clone();
    p.core.seed = schedule.core_seed(index);
    p.player = opts.player.clone();
    p.tamper = bad;
    p.http_only = opts.http_only;
    p.rtc = RtcOptions {
        udp_addrs: opts.udp_addrs.clone(),
        relay: opts.relay,
        ..Default::default()
    };
    p.tls = Some(tls.clone());
    p.token = opts.token.clone();
    if index == 0 {
        p.record.clone_from(&opts.record);
    }
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run_peer(p, client.clone(), rx));
    Running { stop, task, index }
}

async fn finish(r: Running) -> PeerReport {
    let _ = r.stop.send(true);
    let mut rep = match r.task.await {
        Ok(rep) => rep,
        Err(e) => PeerReport {
            error: Some(format!("viewer task: {e}")),
            ..Default::default()
        },
    };
    rep.index = r.index;
    rep
}

/// The browsers of a run: page server, schedule, running browsers.
struct Browsers {
    reports: Reports,
    /// Page URL without the per-page parameters, and where pages report to (`None`: their own
    /// `/report`).
    base: String,
    report_to: Option<String>,
    chromium: ChromiumOptions,
    log_dir: Option<PathBuf>,
    netns_prefix: Option<String>,
    pending: Vec<(Instant, usize)>,
    running: Vec<Chromium>,
}

impl Browsers {
    async fn start(
        opts: &SwarmOptions,
        schedule: &Schedule,
        start: Instant,
        errors: &mut Vec<String>,
    ) -> Option<Browsers> {
        let b = &opts.browser;
        let reports = Reports::default();
        // Only the collector when the page is served elsewhere.
        let dirs = if b.page_url.is_some() {
            Vec::new()
        } else {
            b.site_dirs.clone()
        };
        let addr = match browser::serve_pages(b.listen, dirs, reports.clone()).await {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("browsers: page server: {e}"));
                return None;
            }
        };
        // The browsers run on this machine: an unspecified listen address is reached on
        // loopback.
        let host = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let (base, report_to) = match &b.page_url {
            Some(u) => (u.clone(), Some(format!("http://{host}/report"))),
            None => (format!("http://{host}/index.html"), None),
        };
        let n = opts.browsers;
        Some(Browsers {
            reports,
            base,
            report_to,
            chromium: ChromiumOptions {
                binary: b.chromium.clone(),
                // Past the end of the run with a margin for the teardown.
                deadline: Duration::from_secs_f64(opts.seconds.max(0.0) + opts.ramp.max(0.0))
                    + Duration::from_secs(120),
                log: None,
                // The pages trust the keys of `--ca-cert` (pinned, not "any certificate").
                extra_args: spki_flag(&opts.roots)
                    .into_iter()
                    .chain(b.chromium_args.iter().cloned())
                    .collect(),
                netns: None,
            },
            log_dir: b.log_dir.clone(),
            netns_prefix: b.netns_prefix.clone(),
            // Spread over the ramp like the native viewers (see `Schedule`).
            pending: schedule
                .browser_starts
                .iter()
                .take(n)
                .enumerate()
                .map(|(k, &at)| (start + Duration::from_secs_f64(at), k))
                .collect(),
            running: Vec::new(),
        })
    }

    fn launch_due(&mut self, opts: &SwarmOptions, now: Instant, errors: &mut Vec<String>) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0 > now {
                i += 1;
                continue;
            }
            let (_, k) = self.pending.swap_remove(i);
            let id = format!("b{k}");
            let url = page_url(opts, &self.base, &id, self.report_to.as_deref());
            let mut c = self.chromium.clone();
            c.log = self.log_dir.as_ref().map(|d| d.join(format!("{id}.log")));
            c.netns = self.netns_prefix.as_ref().map(|p| format!("{p}{k}"));
            match Chromium::launch(&c, &url) {
                Ok(b) => self.running.push(b),
                Err(e) => errors.push(format!("browser {id}: {e}")),
            }
        }
    }

    /// Ends the browsers and returns their latest reports. Every browser is asked to exit
    /// first, then waited for (off the async threads: waiting blocks).
    async fn finish(mut self, errors: &mut Vec<String>, count: usize) -> Vec<PageReport> {
        let reports = self.reports.lock().map(|r| r.clone()).unwrap_or_default();
        let mut died = 0;
        for b in &mut self.running {
            if !b.running() {
                died += 1;
            }
            b.terminate();
        }
        if died > 0 {
            errors.push(format!(
                "{died} browser(s) exited before the end of the run"
            ));
        }
        let running = std::mem::take(&mut self.running);
        let _ = tokio::task::spawn_blocking(move || drop(running)).await;
        let mut pages = Vec::new();
        for k in 0..count {
            let id = format!("b{k}");
            match reports.get(&id) {
                Some(v) => {
                    let p = PageReport::parse(&id, v);
                    for e in p.fatal.iter().chain(&p.errors).take(3) {
                        errors.push(format!("browser {id}: {e}"));
                    }
                    pages.push(p);
                }
                None => errors.push(format!("browser {id}: never reported")),
            }
        }
        pages
    }
}

/// The demo page URL of browser `id`: the playlist, the signaling server, the report
/// parameters, and the join token and relay policy of the run.
fn page_url(opts: &SwarmOptions, base: &str, id: &str, report_to: Option<&str>) -> String {
    let mut url = browser::demo_page_url(
        base,
        &opts.playlist_url,
        &opts.signal_url,
        id,
        !opts.http_only,
        report_to,
    );
    if let Some(t) = page_token(opts) {
        url.push_str(&format!("&token={}", query_escape(&t)));
    }
    if opts.relay {
        url.push_str("&relay=1");
    }
    url
}

/// The join token of a browser page (its `token=` parameter). A page cannot ask this tool for
/// a fresh token when it reconnects, so a minted one lasts the whole run (and at least the
/// configured lifetime).
fn page_token(opts: &SwarmOptions) -> Option<String> {
    match &opts.token {
        TokenSource::Mint { secret, scope, ttl } => {
            let run = Duration::from_secs_f64(opts.seconds.max(0.0) + opts.ramp.max(0.0))
                + Duration::from_secs(120);
            TokenSource::Mint {
                secret: secret.clone(),
                scope: scope.clone(),
                ttl: (*ttl).max(run),
            }
            .current()
        }
        other => other.current(),
    }
}

/// Chromium's flag trusting the keys of the extra roots (see [`Roots::spki_sha256`]).
fn spki_flag(roots: &Roots) -> Option<String> {
    let hashes = roots.spki_sha256();
    (!hashes.is_empty())
        .then(|| format!("--ignore-certificate-errors-spki-list={}", hashes.join(",")))
}

/// Percent-encodes a query parameter value (everything but the unreserved characters).
fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs the swarm for `opts.seconds` and reports. `progress` is called about once a second
/// with (elapsed seconds, viewers running).
pub async fn run_swarm(opts: SwarmOptions, progress: impl FnMut(f64, usize)) -> SwarmReport {
    // Never interrupted: the sender lives until the run ends.
    let (_never, stop) = watch::channel(false);
    run_swarm_until(opts, progress, stop).await
}

/// [`run_swarm`] that ends early (and still reports) when `stop` turns true.
pub async fn run_swarm_until(
    opts: SwarmOptions,
    mut progress: impl FnMut(f64, usize),
    stop: watch::Receiver<bool>,
) -> SwarmReport {
    let tls = opts.roots.client_config();
    let client = opts.roots.http_client();
    let (tls, client) = match (tls, client) {
        (Ok(t), Ok(c)) => (t, c),
        (Err(e), _) | (_, Err(e)) => {
            return SwarmReport {
                viewers: opts.viewers,
                browsers: opts.browsers,
                seed: opts.seed,
                errors: vec![e.to_string()],
                ..Default::default()
            };
        }
    };
    let origin_before = origin_stats_bytes(
        &client,
        &opts.playlist_url,
        opts.origin_admin_token.as_deref(),
    )
    .await;
    let cpu0 = process_cpu_secs();
    let schedule = Schedule::new(&opts);
    let bad_count = schedule.bad.iter().filter(|b| **b).count();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(opts.seconds.max(0.0));
    let mut errors = Vec::new();
    let mut browsers = if opts.browsers > 0 {
        Browsers::start(&opts, &schedule, start, &mut errors).await
    } else {
        None
    };
    // The next churn event of the schedule.
    let mut churn_next = 0usize;
    let mut running: Vec<(bool, Running)> = Vec::new();
    let mut done: Vec<PeerReport> = Vec::new();
    // Join order = index order: the pending list is sorted by time (the slots do not overlap).
    let mut pending: Vec<(Instant, bool)> = schedule
        .viewer_starts
        .iter()
        .zip(&schedule.bad)
        .map(|(&t, &bad)| (start + Duration::from_secs_f64(t), bad))
        .collect();
    let mut joins = 0usize;
    let mut rss_peak = 0u64;
    let mut last_progress = start;
    let mut interrupted = false;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if *stop.borrow() {
            interrupted = true;
            break;
        }
        // In order (not swap_remove): join numbers, and so core seeds, follow the schedule.
        while pending.first().is_some_and(|p| p.0 <= now) {
            let (_, bad) = pending.remove(0);
            let v = spawn_viewer(&opts, &schedule, &client, &tls, bad, joins);
            running.push((bad, v));
            joins += 1;
        }
        if let Some(b) = browsers.as_mut() {
            b.launch_due(&opts, now, &mut errors);
        }
        while let Some(&(t, pick)) = schedule.churn.get(churn_next)
            && start + Duration::from_secs_f64(t) <= now
        {
            churn_next += 1;
            if !running.is_empty() {
                let k = ((pick * running.len() as f64) as usize).min(running.len() - 1);
                // `remove`, not `swap_remove`: the order of `running` (join order) stays
                // what the schedule's picks refer to.
                let (bad, r) = running.remove(k);
                done.push(finish(r).await);
                let at = Instant::now() + Duration::from_secs(1);
                // Kept sorted by time.
                let pos = pending.partition_point(|p| p.0 <= at);
                pending.insert(pos, (at, bad));
            }
        }
        if now.duration_since(last_progress) >= Duration::from_secs(1) {
            last_progress = now;
            rss_peak = rss_peak.max(process_rss_bytes());
            progress(now.duration_since(start).as_secs_f64(), running.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ran = start.elapsed().as_secs_f64();
    rss_peak = rss_peak.max(process_rss_bytes());
    let cpu = process_cpu_secs() - cpu0;
    // Browsers first: their latest reports describe the run, not the teardown.
    let pages = match browsers {
        Some(b) => b.finish(&mut errors, opts.browsers).await,
        None => Vec::new(),
    };
    let stops: Vec<_> = running.into_iter().map(|(_, r)| finish(r)).collect();
    for rep in futures_util::future::join_all(stops).await {
        done.push(rep);
    }
    // Let the origin finish counting responses that were cut short.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let origin_after = origin_stats_bytes(
        &client,
        &opts.playlist_url,
        opts.origin_admin_token.as_deref(),
    )
    .await;
    done.sort_by_key(|p| p.index);
    let mut r = aggregate(
        &opts,
        done,
        pages,
        joins,
        bad_count,
        origin_before
            .zip(origin_after)
            .map(|(a, b)| b.saturating_sub(a)),
        cpu,
        rss_peak,
    );
    r.errors.extend(errors);
    r.seed = opts.seed;
    if interrupted {
        r.interrupted = true;
        r.seconds = ran;
    }
    r
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Nearest-rank percentile `q` (0..=1) of `v`; 0 when empty.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1)).copied().unwrap_or(0.0)
}

/// One native viewer in the full report.
fn peer_json(p: &PeerReport) -> serde_json::Value {
    let s = &p.stats;
    serde_json::json!({
        "index": p.index,
        "peer_id": p.id,
        "tamper": p.tamper,
        "startup_ms": p.startup.map(|d| (d.as_secs_f64() * 1000.0).round()),
        "stalls": p.stalls,
        "stall_secs": (p.stall_time.as_secs_f64() * 1000.0).round() / 1000.0,
        "played": p.played,
        "http_bytes": s.http_bytes,
        "meta_bytes": p.meta_bytes,
        "p2p_bytes": s.p2p_bytes,
        "uploaded_bytes": s.uploaded_bytes,
        "delivered_http": s.delivered_http_bytes,
        "delivered_p2p": s.delivered_p2p_bytes,
        "integrity_failures": s.integrity_failures,
        "corrupt_segments": p.corrupt_segments,
        "want_failures": p.want_failures,
        "skipped_segments": p.skipped,
        "banned": p.banned,
        "signal_reconnects": p.signal_reconnects,
        "signal_dropped": p.signal_dropped,
        "signal_errors": p.signal_errors,
        "unauthorized": p.unauthorized,
        "signal_error": p.signal_error,
        "connect_error": p.connect_error,
        "playlist_error": p.playlist_error,
        "ice_servers": p.ice_servers,
        "error": p.error,
    })
}

#[allow(clippy::too_many_arguments)]
fn aggregate(
    opts: &SwarmOptions,
    peers: Vec<PeerReport>,
    pages: Vec<PageReport>,
    joins: usize,
    bad: usize,
    origin: Option<u64>,
    cpu_secs: f64,
    rss_peak_bytes: u64,
) -> SwarmReport {
    let mut r = SwarmReport {
        viewers: opts.viewers,
        browsers: opts.browsers,
        seconds: opts.seconds,
        limit: 1.0 - 1.0 / (opts.viewers + opts.browsers).max(1) as f64,
        bad,
        joins,
        cpu_secs,
        rss_peak_bytes,
        ..Default::default()
    };
    let mut client_origin = 0u64;
    let mut startups = Vec::new();
    let mut causes: Vec<String> = Vec::new();
    // Browsers are honest (they never tamper).
    let honest: std::collections::BTreeSet<_> = peers
        .iter()
        .filter(|p| !p.tamper)
        .filter_map(|p| p.id)
        .chain(pages.iter().filter_map(|p| p.peer_id))
        .collect();
    let bad_ids: std::collections::BTreeSet<_> = peers
        .iter()
        .filter(|p| p.tamper)
        .filter_map(|p| p.id)
        .collect();
    let mut banned_by_honest = std::collections::BTreeSet::new();
    let mut banned_any = std::collections::BTreeSet::new();
    for p in &peers {
        let s = &p.stats;
        r.stalls += u64::from(p.stalls);
        r.stall_secs += p.stall_time.as_secs_f64();
        r.p2p_bytes += s.p2p_bytes;
        r.http_bytes += s.http_bytes;
        r.uploaded_bytes += s.uploaded_bytes;
        r.dup_http_bytes += s.dup_http_bytes;
        r.dup_p2p_bytes += s.dup_p2p_bytes;
        for (t, c) in r.chunk_ms.iter_mut().zip(s.chunk_ms) {
            *t += c;
        }
        r.delivered_http += s.delivered_http_bytes;
        r.delivered_p2p += s.delivered_p2p_bytes;
        r.corrupt_to_player += p.corrupt_segments;
        r.integrity_failures += u64::from(s.integrity_failures);
        r.want_failures += p.want_failures;
        r.skipped += p.skipped;
        if p.unauthorized > 0 {
            r.unauthorized_viewers += 1;
        }
        client_origin += s.http_bytes + p.meta_bytes;
        r.http_causes[0] += s.http_designated;
        r.http_causes[1] += s.http_backup;
        r.http_causes[2] += s.http_late;
        r.http_causes[3] += s.http_alone;
        r.http_causes[4] += s.http_share;
        r.peer_timeouts += s.peer_request_timeouts;
        if let Some(st) = p.startup {
            startups.push(st.as_secs_f64() * 1000.0);
        }
        if let Some(e) = &p.error {
            r.errors.push(e.clone());
        }
        // Why a viewer never got in: one line per distinct cause (not one per viewer).
        if p.id.is_none()
            && let Some(e) = &p.connect_error
        {
            causes.push(e.clone());
        }
        if let Some(e) = &p.signal_error
            && p.unauthorized > 0
        {
            causes.push(format!("signaling refused the join: {e}"));
        }
        if p.startup.is_none()
            && let Some(e) = &p.playlist_error
        {
            causes.push(e.clone());
        }
        for b in &p.banned {
            banned_any.insert(*b);
            if p.id.is_some_and(|id| honest.contains(&id)) {
                banned_by_honest.insert(*b);
            }
        }
    }
    for p in &pages {
        r.stalls += p.stalls;
        r.p2p_bytes += p.p2p_bytes;
        r.http_bytes += p.http_bytes;
        r.uploaded_bytes += p.uploaded;
        r.dup_http_bytes += p.dup_http_bytes;
        r.dup_p2p_bytes += p.dup_p2p_bytes;
        for (t, c) in r.http_causes.iter_mut().zip(p.http_causes) {
            *t += c;
        }
        r.peer_timeouts += p.peer_timeouts;
        for (t, c) in r.chunk_ms.iter_mut().zip(p.chunk_ms) {
            *t += c;
        }
        r.delivered_http += p.delivered_http;
        r.delivered_p2p += p.delivered_p2p;
        client_origin += p.http_bytes;
        r.integrity_failures += p.integrity_failures;
        startups.extend(p.startup_ms);
        for b in &p.banned {
            banned_any.insert(*b);
            banned_by_honest.insert(*b);
        }
    }
    r.banned_bad = bad_ids
        .iter()
        .filter(|b| banned_by_honest.contains(b))
        .count();
    r.banned_honest = honest.iter().filter(|h| banned_any.contains(h)).count();
    let total = r.delivered_http + r.delivered_p2p;
    r.offload = if total == 0 {
        0.0
    } else {
        r.delivered_p2p as f64 / total as f64
    };
    r.startup_ms_p50 = median(&mut startups);
    r.startup_ms_p95 = percentile(&mut startups, 0.95);
    let mut counted: std::collections::BTreeMap<String, usize> = Default::default();
    for c in causes {
        *counted.entry(c).or_default() += 1;
    }
    for (cause, n) in counted {
        r.errors.push(format!("{n} viewer(s): {cause}"));
    }
    match origin {
        Some(b) => {
            r.origin_bytes = b;
            r.origin_bytes_source = "origin";
        }
        None => {
            r.origin_bytes = client_origin;
            r.origin_bytes_source = "client";
        }
    }
    r.peers = peers;
    r.pages = pages;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64) -> SwarmOptions {
        let mut o = SwarmOptions::new("ws://s/ws", "http://o/a/index.m3u8", 40, 600.0);
        o.seed = seed;
        o.ramp = 10.0;
        o.bad_peers = 0.25;
        o.churn_pct_per_min = 20.0;
        o.browsers = 3;
        o
    }

    #[test]
    fn same_seed_same_choices() {
        let a = Schedule::new(&opts(42));
        let b = Schedule::new(&opts(42));
        assert_eq!(a, b);
        assert_eq!(
            (0..60).map(|i| a.core_seed(i)).collect::<Vec<_>>(),
            (0..60).map(|i| b.core_seed(i)).collect::<Vec<_>>()
        );
        // The choices are real: another seed moves them.
        let c = Schedule::new(&opts(43));
        assert_ne!(a.viewer_starts, c.viewer_starts);
        assert_ne!(a.bad, c.bad);
        assert_ne!(a.churn, c.churn);
        assert_ne!(a.core_seed(0), c.core_seed(0));
        // Their shape: exactly a quarter tamper, joins sorted within the ramp, one per slot,
        // churn ≈ 20 %/min of 40 viewers for 10 min ≈ 80 events.
        assert_eq!(a.bad.iter().filter(|b| **b).count(), 10);
        assert!(a.viewer_starts.windows(2).all(|w| w[0] <= w[1]));
        for (i, t) in a.viewer_starts.iter().enumerate() {
            assert!(
                *t >= i as f64 * 0.25 && *t < (i + 1) as f64 * 0.25,
                "{i}: {t}"
            );
        }
        assert_eq!(a.browser_starts.len(), 3);
        assert!((40..=130).contains(&a.churn.len()), "{}", a.churn.len());
        assert!(
            a.churn
                .iter()
                .all(|(t, p)| *t < 600.0 && (0.0..1.0).contains(p))
        );
    }

    #[test]
    fn browsers_do_not_move_the_viewers_choices() {
        let mut o = opts(5);
        let a = Schedule::new(&o);
        o.browsers = 10;
        let b = Schedule::new(&o);
        assert_eq!(
            (&a.viewer_starts, &a.bad, &a.churn),
            (&b.viewer_starts, &b.bad, &b.churn)
        );
    }

    #[test]
    fn report_json_has_the_figures() {
        let r = SwarmReport {
            seed: 9,
            stall_secs: 1.234,
            startup_ms_p50: 800.0,
            startup_ms_p95: 1500.4,
            peers: vec![PeerReport::default()],
            ..Default::default()
        };
        let line: serde_json::Value =
            serde_json::from_str(&r.to_json()).unwrap_or(serde_json::Value::Null);
        assert_eq!(line["seed"], 9);
        assert_eq!(line["stall_secs"], 1.23);
        assert_eq!(line["startup_ms_p95"], 1500.0);
        let full = r.to_report_json();
        assert_eq!(full["summary"], line);
        assert_eq!(full["viewers"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn pages_get_the_token_and_relay() {
        let mut o = opts(1);
        o.seconds = 3600.0;
        o.token = TokenSource::Mint {
            secret: "0123456789abcdef".into(),
            scope: "http://o/a/*".into(),
            ttl: Duration::from_secs(60),
        };
        o.relay = true;
        let url = page_url(&o, "http://127.0.0.1:1/index.html", "b0", None);
        let token = url
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or_default();
        assert!(url.ends_with("&relay=1"), "{url}");
        // The page's token outlives the run (a page cannot ask for a fresh one).
        let body = token.split('.').next().unwrap_or_default();
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        assert_eq!(v["swarm"], "http://o/a/*");
        assert!(v["exp"].as_u64().unwrap_or_default() > now + 3600, "{v}");

        o.token = TokenSource::None;
        o.relay = false;
        let url = page_url(&o, "http://127.0.0.1:1/index.html", "b0", None);
        assert!(!url.contains("token=") && !url.contains("relay="), "{url}");
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.95), 95.0);
        assert_eq!(percentile(&mut [], 0.95), 0.0);
        assert_eq!(percentile(&mut [3.0], 0.95), 3.0);
        assert_eq!(query_escape("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }
}
