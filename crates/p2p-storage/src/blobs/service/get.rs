//! Getting blobs: [`BlobGet`], the pending result of [`BlobService::get_blob`], and
//! the per-get state machine (manifest lookup from peers, then fetching pieces).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use ecomesh_replication::ReplicationError;
use ecomesh_replication::blob::{BlobId, Manifest};
use ecomesh_replication::shard::{FetchConfig, FetchPoll, Fetcher, ShardResponse};
use ecomesh_types::PeerId;

use super::super::frame::FrameKind;
use super::{BlobService, Driver, GetOp, GetState, Purpose, Queued, ShardOrManifest, lock};
use crate::StoreError;
use crate::kv::Backend;

/// What the answer to a get is.
pub type BlobResult = Result<Vec<u8>, StoreError>;

pub(super) type Slot = Arc<Mutex<(Option<BlobResult>, Option<Waker>)>>;

fn fill(slot: &Slot, value: BlobResult) {
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

/// The pending result of [`BlobService::get_blob`]: a future, or poll it
/// without an executor with [`BlobGet::try_take`]. It completes during a
/// later [`BlobService::process`] (or at once when the blob is local).
#[derive(Debug)]
pub struct BlobGet {
    slot: Slot,
}

impl BlobGet {
    /// The result, once; `None` while it is still being fetched (or after it
    /// was taken).
    pub fn try_take(&self) -> Option<BlobResult> {
        lock(&self.slot).0.take()
    }
}

impl Future for BlobGet {
    type Output = BlobResult;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.slot);
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<B: Backend> BlobService<B> {
    /// The blob `id`: from local pieces when enough are here (at once),
    /// otherwise fetched during later [`process`](Self::process) calls.
    ///
    /// Without a local manifest, up to `manifest_peers` connected peers are
    /// asked for it (a manifest whose id differs is refused and charged).
    /// Then each missing piece is asked with `Get` of one holder at a time
    /// (local pieces first, then the peers recorded as confirmed replicas,
    /// then every connected peer by reputation), `fetch_in_flight` at most;
    /// every piece is verified against its id (a mismatch is refused,
    /// charged to the sender and asked elsewhere), verified pieces are
    /// cached locally, and the blob is rebuilt (any 4 of 7 shards) and
    /// checked against `id`. Fails with
    /// [`ReplicationError::Unrecoverable`] (in [`StoreError::Blob`]) when no
    /// peer has the manifest or too few pieces can be had.
    pub fn get_blob(&self, id: BlobId, now_ms: u64) -> BlobGet {
        let slot: Slot = Arc::default();
        match self.store.read_local(&id, now_ms) {
            Ok(Some(data)) => {
                fill(&slot, Ok(data));
                lock(&self.driver).stats.gets_done += 1;
                return BlobGet { slot };
            }
            Ok(None) => {}
            Err(e) => {
                fill(&slot, Err(e));
                return BlobGet { slot };
            }
        }
        {
            let mut d = lock(&self.driver);
            let get = d.next_get;
            d.next_get += 1;
            let state = match self.store.manifest(&id) {
                Ok(Some(stored)) => match self.fetcher(stored.manifest) {
                    Ok(f) => GetState::Fetching(Box::new(f)),
                    Err(e) => {
                        fill(&slot, Err(e));
                        return BlobGet { slot };
                    }
                },
                Ok(None) => GetState::Manifest {
                    started: false,
                    asked: 0,
                    answered: 0,
                },
                Err(e) => {
                    fill(&slot, Err(e));
                    return BlobGet { slot };
                }
            };
            d.gets.insert(
                get,
                GetOp {
                    id,
                    slot: slot.clone(),
                    state,
                },
            );
        }
        self.wake();
        BlobGet { slot }
    }

    fn fetcher(&self, manifest: Manifest) -> Result<Fetcher, StoreError> {
        let me = self.me();
        let connected = self.connected();
        let mut holders = Vec::with_capacity(manifest.pieces().len());
        for piece in manifest.pieces() {
            let mut h = Vec::new();
            if self.store.has_piece(piece)? {
                h.push(me);
            }
            let confirmed = self.store.confirmed(piece)?;
            h.extend(connected.iter().filter(|p| confirmed.contains(p)).copied());
            h.extend(connected.iter().copied());
            holders.push(h);
        }
        let config = FetchConfig {
            max_in_flight: self.config.fetch_in_flight.max(1),
            limits: self.config.limits,
        };
        Ok(Fetcher::new(manifest, holders, config)?)
    }

    /// A manifest answer for get `get` (None: not held, or a failure).
    pub(super) fn manifest_answer(
        &self,
        d: &mut Driver,
        get: u64,
        found: Option<(String, Manifest)>,
        now_ms: u64,
    ) {
        let Some(op) = d.gets.get_mut(&get) else {
            return;
        };
        let GetState::Manifest {
            asked, answered, ..
        } = &mut op.state
        else {
            return;
        };
        *answered += 1;
        let exhausted = *answered >= *asked;
        match found {
            Some((collection, manifest)) => {
                if let Err(e) = self.store.adopt_manifest(&collection, &manifest, now_ms) {
                    tracing::warn!(error = %e, "manifest not stored");
                }
                match self.fetcher(manifest) {
                    Ok(f) => op.state = GetState::Fetching(Box::new(f)),
                    Err(e) => self.finish(d, get, Err(e)),
                }
            }
            None if exhausted => {
                let id = op.id.to_text();
                self.finish(
                    d,
                    get,
                    Err(ReplicationError::Unrecoverable {
                        what: id,
                        detail: "no connected peer has its manifest".to_owned(),
                    }
                    .into()),
                );
            }
            None => {}
        }
    }

    fn finish(&self, d: &mut Driver, get: u64, result: BlobResult) {
        // Pieces cached while fetching reach the disk now.
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "fetched pieces not flushed");
        }
        if let Some(op) = d.gets.remove(&get) {
            if result.is_ok() {
                d.stats.gets_done += 1;
                if let Err(e) = self.store.touch(&op.id, d.now_ms) {
                    tracing::warn!(error = %e, "blob use not recorded");
                }
            } else {
                d.stats.gets_failed += 1;
            }
            fill(&op.slot, result);
        }
        // Requests still out for it are answered into the void.
    }

    /// Starts manifest lookups and drives fetchers until they wait.
    pub(super) fn drive_gets(&self, d: &mut Driver) {
        let ids: Vec<u64> = d.gets.keys().copied().collect();
        for get in ids {
            let (blob, unstarted) = match d.gets.get_mut(&get) {
                Some(GetOp {
                    id,
                    state: GetState::Manifest { started, .. },
                    ..
                }) => {
                    let was = *started;
                    *started = true;
                    (*id, Some(!was))
                }
                Some(op) => (op.id, None),
                None => continue,
            };
            match unstarted {
                Some(true) => self.ask_manifest(d, get, blob),
                Some(false) => {}
                None => self.drive_fetch(d, get),
            }
        }
    }

    fn ask_manifest(&self, d: &mut Driver, get: u64, blob: BlobId) {
        let peers: Vec<PeerId> = self
            .connected()
            .into_iter()
            .take(self.config.manifest_peers.max(1))
            .collect();
        if let Some(GetOp {
            state: GetState::Manifest { asked, .. },
            ..
        }) = d.gets.get_mut(&get)
        {
            *asked = peers.len();
        }
        if peers.is_empty() {
            self.finish(
                d,
                get,
                Err(ReplicationError::Unrecoverable {
                    what: blob.to_text(),
                    detail: "not held here and no peer connected".to_owned(),
                }
                .into()),
            );
            return;
        }
        for peer in peers {
            self.enqueue(
                d,
                Queued {
                    peer,
                    kind: FrameKind::ManifestRequest,
                    request: ShardOrManifest::Manifest(blob),
                    purpose: Purpose::Manifest { get },
                },
            );
        }
    }

    fn drive_fetch(&self, d: &mut Driver, get: u64) {
        let me = self.me();
        loop {
            let poll = match d.gets.get_mut(&get) {
                Some(GetOp {
                    state: GetState::Fetching(f),
                    ..
                }) => f.poll(),
                _ => return,
            };
            match poll {
                FetchPoll::Send(reqs) => {
                    for o in reqs {
                        if o.peer != me {
                            self.enqueue(
                                d,
                                Queued {
                                    peer: o.peer,
                                    kind: FrameKind::ShardRequest,
                                    request: ShardOrManifest::Shard(o.request),
                                    purpose: Purpose::Piece { get, rid: o.id },
                                },
                            );
                            continue;
                        }
                        let piece = o.request.id();
                        let resp = match self.store.piece(&piece) {
                            Ok(Some(b)) => ShardResponse::Data(b),
                            Ok(None) => ShardResponse::NotFound,
                            Err(e) => {
                                tracing::warn!(%piece, error = %e, "local piece unreadable; fetching it again");
                                if let Err(e) = self.store.remove_piece(&piece) {
                                    tracing::warn!(%piece, error = %e, "damaged piece not removed");
                                }
                                ShardResponse::NotFound
                            }
                        };
                        if let Some(GetOp {
                            state: GetState::Fetching(f),
                            ..
                        }) = d.gets.get_mut(&get)
                        {
                            // Local bytes were verified on read.
                            let _ = f.on_response(o.id, &resp.encode());
                        }
                    }
                }
                FetchPoll::Wait | FetchPoll::Finished => return,
                FetchPoll::Done(data) => return self.finish(d, get, Ok(data)),
                FetchPoll::Failed(e) => return self.finish(d, get, Err(e.into())),
            }
        }
    }
}
