//! Version DAG, history, restore, remote merge and the Merkle root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fields;
use ecomesh_crdt::PhysicalClock;
use ecomesh_p2p_storage::{ApplyOutcome, MemoryStore, StoreError, VersionNode};
use ecomesh_types::{SetOptions, Value};

/// Copies every version of every document from `from` into `to`, parents first.
fn sync(from: &MemoryStore, to: &MemoryStore) {
    for collection in from.collections().unwrap() {
        for doc in from.scan_collection(&collection).unwrap() {
            copy_doc(from, to, &collection, &doc.id);
        }
    }
}

fn copy_doc(from: &MemoryStore, to: &MemoryStore, collection: &str, id: &str) {
    for v in from.history(collection, id).unwrap() {
        let bytes = from.version_bytes(&v.cid).unwrap().unwrap();
        to.apply_remote(&bytes).unwrap();
    }
}

#[test]
fn every_write_is_a_version_and_history_is_walkable() {
    let s = common::memory(1);
    let w1 = s
        .set("c", "d", fields(&[("a", 1.into())]), SetOptions::REPLACE)
        .unwrap();
    let w2 = s.update("c", "d", fields(&[("b", 2.into())])).unwrap();
    let w3 = s.delete("c", "d").unwrap();
    let history = s.history("c", "d").unwrap();
    let cids: Vec<_> = history.iter().map(|v| v.cid.clone()).collect();
    assert_eq!(
        cids,
        vec![
            w1.version.clone().unwrap(),
            w2.version.clone().unwrap(),
            w3.version.clone().unwrap()
        ]
    );
    assert_eq!(history[1].parents, vec![w1.version.clone().unwrap()]);
    assert_eq!(history[0].author, s.peer_id());
    assert_eq!(
        s.heads("c", "d").unwrap(),
        vec![w3.version.clone().unwrap()]
    );
    // The state at each version, and restoring an old one as a new version.
    assert_eq!(
        s.state_at(w1.version.as_ref().unwrap())
            .unwrap()
            .materialize(),
        Some(fields(&[("a", 1.into())]))
    );
    let restored = s.restore("c", "d", w2.version.as_ref().unwrap()).unwrap();
    assert_eq!(
        s.get("c", "d").unwrap().unwrap().fields,
        fields(&[("a", 1.into()), ("b", 2.into())])
    );
    assert_eq!(s.history("c", "d").unwrap().len(), 4);
    assert_eq!(
        s.history("c", "d").unwrap()[3].parents,
        vec![w3.version.unwrap()]
    );
    assert!(restored.version.is_some());
    assert!(matches!(
        s.restore("c", "other", w1.version.as_ref().unwrap()),
        Err(StoreError::InvalidArgument(_))
    ));
    s.verify_integrity().unwrap();
}

#[test]
fn concurrent_versions_merge_and_join_in_a_node_with_several_parents() {
    let (a, b) = (common::memory(1), common::memory(2));
    a.set("c", "d", fields(&[("x", 1.into())]), SetOptions::REPLACE)
        .unwrap();
    sync(&a, &b);
    // Partitioned: both edit.
    a.update("c", "d", fields(&[("left", "a".into())])).unwrap();
    b.update("c", "d", fields(&[("right", "b".into())]))
        .unwrap();
    sync(&a, &b);
    sync(&b, &a);
    assert_eq!(a.heads("c", "d").unwrap().len(), 2);
    assert_eq!(a.heads("c", "d").unwrap(), b.heads("c", "d").unwrap());
    assert_eq!(a.get("c", "d").unwrap(), b.get("c", "d").unwrap());
    assert_eq!(a.get("c", "d").unwrap().unwrap().fields.len(), 3);
    assert_eq!(a.root_cid().unwrap(), b.root_cid().unwrap());
    // The next local write has both heads as parents.
    let merged = a
        .update("c", "d", fields(&[("after", true.into())]))
        .unwrap();
    let node = a
        .version(merged.version.as_ref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(node.parents.len(), 2);
    sync(&a, &b);
    assert_eq!(b.heads("c", "d").unwrap(), vec![merged.version.unwrap()]);
    assert_eq!(a.root_cid().unwrap(), b.root_cid().unwrap());
    a.verify_integrity().unwrap();
    b.verify_integrity().unwrap();
}

#[test]
fn equal_contents_give_equal_roots_whatever_the_order() {
    let a = common::memory(1);
    for i in 0..200 {
        a.set(
            &format!("c{}", i % 3),
            &format!("doc{i}"),
            fields(&[("i", i.into())]),
            SetOptions::REPLACE,
        )
        .unwrap();
        if i % 7 == 0 {
            a.delete(&format!("c{}", i % 3), &format!("doc{i}"))
                .unwrap();
        }
    }
    // Replay into two stores in opposite document orders.
    let (b, c) = (common::memory(2), common::memory(3));
    let mut docs = Vec::new();
    for collection in a.collections().unwrap() {
        for i in 0..200 {
            if a.heads(&collection, &format!("doc{i}")).unwrap().is_empty() {
                continue;
            }
            docs.push((collection.clone(), format!("doc{i}")));
        }
    }
    for (collection, id) in &docs {
        copy_doc(&a, &b, collection, id);
    }
    for (collection, id) in docs.iter().rev() {
        copy_doc(&a, &c, collection, id);
    }
    assert_eq!(a.root_cid().unwrap(), b.root_cid().unwrap());
    assert_eq!(a.root_cid().unwrap(), c.root_cid().unwrap());
    assert_ne!(a.root_cid().unwrap(), common::memory(4).root_cid().unwrap());
    for s in [&a, &b, &c] {
        let report = s.verify_integrity().unwrap();
        assert_eq!(report.documents, 200);
        assert_eq!(report.collections, 3);
    }
}

#[test]
fn remote_versions_are_verified() {
    let (a, b) = (common::memory(1), common::memory(2));
    let w1 = a
        .set("c", "d", fields(&[("x", 1.into())]), SetOptions::REPLACE)
        .unwrap();
    let w2 = a.update("c", "d", fields(&[("y", 2.into())])).unwrap();
    let first = a
        .version_bytes(w1.version.as_ref().unwrap())
        .unwrap()
        .unwrap();
    let second = a
        .version_bytes(w2.version.as_ref().unwrap())
        .unwrap()
        .unwrap();

    // A child before its parent names the parent to fetch.
    match b.apply_remote(&second) {
        Err(StoreError::MissingParents(missing)) => {
            assert_eq!(missing, vec![w1.version.clone().unwrap()])
        }
        other => panic!("expected MissingParents, got {other:?}"),
    }
    // Every single-bit flip is refused (bad encoding, CID-less garbage or bad signature).
    for bit in 0..first.len() * 8 {
        let mut bad = first.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            b.apply_remote(&bad).is_err(),
            "bit {bit} flipped was accepted"
        );
    }
    // A re-signed node with someone else's key in `author` but the original timestamp peer.
    let mut node: VersionNode = ecomesh_wire::decode(&first).unwrap();
    node.author = common::identity(9).public_key().to_bytes();
    let forged = ecomesh_wire::encode(&node).unwrap();
    assert!(matches!(
        b.apply_remote(&forged),
        Err(StoreError::InvalidVersion { .. })
    ));

    assert!(matches!(
        b.apply_remote(&first).unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    assert!(matches!(
        b.apply_remote(&first).unwrap(),
        ApplyOutcome::AlreadyPresent(_)
    ));
    b.apply_remote(&second).unwrap();
    assert_eq!(a.get("c", "d").unwrap(), b.get("c", "d").unwrap());
    assert!(b.apply_remote(&[]).is_err());
    assert!(b.apply_remote(&[0xA1, 0x61]).is_err());
}

/// B's clock runs two hours ahead (the issue's `faketime -f '+2h'`): its
/// versions are merged, not refused; A's clock is not dragged two hours ahead
/// (its writes elsewhere keep timestamps near its own time); B's far-future
/// write wins against A's concurrent one (the LWW trade-off), but a write A
/// makes after seeing B's value, and a delete after seeing it, beat it on both.
#[test]
fn remote_versions_from_a_clock_far_ahead_are_merged_and_superseded_by_later_writes() {
    const TWO_HOURS: u64 = 2 * 3_600_000;
    let (clock_a, clock_b) = (common::clock(), common::clock());
    clock_b.advance(TWO_HOURS);
    let a = MemoryStore::in_memory(common::identity(1), common::config(&clock_a)).unwrap();
    let b = MemoryStore::in_memory(common::identity(2), common::config(&clock_b)).unwrap();
    let local = common::clock().now_ms();

    // Concurrent writes of the same field: B's (two hours ahead) wins on both.
    a.set(
        "c",
        "d",
        fields(&[("x", "from A".into())]),
        SetOptions::MERGE,
    )
    .unwrap();
    b.set(
        "c",
        "d",
        fields(&[("x", "from B".into())]),
        SetOptions::MERGE,
    )
    .unwrap();
    sync(&a, &b);
    sync(&b, &a);
    for s in [&a, &b] {
        let doc = s.get("c", "d").unwrap().unwrap();
        assert_eq!(doc.fields.get("x"), Some(&Value::from("from B")));
    }
    assert_eq!(a.heads("c", "d").unwrap(), b.heads("c", "d").unwrap());

    // A's clock moved at most the drift bound: a write to another document
    // is stamped near A's own time, not two hours ahead.
    let other = a
        .set(
            "c",
            "other",
            fields(&[("y", 1.into())]),
            SetOptions::REPLACE,
        )
        .unwrap();
    let ts = other.timestamp.unwrap();
    assert!(
        ts.physical_ms <= local + 60_001,
        "A's clock was dragged: {ts:?}"
    );

    // A edits the field after seeing B's value: A's edit wins everywhere.
    let edit = a
        .update("c", "d", fields(&[("x", "A saw B".into())]))
        .unwrap();
    assert!(edit.timestamp.unwrap().physical_ms >= local + TWO_HOURS);
    sync(&a, &b);
    for s in [&a, &b] {
        let doc = s.get("c", "d").unwrap().unwrap();
        assert_eq!(doc.fields.get("x"), Some(&Value::from("A saw B")));
    }
    // And A's clock is still near its own time afterwards.
    let later = a.now();
    assert!(
        later.physical_ms <= local + 60_001,
        "A's clock was dragged: {later:?}"
    );

    // A delete after seeing B's writes hides them on both.
    b.update("c", "d", fields(&[("z", 3.into())])).unwrap();
    sync(&b, &a);
    a.delete("c", "d").unwrap();
    copy_doc(&a, &b, "c", "d");
    assert_eq!(a.get("c", "d").unwrap(), None);
    assert_eq!(b.get("c", "d").unwrap(), None);
}

/// A clock far behind: its versions merge, and its write after seeing a
/// value wins even though its clock is a day behind the value's writer.
#[test]
fn a_clock_far_behind_still_supersedes_what_it_saw() {
    let (clock_a, clock_b) = (common::clock(), common::clock());
    clock_b.set(clock_b.now_ms() - 86_400_000);
    let a = MemoryStore::in_memory(common::identity(1), common::config(&clock_a)).unwrap();
    let b = MemoryStore::in_memory(common::identity(2), common::config(&clock_b)).unwrap();
    a.set("c", "d", fields(&[("x", 1.into())]), SetOptions::REPLACE)
        .unwrap();
    sync(&a, &b);
    b.update("c", "d", fields(&[("x", 2.into())])).unwrap();
    sync(&b, &a);
    for s in [&a, &b] {
        let doc = s.get("c", "d").unwrap().unwrap();
        assert_eq!(doc.fields.get("x"), Some(&Value::Integer(2)));
    }
}

#[test]
fn counters_and_sets_merge_across_stores() {
    use ecomesh_crdt::FieldOp;
    let (a, b) = (common::memory(1), common::memory(2));
    a.set(
        "votes",
        "v",
        fields(&[("title", "park".into())]),
        SetOptions::REPLACE,
    )
    .unwrap();
    sync(&a, &b);
    a.apply_ops(
        "votes",
        "v",
        vec![
            ("yes".into(), FieldOp::Increment(3)),
            ("who".into(), FieldOp::AddToSet(vec!["ann".into()])),
        ],
    )
    .unwrap();
    b.apply_ops(
        "votes",
        "v",
        vec![
            ("yes".into(), FieldOp::Increment(2)),
            ("who".into(), FieldOp::AddToSet(vec!["bob".into()])),
        ],
    )
    .unwrap();
    sync(&a, &b);
    sync(&b, &a);
    let doc = a.get("votes", "v").unwrap().unwrap();
    assert_eq!(doc.fields.get("yes"), Some(&Value::Integer(5)));
    assert_eq!(
        doc.fields.get("who"),
        Some(&Value::Array(vec!["ann".into(), "bob".into()]))
    );
    assert_eq!(Some(doc), b.get("votes", "v").unwrap());
}

#[test]
fn subscriptions_fire_when_remote_versions_merge() {
    use std::sync::{Arc, Mutex};

    use ecomesh_types::{Document, FilterOp, Query};

    let (a, b) = (common::memory(1), common::memory(2));
    let docs: Arc<Mutex<Vec<Option<Document>>>> = Arc::default();
    let results: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (d, r) = (docs.clone(), results.clone());
    let _doc_sub = b
        .subscribe_document(
            "c",
            "d",
            Arc::new(move |doc: &Option<Document>| d.lock().unwrap().push(doc.clone())),
        )
        .unwrap();
    let _query_sub = b
        .subscribe_query(
            "c",
            Query::new().filter("x", FilterOp::Ge, 1),
            Arc::new(move |found: &Vec<Document>| r.lock().unwrap().push(found.len())),
        )
        .unwrap();
    a.set("c", "d", fields(&[("x", 1.into())]), SetOptions::REPLACE)
        .unwrap();
    a.delete("c", "d").unwrap();
    copy_doc(&a, &b, "c", "d");
    common::wait_until("remote merges to reach both subscribers", || {
        docs.lock().unwrap().len() >= 3 && results.lock().unwrap().len() >= 3
    });
    let docs = docs.lock().unwrap().clone();
    assert_eq!(docs[0], None);
    assert_eq!(
        docs[1].as_ref().map(|doc| doc.fields.clone()),
        Some(fields(&[("x", 1.into())]))
    );
    assert_eq!(docs[2], None);
    assert_eq!(*results.lock().unwrap(), vec![0, 1, 0]);
}

#[test]
fn document_counts_are_live_documents_of_that_collection_only() {
    let s = common::memory(1);
    for (c, id) in [("a", "1"), ("a", "2"), ("ab", "1"), ("b", "1")] {
        s.set(c, id, fields(&[("k", 1.into())]), SetOptions::REPLACE)
            .unwrap();
    }
    s.delete("a", "2").unwrap();
    let count = |c: &str| s.count_documents(c).unwrap();
    assert_eq!(count("a"), 1, "a deleted document is not counted");
    assert_eq!(count("ab"), 1, "a longer name is another collection");
    assert_eq!(count("b"), s.scan_collection("b").unwrap().len());
    assert_eq!(count("none"), 0);
}
