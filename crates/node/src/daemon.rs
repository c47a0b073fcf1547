//! The `ecomesh node` daemon: parses the options, starts the transports
//! chosen with `--transports` (wired with mDNS, internet, LoRa), hands them
//! to an embedded [`ecomesh_sync::Node`], and serves the control socket by
//! calling the `Node` API (the private `serve` module).
//!
//! Everything else (store, durable queue and stream, mesh manager and its
//! persisted state, replication, blobs and their GC, the sealed-text protocol
//! and its outbox) is `ecomesh-sync`'s; see its crate documentation for the
//! durability promises.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_mesh::buffer::DEFAULT_MAX_MESSAGES;
use ecomesh_sync::{ContentRouting, Node, NodeConfig, RoutingError};
use ecomesh_transport_internet::{
    InternetConfig, InternetTransport, Multiaddr, Request as NetRequest, RequestHandler,
    Response as NetResponse,
};
use ecomesh_transport_lora::airtime::DutyBudget;
use ecomesh_transport_lora::{LoraConfig, LoraTransport};
use ecomesh_transport_wired::{LinkConfig, MdnsDiscovery, WiredConfig, WiredTransport};
use ecomesh_types::{BoxFuture, ContentId, PeerId, TransportAdapter};
use tokio::net::UnixListener;

use crate::paths::DataDir;
use crate::serve::{Served, serve_connection};

pub use ecomesh_sync::{DEFAULT_OUTBOX_MAX, TEXT_TYPE};

/// The default TCP port of the wired transport.
pub const DEFAULT_PORT: u16 = 7733;
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
    /// Bluetooth LE on this BlueZ adapter (`None`: BlueZ's default, `hci0`).
    Ble(Option<String>),
}

impl std::str::FromStr for TransportSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "wired" => Ok(TransportSpec::Wired),
            "internet" => Ok(TransportSpec::Internet),
            "ble" => Ok(TransportSpec::Ble(None)),
            other => match (other.strip_prefix("lora:"), other.strip_prefix("ble:")) {
                (Some(dev), _) if !dev.is_empty() => Ok(TransportSpec::Lora(dev.to_owned())),
                (_, Some(adapter)) if is_adapter_name(adapter) => {
                    Ok(TransportSpec::Ble(Some(adapter.to_owned())))
                }
                _ => bail!(
                    "unknown transport {other:?}: use wired, internet, lora:DEVICE \
                     (for example lora:/dev/ttyUSB0) or ble[:ADAPTER] (for example ble:hci0)"
                ),
            },
        }
    }
}

/// A BlueZ adapter name as it appears in its D-Bus path (`hci0`): ASCII letters,
/// digits and `_`, so it cannot reach another object.
fn is_adapter_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
    /// Relationships from configuration (`--relation`, `[relationships]`).
    pub relationships: Vec<(PeerId, ecomesh_sync::Trust)>,
    /// The reach of collections (`--reach`); the rest are commons.
    pub reach: Vec<(String, ecomesh_sync::Reach)>,
    /// The HTTP API: where it listens, or `None` for no API.
    pub api: Option<crate::api::ApiOptions>,
    /// The primary this node syncs with (`--primary`), if any.
    pub primary: Option<crate::hybrid::PrimaryOptions>,
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
            relationships: Vec::new(),
            reach: Vec::new(),
            api: Some(crate::api::ApiOptions::default()),
            primary: None,
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

/// The transports a node runs, started.
#[derive(Default)]
struct Transports {
    wired: Option<WiredTransport>,
    internet: Option<InternetTransport>,
    lora: Option<LoraTransport>,
    /// The duty-cycle budget the LoRa transport was configured with.
    lora_duty: Option<DutyBudget>,
    #[cfg(feature = "ble")]
    ble: Option<ecomesh_transport_ble::BleTransport>,
    /// The Bluetooth adapter the BLE transport runs on (`default`: BlueZ's).
    ble_adapter: Option<String>,
}

impl Transports {
    fn adapters(&self) -> Vec<Arc<dyn TransportAdapter>> {
        [
            self.wired
                .clone()
                .map(|t| Arc::new(t) as Arc<dyn TransportAdapter>),
            self.internet
                .clone()
                .map(|t| Arc::new(t) as Arc<dyn TransportAdapter>),
            self.lora
                .clone()
                .map(|t| Arc::new(t) as Arc<dyn TransportAdapter>),
            #[cfg(feature = "ble")]
            self.ble
                .clone()
                .map(|t| Arc::new(t) as Arc<dyn TransportAdapter>),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

async fn start_wired(identity: &Identity, options: &NodeOptions) -> Result<WiredTransport> {
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
    Ok(wired)
}

async fn start_internet(identity: &Identity, options: &NodeOptions) -> Result<InternetTransport> {
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
    Ok(t)
}

async fn start_lora(
    identity: &Identity,
    options: &NodeOptions,
) -> Result<Option<(LoraTransport, DutyBudget)>> {
    let devices: Vec<&String> = options
        .transports
        .iter()
        .filter_map(|t| match t {
            TransportSpec::Lora(dev) => Some(dev),
            _ => None,
        })
        .collect();
    if devices.len() > 1 {
        bail!("one LoRa radio per node: pass a single lora:DEVICE");
    }
    let Some(dev) = devices.first() else {
        return Ok(None);
    };
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
    let duty = config.engine.duty;
    let t = LoraTransport::new(identity.clone(), options.policy.clone(), config);
    t.start().await.with_context(|| {
        format!(
            "starting the LoRa transport on {dev}: is a Meshtastic radio plugged in \
             there, and may this user open it (group dialout)?"
        )
    })?;
    Ok(Some((t, duty)))
}

/// The BLE adapter `options` names, if any (at most one).
fn ble_adapter(options: &NodeOptions) -> Result<Option<Option<String>>> {
    let adapters: Vec<&Option<String>> = options
        .transports
        .iter()
        .filter_map(|t| match t {
            TransportSpec::Ble(a) => Some(a),
            _ => None,
        })
        .collect();
    if adapters.len() > 1 {
        bail!("one Bluetooth adapter per node: pass a single ble[:ADAPTER]");
    }
    Ok(adapters.first().map(|a| (*a).clone()))
}

/// Starts the BLE transport on the adapter `options` name, through BlueZ.
#[cfg(feature = "ble")]
async fn start_ble(
    identity: &Identity,
    options: &NodeOptions,
) -> Result<Option<ecomesh_transport_ble::BleTransport>> {
    use ecomesh_transport_ble::bluez::BluezRadio;
    use ecomesh_transport_ble::presence::PresenceKey;
    use ecomesh_transport_ble::{BleConfig, BleTransport};
    let Some(adapter) = ble_adapter(options)? else {
        return Ok(None);
    };
    let name = adapter
        .clone()
        .unwrap_or_else(|| "the default adapter".into());
    let radio = BluezRadio::new(adapter).context("setting up the BlueZ radio")?;
    // A private presence key: no other device maps this node's rotating tags to it.
    let key = PresenceKey::derive(identity.secret_seed().as_slice());
    let t = BleTransport::new(
        identity.clone(),
        options.policy.clone(),
        Arc::new(radio),
        BleConfig::new(key),
    );
    t.start().await.with_context(|| {
        format!(
            "starting the BLE transport on {name}: is bluetoothd running and the \
             adapter present (bluetoothctl list)?"
        )
    })?;
    Ok(Some(t))
}

/// Starts the transports `options` name.
async fn start_transports(identity: &Identity, options: &NodeOptions) -> Result<Transports> {
    if options.transports.is_empty() {
        bail!("no transport to run: pass --transports wired, internet, lora:DEVICE or ble");
    }
    let mut t = Transports::default();
    if options.transports.contains(&TransportSpec::Wired) {
        t.wired = Some(start_wired(identity, options).await?);
    }
    if options.transports.contains(&TransportSpec::Internet) {
        t.internet = Some(start_internet(identity, options).await?);
    }
    if let Some((lora, duty)) = start_lora(identity, options).await? {
        t.lora = Some(lora);
        t.lora_duty = Some(duty);
    }
    if let Some(adapter) = ble_adapter(options)? {
        #[cfg(not(feature = "ble"))]
        {
            let _ = adapter;
            bail!("this ecomesh was built without Bluetooth LE (cargo feature `ble`)");
        }
        #[cfg(feature = "ble")]
        {
            t.ble = start_ble(identity, options).await?;
            t.ble_adapter = Some(adapter.unwrap_or_else(|| "default".into()));
        }
    }
    Ok(t)
}

/// mDNS announcement and browsing for the wired transport, when asked for.
fn start_mdns(wired: Option<&WiredTransport>, options: &NodeOptions) -> Option<MdnsDiscovery> {
    let wired = wired.filter(|_| options.mdns)?;
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
}

/// Dials the `--peer` addresses in the background (the wired transport
/// redials them whenever their link drops).
fn dial_peers(wired: Option<&WiredTransport>, peers: &[SocketAddr]) {
    let Some(wired) = wired else { return };
    for addr in peers.iter().copied() {
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
    let mut config = options.relationships.iter().fold(
        NodeConfig::default()
            .with_buffer_messages(options.buffer_messages)
            .with_outbox_max(options.outbox_max),
        |c, (peer, trust)| c.with_relationship(*peer, *trust),
    );
    for (collection, reach) in &options.reach {
        config.p2p.reach.set_collection(collection, reach.clone());
    }
    let transports = start_transports(&identity, &options).await?;
    let gate = ecomesh_hybrid_storage::PrimaryGate::new(
        identity.clone(),
        Arc::new(options.policy.clone()),
    )
    .context("creating the primary's gate")?;
    let mut builder = Node::builder(data.root())
        .identity(identity.clone())
        .config(config);
    let mut attached = None;
    if let Some(p) = &options.primary {
        let policy = Arc::new(options.policy.clone());
        let (b, a) = crate::hybrid::attach(builder, identity, policy, p, data.root());
        builder = b;
        attached = Some(a);
    }
    for a in transports.adapters() {
        builder = builder.transport(a);
    }
    if let Some(net) = &transports.internet {
        builder = builder.content_routing(Arc::new(InternetRouting(net.clone())));
    }
    let node = builder
        .start()
        .await
        .with_context(|| format!("starting the node in {}", data.root().display()))?;
    if let Some(t) = &transports.lora {
        // Beacons carry a Bloom filter of the collections this node replicates.
        t.set_collections(node.replicated_collections());
    }
    if let Some(t) = &transports.internet {
        t.set_request_handler(Arc::new(ContentServer { node: node.clone() }));
    }
    tracing::info!(
        peer_id = %node.peer_id(),
        transports = ?options.transports,
        listen = ?transports.wired.as_ref().and_then(WiredTransport::local_addr),
        internet = ?transports.internet.as_ref().map(InternetTransport::listen_addrs),
        data = %data.root().display(),
        "node started"
    );
    let driver = match &attached {
        Some(a) => {
            tracing::info!(primary = ?options.primary.as_ref().map(|p| p.addr), "syncing with a primary");
            Some(a.bind(&node)?)
        }
        None => None,
    };
    let discovery = start_mdns(transports.wired.as_ref(), &options);
    dial_peers(transports.wired.as_ref(), &options.peers);
    let served = Arc::new(Served {
        node: node.clone(),
        wired: transports.wired.clone(),
        internet: transports.internet.clone(),
        lora: transports.lora.clone().zip(transports.lora_duty),
        ble_adapter: transports.ble_adapter.clone(),
        gate: Some(Arc::new(std::sync::Mutex::new(gate))),
        primary: attached,
    });
    let api = match &options.api {
        Some(api) => match crate::api::start(served.clone(), &data, api).await {
            Ok(server) => Some(server),
            Err(e) => {
                node.shutdown().await?;
                let _ = std::fs::remove_file(&socket);
                return Err(e);
            }
        },
        None => None,
    };
    let accept = tokio::spawn(async move {
        loop {
            match control.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve_connection(served.clone(), s));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    shutdown.await;
    accept.abort();
    if let Some(api) = api {
        api.stop().await;
    }
    drop(discovery);
    drop(driver);
    node.shutdown().await?;
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::debug!(error = %e, "removing the control socket");
    }
    Ok(())
}

/// The internet transport's Kademlia provider records as the node's content
/// location index.
struct InternetRouting(InternetTransport);

impl ContentRouting for InternetRouting {
    fn provide(&self, id: ContentId) -> BoxFuture<'static, Result<(), RoutingError>> {
        let net = self.0.clone();
        Box::pin(async move { net.provide(&id).await.map_err(Into::into) })
    }

    fn find_providers(
        &self,
        id: ContentId,
    ) -> BoxFuture<'static, Result<Vec<PeerId>, RoutingError>> {
        let net = self.0.clone();
        Box::pin(async move { net.find_providers(&id).await.map_err(Into::into) })
    }

    fn connect(&self, peer: PeerId) -> BoxFuture<'static, Result<(), RoutingError>> {
        let net = self.0.clone();
        Box::pin(async move { net.connect_to_peer(peer).await.map_err(Into::into) })
    }
}

/// Answers the internet transport's content requests from the node: version
/// nodes by CID and blob pieces, as the asking peer's reach allows.
struct ContentServer {
    node: Node,
}

impl RequestHandler for ContentServer {
    fn handle(&self, from: PeerId, request: NetRequest) -> BoxFuture<'static, NetResponse> {
        let answer = match request {
            NetRequest::VersionNode { cid } => match self.node.serve_version(from, &cid) {
                Some(bytes) => NetResponse::Data(bytes),
                None => NetResponse::NotFound,
            },
            NetRequest::ShardGet { cid } => match self.node.serve_blob_piece(from, &cid) {
                Some(bytes) => NetResponse::Data(bytes),
                None => NetResponse::NotFound,
            },
            NetRequest::ShardHave { cid } => {
                NetResponse::Have(self.node.serve_blob_piece(from, &cid).is_some())
            }
            _ => NetResponse::NotFound,
        };
        Box::pin(std::future::ready(answer))
    }
}
