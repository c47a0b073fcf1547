//! [`HybridStorageAdapter`]: a primary store with the peer-to-peer store as
//! fallback, its strategies, the replay of queued writes and its events.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ecomesh_crdt::PhysicalClock;
use ecomesh_p2p_storage::P2PStorageAdapter;
use ecomesh_p2p_storage::kv::Backend;
use ecomesh_types::{
    BatchOperation, BatchResult, BoxFuture, ContentId, Document, Error, HlcTimestamp, Listener,
    Map, Query, QueryPage, SetOptions, StorageAdapter, Subscription, WriteResult,
};

use crate::HybridError;
use crate::health::{Health, HealthConfig, PrimaryHealth, SyncMode, Transition};
use crate::primary::{MAX_BATCH, PrimaryStore, VersionApplied};
use crate::queue::ReplayQueue;

/// Most events kept for [`HybridStorageAdapter::drain_events`]; older ones
/// are dropped and counted.
pub const MAX_EVENTS: usize = 4096;

/// Most rounds of "send the missing parents first" in one replay.
const MAX_PARENT_ROUNDS: usize = 256;

/// How reads and writes use the primary (seed 000 §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// `primary-with-offline-fallback`. **Promises:** while the primary is
    /// healthy, reads come from the primary (unless this device has writes the
    /// primary has not acknowledged, which are read locally so a device always
    /// reads its own writes) and a write returns after the primary merged it;
    /// when the primary is down, slow past the request timeout or stale, reads
    /// come from the local store (with what peers replicated) and writes commit
    /// locally and wait in the durable queue, replayed in order, exactly once,
    /// when the primary answers again. A write waits for the primary at most
    /// the request timeout; past it the write returns, queued, and the primary
    /// counts as down. **Stops at:** a read during an outage
    /// can be older than the primary (whatever the primary received from
    /// others meanwhile is not here), and a write is acknowledged by the
    /// primary only when it is healthy: during an outage it is durable on this
    /// device alone (and on the peers it reaches).
    PrimaryWithOfflineFallback,
    /// Local first with primary sync. **Promises:** reads and writes never wait
    /// for the primary: they are served by the local store, and every write is
    /// queued durably and replayed to the primary in order, exactly once, on
    /// the sync interval and whenever the primary returns. **Stops at:** the
    /// primary lags this device by up to one sync interval (30 s by default)
    /// plus any outage, and reads do not see what reached the primary from
    /// other devices unless it also came by peer-to-peer replication.
    LocalFirstWithPrimarySync,
}

/// Where a read was served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadSource {
    /// The primary answered.
    Primary,
    /// The local store answered (it holds what peers replicated, and fetches
    /// a missing document from connected peers).
    Local,
}

/// A read's result with its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    /// What was read.
    pub value: T,
    /// Where it came from.
    pub source: ReadSource,
}

/// What the adapter reports (drained by [`HybridStorageAdapter::drain_events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HybridEvent {
    /// The primary answered after being down, stale or never contacted.
    PrimaryUp {
        /// When (ms).
        at_ms: u64,
    },
    /// A request to the primary failed or timed out.
    PrimaryDown {
        /// When (ms).
        at_ms: u64,
    },
    /// A replayed version was concurrent with writes the primary got from
    /// elsewhere; the CRDT merge resolved it (a sync conflict, resolved).
    Conflict {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// The replayed version.
        cid: ContentId,
    },
    /// The primary refused a version; it left the queue.
    Refused {
        /// The version.
        cid: ContentId,
        /// The primary's reason.
        reason: String,
    },
    /// The queue emptied.
    Replayed {
        /// Versions the primary merged or already held during this replay.
        versions: usize,
        /// When (ms).
        at_ms: u64,
    },
}

/// Configuration of a [`HybridStorageAdapter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HybridConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// Intervals and timeouts.
    pub health: HealthConfig,
}

impl HybridConfig {
    /// The strategy with seed 004's intervals.
    pub fn new(strategy: Strategy) -> Self {
        HybridConfig {
            strategy,
            health: HealthConfig::default(),
        }
    }

    /// Sets the health configuration.
    #[must_use]
    pub fn with_health(mut self, health: HealthConfig) -> Self {
        self.health = health;
        self
    }
}

/// What `status` shows about the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HybridStatus {
    /// The primary's health.
    pub health: PrimaryHealth,
    /// The mode.
    pub mode: SyncMode,
    /// When the queue was last replayed completely (ms).
    pub last_sync_ms: Option<u64>,
    /// When the primary last answered (ms).
    pub last_ok_ms: Option<u64>,
    /// Writes waiting for the primary.
    pub queued: usize,
    /// Reads (`get` and `query`) the primary answered since the adapter was built.
    pub reads_primary: u64,
    /// Reads the local store answered since the adapter was built (the
    /// strategy reads locally, or the primary was away or too slow).
    pub reads_local: u64,
}

/// What one replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Queued versions the primary merged now.
    pub applied: usize,
    /// Queued versions it already held (replayed again after a lost answer).
    pub already_present: usize,
    /// Ancestors sent first because the primary lacked them.
    pub parents_sent: usize,
    /// Conflicts reported.
    pub conflicts: usize,
    /// Versions the primary refused.
    pub refused: usize,
    /// Requests made.
    pub requests: usize,
}

/// A primary [`PrimaryStore`] with a [`P2PStorageAdapter`] as fallback; see
/// [`Strategy`] for what each strategy promises. Every write commits locally
/// first (a signed version node with its CID); its CID goes into a durable
/// [`ReplayQueue`], and the primary receives the very same version node, so
/// its merge is the CRDT merge and a second delivery is a no-op.
pub struct HybridStorageAdapter<B: Backend> {
    primary: Arc<dyn PrimaryStore>,
    local: Arc<P2PStorageAdapter<B>>,
    queue: ReplayQueue,
    health: Mutex<Health>,
    clock: Arc<dyn PhysicalClock + Send + Sync>,
    strategy: Strategy,
    replay_lock: tokio::sync::Mutex<()>,
    events: Mutex<(VecDeque<HybridEvent>, u64)>,
    listener: Mutex<Option<EventListener>>,
    reads: [AtomicU64; 2],
}

/// A callback [`HybridStorageAdapter::set_listener`] installs.
pub type EventListener = Arc<dyn Fn(&HybridEvent) + Send + Sync>;

impl<B: Backend> std::fmt::Debug for HybridStorageAdapter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridStorageAdapter")
            .field("strategy", &self.strategy)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: Backend> HybridStorageAdapter<B> {
    /// Builds the adapter, opening (or creating) the replay queue in the
    /// directory `queue_dir`; writes queued before a crash are still there.
    /// `clock` gives milliseconds for the health model.
    pub fn new(
        primary: Arc<dyn PrimaryStore>,
        local: Arc<P2PStorageAdapter<B>>,
        queue_dir: &Path,
        config: HybridConfig,
        clock: Arc<dyn PhysicalClock + Send + Sync>,
    ) -> Result<Self, HybridError> {
        Ok(HybridStorageAdapter {
            primary,
            local,
            queue: ReplayQueue::open(queue_dir)?,
            health: Mutex::new(Health::new(config.health)),
            clock,
            strategy: config.strategy,
            replay_lock: tokio::sync::Mutex::new(()),
            events: Mutex::new((VecDeque::new(), 0)),
            listener: Mutex::new(None),
            reads: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// The local (peer-to-peer) side.
    pub fn local(&self) -> &Arc<P2PStorageAdapter<B>> {
        &self.local
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Writes waiting for the primary.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The status with `peers` connected peers.
    pub fn status(&self, peers: usize) -> HybridStatus {
        let now = self.clock.now_ms();
        let h = lock(&self.health);
        HybridStatus {
            health: h.state(now),
            mode: h.mode(now, peers),
            last_sync_ms: h.last_sync_ms(),
            last_ok_ms: h.last_ok_ms(),
            queued: self.queue.len(),
            reads_primary: self.reads[0].load(Ordering::Relaxed),
            reads_local: self.reads[1].load(Ordering::Relaxed),
        }
    }

    /// Calls `listener` with every event from now on, as it happens (on the
    /// task that caused it: keep it short, and never call back into the
    /// adapter from it). The events also stay queued for
    /// [`Self::drain_events`]. Replaces an earlier listener.
    pub fn set_listener(&self, listener: EventListener) {
        *lock(&self.listener) = Some(listener);
    }

    /// Queues the versions of writes committed on the local store beside the
    /// adapter (field operations, restores), as the adapter's own writes
    /// are: durably, and under [`Strategy::PrimaryWithOfflineFallback`] with
    /// a usable primary replayed at once.
    ///
    /// # Errors
    /// The queue could not be written.
    pub async fn record_local_writes(&self, results: &[WriteResult]) -> Result<(), Error> {
        self.after_local_write(results).await
    }

    fn count_read(&self, source: ReadSource) {
        let i = usize::from(source != ReadSource::Primary);
        self.reads[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The events since the last call, oldest first, and how many were
    /// dropped because more than [`MAX_EVENTS`] piled up.
    pub fn drain_events(&self) -> (Vec<HybridEvent>, u64) {
        let mut e = lock(&self.events);
        let dropped = std::mem::take(&mut e.1);
        (e.0.drain(..).collect(), dropped)
    }

    fn emit(&self, event: HybridEvent) {
        let listener = lock(&self.listener).clone();
        if let Some(l) = listener {
            l(&event);
        }
        let mut e = lock(&self.events);
        if e.0.len() >= MAX_EVENTS {
            e.0.pop_front();
            e.1 += 1;
        }
        e.0.push_back(event);
    }

    fn note(&self, transition: Option<Transition>, now: u64) {
        match transition {
            Some(Transition::Up) => {
                tracing::info!("primary is up");
                self.emit(HybridEvent::PrimaryUp { at_ms: now });
            }
            Some(Transition::Down) => {
                tracing::warn!("primary is down; writes are queued");
                self.emit(HybridEvent::PrimaryDown { at_ms: now });
            }
            None => {}
        }
    }

    fn succeeded(&self) {
        let now = self.clock.now_ms();
        let t = lock(&self.health).on_success(now);
        self.note(t, now);
    }

    fn failed(&self) {
        let now = self.clock.now_ms();
        let t = lock(&self.health).on_failure(now);
        self.note(t, now);
    }

    fn primary_usable(&self) -> bool {
        lock(&self.health).state(self.clock.now_ms()).usable()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(lock(&self.health).config().request_timeout_ms)
    }

    /// Runs `fut` against the primary under the request timeout, updating the
    /// health model with its outcome.
    async fn on_primary<T>(&self, fut: BoxFuture<'_, Result<T, Error>>) -> Result<T, HybridError> {
        let limit = self.timeout();
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                tracing::debug!("primary request failed: {e}");
                self.failed();
                Err(HybridError::Primary(e))
            }
            Err(_) => {
                self.failed();
                Err(HybridError::Timeout(
                    u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                ))
            }
        }
    }

    /// Whether a read goes to the primary now.
    fn read_from_primary(&self) -> bool {
        self.strategy == Strategy::PrimaryWithOfflineFallback
            && self.queue.is_empty()
            && self.primary_usable()
    }

    /// Reads a document, saying where the answer came from: the primary while
    /// the strategy reads from it and it answers in time, the local store
    /// otherwise.
    pub async fn get_sourced(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Sourced<Option<Document>>, Error> {
        if self.read_from_primary()
            && let Ok(value) = self.on_primary(self.primary.get(collection, id)).await
        {
            self.count_read(ReadSource::Primary);
            return Ok(Sourced {
                value,
                source: ReadSource::Primary,
            });
        }
        let value = self.local.get(collection, id).await?;
        self.count_read(ReadSource::Local);
        Ok(Sourced {
            value,
            source: ReadSource::Local,
        })
    }

    /// Runs a query, saying where the answer came from (as [`Self::get_sourced`]).
    pub async fn query_sourced(
        &self,
        collection: &str,
        query: &Query,
    ) -> Result<Sourced<QueryPage>, Error> {
        if self.read_from_primary()
            && let Ok(value) = self.on_primary(self.primary.query(collection, query)).await
        {
            self.count_read(ReadSource::Primary);
            return Ok(Sourced {
                value,
                source: ReadSource::Primary,
            });
        }
        let value = self.local.query(collection, query).await?;
        self.count_read(ReadSource::Local);
        Ok(Sourced {
            value,
            source: ReadSource::Local,
        })
    }

    /// Queues the versions of a local write and, under
    /// [`Strategy::PrimaryWithOfflineFallback`] with a usable primary,
    /// replays at once (the write's own version included).
    async fn after_local_write(&self, results: &[WriteResult]) -> Result<(), Error> {
        let cids: Vec<ContentId> = results.iter().filter_map(|r| r.version.clone()).collect();
        self.queue.push(&cids)?;
        if self.strategy == Strategy::PrimaryWithOfflineFallback
            && self.primary_usable()
            && let Err(e) = self.replay().await
        {
            tracing::debug!("write stays queued: {e}");
        }
        Ok(())
    }

    /// Pings the primary (the heartbeat) and replays the queue when the
    /// primary just came back. Returns the health afterwards.
    pub async fn heartbeat(&self) -> PrimaryHealth {
        let was_usable = lock(&self.health).state(self.clock.now_ms()) == PrimaryHealth::Healthy;
        let ok = self.on_primary(self.primary.ping()).await.is_ok();
        if ok
            && !was_usable
            && !self.queue.is_empty()
            && let Err(e) = self.replay().await
        {
            tracing::debug!("replay after the primary's return failed: {e}");
        }
        lock(&self.health).state(self.clock.now_ms())
    }

    /// One step of the driver: a heartbeat when due, and a replay when the
    /// sync interval passed and writes wait. Returns the milliseconds until
    /// the next step is due.
    pub async fn tick(&self) -> u64 {
        let now = self.clock.now_ms();
        let beat = lock(&self.health).take_heartbeat(now);
        if beat {
            self.heartbeat().await;
        }
        let now = self.clock.now_ms();
        let sync = {
            let h = lock(&self.health);
            h.state(now) == PrimaryHealth::Healthy && h.sync_due(now)
        };
        if sync {
            // An empty queue is a sync too: the primary holds every write.
            if let Err(e) = self.replay().await {
                tracing::debug!("periodic replay failed: {e}");
            }
        }
        lock(&self.health).until_next_heartbeat(self.clock.now_ms())
    }

    /// Sends the queued versions to the primary, oldest first, in batches of
    /// at most [`MAX_BATCH`]; a version leaves the queue only after the
    /// primary merged it or said it already had it, so a replay interrupted by
    /// a crash or a lost answer is simply run again. Ancestors the primary
    /// lacks (versions that came from peers) are sent first.
    pub async fn replay(&self) -> Result<ReplayReport, HybridError> {
        let _guard = self.replay_lock.lock().await;
        let started = Instant::now();
        let mut report = ReplayReport::default();
        let mut parent_rounds = 0;
        loop {
            let entries = self.queue.peek(MAX_BATCH)?;
            if entries.is_empty() {
                break;
            }
            let mut seqs = Vec::with_capacity(entries.len());
            let mut bytes = Vec::with_capacity(entries.len());
            let mut sent = Vec::with_capacity(entries.len());
            let mut gone = Vec::new();
            for (seq, cid) in entries {
                match self.local.store().version_bytes(&cid)? {
                    Some(b) => {
                        seqs.push(seq);
                        bytes.push(b);
                        sent.push(cid);
                    }
                    None => {
                        tracing::warn!("queued version {cid:?} is no longer stored; dropped");
                        gone.push(seq);
                    }
                }
            }
            self.queue.remove(&gone)?;
            if bytes.is_empty() {
                continue;
            }
            report.requests += 1;
            let outcomes = self.on_primary(self.primary.apply_versions(bytes)).await?;
            let mut done = Vec::new();
            let mut missing = Vec::new();
            for ((seq, cid), outcome) in seqs.iter().zip(&sent).zip(outcomes) {
                match outcome {
                    VersionApplied::Applied { concurrent } => {
                        report.applied += 1;
                        if concurrent {
                            report.conflicts += 1;
                            self.conflict(cid);
                        }
                        done.push(*seq);
                    }
                    VersionApplied::AlreadyPresent => {
                        report.already_present += 1;
                        done.push(*seq);
                    }
                    VersionApplied::MissingParents(p) => missing.extend(p),
                    VersionApplied::Refused(reason) => {
                        tracing::warn!("primary refused {cid:?}: {reason}");
                        report.refused += 1;
                        self.emit(HybridEvent::Refused {
                            cid: cid.clone(),
                            reason,
                        });
                        done.push(*seq);
                    }
                    // Future outcomes: keep the entry and try again later.
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            }
            self.queue.remove(&done)?;
            if !missing.is_empty() {
                parent_rounds += 1;
                if parent_rounds > MAX_PARENT_ROUNDS {
                    return Err(HybridError::Primary(Error::InvalidArgument(
                        "too many rounds of missing parents".into(),
                    )));
                }
                report.parents_sent += self.send_ancestors(missing, &mut report).await?;
            } else if done.len() < seqs.len() {
                // Nothing missing yet entries left: an outcome this version
                // does not know; stop rather than loop.
                break;
            }
        }
        let now = self.clock.now_ms();
        lock(&self.health).on_synced(now);
        let versions = report.applied + report.already_present;
        tracing::debug!(
            versions,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replayed the queue"
        );
        if versions > 0 {
            self.emit(HybridEvent::Replayed {
                versions,
                at_ms: now,
            });
        }
        Ok(report)
    }

    fn conflict(&self, cid: &ContentId) {
        let node = self.local.store().version(cid).ok().flatten();
        let (collection, id) = node.map(|n| (n.collection, n.id)).unwrap_or_default();
        tracing::info!("conflict on {collection}/{id} resolved by merge");
        self.emit(HybridEvent::Conflict {
            collection,
            id,
            cid: cid.clone(),
        });
    }

    /// Sends versions the primary lacks, and their own missing ancestors,
    /// until it holds them all; how many were merged.
    async fn send_ancestors(
        &self,
        mut want: Vec<ContentId>,
        report: &mut ReplayReport,
    ) -> Result<usize, HybridError> {
        let mut merged = 0;
        for _ in 0..MAX_PARENT_ROUNDS {
            let mut seen = std::collections::BTreeSet::new();
            want.retain(|c| seen.insert(c.clone()));
            want.truncate(MAX_BATCH);
            if want.is_empty() {
                return Ok(merged);
            }
            let mut bytes = Vec::with_capacity(want.len());
            for cid in &want {
                match self.local.store().version_bytes(cid)? {
                    Some(b) => bytes.push(b),
                    None => {
                        return Err(HybridError::Primary(Error::InvalidArgument(format!(
                            "the primary lacks {cid:?}, which this device does not hold"
                        ))));
                    }
                }
            }
            report.requests += 1;
            let outcomes = self.on_primary(self.primary.apply_versions(bytes)).await?;
            let mut next = Vec::new();
            let mut retry = Vec::new();
            for (cid, outcome) in want.iter().zip(outcomes) {
                match outcome {
                    VersionApplied::MissingParents(p) => {
                        next.extend(p);
                        retry.push(cid.clone());
                    }
                    VersionApplied::Applied { .. } | VersionApplied::AlreadyPresent => merged += 1,
                    _ => {}
                }
            }
            // Deepest first: the parents, then the ones that waited for them.
            next.extend(retry);
            want = next;
        }
        Ok(merged)
    }
}

impl<B: Backend> StorageAdapter for HybridStorageAdapter<B> {
    fn get<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, Error>> {
        Box::pin(async move { Ok(self.get_sourced(collection, id).await?.value) })
    }

    fn set<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
        options: SetOptions,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move {
            let r = self.local.set(collection, id, fields, options).await?;
            self.after_local_write(std::slice::from_ref(&r)).await?;
            Ok(r)
        })
    }

    fn update<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move {
            let r = self.local.update(collection, id, fields).await?;
            self.after_local_write(std::slice::from_ref(&r)).await?;
            Ok(r)
        })
    }

    fn delete<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move {
            let r = self.local.delete(collection, id).await?;
            self.after_local_write(std::slice::from_ref(&r)).await?;
            Ok(r)
        })
    }

    fn query<'a>(
        &'a self,
        collection: &'a str,
        query: &'a Query,
    ) -> BoxFuture<'a, Result<QueryPage, Error>> {
        Box::pin(async move { Ok(self.query_sourced(collection, query).await?.value) })
    }

    fn batch_write(
        &self,
        operations: Vec<BatchOperation>,
    ) -> BoxFuture<'_, Result<BatchResult, Error>> {
        Box::pin(async move {
            let r = self.local.batch_write(operations).await?;
            self.after_local_write(&r.results).await?;
            Ok(r)
        })
    }

    /// Watches the local copy (the primary's changes arrive here only through
    /// peer-to-peer replication).
    fn subscribe_document(
        &self,
        collection: &str,
        id: &str,
        listener: Listener<Option<Document>>,
    ) -> Result<Subscription, Error> {
        self.local.subscribe_document(collection, id, listener)
    }

    /// Watches a query over the local copy (as [`Self::subscribe_document`]).
    fn subscribe_query(
        &self,
        collection: &str,
        query: Query,
        listener: Listener<Vec<Document>>,
    ) -> Result<Subscription, Error> {
        self.local.subscribe_query(collection, query, listener)
    }

    fn server_timestamp(&self) -> HlcTimestamp {
        self.local.server_timestamp()
    }

    fn generate_id(&self, collection: &str) -> String {
        self.local.generate_id(collection)
    }
}
