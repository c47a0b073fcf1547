//! One shared in-memory network for tests, benches and the simulator (issue 15).
//!
//! A [`MemNetwork`] holds endpoints ([`MemTransport`], one per peer and
//! transport type, each a real [`TransportAdapter`]) and decides which pairs
//! are linked: both endpoints started, of the same transport type, in the same
//! partition group, not cut by `disconnect_from_peer`, and adjacent in the
//! [`Topology`] (every pair, a line in join order, or only the pairs
//! [`MemNetwork::link`] named). Every change of that set is reported to both
//! ends as `PeerDiscovered` / `PeerLost`, in one order that depends only on
//! the slots' join order.
//!
//! A sent message goes through the [`LinkModel`] of its (directed) pair: it is
//! lost, duplicated and given a latency with draws from one seeded
//! [`SplitMix64`], always in the same order (loss, duplication, then one
//! latency per copy), and waits in one queue ordered by (due time, send
//! sequence). Time is virtual: [`MemNetwork::advance`] moves it and
//! [`MemNetwork::deliver`] hands every message due by then to its receiver,
//! if the pair is still linked (messages to or from a node that went down or
//! was cut off are lost). With [`Delivery::Immediate`] `send` also delivers
//! at once whatever is due, so a zero-latency network needs no pumping. So a
//! network built with the same seed and driven by the same calls behaves the
//! same, message for message.
//!
//! Everything is synchronous: no future the transport returns ever pends, no
//! thread or timer runs, and the queue of messages in flight is bounded
//! ([`MemNetwork::set_max_in_flight`]; beyond it a send is dropped like a full
//! link buffer would, and logged as [`Fate::Overflow`]). An optional bounded
//! traffic log ([`MemNetwork::record_traffic`]) keeps every send and its fate
//! for tests to inspect.
//!
//! Crash and restart: [`MemNetwork::join`] again for the same peer and type
//! replaces the endpoint in its slot (the old one is taken down and goes
//! stale); `start` and `stop` on the transport bring it up and down.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ecomesh_identity::PublicKey;
use ecomesh_types::{
    BoxFuture, Error, Listener, Listeners, NetworkMessage, PeerId, PeerInfo, Subscription,
    TransportAdapter, TransportCapabilities, TransportEvent, TransportType, Value,
};

/// SplitMix64: small, seedable, good enough for schedules and link models.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0); always draws once.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille` / 1000; always draws once.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Fills `bytes` with random bytes, 8 at a time.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// What one direction of a link does to the messages sent over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LinkModel {
    /// Chance that a message is lost, in thousandths.
    pub loss_per_mille: u64,
    /// Chance that a message arrives twice (each copy with its own latency), in thousandths.
    pub dup_per_mille: u64,
    /// Fixed latency in virtual ms.
    pub latency_ms: u64,
    /// Extra latency drawn below this bound per copy (so copies can overtake each other).
    pub jitter_ms: u64,
}

impl LinkModel {
    /// No loss, no duplication, no latency: in order at the next delivery.
    pub const PERFECT: LinkModel = LinkModel {
        loss_per_mille: 0,
        dup_per_mille: 0,
        latency_ms: 0,
        jitter_ms: 0,
    };

    /// Every message is lost, though `send` reports success (a link dying with
    /// data in flight).
    pub const BLACK_HOLE: LinkModel = LinkModel {
        loss_per_mille: 1000,
        ..LinkModel::PERFECT
    };
}

/// Which pairs of started endpoints (same type, same group, not cut) are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Topology {
    /// Every pair.
    #[default]
    Full,
    /// Only neighbours in the order peers first joined (a chain of replicas).
    Line,
    /// Only the pairs [`MemNetwork::link`] (or `connect_to_peer`) named.
    Manual,
}

/// When queued messages reach their receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Only when the test calls [`MemNetwork::deliver`] (a simulator's step).
    #[default]
    Manual,
    /// Also at the end of every `send`: a message that is due (zero latency)
    /// reaches the receiver's listeners before `send` returns.
    Immediate,
}

/// What became of one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Lost by the link model.
    Lost,
    /// Queued, once or (duplicated) twice.
    Queued {
        /// How many copies travel.
        copies: u8,
    },
    /// Dropped because too many messages were in flight.
    Overflow,
}

/// One entry of the traffic log: a send the network accepted (the endpoint
/// was up and not failing, the pair linked).
#[derive(Clone, Debug, PartialEq)]
pub struct Traffic {
    /// Virtual time of the send.
    pub at_ms: u64,
    /// Sender.
    pub from: PeerId,
    /// Receiver.
    pub to: PeerId,
    /// The transport type of the endpoints.
    pub transport: TransportType,
    /// The message as sent.
    pub message: NetworkMessage,
    /// What the link did with it.
    pub fate: Fate,
}

struct Slot {
    peer: PeerId,
    ty: TransportType,
    key: Option<PublicKey>,
    generation: u64,
    up: bool,
    failing: bool,
    transport: Weak<MemTransport>,
}

type Pair = (usize, usize);

fn pair(a: usize, b: usize) -> Pair {
    (a.min(b), a.max(b))
}

struct State {
    now: u64,
    seq: u64,
    generation: u64,
    delivery: Delivery,
    delivering: bool,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, (usize, usize, NetworkMessage)>,
    max_in_flight: usize,
    slots: Vec<Slot>,
    /// Peers in the order they first joined (positions for [`Topology::Line`]).
    nodes: Vec<PeerId>,
    groups: BTreeMap<PeerId, u32>,
    topology: Topology,
    manual: BTreeSet<Pair>,
    cut: BTreeSet<Pair>,
    default_link: LinkModel,
    link_models: BTreeMap<(PeerId, PeerId), LinkModel>,
    rng: SplitMix64,
    ignore_disconnects: bool,
    log: Option<(usize, VecDeque<Traffic>)>,
    /// Message types every send of which is lost, and how many were.
    lost_types: BTreeMap<String, usize>,
}

impl State {
    fn group(&self, p: &PeerId) -> u32 {
        self.groups.get(p).copied().unwrap_or(0)
    }

    fn position(&self, p: &PeerId) -> usize {
        self.nodes.iter().position(|n| n == p).unwrap_or(usize::MAX)
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        let (sa, sb) = (&self.slots[a], &self.slots[b]);
        a != b
            && sa.up
            && sb.up
            && sa.peer != sb.peer
            && sa.ty == sb.ty
            && self.group(&sa.peer) == self.group(&sb.peer)
            && !self.cut.contains(&pair(a, b))
            && match self.topology {
                Topology::Full => true,
                Topology::Line => self.position(&sa.peer).abs_diff(self.position(&sb.peer)) == 1,
                Topology::Manual => self.manual.contains(&pair(a, b)),
            }
    }

    fn links(&self) -> BTreeSet<Pair> {
        let n = self.slots.len();
        (0..n)
            .flat_map(|a| (0..n).map(move |b| (a, b)))
            .filter(|(a, b)| self.linked(*a, *b))
            .collect()
    }

    fn slot_of(&self, peer: &PeerId, ty: TransportType) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.peer == *peer && s.ty == ty)
    }

    fn info(&self, i: usize) -> PeerInfo {
        let s = &self.slots[i];
        let mut info = PeerInfo::new(s.peer, s.ty, self.now);
        if let Some(key) = &s.key {
            info.metadata.insert(
                PeerInfo::PUBLIC_KEY.to_owned(),
                Value::Bytes(key.to_bytes().to_vec()),
            );
        }
        info
    }

    fn record(&mut self, t: Traffic) {
        if let Some((cap, log)) = &mut self.log {
            if log.len() >= *cap {
                log.pop_front();
            }
            log.push_back(t);
        }
    }
}

/// The shared in-memory network; cloning gives another handle to the same one.
#[derive(Clone)]
pub struct MemNetwork {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("MemNetwork")
            .field("now", &s.now)
            .field("endpoints", &s.slots.len())
            .field("in_flight", &s.in_flight.len())
            .field("topology", &s.topology)
            .finish()
    }
}

impl MemNetwork {
    /// Default bound on messages in flight.
    pub const MAX_IN_FLIGHT: usize = 1 << 16;

    /// A network on a virtual clock at `start_ms`, whose link models draw from
    /// `SplitMix64(seed)`; messages move on [`MemNetwork::deliver`]. Every
    /// pair is linked ([`Topology::Full`]) by a [`LinkModel::PERFECT`] link.
    pub fn new(seed: u64, start_ms: u64) -> MemNetwork {
        MemNetwork {
            state: Arc::new(Mutex::new(State {
                now: start_ms,
                seq: 0,
                generation: 0,
                delivery: Delivery::Manual,
                delivering: false,
                queue: BinaryHeap::new(),
                in_flight: BTreeMap::new(),
                max_in_flight: Self::MAX_IN_FLIGHT,
                slots: Vec::new(),
                nodes: Vec::new(),
                groups: BTreeMap::new(),
                topology: Topology::Full,
                manual: BTreeSet::new(),
                cut: BTreeSet::new(),
                default_link: LinkModel::PERFECT,
                link_models: BTreeMap::new(),
                rng: SplitMix64(seed),
                ignore_disconnects: false,
                log: None,
                lost_types: BTreeMap::new(),
            })),
        }
    }

    /// A network where `send` delivers at once (perfect links, clock at 0),
    /// and only the pairs [`MemNetwork::link`] names are linked: a direct,
    /// synchronous wire between hand-placed nodes.
    pub fn immediate() -> MemNetwork {
        let net = MemNetwork::new(0, 0);
        {
            let mut s = net.lock();
            s.delivery = Delivery::Immediate;
            s.topology = Topology::Manual;
        }
        net
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread cannot leave the state half-changed in a way
        // that matters to the others: recover it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a change and tells every endpoint what appeared and vanished:
    /// first every loss, then every discovery, in slot order.
    fn change<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, events) = {
            let mut s = self.lock();
            let before = s.links();
            let r = f(&mut s);
            let after = s.links();
            let mut ev = Vec::new();
            for (a, b) in before.difference(&after) {
                ev.push((
                    s.slots[*a].transport.clone(),
                    TransportEvent::PeerLost(s.slots[*b].peer),
                ));
            }
            for (a, b) in after.difference(&before) {
                ev.push((
                    s.slots[*a].transport.clone(),
                    TransportEvent::PeerDiscovered(s.info(*b)),
                ));
            }
            (r, ev)
        };
        for (t, e) in events {
            if let Some(t) = t.upgrade() {
                t.listeners.emit(&e);
            }
        }
        r
    }

    /// A new endpoint for `peer` on `ty`, not started. If `peer` already had
    /// one on `ty` (a restart), it takes its slot and the old one is taken
    /// down and goes stale (its sends fail with [`Error::NotStarted`]).
    pub fn join(&self, peer: PeerId, ty: TransportType) -> Arc<MemTransport> {
        self.join_slot(peer, ty, None)
    }

    /// As [`MemNetwork::join`], and the `PeerInfo` others discover carries
    /// `key` under [`PeerInfo::PUBLIC_KEY`], as an authenticating transport's does.
    pub fn join_with_key(
        &self,
        peer: PeerId,
        ty: TransportType,
        key: PublicKey,
    ) -> Arc<MemTransport> {
        self.join_slot(peer, ty, Some(key))
    }

    fn join_slot(
        &self,
        peer: PeerId,
        ty: TransportType,
        key: Option<PublicKey>,
    ) -> Arc<MemTransport> {
        // Take a previous endpoint down first, so its peers see it lost.
        self.change(|s| {
            if let Some(i) = s.slot_of(&peer, ty) {
                s.slots[i].up = false;
            }
        });
        let mut s = self.lock();
        s.generation += 1;
        let generation = s.generation;
        let slot = match s.slot_of(&peer, ty) {
            Some(i) => i,
            None => {
                s.slots.push(Slot {
                    peer,
                    ty,
                    key: None,
                    generation,
                    up: false,
                    failing: false,
                    transport: Weak::new(),
                });
                if !s.nodes.contains(&peer) {
                    s.nodes.push(peer);
                }
                s.slots.len() - 1
            }
        };
        let t = Arc::new(MemTransport {
            net: self.clone(),
            slot,
            generation,
            peer,
            ty,
            listeners: Listeners::new(),
        });
        let sl = &mut s.slots[slot];
        sl.key = key;
        sl.generation = generation;
        sl.failing = false;
        sl.transport = Arc::downgrade(&t);
        t
    }

    /// Virtual time, in ms.
    pub fn now(&self) -> u64 {
        self.lock().now
    }

    /// Moves virtual time forward by `ms`; delivers nothing by itself.
    pub fn advance(&self, ms: u64) -> u64 {
        let mut s = self.lock();
        s.now += ms;
        s.now
    }

    /// How messages reach receivers.
    pub fn set_delivery(&self, delivery: Delivery) {
        self.lock().delivery = delivery;
    }

    /// The link model of every pair without one of its own.
    pub fn set_default_link(&self, model: LinkModel) {
        self.lock().default_link = model;
    }

    /// The default link model.
    pub fn default_link(&self) -> LinkModel {
        self.lock().default_link
    }

    /// The link model of messages from `from` to `to` (one direction);
    /// `None` returns it to the default.
    pub fn set_link(&self, from: PeerId, to: PeerId, model: Option<LinkModel>) {
        let mut s = self.lock();
        match model {
            Some(m) => s.link_models.insert((from, to), m),
            None => s.link_models.remove(&(from, to)),
        };
    }

    /// When `ignore` is true, `disconnect_from_peer` succeeds without cutting
    /// the link (the peer stays listed and reachable; the caller's own block
    /// list keeps it out), as the simulator's links always did.
    pub fn ignore_disconnects(&self, ignore: bool) {
        self.lock().ignore_disconnects = ignore;
    }

    /// From now on, every send of a message of one of these types is lost
    /// (`send` succeeds, the transports notice nothing), whatever the link
    /// model, without a draw from the seeded generator; an empty list loses
    /// none. The counts of [`MemNetwork::lost_of_type`] restart.
    pub fn lose_types(&self, types: &[&str]) {
        self.lock().lost_types = types.iter().map(|t| ((*t).to_owned(), 0)).collect();
    }

    /// How many messages of type `ty` were lost since
    /// [`MemNetwork::lose_types`] named it (0 when it is not named).
    pub fn lost_of_type(&self, ty: &str) -> usize {
        self.lock().lost_types.get(ty).copied().unwrap_or(0)
    }

    /// Bounds the messages in flight (at least 1).
    pub fn set_max_in_flight(&self, max: usize) {
        self.lock().max_in_flight = max.max(1);
    }

    /// Keeps the last `capacity` sends in the traffic log (0 turns it off).
    pub fn record_traffic(&self, capacity: usize) {
        self.lock().log = (capacity > 0).then(|| (capacity, VecDeque::new()));
    }

    /// The traffic log, oldest first.
    pub fn traffic(&self) -> Vec<Traffic> {
        self.lock()
            .log
            .as_ref()
            .map(|(_, l)| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Which pairs are linked, besides being up, of one type and one group.
    pub fn set_topology(&self, topology: Topology) {
        self.change(|s| s.topology = topology);
    }

    /// Puts each listed peer in its group (all its endpoints), at once;
    /// peers in different groups are not linked. Peers start in group 0.
    pub fn partition(&self, groups: impl IntoIterator<Item = (PeerId, u32)>) {
        self.change(|s| s.groups.extend(groups));
    }

    /// One group again.
    pub fn heal(&self) {
        self.change(|s| s.groups.clear());
    }

    /// Links `a` and `b` on `ty` (undoing a cut; in [`Topology::Manual`] this
    /// is what links them).
    pub fn link(&self, a: PeerId, b: PeerId, ty: TransportType) {
        self.change(|s| set_link_state(s, a, b, ty, true));
    }

    /// As [`MemNetwork::link`], without telling either side (a link whose
    /// driver has not reported it yet).
    pub fn link_silently(&self, a: PeerId, b: PeerId, ty: TransportType) {
        set_link_state(&mut self.lock(), a, b, ty, true);
    }

    /// Cuts the link between `a` and `b` on `ty`, as `disconnect_from_peer` does.
    pub fn unlink(&self, a: PeerId, b: PeerId, ty: TransportType) {
        self.change(|s| set_link_state(s, a, b, ty, false));
    }

    /// True when `peer`'s endpoint on `ty` is started.
    pub fn is_up(&self, peer: &PeerId, ty: TransportType) -> bool {
        let s = self.lock();
        s.slot_of(peer, ty).is_some_and(|i| s.slots[i].up)
    }

    /// Messages queued and not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Delivers every message due by now, in (due time, send order), to
    /// receivers still linked with their senders; returns how many arrived.
    /// Messages sent by the receivers' listeners meanwhile are delivered in
    /// the same call when due. A call from inside a delivery returns 0 (the
    /// outer one carries on).
    pub fn deliver(&self) -> usize {
        {
            let mut s = self.lock();
            if s.delivering {
                return 0;
            }
            s.delivering = true;
        }
        let mut delivered = 0;
        loop {
            let next = {
                let mut s = self.lock();
                let due = matches!(s.queue.peek(), Some(Reverse((at, _))) if *at <= s.now);
                if !due {
                    // Decided under the lock, so a concurrent send either is
                    // seen here or delivers itself.
                    s.delivering = false;
                    return delivered;
                }
                let Some(Reverse((_, seq))) = s.queue.pop() else {
                    s.delivering = false;
                    return delivered;
                };
                let Some((from, to, m)) = s.in_flight.remove(&seq) else {
                    continue;
                };
                s.linked(from, to)
                    .then(|| (s.slots[to].transport.clone(), s.slots[from].peer, m))
            };
            if let Some((t, from, message)) = next
                && let Some(t) = t.upgrade()
            {
                delivered += 1;
                t.listeners.emit(&TransportEvent::Message { from, message });
            }
        }
    }

    fn send_from(
        &self,
        me: &MemTransport,
        peer: PeerId,
        message: NetworkMessage,
    ) -> Result<(), Error> {
        let immediate = {
            let mut guard = self.lock();
            let s = &mut *guard;
            let slot = &s.slots[me.slot];
            if slot.generation != me.generation || !slot.up {
                return Err(Error::NotStarted);
            }
            if slot.failing {
                return Err(Error::Closed);
            }
            let to = s.slot_of(&peer, me.ty).ok_or(Error::Unreachable(peer))?;
            if !s.linked(me.slot, to) {
                return Err(Error::Unreachable(peer));
            }
            let model = s
                .link_models
                .get(&(me.peer, peer))
                .copied()
                .unwrap_or(s.default_link);
            let fate = if let Some(n) = s.lost_types.get_mut(&message.message_type) {
                *n += 1;
                Fate::Lost
            } else if s.rng.chance(model.loss_per_mille) {
                Fate::Lost
            } else {
                let copies: u8 = if s.rng.chance(model.dup_per_mille) {
                    2
                } else {
                    1
                };
                if s.in_flight.len() + usize::from(copies) > s.max_in_flight {
                    Fate::Overflow
                } else {
                    for _ in 0..copies {
                        let at = s.now + model.latency_ms + s.rng.below(model.jitter_ms);
                        s.seq += 1;
                        let seq = s.seq;
                        s.queue.push(Reverse((at, seq)));
                        s.in_flight.insert(seq, (me.slot, to, message.clone()));
                    }
                    Fate::Queued { copies }
                }
            };
            if s.log.is_some() {
                let t = Traffic {
                    at_ms: s.now,
                    from: me.peer,
                    to: peer,
                    transport: me.ty,
                    message,
                    fate,
                };
                s.record(t);
            }
            s.delivery == Delivery::Immediate
        };
        if immediate {
            self.deliver();
        }
        Ok(())
    }
}

fn set_link_state(s: &mut State, a: PeerId, b: PeerId, ty: TransportType, linked: bool) {
    let (Some(x), Some(y)) = (s.slot_of(&a, ty), s.slot_of(&b, ty)) else {
        return;
    };
    let p = pair(x, y);
    if linked {
        s.cut.remove(&p);
        s.manual.insert(p);
    } else {
        s.manual.remove(&p);
        s.cut.insert(p);
    }
}

/// One peer's endpoint on a [`MemNetwork`], for one transport type.
pub struct MemTransport {
    net: MemNetwork,
    slot: usize,
    generation: u64,
    peer: PeerId,
    ty: TransportType,
    listeners: Listeners<TransportEvent>,
}

impl fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemTransport")
            .field("peer", &self.peer)
            .field("type", &self.ty)
            .field("slot", &self.slot)
            .finish()
    }
}

impl MemTransport {
    /// The peer this endpoint belongs to.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// The network it is on.
    pub fn network(&self) -> &MemNetwork {
        &self.net
    }

    /// While `failing`, every send fails with [`Error::Closed`] (a broken radio).
    pub fn set_failing(&self, failing: bool) {
        let mut s = self.net.lock();
        if s.slots[self.slot].generation == self.generation {
            s.slots[self.slot].failing = failing;
        }
    }

    /// Hands `event` to this endpoint's listeners, as if its driver had raised it.
    pub fn emit(&self, event: &TransportEvent) {
        self.listeners.emit(event);
    }

    fn current(&self, s: &State) -> bool {
        s.slots[self.slot].generation == self.generation
    }

    fn set_up(&self, up: bool) -> Result<(), Error> {
        let generation = self.generation;
        let slot = self.slot;
        self.net.change(|s| {
            if s.slots[slot].generation != generation {
                return Err(Error::NotStarted);
            }
            s.slots[slot].up = up;
            Ok(())
        })
    }
}

impl TransportAdapter for MemTransport {
    fn transport_type(&self) -> TransportType {
        self.ty
    }
    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities::seed_defaults(self.ty)
    }
    fn start(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.set_up(true) })
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.set_up(false) })
    }
    fn is_active(&self) -> bool {
        let s = self.net.lock();
        self.current(&s) && s.slots[self.slot].up
    }
    fn peers(&self) -> Vec<PeerInfo> {
        let s = self.net.lock();
        if !self.current(&s) {
            return Vec::new();
        }
        (0..s.slots.len())
            .filter(|b| s.linked(self.slot, *b))
            .map(|b| s.info(b))
            .collect()
    }
    fn connect_to_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let (me, ty) = (self.peer, self.ty);
            let slot = self.slot;
            self.net.change(|s| {
                set_link_state(s, me, peer, ty, true);
                match s.slot_of(&peer, ty) {
                    Some(to) if s.linked(slot, to) => Ok(()),
                    _ => Err(Error::Unreachable(peer)),
                }
            })
        })
    }
    fn disconnect_from_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let ignore = self.net.lock().ignore_disconnects;
            if !ignore {
                self.net.unlink(self.peer, peer, self.ty);
            }
            Ok(())
        })
    }
    fn send(&self, peer: PeerId, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.net.send_from(self, peer, message) })
    }
    fn broadcast(&self, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let peers: Vec<PeerId> = self.peers().into_iter().map(|p| p.peer_id).collect();
            for p in peers {
                self.net.send_from(self, p, message.clone())?;
            }
            Ok(())
        })
    }
    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription {
        self.listeners.subscribe(listener)
    }
}

/// Polls a future whose awaits are all ready, as everything on a
/// [`MemNetwork`] is (no timer, no thread); panics if it pends 1000 times.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..1000 {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("an in-memory operation did not complete");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ecomesh_types::{MessageId, Signature};

    fn peer(n: u8) -> PeerId {
        PeerId::from_digest([n; 32])
    }

    fn msg(from: PeerId, n: u8) -> NetworkMessage {
        NetworkMessage {
            id: MessageId::new_v4([n; 16]),
            message_type: "t".into(),
            payload: vec![n],
            sender: from,
            recipient: None,
            timestamp_ms: 0,
            ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
            hop_count: 0,
            max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
            signature: Signature::UNSIGNED,
        }
    }

    type Seen = Arc<Mutex<Vec<TransportEvent>>>;

    fn node(net: &MemNetwork, n: u8) -> (Arc<MemTransport>, Seen, Subscription) {
        let t = net.join(peer(n), TransportType::Wired);
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let sub = t.subscribe(Arc::new(move |e: &TransportEvent| {
            s.lock().unwrap().push(e.clone())
        }));
        block_on(t.start()).unwrap();
        (t, seen, sub)
    }

    fn payloads(seen: &Seen) -> Vec<u8> {
        seen.lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                TransportEvent::Message { message, .. } => Some(message.payload[0]),
                _ => None,
            })
            .collect()
    }

    /// Sends 200 messages over a lossy, duplicating, jittery link and returns
    /// what arrived, in order.
    fn lossy_run(seed: u64) -> Vec<u8> {
        let net = MemNetwork::new(seed, 1000);
        net.set_default_link(LinkModel {
            loss_per_mille: 100,
            dup_per_mille: 100,
            latency_ms: 1,
            jitter_ms: 50,
        });
        let (a, _, _sa) = node(&net, 1);
        let (_b, seen, _sb) = node(&net, 2);
        for i in 0..200 {
            block_on(a.send(peer(2), msg(peer(1), i as u8))).unwrap();
            net.advance(5);
            net.deliver();
        }
        net.advance(100);
        net.deliver();
        payloads(&seen)
    }

    #[test]
    fn same_seed_same_run_and_the_link_model_shows() {
        let one = lossy_run(7);
        assert_eq!(one, lossy_run(7));
        assert_ne!(one, lossy_run(8));
        assert!(one.len() > 120 && one.len() < 280, "{}", one.len());
        assert!(one.windows(2).any(|w| w[0] > w[1]), "jitter reorders");
    }

    #[test]
    fn partitions_and_restarts_are_reported_to_both_sides() {
        let net = MemNetwork::new(1, 0);
        let (a, seen_a, _sa) = node(&net, 1);
        let (_b, seen_b, _sb) = node(&net, 2);
        assert_eq!(a.peers().len(), 1);
        net.partition([(peer(2), 1)]);
        assert!(a.peers().is_empty());
        assert!(matches!(
            block_on(a.send(peer(2), msg(peer(1), 0))),
            Err(Error::Unreachable(p)) if p == peer(2)
        ));
        net.heal();
        assert_eq!(a.peers().len(), 1);
        // B restarts: A sees it lost, then found again once the new one starts.
        let (b2, _, _s2) = node(&net, 2);
        assert_eq!(a.peers().len(), 1);
        let kinds = |s: &Seen| {
            s.lock()
                .unwrap()
                .iter()
                .map(|e| match e {
                    TransportEvent::PeerDiscovered(_) => 'd',
                    TransportEvent::PeerLost(_) => 'l',
                    _ => 'm',
                })
                .collect::<String>()
        };
        assert_eq!(kinds(&seen_a), "dldld");
        assert_eq!(
            kinds(&seen_b),
            "dldl",
            "the old endpoint hears nothing more"
        );
        block_on(a.send(peer(2), msg(peer(1), 3))).unwrap();
        net.deliver();
        block_on(b2.stop()).unwrap();
        assert!(a.peers().is_empty());
    }

    #[test]
    fn messages_of_a_lost_type_are_counted_and_others_pass() {
        let net = MemNetwork::immediate();
        let (a, _, _sa) = node(&net, 1);
        let (b, seen, _sb) = node(&net, 2);
        net.link(peer(1), peer(2), TransportType::Wired);
        net.lose_types(&["t"]);
        let mut other = msg(peer(2), 5);
        other.message_type = "u".into();
        block_on(b.send(peer(1), msg(peer(2), 1))).unwrap();
        block_on(a.send(peer(2), msg(peer(1), 2))).unwrap();
        block_on(a.send(peer(2), other)).unwrap();
        assert_eq!(net.lost_of_type("t"), 2);
        assert_eq!(payloads(&seen), vec![5]);
        net.lose_types(&[]);
        block_on(a.send(peer(2), msg(peer(1), 3))).unwrap();
        assert_eq!(payloads(&seen), vec![5, 3]);
        assert_eq!(net.lost_of_type("t"), 0);
    }

    #[test]
    fn immediate_network_delivers_inside_send_and_logs_traffic() {
        let net = MemNetwork::immediate();
        net.record_traffic(2);
        let (a, _, _sa) = node(&net, 1);
        let (b, seen, _sb) = node(&net, 2);
        assert!(a.peers().is_empty(), "manual topology: not linked yet");
        net.link(peer(1), peer(2), TransportType::Wired);
        for i in 0..3 {
            block_on(a.send(peer(2), msg(peer(1), i))).unwrap();
        }
        assert_eq!(payloads(&seen), vec![0, 1, 2]);
        net.set_link(peer(1), peer(2), Some(LinkModel::BLACK_HOLE));
        block_on(a.send(peer(2), msg(peer(1), 9))).unwrap();
        assert_eq!(payloads(&seen).len(), 3);
        let log = net.traffic();
        assert_eq!(log.len(), 2, "bounded");
        assert_eq!(log[1].fate, Fate::Lost);
        a.set_failing(true);
        assert!(matches!(
            block_on(a.send(peer(2), msg(peer(1), 4))),
            Err(Error::Closed)
        ));
        block_on(b.disconnect_from_peer(peer(1))).unwrap();
        assert!(a.peers().is_empty() && b.peers().is_empty());
    }
}
