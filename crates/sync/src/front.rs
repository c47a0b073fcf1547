//! A layer in front of the node's documents: the hybrid adapter of
//! `ecomesh-hybrid-storage` (a primary with peer-to-peer fallback) is one.
//!
//! Without a front, [`Node::collection`](crate::Node::collection) reads and
//! writes the local peer-to-peer store. With one ([`NodeBuilder::documents`](crate::NodeBuilder::documents)),
//! the replicated collections' `get`, `query`, `set`, `update`, `delete` and
//! batches go through it, and the writes the node makes on the store itself
//! (field operations, restores) are handed to
//! [`DocumentFront::local_writes`] after they committed, so the front sees
//! every local write. Local collections (name starting with the local prefix,
//! `_` by default) never go through it: they never leave the node.

use std::sync::Arc;

use ecomesh_p2p_storage::P2PStorageAdapter;
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_types::{BoxFuture, Error, StorageAdapter, WriteResult};

/// The node's local peer-to-peer store, which a front is built over.
pub type LocalStorage = P2PStorageAdapter<SledBackend>;

/// A layer over the node's documents; see the module documentation.
pub trait DocumentFront: StorageAdapter {
    /// Takes note of local writes the node committed on its store directly
    /// (field operations, restores), as if they had been made through the
    /// front. Returns once the front recorded them durably; an error fails
    /// the caller's write call (the write itself is committed locally).
    fn local_writes<'a>(&'a self, results: &'a [WriteResult]) -> BoxFuture<'a, Result<(), Error>>;
}

/// Builds a node's front over its local store (called once, at start).
pub type FrontFactory =
    Box<dyn FnOnce(Arc<LocalStorage>) -> Result<Arc<dyn DocumentFront>, crate::SyncError> + Send>;
