//! HLS origin for the P2P CDN.
//!
//! Serves, under one [`router`]:
//!
//! | URL | what |
//! | --- | --- |
//! | `/vod/<stream>/<path>` | files of `<media-dir>/<stream>/` (playlists, segments, init) |
//! | `/vod/<stream>/<dir>/<name>.integrity.json` | integrity sidecar of `<name>.m3u8` |
//! | `/live/<stream>/<path>.m3u8` | sliding-window live playlist looping a VOD folder |
//! | `/live/<stream>/<dir>/seg_<seq>.<ext>` | live segment `seq` (= file `seq % n`) |
//! | `/live/<stream>/<dir>/<name>.integrity.json` | sidecar of the current live window |
//! | `/synthetic/<name>/index.m3u8`, `seg_<seq>.bin`, `index.integrity.json` | generated stream |
//! | `/healthz`, `/metrics` | operations (public) |
//! | `/stats`, `POST /stats/reset` | operations (admin) |
//!
//! Admin: `/stats`, `POST /stats/reset` and the stream list of `/`. With an admin token
//! (`--admin-token`) they need `Authorization: Bearer <token>`; without one (the default) they
//! answer local requests only (a loopback client, not forwarded by a proxy that was not declared
//! with `--trusted-proxy`). `/healthz` and `/metrics` stay public for load balancers and
//! Prometheus scrapers on other hosts; the metrics' labels are bounded to the configured streams
//! and existing VOD folders, which are public URLs anyway.
//!
//! Integrity sidecar convention (normative): for a media playlist `<dir>/<name>.m3u8` the sidecar
//! is `<dir>/<name>.integrity.json`, in [`protocol::Manifest::to_json`] format, keyed by media
//! sequence number, listing every segment currently in that playlist.

pub mod cache;
pub mod error;
pub mod paths;
pub mod playlist;
pub mod serve;
pub mod state;
pub mod stats;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use protocol::Manifest;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

pub use error::OriginError;
pub use state::{AppState, Clock, Config, SyntheticSpec, system_clock};

use crate::playlist::{LiveRender, Parsed};
use crate::serve::{CACHE_IMMUTABLE, CACHE_PLAYLIST, Content, classify, etag_of, respond};
use crate::stats::{Acct, CountingBody};

/// URL layout, shown by `origin --help` and `GET /`.
pub const URL_LAYOUT: &str = "\
URL layout:
  /vod/<stream>/<path>                     files of <media-dir>/<stream>/ (Range, HEAD, ETag)
  /vod/<stream>/<dir>/<name>.integrity.json  integrity sidecar of media playlist <name>.m3u8
  /live/<stream>/<path>.m3u8               live (looping, sliding window) version of a playlist
  /live/<stream>/<dir>/seg_<seq>.<ext>     live segment <seq> (file seq % n; for a playlist
                                           not named index: <name>_seg_<seq>.<ext>)
  /live/<stream>/<dir>/<name>.integrity.json  sidecar of the current live window
  /synthetic/<name>/index.m3u8             generated live stream; seg_<seq>.bin, index.integrity.json
  /healthz                                 liveness
  /metrics                                 Prometheus text: bytes and requests per stream and kind
  /stats                                   (admin) JSON snapshot; POST /stats/reset returns it and
                                           zeroes it
Admin endpoints (/stats, /stats/reset, the stream list of /) need Authorization: Bearer
<--admin-token>; without a token they answer local requests only (loopback, not forwarded by a
proxy missing from --trusted-proxy)
Sidecar convention: <dir>/<name>.m3u8 -> <dir>/<name>.integrity.json (protocol::Manifest JSON,
keyed by media sequence number, every segment currently listed).";

/// Builds the HTTP router.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/stats", get(stats_json))
        .route("/stats/reset", post(stats_reset))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_only));
    let mut r = Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(admin)
        .route("/vod/{stream}/{*path}", get(vod))
        .route("/live/{stream}/{*path}", get(live))
        .route("/synthetic/{name}/{*path}", get(synthetic))
        .layer(middleware::from_fn_with_state(state.clone(), account));
    if let Some(cors) = cors_layer(state.allow_origins()) {
        r = r.layer(cors);
    }
    // Request spans carry the client: the socket address, or the forwarded one from a trusted
    // proxy.
    let proxies = state.proxies().clone();
    let trace = TraceLayer::new_for_http().make_span_with(move |req: &Request| {
        let client = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(
                || "-".to_owned(),
                |ci| proxies.client_ip(ci.0.ip(), req.headers()).to_string(),
            );
        tracing::debug_span!(
            target: "tower_http::trace::make_span",
            "request",
            method = %req.method(),
            uri = %req.uri(),
            client = %client,
        )
    });
    r.layer(trace).with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Validated in AppState::new.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
            .allow_headers([header::RANGE, header::IF_NONE_MATCH, header::IF_RANGE])
            .expose_headers([
                header::CONTENT_LENGTH,
                header::CONTENT_RANGE,
                header::ETAG,
                header::ACCEPT_RANGES,
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Counts tagged responses: one request now, the body bytes as they are sent.
async fn account(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let Some(acct) = resp.extensions().get::<Acct>().cloned() else {
        return resp;
    };
    st.stats().add(&acct, 1, 0);
    let stats = st.stats().clone();
    resp.map(|inner| axum::body::Body::new(CountingBody { inner, acct, stats }))
}

/// Builds the response and tags it for accounting (error bodies of a known stream count too).
fn finish(
    method: &Method,
    headers: &HeaderMap,
    acct: Acct,
    res: Result<Content, OriginError>,
) -> Response {
    let mut r = match res {
        Ok(c) => respond(method, headers, c),
        Err(e) => e.into_response(),
    };
    r.extensions_mut().insert(acct);
    r
}

/// The socket peer of a request (set by [`serve`]; absent under `oneshot` unless a test adds it).
fn peer_of(req: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    req.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Lets a request through to an admin route only with the admin token, or from this host when
/// no token is configured.
async fn admin_only(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let peer = peer_of(req.extensions());
    match st.admin_check(peer, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => {
            tracing::debug!(?peer, uri = %req.uri(), ?denied, "admin request refused");
            denied.into_response()
        }
    }
}

/// The URL layout; the configured streams only for the operator (see [`admin_only`]).
async fn index(State(st): State<AppState>, req: Request) -> String {
    if st
        .admin_check(peer_of(req.extensions()), req.headers())
        .is_err()
    {
        return format!("P2P CDN origin\n\n{URL_LAYOUT}\n");
    }
    format!(
        "P2P CDN origin\nlive streams: {:?}\nsynthetic streams: {:?}\nmedia folder: {}\n\n{URL_LAYOUT}\n",
        st.live_names(),
        st.synthetic_names(),
        if st.media_root().is_some() {
            "yes"
        } else {
            "none"
        }
    )
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut body = st.stats().prometheus();
    let (entries, bytes, hashes) = st.cache_usage();
    body.push_str(&format!(
        "# HELP origin_segment_cache_bytes Bytes held by the segment cache.\n\
         # TYPE origin_segment_cache_bytes gauge\norigin_segment_cache_bytes {bytes}\n\
         # HELP origin_segment_cache_entries Entries in the segment cache.\n\
         # TYPE origin_segment_cache_entries gauge\norigin_segment_cache_entries {entries}\n\
         # HELP origin_hash_cache_entries Segments in the integrity hash cache.\n\
         # TYPE origin_hash_cache_entries gauge\norigin_hash_cache_entries {hashes}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn stats_json(State(st): State<AppState>) -> Json<stats::Snapshot> {
    Json(st.stats().snapshot())
}

/// Returns the counters as they were and zeroes them.
async fn stats_reset(State(st): State<AppState>) -> Json<stats::Snapshot> {
    Json(st.stats().take())
}

fn text_content(body: String, content_type: &'static str) -> Content {
    let bytes = Bytes::from(body);
    Content {
        etag: etag_of(&bytes),
        bytes,
        content_type,
        cache_control: CACHE_PLAYLIST,
    }
}

fn manifest_content(m: &Manifest) -> Content {
    text_content(m.to_json(), "application/json")
}

/// A static file of a stream folder.
async fn static_file(st: &AppState, base: &Path, rel: &str) -> Result<Content, OriginError> {
    let path = paths::resolve(base, rel).await?;
    let (key, bytes) = st.file_bytes(&path).await?;
    let (content_type, kind) = classify(rel);
    Ok(Content {
        bytes,
        etag: key.etag(),
        content_type,
        cache_control: serve::cache_for(kind),
    })
}

// ---------------------------------------------------------------- VOD

async fn vod(
    State(st): State<AppState>,
    UrlPath((stream, rel)): UrlPath<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let dir = match vod_stream_dir(&st, &stream).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let acct = Acct {
        stream: Arc::from(format!("vod/{stream}")),
        kind: classify(&rel).1,
    };
    let res = vod_content(&st, &dir, &rel).await;
    finish(&method, &headers, acct, res)
}

async fn vod_stream_dir(st: &AppState, stream: &str) -> Result<std::path::PathBuf, OriginError> {
    let root = st
        .media_root()
        .ok_or_else(|| OriginError::NotFound("no media folder configured".into()))?;
    paths::check_component(stream)?;
    let dir = paths::resolve(root, stream).await?;
    if !tokio::fs::metadata(&dir)
        .await
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(OriginError::NotFound(format!("stream {stream:?}")));
    }
    Ok(dir)
}

async fn vod_content(st: &AppState, dir: &Path, rel: &str) -> Result<Content, OriginError> {
    paths::check_rel(rel)?;
    if let Some(base) = rel.strip_suffix(".integrity.json") {
        let pl_rel = format!("{base}.m3u8");
        if let Ok(pl_path) = paths::resolve(dir, &pl_rel).await {
            let m = vod_manifest(st, dir, &pl_rel, &pl_path).await?;
            return Ok(manifest_content(&m));
        }
    }
    static_file(st, dir, rel).await
}

/// The sidecar of a VOD media playlist: every segment, seq = EXT-X-MEDIA-SEQUENCE + index.
async fn vod_manifest(
    st: &AppState,
    dir: &Path,
    pl_rel: &str,
    pl_path: &Path,
) -> Result<Manifest, OriginError> {
    let (_, text) = st.file_bytes(pl_path).await?;
    let src = match playlist::parse(Path::new(pl_rel), &text)? {
        Parsed::Master => {
            return Err(OriginError::NotFound(
                "a master playlist has no sidecar; use a media playlist's".into(),
            ));
        }
        Parsed::Media(m) => m,
    };
    let (pdir, _) = paths::split_dir(pl_rel);
    let bad = |reason: String| OriginError::BadPlaylist {
        path: pl_rel.into(),
        reason,
    };
    let mut segments = Vec::with_capacity(src.segments.len());
    for (i, s) in src.segments.iter().enumerate() {
        let srel = paths::join_playlist_uri(pdir, &s.uri).map_err(bad)?;
        let path = paths::resolve(dir, &srel)
            .await
            .map_err(|e| bad(format!("segment {:?}: {e}", s.uri)))?;
        let h = st.file_hash(&path).await?;
        segments.push(h.manifest(src.media_sequence + i as u64, s.uri.clone()));
    }
    Ok(Manifest { segments })
}

// ---------------------------------------------------------------- live

async fn live(
    State(st): State<AppState>,
    UrlPath((stream, rel)): UrlPath<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(ls) = st.live(&stream).cloned() else {
        return OriginError::NotFound(format!("live stream {stream:?}")).into_response();
    };
    let acct = Acct {
        stream: ls.label.clone(),
        kind: classify(&rel).1,
    };
    let res = live_content(&st, &ls, &rel).await;
    finish(&method, &headers, acct, res)
}

async fn live_content(
    st: &AppState,
    ls: &state::LiveStream,
    rel: &str,
) -> Result<Content, OriginError> {
    paths::check_rel(rel)?;
    let now = st.now();
    if let Some(pl) = ls.playlists.get(rel) {
        let w = playlist::window_at(&pl.timeline, ls.epoch, now, st.window());
        let r = LiveRender {
            target_duration: pl.target_duration,
            map_uri: pl.map_uri.as_deref(),
            loops: true,
        };
        let text = playlist::render_live(&r, &pl.timeline, ls.epoch, w, |k| pl.segment_uri(k));
        return Ok(text_content(text, "application/vnd.apple.mpegurl"));
    }
    if let Some(base) = rel.strip_suffix(".integrity.json")
        && let Some(pl) = ls.playlists.get(&format!("{base}.m3u8"))
    {
        let w = playlist::window_at(&pl.timeline, ls.epoch, now, st.window());
        let mut segments = Vec::with_capacity((w.end - w.first) as usize);
        for k in w.first..w.end {
            let (path, _) = &pl.files[(k % pl.timeline.len()) as usize];
            segments.push(st.file_hash(path).await?.manifest(k, pl.segment_uri(k)));
        }
        return Ok(manifest_content(&Manifest { segments }));
    }
    let (dir, file) = paths::split_dir(rel);
    if let Some((stem, seq, ext)) = playlist::parse_live_segment_name(file)
        && let Some(pl) = ls.playlists.get(&format!("{dir}{stem}.m3u8"))
    {
        let (path, file_ext) = &pl.files[(seq % pl.timeline.len()) as usize];
        if file_ext != ext {
            return Err(OriginError::NotFound(rel.to_string()));
        }
        if seq >= playlist::window_at(&pl.timeline, ls.epoch, now, st.window()).end {
            return Err(OriginError::NotFound(format!(
                "segment {seq} is not published yet"
            )));
        }
        let (key, bytes) = st.file_bytes(path).await?;
        return Ok(Content {
            bytes,
            etag: key.etag(),
            content_type: classify(file).0,
            cache_control: CACHE_IMMUTABLE,
        });
    }
    // Init segments, master playlists and anything else: the folder's files as they are.
    static_file(st, &ls.dir, rel).await
}

// ---------------------------------------------------------------- synthetic

async fn synthetic(
    State(st): State<AppState>,
    UrlPath((name, rel)): UrlPath<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(s) = st.synthetic(&name).cloned() else {
        return OriginError::NotFound(format!("synthetic stream {name:?}")).into_response();
    };
    let acct = Acct {
        stream: s.label.clone(),
        kind: classify(&rel).1,
    };
    let res = synthetic_content(&st, &s, &rel).await;
    finish(&method, &headers, acct, res)
}

async fn synthetic_content(
    st: &AppState,
    s: &Arc<state::SyntheticStream>,
    rel: &str,
) -> Result<Content, OriginError> {
    let w = playlist::window_at(&s.timeline, s.epoch, st.now(), st.window());
    let uri = |k: u64| playlist::live_segment_name("index", k, "bin");
    match rel {
        "index.m3u8" => {
            let r = LiveRender {
                target_duration: 0,
                map_uri: None,
                loops: false,
            };
            Ok(text_content(
                playlist::render_live(&r, &s.timeline, s.epoch, w, uri),
                "application/vnd.apple.mpegurl",
            ))
        }
        "index.integrity.json" => {
            let mut segments = Vec::with_capacity((w.end - w.first) as usize);
            for k in w.first..w.end {
                segments.push(st.synthetic_hash(s, k).await?.manifest(k, uri(k)));
            }
            Ok(manifest_content(&Manifest { segments }))
        }
        _ => match playlist::parse_live_segment_name(rel) {
            Some((stem, seq, "bin")) if stem == "index" => {
                if seq >= w.end {
                    return Err(OriginError::NotFound(format!(
                        "segment {seq} is not published yet"
                    )));
                }
                let bytes = st.synthetic_bytes(s, seq).await?;
                Ok(Content {
                    bytes,
                    etag: format!("\"syn-{}-{}-{seq}\"", s.spec.rate_kbps, s.spec.seg_ms),
                    content_type: "application/octet-stream",
                    cache_control: CACHE_IMMUTABLE,
                })
            }
            _ => Err(OriginError::NotFound(rel.to_string())),
        },
    }
}

// ---------------------------------------------------------------- running

/// A running origin (see [`spawn`]).
pub struct OriginHandle {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub state: AppState,
}

impl OriginHandle {
    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Serves `state` on `listener` until `shutdown` resolves (graceful), with the header and
/// idle timeouts of its configuration (see `http_guard::serve`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeouts = state.timeouts();
    let admit = |_: SocketAddr| http_guard::Admission::Serve(());
    http_guard::serve(listener, router(state), timeouts, admit, shutdown).await
}

/// Starts an origin on `127.0.0.1:0` in the current runtime: for other crates' tests.
pub async fn spawn(config: Config) -> Result<(SocketAddr, OriginHandle), OriginError> {
    let state = AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| OriginError::io("127.0.0.1:0", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| OriginError::io("127.0.0.1:0", e))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    Ok((
        addr,
        OriginHandle {
            shutdown: Some(tx),
            task,
            state,
        },
    ))
}

// ---------------------------------------------------------------- `origin hash`

/// Writes `<name>.integrity.json` next to every media playlist under `dir` (recursively) — the
/// same sidecar the origin serves for `/vod/...` — so a static server can serve them. Returns
/// the files written. Master playlists are skipped.
pub fn write_sidecars(dir: &Path) -> Result<Vec<std::path::PathBuf>, OriginError> {
    let root =
        std::fs::canonicalize(dir).map_err(|_| OriginError::MissingFolder(dir.to_path_buf()))?;
    if !root.is_dir() {
        return Err(OriginError::MissingFolder(dir.to_path_buf()));
    }
    let mut written = Vec::new();
    for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let entry = entry.map_err(|e| OriginError::Internal(e.to_string()))?;
        let p = entry.path();
        if !entry.file_type().is_file() || p.extension().is_none_or(|e| e != "m3u8") {
            continue;
        }
        let text = std::fs::read(p).map_err(|e| OriginError::io(p, e))?;
        let src = match playlist::parse(p, &text)? {
            Parsed::Master => continue,
            Parsed::Media(m) => m,
        };
        // Segment URIs resolve relative to the playlist and may not leave the folder given.
        let rel = p
            .strip_prefix(&root)
            .map_err(|e| OriginError::Internal(e.to_string()))?;
        let rel = rel.to_string_lossy().replace('\\', "/");
        let (pdir, _) = paths::split_dir(&rel);
        let bad = |reason: String| OriginError::BadPlaylist {
            path: p.to_path_buf(),
            reason,
        };
        let mut segments = Vec::with_capacity(src.segments.len());
        for (i, s) in src.segments.iter().enumerate() {
            let srel = paths::join_playlist_uri(pdir, &s.uri).map_err(bad)?;
            let sp = paths::resolve_blocking(&root, &srel)
                .map_err(|e| bad(format!("segment {:?}: {e}", s.uri)))?;
            let data = std::fs::read(&sp).map_err(|e| OriginError::io(&sp, e))?;
            segments.push(protocol::SegmentManifest::compute(
                src.media_sequence + i as u64,
                s.uri.clone(),
                &data,
            ));
        }
        let out = p.with_extension("integrity.json");
        std::fs::write(&out, Manifest { segments }.to_json())
            .map_err(|e| OriginError::io(&out, e))?;
        written.push(out);
    }
    Ok(written)
}
