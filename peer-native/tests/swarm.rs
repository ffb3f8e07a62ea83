//! 10 native viewers on loopback: real origin (synthetic live stream, 2 s segments, 2 Mbit/s),
//! real signaling server, real WebRTC data channels, 60 s each. The two cases run in parallel
//! (one process, one runtime each).

use peer_native::swarm::{SwarmOptions, SwarmReport, run_swarm};

fn run(viewers: usize, bad: f64, name: &str) -> SwarmReport {
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
            60.0,
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
    let honest = std::thread::spawn(|| run(10, 0.0, "honest"));
    let tampered = std::thread::spawn(|| run(10, 0.3, "tampered"));
    let h = honest.join().expect("honest run");
    let t = tampered.join().expect("tampered run");

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
