//! The `/ecomesh/req/1.0.0` request-response protocol: our requests and their answers,
//! hellos, and inbound requests (messages, or the
//! [`RequestHandler`](super::super::RequestHandler)).

use ecomesh_types::{PeerId, TransportEvent};
use libp2p::request_response;
use tokio::sync::oneshot;

use crate::error::InternetError;
use crate::peer_id::ecomesh_peer_id;
use crate::protocol::{Request, Response};

use super::super::state::lock;
use super::Driver;
use super::dht::PendingQuery;

impl Driver {
    pub(super) fn send_request(
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

    pub(super) fn on_rr(&mut self, ev: request_response::Event<Request, Response>) {
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
}
