//! Shared fixtures for the origin tests.
#![allow(dead_code, clippy::unwrap_used, clippy::new_without_default)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use origin::{AppState, Clock, Config};
use tower::ServiceExt;

/// The committed sample clip.
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../media/sample")
}

/// A media folder with `sample/` (fMP4, copy of the committed clip) and `ts/` (MPEG-TS-named
/// segments of 3 × 2 s with distinct bytes, plus a master playlist in `tsm/`).
pub struct Media {
    pub dir: tempfile::TempDir,
}

impl Media {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sample = dir.path().join("sample");
        std::fs::create_dir(&sample).unwrap();
        for e in std::fs::read_dir(sample_dir()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), sample.join(e.file_name())).unwrap();
        }
        let ts = dir.path().join("ts");
        std::fs::create_dir(&ts).unwrap();
        let mut pl = String::from(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:10\n",
        );
        for i in 0..3u8 {
            std::fs::write(ts.join(format!("s{i}.ts")), ts_bytes(i)).unwrap();
            pl.push_str(&format!("#EXTINF:2.0,\ns{i}.ts\n"));
        }
        pl.push_str("#EXT-X-ENDLIST\n");
        std::fs::write(ts.join("index.m3u8"), pl).unwrap();
        // Master playlist with one variant in a sub-folder.
        let tsm = dir.path().join("tsm");
        std::fs::create_dir_all(tsm.join("v0")).unwrap();
        std::fs::write(
            tsm.join("index.m3u8"),
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\nv0/video.m3u8\n",
        )
        .unwrap();
        let mut v = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n");
        for i in 0..2u8 {
            std::fs::write(tsm.join(format!("v0/a{i}.ts")), ts_bytes(10 + i)).unwrap();
            v.push_str(&format!("#EXTINF:2.0,\na{i}.ts\n"));
        }
        v.push_str("#EXT-X-ENDLIST\n");
        std::fs::write(tsm.join("v0/video.m3u8"), v).unwrap();
        Media { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// 40 000 bytes (3 chunks, the last one short) that differ per `i`.
pub fn ts_bytes(i: u8) -> Vec<u8> {
    (0..40_000u32)
        .map(|n| (n % 251) as u8 ^ i.wrapping_mul(37))
        .collect()
}

/// A clock the test moves by hand.
#[derive(Clone)]
pub struct TestClock(pub Arc<AtomicU64>);

impl TestClock {
    pub fn new() -> Self {
        TestClock(Arc::new(AtomicU64::new(1_700_000_000_000)))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn clock(&self) -> Clock {
        let t = self.0.clone();
        Arc::new(move || SystemTime::UNIX_EPOCH + Duration::from_millis(t.load(Ordering::SeqCst)))
    }
}

pub fn config(media: &Media, clock: &TestClock) -> Config {
    Config {
        media_dir: Some(media.path().to_path_buf()),
        live: vec!["sample".into(), "ts".into(), "tsm".into()],
        synthetic: vec!["syn=400:1".parse().unwrap()],
        window: 4,
        clock: clock.clock(),
        ..Config::default()
    }
}

pub fn state(media: &Media, clock: &TestClock) -> AppState {
    AppState::new(config(media, clock)).unwrap()
}

pub async fn send(state: &AppState, req: Request<Body>) -> (Response<()>, Vec<u8>) {
    let resp = origin::router(state.clone()).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (Response::from_parts(parts, ()), bytes)
}

pub async fn get(state: &AppState, uri: &str) -> (Response<()>, Vec<u8>) {
    send(state, Request::get(uri).body(Body::empty()).unwrap()).await
}

pub fn header<'a>(r: &'a Response<()>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// (media sequence, segment URIs) of a media playlist.
pub fn media_playlist(text: &[u8]) -> (u64, Vec<String>, m3u8_rs::MediaPlaylist) {
    match m3u8_rs::parse_playlist_res(text) {
        Ok(m3u8_rs::Playlist::MediaPlaylist(m)) => (
            m.media_sequence,
            m.segments.iter().map(|s| s.uri.clone()).collect(),
            m,
        ),
        other => panic!("not a media playlist: {other:?}"),
    }
}
