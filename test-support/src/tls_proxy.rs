//! A real TLS reverse proxy in front of the servers: Debian's nginx running the operator's config
//! from `deploy/nginx/p2p-cdn.conf` unchanged but for its addresses, with a self-signed
//! certificate made here by `openssl` (Debian's).
//!
//! The config is rewritten only where a deployment differs from a test: the upstream ports, the
//! listen addresses, the certificate paths and the include folder for site locations. Each of
//! those lines must be found exactly as the deploy file writes it, so the file and the test
//! cannot drift apart. nginx connects to the upstreams from `PROXY_SOURCE` (127.0.0.2), so a
//! server that ignored the forwarded address would see every viewer as 127.0.0.2.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::static_origin::{ensure_debian_package, ensure_nginx};

/// The address nginx connects to the servers from: declare it with `--trusted-proxy`.
pub const PROXY_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The deploy config the tests run.
pub fn deploy_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/p2p-cdn.conf")
}

/// nginx terminating TLS on 127.0.0.1; stopped when dropped.
pub struct TlsProxy {
    child: Child,
    /// `https://127.0.0.1:<port>`.
    pub https: SocketAddr,
    /// The plain-HTTP listener (it redirects to https).
    pub http: SocketAddr,
    /// The self-signed certificate (PEM), for clients that take a CA file.
    pub cert: PathBuf,
    /// base64 SHA-256 of the certificate's public key, for Chromium's
    /// `--ignore-certificate-errors-spki-list` (trust this one key, nothing else).
    pub spki_sha256: String,
    work: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Replaces the one occurrence of `from` in `text`; fails when it is missing or repeated.
fn replace_once(text: &str, from: &str, to: &str) -> Result<String> {
    let n = text.matches(from).count();
    ensure!(
        n == 1,
        "deploy/nginx/p2p-cdn.conf: `{from}` found {n} times, expected once"
    );
    Ok(text.replacen(from, to, 1))
}

impl TlsProxy {
    /// Starts nginx with the deploy config proxying to `signaling` and `origin`; `site` is extra
    /// `location` blocks for this host (the test's pages), written to the include folder.
    pub fn start(
        work: &Path,
        signaling: SocketAddr,
        origin: SocketAddr,
        site: &str,
    ) -> Result<Self> {
        let bin = ensure_nginx()?;
        let openssl = ensure_debian_package("/usr/bin/openssl", "openssl")?;
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work.join("tmp"))?;
        std::fs::create_dir_all(work.join("site.d"))?;
        let cert = work.join("fullchain.pem");
        let key = work.join("privkey.pem");
        let ok = Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl req")?
            .success();
        ensure!(ok, "openssl could not make a certificate");
        let spki = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{o} x509 -in '{c}' -pubkey -noout | {o} pkey -pubin -outform der | {o} dgst -sha256 -binary | base64",
                o = openssl.display(),
                c = cert.display()
            ))
            .output()
            .context("hashing the certificate's key")?;
        let spki_sha256 = String::from_utf8(spki.stdout)?.trim().to_owned();
        ensure!(spki_sha256.len() == 44, "bad SPKI hash {spki_sha256:?}");

        let (https_port, http_port) = (free_port()?, free_port()?);
        let text = std::fs::read_to_string(deploy_config())?;
        let mut t = replace_once(
            &text,
            "server 127.0.0.1:8090;",
            &format!("server {signaling};"),
        )?;
        t = replace_once(&t, "server 127.0.0.1:8080;", &format!("server {origin};"))?;
        t = replace_once(
            &t,
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{https_port} ssl;"),
        )?;
        t = replace_once(&t, "listen [::]:443 ssl;", "")?;
        t = replace_once(&t, "listen 80;", &format!("listen 127.0.0.1:{http_port};"))?;
        t = replace_once(&t, "listen [::]:80;", "")?;
        t = replace_once(
            &t,
            "/etc/ssl/p2p-cdn/fullchain.pem",
            &cert.display().to_string(),
        )?;
        t = replace_once(
            &t,
            "/etc/ssl/p2p-cdn/privkey.pem",
            &key.display().to_string(),
        )?;
        let site_dir = work.join("site.d");
        t = replace_once(
            &t,
            "/etc/nginx/p2p-cdn.d/",
            &format!("{}/", site_dir.display()),
        )?;
        std::fs::write(work.join("p2p-cdn.conf"), t)?;
        std::fs::write(site_dir.join("site.conf"), site)?;
        // The `http` context Debian's nginx.conf gives conf.d/ files, reduced to what a test
        // needs, plus where nginx connects from.
        let w = work.display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  types {{ application/vnd.apple.mpegurl m3u8; video/mp4 mp4 m4s; video/mp2t ts;
           text/html html; application/javascript js; application/wasm wasm; }}
  default_type application/octet-stream;
  access_log {w}/access.log;
  client_body_temp_path {w}/tmp/body;
  proxy_temp_path {w}/tmp/proxy;
  fastcgi_temp_path {w}/tmp/fastcgi;
  uwsgi_temp_path {w}/tmp/uwsgi;
  scgi_temp_path {w}/tmp/scgi;
  proxy_bind {PROXY_SOURCE};
  include {w}/p2p-cdn.conf;
}}
"#
        );
        let conf_path = work.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(work)
            .arg("-e")
            .arg(work.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nginx")?;
        let https = SocketAddr::from(([127, 0, 0, 1], https_port));
        let http = SocketAddr::from(([127, 0, 0, 1], http_port));
        let mut p = TlsProxy {
            child,
            https,
            http,
            cert,
            spki_sha256,
            work: work.to_path_buf(),
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(https).is_err() {
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!("nginx exited ({st}): {}", p.error_log());
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "nginx did not listen on {https}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.https)
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.work.join("error.log")).unwrap_or_default()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
