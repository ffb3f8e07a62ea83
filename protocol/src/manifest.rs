//! The integrity manifest: for each segment its byte length, the SHA-256 of the whole segment and
//! the SHA-256 of each [`CHUNK_SIZE`] chunk. The origin publishes it as a JSON sidecar next to a
//! media playlist (`<playlist stem>.integrity.json`); a peer checks every chunk that another
//! viewer sends against it before storing, relaying or playing it.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Chunk size for hashing and peer transfer. 16 KiB is what BitTorrent v2 uses for its merkle
/// leaves and keeps a chunk frame far below the 64 KiB SCTP message limit.
pub const CHUNK_SIZE: usize = 16 * 1024;

/// Largest segment we accept in a manifest (64 MiB): bounds every buffer sized from a manifest.
pub const MAX_SEGMENT_LEN: u64 = 64 * 1024 * 1024;

/// Most segments one manifest may list (a VOD of 10 h in 2 s segments fits).
pub const MAX_SEGMENTS: usize = 20_000;

/// Manifest format version.
pub const MANIFEST_VERSION: u8 = 1;

pub type Hash = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// Number of chunks of a segment of `len` bytes (the last one may be short; an empty segment
/// has zero chunks).
pub fn chunk_count(len: u64) -> usize {
    len.div_ceil(CHUNK_SIZE as u64) as usize
}

/// Byte range `[start, end)` of chunk `index` in a segment of `len` bytes.
///
/// An index past the last chunk gives the empty range `(len, len)`, never `start > end`: callers
/// compute `end - start` and index buffers with it, and `index` may come from a peer.
pub fn chunk_range(len: u64, index: usize) -> (u64, u64) {
    let start = (index as u64).saturating_mul(CHUNK_SIZE as u64).min(len);
    let end = start.saturating_add(CHUNK_SIZE as u64).min(len);
    (start, end)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("unsupported manifest version {0}")]
    Version(u8),
    #[error("chunk size {0} is not the protocol's {CHUNK_SIZE}")]
    ChunkSize(u32),
    #[error("too many segments: {0}")]
    TooManySegments(usize),
    #[error("segment {seq}: length {len} over the limit")]
    TooLong { seq: u64, len: u64 },
    #[error("segment {seq}: bad hash encoding")]
    BadHash { seq: u64 },
    #[error("segment {seq}: {got} chunk hashes, expected {expected}")]
    ChunkCount {
        seq: u64,
        got: usize,
        expected: usize,
    },
    /// Two entries for the same media sequence number: segments are looked up by `seq`, so
    /// receivers could otherwise disagree on which hashes apply.
    #[error("segment {seq} listed twice")]
    DuplicateSeq { seq: u64 },
}

/// Integrity data of one segment. (Serde derives are for recording peer sessions; the wire
/// format is [`EncodedSegment`].)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentManifest {
    /// Media sequence number of the segment in its playlist.
    pub seq: u64,
    /// URI as written in the playlist (relative or absolute); informative, the key is `seq`.
    pub uri: String,
    pub len: u64,
    pub sha256: Hash,
    pub chunks: Vec<Hash>,
}

impl SegmentManifest {
    /// Computes the manifest entry for `data`.
    pub fn compute(seq: u64, uri: impl Into<String>, data: &[u8]) -> Self {
        let chunks = data.chunks(CHUNK_SIZE).map(sha256).collect();
        SegmentManifest {
            seq,
            uri: uri.into(),
            len: data.len() as u64,
            sha256: sha256(data),
            chunks,
        }
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Byte range of chunk `index`.
    pub fn chunk_range(&self, index: usize) -> (u64, u64) {
        chunk_range(self.len, index)
    }

    /// Length in bytes of chunk `index` (0 when out of range).
    pub fn chunk_len(&self, index: usize) -> usize {
        if index >= self.chunks.len() {
            return 0;
        }
        let (s, e) = self.chunk_range(index);
        (e - s) as usize
    }

    /// True when `data` is exactly chunk `index` of this segment.
    pub fn verify_chunk(&self, index: usize, data: &[u8]) -> bool {
        match self.chunks.get(index) {
            Some(h) => data.len() == self.chunk_len(index) && sha256(data) == *h,
            None => false,
        }
    }

    /// True when `data` is exactly the whole segment.
    pub fn verify_segment(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.len && sha256(data) == self.sha256
    }
}

/// A manifest: the integrity data of the segments of one media playlist.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub segments: Vec<SegmentManifest>,
}

#[derive(Serialize, Deserialize)]
struct ManifestJson {
    v: u8,
    chunk_size: u32,
    segments: Vec<EncodedSegment>,
}

/// One entry of the JSON sidecar's `segments` as written, hashes still encoded: what
/// [`Manifest::from_encoded`] validates. For decoders that walk the JSON themselves (the
/// browser peer parses it with the browser's `JSON.parse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedSegment {
    pub seq: u64,
    pub uri: String,
    pub len: u64,
    /// Hex SHA-256 of the whole segment.
    pub sha256: String,
    /// Base64 (standard, padded) of the concatenated 32-byte SHA-256 of each chunk.
    pub chunks: String,
}

impl Manifest {
    /// Encodes as the JSON sidecar format.
    pub fn to_json(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let json = ManifestJson {
            v: MANIFEST_VERSION,
            chunk_size: CHUNK_SIZE as u32,
            segments: self
                .segments
                .iter()
                .map(|s| EncodedSegment {
                    seq: s.seq,
                    uri: s.uri.clone(),
                    len: s.len,
                    sha256: hex::encode(s.sha256),
                    chunks: b64.encode(s.chunks.concat()),
                })
                .collect(),
        };
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }

    /// Decodes and validates a JSON sidecar. Never panics on hostile input.
    ///
    /// Checks: `v` and `chunk_size`, at most [`MAX_SEGMENTS`] segments, unique `seq`, `len` at
    /// most [`MAX_SEGMENT_LEN`], `sha256` 64 hex digits, `chunks` canonical padded base64 of
    /// exactly `ceil(len / CHUNK_SIZE)` hashes.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let json: ManifestJson =
            serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
        Self::from_encoded(json.v, json.chunk_size, json.segments)
    }

    /// Validates a manifest whose JSON was already taken apart: `v`, `chunk_size` and the
    /// `segments` entries as written. Every check of [`Manifest::from_json`] but the JSON
    /// syntax is made here.
    pub fn from_encoded(
        v: u8,
        chunk_size: u32,
        segments: Vec<EncodedSegment>,
    ) -> Result<Self, ManifestError> {
        if v != MANIFEST_VERSION {
            return Err(ManifestError::Version(v));
        }
        if chunk_size as usize != CHUNK_SIZE {
            return Err(ManifestError::ChunkSize(chunk_size));
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(ManifestError::TooManySegments(segments.len()));
        }
        let encoded = segments;
        let mut segments = Vec::with_capacity(encoded.len());
        // Unique `seq`s, checked on a sorted copy instead of a set: no B-tree or hash table
        // code in the browser bundle for this one check (≈ 2 KB gzip, docs/BUNDLE.md), and
        // O(n log n) whatever the order. Sorted by a heap: a `sort_unstable` of `u64` would
        // add another instance of std's sort to the bundle (+1.5 KB gzip measured), a heap's
        // code is a fraction of that. A duplicate is reported before any other error.
        let seqs: std::collections::BinaryHeap<u64> = encoded.iter().map(|s| s.seq).collect();
        let seqs = seqs.into_sorted_vec();
        if let Some(w) = seqs.windows(2).find(|w| w[0] == w[1]) {
            return Err(ManifestError::DuplicateSeq { seq: w[0] });
        }
        for s in encoded {
            let seq = s.seq;
            if s.len > MAX_SEGMENT_LEN {
                return Err(ManifestError::TooLong { seq, len: s.len });
            }
            let mut sha = [0u8; 32];
            hex::decode_to_slice(&s.sha256, &mut sha)
                .map_err(|_| ManifestError::BadHash { seq })?;
            let raw = decode_base64(s.chunks.as_bytes()).ok_or(ManifestError::BadHash { seq })?;
            if !raw.len().is_multiple_of(32) {
                return Err(ManifestError::BadHash { seq });
            }
            let expected = chunk_count(s.len);
            let got = raw.len() / 32;
            if got != expected {
                return Err(ManifestError::ChunkCount { seq, got, expected });
            }
            let chunks = raw
                .chunks_exact(32)
                .map(|c| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(c);
                    h
                })
                .collect();
            segments.push(SegmentManifest {
                seq,
                uri: s.uri,
                len: s.len,
                sha256: sha,
                chunks,
            });
        }
        Ok(Manifest { segments })
    }
}

/// Standard base64 with `=` padding, canonical only: what base64's `STANDARD` engine decodes
/// (padding required, no bits set past the last byte), written out because that engine's
/// general-purpose decoder costs the browser bundle ≈ 1.5 KB gzip (docs/BUNDLE.md) for this
/// one call. A proptest compares the two.
fn decode_base64(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let quads = s.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, q) in s.chunks_exact(4).enumerate() {
        // Only the last quad may end in one or two `=`; anywhere else `=` fails `sextet`.
        let pad = if i + 1 == quads {
            q.iter().rev().take_while(|c| **c == b'=').count()
        } else {
            0
        };
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for c in &q[..4 - pad] {
            n = n << 6 | u32::from(sextet(*c)?);
        }
        n <<= 6 * pad;
        // Canonical: the bits after the last whole byte are zero.
        if n & ((1u32 << (8 * pad)) - 1) != 0 {
            return None;
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    Some(out)
}

/// The value of one base64 digit.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The hand-written decoder accepts and refuses exactly what base64's `STANDARD`
        /// engine does, with the same bytes: encodings of random data, and random strings over
        /// the alphabet plus `=` (mostly refused: padding, length, trailing bits).
        #[test]
        fn base64_decodes_like_the_crate(
            data in proptest::collection::vec(any::<u8>(), 0..70),
            text in "[A-Za-z0-9+/=]{0,12}",
            junk in "[A-Za-z0-9+/=\\-_ .\n]{0,9}",
        ) {
            let b64 = base64::engine::general_purpose::STANDARD;
            let enc = b64.encode(&data);
            prop_assert_eq!(decode_base64(enc.as_bytes()), Some(data));
            for t in [text.as_str(), junk.as_str()] {
                prop_assert_eq!(decode_base64(t.as_bytes()), b64.decode(t).ok(), "{:?}", t);
            }
        }
    }

    #[test]
    fn base64_edge_cases() {
        let b64 = base64::engine::general_purpose::STANDARD;
        for t in [
            "", "AA==", "AB==", "AAA=", "AAB=", "A===", "====", "AA=A", "AAAA", "AA==AAAA", "QQ",
        ] {
            assert_eq!(decode_base64(t.as_bytes()), b64.decode(t).ok(), "{t:?}");
        }
    }

    #[test]
    fn compute_and_verify() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let m = SegmentManifest::compute(7, "seg_007.m4s", &data);
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.chunk_len(2), 40_000 - 2 * CHUNK_SIZE);
        assert!(m.verify_chunk(1, &data[CHUNK_SIZE..2 * CHUNK_SIZE]));
        assert!(!m.verify_chunk(1, &data[..CHUNK_SIZE]));
        assert!(!m.verify_chunk(3, &data[..10]));
        assert!(m.verify_segment(&data));
        assert!(!m.verify_segment(&data[..39_999]));
    }

    #[test]
    fn json_round_trip() {
        let a = SegmentManifest::compute(1, "a.ts", &[1u8; 20_000]);
        let b = SegmentManifest::compute(2, "b.ts", &[]);
        let m = Manifest {
            segments: vec![a, b],
        };
        let back = Manifest::from_json(&m.to_json()).expect("round trip");
        assert_eq!(back, m);
    }

    #[test]
    fn from_encoded_is_from_json_without_the_syntax() {
        let m = Manifest {
            segments: vec![SegmentManifest::compute(3, "c.ts", &[7u8; 40_000])],
        };
        let json: ManifestJson = serde_json::from_str(&m.to_json()).expect("json");
        assert_eq!(
            Manifest::from_encoded(json.v, json.chunk_size, json.segments.clone()),
            Ok(m)
        );
        assert_eq!(
            Manifest::from_encoded(2, json.chunk_size, json.segments.clone()),
            Err(ManifestError::Version(2))
        );
        let mut bad = json.segments;
        bad[0].sha256.pop();
        assert_eq!(
            Manifest::from_encoded(1, CHUNK_SIZE as u32, bad),
            Err(ManifestError::BadHash { seq: 3 })
        );
    }

    #[test]
    fn json_rejects_wrong_chunk_count() {
        let m = Manifest {
            segments: vec![SegmentManifest::compute(1, "a.ts", &[1u8; 20_000])],
        };
        let text = m.to_json().replace("\"len\":20000", "\"len\":40000");
        assert!(matches!(
            Manifest::from_json(&text),
            Err(ManifestError::ChunkCount { .. })
        ));
        assert!(Manifest::from_json("{").is_err());
        assert!(Manifest::from_json("[]").is_err());
    }
}
