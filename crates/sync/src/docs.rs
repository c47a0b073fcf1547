//! Documents: `node.collection("notes").doc(id)` and its reads and writes.
//!
//! Every write commits locally first (one signed version per document) and
//! is pushed to replication partners by the node's next pass; reads are
//! local, with a fetch from connected peers on a miss.

use ecomesh_crdt::FieldOp;
use ecomesh_p2p_storage::VersionInfo;
use ecomesh_types::{
    BatchOperation, BatchResult, ContentId, Document, Map, Query, SetOptions, StorageAdapter,
    WriteResult,
};

use crate::watch::{DocSnapshot, PendingOf, QuerySnapshot, Watch, watch_doc, watch_query};

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
    pub(crate) node: Node,
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
        let _w = self.writing();
        let w = StorageAdapter::set(
            self.node.documents(&self.collection),
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
        let _w = self.writing();
        let w = StorageAdapter::update(
            self.node.documents(&self.collection),
            &self.collection,
            &self.id,
            fields,
        )
        .await?;
        Ok(w)
    }

    /// The document, or `None` when it does not exist (or was deleted).
    pub async fn get(&self) -> Result<Option<Document>> {
        // A document of an encrypted collection holding versions this node
        // cannot open reads as a typed error, never as a partial state.
        if self.node.inner.store.has_held(&self.collection, &self.id)? {
            return Err(ecomesh_p2p_storage::StoreError::Sealed {
                collection: self.collection.clone(),
                id: self.id.clone(),
            }
            .into());
        }
        let d = StorageAdapter::get(
            self.node.documents(&self.collection),
            &self.collection,
            &self.id,
        )
        .await?;
        Ok(d)
    }

    /// Deletes the document (a tombstone version that replicates).
    pub async fn delete(&self) -> Result<WriteResult> {
        self.node.running()?;
        let _w = self.writing();
        let w = StorageAdapter::delete(
            self.node.documents(&self.collection),
            &self.collection,
            &self.id,
        )
        .await?;
        Ok(w)
    }
}

impl Node {
    /// The front `collection`'s documents go through, if it has one: the
    /// node's front for a replicated collection, none for a local one.
    fn front_for(&self, collection: &str) -> Option<&dyn StorageAdapter> {
        let local = collection.starts_with(&self.inner.config.p2p.local_prefix);
        match &self.inner.front {
            Some(f) if !local => Some(f.as_ref()),
            _ => None,
        }
    }

    /// Where `collection`'s documents are read and written: its front, or the local store.
    fn documents(&self, collection: &str) -> &dyn StorageAdapter {
        self.front_for(collection)
            .unwrap_or_else(|| self.inner.p2p.as_ref())
    }

    /// Hands a write made on the store directly to the front, when
    /// `collection` has one.
    async fn written_beside(&self, collection: &str, w: &WriteResult) -> Result<()> {
        if let Some(f) = &self.inner.front
            && self.front_for(collection).is_some()
        {
            f.local_writes(std::slice::from_ref(w)).await?;
        }
        Ok(())
    }

    /// The Merkle root of every collection of the store (equal contents give
    /// equal roots).
    pub fn root_cid(&self) -> Result<ecomesh_types::ContentId> {
        Ok(self.inner.store.root_cid()?)
    }
}

impl DocRef {
    fn writing(&self) -> crate::watch::Writing<'_> {
        self.node
            .inner
            .writes
            .begin(vec![(self.collection.clone(), self.id.clone())])
    }

    /// Applies field operations: counter increments
    /// ([`FieldOp::Increment`]), set additions and removals
    /// ([`FieldOp::AddToSet`], [`FieldOp::RemoveFromSet`]), plain writes and
    /// field removals; they merge with concurrent operations of other peers.
    pub async fn apply(&self, ops: Vec<(String, FieldOp)>) -> Result<WriteResult> {
        self.node.running()?;
        let _w = self.writing();
        let w = self
            .node
            .inner
            .p2p
            .apply_ops(&self.collection, &self.id, ops)?;
        self.node.written_beside(&self.collection, &w).await?;
        Ok(w)
    }

    /// Adds `by` (negative to subtract) to counter field `field`.
    pub async fn increment(&self, field: impl Into<String>, by: i64) -> Result<WriteResult> {
        self.apply(vec![(field.into(), FieldOp::Increment(by))])
            .await
    }

    /// Every version of the document, oldest first.
    pub fn history(&self) -> Result<Vec<VersionInfo>> {
        Ok(self.node.inner.store.history(&self.collection, &self.id)?)
    }

    /// The document's current head versions (one unless concurrent writes
    /// have not been superseded yet); empty when it never existed.
    pub fn version(&self) -> Result<Vec<ContentId>> {
        Ok(self.node.inner.store.heads(&self.collection, &self.id)?)
    }

    /// Writes, as a new version, the content the document had at version
    /// `cid` (a deleted version restores as a delete).
    pub async fn restore(&self, cid: &ContentId) -> Result<WriteResult> {
        self.node.running()?;
        let _w = self.writing();
        let w = self
            .node
            .inner
            .p2p
            .restore(&self.collection, &self.id, cid)?;
        self.node.written_beside(&self.collection, &w).await?;
        Ok(w)
    }

    /// A stream of this document's snapshots: the current one first, then
    /// one after every local or remote change, and one when its pending
    /// writes become acknowledged.
    pub fn watch(&self) -> Result<Watch<DocSnapshot>> {
        let inner = &self.node.inner;
        watch_doc(
            &inner.writes,
            self.collection.clone(),
            self.id.clone(),
            pending_of(&self.node),
            |l| {
                Ok(inner
                    .store
                    .subscribe_document(&self.collection, &self.id, l)?)
            },
        )
    }
}

fn pending_of(node: &Node) -> PendingOf {
    let weak = std::sync::Arc::downgrade(&node.inner);
    std::sync::Arc::new(move || {
        weak.upgrade()
            .map(|n| n.writes.unacknowledged(n.p2p.queue()))
            .unwrap_or_default()
    })
}

impl Collection {
    /// The documents matching `query`, in its order.
    pub async fn query(&self, query: &Query) -> Result<Vec<Document>> {
        if let Some(front) = self.node.front_for(&self.name) {
            return Ok(StorageAdapter::query(front, &self.name, query)
                .await?
                .documents);
        }
        Ok(self.node.inner.store.query(&self.name, query)?.documents)
    }

    /// A stream of `query`'s results: the current ones first, then after
    /// every change that affects them, and when their pending writes become
    /// acknowledged.
    pub fn watch(&self, query: Query) -> Result<Watch<QuerySnapshot>> {
        let inner = &self.node.inner;
        watch_query(&inner.writes, pending_of(&self.node), |l| {
            Ok(inner.store.subscribe_query(&self.name, query, l)?)
        })
    }
}

impl Node {
    /// The documents of `collection` matching `query`.
    pub async fn query(&self, collection: &str, query: &Query) -> Result<Vec<Document>> {
        self.collection(collection).query(query).await
    }

    /// Watches `query` over `collection` (see [`Collection::watch`]).
    pub fn watch_query(&self, collection: &str, query: Query) -> Result<Watch<QuerySnapshot>> {
        self.collection(collection).watch(query)
    }

    /// Watches one document (see [`DocRef::watch`]).
    pub fn watch_doc(&self, collection: &str, id: &str) -> Result<Watch<DocSnapshot>> {
        self.collection(collection).doc(id).watch()
    }

    /// Applies `operations` atomically: all commit or none does.
    pub async fn batch(&self, operations: Vec<BatchOperation>) -> Result<BatchResult> {
        self.running()?;
        let keys = operations
            .iter()
            .map(|o| {
                let (c, i) = o.target();
                (c.to_owned(), i.to_owned())
            })
            .collect();
        let _w = self.inner.writes.begin(keys);
        // One front for the whole batch: a batch touching a local collection
        // stays on the local store (its replicated versions reach a primary
        // only through replication).
        let any_local = operations
            .iter()
            .any(|o| self.front_for(o.target().0).is_none());
        let adapter: &dyn StorageAdapter = match &self.inner.front {
            Some(f) if !any_local => f.as_ref(),
            _ => self.inner.p2p.as_ref(),
        };
        Ok(StorageAdapter::batch_write(adapter, operations).await?)
    }
}
