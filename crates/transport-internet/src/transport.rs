//! The tokio driver: one task owns the libp2p swarm; the API talks to it over a bounded
//! command channel with oneshot replies.
//!
//! - `handle`: [`InternetTransport`], its API and its `TransportAdapter` implementation;
//!   `config`: [`InternetConfig`]; `types`: the other public values.
//! - `command`: the commands the handle sends the swarm task; `state`: what they share.
//! - `swarm`: building the swarm and binding its listeners; `addr`: multiaddr helpers.
//! - `driver`: the swarm task, with one child per concern (connections, request-response,
//!   DHT, gossip).
//! - `streams`: the long-lived message streams (`/ecomesh/msg/1.0.0`), outside the swarm
//!   task: a writer task per peer fed by a bounded queue, a reader task per inbound stream.

mod addr;
mod command;
mod config;
mod driver;
mod handle;
mod state;
mod streams;
mod swarm;
mod types;

pub use config::InternetConfig;
pub use handle::InternetTransport;
pub use types::{
    GossipMessage, InternetEvent, LookupStats, PEERS_TOPIC, RequestHandler, collection_topic,
};
