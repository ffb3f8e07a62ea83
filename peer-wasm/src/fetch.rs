//! Origin requests: `fetch` with `Range` + `AbortController`, the body streamed through a
//! `ReadableStream` reader into [`Input::HttpData`]; the integrity manifest: `fetch` +
//! [`crate::json::manifest`].

use std::cell::RefCell;
use std::rc::Weak;

use bytes::Bytes;
use js_sys::{Reflect, Uint8Array};
use peer_core::Input;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{AbortController, Headers, ReadableStreamDefaultReader, RequestInit, Response};

use crate::{Inner, feed_weak, js_err, json, window, with_weak};

impl Inner {
    pub(crate) fn http_start(&mut self, id: u64, url: String, range: Option<(u64, u64)>) {
        let Ok(ctrl) = AbortController::new() else {
            return self.feed(Input::HttpFailed { id });
        };
        let signal = ctrl.signal();
        self.http.insert(id, ctrl);
        let me = self.me.clone();
        spawn_local(async move {
            let r = http_fetch(&me, id, &url, range, &signal).await;
            with_weak(&me, |i| {
                if i.http.remove(id).is_none() {
                    return; // cancelled
                }
                i.feed(match r {
                    Ok(()) => Input::HttpDone { id },
                    Err(_) => Input::HttpFailed { id },
                });
            });
        });
    }

    pub(crate) fn fetch_manifest(&mut self, url: String) {
        let me = self.me.clone();
        spawn_local(async move {
            let text = fetch_text(&me, &url).await.ok();
            // A live manifest changes once per segment and is polled several times per
            // segment: an unchanged text reuses the last decode (no `JSON.parse`, no walk
            // through it from wasm, no hash decoding).
            let mut m = None;
            with_weak(&me, |i| {
                m = text.and_then(|t| match &i.last_manifest {
                    Some((old, man)) if *old == t => Some(man.clone()),
                    _ => {
                        let man = json::manifest(&t)?;
                        i.last_manifest = Some((t, man.clone()));
                        Some(man)
                    }
                });
            });
            feed_weak(
                &me,
                match m {
                    Some(manifest) => Input::ManifestLoaded { url, manifest },
                    None => Input::ManifestFailed { url },
                },
            );
        });
    }
}

async fn http_fetch(
    me: &Weak<RefCell<Inner>>,
    id: u64,
    url: &str,
    range: Option<(u64, u64)>,
    signal: &web_sys::AbortSignal,
) -> Result<(), JsValue> {
    let w = window().ok_or_else(|| js_err("no window"))?;
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_signal(Some(signal));
    if let Some((start, end)) = range {
        let h = Headers::new()?;
        let mut r = String::from("bytes=");
        json::push_u64(&mut r, start);
        r.push('-');
        json::push_u64(&mut r, end.saturating_sub(1));
        h.set("Range", &r)?;
        init.set_headers(&h);
    }
    let resp = send(me, &w, url, &init).await?;
    let ok = if range.is_some() {
        resp.status() == 206
    } else {
        resp.ok()
    };
    if !ok {
        return Err(js_err("bad status"));
    }
    let body = resp.body().ok_or_else(|| js_err("no body"))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    loop {
        let r = JsFuture::from(reader.read()).await?;
        if Reflect::get(&r, &"done".into())?.as_bool().unwrap_or(true) {
            return Ok(());
        }
        let chunk: Uint8Array = Reflect::get(&r, &"value".into())?.dyn_into()?;
        let data = Bytes::from(chunk.to_vec());
        let mut alive = false;
        with_weak(me, |i| {
            if i.http.contains_key(id) {
                alive = true;
                i.feed(Input::HttpData { id, data });
            }
        });
        if !alive {
            let _ = reader.cancel();
            return Ok(());
        }
    }
}

/// `fetch(url, init)`, through the page's `fetchSetup(context, init)` hook when it gave one
/// (hls.js's signature: it returns the `Request` to send, e.g. with an auth header). A hook
/// that throws or returns something else fails the request: the core falls back as for any
/// failed request.
async fn send(
    me: &Weak<RefCell<Inner>>,
    w: &web_sys::Window,
    url: &str,
    init: &RequestInit,
) -> Result<Response, JsValue> {
    let mut setup = None;
    with_weak(me, |i| setup = i.opts.fetch_setup.clone());
    let pending = match setup {
        None => w.fetch_with_str_and_init(url, init),
        Some(f) => {
            let ctx = crate::page::obj(&[("url", url.into())]);
            let req: web_sys::Request = f.call2(&JsValue::NULL, &ctx, init)?.dyn_into()?;
            w.fetch_with_request(&req)
        }
    };
    JsFuture::from(pending).await?.dyn_into()
}

async fn fetch_text(me: &Weak<RefCell<Inner>>, url: &str) -> Result<String, JsValue> {
    let w = window().ok_or_else(|| js_err("no window"))?;
    let init = RequestInit::new();
    // Live sidecars change every segment: revalidate (ETag) instead of reusing a cached one
    // that may lack the newest segment.
    init.set_cache(web_sys::RequestCache::NoCache);
    let resp = send(me, &w, url, &init).await?;
    if !resp.ok() {
        return Err(js_err("bad status"));
    }
    JsFuture::from(resp.text()?)
        .await?
        .as_string()
        .ok_or_else(|| js_err("not text"))
}
