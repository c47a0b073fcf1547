//! [`BlobService`]: the blob store over the mesh (see the module docs of `blobs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use ecomesh_mesh::reputation::Observation;
use ecomesh_mesh::{MeshEvent, MultiTransportManager};
use ecomesh_replication::ReplicationError;
use ecomesh_replication::blob::{
    BlobConfig, BlobId, Encoding, Manifest, ManifestLimits, TOTAL_SHARDS, place_shards,
};
use ecomesh_replication::policy::{
    Candidate, MAX_FACTOR, Origin, ReplicationConfig, select_partners,
};
use ecomesh_replication::reach::{Reach, ReachPolicy, Relation, Trust};
use ecomesh_replication::shard::{
    FetchConfig, FetchPoll, Fetcher, RequestId, ShardLimits, ShardRequest, ShardResponse,
    ShardServer, ShardStore,
};
use ecomesh_types::{MessageId, PeerId, Priority};

use super::frame::{self, FrameKind};
use super::store::{BlobStore, GcReport};
use crate::StoreError;
use crate::kv::Backend;

/// Mesh message type of every blob-protocol envelope.
pub const SHARD_TYPE: &str = "ecomesh/shard";

/// Tunables of a [`BlobService`].
#[derive(Clone)]
pub struct BlobServiceConfig {
    /// Size thresholds of the encodings (seed 001 table by default).
    pub blob: BlobConfig,
    /// Replication factors per collection and the GC TTL.
    pub replication: ReplicationConfig,
    /// Bounds on shard frames from peers.
    pub limits: ShardLimits,
    /// Bounds on manifests from peers and disk.
    pub manifest_limits: ManifestLimits,
    /// A request unanswered this long, in milliseconds, has failed.
    pub request_timeout_ms: u64,
    /// Most requests out at once over all peers; more wait in a queue.
    pub max_in_flight: usize,
    /// Most requests waiting for a slot; further ones are dropped (logged).
    pub max_queued: usize,
    /// Most piece requests one `get_blob` has out at once.
    pub fetch_in_flight: usize,
    /// Connected peers asked for a manifest this node does not have.
    pub manifest_peers: usize,
    /// Largest payload of one mesh message; larger frames travel in parts.
    pub max_part_bytes: usize,
    /// Bytes of incoming multi-part frames held while they are joined.
    pub max_reassembly_bytes: usize,
    /// TTL of the service's mesh messages, in seconds.
    pub message_ttl_secs: u32,
    /// Mesh events queued between two `process` calls; more are dropped.
    pub inbox_capacity: usize,
    /// Whether pieces pushed by peers are stored (false: refused with an `Error`).
    pub accept_pushes: bool,
    /// Who may receive which blob (seed 001 reach), judged on the blob's
    /// collection and `(collection, blob id text)`: a peer outside the reach
    /// is never pushed the blob and is answered `NotFound` / `Have(false)` /
    /// no manifest for it.
    pub reach: ReachPolicy,
    /// How this node relates to a peer (own device, family, ...), for reach.
    pub trust: Arc<dyn Fn(&PeerId) -> Trust + Send + Sync>,
    /// When a peer connects, [`BlobService::replicate`] runs for every blob
    /// this node originated, so blobs put while partners were away reach
    /// them. Costs a scan of those blobs' indexes per connection.
    pub replicate_on_connect: bool,
}

impl std::fmt::Debug for BlobServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobServiceConfig")
            .field("blob", &self.blob)
            .field("replication", &self.replication)
            .field("limits", &self.limits)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_part_bytes", &self.max_part_bytes)
            .field("reach", &self.reach)
            .finish_non_exhaustive()
    }
}

impl Default for BlobServiceConfig {
    fn default() -> Self {
        BlobServiceConfig {
            blob: BlobConfig::default(),
            replication: ReplicationConfig::seed_defaults(),
            limits: ShardLimits::default(),
            manifest_limits: ManifestLimits::default(),
            request_timeout_ms: 15_000,
            max_in_flight: 32,
            max_queued: 65_536,
            fetch_in_flight: 4,
            manifest_peers: 3,
            max_part_bytes: 1 << 20,
            max_reassembly_bytes: 64 << 20,
            message_ttl_secs: 120,
            inbox_capacity: 8192,
            accept_pushes: true,
            reach: ReachPolicy::new(Reach::Commons),
            trust: Arc::new(|_: &PeerId| Trust::Stranger),
            replicate_on_connect: true,
        }
    }
}

/// Counters of what the service did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlobStats {
    /// Pieces pushed to partners.
    pub pieces_pushed: u64,
    /// Pushes acknowledged (the partner is recorded as a confirmed replica).
    pub pushes_acked: u64,
    /// Verified pieces received in answer to `Get`.
    pub pieces_fetched: u64,
    /// Requests from peers answered.
    pub requests_served: u64,
    /// Frames or pieces refused from peers (charged to their reputation).
    pub rejected: u64,
    /// Requests that timed out or whose peer was lost.
    pub timeouts: u64,
    /// Requests dropped because the queue was full.
    pub dropped_requests: u64,
    /// `get_blob` calls completed with the blob.
    pub gets_done: u64,
    /// `get_blob` calls that failed.
    pub gets_failed: u64,
    /// Mesh events dropped because the inbox was full.
    pub dropped_events: u64,
}

/// What the answer to a get is.
pub type BlobResult = Result<Vec<u8>, StoreError>;

type Slot = Arc<Mutex<(Option<BlobResult>, Option<Waker>)>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Why a request is out.
#[derive(Debug)]
enum Purpose {
    Piece { get: u64, rid: RequestId },
    Push { piece: BlobId },
    Have { piece: BlobId },
    Manifest { get: u64 },
}

/// A request waiting for a slot. Push payloads are read from the store when sent.
#[derive(Debug)]
struct Queued {
    peer: PeerId,
    kind: FrameKind,
    request: ShardOrManifest,
    purpose: Purpose,
}

#[derive(Debug)]
enum ShardOrManifest {
    Shard(ShardRequest),
    /// A push of this stored piece.
    PushStored(BlobId),
    Manifest(BlobId),
}

#[derive(Debug)]
struct InFlight {
    purpose: Purpose,
    deadline_ms: u64,
}

/// A message to hand to the mesh.
struct Outgoing {
    peer: PeerId,
    kind: FrameKind,
    request: u64,
    frame: Vec<u8>,
    bulk: bool,
}

enum GetState {
    /// Waiting for a manifest from peers.
    Manifest {
        started: bool,
        asked: usize,
        answered: usize,
    },
    Fetching(Box<Fetcher>),
}

struct GetOp {
    id: BlobId,
    slot: Slot,
    state: GetState,
}

struct Reassembly {
    parts: BTreeMap<u32, Vec<u8>>,
    total: u32,
    bytes: usize,
    started_ms: u64,
}

struct Driver {
    now_ms: u64,
    next_request: u64,
    out: BTreeMap<(PeerId, u64), InFlight>,
    queue: VecDeque<Queued>,
    outbox: VecDeque<Outgoing>,
    gets: BTreeMap<u64, GetOp>,
    next_get: u64,
    reassembly: BTreeMap<(PeerId, FrameKind, u64), Reassembly>,
    reassembly_bytes: usize,
    stats: BlobStats,
}

/// Fills the 16 random bytes of a message id.
pub type BlobRandom = Arc<dyn Fn(&mut [u8; 16]) + Send + Sync>;

/// The blob store replicated over a [`MultiTransportManager`] (see the module
/// docs of `blobs` for the protocol). Driven like
/// [`P2PStorageAdapter`](crate::P2PStorageAdapter): mesh events are queued
/// by a listener and handled by [`BlobService::process`], which the owner
/// calls with the current time after `MultiTransportManager::process`; the
/// service reads no clock.
pub struct BlobService<B: Backend> {
    store: Arc<BlobStore<B>>,
    mesh: Arc<MultiTransportManager>,
    config: BlobServiceConfig,
    inbox: Arc<Mutex<(VecDeque<MeshEvent>, u64)>>,
    _subscription: ecomesh_types::Subscription,
    driver: Mutex<Driver>,
    waker: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    random: Mutex<Option<BlobRandom>>,
}

impl<B: Backend> std::fmt::Debug for BlobService<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobService")
            .field("peer", &self.store.local())
            .finish_non_exhaustive()
    }
}

/// The store as the shard server sees it; writes are stamped `now_ms`.
struct Served<'a, B: Backend> {
    store: &'a BlobStore<B>,
    now_ms: u64,
}

fn storage(e: StoreError) -> ReplicationError {
    match e {
        StoreError::Blob(r) => r,
        StoreError::Corrupt { id, .. } => ReplicationError::HashMismatch {
            expected: id,
            peer: None,
        },
        e => ReplicationError::Storage(e.to_string()),
    }
}

impl<B: Backend> ShardStore for Served<'_, B> {
    fn put(&mut self, id: &BlobId, data: &[u8]) -> Result<(), ReplicationError> {
        self.store
            .put_piece(id, data, self.now_ms)
            .map(|_| ())
            .map_err(storage)
    }
    fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>, ReplicationError> {
        self.store.piece(id).map_err(storage)
    }
    fn has(&self, id: &BlobId) -> Result<bool, ReplicationError> {
        self.store.has_piece(id).map_err(storage)
    }
}

/// True for errors that are the sending peer's fault.
fn peer_fault(e: &ReplicationError) -> bool {
    matches!(
        e,
        ReplicationError::Malformed { .. }
            | ReplicationError::TooLarge { .. }
            | ReplicationError::HashMismatch { .. }
            | ReplicationError::Wire(_)
    )
}

impl<B: Backend> BlobService<B> {
    /// Serves and replicates `store` over `mesh`, which must sign as the
    /// store's node ([`BlobStore::local`]).
    pub fn new(
        store: Arc<BlobStore<B>>,
        mesh: Arc<MultiTransportManager>,
        config: BlobServiceConfig,
    ) -> Self {
        let inbox: Arc<Mutex<(VecDeque<MeshEvent>, u64)>> = Arc::default();
        let cap = config.inbox_capacity;
        let q = inbox.clone();
        let sub = mesh.subscribe(Arc::new(move |ev: &MeshEvent| {
            let wanted = match ev {
                MeshEvent::Message { message, .. } => message.message_type == SHARD_TYPE,
                MeshEvent::PeerLost(_) | MeshEvent::PeerDiscovered(_) => true,
                _ => false,
            };
            if wanted {
                let mut q = lock(&q);
                if q.0.len() >= cap {
                    q.1 += 1;
                } else {
                    q.0.push_back(ev.clone());
                }
            }
        }));
        BlobService {
            store,
            mesh,
            config,
            inbox,
            _subscription: sub,
            driver: Mutex::new(Driver {
                now_ms: 0,
                next_request: 0,
                out: BTreeMap::new(),
                queue: VecDeque::new(),
                outbox: VecDeque::new(),
                gets: BTreeMap::new(),
                next_get: 1,
                reassembly: BTreeMap::new(),
                reassembly_bytes: 0,
                stats: BlobStats::default(),
            }),
            waker: Mutex::new(None),
            random: Mutex::new(None),
        }
    }

    /// The local blob store.
    pub fn store(&self) -> &Arc<BlobStore<B>> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &BlobServiceConfig {
        &self.config
    }

    /// Replaces the operating system's randomness for message and request
    /// ids (a deterministic simulator uses a seeded source).
    pub fn set_random(&self, random: BlobRandom) {
        *lock(&self.random) = Some(random);
    }

    /// Called (from any thread) whenever the service has work for [`process`](Self::process).
    pub fn set_waker(&self, waker: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.waker) = Some(waker);
    }

    fn wake(&self) {
        let w = lock(&self.waker).clone();
        if let Some(w) = w {
            w();
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> BlobStats {
        let mut s = lock(&self.driver).stats.clone();
        s.dropped_events = lock(&self.inbox).1;
        s
    }

    /// Requests out plus requests queued; 0 when the service is idle.
    pub fn pending_requests(&self) -> usize {
        let d = lock(&self.driver);
        d.out.len() + d.queue.len() + d.outbox.len()
    }

    /// `get_blob` calls still running.
    pub fn pending_gets(&self) -> usize {
        lock(&self.driver).gets.len()
    }

    fn me(&self) -> PeerId {
        self.store.local()
    }

    /// True when `peer` is inside the reach of blob `blob` of `collection`.
    fn admits(&self, peer: &PeerId, collection: &str, blob: &BlobId) -> bool {
        let relation = Relation::new(*peer, (self.config.trust)(peer));
        self.config
            .reach
            .admits(collection, Some(&blob.to_text()), &relation)
    }

    /// Piece `piece` for `peer`, as the shard protocol's Get answers it: its
    /// verified bytes when this node holds it and the peer may have it (the
    /// reach of a local blob listing it admits the peer), else `None`. For
    /// carrying the shard protocol over a request-response transport.
    pub fn serve_piece(
        &self,
        peer: &PeerId,
        piece: &BlobId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.may_serve(peer, piece)? {
            return Ok(None);
        }
        self.store.piece(piece)
    }

    /// True when `peer` may have piece `piece`: some local blob listing it
    /// admits the peer, or no local manifest lists it (a piece held for
    /// others, whose blob this node does not know).
    fn may_serve(&self, peer: &PeerId, piece: &BlobId) -> Result<bool, StoreError> {
        let mut known = false;
        for blob in self.store.owners(piece)? {
            if let Some(stored) = self.store.manifest(&blob)? {
                known = true;
                if self.admits(peer, &stored.collection, &blob) {
                    return Ok(true);
                }
            }
        }
        Ok(!known)
    }

    fn fill_random(&self, out: &mut [u8; 16]) -> bool {
        let source = lock(&self.random).clone();
        match source {
            Some(f) => {
                f(out);
                true
            }
            None => match getrandom::fill(out) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "no randomness");
                    false
                }
            },
        }
    }

    fn charge(&self, d: &mut Driver, peer: PeerId, why: &dyn std::fmt::Display) {
        tracing::warn!(%peer, reason = %why, "peer sent invalid blob data");
        d.stats.rejected += 1;
        self.mesh.observe(peer, Observation::Integrity(false));
    }

    /// Connected peers, highest reputation first (then by id).
    fn connected(&self) -> Vec<PeerId> {
        let mut ps: Vec<(f64, PeerId)> = self
            .mesh
            .peers()
            .into_iter()
            .filter(|p| p.peer_id != self.me())
            .map(|p| (p.reputation, p.peer_id))
            .collect();
        ps.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        ps.into_iter().map(|(_, p)| p).collect()
    }

    /// Stores `data` as a blob of `collection` (whose factor and pins apply)
    /// and queues its replication; returns its manifest at once.
    ///
    /// Replication (sent by the next [`process`](Self::process)): every
    /// target peer first gets the manifest (an `Announce`), then its pieces
    /// as `Push` requests at [`Priority::Bulk`]. For `rs-4-7` the 7 shards go
    /// to the peers [`place_shards`] picks from the partners ranked by the
    /// replication policy (at most 2 shards per peer when 4 or more are
    /// eligible; with fewer, round-robin over those there are, logged).
    /// Otherwise every piece goes to the collection's factor of partners
    /// chosen by [`select_partners`]. Each `PushAck` records its sender as a
    /// confirmed replica of the piece.
    pub fn put_blob(
        &self,
        collection: &str,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Manifest, StoreError> {
        let encoded = self
            .store
            .put_blob(collection, data, &self.config.blob, now_ms)?;
        self.replicate(&encoded.manifest.id())?;
        Ok(encoded.manifest)
    }

    /// Queues pushes of the locally held pieces of `blob` that have fewer
    /// confirmed holders than they should (what [`put_blob`](Self::put_blob)
    /// does for a new blob), to the connected peers the policy picks: for
    /// `rs-4-7`, each shard with no confirmed holder goes to its
    /// [`place_shards`] peer; otherwise each piece goes to as many partners
    /// not yet confirmed for it as its collection's factor still lacks.
    /// Call it when peers connect (or from a retry queue) to heal blobs put
    /// while partners were away. Returns how many pushes were queued (0
    /// without a local manifest).
    pub fn replicate(&self, blob: &BlobId) -> Result<usize, StoreError> {
        let Some(stored) = self.store.manifest(blob)? else {
            return Ok(0);
        };
        let (collection, manifest) = (stored.collection, stored.manifest);
        let id_text = manifest.id().to_text();
        let candidates: Vec<Candidate> = self
            .mesh
            .peers()
            .iter()
            .filter(|p| self.admits(&p.peer_id, &collection, blob))
            .map(Candidate::from_peer_info)
            .collect();
        let origin = Origin {
            peer: self.me(),
            network: None,
        };
        let pins = self.store.pins();
        let factor = self.config.replication.factor_for(&collection);
        let pick = |factor: u32, without: &BTreeSet<PeerId>| {
            let eligible: Vec<Candidate> = candidates
                .iter()
                .filter(|c| !without.contains(&c.peer))
                .cloned()
                .collect();
            select_partners(
                factor,
                &collection,
                Some(&id_text),
                &origin,
                &eligible,
                &pins,
            )
            .partners
        };
        let mut targets: Vec<(BlobId, PeerId)> = Vec::new();
        let mut held = Vec::new();
        for (i, piece) in manifest.pieces().iter().enumerate() {
            if self.store.has_piece(piece)? {
                held.push((i, *piece, self.store.confirmed(piece)?));
            }
        }
        if manifest.encoding() == Encoding::Rs4x7 {
            let ranked = pick(MAX_FACTOR, &BTreeSet::new());
            let placement: Vec<PeerId> = match place_shards(&ranked) {
                Ok(p) => p.to_vec(),
                Err(e) if !ranked.is_empty() => {
                    tracing::warn!(blob = %id_text, error = %e, "too few partners for a safe shard placement; spreading round-robin");
                    (0..TOTAL_SHARDS)
                        .map(|i| ranked[i % ranked.len()])
                        .collect()
                }
                Err(e) => {
                    tracing::warn!(blob = %id_text, error = %e, "no partner for the shards");
                    Vec::new()
                }
            };
            for (i, piece, confirmed) in &held {
                if let Some(peer) = placement.get(*i)
                    && confirmed.is_empty()
                {
                    targets.push((*piece, *peer));
                }
            }
        } else {
            // Pieces with the same confirmed holders get the same partners.
            let mut chosen: BTreeMap<BTreeSet<PeerId>, Vec<PeerId>> = BTreeMap::new();
            for (_, piece, confirmed) in &held {
                let lacking = (factor as usize).saturating_sub(confirmed.len());
                if lacking == 0 {
                    continue;
                }
                let partners = chosen
                    .entry(confirmed.clone())
                    .or_insert_with(|| pick(u32::try_from(lacking).unwrap_or(factor), confirmed));
                targets.extend(partners.iter().map(|p| (*piece, *p)));
            }
        }
        let announce = frame::encode_manifest(&collection, &manifest.to_bytes()?);
        let queued = targets.len();
        {
            let mut d = lock(&self.driver);
            let peers: BTreeSet<PeerId> = targets.iter().map(|(_, p)| *p).collect();
            for peer in peers {
                let request = self.next_request(&mut d);
                d.outbox.push_back(Outgoing {
                    peer,
                    kind: FrameKind::Announce,
                    request,
                    frame: announce.clone(),
                    bulk: false,
                });
            }
            for (piece, peer) in targets {
                self.enqueue(
                    &mut d,
                    Queued {
                        peer,
                        kind: FrameKind::ShardRequest,
                        request: ShardOrManifest::PushStored(piece),
                        purpose: Purpose::Push { piece },
                    },
                );
            }
        }
        if queued > 0 {
            self.wake();
        }
        Ok(queued)
    }

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

    /// [`replicate`](Self::replicate) for every blob this node originated;
    /// the pushes go out with the next [`process`](Self::process).
    fn replicate_originated(&self) {
        let blobs = match self.store.originated() {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "blob index unreadable"),
        };
        for blob in blobs {
            if let Err(e) = self.replicate(&blob) {
                tracing::warn!(%blob, error = %e, "blob not replicated");
            }
        }
    }

    /// Asks every connected peer whether it holds each piece of `blob`
    /// (`Have`), recording `Have(true)` as a confirmed replica and forgetting
    /// the peers that answer `Have(false)`: run it before [`gc`](Self::gc)
    /// to refresh confirmations peers may have dropped. Returns how many
    /// requests were queued (0 without a local manifest).
    pub fn probe_replicas(&self, blob: &BlobId) -> Result<usize, StoreError> {
        let Some(stored) = self.store.manifest(blob)? else {
            return Ok(0);
        };
        let peers = self.connected();
        let mut n = 0;
        {
            let mut d = lock(&self.driver);
            for piece in stored.manifest.pieces() {
                for peer in &peers {
                    n += 1;
                    self.enqueue(
                        &mut d,
                        Queued {
                            peer: *peer,
                            kind: FrameKind::ShardRequest,
                            request: ShardOrManifest::Shard(ShardRequest::Have { id: *piece }),
                            purpose: Purpose::Have { piece: *piece },
                        },
                    );
                }
            }
        }
        self.wake();
        Ok(n)
    }

    /// Garbage-collects local pieces at `now_ms` under the configured
    /// factors and TTL (see [`BlobStore::gc`]); `referenced` declares which
    /// blobs the caller still refers to, beside the persistent references.
    pub fn gc(
        &self,
        now_ms: u64,
        referenced: &dyn Fn(&BlobId) -> bool,
    ) -> Result<GcReport, StoreError> {
        self.store.gc(&self.config.replication, now_ms, referenced)
    }

    fn next_request(&self, d: &mut Driver) -> u64 {
        if d.next_request == 0 {
            // Start at a random point so a restarted node's requests are not
            // mistaken for its old ones.
            let mut r = [0_u8; 16];
            self.fill_random(&mut r);
            let mut b = [0_u8; 8];
            b.copy_from_slice(&r[..8]);
            d.next_request = u64::from_le_bytes(b) >> 1 | 1;
        }
        let r = d.next_request;
        d.next_request = d.next_request.wrapping_add(1).max(1);
        r
    }

    fn enqueue(&self, d: &mut Driver, q: Queued) {
        if d.queue.len() >= self.config.max_queued {
            d.stats.dropped_requests += 1;
            tracing::warn!(peer = %q.peer, "blob request queue full; request dropped");
            let now = d.now_ms;
            self.failed(d, q.purpose, now);
            return;
        }
        d.queue.push_back(q);
    }

    /// Moves queued requests out while there are free slots.
    fn dispatch(&self, d: &mut Driver) {
        while d.out.len() < self.config.max_in_flight.max(1) {
            let Some(q) = d.queue.pop_front() else { break };
            if self.mesh.peer_transports(&q.peer).is_empty() {
                // Gone meanwhile: fail now rather than park bulk bytes in the
                // mesh's store-and-forward buffer.
                d.stats.timeouts += 1;
                let now = d.now_ms;
                self.failed(d, q.purpose, now);
                continue;
            }
            let (frame, bulk) = match q.request {
                ShardOrManifest::Shard(r) => (r.encode(), false),
                ShardOrManifest::Manifest(id) => (id.as_bytes().to_vec(), false),
                ShardOrManifest::PushStored(piece) => match self.store.piece(&piece) {
                    Ok(Some(data)) => (ShardRequest::Push { id: piece, data }.encode(), true),
                    Ok(None) => continue, // collected meanwhile
                    Err(e) => {
                        tracing::warn!(%piece, error = %e, "piece to push unreadable");
                        continue;
                    }
                },
            };
            if matches!(q.purpose, Purpose::Push { .. }) {
                d.stats.pieces_pushed += 1;
            }
            let request = self.next_request(d);
            let deadline_ms = d.now_ms.saturating_add(self.config.request_timeout_ms);
            d.out.insert(
                (q.peer, request),
                InFlight {
                    purpose: q.purpose,
                    deadline_ms,
                },
            );
            d.outbox.push_back(Outgoing {
                peer: q.peer,
                kind: q.kind,
                request,
                frame,
                bulk,
            });
        }
    }

    /// A request failed (timeout, lost peer, dropped).
    fn failed(&self, d: &mut Driver, purpose: Purpose, now_ms: u64) {
        match purpose {
            Purpose::Piece { get, rid } => {
                if let Some(op) = d.gets.get_mut(&get)
                    && let GetState::Fetching(f) = &mut op.state
                {
                    f.on_failure(rid);
                }
            }
            Purpose::Manifest { get } => self.manifest_answer(d, get, None, now_ms),
            Purpose::Push { .. } | Purpose::Have { .. } => {}
        }
    }

    /// A manifest answer for get `get` (None: not held, or a failure).
    fn manifest_answer(
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
    fn drive_gets(&self, d: &mut Driver) {
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

    /// Joins the parts of a multi-part frame; the whole frame once complete.
    fn reassemble(
        &self,
        d: &mut Driver,
        from: PeerId,
        env: &frame::Envelope<'_>,
    ) -> Result<Option<Vec<u8>>, ReplicationError> {
        let max_frame = self.max_frame();
        let key = (from, env.kind, env.request);
        let now = d.now_ms;
        let r = d.reassembly.entry(key).or_insert_with(|| Reassembly {
            parts: BTreeMap::new(),
            total: env.parts,
            bytes: 0,
            started_ms: now,
        });
        if r.parts.contains_key(&env.part) && r.total == env.parts {
            return Ok(None); // a duplicate
        }
        let size = env.payload.len();
        let inconsistent = r.total != env.parts;
        let too_large = r.bytes.saturating_add(size) > max_frame;
        let over_budget =
            d.reassembly_bytes.saturating_add(size) > self.config.max_reassembly_bytes;
        if inconsistent || too_large || over_budget {
            let _ = self.drop_reassembly(d, &key);
            if inconsistent {
                return Err(ReplicationError::Malformed {
                    what: "blob envelope",
                    detail: "part count changed within a frame".to_owned(),
                });
            }
            if too_large {
                return Err(ReplicationError::TooLarge {
                    what: "blob frame",
                    size: max_frame.saturating_add(size),
                    max: max_frame,
                });
            }
            tracing::debug!(peer = %from, "reassembly budget exhausted; frame dropped");
            return Ok(None);
        }
        r.bytes += size;
        r.parts.insert(env.part, env.payload.to_vec());
        let complete = r.parts.len() as u64 == u64::from(r.total);
        d.reassembly_bytes += size;
        if !complete {
            return Ok(None);
        }
        let Some(r) = self.drop_reassembly(d, &key) else {
            return Ok(None);
        };
        let mut whole = Vec::with_capacity(r.bytes);
        for p in r.parts.into_values() {
            whole.extend_from_slice(&p);
        }
        Ok(Some(whole))
    }

    fn drop_reassembly(
        &self,
        d: &mut Driver,
        key: &(PeerId, FrameKind, u64),
    ) -> Option<Reassembly> {
        let r = d.reassembly.remove(key)?;
        d.reassembly_bytes = d.reassembly_bytes.saturating_sub(r.bytes);
        Some(r)
    }

    /// The largest whole frame accepted: a piece plus framing, or a manifest.
    fn max_frame(&self) -> usize {
        let manifest = self
            .config
            .manifest_limits
            .max_pieces
            .saturating_mul(40)
            .saturating_add(2 + ecomesh_replication::policy::MAX_NAME_LEN + 64);
        self.config
            .limits
            .max_shard
            .saturating_add(64)
            .max(manifest)
    }

    fn on_envelope(&self, d: &mut Driver, from: PeerId, payload: &[u8]) {
        let env = match frame::decode(payload, self.max_frame()) {
            Ok(e) => e,
            Err(e) => return self.charge(d, from, &e),
        };
        let whole = if env.parts == 1 {
            env.payload.to_vec()
        } else {
            match self.reassemble(d, from, &env) {
                Ok(Some(w)) => w,
                Ok(None) => return,
                Err(e) => return self.charge(d, from, &e),
            }
        };
        let now = d.now_ms;
        match env.kind {
            FrameKind::ShardRequest => self.serve(d, from, env.request, &whole, now),
            FrameKind::ShardResponse => self.on_shard_response(d, from, env.request, &whole),
            FrameKind::ManifestRequest => match frame::decode_manifest_request(&whole) {
                Ok(id) => {
                    d.stats.requests_served += 1;
                    let answer = match self.store.manifest(&id) {
                        Ok(Some(s)) if !self.admits(&from, &s.collection, &id) => Vec::new(),
                        Ok(Some(s)) => s
                            .manifest
                            .to_bytes()
                            .map(|b| frame::encode_manifest(&s.collection, &b))
                            .unwrap_or_default(),
                        Ok(None) => Vec::new(),
                        Err(e) => {
                            tracing::warn!(error = %e, "manifest unreadable");
                            Vec::new()
                        }
                    };
                    d.outbox.push_back(Outgoing {
                        peer: from,
                        kind: FrameKind::ManifestResponse,
                        request: env.request,
                        frame: answer,
                        bulk: false,
                    });
                }
                Err(e) => self.charge(d, from, &e),
            },
            FrameKind::ManifestResponse => {
                let Some(InFlight {
                    purpose: Purpose::Manifest { get },
                    ..
                }) = d.out.remove(&(from, env.request))
                else {
                    return;
                };
                if whole.is_empty() {
                    return self.manifest_answer(d, get, None, now);
                }
                let expected = d.gets.get(&get).map(|op| op.id);
                match frame::decode_manifest(&whole, &self.config.manifest_limits) {
                    Ok((c, m)) if Some(m.id()) == expected => {
                        self.manifest_answer(d, get, Some((c, m)), now);
                    }
                    Ok(_) if expected.is_none() => {}
                    Ok(_) => {
                        self.charge(d, from, &"manifest of another blob");
                        self.manifest_answer(d, get, None, now);
                    }
                    Err(e) => {
                        self.charge(d, from, &e);
                        self.manifest_answer(d, get, None, now);
                    }
                }
            }
            FrameKind::Announce => {
                match frame::decode_manifest(&whole, &self.config.manifest_limits) {
                    Ok((c, m)) => {
                        if let Err(e) = self.store.adopt_manifest(&c, &m, now) {
                            tracing::warn!(error = %e, "announced manifest not stored");
                        }
                    }
                    Err(e) => self.charge(d, from, &e),
                }
            }
        }
    }

    fn serve(&self, d: &mut Driver, from: PeerId, request: u64, frame: &[u8], now_ms: u64) {
        d.stats.requests_served += 1;
        let decoded = ShardRequest::decode_with(frame, &self.config.limits);
        let hidden = |id: &BlobId| match self.may_serve(&from, id) {
            Ok(ok) => !ok,
            Err(e) => {
                tracing::warn!(error = %e, "blob index unreadable");
                true
            }
        };
        let served =
            if !self.config.accept_pushes && matches!(decoded, Ok(ShardRequest::Push { .. })) {
                ShardResponse::error("pushes are not accepted")
            } else if let Ok(ShardRequest::Get { id }) = &decoded
                && hidden(id)
            {
                ShardResponse::NotFound
            } else if let Ok(ShardRequest::Have { id }) = &decoded
                && hidden(id)
            {
                ShardResponse::Have(false)
            } else {
                let mut server = ShardServer::new(
                    Served {
                        store: &self.store,
                        now_ms,
                    },
                    self.config.limits,
                );
                let s = server.handle_frame(from, frame);
                if let Some(e) = s.refused {
                    self.charge(d, from, &e);
                }
                s.response
            };
        let bulk = matches!(served, ShardResponse::Data(_));
        d.outbox.push_back(Outgoing {
            peer: from,
            kind: FrameKind::ShardResponse,
            request,
            frame: served.encode(),
            bulk,
        });
    }

    fn on_shard_response(&self, d: &mut Driver, from: PeerId, request: u64, frame: &[u8]) {
        let Some(InFlight { purpose, .. }) = d.out.remove(&(from, request)) else {
            return; // late, duplicate or unknown: ignored
        };
        let now = d.now_ms;
        match purpose {
            Purpose::Piece { get, rid } => {
                let Some(GetOp {
                    state: GetState::Fetching(f),
                    ..
                }) = d.gets.get_mut(&get)
                else {
                    return;
                };
                let data = match ShardResponse::decode_with(frame, &self.config.limits) {
                    Ok(ShardResponse::Data(b)) => Some(b),
                    _ => None,
                };
                let result = f.on_response(rid, frame);
                let wanted = |id: &BlobId| f.manifest().pieces().contains(id);
                match result {
                    Ok(()) => {
                        if let Some(b) = data {
                            let id = BlobId::of(&b);
                            if wanted(&id) {
                                d.stats.pieces_fetched += 1;
                                self.mesh.observe(from, Observation::Storage(true));
                                if let Err(e) = self.store.put_piece(&id, &b, now) {
                                    tracing::warn!(error = %e, "fetched piece not cached");
                                }
                                if let Err(e) = self.store.confirm(&id, &from) {
                                    tracing::warn!(error = %e, "replica confirmation not stored");
                                }
                            }
                        }
                    }
                    Err(e) if peer_fault(&e) => {
                        // It was asked for a piece and served other bytes.
                        self.mesh.observe(from, Observation::Storage(false));
                        self.charge(d, from, &e);
                    }
                    Err(e) => tracing::debug!(peer = %from, error = %e, "piece answer not used"),
                }
            }
            Purpose::Push { piece } => {
                match ShardResponse::decode_with(frame, &self.config.limits) {
                    Ok(ShardResponse::PushAck) => {
                        d.stats.pushes_acked += 1;
                        self.mesh.observe(from, Observation::Storage(true));
                        if let Err(e) = self.store.confirm(&piece, &from) {
                            tracing::warn!(error = %e, "replica confirmation not stored");
                        }
                    }
                    Ok(ShardResponse::Error(t)) => {
                        tracing::debug!(peer = %from, %piece, reason = %t, "push refused");
                    }
                    Ok(other) => self.charge(d, from, &format!("{other:?} answering a push")),
                    Err(e) => self.charge(d, from, &e),
                }
            }
            Purpose::Have { piece } => {
                match ShardResponse::decode_with(frame, &self.config.limits) {
                    Ok(ShardResponse::Have(true)) => {
                        if let Err(e) = self.store.confirm(&piece, &from) {
                            tracing::warn!(error = %e, "replica confirmation not stored");
                        }
                    }
                    Ok(ShardResponse::Have(false)) => {
                        // A confirmed holder that dropped the piece failed to keep it.
                        if self
                            .store
                            .confirmed(&piece)
                            .is_ok_and(|c| c.contains(&from))
                        {
                            self.mesh.observe(from, Observation::Storage(false));
                        }
                        if let Err(e) = self.store.unconfirm(&piece, &from) {
                            tracing::warn!(error = %e, "replica confirmation not removed");
                        }
                    }
                    Ok(ShardResponse::Error(_)) => {}
                    Ok(other) => self.charge(d, from, &format!("{other:?} answering Have")),
                    Err(e) => self.charge(d, from, &e),
                }
            }
            Purpose::Manifest { get } => {
                self.charge(d, from, &"a shard frame answering a manifest request");
                self.manifest_answer(d, get, None, now);
            }
        }
    }

    /// Handles queued mesh events (requests from peers, answers, lost
    /// peers), expires requests past their deadline, drives every running
    /// `get_blob`, and sends what that produced. Returns how many events
    /// were handled.
    pub async fn process(&self, now_ms: u64) -> usize {
        let events: Vec<MeshEvent> = lock(&self.inbox).0.drain(..).collect();
        let handled = events.len();
        let connected = events
            .iter()
            .any(|e| matches!(e, MeshEvent::PeerDiscovered(_)));
        let more;
        let outbox: Vec<Outgoing> = {
            let mut d = lock(&self.driver);
            d.now_ms = now_ms;
            for ev in events {
                match ev {
                    MeshEvent::Message { message, .. } => {
                        self.on_envelope(&mut d, message.sender, &message.payload);
                    }
                    MeshEvent::PeerLost(p) => {
                        let lost: Vec<(PeerId, u64)> = d
                            .out
                            .range((p, 0)..=(p, u64::MAX))
                            .map(|(k, _)| *k)
                            .collect();
                        for k in lost {
                            if let Some(f) = d.out.remove(&k) {
                                d.stats.timeouts += 1;
                                self.failed(&mut d, f.purpose, now_ms);
                            }
                        }
                        d.reassembly.retain(|(peer, _, _), _| *peer != p);
                        d.reassembly_bytes = d.reassembly.values().map(|r| r.bytes).sum::<usize>();
                    }
                    _ => {}
                }
            }
            let expired: Vec<(PeerId, u64)> = d
                .out
                .iter()
                .filter(|(_, f)| f.deadline_ms <= now_ms)
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                if let Some(f) = d.out.remove(&k) {
                    d.stats.timeouts += 1;
                    self.failed(&mut d, f.purpose, now_ms);
                }
            }
            let timeout = self.config.request_timeout_ms;
            let stale: Vec<_> = d
                .reassembly
                .iter()
                .filter(|(_, r)| now_ms.saturating_sub(r.started_ms) >= timeout)
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                let _ = self.drop_reassembly(&mut d, &k);
            }
            // Failures above may let fetchers ask elsewhere; their requests
            // and the queue go out now.
            // A request that fails while dispatched (its peer left) lets its
            // fetcher ask elsewhere at once; bounded, since each round either
            // empties the queue, fills the slots, or fails requests for good.
            for _ in 0..4 {
                self.drive_gets(&mut d);
                self.dispatch(&mut d);
                if d.queue.is_empty() || d.out.len() >= self.config.max_in_flight.max(1) {
                    break;
                }
            }
            self.drive_gets(&mut d);
            more = !d.queue.is_empty() && d.out.len() < self.config.max_in_flight.max(1);
            d.outbox.drain(..).collect()
        };
        if more {
            self.wake();
        }
        if connected && self.config.replicate_on_connect {
            self.replicate_originated();
        }
        for o in outbox {
            let parts = frame::split(o.kind, o.request, &o.frame, self.config.max_part_bytes);
            for part in parts {
                self.send(o.peer, part, o.bulk, now_ms).await;
            }
        }
        handled
    }

    /// Signs and sends one envelope; its id when the mesh took it.
    async fn send(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
        bulk: bool,
        now_ms: u64,
    ) -> Option<MessageId> {
        let mut random = [0_u8; 16];
        if !self.fill_random(&mut random) {
            return None;
        }
        let message = match self
            .mesh
            .new_message(SHARD_TYPE, payload, Some(peer), now_ms, random)
        {
            Ok(mut m) => {
                // Not covered by the signature; a short TTL keeps stale blob
                // traffic out of store-and-forward buffers.
                m.ttl_secs = self.config.message_ttl_secs;
                m
            }
            Err(e) => {
                tracing::error!(error = %e, "could not sign a blob message");
                return None;
            }
        };
        let id = message.id;
        let priority = if bulk {
            Priority::Bulk
        } else {
            Priority::Normal
        };
        match self.mesh.send(peer, message, priority, now_ms).await {
            Ok(_) => Some(id),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "blob message not sent");
                None
            }
        }
    }
}
