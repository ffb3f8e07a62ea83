//! A live HLS origin that is not ours: nginx from Debian serving files that a writer thread
//! keeps rewriting, the way a packager writes a live window to disk behind a web server.
//!
//! * [`StaticLive`]: turns a VOD ladder (`media/ladder`: a multivariant playlist and one folder
//!   per media playlist) into a looping live window on disk: every 200 ms each media playlist
//!   is rewritten (atomically: a temporary file renamed) with the segments published so far,
//!   `seg_<seq>.<ext>` symlinks point at source file `seq % n`, and old ones are removed. No
//!   sidecar integrity manifest is written: P2P needs the operator's integrity service.
//! * [`Nginx`]: Debian's nginx (installed with apt-get when missing, like Chromium) serving a
//!   folder on a free loopback port, with CORS, `no-cache` playlists and an access log of
//!   `uri status bytes "user-agent"` lines, so a test counts the bytes the origin really sent,
//!   per media playlist and per client kind.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use origin::playlist::{self, LiveRender, Parsed, Timeline};

/// One media playlist of the ladder being published live.
struct Rendition {
    /// Folder name (`v360p`), the same under the source and the output.
    dir: String,
    src: PathBuf,
    files: Vec<String>,
    ext: String,
    map: Option<String>,
    target: u64,
    tl: Timeline,
}

/// The writer thread of a live window on disk; stops when dropped.
pub struct StaticLive {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaticLive {
    /// Publishes `src` (a folder holding `master.m3u8` and one folder per media playlist, each
    /// with an `index.m3u8`) live into `out`, `window` segments per playlist, starting with a
    /// full window. With `token`, segment URIs carry `?tok=<token>` (a signed URL's query, which
    /// [`Nginx`] then demands).
    pub fn start(src: &Path, out: &Path, window: usize, token: Option<&str>) -> Result<StaticLive> {
        let query = token.map(|t| format!("?tok={t}")).unwrap_or_default();
        std::fs::create_dir_all(out)?;
        std::fs::copy(src.join("master.m3u8"), out.join("master.m3u8"))
            .context("copying master.m3u8")?;
        let mut rends = Vec::new();
        for e in std::fs::read_dir(src)? {
            let e = e?;
            let pl = e.path().join("index.m3u8");
            if !pl.exists() {
                continue;
            }
            let dir = e.file_name().to_string_lossy().into_owned();
            let text = std::fs::read(&pl)?;
            let Parsed::Media(m) = playlist::parse(&pl, &text)? else {
                bail!("{}: not a media playlist", pl.display());
            };
            let tl = Timeline::new(m.segments.iter().map(|s| s.dur_ms).collect())
                .with_context(|| format!("{}: empty", pl.display()))?;
            let files: Vec<String> = m.segments.iter().map(|s| s.uri.clone()).collect();
            let ext = files[0]
                .rsplit_once('.')
                .map_or("ts", |(_, e)| e)
                .to_owned();
            std::fs::create_dir_all(out.join(&dir))?;
            if let Some(map) = &m.map_uri {
                std::fs::copy(e.path().join(map), out.join(&dir).join(map))?;
            }
            rends.push(Rendition {
                src: e.path(),
                dir,
                files,
                ext,
                map: m.map_uri.clone(),
                target: m.target_duration,
                tl,
            });
        }
        ensure!(!rends.is_empty(), "{}: no media playlists", src.display());
        // One epoch for the whole ladder, early enough that every playlist starts full.
        let now = SystemTime::now();
        let pre = rends
            .iter()
            .map(|r| r.tl.end_ms(window.saturating_sub(1) as u64))
            .max()
            .unwrap_or(0);
        let epoch = now - Duration::from_millis(pre);
        let out = out.to_path_buf();
        write_all(&rends, &out, epoch, window, &query)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if let Err(e) = write_all(&rends, &out, epoch, window, &query) {
                    eprintln!("static live writer: {e:#}");
                }
            }
        });
        Ok(StaticLive {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StaticLive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_all(
    rends: &[Rendition],
    out: &Path,
    epoch: SystemTime,
    window: usize,
    query: &str,
) -> Result<()> {
    let now = SystemTime::now();
    for r in rends {
        let dir = out.join(&r.dir);
        let w = playlist::window_at(&r.tl, epoch, now, window);
        for k in w.first..w.end {
            let link = dir.join(format!("seg_{k}.{}", r.ext));
            if !link.exists() {
                let file = &r.files[(k % r.tl.len()) as usize];
                let target = std::fs::canonicalize(r.src.join(file))?;
                std::os::unix::fs::symlink(target, &link)?;
            }
        }
        // Segments that left the window stay a while for late requests, then go.
        if w.first >= 12 {
            let old = dir.join(format!("seg_{}.{}", w.first - 12, r.ext));
            let _ = std::fs::remove_file(old);
        }
        let text = playlist::render_live(
            &LiveRender {
                target_duration: r.target,
                map_uri: r.map.as_deref(),
                loops: true,
            },
            &r.tl,
            epoch,
            w,
            |k| format!("seg_{k}.{}{query}", r.ext),
        );
        let tmp = dir.join("index.m3u8.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join("index.m3u8"))?;
    }
    Ok(())
}

/// Debian's nginx serving a folder on loopback; stopped when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub access_log: PathBuf,
}

/// Installs Debian `package` with apt-get when `bin` is missing (a fresh machine), like the
/// browser tests do for Chromium; returns `bin`.
pub fn ensure_debian_package(bin: &str, package: &str) -> Result<PathBuf> {
    let path = PathBuf::from(bin);
    if path.exists() {
        return Ok(path);
    }
    eprintln!("{bin} is missing: apt-get install -y {package}");
    let install = format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {package} >/dev/null"
    );
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!("{install} || (apt-get update >/dev/null && {install})"),
        ])
        .status()
        .context("running apt-get")?
        .success();
    ensure!(
        ok && path.exists(),
        "could not install {package} (apt-get install {package})"
    );
    Ok(path)
}

/// nginx from Debian, installed when missing.
pub fn ensure_nginx() -> Result<PathBuf> {
    ensure_debian_package("/usr/sbin/nginx", "nginx-light")
}

impl Nginx {
    /// Serves `root` on a free port of 127.0.0.1; `work` holds its config, pid and logs. With
    /// `token`, a media segment (`seg_*`) is served only to a request carrying `?tok=<token>`
    /// (403 otherwise), as a CDN checks signed URLs.
    pub fn start(root: &Path, work: &Path, token: Option<&str>) -> Result<Nginx> {
        let check = token
            .map(|t| format!(r#"if ($arg_tok != "{t}") {{ return 403; }}"#))
            .unwrap_or_default();
        let bin = ensure_nginx()?;
        std::fs::create_dir_all(work.join("tmp"))?;
        // A free port: bound, read, released (nginx binds it right after).
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let w = work.display();
        let access_log = work.join("access.log");
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  types {{ application/vnd.apple.mpegurl m3u8; video/mp4 mp4 m4s; text/vtt vtt; video/mp2t ts; }}
  default_type application/octet-stream;
  log_format bytes '$uri $status $body_bytes_sent "$http_user_agent"';
  access_log {w}/access.log bytes;
  client_body_temp_path {w}/tmp/body;
  proxy_temp_path {w}/tmp/proxy;
  fastcgi_temp_path {w}/tmp/fastcgi;
  uwsgi_temp_path {w}/tmp/uwsgi;
  scgi_temp_path {w}/tmp/scgi;
  sendfile on;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{
      add_header Access-Control-Allow-Origin * always;
      add_header Access-Control-Allow-Headers Range always;
      add_header Access-Control-Expose-Headers Content-Length,Content-Range always;
    }}
    location ~ /seg_ {{
      {check}
      add_header Access-Control-Allow-Origin * always;
      add_header Access-Control-Allow-Headers Range always;
      add_header Access-Control-Expose-Headers Content-Length,Content-Range always;
    }}
    location ~ \.m3u8$ {{
      add_header Access-Control-Allow-Origin * always;
      add_header Cache-Control no-cache always;
    }}
  }}
}}
"#,
            root = root.display()
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
        let mut n = Nginx {
            child,
            addr,
            access_log,
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(st)) = n.child.try_wait() {
                let log = std::fs::read_to_string(work.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({st}): {log}");
            }
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "nginx did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n.addr = addr;
        Ok(n)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Body bytes nginx sent with status 200/206, by folder of the URI for media segments
    /// (`/v360p/seg_7.m4s` → `v360p`; other files under `v360p (other)`), for requests whose user agent does (`integrity`: true) or does not contain
    /// `p2pcdn-integrity`; and the number of such requests.
    pub fn bytes_by_dir(&self, integrity: bool) -> Result<BTreeMap<String, (u64, u64)>> {
        let text = std::fs::read_to_string(&self.access_log)?;
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for line in text.lines() {
            let mut f = line.splitn(4, ' ');
            let (Some(uri), Some(status), Some(bytes), Some(ua)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            if !matches!(status, "200" | "206") || ua.contains("p2pcdn-integrity") != integrity {
                continue;
            }
            let dir = uri
                .trim_start_matches('/')
                .split_once('/')
                .map_or("", |(d, _)| d);
            // Media segments by folder; playlists and init segments apart.
            let key = if uri.contains("/seg_") {
                dir.to_owned()
            } else {
                format!("{dir} (other)")
            };
            let e = out.entry(key).or_default();
            e.0 += bytes.parse::<u64>().unwrap_or(0);
            e.1 += 1;
        }
        Ok(out)
    }
}

impl Nginx {
    /// Access-log lines with status 403 (requests without the signed URL's token).
    pub fn refused(&self) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(&self.access_log)?;
        Ok(text
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some("403"))
            .map(String::from)
            .collect())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
