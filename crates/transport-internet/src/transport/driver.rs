//! The swarm task: [`Driver`] owns the libp2p swarm, runs its event loop and answers the
//! handle's commands. Its children handle each protocol's commands and events.

mod connections;
mod dht;
mod gossip;
mod request;

use std::collections::HashMap;
use std::sync::Arc;

use ecomesh_types::PeerId;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, Swarm, autonat, dcutr, gossipsub, identify, kad, relay, request_response};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::error::InternetError;
use crate::peer_id::ecomesh_peer_id;
use crate::protocol::Response;

use self::dht::PendingQuery;
use super::addr::{is_routable_listen_addr, without_p2p};
use super::command::Command;
use super::state::{Carry, Inner, lock};
use super::{InternetEvent, PEERS_TOPIC};

type Reply = oneshot::Sender<Result<PeerId, InternetError>>;

pub(super) struct Driver {
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
    pub(super) fn new(
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

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Carry {
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

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Stop => {}
            Command::Dial { addr, reply } => self.dial(addr, reply),
            Command::Connect { peer, reply } => self.connect(peer, reply),
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
            Command::Provide { key, reply } => self.start_providing(key, reply),
            Command::FindProviders { key, reply } => self.find_providers(key, reply),
            Command::ClosestPeers { key, reply } => self.closest_peers(key, reply),
            Command::PutRecord { key, value, reply } => self.put_record(key, value, reply),
            Command::GetRecord { key, reply } => self.get_record(key, reply),
            Command::Subscribe { topic, tx, reply } => self.subscribe(topic, tx, reply),
            Command::Publish { topic, data, reply } => self.publish(topic, data, reply),
            Command::TopicPeers {
                topic,
                mesh_only,
                reply,
            } => self.topic_peers(topic, mesh_only, reply),
            Command::ListenOn { addr, reply } => self.listen_on(addr, reply),
            Command::Register { peer, reply } => {
                self.register(peer, None);
                let _ = reply.send(());
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(b) => self.on_behaviour(b),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection_established(peer_id, connection_id, endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => self.on_connection_closed(peer_id, connection_id, num_established, cause),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_outgoing_error(connection_id, peer_id, error),
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
            BehaviourEvent::Streams(()) => {}
        }
    }
}
