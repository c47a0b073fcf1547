//! The running node: store, mesh manager, its transports (wired with mDNS, internet,
//! LoRa) and the control socket.
//!
//! Durability: a received text is written to the store (flushed) inside the
//! mesh's delivery callback, before the mesh sends its ACK, so an acknowledged
//! message is never lost by a crash of the receiver. A sent text is written to
//! the outbox before it is handed to the mesh, and the mesh's buffer and
//! pending ACKs are saved after every send and every batch of transport
//! events, so a crash of the sender loses no queued message either.
//!
//! The outbox is the source of truth for texts: a `pending` row is a text the
//! node accepted and has not seen acknowledged. The mesh's store-and-forward
//! buffer draws from it: on every tick, each pending text the mesh does not
//! hold (not buffered, and not in flight to a reachable recipient) is offered
//! to the mesh again, oldest first, until the buffer refuses for want of room
//! ([`MeshError::BufferFull`]); across a restart the pending rows are read back
//! and offered the same way. Nothing accepted is dropped: a text is refused up
//! front only when the outbox already holds `outbox_max` pending texts (the
//! error names the limit), and a pending text leaves that state only by its
//! ACK (`delivered`) or its TTL (`expired`).

use std::collections::BTreeMap;
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
use ecomesh_mesh::buffer::DEFAULT_MAX_MESSAGES;
use ecomesh_mesh::buffer::StoreBuffer;
use ecomesh_mesh::{
    MAX_LEARNED_KEYS, MeshConfig, MeshError, MeshEvent, MultiTransportManager, SendOutcome,
};
use ecomesh_p2p_storage::blobs::{BlobService, BlobServiceConfig, BlobStore};
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_p2p_storage::{OwnClock, P2PConfig, P2PStorageAdapter, SledStore, StoreConfig};
use ecomesh_replication::blob::{BlobId, ManifestLimits};
use ecomesh_replication::queue::SyncQueue;
use ecomesh_replication::stream::{DurableStream, EventKind, MAX_DELTA, Source};
use ecomesh_transport_internet::{
    InternetConfig, InternetTransport, Multiaddr, Request as NetRequest, RequestHandler,
    Response as NetResponse,
};
use ecomesh_transport_lora::{LoraConfig, LoraTransport};
use ecomesh_transport_wired::{LinkConfig, MdnsDiscovery, WiredConfig, WiredTransport};
use ecomesh_types::{
    Map, MessageId, NetworkMessage, PeerId, Priority, SetOptions, StorageAdapter, Subscription,
    TransportAdapter, Value,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::control::{
    BlobRow, ChangeRow, ClockRow, DocRow, InboxRow, MAX_REQUEST, MAX_TEXT, OutboxRow, PeerRow,
    Request, Response, Status,
};
use crate::paths::DataDir;

/// The message type of a sealed text between two nodes.
pub const TEXT_TYPE: &str = "ecomesh/text";
/// The default TCP port of the wired transport.
pub const DEFAULT_PORT: u16 = 7733;
/// Local collections (the `_` prefix keeps them off the network).
const INBOX: &str = "_inbox";
const OUTBOX: &str = "_outbox";

/// Largest file `ecomesh blob put` stores: the node reads it whole, and the
/// shards of larger blobs exceed the default reassembly limit of peers.
const MAX_BLOB_FILE: u64 = 256 << 20;
/// Longest wait for a DHT provider lookup, and for connecting to one holder.
const PROVIDER_LOOKUP: Duration = Duration::from_secs(20);
/// How long `ecomesh blob get` waits for peers.
const BLOB_GET_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the node garbage-collects blob pieces (seed 5.2 rule).
const BLOB_GC_INTERVAL: Duration = Duration::from_secs(3600);

/// The default bound on pending (accepted, undelivered) texts in the outbox.
pub const DEFAULT_OUTBOX_MAX: usize = 10_000;
/// Entries of the pending-ACK file read at start beyond the buffer and outbox
/// bounds (other services' messages wait for ACKs too).
const PENDING_LOAD_SLACK: usize = 65_536;

/// The default port of the internet transport (TCP and QUIC).
pub const DEFAULT_INTERNET_PORT: u16 = 7734;

/// A transport the node runs (`--transports`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportSpec {
    /// TCP + Noise on the local network, with mDNS.
    Wired,
    /// libp2p: TCP/QUIC, Kademlia, GossipSub, relay.
    Internet,
    /// A Meshtastic radio on this serial device.
    Lora(String),
}

impl std::str::FromStr for TransportSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "wired" => Ok(TransportSpec::Wired),
            "internet" => Ok(TransportSpec::Internet),
            other => match other.strip_prefix("lora:") {
                Some(dev) if !dev.is_empty() => Ok(TransportSpec::Lora(dev.to_owned())),
                _ => bail!(
                    "unknown transport {other:?}: use wired, internet or lora:DEVICE \
                     (for example lora:/dev/ttyUSB0)"
                ),
            },
        }
    }
}

/// Radio settings of the LoRa transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraPreset {
    /// Meshtastic LongFast under the EU868 duty cycle.
    Eu868,
    /// The bundled radio simulator's fast modem, without a duty limit (tests).
    Sim,
}

impl std::str::FromStr for LoraPreset {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "eu868" => Ok(LoraPreset::Eu868),
            "sim" => Ok(LoraPreset::Sim),
            other => bail!("unknown LoRa preset {other:?}: use eu868 or sim"),
        }
    }
}

/// The internet transport's default listen addresses: TCP and QUIC on every interface.
pub fn default_internet_listen() -> Vec<Multiaddr> {
    [
        format!("/ip4/0.0.0.0/tcp/{DEFAULT_INTERNET_PORT}"),
        format!("/ip4/0.0.0.0/udp/{DEFAULT_INTERNET_PORT}/quic-v1"),
    ]
    .iter()
    .filter_map(|a| a.parse().ok())
    .collect()
}

/// Sorts `--listen` values: `HOST:PORT` is the wired transport's (at most
/// one), a multiaddr (starting with `/`) the internet transport's; the
/// internet transport's defaults apply when none is given.
pub fn split_listen(
    values: &[String],
    transports: &[TransportSpec],
) -> Result<(Option<SocketAddr>, Vec<Multiaddr>)> {
    let mut wired = None;
    let mut internet = Vec::new();
    for v in values {
        if v.starts_with('/') {
            if !transports.contains(&TransportSpec::Internet) {
                bail!("--listen {v} is an internet address; add internet to --transports");
            }
            internet.push(
                v.parse::<Multiaddr>()
                    .map_err(|e| anyhow!("--listen {v} is not a multiaddr ({e})"))?,
            );
        } else {
            let addr: SocketAddr = v.parse().map_err(|e| {
                anyhow!("--listen {v}: {e}; use HOST:PORT (wired) or a multiaddr (internet)")
            })?;
            if !transports.contains(&TransportSpec::Wired) {
                bail!("--listen {v} is a wired address; add wired to --transports");
            }
            if wired.replace(addr).is_some() {
                bail!("the wired transport listens on one address; pass one HOST:PORT");
            }
        }
    }
    if internet.is_empty() {
        internet = default_internet_listen();
    }
    Ok((wired, internet))
}

/// Parses the multiaddrs of option `flag`, naming the bad one.
pub fn parse_multiaddrs(flag: &str, values: &[String]) -> Result<Vec<Multiaddr>> {
    values
        .iter()
        .map(|v| {
            v.parse::<Multiaddr>()
                .map_err(|e| anyhow!("{flag} {v} is not a multiaddr ({e}), e.g. /ip4/192.0.2.1/tcp/7734/p2p/12D3KooW..."))
        })
        .collect()
}

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Transports to run.
    pub transports: Vec<TransportSpec>,
    /// Address the wired transport listens on.
    pub listen: SocketAddr,
    /// Addresses the internet transport listens on.
    pub internet_listen: Vec<Multiaddr>,
    /// Internet bootstrap peers (multiaddrs ending in `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Internet relays to take a circuit reservation on.
    pub relays: Vec<Multiaddr>,
    /// Serve as a circuit relay for other internet peers.
    pub relay_server: bool,
    /// Radio settings of the LoRa transport.
    pub lora_preset: LoraPreset,
    /// The secret every LoRa node of this deployment shares; it keys the MAC on
    /// broadcast frames (beacons), so outsiders cannot forge them. `None`: the
    /// public default, which proves nothing.
    pub lora_secret: Option<String>,
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
    /// Most messages the mesh's store-and-forward buffer holds.
    pub buffer_messages: usize,
    /// Most pending (accepted, undelivered) texts in the outbox; `send` is
    /// refused beyond it with an error naming the limit.
    pub outbox_max: usize,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            transports: vec![TransportSpec::Wired],
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            internet_listen: default_internet_listen(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            relay_server: false,
            lora_preset: LoraPreset::Eu868,
            lora_secret: None,
            peers: Vec::new(),
            mdns: true,
            mdns_ip: None,
            policy: AccessPolicy::Open,
            keepalive: Duration::from_secs(15),
            redial_max: Duration::from_secs(30),
            buffer_messages: DEFAULT_MAX_MESSAGES,
            outbox_max: DEFAULT_OUTBOX_MAX,
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
    blobs: BlobService<SledBackend>,
    wired: Option<WiredTransport>,
    internet: Option<InternetTransport>,
    started: Instant,
    dirty: AtomicBool,
    saved_keys: AtomicUsize,
    persist_lock: Mutex<()>,
    wake: Notify,
    /// The outbox's pending texts: id -> (recipient, sent_ms).
    outbox_pending: Mutex<BTreeMap<MessageId, (PeerId, u64)>>,
    /// Most entries of `outbox_pending` before `send` refuses.
    outbox_max: usize,
    /// Serialises offering outbox texts to the mesh.
    feed_lock: tokio::sync::Mutex<()>,
}

/// A pending outbox text the mesh does not hold, to be offered again.
struct Waiting {
    id: MessageId,
    to: PeerId,
    sent_ms: u64,
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
                self.mark(id, "delivered");
            }
            MeshEvent::Expired(id) => {
                tracing::warn!(%id, "expired without delivery");
                self.mark(id, "expired");
            }
            MeshEvent::Evicted(id) if self.pending_outbox().contains_key(id) => {
                tracing::info!(%id, "text evicted from the mesh buffer; it waits in the outbox");
                self.wake.notify_one();
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

    fn pending_outbox(&self) -> std::sync::MutexGuard<'_, BTreeMap<MessageId, (PeerId, u64)>> {
        self.outbox_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the status of outbox text `id` (`delivered` or `expired`); it is
    /// pending no more.
    fn mark(&self, id: &MessageId, status: &str) {
        self.pending_outbox().remove(id);
        let id = &id.to_string();
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
            Request::BlobPut { path, collection } => self.blob_put(&path, &collection),
            Request::BlobGet { id, path } => self.blob_get(&id, &path).await,
            Request::BlobList => self.blob_list().map(|blobs| Response::Blobs { blobs }),
            Request::BlobGc => self.blob_gc(),
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
        let clocks = self.p2p.clock_report();
        Ok(Status {
            peer_id: self.identity.peer_id().to_string(),
            data_dir: self.data.root().display().to_string(),
            listen: self
                .wired
                .as_ref()
                .and_then(WiredTransport::local_addr)
                .map(|a| a.to_string()),
            internet_listen: self
                .internet
                .as_ref()
                .map(|t| {
                    let me = t.libp2p_peer_id();
                    t.listen_addrs()
                        .into_iter()
                        .map(|a| format!("{a}/p2p/{me}"))
                        .collect()
                })
                .unwrap_or_default(),
            transports: self
                .mesh
                .active_transports()
                .iter()
                .map(ToString::to_string)
                .collect(),
            peers: self.mesh.peers().len(),
            buffered: self.mesh.buffered(),
            waiting: self.waiting(None).len(),
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
            clocks: clocks
                .peers
                .iter()
                .map(|c| ClockRow {
                    peer_id: c.peer.to_string(),
                    skew_ms: c.skew_ms,
                    skewed: c.skewed,
                })
                .collect(),
            own_clock: match clocks.own {
                OwnClock::Ahead { .. } => "ahead",
                OwnClock::Behind { .. } => "behind",
                OwnClock::Agrees => "ok",
                _ => "unknown",
            }
            .to_owned(),
            own_clock_off_ms: match clocks.own {
                OwnClock::Ahead { by_ms } | OwnClock::Behind { by_ms } => by_ms,
                _ => 0,
            },
        })
    }

    fn blob_row(&self, id: &BlobId) -> Result<Option<BlobRow>> {
        let Some(stored) = self.blobs.store().manifest(id)? else {
            return Ok(None);
        };
        let m = &stored.manifest;
        let mut held = 0;
        for p in m.pieces() {
            if self.blobs.store().has_piece(p)? {
                held += 1;
            }
        }
        Ok(Some(BlobRow {
            id: id.to_text(),
            collection: stored.collection,
            len: m.len(),
            encoding: m.encoding().to_string(),
            held,
            pieces: m.pieces().len(),
        }))
    }

    fn blob_put(&self, path: &str, collection: &str) -> Result<Response> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {path}"))?;
        if meta.len() > MAX_BLOB_FILE {
            bail!(
                "{path} is {} bytes; `ecomesh blob put` takes files of at most {MAX_BLOB_FILE} bytes",
                meta.len()
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let manifest = self.blobs.put_blob(collection, &bytes, now_ms())?;
        self.announce_blobs(vec![manifest.id()]);
        self.wake.notify_one();
        self.blob_row(&manifest.id())?
            .map(Response::Blob)
            .ok_or_else(|| anyhow!("blob stored but its manifest is unreadable"))
    }

    async fn blob_get(&self, id: &str, path: &str) -> Result<Response> {
        let blob = BlobId::parse(id).map_err(|e| {
            anyhow!("{id} is not a blob id ({e}); copy one from `ecomesh blob list`")
        })?;
        if self.blobs.store().manifest(&blob)?.is_none() {
            self.meet_providers(&blob).await;
        }
        let get = self.blobs.get_blob(blob, now_ms());
        self.wake.notify_one();
        let bytes = tokio::time::timeout(BLOB_GET_TIMEOUT, get)
            .await
            .map_err(|_| {
                anyhow!(
                    "no reachable peer delivered blob {id} within {} s",
                    BLOB_GET_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("fetching blob {id}"))?;
        write_atomic(Path::new(path), &bytes).with_context(|| format!("writing {path}"))?;
        self.blob_row(&blob)?
            .map(Response::Blob)
            .ok_or_else(|| anyhow!("blob fetched but its manifest is unreadable"))
    }

    /// Publishes this node as a holder of `blobs` in the internet transport's
    /// DHT (the content location index), in the background.
    fn announce_blobs(&self, blobs: Vec<BlobId>) {
        let Some(net) = self.internet.clone() else {
            return;
        };
        tokio::spawn(async move {
            for b in blobs {
                if let Err(e) = net.provide(&b.to_content_id()).await {
                    tracing::debug!(blob = %b.to_text(), error = %e, "provider record not published");
                }
            }
        });
    }

    /// Looks up the holders of `blob` in the DHT and connects to those the mesh
    /// does not reach yet, so the blob service can ask them (bounded waits).
    async fn meet_providers(&self, blob: &BlobId) {
        let Some(net) = self.internet.clone() else {
            return;
        };
        let me = self.identity.peer_id();
        let providers =
            match tokio::time::timeout(PROVIDER_LOOKUP, net.find_providers(&blob.to_content_id()))
                .await
            {
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
            .filter(|p| *p != me && !known.contains(p))
            .collect();
        for p in &new {
            match tokio::time::timeout(PROVIDER_LOOKUP, net.connect_to_peer(*p)).await {
                Ok(Ok(())) => tracing::info!(peer = %p, "connected to a holder found in the DHT"),
                Ok(Err(e)) => tracing::debug!(peer = %p, error = %e, "holder unreachable"),
                Err(_) => tracing::debug!(peer = %p, "holder did not answer in time"),
            }
        }
        // The mesh takes connected holders in on its next pass.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && new
                .iter()
                .any(|p| !self.mesh.peers().iter().any(|i| i.peer_id == *p))
        {
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn blob_list(&self) -> Result<Vec<BlobRow>> {
        let mut rows = Vec::new();
        for id in self.blobs.store().blobs()? {
            if let Some(r) = self.blob_row(&id)? {
                rows.push(r);
            }
        }
        Ok(rows)
    }

    fn blob_gc(&self) -> Result<Response> {
        let report = self.blobs.gc(now_ms(), &|_| false)?;
        if !report.deleted.is_empty() {
            tracing::info!(
                pieces = report.deleted.len(),
                bytes = report.freed_bytes(),
                "blob GC"
            );
        }
        Ok(Response::BlobGc {
            deleted: report.deleted.len(),
            freed_bytes: report.freed_bytes(),
            kept: report.kept.len(),
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
        // One offer at a time, so texts to one recipient enter the mesh in order.
        let _feeding = self.feed_lock.lock().await;
        let held = self.pending_outbox().len();
        if held >= self.outbox_max {
            bail!(
                "refused, nothing queued: the outbox holds {held} undelivered texts, its limit \
                 (--outbox-max {}); wait until some are delivered or expire (`ecomesh outbox`), \
                 or raise the limit",
                self.outbox_max
            );
        }
        let sealed = seal_signed(&self.identity, &key, text.as_bytes())?;
        let now = now_ms();
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| anyhow!("no randomness: {e}"))?;
        let message = self
            .mesh
            .new_message(TEXT_TYPE, sealed, Some(to), now, random)?;
        let mid = message.id;
        let id = mid.to_string();
        let mut f = Map::new();
        f.insert("to".into(), Value::Text(to.to_string()));
        f.insert("text".into(), Value::Text(text));
        f.insert("sent_ms".into(), ms(now));
        f.insert("status".into(), Value::Text("pending".into()));
        self.store.set(OUTBOX, &id, f, SetOptions::default())?;
        self.pending_outbox().insert(mid, (to, now));
        // Older texts to the same recipient that wait for room go first.
        let behind = self.waiting(Some(to)).iter().any(|w| w.id != mid);
        let outcome = if behind {
            Ok(SendOutcome::Queued)
        } else {
            self.mesh.send(to, message, Priority::Normal, now).await
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(MeshError::BufferFull { max_messages, .. }) => {
                tracing::info!(%id, %to, max_messages,
                    "the mesh buffer is full; the text waits in the outbox until it has room");
                SendOutcome::Queued
            }
            Err(e) => {
                // Refused up front: it is queued nowhere, so it leaves the outbox.
                self.pending_outbox().remove(&mid);
                if let Err(d) = self.store.delete(OUTBOX, &id) {
                    tracing::error!(%id, error = %d, "refused text not removed from the outbox");
                }
                return Err(anyhow!(e).context("refused, nothing queued"));
            }
        };
        self.persist();
        self.wake.notify_one();
        let (outcome, transport) = match outcome {
            SendOutcome::Sent(t) => ("sent", Some(t.to_string())),
            SendOutcome::Queued => ("queued", None),
        };
        tracing::info!(%id, %to, outcome, "message accepted");
        Ok(Response::Sent {
            id,
            outcome: outcome.into(),
            transport,
        })
    }

    /// The pending outbox texts the mesh does not hold (neither buffered nor
    /// waiting for an ACK from a reachable recipient), oldest first; only those
    /// to `to` when given.
    fn waiting(&self, to: Option<PeerId>) -> Vec<Waiting> {
        let held = self.mesh.buffered_ids();
        let pending: Vec<(MessageId, PeerId, u64)> = self
            .pending_outbox()
            .iter()
            .filter(|(_, (p, _))| to.is_none_or(|t| t == *p))
            .map(|(id, (p, sent))| (*id, *p, *sent))
            .collect();
        let mut out: Vec<Waiting> = pending
            .into_iter()
            .filter(|(id, p, _)| {
                let tracked = self.mesh.is_pending(id);
                !(tracked && (held.contains(id) || !self.mesh.peer_transports(p).is_empty()))
            })
            .map(|(id, to, sent_ms)| Waiting { id, to, sent_ms })
            .collect();
        out.sort_by_key(|w| (w.sent_ms, w.id));
        out
    }

    /// The signed, sealed message of outbox text `w`, with its original id and
    /// timestamp (so its TTL still counts from when it was accepted); `None`
    /// when the row is gone.
    fn rebuild(&self, w: &Waiting) -> Result<Option<NetworkMessage>> {
        let Some(doc) = self.store.get(OUTBOX, &w.id.to_string())? else {
            return Ok(None);
        };
        let body = text(doc.fields.get("text"));
        let key = self
            .mesh
            .public_key(&w.to)
            .ok_or_else(|| anyhow!("no key known for {}", w.to))?;
        let sealed = seal_signed(&self.identity, &key, body.as_bytes())?;
        Ok(Some(self.mesh.new_message(
            TEXT_TYPE,
            sealed,
            Some(w.to),
            w.sent_ms,
            *w.id.as_bytes(),
        )?))
    }

    /// Offers the pending texts the mesh does not hold to it again, oldest
    /// first: those to reachable peers are sent, the others buffered while
    /// the buffer has room. Texts past their TTL are marked expired.
    async fn feed_outbox(&self) {
        let _feeding = self.feed_lock.lock().await;
        let now = now_ms();
        let ttl_ms = u64::from(NetworkMessage::DEFAULT_TTL_SECS) * 1000;
        let mut full = false;
        for w in self.waiting(None) {
            if w.sent_ms.saturating_add(ttl_ms) <= now {
                tracing::warn!(id = %w.id, to = %w.to, "expired without delivery");
                self.mark(&w.id, "expired");
                continue;
            }
            if full && self.mesh.peer_transports(&w.to).is_empty() {
                continue;
            }
            let message = match self.rebuild(&w) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.pending_outbox().remove(&w.id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(id = %w.id, error = %e, "outbox text not offered again yet");
                    continue;
                }
            };
            match self.mesh.send(w.to, message, Priority::Normal, now).await {
                Ok(outcome) => {
                    tracing::debug!(id = %w.id, ?outcome, "outbox text offered again");
                    self.dirty.store(true, Ordering::SeqCst);
                }
                Err(MeshError::BufferFull { .. }) => full = true,
                Err(MeshError::Expired(_)) => self.mark(&w.id, "expired"),
                Err(e) => tracing::warn!(id = %w.id, error = %e, "outbox text not offered again"),
            }
        }
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

/// The outbox's pending texts: id -> (recipient, sent_ms).
fn pending_texts(store: &SledStore) -> Result<BTreeMap<MessageId, (PeerId, u64)>> {
    let mut out = BTreeMap::new();
    for d in store.scan_collection(OUTBOX)? {
        if text(d.fields.get("status")) != "pending" {
            continue;
        }
        match (
            d.id.parse::<MessageId>(),
            text(d.fields.get("to")).parse::<PeerId>(),
        ) {
            (Ok(id), Ok(to)) => {
                out.insert(id, (to, int(d.fields.get("sent_ms"))));
            }
            _ => tracing::error!(id = %d.id, "unreadable outbox row; not offered again"),
        }
    }
    Ok(out)
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
    let mut config = MeshConfig::default();
    config.buffer.max_messages = options.buffer_messages;
    let buffer = match StoreBuffer::load(&data.buffer(), config.buffer) {
        Ok(b) => b,
        Err(e) => {
            quarantine(&data.buffer(), &e);
            StoreBuffer::new(config.buffer)
        }
    };
    let pending_bound = config
        .buffer
        .max_messages
        .saturating_add(options.outbox_max)
        .saturating_add(PENDING_LOAD_SLACK);
    let pending = match PendingAcks::load(&data.pending(), pending_bound) {
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
    if options.transports.is_empty() {
        bail!("no transport to run: pass --transports wired, internet or lora:DEVICE");
    }
    let keepalive_ms = u64::try_from(options.keepalive.as_millis()).unwrap_or(u64::MAX);
    let wired = if options.transports.contains(&TransportSpec::Wired) {
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
        Some(wired)
    } else {
        None
    };
    let internet = if options.transports.contains(&TransportSpec::Internet) {
        let config = InternetConfig {
            listen: options.internet_listen.clone(),
            bootstrap: options.bootstrap.clone(),
            relays: options.relays.clone(),
            relay_server: options.relay_server,
            backoff_max: options.redial_max,
            ..InternetConfig::default()
        };
        let t = InternetTransport::new(&identity.secret_seed(), options.policy.clone(), config)
            .context("setting up the internet transport")?;
        t.start().await.with_context(|| {
            format!(
                "starting the internet transport on {}",
                options
                    .internet_listen
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Some(t)
    } else {
        None
    };
    let lora_devices: Vec<&String> = options
        .transports
        .iter()
        .filter_map(|t| match t {
            TransportSpec::Lora(dev) => Some(dev),
            _ => None,
        })
        .collect();
    if lora_devices.len() > 1 {
        bail!("one LoRa radio per node: pass a single lora:DEVICE");
    }
    let lora = match lora_devices.first() {
        Some(dev) => {
            let mut config = match options.lora_preset {
                LoraPreset::Eu868 => LoraConfig::new(dev.as_str()),
                LoraPreset::Sim => LoraConfig::simulated(dev.as_str()),
            };
            match &options.lora_secret {
                Some(secret) => config.engine.network_secret = secret.as_bytes().to_vec(),
                None => tracing::warn!(
                    "LoRa beacons use the public default network secret: anyone can forge \
                     them; pass --lora-secret shared by your nodes"
                ),
            }
            let t = LoraTransport::new(identity.clone(), options.policy.clone(), config);
            t.start().await.with_context(|| {
                format!(
                    "starting the LoRa transport on {dev}: is a Meshtastic radio plugged in \
                     there, and may this user open it (group dialout)?"
                )
            })?;
            Some(t)
        }
        None => None,
    };
    let outbox_pending = pending_texts(&store)?;
    if !outbox_pending.is_empty() {
        tracing::info!(
            count = outbox_pending.len(),
            "pending texts in the outbox; offered to the mesh again"
        );
    }
    let store = Arc::new(store);
    let p2p_config = P2PConfig::default();
    let blob_store = BlobStore::open(
        store.backend().clone(),
        identity.peer_id(),
        ManifestLimits::default(),
    )
    .context("opening the blob store")?;
    let blobs = BlobService::new(
        Arc::new(blob_store),
        mesh.clone(),
        BlobServiceConfig {
            replication: p2p_config.replication.clone(),
            reach: p2p_config.reach.clone(),
            trust: p2p_config.trust.clone(),
            ..BlobServiceConfig::default()
        },
    );
    let queue = SyncQueue::open(&data.queue())
        .with_context(|| format!("opening the sync queue in {}", data.queue().display()))?;
    let stream = DurableStream::open(&data.stream())
        .with_context(|| format!("opening the stream in {}", data.stream().display()))?;
    let p2p = P2PStorageAdapter::new(store.clone(), mesh.clone(), p2p_config)
        .with_queue(queue)
        .with_stream(stream);
    let node = Arc::new(Node {
        identity,
        data,
        store,
        mesh,
        p2p,
        blobs,
        wired: wired.clone(),
        internet: internet.clone(),
        started: Instant::now(),
        dirty: AtomicBool::new(false),
        saved_keys: AtomicUsize::new(known.len()),
        persist_lock: Mutex::new(()),
        wake: Notify::new(),
        outbox_pending: Mutex::new(outbox_pending),
        outbox_max: options.outbox_max,
        feed_lock: tokio::sync::Mutex::new(()),
    });
    let weak = Arc::downgrade(&node);
    let _mesh_sub: Subscription = node.mesh.subscribe(Arc::new(move |ev: &MeshEvent| {
        if let Some(n) = weak.upgrade() {
            n.on_event(ev);
        }
    }));
    let adapters: Vec<Arc<dyn TransportAdapter>> = [
        wired
            .clone()
            .map(|t| Arc::new(t) as Arc<dyn TransportAdapter>),
        internet
            .clone()
            .map(|t| Arc::new(t) as Arc<dyn TransportAdapter>),
        lora.clone()
            .map(|t| Arc::new(t) as Arc<dyn TransportAdapter>),
    ]
    .into_iter()
    .flatten()
    .collect();
    let _wake_subs: Vec<Subscription> = adapters
        .iter()
        .map(|a| {
            let weak = Arc::downgrade(&node);
            a.subscribe(Arc::new(move |_| {
                if let Some(n) = weak.upgrade() {
                    n.wake.notify_one();
                }
            }))
        })
        .collect();
    if let Some(t) = &lora {
        // Beacons carry a Bloom filter of the collections this node replicates.
        let replicated: Vec<String> = node
            .store
            .collections()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.starts_with('_'))
            .collect();
        t.set_collections(replicated);
    }
    if let Some(t) = &internet {
        t.set_request_handler(Arc::new(ContentServer {
            node: Arc::downgrade(&node),
        }));
    }
    let weak = Arc::downgrade(&node);
    let waker: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        if let Some(n) = weak.upgrade() {
            n.wake.notify_one();
        }
    });
    node.p2p.set_waker(waker.clone());
    node.blobs.set_waker(waker);
    for a in &adapters {
        node.mesh.add_transport(a.clone());
    }
    tracing::info!(
        peer_id = %node.identity.peer_id(),
        transports = ?options.transports,
        listen = ?wired.as_ref().and_then(WiredTransport::local_addr),
        internet = ?internet.as_ref().map(InternetTransport::listen_addrs),
        data = %node.data.root().display(),
        "node started"
    );
    let discovery = if let Some(wired) = wired.as_ref().filter(|_| options.mdns) {
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
    for addr in options.peers.iter().copied().filter(|_| wired.is_some()) {
        let Some(w) = wired.clone() else { break };
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
    let mut next_gc = Instant::now() + BLOB_GC_INTERVAL;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = node.wake.notified() => {}
            _ = tick.tick() => {}
        }
        let handled = node.mesh.process(now_ms()).await;
        node.feed_outbox().await;
        node.p2p.process(now_ms()).await;
        node.blobs.process(now_ms()).await;
        if Instant::now() >= next_gc {
            next_gc = Instant::now() + BLOB_GC_INTERVAL;
            if let Err(e) = node.blob_gc() {
                tracing::error!(error = %e, "blob GC failed");
            }
            // Provider records expire; announce what this node holds again.
            match node.blobs.store().blobs() {
                Ok(held) => node.announce_blobs(held),
                Err(e) => tracing::error!(error = %e, "blob list unreadable"),
            }
        }
        if handled > 0 || node.dirty.load(Ordering::SeqCst) {
            node.persist();
        }
    }
    tracing::info!("shutting down");
    accept.abort();
    drop(discovery);
    for a in &adapters {
        if let Err(e) = a.stop().await {
            tracing::warn!(transport = %a.transport_type(), error = %e, "stopping a transport");
        }
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

/// Answers the internet transport's content requests from the node's store:
/// version nodes by CID, as the asking peer's reach allows. Shard requests are
/// answered by the blob service when the node runs one.
struct ContentServer {
    node: std::sync::Weak<Node>,
}

impl RequestHandler for ContentServer {
    fn handle(
        &self,
        from: PeerId,
        request: NetRequest,
    ) -> ecomesh_types::BoxFuture<'static, NetResponse> {
        let answer = match (self.node.upgrade(), request) {
            (Some(node), NetRequest::VersionNode { cid }) => {
                match node.p2p.version_bytes_for(from, &cid) {
                    Ok(Some(bytes)) => NetResponse::Data(bytes),
                    Ok(None) => NetResponse::NotFound,
                    Err(e) => {
                        tracing::error!(error = %e, "version unreadable");
                        NetResponse::NotFound
                    }
                }
            }
            (Some(node), NetRequest::ShardGet { cid }) => {
                match BlobId::from_content_id(&cid).map(|p| node.blobs.serve_piece(&from, &p)) {
                    Ok(Ok(Some(bytes))) => NetResponse::Data(bytes),
                    _ => NetResponse::NotFound,
                }
            }
            (Some(node), NetRequest::ShardHave { cid }) => NetResponse::Have(matches!(
                BlobId::from_content_id(&cid).map(|p| node.blobs.serve_piece(&from, &p)),
                Ok(Ok(Some(_)))
            )),
            _ => NetResponse::NotFound,
        };
        Box::pin(std::future::ready(answer))
    }
}
