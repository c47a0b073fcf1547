//! What an on-disk store acknowledged, kept in a small file beside its
//! records, so that an open can tell a damaged database from a smaller one.
//!
//! sled 0.34 checks each log message with a CRC at recovery and, finding one
//! that does not match, treats the rest of the segment as a torn tail: the
//! database opens without an error and without the records written after the
//! damage (the issue 21 reproduction: 25 of 50 documents, no word). The
//! witness is the store's own count of what it acknowledged: the number of
//! version nodes (`V`), document state records (`S`) and blob records (`b`),
//! rewritten after every backend flush (and before a batch that removes any,
//! so a count never claims more than the disk holds). An open that reads back
//! fewer records than the witness counts knows the database lost some.
//!
//! The file is written in place with one `pwrite` of [`FILE_LEN`] bytes and
//! not fsynced: like the store itself (see [`FlushPolicy`](crate::FlushPolicy)),
//! it is durable against a killed process, not against power loss. A file
//! that does not decode (bad magic, length or checksum) is reported and the
//! open falls back to reading every record, without counts to compare with.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::StoreError;
use crate::kv::WriteBatch;

/// The witness file's name inside the store's directory.
pub const FILE_NAME: &str = "ecomesh-acknowledged";

const MAGIC: &[u8; 8] = b"EMACK\x00\x00\x01";
/// The witness file's exact length: magic, three big-endian `u64` counts, an
/// 8-byte truncated SHA-256 of what precedes it.
pub const FILE_LEN: usize = 8 + 3 * 8 + 8;

/// The key tags whose records the witness counts, in [`Counts`] order.
const TAGS: [u8; 3] = [b'V', b'S', crate::blobs::NAMESPACE];

/// Record counts of a store: what it acknowledged (the witness) or what a
/// scan read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Version nodes (`V` records).
    pub versions: u64,
    /// Documents with a state record, live or deleted (`S` records).
    pub documents: u64,
    /// Blob records: pieces, manifests, pins, references, holders (`b` records).
    pub blob_records: u64,
}

impl Counts {
    fn slot(&mut self, tag: u8) -> Option<&mut u64> {
        match tag {
            b'V' => Some(&mut self.versions),
            b'S' => Some(&mut self.documents),
            t if t == TAGS[2] => Some(&mut self.blob_records),
            _ => None,
        }
    }

    /// Counts one record under key `key` (other tags are ignored).
    pub(crate) fn count_key(&mut self, key: &[u8]) {
        if let Some(n) = key.first().and_then(|&t| self.slot(t)) {
            *n += 1;
        }
    }

    /// True when every count of `self` is at least the one of `other`.
    pub fn covers(&self, other: &Counts) -> bool {
        self.versions >= other.versions
            && self.documents >= other.documents
            && self.blob_records >= other.blob_records
    }

    /// Whether `key` is a record the witness counts.
    pub(crate) fn counted(key: &[u8]) -> bool {
        key.first().is_some_and(|t| TAGS.contains(t))
    }

    pub(crate) fn encode(&self) -> [u8; FILE_LEN] {
        let mut out = [0_u8; FILE_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.versions.to_be_bytes());
        out[16..24].copy_from_slice(&self.documents.to_be_bytes());
        out[24..32].copy_from_slice(&self.blob_records.to_be_bytes());
        let sum = Sha256::digest(&out[..32]);
        out[32..].copy_from_slice(&sum[..8]);
        out
    }

    /// Decodes a witness file's bytes; `None` unless they are exactly one
    /// well-formed record.
    pub fn decode(bytes: &[u8]) -> Option<Counts> {
        if bytes.len() != FILE_LEN || &bytes[..8] != MAGIC {
            return None;
        }
        let sum = Sha256::digest(&bytes[..32]);
        if bytes[32..] != sum[..8] {
            return None;
        }
        let n = |i: usize| {
            <[u8; 8]>::try_from(&bytes[i..i + 8])
                .map(u64::from_be_bytes)
                .unwrap_or(0)
        };
        Some(Counts {
            versions: n(8),
            documents: n(16),
            blob_records: n(24),
        })
    }
}

/// What reading a store directory's witness found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acknowledged {
    /// No witness file: a new store, or one written before witnesses existed.
    None,
    /// The counts the store last acknowledged.
    Counts(Counts),
    /// A witness file that does not decode (it is damaged too).
    Unreadable(String),
}

/// Reads the witness in store directory `dir`.
pub fn read(dir: &Path) -> Acknowledged {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => match Counts::decode(&bytes) {
            Some(c) => Acknowledged::Counts(c),
            None => Acknowledged::Unreadable(format!(
                "{} is {} bytes and does not decode",
                path.display(),
                bytes.len()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Acknowledged::None,
        Err(e) => Acknowledged::Unreadable(format!("{}: {e}", path.display())),
    }
}

/// The live witness of an open sled store: the counts of what the backend
/// holds, and the file they are written to.
#[derive(Debug)]
pub(crate) struct Witness {
    path: PathBuf,
    file: File,
    state: Mutex<Counts>,
}

impl Witness {
    /// A witness over `dir` starting from `counts` (what a scan just read),
    /// written at once.
    pub(crate) fn create(dir: &Path, counts: Counts) -> Result<Witness, StoreError> {
        let path = dir.join(FILE_NAME);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let w = Witness {
            path,
            file,
            state: Mutex::new(counts),
        };
        w.write(&counts)?;
        file_len(&w.file, &w.path)?;
        Ok(w)
    }

    /// The lock that serializes batches with their counting.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, counts: &Counts) -> Result<(), StoreError> {
        self.file
            .write_all_at(&counts.encode(), 0)
            .map_err(|e| StoreError::Backend(format!("writing {}: {e}", self.path.display())))
    }

    /// Applies `batch` through `apply`, keeping the counts: a batch that
    /// removes counted records lowers the file first, so it never claims more
    /// than the disk may hold.
    pub(crate) fn apply(
        &self,
        batch: WriteBatch,
        exists: impl Fn(&[u8]) -> Result<bool, StoreError>,
        apply: impl FnOnce(WriteBatch) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut counts = self.lock();
        let mut added = Counts::default();
        let mut removed = Counts::default();
        for (key, value) in &batch {
            if !Counts::counted(key) {
                continue;
            }
            match (exists(key)?, value.is_some()) {
                (false, true) => added.count_key(key),
                (true, false) => removed.count_key(key),
                _ => {}
            }
        }
        let lowered = Counts {
            versions: counts.versions.saturating_sub(removed.versions),
            documents: counts.documents.saturating_sub(removed.documents),
            blob_records: counts.blob_records.saturating_sub(removed.blob_records),
        };
        if lowered != *counts {
            self.write(&lowered)?;
        }
        apply(batch)?;
        *counts = Counts {
            versions: lowered.versions + added.versions,
            documents: lowered.documents + added.documents,
            blob_records: lowered.blob_records + added.blob_records,
        };
        Ok(())
    }

    /// Runs `flush` and then records as acknowledged the counts from before
    /// it (each lowered to the current count, should a removal have run
    /// meanwhile): what a batch adds during the flush is acknowledged only by
    /// the next one.
    pub(crate) fn acknowledge(
        &self,
        flush: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let before = *self.lock();
        flush()?;
        let counts = self.lock();
        let acked = Counts {
            versions: before.versions.min(counts.versions),
            documents: before.documents.min(counts.documents),
            blob_records: before.blob_records.min(counts.blob_records),
        };
        self.write(&acked)
    }
}

fn file_len(file: &File, path: &Path) -> Result<(), StoreError> {
    file.set_len(FILE_LEN as u64)
        .map_err(|e| StoreError::Backend(format!("sizing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_and_damage_is_refused() {
        let c = Counts {
            versions: 50,
            documents: 49,
            blob_records: 7,
        };
        let bytes = c.encode();
        assert_eq!(Counts::decode(&bytes), Some(c));
        for i in 0..FILE_LEN {
            let mut b = bytes;
            b[i] ^= 0x20;
            assert_eq!(Counts::decode(&b), None, "byte {i} flipped");
        }
        assert_eq!(Counts::decode(&bytes[..FILE_LEN - 1]), None);
    }

    #[test]
    fn a_removing_batch_lowers_the_file_before_it_applies() {
        let dir = tempfile::tempdir().unwrap();
        let start = Counts {
            versions: 3,
            documents: 2,
            blob_records: 0,
        };
        let w = Witness::create(dir.path(), start).unwrap();
        let mut batch = WriteBatch::new();
        batch.insert(b"Vgone".to_vec(), None);
        batch.insert(b"Vnew1".to_vec(), Some(vec![1]));
        batch.insert(b"Vnew2".to_vec(), Some(vec![1]));
        batch.insert(b"Sdoc".to_vec(), Some(vec![1]));
        batch.insert(b"Dx".to_vec(), Some(vec![1]));
        let seen = std::cell::Cell::new(None);
        w.apply(
            batch,
            |k| Ok(k == b"Vgone" || k == b"Sdoc"),
            |_| {
                seen.set(Some(read(dir.path())));
                Ok(())
            },
        )
        .unwrap();
        let lowered = Counts {
            versions: 2,
            ..start
        };
        assert_eq!(seen.take(), Some(Acknowledged::Counts(lowered)));
        // Additions reach the file only when acknowledged (after a flush).
        assert_eq!(read(dir.path()), Acknowledged::Counts(lowered));
        w.acknowledge(|| Ok(())).unwrap();
        let now = Counts {
            versions: 4,
            ..start
        };
        assert_eq!(read(dir.path()), Acknowledged::Counts(now));
        std::fs::write(dir.path().join(FILE_NAME), b"short").unwrap();
        assert!(matches!(read(dir.path()), Acknowledged::Unreadable(_)));
    }
}
