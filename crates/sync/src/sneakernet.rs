//! Sneakernet: the node's versions (and optionally its blobs) as a CARv1 file
//! ([`Node::export`]), and such a file merged into another node
//! ([`Node::import`]) that may never meet the first over any network.
//!
//! # The file
//!
//! A CARv1 file ([`ecomesh_wire::car`]) whose blocks are:
//! - each version node's canonical signed bytes (DAG-CBOR, sha2-256: the
//!   block's CID is the version's CID), in stream order, so parents come
//!   before their children;
//! - with [`ExportOptions::blobs`], per blob a DAG-CBOR block
//!   `{"collection": c, "manifest": {...}}` and the pieces this node holds as
//!   `raw` blocks (their CIDs are the pieces' blake3 ids).
//!
//! The header's roots are the heads among the exported versions (versions no
//! other exported version names as a parent), then the blob blocks.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};

use ecomesh_p2p_storage::blobs::BlobStore;
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_replication::blob::{BlobId, Manifest, ManifestLimits};
use ecomesh_replication::merkle::ApplyResult;
use ecomesh_replication::stream::MAX_DELTA;
use ecomesh_types::{ContentId, Map, Value};
use ecomesh_wire::cid::{DAG_CBOR, RAW};
use ecomesh_wire::{CarBlock, CarLimits, CarReader, CarWriter, Cid};

use crate::clock::now_ms;
use crate::error::{Result, SyncError};
use crate::node::Node;

/// What [`Node::export`] writes besides versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Also write every blob whose manifest this node holds (in a replicated
    /// collection), with the pieces it holds. `since` does not apply to blobs.
    pub blobs: bool,
}

/// How far an export or import is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Blocks written or read so far.
    pub blocks: u64,
    /// Blocks in all, when known (an export knows; an import does not).
    pub total_blocks: Option<u64>,
    /// Bytes written or read so far.
    pub bytes: u64,
    /// Bytes in all, when known (an import of a file of known size).
    pub total_bytes: Option<u64>,
}

/// What [`Node::export`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// The stream position the export started after.
    pub since: u64,
    /// The stream position it reached: pass it as `since` next time to
    /// export only what is newer.
    pub next: u64,
    /// Version blocks written.
    pub versions: u64,
    /// Blob manifests written.
    pub blobs: u64,
    /// Blob pieces written.
    pub pieces: u64,
    /// Roots in the header.
    pub roots: usize,
    /// Bytes of the whole file.
    pub bytes: u64,
}

/// Why [`Node::import`] refused a block.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The block's bytes do not hash to its CID (tampered or damaged).
    CidMismatch(String),
    /// The version fails verification: it does not decode, its signature or
    /// author is wrong, or its collection is local or outside the author's reach.
    InvalidVersion(String),
    /// Parents neither in the file nor in the store: the store merges a
    /// version only after its parents.
    MissingParents(Vec<ContentId>),
    /// A blob manifest or piece that is malformed or belongs to no known blob.
    InvalidBlob(String),
    /// A block of a kind a node does not export (codec, shape).
    UnknownBlock(String),
}

impl RefuseReason {
    /// A machine-readable name: `cid_mismatch`, `invalid_version`,
    /// `missing_parents`, `invalid_blob` or `unknown_block`.
    pub fn kind(&self) -> &'static str {
        match self {
            RefuseReason::CidMismatch(_) => "cid_mismatch",
            RefuseReason::InvalidVersion(_) => "invalid_version",
            RefuseReason::MissingParents(_) => "missing_parents",
            RefuseReason::InvalidBlob(_) => "invalid_blob",
            RefuseReason::UnknownBlock(_) => "unknown_block",
        }
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseReason::CidMismatch(m)
            | RefuseReason::InvalidVersion(m)
            | RefuseReason::InvalidBlob(m)
            | RefuseReason::UnknownBlock(m) => f.write_str(m),
            RefuseReason::MissingParents(p) => {
                let cids: Vec<String> = p
                    .iter()
                    .map(|c| {
                        ecomesh_wire::from_content_id(c)
                            .map_or_else(|_| "?".into(), |c| c.to_string())
                    })
                    .collect();
                write!(f, "missing parents {}", cids.join(", "))
            }
        }
    }
}

/// One block [`Node::import`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The block's CID as the file gives it.
    pub cid: ContentId,
    /// Why.
    pub reason: RefuseReason,
}

/// What [`Node::import`] did. Importing the same file again adds nothing:
/// everything counts as known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Roots the header names.
    pub roots: usize,
    /// Blocks read.
    pub blocks: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Versions merged now.
    pub versions_new: u64,
    /// Versions the store already had.
    pub versions_known: u64,
    /// Blob manifests stored now.
    pub blobs_new: u64,
    /// Blob manifests already stored.
    pub blobs_known: u64,
    /// Blob pieces stored now.
    pub pieces_new: u64,
    /// Blob pieces already held.
    pub pieces_known: u64,
    /// Refused blocks, at most [`MAX_REFUSED_LISTED`] of them.
    pub refused: Vec<Refused>,
    /// Refused blocks in all.
    pub refused_total: u64,
}

/// Most refused blocks an [`ImportReport`] lists (all are counted).
pub const MAX_REFUSED_LISTED: usize = 1000;

/// Most bytes of versions an import holds while their parents may still
/// follow later in the file; beyond it they are refused at once.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// The bounds an import reads a file with: 8 MiB of header (about 200,000
/// roots) and 256 MiB and a CID per block, the largest blob piece a node
/// accepts from a peer (`ManifestLimits::max_piece_len`); a block's bytes are
/// buffered as they arrive, never allocated from its length prefix.
pub const IMPORT_LIMITS: CarLimits = CarLimits {
    max_header: 8 << 20,
    max_block: (256 << 20) + 1024,
    max_blocks: None,
};

impl ImportReport {
    fn refuse(&mut self, cid: ContentId, reason: RefuseReason) {
        tracing::warn!(reason = %reason, kind = reason.kind(), "import: block refused");
        self.refused_total += 1;
        if self.refused.len() < MAX_REFUSED_LISTED {
            self.refused.push(Refused { cid, reason });
        }
    }
}

fn replication(e: ecomesh_replication::ReplicationError) -> SyncError {
    SyncError::Replication(e)
}

fn car_error(e: ecomesh_wire::WireError) -> SyncError {
    match e {
        ecomesh_wire::WireError::Io { kind, message } => SyncError::Io {
            what: "reading or writing the CAR stream",
            path: std::path::PathBuf::new(),
            source: std::io::Error::new(kind, message),
        },
        e => SyncError::InvalidCar(e),
    }
}

impl Node {
    /// Writes the versions of this node's stream after position `since` (0:
    /// all) in replicated collections, and with [`ExportOptions::blobs`] the
    /// blobs, as a CARv1 file to `out` (see the module docs of `sneakernet`).
    pub fn export(
        &self,
        since: u64,
        options: ExportOptions,
        out: impl Write,
    ) -> Result<ExportSummary> {
        self.export_with_progress(since, options, out, |_| {})
    }

    /// [`export`](Self::export), calling `progress` after every block.
    pub fn export_with_progress(
        &self,
        since: u64,
        options: ExportOptions,
        out: impl Write,
        mut progress: impl FnMut(Progress),
    ) -> Result<ExportSummary> {
        self.running()?;
        let n = &self.inner;
        // First pass: which versions, their parents, and so the heads.
        let mut versions: Vec<ContentId> = Vec::new();
        let mut parents: BTreeSet<ContentId> = BTreeSet::new();
        let mut next = since;
        loop {
            let page = n.p2p.changes_since(next, MAX_DELTA);
            for e in page.entries {
                if n.p2p
                    .replicated_version_bytes(&e.id)
                    .map_err(replication)?
                    .is_some()
                {
                    parents.extend(e.parents);
                    versions.push(e.id);
                }
            }
            next = page.next;
            if !page.more {
                break;
            }
        }
        let mut roots: Vec<Cid> = versions
            .iter()
            .filter(|v| !parents.contains(*v))
            .map(ecomesh_wire::from_content_id)
            .collect::<std::result::Result<_, _>>()?;
        drop(parents);
        let blob_store = n.blobs.service().store().clone();
        let blobs = if options.blobs {
            self.exported_blobs(&blob_store)?
        } else {
            Vec::new()
        };
        roots.extend(blobs.iter().map(|b| b.cid));
        let total_blocks =
            versions.len() as u64 + blobs.iter().map(|b| 1 + b.pieces.len() as u64).sum::<u64>();
        let mut w = CarWriter::new(out, &roots).map_err(car_error)?;
        let mut summary = ExportSummary {
            since,
            next,
            roots: roots.len(),
            ..ExportSummary::default()
        };
        let mut report = |w: &CarWriter<_>| {
            progress(Progress {
                blocks: w.blocks_written(),
                total_blocks: Some(total_blocks),
                bytes: w.bytes_written(),
                total_bytes: None,
            });
        };
        for v in &versions {
            // Held a moment ago; a GC in between would only shorten the file.
            let Some(bytes) = n.p2p.replicated_version_bytes(v).map_err(replication)? else {
                continue;
            };
            w.write_block(&ecomesh_wire::from_content_id(v)?, &bytes)
                .map_err(car_error)?;
            summary.versions += 1;
            report(&w);
        }
        for b in &blobs {
            w.write_block(&b.cid, &b.bytes).map_err(car_error)?;
            summary.blobs += 1;
            report(&w);
            for p in &b.pieces {
                if let Some(bytes) = blob_store.piece(p)? {
                    w.write_block(&ecomesh_wire::from_content_id(&p.to_content_id())?, &bytes)
                        .map_err(car_error)?;
                    summary.pieces += 1;
                    report(&w);
                }
            }
        }
        summary.bytes = w.bytes_written();
        w.finish().map_err(car_error)?;
        tracing::info!(
            versions = summary.versions,
            blobs = summary.blobs,
            bytes = summary.bytes,
            "exported"
        );
        Ok(summary)
    }

    /// The blob blocks an export with blobs writes: replicated collections only.
    fn exported_blobs(&self, store: &BlobStore<SledBackend>) -> Result<Vec<ExportedBlob>> {
        let local = &self.inner.config.p2p.local_prefix;
        let mut out = Vec::new();
        for id in store.blobs()? {
            let Some(stored) = store.manifest(&id)? else {
                continue;
            };
            if !local.is_empty() && stored.collection.starts_with(local.as_str()) {
                continue;
            }
            let mut map = Map::new();
            map.insert("collection".into(), Value::from(stored.collection.as_str()));
            map.insert("manifest".into(), stored.manifest.to_value()?);
            let bytes = ecomesh_wire::to_dag_cbor(&Value::Map(map))?;
            let mut pieces = Vec::new();
            for p in stored.manifest.pieces() {
                if store.has_piece(p)? {
                    pieces.push(*p);
                }
            }
            out.push(ExportedBlob {
                cid: ecomesh_wire::cid_of_dag_cbor(&bytes),
                bytes,
                pieces,
            });
        }
        Ok(out)
    }

    /// Reads a CARv1 file from `input` and merges what verifies: every
    /// block's bytes are checked against its CID, and every version's
    /// signature and author, before anything of it is merged, through the
    /// path versions from peers take (so it is positioned in the stream and
    /// pushed on to partners). Versions whose parents come later in the file
    /// wait for them; parents neither in the file nor in the store are
    /// reported. Refused blocks are listed with their reasons; the others
    /// merge. A malformed file ([`SyncError::InvalidCar`]) stops the import
    /// where it is broken, keeping what merged before.
    pub fn import(&self, input: impl Read) -> Result<ImportReport> {
        self.import_with_progress(input, None, |_| {})
    }

    /// [`import`](Self::import), calling `progress` after every block;
    /// `total_bytes` (the file's size, when known) is passed through to it.
    pub fn import_with_progress(
        &self,
        input: impl Read,
        total_bytes: Option<u64>,
        mut progress: impl FnMut(Progress),
    ) -> Result<ImportReport> {
        self.running()?;
        let mut reader = CarReader::new(input, IMPORT_LIMITS).map_err(car_error)?;
        let mut imp = Import {
            node: self,
            blobs: self.inner.blobs.service().store().clone(),
            report: ImportReport {
                roots: reader.roots().len(),
                ..ImportReport::default()
            },
            pending: HashMap::new(),
            waiting: HashMap::new(),
            pending_bytes: 0,
        };
        while let Some(block) = reader.next_block().map_err(car_error)? {
            imp.block(block)?;
            imp.report.blocks = reader.blocks_read();
            imp.report.bytes = reader.bytes_read();
            progress(Progress {
                blocks: imp.report.blocks,
                total_blocks: None,
                bytes: imp.report.bytes,
                total_bytes,
            });
        }
        let mut report = imp.finish();
        report.bytes = reader.bytes_read();
        tracing::info!(
            new = report.versions_new,
            known = report.versions_known,
            refused = report.refused_total,
            "imported"
        );
        Ok(report)
    }
}

/// A blob as an export writes it.
struct ExportedBlob {
    cid: Cid,
    bytes: Vec<u8>,
    pieces: Vec<BlobId>,
}

/// The state of one import.
struct Import<'a> {
    node: &'a Node,
    blobs: std::sync::Arc<BlobStore<SledBackend>>,
    report: ImportReport,
    /// Versions waiting for parents: CID → (bytes, the parents missing last time).
    pending: HashMap<ContentId, (Vec<u8>, Vec<ContentId>)>,
    /// Missing parent → the pending versions waiting for it.
    waiting: HashMap<ContentId, Vec<ContentId>>,
    pending_bytes: usize,
}

impl Import<'_> {
    fn block(&mut self, block: CarBlock) -> Result<()> {
        let cid = ecomesh_wire::to_content_id(&block.cid);
        if let Err(e) = block.verify() {
            self.report
                .refuse(cid, RefuseReason::CidMismatch(e.to_string()));
            return Ok(());
        }
        match block.cid.codec() {
            DAG_CBOR => {
                if is_blob_block(&block.data) {
                    self.manifest(cid, &block.data)
                } else {
                    self.version(cid, block.data)
                }
            }
            RAW => self.piece(cid, &block.data),
            codec => {
                self.report.refuse(
                    cid,
                    RefuseReason::UnknownBlock(format!(
                        "codec 0x{codec:x} is neither dag-cbor nor raw"
                    )),
                );
                Ok(())
            }
        }
    }

    /// Merges one version, then whatever waited for it.
    fn version(&mut self, cid: ContentId, bytes: Vec<u8>) -> Result<()> {
        let mut queue = vec![(cid, bytes)];
        while let Some((cid, bytes)) = queue.pop() {
            let result = self
                .node
                .inner
                .p2p
                .import_version(&bytes)
                .map_err(replication)?;
            match result {
                ApplyResult::Applied | ApplyResult::AlreadyPresent => {
                    if result == ApplyResult::Applied {
                        self.report.versions_new += 1;
                    } else {
                        self.report.versions_known += 1;
                    }
                    for child in self.waiting.remove(&cid).unwrap_or_default() {
                        if let Some((b, _)) = self.pending.remove(&child) {
                            self.pending_bytes -= b.len();
                            queue.push((child, b));
                        }
                    }
                }
                ApplyResult::MissingParents(missing) => {
                    if self.pending.contains_key(&cid) {
                        continue;
                    }
                    if self.pending_bytes + bytes.len() > MAX_PENDING_BYTES {
                        self.report
                            .refuse(cid, RefuseReason::MissingParents(missing));
                        continue;
                    }
                    for p in &missing {
                        self.waiting.entry(p.clone()).or_default().push(cid.clone());
                    }
                    self.pending_bytes += bytes.len();
                    self.pending.insert(cid, (bytes, missing));
                }
                ApplyResult::Invalid(reason) => {
                    self.report
                        .refuse(cid, RefuseReason::InvalidVersion(reason));
                }
                other => {
                    let reason = format!("not merged: {other:?}");
                    self.report
                        .refuse(cid, RefuseReason::InvalidVersion(reason));
                }
            }
        }
        Ok(())
    }

    fn manifest(&mut self, cid: ContentId, bytes: &[u8]) -> Result<()> {
        let parsed = ecomesh_wire::from_dag_cbor(bytes)
            .map_err(|e| e.to_string())
            .and_then(|v| match v {
                Value::Map(mut m) => match (m.remove("collection"), m.remove("manifest")) {
                    (Some(Value::Text(c)), Some(manifest)) => {
                        Manifest::from_value(&manifest, &ManifestLimits::default())
                            .map(|m| (c, m))
                            .map_err(|e| e.to_string())
                    }
                    _ => Err("not a blob block".to_owned()),
                },
                _ => Err("not a map".to_owned()),
            });
        let (collection, manifest) = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.report.refuse(cid, RefuseReason::InvalidBlob(e));
                return Ok(());
            }
        };
        let local = &self.node.inner.config.p2p.local_prefix;
        if !local.is_empty() && collection.starts_with(local.as_str()) {
            self.report.refuse(
                cid,
                RefuseReason::InvalidBlob(format!("collection {collection:?} is local to a node")),
            );
            return Ok(());
        }
        match self.blobs.adopt_manifest(&collection, &manifest, now_ms()) {
            Ok(true) => self.report.blobs_new += 1,
            Ok(false) => self.report.blobs_known += 1,
            Err(e) => self
                .report
                .refuse(cid, RefuseReason::InvalidBlob(e.to_string())),
        }
        Ok(())
    }

    fn piece(&mut self, cid: ContentId, bytes: &[u8]) -> Result<()> {
        let Ok(id) = BlobId::from_content_id(&cid) else {
            self.report.refuse(
                cid,
                RefuseReason::UnknownBlock("a raw block that is not a blake3 blob piece".into()),
            );
            return Ok(());
        };
        if self.blobs.owners(&id)?.is_empty() {
            self.report.refuse(
                cid,
                RefuseReason::InvalidBlob("a piece of no blob this node knows".into()),
            );
            return Ok(());
        }
        match self.blobs.put_piece(&id, bytes, now_ms()) {
            Ok(true) => self.report.pieces_new += 1,
            Ok(false) => self.report.pieces_known += 1,
            Err(e) => self
                .report
                .refuse(cid, RefuseReason::InvalidBlob(e.to_string())),
        }
        Ok(())
    }

    /// The report, with the versions still waiting refused for their parents.
    fn finish(mut self) -> ImportReport {
        let mut left: Vec<(ContentId, Vec<ContentId>)> = self
            .pending
            .drain()
            .map(|(cid, (_, missing))| (cid, missing))
            .collect();
        left.sort();
        for (cid, missing) in left {
            self.report
                .refuse(cid, RefuseReason::MissingParents(missing));
        }
        self.report
    }
}

/// True for the `{"collection", "manifest"}` blocks an export writes for blobs
/// (version nodes have other keys), without decoding the whole block.
fn is_blob_block(bytes: &[u8]) -> bool {
    // A two-entry map whose first key (in canonical order) is "manifest".
    bytes.starts_with(b"\xa2\x68manifest")
}
