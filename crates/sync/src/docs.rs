//! Documents: `node.collection("notes").doc(id)` and its reads and writes.
//!
//! Every write commits locally first (one signed version per document) and
//! is pushed to replication partners by the node's next pass; reads are
//! local, with a fetch from connected peers on a miss.

use ecomesh_types::{Document, Map, SetOptions, StorageAdapter, WriteResult};

use crate::error::Result;
use crate::node::Node;

/// A collection of documents of a [`Node`].
#[derive(Clone, Debug)]
pub struct Collection {
    node: Node,
    name: String,
}

/// One document of a [`Collection`] (it need not exist yet).
#[derive(Clone, Debug)]
pub struct DocRef {
    node: Node,
    collection: String,
    id: String,
}

impl Node {
    /// The collection `name` (collections whose name starts with `_` are
    /// local: they never leave this node).
    pub fn collection(&self, name: impl Into<String>) -> Collection {
        Collection {
            node: self.clone(),
            name: name.into(),
        }
    }
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The document `id` of this collection.
    pub fn doc(&self, id: impl Into<String>) -> DocRef {
        DocRef {
            node: self.node.clone(),
            collection: self.name.clone(),
            id: id.into(),
        }
    }

    /// Every live document of the collection held locally, by id.
    pub fn list(&self) -> Result<Vec<Document>> {
        Ok(self.node.inner.store.scan_collection(&self.name)?)
    }
}

impl DocRef {
    /// The collection's name.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The document's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes `fields`: with [`SetOptions::REPLACE`] they become the whole
    /// document, with [`SetOptions::MERGE`] they overwrite only the fields
    /// named. Creates the document when missing.
    pub async fn set(&self, fields: Map, options: SetOptions) -> Result<WriteResult> {
        self.node.running()?;
        let w = StorageAdapter::set(
            &self.node.inner.p2p,
            &self.collection,
            &self.id,
            fields,
            options,
        )
        .await?;
        Ok(w)
    }

    /// Overwrites the fields named in `fields`; fails when the document does
    /// not exist.
    pub async fn update(&self, fields: Map) -> Result<WriteResult> {
        self.node.running()?;
        let w = StorageAdapter::update(&self.node.inner.p2p, &self.collection, &self.id, fields)
            .await?;
        Ok(w)
    }

    /// The document, or `None` when it does not exist (or was deleted).
    pub async fn get(&self) -> Result<Option<Document>> {
        let d = StorageAdapter::get(&self.node.inner.p2p, &self.collection, &self.id).await?;
        Ok(d)
    }

    /// Deletes the document (a tombstone version that replicates).
    pub async fn delete(&self) -> Result<WriteResult> {
        self.node.running()?;
        let w = StorageAdapter::delete(&self.node.inner.p2p, &self.collection, &self.id).await?;
        Ok(w)
    }
}

impl Node {
    /// The Merkle root of every collection of the store (equal contents give
    /// equal roots).
    pub fn root_cid(&self) -> Result<ecomesh_types::ContentId> {
        Ok(self.inner.store.root_cid()?)
    }
}
