//! One native viewer: a tokio task that owns a [`PeerCore`] and a model [`Player`]. It turns the
//! core's outputs into IO (signaling WebSocket, WebRTC data channels, HTTP with Range, manifest
//! fetches) and IO into inputs, with the time. It decides nothing: its only timers are the
//! core's [`PeerCore::poll_timeout`] and the player's own (playhead, playlist refresh).
//!
//! Every input goes through [`Driver::pump`], which also drains the core's outputs before the
//! next input is handled: that order is what a recording ([`crate::record`]) replays.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use peer_core::{Config, ConnId, Event, Input, Output, PeerCore, Stats, Time};
use protocol::PeerId;
use protocol::manifest::{Hash, sha256};
use protocol::signaling::{ErrorCode, ServerMsg};
use reqwest::Url;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::Error;
use crate::hls::{self, Playlist};
use crate::net::{self, Signal, SignalEvent, SignalTls};
use crate::player::{Player, PlayerConfig};
use crate::record::Recording;
use crate::rtc::{self, Conn, RtcOptions};
use crate::token::TokenSource;

/// IO results waiting for the viewer's task (data-channel messages and HTTP bodies included).
/// Producers wait when it is full (nothing is dropped): back-pressure reaches SCTP flow control
/// and TCP.
const IO_QUEUE: usize = 1024;
/// Largest signaling message we parse.
const MAX_SIGNAL: usize = protocol::signaling::MAX_SIGNAL_LEN;
/// Segment hashes kept to check what reaches the player (newest sequence numbers kept).
const MAX_CHECKS: usize = 4096;
/// Retry delay after a failed playlist refresh (the player's behaviour, as hls.js's).
const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// webrtc 0.21 (rtc 0.21.1) drops a message that reaches a negotiated channel before that side
/// has processed its own SCTP "connected" event (`DataChannelHandler.handle_read got error:
/// data channel not existed`, then `there already exists a stream`, webrtc-rs#748): the side
/// whose association came up first would lose its Hello and Haves to the side a few packets
/// behind. The core stays silent this long after our channel opens unless the other side
/// speaks first (a browser peer always does: its stack has no such window). A channel that
/// lost its first messages anyway never says Hello, and the core drops it after its
/// `connect_timeout`.
pub const OPEN_GRACE: Duration = Duration::from_millis(300);

#[derive(Clone)]
pub struct PeerOptions {
    /// Signaling WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`.
    pub signal_url: String,
    /// The other nodes of a signaling cluster: with them, each connection goes to
    /// `[signal_url, more...][core.signal_server() % n]` (the core moves on after a failure).
    pub more_signal_urls: Vec<String>,
    /// Media playlist URL (its integrity sidecar `<name>.integrity.json` must exist).
    pub playlist_url: String,
    /// Rendition name in the swarm id (`""` for a media playlist played directly, as the
    /// browser peer does).
    pub rendition: String,
    /// Core configuration (`swarm`, `manifest_url`, `open_grace` are set here).
    pub core: Config,
    pub player: PlayerConfig,
    /// Corrupt every chunk we upload (tests of the ban logic): `Config::corrupt_uploads`.
    pub tamper: bool,
    /// Origin only: no peer fetching, no serving, no signaling.
    pub http_only: bool,
    pub rtc: RtcOptions,
    /// Record the session to this file (JSON lines, see [`crate::record`]).
    pub record: Option<PathBuf>,
    /// TLS of a `wss://` signaling URL (`None`: the webpki roots only).
    pub tls: Option<SignalTls>,
    /// Join token(s) handed to the core (`Config::token`, then `Input::SetToken`).
    pub token: TokenSource,
}

impl PeerOptions {
    pub fn new(signal_url: impl Into<String>, playlist_url: impl Into<String>) -> Self {
        PeerOptions {
            signal_url: signal_url.into(),
            more_signal_urls: Vec::new(),
            playlist_url: playlist_url.into(),
            rendition: String::new(),
            core: Config::default(),
            player: PlayerConfig::default(),
            tamper: false,
            http_only: false,
            rtc: RtcOptions {
                udp_addrs: vec!["127.0.0.1:0".into()],
                ..Default::default()
            },
            record: None,
            tls: None,
            token: TokenSource::None,
        }
    }
}

/// What one viewer saw.
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    /// Join number in the swarm (set by [`crate::swarm`]; 0 for a lone viewer).
    pub index: usize,
    pub id: Option<PeerId>,
    pub tamper: bool,
    pub stats: Stats,
    pub stalls: u32,
    pub stall_time: Duration,
    pub startup: Option<Duration>,
    pub played: u64,
    /// Segments handed to the player whose bytes do not hash to the origin's manifest (checked
    /// here, on the whole segment, against the manifests this viewer fetched for its core).
    pub corrupt_segments: u64,
    /// Wants the core refused (`WantFailed`); the model player asks again after a refresh.
    pub want_failures: u64,
    /// Segments the player jumped over after falling behind the live window.
    pub skipped: u64,
    /// Peers this viewer banned.
    pub banned: BTreeSet<PeerId>,
    /// Playlist and manifest bytes fetched from the origin.
    pub meta_bytes: u64,
    /// Signaling messages dropped because the WebSocket writer was behind.
    pub signal_dropped: u64,
    /// Times the signaling connection was lost (or the server asked us to reconnect).
    pub signal_reconnects: u32,
    /// Why the viewer stopped early, if it did.
    pub error: Option<String>,
    /// Error messages the signaling server sent (`error`), and how many were `unauthorized`
    /// (a join refused for its token).
    pub signal_errors: u64,
    pub unauthorized: u64,
    /// The first of them (`code: message`).
    pub signal_error: Option<String>,
    /// Why the signaling connection last failed to open (TLS, DNS, refused...).
    pub connect_error: Option<String>,
    /// Why the player's last playlist fetch failed, if it did.
    pub playlist_error: Option<String>,
    /// ICE servers (STUN/TURN) of the last `welcome` in use.
    pub ice_servers: usize,
}

/// What the IO tasks report to the viewer's task.
pub enum Io {
    /// Ready for the core (connections, HTTP).
    Input(Input),
    /// The send buffer of `conn` changed (read it with [`Conn::buffered`]).
    Buffered(ConnId),
    /// Signaling connection number `.0`.
    Signal(u64, SignalEvent),
    /// A manifest fetch ended; `bytes` of it came from the origin.
    Manifest { bytes: u64, input: Input },
    /// A playlist refresh ended (the player's), with its size.
    Playlist(Result<(Playlist, u64), Error>),
}

struct Driver {
    opts: PeerOptions,
    start: Instant,
    core: PeerCore,
    player: Player,
    /// Inputs waiting for the core (from the player, or from performing an output).
    inputs: VecDeque<Input>,
    record: Option<Recording>,
    conns: HashMap<ConnId, Conn>,
    https: HashMap<u64, AbortHandle>,
    signal: Option<Signal>,
    signals: u64,
    /// The last signaling connection closed, still sending its last messages.
    signal_closing: Option<JoinHandle<()>>,
    /// Whole-segment length and hash per sequence number, for `corrupt_segments`.
    checks: BTreeMap<u64, (u64, Hash)>,
    client: reqwest::Client,
    /// Options of new connections (those of `opts.rtc` plus the ICE servers of the welcome).
    rtc: RtcOptions,
    tls: SignalTls,
    io: mpsc::Sender<Io>,
    report: PeerReport,
    playlist_url: Url,
    /// The player's next playlist refresh (`None`: one is out).
    refresh_at: Option<Time>,
}

impl Driver {
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }

    /// Handles every waiting input, performing the core's outputs after each one.
    fn pump(&mut self) {
        loop {
            while let Some(out) = self.core.poll_output() {
                if let Some(r) = &mut self.record {
                    r.output(&out);
                }
                self.perform(out);
            }
            let Some(input) = self.inputs.pop_front() else {
                break;
            };
            let now = self.now();
            if input == Input::Stall {
                let seq = self.player.playhead();
                tracing::warn!(
                    t = now.as_secs_f64(),
                    "stall: {}",
                    self.core.describe_segment(seq)
                );
            }
            if let Some(r) = &mut self.record {
                r.input(now, &input);
            }
            self.core.handle(now, input);
        }
        if let Some(r) = &mut self.record {
            r.write(false);
        }
    }

    fn feed(&mut self, input: Input) {
        self.inputs.push_back(input);
        self.pump();
    }

    /// Runs a player step; what it asks for is fed next.
    fn step_player(&mut self, step: impl FnOnce(&mut Player, Time, &mut Vec<Input>)) {
        let mut out = Vec::new();
        let now = self.now();
        step(&mut self.player, now, &mut out);
        self.inputs.extend(out);
    }

    fn perform(&mut self, out: Output) {
        match out {
            Output::SignalConnect => {
                self.close_signal();
                self.signals += 1;
                if self.opts.token.mints() {
                    // What a page's backend does before its token runs out: the join of this
                    // connection (after its welcome) carries a token that is still valid.
                    let token = self.opts.token.current();
                    self.inputs.push_back(Input::SetToken { token });
                }
                let n = 1 + self.opts.more_signal_urls.len();
                let url = match self.core.signal_server() as usize % n {
                    0 => &self.opts.signal_url,
                    i => &self.opts.more_signal_urls[i - 1],
                };
                let s = Signal::connect(url, self.tls.clone(), self.signals, self.io.clone());
                self.signal = Some(s);
            }
            Output::SignalSend(msg) => {
                if let Some(s) = self.signal.as_ref().filter(|s| s.open)
                    && !s.send(msg.to_json())
                {
                    self.report.signal_dropped += 1;
                }
            }
            Output::SignalClose => self.close_signal(),
            Output::RtcCreate {
                conn,
                peer,
                offerer,
            } => {
                tracing::debug!(conn, peer, offerer, "connect");
                let c = Conn::spawn(&self.rtc, conn, offerer, self.io.clone());
                self.conns.insert(conn, c);
            }
            Output::RtcRemote { conn, data } => {
                if let Some(c) = self.conns.get(&conn)
                    && !c.remote(data)
                {
                    tracing::debug!(conn, "remote queue full: dropped");
                }
            }
            Output::RtcSend { conn, frame } => {
                if let Some(c) = self.conns.get(&conn)
                    && !c.send(frame)
                {
                    // A wedged connection: closed rather than break the frame sequence.
                    tracing::debug!(conn, "write queue full: closing");
                    self.conns.remove(&conn);
                    self.inputs.push_back(Input::RtcClosed { conn });
                }
            }
            Output::RtcClose { conn } => {
                self.conns.remove(&conn);
            }
            Output::HttpStart { id, url, range } => {
                let (client, io) = (self.client.clone(), self.io.clone());
                let task = tokio::spawn(net::http_get(client, id, url, range, io));
                self.https.insert(id, task.abort_handle());
            }
            Output::HttpCancel { id } => {
                if let Some(t) = self.https.remove(&id) {
                    t.abort();
                }
            }
            Output::FetchManifest { url } => {
                let (client, io) = (self.client.clone(), self.io.clone());
                tokio::spawn(net::fetch_manifest(client, url, io));
            }
            Output::SegmentReady { seq, data, .. } => {
                let good = self
                    .checks
                    .get(&seq)
                    .is_some_and(|(len, hash)| data.len() as u64 == *len && sha256(&data) == *hash);
                if !good {
                    self.report.corrupt_segments += 1;
                    tracing::error!(
                        seq,
                        "segment handed to the player does not match the manifest"
                    );
                }
                self.step_player(|p, now, out| p.segment_ready(now, seq, out));
            }
            Output::WantFailed { url } => self.player.want_failed(&url),
            Output::Event(Event::PeerBanned { peer, reason }) => {
                tracing::info!(peer, ?reason, "banned");
                self.report.banned.insert(peer);
            }
            Output::Event(Event::Welcomed {
                peer_id,
                ice_servers,
            }) => {
                self.report.id = Some(peer_id);
                // For the connections made from now on, like the browser driver.
                self.rtc.ice_servers = rtc::ice_servers(&ice_servers);
                self.report.ice_servers = self.rtc.ice_servers.len();
            }
            Output::Event(Event::SignalingError { code, message }) => {
                tracing::debug!(?code, message, "signaling error");
                self.report.signal_errors += 1;
                if code == ErrorCode::Unauthorized {
                    self.report.unauthorized += 1;
                }
                if self.report.signal_error.is_none() {
                    self.report.signal_error = Some(format!("{code:?}: {message}"));
                }
            }
            Output::Event(e) => tracing::trace!(?e, "event"),
        }
    }

    fn close_signal(&mut self) {
        if let Some(s) = self.signal.take() {
            self.signal_closing = Some(s.close());
        }
    }

    fn on_io(&mut self, io: Io) {
        match io {
            Io::Input(input) => {
                let current = match &input {
                    Input::RtcClosed { conn } => self.conns.remove(conn).is_some(),
                    Input::RtcLocal { conn, .. }
                    | Input::RtcRemoteApplied { conn }
                    | Input::RtcOpen { conn }
                    | Input::RtcMessage { conn, .. } => self.conns.contains_key(conn),
                    Input::HttpData { id, .. } => self.https.contains_key(id),
                    Input::HttpDone { id } | Input::HttpFailed { id } => {
                        self.https.remove(id).is_some()
                    }
                    _ => true,
                };
                if current {
                    self.feed(input);
                }
            }
            Io::Buffered(conn) => {
                if let Some(amount) = self.conns.get(&conn).map(Conn::buffered) {
                    self.feed(Input::RtcBuffered { conn, amount });
                }
            }
            Io::Signal(n, ev) => {
                let Some(s) = self.signal.as_mut().filter(|s| s.generation == n) else {
                    return;
                };
                match ev {
                    SignalEvent::Opened => {
                        s.open = true;
                        self.feed(Input::SignalOpened);
                    }
                    SignalEvent::Text(t) => match ServerMsg::from_json(&t, MAX_SIGNAL) {
                        Ok(msg) => self.feed(Input::SignalMessage(msg)),
                        Err(e) => {
                            // The core's contract (`Input::SignalClosed`): a server we cannot
                            // understand is a lost session. Closing it lets the core reconnect
                            // and rejoin from a known state, with its backoff; ignoring the
                            // message could leave it waiting forever (a lost `joined`).
                            tracing::warn!("bad signaling message: {e}");
                            self.close_signal();
                            self.feed(Input::SignalClosed);
                        }
                    },
                    SignalEvent::Closed { error } => {
                        if error.is_some() {
                            self.report.connect_error = error;
                        }
                        self.signal = None;
                        self.feed(Input::SignalClosed);
                    }
                }
            }
            Io::Manifest { bytes, input } => {
                self.report.meta_bytes += bytes;
                if let Input::ManifestLoaded { manifest, .. } = &input {
                    for s in &manifest.segments {
                        self.checks.insert(s.seq, (s.len, s.sha256));
                    }
                    while self.checks.len() > MAX_CHECKS {
                        self.checks.pop_first();
                    }
                }
                self.feed(input);
            }
            Io::Playlist(r) => {
                let now = self.now();
                self.refresh_at = Some(match r {
                    Ok((pl, bytes)) => {
                        self.report.meta_bytes += bytes;
                        self.step_player(|p, now, out| p.on_playlist(now, &pl, out));
                        // hls.js refreshes a live playlist every target duration; a VOD
                        // playlist does not change.
                        if pl.vod {
                            Time(u64::MAX)
                        } else {
                            now + pl.target_duration
                        }
                    }
                    Err(e) => {
                        tracing::warn!("playlist refresh: {e}");
                        self.report.playlist_error = Some(e.to_string());
                        now + REFRESH_RETRY
                    }
                });
            }
        }
    }

    /// Starts the player's playlist refresh when it is due.
    fn refresh(&mut self, now: Time) {
        if self.refresh_at.is_some_and(|t| now >= t) {
            self.refresh_at = None;
            let (client, url, io) = (
                self.client.clone(),
                self.playlist_url.clone(),
                self.io.clone(),
            );
            tokio::spawn(async move {
                let _ = io
                    .send(Io::Playlist(hls::refresh(&client, &url).await))
                    .await;
            });
        }
    }
}

/// Runs one viewer until `stop` turns true, then leaves (the core says goodbye and closes
/// everything). The core reconnects a lost signaling connection by itself; `error` is set only
/// when the viewer cannot start.
pub async fn run_peer(
    opts: PeerOptions,
    client: reqwest::Client,
    mut stop: watch::Receiver<bool>,
) -> PeerReport {
    let mut report = PeerReport {
        tamper: opts.tamper,
        ..Default::default()
    };
    let (playlist_url, manifest_url) = match (
        Url::parse(&opts.playlist_url),
        peer_core::sidecar_url(&opts.playlist_url),
    ) {
        (Ok(u), Some(m)) => (u, m),
        (Err(e), _) => {
            report.error = Some(format!("playlist URL: {e}"));
            return report;
        }
        (_, None) => {
            report.error = Some("playlist URL does not end in .m3u8 (no sidecar)".into());
            return report;
        }
    };
    let tls = match opts.tls.clone() {
        Some(t) => t,
        None => match crate::tls::Roots::default().client_config() {
            Ok(t) => t,
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        },
    };
    let mut cfg = opts.core.clone();
    // A token in `opts.core` stays unless a token source is given.
    if let Some(t) = opts.token.current() {
        cfg.token = Some(t);
    }
    // The same id the browser peer computes from the same playlist URL string.
    cfg.swarm = protocol::signaling::swarm_id(&opts.playlist_url, &opts.rendition);
    cfg.manifest_url = Some(manifest_url);
    cfg.playlist_url = Some(opts.playlist_url.clone());
    cfg.open_grace = OPEN_GRACE;
    cfg.corrupt_uploads = opts.tamper;
    if opts.http_only {
        // Out of the swarm entirely: the core then never connects to signaling.
        cfg.p2p = false;
        cfg.upload = false;
    }
    let record = match &opts.record {
        Some(path) => match Recording::create(path, &cfg) {
            Ok(r) => Some(r),
            Err(e) => {
                report.error = Some(format!("record {}: {e}", path.display()));
                return report;
            }
        },
        None => None,
    };
    let (io, mut io_rx) = mpsc::channel(IO_QUEUE);
    let rtc = opts.rtc.clone();
    let mut d = Driver {
        player: Player::new(opts.player.clone(), Time::ZERO),
        // The clock starts with the core: its first timers count from zero.
        start: Instant::now(),
        core: PeerCore::new(cfg),
        opts,
        inputs: VecDeque::new(),
        record,
        conns: HashMap::new(),
        https: HashMap::new(),
        signal: None,
        signals: 0,
        signal_closing: None,
        checks: BTreeMap::new(),
        client,
        rtc,
        tls,
        io,
        report,
        playlist_url,
        refresh_at: Some(Time::ZERO),
    };
    loop {
        d.pump();
        let now = d.now();
        d.refresh(now);
        let wake = [d.core.poll_timeout(), d.player.next_check(), d.refresh_at]
            .into_iter()
            .flatten()
            .min();
        let sleep_for = wake.map_or(Duration::from_secs(3600), |t| t.since(now));
        tokio::select! {
            _ = stop.changed() => break,
            Some(io) = io_rx.recv() => d.on_io(io),
            _ = tokio::time::sleep(sleep_for) => {
                let now = d.now();
                if d.core.poll_timeout().is_some_and(|t| now >= t) {
                    d.inputs.push_back(Input::Timeout);
                }
                d.step_player(|p, now, out| p.on_timer(now, out));
            }
        }
    }
    // Leave: the core says goodbye to the server and closes every connection and request
    // (the wants it fails on the way out are not the player's failures).
    let want_failures = d.player.want_failures;
    d.feed(Input::Close);
    if let Some(r) = &mut d.record {
        r.write(true);
    }
    let now = d.now();
    if let Some(t) = d.signal_closing.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
    let p = &d.player;
    PeerReport {
        stats: d.core.stats().clone(),
        signal_reconnects: d.core.stats().signal_reconnects,
        stalls: p.stalls,
        stall_time: p.stall_time(now),
        startup: p.startup,
        played: p.played,
        skipped: p.skipped,
        want_failures,
        ..d.report
    }
}
