/** Everything above, as the module's default export. */
declare const p2pCdn: {
  Peer: typeof Peer;
  attach: typeof attach;
  loader: typeof loader;
  autoAttach: typeof autoAttach;
  ready: typeof ready;
};
export default p2pCdn;
