//! The one error type of `ecomesh-transport-lora`.

use ecomesh_types::PeerId;

/// What went wrong in the LoRa transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoraError {
    /// A frame from the radio that is malformed, truncated or foreign.
    #[error("malformed frame: {0}")]
    Frame(&'static str),
    /// A broadcast frame whose MAC does not verify under our network key.
    #[error("broadcast frame MAC does not verify")]
    BadMac,
    /// A sealed frame no session of ours decrypts (forged, tampered, replayed or for someone else).
    #[error("sealed frame rejected: {0}")]
    Rejected(&'static str),
    /// Noise handshake or session failure (includes access-policy refusals).
    #[error("noise: {0}")]
    Noise(#[from] ecomesh_identity::Error),
    /// A received message did not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] ecomesh_wire::WireError),
    /// Bulk traffic is never sent over LoRa; the mesh uses another transport.
    #[error("bulk data is not carried over LoRa")]
    BulkRefused,
    /// A message over the fragmentation cap.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Fragment reassembly refused a fragment (limits, inconsistency).
    #[error("fragment refused: {0}")]
    Fragment(&'static str),
    /// No session or route to the peer.
    #[error("peer {0} is not reachable over LoRa")]
    Unreachable(PeerId),
    /// The access policy refuses the peer.
    #[error("peer {0} refused by the access policy")]
    Refused(PeerId),
    /// The transmit queue is full of more urgent traffic.
    #[error("transmit queue full")]
    QueueFull,
    /// The radio did not finish the handshake or a peer did not answer in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// Serial port failure.
    #[error("serial port: {0}")]
    Serial(#[from] serialport::Error),
    /// I/O failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The transport is stopped.
    #[error("transport closed")]
    Closed,
}

impl LoraError {
    /// The shared error this maps to at the `TransportAdapter` boundary.
    pub fn into_transport_error(self) -> ecomesh_types::Error {
        match self {
            LoraError::TooLarge { size, max } => {
                ecomesh_types::Error::MessageTooLarge { size, max }
            }
            LoraError::Unreachable(p) => ecomesh_types::Error::Unreachable(p),
            LoraError::Refused(p) => ecomesh_types::Error::PeerRejected(p),
            LoraError::Noise(ecomesh_identity::Error::PeerRefused(p)) => {
                ecomesh_types::Error::PeerRejected(p)
            }
            LoraError::Closed => ecomesh_types::Error::Closed,
            other => ecomesh_types::Error::backend(other),
        }
    }
}
