//! The top subjects: a bounded heavy-hitters structure (weighted Space-Saving, Metwally,
//! Agrawal and El Abbadi 2005).
//!
//! `capacity` counters, however many distinct subjects pass. A subject already counted adds
//! its weight; a new one takes the place of the smallest counter and inherits its count (the
//! inherited part is its `error`). With `W` the total weight offered since the last reset:
//!
//! - every estimate is an over-estimate by at most its own `error`, and `error <= W/capacity`;
//! - every subject whose true weight exceeds `W/capacity` is among the counters.
//!
//! So the top 10 by estimate are the true top 10 whenever their weights are more than
//! `W/capacity` apart, and each reported figure is within `W/capacity` of the truth (the
//! bound is reported with the figures).

use std::collections::HashMap;

/// One counted subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    /// The subject.
    pub key: String,
    /// Estimated weight (never below the true weight).
    pub count: u64,
    /// Upper bound of the over-estimate.
    pub error: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    key: String,
    count: u64,
    error: u64,
}

/// Weighted Space-Saving over at most `capacity` counters.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    slots: Vec<Slot>,
    /// Min-heap of slot ids, ordered by count.
    heap: Vec<u32>,
    /// Heap position of each slot id.
    pos: Vec<u32>,
    index: HashMap<String, u32>,
    total: u64,
    /// Key buffers of evicted or reset counters, reused: a stream of new subjects (the
    /// common case once the counters are full) allocates nothing.
    spare: Vec<String>,
}

impl SpaceSaving {
    /// An empty structure of `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> SpaceSaving {
        let capacity = capacity.max(1);
        SpaceSaving {
            capacity,
            slots: Vec::new(),
            heap: Vec::new(),
            pos: Vec::new(),
            index: HashMap::new(),
            total: 0,
            spare: Vec::new(),
        }
    }

    /// Total weight offered since the last reset.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The error bound of every estimate: total / capacity.
    pub fn bound(&self) -> u64 {
        self.total / self.capacity as u64
    }

    /// Number of counters in use.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No subject counted yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Count `weight` for `key`.
    pub fn offer(&mut self, key: &str, weight: u64) {
        self.total = self.total.saturating_add(weight);
        if let Some(&id) = self.index.get(key) {
            let slot = &mut self.slots[id as usize];
            slot.count = slot.count.saturating_add(weight);
            self.sift_down(self.pos[id as usize] as usize);
            return;
        }
        if self.slots.len() < self.capacity {
            let id = self.slots.len() as u32;
            let slot_key = self.take_spare(key);
            self.slots.push(Slot {
                key: slot_key,
                count: weight,
                error: 0,
            });
            let k = self.take_spare(key);
            self.index.insert(k, id);
            self.heap.push(id);
            self.pos.push(self.heap.len() as u32 - 1);
            self.sift_up(self.heap.len() - 1);
            return;
        }
        // Replace the smallest counter.
        let id = self.heap[0];
        let slot = &mut self.slots[id as usize];
        let mut k = match self.index.remove_entry(slot.key.as_str()) {
            Some((k, _)) => k,
            None => String::new(),
        };
        k.clear();
        k.push_str(key);
        slot.key.clear();
        slot.key.push_str(key);
        slot.error = slot.count;
        slot.count = slot.count.saturating_add(weight);
        self.index.insert(k, id);
        self.sift_down(0);
    }

    /// `key` in a reused buffer when there is one.
    fn take_spare(&mut self, key: &str) -> String {
        match self.spare.pop() {
            Some(mut k) => {
                k.clear();
                k.push_str(key);
                k
            }
            None => key.to_string(),
        }
    }

    /// The estimate of `key`, if it holds a counter.
    pub fn get(&self, key: &str) -> Option<Counted> {
        self.index.get(key).map(|&id| {
            let s = &self.slots[id as usize];
            Counted {
                key: s.key.to_string(),
                count: s.count,
                error: s.error,
            }
        })
    }

    /// The `n` largest estimates, largest first (ties by key).
    pub fn top(&self, n: usize) -> Vec<Counted> {
        let mut all: Vec<&Slot> = self.slots.iter().collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.into_iter()
            .take(n)
            .map(|s| Counted {
                key: s.key.clone(),
                count: s.count,
                error: s.error,
            })
            .collect()
    }

    /// Forget everything (keeps the allocations).
    pub fn reset(&mut self) {
        self.spare.extend(self.slots.drain(..).map(|s| s.key));
        self.spare.extend(self.index.drain().map(|(k, _)| k));
        self.heap.clear();
        self.pos.clear();
        self.total = 0;
    }

    fn count_at(&self, heap_pos: usize) -> u64 {
        self.slots[self.heap[heap_pos] as usize].count
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a] as usize] = a as u32;
        self.pos[self.heap[b] as usize] = b as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.count_at(i) >= self.count_at(parent) {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if l < n && self.count_at(l) < self.count_at(smallest) {
                smallest = l;
            }
            if r < n && self.count_at(r) < self.count_at(smallest) {
                smallest = r;
            }
            if smallest == i {
                return;
            }
            self.swap(i, smallest);
            i = smallest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn exact_while_under_capacity() {
        let mut s = SpaceSaving::new(10);
        for (k, w) in [("a", 3), ("b", 5), ("a", 4), ("c", 1)] {
            s.offer(k, w);
        }
        let top = s.top(2);
        assert_eq!(top[0].key, "a");
        assert_eq!(top[0].count, 7);
        assert_eq!(top[1].key, "b");
        assert_eq!(s.bound(), 1);
        assert!(top.iter().all(|c| c.error == 0));
    }

    proptest! {
        /// A structure reset (its key buffers kept for reuse) counts the next stream exactly
        /// as a new one does, keys of any length included.
        #[test]
        fn reset_is_as_new(first in proptest::collection::vec(("[a-z]{0,12}", 1u64..100), 0..300),
                           then in proptest::collection::vec(("[a-z]{0,12}", 1u64..100), 0..300),
                           capacity in 1usize..20) {
            let mut reused = SpaceSaving::new(capacity);
            for (k, w) in &first {
                reused.offer(k, *w);
            }
            reused.reset();
            let mut fresh = SpaceSaving::new(capacity);
            for (k, w) in &then {
                reused.offer(k, *w);
                fresh.offer(k, *w);
            }
            prop_assert_eq!(reused.top(capacity), fresh.top(capacity));
            prop_assert_eq!(reused.total(), fresh.total());
            for (k, _) in &then {
                prop_assert_eq!(reused.get(k), fresh.get(k));
            }
        }

        /// On any stream: estimates over-estimate by at most error <= W/capacity, and every
        /// subject heavier than W/capacity holds a counter.
        #[test]
        fn space_saving_bounds(stream in proptest::collection::vec((0u32..60, 1u64..1000), 1..2000),
                               capacity in 1usize..20) {
            let mut s = SpaceSaving::new(capacity);
            let mut exact: BTreeMap<String, u64> = BTreeMap::new();
            for (k, w) in &stream {
                let key = format!("k{k}");
                s.offer(&key, *w);
                *exact.entry(key).or_default() += w;
            }
            let total: u64 = exact.values().sum();
            prop_assert_eq!(s.total(), total);
            let bound = total / capacity as u64;
            for c in s.top(capacity) {
                let truth = exact[&c.key];
                prop_assert!(c.count >= truth);
                prop_assert!(c.count - truth <= c.error);
                prop_assert!(c.error <= bound);
            }
            for (k, w) in &exact {
                if *w > bound {
                    prop_assert!(s.get(k).is_some(), "{} ({}) missing, bound {}", k, w, bound);
                }
            }
        }
    }
}
