//! Sync events, per-peer sync states (Conflict then Resolved) and
//! `force_sync` starting the session that merges them, with two nodes on
//! the in-memory network.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use ecomesh_p2p_storage::PUSH_TYPE;
use ecomesh_sync::{
    Node, Operation, SetOptions, SyncEvent, SyncEvents, SyncState, TransportType, VersionEvent,
};
use futures::StreamExt;

use common::{fields, pair_on_net, wait_until};

const LIMIT: Duration = Duration::from_secs(20);

/// The first event of `events` that `pick` accepts, failing after [`LIMIT`].
async fn until<T>(
    events: &mut SyncEvents,
    what: &str,
    mut pick: impl FnMut(&SyncEvent) -> Option<T>,
) -> T {
    let wait = async {
        while let Some(ev) = events.next().await {
            if let Some(t) = pick(&ev) {
                return t;
            }
        }
        panic!("the event stream ended before {what}");
    };
    tokio::time::timeout(LIMIT, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn write(node: &Node, id: &str, title: &str) {
    node.collection("notes")
        .doc(id)
        .set(fields(&[("title", title)]), SetOptions::REPLACE)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_sent_and_received_are_events_and_concurrent_ones_conflict_then_resolve() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (net, a, b) = pair_on_net(da.path(), db.path()).await;
    let (pa, pb) = (a.peer_id(), b.peer_id());
    let mut on_a = a.sync_events();
    let mut on_b = b.sync_events();

    // A plain write: pushed by a, received by b.
    write(&a, "n1", "first").await;
    let sent = until(&mut on_a, "a's push of n1", |ev| match ev {
        SyncEvent::VersionSent(v) if v.id == "n1" => Some(v.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (sent.peer, sent.collection.as_str(), sent.operation),
        (pb, "notes", Operation::Create)
    );
    let got: VersionEvent = until(&mut on_b, "b taking in n1", |ev| match ev {
        SyncEvent::VersionReceived(v) if v.id == "n1" => Some(v.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got.peer, pa);
    assert_eq!(got.version, sent.version);
    assert_eq!(got.operation, Operation::Create);
    assert_eq!(got.transport, Some(TransportType::Wired));

    // Concurrent writes of one document while every push is lost.
    net.lose_types(&[PUSH_TYPE]);
    write(&a, "n2", "from a").await;
    write(&b, "n2", "from b").await;
    wait_until(LIMIT, "both pushes are lost", || {
        let net = net.clone();
        async move { net.lost_of_type(PUSH_TYPE) >= 2 }
    })
    .await;
    net.lose_types(&[]);
    let started = a.force_sync(Some(pb)).unwrap();
    assert_eq!(started, vec![pb]);

    // b merges a's version in the session a opened: Conflict, then Resolved.
    let mut seen = Vec::new();
    let states = until(&mut on_b, "b: conflict then resolved", |ev| match ev {
        SyncEvent::PeerState { peer, to, .. } if *peer == pa => {
            seen.push(*to);
            (*to == SyncState::Resolved).then(|| seen.clone())
        }
        _ => None,
    })
    .await;
    let at = states
        .iter()
        .position(|s| *s == SyncState::Conflict)
        .unwrap_or_else(|| panic!("no Conflict before Resolved: {states:?}"));
    assert_eq!(states[at + 1], SyncState::Resolved, "{states:?}");

    wait_until(LIMIT, "both sides hold the merged n2", || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let da = a.collection("notes").doc("n2").get().await.unwrap();
            let db = b.collection("notes").doc("n2").get().await.unwrap();
            da.is_some() && da == db
        }
    })
    .await;
    wait_until(LIMIT, "the session with a ended synced", || {
        let b = b.clone();
        async move { b.peer_sync_state(&pa).state == SyncState::Synced }
    })
    .await;
    assert!(b.peer_sync_state(&pa).last_synced_ms.is_some());
    assert_eq!(b.sync_state(), SyncState::Synced);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
