//! Blobs between `ecomesh_sync::Node`s on the shared in-memory network: a
//! blob put on one node is got by its id on others, one of which was cut off
//! when it was put, over links with latency, jitter and duplication (seeded,
//! printed; `ECOMESH_NODE_BLOB_SEED` replays the network's draws).
//! The adapter-level blob tests are `p2p-storage/tests/blobs.rs`.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use ecomesh_identity::Identity;
use ecomesh_sync::{BlobId, NodeConfig, SyncError};
use ecomesh_transport_tests::{LinkModel, MemNetwork, SplitMix64};

use common::{Pump, node_on, seed, test_config, wait_until};

const LIMIT: Duration = Duration::from_secs(30);

fn config() -> NodeConfig {
    let mut c = test_config();
    c.blob_get_timeout = Duration::from_secs(20);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_put_on_one_node_is_got_by_id_on_the_others() {
    let seed = seed("ECOMESH_NODE_BLOB_SEED");
    let net = MemNetwork::new(seed, 0);
    net.set_default_link(LinkModel {
        loss_per_mille: 0,
        dup_per_mille: 30,
        latency_ms: 2,
        jitter_ms: 8,
    });
    let _pump = Pump::start(&net, Duration::from_millis(2));
    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate().unwrap()).collect();
    // c is cut off from the start: it can only fetch the blob later.
    net.partition([(ids[2].peer_id(), 1)]);
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        nodes.push(node_on(&net, id, &tmp.path().join(format!("n{i}")), config()).await);
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    wait_until(LIMIT, "a and b see each other", || {
        let (a, b) = (a.clone(), b.clone());
        async move { a.peers().len() == 1 && b.peers().len() == 1 }
    })
    .await;

    let mut bytes = vec![0u8; 300 * 1024];
    SplitMix64(seed).fill(&mut bytes);
    let info = a.put_blob("photos", &bytes).unwrap();
    assert_eq!(info.len, bytes.len() as u64);
    assert_eq!(info.held, info.pieces, "the writer holds every piece");

    assert_eq!(b.get_blob(info.id).await.unwrap(), bytes);
    assert!(c.blob(&info.id).unwrap().is_none(), "c was cut off");

    net.heal();
    wait_until(LIMIT, "c sees a and b", || {
        let c = c.clone();
        async move { c.peers().len() == 2 }
    })
    .await;
    // c fetches it straight into a file, as `ecomesh blob get -o` does.
    let out = tmp.path().join("got.bin");
    assert_eq!(
        c.get_blob_to_file(info.id, &out).await.unwrap(),
        bytes.len() as u64
    );
    assert!(
        std::fs::read(&out).unwrap() == bytes,
        "the file is the blob"
    );
    assert!(!out.with_extension("tmp").exists());
    let held = c.blob(&info.id).unwrap().unwrap();
    assert_eq!((held.len, held.held), (info.len, held.pieces));

    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_nobody_holds_fails_within_the_timeout() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let net = common::immediate_net();
    let mut c = test_config();
    c.blob_get_timeout = Duration::from_secs(2);
    let a = node_on(&net, &Identity::generate().unwrap(), da.path(), c.clone()).await;
    let b = node_on(&net, &Identity::generate().unwrap(), db.path(), c).await;
    wait_until(LIMIT, "a sees b", || {
        let a = a.clone();
        async move { a.peers().len() == 1 }
    })
    .await;
    let started = std::time::Instant::now();
    let e = a
        .get_blob(BlobId::of(b"nobody has this"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < LIMIT, "bounded: {e}");
    assert!(!matches!(e, SyncError::Stopped), "{e}");
    // Into a file: the failure leaves the file as it was.
    let out = da.path().join("kept.txt");
    std::fs::write(&out, b"old").unwrap();
    assert!(
        a.get_blob_to_file(BlobId::of(b"nobody has this"), &out)
            .await
            .is_err()
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    assert!(!out.with_extension("tmp").exists());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
