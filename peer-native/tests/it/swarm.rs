//! 10 native viewers on loopback: real origin (synthetic live stream, 2 s segments, 2 Mbit/s),
//! real signaling server, real WebRTC data channels, 60 s each.
//!
//! Real-time tests: they take `crate::serial()` (see main.rs).

use peer_native::swarm::{SwarmOptions, SwarmReport, run_swarm};

use crate::serial;

fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| {
        "warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error".into()
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

fn run(viewers: usize, bad: f64, name: &str, seconds: f64) -> SwarmReport {
    init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (origin_addr, origin) = origin::spawn(origin::Config {
            synthetic: vec![origin::SyntheticSpec {
                name: name.into(),
                rate_kbps: 2000,
                seg_ms: 2000,
            }],
            ..Default::default()
        })
        .await
        .expect("origin");
        let (sig_addr, sig) = signaling_server::spawn(signaling_server::Config::default()).await;
        let mut o = SwarmOptions::new(
            format!("ws://{sig_addr}/ws"),
            format!("http://{origin_addr}/synthetic/{name}/index.m3u8"),
            viewers,
            seconds,
        );
        o.ramp = 5.0;
        o.bad_peers = bad;
        let r = run_swarm(o, |_, _| {}).await;
        eprintln!("[{name}]\n{}{}", r.table(), r.to_json());
        let _ = sig.shutdown().await;
        let _ = origin.shutdown().await;
        r
    })
}

#[test]
fn ten_native_peers_offload_and_tampered_peers_banned() {
    let _serial = serial();
    let h = run(10, 0.0, "honest", 60.0);
    // Bans come within the first segments a tampered peer serves: 40 s are plenty, and CI time
    // is kept under its 30-minute budget.
    let t = run(10, 0.3, "tampered", 40.0);

    assert!(h.errors.is_empty(), "errors: {:?}", h.errors);
    assert_eq!(h.origin_bytes_source, "origin");
    assert!(
        h.offload >= 0.8,
        "offload {:.3} < 0.8 (limit {:.3})",
        h.offload,
        h.limit
    );
    assert_eq!(h.stalls, 0, "stalls");
    assert_eq!(h.corrupt_to_player, 0);
    assert!(
        h.peers.iter().all(|p| p.played >= 20),
        "every viewer played"
    );
    // The origin's own accounting agrees that peers carried the load.
    assert!(h.origin_bytes < h.delivered_http + h.delivered_p2p);

    assert!(t.errors.is_empty(), "errors: {:?}", t.errors);
    assert_eq!(t.bad, 3);
    assert_eq!(t.banned_bad, 3, "all tampered peers banned");
    assert_eq!(t.banned_honest, 0);
    assert_eq!(t.corrupt_to_player, 0, "no corrupt bytes reach a player");
    assert_eq!(t.stalls, 0, "stalls");
}

/// The signaling server restarts mid-run (graceful: it tells clients to reconnect): viewers keep
/// playing over their data channels and HTTP, reconnect with backoff and rejoin the new server.
#[test]
fn viewers_rejoin_after_signaling_restart() {
    let _serial = serial();
    init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (origin_addr, origin) = origin::spawn(origin::Config {
            synthetic: vec![origin::SyntheticSpec {
                name: "restart".into(),
                rate_kbps: 2000,
                seg_ms: 2000,
            }],
            ..Default::default()
        })
        .await
        .expect("origin");
        let cfg = signaling_server::Config {
            reconnect_min_ms: 300,
            reconnect_jitter_ms: 700,
            shutdown_grace_ms: 1000,
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop1, rx1) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn(signaling_server::serve(
            listener,
            signaling_server::AppState::new(cfg.clone()),
            async {
                let _ = rx1.await;
            },
        ));
        let mut o = SwarmOptions::new(
            format!("ws://{addr}/ws"),
            format!("http://{origin_addr}/synthetic/restart/index.m3u8"),
            4,
            30.0,
        );
        o.ramp = 2.0;
        let swarm = tokio::spawn(run_swarm(o, |_, _| {}));
        tokio::time::sleep(std::time::Duration::from_secs(8)).await;
        let _ = stop1.send(());
        first
            .await
            .expect("first server task")
            .expect("first server");
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        let state = signaling_server::AppState::new(cfg);
        let (stop2, rx2) = tokio::sync::oneshot::channel::<()>();
        let second = tokio::spawn(signaling_server::serve(listener, state.clone(), async {
            let _ = rx2.await;
        }));
        // Reconnect delays are at most 1 s (+ backoff); give them time to rejoin.
        tokio::time::sleep(std::time::Duration::from_secs(8)).await;
        assert_eq!(
            state.swarm_totals(),
            (1, 4),
            "all viewers rejoined the new server"
        );
        let r = swarm.await.expect("swarm");
        eprintln!("[restart]\n{}{}", r.table(), r.to_json());
        assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
        assert!(
            r.peers.iter().all(|p| p.signal_reconnects >= 1),
            "every viewer reconnected"
        );
        assert_eq!(r.stalls, 0);
        assert_eq!(r.corrupt_to_player, 0);
        assert!(
            r.offload > 0.3,
            "P2P kept working: offload {:.3}",
            r.offload
        );
        let _ = stop2.send(());
        let _ = second.await;
        let _ = origin.shutdown().await;
    });
}
