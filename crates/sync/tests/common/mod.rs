//! Helpers shared by the integration tests: an in-memory network of
//! transports (every message delivered in order, on the tokio runtime) and
//! nodes on it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ecomesh_identity::Identity;
use ecomesh_sync::{Map, Node, NodeConfig, Value};
use ecomesh_types::{
    BoxFuture, Error, Listener, Listeners, NetworkMessage, PeerId, PeerInfo, Subscription,
    TransportAdapter, TransportCapabilities, TransportEvent, TransportType,
};

/// An in-memory network: every transport on it reaches every other one.
#[derive(Default)]
pub struct MemNet {
    members: Mutex<Vec<Weak<MemTransport>>>,
    /// Message types whose sends "succeed" and are lost (a loss the
    /// transports do not notice).
    lossy: Mutex<Vec<String>>,
    /// How many messages of each type were lost that way.
    lost: Mutex<std::collections::BTreeMap<String, usize>>,
}

/// One node's transport on a [`MemNet`].
pub struct MemTransport {
    identity: Identity,
    net: Arc<MemNet>,
    listeners: Listeners<TransportEvent>,
}

impl MemNet {
    pub fn new() -> Arc<MemNet> {
        Arc::new(MemNet::default())
    }

    fn live(&self) -> Vec<Arc<MemTransport>> {
        self.members
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// A transport for `identity`; the others discover it, and it them.
    pub fn join(self: &Arc<Self>, identity: &Identity) -> Arc<MemTransport> {
        let t = Arc::new(MemTransport {
            identity: identity.clone(),
            net: self.clone(),
            listeners: Listeners::new(),
        });
        self.members.lock().unwrap().push(Arc::downgrade(&t));
        t
    }

    /// From now on, loses every message of these types (none: loses nothing).
    pub fn lose(&self, types: &[&str]) {
        *self.lossy.lock().unwrap() = types.iter().map(|t| (*t).to_owned()).collect();
    }

    /// How many messages of type `ty` were lost (see [`lose`](Self::lose)).
    pub fn lost(&self, ty: &str) -> usize {
        self.lost.lock().unwrap().get(ty).copied().unwrap_or(0)
    }

    /// Announces every member to every other one (after the nodes subscribed).
    pub fn announce_all(&self) {
        let live = self.live();
        for a in &live {
            for b in &live {
                if !Arc::ptr_eq(a, b) {
                    a.listeners.emit(&TransportEvent::PeerDiscovered(b.info()));
                }
            }
        }
    }
}

impl MemTransport {
    fn info(&self) -> PeerInfo {
        let mut info = PeerInfo::new(self.identity.peer_id(), TransportType::Wired, 0);
        info.metadata.insert(
            PeerInfo::PUBLIC_KEY.to_owned(),
            Value::Bytes(self.identity.public_key().to_bytes().to_vec()),
        );
        info
    }
}

impl TransportAdapter for MemTransport {
    fn transport_type(&self) -> TransportType {
        TransportType::Wired
    }
    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities::seed_defaults(TransportType::Wired)
    }
    fn start(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn is_active(&self) -> bool {
        true
    }
    fn peers(&self) -> Vec<PeerInfo> {
        let me = self.identity.peer_id();
        self.net
            .live()
            .iter()
            .filter(|t| t.identity.peer_id() != me)
            .map(|t| t.info())
            .collect()
    }
    fn connect_to_peer(&self, _peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn disconnect_from_peer(&self, _peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn send(&self, peer: PeerId, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        let to = self
            .net
            .live()
            .into_iter()
            .find(|t| t.identity.peer_id() == peer);
        let from = self.identity.peer_id();
        let lost = self
            .net
            .lossy
            .lock()
            .unwrap()
            .contains(&message.message_type);
        Box::pin(async move {
            let to = to.ok_or(Error::Unreachable(peer))?;
            if lost {
                *self
                    .net
                    .lost
                    .lock()
                    .unwrap()
                    .entry(message.message_type.clone())
                    .or_default() += 1;
                return Ok(());
            }
            // Delivered on the runtime, never inside the sender's call.
            tokio::spawn(async move {
                to.listeners
                    .emit(&TransportEvent::Message { from, message });
            });
            Ok(())
        })
    }
    fn broadcast(&self, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            for p in self.peers() {
                self.send(p.peer_id, message.clone()).await?;
            }
            Ok(())
        })
    }
    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription {
        self.listeners.subscribe(listener)
    }
}

/// A started node on `dir`, on `net`.
pub async fn mem_node(net: &Arc<MemNet>, dir: &Path) -> Node {
    let identity = Identity::generate().unwrap();
    let t = net.join(&identity);
    Node::builder(dir)
        .identity(identity)
        .transport(t)
        .config(NodeConfig::default().with_tick(Duration::from_millis(50)))
        .start()
        .await
        .unwrap()
}

/// Two nodes on one in-memory network, each seeing the other as a peer.
pub async fn pair(a: &Path, b: &Path) -> (Node, Node) {
    let (_, na, nb) = pair_on_net(a, b).await;
    (na, nb)
}

/// [`pair`], also returning the network (to partition it).
pub async fn pair_on_net(a: &Path, b: &Path) -> (Arc<MemNet>, Node, Node) {
    let net = MemNet::new();
    let na = mem_node(&net, a).await;
    let nb = mem_node(&net, b).await;
    net.announce_all();
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
