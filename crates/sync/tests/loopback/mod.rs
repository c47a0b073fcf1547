//! Helpers for tests that run nodes over the real wired transport on
//! `127.0.0.1` (OS-chosen ports, no mDNS, explicit dials), optionally through
//! [`Lossy`], a wrapper that silently loses sends of chosen message types.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_sync::{Node, NodeConfig};
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::{
    BoxFuture, Error, Listener, NetworkMessage, PeerId, PeerInfo, Subscription, TransportAdapter,
    TransportCapabilities, TransportEvent, TransportType,
};

/// A node on loopback: the node, its wired transport (to dial from), the
/// address it listens on, and the loss switch its sends go through.
pub struct LoopNode {
    pub node: Node,
    pub wired: WiredTransport,
    pub addr: SocketAddr,
    pub lossy: Arc<Lossy>,
}

/// The configuration the tests start from: a short tick.
pub fn config() -> NodeConfig {
    NodeConfig::default().with_tick(Duration::from_millis(50))
}

/// A started node on `dir` with a wired transport on `127.0.0.1:0` wrapped
/// in a [`Lossy`] that loses nothing until told to.
pub async fn start(name: &str, dir: &Path, config: NodeConfig) -> LoopNode {
    let identity = Identity::generate().unwrap();
    let wired = WiredTransport::new(
        identity.clone(),
        AccessPolicy::Open,
        WiredConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..WiredConfig::default()
        },
    );
    wired.start().await.unwrap();
    let addr = wired.local_addr().unwrap();
    let lossy = Arc::new(Lossy::new(wired.clone()));
    let node = Node::builder(dir)
        .identity(identity)
        .transport(lossy.clone())
        .config(config)
        .start()
        .await
        .unwrap();
    eprintln!("node {name}: {} on {addr}", node.peer_id());
    LoopNode {
        node,
        wired,
        addr,
        lossy,
    }
}

/// `from` dials `to`; returns once both nodes' meshes list each other.
pub async fn connect(from: &LoopNode, to: &LoopNode) {
    let peer = from.wired.dial(to.addr).await.unwrap();
    assert_eq!(peer, to.node.peer_id());
    let (a, b) = (from.node.clone(), to.node.clone());
    wait_until(
        Duration::from_secs(20),
        "the dialled peers list each other",
        || {
            let (a, b) = (a.clone(), b.clone());
            async move {
                a.peers().iter().any(|p| p.peer_id == b.peer_id())
                    && b.peers().iter().any(|p| p.peer_id == a.peer_id())
            }
        },
    )
    .await;
}

/// Polls `cond` until it holds, panicking with `what` after `limit`.
/// Returns how long it took.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// The seed of a test's random choices: `ECOMESH_TEST_SEED` when set, else
/// the clock. Printed, so a failing run can be repeated.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("ECOMESH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {seed} (repeat with ECOMESH_TEST_SEED={seed})");
    seed
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A transport that forwards everything to a wired transport, except that
/// sends of the message types it is told to lose "succeed" and go nowhere
/// (a loss neither the mesh nor the peer notices).
pub struct Lossy {
    inner: WiredTransport,
    lose: Mutex<Vec<String>>,
    lost: Mutex<BTreeMap<String, usize>>,
}

impl Lossy {
    pub fn new(inner: WiredTransport) -> Lossy {
        Lossy {
            inner,
            lose: Mutex::new(Vec::new()),
            lost: Mutex::new(BTreeMap::new()),
        }
    }

    /// From now on, loses every send of these message types (none: heals).
    pub fn lose(&self, types: &[&str]) {
        *self.lose.lock().unwrap() = types.iter().map(|t| (*t).to_owned()).collect();
    }

    /// How many sends of message type `ty` were lost.
    pub fn lost(&self, ty: &str) -> usize {
        self.lost.lock().unwrap().get(ty).copied().unwrap_or(0)
    }
}

impl TransportAdapter for Lossy {
    fn transport_type(&self) -> TransportType {
        self.inner.transport_type()
    }
    fn capabilities(&self) -> TransportCapabilities {
        self.inner.capabilities()
    }
    fn start(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.start()
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.stop()
    }
    fn is_active(&self) -> bool {
        self.inner.is_active()
    }
    fn peers(&self) -> Vec<PeerInfo> {
        self.inner.peers()
    }
    fn connect_to_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.connect_to_peer(peer)
    }
    fn disconnect_from_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.disconnect_from_peer(peer)
    }
    fn send(&self, peer: PeerId, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        if self.lose.lock().unwrap().contains(&message.message_type) {
            *self
                .lost
                .lock()
                .unwrap()
                .entry(message.message_type.clone())
                .or_default() += 1;
            return Box::pin(async { Ok(()) });
        }
        self.inner.send(peer, message)
    }
    fn broadcast(&self, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.broadcast(message)
    }
    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription {
        self.inner.subscribe(listener)
    }
}
