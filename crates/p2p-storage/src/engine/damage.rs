//! Opening an on-disk store that may be damaged (issue 21, item 7).
//!
//! [`SledStore::open_checked`] compares what the database reads back with
//! what the store acknowledged (the [`witness`](crate::witness) counts). A
//! database that does not open, whose records do not all read, whose store
//! records do not decode, or that holds fewer versions, documents or blob
//! records than it acknowledged is *damaged*. The open then:
//!
//! 1. salvages what still reads: every version node (kept only if its bytes
//!    hash to its CID and its signature verifies), every blob record, the
//!    clock bound, and the names and heads of the readable state records;
//! 2. rebuilds a store beside the damaged one (`<dir>.rebuilding`) by merging
//!    the salvaged versions parents first, through the same path a peer's
//!    versions take: a document whose history has a hole keeps the part
//!    before it, and every derived record (state, fields, indexes, Merkle
//!    index) comes from the versions alone, so the Merkle index claims only
//!    what the store holds and anti-entropy asks peers for the rest;
//! 3. moves the damaged directory aside to `<dir>.damaged-<unix ms>` (nothing
//!    is deleted) and puts the rebuilt one in its place; a rebuild that was
//!    interrupted is redone, and one that finished before the swap is swapped
//!    in at the next open;
//! 4. returns [`StoreHealth::Recovered`] with what was lost, and logs it at
//!    error level.

use std::path::{Path, PathBuf};

use super::*;
use crate::witness::{self, Acknowledged, Counts, Witness};

/// How many damaged documents a report names (the count is always whole).
pub const MAX_NAMED_DAMAGED: usize = 1000;

/// The file a finished rebuild leaves in its directory before the swap.
const REBUILT_MARKER: &str = "ecomesh-rebuilt";

/// What [`SledStore::open_checked`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreHealth {
    /// Everything the store acknowledged reads back.
    Healthy,
    /// The database was damaged and has been rebuilt from what still read.
    Recovered(Box<StoreDamage>),
}

/// What a damaged store lost, and where its files went.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreDamage {
    /// What gave the damage away.
    pub reason: String,
    /// The counts the store last acknowledged (`None`: its witness was
    /// missing or damaged too).
    pub acknowledged: Option<Counts>,
    /// The counts the rebuilt store holds.
    pub recovered: Counts,
    /// Versions acknowledged and not recovered (when the acknowledged counts
    /// are unknown: versions that were read but could not be merged).
    pub lost_versions: u64,
    /// Documents acknowledged and not recovered at all.
    pub lost_documents: u64,
    /// Documents known to be missing or behind what was acknowledged
    /// (collection, id), at most [`MAX_NAMED_DAMAGED`] of them: their state
    /// record was readable and the rebuilt store lacks it or has older
    /// heads, or some of their versions could not be merged.
    pub damaged_documents: Vec<(String, String)>,
    /// How many documents are known to be damaged (the named ones and those
    /// past the naming bound).
    pub damaged_count: u64,
    /// Where the damaged directory was moved.
    pub moved_to: PathBuf,
}

impl SledStore {
    /// Opens the store in directory `path` like [`SledStore::open`], and
    /// checks it: a damaged database is moved aside and rebuilt from what
    /// still reads (see the module documentation of `engine/damage.rs` in
    /// the architecture notes), and the answer says what was lost.
    ///
    /// Errors: [`StoreError::Locked`] and [`StoreError::UnsupportedFormat`]
    /// as [`open`](SledStore::open) (nothing is moved); a rebuild that fails
    /// for want of disk space or permissions is [`StoreError::Backend`].
    pub fn open_checked(
        path: &Path,
        identity: Identity,
        config: StoreConfig,
    ) -> Result<(SledStore, StoreHealth), StoreError> {
        finish_interrupted_swap(path)?;
        let acknowledged = witness::read(path);
        let reason = match open_counted(path, identity.clone(), config.clone(), &acknowledged) {
            Ok(store) => return Ok((store, StoreHealth::Healthy)),
            Err(Checked::Fatal(e)) => return Err(e),
            Err(Checked::Damaged(reason)) => reason,
        };
        tracing::error!(store = %path.display(), %reason,
            "the store's database is damaged: rebuilding it from what still reads");
        let salvage = Salvage::read(path, &config);
        let rebuilding = sibling(path, "rebuilding");
        remove_dir(&rebuilding)?;
        let outcome = rebuild(&rebuilding, &identity, &config, &salvage)?;
        let moved_to = sibling(path, &format!("damaged-{}", SystemClock.now_ms()));
        if path.exists() {
            std::fs::rename(path, &moved_to).map_err(|e| io_err("moving aside", path, e))?;
        }
        std::fs::rename(&rebuilding, path).map_err(|e| io_err("moving into place", path, e))?;
        let _ = std::fs::remove_file(path.join(REBUILT_MARKER));
        let acked = match acknowledged {
            Acknowledged::Counts(c) => Some(c),
            Acknowledged::None | Acknowledged::Unreadable(_) => None,
        };
        let damage = report(reason, acked, &salvage, outcome, moved_to);
        tracing::error!(
            store = %path.display(),
            moved_to = %damage.moved_to.display(),
            lost_versions = damage.lost_versions,
            lost_documents = damage.lost_documents,
            damaged_documents = damage.damaged_count,
            recovered_versions = damage.recovered.versions,
            recovered_documents = damage.recovered.documents,
            "store rebuilt after damage; what peers hold comes back through anti-entropy"
        );
        for (c, i) in damage.damaged_documents.iter().take(20) {
            tracing::error!(collection = %c, id = %i, "document lost or behind after the rebuild");
        }
        let store = match open_counted(path, identity, config, &Acknowledged::None) {
            Ok(s) => s,
            Err(Checked::Fatal(e)) => return Err(e),
            Err(Checked::Damaged(why)) => {
                return Err(StoreError::Backend(format!(
                    "the rebuilt store does not open cleanly: {why}"
                )));
            }
        };
        Ok((store, StoreHealth::Recovered(Box::new(damage))))
    }
}

impl SledStore {
    /// How many versions, documents and blob records the store holds now
    /// (kept as it writes; `None` for a store opened without its witness).
    pub fn record_counts(&self) -> Option<Counts> {
        self.backend.witness_counts()
    }
}

enum Checked {
    /// Not damage: an error the caller gets as is.
    Fatal(StoreError),
    /// Damage, and what showed it.
    Damaged(String),
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// `<dir>.<suffix>` beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", dir, e)),
        _ => Ok(()),
    }
}

/// A rebuild that finished (its marker written) but was not swapped in
/// before a crash is swapped in now; an unfinished one is left for the
/// rebuild to remove.
fn finish_interrupted_swap(path: &Path) -> Result<(), StoreError> {
    let rebuilding = sibling(path, "rebuilding");
    if !path.exists() && rebuilding.join(REBUILT_MARKER).exists() {
        tracing::warn!(store = %path.display(), "finishing a store rebuild interrupted by a crash");
        std::fs::rename(&rebuilding, path).map_err(|e| io_err("moving into place", path, e))?;
        let _ = std::fs::remove_file(path.join(REBUILT_MARKER));
    }
    Ok(())
}

/// Reads every counted record of `backend`; an unreadable one is an error.
fn count_records(backend: &SledBackend) -> Result<Counts, StoreError> {
    let mut counts = Counts::default();
    for item in backend.scan(&[], None) {
        counts.count_key(&item?.0);
    }
    Ok(counts)
}

/// Opens, counts, compares with `acknowledged` and opens the store with its
/// witness attached.
fn open_counted(
    path: &Path,
    identity: Identity,
    config: StoreConfig,
    acknowledged: &Acknowledged,
) -> Result<SledStore, Checked> {
    let backend = match SledBackend::open(path, background_flush(&config)) {
        Ok(b) => b,
        Err(e @ StoreError::Locked { .. }) => return Err(Checked::Fatal(e)),
        Err(e) => return Err(Checked::Damaged(format!("the database does not open: {e}"))),
    };
    let counts = count_records(&backend)
        .map_err(|e| Checked::Damaged(format!("a record does not read: {e}")))?;
    match acknowledged {
        Acknowledged::Counts(acked) if !counts.covers(acked) => {
            return Err(Checked::Damaged(format!(
                "it holds {} versions, {} documents and {} blob records of the {}, {} and {} it acknowledged",
                counts.versions,
                counts.documents,
                counts.blob_records,
                acked.versions,
                acked.documents,
                acked.blob_records
            )));
        }
        Acknowledged::Unreadable(why) => {
            return Err(Checked::Damaged(format!(
                "its record of what it acknowledged is damaged ({why})"
            )));
        }
        Acknowledged::None | Acknowledged::Counts(_) => {}
    }
    let witness = Witness::create(path, counts).map_err(Checked::Fatal)?;
    match Store::with_backend(backend.with_witness(witness), identity, config) {
        Ok(store) => Ok(store),
        Err(e @ (StoreError::Locked { .. } | StoreError::UnsupportedFormat { found: 1.., .. })) => {
            Err(Checked::Fatal(e))
        }
        Err(e) => Err(Checked::Damaged(format!("the store does not open: {e}"))),
    }
}

fn background_flush(config: &StoreConfig) -> Option<u64> {
    match config.flush {
        FlushPolicy::Interval(ms) => Some(ms.max(1)),
        FlushPolicy::EveryWrite | FlushPolicy::Manual => None,
    }
}

/// What still reads in a damaged database.
#[derive(Default)]
struct Salvage {
    /// Version bytes by CID (as stored; checked when merged).
    versions: Vec<(ContentId, Vec<u8>)>,
    /// Blob records, as stored (pieces are checked against their id on read).
    blobs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The persisted clock bound.
    hlc: Option<Vec<u8>>,
    /// Readable state records: (collection, id) and heads.
    states: BTreeMap<(String, String), Vec<ContentId>>,
    /// Records that could not be read or decoded.
    unreadable: u64,
}

impl Salvage {
    /// Reads what it can of the database at `path` (nothing when it does not open).
    fn read(path: &Path, config: &StoreConfig) -> Salvage {
        let mut s = Salvage::default();
        let backend = match SledBackend::open(path, background_flush(config)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(store = %path.display(), error = %e,
                    "the damaged database does not open: nothing to salvage");
                return s;
            }
        };
        // Each kind of record is scanned on its own, so that an unreadable
        // stretch of one kind does not cost the others.
        for tag in [VERSION, b'S', crate::blobs::NAMESPACE, META] {
            let start = [tag];
            let end = prefix_end(&start);
            for item in backend.scan(&start, end.as_deref()) {
                let Ok((k, v)) = item else {
                    s.unreadable += 1;
                    break;
                };
                s.take(tag, k, v);
            }
        }
        s
    }

    fn take(&mut self, tag: u8, k: Vec<u8>, v: Vec<u8>) {
        match tag {
            VERSION => self.versions.push((ContentId(k[1..].to_vec()), v)),
            b'S' => match parse_state_key(&k)
                .and_then(|(c, i)| decode_state(&c, &i, &v).map(|r| (c, i, r)))
            {
                Ok((c, i, r)) => {
                    self.states.insert((c, i), r.heads);
                }
                Err(_) => self.unreadable += 1,
            },
            META if k == keys::key(META, &[META_HLC]) => self.hlc = Some(v),
            META => {}
            _ => self.blobs.push((k, v)),
        }
    }
}

/// What merging the salvaged versions gave.
struct Rebuilt {
    counts: Counts,
    /// Documents with versions that could not be merged.
    unmerged_docs: BTreeSet<(String, String)>,
    /// Versions that could not be merged (a parent missing, or invalid).
    unmerged: u64,
    /// The rebuilt heads of each salvaged state's document (empty: absent).
    heads: BTreeMap<(String, String), Vec<ContentId>>,
}

/// A salvaged version waiting to be merged: its timestamp, bytes and document.
type Salvaged<'a> = (HlcTimestamp, &'a [u8], Option<(String, String)>);

/// Builds a store in `dir` from `salvage`, leaving [`REBUILT_MARKER`] in it
/// when complete and flushed.
fn rebuild(
    dir: &Path,
    identity: &Identity,
    config: &StoreConfig,
    salvage: &Salvage,
) -> Result<Rebuilt, StoreError> {
    let mut cfg = config.clone();
    cfg.flush = FlushPolicy::Manual;
    let backend = SledBackend::open(dir, None)?;
    let store = Store::with_backend(backend, identity.clone(), cfg)?;
    // Parents first: a version's timestamp is above its parents' (the
    // clock is stamped after them), and passes catch what is out of order.
    let mut pending: Vec<Salvaged<'_>> = Vec::new();
    let mut unmerged = 0_u64;
    for (cid, bytes) in &salvage.versions {
        match ecomesh_wire::decode::<VersionNode>(bytes) {
            Ok(node) if codec::cid_of_bytes(bytes) == *cid => {
                pending.push((node.timestamp, bytes, Some((node.collection, node.id))));
            }
            _ => unmerged += 1,
        }
    }
    pending.sort_by(|a, b| {
        (a.0.physical_ms, a.0.logical, a.0.peer.as_bytes()).cmp(&(
            b.0.physical_ms,
            b.0.logical,
            b.0.peer.as_bytes(),
        ))
    });
    let mut unmerged_docs = BTreeSet::new();
    loop {
        let before = pending.len();
        let mut waiting = Vec::new();
        for item in pending {
            match store.apply_remote(item.1) {
                Ok(_) => {}
                Err(StoreError::MissingParents(_)) => waiting.push(item),
                Err(e) => {
                    tracing::warn!(error = %e, "a salvaged version does not merge; dropped");
                    unmerged += 1;
                    unmerged_docs.extend(item.2);
                }
            }
        }
        pending = waiting;
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    unmerged += pending.len() as u64;
    unmerged_docs.extend(pending.into_iter().filter_map(|p| p.2));
    let mut batch = crate::kv::WriteBatch::new();
    for (k, v) in &salvage.blobs {
        batch.insert(k.clone(), Some(v.clone()));
    }
    if let Some(hlc) = &salvage.hlc {
        batch.insert(keys::key(META, &[META_HLC]), Some(hlc.clone()));
    }
    store.backend().apply(batch)?;
    store.flush()?;
    let mut heads = BTreeMap::new();
    let txn = store.txn();
    for (c, i) in salvage.states.keys() {
        let record = store.read_state(&txn, c, i)?;
        heads.insert((c.clone(), i.clone()), record.heads);
    }
    drop(txn);
    let counts = count_records(store.backend())?;
    drop(store);
    std::fs::write(dir.join(REBUILT_MARKER), b"").map_err(|e| io_err("marking", dir, e))?;
    Ok(Rebuilt {
        counts,
        unmerged_docs,
        unmerged,
        heads,
    })
}

fn report(
    reason: String,
    acknowledged: Option<Counts>,
    salvage: &Salvage,
    rebuilt: Rebuilt,
    moved_to: PathBuf,
) -> StoreDamage {
    let mut damaged: BTreeSet<(String, String)> = rebuilt.unmerged_docs;
    for (doc, heads) in &salvage.states {
        if rebuilt.heads.get(doc) != Some(heads) {
            damaged.insert(doc.clone());
        }
    }
    let recovered = rebuilt.counts;
    let (lost_versions, lost_documents) = match acknowledged {
        Some(a) => (
            a.versions.saturating_sub(recovered.versions),
            a.documents.saturating_sub(recovered.documents),
        ),
        None => (
            rebuilt.unmerged + salvage.unreadable,
            salvage.states.len() as u64
                - salvage.states.len().min(recovered.documents as usize) as u64,
        ),
    };
    StoreDamage {
        reason,
        acknowledged,
        recovered,
        lost_versions,
        lost_documents,
        damaged_count: damaged.len() as u64,
        damaged_documents: damaged.into_iter().take(MAX_NAMED_DAMAGED).collect(),
        moved_to,
    }
}
