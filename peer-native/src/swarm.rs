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

#[derive(Clone)]
pub struct SwarmOptions {
    pub signal_url: String,
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
    pub seed: u64,
    /// Headless Chromium viewers, joining evenly over the ramp like the native ones.
    pub browsers: usize,
    pub browser: BrowserSetup,
    /// Record the first viewer to join (join number 0; not a churned newcomer) to this file,
    /// as JSON lines (see [`crate::record`]).
    pub record: Option<PathBuf>,
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
}

impl Default for BrowserSetup {
    fn default() -> Self {
        BrowserSetup {
            chromium: PathBuf::from(browser::DEFAULT_CHROMIUM),
            page_url: None,
            site_dirs: browser::default_site_dirs(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_dir: None,
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
            browsers: 0,
            browser: BrowserSetup::default(),
            record: None,
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
    pub stall_secs: f64,
    pub startup_ms_p50: f64,
    /// Origin bytes (from the origin's `/stats` when available, else summed by the viewers).
    pub origin_bytes: u64,
    /// `"origin"` or `"client"`.
    pub origin_bytes_source: &'static str,
    pub p2p_bytes: u64,
    pub delivered_http: u64,
    pub delivered_p2p: u64,
    pub corrupt_to_player: u64,
    /// Wants the viewers' cores refused (`WantFailed`).
    pub want_failures: u64,
    pub bad: usize,
    /// Tampered viewers banned by at least one honest viewer.
    pub banned_bad: usize,
    /// Honest viewers banned by anybody.
    pub banned_honest: usize,
    pub joins: usize,
    /// Origin segment requests by cause: designated seeder, backup seeder, deadline, no peers.
    pub http_causes: [u64; 4],
    pub peer_timeouts: u64,
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
            startups.extend(p.startup_ms);
        }
        t.startup_ms_p50 = median(&mut startups);
        t
    }

    pub fn to_json(&self) -> String {
        let b = self.browser_totals();
        serde_json::json!({
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
            },
            "interrupted": self.interrupted,
            "offload": (self.offload * 10_000.0).round() / 10_000.0,
            "limit": (self.limit * 10_000.0).round() / 10_000.0,
            "stalls": self.stalls,
            "startup_ms_p50": self.startup_ms_p50.round(),
            "origin_bytes": self.origin_bytes,
            "p2p_bytes": self.p2p_bytes,
            "corrupt_to_player": self.corrupt_to_player,
            "want_failures": self.want_failures,
            "banned_bad": self.banned_bad,
            "bad": self.bad,
            "banned_honest": self.banned_honest,
            "origin_bytes_source": self.origin_bytes_source,
            "seconds": self.seconds,
            "cpu_ms_per_peer": (self.cpu_secs * 1000.0 / self.joins.max(1) as f64).round(),
            "cpu_pct_per_peer": (self.cpu_secs * 100.0 / self.seconds.max(0.001) / self.viewers.max(1) as f64 * 100.0).round() / 100.0,
            "rss_mb_per_peer": (self.rss_peak_bytes as f64 / 1e6 / self.viewers.max(1) as f64 * 100.0).round() / 100.0,
        })
        .to_string()
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
                format!("{} ({:.1} s stalled)", self.stalls, self.stall_secs),
            ),
            ("startup p50", format!("{:.0} ms", self.startup_ms_p50)),
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
                    "{} designated, {} backup, {} deadline, {} alone; {} peer timeouts",
                    self.http_causes[0],
                    self.http_causes[1],
                    self.http_causes[2],
                    self.http_causes[3],
                    self.peer_timeouts
                ),
            ),
            ("corrupt to player", self.corrupt_to_player.to_string()),
            (
                "bad peers banned",
                format!(
                    "{}/{} ({} honest banned)",
                    self.banned_bad, self.bad, self.banned_honest
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
pub async fn origin_stats_bytes(client: &reqwest::Client, playlist_url: &str) -> Option<u64> {
    let mut u = Url::parse(playlist_url).ok()?;
    u.set_path("/stats");
    u.set_query(None);
    let resp = client
        .get(u)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
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
}

/// A small deterministic generator (churn times and victims).
struct Lcg(u64);
impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn spawn_viewer(opts: &SwarmOptions, client: &reqwest::Client, bad: bool, index: usize) -> Running {
    let mut p = PeerOptions::new(opts.signal_url.clone(), opts.playlist_url.clone());
    p.core = opts.core.clone();
    p.core.seed = opts.seed.wrapping_mul(1_000_003).wrapping_add(index as u64);
    p.player = opts.player.clone();
    p.tamper = bad;
    p.http_only = opts.http_only;
    p.rtc = RtcOptions {
        udp_addrs: opts.udp_addrs.clone(),
    };
    if index == 0 {
        p.record.clone_from(&opts.record);
    }
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run_peer(p, client.clone(), rx));
    Running { stop, task }
}

async fn finish(r: Running) -> PeerReport {
    let _ = r.stop.send(true);
    match r.task.await {
        Ok(rep) => rep,
        Err(e) => PeerReport {
            error: Some(format!("viewer task: {e}")),
            ..Default::default()
        },
    }
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
    pending: Vec<(Instant, usize)>,
    running: Vec<Chromium>,
}

impl Browsers {
    async fn start(
        opts: &SwarmOptions,
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
                extra_args: Vec::new(),
            },
            log_dir: b.log_dir.clone(),
            // Spread over the ramp, between the native viewers' join times.
            pending: (0..n)
                .map(|k| {
                    let at = opts.ramp.max(0.0) * (k as f64 + 0.5) / n as f64;
                    (start + Duration::from_secs_f64(at), k)
                })
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
            let url = browser::demo_page_url(
                &self.base,
                &opts.playlist_url,
                &opts.signal_url,
                &id,
                !opts.http_only,
                self.report_to.as_deref(),
            );
            let mut c = self.chromium.clone();
            c.log = self.log_dir.as_ref().map(|d| d.join(format!("{id}.log")));
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
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let origin_before = origin_stats_bytes(&client, &opts.playlist_url).await;
    let cpu0 = process_cpu_secs();
    let n = opts.viewers;
    let bad_count = ((opts.bad_peers * n as f64).round() as usize).min(n);
    // Bad viewers spread evenly over the join order.
    let is_bad =
        |i: usize| bad_count > 0 && (i * bad_count / n.max(1)) != ((i + 1) * bad_count / n.max(1));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(opts.seconds.max(0.0));
    let mut errors = Vec::new();
    let mut browsers = if opts.browsers > 0 {
        Browsers::start(&opts, start, &mut errors).await
    } else {
        None
    };
    let mut rng = Lcg(opts.seed ^ 0x9E37_79B9_7F4A_7C15);
    let churn_rate = n as f64 * opts.churn_pct_per_min / 100.0 / 60.0;
    let mut next_churn = (churn_rate > 0.0)
        .then(|| start + Duration::from_secs_f64(-rng.next_f64().max(1e-12).ln() / churn_rate));
    let mut running: Vec<(bool, Running)> = Vec::new();
    let mut done: Vec<PeerReport> = Vec::new();
    let mut pending: Vec<(Instant, bool)> = (0..n)
        .map(|i| {
            (
                start + Duration::from_secs_f64(opts.ramp.max(0.0) * i as f64 / n.max(1) as f64),
                is_bad(i),
            )
        })
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
        let mut i = 0;
        while i < pending.len() {
            if pending[i].0 <= now {
                let (_, bad) = pending.swap_remove(i);
                running.push((bad, spawn_viewer(&opts, &client, bad, joins)));
                joins += 1;
            } else {
                i += 1;
            }
        }
        if let Some(b) = browsers.as_mut() {
            b.launch_due(&opts, now, &mut errors);
        }
        if let Some(t) = next_churn
            && t <= now
        {
            if !running.is_empty() {
                let k = ((rng.next_f64() * running.len() as f64) as usize).min(running.len() - 1);
                let (bad, r) = running.swap_remove(k);
                done.push(finish(r).await);
                pending.push((Instant::now() + Duration::from_secs(1), bad));
            }
            next_churn =
                Some(t + Duration::from_secs_f64(-rng.next_f64().max(1e-12).ln() / churn_rate));
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
    let origin_after = origin_stats_bytes(&client, &opts.playlist_url).await;
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
        r.delivered_http += s.delivered_http_bytes;
        r.delivered_p2p += s.delivered_p2p_bytes;
        r.corrupt_to_player += p.corrupt_segments;
        r.want_failures += p.want_failures;
        client_origin += s.http_bytes + p.meta_bytes;
        r.http_causes[0] += s.http_designated;
        r.http_causes[1] += s.http_backup;
        r.http_causes[2] += s.http_late;
        r.http_causes[3] += s.http_alone;
        r.peer_timeouts += s.peer_request_timeouts;
        if let Some(st) = p.startup {
            startups.push(st.as_secs_f64() * 1000.0);
        }
        if let Some(e) = &p.error {
            r.errors.push(e.clone());
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
        r.delivered_http += p.delivered_http;
        r.delivered_p2p += p.delivered_p2p;
        client_origin += p.http_bytes;
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
