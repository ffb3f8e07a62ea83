//! The integrity service: integrity manifests (`docs/PROTOCOL.md` §3) for third-party HLS
//! origins that publish no `.integrity.json` sidecar.
//!
//! Enabled by at least one `--integrity-origin <URL prefix>` (env `SIGNAL_INTEGRITY_ORIGINS`, comma
//! separated). Clients configured with `integrity: "https://signal.example/integrity"` ask
//! `GET /integrity?playlist=<percent-encoded absolute media playlist URL>`; the first request
//! for a playlist starts a *follower* (a tokio task) that fetches the playlist, fetches each
//! segment it lists once, hashes it with [`SegmentManifest::compute`] and publishes the manifest
//! from memory. Live playlists are re-fetched every `--integrity-poll-ms` (500 ms), so a new
//! segment is published within one poll plus one segment fetch of the playlist listing it; VOD
//! playlists (`#EXT-X-ENDLIST`) are fetched once.
//!
//! ## Answers
//!
//! | case | answer |
//! |------|--------|
//! | service disabled (no `--integrity-origin`) | 404 |
//! | `playlist` missing, not an absolute http(s) URL, or over 8 KiB | 400 |
//! | URL (normalised) not starting with an allowed prefix | 403, nothing fetched |
//! | a new playlist while `--integrity-max-playlists` are followed | 503, `Retry-After: 10` |
//! | first pass failed (fetch error, master playlist, not a playlist) | 502 with the reason |
//! | otherwise | 200, the §3.2 JSON (`ETag`; `If-None-Match` → 304) |
//!
//! Every answer carries `Access-Control-Allow-Origin: *` and `Cache-Control: no-cache`. A first
//! request waits up to 1.5 s for the follower's first pass; later ones answer from memory at once.
//! After a good first pass, a failing playlist fetch keeps the last manifest (and is logged).
//!
//! Followers are keyed by the playlist URL without query and fragment; the latest full URL
//! requested (with its query: signed-URL tokens) is what the follower fetches with.
//!
//! ## What is hashed
//!
//! Segments with `#EXTINF` and a URI. Not hashed (clients fetch them over HTTP): segments with
//! `#EXT-X-BYTERANGE` (a sub-range of a file), the `#EXT-X-MAP` initialisation section (it has
//! no media sequence number), LL-HLS parts, and segments whose resolved URL does not start with
//! an allowed prefix (the service fetches nothing outside them; redirects are followed only
//! within them). A segment is identified by its resolved URL without query: a new query (fresh
//! token) is not a new segment; another path for the same `seq` is re-hashed.
//!
//! ## Bounds and drop policies
//!
//! | bound | when reached |
//! |-------|--------------|
//! | `--integrity-max-playlists` (64) followed playlists | new playlists get 503 until one goes idle |
//! | `--integrity-idle-ms` (60 s) without a request | the follower stops and its memory is freed |
//! | [`MAX_SEGMENTS`] entries per manifest | the oldest segments are not hashed / dropped |
//! | live window | entries more than [`WINDOW_MARGIN`] seqs behind the playlist's first are dropped |
//! | playlist body 1 MiB ([`MAX_PLAYLIST_BYTES`]) | the fetch fails (502 on a first pass) |
//! | segment 64 MiB ([`MAX_SEGMENT_LEN`]) | the segment is skipped for good |
//! | [`SEGMENT_ATTEMPTS`] (3) failed fetches of a segment | it is no longer retried |
//! | [`SEGMENT_CONCURRENCY`] (2) segment fetches per follower | the rest wait |
//!
//! ## Cost
//!
//! Origin traffic: exactly one extra fetch of each segment per rendition being watched through
//! the service (plus retries of failed fetches), and one playlist fetch per poll per followed
//! live playlist (2/s at 500 ms). Memory: 32 bytes of SHA-256 per 16 KiB chunk per segment in
//! the window, plus the rendered JSON kept for answering (~44 bytes per chunk of base64):
//! ~80 bytes per 16 KiB chunk, e.g. ~20 KiB for a 4 MiB segment. A VOD playlist keeps every
//! segment (bounded by [`MAX_SEGMENTS`]) until it goes idle.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use protocol::manifest::{MAX_SEGMENT_LEN, MAX_SEGMENTS, Manifest, SegmentManifest};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::state::lock;

/// Largest playlist body fetched.
pub const MAX_PLAYLIST_BYTES: usize = 1 << 20;
/// Largest `playlist` query value accepted.
pub const MAX_URL_LEN: usize = 8 * 1024;
/// Seqs kept behind the first one the live playlist lists (late viewers still verify them).
pub const WINDOW_MARGIN: u64 = 8;
/// Fetches of one segment before it is given up.
pub const SEGMENT_ATTEMPTS: u32 = 3;
/// Segment fetches in flight per follower.
pub const SEGMENT_CONCURRENCY: usize = 2;
/// Longest wait of a first request for the follower's first pass.
pub const FIRST_PASS_WAIT: Duration = Duration::from_millis(1500);
const PLAYLIST_TIMEOUT: Duration = Duration::from_secs(5);
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// While a pass hashes many segments (VOD), the manifest is re-published at most this often.
const REPUBLISH_EVERY: Duration = Duration::from_millis(250);
const RETRY_AFTER_S: &str = "10";

/// Why a playlist could not be followed (the 502 message) or a segment not hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("fetch failed: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("body over {0} bytes")]
    TooLarge(u64),
    #[error("not a playlist: {0}")]
    Playlist(#[from] PlaylistError),
}

/// A playlist the service cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaylistError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("no #EXTM3U header")]
    NoHeader,
    #[error("a master playlist (#EXT-X-STREAM-INF): ask for a media playlist")]
    Master,
    #[error("bad #EXT-X-MEDIA-SEQUENCE")]
    BadMediaSequence,
    #[error("URI line {0} without #EXTINF")]
    UriWithoutExtinf(usize),
    #[error("media sequence number overflow")]
    SeqOverflow,
}

/// One segment line of a media playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaylistSegment {
    pub seq: u64,
    /// As written in the playlist.
    pub uri: String,
    /// Resolved against the playlist URL (None: unresolvable).
    pub url: Option<Url>,
    /// `#EXT-X-BYTERANGE`: part of a file, not hashed.
    pub byterange: bool,
}

/// What the service needs of a media playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlaylist {
    pub segments: Vec<PlaylistSegment>,
    /// `#EXT-X-ENDLIST`: nothing will be added (VOD, or an ended live stream).
    pub ended: bool,
}

/// Parses a media playlist minimally (`#EXT-X-MEDIA-SEQUENCE`, `#EXTINF` + URI lines,
/// `#EXT-X-BYTERANGE`, `#EXT-X-ENDLIST`). Never panics on hostile input.
pub fn parse_media_playlist(body: &[u8], base: &Url) -> Result<MediaPlaylist, PlaylistError> {
    let text = std::str::from_utf8(body).map_err(|_| PlaylistError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().map(str::trim).enumerate();
    if !lines
        .by_ref()
        .find(|(_, l)| !l.is_empty())
        .is_some_and(|(_, l)| l.starts_with("#EXTM3U"))
    {
        return Err(PlaylistError::NoHeader);
    }
    let mut media_sequence = 0u64;
    let mut index = 0u64;
    let (mut inf, mut byterange, mut ended) = (false, false, false);
    let mut segments = Vec::new();
    for (n, line) in lines {
        if line.is_empty() {
            continue;
        }
        if let Some(tag) = line.strip_prefix('#') {
            if let Some(v) = tag.strip_prefix("EXT-X-MEDIA-SEQUENCE:") {
                media_sequence = v
                    .trim()
                    .parse()
                    .map_err(|_| PlaylistError::BadMediaSequence)?;
            } else if tag.starts_with("EXTINF:") {
                inf = true;
            } else if tag.starts_with("EXT-X-BYTERANGE") {
                byterange = true;
            } else if tag.starts_with("EXT-X-ENDLIST") {
                ended = true;
            } else if tag.starts_with("EXT-X-STREAM-INF")
                || tag.starts_with("EXT-X-I-FRAME-STREAM-INF")
            {
                return Err(PlaylistError::Master);
            }
            continue;
        }
        if !inf {
            return Err(PlaylistError::UriWithoutExtinf(n + 1));
        }
        let seq = media_sequence
            .checked_add(index)
            .ok_or(PlaylistError::SeqOverflow)?;
        index += 1;
        segments.push(PlaylistSegment {
            seq,
            uri: line.to_owned(),
            url: base.join(line).ok(),
            byterange,
        });
        inf = false;
        byterange = false;
    }
    Ok(MediaPlaylist { segments, ended })
}

/// `--integrity-origin` prefixes, normalised like the URLs they are compared with.
#[derive(Debug, Clone, Default)]
pub struct Prefixes(Vec<String>);

impl Prefixes {
    /// Parses and normalises each prefix: an absolute http(s) URL with a path (at least `/`, so
    /// `https://cdn.example` cannot match `https://cdn.example.evil/`).
    pub fn parse(raw: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for p in raw.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let url = Url::parse(p).map_err(|e| format!("integrity origin {p:?}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(format!("integrity origin {p:?}: not an http(s) URL"));
            }
            let after_scheme = p.split_once("://").map_or("", |(_, r)| r);
            if !after_scheme.contains('/') {
                return Err(format!(
                    "integrity origin {p:?}: give a path, at least a trailing '/'"
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!("integrity origin {p:?}: no query or fragment"));
            }
            out.push(url.to_string());
        }
        Ok(Prefixes(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, url: &Url) -> bool {
        self.0.iter().any(|p| url.as_str().starts_with(p.as_str()))
    }
}

/// `url` without query and fragment: the follower key and a segment's identity.
fn strip(url: &Url) -> Url {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u
}

/// A segment to fetch and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub seq: u64,
    pub uri: String,
    pub url: Url,
}

#[derive(Debug)]
struct Pending {
    uri: String,
    url: Url,
    id: Url,
    first_listed: Instant,
    attempts: u32,
}

#[derive(Debug)]
struct Entry {
    seg: SegmentManifest,
    id: Url,
}

/// The hashed window of one playlist, IO-free: playlists and fetch results go in (with the
/// time), jobs and the manifest come out.
#[derive(Debug, Default)]
pub struct Window {
    entries: BTreeMap<u64, Entry>,
    pending: BTreeMap<u64, Pending>,
    ended: bool,
}

impl Window {
    /// Takes a freshly fetched playlist: new seqs (and seqs whose segment changed) become
    /// pending; seqs that left the window (beyond [`WINDOW_MARGIN`]) or became unhashable are
    /// dropped. Returns whether the published manifest changed.
    pub fn update(&mut self, pl: &MediaPlaylist, allowed: &Prefixes, now: Instant) -> bool {
        let mut changed = false;
        self.ended = pl.ended;
        // Only the newest MAX_SEGMENTS are considered.
        let skip = pl.segments.len().saturating_sub(MAX_SEGMENTS);
        let listed = &pl.segments[skip..];
        let (Some(first), Some(last)) = (listed.first(), listed.last()) else {
            self.pending.clear();
            return false;
        };
        let (lo, hi) = (first.seq.saturating_sub(WINDOW_MARGIN), last.seq);
        let mut keep = std::collections::BTreeSet::new();
        for s in listed {
            let Some(url) = s.url.as_ref().filter(|u| !s.byterange && allowed.allows(u)) else {
                changed |= self.entries.remove(&s.seq).is_some();
                self.pending.remove(&s.seq);
                continue;
            };
            keep.insert(s.seq);
            let id = strip(url);
            match self.entries.get(&s.seq) {
                Some(e) if e.id == id => {
                    // Same segment; the URI may carry a fresh token.
                    continue;
                }
                Some(_) => {
                    self.entries.remove(&s.seq);
                    changed = true;
                }
                None => {}
            }
            match self.pending.get_mut(&s.seq) {
                Some(p) if p.id == id => {
                    p.url = url.clone();
                    p.uri.clone_from(&s.uri);
                }
                _ => {
                    self.pending.insert(
                        s.seq,
                        Pending {
                            uri: s.uri.clone(),
                            url: url.clone(),
                            id,
                            first_listed: now,
                            attempts: 0,
                        },
                    );
                }
            }
        }
        self.pending.retain(|seq, _| keep.contains(seq));
        let before = self.entries.len();
        // Behind the window (with a margin), or ahead of it (the media sequence restarted).
        self.entries.retain(|seq, _| (lo..=hi).contains(seq));
        while self.entries.len() > MAX_SEGMENTS {
            self.entries.pop_first();
        }
        changed | (self.entries.len() != before)
    }

    /// Segments to fetch now (pending, attempts left), oldest first.
    pub fn jobs(&self) -> Vec<Job> {
        self.pending
            .iter()
            .filter(|(_, p)| p.attempts < SEGMENT_ATTEMPTS)
            .map(|(seq, p)| Job {
                seq: *seq,
                uri: p.uri.clone(),
                url: p.url.clone(),
            })
            .collect()
    }

    /// A segment was fetched and hashed. Returns when its seq was first listed (None: it left
    /// the window or changed meanwhile, and the result is dropped).
    pub fn hashed(&mut self, job: &Job, seg: SegmentManifest) -> Option<Instant> {
        let p = self.pending.get(&job.seq)?;
        if p.id != strip(&job.url) {
            return None;
        }
        let p = self.pending.remove(&job.seq)?;
        self.entries.insert(job.seq, Entry { seg, id: p.id });
        Some(p.first_listed)
    }

    /// A fetch failed; `permanent` (too large) stops retries at once.
    pub fn failed(&mut self, job: &Job, permanent: bool) {
        if let Some(p) = self.pending.get_mut(&job.seq) {
            p.attempts = if permanent {
                SEGMENT_ATTEMPTS
            } else {
                p.attempts.saturating_add(1)
            };
        }
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn manifest(&self) -> Manifest {
        Manifest {
            segments: self.entries.values().map(|e| e.seg.clone()).collect(),
        }
    }
}

/// What a follower answers.
#[derive(Debug, Clone)]
pub(crate) enum Published {
    /// Before the first pass ended.
    Pending,
    Ready {
        body: Bytes,
        etag: HeaderValue,
    },
    Failed(String),
}

/// What [`Service::lookup`] found: the follower's state, or the cap reached.
pub(crate) type Lookup = Result<Published, AtCap>;

/// `--integrity-max-playlists` followers run already.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AtCap;

/// A [`Lookup`] between nodes (the owner's answer to a proxied `/integrity`; JSON on NATS).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(crate) enum WireLookup {
    AtCap,
    Pending,
    Ready { body: String, etag: String },
    Failed { msg: String },
}

impl WireLookup {
    pub(crate) fn from_lookup(l: Lookup) -> Self {
        match l {
            Err(AtCap) => WireLookup::AtCap,
            Ok(Published::Pending) => WireLookup::Pending,
            Ok(Published::Failed(msg)) => WireLookup::Failed { msg },
            Ok(Published::Ready { body, etag }) => WireLookup::Ready {
                // Our own JSON: always UTF-8.
                body: String::from_utf8_lossy(&body).into_owned(),
                etag: etag.to_str().unwrap_or_default().to_owned(),
            },
        }
    }

    /// Back to a [`Lookup`]; an ETag that is not a header value (only from a broken or
    /// hostile node) is left out.
    pub(crate) fn into_lookup(self) -> Lookup {
        match self {
            WireLookup::AtCap => Err(AtCap),
            WireLookup::Pending => Ok(Published::Pending),
            WireLookup::Failed { msg } => Ok(Published::Failed(msg)),
            WireLookup::Ready { body, etag } => Ok(match HeaderValue::from_str(&etag) {
                Ok(etag) => Published::Ready {
                    body: Bytes::from(body),
                    etag,
                },
                Err(_) => Published::Failed("bad answer from the cluster".into()),
            }),
        }
    }
}

/// One followed playlist: shared by its task and the request handlers.
#[derive(Debug)]
struct Follower {
    key: String,
    /// The latest full URL asked for (with its query).
    url: Mutex<Url>,
    /// Milliseconds since the service started, at the latest request.
    last_request_ms: AtomicU64,
    published: Mutex<Published>,
    first_pass: tokio::sync::watch::Sender<bool>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// Series of the service, registered in the server's `/metrics` registry
/// ([`IntegrityMetrics::register`]).
#[derive(Debug)]
pub struct IntegrityMetrics {
    pub playlist_fetches: Counter,
    pub playlist_errors: Counter,
    pub segment_fetches: Counter,
    pub segment_bytes: Counter,
    pub segment_errors: Counter,
    latency: Histogram,
    /// Largest publish latency seen, in µs (a gauge has no atomic max: copied to
    /// `latency_max` at each scrape).
    latency_max_us: AtomicU64,
    latency_max: Gauge<f64, AtomicU64>,
    playlists: Gauge,
}

const LATENCY_BUCKETS_S: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0];

impl Default for IntegrityMetrics {
    fn default() -> Self {
        IntegrityMetrics {
            playlist_fetches: Counter::default(),
            playlist_errors: Counter::default(),
            segment_fetches: Counter::default(),
            segment_bytes: Counter::default(),
            segment_errors: Counter::default(),
            latency: Histogram::new(LATENCY_BUCKETS_S),
            latency_max_us: AtomicU64::new(0),
            latency_max: Gauge::default(),
            playlists: Gauge::default(),
        }
    }
}

impl IntegrityMetrics {
    fn publish_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.latency.observe(d.as_secs_f64());
        self.latency_max_us.fetch_max(us, Relaxed);
    }

    /// Largest publish latency seen.
    pub fn publish_latency_max(&self) -> Duration {
        Duration::from_micros(self.latency_max_us.load(Relaxed))
    }

    /// Adds the series to `reg` (counter names without `_total`: the encoder appends it).
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "signaling_integrity_playlists",
            "Playlists the integrity service follows.",
            self.playlists.clone(),
        );
        for (name, help, c) in [
            (
                "signaling_integrity_playlist_fetches",
                "Playlist fetches by the integrity service.",
                &self.playlist_fetches,
            ),
            (
                "signaling_integrity_playlist_errors",
                "Playlist fetches that failed or did not parse.",
                &self.playlist_errors,
            ),
            (
                "signaling_integrity_segment_fetches",
                "Segment fetches by the integrity service.",
                &self.segment_fetches,
            ),
            (
                "signaling_integrity_segment_bytes",
                "Segment bytes fetched by the integrity service.",
                &self.segment_bytes,
            ),
            (
                "signaling_integrity_segment_errors",
                "Segment fetches that failed (retried up to 3 times) or were too large.",
                &self.segment_errors,
            ),
        ] {
            reg.register(name, help, c.clone());
        }
        reg.register(
            "signaling_integrity_publish_seconds",
            "From the playlist fetch that first listed a segment to its hash being served.",
            self.latency.clone(),
        );
        reg.register(
            "signaling_integrity_publish_seconds_max",
            "Largest publish latency seen.",
            self.latency_max.clone(),
        );
    }

    /// The live values, set before a scrape.
    fn refresh(&self, followed: usize) {
        self.playlists
            .set(i64::try_from(followed).unwrap_or(i64::MAX));
        self.latency_max
            .set(self.latency_max_us.load(Relaxed) as f64 / 1e6);
    }
}

/// Settings of the service (from [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub prefixes: Prefixes,
    pub poll: Duration,
    pub idle: Duration,
    pub max_playlists: usize,
}

/// The integrity service: its followers, HTTP client and metrics.
#[derive(Debug)]
pub struct Service {
    settings: Settings,
    /// None: disabled (no prefix), or the HTTP client could not be built.
    client: Option<reqwest::Client>,
    followers: Mutex<HashMap<String, Arc<Follower>>>,
    started: Instant,
    pub metrics: IntegrityMetrics,
}

impl Service {
    pub fn new(settings: Settings) -> Self {
        let client = if settings.prefixes.is_empty() {
            None
        } else {
            let allowed = settings.prefixes.clone();
            let policy = reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() < 5 && allowed.allows(attempt.url()) {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            });
            match reqwest::Client::builder()
                .user_agent(concat!("p2pcdn-integrity/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(CONNECT_TIMEOUT)
                .redirect(policy)
                .build()
            {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("integrity service disabled: cannot build an HTTP client: {e}");
                    None
                }
            }
        };
        Service {
            settings,
            client,
            followers: Mutex::new(HashMap::new()),
            started: Instant::now(),
            metrics: IntegrityMetrics::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.client.is_some()
    }

    /// Playlists followed now.
    pub fn followed(&self) -> usize {
        lock(&self.followers).len()
    }

    /// Sets the service's live metrics, before a scrape.
    pub fn refresh_metrics(&self) {
        self.metrics.refresh(self.followed());
    }

    /// Stops the followers of the playlists `unowned` names (keys: URLs without query): in a
    /// cluster, the ones another node follows now.
    pub(crate) fn stop_where(&self, unowned: impl Fn(&str) -> bool) {
        let stopped: Vec<Arc<Follower>> = {
            let mut map = lock(&self.followers);
            let keys: Vec<String> = map.keys().filter(|k| unowned(k)).cloned().collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for f in stopped {
            tracing::info!(playlist = %f.key, "integrity: another node follows it now");
            if let Some(t) = lock(&f.task).take() {
                t.abort();
            }
        }
    }

    /// A playlist URL as `/integrity` accepts it: absolute http(s), not too long, under an
    /// allowed prefix. Err: the HTTP status and why.
    pub(crate) fn check_url(&self, raw: &str) -> Result<Url, (StatusCode, &'static str)> {
        if raw.len() > MAX_URL_LEN {
            return Err((StatusCode::BAD_REQUEST, "playlist URL too long"));
        }
        let url = match Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            _ => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "playlist must be an absolute http(s) URL",
                ));
            }
        };
        if !self.settings.prefixes.allows(&url) {
            return Err((
                StatusCode::FORBIDDEN,
                "playlist URL is not under an origin this service follows (--integrity-origin)",
            ));
        }
        Ok(url)
    }

    /// The follower's state for `url` (started if new), after waiting up to
    /// [`FIRST_PASS_WAIT`] for its first pass.
    pub(crate) async fn lookup(self: &Arc<Self>, url: &Url) -> Lookup {
        let (f, _new) = self.follower(url).map_err(|()| AtCap)?;
        let mut rx = f.first_pass.subscribe();
        if !*rx.borrow() {
            let _ = tokio::time::timeout(FIRST_PASS_WAIT, rx.wait_for(|done| *done)).await;
        }
        let published = lock(&f.published).clone();
        Ok(published)
    }

    /// Stops every follower (server shutdown).
    pub fn stop_all(&self) {
        for f in lock(&self.followers).drain().map(|(_, f)| f) {
            if let Some(t) = lock(&f.task).take() {
                t.abort();
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Finds or starts the follower of `url`. Err: the cap is reached.
    fn follower(self: &Arc<Self>, url: &Url) -> Result<(Arc<Follower>, bool), ()> {
        let key = strip(url).to_string();
        let now = self.now_ms();
        let mut map = lock(&self.followers);
        if let Some(f) = map.get(&key) {
            f.last_request_ms.store(now, Relaxed);
            let mut u = lock(&f.url);
            if *u != *url {
                *u = url.clone();
            }
            return Ok((f.clone(), false));
        }
        if map.len() >= self.settings.max_playlists {
            return Err(());
        }
        let (first_pass, _) = tokio::sync::watch::channel(false);
        let f = Arc::new(Follower {
            key: key.clone(),
            url: Mutex::new(url.clone()),
            last_request_ms: AtomicU64::new(now),
            published: Mutex::new(Published::Pending),
            first_pass,
            task: Mutex::new(None),
        });
        map.insert(key, f.clone());
        drop(map);
        let task = tokio::spawn(self.clone().follow(f.clone()));
        *lock(&f.task) = Some(task.abort_handle());
        tracing::info!(playlist = %f.key, "integrity: following");
        Ok((f, true))
    }

    /// The follower's task: polls until idle.
    async fn follow(self: Arc<Self>, f: Arc<Follower>) {
        let mut window = Window::default();
        let mut ever_ok = false;
        let mut ticker = tokio::time::interval(self.settings.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let idle_ms = self
                .now_ms()
                .saturating_sub(f.last_request_ms.load(Relaxed));
            if u128::from(idle_ms) > self.settings.idle.as_millis() {
                break;
            }
            if !window.ended() {
                let url = lock(&f.url).clone();
                match self.fetch_playlist(&url).await {
                    Ok(pl) => {
                        ever_ok = true;
                        if window.update(&pl, &self.settings.prefixes, Instant::now()) {
                            self.publish(&f, &window);
                        }
                    }
                    Err(e) => {
                        self.metrics.playlist_errors.inc();
                        tracing::debug!(playlist = %f.key, "integrity: playlist: {e}");
                        if !ever_ok {
                            *lock(&f.published) = Published::Failed(e.to_string());
                        }
                    }
                }
            }
            if ever_ok {
                self.hash_pending(&f, &mut window).await;
                if !matches!(*lock(&f.published), Published::Ready { .. }) {
                    self.publish(&f, &window);
                }
            }
            f.first_pass.send_replace(true);
        }
        tracing::info!(playlist = %f.key, "integrity: idle, stopped");
        let mut map = lock(&self.followers);
        if map.get(&f.key).is_some_and(|g| Arc::ptr_eq(g, &f)) {
            map.remove(&f.key);
        }
    }

    /// Fetches and hashes the pending segments, [`SEGMENT_CONCURRENCY`] at a time.
    async fn hash_pending(&self, f: &Follower, window: &mut Window) {
        let jobs = window.jobs();
        if jobs.is_empty() {
            return;
        }
        let mut results = futures_util::stream::iter(jobs)
            .map(|job| async move {
                let r = self.fetch_segment(&job).await;
                (job, r)
            })
            .buffer_unordered(SEGMENT_CONCURRENCY);
        let mut latencies = Vec::new();
        let mut last_publish = Instant::now();
        while let Some((job, r)) = results.next().await {
            match r {
                Ok(seg) => {
                    if let Some(t) = window.hashed(&job, seg) {
                        latencies.push(t);
                    }
                }
                Err(e) => {
                    self.metrics.segment_errors.inc();
                    tracing::debug!(seq = job.seq, url = %job.url, "integrity: segment: {e}");
                    window.failed(&job, matches!(e, FetchError::TooLarge(_)));
                }
            }
            if last_publish.elapsed() >= REPUBLISH_EVERY && !latencies.is_empty() {
                self.publish(f, window);
                self.record(&mut latencies);
                last_publish = Instant::now();
            }
        }
        if !latencies.is_empty() {
            self.publish(f, window);
            self.record(&mut latencies);
        }
    }

    fn record(&self, listed: &mut Vec<Instant>) {
        let now = Instant::now();
        for t in listed.drain(..) {
            self.metrics
                .publish_latency(now.saturating_duration_since(t));
        }
    }

    fn publish(&self, f: &Follower, window: &Window) {
        let body = window.manifest().to_json();
        let digest = Sha256::digest(body.as_bytes());
        let tag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let etag = HeaderValue::from_str(&format!("\"{tag}\""))
            .unwrap_or(HeaderValue::from_static("\"\""));
        *lock(&f.published) = Published::Ready {
            body: Bytes::from(body),
            etag,
        };
    }

    fn client(&self) -> Result<&reqwest::Client, FetchError> {
        self.client
            .as_ref()
            .ok_or_else(|| FetchError::Http("service disabled".into()))
    }

    async fn fetch_playlist(&self, url: &Url) -> Result<MediaPlaylist, FetchError> {
        self.metrics.playlist_fetches.inc();
        let resp = self
            .client()?
            .get(url.clone())
            .timeout(PLAYLIST_TIMEOUT)
            .send()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
        let body = read_body(resp, MAX_PLAYLIST_BYTES as u64).await?;
        Ok(parse_media_playlist(&body, url)?)
    }

    async fn fetch_segment(&self, job: &Job) -> Result<SegmentManifest, FetchError> {
        self.metrics.segment_fetches.inc();
        let resp = self
            .client()?
            .get(job.url.clone())
            .timeout(SEGMENT_TIMEOUT)
            .send()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
        let body = read_body(resp, MAX_SEGMENT_LEN).await;
        let body = body?;
        self.metrics.segment_bytes.inc_by(body.len() as u64);
        let uri = job.uri.clone();
        let seq = job.seq;
        // Hashing 64 MiB takes ~0.2 s: off the async workers.
        tokio::task::spawn_blocking(move || SegmentManifest::compute(seq, uri, &body))
            .await
            .map_err(|e| FetchError::Http(format!("hashing task: {e}")))
    }
}

/// Reads a 2xx body of at most `max` bytes.
async fn read_body(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, FetchError> {
    let status = resp.status();
    if !status.is_success() {
        return Err(FetchError::Status(status.as_u16()));
    }
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(FetchError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Http(e.without_url().to_string()))?
    {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(FetchError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, Deserialize)]
pub struct IntegrityQuery {
    playlist: Option<String>,
}

fn answer(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (status, format!("{}\n", msg.into())).into_response();
    common_headers(r.headers_mut());
    r
}

fn common_headers(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// `GET /integrity?playlist=<URL>`. In a cluster, the node that owns the playlist (rendezvous
/// hash of its URL without query, as for swarms) follows it; the others ask it over NATS, so
/// the origin sees one fetch of each segment however many nodes are asked. When the owner
/// cannot be reached (NATS away, owner just died), this node answers itself.
pub async fn handler(
    State(state): State<AppState>,
    query: Result<Query<IntegrityQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let svc = state.integrity().clone();
    if !svc.enabled() {
        return answer(StatusCode::NOT_FOUND, "integrity service not enabled");
    }
    let Some(raw) = query.ok().and_then(|Query(q)| q.playlist) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "missing ?playlist=<media playlist URL>",
        );
    };
    let url = match svc.check_url(&raw) {
        Ok(u) => u,
        Err((status, why)) => return answer(status, why),
    };
    let mut found = None;
    if let Some(c) = state.cluster() {
        let owner = c.owner(&owner_key(&url));
        if owner != c.node() {
            match c.integrity_request(owner, &url).await {
                Ok(l) => found = Some(l),
                Err(e) => {
                    tracing::debug!(owner, error = %e, "integrity: owner unreachable, answering here");
                }
            }
        }
    }
    let found = match found {
        Some(l) => l,
        None => svc.lookup(&url).await,
    };
    match found {
        Err(AtCap) => {
            let mut r = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "integrity service follows its maximum of playlists; retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
            r
        }
        Ok(Published::Failed(msg)) => answer(
            StatusCode::BAD_GATEWAY,
            format!("cannot follow this playlist: {msg}"),
        ),
        Ok(Published::Pending) => {
            // First pass still running: an empty manifest (clients poll again).
            json(Bytes::from(Manifest::default().to_json()), None, &headers)
        }
        Ok(Published::Ready { body, etag }) => json(body, Some(etag), &headers),
    }
}

/// The key a playlist's owner is chosen by (its URL without query and fragment).
pub(crate) fn owner_key(url: &Url) -> String {
    strip(url).to_string()
}

fn json(body: Bytes, etag: Option<HeaderValue>, req: &HeaderMap) -> Response {
    let not_modified = etag.as_ref().is_some_and(|e| {
        req.get_all(header::IF_NONE_MATCH).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == e)
            })
        })
    });
    let mut r = if not_modified {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Body::from(body))
    };
    let h = r.headers_mut();
    common_headers(h);
    if !not_modified {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(e) = etag {
        h.insert(header::ETAG, e);
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn base() -> Url {
        Url::parse("https://cdn.example/live/720p.m3u8?token=abc").unwrap()
    }

    fn allowed() -> Prefixes {
        Prefixes::parse(&["https://cdn.example/live/".into()]).unwrap()
    }

    #[test]
    fn parses_a_live_playlist() {
        let pl = parse_media_playlist(
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:41\n#EXTINF:2.0,\nseg41.ts\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:100@0\nall.ts\n#EXTINF:2,\nhttps://other.example/x.ts\n",
            &base(),
        )
        .unwrap();
        assert!(!pl.ended);
        let seqs: Vec<_> = pl.segments.iter().map(|s| (s.seq, s.byterange)).collect();
        assert_eq!(seqs, [(41, false), (42, true), (43, false)]);
        assert_eq!(
            pl.segments[0].url.as_ref().unwrap().as_str(),
            "https://cdn.example/live/seg41.ts"
        );
    }

    #[test]
    fn refuses_garbage_and_master_playlists() {
        let b = base();
        assert_eq!(
            parse_media_playlist(b"<html>", &b),
            Err(PlaylistError::NoHeader)
        );
        assert_eq!(
            parse_media_playlist(&[0xff, 0xfe], &b),
            Err(PlaylistError::NotUtf8)
        );
        assert_eq!(
            parse_media_playlist(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n", &b),
            Err(PlaylistError::Master)
        );
        assert_eq!(
            parse_media_playlist(b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:x\n", &b),
            Err(PlaylistError::BadMediaSequence)
        );
        assert_eq!(
            parse_media_playlist(
                format!(
                    "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:{}\n#EXTINF:1,\na\n#EXTINF:1,\nb\n",
                    u64::MAX
                )
                .as_bytes(),
                &b
            ),
            Err(PlaylistError::SeqOverflow)
        );
        assert_eq!(
            parse_media_playlist(b"#EXTM3U\nseg.ts\n", &b),
            Err(PlaylistError::UriWithoutExtinf(2))
        );
    }

    #[test]
    fn prefixes_need_a_path() {
        assert!(Prefixes::parse(&["https://cdn.example".into()]).is_err());
        assert!(Prefixes::parse(&["ftp://cdn.example/".into()]).is_err());
        let p = allowed();
        let ok = |s: &str| p.allows(&Url::parse(s).unwrap());
        assert!(ok("https://cdn.example/live/a.m3u8"));
        assert!(ok("https://CDN.example/live/x/../a.m3u8"));
        assert!(!ok("https://cdn.example/vod/a.m3u8"));
        assert!(!ok("https://cdn.example/live/../vod/a.m3u8"));
        assert!(!ok("https://cdn.example@evil.example/live/a.m3u8"));
    }

    fn live(first: u64, n: u64, name: impl Fn(u64) -> String) -> MediaPlaylist {
        let mut s = format!("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
        for seq in first..first + n {
            s += &format!("#EXTINF:1,\n{}\n", name(seq));
        }
        parse_media_playlist(s.as_bytes(), &base()).unwrap()
    }

    #[test]
    fn window_slides_rehashes_and_retries() {
        let t0 = Instant::now();
        let mut w = Window::default();
        let name = |s| format!("seg{s}.ts");
        w.update(&live(0, 3, name), &allowed(), t0);
        let jobs = w.jobs();
        assert_eq!(jobs.len(), 3);
        for j in &jobs {
            assert_eq!(
                w.hashed(j, SegmentManifest::compute(j.seq, &j.uri, b"x")),
                Some(t0)
            );
        }
        assert!(w.jobs().is_empty());
        // A fresh token on the same segments is not a new segment.
        w.update(&live(0, 3, |s| format!("seg{s}.ts?t=2")), &allowed(), t0);
        assert!(w.jobs().is_empty());
        // Another path for seq 2: re-hashed.
        w.update(
            &live(0, 3, |s| {
                format!("seg{s}{}.ts", if s == 2 { "b" } else { "" })
            }),
            &allowed(),
            t0,
        );
        assert_eq!(w.jobs().iter().map(|j| j.seq).collect::<Vec<_>>(), [2]);
        // Failures are retried a bounded number of times.
        let j = w.jobs()[0].clone();
        for _ in 0..SEGMENT_ATTEMPTS {
            w.failed(&j, false);
        }
        assert!(w.jobs().is_empty());
        // The window slides: entries far behind are dropped, the margin kept.
        w.update(&live(20, 2, name), &allowed(), t0);
        assert!(w.is_empty());
        w.update(&live(5, 2, name), &allowed(), t0);
        assert_eq!(w.jobs().len(), 2);
    }
}
