//! The public values the transport hands out or takes in: topic names, the
//! [`RequestHandler`] hook, gossip messages, DHT lookup figures and [`InternetEvent`]s.

use std::time::Duration;

#[cfg(doc)]
use ecomesh_types::TransportEvent;
use ecomesh_types::{BoxFuture, PeerId};
use libp2p::{Multiaddr, kad};

use crate::protocol::{Request, Response};

/// The GossipSub topic every ecomesh node joins (seed 3.2's well-known peers topic).
pub const PEERS_TOPIC: &str = "/ecomesh/peers/v1";

/// The GossipSub topic of a collection: `/ecomesh/collection/v1/<name>`.
pub fn collection_topic(collection: &str) -> String {
    format!("/ecomesh/collection/v1/{collection}")
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
    pub(super) fn of(s: &kad::QueryStats) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_topics_are_namespaced() {
        assert_eq!(collection_topic("notes"), "/ecomesh/collection/v1/notes");
    }
}
