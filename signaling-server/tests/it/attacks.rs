//! A hostile public swarm: each attack on the signaling server is tried here, and fails.
//!
//! Real sockets on port 0 (the server's own accept loop), hostile clients written by hand.

#![allow(clippy::unwrap_used)]

use crate::common;

use axum::body::{Body, to_bytes};
use axum::http::Request;
use common::{Client, offer};
use protocol::PeerId;
use protocol::signaling::{ClientMsg, ErrorCode, ServerMsg, SignalData};
use signaling_server::{AppState, Config, router, spawn};
use std::time::Duration;
use tower::ServiceExt;

/// `/metrics` as text (through the router, like a scraper).
async fn metrics(state: &AppState) -> String {
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of one Prometheus sample line (`name{labels}`), 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn signal(to: PeerId, data: SignalData) -> ClientMsg {
    ClientMsg::Signal {
        swarm: "live".into(),
        to,
        data,
    }
}

/// Mallory joins a swarm, then offers to every peer id near her own (the server hands out
/// consecutive ids) to harvest viewers' addresses from their ICE answers. Only the members the
/// server paired her with hear from her; the others never see her offer, and cannot be made to
/// signal her either.
#[tokio::test]
async fn unsolicited_offers_are_not_relayed() {
    let cfg = Config {
        intro_peers: 2,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let mut viewers = Vec::new();
    for _ in 0..6 {
        let mut v = Client::connect(addr).await;
        v.join("live").await;
        viewers.push(v);
    }
    let mut m = Client::connect(addr).await;
    let intro = m.join("live").await;
    assert_eq!(intro.len(), 2);
    // Ids m-1 ..= m-6 are the viewers, m-7 and m-8 nobody.
    for k in 1..=8 {
        m.send(&signal(m.id - k, offer("v=0 harvest"))).await;
    }
    for _ in 0..6 {
        m.expect_error(ErrorCode::UnknownPeer).await;
    }
    for v in &mut viewers {
        if intro.contains(&v.id) {
            match v.recv_skip_slots().await {
                ServerMsg::Signal { from, .. } => assert_eq!(from, m.id),
                other => panic!("{other:?}"),
            }
        }
        v.assert_quiet(Duration::from_millis(150)).await;
    }
    // Either side of an introduced pair may signal the other (glare, re-offers, answers);
    // a member that was not paired with her cannot be used to reach her.
    let paired = viewers.iter_mut().find(|v| intro.contains(&v.id)).unwrap();
    paired.send(&signal(m.id, offer("v=0 glare"))).await;
    match m.recv_skip_slots().await {
        ServerMsg::Signal { from, data, .. } => {
            assert_eq!((from, data), (paired.id, offer("v=0 glare")));
        }
        other => panic!("{other:?}"),
    }
    let stranger = viewers.iter_mut().find(|v| !intro.contains(&v.id)).unwrap();
    stranger.send(&signal(m.id, offer("v=0 x"))).await;
    stranger.expect_error(ErrorCode::UnknownPeer).await;
    m.assert_quiet(Duration::from_millis(150)).await;
    // Asking for more peers adds pairs and keeps the old ones.
    m.send(&ClientMsg::WantPeers {
        swarm: "live".into(),
    })
    .await;
    let more = match m.recv_skip_slots().await {
        ServerMsg::Peers { peers, .. } => peers,
        other => panic!("{other:?}"),
    };
    assert_eq!(more.len(), 2);
    for p in intro.iter().chain(&more) {
        m.send(&signal(*p, offer("v=0 again"))).await;
    }
    m.assert_quiet(Duration::from_millis(150)).await;

    let text = metrics(h.state()).await;
    assert_eq!(
        sample(
            &text,
            "signaling_relays_refused_total{reason=\"not_introduced\"}"
        ),
        5.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "signaling_relays_refused_total{reason=\"unknown_peer\"}"
        ),
        2.0
    );
}

/// Relayed handshakes are checked: SDP over 16 KiB, candidates over 1 KiB and empty SDP are
/// refused (they would be stored and parsed by the receiving browser).
#[tokio::test]
async fn oversized_signal_data_is_not_relayed() {
    let (addr, h) = spawn(Config::default()).await;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    a.join("live").await;
    assert_eq!(b.join("live").await, vec![a.id]);
    let big_sdp = format!("v=0\r\n{}", "a=x\r\n".repeat(4 * 1024));
    b.send(&signal(a.id, offer(&big_sdp))).await;
    b.expect_error(ErrorCode::TooLarge).await;
    let big_candidate = SignalData::Candidate {
        candidate: format!(
            "candidate:1 1 udp 1 192.0.2.1 9 typ host {}",
            "x".repeat(1100)
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
    };
    b.send(&signal(a.id, big_candidate)).await;
    b.expect_error(ErrorCode::TooLarge).await;
    let long_mid = SignalData::Candidate {
        candidate: String::new(),
        sdp_mid: Some("m".repeat(300)),
        sdp_m_line_index: None,
    };
    b.send(&signal(a.id, long_mid)).await;
    b.expect_error(ErrorCode::TooLarge).await;
    b.send(&signal(a.id, SignalData::Answer { sdp: String::new() }))
        .await;
    b.expect_error(ErrorCode::BadMessage).await;
    a.assert_quiet(Duration::from_millis(150)).await;
    // Real-sized data still goes through.
    let sdp = format!("v=0\r\n{}", "a=x\r\n".repeat(1000));
    b.send(&signal(a.id, offer(&sdp))).await;
    match a.recv_skip_slots().await {
        ServerMsg::Signal { from, data, .. } => assert_eq!((from, data), (b.id, offer(&sdp))),
        other => panic!("{other:?}"),
    }
    let text = metrics(h.state()).await;
    assert_eq!(
        sample(&text, "signaling_relays_refused_total{reason=\"bad_data\"}"),
        4.0,
        "{text}"
    );
}

/// A churner loops join/leave ~20 times a second next to 30 quiet viewers (and reconnects
/// whenever the server closes it). Before, each bystander got ~2 membership notices per loop (a
/// `slot` on every join and every leave, plus `peer_left`s): ~40 messages/s each. Now:
/// * joins are rate-limited per connection (burst 4, then 0.5/s; the refusals spend the error
///   budget, so the churner is closed and must reconnect);
/// * `slot` notices are coalesced: a member is told its latest slot at most once per 500 ms per
///   swarm, and not at all when the churn cancelled out;
/// * `peer_left` goes only to members that knew the leaver (were given it, or it signaled
///   them): bystanders that the churner was merely given never hear of it.
///
/// The documented bound, per bystander and swarm: ≤ 1 `slot` per 500 ms, + one `peer_left` per
/// accepted join of a member that signaled it or was given to it. Here: ≤ 2 notices/s.
#[tokio::test]
async fn join_leave_churn_does_not_flood_bystanders() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (addr, _h) = spawn(Config::default()).await;
    let mut bystanders = Vec::new();
    for _ in 0..30 {
        let mut b = Client::connect(addr).await;
        b.join("live").await;
        bystanders.push(b);
    }
    // Let the joins' own notices arrive, then drain them.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for b in &mut bystanders {
        while b.try_recv(Duration::from_millis(20)).await.is_ok() {}
    }
    let window = Duration::from_secs(3);
    let tail = Duration::from_millis(700);
    let counters: Vec<_> = bystanders
        .into_iter()
        .map(|mut b| {
            tokio::spawn(async move {
                let end = tokio::time::Instant::now() + window + tail;
                let mut n = 0u32;
                while let Some(left) = end.checked_duration_since(tokio::time::Instant::now()) {
                    match tokio::time::timeout(left, b.ws.next()).await {
                        Ok(Some(Ok(Message::Text(_)))) => n += 1,
                        Ok(Some(Ok(_))) => {}
                        _ => break,
                    }
                }
                n
            })
        })
        .collect();
    let churner = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        let end = tokio::time::Instant::now() + window;
        let (join, leave) = (
            ClientMsg::Join {
                swarm: "live".into(),
                token: None,
            }
            .to_json(),
            ClientMsg::Leave {
                swarm: "live".into(),
            }
            .to_json(),
        );
        let (mut loops, mut reconnects) = (0, 0);
        while tokio::time::Instant::now() < end {
            if c.ws.send(Message::Text(join.clone().into())).await.is_err()
                || c.ws
                    .send(Message::Text(leave.clone().into()))
                    .await
                    .is_err()
            {
                c = Client::connect(addr).await;
                reconnects += 1;
                continue;
            }
            loops += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (loops, reconnects)
    });
    let (loops, reconnects) = churner.await.unwrap();
    let mut counts = Vec::new();
    for c in counters {
        counts.push(c.await.unwrap());
    }
    let secs = (window + tail).as_secs_f64();
    let max = counts.iter().copied().max().unwrap_or(0);
    let mean = counts.iter().sum::<u32>() as f64 / counts.len() as f64;
    eprintln!(
        "churner: {loops} join/leave loops, {reconnects} reconnects; per bystander: max {max} \
         ({:.1}/s), mean {mean:.1} ({:.1}/s)",
        max as f64 / secs,
        mean / secs
    );
    // Slots: one per 500 ms at most; no peer_left (the churner signals nobody).
    let bound = ((window + tail).as_millis() / 500 + 1) as u32;
    assert!(
        max <= bound,
        "a bystander got {max} notices (bound {bound}): {counts:?}"
    );
    assert!(max as f64 / secs <= 2.5);
}

fn stats(swarm: &str, http: u64, p2p: u64, peers: u32) -> ClientMsg {
    ClientMsg::Stats {
        swarm: swarm.into(),
        stats: protocol::signaling::StatsReport {
            http_bytes: http,
            p2p_bytes: p2p,
            peers,
            ..Default::default()
        },
    }
}

/// A viewer reports `http_bytes` = 2^53 − 1 (and other absurd values) to wreck the operator's
/// counters. Before, `signaling_http_bytes_total` jumped by 9e15. Now cumulative reports become
/// deltas per (connection, swarm) that must fit a generous bitrate (200 Mbit/s per counter,
/// 10 s of burst); anything else is ignored, counted in `signaling_stats_rejected_total`, and
/// becomes the new baseline (so honest counting resumes from there).
#[tokio::test]
async fn absurd_stats_do_not_move_counters() {
    let (addr, h) = spawn(Config::default()).await;
    let mut m = Client::connect(addr).await;
    m.join("live").await;
    let max = (1u64 << 53) - 1;
    m.send(&stats("live", max, 0, 1)).await;
    // Goes "down" from there: ignored too (a counter within one membership never decreases).
    m.send(&stats("live", 1_000_000, 0, 1)).await;
    // Honest growth from the new baseline counts.
    m.send(&stats("live", 3_000_000, 500_000, 2)).await;
    // Alternating huge/small to get a fresh delta each time: every jump up is too fast.
    for i in 0..5 {
        m.send(&stats(
            "live",
            3_000_000 + (i + 1) * 10_000_000_000,
            500_000,
            2,
        ))
        .await;
        m.send(&stats("live", 3_000_000, 500_000, 2)).await;
    }
    // Many small steps in a burst cannot add up past the burst allowance (10 s × 25 MB/s).
    for i in 1..=20u64 {
        m.send(&stats("live", 3_000_000 + i * 100_000_000, 500_000, 2))
            .await;
    }
    // An absurd peer count does not move the swarm's link sum.
    m.send(&stats("live", 1, 1, u32::MAX)).await;
    m.ping_pong().await;

    let text = metrics(h.state()).await;
    let http = sample(&text, "signaling_http_bytes_total");
    assert!(http < 300_000_000.0, "http bytes moved by {http}\n{text}");
    assert!(http >= 2_000_000.0, "honest delta lost: {http}");
    assert_eq!(sample(&text, "signaling_p2p_bytes_total"), 500_000.0);
    let rejected: f64 = ["too_fast", "went_down", "peers"]
        .iter()
        .map(|r| {
            sample(
                &text,
                &format!("signaling_stats_rejected_total{{reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert!(rejected >= 12.0, "{text}");
    let (_, s) = h.state().swarm_stats("live").unwrap();
    assert_eq!(s.peer_links, 2);
    assert!(s.http_bytes < 300_000_000);
}

/// Opens `n` raw sockets that send a partial request head and never finish it.
async fn slowloris(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut socks = Vec::new();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websock")
            .await
            .unwrap();
        socks.push(s);
    }
    socks
}

/// True if the server closed `s` within `wait` (whatever it sent before closing).
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
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

/// Slowloris: 20 sockets that never finish their request head. Before, they stayed open for
/// as long as the client liked (40 s and counting). Now the head must be complete within the
/// header timeout (10 s by default, 300 ms here), and the server keeps serving others.
#[tokio::test]
async fn slowloris_sockets_are_closed() {
    let cfg = Config {
        header_timeout_ms: 300,
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    let mut socks = slowloris(addr, 20).await;
    let start = tokio::time::Instant::now();
    for s in &mut socks {
        assert!(
            closed_within(s, Duration::from_secs(2)).await,
            "a half-open request was kept"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    Client::connect(addr).await.ping_pong().await;
}

/// An idle keep-alive connection (one request done, then silence) is closed too, and a
/// WebSocket that says nothing after its `welcome` is closed after the first-message timeout
/// (before: after 3 heartbeats, 90 s by default).
#[tokio::test]
async fn idle_and_silent_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let cfg = Config {
        header_timeout_ms: 300,
        first_message_timeout_ms: 300,
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    let mut silent = Client::connect(addr).await;
    let start = tokio::time::Instant::now();
    silent.expect_closed().await;
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// Half-open sockets count against the per-IP limit from accept (before: only WebSockets
/// counted, at upgrade, so one address could hold any number of half-open sockets). Up to a few
/// over the limit get the typed refusal; beyond that they are closed at accept.
#[tokio::test]
async fn slowloris_sockets_count_against_the_per_ip_limit() {
    let cfg = Config {
        max_conns_per_ip: 4,
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    let socks = slowloris(addr, 4).await;
    let ws = common::connect_raw(addr).await;
    let mut c = Client { ws, id: 0 };
    c.expect_error(ErrorCode::RateLimited).await;
    c.expect_closed().await;
    // Far over the limit: closed without a word.
    let mut more = slowloris(addr, 20).await;
    let mut closed = 0;
    for s in &mut more {
        if closed_within(s, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert!(closed >= 15, "only {closed} of 20 closed at accept");
    drop((socks, more));
    tokio::time::sleep(Duration::from_millis(200)).await;
    Client::connect(addr).await.ping_pong().await;
}

/// Connects a WebSocket whose request carries `X-Forwarded-For: xff`; Ok(welcome) or the
/// refusal's error code.
async fn connect_as(addr: std::net::SocketAddr, xff: &str) -> Result<Client, ErrorCode> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = Client { ws, id: 0 };
    match c.recv().await {
        ServerMsg::Welcome { peer_id, .. } => {
            c.id = peer_id;
            Ok(c)
        }
        ServerMsg::Error { code, .. } => Err(code),
        other => panic!("{other:?}"),
    }
}

/// A client behind no proxy writes `X-Forwarded-For` to pose as many addresses and dodge the
/// per-IP limit: it still counts as its socket address. Only a configured `--trusted-proxy`
/// (here 127.0.0.1, standing in for a reverse proxy) is believed, and then each forwarded
/// client counts on its own. Before, forwarding headers were ignored even from a trusted proxy,
/// so all its clients shared the proxy's limit.
#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let cfg = Config {
        max_conns_per_ip: 1,
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg.clone()).await;
    let _a = connect_as(addr, "203.0.113.1").await.unwrap();
    assert_eq!(
        connect_as(addr, "203.0.113.2").await.err(),
        Some(ErrorCode::RateLimited)
    );

    let cfg = Config {
        trusted_proxies: vec![http_guard::parse_cidr("127.0.0.1").unwrap()],
        ..cfg
    };
    let (addr, _h) = spawn(cfg).await;
    let a = connect_as(addr, "203.0.113.1").await.unwrap();
    let _b = connect_as(addr, "198.51.100.7, 203.0.113.2").await.unwrap();
    // The proxy appends the address it saw: a spoofed first entry changes nothing.
    assert_eq!(
        connect_as(addr, "203.0.113.2, 203.0.113.1").await.err(),
        Some(ErrorCode::RateLimited)
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(connect_as(addr, "203.0.113.1").await.is_ok());
}

/// An IPv6 host owns a whole /64 and can use a fresh address for every connection: per-IP
/// limits count IPv6 clients by their /64 (IPv4 clients by their exact address). Before, two
/// addresses of one /64 each got their own limit. (The addresses come through a trusted proxy:
/// loopback offers one IPv6 address only.)
#[tokio::test]
async fn ipv6_neighbours_share_one_per_ip_limit() {
    let cfg = Config {
        max_conns_per_ip: 1,
        trusted_proxies: vec![http_guard::parse_cidr("127.0.0.1").unwrap()],
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    let _a = connect_as(addr, "2001:db8:1:2::1").await.unwrap();
    assert_eq!(
        connect_as(addr, "2001:db8:1:2:ffff:ffff:ffff:ffff")
            .await
            .err(),
        Some(ErrorCode::RateLimited)
    );
    assert_eq!(
        connect_as(addr, "[2001:db8:1:2::77]:4711").await.err(),
        Some(ErrorCode::RateLimited)
    );
    // The next /64 is another subscriber; IPv4 neighbours are distinct.
    let _b = connect_as(addr, "2001:db8:1:3::1").await.unwrap();
    let _c = connect_as(addr, "198.51.100.1").await.unwrap();
    let _d = connect_as(addr, "198.51.100.2").await.unwrap();
    assert_eq!(
        connect_as(addr, "::ffff:198.51.100.2").await.err(),
        Some(ErrorCode::RateLimited)
    );
}

/// GET `path` through the router, from socket address `peer` (None: unknown), with headers.
async fn get_as(
    state: &AppState,
    path: &str,
    peer: Option<&str>,
    headers: &[(&str, &str)],
) -> (axum::http::StatusCode, axum::http::HeaderMap) {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::empty()).unwrap();
    if let Some(p) = peer {
        let addr: std::net::SocketAddr = p.parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
    }
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    (resp.status(), resp.headers().clone())
}

/// Anyone could list every swarm (stream URLs, audience sizes) at `/api/swarms` and open the
/// dashboard. Now those are admin endpoints: without `--admin-token` they answer local
/// requests only (a loopback client, not forwarded by an undeclared proxy); with one, they need
/// `Authorization: Bearer <token>` (or Basic with the token as password, for browsers).
/// `/healthz` and `/metrics` stay public (aggregate counters only, for load balancers and
/// scrapers).
#[tokio::test]
async fn admin_endpoints_refuse_without_token() {
    use axum::http::StatusCode;
    let admin = ["/api/swarms", "/", "/dashboard"];
    let state = AppState::new(Config::default());
    for path in admin {
        for (peer, headers) in [
            (None, &[][..]),
            (Some("203.0.113.5:4000"), &[][..]),
            (Some("[2001:db8::5]:4000"), &[][..]),
            // A proxy on this host that was not declared with --trusted-proxy.
            (
                Some("127.0.0.1:4000"),
                &[("x-forwarded-for", "203.0.113.5")][..],
            ),
        ] {
            let (status, _) = get_as(&state, path, peer, headers).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{path} from {peer:?} {headers:?}"
            );
        }
        for peer in ["127.0.0.1:4000", "[::1]:4000"] {
            let (status, _) = get_as(&state, path, Some(peer), &[]).await;
            assert_eq!(status, StatusCode::OK, "{path} from {peer}");
        }
    }
    for path in ["/healthz", "/metrics"] {
        let (status, _) = get_as(&state, path, Some("203.0.113.5:4000"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    let token = "an-admin-token-0123456789";
    let state = AppState::new(Config {
        admin_token: Some(token.into()),
        ..Config::default()
    });
    let bearer = format!("Bearer {token}");
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{token}"))
    );
    for path in admin {
        for peer in ["127.0.0.1:4000", "203.0.113.5:4000"] {
            let (status, headers) = get_as(&state, path, Some(peer), &[]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} from {peer}");
            assert!(headers.get_all("www-authenticate").iter().count() >= 1);
            let wrong = [("authorization", "Bearer not-the-token-0123456")];
            let (status, _) = get_as(&state, path, Some(peer), &wrong).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            for auth in [&bearer, &basic] {
                let h = [("authorization", auth.as_str())];
                let (status, _) = get_as(&state, path, Some(peer), &h).await;
                assert_eq!(status, StatusCode::OK, "{path} from {peer} with {auth}");
            }
        }
    }
}

/// WebSocket ping frames (control frames, answered by the server with pongs) sent as fast as
/// the socket takes them. Before, they skipped the message rate limit: 5 000 pings in a row were
/// all answered and the connection stayed open. Now each one spends the same budget as a
/// message: past the burst the client gets `rate_limited` errors, then is closed once its error
/// budget is spent — while a neighbour keeps being served.
#[tokio::test]
async fn websocket_ping_flood_is_rate_limited() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let cfg = Config {
        rate_per_s: 10.0,
        rate_burst: 20.0,
        error_budget: 3,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let mut quiet = Client::connect(addr).await;
    let mut flooder = Client::connect(addr).await;
    let mut sent = 0;
    for _ in 0..5000 {
        if flooder
            .ws
            .send(Message::Ping(vec![7u8; 16].into()))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    // Errors (and pongs) arrive, then the close (or a reset: the server does not wait for
    // the flooder's unread pings).
    let mut errors = 0;
    let end = loop {
        match flooder.try_recv(Duration::from_secs(3)).await {
            Ok(ServerMsg::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::RateLimited);
                errors += 1;
            }
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    println!("ping flood: {sent} pings written; {errors} rate_limited errors read, then: {end}");
    assert_ne!(end, "timeout", "the flooder was never closed");
    assert!(h.state().metrics().errors_sent(ErrorCode::RateLimited) >= 3);
    // The neighbour is unaffected.
    quiet.ping_pong().await;
}
