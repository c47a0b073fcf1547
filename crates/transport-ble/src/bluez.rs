//! [`BluezRadio`]: the [`Radio`] on Linux BlueZ over D-Bus, through `bluer`
//! (cargo feature `bluez`). Thin: every call maps to the BlueZ call of the table in
//! [`crate::radio`]; framing, Noise, policy stay in the sans-io core.
//!
//! # Both directions as writes
//! BlueZ sends a notification of a local characteristic to *every* subscribed client
//! (its external GATT server API has no per-device notify), so a device serving two
//! centrals could not address one of them. So GATT runs both ways over the one LE
//! link (BlueZ resolves the services of a device that connected to us, too): the
//! central writes its fragments (write without response) to the peer's
//! [`WRITE_CHAR_UUID`], the peripheral writes its fragments to the central's
//! [`NOTIFY_CHAR_UUID`] characteristic, which this backend serves as writable (the
//! "server to client" characteristic). A write on our write characteristic from
//! device X is for our [`Role::Peripheral`] connection with X (opened by the first
//! write, with the MTU BlueZ reports), one on the other characteristic for our
//! [`Role::Central`] connection with X; so two connections with one device (crossed
//! dials) stay apart, as the engine expects.
//!
//! # L2CAP channels
//! Unless made with [`BluezRadio::gatt_only`], the radio tries to offer an L2CAP LE
//! connection-oriented channel: at start it opens an `AF_BLUETOOTH` `SOCK_SEQPACKET`
//! socket, binds it to [`L2CAP_PSM`] with a receive MTU of [`COC_MTU`] and listens; if
//! that works it also serves [`PSM_CHAR_UUID`] (read: the PSM). A dial reads the
//! peer's [`PSM_CHAR_UUID`] once connected; if both offer, it connects a socket to the
//! peer's PSM and the link runs over it ([`Channel::Coc`], one fragment per SDU);
//! an accepted socket is a [`Role::Peripheral`] connection the same way. Any failure
//! (no Bluetooth sockets in this kernel or sandbox, no such characteristic, a refused
//! or timed-out connect) leaves the link on GATT as before, logged at debug.
//!
//! # Threads and order
//! bluer runs on a thread of its own with a current-thread tokio runtime: BlueZ calls
//! the application's `WriteValue` once per ATT write, bluer spawns one task per call,
//! and a single-threaded FIFO scheduler polls them in arrival order, so fragments
//! reach the engine in order (a work-stealing runtime could reorder them). Each
//! connection has one writer task that issues its writes one at a time, in order.
//!
//! # Bounds
//! Events go out with `try_send` on the engine's bounded channel: a value that cannot
//! be delivered drops its connection (radio contract). A write is refused with a
//! D-Bus error when it has an offset, is over [`MAX_VALUE`] bytes, or names no open
//! connection; each connection queues at most [`WRITE_QUEUE`] outgoing fragments.
//! Nothing a D-Bus peer sends panics: missing or mistyped properties are skipped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bluer::gatt::WriteOp;
use bluer::gatt::local::{
    Application, Characteristic, CharacteristicRead, CharacteristicWrite,
    CharacteristicWriteMethod, CharacteristicWriteRequest as LocalWrite, ReqError, Service,
};
use bluer::gatt::remote::CharacteristicWriteRequest;
use bluer::{Adapter, AdapterEvent, Address, DeviceEvent, DeviceProperty, DiscoveryFilter};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use ecomesh_types::BoxFuture;

use crate::engine::{ConnId, DeviceAddr, Role};
use crate::error::BleError;
use crate::frag::{Channel, MAX_COC_FRAGMENT, MIN_COC_MTU, check_mtu};
use crate::gatt::{
    Advertisement, COMPANY_ID, L2CAP_PSM, NOTIFY_CHAR_UUID, PSM_CHAR_UUID, SERVICE_UUID,
    WRITE_CHAR_UUID, psm_of_value,
};
use crate::radio::{Radio, RadioEvent};

/// Largest characteristic value accepted (the ATT attribute value limit).
pub const MAX_VALUE: usize = 512;
/// Outgoing fragments queued per connection before `transmit` refuses.
pub const WRITE_QUEUE: usize = 256;
/// How long a `Device1.Connect` plus service resolution may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// bluer reports a characteristic's `MTU` 5 bytes short of BlueZ's ATT MTU
/// (BlueZ drops the end of a value of the full size); the peripheral side takes the
/// same margin off the `mtu` of a write, so both ends of a link use one MTU.
pub const MTU_MARGIN: u16 = 5;

/// The receive SDU MTU asked for on an L2CAP channel: one whole unit per SDU.
pub const COC_MTU: u16 = MAX_COC_FRAGMENT as u16;
/// How long connecting a socket to a peer's PSM may take before the link stays on GATT.
pub const COC_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Devices whose `Connected` property is watched at once (a task each).
pub const MAX_WATCHED: usize = 64;

const COMMAND_QUEUE: usize = 256;

/// A BLE radio on a BlueZ adapter (`hci0` or another), over the system D-Bus
/// (`DBUS_SYSTEM_BUS_ADDRESS` when set, as libdbus reads it).
#[derive(Debug)]
pub struct BluezRadio {
    adapter: Option<String>,
    coc: bool,
    cmd: mpsc::Sender<Command>,
}

enum Command {
    Start(
        mpsc::Sender<RadioEvent>,
        oneshot::Sender<Result<(), BleError>>,
    ),
    Stop(oneshot::Sender<Result<(), BleError>>),
    Advertise(Advertisement, oneshot::Sender<Result<(), BleError>>),
    Connect(DeviceAddr, oneshot::Sender<Result<(), BleError>>),
    Disconnect(ConnId, oneshot::Sender<Result<(), BleError>>),
    Transmit(ConnId, Vec<u8>, oneshot::Sender<Result<(), BleError>>),
}

impl BluezRadio {
    /// A radio on `adapter` (`None`: BlueZ's default, `hci0` if present) that offers
    /// an L2CAP channel where it can (see the module documentation). Starts its
    /// backend thread; D-Bus is first reached by [`Radio::start`], which reports a
    /// missing BlueZ or adapter.
    pub fn new(adapter: Option<String>) -> Result<Self, BleError> {
        Self::build(adapter, true)
    }

    /// A radio that never offers nor opens an L2CAP channel: GATT only.
    pub fn gatt_only(adapter: Option<String>) -> Result<Self, BleError> {
        Self::build(adapter, false)
    }

    fn build(adapter: Option<String>, coc: bool) -> Result<Self, BleError> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let name = adapter.clone();
        std::thread::Builder::new()
            .name("ble-bluez".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(backend(name, coc, rx)),
                    Err(e) => tracing::error!(error = %e, "bluez backend: no runtime"),
                }
            })
            .map_err(|e| BleError::Radio(format!("bluez thread: {e}")))?;
        Ok(BluezRadio {
            adapter,
            coc,
            cmd: tx,
        })
    }

    /// Whether this radio tries to offer and open L2CAP channels.
    pub fn offers_coc(&self) -> bool {
        self.coc
    }

    /// The adapter name asked for (`None`: the default one).
    pub fn adapter(&self) -> Option<&str> {
        self.adapter.as_deref()
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), BleError>>) -> Command,
    ) -> Result<(), BleError> {
        let (ack, rx) = oneshot::channel();
        self.cmd
            .send(make(ack))
            .await
            .map_err(|_| BleError::Radio("bluez backend stopped".into()))?;
        rx.await
            .map_err(|_| BleError::Radio("bluez backend stopped".into()))?
    }
}

impl Radio for BluezRadio {
    fn start(&self, events: mpsc::Sender<RadioEvent>) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(self.call(|ack| Command::Start(events, ack)))
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(self.call(Command::Stop))
    }

    fn advertise(&self, adv: Advertisement) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(self.call(move |ack| Command::Advertise(adv, ack)))
    }

    fn connect(&self, addr: DeviceAddr) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(self.call(move |ack| Command::Connect(addr, ack)))
    }

    fn disconnect(&self, conn: ConnId) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(self.call(move |ack| Command::Disconnect(conn, ack)))
    }

    fn transmit(&self, conn: ConnId, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(self.call(move |ack| Command::Transmit(conn, bytes, ack)))
    }
}

fn radio_err(what: &str, e: impl std::fmt::Display) -> BleError {
    BleError::Radio(format!("{what}: {e}"))
}

fn uuid(u: u128) -> bluer::Uuid {
    bluer::Uuid::from_u128(u)
}

fn addr_of(a: Address) -> DeviceAddr {
    DeviceAddr(a.0)
}

/// An open connection.
struct Conn {
    addr: DeviceAddr,
    role: Role,
    writes: mpsc::Sender<Vec<u8>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

/// Where a connection's fragments go.
enum Target {
    /// GATT writes to this characteristic (found later when `None`).
    Gatt(Option<bluer::gatt::remote::Characteristic>),
    /// SDUs on this L2CAP socket, at this channel.
    Coc(Arc<bluer::l2cap::SeqPacket>, Channel),
}

/// What the backend loop and the GATT write handlers share (one thread).
#[derive(Default)]
struct Shared {
    events: Option<mpsc::Sender<RadioEvent>>,
    next_conn: ConnId,
    conns: HashMap<ConnId, Conn>,
    by_key: HashMap<(DeviceAddr, Role), ConnId>,
    watched: HashSet<DeviceAddr>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Delivers an event; false if there is no listener or its queue is full.
    fn emit(&self, ev: RadioEvent) -> bool {
        self.events
            .as_ref()
            .is_some_and(|tx| tx.try_send(ev).is_ok())
    }

    /// Forgets `conn` and stops its writer; tells the engine when `notify`.
    fn close(&mut self, conn: ConnId, notify: bool) -> Option<DeviceAddr> {
        let c = self.conns.remove(&conn)?;
        if self.by_key.get(&(c.addr, c.role)) == Some(&conn) {
            self.by_key.remove(&(c.addr, c.role));
        }
        for t in &c.tasks {
            t.abort();
        }
        if notify {
            let _ = self.emit(RadioEvent::Disconnected { conn });
        }
        Some(c.addr)
    }

    fn close_device(&mut self, addr: DeviceAddr) {
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.addr == addr)
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.close(conn, true);
        }
    }

    fn has_device(&self, addr: DeviceAddr) -> bool {
        self.conns.values().any(|c| c.addr == addr)
    }

    /// Registers a connection whose fragments go to `target` (a writer task, and a
    /// reader task on an L2CAP socket); reports it to the engine. GATT connections are
    /// found by device and role for the writes BlueZ hands us.
    fn open(
        &mut self,
        shared: &SharedRef,
        adapter: &Adapter,
        addr: DeviceAddr,
        role: Role,
        mtu: u16,
        target: Target,
    ) -> Option<ConnId> {
        self.next_conn += 1;
        let conn = self.next_conn;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (channel, tasks) = match target {
            Target::Gatt(ch) => {
                let w = tokio::spawn(writer(
                    shared.clone(),
                    adapter.clone(),
                    conn,
                    addr,
                    role,
                    ch,
                    rx,
                ));
                self.by_key.insert((addr, role), conn);
                (Channel::Gatt { mtu }, vec![w.abort_handle()])
            }
            Target::Coc(sock, channel) => {
                let w = tokio::spawn(coc_writer(shared.clone(), conn, sock.clone(), rx));
                let r = tokio::spawn(coc_reader(shared.clone(), conn, sock));
                (channel, vec![w.abort_handle(), r.abort_handle()])
            }
        };
        self.conns.insert(
            conn,
            Conn {
                addr,
                role,
                writes: tx,
                tasks,
            },
        );
        // One watcher per device, at most MAX_WATCHED: a connection of a device
        // beyond that ends by the engine's timers (handshake, keepalive) instead.
        if self.watched.len() < MAX_WATCHED && self.watched.insert(addr) {
            tokio::spawn(watch(shared.clone(), adapter.clone(), addr));
        }
        if self.emit(RadioEvent::Connected {
            conn,
            addr,
            role,
            channel,
        }) {
            Some(conn)
        } else {
            self.close(conn, false);
            None
        }
    }
}

/// Sends one connection's fragments in order, one SDU each, on its L2CAP socket.
async fn coc_writer(
    shared: SharedRef,
    conn: ConnId,
    sock: Arc<bluer::l2cap::SeqPacket>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(bytes) = rx.recv().await {
        match sock.send(&bytes).await {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => {
                tracing::debug!(conn, sent = n, len = bytes.len(), "bluez: short L2CAP send");
                break;
            }
            Err(e) => {
                tracing::debug!(conn, error = %e, "bluez: L2CAP send failed");
                break;
            }
        }
    }
    lock(&shared).close(conn, true);
}

/// Hands one connection's received SDUs to the engine, in order; an SDU over
/// [`MAX_COC_FRAGMENT`] bytes reaches the engine as such (it refuses it), the end of
/// the socket closes the connection.
async fn coc_reader(shared: SharedRef, conn: ConnId, sock: Arc<bluer::l2cap::SeqPacket>) {
    let mut buf = vec![0u8; MAX_COC_FRAGMENT + 1];
    loop {
        match sock.recv(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let mut s = lock(&shared);
                let bytes = buf[..n].to_vec();
                if !s.emit(RadioEvent::Received { conn, bytes }) {
                    s.close(conn, true);
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(conn, error = %e, "bluez: L2CAP receive failed");
                break;
            }
        }
    }
    lock(&shared).close(conn, true);
}

/// The channel of a connected L2CAP socket: the PSM and the smaller of its two MTUs
/// (at least [`MIN_COC_MTU`]).
fn coc_channel(sock: &bluer::l2cap::SeqPacket, psm: u16) -> Channel {
    let send = sock.send_mtu().unwrap_or(usize::from(MIN_COC_MTU));
    let recv = sock.recv_mtu().unwrap_or(usize::from(MIN_COC_MTU));
    let sdu_mtu = u16::try_from(send.min(recv))
        .unwrap_or(u16::MAX)
        .max(MIN_COC_MTU);
    Channel::Coc { psm, sdu_mtu }
}

/// Opens the listening L2CAP socket on [`L2CAP_PSM`]; an error means this radio
/// offers GATT only (no `AF_BLUETOOTH` sockets here, or the PSM is taken).
async fn coc_listen(adapter: &Adapter) -> Result<bluer::l2cap::SeqPacketListener, BleError> {
    let addr = adapter
        .address()
        .await
        .map_err(|e| radio_err("adapter address", e))?;
    let kind = adapter
        .address_type()
        .await
        .unwrap_or(bluer::AddressType::LePublic);
    let sock = bluer::l2cap::Socket::new_seq_packet().map_err(|e| radio_err("L2CAP socket", e))?;
    sock.bind(bluer::l2cap::SocketAddr::new(addr, kind, L2CAP_PSM))
        .map_err(|e| radio_err("L2CAP bind", e))?;
    sock.set_recv_mtu(COC_MTU)
        .map_err(|e| radio_err("L2CAP receive MTU", e))?;
    sock.listen(8).map_err(|e| radio_err("L2CAP listen", e))
}

/// Accepts L2CAP channels: each is our [`Role::Peripheral`] connection with its device.
async fn coc_accept(
    shared: SharedRef,
    adapter: Adapter,
    listener: bluer::l2cap::SeqPacketListener,
) {
    loop {
        match listener.accept().await {
            Ok((sock, sa)) => {
                let channel = coc_channel(&sock, L2CAP_PSM);
                let addr = addr_of(sa.addr);
                tracing::debug!(%addr, ?channel, "bluez: L2CAP channel accepted");
                let mut s = lock(&shared);
                if s.events.is_none() {
                    continue;
                }
                let target = Target::Coc(Arc::new(sock), channel);
                let _ = s.open(&shared, &adapter, addr, Role::Peripheral, 0, target);
            }
            Err(e) => {
                tracing::debug!(error = %e, "bluez: L2CAP accept failed; GATT only from now on");
                return;
            }
        }
    }
}

/// Our L2CAP channel to `addr`, if it offers one ([`PSM_CHAR_UUID`]) and the socket
/// connects in time; `None` keeps the link on GATT.
async fn coc_dial(
    adapter: &Adapter,
    addr: DeviceAddr,
) -> Option<(bluer::l2cap::SeqPacket, Channel)> {
    let attempt = async {
        let ch = remote_char(adapter, addr, PSM_CHAR_UUID).await?;
        let value = ch.read().await.map_err(|e| radio_err("PSM read", e))?;
        let psm = psm_of_value(&value).ok_or(BleError::Malformed("PSM characteristic value"))?;
        let device = adapter
            .device(Address(addr.0))
            .map_err(|e| radio_err("device", e))?;
        let kind = device
            .address_type()
            .await
            .unwrap_or(bluer::AddressType::LePublic);
        let sock =
            bluer::l2cap::Socket::new_seq_packet().map_err(|e| radio_err("L2CAP socket", e))?;
        sock.bind(bluer::l2cap::SocketAddr::new(Address::any(), kind, 0))
            .map_err(|e| radio_err("L2CAP bind", e))?;
        sock.set_recv_mtu(COC_MTU)
            .map_err(|e| radio_err("L2CAP receive MTU", e))?;
        let sock = sock
            .connect(bluer::l2cap::SocketAddr::new(Address(addr.0), kind, psm))
            .await
            .map_err(|e| radio_err("L2CAP connect", e))?;
        let channel = coc_channel(&sock, psm);
        Ok::<_, BleError>((sock, channel))
    };
    match tokio::time::timeout(COC_CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "bluez: no L2CAP channel, GATT");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, "bluez: L2CAP connect timed out, GATT");
            None
        }
    }
}

fn clamp_mtu(mtu: u16) -> u16 {
    check_mtu(mtu).unwrap_or(if mtu < 23 { 23 } else { 517 })
}

/// The characteristic `char_uuid` of our service on the connected device `addr`.
async fn remote_char(
    adapter: &Adapter,
    addr: DeviceAddr,
    char_uuid: u128,
) -> Result<bluer::gatt::remote::Characteristic, BleError> {
    let device = adapter
        .device(Address(addr.0))
        .map_err(|e| radio_err("device", e))?;
    for service in device
        .services()
        .await
        .map_err(|e| radio_err("services", e))?
    {
        if service.uuid().await.ok() != Some(uuid(SERVICE_UUID)) {
            continue;
        }
        for ch in service
            .characteristics()
            .await
            .map_err(|e| radio_err("characteristics", e))?
        {
            if ch.uuid().await.ok() == Some(uuid(char_uuid)) {
                return Ok(ch);
            }
        }
    }
    Err(BleError::Radio(format!("{addr}: no ecomesh service")))
}

/// Writes one connection's fragments in order (write without response) to the
/// peer's write characteristic (central) or to its server-to-client one
/// (peripheral, found once the peer's services are resolved).
async fn writer(
    shared: SharedRef,
    adapter: Adapter,
    conn: ConnId,
    addr: DeviceAddr,
    role: Role,
    mut target: Option<bluer::gatt::remote::Characteristic>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let req = CharacteristicWriteRequest {
        op_type: WriteOp::Command,
        ..Default::default()
    };
    while let Some(bytes) = rx.recv().await {
        let ch = match target.take() {
            Some(ch) => ch,
            None => {
                let char_uuid = match role {
                    Role::Central => WRITE_CHAR_UUID,
                    Role::Peripheral => NOTIFY_CHAR_UUID,
                };
                match tokio::time::timeout(CONNECT_TIMEOUT, remote_char(&adapter, addr, char_uuid))
                    .await
                {
                    Ok(Ok(ch)) => ch,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "bluez: no characteristic to write");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!(%addr, "bluez: services not resolved in time");
                        break;
                    }
                }
            }
        };
        if let Err(e) = ch.write_ext(&bytes, &req).await {
            tracing::debug!(%addr, error = %e, "bluez: write failed");
            break;
        }
        target = Some(ch);
    }
    lock(&shared).close(conn, true);
}

/// Ends every connection with `addr` when BlueZ reports it disconnected.
async fn watch(shared: SharedRef, adapter: Adapter, addr: DeviceAddr) {
    let events = match adapter.device(Address(addr.0)) {
        Ok(d) => d.events().await,
        Err(e) => Err(e),
    };
    if let Ok(mut events) = events {
        while let Some(ev) = events.next().await {
            if matches!(
                ev,
                DeviceEvent::PropertyChanged(DeviceProperty::Connected(false))
            ) {
                break;
            }
        }
    }
    let mut s = lock(&shared);
    s.watched.remove(&addr);
    s.close_device(addr);
}

/// A write on one of our characteristics from `req.device_address`.
fn on_write(
    shared: &SharedRef,
    adapter: &Adapter,
    value: Vec<u8>,
    req: &LocalWrite,
    role: Role,
) -> Result<(), ReqError> {
    if req.offset != 0 {
        return Err(ReqError::InvalidOffset);
    }
    if value.len() > MAX_VALUE {
        return Err(ReqError::InvalidValueLength);
    }
    let addr = addr_of(req.device_address);
    let mut s = lock(shared);
    if s.events.is_none() {
        return Err(ReqError::NotPermitted);
    }
    let conn = match s.by_key.get(&(addr, role)).copied() {
        Some(c) => c,
        // A central's first write opens our peripheral side of the link.
        None if role == Role::Peripheral => s
            .open(
                shared,
                adapter,
                addr,
                role,
                clamp_mtu(req.mtu.saturating_sub(MTU_MARGIN)),
                Target::Gatt(None),
            )
            .ok_or(ReqError::Failed)?,
        // A server-to-client write on no connection of ours.
        None => return Err(ReqError::NotPermitted),
    };
    if s.emit(RadioEvent::Received { conn, bytes: value }) {
        Ok(())
    } else {
        s.close(conn, true);
        Err(ReqError::Failed)
    }
}

fn write_char(
    shared: &SharedRef,
    adapter: &Adapter,
    char_uuid: u128,
    role: Role,
) -> Characteristic {
    let (shared, adapter) = (shared.clone(), adapter.clone());
    Characteristic {
        uuid: uuid(char_uuid),
        write: Some(CharacteristicWrite {
            write: true,
            write_without_response: true,
            method: CharacteristicWriteMethod::Fun(Box::new(move |value, req| {
                // Handled at once (not in the returned future's later polls): the
                // calls arrive in order and so reach the engine in order.
                let result = on_write(&shared, &adapter, value, &req, role);
                Box::pin(async move { result })
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The read-only characteristic offering our PSM.
fn psm_char() -> Characteristic {
    Characteristic {
        uuid: uuid(PSM_CHAR_UUID),
        read: Some(CharacteristicRead {
            read: true,
            fun: Box::new(|_| Box::pin(async { Ok(L2CAP_PSM.to_le_bytes().to_vec()) })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The backend's state while started.
struct Started {
    adapter: Adapter,
    _app: bluer::gatt::local::ApplicationHandle,
    adv: Option<bluer::adv::AdvertisementHandle>,
    discovery: tokio::task::AbortHandle,
    /// The L2CAP accept loop, when this radio offers a channel.
    coc: Option<tokio::task::AbortHandle>,
}

async fn start(
    session: &bluer::Session,
    name: Option<&str>,
    offer_coc: bool,
    shared: &SharedRef,
) -> Result<Started, BleError> {
    let adapter = match name {
        Some(n) => session.adapter(n),
        None => session.default_adapter().await,
    }
    .map_err(|e| radio_err("adapter", e))?;
    adapter
        .set_powered(true)
        .await
        .map_err(|e| radio_err("power", e))?;
    let listener = if offer_coc {
        match coc_listen(&adapter).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::info!(error = %e, "bluez: no L2CAP channel offered, GATT only");
                None
            }
        }
    } else {
        None
    };
    let mut characteristics = vec![
        write_char(shared, &adapter, WRITE_CHAR_UUID, Role::Peripheral),
        write_char(shared, &adapter, NOTIFY_CHAR_UUID, Role::Central),
    ];
    if listener.is_some() {
        characteristics.push(psm_char());
    }
    let app = Application {
        services: vec![Service {
            uuid: uuid(SERVICE_UUID),
            primary: true,
            characteristics,
            ..Default::default()
        }],
        ..Default::default()
    };
    let app = adapter
        .serve_gatt_application(app)
        .await
        .map_err(|e| radio_err("RegisterApplication", e))?;
    adapter
        .set_discovery_filter(DiscoveryFilter {
            uuids: [uuid(SERVICE_UUID)].into_iter().collect(),
            transport: bluer::DiscoveryTransport::Le,
            duplicate_data: true,
            ..Default::default()
        })
        .await
        .map_err(|e| radio_err("SetDiscoveryFilter", e))?;
    let stream = adapter
        .discover_devices_with_changes()
        .await
        .map_err(|e| radio_err("StartDiscovery", e))?;
    let discovery = tokio::spawn(discover(shared.clone(), adapter.clone(), stream)).abort_handle();
    let coc = listener
        .map(|l| tokio::spawn(coc_accept(shared.clone(), adapter.clone(), l)).abort_handle());
    Ok(Started {
        adapter,
        _app: app,
        adv: None,
        discovery,
        coc,
    })
}

/// Turns device updates during discovery into [`RadioEvent::Advertisement`]s.
async fn discover(
    shared: SharedRef,
    adapter: Adapter,
    stream: impl futures::Stream<Item = AdapterEvent>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        let AdapterEvent::DeviceAdded(address) = ev else {
            continue;
        };
        let Ok(device) = adapter.device(address) else {
            continue;
        };
        // Absent or mistyped properties (any D-Bus peer may send them) are skipped.
        let Ok(Some(rssi)) = device.rssi().await else {
            continue;
        };
        if let Ok(Some(uuids)) = device.uuids().await
            && !uuids.contains(&uuid(SERVICE_UUID))
        {
            continue;
        }
        let Ok(Some(data)) = device.manufacturer_data().await else {
            continue;
        };
        let Some(adv) = data
            .get(&COMPANY_ID)
            .and_then(|d| Advertisement::from_manufacturer_data(d))
        else {
            continue;
        };
        let s = lock(&shared);
        // A scan result lost to a full queue is like a missed advertisement.
        let _ = s.emit(RadioEvent::Advertisement {
            addr: addr_of(address),
            rssi,
            adv,
        });
    }
}

/// Dials `addr`: `Device1.Connect`, then our service's write characteristic; then,
/// if we offer an L2CAP channel (`coc`), the peer's channel when it offers one.
async fn dial(shared: SharedRef, adapter: Adapter, addr: DeviceAddr, coc: bool) {
    let attempt = async {
        let device = adapter
            .device(Address(addr.0))
            .map_err(|e| radio_err("device", e))?;
        device
            .connect()
            .await
            .map_err(|e| radio_err("connect", e))?;
        let ch = remote_char(&adapter, addr, WRITE_CHAR_UUID).await?;
        let mtu = ch.mtu().await.map_err(|e| radio_err("MTU", e))?;
        Ok::<_, BleError>((ch, clamp_mtu(u16::try_from(mtu).unwrap_or(u16::MAX))))
    };
    let result = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await;
    let channel = match &result {
        Ok(Ok(_)) if coc => coc_dial(&adapter, addr).await,
        _ => None,
    };
    let mut s = lock(&shared);
    let central = |s: &Shared| {
        s.conns
            .values()
            .any(|c| c.addr == addr && c.role == Role::Central)
    };
    match result {
        Ok(Ok((ch, mtu))) if !central(&s) => {
            let target = match channel {
                Some((sock, channel)) => Target::Coc(Arc::new(sock), channel),
                None => Target::Gatt(Some(ch)),
            };
            let _ = s.open(&shared, &adapter, addr, Role::Central, mtu, target);
        }
        Ok(Ok(_)) => {
            // Already connected as central to this device: this dial is redundant.
            let _ = s.emit(RadioEvent::ConnectFailed { addr });
        }
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "bluez: dial failed");
            let _ = s.emit(RadioEvent::ConnectFailed { addr });
        }
        Err(_) => {
            tracing::debug!(%addr, "bluez: dial timed out");
            let _ = s.emit(RadioEvent::ConnectFailed { addr });
        }
    }
}

async fn backend(name: Option<String>, coc: bool, mut rx: mpsc::Receiver<Command>) {
    let shared: SharedRef = Arc::default();
    let mut session: Option<bluer::Session> = None;
    let mut started: Option<Started> = None;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Start(events, ack) => {
                let result = async {
                    if session.is_none() {
                        session = Some(
                            bluer::Session::new()
                                .await
                                .map_err(|e| radio_err("D-Bus session", e))?,
                        );
                    }
                    let Some(sess) = session.as_ref() else {
                        return Err(BleError::Radio("no session".into()));
                    };
                    if started.is_none() {
                        lock(&shared).events = Some(events);
                        match start(sess, name.as_deref(), coc, &shared).await {
                            Ok(s) => started = Some(s),
                            Err(e) => {
                                lock(&shared).events = None;
                                return Err(e);
                            }
                        }
                    }
                    Ok(())
                }
                .await;
                let _ = ack.send(result);
            }
            Command::Stop(ack) => {
                if let Some(st) = started.take() {
                    st.discovery.abort();
                    if let Some(c) = &st.coc {
                        c.abort();
                    }
                    let devices = {
                        let mut s = lock(&shared);
                        s.events = None;
                        let conns: Vec<ConnId> = s.conns.keys().copied().collect();
                        let mut devices = HashSet::new();
                        for conn in conns {
                            devices.extend(s.close(conn, false));
                        }
                        devices
                    };
                    for addr in devices {
                        if let Ok(d) = st.adapter.device(Address(addr.0)) {
                            let _ = d.disconnect().await;
                        }
                    }
                }
                let _ = ack.send(Ok(()));
            }
            Command::Advertise(adv, ack) => {
                let result = match started.as_mut() {
                    None => Err(BleError::Radio("not started".into())),
                    Some(st) => {
                        // Only one advertisement at a time: the old one goes first.
                        st.adv = None;
                        let le = bluer::adv::Advertisement {
                            advertisement_type: bluer::adv::Type::Peripheral,
                            service_uuids: [uuid(SERVICE_UUID)].into_iter().collect(),
                            manufacturer_data: [(COMPANY_ID, adv.tag.0.to_vec())]
                                .into_iter()
                                .collect(),
                            discoverable: Some(true),
                            ..Default::default()
                        };
                        match st.adapter.advertise(le).await {
                            Ok(h) => {
                                st.adv = Some(h);
                                Ok(())
                            }
                            Err(e) => Err(radio_err("RegisterAdvertisement", e)),
                        }
                    }
                };
                let _ = ack.send(result);
            }
            Command::Connect(addr, ack) => {
                let result = match started.as_ref() {
                    None => Err(BleError::Radio("not started".into())),
                    Some(st) => {
                        tokio::spawn(dial(shared.clone(), st.adapter.clone(), addr, coc));
                        Ok(())
                    }
                };
                let _ = ack.send(result);
            }
            Command::Disconnect(conn, ack) => {
                let mut s = lock(&shared);
                let addr = s.close(conn, true);
                let last = addr.filter(|a| !s.has_device(*a));
                drop(s);
                if let (Some(addr), Some(st)) = (last, started.as_ref())
                    && let Ok(d) = st.adapter.device(Address(addr.0))
                {
                    tokio::spawn(async move {
                        let _ = d.disconnect().await;
                    });
                }
                let _ = ack.send(Ok(()));
            }
            Command::Transmit(conn, bytes, ack) => {
                let s = lock(&shared);
                let result = match s.conns.get(&conn) {
                    None => Err(BleError::Closed),
                    Some(c) => c
                        .writes
                        .try_send(bytes)
                        .map_err(|_| BleError::Radio(format!("write queue of {conn} full"))),
                };
                let _ = ack.send(result);
            }
        }
    }
}
