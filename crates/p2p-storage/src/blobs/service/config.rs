//! [`BlobServiceConfig`]: the tunables of a [`BlobService`] and their defaults.

use std::sync::Arc;

use ecomesh_replication::blob::{BlobConfig, ManifestLimits};
use ecomesh_replication::policy::ReplicationConfig;
use ecomesh_replication::reach::{Reach, ReachPolicy, Trust};
use ecomesh_replication::shard::ShardLimits;
use ecomesh_types::PeerId;

#[cfg(doc)]
use super::BlobService;

/// Tunables of a [`BlobService`].
#[derive(Clone)]
pub struct BlobServiceConfig {
    /// Size thresholds of the encodings (seed 001 table by default).
    pub blob: BlobConfig,
    /// Replication factors per collection and the GC TTL.
    pub replication: ReplicationConfig,
    /// Bounds on shard frames from peers.
    pub limits: ShardLimits,
    /// Bounds on manifests from peers and disk.
    pub manifest_limits: ManifestLimits,
    /// A request unanswered this long, in milliseconds, has failed.
    pub request_timeout_ms: u64,
    /// Most requests out at once over all peers; more wait in a queue.
    pub max_in_flight: usize,
    /// Most requests waiting for a slot; further ones are dropped (logged).
    pub max_queued: usize,
    /// Most piece requests one `get_blob` has out at once.
    pub fetch_in_flight: usize,
    /// Connected peers asked for a manifest this node does not have.
    pub manifest_peers: usize,
    /// Largest payload of one mesh message; larger frames travel in parts.
    /// The default, 1 MiB + 64 KiB, carries a default 1 MiB chunk's `Data`
    /// or `Push` frame (the piece plus a few bytes of framing) in one message.
    pub max_part_bytes: usize,
    /// Bytes of incoming multi-part frames held while they are joined.
    pub max_reassembly_bytes: usize,
    /// TTL of the service's mesh messages, in seconds.
    pub message_ttl_secs: u32,
    /// Mesh events queued between two `process` calls; more are dropped.
    pub inbox_capacity: usize,
    /// Whether pieces pushed by peers are stored (false: refused with an `Error`).
    pub accept_pushes: bool,
    /// Who may receive which blob (seed 001 reach), judged on the blob's
    /// collection and `(collection, blob id text)`: a peer outside the reach
    /// is never pushed the blob and is answered `NotFound` / `Have(false)` /
    /// no manifest for it.
    pub reach: ReachPolicy,
    /// How this node relates to a peer (own device, family, ...), for reach.
    pub trust: Arc<dyn Fn(&PeerId) -> Trust + Send + Sync>,
    /// When a peer connects, [`BlobService::replicate`] runs for every blob
    /// this node originated, so blobs put while partners were away reach
    /// them. Costs a scan of those blobs' indexes per connection.
    pub replicate_on_connect: bool,
}

impl std::fmt::Debug for BlobServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobServiceConfig")
            .field("blob", &self.blob)
            .field("replication", &self.replication)
            .field("limits", &self.limits)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_part_bytes", &self.max_part_bytes)
            .field("reach", &self.reach)
            .finish_non_exhaustive()
    }
}

impl Default for BlobServiceConfig {
    fn default() -> Self {
        BlobServiceConfig {
            blob: BlobConfig::default(),
            replication: ReplicationConfig::seed_defaults(),
            limits: ShardLimits::default(),
            manifest_limits: ManifestLimits::default(),
            request_timeout_ms: 15_000,
            max_in_flight: 32,
            max_queued: 65_536,
            fetch_in_flight: 8,
            manifest_peers: 3,
            max_part_bytes: (1 << 20) + (64 << 10),
            max_reassembly_bytes: 64 << 20,
            message_ttl_secs: 120,
            inbox_capacity: 8192,
            accept_pushes: true,
            reach: ReachPolicy::new(Reach::Commons),
            trust: Arc::new(|_: &PeerId| Trust::Stranger),
            replicate_on_connect: true,
        }
    }
}
