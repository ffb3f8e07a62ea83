// A site built with a bundler, using the npm package (tests/tests/package.rs bundles this
// with esbuild after type-checking it with tsc against the package's types). Query: src,
// signal, id, mode: "a" (wasm next to the bundle, a site fLoader, debug log, off()), "b"
// (explicit wasmUrl, download only, small cache), "c" (P2P turned off then on at runtime).
// Reports to /report?id= every second.
import Hls from "hls.js";
import { attach, type FragmentLoaderClass, type Peer, type SegmentEvent, type Stats } from "p2p-cdn-hls";

const q = new URLSearchParams(location.search);
const mode = q.get("mode") ?? "a";
const id = q.get("id") ?? mode;
const video = document.getElementById("video") as HTMLVideoElement;

interface Report {
  p2p: boolean;
  started: boolean;
  currentTime: number;
  waiting: number;
  fatal: string[];
  errors: string[];
  stats: Stats | null;
  siteLoads: number;
  debugLines: number;
  segEvents: number;
  offListenerEvents: number;
  /** Bytes of `chunk` events from peers and from the origin, and of `upload` events. */
  chunkP2pBytes: number;
  chunkHttpBytes: number;
  uploadEventBytes: number;
  offWindow: { p2pFrags: number; loads: number; peers: number; done: boolean };
  p2pAtOn: number;
}
const r: Report = {
  p2p: true, started: false, currentTime: 0, waiting: 0, fatal: [], errors: [], stats: null,
  siteLoads: 0, debugLines: 0, segEvents: 0, offListenerEvents: 0,
  chunkP2pBytes: 0, chunkHttpBytes: 0, uploadEventBytes: 0,
  offWindow: { p2pFrags: 0, loads: 0, peers: 0, done: false }, p2pAtOn: -1,
};
const note = (m: unknown) => { if (r.errors.length < 20) r.errors.push(String(m).slice(0, 300)); };
window.addEventListener("error", (e) => note(e.message));
window.addEventListener("unhandledrejection", (e) => note(e.reason));
const debug = console.debug.bind(console);
console.debug = (...args: unknown[]) => {
  if (typeof args[0] === "string" && args[0].startsWith("p2p-cdn:")) r.debugLines++;
  debug(...args);
};

// The site's own fragment loader: P2P must wrap it, not replace it.
class SiteLoader extends Hls.DefaultConfig.loader {
  load(...args: Parameters<InstanceType<typeof Hls.DefaultConfig.loader>["load"]>) {
    r.siteLoads++;
    super.load(...args);
  }
}
// (hls.js types its default loader for any context, its `fLoader` for fragments only.)
const siteLoader = SiteLoader as unknown as FragmentLoaderClass;
const hls = new Hls({ liveSyncDurationCount: 3, fLoader: mode === "a" ? siteLoader : undefined });
let offSince = 0;
const peer: Peer = attach(hls, video, {
  signal: q.get("signal") ?? undefined,
  debug: mode === "a",
  wasmUrl: mode === "b" ? new URL("/alt/engine.wasm", location.href) : undefined,
  upload: mode !== "b",
  cacheBytes: mode === "b" ? 4 << 20 : undefined,
  onFragment: () => { if (offSince > 0 && !r.offWindow.done) r.offWindow.p2pFrags++; },
  onLoaded: () => { if (offSince > 0 && !r.offWindow.done) r.offWindow.loads++; },
});

peer.on("segment", (e: SegmentEvent) => { r.segEvents += e.bytes > 0 ? 1 : 0; });
// Removed after its first call: it must hear nothing more.
const once = (e: SegmentEvent) => { r.offListenerEvents++; peer.off("segment", once); void e.seq; };
peer.on("segment", once);
peer.on("error", (e) => note("error event: " + e.code));
// All pages are honest: a ban is a bug (its reason goes into the report).
peer.on("peer", (e) => { if (e.state === "banned") note(`banned ${e.peer}: ${e.reason}`); });
peer.on("chunk", (e) => {
  if (e.source === "p2p") r.chunkP2pBytes += e.bytes;
  else r.chunkHttpBytes += e.bytes;
});
peer.on("upload", (e) => { r.uploadEventBytes += e.bytes; });
// Typed events: these lines must not compile (checked by tsc, never run).
if (q.get("never") === "1") {
  // @ts-expect-error unknown event name
  peer.on("nope", () => {});
  // @ts-expect-error the payload is typed, not `any`
  peer.on("segment", (e) => { const s: string = e.seq; void s; });
  // @ts-expect-error stats payload fields are numbers
  peer.on("stats", (s) => { const t: string = s.peers; void t; });
  // @ts-expect-error a chunk's source is "p2p" or "http"
  peer.on("chunk", (e) => { if (e.source === "cache") return; });
}

if (mode === "c") {
  // Off from 12 s to 20 s after load.
  setTimeout(() => { offSince = performance.now(); peer.setP2P(false); }, 12000);
  setTimeout(() => {
    r.offWindow.peers = peer.stats()?.peers ?? -1;
    r.offWindow.done = true;
    r.p2pAtOn = peer.totals()?.deliveredP2pBytes ?? 0;
    peer.setP2P(true);
  }, 20000);
}

hls.on(Hls.Events.ERROR, (_e, d) => { if (d.fatal) r.fatal.push(d.type + ": " + d.details); });
video.addEventListener("playing", () => { r.started = true; });
video.addEventListener("waiting", () => { if (r.started) r.waiting++; });
hls.loadSource(q.get("src") ?? "");
hls.attachMedia(video);
setInterval(() => {
  r.currentTime = video.currentTime;
  r.stats = peer.totals();
  fetch("/report?id=" + encodeURIComponent(id), { method: "POST", body: JSON.stringify(r) }).catch(() => {});
}, 1000);
