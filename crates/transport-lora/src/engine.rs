//! The sans-io protocol engine of one node: frames in (with the Meshtastic sender node
//! number), transmissions, events and deadlines out; time passed in as milliseconds.
//!
//! It owns the Noise IK sessions with neighbours, the beacons, key discovery, the
//! routing table and duplicate suppression, fragmentation and reassembly, store-and-forward
//! for frames without a next hop, and the transmit [`Scheduler`] (priorities, slotted
//! ALOHA, duty cycle). The tokio driver ([`crate::LoraTransport`]) only moves bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ecomesh_identity::noise::{Handshake, Session, SessionConfig};
use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_types::{NetworkMessage, PeerId, Priority};
use ecomesh_wire::{decode_message_compact, encode_message, encode_message_compact};

use crate::airtime::{DutyBudget, EU868_LONG_FAST_HZ, LoraParams, MAX_APP_PAYLOAD, Region};
use crate::error::LoraError;
use crate::frag::{Reassembler, ReassemblyLimits, split};
use crate::frame::{
    BLOOM_LEN, Body, Frame, NetworkKey, Presence, ROUTE_HEADER_LEN, RouteHeader, SEALED_HEADER_LEN,
    ShortId, TAG_LEN, bloom_insert, decode_inner, encode_inner, short_id, types,
};
use crate::proto::BROADCAST;
use crate::routing::{RoutingTable, SeenSet};
use crate::sched::{DutyCycle, Queued, Scheduler, SchedulerConfig};

/// Bytes a whole compact message may take to travel in one frame.
pub const SINGLE_FRAME_CAPACITY: usize =
    MAX_APP_PAYLOAD - SEALED_HEADER_LEN - TAG_LEN - ROUTE_HEADER_LEN - 5;
/// Bytes of a compact message per fragment.
pub const FRAGMENT_CAPACITY: usize =
    MAX_APP_PAYLOAD - SEALED_HEADER_LEN - TAG_LEN - ROUTE_HEADER_LEN - 12;

/// Settings of the engine (and so of the transport).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Secret shared by every node of the network; authenticates broadcast frames.
    pub network_secret: Vec<u8>,
    /// Modem settings (for airtime).
    pub radio: LoraParams,
    /// Duty-cycle budget.
    pub duty: DutyBudget,
    /// Widening of the duty window: at least the longest packet's airtime plus the
    /// latency between our decision and the radio's transmission.
    pub duty_guard_ms: u64,
    /// Channel access.
    pub scheduler: SchedulerConfig,
    /// Relays a frame may take (seed: 5).
    pub ttl: u8,
    /// Presence beacon period (seed 4.1: 30 s).
    pub beacon_interval_ms: u64,
    /// Every this many beacons an announce (public key) goes out too.
    pub announce_every: u32,
    /// A neighbour not heard for this long is lost.
    pub peer_timeout_ms: u64,
    /// A handshake that does not finish in this time fails.
    pub handshake_timeout_ms: u64,
    /// Handshake messages are resent after this long without an answer.
    pub handshake_retry_ms: u64,
    /// Largest message accepted, in bytes of its full `ecomesh_wire::encode_message` form
    /// (what `TransportCapabilities::max_message_size` reports).
    pub max_message_size: usize,
    /// Reassembly limits (fragments per message, bytes, timeouts).
    pub reassembly: ReassemblyLimits,
    /// Routes kept.
    pub route_capacity: usize,
    /// A route lives this long after it was last confirmed.
    pub route_ttl_ms: u64,
    /// Frame keys remembered for duplicate suppression.
    pub seen_capacity: usize,
    /// Frames held for a next hop that is not there yet (store-and-forward).
    pub held_capacity: usize,
    /// How long a held frame waits.
    pub held_timeout_ms: u64,
    /// Meshtastic `hop_limit` of our packets (0: the firmware does not rebroadcast them;
    /// ecomesh relays by itself).
    pub meshtastic_hop_limit: u8,
    /// Meshtastic `want_ack` on unicast packets (the firmware then retransmits lost ones
    /// and reports each packet's fate, which per-hop store-and-forward relies on).
    pub want_ack: bool,
    /// Times a data frame (message, fragment, notification, grant) that the radio reports
    /// undelivered to the next hop, or does not report on within
    /// [`hop_ack_timeout_ms`](Self::hop_ack_timeout_ms), is sent again (through the best
    /// next hop at that time) before it is held for a new route. Needs `want_ack`.
    pub hop_retries: u8,
    /// How long after a tracked frame went to the radio its verdict (acknowledged, or given
    /// up after the firmware's retransmissions) may take before the frame counts as lost.
    pub hop_ack_timeout_ms: u64,
    /// Open sessions with neighbours heard in beacons without being asked.
    pub auto_connect: bool,
    /// Least time between two announces we send on request, ms.
    pub announce_min_interval_ms: u64,
    /// Sessions (established or in handshake) kept at once; handshakes beyond are refused.
    pub max_neighbours: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let radio = LoraParams::LONG_FAST;
        EngineConfig {
            network_secret: b"ecomesh default lora network".to_vec(),
            radio,
            duty: DutyBudget::for_region(Region::Eu868, EU868_LONG_FAST_HZ),
            duty_guard_ms: radio.max_packet_airtime_ms() + 2_000,
            scheduler: SchedulerConfig {
                slot_ms: radio.max_packet_airtime_ms() / 4,
                ..SchedulerConfig::default()
            },
            ttl: 5,
            beacon_interval_ms: 30_000,
            announce_every: 10,
            peer_timeout_ms: 100_000,
            handshake_timeout_ms: 60_000,
            handshake_retry_ms: 15_000,
            max_message_size: 1536,
            reassembly: ReassemblyLimits::default(),
            route_capacity: 64,
            route_ttl_ms: 600_000,
            seen_capacity: 2048,
            held_capacity: 64,
            held_timeout_ms: 600_000,
            meshtastic_hop_limit: 0,
            want_ack: true,
            hop_retries: 4,
            // Meshtastic's three retransmissions of a long-range packet take tens of seconds.
            hop_ack_timeout_ms: 90_000,
            auto_connect: true,
            announce_min_interval_ms: 2_000,
            max_neighbours: 64,
        }
    }
}

impl EngineConfig {
    /// Settings for simulators and tests: a fast modem (SF7/500 kHz, Meshtastic
    /// ShortTurbo), no duty-cycle limit, beacons every 2 s, short timeouts. Never for a
    /// real EU868 radio (it ignores the legal duty cycle).
    pub fn for_simulation() -> Self {
        let radio = LoraParams::SHORT_TURBO;
        EngineConfig {
            radio,
            duty: DutyBudget {
                permille: 1000,
                window_ms: 3_600_000,
            },
            duty_guard_ms: radio.max_packet_airtime_ms() + 100,
            scheduler: SchedulerConfig {
                slot_ms: 10,
                max_backoff_slots: 2,
                queue_limit: 1024,
            },
            beacon_interval_ms: 2_000,
            announce_every: 5,
            peer_timeout_ms: 15_000,
            handshake_timeout_ms: 15_000,
            handshake_retry_ms: 1_000,
            announce_min_interval_ms: 300,
            hop_ack_timeout_ms: radio.max_packet_airtime_ms() * 20 + 2_000,
            ..EngineConfig::default()
        }
    }
}

/// One packet for the radio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Meshtastic destination node number, or [`BROADCAST`].
    pub to: u32,
    /// The frame (the `Data.payload`).
    pub payload: Vec<u8>,
    /// Meshtastic `want_ack`.
    pub want_ack: bool,
    /// Meshtastic `hop_limit`.
    pub hop_limit: u8,
    /// Our priority.
    pub priority: Priority,
    /// Set on data frames the engine keeps until the next hop has them: report the radio's
    /// verdict on this packet with [`Engine::handle_hop_result`].
    pub ticket: Option<u64>,
}

/// What the engine reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum EngineEvent {
    /// A Noise session with a neighbour is established (or re-established).
    PeerUp {
        /// The neighbour.
        peer: PeerId,
        /// Its proven Ed25519 key.
        key: PublicKey,
    },
    /// A neighbour is gone (closed, restarted, timed out).
    PeerDown(PeerId),
    /// A NetworkMessage addressed to us arrived.
    Message {
        /// The neighbour that handed it over.
        from: PeerId,
        /// The message as its origin sent it.
        message: NetworkMessage,
        /// Relays it took.
        hops: u8,
    },
    /// A compact frame (notification header, permission grant) addressed to us arrived.
    Compact {
        /// The origin's short id (authenticated hop by hop, see the crate docs).
        origin: ShortId,
        /// The neighbour that handed it over.
        from: PeerId,
        /// The body.
        body: Body,
    },
    /// An explicit connect failed.
    ConnectFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
}

/// A neighbour as the engine knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct NeighbourInfo {
    /// Its id.
    pub peer: PeerId,
    /// Its key.
    pub key: PublicKey,
    /// Its Meshtastic node number, once heard.
    pub node: Option<u32>,
    /// Last time heard, ms.
    pub last_heard: u64,
    /// Types bitmap of its last beacon.
    pub types: u16,
    /// Bloom filter of its last beacon.
    pub bloom: [u8; BLOOM_LEN],
}

struct Neighbour {
    key: PublicKey,
    session: Session,
    tx_sid: u16,
    rx_sid: u16,
    epoch: Option<u32>,
    node: Option<u32>,
    last_heard: u64,
    types: u16,
    bloom: [u8; BLOOM_LEN],
    /// The confirm we sent as initiator, resent until the responder's first frame arrives.
    confirm: Option<Vec<u8>>,
    /// Whether the peer proved it holds the session (responder: at once; initiator: on
    /// the first frame it decrypts from the peer). Only confirmed neighbours are used.
    confirmed: bool,
    /// Initiator: when the confirm is resent / the session given up if unconfirmed.
    confirm_retry: u64,
    confirm_deadline: u64,
}

struct Pending {
    hs: Handshake,
    initiator: bool,
    explicit: bool,
    peer: Option<PeerId>,
    first: Vec<u8>,
    last_frame: Vec<u8>,
    node: u32,
    deadline: u64,
    retry_at: u64,
}

struct KnownKey {
    key: PublicKey,
    epoch: u32,
    node: u32,
}

struct Held {
    header: RouteHeader,
    body: Body,
    from: PeerId,
    until: u64,
}

/// A data frame handed to the radio whose arrival at the next hop is not yet confirmed.
struct InFlight {
    header: RouteHeader,
    body: Body,
    /// The neighbour it came from (our own id for frames we originated).
    from: PeerId,
    /// The neighbour it was sent to.
    via: PeerId,
    priority: Priority,
    /// Sends so far beyond the first.
    attempts: u8,
    /// When its verdict is overdue; set once the frame went to the radio.
    deadline: Option<u64>,
}

const SEEN_PRESENCE: u8 = 1;
const SEEN_SEALED: u8 = 2;

/// The protocol engine (see the module docs).
pub struct Engine {
    identity: Identity,
    me: PeerId,
    my_short: ShortId,
    policy: Arc<AccessPolicy>,
    config: EngineConfig,
    key: NetworkKey,
    epoch: u32,
    neighbours: HashMap<PeerId, Neighbour>,
    pending: HashMap<ShortId, Pending>,
    keys: HashMap<ShortId, KnownKey>,
    node_peer: HashMap<u32, PeerId>,
    wanted: HashMap<ShortId, (PeerId, u64)>,
    no_auto: HashSet<PeerId>,
    routes: RoutingTable,
    seen: SeenSet<(ShortId, u32, u8)>,
    reasm: Reassembler,
    held: VecDeque<Held>,
    inflight: HashMap<u64, InFlight>,
    next_ticket: u64,
    /// The latest time any call passed in.
    last_now: u64,
    sched: Scheduler<Transmit>,
    events: VecDeque<EngineEvent>,
    seq: u16,
    group: u16,
    beacon_seq: u32,
    beacons_sent: u32,
    next_beacon: u64,
    last_announce: Option<u64>,
    key_requests: HashMap<ShortId, u64>,
    types: u16,
    bloom: [u8; BLOOM_LEN],
    rng: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("me", &self.me)
            .field("neighbours", &self.neighbours.len())
            .field("queued", &self.sched.len())
            .finish_non_exhaustive()
    }
}

fn sid(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

impl Engine {
    /// An engine for `identity` under `policy`, started at `now`; `seed` feeds backoff
    /// jitter and the boot epoch (use OS randomness).
    pub fn new(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        config: EngineConfig,
        now: u64,
        seed: u64,
    ) -> Self {
        let me = identity.peer_id();
        let duty = DutyCycle::new(config.duty, config.duty_guard_ms);
        let mut rng = seed | 1;
        let epoch = (xorshift(&mut rng) >> 32) as u32;
        // Sequence numbers start at random points so a restarted node's frames are not
        // taken for duplicates of its previous life's by nodes that remember those.
        let start = xorshift(&mut rng);
        Engine {
            identity,
            me,
            my_short: short_id(&me),
            policy,
            key: NetworkKey::from_secret(&config.network_secret),
            epoch,
            neighbours: HashMap::new(),
            pending: HashMap::new(),
            keys: HashMap::new(),
            node_peer: HashMap::new(),
            wanted: HashMap::new(),
            no_auto: HashSet::new(),
            routes: RoutingTable::new(config.route_capacity, config.route_ttl_ms),
            seen: SeenSet::new(config.seen_capacity),
            reasm: Reassembler::new(config.reassembly),
            held: VecDeque::new(),
            inflight: HashMap::new(),
            next_ticket: 0,
            last_now: now,
            sched: Scheduler::new(config.scheduler, duty, xorshift(&mut rng)),
            events: VecDeque::new(),
            seq: start as u16,
            group: (start >> 16) as u16,
            beacon_seq: (start >> 32) as u32,
            beacons_sent: 0,
            next_beacon: now,
            last_announce: None,
            key_requests: HashMap::new(),
            types: types::ALL,
            bloom: [0; BLOOM_LEN],
            rng,
            config,
        }
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Replaces the collections announced in beacons (Bloom filter).
    pub fn set_collections<S: AsRef<str>>(&mut self, collections: &[S]) {
        let mut b = [0; BLOOM_LEN];
        for c in collections {
            bloom_insert(&mut b, c.as_ref());
        }
        self.bloom = b;
    }

    /// Neighbours with an established session.
    pub fn neighbours(&self) -> Vec<NeighbourInfo> {
        self.neighbours
            .iter()
            .filter(|(_, n)| n.confirmed)
            .map(|(p, n)| NeighbourInfo {
                peer: *p,
                key: n.key,
                node: n.node,
                last_heard: n.last_heard,
                types: n.types,
                bloom: n.bloom,
            })
            .collect()
    }

    /// Live routes: destination short id, next hop, hops.
    pub fn routes(&self, now: u64) -> Vec<(ShortId, PeerId, u8)> {
        self.routes
            .routes(now)
            .into_iter()
            .map(|(d, r)| (d, r.via, r.hops))
            .collect()
    }

    /// Whether `peer` can be sent to now (a neighbour, or a route through one).
    pub fn reachable(&self, peer: &PeerId, now: u64) -> bool {
        self.route_to(peer, now).is_some()
    }

    /// Airtime used in the current duty window, ms.
    pub fn airtime_used_ms(&mut self, now: u64) -> u64 {
        self.sched.duty().used_ms(now)
    }

    /// Packets waiting for the channel.
    pub fn queued(&self) -> usize {
        self.sched.len()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    /// The next packet to hand to the radio at `now`.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Transmit> {
        self.last_now = self.last_now.max(now);
        let t = self.sched.poll(now)?.item;
        if let Some(f) = t.ticket.and_then(|k| self.inflight.get_mut(&k)) {
            f.deadline = Some(now.saturating_add(self.config.hop_ack_timeout_ms));
        }
        Some(t)
    }

    /// Data frames handed to the radio or waiting for it whose arrival at the next hop is
    /// not confirmed yet.
    pub fn unconfirmed(&self) -> usize {
        self.inflight.len()
    }

    /// Frames held for a next hop (store-and-forward).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The radio's verdict on the packet of [`Transmit::ticket`] `ticket`: `delivered`
    /// when the next hop acknowledged it. An undelivered frame is sent again through the
    /// best next hop (at most [`EngineConfig::hop_retries`] times), then held until a
    /// route appears. Unknown tickets (already settled or timed out) are ignored.
    pub fn handle_hop_result(&mut self, ticket: u64, delivered: bool, now: u64) {
        self.last_now = self.last_now.max(now);
        let Some(f) = self.inflight.remove(&ticket) else {
            return;
        };
        if !delivered {
            self.retry(f, now);
        }
    }

    fn retry(&mut self, f: InFlight, now: u64) {
        if f.attempts >= self.config.hop_retries {
            tracing::warn!(
                dest = ?f.header.dest,
                seq = f.header.seq,
                attempts = f.attempts + 1,
                "lora frame not confirmed by any next hop; held for a new route"
            );
            self.hold(f.header, f.body, f.from, now);
            return;
        }
        tracing::debug!(dest = ?f.header.dest, seq = f.header.seq, "lora frame lost on a hop; sending again");
        let attempts = f.attempts + 1;
        // The best next hop now; else the same neighbour again (a flooded copy goes back
        // to the neighbour it was for, so retries never multiply copies); else as new.
        let via = self
            .next_hop(&f.header.dest, Some(&f.from), now)
            .or_else(|| Some(f.via).filter(|v| self.is_up(v) && *v != f.from));
        match via {
            Some(via) => {
                if let Err(e) =
                    self.send_tracked(&via, f.header, f.body, f.from, f.priority, attempts)
                {
                    tracing::debug!(error = %e, "resend failed");
                }
            }
            None => self.route(f.header, f.body, f.from, f.priority, attempts, now),
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) or
    /// [`poll_transmit`](Self::poll_transmit) next has work.
    pub fn next_deadline(&mut self, now: u64) -> u64 {
        let mut d = self.next_beacon;
        for p in self.pending.values() {
            d = d.min(p.retry_at).min(p.deadline);
        }
        for n in self.neighbours.values() {
            d = d.min(n.last_heard.saturating_add(self.config.peer_timeout_ms));
            if !n.confirmed {
                d = d.min(n.confirm_retry).min(n.confirm_deadline);
            }
        }
        if let Some(h) = self.held.front() {
            d = d.min(h.until);
        }
        for f in self.inflight.values() {
            if let Some(t) = f.deadline {
                d = d.min(t);
            }
        }
        if let Some(s) = self.sched.next_deadline(now) {
            d = d.min(s);
        }
        d.max(now)
    }

    fn enqueue(&mut self, to: u32, payload: Vec<u8>, priority: Priority) -> Result<(), LoraError> {
        self.enqueue_ticket(to, payload, priority, None)
    }

    fn enqueue_ticket(
        &mut self,
        to: u32,
        payload: Vec<u8>,
        priority: Priority,
        ticket: Option<u64>,
    ) -> Result<(), LoraError> {
        let airtime_ms = self.config.radio.packet_airtime_ms(payload.len());
        let want_ack = self.config.want_ack && to != BROADCAST;
        let item = Transmit {
            to,
            payload,
            want_ack,
            hop_limit: self.config.meshtastic_hop_limit,
            priority,
            ticket,
        };
        let evicted = self
            .sched
            .push(Queued {
                item,
                airtime_ms,
                priority,
            })
            .map_err(|_| LoraError::QueueFull)?;
        if let Some(victim) = evicted {
            // A more urgent packet took its place: a tracked frame waits in the held
            // queue instead of vanishing.
            tracing::debug!(
                to = victim.item.to,
                "queued packet displaced by a more urgent one"
            );
            if let Some(f) = victim.item.ticket.and_then(|k| self.inflight.remove(&k)) {
                let now = self.last_now;
                self.hold(f.header, f.body, f.from, now);
            }
        }
        Ok(())
    }

    fn broadcast_frame(&mut self, f: &Frame, priority: Priority) {
        let bytes = f.encode(&self.key);
        if let Err(e) = self.enqueue(BROADCAST, bytes, priority) {
            tracing::debug!(error = %e, "broadcast frame dropped");
        }
    }

    fn announce(&mut self, now: u64) {
        self.last_announce = Some(now);
        let f = Frame::Announce {
            key: self.identity.public_key().to_bytes(),
            epoch: self.epoch,
        };
        self.broadcast_frame(&f, Priority::High);
    }

    fn announce_limited(&mut self, now: u64) {
        let ok = self
            .last_announce
            .is_none_or(|t| now >= t.saturating_add(self.config.announce_min_interval_ms));
        if ok {
            self.announce(now);
        }
    }

    fn request_key(&mut self, short: ShortId, now: u64) {
        let last = self.key_requests.get(&short).copied();
        if last.is_some_and(|t| now < t.saturating_add(self.config.announce_min_interval_ms * 2)) {
            return;
        }
        if self.key_requests.len() > 256 {
            self.key_requests.clear();
        }
        self.key_requests.insert(short, now);
        let f = Frame::KeyRequest {
            from: self.my_short,
            to: short,
        };
        self.broadcast_frame(&f, Priority::High);
    }

    /// Runs timers: beacons, handshake retries and timeouts, neighbour timeouts,
    /// reassembly and store-and-forward expiry.
    pub fn handle_timeout(&mut self, now: u64) {
        self.last_now = self.last_now.max(now);
        if now >= self.next_beacon {
            if self
                .beacons_sent
                .is_multiple_of(self.config.announce_every.max(1))
            {
                self.announce(now);
            }
            self.beacons_sent = self.beacons_sent.wrapping_add(1);
            self.beacon_seq = self.beacon_seq.wrapping_add(1);
            let p = Presence {
                ttl: self.config.ttl,
                hops: 0,
                origin: self.my_short,
                seq: self.beacon_seq,
                types: self.types,
                bloom: self.bloom,
            };
            self.seen.insert((self.my_short, p.seq, SEEN_PRESENCE));
            self.broadcast_frame(&Frame::Presence(p), Priority::Normal);
            // ±10% jitter so beacons of nodes started together drift apart.
            let iv = self.config.beacon_interval_ms;
            let jitter = xorshift(&mut self.rng) % (iv / 5 + 1);
            self.next_beacon = now + iv - iv / 10 + jitter;
        }
        let mut failed = Vec::new();
        let mut resend = Vec::new();
        for (short, p) in &mut self.pending {
            if now >= p.deadline {
                failed.push(*short);
            } else if now >= p.retry_at {
                p.retry_at = now + self.config.handshake_retry_ms;
                resend.push((p.node, p.last_frame.clone()));
            }
        }
        for (node, frame) in resend {
            let _ = self.enqueue(node, frame, Priority::High);
        }
        for short in failed {
            if let Some(p) = self.pending.remove(&short)
                && p.initiator
                && let Some(peer) = p.peer
            {
                self.events.push_back(EngineEvent::ConnectFailed {
                    peer,
                    reason: "handshake timed out".into(),
                });
            }
        }
        let mut unconfirmed_failed = Vec::new();
        let mut confirms = Vec::new();
        let retry = self.config.handshake_retry_ms;
        for (p, n) in self.neighbours.iter_mut().filter(|(_, n)| !n.confirmed) {
            if now >= n.confirm_deadline {
                unconfirmed_failed.push(*p);
            } else if now >= n.confirm_retry {
                n.confirm_retry = now + retry;
                if let Some(c) = &n.confirm {
                    confirms.push((n.node.unwrap_or(BROADCAST), c.clone()));
                }
            }
        }
        for (node, c) in confirms {
            let _ = self.enqueue(node, c, Priority::High);
        }
        for p in unconfirmed_failed {
            self.neighbours.remove(&p);
            self.events.push_back(EngineEvent::ConnectFailed {
                peer: p,
                reason: "handshake not confirmed".into(),
            });
        }
        let timeout = self.config.peer_timeout_ms;
        let gone: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.last_heard.saturating_add(timeout) <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            tracing::info!(peer = %p, "neighbour timed out");
            self.drop_neighbour(&p);
        }
        self.wanted.retain(|_, (_, until)| *until > now);
        self.reasm.expire(now);
        while let Some(h) = self.held.pop_front_if(|h| h.until <= now) {
            tracing::warn!(dest = ?h.header.dest, seq = h.header.seq, "held lora frame expired without a route");
        }
        let overdue: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in overdue {
            if let Some(f) = self.inflight.remove(&k) {
                self.retry(f, now);
            }
        }
    }

    /// Records which node number a peer speaks from, bounded: beyond 1024 entries only
    /// those of neighbours are kept.
    fn remember_node(&mut self, node: u32, peer: PeerId) {
        if self.node_peer.len() >= 1024 {
            let keep: HashSet<PeerId> = self.neighbours.keys().copied().collect();
            self.node_peer.retain(|_, p| keep.contains(p));
        }
        self.node_peer.insert(node, peer);
    }

    fn drop_neighbour(&mut self, peer: &PeerId) {
        if let Some(n) = self.neighbours.remove(peer) {
            self.routes.remove_via(peer);
            if n.confirmed {
                self.events.push_back(EngineEvent::PeerDown(*peer));
            }
        }
    }

    /// Handles one packet from the radio: `from_node` is the Meshtastic sender,
    /// `radio_hops` the hops the firmware relayed it (`hop_start - hop_limit`).
    /// Errors say why a frame was refused (malformed, forged, replayed...); the engine
    /// state is unaffected by refused frames.
    pub fn handle_radio(
        &mut self,
        from_node: u32,
        payload: &[u8],
        radio_hops: u8,
        now: u64,
    ) -> Result<(), LoraError> {
        self.last_now = self.last_now.max(now);
        match Frame::decode(payload, &self.key)? {
            Frame::Presence(p) => {
                self.on_presence(p, from_node, radio_hops, now);
                Ok(())
            }
            Frame::Announce { key, epoch } => self.on_announce(&key, epoch, from_node, now),
            Frame::KeyRequest { to, .. } => {
                if to == self.my_short {
                    self.announce_limited(now);
                }
                Ok(())
            }
            Frame::Handshake {
                step,
                explicit,
                from,
                to,
                noise,
            } => {
                if to != self.my_short {
                    return Ok(());
                }
                self.on_handshake(step, explicit, from, &noise, from_node, now)
            }
            Frame::Sealed {
                sid,
                counter,
                ciphertext,
            } => self.on_sealed(sid, counter, &ciphertext, from_node, now),
        }
    }

    fn on_presence(&mut self, p: Presence, from_node: u32, radio_hops: u8, now: u64) {
        if p.origin == self.my_short || !self.seen.insert((p.origin, p.seq, SEEN_PRESENCE)) {
            return;
        }
        let via = self
            .node_peer
            .get(&from_node)
            .copied()
            .filter(|v| self.is_up(v));
        if p.hops == 0 && radio_hops == 0 {
            let direct = self
                .neighbours
                .iter_mut()
                .find(|(peer, _)| short_id(peer) == p.origin);
            match direct {
                Some((_, n)) => {
                    n.last_heard = now;
                    n.types = p.types;
                    n.bloom = p.bloom;
                    n.node = Some(from_node);
                }
                None => {
                    if self.keys.contains_key(&p.origin) {
                        self.maybe_connect(p.origin, None, false, now);
                    } else if self.config.auto_connect {
                        self.request_key(p.origin, now);
                    }
                }
            }
        }
        if let Some(v) = via {
            self.routes.learn(p.origin, v, p.hops + 1, now);
            self.flush_held(now);
        }
        if p.ttl > 0 {
            let relayed = Presence {
                ttl: p.ttl - 1,
                hops: p.hops.saturating_add(1),
                ..p
            };
            self.broadcast_frame(&Frame::Presence(relayed), Priority::Low);
        }
    }

    fn on_announce(
        &mut self,
        key: &[u8; 32],
        epoch: u32,
        from_node: u32,
        now: u64,
    ) -> Result<(), LoraError> {
        let key = PublicKey::from_bytes(key)?;
        let peer = key.peer_id();
        if peer == self.me {
            return Ok(());
        }
        let short = short_id(&peer);
        self.keys.insert(
            short,
            KnownKey {
                key,
                epoch,
                node: from_node,
            },
        );
        if self.keys.len() > 1024 {
            // Bounded: forget keys of nodes that are not neighbours.
            let keep: HashSet<ShortId> = self.neighbours.keys().map(short_id).collect();
            self.keys.retain(|k, _| keep.contains(k) || *k == short);
        }
        self.remember_node(from_node, peer);
        if let Some(n) = self.neighbours.get_mut(&peer) {
            match n.epoch {
                Some(e) if e != epoch => {
                    tracing::info!(%peer, "neighbour restarted; its old session is gone");
                    self.drop_neighbour(&peer);
                }
                _ => {
                    n.epoch = Some(epoch);
                    n.node = Some(from_node);
                    n.last_heard = now;
                    return Ok(());
                }
            }
        }
        let explicit = self.wanted.remove(&short).is_some();
        self.maybe_connect(short, Some(peer), explicit, now);
        Ok(())
    }

    fn maybe_connect(&mut self, short: ShortId, expect: Option<PeerId>, explicit: bool, now: u64) {
        let Some(k) = self.keys.get(&short) else {
            if let Some(p) = expect
                && explicit
            {
                self.wanted
                    .insert(short, (p, now + self.config.handshake_timeout_ms));
            }
            self.request_key(short, now);
            return;
        };
        let (key, node) = (k.key, k.node);
        let peer = key.peer_id();
        if expect.is_some_and(|e| e != peer) {
            return;
        }
        if self.neighbours.contains_key(&peer) || self.pending.contains_key(&short) {
            return;
        }
        if self.neighbours.len() + self.pending.len() >= self.config.max_neighbours {
            if explicit {
                self.events.push_back(EngineEvent::ConnectFailed {
                    peer,
                    reason: "too many neighbours".into(),
                });
            }
            return;
        }
        if !self.policy.allows(&peer) {
            if explicit {
                self.events.push_back(EngineEvent::ConnectFailed {
                    peer,
                    reason: "refused by the access policy".into(),
                });
            }
            return;
        }
        if !explicit {
            if !self.config.auto_connect || self.no_auto.contains(&peer) {
                return;
            }
            if self.my_short > short {
                // The smaller short id initiates; make sure it knows our key.
                self.announce_limited(now);
                return;
            }
        }
        let hs = Handshake::ik_initiator(
            self.identity.clone(),
            &key,
            self.policy.clone(),
            SessionConfig::datagram(),
        );
        let mut hs = match hs {
            Ok(h) => h,
            Err(e) => {
                self.events.push_back(EngineEvent::ConnectFailed {
                    peer,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let msg = match hs.write_message() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a handshake");
                return;
            }
        };
        let frame = Frame::Handshake {
            step: 1,
            explicit,
            from: self.my_short,
            to: short,
            noise: msg.clone(),
        }
        .encode(&self.key);
        let _ = self.enqueue(node, frame.clone(), Priority::High);
        tracing::debug!(%peer, "noise IK handshake started");
        self.pending.insert(
            short,
            Pending {
                hs,
                initiator: true,
                explicit,
                peer: Some(peer),
                first: msg,
                last_frame: frame,
                node,
                deadline: now + self.config.handshake_timeout_ms,
                retry_at: now + self.config.handshake_retry_ms,
            },
        );
    }

    fn on_handshake(
        &mut self,
        step: u8,
        explicit: bool,
        from: ShortId,
        noise: &[u8],
        node: u32,
        now: u64,
    ) -> Result<(), LoraError> {
        match step {
            1 => {
                if !explicit && self.wanted.contains_key(&from) {
                    // We are connecting to this node ourselves (waiting for its key): our
                    // explicit handshake will win, so the connecting side always initiates.
                    return Ok(());
                }
                if let Some(p) = self.pending.get(&from) {
                    if p.initiator {
                        // Crossing handshakes: an explicit connect wins over an automatic
                        // one, else the smaller short id's.
                        let mine_wins = match (p.explicit, explicit) {
                            (true, false) => true,
                            (false, true) => false,
                            _ => self.my_short < from,
                        };
                        if mine_wins {
                            return Ok(());
                        }
                        self.pending.remove(&from);
                    } else if p.first == noise {
                        let f = p.last_frame.clone();
                        return self.enqueue(node, f, Priority::High);
                    }
                }
                if self.neighbours.len() + self.pending.len() >= self.config.max_neighbours {
                    return Err(LoraError::Rejected("too many neighbours and handshakes"));
                }
                let mut hs = Handshake::ik_responder(
                    self.identity.clone(),
                    self.policy.clone(),
                    SessionConfig::datagram(),
                )?;
                hs.read_message(noise)?;
                let peer = hs
                    .remote_public_key()
                    .map(PublicKey::peer_id)
                    .ok_or(LoraError::Rejected("handshake without identity"))?;
                if short_id(&peer) != from {
                    return Err(LoraError::Rejected(
                        "handshake sender does not match its short id",
                    ));
                }
                let reply = hs.write_message()?;
                let frame = Frame::Handshake {
                    step: 2,
                    explicit: false,
                    from: self.my_short,
                    to: from,
                    noise: reply,
                }
                .encode(&self.key);
                self.remember_node(node, peer);
                self.enqueue(node, frame.clone(), Priority::High)?;
                self.pending.insert(
                    from,
                    Pending {
                        hs,
                        initiator: false,
                        explicit,
                        peer: Some(peer),
                        first: noise.to_vec(),
                        last_frame: frame,
                        node,
                        deadline: now + self.config.handshake_timeout_ms,
                        retry_at: now + self.config.handshake_retry_ms,
                    },
                );
                Ok(())
            }
            2 => {
                let Some(mut p) = self.pending.remove(&from).filter(|p| p.initiator) else {
                    // Our confirm was lost and the responder repeats message 2.
                    let confirm = self
                        .neighbours
                        .iter()
                        .find(|(peer, _)| short_id(peer) == from)
                        .and_then(|(_, n)| n.confirm.clone());
                    if let Some(c) = confirm {
                        return self.enqueue(node, c, Priority::High);
                    }
                    return Ok(());
                };
                if let Err(e) = p.hs.read_message(noise) {
                    if let Some(peer) = p.peer {
                        self.events.push_back(EngineEvent::ConnectFailed {
                            peer,
                            reason: e.to_string(),
                        });
                    }
                    return Err(e.into());
                }
                let confirm = p.hs.write_message()?;
                let frame = Frame::Handshake {
                    step: 3,
                    explicit: false,
                    from: self.my_short,
                    to: from,
                    noise: confirm,
                }
                .encode(&self.key);
                self.enqueue(node, frame.clone(), Priority::High)?;
                let session = p.hs.into_session()?;
                self.establish(session, true, node, Some(frame), now);
                Ok(())
            }
            _ => {
                let Some(mut p) = self.pending.remove(&from).filter(|p| !p.initiator) else {
                    // The initiator repeats its confirm: our hello was lost.
                    let peer = self
                        .neighbours
                        .keys()
                        .find(|p| short_id(p) == from)
                        .copied();
                    if let Some(peer) = peer {
                        self.send_hello(&peer);
                    }
                    return Ok(());
                };
                p.hs.read_message(noise)?;
                let session = p.hs.into_session()?;
                self.establish(session, false, node, None, now);
                Ok(())
            }
        }
    }

    fn establish(
        &mut self,
        session: Session,
        initiator: bool,
        node: u32,
        confirm: Option<Vec<u8>>,
        now: u64,
    ) {
        let key = *session.remote_public_key();
        let peer = key.peer_id();
        let hh = *session.handshake_hash();
        let (tx_sid, rx_sid) = if initiator {
            (sid(&hh[0..2]), sid(&hh[2..4]))
        } else {
            (sid(&hh[2..4]), sid(&hh[0..2]))
        };
        let short = short_id(&peer);
        let epoch = self.keys.get(&short).map(|k| k.epoch);
        self.keys.insert(
            short,
            KnownKey {
                key,
                epoch: epoch.unwrap_or(0),
                node,
            },
        );
        self.remember_node(node, peer);
        self.neighbours.insert(
            peer,
            Neighbour {
                key,
                session,
                tx_sid,
                rx_sid,
                epoch,
                node: Some(node),
                last_heard: now,
                types: types::ALL,
                bloom: [0; BLOOM_LEN],
                confirm,
                confirmed: false,
                confirm_retry: now + self.config.handshake_retry_ms,
                confirm_deadline: now + self.config.handshake_timeout_ms,
            },
        );
        self.wanted.remove(&short);
        // A new session may mean the node restarted: forget its old frame keys.
        self.seen.retain(|k| k.0 != short);
        if !initiator {
            self.confirm(&peer, now);
            self.send_hello(&peer);
        }
    }

    fn send_hello(&mut self, peer: &PeerId) {
        let h = RouteHeader {
            ttl: 0,
            hops: 0,
            origin: self.my_short,
            dest: short_id(peer),
            seq: self.next_seq(),
        };
        if let Err(e) = self.send_inner(peer, &h, &Body::Hello, Priority::High) {
            tracing::debug!(error = %e, "hello not sent");
        }
    }

    fn confirm(&mut self, peer: &PeerId, now: u64) {
        let Some(n) = self.neighbours.get_mut(peer) else {
            return;
        };
        if n.confirmed {
            return;
        }
        n.confirmed = true;
        let key = n.key;
        self.routes.learn(short_id(peer), *peer, 1, now);
        tracing::info!(%peer, "lora session established");
        self.events
            .push_back(EngineEvent::PeerUp { peer: *peer, key });
        self.flush_held(now);
    }

    fn on_sealed(
        &mut self,
        sid: u16,
        counter: u32,
        ct: &[u8],
        node: u32,
        now: u64,
    ) -> Result<(), LoraError> {
        let mut datagram = Vec::with_capacity(8 + ct.len());
        datagram.extend_from_slice(&[0; 4]);
        datagram.extend_from_slice(&counter.to_be_bytes());
        datagram.extend_from_slice(ct);
        let mut found = None;
        let mut replay = false;
        for (peer, n) in self.neighbours.iter_mut().filter(|(_, n)| n.rx_sid == sid) {
            match n.session.decrypt(&datagram) {
                Ok(plain) => {
                    found = Some((*peer, plain));
                    break;
                }
                Err(ecomesh_identity::Error::Replay(_)) => replay = true,
                Err(_) => {}
            }
        }
        let Some((from, plain)) = found else {
            return Err(LoraError::Rejected(if replay {
                "replayed"
            } else {
                "no session authenticates it"
            }));
        };
        if let Some(n) = self.neighbours.get_mut(&from) {
            n.last_heard = now;
            n.node = Some(node);
        }
        self.remember_node(node, from);
        self.confirm(&from, now);
        let (h, body) = decode_inner(&plain)?;
        if h.origin == self.my_short || !self.seen.insert((h.origin, u32::from(h.seq), SEEN_SEALED))
        {
            return Ok(());
        }
        self.routes
            .learn(h.origin, from, h.hops.saturating_add(1), now);
        if h.dest == self.my_short {
            self.deliver(h, body, from, now);
        } else if h.ttl > 0 {
            let fwd = RouteHeader {
                ttl: h.ttl - 1,
                hops: h.hops.saturating_add(1),
                ..h
            };
            self.forward(fwd, body, from, now);
        }
        Ok(())
    }

    fn deliver(&mut self, h: RouteHeader, body: Body, from: PeerId, now: u64) {
        let bytes = match body {
            Body::Message(m) => m,
            Body::Fragment {
                group,
                index,
                count,
                data,
            } => match self.reasm.push(h.origin, group, index, count, &data, now) {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "fragment dropped");
                    return;
                }
            },
            Body::Close { leaving } => {
                if h.origin == short_id(&from) {
                    tracing::info!(peer = %from, leaving, "neighbour closed the session");
                    if !leaving {
                        self.no_auto.insert(from);
                    }
                    self.drop_neighbour(&from);
                }
                return;
            }
            Body::Hello => return,
            b @ (Body::Notification(_) | Body::Grant(_)) => {
                self.events.push_back(EngineEvent::Compact {
                    origin: h.origin,
                    from,
                    body: b,
                });
                return;
            }
        };
        match decode_message_compact(&bytes) {
            Ok(message) => {
                if short_id(&message.sender) != h.origin || !self.policy.allows(&message.sender) {
                    tracing::debug!(sender = %message.sender, "message dropped: origin mismatch or refused sender");
                    return;
                }
                self.events.push_back(EngineEvent::Message {
                    from,
                    message,
                    hops: h.hops,
                });
            }
            Err(e) => tracing::debug!(error = %e, "undecodable message dropped"),
        }
    }

    fn next_hop(&self, dest: &ShortId, exclude: Option<&PeerId>, now: u64) -> Option<PeerId> {
        if let Some((p, _)) = self
            .neighbours
            .iter()
            .find(|(p, n)| n.confirmed && short_id(p) == *dest && Some(*p) != exclude)
        {
            return Some(*p);
        }
        self.routes
            .lookup(dest, now)
            .map(|r| r.via)
            .filter(|v| self.is_up(v) && Some(v) != exclude)
    }

    fn forward(&mut self, h: RouteHeader, body: Body, from: PeerId, now: u64) {
        self.route(h, body, from, Priority::Normal, 0, now);
    }

    /// Sends a data frame on toward `h.dest` (`from`: the neighbour it came from, or our
    /// own id), tracked until the next hop has it; with no route, floods it to the other
    /// neighbours (TTL and the seen-sets bound that), or holds it until one appears.
    fn route(
        &mut self,
        h: RouteHeader,
        body: Body,
        from: PeerId,
        priority: Priority,
        attempts: u8,
        now: u64,
    ) {
        if let Some(via) = self.next_hop(&h.dest, Some(&from), now) {
            if let Err(e) = self.send_tracked(&via, h, body, from, priority, attempts) {
                tracing::debug!(error = %e, "forward failed");
            }
            return;
        }
        // Only neighbours that proved they hold the session: one still in its handshake
        // may not be able to decrypt the frame, while its radio acknowledges it.
        let others: Vec<PeerId> = self
            .up_neighbours()
            .into_iter()
            .filter(|p| *p != from)
            .collect();
        if others.is_empty() {
            self.hold(h, body, from, now);
            return;
        }
        for via in others {
            let _ = self.send_tracked(&via, h, body.clone(), from, Priority::Low, attempts);
        }
    }

    /// Keeps a frame until a next hop appears, bounded by count (the oldest goes, with a
    /// warning) and time.
    fn hold(&mut self, header: RouteHeader, body: Body, from: PeerId, now: u64) {
        if self.held.len() >= self.config.held_capacity
            && let Some(old) = self.held.pop_front()
        {
            tracing::warn!(dest = ?old.header.dest, seq = old.header.seq, "held lora frame dropped: the held queue is full");
        }
        self.held.push_back(Held {
            header,
            body,
            from,
            until: now + self.config.held_timeout_ms,
        });
    }

    fn flush_held(&mut self, now: u64) {
        let held: Vec<Held> = self.held.drain(..).collect();
        for h in held {
            if h.until <= now {
                tracing::warn!(dest = ?h.header.dest, seq = h.header.seq, "held lora frame expired without a route");
                continue;
            }
            let has_next = self.next_hop(&h.header.dest, Some(&h.from), now).is_some()
                || self.up_neighbours().iter().any(|p| *p != h.from);
            if has_next {
                self.route(h.header, h.body, h.from, Priority::Normal, 0, now);
            } else {
                self.held.push_back(h);
            }
        }
    }

    /// [`send_inner`](Self::send_inner) for a data frame the engine keeps until the radio
    /// confirms the next hop has it (when `want_ack` lets the radio say so).
    fn send_tracked(
        &mut self,
        via: &PeerId,
        header: RouteHeader,
        body: Body,
        from: PeerId,
        priority: Priority,
        attempts: u8,
    ) -> Result<(), LoraError> {
        let (to, frame) = self.seal(via, &header, &body)?;
        if !self.config.want_ack || to == BROADCAST {
            return self.enqueue(to, frame, priority);
        }
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let ticket = self.next_ticket;
        self.inflight.insert(
            ticket,
            InFlight {
                header,
                body,
                from,
                via: *via,
                priority,
                attempts,
                deadline: None,
            },
        );
        let r = self.enqueue_ticket(to, frame, priority, Some(ticket));
        if r.is_err() {
            self.inflight.remove(&ticket);
        }
        r
    }

    fn send_inner(
        &mut self,
        via: &PeerId,
        h: &RouteHeader,
        body: &Body,
        priority: Priority,
    ) -> Result<(), LoraError> {
        let (to, frame) = self.seal(via, h, body)?;
        self.enqueue(to, frame, priority)
    }

    /// Encrypts a frame for neighbour `via`: its node number and the frame bytes.
    fn seal(
        &mut self,
        via: &PeerId,
        h: &RouteHeader,
        body: &Body,
    ) -> Result<(u32, Vec<u8>), LoraError> {
        let plain = encode_inner(h, body);
        let n = self
            .neighbours
            .get_mut(via)
            .ok_or(LoraError::Unreachable(*via))?;
        let datagram = n.session.encrypt(&plain)?;
        let (nonce, ct) = datagram.split_at(8);
        if nonce[..4] != [0; 4] {
            // 2^32 frames in one session: start over with a new handshake.
            let p = *via;
            self.drop_neighbour(&p);
            return Err(LoraError::Rejected("session counter exhausted"));
        }
        let counter = u32::from_be_bytes([nonce[4], nonce[5], nonce[6], nonce[7]]);
        let frame = Frame::Sealed {
            sid: n.tx_sid,
            counter,
            ciphertext: ct.to_vec(),
        }
        .encode(&self.key);
        Ok((n.node.unwrap_or(BROADCAST), frame))
    }

    fn is_up(&self, peer: &PeerId) -> bool {
        self.neighbours.get(peer).is_some_and(|n| n.confirmed)
    }

    fn up_neighbours(&self) -> Vec<PeerId> {
        self.neighbours
            .iter()
            .filter(|(_, n)| n.confirmed)
            .map(|(p, _)| *p)
            .collect()
    }

    fn route_to(&self, peer: &PeerId, now: u64) -> Option<PeerId> {
        if self.is_up(peer) {
            return Some(*peer);
        }
        self.next_hop(&short_id(peer), None, now)
    }

    fn next_seq(&mut self) -> u16 {
        self.seq = self.seq.wrapping_add(1);
        self.seen
            .insert((self.my_short, u32::from(self.seq), SEEN_SEALED));
        self.seq
    }

    /// Checks `message` against the size cap and the priority (bulk is refused).
    pub fn check_message(
        &self,
        message: &NetworkMessage,
        priority: Priority,
    ) -> Result<(), LoraError> {
        if priority == Priority::Bulk {
            return Err(LoraError::BulkRefused);
        }
        let size = encode_message(message).len();
        let max = self.config.max_message_size;
        if size > max {
            return Err(LoraError::TooLarge { size, max });
        }
        Ok(())
    }

    /// Queues `message` for `peer` (a neighbour, or a node reachable through one),
    /// fragmented when needed.
    pub fn send_message(
        &mut self,
        peer: PeerId,
        message: &NetworkMessage,
        priority: Priority,
        now: u64,
    ) -> Result<(), LoraError> {
        self.check_message(message, priority)?;
        self.last_now = self.last_now.max(now);
        let via = self
            .route_to(&peer, now)
            .ok_or(LoraError::Unreachable(peer))?;
        let compact = encode_message_compact(message);
        let dest = short_id(&peer);
        let bodies: Vec<Body> = if compact.len() <= SINGLE_FRAME_CAPACITY {
            vec![Body::Message(compact)]
        } else {
            let parts = split(
                &compact,
                FRAGMENT_CAPACITY,
                self.config.reassembly.max_fragments,
            )
            .map_err(|_| LoraError::TooLarge {
                size: encode_message(message).len(),
                max: self.config.max_message_size,
            })?;
            self.group = self.group.wrapping_add(1);
            let count = u8::try_from(parts.len()).map_err(|_| LoraError::Fragment("count"))?;
            parts
                .into_iter()
                .enumerate()
                .map(|(i, d)| Body::Fragment {
                    group: self.group,
                    index: u8::try_from(i).unwrap_or(u8::MAX),
                    count,
                    data: d.to_vec(),
                })
                .collect()
        };
        let me = self.me;
        for body in bodies {
            let h = RouteHeader {
                ttl: self.config.ttl,
                hops: 0,
                origin: self.my_short,
                dest,
                seq: self.next_seq(),
            };
            self.send_tracked(&via, h, body, me, priority, 0)?;
        }
        Ok(())
    }

    /// Queues `message` for every neighbour.
    pub fn broadcast_message(
        &mut self,
        message: &NetworkMessage,
        priority: Priority,
        now: u64,
    ) -> Result<(), LoraError> {
        self.check_message(message, priority)?;
        for p in self.up_neighbours() {
            if let Err(e) = self.send_message(p, message, priority, now) {
                tracing::debug!(peer = %p, error = %e, "broadcast to one neighbour failed");
            }
        }
        Ok(())
    }

    /// Queues a compact notification header or permission grant for `peer`.
    pub fn send_compact(
        &mut self,
        peer: PeerId,
        body: Body,
        priority: Priority,
        now: u64,
    ) -> Result<(), LoraError> {
        if !matches!(body, Body::Notification(_) | Body::Grant(_)) {
            return Err(LoraError::Frame(
                "only notifications and grants are compact bodies",
            ));
        }
        let via = self
            .route_to(&peer, now)
            .ok_or(LoraError::Unreachable(peer))?;
        let h = RouteHeader {
            ttl: self.config.ttl,
            hops: 0,
            origin: self.my_short,
            dest: short_id(&peer),
            seq: self.next_seq(),
        };
        let me = self.me;
        self.send_tracked(&via, h, body, me, priority, 0)
    }

    /// Starts a session with `peer` (asking for its key first if unknown). Returns true
    /// if the session already exists; otherwise a `PeerUp` or `ConnectFailed` follows.
    pub fn connect(&mut self, peer: PeerId, now: u64) -> Result<bool, LoraError> {
        if peer == self.me {
            return Err(LoraError::Refused(peer));
        }
        if !self.policy.allows(&peer) {
            return Err(LoraError::Refused(peer));
        }
        self.no_auto.remove(&peer);
        if self.is_up(&peer) {
            return Ok(true);
        }
        self.maybe_connect(short_id(&peer), Some(peer), true, now);
        Ok(false)
    }

    /// Closes the session with `peer` (telling it), and does not reopen it by itself.
    pub fn disconnect(&mut self, peer: PeerId) {
        self.no_auto.insert(peer);
        self.pending.remove(&short_id(&peer));
        self.close(&peer, false);
    }

    fn close(&mut self, peer: &PeerId, leaving: bool) {
        if !self.neighbours.contains_key(peer) {
            return;
        }
        let h = RouteHeader {
            ttl: 0,
            hops: 0,
            origin: self.my_short,
            dest: short_id(peer),
            seq: self.next_seq(),
        };
        if let Err(e) = self.send_inner(peer, &h, &Body::Close { leaving }, Priority::Critical) {
            tracing::debug!(error = %e, "close not sent");
        }
        self.drop_neighbour(peer);
    }

    /// Closes every session (queueing a Close to each neighbour) before the node stops.
    pub fn shutdown(&mut self) {
        let peers: Vec<PeerId> = self.neighbours.keys().copied().collect();
        for p in peers {
            self.close(&p, true);
        }
        self.pending.clear();
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests;
