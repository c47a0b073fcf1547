//! [`P2PStorageAdapter`]: the store, replicated over the mesh (seed 6, 7.3).
//!
//! - Reads are local first; a miss asks up to `fetch_peers` connected peers in
//!   parallel for the document's versions, merges what arrives (so it is
//!   cached) and answers from the local store.
//! - Writes, updates, deletes (tombstone versions) and batches commit locally
//!   and return at once; each new version node is pushed in the background
//!   to up to the collection's replication factor of connected partners,
//!   chosen by [`partners_in_reach`](ecomesh_replication::policy::partners_in_reach) among the peers the document's reach admits.
//! - A version newly taken in from a peer (push, fetch, delta page or
//!   anti-entropy) is pushed on the same way to partners other than the peer
//!   it came from and its author, so changes cross a chain of replicas hop by
//!   hop in both directions instead of waiting for anti-entropy at each hop.
//! - Queries and subscriptions are local; subscriptions fire when remote
//!   versions merge, because merging goes through the store.
//! - On every new connection, and again every `resync_interval_ms`, the peer
//!   with the smaller id opens an anti-entropy session
//!   ([`ecomesh_replication::antientropy`]), so whatever a push missed
//!   (the peer was away, a message was lost) is exchanged then, with traffic
//!   proportional to the differences.
//!
//! The adapter is driven like the mesh: mesh events are queued by a listener
//! and handled by [`P2PStorageAdapter::process`], which the owner calls with
//! the current time after `MultiTransportManager::process`; the adapter reads
//! no clock. Messages travel as signed mesh messages of the `ecomesh/ae`,
//! `ecomesh/push`, `ecomesh/fetch` and `ecomesh/fetched` types, with a short TTL
//! (they are not worth storing and forwarding for days: anti-entropy catches up).
//! A peer that sends a version failing verification, or a frame that does not
//! decode, is charged an integrity failure in the mesh's reputation table. A
//! version is never refused for its timestamp, so a peer whose clock is wrong
//! replicates normally and is not charged; the adapter estimates each peer's
//! clock offset from the send times of its messages and reports it
//! ([`P2PStorageAdapter::clock_report`], logged once per peer when it exceeds
//! [`P2PConfig::clock_tolerance_ms`]), with a verdict on this node's own clock
//! when most peers disagree with it the same way.

mod config;
mod delta;
mod fetch;
mod process;
mod push;
mod session;
#[cfg(test)]
mod vectors;
mod view;
mod wire;

pub(crate) use wire::{fuzz_check, fuzz_seeds};

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use ecomesh_mesh::{MeshEvent, MultiTransportManager};
use ecomesh_replication::ReplicationError;
use ecomesh_replication::merkle::ReconcileStore;
use ecomesh_replication::queue::SyncQueue;
use ecomesh_replication::stream::{Delta, DurableStream, Position};
use ecomesh_types::{
    BatchOperation, BatchResult, BoxFuture, ContentId, Document, Error, HlcTimestamp, Listener,
    Map, PeerId, Query, QueryPage, SetOptions, StorageAdapter, Subscription, WriteResult,
};

use crate::activity::SyncActivity;
use crate::kv::Backend;
use crate::skew::{ClockReport, ClockSkew};
use crate::{LocalWrite, Store, WrittenVersion};

pub use config::{P2PConfig, P2PStats, TrustFn};
pub use view::ReplicatedView;

use process::Driver;
use view::SharedStream;

/// Mesh message type of anti-entropy frames.
pub const AE_TYPE: &str = "ecomesh/ae";
/// Mesh message type of a pushed version node (its compact form,
/// [`VersionNode::encode_compact`](crate::VersionNode::encode_compact)).
pub const PUSH_TYPE: &str = "ecomesh/push";
/// Mesh message type of a request for a document's versions.
pub const FETCH_TYPE: &str = "ecomesh/fetch";
/// Mesh message type of the answer to a fetch (version nodes in compact form).
pub const FETCHED_TYPE: &str = "ecomesh/fetched";
/// Mesh message type of a request for the sender's changes after a stream position.
pub const SINCE_TYPE: &str = "ecomesh/since";
/// Mesh message type of one page of changes, in stream order (version nodes
/// in compact form).
pub const DELTA_TYPE: &str = "ecomesh/delta";

/// The store replicated over a [`MultiTransportManager`] (see the module docs).
pub struct P2PStorageAdapter<B: Backend> {
    store: Arc<Store<B>>,
    view: Arc<ReplicatedView<B>>,
    mesh: Arc<MultiTransportManager>,
    config: P2PConfig,
    inbox: Arc<Mutex<(VecDeque<MeshEvent>, u64)>>,
    _subscription: Subscription,
    driver: Mutex<Driver<B>>,
    waker: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    random: Mutex<Option<RandomSource>>,
    queue: Option<SyncQueue>,
    stream: SharedStream,
}

/// Fills the 16 random bytes of a message id (see [`P2PStorageAdapter::set_random`]).
pub type RandomSource = Arc<dyn Fn(&mut [u8; 16]) + Send + Sync>;

impl<B: Backend> std::fmt::Debug for P2PStorageAdapter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2PStorageAdapter")
            .field("peer_id", &self.store.peer_id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B: Backend> P2PStorageAdapter<B> {
    /// Replicates `store` over `mesh`. The mesh must sign as the store's identity.
    pub fn new(store: Arc<Store<B>>, mesh: Arc<MultiTransportManager>, config: P2PConfig) -> Self {
        let inbox: Arc<Mutex<(VecDeque<MeshEvent>, u64)>> = Arc::default();
        let cap = config.inbox_capacity;
        let q = inbox.clone();
        let sub = mesh.subscribe(Arc::new(move |ev: &MeshEvent| {
            let wanted = match ev {
                MeshEvent::Message { message, .. } => matches!(
                    message.message_type.as_str(),
                    AE_TYPE | PUSH_TYPE | FETCH_TYPE | FETCHED_TYPE | SINCE_TYPE | DELTA_TYPE
                ),
                MeshEvent::PeerDiscovered(_) | MeshEvent::PeerLost(_) | MeshEvent::Acked { .. } => {
                    true
                }
                _ => false,
            };
            if wanted {
                let mut q = lock(&q);
                if q.0.len() >= cap {
                    q.1 += 1;
                } else {
                    q.0.push_back(ev.clone());
                }
            }
        }));
        let stream: SharedStream = Arc::default();
        let clocks = ClockSkew::new(config.clock_tolerance_ms);
        let view = Arc::new(ReplicatedView {
            store: store.clone(),
            local_prefix: config.local_prefix.clone(),
            reach: Arc::new(config.reach.clone()),
            peer: None,
            stream: stream.clone(),
            taken_in: Arc::default(),
            activity: Arc::default(),
            caps: Arc::default(),
        });
        P2PStorageAdapter {
            store,
            view,
            mesh,
            config,
            inbox,
            _subscription: sub,
            driver: Mutex::new(Driver {
                sessions: BTreeMap::new(),
                next_sid: 0,
                now_ms: 0,
                outbox: VecDeque::new(),
                push_acks: BTreeMap::new(),
                fetches: BTreeMap::new(),
                next_fetch: 1,
                last_sync: BTreeMap::new(),
                since_asked: BTreeMap::new(),
                stats: P2PStats::default(),
                clocks,
                serve_budget: delta::ServeBudget::new(),
            }),
            waker: Mutex::new(None),
            random: Mutex::new(None),
            queue: None,
            stream,
        }
    }

    /// Keeps this node's stream (seed 001 stream positions) in `stream`: every
    /// version written here or merged from a peer gets the next position, and
    /// peers catch up by asking for the changes after the position they last
    /// read (delta sync, one round trip per page) whenever they connect,
    /// before anti-entropy has to walk the Merkle index. What a peer may not
    /// see is left out of the pages it gets.
    ///
    /// A version is positioned after the store has it; a crash in between
    /// leaves it out of the stream, and anti-entropy still carries it.
    pub fn with_stream(self, stream: DurableStream) -> Self {
        *lock(&self.stream) = Some(stream);
        self
    }

    /// This node's stream position: versions positioned so far (0 without a stream).
    pub fn stream_head(&self) -> Position {
        lock(&self.stream).as_ref().map_or(0, |s| s.index().head())
    }

    /// How far this node has read `peer`'s stream (0 without a stream).
    pub fn stream_position_of(&self, peer: &PeerId) -> Position {
        lock(&self.stream)
            .as_ref()
            .map_or(0, |s| s.index().peer_position(peer))
    }

    /// One page of this node's stream after `since`, at most `limit` entries
    /// (and at most [`MAX_DELTA`](ecomesh_replication::stream::MAX_DELTA)); an
    /// empty page without a stream.
    pub fn changes_since(&self, since: Position, limit: usize) -> Delta {
        lock(&self.stream).as_ref().map_or(
            Delta {
                entries: Vec::new(),
                next: since,
                more: false,
            },
            |s| s.index().changes_since(since, limit),
        )
    }

    /// Records every new local version in the durable `queue` until
    /// `factor` partners acknowledged it; unacknowledged items are pushed
    /// again to each partner that connects (also after a restart).
    pub fn with_queue(mut self, queue: SyncQueue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Items in the sync queue not yet acknowledged by enough partners.
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, SyncQueue::len)
    }

    /// The capability gate of non-public collections (see [`crate::capabilities`]).
    pub fn capabilities(&self) -> &Arc<crate::capabilities::CapabilityGate> {
        &self.view.caps
    }

    /// The local store.
    pub fn store(&self) -> &Arc<Store<B>> {
        &self.store
    }

    /// The root CID over the replicated collections: equal on two nodes that
    /// hold the same replicated data.
    pub fn replicated_root(&self) -> Result<ContentId, ReplicationError> {
        self.view.root()
    }

    /// Replaces the operating system's randomness for message ids (a
    /// deterministic simulator uses a seeded source).
    pub fn set_random(&self, random: RandomSource) {
        *lock(&self.random) = Some(random);
    }

    /// Called (from any thread) whenever the adapter has work for [`process`](Self::process).
    pub fn set_waker(&self, waker: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.waker) = Some(waker);
    }

    fn wake(&self) {
        let w = lock(&self.waker).clone();
        if let Some(w) = w {
            w();
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> P2PStats {
        let mut s = lock(&self.driver).stats.clone();
        s.dropped_events = lock(&self.inbox).1;
        s
    }

    /// How far each peer's clock is from this node's, estimated from the send
    /// times of the messages it sent straight here, and whether this node's
    /// own clock looks wrong (ahead of or behind most of its peers). A skewed
    /// peer replicates normally; the report says why its writes win (clock
    /// ahead) or lose (behind) last-writer-wins conflicts with concurrent ones.
    pub fn clock_report(&self) -> ClockReport {
        lock(&self.driver).clocks.report()
    }

    /// Anti-entropy sessions in progress.
    pub fn active_sessions(&self) -> usize {
        lock(&self.driver)
            .sessions
            .values()
            .filter(|s| s.active())
            .count()
    }

    /// The bytes of version `cid` as `peer` may have them: `None` when this node
    /// does not hold it or the peer's reach excludes its document (the answer to
    /// a version-node request from that peer).
    pub fn version_bytes_for(
        &self,
        peer: PeerId,
        cid: &ContentId,
    ) -> Result<Option<Vec<u8>>, ReplicationError> {
        self.view_for(peer).version_bytes(cid)
    }

    /// What replication did since the last call, oldest first (see
    /// [`SyncActivity`]), and how many entries were dropped because more
    /// than [`MAX_ACTIVITY`](crate::activity::MAX_ACTIVITY) piled up
    /// in between. An owner that never calls it loses nothing else: the queue
    /// is bounded.
    pub fn drain_activity(&self) -> (Vec<SyncActivity>, u64) {
        lock(&self.view.activity).drain()
    }

    /// Opens an anti-entropy session with `peer` now (normally done on connection).
    pub fn reconcile_with(&self, peer: PeerId) {
        let mut d = lock(&self.driver);
        self.start_session(&mut d, peer);
        drop(d);
        self.wake();
    }

    /// Applies field operations (counter increments, set additions and
    /// removals, field removals) to a document, as a local write that is
    /// queued and pushed like [`StorageAdapter::update`].
    pub fn apply_ops(
        &self,
        collection: &str,
        id: &str,
        ops: Vec<(String, ecomesh_crdt::FieldOp)>,
    ) -> Result<WriteResult, crate::StoreError> {
        let w = self.store.write_local(LocalWrite::Apply {
            collection: collection.to_owned(),
            id: id.to_owned(),
            ops,
        })?;
        Ok(self.after_write(w, |_| false))
    }

    /// Writes, as a new local version, the content the document had at
    /// version `cid` (see [`Store::restore`]); queued and pushed like any
    /// local write.
    pub fn restore(
        &self,
        collection: &str,
        id: &str,
        cid: &ContentId,
    ) -> Result<WriteResult, crate::StoreError> {
        let w = self.store.write_local(LocalWrite::Restore {
            collection: collection.to_owned(),
            id: id.to_owned(),
            cid: cid.clone(),
        })?;
        Ok(self.after_write(w, |v| v.deleted))
    }

    /// The durable sync queue, when the adapter has one: its items are the
    /// local versions not yet acknowledged by enough partners.
    pub fn queue(&self) -> Option<&SyncQueue> {
        self.queue.as_ref()
    }

    /// Queues and pushes the version a local single-document write returned
    /// (`tombstone` tells whether to queue it as a tombstone); its result.
    fn after_write(
        &self,
        written: Vec<WrittenVersion>,
        tombstone: impl Fn(&WrittenVersion) -> bool,
    ) -> WriteResult {
        let results = self.after_writes(written, tombstone);
        results
            .into_iter()
            .next_back()
            .unwrap_or_else(|| WriteResult::new(None, None))
    }

    /// Queues and pushes the versions a local write returned; their results.
    fn after_writes(
        &self,
        written: Vec<WrittenVersion>,
        tombstone: impl Fn(&WrittenVersion) -> bool,
    ) -> Vec<WriteResult> {
        let mut d = lock(&self.driver);
        for w in &written {
            self.new_version(&mut d, w, tombstone(w));
        }
        drop(d);
        self.wake();
        written.iter().map(WrittenVersion::result).collect()
    }
}

impl<B: Backend> StorageAdapter for P2PStorageAdapter<B> {
    fn get<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, Error>> {
        Box::pin(self.get_or_fetch(collection, id))
    }

    fn set<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
        options: SetOptions,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move {
            let w = self.store.write_local(LocalWrite::Set {
                collection: collection.to_owned(),
                id: id.to_owned(),
                fields,
                options,
            })?;
            Ok(self.after_write(w, |_| false))
        })
    }

    fn update<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move {
            let w = self.store.write_local(LocalWrite::Update {
                collection: collection.to_owned(),
                id: id.to_owned(),
                fields,
            })?;
            Ok(self.after_write(w, |_| false))
        })
    }

    fn delete<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move {
            let w = self.store.write_local(LocalWrite::Delete {
                collection: collection.to_owned(),
                id: id.to_owned(),
            })?;
            Ok(self.after_write(w, |_| true))
        })
    }

    fn query<'a>(
        &'a self,
        collection: &'a str,
        query: &'a Query,
    ) -> BoxFuture<'a, Result<QueryPage, Error>> {
        Box::pin(async move { Ok(self.store.query(collection, query)?) })
    }

    fn batch_write(
        &self,
        operations: Vec<BatchOperation>,
    ) -> BoxFuture<'_, Result<BatchResult, Error>> {
        Box::pin(async move {
            let w = self.store.write_local(LocalWrite::Batch(operations))?;
            // As before this change, a delete in a batch is queued as a
            // replicated version, not as a tombstone.
            Ok(BatchResult::new(self.after_writes(w, |_| false)))
        })
    }

    fn subscribe_document(
        &self,
        collection: &str,
        id: &str,
        listener: Listener<Option<Document>>,
    ) -> Result<Subscription, Error> {
        Ok(self.store.subscribe_document(collection, id, listener)?)
    }

    fn subscribe_query(
        &self,
        collection: &str,
        query: Query,
        listener: Listener<Vec<Document>>,
    ) -> Result<Subscription, Error> {
        Ok(self.store.subscribe_query(collection, query, listener)?)
    }

    fn server_timestamp(&self) -> HlcTimestamp {
        self.store.now()
    }

    fn generate_id(&self, _collection: &str) -> String {
        self.store.new_id()
    }
}
