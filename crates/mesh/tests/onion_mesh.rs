//! Private delivery over onion circuits between real `MultiTransportManager`s
//! in transport-tests' shared in-memory network (fake clock, immediate links).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ecomesh_identity::message::KeyDirectory;
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::onion::{ONION_CELL_TYPE, OnionConfig};
use ecomesh_mesh::{MeshConfig, MeshEvent, MultiTransportManager, PrivateOutcome, SendOutcome};
use ecomesh_transport_tests::memnet::block_on;
use ecomesh_transport_tests::{MemNetwork, MemTransport};
use ecomesh_types::{
    NetworkMessage, PeerId, Priority, Subscription, TransportAdapter, TransportType,
};
use ecomesh_wire::encoded_message_len;

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
    t: Arc<MemTransport>,
}

impl Node {
    fn new(net: &MemNetwork, seed: u8, dir: &Arc<Directory>, relays: usize) -> Node {
        let id = Identity::from_secret_bytes(&[seed; 32]);
        dir.0.lock().unwrap().insert(id.peer_id(), *id.public_key());
        let config = MeshConfig {
            onion: OnionConfig {
                relays,
                ..OnionConfig::default()
            },
            ..MeshConfig::default()
        };
        let mgr = MultiTransportManager::new(id.clone(), dir.clone(), config);
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        let sub = mgr.subscribe(Arc::new(move |ev: &MeshEvent| {
            e.lock().unwrap().push(ev.clone())
        }));
        let t = net.join(id.peer_id(), TransportType::Wired);
        mgr.add_transport(t.clone());
        block_on(t.start()).unwrap();
        Node {
            id,
            mgr,
            events,
            _sub: sub,
            t,
        }
    }

    fn pid(&self) -> PeerId {
        self.id.peer_id()
    }

    fn msg(&self, to: PeerId, text: &str, now: u64, n: u8) -> NetworkMessage {
        self.mgr
            .new_message("chat", text.as_bytes().to_vec(), Some(to), now, [n; 16])
            .unwrap()
    }

    fn received(&self) -> Vec<(PeerId, NetworkMessage)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                MeshEvent::Message { from, message, .. } => Some((*from, message.clone())),
                _ => None,
            })
            .collect()
    }

    fn acked(&self, id: ecomesh_types::MessageId) -> bool {
        self.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, MeshEvent::Acked { id: i, .. } if *i == id))
    }
}

fn pump(nodes: &[&Node], now: u64) {
    for _ in 0..1000 {
        let handled: usize = nodes.iter().map(|n| block_on(n.mgr.process(now))).sum();
        if handled == 0 {
            return;
        }
    }
    panic!("events still flowing after 1000 rounds");
}

/// Client `a` (index 0), relays 1..=n, destination `b` (last): `a` is linked
/// to every relay, the relays to each other and to `b`; `a` and `b` are not
/// linked.
fn mesh(n: usize, relays_per_circuit: usize) -> (MemNetwork, Vec<Node>) {
    let net = MemNetwork::immediate();
    net.record_traffic(1 << 16);
    let dir = Arc::new(Directory::default());
    let nodes: Vec<Node> = (0..n + 2)
        .map(|i| Node::new(&net, i as u8 + 1, &dir, relays_per_circuit))
        .collect();
    for i in 1..=n {
        net.link(nodes[0].pid(), nodes[i].pid(), TransportType::Wired);
        net.link(nodes[i].pid(), nodes[n + 1].pid(), TransportType::Wired);
        for j in i + 1..=n {
            net.link(nodes[i].pid(), nodes[j].pid(), TransportType::Wired);
        }
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    pump(&refs, 0);
    (net, nodes)
}

#[test]
fn a_private_message_crosses_three_relays_none_of_which_learns_both_ends() {
    let (net, nodes) = mesh(3, 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (a, b) = (&nodes[0], &nodes[4]);
    let m = a.msg(b.pid(), "meet at the well", 1, 1);
    let out = block_on(a.mgr.send_private(b.pid(), m.clone(), Priority::Normal, 1)).unwrap();
    assert_eq!(out, PrivateOutcome::Onion { ready: false });
    pump(&refs, 1);
    assert!(a.mgr.onion_ready(&b.pid()));
    let path = a.mgr.onion_path(&b.pid()).unwrap();
    assert_eq!(path.len(), 3);
    let got = b.received();
    assert_eq!(got.len(), 1, "delivered once");
    assert_eq!(
        got[0].0,
        a.pid(),
        "the destination learns the writer from the signed message"
    );
    assert_eq!(got[0].1.payload, b"meet at the well");
    assert!(a.acked(m.id), "the ACK came back over the circuit");
    assert!(!a.mgr.is_buffered(&m.id));

    // What each relay saw: only its neighbours on the path.
    for r in &nodes[1..=3] {
        let pairs = r.mgr.onion_relayed_pairs();
        assert!(!pairs.is_empty());
        let ends: Vec<PeerId> = pairs.keys().flat_map(|(p, q)| [*p, *q]).collect();
        assert!(
            !(ends.contains(&a.pid()) && ends.contains(&b.pid())),
            "relay {} saw both ends: {pairs:?}",
            r.pid()
        );
    }
    // On the wire: only onion cells, all of one size, the text nowhere but
    // inside cells to the destination, and no message from a to b anywhere.
    let cells = net.traffic();
    assert!(!cells.is_empty());
    let size = encoded_message_len(&cells[0].message);
    for t in &cells {
        assert_eq!(t.message.message_type, ONION_CELL_TYPE);
        assert_eq!(
            encoded_message_len(&t.message),
            size,
            "every cell message is the same size"
        );
        assert_eq!(t.message.sender, t.from, "cells go neighbour to neighbour");
        assert!(!t.message.payload.windows(8).any(|w| w == b"meet at "));
        assert!(!(t.message.sender == a.pid() && t.message.recipient == Some(b.pid())));
    }

    // The reverse direction: b answers a privately over a circuit of its own.
    let reply = b.msg(a.pid(), "see you there", 2, 2);
    let out = block_on(
        b.mgr
            .send_private(a.pid(), reply.clone(), Priority::Normal, 2),
    )
    .unwrap();
    assert_eq!(out, PrivateOutcome::Onion { ready: false });
    pump(&refs, 2);
    assert!(
        a.received()
            .iter()
            .any(|(_, m)| m.payload == b"see you there")
    );
    assert!(b.acked(reply.id));

    // A second message reuses the built circuit.
    let m2 = a.msg(b.pid(), "second", 3, 3);
    let out = block_on(a.mgr.send_private(b.pid(), m2.clone(), Priority::Normal, 3)).unwrap();
    assert_eq!(out, PrivateOutcome::Onion { ready: true });
    pump(&refs, 3);
    assert!(a.acked(m2.id));
    assert_eq!(b.received().len(), 2);
}

#[test]
fn delivery_order_is_direct_then_onion_then_relay_and_queue() {
    // Direct: the recipient is a neighbour.
    let (_net, nodes) = mesh(3, 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (a, r1) = (&nodes[0], &nodes[1]);
    let m = a.msg(r1.pid(), "hello neighbour", 1, 1);
    let out = block_on(a.mgr.send_private(r1.pid(), m, Priority::Normal, 1)).unwrap();
    assert_eq!(out, PrivateOutcome::Direct(TransportType::Wired));
    pump(&refs, 1);
    assert_eq!(r1.received().len(), 1);

    // Relay then queue: a circuit needs more reputable relays than `a` has.
    let (_net, nodes) = mesh(2, 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (a, b) = (&nodes[0], &nodes[3]);
    let m = a.msg(b.pid(), "no circuit", 1, 1);
    let out = block_on(a.mgr.send_private(b.pid(), m.clone(), Priority::Normal, 1)).unwrap();
    assert_eq!(out, PrivateOutcome::Fallback(SendOutcome::Queued));
    pump(&refs, 1);
    assert_eq!(b.received().len(), 1, "relay copies reached b");
    assert!(a.acked(m.id));

    // `send` is unchanged: no onion circuit is built for it.
    let (_net, nodes) = mesh(3, 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (a, b) = (&nodes[0], &nodes[4]);
    let m = a.msg(b.pid(), "plain", 1, 1);
    assert_eq!(
        block_on(a.mgr.send(b.pid(), m, Priority::Normal, 1)).unwrap(),
        SendOutcome::Queued
    );
    pump(&refs, 1);
    assert!(!a.mgr.onion_ready(&b.pid()));
    assert_eq!(b.received().len(), 1);
}

#[test]
fn a_relay_that_vanishes_mid_circuit_is_routed_around() {
    let (net, nodes) = mesh(3, 2);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (a, b) = (&nodes[0], &nodes[4]);
    let m = a.msg(b.pid(), "one", 1, 1);
    block_on(a.mgr.send_private(b.pid(), m, Priority::Normal, 1)).unwrap();
    pump(&refs, 1);
    assert_eq!(b.received().len(), 1);
    let path = a.mgr.onion_path(&b.pid()).unwrap();
    // The second relay of the path goes down.
    let gone = nodes.iter().find(|n| n.pid() == path[1]).unwrap();
    block_on(gone.t.stop()).unwrap();
    let live: Vec<&Node> = nodes.iter().filter(|n| n.pid() != gone.pid()).collect();
    pump(&live, 2);
    assert!(
        !a.mgr.onion_ready(&b.pid()),
        "the broken circuit was torn down"
    );
    for n in &live {
        assert_eq!(
            n.mgr.onion_relayed_circuits(),
            0,
            "{} kept state of a dead circuit",
            n.pid()
        );
    }
    let m2 = a.msg(b.pid(), "two", 3, 2);
    let out = block_on(a.mgr.send_private(b.pid(), m2.clone(), Priority::Normal, 3)).unwrap();
    assert_eq!(out, PrivateOutcome::Onion { ready: false });
    pump(&live, 3);
    assert!(!a.mgr.onion_path(&b.pid()).unwrap().contains(&gone.pid()));
    assert!(b.received().iter().any(|(_, m)| m.payload == b"two"));
    assert!(a.acked(m2.id));
    let _ = net;
}

#[test]
fn circuits_are_rebuilt_after_an_hour() {
    let (_net, nodes) = mesh(3, 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (a, b) = (&nodes[0], &nodes[4]);
    let hour = OnionConfig::default().rotate_ms;
    block_on(
        a.mgr
            .send_private(b.pid(), a.msg(b.pid(), "1", 1, 1), Priority::Normal, 1),
    )
    .unwrap();
    pump(&refs, 1);
    assert!(a.mgr.onion_ready(&b.pid()));
    pump(&refs, hour + 1);
    assert!(!a.mgr.onion_ready(&b.pid()), "rotated after an hour");
    for r in &nodes[1..=3] {
        assert_eq!(r.mgr.onion_relayed_circuits(), 0);
    }
    let m = a.msg(b.pid(), "2", hour + 2, 2);
    let out = block_on(
        a.mgr
            .send_private(b.pid(), m.clone(), Priority::Normal, hour + 2),
    )
    .unwrap();
    assert_eq!(out, PrivateOutcome::Onion { ready: false });
    pump(&refs, hour + 2);
    assert!(a.acked(m.id));
}

#[test]
fn a_neighbour_handing_over_bad_cells_is_charged() {
    let (_net, nodes) = mesh(3, 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (r1, r2) = (&nodes[1], &nodes[2]);
    let before = r2.mgr.reputation(&r1.pid());
    for n in 0..3_u8 {
        // A cell of an unknown kind and a cell of the wrong size, signed by
        // r1 and handed straight to r2.
        let mut garbage = vec![n + 1; 1024];
        garbage[4] = 77;
        let m = r1
            .mgr
            .new_message(ONION_CELL_TYPE, garbage, Some(r2.pid()), 1, [n + 10; 16])
            .unwrap();
        block_on(r1.t.send(r2.pid(), m)).unwrap();
        let short = r1
            .mgr
            .new_message(
                ONION_CELL_TYPE,
                vec![n; 10],
                Some(r2.pid()),
                1,
                [n + 20; 16],
            )
            .unwrap();
        block_on(r1.t.send(r2.pid(), short)).unwrap();
    }
    pump(&refs, 1);
    let after = r2.mgr.reputation(&r1.pid());
    assert!(after < before, "reputation {before} -> {after}");
    assert_eq!(r2.mgr.onion_relayed_circuits(), 0);
}

#[test]
fn a_private_message_lost_on_a_broken_circuit_is_sent_again_over_the_next() {
    let (net, nodes) = mesh(3, 2);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (a, b) = (&nodes[0], &nodes[4]);
    block_on(
        a.mgr
            .send_private(b.pid(), a.msg(b.pid(), "warm", 1, 1), Priority::Normal, 1),
    )
    .unwrap();
    pump(&refs, 1);
    let path = a.mgr.onion_path(&b.pid()).unwrap();
    let last = nodes.iter().find(|n| n.pid() == path[1]).unwrap();
    // Cells from the last relay to b vanish: the message leaves, no ACK comes back.
    net.set_link(
        last.pid(),
        b.pid(),
        Some(ecomesh_transport_tests::LinkModel::BLACK_HOLE),
    );
    let m = a.msg(b.pid(), "lost once", 2, 2);
    let out = block_on(a.mgr.send_private(b.pid(), m.clone(), Priority::Normal, 2)).unwrap();
    assert_eq!(out, PrivateOutcome::Onion { ready: true });
    pump(&refs, 2);
    assert!(!a.acked(m.id));
    assert!(a.mgr.is_buffered(&m.id), "kept until its ACK");
    // The last relay goes down: the circuit breaks and the message goes again
    // over a new one through the two relays left.
    block_on(last.t.stop()).unwrap();
    let live: Vec<&Node> = nodes.iter().filter(|n| n.pid() != last.pid()).collect();
    pump(&live, 3);
    assert!(
        a.acked(m.id),
        "sent again over the new circuit and acknowledged"
    );
    assert!(b.received().iter().any(|(_, x)| x.payload == b"lost once"));
    assert!(!a.mgr.onion_path(&b.pid()).unwrap().contains(&last.pid()));
}
