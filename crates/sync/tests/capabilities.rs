//! Capabilities checked (issue 20, item 3) on real `Node`s: a non-public
//! collection is served only to peers holding a read token and takes in
//! pushes only from peers holding a write token; the others are refused and
//! reported; a revoked token admits no more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{fields, node_on, test_config, wait_until};
use ecomesh_identity::Identity;
use ecomesh_sync::{Action, CapabilityRefusal, Node, SetOptions};
use ecomesh_transport_tests::{Delivery, MemNetwork, Topology};
use ecomesh_types::TransportType;

const LIMIT: Duration = Duration::from_secs(30);

async fn has(node: &Node, c: &str, id: &str) -> bool {
    matches!(node.collection(c).doc(id).get().await, Ok(Some(_)))
}

fn refused(log: &[CapabilityRefusal], peer: &Node, action: &str) -> bool {
    log.iter()
        .any(|r| r.peer == peer.peer_id() && r.collection == "ledger" && r.action == action)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_public_collection_admits_only_token_holders_and_reports_the_rest() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate().unwrap()).collect();
    let net = MemNetwork::new(0, 0);
    net.set_delivery(Delivery::Immediate);
    net.set_topology(Topology::Manual);
    let a = node_on(&net, &ids[0], dirs[0].path(), test_config()).await;
    let b = node_on(&net, &ids[1], dirs[1].path(), test_config()).await;
    let c = node_on(&net, &ids[2], dirs[2].path(), test_config()).await;
    // A star around A: B and C meet only A.
    net.link(a.peer_id(), b.peer_id(), TransportType::Wired);
    net.link(a.peer_id(), c.peer_id(), TransportType::Wired);
    wait_until(LIMIT, "A sees B and C", || {
        let a = a.clone();
        async move { a.peers().len() == 2 }
    })
    .await;

    a.restrict_collection("ledger").unwrap();
    let token = a
        .grant_capability(
            "ledger",
            b.peer_id(),
            &[Action::Read, Action::Write],
            Duration::from_secs(3600),
        )
        .unwrap();
    let mut log: Vec<CapabilityRefusal> = Vec::new();

    // Reads: B (a token) is served, C (none) is not.
    a.collection("ledger")
        .doc("a1")
        .set(fields(&[("amount", "10")]), SetOptions::REPLACE)
        .await
        .unwrap();
    a.collection("open")
        .doc("o1")
        .set(fields(&[("x", "public")]), SetOptions::REPLACE)
        .await
        .unwrap();
    wait_until(LIMIT, "B has the ledger entry, C the public one", || {
        let (b, c) = (b.clone(), c.clone());
        async move { has(&b, "ledger", "a1").await && has(&c, "open", "o1").await }
    })
    .await;
    c.force_sync(None).unwrap();
    wait_until(LIMIT, "C's read is refused and reported", || {
        log.extend(a.capability_refusals());
        let seen = refused(&log, &c, "read");
        async move { seen }
    })
    .await;
    assert!(!has(&c, "ledger", "a1").await, "C was served the ledger");

    // Writes: B's push is taken in, C's is refused and reported.
    b.collection("ledger")
        .doc("b1")
        .set(fields(&[("amount", "20")]), SetOptions::REPLACE)
        .await
        .unwrap();
    c.collection("ledger")
        .doc("c1")
        .set(fields(&[("amount", "30")]), SetOptions::REPLACE)
        .await
        .unwrap();
    wait_until(LIMIT, "A takes B's entry and refuses C's", || {
        let a2 = a.clone();
        log.extend(a.capability_refusals());
        let seen = refused(&log, &c, "write");
        async move { seen && has(&a2, "ledger", "b1").await }
    })
    .await;
    assert!(!has(&a, "ledger", "c1").await, "C's push was taken in");

    // Revocation: B's next push is refused.
    a.revoke_capability(*token.token_id()).unwrap();
    b.collection("ledger")
        .doc("b2")
        .set(fields(&[("amount", "40")]), SetOptions::REPLACE)
        .await
        .unwrap();
    wait_until(LIMIT, "B's push after revocation is refused", || {
        log.extend(a.capability_refusals());
        let seen = refused(&log, &b, "write");
        async move { seen }
    })
    .await;
    assert!(!has(&a, "ledger", "b2").await);
    // A revoked token cannot be installed again.
    assert!(a.install_capability(&token.to_bytes()).is_err());
    for n in [&a, &b, &c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restrictions_tokens_and_revocations_survive_a_restart_and_refusals_are_events() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<Identity> = (0..2).map(|_| Identity::generate().unwrap()).collect();
    let net = MemNetwork::new(0, 0);
    net.set_delivery(Delivery::Immediate);
    let a = node_on(&net, &ids[0], dir.path(), test_config()).await;
    let (x, y) = (
        Identity::generate().unwrap().peer_id(),
        Identity::generate().unwrap().peer_id(),
    );
    a.restrict_collection("ledger").unwrap();
    let kept = a
        .grant_capability("ledger", x, &[Action::Read], Duration::from_secs(3600))
        .unwrap();
    let revoked = a
        .grant_capability("ledger", y, &[Action::Write], Duration::from_secs(3600))
        .unwrap();
    a.revoke_capability(*revoked.token_id()).unwrap();
    a.shutdown().await.unwrap();
    drop(a);

    let a = node_on(&net, &ids[0], dir.path(), test_config()).await;
    assert_eq!(
        a.restricted_collections(),
        vec![("ledger".to_owned(), a.peer_id())]
    );
    assert_eq!(a.capabilities(), vec![kept]);
    assert!(
        a.install_capability(&revoked.to_bytes()).is_err(),
        "the revocation is remembered"
    );
    assert!(ecomesh_sync::parse_token_id("xyz").is_err());

    // A peer without a token is refused; the refusal is a sync event.
    let mut events = a.sync_events();
    let dir_b = tempfile::tempdir().unwrap();
    let b = node_on(&net, &ids[1], dir_b.path(), test_config()).await;
    a.collection("ledger")
        .doc("l1")
        .set(fields(&[("amount", "1")]), SetOptions::REPLACE)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(ecomesh_sync::SyncEvent::CapabilityRefused {
                peer,
                collection,
                action,
            })) if peer == b.peer_id() => {
                assert_eq!((collection.as_str(), action), ("ledger", "read"));
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no capability_refused event for B: {other:?}"),
        }
    }
    assert!(refused(&a.capability_refusals(), &b, "read"));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
