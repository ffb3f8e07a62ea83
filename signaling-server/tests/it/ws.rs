//! End-to-end tests over real sockets on port 0 (tokio-tungstenite clients).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, WAIT, connect_raw, offer};
use futures_util::SinkExt;
use protocol::PeerId;
use protocol::signaling::{ClientMsg, ErrorCode, ServerMsg, SignalData, StatsReport};
use signaling_server::{Config, metrics::Reject, spawn, token};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[tokio::test]
async fn offer_answer_between_members_only() {
    let (addr, _h) = spawn(Config::default()).await;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    let mut c = Client::connect(addr).await;
    assert!(a.id != b.id && b.id != c.id && a.id != c.id);
    assert_eq!(a.join("s1").await, Vec::<PeerId>::new());
    assert_eq!(b.join("s1").await, vec![a.id]);
    assert_eq!(c.join("s2").await, Vec::<PeerId>::new());

    b.send(&ClientMsg::Signal {
        swarm: "s1".into(),
        to: a.id,
        data: offer("v=0 offer"),
    })
    .await;
    match a.recv_skip_slots().await {
        ServerMsg::Signal { swarm, from, data } => {
            assert_eq!(
                (swarm.as_str(), from, data),
                ("s1", b.id, offer("v=0 offer"))
            );
        }
        other => panic!("{other:?}"),
    }
    let answer = SignalData::Answer {
        sdp: "v=0 answer".into(),
    };
    a.send(&ClientMsg::Signal {
        swarm: "s1".into(),
        to: b.id,
        data: answer.clone(),
    })
    .await;
    match b.recv_skip_slots().await {
        ServerMsg::Signal { from, data, .. } => assert_eq!((from, data), (a.id, answer)),
        other => panic!("{other:?}"),
    }

    // c (other swarm) cannot reach a, neither through its own swarm nor by naming a's.
    c.send(&ClientMsg::Signal {
        swarm: "s2".into(),
        to: a.id,
        data: offer("x"),
    })
    .await;
    c.expect_error(ErrorCode::UnknownPeer).await;
    c.send(&ClientMsg::Signal {
        swarm: "s1".into(),
        to: a.id,
        data: offer("x"),
    })
    .await;
    c.expect_error(ErrorCode::NotInSwarm).await;
    c.send(&ClientMsg::WantPeers { swarm: "s1".into() }).await;
    c.expect_error(ErrorCode::NotInSwarm).await;
    // A signal to oneself is refused too.
    a.send(&ClientMsg::Signal {
        swarm: "s1".into(),
        to: a.id,
        data: offer("x"),
    })
    .await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    // Nothing of s1 leaks to c, nothing of c's attempts reaches a or b.
    c.assert_quiet(Duration::from_millis(200)).await;
    a.assert_quiet(Duration::from_millis(100)).await;
    b.assert_quiet(Duration::from_millis(100)).await;

    // want_peers: a already knows b, so nobody new.
    a.send(&ClientMsg::WantPeers { swarm: "s1".into() }).await;
    match a.recv_skip_slots().await {
        ServerMsg::Peers { swarm, peers } => assert_eq!((swarm.as_str(), peers), ("s1", vec![])),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn one_connection_in_several_swarms() {
    let cfg = Config {
        max_swarms_per_conn: 2,
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    a.join("r360").await;
    a.join("r720").await;
    // Joining a swarm again just re-introduces and does not count twice.
    a.join("r720").await;
    a.send(&ClientMsg::Join {
        swarm: "r1080".into(),
        token: None,
    })
    .await;
    a.expect_error(ErrorCode::TooManySwarms).await;
    assert_eq!(b.join("r720").await, vec![a.id]);
    b.send(&ClientMsg::Signal {
        swarm: "r720".into(),
        to: a.id,
        data: offer("o"),
    })
    .await;
    match a.recv_skip_slots().await {
        ServerMsg::Signal { swarm, .. } => assert_eq!(swarm, "r720"),
        other => panic!("{other:?}"),
    }
    // b is not in r360: a cannot signal it there.
    a.send(&ClientMsg::Signal {
        swarm: "r360".into(),
        to: b.id,
        data: offer("o"),
    })
    .await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    // After leaving one swarm a can join another.
    a.send(&ClientMsg::Leave {
        swarm: "r360".into(),
    })
    .await;
    a.join("r1080").await;
    a.send(&ClientMsg::Leave {
        swarm: "nope".into(),
    })
    .await;
    a.expect_error(ErrorCode::NotInSwarm).await;
}

/// `from` (given `to` at its join) offers to `to`, which receives it.
async fn offer_to(from: &mut Client, to: &mut Client) {
    from.send(&ClientMsg::Signal {
        swarm: "s".into(),
        to: to.id,
        data: offer("hello"),
    })
    .await;
    match to.recv_skip_slots().await {
        ServerMsg::Signal { from: f, .. } => assert_eq!(f, from.id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn leave_close_and_idle_remove_members() {
    let cfg = Config {
        heartbeat_ms: 100,
        idle_factor: 3,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    a.join("s").await;
    assert_eq!(b.join("s").await, vec![a.id]);
    // Members hear `peer_left` about the members they know (were given, or got a signal from):
    // each newcomer offers to `a`, as a viewer does.
    offer_to(&mut b, &mut a).await;

    // leave → peer_left to the partner, and b is no longer reachable.
    b.send(&ClientMsg::Leave { swarm: "s".into() }).await;
    match a.recv_skip_slots().await {
        ServerMsg::PeerLeft { swarm, peer } => assert_eq!((swarm.as_str(), peer), ("s", b.id)),
        other => panic!("{other:?}"),
    }
    a.send(&ClientMsg::Signal {
        swarm: "s".into(),
        to: b.id,
        data: offer("x"),
    })
    .await;
    a.expect_error(ErrorCode::UnknownPeer).await;

    // close → peer_left.
    let mut c = Client::connect(addr).await;
    assert_eq!(c.join("s").await, vec![a.id]);
    offer_to(&mut c, &mut a).await;
    let c_id = c.id;
    c.ws.close(None).await.unwrap();
    drop(c);
    match a.recv_skip_slots().await {
        ServerMsg::PeerLeft { peer, .. } => assert_eq!(peer, c_id),
        other => panic!("{other:?}"),
    }

    // idle → closed, peer_left; a stays because it pings.
    let mut d = Client::connect(addr).await;
    assert_eq!(d.join("s").await, vec![a.id]);
    offer_to(&mut d, &mut a).await;
    let d_id = d.id;
    // a keeps pinging (and watches for d's peer_left) while d stays silent.
    let pinger = tokio::spawn(async move {
        let mut saw_left = false;
        for _ in 0..15 {
            a.send(&ClientMsg::Ping).await;
            loop {
                match a.recv_skip_slots().await {
                    ServerMsg::Pong => break,
                    ServerMsg::PeerLeft { peer, .. } if peer == d_id => saw_left = true,
                    other => panic!("{other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        (a, saw_left)
    });
    d.expect_closed().await;
    let (mut a, saw_left) = pinger.await.unwrap();
    assert!(saw_left, "no peer_left for the idle member");
    assert!(h.state().metrics().rejected(Reject::Idle) >= 1);
    a.ping_pong().await;
    assert_eq!(h.state().swarm_stats("s").map(|(n, _)| n), Some(1));
}

#[tokio::test]
async fn bad_input_gets_errors_not_panics() {
    let cfg = Config {
        max_message_bytes: 1024,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let mut bystander = Client::connect(addr).await;
    bystander.join("calm").await;
    let mut a = Client::connect(addr).await;
    a.send_text("{not json".into()).await;
    a.expect_error(ErrorCode::BadMessage).await;
    a.send_text(r#"{"v":1,"type":"teleport"}"#.into()).await;
    a.expect_error(ErrorCode::BadMessage).await;
    a.send_text(r#"{"type":"ping"}"#.into()).await;
    a.expect_error(ErrorCode::BadMessage).await;
    a.send_text(r#"{"v":7,"type":"ping"}"#.into()).await;
    a.expect_error(ErrorCode::UnsupportedVersion).await;
    a.send_text(r#"[1,2,3]"#.into()).await;
    a.expect_error(ErrorCode::BadMessage).await;
    a.send_text(r#"{"v":1,"type":"signal","swarm":"s","to":-1,"data":{}}"#.into())
        .await;
    a.expect_error(ErrorCode::BadMessage).await;
    a.send(&ClientMsg::Join {
        swarm: "".into(),
        token: None,
    })
    .await;
    a.expect_error(ErrorCode::BadSwarm).await;
    a.send(&ClientMsg::Join {
        swarm: "x".repeat(300),
        token: None,
    })
    .await;
    a.expect_error(ErrorCode::BadSwarm).await;
    a.ws.send(Message::Binary(Bytes::from_static(b"\x00\x01")))
        .await
        .unwrap();
    a.expect_error(ErrorCode::BinaryFrame).await;
    // Over the limit but under 2×: error, connection kept.
    a.send_text(format!(
        r#"{{"v":1,"type":"ping","pad":"{}"}}"#,
        "p".repeat(1500)
    ))
    .await;
    a.expect_error(ErrorCode::TooLarge).await;
    a.ping_pong().await;
    // Over 2× the limit: error, then closed.
    a.send_text("q".repeat(5000)).await;
    a.expect_error(ErrorCode::TooLarge).await;
    a.expect_closed().await;
    assert_eq!(h.state().metrics().rejected(Reject::Oversized), 1);
    // A text frame that is not UTF-8: error, then closed (the frame layer is broken).
    let mut b = Client::connect(addr).await;
    let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        Bytes::from_static(b"\xff\xfe"),
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    b.ws.send(Message::Frame(frame)).await.unwrap();
    b.expect_error(ErrorCode::BadMessage).await;
    b.expect_closed().await;
    // Nobody else noticed.
    bystander.ping_pong().await;
    bystander.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn repeated_errors_close_the_connection() {
    let cfg = Config {
        error_budget: 3,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let mut a = Client::connect(addr).await;
    for _ in 0..3 {
        a.send_text("nope".into()).await;
        a.expect_error(ErrorCode::BadMessage).await;
    }
    a.send_text("nope".into()).await;
    a.expect_error(ErrorCode::BadMessage).await;
    a.expect_closed().await;
    assert_eq!(h.state().metrics().rejected(Reject::Abuse), 1);
    // The server still works.
    Client::connect(addr).await.ping_pong().await;
}

#[tokio::test]
async fn message_rate_is_limited() {
    let cfg = Config {
        rate_per_s: 1.0,
        rate_burst: 3.0,
        error_budget: 2,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let mut a = Client::connect(addr).await;
    for _ in 0..3 {
        a.ping_pong().await;
    }
    a.send(&ClientMsg::Ping).await;
    a.expect_error(ErrorCode::RateLimited).await;
    // Keeps flooding: closed once the error budget is spent.
    for _ in 0..5 {
        a.send(&ClientMsg::Ping).await;
    }
    a.expect_closed().await;
    assert_eq!(h.state().metrics().rejected(Reject::Abuse), 1);
    assert!(h.state().metrics().errors_sent(ErrorCode::RateLimited) >= 2);
}

#[tokio::test]
async fn intro_peers_caps_members_returned() {
    let cfg = Config {
        intro_peers: 2,
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(addr).await;
        let peers = c.join("big").await;
        assert!(peers.len() <= 2);
        clients.push(c);
    }
    let mut late = Client::connect(addr).await;
    let peers = late.join("big").await;
    assert_eq!(peers.len(), 2);
    late.send(&ClientMsg::WantPeers {
        swarm: "big".into(),
    })
    .await;
    match late.recv_skip_slots().await {
        ServerMsg::Peers { peers: more, .. } => {
            assert_eq!(more.len(), 2);
            assert!(more.iter().all(|p| !peers.contains(p) && *p != late.id));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn connection_limits() {
    let cfg = Config {
        max_connections: 2,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let _a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    let mut ws = connect_raw(addr).await;
    let mut c = Client { ws, id: 0 };
    c.expect_error(ErrorCode::ServerFull).await;
    c.expect_closed().await;
    assert_eq!(h.state().metrics().rejected(Reject::ServerFull), 1);
    // A slot frees up when a client leaves.
    b.ws.close(None).await.unwrap();
    drop(b);
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.state().open_connections() > 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Client::connect(addr).await.ping_pong().await;

    let cfg = Config {
        max_conns_per_ip: 1,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let _a = Client::connect(addr).await;
    ws = connect_raw(addr).await;
    c = Client { ws, id: 0 };
    c.expect_error(ErrorCode::RateLimited).await;
    c.expect_closed().await;
    assert_eq!(h.state().metrics().rejected(Reject::PerIp), 1);
}

async fn connect_with_origin(addr: SocketAddr, origin: Option<&str>) -> Result<(), u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn origin_allow_list() {
    let cfg = Config {
        allowed_origins: vec!["https://player.example".into()],
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    assert_eq!(
        connect_with_origin(addr, Some("https://evil.example")).await,
        Err(403)
    );
    assert_eq!(
        connect_with_origin(addr, Some("https://player.example")).await,
        Ok(())
    );
    assert_eq!(connect_with_origin(addr, None).await, Ok(()));
    assert_eq!(h.state().metrics().rejected(Reject::Origin), 1);

    let cfg = Config {
        allowed_origins: vec!["https://player.example".into()],
        require_origin: true,
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    assert_eq!(connect_with_origin(addr, None).await, Err(403));
    assert_eq!(
        connect_with_origin(addr, Some("https://player.example")).await,
        Ok(())
    );
}

#[tokio::test]
async fn join_tokens() {
    let secret = "a-secret-of-at-least-16-bytes";
    let cfg = Config {
        token_secret: Some(secret.into()),
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut a = Client::connect(addr).await;
    let join = |swarm: &str, token: Option<String>| ClientMsg::Join {
        swarm: swarm.into(),
        token,
    };
    a.send(&join("live/a", None)).await;
    a.expect_error(ErrorCode::Unauthorized).await;
    a.send(&join("live/a", Some("garbage".into()))).await;
    a.expect_error(ErrorCode::Unauthorized).await;
    let expired = token::sign(secret.as_bytes(), "live/*", now - 10);
    a.send(&join("live/a", Some(expired))).await;
    a.expect_error(ErrorCode::Unauthorized).await;
    let other_key = token::sign(b"another-secret-0123456789", "live/*", now + 60);
    a.send(&join("live/a", Some(other_key))).await;
    a.expect_error(ErrorCode::Unauthorized).await;
    let good = token::sign(secret.as_bytes(), "live/*", now + 60);
    a.send(&join("vod/b", Some(good.clone()))).await;
    a.expect_error(ErrorCode::Unauthorized).await;
    a.send(&join("live/a", Some(good))).await;
    assert!(matches!(
        a.recv_skip_slots().await,
        ServerMsg::Joined { .. }
    ));
}

#[tokio::test]
async fn stats_are_aggregated_per_swarm() {
    let (addr, h) = spawn(Config::default()).await;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    a.join("s").await;
    b.join("s").await;
    let report = |http, p2p| StatsReport {
        http_bytes: http,
        p2p_bytes: p2p,
        peers: 1,
        ..Default::default()
    };
    a.send(&ClientMsg::Stats {
        swarm: "s".into(),
        stats: report(100, 300),
    })
    .await;
    a.send(&ClientMsg::Stats {
        swarm: "s".into(),
        stats: report(100, 700),
    })
    .await;
    b.send(&ClientMsg::Stats {
        swarm: "s".into(),
        stats: report(200, 0),
    })
    .await;
    a.ping_pong().await;
    b.ping_pong().await;
    let (n, s) = h.state().swarm_stats("s").unwrap();
    assert_eq!(
        (n, s.http_bytes, s.p2p_bytes, s.peer_links),
        (2, 300, 700, 2)
    );
    let o = h.state().overview();
    assert!((o.offload - 0.7).abs() < 1e-9, "{}", o.offload);
    assert_eq!(o.top[0].swarm, "s");
    a.send(&ClientMsg::Stats {
        swarm: "t".into(),
        stats: report(1, 1),
    })
    .await;
    a.expect_error(ErrorCode::NotInSwarm).await;
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect() {
    let cfg = Config {
        reconnect_min_ms: 500,
        reconnect_jitter_ms: 1000,
        ..Config::default()
    };
    let (addr, h) = spawn(cfg).await;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    a.join("s").await;
    let stop = tokio::spawn(h.shutdown());
    for c in [&mut a, &mut b] {
        match c.recv_skip_slots().await {
            ServerMsg::Reconnect { after_ms } => assert!((500..=1500).contains(&after_ms)),
            other => panic!("{other:?}"),
        }
        c.expect_closed().await;
    }
    stop.await.unwrap().unwrap();
}

/// `--ice-server` / `--turn-secret`: every `welcome` carries the STUN URLs as they are and the
/// TURN URLs with credentials of that viewer's own (coturn REST: `<expiry>:<peer id>` and
/// base64(HMAC-SHA1(secret, username))), expiring `turn_ttl_s` from now. Without them, none.
#[tokio::test]
async fn welcome_hands_out_ice_servers_with_per_viewer_turn_credentials() {
    let cfg = Config {
        ice_servers: vec![
            "stun:stun.example:3478".into(),
            "turn:turn.example:3478?transport=udp".into(),
        ],
        turn_secret: Some("0123456789abcdef-turn".into()),
        turn_ttl_s: 600,
        ..Config::default()
    };
    let (addr, _h) = spawn(cfg).await;
    let mut ws = connect_raw(addr).await;
    let Some(Ok(Message::Text(t))) = futures_util::StreamExt::next(&mut ws).await else {
        panic!("no welcome");
    };
    let ServerMsg::Welcome {
        peer_id,
        ice_servers,
        ..
    } = ServerMsg::from_json(&t, 1 << 16).unwrap()
    else {
        panic!("expected welcome: {t}");
    };
    assert_eq!(ice_servers.len(), 2, "{t}");
    assert_eq!(ice_servers[0].urls, vec!["stun:stun.example:3478"]);
    assert_eq!(ice_servers[0].username, None);
    let turn = &ice_servers[1];
    assert_eq!(turn.urls, vec!["turn:turn.example:3478?transport=udp"]);
    let user = turn.username.clone().unwrap();
    let (exp, id) = user.split_once(':').unwrap();
    assert_eq!(id, peer_id.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp: u64 = exp.parse().unwrap();
    assert!(
        (now + 590..=now + 610).contains(&exp),
        "expiry {exp}, now {now}"
    );
    assert_eq!(
        turn.credential.as_deref(),
        Some(signaling_server::ice::turn_credential(b"0123456789abcdef-turn", &user).as_str())
    );

    let (addr, _h) = spawn(Config::default()).await;
    let mut ws = connect_raw(addr).await;
    let Some(Ok(Message::Text(t))) = futures_util::StreamExt::next(&mut ws).await else {
        panic!("no welcome");
    };
    assert!(!t.contains("ice_servers"), "{t}");
}
