//! The running node: store, mesh manager, wired transport, mDNS and the control socket.
//!
//! Durability: a received text is written to the store (flushed) inside the
//! mesh's delivery callback, before the mesh sends its ACK, so an acknowledged
//! message is never lost by a crash of the receiver. A sent text is written to
//! the outbox before it is handed to the mesh, and the mesh's buffer and
//! pending ACKs are saved after every send and every batch of transport
//! events, so a crash of the sender loses no queued message either.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use ecomesh_identity::sealed::{open_signed, seal_signed};
use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_mesh::ack::PendingAcks;
use ecomesh_mesh::buffer::StoreBuffer;
use ecomesh_mesh::{MAX_LEARNED_KEYS, MeshConfig, MeshEvent, MultiTransportManager, SendOutcome};
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_p2p_storage::{P2PConfig, P2PStorageAdapter, SledStore, StoreConfig};
use ecomesh_replication::queue::SyncQueue;
use ecomesh_replication::stream::{DurableStream, EventKind, MAX_DELTA, Source};
use ecomesh_transport_wired::{LinkConfig, MdnsDiscovery, WiredConfig, WiredTransport};
use ecomesh_types::{
    Map, NetworkMessage, PeerId, Priority, SetOptions, StorageAdapter, Subscription,
    TransportAdapter, Value,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::control::{
    ChangeRow, DocRow, InboxRow, MAX_REQUEST, MAX_TEXT, OutboxRow, PeerRow, Request, Response,
    Status,
};
use crate::paths::DataDir;

/// The message type of a sealed text between two nodes.
pub const TEXT_TYPE: &str = "ecomesh/text";
/// The default TCP port of the wired transport.
pub const DEFAULT_PORT: u16 = 7733;
/// Local collections (the `_` prefix keeps them off the network).
const INBOX: &str = "_inbox";
const OUTBOX: &str = "_outbox";

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Address the wired transport listens on.
    pub listen: SocketAddr,
    /// Addresses dialled at start and redialled whenever their link drops.
    pub peers: Vec<SocketAddr>,
    /// Announce and browse with mDNS.
    pub mdns: bool,
    /// Restrict mDNS to the interface of this address.
    pub mdns_ip: Option<IpAddr>,
    /// Which authenticated peers may connect.
    pub policy: AccessPolicy,
    /// Keepalive interval and timeout of wired links.
    pub keepalive: Duration,
    /// Longest delay between redials of a lost peer.
    pub redial_max: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            peers: Vec::new(),
            mdns: true,
            mdns_ip: None,
            policy: AccessPolicy::Open,
            keepalive: Duration::from_secs(15),
            redial_max: Duration::from_secs(30),
        }
    }
}

/// Creates the data directory and a new identity; refuses to replace an existing one.
pub fn init(data: &DataDir) -> Result<PeerId> {
    let path = data.identity();
    if path.exists() {
        let existing = Identity::load(&path)
            .map(|i| i.peer_id().to_string())
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        bail!(
            "{} is already initialised (identity {existing}); \
             keep using it, or pass another --data directory for a new node",
            data.root().display()
        );
    }
    data.create()?;
    let id = Identity::generate().context("generating a key")?;
    id.save(&path)
        .with_context(|| format!("saving the identity to {}", path.display()))?;
    Ok(id.peer_id())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn doc_row(d: ecomesh_types::Document) -> Result<DocRow> {
    let json = ecomesh_wire::to_dag_json(&Value::Map(d.fields))?;
    Ok(DocRow {
        collection: d.collection,
        id: d.id,
        fields: serde_json::from_str(&json)?,
    })
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, directory fsync).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Moves an unreadable state file aside (nothing is deleted) so the node can start.
fn quarantine(path: &Path, why: &dyn std::fmt::Display) {
    let aside = path.with_extension(format!("corrupt-{}", now_ms()));
    tracing::error!(file = %path.display(), moved_to = %aside.display(), error = %why,
        "state file unreadable; moved aside, starting without it");
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::error!(error = %e, "could not move the unreadable file aside");
    }
}

fn load_keys(path: &Path) -> Vec<PublicKey> {
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

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Text(t)) => t.clone(),
        _ => String::new(),
    }
}

fn int(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Integer(i)) => u64::try_from(*i).unwrap_or(0),
        _ => 0,
    }
}

fn ms(v: u64) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The state shared by the node's tasks.
struct Node {
    identity: Identity,
    data: DataDir,
    store: Arc<SledStore>,
    mesh: Arc<MultiTransportManager>,
    p2p: P2PStorageAdapter<SledBackend>,
    wired: WiredTransport,
    started: Instant,
    dirty: AtomicBool,
    saved_keys: AtomicUsize,
    persist_lock: Mutex<()>,
    wake: Notify,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.identity.peer_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Saves the mesh buffer, pending ACKs and (when grown) the learned keys.
    fn persist(&self) {
        let _g = self.persist_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.dirty.store(false, Ordering::SeqCst);
        if let Err(e) = self.mesh.save_buffer(&self.data.buffer()) {
            tracing::error!(error = %e, "saving the store-and-forward buffer failed");
            self.dirty.store(true, Ordering::SeqCst);
        }
        if let Err(e) = self.mesh.save_pending(&self.data.pending()) {
            tracing::error!(error = %e, "saving the pending ACKs failed");
            self.dirty.store(true, Ordering::SeqCst);
        }
        let keys = self.mesh.learned_keys();
        if keys.len() != self.saved_keys.load(Ordering::SeqCst) {
            let bytes: Vec<u8> = keys.iter().flat_map(PublicKey::to_bytes).collect();
            match write_atomic(&self.data.known_keys(), &bytes) {
                Ok(()) => self.saved_keys.store(keys.len(), Ordering::SeqCst),
                Err(e) => tracing::error!(error = %e, "saving known keys failed"),
            }
        }
    }

    /// Handles one mesh event; runs inside `MultiTransportManager::process`.
    fn on_event(&self, ev: &MeshEvent) {
        match ev {
            MeshEvent::Message { message, .. } => {
                if message.message_type == TEXT_TYPE
                    && message.recipient == Some(self.identity.peer_id())
                    && let Err(e) = self.receive_text(message)
                {
                    tracing::warn!(id = %message.id, from = %message.sender, error = %e, "text not stored");
                }
            }
            MeshEvent::Acked { id, by } => {
                tracing::info!(%id, %by, "delivered");
                self.mark(&id.to_string(), "delivered");
            }
            MeshEvent::Expired(id) => {
                tracing::warn!(%id, "expired without delivery");
                self.mark(&id.to_string(), "expired");
            }
            MeshEvent::PeerDiscovered(p) => tracing::info!(peer = %p.peer_id, "peer reachable"),
            MeshEvent::PeerLost(p) => tracing::info!(peer = %p, "peer unreachable"),
            MeshEvent::Rejected { from, id } => {
                tracing::warn!(%from, %id, "message with a bad signature rejected");
            }
            MeshEvent::Disconnected(p) => {
                tracing::warn!(peer = %p, "peer disconnected: reputation too low")
            }
            _ => {}
        }
        self.dirty.store(true, Ordering::SeqCst);
    }

    fn receive_text(&self, m: &NetworkMessage) -> Result<()> {
        let id = m.id.to_string();
        if self.store.get(INBOX, &id)?.is_some() {
            return Ok(());
        }
        let (key, plain) = open_signed(&self.identity, &m.payload)?;
        if key.peer_id() != m.sender {
            bail!("sealed by {} but sent by {}", key.peer_id(), m.sender);
        }
        let text = String::from_utf8(plain).map_err(|_| anyhow!("text is not UTF-8"))?;
        let mut f = Map::new();
        f.insert("from".into(), Value::Text(m.sender.to_string()));
        f.insert("text".into(), Value::Text(text));
        f.insert("sent_ms".into(), ms(m.timestamp_ms));
        f.insert("received_ms".into(), ms(now_ms()));
        self.store.set(INBOX, &id, f, SetOptions::default())?;
        tracing::info!(%id, from = %m.sender, "message received");
        Ok(())
    }

    fn mark(&self, id: &str, status: &str) {
        let mut f = Map::new();
        f.insert("status".into(), Value::Text(status.into()));
        match self.store.get(OUTBOX, id) {
            Ok(Some(_)) => {
                if let Err(e) = self.store.update(OUTBOX, id, f) {
                    tracing::error!(%id, error = %e, "outbox not updated");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(%id, error = %e, "outbox unreadable"),
        }
    }

    async fn handle(&self, req: Request) -> Response {
        let r = match req {
            Request::Status => self.status().map(Response::Status),
            Request::Peers => Ok(Response::Peers {
                peers: self.peers(),
            }),
            Request::Send { peer, text } => self.send(&peer, text).await,
            Request::Inbox => self.inbox().map(|messages| Response::Inbox { messages }),
            Request::Outbox => self.outbox().map(|messages| Response::Outbox { messages }),
            Request::DocPut {
                collection,
                id,
                json,
                merge,
            } => self.doc_put(&collection, &id, &json, merge).await,
            Request::DocGet { collection, id } => StorageAdapter::get(&self.p2p, &collection, &id)
                .await
                .map_err(Into::into)
                .and_then(|d| d.into_iter().map(doc_row).collect())
                .map(|documents| Response::Documents { documents }),
            Request::DocDelete { collection, id } => {
                StorageAdapter::delete(&self.p2p, &collection, &id)
                    .await
                    .map_err(Into::into)
                    .and_then(|w| self.written(&w))
            }
            Request::Changes { since, limit } => Ok(self.changes(since, limit)),
            Request::DocList { collection } => self
                .store
                .scan_collection(&collection)
                .map_err(Into::into)
                .and_then(|docs| docs.into_iter().map(doc_row).collect())
                .map(|documents| Response::Documents { documents }),
        };
        r.unwrap_or_else(|e| Response::Error {
            message: format!("{e:#}"),
        })
    }

    async fn doc_put(
        &self,
        collection: &str,
        id: &str,
        json: &str,
        merge: bool,
    ) -> Result<Response> {
        if collection.is_empty() || id.is_empty() {
            bail!("collection and id must not be empty");
        }
        let fields = match ecomesh_wire::from_dag_json(json).map_err(|e| {
            anyhow!("the fields are not valid JSON ({e}); pass an object like '{{\"name\":\"x\"}}'")
        })? {
            Value::Map(m) => m,
            _ => bail!("the fields must be a JSON object, like '{{\"name\":\"x\"}}'"),
        };
        let options = if merge {
            SetOptions::MERGE
        } else {
            SetOptions::REPLACE
        };
        let w = StorageAdapter::set(&self.p2p, collection, id, fields, options).await?;
        self.written(&w)
    }

    fn written(&self, w: &ecomesh_types::WriteResult) -> Result<Response> {
        let text = |c: &ecomesh_types::ContentId| {
            ecomesh_wire::from_content_id(c)
                .map(|c| ecomesh_wire::cid_to_text(&c))
                .unwrap_or_default()
        };
        Ok(Response::Written {
            version: w.version.as_ref().map(text).unwrap_or_default(),
            root_cid: text(&self.store.root_cid()?),
        })
    }

    fn status(&self) -> Result<Status> {
        let outbox = self.outbox()?;
        let delivered = outbox.iter().filter(|m| m.status == "delivered").count();
        let root = self.store.root_cid()?;
        Ok(Status {
            peer_id: self.identity.peer_id().to_string(),
            data_dir: self.data.root().display().to_string(),
            listen: self.wired.local_addr().map(|a| a.to_string()),
            transports: self
                .mesh
                .active_transports()
                .iter()
                .map(ToString::to_string)
                .collect(),
            peers: self.mesh.peers().len(),
            buffered: self.mesh.buffered(),
            sync_pending: self.p2p.queued(),
            inbox: self.store.scan_collection(INBOX)?.len(),
            delivered,
            undelivered: outbox.len() - delivered,
            root_cid: ecomesh_wire::from_content_id(&root)
                .map(|c| ecomesh_wire::cid_to_text(&c))
                .unwrap_or_default(),
            replicated_root: ecomesh_wire::from_content_id(&self.p2p.replicated_root()?)
                .map(|c| ecomesh_wire::cid_to_text(&c))
                .unwrap_or_default(),
            uptime_secs: self.started.elapsed().as_secs(),
            stream_head: self.p2p.stream_head(),
        })
    }

    fn changes(&self, since: u64, limit: usize) -> Response {
        let page = self.p2p.changes_since(since, limit.clamp(1, MAX_DELTA));
        let entries = page
            .entries
            .into_iter()
            .map(|e| {
                let (collection, id) = match self.store.version(&e.id) {
                    Ok(Some(v)) => (v.collection, v.id),
                    _ => (String::new(), String::new()),
                };
                ChangeRow {
                    position: e.position,
                    kind: match e.kind {
                        EventKind::Local => "local",
                        EventKind::New => "new",
                        EventKind::Backfill => "backfill",
                        EventKind::Outlier => "outlier",
                    }
                    .into(),
                    source: match e.source {
                        Source::Local => "local".into(),
                        Source::Remote(p) => p.to_string(),
                    },
                    version: ecomesh_wire::from_content_id(&e.id)
                        .map(|c| ecomesh_wire::cid_to_text(&c))
                        .unwrap_or_default(),
                    collection,
                    id,
                }
            })
            .collect();
        Response::Changes {
            entries,
            next: page.next,
            more: page.more,
        }
    }

    fn peers(&self) -> Vec<PeerRow> {
        self.mesh
            .peers()
            .into_iter()
            .map(|p| PeerRow {
                peer_id: p.peer_id.to_string(),
                transports: p.transports.iter().map(ToString::to_string).collect(),
                address: match p.metadata.get("address") {
                    Some(Value::Text(a)) => Some(a.clone()),
                    _ => None,
                },
                reputation: p.reputation,
            })
            .collect()
    }

    fn inbox(&self) -> Result<Vec<InboxRow>> {
        let mut rows: Vec<InboxRow> = self
            .store
            .scan_collection(INBOX)?
            .into_iter()
            .map(|d| InboxRow {
                from: text(d.fields.get("from")),
                text: text(d.fields.get("text")),
                sent_ms: int(d.fields.get("sent_ms")),
                received_ms: int(d.fields.get("received_ms")),
                id: d.id,
            })
            .collect();
        rows.sort_by(|a, b| a.received_ms.cmp(&b.received_ms).then(a.id.cmp(&b.id)));
        Ok(rows)
    }

    fn outbox(&self) -> Result<Vec<OutboxRow>> {
        let mut rows: Vec<OutboxRow> = self
            .store
            .scan_collection(OUTBOX)?
            .into_iter()
            .map(|d| OutboxRow {
                to: text(d.fields.get("to")),
                text: text(d.fields.get("text")),
                sent_ms: int(d.fields.get("sent_ms")),
                status: text(d.fields.get("status")),
                id: d.id,
            })
            .collect();
        rows.sort_by(|a, b| a.sent_ms.cmp(&b.sent_ms).then(a.id.cmp(&b.id)));
        Ok(rows)
    }

    async fn send(&self, peer: &str, text: String) -> Result<Response> {
        let to: PeerId = peer.trim().parse().map_err(|_| {
            anyhow!("{peer:?} is not a peer id; copy one from `ecomesh peers` (Base58, about 44 characters)")
        })?;
        if to == self.identity.peer_id() {
            bail!("{to} is this node's own id; send to another node (see `ecomesh peers`)");
        }
        if text.len() > MAX_TEXT {
            bail!(
                "the text is {} bytes; at most {MAX_TEXT} bytes fit in one message",
                text.len()
            );
        }
        let key = self.mesh.public_key(&to).ok_or_else(|| {
            anyhow!(
                "no key known for {to}: a node can seal messages only to peers it has met; \
                 wait until it appears in `ecomesh peers` once (then it may go offline)"
            )
        })?;
        let sealed = seal_signed(&self.identity, &key, text.as_bytes())?;
        let now = now_ms();
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| anyhow!("no randomness: {e}"))?;
        let message = self
            .mesh
            .new_message(TEXT_TYPE, sealed, Some(to), now, random)?;
        let id = message.id.to_string();
        let mut f = Map::new();
        f.insert("to".into(), Value::Text(to.to_string()));
        f.insert("text".into(), Value::Text(text));
        f.insert("sent_ms".into(), ms(now));
        f.insert("status".into(), Value::Text("pending".into()));
        self.store.set(OUTBOX, &id, f, SetOptions::default())?;
        let outcome = self.mesh.send(to, message, Priority::Normal, now).await;
        self.persist();
        self.wake.notify_one();
        let (outcome, transport) = match outcome? {
            SendOutcome::Sent(t) => ("sent", Some(t.to_string())),
            SendOutcome::Queued => ("queued", None),
        };
        tracing::info!(%id, %to, outcome, "message sent");
        Ok(Response::Sent {
            id,
            outcome: outcome.into(),
            transport,
        })
    }
}

async fn serve_connection(node: Arc<Node>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let resp = match tokio::time::timeout(
        Duration::from_secs(10),
        reader.read_until(b'\n', &mut line),
    )
    .await
    {
        Err(_) => Response::Error {
            message: "no request within 10 s".into(),
        },
        Ok(Err(e)) => Response::Error {
            message: format!("reading the request: {e}"),
        },
        Ok(Ok(_)) if line.len() > MAX_REQUEST => Response::Error {
            message: format!("request longer than {MAX_REQUEST} bytes"),
        },
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(req) => node.handle(req).await,
            Err(e) => Response::Error {
                message: format!(
                    "not a request this node understands ({e}); is the CLI the same version as the node?"
                ),
            },
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    if let Err(e) = wr.write_all(&out).await {
        tracing::debug!(error = %e, "control client went away");
    }
}

/// Binds the control socket, replacing a stale one; refuses when a node answers on it.
fn bind_control(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "a node is already running for this data directory (it answers on {}); \
                 stop it first, or use another --data directory",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Runs a node until `shutdown` resolves, then stops cleanly (state saved, socket removed).
pub async fn run(
    data: DataDir,
    options: NodeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let id_path = data.identity();
    if !id_path.exists() {
        bail!(
            "no identity in {}; run `ecomesh init` first (same --data)",
            data.root().display()
        );
    }
    let identity = Identity::load(&id_path)?;
    let socket = data.checked_socket()?;
    let control = bind_control(&socket)?;
    let store = SledStore::open(&data.store(), identity.clone(), StoreConfig::default())
        .with_context(|| format!("opening the store in {}", data.store().display()))?;
    let config = MeshConfig::default();
    let buffer = match StoreBuffer::load(&data.buffer(), config.buffer) {
        Ok(b) => b,
        Err(e) => {
            quarantine(&data.buffer(), &e);
            StoreBuffer::new(config.buffer)
        }
    };
    let pending = match PendingAcks::load(&data.pending(), config.buffer.max_messages) {
        Ok(p) => p,
        Err(e) => {
            quarantine(&data.pending(), &e);
            PendingAcks::new()
        }
    };
    let keys: Arc<std::collections::BTreeMap<PeerId, PublicKey>> = Arc::default();
    let mesh = Arc::new(MultiTransportManager::with_state(
        identity.clone(),
        keys,
        config,
        buffer,
        pending,
    ));
    let known = load_keys(&data.known_keys());
    for k in &known {
        mesh.learn_key(*k);
    }
    let keepalive_ms = u64::try_from(options.keepalive.as_millis()).unwrap_or(u64::MAX);
    let wired = WiredTransport::new(
        identity.clone(),
        options.policy.clone(),
        WiredConfig {
            listen: options.listen,
            link: LinkConfig {
                keepalive_interval_ms: keepalive_ms,
                keepalive_timeout_ms: keepalive_ms,
                ..LinkConfig::default()
            },
            backoff_max: options.redial_max,
            ..WiredConfig::default()
        },
    );
    wired
        .start()
        .await
        .with_context(|| format!("starting the wired transport on {}", options.listen))?;
    let store = Arc::new(store);
    let queue = SyncQueue::open(&data.queue())
        .with_context(|| format!("opening the sync queue in {}", data.queue().display()))?;
    let stream = DurableStream::open(&data.stream())
        .with_context(|| format!("opening the stream in {}", data.stream().display()))?;
    let p2p = P2PStorageAdapter::new(store.clone(), mesh.clone(), P2PConfig::default())
        .with_queue(queue)
        .with_stream(stream);
    let node = Arc::new(Node {
        identity,
        data,
        store,
        mesh,
        p2p,
        wired: wired.clone(),
        started: Instant::now(),
        dirty: AtomicBool::new(false),
        saved_keys: AtomicUsize::new(known.len()),
        persist_lock: Mutex::new(()),
        wake: Notify::new(),
    });
    let weak = Arc::downgrade(&node);
    let _mesh_sub: Subscription = node.mesh.subscribe(Arc::new(move |ev: &MeshEvent| {
        if let Some(n) = weak.upgrade() {
            n.on_event(ev);
        }
    }));
    let weak = Arc::downgrade(&node);
    let _wake_sub = wired.subscribe(Arc::new(move |_| {
        if let Some(n) = weak.upgrade() {
            n.wake.notify_one();
        }
    }));
    let weak = Arc::downgrade(&node);
    node.p2p.set_waker(Arc::new(move || {
        if let Some(n) = weak.upgrade() {
            n.wake.notify_one();
        }
    }));
    node.mesh.add_transport(Arc::new(wired.clone()));
    tracing::info!(
        peer_id = %node.identity.peer_id(),
        listen = ?wired.local_addr(),
        data = %node.data.root().display(),
        "node started"
    );
    let discovery = if options.mdns {
        let ip = options
            .mdns_ip
            .or_else(|| Some(options.listen.ip()).filter(|ip| !ip.is_unspecified()));
        match MdnsDiscovery::start(wired.clone(), ip, Vec::new()) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "mDNS unavailable; only --peer addresses are dialled");
                None
            }
        }
    } else {
        None
    };
    for addr in options.peers.iter().copied() {
        let w = wired.clone();
        tokio::spawn(async move {
            match w.dial(addr).await {
                Ok(p) => tracing::info!(%addr, peer = %p, "connected"),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "dial failed; retrying in the background")
                }
            }
        });
    }
    let n2 = node.clone();
    let accept = tokio::spawn(async move {
        loop {
            match control.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve_connection(n2.clone(), s));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = node.wake.notified() => {}
            _ = tick.tick() => {}
        }
        let handled = node.mesh.process(now_ms()).await;
        node.p2p.process(now_ms()).await;
        if handled > 0 || node.dirty.load(Ordering::SeqCst) {
            node.persist();
        }
    }
    tracing::info!("shutting down");
    accept.abort();
    drop(discovery);
    if let Err(e) = wired.stop().await {
        tracing::warn!(error = %e, "stopping the wired transport");
    }
    node.mesh.process(now_ms()).await;
    node.persist();
    node.store.flush()?;
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::debug!(error = %e, "removing the control socket");
    }
    tracing::info!("stopped");
    Ok(())
}
