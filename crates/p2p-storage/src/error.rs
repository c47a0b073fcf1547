//! The store's error type.

use std::path::PathBuf;

use ecomesh_types::ContentId;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the database.
    #[error(
        "database at {path} is locked by another process; stop it or use another --data directory"
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The database was written by an unknown on-disk format version.
    #[error(
        "database format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedFormat {
        /// The version found on disk (0 when the marker is missing from a non-empty database).
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A stored record that does not decode or whose CID does not match.
    #[error("corrupt record for {collection}/{id}: {reason}")]
    Corrupt {
        /// The collection of the damaged record ("" for store-wide records).
        collection: String,
        /// The document id (or record name) of the damaged record.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A store invariant does not hold (found by [`verify_integrity`](crate::Store::verify_integrity)).
    #[error("store invariant violated: {0}")]
    Invariant(String),
    /// `update` of a document that does not exist.
    #[error("document {collection}/{id} not found")]
    NotFound {
        /// The collection searched.
        collection: String,
        /// The missing id.
        id: String,
    },
    /// A bad argument: empty key, malformed query, bad field operation.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A version received from a peer that fails verification.
    #[error("invalid version for {collection}/{id}: {reason}")]
    InvalidVersion {
        /// Its collection, when it decoded that far.
        collection: String,
        /// Its document id, when it decoded that far.
        id: String,
        /// Why it was refused.
        reason: String,
    },
    /// A remote version whose parents are not here yet: fetch these first.
    #[error("{} parent version(s) missing", .0.len())]
    MissingParents(Vec<ContentId>),
    /// A version CID the store does not have.
    #[error("unknown version {0:?}")]
    UnknownVersion(ContentId),
    /// The hybrid logical clock reached the end of its range (a timestamp is
    /// never refused for being far ahead).
    #[error("clock: {0}")]
    Clock(String),
    /// A record could not be encoded.
    #[error("encoding: {0}")]
    Encode(String),
    /// The backend (sled) failed.
    #[error("storage backend: {0}")]
    Backend(String),
    /// A document of an encrypted collection holds versions this node has no
    /// key for (it is not a member, or was removed before they were written):
    /// it stores and forwards them, but cannot read the document.
    #[error(
        "document {collection}/{id} is encrypted and this node holds no key for some of its versions"
    )]
    Sealed {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// A write to an encrypted collection for which this node holds no current
    /// key (never given one, or removed from its members).
    #[error("collection {collection} is encrypted and this node holds no current key to write it")]
    NoCollectionKey {
        /// The collection.
        collection: String,
    },
    /// A blob could not be cut, verified or rebuilt (see [`crate::blobs`]).
    #[error("blob: {0}")]
    Blob(#[from] ecomesh_replication::ReplicationError),
}

impl From<StoreError> for ecomesh_types::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { collection, id } => {
                ecomesh_types::Error::NotFound { collection, id }
            }
            StoreError::InvalidArgument(msg) => ecomesh_types::Error::InvalidArgument(msg),
            other => ecomesh_types::Error::backend(other),
        }
    }
}
