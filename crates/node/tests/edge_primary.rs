//! `ecomesh node --primary ADDR` on real processes (issue 19): the device's
//! status walks hybrid -> local-only (primary killed, no peer; writes still
//! accepted and queued) -> hybrid (primary restarted, queue replayed), every
//! acknowledged write reaches the primary exactly once; and a replayed write
//! concurrent with the primary's own reaches the device's sync event stream
//! as `SyncEvent::PrimaryConflict`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_node::hybrid::{PrimaryOptions, attach};
use ecomesh_sync::{Map, Node as SyncNode, SetOptions, SyncEvent, Value};
use futures::StreamExt;
use serde_json::Value as Json;

use common::{Node, ok_json, wait_for, wait_within};

fn primary_of(status: &Json) -> Json {
    status["primary"].clone()
}

fn history_len(p: &Node, id: &str) -> usize {
    let h = ok_json(&p.data, &["doc", "history", "c", id]);
    h["versions"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_device_moves_through_the_modes_and_replays_its_queue_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = Node::init(dir.path(), "primary");
    p.start(&["--listen", "127.0.0.1:0"]);
    let api = p.api_addr();
    let (mut d, _) = Node::init(dir.path(), "device");
    d.start(&[
        "--listen",
        "127.0.0.1:0",
        "--primary",
        &api,
        "--primary-heartbeat-ms",
        "100",
        "--primary-sync-ms",
        "200",
        "--primary-stale-ms",
        "2000",
        "--primary-timeout-ms",
        "500",
    ]);
    let mut modes: Vec<String> = Vec::new();
    let see = |d: &Node, want: &str, modes: &mut Vec<String>| -> Json {
        let (s, took) = wait_within(Duration::from_secs(30), want, || {
            let s = primary_of(&d.status());
            let mode = s["mode"].as_str().unwrap_or("").to_owned();
            if modes.last() != Some(&mode) {
                modes.push(mode.clone());
            }
            (mode == want).then_some(s)
        });
        eprintln!("mode {want} after {took:?}");
        s
    };
    let s = see(&d, "hybrid", &mut modes);
    assert_eq!(s["addr"], api.as_str());
    assert_eq!(s["health"], "healthy");
    assert_eq!(s["strategy"], "local-first");

    let put = |d: &Node, n: usize| {
        let w = ok_json(
            &d.data,
            &[
                "doc",
                "put",
                "c",
                &format!("d{n}"),
                &format!("{{\"n\":{n}}}"),
            ],
        );
        assert!(w["version"].as_str().is_some_and(|v| !v.is_empty()), "{w}");
    };
    for n in 0..5 {
        put(&d, n);
    }
    wait_for("the first writes on the primary", || {
        (primary_of(&d.status())["queued"] == 0 && history_len(&p, "d4") == 1).then_some(())
    });

    // The primary dies; no peer is connected: local-only, writes accepted and queued.
    p.kill9();
    let s = see(&d, "local-only", &mut modes);
    assert_eq!(s["health"], "down");
    const N: usize = 60;
    for n in 5..N {
        put(&d, n);
    }
    let s = primary_of(&d.status());
    assert_eq!(s["mode"], "local-only");
    assert_eq!(s["queued"], N - 5, "{s}");
    let text = common::ecomesh(&d.data, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("local-only") && text.contains("queued"),
        "{text}"
    );

    // It comes back at the same address: hybrid again, the queue replayed.
    p.api = api.clone();
    let back = Instant::now();
    p.start(&["--listen", "127.0.0.1:0"]);
    see(&d, "hybrid", &mut modes);
    let (_, took) = wait_within(Duration::from_secs(30), "an empty queue", || {
        (primary_of(&d.status())["queued"] == 0).then_some(())
    });
    eprintln!(
        "queue of {} replayed {:?} after the primary's return ({took:?} after it answered)",
        N - 5,
        back.elapsed()
    );
    let s = primary_of(&d.status());
    assert!(s["last_sync_ms"].as_u64().is_some(), "{s}");
    for n in 0..N {
        assert_eq!(
            history_len(&p, &format!("d{n}")),
            1,
            "d{n} once on the primary"
        );
    }
    // Before its first answer the primary's health is unknown and, without
    // a peer, the device starts local-only.
    if modes.first().map(String::as_str) == Some("local-only") {
        modes.remove(0);
    }
    assert_eq!(modes, ["hybrid", "local-only", "hybrid"], "{modes:?}");
    d.terminate();
    p.terminate();
}

fn fields(n: i64) -> Map {
    [("n".to_owned(), Value::Integer(n))].into_iter().collect()
}

#[test]
fn a_replayed_write_concurrent_with_the_primarys_is_a_sync_event() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = Node::init(dir.path(), "primary");
    p.start(&["--listen", "127.0.0.1:0"]);
    let addr: SocketAddr = p.api_addr().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let me = Identity::generate().unwrap();
        let root = dir.path().join("device");
        let mut options = PrimaryOptions::new(addr);
        // Long intervals: the test replays by hand, after the primary's own write.
        options.health = options.health.with_intervals(600_000, 600_000, 1_200_000);
        let builder = SyncNode::builder(&root).identity(me.clone());
        let (builder, attached) =
            attach(builder, me, Arc::new(AccessPolicy::Open), &options, &root);
        let node = builder.start().await.unwrap();
        let _driver = attached.bind(&node).unwrap();
        let h = attached.adapter().unwrap().clone();
        // The driver's first heartbeat authenticates and syncs (empty queue).
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.status(0).last_sync_ms.is_none() {
            assert!(Instant::now() < deadline, "first sync");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut events = node.sync_events();
        node.collection("c")
            .doc("k")
            .set(fields(1), SetOptions::default())
            .await
            .unwrap();
        assert_eq!(h.queued(), 1, "local first: queued, not sent yet");
        // The primary writes the same document itself meanwhile.
        ok_json(&p.data, &["doc", "put", "c", "k", r#"{"n":2}"#]);
        let r = h.replay().await.unwrap();
        assert_eq!((r.applied, r.conflicts), (1, 1), "{r:?}");
        let ev = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.next().await {
                    Some(SyncEvent::PrimaryConflict { collection, id, .. }) => {
                        return (collection, id);
                    }
                    Some(_) => {}
                    None => panic!("the event stream ended"),
                }
            }
        })
        .await
        .expect("a PrimaryConflict event within 10 s");
        assert_eq!(ev, ("c".to_owned(), "k".to_owned()));
        node.shutdown().await.unwrap();
    });
    p.terminate();
}
