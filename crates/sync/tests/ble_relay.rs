//! Issue 18: nodes that meet only over Bluetooth LE, in a line. Three nodes on
//! the BLE radio simulator, `a - b - c`, 30 m apart with a 50 m range, so `a`
//! and `c` never hear each other: a document written on `a` reaches `c` through
//! `b` (a replica on the way), and a text from `a` to `c`, whose key `a` never
//! saw, is sealed after key discovery through `b`, relayed by `b` and
//! acknowledged back the same way.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fields, test_config, wait_until};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_sync::{Node, SetOptions, TextStatus, Value};
use ecomesh_transport_ble::engine::{DeviceAddr, EngineConfig};
use ecomesh_transport_ble::presence::PresenceKey;
use ecomesh_transport_ble::sim::{SimAir, SimConfig};
use ecomesh_transport_ble::{BleConfig, BleTransport};
use ecomesh_types::{PeerId, TransportAdapter};

const LIMIT: Duration = Duration::from_secs(30);

async fn ble_node(
    air: &SimAir,
    seed: u8,
    x: f64,
    dir: &std::path::Path,
) -> (Node, Arc<BleTransport>) {
    let identity = Identity::from_secret_bytes(&[seed; 32]);
    let radio = air
        .radio(DeviceAddr([0xB1, 0, 0, 0, 0, seed]), (x, 0.0), 247, 7)
        .unwrap();
    let mut cfg = BleConfig::new(PresenceKey::derive(&[seed]));
    cfg.engine = EngineConfig {
        dial_grace_ms: 100,
        ..EngineConfig::default()
    };
    let transport = Arc::new(BleTransport::new(
        identity.clone(),
        AccessPolicy::Open,
        Arc::new(radio),
        cfg,
    ));
    transport.start().await.unwrap();
    let node = Node::builder(dir)
        .identity(identity)
        .transport(transport.clone())
        .config(test_config())
        .start()
        .await
        .unwrap();
    (node, transport)
}

fn linked(t: &BleTransport) -> Vec<PeerId> {
    t.peers().iter().map(|p| p.peer_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_and_a_text_cross_two_ble_hops() {
    let air = SimAir::new(SimConfig {
        range_m: 50.0,
        adv_interval: Duration::from_millis(10),
        ..SimConfig::default()
    });
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, ta) = ble_node(&air, 1, 0.0, dirs[0].path()).await;
    let (b, tb) = ble_node(&air, 2, 30.0, dirs[1].path()).await;
    let (c, tc) = ble_node(&air, 3, 60.0, dirs[2].path()).await;
    wait_until(LIMIT, "b links a and c", || {
        let got = linked(&tb);
        let (a, c) = (a.peer_id(), c.peer_id());
        async move { got.contains(&a) && got.contains(&c) }
    })
    .await;

    a.collection("notes")
        .doc("n1")
        .set(fields(&[("title", "over BLE")]), SetOptions::REPLACE)
        .await
        .unwrap();
    let on_c = c.collection("notes").doc("n1");
    wait_until(LIMIT, "c has a's note", || {
        let doc = on_c.clone();
        async move {
            matches!(doc.get().await, Ok(Some(d))
                if d.fields.get("title") == Some(&Value::Text("over BLE".into())))
        }
    })
    .await;

    let sent = a
        .send_text(c.peer_id(), "two hops away".into())
        .await
        .unwrap();
    wait_until(LIMIT, "a sees the text delivered", || {
        let a = a.clone();
        async move {
            a.outbox()
                .unwrap()
                .iter()
                .any(|m| m.id == sent.id.to_string() && m.status == TextStatus::Delivered)
        }
    })
    .await;
    let inbox = c.inbox().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].text, "two hops away");
    assert_eq!(inbox[0].from, a.peer_id().to_string());
    assert!(
        b.inbox().unwrap().is_empty(),
        "the relay delivers nothing to itself"
    );
    assert!(
        !linked(&ta).contains(&c.peer_id()) && !linked(&tc).contains(&a.peer_id()),
        "a and c stayed out of range of each other"
    );
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}
