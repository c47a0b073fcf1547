//! The Merkle collection index: a history-independent hash trie per collection.
//!
//! Each document of a collection is one entry `(sha256(id), id, heads digest)`,
//! placed by the nibbles of `sha256(id)`. A node is a *bucket* (its entries,
//! sorted by hash) when its subtree holds at most [`BUCKET_MAX`] entries, and a
//! *branch* of 16 children otherwise. The shape therefore depends only on the
//! set of entries, never on the order of writes, so equal contents give equal
//! node hashes and equal roots. A write rewrites only the nodes on one
//! root-to-leaf path: O(log16(n / BUCKET_MAX)) nodes.
//!
//! Nodes are DAG-CBOR documents; a branch links its children by CID, so the
//! collection root CID commits to every entry and two stores find their
//! differences by descending from the roots.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ecomesh_types::{ContentId, Map, Value};
use ecomesh_wire::{Limits, Reader};
use sha2::{Digest, Sha256};

use crate::StoreError;
use crate::codec;
use crate::keys::{self, TRIE};
use crate::txn::Txn;

/// Largest number of entries a bucket holds before it splits into a branch.
pub const BUCKET_MAX: usize = 16;

/// Nibbles in a 32-byte hash: the deepest level a branch can reach.
const MAX_DEPTH: usize = 64;

/// One document in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `sha256(id)`: the entry's position.
    pub key_hash: [u8; 32],
    /// The document id.
    pub id: String,
    /// Digest of the document's version heads.
    pub value: [u8; 32],
}

impl Entry {
    /// An entry for document `id` whose heads digest is `value`.
    pub fn new(id: &str, value: [u8; 32]) -> Self {
        Entry {
            key_hash: Sha256::digest(id.as_bytes()).into(),
            id: id.to_owned(),
            value,
        }
    }
}

/// A link to a child node with the number of entries below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRef {
    /// The child's CID.
    pub cid: ContentId,
    /// Entries in the child's subtree.
    pub count: u64,
}

/// A trie node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A leaf holding at most [`BUCKET_MAX`] entries (more only at the maximum depth).
    Bucket(Vec<Entry>),
    /// An inner node with one optional child per nibble.
    Branch(Box<[Option<ChildRef>; 16]>),
}

impl Node {
    fn count(&self) -> u64 {
        match self {
            Node::Bucket(entries) => entries.len() as u64,
            Node::Branch(children) => children.iter().flatten().map(|c| c.count).sum(),
        }
    }

    /// The node as a DAG-CBOR document.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        match self {
            Node::Bucket(entries) => {
                let list = entries
                    .iter()
                    .map(|e| {
                        Value::Array(vec![
                            Value::Text(e.id.clone()),
                            Value::Bytes(e.value.to_vec()),
                        ])
                    })
                    .collect();
                map.insert("e".into(), Value::Array(list));
            }
            Node::Branch(children) => {
                let list = children
                    .iter()
                    .map(|c| match c {
                        None => Value::Null,
                        Some(c) => Value::Array(vec![
                            Value::Link(c.cid.clone()),
                            Value::Integer(i64::try_from(c.count).unwrap_or(i64::MAX)),
                        ]),
                    })
                    .collect();
                map.insert("c".into(), Value::Array(list));
            }
        }
        Value::Map(map)
    }

    /// Parses a node document, checking every field (stored bytes are untrusted).
    pub fn from_value(v: &Value) -> Result<Node, String> {
        let map = v.as_map().ok_or("trie node is not a map")?;
        if map.len() != 1 {
            return Err("trie node must have exactly one field".into());
        }
        if let Some(entries) = map.get("e") {
            let list = entries.as_array().ok_or("bucket entries are not a list")?;
            let mut out = Vec::with_capacity(list.len());
            for item in list {
                let pair = item.as_array().ok_or("bucket entry is not a pair")?;
                let [Value::Text(id), Value::Bytes(value)] = pair else {
                    return Err("bucket entry is not [text, bytes]".into());
                };
                let value: [u8; 32] = value
                    .as_slice()
                    .try_into()
                    .map_err(|_| "heads digest is not 32 bytes")?;
                out.push(Entry::new(id, value));
            }
            if !out.windows(2).all(|w| w[0].key_hash < w[1].key_hash) {
                return Err("bucket entries are not sorted by hash".into());
            }
            return Ok(Node::Bucket(out));
        }
        if let Some(children) = map.get("c") {
            let list = children
                .as_array()
                .ok_or("branch children are not a list")?;
            if list.len() != 16 {
                return Err("branch does not have 16 children".into());
            }
            let mut out: [Option<ChildRef>; 16] = Default::default();
            for (slot, item) in out.iter_mut().zip(list) {
                *slot = match item {
                    Value::Null => None,
                    Value::Array(pair) => match pair.as_slice() {
                        [Value::Link(cid), Value::Integer(count)] if *count > 0 => Some(ChildRef {
                            cid: cid.clone(),
                            count: *count as u64,
                        }),
                        _ => return Err("branch child is not [link, count > 0]".into()),
                    },
                    _ => return Err("branch child is neither null nor a pair".into()),
                };
            }
            return Ok(Node::Branch(Box::new(out)));
        }
        Err("trie node has neither `e` nor `c`".into())
    }
}

impl Node {
    /// The node's canonical DAG-CBOR bytes: exactly
    /// `to_dag_cbor(&self.to_value())`, written directly without building a
    /// [`Value`].
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Node::Bucket(entries) => {
                let mut out = Vec::with_capacity(8 + entries.len() * 48);
                out.extend_from_slice(&[0xa1, 0x61, b'e']);
                head(&mut out, MAJOR_ARRAY, entries.len() as u64);
                for e in entries {
                    out.push(0x82);
                    head(&mut out, MAJOR_TEXT, e.id.len() as u64);
                    out.extend_from_slice(e.id.as_bytes());
                    head(&mut out, MAJOR_BYTES, 32);
                    out.extend_from_slice(&e.value);
                }
                out
            }
            Node::Branch(children) => {
                let mut out = Vec::with_capacity(4 + 16 * 48);
                out.extend_from_slice(&[0xa1, 0x61, b'c', 0x90]);
                for c in children.iter() {
                    match c {
                        None => out.push(0xf6),
                        Some(c) => {
                            out.push(0x82);
                            // Tag 42 around 0x00 and the binary CID.
                            out.extend_from_slice(&[0xd8, 42]);
                            head(&mut out, MAJOR_BYTES, c.cid.0.len() as u64 + 1);
                            out.push(0x00);
                            out.extend_from_slice(&c.cid.0);
                            head(&mut out, MAJOR_UINT, c.count.min(i64::MAX as u64));
                        }
                    }
                }
                out
            }
        }
    }

    /// Decodes stored node bytes strictly, accepting exactly what
    /// `Node::from_value(&from_dag_cbor(bytes)?)` accepts (stored bytes are
    /// untrusted), without building a [`Value`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Node, String> {
        let mut r = Reader::new(bytes, Limits::DEFAULT);
        let node = Self::read(&mut r).map_err(|e| e.0)?;
        r.finish().map_err(|e| e.to_string())?;
        Ok(node)
    }

    fn read(r: &mut Reader<'_>) -> Result<Node, ReadError> {
        if r.read_map_len()? != 1 {
            return Err("trie node must have exactly one field".into());
        }
        match r.read_text()? {
            "e" => {
                let n = r.read_array_len()?;
                // Each entry takes at least 36 bytes: no allocation beyond the input.
                let mut out: Vec<Entry> = Vec::with_capacity(n.min(r.remaining() / 36));
                for _ in 0..n {
                    if r.read_array_len()? != 2 {
                        return Err("bucket entry is not [text, bytes]".into());
                    }
                    let id = r.read_text()?;
                    let value: [u8; 32] = r
                        .read_bytes()?
                        .try_into()
                        .map_err(|_| ReadError::from("heads digest is not 32 bytes"))?;
                    let entry = Entry::new(id, value);
                    if out.last().is_some_and(|p| p.key_hash >= entry.key_hash) {
                        return Err("bucket entries are not sorted by hash".into());
                    }
                    out.push(entry);
                }
                Ok(Node::Bucket(out))
            }
            "c" => {
                if r.read_array_len()? != 16 {
                    return Err("branch does not have 16 children".into());
                }
                let mut out: [Option<ChildRef>; 16] = Default::default();
                for slot in &mut out {
                    if r.read_null_or()? {
                        continue;
                    }
                    if r.read_array_len()? != 2 {
                        return Err("branch child is not [link, count > 0]".into());
                    }
                    let cid = ContentId(r.read_link()?.to_vec());
                    let count = r.read_int()?;
                    if count <= 0 {
                        return Err("branch child is not [link, count > 0]".into());
                    }
                    *slot = Some(ChildRef {
                        cid,
                        count: count as u64,
                    });
                }
                Ok(Node::Branch(Box::new(out)))
            }
            _ => Err("trie node has neither `e` nor `c`".into()),
        }
    }
}

/// Why node bytes did not decode: a CBOR error or a wrong shape.
#[derive(Debug)]
struct ReadError(String);

impl From<&str> for ReadError {
    fn from(s: &str) -> Self {
        ReadError(s.to_owned())
    }
}

impl From<ecomesh_wire::WireError> for ReadError {
    fn from(e: ecomesh_wire::WireError) -> Self {
        ReadError(e.to_string())
    }
}

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;

/// Appends a CBOR item head with the shortest argument (RFC 8949 4.2.1).
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

fn nibble(hash: &[u8; 32], depth: usize) -> usize {
    let byte = hash[depth / 2];
    usize::from(if depth.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0F
    })
}

/// Storage key of the node at `path` (nibbles from the root) in `collection`.
pub(crate) fn node_key(collection: &str, path: &[u8]) -> Vec<u8> {
    let mut k = keys::key(TRIE, &[collection.as_bytes()]);
    k.push(path.len() as u8);
    k.extend_from_slice(path);
    k
}

fn corrupt(collection: &str, path: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        collection: collection.to_owned(),
        id: format!("merkle node at depth {}", path.len()),
        reason,
    }
}

/// Loads the node at `path` from the backend (through `txn`), or `None` when
/// that part of the trie is empty.
pub(crate) fn load(
    txn: &Txn<'_>,
    collection: &str,
    path: &[u8],
) -> Result<Option<Node>, StoreError> {
    let Some(bytes) = txn.get(&node_key(collection, path))? else {
        return Ok(None);
    };
    Node::from_bytes(&bytes)
        .map(Some)
        .map_err(|reason| corrupt(collection, path, reason))
}

/// Decoded trie nodes as committed, kept between writes so that a write does
/// not read and decode the nodes on its path again; at most a fixed number of
/// nodes, the least recently used dropped first.
///
/// It lives under the store's writer lock. A write takes the nodes it needs
/// out of it into its [`Work`] and gives them back only after its batch
/// committed ([`Work::release`]), so the cache never holds a node the backend
/// does not.
#[derive(Debug)]
pub(crate) struct NodeCache {
    nodes: HashMap<Vec<u8>, (Node, u64)>,
    max: usize,
    tick: u64,
}

impl NodeCache {
    /// An empty cache of at most `max` nodes (0 keeps none).
    pub(crate) fn new(max: usize) -> Self {
        NodeCache {
            nodes: HashMap::new(),
            max,
            tick: 0,
        }
    }

    fn take(&mut self, key: &[u8]) -> Option<Node> {
        self.nodes.remove(key).map(|(n, _)| n)
    }

    fn put(&mut self, key: Vec<u8>, node: Node) {
        if self.max == 0 {
            return;
        }
        self.tick += 1;
        self.nodes.insert(key, (node, self.tick));
        if self.nodes.len() > self.max {
            // Drop the least recently used quarter in one pass, so eviction
            // costs O(1) amortized per insertion.
            let keep = self.max - self.max / 4;
            let mut ticks: Vec<u64> = self.nodes.values().map(|(_, t)| *t).collect();
            let cut = ticks.len() - keep;
            let (_, &mut threshold, _) = ticks.select_nth_unstable(cut);
            self.nodes.retain(|_, (_, t)| *t >= threshold);
        }
    }

    fn forget(&mut self, key: &[u8]) {
        self.nodes.remove(key);
    }

    /// Nodes held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// One node a write has loaded or changed.
#[derive(Debug)]
struct Slot {
    /// The node, `None` where that part of the trie is (now) empty.
    node: Option<Node>,
    /// Changed by this write, to be encoded and stored by [`Work::seal`].
    dirty: bool,
}

/// The trie nodes one write (or one batch of writes) works on.
///
/// Changes stay decoded in memory, with entry counts kept current, and only
/// [`seal`](Work::seal) encodes and hashes each changed node, once, deepest
/// first: a batch of many documents rewrites the upper nodes it shares once,
/// not once per document.
#[derive(Debug, Default)]
pub(crate) struct Work {
    slots: HashMap<Vec<u8>, Slot>,
    /// Changed paths, per collection.
    dirty: BTreeMap<String, BTreeSet<Vec<u8>>>,
}

impl Work {
    /// An empty working set.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Takes the node at `path` out of the working set (loading it from the
    /// cache, else from the backend, the first time); the caller puts it back
    /// with [`put`](Self::put) or [`restore`](Self::restore).
    fn take(
        &mut self,
        txn: &Txn<'_>,
        cache: &mut NodeCache,
        collection: &str,
        path: &[u8],
    ) -> Result<Option<Node>, StoreError> {
        let key = node_key(collection, path);
        if let Some(slot) = self.slots.get_mut(&key) {
            return Ok(slot.node.take());
        }
        let node = match cache.take(&key) {
            Some(node) => Some(node),
            None => load(txn, collection, path)?,
        };
        self.slots.insert(
            key,
            Slot {
                node: None,
                dirty: false,
            },
        );
        Ok(node)
    }

    /// Puts back, unchanged, a node [`take`](Self::take) returned.
    fn restore(&mut self, collection: &str, path: &[u8], node: Option<Node>) {
        if let Some(slot) = self.slots.get_mut(&node_key(collection, path)) {
            slot.node = node;
        }
    }

    /// Sets the node at `path` and marks it changed.
    fn put(&mut self, collection: &str, path: &[u8], node: Option<Node>) {
        self.slots
            .insert(node_key(collection, path), Slot { node, dirty: true });
        match self.dirty.get_mut(collection) {
            Some(paths) => {
                paths.insert(path.to_vec());
            }
            None => {
                self.dirty
                    .insert(collection.to_owned(), BTreeSet::from([path.to_vec()]));
            }
        }
    }

    /// Inserts or replaces `entry` in `collection`.
    pub(crate) fn upsert(
        &mut self,
        txn: &Txn<'_>,
        cache: &mut NodeCache,
        collection: &str,
        entry: Entry,
    ) -> Result<(), StoreError> {
        self.upsert_at(txn, cache, collection, &mut Vec::new(), entry)
            .map(|_| ())
    }

    /// Returns true when the entry is new (the subtree grew by one).
    fn upsert_at(
        &mut self,
        txn: &Txn<'_>,
        cache: &mut NodeCache,
        collection: &str,
        path: &mut Vec<u8>,
        entry: Entry,
    ) -> Result<bool, StoreError> {
        match self.take(txn, cache, collection, path)? {
            None => {
                self.put(collection, path, Some(Node::Bucket(vec![entry])));
                Ok(true)
            }
            Some(Node::Bucket(mut entries)) => {
                let added = match entries.binary_search_by(|e| e.key_hash.cmp(&entry.key_hash)) {
                    Ok(i) => {
                        entries[i] = entry;
                        false
                    }
                    Err(i) => {
                        entries.insert(i, entry);
                        true
                    }
                };
                self.build(collection, path, entries);
                Ok(added)
            }
            Some(Node::Branch(mut children)) => {
                let n = nibble(&entry.key_hash, path.len());
                path.push(n as u8);
                let result = self.upsert_at(txn, cache, collection, path, entry);
                path.pop();
                let added = match result {
                    Ok(added) => added,
                    Err(e) => {
                        self.restore(collection, path, Some(Node::Branch(children)));
                        return Err(e);
                    }
                };
                match &mut children[n] {
                    Some(child) => child.count += u64::from(added),
                    // A new child: `seal` sets its CID.
                    empty => {
                        *empty = Some(ChildRef {
                            cid: ContentId(Vec::new()),
                            count: 1,
                        });
                    }
                }
                self.put(collection, path, Some(Node::Branch(children)));
                Ok(added)
            }
        }
    }

    /// Sets the canonical subtree of `entries` (sorted by hash) at `path`: a
    /// bucket, or a branch over buckets when there are too many.
    fn build(&mut self, collection: &str, path: &mut Vec<u8>, entries: Vec<Entry>) {
        if entries.len() <= BUCKET_MAX || path.len() >= MAX_DEPTH {
            self.put(collection, path, Some(Node::Bucket(entries)));
            return;
        }
        let depth = path.len();
        let mut groups: BTreeMap<usize, Vec<Entry>> = BTreeMap::new();
        for e in entries {
            groups
                .entry(nibble(&e.key_hash, depth))
                .or_default()
                .push(e);
        }
        let mut children: [Option<ChildRef>; 16] = Default::default();
        for (n, group) in groups {
            children[n] = Some(ChildRef {
                cid: ContentId(Vec::new()),
                count: group.len() as u64,
            });
            path.push(n as u8);
            self.build(collection, path, group);
            path.pop();
        }
        self.put(collection, path, Some(Node::Branch(Box::new(children))));
    }

    /// Removes the entry with `key_hash` from `collection`, if it is there.
    pub(crate) fn remove(
        &mut self,
        txn: &Txn<'_>,
        cache: &mut NodeCache,
        collection: &str,
        key_hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        self.remove_at(txn, cache, collection, &mut Vec::new(), key_hash)
            .map(|_| ())
    }

    /// Returns true when an entry was removed.
    fn remove_at(
        &mut self,
        txn: &Txn<'_>,
        cache: &mut NodeCache,
        collection: &str,
        path: &mut Vec<u8>,
        key_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let mut children = match self.take(txn, cache, collection, path)? {
            None => return Ok(false),
            Some(Node::Bucket(mut entries)) => {
                let Ok(i) = entries.binary_search_by(|e| e.key_hash.cmp(key_hash)) else {
                    self.restore(collection, path, Some(Node::Bucket(entries)));
                    return Ok(false);
                };
                entries.remove(i);
                let node = (!entries.is_empty()).then_some(Node::Bucket(entries));
                self.put(collection, path, node);
                return Ok(true);
            }
            Some(Node::Branch(children)) => children,
        };
        let n = nibble(key_hash, path.len());
        let removed = if children[n].is_some() {
            path.push(n as u8);
            let removed = self.remove_at(txn, cache, collection, path, key_hash);
            path.pop();
            removed
        } else {
            Ok(false)
        };
        if !matches!(removed, Ok(true)) {
            self.restore(collection, path, Some(Node::Branch(children)));
            return removed;
        }
        if let Some(child) = &mut children[n] {
            child.count -= 1;
            if child.count == 0 {
                children[n] = None;
            }
        }
        let total: u64 = children.iter().flatten().map(|c| c.count).sum();
        if total as usize > BUCKET_MAX {
            self.put(collection, path, Some(Node::Branch(children)));
            return Ok(true);
        }
        // Collapse: every child now holds at most BUCKET_MAX entries, so each is a bucket.
        let mut entries = Vec::with_capacity(BUCKET_MAX);
        for (i, child) in children.iter().enumerate() {
            if child.is_none() {
                continue;
            }
            path.push(i as u8);
            match self.take(txn, cache, collection, path)? {
                Some(Node::Bucket(mut es)) => entries.append(&mut es),
                _ => {
                    return Err(corrupt(
                        collection,
                        path,
                        "expected a bucket below a collapsing branch".into(),
                    ));
                }
            }
            self.put(collection, path, None);
            path.pop();
        }
        entries.sort_by_key(|e| e.key_hash);
        let node = (!entries.is_empty()).then_some(Node::Bucket(entries));
        self.put(collection, path, node);
        Ok(true)
    }

    /// Encodes and hashes every changed node once, deepest first so that each
    /// branch links its children's new CIDs, puts the nodes into `txn`
    /// (deleting emptied ones) and returns each changed collection's new root
    /// (`None` when the collection is now empty).
    pub(crate) fn seal(
        &mut self,
        txn: &mut Txn<'_>,
    ) -> Result<Vec<(String, Option<ChildRef>)>, StoreError> {
        let mut roots = Vec::new();
        for (collection, paths) in std::mem::take(&mut self.dirty) {
            let mut order: Vec<Vec<u8>> = paths.into_iter().collect();
            order.sort_by_key(|p| std::cmp::Reverse(p.len()));
            let mut root = None;
            for path in order {
                let key = node_key(&collection, &path);
                let Some(slot) = self.slots.get_mut(&key) else {
                    continue;
                };
                slot.dirty = false;
                let sealed = match &slot.node {
                    None => {
                        txn.delete(key);
                        None
                    }
                    Some(node) => {
                        let bytes = node.to_bytes();
                        let cid = codec::cid_of_bytes(&bytes);
                        let count = node.count();
                        txn.put(key, bytes);
                        Some(ChildRef { cid, count })
                    }
                };
                let Some((&n, parent)) = path.split_last() else {
                    root = Some(sealed);
                    continue;
                };
                // The parent is a changed branch (every change dirties the
                // path above it) unless it collapsed into a bucket.
                if let Some(Slot {
                    node: Some(Node::Branch(children)),
                    ..
                }) = self.slots.get_mut(&node_key(&collection, parent))
                    && let Some(child) = children.get_mut(usize::from(n))
                    && child.is_some()
                {
                    *child = sealed;
                }
            }
            let root =
                root.ok_or_else(|| corrupt(&collection, &[], "a change without its root".into()))?;
            roots.push((collection, root));
        }
        Ok(roots)
    }

    /// Gives the nodes back to `cache` as they now are in the backend. Call it
    /// only once the transaction holding [`seal`](Self::seal)'s puts committed;
    /// after a failed write, drop the working set instead.
    pub(crate) fn release(self, cache: &mut NodeCache) {
        for (key, slot) in self.slots {
            match slot.node {
                Some(node) if !slot.dirty => cache.put(key, node),
                _ => cache.forget(&key),
            }
        }
    }
}

/// Every entry of the collection, in hash order (for verification and full scans).
pub(crate) fn entries(txn: &Txn<'_>, collection: &str) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![Vec::new()];
    while let Some(path) = stack.pop() {
        match load(txn, collection, &path)? {
            None => {}
            Some(Node::Bucket(mut es)) => out.append(&mut es),
            Some(Node::Branch(children)) => {
                for (i, c) in children.iter().enumerate().rev() {
                    if c.is_some() {
                        let mut child = path.clone();
                        child.push(i as u8);
                        stack.push(child);
                    }
                }
            }
        }
    }
    out.sort_by_key(|e| e.key_hash);
    Ok(out)
}

/// The root a trie holding exactly `entries` has, computed from scratch in a scratch
/// transaction (for verification: it must equal the incrementally maintained root).
pub(crate) fn recompute_root(
    collection: &str,
    entries: Vec<Entry>,
) -> Result<Option<ChildRef>, StoreError> {
    let scratch = crate::kv::MemoryBackend::new();
    build_into(&mut Txn::new(&scratch), collection, entries)
}

/// Builds the trie holding exactly `entries` from scratch, putting every node
/// into `txn` (which must hold none of the collection's old nodes), and
/// returns its root (`None` when `entries` is empty).
pub(crate) fn build_into(
    txn: &mut Txn<'_>,
    collection: &str,
    mut entries: Vec<Entry>,
) -> Result<Option<ChildRef>, StoreError> {
    if entries.is_empty() {
        return Ok(None);
    }
    entries.sort_by_key(|e| e.key_hash);
    let mut work = Work::new();
    work.build(collection, &mut Vec::new(), entries);
    Ok(work.seal(txn)?.pop().and_then(|(_, root)| root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryBackend;
    use proptest::prelude::*;

    fn entry(n: u16, v: u8) -> Entry {
        Entry::new(&format!("doc{n}"), [v; 32])
    }

    fn apply(work: &mut Work, txn: &Txn<'_>, cache: &mut NodeCache, op: (u16, Option<u8>)) {
        match op {
            (n, Some(v)) => work.upsert(txn, cache, "c", entry(n, v)).unwrap(),
            (n, None) => work.remove(txn, cache, "c", &entry(n, 0).key_hash).unwrap(),
        }
    }

    /// Applies upserts and removals, `per_txn` to a transaction, through a
    /// cache of `cache_nodes`; returns the final root.
    fn run_with(ops: &[(u16, Option<u8>)], per_txn: usize, cache_nodes: usize) -> Option<ChildRef> {
        let backend = MemoryBackend::new();
        let mut cache = NodeCache::new(cache_nodes);
        let mut root = None;
        for chunk in ops.chunks(per_txn.max(1)) {
            let mut txn = Txn::new(&backend);
            let mut work = Work::new();
            for op in chunk {
                apply(&mut work, &txn, &mut cache, *op);
            }
            for (_, r) in work.seal(&mut txn).unwrap() {
                root = r;
            }
            txn.commit().unwrap();
            work.release(&mut cache);
            assert!(cache.len() <= cache_nodes);
        }
        root
    }

    /// Applies upserts and removals one per transaction; returns the final root.
    fn run(ops: &[(u16, Option<u8>)]) -> Option<ChildRef> {
        run_with(ops, 1, 0)
    }

    proptest! {
        #[test]
        fn prop_root_depends_only_on_the_final_entries(
            ops in proptest::collection::vec((0_u16..150, proptest::option::weighted(0.8, 0_u8..3)), 0..200),
            seed in any::<u64>(),
        ) {
            // The final entry set.
            let mut last: std::collections::BTreeMap<u16, Option<u8>> = Default::default();
            for (n, v) in &ops {
                last.insert(*n, *v);
            }
            let finals: Vec<Entry> = last.iter().filter_map(|(n, v)| v.map(|v| entry(*n, v))).collect();
            let incremental = run(&ops);
            prop_assert_eq!(&incremental, &recompute_root("c", finals.clone()).unwrap());
            // Writing only the final entries, in a shuffled order, gives the same root.
            let mut direct: Vec<(u16, Option<u8>)> = last.iter().filter(|(_, v)| v.is_some()).map(|(n, v)| (*n, *v)).collect();
            let mut x = seed | 1;
            for i in (1..direct.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                direct.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(incremental.as_ref().map(|r| r.count), Some(finals.len() as u64).filter(|n| *n > 0));
            prop_assert_eq!(run(&direct), incremental.clone());
            // Batched in one working set, and through a small cache: the same root.
            prop_assert_eq!(run_with(&ops, ops.len(), 0), incremental.clone());
            prop_assert_eq!(run_with(&ops, 7, 5), incremental.clone());
            prop_assert_eq!(run_with(&ops, 1, 1000), incremental);
        }

        #[test]
        fn prop_direct_codec_is_the_value_codec(
            ids in proptest::collection::btree_set("[a-z0-9]{0,30}", 0..20),
            value in any::<[u8; 32]>(),
            counts in proptest::collection::vec(proptest::option::of(1_u64..i64::MAX as u64), 16),
            flip in any::<(usize, u8)>(),
        ) {
            let mut entries: Vec<Entry> = ids.iter().map(|id| Entry::new(id, value)).collect();
            entries.sort_by_key(|e| e.key_hash);
            let mut children: [Option<ChildRef>; 16] = Default::default();
            for (slot, count) in children.iter_mut().zip(&counts) {
                *slot = count.map(|count| ChildRef {
                    cid: codec::cid_of_bytes(&count.to_be_bytes()),
                    count,
                });
            }
            for node in [Node::Bucket(entries), Node::Branch(Box::new(children))] {
                let bytes = node.to_bytes();
                prop_assert_eq!(&bytes, &codec::encode(&node.to_value()).unwrap());
                prop_assert_eq!(Node::from_bytes(&bytes).unwrap(), node.clone());
                // Any damage: both decoders agree on accepting it, and on the node.
                let mut damaged = bytes.clone();
                let at = flip.0 % damaged.len();
                damaged[at] ^= flip.1.max(1);
                let direct = Node::from_bytes(&damaged).ok();
                let via_value = codec::decode(&damaged)
                    .ok()
                    .and_then(|v| Node::from_value(&v).ok());
                prop_assert_eq!(direct, via_value);
                prop_assert!(Node::from_bytes(&bytes[..bytes.len() - 1]).is_err());
            }
        }
    }

    #[test]
    fn a_write_touches_a_logarithmic_number_of_nodes() {
        let backend = MemoryBackend::new();
        let mut cache = NodeCache::new(0);
        for n in 0..5000_u16 {
            let mut txn = Txn::new(&backend);
            let mut work = Work::new();
            work.upsert(&txn, &mut cache, "c", entry(n, 1)).unwrap();
            work.seal(&mut txn).unwrap();
            txn.commit().unwrap();
        }
        let mut txn = Txn::new(&backend);
        let mut work = Work::new();
        work.upsert(&txn, &mut cache, "c", entry(7, 2)).unwrap();
        work.seal(&mut txn).unwrap();
        let written = txn.pending_len();
        // 5000 entries in buckets of <= 16: depth about log16(5000 / 16) + 1 = 3.
        assert!(written <= 4, "one upsert rewrote {written} nodes");
    }

    #[test]
    fn stored_nodes_are_checked() {
        assert!(Node::from_value(&Value::Null).is_err());
        let mut m = Map::new();
        m.insert("c".into(), Value::Array(vec![Value::Null; 15]));
        assert!(Node::from_value(&Value::Map(m)).is_err());
        let mut m = Map::new();
        m.insert(
            "e".into(),
            Value::Array(vec![Value::Array(vec![
                Value::Text("x".into()),
                Value::Bytes(vec![1]),
            ])]),
        );
        assert!(Node::from_value(&Value::Map(m)).is_err());
    }
}
