//! One `StorageAdapter` conformance suite, run against the sled and the in-memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::{fields, ready, wait_until};
use ecomesh_p2p_storage::{MemoryStore, SledStore, StoreConfig};
use ecomesh_types::{
    BatchOperation, Direction, Document, Error, FilterOp, Query, SetOptions, StorageAdapter, Value,
};

fn with_stores(test: impl Fn(&dyn StorageAdapter)) {
    with_stores_config(StoreConfig::default(), test);
}

fn with_stores_config(config: StoreConfig, test: impl Fn(&dyn StorageAdapter)) {
    let config = config.with_clock(common::clock());
    test(&MemoryStore::in_memory(common::identity(1), config.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    test(&SledStore::open(dir.path(), common::identity(1), config).unwrap());
}

#[test]
fn set_get_replace_merge() {
    with_stores(|s| {
        assert_eq!(ready(s.get("users", "u1")).unwrap(), None);
        ready(s.set(
            "users",
            "u1",
            fields(&[("name", "Ada".into()), ("age", 36.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        let doc = ready(s.get("users", "u1")).unwrap().unwrap();
        assert_eq!(
            doc,
            Document::new(
                "users",
                "u1",
                fields(&[("name", "Ada".into()), ("age", 36.into())])
            )
        );
        // Replace drops fields that are not in the new map.
        ready(s.set(
            "users",
            "u1",
            fields(&[("name", "Ada L.".into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        assert_eq!(
            ready(s.get("users", "u1")).unwrap().unwrap().fields,
            fields(&[("name", "Ada L.".into())])
        );
        // Merge keeps them.
        ready(s.set(
            "users",
            "u1",
            fields(&[("age", 37.into())]),
            SetOptions::MERGE,
        ))
        .unwrap();
        assert_eq!(
            ready(s.get("users", "u1")).unwrap().unwrap().fields,
            fields(&[("name", "Ada L.".into()), ("age", 37.into())])
        );
    });
}

#[test]
fn update_needs_an_existing_document() {
    with_stores(|s| {
        let err = ready(s.update("users", "nobody", fields(&[("a", 1.into())]))).unwrap_err();
        assert!(
            matches!(err, Error::NotFound { ref collection, ref id } if collection == "users" && id == "nobody")
        );
        ready(s.set(
            "users",
            "u",
            fields(&[("a", 1.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        ready(s.update("users", "u", fields(&[("b", 2.into())]))).unwrap();
        assert_eq!(
            ready(s.get("users", "u")).unwrap().unwrap().fields,
            fields(&[("a", 1.into()), ("b", 2.into())])
        );
    });
}

#[test]
fn delete_then_recreate() {
    with_stores(|s| {
        ready(s.delete("users", "never-existed")).unwrap();
        ready(s.set(
            "users",
            "u",
            fields(&[("a", 1.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        ready(s.delete("users", "u")).unwrap();
        assert_eq!(ready(s.get("users", "u")).unwrap(), None);
        assert!(matches!(
            ready(s.update("users", "u", fields(&[("a", 2.into())]))),
            Err(Error::NotFound { .. })
        ));
        ready(s.set(
            "users",
            "u",
            fields(&[("b", 2.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        assert_eq!(
            ready(s.get("users", "u")).unwrap().unwrap().fields,
            fields(&[("b", 2.into())])
        );
    });
}

#[test]
fn batch_is_all_or_nothing() {
    with_stores(|s| {
        ready(s.set("c", "keep", fields(&[("v", 1.into())]), SetOptions::REPLACE)).unwrap();
        let failing = vec![
            BatchOperation::Set {
                collection: "c".into(),
                id: "new".into(),
                fields: fields(&[("v", 2.into())]),
                merge: false,
            },
            BatchOperation::Delete {
                collection: "c".into(),
                id: "keep".into(),
            },
            BatchOperation::Update {
                collection: "c".into(),
                id: "missing".into(),
                fields: fields(&[("v", 3.into())]),
            },
        ];
        assert!(matches!(
            ready(s.batch_write(failing)),
            Err(Error::NotFound { .. })
        ));
        assert_eq!(ready(s.get("c", "new")).unwrap(), None);
        assert!(ready(s.get("c", "keep")).unwrap().is_some());
        let ok = vec![
            BatchOperation::Set {
                collection: "c".into(),
                id: "new".into(),
                fields: fields(&[("v", 2.into())]),
                merge: false,
            },
            BatchOperation::Delete {
                collection: "c".into(),
                id: "keep".into(),
            },
            BatchOperation::Update {
                collection: "c".into(),
                id: "new".into(),
                fields: fields(&[("w", 4.into())]),
            },
        ];
        let result = ready(s.batch_write(ok)).unwrap();
        assert_eq!(result.results.len(), 3);
        assert_eq!(
            ready(s.get("c", "new")).unwrap().unwrap().fields,
            fields(&[("v", 2.into()), ("w", 4.into())])
        );
        assert_eq!(ready(s.get("c", "keep")).unwrap(), None);
    });
}

#[test]
fn queries_use_the_reference_semantics() {
    with_stores(|s| {
        for (id, age, tags) in [
            ("a", 30, vec!["x", "y"]),
            ("b", 25, vec!["y"]),
            ("c", 41, vec![]),
            ("d", 25, vec!["z"]),
        ] {
            let tags = Value::Array(tags.into_iter().map(Value::from).collect());
            ready(s.set(
                "people",
                id,
                fields(&[("age", age.into()), ("tags", tags)]),
                SetOptions::REPLACE,
            ))
            .unwrap();
        }
        ready(s.set(
            "people",
            "e",
            fields(&[("age", "unknown".into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        let ids = |q: Query| -> Vec<String> {
            ready(s.query("people", &q))
                .unwrap()
                .documents
                .into_iter()
                .map(|d| d.id)
                .collect()
        };
        assert_eq!(
            ids(Query::new().filter("age", FilterOp::Eq, 25)),
            ["b", "d"]
        );
        assert_eq!(
            ids(Query::new().filter("age", FilterOp::Ne, 25)),
            ["a", "c", "e"]
        );
        assert_eq!(
            ids(Query::new().filter("age", FilterOp::Lt, 30)),
            ["b", "d"]
        );
        assert_eq!(
            ids(Query::new().filter("age", FilterOp::Le, 30)),
            ["a", "b", "d"]
        );
        assert_eq!(ids(Query::new().filter("age", FilterOp::Gt, 30)), ["c"]);
        assert_eq!(
            ids(Query::new().filter("age", FilterOp::Ge, 30)),
            ["a", "c"]
        );
        assert_eq!(
            ids(Query::new().filter(
                "age",
                FilterOp::In,
                Value::Array(vec![41.into(), "unknown".into()])
            )),
            ["c", "e"]
        );
        assert_eq!(
            ids(Query::new().filter("age", FilterOp::NotIn, Value::Array(vec![25.into()]))),
            ["a", "c", "e"]
        );
        assert_eq!(
            ids(Query::new().filter("tags", FilterOp::ArrayContains, "y")),
            ["a", "b"]
        );
        assert_eq!(
            ids(Query::new().filter(
                "tags",
                FilterOp::ArrayContainsAny,
                Value::Array(vec!["x".into(), "z".into()])
            )),
            ["a", "d"]
        );
        let q = Query::new()
            .filter("age", FilterOp::Ge, 0)
            .order_by("age", Direction::Descending)
            .limit(2);
        let page = ready(s.query("people", &q)).unwrap();
        assert_eq!(
            page.documents
                .iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>(),
            ["c", "a"]
        );
        let next = q.clone().start_after(page.next_cursor.unwrap());
        let page2 = ready(s.query("people", &next)).unwrap();
        assert_eq!(
            page2
                .documents
                .iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>(),
            ["b", "d"]
        );
        assert!(page2.next_cursor.is_none());
        assert!(matches!(
            ready(s.query("people", &Query::new().filter("age", FilterOp::In, 3))),
            Err(Error::InvalidArgument(_))
        ));
    });
}

#[test]
fn document_subscription_sees_every_change_in_order() {
    with_stores(|s| {
        let seen: Arc<Mutex<Vec<Option<i64>>>> = Arc::default();
        let sink = seen.clone();
        let sub = s
            .subscribe_document(
                "c",
                "d",
                Arc::new(move |doc: &Option<Document>| {
                    sink.lock().unwrap().push(
                        doc.as_ref()
                            .and_then(|d| d.fields.get("n"))
                            .and_then(Value::as_i64),
                    );
                }),
            )
            .unwrap();
        for n in 0..50 {
            ready(s.set("c", "d", fields(&[("n", n.into())]), SetOptions::REPLACE)).unwrap();
        }
        ready(s.set(
            "c",
            "other",
            fields(&[("n", 99.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        ready(s.delete("c", "d")).unwrap();
        wait_until("52 document events", || seen.lock().unwrap().len() >= 52);
        let mut expected: Vec<Option<i64>> = vec![None];
        expected.extend((0..50).map(Some));
        expected.push(None);
        assert_eq!(*seen.lock().unwrap(), expected);
        drop(sub);
        // A probe subscribed after the drop: one delivery thread serves both in
        // commit order, and the dropped one would come first, so once the probe
        // has the write, the dropped listener would have had it too.
        let probe: Arc<Mutex<Vec<Option<i64>>>> = Arc::default();
        let probe_sink = probe.clone();
        let _probe = s
            .subscribe_document(
                "c",
                "d",
                Arc::new(move |doc: &Option<Document>| {
                    probe_sink.lock().unwrap().push(
                        doc.as_ref()
                            .and_then(|d| d.fields.get("n"))
                            .and_then(Value::as_i64),
                    );
                }),
            )
            .unwrap();
        ready(s.set("c", "d", fields(&[("n", 7.into())]), SetOptions::REPLACE)).unwrap();
        wait_until("the probe sees the write", || {
            probe.lock().unwrap().last() == Some(&Some(7))
        });
        assert_eq!(seen.lock().unwrap().len(), 52, "no event after unsubscribe");
    });
}

#[test]
fn query_subscription_fires_on_relevant_changes_only() {
    with_stores(|s| {
        let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let sink = seen.clone();
        let _sub = s
            .subscribe_query(
                "c",
                Query::new().filter("ok", FilterOp::Eq, true),
                Arc::new(move |docs: &Vec<Document>| {
                    sink.lock()
                        .unwrap()
                        .push(docs.iter().map(|d| d.id.clone()).collect());
                }),
            )
            .unwrap();
        ready(s.set(
            "c",
            "a",
            fields(&[("ok", true.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        ready(s.set(
            "c",
            "b",
            fields(&[("ok", false.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        ready(s.set(
            "c",
            "b",
            fields(&[("ok", true.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        ready(s.delete("c", "a")).unwrap();
        // A write that changes nothing the query sees fires nothing; the next
        // relevant one is the fifth event, so no extra event came in between.
        ready(s.set(
            "c",
            "x",
            fields(&[("ok", false.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        ready(s.set(
            "c",
            "z",
            fields(&[("ok", true.into())]),
            SetOptions::REPLACE,
        ))
        .unwrap();
        wait_until("5 query events", || seen.lock().unwrap().len() >= 5);
        let got = seen.lock().unwrap().clone();
        let expect: Vec<Vec<String>> = vec![
            vec![],
            vec!["a".into()],
            vec!["a".into(), "b".into()],
            vec!["b".into()],
            vec!["b".into(), "z".into()],
        ];
        assert_eq!(got, expect);
    });
}

#[test]
fn slow_subscriber_does_not_block_writers() {
    with_stores_config(StoreConfig::default().with_subscription_buffer(8), |s| {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let last: Arc<Mutex<Option<i64>>> = Arc::default();
        let (g, sink) = (gate.clone(), last.clone());
        let _sub = s
            .subscribe_document(
                "c",
                "d",
                Arc::new(move |doc: &Option<Document>| {
                    let _wait = g.lock().unwrap();
                    *sink.lock().unwrap() = doc
                        .as_ref()
                        .and_then(|d| d.fields.get("n"))
                        .and_then(Value::as_i64);
                }),
            )
            .unwrap();
        // The listener is stuck; writes still complete, far beyond the mailbox size.
        for n in 0..300 {
            ready(s.set("c", "d", fields(&[("n", n.into())]), SetOptions::REPLACE)).unwrap();
        }
        drop(held);
        wait_until("the latest state to arrive", || {
            *last.lock().unwrap() == Some(299)
        });
    });
}

#[test]
fn timestamps_and_ids() {
    with_stores(|s| {
        let a = s.server_timestamp();
        let b = s.server_timestamp();
        assert!(b > a);
        let ids: std::collections::BTreeSet<String> =
            (0..500).map(|_| s.generate_id("c")).collect();
        assert_eq!(ids.len(), 500);
    });
}

#[test]
fn bad_keys_are_typed_errors() {
    with_stores(|s| {
        assert!(matches!(
            ready(s.get("", "x")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            ready(s.set("c", "", fields(&[]), SetOptions::REPLACE)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            ready(s.delete("c\0", "x")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(
            s.subscribe_document("", "x", Arc::new(|_: &Option<Document>| {}))
                .is_err()
        );
    });
}
