//! The one error type of the embeddable node.

use std::path::PathBuf;

use ecomesh_types::PeerId;

/// Everything that can go wrong in [`Node`](crate::Node) and its handles.
///
/// Lower layers' errors are kept as sources, so callers can downcast through
/// [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The document store failed (open, read, write, query).
    #[error(transparent)]
    Store(#[from] ecomesh_p2p_storage::StoreError),
    /// A storage-trait call failed (the adapter's shared error type).
    #[error(transparent)]
    Storage(#[from] ecomesh_types::Error),
    /// The mesh refused or failed an operation.
    #[error(transparent)]
    Mesh(#[from] ecomesh_mesh::MeshError),
    /// The durable queue or stream failed.
    #[error(transparent)]
    Replication(#[from] ecomesh_replication::ReplicationError),
    /// Keys, sealing or opening failed.
    #[error(transparent)]
    Identity(#[from] ecomesh_identity::Error),
    /// A value could not be encoded or decoded.
    #[error(transparent)]
    Wire(#[from] ecomesh_wire::WireError),
    /// A file of the node could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the node was doing.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A CAR file (sneakernet import) that is malformed: truncated, oversized,
    /// a bad varint, CID or header, or not CARv1. What merged before the
    /// damage stays merged.
    #[error("not a valid CARv1 file: {0}")]
    InvalidCar(#[source] ecomesh_wire::WireError),
    /// Text that is not a peer id (Base58 of 32 bytes).
    #[error(
        "{text:?} is not a peer id ({reason}); peer ids are the Base58 text `ecomesh status` and `ecomesh peers` print"
    )]
    InvalidPeerId {
        /// The text (at most its first 80 characters).
        text: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A bad argument from the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A text cannot be sealed to a peer whose key this node never learned and
    /// no reachable node gave within `NodeConfig::key_discovery_timeout`.
    #[error(
        "no key known for {0}, and no reachable node gave it: a node can seal messages only \
         to peers it has met or that a reachable node knows; wait until it appears among the \
         peers once (then it may go offline)"
    )]
    UnknownKey(PeerId),
    /// The outbox already holds its limit of pending texts; nothing was queued.
    #[error(
        "refused, nothing queued: the outbox holds {held} undelivered texts, its limit \
         ({max}); wait until some are delivered or expire, or raise the limit"
    )]
    OutboxFull {
        /// Pending texts held.
        held: usize,
        /// The configured limit ([`NodeConfig::outbox_max`](crate::NodeConfig::outbox_max)).
        max: usize,
    },
    /// A wait ran past its deadline.
    #[error("{0}")]
    Timeout(String),
    /// Content routing (provider records) failed.
    #[error("content routing: {0}")]
    Routing(String),
    /// Device linking failed (see [`LinkError`](crate::LinkError)).
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    /// The node is not running (shut down, or a start step failed).
    #[error("the node is not running")]
    Stopped,
}

impl SyncError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SyncError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = SyncError> = std::result::Result<T, E>;

impl SyncError {
    /// The store's error behind this one, also when it came through the
    /// `StorageAdapter` trait (for [`StoreError::Sealed`](ecomesh_p2p_storage::StoreError::Sealed),
    /// [`StoreError::NoCollectionKey`](ecomesh_p2p_storage::StoreError::NoCollectionKey) and the rest).
    pub fn store_error(&self) -> Option<&ecomesh_p2p_storage::StoreError> {
        match self {
            SyncError::Store(e) => Some(e),
            SyncError::Storage(ecomesh_types::Error::Backend(e)) => e.downcast_ref(),
            _ => None,
        }
    }
}
