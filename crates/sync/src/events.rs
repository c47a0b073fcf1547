//! Sync events and sync states: what replication took in and sent, and where
//! each peer (and the node as a whole) stands.
//!
//! The driving task drains the replication adapter's activity queue after
//! every pass and the mesh's peer events as they happen, updates the state
//! machines here and publishes [`SyncEvent`]s on a bounded broadcast
//! channel: a subscriber that falls behind gets [`SyncEvent::Lagged`] and
//! resumes with the newest events; the node never waits for it.
//!
//! Per peer: [`Offline`](SyncState::Offline) until the mesh reaches it,
//! [`Connecting`](SyncState::Connecting) until an anti-entropy session
//! starts or a version arrives, [`Syncing`](SyncState::Syncing) during a
//! session, [`Synced`](SyncState::Synced) when the session ended equal (or a
//! version arrived outside a session). A version merged whose parents were not
//! the document's heads puts the peer in [`Conflict`](SyncState::Conflict);
//! once the merged document is read back from the store it is
//! [`Resolved`](SyncState::Resolved), until the next change of state.

use std::collections::BTreeMap;
use std::pin::Pin;

use ecomesh_p2p_storage::{OwnClock, SyncActivity, VersionNode};
use ecomesh_types::{ContentId, PeerId, TransportType};
use futures::Stream;
use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::error::{Result, SyncError};
use crate::node::{Node, lock};

/// Where a peer, or the node, stands in synchronisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncState {
    /// Not reachable (the node: no peer reachable).
    Offline,
    /// Reachable, not synchronised with yet.
    Connecting,
    /// An anti-entropy session is exchanging differences.
    Syncing,
    /// The last session ended with both sides equal, or the last version
    /// from the peer was merged.
    Synced,
    /// A version concurrent with this node's was just merged.
    Conflict,
    /// The merged result of concurrent versions is stored.
    Resolved,
}

/// What kind of change a version made, as far as its node tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// The document's first version (no parents).
    Create,
    /// A later write: set, update, field operations, restore.
    Update,
    /// A delete (a tombstone version).
    Delete,
    /// The version could not be read back (collected, or not decodable).
    Unknown,
}

/// One version taken in from or sent to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionEvent {
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub id: String,
    /// What the version did.
    pub operation: Operation,
    /// The peer it came from or went to.
    pub peer: PeerId,
    /// The first transport the mesh lists for that peer when the event was
    /// made (`None` when it is not reachable any more).
    pub transport: Option<TransportType>,
    /// The version's CID.
    pub version: ContentId,
}

/// An item of [`Node::sync_events`](crate::Node::sync_events).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// A version new to this node was merged from a peer.
    VersionReceived(VersionEvent),
    /// A version was queued to be pushed to a peer. Versions exchanged inside
    /// anti-entropy sessions are reported only when received.
    VersionSent(VersionEvent),
    /// A peer's state changed.
    PeerState {
        /// The peer.
        peer: PeerId,
        /// Its previous state.
        from: SyncState,
        /// Its new state.
        to: SyncState,
    },
    /// The node's overall state changed (see [`Node::sync_state`](crate::Node::sync_state)).
    NodeState {
        /// The previous state.
        from: SyncState,
        /// The new state.
        to: SyncState,
    },
    /// A peer's clock came to differ from this node's by more than the
    /// tolerance (`skewed`), or came back within it. Its writes then win
    /// (clock ahead) or lose (behind) last-writer-wins conflicts against
    /// concurrent writes; nothing it sends is refused for its timestamps.
    ClockSkew {
        /// The peer.
        peer: PeerId,
        /// Estimated offset of its clock from this node's, ms (positive: ahead).
        skew_ms: i64,
        /// Whether the offset is beyond the tolerance.
        skewed: bool,
    },
    /// The verdict on this node's own clock changed: most peers find it ahead
    /// or behind theirs (it looks wrong), or it agrees again.
    OwnClock(OwnClock),
    /// A local write replayed to this node's primary (a front such as
    /// `ecomesh-hybrid-storage`'s, reported through
    /// [`Node::report_primary_conflict`](crate::Node::report_primary_conflict))
    /// was concurrent with writes the primary got from elsewhere while this
    /// node was away; the CRDT merge resolved it on the primary, and this
    /// node gets the merged result by replication like any other version.
    PrimaryConflict {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// The replayed version.
        version: ContentId,
    },
    /// A peer was refused a non-public collection for want of a valid
    /// capability token (see [`Node::restrict_collection`](crate::Node::restrict_collection)):
    /// not served it (`read`) or a version of it not taken in (`write`).
    /// Repeats of the same refusal in a row are reported once.
    CapabilityRefused {
        /// The peer refused.
        peer: PeerId,
        /// The collection.
        collection: String,
        /// `read` or `write`.
        action: &'static str,
    },
    /// This subscriber fell behind and missed this many events.
    Lagged(u64),
}

/// The stream [`Node::sync_events`](crate::Node::sync_events) returns.
pub type SyncEvents = Pin<Box<dyn Stream<Item = SyncEvent> + Send>>;

/// A peer's synchronisation status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerSyncStatus {
    /// Where it stands.
    pub state: SyncState,
    /// When a session with it last ended equal, or a version from it was
    /// last merged (Unix milliseconds); `None`: never since the node started.
    pub last_synced_ms: Option<u64>,
}

#[derive(Debug)]
struct PeerEntry {
    state: SyncState,
    last_synced_ms: Option<u64>,
    in_session: bool,
}

/// Gives a version's operation and the transport a peer is reached on.
type Describe<'a> = dyn Fn(&ContentId, &PeerId) -> (Operation, Option<TransportType>) + 'a;

/// The state machines and the broadcast channel.
#[derive(Debug)]
pub(crate) struct SyncTracker {
    peers: BTreeMap<PeerId, PeerEntry>,
    node: SyncState,
    /// The peers last reported skewed, and the last own-clock verdict.
    skewed: BTreeMap<PeerId, bool>,
    own_clock: OwnClock,
    tx: broadcast::Sender<SyncEvent>,
}

impl SyncTracker {
    pub(crate) fn new(capacity: usize) -> SyncTracker {
        let (tx, _) = broadcast::channel(capacity.max(1));
        SyncTracker {
            peers: BTreeMap::new(),
            node: SyncState::Offline,
            skewed: BTreeMap::new(),
            own_clock: OwnClock::Unknown,
            tx,
        }
    }

    pub(crate) fn subscribe(&self) -> SyncEvents {
        let rx = self.tx.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((SyncEvent::Lagged(n), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }

    /// Compares the replication adapter's clock report with the last one and
    /// emits a [`SyncEvent::ClockSkew`] for each peer that became skewed or
    /// stopped being so, and a [`SyncEvent::OwnClock`] when the verdict on this
    /// node's clock changed (once per change, not per message).
    pub(crate) fn on_clocks(
        &mut self,
        peers: impl IntoIterator<Item = (PeerId, i64, bool)>,
        own: OwnClock,
    ) {
        for (peer, skew_ms, skewed) in peers {
            let before = self.skewed.get(&peer).copied().unwrap_or(false);
            if before != skewed {
                self.emit(SyncEvent::ClockSkew {
                    peer,
                    skew_ms,
                    skewed,
                });
            }
            if skewed {
                self.skewed.insert(peer, true);
            } else {
                self.skewed.remove(&peer);
            }
        }
        let same = matches!(
            (self.own_clock, own),
            (OwnClock::Unknown, OwnClock::Unknown)
                | (OwnClock::Agrees, OwnClock::Agrees)
                | (OwnClock::Ahead { .. }, OwnClock::Ahead { .. })
                | (OwnClock::Behind { .. }, OwnClock::Behind { .. })
        );
        if !same {
            self.emit(SyncEvent::OwnClock(own));
        }
        self.own_clock = own;
    }

    pub(crate) fn emit(&self, ev: SyncEvent) {
        // No subscriber is not an error.
        let _ = self.tx.send(ev);
    }

    pub(crate) fn node_state(&self) -> SyncState {
        self.node
    }

    pub(crate) fn peer(&self, peer: &PeerId) -> PeerSyncStatus {
        self.peers.get(peer).map_or(
            PeerSyncStatus {
                state: SyncState::Offline,
                last_synced_ms: None,
            },
            |e| PeerSyncStatus {
                state: e.state,
                last_synced_ms: e.last_synced_ms,
            },
        )
    }

    fn entry(&mut self, peer: PeerId) -> &mut PeerEntry {
        self.peers.entry(peer).or_insert(PeerEntry {
            state: SyncState::Offline,
            last_synced_ms: None,
            in_session: false,
        })
    }

    /// Moves `peer` to `to` (emitting the change), then recomputes the node's state.
    fn set(&mut self, peer: PeerId, to: SyncState) {
        let e = self.entry(peer);
        let from = e.state;
        if from == to {
            return;
        }
        e.state = to;
        tracing::debug!(%peer, ?from, ?to, "peer sync state");
        self.emit(SyncEvent::PeerState { peer, from, to });
        self.update_node();
    }

    /// The node's state: the most pressing of its peers' states (Conflict,
    /// Syncing, Connecting, Resolved, Synced), Offline without a reachable peer.
    fn update_node(&mut self) {
        let rank = |s: SyncState| match s {
            SyncState::Offline => 0,
            SyncState::Synced => 1,
            SyncState::Resolved => 2,
            SyncState::Connecting => 3,
            SyncState::Syncing => 4,
            SyncState::Conflict => 5,
        };
        let to = self
            .peers
            .values()
            .map(|e| e.state)
            .max_by_key(|s| rank(*s))
            .unwrap_or(SyncState::Offline);
        if to != self.node {
            let from = std::mem::replace(&mut self.node, to);
            self.emit(SyncEvent::NodeState { from, to });
        }
    }

    /// The mesh reaches `peer` (`true`) or no longer does.
    pub(crate) fn reachable(&mut self, peer: PeerId, yes: bool) {
        if yes {
            if self.entry(peer).state == SyncState::Offline {
                self.set(peer, SyncState::Connecting);
            }
        } else {
            self.entry(peer).in_session = false;
            self.set(peer, SyncState::Offline);
        }
    }

    /// Takes in one entry of the replication adapter's activity. `describe`
    /// gives a version's operation and the peer's transport; `stored` tells
    /// whether the merged document reads back from the store.
    pub(crate) fn on_activity(
        &mut self,
        a: SyncActivity,
        now_ms: u64,
        describe: &Describe<'_>,
        stored: &dyn Fn(&str, &str) -> bool,
    ) {
        match a {
            SyncActivity::SessionStarted { peer } => {
                self.entry(peer).in_session = true;
                self.set(peer, SyncState::Syncing);
            }
            SyncActivity::SessionEnded { peer } => {
                let e = self.entry(peer);
                e.in_session = false;
                e.last_synced_ms = Some(now_ms);
                self.set(peer, SyncState::Synced);
            }
            SyncActivity::Received {
                peer,
                version,
                collection,
                id,
                concurrent,
            } => {
                let (operation, transport) = describe(&version, &peer);
                if concurrent {
                    self.set(peer, SyncState::Conflict);
                }
                let ok = stored(&collection, &id);
                self.emit(SyncEvent::VersionReceived(VersionEvent {
                    collection,
                    id,
                    operation,
                    peer,
                    transport,
                    version,
                }));
                if concurrent && ok {
                    self.set(peer, SyncState::Resolved);
                } else if !concurrent && !self.entry(peer).in_session {
                    self.entry(peer).last_synced_ms = Some(now_ms);
                    self.set(peer, SyncState::Synced);
                }
            }
            SyncActivity::Sent {
                peer,
                version,
                collection,
                id,
            } => {
                let (operation, transport) = describe(&version, &peer);
                self.emit(SyncEvent::VersionSent(VersionEvent {
                    collection,
                    id,
                    operation,
                    peer,
                    transport,
                    version,
                }));
            }
            _ => {}
        }
    }

    /// Reports that `n` activity entries were dropped before they were seen.
    pub(crate) fn dropped(&self, n: u64) {
        if n > 0 {
            tracing::warn!(dropped = n, "sync activity dropped before it was seen");
            self.emit(SyncEvent::Lagged(n));
        }
    }
}

impl crate::node::Inner {
    /// Feeds the replication adapter's activity since the last pass to the
    /// state machines and the event channel.
    pub(crate) fn track_sync(&self) {
        self.take_refusals();
        let clocks = self.p2p.clock_report();
        lock(&self.sync).on_clocks(
            clocks.peers.iter().map(|c| (c.peer, c.skew_ms, c.skewed)),
            clocks.own,
        );
        let (activity, dropped) = self.p2p.drain_activity();
        if activity.is_empty() && dropped == 0 {
            return;
        }
        let peers = self.mesh.peers();
        let describe = |cid: &ContentId, peer: &PeerId| {
            let transport = peers
                .iter()
                .find(|p| p.peer_id == *peer)
                .and_then(|p| p.transports.first().copied());
            (self.operation_of(cid), transport)
        };
        let stored = |c: &str, id: &str| self.store.get(c, id).is_ok();
        let mut t = lock(&self.sync);
        t.dropped(dropped);
        for a in activity {
            t.on_activity(a, now_ms(), &describe, &stored);
        }
    }

    /// What version `cid` did: a tombstone is a delete, a version without
    /// parents a create, anything else an update.
    fn operation_of(&self, cid: &ContentId) -> Operation {
        let Ok(Some(bytes)) = self.store.version_bytes(cid) else {
            return Operation::Unknown;
        };
        match ecomesh_wire::decode::<VersionNode>(&bytes) {
            Ok(v) if v.delta.deleted().is_some() && !v.delta.exists() => Operation::Delete,
            Ok(v) if v.parents.is_empty() => Operation::Create,
            Ok(_) => Operation::Update,
            Err(_) => Operation::Unknown,
        }
    }
}

impl Node {
    /// A stream of [`SyncEvent`]s from now on: every version taken in from or
    /// pushed to a peer, and every change of a peer's or the node's
    /// [`SyncState`]. The channel is bounded
    /// ([`NodeConfig::sync_events_capacity`](crate::NodeConfig::sync_events_capacity));
    /// a subscriber that falls behind receives [`SyncEvent::Lagged`] with the
    /// number of events it missed, never slowing the node. The stream ends
    /// when every handle of the node is dropped.
    pub fn sync_events(&self) -> SyncEvents {
        lock(&self.inner.sync).subscribe()
    }

    /// Publishes a [`SyncEvent::PrimaryConflict`] on the sync event stream:
    /// the front in charge of this node's primary calls it when the primary
    /// reports a replayed version of `collection`/`id` as concurrent with its
    /// heads. Changes no state.
    pub fn report_primary_conflict(&self, collection: &str, id: &str, version: ContentId) {
        tracing::info!(
            collection,
            id,
            "conflict with the primary resolved by merge"
        );
        lock(&self.inner.sync).emit(SyncEvent::PrimaryConflict {
            collection: collection.to_owned(),
            id: id.to_owned(),
            version,
        });
    }

    /// The node's overall state: [`SyncState::Offline`] without a reachable
    /// peer, otherwise the most pressing of its peers' states (Conflict,
    /// then Syncing, Connecting, Resolved, Synced).
    pub fn sync_state(&self) -> SyncState {
        lock(&self.inner.sync).node_state()
    }

    /// Where synchronisation with `peer` stands, and when it last succeeded;
    /// [`SyncState::Offline`] for a peer never reached.
    pub fn peer_sync_state(&self, peer: &PeerId) -> PeerSyncStatus {
        lock(&self.inner.sync).peer(peer)
    }

    /// Starts an anti-entropy session now with `peer`, or with every
    /// reachable peer for `None`, instead of waiting for the periodic one
    /// ([`P2PConfig::resync_interval_ms`](ecomesh_p2p_storage::P2PConfig::resync_interval_ms)).
    /// A session already running with a peer is replaced by the new one.
    /// Returns the peers a session was started with.
    ///
    /// # Errors
    /// [`SyncError::Stopped`] after shutdown; [`SyncError::InvalidArgument`]
    /// when `peer` is not reachable.
    pub fn force_sync(&self, peer: Option<PeerId>) -> Result<Vec<PeerId>> {
        self.running()?;
        let reachable: Vec<PeerId> = self.inner.mesh.peers().iter().map(|p| p.peer_id).collect();
        let targets = match peer {
            Some(p) if reachable.contains(&p) => vec![p],
            Some(p) => {
                return Err(SyncError::InvalidArgument(format!(
                    "peer {p} is not reachable"
                )));
            }
            None => reachable,
        };
        for p in &targets {
            tracing::info!(peer = %p, "forced sync");
            self.inner.p2p.reconcile_with(*p);
        }
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn peer(b: u8) -> PeerId {
        PeerId::from_digest([b; 32])
    }

    fn describe(_: &ContentId, _: &PeerId) -> (Operation, Option<TransportType>) {
        (Operation::Update, Some(TransportType::Wired))
    }

    #[tokio::test]
    async fn clock_skew_is_reported_once_per_change() {
        let mut t = SyncTracker::new(64);
        let mut events = t.subscribe();
        let two_h = 7_200_000;
        // Within tolerance: nothing to say.
        t.on_clocks([(peer(1), 500, false)], OwnClock::Unknown);
        // Peer 1 two hours ahead, said once however often the report repeats.
        t.on_clocks([(peer(1), two_h, true)], OwnClock::Unknown);
        t.on_clocks([(peer(1), two_h + 40, true)], OwnClock::Unknown);
        // Two peers find this clock behind: the own verdict changes once.
        let own = OwnClock::Behind {
            by_ms: two_h as u64,
        };
        t.on_clocks([(peer(1), two_h, true), (peer(2), two_h, true)], own);
        t.on_clocks([(peer(1), two_h, true), (peer(2), two_h, true)], own);
        // Peer 1's clock is fixed.
        t.on_clocks([(peer(1), 20, false)], OwnClock::Agrees);
        t.emit(SyncEvent::Lagged(0)); // end marker
        let mut got = Vec::new();
        while let Some(ev) = events.next().await {
            if ev == SyncEvent::Lagged(0) {
                break;
            }
            got.push(ev);
        }
        let skew = |b, skew_ms, skewed| SyncEvent::ClockSkew {
            peer: peer(b),
            skew_ms,
            skewed,
        };
        assert_eq!(
            got,
            vec![
                skew(1, two_h, true),
                skew(2, two_h, true),
                SyncEvent::OwnClock(own),
                skew(1, 20, false),
                SyncEvent::OwnClock(OwnClock::Agrees),
            ]
        );
    }

    #[tokio::test]
    async fn peer_and_node_states_follow_sessions_and_concurrent_merges() {
        let mut t = SyncTracker::new(64);
        let mut events = t.subscribe();
        let p = peer(1);
        assert_eq!(t.node_state(), SyncState::Offline);
        t.reachable(p, true);
        t.on_activity(
            SyncActivity::SessionStarted { peer: p },
            5,
            &describe,
            &|_, _| true,
        );
        assert_eq!(t.peer(&p).state, SyncState::Syncing);
        t.on_activity(
            SyncActivity::SessionEnded { peer: p },
            7,
            &describe,
            &|_, _| true,
        );
        assert_eq!(t.peer(&p).state, SyncState::Synced);
        assert_eq!(t.peer(&p).last_synced_ms, Some(7));
        let received = SyncActivity::Received {
            peer: p,
            version: ContentId(vec![1]),
            collection: "c".into(),
            id: "d".into(),
            concurrent: true,
        };
        t.on_activity(received, 9, &describe, &|_, _| true);
        assert_eq!(t.peer(&p).state, SyncState::Resolved);
        assert_eq!(t.node_state(), SyncState::Resolved);
        t.reachable(p, false);
        assert_eq!(t.node_state(), SyncState::Offline);

        let mut seen = Vec::new();
        drop(t);
        while let Some(ev) = events.next().await {
            match ev {
                SyncEvent::PeerState { to, .. } => seen.push(to),
                SyncEvent::VersionReceived(v) => assert_eq!(v.operation, Operation::Update),
                _ => {}
            }
        }
        use SyncState::*;
        assert_eq!(
            seen,
            [Connecting, Syncing, Synced, Conflict, Resolved, Offline]
        );
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_missed() {
        let mut t = SyncTracker::new(2);
        let mut events = t.subscribe();
        for b in 0..5 {
            t.reachable(peer(b), true);
        }
        drop(t);
        let first = events.next().await;
        assert!(
            matches!(first, Some(SyncEvent::Lagged(n)) if n > 0),
            "{first:?}"
        );
    }
}
