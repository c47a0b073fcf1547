//! The Kademlia DHT: starting provider, closest-peer and record queries, and collecting
//! their results for the waiting callers.

use std::collections::HashSet;

use libp2p::Multiaddr;
use libp2p::kad::{self, RecordKey};
use tokio::sync::oneshot;

use crate::error::InternetError;
use crate::protocol::{Request, Response};

use super::super::LookupStats;
use super::Driver;

#[allow(clippy::large_enum_variant)]
pub(super) enum PendingQuery {
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

impl Driver {
    /// Announces us as a provider of `key`.
    pub(super) fn start_providing(
        &mut self,
        key: RecordKey,
        reply: oneshot::Sender<Result<(), InternetError>>,
    ) {
        match self.swarm.behaviour_mut().kad.as_mut() {
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
        }
    }

    /// Looks up the providers of `key`.
    pub(super) fn find_providers(
        &mut self,
        key: RecordKey,
        reply: oneshot::Sender<Result<(Vec<libp2p::PeerId>, LookupStats), InternetError>>,
    ) {
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

    /// Looks up the peers closest to `key`.
    pub(super) fn closest_peers(
        &mut self,
        key: Vec<u8>,
        reply: oneshot::Sender<Result<(Vec<libp2p::PeerId>, LookupStats), InternetError>>,
    ) {
        match self.swarm.behaviour_mut().kad.as_mut() {
            None => {
                let _ = reply.send(Err(InternetError::Dht("the DHT is disabled".into())));
            }
            Some(k) => {
                let q = k.get_closest_peers(key);
                self.queries.insert(q, PendingQuery::Closest(reply));
            }
        }
    }

    /// Stores a record in the DHT.
    pub(super) fn put_record(
        &mut self,
        key: RecordKey,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    ) {
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

    /// Looks up a record in the DHT.
    pub(super) fn get_record(
        &mut self,
        key: RecordKey,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, InternetError>>,
    ) {
        match self.swarm.behaviour_mut().kad.as_mut() {
            None => {
                let _ = reply.send(Err(InternetError::Dht("the DHT is disabled".into())));
            }
            Some(k) => {
                let q = k.get_record(key);
                self.queries
                    .insert(q, PendingQuery::Get { reply: Some(reply) });
            }
        }
    }

    pub(super) fn on_kad(&mut self, ev: kad::Event) {
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
}
