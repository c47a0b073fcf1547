//! The tokio driver: a serial port to a Meshtastic radio, one task running the
//! [`Engine`] and the [`RadioClient`], and the `TransportAdapter` implementation.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_types::{
    BoxFuture, Error, Listener, Listeners, NetworkMessage, PeerId, PeerInfo, Priority,
    Subscription, TransportAdapter, TransportCapabilities, TransportEvent, TransportType, Value,
};
use ecomesh_wire::encode_message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::client::{ClientEvent, RadioClient};
use crate::engine::{Engine, EngineConfig, EngineEvent};
use crate::error::LoraError;
use crate::frame::{Body, ShortId};
use crate::proto::ROUTING_ERROR_NONE;

/// Settings of a [`LoraTransport`].
#[derive(Clone, Debug)]
pub struct LoraConfig {
    /// Serial device of the Meshtastic radio, e.g. `/dev/ttyUSB0`.
    pub port: String,
    /// Baud rate (Meshtastic: 115200).
    pub baud: u32,
    /// Protocol settings.
    pub engine: EngineConfig,
    /// A heartbeat goes to the radio after this much serial silence.
    pub heartbeat: Duration,
    /// How long `start` waits for the radio's config download.
    pub ready_timeout: Duration,
    /// Commands queued to the driver task before callers wait.
    pub command_queue: usize,
    /// Collections announced in beacons.
    pub collections: Vec<String>,
}

/// A compact frame (notification header or permission grant) that arrived for us.
#[derive(Clone, Debug, PartialEq)]
pub struct CompactEvent {
    /// The origin's short id (first 4 bytes of its PeerId; authenticated hop by hop).
    pub origin: ShortId,
    /// The neighbour that handed it over.
    pub from: PeerId,
    /// The frame body ([`Body::Notification`] or [`Body::Grant`]).
    pub body: Body,
}

impl LoraConfig {
    /// The simulation preset ([`EngineConfig::for_simulation`]) for a simulated radio's
    /// pseudo-terminal: fast modem, no duty limit, short timers, 5 s heartbeats.
    pub fn simulated(port: impl Into<String>) -> Self {
        LoraConfig {
            engine: EngineConfig::for_simulation(),
            heartbeat: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(10),
            ..LoraConfig::new(port)
        }
    }

    /// Defaults (EU868 LongFast, seed timers) for the radio at `port`.
    pub fn new(port: impl Into<String>) -> Self {
        LoraConfig {
            port: port.into(),
            baud: 115_200,
            engine: EngineConfig::default(),
            heartbeat: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(15),
            command_queue: 64,
            collections: Vec::new(),
        }
    }
}

type Ack<T = ()> = oneshot::Sender<Result<T, LoraError>>;

enum Command {
    Send(PeerId, Box<NetworkMessage>, Priority, Ack),
    Broadcast(Box<NetworkMessage>, Priority, Ack),
    Compact(PeerId, Body, Priority, Ack),
    Connect(PeerId, Ack),
    Disconnect(PeerId, Ack),
    Collections(Vec<String>),
    Status(oneshot::Sender<LoraStatus>),
    Stop(oneshot::Sender<()>),
}

/// A snapshot of the driver's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraStatus {
    /// The radio's node number.
    pub node: Option<u32>,
    /// Airtime used in the current duty window, ms.
    pub airtime_used_ms: u64,
    /// Packets waiting for the channel.
    pub queued: usize,
    /// Data frames whose arrival at the next hop the radio has not confirmed yet.
    pub unconfirmed: usize,
    /// Frames held for a next hop that is not there yet.
    pub held: usize,
    /// Live routes: destination short id, next hop, hops.
    pub routes: Vec<(ShortId, PeerId, u8)>,
    /// Serial bytes that were not part of any frame.
    pub serial_skipped: u64,
}

#[derive(Default)]
struct State {
    active: bool,
    generation: u64,
    peers: HashMap<PeerId, PeerInfo>,
    cmd: Option<mpsc::Sender<Command>>,
    task: Option<AbortHandle>,
    collections: Vec<String>,
}

struct Inner {
    identity: Identity,
    me: PeerId,
    policy: Arc<AccessPolicy>,
    config: LoraConfig,
    listeners: Listeners<TransportEvent>,
    compact: Listeners<CompactEvent>,
    epoch: Instant,
    state: Mutex<State>,
}

/// The LoRa transport (see the crate docs). Needs a tokio runtime with the time driver.
#[derive(Clone)]
pub struct LoraTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LoraTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraTransport")
            .field("peer_id", &self.inner.me)
            .field("port", &self.inner.config.port)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return wall_ms() ^ 0x9E37_79B9_7F4A_7C15;
    }
    u64::from_le_bytes(b)
}

impl LoraTransport {
    /// A stopped transport for `identity` under `policy`.
    pub fn new(identity: Identity, policy: AccessPolicy, config: LoraConfig) -> Self {
        let me = identity.peer_id();
        let collections = config.collections.clone();
        LoraTransport {
            inner: Arc::new(Inner {
                identity,
                me,
                policy: Arc::new(policy),
                config,
                listeners: Listeners::new(),
                compact: Listeners::new(),
                epoch: Instant::now(),
                state: Mutex::new(State {
                    collections,
                    ..State::default()
                }),
            }),
        }
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.me
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>, Error> {
        let st = lock(&self.inner.state);
        if !st.active {
            return Err(Error::NotStarted);
        }
        st.cmd.clone().ok_or(Error::NotStarted)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LoraError>>) -> Command,
    ) -> Result<T, Error> {
        let tx = self.sender()?;
        let (ack, rx) = oneshot::channel();
        tx.send(make(ack)).await.map_err(|_| Error::NotStarted)?;
        match rx.await {
            Ok(r) => r.map_err(LoraError::into_transport_error),
            Err(_) => Err(Error::Closed),
        }
    }

    fn check(&self, message: &NetworkMessage, priority: Priority) -> Result<(), Error> {
        if priority == Priority::Bulk {
            return Err(LoraError::BulkRefused.into_transport_error());
        }
        let size = encode_message(message).len();
        let max = self.inner.config.engine.max_message_size;
        if size > max {
            return Err(Error::MessageTooLarge { size, max });
        }
        Ok(())
    }

    /// Sends with an explicit priority: `Critical` first, ..., and `Bulk` refused
    /// ([`LoraError::BulkRefused`] inside [`Error::Backend`]). `peer` may be a neighbour or
    /// a node the routing table reaches through one.
    ///
    /// What `Ok` promises: the message (each of its fragments) is queued for the radio
    /// and then kept, hop by hop, until the radio reports that the next hop received it
    /// (Meshtastic's `want_ack` acknowledgement). A frame the radio gives up on, or does
    /// not report on in time, is sent again through the best next hop at that moment
    /// (up to [`EngineConfig::hop_retries`] times), then held until a route appears
    /// (bounded by `held_capacity` and `held_timeout_ms`, with a warning when one goes).
    /// It does not promise end-to-end delivery: a relay that restarts loses what it
    /// held, and a frame acknowledged by a radio whose node then changed its session
    /// cannot be decrypted; the mesh above retries end to end until the destination
    /// acknowledges.
    pub async fn send_with_priority(
        &self,
        peer: PeerId,
        message: NetworkMessage,
        priority: Priority,
    ) -> Result<(), Error> {
        self.check(&message, priority)?;
        self.call(|ack| Command::Send(peer, Box::new(message), priority, ack))
            .await
    }

    /// Sends a compact notification header or permission grant (see the crate docs).
    pub async fn send_compact(
        &self,
        peer: PeerId,
        body: Body,
        priority: Priority,
    ) -> Result<(), Error> {
        self.call(|ack| Command::Compact(peer, body, priority, ack))
            .await
    }

    /// Registers a listener for compact frames addressed to us.
    pub fn subscribe_compact(&self, listener: Listener<CompactEvent>) -> Subscription {
        self.inner.compact.subscribe(listener)
    }

    /// Replaces the collections announced (as a Bloom filter) in beacons.
    pub fn set_collections(&self, collections: Vec<String>) {
        let tx = {
            let mut st = lock(&self.inner.state);
            st.collections = collections.clone();
            st.cmd.clone()
        };
        if let Some(tx) = tx {
            let _ = tx.try_send(Command::Collections(collections));
        }
    }

    /// The driver's state (airtime, queue, routes).
    pub async fn status(&self) -> Result<LoraStatus, Error> {
        let tx = self.sender()?;
        let (ack, rx) = oneshot::channel();
        tx.send(Command::Status(ack))
            .await
            .map_err(|_| Error::NotStarted)?;
        rx.await.map_err(|_| Error::Closed)
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn peer_up(&self, generation: u64, info: PeerInfo) {
        {
            let mut st = lock(&self.state);
            if st.generation != generation || !st.active {
                return;
            }
            st.peers.insert(info.peer_id, info.clone());
        }
        self.listeners.emit(&TransportEvent::PeerDiscovered(info));
    }

    /// The driver ended by itself (serial port gone): the transport is stopped and every
    /// peer lost.
    fn ended(&self, generation: u64) {
        let lost: Vec<PeerId> = {
            let mut st = lock(&self.state);
            if st.generation != generation || !st.active {
                return;
            }
            st.active = false;
            st.generation += 1;
            st.cmd = None;
            st.task = None;
            st.peers.drain().map(|(p, _)| p).collect()
        };
        tracing::warn!(peer = %self.me, "lora transport stopped: the radio is gone");
        for p in lost {
            self.listeners.emit(&TransportEvent::PeerLost(p));
        }
    }

    fn peer_down(&self, generation: u64, peer: PeerId) {
        let removed = {
            let mut st = lock(&self.state);
            st.generation == generation && st.peers.remove(&peer).is_some()
        };
        if removed {
            self.listeners.emit(&TransportEvent::PeerLost(peer));
        }
    }
}

/// Opens the serial port and starts the reader and writer threads.
type SerialHandles = (
    mpsc::Receiver<Result<Vec<u8>, LoraError>>,
    std::sync::mpsc::Sender<Vec<u8>>,
    Vec<std::thread::JoinHandle<()>>,
);

fn open_serial(config: &LoraConfig, stop: Arc<AtomicBool>) -> Result<SerialHandles, LoraError> {
    let mut reader = serialport::new(&config.port, config.baud)
        .timeout(Duration::from_millis(50))
        .open()?;
    let mut writer = reader.try_clone()?;
    let (rtx, rrx) = mpsc::channel::<Result<Vec<u8>, LoraError>>(256);
    let (wtx, wrx) = std::sync::mpsc::channel::<Vec<u8>>();
    let stop_r = stop.clone();
    let r = std::thread::Builder::new()
        .name("lora-serial-read".into())
        .spawn(move || {
            let mut buf = [0u8; 1024];
            while !stop_r.load(Ordering::Acquire) {
                match reader.read(&mut buf) {
                    // Readable but nothing to read: the device hung up.
                    Ok(0) => {
                        let _ = rtx.blocking_send(Err(LoraError::Closed));
                        break;
                    }
                    Ok(n) => {
                        if rtx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = rtx.blocking_send(Err(e.into()));
                        break;
                    }
                }
            }
        })?;
    let w = std::thread::Builder::new()
        .name("lora-serial-write".into())
        .spawn(move || {
            while let Ok(bytes) = wrx.recv() {
                if writer
                    .write_all(&bytes)
                    .and_then(|()| writer.flush())
                    .is_err()
                {
                    break;
                }
            }
            stop.store(true, Ordering::Release);
        })?;
    Ok((rrx, wtx, vec![r, w]))
}

struct Driver {
    inner: Arc<Inner>,
    generation: u64,
    engine: Engine,
    client: RadioClient,
    write: std::sync::mpsc::Sender<Vec<u8>>,
    waiters: Vec<(PeerId, u64, Ack)>,
    /// Radio packet id -> engine ticket of the tracked frames on the radio, bounded (the
    /// engine times out a frame whose verdict never comes).
    tickets: VecDeque<(u32, u64)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Radio packets whose verdict is awaited at once (the Meshtastic TX queue holds fewer).
const MAX_TICKETS: usize = 256;

impl Driver {
    fn write(&mut self, bytes: Vec<u8>) {
        let _ = self.write.send(bytes);
    }

    fn pump(&mut self, now: u64) {
        while let Some(t) = self.engine.poll_transmit(now) {
            let (id, bytes) = self.client.packet(&t, now);
            if let Some(ticket) = t.ticket {
                if self.tickets.len() >= MAX_TICKETS {
                    self.tickets.pop_front();
                }
                self.tickets.push_back((id, ticket));
            }
            self.write(bytes);
        }
        if let Some(hb) = self.client.poll_heartbeat(now) {
            self.write(hb);
        }
        while let Some(ev) = self.engine.poll_event() {
            match ev {
                EngineEvent::PeerUp { peer, key } => {
                    let mut info = PeerInfo::new(peer, TransportType::Lora, wall_ms());
                    info.metadata.insert(
                        PeerInfo::PUBLIC_KEY.to_owned(),
                        Value::Bytes(key.to_bytes().to_vec()),
                    );
                    let node = self
                        .engine
                        .neighbours()
                        .iter()
                        .find(|n| n.peer == peer)
                        .and_then(|n| n.node);
                    if let Some(node) = node {
                        info.metadata
                            .insert("meshtasticNode".to_owned(), Value::Integer(i64::from(node)));
                    }
                    self.inner.peer_up(self.generation, info);
                    self.resolve(peer, Ok(()));
                }
                EngineEvent::PeerDown(peer) => self.inner.peer_down(self.generation, peer),
                EngineEvent::Message {
                    from,
                    message,
                    link_authenticated,
                    ..
                } => {
                    let ev = if link_authenticated {
                        TransportEvent::LinkMessage { from, message }
                    } else {
                        TransportEvent::Message { from, message }
                    };
                    self.inner.listeners.emit(&ev);
                }
                EngineEvent::Compact { origin, from, body } => {
                    self.inner
                        .compact
                        .emit(&CompactEvent { origin, from, body });
                }
                EngineEvent::ConnectFailed { peer, reason } => {
                    tracing::info!(%peer, %reason, "connect failed");
                    let e = if reason.contains("policy") {
                        LoraError::Refused(peer)
                    } else {
                        LoraError::Timeout("lora handshake")
                    };
                    self.resolve(peer, Err(e));
                }
            }
        }
        let expired: Vec<usize> = (0..self.waiters.len())
            .filter(|i| self.waiters[*i].1 <= now)
            .collect();
        for i in expired.into_iter().rev() {
            let (_, _, ack) = self.waiters.swap_remove(i);
            let _ = ack.send(Err(LoraError::Timeout("lora connect")));
        }
    }

    fn resolve(&mut self, peer: PeerId, r: Result<(), LoraError>) {
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].0 == peer {
                let (_, _, ack) = self.waiters.swap_remove(i);
                let _ = ack.send(match &r {
                    Ok(()) => Ok(()),
                    Err(LoraError::Refused(p)) => Err(LoraError::Refused(*p)),
                    Err(_) => Err(LoraError::Timeout("lora handshake")),
                });
            } else {
                i += 1;
            }
        }
    }

    fn command(&mut self, cmd: Command, now: u64) -> Option<oneshot::Sender<()>> {
        match cmd {
            Command::Send(peer, m, p, ack) => {
                let _ = ack.send(self.engine.send_message(peer, &m, p, now));
            }
            Command::Broadcast(m, p, ack) => {
                let _ = ack.send(self.engine.broadcast_message(&m, p, now));
            }
            Command::Compact(peer, body, p, ack) => {
                let _ = ack.send(self.engine.send_compact(peer, body, p, now));
            }
            Command::Connect(peer, ack) => match self.engine.connect(peer, now) {
                Ok(true) => {
                    let _ = ack.send(Ok(()));
                }
                Ok(false) => {
                    let deadline = now + self.engine.config().handshake_timeout_ms;
                    self.waiters.push((peer, deadline, ack));
                }
                Err(e) => {
                    let _ = ack.send(Err(e));
                }
            },
            Command::Disconnect(peer, ack) => {
                self.engine.disconnect(peer);
                let _ = ack.send(Ok(()));
            }
            Command::Collections(c) => self.engine.set_collections(&c),
            Command::Status(ack) => {
                let _ = ack.send(LoraStatus {
                    node: self.client.node(),
                    airtime_used_ms: self.engine.airtime_used_ms(now),
                    queued: self.engine.queued(),
                    unconfirmed: self.engine.unconfirmed(),
                    held: self.engine.held(),
                    routes: self.engine.routes(now),
                    serial_skipped: self.client.skipped(),
                });
            }
            Command::Stop(ack) => return Some(ack),
        }
        None
    }

    fn radio(&mut self, bytes: &[u8], now: u64) {
        for ev in self.client.receive(bytes) {
            match ev {
                ClientEvent::Packet {
                    from,
                    payload,
                    hops,
                    ..
                } => {
                    if let Err(e) = self.engine.handle_radio(from, &payload, hops, now) {
                        tracing::debug!(from, error = %e, "frame refused");
                    }
                }
                ClientEvent::Routing {
                    request_id,
                    error_reason,
                } => {
                    let i = self.tickets.iter().position(|(id, _)| *id == request_id);
                    if let Some((_, ticket)) = i.and_then(|i| self.tickets.remove(i)) {
                        let delivered = error_reason == ROUTING_ERROR_NONE;
                        if !delivered {
                            tracing::debug!(request_id, error_reason, "radio gave up on a packet");
                        }
                        self.engine.handle_hop_result(ticket, delivered, now);
                    }
                }
                ClientEvent::Rebooted => {
                    tracing::warn!("radio rebooted; redoing the config handshake");
                    let b = self.client.start(now);
                    self.write(b);
                }
                ClientEvent::Dropped(reason) => tracing::debug!(reason, "serial frame dropped"),
                ClientEvent::Ready { node } => tracing::debug!(node, "radio ready"),
            }
        }
    }

    fn deadline(&mut self, now: u64) -> u64 {
        let mut d = self
            .engine
            .next_deadline(now)
            .min(self.client.next_heartbeat());
        for w in &self.waiters {
            d = d.min(w.1);
        }
        d.max(now)
    }
}

async fn run(
    mut d: Driver,
    mut bytes: mpsc::Receiver<Result<Vec<u8>, LoraError>>,
    mut cmds: mpsc::Receiver<Command>,
    stop_flag: Arc<AtomicBool>,
) {
    let stop_ack = loop {
        let now = d.inner.now_ms();
        d.engine.handle_timeout(now);
        d.pump(now);
        let deadline = d.deadline(now);
        let at = tokio::time::Instant::from_std(d.inner.epoch + Duration::from_millis(deadline));
        tokio::select! {
            b = bytes.recv() => match b {
                Some(Ok(b)) => { let now = d.inner.now_ms(); d.radio(&b, now); }
                Some(Err(e)) => { tracing::warn!(error = %e, "serial port failed"); break None; }
                None => { tracing::warn!("serial port closed"); break None; }
            },
            c = cmds.recv() => match c {
                Some(c) => { let now = d.inner.now_ms(); if let Some(ack) = d.command(c, now) { break Some(ack); } }
                None => break None,
            },
            _ = tokio::time::sleep_until(at) => {}
        }
    };
    if stop_ack.is_none() {
        // Ended by itself (radio gone): stopped from now on, every peer lost.
        d.inner.ended(d.generation);
    }
    // Tell the neighbours, then drain the queue (within the duty cycle) for a while.
    d.engine.shutdown();
    let until = d.inner.now_ms() + 5_000;
    loop {
        let now = d.inner.now_ms();
        d.pump(now);
        if d.engine.queued() == 0 || now >= until {
            break;
        }
        let next = d.engine.next_deadline(now).min(until);
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            d.inner.epoch + Duration::from_millis(next),
        ))
        .await;
    }
    let bye = d.client.disconnect();
    d.write(bye);
    for (_, _, ack) in d.waiters.drain(..) {
        let _ = ack.send(Err(LoraError::Closed));
    }
    let (closed, _) = std::sync::mpsc::channel();
    drop(std::mem::replace(&mut d.write, closed));
    // The writer thread sets the flag after flushing what we queued.
    let flushed = tokio::time::timeout(Duration::from_secs(2), async {
        while !stop_flag.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if flushed.is_err() {
        stop_flag.store(true, Ordering::Release);
    }
    // The port is free (for a restart) once both threads have ended.
    let threads = std::mem::take(&mut d.threads);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    if let Some(ack) = stop_ack {
        let _ = ack.send(());
    }
}

impl TransportAdapter for LoraTransport {
    fn transport_type(&self) -> TransportType {
        TransportType::Lora
    }

    fn capabilities(&self) -> TransportCapabilities {
        let mut c = TransportCapabilities::seed_defaults(TransportType::Lora);
        let e = &self.inner.config.engine;
        c.max_message_size = e.max_message_size;
        // One full packet per its airtime, under the duty budget.
        let air = e.radio.max_packet_airtime_ms().max(1);
        let per_s = 233 * 1000 / air;
        c.average_bandwidth = per_s * u64::from(e.duty.permille.min(1000)) / 1000;
        c.average_latency_ms = u32::try_from(air + e.scheduler.slot_ms).unwrap_or(u32::MAX);
        c
    }

    fn start(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if lock(&self.inner.state).active {
                return Ok(());
            }
            let cfg = &self.inner.config;
            let stop = Arc::new(AtomicBool::new(false));
            let (mut bytes, write, threads) =
                open_serial(cfg, stop.clone()).map_err(LoraError::into_transport_error)?;
            let seed = random_u64();
            let mut client = RadioClient::new(
                u64::try_from(cfg.heartbeat.as_millis()).unwrap_or(u64::MAX),
                (seed >> 32) as u32,
            );
            let _ = write.send(client.start(self.inner.now_ms()));
            // Wait for the config download.
            let ready = tokio::time::timeout(cfg.ready_timeout, async {
                while let Some(b) = bytes.recv().await {
                    let b = b?;
                    for ev in client.receive(&b) {
                        if let ClientEvent::Ready { node } = ev {
                            return Ok(node);
                        }
                    }
                }
                Err(LoraError::Closed)
            })
            .await;
            let node = match ready {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    stop.store(true, Ordering::Release);
                    return Err(e.into_transport_error());
                }
                Err(_) => {
                    stop.store(true, Ordering::Release);
                    return Err(LoraError::Timeout("radio config download").into_transport_error());
                }
            };
            let mut st = lock(&self.inner.state);
            if st.active {
                stop.store(true, Ordering::Release);
                return Ok(());
            }
            let mut engine = Engine::new(
                self.inner.identity.clone(),
                self.inner.policy.clone(),
                cfg.engine.clone(),
                self.inner.now_ms(),
                seed,
            );
            engine.set_collections(&st.collections);
            st.generation += 1;
            st.active = true;
            let (ctx, crx) = mpsc::channel(cfg.command_queue.max(1));
            st.cmd = Some(ctx);
            let driver = Driver {
                inner: self.inner.clone(),
                generation: st.generation,
                engine,
                client,
                write,
                waiters: Vec::new(),
                tickets: VecDeque::new(),
                threads,
            };
            let task = tokio::spawn(run(driver, bytes, crx, stop));
            st.task = Some(task.abort_handle());
            tracing::info!(peer = %self.inner.me, port = %cfg.port, node, "lora transport started");
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
            for p in lost {
                self.inner.listeners.emit(&TransportEvent::PeerLost(p));
            }
            tracing::info!(peer = %self.inner.me, "lora transport stopped");
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
        Box::pin(async move {
            self.check(&message, Priority::Normal)?;
            self.call(|ack| Command::Broadcast(Box::new(message), Priority::Normal, ack))
                .await
        })
    }

    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription {
        self.inner.listeners.subscribe(listener)
    }
}
