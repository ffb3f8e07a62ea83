//! Byte accounting: body bytes and requests per stream and kind.
//!
//! Handlers tag their response with an [`Acct`] extension; the accounting middleware counts the
//! request and wraps the body in [`CountingBody`], which adds each data frame's length as hyper
//! pulls it. Bodies are produced in ≤ 64 KiB frames (see `serve::ChunkedBytes`), so the count is
//! what was actually handed to the connection, to within one frame when a client disconnects.
//! The stream label set is bounded: only configured live/synthetic streams and VOD folders that
//! exist get a label; anything else is not counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Playlist,
    Segment,
    Manifest,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Playlist, Kind::Segment, Kind::Manifest, Kind::Other];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Playlist => "playlist",
            Kind::Segment => "segment",
            Kind::Manifest => "manifest",
            Kind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Response extension: which stream and kind the body bytes count for.
#[derive(Debug, Clone)]
pub struct Acct {
    pub stream: Arc<str>,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counter {
    pub bytes: u64,
    pub requests: u64,
}

impl Counter {
    fn add(&mut self, o: &Counter) {
        self.bytes += o.bytes;
        self.requests += o.requests;
    }
}

#[derive(Default)]
pub struct Stats {
    inner: Mutex<BTreeMap<Arc<str>, [Counter; 4]>>,
}

/// `GET /stats` body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub streams: BTreeMap<String, StreamStats>,
    pub totals: StreamStats,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct StreamStats {
    pub bytes: u64,
    pub requests: u64,
    pub playlist: Counter,
    pub segment: Counter,
    pub manifest: Counter,
    pub other: Counter,
}

impl StreamStats {
    fn from_counters(c: &[Counter; 4]) -> Self {
        let mut s = StreamStats {
            playlist: c[0],
            segment: c[1],
            manifest: c[2],
            other: c[3],
            ..Default::default()
        };
        for k in c {
            s.bytes += k.bytes;
            s.requests += k.requests;
        }
        s
    }
}

impl Stats {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<Arc<str>, [Counter; 4]>) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-increment: counters stay usable.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn add(&self, acct: &Acct, requests: u64, bytes: u64) {
        self.with(|m| {
            let c = &mut m.entry(acct.stream.clone()).or_default()[acct.kind.index()];
            c.requests += requests;
            c.bytes += bytes;
        })
    }

    pub fn reset(&self) {
        self.with(|m| m.clear())
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|m| Self::snap(m))
    }

    /// Snapshot and zero in one step, so no count falls between a read and a reset.
    pub fn take(&self) -> Snapshot {
        self.with(|m| {
            let s = Self::snap(m);
            m.clear();
            s
        })
    }

    fn snap(m: &BTreeMap<Arc<str>, [Counter; 4]>) -> Snapshot {
        {
            let mut totals = [Counter::default(); 4];
            let mut streams = BTreeMap::new();
            for (name, c) in m.iter() {
                for (t, x) in totals.iter_mut().zip(c) {
                    t.add(x);
                }
                streams.insert(name.to_string(), StreamStats::from_counters(c));
            }
            Snapshot {
                streams,
                totals: StreamStats::from_counters(&totals),
            }
        }
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let snap = self.with(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>());
        let mut out = String::new();
        for (metric, help, pick) in [
            (
                "origin_bytes_sent_total",
                "Response body bytes sent, per stream and kind.",
                (|c: &Counter| c.bytes) as fn(&Counter) -> u64,
            ),
            (
                "origin_requests_total",
                "Requests answered, per stream and kind.",
                |c: &Counter| c.requests,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (stream, c) in &snap {
                for k in Kind::ALL {
                    let _ = writeln!(
                        out,
                        "{metric}{{stream=\"{}\",kind=\"{}\"}} {}",
                        escape_label(stream),
                        k.name(),
                        pick(&c[k.index()])
                    );
                }
            }
        }
        out
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Body wrapper that counts data bytes as they are polled.
pub struct CountingBody {
    pub inner: Body,
    pub acct: Acct,
    pub stats: Arc<Stats>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.stats.add(&this.acct, 0, data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
