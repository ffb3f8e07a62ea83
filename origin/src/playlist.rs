//! Source playlists (parsed with `m3u8-rs`) and the sliding-window live playlists we generate.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::OriginError;

/// A media playlist as read from disk, reduced to what the origin needs.
#[derive(Debug, Clone)]
pub struct SourcePlaylist {
    pub target_duration: u64,
    pub media_sequence: u64,
    /// First EXT-X-MAP URI (fMP4), as written.
    pub map_uri: Option<String>,
    /// More than one distinct EXT-X-MAP (not supported for live).
    pub several_maps: bool,
    pub segments: Vec<SourceSegment>,
}

#[derive(Debug, Clone)]
pub struct SourceSegment {
    /// URI as written in the playlist.
    pub uri: String,
    /// EXTINF duration in milliseconds.
    pub dur_ms: u64,
}

pub enum Parsed {
    Master,
    Media(SourcePlaylist),
}

/// Parses playlist text; `path` is only used in error messages.
pub fn parse(path: &Path, text: &[u8]) -> Result<Parsed, OriginError> {
    let bad = |reason: String| OriginError::BadPlaylist {
        path: path.to_path_buf(),
        reason,
    };
    if !text.starts_with(b"#EXTM3U") && !text.starts_with(b"\xEF\xBB\xBF#EXTM3U") {
        return Err(bad("does not start with #EXTM3U".into()));
    }
    let pl = m3u8_rs::parse_playlist_res(text).map_err(|e| {
        let e = e.map(|e| e.code);
        bad(format!("not a valid HLS playlist ({e:?})"))
    })?;
    let m = match pl {
        m3u8_rs::Playlist::MasterPlaylist(_) => return Ok(Parsed::Master),
        m3u8_rs::Playlist::MediaPlaylist(m) => m,
    };
    let mut map_uri: Option<String> = None;
    let mut several_maps = false;
    let mut segments = Vec::with_capacity(m.segments.len());
    for s in &m.segments {
        if s.byte_range.is_some() {
            return Err(bad(format!(
                "segment {:?}: EXT-X-BYTERANGE is not supported",
                s.uri
            )));
        }
        if let Some(map) = &s.map {
            if map.byte_range.is_some() {
                return Err(bad("EXT-X-MAP with BYTERANGE is not supported".into()));
            }
            match &map_uri {
                None => map_uri = Some(map.uri.clone()),
                Some(u) if *u != map.uri => several_maps = true,
                Some(_) => {}
            }
        }
        if !(s.duration.is_finite() && s.duration >= 0.0) {
            return Err(bad(format!("segment {:?}: bad EXTINF duration", s.uri)));
        }
        if s.uri.trim().is_empty() {
            return Err(bad("segment with an empty URI".into()));
        }
        segments.push(SourceSegment {
            uri: s.uri.trim().to_string(),
            dur_ms: (f64::from(s.duration) * 1000.0).round() as u64,
        });
    }
    if segments.len() > protocol::manifest::MAX_SEGMENTS {
        return Err(bad(format!("{} segments, over the limit", segments.len())));
    }
    Ok(Parsed::Media(SourcePlaylist {
        target_duration: m.target_duration,
        media_sequence: m.media_sequence,
        map_uri,
        several_maps,
        segments,
    }))
}

/// A looping timeline of segment durations (ms). Segment `k` (the live media sequence number)
/// plays file `k % n`; its start time is counted from the stream's epoch.
#[derive(Debug, Clone)]
pub struct Timeline {
    durs: Vec<u64>,
    /// Cumulative end time of each segment within one loop.
    ends: Vec<u64>,
    total: u64,
}

impl Timeline {
    /// `durs` must be non-empty with a positive sum (checked by callers).
    pub fn new(durs: Vec<u64>) -> Option<Self> {
        let mut ends = Vec::with_capacity(durs.len());
        let mut t = 0u64;
        for d in &durs {
            t = t.checked_add(*d)?;
            ends.push(t);
        }
        (t > 0).then_some(Timeline {
            durs,
            ends,
            total: t,
        })
    }

    pub fn len(&self) -> u64 {
        self.durs.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.durs.is_empty()
    }

    pub fn dur_ms(&self, k: u64) -> u64 {
        self.durs[(k % self.len()) as usize]
    }

    pub fn start_ms(&self, k: u64) -> u64 {
        let i = (k % self.len()) as usize;
        (k / self.len()).saturating_mul(self.total) + (self.ends[i] - self.durs[i])
    }

    pub fn end_ms(&self, k: u64) -> u64 {
        self.start_ms(k) + self.dur_ms(k)
    }

    /// How many segments have finished by `elapsed_ms` (so are published).
    pub fn available(&self, elapsed_ms: u64) -> u64 {
        let loops = elapsed_ms / self.total;
        let rem = elapsed_ms % self.total;
        loops * self.len() + self.ends.partition_point(|&e| e <= rem) as u64
    }

    /// Longest segment, rounded up to whole seconds (EXT-X-TARGETDURATION).
    pub fn max_secs(&self) -> u64 {
        self.durs.iter().max().copied().unwrap_or(0).div_ceil(1000)
    }
}

/// The window of a live playlist at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First media sequence number listed.
    pub first: u64,
    /// One past the last (= segments published so far).
    pub end: u64,
}

/// Epoch such that `window` segments are already published at `now`: a viewer joining right
/// after the origin starts gets a full window rather than an empty playlist.
pub fn epoch_for(now: SystemTime, tl: &Timeline, window: usize) -> SystemTime {
    let pre = tl.end_ms(window.saturating_sub(1) as u64);
    now.checked_sub(Duration::from_millis(pre))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

pub fn window_at(tl: &Timeline, epoch: SystemTime, now: SystemTime, window: usize) -> Window {
    let elapsed = now.duration_since(epoch).unwrap_or_default().as_millis() as u64;
    let end = tl.available(elapsed);
    Window {
        first: end.saturating_sub(window as u64),
        end,
    }
}

/// What a live media playlist needs besides the timeline.
pub struct LiveRender<'a> {
    pub target_duration: u64,
    pub map_uri: Option<&'a str>,
    /// `#EXT-X-DISCONTINUITY` where the timeline loops (file n-1 → file 0).
    pub loops: bool,
}

/// Writes the sliding-window media playlist. Discontinuity numbering: segment `k` belongs to
/// discontinuity sequence `k / n` (one EXT-X-DISCONTINUITY before each loop start); the tag is
/// written only between two listed segments and EXT-X-DISCONTINUITY-SEQUENCE is the first listed
/// segment's number, so a player counts the same value for a segment in every refresh.
pub fn render_live(
    r: &LiveRender<'_>,
    tl: &Timeline,
    epoch: SystemTime,
    w: Window,
    uri_of: impl Fn(u64) -> String,
) -> String {
    let mut out = String::with_capacity(128 + 96 * (w.end - w.first) as usize);
    let version = if r.map_uri.is_some() { 6 } else { 3 };
    let target = r.target_duration.max(tl.max_secs()).max(1);
    let dseq = if r.loops { w.first / tl.len() } else { 0 };
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-TARGETDURATION:{target}\n\
         #EXT-X-MEDIA-SEQUENCE:{}\n#EXT-X-DISCONTINUITY-SEQUENCE:{dseq}\n",
        w.first
    );
    if let Some(map) = r.map_uri {
        let _ = writeln!(out, "#EXT-X-MAP:URI=\"{map}\"");
    }
    for k in w.first..w.end {
        if r.loops && k > w.first && k % tl.len() == 0 {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let pdt = epoch + Duration::from_millis(tl.start_ms(k));
        let d = tl.dur_ms(k);
        let _ = write!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{}.{:03},\n{}\n",
            humantime::format_rfc3339_millis(pdt),
            d / 1000,
            d % 1000,
            uri_of(k)
        );
    }
    out
}

/// Live segment file name: `seg_<seq>.<ext>` for a playlist named `index.m3u8`, else
/// `<stem>_seg_<seq>.<ext>` (so two playlists in one folder never share a URL).
pub fn live_segment_name(stem: &str, seq: u64, ext: &str) -> String {
    if stem == "index" {
        format!("seg_{seq}.{ext}")
    } else {
        format!("{stem}_seg_{seq}.{ext}")
    }
}

/// Inverse of [`live_segment_name`]: (stem, seq, ext). Only the canonical decimal form is
/// accepted, so one sequence number has exactly one URL.
pub fn parse_live_segment_name(file: &str) -> Option<(String, u64, &str)> {
    let (base, ext) = file.rsplit_once('.')?;
    let (prefix, digits) = base.rsplit_once("seg_")?;
    let seq: u64 = digits.parse().ok()?;
    if seq.to_string() != digits {
        return None;
    }
    let stem = if prefix.is_empty() {
        "index".to_string()
    } else {
        prefix.strip_suffix('_')?.to_string()
    };
    Some((stem, seq, ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_math() {
        let tl = Timeline::new(vec![2000, 1000, 3000]).expect("timeline");
        assert_eq!(tl.available(0), 0);
        assert_eq!(tl.available(1999), 0);
        assert_eq!(tl.available(2000), 1);
        assert_eq!(tl.available(5999), 2);
        assert_eq!(tl.available(6000), 3);
        assert_eq!(tl.available(8000), 4);
        assert_eq!(tl.start_ms(3), 6000);
        assert_eq!(tl.start_ms(5), 9000);
        assert_eq!(tl.end_ms(5), 12000);
        assert_eq!(tl.max_secs(), 3);
        assert!(Timeline::new(vec![0, 0]).is_none());
    }

    #[test]
    fn segment_names_round_trip() {
        for (stem, seq, ext) in [
            ("index", 0u64, "m4s"),
            ("video", 42, "ts"),
            ("a_b", 7, "m4s"),
        ] {
            let n = live_segment_name(stem, seq, ext);
            assert_eq!(
                parse_live_segment_name(&n),
                Some((stem.to_string(), seq, ext))
            );
        }
        assert_eq!(parse_live_segment_name("seg_007.m4s"), None);
        assert_eq!(parse_live_segment_name("seg_x.m4s"), None);
        assert_eq!(parse_live_segment_name("init.mp4"), None);
        assert_eq!(parse_live_segment_name("fooseg_1.ts"), None);
    }

    #[test]
    fn parse_errors_are_clear() {
        let p = Path::new("x.m3u8");
        assert!(matches!(
            parse(p, b"hello"),
            Err(OriginError::BadPlaylist { .. })
        ));
        let br = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-BYTERANGE:100@0\n#EXTINF:2,\na.ts\n";
        let e = parse(p, br)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("BYTERANGE"), "{e}");
    }
}
