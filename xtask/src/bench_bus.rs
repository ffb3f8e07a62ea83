//! `cargo xtask bench bus`: the signaling cluster's traffic over NATS and over Redis pub/sub,
//! side by side (the `p2p-bench-bus` binary of the `tests` crate, feature `bus-bench`; installs
//! `nats-server` and `redis-server` from Debian when missing). Ends with one JSON line.

use anyhow::Result;

use crate::util::{self, cargo};

#[derive(clap::Args)]
pub struct Args {
    /// Engines to measure, in order.
    #[arg(long, default_value = "nats,redis")]
    engines: String,
    /// Cluster nodes played (a subscriber and a publisher each).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Messages per second offered, all nodes together.
    #[arg(long, default_value_t = 20_000)]
    msgs_per_s: u64,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 400)]
    size: usize,
}

pub fn run(a: Args) -> Result<()> {
    crate::preflight::ensure_debian_packages(&[
        ("/usr/sbin/nats-server", "nats-server"),
        ("/usr/bin/redis-server", "redis-server"),
    ])?;
    util::run(
        cargo()
            .args(["run", "-p", "tests", "--release", "--features", "bus-bench"])
            .args(["--bin", "p2p-bench-bus", "--"])
            .args(["--engines", &a.engines])
            .args(["--nodes", &a.nodes.to_string()])
            .args(["--msgs-per-s", &a.msgs_per_s.to_string()])
            .args(["--seconds", &a.seconds.to_string()])
            .args(["--size", &a.size.to_string()]),
    )
}
