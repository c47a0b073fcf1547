//! What `status` shows about the node's storage: databases found damaged at
//! start and what peers have not given back yet (see `ecomesh_sync`'s
//! `Node::storage_health`).

use serde::{Deserialize, Serialize};

use ecomesh_sync::StorageHealth;

/// The storage state in `status` (CLI and `GET /api/v1/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    /// `healthy`, `refetching` (damage found, something acknowledged still
    /// missing) or `recovered` (damage found, everything known lost is back).
    pub state: String,
    /// The databases found damaged at the last start.
    pub damaged: Vec<DamagedRow>,
    /// Acknowledged versions still missing from the store.
    pub missing_versions: u64,
    /// Acknowledged documents the store does not hold now.
    pub missing_documents: u64,
    /// Up to 100 of the missing versions.
    pub missing: Vec<MissingRow>,
}

/// One damaged database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedRow {
    /// `store`, `stream` or `queue`.
    pub database: String,
    /// What gave the damage away.
    pub reason: String,
    /// Where the damaged files were moved (`null`: kept in place).
    pub moved_to: Option<String>,
    /// Versions (store) or stream positions lost.
    pub lost_versions: u64,
    /// Documents lost (store).
    pub lost_documents: u64,
}

/// One missing version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingRow {
    /// The version's CID.
    pub version: String,
    /// Its collection, when known.
    pub collection: Option<String>,
    /// Its document id, when known.
    pub id: Option<String>,
}

impl From<StorageHealth> for StorageStatus {
    fn from(h: StorageHealth) -> Self {
        StorageStatus {
            state: h.state.as_str().to_owned(),
            damaged: h
                .damaged
                .into_iter()
                .map(|d| DamagedRow {
                    database: d.database,
                    reason: d.reason,
                    moved_to: d.moved_to.map(|p| p.display().to_string()),
                    lost_versions: d.lost_versions,
                    lost_documents: d.lost_documents,
                })
                .collect(),
            missing_versions: h.missing_versions,
            missing_documents: h.missing_documents,
            missing: h
                .missing
                .into_iter()
                .map(|m| {
                    let (collection, id) = m.document.unzip();
                    MissingRow {
                        version: crate::api::json::cid_text(&m.version),
                        collection,
                        id,
                    }
                })
                .collect(),
        }
    }
}

impl StorageStatus {
    /// The lines `ecomesh status` prints.
    pub fn human_lines(&self) -> Vec<String> {
        let mut lines = vec![match self.state.as_str() {
            "refetching" => format!(
                "storage     DAMAGED, refetching: {} versions and {} documents still missing",
                self.missing_versions, self.missing_documents
            ),
            other => format!("storage     {other}"),
        }];
        for d in &self.damaged {
            lines.push(format!(
                "damaged     {}: {} ({} versions, {} documents lost; files moved to {})",
                d.database,
                d.reason,
                d.lost_versions,
                d.lost_documents,
                d.moved_to.as_deref().unwrap_or("nowhere: kept in place")
            ));
        }
        for m in &self.missing {
            lines.push(format!(
                "missing     {} {}/{}",
                m.version,
                m.collection.as_deref().unwrap_or("?"),
                m.id.as_deref().unwrap_or("?")
            ));
        }
        lines
    }
}
