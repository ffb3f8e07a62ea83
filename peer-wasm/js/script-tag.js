// The script-tag build's entry (`dist/p2p-cdn.js`): after wasm-bindgen's `no-modules` glue
// (global `__p2pCdnWasm`) and p2p-cdn-hls.js, all inside one function scope. The wasm is
// found next to this script (`document.currentScript`), the options' defaults in its
// `data-signal` / `data-token` attributes; sets `window.P2PCDN` and attaches to every
// `<video data-p2p-src>` unless `data-auto="off"`.
(function (global) {
  var script = typeof document !== "undefined" ? document.currentScript : null;
  var base = script && script.src ? script.src : typeof location !== "undefined" ? location.href : "";
  var data = script && script.dataset ? script.dataset : {};
  // The glue declares it with `let` at the top of this same script (not a window property).
  // eslint-disable-next-line no-undef
  var W = typeof __p2pCdnWasm !== "undefined" ? __p2pCdnWasm : global.__p2pCdnWasm;
  var api = p2pCdn(
    {
      init: function (url) { return W({ module_or_path: url }); },
      P2pPeer: W.P2pPeer,
    },
    {
      wasmUrl: new URL("p2p-cdn_bg.wasm", base).href,
      signal: data.signal,
      // `data-token`: the join token the site's backend minted for this page (signaling
      // servers run with `--token-secret` require one).
      token: data.token,
      global: global,
    }
  );
  global.P2PCDN = api;
  if (typeof document !== "undefined" && script && data.auto !== "off") {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { api.autoAttach(); });
    else api.autoAttach();
  }
})(typeof window !== "undefined" ? window : globalThis);
