//! Helpers shared by the integration tests: nodes on transport-tests' shared
//! in-memory network (`MemNetwork`), and bounded waits.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::print_stderr)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecomesh_identity::Identity;
use ecomesh_sync::{Map, Node, NodeConfig, Value};
use ecomesh_transport_tests::memnet::block_on;
use ecomesh_transport_tests::{Delivery, MemNetwork, MemTransport};
use ecomesh_types::{TransportAdapter, TransportType};

/// A network of perfect links that delivers every message inside `send`
/// (`Delivery::Immediate`): every started endpoint reaches every other one,
/// in order, with nothing to pump.
pub fn immediate_net() -> MemNetwork {
    let net = MemNetwork::new(0, 0);
    net.set_delivery(Delivery::Immediate);
    net
}

/// A started endpoint on `net` for `identity`, carrying its public key as an
/// authenticating transport's discovery does (a restart when it had one).
pub fn endpoint(net: &MemNetwork, identity: &Identity) -> Arc<MemTransport> {
    let t = net.join_with_key(
        identity.peer_id(),
        TransportType::Wired,
        *identity.public_key(),
    );
    block_on(t.start()).unwrap();
    t
}

/// The configuration of the tests' nodes: a pass every 50 ms.
pub fn test_config() -> NodeConfig {
    NodeConfig::default().with_tick(Duration::from_millis(50))
}

/// A started node of `identity` on `dir`, on `net`.
pub async fn node_on(
    net: &MemNetwork,
    identity: &Identity,
    dir: &Path,
    config: NodeConfig,
) -> Node {
    let t = endpoint(net, identity);
    Node::builder(dir)
        .identity(identity.clone())
        .transport(t)
        .config(config)
        .start()
        .await
        .unwrap()
}

/// A started node with a new identity on `dir`, on `net`.
pub async fn mem_node(net: &MemNetwork, dir: &Path) -> Node {
    let identity = Identity::generate().unwrap();
    node_on(net, &identity, dir, test_config()).await
}

/// Two nodes on one in-memory network, each seeing the other as a peer.
pub async fn pair(a: &Path, b: &Path) -> (Node, Node) {
    let (_, na, nb) = pair_on_net(a, b).await;
    (na, nb)
}

/// [`pair`], also returning the network (to partition it or lose messages).
pub async fn pair_on_net(a: &Path, b: &Path) -> (MemNetwork, Node, Node) {
    let net = immediate_net();
    let na = mem_node(&net, a).await;
    let nb = mem_node(&net, b).await;
    wait_until(Duration::from_secs(20), "the peers see each other", || {
        let (na, nb) = (na.clone(), nb.clone());
        async move { !na.peers().is_empty() && !nb.peers().is_empty() }
    })
    .await;
    (net, na, nb)
}

/// Polls `cond` until it holds, panicking with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A map of text fields.
pub fn fields(pairs: &[(&str, &str)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::Text((*v).to_owned())))
        .collect()
}

/// Moves a [`MemNetwork`]'s virtual clock with real time and delivers what
/// is due, every `step` (for nodes that run on tokio's real time over a
/// network with latency); stops when dropped.
pub struct Pump {
    task: tokio::task::JoinHandle<()>,
}

impl Pump {
    /// Starts pumping `net` every `step` on the current runtime.
    pub fn start(net: &MemNetwork, step: Duration) -> Pump {
        let net = net.clone();
        let ms = u64::try_from(step.as_millis()).unwrap().max(1);
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(step);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                net.advance(ms);
                net.deliver();
            }
        });
        Pump { task }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The seed of a randomised test: `$var` when set, otherwise a fresh one;
/// printed either way so that a failing run names it.
pub fn seed(var: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("{var} is a number")),
        Err(_) => {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            d.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(d.subsec_nanos())
        }
    };
    eprintln!("seed {seed} (replay its network and scenario with {var}={seed})");
    seed
}
