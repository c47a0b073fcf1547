//! Anti-entropy between two real stores: `ecomesh_replication::antientropy`
//! sessions over the store's `ReconcileStore` implementation.

#![allow(clippy::unwrap_used)]

mod common;

use common::{clock, config, identity, memory};
use ecomesh_crdt::{FieldOp, Merge};
use ecomesh_p2p_storage::{MemoryStore, SledStore};
use ecomesh_replication::antientropy::frame::{FLAG_END, Frame};
use ecomesh_replication::antientropy::{Config, Event, Session, SessionStats};
use ecomesh_replication::merkle::ReconcileStore;
use ecomesh_types::{Map, PeerId, SetOptions, Value};
use proptest::prelude::*;

fn fields(pairs: &[(&str, Value)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn peer_of<S: ReconcileStore>(_: &S, n: u8) -> PeerId {
    identity(n).peer_id()
}

/// One session, `a` initiating; returns both sides' stats and events.
fn sync<A: ReconcileStore, B: ReconcileStore>(
    a: &A,
    b: &B,
) -> (SessionStats, SessionStats, Vec<Event>) {
    sync_with(a, b, &Config::default())
}

/// A session where both sides summarize subtrees of more than `threshold`
/// documents as branches and open deep above `deep_min` documents, so small
/// stores exercise the paths large ones take.
fn small_config(threshold: u64, deep_min: u64) -> Config {
    let mut c = Config::default();
    c.entries_threshold = threshold;
    c.deep_hello_min = deep_min;
    c
}

fn sync_with<A: ReconcileStore, B: ReconcileStore>(
    a: &A,
    b: &B,
    config: &Config,
) -> (SessionStats, SessionStats, Vec<Event>) {
    let mut sa = Session::new(a, peer_of(a, 2), config.clone());
    let mut sb = Session::new(b, peer_of(b, 1), config.clone());
    let mut events = Vec::new();
    let mut to_b = sa.start().unwrap();
    for _ in 0..50 {
        let mut to_a = Vec::new();
        for f in to_b.drain(..) {
            let out = sb.handle(&f).unwrap();
            to_a.extend(out.frames);
            events.extend(out.events);
        }
        for f in to_a {
            let out = sa.handle(&f).unwrap();
            to_b.extend(out.frames);
            events.extend(out.events);
        }
        if to_b.is_empty() {
            break;
        }
    }
    assert!(sa.is_done() && sb.is_done());
    (sa.stats().clone(), sb.stats().clone(), events)
}

fn assert_converged(a: &MemoryStore, b: &MemoryStore) {
    assert_eq!(a.root_cid().unwrap(), b.root_cid().unwrap());
    a.verify_integrity().unwrap();
    b.verify_integrity().unwrap();
    for c in a.collections().unwrap() {
        let mut da = a.scan_collection(&c).unwrap();
        let mut db = b.scan_collection(&c).unwrap();
        da.sort_by(|x, y| x.id.cmp(&y.id));
        db.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(da, db, "collection {c}");
    }
}

/// Two stores that share `n` documents (b got them by reconciling with a).
fn pair(n: usize) -> (MemoryStore, MemoryStore) {
    let a = memory(1);
    let b = memory(2);
    for i in 0..n {
        a.set(
            "c",
            &format!("doc{i}"),
            fields(&[
                ("n", Value::Integer(i as i64)),
                ("tag", Value::Text("base".into())),
            ]),
            SetOptions::REPLACE,
        )
        .unwrap();
    }
    let (_, stats_b, events) = sync(&a, &b);
    assert!(events.is_empty());
    assert_eq!(stats_b.versions_applied, n as u64);
    assert_converged(&a, &b);
    (a, b)
}

#[test]
fn disjoint_and_overlapping_edits_converge() {
    let (a, b) = pair(300);
    for i in 0..10 {
        a.update(
            "c",
            &format!("doc{}", i * 3),
            fields(&[("tag", Value::Text("a".into()))]),
        )
        .unwrap();
        b.update(
            "c",
            &format!("doc{}", i * 5 + 1),
            fields(&[("tag", Value::Text("b".into()))]),
        )
        .unwrap();
        a.set(
            "only-a",
            &format!("x{i}"),
            fields(&[("v", Value::Integer(i))]),
            SetOptions::REPLACE,
        )
        .unwrap();
        b.set(
            "c",
            &format!("new-b{i}"),
            fields(&[("v", Value::Integer(i))]),
            SetOptions::REPLACE,
        )
        .unwrap();
    }
    let (sa, sb, events) = sync(&a, &b);
    assert!(events.is_empty());
    assert_converged(&a, &b);
    assert_eq!(sa.versions_duplicate + sb.versions_duplicate, 0);
    assert_eq!(sb.versions_applied, 20);
    assert_eq!(sa.versions_applied, 20);
}

/// A deep hello (the root's children summarized at once) reconciles the same
/// edits as a plain one in one message fewer, including children only one
/// side has.
#[test]
fn a_deep_hello_saves_a_message_and_converges() {
    let edit = |a: &MemoryStore, b: &MemoryStore| {
        for i in 0..3 {
            a.update(
                "c",
                &format!("doc{}", i * 7),
                fields(&[("tag", Value::Text("a".into()))]),
            )
            .unwrap();
            b.update(
                "c",
                &format!("doc{}", i * 11 + 1),
                fields(&[("tag", Value::Text("b".into()))]),
            )
            .unwrap();
        }
        b.set(
            "c",
            "only-b",
            fields(&[("v", Value::Integer(1))]),
            SetOptions::REPLACE,
        )
        .unwrap();
    };
    let (a1, b1) = pair(400);
    edit(&a1, &b1);
    let (plain, _, events) = sync_with(&a1, &b1, &small_config(8, u64::MAX));
    assert!(events.is_empty());
    assert_converged(&a1, &b1);

    let (a2, b2) = pair(400);
    edit(&a2, &b2);
    let (deep, _, events) = sync_with(&a2, &b2, &small_config(8, 100));
    assert!(events.is_empty());
    assert_converged(&a2, &b2);
    assert_eq!(a1.root_cid().unwrap(), a2.root_cid().unwrap());
    assert_eq!(deep.versions_applied, plain.versions_applied);
    assert!(
        deep.round_trips() < plain.round_trips(),
        "deep {} vs plain {} round trips",
        deep.round_trips(),
        plain.round_trips()
    );
}

#[test]
fn conflicting_edits_merge_through_the_crdt() {
    let (a, b) = pair(50);
    // The same document edited on both sides (different fields, then the same field),
    // a delete against an update, and concurrent counter increments.
    a.update("c", "doc1", fields(&[("x", Value::Integer(1))]))
        .unwrap();
    b.update("c", "doc1", fields(&[("y", Value::Integer(2))]))
        .unwrap();
    a.update(
        "c",
        "doc2",
        fields(&[("tag", Value::Text("from a".into()))]),
    )
    .unwrap();
    b.update(
        "c",
        "doc2",
        fields(&[("tag", Value::Text("from b".into()))]),
    )
    .unwrap();
    a.delete("c", "doc3").unwrap();
    b.update("c", "doc3", fields(&[("tag", Value::Text("kept?".into()))]))
        .unwrap();
    a.apply_ops("c", "doc4", vec![("hits".into(), FieldOp::Increment(3))])
        .unwrap();
    b.apply_ops("c", "doc4", vec![("hits".into(), FieldOp::Increment(4))])
        .unwrap();
    let expected: Vec<_> = ["doc1", "doc2", "doc3", "doc4"]
        .iter()
        .map(|id| {
            let mut s = a.crdt_state("c", id).unwrap();
            s.merge(&b.crdt_state("c", id).unwrap());
            (id, s.materialize())
        })
        .collect();
    let (_, _, events) = sync(&b, &a);
    assert!(events.is_empty());
    assert_converged(&a, &b);
    for (id, fields) in expected {
        assert_eq!(a.get("c", id).unwrap().map(|d| d.fields), fields, "{id}");
        assert_eq!(
            a.crdt_state("c", id).unwrap(),
            b.crdt_state("c", id).unwrap()
        );
        assert_eq!(
            a.heads("c", id).unwrap().len(),
            2,
            "{id} keeps both branches"
        );
    }
    let doc1 = a.get("c", "doc1").unwrap().unwrap().fields;
    assert_eq!(doc1.get("x"), Some(&Value::Integer(1)));
    assert_eq!(doc1.get("y"), Some(&Value::Integer(2)));
    let doc4 = a.get("c", "doc4").unwrap().unwrap().fields;
    assert_eq!(doc4.get("hits"), Some(&Value::Integer(7)));
}

#[test]
fn a_tampered_version_is_rejected_naming_the_peer_and_not_applied() {
    let a = memory(1);
    let b = memory(2);
    let w = a
        .set(
            "c",
            "d",
            fields(&[("v", Value::Integer(1))]),
            SetOptions::REPLACE,
        )
        .unwrap();
    let cid = w.version.unwrap();
    let mut bytes = a.version_bytes(&cid).unwrap().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let sender = identity(1).peer_id();
    let mut s = Session::new(&b, sender, Config::default());
    let frame = Frame {
        flags: FLAG_END,
        pushes: vec![(cid.clone(), bytes)],
        ..Frame::default()
    };
    let out = s.handle(&frame.encode()).unwrap();
    assert!(matches!(
        &out.events[..],
        [Event::Rejected { peer, cid: c, .. }] if *peer == sender && *c == cid
    ));
    assert!(b.version(&cid).unwrap().is_none());
    assert!(b.get("c", "d").unwrap().is_none());
}

#[test]
fn a_sled_store_reconciles_with_a_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = SledStore::open(dir.path(), identity(3), config(&clock())).unwrap();
    for i in 0..40 {
        a.set(
            "c",
            &format!("d{i}"),
            fields(&[("v", Value::Integer(i))]),
            SetOptions::REPLACE,
        )
        .unwrap();
    }
    let b = memory(4);
    b.set(
        "c",
        "from-b",
        fields(&[("v", Value::Integer(0))]),
        SetOptions::REPLACE,
    )
    .unwrap();
    sync(&a, &b);
    assert_eq!(a.root_cid().unwrap(), b.root_cid().unwrap());
    a.verify_integrity().unwrap();
    b.verify_integrity().unwrap();
}

proptest! {
    #[test]
    fn prop_real_stores_converge_after_one_session(
        ops in proptest::collection::vec((any::<bool>(), 0_u8..40, 0_u8..4), 0..30),
        threshold in 1_u64..80,
        deep_min in prop_oneof![Just(0_u64), 1_u64..40, Just(u64::MAX)],
    ) {
        let (a, b) = pair(30);
        for (side, doc, kind) in ops {
            let s = if side { &a } else { &b };
            let id = format!("doc{doc}");
            match kind {
                0 => { s.set("c", &id, fields(&[("v", Value::Integer(doc.into()))]), SetOptions::MERGE).unwrap(); }
                1 => { s.delete("c", &id).unwrap(); }
                2 => { s.apply_ops("c", &id, vec![("k".into(), FieldOp::Increment(1))]).unwrap(); }
                _ => { s.set("d", &id, fields(&[("w", Value::Bool(side))]), SetOptions::REPLACE).unwrap(); }
            }
        }
        let (sa, sb, events) = sync_with(&a, &b, &small_config(threshold, deep_min));
        prop_assert!(events.is_empty());
        prop_assert_eq!(a.root_cid().unwrap(), b.root_cid().unwrap());
        prop_assert_eq!(sa.passes, 1);
        prop_assert_eq!(sa.versions_duplicate + sb.versions_duplicate, 0);
        assert_converged(&a, &b);
    }
}
