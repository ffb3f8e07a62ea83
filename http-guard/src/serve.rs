//! An HTTP/1.1 accept loop for an axum [`Router`] with the timeouts `axum::serve` lacks (it
//! sets no timer, so a socket that never finishes its request head is kept forever).
//!
//! * **Header timeout**: a request head must be complete within `header` of the moment the
//!   server starts waiting for it: from accept, and from the end of the previous response on a
//!   keep-alive connection (hyper times that wait as a header read). So an idle keep-alive
//!   connection is also closed after `header`.
//! * **Idle timeout**: a connection on which no byte moves either way for `idle` is closed
//!   (a request body trickled in, or a response the client stopped reading).
//! * **Admission at accept**: a callback sees every new connection before a byte is read and
//!   says serve or close. What it returns for a served connection is put into each request's
//!   extensions, with `ConnectInfo<SocketAddr>` (a handler can then answer with a refusal the
//!   client can read: a WebSocket upgrade cannot be refused by closing the socket).
//!
//! Upgraded connections (WebSockets) leave this loop once upgraded: their own protocol times
//! them (the signaling server's heartbeat and first-message timeouts).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest wait for a complete request head (also the keep-alive idle limit).
    pub header: Duration,
    /// Longest time without a byte moving either way.
    pub idle: Duration,
}

/// What to do with a connection just accepted.
#[derive(Debug, Clone)]
pub enum Admission<E> {
    /// Serve it; `E` goes into every request's extensions.
    Serve(E),
    /// Close it without reading anything.
    Close,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets requests in
/// flight finish (idle keep-alive connections are closed) and returns. `admit` is called for
/// every accepted connection, with its peer address.
pub async fn serve<E, A, F>(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
    mut admit: A,
    shutdown: F,
) -> io::Result<()>
where
    E: Clone + Send + Sync + 'static,
    A: FnMut(SocketAddr) -> Admission<E>,
    F: Future<Output = ()> + Send,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a receiver: `closed()` resolves when all are gone.
    let (done_tx, done_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionRefused
                    ) {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let ext = match admit(addr) {
            Admission::Serve(e) => e,
            Admission::Close => {
                tracing::debug!(%addr, "connection refused at accept");
                continue;
            }
        };
        // No Nagle: small latency-sensitive messages (Nagle + delayed ACK adds tens of ms).
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            addr,
            app.clone(),
            ext,
            timeouts,
            stop_rx.clone(),
            done_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

async fn connection<E>(
    tcp: TcpStream,
    addr: SocketAddr,
    app: Router,
    ext: E,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) where
    E: Clone + Send + Sync + 'static,
{
    let activity = Arc::new(AtomicU64::new(now_ms()));
    let io = TokioIo::new(Tracked {
        inner: tcp,
        last: activity.clone(),
    });
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        req.extensions_mut().insert(ext.clone());
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let conn = builder.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    let idle_ms = timeouts.idle.as_millis() as u64;
    let mut stopping = false;
    loop {
        let due = base() + Duration::from_millis(activity.load(Relaxed).saturating_add(idle_ms));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%addr, "connection ended: {e}");
                }
                return;
            }
            r = stop.changed(), if !stopping => {
                stopping = true;
                let _ = r;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {
                if now_ms().saturating_sub(activity.load(Relaxed)) >= idle_ms {
                    tracing::debug!(%addr, "closing a connection idle for {idle_ms} ms");
                    return;
                }
            }
        }
    }
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    base().elapsed().as_millis() as u64
}

/// A socket that notes when a byte last moved.
struct Tracked {
    inner: TcpStream,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        self.last.store(now_ms(), Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
