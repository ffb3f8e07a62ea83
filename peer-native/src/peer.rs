//! One native viewer: a tokio task that owns a [`PeerCore`] and a model [`Player`], performs the
//! core's outputs (signaling over WebSocket, WebRTC data channels, HTTP with Range) and feeds
//! their results back with the time. No decisions are taken here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use peer_core::{Config, Event, Output, PeerCore, Stats, Time};
use protocol::signaling::{ClientMsg, ServerMsg, SignalData};
use protocol::{Frame, PeerId, SegmentManifest};
use reqwest::Url;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

use crate::Error;
use crate::hls::{self, Refresh};
use crate::player::{Player, PlayerConfig};
use crate::rtc::{self, ConnEvent, RtcOptions, SendState};

/// Connection events waiting for the peer task (data-channel messages included). Producers
/// await when it is full (no drop): back-pressure reaches SCTP flow control.
const EVENT_QUEUE: usize = 1024;
/// HTTP body pieces waiting for the peer task; producers await (no drop), which back-pressures
/// the TCP connection.
const HTTP_QUEUE: usize = 256;
/// Signaling messages waiting for the WebSocket writer. When full (the server stopped reading)
/// new messages are dropped and counted; the core's timeouts recover from lost handshakes.
const SIGNAL_QUEUE: usize = 256;
/// Largest signaling message we parse.
const MAX_SIGNAL: usize = protocol::signaling::MAX_SIGNAL_LEN;
/// Trickled candidates kept for a connection whose peer connection is still being built.
const MAX_PENDING_CANDIDATES: usize = 64;
/// Manifests kept to check what reaches the player (newest kept).
const MAX_MANIFESTS: usize = 4096;
/// Signaling reconnection backoff (doubles per failure, reset by a `welcome`).
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Retry delay after a failed playlist refresh.
const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// After our data channel opens, how long we stay silent unless the other side speaks first.
///
/// Why: the channel is negotiated out of band (see `rtc`), and webrtc 0.21 (rtc 0.21.1) drops a
/// message that reaches a negotiated channel before that side has processed its own SCTP
/// "connected" event (`DataChannelHandler.handle_read got error: data channel not existed`,
/// then `there already exists a stream`): the side whose association came up first could
/// otherwise lose its Hello and Haves to the side that is a few packets behind. A message from
/// the other side proves its channel is ready, so it ends the wait at once (a browser peer
/// always speaks first: its stack has no such window).
const OPEN_GRACE: Duration = Duration::from_millis(300);
/// An open channel on which the other side sent nothing (not even its Hello, which every peer
/// sends as soon as its channel opens) for this long lost its first messages to that race
/// (possible when this process was too busy to read for longer than [`OPEN_GRACE`]): it is
/// closed, so that the core stops counting on a neighbour that will never say Hello.
const SILENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PeerOptions {
    /// Signaling WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`.
    pub signal_url: String,
    /// Media playlist URL.
    pub playlist_url: String,
    /// Rendition name in the swarm id (`""` for a media playlist played directly, as the
    /// browser peer does).
    pub rendition: String,
    /// Core configuration (`swarm` is set from the playlist URL).
    pub core: Config,
    pub player: PlayerConfig,
    /// Corrupt every chunk we upload (tests of the ban logic).
    pub tamper: bool,
    /// Origin only: no peer fetching, no serving.
    pub http_only: bool,
    pub rtc: RtcOptions,
}

impl PeerOptions {
    pub fn new(signal_url: impl Into<String>, playlist_url: impl Into<String>) -> Self {
        PeerOptions {
            signal_url: signal_url.into(),
            playlist_url: playlist_url.into(),
            rendition: String::new(),
            core: Config::default(),
            player: PlayerConfig::default(),
            tamper: false,
            http_only: false,
            rtc: RtcOptions {
                udp_addrs: vec!["127.0.0.1:0".into()],
            },
        }
    }
}

/// What one viewer saw.
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    pub id: Option<PeerId>,
    pub tamper: bool,
    pub stats: Stats,
    pub stalls: u32,
    pub stall_time: Duration,
    pub startup: Option<Duration>,
    pub played: u64,
    /// Segments handed to the player that do not match the origin's manifest.
    pub corrupt_segments: u64,
    /// Peers this viewer banned.
    pub banned: BTreeSet<PeerId>,
    /// Playlist and sidecar bytes fetched from the origin.
    pub meta_bytes: u64,
    /// Signaling messages dropped because the WebSocket writer was behind.
    pub signal_dropped: u64,
    /// Times the signaling connection was lost (or the server asked us to reconnect).
    pub signal_reconnects: u32,
    /// Why the viewer stopped early, if it did.
    pub error: Option<String>,
}

enum HttpEvent {
    Data { id: u64, data: Bytes },
    Done { id: u64 },
    Failed { id: u64 },
}

struct Conn {
    epoch: u64,
    outgoing: bool,
    pc: Option<Arc<dyn PeerConnection>>,
    writer: Option<(mpsc::Sender<Bytes>, Arc<SendState>)>,
    pending: Vec<RTCIceCandidateInit>,
    setup: Option<AbortHandle>,
    /// When our side of the channel opened (see [`OPEN_GRACE`]).
    opened: Option<Time>,
    /// The core was told the channel is open.
    released: bool,
    /// The other side sent at least one message.
    heard: bool,
}

impl Conn {
    fn new(epoch: u64, outgoing: bool, setup: AbortHandle) -> Conn {
        Conn {
            epoch,
            outgoing,
            pc: None,
            writer: None,
            pending: Vec::new(),
            setup: Some(setup),
            opened: None,
            released: false,
            heard: false,
        }
    }

    /// When this connection needs [`Driver::on_conn_timers`]: the end of the open grace, or
    /// the silence deadline.
    fn deadline(&self) -> Option<Time> {
        let opened = self.opened?;
        if !self.released {
            Some(opened + OPEN_GRACE)
        } else if !self.heard {
            Some(opened + SILENT_TIMEOUT)
        } else {
            None
        }
    }
}

impl Conn {
    fn close(self) {
        if let Some(t) = self.setup {
            t.abort();
        }
        if let Some(pc) = self.pc {
            tokio::spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

struct Driver {
    opts: PeerOptions,
    start: Instant,
    core: PeerCore,
    player: Player,
    swarm: String,
    me: Option<PeerId>,
    conns: HashMap<PeerId, Conn>,
    next_epoch: u64,
    https: HashMap<u64, AbortHandle>,
    manifests: BTreeMap<u64, SegmentManifest>,
    client: reqwest::Client,
    /// Queue of the signaling writer; `None` while disconnected (or HTTP-only).
    sig_tx: Option<mpsc::Sender<String>>,
    ev_tx: mpsc::Sender<ConnEvent>,
    http_tx: mpsc::Sender<HttpEvent>,
    report: PeerReport,
    ping_every: Option<Duration>,
    ping_at: Time,
}

impl Driver {
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }

    fn signal(&mut self, msg: &ClientMsg) {
        let Some(tx) = &self.sig_tx else { return };
        if tx.try_send(msg.to_json()).is_err() {
            self.report.signal_dropped += 1;
        }
    }

    fn close_conn(&mut self, peer: PeerId) {
        if let Some(c) = self.conns.remove(&peer) {
            c.close();
        }
    }

    /// Performs every pending output of the core.
    fn perform(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Signal(msg) => self.signal(&msg),
                Output::Connect { peer } => {
                    if self.conns.contains_key(&peer) {
                        continue;
                    }
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    let task = tokio::spawn(rtc::offer(
                        self.opts.rtc.clone(),
                        peer,
                        epoch,
                        self.ev_tx.clone(),
                    ));
                    self.conns
                        .insert(peer, Conn::new(epoch, true, task.abort_handle()));
                }
                Output::Disconnect { peer, reason } => {
                    tracing::debug!(peer, ?reason, "disconnect");
                    self.close_conn(peer);
                }
                Output::Send { peer, frame } => {
                    let frame = if self.opts.tamper {
                        tamper(frame)
                    } else {
                        frame
                    };
                    let Some(c) = self.conns.get(&peer) else {
                        continue;
                    };
                    let Some((tx, st)) = &c.writer else { continue };
                    let len = frame.len();
                    st.queued.fetch_add(len, Ordering::AcqRel);
                    if tx.try_send(frame).is_err() {
                        st.queued.fetch_sub(len, Ordering::AcqRel);
                        // A wedged connection: drop it rather than break the frame sequence.
                        tracing::debug!(peer, "write queue full: closing");
                        self.close_conn(peer);
                        let now = self.now();
                        self.core.handle_channel_closed(now, peer);
                    }
                }
                Output::HttpStart { id, url, range, .. } => {
                    let task = tokio::spawn(http_get(
                        self.client.clone(),
                        id,
                        url,
                        range,
                        self.http_tx.clone(),
                    ));
                    self.https.insert(id, task.abort_handle());
                }
                Output::HttpCancel { id } => {
                    if let Some(t) = self.https.remove(&id) {
                        t.abort();
                    }
                }
                Output::SegmentReady { seq, data, .. } => {
                    if !self
                        .manifests
                        .get(&seq)
                        .is_some_and(|m| m.verify_segment(&data))
                    {
                        self.report.corrupt_segments += 1;
                        tracing::error!(
                            seq,
                            "segment handed to the player does not match the manifest"
                        );
                    }
                    let now = self.now();
                    self.player.segment_ready(now, &mut self.core, seq);
                }
                Output::Event(Event::PeerBanned { peer, reason }) => {
                    tracing::info!(peer, ?reason, "banned");
                    self.report.banned.insert(peer);
                }
                Output::Event(e) => tracing::trace!(?e, "event"),
            }
        }
    }

    fn on_server(&mut self, msg: ServerMsg) {
        let now = self.now();
        match msg {
            ServerMsg::Welcome {
                peer_id,
                heartbeat_ms,
            } => {
                self.me = Some(peer_id);
                self.report.id = Some(peer_id);
                // Ping at half the heartbeat so one lost ping does not get us dropped.
                let every = Duration::from_millis(u64::from(heartbeat_ms.max(1000)) / 2);
                self.ping_every = Some(every);
                self.ping_at = now + every;
                self.core.handle_signal(
                    now,
                    ServerMsg::Welcome {
                        peer_id,
                        heartbeat_ms,
                    },
                );
            }
            ServerMsg::Signal { swarm, from, data } if swarm == self.swarm => {
                self.on_remote_signal(from, data)
            }
            ServerMsg::Signal { .. } | ServerMsg::Pong => {}
            other => self.core.handle_signal(now, other),
        }
    }

    fn on_remote_signal(&mut self, from: PeerId, data: SignalData) {
        let now = self.now();
        match data {
            SignalData::Offer { sdp } => {
                if self.opts.http_only {
                    return;
                }
                if let Some(c) = self.conns.get(&from) {
                    // Glare (both offered): the lower peer id's offer wins.
                    if c.outgoing && self.me.is_some_and(|me| me < from) {
                        return;
                    }
                    self.close_conn(from);
                }
                if !self.core.accept_incoming(now, from) {
                    return;
                }
                let epoch = self.next_epoch;
                self.next_epoch += 1;
                let task = tokio::spawn(rtc::answer(
                    self.opts.rtc.clone(),
                    from,
                    epoch,
                    sdp,
                    self.ev_tx.clone(),
                ));
                self.conns
                    .insert(from, Conn::new(epoch, false, task.abort_handle()));
            }
            SignalData::Answer { sdp } => {
                let Some(c) = self.conns.get(&from) else {
                    return;
                };
                let (Some(pc), true) = (c.pc.clone(), c.outgoing) else {
                    return;
                };
                let (tx, epoch) = (self.ev_tx.clone(), c.epoch);
                tokio::spawn(async move {
                    let r = match RTCSessionDescription::answer(sdp) {
                        Ok(d) => pc
                            .set_remote_description(d)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(why) = r {
                        let _ = tx
                            .send(ConnEvent::Closed {
                                peer: from,
                                epoch,
                                why: format!("answer: {why}"),
                            })
                            .await;
                    }
                });
            }
            SignalData::Candidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let Some(c) = self.conns.get_mut(&from) else {
                    return;
                };
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid,
                    sdp_mline_index: sdp_m_line_index,
                    ..Default::default()
                };
                match &c.pc {
                    Some(pc) => add_candidate(pc.clone(), init),
                    None if c.pending.len() < MAX_PENDING_CANDIDATES => c.pending.push(init),
                    None => {}
                }
            }
        }
    }

    fn on_conn(&mut self, ev: ConnEvent) {
        let now = self.now();
        let (peer, epoch) = ev.key();
        if self.conns.get(&peer).map(|c| c.epoch) != Some(epoch) {
            // A stale connection (replaced or dropped): release what it still holds.
            match ev {
                ConnEvent::Created { pc, .. } => {
                    tokio::spawn(async move {
                        let _ = pc.close().await;
                    });
                }
                ConnEvent::Channel { dc, .. } => {
                    tokio::spawn(async move {
                        let _ = dc.close().await;
                    });
                }
                _ => {}
            }
            return;
        }
        match ev {
            ConnEvent::Created { pc, .. } => {
                if let Some(c) = self.conns.get_mut(&peer) {
                    for init in c.pending.drain(..) {
                        add_candidate(pc.clone(), init);
                    }
                    c.pc = Some(pc);
                }
            }
            ConnEvent::LocalSdp { data, .. } => {
                let msg = ClientMsg::Signal {
                    swarm: self.swarm.clone(),
                    to: peer,
                    data,
                };
                self.signal(&msg);
            }
            ConnEvent::Channel { dc, .. } => {
                let (tx, rx) = mpsc::channel(rtc::WRITE_QUEUE);
                let st = Arc::new(SendState::default());
                tokio::spawn(rtc::write_channel(
                    dc,
                    rx,
                    st.clone(),
                    peer,
                    epoch,
                    self.ev_tx.clone(),
                ));
                if let Some(c) = self.conns.get_mut(&peer) {
                    c.writer = Some((tx, st));
                }
            }
            ConnEvent::Open { .. } => {
                // The core hears about it after the grace or the first message, whichever
                // comes first (see OPEN_GRACE).
                if let Some(c) = self.conns.get_mut(&peer) {
                    c.opened.get_or_insert(now);
                }
            }
            ConnEvent::Message { data, .. } => {
                let release = match self.conns.get_mut(&peer) {
                    Some(c) => {
                        c.heard = true;
                        c.opened.get_or_insert(now);
                        !std::mem::replace(&mut c.released, true)
                    }
                    None => false,
                };
                if release {
                    self.core.handle_channel_open(now, peer);
                }
                self.core.handle_frame(now, peer, data);
            }
            ConnEvent::Buffered { .. } => {
                let level = self
                    .conns
                    .get(&peer)
                    .and_then(|c| c.writer.as_ref())
                    .map(|(_, st)| {
                        st.notified.store(false, Ordering::Release);
                        st.level.load(Ordering::Acquire)
                    });
                if let Some(level) = level {
                    self.core.handle_buffered(now, peer, level);
                }
            }
            ConnEvent::Closed { why, .. } => {
                tracing::debug!(peer, why, "connection closed");
                self.close_conn(peer);
                self.core.handle_channel_closed(now, peer);
            }
        }
    }

    /// Earliest [`Conn::deadline`].
    fn conn_deadline(&self) -> Option<Time> {
        self.conns.values().filter_map(Conn::deadline).min()
    }

    /// Ends open graces that expired (the core may now send) and closes channels that stayed
    /// silent (see [`SILENT_TIMEOUT`]).
    fn on_conn_timers(&mut self, now: Time) {
        let mut release = Vec::new();
        let mut silent = Vec::new();
        for (peer, c) in &mut self.conns {
            let Some(opened) = c.opened else { continue };
            if !c.released && now >= opened + OPEN_GRACE {
                c.released = true;
                release.push(*peer);
            } else if c.released && !c.heard && now >= opened + SILENT_TIMEOUT {
                silent.push(*peer);
            }
        }
        for peer in release {
            self.core.handle_channel_open(now, peer);
        }
        for peer in silent {
            tracing::debug!(peer, "nothing received on an open channel: closing");
            self.close_conn(peer);
            self.core.handle_channel_closed(now, peer);
        }
    }

    fn on_http(&mut self, ev: HttpEvent) {
        let now = self.now();
        match ev {
            HttpEvent::Data { id, data } => {
                if self.https.contains_key(&id) {
                    self.core.handle_http_data(now, id, &data);
                }
            }
            HttpEvent::Done { id } => {
                if self.https.remove(&id).is_some() {
                    self.core.handle_http_done(now, id);
                }
            }
            HttpEvent::Failed { id } => {
                if self.https.remove(&id).is_some() {
                    self.core.handle_http_failed(now, id);
                }
            }
        }
    }

    /// Returns when to refresh next.
    fn on_refresh(&mut self, r: Result<Refresh, Error>) -> Time {
        let now = self.now();
        match r {
            Ok(r) => {
                self.report.meta_bytes += r.bytes;
                for (m, url) in r.segments {
                    self.manifests.insert(m.seq, m.clone());
                    self.core.add_segment(now, m, url);
                }
                while self.manifests.len() > MAX_MANIFESTS {
                    self.manifests.pop_first();
                }
                let pl = &r.playlist;
                if let Some(last) = pl.last_seq() {
                    self.player.on_playlist(
                        now,
                        &mut self.core,
                        pl.first_seq,
                        last,
                        pl.vod,
                        pl.target_duration,
                    );
                }
                if pl.vod {
                    // A VOD playlist does not change.
                    Time(u64::MAX)
                } else {
                    // hls.js refreshes a live playlist every target duration.
                    now + pl.target_duration
                }
            }
            Err(e) => {
                tracing::warn!("playlist refresh: {e}");
                now + REFRESH_RETRY
            }
        }
    }
}

fn add_candidate(pc: Arc<dyn PeerConnection>, init: RTCIceCandidateInit) {
    tokio::spawn(async move {
        if let Err(e) = pc.add_ice_candidate(init).await {
            tracing::debug!("candidate: {e}");
        }
    });
}

/// A tampered peer flips one byte of every chunk it uploads (after the core produced it).
pub fn tamper(frame: Bytes) -> Bytes {
    match Frame::decode_bytes(frame.clone()) {
        Ok(Frame::Chunk {
            req_id,
            seq,
            index,
            data,
        }) if !data.is_empty() => {
            let mut d = data.to_vec();
            d[0] ^= 0xff;
            Frame::Chunk {
                req_id,
                seq,
                index,
                data: Bytes::from(d),
            }
            .encode()
        }
        _ => frame,
    }
}

async fn http_get(
    client: reqwest::Client,
    id: u64,
    url: String,
    range: Option<(u64, u64)>,
    tx: mpsc::Sender<HttpEvent>,
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
            match piece {
                Ok(data) => {
                    if tx.send(HttpEvent::Data { id, data }).await.is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }
    .await;
    let _ = tx
        .send(if ok {
            HttpEvent::Done { id }
        } else {
            HttpEvent::Failed { id }
        })
        .await;
}

/// Runs one viewer until `stop` turns true. A lost signaling connection (or a `reconnect`
/// from the server) is re-established with backoff while peers and HTTP carry on; only a
/// failure to connect at start ends the viewer early (`error` says why).
pub async fn run_peer(
    opts: PeerOptions,
    client: reqwest::Client,
    mut stop: watch::Receiver<bool>,
) -> PeerReport {
    let start = Instant::now();
    let mut report = PeerReport {
        tamper: opts.tamper,
        ..Default::default()
    };
    let playlist_url = match Url::parse(&opts.playlist_url) {
        Ok(u) => u,
        Err(e) => {
            report.error = Some(format!("playlist URL: {e}"));
            return report;
        }
    };
    // An HTTP-only viewer stays out of the swarm entirely: joining would give it a seeding slot
    // it never serves.
    let mut link = None;
    if !opts.http_only {
        match connect_signaling(&opts.signal_url).await {
            Ok(l) => link = Some(l),
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        }
    }
    let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (http_tx, mut http_rx) = mpsc::channel(HTTP_QUEUE);
    let (pl_tx, mut pl_rx) = mpsc::channel::<Result<Refresh, Error>>(1);
    let (link_tx, mut link_rx) = mpsc::channel::<Result<Link, String>>(1);

    // The same id the browser peer computes from the same playlist URL string.
    let swarm = protocol::signaling::swarm_id(&opts.playlist_url, &opts.rendition);
    let mut cfg = opts.core.clone();
    cfg.swarm = swarm.clone();
    if opts.http_only {
        cfg.p2p = false;
        cfg.upload = false;
    }
    let (mut ws_rx, sig_tx, mut writer) = match link {
        Some((r, tx, w)) => (Some(r), Some(tx), Some(w)),
        None => (None, None, None),
    };
    let mut d = Driver {
        player: Player::new(opts.player.clone(), Time::ZERO),
        core: PeerCore::new(cfg),
        opts,
        start,
        swarm,
        me: None,
        conns: HashMap::new(),
        next_epoch: 1,
        https: HashMap::new(),
        manifests: BTreeMap::new(),
        client,
        sig_tx,
        ev_tx,
        http_tx,
        report,
        ping_every: None,
        ping_at: Time(u64::MAX),
    };
    let mut refresh_at = Time::ZERO;
    let mut refreshing = false;
    // Signaling reconnection: when, whether an attempt is running, and the next backoff.
    let mut reconnect_at: Option<Time> = None;
    let mut connecting = false;
    let mut backoff = RECONNECT_MIN;
    loop {
        d.perform();
        let now = d.now();
        if !refreshing && now >= refresh_at {
            refreshing = true;
            let (client, url, tx) = (d.client.clone(), playlist_url.clone(), pl_tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(hls::refresh(&client, &url).await).await;
            });
        }
        if now >= d.ping_at {
            d.signal(&ClientMsg::Ping);
            d.ping_at = d.ping_every.map_or(Time(u64::MAX), |e| now + e);
        }
        if let Some(t) = reconnect_at
            && now >= t
            && !connecting
        {
            connecting = true;
            reconnect_at = None;
            let (url, tx) = (d.opts.signal_url.clone(), link_tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(connect_signaling(&url).await).await;
            });
        }
        let mut wake = d.ping_at;
        for t in [
            d.core.poll_timeout(),
            d.player.next_check(),
            (!refreshing).then_some(refresh_at),
            reconnect_at,
            d.conn_deadline(),
        ]
        .into_iter()
        .flatten()
        {
            wake = wake.min(t);
        }
        let sleep_for =
            Duration::from_micros(wake.0.saturating_sub(now.0)).min(Duration::from_secs(3600));
        let step = tokio::select! {
            _ = stop.changed() => Step::Stop,
            m = async {
                match ws_rx.as_mut() {
                    Some(r) => r.next().await,
                    None => std::future::pending().await,
                }
            } => Step::Ws(m),
            Some(l) = link_rx.recv() => Step::Link(l),
            Some(ev) = ev_rx.recv() => Step::Conn(ev),
            Some(h) = http_rx.recv() => Step::Http(h),
            Some(r) = pl_rx.recv() => Step::Refresh(r),
            _ = tokio::time::sleep(sleep_for) => Step::Timer,
        };
        let mut lost: Option<Duration> = None;
        match step {
            Step::Stop => break,
            Step::Ws(Some(Ok(Message::Text(t)))) => {
                match ServerMsg::from_json(t.as_str(), MAX_SIGNAL) {
                    Ok(ServerMsg::Reconnect { after_ms }) => {
                        d.core
                            .handle_signal(d.now(), ServerMsg::Reconnect { after_ms });
                        lost = Some(Duration::from_millis(u64::from(after_ms)));
                    }
                    Ok(msg) => {
                        if matches!(msg, ServerMsg::Welcome { .. }) {
                            backoff = RECONNECT_MIN;
                        }
                        d.on_server(msg);
                    }
                    Err(e) => tracing::warn!("bad signaling message: {e}"),
                }
            }
            Step::Ws(Some(Ok(_))) => {}
            Step::Ws(None | Some(Err(_))) => {
                lost = Some(backoff);
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
            Step::Link(r) => {
                connecting = false;
                match r {
                    Ok((r, tx, w)) => {
                        ws_rx = Some(r);
                        d.sig_tx = Some(tx);
                        writer = Some(w);
                    }
                    Err(e) => {
                        tracing::debug!("signaling reconnect: {e}");
                        reconnect_at = Some(d.now() + backoff);
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                    }
                }
            }
            Step::Conn(ev) => d.on_conn(ev),
            Step::Http(h) => d.on_http(h),
            Step::Refresh(r) => {
                refreshing = false;
                refresh_at = d.on_refresh(r);
            }
            Step::Timer => {
                let now = d.now();
                d.on_conn_timers(now);
                d.core.handle_timeout(now);
                d.player.on_timer(now, &mut d.core);
            }
        }
        if let Some(after) = lost {
            // Peers keep their channels; the core rejoins on the next `welcome`.
            d.report.signal_reconnects += 1;
            ws_rx = None;
            d.sig_tx = None;
            d.ping_at = Time(u64::MAX);
            reconnect_at = Some(d.now() + after);
        }
    }
    // Leave cleanly: tell the server, close every connection, stop transfers.
    let leave = ClientMsg::Leave {
        swarm: d.swarm.clone(),
    };
    d.signal(&leave);
    for (_, c) in d.conns.drain() {
        c.close();
    }
    for (_, t) in d.https.drain() {
        t.abort();
    }
    let now = d.now();
    let mut report = d.report;
    report.stats = d.core.stats().clone();
    report.stalls = d.player.stalls;
    report.stall_time = d.player.stall_time(now);
    report.startup = d.player.startup;
    report.played = d.player.played;
    drop(d.sig_tx);
    if let Some(w) = writer {
        let _ = tokio::time::timeout(Duration::from_secs(1), w).await;
    }
    report
}

enum Step {
    Stop,
    Ws(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Link(Result<Link, String>),
    Conn(ConnEvent),
    Http(HttpEvent),
    Refresh(Result<Refresh, Error>),
    Timer,
}

type WsRead = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;
/// A signaling connection: its read half, the writer's queue and the writer task.
type Link = (WsRead, mpsc::Sender<String>, tokio::task::JoinHandle<()>);

async fn connect_signaling(url: &str) -> Result<Link, String> {
    let ws = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return Err(format!("signaling: {e}")),
        Err(_) => return Err("signaling: connect timeout".into()),
    };
    let (mut ws_tx, ws_rx) = ws.split();
    let (sig_tx, mut sig_rx) = mpsc::channel::<String>(SIGNAL_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = sig_rx.recv().await {
            if ws_tx.send(Message::Text(m.into())).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    });
    Ok((ws_rx, sig_tx, writer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tamper_flips_chunk_payloads_only() {
        let chunk = Frame::Chunk {
            req_id: 1,
            seq: 2,
            index: 3,
            data: Bytes::from_static(b"abc"),
        }
        .encode();
        match Frame::decode_bytes(tamper(chunk)) {
            Ok(Frame::Chunk { data, .. }) => assert_eq!(&data[..], &[b'a' ^ 0xff, b'b', b'c']),
            other => panic!("not a chunk: {other:?}"),
        }
        let other = Frame::Hello {
            swarm: "s".into(),
            max_inflight: 4,
        }
        .encode();
        assert_eq!(tamper(other.clone()), other);
    }
}
