//! The integrity manifest and the player's wants.
//!
//! * **Polling**: the manifest is fetched at start and at once when the player wants a segment
//!   it does not list yet. While it keeps changing (a live stream) the core learns when new
//!   segments appear (the phase of the live edge, from the fetches that first saw each one) and
//!   polls just before the next one is due, then every quarter of [`Config::manifest_poll`]
//!   until it shows up (at most [`FAST_POLLS`] times, then every `manifest_poll`): the live edge
//!   is found about as fast as with a 4× faster cadence, for about one or two fetches per
//!   segment. Once it has not changed for [`Config::manifest_idle_after`] (VOD, an ended
//!   stream) it is polled every [`Config::manifest_idle_poll`].
//! * **Wants**: the player asks by URL (and sequence number when it knows it). A want for a
//!   segment the manifest does not list yet waits (bounded) for the next manifest; if that one
//!   does not list it either, it fails and the player loads the segment itself.
//! * **Prefetch**: a live segment that appears in the manifest after the player's newest want
//!   is fetched right away, with the deadline the player will give it (extrapolated from that
//!   want by segment durations): the live edge is shared before players ask for it.

use std::time::Duration;

use protocol::Manifest;

use crate::store::MAX_WANT_URLS;
use crate::{Config, Output, PeerCore, Time};

/// Wants waiting for a manifest that lists their segment.
pub const MAX_PARKED: usize = 32;
/// Quick polls around the expected arrival of the next live segment before falling back to
/// the normal cadence.
pub const FAST_POLLS: u32 = 8;

#[derive(Debug)]
pub struct Parked {
    pub url: String,
    pub seq: Option<u64>,
    pub deadline: Time,
    pub duration: Duration,
    pub since: Time,
}

#[derive(Debug)]
pub struct Manifests {
    pub url: Option<String>,
    /// What segment URIs resolve against ([`crate::Config::playlist_url`]).
    pub base: Option<String>,
    /// A fetch is out, started at this time.
    pub inflight: Option<Time>,
    pub next_at: Time,
    /// Last time a fetch added a segment.
    pub changed_at: Time,
    /// The newest segment listed, and when it appeared (estimated between the start of the
    /// last fetch that did not list it and the first that did).
    pub edge: Option<(u64, Time)>,
    /// Start of the previous fetch.
    pub last_start: Option<Time>,
    /// Fetches in a row that found nothing new.
    pub misses: u32,
    /// The player's newest want: sequence number, deadline, segment duration.
    pub anchor: Option<(u64, Time, Duration)>,
    pub parked: Vec<Parked>,
}

impl Manifests {
    pub fn new(cfg: &Config) -> Self {
        Manifests {
            url: cfg.manifest_url.clone(),
            base: cfg.playlist_url.clone(),
            inflight: None,
            next_at: Time::ZERO,
            changed_at: Time::ZERO,
            edge: None,
            last_start: None,
            misses: 0,
            anchor: None,
            parked: Vec::new(),
        }
    }
}

impl PeerCore {
    pub(crate) fn poll_manifest(&mut self, now: Time) {
        let Some(url) = self.manifests.url.clone() else {
            return;
        };
        if self.manifests.inflight.is_none() {
            self.manifests.inflight = Some(now);
            self.stats.manifest_fetches += 1;
            self.out.push_back(Output::FetchManifest { url });
        }
    }

    pub(crate) fn manifest_timers(&mut self, now: Time) {
        if self.manifests.inflight.is_none() && now >= self.manifests.next_at {
            self.poll_manifest(now);
        }
    }

    pub(crate) fn manifest_timeouts(&self, at: &mut impl FnMut(Time)) {
        if self.manifests.url.is_some() && self.manifests.inflight.is_none() {
            at(self.manifests.next_at);
        }
    }

    /// Returns whether anything changed for the scheduler (new segments, wants resolved).
    pub(crate) fn on_manifest(&mut self, now: Time, url: &str, manifest: Option<Manifest>) -> bool {
        if self.manifests.url.as_deref() != Some(url) {
            return false;
        }
        let started = self.manifests.inflight.take().unwrap_or(now);
        let mut added = Vec::new();
        let newest = manifest
            .as_ref()
            .and_then(|m| m.segments.iter().map(|s| s.seq).max());
        if let Some(m) = manifest {
            for seg in m.segments {
                let abs = resolve(self.manifests.base.as_deref().unwrap_or(url), &seg.uri);
                let seq = seg.seq;
                if self.add_segment(now, seg, abs) {
                    added.push(seq);
                }
            }
        }
        let changed = !added.is_empty() || !self.manifests.parked.is_empty();
        if !added.is_empty() {
            self.manifests.changed_at = now;
        }
        if let Some((s0, d0, dur)) = self.manifests.anchor {
            for seq in added.into_iter().filter(|s| *s > s0) {
                let deadline = d0 + dur.saturating_mul((seq - s0).min(1 << 20) as u32);
                if let Some(s) = self.store.segments.get_mut(&seq)
                    && s.want.is_none()
                    && !s.complete()
                {
                    s.prefetch = Some(s.prefetch.map_or(deadline, |d| d.min(deadline)));
                }
            }
        }
        self.manifests.next_at = self.next_poll(now, started, newest);
        // Parked wants: served now, or failed if this manifest (fetched after they parked)
        // does not list them either.
        for p in std::mem::take(&mut self.manifests.parked) {
            if self.resolve_want(&p.url, p.seq).is_some() || p.since > started {
                self.on_want(now, p.url, p.seq, p.deadline, p.duration);
            } else {
                self.out.push_back(Output::WantFailed { url: p.url });
            }
        }
        changed
    }

    /// When to fetch the manifest next, after a fetch that started at `started` listed
    /// `newest` (see the module docs). Counts from the fetch's start, so the round trip does
    /// not stretch the cadence.
    fn next_poll(&mut self, now: Time, started: Time, newest: Option<u64>) -> Time {
        let m = &mut self.manifests;
        let prev = m.last_start.replace(started);
        match (newest, m.edge) {
            (Some(n), Some((e, _))) if n > e => {
                // It appeared after the previous fetch started (if that one missed it).
                let at = prev.map_or(started, |p| {
                    Time(p.0 + (started.0 - p.0.min(started.0)) / 2)
                });
                m.edge = Some((n, at));
                m.misses = 0;
            }
            (Some(n), None) => {
                m.edge = Some((n, started));
                m.misses = 0;
            }
            _ => m.misses += 1,
        }
        let idle = now.since(m.changed_at) >= self.cfg.manifest_idle_after;
        if idle {
            return (started + self.cfg.manifest_idle_poll).max(now);
        }
        let every = self.cfg.manifest_poll;
        let fast = every / 4;
        let next = match (m.edge, m.anchor) {
            (Some((_, appeared)), Some((_, _, dur))) if !dur.is_zero() => {
                // The next segment is due one duration after the last one appeared.
                let due = appeared + dur;
                if started + fast < due - fast {
                    // Nothing new can show before then (a want for an unlisted segment polls
                    // at once anyway).
                    due - fast
                } else if m.misses < FAST_POLLS {
                    started + fast
                } else {
                    started + every
                }
            }
            _ => started + every,
        };
        next.max(now)
    }

    fn resolve_want(&self, url: &str, seq: Option<u64>) -> Option<u64> {
        match seq {
            Some(s) if self.store.segments.contains_key(&s) => Some(s),
            Some(_) => None,
            None => self.store.find_url(url),
        }
    }

    pub(crate) fn on_want(
        &mut self,
        now: Time,
        url: String,
        seq: Option<u64>,
        deadline: Time,
        duration: Duration,
    ) {
        let Some(seq) = self.resolve_want(&url, seq) else {
            if self.manifests.url.is_none() || self.manifests.parked.len() >= MAX_PARKED {
                self.out.push_back(Output::WantFailed { url });
                return;
            }
            self.manifests.parked.push(Parked {
                url,
                seq,
                deadline,
                duration,
                since: now,
            });
            self.poll_manifest(now);
            return;
        };
        let Some(s) = self.store.segments.get_mut(&seq) else {
            return;
        };
        if !url.is_empty() && url_path(&url) != url_path(&s.listed_url) {
            // Sequence number `seq` of another playlist (another rendition, the audio track):
            // this core's segment `seq` holds other bytes. The player loads it itself.
            self.out.push_back(Output::WantFailed { url });
            return;
        }
        s.want = Some(s.want.map_or(deadline, |d| d.min(deadline)));
        s.prefetch = None;
        s.delivered = false;
        s.last_used = now;
        if !url.is_empty() {
            // The player's URL is the one the origin serves (signed URLs keep their query).
            s.url.clone_from(&url);
        }
        // Every want is answered under its URL (an empty one too).
        if !s.want_urls.contains(&url) {
            if s.want_urls.len() >= MAX_WANT_URLS {
                let old = s.want_urls.remove(0);
                self.out.push_back(Output::WantFailed { url: old });
            }
            if let Some(s) = self.store.segments.get_mut(&seq) {
                s.want_urls.push(url);
            }
        }
        if self.manifests.anchor.is_none_or(|(s0, _, _)| seq >= s0) {
            self.manifests.anchor = Some((seq, deadline, duration));
        }
    }

    pub(crate) fn on_cancel(&mut self, url: String) {
        self.manifests.parked.retain(|p| p.url != url);
        if let Some(seq) = self.store.find_url(&url)
            && let Some(s) = self.store.segments.get_mut(&seq)
        {
            s.want_urls.retain(|u| *u != url);
            if s.want_urls.is_empty() {
                s.want = None;
            }
        }
    }

    /// Every want still open is answered with `WantFailed` (the viewer is closing).
    pub(crate) fn fail_all_wants(&mut self) {
        for p in std::mem::take(&mut self.manifests.parked) {
            self.out.push_back(Output::WantFailed { url: p.url });
        }
        for s in self.store.segments.values_mut() {
            for url in std::mem::take(&mut s.want_urls) {
                self.out.push_back(Output::WantFailed { url });
            }
        }
    }
}

/// `url` without its query and fragment.
pub fn url_path(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Where `://` first occurs in `url`: a byte search, because a `&str` pattern
/// (`contains("://")`, `split_once("://")`) links std's two-way string searcher into the
/// browser bundle (≈ 1 KB gzip, docs/BUNDLE.md).
fn scheme_end(url: &str) -> Option<usize> {
    url.as_bytes().windows(3).position(|w| w == b"://")
}

/// `rel` resolved against `base` (RFC 3986 for the forms playlists use: absolute,
/// scheme-relative, absolute path, relative path with `.` and `..`).
pub fn resolve(base: &str, rel: &str) -> String {
    if scheme_end(rel).is_some() {
        return rel.to_string();
    }
    let base = base.split(['?', '#']).next().unwrap_or(base);
    let (scheme, rest) = scheme_end(base).map_or(("", base), |i| (&base[..i], &base[i + 3..]));
    if let Some(r) = rel.strip_prefix("//") {
        return [scheme, "://", r].concat();
    }
    let host_end = rest.find('/').unwrap_or(rest.len());
    let (host, path) = rest.split_at(host_end);
    let (rel_path, query) = match rel.find(['?', '#']) {
        Some(i) => rel.split_at(i),
        None => (rel, ""),
    };
    let joined = if rel_path.starts_with('/') {
        rel_path.to_string()
    } else {
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        [dir, rel_path].concat()
    };
    let mut out: Vec<&str> = Vec::new();
    let parts: Vec<&str> = joined.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
            }
            s => out.push(s),
        }
        // A trailing `.` or `..` still names a directory.
        if i == parts.len() - 1 && (*seg == "." || *seg == "..") {
            out.push("");
        }
    }
    let path = out.join("/");
    let sep = if path.starts_with('/') { "" } else { "/" };
    // `concat`, not `format!`: no formatting code in the browser bundle (docs/BUNDLE.md).
    if scheme.is_empty() {
        [host, sep, &path, query].concat()
    } else {
        [scheme, "://", host, sep, &path, query].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn resolves_playlist_uris() {
        let b = "https://cdn.example/live/v1/index.integrity.json?t=1";
        assert_eq!(
            resolve(b, "seg_1.m4s"),
            "https://cdn.example/live/v1/seg_1.m4s"
        );
        assert_eq!(
            resolve(b, "../a/s.ts?x=2"),
            "https://cdn.example/live/a/s.ts?x=2"
        );
        assert_eq!(resolve(b, "/abs/s.ts"), "https://cdn.example/abs/s.ts");
        assert_eq!(resolve(b, "//other/s.ts"), "https://other/s.ts");
        assert_eq!(resolve(b, "http://x/y.ts"), "http://x/y.ts");
        assert_eq!(resolve(b, "./s.ts"), "https://cdn.example/live/v1/s.ts");
        assert_eq!(
            resolve("sim://live/m.json", "seg_3.bin"),
            "sim://live/seg_3.bin"
        );
    }
}
