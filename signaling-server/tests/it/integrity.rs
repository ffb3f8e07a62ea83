//! The integrity service against a third-party static HTTP server (not our origin): a plain
//! axum file server over a temp dir that counts requests per path. Both on port-0 sockets.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::manifest::{Manifest, SegmentManifest};
use reqwest::Url;
use signaling_server::{Config, ServerHandle, spawn};

/// A static file server: GET <path> serves `<root><path>`; counts requests by path and keeps
/// the query of the latest one.
#[derive(Clone)]
struct Static {
    root: PathBuf,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    last_query: Arc<Mutex<HashMap<String, String>>>,
}

impl Static {
    async fn start() -> (Static, tempfile::TempDir, SocketAddr) {
        let dir = tempfile::tempdir().unwrap();
        let s = Static {
            root: dir.path().to_owned(),
            hits: Arc::default(),
            last_query: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(serve_file)
            .with_state(s.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (s, dir, addr)
    }

    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total_hits(&self) -> u32 {
        self.hits.lock().unwrap().values().sum()
    }

    /// Writes atomically (a reader never sees half a playlist).
    fn write(&self, rel: &str, data: &[u8]) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.root.join(rel)).unwrap()
    }
}

async fn serve_file(State(s): State<Static>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    *s.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    if let Some(q) = req.uri().query() {
        s.last_query
            .lock()
            .unwrap()
            .insert(path.clone(), q.to_owned());
    }
    if path.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let file: PathBuf = Path::new(&s.root).join(path.trim_start_matches('/'));
    match tokio::fs::read(&file).await {
        Ok(b) => b.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

fn config(origin: SocketAddr) -> Config {
    Config {
        integrity_origins: vec![format!("http://{origin}/allowed/")],
        ..Config::default()
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn ask(server: SocketAddr, playlist: &str, etag: Option<&str>) -> Answer {
    let url = Url::parse_with_params(
        &format!("http://{server}/integrity"),
        &[("playlist", playlist)],
    )
    .unwrap();
    let mut req = reqwest::Client::new().get(url);
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

/// Parses a 200 answer and checks every entry against the file it names.
fn check(s: &Static, dir: &str, a: &Answer) -> Manifest {
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.headers["access-control-allow-origin"], "*");
    assert_eq!(a.headers["cache-control"], "no-cache");
    let m = Manifest::from_json(&a.body).unwrap();
    for seg in &m.segments {
        let file = seg.uri.split('?').next().unwrap();
        let want = SegmentManifest::compute(seg.seq, &seg.uri, &s.read(&format!("{dir}/{file}")));
        assert_eq!(*seg, want, "seq {}", seg.seq);
    }
    m
}

/// Segment bytes: a few 16 KiB chunks, a short last one, different per seq.
fn segment(seq: u64) -> Vec<u8> {
    let len = 40_000 + (seq as usize * 7919) % 30_000;
    (0..len)
        .map(|i| (i as u64 ^ seq.wrapping_mul(0x9e37_79b9)) as u8)
        .collect()
}

fn live_playlist(first: u64, n: u64) -> String {
    let mut p = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
    );
    for seq in first..first + n {
        p += &format!("#EXTINF:1.000,\nseg{seq}.ts\n");
    }
    p
}

async fn metrics(server: SocketAddr) -> String {
    reqwest::get(format!("http://{server}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_window_published_within_a_second_and_fetched_once() {
    let (s, _dir, origin) = Static::start().await;
    let (server, _h): (SocketAddr, ServerHandle) = spawn(config(origin)).await;
    const WINDOW: u64 = 4;
    const ROUNDS: u64 = 6;
    for seq in 0..WINDOW {
        s.write(&format!("allowed/live/seg{seq}.ts"), &segment(seq));
    }
    s.write(
        "allowed/live/720p.m3u8",
        live_playlist(0, WINDOW).as_bytes(),
    );
    let pl = |token: u64| format!("http://{origin}/allowed/live/720p.m3u8?token={token}");

    // First request: waits for the first pass, so the whole window is there.
    let a = ask(server, &pl(0), None).await;
    let m = check(&s, "allowed/live", &a);
    assert_eq!(
        m.segments.iter().map(|x| x.seq).collect::<Vec<_>>(),
        (0..WINDOW).collect::<Vec<_>>()
    );
    // Polling clients: If-None-Match → 304.
    let etag = a.headers["etag"].to_str().unwrap().to_owned();
    let again = ask(server, &pl(0), Some(&etag)).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers["access-control-allow-origin"], "*");

    // Every second the playlist slides by one segment; a client polls every 25 ms (with a new
    // token each round: the follower fetches with it, and does not refetch segments).
    let mut latencies = Vec::new();
    for round in 1..=ROUNDS {
        let new = WINDOW - 1 + round;
        s.write(&format!("allowed/live/seg{new}.ts"), &segment(new));
        s.write(
            "allowed/live/720p.m3u8",
            live_playlist(round, WINDOW).as_bytes(),
        );
        let listed = Instant::now();
        let latency = loop {
            let a = ask(server, &pl(round), None).await;
            let m = check(&s, "allowed/live", &a);
            if m.segments.iter().any(|x| x.seq == new) {
                break listed.elapsed();
            }
            assert!(
                listed.elapsed() < Duration::from_secs(3),
                "seq {new} never published"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        latencies.push(latency);
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(listed.elapsed())).await;
    }
    let max = latencies.iter().max().unwrap();
    eprintln!("publish latency after the playlist listed a segment: {latencies:?}, max {max:?}");
    assert!(*max < Duration::from_secs(1), "{latencies:?}");

    // Each segment file fetched exactly once by the service.
    for seq in 0..WINDOW + ROUNDS {
        assert_eq!(s.hits(&format!("/allowed/live/seg{seq}.ts")), 1, "seg{seq}");
    }
    let playlist_fetches = s.hits("/allowed/live/720p.m3u8");
    assert_eq!(
        s.last_query.lock().unwrap()["/allowed/live/720p.m3u8"],
        format!("token={ROUNDS}")
    );
    // The window kept the margin: all seqs still served.
    let m = check(&s, "allowed/live", &ask(server, &pl(ROUNDS), None).await);
    assert_eq!(m.segments.len() as u64, WINDOW + ROUNDS);

    let text = metrics(server).await;
    eprintln!(
        "playlist fetches {playlist_fetches}, service max publish latency {:?}",
        _h.state().integrity().metrics.publish_latency_max()
    );
    assert_eq!(metric(&text, "signaling_integrity_playlists"), 1.0);
    assert_eq!(
        metric(&text, "signaling_integrity_segment_fetches_total"),
        (WINDOW + ROUNDS) as f64
    );
    let bytes: usize = (0..WINDOW + ROUNDS).map(|q| segment(q).len()).sum();
    assert_eq!(
        metric(&text, "signaling_integrity_segment_bytes_total"),
        bytes as f64
    );
    assert!(metric(&text, "signaling_integrity_playlist_fetches_total") >= 10.0);
    assert_eq!(
        metric(&text, "signaling_integrity_publish_seconds_count"),
        (WINDOW + ROUNDS) as f64
    );
    assert!(metric(&text, "signaling_integrity_publish_seconds_max") < 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_allowed_prefixes_is_refused_and_nothing_fetched() {
    let (s, _dir, origin) = Static::start().await;
    s.write("other/720p.m3u8", live_playlist(0, 2).as_bytes());
    let (server, h) = spawn(config(origin)).await;
    for url in [
        format!("http://{origin}/other/720p.m3u8"),
        format!("http://{origin}/allowed/../other/720p.m3u8"),
        format!("http://{origin}@evil.example/allowed/720p.m3u8"),
        "http://169.254.169.254/allowed/latest".to_owned(),
    ] {
        let a = ask(server, &url, None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{url}");
        assert!(a.body.contains("--integrity-origin"), "{}", a.body);
    }
    let a = ask(server, "not a url", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let missing = reqwest::get(format!("http://{server}/integrity"))
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.total_hits(), 0);
    assert_eq!(h.state().integrity().followed(), 0);

    // Without --integrity-origin the service is off.
    let (off, _h2) = spawn(Config::default()).await;
    let a = ask(off, &format!("http://{origin}/allowed/720p.m3u8"), None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(s.total_hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vod_is_hashed_once_and_not_polled_again() {
    let (s, _dir, origin) = Static::start().await;
    let mut p = "#EXTM3U\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-TARGETDURATION:1\n".to_owned();
    for seq in 0..5 {
        s.write(&format!("allowed/vod/s{seq}.ts"), &segment(100 + seq));
        p += &format!("#EXTINF:1.0,\ns{seq}.ts\n");
    }
    p += "#EXT-X-ENDLIST\n";
    s.write("allowed/vod/index.m3u8", p.as_bytes());
    let (server, _h) = spawn(config(origin)).await;
    let url = format!("http://{origin}/allowed/vod/index.m3u8");
    let m = check(&s, "allowed/vod", &ask(server, &url, None).await);
    assert_eq!(
        m.segments.iter().map(|x| x.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    // Three poll intervals later: no new playlist fetch, no segment refetched.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let m2 = check(&s, "allowed/vod", &ask(server, &url, None).await);
    assert_eq!(m, m2);
    assert_eq!(s.hits("/allowed/vod/index.m3u8"), 1);
    for seq in 0..5 {
        assert_eq!(s.hits(&format!("/allowed/vod/s{seq}.ts")), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byterange_segments_are_left_out() {
    let (s, _dir, origin) = Static::start().await;
    s.write("allowed/br/a.ts", &segment(1));
    s.write("allowed/br/all.ts", &segment(2));
    s.write("allowed/br/b.ts", &segment(3));
    s.write("allowed/br/init.mp4", b"init");
    s.write(
        "allowed/br/p.m3u8",
        b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:1,\na.ts\n#EXTINF:1,\n#EXT-X-BYTERANGE:1000@0\nall.ts\n#EXTINF:1,\nb.ts\n#EXT-X-ENDLIST\n",
    );
    let (server, _h) = spawn(config(origin)).await;
    let m = check(
        &s,
        "allowed/br",
        &ask(server, &format!("http://{origin}/allowed/br/p.m3u8"), None).await,
    );
    assert_eq!(
        m.segments
            .iter()
            .map(|x| (x.seq, x.uri.as_str()))
            .collect::<Vec<_>>(),
        [(10, "a.ts"), (12, "b.ts")]
    );
    assert_eq!(s.hits("/allowed/br/all.ts"), 0);
    assert_eq!(s.hits("/allowed/br/init.mp4"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlist_cap_and_idle_followers_stop() {
    let (s, _dir, origin) = Static::start().await;
    for name in ["a", "b", "c"] {
        s.write(&format!("allowed/{name}/seg0.ts"), &segment(0));
        s.write(
            &format!("allowed/{name}/p.m3u8"),
            live_playlist(0, 1).as_bytes(),
        );
    }
    let cfg = Config {
        integrity_max_playlists: 2,
        integrity_idle_ms: 600,
        ..config(origin)
    };
    let (server, h) = spawn(cfg).await;
    let url = |n: &str| format!("http://{origin}/allowed/{n}/p.m3u8");
    assert_eq!(ask(server, &url("a"), None).await.status, StatusCode::OK);
    assert_eq!(ask(server, &url("b"), None).await.status, StatusCode::OK);
    // The same playlist under another query is the same follower.
    assert_eq!(
        ask(server, &format!("{}?t=1", url("a")), None).await.status,
        StatusCode::OK
    );
    let c = ask(server, &url("c"), None).await;
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(c.headers["retry-after"], "10");
    assert_eq!(s.hits("/allowed/c/p.m3u8"), 0);
    assert_eq!(h.state().integrity().followed(), 2);

    // Nobody asks for 600 ms: both followers stop and stop polling.
    let deadline = Instant::now() + Duration::from_secs(3);
    while h.state().integrity().followed() > 0 {
        assert!(Instant::now() < deadline, "followers never went idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&metrics(server).await, "signaling_integrity_playlists"),
        0.0
    );
    let polls = s.hits("/allowed/a/p.m3u8");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.hits("/allowed/a/p.m3u8"), polls);
    // Room again.
    let c = ask(server, &url("c"), None).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_master_playlists_are_502() {
    let (s, _dir, origin) = Static::start().await;
    s.write("allowed/garbage.m3u8", b"<html>\xff\x00 nope");
    s.write("allowed/html.m3u8", b"<html><body>hello</body></html>");
    s.write(
        "allowed/master.m3u8",
        b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n720p.m3u8\n",
    );
    s.write("allowed/big.m3u8", &vec![b'#'; 2 << 20]);
    let (server, _h) = spawn(config(origin)).await;
    for (name, why) in [
        ("garbage", "not UTF-8"),
        ("html", "#EXTM3U"),
        ("master", "master playlist"),
        ("missing", "404"),
        ("big", "bytes"),
    ] {
        let a = ask(
            server,
            &format!("http://{origin}/allowed/{name}.m3u8"),
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{name}: {}", a.body);
        assert!(a.body.contains(why), "{name}: {}", a.body);
        assert_eq!(a.headers["access-control-allow-origin"], "*");
    }
    let health = reqwest::get(format!("http://{server}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_segment_fetches_are_retried_a_bounded_number_of_times() {
    let (s, _dir, origin) = Static::start().await;
    s.write("allowed/r/s0.ts", &segment(7));
    // s1.ts is missing (404), s2.ts appears after the first pass.
    s.write(
        "allowed/r/p.m3u8",
        b"#EXTM3U\n#EXTINF:1,\ns0.ts\n#EXTINF:1,\ns1.ts\n#EXTINF:1,\ns2.ts\n#EXT-X-ENDLIST\n",
    );
    let (server, _h) = spawn(config(origin)).await;
    let url = format!("http://{origin}/allowed/r/p.m3u8");
    let m = check(&s, "allowed/r", &ask(server, &url, None).await);
    assert_eq!(m.segments.iter().map(|x| x.seq).collect::<Vec<_>>(), [0]);
    s.write("allowed/r/s2.ts", &segment(9));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let m = check(&s, "allowed/r", &ask(server, &url, None).await);
    assert_eq!(m.segments.iter().map(|x| x.seq).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(s.hits("/allowed/r/s1.ts"), 3);
    assert_eq!(s.hits("/allowed/r/s2.ts"), 2);
    assert_eq!(s.hits("/allowed/r/s0.ts"), 1);
    assert_eq!(s.hits("/allowed/r/p.m3u8"), 1);
}
