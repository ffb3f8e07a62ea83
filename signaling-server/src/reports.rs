//! Viewers' `stats` reports turned into deltas the operator's counters can trust.
//!
//! A report is cumulative since joining, so each (connection, swarm) keeps the previous one and
//! adds the difference. Viewers are untrusted: a difference must also be plausible. Each counter
//! has a credit that refills at a generous rate (bytes: `--stats-max-mbps`; stalls: 1/s;
//! integrity failures: one per 16 KiB chunk at that bitrate) and holds at most [`BURST_S`]
//! seconds of it; a delta must fit the credit and spends it. A report that does not fit, that
//! goes down, or that claims more than [`MAX_PEERS`] connections is ignored (counted by reason)
//! and becomes the new baseline, so an honest viewer's next report counts again and an absurd
//! value can never be added later.

use protocol::signaling::StatsReport;

/// Seconds of traffic at the maximum rate a counter may report at once (its credit's size).
pub const BURST_S: f64 = 10.0;
/// Largest plausible `peers` (peer-core keeps 12 by default).
pub const MAX_PEERS: u32 = 1024;

/// Why a report was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// A counter grew faster than its credit allows.
    TooFast = 0,
    /// A counter went down (within one membership they only grow).
    WentDown,
    /// `peers` over [`MAX_PEERS`].
    Peers,
}

pub const REJECTED_NAMES: [&str; 3] = ["too_fast", "went_down", "peers"];

/// Per-second refill of each counter's credit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    bytes_per_s: f64,
}

impl Limits {
    pub fn new(max_mbps: u32) -> Self {
        Limits {
            bytes_per_s: f64::from(max_mbps) * 125_000.0,
        }
    }

    /// http, p2p, uploaded, stalls, integrity failures.
    fn rates(&self) -> [f64; 5] {
        let b = self.bytes_per_s;
        [b, b, b, 1.0, b / 16_384.0]
    }
}

/// What one (connection, swarm) reported so far.
#[derive(Debug, Clone)]
pub struct Track {
    /// Baseline of the cumulative counters (the last report, accepted or not).
    last: StatsReport,
    /// The last accepted `peers` (what the swarm's link sum holds for this member).
    peers: u32,
    at_ms: u64,
    credit: [f64; 5],
}

/// An accepted report: the counters' deltas, and the change of `peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub counters: StatsReport,
    pub peers: i64,
}

impl Track {
    /// Nothing reported yet, full credit.
    pub fn new(now_ms: u64, limits: Limits) -> Self {
        Track {
            last: StatsReport::default(),
            peers: 0,
            at_ms: now_ms,
            credit: limits.rates().map(|r| r * BURST_S),
        }
    }

    /// The last accepted `peers` (to take out of the swarm's sum when the member leaves).
    pub fn peers(&self) -> u32 {
        self.peers
    }

    pub fn accept(
        &mut self,
        now_ms: u64,
        report: &StatsReport,
        limits: Limits,
    ) -> Result<Delta, Rejected> {
        let rates = limits.rates();
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.at_ms = now_ms.max(self.at_ms);
        for (c, r) in self.credit.iter_mut().zip(rates) {
            *c = (*c + r * elapsed).min(r * BURST_S);
        }
        let p = &self.last;
        let new = [
            report.http_bytes,
            report.p2p_bytes,
            report.uploaded_bytes,
            u64::from(report.stalls),
            u64::from(report.integrity_failures),
        ];
        let old = [
            p.http_bytes,
            p.p2p_bytes,
            p.uploaded_bytes,
            u64::from(p.stalls),
            u64::from(p.integrity_failures),
        ];
        let verdict = if report.peers > MAX_PEERS {
            Err(Rejected::Peers)
        } else if new.iter().zip(&old).any(|(n, o)| n < o) {
            Err(Rejected::WentDown)
        } else if new
            .iter()
            .zip(&old)
            .zip(&self.credit)
            .any(|((n, o), c)| (n - o) as f64 > *c)
        {
            Err(Rejected::TooFast)
        } else {
            Ok(())
        };
        let previous = std::mem::replace(&mut self.last, report.clone());
        verdict?;
        let d: Vec<u64> = new.iter().zip(&old).map(|(n, o)| n - o).collect();
        for (c, d) in self.credit.iter_mut().zip(&d) {
            *c -= *d as f64;
        }
        let peers = i64::from(report.peers) - i64::from(self.peers);
        self.peers = report.peers;
        Ok(Delta {
            counters: StatsReport {
                http_bytes: report.http_bytes - previous.http_bytes,
                p2p_bytes: report.p2p_bytes - previous.p2p_bytes,
                uploaded_bytes: report.uploaded_bytes - previous.uploaded_bytes,
                stalls: report.stalls - previous.stalls,
                peers: report.peers,
                integrity_failures: report.integrity_failures - previous.integrity_failures,
            },
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(http: u64, stalls: u32, peers: u32) -> StatsReport {
        StatsReport {
            http_bytes: http,
            stalls,
            peers,
            ..Default::default()
        }
    }

    #[test]
    fn deltas_within_credit_and_rebaseline() {
        let l = Limits::new(8); // 1 MB/s, 10 MB of burst.
        let mut t = Track::new(0, l);
        let d = t.accept(1000, &r(4_000_000, 1, 2), l);
        assert_eq!(
            d.map(|d| (d.counters.http_bytes, d.peers)),
            Ok((4_000_000, 2))
        );
        // 6 MB of credit left: 7 MB more at once is too fast, and becomes the baseline.
        assert_eq!(
            t.accept(1000, &r(11_000_000, 1, 2), l),
            Err(Rejected::TooFast)
        );
        let d = t.accept(2000, &r(11_500_000, 1, 3), l);
        assert_eq!(
            d.map(|d| (d.counters.http_bytes, d.peers)),
            Ok((500_000, 1))
        );
        assert_eq!(t.accept(2000, &r(1, 1, 3), l), Err(Rejected::WentDown));
        assert_eq!(t.accept(2000, &r(2, 1, 5000), l), Err(Rejected::Peers));
        assert_eq!(t.peers(), 3);
        // Stalls: 1/s, 10 at once at most.
        assert_eq!(t.accept(3000, &r(2, 30, 3), l), Err(Rejected::TooFast));
        assert!(t.accept(4000, &r(2, 35, 3), l).is_ok());
        // A long quiet spell refills to the burst, not beyond.
        assert_eq!(
            t.accept(1_000_000, &r(12_000_002, 35, 3), l),
            Err(Rejected::TooFast)
        );
        assert!(
            t.accept(1_000_000, &r(12_000_002 + 9_000_000, 35, 3), l)
                .is_ok()
        );
    }
}
