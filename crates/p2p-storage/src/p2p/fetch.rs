//! Reads that miss locally: asking peers for a document's versions
//! (`ecomesh/fetch`), waiting for their answers, and answering theirs.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use ecomesh_replication::merkle::ReconcileStore;
use ecomesh_types::{Document, Error, PeerId};

use super::process::{Driver, Outgoing};
use super::wire::{encode_fetch, encode_fetched};
use super::{FETCH_TYPE, FETCHED_TYPE, P2PStorageAdapter, lock};
use crate::kv::Backend;

/// A one-shot slot a `get` waits on.
pub(super) type Slot = Arc<Mutex<(Option<Result<Option<Document>, Error>>, Option<Waker>)>>;

/// A read miss waiting for peers' answers (see `get_or_fetch`).
pub(super) struct Fetch {
    pub(super) collection: String,
    pub(super) id: String,
    pub(super) deadline_ms: Option<u64>,
    pub(super) asked: usize,
    pub(super) answered: usize,
    pub(super) slot: Slot,
}

fn fill(slot: &Slot, value: Result<Option<Document>, Error>) {
    let waker = {
        let mut s = lock(slot);
        if s.0.is_none() {
            s.0 = Some(value);
        }
        s.1.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

struct Wait(Slot);

impl Future for Wait {
    type Output = Result<Option<Document>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.0);
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<B: Backend> P2PStorageAdapter<B> {
    pub(super) async fn get_or_fetch(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<Document>, Error> {
        if let Some(doc) = self.store.get(collection, id)? {
            return Ok(Some(doc));
        }
        if !self.view.replicates(collection) {
            return Ok(None);
        }
        let peers: Vec<PeerId> = {
            let mut ps: Vec<(f64, PeerId)> = self
                .mesh
                .peers()
                .into_iter()
                .map(|p| (p.reputation, p.peer_id))
                .collect();
            ps.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            ps.into_iter()
                .take(self.config.fetch_peers)
                .map(|(_, p)| p)
                .collect()
        };
        if peers.is_empty() {
            return Ok(None);
        }
        let slot: Slot = Arc::default();
        {
            let mut d = lock(&self.driver);
            let req = d.next_fetch;
            d.next_fetch += 1;
            for p in &peers {
                d.outbox.push_back(Outgoing {
                    peer: *p,
                    ty: FETCH_TYPE,
                    payload: encode_fetch(req, collection, id),
                    seq: None,
                });
            }
            d.fetches.insert(
                req,
                Fetch {
                    collection: collection.to_owned(),
                    id: id.to_owned(),
                    deadline_ms: None,
                    asked: peers.len(),
                    answered: 0,
                    slot: slot.clone(),
                },
            );
        }
        self.wake();
        Wait(slot).await
    }

    /// Answers a peer's fetch: the document's versions the peer may see,
    /// within `max_fetch_bytes`.
    pub(super) fn serve_fetch(&self, d: &mut Driver<B>, from: PeerId, req: i64, c: &str, i: &str) {
        let mut versions = Vec::new();
        let mut total = 0usize;
        if let Ok(history) = self.store.history(c, i) {
            for v in history {
                let Ok(Some(b)) = self.view_for(from).version_bytes(&v.cid) else {
                    continue;
                };
                // Versions travel in compact form; the peer rebuilds the canonical bytes.
                let Ok(b) = crate::records::compact_of_canonical(&b, &self.mesh.peer_id()) else {
                    continue;
                };
                total += b.len();
                if total > self.config.max_fetch_bytes {
                    break;
                }
                versions.push(b);
            }
        }
        d.outbox.push_back(Outgoing {
            peer: from,
            ty: FETCHED_TYPE,
            payload: encode_fetched(req, versions),
            seq: None,
        });
    }

    /// Merges a peer's answer to fetch `req`; the waiting read is answered
    /// once every asked peer answered or the document is here.
    pub(super) fn on_fetched(
        &self,
        d: &mut Driver<B>,
        from: PeerId,
        req: u64,
        versions: Vec<Vec<u8>>,
    ) {
        for v in versions {
            if !self.merge_compact(d, from, &v) {
                break;
            }
        }
        let finished = d.fetches.get_mut(&req).is_some_and(|f| {
            f.answered += 1;
            f.answered >= f.asked
                || self
                    .store
                    .get(&f.collection, &f.id)
                    .ok()
                    .flatten()
                    .is_some()
        });
        if finished && let Some(f) = d.fetches.remove(&req) {
            fill(
                &f.slot,
                self.store.get(&f.collection, &f.id).map_err(Into::into),
            );
        }
    }

    /// Gives each new fetch its deadline and answers the fetches past theirs
    /// from the local store.
    pub(super) fn expire_fetches(&self, d: &mut Driver<B>, now_ms: u64) {
        let mut expired = Vec::new();
        for (id, f) in &mut d.fetches {
            match f.deadline_ms {
                None => f.deadline_ms = Some(now_ms.saturating_add(self.config.fetch_timeout_ms)),
                Some(t) if now_ms >= t => expired.push(*id),
                Some(_) => {}
            }
        }
        for id in expired {
            if let Some(f) = d.fetches.remove(&id) {
                fill(
                    &f.slot,
                    self.store.get(&f.collection, &f.id).map_err(Into::into),
                );
            }
        }
    }
}
