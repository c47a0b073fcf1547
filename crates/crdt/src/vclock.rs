//! Vector clocks: causality between replicas' histories (seed 7.3).

use std::collections::BTreeMap;

use ecomesh_types::PeerId;

use crate::{Error, Merge};

/// How two vector clocks relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockOrdering {
    /// The left clock has seen a strict subset of the right one's events.
    Before,
    /// The left clock has seen a strict superset of the right one's events.
    After,
    /// Both have seen exactly the same events.
    Equal,
    /// Each has seen an event the other has not: the histories diverged.
    Concurrent,
}

/// A vector clock: per peer, the number of events seen from that peer.
///
/// A missing peer counts as 0, and zero entries are never stored, so two clocks
/// are `==` exactly when they [`compare`](VectorClock::compare) `Equal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VectorClock {
    entries: BTreeMap<PeerId, u64>,
}

impl VectorClock {
    /// The clock that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a clock from `(peer, count)` pairs in any order.
    ///
    /// Fails with [`Error::InvalidParts`] on a zero count or a repeated peer.
    pub fn from_parts(entries: impl IntoIterator<Item = (PeerId, u64)>) -> Result<Self, Error> {
        let mut map = BTreeMap::new();
        for (peer, count) in entries {
            if count == 0 {
                return Err(Error::parts("VectorClock", "zero entry"));
            }
            if map.insert(peer, count).is_some() {
                return Err(Error::parts("VectorClock", "repeated peer"));
            }
        }
        Ok(VectorClock { entries: map })
    }

    /// The non-zero entries, sorted by peer (byte order).
    pub fn entries(&self) -> &BTreeMap<PeerId, u64> {
        &self.entries
    }

    /// The count for `peer` (0 if absent).
    pub fn get(&self, peer: &PeerId) -> u64 {
        self.entries.get(peer).copied().unwrap_or(0)
    }

    /// Records one more event from `peer` and returns its new count.
    ///
    /// Fails with [`Error::CounterOverflow`] (clock unchanged) at `u64::MAX`.
    pub fn increment(&mut self, peer: PeerId) -> Result<u64, Error> {
        let next = self
            .get(&peer)
            .checked_add(1)
            .ok_or(Error::CounterOverflow)?;
        self.entries.insert(peer, next);
        Ok(next)
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VectorClock) -> ClockOrdering {
        let mut greater = false;
        let mut less = false;
        for (peer, &count) in &self.entries {
            match count.cmp(&other.get(peer)) {
                std::cmp::Ordering::Greater => greater = true,
                std::cmp::Ordering::Less => less = true,
                std::cmp::Ordering::Equal => {}
            }
        }
        if other
            .entries
            .keys()
            .any(|peer| !self.entries.contains_key(peer))
        {
            less = true;
        }
        match (greater, less) {
            (false, false) => ClockOrdering::Equal,
            (true, false) => ClockOrdering::After,
            (false, true) => ClockOrdering::Before,
            (true, true) => ClockOrdering::Concurrent,
        }
    }

    /// True when `self` has seen every event `other` has (`After` or `Equal`).
    pub fn dominates(&self, other: &VectorClock) -> bool {
        matches!(
            self.compare(other),
            ClockOrdering::After | ClockOrdering::Equal
        )
    }
}

impl Merge for VectorClock {
    /// Pointwise maximum: the result dominates both inputs.
    fn merge(&mut self, other: &Self) {
        for (peer, &count) in &other.entries {
            let entry = self.entries.entry(*peer).or_insert(0);
            *entry = (*entry).max(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> PeerId {
        PeerId::from_digest([b; 32])
    }

    #[test]
    fn compare_covers_all_four_cases() {
        let a = VectorClock::from_parts([(peer(1), 2), (peer(2), 1)]).unwrap();
        let b = VectorClock::from_parts([(peer(1), 2)]).unwrap();
        let c = VectorClock::from_parts([(peer(1), 1), (peer(3), 1)]).unwrap();
        assert_eq!(a.compare(&b), ClockOrdering::After);
        assert_eq!(b.compare(&a), ClockOrdering::Before);
        assert_eq!(a.compare(&a.clone()), ClockOrdering::Equal);
        assert_eq!(a.compare(&c), ClockOrdering::Concurrent);
        assert!(a.dominates(&b) && a.dominates(&a) && !b.dominates(&a) && !a.dominates(&c));
        assert_eq!(VectorClock::new().compare(&b), ClockOrdering::Before);
    }

    #[test]
    fn merge_dominates_both() {
        let mut a = VectorClock::from_parts([(peer(1), 3)]).unwrap();
        let b = VectorClock::from_parts([(peer(1), 1), (peer(2), 4)]).unwrap();
        let before = a.clone();
        a.merge(&b);
        assert!(a.dominates(&before) && a.dominates(&b));
        assert_eq!(a.get(&peer(1)), 3);
        assert_eq!(a.get(&peer(2)), 4);
    }

    #[test]
    fn increment_and_bad_parts() {
        let mut a = VectorClock::new();
        assert_eq!(a.increment(peer(1)).unwrap(), 1);
        assert_eq!(a.increment(peer(1)).unwrap(), 2);
        let mut full = VectorClock::from_parts([(peer(1), u64::MAX)]).unwrap();
        assert_eq!(full.increment(peer(1)), Err(Error::CounterOverflow));
        assert!(VectorClock::from_parts([(peer(1), 0)]).is_err());
        assert!(VectorClock::from_parts([(peer(1), 1), (peer(1), 2)]).is_err());
    }
}
