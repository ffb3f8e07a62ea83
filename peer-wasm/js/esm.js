// The npm package's entry (`p2p-cdn.mjs`): after wasm-bindgen's `web` glue (an ES module whose
// exports xtask drops: `__wbg_init`, `P2pPeer` stay module-scoped) and p2p-cdn-hls.js. No
// globals are set and nothing runs on import besides these definitions. The wasm is
// `p2p-cdn_bg.wasm` next to this module, or at the `wasmUrl` the first `Peer`/`attach`/`ready`
// call gives. The `new URL("…", import.meta.url)` form is the one webpack 5, Vite and Parcel
// recognise to copy the file into the site's build.
const api = p2pCdn(
  {
    init: (url) => __wbg_init({ module_or_path: url || new URL("p2p-cdn_bg.wasm", import.meta.url) }),
    P2pPeer,
  },
  { global: globalThis }
);
export const Peer = api.Peer;
export const attach = api.attach;
export const loader = api.loader;
export const autoAttach = api.autoAttach;
export const ready = api.ready;
export default api;
