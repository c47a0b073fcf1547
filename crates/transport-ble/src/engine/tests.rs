#![allow(clippy::unwrap_used)]

use ecomesh_types::{MessageId, Signature};

use super::*;

fn id(seed: u8) -> Identity {
    Identity::from_secret_bytes(&[seed; 32])
}

fn addr(i: u8) -> DeviceAddr {
    DeviceAddr([i, 0, 0, 0, 0, 1])
}

fn msg(sender: PeerId, n: usize) -> NetworkMessage {
    NetworkMessage {
        id: MessageId([n as u8; 16]),
        message_type: "t".into(),
        payload: vec![n as u8; n],
        sender,
        recipient: None,
        timestamp_ms: 5,
        ttl_secs: 60,
        hop_count: 0,
        max_hops: 10,
        signature: Signature::UNSIGNED,
    }
}

/// A tiny synchronous air for engines: everyone hears everyone, no loss.
struct Air {
    engines: Vec<Engine>,
    /// conn id -> (engine index, other conn id, other engine index)
    links: HashMap<ConnId, (usize, ConnId, usize)>,
    next_conn: ConnId,
    now: u64,
    /// Observed outputs per engine (except transmits).
    log: Vec<Vec<String>>,
    connects: usize,
    /// (engine index, conn) of every disconnect an engine asked for.
    closed: Vec<(usize, ConnId)>,
}

impl Air {
    fn new(n: u8, config: EngineConfig) -> Self {
        let engines = (0..n)
            .map(|i| {
                Engine::new(
                    id(i + 1),
                    Arc::new(AccessPolicy::Open),
                    config,
                    PresenceKey::derive(&[i]),
                    100,
                )
            })
            .collect();
        Air {
            engines,
            links: HashMap::new(),
            next_conn: 1,
            now: 0,
            log: vec![Vec::new(); usize::from(n)],
            connects: 0,
            closed: Vec::new(),
        }
    }

    fn advertise_all(&mut self) {
        for i in 0..self.engines.len() {
            let adv = self.engines[i].advertisement();
            for j in 0..self.engines.len() {
                if i != j {
                    self.engines[j].on_advertisement(addr(i as u8), -60, adv, self.now);
                }
            }
        }
        self.run();
    }

    fn run(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.engines.len() {
                while let Some(o) = self.engines[i].poll_output() {
                    moved = true;
                    self.apply(i, o);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn apply(&mut self, i: usize, o: Output) {
        let now = self.now;
        match o {
            Output::Connect(a) => {
                self.connects += 1;
                let j = usize::from(a.0[0]);
                let (ci, cj) = (self.next_conn, self.next_conn + 1);
                self.next_conn += 2;
                self.links.insert(ci, (i, cj, j));
                self.links.insert(cj, (j, ci, i));
                self.engines[j].on_connected(cj, addr(i as u8), Role::Peripheral, 185, now);
                self.engines[i].on_connected(ci, a, Role::Central, 185, now);
            }
            Output::Transmit { conn, bytes } => {
                if let Some(&(_, other, j)) = self.links.get(&conn) {
                    self.engines[j].on_fragment(other, &bytes, now);
                }
            }
            Output::Disconnect(conn) => {
                self.closed.push((i, conn));
                if let Some((_, other, j)) = self.links.remove(&conn) {
                    self.links.remove(&other);
                    self.engines[j].on_disconnected(other, now);
                }
            }
            Output::PeerUp { peer, .. } => self.log[i].push(format!("up {peer}")),
            Output::PeerDown(peer) => self.log[i].push(format!("down {peer}")),
            Output::Message { message, .. } => {
                self.log[i].push(format!("msg {}", message.payload.len()))
            }
            Output::ConnectDone { peer, result } => {
                self.log[i].push(format!("done {peer} {}", result.is_ok()))
            }
            Output::Misbehaved { peer, .. } => self.log[i].push(format!("charge {peer}")),
            Output::Advertise(_) => {}
        }
    }

    fn advance(&mut self, to: u64) {
        self.now = to;
        for e in &mut self.engines {
            e.handle_timeout(to);
        }
        self.run();
    }
}

fn cfg() -> EngineConfig {
    EngineConfig {
        dial_grace_ms: 1000,
        ..EngineConfig::default()
    }
}

#[test]
fn two_devices_link_once_and_exchange_both_ways() {
    let mut air = Air::new(2, cfg());
    air.advertise_all();
    // Only the side with the smaller tag dialled.
    assert_eq!(air.connects, 1);
    let (p0, p1) = (air.engines[0].peer_id(), air.engines[1].peer_id());
    assert_eq!(air.log[0], vec![format!("up {p1}")]);
    assert_eq!(air.log[1], vec![format!("up {p0}")]);
    // The grace period passes: no second link.
    air.advance(5000);
    air.advertise_all();
    assert_eq!(air.connects, 1);
    let now = air.now;
    air.engines[0]
        .send(p1, &msg(p0, 3000), Priority::Normal, now)
        .unwrap();
    air.engines[1]
        .send(p0, &msg(p1, 10), Priority::High, now)
        .unwrap();
    air.run();
    assert_eq!(air.log[1].last().unwrap(), "msg 3000");
    assert_eq!(air.log[0].last().unwrap(), "msg 10");
}

#[test]
fn bulk_is_refused_with_a_typed_error_and_unknown_peers_are_unreachable() {
    let mut air = Air::new(2, cfg());
    air.advertise_all();
    let (p0, p1) = (air.engines[0].peer_id(), air.engines[1].peer_id());
    assert!(matches!(
        air.engines[0].send(p1, &msg(p0, 1), Priority::Bulk, 0),
        Err(BleError::BulkRefused)
    ));
    assert!(matches!(
        air.engines[0].broadcast(&msg(p0, 1), Priority::Bulk, 0),
        Err(BleError::BulkRefused)
    ));
    let stranger = id(99).peer_id();
    assert!(matches!(
        air.engines[0].send(stranger, &msg(p0, 1), Priority::Normal, 0),
        Err(BleError::Unreachable(p)) if p == stranger
    ));
}

#[test]
fn disconnect_by_request_is_seen_by_both_and_not_redialled_until_asked() {
    let mut air = Air::new(2, cfg());
    air.advertise_all();
    let (p0, p1) = (air.engines[0].peer_id(), air.engines[1].peer_id());
    air.engines[0].disconnect(p1, 0);
    air.run();
    assert_eq!(air.log[0].last().unwrap(), &format!("down {p1}"));
    assert_eq!(air.log[1].last().unwrap(), &format!("down {p0}"));
    assert!(air.links.is_empty());
    // Advertisements keep coming: nobody dials the parted peer.
    let before = air.connects;
    for t in 1..10 {
        air.advance(t * 2000);
        air.advertise_all();
    }
    assert_eq!(air.connects, before);
    // Asking for it again links them.
    let now = air.now;
    air.engines[1].connect(p0, now);
    air.run();
    assert_eq!(air.log[1].last().unwrap(), &format!("done {p0} true"));
    assert!(air.engines[0].peers().iter().any(|(p, _)| *p == p1));
}

#[test]
fn connection_limit_refuses_strangers_and_makes_room_for_friends() {
    let config = EngineConfig {
        max_links: 2,
        dial_grace_ms: 0,
        ..cfg()
    };
    let mut air = Air::new(4, config);
    // Engine 0 knows engine 3 (shared key, known peer).
    let p3 = air.engines[3].peer_id();
    let k3 = PresenceKey::derive(&[3]);
    air.engines[0].resolver_mut().add_key(k3);
    air.engines[0].resolver_mut().add_peer(p3);
    let now = air.now;
    // 0 hears 1 and 2 first: two links, the limit.
    for j in [1u8, 2] {
        let adv = air.engines[usize::from(j)].advertisement();
        air.engines[0].on_advertisement(addr(j), -70 - i16::from(j), adv, now);
    }
    air.run();
    assert_eq!(air.engines[0].peers().len(), 2);
    // A friend appears: the weakest stranger's link (2, at -72 dBm) makes room.
    let adv = air.engines[3].advertisement();
    air.engines[0].on_advertisement(addr(3), -80, adv, now);
    air.run();
    let mut peers: Vec<PeerId> = air.engines[0].peers().into_iter().map(|(p, _)| p).collect();
    peers.sort();
    let mut want = vec![air.engines[1].peer_id(), p3];
    want.sort();
    assert_eq!(peers, want);
    assert!(air.engines[0].link_count() <= 2);
}

#[test]
fn epoch_change_rotates_the_advertisement() {
    let mut e = Engine::new(
        id(1),
        Arc::new(AccessPolicy::Open),
        cfg(),
        PresenceKey::derive(b"k"),
        7,
    );
    let first = match e.poll_output() {
        Some(Output::Advertise(a)) => a,
        other => panic!("{other:?}"),
    };
    e.set_epoch(7);
    assert!(e.poll_output().is_none());
    e.set_epoch(8);
    match e.poll_output() {
        Some(Output::Advertise(a)) => assert_ne!(a, first),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_fragments_close_the_link_and_back_off() {
    let config = EngineConfig {
        reconnect_base_ms: 5000,
        ..cfg()
    };
    let mut air = Air::new(2, config);
    air.advertise_all();
    let (&c0, _) = air.links.iter().find(|(_, (i, _, _))| *i == 0).unwrap();
    let p1 = air.engines[1].peer_id();
    air.engines[0].on_fragment(c0, &[0xEE, 1, 2], 0);
    air.run();
    assert_eq!(air.log[0].last().unwrap(), &format!("down {p1}"));
    assert!(
        air.log[0].contains(&format!("charge {p1}")),
        "the authenticated sender of garbage is charged: {:?}",
        air.log[0]
    );
    assert!(air.links.is_empty());
    // The address backs off (10 s after one failure), grace period or not.
    let adv = air.engines[1].advertisement();
    let before = air.connects;
    air.now = 1500;
    air.engines[0].on_advertisement(addr(1), -60, adv, 1500);
    air.run();
    assert_eq!(air.connects, before);
    air.now = 10_001;
    air.engines[0].on_advertisement(addr(1), -60, adv, 10_001);
    air.run();
    assert_eq!(air.connects, before + 1);
}

/// A device that connects and never finishes the handshake names no peer: nobody
/// is charged, the link is closed at the handshake timeout and its address backs off.
#[test]
fn a_handshake_never_finished_is_closed_and_charges_no_one() {
    let mut air = Air::new(2, cfg());
    // Engine 1 hears nothing; a silent central connects to it.
    air.engines[1].on_connected(77, addr(9), Role::Peripheral, 185, 0);
    air.run();
    air.advance(120_000);
    assert!(
        air.log[1]
            .iter()
            .all(|l| !l.starts_with("charge") && !l.starts_with("up")),
        "{:?}",
        air.log[1]
    );
    assert!(air.closed.contains(&(1, 77)), "{:?}", air.closed);
    // A fragment on it now is ignored (no panic, no link).
    air.engines[1].on_fragment(77, &[0, 1, 2], 120_001);
    air.run();
    assert!(air.links.is_empty());
}
