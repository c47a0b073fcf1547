//! `force_sync` delivers what a push missed, where nothing else would have:
//! two nodes on the wired transport over loopback, the anti-entropy period
//! set to an hour, and the push of a write lost on the wire (a transport
//! wrapper loses `ecomesh/push` sends while the link stays up).
//!
//! Why nothing but the forced session can deliver the version here: the
//! push was "sent" (the transport took it), so the mesh keeps it only for a
//! retransmission at the peer's next discovery, and the sync queue re-pushes
//! only when a partner connects; the link never drops, so neither happens.
//! Catch-up (`since`/`delta`) and the connection's anti-entropy session ran
//! at connection time, before the write, and the next periodic session is an
//! hour away. The receiving side is checked with local reads only (`list`,
//! `version`), since `get` would fetch a missing document from peers.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod loopback;

use std::time::{Duration, Instant};

use ecomesh_p2p_storage::PUSH_TYPE;
use ecomesh_sync::{Map, Node, SetOptions, SyncError, SyncState, Value};

use loopback::{LoopNode, config, connect, start, wait_until};

const LIMIT: Duration = Duration::from_secs(20);
/// How long the receiver is watched to show a lost push stays lost.
const QUIET: Duration = Duration::from_secs(2);
/// How soon a forced session must deliver.
const FORCED: Duration = Duration::from_secs(5);

fn has_local(node: &Node, id: &str) -> bool {
    let listed = node
        .collection("notes")
        .list()
        .unwrap()
        .iter()
        .any(|d| d.id == id);
    let heads = node.collection("notes").doc(id).version().unwrap();
    assert_eq!(listed, !heads.is_empty(), "list and heads disagree on {id}");
    listed
}

/// Writes `id` on `from` while its pushes are lost, heals the link and
/// checks that `to` still lacks it after [`QUIET`].
async fn write_with_push_lost(from: &LoopNode, to: &LoopNode, id: &str) {
    let lost_before = from.lossy.lost(PUSH_TYPE);
    from.lossy.lose(&[PUSH_TYPE]);
    let mut fields = Map::new();
    fields.insert("title".into(), Value::Text(format!("{id} from A")));
    from.node
        .collection("notes")
        .doc(id)
        .set(fields, SetOptions::REPLACE)
        .await
        .unwrap();
    wait_until(LIMIT, "the push of the write is lost", || {
        let n = from.lossy.lost(PUSH_TYPE);
        async move { n > lost_before }
    })
    .await;
    from.lossy.lose(&[]);
    // A bounded observation window, not a wait for something to happen: the
    // version must stay missing on `to` however long it is watched.
    let quiet = Instant::now();
    while quiet.elapsed() < QUIET {
        assert!(
            !has_local(&to.node, id),
            "{id} reached the peer without force_sync: the test no longer isolates it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_sync_delivers_a_version_whose_push_was_lost() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = config();
    cfg.p2p.resync_interval_ms = 3_600_000;
    let a = start("A", da.path(), cfg.clone()).await;
    let b = start("B", db.path(), cfg).await;
    let (pa, pb) = (a.node.peer_id(), b.node.peer_id());
    connect(&a, &b).await;
    // The connection's own catch-up and anti-entropy session end first.
    wait_until(LIMIT, "the connection's sessions end synced", || {
        let (an, bn) = (a.node.clone(), b.node.clone());
        async move {
            an.peer_sync_state(&pb).state == SyncState::Synced
                && bn.peer_sync_state(&pa).state == SyncState::Synced
        }
    })
    .await;

    // B pulls: a forced session opened by the side that lacks the version.
    write_with_push_lost(&a, &b, "n1").await;
    let t = Instant::now();
    assert_eq!(b.node.force_sync(Some(pa)).unwrap(), vec![pa]);
    wait_until(FORCED, "B's forced session brings n1", || {
        let bn = b.node.clone();
        async move { has_local(&bn, "n1") }
    })
    .await;
    eprintln!(
        "n1 on B {} ms after B's force_sync",
        t.elapsed().as_millis()
    );
    let on_a = a.node.collection("notes").doc("n1").get().await.unwrap();
    let on_b = b.node.collection("notes").doc("n1").get().await.unwrap();
    assert!(on_a.is_some());
    assert_eq!(on_a, on_b);

    // A pushes: a forced session with every reachable peer, opened by the
    // side that holds the version.
    write_with_push_lost(&a, &b, "n2").await;
    let t = Instant::now();
    assert_eq!(a.node.force_sync(None).unwrap(), vec![pb]);
    wait_until(FORCED, "A's forced session brings n2 to B", || {
        let bn = b.node.clone();
        async move { has_local(&bn, "n2") }
    })
    .await;
    eprintln!(
        "n2 on B {} ms after A's force_sync",
        t.elapsed().as_millis()
    );
    assert_eq!(
        a.node.collection("notes").doc("n2").version().unwrap(),
        b.node.collection("notes").doc("n2").version().unwrap()
    );
    assert_eq!(
        a.node.status().unwrap().replicated_root,
        b.node.status().unwrap().replicated_root
    );

    // A peer that is not reachable is refused; so is a stopped node.
    let stranger = ecomesh_identity::Identity::generate().unwrap().peer_id();
    assert!(matches!(
        a.node.force_sync(Some(stranger)),
        Err(SyncError::InvalidArgument(_))
    ));
    a.node.shutdown().await.unwrap();
    assert!(matches!(a.node.force_sync(None), Err(SyncError::Stopped)));
    b.node.shutdown().await.unwrap();
}
