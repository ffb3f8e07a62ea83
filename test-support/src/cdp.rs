//! A minimal Chrome DevTools protocol client: enough to attach to the page of a [`Chromium`]
//! launched with `--remote-debugging-port=0` and run V8's sampling CPU profiler
//! (`cargo xtask bench browser-cpu --profile`).
//!
//! [`Chromium`]: crate::browser::Chromium

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The flag that makes Chromium listen for DevTools on a free port, written to
/// `<profile>/DevToolsActivePort`.
pub const REMOTE_DEBUGGING_FLAG: &str = "--remote-debugging-port=0";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One DevTools session with a page.
pub struct Cdp {
    ws: Ws,
    next: u64,
}

/// `GET http://127.0.0.1:{port}{path}`: the body, read up to its `Content-Length` (Chromium's
/// DevTools server keeps the connection open, and answers HTTP/1.0 with nothing).
async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(usize::MAX);
            if body.len() >= len {
                return Ok(body.to_string());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await??;
        if n == 0 {
            bail!("DevTools HTTP answer cut short");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            bail!("DevTools HTTP answer too long");
        }
    }
}

impl Cdp {
    /// Connects to the first page of the browser whose profile is `profile` (waits up to
    /// `wait` for it to listen).
    pub async fn attach_page(profile: &Path, wait: Duration) -> Result<Cdp> {
        let file = profile.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(port) = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<u16>().ok())
                && let Ok(list) = http_get(port, "/json/list").await
                && let Ok(Value::Array(targets)) = serde_json::from_str::<Value>(&list)
                && let Some(url) = targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                let (ws, _) = tokio_tungstenite::connect_async(url)
                    .await
                    .context("connecting to the page's DevTools socket")?;
                return Ok(Cdp { ws, next: 1 });
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no DevTools page target under {}", profile.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Calls `method` and returns its `result` (events in between are dropped).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next;
        self.next += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).await?;
        while let Some(m) = self.ws.next().await {
            let Message::Text(t) = m? else { continue };
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
        bail!("DevTools socket closed during {method}")
    }

    /// Samples the page's main thread with V8's profiler for `secs` (every `interval_us`);
    /// returns the `Profiler.Profile`.
    pub async fn cpu_profile(&mut self, secs: f64, interval_us: u64) -> Result<Value> {
        self.call("Profiler.enable", json!({})).await?;
        self.call(
            "Profiler.setSamplingInterval",
            json!({"interval": interval_us}),
        )
        .await?;
        self.call("Profiler.start", json!({})).await?;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let r = self.call("Profiler.stop", json!({})).await?;
        Ok(r["profile"].clone())
    }
}

/// Self time (ms) by `(script, function)` in a `Profiler.Profile`, largest first. The script is
/// the last path segment of the URL (`wasm` for WebAssembly functions), or the pseudo-node's
/// own name (`(idle)`, `(program)`, `(garbage collector)`).
pub fn self_times(profile: &Value) -> Vec<(String, String, f64)> {
    let mut name: HashMap<u64, (String, String)> = HashMap::new();
    for n in profile["nodes"].as_array().into_iter().flatten() {
        let cf = &n["callFrame"];
        let f = cf["functionName"].as_str().unwrap_or("").to_string();
        let url = cf["url"].as_str().unwrap_or("");
        let script = if url.starts_with("wasm://") || url.ends_with(".wasm") {
            "wasm".to_string()
        } else if url.is_empty() {
            if f.starts_with('(') {
                f.clone()
            } else {
                "(native)".to_string()
            }
        } else {
            let path = url.split(['?', '#']).next().unwrap_or(url);
            path.rsplit('/').next().unwrap_or(path).to_string()
        };
        let f = if f.is_empty() {
            "(anonymous)".into()
        } else {
            f
        };
        if let Some(id) = n["id"].as_u64() {
            name.insert(id, (script, f));
        }
    }
    let mut acc: HashMap<(String, String), f64> = HashMap::new();
    let samples = profile["samples"].as_array().cloned().unwrap_or_default();
    let deltas = profile["timeDeltas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Sample i lasted until sample i + 1 (its delta is the next sample's).
    for (i, s) in samples.iter().enumerate() {
        let us = deltas
            .get(i + 1)
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            .max(0.0);
        if let Some(k) = s.as_u64().and_then(|id| name.get(&id)) {
            *acc.entry(k.clone()).or_default() += us / 1000.0;
        }
    }
    let mut v: Vec<_> = acc.into_iter().map(|((s, f), ms)| (s, f, ms)).collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

/// [`self_times`] summed by script.
pub fn by_script(times: &[(String, String, f64)]) -> Vec<(String, f64)> {
    let mut acc: HashMap<&str, f64> = HashMap::new();
    for (s, _, ms) in times {
        *acc.entry(s).or_default() += ms;
    }
    let mut v: Vec<_> = acc.into_iter().map(|(s, ms)| (s.to_string(), ms)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_time_goes_to_the_sampled_node() {
        let p = json!({
            "nodes": [
                {"id": 1, "callFrame": {"functionName": "(root)", "url": ""}},
                {"id": 2, "callFrame": {"functionName": "drain", "url": "http://h/p2p-cdn.js?x"}},
                {"id": 3, "callFrame": {"functionName": "$f1", "url": "wasm://wasm/abc"}},
                {"id": 4, "callFrame": {"functionName": "(idle)", "url": ""}}
            ],
            "samples": [2, 3, 3, 4],
            "timeDeltas": [0, 1000, 2000, 500]
        });
        let t = self_times(&p);
        let get = |s: &str, f: &str| {
            t.iter()
                .find(|x| x.0 == s && x.1 == f)
                .map(|x| x.2)
                .unwrap_or(-1.0)
        };
        assert_eq!(get("p2p-cdn.js", "drain"), 1.0);
        assert_eq!(get("wasm", "$f1"), 2.5);
        assert_eq!(get("(idle)", "(idle)"), 0.0);
        assert_eq!(by_script(&t)[0], ("wasm".to_string(), 2.5));
    }
}
