//! The internet transport of ecomesh (seed 3.2, issue 7) on rust-libp2p.
//!
//! - [`InternetTransport`]: one libp2p swarm (TCP and QUIC, Noise, Yamux, identify, ping,
//!   Kademlia, GossipSub, circuit relay v2 client and optional server, DCUtR, AutoNAT)
//!   implementing [`TransportAdapter`](ecomesh_types::TransportAdapter), plus the DHT
//!   content location index ([`InternetTransport::provide`],
//!   [`InternetTransport::find_providers`], small records), GossipSub topics
//!   ([`PEERS_TOPIC`], [`collection_topic`]) and request-response
//!   ([`InternetTransport::request`], [`RequestHandler`]).
//! - [`protocol`]: the `/ecomesh/req/1.0.0` requests and responses (messages, version
//!   nodes, shard Get/Have/Push) with a bounded codec, and the peers-topic announcement.
//! - [`peer_id`]: the exact libp2p ↔ ecomesh peer id mapping; the libp2p key is the
//!   node's Ed25519 identity.
//!
//! Every other protocol name and encoding is libp2p's standard one (`/ipfs/id/1.0.0`,
//! `/ipfs/ping/1.0.0`, `/ipfs/kad/1.0.0`, `/meshsub/1.1.0`, relay v2 hop/stop, dcutr,
//! autonat), so other libp2p implementations interoperate.

//!
//! # Features
//! - `swarm` (default): everything above. Without it only [`protocol`] and
//!   [`InternetError`] build, with no libp2p, so the wire format can be fuzzed (and
//!   reused) without building the swarm.

#![forbid(unsafe_code)]

#[cfg(feature = "swarm")]
mod behaviour;
mod error;
#[cfg(feature = "swarm")]
mod naming;
#[cfg(feature = "swarm")]
pub mod peer_id;
pub mod protocol;
#[cfg(feature = "swarm")]
mod transport;

pub use error::InternetError;
pub use multiaddr::Multiaddr;
/// The protocols of a [`Multiaddr`] (`/ip4`, `/tcp`, `/quic-v1`, `/p2p`...).
pub use multiaddr::Protocol as multiaddr_protocol;
#[cfg(feature = "swarm")]
pub use naming::provider_key;
pub use protocol::{Request, Response};
#[cfg(feature = "swarm")]
pub use transport::{
    GossipMessage, InternetConfig, InternetEvent, InternetTransport, LookupStats, PEERS_TOPIC,
    RequestHandler, collection_topic,
};
