//! A hostile public swarm, the origin's part: each attack is tried here, and fails.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// True if the server closed `s` within `wait` (whatever it sent before closing).
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let end = tokio::time::Instant::now() + wait;
    loop {
        let Some(left) = end.checked_duration_since(tokio::time::Instant::now()) else {
            return false;
        };
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn origin_with(cfg: origin::Config) -> (SocketAddr, origin::OriginHandle) {
    origin::spawn(cfg).await.unwrap()
}

/// Slowloris: 20 sockets that never finish their request head. Before, the origin kept them
/// open for as long as the client liked (40 s and counting). Now the head must be complete
/// within the header timeout (10 s by default, 300 ms here); others are still served.
#[tokio::test]
async fn slowloris_sockets_are_closed() {
    let media = Media::new();
    let clock = TestClock::new();
    let (addr, h) = origin_with(origin::Config {
        header_timeout: Duration::from_millis(300),
        ..config(&media, &clock)
    })
    .await;
    let mut socks = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /vod/sample/index.m3u8 HTTP/1.1\r\nHost: x\r\nRange: by")
            .await
            .unwrap();
        socks.push(s);
    }
    let start = tokio::time::Instant::now();
    for s in &mut socks {
        assert!(
            closed_within(s, Duration::from_secs(2)).await,
            "a half-open request was kept"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    let r = reqwest::get(format!("http://{addr}/vod/sample/index.m3u8"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    h.shutdown().await.unwrap();
}

/// A keep-alive connection left idle after its request is closed after the header timeout,
/// and a download the client stopped reading is closed after the idle timeout (no byte moved
/// for that long). Before, both stayed open.
#[tokio::test]
async fn idle_and_stalled_connections_are_closed() {
    let media = Media::new();
    let clock = TestClock::new();
    let (addr, h) = origin_with(origin::Config {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        // 40 MB segments: more than loopback socket buffers hold.
        synthetic: vec!["big=80000:4".parse().unwrap()],
        ..config(&media, &clock)
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /synthetic/big/seg_0.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read nothing until the server gave up, then drain what the socket buffers still hold.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
        }
    };
    assert!(
        closed,
        "a stalled download was kept open ({got} bytes read)"
    );
    assert!(got < 40_000_000, "the whole segment was sent: {got}");
    h.shutdown().await.unwrap();
}

/// A request through the router from socket address `peer` (None: unknown).
async fn req_as(
    state: &origin::AppState,
    method: &str,
    path: &str,
    peer: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use axum::body::Body;
    use axum::http::Request;
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(Body::empty()).unwrap();
    if let Some(p) = peer {
        let addr: SocketAddr = p.parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
    }
    let (resp, body) = send(state, req).await;
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Anyone could zero the operator's byte counters (`POST /stats/reset`) and read them and the
/// list of streams. Now `/stats`, `POST /stats/reset` and the stream list of `/` are admin:
/// without `--admin-token`, local requests only (a loopback client, not forwarded by an
/// undeclared proxy); with one, `Authorization: Bearer <token>`. `/healthz`, `/metrics` and the
/// media stay public.
#[tokio::test]
async fn admin_endpoints_refuse_without_token() {
    let media = Media::new();
    let clock = TestClock::new();
    let st = origin::AppState::new(config(&media, &clock)).unwrap();
    // Some traffic to count.
    let (status, _) = req_as(&st, "GET", "/vod/sample/index.m3u8", None, &[]).await;
    assert_eq!(status, 200);
    let remote = Some("203.0.113.5:4000");
    let local = Some("127.0.0.1:4000");
    let undeclared_proxy = [("x-forwarded-for", "203.0.113.5")];
    for (peer, headers) in [
        (None, &[][..]),
        (remote, &[][..]),
        (local, &undeclared_proxy[..]),
    ] {
        assert_eq!(req_as(&st, "GET", "/stats", peer, headers).await.0, 403);
        assert_eq!(
            req_as(&st, "POST", "/stats/reset", peer, headers).await.0,
            403
        );
        let (status, index) = req_as(&st, "GET", "/", peer, headers).await;
        assert_eq!(status, 200);
        assert!(
            index.contains("/vod/<stream>/") && !index.contains("tsm"),
            "{index}"
        );
        for public in ["/healthz", "/metrics", "/vod/sample/index.m3u8"] {
            assert_eq!(req_as(&st, "GET", public, peer, headers).await.0, 200);
        }
    }
    // The counters were not reset by anyone above.
    let (status, stats) = req_as(&st, "GET", "/stats", local, &[]).await;
    assert_eq!(status, 200);
    assert!(!stats.contains("\"bytes\":0}"), "{stats}");
    let (_, index) = req_as(&st, "GET", "/", local, &[]).await;
    assert!(index.contains("tsm"), "{index}");
    assert_eq!(req_as(&st, "POST", "/stats/reset", local, &[]).await.0, 200);

    // Behind a declared proxy, the forwarded client decides.
    let st = origin::AppState::new(origin::Config {
        trusted_proxies: vec![http_guard::parse_cidr("127.0.0.1").unwrap()],
        ..config(&media, &clock)
    })
    .unwrap();
    assert_eq!(
        req_as(&st, "GET", "/stats", local, &undeclared_proxy)
            .await
            .0,
        403
    );
    let from_local = [("x-forwarded-for", "127.0.0.1")];
    assert_eq!(
        req_as(&st, "GET", "/stats", local, &from_local).await.0,
        200
    );

    // With a token: anywhere, with the token only.
    let token = "origin-admin-token-0123";
    let st = origin::AppState::new(origin::Config {
        admin_token: Some(token.into()),
        ..config(&media, &clock)
    })
    .unwrap();
    let bearer = format!("Bearer {token}");
    for peer in [local, remote] {
        assert_eq!(req_as(&st, "GET", "/stats", peer, &[]).await.0, 401);
        let wrong = [("authorization", "Bearer origin-admin-token-9999")];
        assert_eq!(
            req_as(&st, "POST", "/stats/reset", peer, &wrong).await.0,
            401
        );
        let good = [("authorization", bearer.as_str())];
        assert_eq!(req_as(&st, "GET", "/stats", peer, &good).await.0, 200);
        assert_eq!(
            req_as(&st, "POST", "/stats/reset", peer, &good).await.0,
            200
        );
    }
    // A short token is a configuration error.
    assert!(
        origin::AppState::new(origin::Config {
            admin_token: Some("short".into()),
            ..config(&media, &clock)
        })
        .is_err()
    );
}
