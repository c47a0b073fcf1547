//! The one error type of `ecomesh-transport-internet`.

use ecomesh_types::PeerId;

/// What went wrong in the libp2p transport, its codec or one of its queries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InternetError {
    /// A request-response frame or body that breaks the protocol.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A frame whose length head exceeds the limit; nothing was allocated for it.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length announced (or encoded).
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message payload that did not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] ecomesh_wire::WireError),
    /// A libp2p peer id that is not an Ed25519 identity, so it has no ecomesh peer id.
    #[error("libp2p peer id {0} does not embed an Ed25519 key")]
    NotEd25519(String),
    /// A key that is not a valid Ed25519 public key.
    #[error("invalid Ed25519 key: {0}")]
    InvalidKey(String),
    /// A multiaddr that did not parse or cannot be dialled/listened on.
    #[error("address {addr}: {reason}")]
    Address {
        /// The address text.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// Building the libp2p swarm failed (transport or behaviour construction).
    #[error("swarm setup: {0}")]
    Setup(String),
    /// Dialling failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// The peer refused the connection, or our access policy refused the peer.
    #[error("peer {0} refused")]
    Refused(PeerId),
    /// A Kademlia query failed.
    #[error("dht: {0}")]
    Dht(String),
    /// A GossipSub subscribe or publish failed.
    #[error("gossipsub: {0}")]
    Gossip(String),
    /// A request got no response (timeout, stream or connection failure).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// What failed.
        reason: String,
    },
    /// A record or value larger than this transport stores or sends.
    #[error("{what} of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The transport is not started.
    #[error("transport is not started")]
    NotStarted,
    /// The swarm task ended.
    #[error("transport closed")]
    Closed,
    /// Socket I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl InternetError {
    /// The shared error this maps to at the `TransportAdapter` boundary.
    pub fn into_transport_error(self) -> ecomesh_types::Error {
        match self {
            InternetError::Refused(p) => ecomesh_types::Error::PeerRejected(p),
            InternetError::NotStarted => ecomesh_types::Error::NotStarted,
            InternetError::Closed => ecomesh_types::Error::Closed,
            InternetError::TooLarge { size, max, .. } => {
                ecomesh_types::Error::MessageTooLarge { size, max }
            }
            other => ecomesh_types::Error::backend(other),
        }
    }
}

impl From<InternetError> for ecomesh_types::Error {
    fn from(e: InternetError) -> Self {
        e.into_transport_error()
    }
}
