//! The hybrid-logical-clock timestamp. The clock itself lives in `ecomesh-crdt`.

use std::cmp::Ordering;
use std::fmt;

use crate::PeerId;

/// A hybrid logical clock timestamp: (physical milliseconds, logical counter, peer) (seed 5.3).
///
/// Ordered by physical time, then the logical counter, then the peer's Base58
/// text ([`PeerId::cmp_text`]), so two timestamps from different peers never
/// compare equal and every peer orders them the same way.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HlcTimestamp {
    /// Wall-clock component in Unix milliseconds (never decreases on one peer).
    pub physical_ms: u64,
    /// Counter that orders events within the same millisecond.
    pub logical: u32,
    /// The peer that issued the timestamp.
    pub peer: PeerId,
}

impl HlcTimestamp {
    /// Builds a timestamp from its three parts.
    pub const fn new(physical_ms: u64, logical: u32, peer: PeerId) -> Self {
        HlcTimestamp {
            physical_ms,
            logical,
            peer,
        }
    }
}

impl Ord for HlcTimestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.physical_ms
            .cmp(&other.physical_ms)
            .then(self.logical.cmp(&other.logical))
            .then_with(|| self.peer.cmp_text(&other.peer))
    }
}

impl PartialOrd for HlcTimestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Hlc({}.{}@{})",
            self.physical_ms, self.logical, self.peer
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_time_then_counter_then_peer_text() {
        let a = PeerId::from_digest([1; 32]);
        let b = PeerId::from_digest([2; 32]);
        assert!(HlcTimestamp::new(1, 9, b) < HlcTimestamp::new(2, 0, a));
        assert!(HlcTimestamp::new(1, 0, b) < HlcTimestamp::new(1, 1, a));
        let (lo, hi) = if a.cmp_text(&b) == Ordering::Less {
            (a, b)
        } else {
            (b, a)
        };
        assert!(HlcTimestamp::new(1, 1, lo) < HlcTimestamp::new(1, 1, hi));
    }
}
