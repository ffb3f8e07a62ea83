//! A model player with the simulator's definitions (`sim/src/lib.rs`): it follows a live or VOD
//! playlist at 1×, starts `live_delay` segments behind the live edge (VOD: at the first
//! segment), wants segments up to `buffer_ahead` ahead with a deadline at their play time, and
//! counts a stall whenever the playhead reaches a segment that is not ready.
//!
//! It is sans-IO like the core: the driver calls it with the time and performs nothing for it
//! except timers ([`Player::next_check`]).

use std::collections::BTreeSet;
use std::time::Duration;

use peer_core::{PeerCore, Time};

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
    wanted: BTreeSet<u64>,
    stalled_since: Option<Time>,
    stall_total: Duration,
    known_max: Option<u64>,
    /// Pending playhead check: (when, segment the playhead reaches then).
    check: Option<(Time, u64)>,
    pub stalls: u32,
    pub startup: Option<Duration>,
    pub played: u64,
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
            wanted: BTreeSet::new(),
            stalled_since: None,
            stall_total: Duration::ZERO,
            known_max: None,
            check: None,
            stalls: 0,
            startup: None,
            played: 0,
        }
    }

    /// Total time spent stalled so far (including a stall in progress).
    pub fn stall_time(&self, now: Time) -> Duration {
        self.stall_total + self.stalled_since.map_or(Duration::ZERO, |s| now.since(s))
    }

    /// Segments `first..=last` are in the playlist (after their manifests were given to the
    /// core). `seg_dur` is the playlist's segment duration.
    pub fn on_playlist(
        &mut self,
        now: Time,
        core: &mut PeerCore,
        first: u64,
        last: u64,
        vod: bool,
        seg_dur: Duration,
    ) {
        if !seg_dur.is_zero() {
            self.seg_dur = seg_dur;
        }
        self.known_max = Some(self.known_max.map_or(last, |k| k.max(last)));
        if self.start_seq.is_none() {
            let s0 = if vod {
                first
            } else {
                last.saturating_sub(self.cfg.live_delay.saturating_sub(1))
                    .max(first)
            };
            self.start_seq = Some(s0);
            self.next_needed = s0;
        }
        self.want_more(now, core);
    }

    fn deadline(&self, now: Time, seq: u64) -> Time {
        let d = self.seg_dur;
        match (self.started, self.start_seq) {
            (Some(ts), Some(s0)) => {
                if self.stalled_since.is_some() && seq == self.next_needed {
                    return now;
                }
                ts + self.stall_total
                    + d.saturating_mul(seq.saturating_sub(s0).min(u32::MAX as u64) as u32)
            }
            (_, Some(s0)) => {
                now + d.saturating_mul(seq.saturating_sub(s0).min(u32::MAX as u64) as u32)
            }
            _ => now,
        }
    }

    fn want_more(&mut self, now: Time, core: &mut PeerCore) {
        let Some(known) = self.known_max else { return };
        let ahead = (self.cfg.buffer_ahead.as_secs_f64() / self.seg_dur.as_secs_f64().max(0.001))
            .ceil() as u64;
        let last = known.min(self.next_needed.saturating_add(ahead));
        for seq in self.next_needed..=last {
            if self.wanted.contains(&seq) || self.ready.contains(&seq) {
                continue;
            }
            let deadline = self.deadline(now, seq);
            if core.want_segment(now, seq, deadline).is_ok() {
                self.wanted.insert(seq);
            }
        }
    }

    /// The core handed segment `seq` over.
    pub fn segment_ready(&mut self, now: Time, core: &mut PeerCore, seq: u64) {
        self.wanted.remove(&seq);
        if seq < self.next_needed {
            return;
        }
        self.ready.insert(seq);
        if self.started.is_none() && Some(seq) == self.start_seq {
            self.started = Some(now);
            self.startup = Some(now.since(self.joined));
            self.ready.remove(&seq);
            self.next_needed = seq + 1;
            self.played += 1;
            self.check = Some((now + self.seg_dur, seq + 1));
        } else if let Some(since) = self.stalled_since
            && seq == self.next_needed
        {
            self.stall_total += now.since(since);
            self.stalled_since = None;
            self.ready.remove(&seq);
            self.next_needed = seq + 1;
            self.played += 1;
            self.check = Some((now + self.seg_dur, seq + 1));
        }
        self.want_more(now, core);
    }

    /// When [`Player::on_timer`] must run next.
    pub fn next_check(&self) -> Option<Time> {
        self.check.map(|(t, _)| t)
    }

    /// The playhead reached the end of the current segment.
    pub fn on_timer(&mut self, now: Time, core: &mut PeerCore) {
        let Some((t, seq)) = self.check else { return };
        if now < t {
            return;
        }
        self.check = None;
        if self.next_needed != seq || self.stalled_since.is_some() {
            return;
        }
        if self.ready.remove(&seq) {
            self.next_needed = seq + 1;
            self.played += 1;
            self.check = Some((t + self.seg_dur, seq + 1));
            self.want_more(now, core);
        } else {
            self.stalled_since = Some(now);
            self.stalls += 1;
            core.report_stall(now);
            tracing::warn!(
                seq,
                t = now.as_secs_f64(),
                "stall: {}",
                core.describe_segment(seq)
            );
            // Urgent now: re-want with the current time as deadline.
            if self.wanted.contains(&seq) {
                let _ = core.want_segment(now, seq, now);
            }
            self.want_more(now, core);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peer_core::Config;
    use protocol::SegmentManifest;

    fn core_with(seqs: std::ops::RangeInclusive<u64>) -> PeerCore {
        let mut core = PeerCore::new(Config {
            p2p: false,
            upload: false,
            ..Default::default()
        });
        for seq in seqs {
            let m = SegmentManifest::compute(seq, format!("seg_{seq}.bin"), &[seq as u8; 100]);
            core.add_segment(Time::ZERO, m, format!("http://o/seg_{seq}.bin"));
        }
        core
    }

    #[test]
    fn starts_live_delay_behind_and_counts_stalls() {
        let mut core = core_with(0..=9);
        let mut p = Player::new(PlayerConfig::default(), Time::ZERO);
        let d = Duration::from_secs(2);
        p.on_playlist(Time::from_millis(10), &mut core, 0, 9, false, d);
        // Live: three segments behind the edge (7, 8, 9), nothing plays before 7 is ready.
        assert_eq!(p.start_seq, Some(7));
        assert_eq!(p.next_check(), None);
        p.segment_ready(Time::from_millis(500), &mut core, 7);
        assert_eq!(p.startup, Some(Duration::from_millis(500)));
        assert_eq!(p.next_check(), Some(Time::from_millis(2500)));
        // 8 arrives in time: no stall.
        p.segment_ready(Time::from_millis(1000), &mut core, 8);
        p.on_timer(Time::from_millis(2500), &mut core);
        assert_eq!((p.stalls, p.played), (0, 2));
        // 9 is late: one stall, lasting until it arrives.
        p.on_timer(Time::from_millis(4500), &mut core);
        assert_eq!(p.stalls, 1);
        p.segment_ready(Time::from_millis(5000), &mut core, 9);
        assert_eq!(
            p.stall_time(Time::from_millis(6000)),
            Duration::from_millis(500)
        );
        assert_eq!(p.next_check(), Some(Time::from_millis(7000)));
        // A segment before the playhead is ignored.
        p.segment_ready(Time::from_millis(5100), &mut core, 7);
        assert_eq!(p.played, 3);
    }

    #[test]
    fn vod_starts_at_first_segment() {
        let mut core = core_with(0..=3);
        let mut p = Player::new(PlayerConfig::default(), Time::ZERO);
        p.on_playlist(Time::ZERO, &mut core, 0, 3, true, Duration::from_secs(4));
        assert_eq!(p.start_seq, Some(0));
    }
}
