//! A real NATS server for tests of a signaling cluster that run in-process nodes: Debian's
//! `nats-server`, installed when missing, on a free loopback port, killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Nats {
    child: Child,
    pub addr: SocketAddr,
}

impl Nats {
    /// Accepting connections when this returns.
    pub fn start() -> Result<Nats> {
        let bin =
            crate::static_origin::ensure_debian_package("/usr/sbin/nats-server", "nats-server")?;
        // A free port: bound, read, released (nats-server binds it right after).
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let mut n = Nats { child, addr };
        let t = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(st)) = n.child.try_wait() {
                bail!("nats-server exited ({st})");
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("nats-server not listening on {addr} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }

    /// `nats://` URL of the server.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
