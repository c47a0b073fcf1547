//! A primary you can make down, slow or partitioned: a real store behind a
//! switch, and the device side (a sled store under a `P2PStorageAdapter`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use ecomesh_crdt::ManualClock;
use ecomesh_hybrid_storage::{
    HealthConfig, HybridConfig, HybridStorageAdapter, PrimaryStore, Strategy, VersionApplied,
};
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::{MeshConfig, MultiTransportManager};
use ecomesh_p2p_storage::kv::{Backend, MemoryBackend, SledBackend};
use ecomesh_p2p_storage::{MemoryStore, P2PConfig, P2PStorageAdapter, SledStore, StoreConfig};
use ecomesh_types::{
    BatchOperation, BatchResult, BoxFuture, Document, Error, HlcTimestamp, Listener, Map, PeerId,
    Query, QueryPage, SetOptions, StorageAdapter, Subscription, Value, WriteResult,
};

pub const START_MS: u64 = 1_700_000_000_000;
pub const TIMEOUT_MS: u64 = 300;

pub fn identity(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32])
}

pub fn fields(pairs: &[(&str, i64)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::Integer(*v)))
        .collect()
}

/// How the primary behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Answers.
    Up = 0,
    /// Refuses every request at once (connection refused).
    Down = 1,
    /// Never answers (slower than any timeout).
    Slow = 2,
    /// Does the work, but the answer is lost (a partition after the request).
    Partitioned = 3,
}

/// A real store as primary, behind a fault switch.
pub struct FaultyPrimary<B: Backend> {
    pub store: Arc<ecomesh_p2p_storage::Store<B>>,
    fault: AtomicU8,
}

impl<B: Backend> FaultyPrimary<B> {
    pub fn new(store: ecomesh_p2p_storage::Store<B>) -> Arc<Self> {
        Arc::new(FaultyPrimary {
            store: Arc::new(store),
            fault: AtomicU8::new(Fault::Up as u8),
        })
    }

    pub fn set(&self, f: Fault) {
        self.fault.store(f as u8, Ordering::SeqCst);
    }

    fn fault(&self) -> Fault {
        match self.fault.load(Ordering::SeqCst) {
            0 => Fault::Up,
            1 => Fault::Down,
            2 => Fault::Slow,
            _ => Fault::Partitioned,
        }
    }

    /// Runs `work` as the fault allows.
    async fn gate<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match self.fault() {
            Fault::Up => work.await,
            Fault::Down => Err(Error::Closed),
            Fault::Slow => std::future::pending().await,
            Fault::Partitioned => {
                let _ = work.await;
                Err(Error::Closed)
            }
        }
    }
}

impl<B: Backend> StorageAdapter for FaultyPrimary<B> {
    fn get<'a>(
        &'a self,
        c: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, Error>> {
        Box::pin(self.gate(StorageAdapter::get(&*self.store, c, id)))
    }
    fn set<'a>(
        &'a self,
        c: &'a str,
        id: &'a str,
        f: Map,
        o: SetOptions,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(self.gate(StorageAdapter::set(&*self.store, c, id, f, o)))
    }
    fn update<'a>(
        &'a self,
        c: &'a str,
        id: &'a str,
        f: Map,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(self.gate(StorageAdapter::update(&*self.store, c, id, f)))
    }
    fn delete<'a>(&'a self, c: &'a str, id: &'a str) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(self.gate(StorageAdapter::delete(&*self.store, c, id)))
    }
    fn query<'a>(&'a self, c: &'a str, q: &'a Query) -> BoxFuture<'a, Result<QueryPage, Error>> {
        Box::pin(self.gate(StorageAdapter::query(&*self.store, c, q)))
    }
    fn batch_write(&self, ops: Vec<BatchOperation>) -> BoxFuture<'_, Result<BatchResult, Error>> {
        Box::pin(self.gate(StorageAdapter::batch_write(&*self.store, ops)))
    }
    fn subscribe_document(
        &self,
        c: &str,
        id: &str,
        l: Listener<Option<Document>>,
    ) -> Result<Subscription, Error> {
        StorageAdapter::subscribe_document(&*self.store, c, id, l)
    }
    fn subscribe_query(
        &self,
        c: &str,
        q: Query,
        l: Listener<Vec<Document>>,
    ) -> Result<Subscription, Error> {
        StorageAdapter::subscribe_query(&*self.store, c, q, l)
    }
    fn server_timestamp(&self) -> HlcTimestamp {
        self.store.server_timestamp()
    }
    fn generate_id(&self, c: &str) -> String {
        self.store.generate_id(c)
    }
}

impl<B: Backend> PrimaryStore for FaultyPrimary<B> {
    fn apply_versions(&self, v: Vec<Vec<u8>>) -> BoxFuture<'_, Result<Vec<VersionApplied>, Error>> {
        Box::pin(self.gate(self.store.apply_versions(v)))
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.gate(async { Ok(()) }))
    }
}

/// The primary: a memory store of its own identity.
pub fn primary() -> Arc<FaultyPrimary<MemoryBackend>> {
    let clock = Arc::new(ManualClock::new(START_MS));
    FaultyPrimary::new(
        MemoryStore::in_memory(identity(200), StoreConfig::default().with_clock(clock)).unwrap(),
    )
}

/// A device: its data directory, its clock and how to (re)open its adapter.
pub struct Device {
    pub dir: PathBuf,
    pub clock: Arc<ManualClock>,
    pub n: u8,
}

impl Device {
    pub fn new(dir: &Path, n: u8) -> Self {
        Device {
            dir: dir.to_owned(),
            clock: Arc::new(ManualClock::new(START_MS)),
            n,
        }
    }

    /// Opens the device's store and its hybrid adapter (again after a "crash").
    pub fn open(
        &self,
        primary: Arc<dyn PrimaryStore>,
        strategy: Strategy,
    ) -> HybridStorageAdapter<SledBackend> {
        let health = HealthConfig::default().with_request_timeout_ms(TIMEOUT_MS);
        self.open_with(primary, strategy, health, self.clock.clone())
    }

    /// As [`Self::open`] with the health configuration and clock given.
    pub fn open_with(
        &self,
        primary: Arc<dyn PrimaryStore>,
        strategy: Strategy,
        health: HealthConfig,
        clock: Arc<dyn ecomesh_crdt::PhysicalClock + Send + Sync>,
    ) -> HybridStorageAdapter<SledBackend> {
        let store = SledStore::open(
            &self.dir.join("store"),
            identity(self.n),
            StoreConfig::default().with_clock(self.clock.clone()),
        )
        .unwrap();
        let keys: Arc<BTreeMap<PeerId, PublicKey>> = Arc::default();
        let mesh = Arc::new(MultiTransportManager::new(
            identity(self.n),
            keys,
            MeshConfig::default(),
        ));
        let local = Arc::new(P2PStorageAdapter::new(
            Arc::new(store),
            mesh,
            P2PConfig::default(),
        ));
        let config = HybridConfig::new(strategy).with_health(health);
        HybridStorageAdapter::new(primary, local, &self.dir.join("queue"), config, clock).unwrap()
    }
}

/// The CIDs of a document's versions on a store, in history order.
pub fn history<B: Backend>(
    store: &ecomesh_p2p_storage::Store<B>,
    c: &str,
    id: &str,
) -> Vec<Vec<u8>> {
    store
        .history(c, id)
        .unwrap()
        .into_iter()
        .map(|v| v.cid.0)
        .collect()
}
