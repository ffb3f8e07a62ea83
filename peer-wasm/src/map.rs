//! A map from `u64` ids to values for the handful of entries the driver keeps (connections,
//! HTTP requests, waiting segments): a vector searched linearly, which costs far less code
//! in the bundle than a `HashMap` or `BTreeMap` instance each.

pub struct IdMap<V>(Vec<(u64, V)>);

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap(Vec::new())
    }
}

impl<V> IdMap<V> {
    fn position(&self, k: u64) -> Option<usize> {
        self.0.iter().position(|(x, _)| *x == k)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn contains_key(&self, k: u64) -> bool {
        self.position(k).is_some()
    }
    pub fn get(&self, k: u64) -> Option<&V> {
        self.0.iter().find(|(x, _)| *x == k).map(|(_, v)| v)
    }
    pub fn get_mut(&mut self, k: u64) -> Option<&mut V> {
        self.0.iter_mut().find(|(x, _)| *x == k).map(|(_, v)| v)
    }
    /// Inserts or replaces (the old value is dropped).
    pub fn insert(&mut self, k: u64, v: V) {
        match self.get_mut(k) {
            Some(old) => *old = v,
            None => self.0.push((k, v)),
        }
    }
    pub fn remove(&mut self, k: u64) -> Option<V> {
        let i = self.position(k)?;
        Some(self.0.swap_remove(i).1)
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
    pub fn take_all(&mut self) -> Vec<(u64, V)> {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::IdMap;

    #[test]
    fn behaves_like_a_map() {
        let mut m = IdMap::default();
        m.insert(5, "a");
        m.insert(3, "b");
        m.insert(5, "c");
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(5), Some(&"c"));
        assert!(m.contains_key(3) && !m.contains_key(4));
        assert_eq!(m.remove(3), Some("b"));
        assert_eq!(m.remove(5), Some("c"));
        assert_eq!(m.remove(5), None);
        let mut w: IdMap<Vec<u8>> = IdMap::default();
        w.insert(1, vec![1]);
        if let Some(v) = w.get_mut(1) {
            v.push(2);
        }
        assert_eq!(w.get(1), Some(&vec![1, 2]));
        assert_eq!(w.take_all(), vec![(1, vec![1, 2])]);
        assert_eq!(w.len(), 0);
    }
}
