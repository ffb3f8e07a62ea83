//! Sidecars over real sockets: the hashes match the bytes actually served, in every mode.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use protocol::manifest::{CHUNK_SIZE, Manifest};

/// Fetches a media playlist and its sidecar, then every listed segment (whole and chunk by
/// chunk with Range requests), and checks them against the sidecar. Returns segments checked.
async fn check_playlist(http: &reqwest::Client, base: &str, playlist: &str) -> usize {
    let pl = http.get(format!("{base}/{playlist}")).send().await.unwrap();
    assert_eq!(pl.status(), 200, "{playlist}");
    let (seq0, uris, _) = media_playlist(&pl.bytes().await.unwrap());
    let sidecar = playlist.replace(".m3u8", ".integrity.json");
    let resp = http.get(format!("{base}/{sidecar}")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{sidecar}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let m = Manifest::from_json(&resp.text().await.unwrap()).unwrap();
    assert_eq!(
        m.segments.len(),
        uris.len(),
        "{sidecar} lists the playlist's segments"
    );
    let dir = playlist
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    for (i, (entry, uri)) in m.segments.iter().zip(&uris).enumerate() {
        assert_eq!(entry.seq, seq0 + i as u64, "keyed by media sequence number");
        assert_eq!(&entry.uri, uri);
        let url = format!("{base}/{dir}{uri}");
        let data = http.get(&url).send().await.unwrap().bytes().await.unwrap();
        assert!(entry.verify_segment(&data), "{url}: whole segment");
        assert!(entry.chunk_count() >= 2, "fixtures span several chunks");
        for c in 0..entry.chunk_count() {
            let (s, e) = entry.chunk_range(c);
            let r = http
                .get(&url)
                .header("range", format!("bytes={s}-{}", e - 1))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206);
            let chunk = r.bytes().await.unwrap();
            assert!(entry.verify_chunk(c, &chunk), "{url} chunk {c}");
            assert!(
                !entry.verify_chunk((c + 1) % entry.chunk_count(), &chunk)
                    || chunk.len() != CHUNK_SIZE
            );
        }
    }
    m.segments.len()
}

#[tokio::test]
async fn sidecars_match_served_bytes_in_every_mode() {
    let media = Media::new();
    let clock = TestClock::new();
    let (addr, handle) = origin::spawn(config(&media, &clock)).await.unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    assert_eq!(
        check_playlist(&http, &base, "vod/sample/index.m3u8").await,
        15
    );
    assert_eq!(check_playlist(&http, &base, "vod/ts/index.m3u8").await, 3);
    assert_eq!(
        check_playlist(&http, &base, "vod/tsm/v0/video.m3u8").await,
        2
    );
    assert_eq!(
        check_playlist(&http, &base, "live/sample/index.m3u8").await,
        4
    );
    assert_eq!(check_playlist(&http, &base, "live/ts/index.m3u8").await, 4);
    assert_eq!(
        check_playlist(&http, &base, "synthetic/syn/index.m3u8").await,
        4
    );
    // After the clock moves (and the live window crosses a loop), still consistent.
    clock.advance(29_000);
    assert_eq!(
        check_playlist(&http, &base, "live/sample/index.m3u8").await,
        4
    );
    assert_eq!(
        check_playlist(&http, &base, "live/tsm/v0/video.m3u8").await,
        4
    );
    assert_eq!(
        check_playlist(&http, &base, "synthetic/syn/index.m3u8").await,
        4
    );

    // The VOD sidecar uses EXT-X-MEDIA-SEQUENCE (10 in the ts fixture).
    let m = Manifest::from_json(
        &http
            .get(format!("{base}/vod/ts/index.integrity.json"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        m.segments.iter().map(|s| s.seq).collect::<Vec<_>>(),
        [10, 11, 12]
    );
    // A master playlist has no sidecar.
    let r = http
        .get(format!("{base}/vod/tsm/index.integrity.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A tampered file changes the served sidecar (hash cache keyed on length and mtime).
    let before = http
        .get(format!("{base}/vod/ts/index.integrity.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(media.path().join("ts/s1.ts"), vec![7u8; 20_000]).unwrap();
    let after = http
        .get(format!("{base}/vod/ts/index.integrity.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_ne!(before, after);
    assert_eq!(check_playlist(&http, &base, "vod/ts/index.m3u8").await, 3);

    handle.shutdown().await.unwrap();
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "stopped"
    );
}

#[tokio::test]
async fn hash_subcommand_writes_the_served_sidecars() {
    let media = Media::new();
    let clock = TestClock::new();
    let st = state(&media, &clock);
    let written = origin::write_sidecars(media.path()).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| {
            p.strip_prefix(std::fs::canonicalize(media.path()).unwrap())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "sample/index.integrity.json",
            "ts/index.integrity.json",
            "tsm/v0/video.integrity.json"
        ]
    );
    for (file, url) in [
        (
            "sample/index.integrity.json",
            "/vod/sample/index.integrity.json",
        ),
        ("ts/index.integrity.json", "/vod/ts/index.integrity.json"),
        (
            "tsm/v0/video.integrity.json",
            "/vod/tsm/v0/video.integrity.json",
        ),
    ] {
        let on_disk = std::fs::read_to_string(media.path().join(file)).unwrap();
        let (r, served) = get(&st, url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            Manifest::from_json(&on_disk).unwrap(),
            Manifest::from_json(std::str::from_utf8(&served).unwrap()).unwrap(),
            "{file}"
        );
    }
    assert!(origin::write_sidecars(&media.path().join("missing")).is_err());
}
