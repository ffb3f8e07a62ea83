//! A real TURN server for the relay-only browser test: coturn from Debian (`turnserver`), on
//! loopback, checking credentials with the REST shared secret the signaling server mints them
//! with (`use-auth-secret`).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running `turnserver`, killed on drop.
pub struct Coturn {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// coturn from Debian, installed when missing.
pub fn ensure_coturn() -> Result<PathBuf> {
    crate::static_origin::ensure_debian_package("/usr/bin/turnserver", "coturn")
}

impl Coturn {
    /// Listens on a free UDP port of 127.0.0.1 and relays between loopback peers (coturn refuses
    /// loopback peers by default); `work` holds its log.
    pub fn start(secret: &str, work: &Path) -> Result<Coturn> {
        let bin = ensure_coturn()?;
        std::fs::create_dir_all(work)?;
        // A free port: bound, read, released (coturn binds it right after).
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = work.join("turnserver.log");
        let child = Command::new(bin)
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args(["--min-port", "49152", "--max-port", "65535"])
            .args(["--use-auth-secret", "--realm", "p2p.test"])
            .arg(format!("--static-auth-secret={secret}"))
            .args(["--allow-loopback-peers", "--simple-log", "--verbose"])
            .arg(format!("--log-file={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting turnserver")?;
        let mut c = Coturn { child, addr, log };
        // Ready once it logs its UDP listener.
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = c.child.try_wait() {
                bail!("turnserver exited ({st}): {}", c.log_text());
            }
            let text = c.log_text();
            if text.contains("IPv4. UDP listener opened on") || text.contains("UDP listener opened")
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("turnserver not listening after 10 s: {text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// The log so far (coturn may suffix the file name with a date: every file it wrote).
    pub fn log_text(&self) -> String {
        let mut out = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let (Some(dir), Some(stem)) = (self.log.parent(), self.log.file_stem()) {
            let stem = stem.to_string_lossy().into_owned();
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&stem) && e.path() != self.log {
                    out += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        out
    }

    /// Allocations that succeeded (relay addresses handed out).
    pub fn allocations(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("ALLOCATE processed, success"))
            .count()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
