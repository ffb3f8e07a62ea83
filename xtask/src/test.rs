//! `cargo xtask test`: every test, installing what they need first.
//!
//! On a fresh machine it first installs what is missing ([`preflight`]): the wasm target, Chromium
//! and chromedriver (the headless browser tests), npm and the pinned npm build tools. Then it
//! checks that the simulator's build has no tokio, axum or hyper (`cargo tree`, a second), runs
//! clippy (the workspace, and peer-wasm for wasm32) so that a lint fails in minutes, builds
//! the wasm bundle into `dist/` (failing when its gzip size is over
//! `wasm::BUNDLE_BUDGET_GZIP`) and the npm package (`cargo xtask pack`; the package test,
//! tests/tests/package.rs, installs it) and runs the workspace tests under the `ci` profile (release
//! optimisations with overflow checks and debug assertions on; see the root `Cargo.toml`); with
//! `--wasm-browser`, also peer-wasm's browser-side tests under wasm-bindgen-test-runner
//! (installed from crates.io on first use).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::preflight;
use crate::util::{self, cargo};

#[derive(clap::Args)]
pub struct Args {
    /// Also run peer-wasm's wasm-bindgen tests inside headless Chromium (its JSON codec through
    /// the browser's real `JSON.parse`). Off by default: installing the matching
    /// `wasm-bindgen-test-runner` from crates.io costs ~9 minutes of build on 2 cores, and the
    /// browser swarm tests already run that codec end to end (every join and SDP relay).
    #[arg(long)]
    pub wasm_browser: bool,
}

/// The cargo profile of the tests and lints: `release` plus overflow checks and debug
/// assertions. Clippy under the same profile reuses the tests' build scripts and proc macros.
const PROFILE: &str = "ci";

/// wasm-bindgen's version (peer-wasm pins it exactly): the test runner must be the same.
const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// peer-wasm's tests inside headless Chromium (its JSON codec through the browser's
/// `JSON.parse`, against protocol's serde decoders). `wasm-bindgen-test-runner` comes from
/// crates.io into `<target>/tools` the first time (a few minutes of build).
fn wasm_browser_tests() -> Result<()> {
    let chromedriver = Path::new("/usr/bin/chromedriver");
    if !chromedriver.exists() {
        if std::env::var_os("CI").is_some() {
            anyhow::bail!("/usr/bin/chromedriver is missing and CI is set");
        }
        eprintln!("xtask: SKIPPED peer-wasm browser tests: no /usr/bin/chromedriver");
        return Ok(());
    }
    let tools = crate::wasm::target_dir().join("tools");
    let runner = tools.join("bin/wasm-bindgen-test-runner");
    let installed = Command::new(tools.join("bin/wasm-bindgen"))
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim_end()
                .ends_with(WASM_BINDGEN_VERSION)
        });
    if !installed || !runner.exists() {
        util::run(
            cargo()
                .args(["install", "wasm-bindgen-cli", "--force", "--version"])
                .arg(WASM_BINDGEN_VERSION)
                .arg("--root")
                .arg(&tools),
        )?;
    }
    util::run(
        cargo()
            .args([
                "test",
                "-p",
                "peer-wasm",
                "--target",
                "wasm32-unknown-unknown",
            ])
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner)
            .env("CHROMEDRIVER", chromedriver),
    )
}

const DENY_WARNINGS: [&str; 3] = ["--", "-D", "warnings"];

/// The simulator runs the real swarm registry, not the server around it: no async runtime or
/// HTTP stack may enter its build (`swarm-registry` depends on `protocol` and `rand` only).
fn sim_has_no_io_stack() -> Result<()> {
    let out = cargo()
        .args(["tree", "-p", "sim", "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}"])
        .output()
        .context("running cargo tree")?;
    ensure!(out.status.success(), "cargo tree -p sim failed");
    let tree = String::from_utf8_lossy(&out.stdout);
    let io: Vec<&str> = tree
        .lines()
        .filter(|l| {
            ["tokio ", "axum ", "hyper "]
                .iter()
                .any(|c| l.starts_with(c))
        })
        .collect();
    ensure!(
        io.is_empty(),
        "sim depends on {io:?} (`cargo tree -p sim -e normal -i <crate>` says through what)"
    );
    Ok(())
}

pub fn run_tests(wasm_browser: bool) -> Result<()> {
    // Everything from outside the clone first, so a fresh machine fails (if at all) in the
    // first seconds with a message naming what to install, not after a long build.
    preflight::ensure(preflight::Needs { browser: true })?;
    sim_has_no_io_stack()?;
    // Lints before the long test build, so that a warning fails fast.
    util::run(
        cargo()
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--profile",
                PROFILE,
            ])
            .args(DENY_WARNINGS),
    )?;
    // peer-wasm as the browser gets it: wasm-bindgen's macros expand differently for wasm32,
    // and its in-browser tests exist only there. This also checks that the IO-free crates
    // (protocol, peer-core) compile for wasm32, and the bundle build below builds them there;
    // a separate `cargo build --target wasm32` of the two cost 13.5 s of a cold run for nothing.
    util::run(
        cargo()
            .args([
                "clippy",
                "-p",
                "peer-wasm",
                "--all-targets",
                "--target",
                "wasm32-unknown-unknown",
                "--profile",
                PROFILE,
            ])
            .args(DENY_WARNINGS),
    )?;
    // The bundle the browser tests serve, within its size budget.
    crate::wasm::build(true)?;
    crate::wasm::check_budget()?;
    // The npm package the package test installs into its scratch app (packed here, not by a
    // nested cargo inside the test).
    let packed = crate::pack::pack()?;
    util::run(
        cargo()
            .args(["test", "--workspace", "--profile", PROFILE])
            .env("P2P_CDN_TARBALL", &packed.tarball),
    )?;
    if wasm_browser {
        wasm_browser_tests()?;
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    run_tests(args.wasm_browser)
}
