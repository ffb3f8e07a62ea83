//! Browser driver around [`peer_core::PeerCore`]: it owns the IO and nothing else.
//!
//! * WebSocket to the signaling server (reconnects with jittered exponential backoff, pings).
//! * One `RTCPeerConnection` per peer with one negotiated binary data channel (id 0), SDP/ICE
//!   relayed through `signal` messages; the first offer from a peer asks
//!   [`PeerCore::accept_incoming`].
//! * `fetch` with `Range` + `AbortController` for [`Output::HttpStart`], the body streamed
//!   through a `ReadableStream` reader into `handle_http_data`.
//! * One `setTimeout` re-armed at [`PeerCore::poll_timeout`] after every input.
//! * The integrity manifest `<dir>/<name>.integrity.json` of each loaded playlist.
//!
//! Time is microseconds since the peer was created (`performance.now()`).
//!
//! Re-entrancy: all state sits in one `Rc<RefCell<Inner>>`. User callbacks and promise
//! resolutions are queued while it is borrowed and called after the borrow ends, so a listener
//! may call back into the peer. Browser callbacks (events, timers, fetch) always arrive from the
//! event loop, never while the state is borrowed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use bytes::Bytes;
use js_sys::{Function, Promise, Reflect, Uint8Array};
use peer_core::{BanReason, Config, Event, Output, PeerCore, Time};
use protocol::PeerId;
use protocol::signaling::{ClientMsg, ServerMsg, SignalData, swarm_id};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{
    AbortController, Headers, MessageEvent, ReadableStreamDefaultReader, RequestInit, Response,
    RtcConfiguration, RtcDataChannel, RtcDataChannelInit, RtcDataChannelState, RtcDataChannelType,
    RtcIceCandidateInit, RtcPeerConnection, RtcPeerConnectionIceEvent, RtcPeerConnectionState,
    RtcSdpType, RtcSessionDescriptionInit, Url, WebSocket,
};

/// Hard cap on peer connections whatever the options say: each one costs a DTLS/SCTP stack in
/// the browser.
const MAX_CONNS: usize = 32;
/// ICE candidates held while the remote description is not set yet (a peer sends a handful).
const MAX_PENDING_CANDIDATES: usize = 64;
/// Segments with pending `fetchSegment` promises; older ones are rejected (the player falls
/// back to its own loader).
const MAX_WAITING_SEGMENTS: usize = 64;
/// Absolute segment URL → seq entries kept for `fetchSegment` without `sn`.
const MAX_URLS: usize = 4096;
/// `bufferedamountlow` fires under this, and the core hears about the drained buffer.
const BUFFERED_LOW: u32 = 16 * 1024;
/// Reconnect backoff bounds (ms).
const BACKOFF_MIN_MS: f64 = 500.0;
const BACKOFF_MAX_MS: f64 = 30_000.0;
/// Period of the housekeeping tick (pings, `stats` event).
const TICK_MS: i32 = 1000;

mod json;
mod map;

use map::IdMap;

type Shared = Rc<RefCell<Inner>>;
type Cb = Closure<dyn FnMut(JsValue)>;

#[derive(Clone)]
struct Opts {
    signal: Option<String>,
    swarm: Option<String>,
    ice_servers: JsValue,
    upload_cap: Option<u64>,
    p2p: bool,
    max_peers: Option<usize>,
    tamper: bool,
}

impl Opts {
    fn parse(v: &JsValue) -> Opts {
        let get = |k: &str| Reflect::get(v, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
        let consent = get("consent").as_bool().unwrap_or(true);
        Opts {
            signal: get("signal").as_string().filter(|s| !s.is_empty()),
            swarm: get("swarm").as_string().filter(|s| !s.is_empty()),
            ice_servers: get("iceServers"),
            upload_cap: get("uploadCap")
                .as_f64()
                .filter(|x| *x > 0.0)
                .map(|x| x as u64),
            // Without consent nothing touches the network besides the origin.
            p2p: consent && get("p2p").as_bool().unwrap_or(true),
            max_peers: get("maxPeers")
                .as_f64()
                .map(|x| (x.max(1.0) as usize).min(MAX_CONNS)),
            tamper: get("__tamper").as_bool().unwrap_or(false),
        }
    }
}

/// One peer connection and the closures its event handlers point to (dropped with it).
struct Conn {
    epoch: u64,
    pc: RtcPeerConnection,
    dc: RtcDataChannel,
    offerer: bool,
    remote_set: bool,
    pending: Vec<RtcIceCandidateInit>,
    _cbs: Vec<Cb>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Detach handlers first: a closure called after it is dropped throws.
        self.dc.set_onopen(None);
        self.dc.set_onclose(None);
        self.dc.set_onmessage(None);
        self.dc.set_onbufferedamountlow(None);
        self.pc.set_onicecandidate(None);
        self.pc.set_onconnectionstatechange(None);
        self.dc.close();
        self.pc.close();
    }
}

struct Ws {
    ws: WebSocket,
    _cbs: Vec<Cb>,
}

impl Drop for Ws {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

struct Waiter {
    resolve: Function,
    reject: Function,
}

struct Parked {
    seq: Option<u64>,
    url: String,
    deadline_ms: f64,
    w: Waiter,
}

struct Inner {
    me: Weak<RefCell<Inner>>,
    opts: Opts,
    t0: f64,
    core: Option<PeerCore>,
    ws: Option<Ws>,
    ws_failures: u32,
    heartbeat_ms: f64,
    last_ping: f64,
    conns: IdMap<Conn>,
    epoch: u64,
    http: IdMap<AbortController>,
    /// Pending `fetchSegment` promises by segment.
    waiters: IdMap<Vec<Waiter>>,
    /// `fetchSegment` calls for segments whose manifest is still loading.
    parked: Vec<Parked>,
    manifests_loading: Vec<String>,
    /// Absolute segment URL → seq, oldest first.
    urls: VecDeque<(String, u64)>,
    listeners: Vec<(String, Function)>,
    /// Calls to make once the state is no longer borrowed.
    deferred: Vec<(Function, JsValue)>,
    timer: Option<i32>,
    timer_cb: Option<Closure<dyn FnMut()>>,
    tick: Option<i32>,
    tick_cb: Option<Closure<dyn FnMut()>>,
    reconnect: Option<i32>,
    reconnect_cb: Option<Closure<dyn FnMut()>>,
    banned: Vec<PeerId>,
    /// Last media playlist loaded.
    playlist: Option<String>,
    destroyed: bool,
}

fn window() -> Option<web_sys::Window> {
    web_sys::window()
}

fn perf_now() -> f64 {
    window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

/// A number for JavaScript (exact below 2^53).
fn num(n: u64) -> JsValue {
    JsValue::from_f64(n as f64)
}

fn set_all(o: &JsValue, fields: &[(&str, JsValue)]) {
    for (k, v) in fields {
        let _ = Reflect::set(o, &JsValue::from_str(k), v);
    }
}

/// A plain object with `fields` in this order.
fn obj(fields: &[(&str, JsValue)]) -> JsValue {
    let o: JsValue = js_sys::Object::new().into();
    set_all(&o, fields);
    o
}

fn js_err(msg: &str) -> JsValue {
    js_sys::Error::new(msg).into()
}

/// Runs `f` on the state, performs the core's outputs, then makes the queued JS calls.
fn with(rc: &Shared, f: impl FnOnce(&mut Inner)) {
    let mut f = Some(f);
    with_dyn(rc, &mut |i| {
        if let Some(f) = f.take() {
            f(i);
        }
    });
}

/// The body of [`with`], once in the bundle instead of once per caller's closure.
#[inline(never)]
fn with_dyn(rc: &Shared, f: &mut dyn FnMut(&mut Inner)) {
    let deferred = {
        let Ok(mut g) = rc.try_borrow_mut() else {
            return;
        };
        if g.destroyed {
            return;
        }
        f(&mut g);
        g.drain();
        std::mem::take(&mut g.deferred)
    };
    for (func, arg) in deferred {
        let _ = func.call1(&JsValue::NULL, &arg);
    }
}

fn with_weak(w: &Weak<RefCell<Inner>>, f: impl FnOnce(&mut Inner)) {
    if let Some(rc) = w.upgrade() {
        with(&rc, f);
    }
}

impl Inner {
    fn now(&self) -> Time {
        Time::from_secs_f64((perf_now() - self.t0).max(0.0) / 1000.0)
    }

    /// Queues `arg()` for the listeners of `name` (built only when there is one).
    fn emit(&mut self, name: &str, arg: impl FnOnce() -> JsValue) {
        if self.listeners.iter().any(|(n, _)| n == name) {
            let arg = arg();
            self.emit_value(name, arg);
        }
    }

    fn emit_value(&mut self, name: &str, arg: JsValue) {
        for (n, f) in &self.listeners {
            if n == name {
                self.deferred.push((f.clone(), arg.clone()));
            }
        }
    }

    // ------------------------------------------------------------ core lifecycle

    fn ensure_core(&mut self, playlist: &str) {
        if self.core.is_some() {
            return;
        }
        let swarm = self
            .opts
            .swarm
            .clone()
            .unwrap_or_else(|| swarm_id(playlist, ""));
        let mut cfg = Config {
            swarm,
            seed: (js_sys::Math::random() * 9.0e15) as u64,
            p2p: self.opts.p2p,
            upload: self.opts.p2p,
            upload_cap: self.opts.upload_cap,
            ..Config::default()
        };
        if let Some(m) = self.opts.max_peers {
            cfg.max_peers = m;
        }
        cfg.max_peers = cfg.max_peers.min(MAX_CONNS);
        self.core = Some(PeerCore::new(cfg));
        if self.opts.p2p && self.opts.signal.is_some() {
            self.connect_ws();
        }
    }

    /// Performs every pending output, then re-arms the timer.
    fn drain(&mut self) {
        let Some(mut out) = self.core.as_mut().and_then(|c| c.poll_output()) else {
            self.arm_timer();
            return;
        };
        loop {
            self.perform(out);
            match self.core.as_mut().and_then(|c| c.poll_output()) {
                Some(o) => out = o,
                None => break,
            }
        }
        self.arm_timer();
    }

    fn perform(&mut self, out: Output) {
        match out {
            Output::Signal(msg) => self.send_ws(&msg),
            Output::Connect { peer } => self.connect_peer(peer),
            Output::Disconnect { peer, .. } => {
                self.conns.remove(peer);
            }
            Output::Send { peer, frame } => self.send_frame(peer, frame),
            Output::HttpStart { id, url, range, .. } => self.http_start(id, url, range),
            Output::HttpCancel { id } => {
                if let Some(c) = self.http.remove(id) {
                    c.abort();
                }
            }
            Output::SegmentReady {
                seq,
                data,
                http_bytes,
                p2p_bytes,
            } => {
                if let Some(ws) = self.waiters.remove(seq) {
                    let arr: JsValue = Uint8Array::from(&data[..]).into();
                    for w in ws {
                        self.deferred.push((w.resolve, arr.clone()));
                    }
                }
                let len = data.len() as u64;
                self.emit("segment", || {
                    obj(&[
                        ("seq", num(seq)),
                        ("bytes", num(len)),
                        ("httpBytes", num(http_bytes)),
                        ("p2pBytes", num(p2p_bytes)),
                    ])
                });
            }
            Output::Event(ev) => self.on_event(ev),
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::PeerConnected { peer } => self.emit("peer", || {
                obj(&[("peer", num(peer)), ("state", "connected".into())])
            }),
            Event::PeerDisconnected { peer } => {
                self.conns.remove(peer);
                self.emit("peer", || {
                    obj(&[("peer", num(peer)), ("state", "disconnected".into())])
                })
            }
            Event::PeerBanned { peer, reason } => {
                if self.banned.len() < 256 {
                    self.banned.push(peer);
                }
                let r = match reason {
                    BanReason::BadChunk => "bad_chunk",
                    BanReason::Unsolicited => "unsolicited",
                    BanReason::TooManyBytes => "too_many_bytes",
                    BanReason::Malformed(_) => "malformed",
                };
                self.emit("peer", || {
                    obj(&[
                        ("peer", num(peer)),
                        ("state", "banned".into()),
                        ("reason", r.into()),
                    ])
                })
            }
            Event::IntegrityFailure { peer, seq, chunk } => self.emit("integrity", || {
                obj(&[
                    ("peer", peer.map_or(JsValue::NULL, num)),
                    ("seq", num(seq)),
                    ("chunk", num(chunk as u64)),
                ])
            }),
            Event::SignalingError { code, .. } => {
                self.emit("error", || obj(&[("code", code.as_str().into())]))
            }
        }
    }

    fn arm_timer(&mut self) {
        let Some(w) = window() else { return };
        if let Some(t) = self.timer.take() {
            w.clear_timeout_with_handle(t);
        }
        let Some(at) = self.core.as_ref().and_then(|c| c.poll_timeout()) else {
            return;
        };
        let now = self.now();
        let ms = (at.as_micros().saturating_sub(now.as_micros()) / 1000 + 1).min(60_000) as i32;
        if let Some(cb) = &self.timer_cb {
            self.timer = w
                .set_timeout_with_callback_and_timeout_and_arguments_0(
                    cb.as_ref().unchecked_ref(),
                    ms,
                )
                .ok();
        }
    }

    fn stats_value(&self) -> JsValue {
        let peers = self.core.as_ref().map_or(0, |c| c.open_peers().count());
        let o = obj(&[
            ("peers", num(peers as u64)),
            ("connections", num(self.conns.len() as u64)),
        ]);
        if let Some(c) = &self.core {
            let st = c.stats();
            set_all(
                &o,
                &[
                    ("peerId", c.peer_id().map_or(JsValue::NULL, num)),
                    ("httpBytes", num(st.http_bytes)),
                    ("p2pBytes", num(st.p2p_bytes)),
                    ("deliveredHttpBytes", num(st.delivered_http_bytes)),
                    ("deliveredP2pBytes", num(st.delivered_p2p_bytes)),
                    ("uploadedBytes", num(st.uploaded_bytes)),
                    ("segments", num(st.segments_delivered)),
                    ("integrityFailures", num(st.integrity_failures.into())),
                    ("peersBanned", num(st.peers_banned.into())),
                    ("stalls", num(st.stalls.into())),
                    ("httpRequests", num(st.http_requests)),
                    ("offload", JsValue::from_f64(st.offload())),
                ],
            );
        }
        let banned: js_sys::Array = self.banned.iter().map(|p| num(*p)).collect();
        set_all(&o, &[("banned", banned.into())]);
        o
    }

    // ------------------------------------------------------------ signaling

    fn connect_ws(&mut self) {
        let Some(url) = self.opts.signal.clone() else {
            return;
        };
        self.ws = None;
        let ws = match WebSocket::new(&url) {
            Ok(ws) => ws,
            Err(_) => {
                self.schedule_reconnect(None);
                return;
            }
        };
        let me = self.me.clone();
        let on_msg: Cb = Closure::new(move |ev: JsValue| {
            let Some(text) = ev.unchecked_into::<MessageEvent>().data().as_string() else {
                return;
            };
            with_weak(&me, |i| i.on_server_text(&text));
        });
        let me = self.me.clone();
        let on_open: Cb = Closure::new(move |_| with_weak(&me, |i| i.ws_failures = 0));
        let me = self.me.clone();
        let on_close: Cb = Closure::new(move |_| {
            with_weak(&me, |i| {
                i.ws = None;
                i.schedule_reconnect(None);
            })
        });
        ws.set_onmessage(Some(on_msg.as_ref().unchecked_ref()));
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        self.ws = Some(Ws {
            ws,
            _cbs: vec![on_msg, on_open, on_close],
        });
    }

    fn schedule_reconnect(&mut self, after_ms: Option<f64>) {
        let Some(w) = window() else { return };
        if self.reconnect.is_some() || self.destroyed {
            return;
        }
        let ms = after_ms.unwrap_or_else(|| {
            let n = self.ws_failures.min(10);
            self.ws_failures += 1;
            // Full exponential backoff with ±50 % jitter so a restarted server is not stampeded.
            let base = (BACKOFF_MIN_MS * 2f64.powi(n as i32)).min(BACKOFF_MAX_MS);
            base * (0.5 + js_sys::Math::random())
        });
        if let Some(cb) = &self.reconnect_cb {
            self.reconnect = w
                .set_timeout_with_callback_and_timeout_and_arguments_0(
                    cb.as_ref().unchecked_ref(),
                    ms as i32,
                )
                .ok();
        }
    }

    fn send_ws(&mut self, msg: &ClientMsg) {
        if let Some(ws) = &self.ws
            && ws.ws.ready_state() == WebSocket::OPEN
        {
            let _ = ws.ws.send_with_str(&json::client_msg(msg));
        }
        // Otherwise dropped: after a reconnect the core joins again from `welcome`.
    }

    fn on_server_text(&mut self, text: &str) {
        let Some(msg) = json::server_msg(text) else {
            return;
        };
        let now = self.now();
        match msg {
            ServerMsg::Signal { from, data, swarm } => {
                let ours = self
                    .core
                    .as_ref()
                    .is_some_and(|c| c.config().swarm == swarm);
                if ours {
                    self.on_peer_signal(from, data);
                }
            }
            ServerMsg::Welcome { heartbeat_ms, .. } => {
                self.heartbeat_ms = f64::from(heartbeat_ms.max(1000));
                self.last_ping = perf_now();
                if let Some(c) = self.core.as_mut() {
                    c.handle_signal(now, msg);
                }
            }
            ServerMsg::Reconnect { after_ms } => {
                if let Some(c) = self.core.as_mut() {
                    c.handle_signal(now, msg);
                }
                self.ws = None;
                self.schedule_reconnect(Some(f64::from(after_ms)));
            }
            other => {
                if let Some(c) = self.core.as_mut() {
                    c.handle_signal(now, other);
                }
            }
        }
    }

    fn signal_peer(&mut self, to: PeerId, data: SignalData) {
        let Some(swarm) = self.core.as_ref().map(|c| c.config().swarm.clone()) else {
            return;
        };
        self.send_ws(&ClientMsg::Signal { swarm, to, data });
    }

    // ------------------------------------------------------------ WebRTC

    fn new_conn(&mut self, peer: PeerId, offerer: bool) -> Option<(u64, RtcPeerConnection)> {
        self.conns.remove(peer);
        if self.conns.len() >= MAX_CONNS {
            return None;
        }
        let cfg = RtcConfiguration::new();
        if self.opts.ice_servers.is_object() {
            cfg.set_ice_servers(&self.opts.ice_servers);
        }
        let pc = RtcPeerConnection::new_with_configuration(&cfg).ok()?;
        let init = RtcDataChannelInit::new();
        init.set_negotiated(true);
        init.set_id(0);
        let dc = pc.create_data_channel_with_data_channel_dict("p2p-cdn", &init);
        dc.set_binary_type(RtcDataChannelType::Arraybuffer);
        dc.set_buffered_amount_low_threshold(BUFFERED_LOW);
        self.epoch += 1;
        let epoch = self.epoch;

        let me = self.me.clone();
        let on_ice: Cb = Closure::new(move |ev: JsValue| {
            let Some(c) = ev.unchecked_into::<RtcPeerConnectionIceEvent>().candidate() else {
                return;
            };
            let data = SignalData::Candidate {
                candidate: c.candidate(),
                sdp_mid: c.sdp_mid(),
                sdp_m_line_index: c.sdp_m_line_index(),
            };
            with_weak(&me, |i| {
                if i.live(peer, epoch) {
                    i.signal_peer(peer, data);
                }
            });
        });
        let me = self.me.clone();
        let pc2 = pc.clone();
        let on_state: Cb = Closure::new(move |_| {
            let st = pc2.connection_state();
            if matches!(
                st,
                RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed
            ) {
                with_weak(&me, |i| i.conn_closed(peer, epoch));
            }
        });
        let me = self.me.clone();
        let on_open: Cb = Closure::new(move |_| {
            with_weak(&me, |i| {
                if i.live(peer, epoch) {
                    let now = i.now();
                    if let Some(c) = i.core.as_mut() {
                        c.handle_channel_open(now, peer);
                    }
                }
            })
        });
        let me = self.me.clone();
        let on_close: Cb = Closure::new(move |_| with_weak(&me, |i| i.conn_closed(peer, epoch)));
        let me = self.me.clone();
        let on_msg: Cb = Closure::new(move |ev: JsValue| {
            let data = ev.unchecked_into::<MessageEvent>().data();
            // Only binary frames are part of the protocol; a string is malformed input and
            // reaches the core as an empty frame (which bans the sender).
            let bytes = match data.dyn_into::<js_sys::ArrayBuffer>() {
                Ok(buf) => Bytes::from(Uint8Array::new(&buf).to_vec()),
                Err(_) => Bytes::new(),
            };
            with_weak(&me, |i| {
                if i.live(peer, epoch) {
                    let now = i.now();
                    if let Some(c) = i.core.as_mut() {
                        c.handle_frame(now, peer, bytes);
                    }
                }
            });
        });
        let me = self.me.clone();
        let dc2 = dc.clone();
        let on_low: Cb = Closure::new(move |_| {
            let amount = dc2.buffered_amount() as usize;
            with_weak(&me, |i| {
                if i.live(peer, epoch) {
                    let now = i.now();
                    if let Some(c) = i.core.as_mut() {
                        c.handle_buffered(now, peer, amount);
                    }
                }
            });
        });
        pc.set_onicecandidate(Some(on_ice.as_ref().unchecked_ref()));
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        dc.set_onmessage(Some(on_msg.as_ref().unchecked_ref()));
        dc.set_onbufferedamountlow(Some(on_low.as_ref().unchecked_ref()));
        self.conns.insert(
            peer,
            Conn {
                epoch,
                pc: pc.clone(),
                dc,
                offerer,
                remote_set: false,
                pending: Vec::new(),
                _cbs: vec![on_ice, on_state, on_open, on_close, on_msg, on_low],
            },
        );
        Some((epoch, pc))
    }

    fn live(&self, peer: PeerId, epoch: u64) -> bool {
        self.conns.get(peer).is_some_and(|c| c.epoch == epoch)
    }

    fn conn_closed(&mut self, peer: PeerId, epoch: u64) {
        if !self.live(peer, epoch) {
            return;
        }
        self.conns.remove(peer);
        let now = self.now();
        if let Some(c) = self.core.as_mut() {
            c.handle_channel_closed(now, peer);
        }
    }

    fn connect_peer(&mut self, peer: PeerId) {
        let Some((epoch, pc)) = self.new_conn(peer, true) else {
            let now = self.now();
            if let Some(c) = self.core.as_mut() {
                c.handle_channel_closed(now, peer);
            }
            return;
        };
        let me = self.me.clone();
        spawn_local(async move {
            let r = async {
                let offer = JsFuture::from(pc.create_offer()).await?;
                let sdp = Reflect::get(&offer, &"sdp".into())?
                    .as_string()
                    .unwrap_or_default();
                let desc = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
                desc.set_sdp(&sdp);
                JsFuture::from(pc.set_local_description(&desc)).await?;
                Ok::<String, JsValue>(sdp)
            }
            .await;
            with_weak(&me, |i| match r {
                Ok(sdp) if i.live(peer, epoch) => i.signal_peer(peer, SignalData::Offer { sdp }),
                _ => i.conn_closed(peer, epoch),
            });
        });
    }

    fn on_peer_signal(&mut self, from: PeerId, data: SignalData) {
        let now = self.now();
        match data {
            SignalData::Offer { sdp } => {
                let me_id = self.core.as_ref().and_then(|c| c.peer_id()).unwrap_or(0);
                if let Some(c) = self.conns.get(from)
                    && c.offerer
                    && me_id < from
                {
                    // Both sides offered: the lower id keeps its offer, the other answers.
                    return;
                }
                let ok = self
                    .core
                    .as_mut()
                    .is_some_and(|c| c.accept_incoming(now, from));
                if !ok {
                    return;
                }
                let Some((epoch, pc)) = self.new_conn(from, false) else {
                    if let Some(c) = self.core.as_mut() {
                        c.handle_channel_closed(now, from);
                    }
                    return;
                };
                let me = self.me.clone();
                spawn_local(async move {
                    let r = async {
                        let desc = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
                        desc.set_sdp(&sdp);
                        JsFuture::from(pc.set_remote_description(&desc)).await?;
                        with_weak(&me, |i| i.remote_set(from, epoch));
                        let answer = JsFuture::from(pc.create_answer()).await?;
                        let sdp = Reflect::get(&answer, &"sdp".into())?
                            .as_string()
                            .unwrap_or_default();
                        let desc = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
                        desc.set_sdp(&sdp);
                        JsFuture::from(pc.set_local_description(&desc)).await?;
                        Ok::<String, JsValue>(sdp)
                    }
                    .await;
                    with_weak(&me, |i| match r {
                        Ok(sdp) if i.live(from, epoch) => {
                            i.signal_peer(from, SignalData::Answer { sdp })
                        }
                        _ => i.conn_closed(from, epoch),
                    });
                });
            }
            SignalData::Answer { sdp } => {
                let Some(c) = self.conns.get(from) else {
                    return;
                };
                if !c.offerer || c.remote_set {
                    return;
                }
                let (epoch, pc) = (c.epoch, c.pc.clone());
                let me = self.me.clone();
                spawn_local(async move {
                    let desc = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
                    desc.set_sdp(&sdp);
                    let r = JsFuture::from(pc.set_remote_description(&desc)).await;
                    with_weak(&me, |i| match r {
                        Ok(_) => i.remote_set(from, epoch),
                        Err(_) => i.conn_closed(from, epoch),
                    });
                });
            }
            SignalData::Candidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let Some(c) = self.conns.get_mut(from) else {
                    return;
                };
                if candidate.is_empty() {
                    return;
                }
                let init = RtcIceCandidateInit::new(&candidate);
                init.set_sdp_mid(sdp_mid.as_deref());
                init.set_sdp_m_line_index(sdp_m_line_index);
                if c.remote_set {
                    let _ =
                        c.pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init));
                } else if c.pending.len() < MAX_PENDING_CANDIDATES {
                    c.pending.push(init);
                }
            }
        }
    }

    fn remote_set(&mut self, peer: PeerId, epoch: u64) {
        let Some(c) = self.conns.get_mut(peer) else {
            return;
        };
        if c.epoch != epoch {
            return;
        }
        c.remote_set = true;
        for init in std::mem::take(&mut c.pending) {
            let _ =
                c.pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init));
        }
    }

    fn send_frame(&mut self, peer: PeerId, frame: Bytes) {
        let Some(c) = self.conns.get(peer) else {
            return;
        };
        if c.dc.ready_state() != RtcDataChannelState::Open {
            return;
        }
        let sent = if self.opts.tamper && frame.len() > 2 && frame[1] == 5 {
            // Debug only (`__tamper`): corrupt the payload of every chunk we upload.
            let mut v = frame.to_vec();
            if let Some(b) = v.last_mut() {
                *b ^= 0xff;
            }
            c.dc.send_with_u8_array(&v)
        } else {
            c.dc.send_with_u8_array(&frame)
        };
        let now = self.now();
        let amount = c.dc.buffered_amount() as usize;
        let epoch = c.epoch;
        match sent {
            Ok(()) => {
                if let Some(core) = self.core.as_mut() {
                    core.handle_buffered(now, peer, amount);
                }
            }
            Err(_) => self.conn_closed(peer, epoch),
        }
    }

    // ------------------------------------------------------------ HTTP

    fn http_start(&mut self, id: u64, url: String, range: Option<(u64, u64)>) {
        let Ok(ctrl) = AbortController::new() else {
            let now = self.now();
            if let Some(c) = self.core.as_mut() {
                c.handle_http_failed(now, id);
            }
            return;
        };
        let signal = ctrl.signal();
        self.http.insert(id, ctrl);
        let me = self.me.clone();
        spawn_local(async move {
            let r = http_fetch(&me, id, &url, range, &signal).await;
            with_weak(&me, |i| {
                if i.http.remove(id).is_none() {
                    return; // cancelled
                }
                let now = i.now();
                if let Some(c) = i.core.as_mut() {
                    match r {
                        Ok(()) => c.handle_http_done(now, id),
                        Err(_) => c.handle_http_failed(now, id),
                    }
                }
            });
        });
    }

    // ------------------------------------------------------------ manifests and segments

    fn load_manifest(&mut self, playlist: &str) {
        let Ok(u) = Url::new(playlist) else { return };
        let path = u.pathname();
        let Some(stem) = path.strip_suffix(".m3u8") else {
            return;
        };
        u.set_pathname(&[stem, ".integrity.json"].concat());
        u.set_hash("");
        let url = u.href();
        if self.manifests_loading.contains(&url) || self.manifests_loading.len() >= 8 {
            return;
        }
        self.manifests_loading.push(url.clone());
        let me = self.me.clone();
        spawn_local(async move {
            let text = fetch_text(&url).await;
            with_weak(&me, |i| {
                i.manifests_loading.retain(|u| *u != url);
                if let Ok(text) = text {
                    i.add_manifest(&url, &text);
                }
                i.retry_parked();
            });
        });
    }

    fn add_manifest(&mut self, url: &str, text: &str) {
        let Some(m) = json::manifest(text) else {
            return;
        };
        let now = self.now();
        for seg in m.segments {
            let Ok(abs) = Url::new_with_base(&seg.uri, url) else {
                continue;
            };
            let abs = abs.href();
            if !self.urls.iter().any(|(u, _)| *u == abs) {
                if self.urls.len() >= MAX_URLS {
                    self.urls.pop_front();
                }
                self.urls.push_back((abs.clone(), seg.seq));
            }
            if let Some(c) = self.core.as_mut() {
                c.add_segment(now, seg, abs);
            }
        }
    }

    fn want(&mut self, seq: Option<u64>, url: &str, deadline_ms: f64, w: Waiter, retry: bool) {
        let seq = seq.or_else(|| self.urls.iter().find(|(u, _)| u == url).map(|(_, s)| *s));
        let now = self.now();
        let deadline =
            now + std::time::Duration::from_micros((deadline_ms.max(0.0) * 1000.0) as u64);
        let res = match (seq, self.core.as_mut()) {
            (Some(s), Some(c)) => c.want_segment(now, s, deadline).map(|_| s).ok(),
            _ => None,
        };
        match res {
            Some(s) => {
                if !self.waiters.contains_key(s)
                    && self.waiters.len() >= MAX_WAITING_SEGMENTS
                    && let Some(old) = self.waiters.pop_min()
                {
                    for o in old {
                        self.deferred.push((o.reject, js_err("superseded")));
                    }
                }
                self.waiters.or_default(s).push(w);
            }
            None if self.parked.len() < 32 && (!self.manifests_loading.is_empty() || !retry) => {
                // Probably newer than the manifest we hold: load it again and retry once.
                if let Some(pl) = self.playlist.clone() {
                    self.load_manifest(&pl);
                }
                self.parked.push(Parked {
                    seq,
                    url: url.to_string(),
                    deadline_ms,
                    w,
                });
            }
            None => self.deferred.push((w.reject, js_err("unknown segment"))),
        }
    }

    fn retry_parked(&mut self) {
        for p in std::mem::take(&mut self.parked) {
            // Parked again only while another manifest is still loading.
            self.want(p.seq, &p.url, p.deadline_ms, p.w, true);
        }
    }

    fn on_tick(&mut self) {
        let t = perf_now();
        if self.ws.is_some() && t - self.last_ping >= self.heartbeat_ms {
            self.last_ping = t;
            self.send_ws(&ClientMsg::Ping);
        }
        let stats = self.stats_value();
        self.emit("stats", || stats);
    }

    fn destroy(&mut self) {
        self.destroyed = true;
        if let (Some(c), Some(ws)) = (self.core.as_ref(), self.ws.as_ref()) {
            let _ = ws.ws.send_with_str(&json::client_msg(&ClientMsg::Leave {
                swarm: c.config().swarm.clone(),
            }));
        }
        self.ws = None;
        self.conns.clear();
        for (_, c) in self.http.take_all() {
            c.abort();
        }
        if let Some(w) = window() {
            for t in [self.timer.take(), self.reconnect.take()]
                .into_iter()
                .flatten()
            {
                w.clear_timeout_with_handle(t);
            }
            if let Some(t) = self.tick.take() {
                w.clear_interval_with_handle(t);
            }
        }
        for (_, ws) in self.waiters.take_all() {
            for w in ws {
                let _ = w.reject.call1(&JsValue::NULL, &js_err("destroyed"));
            }
        }
        for p in std::mem::take(&mut self.parked) {
            let _ = p.w.reject.call1(&JsValue::NULL, &js_err("destroyed"));
        }
        self.listeners.clear();
        self.core = None;
    }
}

async fn http_fetch(
    me: &Weak<RefCell<Inner>>,
    id: u64,
    url: &str,
    range: Option<(u64, u64)>,
    signal: &web_sys::AbortSignal,
) -> Result<(), JsValue> {
    let w = window().ok_or_else(|| js_err("no window"))?;
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_signal(Some(signal));
    if let Some((start, end)) = range {
        let h = Headers::new()?;
        let mut r = String::from("bytes=");
        json::push_u64(&mut r, start);
        r.push('-');
        json::push_u64(&mut r, end.saturating_sub(1));
        h.set("Range", &r)?;
        init.set_headers(&h);
    }
    let resp: Response = JsFuture::from(w.fetch_with_str_and_init(url, &init))
        .await?
        .dyn_into()?;
    let ok = if range.is_some() {
        resp.status() == 206
    } else {
        resp.ok()
    };
    if !ok {
        return Err(js_err("bad status"));
    }
    let body = resp.body().ok_or_else(|| js_err("no body"))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    loop {
        let r = JsFuture::from(reader.read()).await?;
        if Reflect::get(&r, &"done".into())?.as_bool().unwrap_or(true) {
            return Ok(());
        }
        let chunk: Uint8Array = Reflect::get(&r, &"value".into())?.dyn_into()?;
        let data = chunk.to_vec();
        let mut alive = false;
        with_weak(me, |i| {
            if i.http.contains_key(id) {
                alive = true;
                let now = i.now();
                if let Some(c) = i.core.as_mut() {
                    c.handle_http_data(now, id, &data);
                }
            }
        });
        if !alive {
            let _ = reader.cancel();
            return Ok(());
        }
    }
}

async fn fetch_text(url: &str) -> Result<String, JsValue> {
    let w = window().ok_or_else(|| js_err("no window"))?;
    let init = RequestInit::new();
    // Live sidecars change every segment: revalidate (ETag) instead of reusing a cached one
    // that may lack the newest segment.
    init.set_cache(web_sys::RequestCache::NoCache);
    let resp: Response = JsFuture::from(w.fetch_with_str_and_init(url, &init))
        .await?
        .dyn_into()?;
    if !resp.ok() {
        return Err(js_err("bad status"));
    }
    JsFuture::from(resp.text()?)
        .await?
        .as_string()
        .ok_or_else(|| js_err("not text"))
}

/// A viewer's P2P peer. Create one per stream; call `playlistLoaded` on every (re)load of the
/// media playlist, then `fetchSegment` for each media segment.
#[wasm_bindgen]
pub struct P2pPeer {
    inner: Shared,
}

#[wasm_bindgen]
impl P2pPeer {
    /// Options: `signal` (WebSocket URL of the signaling server), `swarm` (swarm id override),
    /// `iceServers` (RTCIceServer[]), `uploadCap` (bytes/s), `p2p` (default true), `consent`
    /// (default true; false disables P2P), `maxPeers`.
    #[wasm_bindgen(constructor)]
    pub fn new(opts: JsValue) -> P2pPeer {
        let opts = Opts::parse(&opts);
        // A bug must be visible: log panics (the module is unusable afterwards, and the JS
        // side falls back to the player's own loader).
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&JsValue::from_str(&format!("p2p-cdn: {info}")));
        }));
        let inner = Rc::new_cyclic(|me: &Weak<RefCell<Inner>>| {
            RefCell::new(Inner {
                me: me.clone(),
                opts,
                t0: perf_now(),
                core: None,
                ws: None,
                ws_failures: 0,
                heartbeat_ms: 30_000.0,
                last_ping: 0.0,
                conns: IdMap::default(),
                epoch: 0,
                http: IdMap::default(),
                waiters: IdMap::default(),
                parked: Vec::new(),
                manifests_loading: Vec::new(),
                urls: VecDeque::new(),
                listeners: Vec::new(),
                deferred: Vec::new(),
                timer: None,
                timer_cb: None,
                tick: None,
                tick_cb: None,
                reconnect: None,
                reconnect_cb: None,
                banned: Vec::new(),
                playlist: None,
                destroyed: false,
            })
        });
        {
            let mut g = inner.borrow_mut();
            let me = g.me.clone();
            g.timer_cb = Some(Closure::new(move || {
                with_weak(&me, |i| {
                    i.timer = None;
                    let now = i.now();
                    if let Some(c) = i.core.as_mut() {
                        c.handle_timeout(now);
                    }
                })
            }));
            let me = g.me.clone();
            g.reconnect_cb = Some(Closure::new(move || {
                with_weak(&me, |i| {
                    i.reconnect = None;
                    i.connect_ws();
                })
            }));
            let me = g.me.clone();
            let tick: Closure<dyn FnMut()> = Closure::new(move || with_weak(&me, |i| i.on_tick()));
            if let Some(w) = window() {
                g.tick = w
                    .set_interval_with_callback_and_timeout_and_arguments_0(
                        tick.as_ref().unchecked_ref(),
                        TICK_MS,
                    )
                    .ok();
            }
            g.tick_cb = Some(tick);
            if let Some(s) = g.opts.swarm.clone() {
                g.ensure_core(&s);
            }
        }
        P2pPeer { inner }
    }

    /// The media playlist at `url` was loaded or refreshed: joins its swarm (first call) and
    /// loads its integrity manifest.
    #[wasm_bindgen(js_name = playlistLoaded)]
    pub fn playlist_loaded(&self, url: &str) {
        with(&self.inner, |i| {
            i.ensure_core(url);
            i.playlist = Some(url.to_string());
            i.load_manifest(url);
        });
    }

    /// Resolves with the verified bytes (`Uint8Array`) of the segment at `url`; `opts.sn` is its
    /// media sequence number (else looked up in the manifest), `opts.deadline` the milliseconds
    /// until the player needs it. Rejects when P2P cannot handle it: load it another way.
    #[wasm_bindgen(js_name = fetchSegment)]
    pub fn fetch_segment(&self, url: &str, opts: JsValue) -> Promise {
        let get = |k: &str| {
            Reflect::get(&opts, &JsValue::from_str(k))
                .ok()
                .and_then(|v| v.as_f64())
        };
        let seq = get("sn")
            .filter(|x| *x >= 0.0 && x.fract() == 0.0)
            .map(|x| x as u64);
        let deadline_ms = get("deadline").unwrap_or(6000.0);
        let inner = self.inner.clone();
        let url = url.to_string();
        Promise::new(&mut |resolve, reject| {
            let w = Waiter {
                resolve,
                reject: reject.clone(),
            };
            let mut taken = false;
            with(&inner, |i| {
                taken = true;
                i.want(seq, &url, deadline_ms, w, false);
            });
            if !taken {
                let _ = reject.call1(&JsValue::NULL, &js_err("peer destroyed"));
            }
        })
    }

    /// The player no longer needs segment `sn` (abort, seek): its pending promises reject.
    pub fn cancel(&self, sn: f64) {
        let seq = sn as u64;
        with(&self.inner, |i| {
            if let Some(ws) = i.waiters.remove(seq) {
                for w in ws {
                    i.deferred.push((w.reject, js_err("cancelled")));
                }
            }
            let now = i.now();
            if let Some(c) = i.core.as_mut() {
                c.cancel_want(now, seq);
            }
        });
    }

    /// The player stalled.
    #[wasm_bindgen(js_name = reportStall)]
    pub fn report_stall(&self) {
        with(&self.inner, |i| {
            let now = i.now();
            if let Some(c) = i.core.as_mut() {
                c.report_stall(now);
            }
        });
    }

    /// Listens to `segment`, `peer`, `integrity`, `stats` (every second) or `error`.
    pub fn on(&self, event: &str, f: Function) {
        with(&self.inner, |i| {
            if i.listeners.len() < 64 {
                i.listeners.push((event.to_string(), f));
            }
        });
    }

    /// Counters: bytes by source, uploaded bytes, peers, integrity failures, banned peers.
    pub fn stats(&self) -> JsValue {
        match self.inner.try_borrow() {
            Ok(g) => g.stats_value(),
            Err(_) => JsValue::NULL,
        }
    }

    /// Closes every connection and request; pending promises reject.
    pub fn destroy(&self) {
        if let Ok(mut g) = self.inner.try_borrow_mut() {
            g.destroy();
        }
    }
}
