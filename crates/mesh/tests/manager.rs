//! The manager over transport-tests' in-memory network, on a fake clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ecomesh_identity::message::KeyDirectory;
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::ack::PendingAcks;
use ecomesh_mesh::buffer::{BufferConfig, StoreBuffer};
use ecomesh_mesh::keys::{KEY_REPLY_TYPE, KEY_REQUEST_TYPE, KeyDiscoveryConfig};
use ecomesh_mesh::reputation::Observation;
use ecomesh_mesh::topology::Topology;
use ecomesh_mesh::{MeshConfig, MeshEvent, MultiTransportManager, SUPER_PEER_KEY, SendOutcome};
use ecomesh_transport_tests::memnet::block_on;
use ecomesh_transport_tests::{LinkModel, MemNetwork, MemTransport};
use ecomesh_types::{
    NetworkMessage, PeerId, PeerInfo, Priority, Subscription, TransportAdapter, TransportEvent,
    TransportType, Value,
};

use TransportType::{Bluetooth, Wired};

const DAY_MS: u64 = 24 * 3600 * 1000;

thread_local! {
    /// The network of the running test: libtest runs every test on a thread
    /// of its own, so each test gets a fresh one. Sends are delivered before
    /// they return, and only pairs `link`ed are linked.
    static NET: MemNetwork = {
        let net = MemNetwork::immediate();
        net.record_traffic(1 << 16);
        net
    };
}

fn net() -> MemNetwork {
    NET.with(MemNetwork::clone)
}

/// Hands `message` to `to` as if it came from this node, bypassing its manager.
trait Inject {
    fn inject(&self, to: PeerId, message: NetworkMessage);
}

impl Inject for MemTransport {
    fn inject(&self, to: PeerId, message: NetworkMessage) {
        block_on(self.send(to, message)).unwrap();
    }
}

/// Every message this endpoint sent (or had injected) that its link accepted.
fn sent(t: &MemTransport) -> Vec<(PeerId, NetworkMessage)> {
    net()
        .traffic()
        .into_iter()
        .filter(|x| x.from == t.peer_id() && x.transport == t.transport_type())
        .map(|x| (x.to, x.message))
        .collect()
}

/// While `on`, what `from` sends to `to` is reported sent but never arrives
/// (a link dying with data in flight).
fn swallow(from: &Node, to: &Node, on: bool) {
    net().set_link(from.pid(), to.pid(), on.then_some(LinkModel::BLACK_HOLE));
}

fn link(a: &MemTransport, b: &MemTransport) {
    net().link(a.peer_id(), b.peer_id(), a.transport_type());
}

fn unlink(a: &MemTransport, b: PeerId) {
    net().unlink(a.peer_id(), b, a.transport_type());
}

/// The keys every node learnt from handshakes.
#[derive(Default)]
struct Directory(Mutex<BTreeMap<PeerId, PublicKey>>);

impl KeyDirectory for Directory {
    fn public_key(&self, peer: &PeerId) -> Option<PublicKey> {
        self.0.lock().unwrap().get(peer).copied()
    }
}

struct Node {
    id: Identity,
    mgr: MultiTransportManager,
    events: Arc<Mutex<Vec<MeshEvent>>>,
    _sub: Subscription,
    t: BTreeMap<TransportType, Arc<MemTransport>>,
    /// The directory the manager was given.
    dir: Arc<Directory>,
}

impl Node {
    fn new(seed: u8, dir: &Arc<Directory>, transports: &[TransportType]) -> Node {
        Self::with_buffer(seed, dir, transports, None)
    }

    fn with_buffer(
        seed: u8,
        dir: &Arc<Directory>,
        transports: &[TransportType],
        state: Option<(StoreBuffer, PendingAcks)>,
    ) -> Node {
        Self::build(seed, dir, transports, state, MeshConfig::default())
    }

    fn with_config(
        seed: u8,
        dir: &Arc<Directory>,
        transports: &[TransportType],
        config: MeshConfig,
    ) -> Node {
        Self::build(seed, dir, transports, None, config)
    }

    fn build(
        seed: u8,
        dir: &Arc<Directory>,
        transports: &[TransportType],
        state: Option<(StoreBuffer, PendingAcks)>,
        config: MeshConfig,
    ) -> Node {
        let id = Identity::from_secret_bytes(&[seed; 32]);
        dir.0.lock().unwrap().insert(id.peer_id(), *id.public_key());
        let keys: Arc<dyn KeyDirectory + Send + Sync> = dir.clone();
        let mgr = match state {
            None => MultiTransportManager::new(id.clone(), keys, config),
            Some((b, p)) => MultiTransportManager::with_state(id.clone(), keys, config, b, p),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        let sub = mgr.subscribe(Arc::new(move |ev: &MeshEvent| {
            e.lock().unwrap().push(ev.clone())
        }));
        let mut t = BTreeMap::new();
        for ty in transports {
            let f = net().join(id.peer_id(), *ty);
            mgr.add_transport(f.clone());
            block_on(f.start()).unwrap();
            t.insert(*ty, f);
        }
        Node {
            id,
            mgr,
            events,
            _sub: sub,
            t,
            dir: dir.clone(),
        }
    }

    fn pid(&self) -> PeerId {
        self.id.peer_id()
    }

    fn msg(&self, to: &Node, text: &str, now: u64, n: u8) -> NetworkMessage {
        self.mgr
            .new_message(
                "chat",
                text.as_bytes().to_vec(),
                Some(to.pid()),
                now,
                [n; 16],
            )
            .unwrap()
    }

    fn received(&self) -> Vec<NetworkMessage> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                MeshEvent::Message { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn has(&self, pred: impl Fn(&MeshEvent) -> bool) -> bool {
        self.events.lock().unwrap().iter().any(pred)
    }
}

fn pump(nodes: &[&Node], now: u64) {
    for _ in 0..100 {
        let handled: usize = nodes.iter().map(|n| block_on(n.mgr.process(now))).sum();
        if handled == 0 {
            return;
        }
    }
    panic!("events still flowing after 100 rounds");
}

fn connect(a: &Node, b: &Node, ty: TransportType) {
    link(&a.t[&ty], &b.t[&ty]);
}

/// Two nodes connected on every one of `transports`, discoveries handled.
fn pair(transports: &[TransportType]) -> (Node, Node) {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, transports);
    let b = Node::new(2, &dir, transports);
    for ty in transports {
        connect(&a, &b, *ty);
    }
    pump(&[&a, &b], 0);
    (a, b)
}

fn no_key_discovery() -> MeshConfig {
    MeshConfig {
        key_discovery: KeyDiscoveryConfig {
            max_held: 0,
            ..KeyDiscoveryConfig::default()
        },
        ..MeshConfig::default()
    }
}

fn wired_pair() -> (Node, Node) {
    pair(&[Wired])
}

#[test]
fn unified_peer_table_one_entry_per_peer() {
    let (a, b) = pair(&[Bluetooth, Wired]);
    let peers = a.mgr.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].peer_id, b.pid());
    assert_eq!(peers[0].transports, vec![Bluetooth, Wired]);
    let discovered = a
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, MeshEvent::PeerDiscovered(_)))
        .count();
    assert_eq!(discovered, 1, "one logical peer");
    unlink(&a.t[&Bluetooth], b.pid());
    pump(&[&a, &b], 0);
    assert_eq!(a.mgr.peer_transports(&b.pid()), vec![Wired]);
    assert!(!a.has(|e| matches!(e, MeshEvent::PeerLost(_))));
    unlink(&a.t[&Wired], b.pid());
    pump(&[&a, &b], 0);
    assert!(a.mgr.peers().is_empty());
    assert!(a.has(|e| *e == MeshEvent::PeerLost(b.pid())));
}

#[test]
fn fallback_to_next_transport_when_preferred_fails() {
    let (a, b) = pair(&[Bluetooth, Wired]);
    // Small normal message: Bluetooth first.
    let out = block_on(
        a.mgr
            .send(b.pid(), a.msg(&b, "hi", 0, 1), Priority::Normal, 0),
    )
    .unwrap();
    assert_eq!(out, SendOutcome::Sent(Bluetooth));
    a.t[&Bluetooth].set_failing(true);
    let out = block_on(
        a.mgr
            .send(b.pid(), a.msg(&b, "again", 0, 2), Priority::Normal, 0),
    )
    .unwrap();
    assert_eq!(out, SendOutcome::Sent(Wired));
    // Bulk prefers Wired over everything this pair shares.
    a.t[&Bluetooth].set_failing(false);
    let out = block_on(
        a.mgr
            .send(b.pid(), a.msg(&b, "bulk", 0, 3), Priority::Bulk, 0),
    )
    .unwrap();
    assert_eq!(out, SendOutcome::Sent(Wired));
    pump(&[&a, &b], 0);
    let texts: Vec<Vec<u8>> = b.received().into_iter().map(|m| m.payload).collect();
    assert_eq!(
        texts,
        vec![b"hi".to_vec(), b"again".to_vec(), b"bulk".to_vec()]
    );
}

#[test]
fn duplicate_on_two_transports_is_delivered_once() {
    let (a, b) = pair(&[Bluetooth, Wired]);
    let m = a
        .mgr
        .new_message("news", b"x".to_vec(), None, 0, [9; 16])
        .unwrap();
    assert_eq!(block_on(a.mgr.broadcast(m.clone(), 0)), 2);
    pump(&[&a, &b], 0);
    assert_eq!(b.received(), vec![m.clone()]);
    // A direct copy of the same id later is still a duplicate.
    a.t[&Wired].inject(b.pid(), m);
    pump(&[&a, &b], 0);
    assert_eq!(b.received().len(), 1);
}

#[test]
fn store_and_forward_when_peer_appears_later_then_ack() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let b = Node::new(2, &dir, &[Wired]);
    let m = a.msg(&b, "later", 0, 1);
    assert_eq!(
        block_on(a.mgr.send(b.pid(), m.clone(), Priority::Normal, 0)).unwrap(),
        SendOutcome::Queued
    );
    assert_eq!(a.mgr.buffered(), 1);
    assert!(a.mgr.is_pending(&m.id));
    connect(&a, &b, Wired);
    pump(&[&a, &b], 1_000);
    assert_eq!(b.received(), vec![m.clone()]);
    assert_eq!(a.mgr.buffered(), 0);
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: b.pid()
        }));
    assert!(!a.mgr.is_pending(&m.id));
}

#[test]
fn relay_through_a_connected_peer_and_ack_back_by_store_and_forward() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let b = Node::new(2, &dir, &[Wired]);
    let c = Node::new(3, &dir, &[Wired]);
    connect(&a, &b, Wired);
    pump(&[&a, &b, &c], 0);
    let m = a.msg(&c, "via b", 0, 1);
    assert_eq!(
        block_on(a.mgr.send(c.pid(), m.clone(), Priority::Normal, 0)).unwrap(),
        SendOutcome::Queued
    );
    pump(&[&a, &b, &c], 0);
    assert_eq!(b.mgr.buffered(), 1, "B holds a relay copy");
    assert!(
        b.received().is_empty(),
        "a relay does not deliver to itself"
    );
    // A leaves; C meets B only.
    unlink(&a.t[&Wired], b.pid());
    connect(&b, &c, Wired);
    pump(&[&a, &b, &c], 10);
    let got = c.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"via b");
    assert_eq!(got[0].hop_count, 1);
    assert_eq!(b.mgr.buffered(), 1, "B now holds C's ACK for A");
    assert!(a.mgr.is_pending(&m.id));
    // A comes back to B: the ACK arrives.
    connect(&a, &b, Wired);
    pump(&[&a, &b, &c], 20);
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: c.pid()
        }));
    assert!(!a.mgr.is_pending(&m.id));
}

/// Store, carry and forward: A is alone when it sends to C; B comes into reach
/// later and gets a relay copy then (not only messages addressed to B), meets C,
/// and C's ACK comes back the same way. A relay never gets the same copy twice.
#[test]
fn message_buffered_alone_leaves_with_the_first_relay_that_comes() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let b = Node::new(2, &dir, &[Wired]);
    let c = Node::new(3, &dir, &[Wired]);
    let m = a.msg(&c, "carried", 0, 1);
    assert_eq!(
        block_on(a.mgr.send(c.pid(), m.clone(), Priority::Normal, 0)).unwrap(),
        SendOutcome::Queued
    );
    pump(&[&a, &b, &c], 0);
    assert!(sent(&a.t[&Wired]).is_empty(), "nobody in reach");
    connect(&a, &b, Wired);
    pump(&[&a, &b, &c], 10);
    assert_eq!(b.mgr.buffered(), 1, "B took a relay copy when it came");
    assert!(b.received().is_empty());
    // B leaves and comes back: it already carries this message.
    unlink(&a.t[&Wired], b.pid());
    pump(&[&a, &b, &c], 20);
    connect(&a, &b, Wired);
    pump(&[&a, &b, &c], 30);
    let to_b = sent(&a.t[&Wired])
        .into_iter()
        .filter(|(to, x)| *to == b.pid() && x.id == m.id)
        .count();
    assert_eq!(to_b, 1, "one copy per relay");
    unlink(&a.t[&Wired], b.pid());
    connect(&b, &c, Wired);
    pump(&[&a, &b, &c], 40);
    let got = c.received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id, got[0].hop_count), (m.id, 1));
    connect(&a, &b, Wired);
    pump(&[&a, &b, &c], 50);
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: c.pid()
        }));
}

/// At most `relay_fanout` neighbours get a copy of one buffered message, however
/// many come and go.
#[test]
fn late_relay_copies_stop_at_the_fanout() {
    let dir = Arc::new(Directory::default());
    let config = MeshConfig {
        relay_fanout: 2,
        ..MeshConfig::default()
    };
    let a = Node::with_config(1, &dir, &[Wired], config);
    let c = Node::new(3, &dir, &[Wired]);
    let relays: Vec<Node> = (10..14).map(|s| Node::new(s, &dir, &[Wired])).collect();
    let m = a.msg(&c, "spray", 0, 1);
    block_on(a.mgr.send(c.pid(), m.clone(), Priority::Normal, 0)).unwrap();
    for (i, r) in relays.iter().enumerate() {
        connect(&a, r, Wired);
        pump(&[&a, r], 10 + i as u64);
    }
    let copies = sent(&a.t[&Wired])
        .into_iter()
        .filter(|(_, x)| x.id == m.id)
        .count();
    assert_eq!(copies, 2);
    assert_eq!(a.mgr.buffered(), 1, "A keeps its own until the ACK");
}

/// A transport reporting that an authenticated neighbour broke its protocol
/// (garbage frames, floods) charges that neighbour's reputation.
#[test]
fn a_neighbour_that_broke_the_transport_protocol_is_charged() {
    let (a, b) = wired_pair();
    let before = a.mgr.reputation(&b.pid());
    for _ in 0..3 {
        a.t[&Wired].emit(&TransportEvent::Misbehaved {
            peer: b.pid(),
            reason: "malformed fragment".into(),
        });
    }
    pump(&[&a, &b], 1);
    let after = a.mgr.reputation(&b.pid());
    assert!(after < before, "{before} -> {after}");
}

#[test]
fn invalid_signature_is_dropped_and_charged() {
    let (a, b) = wired_pair();
    let before = b.mgr.reputation(&a.pid());
    let mut m = a.msg(&b, "original", 0, 1);
    m.payload = b"tampered".to_vec();
    a.t[&Wired].inject(b.pid(), m.clone());
    pump(&[&a, &b], 0);
    assert!(b.received().is_empty());
    assert!(b.has(|e| *e
        == MeshEvent::Rejected {
            from: a.pid(),
            id: m.id
        }));
    assert!(b.mgr.reputation(&a.pid()) < before);
    // The id was not burnt: the genuine message still gets through.
    let good = a.msg(&b, "original", 0, 1);
    a.t[&Wired].inject(b.pid(), good.clone());
    pump(&[&a, &b], 0);
    assert_eq!(b.received(), vec![good]);
}

/// Replaying a valid message earns nothing: only its first copy is credited,
/// so a neighbour cannot wash out its invalid messages with replays. (A
/// broadcast, so no ACK goes back: a delivered ACK credits availability.)
#[test]
fn replayed_valid_messages_earn_no_integrity() {
    let (a, b) = wired_pair();
    let m = a
        .mgr
        .new_message("chat", b"once".to_vec(), None, 0, [1; 16])
        .unwrap();
    a.t[&Wired].inject(b.pid(), m.clone());
    pump(&[&a, &b], 0);
    let after_first = b.mgr.reputation(&a.pid());
    for _ in 0..50 {
        a.t[&Wired].inject(b.pid(), m.clone());
    }
    pump(&[&a, &b], 0);
    assert_eq!(b.received(), vec![m]);
    assert_eq!(b.mgr.reputation(&a.pid()), after_first);
}

/// A copy with the id and signature of a message already verified is a
/// duplicate without a second verification (a replay flood costs a lookup
/// each): never delivered again, and not charged even with its payload
/// altered; a copy under another signature is verified, and charged.
#[test]
fn exact_replays_skip_verification_and_forged_copies_do_not() {
    let (a, b) = wired_pair();
    let m = a
        .mgr
        .new_message("chat", b"once".to_vec(), None, 0, [3; 16])
        .unwrap();
    a.t[&Wired].inject(b.pid(), m.clone());
    pump(&[&a, &b], 0);
    let before = b.mgr.reputation(&a.pid());
    let mut altered = m.clone();
    altered.payload = b"altered".to_vec();
    a.t[&Wired].inject(b.pid(), altered);
    pump(&[&a, &b], 0);
    assert_eq!(b.received(), vec![m.clone()]);
    assert_eq!(b.mgr.reputation(&a.pid()), before);
    let mut forged = m.clone();
    forged.signature.0[0] ^= 1;
    a.t[&Wired].inject(b.pid(), forged);
    pump(&[&a, &b], 0);
    assert!(b.has(|e| *e
        == MeshEvent::Rejected {
            from: a.pid(),
            id: m.id
        }));
    assert!(b.mgr.reputation(&a.pid()) < before);
}

/// A neighbour whose every message has an invalid signature is disconnected
/// and kept out by the integrity gate, with nothing else against it.
#[test]
fn a_neighbour_sending_only_invalid_signatures_is_disconnected() {
    let (a, b) = wired_pair();
    for n in 0..40 {
        let mut m = a.msg(&b, "bad", 0, n);
        m.payload.push(0);
        a.t[&Wired].inject(b.pid(), m);
    }
    pump(&[&a, &b], 0);
    pump(&[&a, &b], 1);
    assert!(
        b.mgr.reputation(&a.pid()) > 0.3,
        "the weighted score alone would keep it"
    );
    assert!(b.has(|e| *e == MeshEvent::Disconnected(a.pid())));
    assert!(b.t[&Wired].peers().is_empty(), "transport link closed");
}

#[test]
fn unknown_sender_key_is_dropped_without_charge() {
    let (a, b) = wired_pair();
    let stranger = Identity::from_secret_bytes(&[77; 32]);
    let mut m = a.msg(&b, "x", 0, 1);
    m.sender = stranger.peer_id();
    stranger.sign_message(&mut m).unwrap();
    let before = b.mgr.reputation(&a.pid());
    a.t[&Wired].inject(b.pid(), m);
    pump(&[&a, &b], 0);
    assert!(b.received().is_empty());
    assert_eq!(b.mgr.reputation(&a.pid()), before);
}

#[test]
fn peer_below_threshold_is_disconnected_and_kept_out() {
    let (a, b) = wired_pair();
    let mut n = 0;
    while b.mgr.reputation(&a.pid()) >= 0.1 {
        let mut m = a.msg(&b, "bad", 0, n);
        m.payload.push(0);
        a.t[&Wired].inject(b.pid(), m);
        for o in [
            Observation::Available(false),
            Observation::Relay(false),
            Observation::Storage(false),
            Observation::Latency(10_000),
        ] {
            b.mgr.observe(a.pid(), o);
        }
        pump(&[&a, &b], 0);
        n += 1;
        assert!(n < 200);
    }
    pump(&[&a, &b], 0);
    assert!(b.has(|e| *e == MeshEvent::Disconnected(a.pid())));
    assert!(b.mgr.peers().is_empty());
    assert!(b.t[&Wired].peers().is_empty(), "transport link closed");
    // Rediscovery is refused again.
    connect(&a, &b, Wired);
    pump(&[&a, &b], 0);
    assert!(b.mgr.peers().is_empty());
    assert!(b.t[&Wired].peers().is_empty());
}

#[test]
fn unacked_message_expires_with_its_ttl() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let b = Node::new(2, &dir, &[Wired]);
    let m = a.msg(&b, "never", 0, 1);
    block_on(a.mgr.send(b.pid(), m.clone(), Priority::Normal, 0)).unwrap();
    pump(&[&a], 7 * DAY_MS - 1);
    assert_eq!(a.mgr.buffered(), 1);
    pump(&[&a], 7 * DAY_MS);
    assert_eq!(a.mgr.buffered(), 0);
    assert!(a.has(|e| *e == MeshEvent::Expired(m.id)));
    // Meeting B afterwards delivers nothing.
    connect(&a, &b, Wired);
    pump(&[&a, &b], 7 * DAY_MS + 1);
    assert!(b.received().is_empty());
}

/// A peer whose clock runs two hours behind: its messages, straight from it,
/// look expired by this node's clock (a 120 s TTL) but are delivered, and
/// its acknowledgement comes back.
#[test]
fn direct_messages_from_a_clock_far_behind_are_not_expired() {
    const TWO_HOURS: u64 = 2 * 3600 * 1000;
    let (behind, b) = wired_pair();
    let mut m = behind.msg(&b, "from the past", 0, 1);
    m.ttl_secs = 120;
    block_on(behind.mgr.send(b.pid(), m.clone(), Priority::Normal, 0)).unwrap();
    block_on(b.mgr.process(TWO_HOURS));
    assert_eq!(b.received(), vec![m.clone()]);
    block_on(behind.mgr.process(1));
    assert!(behind.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: b.pid()
        }));
    // The other way round: B (ahead) to the node behind.
    let mut back = b.msg(&behind, "from the future", TWO_HOURS, 2);
    back.ttl_secs = 120;
    block_on(
        b.mgr
            .send(behind.pid(), back.clone(), Priority::Normal, TWO_HOURS),
    )
    .unwrap();
    block_on(behind.mgr.process(2));
    assert_eq!(behind.received(), vec![back]);
}

#[test]
fn buffer_survives_a_restart() {
    let dir = Arc::new(Directory::default());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mesh-buffer.bin");
    let b = Node::new(2, &dir, &[Wired]);
    let pending_path = tmp.path().join("mesh-pending.bin");
    let m = {
        let a = Node::new(1, &dir, &[Wired]);
        let m = a.msg(&b, "persisted", 0, 1);
        block_on(a.mgr.send(b.pid(), m.clone(), Priority::High, 0)).unwrap();
        a.mgr.save_buffer(&path).unwrap();
        a.mgr.save_pending(&pending_path).unwrap();
        m
    };
    let loaded = StoreBuffer::load(&path, BufferConfig::default()).unwrap();
    let pending = PendingAcks::load(&pending_path, 1000).unwrap();
    let a = Node::with_buffer(1, &dir, &[Wired], Some((loaded, pending)));
    assert_eq!(a.mgr.buffered(), 1);
    assert!(a.mgr.is_pending(&m.id));
    connect(&a, &b, Wired);
    pump(&[&a, &b], 5);
    assert_eq!(b.received(), vec![m.clone()]);
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: b.pid()
        }));
}

#[test]
fn recipient_mismatch_and_expired_sends_are_refused() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let b = Node::new(2, &dir, &[Wired]);
    let m = a.msg(&b, "x", 0, 1);
    assert!(block_on(a.mgr.send(a.pid(), m.clone(), Priority::Normal, 0)).is_err());
    assert!(block_on(a.mgr.send(b.pid(), m, Priority::Normal, 7 * DAY_MS)).is_err());
}

#[test]
fn deprioritized_peer_gets_no_relay_copy() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let good = Node::new(2, &dir, &[Wired]);
    let poor = Node::new(3, &dir, &[Wired]);
    let absent = Node::new(4, &dir, &[Wired]);
    connect(&a, &good, Wired);
    connect(&a, &poor, Wired);
    pump(&[&a, &good, &poor], 0);
    let mut n = 0;
    while a.mgr.reputation(&poor.pid()) >= 0.3 {
        a.mgr.observe(poor.pid(), Observation::Integrity(false));
        a.mgr.observe(poor.pid(), Observation::Relay(false));
        a.mgr.observe(poor.pid(), Observation::Storage(false));
        n += 1;
        assert!(n < 1000);
    }
    assert!(a.mgr.reputation(&poor.pid()) >= 0.1);
    let m = a.msg(&absent, "x", 0, 1);
    block_on(a.mgr.send(absent.pid(), m, Priority::Normal, 0)).unwrap();
    pump(&[&a, &good, &poor], 0);
    assert_eq!(good.mgr.buffered(), 1);
    assert_eq!(poor.mgr.buffered(), 0);
    assert!(sent(&a.t[&Wired]).iter().all(|(to, _)| *to != poor.pid()));
}

#[test]
fn relayed_message_at_hop_limit_is_not_stored() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let b = Node::new(2, &dir, &[Wired]);
    let c = Node::new(3, &dir, &[Wired]);
    connect(&a, &b, Wired);
    pump(&[&a, &b], 0);
    let mut m = a.msg(&c, "far", 0, 1);
    m.hop_count = m.max_hops - 1;
    a.t[&Wired].inject(b.pid(), m.clone());
    pump(&[&a, &b], 0);
    assert_eq!(b.mgr.buffered(), 0, "one more hop would reach the limit");
    m.hop_count = m.max_hops - 2;
    m.id.0[0] ^= 1;
    a.t[&Wired].inject(b.pid(), m);
    pump(&[&a, &b], 0);
    assert_eq!(b.mgr.buffered(), 1);
}

#[test]
fn star_around_an_announced_super_peer_then_mesh_when_it_leaves() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let b = Node::new(2, &dir, &[Wired]);
    let s = Node::new(3, &dir, &[Wired]);
    connect(&a, &b, Wired);
    pump(&[&a, &b, &s], 0);
    assert_eq!(a.mgr.topology(), Topology::FullMesh);
    let mut info = PeerInfo::new(s.pid(), Wired, 0);
    info.metadata
        .insert(SUPER_PEER_KEY.to_owned(), Value::Bool(true));
    a.t[&Wired].emit(&TransportEvent::PeerDiscovered(info));
    pump(&[&a], 0);
    assert_eq!(a.mgr.topology(), Topology::Star { center: s.pid() });
    a.t[&Wired].emit(&TransportEvent::PeerLost(s.pid()));
    pump(&[&a], 0);
    assert_eq!(a.mgr.topology(), Topology::FullMesh);
}

#[test]
fn message_lost_in_flight_is_sent_again_on_rediscovery_and_delivered_once() {
    let (a, b) = wired_pair();
    swallow(&a, &b, true);
    let m = a.msg(&b, "in flight", 0, 7);
    let out = block_on(a.mgr.send(b.pid(), m.clone(), Priority::Normal, 0)).unwrap();
    assert_eq!(out, SendOutcome::Sent(Wired));
    pump(&[&a, &b], 0);
    assert!(b.received().is_empty(), "the link swallowed it");
    assert!(a.mgr.is_pending(&m.id));
    assert_eq!(a.mgr.buffered(), 1, "kept until acknowledged");
    swallow(&a, &b, false);
    unlink(&a.t[&Wired], b.pid());
    pump(&[&a, &b], 10);
    connect(&a, &b, Wired);
    pump(&[&a, &b], 20);
    assert_eq!(b.received(), vec![m.clone()]);
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: b.pid()
        }));
    assert!(!a.mgr.is_pending(&m.id));
    assert_eq!(
        a.mgr.buffered(),
        0,
        "dropped from the buffer once acknowledged"
    );
}

#[test]
fn duplicate_after_a_lost_ack_is_acknowledged_again_not_redelivered() {
    let (a, b) = wired_pair();
    let m = a.msg(&b, "once", 0, 8);
    // B's ACK is lost on the way back.
    swallow(&b, &a, true);
    block_on(a.mgr.send(b.pid(), m.clone(), Priority::Normal, 0)).unwrap();
    pump(&[&a, &b], 0);
    assert_eq!(b.received().len(), 1);
    assert!(a.mgr.is_pending(&m.id));
    swallow(&b, &a, false);
    unlink(&a.t[&Wired], b.pid());
    pump(&[&a, &b], 10);
    connect(&a, &b, Wired);
    pump(&[&a, &b], 20);
    assert_eq!(b.received().len(), 1, "not delivered twice");
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: b.pid()
        }));
    assert_eq!(a.mgr.buffered(), 0);
}

#[test]
fn keys_announced_by_transports_are_learned_and_checked() {
    // An empty directory: every key must come from the transports. A does not
    // discover keys (that path is tested below), so it drops what it cannot verify.
    let dir = Arc::new(Directory::default());
    let a = Node::with_config(11, &dir, &[Wired], no_key_discovery());
    let b = Node::new(12, &dir, &[Wired]);
    let c = Node::new(13, &dir, &[Wired]);
    dir.0.lock().unwrap().clear();
    let (fa, fb) = (&a.t[&Wired], &b.t[&Wired]);
    net().link_silently(a.pid(), b.pid(), Wired);
    let announce = |f: &MemTransport, who: &Node, key: &PublicKey| {
        let mut info = PeerInfo::new(who.pid(), Wired, 0);
        info.metadata.insert(
            PeerInfo::PUBLIC_KEY.to_owned(),
            Value::Bytes(key.to_bytes().to_vec()),
        );
        f.emit(&TransportEvent::PeerDiscovered(info));
    };
    // A lies about B's key (C's key): not learned.
    announce(fa, &b, c.id.public_key());
    announce(fb, &a, a.id.public_key());
    pump(&[&a, &b], 0);
    assert_eq!(a.mgr.public_key(&b.pid()), None);
    assert_eq!(b.mgr.public_key(&a.pid()), Some(*a.id.public_key()));
    // B can verify A's message; A cannot verify B's, and drops it uncharged.
    block_on(
        a.mgr
            .send(b.pid(), a.msg(&b, "hello", 0, 1), Priority::Normal, 0),
    )
    .unwrap();
    pump(&[&a, &b], 0);
    assert_eq!(b.received().len(), 1);
    assert!(
        a.mgr.is_pending(&a.msg(&b, "hello", 0, 1).id),
        "B's ACK could not be verified"
    );
    // Learned after restart from persisted keys: the ACK now verifies.
    assert!(a.mgr.learn_key(*b.id.public_key()));
    assert!(a.mgr.learned_keys().contains(b.id.public_key()));
    let again = b.msg(&a, "back", 1, 2);
    block_on(b.mgr.send(a.pid(), again.clone(), Priority::Normal, 1)).unwrap();
    pump(&[&a, &b], 1);
    assert_eq!(a.received(), vec![again]);
}

/// A - B - C where each node knows only its own key and its neighbours'.
fn line(config: MeshConfig) -> (Node, Node, Node) {
    let dirs: Vec<Arc<Directory>> = (0..3).map(|_| Arc::new(Directory::default())).collect();
    let a = Node::with_config(21, &dirs[0], &[Wired], config);
    let b = Node::with_config(22, &dirs[1], &[Wired], config);
    let c = Node::with_config(23, &dirs[2], &[Wired], config);
    let know = |d: &Directory, n: &Node| {
        d.0.lock().unwrap().insert(n.pid(), *n.id.public_key());
    };
    know(&dirs[0], &b);
    know(&dirs[1], &a);
    know(&dirs[1], &c);
    know(&dirs[2], &b);
    connect(&a, &b, Wired);
    connect(&b, &c, Wired);
    pump(&[&a, &b, &c], 0);
    (a, b, c)
}

fn sent_of_type(n: &Node, ty: &str) -> Vec<(PeerId, NetworkMessage)> {
    sent(&n.t[&Wired])
        .iter()
        .filter(|(_, m)| m.message_type == ty)
        .cloned()
        .collect()
}

/// A message signed by an identity no node has met, injected by `via` into `to`.
fn from_stranger(stranger: &Identity, via: &Node, to: &Node, text: &str, n: u8) -> NetworkMessage {
    let mut m = via.msg(to, text, 0, n);
    m.sender = stranger.peer_id();
    stranger.sign_message(&mut m).unwrap();
    via.t[&Wired].inject(to.pid(), m.clone());
    m
}

fn reply_payload(wanted: &Identity, key: &PublicKey) -> Vec<u8> {
    let mut p = wanted.peer_id().as_bytes().to_vec();
    p.extend_from_slice(key.as_bytes());
    p
}

#[test]
fn message_from_two_hops_away_is_delivered_after_key_discovery() {
    let (a, b, c) = line(MeshConfig::default());
    assert_eq!(c.mgr.public_key(&a.pid()), None);
    assert_eq!(a.mgr.public_key(&c.pid()), None);
    let m = a.msg(&c, "from afar", 0, 1);
    assert_eq!(
        block_on(a.mgr.send(c.pid(), m.clone(), Priority::Normal, 0)).unwrap(),
        SendOutcome::Queued
    );
    pump(&[&a, &b, &c], 0);
    let got = c.received();
    assert_eq!(got.len(), 1, "delivered once");
    assert_eq!((got[0].id, &got[0].payload), (m.id, &m.payload));
    assert_eq!(got[0].hop_count, 1);
    assert_eq!(c.mgr.public_key(&a.pid()), Some(*a.id.public_key()));
    assert_eq!(c.mgr.awaiting_key(), 0);
    // B answered C's request for A's key; the request named A and was handed to B.
    let asked = sent_of_type(&c, KEY_REQUEST_TYPE);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].0, b.pid());
    assert_eq!(asked[0].1.recipient, Some(a.pid()));
    assert_eq!(asked[0].1.payload, a.pid().as_bytes().to_vec());
    assert_eq!(sent_of_type(&b, KEY_REPLY_TYPE).len(), 2, "one per side");
    // C's ACK came back through B; A learnt C's key the same way.
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: c.pid()
        }));
    assert!(!a.mgr.is_pending(&m.id));
    for n in [&a, &b, &c] {
        assert!(
            n.received().iter().all(|m| m.message_type == "chat"),
            "control messages are never delivered"
        );
    }
    // Now that the keys are known, the next message needs no discovery.
    let m2 = a.msg(&c, "again", 1, 2);
    block_on(a.mgr.send(c.pid(), m2.clone(), Priority::Normal, 1)).unwrap();
    pump(&[&a, &b, &c], 1);
    assert_eq!(c.received().len(), 2);
    assert_eq!(sent_of_type(&c, KEY_REQUEST_TYPE).len(), 1);
}

/// A node that wants to seal to a peer it never met asks for its key: B, which
/// knows C, answers A; the key checks against C's id.
#[test]
fn a_key_this_node_wants_for_itself_is_found_through_a_neighbour() {
    let (a, b, c) = line(MeshConfig::default());
    assert_eq!(block_on(a.mgr.discover_key(c.pid(), 0)), None);
    pump(&[&a, &b, &c], 0);
    assert_eq!(a.mgr.public_key(&c.pid()), Some(*c.id.public_key()));
    assert_eq!(
        block_on(a.mgr.discover_key(c.pid(), 1)),
        Some(*c.id.public_key())
    );
    let asked = sent_of_type(&a, KEY_REQUEST_TYPE);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].0, b.pid());
    // Nothing is asked again once the key is known.
    pump(&[&a, &b, &c], 60_000);
    assert_eq!(sent_of_type(&a, KEY_REQUEST_TYPE).len(), 1);
}

#[test]
fn without_key_discovery_a_wanted_key_stays_unknown() {
    let (a, b, c) = line(no_key_discovery());
    assert_eq!(block_on(a.mgr.discover_key(c.pid(), 0)), None);
    pump(&[&a, &b, &c], 0);
    assert_eq!(a.mgr.public_key(&c.pid()), None);
}

#[test]
fn without_key_discovery_the_same_line_drops_the_message() {
    let (a, b, c) = line(no_key_discovery());
    let m = a.msg(&c, "from afar", 0, 1);
    block_on(a.mgr.send(c.pid(), m.clone(), Priority::Normal, 0)).unwrap();
    pump(&[&a, &b, &c], 0);
    assert!(c.received().is_empty());
    assert_eq!(c.mgr.awaiting_key(), 0);
    assert!(sent_of_type(&c, KEY_REQUEST_TYPE).is_empty());
    assert!(a.mgr.is_pending(&m.id));
}

#[test]
fn neighbour_whose_key_no_transport_announced_is_asked_directly() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(31, &dir, &[Wired]);
    let b = Node::new(32, &dir, &[Wired]);
    dir.0.lock().unwrap().clear();
    connect(&a, &b, Wired);
    pump(&[&a, &b], 0);
    let m = b.msg(&a, "hi", 0, 1);
    block_on(b.mgr.send(a.pid(), m.clone(), Priority::Normal, 0)).unwrap();
    pump(&[&a, &b], 0);
    assert_eq!(a.received(), vec![m.clone()]);
    // The owner answered with its own key, checked against the id and its signature.
    assert_eq!(a.mgr.public_key(&b.pid()), Some(*b.id.public_key()));
    assert!(b.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: a.pid()
        }));
}

#[test]
fn lying_or_malformed_key_messages_are_refused_and_charged() {
    let (b, c) = wired_pair();
    let stranger = Identity::from_secret_bytes(&[77; 32]);
    let m = from_stranger(&stranger, &b, &c, "held", 1);
    pump(&[&b, &c], 0);
    assert!(c.received().is_empty());
    assert_eq!(c.mgr.awaiting_key(), 1);
    let asked = sent_of_type(&c, KEY_REQUEST_TYPE);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].0, b.pid(), "asked the neighbour that brought it");
    assert_eq!(asked[0].1.recipient, Some(stranger.peer_id()));

    let rejected = |c: &Node, id| c.has(|e| *e == MeshEvent::Rejected { from: b.pid(), id });
    let mut score = c.mgr.reputation(&b.pid());
    let mut refused = |payload: Vec<u8>, ty: &str, n: u8| {
        let bad = b
            .mgr
            .new_message(ty, payload, Some(c.pid()), 0, [n; 16])
            .unwrap();
        b.t[&Wired].inject(c.pid(), bad.clone());
        pump(&[&b, &c], 0);
        assert!(rejected(&c, bad.id), "{ty} {n}");
        let now = c.mgr.reputation(&b.pid());
        assert!(now < score, "{ty} {n}: charged");
        score = now;
    };
    // B's own key under the stranger's id: does not hash to it.
    refused(
        reply_payload(&stranger, b.id.public_key()),
        KEY_REPLY_TYPE,
        50,
    );
    // Wrong lengths, and 32 bytes that are not a valid Ed25519 key.
    refused(vec![1; 10], KEY_REPLY_TYPE, 51);
    let mut not_a_point = stranger.peer_id().as_bytes().to_vec();
    not_a_point.extend_from_slice(&[0xFF; 32]);
    refused(not_a_point, KEY_REPLY_TYPE, 52);
    refused(vec![0; 3], KEY_REQUEST_TYPE, 53);
    assert_eq!(c.mgr.public_key(&stranger.peer_id()), None);
    assert_eq!(c.mgr.awaiting_key(), 1, "still held");

    // The true key, from a relay that knows it: learned, the held messages handled.
    let truth = b
        .mgr
        .new_message(
            KEY_REPLY_TYPE,
            reply_payload(&stranger, stranger.public_key()),
            Some(c.pid()),
            0,
            [60; 16],
        )
        .unwrap();
    b.t[&Wired].inject(c.pid(), truth);
    pump(&[&b, &c], 0);
    assert_eq!(
        c.mgr.public_key(&stranger.peer_id()),
        Some(*stranger.public_key())
    );
    assert_eq!(c.received(), vec![m]);
    assert_eq!(c.mgr.awaiting_key(), 0);
}

#[test]
fn held_messages_are_handled_when_the_key_is_learned_by_any_path() {
    let (b, c) = wired_pair();
    // A forgery in a stranger's name is held, then charged to the neighbour
    // that brought it once the key arrives through `learn_key`.
    let stranger = Identity::from_secret_bytes(&[77; 32]);
    let mut forged = b.msg(&c, "forged", 0, 1);
    forged.sender = stranger.peer_id();
    stranger.sign_message(&mut forged).unwrap();
    forged.payload = b"tampered".to_vec();
    b.t[&Wired].inject(c.pid(), forged.clone());
    pump(&[&b, &c], 0);
    assert_eq!(c.mgr.awaiting_key(), 1);
    let before = c.mgr.reputation(&b.pid());
    assert!(c.mgr.learn_key(*stranger.public_key()));
    pump(&[&b, &c], 0);
    assert!(c.has(|e| *e
        == MeshEvent::Rejected {
            from: b.pid(),
            id: forged.id
        }));
    assert!(
        c.mgr.reputation(&b.pid()) < before,
        "the forgery is charged"
    );
    assert!(c.received().is_empty());
    assert_eq!(c.mgr.awaiting_key(), 0);

    // A genuine message is held until a transport announces its sender's key,
    // then delivered and acknowledged (the ACK is relayed by B).
    let other = Identity::from_secret_bytes(&[78; 32]);
    let m = from_stranger(&other, &b, &c, "genuine", 2);
    pump(&[&b, &c], 1);
    assert_eq!(c.mgr.awaiting_key(), 1);
    let mut info = PeerInfo::new(other.peer_id(), Wired, 0);
    info.metadata.insert(
        PeerInfo::PUBLIC_KEY.to_owned(),
        Value::Bytes(other.public_key().to_bytes().to_vec()),
    );
    c.t[&Wired].emit(&TransportEvent::PeerDiscovered(info));
    pump(&[&b, &c], 2);
    assert_eq!(c.received(), vec![m]);
    assert_eq!(c.mgr.awaiting_key(), 0);

    // A key the directory learns later (e.g. from a handshake elsewhere) works too.
    let third = Identity::from_secret_bytes(&[79; 32]);
    let m3 = from_stranger(&third, &b, &c, "third", 3);
    pump(&[&b, &c], 3);
    assert_eq!(c.mgr.awaiting_key(), 1);
    c.dir
        .0
        .lock()
        .unwrap()
        .insert(third.peer_id(), *third.public_key());
    pump(&[&b, &c], 4);
    assert_eq!(c.received().last(), Some(&m3));
}

#[test]
fn flood_from_unknown_senders_is_bounded_and_requests_are_rate_limited() {
    let config = MeshConfig {
        key_discovery: KeyDiscoveryConfig {
            max_held: 8,
            request_budget: 4,
            request_interval_ms: 1_000,
            hold_ms: 60_000,
            ..KeyDiscoveryConfig::default()
        },
        ..MeshConfig::default()
    };
    let dir = Arc::new(Directory::default());
    let b = Node::new(1, &dir, &[Wired]);
    let c = Node::with_config(2, &dir, &[Wired], config);
    connect(&b, &c, Wired);
    pump(&[&b, &c], 0);
    for n in 0..100_u8 {
        let s = Identity::from_secret_bytes(&[n.wrapping_add(100); 32]);
        from_stranger(&s, &b, &c, "flood", n);
    }
    pump(&[&b, &c], 0);
    assert!(c.received().is_empty());
    assert_eq!(c.mgr.awaiting_key(), 8, "held messages are capped");
    let requests = |c: &Node| sent_of_type(c, KEY_REQUEST_TYPE).len();
    assert_eq!(requests(&c), 4, "the window's budget");
    pump(&[&b, &c], 999);
    assert_eq!(requests(&c), 4, "nothing more within the window");
    // Each later window asks again for held senders only, within the budget.
    pump(&[&b, &c], 1_000);
    assert_eq!(requests(&c), 8);
    pump(&[&b, &c], 2_000);
    assert_eq!(requests(&c), 12);
    let wanted: std::collections::BTreeSet<Vec<u8>> = sent_of_type(&c, KEY_REQUEST_TYPE)
        .into_iter()
        .map(|(_, m)| m.payload)
        .collect();
    assert!(wanted.len() <= 8, "only held senders are asked for");
    // Held messages expire; nothing is asked for after that.
    pump(&[&b, &c], 60_000);
    assert_eq!(c.mgr.awaiting_key(), 0);
    let after = requests(&c);
    pump(&[&b, &c], 70_000);
    assert_eq!(requests(&c), after);
}

#[test]
fn one_request_per_unknown_sender_and_replies_within_the_budget() {
    let (b, c) = wired_pair();
    let stranger = Identity::from_secret_bytes(&[77; 32]);
    for n in 0..50 {
        from_stranger(&stranger, &b, &c, "many", n);
    }
    pump(&[&b, &c], 0);
    assert_eq!(c.mgr.awaiting_key(), 50);
    assert_eq!(sent_of_type(&c, KEY_REQUEST_TYPE).len(), 1);

    // Requests for C's own key from 100 strangers (unverifiable, answered anyway).
    for n in 0..100_u8 {
        let s = Identity::from_secret_bytes(&[n.wrapping_add(100); 32]);
        let mut req = b
            .mgr
            .new_message(
                KEY_REQUEST_TYPE,
                c.pid().as_bytes().to_vec(),
                Some(c.pid()),
                0,
                [n; 16],
            )
            .unwrap();
        req.sender = s.peer_id();
        s.sign_message(&mut req).unwrap();
        b.t[&Wired].inject(c.pid(), req);
    }
    pump(&[&b, &c], 0);
    let replies = sent_of_type(&c, KEY_REPLY_TYPE);
    let budget = KeyDiscoveryConfig::default().reply_budget as usize;
    assert_eq!(replies.len(), budget, "the window's reply budget");
    for (_, r) in &replies {
        assert_eq!(r.payload[32..], c.id.public_key().as_bytes()[..]);
    }
}

#[test]
fn keys_are_found_along_a_longer_line_through_relays_that_do_not_know_them() {
    // A - B - C - D, each node knowing only its neighbours' keys: C learns A's key
    // from B, D learns it from C; the ACK needs D's key at B and A, which C gives.
    let dirs: Vec<Arc<Directory>> = (0..4).map(|_| Arc::new(Directory::default())).collect();
    let nodes: Vec<Node> = (0..4)
        .map(|i| Node::new(41 + i as u8, &dirs[i], &[Wired]))
        .collect();
    for i in 0..3 {
        let (l, r) = (&nodes[i], &nodes[i + 1]);
        dirs[i]
            .0
            .lock()
            .unwrap()
            .insert(r.pid(), *r.id.public_key());
        dirs[i + 1]
            .0
            .lock()
            .unwrap()
            .insert(l.pid(), *l.id.public_key());
        connect(l, r, Wired);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    pump(&all, 0);
    let (a, d) = (&nodes[0], &nodes[3]);
    let m = a.msg(d, "far away", 0, 1);
    block_on(a.mgr.send(d.pid(), m.clone(), Priority::Normal, 0)).unwrap();
    pump(&all, 0);
    let got = d.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, m.id);
    assert_eq!(got[0].hop_count, 2);
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: m.id,
            by: d.pid()
        }));
    for n in &nodes {
        assert_eq!(n.mgr.awaiting_key(), 0);
    }
    // B verifies what it relays: it learnt D's key (from C) to pass D's ACK on.
    assert_eq!(nodes[1].mgr.public_key(&d.pid()), Some(*d.id.public_key()));
}

/// Issue 15: more messages than the buffer holds, the recipient away. None is
/// evicted silently: the buffer keeps what it accepted, refuses the rest with
/// a typed error naming its bound (and stops tracking them), and a message
/// pushed out by a more urgent one of the same node is reported.
#[test]
fn a_full_buffer_refuses_own_messages_instead_of_evicting_them_silently() {
    let dir = Arc::new(Directory::default());
    let config = MeshConfig {
        buffer: BufferConfig {
            max_messages: 5,
            ..BufferConfig::default()
        },
        ..MeshConfig::default()
    };
    let a = Node::with_config(1, &dir, &[Wired], config);
    let b = Node::new(2, &dir, &[Wired]);
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for n in 0..8_u8 {
        let m = a.msg(&b, &format!("text {n}"), u64::from(n), n + 1);
        match block_on(
            a.mgr
                .send(b.pid(), m.clone(), Priority::Normal, u64::from(n)),
        ) {
            Ok(SendOutcome::Queued) => accepted.push(m),
            Err(ecomesh_mesh::MeshError::BufferFull {
                id, max_messages, ..
            }) => {
                assert_eq!((id, max_messages), (m.id, 5));
                assert!(!a.mgr.is_pending(&m.id), "a refused message is not tracked");
                refused.push(m);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (accepted.len(), refused.len()),
        (5, 3),
        "the first five kept"
    );
    assert!(accepted.iter().all(|m| a.mgr.is_buffered(&m.id)));
    assert!(!a.has(|e| matches!(e, MeshEvent::Evicted(_))));
    // A relayed copy from someone else cannot push them out either.
    let c = Node::new(3, &dir, &[Wired]);
    connect(&a, &c, Wired);
    pump(&[&a, &c], 10);
    let relay = c.msg(&b, "via a", 10, 40);
    c.t[&Wired].inject(a.pid(), relay.clone());
    pump(&[&a, &c], 10);
    assert!(!a.mgr.is_buffered(&relay.id), "refused, not swapped in");
    assert_eq!(a.mgr.buffered_ids().len(), 5);
    // A more urgent message of the node does take a place, and says whose.
    let urgent = a.msg(&b, "urgent", 11, 50);
    assert_eq!(
        block_on(a.mgr.send(b.pid(), urgent.clone(), Priority::High, 11)).unwrap(),
        SendOutcome::Queued
    );
    let evicted: Vec<_> = a
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            MeshEvent::Evicted(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(evicted.len(), 1);
    assert!(!a.mgr.is_pending(&evicted[0]) && !a.mgr.is_buffered(&evicted[0]));
    // B appears: the buffer drains; then the owner offers the rest again and
    // every message arrives exactly once.
    connect(&a, &b, Wired);
    pump(&[&a, &b, &c], 20);
    let mut again: Vec<NetworkMessage> = refused;
    again.extend(accepted.iter().filter(|m| m.id == evicted[0]).cloned());
    for m in &again {
        assert!(matches!(
            block_on(a.mgr.send(b.pid(), m.clone(), Priority::Normal, 21)).unwrap(),
            SendOutcome::Sent(Wired)
        ));
    }
    pump(&[&a, &b, &c], 22);
    let mut got: Vec<_> = b.received().iter().map(|m| m.id).collect();
    let mut want: Vec<_> = accepted.iter().chain(&again).map(|m| m.id).collect();
    want.push(urgent.id);
    want.sort();
    want.dedup();
    got.sort();
    assert_eq!(got, want, "all nine, once each");
    let acked = a
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, MeshEvent::Acked { .. }))
        .count();
    assert_eq!(acked, 9);
    assert_eq!(a.mgr.buffered(), 0);
}

/// Issue 20 item 6: seed 003's offline queue per destination. The sender of
/// the 101st message to one absent peer gets a typed refusal naming that peer
/// and the bound, while messages to another absent peer still queue; a copy
/// relayed for someone else leaves after 72 hours of this node's clock, while
/// the node's own message waits for its ACK until its TTL.
#[test]
fn the_offline_queue_is_bounded_per_destination_and_holds_relayed_copies_72_hours() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(1, &dir, &[Wired]);
    let b = Node::new(2, &dir, &[Wired]);
    let c = Node::new(3, &dir, &[Wired]);
    let d = Node::new(4, &dir, &[Wired]);
    let msg_n = |to: &Node, i: u16, now: u64| {
        let mut id = [0_u8; 16];
        id[..2].copy_from_slice(&i.to_be_bytes());
        id[2] = 0xAB;
        a.mgr
            .new_message("chat", vec![1; 8], Some(to.pid()), now, id)
            .unwrap()
    };
    for i in 0..100 {
        let m = msg_n(&b, i, 1);
        assert_eq!(
            block_on(a.mgr.send(b.pid(), m, Priority::Normal, 1)).unwrap(),
            SendOutcome::Queued
        );
    }
    let extra = msg_n(&b, 100, 1);
    match block_on(a.mgr.send(b.pid(), extra.clone(), Priority::Normal, 1)) {
        Err(ecomesh_mesh::MeshError::DestinationFull {
            id,
            peer,
            max_messages,
            ..
        }) => assert_eq!((id, peer, max_messages), (extra.id, b.pid(), 100)),
        other => panic!("expected DestinationFull, got {other:?}"),
    }
    assert!(
        !a.mgr.is_pending(&extra.id),
        "a refused message is not tracked"
    );
    let to_c = msg_n(&c, 0, 1);
    assert_eq!(
        block_on(a.mgr.send(c.pid(), to_c.clone(), Priority::Normal, 1)).unwrap(),
        SendOutcome::Queued,
        "another destination has its own share"
    );
    // D hands A a copy for the absent C: A holds it 72 hours, then lets it go.
    connect(&a, &d, Wired);
    pump(&[&a, &d], 2);
    let relayed = d.msg(&c, "for c", 2, 77);
    d.t[&Wired].inject(a.pid(), relayed.clone());
    pump(&[&a, &d], 2);
    assert!(a.mgr.is_buffered(&relayed.id));
    let hold = 72 * 3600 * 1000;
    pump(&[&a], 2 + hold - 1);
    assert!(a.mgr.is_buffered(&relayed.id));
    pump(&[&a], 2 + hold);
    assert!(
        !a.mgr.is_buffered(&relayed.id),
        "the relayed copy left after 72 h"
    );
    assert!(
        a.mgr.is_buffered(&to_c.id),
        "A's own message waits for its TTL"
    );
    assert!(a.mgr.is_pending(&to_c.id));
}

#[test]
fn a_link_authenticated_message_is_delivered_only_from_its_sender_and_never_relayed() {
    let dir = Arc::new(Directory::default());
    let a = Node::new(41, &dir, &[Wired]);
    let b = Node::new(42, &dir, &[Wired]);
    let c = Node::new(43, &dir, &[Wired]);
    connect(&a, &b, Wired);
    pump(&[&a, &b], 0);
    let unsigned = |mut m: NetworkMessage| {
        m.signature = ecomesh_types::Signature::UNSIGNED;
        m
    };
    let good = unsigned(a.msg(&b, "over our session", 0, 1));
    b.t[&Wired].emit(&TransportEvent::LinkMessage {
        from: a.pid(),
        message: good.clone(),
    });
    pump(&[&a, &b], 0);
    assert_eq!(b.received(), vec![good]);
    // Another sender than the link peer, another recipient than this node, a
    // relayed copy: refused, and nothing is buffered for relaying.
    let mut impostor = unsigned(c.msg(&b, "claims to be c", 0, 2));
    impostor.id.0[1] = 2;
    let elsewhere = unsigned(a.msg(&c, "for c", 0, 3));
    let mut relayed = unsigned(a.msg(&b, "relayed", 0, 4));
    relayed.hop_count = 1;
    for m in [impostor, elsewhere, relayed] {
        b.t[&Wired].emit(&TransportEvent::LinkMessage {
            from: a.pid(),
            message: m.clone(),
        });
        pump(&[&a, &b], 0);
        assert!(
            b.has(|e| *e
                == MeshEvent::Rejected {
                    from: a.pid(),
                    id: m.id
                }),
            "{m:?}"
        );
    }
    assert_eq!(b.received().len(), 1);
    assert_eq!(b.mgr.buffered(), 0);
}

#[test]
fn unacknowledged_types_are_delivered_once_without_ack_or_retransmission_copy() {
    let (a, b) = wired_pair();
    for n in [&a, &b] {
        n.mgr.carry_unacknowledged("bulk");
    }
    let m = a
        .mgr
        .new_message("bulk", vec![7; 4096], Some(b.pid()), 0, [3; 16])
        .unwrap();
    block_on(a.mgr.send(b.pid(), m.clone(), Priority::Bulk, 0)).unwrap();
    pump(&[&a, &b], 0);
    assert_eq!(b.received(), vec![m.clone()]);
    assert!(!a.mgr.is_pending(&m.id), "no ACK waited for");
    assert_eq!(a.mgr.buffered(), 0, "no retransmission copy kept");
    let acks = sent(&b.t[&Wired])
        .into_iter()
        .filter(|(to, _)| *to == a.pid())
        .count();
    assert_eq!(acks, 0, "B sent no ACK");
    // A copy of the same id again (a resend by a node that still waits for
    // ACKs) is dropped as a duplicate and not acknowledged either.
    a.t[&Wired].inject(b.pid(), m);
    pump(&[&a, &b], 0);
    assert_eq!(b.received().len(), 1);
    assert!(sent(&b.t[&Wired]).is_empty());
    // Other types are still acknowledged.
    let chat = a.msg(&b, "hi", 0, 4);
    block_on(a.mgr.send(b.pid(), chat.clone(), Priority::Normal, 0)).unwrap();
    pump(&[&a, &b], 0);
    assert!(a.has(|e| *e
        == MeshEvent::Acked {
            id: chat.id,
            by: b.pid()
        }));
}
