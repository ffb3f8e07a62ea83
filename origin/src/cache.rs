//! Bounded caches.
//!
//! * [`BlobCache`]: segment bytes (files read from disk, generated synthetic segments), LRU,
//!   bounded by total bytes (`--cache-mb`). A blob larger than the whole budget is served but not
//!   kept. File entries are revalidated against (length, mtime) on every hit, so an edited file
//!   is re-read.
//! * [`HashCache`]: integrity data per segment (SHA-256 of the segment and of each 16 KiB chunk),
//!   LRU bounded by entry count ([`HASH_CACHE_ENTRIES`]). Kept apart from the bytes so a sidecar
//!   of a long VOD never evicts hot segments, and a segment is hashed once for as long as it stays
//!   among the most recently used entries.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use lru::LruCache;
use protocol::manifest::{Hash as Sha, SegmentManifest};

/// Hash cache capacity: the protocol's largest manifest, so one whole VOD sidecar fits.
pub const HASH_CACHE_ENTRIES: usize = protocol::manifest::MAX_SEGMENTS;

/// Identity of a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BlobKey {
    /// A file, by canonical path and (length, mtime) so an edited file is a new key.
    File {
        path: PathBuf,
        len: u64,
        mtime_ns: u128,
    },
    /// A synthetic segment: stream name and media sequence number.
    Synthetic { stream: Arc<str>, seq: u64 },
}

impl BlobKey {
    pub fn file(path: PathBuf, meta: &std::fs::Metadata) -> Self {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        BlobKey::File {
            path,
            len: meta.len(),
            mtime_ns,
        }
    }

    /// Strong validator for HTTP: cheap to compute, changes when the bytes can have changed.
    pub fn etag(&self) -> String {
        match self {
            BlobKey::File { len, mtime_ns, .. } => format!("\"{len:x}-{mtime_ns:x}\""),
            BlobKey::Synthetic { seq, .. } => format!("\"syn-{seq:x}\""),
        }
    }
}

/// Integrity data of one segment, independent of its sequence number and URI.
#[derive(Debug, Clone)]
pub struct SegHash {
    pub len: u64,
    pub sha256: Sha,
    pub chunks: Vec<Sha>,
}

impl SegHash {
    pub fn of(data: &[u8]) -> Self {
        let m = SegmentManifest::compute(0, "", data);
        SegHash {
            len: m.len,
            sha256: m.sha256,
            chunks: m.chunks,
        }
    }

    pub fn manifest(&self, seq: u64, uri: impl Into<String>) -> SegmentManifest {
        SegmentManifest {
            seq,
            uri: uri.into(),
            len: self.len,
            sha256: self.sha256,
            chunks: self.chunks.clone(),
        }
    }
}

struct Weighted<K: Hash + Eq, V> {
    lru: LruCache<K, V>,
    weight: usize,
}

/// LRU bounded by a total weight (bytes).
pub struct BlobCache {
    inner: Mutex<Weighted<BlobKey, Bytes>>,
    cap_bytes: usize,
}

impl BlobCache {
    pub fn new(cap_bytes: usize) -> Self {
        BlobCache {
            inner: Mutex::new(Weighted {
                lru: LruCache::unbounded(),
                weight: 0,
            }),
            cap_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Weighted<BlobKey, Bytes>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, k: &BlobKey) -> Option<Bytes> {
        self.lock().lru.get(k).cloned()
    }

    pub fn insert(&self, k: BlobKey, v: Bytes) {
        if v.len() > self.cap_bytes {
            return;
        }
        let mut g = self.lock();
        let add = v.len();
        if let Some(old) = g.lru.put(k, v) {
            g.weight -= old.len();
        }
        g.weight += add;
        while g.weight > self.cap_bytes {
            match g.lru.pop_lru() {
                Some((_, old)) => g.weight -= old.len(),
                None => break,
            }
        }
    }

    /// (entries, bytes)
    pub fn usage(&self) -> (usize, usize) {
        let g = self.lock();
        (g.lru.len(), g.weight)
    }
}

/// LRU of segment hashes bounded by entry count.
pub struct HashCache {
    inner: Mutex<LruCache<BlobKey, Arc<SegHash>>>,
}

impl HashCache {
    pub fn new(entries: usize) -> Self {
        let cap = NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN);
        HashCache {
            inner: Mutex::new(LruCache::new(cap)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<BlobKey, Arc<SegHash>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, k: &BlobKey) -> Option<Arc<SegHash>> {
        self.lock().get(k).cloned()
    }

    pub fn insert(&self, k: BlobKey, v: Arc<SegHash>) {
        self.lock().put(k, v);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> BlobKey {
        BlobKey::Synthetic {
            stream: Arc::from("s"),
            seq,
        }
    }

    #[test]
    fn blob_cache_evicts_lru_by_bytes() {
        let c = BlobCache::new(100);
        c.insert(key(1), Bytes::from(vec![0; 40]));
        c.insert(key(2), Bytes::from(vec![0; 40]));
        assert!(c.get(&key(1)).is_some()); // 1 is now most recent
        c.insert(key(3), Bytes::from(vec![0; 40]));
        assert!(c.get(&key(2)).is_none());
        assert!(c.get(&key(1)).is_some());
        assert_eq!(c.usage(), (2, 80));
        c.insert(key(4), Bytes::from(vec![0; 101])); // over budget: not kept
        assert!(c.get(&key(4)).is_none());
        assert_eq!(c.usage(), (2, 80));
    }

    #[test]
    fn hash_cache_is_bounded() {
        let c = HashCache::new(2);
        for i in 0..5 {
            c.insert(key(i), Arc::new(SegHash::of(&[i as u8])));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&key(4)).is_some());
        assert!(c.get(&key(0)).is_none());
    }
}
