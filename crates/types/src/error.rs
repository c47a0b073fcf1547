//! The one error type of `ecomesh-types`, shared by the traits it defines.

use std::fmt;

use crate::PeerId;

/// An error from parsing a data-model value, or returned by a [`TransportAdapter`]
/// or [`StorageAdapter`] implementation.
///
/// Implementations wrap their own error types with [`Error::backend`] so callers
/// can still downcast to them through [`std::error::Error::source`].
///
/// [`TransportAdapter`]: crate::TransportAdapter
/// [`StorageAdapter`]: crate::StorageAdapter
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Base58 text that is not valid or decodes to too many bytes.
    InvalidBase58 {
        /// What was wrong.
        reason: &'static str,
    },
    /// A [`PeerId`] text or byte string of the wrong length.
    InvalidPeerId {
        /// The decoded length in bytes (a `PeerId` has 32).
        len: usize,
    },
    /// A [`MessageId`](crate::MessageId) that is not a hyphenated UUID.
    InvalidMessageId,
    /// A name that is none of the known values of a data-model enum.
    UnknownName {
        /// The kind of name, e.g. `"transport type"`.
        kind: &'static str,
        /// The text that did not match.
        name: String,
    },
    /// The transport was used before `start` or after `stop`.
    NotStarted,
    /// The peer is not known to, or not reachable on, this transport.
    Unreachable(PeerId),
    /// A message larger than the transport (or a peer) accepts.
    MessageTooLarge {
        /// Encoded size of the message.
        size: usize,
        /// The largest size accepted.
        max: usize,
    },
    /// A peer was refused by the access policy (allowlist / blocklist) or failed authentication.
    PeerRejected(PeerId),
    /// `update` on a document that does not exist.
    NotFound {
        /// The collection that was searched.
        collection: String,
        /// The document id that was not found.
        id: String,
    },
    /// An argument that the operation cannot accept (empty collection name, bad query, bad cursor...).
    InvalidArgument(String),
    /// The adapter was closed or its background task ended.
    Closed,
    /// An implementation's own error, kept as the source.
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// Wraps an implementation's own error.
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Backend(Box::new(err))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidBase58 { reason } => write!(f, "invalid Base58: {reason}"),
            Error::InvalidPeerId { len } => {
                write!(f, "invalid peer id: {len} bytes, expected 32")
            }
            Error::InvalidMessageId => {
                f.write_str("invalid message id: expected a hyphenated UUID")
            }
            Error::UnknownName { kind, name } => write!(f, "unknown {kind} {name:?}"),
            Error::NotStarted => f.write_str("transport is not started"),
            Error::Unreachable(peer) => write!(f, "peer {peer} is not reachable"),
            Error::MessageTooLarge { size, max } => {
                write!(
                    f,
                    "message of {size} bytes exceeds the maximum of {max} bytes"
                )
            }
            Error::PeerRejected(peer) => write!(f, "peer {peer} was rejected"),
            Error::NotFound { collection, id } => {
                write!(f, "document {collection}/{id} not found")
            }
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::Closed => f.write_str("closed"),
            Error::Backend(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Backend(err) => Some(err.as_ref()),
            _ => None,
        }
    }
}
