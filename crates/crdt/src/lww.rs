//! Last-writer-wins register (seed 5.3).

use std::cmp::Ordering;

use ecomesh_types::{HlcTimestamp, PeerId};

use crate::Merge;

/// A value with the hybrid-logical-clock timestamp of the write that set it.
///
/// Merge keeps the write with the greater [`HlcTimestamp`]: later physical time,
/// then the greater logical counter, then, exactly as the seed says, the
/// lexicographically greater peer id (Base58 text, [`PeerId::cmp_text`]).
/// Two writes with identical timestamps (which a correct [`Hlc`](crate::Hlc)
/// never issues) are ordered by their values, so merge stays commutative.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LwwRegister<T> {
    value: T,
    timestamp: HlcTimestamp,
}

impl<T> LwwRegister<T> {
    /// A register written with `value` at `timestamp`. Every pair is valid.
    pub const fn new(value: T, timestamp: HlcTimestamp) -> Self {
        LwwRegister { value, timestamp }
    }

    /// Same as [`new`](LwwRegister::new); named for symmetry with [`into_parts`](LwwRegister::into_parts).
    pub const fn from_parts(value: T, timestamp: HlcTimestamp) -> Self {
        Self::new(value, timestamp)
    }

    /// The current value.
    pub const fn value(&self) -> &T {
        &self.value
    }

    /// The timestamp of the write that set the current value.
    pub const fn timestamp(&self) -> HlcTimestamp {
        self.timestamp
    }

    /// The peer that wrote the current value.
    pub const fn writer(&self) -> PeerId {
        self.timestamp.peer
    }

    /// The value and its timestamp.
    pub fn into_parts(self) -> (T, HlcTimestamp) {
        (self.value, self.timestamp)
    }
}

impl<T: Ord> LwwRegister<T> {
    /// True when this write beats `other` (ties on timestamp fall to the greater value).
    pub fn wins_over(&self, other: &Self) -> bool {
        match self.timestamp.cmp(&other.timestamp) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => self.value > other.value,
        }
    }

    /// Writes `value` at `timestamp` if that write wins over the current one;
    /// returns whether it did.
    pub fn set(&mut self, value: T, timestamp: HlcTimestamp) -> bool {
        let candidate = LwwRegister::new(value, timestamp);
        let wins = candidate.wins_over(self);
        if wins {
            *self = candidate;
        }
        wins
    }
}

impl<T: Ord + Clone> Merge for LwwRegister<T> {
    /// Keeps the winning write of the two.
    fn merge(&mut self, other: &Self) {
        if other.wins_over(self) {
            self.clone_from(other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_write_wins_and_ties_go_to_greater_peer_text() {
        let a = PeerId::from_digest([1; 32]);
        let b = PeerId::from_digest([2; 32]);
        let mut r = LwwRegister::new("x", HlcTimestamp::new(5, 0, a));
        assert!(!r.set("old", HlcTimestamp::new(4, 9, b)));
        assert!(r.set("new", HlcTimestamp::new(5, 1, a)));
        assert_eq!(*r.value(), "new");

        let ra = LwwRegister::new("from a", HlcTimestamp::new(9, 0, a));
        let rb = LwwRegister::new("from b", HlcTimestamp::new(9, 0, b));
        let greater = if a.to_string() > b.to_string() {
            "from a"
        } else {
            "from b"
        };
        let mut m1 = ra.clone();
        m1.merge(&rb);
        let mut m2 = rb.clone();
        m2.merge(&ra);
        assert_eq!(*m1.value(), greater);
        assert_eq!(m1, m2);
    }

    #[test]
    fn text_order_not_byte_order_breaks_ties() {
        // Byte order and Base58 text order disagree for these two ids.
        let mut lead = [0xFF; 32];
        lead[0] = 0x0A;
        let a = PeerId::from_digest(lead);
        let b = PeerId::from_digest([0xFF; 32]);
        assert!(a < b && a.to_string() > b.to_string());
        let ra = LwwRegister::new(1, HlcTimestamp::new(1, 1, a));
        let rb = LwwRegister::new(2, HlcTimestamp::new(1, 1, b));
        let mut m = ra.clone();
        m.merge(&rb);
        let want = if a.to_string() > b.to_string() { 1 } else { 2 };
        assert_eq!(*m.value(), want);
        assert_eq!(m.writer(), if want == 1 { a } else { b });
    }

    #[test]
    fn identical_timestamps_fall_back_to_value_order() {
        let p = PeerId::from_digest([7; 32]);
        let t = HlcTimestamp::new(3, 3, p);
        let mut x = LwwRegister::new(1, t);
        x.merge(&LwwRegister::new(2, t));
        assert_eq!(x.into_parts(), (2, t));
    }
}
