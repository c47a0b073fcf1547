//! Pushing versions to partners (`ecomesh/push`): new local versions, relays
//! of versions taken in from peers, and retries of unacknowledged queue items.

use std::collections::BTreeSet;

use ecomesh_replication::merkle::ReconcileStore;
use ecomesh_replication::policy::{Candidate, Origin, partners_in_reach};
use ecomesh_replication::queue::SyncItem;
use ecomesh_replication::stream::Source;
use ecomesh_types::{ContentId, PeerId};

use super::process::{Driver, Outgoing};
use super::session::AeSession;
use super::view::record_version_in_stream;
use super::{P2PStorageAdapter, PUSH_TYPE, ReplicatedView, lock};
use crate::WrittenVersion;
use crate::activity::SyncActivity;
use crate::kv::Backend;

impl<B: Backend> P2PStorageAdapter<B> {
    /// Positions a new local version in the stream, records it in the sync
    /// queue (when there is one) and pushes it to its partners, from what the
    /// write returned: nothing is read back from the store. A version of a
    /// collection local to this node is positioned only.
    pub(super) fn new_version(&self, d: &mut Driver<B>, w: &WrittenVersion, tombstone: bool) {
        record_version_in_stream(
            &self.stream,
            w.cid.clone(),
            w.parents.clone(),
            Source::Local,
        );
        if !self.view.document_visible(&w.collection, &w.id) {
            return;
        }
        let seq = self.enqueue(w, tombstone);
        let doc = (w.collection.as_str(), w.id.as_str());
        self.push_to_partners(
            d,
            &w.cid,
            &w.bytes,
            doc,
            seq,
            &BTreeSet::new(),
            None,
            &BTreeSet::new(),
        );
    }

    /// Pushes on the versions taken in from peers since the last call: each
    /// to its partners among the connected peers, except the peer it came
    /// from and its author, which hold it. A version is taken in (newly
    /// stored) once, so this node pushes it on once, to each partner at most
    /// once. When more arrived than could be remembered (a long catch-up),
    /// this node reconciles with its other peers instead.
    pub(super) fn relay_taken_in(&self, d: &mut Driver<B>) {
        let (versions, overflowed) = {
            let mut t = lock(&self.view.taken_in);
            (
                std::mem::take(&mut t.versions),
                std::mem::take(&mut t.overflowed),
            )
        };
        for (cid, from) in versions {
            let mut skip = BTreeSet::from([from]);
            if let Ok(Some(bytes)) = self.store.version_bytes(&cid)
                && let Ok(node) = ecomesh_wire::decode::<crate::VersionNode>(&bytes)
            {
                skip.insert(node.timestamp.peer);
            }
            let sent = self.push_version(d, &cid, None, &BTreeSet::new(), None, &skip);
            d.stats.versions_relayed += sent as u64;
        }
        if overflowed {
            tracing::debug!(
                "more versions taken in than remembered; reconciling with every peer instead"
            );
            let peers: Vec<PeerId> = self.mesh.peers().iter().map(|p| p.peer_id).collect();
            for p in peers {
                if !d.sessions.get(&p).is_some_and(AeSession::active) {
                    self.start_session(d, p);
                }
            }
        }
    }

    fn enqueue(&self, w: &WrittenVersion, tombstone: bool) -> Option<u64> {
        let queue = self.queue.as_ref()?;
        let (collection, id) = (w.collection.clone(), w.id.clone());
        let cid = &w.cid;
        let factor = self.config.replication.factor_for(&collection);
        let item = if tombstone {
            SyncItem::Tombstone {
                collection,
                id,
                version: cid.clone(),
                factor,
            }
        } else {
            SyncItem::Replicate {
                collection,
                id,
                version: cid.clone(),
                factor,
            }
        };
        match queue.enqueue(item) {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::error!(error = %e, "sync queue: enqueue failed");
                None
            }
        }
    }

    /// Pushes version `cid` to partners that have not acknowledged it yet
    /// (only to `only` when given), never to the peers in `skip` (known to
    /// hold it already). Returns how many pushes were queued.
    fn push_version(
        &self,
        d: &mut Driver<B>,
        cid: &ContentId,
        seq: Option<u64>,
        acked: &BTreeSet<PeerId>,
        only: Option<PeerId>,
        skip: &BTreeSet<PeerId>,
    ) -> usize {
        let bytes = match self.view.version_bytes(cid) {
            Ok(Some(b)) => b,
            Ok(None) => return 0, // gone, or a local collection
            Err(e) => {
                tracing::error!(error = %e, "version written but unreadable");
                return 0;
            }
        };
        let Some((collection, id)) = ReplicatedView::<B>::document_of(&bytes) else {
            return 0;
        };
        self.push_to_partners(d, cid, &bytes, (&collection, &id), seq, acked, only, skip)
    }

    /// Pushes version `cid` (`bytes`, of document `doc`: collection and id) as
    /// [`push_version`](Self::push_version) does, without reading it.
    #[allow(clippy::too_many_arguments)]
    fn push_to_partners(
        &self,
        d: &mut Driver<B>,
        cid: &ContentId,
        bytes: &[u8],
        (collection, id): (&str, &str),
        seq: Option<u64>,
        acked: &BTreeSet<PeerId>,
        only: Option<PeerId>,
        skip: &BTreeSet<PeerId>,
    ) -> usize {
        let factor = self.config.replication.factor_for(collection);
        let missing = (factor as usize).saturating_sub(acked.len());
        if missing == 0 {
            return 0;
        }
        // Partners by the replication policy (proximity, diversity, reputation,
        // pins), among the connected peers the document's reach admits.
        let candidates = self
            .mesh
            .peers()
            .iter()
            .filter(|p| {
                !acked.contains(&p.peer_id)
                    && !skip.contains(&p.peer_id)
                    && only.is_none_or(|o| o == p.peer_id)
            })
            .map(Candidate::from_peer_info)
            .collect::<Vec<_>>();
        let origin = Origin {
            peer: self.store.peer_id(),
            network: None,
        };
        let chosen = partners_in_reach(
            u32::try_from(missing).unwrap_or(factor),
            collection,
            Some(id),
            &origin,
            &self.config.pins,
            candidates,
            |c| self.view_for(c.peer).document_visible(collection, id),
        );
        let sent = chosen.partners.len();
        if sent == 0 {
            return 0;
        }
        // Versions travel in compact form; the partner rebuilds the canonical bytes.
        let payload = match crate::records::compact_of_canonical(bytes, &self.mesh.peer_id()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "stored version has no compact form");
                return 0;
            }
        };
        let mut activity = lock(&self.view.activity);
        for p in chosen.partners {
            activity.push(SyncActivity::Sent {
                peer: p,
                version: cid.clone(),
                collection: collection.to_owned(),
                id: id.to_owned(),
            });
            d.stats.versions_pushed += 1;
            d.outbox.push_back(Outgoing {
                peer: p,
                ty: PUSH_TYPE,
                payload: payload.clone(),
                seq,
            });
        }
        sent
    }

    /// Pushes the queued items `peer` has not acknowledged to it (a page at a time).
    pub(super) fn retry_pending(&self, d: &mut Driver<B>, peer: PeerId) {
        let Some(q) = &self.queue else { return };
        let page = match q.pending(0, self.config.retry_page) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "sync queue unreadable");
                return;
            }
        };
        for item in page.items {
            let (SyncItem::Replicate { version, .. } | SyncItem::Tombstone { version, .. }) =
                &item.item
            else {
                continue;
            };
            if !item.acked_by.contains(&peer) {
                self.push_version(
                    d,
                    version,
                    Some(item.seq),
                    &item.acked_by,
                    Some(peer),
                    &BTreeSet::new(),
                );
            }
        }
    }
}
