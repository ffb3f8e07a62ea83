//! Short seeded runs of the swarm simulator: the core's safety properties at swarm scale.
//! The figures of the long runs are printed by `cargo xtask sim` (see the README).

use sim::{SimConfig, run};

fn short(viewers: usize, seconds: f64, seed: u64) -> SimConfig {
    SimConfig {
        viewers,
        seconds,
        seed,
        join_window_secs: 10.0,
        check_invariants: true,
        ..SimConfig::default()
    }
}

#[test]
fn live_swarm_offloads_without_stalls() {
    let r = run(short(12, 90.0, 3));
    assert_eq!(r.stalls, 0, "{}", r.summary());
    assert_eq!(r.corrupt_to_player, 0);
    // Limit 1 − 1/12 = 0.917; a short run pays every viewer's startup from the origin.
    assert!(r.offload > 0.75, "{}", r.summary());
    assert!(r.segments_played > 12 * 35, "{}", r.summary());
}

#[test]
fn http_only_baseline_has_no_offload() {
    let r = run(SimConfig {
        http_only: true,
        ..short(6, 40.0, 4)
    });
    assert_eq!(r.offload, 0.0);
    assert_eq!(r.p2p_bytes, 0);
    assert_eq!(r.stalls, 0, "{}", r.summary());
}

#[test]
fn bad_peers_are_banned_and_never_reach_a_player() {
    let r = run(SimConfig {
        bad_peers: 0.3,
        ..short(10, 90.0, 5)
    });
    assert_eq!(r.corrupt_to_player, 0);
    assert_eq!(r.bad, 3);
    assert_eq!(r.banned_bad, 3, "{}", r.summary());
    assert_eq!(r.banned_honest, 0);
    assert_eq!(r.stalls, 0, "{}", r.summary());
}

#[test]
fn churn_causes_no_stalls() {
    let r = run(SimConfig {
        churn_pct_per_min: 30.0,
        ..short(10, 90.0, 6)
    });
    assert!(r.joins > 10, "{}", r.summary());
    assert_eq!(r.stalls, 0, "{}", r.summary());
    assert_eq!(r.corrupt_to_player, 0);
}

#[test]
fn vod_swarm_plays() {
    let r = run(SimConfig {
        vod: true,
        ..short(6, 60.0, 8)
    });
    assert_eq!(r.stalls, 0, "{}", r.summary());
    assert!(r.offload > 0.3, "{}", r.summary());
}

#[test]
fn same_seed_same_run() {
    let a = run(short(6, 30.0, 9));
    let b = run(short(6, 30.0, 9));
    assert_eq!(a.to_json(), b.to_json());
    let c = run(short(6, 30.0, 10));
    assert_ne!(a.to_json(), c.to_json());
}

#[test]
fn small_store_stays_under_its_cap() {
    // A store of 4 segments' worth: eviction runs all the time; check_invariants asserts the cap.
    let mut cfg = short(8, 60.0, 11);
    cfg.core.store_cap = 4 * 600 * 1024;
    let r = run(cfg);
    assert_eq!(r.stalls, 0, "{}", r.summary());
    assert_eq!(r.corrupt_to_player, 0);
}
