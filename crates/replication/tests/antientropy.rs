//! Anti-entropy protocol tests against a small in-memory store (the real
//! store's end-to-end tests live in `ecomesh-p2p-storage`'s tests/reconcile.rs).

#![allow(clippy::unwrap_used)]

mod antientropy_support;

use antientropy_support::{TestStore, peer, reconcile, version_bytes};
use ecomesh_replication::ReplicationError;
use ecomesh_replication::antientropy::frame::{FLAG_END, Frame};
use ecomesh_replication::antientropy::{Config, Event, Session};
use ecomesh_replication::merkle::ReconcileStore;
use ecomesh_types::ContentId;
use proptest::prelude::*;

fn cid_of(bytes: &[u8]) -> ContentId {
    ecomesh_wire::to_content_id(&ecomesh_wire::cid_of_dag_cbor(bytes))
}

fn base(n: usize) -> TestStore {
    let s = TestStore::new();
    for i in 0..n {
        s.write("c", &format!("doc{i}"), "v1");
    }
    s
}

fn assert_converged(a: &TestStore, b: &TestStore) {
    assert_eq!(a.root().unwrap(), b.root().unwrap());
    assert_eq!(a.snapshot(), b.snapshot());
}

#[test]
fn equal_stores_take_one_round_trip() {
    let a = base(100);
    let b = a.copy();
    let run = reconcile(&a, &b, Config::default());
    assert_eq!(run.a.round_trips(), 1.0);
    assert_eq!(run.a.versions_sent + run.b.versions_sent, 0);
    assert_converged(&a, &b);
}

#[test]
fn empty_stores_and_one_empty_side() {
    let (a, b) = (TestStore::new(), TestStore::new());
    reconcile(&a, &b, Config::default());
    assert_converged(&a, &b);
    let a = base(300);
    let b = TestStore::new();
    let run = reconcile(&a, &b, Config::default());
    assert_converged(&a, &b);
    assert_eq!(run.b.versions_applied, 300);
    // And the other way round: the empty side starts.
    let c = TestStore::new();
    reconcile(&c, &a, Config::default());
    assert_converged(&a, &c);
}

#[test]
fn disjoint_edits_on_both_sides_converge() {
    let a = base(500);
    let b = a.copy();
    for i in 0..20 {
        a.write("c", &format!("doc{}", i * 7), "a");
        b.write("c", &format!("doc{}", i * 11 + 3), "b");
        a.write("other", &format!("new-a{i}"), "a");
        b.write("c", &format!("new-b{i}"), "b");
    }
    let run = reconcile(&a, &b, Config::default());
    assert_converged(&a, &b);
    assert!(run.a.versions_duplicate + run.b.versions_duplicate == 0);
    assert!(run.events_a.is_empty() && run.events_b.is_empty());
}

#[test]
fn concurrent_edits_of_one_document_keep_both_branches() {
    let a = base(200);
    for round in 0..5 {
        a.write("c", "doc5", &format!("shared {round}"));
    }
    let b = a.copy();
    let a1 = a.write("c", "doc5", "a1");
    let a2 = a.write("c", "doc5", "a2");
    let b1 = b.write("c", "doc5", "b1");
    let run = reconcile(&a, &b, Config::default());
    assert_converged(&a, &b);
    let mut heads = vec![a2.clone(), b1.clone()];
    heads.sort();
    assert_eq!(a.doc_heads("c", "doc5"), heads);
    assert!(a.has(&a1) && b.has(&a1));
    // Exactly the three new versions crossed; the tail kept the shared history home.
    assert_eq!(run.a.versions_sent + run.b.versions_sent, 3);
    assert_eq!(run.a.versions_duplicate + run.b.versions_duplicate, 0);
}

#[test]
fn one_difference_in_a_large_store_is_cheap() {
    let a = base(3000);
    let b = a.copy();
    // A payload the size of a real signed version node (about 300 bytes with
    // its signature, author key, timestamp and delta), so the floor is realistic.
    let new = b.write("c", "doc1234", &"changed ".repeat(30));
    let run = reconcile(&a, &b, Config::default());
    assert_converged(&a, &b);
    assert_eq!(run.a.versions_applied, 1);
    let floor = 32 + b.version_bytes(&new).unwrap().unwrap().len() as u64;
    let total = run.a.bytes_total();
    assert!(total <= 4 * floor, "{total} bytes for a floor of {floor}");
    assert!(run.a.round_trips() <= 3.0, "{:?}", run.a);
}

#[test]
fn a_version_whose_bytes_do_not_match_its_cid_is_rejected_and_reported() {
    let b = TestStore::new();
    let mut s = Session::new(&b, peer(9), Config::default());
    let good = version_bytes("c", "x", &[], "real", true);
    let forged = version_bytes("c", "x", &[], "forged", true);
    let frame = Frame {
        flags: FLAG_END,
        pushes: vec![
            (cid_of(&good), forged.clone()),
            (ContentId(vec![1, 2]), good.clone()),
        ],
        ..Frame::default()
    };
    let out = s.handle(&frame.encode()).unwrap();
    assert_eq!(out.events.len(), 2);
    for e in &out.events {
        let Event::Rejected { peer: who, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(*who, peer(9));
    }
    assert!(matches!(&out.events[0], Event::Rejected { cid, .. } if *cid == cid_of(&good)));
    assert!(!b.has(&cid_of(&forged)) && !b.has(&cid_of(&good)));
    assert_eq!(s.stats().versions_rejected, 2);
    // A version the store refuses is reported too.
    let invalid = version_bytes("c", "y", &[], "bad", false);
    let frame = Frame {
        flags: FLAG_END,
        pushes: vec![(cid_of(&invalid), invalid.clone())],
        ..Frame::default()
    };
    let out = s.handle(&frame.encode()).unwrap();
    assert!(matches!(&out.events[..], [Event::Rejected { .. }]));
    assert!(b.snapshot().is_empty());
}

#[test]
fn a_child_pushed_before_its_parent_waits_and_the_parent_is_asked_for() {
    let a = TestStore::new();
    let p = a.write("c", "x", "parent");
    let c = a.write("c", "x", "child");
    let b = TestStore::new();
    let mut sb = Session::new(&b, peer(1), Config::default());
    let frame = Frame {
        flags: FLAG_END,
        pushes: vec![(c.clone(), a.version_bytes(&c).unwrap().unwrap())],
        ..Frame::default()
    };
    let out = sb.handle(&frame.encode()).unwrap();
    let reply = Frame::decode(&out.frames[0], 1 << 20).unwrap();
    assert_eq!(reply.wants, vec![p.clone()]);
    let mut sa = Session::new(&a, peer(2), Config::default());
    let answer = sa.handle(&out.frames[0]).unwrap();
    for f in answer.frames {
        sb.handle(&f).unwrap();
    }
    assert!(b.has(&p) && b.has(&c));
    assert_eq!(b.doc_heads("c", "x"), vec![c]);
}

#[test]
fn garbage_truncated_and_oversized_frames_are_typed_errors() {
    let b = base(10);
    let mut config = Config::default();
    config.max_frame_bytes = 64;
    let mut s = Session::new(&b, peer(1), config);
    assert!(matches!(
        s.handle(&[0xff, 0x00, 0x13]),
        Err(ReplicationError::Wire(_) | ReplicationError::Malformed { .. })
    ));
    assert!(matches!(
        s.handle(&[0u8; 65]),
        Err(ReplicationError::TooLarge { .. })
    ));
    let frame = Frame {
        flags: FLAG_END,
        wants: vec![ContentId(vec![7; 40])],
        ..Frame::default()
    }
    .encode();
    for len in 0..frame.len() {
        assert!(
            s.handle(&frame[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    let mut trailing = frame.clone();
    trailing.push(0);
    assert!(s.handle(&trailing).is_err());
    // A final frame that also asks for something is malformed.
    let bad = Frame {
        flags: FLAG_END,
        wants: vec![ContentId(vec![7; 4])],
        fin: Some(ContentId(vec![1; 4])),
        ..Frame::default()
    };
    assert!(matches!(
        s.handle(&bad.encode()),
        Err(ReplicationError::Malformed { .. })
    ));
    // A message made of many frames is bounded as a whole.
    let mut config = Config::default();
    config.max_message_bytes = 100;
    let mut s = Session::new(&b, peer(1), config);
    let part = Frame {
        pushes: vec![(ContentId(vec![1; 4]), vec![0; 40])],
        ..Frame::default()
    }
    .encode();
    assert!(s.handle(&part).unwrap().frames.is_empty());
    assert!(matches!(
        s.handle(&part),
        Err(ReplicationError::TooLarge { .. })
    ));
}

#[test]
fn small_frames_carry_a_large_reconciliation() {
    let a = base(400);
    let b = TestStore::new();
    let mut config = Config::default();
    config.max_frame_bytes = 2048;
    let run = reconcile(&a, &b, config);
    assert_converged(&a, &b);
    assert!(run.a.frames_sent > run.a.messages_sent);
}

proptest! {
    #[test]
    fn prop_random_edits_converge_in_one_session(
        n in 0_usize..120,
        edits in proptest::collection::vec((any::<bool>(), 0_u16..160, 0_u8..3), 0..60),
        threshold in 0_u64..40,
    ) {
        let a = base(n);
        let b = a.copy();
        for (k, (side, doc, coll)) in edits.iter().enumerate() {
            let store = if *side { &a } else { &b };
            store.write(&format!("c{coll}"), &format!("doc{doc}"), &format!("e{k}"));
        }
        let mut config = Config::default();
    config.entries_threshold = threshold;
        let run = reconcile(&a, &b, config);
        prop_assert_eq!(a.root().unwrap(), b.root().unwrap());
        prop_assert_eq!(a.snapshot(), b.snapshot());
        prop_assert_eq!(run.a.versions_duplicate + run.b.versions_duplicate, 0);
        prop_assert_eq!(run.a.passes, 1);
    }
}
