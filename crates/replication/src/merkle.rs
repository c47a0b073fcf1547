//! What anti-entropy needs from a store: a read view of its Merkle collection
//! index and version DAG, and a way to merge a peer's version.
//!
//! Replication sits below the store in the crate graph, so the store
//! implements [`ReconcileStore`] (`ecomesh-p2p-storage` does, in its
//! `reconcile` module); the protocol in [`crate::antientropy`] only talks to
//! this trait.

use ecomesh_types::ContentId;

use crate::ReplicationError;

/// Children of a branch node: one per nibble.
pub const FANOUT: usize = 16;

/// One document in a collection's Merkle index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleEntry {
    /// `sha256(id)`: the entry's position (its nibbles are the path from the root).
    pub key_hash: [u8; 32],
    /// The document id.
    pub id: String,
}

/// A link from a branch to a child node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleChild {
    /// The child's CID: equal CIDs mean equal subtrees.
    pub cid: ContentId,
    /// How many entries the child's subtree holds.
    pub count: u64,
}

/// A node of a collection's Merkle index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MerkleNode {
    /// A leaf with its entries (any order).
    Bucket(Vec<MerkleEntry>),
    /// An inner node with one optional child per nibble.
    Branch(Box<[Option<MerkleChild>; FANOUT]>),
}

impl MerkleNode {
    /// Entries in this node's subtree.
    pub fn count(&self) -> u64 {
        match self {
            MerkleNode::Bucket(entries) => entries.len() as u64,
            MerkleNode::Branch(children) => children.iter().flatten().map(|c| c.count).sum(),
        }
    }
}

/// What merging a peer's version did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyResult {
    /// The version was new and is merged now.
    Applied,
    /// The store had it already.
    AlreadyPresent,
    /// Some parents are not in the store; nothing was changed. Lists them.
    MissingParents(Vec<ContentId>),
    /// The version fails verification (does not decode, bad signature, author
    /// or clock); nothing was changed. The peer that sent it is at fault.
    Invalid(String),
    /// The version may be sound, but this store does not take it from this
    /// sender (its reach or capabilities do not admit it); nothing was changed.
    /// A policy refusal: the sender is not at fault and is not charged.
    NotAdmitted(String),
}

/// A store anti-entropy can reconcile.
///
/// Promises an implementation must keep, on which convergence rests:
/// - the Merkle index is *history independent*: the node at a path depends
///   only on the set of (document, heads) pairs below it, so equal contents
///   give equal node CIDs in every store;
/// - the node at `path` (nibbles of `key_hash`, high nibble first) holds
///   exactly the entries whose `key_hash` starts with `path`;
/// - a document's entry changes whenever its version heads change, and its
///   heads are exactly the versions no other stored version of it follows;
/// - [`apply_version`](ReconcileStore::apply_version) merges through the CRDT
///   and refuses a version whose parents are absent, so stored histories are
///   closed under parents.
///
/// Errors (`Err`) are local storage failures, never the peer's fault.
pub trait ReconcileStore {
    /// The CID of the whole database: equal for equal contents.
    fn root(&self) -> Result<ContentId, ReplicationError>;

    /// Collections holding documents, sorted.
    fn collections(&self) -> Result<Vec<String>, ReplicationError>;

    /// The root CID of a collection's Merkle index, `None` when it is empty.
    fn collection_root(&self, collection: &str) -> Result<Option<ContentId>, ReplicationError>;

    /// The node at `path` (nibbles from the root), `None` where the index is empty.
    fn merkle_node(
        &self,
        collection: &str,
        path: &[u8],
    ) -> Result<Option<MerkleNode>, ReplicationError>;

    /// A document's version heads (empty when the store does not have it).
    fn heads(&self, collection: &str, id: &str) -> Result<Vec<ContentId>, ReplicationError>;

    /// The bytes of a version node, exactly as hashed into its CID.
    fn version_bytes(&self, cid: &ContentId) -> Result<Option<Vec<u8>>, ReplicationError>;

    /// The parents of a stored version, `None` when the store does not have it.
    fn version_parents(&self, cid: &ContentId) -> Result<Option<Vec<ContentId>>, ReplicationError>;

    /// Verifies and merges a version received from a peer (parents must be present).
    fn apply_version(&self, bytes: &[u8]) -> Result<ApplyResult, ReplicationError>;
}

/// The nibble of `key_hash` at `depth` (0 is the high nibble of byte 0).
pub fn nibble(key_hash: &[u8], depth: usize) -> Option<u8> {
    let byte = *key_hash.get(depth / 2)?;
    Some(if depth.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0F
    })
}

/// True when `key_hash` lies below `path`.
pub fn under(key_hash: &[u8], path: &[u8]) -> bool {
    path.iter()
        .enumerate()
        .all(|(depth, n)| nibble(key_hash, depth) == Some(*n))
}

/// The last `N` bytes of a CID (its digest's tail): the short form the
/// protocol compares. Shorter CIDs are padded with zeros in front.
pub fn short<const N: usize>(cid: &ContentId) -> [u8; N] {
    let mut out = [0_u8; N];
    let bytes = &cid.0;
    let take = bytes.len().min(N);
    out[N - take..].copy_from_slice(&bytes[bytes.len() - take..]);
    out
}

/// Every entry in the subtree at `path`, depth first (the store's own
/// nodes, so bounded by what the store holds).
pub fn entries_under<S: ReconcileStore + ?Sized>(
    store: &S,
    collection: &str,
    path: &[u8],
) -> Result<Vec<MerkleEntry>, ReplicationError> {
    let mut out = Vec::new();
    let mut stack = vec![path.to_vec()];
    while let Some(p) = stack.pop() {
        match store.merkle_node(collection, &p)? {
            None => {}
            Some(MerkleNode::Bucket(mut es)) => out.append(&mut es),
            Some(MerkleNode::Branch(children)) => {
                for (i, c) in children.iter().enumerate() {
                    if c.is_some() {
                        let mut child = p.clone();
                        child.push(i as u8);
                        stack.push(child);
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_and_prefixes() {
        let h = [0xAB, 0xCD];
        assert_eq!(nibble(&h, 0), Some(0xA));
        assert_eq!(nibble(&h, 1), Some(0xB));
        assert_eq!(nibble(&h, 3), Some(0xD));
        assert_eq!(nibble(&h, 4), None);
        assert!(under(&h, &[0xA, 0xB, 0xC]));
        assert!(!under(&h, &[0xA, 0xC]));
        assert!(under(&h, &[]));
    }

    #[test]
    fn short_takes_the_tail() {
        let cid = ContentId(vec![1, 2, 3, 4, 5]);
        assert_eq!(short::<2>(&cid), [4, 5]);
        assert_eq!(short::<7>(&cid), [0, 0, 1, 2, 3, 4, 5]);
    }
}

macro_rules! forward_reconcile_store {
    ($($ty:ty),*) => {$(
        impl<T: ReconcileStore + ?Sized> ReconcileStore for $ty {
            fn root(&self) -> Result<ContentId, ReplicationError> {
                (**self).root()
            }
            fn collections(&self) -> Result<Vec<String>, ReplicationError> {
                (**self).collections()
            }
            fn collection_root(
                &self,
                collection: &str,
            ) -> Result<Option<ContentId>, ReplicationError> {
                (**self).collection_root(collection)
            }
            fn merkle_node(
                &self,
                collection: &str,
                path: &[u8],
            ) -> Result<Option<MerkleNode>, ReplicationError> {
                (**self).merkle_node(collection, path)
            }
            fn heads(&self, collection: &str, id: &str) -> Result<Vec<ContentId>, ReplicationError> {
                (**self).heads(collection, id)
            }
            fn version_bytes(&self, cid: &ContentId) -> Result<Option<Vec<u8>>, ReplicationError> {
                (**self).version_bytes(cid)
            }
            fn version_parents(
                &self,
                cid: &ContentId,
            ) -> Result<Option<Vec<ContentId>>, ReplicationError> {
                (**self).version_parents(cid)
            }
            fn apply_version(&self, bytes: &[u8]) -> Result<ApplyResult, ReplicationError> {
                (**self).apply_version(bytes)
            }
        }
    )*};
}

forward_reconcile_store!(&T, std::sync::Arc<T>, Box<T>);
