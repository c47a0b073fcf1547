//! [`P2PConfig`], the adapter's tunables, and [`P2PStats`], its counters.

use std::sync::Arc;

use ecomesh_replication::antientropy;
#[cfg(doc)]
use ecomesh_replication::policy::select_partners;
use ecomesh_replication::policy::{PinSet, ReplicationConfig};
use ecomesh_replication::reach::{Reach, ReachPolicy, Trust};
use ecomesh_types::PeerId;

#[cfg(doc)]
use super::P2PStorageAdapter;

/// How this node relates to a peer (see [`P2PConfig::trust`]).
pub type TrustFn = Arc<dyn Fn(&PeerId) -> Trust + Send + Sync>;

/// Tunables of a [`P2PStorageAdapter`].
#[derive(Clone)]
pub struct P2PConfig {
    /// Peers asked in parallel on a read miss (seed 6: K nearest).
    pub fetch_peers: usize,
    /// How long a read miss waits for peers, in milliseconds.
    pub fetch_timeout_ms: u64,
    /// Replication factors per collection: a new version is pushed to up to
    /// this many partners chosen by [`select_partners`].
    pub replication: ReplicationConfig,
    /// User, app and region pins that restrict where data may be placed.
    pub pins: PinSet,
    /// A connected peer is reconciled again after this long, in milliseconds.
    pub resync_interval_ms: u64,
    /// Sync-queue items re-pushed to a partner when it connects, at most.
    pub retry_page: usize,
    /// An anti-entropy session that heard nothing for this long, in
    /// milliseconds, is dropped (and restarted by its initiator).
    pub session_timeout_ms: u64,
    /// TTL of the adapter's mesh messages, in seconds.
    pub message_ttl_secs: u32,
    /// Mesh events queued between two `process` calls; more are dropped
    /// (anti-entropy repairs what they carried).
    pub inbox_capacity: usize,
    /// Largest fetch answer, in bytes of version nodes.
    pub max_fetch_bytes: usize,
    /// Settings of the anti-entropy sessions.
    pub antientropy: antientropy::Config,
    /// Collections whose name starts with this prefix stay on this node: never
    /// pushed, served, reconciled or accepted from peers (empty: none).
    pub local_prefix: String,
    /// Who may receive which collection or document (seed 001 reach); a peer
    /// outside the reach never gets the bytes.
    pub reach: ReachPolicy,
    /// How this node relates to a peer (own device, family, ...), for reach.
    pub trust: TrustFn,
    /// A peer whose clock is estimated to be further than this from this
    /// node's, in milliseconds, is reported as skewed (see
    /// [`P2PStorageAdapter::clock_report`]). Reporting only: replication does
    /// not depend on clocks.
    pub clock_tolerance_ms: u64,
}

impl Default for P2PConfig {
    fn default() -> Self {
        P2PConfig {
            fetch_peers: 3,
            fetch_timeout_ms: 5_000,
            replication: ReplicationConfig::seed_defaults(),
            pins: PinSet::new(),
            resync_interval_ms: 60_000,
            session_timeout_ms: 20_000,
            retry_page: 256,
            message_ttl_secs: 120,
            inbox_capacity: 8192,
            max_fetch_bytes: 8 << 20,
            antientropy: antientropy::Config::default(),
            local_prefix: "_".to_owned(),
            reach: ReachPolicy::new(Reach::Commons),
            trust: Arc::new(|_: &PeerId| Trust::Stranger),
            clock_tolerance_ms: 60_000,
        }
    }
}

impl std::fmt::Debug for P2PConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2PConfig")
            .field("fetch_peers", &self.fetch_peers)
            .field("replication", &self.replication)
            .field("resync_interval_ms", &self.resync_interval_ms)
            .field("local_prefix", &self.local_prefix)
            .field("reach", &self.reach)
            .finish_non_exhaustive()
    }
}

/// Counters of what the adapter did, for status displays and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct P2PStats {
    /// Anti-entropy sessions opened by this side.
    pub sessions_started: u64,
    /// Anti-entropy sessions that ended with equal roots or nothing to do.
    pub sessions_done: u64,
    /// Versions merged from peers (pushes, fetches and anti-entropy).
    pub versions_merged: u64,
    /// Versions or frames refused from peers (charged to them).
    pub rejected: u64,
    /// Versions pushed to peers (one per partner).
    pub versions_pushed: u64,
    /// Of those, pushes of versions taken in from a peer and passed on to
    /// another (relays along a chain of replicas).
    pub versions_relayed: u64,
    /// Mesh events dropped because the inbox was full.
    pub dropped_events: u64,
    /// Versions sent to peers in answer to "changes since position N".
    pub delta_versions_sent: u64,
    /// "Changes since" requests of peers that are not established left
    /// unanswered because the budget for serving them was spent (a storm of
    /// fresh identities); they fall back on anti-entropy.
    pub since_refused: u64,
    /// Versions merged from peers' delta pages.
    pub delta_versions_merged: u64,
}
