//! A write transaction: reads see the transaction's own pending writes, and
//! everything is applied to the backend as one atomic batch at commit.

use crate::StoreError;
use crate::kv::{Backend, WriteBatch};

/// Pending writes over a backend. Writers are serialized by the engine, so the
/// backend does not change under a transaction.
pub(crate) struct Txn<'a> {
    backend: &'a dyn Backend,
    pending: WriteBatch,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(backend: &'a dyn Backend) -> Self {
        Txn {
            backend,
            pending: WriteBatch::new(),
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.pending.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.backend.get(key),
        }
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Number of pending writes.
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Applies every pending write atomically.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.backend.apply(self.pending)
    }
}
