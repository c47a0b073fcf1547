//! The mesh's persisted state: the store-and-forward buffer, the pending
//! ACKs and the keys learned from peers, loaded at start and saved after
//! every send and batch of events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::ack::PendingAcks;
use ecomesh_mesh::buffer::StoreBuffer;
use ecomesh_mesh::{MAX_LEARNED_KEYS, MultiTransportManager};
use ecomesh_types::PeerId;

use crate::config::NodeConfig;
use crate::fsutil::{quarantine, write_atomic};
use crate::layout::DataLayout;

/// Saves the mesh state; shared by the driving loop and the text service.
pub(crate) struct MeshState {
    mesh: Arc<MultiTransportManager>,
    layout: DataLayout,
    dirty: AtomicBool,
    saved_keys: AtomicUsize,
    /// The buffer generation last written (`None`: write at the next save).
    saved_buffer: Mutex<Option<u64>>,
    lock: Mutex<()>,
}

impl std::fmt::Debug for MeshState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshState")
            .field("root", &self.layout.root())
            .finish_non_exhaustive()
    }
}

/// Builds the mesh manager from the persisted buffer, pending ACKs and
/// learned keys (an unreadable file is moved aside and the node starts
/// without it), and the state saver for it.
pub(crate) fn open_mesh(
    identity: &Identity,
    layout: &DataLayout,
    config: &NodeConfig,
) -> (Arc<MultiTransportManager>, MeshState) {
    let mesh_config = config.mesh;
    let buffer = match StoreBuffer::load(&layout.buffer(), mesh_config.buffer) {
        Ok(b) => b,
        Err(e) => {
            quarantine(&layout.buffer(), &e);
            StoreBuffer::new(mesh_config.buffer)
        }
    };
    let pending_bound = mesh_config
        .buffer
        .max_messages
        .saturating_add(config.outbox_max)
        .saturating_add(config.pending_load_slack);
    let pending = match PendingAcks::load(&layout.pending(), pending_bound) {
        Ok(p) => p,
        Err(e) => {
            quarantine(&layout.pending(), &e);
            PendingAcks::new()
        }
    };
    let keys: Arc<BTreeMap<PeerId, PublicKey>> = Arc::default();
    let mesh = Arc::new(MultiTransportManager::with_state(
        identity.clone(),
        keys,
        mesh_config,
        buffer,
        pending,
    ));
    let known = load_keys(&layout.known_keys());
    for k in &known {
        mesh.learn_key(*k);
    }
    let state = MeshState {
        mesh: mesh.clone(),
        layout: layout.clone(),
        dirty: AtomicBool::new(false),
        saved_keys: AtomicUsize::new(known.len()),
        saved_buffer: Mutex::new(None),
        lock: Mutex::new(()),
    };
    (mesh, state)
}

impl MeshState {
    /// Notes that the mesh state changed and must be saved.
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// True when a change is not saved yet.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Saves the mesh buffer (only when it changed since the last successful
    /// save: during a transfer it can hold megabytes), pending ACKs and (when
    /// grown) the learned keys.
    /// A failed save leaves the state dirty, so the next pass tries again.
    pub(crate) fn persist(&self) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.dirty.store(false, Ordering::SeqCst);
        let mut saved = self.saved_buffer.lock().unwrap_or_else(|p| p.into_inner());
        match self
            .mesh
            .save_buffer_if_changed(&self.layout.buffer(), *saved)
        {
            Ok(generation) => *saved = Some(generation),
            Err(e) => {
                tracing::error!(error = %e, "saving the store-and-forward buffer failed");
                *saved = None;
                self.dirty.store(true, Ordering::SeqCst);
            }
        }
        drop(saved);
        if let Err(e) = self.mesh.save_pending(&self.layout.pending()) {
            tracing::error!(error = %e, "saving the pending ACKs failed");
            self.dirty.store(true, Ordering::SeqCst);
        }
        let keys = self.mesh.learned_keys();
        if keys.len() != self.saved_keys.load(Ordering::SeqCst) {
            let bytes: Vec<u8> = keys.iter().flat_map(PublicKey::to_bytes).collect();
            match write_atomic(&self.layout.known_keys(), &bytes) {
                Ok(()) => self.saved_keys.store(keys.len(), Ordering::SeqCst),
                Err(e) => tracing::error!(error = %e, "saving known keys failed"),
            }
        }
    }
}

fn load_keys(path: &std::path::Path) -> Vec<PublicKey> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            quarantine(path, &e);
            return Vec::new();
        }
    };
    if bytes.len() % 32 != 0 || bytes.len() / 32 > MAX_LEARNED_KEYS {
        quarantine(path, &"length is not a multiple of 32 or too large");
        return Vec::new();
    }
    let keys: Result<Vec<PublicKey>, _> = bytes.chunks(32).map(PublicKey::from_slice).collect();
    keys.unwrap_or_else(|e| {
        quarantine(path, &e);
        Vec::new()
    })
}
