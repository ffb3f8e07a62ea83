//! Turning in-memory bytes into an HTTP response: HEAD, ETag / If-None-Match, single byte Ranges
//! (206, 416) with If-Range, Cache-Control and Content-Type.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::stats::Kind;

/// Largest body frame: bounds how far the byte count can run ahead of a vanished client.
const FRAME: usize = 64 * 1024;

pub const CACHE_PLAYLIST: &str = "public, max-age=1";
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
pub const CACHE_OTHER: &str = "public, max-age=60";

/// What to send.
pub struct Content {
    pub bytes: Bytes,
    pub etag: String,
    pub content_type: &'static str,
    pub cache_control: &'static str,
}

/// Content type and accounting kind from a file name.
pub fn classify(name: &str) -> (&'static str, Kind) {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "m3u8" => ("application/vnd.apple.mpegurl", Kind::Playlist),
        "json" => ("application/json", Kind::Manifest),
        "ts" => ("video/mp2t", Kind::Segment),
        "m4s" => ("video/iso.segment", Kind::Segment),
        "mp4" | "m4v" => ("video/mp4", Kind::Segment),
        "m4a" => ("audio/mp4", Kind::Segment),
        "aac" => ("audio/aac", Kind::Segment),
        "vtt" | "webvtt" => ("text/vtt", Kind::Segment),
        "bin" => ("application/octet-stream", Kind::Segment),
        _ => ("application/octet-stream", Kind::Other),
    }
}

/// Cache-Control for a kind of static file.
pub fn cache_for(kind: Kind) -> &'static str {
    match kind {
        Kind::Playlist | Kind::Manifest => CACHE_PLAYLIST,
        Kind::Segment => CACHE_IMMUTABLE,
        Kind::Other => CACHE_OTHER,
    }
}

/// Strong ETag for generated text (playlists, sidecars).
pub fn etag_of(data: &[u8]) -> String {
    let h = protocol::manifest::sha256(data);
    format!("\"{}\"", hex::encode(&h[..12]))
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// Builds the response for `content` under the request's method and headers.
pub fn respond(method: &Method, headers: &HeaderMap, content: Content) -> Response {
    let len = content.bytes.len() as u64;
    let mut status = StatusCode::OK;
    let mut body = content.bytes;
    let mut content_range = None;

    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if inm.is_some_and(|l| etag_matches(l, &content.etag)) {
        status = StatusCode::NOT_MODIFIED;
        body = Bytes::new();
    } else if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // If-Range with another validator: the client's partial copy is stale, send it all.
        let if_range_ok = headers
            .get(header::IF_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim() == content.etag);
        // A syntactically invalid Range is ignored (RFC 9110 §14.2); multiple ranges are
        // answered with the whole body, which the RFC allows and players never ask for.
        if if_range_ok && let Ok(parsed) = http_range_header::parse_range_header(range) {
            match parsed.validate(len) {
                Ok(ranges) if ranges.len() == 1 => {
                    let (start, end) = (*ranges[0].start(), *ranges[0].end());
                    body = body.slice(start as usize..=end as usize);
                    status = StatusCode::PARTIAL_CONTENT;
                    content_range = Some(format!("bytes {start}-{end}/{len}"));
                }
                Ok(_) => {}
                Err(_) => {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                    let h = r.headers_mut();
                    put(h, header::CONTENT_RANGE, &format!("bytes */{len}"));
                    put(h, header::CONTENT_LENGTH, "0");
                    put(h, header::ACCEPT_RANGES, "bytes");
                    return r;
                }
            }
        }
    }

    let body_len = body.len();
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let mut r = Response::new(Body::new(ChunkedBytes(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    put(h, header::ETAG, &content.etag);
    put(h, header::CACHE_CONTROL, content.cache_control);
    put(h, header::ACCEPT_RANGES, "bytes");
    if status != StatusCode::NOT_MODIFIED {
        put(h, header::CONTENT_TYPE, content.content_type);
        put(h, header::CONTENT_LENGTH, &body_len.to_string());
    }
    if let Some(cr) = content_range {
        put(h, header::CONTENT_RANGE, &cr);
    }
    r
}

fn put(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// A `Bytes` body yielded in frames of at most [`FRAME`] bytes (zero-copy slices).
pub struct ChunkedBytes(pub Bytes);

impl http_body::Body for ChunkedBytes {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.0.is_empty() {
            return Poll::Ready(None);
        }
        let n = this.0.len().min(FRAME);
        Poll::Ready(Some(Ok(Frame::data(this.0.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.len() as u64)
    }
}
