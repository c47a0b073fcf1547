//! The assembled node: start, documents, restart, texts and replication
//! between two nodes on an in-memory network.

mod common;

use std::time::Duration;

use ecomesh_sync::{Node, SetOptions, SyncError, TextStatus, Value};

use common::{fields, immediate_net, mem_node, pair, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::builder(dir.path()).start().await.unwrap();
    let id = node.peer_id();
    let doc = node.collection("notes").doc("n1");
    doc.set(fields(&[("title", "hello")]), SetOptions::REPLACE)
        .await
        .unwrap();
    doc.set(fields(&[("body", "world")]), SetOptions::MERGE)
        .await
        .unwrap();
    node.shutdown().await.unwrap();
    assert!(!node.is_running());
    assert!(matches!(
        doc.set(fields(&[("x", "y")]), SetOptions::MERGE).await,
        Err(SyncError::Stopped)
    ));
    drop((doc, node));

    let node = Node::builder(dir.path()).start().await.unwrap();
    assert_eq!(
        node.peer_id(),
        id,
        "the identity is kept in the data directory"
    );
    let got = node
        .collection("notes")
        .doc("n1")
        .get()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.fields.get("title"), Some(&Value::Text("hello".into())));
    assert_eq!(got.fields.get("body"), Some(&Value::Text("world".into())));
    node.collection("notes").doc("n1").delete().await.unwrap();
    assert!(
        node.collection("notes")
            .doc("n1")
            .get()
            .await
            .unwrap()
            .is_none()
    );
    assert!(node.collection("notes").list().unwrap().is_empty());
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_replicates_and_a_text_is_delivered() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = pair(da.path(), db.path()).await;
    a.collection("notes")
        .doc("n1")
        .set(fields(&[("title", "from a")]), SetOptions::REPLACE)
        .await
        .unwrap();
    let doc = b.collection("notes").doc("n1");
    wait_until(Duration::from_secs(20), "b has a's note", || {
        let doc = doc.clone();
        async move { b_has(&doc).await }
    })
    .await;

    let sent = a.send_text(b.peer_id(), "hi b".into()).await.unwrap();
    wait_until(Duration::from_secs(20), "the text is delivered", || {
        let a = a.clone();
        async move {
            a.outbox()
                .unwrap()
                .iter()
                .any(|m| m.id == sent.id.to_string() && m.status == TextStatus::Delivered)
        }
    })
    .await;
    let inbox = b.inbox().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].text, "hi b");
    assert_eq!(inbox[0].from, a.peer_id().to_string());
    let status = a.status().unwrap();
    assert_eq!(status.delivered, 1);
    assert_eq!(status.peers, 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn b_has(doc: &ecomesh_sync::DocRef) -> bool {
    matches!(doc.get().await, Ok(Some(d)) if d.fields.get("title") == Some(&Value::Text("from a".into())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_to_an_unknown_peer_is_refused_and_nothing_kept() {
    let dir = tempfile::tempdir().unwrap();
    let node = mem_node(&immediate_net(), dir.path()).await;
    let stranger = ecomesh_identity::Identity::generate().unwrap().peer_id();
    let e = node.send_text(stranger, "x".into()).await.unwrap_err();
    assert!(
        matches!(e, SyncError::UnknownKey(p) if p == stranger),
        "{e}"
    );
    assert!(node.outbox().unwrap().is_empty());
    node.shutdown().await.unwrap();
}
