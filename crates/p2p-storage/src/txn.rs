//! A write transaction: reads see the transaction's own pending writes, and
//! everything is applied to the backend as one atomic batch at commit.
//!
//! Derived records (the Merkle index nodes and collection roots) may be kept
//! in a [`Deferred`] overlay instead of the backend: reads through a
//! transaction see the overlay over the backend, and
//! [`commit_deferring`](Txn::commit_deferring) moves a transaction's derived
//! writes into the overlay.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::StoreError;
use crate::kv::{Backend, WriteBatch};

/// Writes of derived records made in memory and not yet in the backend: the
/// latest value of each key (`None` deletes it). The store persists them at
/// [`flush`](crate::Store::flush), when they pass a size bound, and when it is
/// dropped; a crash before that leaves the backend's derived records stale,
/// which the persisted stale marker tells the next open (see the engine).
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    pub(crate) writes: WriteBatch,
    /// True once the backend holds the stale marker for these writes.
    pub(crate) marked: bool,
}

fn lock(m: &Mutex<Deferred>) -> std::sync::MutexGuard<'_, Deferred> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pending writes over a backend. Writers are serialized by the engine, so the
/// backend does not change under a transaction.
pub(crate) struct Txn<'a> {
    backend: &'a dyn Backend,
    overlay: Option<&'a Mutex<Deferred>>,
    pending: WriteBatch,
}

impl<'a> Txn<'a> {
    /// A transaction reading the backend alone.
    pub(crate) fn new(backend: &'a dyn Backend) -> Self {
        Txn {
            backend,
            overlay: None,
            pending: WriteBatch::new(),
        }
    }

    /// A transaction reading `overlay` over the backend.
    pub(crate) fn with_overlay(backend: &'a dyn Backend, overlay: &'a Mutex<Deferred>) -> Self {
        Txn {
            backend,
            overlay: Some(overlay),
            pending: WriteBatch::new(),
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.pending.get(key) {
            return Ok(value.clone());
        }
        if let Some(overlay) = self.overlay
            && let Some(value) = lock(overlay).writes.get(key)
        {
            return Ok(value.clone());
        }
        self.backend.get(key)
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

    /// Applies the pending writes atomically, except those whose key
    /// `derived` accepts: these go into the transaction's overlay once the
    /// rest committed. When the overlay held no unpersisted writes yet, the
    /// batch also puts `marker` (key, value), so that a crash before the
    /// overlay is persisted is seen at the next open. Returns the number of
    /// writes the overlay then holds.
    pub(crate) fn commit_deferring(
        mut self,
        derived: impl Fn(&[u8]) -> bool,
        marker: (Vec<u8>, Vec<u8>),
    ) -> Result<usize, StoreError> {
        let Some(overlay) = self.overlay else {
            self.commit()?;
            return Ok(0);
        };
        let mut deferred = Vec::new();
        let keys: Vec<Vec<u8>> = self
            .pending
            .keys()
            .filter(|k| derived(k))
            .cloned()
            .collect();
        for k in keys {
            if let Some(v) = self.pending.remove(&k) {
                deferred.push((k, v));
            }
        }
        let mut guard = lock(overlay);
        let mark = !deferred.is_empty() && !guard.marked;
        if mark {
            self.pending.insert(marker.0, Some(marker.1));
        }
        if !self.pending.is_empty() {
            self.backend.apply(self.pending)?;
        }
        guard.marked |= mark;
        // One insert per key: `BTreeMap::append` rebuilds the whole map.
        for (k, v) in deferred {
            guard.writes.insert(k, v);
        }
        Ok(guard.writes.len())
    }

    /// Moves the overlay's writes into the backend in one atomic batch that
    /// also deletes `marker`, and empties the overlay. Call it under the
    /// writer lock.
    pub(crate) fn persist_overlay(
        backend: &dyn Backend,
        overlay: &Mutex<Deferred>,
        marker: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut guard = lock(overlay);
        if guard.writes.is_empty() && !guard.marked {
            return Ok(());
        }
        let writes = std::mem::take(&mut guard.writes);
        let mut batch = writes.clone();
        batch.insert(marker, None);
        if let Err(e) = backend.apply(batch) {
            guard.writes = writes;
            return Err(e);
        }
        guard.marked = false;
        Ok(())
    }
}

/// A snapshot of the overlay's writes with keys in `[start, end)`, for merging
/// into a backend scan.
pub(crate) fn overlay_range(
    overlay: &Mutex<Deferred>,
    start: &[u8],
    end: &[u8],
) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    lock(overlay)
        .writes
        .range(start.to_vec()..end.to_vec())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
