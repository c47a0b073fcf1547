//! The store engine: one implementation of documents, versions, indexes, the
//! Merkle index and subscriptions over any [`Backend`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ecomesh_crdt::{DocumentCrdt, FieldOp, Hlc, Merge, PhysicalClock, VersionDag};
use ecomesh_identity::Identity;
use ecomesh_types::{
    BatchOperation, BatchResult, ContentId, Document, Error as TypesError, FilterOp, HlcTimestamp,
    Listener, Map, PeerId, Query, QueryPage, SetOptions, Subscription, Value, WriteResult,
    validate_key,
};

use crate::StoreError;
use crate::codec;
use crate::keyring::Keyring;
use crate::keys::{self, ARRAY_INDEX, COLLECTION, DOC, HELD, INDEX, META, TRIE, VERSION};
use crate::kv::{Backend, MemoryBackend, SledBackend, prefix_end};
use crate::records::{StateRecord, VersionNode};
use crate::subs::{Event, Subscriptions, Target};
use crate::trie::{self, ChildRef, Entry};
use crate::txn::{Deferred, Txn};

mod damage;
mod integrity;
mod read;
mod recovery;
pub use damage::{MAX_NAMED_DAMAGED, StoreDamage, StoreHealth};
pub use integrity::IntegrityReport;

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

const META_FORMAT: &[u8] = b"format";
const META_HLC: &[u8] = b"hlc";
/// Present while the backend's Merkle nodes and collection roots may lag
/// behind the state records (see [`StoreConfig::deferred_merkle_writes`]).
const META_MERKLE_STALE: &[u8] = b"merkle-stale";

/// How far ahead of the last issued timestamp the persisted clock bound is
/// set: the clock is written at most once per this many milliseconds of
/// writing, and a reopened store issues timestamps after the bound.
const HLC_MARGIN_MS: u64 = 1_000;

/// When the store makes writes durable.
///
/// What a returned `Ok` promises:
/// - [`EveryWrite`](FlushPolicy::EveryWrite): the write was flushed (sled
///   writes its log and calls `fsync`) before `Ok`, so it survives the process
///   being killed (`kill -9`) at any point. sled 0.34's flush is not a proof
///   against power loss or a lying disk; the store promises process-crash
///   durability, not power-loss durability.
/// - [`Interval`](FlushPolicy::Interval): writes are flushed by sled's
///   background thread every interval; a crash may lose the writes of the last
///   interval, never part of a write (batches stay atomic).
/// - [`Manual`](FlushPolicy::Manual): only [`Store::flush`] makes writes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushPolicy {
    /// Flush before every write returns (the default).
    EveryWrite,
    /// Flush in the background every so many milliseconds.
    Interval(u64),
    /// Flush only when asked.
    Manual,
}

/// The wall clock, for stores outside tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Settings of a store.
#[derive(Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Durability of writes.
    pub flush: FlushPolicy,
    /// How far ahead of local time a remote version's timestamp may move the
    /// store's clock. A version further ahead is still merged (and keeps its
    /// own timestamp); it only does not drag the clock, so later local writes
    /// to other documents keep timestamps near local time.
    pub max_drift_ms: u64,
    /// Snapshots a subscription may have pending before the oldest are skipped.
    pub subscription_buffer: usize,
    /// Physical time source of the hybrid logical clock.
    pub clock: Arc<dyn PhysicalClock + Send + Sync>,
    /// Decoded Merkle index nodes kept in memory between writes, so a write
    /// does not read and decode its root-to-leaf path again (0 keeps none).
    /// A node takes about 1.5 KiB; the default 4096 holds every branch of a
    /// collection of a million documents.
    pub trie_cache_nodes: usize,
    /// Merkle index node and collection root writes kept in memory (and read
    /// from there) before they are persisted in one batch; they are also
    /// persisted by [`Store::flush`] and when the store is dropped. The index
    /// is derived from the state records: after a crash lost some of these
    /// writes, the next open rebuilds it. 0 persists them with every write.
    pub deferred_merkle_writes: usize,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("flush", &self.flush)
            .field("max_drift_ms", &self.max_drift_ms)
            .field("subscription_buffer", &self.subscription_buffer)
            .field("trie_cache_nodes", &self.trie_cache_nodes)
            .field("deferred_merkle_writes", &self.deferred_merkle_writes)
            .finish_non_exhaustive()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            flush: FlushPolicy::EveryWrite,
            max_drift_ms: Hlc::DEFAULT_MAX_DRIFT_MS,
            subscription_buffer: 1024,
            clock: Arc::new(SystemClock),
            trie_cache_nodes: 4096,
            deferred_merkle_writes: 4096,
        }
    }
}

impl StoreConfig {
    /// The default settings with another flush policy.
    #[must_use]
    pub fn with_flush(mut self, flush: FlushPolicy) -> Self {
        self.flush = flush;
        self
    }

    /// The default settings with another subscription buffer size.
    #[must_use]
    pub fn with_subscription_buffer(mut self, snapshots: usize) -> Self {
        self.subscription_buffer = snapshots;
        self
    }

    /// The default settings with another Merkle node cache size (see
    /// [`StoreConfig::trie_cache_nodes`]).
    #[must_use]
    pub fn with_trie_cache_nodes(mut self, nodes: usize) -> Self {
        self.trie_cache_nodes = nodes;
        self
    }

    /// The default settings with another bound of deferred Merkle writes (see
    /// [`StoreConfig::deferred_merkle_writes`]).
    #[must_use]
    pub fn with_deferred_merkle_writes(mut self, writes: usize) -> Self {
        self.deferred_merkle_writes = writes;
        self
    }

    /// The default settings with another physical clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn PhysicalClock + Send + Sync>) -> Self {
        self.clock = clock;
        self
    }
}

/// One version as listed by [`Store::history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version's CID.
    pub cid: ContentId,
    /// The versions it follows.
    pub parents: Vec<ContentId>,
    /// When it was written.
    pub timestamp: HlcTimestamp,
    /// Who wrote it.
    pub author: PeerId,
}

/// What [`Store::apply_remote`] did with a version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyOutcome {
    /// The version was new and is now merged.
    Applied {
        /// Its CID.
        cid: ContentId,
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
    },
    /// The store already had this version.
    AlreadyPresent(ContentId),
}

/// Decides which tombstoned documents [`Store::collect_garbage`] may remove.
///
/// Replication implements it (seed 5.2: only when enough replicas confirmed
/// the tombstone elsewhere and nothing pins the document).
pub trait GcPolicy {
    /// True when the tombstoned document may be removed with all its versions.
    fn may_collect(&self, collection: &str, id: &str, deleted_at: HlcTimestamp) -> bool;
}

/// A local write, as [`Store::write_local`] takes it: the operations of
/// [`Store::set`], [`Store::update`], [`Store::delete`], [`Store::apply_ops`],
/// [`Store::restore`] and [`Store::batch`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LocalWrite {
    /// See [`Store::set`].
    Set {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// Its new fields.
        fields: Map,
        /// Replace or merge.
        options: SetOptions,
    },
    /// See [`Store::update`].
    Update {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// The fields to change.
        fields: Map,
    },
    /// See [`Store::delete`].
    Delete {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
    },
    /// See [`Store::apply_ops`].
    Apply {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// The field operations.
        ops: Vec<(String, FieldOp)>,
    },
    /// See [`Store::restore`].
    Restore {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// The version whose content is written again.
        cid: ContentId,
    },
    /// See [`Store::batch`].
    Batch(Vec<BatchOperation>),
}

/// A version node a local write stored (see [`Store::write_local`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct WrittenVersion {
    /// Its CID (of `bytes`).
    pub cid: ContentId,
    /// Its canonical bytes, exactly as stored and hashed.
    pub bytes: Vec<u8>,
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub id: String,
    /// The versions it follows: the document's heads before the write.
    pub parents: Vec<ContentId>,
    /// Its timestamp.
    pub timestamp: HlcTimestamp,
    /// True when the document is deleted after this version.
    pub deleted: bool,
}

impl WrittenVersion {
    /// What the [`StorageAdapter`](ecomesh_types::StorageAdapter) write methods return for it.
    pub fn result(&self) -> WriteResult {
        WriteResult::new(Some(self.cid.clone()), Some(self.timestamp))
    }
}

enum OpKind {
    Set { fields: Map, merge: bool },
    Update(Map),
    Delete,
    Apply(Vec<(String, FieldOp)>),
}

struct Op {
    collection: String,
    id: String,
    kind: OpKind,
}

/// A change a commit made, for subscriptions.
struct Change {
    collection: String,
    id: String,
    before: Option<Map>,
    after: Option<Map>,
}

struct Writer {
    hlc: Hlc,
    /// The clock bound the backend holds: every timestamp issued so far has
    /// a smaller physical time.
    hlc_bound: u64,
    /// Decoded Merkle index nodes as committed (see [`StoreConfig::trie_cache_nodes`]).
    trie: trie::NodeCache,
}

/// The document store: versioned CRDT documents over a [`Backend`].
///
/// Every write (set, update, delete, batch, restore) creates one signed
/// [`VersionNode`] per document, stored by CID, whose parents are the
/// document's previous heads; concurrent versions received with
/// [`apply_remote`](Store::apply_remote) leave several heads, which the next
/// local write joins into one node with several parents. Reads see the merged
/// CRDT state. Writers are serialized; each write commits atomically.
pub struct Store<B: Backend> {
    backend: B,
    identity: Identity,
    config: StoreConfig,
    writer: Mutex<Writer>,
    /// Merkle node and root writes not yet in the backend.
    derived: Mutex<Deferred>,
    subs: Arc<Subscriptions>,
    /// The keys of encrypted collections (see [`Store::keyring`]).
    keyring: Arc<Keyring>,
    /// Whether any sealed version may be held unopened (a `U` record exists):
    /// reads look for them only then.
    held_any: AtomicBool,
}

impl<B: Backend> std::fmt::Debug for Store<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("peer", &self.identity.peer_id())
            .finish_non_exhaustive()
    }
}

/// The store on sled.
pub type SledStore = Store<SledBackend>;
/// The store in memory (same engine; nothing persists).
pub type MemoryStore = Store<MemoryBackend>;

impl SledStore {
    /// Opens (or creates) the store in directory `path`: a damaged database is
    /// moved aside and rebuilt from what still reads, with an error in the
    /// log; [`open_checked`](Self::open_checked) also returns what was lost.
    ///
    /// Errors: [`StoreError::Locked`] when another process has it open,
    /// [`StoreError::UnsupportedFormat`] for a database of another format version.
    pub fn open(path: &Path, identity: Identity, config: StoreConfig) -> Result<Self, StoreError> {
        Self::open_checked(path, identity, config).map(|(store, _)| store)
    }
}

impl MemoryStore {
    /// A new empty in-memory store.
    pub fn in_memory(identity: Identity, config: StoreConfig) -> Result<Self, StoreError> {
        Store::with_backend(MemoryBackend::new(), identity, config)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn corrupt(collection: &str, id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        collection: collection.to_owned(),
        id: id.to_owned(),
        reason: reason.to_string(),
    }
}

fn decode_state(collection: &str, id: &str, bytes: &[u8]) -> Result<StateRecord, StoreError> {
    ecomesh_wire::decode::<StateRecord>(bytes).map_err(|e| corrupt(collection, id, e))
}

fn decode_fields(collection: &str, id: &str, bytes: &[u8]) -> Result<Map, StoreError> {
    match codec::decode(bytes).map_err(|e| corrupt(collection, id, e))? {
        Value::Map(m) => Ok(m),
        _ => Err(corrupt(collection, id, "document record is not a map")),
    }
}

fn version_key(cid: &ContentId) -> Vec<u8> {
    let mut k = vec![VERSION];
    k.extend_from_slice(&cid.0);
    k
}

fn state_key(collection: &str, id: &str) -> Vec<u8> {
    keys::key(b'S', &[collection.as_bytes(), id.as_bytes()])
}

fn collection_key(collection: &str) -> Vec<u8> {
    keys::key(COLLECTION, &[collection.as_bytes()])
}

/// An index scan: (index tag, start value key, optional bound key).
type IndexRange = (u8, Vec<u8>, Option<Vec<u8>>);

/// Refuses values DAG-CBOR cannot store (NaN and infinite floats), naming the field.
fn validate_fields(fields: &Map) -> Result<(), StoreError> {
    fields
        .iter()
        .try_for_each(|(name, v)| validate_value(name, v))
}

fn validate_value(field: &str, v: &Value) -> Result<(), StoreError> {
    match v {
        Value::Float(f) if !f.is_finite() => Err(StoreError::InvalidArgument(format!(
            "field {field:?}: NaN and infinite floats cannot be stored (DAG-CBOR has no encoding for them)"
        ))),
        Value::Array(items) => items.iter().try_for_each(|i| validate_value(field, i)),
        Value::Map(m) => m
            .iter()
            .try_for_each(|(k, i)| validate_value(&format!("{field}.{k}"), i)),
        _ => Ok(()),
    }
}

/// Index entries (`I` and `A` keys) of one document's fields.
fn index_keys(collection: &str, id: &str, fields: &Map) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    for (name, value) in fields {
        field_index_keys(&mut out, collection, id, name, value);
    }
    out
}

/// True when `a` and `b` give exactly the same index entries: equal values
/// (floats bit for bit: stricter than needed, as the index keys `0.0` and
/// `-0.0` alike), arrays item by item,
/// and any two maps (a map is never indexed). False may still mean equal
/// entries; it only makes the caller compute them.
fn same_index_entries(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_index_entries(x, y))
        }
        (Value::Map(_), Value::Map(_)) => true,
        (Value::Float(_) | Value::Array(_) | Value::Map(_), _)
        | (_, Value::Float(_) | Value::Array(_) | Value::Map(_)) => false,
        _ => a == b,
    }
}

/// Index entries whose presence differs between a document's fields
/// `before` and `after`: (entries to delete, entries to add). Exactly the
/// set differences of [`index_keys`] of both sides, computed only for the
/// fields whose value changed (an entry names its field, so unchanged fields
/// contribute nothing).
fn index_changes(
    collection: &str,
    id: &str,
    before: Option<&Map>,
    after: Option<&Map>,
) -> (BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>) {
    let empty = Map::new();
    let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let mut old = BTreeSet::new();
    let mut new = BTreeSet::new();
    for (name, value) in before {
        match after.get(name) {
            Some(now) if same_index_entries(value, now) => {}
            _ => field_index_keys(&mut old, collection, id, name, value),
        }
    }
    for (name, value) in after {
        match before.get(name) {
            Some(was) if same_index_entries(was, value) => {}
            _ => field_index_keys(&mut new, collection, id, name, value),
        }
    }
    let removed = old.difference(&new).cloned().collect();
    let added = new.difference(&old).cloned().collect();
    (removed, added)
}

/// Adds the index entries of field `name` holding `value` to `out`.
fn field_index_keys(
    out: &mut BTreeSet<Vec<u8>>,
    collection: &str,
    id: &str,
    name: &str,
    value: &Value,
) {
    if let Some(vk) = keys::value_key(value) {
        let mut k = keys::key(INDEX, &[collection.as_bytes(), name.as_bytes()]);
        k.extend_from_slice(&vk);
        keys::push_escaped(&mut k, id.as_bytes());
        out.insert(k);
    }
    if let Value::Array(items) = value {
        for item in items {
            if let Some(vk) = keys::value_key(item) {
                let mut k = keys::key(ARRAY_INDEX, &[collection.as_bytes(), name.as_bytes()]);
                k.extend_from_slice(&vk);
                keys::push_escaped(&mut k, id.as_bytes());
                out.insert(k);
            }
        }
    }
}

/// Splits a state record key (`S esc(collection) esc(id)`) into (collection, id).
fn parse_state_key(k: &[u8]) -> Result<(String, String), StoreError> {
    let bad = || corrupt("", "?", "bad state record key");
    let (c, rest) = keys::take_escaped(k.get(1..).ok_or_else(bad)?).ok_or_else(bad)?;
    let (i, rest) = keys::take_escaped(rest).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok((
        String::from_utf8(c).map_err(|_| bad())?,
        String::from_utf8(i).map_err(|_| bad())?,
    ))
}

/// The id at the end of an index key.
fn id_from_index_key(k: &[u8], prefix_len: usize) -> Option<String> {
    // Value keys are self-delimiting: skip one, and the id follows.
    let rest = skip_value_key(k.get(prefix_len..)?)?;
    let (id, after) = keys::take_escaped(rest)?;
    if !after.is_empty() {
        return None;
    }
    String::from_utf8(id).ok()
}

fn skip_value_key(k: &[u8]) -> Option<&[u8]> {
    let (&kind, rest) = k.split_first()?;
    match kind {
        0 => Some(rest),
        1 => rest.get(1..),
        2 => rest.get(8..),
        3..=5 => keys::take_escaped(rest).map(|(_, r)| r),
        _ => None,
    }
}

impl<B: Backend> Store<B> {
    /// A store over `backend`, signing its versions as `identity`.
    pub fn with_backend(
        backend: B,
        identity: Identity,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        let format_key = keys::key(META, &[META_FORMAT]);
        match backend.get(&format_key)? {
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt("", "format", "format marker is not 4 bytes"))?;
                if found != FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
            None => {
                if backend.scan(&[], None).next().is_some() {
                    return Err(StoreError::UnsupportedFormat {
                        found: 0,
                        supported: FORMAT_VERSION,
                    });
                }
                let mut batch = crate::kv::WriteBatch::new();
                batch.insert(format_key, Some(FORMAT_VERSION.to_be_bytes().to_vec()));
                backend.apply(batch)?;
                backend.flush()?;
            }
        }
        if backend
            .get(&keys::key(META, &[META_MERKLE_STALE]))?
            .is_some()
        {
            recovery::rebuild_merkle(&backend, &keys::key(META, &[META_MERKLE_STALE]))?;
        }
        let peer = identity.peer_id();
        let (hlc, hlc_bound) = match backend.get(&keys::key(META, &[META_HLC]))? {
            Some(bytes) => {
                let last: HlcTimestamp =
                    ecomesh_wire::decode(&bytes).map_err(|e| corrupt("", "hlc", e))?;
                // Keep issuing after the persisted bound, as this peer. (A
                // store written before the bound existed holds its last
                // issued timestamp, which is as good a start.)
                let hlc = Hlc::from_parts(
                    HlcTimestamp::new(last.physical_ms, last.logical, peer),
                    config.max_drift_ms,
                );
                (hlc, last.physical_ms)
            }
            None => (Hlc::new(peer).with_max_drift(config.max_drift_ms), 0),
        };
        let subs = Arc::new(Subscriptions::new(config.subscription_buffer));
        let trie = trie::NodeCache::new(config.trie_cache_nodes);
        let held_any = backend
            .scan(&[HELD], prefix_end(&[HELD]).as_deref())
            .next()
            .is_some();
        Ok(Store {
            backend,
            identity,
            config,
            writer: Mutex::new(Writer {
                hlc,
                hlc_bound,
                trie,
            }),
            derived: Mutex::new(Deferred::default()),
            subs,
            keyring: Arc::new(Keyring::default()),
            held_any: AtomicBool::new(held_any),
        })
    }

    /// Physical time from the store's clock (milliseconds since the epoch):
    /// what time-bounded checks such as capability expiry compare against.
    pub fn clock_now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// The keys of encrypted collections this store seals local writes with
    /// and opens received versions with. After adding a key, call
    /// [`open_held`](Self::open_held) to merge the versions it opens.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The delta of a sealed version, when this store holds its key and it
    /// opens (a version that does not open under the right key is logged and
    /// treated as unreadable). A clear version is `None` too: use its delta.
    fn open_sealed(&self, node: &VersionNode) -> Option<DocumentCrdt> {
        let (group, epoch) = node.sealing_key()?;
        let key = self.keyring.key(&node.collection, group, epoch)?;
        match node.open_delta(&key) {
            Ok(delta) => Some(delta),
            Err(e) => {
                tracing::warn!(collection = %node.collection, id = %node.id, error = %e,
                    "a sealed version does not open under its collection key; held unread");
                None
            }
        }
    }

    /// Whether document (collection, id) holds sealed versions this store
    /// could not open.
    pub fn has_held(&self, collection: &str, id: &str) -> Result<bool, StoreError> {
        if !self.held_any.load(Ordering::Acquire) {
            return Ok(false);
        }
        let prefix = keys::key(HELD, &[collection.as_bytes(), id.as_bytes()]);
        match self
            .backend
            .scan(&prefix, prefix_end(&prefix).as_deref())
            .next()
        {
            None => Ok(false),
            Some(r) => r.map(|_| true),
        }
    }

    /// Merges every held sealed version of `collection` that the keyring now
    /// opens (after a key was added); returns how many merged. Versions it
    /// still cannot open stay held.
    pub fn open_held(&self, collection: &str) -> Result<usize, StoreError> {
        if !self.held_any.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        let prefix = keys::key(HELD, &[collection.as_bytes()]);
        let mut by_doc: BTreeMap<String, Vec<(Vec<u8>, ContentId)>> = BTreeMap::new();
        for item in self.backend.scan(&prefix, prefix_end(&prefix).as_deref()) {
            let (k, _) = item?;
            let (c, id, cid) = keys::parse_held_key(&k)
                .ok_or_else(|| corrupt(collection, "held", "bad held-version key"))?;
            if c == collection {
                by_doc.entry(id).or_default().push((k, ContentId(cid)));
            }
        }
        let mut txn = self.txn();
        let mut work = trie::Work::new();
        let mut changes = Vec::new();
        let mut opened = 0;
        for (id, held) in by_doc {
            let mut record = self.read_state(&txn, collection, &id)?;
            let before = record.state.materialize();
            let mut merged = false;
            for (k, cid) in held {
                let Some(bytes) = txn.get(&version_key(&cid))? else {
                    txn.delete(k);
                    continue;
                };
                let node = self.decode_version(&cid, &bytes)?;
                if let Some(delta) = self.open_sealed(&node) {
                    record.state.merge(&delta);
                    txn.delete(k);
                    merged = true;
                    opened += 1;
                }
            }
            if merged {
                changes.push(self.put_state(
                    &mut txn,
                    &mut work,
                    &mut writer.trie,
                    collection,
                    &id,
                    &record,
                    before,
                )?);
            }
        }
        if opened == 0 {
            return Ok(0);
        }
        self.seal_trie(&mut txn, &mut work)?;
        self.commit(txn)?;
        work.release(&mut writer.trie);
        self.notify(changes);
        drop(guard);
        tracing::debug!(collection, opened, "held sealed versions opened");
        Ok(opened)
    }

    /// This store's peer id (the author of its local versions).
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Makes every write so far durable, with the Merkle index writes still
    /// held in memory (see [`StoreConfig::deferred_merkle_writes`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.persist_derived()?;
        self.backend.flush()
    }

    /// A transaction reading the deferred Merkle writes over the backend.
    pub(crate) fn txn(&self) -> Txn<'_> {
        Txn::with_overlay(&self.backend, &self.derived)
    }

    /// Moves the deferred Merkle writes into the backend (one atomic batch
    /// that also clears the stale marker).
    fn persist_derived(&self) -> Result<(), StoreError> {
        Txn::persist_overlay(
            &self.backend,
            &self.derived,
            keys::key(META, &[META_MERKLE_STALE]),
        )
    }

    /// Puts the clock bound into `txn` when `hlc` has reached the persisted
    /// one; returns the new bound to record once `txn` committed.
    fn hlc_bound(
        &self,
        txn: &mut Txn<'_>,
        writer: &Writer,
        hlc: &Hlc,
    ) -> Result<Option<u64>, StoreError> {
        let last = hlc.last();
        if last.physical_ms < writer.hlc_bound {
            return Ok(None);
        }
        let bound = last.physical_ms.saturating_add(HLC_MARGIN_MS);
        let record = HlcTimestamp::new(bound, 0, last.peer);
        txn.put(
            keys::key(META, &[META_HLC]),
            ecomesh_wire::encode(&record).map_err(|e| StoreError::Encode(e.to_string()))?,
        );
        Ok(Some(bound))
    }

    /// A fresh hybrid-logical-clock timestamp from the store's clock (the
    /// server timestamp of seed 6). It is later than every timestamp the clock
    /// issued before and than every merged timestamp up to
    /// [`StoreConfig::max_drift_ms`] ahead of local time (further ones are not
    /// followed; see [`apply_remote`](Store::apply_remote)).
    pub fn now(&self) -> HlcTimestamp {
        let mut writer = lock(&self.writer);
        let clock = self.config.clock.clone();
        match writer.hlc.send(clock.as_ref()) {
            Ok(ts) => ts,
            Err(_) => writer.hlc.last(),
        }
    }

    /// A new document id, unique without coordination (seed 6):
    /// `<physical ms hex>-<logical hex>-<64 random bits hex>-<peer id prefix>`.
    pub fn new_id(&self) -> String {
        let ts = self.now();
        let mut random = [0_u8; 8];
        // The HLC part is already unique per peer; randomness only guards
        // against two peers whose ids share the prefix.
        let _ = getrandom::fill(&mut random);
        let peer = ts.peer.to_string();
        let prefix: String = peer.chars().take(8).collect();
        format!(
            "{:x}-{:x}-{:016x}-{prefix}",
            ts.physical_ms,
            ts.logical,
            u64::from_be_bytes(random)
        )
    }

    /// Snapshots skipped because a subscriber fell behind (see [`StoreConfig::subscription_buffer`]).
    pub fn lagged_snapshots(&self) -> u64 {
        self.subs.lagged()
    }

    // ----- writes ------------------------------------------------------------

    /// Writes a document: replaces it, or with `options.merge` merges the fields in.
    pub fn set(
        &self,
        collection: &str,
        id: &str,
        fields: Map,
        options: SetOptions,
    ) -> Result<WriteResult, StoreError> {
        self.write_one_result(LocalWrite::Set {
            collection: collection.to_owned(),
            id: id.to_owned(),
            fields,
            options,
        })
    }

    /// Changes fields of an existing document; [`StoreError::NotFound`] otherwise.
    pub fn update(
        &self,
        collection: &str,
        id: &str,
        fields: Map,
    ) -> Result<WriteResult, StoreError> {
        self.write_one_result(LocalWrite::Update {
            collection: collection.to_owned(),
            id: id.to_owned(),
            fields,
        })
    }

    /// Deletes a document by recording a tombstone version (seed 6); succeeds when absent.
    pub fn delete(&self, collection: &str, id: &str) -> Result<WriteResult, StoreError> {
        self.write_one_result(LocalWrite::Delete {
            collection: collection.to_owned(),
            id: id.to_owned(),
        })
    }

    /// Applies field operations (counters, sets, removals) to a document.
    pub fn apply_ops(
        &self,
        collection: &str,
        id: &str,
        ops: Vec<(String, FieldOp)>,
    ) -> Result<WriteResult, StoreError> {
        self.write_one_result(LocalWrite::Apply {
            collection: collection.to_owned(),
            id: id.to_owned(),
            ops,
        })
    }

    /// Writes, as a new version, the content the document had at version `cid`
    /// (its fields as they were shown then; a deleted version restores as a delete).
    pub fn restore(
        &self,
        collection: &str,
        id: &str,
        cid: &ContentId,
    ) -> Result<WriteResult, StoreError> {
        self.write_one_result(LocalWrite::Restore {
            collection: collection.to_owned(),
            id: id.to_owned(),
            cid: cid.clone(),
        })
    }

    /// Applies several writes atomically: all commit or none does.
    pub fn batch(&self, operations: Vec<BatchOperation>) -> Result<BatchResult, StoreError> {
        let written = self.write_local(LocalWrite::Batch(operations))?;
        Ok(BatchResult::new(
            written.iter().map(WrittenVersion::result).collect(),
        ))
    }

    /// Performs a local write and returns the version node it wrote for each
    /// document, in the order of the operations (one for a single-document
    /// write), with the bytes exactly as stored: what replication needs to
    /// queue, position and push the versions without reading them back.
    pub fn write_local(&self, write: LocalWrite) -> Result<Vec<WrittenVersion>, StoreError> {
        let ops = match write {
            LocalWrite::Set {
                collection,
                id,
                fields,
                options,
            } => vec![Op {
                collection,
                id,
                kind: OpKind::Set {
                    fields,
                    merge: options.merge,
                },
            }],
            LocalWrite::Update {
                collection,
                id,
                fields,
            } => vec![Op {
                collection,
                id,
                kind: OpKind::Update(fields),
            }],
            LocalWrite::Delete { collection, id } => vec![Op {
                collection,
                id,
                kind: OpKind::Delete,
            }],
            LocalWrite::Apply {
                collection,
                id,
                ops,
            } => vec![Op {
                collection,
                id,
                kind: OpKind::Apply(ops),
            }],
            LocalWrite::Restore {
                collection,
                id,
                cid,
            } => vec![self.restore_op(collection, id, &cid)?],
            LocalWrite::Batch(operations) => Self::batch_ops(operations)?,
        };
        self.write(ops)
    }

    fn write_one_result(&self, write: LocalWrite) -> Result<WriteResult, StoreError> {
        self.write_local(write)?
            .pop()
            .map(|w| w.result())
            .ok_or_else(|| StoreError::InvalidArgument("empty write".into()))
    }

    /// The operation that writes again what `collection`/`id` showed at `cid`.
    fn restore_op(
        &self,
        collection: String,
        id: String,
        cid: &ContentId,
    ) -> Result<Op, StoreError> {
        let node = self
            .version(cid)?
            .ok_or_else(|| StoreError::UnknownVersion(cid.clone()))?;
        if node.collection != collection || node.id != id {
            return Err(StoreError::InvalidArgument(format!(
                "version belongs to {}/{}, not {collection}/{id}",
                node.collection, node.id
            )));
        }
        let kind = match self.state_at(cid)?.materialize() {
            Some(fields) => OpKind::Set {
                fields,
                merge: false,
            },
            None => OpKind::Delete,
        };
        Ok(Op {
            collection,
            id,
            kind,
        })
    }

    fn batch_ops(operations: Vec<BatchOperation>) -> Result<Vec<Op>, StoreError> {
        operations
            .into_iter()
            .map(|op| {
                let (collection, id) = op.target();
                let (collection, id) = (collection.to_owned(), id.to_owned());
                let kind = match op {
                    BatchOperation::Set { fields, merge, .. } => OpKind::Set { fields, merge },
                    BatchOperation::Update { fields, .. } => OpKind::Update(fields),
                    BatchOperation::Delete { .. } => OpKind::Delete,
                    other => {
                        return Err(StoreError::InvalidArgument(format!(
                            "unsupported batch operation {other:?}"
                        )));
                    }
                };
                Ok(Op {
                    collection,
                    id,
                    kind,
                })
            })
            .collect()
    }

    fn write(&self, ops: Vec<Op>) -> Result<Vec<WrittenVersion>, StoreError> {
        for op in &ops {
            validate_key(&op.collection, &op.id)?;
            if self.keyring.is_encrypted(&op.collection)
                && self.keyring.current(&op.collection).is_none()
            {
                return Err(StoreError::NoCollectionKey {
                    collection: op.collection.clone(),
                });
            }
            match &op.kind {
                OpKind::Set { fields, .. } | OpKind::Update(fields) => validate_fields(fields)?,
                OpKind::Apply(field_ops) => {
                    for (name, field_op) in field_ops {
                        let values: &[Value] = match field_op {
                            FieldOp::Set(v) => std::slice::from_ref(v),
                            FieldOp::AddToSet(vs) | FieldOp::RemoveFromSet(vs) => vs,
                            _ => &[],
                        };
                        for v in values {
                            validate_value(name, v)?;
                        }
                    }
                }
                OpKind::Delete => {}
            }
        }
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        let mut hlc = writer.hlc.clone();
        let mut txn = self.txn();
        let mut work = trie::Work::new();
        let mut results = Vec::with_capacity(ops.len());
        let mut changes = Vec::with_capacity(ops.len());
        for op in ops {
            let mut record = self.read_state(&txn, &op.collection, &op.id)?;
            // What the document showed (its record is always this state's
            // materialization), without reading and decoding that record.
            let before = record.state.materialize();
            // After everything this document holds, even a version from a peer
            // whose clock runs far ahead: the write supersedes what it saw.
            let floor = record.state.max_timestamp();
            let ts = hlc.send_after(floor.as_ref(), self.config.clock.as_ref())?;
            let delta = match op.kind {
                OpKind::Set {
                    fields,
                    merge: false,
                } => record.state.set(fields, ts)?,
                OpKind::Set {
                    fields,
                    merge: true,
                } => record.state.update(fields, ts)?,
                OpKind::Update(fields) => {
                    if !record.state.exists() {
                        return Err(StoreError::NotFound {
                            collection: op.collection,
                            id: op.id,
                        });
                    }
                    record.state.update(fields, ts)?
                }
                OpKind::Delete => record.state.delete(ts)?,
                OpKind::Apply(field_ops) => record.state.apply(field_ops, ts)?,
            };
            let (_, bytes, cid) = match self.keyring.current(&op.collection) {
                Some(key) => VersionNode::signed_sealed(
                    &self.identity,
                    &key,
                    &op.collection,
                    &op.id,
                    record.heads.clone(),
                    ts,
                    &delta,
                )?,
                None => VersionNode::signed_encoded(
                    &self.identity,
                    &op.collection,
                    &op.id,
                    record.heads.clone(),
                    ts,
                    delta,
                )?,
            };
            txn.put(version_key(&cid), bytes.clone());
            let parents = std::mem::replace(&mut record.heads, vec![cid.clone()]);
            changes.push(self.put_state(
                &mut txn,
                &mut work,
                &mut writer.trie,
                &op.collection,
                &op.id,
                &record,
                before,
            )?);
            results.push(WrittenVersion {
                cid,
                bytes,
                collection: op.collection,
                id: op.id,
                parents,
                timestamp: ts,
                deleted: !record.state.exists(),
            });
        }
        let bound = self.hlc_bound(&mut txn, writer, &hlc)?;
        self.seal_trie(&mut txn, &mut work)?;
        self.commit(txn)?;
        work.release(&mut writer.trie);
        writer.hlc = hlc;
        writer.hlc_bound = bound.unwrap_or(writer.hlc_bound);
        self.notify(changes);
        drop(guard);
        Ok(results)
    }

    /// Merges a version received from a peer: the entry point replication calls.
    ///
    /// Checks, in order: the node decodes strictly; its signature, author and
    /// timestamps are consistent ([`VersionNode::verify`]); every parent is
    /// present ([`StoreError::MissingParents`] lists the ones to fetch first).
    /// Then the delta merges into the document's CRDT state, the heads advance,
    /// indexes and the Merkle index follow, and subscribers are told.
    ///
    /// **A version is never refused for its timestamp**, however far ahead of
    /// (or behind) local time its author's clock was: merging is safe at any
    /// time. A timestamp beyond [`StoreConfig::max_drift_ms`] moves the store's
    /// clock only to that bound, and the version keeps its timestamp, so it
    /// wins last-writer-wins conflicts against concurrent writes until the other
    /// clocks pass it; a local write made after it still beats it (see
    /// [`DocumentCrdt`]'s "Wrong clocks").
    pub fn apply_remote(&self, bytes: &[u8]) -> Result<ApplyOutcome, StoreError> {
        let cid = codec::cid_of_bytes(bytes);
        let node =
            ecomesh_wire::decode::<VersionNode>(bytes).map_err(|e| StoreError::InvalidVersion {
                collection: String::new(),
                id: String::new(),
                reason: e.to_string(),
            })?;
        node.verify()?;
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        let mut txn = self.txn();
        if txn.get(&version_key(&cid))?.is_some() {
            return Ok(ApplyOutcome::AlreadyPresent(cid));
        }
        let missing: Vec<ContentId> = node
            .parents
            .iter()
            .filter_map(|p| match txn.get(&version_key(p)) {
                Ok(Some(_)) => None,
                Ok(None) => Some(Ok(p.clone())),
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        if !missing.is_empty() {
            return Err(StoreError::MissingParents(missing));
        }
        let mut hlc = writer.hlc.clone();
        hlc.receive(&node.timestamp, self.config.clock.as_ref())?;
        let mut record = self.read_state(&txn, &node.collection, &node.id)?;
        let before = record.state.materialize();
        let mut held = false;
        if node.sealed.is_none() {
            record.state.merge(&node.delta);
        } else if let Some(delta) = self.open_sealed(&node) {
            record.state.merge(&delta);
        } else {
            // Stored and forwarded like any version; its delta waits for a key.
            txn.put(
                keys::held_key(&node.collection, &node.id, &cid.0),
                Vec::new(),
            );
            held = true;
        }
        let parents: BTreeSet<&ContentId> = node.parents.iter().collect();
        record.heads.retain(|h| !parents.contains(h));
        record.heads.push(cid.clone());
        record.heads.sort();
        txn.put(version_key(&cid), bytes.to_vec());
        let mut work = trie::Work::new();
        let change = self.put_state(
            &mut txn,
            &mut work,
            &mut writer.trie,
            &node.collection,
            &node.id,
            &record,
            before,
        )?;
        let bound = self.hlc_bound(&mut txn, writer, &hlc)?;
        self.seal_trie(&mut txn, &mut work)?;
        self.commit(txn)?;
        if held {
            self.held_any.store(true, Ordering::Release);
        }
        work.release(&mut writer.trie);
        writer.hlc = hlc;
        writer.hlc_bound = bound.unwrap_or(writer.hlc_bound);
        self.notify(vec![change]);
        drop(guard);
        Ok(ApplyOutcome::Applied {
            cid,
            collection: node.collection,
            id: node.id,
        })
    }

    /// Commits a write: everything but the Merkle nodes and roots to the
    /// backend atomically, those to the deferred writes (persisted now when
    /// they pass the bound), then flushes as the policy says.
    fn commit(&self, txn: Txn<'_>) -> Result<(), StoreError> {
        if self.config.deferred_merkle_writes == 0 {
            txn.commit()?;
            self.persist_derived()?;
        } else {
            let held = txn.commit_deferring(
                |k| matches!(k.first(), Some(&TRIE | &COLLECTION)),
                (keys::key(META, &[META_MERKLE_STALE]), vec![1]),
            )?;
            if held > self.config.deferred_merkle_writes {
                self.persist_derived()?;
            }
        }
        if self.config.flush == FlushPolicy::EveryWrite {
            self.backend.flush()?;
        }
        Ok(())
    }

    /// Writes a document's new state record, its materialized fields, its index
    /// entries and its Merkle index entry.
    #[allow(clippy::too_many_arguments)]
    fn put_state(
        &self,
        txn: &mut Txn<'_>,
        work: &mut trie::Work,
        cache: &mut trie::NodeCache,
        collection: &str,
        id: &str,
        record: &StateRecord,
        before: Option<Map>,
    ) -> Result<Change, StoreError> {
        let after = record.state.materialize();
        txn.put(
            state_key(collection, id),
            ecomesh_wire::encode(record).map_err(|e| StoreError::Encode(e.to_string()))?,
        );
        let (removed, added) = index_changes(collection, id, before.as_ref(), after.as_ref());
        for k in removed {
            txn.delete(k);
        }
        for k in added {
            txn.put(k, Vec::new());
        }
        let after = match after {
            Some(fields) => {
                let value = Value::Map(fields);
                txn.put(keys::doc_key(collection, id), codec::encode(&value)?);
                match value {
                    Value::Map(fields) => Some(fields),
                    _ => None,
                }
            }
            None => {
                txn.delete(keys::doc_key(collection, id));
                None
            }
        };
        work.upsert(
            txn,
            cache,
            collection,
            Entry::new(id, record.heads_digest()),
        )?;
        Ok(Change {
            collection: collection.to_owned(),
            id: id.to_owned(),
            before,
            after,
        })
    }

    /// Seals the write's Merkle index changes into `txn` with the new
    /// collection roots.
    fn seal_trie(&self, txn: &mut Txn<'_>, work: &mut trie::Work) -> Result<(), StoreError> {
        for (collection, root) in work.seal(txn)? {
            put_collection_root(txn, &collection, root)?;
        }
        Ok(())
    }

    /// Removes tombstoned documents the policy allows, with all their versions,
    /// index entries and Merkle entries. Returns how many were removed.
    pub fn collect_garbage(&self, policy: &dyn GcPolicy) -> Result<usize, StoreError> {
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        let start = [b'S'];
        let end = prefix_end(&start).unwrap_or_default();
        let mut victims = Vec::new();
        for item in self.backend.scan(&start, Some(&end)) {
            let (k, v) = item?;
            let (c, i) = parse_state_key(&k)?;
            let record = decode_state(&c, &i, &v)?;
            if let (false, Some(deleted)) = (record.state.exists(), record.state.deleted())
                && policy.may_collect(&c, &i, deleted)
            {
                victims.push((c, i, record));
            }
        }
        let mut txn = self.txn();
        let mut work = trie::Work::new();
        for (c, i, record) in &victims {
            for cid in self.ancestors(&record.heads)?.keys() {
                txn.delete(version_key(cid));
            }
            txn.delete(state_key(c, i));
            work.remove(&txn, &mut writer.trie, c, &Entry::new(i, [0; 32]).key_hash)?;
        }
        self.seal_trie(&mut txn, &mut work)?;
        self.commit(txn)?;
        work.release(&mut writer.trie);
        drop(guard);
        Ok(victims.len())
    }

    // ----- subscriptions -----------------------------------------------------

    /// Watches one document: `listener` gets the current state now, then every change.
    pub fn subscribe_document(
        &self,
        collection: &str,
        id: &str,
        listener: Listener<Option<Document>>,
    ) -> Result<Subscription, StoreError> {
        validate_key(collection, id)?;
        let writer = lock(&self.writer);
        let initial = self.get(collection, id)?;
        let key = self.subs.add_document(collection, id, listener, initial);
        drop(writer);
        let subs = Arc::downgrade(&self.subs);
        Ok(Subscription::new(move || {
            if let Some(subs) = subs.upgrade() {
                subs.remove(key);
            }
        }))
    }

    /// Watches a query: `listener` gets the full result list now, then after every change to it.
    pub fn subscribe_query(
        &self,
        collection: &str,
        query: Query,
        listener: Listener<Vec<Document>>,
    ) -> Result<Subscription, StoreError> {
        let writer = lock(&self.writer);
        let initial = self.query(collection, &query)?.documents;
        let key = self.subs.add_query(collection, query, listener, initial);
        drop(writer);
        let subs = Arc::downgrade(&self.subs);
        Ok(Subscription::new(move || {
            if let Some(subs) = subs.upgrade() {
                subs.remove(key);
            }
        }))
    }

    /// Queues snapshots for every subscription a commit affected. Runs under the
    /// writer lock, after the commit: a query that cannot be re-run is logged and
    /// that subscription gets no snapshot for this commit, but the write, which
    /// is durable already, still reports success.
    fn notify(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut events: Vec<(u64, Event)> = Vec::new();
        self.subs.with_targets(|targets| {
            for change in &changes {
                for (key, target) in targets.iter_mut() {
                    match target {
                        Target::Document { collection, id } => {
                            if *collection == change.collection && *id == change.id {
                                let doc = change.after.clone().map(|f| {
                                    Document::new(change.collection.clone(), change.id.clone(), f)
                                });
                                events.push((*key, Event::Document(doc)));
                            }
                        }
                        Target::Query {
                            collection,
                            query,
                            last,
                        } => {
                            if *collection != change.collection {
                                continue;
                            }
                            let touches = |fields: &Option<Map>| {
                                fields.as_ref().is_some_and(|f| {
                                    query.matches(&Document::new(
                                        collection.clone(),
                                        change.id.clone(),
                                        f.clone(),
                                    ))
                                })
                            };
                            if !touches(&change.before) && !touches(&change.after) {
                                continue;
                            }
                            match self.query(collection, query) {
                                Ok(page) => {
                                    if last.as_ref() != Some(&page.documents) {
                                        *last = Some(page.documents.clone());
                                        events.push((*key, Event::Query(page.documents)));
                                    }
                                }
                                Err(e) => tracing::warn!(
                                    collection = %collection,
                                    error = %e,
                                    "query subscription could not be refreshed after a commit"
                                ),
                            }
                        }
                    }
                }
            }
        });
        for (key, event) in events {
            self.subs.push(key, event);
        }
    }

    // ----- verification ------------------------------------------------------
}

/// Persists the deferred Merkle writes when the store goes away, so a clean
/// shutdown never needs the rebuild at the next open.
impl<B: Backend> Drop for Store<B> {
    fn drop(&mut self) {
        if let Err(e) = self.persist_derived().and_then(|()| self.backend.flush()) {
            tracing::warn!(
                error = %e,
                "deferred Merkle writes not persisted at close; the next open rebuilds them"
            );
        }
    }
}

/// Puts the collection root record (or deletes it when the collection is empty).
pub(crate) fn put_collection_root(
    txn: &mut Txn<'_>,
    collection: &str,
    root: Option<ChildRef>,
) -> Result<(), StoreError> {
    match root {
        Some(root) => {
            let record = Value::Array(vec![
                Value::Link(root.cid),
                Value::Integer(i64::try_from(root.count).unwrap_or(i64::MAX)),
            ]);
            txn.put(collection_key(collection), codec::encode(&record)?);
        }
        None => txn.delete(collection_key(collection)),
    }
    Ok(())
}

impl From<TypesError> for StoreError {
    fn from(e: TypesError) -> Self {
        match e {
            TypesError::NotFound { collection, id } => StoreError::NotFound { collection, id },
            TypesError::InvalidArgument(msg) => StoreError::InvalidArgument(msg),
            other => StoreError::InvalidArgument(other.to_string()),
        }
    }
}

impl From<ecomesh_crdt::Error> for StoreError {
    fn from(e: ecomesh_crdt::Error) -> Self {
        match e {
            ecomesh_crdt::Error::ClockOverflow => StoreError::Clock(e.to_string()),
            other => StoreError::InvalidArgument(other.to_string()),
        }
    }
}

#[cfg(test)]
mod index_change_tests {
    use super::*;

    /// Field values whose index entries differ in the ways that matter: kinds,
    /// an integer and the float of the same number, `0.0` and `-0.0`, arrays
    /// that differ in one item or in length, and maps (never indexed).
    fn samples() -> Vec<Option<Value>> {
        let map = |k: &str| {
            let mut m = Map::new();
            m.insert(k.into(), Value::Integer(1));
            Value::Map(m)
        };
        vec![
            None,
            Some(Value::Null),
            Some(Value::Bool(true)),
            Some(Value::Integer(1)),
            Some(Value::Float(1.0)),
            Some(Value::Float(0.0)),
            Some(Value::Float(-0.0)),
            Some(Value::Text("a".into())),
            Some(Value::Bytes(vec![1])),
            Some(Value::Array(vec![
                Value::Integer(1),
                Value::Text("a".into()),
            ])),
            Some(Value::Array(vec![
                Value::Integer(1),
                Value::Text("b".into()),
            ])),
            Some(Value::Array(vec![Value::Float(-0.0)])),
            Some(Value::Array(vec![Value::Float(0.0)])),
            Some(Value::Array(vec![Value::Integer(1)])),
            Some(map("x")),
            Some(map("y")),
        ]
    }

    #[test]
    fn index_changes_are_the_set_differences_of_both_sides() {
        let samples = samples();
        // Two fields, each taking every pair of sample values before and
        // after, so changed, unchanged, added and removed fields combine.
        for a0 in &samples {
            for a1 in &samples {
                for b0 in &samples {
                    for b1 in [&samples[3], &samples[6], &samples[9]] {
                        let doc = |a: &Option<Value>, b: &Option<Value>| {
                            let mut m = Map::new();
                            if let Some(a) = a {
                                m.insert("a".into(), a.clone());
                            }
                            if let Some(b) = b {
                                m.insert("b".into(), b.clone());
                            }
                            m
                        };
                        let before = doc(a0, b0);
                        let after = doc(a1, b1);
                        for (before, after) in [
                            (Some(&before), Some(&after)),
                            (None, Some(&after)),
                            (Some(&before), None),
                        ] {
                            let old = before.map(|f| index_keys("c", "d", f)).unwrap_or_default();
                            let new = after.map(|f| index_keys("c", "d", f)).unwrap_or_default();
                            let expected: (BTreeSet<_>, BTreeSet<_>) = (
                                old.difference(&new).cloned().collect(),
                                new.difference(&old).cloned().collect(),
                            );
                            assert_eq!(
                                index_changes("c", "d", before, after),
                                expected,
                                "before {before:?} after {after:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
