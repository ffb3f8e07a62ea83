//! [`SortedMap`] and [`SortedSet`]: ordered maps and sets kept as one sorted `Vec`, with the part
//! of `std::collections::BTreeMap`/`BTreeSet`'s API the core uses (same iteration order, so the
//! same seed still gives the same simulation).
//!
//! Why: in the browser bundle every `BTreeMap<K, V>` instance is its own copy of the B-tree
//! code (search, insert, remove, rebalance, iterate, drop); the core's 8 maps and sets cost
//! ≈ 16 KB gzip (docs/BUNDLE.md). A sorted vector is a binary search plus `Vec::insert` /
//! `Vec::remove`, a fraction of that per instance.
//!
//! Cost: inserting or removing in the middle moves the entries after it. The core's maps are
//! small (peers ≤ `max_peers`, requests and HTTP requests ≤ a few dozen, a peer's `Have`s ≤
//! `MAX_REMOTE_HAVE`), except the store's segment metadata, which can reach
//! `max_known_segments` (4096) entries; new live segments go at the end, and pruning the oldest
//! moves the rest once per pruned segment (≈ 1 MB memmove at the cap, well under a millisecond).

use std::borrow::Borrow;
use std::fmt;
use std::ops::{Bound, RangeBounds};

/// An ordered map in a sorted `Vec` (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct SortedMap<K, V> {
    v: Vec<(K, V)>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap { v: Vec::new() }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SortedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.v.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

fn pair<K, V>(e: &(K, V)) -> (&K, &V) {
    (&e.0, &e.1)
}

fn pair_mut<K, V>(e: &mut (K, V)) -> (&K, &mut V) {
    (&e.0, &mut e.1)
}

impl<K: Ord, V> SortedMap<K, V> {
    pub const fn new() -> Self {
        SortedMap { v: Vec::new() }
    }

    fn find<Q: Ord + ?Sized>(&self, k: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.v.binary_search_by(|e| e.0.borrow().cmp(k))
    }

    pub fn len(&self) -> usize {
        self.v.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    pub fn clear(&mut self) {
        self.v.clear();
    }

    pub fn get<Q: Ord + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| &self.v[i].1)
    }

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| &mut self.v[i].1)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(k).is_ok()
    }

    pub fn insert(&mut self, k: K, val: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.v[i].1, val)),
            Err(i) => {
                self.v.insert(i, (k, val));
                None
            }
        }
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| self.v.remove(i).1)
    }

    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        let at = self.find(&key);
        Entry { map: self, key, at }
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.v.iter().map(pair)
    }

    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&K, &mut V)> + ExactSizeIterator {
        self.v.iter_mut().map(pair_mut)
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.v.iter().map(|e| &e.0)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.v.iter().map(|e| &e.1)
    }

    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.v.iter_mut().map(|e| &mut e.1)
    }

    /// Index of the first entry not before `b` (as a start bound).
    fn lower(&self, b: Bound<&K>) -> usize {
        match b {
            Bound::Unbounded => 0,
            Bound::Included(k) => self.find(k).unwrap_or_else(|i| i),
            Bound::Excluded(k) => self.find(k).map_or_else(|i| i, |i| i + 1),
        }
    }

    /// Index past the last entry not after `b` (as an end bound).
    fn upper(&self, b: Bound<&K>) -> usize {
        match b {
            Bound::Unbounded => self.v.len(),
            Bound::Included(k) => self.find(k).map_or_else(|i| i, |i| i + 1),
            Bound::Excluded(k) => self.find(k).unwrap_or_else(|i| i),
        }
    }

    /// Entries with keys in `r`, in order (an empty or inverted range gives none).
    pub fn range<R: RangeBounds<K>>(
        &self,
        r: R,
    ) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        let lo = self.lower(r.start_bound());
        let hi = self.upper(r.end_bound()).max(lo);
        self.v[lo..hi].iter().map(pair)
    }

    pub fn first_key_value(&self) -> Option<(&K, &V)> {
        self.v.first().map(pair)
    }

    pub fn last_key_value(&self) -> Option<(&K, &V)> {
        self.v.last().map(pair)
    }

    pub fn pop_first(&mut self) -> Option<(K, V)> {
        (!self.v.is_empty()).then(|| self.v.remove(0))
    }

    pub fn pop_last(&mut self) -> Option<(K, V)> {
        self.v.pop()
    }

    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        self.v.retain_mut(|(k, v)| f(k, v));
    }
}

impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> std::ops::Index<&Q> for SortedMap<K, V> {
    type Output = V;

    /// Like `BTreeMap`'s: panics when `k` is missing (callers index only keys they just found).
    fn index(&self, k: &Q) -> &V {
        match self.get(k) {
            Some(v) => v,
            None => panic!("SortedMap: no entry for the key"),
        }
    }
}

/// A slot of a [`SortedMap`], occupied or not ([`SortedMap::entry`]).
pub struct Entry<'a, K, V> {
    map: &'a mut SortedMap<K, V>,
    key: K,
    at: Result<usize, usize>,
}

impl<'a, K, V> Entry<'a, K, V> {
    pub fn or_insert_with(self, f: impl FnOnce() -> V) -> &'a mut V {
        let i = match self.at {
            Ok(i) => i,
            Err(i) => {
                self.map.v.insert(i, (self.key, f()));
                i
            }
        };
        &mut self.map.v[i].1
    }

    pub fn or_insert(self, v: V) -> &'a mut V {
        self.or_insert_with(|| v)
    }

    pub fn or_default(self) -> &'a mut V
    where
        V: Default,
    {
        self.or_insert_with(V::default)
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(it: I) -> Self {
        let mut m = SortedMap::new();
        m.extend(it);
        m
    }
}

impl<K: Ord, V> Extend<(K, V)> for SortedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, it: I) {
        for (k, v) in it {
            self.insert(k, v);
        }
    }
}

impl<K, V> IntoIterator for SortedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&(K, V)) -> (&K, &V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.iter().map(pair as fn(&(K, V)) -> (&K, &V))
    }
}

impl<'a, K, V> IntoIterator for &'a mut SortedMap<K, V> {
    type Item = (&'a K, &'a mut V);
    type IntoIter =
        std::iter::Map<std::slice::IterMut<'a, (K, V)>, fn(&mut (K, V)) -> (&K, &mut V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.v
            .iter_mut()
            .map(pair_mut as fn(&mut (K, V)) -> (&K, &mut V))
    }
}

impl<K: serde::Serialize, V: serde::Serialize> serde::Serialize for SortedMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.v.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K, V> serde::Deserialize<'de> for SortedMap<K, V>
where
    K: Ord + serde::Deserialize<'de>,
    V: serde::Deserialize<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through std's map: the same accepted inputs (a repeated key keeps the last value).
        let m = std::collections::BTreeMap::<K, V>::deserialize(d)?;
        Ok(SortedMap {
            v: m.into_iter().collect(),
        })
    }
}

/// An ordered set in a sorted `Vec` (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct SortedSet<K> {
    v: Vec<K>,
}

impl<K> Default for SortedSet<K> {
    fn default() -> Self {
        SortedSet { v: Vec::new() }
    }
}

impl<K: fmt::Debug> fmt::Debug for SortedSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.v.iter()).finish()
    }
}

impl<K: Ord> SortedSet<K> {
    pub const fn new() -> Self {
        SortedSet { v: Vec::new() }
    }

    fn find<Q: Ord + ?Sized>(&self, k: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.v.binary_search_by(|e| e.borrow().cmp(k))
    }

    pub fn len(&self) -> usize {
        self.v.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    pub fn clear(&mut self) {
        self.v.clear();
    }

    pub fn contains<Q: Ord + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(k).is_ok()
    }

    /// Whether `k` was new.
    pub fn insert(&mut self, k: K) -> bool {
        match self.find(&k) {
            Ok(_) => false,
            Err(i) => {
                self.v.insert(i, k);
                true
            }
        }
    }

    /// Whether `k` was there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(k).map(|i| self.v.remove(i)).is_ok()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, K> {
        self.v.iter()
    }

    pub fn first(&self) -> Option<&K> {
        self.v.first()
    }

    pub fn last(&self) -> Option<&K> {
        self.v.last()
    }

    pub fn pop_first(&mut self) -> Option<K> {
        (!self.v.is_empty()).then(|| self.v.remove(0))
    }

    pub fn pop_last(&mut self) -> Option<K> {
        self.v.pop()
    }

    pub fn retain(&mut self, f: impl FnMut(&K) -> bool) {
        self.v.retain(f);
    }
}

impl<K: Ord> FromIterator<K> for SortedSet<K> {
    fn from_iter<I: IntoIterator<Item = K>>(it: I) -> Self {
        let mut s = SortedSet::new();
        s.extend(it);
        s
    }
}

impl<K: Ord> Extend<K> for SortedSet<K> {
    fn extend<I: IntoIterator<Item = K>>(&mut self, it: I) {
        for k in it {
            self.insert(k);
        }
    }
}

impl<K> IntoIterator for SortedSet<K> {
    type Item = K;
    type IntoIter = std::vec::IntoIter<K>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.into_iter()
    }
}

impl<'a, K> IntoIterator for &'a SortedSet<K> {
    type Item = &'a K;
    type IntoIter = std::slice::Iter<'a, K>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u16),
        Remove(u8),
        Entry(u8),
        PopFirst,
        PopLast,
        Retain(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Entry),
            Just(Op::PopFirst),
            Just(Op::PopLast),
            any::<u8>().prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// Any sequence of operations leaves the same contents, answers and iteration order as
        /// std's B-tree.
        #[test]
        fn behaves_like_btree(ops in proptest::collection::vec(op(), 0..200), lo in any::<u8>(), hi in any::<u8>()) {
            let mut a = SortedMap::new();
            let mut b = BTreeMap::new();
            let mut sa = SortedSet::new();
            let mut sb = BTreeSet::new();
            for o in ops {
                match o {
                    Op::Insert(k, v) => {
                        prop_assert_eq!(a.insert(k, v), b.insert(k, v));
                        prop_assert_eq!(sa.insert(k), sb.insert(k));
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(a.remove(&k), b.remove(&k));
                        prop_assert_eq!(sa.remove(&k), sb.remove(&k));
                    }
                    Op::Entry(k) => {
                        *a.entry(k).or_insert(7) += 1;
                        *b.entry(k).or_insert(7) += 1;
                    }
                    Op::PopFirst => {
                        prop_assert_eq!(a.pop_first(), b.pop_first());
                        prop_assert_eq!(sa.pop_first(), sb.pop_first());
                    }
                    Op::PopLast => {
                        prop_assert_eq!(a.pop_last(), b.pop_last());
                        prop_assert_eq!(sa.pop_last(), sb.pop_last());
                    }
                    Op::Retain(m) => {
                        a.retain(|k, _| k % (m | 1) != 0);
                        b.retain(|k, _| k % (m | 1) != 0);
                        sa.retain(|k| k % (m | 1) != 0);
                        sb.retain(|k| k % (m | 1) != 0);
                    }
                }
                prop_assert_eq!(a.len(), b.len());
                prop_assert!(a.iter().eq(b.iter()));
                prop_assert!(sa.iter().eq(sb.iter()));
                prop_assert_eq!(a.first_key_value(), b.first_key_value());
                prop_assert_eq!(a.last_key_value(), b.last_key_value());
            }
            for k in 0..=255u8 {
                prop_assert_eq!(a.get(&k), b.get(&k));
                prop_assert_eq!(sa.contains(&k), sb.contains(&k));
            }
            if lo <= hi {
                prop_assert!(a.range(lo..hi).eq(b.range(lo..hi)));
                prop_assert!(a.range(lo..=hi).eq(b.range(lo..=hi)));
            }
            prop_assert!(a.range(lo..).eq(b.range(lo..)));
            prop_assert!(a.range(..=hi).eq(b.range(..=hi)));
            prop_assert!(a.iter().rev().eq(b.iter().rev()));
        }
    }

    #[test]
    fn serde_round_trip_matches_btree() {
        let a: SortedMap<u64, u64> = [(3, 30), (1, 10)].into_iter().collect();
        let b: BTreeMap<u64, u64> = [(3, 30), (1, 10)].into_iter().collect();
        let ja = serde_json::to_string(&a).expect("ser");
        assert_eq!(ja, serde_json::to_string(&b).expect("ser"));
        let back: SortedMap<u64, u64> = serde_json::from_str(&ja).expect("de");
        assert_eq!(back, a);
    }
}
