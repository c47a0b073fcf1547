//! A bounded seen-set of message ids (seed 3.3: a message received on two
//! transports is delivered once).
//!
//! Bounded by count and by age: an id is forgotten once it is older than
//! `max_age_ms` or when `capacity` newer ids have been recorded after it.

use std::collections::{BTreeMap, VecDeque};

use ecomesh_types::MessageId;

/// Remembers recently seen message ids, oldest first.
#[derive(Debug)]
pub struct SeenSet {
    capacity: usize,
    max_age_ms: u64,
    order: VecDeque<(MessageId, u64)>,
    /// Each id with the tag it was recorded with ([`SeenSet::insert_tagged`]).
    set: BTreeMap<MessageId, u64>,
}

impl SeenSet {
    /// At most `capacity` ids (at least 1), each kept at most `max_age_ms`.
    pub fn new(capacity: usize, max_age_ms: u64) -> Self {
        SeenSet {
            capacity: capacity.max(1),
            max_age_ms,
            order: VecDeque::new(),
            set: BTreeMap::new(),
        }
    }

    /// Records `id` as seen at `now_ms`; true when it was new (deliver it),
    /// false when it is a duplicate (drop it).
    pub fn insert(&mut self, id: MessageId, now_ms: u64) -> bool {
        self.insert_tagged(id, 0, now_ms)
    }

    /// [`insert`](Self::insert), remembering `tag` with a new id (the mesh
    /// records part of the signature it verified, so an exact replay is
    /// recognised without verifying it again, [`tag`](Self::tag)).
    pub fn insert_tagged(&mut self, id: MessageId, tag: u64, now_ms: u64) -> bool {
        self.prune(now_ms);
        if self.set.contains_key(&id) {
            return false;
        }
        self.set.insert(id, tag);
        self.order.push_back((id, now_ms));
        while self.order.len() > self.capacity {
            if let Some((old, _)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// True when `id` is remembered (without recording it).
    pub fn contains(&self, id: &MessageId) -> bool {
        self.set.contains_key(id)
    }

    /// The tag `id` was recorded with, while it is remembered.
    pub fn tag(&self, id: &MessageId) -> Option<u64> {
        self.set.get(id).copied()
    }

    /// Forgets ids older than the age bound at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        while let Some(&(id, at)) = self.order.front() {
            if now_ms.saturating_sub(at) < self.max_age_ms {
                break;
            }
            self.order.pop_front();
            self.set.remove(&id);
        }
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    #[test]
    fn duplicate_is_refused_once_seen() {
        let mut s = SeenSet::new(10, 1_000);
        assert!(s.insert(id(1), 0));
        assert!(!s.insert(id(1), 5));
        assert!(s.insert(id(2), 5));
    }

    #[test]
    fn count_bound_forgets_oldest() {
        let mut s = SeenSet::new(3, u64::MAX);
        for n in 0..5 {
            assert!(s.insert(id(n), 0));
        }
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&id(0)) && !s.contains(&id(1)));
        assert!(s.contains(&id(4)));
        assert!(s.insert(id(0), 0), "forgotten ids are new again");
    }

    #[test]
    fn age_bound_forgets_old_ids() {
        let mut s = SeenSet::new(100, 1_000);
        s.insert(id(1), 0);
        s.insert(id(2), 600);
        s.prune(999);
        assert!(s.contains(&id(1)));
        s.prune(1_000);
        assert!(!s.contains(&id(1)) && s.contains(&id(2)));
        assert!(s.insert(id(1), 1_000));
    }

    proptest::proptest! {
        #[test]
        fn prop_never_exceeds_capacity(ids in proptest::collection::vec(0_u8..50, 0..200), cap in 1_usize..20) {
            let mut s = SeenSet::new(cap, 10);
            for (t, n) in ids.iter().enumerate() {
                s.insert(id(*n), t as u64);
                proptest::prop_assert!(s.len() <= cap);
                proptest::prop_assert_eq!(s.len(), s.set.len());
            }
        }
    }
}
