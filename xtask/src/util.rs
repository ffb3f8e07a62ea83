//! Helpers shared by the xtask modules.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `cmd`, echoing it, and fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let started = std::time::Instant::now();
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    // Each step's wall time, so a slow CI run says which step grew.
    eprintln!(
        "xtask: {:.1} s for {:?} {:?}",
        started.elapsed().as_secs_f64(),
        cmd.get_program(),
        cmd.get_args().take(3).collect::<Vec<_>>()
    );
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// `cargo`, the same one that runs xtask.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    // `cargo xtask` runs this binary through `cargo run`, which sets CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR, CARGO_PKG_VERSION_* and the like to xtask's own. Inherited by the
    // cargo started here, they differ from a shell's, and build scripts that watch them (ring's
    // `rerun-if-env-changed=CARGO_PKG_NAME`, …) ran again: `cargo test` from the shell after
    // `cargo xtask test` rebuilt ring → webrtc (10+ minutes here), and back.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*k)
        {
            c.env_remove(&*k);
        }
    }
    c
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
