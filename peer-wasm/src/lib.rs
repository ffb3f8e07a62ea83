//! Browser driver around [`peer_core::PeerCore`]: it turns the core's [`Output`]s into IO and
//! the IO's results into [`Input`]s, and decides nothing (backoff, pings, glare, pending
//! candidates, manifest polling and wants all live in the core).
//!
//! * [`Output::SignalConnect`] and friends: one `WebSocket` to the signaling server.
//! * [`Output::RtcCreate`] and friends: one `RTCPeerConnection` per [`ConnId`] with the
//!   protocol's negotiated binary data channel (id 0); its handlers report to that id only.
//! * [`Output::HttpStart`]: `fetch` with `Range` + `AbortController`, the body streamed through
//!   a `ReadableStream` reader; [`Output::FetchManifest`]: `fetch` + [`json::manifest`].
//! * One `setTimeout` at [`PeerCore::poll_timeout`], re-armed after an input only when that
//!   time changed; a 1 s interval only for the page's `stats` event.
//! * `fetchSegment` promises wait, by URL, for [`Output::SegmentReady`] / [`Output::WantFailed`].
//!
//! Time is microseconds since the core was created (`performance.now()`).
//!
//! Re-entrancy: all state sits in one `Rc<RefCell<Inner>>`. User callbacks and promise
//! resolutions are queued while it is borrowed and called after the borrow ends, so a listener
//! may call back into the peer. Browser callbacks (events, timers, fetch) always arrive from the
//! event loop, never while the state is borrowed.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use js_sys::{Function, Promise, Reflect, Uint8Array};
use peer_core::{Config, ConnId, Input, Output, PeerCore, Time};
use protocol::PeerId;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{AbortController, MessageEvent, WebSocket};

/// Hard cap on `maxPeers` whatever the options say: each connection costs a DTLS/SCTP stack in
/// the browser.
const MAX_CONNS: usize = 32;
/// Pending `fetchSegment` promises; beyond it the oldest is rejected (the player falls back to
/// its own loader).
const MAX_WAITERS: usize = 64;
/// Period of the page's `stats` event.
const TICK_MS: i32 = 1000;
/// While a channel's send buffer holds bytes, the core hears its `bufferedAmount` this often.
/// `bufferedamountlow` fires only when the amount falls through its threshold (16 KiB) from
/// above, so a buffer holding less (control frames, a chunk's tail) drained unseen until the
/// next send, and the core's uplink meter divided those bytes by the whole wait. Measured with
/// `cargo xtask bench lab` (6 pages, 1 Mbit/s up): every page's uplink read 16–33 kbit/s, every
/// request was answered `Busy` (1,200–2,700 per page in 90 s), nothing was uploaded.
const BUFFERED_POLL_MS: u64 = 100;
/// Smallest `cacheBytes` honoured: below a segment or two a peer could hold nothing to serve.
const MIN_CACHE_BYTES: usize = 1 << 20;

/// The allocator: rlsf's TLSF (O(1) allocation and free, pools grown with `memory.grow`)
/// instead of std's dlmalloc, for the bundle's size (docs/BUNDLE.md), with no `unsafe` here.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: rlsf::GlobalTlsf = rlsf::GlobalTlsf::new();

mod fetch;
mod json;
mod map;
mod page;
mod rtc;

use map::IdMap;
use page::{num, obj};
use rtc::Conn;

type Shared = Rc<RefCell<Inner>>;
type Cb = Closure<dyn FnMut(JsValue)>;

/// Signaling URLs kept from the page's options (the nodes of one cluster).
const MAX_SIGNAL_URLS: usize = 16;

/// `signal`: one URL, a comma-separated list, or an array of URLs (the nodes of a cluster; the
/// core picks which one each connection goes to, and moves on after a failure).
fn signal_urls(v: &JsValue) -> Vec<String> {
    let raw: Vec<String> = if js_sys::Array::is_array(v) {
        js_sys::Array::from(v)
            .iter()
            .filter_map(|x| x.as_string())
            .collect()
    } else {
        v.as_string()
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    raw.into_iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .take(MAX_SIGNAL_URLS)
        .collect()
}

struct Opts {
    /// Signaling WebSocket URLs (empty: HTTP only).
    signal: Vec<String>,
    swarm: Option<String>,
    /// The operator's integrity service (manifests for streams without a sidecar).
    integrity: Option<String>,
    /// hls.js-style `fetchSetup(context, init) -> Request`: the site's hook for the peer's own
    /// origin requests (auth headers, credentials, rewritten URLs).
    fetch_setup: Option<Function>,
    token: Option<String>,
    ice_servers: JsValue,
    /// `iceTransportPolicy: "relay"`: TURN only, so no peer ever learns the viewer's address
    /// (WebRTC's own option, for sites that must not expose viewers' IPs).
    relay_only: bool,
    upload_cap: Option<u64>,
    p2p: bool,
    /// `upload: false`: download only (the core refuses every peer request).
    upload: bool,
    /// `cacheBytes`: the segment store's cap.
    cache_bytes: Option<usize>,
    max_peers: Option<usize>,
    tamper: bool,
}

impl Opts {
    fn parse(v: &JsValue) -> Opts {
        let get = |k: &str| Reflect::get(v, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
        let text = |k: &str| get(k).as_string().filter(|s| !s.is_empty());
        let consent = get("consent").as_bool().unwrap_or(true);
        Opts {
            signal: signal_urls(&get("signal")),
            swarm: text("swarm"),
            integrity: text("integrity"),
            fetch_setup: get("fetchSetup").dyn_into().ok(),
            token: text("token"),
            ice_servers: get("iceServers"),
            relay_only: text("iceTransportPolicy").as_deref() == Some("relay"),
            upload_cap: get("uploadCap")
                .as_f64()
                .filter(|x| *x > 0.0)
                .map(|x| x as u64),
            // Without consent nothing touches the network besides the origin.
            p2p: consent && get("p2p").as_bool().unwrap_or(true),
            upload: get("upload").as_bool().unwrap_or(true),
            // `as` saturates (a huge or infinite number is the largest cap, NaN fails the filter).
            cache_bytes: get("cacheBytes")
                .as_f64()
                .filter(|x| *x > 0.0)
                .map(|x| (x as usize).max(MIN_CACHE_BYTES)),
            max_peers: get("maxPeers")
                .as_f64()
                .map(|x| (x.max(1.0) as usize).min(MAX_CONNS)),
            tamper: get("__tamper").as_bool().unwrap_or(false),
        }
    }
}

struct Ws {
    ws: WebSocket,
    _cbs: [Cb; 3],
}

impl Drop for Ws {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        let _ = self.ws.close();
    }
}

struct Waiter {
    url: String,
    resolve: Function,
    reject: Function,
}

struct Inner {
    me: Weak<RefCell<Inner>>,
    opts: Opts,
    t0: f64,
    core: Option<PeerCore>,
    ws: Option<Ws>,
    /// Numbers the WebSockets, so that events of a replaced one are ignored.
    ws_serial: u32,
    /// ICE servers from the signaling server's `welcome` (an `RTCIceServer[]`; undefined: none),
    /// used when the page set no `iceServers` of its own.
    welcome_ice: JsValue,
    conns: IdMap<Conn>,
    /// Connections sent on since the core last heard their `bufferedAmount`.
    sent: Vec<ConnId>,
    /// Connections whose send buffer held bytes when last looked at (polled every
    /// [`BUFFERED_POLL_MS`] until empty; at most one entry per connection).
    draining: Vec<ConnId>,
    http: IdMap<AbortController>,
    /// Pending `fetchSegment` promises, oldest first.
    waiters: Vec<Waiter>,
    listeners: Vec<(String, Function)>,
    /// Calls to make once the state is no longer borrowed.
    deferred: Vec<(Function, JsValue)>,
    timer: Option<i32>,
    /// The core time `timer` is armed for.
    timer_at: Option<Time>,
    /// Outputs left for the next task (see `drain`), in the core's order; bounded by what one
    /// input makes the core output.
    deferred_out: std::collections::VecDeque<Output>,
    /// The 0 ms timeout that drains them, and its callback.
    resume: Option<i32>,
    // Timer callbacks ignore their argument: one closure type (`Cb`) for every callback, so
    // the bundle holds one set of wasm-bindgen's closure shims instead of two.
    resume_cb: Option<Cb>,
    timer_cb: Option<Cb>,
    tick: Option<i32>,
    tick_cb: Option<Cb>,
    /// Peers banned (for the page's stats; bounded).
    banned: Vec<PeerId>,
    destroyed: bool,
    /// Cores replaced so far (ABR switches): the current core's ids start at `generation << 40`.
    generation: u64,
    /// Path of the media playlist the core serves (an ABR switch is another path).
    playlist_path: String,
    /// Counters of the cores replaced so far: the page's totals go on.
    past: peer_core::Stats,
    /// The integrity manifest's latest text and its decode (see `fetch_manifest`).
    last_manifest: Option<(String, protocol::Manifest)>,
}

fn window() -> Option<web_sys::Window> {
    web_sys::window()
}

fn perf_now() -> f64 {
    window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
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
    // A page's listener that throws must not stop the others nor the peer: its exception is
    // reported to the `error` listeners (whose own exceptions are dropped: no loop).
    let mut thrown = Vec::new();
    for (func, arg) in deferred {
        if let Err(e) = func.call1(&JsValue::NULL, &arg) {
            thrown.push(e);
        }
    }
    if thrown.is_empty() {
        return;
    }
    let errors: Vec<Function> = rc.try_borrow().map_or_else(
        |_| Vec::new(),
        |g| {
            g.listeners
                .iter()
                .filter(|(n, _)| n == "error")
                .map(|(_, f)| f.clone())
                .collect()
        },
    );
    for e in thrown {
        let ev = obj(&[("code", "listener".into()), ("error", e)]);
        for f in &errors {
            let _ = f.call1(&JsValue::NULL, &ev);
        }
    }
}

fn with_weak(w: &Weak<RefCell<Inner>>, f: impl FnOnce(&mut Inner)) {
    if let Some(rc) = w.upgrade() {
        with(&rc, f);
    }
}

/// Feeds `input` to the core (from a browser callback).
fn feed_weak(w: &Weak<RefCell<Inner>>, input: Input) {
    with_weak(w, |i| i.feed(input));
}

/// Feeds `input` about connection `conn`, if it is still ours (from a browser callback).
fn conn_weak(w: &Weak<RefCell<Inner>>, conn: ConnId, input: Input) {
    with_weak(w, |i| i.conn_input(conn, input));
}

impl Inner {
    fn now(&self) -> Time {
        Time::from_secs_f64((perf_now() - self.t0).max(0.0) / 1000.0)
    }

    fn feed(&mut self, input: Input) {
        let now = self.now();
        if let Some(c) = self.core.as_mut() {
            c.handle(now, input);
        }
    }

    /// An input about connection `conn`, dropped when the connection is gone (closed by the
    /// core, or already reported closed). Reporting it closed drops it.
    fn conn_input(&mut self, conn: ConnId, input: Input) {
        if !self.conns.contains_key(conn) {
            return;
        }
        if matches!(input, Input::RtcClosed { .. }) {
            self.conns.remove(conn);
        }
        self.feed(input);
    }

    /// Creates the core for the media playlist loaded: its swarm and integrity manifest. A
    /// different media playlist (an ABR switch) replaces the core: the page follows the
    /// rendition it plays into that rendition's swarm (one swarm per page at a time; the old
    /// core leaves its swarm and closes its connections, its open wants fail over to HTTP).
    fn ensure_core(&mut self, playlist: &str, stream: Option<&str>) {
        let manifest_url = peer_core::manifest_url(playlist, self.opts.integrity.as_deref());
        let playlist_path = peer_core::manifest::url_path(playlist).to_owned();
        if self.core.is_some() {
            // Same playlist (its query may change between reloads: tokens, delivery
            // directives): keep the core.
            if self.opts.swarm.is_some() || self.playlist_path == playlist_path {
                return;
            }
            self.feed(Input::Close);
            self.drain();
            if let Some(c) = &self.core {
                self.past.absorb(c.stats());
            }
            self.ws = None;
            self.conns.clear();
            // The old core's connections are gone: what it still asked for is moot.
            self.deferred_out.clear();
            for (_, c) in self.http.take_all() {
                c.abort();
            }
            self.core = None;
            // The next core's ids start above the old one's (late callbacks of the old
            // connections and requests must not match the new ones).
            self.generation += 1;
        }
        let o = &self.opts;
        // No signaling server: HTTP only (the core then never asks for a WebSocket).
        let p2p = o.p2p && !o.signal.is_empty();
        let mut cfg = Config {
            swarm: o
                .swarm
                .clone()
                .unwrap_or_else(|| peer_core::rendition_swarm(stream, playlist)),
            token: o.token.clone(),
            manifest_url,
            playlist_url: Some(playlist.to_owned()),
            id_base: self.generation << 40,
            corrupt_uploads: o.tamper,
            // Outputs are cheap here and only pages listening to `chunk`/`upload` get objects
            // built (`emit`).
            chunk_events: true,
            seed: (js_sys::Math::random() * 9.0e15) as u64,
            p2p,
            upload: p2p && o.upload,
            upload_cap: o.upload_cap,
            ..Config::default()
        };
        if let Some(m) = o.max_peers {
            cfg.max_peers = m;
        }
        if let Some(c) = o.cache_bytes {
            cfg.store_cap = c;
        }
        // The core's clock starts at zero when it is created (its first timers count from
        // there): so does ours.
        self.t0 = perf_now();
        // The clock restarted: an armed timer's time means another moment now.
        self.timer_at = None;
        self.playlist_path = playlist_path;
        self.core = Some(PeerCore::new(cfg));
    }

    /// Performs every pending output, reports the send buffers written to, then re-arms the
    /// timer.
    fn drain(&mut self) {
        // After `destroy` nothing may arm a browser timer: `free()` follows and drops the
        // callback it points to ("closure invoked after being dropped").
        if self.destroyed {
            return;
        }
        // At most one `RTCPeerConnection` is made per task: a `peers` message can ask for a
        // dozen, and each costs the main thread milliseconds (more on a busy machine; measured
        // with `cargo xtask bench browser-cpu`: one signaling message held it for over a
        // second). The outputs after a second `RtcCreate` wait, in order, for the next task.
        let mut created = false;
        loop {
            loop {
                let out = match self.deferred_out.pop_front() {
                    Some(o) => o,
                    None => match self.core.as_mut().and_then(|c| c.poll_output()) {
                        Some(o) => o,
                        None => break,
                    },
                };
                let create = matches!(out, Output::RtcCreate { .. });
                if create && created {
                    self.deferred_out.push_front(out);
                    while let Some(o) = self.core.as_mut().and_then(|c| c.poll_output()) {
                        self.deferred_out.push_back(o);
                    }
                    self.resume_soon();
                    break;
                }
                created |= create;
                self.perform(out);
            }
            if self.sent.is_empty() {
                break;
            }
            // One report per channel after a burst of sends (the amount only grows within
            // this task, so this settles).
            for conn in std::mem::take(&mut self.sent) {
                if let Some(c) = self.conns.get(conn) {
                    let amount = c.dc.buffered_amount() as usize;
                    if amount > 0 && !self.draining.contains(&conn) {
                        self.draining.push(conn);
                    }
                    self.feed(Input::RtcBuffered { conn, amount });
                }
            }
        }
        self.arm_timer();
    }

    fn perform(&mut self, out: Output) {
        match out {
            Output::SignalConnect => self.connect_ws(),
            Output::SignalSend(msg) => {
                if let Some(ws) = &self.ws
                    && ws.ws.ready_state() == WebSocket::OPEN
                {
                    let _ = ws.ws.send_with_str(&json::client_msg(&msg));
                }
            }
            Output::SignalClose => self.ws = None,
            Output::RtcCreate { conn, offerer, .. } => self.rtc_create(conn, offerer),
            Output::RtcRemote { conn, data } => self.rtc_remote(conn, data),
            Output::RtcSend { conn, frame } => self.rtc_send(conn, &frame),
            Output::RtcClose { conn } => {
                self.conns.remove(conn);
            }
            Output::HttpStart { id, url, range } => self.http_start(id, url, range),
            Output::HttpCancel { id } => {
                if let Some(c) = self.http.remove(id) {
                    c.abort();
                }
            }
            Output::FetchManifest { url } => self.fetch_manifest(url),
            Output::SegmentReady {
                url,
                seq,
                data,
                http_bytes,
                p2p_bytes,
            } => {
                for w in self.take_waiters(&url) {
                    self.deferred
                        .push((w.resolve, Uint8Array::from(&data[..]).into()));
                }
                let len = data.len() as u64;
                self.emit("segment", || {
                    obj(&[
                        ("seq", num(seq)),
                        ("url", url.into()),
                        ("bytes", num(len)),
                        ("httpBytes", num(http_bytes)),
                        ("p2pBytes", num(p2p_bytes)),
                    ])
                });
            }
            Output::WantFailed { url } => self.reject_url(&url, "not available"),
            Output::Event(ev) => self.on_event(ev),
        }
    }

    /// Tells the core how far the send buffers that held bytes have drained (see
    /// [`BUFFERED_POLL_MS`]).
    fn poll_buffered(&mut self) {
        for conn in std::mem::take(&mut self.draining) {
            let Some(c) = self.conns.get(conn) else {
                continue;
            };
            let amount = c.dc.buffered_amount() as usize;
            if amount > 0 {
                self.draining.push(conn);
            }
            self.feed(Input::RtcBuffered { conn, amount });
        }
    }

    /// Drains the deferred outputs in a task of their own (a 0 ms timeout).
    fn resume_soon(&mut self) {
        let (Some(w), None) = (window(), self.resume) else {
            return;
        };
        if let Some(cb) = &self.resume_cb {
            self.resume = w
                .set_timeout_with_callback_and_timeout_and_arguments_0(
                    cb.as_ref().unchecked_ref(),
                    0,
                )
                .ok();
        }
    }

    fn arm_timer(&mut self) {
        let Some(w) = window() else { return };
        let now = self.now();
        let core_at = self.core.as_ref().and_then(|c| c.poll_timeout());
        // While a send buffer drains, wake within BUFFERED_POLL_MS to look at it.
        let poll_at = (!self.draining.is_empty()).then(|| Time(now.0 + BUFFERED_POLL_MS * 1000));
        let target = match (core_at, poll_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Most inputs (a chunk, a buffer report) leave the core's next timer where it was:
        // keep the armed timer when it fires no later than needed (firing early is harmless:
        // the callback polls the buffers and feeds `Timeout` only when the core's is due),
        // instead of clearing and setting a browser timer per input.
        if self.timer.is_some() && self.timer_at.is_some_and(|t| target.is_none_or(|g| t <= g)) {
            return;
        }
        if let Some(t) = self.timer.take() {
            w.clear_timeout_with_handle(t);
        }
        self.timer_at = target;
        let Some(at) = target else {
            return;
        };
        let ms = at.as_micros().saturating_sub(now.as_micros()) / 1000 + 1;
        let ms = ms.min(60_000) as i32;
        if let Some(cb) = &self.timer_cb {
            self.timer = w
                .set_timeout_with_callback_and_timeout_and_arguments_0(
                    cb.as_ref().unchecked_ref(),
                    ms,
                )
                .ok();
        }
    }

    // ------------------------------------------------------------ signaling

    fn connect_ws(&mut self) {
        self.ws = None;
        let urls = &self.opts.signal;
        let pick = self.core.as_ref().map_or(0, |c| c.signal_server() as usize);
        let Some(ws) = urls
            .get(pick % urls.len().max(1))
            .and_then(|u| WebSocket::new(u).ok())
        else {
            return self.feed(Input::SignalClosed);
        };
        self.ws_serial += 1;
        let serial = self.ws_serial;
        // Events of this socket only, while it is the current one.
        let on = |input: fn(JsValue) -> Option<Input>| -> Cb {
            let me = self.me.clone();
            Closure::new(move |ev: JsValue| {
                let Some(input) = input(ev) else { return };
                with_weak(&me, |i| {
                    if i.ws_serial != serial || i.ws.is_none() {
                        return;
                    }
                    if matches!(input, Input::SignalClosed) {
                        i.ws = None;
                    }
                    i.feed(input);
                })
            })
        };
        let on_open = on(|_| Some(Input::SignalOpened));
        // A message we cannot decode is ignored: a server we do not understand at all never
        // says `welcome`, and the core's connect timeout reconnects.
        let on_msg = on(|ev| {
            let text = ev.unchecked_into::<MessageEvent>().data().as_string()?;
            json::server_msg(&text).map(Input::SignalMessage)
        });
        let on_close = on(|_| Some(Input::SignalClosed));
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_msg.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        ws.set_onerror(Some(on_close.as_ref().unchecked_ref()));
        self.ws = Some(Ws {
            ws,
            _cbs: [on_open, on_msg, on_close],
        });
    }

    // ------------------------------------------------------------ the player

    /// Removes the waiters for `url`.
    fn take_waiters(&mut self, url: &str) -> Vec<Waiter> {
        let (hit, keep) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.url == url);
        self.waiters = keep;
        hit
    }

    fn reject_url(&mut self, url: &str, why: &str) {
        for w in self.take_waiters(url) {
            self.deferred.push((w.reject, js_err(why)));
        }
    }

    /// The core says goodbye and closes everything; then every handle is dropped.
    fn destroy(&mut self) {
        self.feed(Input::Close);
        self.drain();
        self.destroyed = true;
        self.ws = None;
        self.conns.clear();
        self.draining.clear();
        self.sent.clear();
        self.deferred_out.clear();
        for (_, c) in self.http.take_all() {
            c.abort();
        }
        if let Some(w) = window() {
            if let Some(t) = self.timer.take() {
                w.clear_timeout_with_handle(t);
            }
            if let Some(t) = self.tick.take() {
                w.clear_interval_with_handle(t);
            }
            if let Some(t) = self.resume.take() {
                w.clear_timeout_with_handle(t);
            }
        }
        for w in std::mem::take(&mut self.waiters) {
            self.deferred.push((w.reject, js_err("destroyed")));
        }
        self.listeners.clear();
        self.core = None;
    }
}

/// A viewer's P2P peer. Create one per stream; call `playlistLoaded` on every (re)load of the
/// media playlist, then `fetchSegment` for each media segment.
#[wasm_bindgen]
pub struct P2pPeer {
    inner: Shared,
}

#[wasm_bindgen]
impl P2pPeer {
    /// Options: `signal` (WebSocket URL of the signaling server; without it, HTTP only),
    /// `swarm` (swarm id override), `integrity` (URL of the operator's integrity service, for
    /// streams without a sidecar manifest), `token` (join token), `iceServers` (RTCIceServer[];
    /// default: the signaling server's), `iceTransportPolicy` (`"relay"`: TURN only),
    /// `uploadCap` (bytes/s), `p2p` (default true), `upload` (default true; false: download
    /// only), `cacheBytes` (segment store cap, at least 1 MiB), `consent` (default true; false
    /// disables P2P), `maxPeers`.
    #[wasm_bindgen(constructor)]
    pub fn new(opts: JsValue) -> P2pPeer {
        let opts = Opts::parse(&opts);
        // A bug must be visible: log panics (the module is unusable afterwards, and the JS
        // side falls back to the player's own loader). The message and the location go to the
        // console as separate values: `format!("{info}")` would link the hook's own
        // formatting code into the bundle.
        std::panic::set_hook(Box::new(|info| {
            let (file, line) = info.location().map_or(("", 0), |l| (l.file(), l.line()));
            web_sys::console::error_4(
                &JsValue::from_str("p2p-cdn: panic"),
                &JsValue::from_str(info.payload_as_str().unwrap_or("")),
                &JsValue::from_str(file),
                &JsValue::from_f64(line.into()),
            );
        }));
        let inner = Rc::new_cyclic(|me: &Weak<RefCell<Inner>>| {
            RefCell::new(Inner {
                me: me.clone(),
                opts,
                t0: perf_now(),
                core: None,
                ws: None,
                ws_serial: 0,
                welcome_ice: JsValue::UNDEFINED,
                conns: IdMap::default(),
                sent: Vec::new(),
                draining: Vec::new(),
                http: IdMap::default(),
                waiters: Vec::new(),
                listeners: Vec::new(),
                deferred: Vec::new(),
                timer: None,
                timer_at: None,
                deferred_out: Default::default(),
                resume: None,
                resume_cb: None,
                timer_cb: None,
                tick: None,
                tick_cb: None,
                banned: Vec::new(),
                destroyed: false,
                generation: 0,
                playlist_path: String::new(),
                past: peer_core::Stats::default(),
                last_manifest: None,
            })
        });
        {
            let mut g = inner.borrow_mut();
            let me = g.me.clone();
            g.timer_cb = Some(Closure::new(move |_| {
                with_weak(&me, |i| {
                    i.timer = None;
                    i.poll_buffered();
                    // Woken early to poll the send buffers: the core's timers are not due.
                    let now = i.now();
                    if i.core
                        .as_ref()
                        .and_then(|c| c.poll_timeout())
                        .is_some_and(|at| at <= now)
                    {
                        i.feed(Input::Timeout);
                    }
                })
            }));
            let me = g.me.clone();
            // `with` drains the deferred outputs.
            g.resume_cb = Some(Closure::new(move |_| with_weak(&me, |i| i.resume = None)));
            let me = g.me.clone();
            let tick: Cb = Closure::new(move |_| with_weak(&me, |i| i.on_tick()));
            if let Some(w) = window() {
                g.tick = w
                    .set_interval_with_callback_and_timeout_and_arguments_0(
                        tick.as_ref().unchecked_ref(),
                        TICK_MS,
                    )
                    .ok();
            }
            g.tick_cb = Some(tick);
        }
        P2pPeer { inner }
    }

    /// The media playlist at `url` was loaded or refreshed: the first call creates the core
    /// (joins the swarm, polls the playlist's integrity manifest).
    #[wasm_bindgen(js_name = playlistLoaded)]
    pub fn playlist_loaded(&self, url: &str, stream: Option<String>) {
        with(&self.inner, |i| i.ensure_core(url, stream.as_deref()));
    }

    /// Resolves with the verified bytes (`Uint8Array`) of the segment at `url`; `opts.sn` is its
    /// media sequence number (else looked up in the manifest by URL), `opts.deadline` the
    /// milliseconds until the player needs it, `opts.duration` its duration in seconds. Rejects
    /// when P2P cannot handle it: load it another way.
    #[wasm_bindgen(js_name = fetchSegment)]
    pub fn fetch_segment(&self, url: &str, opts: JsValue) -> Promise {
        let get = |k: &str| {
            Reflect::get(&opts, &JsValue::from_str(k))
                .ok()
                .and_then(|v| v.as_f64())
                .filter(|x| x.is_finite() && *x >= 0.0)
        };
        let seq = get("sn").filter(|x| x.fract() == 0.0).map(|x| x as u64);
        // `as` saturates (no panic path in the bundle, unlike `Duration::from_secs_f64`).
        let micros = |x: f64| Duration::from_micros(x as u64);
        let deadline = micros(get("deadline").unwrap_or(6000.0) * 1e3);
        let duration = micros(get("duration").unwrap_or(0.0) * 1e6);
        let inner = self.inner.clone();
        let url = url.to_string();
        Promise::new(&mut |resolve, reject| {
            let mut taken = false;
            with(&inner, |i| {
                taken = true;
                if i.core.is_none() {
                    i.deferred.push((reject.clone(), js_err("no playlist yet")));
                    return;
                }
                if i.waiters.len() >= MAX_WAITERS {
                    let old = i.waiters.remove(0);
                    i.deferred.push((old.reject, js_err("superseded")));
                }
                i.waiters.push(Waiter {
                    url: url.clone(),
                    resolve: resolve.clone(),
                    reject: reject.clone(),
                });
                let deadline = i.now() + deadline;
                let url = url.clone();
                i.feed(Input::Want {
                    url,
                    seq,
                    deadline,
                    duration,
                });
            });
            if !taken {
                let _ = reject.call1(&JsValue::NULL, &js_err("peer destroyed"));
            }
        })
    }

    /// The player no longer needs the segment at `url` (abort, seek): its pending promises
    /// reject.
    pub fn cancel(&self, url: &str) {
        with(&self.inner, |i| {
            i.reject_url(url, "cancelled");
            i.feed(Input::Cancel {
                url: url.to_string(),
            });
        });
    }

    /// A fresh join token (before the old one expires): used at every join from now on.
    #[wasm_bindgen(js_name = setToken)]
    pub fn set_token(&self, token: Option<String>) {
        with(&self.inner, |i| {
            let token = token.filter(|t| !t.is_empty());
            i.opts.token.clone_from(&token);
            i.feed(Input::SetToken { token });
        });
    }

    /// The player stalled.
    #[wasm_bindgen(js_name = reportStall)]
    pub fn report_stall(&self) {
        with(&self.inner, |i| i.feed(Input::Stall));
    }

    /// Listens to `segment`, `chunk`, `upload`, `peer`, `integrity`, `stats` (every second) or
    /// `error`.
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

    /// Says goodbye to the swarm, closes every connection and request; pending promises
    /// reject.
    pub fn destroy(&self) {
        with(&self.inner, Inner::destroy);
    }
}
