//! A model player with the simulator's definitions (`sim/src/lib.rs`): it follows a live or VOD
//! playlist at 1×, starts `live_delay` segments behind the live edge (VOD: at the first
//! segment), wants segments up to `buffer_ahead` ahead with a deadline at their play time, and
//! counts a stall whenever the playhead reaches a segment that is not ready.
//!
//! It is sans-IO like the core: the driver calls it with the time and the playlist, performs
//! nothing for it except timers ([`Player::next_check`]), and feeds the core the inputs it
//! produces ([`Input::Want`], [`Input::Stall`]), as hls.js's loader does with the browser peer.
//!
//! It never loads a segment itself: a want the core refuses ([`Player::want_failed`]) is counted
//! and asked again after the next playlist refresh.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use peer_core::{Input, Time};

use crate::hls::Playlist;

#[derive(Debug, Clone)]
pub struct PlayerConfig {
    /// Live: start this many segments behind the newest one.
    pub live_delay: u64,
    /// Media seconds wanted ahead of the playhead.
    pub buffer_ahead: Duration,
}

impl Default for PlayerConfig {
    fn default() -> Self {
        PlayerConfig {
            live_delay: 3,
            buffer_ahead: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
pub struct Player {
    cfg: PlayerConfig,
    seg_dur: Duration,
    joined: Time,
    started: Option<Time>,
    start_seq: Option<u64>,
    next_needed: u64,
    ready: BTreeSet<u64>,
    /// Wanted from the core, with the URL asked for.
    wanted: BTreeMap<u64, String>,
    /// Wants the core refused: not asked again before the next playlist refresh.
    failed: BTreeSet<u64>,
    /// Segment URLs from the playlist (from the playhead on).
    urls: BTreeMap<u64, String>,
    stalled_since: Option<Time>,
    stall_total: Duration,
    known_max: Option<u64>,
    /// Pending playhead check: (when, segment the playhead reaches then).
    check: Option<(Time, u64)>,
    /// Segments jumped over after falling behind the live window (see
    /// [`Player::jump_to_live_window`]).
    pub skipped: u64,
    pub stalls: u32,
    pub startup: Option<Duration>,
    pub played: u64,
    /// Wants the core answered with `WantFailed`.
    pub want_failures: u64,
}

impl Player {
    pub fn new(cfg: PlayerConfig, joined: Time) -> Self {
        Player {
            cfg,
            seg_dur: Duration::from_secs(2),
            joined,
            started: None,
            start_seq: None,
            next_needed: 0,
            ready: BTreeSet::new(),
            wanted: BTreeMap::new(),
            failed: BTreeSet::new(),
            urls: BTreeMap::new(),
            stalled_since: None,
            stall_total: Duration::ZERO,
            known_max: None,
            check: None,
            skipped: 0,
            stalls: 0,
            startup: None,
            played: 0,
            want_failures: 0,
        }
    }

    /// Total time spent stalled so far (including a stall in progress).
    pub fn stall_time(&self, now: Time) -> Duration {
        self.stall_total + self.stalled_since.map_or(Duration::ZERO, |s| now.since(s))
    }

    /// The segment the playhead needs next.
    pub fn playhead(&self) -> u64 {
        self.next_needed
    }

    /// A playlist refresh: its segments can be wanted.
    pub fn on_playlist(&mut self, now: Time, pl: &Playlist, out: &mut Vec<Input>) {
        let Some(last) = pl.last_seq() else { return };
        if !pl.target_duration.is_zero() {
            self.seg_dur = pl.target_duration;
        }
        self.known_max = Some(self.known_max.map_or(last, |k| k.max(last)));
        if self.start_seq.is_none() {
            let s0 = if pl.vod {
                pl.first_seq
            } else {
                last.saturating_sub(self.cfg.live_delay.saturating_sub(1))
                    .max(pl.first_seq)
            };
            self.start_seq = Some(s0);
            self.next_needed = s0;
        }
        if !pl.vod && self.next_needed < pl.first_seq {
            self.jump_to_live_window(pl.first_seq);
        }
        for (seq, url) in (pl.first_seq..).zip(&pl.uris) {
            if seq >= self.next_needed {
                self.urls.insert(seq, url.clone());
            }
        }
        self.failed.clear();
        self.want_more(now, out);
    }

    /// The segment the playhead needs left the live playlist before it was ready (this process
    /// was starved for a while, or the origin jumped ahead): no refresh will list it again, so
    /// the playhead moves on to the oldest segment still listed, as hls.js does, instead of
    /// waiting for it for good. A stall in progress goes on until that segment is ready.
    fn jump_to_live_window(&mut self, first: u64) {
        if self.started.is_none() {
            // Not playing yet: start from there.
            self.start_seq = Some(first);
        } else {
            self.skipped += first - self.next_needed;
        }
        self.next_needed = first;
        self.ready.retain(|&s| s >= first);
        self.wanted.retain(|&s, _| s >= first);
        self.failed.retain(|&s| s >= first);
        self.urls = self.urls.split_off(&first);
        // Playing the segment before: its end is now checked against `first`.
        self.check = self.check.map(|(t, _)| (t, first));
    }

    fn deadline(&self, now: Time, seq: u64) -> Time {
        let d = self.seg_dur;
        match (self.started, self.start_seq) {
            (Some(ts), Some(s0)) => {
                if self.stalled_since.is_some() && seq == self.next_needed {
                    return now;
                }
                // Jumped-over segments take no play time.
                let n = seq.saturating_sub(s0).saturating_sub(self.skipped);
                ts + self.stall_total + d.saturating_mul(n.min(u32::MAX as u64) as u32)
            }
            (_, Some(s0)) => {
                now + d.saturating_mul(seq.saturating_sub(s0).min(u32::MAX as u64) as u32)
            }
            _ => now,
        }
    }

    fn want(&mut self, seq: u64, deadline: Time, out: &mut Vec<Input>) {
        let Some(url) = self.urls.get(&seq) else {
            return;
        };
        self.wanted.insert(seq, url.clone());
        out.push(Input::Want {
            url: url.clone(),
            seq: Some(seq),
            deadline,
            duration: self.seg_dur,
        });
    }

    fn want_more(&mut self, now: Time, out: &mut Vec<Input>) {
        let Some(known) = self.known_max else { return };
        let ahead = (self.cfg.buffer_ahead.as_secs_f64() / self.seg_dur.as_secs_f64().max(0.001))
            .ceil() as u64;
        let last = known.min(self.next_needed.saturating_add(ahead));
        for seq in self.next_needed..=last {
            if self.wanted.contains_key(&seq)
                || self.ready.contains(&seq)
                || self.failed.contains(&seq)
            {
                continue;
            }
            let deadline = self.deadline(now, seq);
            self.want(seq, deadline, out);
        }
    }

    /// The playhead moved on to `seq`: what is behind it is forgotten.
    fn advance(&mut self, seq: u64) {
        self.next_needed = seq + 1;
        self.played += 1;
        self.urls = self.urls.split_off(&self.next_needed);
    }

    /// The core handed segment `seq` over ([`peer_core::Output::SegmentReady`]).
    pub fn segment_ready(&mut self, now: Time, seq: u64, out: &mut Vec<Input>) {
        self.wanted.remove(&seq);
        if seq < self.next_needed {
            return;
        }
        self.ready.insert(seq);
        if self.started.is_none() && Some(seq) == self.start_seq {
            self.started = Some(now);
            self.startup = Some(now.since(self.joined));
            self.ready.remove(&seq);
            self.advance(seq);
            self.check = Some((now + self.seg_dur, seq + 1));
        } else if let Some(since) = self.stalled_since
            && seq == self.next_needed
        {
            self.stall_total += now.since(since);
            self.stalled_since = None;
            self.ready.remove(&seq);
            self.advance(seq);
            self.check = Some((now + self.seg_dur, seq + 1));
        }
        self.want_more(now, out);
    }

    /// The core will not deliver the segment at `url` ([`peer_core::Output::WantFailed`]).
    pub fn want_failed(&mut self, url: &str) {
        let Some(seq) = self.wanted.iter().find(|(_, u)| *u == url).map(|(s, _)| *s) else {
            return;
        };
        self.wanted.remove(&seq);
        self.failed.insert(seq);
        self.want_failures += 1;
    }

    /// When [`Player::on_timer`] must run next.
    pub fn next_check(&self) -> Option<Time> {
        self.check.map(|(t, _)| t)
    }

    /// The playhead reached the end of the current segment.
    pub fn on_timer(&mut self, now: Time, out: &mut Vec<Input>) {
        let Some((t, seq)) = self.check else { return };
        if now < t {
            return;
        }
        self.check = None;
        if self.next_needed != seq || self.stalled_since.is_some() {
            return;
        }
        if self.ready.remove(&seq) {
            self.advance(seq);
            self.check = Some((t + self.seg_dur, seq + 1));
        } else {
            self.stalled_since = Some(now);
            self.stalls += 1;
            out.push(Input::Stall);
            // Urgent now: re-want with the current time as deadline.
            if self.wanted.contains_key(&seq) {
                self.want(seq, now, out);
            }
        }
        self.want_more(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playlist(first: u64, last: u64, vod: bool, secs: u64) -> Playlist {
        Playlist {
            first_seq: first,
            uris: (first..=last)
                .map(|s| format!("http://o/seg_{s}.bin"))
                .collect(),
            target_duration: Duration::from_secs(secs),
            vod,
        }
    }

    fn wants(out: &mut Vec<Input>) -> Vec<(u64, u64)> {
        std::mem::take(out)
            .into_iter()
            .filter_map(|i| match i {
                Input::Want { seq, deadline, .. } => Some((seq?, deadline.as_millis())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn starts_live_delay_behind_and_counts_stalls() {
        let mut p = Player::new(PlayerConfig::default(), Time::ZERO);
        let mut out = Vec::new();
        p.on_playlist(Time::from_millis(10), &playlist(0, 9, false, 2), &mut out);
        // Live: three segments behind the edge (7, 8, 9), nothing plays before 7 is ready.
        assert_eq!(p.start_seq, Some(7));
        assert_eq!(wants(&mut out), vec![(7, 10), (8, 2010), (9, 4010)]);
        assert_eq!(p.next_check(), None);
        p.segment_ready(Time::from_millis(500), 7, &mut out);
        assert_eq!(p.startup, Some(Duration::from_millis(500)));
        assert_eq!(p.next_check(), Some(Time::from_millis(2500)));
        // 8 arrives in time: no stall.
        p.segment_ready(Time::from_millis(1000), 8, &mut out);
        p.on_timer(Time::from_millis(2500), &mut out);
        assert_eq!((p.stalls, p.played), (0, 2));
        assert!(out.is_empty());
        // 9 is late: one stall, lasting until it arrives; it is wanted again, now.
        p.on_timer(Time::from_millis(4500), &mut out);
        assert_eq!(p.stalls, 1);
        assert_eq!(out.first(), Some(&Input::Stall));
        assert_eq!(wants(&mut out), vec![(9, 4500)]);
        p.segment_ready(Time::from_millis(5000), 9, &mut out);
        assert_eq!(
            p.stall_time(Time::from_millis(6000)),
            Duration::from_millis(500)
        );
        assert_eq!(p.next_check(), Some(Time::from_millis(7000)));
        // A segment before the playhead is ignored.
        p.segment_ready(Time::from_millis(5100), 7, &mut out);
        assert_eq!(p.played, 3);
    }

    #[test]
    fn falling_behind_the_live_window_jumps_to_it() {
        let mut p = Player::new(PlayerConfig::default(), Time::ZERO);
        let mut out = Vec::new();
        p.on_playlist(Time::ZERO, &playlist(0, 9, false, 2), &mut out);
        p.segment_ready(Time::ZERO, 7, &mut out);
        // 8 never comes: a stall at 2 s.
        p.on_timer(Time::from_millis(2000), &mut out);
        assert_eq!((p.stalls, p.playhead()), (1, 8));
        out.clear();
        // Starved for a while: the next refresh lists 12..=16 only.
        p.on_playlist(
            Time::from_millis(9000),
            &playlist(12, 16, false, 2),
            &mut out,
        );
        assert_eq!((p.playhead(), p.skipped), (12, 4));
        let w = wants(&mut out);
        assert_eq!(
            w.first(),
            Some(&(12, 9000)),
            "the new playhead is urgent: {w:?}"
        );
        assert!(
            w.iter().all(|&(s, _)| s >= 12),
            "nothing skipped is wanted: {w:?}"
        );
        // 8 arriving now is ignored; 12 ends the stall and playing goes on from it.
        p.segment_ready(Time::from_millis(9100), 8, &mut out);
        assert_eq!(p.played, 1);
        p.segment_ready(Time::from_millis(9500), 12, &mut out);
        assert_eq!((p.stalls, p.played), (1, 2));
        assert_eq!(
            p.stall_time(Time::from_millis(9500)),
            Duration::from_millis(7500)
        );
        assert_eq!(p.next_check(), Some(Time::from_millis(11500)));
        // Playing, and behind again: the pending check now looks at the first listed segment.
        p.on_playlist(
            Time::from_millis(10000),
            &playlist(14, 18, false, 2),
            &mut out,
        );
        assert_eq!((p.playhead(), p.skipped), (14, 5));
        p.on_timer(Time::from_millis(11500), &mut out);
        assert_eq!(p.stalls, 2, "14 was not ready when 12 ended");
    }

    #[test]
    fn vod_starts_at_first_segment() {
        let mut p = Player::new(PlayerConfig::default(), Time::ZERO);
        let mut out = Vec::new();
        p.on_playlist(Time::ZERO, &playlist(0, 3, true, 4), &mut out);
        assert_eq!(p.start_seq, Some(0));
        assert_eq!(wants(&mut out).len(), 4);
    }

    #[test]
    fn failed_wants_are_counted_and_asked_again_after_a_refresh() {
        let mut p = Player::new(PlayerConfig::default(), Time::ZERO);
        let mut out = Vec::new();
        p.on_playlist(Time::ZERO, &playlist(0, 3, true, 2), &mut out);
        out.clear();
        p.want_failed("http://o/seg_1.bin");
        p.want_failed("http://o/unknown.bin");
        assert_eq!(p.want_failures, 1);
        p.segment_ready(Time::from_millis(100), 0, &mut out);
        assert!(wants(&mut out).is_empty(), "not before the next refresh");
        p.on_playlist(Time::from_millis(200), &playlist(0, 3, true, 2), &mut out);
        assert_eq!(wants(&mut out), vec![(1, 2100)]);
    }
}
