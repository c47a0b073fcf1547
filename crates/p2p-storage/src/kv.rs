//! The key-value backends under the store: sled on disk, a `BTreeMap` in memory.
//!
//! The engine needs little from a backend: point reads, ordered range scans, and
//! atomic application of a batch of puts and deletes. Everything else (documents,
//! versions, indexes, the Merkle index) is built on top by the engine, so both
//! stores run the exact same logic.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::StoreError;

/// Puts (`Some`) and deletes (`None`) applied together, in key order.
pub type WriteBatch = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Key-value pairs in key order, as a backend scan yields them.
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a>;

/// An ordered key-value backend.
///
/// Promises: `apply` is atomic (all of the batch or none of it is visible, also
/// after a crash); `scan` yields keys in ascending byte order.
pub trait Backend: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Reads one key and lends its value to `f` (called at most once);
    /// false when the key is absent. Backends that hold values in memory
    /// lend them without copying (large blob pieces are served this way).
    fn get_with(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, StoreError> {
        Ok(self.get(key)?.map(|v| f(&v)).is_some())
    }

    /// Keys in `[start, end)` (or to the end when `end` is `None`), ascending.
    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_>;

    /// Applies a batch atomically.
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Makes every applied batch durable (as far as the backend can).
    fn flush(&self) -> Result<(), StoreError>;
}

/// The smallest key greater than every key that starts with `prefix`, if any.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An in-memory backend: a `BTreeMap` behind a mutex. Nothing survives a drop.
#[derive(Debug, Default, Clone)]
pub struct MemoryBackend {
    map: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // The map is only mutated by `apply`, which cannot panic half-way.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_> {
        let upper = match end {
            Some(end) => Bound::Excluded(end.to_vec()),
            None => Bound::Unbounded,
        };
        // Copy out the range so no lock is held while the caller iterates.
        let items: Vec<_> = self
            .lock()
            .range((Bound::Included(start.to_vec()), upper))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(items.into_iter())
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut map = self.lock();
        for (key, value) in batch {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The on-disk backend: one sled tree.
///
/// sled writes into in-memory buffers and persists them on `flush` (which
/// fsyncs) or on its background flush interval; see [`FlushPolicy`](crate::FlushPolicy)
/// for what the store promises on top of that.
#[derive(Debug, Clone)]
pub struct SledBackend {
    db: sled::Db,
    /// The acknowledged record counts kept beside the database (see
    /// [`crate::witness`]); every store opened with `SledStore::open` has one.
    witness: Option<Arc<crate::witness::Witness>>,
}

impl SledBackend {
    /// Opens (or creates) the sled database at `path`.
    ///
    /// `background_flush_ms` is sled's own flush interval (`None` disables it).
    /// A database held by another process is [`StoreError::Locked`], after a
    /// wait of up to [`SledBackend::LOCK_WAIT`]: sled releases its lock a moment
    /// after the last handle is dropped, so a reopen in the same process right
    /// after a close would otherwise fail.
    pub fn open(path: &Path, background_flush_ms: Option<u64>) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .flush_every_ms(background_flush_ms);
        let db =
            ecomesh_replication::queue::open_sled(&config, Self::LOCK_WAIT).map_err(|err| {
                if ecomesh_replication::queue::is_lock_error(&err) {
                    StoreError::Locked {
                        path: path.to_path_buf(),
                    }
                } else {
                    StoreError::Backend(err.to_string())
                }
            })?;
        Ok(SledBackend { db, witness: None })
    }

    /// This backend, counting its records into `witness` from now on.
    pub(crate) fn with_witness(mut self, witness: crate::witness::Witness) -> Self {
        self.witness = Some(Arc::new(witness));
        self
    }

    /// The record counts the witness keeps (`None` without one).
    pub(crate) fn witness_counts(&self) -> Option<crate::witness::Counts> {
        self.witness.as_ref().map(|w| *w.lock())
    }

    fn apply_raw(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.db.apply_batch(sled_batch).map_err(sled_err)
    }

    /// How long [`open`](Self::open) waits for a held lock before it reports
    /// [`StoreError::Locked`].
    pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
}

fn sled_err(err: sled::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }

    fn get_with(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, StoreError> {
        Ok(self.db.get(key).map_err(sled_err)?.map(|v| f(&v)).is_some())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_> {
        let iter = match end {
            Some(end) => self.db.range(start.to_vec()..end.to_vec()),
            None => self.db.range(start.to_vec()..),
        };
        Box::new(iter.map(|item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(sled_err)
        }))
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        match &self.witness {
            Some(w) => w.apply(
                batch,
                |k| self.db.contains_key(k).map_err(sled_err),
                |b| self.apply_raw(b),
            ),
            None => self.apply_raw(batch),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        let flush = || self.db.flush().map(|_| ()).map_err(sled_err);
        match &self.witness {
            Some(w) => w.acknowledge(flush),
            None => flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(backend: &dyn Backend) {
        let mut batch = WriteBatch::new();
        batch.insert(b"a1".to_vec(), Some(b"x".to_vec()));
        batch.insert(b"a2".to_vec(), Some(b"y".to_vec()));
        batch.insert(b"b1".to_vec(), Some(b"z".to_vec()));
        backend.apply(batch).unwrap();
        assert_eq!(backend.get(b"a2").unwrap(), Some(b"y".to_vec()));
        let end = prefix_end(b"a").unwrap();
        let keys: Vec<_> = backend
            .scan(b"a", Some(&end))
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(keys, vec![b"a1".to_vec(), b"a2".to_vec()]);
        let mut batch = WriteBatch::new();
        batch.insert(b"a1".to_vec(), None);
        backend.apply(batch).unwrap();
        assert_eq!(backend.get(b"a1").unwrap(), None);
        assert_eq!(backend.scan(b"", None).count(), 2);
        backend.flush().unwrap();
    }

    #[test]
    fn memory_backend() {
        exercise(&MemoryBackend::new());
    }

    #[test]
    fn sled_backend_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path(), None).unwrap();
        exercise(&backend);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
