//! The signaling WebSocket (tokio-tungstenite) and origin requests (reqwest) of one viewer: tasks
//! that report to the viewer's task as [`Io`]. Nothing here takes decisions: no timeouts, no
//! retries (the core has them).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use peer_core::Input;
use protocol::Manifest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;

use crate::hls;
use crate::peer::Io;

/// Signaling messages waiting for the WebSocket writer. When full (the server stopped reading)
/// new messages are dropped and counted; the core's timeouts recover from lost handshakes.
const SIGNAL_QUEUE: usize = 256;

/// What happened to signaling connection number `gen` (see [`Io::Signal`]).
#[derive(Debug)]
pub enum SignalEvent {
    Opened,
    Text(String),
    /// Closed by the server, failed, or never opened (`error`: why it could not open, e.g. an
    /// untrusted certificate).
    Closed {
        error: Option<String>,
    },
}

/// TLS of `wss://` signaling URLs (see [`crate::tls::Roots::client_config`]).
pub type SignalTls = Arc<rustls::ClientConfig>;

/// One signaling connection ([`peer_core::Output::SignalConnect`]).
pub struct Signal {
    /// Its number: events of an older connection are ignored.
    pub generation: u64,
    pub open: bool,
    tx: mpsc::Sender<String>,
    task: JoinHandle<()>,
}

impl Signal {
    pub fn connect(url: &str, tls: SignalTls, generation: u64, io: mpsc::Sender<Io>) -> Signal {
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
        let task = tokio::spawn(run_signal(url.to_string(), tls, generation, rx, io));
        Signal {
            generation,
            open: false,
            tx,
            task,
        }
    }

    /// Queues a text message; `false` when the queue is full.
    pub fn send(&self, text: String) -> bool {
        self.tx.try_send(text).is_ok()
    }

    /// Closes the connection, sending what is queued first when it is open; reports nothing.
    /// The returned task ends once the close went out.
    pub fn close(self) -> JoinHandle<()> {
        if !self.open {
            self.task.abort();
        }
        self.task
    }
}

async fn run_signal(
    url: String,
    tls: SignalTls,
    generation: u64,
    mut rx: mpsc::Receiver<String>,
    io: mpsc::Sender<Io>,
) {
    let report = |ev| Io::Signal(generation, ev);
    // The connector is used for `wss://` only (a `ws://` URL stays plain).
    let connector = Some(Connector::Rustls(tls));
    let ws = match tokio_tungstenite::connect_async_tls_with_config(&url, None, false, connector)
        .await
    {
        Ok((ws, _)) => ws,
        Err(e) => {
            tracing::debug!("signaling {url}: {e}");
            let error = Some(format!("signaling {url}: {e}"));
            let _ = io.send(report(SignalEvent::Closed { error })).await;
            return;
        }
    };
    if io.send(report(SignalEvent::Opened)).await.is_err() {
        return;
    }
    let (mut w, mut r) = ws.split();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(text) => {
                    if w.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                // Closed by the viewer (everything it queued was sent): no report.
                None => {
                    let _ = w.close().await;
                    return;
                }
            },
            m = r.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if io.send(report(SignalEvent::Text(t.to_string()))).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = io.send(report(SignalEvent::Closed { error: None })).await;
}

/// [`peer_core::Output::HttpStart`]: GET `url` (a byte range `start..end` when given) and
/// report its body as [`Input::HttpData`] pieces, then [`Input::HttpDone`] or
/// [`Input::HttpFailed`]. Waits when the viewer's queue is full (back-pressure on the TCP
/// connection).
pub async fn http_get(
    client: reqwest::Client,
    id: u64,
    url: String,
    range: Option<(u64, u64)>,
    io: mpsc::Sender<Io>,
) {
    let ok = async {
        let mut req = client.get(&url);
        if let Some((s, e)) = range {
            if e <= s {
                return true;
            }
            req = req.header(reqwest::header::RANGE, format!("bytes={s}-{}", e - 1));
        }
        let Ok(resp) = req.send().await else {
            return false;
        };
        let st = resp.status();
        let good = if range.is_some() {
            st == reqwest::StatusCode::PARTIAL_CONTENT
        } else {
            st.is_success()
        };
        if !good {
            return false;
        }
        let mut body = resp.bytes_stream();
        while let Some(piece) = body.next().await {
            let Ok(data) = piece else { return false };
            if io
                .send(Io::Input(Input::HttpData { id, data }))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }
    .await;
    let end = if ok {
        Input::HttpDone { id }
    } else {
        Input::HttpFailed { id }
    };
    let _ = io.send(Io::Input(end)).await;
}

/// [`peer_core::Output::FetchManifest`]: GET and decode the integrity manifest, reported as
/// [`Input::ManifestLoaded`] or [`Input::ManifestFailed`] with the bytes it took.
pub async fn fetch_manifest(client: reqwest::Client, url: String, io: mpsc::Sender<Io>) {
    let (bytes, input) = match hls::get_text(&client, &url).await {
        Ok(text) => match Manifest::from_json(&text) {
            Ok(manifest) => (text.len() as u64, Input::ManifestLoaded { url, manifest }),
            Err(e) => {
                tracing::warn!("manifest {url}: {e}");
                (text.len() as u64, Input::ManifestFailed { url })
            }
        },
        Err(e) => {
            tracing::debug!("manifest: {e}");
            (0, Input::ManifestFailed { url })
        }
    };
    let _ = io.send(Io::Manifest { bytes, input }).await;
}
