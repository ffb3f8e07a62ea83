// Demo page: plays `?src=` with hls.js + the P2P loader and shows a live panel.
// Query: src (playlist URL), signal (WebSocket URL), integrity (integrity service URL), p2p=0 (HTTP only), relay=1 (TURN only), token (join token), tamper=1 (debug:
// corrupt uploads), throw=1 (test: the page's hook and a listener throw), switch=N (force a level switch every N s, auto ABR in between), seek=T1,T2 (seeks, 8 s apart), report=1 (POST stats to /report every second, for the browser tests and
// p2pcdn-load --browsers), reportTo (URL to POST them to instead, for a page served elsewhere).
(function () {
  "use strict";
  var q = new URLSearchParams(location.search);
  var src = q.get("src") || "/live/sample/index.m3u8";
  var signal = q.get("signal") || undefined;
  // The operator's integrity service, for a stream whose origin publishes no sidecar.
  var integrity = q.get("integrity") || undefined;
  var p2p = q.get("p2p") !== "0";
  // relay=1: connect to peers through TURN only (the ICE servers come from signaling).
  var relay = q.get("relay") === "1";
  var tamper = q.get("tamper") === "1";
  var report = q.get("report") === "1";
  var reportTo = q.get("reportTo") || "/report";
  var throwing = q.get("throw") === "1";
  var pageId = q.get("id") || String(Math.random()).slice(2, 8);
  var video = document.getElementById("video");
  document.getElementById("src").textContent = src + (p2p ? "" : " (P2P off)") + (tamper ? " (TAMPER)" : "");

  var m = {
    id: pageId, p2p: p2p, tamper: tamper, started: false, currentTime: 0, waiting: 0, fatal: [],
    bufferStalled: 0, p2pFragments: {}, fragments: {}, fragmentCount: 0, levelSwitches: 0, fallbacks: 0, httpLoaderBytes: 0, stats: null,
    peerEvents: [], bytesBy: {}, integrity: 0, segments: 0, errors: [], fallbackWhy: [], errorEvents: 0,
  };
  // Page errors (including a wasm panic, logged with console.error) go into the report.
  function noteError(msg) { if (m.errors.length < 20) m.errors.push(String(msg).slice(0, 500)); }
  window.addEventListener("error", function (e) { noteError(e.message); });
  window.addEventListener("unhandledrejection", function (e) { noteError(e.reason && e.reason.stack || e.reason); });
  var consoleError = console.error;
  console.error = function () { noteError(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
  // Main-thread long tasks (> 50 ms; `longTaskMs`: the longest, `longTasks`: how many) and, from
  // long animation frames, the longest single script run (> 5 ms) by whose script it was:
  // `longScripts.p2p` is the bundle's (p2p-cdn.js and the wasm it calls), `.hls` hls.js's,
  // `.demo` this page's. Read by `cargo xtask bench browser-cpu`.
  m.longTaskMs = 0; m.longTasks = 0; m.longScripts = {};
  function observe(type, fn) {
    try { new PerformanceObserver(function (l) { l.getEntries().forEach(fn); }).observe({ type: type, buffered: true }); } catch (e) {}
  }
  observe("longtask", function (e) { m.longTasks++; m.longTaskMs = Math.max(m.longTaskMs, Math.round(e.duration)); });
  observe("long-animation-frame", function (f) {
    (f.scripts || []).forEach(function (s) {
      var u = s.sourceURL || "";
      var who = /p2p-cdn/.test(u) ? "p2p" : /hls/.test(u) ? "hls" : /app\.js/.test(u) ? "demo" : "other";
      var had = m.longScripts[who];
      if (!had || s.duration > had.ms) {
        m.longScripts[who] = { ms: Math.round(s.duration), what: s.invokerType + " " + s.invoker + " " + (s.sourceFunctionName || ""), at: Math.round(s.startTime) };
      }
    });
  });
  var hls = new Hls({ liveSyncDurationCount: 3 });
  var peer = P2PCDN.attach(hls, video, {
    signal: signal, integrity: integrity, p2p: p2p, __tamper: tamper,
    iceTransportPolicy: relay ? "relay" : undefined,
    token: q.get("token") || undefined,
    onFragment: function (sn, bytes) {
      if (throwing) throw new Error("the page's onFragment hook throws (test)");
      // Hash what hls.js is given, independently of the wasm core, so tests can compare it
      // with the origin's files.
      crypto.subtle.digest("SHA-256", bytes).then(function (h) {
        m.p2pFragments[sn] = Array.from(new Uint8Array(h)).map(function (b) { return b.toString(16).padStart(2, "0"); }).join("");
      });
    },
    onLoaded: function (frag, url, data) {
      // Every fragment hls.js is given (any rendition, audio, subtitles, init segments):
      // copied now, hashed later, so tests can compare each with the origin's file.
      if (!report || !crypto.subtle) return;
      if (frag && typeof frag.sn === "number") {
        // Media bytes hls.js received, by the folder of the fragment's URL (one per media
        // playlist in the tests' ladders): what each swarm delivered to this page.
        var path = url.split(/[?#]/)[0];
        var dir = path.slice(0, path.lastIndexOf("/"));
        dir = dir.slice(dir.lastIndexOf("/") + 1);
        m.bytesBy[dir] = (m.bytesBy[dir] || 0) + data.byteLength;
      }
      var copy = data.slice(0);
      m.fragmentCount++;
      // A byte range of a file is its own fragment: keyed `url@start-end`.
      var key = frag && frag.byteRangeEndOffset ? url + "@" + frag.byteRangeStartOffset + "-" + frag.byteRangeEndOffset : url;
      crypto.subtle.digest("SHA-256", copy).then(function (h) {
        var keys = Object.keys(m.fragments);
        if (keys.length >= 400) delete m.fragments[keys[0]];
        m.fragments[key] = Array.from(new Uint8Array(h)).map(function (b) { return b.toString(16).padStart(2, "0"); }).join("");
      });
    },
    onFallback: function (sn, why) { m.fallbacks++; if (m.fallbackWhy.length < 20) m.fallbackWhy.push(sn + ": " + why); },
  });
  hls.on(Hls.Events.FRAG_LOADED, function (_e, d) {
    if (d.frag && d.frag.stats && !m.p2pFragments.hasOwnProperty(d.frag.sn)) m.httpLoaderBytes += d.frag.stats.loaded || 0;
  });
  hls.on(Hls.Events.ERROR, function (_e, d) {
    if (d.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) m.bufferStalled++;
    if (d.fatal) { m.fatal.push(d.type + ":" + d.details); log("fatal " + d.details); }
  });
  video.addEventListener("playing", function () {
    // Startup: milliseconds from navigation to the first frame playing.
    if (!m.started) m.startupMs = Math.round(performance.now());
    m.started = true;
  });
  video.addEventListener("waiting", function () { if (m.started) m.waiting++; });
  peer.on("peer", function (e) { if (m.peerEvents.length < 200) m.peerEvents.push(e); log("peer " + e.peer + " " + e.state + (e.reason ? " (" + e.reason + ")" : "")); });
  peer.on("integrity", function (e) { m.integrity++; log("integrity failure from " + e.peer + " seq " + e.seq); });
  peer.on("segment", function (e) {
    m.segments++;
    if (throwing) throw new Error("the page's segment listener throws (test)");
  });
  peer.on("error", function (e) { m.errorEvents++; });
  var lastLevel = -1;
  hls.on(Hls.Events.LEVEL_SWITCHED, function (_e, d) {
    m.levelSwitches++;
    // Down-switches chosen by hls.js's ABR (not forced by ?switch=): a low bandwidth estimate.
    var h = hls.levels && hls.levels[d.level], l = hls.levels && hls.levels[lastLevel];
    if (h && l && h.bitrate < l.bitrate && hls.autoLevelEnabled) m.autoDownSwitches = (m.autoDownSwitches || 0) + 1;
    lastLevel = d.level;
  });
  setInterval(function () { m.bwEstimate = Math.round(hls.bandwidthEstimate || 0); }, 1000);
  // seek=T1,T2,..: once playing, seek to T1, then to each next position 8 s later (VOD tests).
  var seeks = (q.get("seek") || "").split(",").filter(function (x) { return x !== ""; }).map(Number);
  if (seeks.length) {
    var seekNext = function () {
      if (!seeks.length) return;
      m.seeks = (m.seeks || 0) + 1;
      video.currentTime = seeks.shift();
      setTimeout(seekNext, 8000);
    };
    video.addEventListener("playing", function once() {
      video.removeEventListener("playing", once);
      seekNext();
    });
  }
  var switchEvery = Number(q.get("switch") || 0);
  if (switchEvery > 0) {
    // Forced switches mid-run (next fragment at another level), auto ABR again halfway.
    setInterval(function () {
      // Top ↔ bottom of the ladder (hls.js sorts levels by bitrate), whatever ABR chose.
      var top = hls.levels ? hls.levels.length - 1 : 0;
      if (top > 0) hls.nextLevel = hls.currentLevel === top ? 0 : top;
      setTimeout(function () { hls.nextLevel = -1; }, (switchEvery * 1000) / 2);
    }, switchEvery * 1000);
  }
  hls.loadSource(src);
  hls.attachMedia(video);
  video.play().catch(function () {});

  function log(s) {
    var el = document.getElementById("events");
    var d = document.createElement("div");
    d.textContent = new Date().toLocaleTimeString() + " " + s;
    el.insertBefore(d, el.firstChild);
    while (el.childNodes.length > 50) el.removeChild(el.lastChild);
  }

  // Panel: bytes per second by source over the last 120 s.
  var hist = [];
  var last = { p2p: 0, http: 0 };
  var canvas = document.getElementById("chart");
  function fmt(n) { return n > 1e6 ? (n / 1e6).toFixed(2) + " MB" : (n / 1e3).toFixed(0) + " kB"; }
  function draw() {
    var ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    var max = 1;
    hist.forEach(function (p) { max = Math.max(max, p.p2p + p.http); });
    var bw = w / 120;
    hist.forEach(function (p, i) {
      var x = i * bw;
      var hp = (p.p2p / max) * (h - 12), hh = (p.http / max) * (h - 12);
      ctx.fillStyle = "#2a9d5c"; ctx.fillRect(x, h - hp, bw, hp);
      ctx.fillStyle = "#3b6fd6"; ctx.fillRect(x, h - hp - hh, bw, hh);
    });
    ctx.fillStyle = "#666"; ctx.fillText("max " + (max / 1000).toFixed(0) + " kB/s", 4, 10);
  }
  setInterval(function () {
    m.currentTime = video.currentTime;
    // Seconds behind the live edge (hls.js's estimate; 0 for VOD): where pages sit relative to
    // each other decides who needs a segment first (`cargo xtask bench lab` prints it).
    m.latency = hls.latency || 0;
    // Totals over the page's swarms (video rendition + audio).
    var fresh = peer.totals();
    m.swarms = peer.swarmStats();
    m.borrowed = fresh === null && !!peer.inner;
    var s = fresh || m.stats || {};
    var p2pB = s.deliveredP2pBytes || 0, httpB = s.deliveredHttpBytes || 0;
    if (!p2p) httpB = m.httpLoaderBytes;
    hist.push({ p2p: p2pB - last.p2p, http: httpB - last.http });
    last = { p2p: p2pB, http: httpB };
    if (hist.length > 120) hist.shift();
    draw();
    var tot = p2pB + httpB;
    document.getElementById("offload").textContent = tot ? (100 * p2pB / tot).toFixed(1) + " %" : "–";
    var kv = {
      "P2P bytes": fmt(p2pB), "HTTP bytes": fmt(httpB), "uploaded": fmt(s.uploadedBytes || 0),
      "peers": s.peers || 0, "integrity failures": s.integrityFailures || 0,
      "banned peers": (s.banned || []).length, "stalls": m.waiting, "peer id": s.peerId,
    };
    document.getElementById("kv").innerHTML = Object.keys(kv).map(function (k) { return "<span>" + k + "</span><b>" + kv[k] + "</b>"; }).join("");
    if (report) {
      m.stats = s;
      var sep = reportTo.indexOf("?") < 0 ? "?" : "&";
      fetch(reportTo + sep + "id=" + encodeURIComponent(pageId), { method: "POST", body: JSON.stringify(m) }).catch(function () {});
    }
  }, 1000);
  window.__p2pDemo = m;
})();
