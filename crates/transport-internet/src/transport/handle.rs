//! [`InternetTransport`]: the public handle (its API, `start`/`stop`, message sending) and
//! its [`TransportAdapter`] implementation.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecomesh_identity::AccessPolicy;
use ecomesh_types::{
    BoxFuture, ContentId, Error, Listener, Listeners, NetworkMessage, PeerId, PeerInfo,
    Subscription, TransportAdapter, TransportCapabilities, TransportEvent, TransportType,
};
use libp2p::Multiaddr;
use libp2p::kad::RecordKey;
use libp2p::multiaddr::Protocol;
use tokio::sync::{mpsc, oneshot};

use crate::error::InternetError;
use crate::peer_id::{PeerTable, ecomesh_peer_id, keypair_from_seed};
use crate::protocol::{Request, Response};

use super::addr::socket_addr_of_tcp;
use super::command::{self, Command};
use super::driver::Driver;
use super::state::{Carry, Inner, State, lock};
use super::streams;
use super::swarm::{build_swarm, listen_all};
use super::{GossipMessage, InternetConfig, InternetEvent, LookupStats, RequestHandler};

/// Bytes the full encoding of a `NetworkMessage` adds to its payload and type (keys,
/// heads, ids and signature: about 240); a generous bound.
const ENCODING_OVERHEAD: usize = 512;

/// Attempts to bind the previous addresses again at a restart.
const REBIND_ATTEMPTS: u32 = 30;
/// Pause between those attempts.
const REBIND_DELAY: Duration = Duration::from_millis(100);

/// The internet transport: a rust-libp2p swarm (TCP and QUIC, Noise, Yamux, identify,
/// ping, Kademlia, GossipSub, relay v2 client and optional server, DCUtR, AutoNAT and the
/// `/ecomesh/req/1.0.0` request-response protocol) whose key is the node's Ed25519
/// identity.
///
/// Peers appear ([`TransportEvent::PeerDiscovered`]) once identify has run on a
/// connection the [`AccessPolicy`] allowed, and disappear when their last connection
/// closes. Messages to a peer that lists `/ecomesh/msg/1.0.0` in identify travel on one
/// long-lived stream per peer (opened on the first send, reopened after a failure, closed
/// after `idle_timeout` without messages): `send` resolves once the message is queued
/// for that stream (at most `send_queue` wait; then `send` waits), so sends arrive in
/// order but a message queued when the link fails is lost (the mesh above retransmits).
/// With other peers (older nodes, or `message_streams` off) each message is a
/// request-response exchange and `send` resolves after the receiver acknowledged
/// delivery to its listeners.
/// A peer dialled with [`InternetTransport::dial`] is redialled with exponential backoff
/// after losses, across `stop`/`start`, until `disconnect_from_peer`.
/// Needs a tokio runtime with time and net drivers.
#[derive(Clone)]
pub struct InternetTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InternetTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternetTransport")
            .field("peer_id", &self.inner.me)
            .field("libp2p_peer_id", &self.inner.me_lp)
            .finish_non_exhaustive()
    }
}

impl InternetTransport {
    /// A stopped transport whose libp2p key is the Ed25519 secret `seed` (the same key as
    /// `ecomesh_identity::Identity::from_secret_bytes(seed)`).
    pub fn new(
        seed: &[u8; 32],
        policy: AccessPolicy,
        config: InternetConfig,
    ) -> Result<Self, InternetError> {
        let keypair = keypair_from_seed(seed)?;
        let me_lp = keypair.public().to_peer_id();
        let me = ecomesh_peer_id(&me_lp)?;
        Ok(InternetTransport {
            inner: Arc::new(Inner {
                keypair,
                me,
                me_lp,
                policy: Arc::new(policy),
                config,
                listeners: Listeners::new(),
                net_listeners: Listeners::new(),
                handler: Mutex::new(None),
                state: Mutex::new(State {
                    carry: Some(Carry::default()),
                    table: Some(PeerTable::new(65_536)),
                    ..State::default()
                }),
                lifecycle: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Our ecomesh peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.me
    }

    /// Our libp2p peer id.
    pub fn libp2p_peer_id(&self) -> libp2p::PeerId {
        self.inner.me_lp
    }

    /// The addresses we listen on (known after `start`), without `/p2p/` suffix.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.inner.state).listen_addrs.clone()
    }

    /// The first TCP listen address as a socket address, if any.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listen_addrs().iter().find_map(socket_addr_of_tcp)
    }

    /// Our first listen address with `/p2p/<our id>` appended, matching `pred`.
    pub fn dial_addr(&self, pred: impl Fn(&Multiaddr) -> bool) -> Option<Multiaddr> {
        self.listen_addrs()
            .into_iter()
            .find(|a| pred(a))
            .map(|a| a.with(Protocol::P2p(self.inner.me_lp)))
    }

    /// Sets (replacing) the handler of inbound version-node and shard requests.
    pub fn set_request_handler(&self, handler: Arc<dyn RequestHandler>) {
        *lock(&self.inner.handler) = Some(handler);
    }

    /// Registers a listener for [`InternetEvent`]s until the subscription is dropped.
    pub fn subscribe_internet(&self, listener: Listener<InternetEvent>) -> Subscription {
        self.inner.net_listeners.subscribe(listener)
    }

    /// The libp2p peer id of a known ecomesh peer (connected, or seen in DHT results).
    pub fn libp2p_id_of(&self, peer: &PeerId) -> Option<libp2p::PeerId> {
        lock(&self.inner.state).table.as_ref()?.get(peer)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, InternetError> {
        command::call(&self.inner, make).await
    }

    /// Dials `addr` (which may end in `/p2p/<id>`), and keeps redialling the peer there
    /// after losses. Resolves with the peer's ecomesh id once identify ran on the
    /// connection, or with why it failed ([`InternetError::Refused`] when either side's
    /// policy refused).
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, InternetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Starts listening on one more address, for example a relay circuit address
    /// `<relay addr>/p2p/<relay id>/p2p-circuit`.
    pub async fn listen_on(&self, addr: Multiaddr) -> Result<(), InternetError> {
        self.call(|reply| Command::ListenOn { addr, reply }).await?
    }

    /// Sends `request` to `peer`, dialling it if needed (addresses from identify, the DHT
    /// routing table, or a DHT lookup of the peer), and waits for the response.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, InternetError> {
        let lp = self.libp2p_id_of(&peer).ok_or(InternetError::Request {
            peer,
            reason: "unknown peer".to_owned(),
        })?;
        self.call(|reply| Command::Request {
            peer: lp,
            request,
            reply,
        })
        .await?
    }

    /// Announces in the DHT that we hold `cid` (a Kademlia provider record), and keeps
    /// re-announcing it while running.
    /// The record is keyed by the CID's multihash ([`provider_key`](crate::provider_key)),
    /// as IPFS keys it; a `cid` that is not one binary CID is refused.
    pub async fn provide(&self, cid: &ContentId) -> Result<(), InternetError> {
        let key = RecordKey::new(&crate::naming::provider_key(cid)?);
        self.call(|reply| Command::Provide { key, reply }).await?
    }

    /// The peers the DHT lists as holding `cid` (ourselves excluded), looked up by its
    /// multihash as IPFS does, so providers that announced it under another codec count.
    pub async fn find_providers(&self, cid: &ContentId) -> Result<Vec<PeerId>, InternetError> {
        Ok(self.find_providers_with_stats(cid).await?.0)
    }

    /// [`find_providers`](Self::find_providers) with the query's statistics.
    pub async fn find_providers_with_stats(
        &self,
        cid: &ContentId,
    ) -> Result<(Vec<PeerId>, LookupStats), InternetError> {
        let key = RecordKey::new(&crate::naming::provider_key(cid)?);
        let (peers, stats) = self
            .call(|reply| Command::FindProviders { key, reply })
            .await??;
        Ok((self.learn(&peers), stats))
    }

    /// The peers closest to `key` in the DHT (an iterative lookup), with its statistics.
    pub async fn closest_peers(
        &self,
        key: Vec<u8>,
    ) -> Result<(Vec<PeerId>, LookupStats), InternetError> {
        let (peers, stats) = self
            .call(|reply| Command::ClosestPeers { key, reply })
            .await??;
        Ok((self.learn(&peers), stats))
    }

    fn learn(&self, peers: &[libp2p::PeerId]) -> Vec<PeerId> {
        let mut st = lock(&self.inner.state);
        peers
            .iter()
            .filter_map(|p| st.table.as_mut()?.learn(p, false).ok())
            .collect()
    }

    /// Stores a small record (at most `max_record_size` bytes) under `key` in the DHT.
    pub async fn put_record(&self, key: &[u8], value: Vec<u8>) -> Result<(), InternetError> {
        let max = self.inner.config.max_record_size;
        if value.len() > max {
            return Err(InternetError::TooLarge {
                what: "record",
                size: value.len(),
                max,
            });
        }
        let key = RecordKey::new(&key);
        self.call(|reply| Command::PutRecord { key, value, reply })
            .await?
    }

    /// The record stored under `key` in the DHT, if any peer (or we) hold one.
    pub async fn get_record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, InternetError> {
        let key = RecordKey::new(&key);
        self.call(|reply| Command::GetRecord { key, reply }).await?
    }

    /// Subscribes to the GossipSub `topic`; messages arrive on the returned bounded
    /// receiver (newest dropped when it is full). Kept across `stop`/`start`.
    pub async fn subscribe_topic(
        &self,
        topic: &str,
    ) -> Result<mpsc::Receiver<GossipMessage>, InternetError> {
        let (tx, rx) = mpsc::channel(self.inner.config.topic_queue.max(1));
        let topic = topic.to_owned();
        self.call(|reply| Command::Subscribe { topic, tx, reply })
            .await??;
        Ok(rx)
    }

    /// Publishes `data` on the GossipSub `topic` (signed with our key).
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), InternetError> {
        let max = self.inner.config.max_gossip_size;
        if data.len() > max {
            return Err(InternetError::TooLarge {
                what: "gossip message",
                size: data.len(),
                max,
            });
        }
        let topic = topic.to_owned();
        self.call(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Peers known to be subscribed to `topic`.
    pub async fn topic_peers(&self, topic: &str) -> Result<Vec<PeerId>, InternetError> {
        let topic = topic.to_owned();
        let peers = self
            .call(|reply| Command::TopicPeers {
                topic,
                mesh_only: false,
                reply,
            })
            .await?;
        Ok(self.learn(&peers))
    }

    /// Peers in our GossipSub mesh for `topic`.
    pub async fn mesh_peers(&self, topic: &str) -> Result<Vec<PeerId>, InternetError> {
        let topic = topic.to_owned();
        let peers = self
            .call(|reply| Command::TopicPeers {
                topic,
                mesh_only: true,
                reply,
            })
            .await?;
        Ok(self.learn(&peers))
    }

    async fn start_inner(&self) -> Result<(), InternetError> {
        let _guard = self.inner.lifecycle.lock().await;
        let carry = {
            let mut st = lock(&self.inner.state);
            if st.active {
                return Ok(());
            }
            st.carry.take().unwrap_or_default()
        };
        // After a stop, the previous ports are bound again so peers that knew us can
        // redial; a socket of the stopped swarm may take a moment to close (QUIC's
        // endpoint driver), so binding is retried briefly, then fresh ports are taken.
        let mut carry = carry;
        let mut attempt = 0_u32;
        let (swarm, swarm_rebind, listen, carry) = loop {
            let (mut swarm, c) = match build_swarm(&self.inner, carry) {
                Ok(s) => s,
                Err(boxed) => {
                    let (e, c) = *boxed;
                    lock(&self.inner.state).carry = Some(c);
                    return Err(e);
                }
            };
            match listen_all(&self.inner, &mut swarm, c).await {
                Ok((rebind, listen, c)) => break (swarm, rebind, listen, c),
                Err(boxed) => {
                    let (e, mut c) = *boxed;
                    drop(swarm);
                    if !matches!(e, InternetError::Address { .. }) || c.rebind.is_empty() {
                        lock(&self.inner.state).carry = Some(c);
                        return Err(e);
                    }
                    attempt += 1;
                    if attempt >= REBIND_ATTEMPTS {
                        tracing::warn!(error = %e, "previous addresses not free; listening on new ports");
                        c.rebind.clear();
                    } else {
                        tokio::time::sleep(REBIND_DELAY).await;
                    }
                    carry = c;
                }
            }
        };
        let (control, incoming) = match streams::control_of(&self.inner, &swarm) {
            Ok(c) => c,
            Err(e) => {
                lock(&self.inner.state).carry = Some(carry);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(self.inner.config.command_queue.max(1));
        let driver = Driver::new(self.inner.clone(), swarm, carry, swarm_rebind);
        let task = tokio::spawn(driver.run(rx));
        let mut st = lock(&self.inner.state);
        st.streams = control;
        st.accept_task = incoming.map(|i| streams::spawn_acceptor(self.inner.clone(), i));
        st.listen_addrs = listen;
        st.cmd = Some(tx);
        st.task = Some(task);
        st.active = true;
        tracing::info!(peer = %self.inner.me, libp2p = %self.inner.me_lp, addrs = ?st.listen_addrs, "internet transport started");
        Ok(())
    }

    async fn stop_inner(&self) -> Result<(), InternetError> {
        let _guard = self.inner.lifecycle.lock().await;
        let (cmd, task) = {
            let mut st = lock(&self.inner.state);
            st.active = false;
            streams::stop(&mut st);
            (st.cmd.take(), st.task.take())
        };
        if let Some(cmd) = cmd {
            let _ = cmd.send(Command::Stop).await;
        }
        let carry = match task {
            Some(t) => t.await.unwrap_or_default(),
            None => return Ok(()),
        };
        let lost: Vec<PeerId> = {
            let mut st = lock(&self.inner.state);
            st.carry = Some(carry);
            let lost: Vec<PeerId> = st.peers.drain().map(|(p, _)| p).collect();
            if let Some(t) = st.table.as_mut() {
                for p in &lost {
                    t.unpin(p);
                }
            }
            lost
        };
        for p in lost {
            self.inner.listeners.emit(&TransportEvent::PeerLost(p));
        }
        tracing::info!(peer = %self.inner.me, "internet transport stopped");
        Ok(())
    }

    /// Refuses a message whose encoding is over the maximum. Encodes it only when its
    /// size is in doubt (the encoding is the payload and type plus less than
    /// [`ENCODING_OVERHEAD`] bytes): a second full encode of every message cost a
    /// copy of its payload per send. `encode_request` checks the exact size again.
    fn check_size(&self, msg: &NetworkMessage) -> Result<(), Error> {
        let max = self.inner.config.max_message_size;
        if msg.payload.len() + msg.message_type.len() + ENCODING_OVERHEAD <= max {
            return Ok(());
        }
        let size = ecomesh_wire::encode_message(msg).len();
        if size > max {
            return Err(Error::MessageTooLarge { size, max });
        }
        Ok(())
    }

    async fn send_message(&self, peer: PeerId, message: NetworkMessage) -> Result<(), Error> {
        self.check_size(&message)?;
        let (lp, writer) = {
            let mut st = lock(&self.inner.state);
            if !st.active {
                return Err(Error::NotStarted);
            }
            if !st.peers.contains_key(&peer) {
                return Err(Error::Unreachable(peer));
            }
            let lp = st
                .table
                .as_ref()
                .and_then(|t| t.get(&peer))
                .ok_or(Error::Unreachable(peer))?;
            (lp, streams::writer_for(&self.inner, &mut st, peer, lp))
        };
        if let Some(writer) = writer {
            // Handed to the peer's stream writer: resolved once queued, in order.
            return writer
                .send(message)
                .await
                .map_err(|_| Error::Unreachable(peer));
        }
        let r = self
            .call(|reply| Command::Request {
                peer: lp,
                request: Request::Message(message),
                reply,
            })
            .await
            .map_err(InternetError::into_transport_error)?;
        match r {
            Ok(Response::Ack) => Ok(()),
            Ok(Response::Refused) => Err(Error::PeerRejected(peer)),
            Ok(other) => Err(Error::backend(InternetError::Request {
                peer,
                reason: format!("unexpected response {other:?}"),
            })),
            Err(InternetError::Request { .. }) => Err(Error::Unreachable(peer)),
            Err(e) => Err(e.into_transport_error()),
        }
    }
}

impl TransportAdapter for InternetTransport {
    fn transport_type(&self) -> TransportType {
        TransportType::Internet
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities {
            max_message_size: self.inner.config.max_message_size,
            ..TransportCapabilities::seed_defaults(TransportType::Internet)
        }
    }

    fn start(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.start_inner().await.map_err(Error::from) })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.stop_inner().await.map_err(Error::from) })
    }

    fn is_active(&self) -> bool {
        lock(&self.inner.state).active
    }

    fn peers(&self) -> Vec<PeerInfo> {
        lock(&self.inner.state)
            .peers
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    fn connect_to_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let lp = self.libp2p_id_of(&peer).ok_or(Error::Unreachable(peer))?;
            self.call(|reply| Command::Connect { peer: lp, reply })
                .await
                .map_err(Error::from)?
                .map(|_| ())
                .map_err(|e| match e {
                    InternetError::Dial(_) => Error::Unreachable(peer),
                    other => other.into(),
                })
        })
    }

    fn disconnect_from_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let Some(lp) = self.libp2p_id_of(&peer) else {
                return Ok(());
            };
            self.call(|reply| Command::Disconnect { peer: lp, reply })
                .await
                .map_err(Error::from)
        })
    }

    fn send(&self, peer: PeerId, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.send_message(peer, message))
    }

    fn broadcast(&self, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.check_size(&message)?;
            let peers: Vec<PeerId> = {
                let st = lock(&self.inner.state);
                if !st.active {
                    return Err(Error::NotStarted);
                }
                st.peers.keys().copied().collect()
            };
            let sends = peers.iter().map(|p| self.send_message(*p, message.clone()));
            for (p, r) in peers.iter().zip(futures::future::join_all(sends).await) {
                if let Err(e) = r {
                    tracing::debug!(peer = %p, error = %e, "broadcast to one peer failed");
                }
            }
            Ok(())
        })
    }

    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription {
        self.inner.listeners.subscribe(listener)
    }
}
