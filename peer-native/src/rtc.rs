//! WebRTC plumbing (webrtc 0.21): one peer connection with one binary, reliable, ordered data
//! channel per remote peer, non-trickle SDP (we wait for ICE gathering to complete; trickled
//! candidates from the other side are still accepted).
//!
//! The data channel is negotiated out of band (`negotiated: true`, stream id 0) on both sides,
//! exactly like the browser peer's (peer-wasm `new_conn`): neither side announces it in-band
//! (DCEP), so an offerer and an answerer each create it themselves and it opens as soon as SCTP
//! is up. An in-band channel would never meet the browser's: Chromium sends no DCEP `OPEN` for
//! its negotiated channel (so our `on_data_channel` never fired when it offered), and the
//! channel we announced got another stream id, which the page never listens to.
//! webrtc 0.21 drops messages that reach a negotiated channel in the instant before its own
//! side counts SCTP as up; `peer::OPEN_GRACE` is how the driver stays clear of that window.
//!
//! Everything here reports to the peer's task through one bounded event channel; nothing here
//! takes decisions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use protocol::PeerId;
use protocol::signaling::SignalData;
use tokio::sync::{Notify, mpsc};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription,
};

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
/// window (64 KiB by default), so this only overflows when a connection is wedged: the peer is
/// then disconnected (dropping single frames would break the protocol's request accounting).
pub const WRITE_QUEUE: usize = 512;

/// Something that happened to connection `epoch` with `peer`.
pub enum ConnEvent {
    Created {
        peer: PeerId,
        epoch: u64,
        pc: Arc<dyn PeerConnection>,
    },
    LocalSdp {
        peer: PeerId,
        epoch: u64,
        data: SignalData,
    },
    Channel {
        peer: PeerId,
        epoch: u64,
        dc: Arc<dyn DataChannel>,
    },
    Open {
        peer: PeerId,
        epoch: u64,
    },
    Message {
        peer: PeerId,
        epoch: u64,
        data: Bytes,
    },
    /// The send buffer level changed; its value is in the connection's [`SendState`].
    Buffered {
        peer: PeerId,
        epoch: u64,
    },
    Closed {
        peer: PeerId,
        epoch: u64,
        why: String,
    },
}

impl ConnEvent {
    pub fn key(&self) -> (PeerId, u64) {
        match self {
            ConnEvent::Created { peer, epoch, .. }
            | ConnEvent::LocalSdp { peer, epoch, .. }
            | ConnEvent::Channel { peer, epoch, .. }
            | ConnEvent::Open { peer, epoch }
            | ConnEvent::Message { peer, epoch, .. }
            | ConnEvent::Buffered { peer, epoch }
            | ConnEvent::Closed { peer, epoch, .. } => (*peer, *epoch),
        }
    }
}

/// Send-side accounting shared between the peer task and a writer task.
#[derive(Default)]
pub struct SendState {
    /// Bytes handed to the writer and not yet given to the data channel.
    pub queued: AtomicUsize,
    /// Latest `queued + SCTP outstanding` the writer saw (what `bufferedAmount` means).
    pub level: AtomicUsize,
    /// A `Buffered` event is on its way (coalesces wake-ups: the latest level wins).
    pub notified: AtomicBool,
}

#[derive(Clone)]
pub struct RtcOptions {
    /// Local UDP addresses to bind (`127.0.0.1:0` for loopback; `0.0.0.0:0` = every non-loopback
    /// interface).
    pub udp_addrs: Vec<String>,
}

struct Handler {
    peer: PeerId,
    epoch: u64,
    tx: mpsc::Sender<ConnEvent>,
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
            let tx = self.tx.clone();
            let (peer, epoch) = (self.peer, self.epoch);
            tokio::spawn(async move {
                let _ = tx
                    .send(ConnEvent::Closed {
                        peer,
                        epoch,
                        why: format!("connection {state}"),
                    })
                    .await;
            });
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        // Only the negotiated channel carries the protocol; a channel the other side announced
        // in-band is not ours to read. Closed (spawned: never await inside a handler).
        tracing::debug!(peer = self.peer, "closing an in-band data channel");
        tokio::spawn(async move {
            let _ = dc.close().await;
        });
    }
}

/// Creates the negotiated channel on `pc` and starts forwarding its events (both the offerer
/// and the answerer do this; see the module comment).
async fn open_channel(
    pc: &Arc<dyn PeerConnection>,
    peer: PeerId,
    epoch: u64,
    tx: &mpsc::Sender<ConnEvent>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let init = RTCDataChannelInit {
        ordered: true,
        negotiated: Some(CHANNEL_ID),
        ..Default::default()
    };
    let dc = pc
        .create_data_channel(CHANNEL_LABEL, Some(init))
        .await
        .map_err(|e| format!("data channel: {e}"))?;
    tx.send(ConnEvent::Channel {
        peer,
        epoch,
        dc: dc.clone(),
    })
    .await
    .map_err(|_| "peer task gone")?;
    Ok(tokio::spawn(read_channel(dc, peer, epoch, tx.clone())))
}

async fn build(
    opts: &RtcOptions,
    peer: PeerId,
    epoch: u64,
    tx: &mpsc::Sender<ConnEvent>,
) -> Result<(Arc<dyn PeerConnection>, Arc<Notify>), String> {
    let gathered = Arc::new(Notify::new());
    let handler = Arc::new(Handler {
        peer,
        epoch,
        tx: tx.clone(),
        gathered: gathered.clone(),
    });
    let pc = PeerConnectionBuilder::new()
        .with_handler(handler)
        .with_udp_addrs(opts.udp_addrs.clone())
        .build()
        .await
        .map_err(|e| format!("build: {e}"))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    tx.send(ConnEvent::Created {
        peer,
        epoch,
        pc: pc.clone(),
    })
    .await
    .map_err(|_| "peer task gone".to_string())?;
    Ok((pc, gathered))
}

async fn local_sdp(pc: &Arc<dyn PeerConnection>, gathered: &Notify) -> Result<String, String> {
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.notified()).await;
    Ok(pc
        .local_description()
        .await
        .ok_or("no local description")?
        .sdp)
}

/// We connect to `peer`: make the offer (sent as a `LocalSdp` event once gathered).
pub async fn offer(opts: RtcOptions, peer: PeerId, epoch: u64, tx: mpsc::Sender<ConnEvent>) {
    let r: Result<(), String> = async {
        let (pc, gathered) = build(&opts, peer, epoch, &tx).await?;
        // Before the offer, so that it carries the SCTP (application) section.
        let reader = open_channel(&pc, peer, epoch, &tx).await?;
        let o = pc
            .create_offer(None)
            .await
            .map_err(|e| format!("offer: {e}"))?;
        pc.set_local_description(o)
            .await
            .map_err(|e| format!("local description: {e}"))?;
        let sdp = local_sdp(&pc, &gathered).await?;
        if tx
            .send(ConnEvent::LocalSdp {
                peer,
                epoch,
                data: SignalData::Offer { sdp },
            })
            .await
            .is_err()
        {
            reader.abort();
        }
        Ok(())
    }
    .await;
    if let Err(why) = r {
        let _ = tx.send(ConnEvent::Closed { peer, epoch, why }).await;
    }
}

/// `peer` offered: answer (sent as a `LocalSdp` event once gathered).
pub async fn answer(
    opts: RtcOptions,
    peer: PeerId,
    epoch: u64,
    sdp: String,
    tx: mpsc::Sender<ConnEvent>,
) {
    let r: Result<(), String> = async {
        let (pc, gathered) = build(&opts, peer, epoch, &tx).await?;
        let desc = RTCSessionDescription::offer(sdp).map_err(|e| format!("offer SDP: {e}"))?;
        pc.set_remote_description(desc)
            .await
            .map_err(|e| format!("remote description: {e}"))?;
        let reader = open_channel(&pc, peer, epoch, &tx).await?;
        let a = pc
            .create_answer(None)
            .await
            .map_err(|e| format!("answer: {e}"))?;
        pc.set_local_description(a)
            .await
            .map_err(|e| format!("local description: {e}"))?;
        let sdp = local_sdp(&pc, &gathered).await?;
        if tx
            .send(ConnEvent::LocalSdp {
                peer,
                epoch,
                data: SignalData::Answer { sdp },
            })
            .await
            .is_err()
        {
            reader.abort();
        }
        Ok(())
    }
    .await;
    if let Err(why) = r {
        let _ = tx.send(ConnEvent::Closed { peer, epoch, why }).await;
    }
}

/// Forwards a data channel's events. Messages are never dropped: when the peer task is behind,
/// this waits, which stops polling the channel and lets SCTP flow control push back on the
/// sender.
async fn read_channel(
    dc: Arc<dyn DataChannel>,
    peer: PeerId,
    epoch: u64,
    tx: mpsc::Sender<ConnEvent>,
) {
    while let Some(ev) = dc.poll().await {
        let out = match ev {
            DataChannelEvent::OnOpen => ConnEvent::Open { peer, epoch },
            DataChannelEvent::OnMessage(m) if !m.is_string => ConnEvent::Message {
                peer,
                epoch,
                data: m.data.freeze(),
            },
            DataChannelEvent::OnClose => break,
            // Text messages are not part of the protocol; buffer events are polled by the writer.
            _ => continue,
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
    let _ = tx
        .send(ConnEvent::Closed {
            peer,
            epoch,
            why: "data channel closed".into(),
        })
        .await;
}

/// Sends queued frames in order and keeps `state.level` (queued + SCTP outstanding bytes)
/// current, waking the peer task whenever it changes.
pub async fn write_channel(
    dc: Arc<dyn DataChannel>,
    mut rx: mpsc::Receiver<Bytes>,
    state: Arc<SendState>,
    peer: PeerId,
    epoch: u64,
    tx: mpsc::Sender<ConnEvent>,
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
                let _ = tx
                    .send(ConnEvent::Closed {
                        peer,
                        epoch,
                        why: format!("send: {e}"),
                    })
                    .await;
                return;
            }
        }
        let outstanding = dc.outstanding_bytes().await.unwrap_or(0);
        let level = state.queued.load(Ordering::Acquire) + outstanding;
        state.level.store(level, Ordering::Release);
        if level != reported && !state.notified.swap(true, Ordering::AcqRel) {
            if tx.try_send(ConnEvent::Buffered { peer, epoch }).is_ok() {
                reported = level;
            } else {
                // The peer task is busy: try again on the next poll.
                state.notified.store(false, Ordering::Release);
            }
        } else if level != reported {
            // A wake-up is already pending; it will read the latest level.
            reported = level;
        }
    }
}
