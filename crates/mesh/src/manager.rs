//! The MultiTransportManager (seed 3.3): a thin driver over the sans-io parts.
//!
//! Transport events are queued by the transports' listeners (a bounded inbox,
//! no work in the callback) and handled when the owner calls
//! [`MultiTransportManager::process`] with the current time. Nothing here reads
//! a clock or spawns a task; any executor can drive the returned futures.
//!
//! Received messages go through, in order: the sender's signature (seed 8.1;
//! an invalid one is dropped and charged to the neighbour that handed it over,
//! since charging the claimed sender would let anyone ruin another peer's
//! standing by forging), expiry, deduplication by id, then delivery to this
//! node's subscribers (with an ACK back to the sender), or relay toward the
//! recipient (store-and-forward when it is not reachable).
//!
//! Relaying: a message for an absent recipient is stored and copies go to up to
//! `relay_fanout` trusted neighbours (reputation >= 0.3), then or as they are
//! discovered later (a message buffered while no relay was in reach leaves
//! with the first one that comes; no neighbour gets the same copy twice, and
//! no message more than `relay_fanout` copies in all); each node that
//! forwards a relayed message increments its hop count, and a copy that would
//! reach `max_hops` is not stored. Broadcasts are delivered to direct
//! neighbours only (not re-flooded). A relayed message's priority is not on the
//! wire, so relays use `Normal` (`High` for ACKs).
//!
//! Reliability: a message this node originated stays in the buffer after it was
//! handed to a transport, until its ACK arrives (a link can die with it in
//! flight); it is sent again whenever the recipient is discovered anew, and a
//! recipient that sees it twice acknowledges again without delivering it again.
//!
//! Nothing this node originated leaves the buffer unreported: such a message
//! (while it waits for its ACK) is evicted only for a more urgent message of
//! this node, and then [`MeshEvent::Evicted`] says so and the message stops
//! being tracked; a message that finds no room is refused by
//! [`MultiTransportManager::send`] with [`MeshError::BufferFull`], which names
//! the bounds, and is not tracked either. The owner (e.g. a durable outbox)
//! offers it again later. Relayed copies of other nodes' messages are evicted
//! by the buffer's order, with a log line; their origin keeps its own copy.
//!
//! Keys: the manager verifies with the keys transports announce under
//! [`PeerInfo::PUBLIC_KEY`] (checked against the peer id), then with the
//! directory it was given; [`MultiTransportManager::learned_keys`] and
//! [`MultiTransportManager::learn_key`] carry them across restarts.
//!
//! Key discovery ([`crate::keys`]): a message whose sender's key is unknown
//! (an origin two or more hops away) is held, not dropped, and the key is asked
//! for with an `ecomesh/key?` control message toward the sender; whoever knows
//! the key answers with a self-certifying `ecomesh/key!`. Once the key is known
//! by any path (a reply, a transport's announcement, [`learn_key`], the
//! directory), the held messages go through the steps above as if they had
//! just arrived (at the next [`process`]). Malformed or lying key messages are
//! rejected and charged to the neighbour that handed them over. Control
//! messages are never delivered to subscribers nor acknowledged.
//!
//! [`learn_key`]: MultiTransportManager::learn_key
//! [`process`]: MultiTransportManager::process

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use ecomesh_identity::message::{KeyDirectory, verify_message, verify_message_with};
use ecomesh_identity::{Error as IdentityError, Identity, PublicKey};
use ecomesh_types::{
    Listener, Listeners, MessageId, NetworkMessage, PeerId, PeerInfo, Priority, Subscription,
    TransportAdapter, TransportEvent, TransportType, Value,
};
use ecomesh_wire::encoded_message_len;

use crate::MeshError;
use crate::ack::{ACK_TYPE, PendingAcks, ack_for, acked_id};
use crate::buffer::{BufferConfig, StoreBuffer};
use crate::dedup::SeenSet;
use crate::keys::{
    AwaitingKeys, HoldOutcome, KEY_REPLY_TYPE, KEY_REQUEST_TYPE, KeyDiscoveryConfig,
    decode_key_reply, decode_key_request, is_key_message, key_reply_payload, key_request_payload,
};
use crate::onion::{ONION_CELL_TYPE, OnionConfig, OnionRouter};
use crate::policy::route_with_caps;
use crate::reputation::{Observation, ReputationTable, Standing};
use crate::topology::{PeerView, Topology, choose};

mod private_send;

pub use private_send::PrivateOutcome;

/// Most public keys a manager learns from transports (further ones are ignored).
pub const MAX_LEARNED_KEYS: usize = 65_536;

/// The `PeerInfo::metadata` key by which a peer announces itself as a super-peer (seed 7.2).
pub const SUPER_PEER_KEY: &str = "superPeer";

/// The signing domain from which the ids of key requests and replies are derived
/// (unpredictable to others, so nobody can burn them in relays' seen-sets beforehand).
const CONTROL_ID_DOMAIN: &str = "ecomesh 2026 mesh control message id v1";

/// Tunables of a [`MultiTransportManager`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// Bounds of the store-and-forward buffer (seed defaults: 1000 messages, 10 MiB).
    pub buffer: BufferConfig,
    /// Most message ids remembered for deduplication.
    pub dedup_capacity: usize,
    /// How long a message id is remembered, in milliseconds (default: the 7-day TTL).
    pub dedup_max_age_ms: u64,
    /// Most transport events queued between two [`MultiTransportManager::process`]
    /// calls; further events are dropped (and counted).
    pub inbox_capacity: usize,
    /// How many connected peers receive a relay copy of a message whose recipient is absent.
    pub relay_fanout: usize,
    /// Bounds and pacing of key discovery for senders whose key is unknown
    /// (see [`crate::keys`]).
    pub key_discovery: KeyDiscoveryConfig,
    /// Onion circuits for [`MultiTransportManager::send_private`] (see [`crate::onion`]).
    pub onion: OnionConfig,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            buffer: BufferConfig::default(),
            dedup_capacity: 10_000,
            dedup_max_age_ms: u64::from(NetworkMessage::DEFAULT_TTL_SECS) * 1000,
            inbox_capacity: 4096,
            relay_fanout: 3,
            key_discovery: KeyDiscoveryConfig::default(),
            onion: OnionConfig::default(),
        }
    }
}

/// What the manager tells its subscribers.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum MeshEvent {
    /// A verified, first-seen message for this node (or a broadcast).
    Message {
        /// The neighbour that handed it over.
        from: PeerId,
        /// The transport it arrived on.
        transport: TransportType,
        /// The message.
        message: NetworkMessage,
    },
    /// A peer became reachable on its first transport.
    PeerDiscovered(PeerInfo),
    /// A peer is reachable on no transport any more.
    PeerLost(PeerId),
    /// A message this node sent was acknowledged by its recipient.
    Acked {
        /// The message acknowledged.
        id: MessageId,
        /// The recipient that confirmed it.
        by: PeerId,
    },
    /// A message this node sent expired without an ACK.
    Expired(MessageId),
    /// A message this node sent, still unacknowledged, was evicted from the
    /// store-and-forward buffer for a more urgent one of this node. The mesh
    /// holds it no more and stops waiting for its ACK: offer it again with
    /// [`MultiTransportManager::send`] when there is room, or give it up.
    Evicted(MessageId),
    /// A message with an invalid signature, or a malformed or lying key
    /// request or reply, was dropped.
    Rejected {
        /// The neighbour that handed it over (and was charged).
        from: PeerId,
        /// The message's id.
        id: MessageId,
    },
    /// A peer fell below the disconnect threshold and was disconnected.
    Disconnected(PeerId),
}

/// How [`MultiTransportManager::send`] handled a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Handed to the peer over this transport.
    Sent(TransportType),
    /// No transport reached the peer: stored for later delivery (and relay copies sent).
    Queued,
}

type Inbox = Arc<Mutex<crate::inbox::Inbox>>;

struct Slot {
    adapter: Arc<dyn TransportAdapter>,
    _subscription: Subscription,
}

struct State {
    peers: BTreeMap<PeerId, BTreeMap<TransportType, PeerInfo>>,
    seen: SeenSet,
    reputation: ReputationTable,
    buffer: StoreBuffer,
    pending: PendingAcks,
    blocked: BTreeSet<PeerId>,
    to_disconnect: BTreeSet<PeerId>,
    learned: BTreeMap<PeerId, PublicKey>,
    awaiting: AwaitingKeys,
    /// Held messages whose sender's key became known, to be handled again.
    replay: VecDeque<(TransportType, PeerId, NetworkMessage)>,
    /// The neighbours each buffered message was handed to as a relay copy (at
    /// most `relay_fanout` per message; entries of messages that left the
    /// buffer are pruned on every pass).
    relayed_to: BTreeMap<MessageId, BTreeSet<PeerId>>,
    /// Message types whose protocol carries reliability end to end (see
    /// [`MultiTransportManager::carry_unacknowledged`]).
    unacked_types: BTreeSet<String>,
    /// Buffered messages of this node sent over an onion circuit: never
    /// handed to relays as copies (pruned with `relayed_to`).
    private: BTreeSet<MessageId>,
    /// Onion cell messages seen (their own short-lived set, so cell traffic
    /// never pushes message ids out of `seen`).
    cells_seen: SeenSet,
}

/// What the key discovery step left to do with a control message.
enum KeyStep {
    /// Handled (answered, learned from, refused or ignored).
    Done,
    /// Not for this node to answer: route it like any other message.
    Route {
        /// Whether its signature was verified.
        verified: bool,
    },
}

/// Keys learned from transports first, then the caller's directory.
struct Keys<'a> {
    learned: &'a BTreeMap<PeerId, PublicKey>,
    external: &'a (dyn KeyDirectory + Send + Sync),
}

impl KeyDirectory for Keys<'_> {
    fn public_key(&self, peer: &PeerId) -> Option<PublicKey> {
        self.learned
            .get(peer)
            .copied()
            .or_else(|| self.external.public_key(peer))
    }
}

/// Aggregates transports into one mesh: unified peers, routing with fallback,
/// dedup, signatures, reputation, store-and-forward and ACKs.
pub struct MultiTransportManager {
    identity: Identity,
    keys: Arc<dyn KeyDirectory + Send + Sync>,
    config: MeshConfig,
    transports: Mutex<BTreeMap<TransportType, Slot>>,
    inbox: Inbox,
    state: Mutex<State>,
    listeners: Listeners<MeshEvent>,
    onion: Mutex<OnionRouter>,
}

impl fmt::Debug for MultiTransportManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiTransportManager")
            .field("peer_id", &self.identity.peer_id())
            .field("transports", &self.active_transports())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MultiTransportManager {
    /// A manager signing as `identity`, verifying senders with keys from `keys`
    /// (typically filled by handshakes), with an empty buffer.
    pub fn new(
        identity: Identity,
        keys: Arc<dyn KeyDirectory + Send + Sync>,
        config: MeshConfig,
    ) -> Self {
        Self::with_buffer(identity, keys, config, StoreBuffer::new(config.buffer))
    }

    /// Like [`new`](Self::new), resuming with a buffer loaded by [`StoreBuffer::load`].
    pub fn with_buffer(
        identity: Identity,
        keys: Arc<dyn KeyDirectory + Send + Sync>,
        config: MeshConfig,
        buffer: StoreBuffer,
    ) -> Self {
        Self::with_state(identity, keys, config, buffer, PendingAcks::new())
    }

    /// Like [`new`](Self::new), resuming with a buffer loaded by
    /// [`StoreBuffer::load`] and the pending ACKs loaded by [`PendingAcks::load`].
    pub fn with_state(
        identity: Identity,
        keys: Arc<dyn KeyDirectory + Send + Sync>,
        config: MeshConfig,
        buffer: StoreBuffer,
        pending: PendingAcks,
    ) -> Self {
        let inbox_capacity = config.inbox_capacity;
        MultiTransportManager {
            identity: identity.clone(),
            keys,
            config,
            transports: Mutex::new(BTreeMap::new()),
            inbox: Arc::new(Mutex::new(crate::inbox::Inbox::new(inbox_capacity))),
            state: Mutex::new(State {
                peers: BTreeMap::new(),
                seen: SeenSet::new(config.dedup_capacity, config.dedup_max_age_ms),
                reputation: ReputationTable::new(),
                buffer,
                pending,
                blocked: BTreeSet::new(),
                to_disconnect: BTreeSet::new(),
                learned: BTreeMap::new(),
                awaiting: AwaitingKeys::new(config.key_discovery),
                replay: VecDeque::new(),
                relayed_to: BTreeMap::new(),
                unacked_types: BTreeSet::new(),
                private: BTreeSet::new(),
                cells_seen: private_send::cell_seen_set(),
            }),
            listeners: Listeners::new(),
            onion: Mutex::new(OnionRouter::new(
                identity.clone(),
                config.onion,
                private_send::onion_seed(&identity),
            )),
        }
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// Carries messages of `message_type` without the mesh's delivery
    /// confirmation, for protocols that carry reliability end to end (their
    /// own requests, deadlines and re-requests, as the blob protocol's):
    /// this node does not acknowledge such messages it receives, and does
    /// not wait for an ACK of those it sends, so it keeps no retransmission
    /// copy of them once a transport took them. Everything else still
    /// applies: signatures, expiry, deduplication, and store-and-forward
    /// when the recipient is not reachable. A sender that still waits for
    /// ACKs of this type (an older node) resends its message when this node
    /// is next discovered, until the message's TTL; the copy is dropped
    /// here as a duplicate.
    pub fn carry_unacknowledged(&self, message_type: &str) {
        lock(&self.state)
            .unacked_types
            .insert(message_type.to_owned());
    }

    /// Remembers `key` so messages signed by its peer verify even when they
    /// arrive through relays; false when [`MAX_LEARNED_KEYS`] are already held.
    /// Messages held while waiting for this key are handled at the next
    /// [`process`](Self::process).
    /// Transports that authenticated a peer announce its key under
    /// [`PeerInfo::PUBLIC_KEY`] and the manager learns it by itself.
    pub fn learn_key(&self, key: PublicKey) -> bool {
        learn_locked(&mut lock(&self.state), key)
    }

    /// The public keys learned so far (for persisting across restarts).
    pub fn learned_keys(&self) -> Vec<PublicKey> {
        lock(&self.state).learned.values().copied().collect()
    }

    /// The public key of `peer`: learned, or from the directory given at construction.
    pub fn public_key(&self, peer: &PeerId) -> Option<PublicKey> {
        let st = lock(&self.state);
        Keys {
            learned: &st.learned,
            external: &*self.keys,
        }
        .public_key(peer)
    }

    /// Looks up `peer`'s key for this node's own use (to seal to a peer it has
    /// never met): the key when known; otherwise asks for it through key
    /// discovery (a request addressed to `peer`, handed to it when reachable,
    /// else to trusted neighbours; any node that knows the key answers, and the
    /// reply is checked against the peer id) and returns `None`. The request is
    /// repeated by [`process`](Self::process) within the key discovery rate
    /// limits for `hold_ms`; a reply makes [`public_key`](Self::public_key)
    /// return the key.
    pub async fn discover_key(&self, peer: PeerId, now_ms: u64) -> Option<PublicKey> {
        if let Some(key) = self.public_key(&peer) {
            return Some(key);
        }
        if peer == self.identity.peer_id() {
            return Some(*self.identity.public_key());
        }
        let ask = lock(&self.state).awaiting.want(peer, now_ms);
        if ask {
            self.request_key(peer, peer, now_ms).await;
        }
        None
    }

    /// Adds (or replaces) the transport of its type and subscribes to its
    /// events; peers it already knows are queued as discoveries.
    pub fn add_transport(&self, adapter: Arc<dyn TransportAdapter>) {
        let ty = adapter.transport_type();
        let inbox = self.inbox.clone();
        let push = move |ev: TransportEvent| {
            let dropped = {
                let mut q = lock(&inbox);
                let before = q.dropped();
                q.push(ty, ev);
                q.dropped() - before
            };
            if dropped > 0 {
                tracing::warn!(transport = %ty, "mesh inbox full; an event dropped");
            }
        };
        for p in adapter.peers() {
            push(TransportEvent::PeerDiscovered(p));
        }
        let listener: Listener<TransportEvent> = Arc::new(move |ev| push(ev.clone()));
        let sub = adapter.subscribe(listener);
        lock(&self.transports).insert(
            ty,
            Slot {
                adapter,
                _subscription: sub,
            },
        );
    }

    /// Removes the transport of type `ty` (unsubscribing); peers reachable only
    /// through it are lost.
    pub fn remove_transport(&self, ty: TransportType) {
        lock(&self.transports).remove(&ty);
        let lost: Vec<PeerId> = {
            let mut st = lock(&self.state);
            let mut lost = Vec::new();
            st.peers.retain(|id, per| {
                per.remove(&ty);
                if per.is_empty() {
                    lost.push(*id);
                }
                !per.is_empty()
            });
            lost
        };
        for p in lost {
            self.listeners.emit(&MeshEvent::PeerLost(p));
        }
    }

    /// The transports held, in [`TransportType`] order.
    pub fn active_transports(&self) -> Vec<TransportType> {
        lock(&self.transports).keys().copied().collect()
    }

    /// Every reachable peer, one entry per peer id, its per-transport infos
    /// merged (transports united, latest `last_seen_ms`, first display name,
    /// metadata of later transports overriding earlier ones) and its local reputation.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let st = lock(&self.state);
        st.peers
            .iter()
            .filter_map(|(id, per)| merge(*id, per, st.reputation.score(id)))
            .collect()
    }

    /// The transports `peer` is reachable on.
    pub fn peer_transports(&self, peer: &PeerId) -> Vec<TransportType> {
        lock(&self.state)
            .peers
            .get(peer)
            .map(|per| per.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The topology of seed 7.2 for the peers reachable now (see
    /// [`topology::choose`](crate::topology::choose)): a peer is a super-peer
    /// when any of its transports announced metadata [`SUPER_PEER_KEY`] =
    /// `Bool(true)`. Recomputing after the centre is lost gives the mesh fallback.
    pub fn topology(&self) -> Topology {
        let st = lock(&self.state);
        let views: Vec<PeerView> = st
            .peers
            .iter()
            .map(|(id, per)| PeerView {
                peer: *id,
                reputation: st.reputation.score(id),
                super_peer: per
                    .values()
                    .any(|i| i.metadata.get(SUPER_PEER_KEY) == Some(&Value::Bool(true))),
            })
            .collect();
        choose(&views)
    }

    /// Whether `peer` is an established neighbour: it sent valid messages
    /// and stands trusted ([`ReputationTable::established`]); a fresh
    /// identity is not.
    pub fn is_established(&self, peer: &PeerId) -> bool {
        lock(&self.state).reputation.established(peer)
    }

    /// The local reputation of `peer`.
    pub fn reputation(&self, peer: &PeerId) -> f64 {
        lock(&self.state).reputation.score(peer)
    }

    /// Records an observation about `peer` (e.g. from replication: relays,
    /// storage); a peer falling below 0.1 is disconnected at the next [`process`](Self::process).
    pub fn observe(&self, peer: PeerId, o: Observation) {
        observe_locked(&mut lock(&self.state), peer, o);
    }

    /// Messages in the store-and-forward buffer.
    pub fn buffered(&self) -> usize {
        lock(&self.state).buffer.len()
    }

    /// The store-and-forward buffer in figures (see [`StoreBuffer::summary`]).
    pub fn buffer_summary(&self) -> crate::buffer::BufferSummary {
        lock(&self.state).buffer.summary()
    }

    /// True when the store-and-forward buffer holds the message `id` (queued,
    /// or sent and kept until its ACK).
    pub fn is_buffered(&self, id: &MessageId) -> bool {
        lock(&self.state).buffer.contains(id)
    }

    /// The ids of every message in the store-and-forward buffer.
    pub fn buffered_ids(&self) -> BTreeSet<MessageId> {
        lock(&self.state)
            .buffer
            .entries()
            .iter()
            .map(|e| e.message.id)
            .collect()
    }

    /// True while a message this node sent waits for its ACK.
    pub fn is_pending(&self, id: &MessageId) -> bool {
        lock(&self.state).pending.is_pending(id)
    }

    /// Messages held until their sender's key is known (see [`crate::keys`]).
    pub fn awaiting_key(&self) -> usize {
        lock(&self.state).awaiting.len()
    }

    /// Transport events dropped because the inbox was full.
    pub fn dropped_events(&self) -> u64 {
        lock(&self.inbox).dropped()
    }

    /// Persists the store-and-forward buffer (atomic write).
    pub fn save_buffer(&self, path: &std::path::Path) -> Result<(), MeshError> {
        lock(&self.state).buffer.save(path)
    }

    /// Persists the store-and-forward buffer unless its
    /// [generation](StoreBuffer::generation) is still `saved` (the one returned by
    /// the last successful save), and returns the generation now on disk. The check
    /// and the write happen under one lock, so no change can slip between them.
    pub fn save_buffer_if_changed(
        &self,
        path: &std::path::Path,
        saved: Option<u64>,
    ) -> Result<u64, MeshError> {
        let st = lock(&self.state);
        let generation = st.buffer.generation();
        if saved != Some(generation) {
            st.buffer.save(path)?;
        }
        Ok(generation)
    }

    /// The store-and-forward buffer as bytes for [`StoreBuffer::from_bytes`]
    /// (for owners that persist it themselves).
    pub fn buffer_bytes(&self) -> Vec<u8> {
        lock(&self.state).buffer.to_bytes()
    }
    /// The messages waiting for an ACK as bytes for [`PendingAcks::from_bytes`].
    pub fn pending_bytes(&self) -> Vec<u8> {
        lock(&self.state).pending.to_bytes()
    }
    /// Persists the set of messages waiting for an ACK (atomic write).
    pub fn save_pending(&self, path: &std::path::Path) -> Result<(), MeshError> {
        lock(&self.state).pending.save(path)
    }

    /// Registers for [`MeshEvent`]s until the subscription is dropped.
    pub fn subscribe(&self, listener: Listener<MeshEvent>) -> Subscription {
        self.listeners.subscribe(listener)
    }

    /// A signed message from this node, stamped `now_ms`, with the default
    /// TTL and hop limit; `random` supplies the id's 122 random bits.
    pub fn new_message(
        &self,
        message_type: &str,
        payload: Vec<u8>,
        recipient: Option<PeerId>,
        now_ms: u64,
        random: [u8; 16],
    ) -> Result<NetworkMessage, MeshError> {
        self.signed(
            message_type,
            payload,
            recipient,
            now_ms,
            random,
            NetworkMessage::DEFAULT_TTL_SECS,
        )
    }

    fn signed(
        &self,
        message_type: &str,
        payload: Vec<u8>,
        recipient: Option<PeerId>,
        now_ms: u64,
        random: [u8; 16],
        ttl_secs: u32,
    ) -> Result<NetworkMessage, MeshError> {
        let mut m = NetworkMessage {
            id: MessageId::new_v4(random),
            message_type: message_type.to_owned(),
            payload,
            sender: self.identity.peer_id(),
            recipient,
            timestamp_ms: now_ms,
            ttl_secs,
            hop_count: 0,
            max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
            signature: ecomesh_types::Signature::UNSIGNED,
        };
        self.identity.sign_message(&mut m)?;
        Ok(m)
    }

    /// Sends `message` (whose recipient must be `peer`) over the transports of
    /// the routing policy in order, falling back to the next on error; when all
    /// fail it is stored for later delivery and relay copies go to up to
    /// `relay_fanout` trusted connected peers. A message this node originated
    /// waits for an ACK until its TTL, and is kept in the buffer meanwhile when
    /// there is room (see the module docs for what happens when there is not).
    ///
    /// When the recipient is not reachable and the buffer has no room for the
    /// message, it fails with [`MeshError::BufferFull`]: nothing is stored, no
    /// ACK is waited for, and the message may be offered again later. Sending
    /// a message again that the buffer already holds is harmless.
    pub async fn send(
        &self,
        peer: PeerId,
        message: NetworkMessage,
        priority: Priority,
        now_ms: u64,
    ) -> Result<SendOutcome, MeshError> {
        if message.recipient != Some(peer) {
            return Err(MeshError::RecipientMismatch {
                peer,
                recipient: message.recipient,
            });
        }
        if message.is_expired(now_ms) {
            return Err(MeshError::Expired(message.id));
        }
        {
            let mut st = lock(&self.state);
            st.seen.insert(message.id, now_ms);
            if message.sender == self.identity.peer_id()
                && message.message_type != ACK_TYPE
                && !is_key_message(&message.message_type)
                && !st.unacked_types.contains(&message.message_type)
            {
                st.pending.track(&message);
            }
        }
        let id = message.id;
        let result = self.forward(peer, message, priority, now_ms, &[]).await;
        if result.is_err() {
            // Refused: held nowhere, so nothing is waited for.
            lock(&self.state).pending.forget(&id);
        }
        result
    }

    /// Sends `message` on every transport's broadcast; returns how many
    /// transports accepted it. Receivers reached on several transports deliver it once.
    pub async fn broadcast(&self, message: NetworkMessage, now_ms: u64) -> usize {
        lock(&self.state).seen.insert(message.id, now_ms);
        let mut ok = 0;
        for (ty, a) in self.adapters() {
            match a.broadcast(message.clone()).await {
                Ok(()) => ok += 1,
                Err(e) => tracing::debug!(transport = %ty, error = %e, "broadcast failed"),
            }
        }
        ok
    }

    /// Handles every queued transport event (and held messages whose sender's
    /// key became known), then expires buffered and unacknowledged messages and
    /// disconnects peers below the threshold. Key requests that are due again
    /// go out first. Returns the number of events and messages handled.
    pub async fn process(&self, now_ms: u64) -> usize {
        for (wanted, via) in self.key_discovery_tick(now_ms) {
            self.request_key(wanted, via, now_ms).await;
        }
        let mut handled = 0;
        loop {
            let replayed = lock(&self.state).replay.pop_front();
            if let Some((ty, from, message)) = replayed {
                handled += 1;
                self.on_message(ty, from, message, now_ms, false).await;
                continue;
            }
            let next = lock(&self.inbox).pop();
            let Some((ty, ev)) = next else { break };
            handled += 1;
            match ev {
                TransportEvent::Message { from, message } => {
                    self.on_message(ty, from, message, now_ms, false).await;
                }
                TransportEvent::LinkMessage { from, message } => {
                    self.on_message(ty, from, message, now_ms, true).await;
                }
                TransportEvent::PeerDiscovered(info) => self.on_discovered(ty, info, now_ms).await,
                TransportEvent::PeerLost(p) => self.on_lost(ty, p),
                TransportEvent::Misbehaved { peer, reason } => {
                    tracing::info!(transport = %ty, %peer, %reason, "neighbour broke the transport protocol; charged");
                    self.observe(peer, Observation::Integrity(false));
                }
                _ => {}
            }
        }
        let (expired, disconnect) = {
            let mut st = lock(&self.state);
            // The hold (seed 003's 72 h) is for copies held for others: this
            // node's own messages wait for their ACK until their TTL.
            let dropped = {
                let State {
                    buffer, pending, ..
                } = &mut *st;
                buffer.expire_keeping(now_ms, &|id| pending.is_pending(id))
            };
            if !dropped.is_empty() {
                tracing::debug!(count = dropped.len(), "buffered messages expired");
            }
            st.seen.prune(now_ms);
            st.cells_seen.prune(now_ms);
            let State {
                relayed_to,
                buffer,
                private,
                ..
            } = &mut *st;
            relayed_to.retain(|id, _| buffer.contains(id));
            private.retain(|id| buffer.contains(id));
            let expired = st.pending.expire(now_ms);
            let established = st
                .peers
                .keys()
                .filter(|p| st.reputation.established(p))
                .copied()
                .collect();
            lock(&self.inbox).set_established(established);
            let disconnect: Vec<PeerId> =
                std::mem::take(&mut st.to_disconnect).into_iter().collect();
            for p in &disconnect {
                st.blocked.insert(*p);
                st.peers.remove(p);
            }
            (expired, disconnect)
        };
        for id in expired {
            self.listeners.emit(&MeshEvent::Expired(id));
        }
        self.onion_process(now_ms).await;
        for p in disconnect {
            for (ty, a) in self.adapters() {
                if let Err(e) = a.disconnect_from_peer(p).await {
                    tracing::debug!(transport = %ty, peer = %p, error = %e, "disconnect failed");
                }
            }
            tracing::info!(peer = %p, "reputation too low (below 0.1, or integrity gate): disconnected");
            self.listeners.emit(&MeshEvent::Disconnected(p));
        }
        handled
    }

    fn adapters(&self) -> Vec<(TransportType, Arc<dyn TransportAdapter>)> {
        lock(&self.transports)
            .iter()
            .map(|(t, s)| (*t, s.adapter.clone()))
            .collect()
    }

    async fn deliver_direct(
        &self,
        peer: PeerId,
        message: &NetworkMessage,
        priority: Priority,
    ) -> Option<TransportType> {
        let reachable = self.peer_transports(&peer);
        if reachable.is_empty() {
            return None;
        }
        let adapters: Vec<_> = self
            .adapters()
            .into_iter()
            .filter(|(t, _)| reachable.contains(t))
            .collect();
        let caps: Vec<_> = adapters
            .iter()
            .map(|(t, a)| (*t, a.capabilities()))
            .collect();
        let size = encoded_message_len(message);
        for ty in route_with_caps(size, priority, &caps) {
            let Some((_, a)) = adapters.iter().find(|(t, _)| *t == ty) else {
                continue;
            };
            match a.send(peer, message.clone()).await {
                Ok(()) => return Some(ty),
                Err(e) => {
                    tracing::debug!(transport = %ty, peer = %peer, error = %e, "send failed; next transport");
                }
            }
        }
        None
    }

    async fn forward(
        &self,
        peer: PeerId,
        message: NetworkMessage,
        priority: Priority,
        now_ms: u64,
        exclude: &[PeerId],
    ) -> Result<SendOutcome, MeshError> {
        let known = !self.peer_transports(&peer).is_empty();
        if let Some(ty) = self.deliver_direct(peer, &message, priority).await {
            let mut evicted = Vec::new();
            let mut st = lock(&self.state);
            observe_locked(&mut st, peer, Observation::Available(true));
            if message.sender == self.identity.peer_id() && st.pending.is_pending(&message.id) {
                // A link can die with the message still in flight: keep it until the
                // ACK arrives, to be sent again when the peer is next discovered.
                match buffer_locked(&mut st, message.clone(), priority, now_ms) {
                    Ok(own) => evicted = own,
                    Err(e) => tracing::debug!(
                        error = %e,
                        "sent message not kept for retransmission; its owner offers it again if needed"
                    ),
                }
            }
            drop(st);
            self.report_evicted(evicted);
            return Ok(SendOutcome::Sent(ty));
        }
        let (relays, evicted) = {
            let mut st = lock(&self.state);
            if known {
                observe_locked(&mut st, peer, Observation::Available(false));
            }
            let evicted = buffer_locked(&mut st, message.clone(), priority, now_ms)?;
            let handed = st.relayed_to.get(&message.id).cloned().unwrap_or_default();
            let room = self.config.relay_fanout.saturating_sub(handed.len());
            let relays = relay_candidates(&st, room, |p| {
                *p != peer && *p != message.sender && !exclude.contains(p) && !handed.contains(p)
            });
            (relays, evicted)
        };
        self.report_evicted(evicted);
        // The relay that forwards the copy onward increments its hop count.
        if !message.hops_exhausted() {
            for r in relays {
                if self.deliver_direct(r, &message, priority).await.is_some() {
                    lock(&self.state)
                        .relayed_to
                        .entry(message.id)
                        .or_default()
                        .insert(r);
                }
            }
        }
        Ok(SendOutcome::Queued)
    }

    /// Hands `peer`, a trusted neighbour just discovered, a relay copy of each
    /// buffered message it could carry onward: addressed to someone else, not
    /// from `peer`, hops left, and handed to fewer than `relay_fanout`
    /// neighbours so far (store, carry and forward: a message buffered while no
    /// relay was around leaves with the first one that comes).
    async fn offer_relay_copies(&self, peer: PeerId) {
        let fanout = self.config.relay_fanout;
        let copies: Vec<(NetworkMessage, Priority)> = {
            let st = lock(&self.state);
            if st.reputation.standing(&peer) != Standing::Trusted {
                return;
            }
            st.buffer
                .entries()
                .iter()
                .filter(|e| {
                    let m = &e.message;
                    let handed = st.relayed_to.get(&m.id);
                    m.recipient.is_some_and(|r| r != peer)
                        && m.sender != peer
                        && !m.hops_exhausted()
                        && !st.private.contains(&m.id)
                        && handed.is_none_or(|h| h.len() < fanout && !h.contains(&peer))
                })
                .map(|e| (e.message.clone(), e.priority))
                .collect()
        };
        for (message, priority) in copies {
            if self
                .deliver_direct(peer, &message, priority)
                .await
                .is_some()
            {
                tracing::debug!(id = %message.id, relay = %peer, "buffered message handed to a new relay");
                lock(&self.state)
                    .relayed_to
                    .entry(message.id)
                    .or_default()
                    .insert(peer);
            }
        }
    }

    /// Tells subscribers about messages of this node evicted from the buffer.
    fn report_evicted(&self, evicted: Vec<MessageId>) {
        for id in evicted {
            self.listeners.emit(&MeshEvent::Evicted(id));
        }
    }

    /// Handles a message from neighbour `from`. `link`: the transport says the link
    /// authenticated it instead of a signature (see
    /// [`TransportEvent::LinkMessage`]); it is accepted only from its sender, unrelayed,
    /// unsigned and addressed to this node, and never relayed.
    async fn on_message(
        &self,
        ty: TransportType,
        from: PeerId,
        message: NetworkMessage,
        now_ms: u64,
        link: bool,
    ) {
        let me = self.identity.peer_id();
        if !link && self.exact_replay(from, &message) {
            // Verified and recorded before: no second verification (a flood of
            // replays costs a lookup each). Acknowledged again like any
            // duplicate: its sender may be retransmitting for a lost ACK.
            let control = message.message_type == ACK_TYPE || is_key_message(&message.message_type);
            let unacked = lock(&self.state)
                .unacked_types
                .contains(&message.message_type);
            if message.recipient == Some(me) && !control && !unacked {
                self.acknowledge(&message, now_ms).await;
            }
            return;
        }
        let verified = {
            let mut st = lock(&self.state);
            // A blocked neighbour's messages are dropped before the cost of
            // verifying them (it floods between reconnect and disconnect).
            if st.blocked.contains(&from) {
                return;
            }
            let verdict = if link {
                let sound = message.sender == from
                    && message.hop_count == 0
                    && message.recipient == Some(me)
                    && message.signature == ecomesh_types::Signature::UNSIGNED;
                if sound {
                    Ok(())
                } else {
                    Err(IdentityError::BadSignature)
                }
            } else {
                verify_message_with(
                    &message,
                    &Keys {
                        learned: &st.learned,
                        external: &*self.keys,
                    },
                )
                .map(drop)
            };
            match verdict {
                // Credited below, once dedup says it is new: a replayed valid
                // message must not wash out a peer's invalid ones.
                Ok(_) => true,
                Err(IdentityError::UnknownPeer(_)) => false,
                Err(e) => {
                    tracing::warn!(from = %from, id = %message.id, error = %e, "invalid signature; dropped");
                    observe_locked(&mut st, from, Observation::Integrity(false));
                    drop(st);
                    self.listeners.emit(&MeshEvent::Rejected {
                        from,
                        id: message.id,
                    });
                    return;
                }
            }
        };
        // A message straight from its sender (no relay held it) is as fresh as
        // the link: judging its TTL against this node's clock would drop every
        // message of a peer whose clock runs behind by more than the TTL. Its
        // sender's buffer expires it by the sender's own clock. Relayed copies
        // are judged here, by this node's clock.
        let direct = message.hop_count == 0 && message.sender == from;
        if !direct && message.is_expired(now_ms) {
            return;
        }
        let verified = if is_key_message(&message.message_type) {
            match self.on_key_message(from, &message, verified, now_ms).await {
                KeyStep::Done => return,
                KeyStep::Route { verified } => verified,
            }
        } else {
            verified
        };
        if !verified {
            self.hold(ty, from, message, now_ms).await;
            return;
        }
        if message.message_type == ONION_CELL_TYPE {
            if lock(&self.state).cells_seen.insert(message.id, now_ms) {
                self.on_onion_cell(from, &message, now_ms).await;
            }
            return;
        }
        let first_seen = {
            let mut st = lock(&self.state);
            let first = st
                .seen
                .insert_tagged(message.id, signature_tag(&message), now_ms);
            // A key message is credited once its payload checks out too; an
            // onion cell only ever costs (the router charges bad ones); a
            // duplicate earns nothing (replays would wash out invalid data).
            if first && !is_key_message(&message.message_type) {
                observe_locked(&mut st, from, Observation::Integrity(true));
            }
            first
        };
        let control = message.message_type == ACK_TYPE || is_key_message(&message.message_type);
        let unacked = lock(&self.state)
            .unacked_types
            .contains(&message.message_type);
        if !first_seen {
            // The sender retransmits until it hears an ACK, so the first one was
            // lost: acknowledge again (the ACK's id is derived, so it dedups too).
            if message.recipient == Some(me) && !control && !unacked {
                self.acknowledge(&message, now_ms).await;
            }
            return;
        }
        match message.recipient {
            None if is_key_message(&message.message_type) => {}
            None => self.listeners.emit(&MeshEvent::Message {
                from,
                transport: ty,
                message,
            }),
            Some(r) if r == me => {
                if let Some(acked) = acked_id(&message) {
                    let confirmed = {
                        let mut st = lock(&self.state);
                        let ok = st.pending.confirm(&acked, &message.sender);
                        if ok {
                            st.buffer.remove(&acked);
                        }
                        ok
                    };
                    if confirmed {
                        self.listeners.emit(&MeshEvent::Acked {
                            id: acked,
                            by: message.sender,
                        });
                    }
                    return;
                }
                if control {
                    return;
                }
                if unacked {
                    // Nothing to acknowledge: no copy of it kept.
                    self.listeners.emit(&MeshEvent::Message {
                        from,
                        transport: ty,
                        message,
                    });
                    return;
                }
                self.listeners.emit(&MeshEvent::Message {
                    from,
                    transport: ty,
                    message: message.clone(),
                });
                self.acknowledge(&message, now_ms).await;
            }
            Some(r) => {
                if message.hops_exhausted() {
                    tracing::debug!(id = %message.id, "hop limit reached; not relayed");
                    return;
                }
                let mut copy = message;
                copy.hop_count += 1;
                let priority = if control {
                    Priority::High
                } else {
                    Priority::Normal
                };
                match self.forward(r, copy, priority, now_ms, &[from]).await {
                    Ok(_) => self.observe(from, Observation::Available(true)),
                    Err(e) => tracing::debug!(error = %e, "relay not stored"),
                }
            }
        }
    }

    /// Whether `message` is an exact copy (same id and signature) of one
    /// verified and recorded in the seen set, from a neighbour not blocked.
    fn exact_replay(&self, from: PeerId, message: &NetworkMessage) -> bool {
        let st = lock(&self.state);
        !st.blocked.contains(&from) && st.seen.tag(&message.id) == Some(signature_tag(message))
    }

    /// Holds a message whose sender's key is unknown and asks for the key when
    /// the rate limits allow it.
    async fn hold(&self, ty: TransportType, from: PeerId, message: NetworkMessage, now_ms: u64) {
        let sender = message.sender;
        if sender == self.identity.peer_id() {
            tracing::debug!(id = %message.id, "own message without own key; dropped");
            return;
        }
        let outcome = {
            let mut st = lock(&self.state);
            if st.learned.contains_key(&sender) {
                // Learned meanwhile (e.g. by `learn_key` from another thread).
                st.replay.push_back((ty, from, message));
                return;
            }
            st.awaiting.hold(from, ty, message, now_ms)
        };
        match outcome {
            HoldOutcome::Held { ask: true } => self.request_key(sender, from, now_ms).await,
            HoldOutcome::Held { ask: false } | HoldOutcome::Duplicate => {
                tracing::debug!(%sender, "message held until its sender's key is known");
            }
            HoldOutcome::Refused => {
                tracing::debug!(%sender, "no key for the sender; message dropped");
            }
        }
    }

    /// Handles a key request or reply; `verified` says whether its signature
    /// was checked with a known key.
    async fn on_key_message(
        &self,
        from: PeerId,
        message: &NetworkMessage,
        verified: bool,
        now_ms: u64,
    ) -> KeyStep {
        let me = self.identity.peer_id();
        let for_me = message.recipient.is_none() || message.recipient == Some(me);
        if message.message_type == KEY_REQUEST_TYPE {
            let wanted = match decode_key_request(&message.payload) {
                Ok(w) => w,
                Err(e) => {
                    self.refuse(from, message, &e);
                    return KeyStep::Done;
                }
            };
            if verified {
                self.observe(from, Observation::Integrity(true));
            }
            let key = if wanted == me {
                Some(*self.identity.public_key())
            } else {
                self.public_key(&wanted)
            };
            let requester = message.sender;
            let Some(key) = key else {
                return if for_me {
                    KeyStep::Done
                } else {
                    KeyStep::Route { verified }
                };
            };
            if requester == me {
                return KeyStep::Done;
            }
            {
                let mut st = lock(&self.state);
                if verified && !st.seen.insert(message.id, now_ms) {
                    return KeyStep::Done;
                }
                if !st.awaiting.may_reply(requester, wanted, now_ms) {
                    tracing::debug!(%requester, %wanted, "key reply suppressed by the rate limit");
                    return KeyStep::Done;
                }
            }
            let ttl = self.control_ttl_secs();
            match self.control_message(
                KEY_REPLY_TYPE,
                key_reply_payload(&key),
                requester,
                &message.id.0,
                now_ms,
                ttl,
            ) {
                Ok(reply) => self.send_control(requester, from, reply, now_ms).await,
                Err(e) => tracing::warn!(error = %e, "could not sign a key reply"),
            }
            return KeyStep::Done;
        }
        let (wanted, key) = match decode_key_reply(&message.payload) {
            Ok(x) => x,
            Err(e) => {
                self.refuse(from, message, &e);
                return KeyStep::Done;
            }
        };
        let mut verified = verified;
        if !verified && message.sender == wanted {
            // The responder is the key's owner: the key in the payload verifies it.
            if let Err(e) = verify_message(message, &key) {
                self.refuse(from, message, &MeshError::Identity(e));
                return KeyStep::Done;
            }
            verified = true;
        }
        if verified {
            self.observe(from, Observation::Integrity(true));
        }
        {
            let mut st = lock(&self.state);
            if st.awaiting.is_awaited(&wanted) && !st.learned.contains_key(&wanted) {
                if learn_locked(&mut st, key) {
                    tracing::debug!(peer = %wanted, "key learned by discovery");
                } else {
                    tracing::warn!(peer = %wanted, "discovered key not kept: the key table is full");
                }
            }
        }
        if for_me {
            KeyStep::Done
        } else {
            KeyStep::Route { verified }
        }
    }

    /// Drops a malformed or lying control message, charging the neighbour that handed it over.
    fn refuse(&self, from: PeerId, message: &NetworkMessage, error: &MeshError) {
        tracing::warn!(from = %from, id = %message.id, error = %error, "key discovery message refused");
        self.observe(from, Observation::Integrity(false));
        self.listeners.emit(&MeshEvent::Rejected {
            from,
            id: message.id,
        });
    }

    /// The TTL of key requests and replies: as long as messages are held.
    fn control_ttl_secs(&self) -> u32 {
        let secs = self.config.key_discovery.hold_ms.div_ceil(1000);
        u32::try_from(secs).unwrap_or(u32::MAX).max(1)
    }

    /// A signed control message whose id is derived from `seed` by this node's
    /// key (deterministic for the same seed, unpredictable to others).
    fn control_message(
        &self,
        message_type: &str,
        payload: Vec<u8>,
        recipient: PeerId,
        seed: &[u8],
        now_ms: u64,
        ttl_secs: u32,
    ) -> Result<NetworkMessage, MeshError> {
        let mut framed = Vec::with_capacity(message_type.len() + 1 + seed.len());
        framed.extend_from_slice(message_type.as_bytes());
        framed.push(0);
        framed.extend_from_slice(seed);
        let sig = self.identity.sign_with_domain(CONTROL_ID_DOMAIN, &framed)?;
        let mut random = [0_u8; 16];
        random.copy_from_slice(&sig.0[..16]);
        self.signed(
            message_type,
            payload,
            Some(recipient),
            now_ms,
            random,
            ttl_secs,
        )
    }

    /// Asks for `wanted`'s key: addressed to `wanted`, handed to it directly
    /// when reachable, else to `via` (the neighbour that brought its message).
    async fn request_key(&self, wanted: PeerId, via: PeerId, now_ms: u64) {
        let mut seed = wanted.as_bytes().to_vec();
        seed.extend_from_slice(&now_ms.to_be_bytes());
        let ttl = self.control_ttl_secs();
        match self.control_message(
            KEY_REQUEST_TYPE,
            key_request_payload(&wanted),
            wanted,
            &seed,
            now_ms,
            ttl,
        ) {
            Ok(req) => {
                tracing::debug!(peer = %wanted, via = %via, "asking for a key");
                self.send_control(wanted, via, req, now_ms).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not sign a key request"),
        }
    }

    /// Sends a control message to `target` directly if reachable, else to
    /// `via`, else to up to `relay_fanout` trusted neighbours; never stored here
    /// (requests are repeated while messages wait, replies answer them).
    async fn send_control(
        &self,
        target: PeerId,
        via: PeerId,
        message: NetworkMessage,
        now_ms: u64,
    ) {
        lock(&self.state).seen.insert(message.id, now_ms);
        if self
            .deliver_direct(target, &message, Priority::High)
            .await
            .is_some()
        {
            return;
        }
        if via != target
            && self
                .deliver_direct(via, &message, Priority::High)
                .await
                .is_some()
        {
            return;
        }
        let relays = relay_candidates(&lock(&self.state), self.config.relay_fanout, |p| {
            *p != target && *p != via
        });
        for r in relays {
            self.deliver_direct(r, &message, Priority::High).await;
        }
    }

    /// Expires held messages, releases those whose sender's key the directory
    /// now knows, and returns the key requests due again: (wanted, via).
    fn key_discovery_tick(&self, now_ms: u64) -> Vec<(PeerId, PeerId)> {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let dropped = st.awaiting.expire(now_ms);
        if dropped > 0 {
            tracing::debug!(count = dropped, "messages awaiting a key expired");
        }
        for s in st.awaiting.senders() {
            if self.keys.public_key(&s).is_some() {
                release_locked(st, &s);
            }
        }
        st.awaiting.due(now_ms)
    }

    async fn acknowledge(&self, message: &NetworkMessage, now_ms: u64) {
        let mut ack = ack_for(message, self.identity.peer_id(), now_ms);
        match self.identity.sign_message(&mut ack) {
            Ok(()) => {
                if let Err(e) = self.send(message.sender, ack, Priority::High, now_ms).await {
                    tracing::debug!(error = %e, "ACK not sent");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not sign ACK"),
        }
    }

    async fn on_discovered(&self, ty: TransportType, info: PeerInfo, now_ms: u64) {
        let peer = info.peer_id;
        if peer == self.identity.peer_id() {
            return;
        }
        let (first, merged, queued) = {
            let mut st = lock(&self.state);
            if st.blocked.contains(&peer) {
                st.to_disconnect.insert(peer);
                return;
            }
            if let Some(Value::Bytes(b)) = info.metadata.get(PeerInfo::PUBLIC_KEY) {
                match PublicKey::from_slice(b) {
                    Ok(k) if k.peer_id() == peer => {
                        learn_locked(&mut st, k);
                    }
                    _ => tracing::debug!(%peer, "announced public key does not match the peer id"),
                }
            }
            let per = st.peers.entry(peer).or_default();
            let first = per.is_empty();
            per.insert(ty, info);
            let per = per.clone();
            observe_locked(&mut st, peer, Observation::Available(true));
            let merged = merge(peer, &per, st.reputation.score(&peer));
            (first, merged, st.buffer.take_for(&peer))
        };
        if let (true, Some(m)) = (first, merged) {
            self.listeners.emit(&MeshEvent::PeerDiscovered(m));
        }
        for e in queued {
            let id = e.message.id;
            if let Err(err) = self.forward(peer, e.message, e.priority, now_ms, &[]).await {
                // Its place was taken meanwhile: report it if it is this node's.
                if lock(&self.state).pending.forget(&id) {
                    tracing::info!(%id, error = %err, "own buffered message lost its place; reported to its owner");
                    self.report_evicted(vec![id]);
                } else {
                    tracing::info!(%id, error = %err, "relayed buffered message dropped");
                }
            }
        }
        if first {
            self.offer_relay_copies(peer).await;
        }
    }

    fn on_lost(&self, ty: TransportType, peer: PeerId) {
        let lost = {
            let mut st = lock(&self.state);
            match st.peers.get_mut(&peer) {
                Some(per) => {
                    per.remove(&ty);
                    if per.is_empty() {
                        st.peers.remove(&peer);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if lost {
            lock(&self.onion).peer_lost(peer);
            self.listeners.emit(&MeshEvent::PeerLost(peer));
        }
    }
}

/// Stores `message` in the buffer, keeping the messages this node waits to see
/// acknowledged (see [`StoreBuffer::insert_keeping`]). Evicted relayed copies
/// are logged; evicted messages of this node stop being tracked and their ids
/// are returned, to be reported as [`MeshEvent::Evicted`].
fn buffer_locked(
    st: &mut State,
    message: NetworkMessage,
    priority: Priority,
    now_ms: u64,
) -> Result<Vec<MessageId>, MeshError> {
    let evicted = {
        let rep = &st.reputation;
        let pending = &st.pending;
        st.buffer
            .insert_keeping(message, priority, now_ms, &|p| rep.score(p), &|id| {
                pending.is_pending(id)
            })?
    };
    let mut own = Vec::new();
    for id in evicted {
        if st.pending.forget(&id) {
            tracing::info!(%id, "buffer full: own message evicted for a more urgent one; reported to its owner");
            own.push(id);
        } else {
            tracing::info!(%id, "buffer full: relayed message evicted");
        }
    }
    Ok(own)
}

fn learn_locked(st: &mut State, key: PublicKey) -> bool {
    let peer = key.peer_id();
    if st.learned.len() >= MAX_LEARNED_KEYS && !st.learned.contains_key(&peer) {
        return false;
    }
    st.learned.insert(peer, key);
    release_locked(st, &peer);
    true
}

/// Queues the messages held for `peer`'s key to be handled again.
fn release_locked(st: &mut State, peer: &PeerId) {
    for h in st.awaiting.take(peer) {
        st.replay.push_back((h.transport, h.from, h.message));
    }
}

/// Up to `fanout` trusted connected peers that `allowed` admits, best reputation first.
fn relay_candidates(st: &State, fanout: usize, allowed: impl Fn(&PeerId) -> bool) -> Vec<PeerId> {
    let mut candidates: Vec<(f64, PeerId)> = st
        .peers
        .keys()
        .filter(|p| allowed(p) && st.reputation.standing(p) == Standing::Trusted)
        .map(|p| (st.reputation.score(p), *p))
        .collect();
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    candidates
        .into_iter()
        .take(fanout)
        .map(|(_, p)| p)
        .collect()
}

/// What the seen set remembers of a message's signature: its first 8 bytes.
fn signature_tag(message: &NetworkMessage) -> u64 {
    let s = &message.signature.0;
    u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
}

fn observe_locked(st: &mut State, peer: PeerId, o: Observation) {
    if st.reputation.observe(peer, o) == Standing::Disconnect {
        st.to_disconnect.insert(peer);
    }
}

fn merge(
    peer: PeerId,
    per: &BTreeMap<TransportType, PeerInfo>,
    reputation: f64,
) -> Option<PeerInfo> {
    let mut it = per.values();
    let mut out = it.next()?.clone();
    out.peer_id = peer;
    out.reputation = reputation;
    out.transports = per.keys().copied().collect();
    for i in it {
        out.last_seen_ms = out.last_seen_ms.max(i.last_seen_ms);
        if out.display_name.is_none() {
            out.display_name.clone_from(&i.display_name);
        }
        for (k, v) in &i.metadata {
            out.metadata.insert(k.clone(), v.clone());
        }
    }
    Some(out)
}
