//! The application API: queries, watches with `has_pending_writes`, field
//! operations, batches, history and restore.

mod common;

use std::time::Duration;

use ecomesh_sync::{BatchOperation, FieldOp, Node, Query, SetOptions, Value};
use futures::StreamExt;

use common::{fields, pair};

const LIMIT: Duration = Duration::from_secs(20);

async fn next<S: futures::Stream + Unpin>(s: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(LIMIT, s.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("the watch ended before {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_query_fires_on_a_remote_merge_and_pending_writes_clear() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = pair(da.path(), db.path()).await;
    let mut on_b = b.watch_query("notes", Query::new()).unwrap();
    let first = next(&mut on_b, "b's initial snapshot").await;
    assert!(first.documents.is_empty());
    let mut on_a = a.watch_doc("notes", "n1").unwrap();
    assert!(
        next(&mut on_a, "a's initial snapshot")
            .await
            .document
            .is_none()
    );

    a.collection("notes")
        .doc("n1")
        .set(fields(&[("title", "hello")]), SetOptions::REPLACE)
        .await
        .unwrap();
    let local = next(&mut on_a, "a's own write").await;
    assert!(local.document.is_some());
    assert!(local.has_pending_writes, "no peer acknowledged it yet");

    let remote = next(&mut on_b, "the merge on b").await;
    assert_eq!(remote.documents.len(), 1);
    assert_eq!(
        remote.documents[0].fields.get("title"),
        Some(&Value::Text("hello".into()))
    );
    assert!(!remote.has_pending_writes, "b wrote nothing");

    loop {
        let s = next(&mut on_a, "the acknowledgement on a").await;
        if !s.has_pending_writes {
            assert!(s.document.is_some());
            break;
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_sets_batches_history_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::builder(dir.path()).start().await.unwrap();
    let doc = node.collection("c").doc("d");
    doc.increment("n", 2).await.unwrap();
    doc.increment("n", 3).await.unwrap();
    doc.apply(vec![(
        "tags".into(),
        FieldOp::AddToSet(vec![Value::Text("x".into()), Value::Text("y".into())]),
    )])
    .await
    .unwrap();
    doc.apply(vec![(
        "tags".into(),
        FieldOp::RemoveFromSet(vec![Value::Text("x".into())]),
    )])
    .await
    .unwrap();
    let got = doc.get().await.unwrap().unwrap();
    assert_eq!(got.fields.get("n"), Some(&Value::Integer(5)));
    assert_eq!(
        got.fields.get("tags"),
        Some(&Value::Array(vec![Value::Text("y".into())]))
    );

    let r = node
        .batch(vec![
            BatchOperation::Set {
                collection: "c".into(),
                id: "e".into(),
                fields: fields(&[("k", "v")]),
                merge: false,
            },
            BatchOperation::Delete {
                collection: "c".into(),
                id: "d".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(r.results.len(), 2);
    assert!(doc.get().await.unwrap().is_none());
    assert_eq!(
        node.query("c", &Query::new()).await.unwrap().len(),
        1,
        "only e is live"
    );

    let history = doc.history().unwrap();
    assert_eq!(history.len(), 5, "four writes and the delete");
    let before_delete = history[3].cid.clone();
    // The stream names each version's write time, as its history does.
    let changes = node.changes(0, 100).entries;
    let first = changes
        .iter()
        .find(|c| c.version == history[0].cid)
        .expect("the first version is in the stream");
    assert_eq!(first.time_ms, history[0].timestamp.physical_ms);
    assert!(first.time_ms > 1_700_000_000_000, "a Unix ms time");
    doc.restore(&before_delete).await.unwrap();
    let back = doc.get().await.unwrap().unwrap();
    assert_eq!(back.fields.get("n"), Some(&Value::Integer(5)));
    assert_eq!(doc.version().unwrap().len(), 1);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_count_live_documents_and_versions_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::builder(dir.path()).start().await.unwrap();
    let a = node.collection("a");
    let first = a
        .doc("x")
        .set(fields(&[("k", "1")]), SetOptions::REPLACE)
        .await
        .unwrap()
        .version
        .unwrap();
    a.doc("x")
        .set(fields(&[("k", "2")]), SetOptions::REPLACE)
        .await
        .unwrap();
    a.doc("y")
        .set(fields(&[("k", "3")]), SetOptions::REPLACE)
        .await
        .unwrap();
    let gone = node
        .collection("b")
        .doc("z")
        .set(fields(&[("k", "4")]), SetOptions::REPLACE)
        .await
        .unwrap()
        .version
        .unwrap();
    let deleted = node.collection("b").doc("z").delete().await.unwrap();
    let counts: Vec<(String, usize)> = node
        .collections()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.documents))
        .collect();
    assert!(counts.contains(&("a".into(), 2)), "{counts:?}");
    assert!(counts.contains(&("b".into(), 0)), "{counts:?}");

    let old = a.doc("x").at(&first).unwrap().expect("x's first version");
    assert_eq!(
        old.document.unwrap().fields.get("k"),
        Some(&Value::Text("1".into()))
    );
    assert!(old.info.parents.is_empty());
    assert_eq!(old.info.author, node.peer_id());
    // A version of another document, and a deleted state.
    assert!(a.doc("y").at(&first).unwrap().is_none());
    let z = node.collection("b").doc("z");
    assert!(z.at(&gone).unwrap().unwrap().document.is_some());
    let tomb = z.at(&deleted.version.unwrap()).unwrap().unwrap();
    assert!(tomb.document.is_none());

    let q = node.queue_status();
    assert_eq!(q.messages, 0, "no peer: nothing is buffered for one");
    assert!(q.max_messages > 0 && q.max_bytes > 0);
    node.shutdown().await.unwrap();
}
