//! The sans-io protocol engine of one node: frames in (with the Meshtastic sender node
//! number), transmissions, events and deadlines out; time passed in as milliseconds.
//!
//! It owns the Noise IK sessions with neighbours, the beacons, key discovery, the
//! routing table and duplicate suppression, fragmentation and reassembly, store-and-forward
//! for frames without a next hop, and the transmit [`Scheduler`] (priorities, slotted
//! ALOHA, duty cycle). The tokio driver ([`crate::LoraTransport`]) only moves bytes.

mod beacon;
mod config;
mod handshake;
mod relay;
mod units;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_types::{NetworkMessage, PeerId, Priority};
use ecomesh_wire::encode_message;

use crate::airtime::MAX_APP_PAYLOAD;
use crate::envelope::encode_envelope;
use crate::error::LoraError;
use crate::frag::Reassembler;
use crate::frame::{
    BLOOM_LEN, Body, Frame, INNER_HEADER_LEN, NetworkKey, PART_HEADER_LEN, RouteHeader,
    SEALED_HEADER_LEN, ShortId, TAG_LEN, bloom_insert, short_id, types,
};
use crate::proto::BROADCAST;
use crate::routing::{RoutingTable, SeenSet};
use crate::sched::{DutyCycle, Queued, Scheduler};

pub use config::EngineConfig;

use handshake::{KnownKey, Neighbour, Pending};
use relay::Held;
use units::InFlight;

/// Bytes a message's [`envelope`](crate::envelope) may take to travel in one frame (the
/// unicast overhead is the sealed header, the routing header, the body kind and the tag).
pub const SINGLE_FRAME_CAPACITY: usize =
    MAX_APP_PAYLOAD - SEALED_HEADER_LEN - TAG_LEN - INNER_HEADER_LEN;
/// Bytes of a unit's ciphertext (and tag) each part of a multi-frame unit carries.
pub const PART_CAPACITY: usize = MAX_APP_PAYLOAD - PART_HEADER_LEN;

/// Envelope bytes a unit of at most `parts` frames can carry.
pub const fn unit_envelope_capacity(parts: u8) -> usize {
    if parts <= 1 {
        SINGLE_FRAME_CAPACITY
    } else {
        parts as usize * PART_CAPACITY - TAG_LEN - INNER_HEADER_LEN
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
        /// It came in the link-authenticated form (no signature; the session with
        /// `from`, its sender, proved it): see [`crate::envelope`].
        link_authenticated: bool,
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
    /// Sealed units sent and not yet confirmed by the next hop, by unit number.
    inflight: HashMap<u64, InFlight>,
    next_unit: u64,
    /// Numbers each session this engine establishes (a resent part must go out under the
    /// session that sealed it).
    next_session: u64,
    /// The latest time any call passed in.
    last_now: u64,
    sched: Scheduler<Transmit>,
    events: VecDeque<EngineEvent>,
    seq: u16,
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
            next_unit: 0,
            next_session: 0,
            last_now: now,
            sched: Scheduler::new(config.scheduler, duty, xorshift(&mut rng)),
            events: VecDeque::new(),
            seq: start as u16,
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
        let deadline = now.saturating_add(self.config.hop_ack_timeout_ms);
        if let Some(p) = t.ticket.and_then(|k| self.part_mut(k)) {
            p.deadline = Some(deadline);
        }
        Some(t)
    }

    /// Data frames (single frames and parts of units) handed to the radio or waiting for
    /// it whose arrival at the next hop is not confirmed yet.
    pub fn unconfirmed(&self) -> usize {
        self.inflight.values().map(InFlight::unconfirmed).sum()
    }

    /// Data units (a message, notification or grant) held for a next hop
    /// (store-and-forward).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The radio's verdict on the packet of [`Transmit::ticket`] `ticket`: `delivered`
    /// when the next hop acknowledged it. An undelivered frame is sent again (the same
    /// bytes while the next hop and its session stay the best way; otherwise its whole
    /// unit, sealed again for the best next hop), at most [`EngineConfig::hop_retries`]
    /// times, then its unit is held until a route appears. Unknown tickets (already
    /// settled or timed out) are ignored.
    pub fn handle_hop_result(&mut self, ticket: u64, delivered: bool, now: u64) {
        self.last_now = self.last_now.max(now);
        if delivered {
            self.part_delivered(ticket);
        } else {
            self.part_failed(ticket, now);
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
            if let Some(t) = f.next_deadline() {
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
            if let Some(f) = victim.item.ticket.and_then(|k| self.take_unit(k)) {
                let now = self.last_now;
                self.hold(f.header, f.body, f.from, now);
            }
        }
        Ok(())
    }

    /// Runs timers: beacons, handshake retries and timeouts, neighbour timeouts,
    /// reassembly and store-and-forward expiry.
    pub fn handle_timeout(&mut self, now: u64) {
        self.last_now = self.last_now.max(now);
        if now >= self.next_beacon {
            self.send_beacon(now);
        }
        self.handshake_timers(now);
        self.wanted.retain(|_, (_, until)| *until > now);
        self.reasm.expire(now);
        self.relay_timers(now);
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
            Frame::Announce { key, epoch, .. } => self.on_announce(&key, epoch, from_node, now),
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
            } => self.on_sealed(sid, counter, false, &ciphertext, from_node, now),
            Frame::SealedPart {
                sid,
                counter,
                index,
                count,
                piece,
            } => self.on_part(sid, counter, index, count, &piece, from_node, now),
        }
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
        if message.message_type.len() > usize::from(u8::MAX) {
            return Err(LoraError::Frame("message type over 255 bytes"));
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
        // The signed form; sealing turns it into the link-authenticated form when the
        // unit goes straight to its destination from us (see `Engine::seal`).
        let envelope = encode_envelope(message, &peer)?;
        let h = RouteHeader {
            ttl: self.config.ttl,
            hops: 0,
            origin: self.my_short,
            dest: short_id(&peer),
            seq: self.next_seq(),
        };
        let me = self.me;
        self.send_tracked(&via, h, Body::Message(envelope), me, priority, 0)
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
