//! The durable replay queue: the version CIDs of local writes the primary has
//! not acknowledged, in write order, in a sled tree.

use std::path::Path;

use ecomesh_types::ContentId;

use crate::HybridError;

/// Largest CID the queue stores (a CIDv1 with a 64-byte digest fits easily);
/// an entry beyond it is damaged.
const MAX_CID_BYTES: usize = 128;

/// Local writes waiting for the primary, oldest first. Every push is flushed
/// before it returns, so a queued write survives a crash.
#[derive(Debug, Clone)]
pub struct ReplayQueue {
    db: sled::Db,
    tree: sled::Tree,
}

impl ReplayQueue {
    /// Opens (or creates) the queue in the directory `path`.
    pub fn open(path: &Path) -> Result<Self, HybridError> {
        let db = sled::open(path)?;
        let tree = db.open_tree("replay")?;
        Ok(ReplayQueue { db, tree })
    }

    /// Appends `cids` in order and flushes.
    pub fn push(&self, cids: &[ContentId]) -> Result<(), HybridError> {
        if cids.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for cid in cids {
            let seq = self.db.generate_id()?;
            batch.insert(&seq.to_be_bytes(), cid.0.as_slice());
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Up to `max` entries, oldest first: (sequence number, CID).
    pub fn peek(&self, max: usize) -> Result<Vec<(u64, ContentId)>, HybridError> {
        let mut out = Vec::new();
        for entry in self.tree.iter().take(max) {
            let (k, v) = entry?;
            let seq = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| HybridError::DamagedEntry {
                    seq: 0,
                    reason: "key is not 8 bytes",
                })?;
            if v.is_empty() || v.len() > MAX_CID_BYTES {
                return Err(HybridError::DamagedEntry {
                    seq,
                    reason: "CID length out of range",
                });
            }
            out.push((seq, ContentId(v.to_vec())));
        }
        Ok(out)
    }

    /// Removes the entries `seqs` (the primary holds their versions) and flushes.
    pub fn remove(&self, seqs: &[u64]) -> Result<(), HybridError> {
        let mut batch = sled::Batch::default();
        for seq in seqs {
            batch.remove(&seq.to_be_bytes());
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    /// How many writes wait.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cids: Vec<ContentId> = (0u8..5).map(|i| ContentId(vec![1, i])).collect();
        {
            let q = ReplayQueue::open(dir.path()).unwrap();
            q.push(&cids[..3]).unwrap();
            q.push(&cids[3..]).unwrap();
            let first = q.peek(2).unwrap();
            q.remove(&[first[0].0]).unwrap();
        }
        let q = ReplayQueue::open(dir.path()).unwrap();
        let left: Vec<ContentId> = q.peek(10).unwrap().into_iter().map(|e| e.1).collect();
        assert_eq!(left, cids[1..].to_vec());
        assert_eq!(q.len(), 4);
    }
}
