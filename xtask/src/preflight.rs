//! What `cargo xtask test` and `cargo xtask demo` need from outside the clone, checked before
//! anything is built, and installed when missing (with a clear message when it can't be).
//!
//! Everything the two commands touch outside the clone, and where it comes from:
//! - the `wasm32-unknown-unknown` standard library: `rustup target add` (a `rust-toolchain.toml`
//!   `targets` entry does not add it to a toolchain that is already installed, and the cargo
//!   that runs xtask is the toolchain's own binary, which never asks rustup);
//! - Node.js + npm (Debian `npm`), then `npm ci` for the pinned binaryen (`wasm-opt`) and terser
//!   that shrink the bundle (Debian's own binaryen, 108, is not used: it breaks wasm-bindgen's
//!   externref table, see `wasm::wasm_opt`), and esbuild, typescript and hls.js for the npm
//!   package's test (tests/tests/package.rs; its scratch app also installs hls.js from the npm
//!   registry, served from npm's cache once `npm ci` has fetched it);
//! - Chromium and chromedriver (Debian `chromium`, `chromium-driver`) and nginx (`nginx-light`,
//!   the origin that is not ours, and the TLS reverse proxy) and coturn (the TURN server),
//!   openssl (the proxy's test certificate) and curl for the browser tests;
//! - nats-server (Debian `nats-server`), the message bus of the signaling cluster test
//!   (signaling-server/tests/it/cluster.rs, which also installs it when run alone) and of
//!   `cargo xtask bench cluster`;
//! - `timeout` and `kill` (coreutils, procps), which every Debian has.
//!
//! Crates come from crates.io through cargo as usual.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, root};

/// The target the browser bundle and the IO-free crates are built for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// What one command needs.
#[derive(Clone, Copy)]
pub struct Needs {
    /// Chromium + chromedriver (browser tests).
    pub browser: bool,
}

/// Checks everything `needs` asks for, installing what is missing.
pub fn ensure(needs: Needs) -> Result<()> {
    ensure_wasm_target()?;
    let mut packages: Vec<(&str, &str)> = vec![
        ("npm", "npm"),
        // The signaling cluster test's message bus.
        ("/usr/sbin/nats-server", "nats-server"),
    ];
    if needs.browser {
        packages.push(("/usr/bin/chromium", "chromium"));
        packages.push(("/usr/bin/chromedriver", "chromium-driver"));
        // The browser tests' third-party origin (an HLS origin that is not ours).
        packages.push(("/usr/sbin/nginx", "nginx-light"));
        // The TURN server of the relay-only test.
        packages.push(("/usr/bin/turnserver", "coturn"));
        // The TLS proxy test: its self-signed certificate, and requests through the proxy.
        packages.push(("/usr/bin/openssl", "openssl"));
        packages.push(("/usr/bin/curl", "curl"));
    }
    ensure_debian_packages(&packages)?;
    ensure_npm_tools()
}

/// The sysroot of the rustc that cargo uses here (rustup's proxy honours `rust-toolchain.toml`
/// and `RUSTUP_TOOLCHAIN`, which rustup sets for the cargo running us).
fn sysroot() -> Result<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(root())
        .output()
        .with_context(|| format!("running `{rustc} --print sysroot`"))?;
    if !out.status.success() {
        bail!(
            "`{rustc} --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn has_wasm_std(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .join("lib")
        .is_dir()
}

/// Adds the wasm target to the toolchain in use when its standard library is missing.
pub fn ensure_wasm_target() -> Result<()> {
    let sysroot = sysroot()?;
    if has_wasm_std(&sysroot) {
        return Ok(());
    }
    if !have("rustup") {
        bail!(
            "the {WASM_TARGET} target is not installed for the Rust toolchain at {} and there is \
             no rustup to add it. Install Rust with rustup (https://rustup.rs) and run \
             `rustup target add {WASM_TARGET}`, or install your distribution's rust-std for \
             {WASM_TARGET}",
            sysroot.display()
        );
    }
    eprintln!("xtask: the {WASM_TARGET} target is missing; adding it with rustup");
    // In the workspace root, with RUSTUP_TOOLCHAIN inherited: the same toolchain cargo uses.
    util::run(
        Command::new("rustup")
            .args(["target", "add", WASM_TARGET])
            .current_dir(root()),
    )
    .with_context(|| {
        format!("adding the {WASM_TARGET} target; try `rustup target add {WASM_TARGET}`")
    })?;
    if !has_wasm_std(&sysroot) {
        bail!(
            "`rustup target add {WASM_TARGET}` ran but {} has no {WASM_TARGET} library: is \
             RUSTUP_TOOLCHAIN or rust-toolchain.toml pointing at another toolchain?",
            sysroot.display()
        );
    }
    Ok(())
}

pub fn have(bin: &str) -> bool {
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

/// `(binary, Debian package)`: apt-get installs the packages whose binary is missing.
pub fn ensure_debian_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| {
            let p = Path::new(bin);
            let present = (p.is_absolute() && p.exists())
                || have(p.file_name().and_then(|f| f.to_str()).unwrap_or(bin));
            !present
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") || !is_root() {
        bail!(
            "missing Debian packages {missing:?}: install them (`sudo apt-get install -y {}`) \
             and run the command again",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing missing Debian packages {missing:?}");
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get install {}", missing.join(" ")))
}

/// The npm tools `npm ci` installs (package.json pins them): wasm-opt (binaryen) and terser
/// for the bundle, esbuild and tsc for the package test's scratch app.
const NPM_TOOLS: [&str; 4] = ["wasm-opt", "terser", "esbuild", "tsc"];

/// `npm ci` (pinned by package-lock.json) when `node_modules` lacks one of [`NPM_TOOLS`] (a
/// clone whose `node_modules` predates one of them gets it too).
pub fn ensure_npm_tools() -> Result<()> {
    let bin = root().join("node_modules/.bin");
    if NPM_TOOLS.iter().all(|t| bin.join(t).exists()) {
        return Ok(());
    }
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(root()),
    )
    .context("npm ci (the bundle's wasm-opt and terser, the package test's esbuild and tsc)")?;
    if let Some(t) = NPM_TOOLS.iter().find(|t| !bin.join(t).exists()) {
        bail!("npm ci ran but node_modules/.bin lacks {t}");
    }
    Ok(())
}
