//! Stream positions and event kinds (seed 001, "Sync Layer"): every version this
//! node takes in gets a monotonic position in its stream, so a peer can ask for
//! "all changes since position N"; each arrival is classified as one of the
//! seed's four event kinds.
//!
//! [`StreamIndex`] is sans-io and in memory; [`StreamIndex::to_bytes`] /
//! [`StreamIndex::from_bytes`] give a canonical, strictly decoded form of it,
//! and [`DurableStream`] keeps it in a sled tree (beside the sync queue's, if
//! the caller opens both in one database), record by record.
//!
//! # Event kinds
//!
//! [`classify`] decides, from what the node already holds ([`DagView`]):
//!
//! - already held: no event (`None`);
//! - created here: [`EventKind::Local`];
//! - some parent not held, or held but itself waiting on a gap:
//!   [`EventKind::Outlier`] (a DAG gap);
//! - every parent held, and some held version names it as a parent (it is an
//!   ancestor of what we have, arriving late): [`EventKind::Backfill`];
//! - otherwise: [`EventKind::New`].
//!
//! # Positions
//!
//! Local, New and Backfill versions get the next position (1, 2, 3...). An
//! outlier gets none: it waits until every parent is placed, then it is placed
//! in the stream (as New or Backfill by the same rules). So a reader of
//! the stream in position order never meets a version whose parents this node
//! has not placed before it, unless a local version was created on unknown
//! parents.

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_types::{ContentId, PeerId};
use ecomesh_wire::{Limits, Reader, Writer};

use crate::ReplicationError;

/// A position in a node's stream: 1 for the first entry; 0 means "before the
/// first entry".
pub type Position = u64;

/// Most parents one version may name.
pub const MAX_PARENTS: usize = 64;
/// Longest content id, in bytes.
pub const MAX_CID_LEN: usize = 128;
/// Most entries [`StreamIndex::changes_since`] returns at once.
pub const MAX_DELTA: usize = 4096;
/// Most entries, outliers or peer positions [`StreamIndex::from_bytes`] accepts
/// in each of its three lists.
pub const MAX_ENTRIES: usize = 1 << 22;
/// Largest input [`StreamIndex::from_bytes`] accepts.
pub const MAX_INDEX_BYTES: usize = 1 << 30;

/// The seed's event kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// Created on this node.
    Local,
    /// Just received; its parents are known.
    New,
    /// Received late: an ancestor of versions already held.
    Backfill,
    /// Received with parents missing: a DAG gap.
    Outlier,
}

impl EventKind {
    fn code(self) -> u64 {
        match self {
            EventKind::Local => 0,
            EventKind::New => 1,
            EventKind::Backfill => 2,
            EventKind::Outlier => 3,
        }
    }
}

/// Where a version came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Created on this node.
    Local,
    /// Received from this peer.
    Remote(PeerId),
}

/// What the classifier needs to know about the versions already held.
pub trait DagView {
    /// True when the version `id` is held (complete or not).
    fn contains(&self, id: &ContentId) -> bool;
    /// True when `id` is held and so is its whole ancestry (it is not an
    /// outlier nor a descendant of one).
    fn is_complete(&self, id: &ContentId) -> bool;
    /// True when some held version names `id` as a parent.
    fn is_parent_of_held(&self, id: &ContentId) -> bool;
}

/// The event kind of version `id` with `parents` arriving from `source`, or
/// `None` when it is already held (rules in the module docs).
pub fn classify<V: DagView + ?Sized>(
    view: &V,
    id: &ContentId,
    parents: &[ContentId],
    source: Source,
) -> Option<EventKind> {
    if view.contains(id) {
        return None;
    }
    if source == Source::Local {
        return Some(EventKind::Local);
    }
    if parents.iter().any(|p| !view.is_complete(p)) {
        return Some(EventKind::Outlier);
    }
    if view.is_parent_of_held(id) {
        return Some(EventKind::Backfill);
    }
    Some(EventKind::New)
}

/// One entry of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// Its position (>= 1).
    pub position: Position,
    /// The version.
    pub id: ContentId,
    /// The version's parents.
    pub parents: Vec<ContentId>,
    /// How it arrived (never [`EventKind::Outlier`]).
    pub kind: EventKind,
    /// Where it came from.
    pub source: Source,
}

/// What [`StreamIndex::ingest`] did with one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingested {
    /// The version.
    pub id: ContentId,
    /// Its kind.
    pub kind: EventKind,
    /// Its new position, or `None` for an outlier that waits for its parents.
    pub position: Option<Position>,
}

/// A page of [`StreamIndex::changes_since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// Entries with positions above the one asked for, in order.
    pub entries: Vec<StreamEntry>,
    /// The position to ask from next time (the last entry's, or the one asked
    /// for when there were none).
    pub next: Position,
    /// True when more entries follow `next`.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Outlier {
    parents: Vec<ContentId>,
    source: Source,
}

/// The stream of one node: its positioned entries, the outliers waiting for
/// parents, and how far this node has read every peer's stream.
///
/// Promises: positions are 1, 2, 3... in order of placement and never change;
/// every version is held once (in the stream or as an outlier); the position
/// recorded for a peer never decreases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamIndex {
    log: Vec<StreamEntry>,
    positions: BTreeMap<ContentId, Position>,
    outliers: BTreeMap<ContentId, Outlier>,
    /// Missing parent -> the outliers waiting for it.
    waiting: BTreeMap<ContentId, BTreeSet<ContentId>>,
    /// Ids named as a parent by some held version.
    referenced: BTreeSet<ContentId>,
    peers: BTreeMap<PeerId, Position>,
}

impl DagView for StreamIndex {
    fn contains(&self, id: &ContentId) -> bool {
        self.positions.contains_key(id) || self.outliers.contains_key(id)
    }

    fn is_complete(&self, id: &ContentId) -> bool {
        self.positions.contains_key(id)
    }

    fn is_parent_of_held(&self, id: &ContentId) -> bool {
        self.referenced.contains(id)
    }
}

fn check_version(id: &ContentId, parents: &[ContentId]) -> Result<(), ReplicationError> {
    for cid in std::iter::once(id).chain(parents) {
        if cid.0.is_empty() {
            return Err(ReplicationError::Malformed {
                what: "stream version",
                detail: "empty content id".into(),
            });
        }
        if cid.0.len() > MAX_CID_LEN {
            return Err(ReplicationError::TooLarge {
                what: "stream content id",
                size: cid.0.len(),
                max: MAX_CID_LEN,
            });
        }
    }
    if parents.len() > MAX_PARENTS {
        return Err(ReplicationError::TooLarge {
            what: "stream parents",
            size: parents.len(),
            max: MAX_PARENTS,
        });
    }
    Ok(())
}

impl StreamIndex {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position of the last entry (0 when empty).
    pub fn head(&self) -> Position {
        self.log.len() as Position
    }

    /// The position of version `id`, if it is placed in the stream.
    pub fn position_of(&self, id: &ContentId) -> Option<Position> {
        self.positions.get(id).copied()
    }

    /// The outliers still waiting for parents.
    pub fn outliers(&self) -> impl Iterator<Item = &ContentId> {
        self.outliers.keys()
    }

    /// Takes in version `id` with `parents` from `source`: classifies it,
    /// places it (or keeps it as an outlier), and places every outlier whose
    /// last missing parent it was, recursively. Returns what happened, the
    /// version itself first; empty when it was already held. A content id
    /// outside 1..=[`MAX_CID_LEN`] bytes or more than [`MAX_PARENTS`] parents
    /// is refused and changes nothing.
    pub fn ingest(
        &mut self,
        id: ContentId,
        parents: Vec<ContentId>,
        source: Source,
    ) -> Result<Vec<Ingested>, ReplicationError> {
        check_version(&id, &parents)?;
        let Some(kind) = classify(self, &id, &parents, source) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if kind == EventKind::Outlier {
            for p in &parents {
                self.referenced.insert(p.clone());
                if !self.is_complete(p) {
                    self.waiting
                        .entry(p.clone())
                        .or_default()
                        .insert(id.clone());
                }
            }
            self.outliers
                .insert(id.clone(), Outlier { parents, source });
            out.push(Ingested {
                id,
                kind,
                position: None,
            });
            return Ok(out);
        }
        let mut ready = vec![(id, parents, source, kind)];
        while let Some((id, parents, source, kind)) = ready.pop() {
            let position = self.place(id.clone(), parents, source, kind);
            out.push(Ingested {
                id: id.clone(),
                kind,
                position: Some(position),
            });
            let Some(waiters) = self.waiting.remove(&id) else {
                continue;
            };
            for w in waiters.into_iter().rev() {
                let still_missing = self
                    .outliers
                    .get(&w)
                    .is_none_or(|o| o.parents.iter().any(|p| !self.is_complete(p)));
                if still_missing {
                    continue;
                }
                if let Some(o) = self.outliers.remove(&w) {
                    let kind = if self.referenced.contains(&w) {
                        EventKind::Backfill
                    } else {
                        EventKind::New
                    };
                    ready.push((w, o.parents, o.source, kind));
                }
            }
        }
        Ok(out)
    }

    fn place(
        &mut self,
        id: ContentId,
        parents: Vec<ContentId>,
        source: Source,
        kind: EventKind,
    ) -> Position {
        let position = self.head() + 1;
        self.referenced.extend(parents.iter().cloned());
        self.positions.insert(id.clone(), position);
        self.log.push(StreamEntry {
            position,
            id,
            parents,
            kind,
            source,
        });
        position
    }

    /// Delta sync: up to `limit` (at most [`MAX_DELTA`], at least 1) entries
    /// with positions above `since`, in order.
    pub fn changes_since(&self, since: Position, limit: usize) -> Delta {
        let limit = limit.clamp(1, MAX_DELTA);
        let start = usize::try_from(since)
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        let end = start.saturating_add(limit).min(self.log.len());
        let entries = self.log[start..end].to_vec();
        let next = entries.last().map_or(since, |e| e.position);
        Delta {
            more: end < self.log.len(),
            entries,
            next,
        }
    }

    /// Records that this node has read `peer`'s stream up to `position`;
    /// returns the recorded position, which never decreases.
    pub fn observe_peer(&mut self, peer: PeerId, position: Position) -> Position {
        let slot = self.peers.entry(peer).or_insert(0);
        *slot = (*slot).max(position);
        *slot
    }

    /// How far this node has read `peer`'s stream (0: nothing yet): the
    /// position to ask it for changes since.
    pub fn peer_position(&self, peer: &PeerId) -> Position {
        self.peers.get(peer).copied().unwrap_or(0)
    }

    /// The canonical bytes: `[1, [entry...], [outlier...], [[peer, pos]...]]`,
    /// an entry `[kind, id, [parent...], source]`, an outlier `[id, [parent...],
    /// source]`, a source `null` (local) or the 32 peer bytes; outliers by id
    /// and peers by id in ascending byte order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.log.len() * 80);
        w.array(4);
        w.uint(1);
        w.array(self.log.len());
        for e in &self.log {
            write_entry(&mut w, e.kind, &e.id, &e.parents, &e.source);
        }
        w.array(self.outliers.len());
        for (id, o) in &self.outliers {
            write_outlier(&mut w, id, &o.parents, &o.source);
        }
        w.array(self.peers.len());
        for (peer, pos) in &self.peers {
            w.array(2);
            w.bytes(peer.as_bytes());
            w.uint(*pos);
        }
        w.into_bytes()
    }

    /// Decodes [`Self::to_bytes`] strictly: the exact canonical form, every
    /// bound, no version held twice, no outlier whose parents are all held;
    /// anything else is [`ReplicationError::Malformed`] or
    /// [`ReplicationError::TooLarge`], never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReplicationError> {
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(ReplicationError::TooLarge {
                what: "stream index",
                size: bytes.len(),
                max: MAX_INDEX_BYTES,
            });
        }
        Self::decode(bytes).map_err(|e| match e {
            ReplicationError::Wire(e) => bad(e.to_string()),
            other => other,
        })
    }

    /// Places a decoded entry, refusing a version held already and a received
    /// version whose parents are not placed before it.
    fn restore_entry(
        &mut self,
        kind: EventKind,
        id: ContentId,
        parents: Vec<ContentId>,
        source: Source,
    ) -> Result<(), ReplicationError> {
        if self.contains(&id) {
            return Err(bad("a version placed twice"));
        }
        if kind != EventKind::Local && parents.iter().any(|p| !self.is_complete(p)) {
            return Err(bad("a received version placed before its parents"));
        }
        self.place(id, parents, source, kind);
        Ok(())
    }

    /// Keeps a decoded outlier (after every entry was restored).
    fn restore_outlier(
        &mut self,
        id: ContentId,
        parents: Vec<ContentId>,
        source: Source,
    ) -> Result<(), ReplicationError> {
        if self.contains(&id) {
            return Err(bad("an outlier held twice"));
        }
        self.outliers.insert(id, Outlier { parents, source });
        Ok(())
    }

    /// Rebuilds what outliers wait for; refuses an outlier without a gap.
    fn finish_restore(&mut self) -> Result<(), ReplicationError> {
        for (id, o) in &self.outliers {
            let mut gap = false;
            for p in &o.parents {
                self.referenced.insert(p.clone());
                if !self.positions.contains_key(p) {
                    gap = true;
                    self.waiting
                        .entry(p.clone())
                        .or_default()
                        .insert(id.clone());
                }
            }
            if !gap {
                return Err(bad("an outlier whose parents are all held"));
            }
        }
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, ReplicationError> {
        let mut r = Reader::new(
            bytes,
            Limits {
                max_depth: 5,
                max_len: MAX_INDEX_BYTES as u64,
            },
        );
        expect_len(&mut r, 4)?;
        if r.read_uint()? != 1 {
            return Err(bad("unknown format"));
        }
        let mut index = StreamIndex::new();
        let n = bounded_len(&mut r)?;
        for _ in 0..n {
            let (kind, id, parents, source) = read_entry(&mut r)?;
            index.restore_entry(kind, id, parents, source)?;
        }
        let n = bounded_len(&mut r)?;
        let mut last: Option<ContentId> = None;
        for _ in 0..n {
            let (id, parents, source) = read_outlier(&mut r)?;
            if last.as_ref().is_some_and(|l| *l >= id) {
                return Err(bad("outliers not strictly ascending"));
            }
            last = Some(id.clone());
            index.restore_outlier(id, parents, source)?;
        }
        index.finish_restore()?;
        let n = bounded_len(&mut r)?;
        let mut last: Option<PeerId> = None;
        for _ in 0..n {
            expect_len(&mut r, 2)?;
            let peer = read_peer(&mut r)?;
            if last.is_some_and(|l| l >= peer) {
                return Err(bad("peer positions not strictly ascending"));
            }
            last = Some(peer);
            index.peers.insert(peer, r.read_uint()?);
        }
        r.finish()?;
        Ok(index)
    }
}

/// A [`StreamIndex`] kept in a sled tree ([`DurableStream::TREE`]), so stream
/// positions, outliers and peer read positions survive a restart.
///
/// Each placed entry is stored under its position, each outlier under its id,
/// each peer position under the peer, in the record forms of
/// [`StreamIndex::to_bytes`]; opening rebuilds the index with the same strict
/// checks as [`StreamIndex::from_bytes`]. Every change is one atomic batch,
/// flushed before the call returns `Ok`. If writing fails the in-memory index
/// may be ahead of the disk, so every later call fails with
/// [`ReplicationError::Storage`] until the stream is reopened.
#[derive(Debug)]
pub struct DurableStream {
    index: StreamIndex,
    tree: sled::Tree,
    broken: bool,
}

const ENTRY_PREFIX: u8 = b'e';
const OUTLIER_PREFIX: u8 = b'o';
const PEER_PREFIX: u8 = b'p';

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn sled_error(e: sled::Error) -> ReplicationError {
    ReplicationError::Storage(e.to_string())
}

fn record_reader(bytes: &[u8]) -> Reader<'_> {
    Reader::new(
        bytes,
        Limits {
            max_depth: 3,
            max_len: (MAX_PARENTS + 1) as u64 * (MAX_CID_LEN as u64 + 3),
        },
    )
}

impl DurableStream {
    /// The name of the sled tree the stream uses inside a database.
    pub const TREE: &'static str = "ecomesh-stream";

    /// Opens (creating if needed) a sled database in `dir` and the stream in it,
    /// waiting a moment for a lock a dropped handle in this process still holds.
    pub fn open(dir: &std::path::Path) -> Result<Self, ReplicationError> {
        Self::open_in(&crate::queue::open_db(dir)?)
    }

    /// Opens the stream in the tree [`Self::TREE`] of an open database (the
    /// sync queue's, for example). A record that does not decode, entries
    /// whose positions are not 1, 2, 3..., or any state
    /// [`StreamIndex::from_bytes`] would refuse is [`ReplicationError::Malformed`].
    pub fn open_in(db: &sled::Db) -> Result<Self, ReplicationError> {
        let tree = db.open_tree(Self::TREE).map_err(sled_error)?;
        let mut index = StreamIndex::new();
        for kv in tree.scan_prefix([ENTRY_PREFIX]) {
            let (k, v) = kv.map_err(sled_error)?;
            let position = <[u8; 8]>::try_from(&k[1..])
                .map(u64::from_be_bytes)
                .map_err(|_| bad("entry key"))?;
            if position != index.head() + 1 {
                return Err(bad(format!("entry {position} after {}", index.head())));
            }
            let mut r = record_reader(&v);
            let (kind, id, parents, source) = read_entry(&mut r).map_err(wire_to_bad)?;
            r.finish().map_err(|e| bad(e.to_string()))?;
            index.restore_entry(kind, id, parents, source)?;
        }
        for kv in tree.scan_prefix([OUTLIER_PREFIX]) {
            let (k, v) = kv.map_err(sled_error)?;
            let mut r = record_reader(&v);
            let (id, parents, source) = read_outlier(&mut r).map_err(wire_to_bad)?;
            r.finish().map_err(|e| bad(e.to_string()))?;
            if k[1..] != id.0[..] {
                return Err(bad("outlier stored under another id"));
            }
            index.restore_outlier(id, parents, source)?;
        }
        index.finish_restore()?;
        for kv in tree.scan_prefix([PEER_PREFIX]) {
            let (k, v) = kv.map_err(sled_error)?;
            let peer = PeerId::from_slice(&k[1..]).map_err(|e| bad(e.to_string()))?;
            let position = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| bad("peer position"))?;
            index.peers.insert(peer, position);
        }
        Ok(DurableStream {
            index,
            tree,
            broken: false,
        })
    }

    /// The index (read-only: positions, outliers, delta pages).
    pub fn index(&self) -> &StreamIndex {
        &self.index
    }

    fn check(&self) -> Result<(), ReplicationError> {
        if self.broken {
            return Err(ReplicationError::Storage(
                "an earlier write failed; reopen the stream".into(),
            ));
        }
        Ok(())
    }

    fn commit(&mut self, batch: sled::Batch) -> Result<(), ReplicationError> {
        let result = self
            .tree
            .apply_batch(batch)
            .and_then(|()| self.tree.flush().map(|_| ()))
            .map_err(sled_error);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// [`StreamIndex::ingest`], durable when it returns `Ok`.
    pub fn ingest(
        &mut self,
        id: ContentId,
        parents: Vec<ContentId>,
        source: Source,
    ) -> Result<Vec<Ingested>, ReplicationError> {
        self.check()?;
        let out = self.index.ingest(id, parents, source)?;
        if out.is_empty() {
            return Ok(out);
        }
        let mut batch = sled::Batch::default();
        for event in &out {
            match event.position {
                Some(position) => {
                    let Some(e) = position
                        .checked_sub(1)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| self.index.log.get(i))
                    else {
                        continue;
                    };
                    let mut w = Writer::new();
                    write_entry(&mut w, e.kind, &e.id, &e.parents, &e.source);
                    batch.insert(
                        prefixed(ENTRY_PREFIX, &position.to_be_bytes()),
                        w.into_bytes(),
                    );
                    batch.remove(prefixed(OUTLIER_PREFIX, &e.id.0));
                }
                None => {
                    if let Some(o) = self.index.outliers.get(&event.id) {
                        let mut w = Writer::new();
                        write_outlier(&mut w, &event.id, &o.parents, &o.source);
                        batch.insert(prefixed(OUTLIER_PREFIX, &event.id.0), w.into_bytes());
                    }
                }
            }
        }
        self.commit(batch)?;
        Ok(out)
    }

    /// [`StreamIndex::observe_peer`], durable when it returns `Ok`.
    pub fn observe_peer(
        &mut self,
        peer: PeerId,
        position: Position,
    ) -> Result<Position, ReplicationError> {
        self.check()?;
        let known = self.index.peers.get(&peer).copied();
        let now = self.index.observe_peer(peer, position);
        if known != Some(now) {
            let mut batch = sled::Batch::default();
            batch.insert(prefixed(PEER_PREFIX, peer.as_bytes()), &now.to_be_bytes());
            self.commit(batch)?;
        }
        Ok(now)
    }
}

fn wire_to_bad(e: ReplicationError) -> ReplicationError {
    match e {
        ReplicationError::Wire(e) => bad(e.to_string()),
        other => other,
    }
}

fn bad(detail: impl Into<String>) -> ReplicationError {
    ReplicationError::Malformed {
        what: "stream index",
        detail: detail.into(),
    }
}

fn expect_len(r: &mut Reader<'_>, want: usize) -> Result<(), ReplicationError> {
    let n = r.read_array_len()?;
    if n != want {
        return Err(bad(format!("array of {n} items where {want} belong")));
    }
    Ok(())
}

fn bounded_len(r: &mut Reader<'_>) -> Result<usize, ReplicationError> {
    let n = r.read_array_len()?;
    if n > MAX_ENTRIES {
        return Err(ReplicationError::TooLarge {
            what: "stream index list",
            size: n,
            max: MAX_ENTRIES,
        });
    }
    Ok(n)
}

fn read_cid(r: &mut Reader<'_>) -> Result<ContentId, ReplicationError> {
    let b = r.read_bytes()?;
    if b.is_empty() || b.len() > MAX_CID_LEN {
        return Err(bad(format!("content id of {} bytes", b.len())));
    }
    Ok(ContentId(b.to_vec()))
}

fn read_peer(r: &mut Reader<'_>) -> Result<PeerId, ReplicationError> {
    PeerId::from_slice(r.read_bytes()?).map_err(|e| bad(e.to_string()))
}

fn write_version(w: &mut Writer, id: &ContentId, parents: &[ContentId], source: &Source) {
    w.bytes(&id.0);
    w.array(parents.len());
    for p in parents {
        w.bytes(&p.0);
    }
    match source {
        Source::Local => w.null(),
        Source::Remote(p) => w.bytes(p.as_bytes()),
    }
}

fn write_entry(
    w: &mut Writer,
    kind: EventKind,
    id: &ContentId,
    parents: &[ContentId],
    source: &Source,
) {
    w.array(4);
    w.uint(kind.code());
    write_version(w, id, parents, source);
}

fn write_outlier(w: &mut Writer, id: &ContentId, parents: &[ContentId], source: &Source) {
    w.array(3);
    write_version(w, id, parents, source);
}

type Version = (ContentId, Vec<ContentId>, Source);

fn read_entry(
    r: &mut Reader<'_>,
) -> Result<(EventKind, ContentId, Vec<ContentId>, Source), ReplicationError> {
    expect_len(r, 4)?;
    let kind = match r.read_uint()? {
        0 => EventKind::Local,
        1 => EventKind::New,
        2 => EventKind::Backfill,
        other => return Err(bad(format!("entry kind {other}"))),
    };
    let (id, parents, source) = read_version(r)?;
    Ok((kind, id, parents, source))
}

fn read_outlier(r: &mut Reader<'_>) -> Result<Version, ReplicationError> {
    expect_len(r, 3)?;
    read_version(r)
}

fn read_version(r: &mut Reader<'_>) -> Result<Version, ReplicationError> {
    let id = read_cid(r)?;
    let n = r.read_array_len()?;
    if n > MAX_PARENTS {
        return Err(ReplicationError::TooLarge {
            what: "stream parents",
            size: n,
            max: MAX_PARENTS,
        });
    }
    let mut parents = Vec::with_capacity(n);
    for _ in 0..n {
        parents.push(read_cid(r)?);
    }
    let source = if r.read_null_or()? {
        Source::Local
    } else {
        Source::Remote(read_peer(r)?)
    };
    Ok((id, parents, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cid(n: u8) -> ContentId {
        ContentId(vec![0x01, n])
    }

    fn peer(n: u8) -> PeerId {
        PeerId::from_digest([n; 32])
    }

    fn remote(n: u8) -> Source {
        Source::Remote(peer(n))
    }

    fn kinds(out: &[Ingested]) -> Vec<(u8, EventKind, Option<Position>)> {
        out.iter()
            .map(|i| (i.id.0[1], i.kind, i.position))
            .collect()
    }

    #[test]
    fn local_versions_are_local() {
        let mut s = StreamIndex::new();
        let out = s.ingest(cid(1), vec![], Source::Local).unwrap();
        assert_eq!(kinds(&out), vec![(1, EventKind::Local, Some(1))]);
        let out = s.ingest(cid(2), vec![cid(1)], Source::Local).unwrap();
        assert_eq!(kinds(&out), vec![(2, EventKind::Local, Some(2))]);
    }

    #[test]
    fn received_with_known_parents_is_new() {
        let mut s = StreamIndex::new();
        s.ingest(cid(1), vec![], Source::Local).unwrap();
        let out = s.ingest(cid(2), vec![cid(1)], remote(9)).unwrap();
        assert_eq!(kinds(&out), vec![(2, EventKind::New, Some(2))]);
        // A root received from a peer is New too.
        let out = s.ingest(cid(3), vec![], remote(9)).unwrap();
        assert_eq!(kinds(&out), vec![(3, EventKind::New, Some(3))]);
    }

    #[test]
    fn already_held_is_no_event() {
        let mut s = StreamIndex::new();
        s.ingest(cid(1), vec![], remote(1)).unwrap();
        assert!(s.ingest(cid(1), vec![], remote(2)).unwrap().is_empty());
        s.ingest(cid(3), vec![cid(2)], remote(1)).unwrap();
        assert!(
            s.ingest(cid(3), vec![cid(2)], remote(1))
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.head(), 1);
    }

    #[test]
    fn missing_parent_is_an_outlier_until_it_arrives() {
        let mut s = StreamIndex::new();
        s.ingest(cid(1), vec![], Source::Local).unwrap();
        let out = s.ingest(cid(3), vec![cid(1), cid(2)], remote(4)).unwrap();
        assert_eq!(kinds(&out), vec![(3, EventKind::Outlier, None)]);
        assert_eq!(s.position_of(&cid(3)), None);
        assert_eq!(s.outliers().collect::<Vec<_>>(), vec![&cid(3)]);
        // The missing parent arrives: it is backfill (3 already names it), and
        // the outlier is placed right after it as New.
        let out = s.ingest(cid(2), vec![cid(1)], remote(4)).unwrap();
        assert_eq!(
            kinds(&out),
            vec![
                (2, EventKind::Backfill, Some(2)),
                (3, EventKind::New, Some(3))
            ]
        );
        assert_eq!(s.outliers().count(), 0);
    }

    #[test]
    fn a_chain_of_outliers_resolves_in_parent_order() {
        let mut s = StreamIndex::new();
        // 4 <- 3 <- 2 <- 1 (root) arrive newest first.
        assert_eq!(
            kinds(&s.ingest(cid(4), vec![cid(3)], remote(1)).unwrap())[0].1,
            EventKind::Outlier
        );
        assert_eq!(
            kinds(&s.ingest(cid(3), vec![cid(2)], remote(1)).unwrap())[0].1,
            EventKind::Outlier
        );
        // 2's parent 1 is missing too.
        assert_eq!(
            kinds(&s.ingest(cid(2), vec![cid(1)], remote(1)).unwrap())[0].1,
            EventKind::Outlier
        );
        let out = s.ingest(cid(1), vec![], remote(1)).unwrap();
        assert_eq!(
            kinds(&out),
            vec![
                (1, EventKind::Backfill, Some(1)),
                (2, EventKind::Backfill, Some(2)),
                (3, EventKind::Backfill, Some(3)),
                (4, EventKind::New, Some(4)),
            ]
        );
    }

    #[test]
    fn a_child_of_an_outlier_is_an_outlier() {
        let mut s = StreamIndex::new();
        s.ingest(cid(2), vec![cid(1)], remote(1)).unwrap();
        let out = s.ingest(cid(3), vec![cid(2)], remote(1)).unwrap();
        assert_eq!(kinds(&out), vec![(3, EventKind::Outlier, None)]);
        let out = s.ingest(cid(1), vec![], remote(1)).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(s.position_of(&cid(3)), Some(3));
    }

    #[test]
    fn classify_against_a_custom_view() {
        struct View;
        impl DagView for View {
            fn contains(&self, id: &ContentId) -> bool {
                id.0[1] <= 5
            }
            fn is_complete(&self, id: &ContentId) -> bool {
                id.0[1] <= 4
            }
            fn is_parent_of_held(&self, id: &ContentId) -> bool {
                id.0[1] == 7
            }
        }
        assert_eq!(classify(&View, &cid(1), &[], remote(1)), None);
        assert_eq!(
            classify(&View, &cid(8), &[cid(9)], Source::Local),
            Some(EventKind::Local)
        );
        assert_eq!(
            classify(&View, &cid(8), &[cid(5)], remote(1)),
            Some(EventKind::Outlier)
        );
        assert_eq!(
            classify(&View, &cid(7), &[cid(4)], remote(1)),
            Some(EventKind::Backfill)
        );
        assert_eq!(
            classify(&View, &cid(8), &[cid(4)], remote(1)),
            Some(EventKind::New)
        );
    }

    #[test]
    fn delta_sync_pages_through_the_stream() {
        let mut s = StreamIndex::new();
        for n in 1..=10 {
            let parents = if n == 1 { vec![] } else { vec![cid(n - 1)] };
            s.ingest(cid(n), parents, Source::Local).unwrap();
        }
        let d = s.changes_since(0, 4);
        assert_eq!(
            d.entries.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!((d.next, d.more), (4, true));
        let d = s.changes_since(d.next, 4);
        assert_eq!(d.entries[0].id, cid(5));
        let d = s.changes_since(8, 4);
        assert_eq!((d.entries.len(), d.next, d.more), (2, 10, false));
        let d = s.changes_since(10, 4);
        assert_eq!((d.entries.len(), d.next, d.more), (0, 10, false));
        let d = s.changes_since(u64::MAX, 4);
        assert_eq!((d.entries.len(), d.next), (0, u64::MAX));
        assert_eq!(s.changes_since(0, 0).entries.len(), 1);
    }

    #[test]
    fn delta_sync_between_two_streams_converges() {
        let mut a = StreamIndex::new();
        let mut b = StreamIndex::new();
        a.ingest(cid(1), vec![], Source::Local).unwrap();
        a.ingest(cid(2), vec![cid(1)], Source::Local).unwrap();
        b.ingest(cid(3), vec![], Source::Local).unwrap();
        let sync = |from: &StreamIndex, from_peer: PeerId, to: &mut StreamIndex| {
            loop {
                let d = from.changes_since(to.peer_position(&from_peer), 1);
                for e in &d.entries {
                    to.ingest(e.id.clone(), e.parents.clone(), Source::Remote(from_peer))
                        .unwrap();
                }
                to.observe_peer(from_peer, d.next);
                if !d.more {
                    break;
                }
            }
        };
        sync(&a, peer(1), &mut b);
        sync(&b, peer(2), &mut a);
        // b's stream now holds a's two versions, a's holds all three.
        for n in 1..=3 {
            assert!(a.position_of(&cid(n)).is_some());
            assert!(b.position_of(&cid(n)).is_some());
        }
        assert_eq!(b.peer_position(&peer(1)), 2);
        // a asked b for everything since 0 and saw b's three entries; a's own
        // two come back as already held.
        assert_eq!(a.peer_position(&peer(2)), 3);
        assert_eq!(a.head(), 3);
        // A second round moves nothing.
        let before = (a.head(), b.head());
        sync(&a, peer(1), &mut b);
        sync(&b, peer(2), &mut a);
        assert_eq!((a.head(), b.head()), before);
    }

    #[test]
    fn peer_positions_never_go_back() {
        let mut s = StreamIndex::new();
        assert_eq!(s.peer_position(&peer(1)), 0);
        assert_eq!(s.observe_peer(peer(1), 5), 5);
        assert_eq!(s.observe_peer(peer(1), 3), 5);
        assert_eq!(s.peer_position(&peer(1)), 5);
    }

    #[test]
    fn bounds_are_typed_errors_and_change_nothing() {
        let mut s = StreamIndex::new();
        assert!(s.ingest(ContentId(vec![]), vec![], Source::Local).is_err());
        assert!(matches!(
            s.ingest(ContentId(vec![1; MAX_CID_LEN + 1]), vec![], Source::Local),
            Err(ReplicationError::TooLarge { .. })
        ));
        let many: Vec<ContentId> = (0..=MAX_PARENTS)
            .map(|i| ContentId(vec![9, i as u8]))
            .collect();
        assert!(s.ingest(cid(1), many, remote(1)).is_err());
        assert_eq!(s, StreamIndex::new());
    }

    #[test]
    fn durable_stream_survives_reopen_with_outliers_and_peer_positions() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        // It shares the database with the sync queue.
        let queue = crate::queue::SyncQueue::open_in(&db).unwrap();
        let mut d = DurableStream::open_in(&db).unwrap();
        d.ingest(cid(1), vec![], Source::Local).unwrap();
        d.ingest(cid(3), vec![cid(2)], remote(1)).unwrap();
        d.ingest(cid(4), vec![cid(3)], remote(1)).unwrap();
        assert_eq!(d.observe_peer(peer(1), 7).unwrap(), 7);
        assert_eq!(d.observe_peer(peer(1), 2).unwrap(), 7);
        let before = d.index().clone();
        drop(d);
        let mut d = DurableStream::open_in(&db).unwrap();
        assert_eq!(d.index(), &before);
        assert_eq!(d.index().head(), 1);
        assert_eq!(d.index().peer_position(&peer(1)), 7);
        // The gap closes after the restart: both outliers are placed.
        let out = d.ingest(cid(2), vec![cid(1)], remote(1)).unwrap();
        assert_eq!(out.len(), 3);
        drop(d);
        drop(queue);
        drop(db);
        let d = DurableStream::open(dir.path()).unwrap();
        assert_eq!(d.index().head(), 4);
        assert_eq!(d.index().outliers().count(), 0);
        assert_eq!(d.index().position_of(&cid(4)), Some(4));
        assert_eq!(d.index().changes_since(0, 10).entries.len(), 4);
    }

    #[test]
    fn durable_stream_refuses_corrupt_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut d = DurableStream::open_in(&db).unwrap();
        d.ingest(cid(1), vec![], Source::Local).unwrap();
        d.ingest(cid(2), vec![cid(1)], remote(1)).unwrap();
        drop(d);
        let tree = db.open_tree(DurableStream::TREE).unwrap();
        let malformed = |db: &sled::Db| {
            matches!(
                DurableStream::open_in(db),
                Err(ReplicationError::Malformed { .. })
            )
        };
        // A garbage entry record.
        let good = tree
            .get(prefixed(ENTRY_PREFIX, &2_u64.to_be_bytes()))
            .unwrap()
            .unwrap();
        tree.insert(
            prefixed(ENTRY_PREFIX, &2_u64.to_be_bytes()),
            &[0x84, 0x09][..],
        )
        .unwrap();
        assert!(malformed(&db));
        // A gap in the positions.
        tree.remove(prefixed(ENTRY_PREFIX, &2_u64.to_be_bytes()))
            .unwrap();
        tree.insert(prefixed(ENTRY_PREFIX, &3_u64.to_be_bytes()), good.clone())
            .unwrap();
        assert!(malformed(&db));
        tree.remove(prefixed(ENTRY_PREFIX, &3_u64.to_be_bytes()))
            .unwrap();
        tree.insert(prefixed(ENTRY_PREFIX, &2_u64.to_be_bytes()), good)
            .unwrap();
        assert!(DurableStream::open_in(&db).is_ok());
        // A bad peer key and a bad peer position.
        tree.insert(prefixed(PEER_PREFIX, &[1, 2]), &5_u64.to_be_bytes())
            .unwrap();
        assert!(malformed(&db));
        tree.remove(prefixed(PEER_PREFIX, &[1, 2])).unwrap();
        tree.insert(prefixed(PEER_PREFIX, peer(1).as_bytes()), &[5][..])
            .unwrap();
        assert!(malformed(&db));
        tree.remove(prefixed(PEER_PREFIX, peer(1).as_bytes()))
            .unwrap();
        // An outlier under the wrong key, and an outlier with no gap.
        let mut w = Writer::new();
        write_outlier(&mut w, &cid(9), &[cid(8)], &Source::Local);
        tree.insert(prefixed(OUTLIER_PREFIX, &cid(7).0), w.into_bytes())
            .unwrap();
        assert!(malformed(&db));
        tree.remove(prefixed(OUTLIER_PREFIX, &cid(7).0)).unwrap();
        let mut w = Writer::new();
        write_outlier(&mut w, &cid(9), &[cid(1)], &Source::Local);
        tree.insert(prefixed(OUTLIER_PREFIX, &cid(9).0), w.into_bytes())
            .unwrap();
        assert!(malformed(&db));
    }

    #[test]
    fn durable_stream_matches_the_in_memory_index_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DurableStream::open(dir.path()).unwrap();
        let mut model = StreamIndex::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..300 {
            let r = next();
            let id = cid((r % 64) as u8);
            let parents: Vec<ContentId> = (0..(r >> 8) % 3)
                .map(|i| cid(((r >> (16 + 8 * i)) % 64) as u8))
                .collect();
            let source = if (r >> 40) % 5 == 0 {
                Source::Local
            } else {
                remote(((r >> 44) % 3) as u8)
            };
            assert_eq!(
                d.ingest(id.clone(), parents.clone(), source).unwrap(),
                model.ingest(id, parents, source).unwrap()
            );
            if (r >> 50) % 4 == 0 {
                let p = peer(((r >> 52) % 3) as u8);
                let pos = (r >> 54) % 100;
                assert_eq!(d.observe_peer(p, pos).unwrap(), model.observe_peer(p, pos));
            }
            if step % 50 == 49 {
                drop(d);
                d = DurableStream::open(dir.path()).unwrap();
                assert_eq!(d.index(), &model, "after reopen at step {step}");
            }
        }
    }

    fn build(ops: &[(u8, Vec<u8>, Option<u8>)]) -> StreamIndex {
        let mut s = StreamIndex::new();
        for (id, parents, src) in ops {
            let source = src.map_or(Source::Local, remote);
            s.ingest(cid(*id), parents.iter().map(|p| cid(*p)).collect(), source)
                .unwrap();
        }
        s
    }

    fn arb_ops() -> impl Strategy<Value = Vec<(u8, Vec<u8>, Option<u8>)>> {
        proptest::collection::vec(
            (
                0_u8..24,
                proptest::collection::vec(0_u8..24, 0..3),
                proptest::option::weighted(0.8, 0_u8..3),
            ),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn prop_bytes_round_trip(ops in arb_ops(), peers in proptest::collection::vec((0_u8..4, 0_u64..50), 0..4)) {
            let mut s = build(&ops);
            for (p, pos) in peers {
                s.observe_peer(peer(p), pos);
            }
            let bytes = s.to_bytes();
            let back = StreamIndex::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(back.to_bytes(), bytes);
        }

        #[test]
        fn prop_stream_order_and_positions(ops in arb_ops()) {
            let s = build(&ops);
            let d = s.changes_since(0, MAX_DELTA);
            let mut placed = BTreeSet::new();
            for (i, e) in d.entries.iter().enumerate() {
                prop_assert_eq!(e.position, i as u64 + 1);
                prop_assert!(e.kind != EventKind::Outlier);
                if e.kind != EventKind::Local {
                    prop_assert!(e.parents.iter().all(|p| placed.contains(p)), "entry before its parents");
                }
                prop_assert!(placed.insert(e.id.clone()), "placed twice");
            }
            // Every outlier has a parent that is not placed; every version seen is held once.
            for o in s.outliers() {
                prop_assert!(!placed.contains(o));
            }
            let seen: BTreeSet<_> = ops.iter().map(|(id, _, _)| cid(*id)).collect();
            prop_assert_eq!(placed.len() + s.outliers().count(), seen.len());
        }

        #[test]
        fn prop_corrupt_bytes_never_panic(ops in arb_ops(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
            let mut bytes = build(&ops).to_bytes();
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            if let Ok(s) = StreamIndex::from_bytes(&bytes) {
                prop_assert_eq!(s.to_bytes(), bytes.clone());
            }
            let cut = cut % (bytes.len() + 1);
            let _ = StreamIndex::from_bytes(&bytes[..cut]);
        }
    }
}
