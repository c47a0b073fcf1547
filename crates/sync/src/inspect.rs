//! What a node holds, for tools that show it: its collections with their
//! document counts, a document as of one of its versions, and the
//! store-and-forward buffer and other queues in figures.

use ecomesh_p2p_storage::VersionInfo;
use ecomesh_types::{ContentId, Document, PeerId};

use crate::docs::DocRef;
use crate::error::Result;
use crate::node::Node;

/// One collection of the store, as [`Node::collections`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionInfo {
    /// Its name (a `_` prefix: local, never replicated).
    pub name: String,
    /// Its live documents held locally (deleted ones not counted).
    pub documents: usize,
}

/// A document as of one of its versions ([`DocRef::at`]).
#[derive(Clone, Debug, PartialEq)]
pub struct VersionedDocument {
    /// The version: its CID, parents, time and author.
    pub info: VersionInfo,
    /// The document's content at that version (the merge of the version and
    /// all its ancestors); `None` when it was deleted then.
    pub document: Option<Document>,
}

/// The node's queues in figures ([`Node::queue_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStatus {
    /// Messages in the mesh's store-and-forward buffer (for peers not reachable now).
    pub messages: usize,
    /// Their accounted bytes.
    pub bytes: usize,
    /// The buffer's bound on messages.
    pub max_messages: usize,
    /// The buffer's bound on accounted bytes.
    pub max_bytes: usize,
    /// Buffered messages per recipient (`None`: broadcasts), most first.
    pub by_destination: Vec<(Option<PeerId>, usize)>,
    /// Versions in the durable sync queue not acknowledged yet.
    pub sync_pending: usize,
    /// Pending texts the mesh does not hold (they wait in the outbox).
    pub outbox_waiting: usize,
    /// Messages held until their sender's key is known.
    pub awaiting_key: usize,
}

impl Node {
    /// Every collection the store has held documents in (live or deleted),
    /// sorted by name, with its count of live documents (counting reads the
    /// keys of the collection's documents, not their contents).
    pub fn collections(&self) -> Result<Vec<CollectionInfo>> {
        let store = &self.inner.store;
        let mut out = Vec::new();
        for name in store.collections()? {
            let documents = store.count_documents(&name)?;
            out.push(CollectionInfo { name, documents });
        }
        Ok(out)
    }

    /// The store-and-forward buffer and the other queues, in figures.
    pub fn queue_status(&self) -> QueueStatus {
        let n = &self.inner;
        let b = n.mesh.buffer_summary();
        QueueStatus {
            messages: b.messages,
            bytes: b.bytes,
            max_messages: b.config.max_messages,
            max_bytes: b.config.max_bytes,
            by_destination: b.by_destination,
            sync_pending: n.p2p.queued(),
            outbox_waiting: n.texts.waiting_count(),
            awaiting_key: n.mesh.awaiting_key(),
        }
    }
}

impl DocRef {
    /// The document as of its version `cid`, with the version's details;
    /// `None` when this node holds no such version of this document (a
    /// version of another document is `None` too).
    pub fn at(&self, cid: &ContentId) -> Result<Option<VersionedDocument>> {
        let store = &self.node.inner.store;
        let Some(node) = store.version(cid)? else {
            return Ok(None);
        };
        if node.collection != self.collection() || node.id != self.id() {
            return Ok(None);
        }
        let document = store
            .state_at(cid)?
            .materialize()
            .map(|fields| Document::new(self.collection(), self.id(), fields));
        Ok(Some(VersionedDocument {
            info: VersionInfo {
                cid: cid.clone(),
                parents: node.parents.clone(),
                timestamp: node.timestamp,
                author: node.author_peer(),
            },
            document,
        }))
    }
}
