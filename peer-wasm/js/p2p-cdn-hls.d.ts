// hls.js integration (peer-wasm/js/p2p-cdn-hls.js), global `P2PCDN`.
declare namespace P2PCDN {
  interface PeerOptions {
    /** WebSocket URL of the signaling server (default: the script tag's `data-signal`). */
    signal?: string;
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
    /** Join token for signaling servers that require one (default: the script tag's
     * `data-token`). Minted by the site's backend: `signaling-server sign-token`. */
    token?: string;
    /** STUN/TURN servers for the peer connections. Default: those the signaling server hands
     * out in `welcome` (its `--ice-server`/`--turn-secret` flags). */
    iceServers?: RTCIceServer[];
    /** `"relay"`: connect to peers through TURN only, so no peer learns the viewer's address. */
    iceTransportPolicy?: "all" | "relay";
    /** Upload cap in bytes per second. */
    uploadCap?: number;
    /** Fetch from / serve peers (default true). */
    p2p?: boolean;
    /** The viewer agreed to P2P (default true; false disables it). */
    consent?: boolean;
    maxPeers?: number;
    /** Debug only: corrupt every uploaded chunk (tests the others' integrity checks). */
    __tamper?: boolean;
  }
  interface AttachOptions extends PeerOptions {
    peer?: Peer;
    /** Called with every fragment delivered through P2P (after verification). */
    onFragment?: (sn: number, bytes: Uint8Array) => void;
    /** Every fragment (and init segment) hls.js receives, from the peer or over HTTP. */
    onLoaded?: (frag: unknown, url: string, data: ArrayBuffer) => void;
    /** Called when a fragment falls back to hls.js's own loader. */
    onFallback?: (sn: number) => void;
  }
  class Peer {
    constructor(opts?: PeerOptions);
    readonly ready: Promise<Peer | null>;
    on(event: "segment" | "peer" | "integrity" | "stats" | "error", fn: (e: any) => void): void;
    /** `stream`: the multivariant playlist's URL, when there is one. */
    playlistLoaded(url: string, stream?: string): void;
    /** The peer for fragments of an hls.js type: itself for "main", a second peer (own swarm)
     * for "audio", null for others (subtitles stay on HTTP). */
    forKind(kind: string): Peer | null;
    /** Stats of each swarm: `{main, audio?}`. */
    swarmStats(): { [kind: string]: any };
    /** Totals over the page's swarms. */
    totals(): any;
    /** `sn`: media sequence number; `deadline`: ms until the player needs it; `duration`: s. */
    /** `playlist`: the media playlist listing the segment (hls.js `frag.baseurl`): a rendition played before and kept warm serves it. */
    fetchSegment(url: string, opts?: { sn?: number; deadline?: number; duration?: number }, playlist?: string): Promise<Uint8Array>;
    /** The player no longer needs the segment at `url`: its pending promises reject. */
    cancel(url: string): void;
    reportStall(): void;
    /** A fresh join token (before the old one expires): every swarm of the page joins with it. */
    setToken(token: string | undefined): void;
    stats(): any;
    destroy(): void;
  }
  function attach(hls: any, video: HTMLMediaElement | null, opts?: AttachOptions): Peer;
  function loader(Hls: any, peer: Peer, video: HTMLMediaElement | null, hooks?: AttachOptions): any;
  function autoAttach(): void;
  function ready(): Promise<unknown>;
}
