//! [`BleTransport`]: the tokio driver of the [`Engine`] over a [`Radio`], implementing
//! [`TransportAdapter`].
//!
//! One task per started transport owns the engine; the API reaches it over a bounded
//! command channel, the radio over a bounded event channel. Time for the engine is
//! milliseconds since the transport was created (monotonic); the presence epoch comes
//! from the wall clock and the advertisement is renewed at each epoch boundary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_types::{
    BoxFuture, Error, Listener, Listeners, NetworkMessage, PeerId, PeerInfo, Priority,
    Subscription, TransportAdapter, TransportCapabilities, TransportEvent, TransportType, Value,
};

use crate::engine::{Engine, EngineConfig, Output};
use crate::error::BleError;
use crate::frag::Channel;
use crate::link::check_policy;
use crate::presence::{EPOCH_SECS, PresenceKey, epoch_of};
use crate::radio::{Radio, RadioEvent};

/// Configuration of a [`BleTransport`].
#[derive(Clone, Debug)]
pub struct BleConfig {
    /// Engine limits, timers and policies.
    pub engine: EngineConfig,
    /// The key this device's presence tags are derived under (shared with linked
    /// devices and friends, or private).
    pub presence_key: PresenceKey,
    /// Other shared keys whose holders' tags this device resolves.
    pub known_keys: Vec<PresenceKey>,
    /// Peers this device recognises (linked devices, friends).
    pub known_peers: Vec<PeerId>,
    /// Depth of the command queue.
    pub command_queue: usize,
    /// Depth of the radio event queue.
    pub event_queue: usize,
}

impl BleConfig {
    /// Defaults with `presence_key`.
    pub fn new(presence_key: PresenceKey) -> Self {
        BleConfig {
            engine: EngineConfig::default(),
            presence_key,
            known_keys: Vec::new(),
            known_peers: Vec::new(),
            command_queue: 256,
            event_queue: 8192,
        }
    }
}

enum Command {
    Send(
        PeerId,
        Box<NetworkMessage>,
        Priority,
        oneshot::Sender<Result<(), BleError>>,
    ),
    Broadcast(
        Box<NetworkMessage>,
        Priority,
        oneshot::Sender<Result<(), BleError>>,
    ),
    Connect(PeerId, oneshot::Sender<Result<(), BleError>>),
    Disconnect(PeerId, oneshot::Sender<Result<(), BleError>>),
    LinkChannel(PeerId, oneshot::Sender<Result<Option<Channel>, BleError>>),
    Stop(oneshot::Sender<()>),
}

#[derive(Default)]
struct State {
    active: bool,
    generation: u64,
    cmd: Option<mpsc::Sender<Command>>,
    task: Option<tokio::task::AbortHandle>,
    peers: HashMap<PeerId, PeerInfo>,
}

struct Inner {
    identity: Identity,
    me: PeerId,
    policy: Arc<AccessPolicy>,
    config: BleConfig,
    radio: Arc<dyn Radio>,
    created: Instant,
    state: Mutex<State>,
    listeners: Listeners<TransportEvent>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The Bluetooth LE transport over a [`Radio`] (the simulator today, BlueZ next).
#[derive(Clone)]
pub struct BleTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BleTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleTransport")
            .field("peer", &self.inner.me)
            .finish_non_exhaustive()
    }
}

impl BleTransport {
    /// A stopped transport for `identity` on `radio`.
    pub fn new(
        identity: Identity,
        policy: AccessPolicy,
        radio: Arc<dyn Radio>,
        config: BleConfig,
    ) -> Self {
        BleTransport {
            inner: Arc::new(Inner {
                me: identity.peer_id(),
                identity,
                policy: Arc::new(policy),
                config,
                radio,
                created: Instant::now(),
                state: Mutex::new(State::default()),
                listeners: Listeners::new(),
            }),
        }
    }

    /// This device's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.me
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BleError>>) -> Command,
    ) -> Result<T, Error> {
        let tx = lock(&self.inner.state)
            .cmd
            .clone()
            .ok_or(Error::NotStarted)?;
        let (ack, rx) = oneshot::channel();
        tx.send(make(ack)).await.map_err(|_| Error::NotStarted)?;
        match rx.await {
            Ok(r) => r.map_err(BleError::into_transport_error),
            Err(_) => Err(Error::Closed),
        }
    }

    /// The channel of the link to `peer` (GATT at its ATT MTU, or an L2CAP channel
    /// both sides offered), `None` if not linked.
    pub async fn link_channel(&self, peer: PeerId) -> Result<Option<Channel>, Error> {
        self.call(|ack| Command::LinkChannel(peer, ack)).await
    }

    /// Sends at an explicit priority: [`Priority::Bulk`] is refused
    /// ([`BleError::BulkRefused`] inside [`Error::Backend`]) and so is a message over
    /// the size cap ([`Error::MessageTooLarge`]), before anything is queued.
    pub async fn send_with_priority(
        &self,
        peer: PeerId,
        message: NetworkMessage,
        priority: Priority,
    ) -> Result<(), Error> {
        check_policy(
            &message,
            priority,
            self.inner.config.engine.link.max_message_size,
        )
        .map_err(BleError::into_transport_error)?;
        self.call(|ack| Command::Send(peer, Box::new(message), priority, ack))
            .await
    }

    /// Broadcast at an explicit priority, under the same policy.
    pub async fn broadcast_with_priority(
        &self,
        message: NetworkMessage,
        priority: Priority,
    ) -> Result<(), Error> {
        check_policy(
            &message,
            priority,
            self.inner.config.engine.link.max_message_size,
        )
        .map_err(BleError::into_transport_error)?;
        self.call(|ack| Command::Broadcast(Box::new(message), priority, ack))
            .await
    }
}

struct Driver {
    inner: Arc<Inner>,
    generation: u64,
    engine: Engine,
    waiters: HashMap<PeerId, Vec<oneshot::Sender<Result<(), BleError>>>>,
}

impl Driver {
    /// Carries out every pending engine output.
    async fn drain(&mut self) {
        while let Some(o) = self.engine.poll_output() {
            let radio = &self.inner.radio;
            let r = match o {
                Output::Connect(addr) => radio.connect(addr).await,
                Output::Disconnect(conn) => radio.disconnect(conn).await,
                Output::Transmit { conn, bytes } => radio.transmit(conn, bytes).await,
                Output::Advertise(adv) => radio.advertise(adv).await,
                Output::PeerUp { peer, key, rssi } => {
                    let mut info = PeerInfo::new(peer, TransportType::Bluetooth, wall_ms());
                    info.metadata.insert(
                        PeerInfo::PUBLIC_KEY.to_owned(),
                        Value::Bytes(key.to_bytes().to_vec()),
                    );
                    if let Some(r) = rssi {
                        info.metadata
                            .insert("rssi".to_owned(), Value::Integer(i64::from(r)));
                    }
                    self.peer_up(info);
                    Ok(())
                }
                Output::PeerDown(peer) => {
                    self.peer_down(peer);
                    Ok(())
                }
                Output::Message { from, message } => {
                    self.inner
                        .listeners
                        .emit(&TransportEvent::Message { from, message });
                    Ok(())
                }
                Output::Misbehaved { peer, error } => {
                    self.inner.listeners.emit(&TransportEvent::Misbehaved {
                        peer,
                        reason: error,
                    });
                    Ok(())
                }
                Output::ConnectDone { peer, result } => {
                    for w in self.waiters.remove(&peer).unwrap_or_default() {
                        let r = match &result {
                            Ok(()) => Ok(()),
                            Err(BleError::Refused(p)) => Err(BleError::Refused(*p)),
                            Err(_) => Err(BleError::Unreachable(peer)),
                        };
                        let _ = w.send(r);
                    }
                    Ok(())
                }
            };
            if let Err(e) = r {
                // A closed connection reports itself through a Disconnected event.
                tracing::debug!(error = %e, "radio call failed");
            }
        }
    }

    fn peer_up(&self, info: PeerInfo) {
        {
            let mut st = lock(&self.inner.state);
            if st.generation != self.generation || !st.active {
                return;
            }
            st.peers.insert(info.peer_id, info.clone());
        }
        self.inner
            .listeners
            .emit(&TransportEvent::PeerDiscovered(info));
    }

    fn peer_down(&self, peer: PeerId) {
        let removed = {
            let mut st = lock(&self.inner.state);
            st.generation == self.generation && st.peers.remove(&peer).is_some()
        };
        if removed {
            self.inner.listeners.emit(&TransportEvent::PeerLost(peer));
        }
    }

    fn on_radio(&mut self, ev: RadioEvent) {
        let now = self.inner.now_ms();
        match ev {
            RadioEvent::Advertisement { addr, rssi, adv } => {
                self.engine.on_advertisement(addr, rssi, adv, now)
            }
            RadioEvent::Connected {
                conn,
                addr,
                role,
                channel,
            } => self.engine.on_connected(conn, addr, role, channel, now),
            RadioEvent::ConnectFailed { addr } => self.engine.on_connect_failed(addr, now),
            RadioEvent::Received { conn, bytes } => self.engine.on_fragment(conn, &bytes, now),
            RadioEvent::Disconnected { conn } => self.engine.on_disconnected(conn, now),
        }
    }

    /// Handles a command; `false` when the transport stops.
    fn on_command(&mut self, cmd: Command) -> Option<oneshot::Sender<()>> {
        let now = self.inner.now_ms();
        match cmd {
            Command::Send(peer, msg, prio, ack) => {
                let _ = ack.send(self.engine.send(peer, &msg, prio, now));
            }
            Command::Broadcast(msg, prio, ack) => {
                let _ = ack.send(self.engine.broadcast(&msg, prio, now));
            }
            Command::Connect(peer, ack) => {
                self.waiters.entry(peer).or_default().push(ack);
                self.engine.connect(peer, now);
            }
            Command::Disconnect(peer, ack) => {
                self.engine.disconnect(peer, now);
                let _ = ack.send(Ok(()));
            }
            Command::LinkChannel(peer, ack) => {
                let _ = ack.send(Ok(self.engine.link_channel(&peer)));
            }
            Command::Stop(ack) => return Some(ack),
        }
        None
    }
}

async fn run(
    mut d: Driver,
    mut cmds: mpsc::Receiver<Command>,
    mut radio_rx: mpsc::Receiver<RadioEvent>,
) {
    let mut epoch = epoch_of(wall_ms());
    loop {
        d.drain().await;
        let now = d.inner.now_ms();
        let wake = d.engine.next_timeout().unwrap_or(now + 1000).max(now);
        let epoch_wait = (epoch + 1)
            .saturating_mul(EPOCH_SECS * 1000)
            .saturating_sub(wall_ms());
        let sleep = Duration::from_millis((wake - now).min(epoch_wait).min(1000));
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { break };
                if let Some(ack) = d.on_command(cmd) {
                    d.engine.shutdown();
                    d.drain().await;
                    let _ = d.inner.radio.stop().await;
                    let _ = ack.send(());
                    return;
                }
            }
            ev = radio_rx.recv() => {
                let Some(ev) = ev else { break };
                d.on_radio(ev);
            }
            () = tokio::time::sleep(sleep) => {
                let e = epoch_of(wall_ms());
                if e != epoch {
                    epoch = e;
                    d.engine.set_epoch(e);
                }
                d.engine.handle_timeout(d.inner.now_ms());
            }
        }
    }
    let _ = d.inner.radio.stop().await;
}

impl TransportAdapter for BleTransport {
    fn transport_type(&self) -> TransportType {
        TransportType::Bluetooth
    }

    fn capabilities(&self) -> TransportCapabilities {
        let mut c = TransportCapabilities::seed_defaults(TransportType::Bluetooth);
        c.max_message_size = self.inner.config.engine.link.max_message_size;
        c
    }

    fn start(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if lock(&self.inner.state).active {
                return Ok(());
            }
            let cfg = &self.inner.config;
            let (etx, erx) = mpsc::channel(cfg.event_queue.max(1));
            self.inner
                .radio
                .start(etx)
                .await
                .map_err(BleError::into_transport_error)?;
            let mut engine = Engine::new(
                self.inner.identity.clone(),
                self.inner.policy.clone(),
                cfg.engine,
                cfg.presence_key.clone(),
                epoch_of(wall_ms()),
            );
            for k in &cfg.known_keys {
                engine.resolver_mut().add_key(k.clone());
            }
            for p in &cfg.known_peers {
                engine.resolver_mut().add_peer(*p);
            }
            let mut st = lock(&self.inner.state);
            st.generation += 1;
            st.active = true;
            let (ctx, crx) = mpsc::channel(cfg.command_queue.max(1));
            st.cmd = Some(ctx);
            let driver = Driver {
                inner: self.inner.clone(),
                generation: st.generation,
                engine,
                waiters: HashMap::new(),
            };
            let task = tokio::spawn(run(driver, crx, erx));
            st.task = Some(task.abort_handle());
            tracing::info!(peer = %self.inner.me, "ble transport started");
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let tx = {
                let st = lock(&self.inner.state);
                if !st.active {
                    return Ok(());
                }
                st.cmd.clone()
            };
            if let Some(tx) = tx {
                let (ack, rx) = oneshot::channel();
                if tx.send(Command::Stop(ack)).await.is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
                }
            }
            let lost: Vec<PeerId> = {
                let mut st = lock(&self.inner.state);
                st.active = false;
                st.generation += 1;
                st.cmd = None;
                if let Some(t) = st.task.take() {
                    t.abort();
                }
                st.peers.drain().map(|(p, _)| p).collect()
            };
            let _ = self.inner.radio.stop().await;
            for p in lost {
                self.inner.listeners.emit(&TransportEvent::PeerLost(p));
            }
            tracing::info!(peer = %self.inner.me, "ble transport stopped");
            Ok(())
        })
    }

    fn is_active(&self) -> bool {
        lock(&self.inner.state).active
    }

    fn peers(&self) -> Vec<PeerInfo> {
        lock(&self.inner.state).peers.values().cloned().collect()
    }

    fn connect_to_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if lock(&self.inner.state).peers.contains_key(&peer) {
                return Ok(());
            }
            self.call(|ack| Command::Connect(peer, ack)).await
        })
    }

    fn disconnect_from_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.call(|ack| Command::Disconnect(peer, ack)).await })
    }

    fn send(&self, peer: PeerId, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.send_with_priority(peer, message, Priority::Normal))
    }

    fn broadcast(&self, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.broadcast_with_priority(message, Priority::Normal))
    }

    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription {
        self.inner.listeners.subscribe(listener)
    }
}
