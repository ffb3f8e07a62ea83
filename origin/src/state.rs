//! Configuration and shared state: the media folder, the live and synthetic streams, the caches,
//! the byte counters and the clock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::cache::{BlobCache, BlobKey, HASH_CACHE_ENTRIES, HashCache, SegHash};
use crate::error::OriginError;
use crate::paths;
use crate::playlist::{self, Parsed, Timeline};
use crate::stats::Stats;

/// Source of "now". Injected so tests can move time; production uses [`system_clock`].
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// Largest file the origin reads into memory to serve (HLS segments are far smaller).
pub const MAX_FILE_LEN: u64 = protocol::manifest::MAX_SEGMENT_LEN;
/// Largest live window.
pub const MAX_WINDOW: usize = 1000;

/// `NAME=RATE_KBPS:SEG_SECS`, e.g. `bench=2000:2` (2 Mbit/s, 2 s segments of 500 000 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSpec {
    pub name: String,
    pub rate_kbps: u64,
    pub seg_ms: u64,
}

impl SyntheticSpec {
    /// Segment size in bytes: rate × duration.
    pub fn segment_len(&self) -> u64 {
        self.rate_kbps.saturating_mul(self.seg_ms) / 8
    }
}

impl FromStr for SyntheticSpec {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, OriginError> {
        let bad = |reason: &str| OriginError::BadSynthetic {
            spec: s.to_string(),
            reason: reason.into(),
        };
        let (name, rest) = s.split_once('=').ok_or_else(|| bad("missing '='"))?;
        paths::check_component(name).map_err(|_| bad("bad stream name"))?;
        let (rate, secs) = rest.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        let rate_kbps: u64 = rate
            .trim()
            .parse()
            .map_err(|_| bad("rate is not an integer"))?;
        let secs: f64 = secs
            .trim()
            .parse()
            .map_err(|_| bad("segment duration is not a number"))?;
        if !(secs.is_finite() && (0.1..=60.0).contains(&secs)) {
            return Err(bad("segment duration must be within 0.1..=60 s"));
        }
        let spec = SyntheticSpec {
            name: name.to_string(),
            rate_kbps,
            seg_ms: (secs * 1000.0).round() as u64,
        };
        if spec.segment_len() == 0 || spec.segment_len() > protocol::manifest::MAX_SEGMENT_LEN {
            return Err(bad(
                "segment size (rate × duration) must be within 1 B..=64 MiB",
            ));
        }
        Ok(spec)
    }
}

/// Origin configuration.
#[derive(Clone)]
pub struct Config {
    /// Folder of VOD streams, one per sub-folder. `None`: only synthetic streams.
    pub media_dir: Option<PathBuf>,
    /// Sub-folders of `media_dir` also published as looping live streams.
    pub live: Vec<String>,
    pub synthetic: Vec<SyntheticSpec>,
    /// CORS origins (`*` for any); empty: no CORS headers.
    pub allow_origins: Vec<String>,
    /// Segments in a live playlist.
    pub window: usize,
    /// Byte budget of the segment cache.
    pub cache_bytes: usize,
    pub clock: Clock,
    /// Longest wait for a complete request head (from accept, or from the previous response on
    /// a keep-alive connection: so also the keep-alive idle limit).
    pub header_timeout: std::time::Duration,
    /// A connection on which no byte moves either way for this long is closed.
    pub idle_timeout: std::time::Duration,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` are believed (for logs and the local-only
    /// admin check).
    pub trusted_proxies: Vec<http_guard::IpNet>,
    /// Token for the operator endpoints (`/stats`, `POST /stats/reset`, the stream list of
    /// `/`); without it they answer local requests only.
    pub admin_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            media_dir: None,
            live: Vec::new(),
            synthetic: Vec::new(),
            allow_origins: Vec::new(),
            window: 6,
            cache_bytes: 256 * 1024 * 1024,
            clock: system_clock(),
            header_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            admin_token: None,
        }
    }
}

/// One media playlist of a live stream.
pub struct LivePlaylist {
    /// Folder of the playlist inside the stream, `""` or ending in `/`.
    pub dir: String,
    pub stem: String,
    /// Segment files in playlist order: (canonical path, extension).
    pub files: Vec<(PathBuf, String)>,
    pub timeline: Timeline,
    pub map_uri: Option<String>,
    pub target_duration: u64,
}

impl LivePlaylist {
    pub fn segment_uri(&self, seq: u64) -> String {
        let ext = &self.files[(seq % self.timeline.len()) as usize].1;
        playlist::live_segment_name(&self.stem, seq, ext)
    }
}

pub struct LiveStream {
    pub label: Arc<str>,
    pub dir: PathBuf,
    /// By path of the `.m3u8` inside the stream folder.
    pub playlists: HashMap<String, LivePlaylist>,
    pub epoch: SystemTime,
}

pub struct SyntheticStream {
    pub label: Arc<str>,
    pub name: Arc<str>,
    pub spec: SyntheticSpec,
    pub timeline: Timeline,
    pub epoch: SystemTime,
}

impl SyntheticStream {
    /// Segment `seq`'s bytes: ChaCha8 keyed by SHA-256 of (name, rate, duration, seq), so they
    /// depend only on the spec and the sequence number, on every machine and every run.
    pub fn generate(&self, seq: u64) -> Bytes {
        let seed = protocol::manifest::sha256(
            format!(
                "p2p-cdn synthetic\0{}\0{}\0{}\0{seq}",
                self.name, self.spec.rate_kbps, self.spec.seg_ms
            )
            .as_bytes(),
        );
        let mut rng = ChaCha8Rng::from_seed(seed);
        let mut buf = vec![0u8; self.spec.segment_len() as usize];
        rng.fill_bytes(&mut buf);
        Bytes::from(buf)
    }
}

struct Inner {
    media_root: Option<PathBuf>,
    live: HashMap<String, Arc<LiveStream>>,
    synthetic: HashMap<String, Arc<SyntheticStream>>,
    window: usize,
    clock: Clock,
    allow_origins: Vec<String>,
    timeouts: http_guard::Timeouts,
    proxies: http_guard::TrustedProxies,
    admin: http_guard::AdminAccess,
    blobs: BlobCache,
    hashes: HashCache,
    stats: Arc<Stats>,
}

/// Shared state of the router (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Validates the configuration: the media folder exists, every live stream has a valid media
    /// playlist whose segments exist inside its folder, synthetic names are unique.
    pub fn new(config: Config) -> Result<Self, OriginError> {
        if config.window == 0 || config.window > MAX_WINDOW {
            return Err(OriginError::LiveStream {
                stream: String::new(),
                reason: format!("window must be within 1..={MAX_WINDOW}"),
            });
        }
        for o in &config.allow_origins {
            if o != "*" && axum::http::HeaderValue::from_str(o).is_err() {
                return Err(OriginError::BadAllowOrigin(o.clone()));
            }
        }
        if config.header_timeout.is_zero() || config.idle_timeout.is_zero() {
            return Err(OriginError::Config(
                "header and idle timeouts must be > 0".into(),
            ));
        }
        if config
            .admin_token
            .as_deref()
            .is_some_and(|t| t.len() < http_guard::admin::MIN_TOKEN_LEN)
        {
            return Err(OriginError::Config(
                "the admin token must be at least 16 bytes".into(),
            ));
        }
        let proxies = http_guard::TrustedProxies::new(config.trusted_proxies.iter().copied());
        let media_root = match &config.media_dir {
            Some(d) => {
                let c =
                    std::fs::canonicalize(d).map_err(|_| OriginError::MissingFolder(d.clone()))?;
                if !c.is_dir() {
                    return Err(OriginError::MissingFolder(d.clone()));
                }
                Some(c)
            }
            None => None,
        };
        let now = (config.clock)();
        let mut live = HashMap::new();
        for name in &config.live {
            let root = media_root
                .as_deref()
                .ok_or_else(|| OriginError::LiveStream {
                    stream: name.clone(),
                    reason: "--live needs --media-dir".into(),
                })?;
            let s = load_live(root, name, now, config.window)?;
            live.insert(name.clone(), Arc::new(s));
        }
        let mut synthetic = HashMap::new();
        for spec in &config.synthetic {
            let timeline =
                Timeline::new(vec![spec.seg_ms]).ok_or_else(|| OriginError::BadSynthetic {
                    spec: spec.name.clone(),
                    reason: "zero duration".into(),
                })?;
            let s = SyntheticStream {
                label: Arc::from(format!("synthetic/{}", spec.name)),
                name: Arc::from(spec.name.as_str()),
                epoch: playlist::epoch_for(now, &timeline, config.window),
                timeline,
                spec: spec.clone(),
            };
            if synthetic.insert(spec.name.clone(), Arc::new(s)).is_some() {
                return Err(OriginError::BadSynthetic {
                    spec: spec.name.clone(),
                    reason: "name used twice".into(),
                });
            }
        }
        Ok(AppState(Arc::new(Inner {
            media_root,
            live,
            synthetic,
            window: config.window,
            clock: config.clock,
            allow_origins: config.allow_origins,
            timeouts: http_guard::Timeouts {
                header: config.header_timeout,
                idle: config.idle_timeout,
            },
            admin: http_guard::AdminAccess::new(config.admin_token, proxies.clone()),
            proxies,
            blobs: BlobCache::new(config.cache_bytes),
            hashes: HashCache::new(HASH_CACHE_ENTRIES),
            stats: Arc::new(Stats::default()),
        })))
    }

    pub fn now(&self) -> SystemTime {
        (self.0.clock)()
    }
    pub fn window(&self) -> usize {
        self.0.window
    }
    pub fn media_root(&self) -> Option<&Path> {
        self.0.media_root.as_deref()
    }
    pub fn live(&self, name: &str) -> Option<&Arc<LiveStream>> {
        self.0.live.get(name)
    }
    pub fn live_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.0.live.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
    pub fn synthetic(&self, name: &str) -> Option<&Arc<SyntheticStream>> {
        self.0.synthetic.get(name)
    }
    pub fn synthetic_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.0.synthetic.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
    pub fn allow_origins(&self) -> &[String] {
        &self.0.allow_origins
    }
    pub fn timeouts(&self) -> http_guard::Timeouts {
        self.0.timeouts
    }
    /// Whether a request from socket peer `peer` may use the operator endpoints.
    pub fn admin_check(
        &self,
        peer: Option<std::net::IpAddr>,
        headers: &axum::http::HeaderMap,
    ) -> Result<(), http_guard::admin::Denied> {
        self.0.admin.check(peer, headers)
    }
    /// `--trusted-proxy`: whose forwarding headers are believed.
    pub fn proxies(&self) -> &http_guard::TrustedProxies {
        &self.0.proxies
    }
    pub fn stats(&self) -> &Arc<Stats> {
        &self.0.stats
    }
    pub fn cache_usage(&self) -> (usize, usize, usize) {
        let (n, b) = self.0.blobs.usage();
        (n, b, self.0.hashes.len())
    }

    /// A file's bytes, through the segment cache.
    pub async fn file_bytes(&self, path: &Path) -> Result<(BlobKey, Bytes), OriginError> {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| OriginError::io(path, e))?;
        if !meta.is_file() {
            return Err(OriginError::NotFound("not a file".into()));
        }
        if meta.len() > MAX_FILE_LEN {
            return Err(OriginError::Internal(format!(
                "{} is over {MAX_FILE_LEN} bytes",
                path.display()
            )));
        }
        let key = BlobKey::file(path.to_path_buf(), &meta);
        if let Some(b) = self.0.blobs.get(&key) {
            return Ok((key, b));
        }
        let data = Bytes::from(
            tokio::fs::read(path)
                .await
                .map_err(|e| OriginError::io(path, e))?,
        );
        if data.len() as u64 != meta.len() {
            // Changed between stat and read: serve what we read, don't cache under a stale key.
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|e| OriginError::io(path, e))?;
            return Ok((BlobKey::file(path.to_path_buf(), &meta), data));
        }
        self.0.blobs.insert(key.clone(), data.clone());
        Ok((key, data))
    }

    /// A file's integrity data, hashed once while it stays in the hash cache. Hashing a file
    /// does not put its bytes in the segment cache (a long VOD's sidecar would flush it).
    pub async fn file_hash(&self, path: &Path) -> Result<Arc<SegHash>, OriginError> {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| OriginError::io(path, e))?;
        if !meta.is_file() || meta.len() > MAX_FILE_LEN {
            return Err(OriginError::NotFound(format!(
                "{}: not a servable file",
                path.display()
            )));
        }
        let key = BlobKey::file(path.to_path_buf(), &meta);
        if let Some(h) = self.0.hashes.get(&key) {
            return Ok(h);
        }
        let data = match self.0.blobs.get(&key) {
            Some(b) => b,
            None => Bytes::from(
                tokio::fs::read(path)
                    .await
                    .map_err(|e| OriginError::io(path, e))?,
            ),
        };
        let key = if data.len() as u64 == meta.len() {
            key
        } else {
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|e| OriginError::io(path, e))?;
            BlobKey::file(path.to_path_buf(), &meta)
        };
        let h = Arc::new(hash_blocking(data).await?);
        self.0.hashes.insert(key, h.clone());
        Ok(h)
    }

    pub async fn synthetic_bytes(
        &self,
        s: &Arc<SyntheticStream>,
        seq: u64,
    ) -> Result<Bytes, OriginError> {
        let key = BlobKey::Synthetic {
            stream: s.name.clone(),
            seq,
        };
        if let Some(b) = self.0.blobs.get(&key) {
            return Ok(b);
        }
        let s2 = s.clone();
        let data = tokio::task::spawn_blocking(move || s2.generate(seq))
            .await
            .map_err(|e| OriginError::Internal(e.to_string()))?;
        self.0.blobs.insert(key, data.clone());
        Ok(data)
    }

    pub async fn synthetic_hash(
        &self,
        s: &Arc<SyntheticStream>,
        seq: u64,
    ) -> Result<Arc<SegHash>, OriginError> {
        let key = BlobKey::Synthetic {
            stream: s.name.clone(),
            seq,
        };
        if let Some(h) = self.0.hashes.get(&key) {
            return Ok(h);
        }
        let data = self.synthetic_bytes(s, seq).await?;
        let h = Arc::new(hash_blocking(data).await?);
        self.0.hashes.insert(key, h.clone());
        Ok(h)
    }
}

async fn hash_blocking(data: Bytes) -> Result<SegHash, OriginError> {
    tokio::task::spawn_blocking(move || SegHash::of(&data))
        .await
        .map_err(|e| OriginError::Internal(e.to_string()))
}

/// Loads every media playlist of a live stream folder.
fn load_live(
    root: &Path,
    name: &str,
    now: SystemTime,
    window: usize,
) -> Result<LiveStream, OriginError> {
    let err = |reason: String| OriginError::LiveStream {
        stream: name.to_string(),
        reason,
    };
    paths::check_component(name).map_err(|e| err(e.to_string()))?;
    let dir = std::fs::canonicalize(root.join(name))
        .map_err(|_| err(format!("no folder {name:?} in the media folder")))?;
    if !dir.is_dir() || !dir.starts_with(root) {
        return Err(err("not a folder inside the media folder".into()));
    }
    let mut playlists = HashMap::new();
    for entry in walkdir::WalkDir::new(&dir).max_depth(4).sort_by_file_name() {
        let entry = entry.map_err(|e| err(e.to_string()))?;
        if !entry.file_type().is_file() || entry.path().extension().is_none_or(|e| e != "m3u8") {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(&dir)
            .map_err(|e| err(e.to_string()))?
            .to_str()
            .ok_or_else(|| err("non UTF-8 file name".into()))?
            .replace('\\', "/");
        let text = std::fs::read(entry.path()).map_err(|e| OriginError::io(entry.path(), e))?;
        let src = match playlist::parse(entry.path(), &text)? {
            Parsed::Master => continue,
            Parsed::Media(m) => m,
        };
        let bad = |reason: String| OriginError::BadPlaylist {
            path: entry.path().to_path_buf(),
            reason,
        };
        if src.segments.is_empty() {
            return Err(bad("no segments".into()));
        }
        if src.several_maps {
            return Err(bad("several EXT-X-MAP: not supported for live".into()));
        }
        let (pdir, file) = paths::split_dir(&rel);
        let stem = file.trim_end_matches(".m3u8").to_string();
        let mut files = Vec::with_capacity(src.segments.len());
        for s in &src.segments {
            if s.dur_ms == 0 {
                return Err(bad(format!("segment {:?} has a zero duration", s.uri)));
            }
            let srel = paths::join_playlist_uri(pdir, &s.uri).map_err(&bad)?;
            let path = paths::resolve_blocking(&dir, &srel)
                .map_err(|e| bad(format!("segment {:?}: {e}", s.uri)))?;
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("bin")
                .to_ascii_lowercase();
            files.push((path, ext));
        }
        if let Some(map) = &src.map_uri {
            let mrel = paths::join_playlist_uri(pdir, map).map_err(&bad)?;
            paths::resolve_blocking(&dir, &mrel)
                .map_err(|e| bad(format!("EXT-X-MAP {map:?}: {e}")))?;
        }
        let timeline = Timeline::new(src.segments.iter().map(|s| s.dur_ms).collect())
            .ok_or_else(|| bad("bad durations".into()))?;
        playlists.insert(
            rel.clone(),
            LivePlaylist {
                dir: pdir.to_string(),
                stem,
                files,
                timeline,
                map_uri: src.map_uri,
                target_duration: src.target_duration,
            },
        );
    }
    if playlists.is_empty() {
        return Err(err("no media playlist (.m3u8) in the folder".into()));
    }
    // One epoch for every playlist of the stream so variants stay aligned; early enough that
    // every playlist already has a full window.
    let epoch = playlists
        .values()
        .map(|p| playlist::epoch_for(now, &p.timeline, window))
        .min()
        .unwrap_or(now);
    Ok(LiveStream {
        label: Arc::from(format!("live/{name}")),
        dir,
        playlists,
        epoch,
    })
}
