//! The WebSocket test client shared by the end-to-end tests (real sockets on port 0).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::PeerId;
use protocol::signaling::{ClientMsg, ErrorCode, ServerMsg, SignalData};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(3);

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub id: PeerId,
}

pub async fn connect_raw(addr: SocketAddr) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let ws = connect_raw(addr).await;
        let mut c = Client { ws, id: 0 };
        match c.recv().await {
            ServerMsg::Welcome {
                peer_id,
                heartbeat_ms,
                ..
            } => {
                assert!(peer_id < (1 << 53));
                assert!(heartbeat_ms > 0);
                c.id = peer_id;
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        self.send_text(msg.to_json()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// Next server message (fails on timeout or close).
    pub async fn recv(&mut self) -> ServerMsg {
        self.try_recv(WAIT)
            .await
            .unwrap_or_else(|e| panic!("client {}: {e}", self.id))
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Result<ServerMsg, String> {
        loop {
            let m = tokio::time::timeout(wait, self.ws.next())
                .await
                .map_err(|_| "timeout".to_owned())?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    return ServerMsg::from_json(t.as_str(), 1 << 20).map_err(|e| e.to_string());
                }
                Some(Ok(Message::Close(f))) => return Err(format!("closed {f:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("error {e}")),
                None => return Err("closed".to_owned()),
            }
        }
    }

    /// Skips `slot` notices (they arrive whenever membership changes).
    pub async fn recv_skip_slots(&mut self) -> ServerMsg {
        loop {
            match self.recv().await {
                ServerMsg::Slot { .. } => continue,
                m => return m,
            }
        }
    }

    /// Asserts that nothing but slot notices arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        loop {
            match self.try_recv(wait).await {
                Ok(ServerMsg::Slot { .. }) => continue,
                Ok(m) => panic!("client {} expected silence, got {m:?}", self.id),
                Err(e) => {
                    assert_eq!(e, "timeout");
                    return;
                }
            }
        }
    }

    pub async fn join(&mut self, swarm: &str) -> Vec<PeerId> {
        self.send(&ClientMsg::Join {
            swarm: swarm.into(),
            token: None,
        })
        .await;
        match self.recv_skip_slots().await {
            ServerMsg::Joined {
                swarm: s,
                peers,
                slots,
                ..
            } => {
                assert_eq!(s, swarm);
                assert!(slots >= 1);
                peers
            }
            other => panic!("expected joined, got {other:?}"),
        }
    }

    pub async fn expect_error(&mut self, code: ErrorCode) {
        match self.recv_skip_slots().await {
            ServerMsg::Error { code: c, .. } if c == code => {}
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    pub async fn ping_pong(&mut self) {
        self.send(&ClientMsg::Ping).await;
        match self.recv_skip_slots().await {
            ServerMsg::Pong => {}
            other => panic!("expected pong, got {other:?}"),
        }
    }

    /// Waits until the server closes the connection.
    pub async fn expect_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await {
                Ok(_) => continue,
                Err(e) if e == "timeout" => panic!("client {} was not closed", self.id),
                Err(_) => return,
            }
        }
    }
}

pub fn offer(sdp: &str) -> SignalData {
    SignalData::Offer { sdp: sdp.into() }
}
