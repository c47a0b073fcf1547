//! The tokio driver: one task owns the libp2p swarm; the API talks to it over a bounded
//! command channel with oneshot replies.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ecomesh_identity::AccessPolicy;
use ecomesh_types::{
    BoxFuture, ContentId, Error, Listener, Listeners, NetworkMessage, PeerId, PeerInfo,
    Subscription, TransportAdapter, TransportCapabilities, TransportEvent, TransportType, Value,
};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{
    Multiaddr, Swarm, autonat, dcutr, gossipsub, identify, noise, ping, relay, request_response,
    tcp, yamux,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::behaviour::{Behaviour, BehaviourEvent, Gate};
use crate::error::InternetError;
use crate::peer_id::{PeerTable, ecomesh_peer_id, ed25519_key_of, keypair_from_seed};
use crate::protocol::{
    self, EcomeshCodec, Limits, MAX_MESSAGE_SIZE, PROTOCOL, Request, Response, decode_announcement,
    encode_announcement,
};

/// Attempts to bind the previous addresses again at a restart.
const REBIND_ATTEMPTS: u32 = 30;
/// Pause between those attempts.
const REBIND_DELAY: Duration = Duration::from_millis(100);

/// The GossipSub topic every ecomesh node joins (seed 3.2's well-known peers topic).
pub const PEERS_TOPIC: &str = "/ecomesh/peers/v1";

/// The GossipSub topic of a collection: `/ecomesh/collection/v1/<name>`.
pub fn collection_topic(collection: &str) -> String {
    format!("/ecomesh/collection/v1/{collection}")
}

/// Settings of an [`InternetTransport`].
#[derive(Clone, Debug)]
pub struct InternetConfig {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`.
    /// Port 0 is chosen by the OS at the first start and kept across restarts.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers, each ending in `/p2p/<libp2p peer id>` (an address without it is
    /// only dialled). Added to the DHT routing table and dialled at every start.
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to take a circuit reservation on (each ending in `/p2p/<relay id>`), so
    /// peers that cannot reach us directly connect through them.
    pub relays: Vec<Multiaddr>,
    /// Run Kademlia (the content location index and peer discovery).
    pub dht: bool,
    /// Answer DHT queries (Kademlia server mode) instead of switching on confirmed
    /// external addresses.
    pub dht_server: bool,
    /// Period of the DHT random walk (Kademlia bootstrap) and of our announcement on
    /// [`PEERS_TOPIC`]; `None` disables both (the walk still runs when the routing table
    /// gains a peer while small).
    pub dht_walk_interval: Option<Duration>,
    /// Limit on one DHT query.
    pub dht_query_timeout: Duration,
    /// Largest value [`InternetTransport::put_record`] stores, and that the local record
    /// store accepts from peers.
    pub max_record_size: usize,
    /// Provider keys kept in the local store (ours and those peers ask us to hold).
    pub max_provider_keys: usize,
    /// Run a circuit relay v2 server for other peers. A relay serves only once it has
    /// external addresses: `external_addrs`, or else its bound non-loopback addresses.
    pub relay_server: bool,
    /// Addresses at which others reach us, announced as confirmed external addresses
    /// (for example a public address in front of a port forward).
    pub external_addrs: Vec<Multiaddr>,
    /// Largest encoded `NetworkMessage`, and the request-response payload limit.
    pub max_message_size: usize,
    /// Largest GossipSub message.
    pub max_gossip_size: usize,
    /// Limit on one request-response exchange.
    pub request_timeout: Duration,
    /// Connections without open streams are closed after this.
    pub idle_timeout: Duration,
    /// First delay before redialling a lost peer we dialled; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest delay between redials.
    pub backoff_max: Duration,
    /// Commands queued to the swarm task before API calls wait.
    pub command_queue: usize,
    /// Inbound requests handled at once by the [`RequestHandler`]; more are answered
    /// with [`Response::Error`] `"busy"`.
    pub max_inflight_requests: usize,
    /// Messages buffered per topic subscription before new ones are dropped.
    pub topic_queue: usize,
}

impl Default for InternetConfig {
    fn default() -> Self {
        InternetConfig {
            listen: vec![
                multiaddr("/ip4/0.0.0.0/tcp/0"),
                multiaddr("/ip4/0.0.0.0/udp/0/quic-v1"),
            ],
            bootstrap: Vec::new(),
            relays: Vec::new(),
            dht: true,
            dht_server: true,
            dht_walk_interval: Some(Duration::from_secs(30)),
            dht_query_timeout: Duration::from_secs(30),
            max_record_size: 4096,
            max_provider_keys: 65_536,
            relay_server: false,
            external_addrs: Vec::new(),
            max_message_size: MAX_MESSAGE_SIZE,
            max_gossip_size: 256 << 10,
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3600),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            command_queue: 256,
            max_inflight_requests: 64,
            topic_queue: 256,
        }
    }
}

impl InternetConfig {
    /// The default configuration listening on loopback only (TCP and QUIC, OS ports).
    pub fn loopback() -> Self {
        InternetConfig {
            listen: vec![
                multiaddr("/ip4/127.0.0.1/tcp/0"),
                multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"),
            ],
            ..InternetConfig::default()
        }
    }
}

fn multiaddr(s: &str) -> Multiaddr {
    s.parse().unwrap_or_else(|_| Multiaddr::empty())
}

/// Answers inbound [`Request`]s other than [`Request::Message`] and [`Request::Hello`] (version nodes and
/// shards); replication plugs in here. Without a handler, `Get`/`VersionNode` are
/// [`Response::NotFound`], `Have` is `Have(false)` and `Push` is [`Response::Refused`].
pub trait RequestHandler: Send + Sync {
    /// The answer to `request` from `from` (already allowed by the access policy).
    fn handle(&self, from: PeerId, request: Request) -> BoxFuture<'static, Response>;
}

/// A GossipSub message received on a subscribed topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipMessage {
    /// The topic name.
    pub topic: String,
    /// The signed author (GossipSub strict signing), as an ecomesh id when it has one.
    pub source: Option<PeerId>,
    /// The neighbour that forwarded it.
    pub via: Option<PeerId>,
    /// The message bytes.
    pub data: Vec<u8>,
}

/// Execution figures of one DHT query (from Kademlia's own statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Requests sent to peers.
    pub requests: u32,
    /// Requests answered.
    pub successes: u32,
    /// Requests failed or timed out.
    pub failures: u32,
    /// Wall time of the query.
    pub duration: Option<Duration>,
}

impl LookupStats {
    fn of(s: &kad::QueryStats) -> Self {
        LookupStats {
            requests: s.num_requests(),
            successes: s.num_successes(),
            failures: s.num_failures(),
            duration: s.duration(),
        }
    }
}

/// libp2p-level happenings beyond [`TransportEvent`]: relaying and hole punching.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InternetEvent {
    /// A connection to `peer` was established, directly or through a relay.
    Connected {
        /// The peer.
        peer: PeerId,
        /// The remote address.
        address: Multiaddr,
        /// Whether it runs through a circuit relay.
        relayed: bool,
    },
    /// A relay accepted our circuit reservation.
    RelayReservation {
        /// The relay.
        relay: PeerId,
    },
    /// A DCUtR hole punch with `peer` ended.
    HolePunch {
        /// The peer.
        peer: PeerId,
        /// `None` on success, else the failure.
        error: Option<String>,
    },
    /// AutoNAT changed its view of our reachability.
    NatStatus(String),
}

// Commands and pending queries live briefly in a bounded channel or map; boxing the
// large variants would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, InternetError>>,
    },
    Connect {
        peer: libp2p::PeerId,
        reply: oneshot::Sender<Result<PeerId, InternetError>>,
    },
    Disconnect {
        peer: libp2p::PeerId,
        reply: oneshot::Sender<()>,
    },
    Request {
        peer: libp2p::PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, InternetError>>,
    },
    Provide {
        key: RecordKey,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    FindProviders {
        key: RecordKey,
        reply: oneshot::Sender<Result<(Vec<libp2p::PeerId>, LookupStats), InternetError>>,
    },
    ClosestPeers {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<(Vec<libp2p::PeerId>, LookupStats), InternetError>>,
    },
    PutRecord {
        key: RecordKey,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    GetRecord {
        key: RecordKey,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, InternetError>>,
    },
    Subscribe {
        topic: String,
        tx: mpsc::Sender<GossipMessage>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    TopicPeers {
        topic: String,
        mesh_only: bool,
        reply: oneshot::Sender<Vec<libp2p::PeerId>>,
    },
    ListenOn {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    Stop,
}

struct PeerEntry {
    info: PeerInfo,
}

#[derive(Clone)]
struct Redial {
    addrs: Vec<Multiaddr>,
    backoff: Duration,
    due: Option<Instant>,
}

/// What survives `stop`/`start`: redial targets, bound addresses and subscriptions.
#[derive(Default)]
struct Carry {
    redial: HashMap<libp2p::PeerId, Redial>,
    rebind: Vec<Multiaddr>,
    topics: HashMap<gossipsub::TopicHash, (String, Vec<mpsc::Sender<GossipMessage>>)>,
}

#[derive(Default)]
struct State {
    active: bool,
    cmd: Option<mpsc::Sender<Command>>,
    task: Option<JoinHandle<Carry>>,
    carry: Option<Carry>,
    peers: HashMap<PeerId, PeerEntry>,
    table: Option<PeerTable>,
    listen_addrs: Vec<Multiaddr>,
}

struct Inner {
    keypair: Keypair,
    me: PeerId,
    me_lp: libp2p::PeerId,
    policy: Arc<AccessPolicy>,
    config: InternetConfig,
    listeners: Listeners<TransportEvent>,
    net_listeners: Listeners<InternetEvent>,
    handler: Mutex<Option<Arc<dyn RequestHandler>>>,
    state: Mutex<State>,
    lifecycle: tokio::sync::Mutex<()>,
}

/// The internet transport: a rust-libp2p swarm (TCP and QUIC, Noise, Yamux, identify,
/// ping, Kademlia, GossipSub, relay v2 client and optional server, DCUtR, AutoNAT and the
/// `/ecomesh/req/1.0.0` request-response protocol) whose key is the node's Ed25519
/// identity.
///
/// Peers appear ([`TransportEvent::PeerDiscovered`]) once identify has run on a
/// connection the [`AccessPolicy`] allowed, and disappear when their last connection
/// closes. Messages travel as request-response exchanges: `send` resolves after the
/// receiver acknowledged delivery to its listeners, so sequential sends arrive in order.
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

    fn sender(&self) -> Result<mpsc::Sender<Command>, InternetError> {
        lock(&self.inner.state)
            .cmd
            .clone()
            .ok_or(InternetError::NotStarted)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, InternetError> {
        let tx = self.sender()?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| InternetError::Closed)?;
        rx.await.map_err(|_| InternetError::Closed)
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
    pub async fn provide(&self, cid: &ContentId) -> Result<(), InternetError> {
        let key = RecordKey::new(&cid.0);
        self.call(|reply| Command::Provide { key, reply }).await?
    }

    /// The peers the DHT lists as holding `cid` (ourselves excluded).
    pub async fn find_providers(&self, cid: &ContentId) -> Result<Vec<PeerId>, InternetError> {
        Ok(self.find_providers_with_stats(cid).await?.0)
    }

    /// [`find_providers`](Self::find_providers) with the query's statistics.
    pub async fn find_providers_with_stats(
        &self,
        cid: &ContentId,
    ) -> Result<(Vec<PeerId>, LookupStats), InternetError> {
        let key = RecordKey::new(&cid.0);
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
        let (tx, rx) = mpsc::channel(self.inner.config.command_queue.max(1));
        let driver = Driver::new(self.inner.clone(), swarm, carry, swarm_rebind);
        let task = tokio::spawn(driver.run(rx));
        let mut st = lock(&self.inner.state);
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

    fn check_size(&self, msg: &NetworkMessage) -> Result<(), Error> {
        let size = ecomesh_wire::encode_message(msg).len();
        let max = self.inner.config.max_message_size;
        if size > max {
            return Err(Error::MessageTooLarge { size, max });
        }
        Ok(())
    }

    async fn send_message(&self, peer: PeerId, message: NetworkMessage) -> Result<(), Error> {
        self.check_size(&message)?;
        let lp = {
            let st = lock(&self.inner.state);
            if !st.active {
                return Err(Error::NotStarted);
            }
            if !st.peers.contains_key(&peer) {
                return Err(Error::Unreachable(peer));
            }
            st.table
                .as_ref()
                .and_then(|t| t.get(&peer))
                .ok_or(Error::Unreachable(peer))?
        };
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

/// An address others may reach: not loopback, not unspecified.
fn is_routable_listen_addr(a: &Multiaddr) -> bool {
    a.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        _ => true,
    })
}

fn socket_addr_of_tcp(a: &Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    for p in a.iter() {
        match p {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
            Protocol::Tcp(port) => return ip.map(|ip| SocketAddr::new(ip, port)),
            _ => return None,
        }
    }
    None
}

/// `configured` with its port 0 replaced by the port of `bound` (same protocol).
fn with_bound_port(configured: &Multiaddr, bound: &Multiaddr) -> Multiaddr {
    let bound_tcp = bound.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    });
    let bound_udp = bound.iter().find_map(|p| match p {
        Protocol::Udp(port) => Some(port),
        _ => None,
    });
    configured
        .iter()
        .map(|p| match (p, bound_tcp, bound_udp) {
            (Protocol::Tcp(0), Some(port), _) => Protocol::Tcp(port),
            (Protocol::Udp(0), _, Some(port)) => Protocol::Udp(port),
            (p, _, _) => p,
        })
        .collect()
}

fn without_p2p(addr: &Multiaddr) -> (Multiaddr, Option<libp2p::PeerId>) {
    let mut a = addr.clone();
    match a.iter().last() {
        Some(Protocol::P2p(id)) => {
            a.pop();
            (a, Some(id))
        }
        _ => (a, None),
    }
}

type Built = Result<(Swarm<Behaviour>, Carry), Box<(InternetError, Carry)>>;

fn build_swarm(inner: &Arc<Inner>, carry: Carry) -> Built {
    let cfg = &inner.config;
    let setup = |e: &dyn std::fmt::Display| InternetError::Setup(e.to_string());
    let built = (|| {
        let swarm = libp2p::SwarmBuilder::with_existing_identity(inner.keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| setup(&e))?
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| setup(&e))?
            .with_behaviour(
                |key,
                 relay_client|
                 -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                    let me = key.public().to_peer_id();
                    let identify = identify::Behaviour::new(
                        identify::Config::new("/ecomesh/1.0.0".to_owned(), key.public())
                            .with_agent_version(format!("ecomesh/{}", env!("CARGO_PKG_VERSION"))),
                    );
                    let kad = if cfg.dht {
                        let mut kc = kad::Config::new(kad::PROTOCOL_NAME);
                        kc.set_periodic_bootstrap_interval(cfg.dht_walk_interval);
                        kc.set_query_timeout(cfg.dht_query_timeout);
                        let store = kad::store::MemoryStore::with_config(
                            me,
                            kad::store::MemoryStoreConfig {
                                max_value_bytes: cfg.max_record_size,
                                max_provided_keys: cfg.max_provider_keys,
                                ..kad::store::MemoryStoreConfig::default()
                            },
                        );
                        let mut k = kad::Behaviour::with_config(me, store, kc);
                        if cfg.dht_server {
                            k.set_mode(Some(kad::Mode::Server));
                        }
                        Some(k)
                    } else {
                        None
                    };
                    let gossip_cfg = gossipsub::ConfigBuilder::default()
                        .validation_mode(gossipsub::ValidationMode::Strict)
                        .max_transmit_size(cfg.max_gossip_size + 1024)
                        .build()?;
                    let gossipsub = gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Signed(key.clone()),
                        gossip_cfg,
                    )
                    .map_err(|e| setup(&e))?;
                    let limits = Limits {
                        max_request: cfg.max_message_size + protocol::BODY_OVERHEAD,
                        max_response: cfg.max_message_size + protocol::BODY_OVERHEAD,
                    };
                    let rr = request_response::Behaviour::with_codec(
                        EcomeshCodec { limits },
                        [(PROTOCOL, request_response::ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(cfg.request_timeout)
                            .with_max_concurrent_streams(cfg.max_inflight_requests.max(1) * 2),
                    );
                    Ok(Behaviour {
                        gate: Gate::new(inner.policy.clone()),
                        relay_client,
                        relay_server: Toggle::from(
                            cfg.relay_server
                                .then(|| relay::Behaviour::new(me, relay::Config::default())),
                        ),
                        identify,
                        ping: ping::Behaviour::new(ping::Config::new()),
                        kad: Toggle::from(kad),
                        gossipsub,
                        dcutr: dcutr::Behaviour::new(me),
                        autonat: autonat::Behaviour::new(me, autonat::Config::default()),
                        rr,
                    })
                },
            )
            .map_err(|e| setup(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_timeout))
            .build();
        Ok::<_, InternetError>(swarm)
    })();
    match built {
        Ok(s) => Ok((s, carry)),
        Err(e) => Err(Box::new((e, carry))),
    }
}

type Listened = Result<(Vec<Multiaddr>, Vec<Multiaddr>, Carry), Box<(InternetError, Carry)>>;

/// Listens on the configured (or previously bound) addresses and waits until each
/// listener reports its address. Returns the addresses to rebind after a restart and
/// every address listened on.
async fn listen_all(inner: &Arc<Inner>, swarm: &mut Swarm<Behaviour>, carry: Carry) -> Listened {
    let targets: Vec<Multiaddr> = if carry.rebind.is_empty() {
        inner.config.listen.clone()
    } else {
        carry.rebind.clone()
    };
    let mut waiting = HashMap::new();
    for (i, a) in targets.iter().enumerate() {
        match swarm.listen_on(a.clone()) {
            Ok(id) => {
                waiting.insert(id, i);
            }
            Err(e) => {
                return Err(Box::new((
                    InternetError::Address {
                        addr: a.to_string(),
                        reason: e.to_string(),
                    },
                    carry,
                )));
            }
        }
    }
    let mut rebind = targets.clone();
    let mut addrs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waiting.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(ev) => ev,
            Err(_) => {
                return Err(Box::new((
                    InternetError::Setup("listeners did not report an address in 10 s".into()),
                    carry,
                )));
            }
        };
        match ev {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(i) = waiting.remove(&listener_id) {
                    rebind[i] = with_bound_port(&targets[i], &address);
                }
                addrs.push(address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(i) = waiting.remove(&listener_id) {
                    let reason = match reason {
                        Ok(()) => "closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(Box::new((
                        InternetError::Address {
                            addr: targets[i].to_string(),
                            reason,
                        },
                        carry,
                    )));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(i) = waiting.remove(&listener_id) {
                    return Err(Box::new((
                        InternetError::Address {
                            addr: targets[i].to_string(),
                            reason: error.to_string(),
                        },
                        carry,
                    )));
                }
            }
            other => tracing::trace!(?other, "event while starting"),
        }
    }
    Ok((rebind, addrs, carry))
}

#[allow(clippy::large_enum_variant)]
enum PendingQuery {
    Provide(oneshot::Sender<Result<(), InternetError>>),
    Providers {
        found: HashSet<libp2p::PeerId>,
        reply: oneshot::Sender<Result<(Vec<libp2p::PeerId>, LookupStats), InternetError>>,
    },
    Closest(oneshot::Sender<Result<(Vec<libp2p::PeerId>, LookupStats), InternetError>>),
    Put(oneshot::Sender<Result<(), InternetError>>),
    Get {
        reply: Option<oneshot::Sender<Result<Option<Vec<u8>>, InternetError>>>,
    },
    /// A lookup of `peer`'s addresses before sending it a request.
    Locate {
        peer: libp2p::PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, InternetError>>,
    },
}

type Reply = oneshot::Sender<Result<PeerId, InternetError>>;

struct Driver {
    inner: Arc<Inner>,
    swarm: Swarm<Behaviour>,
    carry: Carry,
    /// Dials waiting for their connection, by connection id.
    dials: HashMap<ConnectionId, (Reply, bool)>,
    /// Connected dials waiting for identify, by peer.
    identifying: HashMap<libp2p::PeerId, Vec<(ConnectionId, Reply)>>,
    redial_attempts: HashMap<ConnectionId, libp2p::PeerId>,
    /// Remote address, relayed flag, peer and whether we dialled, per open connection.
    connections: HashMap<ConnectionId, (Multiaddr, bool, libp2p::PeerId, bool)>,
    /// Agent version and listen addresses from each peer's last identify.
    infos: HashMap<libp2p::PeerId, (String, Vec<Multiaddr>)>,
    /// Hello requests in flight, by request id.
    hellos: HashMap<request_response::OutboundRequestId, libp2p::PeerId>,
    requests: HashMap<
        request_response::OutboundRequestId,
        oneshot::Sender<Result<Response, InternetError>>,
    >,
    queries: HashMap<kad::QueryId, PendingQuery>,
    responses_tx: mpsc::Sender<(request_response::ResponseChannel<Response>, Response)>,
    responses_rx: mpsc::Receiver<(request_response::ResponseChannel<Response>, Response)>,
    handlers: Arc<Semaphore>,
    announce_topic: gossipsub::IdentTopic,
}

impl Driver {
    fn new(
        inner: Arc<Inner>,
        swarm: Swarm<Behaviour>,
        mut carry: Carry,
        rebind: Vec<Multiaddr>,
    ) -> Self {
        carry.rebind = rebind;
        let inflight = inner.config.max_inflight_requests.max(1);
        let (responses_tx, responses_rx) = mpsc::channel(inflight);
        Driver {
            inner,
            swarm,
            carry,
            dials: HashMap::new(),
            identifying: HashMap::new(),
            redial_attempts: HashMap::new(),
            connections: HashMap::new(),
            infos: HashMap::new(),
            hellos: HashMap::new(),
            requests: HashMap::new(),
            queries: HashMap::new(),
            responses_tx,
            responses_rx,
            handlers: Arc::new(Semaphore::new(inflight)),
            announce_topic: gossipsub::IdentTopic::new(PEERS_TOPIC),
        }
    }

    fn setup(&mut self) {
        let b = self.swarm.behaviour_mut();
        if let Err(e) = b.gossipsub.subscribe(&self.announce_topic) {
            tracing::warn!(error = %e, "cannot join the peers topic");
        }
        let topics: Vec<gossipsub::IdentTopic> = self
            .carry
            .topics
            .values()
            .map(|(name, _)| gossipsub::IdentTopic::new(name.clone()))
            .collect();
        for t in topics {
            if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&t) {
                tracing::warn!(topic = %t, error = %e, "cannot resubscribe");
            }
        }
        for addr in self.inner.config.bootstrap.clone() {
            let (bare, id) = without_p2p(&addr);
            if let Some(id) = id {
                if let Some(k) = self.swarm.behaviour_mut().kad.as_mut() {
                    k.add_address(&id, bare.clone());
                }
                self.swarm.behaviour_mut().gate.add_addresses(id, &[bare]);
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        for addr in self.inner.config.relays.clone() {
            let circuit = addr.clone().with(Protocol::P2pCircuit);
            if let Err(e) = self.swarm.listen_on(circuit) {
                tracing::warn!(%addr, error = %e, "cannot listen through relay");
            }
        }
        let mut external = self.inner.config.external_addrs.clone();
        if external.is_empty() && self.inner.config.relay_server {
            external = lock(&self.inner.state)
                .listen_addrs
                .iter()
                .filter(|a| is_routable_listen_addr(a))
                .cloned()
                .collect();
        }
        for a in external {
            tracing::info!(address = %a, "external address");
            self.swarm.add_external_address(a);
        }
        let now = Instant::now();
        for r in self.carry.redial.values_mut() {
            r.due = Some(now);
            r.backoff = self.inner.config.backoff_initial;
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Carry {
        self.setup();
        let mut walk = self.inner.config.dht_walk_interval.map(|d| {
            let mut i = tokio::time::interval(d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            let next_redial = self.carry.redial.values().filter_map(|r| r.due).min();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Stop) => break,
                    Some(c) => self.on_command(c),
                },
                ev = self.swarm.select_next_some() => self.on_event(ev),
                Some((ch, res)) = self.responses_rx.recv() => {
                    if self.swarm.behaviour_mut().rr.send_response(ch, res).is_err() {
                        tracing::debug!("response dropped: the stream closed");
                    }
                }
                () = async {
                    match next_redial {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => self.redial_due(),
                _ = async {
                    match walk.as_mut() {
                        Some(i) => i.tick().await,
                        None => std::future::pending().await,
                    }
                } => self.announce(),
            }
        }
        for (_, (reply, _)) in self.dials.drain() {
            let _ = reply.send(Err(InternetError::Closed));
        }
        for (_, v) in self.identifying.drain() {
            for (_, reply) in v {
                let _ = reply.send(Err(InternetError::Closed));
            }
        }
        self.carry
    }

    fn emit(&self, e: InternetEvent) {
        self.inner.net_listeners.emit(&e);
    }

    fn announce(&mut self) {
        let addrs: Vec<Multiaddr> = self
            .swarm
            .external_addresses()
            .chain(self.swarm.listeners())
            .cloned()
            .collect();
        let Ok(body) = encode_announcement(&addrs) else {
            return;
        };
        let topic = self.announce_topic.clone();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, body) {
            Ok(_) => tracing::trace!("announced on the peers topic"),
            Err(e) => tracing::trace!(error = %e, "no announcement"),
        }
    }

    fn redial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<libp2p::PeerId> = self
            .carry
            .redial
            .iter()
            .filter(|(_, r)| r.due.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let Some(r) = self.carry.redial.get_mut(&peer) else {
                continue;
            };
            r.due = None;
            if self.swarm.is_connected(&peer) {
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(r.addrs.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(%peer, "redialling");
                    self.redial_attempts.insert(id, peer);
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "redial not started");
                    self.redial_failed(peer);
                }
            }
        }
    }

    fn redial_failed(&mut self, peer: libp2p::PeerId) {
        let max = self.inner.config.backoff_max;
        if let Some(r) = self.carry.redial.get_mut(&peer) {
            r.due = Some(Instant::now() + r.backoff);
            r.backoff = (r.backoff * 2).min(max);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Stop => {}
            Command::Dial { addr, reply } => {
                let (_, target) = without_p2p(&addr);
                if let Some(p) = target
                    && let Some(id) = self.identified(&p)
                {
                    self.carry.redial.entry(p).or_insert_with(|| Redial {
                        addrs: vec![addr.clone()],
                        backoff: self.inner.config.backoff_initial,
                        due: None,
                    });
                    let _ = reply.send(Ok(id));
                    return;
                }
                self.start_dial(
                    DialOpts::unknown_peer_id().address(addr).build(),
                    reply,
                    true,
                );
            }
            Command::Connect { peer, reply } => {
                if let Some(id) = self.identified(&peer) {
                    let _ = reply.send(Ok(id));
                    return;
                }
                self.start_dial(DialOpts::peer_id(peer).build(), reply, false);
            }
            Command::Disconnect { peer, reply } => {
                self.carry.redial.remove(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
                let _ = reply.send(());
            }
            Command::Request {
                peer,
                request,
                reply,
            } => self.send_request(peer, request, reply),
            Command::Provide { key, reply } => match self.swarm.behaviour_mut().kad.as_mut() {
                None => {
                    let _ = reply.send(Err(InternetError::Dht("the DHT is disabled".into())));
                }
                Some(k) => match k.start_providing(key) {
                    Ok(q) => {
                        self.queries.insert(q, PendingQuery::Provide(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(InternetError::Dht(e.to_string())));
                    }
                },
            },
            Command::FindProviders { key, reply } => {
                match self.swarm.behaviour_mut().kad.as_mut() {
                    None => {
                        let _ = reply.send(Err(InternetError::Dht("the DHT is disabled".into())));
                    }
                    Some(k) => {
                        let q = k.get_providers(key);
                        self.queries.insert(
                            q,
                            PendingQuery::Providers {
                                found: HashSet::new(),
                                reply,
                            },
                        );
                    }
                }
            }
            Command::ClosestPeers { key, reply } => match self.swarm.behaviour_mut().kad.as_mut() {
                None => {
                    let _ = reply.send(Err(InternetError::Dht("the DHT is disabled".into())));
                }
                Some(k) => {
                    let q = k.get_closest_peers(key);
                    self.queries.insert(q, PendingQuery::Closest(reply));
                }
            },
            Command::PutRecord { key, value, reply } => {
                match self.swarm.behaviour_mut().kad.as_mut() {
                    None => {
                        let _ = reply.send(Err(InternetError::Dht("the DHT is disabled".into())));
                    }
                    Some(k) => {
                        let record = kad::Record::new(key, value);
                        match k.put_record(record, kad::Quorum::One) {
                            Ok(q) => {
                                self.queries.insert(q, PendingQuery::Put(reply));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(InternetError::Dht(e.to_string())));
                            }
                        }
                    }
                }
            }
            Command::GetRecord { key, reply } => match self.swarm.behaviour_mut().kad.as_mut() {
                None => {
                    let _ = reply.send(Err(InternetError::Dht("the DHT is disabled".into())));
                }
                Some(k) => {
                    let q = k.get_record(key);
                    self.queries
                        .insert(q, PendingQuery::Get { reply: Some(reply) });
                }
            },
            Command::Subscribe { topic, tx, reply } => {
                let t = gossipsub::IdentTopic::new(topic.clone());
                match self.swarm.behaviour_mut().gossipsub.subscribe(&t) {
                    Ok(_) => {
                        self.carry
                            .topics
                            .entry(t.hash())
                            .or_insert_with(|| (topic, Vec::new()))
                            .1
                            .push(tx);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(InternetError::Gossip(e.to_string())));
                    }
                }
            }
            Command::Publish { topic, data, reply } => {
                let t = gossipsub::IdentTopic::new(topic);
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(t, data)
                    .map(|_| ())
                    .map_err(|e| InternetError::Gossip(e.to_string()));
                let _ = reply.send(r);
            }
            Command::TopicPeers {
                topic,
                mesh_only,
                reply,
            } => {
                let hash = gossipsub::IdentTopic::new(topic).hash();
                let g = &self.swarm.behaviour().gossipsub;
                let peers: Vec<libp2p::PeerId> = if mesh_only {
                    g.mesh_peers(&hash).copied().collect()
                } else {
                    g.all_peers()
                        .filter(|(_, ts)| ts.contains(&&hash))
                        .map(|(p, _)| *p)
                        .collect()
                };
                let _ = reply.send(peers);
            }
            Command::ListenOn { addr, reply } => {
                let r = self.swarm.listen_on(addr.clone()).map(|_| ()).map_err(|e| {
                    InternetError::Address {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    }
                });
                let _ = reply.send(r);
            }
        }
    }

    /// Starts a dial whose outcome `reply` gets once identify ran (or the dial failed);
    /// `persist` makes the peer a redial target once connected.
    fn start_dial(&mut self, opts: DialOpts, reply: Reply, persist: bool) {
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, (reply, persist));
            }
            Err(e) => {
                let _ = reply.send(Err(InternetError::Dial(e.to_string())));
            }
        }
    }

    fn identified(&self, peer: &libp2p::PeerId) -> Option<PeerId> {
        let id = ecomesh_peer_id(peer).ok()?;
        lock(&self.inner.state)
            .peers
            .contains_key(&id)
            .then_some(id)
    }

    fn send_request(
        &mut self,
        peer: libp2p::PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, InternetError>>,
    ) {
        let known = self.swarm.is_connected(&peer)
            || !self.swarm.behaviour().gate.addresses(&peer).is_empty();
        let b = self.swarm.behaviour_mut();
        if !known && let Some(k) = b.kad.as_mut() {
            let q = k.get_closest_peers(peer);
            self.queries.insert(
                q,
                PendingQuery::Locate {
                    peer,
                    request,
                    reply,
                },
            );
            return;
        }
        let id = b.rr.send_request(&peer, request);
        self.requests.insert(id, reply);
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(b) => self.on_behaviour(b),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                let address = endpoint.get_remote_address().clone();
                tracing::debug!(peer = %peer_id, %address, relayed, "connection established");
                let id = {
                    let mut st = lock(&self.inner.state);
                    st.table.as_mut().and_then(|t| t.learn(&peer_id, true).ok())
                };
                if let Some(r) = self.carry.redial.get_mut(&peer_id) {
                    r.backoff = self.inner.config.backoff_initial;
                    r.due = None;
                }
                self.redial_attempts.remove(&connection_id);
                self.connections.insert(
                    connection_id,
                    (address.clone(), relayed, peer_id, endpoint.is_dialer()),
                );
                if let Some((reply, persist)) = self.dials.remove(&connection_id) {
                    if persist && endpoint.is_dialer() {
                        self.carry.redial.insert(
                            peer_id,
                            Redial {
                                addrs: vec![address.clone()],
                                backoff: self.inner.config.backoff_initial,
                                due: None,
                            },
                        );
                    }
                    match self.identified(&peer_id) {
                        Some(id) => {
                            let _ = reply.send(Ok(id));
                        }
                        None => self
                            .identifying
                            .entry(peer_id)
                            .or_default()
                            .push((connection_id, reply)),
                    }
                }
                if let Some(peer) = id {
                    self.emit(InternetEvent::Connected {
                        peer,
                        address,
                        relayed,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, num_established, "connection closed");
                self.connections.remove(&connection_id);
                if let Some(waiting) = self.identifying.get_mut(&peer_id) {
                    if let Some(pos) = waiting.iter().position(|(c, _)| *c == connection_id) {
                        let (_, reply) = waiting.remove(pos);
                        let err = match ecomesh_peer_id(&peer_id) {
                            Ok(id) => InternetError::Refused(id),
                            Err(e) => e,
                        };
                        let _ = reply.send(Err(err));
                    }
                    if waiting.is_empty() {
                        self.identifying.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.peer_gone(peer_id);
                    if self.carry.redial.contains_key(&peer_id) {
                        self.redial_failed(peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(peer) = self.redial_attempts.remove(&connection_id) {
                    tracing::debug!(%peer, error = %error, "redial failed");
                    self.redial_failed(peer);
                }
                if let Some((reply, _)) = self.dials.remove(&connection_id) {
                    let err = match (&error, peer_id.map(|p| ecomesh_peer_id(&p))) {
                        (DialError::Denied { .. }, Some(Ok(id))) => InternetError::Refused(id),
                        _ => InternetError::Dial(error.to_string()),
                    };
                    let _ = reply.send(Err(err));
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(error = %error, "incoming connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
                let cfg = &self.inner.config;
                if cfg.relay_server
                    && cfg.external_addrs.is_empty()
                    && is_routable_listen_addr(&address)
                {
                    self.swarm.add_external_address(address.clone());
                }
                let mut st = lock(&self.inner.state);
                if !st.listen_addrs.contains(&address) {
                    st.listen_addrs.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&self.inner.state)
                    .listen_addrs
                    .retain(|a| *a != address);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
            }
            other => tracing::trace!(?other, "swarm event"),
        }
    }

    fn peer_gone(&mut self, peer_id: libp2p::PeerId) {
        self.infos.remove(&peer_id);
        let Ok(id) = ecomesh_peer_id(&peer_id) else {
            return;
        };
        let removed = {
            let mut st = lock(&self.inner.state);
            if let Some(t) = st.table.as_mut() {
                t.unpin(&id);
            }
            st.peers.remove(&id).is_some()
        };
        if removed {
            tracing::info!(peer = %id, "peer lost");
            self.inner.listeners.emit(&TransportEvent::PeerLost(id));
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => self.on_identified(peer_id, connection_id, info),
            BehaviourEvent::Identify(other) => tracing::trace!(?other, "identify"),
            BehaviourEvent::Rr(e) => self.on_rr(e),
            BehaviourEvent::Kad(e) => self.on_kad(e),
            BehaviourEvent::Gossipsub(e) => self.on_gossip(e),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                tracing::info!(peer = %remote_peer_id, ?result, "hole punch finished");
                if let Ok(peer) = ecomesh_peer_id(&remote_peer_id) {
                    self.emit(InternetEvent::HolePunch {
                        peer,
                        error: result.err().map(|e| e.to_string()),
                    });
                }
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                if let Ok(relay) = ecomesh_peer_id(&relay_peer_id) {
                    self.emit(InternetEvent::RelayReservation { relay });
                }
            }
            BehaviourEvent::RelayClient(other) => tracing::debug!(?other, "relay client"),
            BehaviourEvent::RelayServer(e) => tracing::debug!(?e, "relay server"),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "NAT status changed");
                self.emit(InternetEvent::NatStatus(format!("{new:?}")));
            }
            BehaviourEvent::Autonat(other) => tracing::trace!(?other, "autonat"),
            BehaviourEvent::Ping(e) => tracing::trace!(?e, "ping"),
            BehaviourEvent::Gate(never) => match never {},
        }
    }

    fn on_identified(
        &mut self,
        peer_id: libp2p::PeerId,
        connection_id: ConnectionId,
        info: identify::Info,
    ) {
        let Ok(id) = ecomesh_peer_id(&peer_id) else {
            return;
        };
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter(|a| !a.iter().any(|p| p == Protocol::P2pCircuit))
            .take(16)
            .cloned()
            .collect();
        let b = self.swarm.behaviour_mut();
        b.gate.add_addresses(peer_id, &addrs);
        let supports_kad = info.protocols.contains(&kad::PROTOCOL_NAME);
        if supports_kad && let Some(k) = b.kad.as_mut() {
            for a in &addrs {
                k.add_address(&peer_id, a.clone());
            }
        }
        if !self.swarm.is_connected(&peer_id) {
            return;
        }
        self.infos.insert(
            peer_id,
            (info.agent_version.chars().take(128).collect(), addrs),
        );
        if lock(&self.inner.state).peers.contains_key(&id) {
            self.resolve_dials(peer_id, id);
            return;
        }
        if info.protocols.contains(&PROTOCOL) {
            // The dialling side sends a hello and registers the peer on its answer; the
            // other side registers on the hello (or any request). So the listener lists
            // the dialler before the dialler lists it, and `dial` resolves last.
            let we_dialled = self.connections.get(&connection_id).is_some_and(|c| c.3);
            if we_dialled {
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_request(&peer_id, Request::Hello);
                self.hellos.insert(rid, peer_id);
            }
        } else {
            // A libp2p peer that is not an ecomesh node: identify is all we get.
            self.register(peer_id, Some(connection_id));
        }
    }

    /// Lists `peer_id` as reachable (once), emitting `PeerDiscovered`, and resolves the
    /// dials waiting for it. Called when the peer proved it accepted the connection: it
    /// answered our hello, sent us a request, or (non-ecomesh peers) identified.
    fn register(&mut self, peer_id: libp2p::PeerId, connection_id: Option<ConnectionId>) {
        let (Some(key), Ok(id)) = (ed25519_key_of(&peer_id), ecomesh_peer_id(&peer_id)) else {
            return;
        };
        if !self.swarm.is_connected(&peer_id) {
            return;
        }
        let conn = connection_id
            .and_then(|c| self.connections.get(&c))
            .cloned();
        let new = {
            let mut st = lock(&self.inner.state);
            if st.peers.contains_key(&id) || !st.active {
                None
            } else {
                let mut pi = PeerInfo::new(id, TransportType::Internet, wall_ms());
                pi.metadata
                    .insert(PeerInfo::PUBLIC_KEY.to_owned(), Value::Bytes(key.to_vec()));
                pi.metadata
                    .insert("libp2pPeerId".to_owned(), Value::Text(peer_id.to_base58()));
                if let Some((agent, addrs)) = self.infos.get(&peer_id) {
                    pi.metadata
                        .insert("agentVersion".to_owned(), Value::Text(agent.clone()));
                    pi.metadata.insert(
                        "listenAddrs".to_owned(),
                        Value::Array(addrs.iter().map(|a| Value::Text(a.to_string())).collect()),
                    );
                }
                let conn = conn.or_else(|| {
                    self.connections
                        .iter()
                        .find(|(_, (_, _, p, _))| *p == peer_id)
                        .map(|(_, c)| c.clone())
                });
                if let Some((address, relayed, _, _)) = conn {
                    pi.metadata
                        .insert("address".to_owned(), Value::Text(address.to_string()));
                    pi.metadata
                        .insert("relayed".to_owned(), Value::Bool(relayed));
                }
                st.peers.insert(id, PeerEntry { info: pi.clone() });
                Some(pi)
            }
        };
        if let Some(pi) = new {
            tracing::info!(peer = %id, libp2p = %peer_id, "peer registered");
            self.inner
                .listeners
                .emit(&TransportEvent::PeerDiscovered(pi));
        }
        self.resolve_dials(peer_id, id);
    }

    fn resolve_dials(&mut self, peer_id: libp2p::PeerId, id: PeerId) {
        if let Some(waiting) = self.identifying.remove(&peer_id) {
            for (_, reply) in waiting {
                let _ = reply.send(Ok(id));
            }
        }
    }

    fn on_rr(&mut self, ev: request_response::Event<Request, Response>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_inbound(peer, request, channel),
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(peer) = self.hellos.remove(&request_id) {
                    if response == Response::Ack {
                        self.register(peer, None);
                    }
                } else if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if self.hellos.remove(&request_id).is_some() {
                    tracing::debug!(%peer, %error, "hello failed");
                    if matches!(
                        error,
                        request_response::OutboundFailure::UnsupportedProtocols
                    ) {
                        self.register(peer, None);
                    }
                } else if let Some(reply) = self.requests.remove(&request_id) {
                    let peer = ecomesh_peer_id(&peer).unwrap_or(PeerId::from_digest([0; 32]));
                    let _ = reply.send(Err(InternetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound(
        &mut self,
        peer: libp2p::PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let allowed = self.swarm.behaviour().gate.allows(&peer);
        let Ok(from) = ecomesh_peer_id(&peer) else {
            return;
        };
        if !allowed {
            let _ = self
                .swarm
                .behaviour_mut()
                .rr
                .send_response(channel, Response::Refused);
            return;
        }
        // A request proves the peer accepted the connection.
        self.register(peer, None);
        match request {
            Request::Hello => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_response(channel, Response::Ack);
            }
            Request::Message(message) => {
                self.inner
                    .listeners
                    .emit(&TransportEvent::Message { from, message });
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_response(channel, Response::Ack);
            }
            other => {
                let handler = lock(&self.inner.handler).clone();
                let Some(handler) = handler else {
                    let res = match other {
                        Request::ShardHave { .. } => Response::Have(false),
                        Request::ShardPush { .. } => Response::Refused,
                        _ => Response::NotFound,
                    };
                    let _ = self.swarm.behaviour_mut().rr.send_response(channel, res);
                    return;
                };
                let Ok(permit) = self.handlers.clone().try_acquire_owned() else {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rr
                        .send_response(channel, Response::Error("busy".to_owned()));
                    return;
                };
                let tx = self.responses_tx.clone();
                tokio::spawn(async move {
                    let res = handler.handle(from, other).await;
                    let _ = tx.send((channel, res)).await;
                    drop(permit);
                });
            }
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id,
            result,
            stats,
            step,
        } = ev
        else {
            if let kad::Event::RoutingUpdated {
                peer, addresses, ..
            } = &ev
            {
                let addrs: Vec<Multiaddr> = addresses.iter().cloned().collect();
                self.swarm.behaviour_mut().gate.add_addresses(*peer, &addrs);
            }
            tracing::trace!(?ev, "kad");
            return;
        };
        let Some(pending) = self.queries.remove(&id) else {
            return;
        };
        let stats = LookupStats::of(&stats);
        match (pending, result) {
            (PendingQuery::Provide(reply), kad::QueryResult::StartProviding(r)) => {
                let _ = reply.send(r.map(|_| ()).map_err(|e| InternetError::Dht(e.to_string())));
            }
            (PendingQuery::Providers { mut found, reply }, kad::QueryResult::GetProviders(r)) => {
                match r {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        found.extend(providers);
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) => tracing::debug!(error = %e, "provider lookup ended early"),
                }
                if step.last {
                    let _ = reply.send(Ok((found.into_iter().collect(), stats)));
                } else {
                    self.queries
                        .insert(id, PendingQuery::Providers { found, reply });
                }
            }
            (PendingQuery::Closest(reply), kad::QueryResult::GetClosestPeers(r)) => {
                let peers = self.learn_closest(r);
                let _ = reply.send(Ok((peers.into_iter().map(|p| p.peer_id).collect(), stats)));
            }
            (
                PendingQuery::Locate {
                    peer,
                    request,
                    reply,
                },
                kad::QueryResult::GetClosestPeers(r),
            ) => {
                self.learn_closest(r);
                let rid = self.swarm.behaviour_mut().rr.send_request(&peer, request);
                self.requests.insert(rid, reply);
            }
            (PendingQuery::Put(reply), kad::QueryResult::PutRecord(r)) => {
                let _ = reply.send(r.map(|_| ()).map_err(|e| InternetError::Dht(e.to_string())));
            }
            (PendingQuery::Get { mut reply }, kad::QueryResult::GetRecord(r)) => {
                match r {
                    Ok(kad::GetRecordOk::FoundRecord(rec)) => {
                        if let Some(tx) = reply.take() {
                            let _ = tx.send(Ok(Some(rec.record.value)));
                        }
                        if let Some(mut q) = self
                            .swarm
                            .behaviour_mut()
                            .kad
                            .as_mut()
                            .and_then(|k| k.query_mut(&id))
                        {
                            q.finish();
                        }
                    }
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. })
                    | Err(kad::GetRecordError::NotFound { .. }) => {}
                    Err(e) => {
                        if let Some(tx) = reply.take() {
                            let _ = tx.send(Err(InternetError::Dht(e.to_string())));
                        }
                    }
                }
                if step.last {
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Ok(None));
                    }
                } else {
                    self.queries.insert(id, PendingQuery::Get { reply });
                }
            }
            (pending, other) => {
                tracing::debug!(?other, "unexpected query result kind");
                // Keep waiting for the matching result.
                if !step.last {
                    self.queries.insert(id, pending);
                }
            }
        }
    }

    /// The peers of a closest-peers result, remembering their addresses.
    fn learn_closest(&mut self, r: kad::GetClosestPeersResult) -> Vec<kad::PeerInfo> {
        let peers = match r {
            Ok(ok) => ok.peers,
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
        };
        for p in &peers {
            self.swarm
                .behaviour_mut()
                .gate
                .add_addresses(p.peer_id, &p.addrs);
        }
        peers
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message,
            ..
        } = ev
        else {
            tracing::trace!(?ev, "gossipsub");
            return;
        };
        if let Some(src) = message.source
            && !self.swarm.behaviour().gate.allows(&src)
        {
            return;
        }
        if message.topic == self.announce_topic.hash() {
            if let (Some(src), Ok(addrs)) = (message.source, decode_announcement(&message.data)) {
                let b = self.swarm.behaviour_mut();
                b.gate.add_addresses(src, &addrs);
                if let Some(k) = b.kad.as_mut() {
                    for a in addrs {
                        k.add_address(&src, a);
                    }
                }
            }
            return;
        }
        let Some((name, senders)) = self.carry.topics.get_mut(&message.topic) else {
            return;
        };
        let msg = GossipMessage {
            topic: name.clone(),
            source: message.source.and_then(|s| ecomesh_peer_id(&s).ok()),
            via: ecomesh_peer_id(&propagation_source).ok(),
            data: message.data,
        };
        senders.retain(|tx| !tx.is_closed());
        for tx in senders.iter() {
            if tx.try_send(msg.clone()).is_err() {
                tracing::warn!(topic = %msg.topic, "subscriber queue full; message dropped");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_ports_replace_zero() {
        let c: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let b: Multiaddr = "/ip4/127.0.0.1/tcp/4242".parse().unwrap();
        assert_eq!(
            with_bound_port(&c, &b).to_string(),
            "/ip4/127.0.0.1/tcp/4242"
        );
        let c: Multiaddr = "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap();
        let b: Multiaddr = "/ip4/10.0.0.1/udp/999/quic-v1".parse().unwrap();
        assert_eq!(
            with_bound_port(&c, &b).to_string(),
            "/ip4/0.0.0.0/udp/999/quic-v1"
        );
        let fixed: Multiaddr = "/ip4/0.0.0.0/tcp/7".parse().unwrap();
        assert_eq!(with_bound_port(&fixed, &b), fixed);
    }

    #[test]
    fn tcp_socket_addrs_and_p2p_suffix() {
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/4000".parse().unwrap();
        assert_eq!(
            socket_addr_of_tcp(&a),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        let q: Multiaddr = "/ip4/127.0.0.1/udp/4000/quic-v1".parse().unwrap();
        assert_eq!(socket_addr_of_tcp(&q), None);
        let id = keypair_from_seed(&[1; 32]).unwrap().public().to_peer_id();
        let (bare, got) = without_p2p(&a.clone().with(Protocol::P2p(id)));
        assert_eq!((bare, got), (a.clone(), Some(id)));
        assert_eq!(without_p2p(&a), (a, None));
    }

    #[test]
    fn collection_topics_are_namespaced() {
        assert_eq!(collection_topic("notes"), "/ecomesh/collection/v1/notes");
    }
}
