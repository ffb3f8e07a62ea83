//! What the browser tests, `cargo xtask demo` and `p2pcdn-load --browsers` share.
//!
//! * [`browser`]: headless Chromium viewers of the demo page, the page server and the report
//!   collector (used by `p2pcdn-load --browsers` and the browser tests).
//! * [`cpu`]: CPU time of a browser's process tree, by Chromium process type.
//! * `cdp` (feature `harness`): a minimal DevTools-protocol client (Chromium's CPU profiler).
//! * [`gate`]: a browser test's skip-or-fail check when Chromium is missing.
//! * [`process`]: a server binary started until its "listening" line and stopped with SIGTERM
//!   (the servers' CLI tests and the README/deploy test).
//! * `harness` (feature `harness`): origin (live `media/sample`) + signaling server + a static
//!   server for `demo-site/` and `dist/`, all in-process on port 0. Used by the browser tests
//!   (`tests/`, peer-native's native <-> Chromium interop test) and by `cargo xtask demo`
//!   (binary `p2p-demo` of `tests/`).
//!
//! Depends on neither peer crate, so both `peer-native` and `tests` can use it.

pub mod browser;
#[cfg(feature = "harness")]
pub mod cdp;
pub mod cpu;
pub mod gate;
#[cfg(feature = "harness")]
pub mod nats;
pub mod process;
#[cfg(feature = "harness")]
pub mod static_origin;
#[cfg(feature = "harness")]
pub mod tls_proxy;
#[cfg(feature = "harness")]
pub mod turn;

#[cfg(feature = "harness")]
pub mod harness {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use anyhow::Result;

    pub use crate::browser::enc;

    /// The workspace root.
    pub fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Latest `POST /report?id=` body of each page (the same page server and collector as
    /// `p2pcdn-load --browsers`: [`crate::browser`]).
    pub type Reports = crate::browser::Reports;

    pub struct Env {
        pub origin: SocketAddr,
        pub signal: SocketAddr,
        pub web: SocketAddr,
        pub reports: Reports,
        pub origin_handle: origin::OriginHandle,
        /// `None` while the signaling server is down (see [`Env::restart_signaling`]).
        pub signal_handle: Option<signaling_server::ServerHandle>,
    }

    /// Starts everything on `127.0.0.1` (`web_port` 0: any free port).
    pub async fn start(web_port: u16) -> Result<Env> {
        start_with(web_port, Default::default()).await
    }

    /// [`start`] with the signaling server configured by `signaling`.
    pub async fn start_with(
        web_port: u16,
        signaling: signaling_server::config::Config,
    ) -> Result<Env> {
        start_custom(web_port, signaling, |_| {}).await
    }

    /// [`start_with`], with the origin's config changed by `origin` first (e.g. a trusted
    /// proxy).
    pub async fn start_custom(
        web_port: u16,
        signaling: signaling_server::config::Config,
        origin: impl FnOnce(&mut origin::Config),
    ) -> Result<Env> {
        let mut ocfg = origin::Config {
            media_dir: Some(root().join("media")),
            live: vec!["sample".into(), "ladder".into()],
            allow_origins: vec!["*".into()],
            ..Default::default()
        };
        origin(&mut ocfg);
        let (origin, origin_handle) = origin::spawn(ocfg).await?;
        let (signal, signal_handle) = signaling_server::try_spawn(signaling).await?;
        let reports = Reports::default();
        // Files of `demo-site/`, then `dist/`.
        let web = crate::browser::serve_pages(
            SocketAddr::from(([127, 0, 0, 1], web_port)),
            vec![root().join("demo-site"), root().join("dist")],
            reports.clone(),
        )
        .await?;
        Ok(Env {
            origin,
            signal,
            web,
            reports,
            origin_handle,
            signal_handle: Some(signal_handle),
        })
    }

    impl Env {
        /// Stops the signaling server (gracefully: clients are told to reconnect, then their
        /// sockets close), keeps it down for `down`, and starts a new one with empty state on
        /// the same address: what viewers see when an operator restarts it.
        pub async fn restart_signaling(&mut self, down: std::time::Duration) -> Result<()> {
            if let Some(h) = self.signal_handle.take() {
                h.shutdown().await?;
            }
            tokio::time::sleep(down).await;
            let listener = tokio::net::TcpListener::bind(self.signal).await?;
            let state = signaling_server::AppState::new(Default::default());
            // Runs until the runtime ends (the end of the test).
            tokio::spawn(signaling_server::serve(
                listener,
                state,
                std::future::pending::<()>(),
            ));
            Ok(())
        }

        /// The demo page for this environment, playing the live sample.
        pub fn page_url(&self, extra: &str) -> String {
            self.page_url_for("live/sample/index.m3u8", extra)
        }

        /// The demo page playing any playlist URL `src` with the signaling server at `signal`
        /// (`ws://…/ws`).
        pub fn page_url_with(&self, src: &str, signal: &str, extra: &str) -> String {
            format!(
                "http://{}/index.html?src={}&signal={}{extra}",
                self.web,
                enc(src),
                enc(signal)
            )
        }

        /// The demo page playing `path` of the origin (e.g. `live/ladder/master.m3u8`).
        pub fn page_url_for(&self, path: &str, extra: &str) -> String {
            let src = format!("http://{}/{path}", self.origin);
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
