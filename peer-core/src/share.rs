//! The origin share: the part of each segment this member fetches from the origin as soon as
//! the segment appears, so that peers are asked only for what the swarm's uplinks can carry.
//!
//! Where uplinks are scarcer than the stream's bitrate (viewers upload 1 Mbit/s of a 2 Mbit/s
//! stream), peers cannot deliver everything: at most `uplink ÷ bitrate` of each segment can
//! come from them. Without a share, every member asks its peers for all of it, and at the
//! deadline cutoff takes what is still missing from the origin: requests then in flight are
//! cancelled after part of them was uploaded, or arrive after the origin's copy — the same
//! bytes travel twice, and the uploads that made them cost uplink that could have carried
//! something useful. With the share, the origin's part is decided up front, fetched at once
//! (its bytes are then there to upload for the whole segment's life), and peers are asked for
//! the rest only.
//!
//! The fraction is learned, not computed from advertised uplinks (they say what a link
//! carried, not what the swarm's timing lets it deliver): after each segment, the fraction of
//! its chunks that still had to come from the origin late raises it ([`GAIN`] × that
//! fraction), and a segment that needed none lowers it by [`DECAY`]. In balance, a segment
//! needs a late fetch about as often as `DECAY ÷ (GAIN × late fraction)` allows: the share
//! takes only the part of each segment that peers keep failing to deliver, and leaves them
//! what is merely tight in time. (Measured in the simulator, 20 viewers at 1 Mbit/s up:
//! 0.5 and 0.01, which settle at 2 % of chunks late, left uplinks a third idle and saved 0.37
//! of the origin's bytes; 0.2 and 0.05 saved 0.42 for waste 2.8 % of delivered bytes, against
//! 0.435 and 3.2 % without a share.) Where uplinks are plentiful, it stays at 0 and changes
//! nothing.
//!
//! Which chunks: a contiguous run (one HTTP range, two when it wraps) starting at this
//! member's slot's place in the segment, so members fetch different chunks, every chunk is
//! held early by about `fraction × N` members, and they have something to trade.

use crate::stats::HttpCause;
use crate::{PeerCore, Time};

/// Raise per late fraction of a segment.
const GAIN: f64 = 0.2;
/// Lowering per segment that needed no late fetch.
const DECAY: f64 = 0.05;
/// The share never takes the whole segment: peers always get a chance at some of it.
const MAX_FRACTION: f64 = 0.9;

#[derive(Debug, Default)]
pub struct OriginShare {
    /// Fraction of each segment fetched from the origin up front.
    pub fraction: f64,
}

impl OriginShare {
    /// Segment judged: `late` of its `n` chunks came from the origin after the cutoff.
    pub fn judge(&mut self, late: usize, n: usize) {
        let late = late as f64 / n.max(1) as f64;
        self.fraction = if late > 0.0 {
            self.fraction + GAIN * late
        } else {
            self.fraction - DECAY
        }
        .clamp(0.0, MAX_FRACTION);
    }
}

impl PeerCore {
    /// Fetches our share of `seq` from the origin, once per segment, when it is first
    /// scheduled with time left for peers (`fair`: only such segments teach the share; one
    /// wanted at once, at join or after a seek, says nothing of the swarm).
    pub(crate) fn fetch_share(&mut self, now: Time, seq: u64, fair: bool) {
        let Some(s) = self.store.segments.get_mut(&seq) else {
            return;
        };
        if s.share_decided {
            return;
        }
        s.share_decided = true;
        s.share_judged = !fair;
        let n = s.chunks.len();
        let k = ((self.share.fraction * n as f64).round() as usize).min(n);
        if k == 0 || !fair {
            return;
        }
        let offset = match self.session.slot {
            Some((slot, slots)) => slot as usize * n / (slots as usize).max(1),
            None => 0,
        } % n.max(1);
        let end = offset + k;
        self.request_from_http(now, seq, false, offset..end.min(n), HttpCause::Share);
        if end > n {
            self.request_from_http(now, seq, false, 0..end - n, HttpCause::Share);
        }
    }

    /// `seq` is complete: teaches the share how many of its chunks had to come late.
    pub(crate) fn judge_share(&mut self, seq: u64) {
        let Some(s) = self.store.segments.get_mut(&seq) else {
            return;
        };
        if !s.share_decided || s.share_judged || !s.complete() {
            return;
        }
        s.share_judged = true;
        let (late, n) = (s.late_chunks as usize, s.chunks.len());
        self.share.judge(late, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_with_late_chunks_and_falls_without() {
        let mut s = OriginShare::default();
        for _ in 0..10 {
            s.judge(0, 32);
        }
        assert_eq!(s.fraction, 0.0, "plentiful uplinks: no share");
        s.judge(16, 32);
        assert!((s.fraction - 0.1).abs() < 1e-9);
        for _ in 0..1000 {
            s.judge(32, 32);
        }
        assert_eq!(s.fraction, MAX_FRACTION);
    }
}
