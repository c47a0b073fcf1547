//! The store as an anti-entropy replica: [`ReconcileStore`] for [`Store`], so
//! `ecomesh_replication::antientropy::Session` can reconcile two stores.

use ecomesh_replication::ReplicationError;
use ecomesh_replication::merkle::{
    ApplyResult, MerkleChild, MerkleEntry, MerkleNode, ReconcileStore,
};
use ecomesh_types::ContentId;

use crate::kv::Backend;
use crate::trie::Node;
use crate::{ApplyOutcome, Store, StoreError};

fn storage(e: StoreError) -> ReplicationError {
    ReplicationError::Storage(e.to_string())
}

impl<B: Backend> ReconcileStore for Store<B> {
    fn root(&self) -> Result<ContentId, ReplicationError> {
        self.root_cid().map_err(storage)
    }

    fn collections(&self) -> Result<Vec<String>, ReplicationError> {
        Store::collections(self).map_err(storage)
    }

    fn collection_root(&self, collection: &str) -> Result<Option<ContentId>, ReplicationError> {
        Store::collection_root(self, collection).map_err(storage)
    }

    fn merkle_node(
        &self,
        collection: &str,
        path: &[u8],
    ) -> Result<Option<MerkleNode>, ReplicationError> {
        Ok(
            match Store::merkle_node(self, collection, path).map_err(storage)? {
                None => None,
                Some(Node::Bucket(entries)) => Some(MerkleNode::Bucket(
                    entries
                        .into_iter()
                        .map(|e| MerkleEntry {
                            key_hash: e.key_hash,
                            id: e.id,
                        })
                        .collect(),
                )),
                Some(Node::Branch(children)) => {
                    Some(MerkleNode::Branch(Box::new(children.map(|c| {
                        c.map(|c| MerkleChild {
                            cid: c.cid,
                            count: c.count,
                        })
                    }))))
                }
            },
        )
    }

    fn heads(&self, collection: &str, id: &str) -> Result<Vec<ContentId>, ReplicationError> {
        Store::heads(self, collection, id).map_err(storage)
    }

    fn version_bytes(&self, cid: &ContentId) -> Result<Option<Vec<u8>>, ReplicationError> {
        Store::version_bytes(self, cid).map_err(storage)
    }

    fn version_parents(&self, cid: &ContentId) -> Result<Option<Vec<ContentId>>, ReplicationError> {
        Ok(self.version(cid).map_err(storage)?.map(|v| v.parents))
    }

    fn apply_version(&self, bytes: &[u8]) -> Result<ApplyResult, ReplicationError> {
        match self.apply_remote(bytes) {
            Ok(ApplyOutcome::Applied { .. }) => Ok(ApplyResult::Applied),
            Ok(ApplyOutcome::AlreadyPresent(_)) => Ok(ApplyResult::AlreadyPresent),
            Err(StoreError::MissingParents(missing)) => Ok(ApplyResult::MissingParents(missing)),
            // A timestamp is never the sender's fault: a clock error here is
            // this node's own clock at the end of its range, not invalid data,
            // so it is not charged to the peer.
            Err(
                e @ (StoreError::InvalidVersion { .. }
                | StoreError::InvalidArgument(_)
                | StoreError::Encode(_)),
            ) => Ok(ApplyResult::Invalid(e.to_string())),
            Err(e) => Err(storage(e)),
        }
    }
}
