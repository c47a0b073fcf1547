//! The one error type of `ecomesh-transport-ble`.

use ecomesh_types::PeerId;

/// What went wrong on a BLE link, in its framing or in the transport.
///
/// Every error a link returns on received input is final for that link: the caller
/// disconnects it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BleError {
    /// A fragment that does not follow the framing of [`crate::frag`].
    #[error("malformed fragment: {0}")]
    Malformed(&'static str),
    /// A fragment longer than the link's channel takes (the ATT payload of its MTU, or
    /// its L2CAP SDU MTU).
    #[error("fragment of {len} bytes exceeds the channel's limit of {max} bytes")]
    FragmentTooLarge {
        /// Length received.
        len: usize,
        /// The channel's fragment limit (ATT MTU - 3, or the SDU MTU).
        max: usize,
    },
    /// A unit (one Noise message) over the link's unit limit.
    #[error("unit of {len} bytes exceeds the maximum of {max} bytes")]
    UnitTooLarge {
        /// Announced or offered length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A unit that would take, or took, more fragments than allowed.
    #[error("unit needs more than {max} fragments")]
    TooManyFragments {
        /// Limit.
        max: usize,
    },
    /// The peer started a unit without holding a credit for it.
    #[error("peer sent a unit without credit")]
    CreditViolation,
    /// The peer granted credits beyond the hard cap of units in flight.
    #[error("peer granted {granted} credits, over the cap of {max}")]
    CreditOverflow {
        /// Credits the peer would have granted in total.
        granted: usize,
        /// Hard cap ([`crate::frag::MAX_UNITS_IN_FLIGHT`]).
        max: usize,
    },
    /// The link's send queue is full; try again when credits return.
    #[error("send queue full ({units} units)")]
    QueueFull {
        /// Units queued.
        units: usize,
    },
    /// An ATT MTU outside 23..=517.
    #[error("ATT MTU {0} outside 23..=517")]
    MtuOutOfRange(u16),
    /// Bulk priority is never sent over BLE (seed 3.3 payload policy); the mesh uses
    /// another transport.
    #[error("bulk traffic is refused on BLE")]
    BulkRefused,
    /// A message over the BLE size cap (encoded bytes).
    #[error("message of {size} bytes exceeds the BLE maximum of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The Noise handshake or session failed (includes access-policy refusals).
    #[error("noise: {0}")]
    Noise(#[from] ecomesh_identity::Error),
    /// A received message did not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] ecomesh_wire::WireError),
    /// The handshake or a keepalive went unanswered.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A message was sent before the link was established.
    #[error("link not established")]
    NotEstablished,
    /// The link is closed (after an earlier error or by request).
    #[error("link closed")]
    Closed,
    /// The connection limit is reached and the policy kept the existing links.
    #[error("connection limit of {0} links reached")]
    ConnectionLimit(usize),
    /// The radio (simulator or BlueZ backend) failed.
    #[error("radio: {0}")]
    Radio(String),
    /// No established link to this peer.
    #[error("peer {0} unreachable over BLE")]
    Unreachable(PeerId),
    /// The access policy refused this peer.
    #[error("peer {0} refused")]
    Refused(PeerId),
}

impl BleError {
    /// Whether this error, when a link's received input caused it, is the sending
    /// peer's fault (a protocol violation the mesh charges to its reputation), as
    /// opposed to radio trouble, timeouts or local limits.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            BleError::Malformed(_)
                | BleError::FragmentTooLarge { .. }
                | BleError::UnitTooLarge { .. }
                | BleError::TooManyFragments { .. }
                | BleError::CreditViolation
                | BleError::CreditOverflow { .. }
                | BleError::Noise(_)
                | BleError::Decode(_)
        )
    }

    /// The shared error this maps to at the `TransportAdapter` boundary.
    pub fn into_transport_error(self) -> ecomesh_types::Error {
        match self {
            BleError::TooLarge { size, max } => ecomesh_types::Error::MessageTooLarge { size, max },
            BleError::Refused(p) => ecomesh_types::Error::PeerRejected(p),
            BleError::Unreachable(p) => ecomesh_types::Error::Unreachable(p),
            BleError::Noise(ecomesh_identity::Error::PeerRefused(p)) => {
                ecomesh_types::Error::PeerRejected(p)
            }
            BleError::Closed => ecomesh_types::Error::Closed,
            other => ecomesh_types::Error::backend(other),
        }
    }
}
