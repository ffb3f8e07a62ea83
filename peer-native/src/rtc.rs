//! WebRTC plumbing (webrtc 0.21) for [`Output::RtcCreate`](peer_core::Output::RtcCreate) and
//! friends: one peer connection with one binary, reliable, ordered data channel per
//! [`ConnId`], non-trickle SDP (we wait for ICE gathering to complete before reporting our offer
//! or answer; trickled candidates from the other side are still added).
//!
//! The data channel is negotiated out of band (`negotiated: true`, stream id 0) on both sides,
//! exactly like the browser peer's (peer-wasm `new_conn`): neither side announces it in-band
//! (DCEP), so an offerer and an answerer each create it themselves and it opens as soon as SCTP
//! is up. An in-band channel would never meet the browser's: Chromium sends no DCEP `OPEN` for
//! its negotiated channel (so our `on_data_channel` never fired when it offered), and the
//! channel we announced got another stream id, which the page never listens to.
//! webrtc 0.21 drops messages that reach a negotiated channel in the instant before its own
//! side counts SCTP as up; the core's `Config::open_grace` (set by [`crate::peer`]) is how we
//! stay clear of that window.
//!
//! Each connection is a task that applies the core's remote descriptions and candidates in
//! order; a reader and a writer task serve its channel. Everything is reported to the viewer's
//! task as [`Io`]; nothing here takes decisions. Dropping a [`Conn`] closes the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use peer_core::{ConnId, Input};
use protocol::signaling::{IceServer, SignalData};
use tokio::sync::{Notify, mpsc};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionState, RTCSessionDescription,
};

use crate::peer::Io;

/// Label of our data channel (informative: a negotiated channel's label is never sent; the same
/// as the browser peer's).
pub const CHANNEL_LABEL: &str = "p2p-cdn";
/// SCTP stream id of the one negotiated data channel (the browser peer uses 0 too).
pub const CHANNEL_ID: u16 = 0;
/// Longest we wait for ICE gathering before sending what we have (host candidates come in
/// milliseconds; only unreachable STUN servers take long).
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a writer re-reads the SCTP outstanding byte count while it is not zero, so the core
/// learns promptly that its send window opened again.
const BUFFERED_POLL: Duration = Duration::from_millis(5);
/// Frames queued towards one writer task. The core bounds what it sends to a peer by its send
/// window, so this only overflows when a connection is wedged: it is then reported closed
/// (dropping single frames would break the protocol's request accounting).
pub const WRITE_QUEUE: usize = 512;
/// Remote descriptions and candidates queued towards one connection task (the core holds at
/// most `remotes::MAX_PENDING_CANDIDATES` candidates per connection, plus the description).
const REMOTE_QUEUE: usize = peer_core::remotes::MAX_PENDING_CANDIDATES + 16;

/// URLs kept per ICE server (a hostile server could list thousands; a browser uses a few).
const MAX_ICE_URLS: usize = 8;

#[derive(Clone, Default)]
pub struct RtcOptions {
    /// Local UDP addresses to bind (`127.0.0.1:0` for loopback; `0.0.0.0:0` = every non-loopback
    /// interface).
    pub udp_addrs: Vec<String>,
    /// STUN/TURN servers of new connections: those the signaling server's `welcome` carried
    /// (set by [`crate::peer`] on `Event::Welcomed`, see [`ice_servers`]).
    pub ice_servers: Vec<RTCIceServer>,
    /// Relay candidates only (`iceTransportPolicy: "relay"`, as the browser page's `relay=1`):
    /// every connection goes through TURN.
    pub relay: bool,
}

/// The signaling server's ICE servers as webrtc's configuration. Entries webrtc would refuse
/// (a malformed URL, TURN without credentials) are left out with a warning: one bad entry must
/// not fail every connection.
pub fn ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .filter_map(|s| {
            let r = RTCIceServer {
                urls: s.urls.iter().take(MAX_ICE_URLS).cloned().collect(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            };
            match r.urls() {
                Ok(_) => Some(r),
                Err(e) => {
                    tracing::warn!(urls = ?r.urls, "ICE server left out: {e}");
                    None
                }
            }
        })
        .collect()
}

/// Send-side accounting shared between the viewer's task and a writer task.
#[derive(Default)]
struct SendState {
    /// Bytes handed to the writer and not yet given to the data channel.
    queued: AtomicUsize,
    /// Latest `queued + SCTP outstanding` the writer saw (what `bufferedAmount` means).
    level: AtomicUsize,
    /// An [`Io::Buffered`] is on its way (coalesces wake-ups: the latest level wins).
    notified: AtomicBool,
}

/// One connection as the viewer's task holds it.
pub struct Conn {
    remote: mpsc::Sender<SignalData>,
    frames: mpsc::Sender<Bytes>,
    state: Arc<SendState>,
}

impl Conn {
    /// Starts connection `conn` ([`Output::RtcCreate`](peer_core::Output::RtcCreate)): the
    /// offerer reports its offer as [`Input::RtcLocal`] once gathered.
    pub fn spawn(opts: &RtcOptions, conn: ConnId, offerer: bool, io: mpsc::Sender<Io>) -> Conn {
        let (remote, remote_rx) = mpsc::channel(REMOTE_QUEUE);
        let (frames, frames_rx) = mpsc::channel(WRITE_QUEUE);
        let state = Arc::new(SendState::default());
        let channel = (frames_rx, state.clone());
        tokio::spawn(run(opts.clone(), conn, offerer, remote_rx, channel, io));
        Conn {
            remote,
            frames,
            state,
        }
    }

    /// Queues a remote offer, answer or candidate. `false`: the queue is full.
    pub fn remote(&self, data: SignalData) -> bool {
        self.remote.try_send(data).is_ok()
    }

    /// Queues a frame for the channel. `false`: the connection is wedged (queue full) or gone.
    pub fn send(&self, frame: Bytes) -> bool {
        let len = frame.len();
        self.state.queued.fetch_add(len, Ordering::AcqRel);
        let ok = self.frames.try_send(frame).is_ok();
        if !ok {
            self.state.queued.fetch_sub(len, Ordering::AcqRel);
        }
        ok
    }

    /// The channel's `bufferedAmount` now (on [`Io::Buffered`]).
    pub fn buffered(&self) -> usize {
        self.state.notified.store(false, Ordering::Release);
        self.state.level.load(Ordering::Acquire)
    }
}

struct Handler {
    conn: ConnId,
    io: mpsc::Sender<Io>,
    gathered: Arc<Notify>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            // Never await inside a handler: it runs on the connection's driver.
            let (io, conn) = (self.io.clone(), self.conn);
            tokio::spawn(closed(io, conn, format!("connection {state}")));
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        // Only the negotiated channel carries the protocol; a channel the other side announced
        // in-band is not ours to read. Closed (spawned: never await inside a handler).
        tracing::debug!(conn = self.conn, "closing an in-band data channel");
        tokio::spawn(async move {
            let _ = dc.close().await;
        });
    }
}

async fn closed(io: mpsc::Sender<Io>, conn: ConnId, why: String) {
    tracing::debug!(conn, why, "connection closed");
    let _ = io.send(Io::Input(Input::RtcClosed { conn })).await;
}

async fn emit(io: &mpsc::Sender<Io>, input: Input) -> Result<(), String> {
    io.send(Io::Input(input))
        .await
        .map_err(|_| "viewer gone".to_string())
}

type Channel = (mpsc::Receiver<Bytes>, Arc<SendState>);

/// The connection's task: build, negotiate, then apply remote data until the [`Conn`] is
/// dropped (or a step fails: reported as [`Input::RtcClosed`]); closes the peer connection.
async fn run(
    opts: RtcOptions,
    conn: ConnId,
    offerer: bool,
    mut remote: mpsc::Receiver<SignalData>,
    channel: Channel,
    io: mpsc::Sender<Io>,
) {
    let gathered = Arc::new(Notify::new());
    let handler = Arc::new(Handler {
        conn,
        io: io.clone(),
        gathered: gathered.clone(),
    });
    let mut config = RTCConfigurationBuilder::new().with_ice_servers(opts.ice_servers);
    if opts.relay {
        config = config.with_ice_transport_policy(RTCIceTransportPolicy::Relay);
    }
    let pc = match PeerConnectionBuilder::new()
        .with_configuration(config.build())
        .with_handler(handler)
        .with_udp_addrs(opts.udp_addrs)
        .build()
        .await
    {
        Ok(pc) => Arc::new(pc) as Arc<dyn PeerConnection>,
        Err(e) => return closed(io, conn, format!("build: {e}")).await,
    };
    let mut channel = Some(channel);
    let r = negotiate(
        &pc,
        conn,
        offerer,
        &mut remote,
        &mut channel,
        &gathered,
        &io,
    )
    .await;
    if let Err(why) = r {
        closed(io, conn, why).await;
    }
    let _ = pc.close().await;
}

async fn negotiate(
    pc: &Arc<dyn PeerConnection>,
    conn: ConnId,
    offerer: bool,
    remote: &mut mpsc::Receiver<SignalData>,
    channel: &mut Option<Channel>,
    gathered: &Notify,
    io: &mpsc::Sender<Io>,
) -> Result<(), String> {
    if offerer {
        // Before the offer, so that it carries the SCTP (application) section.
        if let Some(ch) = channel.take() {
            open_channel(pc, conn, ch, io).await?;
        }
        describe(pc, conn, false, gathered, io).await?;
    }
    while let Some(data) = remote.recv().await {
        match data {
            SignalData::Offer { sdp } => {
                let desc = RTCSessionDescription::offer(sdp).map_err(|e| format!("offer: {e}"))?;
                pc.set_remote_description(desc)
                    .await
                    .map_err(|e| format!("remote offer: {e}"))?;
                emit(io, Input::RtcRemoteApplied { conn }).await?;
                // The answerer's channel is made once the offer is applied (as before the port).
                if let Some(ch) = channel.take() {
                    open_channel(pc, conn, ch, io).await?;
                }
                describe(pc, conn, true, gathered, io).await?;
            }
            SignalData::Answer { sdp } => {
                let desc =
                    RTCSessionDescription::answer(sdp).map_err(|e| format!("answer: {e}"))?;
                pc.set_remote_description(desc)
                    .await
                    .map_err(|e| format!("remote answer: {e}"))?;
                emit(io, Input::RtcRemoteApplied { conn }).await?;
            }
            SignalData::Candidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid,
                    sdp_mline_index: sdp_m_line_index,
                    ..Default::default()
                };
                if let Err(e) = pc.add_ice_candidate(init).await {
                    tracing::debug!(conn, "candidate: {e}");
                }
            }
        }
    }
    Ok(())
}

/// Creates the negotiated channel on `pc` and starts its reader and writer (both the offerer
/// and the answerer do this; see the module comment).
async fn open_channel(
    pc: &Arc<dyn PeerConnection>,
    conn: ConnId,
    (frames, state): Channel,
    io: &mpsc::Sender<Io>,
) -> Result<(), String> {
    let init = RTCDataChannelInit {
        ordered: true,
        negotiated: Some(CHANNEL_ID),
        ..Default::default()
    };
    let dc = pc
        .create_data_channel(CHANNEL_LABEL, Some(init))
        .await
        .map_err(|e| format!("data channel: {e}"))?;
    tokio::spawn(read_channel(dc.clone(), conn, io.clone()));
    tokio::spawn(write_channel(dc, frames, state, conn, io.clone()));
    Ok(())
}

/// Creates our offer (or answer), sets it as the local description and reports it once ICE
/// gathering is complete (non-trickle).
async fn describe(
    pc: &Arc<dyn PeerConnection>,
    conn: ConnId,
    answer: bool,
    gathered: &Notify,
    io: &mpsc::Sender<Io>,
) -> Result<(), String> {
    let d = if answer {
        pc.create_answer(None).await
    } else {
        pc.create_offer(None).await
    }
    .map_err(|e| format!("local description: {e}"))?;
    pc.set_local_description(d)
        .await
        .map_err(|e| format!("local description: {e}"))?;
    let sdp = local_sdp(pc, gathered).await?;
    let data = if answer {
        SignalData::Answer { sdp }
    } else {
        SignalData::Offer { sdp }
    };
    emit(io, Input::RtcLocal { conn, data }).await
}

async fn local_sdp(pc: &Arc<dyn PeerConnection>, gathered: &Notify) -> Result<String, String> {
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.notified()).await;
    Ok(pc
        .local_description()
        .await
        .ok_or("no local description")?
        .sdp)
}

/// Forwards a data channel's events. Messages are never dropped: when the viewer's task is
/// behind, this waits, which stops polling the channel and lets SCTP flow control push back on
/// the sender.
async fn read_channel(dc: Arc<dyn DataChannel>, conn: ConnId, io: mpsc::Sender<Io>) {
    while let Some(ev) = dc.poll().await {
        let input = match ev {
            DataChannelEvent::OnOpen => Input::RtcOpen { conn },
            DataChannelEvent::OnMessage(m) => Input::RtcMessage {
                conn,
                // A text message is not part of the protocol: the core takes empty bytes as
                // the malformed input it is.
                data: if m.is_string {
                    Bytes::new()
                } else {
                    m.data.freeze()
                },
            },
            DataChannelEvent::OnClose => break,
            // Buffer events are polled by the writer.
            _ => continue,
        };
        if io.send(Io::Input(input)).await.is_err() {
            return;
        }
    }
    closed(io, conn, "data channel closed".into()).await;
}

/// Sends queued frames in order and keeps `state.level` (queued + SCTP outstanding bytes)
/// current, waking the viewer's task whenever it changes.
async fn write_channel(
    dc: Arc<dyn DataChannel>,
    mut rx: mpsc::Receiver<Bytes>,
    state: Arc<SendState>,
    conn: ConnId,
    io: mpsc::Sender<Io>,
) {
    let mut reported = 0usize;
    loop {
        let level = state.level.load(Ordering::Acquire);
        let polling = level > 0 || reported != level;
        let frame = if polling {
            tokio::select! {
                f = rx.recv() => match f { Some(f) => Some(f), None => break },
                _ = tokio::time::sleep(BUFFERED_POLL) => None,
            }
        } else {
            match rx.recv().await {
                Some(f) => Some(f),
                None => break,
            }
        };
        if let Some(f) = frame {
            let len = f.len();
            let r = dc.send(BytesMut::from(&f[..])).await;
            state.queued.fetch_sub(len, Ordering::AcqRel);
            if let Err(e) = r {
                return closed(io, conn, format!("send: {e}")).await;
            }
        }
        let outstanding = dc.outstanding_bytes().await.unwrap_or(0);
        let level = state.queued.load(Ordering::Acquire) + outstanding;
        state.level.store(level, Ordering::Release);
        if level != reported && !state.notified.swap(true, Ordering::AcqRel) {
            if io.try_send(Io::Buffered(conn)).is_ok() {
                reported = level;
            } else {
                // The viewer's task is busy: try again on the next poll.
                state.notified.store(false, Ordering::Release);
            }
        } else if level != reported {
            // A wake-up is already pending; it will read the latest level.
            reported = level;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(urls: &[&str], user: Option<&str>) -> IceServer {
        IceServer {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            username: user.map(String::from),
            credential: user.map(|_| "secret".to_string()),
        }
    }

    #[test]
    fn welcome_ice_servers_keep_the_usable_ones() {
        let got = ice_servers(&[
            server(&["stun:127.0.0.1:3478"], None),
            // TURN without credentials: webrtc would refuse the whole configuration.
            server(&["turn:127.0.0.1:3478?transport=udp"], None),
            server(
                &["turn:127.0.0.1:3478?transport=udp"],
                Some("1700000000:42"),
            ),
            server(&["not a url"], None),
            server(&["stun:a:1"; 20], None),
        ]);
        let urls: Vec<_> = got.iter().map(|s| s.urls.len()).collect();
        assert_eq!(urls, vec![1, 1, MAX_ICE_URLS]);
        assert_eq!(got[1].username, "1700000000:42");
        assert_eq!(got[1].credential, "secret");
    }
}
