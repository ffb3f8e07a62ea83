//! Cross-crate integration tests live in tests/tests/.
//!
//! [`harness`]: origin (live `media/sample`) + signaling server + a static server for
//! `demo-site/` and `dist/`, all in-process on port 0. Used by the browser tests and by
//! `cargo xtask demo` (binary `p2p-demo`).

pub mod harness {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use anyhow::Result;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Query, State};
    use axum::http::{StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::Value;

    /// The workspace root.
    pub fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Latest `POST /report?id=` body of each page.
    pub type Reports = Arc<Mutex<HashMap<String, Value>>>;

    /// Most pages whose reports are kept (a test opens at most a few dozen).
    const MAX_REPORTS: usize = 256;

    pub struct Env {
        pub origin: SocketAddr,
        pub signal: SocketAddr,
        pub web: SocketAddr,
        pub reports: Reports,
        pub origin_handle: origin::OriginHandle,
        pub signal_handle: signaling_server::ServerHandle,
    }

    async fn report(
        State(reports): State<Reports>,
        Query(q): Query<HashMap<String, String>>,
        body: Bytes,
    ) -> StatusCode {
        let Some(id) = q.get("id") else {
            return StatusCode::BAD_REQUEST;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return StatusCode::BAD_REQUEST;
        };
        if let Ok(mut r) = reports.lock()
            && (r.len() < MAX_REPORTS || r.contains_key(id))
        {
            r.insert(id.clone(), v);
        }
        StatusCode::NO_CONTENT
    }

    /// Files of `demo-site/`, then `dist/`.
    async fn static_file(uri: Uri) -> Response {
        let path = uri.path().trim_start_matches('/');
        let path = if path.is_empty() { "index.html" } else { path };
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return StatusCode::NOT_FOUND.into_response();
        }
        for dir in ["demo-site", "dist"] {
            let p = root().join(dir).join(path);
            if let Ok(data) = tokio::fs::read(&p).await {
                let ct = match p.extension().and_then(|e| e.to_str()) {
                    Some("html") => "text/html; charset=utf-8",
                    Some("js") => "text/javascript",
                    Some("wasm") => "application/wasm",
                    Some("css") => "text/css",
                    Some("json") => "application/json",
                    _ => "application/octet-stream",
                };
                return (
                    [
                        (header::CONTENT_TYPE, ct),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    data,
                )
                    .into_response();
            }
        }
        StatusCode::NOT_FOUND.into_response()
    }

    /// Starts everything on `127.0.0.1` (`web_port` 0: any free port).
    pub async fn start(web_port: u16) -> Result<Env> {
        let (origin, origin_handle) = origin::spawn(origin::Config {
            media_dir: Some(root().join("media")),
            live: vec!["sample".into()],
            allow_origins: vec!["*".into()],
            ..Default::default()
        })
        .await?;
        let (signal, signal_handle) = signaling_server::try_spawn(Default::default()).await?;
        let reports: Reports = Arc::default();
        let app = Router::new()
            .route("/report", post(report))
            .with_state(reports.clone())
            .fallback(static_file);
        let l = tokio::net::TcpListener::bind(("127.0.0.1", web_port)).await?;
        let web = l.local_addr()?;
        tokio::spawn(async move { axum::serve(l, app).await });
        Ok(Env {
            origin,
            signal,
            web,
            reports,
            origin_handle,
            signal_handle,
        })
    }

    /// Percent-encodes everything but unreserved characters.
    pub fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    impl Env {
        /// The demo page for this environment.
        pub fn page_url(&self, extra: &str) -> String {
            let src = format!("http://{}/live/sample/index.m3u8", self.origin);
            let sig = format!("ws://{}/ws", self.signal);
            format!(
                "http://{}/index.html?src={}&signal={}{extra}",
                self.web,
                enc(&src),
                enc(&sig)
            )
        }
    }
}
