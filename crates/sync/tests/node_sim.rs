//! The Node-level simulator: five `ecomesh_sync::Node`s on one shared
//! in-memory network (`MemNetwork`) with latency, jitter, duplication and
//! loss, a partition and its heal, and a node restarted from its data
//! directory; every acknowledged write must reach every node.
//!
//! The nodes run on tokio's real time, so a [`Pump`] moves the network's
//! virtual clock along with it and delivers what is due every 2 ms. The
//! seed (printed; `ECOMESH_NODE_SIM_SEED` replays it) fixes the link model's
//! draws and the scenario (who is cut off, who restarts); thread scheduling
//! is not replayed. The deterministic, virtual-time counterpart over the
//! adapter layer is `p2p-storage/tests/sim.rs` (`cargo xtask sim`).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ecomesh_identity::Identity;
use ecomesh_sync::{Map, Node, NodeConfig, SetOptions};
use ecomesh_transport_tests::{LinkModel, MemNetwork, SplitMix64};

use common::{Pump, fields, node_on, seed, test_config, wait_until};

const NODES: usize = 5;
const LIMIT: Duration = Duration::from_secs(60);
const COLLECTION: &str = "sim";

/// One simulated device: its identity and data directory outlive its `Node`.
struct Device {
    identity: Identity,
    dir: PathBuf,
    node: Node,
}

fn config() -> NodeConfig {
    let mut c = test_config();
    // Anti-entropy repairs what the lossy links dropped: make its rounds and
    // its stall detection fast enough for a test.
    c.p2p.resync_interval_ms = 1_000;
    c.p2p.session_timeout_ms = 3_000;
    c
}

/// Every write a node acknowledged: document id -> fields it must end with.
#[derive(Default)]
struct Acked {
    docs: BTreeMap<String, Map>,
}

impl Acked {
    /// Writes `fields` (merged) to `id` on `node` and records them once acknowledged.
    async fn write(&mut self, node: &Node, id: &str, f: Map) {
        node.collection(COLLECTION)
            .doc(id)
            .set(f.clone(), SetOptions::MERGE)
            .await
            .unwrap();
        self.docs.entry(id.to_owned()).or_default().extend(f);
    }

    /// True when `node` holds every acknowledged field of every document.
    async fn held_by(&self, node: &Node) -> bool {
        for (id, want) in &self.docs {
            let Ok(Some(doc)) = node.collection(COLLECTION).doc(id).get().await else {
                return false;
            };
            if want.iter().any(|(k, v)| doc.fields.get(k) != Some(v)) {
                return false;
            }
        }
        true
    }
}

async fn wait_peers(devices: &[Device], live: &[usize], what: &str) {
    wait_until(LIMIT, what, || {
        let nodes: Vec<(Node, usize)> = live
            .iter()
            .map(|i| {
                let want = devices_in_group(live, *i);
                (devices[*i].node.clone(), want)
            })
            .collect();
        async move { nodes.iter().all(|(n, want)| n.peers().len() == *want) }
    })
    .await;
}

/// Peers `i` should see among the `group` it belongs to.
fn devices_in_group(group: &[usize], i: usize) -> usize {
    group.iter().filter(|j| **j != i).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_converges_across_a_partition_and_a_restart() {
    let seed = seed("ECOMESH_NODE_SIM_SEED");
    let mut rng = SplitMix64(seed);
    let net = MemNetwork::new(seed, 0);
    net.set_default_link(LinkModel {
        loss_per_mille: 20,
        dup_per_mille: 20,
        latency_ms: 2,
        jitter_ms: 8,
    });
    let _pump = Pump::start(&net, Duration::from_millis(2));
    let tmp = tempfile::tempdir().unwrap();
    let mut devices = Vec::new();
    for i in 0..NODES {
        let identity = Identity::generate().unwrap();
        let dir = tmp.path().join(format!("n{i}"));
        let node = node_on(&net, &identity, &dir, config()).await;
        devices.push(Device {
            identity,
            dir,
            node,
        });
    }
    let all: Vec<usize> = (0..NODES).collect();
    wait_peers(&devices, &all, "every node sees every other").await;
    let mut acked = Acked::default();

    // Connected: each node writes its own documents and a field of a shared one.
    for (i, d) in devices.iter().enumerate() {
        for k in 0..3 {
            let v = format!("{i}.{k}");
            acked
                .write(&d.node, &format!("n{i}-{k}"), fields(&[("v", &v)]))
                .await;
        }
        let f = format!("from{i}");
        acked.write(&d.node, "shared", fields(&[(&f, "1")])).await;
    }

    // A partition chosen by the seed: a minority of 1 or 2 nodes cut off.
    let mut order = all.clone();
    for i in (1..order.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap();
        order.swap(i, j);
    }
    let cut = 1 + usize::try_from(rng.below(2)).unwrap();
    let (minority, majority) = order.split_at(cut);
    let (minority, majority) = (minority.to_vec(), majority.to_vec());
    eprintln!("partition: {minority:?} | {majority:?}");
    net.partition(minority.iter().map(|i| (devices[*i].node.peer_id(), 1)));
    wait_peers(&devices, &minority, "the minority sees only itself").await;
    wait_peers(&devices, &majority, "the majority sees only itself").await;

    // Both sides write, including concurrent fields of one document.
    for i in minority.iter().chain(&majority) {
        let d = &devices[*i];
        let v = format!("p{i}");
        acked
            .write(&d.node, &format!("p{i}"), fields(&[("v", &v)]))
            .await;
        let f = format!("split{i}");
        acked.write(&d.node, "shared", fields(&[(&f, &v)])).await;
    }

    // A node on the majority side crashes out and restarts from its data
    // directory while the partition lasts, then writes again.
    let r = majority[usize::try_from(rng.below(majority.len() as u64)).unwrap()];
    eprintln!("restarting node {r}");
    let Device {
        identity,
        dir,
        node,
    } = devices.remove(r);
    node.shutdown().await.unwrap();
    drop(node); // the store is opened again only once every handle is gone
    let node = node_on(&net, &identity, &dir, config()).await;
    devices.insert(
        r,
        Device {
            identity,
            dir,
            node,
        },
    );
    wait_peers(&devices, &majority, "the restarted node rejoins its side").await;
    assert!(
        acked_on(&acked, &devices[r].node, &format!("p{r}")).await,
        "node {r} kept its acknowledged write over the restart"
    );
    let v = format!("r{r}");
    acked
        .write(&devices[r].node, &v, fields(&[("v", &v)]))
        .await;

    // Heal: everything reaches everyone.
    net.heal();
    wait_peers(&devices, &all, "every node sees every other again").await;
    wait_until(LIMIT, "every node holds every acknowledged write", || {
        let nodes: Vec<Node> = devices.iter().map(|d| d.node.clone()).collect();
        let acked = &acked;
        async move {
            for n in &nodes {
                if !acked.held_by(n).await {
                    return false;
                }
            }
            true
        }
    })
    .await;
    for d in &devices {
        d.node.shutdown().await.unwrap();
    }
}

async fn acked_on(acked: &Acked, node: &Node, id: &str) -> bool {
    let want = &acked.docs[id];
    matches!(
        node.collection(COLLECTION).doc(id).get().await,
        Ok(Some(doc)) if want.iter().all(|(k, v)| doc.fields.get(k) == Some(v))
    )
}
