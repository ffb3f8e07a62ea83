//! `cargo xtask bench browser-cpu`: builds the wasm bundle, then runs the `p2p-bench-browser`
//! binary of the `tests` crate: the demo page with P2P off, then on, N headless Chromiums each;
//! prints CPU seconds per page-minute (Chromium process trees, from /proc), startup p50 and the
//! longest main-thread tasks, optionally a V8 profile of one P2P page (DevTools protocol), and
//! ends with one JSON line.

use anyhow::Result;

use crate::util::{self, cargo};

#[derive(clap::Args)]
pub struct Args {
    /// Pages (one headless Chromium each) per mode.
    #[arg(long, default_value_t = 12)]
    pages: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds between the last page opening and the window.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Modes in order (`off,on`, `on`, ...).
    #[arg(long, default_value = "off,on")]
    modes: String,
    /// Profile the first P2P page with V8's sampling profiler for this many seconds.
    #[arg(long, default_value_t = 0)]
    profile: u64,
    /// Use the `dist/` bundle as it is (no wasm build).
    #[arg(long)]
    no_build: bool,
}

pub fn run(args: Args) -> Result<()> {
    crate::preflight::ensure(crate::preflight::Needs { browser: true })?;
    if !args.no_build {
        crate::wasm::build(true)?;
    }
    util::run(
        cargo()
            .args([
                "run",
                "-p",
                "tests",
                "--release",
                "--bin",
                "p2p-bench-browser",
                "--",
            ])
            .args(["--pages", &args.pages.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--settle", &args.settle.to_string()])
            .args(["--modes", &args.modes])
            .args(["--profile", &args.profile.to_string()]),
    )
}
