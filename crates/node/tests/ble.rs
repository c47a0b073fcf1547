//! `ecomesh node --transports ble:hciN` processes over the stand-in BlueZ
//! (crates/transport-ble/standin): a private dbus-daemon as the system bus and a
//! small `org.bluez` relaying between stand-in adapters. Each node runs the real
//! bluer code path; the nodes have no other transport.
#![cfg(feature = "ble")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
#[path = "../../transport-ble/tests/standin/mod.rs"]
mod standin;

use std::time::{Duration, Instant};

use common::{Node, ok_json, wait_within};
use standin::Standin;

const BT: &str = "bluetooth";
/// Discovery (advertisements every 200 ms, the larger tag dials after 3 s) and a
/// Noise handshake take a few seconds; the bound leaves room on a loaded machine.
const MEET: Duration = Duration::from_secs(45);
const DELIVER: Duration = Duration::from_secs(45);

fn start(node: &mut Node, adapter: &str, bus: &str) {
    node.start_with_env(
        &["--transports", &format!("ble:{adapter}")],
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus)],
    );
}

/// Two nodes in range meet over BLE only, replicate a document and deliver a text;
/// `status` and `peers` name the transport.
#[test]
fn two_nodes_replicate_and_text_over_ble_only() {
    let t0 = Instant::now();
    let standin = Standin::start(2, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ida) = Node::init(dir.path(), "a");
    let (mut b, idb) = Node::init(dir.path(), "b");
    start(&mut a, "hci0", &standin.address);
    start(&mut b, "hci1", &standin.address);
    assert_eq!(a.status()["transports"], serde_json::json!([BT]));
    let (_, took) = wait_within(MEET, "a and b to meet over BLE", || {
        (a.peers_on(BT) == [idb.clone()] && b.peers_on(BT) == [ida.clone()]).then_some(())
    });
    eprintln!("met over BLE in {:.1} s", took.as_secs_f64());

    ok_json(
        &a.data,
        &["doc", "put", "notes", "n1", r#"{"text":"over the air"}"#],
    );
    let want = serde_json::json!({"text": "over the air"});
    let (_, took) = wait_within(DELIVER, "the document on b", || {
        (b.local_fields("notes", "n1") == Some(want.clone())).then_some(())
    });
    eprintln!("document replicated in {:.1} s", took.as_secs_f64());

    ok_json(&a.data, &["send", &idb, "hello over ble"]);
    let (_, took) = wait_within(DELIVER, "the text in b's inbox", || {
        (b.inbox_texts() == [(ida.clone(), "hello over ble".to_owned())]).then_some(())
    });
    eprintln!("text delivered in {:.1} s", took.as_secs_f64());
    a.terminate();
    b.terminate();
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}

/// Three nodes in a line: node 0 and node 2 do not hear each other, node 1 hears
/// both. A document written on node 0 and a text from node 0 to node 2 arrive
/// over BLE through node 1.
#[test]
fn three_nodes_relay_over_ble_when_two_are_out_of_range() {
    let t0 = Instant::now();
    let standin = Standin::start(3, &[(0, 2)]);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (mut n, id) = Node::init(dir.path(), &format!("n{i}"));
        start(&mut n, &format!("hci{i}"), &standin.address);
        nodes.push(n);
        ids.push(id);
    }
    let (_, took) = wait_within(MEET, "0-1 and 1-2 to meet over BLE", || {
        let p1 = nodes[1].peers_on(BT);
        (nodes[0].peers_on(BT).contains(&ids[1])
            && p1.contains(&ids[0])
            && p1.contains(&ids[2])
            && nodes[2].peers_on(BT).contains(&ids[1]))
        .then_some(())
    });
    eprintln!("line met over BLE in {:.1} s", took.as_secs_f64());
    assert!(
        !nodes[0].peers_on(BT).contains(&ids[2]),
        "node 0 has a BLE link to node 2, which is out of its range"
    );

    ok_json(
        &nodes[0].data,
        &["doc", "put", "notes", "far", r#"{"text":"two hops"}"#],
    );
    let want = serde_json::json!({"text": "two hops"});
    let (_, took) = wait_within(DELIVER, "node 0's document on node 2", || {
        (nodes[2].local_fields("notes", "far") == Some(want.clone())).then_some(())
    });
    eprintln!(
        "document crossed two BLE hops in {:.1} s",
        took.as_secs_f64()
    );

    // A text from node 0 to node 2, whose key node 0 never saw: the send finds
    // it through node 1 (key discovery), node 1 relays the text, and node 2's
    // ACK comes back the same way.
    ok_json(&nodes[0].data, &["send", &ids[2], "two hops over ble"]);
    let (_, took) = wait_within(DELIVER, "node 0's text in node 2's inbox", || {
        (nodes[2].inbox_texts() == [(ids[0].clone(), "two hops over ble".to_owned())]).then_some(())
    });
    eprintln!("text crossed two BLE hops in {:.1} s", took.as_secs_f64());
    assert!(
        nodes[1].inbox_texts().is_empty(),
        "the relay delivers nothing to itself"
    );
    assert!(
        !nodes[0].peers_on(BT).contains(&ids[2]),
        "node 0 reached node 2 directly"
    );
    for n in &mut nodes {
        n.terminate();
    }
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}
