//! The files in `deploy/` are accepted by the tools that run them, and README's production
//! commands start the servers. (The nginx config runs in
//! `browser.rs::pages_play_through_an_nginx_tls_proxy`; each unit's `ExecStart` runs in its
//! server's `tests/cli.rs`.)

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use test_support::harness::root;
use test_support::process;

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

/// The commands of README's "Run it in production", run as written (through `sh`, with the
/// secrets they name set) by this build's binaries: only the listen ports (any free one) and
/// the media folder (this tree's) are changed. Each must start, print where it listens, and
/// stop on SIGTERM: a flag renamed in a server and not in the README fails here.
#[test]
fn readme_production_commands_start() -> Result<()> {
    use std::process::Stdio;
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let block = readme
        .split("\n## Run it in production")
        .nth(1)
        .and_then(|s| s.split("\n```\n").nth(1))
        .context("README.md: no command block under \"Run it in production\"")?;
    // One command per line once continuations are joined; comments dropped.
    let joined = block.replace("\\\n", " ");
    let commands: Vec<String> = joined
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(commands.len() == 2, "expected 2 commands, got {commands:?}");
    // This test's binary is <target>/<profile>/deps/deploy-*; the servers' are next to deps/.
    let bin_dir = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("no target dir")?
        .to_path_buf();
    for (cmd, name, listening) in [
        (&commands[0], "signaling-server", "listening on "),
        (&commands[1], "origin", "origin listening on "),
    ] {
        ensure!(cmd.starts_with(name), "{cmd:?} is not the {name} command");
        ensure!(
            bin_dir.join(name).exists(),
            "{} missing: cargo build -p {name}",
            bin_dir.join(name).display()
        );
        let port = listen_addr(cmd)?;
        let cmd = cmd
            .replace(&format!("--listen {port}"), "--listen 127.0.0.1:0")
            .replace("/srv/media", &root().join("media").display().to_string());
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let started = process::start(
            Command::new("sh")
                .arg("-c")
                .arg(format!("exec {cmd}"))
                .env("PATH", path)
                .env("TURN_SECRET", "a-turn-secret-for-the-readme-test")
                .env("TOKEN_SECRET", "a-token-secret-for-the-readme-test")
                .env("ADMIN_TOKEN", "an-admin-token-for-the-readme-test")
                .stderr(Stdio::piped()),
        )?;
        let line = started.line;
        let out = process::stop(started.child)?;
        ensure!(
            line.starts_with(listening) && out.status.success(),
            "README's {name} command did not start ({}): {line}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The address after `--listen ` in `cmd`.
fn listen_addr(cmd: &str) -> Result<String> {
    cmd.split("--listen ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(String::from)
        .context("no --listen in the README command")
}
