//! GossipSub: a message published on a collection topic reaches every subscriber,
//! forwarded along a chain of nodes (so delivery goes through the mesh, not only direct
//! flood publishing); a node not subscribed gets nothing.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use ecomesh_transport_internet::{GossipMessage, InternetTransport, collection_topic};
use tokio::sync::mpsc;

async fn wait_mesh(node: &InternetTransport, topic: &str, want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mesh = node.mesh_peers(topic).await.unwrap();
        if mesh.len() >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mesh of {} has {} peers, want {want}",
            node.peer_id(),
            mesh.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_in_mesh(node: &InternetTransport, topic: &str, peer: ecomesh_types::PeerId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !node.mesh_peers(topic).await.unwrap().contains(&peer) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{peer} never entered the mesh of {}",
            node.peer_id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn recv(rx: &mut mpsc::Receiver<GossipMessage>, data: &[u8]) -> GossipMessage {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = rx.recv().await.unwrap();
            if m.data == data {
                return m;
            }
        }
    })
    .await
    .expect("message delivered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_messages_reach_every_subscriber_along_a_chain() {
    common::trace();
    let topic = collection_topic("notes");
    let mut nodes = Vec::new();
    for _ in 0..5 {
        nodes.push(common::node(common::loopback_config(false)).await);
    }
    for i in 1..nodes.len() {
        nodes[i]
            .dial(common::tcp_addr(&nodes[i - 1]))
            .await
            .unwrap();
    }
    // A bystander connected to the middle node, not subscribed.
    let bystander = common::node(common::loopback_config(false)).await;
    bystander.dial(common::tcp_addr(&nodes[2])).await.unwrap();
    let mut rxs = Vec::new();
    for n in &nodes {
        rxs.push(n.subscribe_topic(&topic).await.unwrap());
    }
    let mut other = bystander
        .subscribe_topic(&collection_topic("other"))
        .await
        .unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let neighbours = if i == 0 || i == nodes.len() - 1 { 1 } else { 2 };
        wait_mesh(n, &topic, neighbours).await;
    }
    for (from, data) in [
        (0usize, b"from the head".to_vec()),
        (4, b"from the tail".to_vec()),
    ] {
        nodes[from].publish(&topic, data.clone()).await.unwrap();
        for (i, rx) in rxs.iter_mut().enumerate() {
            if i == from {
                continue;
            }
            let m = recv(rx, &data).await;
            assert_eq!(m.topic, topic);
            assert_eq!(m.source, Some(nodes[from].peer_id()));
        }
    }
    // The bystander's neighbour carried both messages, yet its subscription to
    // another topic got nothing; once it subscribes to this topic, the same
    // machinery delivers the next message to it, and only that one.
    let mut late = bystander.subscribe_topic(&topic).await.unwrap();
    wait_mesh(&bystander, &topic, 1).await;
    // The bystander counts node 2 in its mesh as soon as it sends GRAFT; node 2
    // forwards to it only once the GRAFT is processed. A message node 2 forwards
    // before that is never gossiped to a peer that is by then in its mesh, so wait
    // for both ends of the link.
    wait_in_mesh(&nodes[2], &topic, bystander.peer_id()).await;
    let third = b"after the bystander joined".to_vec();
    nodes[0].publish(&topic, third.clone()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), late.recv())
        .await
        .expect("the bystander gets the message once subscribed")
        .unwrap();
    assert_eq!(
        m.data, third,
        "the first message it gets is the one after it joined"
    );
    assert_eq!(m.source, Some(nodes[0].peer_id()));
    assert!(
        other.try_recv().is_err(),
        "the bystander's other topic got nothing"
    );
    // Too large for the configured limit.
    assert!(
        nodes[0]
            .publish(&topic, vec![0; (256 << 10) + 1])
            .await
            .is_err()
    );
}
