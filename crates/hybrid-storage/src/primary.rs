//! What the hybrid adapter needs from a primary: a [`StorageAdapter`] that
//! also takes signed version nodes and merges them.

use ecomesh_p2p_storage::kv::Backend;
use ecomesh_p2p_storage::{ApplyOutcome, Store, StoreError, VersionNode};
use ecomesh_types::{BoxFuture, ContentId, Error, StorageAdapter};

/// The most versions one [`PrimaryStore::apply_versions`] call carries (seed
/// 004's `maxBatchSize`); a primary refuses a longer batch.
pub const MAX_BATCH: usize = 1000;

/// What a primary did with one version of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionApplied {
    /// New on the primary and merged. `concurrent` is true when the document
    /// had a head the version does not follow (a write made elsewhere while
    /// this device was away): the CRDT merge resolved it, and the adapter
    /// reports it as a conflict.
    Applied {
        /// Whether it was concurrent with the primary's heads.
        concurrent: bool,
    },
    /// The primary already held it (a replay after a lost answer or a crash).
    AlreadyPresent,
    /// Its parents are not on the primary yet; they must go first.
    MissingParents(Vec<ContentId>),
    /// The primary refused it (bad signature, damaged bytes, not allowed).
    Refused(String),
}

/// A primary store: the documents API of [`StorageAdapter`], plus the merge
/// of signed version nodes, which is how queued writes reach it unchanged
/// (same CID, same signature, same timestamp) so a replay is idempotent.
pub trait PrimaryStore: StorageAdapter {
    /// Merges `versions` (canonical version-node bytes) in order, at most
    /// [`MAX_BATCH`] of them, one outcome each. An `Err` means the batch's
    /// fate is unknown (some may have been merged): the caller sends it again.
    fn apply_versions(
        &self,
        versions: Vec<Vec<u8>>,
    ) -> BoxFuture<'_, Result<Vec<VersionApplied>, Error>>;

    /// A cheap request that succeeds when the primary is reachable (the heartbeat).
    fn ping(&self) -> BoxFuture<'_, Result<(), Error>>;
}

/// Merges one version into `store`, with whether it was concurrent with the
/// document's heads; the merge a primary built on a [`Store`] does.
pub fn apply_version_to_store<B: Backend>(store: &Store<B>, bytes: &[u8]) -> VersionApplied {
    let node = match ecomesh_wire::decode::<VersionNode>(bytes) {
        Ok(n) => n,
        Err(e) => return VersionApplied::Refused(format!("not a version node: {e}")),
    };
    let heads = match store.heads(&node.collection, &node.id) {
        Ok(h) => h,
        Err(e) => return VersionApplied::Refused(e.to_string()),
    };
    match store.apply_remote(bytes) {
        Ok(ApplyOutcome::Applied { .. }) => VersionApplied::Applied {
            concurrent: heads.iter().any(|h| !node.parents.contains(h)),
        },
        Ok(ApplyOutcome::AlreadyPresent(_)) => VersionApplied::AlreadyPresent,
        Ok(other) => VersionApplied::Refused(format!("unexpected outcome {other:?}")),
        Err(StoreError::MissingParents(p)) => VersionApplied::MissingParents(p),
        Err(e) => VersionApplied::Refused(e.to_string()),
    }
}

/// A local [`Store`] as a primary (a second store on this machine, or the
/// store of the node that serves as primary to others).
impl<B: Backend + 'static> PrimaryStore for Store<B> {
    fn apply_versions(
        &self,
        versions: Vec<Vec<u8>>,
    ) -> BoxFuture<'_, Result<Vec<VersionApplied>, Error>> {
        Box::pin(async move {
            if versions.len() > MAX_BATCH {
                return Err(Error::InvalidArgument(format!(
                    "{} versions in one batch, at most {MAX_BATCH}",
                    versions.len()
                )));
            }
            Ok(versions
                .iter()
                .map(|v| apply_version_to_store(self, v))
                .collect())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}
