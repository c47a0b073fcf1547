//! [`InternetConfig`]: the settings of an [`InternetTransport`] and their defaults.

use std::time::Duration;

use libp2p::Multiaddr;

use crate::protocol::MAX_MESSAGE_SIZE;
#[cfg(doc)]
use crate::protocol::Response;

#[cfg(doc)]
use super::{InternetTransport, PEERS_TOPIC, RequestHandler};

/// Settings of an [`InternetTransport`].
#[derive(Clone, Debug)]
pub struct InternetConfig {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`.
    /// Port 0 is chosen by the OS at the first start and kept across restarts.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers, each ending in `/p2p/<libp2p peer id>` (an address without it is
    /// only dialled). Added to the DHT routing table and dialled at every start. Hosts
    /// may be named (`/dns4/`, `/dns6/`, `/dns/`, `/dnsaddr/`), resolved through
    /// `dns_servers`.
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to take a circuit reservation on (each ending in `/p2p/<relay id>`), so
    /// peers that cannot reach us directly connect through them. May name hosts, as
    /// `bootstrap` may.
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
    /// Carry messages on one long-lived `/ecomesh/msg/1.0.0` stream per peer (with peers
    /// that list it in identify), `send` resolving once the message is queued for the
    /// peer's stream. When off, the protocol is not offered and every message is a
    /// request-response exchange, as with peers that do not speak it.
    pub message_streams: bool,
    /// Messages queued per peer for its message stream before `send` waits.
    pub send_queue: usize,
    /// DNS servers that resolve `/dns4/`, `/dns6/`, `/dns/` and `/dnsaddr/` addresses
    /// (bootstrap, relays, dials); empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<std::net::SocketAddr>,
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
            message_streams: true,
            send_queue: 64,
            dns_servers: Vec::new(),
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
