// P2P CDN: the hls.js integration (Peer, attach, loader), written once for both builds.
// `cargo xtask wasm` wraps it for the script tag (`dist/p2p-cdn.js`: wasm-bindgen's
// `no-modules` glue, this file, then `script-tag.js`, which finds the wasm through
// `document.currentScript` and sets `window.P2PCDN`); `cargo xtask pack` for the npm package
// (`p2p-cdn.mjs`: the `web` glue, this file, then `esm.js`, which locates the wasm by
// `import.meta.url` or the `wasmUrl` option and exports the API).
//
//   <script src="hls.min.js"></script>
//   <script src="p2p-cdn.js" data-signal="wss://signal.example/ws"></script>
//   P2PCDN.attach(hls, video);                   // one line for an existing hls.js instance
//   <video data-p2p-src="https://cdn.example/live/index.m3u8" muted autoplay></video>  // auto
//
// Nothing here may break playback: every fragment P2P cannot deliver (not ready, unknown
// segment, error, too late) is loaded by hls.js's own loader (or the site's `fLoader`).
//
// `W`: the wasm module (`init(url)` → a promise, `P2pPeer`). `env`: what the build knows about
// its surroundings: `wasmUrl` (default location of the wasm; undefined: the glue's own),
// `signal`/`token` (defaults of the options), `global` (where `Hls` may be, for autoAttach).
function p2pCdn(W, env) {
  "use strict";
  var global = env.global;
  var wasmReady = null;

  // Instantiates the wasm module once; the first caller's `wasmUrl` wins.
  function init(wasmUrl) {
    if (!wasmReady) wasmReady = W.init(wasmUrl || env.wasmUrl);
    return wasmReady;
  }

  // `debug: true`: the peer's events, fallbacks and toggles go to the console (console.debug).
  function debugLog(on, what, data) {
    if (on) console.debug("p2p-cdn: " + what, data);
  }

  var QUIET = { stats: 1, chunk: 1, upload: 1 };

  // A peer usable synchronously: calls made before the wasm module is ready are replayed.
  // `handlers`: shared with the page's main peer by the peers of its other media playlists.
  function Peer(opts, handlers) {
    opts = Object.assign({ signal: env.signal, token: env.token }, opts || {});
    var self = this;
    this.opts = opts;
    this.inner = null;
    this.destroyed = false;
    this.playlist = null;
    this.stream = undefined;
    // The player has played (a first `playing`; set by `attach`): see `deadlineMs`.
    this.started = false;
    // The page's listeners by event name. Each wasm peer (current rendition, kept ones) gets
    // one dispatcher per name that calls the current list: `off` then applies to all of them,
    // and to the peers of the page's other media playlists, which share this map.
    this.handlers = handlers || {};
    // Peers of the page's other media playlists, by hls.js fragment type ("audio").
    this.subs = {};
    // Video renditions played lately (an ABR switch away): each keeps its own core, swarm and
    // connections for WARM_MS, most recent first, at most WARM_MAX. `inner` is the current one.
    this.warm = [];
    // Byte counters of the renditions' peers already closed (the page's totals keep them).
    this.retired = {};
    this.ready = init(opts.wasmUrl).then(function () {
      if (self.destroyed) return null;
      self.inner = self.make();
      if (self.playlist) self.inner.playlistLoaded(self.playlist, self.stream);
      return self;
    });
  }
  // A wasm peer with the current options and this page's dispatchers.
  Peer.prototype.make = function () {
    var inner = new W.P2pPeer(this.opts);
    for (var name in this.handlers) inner.on(name, this.dispatcher(name));
    return inner;
  };
  Peer.prototype.dispatcher = function (name) {
    var self = this;
    return function (e) { self.emit(name, e); };
  };
  // Every wasm peer of the page: current rendition, kept ones, other media playlists'.
  Peer.prototype.eachInner = function (fn) {
    if (this.inner) fn(this.inner);
    this.warm.forEach(function (w) { fn(w.inner); });
    for (var k in this.subs) this.subs[k].eachInner(fn);
  };
  Peer.prototype.on = function (name, fn) {
    var list = this.handlers[name];
    if (!list) {
      list = this.handlers[name] = [];
      var self = this;
      this.eachInner(function (inner) { inner.on(name, self.dispatcher(name)); });
    }
    list.push(fn);
  };
  // Removes a listener added with `on` (the same function); without `fn`, all of `name`'s.
  Peer.prototype.off = function (name, fn) {
    var list = this.handlers[name];
    if (!list) return;
    for (var i = list.length - 1; i >= 0; i--) if (!fn || list[i] === fn) list.splice(i, 1);
  };
  // Calls `name`'s listeners. One that throws neither stops the others nor the peer: its
  // exception goes to the `error` listeners (whose own exceptions are dropped: no loop).
  Peer.prototype.emit = function (name, e) {
    // Not the per-second and per-chunk ones: they would bury the rest.
    if (!QUIET[name]) debugLog(this.opts.debug, name, e);
    var list = (this.handlers[name] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try {
        list[i](e);
      } catch (err) {
        if (name !== "error") this.emit("error", { code: "listener", error: err });
      }
    }
  };
  // The peer for fragments of hls.js type `kind`: this one for the main (video) playlist, a
  // second one (its own core, swarm and signaling connection) for the audio playlist. Each
  // media playlist is its own swarm: its segments share sequence numbers with the others' but
  // not their bytes. Subtitles stay on HTTP (a few hundred bytes per segment).
  Peer.prototype.forKind = function (kind) {
    if (!kind || kind === "main") return this;
    if (kind !== "audio" || this.destroyed) return null;
    var sub = this.subs[kind];
    if (!sub) {
      var o = Object.assign({}, this.opts);
      if (o.swarm) o.swarm += "|" + kind;
      sub = this.subs[kind] = new Peer(o, this.handlers);
    }
    return sub;
  };
  // Runs a page's hook: an exception in it is reported as an `error` event and never stops the
  // fragment on its way to the player.
  Peer.prototype.safely = function (hook, args) {
    if (typeof hook !== "function") return;
    try {
      hook.apply(null, args);
    } catch (e) {
      this.emit("error", { code: "hook", error: e });
    }
  };
  // An ABR switch moves the page into the new rendition's swarm; the rendition it leaves stays
  // joined for WARM_MS (at most WARM_MAX of them), still serving its swarm, so that switching
  // back (ABR flaps between neighbouring levels) finds its connections and store ready instead
  // of joining again, which costs a second or two of fragments over HTTP each time. Measured in
  // `ladder_from_a_third_party_origin_with_the_integrity_service` (6 pages, a forced switch every
  // 7.5 s): see docs/ARCHITECTURE.md. p2p-media-loader v2 keeps idle streams' loaders 30 s too.
  // A kept rendition stays a full member (it keeps fetching the live edge): one that only did
  // its seeding duty, or nothing, measured worse (docs/ARCHITECTURE.md).
  var WARM_MS = 30000;
  var WARM_MAX = 2;
  function pathOf(url) { return String(url).split(/[?#]/)[0]; }
  // Byte counters a page's totals sum over its swarms; `peers`/`connections` are live figures.
  var BYTE_COUNTERS = ["httpBytes", "p2pBytes", "deliveredHttpBytes", "deliveredP2pBytes", "uploadedBytes",
    "segments", "integrityFailures", "peersBanned", "stalls", "httpRequests"];

  // `stream`: the multivariant playlist's URL, when the player loaded one (the swarm is
  // stream | rendition).
  Peer.prototype.playlistLoaded = function (url, stream) {
    var s = stream || undefined;
    if (this.inner && this.playlist && !this.opts.swarm && pathOf(url) !== pathOf(this.playlist)) {
      this.switchTo(url, s);
      return;
    }
    this.playlist = url;
    this.stream = s;
    if (this.inner) this.inner.playlistLoaded(url, s);
  };
  // Index in `warm` of the kept peer of the playlist at `url` (-1: none).
  Peer.prototype.warmIndex = function (url) {
    var path = pathOf(url);
    for (var i = 0; i < this.warm.length; i++) if (pathOf(this.warm[i].playlist) === path) return i;
    return -1;
  };
  Peer.prototype.switchTo = function (url, stream) {
    var self = this;
    var i = this.warmIndex(url);
    var next = i >= 0 ? this.warm.splice(i, 1)[0] : null;
    this.warm.unshift({ inner: this.inner, playlist: this.playlist, stream: this.stream, until: Date.now() + WARM_MS });
    while (this.warm.length > WARM_MAX) this.retire(this.warm.pop());
    if (next) {
      this.inner = next.inner;
    } else {
      this.inner = this.make();
    }
    this.playlist = url;
    this.stream = stream;
    this.inner.playlistLoaded(url, stream);
    setTimeout(function () { self.expire(); }, WARM_MS + 100);
  };
  Peer.prototype.expire = function () {
    var now = Date.now();
    var keep = [];
    for (var i = 0; i < this.warm.length; i++) {
      if (this.warm[i].until > now && !this.destroyed) keep.push(this.warm[i]);
      else this.retire(this.warm[i]);
    }
    this.warm = keep;
  };
  Peer.prototype.retire = function (w) {
    var st = w.inner.stats();
    var r = this.retired;
    if (st) BYTE_COUNTERS.forEach(function (f) { r[f] = (r[f] || 0) + (st[f] || 0); });
    w.inner.destroy();
    w.inner.free();
  };
  // The peer of the playlist a fragment came from: the current rendition's, or one kept warm.
  Peer.prototype.innerFor = function (playlist) {
    var i = playlist && this.playlist && pathOf(playlist) !== pathOf(this.playlist) ? this.warmIndex(playlist) : -1;
    if (i < 0) return this.inner;
    this.warm[i].until = Date.now() + WARM_MS;
    return this.warm[i].inner;
  };
  Peer.prototype.usable = function () {
    return !!this.inner && !!this.playlist && !this.destroyed && this.opts.p2p !== false && this.opts.consent !== false;
  };
  // `playlist`: the media playlist the segment is listed in (hls.js's `frag.baseurl`).
  Peer.prototype.fetchSegment = function (url, opts, playlist) {
    if (!this.inner) return Promise.reject(new Error("p2p not ready"));
    return this.innerFor(playlist).fetchSegment(url, opts || {});
  };
  Peer.prototype.cancel = function (url) {
    if (this.inner) this.inner.cancel(url);
    this.warm.forEach(function (w) { w.inner.cancel(url); });
  };
  Peer.prototype.reportStall = function () { if (this.inner) this.inner.reportStall(); };
  // A fresh join token (tokens are short-lived: a site refreshes it before it expires, or on an
  // `error` event with code "unauthorized"): every swarm of the page joins with it from now on.
  Peer.prototype.setToken = function (token) {
    this.opts.token = token;
    if (this.inner) this.inner.setToken(token);
    this.warm.forEach(function (w) { w.inner.setToken(token); });
    for (var k in this.subs) this.subs[k].setToken(token);
  };
  // Turns P2P off at runtime (the page leaves its swarms, closes its connections, serves
  // nobody, and every fragment goes to the player's loader) or back on (joins again). The
  // counters so far stay in `stats()`.
  Peer.prototype.setP2P = function (on) {
    on = on !== false;
    if (this.destroyed || (this.opts.p2p !== false) === on) return;
    debugLog(this.opts.debug, on ? "P2P on" : "P2P off", this.playlist);
    this.opts.p2p = on;
    for (var k in this.subs) this.subs[k].setP2P(on);
    // Not ready yet: `ready` makes the wasm peer with the option as it is then.
    if (!this.inner) return;
    var self = this;
    this.warm.forEach(function (w) { self.retire(w); });
    this.warm = [];
    this.retire({ inner: this.inner });
    // An HTTP-only peer when off (no signaling, no connections), so stats keep working.
    this.inner = this.make();
    if (this.playlist) this.inner.playlistLoaded(this.playlist, this.stream);
  };
  // The current rendition's stats, with the byte counters of the renditions played before
  // (kept warm or closed) added.
  Peer.prototype.stats = function () {
    if (!this.inner) return null;
    var t = this.inner.stats();
    if (!t) return t;
    var extra = [this.retired];
    this.warm.forEach(function (w) { extra.push(w.inner.stats() || {}); });
    extra.forEach(function (e) {
      BYTE_COUNTERS.forEach(function (f) { t[f] = (t[f] || 0) + (e[f] || 0); });
    });
    t.warmSwarms = this.warm.length;
    return t;
  };
  // Stats of each swarm the page is in: `{main: .., audio: ..}` (null until ready).
  Peer.prototype.swarmStats = function () {
    var out = { main: this.stats() };
    for (var k in this.subs) out[k] = this.subs[k].stats();
    return out;
  };
  // The page's totals over its swarms (byte counters, peers and connections summed; `peerId`
  // and `originBps` are the main peer's).
  var SUMMED = ["httpBytes", "p2pBytes", "deliveredHttpBytes", "deliveredP2pBytes", "uploadedBytes",
    "segments", "integrityFailures", "peersBanned", "stalls", "httpRequests", "peers", "connections"];
  Peer.prototype.totals = function () {
    var all = this.swarmStats();
    var t = all.main;
    if (!t) return null;
    t.banned = (t.banned || []).slice();
    for (var k in all) {
      var s = all[k];
      if (k === "main" || !s) continue;
      SUMMED.forEach(function (f) { t[f] = (t[f] || 0) + (s[f] || 0); });
      t.banned = t.banned.concat(s.banned || []);
    }
    var d = t.deliveredHttpBytes + t.deliveredP2pBytes;
    t.offload = d > 0 ? t.deliveredP2pBytes / d : 0;
    return t;
  };
  Peer.prototype.destroy = function () {
    this.destroyed = true;
    if (this.inner) { this.inner.destroy(); this.inner.free(); this.inner = null; }
    var self = this;
    this.warm.forEach(function (w) { self.retire(w); });
    this.warm = [];
    for (var k in this.subs) this.subs[k].destroy();
  };

  // Clears a loader's stats in place. hls.js keeps a reference to `loader.stats` taken right
  // after it constructs the loader (`frag.stats = loader.stats`) and computes its bandwidth
  // samples from that object: replacing it (as this loader once did) left hls.js reading an
  // untouched object, its estimate went to NaN and ABR down-switched.
  function resetStats(st) {
    st.aborted = false;
    st.loaded = st.retry = st.total = st.chunkCount = st.bwEstimate = 0;
    st.loading = st.loading || {};
    st.parsing = st.parsing || {};
    st.buffering = st.buffering || {};
    st.loading.start = st.loading.first = st.loading.end = 0;
    st.parsing.start = st.parsing.end = 0;
    st.buffering.start = st.buffering.first = st.buffering.end = 0;
    return st;
  }

  // Milliseconds until the player needs the fragment: playback reaches its start (or the end
  // of the contiguous buffer, if that comes first). Before playback starts: now-ish (1 s).
  // A deadline of 0 until the first `playing` (and while playing is stuck for data) was tried
  // for startup (issue 16) and reverted: the VOD swarm of
  // `vod_seeks_and_byte_ranges_from_a_third_party_origin` fell from 0.650 offload to 0.483
  // (0.505 with the "stuck" part alone removed), below its bound of 0.6, because a VOD page
  // loads many fragments before its first `playing`. `started` stays for a narrower rule.
  var APPEND_MARGIN_MS = 500;
  function deadlineMs(frag, video) {
    if (!video || video.readyState < 3 || video.paused) return 1000;
    var t = video.currentTime;
    var end = t;
    var b = video.buffered;
    for (var i = 0; i < b.length; i++) {
      if (b.start(i) <= t + 0.1 && b.end(i) > end) end = b.end(i);
    }
    var until = Math.min(frag.start, end) - t;
    var rate = video.playbackRate > 0 ? video.playbackRate : 1;
    // The player needs the bytes before playback reaches them: demux + append take time.
    return Math.max(300, Math.min(60000, (until * 1000) / rate - APPEND_MARGIN_MS));
  }

  // A loader class for hls.js's `fLoader`: fragments through the peer, everything else (and
  // every failure) through hls.js's default loader.
  // hls.js estimates bandwidth from each fragment's timing (bytes over loading start → end):
  // a fragment that waited for peers would read as a slow network and cause needless
  // down-switches, and one that came at once from a peer as a fast one. A P2P fragment is
  // therefore reported as if it had loaded at the origin's throughput, which the peer measures
  // on its own origin requests (it fetches parts of segments from the origin all the time):
  // that is the network the player falls back to. `estimate()` gives it in bits/s (hls.js's own
  // estimate until the peer has measured).
  function neutralTiming(stats, bytes, estimate, now) {
    var bps = estimate ? estimate() : 0;
    if (!(bps > 0)) bps = 500000;
    var ms = Math.max(1, (bytes * 8 * 1000) / bps);
    stats.loading.start = stats.loading.first = now - ms;
    stats.loading.end = now;
    stats.bwEstimate = bps;
  }

  // `Base`: the loader for everything P2P does not deliver (default: hls.js's own).
  function makeLoader(Hls, peer, video, hooks, estimate, Base) {
    Base = Base || Hls.DefaultConfig.loader;
    function P2PLoader(config) {
      this.config = config;
      this.inner = new Base(config);
      this.stats = this.inner.stats;
      this.context = null;
      this.callbacks = null;
      this.pending = false;
      this.url = null;
      this.timer = null;
    }
    P2PLoader.prototype.load = function (context, config, callbacks) {
      var frag = context.frag;
      var self = this;
      if (hooks && hooks.onLoaded) {
        // Every fragment hls.js is given, whichever loader fetched it (read before hls.js
        // transfers the buffer to its worker). A throwing hook never stops the fragment.
        var given = callbacks;
        callbacks = Object.assign({}, given, {
          onSuccess: function (resp, stats, ctx, net) {
            peer.safely(hooks.onLoaded, [ctx.frag, ctx.url, resp.data]);
            given.onSuccess(resp, stats, ctx, net);
          },
        });
      }
      var sn = frag && typeof frag.sn === "number" ? frag.sn : null;
      var ranged = context.rangeStart || context.rangeEnd;
      // Each fragment goes to the peer of its own media playlist (main video, audio), whose
      // swarm and manifest are that playlist's: the core also refuses a URL that is not the
      // one its manifest lists for `sn`. Subtitles, byte ranges and init segments: HTTP.
      var own = frag ? peer.forKind(frag.type) : null;
      if (sn === null || ranged || !own || !own.usable()) {
        this.inner.load(context, config, callbacks);
        this.stats = this.inner.stats;
        return;
      }
      this.context = context;
      this.callbacks = callbacks;
      this.url = context.url;
      this.pending = true;
      var stats = resetStats(this.stats);
      stats.loading.start = performance.now();
      var deadline = deadlineMs(frag, video);
      var fallback = function (err) {
        if (!self.pending) return;
        self.pending = false;
        clearTimeout(self.timer);
        own.cancel(context.url);
        var why = err ? String(err.message || err) : "timeout";
        debugLog(peer.opts.debug, "fallback to HTTP", { sn: sn, why: why });
        if (hooks) peer.safely(hooks.onFallback, [sn, why]);
        // hls.js's loaders refuse a second load once `stats.loading.start` is set ("Loader can
        // only be used once"): the P2P attempt set it on the shared stats object, so clear it.
        resetStats(self.stats);
        self.inner.load(context, config, callbacks);
        self.stats = self.inner.stats;
      };
      // Safety net: the core already falls back to HTTP before the deadline; this only
      // catches a stuck driver.
      this.timer = setTimeout(fallback, Math.max(deadline, 2000) + 4000);
      this.own = own;
      own.fetchSegment(context.url, { sn: sn, deadline: deadline, duration: frag.duration }, frag.baseurl).then(function (bytes) {
        if (!self.pending) return;
        self.pending = false;
        clearTimeout(self.timer);
        var now = performance.now();
        neutralTiming(stats, bytes.byteLength, estimate, now);
        stats.loaded = stats.total = bytes.byteLength;
        if (hooks) peer.safely(hooks.onFragment, [sn, bytes]);
        callbacks.onSuccess({ url: context.url, data: bytes.buffer }, stats, context, null);
      }, fallback);
    };
    P2PLoader.prototype.abort = function () {
      if (this.pending) {
        this.pending = false;
        clearTimeout(this.timer);
        this.own.cancel(this.url);
        this.stats.aborted = true;
        if (this.callbacks && this.callbacks.onAbort) this.callbacks.onAbort(this.stats, this.context, null);
      } else {
        this.inner.abort();
      }
    };
    P2PLoader.prototype.destroy = function () {
      if (this.pending) { this.pending = false; clearTimeout(this.timer); this.own.cancel(this.url); }
      this.callbacks = null;
      this.inner.destroy();
    };
    // Marks it for `attach`, which must not wrap it in a second P2P loader.
    P2PLoader.p2pBase = Base;
    return P2PLoader;
  }

  // Wires a peer into an hls.js instance (before or after loadSource). Returns the peer.
  function attach(hls, video, opts) {
    var Hls = hls.constructor;
    opts = opts || {};
    // The site's hook for requests to its origin (auth headers, rewritten URLs) applies to the
    // peer's own origin requests too.
    if (!opts.fetchSetup && hls.config && typeof hls.config.fetchSetup === "function") {
      opts = Object.assign({}, opts, { fetchSetup: hls.config.fetchSetup });
    }
    var peer = opts.peer || new Peer(opts);
    // The site's own fragment loader (or its `loader`) keeps loading what P2P does not deliver:
    // init segments, subtitles, byte ranges, fallbacks, everything while P2P is off.
    var site = hls.config.fLoader;
    var Base = site ? site.p2pBase || site : hls.config.loader;
    // Installed even with `p2p: false`, so that `setP2P(true)` can turn it on later.
    hls.config.fLoader = makeLoader(Hls, peer, video, opts, function () {
      var s = peer.stats();
      return s && s.originBps > 0 ? s.originBps : hls.bandwidthEstimate;
    }, Base);
    hls.on(Hls.Events.LEVEL_LOADED, function (_e, data) {
      if (data && data.details && data.details.url) peer.playlistLoaded(data.details.url, hls.url);
    });
    hls.on(Hls.Events.AUDIO_TRACK_LOADED, function (_e, data) {
      var audio = peer.forKind("audio");
      if (audio && data && data.details && data.details.url) audio.playlistLoaded(data.details.url, hls.url);
    });
    if (video) {
      video.addEventListener("playing", function () { peer.started = true; });
      video.addEventListener("waiting", function () { if (peer.started) peer.reportStall(); });
    }
    hls.on(Hls.Events.DESTROYING, function () { peer.destroy(); });
    return peer;
  }

  // `<video data-p2p-src=...>`: hls.js where MSE exists, native HLS otherwise (no P2P).
  // `Hls`: the hls.js class (default: the page's global `Hls`).
  function autoAttach(Hls) {
    Hls = Hls || global.Hls;
    var videos = document.querySelectorAll("video[data-p2p-src]");
    for (var i = 0; i < videos.length; i++) {
      var v = videos[i];
      var src = v.getAttribute("data-p2p-src");
      if (Hls && Hls.isSupported()) {
        var hls = new Hls();
        v.p2p = attach(hls, v, {});
        v.hls = hls;
        hls.loadSource(src);
        hls.attachMedia(v);
      } else {
        v.src = src;
      }
    }
  }

  return {
    Peer: Peer,
    attach: attach,
    loader: makeLoader,
    autoAttach: autoAttach,
    ready: init,
  };
}
