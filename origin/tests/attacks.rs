//! A hostile public swarm, the origin's part: each attack is tried here, and fails.
#![allow(clippy::unwrap_used)]

mod common;

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
