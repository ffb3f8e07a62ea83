//! One WebSocket connection: a single task that reads the client's messages and writes its
//! outbox (no reader/writer task pair, no split socket).
//!
//! Memory per idle connection is what decides how many viewers one box holds, so the task's
//! future stays small: while idle it only awaits "outbox has something" (a `Notify`) or "a frame
//! arrived". The work of handling a frame or flushing the outbox runs in a boxed future that
//! exists only while it runs, so its (larger) state is not part of every idle connection.
//! Idle timeouts use one sweeper for all connections ([`AppState::run_sweeper`]), not a timer
//! each.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::PeerId;
use protocol::signaling::{ClientMsg, ErrorCode, MAX_SWARM_ID_LEN, ServerMsg};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use futures_util::StreamExt;

use crate::metrics::{Reject, RelayRefused, kind_index};
use crate::reports;
use crate::state::{Accepted, AppState, CloseReason, Conn, ConnGuard};

/// `GET /ws`.
pub(crate) async fn ws_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    accepted: Option<Extension<Accepted>>,
    ws: WebSocketUpgrade,
) -> Response {
    let cfg = state.config();
    if !origin_allowed(
        cfg,
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
    ) {
        state.metrics().reject(Reject::Origin);
        tracing::debug!("refused a connection: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    // Sized for many mostly idle connections: small initial read buffer (it grows for a large
    // frame), eager writes (no write buffering), and frames over 2× the message limit refused by
    // the WebSocket layer before they are buffered.
    let hard_cap = cfg.max_message_bytes.saturating_mul(2);
    let ws = ws
        .read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(cfg.outbox_bytes.saturating_mul(2))
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap);
    // The per-IP slot of this TCP connection (if the accept loop counted it) lives as long as
    // the refusal below, or the session.
    let accepted = accepted.map(|Extension(a)| a);
    if state.is_shutting_down() {
        state.metrics().reject(Reject::ShuttingDown);
        return ws.on_upgrade(move |socket| async move {
            let _slot = accepted;
            refuse(
                socket,
                state,
                ErrorCode::ShuttingDown,
                "server is shutting down",
            )
            .await
        });
    }
    // The address limits and logs use: the socket's, or the forwarded one from a trusted proxy.
    let client = peer.map(|Extension(ConnectInfo(addr))| state.client_ip(addr.ip(), &headers));
    match state.admit(accepted.clone(), client) {
        Ok(guard) => ws.on_upgrade(move |socket| run(socket, state, guard)),
        Err(reason) => {
            tracing::debug!(client = ?client, ?reason, "websocket refused");
            state.metrics().reject(reason);
            let (code, msg) = match reason {
                Reject::PerIp => (
                    ErrorCode::RateLimited,
                    "too many connections from your address",
                ),
                _ => (
                    ErrorCode::ServerFull,
                    "server is full, try another or later",
                ),
            };
            ws.on_upgrade(move |socket| async move {
                let _slot = accepted;
                refuse(socket, state, code, msg).await
            })
        }
    }
}

fn origin_allowed(cfg: &crate::Config, origin: Option<&str>) -> bool {
    if cfg.allowed_origins.is_empty() {
        return true;
    }
    match origin {
        None => !cfg.require_origin,
        Some(o) => cfg.allowed_origins.iter().any(|a| a == o),
    }
}

/// Tells a refused client why, then closes.
async fn refuse(mut ws: WebSocket, state: AppState, code: ErrorCode, msg: &'static str) {
    state.metrics().error(code);
    let text = ServerMsg::error(code, msg).to_json();
    let write = async {
        ws.send(Message::Text(text.into())).await?;
        ws.send(close(close_code::AGAIN, msg)).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Token bucket in 8 bytes; time in ms since server start (wraps after 49 days: harmless, the
/// bucket just refills).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    last_ms: u32,
}

impl Bucket {
    fn full(size: f32, now_ms: u64) -> Self {
        Bucket {
            tokens: size,
            last_ms: now_ms as u32,
        }
    }

    /// Refills at `rate` per second up to `size`, then takes one token if there is one.
    fn take(&mut self, now_ms: u64, rate: f32, size: f32) -> bool {
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.last_ms = now;
        self.tokens = (self.tokens + elapsed * rate).min(size);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Refill of the error budget: one error forgiven every 5 s.
const ERROR_REFILL_PER_S: f32 = 0.2;
/// Longest error `message` sent back (serde errors may quote client input).
const MAX_ERROR_TEXT: usize = 200;

/// A swarm this connection is in.
#[derive(Debug)]
struct Membership {
    swarm: Box<str>,
    /// Its `stats` reports so far (to turn them into plausible deltas); from the first report.
    stats: Option<Box<reports::Track>>,
}

impl Membership {
    /// The member's last accepted `peers` (taken back out of the swarm's link sum on leave).
    fn peers(&self) -> u32 {
        self.stats.as_ref().map_or(0, |t| t.peers())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Session {
    state: AppState,
    conn: Arc<Conn>,
    id: PeerId,
    swarms: Vec<Membership>,
    rate: Bucket,
    joins: Bucket,
    budget: Bucket,
    guard: ConnGuard,
}

/// What woke the connection task.
enum Event {
    /// Outbox has messages, or the server asked this connection to close.
    Wake,
    Frame(Option<Result<Message, axum::Error>>),
}

/// The connection task. Its future is what every idle connection costs, so it holds little
/// besides the socket and the session: the waiting is a `poll_fn` over the socket and the
/// connection's wake flag (no `select!` with sub-futures), and everything that is not waiting
/// runs in boxed futures.
///
/// Not an `async fn`: an async fn moves its arguments into locals, which keeps two copies of the
/// 368-byte socket in the future; an `async move` block that uses the captured socket in place
/// keeps one.
#[allow(clippy::manual_async_fn)] // deliberate, see above
fn run(mut ws: WebSocket, state: AppState, guard: ConnGuard) -> impl Future<Output = ()> + Send {
    async move {
        let (id, conn) = state.register();
        let now = state.now_ms();
        let cfg = state.config();
        let mut s = Session {
            rate: Bucket::full(cfg.rate_burst, now),
            joins: Bucket::full(cfg.join_burst, now),
            budget: Bucket::full(cfg.error_budget as f32, now),
            state,
            conn,
            id,
            swarms: Vec::new(),
            guard,
        };
        tracing::debug!(peer = id, client = ?s.guard.client, "connected");
        if Box::pin(s.welcome(&mut ws)).await {
            loop {
                let conn = &s.conn;
                let ws_ref = &mut ws;
                // Wake-ups first: a pending close request or outbox is served before more input.
                let event = std::future::poll_fn(|cx| {
                    if conn.poll_wake(cx) {
                        return Poll::Ready(Event::Wake);
                    }
                    ws_ref.poll_next_unpin(cx).map(Event::Frame)
                })
                .await;
                let flow = match event {
                    Event::Wake => Box::pin(s.on_wake(&mut ws)).await,
                    Event::Frame(m) => Box::pin(s.on_frame(&mut ws, m)).await,
                };
                if flow == Flow::Close {
                    break;
                }
            }
        }
        s.cleanup();
        tracing::debug!(peer = id, client = ?s.guard.client, "disconnected");
    }
}

impl Session {
    async fn welcome(&mut self, ws: &mut WebSocket) -> bool {
        let cfg = self.state.config();
        let hb = cfg.heartbeat_ms;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ice_servers = crate::ice::for_peer(cfg, self.id, now_s);
        self.send(
            ws,
            &ServerMsg::Welcome {
                peer_id: self.id,
                heartbeat_ms: hb,
                ice_servers,
            },
        )
        .await
    }

    /// Sends one message; false if the client is gone or too slow (then it must be closed).
    async fn send_text(&mut self, ws: &mut WebSocket, text: axum::extract::ws::Utf8Bytes) -> bool {
        let timeout = Duration::from_millis(self.state.config().write_timeout_ms);
        match tokio::time::timeout(timeout, ws.send(Message::Text(text))).await {
            Ok(Ok(())) => {
                self.state.metrics().messages_out.inc();
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                self.state.metrics().reject(Reject::SlowConsumer);
                false
            }
        }
    }

    async fn send(&mut self, ws: &mut WebSocket, msg: &ServerMsg) -> bool {
        self.send_text(ws, msg.to_json().into()).await
    }

    async fn close_with(&mut self, ws: &mut WebSocket, code: u16, reason: &'static str) {
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.send(close(code, reason))).await;
    }

    /// Sends an `error` and a close frame (best effort: the stream may already be broken).
    async fn fatal(&mut self, ws: &mut WebSocket, code: ErrorCode, message: String, close: u16) {
        self.state.metrics().error(code);
        if self.send(ws, &ServerMsg::error(code, message)).await {
            self.close_with(ws, close, "bad frame").await;
        }
    }

    /// Sends an `error` (not charged to the error budget).
    async fn refuse(
        &mut self,
        ws: &mut WebSocket,
        code: ErrorCode,
        message: String,
        swarm: Option<&str>,
    ) -> Flow {
        self.state.metrics().error(code);
        let mut message = message;
        if message.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let err = ServerMsg::Error {
            code,
            message,
            swarm: swarm.map(str::to_owned),
        };
        if self.send(ws, &err).await {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    /// Sends an `error`; closes the connection when its error budget is spent.
    async fn fail(
        &mut self,
        ws: &mut WebSocket,
        code: ErrorCode,
        message: String,
        swarm: Option<&str>,
    ) -> Flow {
        if self.refuse(ws, code, message, swarm).await == Flow::Close {
            return Flow::Close;
        }
        let budget = self.state.config().error_budget as f32;
        if !self
            .budget
            .take(self.state.now_ms(), ERROR_REFILL_PER_S, budget)
        {
            self.state.metrics().reject(Reject::Abuse);
            tracing::info!(peer = self.id, "closing connection: too many errors");
            self.close_with(ws, close_code::POLICY, "too many errors")
                .await;
            return Flow::Close;
        }
        Flow::Continue
    }

    /// The outbox has messages, or the server asked this connection to close.
    async fn on_wake(&mut self, ws: &mut WebSocket) -> Flow {
        // A wake may also be a close request.
        if let Some(reason) = self.conn.close_reason() {
            match reason {
                CloseReason::Shutdown => {
                    let msg = self.state.next_reconnect();
                    if self.send(ws, &msg).await {
                        self.close_with(ws, close_code::RESTART, "server restarting")
                            .await;
                    }
                }
                CloseReason::Idle => {
                    self.state.metrics().reject(Reject::Idle);
                    self.close_with(ws, close_code::AWAY, "idle timeout").await;
                }
                CloseReason::Slow => {
                    self.state.metrics().reject(Reject::SlowConsumer);
                    self.close_with(ws, close_code::POLICY, "too slow to read its messages")
                        .await;
                }
            }
            return Flow::Close;
        }
        while let Some(text) = self.conn.pop() {
            if !self.send_text(ws, text).await {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn on_frame(
        &mut self,
        ws: &mut WebSocket,
        frame: Option<Result<Message, axum::Error>>,
    ) -> Flow {
        let msg = match frame {
            None => return Flow::Close,
            Some(Err(e)) => {
                use tokio_tungstenite::tungstenite::Error as WsError;
                let inner = e.into_inner();
                match inner.downcast_ref::<WsError>() {
                    Some(WsError::Capacity(_)) => {
                        // The frame was not read: the stream cannot be resynchronised.
                        self.state.metrics().reject(Reject::Oversized);
                        let max = self.state.config().max_message_bytes;
                        let m = format!("frame over {} bytes", 2 * max);
                        self.fatal(ws, ErrorCode::TooLarge, m, close_code::SIZE)
                            .await;
                    }
                    Some(WsError::Protocol(_) | WsError::Utf8(_)) => {
                        // Broken framing or a text frame that is not UTF-8: say so, then close.
                        let m = "invalid WebSocket frame".to_owned();
                        self.fatal(ws, ErrorCode::BadMessage, m, close_code::PROTOCOL)
                            .await;
                    }
                    // Resets, EOF: the client is gone.
                    _ => {}
                }
                return Flow::Close;
            }
            Some(Ok(m)) => m,
        };
        let now = self.state.now_ms();
        self.conn.touch(now);
        let (text, binary, control) = match msg {
            Message::Text(t) => {
                self.conn.heard();
                (t, false, false)
            }
            Message::Binary(_) => {
                self.conn.heard();
                (Default::default(), true, false)
            }
            // tungstenite answers pings itself; either way the client is alive.
            Message::Ping(_) | Message::Pong(_) => (Default::default(), false, true),
            Message::Close(_) => return Flow::Close,
        };
        // Control frames count against the message rate too: each ping costs a pong and a
        // wake-up, so a ping flood must spend the same budget as a message flood (it used to
        // bypass it). A browser sends a pong per server heartbeat, far below the rate.
        let cfg = self.state.config();
        if !self.rate.take(now, cfg.rate_per_s, cfg.rate_burst) {
            let m = "message rate limit exceeded".to_owned();
            return self.fail(ws, ErrorCode::RateLimited, m, None).await;
        }
        if control {
            return Flow::Continue;
        }
        if binary {
            self.state.metrics().binary_frames.inc();
            let m = "binary frames are not part of the protocol".to_owned();
            return self.fail(ws, ErrorCode::BinaryFrame, m, None).await;
        }
        match ClientMsg::from_json(text.as_str(), cfg.max_message_bytes) {
            Ok(msg) => {
                self.state.metrics().messages_in[kind_index(msg.kind())].inc();
                self.on_message(ws, msg).await
            }
            Err(e) => {
                self.state.metrics().messages_in[kind_index("other")].inc();
                self.fail(ws, e.code(), e.to_string(), None).await
            }
        }
    }

    fn position(&self, swarm: &str) -> Option<usize> {
        self.swarms.iter().position(|m| &*m.swarm == swarm)
    }

    async fn not_in_swarm(&mut self, ws: &mut WebSocket, swarm: &str) -> Flow {
        let m = "join the swarm first".to_owned();
        self.fail(ws, ErrorCode::NotInSwarm, m, Some(swarm)).await
    }

    async fn on_message(&mut self, ws: &mut WebSocket, msg: ClientMsg) -> Flow {
        match msg {
            ClientMsg::Join { swarm, token } => self.on_join(ws, swarm, token).await,
            ClientMsg::WantPeers { swarm } => {
                if self.position(&swarm).is_none() {
                    return self.not_in_swarm(ws, &swarm).await;
                }
                // In a cluster the swarm's owner may be another node: it answers through the
                // outbox.
                match self.state.introduce(&swarm, self.id) {
                    Some(peers) => {
                        self.send_or_close(ws, &ServerMsg::Peers { swarm, peers })
                            .await
                    }
                    None => Flow::Continue,
                }
            }
            ClientMsg::Leave { swarm } => {
                let Some(i) = self.position(&swarm) else {
                    return self.not_in_swarm(ws, &swarm).await;
                };
                let m = self.swarms.swap_remove(i);
                self.state.leave(&m.swarm, self.id, m.peers());
                Flow::Continue
            }
            ClientMsg::Signal { swarm, to, data } => {
                let t0 = crate::metrics::unix_us();
                if self.position(&swarm).is_none() {
                    return self.not_in_swarm(ws, &swarm).await;
                }
                if let Err(e) = data.check() {
                    self.state.metrics().relay_refused(RelayRefused::BadData);
                    return self.fail(ws, e.code(), e.to_string(), Some(&swarm)).await;
                }
                match self.state.relay(&swarm, self.id, to, data, t0) {
                    Ok(()) => Flow::Continue,
                    Err(why) => {
                        self.state.metrics().relay_refused(why);
                        let m = match why {
                            RelayRefused::NotIntroduced => {
                                format!("peer {to} was not introduced to you, nor you to it")
                            }
                            _ => format!("peer {to} is not in this swarm"),
                        };
                        // Not charged to the error budget: a viewer hits this in ordinary races
                        // (the peer just left; ids kept from before a reconnect), and a hostile
                        // one gains nothing by repeating it.
                        self.refuse(ws, ErrorCode::UnknownPeer, m, Some(&swarm))
                            .await
                    }
                }
            }
            ClientMsg::Stats { swarm, stats } => {
                let Some(i) = self.position(&swarm) else {
                    return self.not_in_swarm(ws, &swarm).await;
                };
                let limits = reports::Limits::new(self.state.config().stats_max_mbps);
                let now = self.state.now_ms();
                let track = self.swarms[i]
                    .stats
                    .get_or_insert_with(|| Box::new(reports::Track::new(now, limits)));
                match track.accept(now, &stats, limits) {
                    Ok(d) => self.state.add_stats(&swarm, &d.counters, d.peers),
                    Err(why) => {
                        self.state.metrics().stats_rejected(why);
                        tracing::debug!(peer = self.id, ?why, "implausible stats report ignored");
                    }
                }
                Flow::Continue
            }
            ClientMsg::Ping => self.send_or_close(ws, &ServerMsg::Pong).await,
        }
    }

    async fn send_or_close(&mut self, ws: &mut WebSocket, msg: &ServerMsg) -> Flow {
        if self.send(ws, msg).await {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    async fn on_join(&mut self, ws: &mut WebSocket, swarm: String, token: Option<String>) -> Flow {
        if !valid_swarm(&swarm) {
            let m =
                format!("swarm ids are 1..={MAX_SWARM_ID_LEN} bytes without control characters");
            return self.fail(ws, ErrorCode::BadSwarm, m, None).await;
        }
        if let Some(secret) = &self.state.config().token_secret {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let checked = match token.as_deref() {
                None => Err("a token is required to join".to_owned()),
                Some(t) => crate::token::verify(secret.as_bytes(), t, &swarm, now)
                    .map_err(|e| e.to_string()),
            };
            if let Err(m) = checked {
                return self
                    .fail(ws, ErrorCode::Unauthorized, m, Some(&swarm))
                    .await;
            }
        }
        let already = self.position(&swarm).is_some();
        if !already && self.swarms.len() >= self.state.config().max_swarms_per_conn {
            let m = format!(
                "at most {} swarms per connection",
                self.state.config().max_swarms_per_conn
            );
            return self
                .fail(ws, ErrorCode::TooManySwarms, m, Some(&swarm))
                .await;
        }
        let cfg = self.state.config();
        if !self
            .joins
            .take(self.state.now_ms(), cfg.join_rate_per_s, cfg.join_burst)
        {
            let m = "join rate limit exceeded".to_owned();
            return self.fail(ws, ErrorCode::RateLimited, m, Some(&swarm)).await;
        }
        let reply = self.state.join(&swarm, self.id);
        if !already {
            self.swarms.push(Membership {
                swarm: swarm.into_boxed_str(),
                stats: None,
            });
        }
        match reply {
            Some(reply) => self.send_or_close(ws, &reply).await,
            // The owner is another node: `joined` comes through the outbox.
            None => Flow::Continue,
        }
    }

    /// Leaves every swarm (telling the partners) and forgets the connection.
    fn cleanup(&mut self) {
        for m in std::mem::take(&mut self.swarms) {
            self.state.leave(&m.swarm, self.id, m.peers());
        }
        self.state.unregister(self.id);
    }
}

fn valid_swarm(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SWARM_ID_LEN && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_and_caps() {
        let mut b = Bucket::full(2.0, 0);
        assert!(b.take(0, 1.0, 2.0));
        assert!(b.take(0, 1.0, 2.0));
        assert!(!b.take(0, 1.0, 2.0));
        assert!(!b.take(500, 1.0, 2.0));
        assert!(b.take(1000, 1.0, 2.0));
        // Long idle: capped at the bucket size.
        assert!(b.take(100_000, 1.0, 2.0));
        assert!(b.take(100_000, 1.0, 2.0));
        assert!(!b.take(100_000, 1.0, 2.0));
    }

    #[test]
    fn swarm_ids_are_checked() {
        assert!(valid_swarm("http://a/b.m3u8|720p"));
        assert!(!valid_swarm(""));
        assert!(!valid_swarm("a\nb"));
        assert!(!valid_swarm(&"x".repeat(MAX_SWARM_ID_LEN + 1)));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use std::future::Future;

    fn future_size<F: Future>(_: impl FnOnce(WebSocket, AppState, ConnGuard) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection pays for this future: keep it from creeping back up (it was 1,152
    /// bytes with `select!` + `Notify` and the socket copied out of the `async fn` arguments).
    #[test]
    fn idle_task_stays_small() {
        let size = future_size(run);
        let socket = std::mem::size_of::<WebSocket>();
        eprintln!("run future: {size} bytes (socket {socket})");
        assert!(size <= socket + 256, "run future grew to {size} bytes");
        assert!(std::mem::size_of::<Session>() <= 128);
    }
}
