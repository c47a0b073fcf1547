//! `ecomesh node --primary ADDR` (issue 19, seed 004's edge sync): the
//! node's replicated collections go through a [`HybridStorageAdapter`] over
//! a [`RemoteStorageAdapter`] (another node's `/primary/v1/` routes), beside
//! the node's own peer-to-peer store.
//!
//! - [`attach`] plugs the adapter into a [`NodeBuilder`] as the node's
//!   [`DocumentFront`]: `get`, `query`, `set`, `update`, `delete` and batches
//!   of replicated collections go through it, and the node's field operations
//!   and restores are queued like its other writes. Its durable replay queue
//!   lives in `hybrid-queue/` in the data directory, so writes queued before
//!   a crash or restart are replayed after it.
//! - [`Attached::bind`], once the node runs, starts the health driver
//!   (heartbeat, periodic replay, replay when the primary returns) and
//!   forwards [`HybridEvent::Conflict`] to the node's sync event stream as
//!   [`ecomesh_sync::SyncEvent::PrimaryConflict`].
//! - [`Attached::status`] is what `ecomesh status` shows: the primary's
//!   address and health, the mode (hybrid, p2p-only, local-only), the last
//!   complete sync, the queued writes and the reads by source.
//!
//! The device authenticates to the primary with its node identity (the
//! gate's challenge, signature and expiring token), and accepts a primary
//! that the node's access policy admits.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use ecomesh_hybrid_storage::{
    Driver, HealthConfig, HybridConfig, HybridEvent, HybridStorageAdapter, Strategy, spawn_driver,
};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_sync::{DocumentFront, LocalStorage, Node, NodeBuilder, SledBackend, SyncError};
use ecomesh_types::{
    BatchOperation, BatchResult, BoxFuture, Document, Error, HlcTimestamp, Listener, Map, Query,
    QueryPage, SetOptions, StorageAdapter, Subscription, WriteResult,
};
use serde::{Deserialize, Serialize};

use crate::remote::{RemoteConfig, RemoteStorageAdapter};

/// The folder of the replay queue in the data directory.
pub const QUEUE_DIR: &str = "hybrid-queue";

/// The strategy `--primary-strategy` names: `local-first` (the default, seed
/// 004's: reads and writes never wait for the primary, every write is
/// replayed to it) or `primary-first` (seed 000 §9's
/// primary-with-offline-fallback: reads from the primary while it is
/// healthy, writes wait for its merge up to the request timeout).
pub fn parse_strategy(s: &str) -> Result<Strategy> {
    match s {
        "local-first" => Ok(Strategy::LocalFirstWithPrimarySync),
        "primary-first" => Ok(Strategy::PrimaryWithOfflineFallback),
        other => bail!("unknown strategy {other:?}: use local-first or primary-first"),
    }
}

/// The name `status` shows for a strategy.
pub fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::PrimaryWithOfflineFallback => "primary-first",
        _ => "local-first",
    }
}

/// How a device node uses its primary (`--primary` and its companions).
#[derive(Clone, Debug)]
pub struct PrimaryOptions {
    /// The primary's API address (its `--api`).
    pub addr: SocketAddr,
    /// The strategy.
    pub strategy: Strategy,
    /// The intervals (heartbeat 5 s, persistent sync 30 s, stale after 60 s
    /// by default) and the request timeout.
    pub health: HealthConfig,
}

impl PrimaryOptions {
    /// The primary at `addr` with seed 004's defaults (local first).
    pub fn new(addr: SocketAddr) -> Self {
        PrimaryOptions {
            addr,
            strategy: Strategy::LocalFirstWithPrimarySync,
            health: HealthConfig::default(),
        }
    }
}

/// The hybrid adapter as the node's document front.
struct Front(Arc<HybridStorageAdapter<SledBackend>>);

impl StorageAdapter for Front {
    fn get<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, Error>> {
        self.0.get(collection, id)
    }

    fn set<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
        options: SetOptions,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        self.0.set(collection, id, fields, options)
    }

    fn update<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        self.0.update(collection, id, fields)
    }

    fn delete<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        self.0.delete(collection, id)
    }

    fn query<'a>(
        &'a self,
        collection: &'a str,
        query: &'a Query,
    ) -> BoxFuture<'a, Result<QueryPage, Error>> {
        self.0.query(collection, query)
    }

    fn batch_write(
        &self,
        operations: Vec<BatchOperation>,
    ) -> BoxFuture<'_, Result<BatchResult, Error>> {
        self.0.batch_write(operations)
    }

    fn subscribe_document(
        &self,
        collection: &str,
        id: &str,
        listener: Listener<Option<Document>>,
    ) -> Result<Subscription, Error> {
        self.0.subscribe_document(collection, id, listener)
    }

    fn subscribe_query(
        &self,
        collection: &str,
        query: Query,
        listener: Listener<Vec<Document>>,
    ) -> Result<Subscription, Error> {
        self.0.subscribe_query(collection, query, listener)
    }

    fn server_timestamp(&self) -> HlcTimestamp {
        self.0.server_timestamp()
    }

    fn generate_id(&self, collection: &str) -> String {
        self.0.generate_id(collection)
    }
}

impl DocumentFront for Front {
    fn local_writes<'a>(&'a self, results: &'a [WriteResult]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.0.record_local_writes(results))
    }
}

fn wall_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// The hybrid side of a device node, filled in when the node starts.
#[derive(Clone, Debug)]
pub struct Attached {
    addr: SocketAddr,
    adapter: Arc<OnceLock<Arc<HybridStorageAdapter<SledBackend>>>>,
}

/// What `status` shows about the primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryStatus {
    /// The primary's API address.
    pub addr: String,
    /// The strategy: `local-first` or `primary-first`.
    pub strategy: String,
    /// Its health: `unknown` (not contacted yet), `healthy`, `stale` (no
    /// answer for longer than the stale threshold) or `down`.
    pub health: String,
    /// `hybrid` (the primary is healthy), `p2p-only` (it is not, a peer is
    /// connected) or `local-only` (neither: writes are accepted and queued).
    pub mode: String,
    /// When the queue was last replayed completely (Unix ms).
    pub last_sync_ms: Option<u64>,
    /// When the primary last answered (Unix ms).
    pub last_ok_ms: Option<u64>,
    /// Writes waiting for the primary.
    pub queued: usize,
    /// Reads the primary answered since the node started.
    pub reads_primary: u64,
    /// Reads the local store answered since the node started.
    pub reads_local: u64,
}

/// Makes `builder`'s node use the primary `options` names, authenticating
/// as `identity` to a primary `policy` admits; the queue lives in
/// `data_root/hybrid-queue`.
pub fn attach(
    builder: NodeBuilder,
    identity: Identity,
    policy: Arc<AccessPolicy>,
    options: &PrimaryOptions,
    data_root: &Path,
) -> (NodeBuilder, Attached) {
    let timeout = Duration::from_millis(options.health.request_timeout_ms.max(1));
    let remote = Arc::new(RemoteStorageAdapter::new(
        RemoteConfig::new(options.addr).with_timeout(timeout),
        identity,
        policy,
    ));
    let attached = Attached {
        addr: options.addr,
        adapter: Arc::new(OnceLock::new()),
    };
    let slot = attached.adapter.clone();
    let config = HybridConfig::new(options.strategy).with_health(options.health);
    let queue_dir = data_root.join(QUEUE_DIR);
    let builder = builder.documents(move |local: Arc<LocalStorage>| {
        let h = HybridStorageAdapter::new(remote, local, &queue_dir, config, Arc::new(wall_ms))
            .map_err(|e| SyncError::InvalidArgument(format!("opening the replay queue: {e}")))?;
        let h = Arc::new(h);
        let _ = slot.set(h.clone());
        Ok(Arc::new(Front(h)) as Arc<dyn DocumentFront>)
    });
    (builder, attached)
}

impl Attached {
    /// The adapter, once the node started.
    pub fn adapter(&self) -> Option<&Arc<HybridStorageAdapter<SledBackend>>> {
        self.adapter.get()
    }

    /// Forwards the adapter's conflicts to `node`'s sync events and starts
    /// its health driver (stopped when the returned driver is dropped).
    ///
    /// # Errors
    /// The node was not started with this attachment.
    pub fn bind(&self, node: &Node) -> Result<Driver> {
        let Some(h) = self.adapter() else {
            bail!("the node was not started with the primary attached");
        };
        let forward = {
            let node = node.clone();
            move |ev: &HybridEvent| {
                if let HybridEvent::Conflict {
                    collection,
                    id,
                    cid,
                } = ev
                {
                    node.report_primary_conflict(collection, id, cid.clone());
                }
            }
        };
        let forward = Arc::new(forward);
        h.set_listener(forward.clone());
        // Events from before the listener (a replay at start) are not lost.
        for ev in h.drain_events().0 {
            forward(&ev);
        }
        Ok(spawn_driver(h.clone()))
    }

    /// The status with `peers` peers connected.
    pub fn status(&self, peers: usize) -> Option<PrimaryStatus> {
        let h = self.adapter()?;
        let s = h.status(peers);
        Some(PrimaryStatus {
            addr: self.addr.to_string(),
            strategy: strategy_name(h.strategy()).to_owned(),
            health: s.health.as_str().to_owned(),
            mode: s.mode.as_str().to_owned(),
            last_sync_ms: s.last_sync_ms,
            last_ok_ms: s.last_ok_ms,
            queued: s.queued,
            reads_primary: s.reads_primary,
            reads_local: s.reads_local,
        })
    }
}

/// `ecomesh node`'s primary flags (also `ecomesh.toml` keys: `primary`,
/// `primary-strategy`, `primary-heartbeat-ms`, `primary-sync-ms`,
/// `primary-stale-ms`, `primary-timeout-ms`).
#[derive(Clone, Debug, clap::Args)]
pub struct PrimaryArgs {
    /// Sync with the primary node whose API listens at HOST:PORT (its `--api`,
    /// exposed with `--api-expose` when it is on another machine): writes are
    /// queued durably and replayed to it, and it authenticates this node's
    /// identity by challenge, signature and an expiring token.
    #[arg(long, value_name = "HOST:PORT")]
    pub primary: Option<SocketAddr>,
    /// How the primary is used: local-first (reads and writes never wait for
    /// it; every write is replayed to it) or primary-first (reads from it
    /// while it is healthy; a write waits for its merge, up to the timeout).
    #[arg(long, value_name = "STRATEGY", default_value = "local-first", value_parser = ["local-first", "primary-first"], requires = "primary")]
    pub primary_strategy: String,
    /// How often the primary is pinged, in ms (seed 004: 5 s).
    #[arg(long, value_name = "MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub primary_heartbeat_ms: u64,
    /// How often queued writes are replayed while the primary is healthy, in
    /// ms (seed 004's persistent sync: 30 s); its return replays at once.
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(50..=86_400_000))]
    pub primary_sync_ms: u64,
    /// After how long without an answer the primary counts as stale and reads
    /// go local, in ms (seed 004: 60 s).
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(50..=86_400_000))]
    pub primary_stale_ms: u64,
    /// How long one request to the primary may take, in ms.
    #[arg(long, value_name = "MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub primary_timeout_ms: u64,
}

impl PrimaryArgs {
    /// The options these flags give, `None` without `--primary`.
    ///
    /// # Errors
    /// An unknown strategy name.
    pub fn options(&self) -> Result<Option<PrimaryOptions>> {
        let Some(addr) = self.primary else {
            return Ok(None);
        };
        Ok(Some(PrimaryOptions {
            addr,
            strategy: parse_strategy(&self.primary_strategy)?,
            health: HealthConfig::default()
                .with_intervals(
                    self.primary_heartbeat_ms,
                    self.primary_sync_ms,
                    self.primary_stale_ms,
                )
                .with_request_timeout_ms(self.primary_timeout_ms),
        }))
    }
}

impl PrimaryStatus {
    /// The lines `ecomesh status` prints about the primary.
    pub fn human_lines(&self) -> Vec<String> {
        let when = |ms: Option<u64>| ms.map_or_else(|| "never".to_owned(), crate::human::date);
        let mode = match self.mode.as_str() {
            "local-only" => "local-only (no primary, no peer: writes are accepted and queued)",
            "p2p-only" => "p2p-only (the primary is away: peers sync, writes are queued)",
            other => other,
        };
        vec![
            format!("primary     {} ({})", self.addr, self.strategy),
            format!(
                "  health    {} (last answer {})",
                self.health,
                when(self.last_ok_ms)
            ),
            format!("  mode      {mode}"),
            format!("  last sync {}", when(self.last_sync_ms)),
            format!("  queued    {} writes", self.queued),
            format!(
                "  reads     {} from the primary, {} local",
                self.reads_primary, self.reads_local
            ),
        ]
    }
}
