//! `cargo xtask bench bus`: the signaling cluster's traffic over NATS and over Redis pub/sub,
//! side by side (the `p2p-bench-bus` binary of the `tests` crate, feature `bus-bench`; installs
//! `nats-server` and `redis-server` from Debian when missing). Ends with one JSON line.

use anyhow::Result;

use crate::util::{self, cargo};

#[derive(clap::Args)]
pub struct Args {
    /// Passed to `p2p-bench-bus` as they are (`--engines`, `--nodes`, `--msgs-per-s`,
    /// `--seconds`, `--size`; its `--help` lists them with their defaults).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
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
            .args(&a.args),
    )
}
