//! The crate's one error type.

use ecomesh_types::PeerId;

/// What can go wrong in replication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// Bytes from a peer or from disk do not decode; names what was being decoded.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it was refused.
        detail: String,
    },
    /// A bound on untrusted input was exceeded.
    #[error("{what} exceeds the limit: {size} > {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size (bytes or items).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Content whose hash does not match the id it was requested or announced by.
    #[error("content does not match its id {expected}")]
    HashMismatch {
        /// The id the content was expected to have (text form).
        expected: String,
        /// The peer that sent it, when known.
        peer: Option<PeerId>,
    },
    /// A configuration value out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A peer is outside the reach of the data it asked for or was offered.
    #[error("peer {peer} is outside the reach of {what}")]
    OutOfReach {
        /// The peer.
        peer: PeerId,
        /// The collection, document or blob.
        what: String,
    },
    /// Not enough pieces to rebuild content (for example fewer than 4 of 7 shards).
    #[error("cannot rebuild {what}: {detail}")]
    Unrecoverable {
        /// What could not be rebuilt.
        what: String,
        /// Why.
        detail: String,
    },
    /// The durable state could not be read or written.
    #[error("storage: {0}")]
    Storage(String),
    /// A decoding error from `ecomesh-wire`.
    #[error(transparent)]
    Wire(#[from] ecomesh_wire::WireError),
}
