//! The crate's one error type.

use ecomesh_p2p_storage::StoreError;

/// What can go wrong in the hybrid adapter itself (the primary's and the local
/// store's own errors come back as [`ecomesh_types::Error`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HybridError {
    /// The durable replay queue could not be opened, read or written.
    #[error("replay queue: {0}")]
    Queue(#[from] sled::Error),
    /// A queue entry that is not a CID the queue wrote (a damaged file).
    #[error("replay queue entry {seq} is damaged: {reason}")]
    DamagedEntry {
        /// The entry's sequence number.
        seq: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    /// The primary did not answer within the configured timeout.
    #[error("primary timed out after {0} ms")]
    Timeout(u64),
    /// The device's authentication failed (bad signature, refused key, wrong message).
    #[error("authentication: {0}")]
    Auth(#[from] ecomesh_identity::Error),
    /// A request without a valid token, or for a session that does not exist.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A batch longer than the primary merges at once.
    #[error("{len} versions in one batch, at most {max}")]
    BatchTooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The primary answered with an error.
    #[error("primary: {0}")]
    Primary(ecomesh_types::Error),
}

impl From<HybridError> for ecomesh_types::Error {
    fn from(e: HybridError) -> Self {
        match e {
            HybridError::Primary(e) => e,
            HybridError::Store(e) => e.into(),
            other => ecomesh_types::Error::backend(other),
        }
    }
}
