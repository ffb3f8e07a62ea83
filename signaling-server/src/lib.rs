//! Signaling server: swarms, introductions and WebRTC handshake relay.
//!
//! [`registry`] (the `swarm-registry` crate, shared with the simulator) is the IO-free heart;
//! [`router`] wraps it in an axum app:
//!
//! | route          | what                                                               |
//! |----------------|--------------------------------------------------------------------|
//! | `/ws`          | the signaling WebSocket (JSON text messages, `protocol::signaling`) |
//! | `/healthz`     | `ok` (503 while shutting down)                                      |
//! | `/metrics`     | Prometheus text                                                     |
//! | `/api/swarms`  | admin: JSON overview: totals and the largest swarms (a cluster's; `?scope=node`) |
//! | `/`, `/dashboard` | admin: HTML dashboard polling `/api/swarms`                      |
//! | `/integrity`   | integrity manifests for third-party HLS origins ([`integrity`]; 404 without `--integrity-origin`) |
//!
//! Admin routes list swarm ids (stream URLs) and their audiences. With `--admin-token` they
//! need `Authorization: Bearer <token>`, or HTTP Basic with the token as password (a browser
//! opening the dashboard is prompted, and its polls then carry the credentials); without a
//! token (the default) they answer local requests only: a loopback client, not forwarded by a
//! proxy that was not declared with `--trusted-proxy`. Others get 401 / 403. `/healthz` and
//! `/metrics` stay public: load balancers and Prometheus scrapers reach them from other hosts,
//! and they hold only aggregate counters (no swarm ids, no addresses).
//!
//! ## Limits and what a client sees when it hits one
//!
//! | limit (flag)                 | refusal                                                   |
//! |------------------------------|-----------------------------------------------------------|
//! | `--allowed-origins`          | HTTP 403 before the upgrade                               |
//! | `--max-connections`          | `error server_full`, then close (1013)                    |
//! | `--max-conns-per-ip`         | per IPv4 address or IPv6 /64, counted per TCP connection from accept (half-open sockets too): the next few get `error rate_limited` on upgrade, then close (1013); further ones are closed at accept |
//! | `--max-message-bytes`        | `error too_large`; over 2× the limit also close (1009)    |
//! | `--rate-per-s`/`--rate-burst`| `error rate_limited`, message dropped                     |
//! | `--join-rate-per-s`/`--join-burst` | `join` beyond it: `error rate_limited` (with `swarm`), dropped |
//! | `--max-swarms-per-conn`      | `error too_many_swarms`                                   |
//! | `--intro-peers`              | at most that many peers in `joined`/`peers`               |
//! | `--token-secret`             | `join` without a valid token: `error unauthorized`        |
//! | `--error-budget`             | after that many errors in a burst (refill 1 per 5 s): close (1008) |
//! | `--outbox-msgs`/`--outbox-bytes` | relays to a client whose outbox is full are dropped (counted in `signaling_relays_dropped_total`); a full outbox for a membership notice, or a write stuck for `--write-timeout-ms`, closes that client (1008) |
//! | idle (`--heartbeat-ms` × `--idle-factor`) | close (1001)                                 |
//! | `--header-timeout-ms` (10 s) | an HTTP request head (the upgrade) not complete in time, from accept or from the previous response on a keep-alive connection: socket closed |
//! | `--http-idle-timeout-ms` (60 s) | an HTTP connection (not yet a WebSocket) on which no byte moves: socket closed |
//! | `--first-message-timeout-ms` (10 s) | a WebSocket that sends no message after `welcome`: close (1001) |
//! | `--integrity-origin`         | `/integrity` for a playlist not under a prefix: 403, nothing fetched (no prefix: 404) |
//! | `--integrity-max-playlists` (64) | a new playlist beyond it: 503 with `Retry-After` |
//! | `--integrity-idle-ms` (60 s) | a followed playlist nobody asked about: follower stopped, memory freed |
//!
//! Client addresses (per-IP limits, logs): the socket's, or, only for a request whose socket
//! peer is a `--trusted-proxy` address or network, the one it forwarded (`Forwarded: for=`, else
//! `X-Forwarded-For`, walked from the nearest hop back past trusted proxies). Connections from a
//! trusted proxy are counted at the upgrade under the forwarded address, not at accept: the proxy
//! must bound half-open connections itself.
//!
//! Malformed JSON and unknown types get `error bad_message`, a wrong `v` `unsupported_version`,
//! binary frames `binary_frame`, messages about a swarm the connection is not in `not_in_swarm`,
//! bad swarm ids `bad_swarm`.
//!
//! `signal` is relayed only within a pair the server introduced (one was given the other in
//! `joined`/`peers`, either direction, both still members): anything else gets `unknown_peer`
//! (not charged to the error budget) and counts in `signaling_relays_refused_total`. Its `data`
//! must fit `protocol::signaling::{MAX_SDP_LEN, MAX_CANDIDATE_LEN, MAX_SDP_MID_LEN}` (16 KiB,
//! 1 KiB, 256 bytes; `too_large`) and an SDP may not be empty (`bad_message`).
//!
//! `stats` reports become deltas per (connection, swarm) that must be plausible
//! (`--stats-max-mbps` per counter, 10 s of burst; see [`reports`]); others are ignored and
//! counted in `signaling_stats_rejected_total{reason}`.
//!
//! Membership churn: `slot` notices are coalesced (`--slot-notice-ms`, 500 ms): a member is told
//! its latest slot at most once per interval per swarm, and not at all if the churn cancelled
//! out. With the join bucket, one connection looping join/leave costs each other member of the
//! swarm at most 2 `slot`s per second plus one `peer_left` per accepted join it was paired with.
//!
//! Shutdown: every client gets `reconnect {after_ms}` (min + random jitter), then a close (1012).

pub mod cluster;
pub mod config;
pub mod ice;
pub mod integrity;
pub mod metrics;
pub mod reports;
mod session;
pub mod state;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

pub use config::Config;
pub use state::AppState;
pub use swarm_registry as registry;

/// Errors of the library (the connection handling itself never fails: clients get `error`
/// messages and bad ones are cut off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

const DASHBOARD: &str = include_str!("dashboard.html");

/// The app. [`serve`] runs it with the header, idle and per-IP limits applied at accept; served
/// another way, give it `ConnectInfo<SocketAddr>` (else the per-IP limit is skipped and the
/// admin endpoints, local-only by default, refuse everybody).
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/api/swarms", get(api_swarms))
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin_only,
        ));
    Router::new()
        .route("/ws", get(session::ws_handler))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_handler))
        .route("/integrity", get(integrity::handler))
        .merge(admin)
        .with_state(state)
}

/// Lets a request through to an admin route only with the admin token, or from this host when
/// no token is configured.
async fn admin_only(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match state.admin_check(peer, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => {
            tracing::debug!(?peer, uri = %req.uri(), ?denied, "admin request refused");
            denied.into_response()
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    let body = state.render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

/// `/api/swarms`: on a cluster node, the whole cluster's (every live node asked over NATS);
/// `?scope=node`: this node's alone.
async fn api_swarms(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<ApiSwarmsQuery>,
) -> Response {
    let o = match (state.cluster(), q.scope.as_deref()) {
        (Some(c), None | Some("cluster")) => c.overview(&state).await,
        _ => state.overview(),
    };
    axum::Json(o).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct ApiSwarmsQuery {
    scope: Option<String>,
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// Serves `state` on `listener` until `shutdown` resolves; then tells every client to reconnect
/// (with jitter), waits up to `shutdown_grace_ms` for them to go, and returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    state.config().validate()?;
    // Aborted when `serve` returns or its future is dropped (a `ServerHandle` dropped in a
    // test): a cluster node must stop its heartbeats with its connections.
    let mut tasks = AbortOnDrop(vec![
        tokio::spawn(state.clone().run_sweeper()),
        tokio::spawn(state.clone().run_slot_notices()),
    ]);
    if let Some(c) = state.cluster() {
        let (c, st) = (c.clone(), state.clone());
        tasks.0.push(tokio::spawn(async move {
            if let Err(e) = c.run(st).await {
                tracing::error!(error = %e, "cluster link failed: serving alone");
            }
        }));
    }
    let st = state.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!(
            connections = st.open_connections(),
            "shutting down: telling clients to reconnect"
        );
        st.begin_shutdown();
        let grace = Duration::from_millis(st.config().shutdown_grace_ms);
        if !st.drained(grace).await {
            tracing::warn!(left = st.open_connections(), "shutdown grace period over");
        }
    };
    let timeouts = http_guard::Timeouts {
        header: Duration::from_millis(state.config().header_timeout_ms),
        idle: Duration::from_millis(state.config().http_idle_timeout_ms),
    };
    let admit = {
        let st = state.clone();
        move |addr: SocketAddr| st.admit_tcp(addr.ip())
    };
    let result =
        http_guard::serve(listener, router(state.clone()), timeouts, admit, graceful).await;
    drop(tasks);
    state.integrity().stop_all();
    result.map_err(Error::Serve)
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A server started by [`spawn`]; dropping it stops the server abruptly, [`Self::shutdown`]
/// gracefully.
#[derive(Debug)]
pub struct ServerHandle {
    state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl ServerHandle {
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Graceful shutdown: clients get `reconnect`, then the server stops.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(Error::Serve(std::io::Error::other(e))),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server on `127.0.0.1:0` (for tests of this and other crates).
pub async fn try_spawn(config: Config) -> Result<(SocketAddr, ServerHandle), Error> {
    config.validate()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let state = AppState::new(config);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    Ok((
        local,
        ServerHandle {
            state,
            stop: Some(tx),
            task,
        },
    ))
}

/// [`try_spawn`] for tests: panics if the configuration is invalid or loopback cannot be bound.
pub async fn spawn(config: Config) -> (SocketAddr, ServerHandle) {
    match try_spawn(config).await {
        Ok(r) => r,
        Err(e) => panic!("signaling-server spawn: {e}"),
    }
}
