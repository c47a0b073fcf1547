//! The one error type of `ecomesh-transport-wired`.

use ecomesh_types::PeerId;

/// What went wrong on a wired link or in the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WiredError {
    /// The Noise handshake or session failed (includes access-policy refusals).
    #[error("noise: {0}")]
    Noise(#[from] ecomesh_identity::Error),
    /// A received message did not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] ecomesh_wire::WireError),
    /// A record that breaks the link protocol.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// A message over the link's size limit.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The handshake or keepalive went unanswered.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A message was sent before the link was established.
    #[error("link not established")]
    NotEstablished,
    /// The peer refused us (closed the link during the handshake).
    #[error("peer {0} refused the link")]
    Refused(PeerId),
    /// The mDNS daemon failed.
    #[error("mdns: {0}")]
    Mdns(#[from] mdns_sd::Error),
    /// Socket I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The link is closed.
    #[error("link closed")]
    Closed,
}

impl WiredError {
    /// The shared error this maps to at the `TransportAdapter` boundary.
    pub fn into_transport_error(self) -> ecomesh_types::Error {
        match self {
            WiredError::TooLarge { size, max } => {
                ecomesh_types::Error::MessageTooLarge { size, max }
            }
            WiredError::Refused(p) => ecomesh_types::Error::PeerRejected(p),
            WiredError::Noise(ecomesh_identity::Error::PeerRefused(p)) => {
                ecomesh_types::Error::PeerRejected(p)
            }
            WiredError::Closed => ecomesh_types::Error::Closed,
            other => ecomesh_types::Error::backend(other),
        }
    }
}
