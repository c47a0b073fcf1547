//! The durable sync queue (seed 6, `syncQueue`): what a node still has to send.
//!
//! Every local write enqueues work (replicate a document version, replicate a
//! tombstone, push a blob); the node drains the queue as peers become
//! reachable and acknowledges each item, per peer, until `factor` distinct
//! peers hold it.
//!
//! # Durability
//!
//! The queue lives in a sled tree ([`SyncQueue::TREE`]) and every call that
//! changes it flushes before returning `Ok`. So an item whose
//! [`SyncQueue::enqueue`] returned `Ok` and that was not completed is there
//! after a restart or a `kill -9`, with every per-peer acknowledgement that
//! returned `Ok`; an item whose last acknowledgement returned
//! [`AckOutcome::Done`] is gone. Sequence numbers only grow, across restarts
//! too, even when the queue was drained.
//!
//! # Encoding
//!
//! A record is a canonical CBOR array (through `ecomesh-wire`'s strict reader):
//! `[1, 0|1, collection, id, version, factor, acked]` for a document version
//! (0) or tombstone (1), `[1, 2, blob, collection, id | null, factor, acked]`
//! for a blob push, where
//! `acked` is an array of 32-byte peer ids in strictly ascending byte order,
//! shorter than `factor`. Any other form, an oversized record, a name or CID
//! beyond the bounds, is [`ReplicationError::Malformed`] or
//! [`ReplicationError::TooLarge`], never a panic.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use ecomesh_types::{ContentId, PeerId};
use ecomesh_wire::{Limits, Reader, Writer};

use crate::ReplicationError;
use crate::policy::MAX_FACTOR;

/// Longest collection name or document id in a queue item, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest content id in a queue item, in bytes.
pub const MAX_CID_LEN: usize = 128;
/// Largest stored record, in bytes (bounds what is decoded from disk).
pub const MAX_RECORD_LEN: usize = 2 * MAX_NAME_LEN + MAX_CID_LEN + 64 + 34 * MAX_FACTOR as usize;
/// Most items one [`SyncQueue::pending`] page returns.
pub const MAX_PAGE: usize = 1024;

const FORMAT: u64 = 1;
const KIND_REPLICATE: u64 = 0;
const KIND_TOMBSTONE: u64 = 1;
const KIND_PUSH_BLOB: u64 = 2;
const NEXT_KEY: &[u8] = b"n";
const ITEM_PREFIX: u8 = b'i';

/// One unit of work to send to peers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SyncItem {
    /// Replicate version `version` of document `id` of `collection`.
    Replicate {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The version's CID.
        version: ContentId,
        /// How many distinct peers must acknowledge it.
        factor: u32,
    },
    /// Replicate the deletion of document `id`: its tombstone version.
    Tombstone {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The tombstone version's CID.
        version: ContentId,
        /// How many distinct peers must acknowledge it.
        factor: u32,
    },
    /// Push a blob or shard, by its content id.
    PushBlob {
        /// The blob's or shard's content id.
        blob: ContentId,
        /// The collection whose data refers to it: its reach gates the push.
        collection: String,
        /// The document that refers to it, when one does (its reach may be
        /// narrower than the collection's).
        id: Option<String>,
        /// How many distinct peers must acknowledge it.
        factor: u32,
    },
}

impl SyncItem {
    /// How many distinct peers must acknowledge the item.
    pub fn factor(&self) -> u32 {
        match self {
            SyncItem::Replicate { factor, .. }
            | SyncItem::Tombstone { factor, .. }
            | SyncItem::PushBlob { factor, .. } => *factor,
        }
    }

    /// The collection and document whose reach decides who may receive the
    /// item: pass them to [`crate::reach::ReachPolicy::ensure_admitted`] before
    /// sending to a peer.
    pub fn reach_scope(&self) -> (&str, Option<&str>) {
        match self {
            SyncItem::Replicate { collection, id, .. }
            | SyncItem::Tombstone { collection, id, .. } => (collection, Some(id)),
            SyncItem::PushBlob { collection, id, .. } => (collection, id.as_deref()),
        }
    }

    /// Checks the bounds every stored item keeps: names 1..=[`MAX_NAME_LEN`]
    /// bytes, CIDs 1..=[`MAX_CID_LEN`] bytes, factor 1..=[`MAX_FACTOR`].
    pub fn validate(&self) -> Result<(), ReplicationError> {
        let factor = self.factor();
        if factor == 0 || factor > MAX_FACTOR {
            return Err(ReplicationError::InvalidConfig(format!(
                "queue item factor {factor} is outside 1..={MAX_FACTOR}"
            )));
        }
        let (names, cid): (&[&String], &ContentId) = match self {
            SyncItem::Replicate {
                collection,
                id,
                version,
                ..
            }
            | SyncItem::Tombstone {
                collection,
                id,
                version,
                ..
            } => (&[collection, id], version),
            SyncItem::PushBlob {
                blob,
                collection,
                id: None,
                ..
            } => (&[collection], blob),
            SyncItem::PushBlob {
                blob,
                collection,
                id: Some(id),
                ..
            } => (&[collection, id], blob),
        };
        for name in names {
            bound("queue item name", name.len(), MAX_NAME_LEN)?;
        }
        bound("queue item content id", cid.0.len(), MAX_CID_LEN)
    }
}

fn bound(what: &'static str, size: usize, max: usize) -> Result<(), ReplicationError> {
    if size == 0 {
        return Err(ReplicationError::Malformed {
            what,
            detail: "empty".into(),
        });
    }
    if size > max {
        return Err(ReplicationError::TooLarge { what, size, max });
    }
    Ok(())
}

/// An item still in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Its sequence number: unique, assigned in enqueue order, never reused.
    pub seq: u64,
    /// The work.
    pub item: SyncItem,
    /// The distinct peers that acknowledged it so far (fewer than the factor).
    pub acked_by: BTreeSet<PeerId>,
}

fn malformed(detail: impl Into<String>) -> ReplicationError {
    ReplicationError::Malformed {
        what: "sync queue record",
        detail: detail.into(),
    }
}

impl Pending {
    /// The record's canonical bytes (the sequence number is the key, not part
    /// of the record). Fails if the item breaks [`SyncItem::validate`] or
    /// `acked_by` has `factor` peers or more.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ReplicationError> {
        self.item.validate()?;
        if self.acked_by.len() >= self.item.factor() as usize {
            return Err(malformed("as many acknowledgements as the factor"));
        }
        let mut w = Writer::with_capacity(128);
        match &self.item {
            SyncItem::Replicate {
                collection,
                id,
                version,
                factor,
            }
            | SyncItem::Tombstone {
                collection,
                id,
                version,
                factor,
            } => {
                let kind = if matches!(self.item, SyncItem::Replicate { .. }) {
                    KIND_REPLICATE
                } else {
                    KIND_TOMBSTONE
                };
                w.array(7);
                w.uint(FORMAT);
                w.uint(kind);
                w.text(collection);
                w.text(id);
                w.bytes(&version.0);
                w.uint(u64::from(*factor));
            }
            SyncItem::PushBlob {
                blob,
                collection,
                id,
                factor,
            } => {
                w.array(7);
                w.uint(FORMAT);
                w.uint(KIND_PUSH_BLOB);
                w.bytes(&blob.0);
                w.text(collection);
                match id {
                    Some(id) => w.text(id),
                    None => w.null(),
                }
                w.uint(u64::from(*factor));
            }
        }
        w.array(self.acked_by.len());
        for p in &self.acked_by {
            w.bytes(p.as_bytes());
        }
        Ok(w.into_bytes())
    }

    /// Decodes a record stored under `seq`, strictly: exactly the form
    /// [`Self::to_bytes`] writes, within every bound, or a typed error.
    pub fn from_bytes(seq: u64, bytes: &[u8]) -> Result<Self, ReplicationError> {
        Self::decode(seq, bytes).map_err(|e| match e {
            ReplicationError::Wire(e) => malformed(e.to_string()),
            other => other,
        })
    }

    fn decode(seq: u64, bytes: &[u8]) -> Result<Self, ReplicationError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(ReplicationError::TooLarge {
                what: "sync queue record",
                size: bytes.len(),
                max: MAX_RECORD_LEN,
            });
        }
        let limits = Limits {
            max_depth: 2,
            max_len: MAX_RECORD_LEN as u64,
        };
        let mut r = Reader::new(bytes, limits);
        let len = r.read_array_len()?;
        let format = r.read_uint()?;
        if format != FORMAT {
            return Err(malformed(format!("unknown format {format}")));
        }
        let kind = r.read_uint()?;
        if len != 7 {
            return Err(malformed(format!("{len} fields for kind {kind}")));
        }
        let read_factor = |r: &mut Reader<'_>| -> Result<u32, ReplicationError> {
            let f = r.read_uint()?;
            u32::try_from(f).map_err(|_| malformed(format!("factor {f}")))
        };
        let item = match kind {
            KIND_REPLICATE | KIND_TOMBSTONE => {
                let collection = r.read_text()?.to_owned();
                let id = r.read_text()?.to_owned();
                let version = ContentId(r.read_bytes()?.to_vec());
                let factor = read_factor(&mut r)?;
                if kind == KIND_REPLICATE {
                    SyncItem::Replicate {
                        collection,
                        id,
                        version,
                        factor,
                    }
                } else {
                    SyncItem::Tombstone {
                        collection,
                        id,
                        version,
                        factor,
                    }
                }
            }
            KIND_PUSH_BLOB => {
                let blob = ContentId(r.read_bytes()?.to_vec());
                let collection = r.read_text()?.to_owned();
                let id = if r.read_null_or()? {
                    None
                } else {
                    Some(r.read_text()?.to_owned())
                };
                let factor = read_factor(&mut r)?;
                SyncItem::PushBlob {
                    blob,
                    collection,
                    id,
                    factor,
                }
            }
            other => return Err(malformed(format!("unknown kind {other}"))),
        };
        item.validate()?;
        let n = r.read_array_len()?;
        if n >= item.factor() as usize {
            return Err(malformed(format!(
                "{n} acknowledgements for factor {}",
                item.factor()
            )));
        }
        let mut acked_by = BTreeSet::new();
        let mut last: Option<PeerId> = None;
        for _ in 0..n {
            let peer = PeerId::from_slice(r.read_bytes()?)
                .map_err(|e| malformed(format!("acknowledging peer: {e}")))?;
            if last.is_some_and(|l| l >= peer) {
                return Err(malformed("acknowledging peers not strictly ascending"));
            }
            last = Some(peer);
            acked_by.insert(peer);
        }
        r.finish()?;
        Ok(Pending {
            seq,
            item,
            acked_by,
        })
    }
}

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// `factor` distinct peers have acknowledged: the item is gone.
    Done,
    /// Recorded; `acked` of `factor` peers so far (a repeated peer counts once).
    Partial {
        /// Distinct peers so far.
        acked: usize,
        /// Peers needed.
        factor: u32,
    },
    /// No such item (never enqueued, or already done).
    Unknown,
}

/// One page of [`SyncQueue::pending`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPage {
    /// Items in sequence order.
    pub items: Vec<Pending>,
    /// Where the next page starts, or `None` when this page reached the end.
    pub next: Option<u64>,
}

fn item_key(seq: u64) -> [u8; 9] {
    let mut k = [0_u8; 9];
    k[0] = ITEM_PREFIX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of_key(key: &[u8]) -> Result<u64, ReplicationError> {
    match key {
        [ITEM_PREFIX, rest @ ..] => <[u8; 8]>::try_from(rest)
            .map(u64::from_be_bytes)
            .map_err(|_| malformed(format!("queue key of {} bytes", key.len()))),
        _ => Err(malformed("queue key without the item prefix")),
    }
}

/// How long [`SyncQueue::open`] waits for a lock its own process is releasing.
pub const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn storage(e: sled::Error) -> ReplicationError {
    ReplicationError::Storage(e.to_string())
}

/// Opens (creating if needed) the sled database in directory `dir`.
///
/// A lock its own process is still releasing is waited for, up to
/// [`REOPEN_WAIT`] (see [`open_sled`]).
pub(crate) fn open_db(dir: &Path) -> Result<sled::Db, ReplicationError> {
    open_sled(&sled::Config::new().path(dir), REOPEN_WAIT).map_err(storage)
}

/// Opens the sled database `config` describes, waiting up to `wait` while its
/// file lock is held.
///
/// sled releases its file lock only when its background flusher exits, a
/// moment after the last handle is dropped, so a reopen in the same process
/// right after a drop may find the lock still held. A lock still held after
/// `wait` (another process has the database open) is returned as sled's error:
/// an I/O error of kind `WouldBlock` or naming the lock ([`is_lock_error`]).
pub fn open_sled(
    config: &sled::Config,
    wait: std::time::Duration,
) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match config.open() {
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Whether `e` is sled's report of a database whose file lock is held.
pub fn is_lock_error(e: &sled::Error) -> bool {
    // sled reports a held lock as an I/O error naming it.
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"))
}

/// The durable sync queue over a sled tree.
///
/// Safe to share between threads (`&self` methods; changes are serialized).
#[derive(Debug)]
pub struct SyncQueue {
    tree: sled::Tree,
    /// The next sequence number; the lock serializes every change.
    next: Mutex<u64>,
}

impl SyncQueue {
    /// The name of the sled tree the queue uses inside a database.
    pub const TREE: &'static str = "ecomesh-sync-queue";

    /// Opens (creating if needed) a sled database in directory `dir` and the
    /// queue in it. A lock that a handle dropped in this process still holds
    /// (sled releases it when its flusher exits) is waited for, up to
    /// [`REOPEN_WAIT`].
    pub fn open(dir: &Path) -> Result<Self, ReplicationError> {
        Self::open_in(&open_db(dir)?)
    }

    /// Opens the queue in the tree [`Self::TREE`] of an open database (so a
    /// node can keep it beside other state).
    pub fn open_in(db: &sled::Db) -> Result<Self, ReplicationError> {
        let tree = db.open_tree(Self::TREE).map_err(storage)?;
        let stored = match tree.get(NEXT_KEY).map_err(storage)? {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| malformed("next sequence number is not 8 bytes"))?,
            None => 1,
        };
        let after_last = match tree.scan_prefix([ITEM_PREFIX]).next_back() {
            Some(entry) => {
                let (k, _) = entry.map_err(storage)?;
                seq_of_key(&k)?.saturating_add(1)
            }
            None => 1,
        };
        Ok(SyncQueue {
            tree,
            next: Mutex::new(stored.max(after_last).max(1)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // A panic while holding the lock cannot leave the tree half-written
        // (each change is one atomic batch), so a poisoned lock is still usable.
        self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush(&self) -> Result<(), ReplicationError> {
        self.tree.flush().map_err(storage).map(|_| ())
    }

    /// Adds `item` and returns its sequence number, larger than every number
    /// given before (also before a restart). Durable when it returns `Ok`.
    /// An item out of bounds ([`SyncItem::validate`]) is refused.
    pub fn enqueue(&self, item: SyncItem) -> Result<u64, ReplicationError> {
        let mut next = self.lock();
        let seq = *next;
        let record = Pending {
            seq,
            item,
            acked_by: BTreeSet::new(),
        }
        .to_bytes()?;
        let following = seq
            .checked_add(1)
            .ok_or_else(|| ReplicationError::Storage("sequence numbers exhausted".into()))?;
        let mut batch = sled::Batch::default();
        batch.insert(&item_key(seq), record);
        batch.insert(NEXT_KEY, &following.to_be_bytes());
        self.tree.apply_batch(batch).map_err(storage)?;
        self.flush()?;
        *next = following;
        Ok(seq)
    }

    /// The item `seq`, if it is still pending.
    pub fn get(&self, seq: u64) -> Result<Option<Pending>, ReplicationError> {
        match self.tree.get(item_key(seq)).map_err(storage)? {
            Some(v) => Pending::from_bytes(seq, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Records that `peer` holds item `seq`. When `factor` distinct peers have,
    /// the item is removed ([`AckOutcome::Done`]). Durable when it returns `Ok`.
    pub fn ack(&self, seq: u64, peer: PeerId) -> Result<AckOutcome, ReplicationError> {
        let _guard = self.lock();
        let Some(mut pending) = self.get(seq)? else {
            return Ok(AckOutcome::Unknown);
        };
        let factor = pending.item.factor();
        if !pending.acked_by.insert(peer) {
            return Ok(AckOutcome::Partial {
                acked: pending.acked_by.len(),
                factor,
            });
        }
        let outcome = if pending.acked_by.len() >= factor as usize {
            self.tree.remove(item_key(seq)).map_err(storage)?;
            AckOutcome::Done
        } else {
            self.tree
                .insert(item_key(seq), pending.to_bytes()?)
                .map_err(storage)?;
            AckOutcome::Partial {
                acked: pending.acked_by.len(),
                factor,
            }
        };
        self.flush()?;
        Ok(outcome)
    }

    /// Removes item `seq` whatever its acknowledgements (also a record that no
    /// longer decodes); returns whether it was there. Durable when `Ok`.
    pub fn complete(&self, seq: u64) -> Result<bool, ReplicationError> {
        let _guard = self.lock();
        let existed = self.tree.remove(item_key(seq)).map_err(storage)?.is_some();
        if existed {
            self.flush()?;
        }
        Ok(existed)
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) pending items with sequence
    /// number >= `from`, in order. A record that does not decode is an error
    /// naming its sequence number; [`Self::complete`] removes it.
    pub fn pending(&self, from: u64, limit: usize) -> Result<PendingPage, ReplicationError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let start = item_key(from);
        let end = [ITEM_PREFIX + 1];
        let mut items = Vec::with_capacity(limit.min(64));
        let mut next = None;
        for entry in self.tree.range(&start[..]..&end[..]) {
            let (k, v) = entry.map_err(storage)?;
            let seq = seq_of_key(&k)?;
            if items.len() == limit {
                next = Some(seq);
                break;
            }
            let p = Pending::from_bytes(seq, &v).map_err(|e| match e {
                ReplicationError::Malformed { what, detail } => ReplicationError::Malformed {
                    what,
                    detail: format!("item {seq}: {detail}"),
                },
                other => other,
            })?;
            items.push(p);
        }
        Ok(PendingPage { items, next })
    }

    /// Number of pending items (counts the records; O(n)).
    pub fn len(&self) -> usize {
        self.tree.scan_prefix([ITEM_PREFIX]).count()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.tree.scan_prefix([ITEM_PREFIX]).next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_digest([n; 32])
    }

    fn replicate(n: u8, factor: u32) -> SyncItem {
        SyncItem::Replicate {
            collection: "users".into(),
            id: format!("u{n}"),
            version: ContentId(vec![1, n, 3]),
            factor,
        }
    }

    fn arb_item() -> impl Strategy<Value = SyncItem> {
        let name = "[a-z0-9é]{1,12}";
        let cid = proptest::collection::vec(any::<u8>(), 1..40).prop_map(ContentId);
        let factor = 1..=MAX_FACTOR;
        prop_oneof![
            (name, name, cid.clone(), factor.clone()).prop_map(|(c, i, v, f)| {
                SyncItem::Replicate {
                    collection: c,
                    id: i,
                    version: v,
                    factor: f,
                }
            }),
            (name, name, cid.clone(), factor.clone()).prop_map(|(c, i, v, f)| {
                SyncItem::Tombstone {
                    collection: c,
                    id: i,
                    version: v,
                    factor: f,
                }
            }),
            (cid, name, proptest::option::of(name), factor).prop_map(|(b, c, i, f)| {
                SyncItem::PushBlob {
                    blob: b,
                    collection: c,
                    id: i,
                    factor: f,
                }
            }),
        ]
    }

    fn arb_pending() -> impl Strategy<Value = Pending> {
        (
            arb_item(),
            proptest::collection::btree_set(any::<u8>(), 0..6),
            any::<u64>(),
        )
            .prop_map(|(item, acked, seq)| {
                let keep = item.factor() as usize - 1;
                Pending {
                    seq,
                    acked_by: acked.into_iter().take(keep).map(peer).collect(),
                    item,
                }
            })
    }

    proptest! {
        #[test]
        fn prop_record_round_trips_and_is_canonical(p in arb_pending()) {
            let bytes = p.to_bytes().unwrap();
            prop_assert!(bytes.len() <= MAX_RECORD_LEN);
            let back = Pending::from_bytes(p.seq, &bytes).unwrap();
            prop_assert_eq!(&back, &p);
            prop_assert_eq!(back.to_bytes().unwrap(), bytes);
        }

        #[test]
        fn prop_garbage_and_mutations_never_panic(p in arb_pending(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
            let mut bytes = p.to_bytes().unwrap();
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            if let Ok(q) = Pending::from_bytes(1, &bytes) {
                // Whatever decodes is canonical: it re-encodes to the same bytes.
                prop_assert_eq!(q.to_bytes().unwrap(), bytes.clone());
            }
            let cut = cut % (bytes.len() + 1);
            let _ = Pending::from_bytes(1, &bytes[..cut]);
        }
    }

    #[test]
    fn strict_decoding_refuses_non_canonical_forms() {
        let p = Pending {
            seq: 1,
            item: replicate(1, 3),
            acked_by: [peer(1)].into(),
        };
        let good = p.to_bytes().unwrap();
        // Trailing byte.
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            Pending::from_bytes(1, &long),
            Err(ReplicationError::Malformed { .. })
        ));
        // Peers out of order / repeated.
        let mut w = Writer::new();
        w.array(7);
        w.uint(1);
        w.uint(0);
        w.text("c");
        w.text("d");
        w.bytes(&[1]);
        w.uint(3);
        w.array(2);
        w.bytes(peer(2).as_bytes());
        w.bytes(peer(1).as_bytes());
        assert!(Pending::from_bytes(1, &w.into_bytes()).is_err());
        // Too many acknowledgements for the factor, factor 0, empty name.
        for (factor, acks, name) in [(1, 1, "d"), (0, 0, "d"), (2, 0, "")] {
            let mut w = Writer::new();
            w.array(7);
            w.uint(1);
            w.uint(0);
            w.text("c");
            w.text(name);
            w.bytes(&[1]);
            w.uint(factor);
            w.array(acks);
            for i in 0..acks {
                w.bytes(peer(i as u8).as_bytes());
            }
            assert!(Pending::from_bytes(1, &w.into_bytes()).is_err());
        }
        // Oversized input is refused before decoding.
        assert!(matches!(
            Pending::from_bytes(1, &vec![0; MAX_RECORD_LEN + 1]),
            Err(ReplicationError::TooLarge { .. })
        ));
    }

    #[test]
    fn invalid_items_are_refused_at_enqueue() {
        let dir = tempfile::tempdir().unwrap();
        let q = SyncQueue::open(dir.path()).unwrap();
        assert!(q.enqueue(replicate(1, 0)).is_err());
        assert!(q.enqueue(replicate(1, MAX_FACTOR + 1)).is_err());
        assert!(
            q.enqueue(SyncItem::PushBlob {
                collection: "c".into(),
                id: None,
                blob: ContentId(vec![]),
                factor: 1
            })
            .is_err()
        );
        assert!(matches!(
            q.enqueue(SyncItem::PushBlob {
                collection: "c".into(),
                id: None,
                blob: ContentId(vec![0; MAX_CID_LEN + 1]),
                factor: 1
            }),
            Err(ReplicationError::TooLarge { .. })
        ));
        assert!(q.is_empty());
    }

    #[test]
    fn per_peer_acks_complete_an_item_at_its_factor() {
        let dir = tempfile::tempdir().unwrap();
        let q = SyncQueue::open(dir.path()).unwrap();
        let seq = q.enqueue(replicate(1, 2)).unwrap();
        assert_eq!(
            q.ack(seq, peer(7)).unwrap(),
            AckOutcome::Partial {
                acked: 1,
                factor: 2
            }
        );
        assert_eq!(
            q.ack(seq, peer(7)).unwrap(),
            AckOutcome::Partial {
                acked: 1,
                factor: 2
            }
        );
        assert_eq!(q.get(seq).unwrap().unwrap().acked_by, [peer(7)].into());
        assert_eq!(q.ack(seq, peer(8)).unwrap(), AckOutcome::Done);
        assert_eq!(q.get(seq).unwrap(), None);
        assert_eq!(q.ack(seq, peer(9)).unwrap(), AckOutcome::Unknown);
        assert_eq!(q.ack(999, peer(9)).unwrap(), AckOutcome::Unknown);
    }

    #[test]
    fn pending_pages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let q = SyncQueue::open(dir.path()).unwrap();
        let seqs: Vec<u64> = (0..10)
            .map(|n| q.enqueue(replicate(n, 1)).unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert!(q.complete(seqs[3]).unwrap());
        assert!(!q.complete(seqs[3]).unwrap());
        let mut from = 0;
        let mut seen = Vec::new();
        loop {
            let page = q.pending(from, 4).unwrap();
            assert!(page.items.len() <= 4);
            seen.extend(page.items.iter().map(|p| p.seq));
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
        let mut expect = seqs.clone();
        expect.remove(3);
        assert_eq!(seen, expect);
        assert_eq!(q.len(), 9);
        // A zero limit still makes progress; an absurd one is capped.
        assert_eq!(q.pending(0, 0).unwrap().items.len(), 1);
        assert_eq!(q.pending(0, usize::MAX).unwrap().items.len(), 9);
    }

    #[test]
    fn reopen_keeps_pending_items_and_partial_acks_and_drops_done_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c);
        {
            let q = SyncQueue::open(dir.path()).unwrap();
            a = q.enqueue(replicate(1, 1)).unwrap();
            b = q
                .enqueue(SyncItem::Tombstone {
                    collection: "users".into(),
                    id: "u2".into(),
                    version: ContentId(vec![9]),
                    factor: 3,
                })
                .unwrap();
            c = q
                .enqueue(SyncItem::PushBlob {
                    collection: "files".into(),
                    id: Some("f1".into()),
                    blob: ContentId(vec![4; 36]),
                    factor: 2,
                })
                .unwrap();
            assert_eq!(q.ack(a, peer(1)).unwrap(), AckOutcome::Done);
            q.ack(b, peer(5)).unwrap();
        }
        let q = SyncQueue::open(dir.path()).unwrap();
        let page = q.pending(0, 100).unwrap();
        assert_eq!(
            page.items.iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![b, c]
        );
        assert_eq!(page.items[0].acked_by, [peer(5)].into());
        assert!(matches!(
            page.items[1].item,
            SyncItem::PushBlob { factor: 2, .. }
        ));
        // Sequence numbers keep growing after a restart, even once drained.
        q.complete(b).unwrap();
        q.complete(c).unwrap();
        drop(q);
        let q = SyncQueue::open(dir.path()).unwrap();
        assert!(q.is_empty());
        assert!(q.enqueue(replicate(3, 1)).unwrap() > c);
    }

    #[test]
    fn a_corrupt_record_is_a_typed_error_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let q = SyncQueue::open_in(&db).unwrap();
        let good = q.enqueue(replicate(1, 1)).unwrap();
        let bad = q.enqueue(replicate(2, 1)).unwrap();
        let tree = db.open_tree(SyncQueue::TREE).unwrap();
        tree.insert(item_key(bad), &[0x85, 0x01, 0xff][..]).unwrap();
        assert!(matches!(
            q.get(bad),
            Err(ReplicationError::Malformed { .. })
        ));
        match q.pending(0, 10) {
            Err(ReplicationError::Malformed { detail, .. }) => {
                assert!(detail.contains(&format!("item {bad}")), "{detail}")
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert!(q.get(good).unwrap().is_some());
        assert!(q.complete(bad).unwrap());
        assert_eq!(q.pending(0, 10).unwrap().items.len(), 1);
        // A broken next-sequence record is refused at open.
        tree.insert(NEXT_KEY, &[1, 2, 3][..]).unwrap();
        drop(q);
        assert!(matches!(
            SyncQueue::open_in(&db),
            Err(ReplicationError::Malformed { .. })
        ));
    }
}
