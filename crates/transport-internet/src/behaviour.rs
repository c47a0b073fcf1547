//! The composed libp2p [`NetworkBehaviour`] and the access-policy gate.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use ecomesh_identity::AccessPolicy;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, autonat, dcutr, gossipsub, identify, kad, ping, relay, request_response};

use crate::error::InternetError;
use crate::peer_id::ecomesh_peer_id;
use crate::protocol::EcomeshCodec;

/// Addresses kept per peer in the [`Gate`]'s address book.
const ADDRS_PER_PEER: usize = 8;
/// Peers kept in the [`Gate`]'s address book.
const BOOK_PEERS: usize = 4096;

/// Every protocol of one ecomesh libp2p node.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Access policy and address book; listed first so refused peers never reach the others.
    pub(crate) gate: Gate,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) autonat: autonat::Behaviour,
    pub(crate) rr: request_response::Behaviour<EcomeshCodec>,
    /// Long-lived message streams (`/ecomesh/msg/1.0.0`), opened and accepted outside
    /// the swarm task through a `libp2p_stream::Control`.
    pub(crate) streams: libp2p_stream::Behaviour,
}

/// Refuses connections with peers the [`AccessPolicy`] does not allow (and with peers
/// whose libp2p id embeds no Ed25519 key, which have no ecomesh identity), and supplies
/// dial addresses learned from identify.
pub(crate) struct Gate {
    policy: Arc<AccessPolicy>,
    book: HashMap<libp2p::PeerId, Vec<Multiaddr>>,
}

impl Gate {
    pub(crate) fn new(policy: Arc<AccessPolicy>) -> Self {
        Gate {
            policy,
            book: HashMap::new(),
        }
    }

    fn check(&self, peer: libp2p::PeerId) -> Result<dummy::ConnectionHandler, ConnectionDenied> {
        let id = ecomesh_peer_id(&peer).map_err(ConnectionDenied::new)?;
        if !self.policy.allows(&id) {
            tracing::debug!(peer = %id, "connection refused by the access policy");
            return Err(ConnectionDenied::new(InternetError::Refused(id)));
        }
        Ok(dummy::ConnectionHandler)
    }

    /// Whether the policy allows `peer`.
    pub(crate) fn allows(&self, peer: &libp2p::PeerId) -> bool {
        self.check(*peer).is_ok()
    }

    /// Remembers up to a bounded number of dial addresses of `peer`.
    pub(crate) fn add_addresses(&mut self, peer: libp2p::PeerId, addrs: &[Multiaddr]) {
        if !self.book.contains_key(&peer)
            && self.book.len() >= BOOK_PEERS
            && let Some(victim) = self.book.keys().next().copied()
        {
            self.book.remove(&victim);
        }
        let entry = self.book.entry(peer).or_default();
        for a in addrs {
            if !entry.contains(a) {
                if entry.len() >= ADDRS_PER_PEER {
                    entry.remove(0);
                }
                entry.push(a.clone());
            }
        }
    }

    /// The known dial addresses of `peer`.
    pub(crate) fn addresses(&self, peer: &libp2p::PeerId) -> &[Multiaddr] {
        self.book.get(peer).map_or(&[], Vec::as_slice)
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: libp2p::PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<libp2p::PeerId>,
        _addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let Some(peer) = maybe_peer else {
            return Ok(Vec::new());
        };
        self.check(peer)?;
        Ok(self.addresses(&peer).to_vec())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: libp2p::PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer)
    }

    fn on_swarm_event(&mut self, _event: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        _peer_id: libp2p::PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
