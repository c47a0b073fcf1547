//! What replication did with versions and sessions, queued for the owner of a
//! [`P2PStorageAdapter`](crate::P2PStorageAdapter) to drain (sync events and
//! sync states in `ecomesh-sync`).
//!
//! The queue is bounded: when the owner does not drain it, the oldest entries
//! are dropped and counted, so replication never waits on it.

use std::collections::VecDeque;

use ecomesh_types::{ContentId, PeerId};

/// Most entries kept between two drains; older ones are dropped first.
pub const MAX_ACTIVITY: usize = 4096;

/// One thing replication did, as [`P2PStorageAdapter::drain_activity`](crate::P2PStorageAdapter::drain_activity) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncActivity {
    /// A version new to this node was merged from `peer` (by push, fetch,
    /// delta page or anti-entropy) and is stored.
    Received {
        /// The peer it came from.
        peer: PeerId,
        /// The version's CID.
        version: ContentId,
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// True when the document had versions here and the new one's
        /// parents were not exactly its heads: concurrent versions were merged.
        concurrent: bool,
    },
    /// A version was queued to be pushed to `peer` (one entry per partner).
    /// Versions exchanged inside anti-entropy sessions and delta pages are
    /// not listed one by one.
    Sent {
        /// The partner.
        peer: PeerId,
        /// The version's CID.
        version: ContentId,
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
    },
    /// An anti-entropy session with `peer` began (opened by either side).
    SessionStarted {
        /// The peer.
        peer: PeerId,
    },
    /// An anti-entropy session with `peer` ended with both sides equal.
    SessionEnded {
        /// The peer.
        peer: PeerId,
    },
}

/// The bounded queue.
#[derive(Debug, Default)]
pub(crate) struct ActivityLog {
    entries: VecDeque<SyncActivity>,
    dropped: u64,
}

impl ActivityLog {
    pub(crate) fn push(&mut self, a: SyncActivity) {
        if self.entries.len() >= MAX_ACTIVITY {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(a);
    }

    /// Everything queued, oldest first, and how many were dropped since the
    /// last drain.
    pub(crate) fn drain(&mut self) -> (Vec<SyncActivity>, u64) {
        (
            self.entries.drain(..).collect(),
            std::mem::take(&mut self.dropped),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_dropping_the_oldest_and_counting() {
        let mut log = ActivityLog::default();
        let peer = PeerId::from_digest([7; 32]);
        for _ in 0..MAX_ACTIVITY + 3 {
            log.push(SyncActivity::SessionStarted { peer });
        }
        log.push(SyncActivity::SessionEnded { peer });
        let (entries, dropped) = log.drain();
        assert_eq!(entries.len(), MAX_ACTIVITY);
        assert_eq!(dropped, 4);
        assert_eq!(entries.last(), Some(&SyncActivity::SessionEnded { peer }));
        assert_eq!(log.drain(), (Vec::new(), 0));
    }
}
