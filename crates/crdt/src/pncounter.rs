//! Positive-negative counter (seed 5.3).

use std::collections::BTreeMap;

use ecomesh_types::PeerId;

use crate::{Error, Merge};

/// A counter every peer can increment and decrement.
///
/// Each peer only ever raises its own two totals (increments `P`, decrements `N`);
/// merge takes the pointwise maximum, and the value is `sum(P) - sum(N)`.
/// Zero totals are never stored, so equal counters are `==`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PnCounter {
    increments: BTreeMap<PeerId, u64>,
    decrements: BTreeMap<PeerId, u64>,
}

fn map_from_parts(
    entries: impl IntoIterator<Item = (PeerId, u64)>,
) -> Result<BTreeMap<PeerId, u64>, Error> {
    let mut map = BTreeMap::new();
    for (peer, total) in entries {
        if total == 0 {
            return Err(Error::parts("PnCounter", "zero total"));
        }
        if map.insert(peer, total).is_some() {
            return Err(Error::parts("PnCounter", "repeated peer"));
        }
    }
    Ok(map)
}

fn merge_max(into: &mut BTreeMap<PeerId, u64>, from: &BTreeMap<PeerId, u64>) {
    for (peer, &total) in from {
        let entry = into.entry(*peer).or_insert(0);
        *entry = (*entry).max(total);
    }
}

impl PnCounter {
    /// The zero counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a counter from per-peer increment and decrement totals, each in any order.
    ///
    /// Fails with [`Error::InvalidParts`] on a zero total or a peer repeated within one list.
    pub fn from_parts(
        increments: impl IntoIterator<Item = (PeerId, u64)>,
        decrements: impl IntoIterator<Item = (PeerId, u64)>,
    ) -> Result<Self, Error> {
        Ok(PnCounter {
            increments: map_from_parts(increments)?,
            decrements: map_from_parts(decrements)?,
        })
    }

    /// Per-peer increment totals (non-zero), sorted by peer.
    pub fn increments(&self) -> &BTreeMap<PeerId, u64> {
        &self.increments
    }

    /// Per-peer decrement totals (non-zero), sorted by peer.
    pub fn decrements(&self) -> &BTreeMap<PeerId, u64> {
        &self.decrements
    }

    /// The counter's value, `sum(increments) - sum(decrements)`, exactly.
    pub fn value(&self) -> i128 {
        let sum = |m: &BTreeMap<PeerId, u64>| m.values().map(|&v| i128::from(v)).sum::<i128>();
        sum(&self.increments) - sum(&self.decrements)
    }

    /// True when no peer has incremented or decremented.
    pub fn is_empty(&self) -> bool {
        self.increments.is_empty() && self.decrements.is_empty()
    }

    /// Adds `amount` (negative to decrement) on behalf of `peer` and returns the
    /// delta: a counter holding `peer`'s changed total, to send to other replicas.
    ///
    /// Fails with [`Error::CounterOverflow`] (counter unchanged) when `peer`'s total
    /// would pass `u64::MAX`. Adding 0 changes nothing and returns an empty delta.
    pub fn add(&mut self, peer: PeerId, amount: i64) -> Result<PnCounter, Error> {
        self.add_unsigned(peer, amount.unsigned_abs(), amount >= 0)
    }

    /// Adds `amount` on behalf of `peer`; see [`add`](PnCounter::add).
    pub fn increment(&mut self, peer: PeerId, amount: u64) -> Result<PnCounter, Error> {
        self.add_unsigned(peer, amount, true)
    }

    /// Subtracts `amount` on behalf of `peer`; see [`add`](PnCounter::add).
    pub fn decrement(&mut self, peer: PeerId, amount: u64) -> Result<PnCounter, Error> {
        self.add_unsigned(peer, amount, false)
    }

    fn add_unsigned(&mut self, peer: PeerId, amount: u64, up: bool) -> Result<PnCounter, Error> {
        let delta = self.add_delta(peer, amount, up)?;
        self.merge(&delta);
        Ok(delta)
    }

    /// The delta of adding `amount` up (`up`) or down on behalf of `peer`, without applying it.
    pub(crate) fn add_delta(
        &self,
        peer: PeerId,
        amount: u64,
        up: bool,
    ) -> Result<PnCounter, Error> {
        let mut delta = PnCounter::new();
        if amount == 0 {
            return Ok(delta);
        }
        let (map, delta_map) = if up {
            (&self.increments, &mut delta.increments)
        } else {
            (&self.decrements, &mut delta.decrements)
        };
        let total = map
            .get(&peer)
            .copied()
            .unwrap_or(0)
            .checked_add(amount)
            .ok_or(Error::CounterOverflow)?;
        delta_map.insert(peer, total);
        Ok(delta)
    }

    /// The delta of adding `amount` (any sign, exact) on behalf of `peer`, without applying it.
    pub(crate) fn add_wide_delta(&self, peer: PeerId, amount: i128) -> Result<PnCounter, Error> {
        let step = u64::try_from(amount.unsigned_abs()).map_err(|_| Error::CounterOverflow)?;
        self.add_delta(peer, step, amount >= 0)
    }

    /// Brings the value this replica sees back to zero on behalf of `peer`
    /// (an observed reset): `peer` adds the opposite of the current value.
    /// Contributions this replica has not seen yet survive the reset.
    /// Returns the delta; fails with [`Error::CounterOverflow`] (counter unchanged)
    /// when `peer`'s total cannot absorb the value.
    pub fn reset(&mut self, peer: PeerId) -> Result<PnCounter, Error> {
        let delta = self.add_wide_delta(peer, -self.value())?;
        self.merge(&delta);
        Ok(delta)
    }
}

impl Merge for PnCounter {
    /// Pointwise maximum of both the increment and the decrement totals.
    fn merge(&mut self, other: &Self) {
        merge_max(&mut self.increments, &other.increments);
        merge_max(&mut self.decrements, &other.decrements);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> PeerId {
        PeerId::from_digest([b; 32])
    }

    #[test]
    fn value_is_increments_minus_decrements_across_replicas() {
        let mut a = PnCounter::new();
        let mut b = PnCounter::new();
        let d1 = a.add(peer(1), 5).unwrap();
        let d2 = b.add(peer(2), -3).unwrap();
        b.increment(peer(2), 1).unwrap();
        a.merge(&d2);
        b.merge(&d1);
        assert_eq!(a.value(), 2);
        assert_eq!(b.value(), 3);
        a.merge(&b);
        assert_eq!(a.value(), 3);
        // Re-delivering an old delta changes nothing.
        a.merge(&d1);
        assert_eq!(a.value(), 3);
    }

    #[test]
    fn reset_is_observed_only() {
        let mut a = PnCounter::new();
        a.add(peer(1), 7).unwrap();
        let mut b = a.clone();
        let concurrent = b.add(peer(2), 4).unwrap();
        let reset = a.reset(peer(1)).unwrap();
        assert_eq!(a.value(), 0);
        b.merge(&reset);
        a.merge(&concurrent);
        assert_eq!(a.value(), 4);
        assert_eq!(a, b);
        let mut neg = PnCounter::new();
        neg.add(peer(3), -2).unwrap();
        neg.reset(peer(3)).unwrap();
        assert_eq!(neg.value(), 0);
    }

    #[test]
    fn overflow_and_parts() {
        let mut c = PnCounter::from_parts([(peer(1), u64::MAX)], []).unwrap();
        let before = c.clone();
        assert_eq!(c.increment(peer(1), 1), Err(Error::CounterOverflow));
        assert_eq!(c, before);
        assert_eq!(
            c.add(peer(1), i64::MIN).unwrap().decrements()[&peer(1)],
            1 << 63
        );
        assert!(c.add(peer(1), 0).unwrap().is_empty());
        assert!(PnCounter::from_parts([(peer(1), 0)], []).is_err());
        assert!(PnCounter::from_parts([], [(peer(1), 1), (peer(1), 1)]).is_err());
        assert_eq!(c.value(), i128::from(u64::MAX) - (1_i128 << 63));
    }
}
