//! [`P2PStorageAdapter`]: the store, replicated over the mesh (seed 6, 7.3).
//!
//! - Reads are local first; a miss asks up to `fetch_peers` connected peers in
//!   parallel for the document's versions, merges what arrives (so it is
//!   cached) and answers from the local store.
//! - Writes, updates, deletes (tombstone versions) and batches commit locally
//!   and return at once; each new version node is pushed in the background
//!   to up to the collection's replication factor of connected partners,
//!   chosen by [`select_partners`] among the peers the document's reach admits.
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use ecomesh_mesh::reputation::Observation;
use ecomesh_mesh::{MeshEvent, MultiTransportManager};
use ecomesh_replication::ReplicationError;
use ecomesh_replication::antientropy::{self, Event as AeEvent, Session};
use ecomesh_replication::merkle::{ApplyResult, MerkleNode, ReconcileStore};
use ecomesh_replication::policy::{Candidate, Origin, PinSet, ReplicationConfig, select_partners};
use ecomesh_replication::queue::{SyncItem, SyncQueue};
use ecomesh_replication::reach::{Reach, ReachPolicy, Relation, Trust};
use ecomesh_replication::stream::{Delta, DurableStream, MAX_DELTA, Position, Source};
use ecomesh_types::{
    BatchOperation, BatchResult, BoxFuture, ContentId, Document, Error, HlcTimestamp, Listener,
    Map, MessageId, NetworkMessage, PeerId, Priority, Query, QueryPage, SetOptions, StorageAdapter,
    Subscription, Value, WriteResult,
};
use ecomesh_wire::Limits;

use crate::Store;
use crate::activity::{ActivityLog, SyncActivity};
use crate::kv::Backend;
use crate::skew::{ClockReport, ClockSkew};

/// Mesh message type of anti-entropy frames.
pub const AE_TYPE: &str = "ecomesh/ae";
/// Mesh message type of a pushed version node (its exact bytes).
pub const PUSH_TYPE: &str = "ecomesh/push";
/// Mesh message type of a request for a document's versions.
pub const FETCH_TYPE: &str = "ecomesh/fetch";
/// Mesh message type of the answer to a fetch.
pub const FETCHED_TYPE: &str = "ecomesh/fetched";
/// Mesh message type of a request for the sender's changes after a stream position.
pub const SINCE_TYPE: &str = "ecomesh/since";
/// Mesh message type of one page of changes, in stream order.
pub const DELTA_TYPE: &str = "ecomesh/delta";

/// The node's stream of positioned versions, shared by the adapter and its views.
type SharedStream = Arc<Mutex<Option<DurableStream>>>;

/// A store as one peer may see it: collections local to this node (see
/// [`P2PConfig::local_prefix`]) and, for a given peer, collections outside the
/// peer's reach are invisible and have no effect on the root; the bytes of a
/// version whose document is outside the peer's reach are never handed out;
/// versions for invisible collections are refused.
pub struct ReplicatedView<B: Backend> {
    store: Arc<Store<B>>,
    local_prefix: String,
    reach: Arc<ReachPolicy>,
    /// The peer this view is for; `None`: this node's own view of what it replicates.
    relation: Option<Relation>,
    /// Where a version merged from the peer is positioned, when the node keeps a stream.
    stream: SharedStream,
    /// Versions newly merged from peers, to be pushed on (see [`TakenIn`]).
    taken_in: Arc<Mutex<TakenIn>>,
    /// What replication did, for the owner to drain (see [`crate::activity`]).
    activity: Arc<Mutex<ActivityLog>>,
}

/// Most versions waiting to be pushed on; beyond it the rest of a burst (a
/// long catch-up by anti-entropy) is left to a reconciliation with the peers.
const MAX_TAKEN_IN: usize = 1024;

/// Versions this node took in from peers (by push, fetch, delta sync or
/// anti-entropy) since the driver last looked, each with the peer it came
/// from, so the driver pushes them on to the peers that may lack them.
#[derive(Default)]
struct TakenIn {
    versions: VecDeque<(ContentId, PeerId)>,
    /// More arrived than [`MAX_TAKEN_IN`] could hold.
    overflowed: bool,
}

impl<B: Backend> std::fmt::Debug for ReplicatedView<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedView")
            .field("local_prefix", &self.local_prefix)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> ReplicatedView<B> {
    fn replicates(&self, collection: &str) -> bool {
        let local = !self.local_prefix.is_empty() && collection.starts_with(&self.local_prefix);
        !local
            && self
                .relation
                .is_none_or(|r| self.reach.admits(collection, None, &r))
    }

    fn document_visible(&self, collection: &str, id: &str) -> bool {
        self.replicates(collection)
            && self
                .relation
                .is_none_or(|r| self.reach.admits(collection, Some(id), &r))
    }

    /// The collection and id of a version node's bytes, if they decode.
    fn document_of(bytes: &[u8]) -> Option<(String, String)> {
        ecomesh_wire::decode::<crate::VersionNode>(bytes)
            .ok()
            .map(|v| (v.collection, v.id))
    }
}

impl<B: Backend> ReconcileStore for ReplicatedView<B> {
    fn root(&self) -> Result<ContentId, ReplicationError> {
        let mut map = Map::new();
        for c in self.collections()? {
            if let Some(root) = self.collection_root(&c)? {
                map.insert(c, Value::Link(root));
            }
        }
        let bytes = ecomesh_wire::to_dag_cbor(&Value::Map(map))?;
        Ok(ecomesh_wire::to_content_id(&ecomesh_wire::cid_of_dag_cbor(
            &bytes,
        )))
    }

    fn collections(&self) -> Result<Vec<String>, ReplicationError> {
        Ok(ReconcileStore::collections(&*self.store)?
            .into_iter()
            .filter(|c| self.replicates(c))
            .collect())
    }

    fn collection_root(&self, collection: &str) -> Result<Option<ContentId>, ReplicationError> {
        if !self.replicates(collection) {
            return Ok(None);
        }
        ReconcileStore::collection_root(&*self.store, collection)
    }

    fn merkle_node(
        &self,
        collection: &str,
        path: &[u8],
    ) -> Result<Option<MerkleNode>, ReplicationError> {
        if !self.replicates(collection) {
            return Ok(None);
        }
        ReconcileStore::merkle_node(&*self.store, collection, path)
    }

    fn heads(&self, collection: &str, id: &str) -> Result<Vec<ContentId>, ReplicationError> {
        if !self.replicates(collection) {
            return Ok(Vec::new());
        }
        ReconcileStore::heads(&*self.store, collection, id)
    }

    fn version_bytes(&self, cid: &ContentId) -> Result<Option<Vec<u8>>, ReplicationError> {
        let b = ReconcileStore::version_bytes(&*self.store, cid)?;
        Ok(
            b.filter(|b| {
                Self::document_of(b).is_some_and(|(c, id)| self.document_visible(&c, &id))
            }),
        )
    }

    fn version_parents(&self, cid: &ContentId) -> Result<Option<Vec<ContentId>>, ReplicationError> {
        ReconcileStore::version_parents(&*self.store, cid)
    }

    fn apply_version(&self, bytes: &[u8]) -> Result<ApplyResult, ReplicationError> {
        match Self::document_of(bytes) {
            Some((c, id)) if self.replicates(&c) => {
                // The heads before the merge tell whether it was concurrent.
                let before = match &self.relation {
                    Some(_) => Some(ReconcileStore::heads(&*self.store, &c, &id)?),
                    None => None,
                };
                let result = ReconcileStore::apply_version(&*self.store, bytes)?;
                if result == ApplyResult::Applied
                    && let Some(r) = &self.relation
                {
                    self.note_received(r.peer, bytes, c, id, before.unwrap_or_default());
                    record_in_stream(&self.stream, bytes, Source::Remote(r.peer));
                    let mut t = lock(&self.taken_in);
                    if t.versions.len() < MAX_TAKEN_IN {
                        t.versions
                            .push_back((crate::codec::cid_of_bytes(bytes), r.peer));
                    } else {
                        t.overflowed = true;
                    }
                }
                Ok(result)
            }
            Some((c, _)) => Ok(ApplyResult::Invalid(format!(
                "collection {c:?} is local to this node or outside the sender's reach"
            ))),
            None => Ok(ApplyResult::Invalid("not a version node".into())),
        }
    }
}

impl<B: Backend> ReplicatedView<B> {
    /// Records that version `bytes` of `collection`/`id` was merged from
    /// `peer`; `heads_before` are the document's heads before the merge.
    fn note_received(
        &self,
        peer: PeerId,
        bytes: &[u8],
        collection: String,
        id: String,
        mut heads_before: Vec<ContentId>,
    ) {
        let parents = ecomesh_wire::decode::<crate::VersionNode>(bytes)
            .map(|v| v.parents)
            .unwrap_or_default();
        heads_before.sort();
        let concurrent = !heads_before.is_empty() && parents != heads_before;
        lock(&self.activity).push(SyncActivity::Received {
            peer,
            version: crate::codec::cid_of_bytes(bytes),
            collection,
            id,
            concurrent,
        });
    }
}

/// Positions version `bytes` (already in the store) in the node's stream.
/// A failure is logged: the stream only speeds up catching up (delta sync),
/// and anti-entropy still finds whatever it misses.
fn record_in_stream(stream: &SharedStream, bytes: &[u8], source: Source) {
    let mut guard = lock(stream);
    let Some(stream) = guard.as_mut() else {
        return;
    };
    let Ok(node) = ecomesh_wire::decode::<crate::VersionNode>(bytes) else {
        return;
    };
    let cid = crate::codec::cid_of_bytes(bytes);
    if let Err(e) = stream.ingest(cid, node.parents, source) {
        tracing::error!(error = %e, "stream: version not positioned");
    }
}

/// Largest fetch request accepted, in bytes.
const MAX_FETCH_REQUEST: usize = 64 << 10;

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
    pub trust: Arc<dyn Fn(&PeerId) -> Trust + Send + Sync>,
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
    /// Versions merged from peers' delta pages.
    pub delta_versions_merged: u64,
}

/// A one-shot slot a `get` waits on.
type Slot = Arc<Mutex<(Option<Result<Option<Document>, Error>>, Option<Waker>)>>;

struct Fetch {
    collection: String,
    id: String,
    deadline_ms: Option<u64>,
    asked: usize,
    answered: usize,
    slot: Slot,
}

/// One anti-entropy session with a peer, with the envelope state that keeps
/// its messages in order: the mesh may lose, duplicate, reorder or (after a
/// reconnection) replay messages, while a session needs each protocol message
/// once and in order.
struct AeSession<B: Backend> {
    session: Session<Arc<ReplicatedView<B>>>,
    sid: u64,
    initiator: bool,
    next_out: u64,
    next_in: u64,
    parts: BTreeMap<u64, Vec<Vec<u8>>>,
    parts_bytes: usize,
    last_activity_ms: u64,
    applied_reported: u64,
}

impl<B: Backend> AeSession<B> {
    fn active(&self) -> bool {
        !self.session.is_done()
    }
}

/// The envelope of one part of one anti-entropy protocol message.
struct Envelope {
    sid: u64,
    seq: u64,
    part: u64,
    parts: u64,
    frames: Vec<Vec<u8>>,
}

fn int_of(m: &Map, k: &str) -> Option<u64> {
    match m.get(k) {
        Some(Value::Integer(i)) => u64::try_from(*i).ok(),
        _ => None,
    }
}

fn encode_envelope(e: &Envelope) -> Vec<u8> {
    let int = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    let mut m = Map::new();
    m.insert("s".into(), int(e.sid));
    m.insert("n".into(), int(e.seq));
    m.insert("k".into(), int(e.part));
    m.insert("t".into(), int(e.parts));
    m.insert(
        "f".into(),
        Value::Array(e.frames.iter().cloned().map(Value::Bytes).collect()),
    );
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

/// The DAG-CBOR map of a protocol message of at most `max_len` bytes of
/// content (and `MAX_FETCH_REQUEST` of framing), or `None`.
fn decode_map(bytes: &[u8], max_len: usize) -> Option<Map> {
    if bytes.len() > max_len.saturating_add(MAX_FETCH_REQUEST) {
        return None;
    }
    let limits = Limits {
        max_depth: 4,
        max_len: max_len as u64,
    };
    match ecomesh_wire::from_dag_cbor_with(bytes, &limits) {
        Ok(Value::Map(m)) => Some(m),
        _ => None,
    }
}

/// The byte strings of the array under `key`, at most `max` of them.
fn bytes_list(m: &Map, key: &str, max: usize) -> Option<Vec<Vec<u8>>> {
    let Some(Value::Array(items)) = m.get(key) else {
        return None;
    };
    if items.len() > max {
        return None;
    }
    items
        .iter()
        .map(|v| match v {
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

fn decode_envelope(bytes: &[u8]) -> Option<Envelope> {
    let m = decode_map(bytes, MAX_PART_BYTES)?;
    let frames = bytes_list(&m, "f", usize::MAX)?;
    let e = Envelope {
        sid: int_of(&m, "s")?,
        seq: int_of(&m, "n")?,
        part: int_of(&m, "k")?,
        parts: int_of(&m, "t")?,
        frames,
    };
    (e.parts >= 1 && e.part < e.parts && e.parts <= MAX_PARTS).then_some(e)
}

/// Largest envelope payload (frames of one part), in bytes: below the wired
/// transport's 16 MiB message limit with room for the mesh's own fields.
const MAX_PART_BYTES: usize = 8 << 20;
/// Most parts one protocol message may be split into.
const MAX_PARTS: u64 = 64;

/// A message the driver will send; `seq` names the sync-queue item a push serves.
struct Outgoing {
    peer: PeerId,
    ty: &'static str,
    payload: Vec<u8>,
    seq: Option<u64>,
}

/// Most pushes remembered while waiting for their ACK.
const MAX_PUSH_ACKS: usize = 65_536;

struct Driver<B: Backend> {
    sessions: BTreeMap<PeerId, AeSession<B>>,
    next_sid: u64,
    now_ms: u64,
    outbox: VecDeque<Outgoing>,
    /// Pushes awaiting their mesh ACK: message id -> (queue seq, peer).
    push_acks: BTreeMap<MessageId, (u64, PeerId)>,
    fetches: BTreeMap<u64, Fetch>,
    next_fetch: u64,
    last_sync: BTreeMap<PeerId, u64>,
    /// Delta requests awaiting their page: peer -> when asked.
    since_asked: BTreeMap<PeerId, u64>,
    stats: P2PStats,
    /// Peers' clock offsets, from the send times of their messages.
    clocks: ClockSkew,
}

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

fn fill(slot: &Slot, value: Result<Option<Document>, Error>) {
    let waker = {
        let mut s = lock(slot);
        if s.0.is_none() {
            s.0 = Some(value);
        }
        s.1.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

struct Wait(Slot);

impl Future for Wait {
    type Output = Result<Option<Document>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.0);
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn encode_fetch(req: u64, collection: &str, id: &str) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(
        "r".into(),
        Value::Integer(i64::try_from(req).unwrap_or(i64::MAX)),
    );
    m.insert("c".into(), Value::Text(collection.to_owned()));
    m.insert("i".into(), Value::Text(id.to_owned()));
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

fn decode_fetch(bytes: &[u8]) -> Option<(i64, String, String)> {
    if bytes.len() > MAX_FETCH_REQUEST {
        return None;
    }
    let limits = Limits {
        max_depth: 4,
        max_len: MAX_FETCH_REQUEST as u64,
    };
    let Ok(Value::Map(m)) = ecomesh_wire::from_dag_cbor_with(bytes, &limits) else {
        return None;
    };
    match (m.get("r"), m.get("c"), m.get("i")) {
        (Some(Value::Integer(r)), Some(Value::Text(c)), Some(Value::Text(i)))
            if !c.is_empty() && !i.is_empty() =>
        {
            Some((*r, c.clone(), i.clone()))
        }
        _ => None,
    }
}

fn encode_fetched(req: i64, versions: Vec<Vec<u8>>) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("r".into(), Value::Integer(req));
    m.insert(
        "v".into(),
        Value::Array(versions.into_iter().map(Value::Bytes).collect()),
    );
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

fn decode_fetched(bytes: &[u8], max: usize) -> Option<(u64, Vec<Vec<u8>>)> {
    let m = decode_map(bytes, max)?;
    Some((int_of(&m, "r")?, bytes_list(&m, "v", usize::MAX)?))
}

/// A page of a peer's stream as it travels.
struct DeltaPage {
    /// The position to ask from next time.
    next: Position,
    /// True when more entries follow `next`.
    more: bool,
    /// Version node bytes, in stream order.
    versions: Vec<Vec<u8>>,
}

fn encode_since(since: Position) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(
        "p".into(),
        Value::Integer(i64::try_from(since).unwrap_or(i64::MAX)),
    );
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

fn decode_since(bytes: &[u8]) -> Option<Position> {
    if bytes.len() > 64 {
        return None;
    }
    let limits = Limits {
        max_depth: 2,
        max_len: 64,
    };
    match ecomesh_wire::from_dag_cbor_with(bytes, &limits) {
        Ok(Value::Map(m)) => int_of(&m, "p"),
        _ => None,
    }
}

fn encode_delta(page: &DeltaPage) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(
        "n".into(),
        Value::Integer(i64::try_from(page.next).unwrap_or(i64::MAX)),
    );
    m.insert("m".into(), Value::Bool(page.more));
    m.insert(
        "v".into(),
        Value::Array(page.versions.iter().cloned().map(Value::Bytes).collect()),
    );
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

fn decode_delta(bytes: &[u8], max: usize) -> Option<DeltaPage> {
    let m = decode_map(bytes, max)?;
    let more = match m.get("m") {
        Some(Value::Bool(b)) => *b,
        _ => return None,
    };
    Some(DeltaPage {
        next: int_of(&m, "n")?,
        more,
        versions: bytes_list(&m, "v", MAX_DELTA)?,
    })
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
            relation: None,
            stream: stream.clone(),
            taken_in: Arc::default(),
            activity: Arc::default(),
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
    /// (and at most [`MAX_DELTA`]); an empty page without a stream.
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

    /// The store as `peer` may see it.
    fn view_for(&self, peer: PeerId) -> Arc<ReplicatedView<B>> {
        Arc::new(ReplicatedView {
            store: self.store.clone(),
            local_prefix: self.config.local_prefix.clone(),
            reach: self.view.reach.clone(),
            relation: Some(Relation::new(peer, (self.config.trust)(&peer))),
            stream: self.stream.clone(),
            taken_in: self.view.taken_in.clone(),
            activity: self.view.activity.clone(),
        })
    }

    fn start_session(&self, d: &mut Driver<B>, peer: PeerId) {
        let now_ms = d.now_ms;
        let mut session = Session::new(self.view_for(peer), peer, self.config.antientropy.clone());
        match session.start() {
            Ok(frames) => {
                d.stats.sessions_started += 1;
                lock(&self.view.activity).push(SyncActivity::SessionStarted { peer });
                // Session ids start at a random point, so a restarted node's
                // new sessions are not mistaken for its old ones.
                if d.next_sid == 0 {
                    let mut r = [0u8; 16];
                    self.fill_random(&mut r);
                    let [a, b, c, e, f, g, h, i, ..] = r;
                    d.next_sid = u64::from_le_bytes([a, b, c, e, f, g, h, i]) >> 1 | 1;
                }
                let sid = d.next_sid;
                d.next_sid = d.next_sid.wrapping_add(1).max(1);
                let mut ae = AeSession {
                    session,
                    sid,
                    initiator: true,
                    next_out: 0,
                    next_in: 1,
                    parts: BTreeMap::new(),
                    parts_bytes: 0,
                    last_activity_ms: now_ms,
                    applied_reported: 0,
                };
                Self::send_protocol_message(d, peer, &mut ae, frames);
                d.sessions.insert(peer, ae);
            }
            Err(e) => tracing::warn!(%peer, error = %e, "anti-entropy not started"),
        }
    }

    /// Queues one protocol message (its frames) in as few envelopes as fit.
    fn send_protocol_message(
        d: &mut Driver<B>,
        peer: PeerId,
        ae: &mut AeSession<B>,
        frames: Vec<Vec<u8>>,
    ) {
        let mut parts: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut size = 0usize;
        for f in frames {
            if size + f.len() > MAX_PART_BYTES && !parts.last().is_some_and(Vec::is_empty) {
                parts.push(Vec::new());
                size = 0;
            }
            size += f.len();
            if let Some(last) = parts.last_mut() {
                last.push(f);
            }
        }
        let total = parts.len() as u64;
        for (k, frames) in parts.into_iter().enumerate() {
            let e = Envelope {
                sid: ae.sid,
                seq: ae.next_out,
                part: k as u64,
                parts: total,
                frames,
            };
            d.outbox.push_back(Outgoing {
                peer,
                ty: AE_TYPE,
                payload: encode_envelope(&e),
                seq: None,
            });
        }
        ae.next_out += 2;
    }

    /// Handles one anti-entropy envelope from `from`.
    fn on_envelope(&self, d: &mut Driver<B>, from: PeerId, payload: &[u8], now_ms: u64) {
        let Some(env) = decode_envelope(payload) else {
            self.charge(d, from, &"malformed anti-entropy envelope");
            return;
        };
        let me = self.store.peer_id();
        let current = d
            .sessions
            .get(&from)
            .map(|s| (s.sid, s.initiator, s.active()));
        match current {
            Some((sid, _, _)) if sid == env.sid => {}
            _ if env.seq != 0 => return, // a stale message of an older session
            // A hello of a new session from the peer. If this side opened one
            // too, the one opened by the smaller id wins.
            Some((_, true, true)) if me < from => return,
            _ => {
                lock(&self.view.activity).push(SyncActivity::SessionStarted { peer: from });
                d.sessions.insert(
                    from,
                    AeSession {
                        session: Session::new(
                            self.view_for(from),
                            from,
                            self.config.antientropy.clone(),
                        ),
                        sid: env.sid,
                        initiator: false,
                        next_out: 1,
                        next_in: 0,
                        parts: BTreeMap::new(),
                        parts_bytes: 0,
                        last_activity_ms: now_ms,
                        applied_reported: 0,
                    },
                );
            }
        }
        let Some(mut ae) = d.sessions.remove(&from) else {
            return;
        };
        if env.seq != ae.next_in || ae.parts.contains_key(&env.part) {
            d.sessions.insert(from, ae); // a duplicate or an old message
            return;
        }
        ae.last_activity_ms = now_ms;
        ae.parts_bytes += env.frames.iter().map(Vec::len).sum::<usize>();
        if ae.parts_bytes > self.config.antientropy.max_message_bytes {
            self.charge(d, from, &"anti-entropy message too large");
            return;
        }
        ae.parts.insert(env.part, env.frames);
        if (ae.parts.len() as u64) < env.parts {
            d.sessions.insert(from, ae);
            return;
        }
        let frames: Vec<Vec<u8>> = std::mem::take(&mut ae.parts)
            .into_values()
            .flatten()
            .collect();
        ae.parts_bytes = 0;
        ae.next_in += 2;
        let mut reply = Vec::new();
        for f in frames {
            match ae.session.handle(&f) {
                Ok(out) => {
                    reply.extend(out.frames);
                    for ev in out.events {
                        match ev {
                            AeEvent::Rejected { peer, cid, reason } => {
                                self.charge(d, peer, &format!("version {cid:?}: {reason}"));
                            }
                            other => tracing::debug!(?other, "anti-entropy event"),
                        }
                    }
                }
                Err(e) => {
                    match e {
                        ReplicationError::Storage(_) => {
                            tracing::error!(%from, error = %e, "anti-entropy: local storage failure");
                        }
                        e => self.charge(d, from, &e),
                    }
                    return;
                }
            }
        }
        let applied = ae.session.stats().versions_applied;
        d.stats.versions_merged += applied - ae.applied_reported;
        ae.applied_reported = applied;
        if !reply.is_empty() {
            Self::send_protocol_message(d, from, &mut ae, reply);
        }
        if !ae.active() {
            d.stats.sessions_done += 1;
            lock(&self.view.activity).push(SyncActivity::SessionEnded { peer: from });
        }
        d.sessions.insert(from, ae);
    }

    fn charge(&self, d: &mut Driver<B>, peer: PeerId, why: &dyn std::fmt::Display) {
        tracing::warn!(%peer, reason = %why, "peer sent invalid replication data");
        d.stats.rejected += 1;
        self.mesh.observe(peer, Observation::Integrity(false));
    }

    /// Records a new local version in the sync queue (when there is one) and
    /// pushes it to its partners.
    fn new_version(&self, d: &mut Driver<B>, version: Option<&ContentId>, tombstone: bool) {
        let Some(cid) = version else { return };
        if let Ok(Some(bytes)) = self.store.version_bytes(cid) {
            record_in_stream(&self.stream, &bytes, Source::Local);
        }
        let seq = self.enqueue(cid, tombstone);
        self.push_version(d, cid, seq, &BTreeSet::new(), None, &BTreeSet::new());
    }

    /// Pushes on the versions taken in from peers since the last call: each
    /// to its partners among the connected peers, except the peer it came
    /// from and its author, which hold it. A version is taken in (newly
    /// stored) once, so this node pushes it on once, to each partner at most
    /// once. When more arrived than could be remembered (a long catch-up),
    /// this node reconciles with its other peers instead.
    fn relay_taken_in(&self, d: &mut Driver<B>) {
        let (versions, overflowed) = {
            let mut t = lock(&self.view.taken_in);
            (
                std::mem::take(&mut t.versions),
                std::mem::take(&mut t.overflowed),
            )
        };
        for (cid, from) in versions {
            let mut skip = BTreeSet::from([from]);
            if let Ok(Some(bytes)) = self.store.version_bytes(&cid)
                && let Ok(node) = ecomesh_wire::decode::<crate::VersionNode>(&bytes)
            {
                skip.insert(node.timestamp.peer);
            }
            let sent = self.push_version(d, &cid, None, &BTreeSet::new(), None, &skip);
            d.stats.versions_relayed += sent as u64;
        }
        if overflowed {
            tracing::debug!(
                "more versions taken in than remembered; reconciling with every peer instead"
            );
            let peers: Vec<PeerId> = self.mesh.peers().iter().map(|p| p.peer_id).collect();
            for p in peers {
                if !d.sessions.get(&p).is_some_and(AeSession::active) {
                    self.start_session(d, p);
                }
            }
        }
    }

    fn enqueue(&self, cid: &ContentId, tombstone: bool) -> Option<u64> {
        let queue = self.queue.as_ref()?;
        let bytes = self.view.version_bytes(cid).ok().flatten()?;
        let (collection, id) = ReplicatedView::<B>::document_of(&bytes)?;
        let factor = self.config.replication.factor_for(&collection);
        let item = if tombstone {
            SyncItem::Tombstone {
                collection,
                id,
                version: cid.clone(),
                factor,
            }
        } else {
            SyncItem::Replicate {
                collection,
                id,
                version: cid.clone(),
                factor,
            }
        };
        match queue.enqueue(item) {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::error!(error = %e, "sync queue: enqueue failed");
                None
            }
        }
    }

    /// Pushes version `cid` to partners that have not acknowledged it yet
    /// (only to `only` when given), never to the peers in `skip` (known to
    /// hold it already). Returns how many pushes were queued.
    fn push_version(
        &self,
        d: &mut Driver<B>,
        cid: &ContentId,
        seq: Option<u64>,
        acked: &BTreeSet<PeerId>,
        only: Option<PeerId>,
        skip: &BTreeSet<PeerId>,
    ) -> usize {
        let bytes = match self.view.version_bytes(cid) {
            Ok(Some(b)) => b,
            Ok(None) => return 0, // gone, or a local collection
            Err(e) => {
                tracing::error!(error = %e, "version written but unreadable");
                return 0;
            }
        };
        let Some((collection, id)) = ReplicatedView::<B>::document_of(&bytes) else {
            return 0;
        };
        // Partners by the replication policy (proximity, diversity, reputation,
        // pins), among the connected peers the document's reach admits.
        let candidates: Vec<Candidate> = self
            .mesh
            .peers()
            .iter()
            .filter(|p| {
                !acked.contains(&p.peer_id)
                    && !skip.contains(&p.peer_id)
                    && only.is_none_or(|o| o == p.peer_id)
            })
            .filter(|p| self.view_for(p.peer_id).document_visible(&collection, &id))
            .map(Candidate::from_peer_info)
            .collect();
        let origin = Origin {
            peer: self.store.peer_id(),
            network: None,
        };
        let factor = self.config.replication.factor_for(&collection);
        let missing = (factor as usize).saturating_sub(acked.len());
        if missing == 0 {
            return 0;
        }
        let chosen = select_partners(
            u32::try_from(missing).unwrap_or(factor),
            &collection,
            Some(&id),
            &origin,
            &candidates,
            &self.config.pins,
        );
        let sent = chosen.partners.len();
        let mut activity = lock(&self.view.activity);
        for p in chosen.partners {
            activity.push(SyncActivity::Sent {
                peer: p,
                version: cid.clone(),
                collection: collection.clone(),
                id: id.clone(),
            });
            d.stats.versions_pushed += 1;
            d.outbox.push_back(Outgoing {
                peer: p,
                ty: PUSH_TYPE,
                payload: bytes.clone(),
                seq,
            });
        }
        sent
    }

    /// Asks `peer` for its changes after the position this node last read,
    /// unless a request is still awaiting its page.
    fn ask_since(&self, d: &mut Driver<B>, peer: PeerId) {
        let Some(since) = lock(&self.stream)
            .as_ref()
            .map(|s| s.index().peer_position(&peer))
        else {
            return;
        };
        if d.since_asked
            .get(&peer)
            .is_some_and(|t| d.now_ms.saturating_sub(*t) < self.config.session_timeout_ms)
        {
            return;
        }
        d.since_asked.insert(peer, d.now_ms);
        d.outbox.push_back(Outgoing {
            peer,
            ty: SINCE_TYPE,
            payload: encode_since(since),
            seq: None,
        });
    }

    /// Answers a peer's "changes since": one page of this node's stream,
    /// leaving out what the peer may not see, within `max_fetch_bytes`.
    fn serve_since(&self, d: &mut Driver<B>, from: PeerId, since: Position) {
        let page = self.changes_since(since, MAX_DELTA);
        let view = self.view_for(from);
        let mut versions = Vec::new();
        let mut total = 0usize;
        let mut next = since;
        let mut more = page.more;
        for e in &page.entries {
            match view.version_bytes(&e.id) {
                Ok(Some(b)) => {
                    if total + b.len() > self.config.max_fetch_bytes && !versions.is_empty() {
                        more = true;
                        break;
                    }
                    total += b.len();
                    versions.push(b);
                }
                Ok(None) => {} // not for this peer, or collected since
                Err(e) => {
                    tracing::error!(error = %e, "stream: version unreadable");
                    more = true;
                    break;
                }
            }
            next = e.position;
        }
        d.stats.delta_versions_sent += versions.len() as u64;
        d.outbox.push_back(Outgoing {
            peer: from,
            ty: DELTA_TYPE,
            payload: encode_delta(&DeltaPage {
                next,
                more,
                versions,
            }),
            seq: None,
        });
    }

    /// Merges a page of a peer's stream in order; records how far it was read
    /// only when every version merged, and asks for the next page.
    fn on_delta(&self, d: &mut Driver<B>, from: PeerId, page: DeltaPage) {
        if d.since_asked.remove(&from).is_none() {
            return; // not asked for (or a duplicate): ignored
        }
        let mut complete = true;
        for v in &page.versions {
            let before = d.stats.versions_merged;
            if !self.merge(d, from, v) {
                complete = false;
                break;
            }
            d.stats.delta_versions_merged += d.stats.versions_merged - before;
        }
        if !complete {
            return; // anti-entropy (started by the gap) fills it in
        }
        let advanced = {
            let mut guard = lock(&self.stream);
            let Some(stream) = guard.as_mut() else {
                return;
            };
            let known = stream.index().peer_position(&from);
            match stream.observe_peer(from, page.next) {
                Ok(now) => now > known,
                Err(e) => {
                    tracing::error!(error = %e, "stream: peer position not recorded");
                    false
                }
            }
        };
        if page.more && advanced {
            self.ask_since(d, from);
        }
    }

    /// Merges a version from `from`; true when the store now has it.
    fn merge(&self, d: &mut Driver<B>, from: PeerId, bytes: &[u8]) -> bool {
        match self.view_for(from).apply_version(bytes) {
            Ok(ApplyResult::Applied) => {
                d.stats.versions_merged += 1;
                true
            }
            Ok(ApplyResult::AlreadyPresent) => true,
            Ok(ApplyResult::MissingParents(_)) => {
                // A gap: reconcile to get the history.
                if !d.sessions.get(&from).is_some_and(AeSession::active) {
                    self.start_session(d, from);
                }
                false
            }
            Ok(ApplyResult::Invalid(reason)) => {
                self.charge(d, from, &reason);
                false
            }
            Ok(other) => {
                tracing::debug!(%from, ?other, "version not merged");
                false
            }
            Err(e) => {
                tracing::error!(%from, error = %e, "could not merge a version");
                false
            }
        }
    }

    fn on_message(&self, d: &mut Driver<B>, message: NetworkMessage, now_ms: u64) {
        let from = message.sender;
        match message.message_type.as_str() {
            AE_TYPE => self.on_envelope(d, from, &message.payload, now_ms),
            PUSH_TYPE => {
                self.merge(d, from, &message.payload);
            }
            FETCH_TYPE => match decode_fetch(&message.payload) {
                Some((req, c, i)) => {
                    let mut versions = Vec::new();
                    let mut total = 0usize;
                    if let Ok(history) = self.store.history(&c, &i) {
                        for v in history {
                            let Ok(Some(b)) = self.view_for(from).version_bytes(&v.cid) else {
                                continue;
                            };
                            total += b.len();
                            if total > self.config.max_fetch_bytes {
                                break;
                            }
                            versions.push(b);
                        }
                    }
                    d.outbox.push_back(Outgoing {
                        peer: from,
                        ty: FETCHED_TYPE,
                        payload: encode_fetched(req, versions),
                        seq: None,
                    });
                }
                None => self.charge(d, from, &"malformed fetch request"),
            },
            SINCE_TYPE => match decode_since(&message.payload) {
                Some(since) => self.serve_since(d, from, since),
                None => self.charge(d, from, &"malformed stream request"),
            },
            DELTA_TYPE => match decode_delta(&message.payload, self.config.max_fetch_bytes) {
                Some(delta) => self.on_delta(d, from, delta),
                None => self.charge(d, from, &"malformed stream page"),
            },
            FETCHED_TYPE => match decode_fetched(&message.payload, self.config.max_fetch_bytes) {
                Some((req, versions)) => {
                    for v in versions {
                        if !self.merge(d, from, &v) {
                            break;
                        }
                    }
                    let finished = d.fetches.get_mut(&req).is_some_and(|f| {
                        f.answered += 1;
                        f.answered >= f.asked
                            || self
                                .store
                                .get(&f.collection, &f.id)
                                .ok()
                                .flatten()
                                .is_some()
                    });
                    if finished && let Some(f) = d.fetches.remove(&req) {
                        fill(
                            &f.slot,
                            self.store.get(&f.collection, &f.id).map_err(Into::into),
                        );
                    }
                }
                None => self.charge(d, from, &"malformed fetch answer"),
            },
            _ => {}
        }
    }

    /// Handles queued mesh events (anti-entropy frames, pushes, fetches,
    /// connections), expires fetches, starts due resyncs, and sends what that
    /// produced. Returns how many events were handled.
    pub async fn process(&self, now_ms: u64) -> usize {
        let events: Vec<MeshEvent> = lock(&self.inbox).0.drain(..).collect();
        let handled = events.len();
        let me = self.store.peer_id();
        let outbox: Vec<Outgoing> = {
            let mut d = lock(&self.driver);
            d.now_ms = now_ms;
            // A session that stopped hearing from its peer (a message was lost)
            // is dropped; the initiator opens a new one at once.
            let stalled: Vec<(PeerId, bool)> = d
                .sessions
                .iter()
                .filter(|(_, s)| {
                    s.active()
                        && now_ms.saturating_sub(s.last_activity_ms)
                            >= self.config.session_timeout_ms
                })
                .map(|(p, s)| (*p, s.initiator))
                .collect();
            for (p, initiator) in stalled {
                d.sessions.remove(&p);
                if initiator && d.last_sync.contains_key(&p) {
                    tracing::debug!(peer = %p, "anti-entropy session stalled; restarting");
                    self.start_session(&mut d, p);
                }
            }
            for ev in events {
                match ev {
                    MeshEvent::PeerDiscovered(info) => {
                        let p = info.peer_id;
                        d.last_sync.insert(p, now_ms);
                        self.retry_pending(&mut d, p);
                        self.ask_since(&mut d, p);
                        if me < p {
                            self.start_session(&mut d, p);
                        }
                    }
                    MeshEvent::PeerLost(p) => {
                        d.sessions.remove(&p);
                        d.last_sync.remove(&p);
                        d.since_asked.remove(&p);
                    }
                    MeshEvent::Message { message, from, .. } => {
                        // Straight from its sender: its send time tells its clock.
                        if message.hop_count == 0 && message.sender == from {
                            d.clocks.observe(from, message.timestamp_ms, now_ms);
                        }
                        self.on_message(&mut d, message, now_ms);
                    }
                    MeshEvent::Acked { id, by } => {
                        if let Some((seq, peer)) = d.push_acks.remove(&id)
                            && peer == by
                            && let Some(q) = &self.queue
                        {
                            match q.ack(seq, by) {
                                Ok(outcome) => {
                                    tracing::debug!(seq, %by, ?outcome, "push acknowledged")
                                }
                                Err(e) => tracing::error!(error = %e, "sync queue: ack failed"),
                            }
                        }
                    }
                    _ => {}
                }
            }
            let due: Vec<PeerId> = d
                .last_sync
                .iter()
                .filter(|(p, t)| {
                    me < **p && now_ms.saturating_sub(**t) >= self.config.resync_interval_ms
                })
                .map(|(p, _)| *p)
                .collect();
            for p in due {
                d.last_sync.insert(p, now_ms);
                if !d.sessions.get(&p).is_some_and(AeSession::active) {
                    self.start_session(&mut d, p);
                }
            }
            self.relay_taken_in(&mut d);
            let mut expired = Vec::new();
            for (id, f) in &mut d.fetches {
                match f.deadline_ms {
                    None => {
                        f.deadline_ms = Some(now_ms.saturating_add(self.config.fetch_timeout_ms))
                    }
                    Some(t) if now_ms >= t => expired.push(*id),
                    Some(_) => {}
                }
            }
            for id in expired {
                if let Some(f) = d.fetches.remove(&id) {
                    fill(
                        &f.slot,
                        self.store.get(&f.collection, &f.id).map_err(Into::into),
                    );
                }
            }
            d.outbox.drain(..).collect()
        };
        for o in outbox {
            let sent = self.send(o.peer, o.ty, o.payload, now_ms).await;
            if let (Some(id), Some(seq)) = (sent, o.seq) {
                let mut d = lock(&self.driver);
                if d.push_acks.len() >= MAX_PUSH_ACKS {
                    d.push_acks.pop_first();
                }
                d.push_acks.insert(id, (seq, o.peer));
            }
        }
        handled
    }

    /// Fills `out` from the configured source or the OS; false (logged) when
    /// the OS has no randomness to give.
    fn fill_random(&self, out: &mut [u8; 16]) -> bool {
        let source = lock(&self.random).clone();
        match source {
            Some(f) => {
                f(out);
                true
            }
            None => match getrandom::fill(out) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "no randomness");
                    false
                }
            },
        }
    }

    /// Signs and sends one message; its id when the mesh took it.
    async fn send(
        &self,
        peer: PeerId,
        ty: &str,
        payload: Vec<u8>,
        now_ms: u64,
    ) -> Option<MessageId> {
        let mut random = [0u8; 16];
        if !self.fill_random(&mut random) {
            return None;
        }
        let message = match self
            .mesh
            .new_message(ty, payload, Some(peer), now_ms, random)
        {
            Ok(mut m) => {
                // The TTL is not covered by the signature; a short one keeps
                // stale replication traffic out of store-and-forward buffers.
                m.ttl_secs = self.config.message_ttl_secs;
                m
            }
            Err(e) => {
                tracing::error!(error = %e, "could not sign a replication message");
                return None;
            }
        };
        let id = message.id;
        match self
            .mesh
            .send(peer, message, Priority::Normal, now_ms)
            .await
        {
            Ok(_) => Some(id),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "replication message not sent");
                None
            }
        }
    }

    /// Pushes the queued items `peer` has not acknowledged to it (a page at a time).
    fn retry_pending(&self, d: &mut Driver<B>, peer: PeerId) {
        let Some(q) = &self.queue else { return };
        let page = match q.pending(0, self.config.retry_page) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "sync queue unreadable");
                return;
            }
        };
        for item in page.items {
            let (SyncItem::Replicate { version, .. } | SyncItem::Tombstone { version, .. }) =
                &item.item
            else {
                continue;
            };
            if !item.acked_by.contains(&peer) {
                self.push_version(
                    d,
                    version,
                    Some(item.seq),
                    &item.acked_by,
                    Some(peer),
                    &BTreeSet::new(),
                );
            }
        }
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
        let w = self.store.apply_ops(collection, id, ops)?;
        self.after_write(w.version.as_ref(), false);
        Ok(w)
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
        let w = self.store.restore(collection, id, cid)?;
        let tombstone = self.store.get(collection, id)?.is_none();
        self.after_write(w.version.as_ref(), tombstone);
        Ok(w)
    }

    /// The durable sync queue, when the adapter has one: its items are the
    /// local versions not yet acknowledged by enough partners.
    pub fn queue(&self) -> Option<&SyncQueue> {
        self.queue.as_ref()
    }

    fn after_write(&self, version: Option<&ContentId>, tombstone: bool) {
        let mut d = lock(&self.driver);
        self.new_version(&mut d, version, tombstone);
        drop(d);
        self.wake();
    }

    async fn get_or_fetch(&self, collection: &str, id: &str) -> Result<Option<Document>, Error> {
        if let Some(doc) = self.store.get(collection, id)? {
            return Ok(Some(doc));
        }
        if !self.view.replicates(collection) {
            return Ok(None);
        }
        let peers: Vec<PeerId> = {
            let mut ps: Vec<(f64, PeerId)> = self
                .mesh
                .peers()
                .into_iter()
                .map(|p| (p.reputation, p.peer_id))
                .collect();
            ps.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            ps.into_iter()
                .take(self.config.fetch_peers)
                .map(|(_, p)| p)
                .collect()
        };
        if peers.is_empty() {
            return Ok(None);
        }
        let slot: Slot = Arc::default();
        {
            let mut d = lock(&self.driver);
            let req = d.next_fetch;
            d.next_fetch += 1;
            for p in &peers {
                d.outbox.push_back(Outgoing {
                    peer: *p,
                    ty: FETCH_TYPE,
                    payload: encode_fetch(req, collection, id),
                    seq: None,
                });
            }
            d.fetches.insert(
                req,
                Fetch {
                    collection: collection.to_owned(),
                    id: id.to_owned(),
                    deadline_ms: None,
                    asked: peers.len(),
                    answered: 0,
                    slot: slot.clone(),
                },
            );
        }
        self.wake();
        Wait(slot).await
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
            let w = self.store.set(collection, id, fields, options)?;
            self.after_write(w.version.as_ref(), false);
            Ok(w)
        })
    }

    fn update<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move {
            let w = self.store.update(collection, id, fields)?;
            self.after_write(w.version.as_ref(), false);
            Ok(w)
        })
    }

    fn delete<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move {
            let w = self.store.delete(collection, id)?;
            self.after_write(w.version.as_ref(), true);
            Ok(w)
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
            let r = self.store.batch(operations)?;
            {
                let mut d = lock(&self.driver);
                for w in &r.results {
                    self.new_version(&mut d, w.version.as_ref(), false);
                }
            }
            self.wake();
            Ok(r)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn prop_protocol_messages_round_trip(
            sid in any::<u64>(), seq in any::<u64>(), parts in 1_u64..=MAX_PARTS,
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
            since in 0_u64..i64::MAX as u64, more in any::<bool>(),
        ) {
            let e = Envelope { sid: sid >> 1, seq: seq >> 1, part: parts - 1, parts, frames: frames.clone() };
            let d = decode_envelope(&encode_envelope(&e)).unwrap();
            prop_assert_eq!((d.sid, d.seq, d.part, d.parts, d.frames), (e.sid, e.seq, e.part, e.parts, frames.clone()));
            prop_assert_eq!(decode_since(&encode_since(since)), Some(since));
            let page = DeltaPage { next: since, more, versions: frames.clone() };
            let got = decode_delta(&encode_delta(&page), 1 << 20).unwrap();
            prop_assert_eq!((got.next, got.more, got.versions), (since, more, frames.clone()));
            let (r, vs) = decode_fetched(&encode_fetched(since as i64, frames.clone()), 1 << 20).unwrap();
            prop_assert_eq!((r, vs), (since, frames));
        }

        /// Whatever a peer sends, the decoders answer without panicking.
        #[test]
        fn prop_protocol_decoders_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_envelope(&bytes);
            let _ = decode_since(&bytes);
            let _ = decode_delta(&bytes, 1 << 10);
            let _ = decode_fetch(&bytes);
            let _ = decode_fetched(&bytes, 1 << 10);
        }
    }

    #[test]
    fn malformed_and_oversized_pages_are_refused() {
        let page = DeltaPage {
            next: 3,
            more: false,
            versions: vec![vec![0; 100]],
        };
        let bytes = encode_delta(&page);
        assert!(decode_delta(&bytes, 1 << 10).is_some());
        assert!(decode_delta(&bytes, 10).is_none(), "over the size limit");
        let too_many = DeltaPage {
            next: 3,
            more: false,
            versions: vec![Vec::new(); MAX_DELTA + 1],
        };
        assert!(decode_delta(&encode_delta(&too_many), 1 << 20).is_none());
        assert!(decode_since(&encode_fetch(1, "c", "i")).is_none());
        assert!(decode_since(&[0xff; 100]).is_none());
    }
}
