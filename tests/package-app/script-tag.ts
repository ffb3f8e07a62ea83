// The script-tag build's types (`dist/p2p-cdn.d.ts`, the global `P2PCDN`, copied here by
// tests/tests/package.rs): the same declarations as the package's, in a namespace. Type-checked
// only, never run.
/// <reference path="./p2p-cdn.d.ts" />
declare const hlsInstance: import("hls.js").default;
const p: P2PCDN.Peer = P2PCDN.attach(hlsInstance, null, { upload: false, cacheBytes: 4 << 20 });
p.on("chunk", (e) => { const n: number = e.bytes; void n; });
// @ts-expect-error the payload is typed, not `any`
p.on("upload", (e) => { const s: string = e.peer; void s; });
// @ts-expect-error unknown option
P2PCDN.attach(hlsInstance, null, { uploads: false });
export {};
