//! Byte accounting: /stats and /metrics equal the body bytes clients received.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn stats_and_metrics_equal_bytes_sent() {
    let media = Media::new();
    let clock = TestClock::new();
    let (addr, handle) = origin::spawn(config(&media, &clock)).await.unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    // (stream, kind) → (bytes, requests) as seen by the client.
    let mut seen: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let reqs: Vec<(&str, &str, &str, Option<&str>, bool)> = vec![
        (
            "vod/sample",
            "playlist",
            "/vod/sample/index.m3u8",
            None,
            false,
        ),
        (
            "vod/sample",
            "segment",
            "/vod/sample/seg_000.m4s",
            None,
            false,
        ),
        (
            "vod/sample",
            "segment",
            "/vod/sample/seg_001.m4s",
            Some("bytes=100-1099"),
            false,
        ),
        (
            "vod/sample",
            "segment",
            "/vod/sample/seg_001.m4s",
            Some("bytes=999999999-"),
            false,
        ),
        (
            "vod/sample",
            "segment",
            "/vod/sample/seg_002.m4s",
            None,
            true,
        ),
        ("vod/sample", "segment", "/vod/sample/init.mp4", None, false),
        (
            "vod/sample",
            "manifest",
            "/vod/sample/index.integrity.json",
            None,
            false,
        ),
        (
            "vod/sample",
            "other",
            "/vod/sample/missing.bin2",
            None,
            false,
        ),
        (
            "vod/ts",
            "segment",
            "/vod/ts/s0.ts",
            Some("bytes=-10"),
            false,
        ),
        (
            "live/sample",
            "playlist",
            "/live/sample/index.m3u8",
            None,
            false,
        ),
        (
            "live/sample",
            "segment",
            "/live/sample/seg_3.m4s",
            None,
            false,
        ),
        (
            "live/sample",
            "manifest",
            "/live/sample/index.integrity.json",
            None,
            false,
        ),
        (
            "synthetic/syn",
            "playlist",
            "/synthetic/syn/index.m3u8",
            None,
            false,
        ),
        (
            "synthetic/syn",
            "segment",
            "/synthetic/syn/seg_1.bin",
            None,
            false,
        ),
        (
            "synthetic/syn",
            "segment",
            "/synthetic/syn/seg_2.bin",
            Some("bytes=0-16383"),
            false,
        ),
        (
            "synthetic/syn",
            "manifest",
            "/synthetic/syn/index.integrity.json",
            None,
            false,
        ),
    ];
    // Traffic before the reset must not show up after it.
    http.get(format!("{base}/vod/sample/seg_005.m4s"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let before: Value = http
        .post(format!("{base}/stats/reset"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(before["totals"]["bytes"].as_u64().unwrap() > 200_000);
    for round in 0..2 {
        for (stream, kind, path, range, head) in &reqs {
            let mut rb = if *head {
                http.head(format!("{base}{path}"))
            } else {
                http.get(format!("{base}{path}"))
            };
            if let Some(r) = range {
                rb = rb.header("range", *r);
            }
            let resp = rb.send().await.unwrap();
            let n = resp.bytes().await.unwrap().len() as u64;
            let e = seen
                .entry((stream.to_string(), kind.to_string()))
                .or_default();
            e.0 += n;
            e.1 += 1;
            if round == 1 && *head {
                assert_eq!(n, 0);
            }
        }
    }
    // Unknown streams and operational endpoints are not counted.
    http.get(format!("{base}/vod/nostream/x.ts"))
        .send()
        .await
        .unwrap();
    http.get(format!("{base}/metrics")).send().await.unwrap();

    let snap: Value = http
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (mut total_bytes, mut total_reqs) = (0, 0);
    for ((stream, kind), (bytes, requests)) in &seen {
        let c = &snap["streams"][stream][kind];
        assert_eq!(c["bytes"].as_u64(), Some(*bytes), "{stream} {kind} bytes");
        assert_eq!(
            c["requests"].as_u64(),
            Some(*requests),
            "{stream} {kind} requests"
        );
        let line =
            format!("origin_bytes_sent_total{{stream=\"{stream}\",kind=\"{kind}\"}} {bytes}\n");
        assert!(metrics.contains(&line), "missing {line}");
        let line =
            format!("origin_requests_total{{stream=\"{stream}\",kind=\"{kind}\"}} {requests}\n");
        assert!(metrics.contains(&line), "missing {line}");
        total_bytes += bytes;
        total_reqs += requests;
    }
    assert_eq!(snap["totals"]["bytes"].as_u64(), Some(total_bytes));
    assert_eq!(snap["totals"]["requests"].as_u64(), Some(total_reqs));
    assert_eq!(snap["streams"].as_object().unwrap().len(), 4, "{snap}");
    assert!(total_bytes > 500_000);

    // Reset returns the counters and zeroes them.
    let taken: Value = http
        .post(format!("{base}/stats/reset"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(taken["totals"]["bytes"].as_u64(), Some(total_bytes));
    let after: Value = http
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["totals"]["bytes"].as_u64(), Some(0));
    handle.shutdown().await.unwrap();
}
