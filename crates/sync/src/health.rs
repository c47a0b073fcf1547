//! Damaged storage (issue 21, item 7): what the node's databases lost at
//! open, and how much of it peers have given back since.
//!
//! - The store (documents, texts and blobs: `store/`) is opened with
//!   [`SledStore::open_checked`]: damage is detected against the counts it
//!   acknowledged, the damaged directory moved aside and the store rebuilt.
//! - The stream (`stream/`) and the sync queue (`queue/`): a database that
//!   does not open or whose records do not decode is moved aside
//!   (`<dir>.damaged-<unix ms>`) and started empty. The stream's head is also
//!   recorded after every pass in `stream.acknowledged`; a stream that opens
//!   shorter than that lost its last positions, which is reported.
//! - When the store lost versions, the stream (which positioned every version
//!   written or merged) names them by CID, and the sync queue names the
//!   document of each one not yet pushed; [`Node::storage_health`] counts
//!   them until anti-entropy brought them back.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ecomesh_p2p_storage::{SledStore, StoreHealth};
use ecomesh_replication::ReplicationError;
use ecomesh_replication::queue::{SyncItem, SyncQueue};
use ecomesh_replication::stream::DurableStream;
use ecomesh_types::ContentId;

use crate::clock::now_ms;
use crate::layout::DataLayout;
use crate::node::Node;

/// How many missing versions [`StorageHealth::missing`] names.
pub const MAX_NAMED_MISSING: usize = 100;

/// The state of the node's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageState {
    /// Nothing was damaged at the last start.
    Healthy,
    /// A database was damaged and something acknowledged is still missing:
    /// anti-entropy asks connected peers for it.
    Refetching,
    /// A database was damaged and everything known to be lost is back.
    Recovered,
}

impl StorageState {
    /// `healthy`, `refetching` or `recovered`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageState::Healthy => "healthy",
            StorageState::Refetching => "refetching",
            StorageState::Recovered => "recovered",
        }
    }
}

/// One database found damaged at start.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DamagedDatabase {
    /// `store`, `stream` or `queue`.
    pub database: String,
    /// What gave the damage away.
    pub reason: String,
    /// Where the damaged files were moved (`None`: kept in place, as a
    /// stream that only lost its last positions is).
    pub moved_to: Option<PathBuf>,
    /// Versions (store) or positions (stream) lost.
    pub lost_versions: u64,
    /// Documents lost (store only).
    pub lost_documents: u64,
}

/// A version the node acknowledged that its store lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingVersion {
    /// The version's CID.
    pub version: ContentId,
    /// Its document, when the sync queue names it (`None`: already pushed,
    /// so some peer holds it).
    pub document: Option<(String, String)>,
}

/// What [`Node::storage_health`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageHealth {
    /// Healthy, refetching or recovered.
    pub state: StorageState,
    /// The databases found damaged at start.
    pub damaged: Vec<DamagedDatabase>,
    /// Acknowledged versions still missing from the store (named by the stream).
    pub missing_versions: u64,
    /// Documents the store acknowledged and does not hold now (from its counts).
    pub missing_documents: u64,
    /// Up to [`MAX_NAMED_MISSING`] of the missing versions.
    pub missing: Vec<MissingVersion>,
}

/// What the node learnt about its databases at start.
#[derive(Debug, Default)]
pub(crate) struct StartupDamage {
    damaged: Vec<DamagedDatabase>,
    /// Documents the store acknowledged before the damage.
    acknowledged_documents: Option<u64>,
    /// Versions the stream names that the store lost.
    lost: Vec<MissingVersion>,
}

impl StartupDamage {
    /// Takes in what the store's open found.
    pub(crate) fn store(&mut self, health: StoreHealth) {
        if let StoreHealth::Recovered(d) = health {
            self.acknowledged_documents = d.acknowledged.map(|c| c.documents);
            self.damaged.push(DamagedDatabase {
                database: "store".into(),
                reason: d.reason,
                moved_to: Some(d.moved_to),
                lost_versions: d.lost_versions,
                lost_documents: d.lost_documents,
            });
        }
    }

    /// Whether the store was rebuilt.
    pub(crate) fn store_damaged(&self) -> bool {
        self.damaged.iter().any(|d| d.database == "store")
    }

    /// Records the versions of `stream` the store lacks, named by `queue`.
    pub(crate) fn find_lost(
        &mut self,
        store: &SledStore,
        stream: &DurableStream,
        queue: &SyncQueue,
    ) -> crate::error::Result<()> {
        let mut names = std::collections::BTreeMap::new();
        let mut from = 0;
        loop {
            let page = queue.pending(from, ecomesh_replication::queue::MAX_PAGE)?;
            for p in &page.items {
                if let SyncItem::Replicate {
                    collection,
                    id,
                    version,
                    ..
                }
                | SyncItem::Tombstone {
                    collection,
                    id,
                    version,
                    ..
                } = &p.item
                {
                    names.insert(version.clone(), (collection.clone(), id.clone()));
                }
            }
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
        let mut since = 0;
        loop {
            let delta = stream
                .index()
                .changes_since(since, ecomesh_replication::stream::MAX_DELTA);
            for e in &delta.entries {
                if store.version_bytes(&e.id)?.is_none() {
                    self.lost.push(MissingVersion {
                        document: names.get(&e.id).cloned(),
                        version: e.id.clone(),
                    });
                }
            }
            if !delta.more || delta.next <= since {
                break;
            }
            since = delta.next;
        }
        if !self.lost.is_empty() {
            tracing::error!(
                versions = self.lost.len(),
                named = self.lost.iter().filter(|m| m.document.is_some()).count(),
                "versions this node acknowledged are missing from its store; asking peers"
            );
            for m in self.lost.iter().take(20) {
                tracing::error!(version = ?m.version, document = ?m.document, "missing version");
            }
        }
        Ok(())
    }
}

/// `<path>.damaged-<unix ms>`, where a damaged database is moved.
fn aside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".damaged-{}", now_ms()));
    path.with_file_name(name)
}

fn is_damage(e: &ReplicationError) -> bool {
    // A held lock is another process, not damage.
    !matches!(e, ReplicationError::Storage(s)
        if s.contains("lock") || s.contains("WouldBlock") || s.contains("temporarily unavailable"))
}

/// Opens a sled-backed database with `open`; one that is damaged is moved
/// aside, reported in `damage`, and opened empty.
pub(crate) fn open_or_replace<T>(
    name: &str,
    path: &Path,
    damage: &mut StartupDamage,
    open: impl Fn(&Path) -> Result<T, ReplicationError>,
) -> crate::error::Result<T> {
    match open(path) {
        Ok(t) => Ok(t),
        Err(e) if is_damage(&e) => {
            let moved = aside(path);
            tracing::error!(database = name, error = %e, moved_to = %moved.display(),
                "database damaged: moved aside, starting it empty");
            std::fs::rename(path, &moved)
                .map_err(|io| crate::error::SyncError::io("moving aside", path, io))?;
            damage.damaged.push(DamagedDatabase {
                database: name.into(),
                reason: e.to_string(),
                moved_to: Some(moved),
                lost_versions: 0,
                lost_documents: 0,
            });
            Ok(open(path)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The stream head last recorded in `stream.acknowledged`.
fn stream_witness(layout: &DataLayout) -> Option<u64> {
    let bytes = std::fs::read(stream_witness_path(layout)).ok()?;
    let b: [u8; 16] = bytes.try_into().ok()?;
    let head = u64::from_be_bytes(b[..8].try_into().ok()?);
    let check = u64::from_be_bytes(b[8..].try_into().ok()?);
    (check == !head.rotate_left(17)).then_some(head)
}

fn stream_witness_path(layout: &DataLayout) -> PathBuf {
    layout.root().join("stream.acknowledged")
}

/// Records `head` as the stream's acknowledged head (in place, not fsynced:
/// the stream itself is flushed before a position is given out, so the file
/// never claims more than the stream holds after a killed process).
pub(crate) fn record_stream_head(layout: &DataLayout, head: u64) {
    let mut bytes = [0_u8; 16];
    bytes[..8].copy_from_slice(&head.to_be_bytes());
    bytes[8..].copy_from_slice(&(!head.rotate_left(17)).to_be_bytes());
    let path = stream_witness_path(layout);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(&bytes, 0));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "recording the stream head failed");
    }
}

/// Compares the opened stream with its recorded head; a shorter stream lost
/// its last positions.
pub(crate) fn check_stream(
    layout: &DataLayout,
    stream: &DurableStream,
    damage: &mut StartupDamage,
) {
    let head = stream.index().head();
    if let Some(acked) = stream_witness(layout)
        && head < acked
    {
        tracing::error!(
            head,
            acknowledged = acked,
            "the stream lost its last positions; peers reconcile through anti-entropy"
        );
        damage.damaged.push(DamagedDatabase {
            database: "stream".into(),
            reason: format!("it holds {head} positions of the {acked} it acknowledged"),
            moved_to: None,
            lost_versions: acked - head,
            lost_documents: 0,
        });
    }
    record_stream_head(layout, head);
}

impl Node {
    /// The state of the node's storage: the databases found damaged at
    /// start, and what they lost that is still missing (peers give it back
    /// through anti-entropy as they connect).
    pub fn storage_health(&self) -> crate::error::Result<StorageHealth> {
        let n = &self.inner;
        let damage = &n.damage;
        let mut missing = Vec::new();
        let mut missing_versions = 0;
        for m in &damage.lost {
            if n.store.version_bytes(&m.version)?.is_none() {
                missing_versions += 1;
                if missing.len() < MAX_NAMED_MISSING {
                    missing.push(m.clone());
                }
            }
        }
        let missing_documents = match damage.acknowledged_documents {
            Some(acked) => {
                let now = n.store.record_counts().map_or(0, |c| c.documents);
                acked.saturating_sub(now)
            }
            None => 0,
        };
        let state = if damage.damaged.is_empty() {
            StorageState::Healthy
        } else if missing_versions > 0 || missing_documents > 0 {
            StorageState::Refetching
        } else {
            StorageState::Recovered
        };
        Ok(StorageHealth {
            state,
            damaged: damage.damaged.clone(),
            missing_versions,
            missing_documents,
            missing,
        })
    }
}
