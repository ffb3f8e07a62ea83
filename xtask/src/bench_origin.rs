//! `cargo xtask bench origin`: segment throughput of the origin release binary on loopback.
//!
//! Builds and starts `origin` as a separate process (synthetic stream, or the sample clip looped
//! live), then runs `--clients` threads that each behave like a player that never waits: fetch
//! the live playlist, fetch every segment it lists, repeat, for `--seconds`. Prints MB/s and
//! requests/s, cross-checks the client byte count against the origin's `/stats`, and ends with
//! one JSON line.
//!
//! The HTTP client is a minimal HTTP/1.1 keep-alive GET over `std::net::TcpStream` rather than a
//! crate: it keeps xtask free of an HTTP stack, and the origin always answers with
//! Content-Length (never chunked), which is all this client reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stream {
    /// Generated segments (`--synthetic bench=RATE:SEG`).
    Synthetic,
    /// The sample clip in `media/sample` looped as a live stream.
    Live,
}

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent HTTP clients (one thread and one keep-alive connection each).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to measure.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Which stream the clients fetch.
    #[arg(long, value_enum, default_value = "synthetic")]
    stream: Stream,
    /// Bitrate of the synthetic stream (kbit/s).
    #[arg(long, default_value_t = 2000)]
    rate_kbps: u64,
    /// Segment duration of the synthetic stream (s).
    #[arg(long, default_value_t = 2.0)]
    seg_secs: f64,
    /// Skip `cargo build --release -p origin` (use the binary already built).
    #[arg(long)]
    no_build: bool,
}

#[derive(Default)]
struct Tally {
    bytes: u64,
    requests: u64,
    errors: u64,
    segment_ms: Vec<f64>,
}

pub fn run(args: Args) -> Result<()> {
    if args.clients == 0 || args.seconds == 0 {
        bail!("--clients and --seconds must be positive");
    }
    if !args.no_build {
        util::run(util::cargo().args(["build", "--release", "-p", "origin", "--bin", "origin"]))?;
    }
    let bin = target_dir().join("release").join("origin");
    if !bin.exists() {
        bail!("{} not found (build it, or drop --no-build)", bin.display());
    }
    let mut origin = Origin::start(&bin, &args)?;
    let result = measure(&args, origin.addr);
    origin.stop();
    result
}

fn measure(args: &Args, addr: SocketAddr) -> Result<()> {
    let playlist = match args.stream {
        Stream::Synthetic => "/synthetic/bench/index.m3u8",
        Stream::Live => "/live/sample/index.m3u8",
    };
    // Warm-up request (also checks the stream exists), then zero the origin's counters.
    let mut conn = None;
    let (status, _) =
        request(&mut conn, addr, "GET", playlist, true).context("fetching the playlist")?;
    if status != 200 {
        bail!("{playlist}: HTTP {status}");
    }
    request(&mut conn, addr, "POST", "/stats/reset", false)?;

    eprintln!(
        "xtask: {} clients fetching {playlist} for {} s",
        args.clients, args.seconds
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let threads: Vec<_> = (0..args.clients)
        .map(|id| std::thread::spawn(move || client(addr, playlist, deadline, id)))
        .collect();
    let mut t = Tally::default();
    for th in threads {
        let c = th
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        t.bytes += c.bytes;
        t.requests += c.requests;
        t.errors += c.errors;
        t.segment_ms.extend(c.segment_ms);
    }
    let secs = start.elapsed().as_secs_f64();

    // The origin's own count of body bytes over the same period (requests finished before join).
    let (_, stats) = request(&mut conn, addr, "GET", "/stats", true)?;
    let server_bytes = json_u64_after(&String::from_utf8_lossy(&stats), "\"totals\":{\"bytes\":");

    t.segment_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        t.segment_ms
            .get(((t.segment_ms.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mb_per_s = t.bytes as f64 / secs / 1e6;
    let requests_per_s = t.requests as f64 / secs;
    println!(
        "origin bench: {:.1} MB/s ({:.0} Mbit/s), {:.0} requests/s, {} errors, segment latency p50 {:.1} ms p99 {:.1} ms",
        mb_per_s,
        mb_per_s * 8.0,
        requests_per_s,
        t.errors,
        pct(0.5),
        pct(0.99)
    );
    match server_bytes {
        Some(b) if b == t.bytes => println!("origin /stats agrees: {b} body bytes"),
        Some(b) => println!(
            "warning: origin /stats counted {b} body bytes, clients received {}",
            t.bytes
        ),
        None => println!("warning: could not read /stats"),
    }
    println!(
        "{{\"clients\":{},\"seconds\":{},\"stream\":\"{}\",\"mb_per_s\":{:.2},\"requests_per_s\":{:.1},\"errors\":{},\"bytes\":{},\"requests\":{},\"server_bytes\":{},\"segment_p50_ms\":{:.2},\"segment_p99_ms\":{:.2}}}",
        args.clients,
        args.seconds,
        match args.stream {
            Stream::Synthetic => "synthetic",
            Stream::Live => "live",
        },
        mb_per_s,
        requests_per_s,
        t.errors,
        t.bytes,
        t.requests,
        server_bytes.map_or("null".to_string(), |b| b.to_string()),
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

/// One client: playlist, then each listed segment, until the deadline (no request is cut off,
/// so client and server byte counts can be compared exactly).
fn client(addr: SocketAddr, playlist: &str, deadline: Instant, id: usize) -> Tally {
    let mut t = Tally::default();
    let mut conn = None;
    let dir = playlist.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    while Instant::now() < deadline {
        let text = match request(&mut conn, addr, "GET", playlist, true) {
            Ok((200, body)) => {
                t.requests += 1;
                t.bytes += body.len() as u64;
                String::from_utf8_lossy(&body).into_owned()
            }
            Ok((_, body)) => {
                t.requests += 1;
                t.bytes += body.len() as u64;
                t.errors += 1;
                continue;
            }
            Err(_) => {
                t.errors += 1;
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let segs: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        // Start at a different segment per client so they don't all walk in lockstep.
        for i in 0..segs.len() {
            if Instant::now() >= deadline {
                break;
            }
            let path = format!("{dir}/{}", segs[(i + id) % segs.len()]);
            let t0 = Instant::now();
            match request(&mut conn, addr, "GET", &path, false) {
                Ok((status, _)) => {
                    t.requests += 1;
                    t.bytes += conn_last_len(&conn);
                    if status == 200 {
                        t.segment_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        t.errors += 1;
                    }
                }
                Err(_) => t.errors += 1,
            }
        }
    }
    t
}

/// Keep-alive connection plus the body length of its last response.
struct Conn {
    reader: BufReader<TcpStream>,
    last_len: u64,
}

fn conn_last_len(c: &Option<Conn>) -> u64 {
    c.as_ref().map_or(0, |c| c.last_len)
}

/// One HTTP/1.1 request on the (re)used connection. Returns the status and, if `keep_body`,
/// the body (otherwise the body is read and discarded; its length is in `Conn::last_len`).
fn request(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    keep_body: bool,
) -> Result<(u16, Vec<u8>)> {
    let res = request_once(conn, addr, method, path, keep_body);
    if res.is_err() {
        *conn = None; // broken connection: the next request reconnects
    }
    res
}

fn request_once(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    keep_body: bool,
) -> Result<(u16, Vec<u8>)> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        *conn = Some(Conn {
            reader: BufReader::with_capacity(256 * 1024, s),
            last_len: 0,
        });
    }
    let c = conn.as_mut().context("no connection")?;
    write!(
        c.reader.get_mut(),
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut line = String::new();
    c.reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let (mut len, mut close) = (None, false);
    loop {
        line.clear();
        if c.reader.read_line(&mut line)? == 0 {
            bail!("connection closed in headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => len = v.parse::<u64>().ok(),
                "transfer-encoding" => bail!("chunked responses are not supported by this client"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let len = len.context("response without Content-Length")?;
    let mut body = Vec::new();
    if keep_body {
        (&mut c.reader).take(len).read_to_end(&mut body)?;
        if body.len() as u64 != len {
            bail!("short body");
        }
    } else if std::io::copy(&mut (&mut c.reader).take(len), &mut std::io::sink())? != len {
        bail!("short body");
    }
    c.last_len = len;
    if close {
        *conn = None;
    }
    Ok((status, body))
}

/// The integer right after `key` in a JSON text (enough for the origin's fixed /stats format).
fn json_u64_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Where cargo puts build output (respects CARGO_TARGET_DIR, relative to the workspace root).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => util::root().join(d),
        None => util::root().join("target"),
    }
}

/// The origin child process.
struct Origin {
    child: Child,
    addr: SocketAddr,
}

impl Origin {
    fn start(bin: &std::path::Path, args: &Args) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--window", "6"])
            .arg("--synthetic")
            .arg(format!("bench={}:{}", args.rate_kbps, args.seg_secs))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if args.stream == Stream::Live {
            cmd.arg("--media-dir")
                .arg(util::root().join("media"))
                .args(["--live", "sample"]);
        }
        eprintln!("xtask: starting {cmd:?}");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("origin stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("origin listening on http://")
            .and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Ok(Origin { child, addr }),
            None => {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("origin did not start ({status}); first line: {line:?}")
            }
        }
    }

    /// SIGTERM (graceful shutdown), then SIGKILL if it is still there after 5 s.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_totals_from_stats_json() {
        let s = r#"{"streams":{"x":{"bytes":5}},"totals":{"bytes":1234,"requests":3}}"#;
        assert_eq!(json_u64_after(s, "\"totals\":{\"bytes\":"), Some(1234));
        assert_eq!(json_u64_after("{}", "\"totals\":{\"bytes\":"), None);
    }
}
