// Types of the hls.js integration (peer-wasm/js/p2p-cdn-hls.js), written once: the npm
// package's `p2p-cdn.d.ts` is this file as it is (an ES module's exports); the script-tag
// build's `dist/p2p-cdn.d.ts` wraps it in `declare namespace P2PCDN { … }` (the global).
// hls.js's own types are named through `import("hls.js")`, which works in both.

/** The hls.js class (its instances are what `attach` takes). */
export type HlsClass = typeof import("hls.js").default;
/** An hls.js instance. */
export type HlsInstance = import("hls.js").default;
/** A loader class for hls.js's `fLoader` option. */
export type FragmentLoaderClass = import("hls.js").FragmentLoaderConstructor;

export interface PeerOptions {
  /** WebSocket URL of the signaling server (script tag: default its `data-signal`). Without
   * one the peer is HTTP only. The nodes of a signaling cluster: an array of URLs, or one
   * comma-separated string; each connection goes to one of them, and after a failure to the
   * next. */
  signal?: string | string[];
  /** Swarm id override (default: the stream's URL without query, `|`, the media playlist's
   * path relative to it: one swarm per media playlist). */
  swarm?: string;
  /** URL of the operator's integrity service (`signaling-server --integrity-origin`), for
   * streams whose origin publishes no sidecar manifest: the peer fetches
   * `<integrity>?playlist=<media playlist URL>`. */
  integrity?: string;
  /** hls.js's `fetchSetup` signature: builds the `Request` for each of the peer's own origin
   * requests (segment ranges, manifests), e.g. to add an auth header. Default: the hls.js
   * instance's `config.fetchSetup`. (`xhrSetup` cannot apply: the peer uses `fetch`.) */
  fetchSetup?: (context: { url: string }, init: RequestInit) => Request;
  /** Join token for signaling servers that require one (script tag: default its
   * `data-token`). Minted by the site's backend: `signaling-server sign-token`. */
  token?: string;
  /** STUN/TURN servers for the peer connections. Default: those the signaling server hands
   * out in `welcome` (its `--ice-server`/`--turn-secret` flags). */
  iceServers?: RTCIceServer[];
  /** `"relay"`: connect to peers through TURN only, so no peer learns the viewer's address. */
  iceTransportPolicy?: "all" | "relay";
  /** Upload cap in bytes per second. */
  uploadCap?: number;
  /** Fetch from / serve peers (default true). `false`: HTTP only until `setP2P(true)`. */
  p2p?: boolean;
  /** Serve other peers (default true). `false`: download only, every peer request is
   * refused (metered connections, a site's own policy). */
  upload?: boolean;
  /** Bytes of segments kept in memory for other peers, per swarm (default 64 MiB, least
   * recently used beyond it; at least 1 MiB). A few segments' worth is enough to serve a live
   * swarm. */
  cacheBytes?: number;
  /** The viewer agreed to P2P (default true; false disables it). */
  consent?: boolean;
  /** Most peer connections per swarm (at most 32). */
  maxPeers?: number;
  /** Where the wasm module is (default: `p2p-cdn_bg.wasm` next to the script, or next to the
   * ES module by `import.meta.url`). The first peer's value wins: the module loads once. */
  wasmUrl?: string | URL;
  /** Log the peer's events (but `stats`, `chunk`, `upload`), fallbacks to HTTP and P2P
   * toggles with `console.debug`. */
  debug?: boolean;
  /** Debug only: corrupt every uploaded chunk (tests the others' integrity checks). */
  __tamper?: boolean;
}

export interface AttachOptions extends PeerOptions {
  /** An existing peer to wire in instead of a new one. */
  peer?: Peer;
  /** Called with every fragment delivered through P2P (after verification). */
  onFragment?: (sn: number, bytes: Uint8Array) => void;
  /** Every fragment (and init segment) hls.js receives, from the peer or over HTTP. */
  onLoaded?: (frag: import("hls.js").Fragment, url: string, data: ArrayBuffer) => void;
  /** Called when a fragment falls back to HTTP, with the reason. */
  onFallback?: (sn: number, why: string) => void;
}

/** A segment handed to the player (`segment` event). */
export interface SegmentEvent {
  /** Media sequence number. */
  seq: number;
  url: string;
  /** Its size, and how many of its bytes came from the origin and from peers. */
  bytes: number;
  httpBytes: number;
  p2pBytes: number;
}

/** A chunk (16 KiB, the last of a segment shorter) arrived and matched the integrity
 * manifest (`chunk` event): from a peer, or from the origin (the peer's own range requests;
 * not the fragments the player's loader fetches itself). */
export interface ChunkEvent {
  source: "p2p" | "http";
  /** The peer it came from (null: the origin). */
  peer: number | null;
  seq: number;
  chunk: number;
  bytes: number;
}

/** A chunk went to another peer (`upload` event). */
export interface UploadEvent {
  peer: number;
  seq: number;
  chunk: number;
  bytes: number;
}

/** A peer connection changed (`peer` event). */
export interface PeerEvent {
  peer: number;
  state: "connected" | "disconnected" | "banned";
  /** Why it ended (`disconnected`: left, timeout, wrong_swarm, duplicate, reoffered,
   * closing, banned; `banned`: bad_chunk, unsolicited, too_many_bytes, malformed, flood). */
  reason?: string;
}

/** A chunk failed verification (`integrity` event); `peer` null: it came from the origin. */
export interface IntegrityEvent {
  peer: number | null;
  seq: number;
  chunk: number;
}

/** `error` event. `code`: the signaling server's error code (e.g. `"unauthorized"`: refresh
 * the token with `setToken`), `"hook"` (an `AttachOptions` hook threw) or `"listener"` (an
 * event listener threw); `error`: what was thrown. */
export interface ErrorEvent {
  code: string;
  error?: unknown;
}

/** A swarm's counters (`stats()`, `stats` event every second). */
export interface Stats {
  /** Open peers and live peer connections. */
  peers: number;
  connections: number;
  /** Our id in the swarm (null until welcomed); the fields below are absent until the first
   * playlist is loaded. */
  peerId?: number | null;
  /** Bytes received from the origin and from peers (verified or not). */
  httpBytes?: number;
  p2pBytes?: number;
  /** Bytes handed to the player, by source. */
  deliveredHttpBytes?: number;
  deliveredP2pBytes?: number;
  uploadedBytes?: number;
  segments?: number;
  integrityFailures?: number;
  peersBanned?: number;
  stalls?: number;
  httpRequests?: number;
  /** deliveredP2pBytes / all delivered bytes. */
  offload?: number;
  /** The origin throughput the peer measured (bit/s). */
  originBps?: number;
  banned: number[];
  /** Renditions kept joined after an ABR switch (`Peer.stats` only). */
  warmSwarms?: number;
}

/** Event name → payload: `peer.on("segment", e => e.p2pBytes)`. */
export interface PeerEvents {
  segment: SegmentEvent;
  chunk: ChunkEvent;
  upload: UploadEvent;
  peer: PeerEvent;
  integrity: IntegrityEvent;
  stats: Stats;
  error: ErrorEvent;
}

export class Peer {
  constructor(opts?: PeerOptions);
  /** Resolves once the wasm module is loaded (null if destroyed first). */
  readonly ready: Promise<Peer | null>;
  readonly opts: PeerOptions;
  on<K extends keyof PeerEvents>(event: K, fn: (e: PeerEvents[K]) => void): void;
  /** Removes a listener added with `on`; without `fn`, every listener of `event`. */
  off<K extends keyof PeerEvents>(event: K, fn?: (e: PeerEvents[K]) => void): void;
  /** `stream`: the multivariant playlist's URL, when there is one. */
  playlistLoaded(url: string, stream?: string): void;
  /** The peer for fragments of an hls.js type: itself for "main", a second peer (own swarm)
   * for "audio", null for others (subtitles stay on HTTP). */
  forKind(kind: string): Peer | null;
  /** `sn`: media sequence number; `deadline`: ms until the player needs it; `duration`: s.
   * `playlist`: the media playlist listing the segment (hls.js `frag.baseurl`): a rendition
   * played before and kept warm serves it. Rejects when P2P cannot deliver it. */
  fetchSegment(
    url: string,
    opts?: { sn?: number; deadline?: number; duration?: number },
    playlist?: string,
  ): Promise<Uint8Array>;
  /** The player no longer needs the segment at `url`: its pending promises reject. */
  cancel(url: string): void;
  reportStall(): void;
  /** A fresh join token (before the old one expires): every swarm of the page joins with it. */
  setToken(token: string | undefined): void;
  /** P2P off (leave the swarms, close connections, serve nobody; the player's loader loads
   * everything) or back on (join again). Counters so far stay in `stats()`. */
  setP2P(on: boolean): void;
  /** The current rendition's counters plus those of renditions played before (null until
   * the wasm module is ready). */
  stats(): Stats | null;
  /** Stats of each swarm: `{main, audio?}`. */
  swarmStats(): { main: Stats | null; audio?: Stats | null };
  /** Totals over the page's swarms. */
  totals(): Stats | null;
  destroy(): void;
}

/** Wires a peer into an hls.js instance (before or after `loadSource`) and returns it. The
 * instance's own `fLoader` (else its `loader`) keeps loading everything P2P does not deliver. */
export function attach(hls: HlsInstance, video: HTMLMediaElement | null, opts?: AttachOptions): Peer;
/** The loader class `attach` installs as `fLoader`; `base`: the loader it falls back to
 * (default hls.js's). `estimate`: the origin throughput in bit/s, for hls.js's ABR. */
export function loader(
  Hls: HlsClass,
  peer: Peer,
  video: HTMLMediaElement | null,
  hooks?: AttachOptions,
  estimate?: () => number,
  base?: FragmentLoaderClass,
): FragmentLoaderClass;
/** Plays every `<video data-p2p-src>` with `Hls` (default: the global `Hls`) and a peer. */
export function autoAttach(Hls?: HlsClass): void;
/** Loads the wasm module (from `wasmUrl` if given and first). */
export function ready(wasmUrl?: string | URL): Promise<unknown>;
