//! `cargo xtask test`: every test, installing what they need first.
//!
//! On a fresh Debian machine (as root) it installs, only when missing: Chromium and
//! chromedriver (the headless browser swarm tests in `tests/tests/browser.rs`), Node.js + npm
//! (to `npm ci` the pinned binaryen whose `wasm-opt` shrinks the bundle) and Debian's binaryen.
//! Then it builds the wasm bundle into `dist/` and runs the workspace tests; with
//! `--wasm-browser`, also peer-wasm's browser-side tests under wasm-bindgen-test-runner
//! (installed from crates.io on first use).

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::util::{self, cargo, root};

#[derive(clap::Args)]
pub struct Args {
    /// Also run peer-wasm's wasm-bindgen tests inside headless Chromium (its JSON codec through
    /// the browser's real `JSON.parse`). Off by default: installing the matching
    /// `wasm-bindgen-test-runner` from crates.io costs ~9 minutes of build on 2 cores, and the
    /// browser swarm tests already run that codec end to end (every join and SDP relay).
    #[arg(long)]
    pub wasm_browser: bool,
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// apt-get installs the Debian packages whose binaries are missing (nothing when all exist).
fn install_system_deps() -> Result<()> {
    let wanted = [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
        ("/usr/bin/wasm-opt", "binaryen"),
        ("/usr/bin/npm", "npm"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| {
            !Path::new(bin).exists()
                && !have(
                    Path::new(bin)
                        .file_name()
                        .and_then(|f| f.to_str())
                        .unwrap_or(bin),
                )
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") || !is_root() {
        eprintln!(
            "xtask: missing {missing:?}; install them (apt-get as root) or the browser tests fail under CI"
        );
        return Ok(());
    }
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

/// `npm ci` (binaryen for wasm-opt, terser for the glue JS) when `node_modules` lacks them.
pub fn install_npm_deps() -> Result<()> {
    let bin = root().join("node_modules/.bin");
    if (bin.join("wasm-opt").exists() && bin.join("terser").exists()) || !have("npm") {
        return Ok(());
    }
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(root()),
    )
}

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

pub fn run_tests(wasm_browser: bool) -> Result<()> {
    install_system_deps()?;
    install_npm_deps()?;
    // The IO-free crates must build for the browser.
    util::run(cargo().args([
        "build",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "protocol",
        "-p",
        "peer-core",
    ]))?;
    // The bundle the browser tests serve.
    crate::wasm::build(true)?;
    util::run(cargo().args(["test", "--workspace", "--release"]))?;
    if wasm_browser {
        wasm_browser_tests()?;
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    run_tests(args.wasm_browser)
}
