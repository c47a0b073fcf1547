//! What a node reports and offers besides documents: status, peers, the
//! change stream, texts, blobs, and answers for content requests.

use std::time::Duration;

use ecomesh_p2p_storage::ClockReport;
use ecomesh_replication::blob::BlobId;
use ecomesh_replication::merkle::ApplyResult;
use ecomesh_replication::stream::{EventKind, MAX_DELTA, Source};
use ecomesh_types::{ContentId, PeerId, PeerInfo, TransportType};

use crate::blobs::{BlobInfo, GcSummary};
use crate::error::Result;
use crate::node::Node;
use crate::texts::{INBOX, InboxText, OutboxText, SentText, TextStatus};

/// A snapshot of a node's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// This node's peer id.
    pub peer_id: PeerId,
    /// Transports the mesh runs.
    pub transports: Vec<TransportType>,
    /// Peers reachable now.
    pub peers: usize,
    /// Messages in the store-and-forward buffer.
    pub buffered: usize,
    /// Pending texts the mesh does not hold (they wait in the outbox).
    pub waiting: usize,
    /// Versions in the durable sync queue not acknowledged yet.
    pub sync_pending: usize,
    /// Texts received.
    pub inbox: usize,
    /// Texts delivered.
    pub delivered: usize,
    /// Texts sent and not (yet) delivered.
    pub undelivered: usize,
    /// The Merkle root of every collection.
    pub root_cid: ContentId,
    /// The Merkle root of the replicated (non-local) collections.
    pub replicated_root: ContentId,
    /// Time since start.
    pub uptime: Duration,
    /// The last position of the node's stream of versions.
    pub stream_head: u64,
    /// Peer clock estimates and this node's own clock verdict.
    pub clocks: ClockReport,
    /// Databases found damaged at start and what is still missing
    /// (see [`Node::storage_health`]).
    pub storage: crate::health::StorageHealth,
}

/// One version in the node's stream of versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its stream position.
    pub position: u64,
    /// How it arrived.
    pub kind: EventKind,
    /// Where it came from.
    pub source: Source,
    /// The version's CID.
    pub version: ContentId,
    /// Its document's collection ("" when the version is unreadable).
    pub collection: String,
    /// Its document's id ("" when the version is unreadable).
    pub id: String,
    /// When its author wrote it: the physical part of its hybrid timestamp,
    /// Unix ms (0 when the version is unreadable).
    pub time_ms: u64,
}

/// What [`Node::merge_version`] did with one signed version node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MergedVersion {
    /// New here and merged; `concurrent` is true when the document had a
    /// head the version does not follow (a write made elsewhere meanwhile).
    Applied {
        /// Whether it was concurrent with this node's heads.
        concurrent: bool,
    },
    /// This node already held it.
    AlreadyPresent,
    /// Some parents are not here; nothing was changed.
    MissingParents(Vec<ContentId>),
    /// Refused (does not decode, bad signature, author or clock, or a
    /// collection outside the author's reach); nothing was changed.
    Refused(String),
}

/// A page of [`Node::changes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// Entries after the asked position, in order.
    pub entries: Vec<Change>,
    /// The position to ask from next time.
    pub next: u64,
    /// True when more entries follow.
    pub more: bool,
}

impl Node {
    /// The node's state now.
    pub fn status(&self) -> Result<NodeStatus> {
        let n = &self.inner;
        let outbox = n.texts.outbox()?;
        let delivered = outbox
            .iter()
            .filter(|m| m.status == TextStatus::Delivered)
            .count();
        Ok(NodeStatus {
            peer_id: n.identity.peer_id(),
            transports: n.mesh.active_transports(),
            peers: n.mesh.peers().len(),
            buffered: n.mesh.buffered(),
            waiting: n.texts.waiting_count(),
            sync_pending: n.p2p.queued(),
            inbox: n.store.scan_collection(INBOX)?.len(),
            delivered,
            undelivered: outbox.len() - delivered,
            root_cid: n.store.root_cid()?,
            replicated_root: n.p2p.replicated_root()?,
            uptime: n.started.elapsed(),
            stream_head: n.p2p.stream_head(),
            clocks: n.p2p.clock_report(),
            storage: self.storage_health()?,
        })
    }

    /// The peers reachable now, over any transport.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner.mesh.peers()
    }

    /// Up to `limit` (at most the delta page size) versions of the node's
    /// stream after position `since`.
    pub fn changes(&self, since: u64, limit: usize) -> Changes {
        let n = &self.inner;
        let page = n.p2p.changes_since(since, limit.clamp(1, MAX_DELTA));
        let entries = page
            .entries
            .into_iter()
            .map(|e| {
                let (collection, id, time_ms) = match n.store.version(&e.id) {
                    Ok(Some(v)) => (v.collection, v.id, v.timestamp.physical_ms),
                    _ => (String::new(), String::new(), 0),
                };
                Change {
                    position: e.position,
                    kind: e.kind,
                    source: e.source,
                    version: e.id,
                    collection,
                    id,
                    time_ms,
                }
            })
            .collect();
        Changes {
            entries,
            next: page.next,
            more: page.more,
        }
    }

    /// The collections this node replicates (every collection without the
    /// local `_` prefix), e.g. for a transport that advertises them.
    pub fn replicated_collections(&self) -> Vec<String> {
        self.inner
            .store
            .collections()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.starts_with('_'))
            .collect()
    }

    /// Seals `text` to peer `to` and queues it durably: it is in the outbox
    /// (`pending`) until acknowledged or expired, and offered to the mesh
    /// until then. Refused, with nothing kept, when no key of `to` is known
    /// or the outbox is full.
    pub async fn send_text(&self, to: PeerId, text: String) -> Result<SentText> {
        self.running()?;
        self.inner.texts.send(to, text).await
    }

    /// The received texts, oldest first.
    pub fn inbox(&self) -> Result<Vec<InboxText>> {
        self.inner.texts.inbox()
    }

    /// The sent texts with their status, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxText>> {
        self.inner.texts.outbox()
    }

    /// Stores `bytes` as a blob of `collection` (its reach and replication
    /// factor apply), pushes it to partners and announces it through content
    /// routing.
    pub fn put_blob(&self, collection: &str, bytes: &[u8]) -> Result<BlobInfo> {
        self.inner.blobs.put(collection, bytes)
    }

    /// The content of blob `id`, from this node or fetched from peers (found
    /// through content routing when no local manifest names them), within
    /// [`NodeConfig::blob_get_timeout`](crate::NodeConfig::blob_get_timeout).
    pub async fn get_blob(&self, id: BlobId) -> Result<Vec<u8>> {
        self.running()?;
        self.inner.blobs.get(id).await
    }

    /// Blob `id`, from this node or fetched from peers as
    /// [`get_blob`](Self::get_blob) does, written to the file `path`
    /// (through a temporary file beside it, synced and renamed, so `path`
    /// is the whole verified blob or untouched); returns its length. Memory
    /// stays bounded whatever the blob's size: fetched pieces are verified
    /// on arrival and stored, then streamed to the file one at a time and
    /// checked against `id`.
    pub async fn get_blob_to_file(&self, id: BlobId, path: &std::path::Path) -> Result<u64> {
        self.running()?;
        self.inner.blobs.get_to_file(id, path).await
    }

    /// What this node knows of blob `id`, when it has its manifest.
    pub fn blob(&self, id: &BlobId) -> Result<Option<BlobInfo>> {
        self.inner.blobs.info(id)
    }

    /// Every blob whose manifest this node holds.
    pub fn blobs(&self) -> Result<Vec<BlobInfo>> {
        self.inner.blobs.list()
    }

    /// Garbage-collects blob pieces now (it also runs every
    /// [`NodeConfig::blob_gc_interval`](crate::NodeConfig::blob_gc_interval)).
    pub fn gc_blobs(&self) -> Result<GcSummary> {
        self.inner.blobs.gc()
    }

    /// Merges one signed version node that arrived without a mesh peer (a
    /// device's write handed to this node as its primary), through the path
    /// of [`P2PStorageAdapter::import_version`](ecomesh_p2p_storage::P2PStorageAdapter::import_version):
    /// strict decoding, signature and author checks, parents present, the
    /// author's reach, then merging, the stream and partners. Says whether
    /// the version was concurrent with the document's heads.
    pub fn merge_version(&self, bytes: &[u8]) -> Result<MergedVersion> {
        let node = match ecomesh_wire::decode::<ecomesh_p2p_storage::VersionNode>(bytes) {
            Ok(n) => n,
            Err(e) => return Ok(MergedVersion::Refused(format!("not a version node: {e}"))),
        };
        let heads = self.inner.store.heads(&node.collection, &node.id)?;
        Ok(match self.inner.p2p.import_version(bytes)? {
            ApplyResult::Applied => MergedVersion::Applied {
                concurrent: heads.iter().any(|h| !node.parents.contains(h)),
            },
            ApplyResult::AlreadyPresent => MergedVersion::AlreadyPresent,
            ApplyResult::MissingParents(p) => MergedVersion::MissingParents(p),
            ApplyResult::Invalid(reason) => MergedVersion::Refused(reason),
            other => MergedVersion::Refused(format!("not merged: {other:?}")),
        })
    }

    /// The bytes of version `cid` for `peer`, when it exists and the peer's
    /// reach admits its collection; for answering a transport's
    /// request-response fetch.
    pub fn serve_version(&self, peer: PeerId, cid: &ContentId) -> Option<Vec<u8>> {
        match self.inner.p2p.version_bytes_for(peer, cid) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "version unreadable");
                None
            }
        }
    }

    /// The verified bytes of blob piece `cid` for `peer`, when this node
    /// holds it and the peer may have it; for answering a transport's
    /// request-response shard fetch.
    pub fn serve_blob_piece(&self, peer: PeerId, cid: &ContentId) -> Option<Vec<u8>> {
        let piece = BlobId::from_content_id(cid).ok()?;
        self.inner
            .blobs
            .service()
            .serve_piece(&peer, &piece)
            .ok()
            .flatten()
    }
}
