//! The sans-io onion router on a fake clock: routers wired to each other by a
//! tiny in-test network that hands every queued cell to its neighbour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use ecomesh_identity::Identity;
use ecomesh_mesh::MeshError;
use ecomesh_mesh::onion::{CELL_LEN, CloseReason, OnionConfig, OnionEvent, OnionRouter, Origin};
use ecomesh_types::PeerId;

/// Rewrites a cell on the wire: (from, to, bytes).
type Tamper = Box<dyn FnMut(PeerId, PeerId, &mut Vec<u8>)>;

struct Net {
    routers: BTreeMap<PeerId, OnionRouter>,
    keys: BTreeMap<PeerId, [u8; 32]>,
    order: Vec<PeerId>,
    events: BTreeMap<PeerId, Vec<OnionEvent>>,
    /// Every cell that crossed a link: (from, to, bytes).
    wire: Vec<(PeerId, PeerId, Vec<u8>)>,
    /// Peers that vanished: cells to them are lost.
    gone: Vec<PeerId>,
    /// Applied to each cell before delivery (tampering).
    tamper: Option<Tamper>,
}

impl Net {
    fn new(n: u8, config: OnionConfig) -> Net {
        let mut net = Net {
            routers: BTreeMap::new(),
            keys: BTreeMap::new(),
            order: Vec::new(),
            events: BTreeMap::new(),
            wire: Vec::new(),
            gone: Vec::new(),
            tamper: None,
        };
        for i in 0..n {
            let id = Identity::from_secret_bytes(&[i + 1; 32]);
            let pid = id.peer_id();
            net.keys.insert(pid, id.public_key().to_x25519());
            net.routers
                .insert(pid, OnionRouter::new(id, config, [i + 100; 32]));
            net.order.push(pid);
        }
        net
    }

    fn p(&self, i: usize) -> PeerId {
        self.order[i]
    }

    fn key(&self, i: usize) -> (PeerId, [u8; 32]) {
        (self.p(i), self.keys[&self.p(i)])
    }

    fn r(&mut self, i: usize) -> &mut OnionRouter {
        let p = self.p(i);
        self.routers.get_mut(&p).unwrap()
    }

    /// Delivers cells until none is left (bounded), collecting events.
    fn pump(&mut self, now: u64) {
        for _ in 0..10_000 {
            let mut moved = false;
            let peers: Vec<PeerId> = self.order.clone();
            for from in peers {
                while let Some((to, mut bytes)) =
                    self.routers.get_mut(&from).unwrap().poll_transmit()
                {
                    moved = true;
                    if self.gone.contains(&to) || self.gone.contains(&from) {
                        continue;
                    }
                    if let Some(t) = self.tamper.as_mut() {
                        t(from, to, &mut bytes);
                    }
                    self.wire.push((from, to, bytes.clone()));
                    let _ = self
                        .routers
                        .get_mut(&to)
                        .unwrap()
                        .on_cell(from, &bytes, now);
                }
            }
            for (p, r) in &mut self.routers {
                while let Some(e) = r.poll_event() {
                    self.events.entry(*p).or_default().push(e);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("cells still moving after 10 000 rounds");
    }

    fn take_events(&mut self, i: usize) -> Vec<OnionEvent> {
        let p = self.p(i);
        self.events.remove(&p).unwrap_or_default()
    }

    fn delivered(&mut self, i: usize) -> Vec<(Option<Origin>, Vec<u8>)> {
        self.take_events(i)
            .into_iter()
            .filter_map(|e| match e {
                OnionEvent::Delivered { origin, data, .. } => Some((origin, data)),
                _ => None,
            })
            .collect()
    }

    /// Client 0, relays 1..=relays, destination relays + 1.
    fn build(&mut self, relays: usize, now: u64) {
        let dest = self.key(relays + 1);
        let path: Vec<_> = (1..=relays).map(|i| self.key(i)).collect();
        self.r(0).build(dest, &path, now).unwrap();
        self.pump(now);
    }
}

#[test]
fn circuits_of_1_to_8_relays_carry_messages_both_ways_in_same_size_cells() {
    for relays in 1..=8 {
        let mut net = Net::new(relays as u8 + 2, OnionConfig::default());
        let dest = net.p(relays + 1);
        net.build(relays, 0);
        assert!(net.r(0).is_ready(&dest), "{relays} relays: not built");
        assert!(
            net.take_events(0)
                .contains(&OnionEvent::CircuitReady { dest, relays })
        );
        // One message of several cells, then a short one.
        let long: Vec<u8> = (0..5000_u32).map(|i| (i * 7) as u8).collect();
        assert!(net.r(0).send(&dest, long.clone()).unwrap());
        assert!(net.r(0).send(&dest, b"hi".to_vec()).unwrap());
        net.pump(1);
        let got = net.delivered(relays + 1);
        assert_eq!(got.len(), 2, "{relays} relays");
        assert_eq!(got[0].1, long);
        assert_eq!(got[1].1, b"hi");
        let origin = got[0].0.unwrap();
        assert_eq!(
            origin.prev,
            net.p(relays),
            "the destination sees only the last relay"
        );
        // The answer goes back over the same circuit.
        let answer: Vec<u8> = (0..3000_u32).map(|i| i as u8).collect();
        net.r(relays + 1).reply(&origin, &answer).unwrap();
        net.pump(2);
        let back = net.delivered(0);
        assert_eq!(back, vec![(None, answer)]);
        assert!(
            net.wire.iter().all(|(_, _, b)| b.len() == CELL_LEN),
            "every cell is {CELL_LEN} bytes"
        );
    }
}

#[test]
fn no_relay_sees_both_the_client_and_the_destination() {
    let mut net = Net::new(6, OnionConfig::default());
    net.build(4, 0);
    let (client, dest) = (net.p(0), net.p(5));
    net.r(0).send(&dest, b"private".to_vec()).unwrap();
    net.pump(1);
    for i in 1..=4 {
        let pairs = net.r(i).relayed_pairs();
        assert!(!pairs.is_empty(), "relay {i} relayed something");
        let ends: Vec<PeerId> = pairs.keys().flat_map(|(a, b)| [*a, *b]).collect();
        assert!(
            !(ends.contains(&client) && ends.contains(&dest)),
            "relay {i} saw both ends: {pairs:?}"
        );
        // Each relay sees exactly its neighbours on the path.
        for (a, b) in pairs.keys() {
            let (ia, ib) = (
                net.order.iter().position(|p| p == a).unwrap(),
                net.order.iter().position(|p| p == b).unwrap(),
            );
            assert_eq!(ia.abs_diff(i), 1);
            assert_eq!(ib.abs_diff(i), 1);
        }
    }
    // Relays never see the message in clear.
    for (from, to, bytes) in &net.wire {
        if *to != dest {
            assert!(
                !bytes.windows(7).any(|w| w == b"private"),
                "cell {from} -> {to} carries the plaintext"
            );
        }
    }
}

#[test]
fn circuits_rotate_after_an_hour_and_relays_forget_them() {
    let config = OnionConfig::default();
    let mut net = Net::new(5, config);
    let dest = net.p(4);
    net.build(3, 0);
    let first_path = net.r(0).path(&dest).unwrap();
    assert!(net.r(0).tick(config.rotate_ms - 1).is_some());
    assert!(net.r(0).is_ready(&dest));
    net.r(0).tick(config.rotate_ms);
    net.pump(config.rotate_ms);
    assert!(!net.r(0).has_circuit(&dest));
    assert!(net.take_events(0).iter().any(|e| matches!(
        e,
        OnionEvent::CircuitClosed {
            reason: CloseReason::Rotated,
            ..
        }
    )));
    // The destroy cell freed every relay's state.
    for i in 1..=4 {
        assert_eq!(
            net.r(i).relayed_circuits(),
            0,
            "hop {i} kept the old circuit"
        );
    }
    assert!(matches!(
        net.r(0).send(&dest, b"x".to_vec()),
        Err(MeshError::NoCircuit(_))
    ));
    // A fresh circuit (new keys: a cell of the old circuit would not open).
    net.build(3, config.rotate_ms + 1);
    assert!(net.r(0).is_ready(&dest));
    assert_eq!(net.r(0).path(&dest).unwrap(), first_path);
    net.r(0).send(&dest, b"after rotation".to_vec()).unwrap();
    net.pump(config.rotate_ms + 2);
    assert_eq!(net.delivered(4)[0].1, b"after rotation");
}

#[test]
fn relay_state_of_a_silent_client_expires() {
    let config = OnionConfig::default();
    let mut net = Net::new(4, config);
    net.build(2, 0);
    assert_eq!(net.r(1).relayed_circuits(), 1);
    net.gone.push(net.p(0));
    for i in 1..=3 {
        net.r(i).tick(config.idle_ms);
    }
    net.pump(config.idle_ms);
    for i in 1..=3 {
        assert_eq!(net.r(i).relayed_circuits(), 0);
    }
}

#[test]
fn a_hop_that_vanishes_mid_circuit_closes_it_and_returns_waiting_messages() {
    let config = OnionConfig::default();
    let mut net = Net::new(5, config);
    let dest = net.p(4);
    net.build(3, 0);
    assert!(net.r(0).is_ready(&dest));
    net.take_events(0);
    // Relay 2 vanishes: its neighbours notice the link going down.
    let lost = net.p(2);
    net.gone.push(lost);
    net.r(1).peer_lost(lost);
    net.r(3).peer_lost(lost);
    net.pump(10);
    assert!(!net.r(0).has_circuit(&dest));
    assert!(net.take_events(0).iter().any(|e| matches!(
        e,
        OnionEvent::CircuitClosed { dest: d, reason: CloseReason::Destroyed, .. } if *d == dest
    )));
    assert_eq!(net.r(1).relayed_circuits(), 0);
    assert_eq!(net.r(3).relayed_circuits(), 0);
    assert_eq!(
        net.r(4).relayed_circuits(),
        0,
        "the destroy reached the destination"
    );

    // A hop that vanishes silently during a build: the build times out and
    // the message waiting for the circuit comes back.
    let mut net = Net::new(5, config);
    net.gone.push(net.p(3));
    let path = [net.key(1), net.key(2), net.key(3)];
    let dest_key = net.key(4);
    net.r(0).build(dest_key, &path, 0).unwrap();
    assert!(!net.r(0).send(&dest, b"waiting".to_vec()).unwrap());
    net.pump(0);
    assert!(!net.r(0).is_ready(&dest));
    let next = net.r(0).tick(1).unwrap();
    assert_eq!(next, config.build_timeout_ms);
    net.r(0).tick(next);
    net.pump(next);
    let closed: Vec<_> = net.take_events(0);
    assert!(
        closed.contains(&OnionEvent::CircuitClosed {
            dest,
            reason: CloseReason::Timeout,
            undelivered: vec![b"waiting".to_vec()],
        }),
        "{closed:?}"
    );
}

#[test]
fn tampered_and_replayed_cells_are_refused_and_charged_to_the_neighbour() {
    let mut net = Net::new(5, OnionConfig::default());
    let dest = net.p(4);
    net.build(3, 0);
    let (r1, r2) = (net.p(1), net.p(2));
    // Flip one bit of the next forward cell from relay 1 to relay 2.
    let mut armed = true;
    net.tamper = Some(Box::new(move |from, to, bytes| {
        if armed && from == r1 && to == r2 && bytes[4] == 3 {
            bytes[600] ^= 1;
            armed = false;
        }
    }));
    net.r(0).send(&dest, b"tampered".to_vec()).unwrap();
    net.pump(1);
    assert!(net.delivered(4).is_empty(), "a tampered cell was delivered");
    assert!(
        net.take_events(2)
            .iter()
            .any(|e| matches!(e, OnionEvent::Misbehaved { peer, .. } if *peer == r1))
    );
    assert!(
        !net.r(0).has_circuit(&dest),
        "the torn circuit reached the client"
    );
    assert_eq!(net.r(2).relayed_circuits(), 0);

    // Replay: the same forward cell handed to relay 1 twice.
    net.tamper = None;
    net.build(3, 2);
    net.take_events(1);
    net.wire.clear();
    net.r(0).send(&dest, b"once".to_vec()).unwrap();
    net.pump(3);
    assert_eq!(net.delivered(4).len(), 1);
    let (from, to, cell) = net
        .wire
        .iter()
        .find(|(f, _, _)| *f == net.p(0))
        .cloned()
        .unwrap();
    let err = net.routers.get_mut(&to).unwrap().on_cell(from, &cell, 4);
    assert!(matches!(err, Err(MeshError::BadCell { .. })), "{err:?}");
    net.pump(4);
    assert!(
        net.delivered(4).is_empty(),
        "a replayed cell was delivered again"
    );
    assert!(
        net.take_events(1)
            .iter()
            .any(|e| matches!(e, OnionEvent::Misbehaved { peer, .. } if *peer == from))
    );

    // Garbage of the wrong size, or an unknown kind, is refused the same way.
    let me = net.p(0);
    assert!(net.r(1).on_cell(me, &[1, 2, 3], 5).is_err());
    let mut bad = vec![0_u8; CELL_LEN];
    bad[3] = 1;
    bad[4] = 77;
    assert!(net.r(1).on_cell(me, &bad, 5).is_err());
    net.pump(5);
    let charged = net
        .take_events(1)
        .iter()
        .filter(|e| matches!(e, OnionEvent::Misbehaved { peer, .. } if *peer == me))
        .count();
    assert_eq!(charged, 2);
}

#[test]
fn relay_state_per_peer_and_waiting_messages_are_bounded() {
    let config = OnionConfig {
        max_circuits_per_peer: 2,
        max_pending_messages: 1,
        ..OnionConfig::default()
    };
    let mut net = Net::new(6, config);
    // Three circuits from one client through the same first relay: the third is refused.
    for (i, d) in [3_usize, 4, 5].into_iter().enumerate() {
        let dest = net.key(d);
        let path = [net.key(1), net.key(2)];
        net.r(0).build(dest, &path, i as u64).unwrap();
        net.pump(i as u64);
    }
    let (d3, d4, d5) = (net.p(3), net.p(4), net.p(5));
    assert!(net.r(0).is_ready(&d3));
    assert!(net.r(0).is_ready(&d4));
    assert!(
        !net.r(0).has_circuit(&d5),
        "refused circuit closed at the client"
    );
    assert_eq!(net.r(1).relayed_circuits(), 2);
    let client = net.p(0);
    let mut fresh = vec![0_u8; CELL_LEN];
    fresh[3] = 9;
    fresh[4] = 1;
    fresh[5] = 9;
    assert!(matches!(
        net.r(1).on_cell(client, &fresh, 9),
        Err(MeshError::OnionLimit {
            what: "circuits",
            max: 2
        })
    ));
    // One message may wait for a circuit being built, not two.
    let dest = net.key(5);
    let path = [net.key(2)];
    net.r(0).build(dest, &path, 10).unwrap();
    assert!(!net.r(0).send(&dest.0, vec![1]).unwrap());
    assert!(matches!(
        net.r(0).send(&dest.0, vec![2]),
        Err(MeshError::OnionLimit { .. })
    ));
    // Paths out of bounds are refused.
    let nine: Vec<_> = (0..9).map(|_| net.key(1)).collect();
    assert!(matches!(
        net.r(0).build(dest, &nine, 11),
        Err(MeshError::OnionPath { .. })
    ));
    assert!(matches!(
        net.r(0).build(dest, &[], 11),
        Err(MeshError::OnionPath { .. })
    ));
    let mine = net.key(0);
    assert!(matches!(
        net.r(0).build(dest, &[mine], 11),
        Err(MeshError::OnionPath { .. })
    ));
}

#[test]
fn an_extension_to_an_unreachable_hop_fails_back_to_the_client() {
    let config = OnionConfig::default();
    let mut net = Net::new(4, config);
    let dest = net.p(3);
    // Relay 2 never answers its CREATE: relay 1's extension times out and
    // refuses back; the client closes the circuit.
    net.gone.push(net.p(2));
    let path = [net.key(1), net.key(2)];
    let dk = net.key(3);
    net.r(0).build(dk, &path, 0).unwrap();
    net.pump(0);
    net.r(1).tick(config.build_timeout_ms);
    net.pump(config.build_timeout_ms);
    assert!(net.take_events(0).iter().any(|e| matches!(
        e,
        OnionEvent::CircuitClosed { dest: d, reason: CloseReason::ExtendFailed, .. } if *d == dest
    )));
}
