//! The sans-io onion router: one state machine for the three roles a node
//! plays (client of its own circuits, relay, and last hop of circuits built
//! to it). Bytes and time in; cells to send, events and timeouts out.

use std::collections::{BTreeMap, VecDeque};

use ecomesh_identity::Identity;
use ecomesh_types::PeerId;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use super::cell::{BODY_LEN, CELL_LEN, Cell, CellKind};
use super::crypto::{self, HopKeys, INNER_LEN};
use super::{CloseReason, OnionConfig, OnionEvent, Origin};
use crate::MeshError;

/// Relay commands inside a layer: `cmd (1) || len (u16) || data`.
const CMD_EXTEND: u8 = 1;
const CMD_EXTENDED: u8 = 2;
const CMD_EXTEND_FAILED: u8 = 3;
const CMD_DATA_MORE: u8 = 4;
const CMD_DATA_END: u8 = 5;
const CMD_HEADER: usize = 3;

/// Most (previous hop, next hop) pairs remembered by [`OnionRouter::relayed_pairs`].
const MAX_PAIRS: usize = 4096;

/// Seeded randomness (blake3 in XOF mode over a key and a counter).
struct Rng {
    key: Zeroizing<[u8; 32]>,
    counter: u64,
}

impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.counter.to_le_bytes());
        self.counter += 1;
        h.finalize_xof().fill(buf);
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0_u8; N];
        self.fill(&mut out);
        out
    }

    fn below(&mut self, n: usize) -> usize {
        let v = u64::from_le_bytes(self.array::<8>());
        usize::try_from(v % (n.max(1) as u64)).unwrap_or(0)
    }
}

/// One established hop of a client circuit.
struct ClientHop {
    keys: HopKeys,
    fwd: u64,
    back: u64,
}

/// A circuit this node builds to `dest`.
struct ClientCircuit {
    /// Relays then the destination, with their static X25519 keys.
    path: Vec<(PeerId, [u8; 32])>,
    link: u32,
    hops: Vec<ClientHop>,
    /// The ephemeral secret of the handshake in progress with `hops.len()`.
    pending: Option<(StaticSecret, [u8; 32])>,
    created_ms: u64,
    deadline_ms: u64,
    outbox: VecDeque<Vec<u8>>,
    reassembly: Vec<u8>,
}

impl ClientCircuit {
    fn ready(&self) -> bool {
        self.hops.len() == self.path.len() && self.pending.is_none()
    }
    fn first(&self) -> PeerId {
        self.path[0].0
    }
}

/// This node's state for a circuit that passes through it or ends at it.
struct HopEntry {
    keys: HopKeys,
    fwd: u64,
    back: u64,
    next: Option<(PeerId, u32)>,
    extending: Option<(PeerId, u32, u64)>,
    last_ms: u64,
    reassembly: Vec<u8>,
}

/// Where a backward cell from a next hop belongs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outgoing {
    /// A circuit this node relays: the key of its entry (previous hop, link id).
    Relay(PeerId, u32),
    /// A circuit this node built, to this destination.
    Client(PeerId),
}

/// The onion router of one node (see the [module docs](super)).
pub struct OnionRouter {
    identity: Identity,
    me: PeerId,
    config: OnionConfig,
    rng: Rng,
    clients: BTreeMap<PeerId, ClientCircuit>,
    hops: BTreeMap<(PeerId, u32), HopEntry>,
    outgoing: BTreeMap<(PeerId, u32), Outgoing>,
    transmit: VecDeque<(PeerId, Vec<u8>)>,
    queued_per_peer: BTreeMap<PeerId, usize>,
    events: VecDeque<OnionEvent>,
    pairs: BTreeMap<(PeerId, PeerId), u64>,
}

impl std::fmt::Debug for OnionRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionRouter")
            .field("me", &self.me)
            .field("client_circuits", &self.clients.len())
            .field("relayed_circuits", &self.hops.len())
            .finish_non_exhaustive()
    }
}

fn command(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CMD_HEADER + data.len());
    out.push(cmd);
    out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The command and data of a decrypted layer; `None` when the length overruns.
fn parse_command(inner: &[u8]) -> Option<(u8, &[u8])> {
    if inner.len() < CMD_HEADER {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([inner[1], inner[2]]));
    let data = inner.get(CMD_HEADER..CMD_HEADER + len)?;
    Some((inner[0], data))
}

impl OnionRouter {
    /// A router for `identity` (whose static X25519 key authenticates this node
    /// as a hop) with randomness expanded from `seed` (32 fresh random bytes in
    /// production; fixed in tests so runs reproduce).
    pub fn new(identity: Identity, config: OnionConfig, seed: [u8; 32]) -> Self {
        let me = identity.peer_id();
        OnionRouter {
            identity,
            me,
            config,
            rng: Rng {
                key: Zeroizing::new(seed),
                counter: 0,
            },
            clients: BTreeMap::new(),
            hops: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            transmit: VecDeque::new(),
            queued_per_peer: BTreeMap::new(),
            events: VecDeque::new(),
            pairs: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OnionConfig {
        &self.config
    }

    /// The next cell to hand to a neighbour: (neighbour, [`CELL_LEN`] bytes).
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Vec<u8>)> {
        let (peer, bytes) = self.transmit.pop_front()?;
        if let Some(n) = self.queued_per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.queued_per_peer.remove(&peer);
            }
        }
        Some((peer, bytes))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<OnionEvent> {
        self.events.pop_front()
    }

    /// True when a circuit to `dest` is built and carries data now.
    pub fn is_ready(&self, dest: &PeerId) -> bool {
        self.clients.get(dest).is_some_and(ClientCircuit::ready)
    }

    /// True when a circuit to `dest` exists (built or being built).
    pub fn has_circuit(&self, dest: &PeerId) -> bool {
        self.clients.contains_key(dest)
    }

    /// The relays of the circuit to `dest` (without `dest`), in path order.
    pub fn path(&self, dest: &PeerId) -> Option<Vec<PeerId>> {
        let c = self.clients.get(dest)?;
        Some(c.path[..c.path.len() - 1].iter().map(|p| p.0).collect())
    }

    /// Circuits this node relays or ends (its bounded relay state).
    pub fn relayed_circuits(&self) -> usize {
        self.hops.len()
    }

    /// How many cells this node relayed between each (previous hop, next hop)
    /// pair: everything a relay learns about who talks to whom. Bounded.
    pub fn relayed_pairs(&self) -> BTreeMap<(PeerId, PeerId), u64> {
        self.pairs.clone()
    }

    /// The most message bytes one forward cell carries to the destination of
    /// a circuit of `relays` relays (`1000 - 16 x relays`; 0 past any real circuit).
    pub fn forward_capacity(relays: usize) -> usize {
        crypto::capacity(relays.saturating_add(1)).saturating_sub(CMD_HEADER)
    }

    fn queue(&mut self, peer: PeerId, cell: &Cell) -> Result<(), MeshError> {
        let per = self.queued_per_peer.get(&peer).copied().unwrap_or(0);
        if self.transmit.len() >= self.config.max_queued_cells
            || per >= self.config.max_queued_per_peer
        {
            return Err(MeshError::OnionLimit {
                what: "queued cells",
                max: self
                    .config
                    .max_queued_cells
                    .min(self.config.max_queued_per_peer),
            });
        }
        *self.queued_per_peer.entry(peer).or_default() += 1;
        self.transmit.push_back((peer, cell.encode()));
        Ok(())
    }

    fn padded(&mut self, prefix: &[u8]) -> [u8; BODY_LEN] {
        let mut body = self.rng.array::<BODY_LEN>();
        body[..prefix.len()].copy_from_slice(prefix);
        body
    }

    fn new_link_id(&mut self, peer: PeerId) -> u32 {
        loop {
            let id = u32::from_le_bytes(self.rng.array::<4>());
            if id != 0 && !self.outgoing.contains_key(&(peer, id)) {
                return id;
            }
        }
    }

    fn ephemeral(&mut self) -> (StaticSecret, [u8; 32]) {
        let secret = StaticSecret::from(self.rng.array::<32>());
        let public = XPublic::from(&secret).to_bytes();
        (secret, public)
    }

    fn misbehaved(&mut self, peer: PeerId, reason: &'static str) -> MeshError {
        tracing::info!(%peer, reason, "bad onion cell; neighbour charged");
        self.events
            .push_back(OnionEvent::Misbehaved { peer, reason });
        MeshError::BadCell { reason }
    }

    fn destroy_cell(&mut self, peer: PeerId, link: u32, backward: bool) {
        let body = self.padded(&[u8::from(backward)]);
        let cell = Cell {
            circuit: link,
            kind: CellKind::Destroy,
            body,
        };
        if let Err(e) = self.queue(peer, &cell) {
            tracing::debug!(%peer, error = %e, "destroy cell not queued");
        }
    }

    /// Starts building a circuit to `dest` through `relays` (1 to
    /// [`super::MAX_RELAYS`], distinct, neither this node nor `dest`; the first
    /// must be a neighbour). Keys are the static X25519 keys of the peers
    /// ([`ecomesh_identity::PublicKey::to_x25519`]). A circuit to `dest`
    /// already there is replaced.
    pub fn build(
        &mut self,
        dest: (PeerId, [u8; 32]),
        relays: &[(PeerId, [u8; 32])],
        now_ms: u64,
    ) -> Result<(), MeshError> {
        if relays.is_empty() || relays.len() > super::MAX_RELAYS {
            return Err(MeshError::OnionPath {
                reason: "a circuit has 1 to 8 relays",
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for (p, _) in relays.iter().chain(std::iter::once(&dest)) {
            if *p == self.me || !seen.insert(*p) {
                return Err(MeshError::OnionPath {
                    reason: "relays must be distinct, other than this node and the destination",
                });
            }
        }
        if let Some(old) = self.clients.remove(&dest.0) {
            self.outgoing.remove(&(old.first(), old.link));
            self.destroy_cell(old.first(), old.link, false);
        }
        let mut path = relays.to_vec();
        path.push(dest);
        let first = path[0].0;
        let link = self.new_link_id(first);
        let (secret, public) = self.ephemeral();
        let body = self.padded(&public);
        self.queue(
            first,
            &Cell {
                circuit: link,
                kind: CellKind::Create,
                body,
            },
        )?;
        self.outgoing
            .insert((first, link), Outgoing::Client(dest.0));
        tracing::debug!(dest = %dest.0, relays = relays.len(), "building onion circuit");
        self.clients.insert(
            dest.0,
            ClientCircuit {
                path,
                link,
                hops: Vec::new(),
                pending: Some((secret, public)),
                created_ms: now_ms,
                deadline_ms: now_ms.saturating_add(self.config.build_timeout_ms),
                outbox: VecDeque::new(),
                reassembly: Vec::new(),
            },
        );
        Ok(())
    }

    /// Builds a circuit to `dest` through [`OnionConfig::relays`] peers drawn at
    /// random from `candidates` (the caller passes reputable neighbours).
    pub fn build_among(
        &mut self,
        dest: (PeerId, [u8; 32]),
        candidates: &[(PeerId, [u8; 32])],
        now_ms: u64,
    ) -> Result<(), MeshError> {
        let mut pool: Vec<(PeerId, [u8; 32])> = candidates
            .iter()
            .filter(|(p, _)| *p != dest.0 && *p != self.me)
            .copied()
            .collect();
        pool.sort_by_key(|a| a.0);
        pool.dedup_by(|a, b| a.0 == b.0);
        let want = self.config.relays.clamp(1, super::MAX_RELAYS);
        if pool.len() < want {
            return Err(MeshError::OnionPath {
                reason: "not enough reputable relays",
            });
        }
        let mut chosen = Vec::with_capacity(want);
        for _ in 0..want {
            let i = self.rng.below(pool.len());
            chosen.push(pool.swap_remove(i));
        }
        self.build(dest, &chosen, now_ms)
    }

    /// Sends `data` to `dest` over its circuit: at once when the circuit is
    /// built (true), or kept until it is (false; bounded by
    /// [`OnionConfig::max_pending_messages`]). Fails with
    /// [`MeshError::NoCircuit`] when there is no circuit to `dest`.
    pub fn send(&mut self, dest: &PeerId, data: Vec<u8>) -> Result<bool, MeshError> {
        if data.len() > self.config.max_message_len {
            return Err(MeshError::OnionLimit {
                what: "message bytes",
                max: self.config.max_message_len,
            });
        }
        let max_pending = self.config.max_pending_messages;
        let Some(c) = self.clients.get_mut(dest) else {
            return Err(MeshError::NoCircuit(*dest));
        };
        if !c.ready() {
            if c.outbox.len() >= max_pending {
                return Err(MeshError::OnionLimit {
                    what: "messages waiting for a circuit",
                    max: max_pending,
                });
            }
            c.outbox.push_back(data);
            return Ok(false);
        }
        self.send_ready(*dest, &data)?;
        Ok(true)
    }

    fn send_ready(&mut self, dest: PeerId, data: &[u8]) -> Result<(), MeshError> {
        let Some(c) = self.clients.get(&dest) else {
            return Err(MeshError::NoCircuit(dest));
        };
        let per_cell = crypto::capacity(c.hops.len()) - CMD_HEADER;
        let cells = data.len().div_ceil(per_cell).max(1);
        let room = self
            .config
            .max_queued_cells
            .min(self.config.max_queued_per_peer)
            .saturating_sub(self.queued_per_peer.get(&c.first()).copied().unwrap_or(0))
            .min(
                self.config
                    .max_queued_cells
                    .saturating_sub(self.transmit.len()),
            );
        if cells > room {
            return Err(MeshError::OnionLimit {
                what: "queued cells",
                max: self.config.max_queued_cells,
            });
        }
        let mut chunks = data.chunks(per_cell).peekable();
        if data.is_empty() {
            self.client_forward(dest, &command(CMD_DATA_END, &[]), None)?;
        }
        while let Some(chunk) = chunks.next() {
            let cmd = if chunks.peek().is_some() {
                CMD_DATA_MORE
            } else {
                CMD_DATA_END
            };
            self.client_forward(dest, &command(cmd, chunk), None)?;
        }
        Ok(())
    }

    /// Wraps `content` for hop `to` (the last established hop when `None`) of
    /// the circuit to `dest` and queues it to the first hop.
    fn client_forward(
        &mut self,
        dest: PeerId,
        content: &[u8],
        to: Option<usize>,
    ) -> Result<(), MeshError> {
        let Some(c) = self.clients.get_mut(&dest) else {
            return Err(MeshError::NoCircuit(dest));
        };
        let n = to.map_or(c.hops.len(), |i| i + 1);
        let layers: Vec<(&HopKeys, u64)> = c.hops[..n].iter().map(|h| (&h.keys, h.fwd)).collect();
        let aad = [CellKind::Forward.to_byte()];
        let Some(body) = crypto::wrap_forward(&layers, &aad, content) else {
            return Err(MeshError::OnionLimit {
                what: "cell content bytes",
                max: crypto::capacity(n),
            });
        };
        for h in &mut c.hops[..n] {
            h.fwd += 1;
        }
        let (first, link) = (c.first(), c.link);
        self.queue(
            first,
            &Cell {
                circuit: link,
                kind: CellKind::Forward,
                body,
            },
        )
    }

    /// Answers over an inbound circuit (one that ended here) with `data`.
    pub fn reply(&mut self, to: &Origin, data: &[u8]) -> Result<(), MeshError> {
        if data.len() > self.config.max_message_len {
            return Err(MeshError::OnionLimit {
                what: "message bytes",
                max: self.config.max_message_len,
            });
        }
        let key = (to.prev, to.link);
        let terminal = self.hops.get(&key).is_some_and(|e| e.next.is_none());
        if !terminal {
            return Err(MeshError::NoCircuit(to.prev));
        }
        let per_cell = INNER_LEN - CMD_HEADER;
        let mut chunks = data.chunks(per_cell).peekable();
        if data.is_empty() {
            return self.hop_backward(key, &command(CMD_DATA_END, &[]));
        }
        while let Some(chunk) = chunks.next() {
            let cmd = if chunks.peek().is_some() {
                CMD_DATA_MORE
            } else {
                CMD_DATA_END
            };
            self.hop_backward(key, &command(cmd, chunk))?;
        }
        Ok(())
    }

    /// Seals `content` as this hop's backward cell of the circuit `key` and queues it.
    fn hop_backward(&mut self, key: (PeerId, u32), content: &[u8]) -> Result<(), MeshError> {
        let mut inner = self.rng.array::<INNER_LEN>();
        inner[..content.len()].copy_from_slice(content);
        let Some(e) = self.hops.get_mut(&key) else {
            return Err(MeshError::NoCircuit(key.0));
        };
        let body = e
            .keys
            .seal_backward(e.back, &[CellKind::Backward.to_byte()], &inner);
        e.back += 1;
        self.queue(
            key.0,
            &Cell {
                circuit: key.1,
                kind: CellKind::Backward,
                body,
            },
        )
    }

    /// Handles one cell from neighbour `from`. Bad cells are refused with a
    /// [`MeshError::BadCell`] and an [`OnionEvent::Misbehaved`] naming `from`.
    pub fn on_cell(&mut self, from: PeerId, bytes: &[u8], now_ms: u64) -> Result<(), MeshError> {
        let cell = match Cell::decode(bytes) {
            Ok(c) => c,
            Err(_) => return Err(self.misbehaved(from, "undecodable cell")),
        };
        match cell.kind {
            CellKind::Create => self.on_create(from, &cell, now_ms),
            CellKind::Forward => self.on_forward(from, &cell, now_ms),
            CellKind::Created | CellKind::Backward => self.on_backward(from, &cell, now_ms),
            CellKind::Destroy => {
                self.on_destroy(from, cell.circuit, cell.body[0] == 1);
                Ok(())
            }
        }
    }

    fn on_create(&mut self, from: PeerId, cell: &Cell, now_ms: u64) -> Result<(), MeshError> {
        let key = (from, cell.circuit);
        if self.hops.contains_key(&key) {
            return Err(self.misbehaved(from, "create for a circuit already open"));
        }
        let per_peer = self.hops.keys().filter(|(p, _)| *p == from).count();
        if per_peer >= self.config.max_circuits_per_peer
            || self.hops.len() >= self.config.max_circuits
        {
            tracing::info!(peer = %from, "onion circuit refused: relay state full");
            self.destroy_cell(from, cell.circuit, true);
            return Err(MeshError::OnionLimit {
                what: "circuits",
                max: self
                    .config
                    .max_circuits_per_peer
                    .min(self.config.max_circuits),
            });
        }
        let mut x = [0_u8; 32];
        x.copy_from_slice(&cell.body[..32]);
        let Ok(dh_static) = self.identity.x25519_agree(&x) else {
            return Err(self.misbehaved(from, "create with a low-order key"));
        };
        let (y_secret, y) = self.ephemeral();
        let dh_eph = y_secret.diffie_hellman(&XPublic::from(x));
        let b = self.identity.public_key().to_x25519();
        let keys = crypto::derive(&x, &y, &b, &dh_static, dh_eph.as_bytes());
        let mut reply = [0_u8; 64];
        reply[..32].copy_from_slice(&y);
        reply[32..].copy_from_slice(&keys.auth);
        let body = self.padded(&reply);
        self.queue(
            from,
            &Cell {
                circuit: cell.circuit,
                kind: CellKind::Created,
                body,
            },
        )?;
        self.hops.insert(
            key,
            HopEntry {
                keys,
                fwd: 0,
                back: 0,
                next: None,
                extending: None,
                last_ms: now_ms,
                reassembly: Vec::new(),
            },
        );
        Ok(())
    }

    fn on_forward(&mut self, from: PeerId, cell: &Cell, now_ms: u64) -> Result<(), MeshError> {
        let key = (from, cell.circuit);
        let Some(e) = self.hops.get_mut(&key) else {
            tracing::debug!(peer = %from, "forward cell for an unknown circuit; dropped");
            return Ok(());
        };
        let Some(inner) = e
            .keys
            .peel_forward(e.fwd, &[CellKind::Forward.to_byte()], &cell.body)
        else {
            let err = self.misbehaved(from, "forward cell failed its tag (tampered or replayed)");
            self.teardown_hop(key);
            return Err(err);
        };
        e.fwd += 1;
        e.last_ms = now_ms;
        if let Some((next, link)) = e.next {
            self.note_pair(from, next);
            if let Err(err) = self.queue(
                next,
                &Cell {
                    circuit: link,
                    kind: CellKind::Forward,
                    body: inner,
                },
            ) {
                tracing::debug!(%next, error = %err, "forward cell dropped");
            }
            return Ok(());
        }
        let Some((cmd, data)) = parse_command(&inner[..INNER_LEN]) else {
            return Err(self.misbehaved(from, "relay command overruns its layer"));
        };
        match cmd {
            CMD_EXTEND if data.len() == 64 => self.on_extend(key, data, now_ms),
            CMD_DATA_MORE | CMD_DATA_END => {
                let limit = self.config.max_message_len;
                let Some(e) = self.hops.get_mut(&key) else {
                    return Ok(());
                };
                if e.reassembly.len() + data.len() > limit {
                    e.reassembly.clear();
                    self.teardown_hop(key);
                    return Err(MeshError::OnionLimit {
                        what: "message bytes",
                        max: limit,
                    });
                }
                e.reassembly.extend_from_slice(data);
                if cmd == CMD_DATA_END {
                    let data = std::mem::take(&mut e.reassembly);
                    self.events.push_back(OnionEvent::Delivered {
                        origin: Some(Origin {
                            prev: from,
                            link: cell.circuit,
                        }),
                        dest: None,
                        data,
                    });
                }
                Ok(())
            }
            _ => Err(self.misbehaved(from, "unknown relay command")),
        }
    }

    fn on_extend(&mut self, key: (PeerId, u32), data: &[u8], now_ms: u64) -> Result<(), MeshError> {
        let mut next_id = [0_u8; 32];
        next_id.copy_from_slice(&data[..32]);
        let next = PeerId::from_digest(next_id);
        let busy = self
            .hops
            .get(&key)
            .is_none_or(|e| e.extending.is_some() || e.next.is_some());
        if busy {
            return Err(self.misbehaved(key.0, "extend of a circuit already extended"));
        }
        if next == key.0 || next == self.me {
            self.hop_backward(key, &command(CMD_EXTEND_FAILED, &[1]))?;
            return Ok(());
        }
        let link = self.new_link_id(next);
        let body = self.padded(&data[32..64]);
        if let Err(e) = self.queue(
            next,
            &Cell {
                circuit: link,
                kind: CellKind::Create,
                body,
            },
        ) {
            self.hop_backward(key, &command(CMD_EXTEND_FAILED, &[2]))?;
            return Err(e);
        }
        self.outgoing
            .insert((next, link), Outgoing::Relay(key.0, key.1));
        tracing::info!(prev = %key.0, next = %next, "onion relay: extending a circuit");
        self.note_pair(key.0, next);
        if let Some(e) = self.hops.get_mut(&key) {
            e.extending = Some((
                next,
                link,
                now_ms.saturating_add(self.config.build_timeout_ms),
            ));
        }
        Ok(())
    }

    fn note_pair(&mut self, prev: PeerId, next: PeerId) {
        if self.pairs.len() < MAX_PAIRS || self.pairs.contains_key(&(prev, next)) {
            *self.pairs.entry((prev, next)).or_default() += 1;
        }
    }

    fn on_backward(&mut self, from: PeerId, cell: &Cell, now_ms: u64) -> Result<(), MeshError> {
        match self.outgoing.get(&(from, cell.circuit)).copied() {
            None => {
                tracing::debug!(peer = %from, "backward cell for an unknown circuit; dropped");
                Ok(())
            }
            Some(Outgoing::Client(dest)) => self.client_backward(dest, from, cell, now_ms),
            Some(Outgoing::Relay(prev, link)) => {
                let key = (prev, link);
                let Some(e) = self.hops.get_mut(&key) else {
                    return Ok(());
                };
                e.last_ms = now_ms;
                if cell.kind == CellKind::Created {
                    if e.extending.map(|x| (x.0, x.1)) != Some((from, cell.circuit)) {
                        return Err(self.misbehaved(from, "created without a create"));
                    }
                    e.extending = None;
                    e.next = Some((from, cell.circuit));
                    let content = command(CMD_EXTENDED, &cell.body[..64]);
                    return self.hop_backward(key, &content);
                }
                if e.next != Some((from, cell.circuit)) {
                    return Err(self.misbehaved(from, "backward cell before created"));
                }
                let mut body = cell.body;
                e.keys.wrap_backward(e.back, &mut body);
                e.back += 1;
                self.note_pair(from, prev);
                if let Err(err) = self.queue(
                    prev,
                    &Cell {
                        circuit: link,
                        kind: CellKind::Backward,
                        body,
                    },
                ) {
                    tracing::debug!(%prev, error = %err, "backward cell dropped");
                }
                Ok(())
            }
        }
    }

    fn client_backward(
        &mut self,
        dest: PeerId,
        from: PeerId,
        cell: &Cell,
        now_ms: u64,
    ) -> Result<(), MeshError> {
        let Some(c) = self.clients.get_mut(&dest) else {
            return Ok(());
        };
        if cell.kind == CellKind::Created {
            if !c.hops.is_empty() {
                return Err(self.misbehaved(from, "created twice"));
            }
            let mut reply = [0_u8; 64];
            reply.copy_from_slice(&cell.body[..64]);
            return self.complete_hop(dest, &reply, now_ms);
        }
        let layers: Vec<(&HopKeys, u64)> = c.hops.iter().map(|h| (&h.keys, h.back)).collect();
        let Some((i, content)) =
            crypto::unwrap_backward(&layers, &[CellKind::Backward.to_byte()], &cell.body)
        else {
            let err = self.misbehaved(
                from,
                "backward cell opened by no hop (tampered or replayed)",
            );
            self.close_client(dest, CloseReason::BadCell);
            return Err(err);
        };
        for h in &mut c.hops[..=i] {
            h.back += 1;
        }
        let last = i + 1 == c.hops.len();
        let Some((cmd, data)) = parse_command(&content) else {
            self.close_client(dest, CloseReason::BadCell);
            return Err(MeshError::BadCell {
                reason: "relay command overruns its layer",
            });
        };
        match cmd {
            CMD_EXTENDED if last && data.len() == 64 && c.pending.is_some() => {
                let mut reply = [0_u8; 64];
                reply.copy_from_slice(data);
                self.complete_hop(dest, &reply, now_ms)
            }
            CMD_EXTEND_FAILED if last && c.pending.is_some() => {
                tracing::info!(%dest, hop = i, "onion circuit extension refused");
                self.close_client(dest, CloseReason::ExtendFailed);
                Ok(())
            }
            CMD_DATA_MORE | CMD_DATA_END if last && c.ready() => {
                if c.reassembly.len() + data.len() > self.config.max_message_len {
                    self.close_client(dest, CloseReason::BadCell);
                    return Err(MeshError::OnionLimit {
                        what: "message bytes",
                        max: self.config.max_message_len,
                    });
                }
                c.reassembly.extend_from_slice(data);
                if cmd == CMD_DATA_END {
                    let data = std::mem::take(&mut c.reassembly);
                    self.events.push_back(OnionEvent::Delivered {
                        origin: None,
                        dest: Some(dest),
                        data,
                    });
                }
                Ok(())
            }
            _ => {
                self.close_client(dest, CloseReason::BadCell);
                Err(MeshError::BadCell {
                    reason: "unexpected relay command from a hop",
                })
            }
        }
    }

    /// Finishes the handshake with the next hop of the circuit to `dest` from
    /// its reply `Y || auth`; extends further or declares the circuit ready.
    fn complete_hop(
        &mut self,
        dest: PeerId,
        reply: &[u8; 64],
        now_ms: u64,
    ) -> Result<(), MeshError> {
        let Some(c) = self.clients.get_mut(&dest) else {
            return Ok(());
        };
        let Some((x_secret, x)) = c.pending.take() else {
            return Ok(());
        };
        let (hop, b) = c.path[c.hops.len()];
        let mut y = [0_u8; 32];
        y.copy_from_slice(&reply[..32]);
        let mut auth = [0_u8; 32];
        auth.copy_from_slice(&reply[32..]);
        let dh_static = x_secret.diffie_hellman(&XPublic::from(b));
        let dh_eph = x_secret.diffie_hellman(&XPublic::from(y));
        let keys = crypto::derive(&x, &y, &b, dh_static.as_bytes(), dh_eph.as_bytes());
        if !dh_eph.was_contributory() || !crypto::auth_eq(&keys.auth, &auth) {
            let first = c.first();
            self.close_client(dest, CloseReason::BadCell);
            return Err(self.misbehaved(first, "hop handshake did not authenticate"));
        }
        tracing::debug!(%dest, %hop, depth = c.hops.len() + 1, "onion hop established");
        c.hops.push(ClientHop {
            keys,
            fwd: 0,
            back: 0,
        });
        if c.hops.len() < c.path.len() {
            let next = c.path[c.hops.len()].0;
            let (secret, public) = self.ephemeral();
            let mut ext = [0_u8; 64];
            ext[..32].copy_from_slice(next.as_bytes());
            ext[32..].copy_from_slice(&public);
            if let Some(c) = self.clients.get_mut(&dest) {
                c.pending = Some((secret, public));
                c.deadline_ms = now_ms.saturating_add(self.config.build_timeout_ms);
            }
            return self.client_forward(dest, &command(CMD_EXTEND, &ext), None);
        }
        let hops = c.path.len() - 1;
        let waiting: Vec<Vec<u8>> = c.outbox.drain(..).collect();
        self.events
            .push_back(OnionEvent::CircuitReady { dest, relays: hops });
        for data in waiting {
            if let Err(e) = self.send_ready(dest, &data) {
                tracing::info!(%dest, error = %e, "message waiting for a circuit not sent");
                self.events
                    .push_back(OnionEvent::Undelivered { dest, data });
            }
        }
        Ok(())
    }

    fn close_client(&mut self, dest: PeerId, reason: CloseReason) {
        let Some(c) = self.clients.remove(&dest) else {
            return;
        };
        self.outgoing.remove(&(c.first(), c.link));
        if reason != CloseReason::HopLost {
            self.destroy_cell(c.first(), c.link, false);
        }
        tracing::debug!(%dest, ?reason, "onion circuit closed");
        self.events.push_back(OnionEvent::CircuitClosed {
            dest,
            reason,
            undelivered: c.outbox.into_iter().collect(),
        });
    }

    /// Removes a relayed circuit and tells both sides.
    fn teardown_hop(&mut self, key: (PeerId, u32)) {
        let Some(e) = self.hops.remove(&key) else {
            return;
        };
        self.destroy_cell(key.0, key.1, true);
        for (peer, link) in e.next.into_iter().chain(e.extending.map(|x| (x.0, x.1))) {
            self.outgoing.remove(&(peer, link));
            self.destroy_cell(peer, link, false);
        }
    }

    fn on_destroy(&mut self, from: PeerId, link: u32, backward: bool) {
        if backward {
            match self.outgoing.remove(&(from, link)) {
                Some(Outgoing::Client(dest)) => self.close_client(dest, CloseReason::Destroyed),
                Some(Outgoing::Relay(prev, plink)) => {
                    if let Some(e) = self.hops.remove(&(prev, plink)) {
                        for (peer, l) in e.next.into_iter().chain(e.extending.map(|x| (x.0, x.1))) {
                            self.outgoing.remove(&(peer, l));
                        }
                        self.destroy_cell(prev, plink, true);
                    }
                }
                None => {}
            }
        } else if let Some(e) = self.hops.remove(&(from, link)) {
            for (peer, l) in e.next.into_iter().chain(e.extending.map(|x| (x.0, x.1))) {
                self.outgoing.remove(&(peer, l));
                self.destroy_cell(peer, l, false);
            }
        }
    }

    /// Tears down every circuit through `peer` (it vanished): this node's own
    /// circuits whose first hop it was close with [`CloseReason::HopLost`];
    /// relayed ones are destroyed on their other side.
    pub fn peer_lost(&mut self, peer: PeerId) {
        let own: Vec<PeerId> = self
            .clients
            .iter()
            .filter(|(d, c)| c.first() == peer || **d == peer)
            .map(|(d, _)| *d)
            .collect();
        for d in own {
            self.close_client(d, CloseReason::HopLost);
        }
        let from_prev: Vec<(PeerId, u32)> =
            self.hops.keys().filter(|k| k.0 == peer).copied().collect();
        for key in from_prev {
            if let Some(e) = self.hops.remove(&key) {
                for (p, l) in e.next.into_iter().chain(e.extending.map(|x| (x.0, x.1))) {
                    self.outgoing.remove(&(p, l));
                    self.destroy_cell(p, l, false);
                }
            }
        }
        let to_next: Vec<((PeerId, u32), Outgoing)> = self
            .outgoing
            .iter()
            .filter(|(k, _)| k.0 == peer)
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, o) in to_next {
            self.outgoing.remove(&k);
            if let Outgoing::Relay(prev, plink) = o
                && self.hops.remove(&(prev, plink)).is_some()
            {
                self.destroy_cell(prev, plink, true);
            }
        }
        self.transmit.retain(|(p, _)| *p != peer);
        self.queued_per_peer.remove(&peer);
    }

    /// Timeouts: builds past [`OnionConfig::build_timeout_ms`] fail, circuits
    /// older than [`OnionConfig::rotate_ms`] are closed (rotated; the next
    /// send builds a fresh one), extensions that got no answer are refused
    /// back to their client, and relay state idle for
    /// [`OnionConfig::idle_ms`] is dropped. Returns the time of the next
    /// deadline, if any.
    pub fn tick(&mut self, now_ms: u64) -> Option<u64> {
        let mut due = Vec::new();
        for (d, c) in &self.clients {
            if !c.ready() && now_ms >= c.deadline_ms {
                due.push((*d, CloseReason::Timeout));
            } else if now_ms >= c.created_ms.saturating_add(self.config.rotate_ms) {
                due.push((*d, CloseReason::Rotated));
            }
        }
        for (d, r) in due {
            self.close_client(d, r);
        }
        let stalled: Vec<(PeerId, u32)> = self
            .hops
            .iter()
            .filter(|(_, e)| e.extending.is_some_and(|x| now_ms >= x.2))
            .map(|(k, _)| *k)
            .collect();
        for key in stalled {
            if let Some(e) = self.hops.get_mut(&key)
                && let Some((p, l, _)) = e.extending.take()
            {
                self.outgoing.remove(&(p, l));
                let _ = self.hop_backward(key, &command(CMD_EXTEND_FAILED, &[3]));
            }
        }
        let idle: Vec<(PeerId, u32)> = self
            .hops
            .iter()
            .filter(|(_, e)| now_ms >= e.last_ms.saturating_add(self.config.idle_ms))
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.teardown_hop(key);
        }
        let client = self.clients.values().map(|c| {
            if c.ready() {
                c.created_ms.saturating_add(self.config.rotate_ms)
            } else {
                c.deadline_ms
            }
        });
        let relay = self.hops.values().map(|e| {
            e.extending
                .map_or(e.last_ms.saturating_add(self.config.idle_ms), |x| x.2)
        });
        client.chain(relay).min()
    }
}

/// Whether `bytes` has the length of a cell (a cheap check before decoding).
pub fn is_cell_sized(bytes: &[u8]) -> bool {
    bytes.len() == CELL_LEN
}
