//! Large content-addressed data: the blob service, its garbage collection
//! and the provider records of held blobs in the content location index.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecomesh_mesh::MultiTransportManager;
use ecomesh_p2p_storage::blobs::{BlobService, BlobServiceConfig, BlobStore};
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_p2p_storage::{P2PConfig, SledStore};
use ecomesh_replication::blob::{BlobId, ManifestLimits};
use ecomesh_types::PeerId;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::error::{Result, SyncError};
use crate::routing::ContentRouting;

/// One blob this node knows, as [`Node::blobs`](crate::Node::blobs) lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its id (blake3 of the whole content).
    pub id: BlobId,
    /// The collection whose reach and replication factor it follows.
    pub collection: String,
    /// Its length in bytes.
    pub len: u64,
    /// How it is stored: `none`, `chunked` or `rs-4-7`.
    pub encoding: String,
    /// Pieces of it this node holds.
    pub held: usize,
    /// Pieces it has.
    pub pieces: usize,
}

/// What one garbage collection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcSummary {
    /// Pieces deleted.
    pub deleted: usize,
    /// Bytes they took.
    pub freed_bytes: u64,
    /// Pieces kept (pinned, referenced, young or under-replicated).
    pub kept: usize,
}

/// Writes local blob `blob` to `path` through a temporary file beside it
/// (synced, then renamed over `path`), so `path` is the whole verified blob
/// or untouched.
fn write_blob_file(store: &BlobStore<SledBackend>, blob: &BlobId, path: &Path) -> Result<u64> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| SyncError::io("creating", &tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        let len = store
            .write_local(blob, &mut out, now_ms())?
            .ok_or_else(|| {
                SyncError::InvalidArgument(format!(
                    "blob {} was fetched but is no longer complete here",
                    blob.to_text()
                ))
            })?;
        let file = out
            .into_inner()
            .map_err(|e| SyncError::io("writing", &tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| SyncError::io("syncing", &tmp, e))?;
        Ok(len)
    })();
    let len = match written {
        Ok(len) => len,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path).map_err(|e| SyncError::io("renaming", path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(len)
}

/// The blob service with content routing.
pub(crate) struct Blobs {
    service: BlobService<SledBackend>,
    routing: Option<Arc<dyn ContentRouting>>,
    mesh: Arc<MultiTransportManager>,
    me: PeerId,
    wake: Arc<Notify>,
    lookup_timeout: Duration,
    settle_timeout: Duration,
    get_timeout: Duration,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("routing", &self.routing.is_some())
            .finish_non_exhaustive()
    }
}

impl Blobs {
    /// The blob service on the store's sled backend, with the replication
    /// factors, reach and trust of `p2p`.
    pub(crate) fn open(
        store: &SledStore,
        mesh: Arc<MultiTransportManager>,
        p2p: &P2PConfig,
        config: &NodeConfig,
        routing: Option<Arc<dyn ContentRouting>>,
        wake: Arc<Notify>,
    ) -> Result<Blobs> {
        let me = mesh.peer_id();
        let blob_store = BlobStore::open(store.backend().clone(), me, ManifestLimits::default())?;
        let service = BlobService::new(
            Arc::new(blob_store),
            mesh.clone(),
            BlobServiceConfig {
                replication: p2p.replication.clone(),
                reach: p2p.reach.clone(),
                trust: p2p.trust.clone(),
                ..BlobServiceConfig::default()
            },
        );
        Ok(Blobs {
            service,
            routing,
            mesh,
            me,
            wake,
            lookup_timeout: config.provider_lookup_timeout,
            settle_timeout: config.provider_settle_timeout,
            get_timeout: config.blob_get_timeout,
        })
    }

    /// The underlying service (driven by the node's loop).
    pub(crate) fn service(&self) -> &BlobService<SledBackend> {
        &self.service
    }

    pub(crate) fn info(&self, id: &BlobId) -> Result<Option<BlobInfo>> {
        let store = self.service.store();
        let Some(stored) = store.manifest(id)? else {
            return Ok(None);
        };
        let m = &stored.manifest;
        let mut held = 0;
        for p in m.pieces() {
            if store.has_piece(p)? {
                held += 1;
            }
        }
        Ok(Some(BlobInfo {
            id: *id,
            collection: stored.collection,
            len: m.len(),
            encoding: m.encoding().to_string(),
            held,
            pieces: m.pieces().len(),
        }))
    }

    pub(crate) fn put(&self, collection: &str, bytes: &[u8]) -> Result<BlobInfo> {
        let manifest = self.service.put_blob(collection, bytes, now_ms())?;
        self.announce(vec![manifest.id()]);
        self.wake.notify_one();
        self.info(&manifest.id())?.ok_or_else(|| {
            SyncError::InvalidArgument("blob stored but its manifest is unreadable".into())
        })
    }

    pub(crate) async fn get(&self, blob: BlobId) -> Result<Vec<u8>> {
        if self.service.store().manifest(&blob)?.is_none() {
            self.meet_providers(&blob).await;
        }
        let get = self.service.get_blob(blob, now_ms());
        self.wake.notify_one();
        let bytes = tokio::time::timeout(self.get_timeout, get)
            .await
            .map_err(|_| {
                SyncError::Timeout(format!(
                    "no reachable peer delivered blob {} within {} s",
                    blob.to_text(),
                    self.get_timeout.as_secs()
                ))
            })??;
        Ok(bytes)
    }

    /// Makes blob `blob` local (fetching missing pieces straight into the
    /// store) and writes it to `path` atomically, one piece in memory at a
    /// time; returns its length.
    pub(crate) async fn get_to_file(&self, blob: BlobId, path: &Path) -> Result<u64> {
        if self.service.store().manifest(&blob)?.is_none() {
            self.meet_providers(&blob).await;
        }
        let fetch = self.service.fetch_blob(blob, now_ms());
        self.wake.notify_one();
        tokio::time::timeout(self.get_timeout, fetch)
            .await
            .map_err(|_| {
                SyncError::Timeout(format!(
                    "no reachable peer delivered blob {} within {} s",
                    blob.to_text(),
                    self.get_timeout.as_secs()
                ))
            })??;
        let store = self.service.store().clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || write_blob_file(&store, &blob, &path))
            .await
            .map_err(|e| SyncError::InvalidArgument(format!("the blob writer failed: {e}")))?
    }

    pub(crate) fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut rows = Vec::new();
        for id in self.service.store().blobs()? {
            if let Some(r) = self.info(&id)? {
                rows.push(r);
            }
        }
        Ok(rows)
    }

    pub(crate) fn gc(&self) -> Result<GcSummary> {
        let report = self.service.gc(now_ms(), &|_| false)?;
        if !report.deleted.is_empty() {
            tracing::info!(
                pieces = report.deleted.len(),
                bytes = report.freed_bytes(),
                "blob GC"
            );
        }
        Ok(GcSummary {
            deleted: report.deleted.len(),
            freed_bytes: report.freed_bytes(),
            kept: report.kept.len(),
        })
    }

    /// The periodic work: GC, then announcing every held blob again
    /// (provider records expire).
    pub(crate) fn periodic(&self) {
        if let Err(e) = self.gc() {
            tracing::error!(error = %e, "blob GC failed");
        }
        match self.service.store().blobs() {
            Ok(held) => self.announce(held),
            Err(e) => tracing::error!(error = %e, "blob list unreadable"),
        }
    }

    /// Publishes this node as a holder of `blobs` through content routing,
    /// in the background.
    fn announce(&self, blobs: Vec<BlobId>) {
        let Some(routing) = self.routing.clone() else {
            return;
        };
        tokio::spawn(async move {
            for b in blobs {
                if let Err(e) = routing.provide(b.to_content_id()).await {
                    tracing::debug!(blob = %b.to_text(), error = %e, "provider record not published");
                }
            }
        });
    }

    /// Looks up the holders of `blob` and connects to those the mesh does not
    /// reach yet, so the blob service can ask them (bounded waits).
    async fn meet_providers(&self, blob: &BlobId) {
        let Some(routing) = self.routing.clone() else {
            return;
        };
        let lookup = routing.find_providers(blob.to_content_id());
        let providers = match tokio::time::timeout(self.lookup_timeout, lookup).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "provider lookup failed");
                return;
            }
            Err(_) => return,
        };
        let known: Vec<PeerId> = self.mesh.peers().iter().map(|p| p.peer_id).collect();
        let new: Vec<PeerId> = providers
            .into_iter()
            .filter(|p| *p != self.me && !known.contains(p))
            .collect();
        for p in &new {
            match tokio::time::timeout(self.lookup_timeout, routing.connect(*p)).await {
                Ok(Ok(())) => tracing::info!(peer = %p, "connected to a holder found in the DHT"),
                Ok(Err(e)) => tracing::debug!(peer = %p, error = %e, "holder unreachable"),
                Err(_) => tracing::debug!(peer = %p, "holder did not answer in time"),
            }
        }
        // The mesh takes connected holders in on its next pass.
        let deadline = Instant::now() + self.settle_timeout;
        while Instant::now() < deadline
            && new
                .iter()
                .any(|p| !self.mesh.peers().iter().any(|i| i.peer_id == *p))
        {
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
