//! VOD serving: Range, HEAD, ETag, CORS, traversal, several streams.
#![allow(clippy::unwrap_used)]

use crate::common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;

#[tokio::test]
async fn vod_files_range_head_etag() {
    let media = Media::new();
    let clock = TestClock::new();
    let st = state(&media, &clock);
    let file = std::fs::read(media.path().join("sample/seg_003.m4s")).unwrap();
    let len = file.len();

    let (r, body) = get(&st, "/vod/sample/index.m3u8").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "application/vnd.apple.mpegurl");
    assert!(header(&r, "cache-control").contains("max-age=1"));
    assert_eq!(
        body,
        std::fs::read(media.path().join("sample/index.m3u8")).unwrap()
    );

    let (r, body) = get(&st, "/vod/sample/seg_003.m4s").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body, file);
    assert_eq!(header(&r, "content-length"), len.to_string());
    assert!(header(&r, "cache-control").contains("immutable"));
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    let etag = header(&r, "etag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 2);

    // ETag: revalidation gives 304 with no body; another tag gives the body.
    let req = Request::get("/vod/sample/seg_003.m4s")
        .header("if-none-match", &etag)
        .body(Body::empty())
        .unwrap();
    let (r, body) = send(&st, req).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let req = Request::get("/vod/sample/seg_003.m4s")
        .header("if-none-match", "\"nope\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&st, req).await.0.status(), StatusCode::OK);

    // Ranges.
    for (range, start, end) in [
        ("bytes=10-19", 10, 19),
        ("bytes=100-", 100, len - 1),
        ("bytes=-5", len - 5, len - 1),
        ("bytes=0-999999999", 0, len - 1),
    ] {
        let req = Request::get("/vod/sample/seg_003.m4s")
            .header("range", range)
            .body(Body::empty())
            .unwrap();
        let (r, body) = send(&st, req).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(body, &file[start..=end], "{range}");
        assert_eq!(
            header(&r, "content-range"),
            format!("bytes {start}-{end}/{len}")
        );
        assert_eq!(header(&r, "content-length"), (end - start + 1).to_string());
    }
    for range in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 10, len + 20),
    ] {
        let req = Request::get("/vod/sample/seg_003.m4s")
            .header("range", &range)
            .body(Body::empty())
            .unwrap();
        let (r, body) = send(&st, req).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(header(&r, "content-range"), format!("bytes */{len}"));
        assert!(body.is_empty());
    }
    // Malformed Range is ignored; If-Range with a stale validator sends everything.
    let req = Request::get("/vod/sample/seg_003.m4s")
        .header("range", "bytes=x-y")
        .body(Body::empty())
        .unwrap();
    let (r, body) = send(&st, req).await;
    assert_eq!((r.status(), body.len()), (StatusCode::OK, len));
    let req = Request::get("/vod/sample/seg_003.m4s")
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&st, req).await.0.status(), StatusCode::OK);
    let req = Request::get("/vod/sample/seg_003.m4s")
        .header("range", "bytes=0-9")
        .header("if-range", &etag)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&st, req).await.0.status(), StatusCode::PARTIAL_CONTENT);

    // HEAD: headers of a GET, no body.
    let req = Request::head("/vod/sample/seg_003.m4s")
        .body(Body::empty())
        .unwrap();
    let (r, body) = send(&st, req).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), len.to_string());
    assert_eq!(header(&r, "etag"), etag);
    assert!(body.is_empty());

    // Several streams side by side, MPEG-TS and nested variants.
    let (r, body) = get(&st, "/vod/ts/s1.ts").await;
    assert_eq!(
        (r.status(), header(&r, "content-type")),
        (StatusCode::OK, "video/mp2t")
    );
    assert_eq!(body, ts_bytes(1));
    let (r, body) = get(&st, "/vod/tsm/v0/a1.ts").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body, ts_bytes(11));
    assert_eq!(
        get(&st, "/vod/tsm/index.m3u8").await.0.status(),
        StatusCode::OK
    );

    // Missing things are 404.
    assert_eq!(
        get(&st, "/vod/sample/nope.m4s").await.0.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&st, "/vod/nostream/index.m3u8").await.0.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&st, "/live/nostream/index.m3u8").await.0.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&st, "/synthetic/nope/index.m3u8").await.0.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&st, "/healthz").await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn cors_for_configured_origins() {
    let media = Media::new();
    let clock = TestClock::new();
    let mut cfg = config(&media, &clock);
    cfg.allow_origins = vec!["http://good.example".into()];
    let st = origin::AppState::new(cfg.clone()).unwrap();
    let req = |origin: &str| {
        Request::get("/vod/sample/index.m3u8")
            .header("origin", origin)
            .body(Body::empty())
            .unwrap()
    };
    let (r, _) = send(&st, req("http://good.example")).await;
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "http://good.example"
    );
    assert!(header(&r, "access-control-expose-headers").contains("content-range"));
    let (r, _) = send(&st, req("http://evil.example")).await;
    assert_eq!(header(&r, "access-control-allow-origin"), "");

    // Preflight for a Range request.
    let pre = Request::options("/vod/sample/seg_000.m4s")
        .header("origin", "http://good.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .body(Body::empty())
        .unwrap();
    let (r, _) = send(&st, pre).await;
    assert!(r.status().is_success());
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "http://good.example"
    );
    assert!(header(&r, "access-control-allow-headers").contains("range"));

    cfg.allow_origins = vec!["*".into()];
    let st = origin::AppState::new(cfg.clone()).unwrap();
    let (r, _) = send(&st, req("http://any.example")).await;
    assert_eq!(header(&r, "access-control-allow-origin"), "*");

    // No origins configured: no CORS headers at all.
    cfg.allow_origins = vec![];
    let st = origin::AppState::new(cfg).unwrap();
    let (r, _) = send(&st, req("http://good.example")).await;
    assert_eq!(header(&r, "access-control-allow-origin"), "");
}

#[tokio::test]
async fn traversal_is_refused() {
    let media = Media::new();
    let clock = TestClock::new();
    // A secret next to the media folder, and symlinks that point at it.
    let secret_dir = tempfile::tempdir().unwrap();
    std::fs::write(secret_dir.path().join("secret.txt"), b"SECRET").unwrap();
    std::fs::write(media.path().join("top-secret.txt"), b"SECRET").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(
            secret_dir.path().join("secret.txt"),
            media.path().join("sample/link.m4s"),
        )
        .unwrap();
        std::os::unix::fs::symlink(secret_dir.path(), media.path().join("sample/linkdir")).unwrap();
        std::os::unix::fs::symlink(secret_dir.path(), media.path().join("escape")).unwrap();
    }
    let st = state(&media, &clock);
    for uri in [
        "/vod/sample/../top-secret.txt",
        "/vod/sample/%2e%2e/top-secret.txt",
        "/vod/sample/%2E%2E/top-secret.txt",
        "/vod/sample/..%2ftop-secret.txt",
        "/vod/sample/..%5ctop-secret.txt",
        "/vod/sample//etc/passwd",
        "/vod/sample/%2fetc%2fpasswd",
        "/vod/sample/./index.m3u8",
        "/vod/../top-secret.txt",
        "/vod/%2e%2e/top-secret.txt",
        "/live/sample/../top-secret.txt",
        "/live/sample/%2e%2e/top-secret.txt",
        "/vod/sample/link.m4s",
        "/vod/sample/linkdir/secret.txt",
        "/vod/escape/secret.txt",
        "/live/sample/link.m4s",
        "/vod/sample/seg%00.m4s",
    ] {
        let (r, body) = get(&st, uri).await;
        assert!(
            [
                StatusCode::BAD_REQUEST,
                StatusCode::FORBIDDEN,
                StatusCode::NOT_FOUND
            ]
            .contains(&r.status()),
            "{uri}: {}",
            r.status()
        );
        assert!(
            !String::from_utf8_lossy(&body).contains("SECRET"),
            "{uri} leaked"
        );
    }
    // The lexical checks answer 400, the symlink check 403.
    assert_eq!(
        get(&st, "/vod/sample/%2e%2e/top-secret.txt")
            .await
            .0
            .status(),
        StatusCode::BAD_REQUEST
    );
    #[cfg(unix)]
    assert_eq!(
        get(&st, "/vod/sample/link.m4s").await.0.status(),
        StatusCode::FORBIDDEN
    );
    // A playlist whose segment URI climbs out has no sidecar (and the origin does not panic).
    std::fs::write(
        media.path().join("sample/evil.m3u8"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n../top-secret.txt\n#EXT-X-ENDLIST\n",
    )
    .unwrap();
    let (r, body) = get(&st, "/vod/sample/evil.integrity.json").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&body).contains("leaves the stream folder"));
}

#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let media = Media::new();
    let clock = TestClock::new();
    let mut cfg = config(&media, &clock);
    cfg.media_dir = Some(media.path().join("missing"));
    let e = origin::AppState::new(cfg).err().unwrap().to_string();
    assert!(e.contains("does not exist"), "{e}");

    let mut cfg = config(&media, &clock);
    cfg.live = vec!["nostream".into()];
    let e = origin::AppState::new(cfg).err().unwrap().to_string();
    assert!(e.contains("nostream"), "{e}");

    std::fs::create_dir(media.path().join("broken")).unwrap();
    std::fs::write(media.path().join("broken/index.m3u8"), "not a playlist").unwrap();
    let mut cfg = config(&media, &clock);
    cfg.live = vec!["broken".into()];
    let e = origin::AppState::new(cfg).err().unwrap().to_string();
    assert!(e.contains("bad playlist") && e.contains("EXTM3U"), "{e}");

    std::fs::write(
        media.path().join("broken/index.m3u8"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nmissing.ts\n#EXT-X-ENDLIST\n",
    )
    .unwrap();
    let mut cfg = config(&media, &clock);
    cfg.live = vec!["broken".into()];
    let e = origin::AppState::new(cfg).err().unwrap().to_string();
    assert!(e.contains("missing.ts"), "{e}");

    for bad in [
        "x",
        "x=1",
        "x=a:2",
        "x=100:0",
        "../x=100:2",
        "x=999999999:60",
    ] {
        assert!(bad.parse::<origin::SyntheticSpec>().is_err(), "{bad}");
    }
    let mut cfg = config(&media, &clock);
    cfg.window = 0;
    assert!(origin::AppState::new(cfg).is_err());
}
