//! Where a peer keeps the pieces it serves.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ReplicationError;
use crate::blob::BlobId;

use super::Result;

/// Content-addressed storage of pieces (chunks and shards) by [`BlobId`].
///
/// `put` does not hash: callers pass bytes they verified ([`super::ShardServer`]
/// refuses a push whose data does not match its id before calling it).
pub trait ShardStore {
    /// Stores `data` under `id`; storing an id that is already held is a no-op.
    fn put(&mut self, id: &BlobId, data: &[u8]) -> Result<()>;
    /// The bytes under `id`, or `None` when not held.
    fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>>;
    /// Whether `id` is held (without reading it).
    fn has(&self, id: &BlobId) -> Result<bool>;
}

/// An in-memory [`ShardStore`] (tests, caches).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    pieces: BTreeMap<BlobId, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// How many pieces are held.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Forgets a piece; true when it was held.
    pub fn remove(&mut self, id: &BlobId) -> bool {
        self.pieces.remove(id).is_some()
    }
}

impl ShardStore for MemoryStore {
    fn put(&mut self, id: &BlobId, data: &[u8]) -> Result<()> {
        self.pieces.entry(*id).or_insert_with(|| data.to_vec());
        Ok(())
    }
    fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>> {
        Ok(self.pieces.get(id).cloned())
    }
    fn has(&self, id: &BlobId) -> Result<bool> {
        Ok(self.pieces.contains_key(id))
    }
}

/// A [`ShardStore`] in a directory: one file per piece at
/// `<dir>/<first 2 hex digits>/<64 hex digits>`.
///
/// Writes are atomic (a temporary file in the same directory, synced, then
/// renamed), so a crash leaves either the whole piece or none. Reads are
/// bounded by `max_piece` and verified: a file whose bytes no longer hash to
/// its name is deleted and reported as [`ReplicationError::HashMismatch`]
/// (`peer: None`), so a corrupt piece is never served and `has` stops
/// claiming it.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    max_piece: u64,
}

/// Distinguishes temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn storage(what: &str, path: &Path, e: std::io::Error) -> ReplicationError {
    ReplicationError::Storage(format!("{what} {}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

impl DirStore {
    /// Opens (creating it if needed) a store in `dir` that refuses to read
    /// pieces larger than `max_piece` bytes.
    pub fn open(dir: impl Into<PathBuf>, max_piece: u64) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| storage("cannot create", &dir, e))?;
        Ok(DirStore { dir, max_piece })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `id`.
    pub fn path_of(&self, id: &BlobId) -> PathBuf {
        let name = hex(id.as_bytes());
        self.dir.join(&name[..2]).join(name)
    }
}

impl ShardStore for DirStore {
    fn put(&mut self, id: &BlobId, data: &[u8]) -> Result<()> {
        let path = self.path_of(id);
        if path.is_file() {
            return Ok(());
        }
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).map_err(|e| storage("cannot create", parent, e))?;
        let tmp = parent.join(format!(
            ".tmp-{}-{}-{}",
            hex(&id.as_bytes()[..8]),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            // Make the rename durable; not every platform can sync a directory.
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            storage("cannot write", &path, e)
        })
    }

    fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(id);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(storage("cannot open", &path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| storage("cannot stat", &path, e))?
            .len();
        if len > self.max_piece {
            return Err(ReplicationError::TooLarge {
                what: "stored piece",
                size: usize::try_from(len).unwrap_or(usize::MAX),
                max: usize::try_from(self.max_piece).unwrap_or(usize::MAX),
            });
        }
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // The file may grow after the stat: read one byte past the bound at most.
        file.take(self.max_piece.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| storage("cannot read", &path, e))?;
        if let Err(e) = id.verify(&data, None) {
            tracing::warn!(path = %path.display(), "stored piece does not match its id; deleting it");
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(Some(data))
    }

    fn has(&self, id: &BlobId) -> Result<bool> {
        Ok(self.path_of(id).is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_store_round_trips_and_drops_corrupt_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = DirStore::open(tmp.path().join("pieces"), 1000).unwrap();
        let data = b"some piece".to_vec();
        let id = BlobId::of(&data);
        assert!(!store.has(&id).unwrap());
        assert_eq!(store.get(&id).unwrap(), None);
        store.put(&id, &data).unwrap();
        store.put(&id, &data).unwrap();
        assert!(store.has(&id).unwrap());
        assert_eq!(store.get(&id).unwrap(), Some(data.clone()));
        // Reopening finds it; no temporary files are left behind.
        let again = DirStore::open(tmp.path().join("pieces"), 1000).unwrap();
        assert_eq!(again.get(&id).unwrap(), Some(data));
        let dir = store.path_of(&id).parent().unwrap().to_owned();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

        fs::write(store.path_of(&id), b"bit rot").unwrap();
        assert!(matches!(
            store.get(&id),
            Err(ReplicationError::HashMismatch { peer: None, .. })
        ));
        assert!(!store.has(&id).unwrap());

        let big = vec![0_u8; 1001];
        let big_id = BlobId::of(&big);
        store.put(&big_id, &big).unwrap();
        assert!(matches!(
            store.get(&big_id),
            Err(ReplicationError::TooLarge { .. })
        ));
    }
}
