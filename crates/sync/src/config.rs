//! Every interval and limit the node uses, named, with its default.

use std::collections::BTreeMap;
use std::time::Duration;

use ecomesh_mesh::MeshConfig;
use ecomesh_mesh::buffer::DEFAULT_MAX_MESSAGES;
use ecomesh_p2p_storage::{P2PConfig, StoreConfig};
use ecomesh_replication::reach::Trust;
use ecomesh_types::PeerId;

/// The default bound on pending (accepted, undelivered) texts in the outbox.
pub const DEFAULT_OUTBOX_MAX: usize = 10_000;

/// Tunables of a [`Node`](crate::Node). [`Default`] gives the values the
/// `ecomesh` daemon has always used.
#[derive(Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// How often the node drives the mesh, the outbox, replication and the
    /// blob service when no event wakes it earlier. Default 1 s.
    pub tick: Duration,
    /// How often blob pieces are garbage-collected (seed 5.2 rule) and the
    /// provider records of held blobs announced again. Default 1 h.
    pub blob_gc_interval: Duration,
    /// Longest wait for one content-routing provider lookup, and for
    /// connecting to one holder it found. Default 20 s.
    pub provider_lookup_timeout: Duration,
    /// Longest wait, after connecting to new holders, for the mesh to list
    /// them. Default 5 s.
    pub provider_settle_timeout: Duration,
    /// Longest wait of [`Node::get_blob`](crate::Node::get_blob) for peers to
    /// deliver a blob. Default 120 s.
    pub blob_get_timeout: Duration,
    /// Most pending (accepted, undelivered) texts in the outbox; a send beyond
    /// it is refused with [`SyncError::OutboxFull`](crate::SyncError::OutboxFull).
    /// Default [`DEFAULT_OUTBOX_MAX`] (10 000).
    pub outbox_max: usize,
    /// Longest wait of [`Node::send_text`](crate::Node::send_text) for the
    /// key of a recipient this node never met, asked for through the mesh's
    /// key discovery (any node that knows it answers); after it the send is
    /// refused with [`SyncError::UnknownKey`](crate::SyncError::UnknownKey).
    /// Zero refuses at once. Default 5 s.
    pub key_discovery_timeout: Duration,
    /// Entries of the pending-ACK file read at start beyond the mesh buffer
    /// and outbox bounds (other services' messages wait for ACKs too).
    /// Default 65 536.
    pub pending_load_slack: usize,
    /// The mesh manager's tunables; `mesh.buffer.max_messages` is the
    /// store-and-forward buffer's bound (default
    /// [`DEFAULT_MAX_MESSAGES`], 1000).
    pub mesh: MeshConfig,
    /// The store's tunables.
    pub store: StoreConfig,
    /// Events buffered per [`Node::sync_events`](crate::Node::sync_events)
    /// subscriber; one that falls further behind gets a `Lagged` item.
    /// Default 1024.
    pub sync_events_capacity: usize,
    /// Replication tunables (factors, reach, trust, anti-entropy period);
    /// the blob service uses the same factors, reach and trust.
    pub p2p: P2PConfig,
    /// Relationships from configuration (family, neighbours, municipal,
    /// bioregional peers), applied at every start and never stored; one set
    /// at run time ([`Node::set_relationship`](crate::Node::set_relationship))
    /// wins, and a linked own device is always
    /// [`Trust::OwnDevice`]. Default: none.
    pub relationships: BTreeMap<PeerId, Trust>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let mut mesh = MeshConfig::default();
        mesh.buffer.max_messages = DEFAULT_MAX_MESSAGES;
        NodeConfig {
            tick: Duration::from_secs(1),
            blob_gc_interval: Duration::from_secs(3600),
            provider_lookup_timeout: Duration::from_secs(20),
            provider_settle_timeout: Duration::from_secs(5),
            blob_get_timeout: Duration::from_secs(120),
            outbox_max: DEFAULT_OUTBOX_MAX,
            key_discovery_timeout: Duration::from_secs(5),
            sync_events_capacity: 1024,
            pending_load_slack: 65_536,
            mesh,
            store: StoreConfig::default(),
            p2p: P2PConfig::default(),
            relationships: BTreeMap::new(),
        }
    }
}

impl NodeConfig {
    /// Sets the store-and-forward buffer's bound on messages.
    #[must_use]
    pub fn with_buffer_messages(mut self, n: usize) -> Self {
        self.mesh.buffer.max_messages = n;
        self
    }

    /// Sets [`outbox_max`](Self::outbox_max).
    #[must_use]
    pub fn with_outbox_max(mut self, n: usize) -> Self {
        self.outbox_max = n;
        self
    }

    /// Adds a configured relationship (see [`relationships`](Self::relationships)).
    #[must_use]
    pub fn with_relationship(mut self, peer: PeerId, trust: Trust) -> Self {
        self.relationships.insert(peer, trust);
        self
    }

    /// Sets [`tick`](Self::tick).
    #[must_use]
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("tick", &self.tick)
            .field("blob_gc_interval", &self.blob_gc_interval)
            .field("provider_lookup_timeout", &self.provider_lookup_timeout)
            .field("provider_settle_timeout", &self.provider_settle_timeout)
            .field("blob_get_timeout", &self.blob_get_timeout)
            .field("outbox_max", &self.outbox_max)
            .field("key_discovery_timeout", &self.key_discovery_timeout)
            .field("sync_events_capacity", &self.sync_events_capacity)
            .field("pending_load_slack", &self.pending_load_slack)
            .field("mesh", &self.mesh)
            .field("relationships", &self.relationships)
            .finish_non_exhaustive()
    }
}
