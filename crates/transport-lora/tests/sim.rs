//! The LoRa transport on simulated radios with collisions: a message crosses a 5-node
//! line over 4 hops, the duty cycle holds under a flood, hostile bytes on the serial line
//! are survived.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_lora::airtime::DutyBudget;
use ecomesh_transport_lora::proto::{Data, FromRadio, FromRadioVariant, MeshPacket, PRIVATE_APP};
use ecomesh_transport_lora::serial::encode_from_radio;
use ecomesh_transport_lora::sim::{SimChannel, SimConfig};
use ecomesh_transport_lora::{LoraTransport, frame};
use ecomesh_transport_tests::{EventLog, test_message};
use ecomesh_types::{Error, PeerId, Priority, TransportAdapter, TransportEvent};

const LONG: Duration = Duration::from_secs(90);

async fn until_ok<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LONG;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_line_delivers_over_four_hops() {
    let chan = SimChannel::new(SimConfig::default());
    let mut nodes = Vec::new();
    for _ in 0..5 {
        let (t, r) = common::transport_on(
            &chan,
            Identity::generate().unwrap(),
            AccessPolicy::Open,
            common::fast_engine(),
        )
        .await
        .unwrap();
        nodes.push((Arc::new(t), r));
    }
    for i in 0..4 {
        chan.link(nodes[i].1.node, nodes[i + 1].1.node, 0.0);
    }
    let ids: Vec<PeerId> = nodes.iter().map(|(t, _)| t.peer_id()).collect();
    let log_e = EventLog::attach(nodes[4].0.as_ref());
    // Neighbours connect by themselves; beacons flood routes along the line.
    let a = nodes[0].0.clone();
    let msg = test_message(ids[0], Some(ids[4]), vec![0xAB; 300]);
    let m2 = msg.clone();
    until_ok("a route from A to E", || {
        let (a, m, e) = (a.clone(), m2.clone(), ids[4]);
        async move {
            match a.send(e, m).await {
                Ok(()) => true,
                Err(Error::Unreachable(_)) => false,
                Err(other) => panic!("send: {other}"),
            }
        }
    })
    .await;
    let got = log_e
        .wait_for(
            0,
            "E to receive A's message",
            LONG,
            |ev| matches!(ev, TransportEvent::Message { message, .. } if message.id == msg.id),
        )
        .await
        .unwrap();
    let TransportEvent::Message { from, message } = got else {
        unreachable!()
    };
    assert_eq!(message, msg);
    assert_eq!(from, ids[3], "handed over by E's neighbour D");
    assert!(
        !nodes[0].0.peers().iter().any(|p| p.peer_id == ids[4]),
        "E is not A's neighbour"
    );
    // B, C and D each relayed sealed frames.
    let txs = chan.transmissions();
    for (_, r) in &nodes[1..4] {
        assert!(txs.iter().any(|t| t.node == r.node
            && matches!(
                t.payload.first(),
                Some(&frame::K_SEALED | &frame::K_SEALED_PART)
            )));
    }
    for (t, _) in &nodes {
        t.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duty_cycle_holds_under_a_flood() {
    let chan = SimChannel::new(SimConfig {
        collisions: false,
        ..SimConfig::default()
    });
    let mut engine = common::fast_engine();
    let budget = DutyBudget {
        permille: 100,
        window_ms: 4_000,
    };
    engine.duty = budget;
    engine.duty_guard_ms = engine.radio.max_packet_airtime_ms() + 300;
    let (a, ra) = common::transport_on(
        &chan,
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        engine.clone(),
    )
    .await
    .unwrap();
    let (b, rb) = common::transport_on(
        &chan,
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        engine,
    )
    .await
    .unwrap();
    chan.link(ra.node, rb.node, 0.0);
    let lb = EventLog::attach(&b);
    a.connect_to_peer(b.peer_id()).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..16u8 {
        let m = test_message(a.peer_id(), Some(b.peer_id()), vec![i; 30]);
        a.send_with_priority(b.peer_id(), m.clone(), Priority::Low)
            .await
            .unwrap();
        sent.push(m);
    }
    // An urgent message overtakes the queued flood.
    let urgent = test_message(a.peer_id(), Some(b.peer_id()), b"urgent".to_vec());
    a.send_with_priority(b.peer_id(), urgent.clone(), Priority::Critical)
        .await
        .unwrap();
    let queued = a.status().await.unwrap().queued;
    assert!(
        queued > 4,
        "the flood is queued behind the budget ({queued})"
    );
    let last = sent.last().unwrap().id;
    lb.wait_for(
        0,
        "b to receive the end of the flood",
        LONG,
        |e| matches!(e, TransportEvent::LinkMessage { message, .. } if message.id == last),
    )
    .await
    .unwrap();
    let order: Vec<_> = lb
        .events()
        .iter()
        .filter_map(|e| match e {
            TransportEvent::LinkMessage { message, .. } => Some(message.id),
            _ => None,
        })
        .collect();
    let pos = order.iter().position(|id| *id == urgent.id).unwrap();
    assert!(
        pos < order.len() - 1,
        "critical before the end of the low-priority flood"
    );
    let worst = chan.max_window_airtime_ms(ra.node, budget.window_ms);
    assert!(
        worst <= budget.allowance_ms(),
        "worst window {worst} ms > {} ms",
        budget.allowance_ms()
    );
    assert!(
        worst * 2 > budget.allowance_ms(),
        "the flood used the budget ({worst} ms)"
    );
    // Bulk is refused outright.
    let bulk = test_message(a.peer_id(), Some(b.peer_id()), vec![1; 10]);
    assert!(matches!(
        a.send_with_priority(b.peer_id(), bulk, Priority::Bulk)
            .await,
        Err(Error::Backend(_))
    ));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

fn packet_frame(from: u32, payload: Vec<u8>) -> Vec<u8> {
    encode_from_radio(&FromRadio {
        id: 9,
        payload_variant: Some(FromRadioVariant::Packet(MeshPacket {
            from,
            to: 0xFFFF_FFFF,
            decoded: Some(Data {
                portnum: PRIVATE_APP,
                payload,
                want_response: false,
                request_id: 0,
            }),
            ..Default::default()
        })),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_serial_input_is_survived() {
    let chan = SimChannel::new(SimConfig::default());
    let (a, ra) = common::transport_on(
        &chan,
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        common::fast_engine(),
    )
    .await
    .unwrap();
    let (b, rb) = common::transport_on(
        &chan,
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        common::fast_engine(),
    )
    .await
    .unwrap();
    chan.link(ra.node, rb.node, 0.0);
    let (la, lb) = (EventLog::attach(&a), EventLog::attach(&b));
    a.connect_to_peer(b.peer_id()).await.unwrap();
    let mut x = 0x1234_5678_9abc_def1u64;
    let garbage: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    ra.inject(&garbage).unwrap();
    // Truncated frame, oversized frame header, a frame that is not a protobuf.
    ra.inject(&[0x94, 0xC3, 0x01, 0x00, 1, 2, 3]).unwrap();
    ra.inject(&[0x94, 0xC3, 0xFF, 0xFF, 0x08, 0x01]).unwrap();
    ra.inject(&[0x94, 0xC3, 0x00, 0x03, 0xFF, 0xFF, 0xFF])
        .unwrap();
    // Well-formed packets with hostile ecomesh frames: unknown kind, forged sealed frame,
    // presence with a bad MAC, oversized payload, a handshake for us that is garbage.
    let me = frame::short_id(&a.peer_id());
    for payload in [
        vec![0x42; 20],
        [vec![frame::K_SEALED, 0, 1, 0, 0, 0, 1], vec![0; 40]].concat(),
        [vec![frame::K_PRESENCE, 0x50], vec![1; 30]].concat(),
        vec![frame::K_ANNOUNCE; 240],
        [vec![frame::K_HS1, 9, 9, 9, 9], me.to_vec(), vec![7; 190]].concat(),
    ] {
        ra.inject(&packet_frame(0x0BAD_0BAD, payload)).unwrap();
    }
    // The link still works both ways.
    for (from, to, log) in [(&a, &b, &lb), (&b, &a, &la)] {
        let m = test_message(from.peer_id(), Some(to.peer_id()), b"after".to_vec());
        let mark = log.mark();
        from.send(to.peer_id(), m.clone()).await.unwrap();
        let got = log
            .wait_message(mark, from.peer_id(), m.id, "receiver")
            .await
            .unwrap();
        assert!(got.is(&m), "{got:?}");
        assert!(
            got.link,
            "straight from its sender: sealed without sender and signature"
        );
    }
    assert_eq!(a.peers().len(), 1);
    // The garbage was read (before the messages that followed it) and skipped.
    assert!(a.status().await.unwrap().serial_skipped >= 8192 / 2);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_radio_fails_start_with_a_typed_error() {
    let t = LoraTransport::new(
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        ecomesh_transport_lora::LoraConfig::new("/dev/ecomesh-no-such-radio"),
    );
    assert!(t.start().await.is_err());
    assert!(!t.is_active());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_frames_reach_compact_listeners() {
    use ecomesh_transport_lora::frame::{Body, PermissionGrant};
    let chan = SimChannel::new(SimConfig::default());
    let (a, ra) = common::transport_on(
        &chan,
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        common::fast_engine(),
    )
    .await
    .unwrap();
    let (b, rb) = common::transport_on(
        &chan,
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        common::fast_engine(),
    )
    .await
    .unwrap();
    chan.link(ra.node, rb.node, 0.0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = b.subscribe_compact(Arc::new(move |e: &ecomesh_transport_lora::CompactEvent| {
        let _ = tx.send(e.clone());
    }));
    a.connect_to_peer(b.peer_id()).await.unwrap();
    let grant = Body::Grant(PermissionGrant {
        grantee: b.peer_id(),
        resource: 42,
        actions: 1,
        expires_secs: 1_900_000_000,
    });
    a.send_compact(b.peer_id(), grant.clone(), Priority::High)
        .await
        .unwrap();
    let got = tokio::time::timeout(LONG, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.body, grant);
    assert_eq!(got.from, a.peer_id());
    assert_eq!(got.origin, frame::short_id(&a.peer_id()));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_radio_stops_the_transport_and_loses_its_peers() {
    let chan = SimChannel::new(SimConfig::default());
    let (a, ra) = common::transport_on(
        &chan,
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        common::fast_engine(),
    )
    .await
    .unwrap();
    let (b, rb) = common::transport_on(
        &chan,
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        common::fast_engine(),
    )
    .await
    .unwrap();
    chan.link(ra.node, rb.node, 0.0);
    let la = EventLog::attach(&a);
    a.connect_to_peer(b.peer_id()).await.unwrap();
    let mark = la.mark();
    ra.unplug();
    la.wait_lost(mark, b.peer_id(), "a").await.unwrap();
    assert!(!a.is_active());
    assert!(a.peers().is_empty());
    b.stop().await.unwrap();
}
