//! [`BlobService`]: the blob store over the mesh (see the module docs of `blobs`).
//!
//! - `config`: [`BlobServiceConfig`]; `get`: [`BlobGet`] and fetching blobs;
//!   `replicate`: putting blobs and pushing them to partners; `serve`: answering peers'
//!   shard requests; `inbound`: envelopes from peers and the answers to our requests;
//!   `process`: [`BlobService::process`], the request queue and sending.
//! - Here: the [`BlobService`] handle and the driver state its parts share.

mod config;
mod get;
mod inbound;
mod process;
mod replicate;
mod serve;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use ecomesh_mesh::reputation::Observation;
use ecomesh_mesh::{MeshEvent, MultiTransportManager};
use ecomesh_replication::blob::BlobId;
use ecomesh_replication::reach::Relation;
use ecomesh_replication::shard::{Fetcher, RequestId, ShardRequest};
use ecomesh_types::PeerId;

pub use self::config::BlobServiceConfig;
use self::get::Waiter;
pub use self::get::{BlobFetch, BlobGet, BlobResult};
use super::frame::FrameKind;
use super::store::BlobStore;
use crate::kv::Backend;

/// Mesh message type of every blob-protocol envelope.
pub const SHARD_TYPE: &str = "ecomesh/shard";

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    /// `frame` is already one whole envelope (built in place by the server).
    enveloped: bool,
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
    waiter: Waiter,
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

impl<B: Backend> BlobService<B> {
    /// Serves and replicates `store` over `mesh`, which must sign as the
    /// store's node ([`BlobStore::local`]).
    pub fn new(
        store: Arc<BlobStore<B>>,
        mesh: Arc<MultiTransportManager>,
        config: BlobServiceConfig,
    ) -> Self {
        // Every blob request has a deadline and a lost answer is asked for
        // again (pieces are verified on arrival), so blob frames need no
        // mesh ACK nor retransmission copy.
        mesh.carry_unacknowledged(SHARD_TYPE);
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
        // The mesh credited the message for its signature: that credit becomes a failure.
        self.mesh.observe(peer, Observation::InvalidContent);
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
}
