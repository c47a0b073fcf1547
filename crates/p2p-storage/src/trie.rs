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

use std::collections::BTreeMap;

use ecomesh_types::{ContentId, Map, Value};
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

/// Loads the node at `path`, or `None` when that part of the trie is empty.
pub(crate) fn load(
    txn: &Txn<'_>,
    collection: &str,
    path: &[u8],
) -> Result<Option<Node>, StoreError> {
    let Some(bytes) = txn.get(&node_key(collection, path))? else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        collection: collection.to_owned(),
        id: format!("merkle node at depth {}", path.len()),
        reason,
    };
    let value = codec::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
    Node::from_value(&value).map(Some).map_err(corrupt)
}

fn store(
    txn: &mut Txn<'_>,
    collection: &str,
    path: &[u8],
    node: &Node,
) -> Result<ChildRef, StoreError> {
    let bytes = codec::encode(&node.to_value())?;
    let cid = codec::cid_of_bytes(&bytes);
    txn.put(node_key(collection, path), bytes);
    Ok(ChildRef {
        cid,
        count: node.count(),
    })
}

/// Builds the canonical subtree for `entries` (sorted by hash) at `path`.
fn build(
    txn: &mut Txn<'_>,
    collection: &str,
    path: &mut Vec<u8>,
    entries: Vec<Entry>,
) -> Result<ChildRef, StoreError> {
    if entries.len() <= BUCKET_MAX || path.len() >= MAX_DEPTH {
        return store(txn, collection, path, &Node::Bucket(entries));
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
        path.push(n as u8);
        children[n] = Some(build(txn, collection, path, group)?);
        path.pop();
    }
    store(txn, collection, path, &Node::Branch(Box::new(children)))
}

/// Inserts or replaces `entry`; returns the new root reference.
pub(crate) fn upsert(
    txn: &mut Txn<'_>,
    collection: &str,
    entry: Entry,
) -> Result<ChildRef, StoreError> {
    let mut path = Vec::new();
    upsert_at(txn, collection, &mut path, entry)
}

fn upsert_at(
    txn: &mut Txn<'_>,
    collection: &str,
    path: &mut Vec<u8>,
    entry: Entry,
) -> Result<ChildRef, StoreError> {
    match load(txn, collection, path)? {
        None => store(txn, collection, path, &Node::Bucket(vec![entry])),
        Some(Node::Bucket(mut entries)) => {
            match entries.binary_search_by(|e| e.key_hash.cmp(&entry.key_hash)) {
                Ok(i) => entries[i] = entry,
                Err(i) => entries.insert(i, entry),
            }
            build(txn, collection, path, entries)
        }
        Some(Node::Branch(mut children)) => {
            let n = nibble(&entry.key_hash, path.len());
            path.push(n as u8);
            let child = upsert_at(txn, collection, path, entry)?;
            path.pop();
            children[n] = Some(child);
            store(txn, collection, path, &Node::Branch(children))
        }
    }
}

/// Removes the entry with `key_hash`; returns the new root, `None` when the trie is empty.
pub(crate) fn remove(
    txn: &mut Txn<'_>,
    collection: &str,
    key_hash: &[u8; 32],
) -> Result<Option<ChildRef>, StoreError> {
    let mut path = Vec::new();
    remove_at(txn, collection, &mut path, key_hash)
}

fn remove_at(
    txn: &mut Txn<'_>,
    collection: &str,
    path: &mut Vec<u8>,
    key_hash: &[u8; 32],
) -> Result<Option<ChildRef>, StoreError> {
    match load(txn, collection, path)? {
        None => Ok(None),
        Some(Node::Bucket(mut entries)) => {
            if let Ok(i) = entries.binary_search_by(|e| e.key_hash.cmp(key_hash)) {
                entries.remove(i);
            }
            if entries.is_empty() {
                txn.delete(node_key(collection, path));
                return Ok(None);
            }
            store(txn, collection, path, &Node::Bucket(entries)).map(Some)
        }
        Some(Node::Branch(mut children)) => {
            let n = nibble(key_hash, path.len());
            path.push(n as u8);
            let child = remove_at(txn, collection, path, key_hash)?;
            path.pop();
            children[n] = child;
            let total: u64 = children.iter().flatten().map(|c| c.count).sum();
            if total as usize > BUCKET_MAX {
                return store(txn, collection, path, &Node::Branch(children)).map(Some);
            }
            // Collapse: every child now holds at most BUCKET_MAX entries, so each is a bucket.
            let mut entries = Vec::with_capacity(BUCKET_MAX);
            for (i, child) in children.iter().enumerate() {
                if child.is_none() {
                    continue;
                }
                path.push(i as u8);
                match load(txn, collection, path)? {
                    Some(Node::Bucket(mut es)) => entries.append(&mut es),
                    _ => {
                        return Err(StoreError::Corrupt {
                            collection: collection.to_owned(),
                            id: format!("merkle node at depth {}", path.len()),
                            reason: "expected a bucket below a collapsing branch".into(),
                        });
                    }
                }
                txn.delete(node_key(collection, path));
                path.pop();
            }
            entries.sort_by_key(|e| e.key_hash);
            if entries.is_empty() {
                txn.delete(node_key(collection, path));
                return Ok(None);
            }
            store(txn, collection, path, &Node::Bucket(entries)).map(Some)
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
    mut entries: Vec<Entry>,
) -> Result<Option<ChildRef>, StoreError> {
    if entries.is_empty() {
        return Ok(None);
    }
    entries.sort_by_key(|e| e.key_hash);
    let scratch = crate::kv::MemoryBackend::new();
    let mut txn = Txn::new(&scratch);
    build(&mut txn, collection, &mut Vec::new(), entries).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryBackend;
    use proptest::prelude::*;

    fn entry(n: u16, v: u8) -> Entry {
        Entry::new(&format!("doc{n}"), [v; 32])
    }

    /// Applies upserts and removals in order; returns the final root.
    fn run(ops: &[(u16, Option<u8>)]) -> Option<ChildRef> {
        let backend = MemoryBackend::new();
        let mut root = None;
        for (n, v) in ops {
            let mut txn = Txn::new(&backend);
            root = match v {
                Some(v) => Some(upsert(&mut txn, "c", entry(*n, *v)).unwrap()),
                None => remove(&mut txn, "c", &entry(*n, 0).key_hash).unwrap(),
            };
            txn.commit().unwrap();
        }
        root
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
            prop_assert_eq!(run(&direct), incremental);
        }
    }

    #[test]
    fn a_write_touches_a_logarithmic_number_of_nodes() {
        let backend = MemoryBackend::new();
        for n in 0..5000_u16 {
            let mut txn = Txn::new(&backend);
            upsert(&mut txn, "c", entry(n, 1)).unwrap();
            txn.commit().unwrap();
        }
        let mut txn = Txn::new(&backend);
        upsert(&mut txn, "c", entry(7, 2)).unwrap();
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
