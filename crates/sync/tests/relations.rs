//! Relationships and reach (issue 20, item 2) on real `Node`s: a node knows
//! its family, neighbours and strangers from configuration and from
//! `set_relationship`, and reach decides with them what is pushed, served
//! and reconciled to whom, at once when a relationship changes and after a
//! restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{fields, node_on, test_config, wait_until};
use ecomesh_identity::Identity;
use ecomesh_replication::reach::{Reach, ReachPolicy};
use ecomesh_sync::{
    ContentId, Node, NodeConfig, PeerId, RelationSource, SetOptions, SyncError, Trust,
    parse_peer_id,
};
use ecomesh_transport_tests::{Delivery, MemNetwork, Topology};
use ecomesh_types::TransportType;

const LIMIT: Duration = Duration::from_secs(30);

/// Whether `node` holds the document locally (`get` would fetch a miss
/// from peers).
async fn has(node: &Node, c: &str, id: &str) -> bool {
    node.collection(c)
        .list()
        .unwrap()
        .iter()
        .any(|d| d.id == id)
}

/// A's configuration: `fam` is Local, `hood` Neighbourhood, the rest
/// commons; `family` is configured as family.
fn owner_config(family: Option<&Identity>) -> NodeConfig {
    let mut config = test_config();
    let mut reach = ReachPolicy::new(Reach::Commons);
    reach.set_collection("fam", Reach::Local);
    reach.set_collection("hood", Reach::Neighbourhood);
    config.p2p.reach = reach;
    match family {
        Some(f) => config.with_relationship(f.peer_id(), Trust::Family),
        None => config,
    }
}

async fn write(node: &Node, c: &str, id: &str) -> ContentId {
    node.collection(c)
        .doc(id)
        .set(fields(&[("v", id)]), SetOptions::REPLACE)
        .await
        .unwrap()
        .version
        .unwrap()
}

/// A star of the owner A and three peers that meet only A, on `net`.
async fn star(net: &MemNetwork, ids: &[Identity], dirs: &[&Path], owner: NodeConfig) -> Vec<Node> {
    let mut nodes = vec![node_on(net, &ids[0], dirs[0], owner).await];
    for i in 1..ids.len() {
        let n = node_on(net, &ids[i], dirs[i], test_config()).await;
        net.link(nodes[0].peer_id(), n.peer_id(), TransportType::Wired);
        nodes.push(n);
    }
    let a = nodes[0].clone();
    let want = ids.len() - 1;
    wait_until(LIMIT, "A sees every peer", || {
        let a = a.clone();
        async move { a.peers().len() == want }
    })
    .await;
    nodes
}

fn manual_net() -> MemNetwork {
    let net = MemNetwork::new(0, 0);
    net.set_delivery(Delivery::Immediate);
    net.set_topology(Topology::Manual);
    net
}

/// Writes `marker` to the commons collection `open` after the rest (so
/// every push before it had its turn) and waits until each peer holds it;
/// then runs an anti-entropy session from A with each peer and waits until
/// each one ended, so what reach admits has been reconciled.
async fn settle(a: &Node, peers: &[&Node], marker: &str) {
    write(a, "open", marker).await;
    for p in peers {
        let p = (*p).clone();
        let m = marker.to_owned();
        wait_until(LIMIT, "every peer has the marker", move || {
            let p = p.clone();
            let m = m.clone();
            async move { has(&p, "open", &m).await }
        })
        .await;
    }
    let t0 = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    a.force_sync(None).unwrap();
    // Each peer's last session end is stamped at or after the forced start.
    let ids: Vec<PeerId> = peers.iter().map(|p| p.peer_id()).collect();
    wait_until(LIMIT, "A's forced sessions end", || {
        let a = a.clone();
        let ids = ids.clone();
        async move {
            ids.iter()
                .all(|p| a.peer_sync_state(p).last_synced_ms.is_some_and(|t| t >= t0))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reach_follows_configured_and_runtime_relationships_and_survives_restart() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(|d| d.path()).collect();
    let ids: Vec<Identity> = (0..4).map(|_| Identity::generate().unwrap()).collect();
    let net = manual_net();
    let nodes = star(&net, &ids, &paths, owner_config(Some(&ids[1]))).await;
    let (a, f, n, s) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);

    // F is family from the configuration; N becomes a neighbour at run time.
    assert_eq!(a.relationship(&f.peer_id()), Trust::Family);
    assert_eq!(a.relationship(&n.peer_id()), Trust::Stranger);
    a.set_relationship(n.peer_id(), Trust::Neighbour).unwrap();
    assert_eq!(a.relationship(&n.peer_id()), Trust::Neighbour);
    assert_eq!(a.relationship(&s.peer_id()), Trust::Stranger);

    let fam = write(a, "fam", "f1").await;
    let hood = write(a, "hood", "h1").await;
    settle(a, &[f, n, s], "m1").await;
    // Local reaches family only; Neighbourhood family and neighbours.
    assert!(has(f, "fam", "f1").await, "family gets a Local collection");
    assert!(!has(n, "fam", "f1").await, "a neighbour does not");
    assert!(!has(s, "fam", "f1").await, "a stranger does not");
    assert!(has(f, "hood", "h1").await && has(n, "hood", "h1").await);
    assert!(
        !has(s, "hood", "h1").await,
        "a stranger gets no Neighbourhood data"
    );
    // What A would serve each of them on request says the same.
    assert!(a.serve_version(f.peer_id(), &fam).is_some());
    assert!(a.serve_version(n.peer_id(), &fam).is_none());
    assert!(a.serve_version(s.peer_id(), &hood).is_none());
    assert!(a.serve_version(n.peer_id(), &hood).is_some());

    // At run time: S becomes family (it is served both collections from now
    // on) and N a stranger (nothing more of them).
    a.set_relationship(s.peer_id(), Trust::Family).unwrap();
    a.set_relationship(n.peer_id(), Trust::Stranger).unwrap();
    assert!(a.serve_version(s.peer_id(), &fam).is_some());
    assert!(a.serve_version(n.peer_id(), &hood).is_none());
    let hood2 = write(a, "hood", "h2").await;
    settle(a, &[f, n, s], "m2").await;
    wait_until(LIMIT, "S, family now, holds both collections", || {
        let s = s.clone();
        async move {
            has(&s, "fam", "f1").await && has(&s, "hood", "h1").await && has(&s, "hood", "h2").await
        }
    })
    .await;
    assert!(
        !has(n, "hood", "h2").await,
        "a downgraded peer gets no later writes"
    );
    assert!(a.serve_version(n.peer_id(), &hood2).is_none());

    // The listing, with sources; a typed error for a bad peer id; the
    // levels that are not relationships are refused.
    let list = a.relationships();
    let row = |p: &Node| {
        list.iter()
            .find(|r| r.peer == p.peer_id())
            .copied()
            .unwrap()
    };
    assert_eq!(
        (row(f).trust, row(f).source),
        (Trust::Family, RelationSource::Config)
    );
    assert_eq!(
        (row(s).trust, row(s).source),
        (Trust::Family, RelationSource::Runtime)
    );
    assert_eq!(
        (row(n).trust, row(n).source),
        (Trust::Stranger, RelationSource::Runtime)
    );
    assert!(matches!(
        parse_peer_id("not-a-peer"),
        Err(SyncError::InvalidPeerId { .. })
    ));
    assert!(a.set_relationship(a.peer_id(), Trust::Family).is_err());
    assert!(a.set_relationship(f.peer_id(), Trust::OwnDevice).is_err());
    assert!(
        !a.remove_relationship(&f.peer_id()).unwrap(),
        "configured, not set at run time"
    );

    // Restart A without F in its configuration: the runtime entries are
    // back, F is a stranger now, and reach follows.
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    drop(nodes);
    let net = manual_net();
    let nodes = star(&net, &ids, &paths, owner_config(None)).await;
    let (a, f, n, s) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    assert_eq!(a.relationship(&s.peer_id()), Trust::Family);
    assert_eq!(a.relationship(&n.peer_id()), Trust::Stranger);
    assert_eq!(a.relationship(&f.peer_id()), Trust::Stranger);
    write(a, "fam", "f2").await;
    settle(a, &[f, n, s], "m3").await;
    wait_until(
        LIMIT,
        "S, family at run time, gets f2 after the restart",
        || {
            let s = s.clone();
            async move { has(&s, "fam", "f2").await }
        },
    )
    .await;
    assert!(
        !has(f, "fam", "f2").await,
        "F is no longer configured as family"
    );
    // Removing S's entry makes it a stranger again, durably.
    assert!(a.remove_relationship(&s.peer_id()).unwrap());
    assert_eq!(a.relationship(&s.peer_id()), Trust::Stranger);
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    let s_id = nodes[3].peer_id();
    drop(nodes);
    let a = node_on(&manual_net(), &ids[0], paths[0], owner_config(None)).await;
    assert_eq!(
        a.relationship(&s_id),
        Trust::Stranger,
        "the removal is durable"
    );
    assert_eq!(a.relationship(&ids[2].peer_id()), Trust::Stranger);
    assert_eq!(a.relationships().len(), 1, "only N's runtime entry is left");
    a.shutdown().await.unwrap();
}
