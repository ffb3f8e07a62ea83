//! The files in `deploy/` are accepted by the tools that run them. (The nginx config runs in
//! `browser.rs::pages_play_through_an_nginx_tls_proxy`; each unit's `ExecStart` runs in its
//! server's `tests/cli.rs`.)

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use test_support::harness::root;

/// `systemd-analyze verify` of the unit `name` from `deploy/systemd/`, with `/bin/true` in place
/// of its installed binary (verify checks that the binary exists) and its env file optional;
/// fails on anything systemd says about the unit.
fn verify_unit(name: &str) -> Result<()> {
    let unit = std::fs::read_to_string(root().join("deploy/systemd").join(name))?;
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("no ExecStart")?;
    let bin = exec.split_whitespace().next().context("empty ExecStart")?;
    let dir = std::env::temp_dir().join(format!("p2pcdn-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(name);
    let text = unit
        .replace(bin, "/bin/true")
        .replace("EnvironmentFile=/", "EnvironmentFile=-/");
    std::fs::write(&file, text)?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .context("running systemd-analyze")?;
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && !said.contains(name),
        "{name}: {said}"
    );
    Ok(())
}

#[test]
fn systemd_units_verify() -> Result<()> {
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        eprintln!("SKIPPED: no /usr/bin/systemd-analyze (Debian `systemd`)");
        return Ok(());
    }
    verify_unit("p2pcdn-signaling.service")?;
    verify_unit("p2pcdn-origin.service")
}
