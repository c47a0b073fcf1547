//! An in-memory network of blob nodes for the blob tests: each node is the
//! real mesh manager and `BlobService` over a `MemoryBackend`, linked by
//! transport-tests' `MemNetwork` with perfect links (every message in order,
//! no loss) between nodes that are up, on its virtual clock. A node can be
//! stopped (its peers see it lost) and started again with the same backend. A node can also be
//! a "liar": a bare mesh that stores what is pushed to it but serves every
//! piece with one bit flipped (correctly signed), to test that tampered
//! pieces are refused and charged.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::{MeshConfig, MeshEvent, MultiTransportManager};
use ecomesh_p2p_storage::blobs::{
    BlobGet, BlobRandom, BlobResult, BlobService, BlobServiceConfig, BlobStore, SHARD_TYPE, frame,
};
use ecomesh_p2p_storage::kv::MemoryBackend;
use ecomesh_replication::shard::{ShardRequest, ShardResponse};
pub use ecomesh_transport_tests::memnet::block_on;
use ecomesh_transport_tests::{MemNetwork, MemTransport};
use ecomesh_types::{PeerId, Priority, Subscription, TransportAdapter, TransportType};

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Honest,
    /// Stores pushes, serves every piece with its first bit flipped.
    Liar,
    /// Stores pushes like a liar but never answers a `Get`.
    Silent,
}

pub struct Live {
    pub mesh: Arc<MultiTransportManager>,
    pub store: Arc<BlobStore<MemoryBackend>>,
    /// `None` for a liar.
    pub service: Option<BlobService<MemoryBackend>>,
    liar_inbox: Arc<Mutex<Vec<MeshEvent>>>,
    _liar_sub: Option<Subscription>,
    transport: Arc<MemTransport>,
}

impl Live {
    pub fn service(&self) -> &BlobService<MemoryBackend> {
        self.service.as_ref().expect("an honest node")
    }
}

pub struct Node {
    pub identity: Identity,
    pub backend: MemoryBackend,
    pub role: Role,
    pub live: Option<Live>,
}

pub struct BlobNet {
    net: MemNetwork,
    pub nodes: Vec<Node>,
    pub config: BlobServiceConfig,
    counter: u64,
}

fn seeded_random(seed: u64) -> BlobRandom {
    let state = Mutex::new(seed);
    Arc::new(move |b: &mut [u8; 16]| {
        let mut s = state.lock().unwrap();
        for chunk in b.chunks_mut(8) {
            *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    })
}

impl BlobNet {
    /// `roles.len()` nodes, all started; node `i` has identity secret `[i + 1; 32]`.
    pub fn new(roles: &[Role], config: BlobServiceConfig) -> BlobNet {
        let nodes: Vec<Node> = roles
            .iter()
            .enumerate()
            .map(|(i, role)| Node {
                identity: Identity::from_secret_bytes(&[i as u8 + 1; 32]),
                backend: MemoryBackend::new(),
                role: *role,
                live: None,
            })
            .collect();
        let net = MemNetwork::new(0, 1_800_000_000_000);
        // A peer a mesh disconnects stays linked; the mesh's block list keeps it out.
        net.ignore_disconnects(true);
        let mut bn = BlobNet {
            net,
            nodes,
            config,
            counter: 0,
        };
        for i in 0..bn.nodes.len() {
            bn.start(i);
        }
        bn
    }

    /// `n` honest nodes.
    pub fn honest(n: usize, config: BlobServiceConfig) -> BlobNet {
        BlobNet::new(&vec![Role::Honest; n], config)
    }

    pub fn now(&self) -> u64 {
        self.net.now()
    }

    pub fn advance(&mut self, ms: u64) {
        self.net.advance(ms);
    }

    pub fn peer(&self, i: usize) -> PeerId {
        self.nodes[i].identity.peer_id()
    }

    pub fn index_of(&self, p: &PeerId) -> usize {
        (0..self.nodes.len()).find(|i| self.peer(*i) == *p).unwrap()
    }

    pub fn live(&self, i: usize) -> &Live {
        self.nodes[i].live.as_ref().expect("node is up")
    }

    pub fn service(&self, i: usize) -> &BlobService<MemoryBackend> {
        self.live(i).service()
    }

    pub fn store(&self, i: usize) -> &Arc<BlobStore<MemoryBackend>> {
        &self.live(i).store
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].live.is_some()
    }

    pub fn start(&mut self, i: usize) {
        self.counter += 1;
        let node = &mut self.nodes[i];
        let mesh = Arc::new(MultiTransportManager::new(
            node.identity.clone(),
            Arc::new(BTreeMap::<PeerId, PublicKey>::new()),
            MeshConfig::default(),
        ));
        let transport = self.net.join_with_key(
            node.identity.peer_id(),
            TransportType::Wired,
            *node.identity.public_key(),
        );
        mesh.add_transport(transport.clone());
        let store = Arc::new(
            BlobStore::open(
                node.backend.clone(),
                node.identity.peer_id(),
                self.config.manifest_limits,
            )
            .unwrap(),
        );
        let liar_inbox: Arc<Mutex<Vec<MeshEvent>>> = Arc::default();
        let (service, sub) = match node.role {
            Role::Honest => {
                let s = BlobService::new(store.clone(), mesh.clone(), self.config.clone());
                s.set_random(seeded_random((i as u64) << 32 | self.counter));
                (Some(s), None)
            }
            Role::Liar | Role::Silent => {
                let q = liar_inbox.clone();
                let sub = mesh.subscribe(Arc::new(move |ev: &MeshEvent| {
                    if let MeshEvent::Message { message, .. } = ev
                        && message.message_type == SHARD_TYPE
                    {
                        q.lock().unwrap().push(ev.clone());
                    }
                }));
                (None, Some(sub))
            }
        };
        node.live = Some(Live {
            mesh,
            store,
            service,
            liar_inbox,
            _liar_sub: sub,
            transport: transport.clone(),
        });
        block_on(transport.start()).unwrap();
        // Let every mesh learn of the new peer.
        self.settle();
    }

    pub fn stop(&mut self, i: usize) {
        if let Some(l) = self.nodes[i].live.take() {
            block_on(l.transport.stop()).unwrap();
        }
        self.settle();
    }

    /// Signs and sends one envelope from node `from` (honest or not).
    pub fn send_raw(&mut self, from: usize, to: PeerId, envelope: Vec<u8>, priority: Priority) {
        self.counter += 1;
        let now = self.now();
        let counter = self.counter;
        let live = self.live(from);
        let mut r = [0_u8; 16];
        seeded_random(counter ^ 0xfeed)(&mut r);
        let m = live
            .mesh
            .new_message(SHARD_TYPE, envelope, Some(to), now, r)
            .unwrap();
        block_on(live.mesh.send(to, m, priority, now)).unwrap();
    }

    /// One round: deliver, then every live node's mesh and service (or liar
    /// logic). Returns the work done.
    pub fn step(&mut self) -> usize {
        let now = self.now();
        let mut work = self.net.deliver();
        let mut raw: Vec<(usize, PeerId, Vec<u8>, Priority)> = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let silent = node.role == Role::Silent;
            let Some(l) = &node.live else { continue };
            work += block_on(l.mesh.process(now));
            match &l.service {
                Some(s) => work += block_on(s.process(now)),
                None => {
                    let events: Vec<MeshEvent> = std::mem::take(&mut *l.liar_inbox.lock().unwrap());
                    work += events.len();
                    for ev in events {
                        if let MeshEvent::Message { message, .. } = ev
                            && let Some(reply) =
                                liar_answer(&l.store, &message.payload, now, silent)
                        {
                            raw.push((i, message.sender, reply, Priority::Bulk));
                        }
                    }
                }
            }
        }
        for (i, to, env, prio) in raw {
            self.send_raw(i, to, env, prio);
        }
        // Messages still on the wire are work to come.
        work + self.net.in_flight()
    }

    fn busy(&self) -> bool {
        self.nodes.iter().any(|n| {
            n.live
                .as_ref()
                .and_then(|l| l.service.as_ref())
                .is_some_and(|s| s.pending_requests() > 0 || s.pending_gets() > 0)
        })
    }

    /// Runs until nothing moves and no request is pending; when only
    /// requests wait, the clock jumps past their timeout. Bounded.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            self.advance(1);
            if self.step() > 0 {
                continue;
            }
            if !self.busy() {
                return;
            }
            let timeout = self.config.request_timeout_ms;
            self.advance(timeout);
        }
        panic!("the blob network did not settle");
    }

    /// Runs until `get` completes (bounded).
    pub fn wait(&mut self, get: &BlobGet) -> BlobResult {
        for _ in 0..10_000 {
            if let Some(r) = get.try_take() {
                return r;
            }
            self.advance(1);
            if self.step() == 0 && !self.busy() {
                let timeout = self.config.request_timeout_ms;
                self.advance(timeout);
            }
        }
        panic!("get did not complete");
    }

    /// Which live nodes hold `piece`.
    pub fn holders(&self, piece: &ecomesh_replication::blob::BlobId) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i]
                    .live
                    .as_ref()
                    .is_some_and(|l| l.store.has_piece(piece).unwrap())
            })
            .collect()
    }
}

/// What a liar answers to one envelope: pushes are stored and acknowledged,
/// manifests served honestly, pieces served with the first bit flipped.
fn liar_answer(
    store: &BlobStore<MemoryBackend>,
    payload: &[u8],
    now: u64,
    silent: bool,
) -> Option<Vec<u8>> {
    let env = frame::decode(payload, usize::MAX).ok()?;
    match env.kind {
        frame::FrameKind::ShardRequest => {
            let resp = match ShardRequest::decode(env.payload).ok()? {
                ShardRequest::Push { id, data } => {
                    store.put_piece(&id, &data, now).ok()?;
                    ShardResponse::PushAck
                }
                ShardRequest::Get { .. } if silent => return None,
                ShardRequest::Get { id } => match store.piece(&id).ok()? {
                    Some(mut b) if !b.is_empty() => {
                        b[0] ^= 1;
                        ShardResponse::Data(b)
                    }
                    _ => ShardResponse::NotFound,
                },
                ShardRequest::Have { id } => ShardResponse::Have(store.has_piece(&id).ok()?),
            };
            Some(frame::encode(
                frame::FrameKind::ShardResponse,
                env.request,
                0,
                1,
                &resp.encode(),
            ))
        }
        frame::FrameKind::ManifestRequest => {
            let id = frame::decode_manifest_request(env.payload).ok()?;
            let answer = match store.manifest(&id).ok()? {
                Some(s) => frame::encode_manifest(&s.collection, &s.manifest.to_bytes().ok()?),
                None => Vec::new(),
            };
            Some(frame::encode(
                frame::FrameKind::ManifestResponse,
                env.request,
                0,
                1,
                &answer,
            ))
        }
        frame::FrameKind::Announce => {
            let (c, m) = frame::decode_manifest(env.payload, &store.limits().clone()).ok()?;
            store.put_manifest(&c, &m, now).ok()?;
            None
        }
        _ => None,
    }
}
