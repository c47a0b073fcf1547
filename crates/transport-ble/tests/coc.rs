//! L2CAP connection-oriented channels in the simulator: two offering radios open one
//! (its SDU MTU, the connection-level channel limit, credits that pace rather than
//! drop, in-order delivery), a radio without one gets GATT, and transports over a mixed
//! neighbourhood run each link over what both ends offer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_ble::engine::{ConnId, DeviceAddr, EngineConfig, Role};
use ecomesh_transport_ble::frag::Channel;
use ecomesh_transport_ble::gatt::{Advertisement, L2CAP_PSM};
use ecomesh_transport_ble::presence::{PresenceKey, PresenceTag};
use ecomesh_transport_ble::radio::{Radio, RadioEvent};
use ecomesh_transport_ble::sim::{SimAir, SimCoc, SimConfig, SimRadio};
use ecomesh_transport_ble::{BleConfig, BleError, BleTransport};
use ecomesh_types::{NetworkMessage, TransportAdapter, TransportEvent};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn addr(i: u8) -> DeviceAddr {
    DeviceAddr([0xC0, 0, 0, 0, 1, i])
}

fn fast() -> SimConfig {
    SimConfig {
        adv_interval: Duration::from_millis(10),
        ..SimConfig::default()
    }
}

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

async fn radio(
    air: &SimAir,
    i: u8,
    coc: Option<SimCoc>,
    queue: usize,
) -> (SimRadio, mpsc::Receiver<RadioEvent>) {
    let r = air.radio(addr(i), (f64::from(i), 0.0), 247, 7).unwrap();
    air.offer_coc(addr(i), coc).unwrap();
    let (tx, rx) = mpsc::channel(queue);
    r.start(tx).await.unwrap();
    r.advertise(Advertisement {
        tag: PresenceTag([i; 6]),
    })
    .await
    .unwrap();
    (r, rx)
}

async fn dial(
    r: &SimRadio,
    rx: &mut mpsc::Receiver<RadioEvent>,
    to: DeviceAddr,
) -> (ConnId, Channel) {
    r.connect(to).await.unwrap();
    next(rx, |e| match e {
        RadioEvent::Connected {
            conn,
            addr,
            channel,
            role: Role::Central,
        } if *addr == to => Some((*conn, *channel)),
        RadioEvent::ConnectFailed { addr } if *addr == to => panic!("dial of {to} failed"),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn offering_radios_open_a_channel_at_the_smaller_mtu_others_get_gatt() {
    let air = SimAir::new(fast());
    let big = SimCoc::default();
    let small = SimCoc {
        mtu: 1000,
        max_channels: 1,
        ..SimCoc::default()
    };
    let (a, mut ra) = radio(&air, 1, Some(big), 1024).await;
    let (_b, mut rb) = radio(&air, 2, Some(small), 1024).await;
    let (_c, _rc) = radio(&air, 3, None, 1024).await;
    let (_d, _rd) = radio(&air, 4, Some(big), 1024).await;
    let want = Channel::Coc {
        psm: L2CAP_PSM,
        sdu_mtu: 1000,
    };
    let (ab, ch) = dial(&a, &mut ra, addr(2)).await;
    assert_eq!(ch, want);
    let peer_side = next(&mut rb, |e| match e {
        RadioEvent::Connected {
            channel,
            role: Role::Peripheral,
            ..
        } => Some(*channel),
        _ => None,
    })
    .await;
    assert_eq!(peer_side, want);
    // A radio without a channel: GATT at the ATT MTU.
    assert_eq!(
        dial(&a, &mut ra, addr(3)).await.1,
        Channel::Gatt { mtu: 247 }
    );
    // b is at its limit of one channel: a second connection with it is GATT.
    let (_, again) = dial(&a, &mut ra, addr(2)).await;
    assert_eq!(again, Channel::Gatt { mtu: 247 });
    assert_eq!(
        dial(&a, &mut ra, addr(4)).await.1,
        Channel::Coc {
            psm: L2CAP_PSM,
            sdu_mtu: 4099
        }
    );
    // An SDU is bounded by the channel's MTU, not the ATT MTU.
    a.transmit(ab, vec![7; 1000]).await.unwrap();
    assert!(matches!(
        a.transmit(ab, vec![7; 1001]).await,
        Err(BleError::FragmentTooLarge {
            len: 1001,
            max: 1000
        })
    ));
    let got = next(&mut rb, |e| match e {
        RadioEvent::Received { bytes, .. } => Some(bytes.len()),
        _ => None,
    })
    .await;
    assert_eq!(got, 1000);
    let s = air.stats();
    assert_eq!((s.coc_sdus, s.gatt_values), (1, 0));
    // 1000 bytes + 2 of SDU length at an MPS of 247: 5 K-frames.
    assert_eq!(s.coc_kframes, 5);
    assert!(
        air.offer_coc(addr(1), Some(SimCoc { mps: 10, ..big }))
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_pace_a_busy_receiver_without_loss_or_reordering() {
    let air = SimAir::new(SimConfig {
        adv_interval: Duration::from_secs(3600),
        ..SimConfig::default()
    });
    let coc = SimCoc {
        credits: 2,
        ..SimCoc::default()
    };
    let (a, mut ra) = radio(&air, 1, Some(coc), 64).await;
    // The receiving host takes at most 4 events before it reads.
    let (_b, mut rb) = radio(&air, 2, Some(coc), 4).await;
    let (conn, ch) = dial(&a, &mut ra, addr(2)).await;
    assert!(ch.is_coc());
    const N: u16 = 40;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            a.transmit(conn, i.to_be_bytes().repeat(100)).await.unwrap();
        }
        a
    });
    // b's host holds 4 events and the channel 2 credits: the 40 SDUs can only arrive
    // if the sender waited for credits (a GATT link drops at the first full queue).
    let mut got = Vec::new();
    while got.len() < usize::from(N) {
        match next(&mut rb, |e| Some(e.clone())).await {
            RadioEvent::Received { bytes, .. } => {
                got.push(u16::from_be_bytes([bytes[0], bytes[1]]));
                assert_eq!(bytes.len(), 200);
            }
            RadioEvent::Connected { .. } | RadioEvent::Advertisement { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let a = sender.await.unwrap();
    // The end of the channel comes after its last SDU.
    a.transmit(conn, vec![9; 3]).await.unwrap();
    a.disconnect(conn).await.unwrap();
    let not_adv =
        |e: &RadioEvent| (!matches!(e, RadioEvent::Advertisement { .. })).then(|| e.clone());
    let tail: Vec<RadioEvent> = vec![next(&mut rb, not_adv).await, next(&mut rb, not_adv).await];
    assert!(matches!(&tail[0], RadioEvent::Received { bytes, .. } if bytes == &[9; 3]));
    assert!(matches!(tail[1], RadioEvent::Disconnected { .. }));
    assert_eq!(air.stats().gatt_values, 0);
}

fn transport(air: &SimAir, i: u8, coc: Option<SimCoc>) -> BleTransport {
    let id = Identity::generate().unwrap();
    let radio = air.radio(addr(i), (f64::from(i), 0.0), 247, 7).unwrap();
    air.offer_coc(addr(i), coc).unwrap();
    let mut cfg = BleConfig::new(PresenceKey::derive(&[i]));
    cfg.engine = EngineConfig {
        dial_grace_ms: 100,
        reconnect_base_ms: 20,
        reconnect_max_ms: 200,
        ..EngineConfig::default()
    };
    BleTransport::new(id, AccessPolicy::Open, Arc::new(radio), cfg)
}

fn message(from: &BleTransport, len: usize) -> NetworkMessage {
    ecomesh_transport_tests::test_message(from.peer_id(), None, vec![0x5A; len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_neighbourhood_runs_each_link_over_what_both_ends_offer() {
    let air = SimAir::new(fast());
    let a = transport(&air, 1, Some(SimCoc::default()));
    let b = transport(&air, 2, Some(SimCoc::default()));
    let c = transport(&air, 3, None);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = a.subscribe(Arc::new(move |e: &TransportEvent| {
        let _ = tx.send(e.clone());
    }));
    let (btx, mut brx) = mpsc::unbounded_channel();
    let _bsub = b.subscribe(Arc::new(move |e: &TransportEvent| {
        let _ = btx.send(e.clone());
    }));
    let (ctx, mut crx) = mpsc::unbounded_channel();
    let _csub = c.subscribe(Arc::new(move |e: &TransportEvent| {
        let _ = ctx.send(e.clone());
    }));
    for t in [&a, &b, &c] {
        t.start().await.unwrap();
    }
    let mut left = vec![b.peer_id(), c.peer_id()];
    tokio::time::timeout(WAIT, async {
        while !left.is_empty() {
            if let Some(TransportEvent::PeerDiscovered(i)) = rx.recv().await {
                left.retain(|p| *p != i.peer_id);
            }
        }
    })
    .await
    .expect("a links with b and c");
    assert_eq!(
        a.link_channel(b.peer_id()).await.unwrap(),
        Some(Channel::Coc {
            psm: L2CAP_PSM,
            sdu_mtu: 4099
        })
    );
    assert_eq!(
        a.link_channel(c.peer_id()).await.unwrap(),
        Some(Channel::Gatt { mtu: 247 })
    );
    // A 60 KB message to each: over the channel to b, over GATT to c.
    let before = air.stats();
    a.send(b.peer_id(), message(&a, 60_000)).await.unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(TransportEvent::Message { message, .. }) = brx.recv().await {
                return message;
            }
        }
    })
    .await
    .expect("b receives");
    assert_eq!(got.payload.len(), 60_000);
    let mid = air.stats();
    // About 15 Noise units of at most 4096 bytes, one SDU each, credits on top.
    let sdus = mid.coc_sdus - before.coc_sdus;
    assert!((15..=40).contains(&sdus), "{sdus} SDUs");
    a.send(c.peer_id(), message(&a, 60_000)).await.unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(TransportEvent::Message { message, .. }) = crx.recv().await {
                return message;
            }
        }
    })
    .await
    .expect("c receives");
    assert_eq!(got.payload.len(), 60_000);
    let end = air.stats();
    // Over GATT at 247: 244-byte values, some 250 of them.
    let values = end.gatt_values - mid.gatt_values;
    assert!(values >= 60_000 / 244, "{values} GATT values");
    for t in [&a, &b, &c] {
        t.stop().await.unwrap();
    }
}
