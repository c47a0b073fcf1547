//! The running node: its parts, the task that drives them, and shutdown.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use ecomesh_identity::Identity;
use ecomesh_mesh::{MeshEvent, MultiTransportManager};
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_p2p_storage::{P2PStorageAdapter, SledStore};
use ecomesh_replication::queue::SyncQueue;
use ecomesh_replication::stream::DurableStream;
use ecomesh_types::{PeerId, Subscription, TransportAdapter};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::blobs::Blobs;
use crate::builder::NodeBuilder;
use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::error::{Result, SyncError};
use crate::layout::DataLayout;
use crate::persist::{MeshState, open_mesh};
use crate::texts::{TEXT_TYPE, TextStatus, Texts};

/// An embedded ecomesh node: the store, the mesh over the given transports,
/// replication, blobs and texts, driven by one background task.
///
/// A `Node` is a cheap handle: clones share the same node. Call
/// [`shutdown`](Self::shutdown) once to stop it cleanly (state saved,
/// transports stopped, store flushed); when every handle is dropped without
/// it, the driving task ends at its next pass and nothing is lost that was
/// acknowledged to the caller, but transports keep running.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

/// The parts of a node, shared by the handle, the driving task and the
/// mesh callback.
pub(crate) struct Inner {
    pub(crate) identity: Identity,
    pub(crate) layout: DataLayout,
    pub(crate) config: NodeConfig,
    pub(crate) store: Arc<SledStore>,
    pub(crate) mesh: Arc<MultiTransportManager>,
    pub(crate) p2p: Arc<P2PStorageAdapter<SledBackend>>,
    /// The layer replicated collections' documents go through, if any.
    pub(crate) front: Option<Arc<dyn crate::front::DocumentFront>>,
    pub(crate) blobs: Blobs,
    pub(crate) texts: Texts,
    pub(crate) links: crate::link::Links,
    pub(crate) relations: crate::relations::Relations,
    pub(crate) refusals: crate::capabilities::Refusals,
    pub(crate) state: Arc<MeshState>,
    pub(crate) transports: Vec<Arc<dyn TransportAdapter>>,
    pub(crate) started: Instant,
    pub(crate) wake: Arc<Notify>,
    pub(crate) writes: crate::watch::PendingWrites,
    pub(crate) sync: Mutex<crate::events::SyncTracker>,
    pub(crate) private: crate::private::PrivateState,
    /// What the databases lost at start (see `health.rs`).
    pub(crate) damage: crate::health::StartupDamage,
    /// The stream head last recorded as acknowledged.
    stream_recorded: AtomicU64,
    stop: watch::Sender<bool>,
    driver: Mutex<Option<JoinHandle<()>>>,
    subscriptions: Mutex<Vec<Subscription>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.inner.identity.peer_id())
            .field("data_dir", &self.inner.layout.root())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A builder for a node keeping its files in `data_dir`.
    pub fn builder(data_dir: impl Into<std::path::PathBuf>) -> NodeBuilder {
        NodeBuilder::new(data_dir)
    }

    /// Opens every part (called by [`NodeBuilder::start`]).
    pub(crate) fn open(b: NodeBuilder, identity: Identity) -> Result<Node> {
        let layout = b.layout;
        let mut config = b.config;
        let mut damage = crate::health::StartupDamage::default();
        let (store, health) =
            SledStore::open_checked(&layout.store(), identity.clone(), config.store.clone())?;
        damage.store(health);
        let store = Arc::new(store);
        let (mesh, state) = open_mesh(&identity, &layout, &config);
        let state = Arc::new(state);
        let wake = Arc::new(Notify::new());
        let links = crate::link::Links::open(
            identity.clone(),
            layout.devices(),
            mesh.clone(),
            wake.clone(),
        );
        // Linked devices are own devices for reach, then the relationships set
        // at run time and configured, here and in the blob service.
        let mut configured = config.relationships.clone();
        if configured.remove(&identity.peer_id()).is_some() {
            tracing::warn!("a configured relationship names this node itself; ignored");
        }
        let relations = crate::relations::Relations::open(&store, configured)?;
        config.p2p.trust = crate::link::trust_with_own(
            links.own_set(),
            relations.trust_over(config.p2p.trust.clone()),
        );
        let texts = Texts::open(
            identity.clone(),
            store.clone(),
            mesh.clone(),
            state.clone(),
            wake.clone(),
            config.outbox_max,
            config.key_discovery_timeout,
        )?;
        let blobs = Blobs::open(
            &store,
            mesh.clone(),
            &config.p2p,
            &config,
            b.routing,
            wake.clone(),
        )?;
        let queue =
            crate::health::open_or_replace("queue", &layout.queue(), &mut damage, SyncQueue::open)?;
        let stream = crate::health::open_or_replace(
            "stream",
            &layout.stream(),
            &mut damage,
            DurableStream::open,
        )?;
        crate::health::check_stream(&layout, &stream, &mut damage);
        if damage.store_damaged() {
            damage.find_lost(&store, &stream, &queue)?;
        }
        let stream_recorded = AtomicU64::new(stream.index().head());
        let p2p = P2PStorageAdapter::new(store.clone(), mesh.clone(), config.p2p.clone())
            .with_queue(queue)
            .with_stream(stream);
        let p2p = Arc::new(p2p);
        let front = match b.front {
            Some(factory) => Some(factory(p2p.clone())?),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let sync_capacity = config.sync_events_capacity;
        let inner = Arc::new(Inner {
            identity,
            layout,
            config,
            store,
            mesh,
            p2p,
            front,
            blobs,
            texts,
            links,
            relations,
            refusals: Default::default(),
            state,
            transports: b.transports,
            started: Instant::now(),
            wake,
            writes: crate::watch::PendingWrites::default(),
            sync: Mutex::new(crate::events::SyncTracker::new(sync_capacity)),
            private: crate::private::PrivateState::default(),
            damage,
            stream_recorded,
            stop,
            driver: Mutex::new(None),
            subscriptions: Mutex::new(Vec::new()),
        });
        inner.wire_up();
        // Restricted collections and tokens before any peer is served.
        inner.load_capabilities()?;
        // Encrypted collections' keys before any write (`private.rs`).
        inner.refresh_keys(true)?;
        let task = tokio::spawn(drive(Arc::downgrade(&inner), inner.wake.clone(), stop_rx));
        *lock(&inner.driver) = Some(task);
        tracing::info!(
            peer_id = %inner.identity.peer_id(),
            transports = inner.transports.len(),
            data = %inner.layout.root().display(),
            "node started"
        );
        Ok(Node { inner })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.inner.layout.root()
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Wakes the driving task now (it also runs every [`NodeConfig::tick`]).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Stops the node: the driving task ends after its current pass, the
    /// transports are stopped, the mesh takes in what they last delivered,
    /// and the mesh state and the store are saved. Calling it again does
    /// nothing; other handles see [`SyncError::Stopped`] from nothing but
    /// find the transports stopped.
    pub async fn shutdown(&self) -> Result<()> {
        let task = lock(&self.inner.driver).take();
        let Some(task) = task else {
            return Ok(());
        };
        tracing::info!("shutting down");
        self.inner.stop.send_replace(true);
        if let Err(e) = task.await {
            tracing::error!(error = %e, "the node's driving task failed");
        }
        lock(&self.inner.subscriptions).clear();
        for a in &self.inner.transports {
            if let Err(e) = a.stop().await {
                tracing::warn!(transport = %a.transport_type(), error = %e, "stopping a transport");
            }
        }
        self.inner.mesh.process(now_ms()).await;
        self.inner.state.persist();
        self.inner.store.flush()?;
        tracing::info!("stopped");
        Ok(())
    }

    /// True until [`shutdown`](Self::shutdown) was called.
    pub fn is_running(&self) -> bool {
        lock(&self.inner.driver).is_some()
    }

    pub(crate) fn running(&self) -> Result<()> {
        if self.is_running() {
            Ok(())
        } else {
            Err(SyncError::Stopped)
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// Subscribes to mesh events and transport events, and hands the
    /// transports to the mesh.
    fn wire_up(self: &Arc<Self>) {
        let mut subs = Vec::new();
        let weak = Arc::downgrade(self);
        subs.push(self.mesh.subscribe(Arc::new(move |ev: &MeshEvent| {
            if let Some(n) = weak.upgrade() {
                n.on_event(ev);
            }
        })));
        for a in &self.transports {
            let wake = self.wake.clone();
            subs.push(a.subscribe(Arc::new(move |_| wake.notify_one())));
        }
        *lock(&self.subscriptions) = subs;
        let wake = self.wake.clone();
        let waker: Arc<dyn Fn() + Send + Sync> = Arc::new(move || wake.notify_one());
        self.p2p.set_waker(waker.clone());
        self.blobs.service().set_waker(waker);
        for a in &self.transports {
            self.mesh.add_transport(a.clone());
        }
    }

    /// Handles one mesh event; runs inside `MultiTransportManager::process`.
    fn on_event(&self, ev: &MeshEvent) {
        match ev {
            MeshEvent::Message { message, .. } => {
                if message.message_type == crate::link::LINK_TYPE
                    && message.recipient == Some(self.identity.peer_id())
                {
                    self.links.receive(message.sender, &message.payload);
                }
                if message.message_type == TEXT_TYPE
                    && message.recipient == Some(self.identity.peer_id())
                    && let Err(e) = self.texts.receive(message)
                {
                    tracing::warn!(id = %message.id, from = %message.sender, error = %e, "text not stored");
                }
            }
            MeshEvent::Acked { id, by } => {
                tracing::info!(%id, %by, "delivered");
                self.texts.mark(id, &TextStatus::Delivered);
            }
            MeshEvent::Expired(id) => {
                tracing::warn!(%id, "expired without delivery");
                self.texts.mark(id, &TextStatus::Expired);
            }
            MeshEvent::Evicted(id) if self.texts.is_pending_text(id) => {
                tracing::info!(%id, "text evicted from the mesh buffer; it waits in the outbox");
                self.wake.notify_one();
            }
            MeshEvent::PeerDiscovered(p) => {
                tracing::info!(peer = %p.peer_id, "peer reachable");
                lock(&self.sync).reachable(p.peer_id, true);
            }
            MeshEvent::PeerLost(p) => {
                tracing::info!(peer = %p, "peer unreachable");
                lock(&self.sync).reachable(*p, false);
            }
            MeshEvent::Rejected { from, id } => {
                tracing::warn!(%from, %id, "message with a bad signature rejected");
            }
            MeshEvent::Disconnected(p) => {
                tracing::warn!(peer = %p, "peer disconnected: reputation too low")
            }
            _ => {}
        }
        self.state.mark_dirty();
    }

    /// One pass: mesh, outbox, replication, blobs, then saving what changed.
    async fn pass(&self, next_gc: &mut Instant) {
        let handled = self.mesh.process(now_ms()).await;
        self.texts.feed().await;
        self.links.process().await;
        self.p2p.process(now_ms()).await;
        if let Err(e) = self.refresh_keys(false) {
            tracing::warn!(error = %e, "taking in collection keys");
        }
        self.track_sync();
        self.blobs.service().process(now_ms()).await;
        if Instant::now() >= *next_gc {
            *next_gc = Instant::now() + self.config.blob_gc_interval;
            self.blobs.periodic();
        }
        if handled > 0 || self.state.is_dirty() {
            self.state.persist();
        }
        self.writes.refresh(self.p2p.queue());
        let head = self.p2p.stream_head();
        if self.stream_recorded.swap(head, Ordering::SeqCst) != head {
            crate::health::record_stream_head(&self.layout, head);
        }
    }
}

/// The driving task: a pass on every wake-up and every tick, until stopped
/// or every handle is gone.
async fn drive(inner: Weak<Inner>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let Some(tick) = inner.upgrade().map(|n| n.config.tick) else {
        return;
    };
    let gc_every = inner
        .upgrade()
        .map(|n| n.config.blob_gc_interval)
        .unwrap_or_default();
    let mut tick = tokio::time::interval(tick);
    let mut next_gc = Instant::now() + gc_every;
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
            () = wake.notified() => {}
            _ = tick.tick() => {}
        }
        let Some(node) = inner.upgrade() else { break };
        node.pass(&mut next_gc).await;
    }
}
