//! Connections: dials and redials with backoff, listening, connection events, identify,
//! and the registration of peers as reachable (`PeerDiscovered` / `PeerLost`).

use std::time::{SystemTime, UNIX_EPOCH};

use ecomesh_types::{PeerId, PeerInfo, TransportEvent, TransportType, Value};
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionError, ConnectionId, DialError};
use libp2p::{Multiaddr, identify, kad};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::InternetError;
use crate::peer_id::{ecomesh_peer_id, ed25519_key_of};
use crate::protocol::{MESSAGE_PROTOCOL, PROTOCOL, Request};

use super::super::InternetEvent;
use super::super::addr::without_p2p;
use super::super::state::{PeerEntry, Redial, lock};
use super::{Driver, Reply};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Driver {
    pub(super) fn redial_due(&mut self) {
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

    /// Dials `addr` for [`Command::Dial`](super::Command::Dial); the peer becomes a redial
    /// target once connected.
    pub(super) fn dial(&mut self, addr: Multiaddr, reply: Reply) {
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

    /// Connects to a known peer for [`Command::Connect`](super::Command::Connect).
    pub(super) fn connect(&mut self, peer: libp2p::PeerId, reply: Reply) {
        if let Some(id) = self.identified(&peer) {
            let _ = reply.send(Ok(id));
            return;
        }
        self.start_dial(DialOpts::peer_id(peer).build(), reply, false);
    }

    /// Starts listening on one more address.
    pub(super) fn listen_on(
        &mut self,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), InternetError>>,
    ) {
        let r =
            self.swarm
                .listen_on(addr.clone())
                .map(|_| ())
                .map_err(|e| InternetError::Address {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                });
        let _ = reply.send(r);
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

    pub(super) fn on_connection_established(
        &mut self,
        peer_id: libp2p::PeerId,
        connection_id: ConnectionId,
        endpoint: ConnectedPoint,
    ) {
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

    pub(super) fn on_connection_closed(
        &mut self,
        peer_id: libp2p::PeerId,
        connection_id: ConnectionId,
        num_established: u32,
        cause: Option<ConnectionError>,
    ) {
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

    pub(super) fn on_outgoing_error(
        &mut self,
        connection_id: ConnectionId,
        peer_id: Option<libp2p::PeerId>,
        error: DialError,
    ) {
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
            st.forget_streams(&id);
            st.peers.remove(&id).is_some()
        };
        if removed {
            tracing::info!(peer = %id, "peer lost");
            self.inner.listeners.emit(&TransportEvent::PeerLost(id));
        }
    }

    pub(super) fn on_identified(
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
        if info.protocols.contains(&MESSAGE_PROTOCOL) {
            lock(&self.inner.state).stream_capable.insert(id);
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
    pub(super) fn register(
        &mut self,
        peer_id: libp2p::PeerId,
        connection_id: Option<ConnectionId>,
    ) {
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
}
