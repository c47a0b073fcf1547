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

impl Waiter {
    fn fail(self, e: StoreError) {
        match self {
            Waiter::Bytes(s) => fill(&s, Err(e)),
            Waiter::Local(s) => fill(&s, Err(e)),
        }
    }
}
use crate::StoreError;
use crate::kv::Backend;

/// What the answer to a get is.
pub type BlobResult = Result<Vec<u8>, StoreError>;

/// Where a result waits for its future.
pub(super) type Slot<T> = Arc<Mutex<(Option<Result<T, StoreError>>, Option<Waker>)>>;

fn fill<T>(slot: &Slot<T>, value: Result<T, StoreError>) {
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

fn poll_slot<T>(slot: &Slot<T>, cx: &Context<'_>) -> Poll<Result<T, StoreError>> {
    let mut s = lock(slot);
    match s.0.take() {
        Some(v) => Poll::Ready(v),
        None => {
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Who waits for a get, and for what.
pub(super) enum Waiter {
    /// [`BlobService::get_blob`]: the blob's bytes.
    Bytes(Slot<Vec<u8>>),
    /// [`BlobService::fetch_blob`]: its length, once every piece is local.
    Local(Slot<u64>),
}

/// The pending result of [`BlobService::get_blob`]: a future, or poll it
/// without an executor with [`BlobGet::try_take`]. It completes during a
/// later [`BlobService::process`] (or at once when the blob is local).
#[derive(Debug)]
pub struct BlobGet {
    slot: Slot<Vec<u8>>,
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
        poll_slot(&self.slot, cx)
    }
}

/// The pending result of [`BlobService::fetch_blob`]: the blob's length once
/// every piece it needs is stored locally (read it with
/// [`BlobStore::write_local`](super::super::BlobStore::write_local)). A
/// future, or poll it with [`BlobFetch::try_take`].
#[derive(Debug)]
pub struct BlobFetch {
    slot: Slot<u64>,
}

impl BlobFetch {
    /// The result, once; `None` while it is still being fetched (or after it
    /// was taken).
    pub fn try_take(&self) -> Option<Result<u64, StoreError>> {
        lock(&self.slot).0.take()
    }
}

impl Future for BlobFetch {
    type Output = Result<u64, StoreError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_slot(&self.slot, cx)
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
    /// every piece is verified against its id on arrival (a mismatch is
    /// refused, charged to the sender and asked elsewhere) and cached
    /// locally, not held; once all are here the blob is read back from the
    /// local pieces (any 4 of 7 shards) and checked against `id`. Fails with
    /// [`ReplicationError::Unrecoverable`] (in [`StoreError::Blob`]) when no
    /// peer has the manifest or too few pieces can be had.
    ///
    /// The result holds the whole blob in memory; [`fetch_blob`](Self::fetch_blob)
    /// with [`BlobStore::write_local`](super::super::BlobStore::write_local)
    /// does the same in memory bounded by `fetch_in_flight` pieces.
    pub fn get_blob(&self, id: BlobId, now_ms: u64) -> BlobGet {
        let slot: Slot<Vec<u8>> = Arc::default();
        match self.store.read_local(&id, now_ms) {
            Ok(Some(data)) => {
                fill(&slot, Ok(data));
                lock(&self.driver).stats.gets_done += 1;
            }
            Ok(None) => self.start_get(id, Waiter::Bytes(slot.clone())),
            Err(e) => fill(&slot, Err(e)),
        }
        BlobGet { slot }
    }

    /// Makes every piece of blob `id` that a read needs local (all of them,
    /// or 4 of 7 shards), fetching the missing ones as
    /// [`get_blob`](Self::get_blob) does, and resolves to the blob's length
    /// without reading it: pieces are verified on arrival and go straight to
    /// the store, so memory stays bounded by `fetch_in_flight` pieces
    /// whatever the blob's size. Read the blob with
    /// [`BlobStore::write_local`](super::super::BlobStore::write_local),
    /// which checks it against `id`.
    pub fn fetch_blob(&self, id: BlobId, now_ms: u64) -> BlobFetch {
        let slot: Slot<u64> = Arc::default();
        match self.local_len(&id) {
            Ok(Some(len)) => {
                if let Err(e) = self.store.touch(&id, now_ms) {
                    tracing::warn!(error = %e, "blob use not recorded");
                }
                fill(&slot, Ok(len));
                lock(&self.driver).stats.gets_done += 1;
            }
            Ok(None) => self.start_get(id, Waiter::Local(slot.clone())),
            Err(e) => fill(&slot, Err(e)),
        }
        BlobFetch { slot }
    }

    /// The length of blob `id` when its manifest and enough pieces to read
    /// it are local (their bytes are not read).
    fn local_len(&self, id: &BlobId) -> Result<Option<u64>, StoreError> {
        let Some(stored) = self.store.manifest(id)? else {
            return Ok(None);
        };
        let mut held = 0;
        for piece in stored.manifest.pieces() {
            if self.store.has_piece(piece)? {
                held += 1;
            }
        }
        Ok((held >= stored.manifest.pieces_needed()).then_some(stored.manifest.len()))
    }

    /// Registers a get that fetches from peers (or fails `waiter` at once).
    fn start_get(&self, id: BlobId, waiter: Waiter) {
        {
            let mut d = lock(&self.driver);
            let get = d.next_get;
            d.next_get += 1;
            let state = match self.store.manifest(&id) {
                Ok(Some(stored)) => match self.fetcher(stored.manifest) {
                    Ok(f) => GetState::Fetching(Box::new(f)),
                    Err(e) => return waiter.fail(e),
                },
                Ok(None) => GetState::Manifest {
                    started: false,
                    asked: 0,
                    answered: 0,
                },
                Err(e) => return waiter.fail(e),
            };
            d.gets.insert(get, GetOp { id, waiter, state });
        }
        self.wake();
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
            // Verified pieces go to the store (see `on_shard_response`), so
            // a get holds only the pieces in flight.
            keep_pieces: false,
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

    /// Ends get `get`: `Ok` once its pieces are local (or with the blob
    /// itself, from a fetcher that kept its pieces), or the failure.
    fn finish(&self, d: &mut Driver, get: u64, result: Result<Option<Vec<u8>>, StoreError>) {
        // Pieces cached while fetching reach the disk now.
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "fetched pieces not flushed");
        }
        let Some(op) = d.gets.remove(&get) else {
            return; // Requests still out for it are answered into the void.
        };
        let done = match (result, op.waiter) {
            (Err(e), waiter) => {
                waiter.fail(e);
                false
            }
            (Ok(bytes), Waiter::Bytes(slot)) => {
                let read = match bytes {
                    Some(b) => Ok(b),
                    None => self.store.read_local(&op.id, d.now_ms).and_then(|b| {
                        b.ok_or_else(|| {
                            ReplicationError::Unrecoverable {
                                what: op.id.to_text(),
                                detail: "fetched pieces are no longer here".to_owned(),
                            }
                            .into()
                        })
                    }),
                };
                let ok = read.is_ok();
                fill(&slot, read);
                ok
            }
            (Ok(bytes), Waiter::Local(slot)) => {
                let len = match bytes {
                    Some(b) => Ok(b.len() as u64),
                    None => self
                        .store
                        .manifest(&op.id)
                        .map(|m| m.map_or(0, |m| m.manifest.len())),
                };
                let ok = len.is_ok();
                fill(&slot, len);
                ok
            }
        };
        if done {
            d.stats.gets_done += 1;
            if let Err(e) = self.store.touch(&op.id, d.now_ms) {
                tracing::warn!(error = %e, "blob use not recorded");
            }
        } else {
            d.stats.gets_failed += 1;
        }
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
                FetchPoll::Done(data) => return self.finish(d, get, Ok(Some(data))),
                FetchPoll::Fetched => return self.finish(d, get, Ok(None)),
                FetchPoll::Failed(e) => return self.finish(d, get, Err(e.into())),
            }
        }
    }
}
