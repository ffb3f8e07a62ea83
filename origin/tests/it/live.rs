//! Live and synthetic playlists under a controlled clock.
#![allow(clippy::unwrap_used)]

use crate::common;

use axum::http::StatusCode;
use common::*;

/// Lines of a playlist starting with `prefix`, prefix removed.
fn tags<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect()
}

#[tokio::test]
async fn live_playlist_slides_with_the_clock_and_loops_with_discontinuities() {
    let media = Media::new();
    let clock = TestClock::new();
    let st = state(&media, &clock); // window 4; `ts` has 3 segments of 2 s

    // At start the window is already full: segments 0..4, file 3 = file 0 after a loop.
    let (r, body) = get(&st, "/live/ts/index.m3u8").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "cache-control").contains("max-age=1"));
    let text = String::from_utf8(body.clone()).unwrap();
    let (seq, uris, m) = media_playlist(&body);
    assert_eq!(seq, 0);
    assert_eq!(uris, ["seg_0.ts", "seg_1.ts", "seg_2.ts", "seg_3.ts"]);
    assert!(!m.end_list, "live playlists have no ENDLIST");
    assert_eq!(tags(&text, "#EXT-X-DISCONTINUITY-SEQUENCE:"), ["0"]);
    assert!(m.segments[3].discontinuity && !m.segments[2].discontinuity);
    // Segment URLs map to file seq % n and never change meaning.
    assert_eq!(get(&st, "/live/ts/seg_3.ts").await.1, ts_bytes(0));
    assert_eq!(get(&st, "/live/ts/seg_2.ts").await.1, ts_bytes(2));
    // Not yet published.
    assert_eq!(
        get(&st, "/live/ts/seg_4.ts").await.0.status(),
        StatusCode::NOT_FOUND
    );
    // PROGRAM-DATE-TIME per segment, 2 s apart.
    let pdts = tags(&text, "#EXT-X-PROGRAM-DATE-TIME:");
    assert_eq!(pdts.len(), 4);
    let t0 = humantime::parse_rfc3339(pdts[0]).unwrap();
    let t3 = humantime::parse_rfc3339(pdts[3]).unwrap();
    assert_eq!(t3.duration_since(t0).unwrap().as_millis(), 6000);

    // 1.999 s later nothing moved; at 2 s the window slides by one.
    clock.advance(1999);
    assert_eq!(
        media_playlist(&get(&st, "/live/ts/index.m3u8").await.1).0,
        0
    );
    clock.advance(1);
    let (seq, uris, _) = media_playlist(&get(&st, "/live/ts/index.m3u8").await.1);
    assert_eq!((seq, uris.len()), (1, 4));
    assert_eq!(uris.last().unwrap(), "seg_4.ts");
    assert_eq!(get(&st, "/live/ts/seg_4.ts").await.1, ts_bytes(1));

    // Two more segments: the loop point (seq 3) is now the first listed segment, so its
    // discontinuity has left the window and the discontinuity sequence counts it.
    clock.advance(4000);
    let body = get(&st, "/live/ts/index.m3u8").await.1;
    let text = String::from_utf8(body.clone()).unwrap();
    let (seq, uris, m) = media_playlist(&body);
    assert_eq!(seq, 3);
    assert_eq!(uris, ["seg_3.ts", "seg_4.ts", "seg_5.ts", "seg_6.ts"]);
    assert_eq!(tags(&text, "#EXT-X-DISCONTINUITY-SEQUENCE:"), ["1"]);
    assert!(!m.segments[0].discontinuity);
    assert!(m.segments[3].discontinuity, "seq 6 starts the third loop");
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1);

    // A viewer joining an hour later sees the live edge.
    clock.advance(3_600_000);
    let (seq, uris, _) = media_playlist(&get(&st, "/live/ts/index.m3u8").await.1);
    assert_eq!(seq, 3 + 1800);
    assert_eq!(uris.last().unwrap(), &format!("seg_{}.ts", 1806));
    assert_eq!(
        get(&st, "/live/ts/seg_1806.ts").await.1,
        ts_bytes((1806u32 % 3) as u8)
    );
    // Non-canonical spellings of a sequence number are not live segments.
    assert_eq!(
        get(&st, "/live/ts/seg_01806.ts").await.0.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&st, "/live/ts/seg_1806.m4s").await.0.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn live_fmp4_keeps_the_map_and_is_valid_hls() {
    let media = Media::new();
    let clock = TestClock::new();
    let st = state(&media, &clock);
    clock.advance(31_000); // past the 15-segment loop: a discontinuity is in the window
    let (r, body) = get(&st, "/live/sample/index.m3u8").await;
    assert_eq!(header(&r, "content-type"), "application/vnd.apple.mpegurl");
    let text = String::from_utf8(body.clone()).unwrap();
    let (seq, uris, m) = media_playlist(&body);
    assert_eq!(seq, 15 + 4 - 4);
    assert_eq!(uris.len(), 4);
    assert!(m.version.unwrap() >= 6, "EXT-X-MAP needs version 6");
    assert_eq!(m.target_duration, 2);
    assert_eq!(m.segments[0].map.as_ref().unwrap().uri, "init.mp4");
    assert!(text.starts_with("#EXTM3U\n"));
    // Every EXTINF is within the target duration and every segment has a date.
    for s in &m.segments {
        assert!(s.duration.round() as u64 <= m.target_duration);
        assert!(s.program_date_time.is_some());
    }
    // The init segment is served from the stream folder; segments are file seq % 15.
    let (r, init) = get(&st, "/live/sample/init.mp4").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        init,
        std::fs::read(media.path().join("sample/init.mp4")).unwrap()
    );
    let (r, seg) = get(&st, "/live/sample/seg_16.m4s").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "cache-control").contains("immutable"));
    assert_eq!(
        seg,
        std::fs::read(media.path().join("sample/seg_001.m4s")).unwrap()
    );

    // Master playlist of a multi-variant stream is served as is; its variant is live.
    let (r, master) = get(&st, "/live/tsm/index.m3u8").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(&master).contains("v0/video.m3u8"));
    let (seq, uris, _) = media_playlist(&get(&st, "/live/tsm/v0/video.m3u8").await.1);
    assert_eq!(seq, 19 - 4);
    assert!(uris.iter().all(|u| u.starts_with("video_seg_")), "{uris:?}");
    let (r, b) = get(&st, &format!("/live/tsm/v0/{}", uris[0])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(b, ts_bytes(10 + (seq % 2) as u8));
}

#[tokio::test]
async fn synthetic_stream_is_deterministic_and_live() {
    let media = Media::new();
    let clock = TestClock::new();
    let st = state(&media, &clock); // syn=400:1 → 50 000-byte segments of 1 s
    let (r, body) = get(&st, "/synthetic/syn/index.m3u8").await;
    assert_eq!(r.status(), StatusCode::OK);
    let (seq, uris, m) = media_playlist(&body);
    assert_eq!((seq, uris.len()), (0, 4));
    assert_eq!(uris[0], "seg_0.bin");
    assert_eq!(m.target_duration, 1);
    assert!(
        m.segments
            .iter()
            .all(|s| !s.discontinuity && s.program_date_time.is_some())
    );

    let (r, a) = get(&st, "/synthetic/syn/seg_2.bin").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(a.len(), 400 * 1000 / 8);
    let b = get(&st, "/synthetic/syn/seg_3.bin").await.1;
    assert_ne!(a, b, "different sequence numbers, different bytes");
    assert!(
        a.iter().filter(|&&x| x == 0).count() < a.len() / 50,
        "not a constant fill"
    );

    // A separate origin (fresh state, other start time) gives the same bytes for a seq.
    let clock2 = TestClock::new();
    clock2.advance(123_456);
    let st2 = state(&media, &clock2);
    assert_eq!(get(&st2, "/synthetic/syn/seg_2.bin").await.1, a);
    // Other spec, other bytes.
    let mut cfg = config(&media, &clock2);
    cfg.synthetic = vec!["syn=800:1".parse().unwrap()];
    let st3 = origin::AppState::new(cfg).unwrap();
    let c = get(&st3, "/synthetic/syn/seg_2.bin").await.1;
    assert_eq!(c.len(), 100_000);
    assert_ne!(&c[..a.len()], &a[..]);

    // Window slides with the clock; future segments are not served.
    assert_eq!(
        get(&st, "/synthetic/syn/seg_4.bin").await.0.status(),
        StatusCode::NOT_FOUND
    );
    clock.advance(10_000);
    let (seq, uris, _) = media_playlist(&get(&st, "/synthetic/syn/index.m3u8").await.1);
    assert_eq!(
        (seq, uris.last().map(String::as_str)),
        (10, Some("seg_13.bin"))
    );
    assert_eq!(
        get(&st, "/synthetic/syn/seg_13.bin").await.0.status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&st, "/synthetic/syn/seg_2.bin").await.1,
        a,
        "old URL, same bytes"
    );
    assert_eq!(
        get(&st, "/synthetic/syn/seg_02.bin").await.0.status(),
        StatusCode::NOT_FOUND
    );
}
