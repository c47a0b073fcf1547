//! A small in-memory [`ReconcileStore`] for the protocol tests: documents are
//! grow-only sets of versions (so "merged" means "the union"), and the Merkle
//! index is a history-independent hash trie built on demand, with the same
//! shape rules as the real store (buckets of at most 16, branches of 16).

#![allow(dead_code, clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use ecomesh_replication::ReplicationError;
use ecomesh_replication::antientropy::{Config, Event, Output, Session, SessionStats};
use ecomesh_replication::merkle::{
    ApplyResult, MerkleChild, MerkleEntry, MerkleNode, ReconcileStore, nibble, under,
};
use ecomesh_types::{ContentId, Map, PeerId, Value};
use ecomesh_wire::HashAlg;

#[derive(Clone, Debug)]
struct Version {
    bytes: Vec<u8>,
    parents: Vec<ContentId>,
}

/// The test store.
#[derive(Default, Debug)]
pub(crate) struct TestStore {
    versions: RefCell<HashMap<ContentId, Version>>,
    docs: RefCell<BTreeMap<(String, String), Vec<ContentId>>>,
}

pub(crate) fn sha(bytes: &[u8]) -> [u8; 32] {
    HashAlg::Sha2_256.digest(bytes)
}

fn cid_of(bytes: &[u8]) -> ContentId {
    ecomesh_wire::to_content_id(&ecomesh_wire::cid_of_dag_cbor(bytes))
}

/// Encodes a version node of the test store.
pub(crate) fn version_bytes(
    collection: &str,
    id: &str,
    parents: &[ContentId],
    payload: &str,
    valid: bool,
) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("c".into(), Value::Text(collection.into()));
    m.insert("i".into(), Value::Text(id.into()));
    m.insert(
        "p".into(),
        Value::Array(parents.iter().cloned().map(Value::Link).collect()),
    );
    m.insert("x".into(), Value::Text(payload.into()));
    m.insert("ok".into(), Value::Bool(valid));
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap()
}

impl TestStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A deep copy.
    pub(crate) fn copy(&self) -> Self {
        TestStore {
            versions: RefCell::new(self.versions.borrow().clone()),
            docs: RefCell::new(self.docs.borrow().clone()),
        }
    }

    /// Writes a new version of a document on top of its heads; returns its CID.
    pub(crate) fn write(&self, collection: &str, id: &str, payload: &str) -> ContentId {
        let heads = self.doc_heads(collection, id);
        let bytes = version_bytes(collection, id, &heads, payload, true);
        let cid = cid_of(&bytes);
        assert_eq!(self.apply_version(&bytes).unwrap(), ApplyResult::Applied);
        cid
    }

    pub(crate) fn doc_heads(&self, collection: &str, id: &str) -> Vec<ContentId> {
        self.docs
            .borrow()
            .get(&(collection.to_owned(), id.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn has(&self, cid: &ContentId) -> bool {
        self.versions.borrow().contains_key(cid)
    }

    pub(crate) fn version_count(&self) -> usize {
        self.versions.borrow().len()
    }

    /// Every document with its heads: equal for converged stores.
    pub(crate) fn snapshot(&self) -> BTreeMap<(String, String), Vec<ContentId>> {
        self.docs.borrow().clone()
    }

    fn entries(&self, collection: &str) -> Vec<([u8; 32], String, [u8; 32])> {
        let docs = self.docs.borrow();
        let mut out: Vec<_> = docs
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|((_, id), heads)| {
                let mut h = Vec::new();
                for head in heads {
                    h.extend_from_slice(&head.0);
                }
                (sha(id.as_bytes()), id.clone(), sha(&h))
            })
            .collect();
        out.sort();
        out
    }

    fn node_at(
        &self,
        entries: &[([u8; 32], String, [u8; 32])],
        path: &[u8],
    ) -> Option<(MerkleNode, ContentId, Value)> {
        let below: Vec<_> = entries.iter().filter(|e| under(&e.0, path)).collect();
        if below.is_empty() {
            return None;
        }
        if below.len() <= 16 || path.len() >= 64 {
            let value = Value::Array(
                below
                    .iter()
                    .map(|e| {
                        Value::Array(vec![Value::Text(e.1.clone()), Value::Bytes(e.2.to_vec())])
                    })
                    .collect(),
            );
            let cid = cid_of(&ecomesh_wire::to_dag_cbor(&value).unwrap());
            let node = MerkleNode::Bucket(
                below
                    .iter()
                    .map(|e| MerkleEntry {
                        key_hash: e.0,
                        id: e.1.clone(),
                    })
                    .collect(),
            );
            return Some((node, cid, value));
        }
        let mut children: [Option<MerkleChild>; 16] = Default::default();
        let mut list = Vec::new();
        let depth = path.len();
        for (i, slot) in children.iter_mut().enumerate() {
            let mut child = path.to_vec();
            child.push(i as u8);
            let count = below
                .iter()
                .filter(|e| nibble(&e.0, depth) == Some(i as u8))
                .count();
            match self.node_at(entries, &child) {
                Some((_, cid, _)) => {
                    list.push(Value::Array(vec![
                        Value::Link(cid.clone()),
                        Value::Integer(count as i64),
                    ]));
                    *slot = Some(MerkleChild {
                        cid,
                        count: count as u64,
                    });
                }
                None => list.push(Value::Null),
            }
        }
        let value = Value::Array(list);
        let cid = cid_of(&ecomesh_wire::to_dag_cbor(&value).unwrap());
        Some((MerkleNode::Branch(Box::new(children)), cid, value))
    }
}

impl ReconcileStore for TestStore {
    fn root(&self) -> Result<ContentId, ReplicationError> {
        let mut m = Map::new();
        for c in self.collections()? {
            if let Some(r) = self.collection_root(&c)? {
                m.insert(c, Value::Link(r));
            }
        }
        Ok(cid_of(&ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap()))
    }

    fn collections(&self) -> Result<Vec<String>, ReplicationError> {
        let mut out: Vec<String> = self.docs.borrow().keys().map(|(c, _)| c.clone()).collect();
        out.dedup();
        Ok(out)
    }

    fn collection_root(&self, collection: &str) -> Result<Option<ContentId>, ReplicationError> {
        Ok(self
            .node_at(&self.entries(collection), &[])
            .map(|(_, cid, _)| cid))
    }

    fn merkle_node(
        &self,
        collection: &str,
        path: &[u8],
    ) -> Result<Option<MerkleNode>, ReplicationError> {
        Ok(self
            .node_at(&self.entries(collection), path)
            .map(|(n, _, _)| n))
    }

    fn heads(&self, collection: &str, id: &str) -> Result<Vec<ContentId>, ReplicationError> {
        Ok(self.doc_heads(collection, id))
    }

    fn version_bytes(&self, cid: &ContentId) -> Result<Option<Vec<u8>>, ReplicationError> {
        Ok(self.versions.borrow().get(cid).map(|v| v.bytes.clone()))
    }

    fn version_parents(&self, cid: &ContentId) -> Result<Option<Vec<ContentId>>, ReplicationError> {
        Ok(self.versions.borrow().get(cid).map(|v| v.parents.clone()))
    }

    fn apply_version(&self, bytes: &[u8]) -> Result<ApplyResult, ReplicationError> {
        let cid = cid_of(bytes);
        if self.has(&cid) {
            return Ok(ApplyResult::AlreadyPresent);
        }
        let Ok(Value::Map(m)) = ecomesh_wire::from_dag_cbor(bytes) else {
            return Ok(ApplyResult::Invalid("not a map".into()));
        };
        let (
            Some(Value::Text(c)),
            Some(Value::Text(i)),
            Some(Value::Array(ps)),
            Some(Value::Bool(ok)),
        ) = (m.get("c"), m.get("i"), m.get("p"), m.get("ok"))
        else {
            return Ok(ApplyResult::Invalid("missing fields".into()));
        };
        if !ok {
            return Ok(ApplyResult::Invalid("refused by the store".into()));
        }
        let parents: Vec<ContentId> = ps
            .iter()
            .filter_map(|p| match p {
                Value::Link(l) => Some(l.clone()),
                _ => None,
            })
            .collect();
        let missing: Vec<ContentId> = parents.iter().filter(|p| !self.has(p)).cloned().collect();
        if !missing.is_empty() {
            return Ok(ApplyResult::MissingParents(missing));
        }
        self.versions.borrow_mut().insert(
            cid.clone(),
            Version {
                bytes: bytes.to_vec(),
                parents: parents.clone(),
            },
        );
        let mut docs = self.docs.borrow_mut();
        let heads = docs.entry((c.clone(), i.clone())).or_default();
        heads.retain(|h| !parents.contains(h));
        heads.push(cid);
        heads.sort();
        Ok(ApplyResult::Applied)
    }
}

pub(crate) fn peer(n: u8) -> PeerId {
    PeerId::from_digest([n; 32])
}

/// What a whole reconciliation did.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) a: SessionStats,
    pub(crate) b: SessionStats,
    pub(crate) events_a: Vec<Event>,
    pub(crate) events_b: Vec<Event>,
}

/// Runs one session between `a` (initiator) and `b` until neither side has anything to send.
pub(crate) fn reconcile<A: ReconcileStore, B: ReconcileStore>(a: &A, b: &B, config: Config) -> Run {
    let mut sa = Session::new(a, peer(2), config.clone());
    let mut sb = Session::new(b, peer(1), config);
    let mut to_b = sa.start().unwrap();
    let mut run = Run::default();
    let mut guard = 0;
    loop {
        let mut to_a = Vec::new();
        for f in to_b.drain(..) {
            let Output { frames, events } = sb.handle(&f).unwrap();
            to_a.extend(frames);
            run.events_b.extend(events);
        }
        for f in to_a.drain(..) {
            let Output { frames, events } = sa.handle(&f).unwrap();
            to_b.extend(frames);
            run.events_a.extend(events);
        }
        guard += 1;
        assert!(guard < 100, "no end");
        if to_b.is_empty() {
            break;
        }
    }
    assert!(sa.is_done() && sb.is_done(), "a: {sa:?} b: {sb:?}");
    run.a = sa.stats().clone();
    run.b = sb.stats().clone();
    run
}
