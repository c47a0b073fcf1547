//! The radio simulator's link model (range and RSSI by position, MTU negotiation,
//! connection limits, loss) through the `Radio` trait, and transports on it: who links
//! with whom follows range, and links dropped by the air come back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_ble::engine::{DeviceAddr, EngineConfig, Role};
use ecomesh_transport_ble::frag::Channel;
use ecomesh_transport_ble::gatt::Advertisement;
use ecomesh_transport_ble::presence::{PresenceKey, PresenceTag};
use ecomesh_transport_ble::radio::{Radio, RadioEvent};
use ecomesh_transport_ble::sim::{SimAir, SimConfig, rssi_at};
use ecomesh_transport_ble::{BleConfig, BleError, BleTransport};
use ecomesh_types::{TransportAdapter, TransportEvent};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn addr(i: u8) -> DeviceAddr {
    DeviceAddr([0xC0, 0, 0, 0, 0, i])
}

fn fast() -> SimConfig {
    SimConfig {
        adv_interval: Duration::from_millis(10),
        ..SimConfig::default()
    }
}

/// Waits (bounded) for the first event matching `want`.
async fn next<T>(
    rx: &mut mpsc::Receiver<RadioEvent>,
    mut want: impl FnMut(&RadioEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = rx.recv().await.expect("radio event channel open");
            if let Some(t) = want(&ev) {
                return t;
            }
        }
    })
    .await
    .expect("event within the deadline")
}

async fn started(
    air: &SimAir,
    i: u8,
    pos: (f64, f64),
    mtu: u16,
    conns: usize,
) -> (Arc<dyn Radio>, mpsc::Receiver<RadioEvent>) {
    let r = air.radio(addr(i), pos, mtu, conns).unwrap();
    let (tx, rx) = mpsc::channel(1024);
    r.start(tx).await.unwrap();
    r.advertise(Advertisement {
        tag: PresenceTag([i; 6]),
    })
    .await
    .unwrap();
    (Arc::new(r), rx)
}

#[tokio::test]
async fn rssi_falls_with_distance_and_range_bounds_hearing() {
    assert_eq!(rssi_at(1.0), -59);
    assert_eq!(rssi_at(10.0), -79);
    assert_eq!(rssi_at(100.0), -99);
    let air = SimAir::new(fast());
    let (_a, mut ra) = started(&air, 1, (0.0, 0.0), 247, 4).await;
    let (_b, _rb) = started(&air, 2, (10.0, 0.0), 247, 4).await;
    let (_c, _rc) = started(&air, 3, (150.0, 0.0), 247, 4).await;
    let rssi = next(&mut ra, |e| match e {
        RadioEvent::Advertisement { addr: a, rssi, .. } if *a == addr(2) => Some(*rssi),
        RadioEvent::Advertisement { addr: a, .. } if *a == addr(3) => panic!("heard 150 m away"),
        _ => None,
    })
    .await;
    assert_eq!(rssi, -79);
    // Forcing the far pair in range lets it be heard.
    air.set_link(addr(1), addr(3), Some(true));
    next(&mut ra, |e| match e {
        RadioEvent::Advertisement { addr: a, .. } if *a == addr(3) => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn mtu_is_negotiated_and_values_over_it_are_refused() {
    let air = SimAir::new(fast());
    let (a, mut ra) = started(&air, 1, (0.0, 0.0), 517, 4).await;
    let (_b, mut rb) = started(&air, 2, (5.0, 0.0), 185, 4).await;
    a.connect(addr(2)).await.unwrap();
    let (conn, mtu) = next(&mut ra, |e| match e {
        RadioEvent::Connected {
            conn,
            channel: Channel::Gatt { mtu },
            role: Role::Central,
            ..
        } => Some((*conn, *mtu)),
        _ => None,
    })
    .await;
    assert_eq!(mtu, 185);
    let peer_mtu = next(&mut rb, |e| match e {
        RadioEvent::Connected {
            channel: Channel::Gatt { mtu },
            role: Role::Peripheral,
            ..
        } => Some(*mtu),
        _ => None,
    })
    .await;
    assert_eq!(peer_mtu, 185);
    a.transmit(conn, vec![1; 182]).await.unwrap();
    assert!(matches!(
        a.transmit(conn, vec![1; 183]).await,
        Err(BleError::FragmentTooLarge { len: 183, max: 182 })
    ));
    let got = next(&mut rb, |e| match e {
        RadioEvent::Received { bytes, .. } => Some(bytes.len()),
        _ => None,
    })
    .await;
    assert_eq!(got, 182);
}

#[tokio::test]
async fn connection_limits_refuse_and_leaving_range_drops() {
    let air = SimAir::new(fast());
    let (a, mut ra) = started(&air, 1, (0.0, 0.0), 247, 1).await;
    let (_b, mut rb) = started(&air, 2, (5.0, 0.0), 247, 4).await;
    let (_c, _rc) = started(&air, 3, (0.0, 5.0), 247, 4).await;
    a.connect(addr(2)).await.unwrap();
    next(&mut ra, |e| {
        matches!(e, RadioEvent::Connected { .. }).then_some(())
    })
    .await;
    // At its limit of one connection, a cannot dial c.
    a.connect(addr(3)).await.unwrap();
    let failed = next(&mut ra, |e| match e {
        RadioEvent::ConnectFailed { addr } => Some(*addr),
        _ => None,
    })
    .await;
    assert_eq!(failed, addr(3));
    // b walks away: both ends see the connection drop.
    air.set_position(addr(2), (500.0, 0.0));
    next(&mut ra, |e| {
        matches!(e, RadioEvent::Disconnected { .. }).then_some(())
    })
    .await;
    next(&mut rb, |e| {
        matches!(e, RadioEvent::Disconnected { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_lossy_link_drops_the_connection() {
    let air = SimAir::new(SimConfig {
        drop_per_value: 1.0,
        ..fast()
    });
    let (a, mut ra) = started(&air, 1, (0.0, 0.0), 247, 4).await;
    let (_b, _rb) = started(&air, 2, (5.0, 0.0), 247, 4).await;
    a.connect(addr(2)).await.unwrap();
    let conn = next(&mut ra, |e| match e {
        RadioEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    assert!(a.transmit(conn, vec![1]).await.is_err());
    next(&mut ra, |e| {
        matches!(e, RadioEvent::Disconnected { .. }).then_some(())
    })
    .await;
}

fn transport(air: &SimAir, i: u8, pos: (f64, f64), key: &PresenceKey) -> BleTransport {
    let id = Identity::generate().unwrap();
    let radio = air.radio(addr(i), pos, 247, 7).unwrap();
    let mut cfg = BleConfig::new(key.clone());
    cfg.engine = EngineConfig {
        dial_grace_ms: 100,
        reconnect_base_ms: 20,
        reconnect_max_ms: 200,
        ..EngineConfig::default()
    };
    BleTransport::new(id, AccessPolicy::Open, Arc::new(radio), cfg)
}

fn events(
    t: &BleTransport,
) -> (
    mpsc::UnboundedReceiver<TransportEvent>,
    ecomesh_types::Subscription,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = t.subscribe(Arc::new(move |e: &TransportEvent| {
        let _ = tx.send(e.clone());
    }));
    (rx, sub)
}

/// Waits (bounded) until every peer of `who` was discovered.
async fn discovered(
    rx: &mut mpsc::UnboundedReceiver<TransportEvent>,
    who: &[ecomesh_types::PeerId],
) {
    let mut left: Vec<_> = who.to_vec();
    tokio::time::timeout(WAIT, async {
        while !left.is_empty() {
            if let Some(TransportEvent::PeerDiscovered(i)) = rx.recv().await {
                left.retain(|p| *p != i.peer_id);
            }
        }
    })
    .await
    .expect("discovered within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_link_by_range_and_relink_after_drops() {
    // a - b - c in a line, 30 m apart (-89 dBm) with a 50 m range: a and c never hear
    // each other.
    let air = SimAir::new(SimConfig {
        range_m: 50.0,
        ..fast()
    });
    let key = PresenceKey::derive(b"sim");
    let a = transport(&air, 1, (0.0, 0.0), &key);
    let b = transport(&air, 2, (30.0, 0.0), &key);
    let c = transport(&air, 3, (60.0, 0.0), &key);
    let (mut ea, _sa) = events(&a);
    let (mut eb, _sb) = events(&b);
    let (mut ec, _sc) = events(&c);
    for t in [&a, &b, &c] {
        t.start().await.unwrap();
    }
    discovered(&mut ea, &[b.peer_id()]).await;
    discovered(&mut ec, &[b.peer_id()]).await;
    discovered(&mut eb, &[a.peer_id(), c.peer_id()]).await;
    assert!(!a.peers().iter().any(|p| p.peer_id == c.peer_id()));
    // b walks out of everyone's range, then back: the links come back on their own.
    air.set_position(addr(2), (30.0, 500.0));
    for rx in [&mut ea, &mut ec] {
        let lost = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(TransportEvent::PeerLost(p)) = rx.recv().await
                    && p == b.peer_id()
                {
                    return;
                }
            }
        });
        lost.await.expect("b lost within the deadline");
    }
    assert!(a.peers().is_empty() && c.peers().is_empty());
    air.set_position(addr(2), (30.0, 0.0));
    discovered(&mut ea, &[b.peer_id()]).await;
    discovered(&mut ec, &[b.peer_id()]).await;
    assert!(!a.peers().iter().any(|p| p.peer_id == c.peer_id()));
    for t in [&a, &b, &c] {
        t.stop().await.unwrap();
    }
}
