//! [`ReplicatedView`]: the store as one peer may see it (local collections and
//! reach applied), and where versions merged from peers are noted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ecomesh_identity::capability::Action;
use ecomesh_replication::ReplicationError;
use ecomesh_replication::merkle::{ApplyResult, MerkleNode, ReconcileStore};
use ecomesh_replication::reach::{ReachPolicy, Relation};
use ecomesh_replication::stream::{DurableStream, Source};
use ecomesh_types::{ContentId, Map, PeerId, Value};

use super::{P2PStorageAdapter, lock};
use crate::Store;
use crate::activity::{ActivityLog, SyncActivity};
use crate::kv::Backend;

/// The node's stream of positioned versions, shared by the adapter and its views.
pub(super) type SharedStream = Arc<Mutex<Option<DurableStream>>>;

/// A store as one peer may see it: collections local to this node (see
/// [`P2PConfig::local_prefix`](crate::P2PConfig::local_prefix)) and, for a given peer, collections outside the
/// peer's reach are invisible and have no effect on the root; the bytes of a
/// version whose document is outside the peer's reach are never handed out;
/// versions for invisible collections are refused.
pub struct ReplicatedView<B: Backend> {
    pub(super) store: Arc<Store<B>>,
    pub(super) local_prefix: String,
    pub(super) reach: Arc<ReachPolicy>,
    /// The peer this view is for, with the function that says how this node
    /// relates to it (asked at every check, so a relationship changed at run
    /// time applies to views already open, such as anti-entropy sessions);
    /// `None`: this node's own view of what it replicates.
    pub(super) peer: Option<(PeerId, super::config::TrustFn)>,
    /// Where a version merged from the peer is positioned, when the node keeps a stream.
    pub(super) stream: SharedStream,
    /// Versions newly merged from peers, to be pushed on (see [`TakenIn`]).
    pub(super) taken_in: Arc<Mutex<TakenIn>>,
    /// What replication did, for the owner to drain (see [`crate::activity`]).
    pub(super) activity: Arc<Mutex<ActivityLog>>,
    /// Non-public collections and the capability tokens that admit peers.
    pub(super) caps: Arc<crate::capabilities::CapabilityGate>,
}

/// Most versions waiting to be pushed on; beyond it the rest of a burst (a
/// long catch-up by anti-entropy) is left to a reconciliation with the peers.
const MAX_TAKEN_IN: usize = 1024;

/// Versions this node took in from peers (by push, fetch, delta sync or
/// anti-entropy) since the driver last looked, each with the peer it came
/// from, so the driver pushes them on to the peers that may lack them.
#[derive(Default)]
pub(super) struct TakenIn {
    pub(super) versions: VecDeque<(ContentId, PeerId)>,
    /// More arrived than [`MAX_TAKEN_IN`] could hold.
    pub(super) overflowed: bool,
}

impl<B: Backend> std::fmt::Debug for ReplicatedView<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedView")
            .field("local_prefix", &self.local_prefix)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> ReplicatedView<B> {
    /// The peer of this view and its trust circle now (`None`: own view).
    fn relation(&self) -> Option<Relation> {
        self.peer
            .as_ref()
            .map(|(peer, trust)| Relation::new(*peer, trust(peer)))
    }

    pub(super) fn replicates(&self, collection: &str) -> bool {
        self.in_reach(collection) && self.capable(collection, Action::Read)
    }

    /// Not local, and within the peer's reach.
    fn in_reach(&self, collection: &str) -> bool {
        let local = !self.local_prefix.is_empty() && collection.starts_with(&self.local_prefix);
        !local
            && self
                .relation()
                .is_none_or(|r| self.reach.admits(collection, None, &r))
    }

    /// Whether the peer holds a capability for `action` on `collection` (always
    /// for a public collection, and for this node's own view); a refusal is
    /// recorded in the gate.
    fn capable(&self, collection: &str, action: Action) -> bool {
        let Some(r) = self.relation() else {
            return true;
        };
        if !self.caps.is_restricted(collection) {
            return true;
        }
        let ok = self
            .caps
            .allows(&r.peer, collection, action, self.store.clock_now_ms());
        if !ok {
            self.caps.refuse(r.peer, collection, action);
        }
        ok
    }

    pub(super) fn document_visible(&self, collection: &str, id: &str) -> bool {
        self.replicates(collection)
            && self
                .relation()
                .is_none_or(|r| self.reach.admits(collection, Some(id), &r))
    }

    /// The collection and id of a version node's bytes, if they decode.
    pub(super) fn document_of(bytes: &[u8]) -> Option<(String, String)> {
        ecomesh_wire::decode::<crate::VersionNode>(bytes)
            .ok()
            .map(|v| (v.collection, v.id))
    }
}

impl<B: Backend> ReconcileStore for ReplicatedView<B> {
    fn root(&self) -> Result<ContentId, ReplicationError> {
        let mut map = Map::new();
        for c in self.collections()? {
            if let Some(root) = self.collection_root(&c)? {
                map.insert(c, Value::Link(root));
            }
        }
        let bytes = ecomesh_wire::to_dag_cbor(&Value::Map(map))?;
        Ok(ecomesh_wire::to_content_id(&ecomesh_wire::cid_of_dag_cbor(
            &bytes,
        )))
    }

    fn collections(&self) -> Result<Vec<String>, ReplicationError> {
        Ok(ReconcileStore::collections(&*self.store)?
            .into_iter()
            .filter(|c| self.replicates(c))
            .collect())
    }

    fn collection_root(&self, collection: &str) -> Result<Option<ContentId>, ReplicationError> {
        if !self.replicates(collection) {
            return Ok(None);
        }
        ReconcileStore::collection_root(&*self.store, collection)
    }

    fn merkle_node(
        &self,
        collection: &str,
        path: &[u8],
    ) -> Result<Option<MerkleNode>, ReplicationError> {
        if !self.replicates(collection) {
            return Ok(None);
        }
        ReconcileStore::merkle_node(&*self.store, collection, path)
    }

    fn heads(&self, collection: &str, id: &str) -> Result<Vec<ContentId>, ReplicationError> {
        if !self.replicates(collection) {
            return Ok(Vec::new());
        }
        ReconcileStore::heads(&*self.store, collection, id)
    }

    fn version_bytes(&self, cid: &ContentId) -> Result<Option<Vec<u8>>, ReplicationError> {
        let b = ReconcileStore::version_bytes(&*self.store, cid)?;
        Ok(
            b.filter(|b| {
                Self::document_of(b).is_some_and(|(c, id)| self.document_visible(&c, &id))
            }),
        )
    }

    fn version_parents(&self, cid: &ContentId) -> Result<Option<Vec<ContentId>>, ReplicationError> {
        ReconcileStore::version_parents(&*self.store, cid)
    }

    fn apply_version(&self, bytes: &[u8]) -> Result<ApplyResult, ReplicationError> {
        match Self::document_of(bytes) {
            Some((c, _)) if self.in_reach(&c) && !self.capable(&c, Action::Write) => {
                Ok(ApplyResult::NotAdmitted(format!(
                    "collection {c:?} is not public and the sender holds no write capability"
                )))
            }
            Some((c, id)) if self.in_reach(&c) => {
                // The heads before the merge tell whether it was concurrent.
                let before = match self.relation() {
                    Some(_) => Some(ReconcileStore::heads(&*self.store, &c, &id)?),
                    None => None,
                };
                let result = ReconcileStore::apply_version(&*self.store, bytes)?;
                if result == ApplyResult::Applied
                    && let Some(r) = self.relation()
                {
                    self.note_received(r.peer, bytes, c, id, before.unwrap_or_default());
                    record_in_stream(&self.stream, bytes, Source::Remote(r.peer));
                    let mut t = lock(&self.taken_in);
                    if t.versions.len() < MAX_TAKEN_IN {
                        t.versions
                            .push_back((crate::codec::cid_of_bytes(bytes), r.peer));
                    } else {
                        t.overflowed = true;
                    }
                }
                Ok(result)
            }
            Some((c, _)) => Ok(ApplyResult::NotAdmitted(format!(
                "collection {c:?} is local to this node or outside the sender's reach"
            ))),
            None => Ok(ApplyResult::Invalid("not a version node".into())),
        }
    }
}

impl<B: Backend> ReplicatedView<B> {
    /// Records that version `bytes` of `collection`/`id` was merged from
    /// `peer`; `heads_before` are the document's heads before the merge.
    fn note_received(
        &self,
        peer: PeerId,
        bytes: &[u8],
        collection: String,
        id: String,
        mut heads_before: Vec<ContentId>,
    ) {
        let parents = ecomesh_wire::decode::<crate::VersionNode>(bytes)
            .map(|v| v.parents)
            .unwrap_or_default();
        heads_before.sort();
        let concurrent = !heads_before.is_empty() && parents != heads_before;
        lock(&self.activity).push(SyncActivity::Received {
            peer,
            version: crate::codec::cid_of_bytes(bytes),
            collection,
            id,
            concurrent,
        });
    }
}

impl<B: Backend> P2PStorageAdapter<B> {
    /// The store as `peer` may see it.
    pub(super) fn view_for(&self, peer: PeerId) -> Arc<ReplicatedView<B>> {
        Arc::new(ReplicatedView {
            store: self.store.clone(),
            local_prefix: self.config.local_prefix.clone(),
            reach: self.view.reach.clone(),
            peer: Some((peer, self.config.trust.clone())),
            stream: self.stream.clone(),
            taken_in: self.view.taken_in.clone(),
            activity: self.view.activity.clone(),
            caps: self.view.caps.clone(),
        })
    }
}

impl<B: Backend> P2PStorageAdapter<B> {
    /// Merges version `bytes` that arrived without a peer (read from a file:
    /// sneakernet) through the path a version pushed by its author takes:
    /// strict decoding, signature and author checks, parents present, the
    /// author's reach, then merging, positioning in the stream (source: the
    /// author) and pushing on to partners. Nothing is changed unless the
    /// result is [`ApplyResult::Applied`].
    pub fn import_version(&self, bytes: &[u8]) -> Result<ApplyResult, ReplicationError> {
        let author = match ecomesh_wire::decode::<crate::VersionNode>(bytes) {
            Ok(v) => v.author_peer(),
            Err(e) => return Ok(ApplyResult::Invalid(format!("not a version node: {e}"))),
        };
        let result = self.view_for(author).apply_version(bytes)?;
        if result == ApplyResult::Applied {
            self.wake();
        }
        Ok(result)
    }

    /// The bytes of version `cid` when this node holds it and replicates its
    /// collection (the versions an export may carry).
    pub fn replicated_version_bytes(
        &self,
        cid: &ContentId,
    ) -> Result<Option<Vec<u8>>, ReplicationError> {
        self.view.version_bytes(cid)
    }
}

/// Positions version `bytes` (already in the store) in the node's stream.
/// A failure is logged: the stream only speeds up catching up (delta sync),
/// and anti-entropy still finds whatever it misses.
pub(super) fn record_in_stream(stream: &SharedStream, bytes: &[u8], source: Source) {
    let mut guard = lock(stream);
    let Some(stream) = guard.as_mut() else {
        return;
    };
    let Ok(node) = ecomesh_wire::decode::<crate::VersionNode>(bytes) else {
        return;
    };
    position_in(
        stream,
        crate::codec::cid_of_bytes(bytes),
        node.parents,
        source,
    );
}

/// Positions version `cid` with `parents` (already in the store) in the
/// node's stream, when it keeps one; a failure is logged, as in [`record_in_stream`].
pub(super) fn record_version_in_stream(
    stream: &SharedStream,
    cid: ContentId,
    parents: Vec<ContentId>,
    source: Source,
) {
    if let Some(stream) = lock(stream).as_mut() {
        position_in(stream, cid, parents, source);
    }
}

fn position_in(
    stream: &mut DurableStream,
    cid: ContentId,
    parents: Vec<ContentId>,
    source: Source,
) {
    if let Err(e) = stream.ingest(cid, parents, source) {
        tracing::error!(error = %e, "stream: version not positioned");
    }
}
