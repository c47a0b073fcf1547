//! The tokio driver: TCP listener, dialling with backoff, per link a reader task and a
//! writer task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_types::{
    BoxFuture, Error, Listener, Listeners, NetworkMessage, PeerId, PeerInfo, Subscription,
    TransportAdapter, TransportCapabilities, TransportEvent, TransportType, Value,
};
use ecomesh_wire::encoded_message_len;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use crate::error::WiredError;
use crate::link::{Link, LinkConfig, LinkEvent, LinkReader, LinkWriter};

/// Output buffered per link before the link stops taking new messages from its queue.
const OUTPUT_HIGH_WATER: usize = 1 << 20;

/// Settings of a [`WiredTransport`].
#[derive(Clone, Debug)]
pub struct WiredConfig {
    /// Address the listener binds (port 0: chosen by the OS, then kept across restarts).
    pub listen: SocketAddr,
    /// Link timing and size limits.
    pub link: LinkConfig,
    /// Messages queued per peer before `send` waits.
    pub send_queue: usize,
    /// First delay before redialling a lost peer we dialled.
    pub backoff_initial: Duration,
    /// Longest delay between redials (the delay doubles up to this).
    pub backoff_max: Duration,
    /// Inbound connections still handshaking at once; more are closed at once.
    pub max_pending_handshakes: usize,
    /// Limit on one TCP connect.
    pub connect_timeout: Duration,
}

impl Default for WiredConfig {
    fn default() -> Self {
        WiredConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            link: LinkConfig::default(),
            send_queue: 64,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            max_pending_handshakes: 64,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A message handed over to a link's writer (`send` resolved when it was queued).
enum Command {
    Send(NetworkMessage),
}

struct PeerEntry {
    info: PeerInfo,
    link: u64,
    initiator: PeerId,
    tx: mpsc::Sender<Command>,
    /// The largest encoded message the link sends (the smaller of both sides' limits).
    send_limit: usize,
}

struct DialEntry {
    peer: Option<PeerId>,
    task: Option<AbortHandle>,
}

#[derive(Default)]
struct State {
    generation: u64,
    active: bool,
    local_addr: Option<SocketAddr>,
    /// The accept loop; `stop` aborts it and waits until it ended, so the
    /// listening socket is closed (and its port free again) when `stop` returns.
    accept_task: Option<JoinHandle<()>>,
    links: HashMap<u64, AbortHandle>,
    peers: HashMap<PeerId, PeerEntry>,
    dials: HashMap<SocketAddr, DialEntry>,
    next_link: u64,
}

struct Inner {
    identity: Identity,
    me: PeerId,
    policy: Arc<AccessPolicy>,
    config: WiredConfig,
    listeners: Listeners<TransportEvent>,
    epoch: Instant,
    state: Mutex<State>,
    changed: Notify,
    pending_handshakes: AtomicUsize,
}

/// The wired LAN transport: TCP links carrying Noise XX sessions (see [`crate::link`]).
///
/// Peers are reached by dialling their address ([`WiredTransport::dial`], or discovery
/// feeding addresses in); a peer we dialled is redialled with exponential backoff after
/// the link drops, across `stop`/`start` too, until [`TransportAdapter::disconnect_from_peer`]
/// or an access-policy refusal. Needs a tokio runtime (time and net drivers).
#[derive(Clone)]
pub struct WiredTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WiredTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WiredTransport")
            .field("peer_id", &self.inner.me)
            .field("local_addr", &self.local_addr())
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

/// How a link task ended.
struct LinkEnd {
    established: Option<PeerId>,
    superseded: bool,
    refused: bool,
}

impl WiredTransport {
    /// A stopped transport for `identity` under `policy`.
    pub fn new(identity: Identity, policy: AccessPolicy, config: WiredConfig) -> Self {
        let me = identity.peer_id();
        WiredTransport {
            inner: Arc::new(Inner {
                identity,
                me,
                policy: Arc::new(policy),
                config,
                listeners: Listeners::new(),
                epoch: Instant::now(),
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                pending_handshakes: AtomicUsize::new(0),
            }),
        }
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.me
    }

    /// The address the listener is bound to (known after the first `start`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.inner.state).local_addr
    }

    /// Dials `addr`, and keeps redialling it after losses; resolves with the peer's id
    /// once the link is established, or with why the first attempt failed
    /// ([`Error::PeerRejected`] when either side's policy refused).
    pub async fn dial(&self, addr: SocketAddr) -> Result<PeerId, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.inner.state);
            if !st.active {
                return Err(Error::NotStarted);
            }
            let generation = st.generation;
            let entry = st.dials.entry(addr).or_insert(DialEntry {
                peer: None,
                task: None,
            });
            if let Some(old) = entry.task.take() {
                old.abort();
            }
            let task = tokio::spawn(dial_loop(self.inner.clone(), generation, addr, Some(tx)));
            entry.task = Some(task.abort_handle());
        }
        match rx.await {
            Ok(r) => r.map_err(WiredError::into_transport_error),
            Err(_) => Err(Error::Closed),
        }
    }
    /// Stops redialling `addr` (for example when discovery lost the peer there); a link
    /// that is up stays up until it drops.
    pub fn forget(&self, addr: SocketAddr) {
        let mut st = lock(&self.inner.state);
        let Some(d) = st.dials.remove(&addr) else {
            return;
        };
        let connected = d.peer.is_some_and(|p| st.peers.contains_key(&p));
        if !connected && let Some(t) = d.task {
            t.abort();
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Refuses a message whose encoding is over the maximum, measured without encoding
    /// it ([`encoded_message_len`]).
    fn check_size(&self, msg: &NetworkMessage) -> Result<(), Error> {
        let max = self.config.link.max_message_size;
        let size = encoded_message_len(msg);
        if size > max {
            return Err(Error::MessageTooLarge { size, max });
        }
        Ok(())
    }

    /// Records an established link; false if it lost to an existing link with `peer`
    /// or the transport stopped meanwhile.
    fn register(
        &self,
        generation: u64,
        link: u64,
        (peer, key): (PeerId, Option<PublicKey>),
        initiator: PeerId,
        addr: SocketAddr,
        (tx, send_limit): (mpsc::Sender<Command>, usize),
    ) -> bool {
        let info = {
            let mut st = lock(&self.state);
            if st.generation != generation || !st.active {
                return false;
            }
            let replaced = match st.peers.get(&peer) {
                Some(old) => {
                    // Both ends pick the same link: the one the smaller peer id dialled,
                    // or the newer of two dialled by the same side.
                    let keep_new = old.initiator == initiator || initiator == self.me.min(peer);
                    if !keep_new {
                        return false;
                    }
                    true
                }
                None => false,
            };
            if initiator == self.me
                && let Some(d) = st.dials.get_mut(&addr)
            {
                // Known as connected from now on: `forget` must not abort this link.
                d.peer = Some(peer);
            }
            let mut info = PeerInfo::new(peer, TransportType::Wired, wall_ms());
            info.metadata
                .insert("address".to_owned(), Value::Text(addr.to_string()));
            if let Some(k) = key {
                info.metadata.insert(
                    PeerInfo::PUBLIC_KEY.to_owned(),
                    Value::Bytes(k.to_bytes().to_vec()),
                );
            }
            st.peers.insert(
                peer,
                PeerEntry {
                    info: info.clone(),
                    link,
                    initiator,
                    tx,
                    send_limit,
                },
            );
            if replaced {
                tracing::debug!(%peer, "replaced an older link");
                return true;
            }
            info
        };
        tracing::info!(%peer, %addr, "peer connected");
        self.listeners.emit(&TransportEvent::PeerDiscovered(info));
        true
    }

    fn unregister(&self, link: u64, peer: Option<PeerId>) {
        let lost = {
            let mut st = lock(&self.state);
            st.links.remove(&link);
            match peer {
                Some(p) if st.peers.get(&p).is_some_and(|e| e.link == link) => {
                    st.peers.remove(&p);
                    Some(p)
                }
                _ => None,
            }
        };
        if let Some(p) = lost {
            tracing::info!(peer = %p, "peer lost");
            self.listeners.emit(&TransportEvent::PeerLost(p));
        }
        self.changed.notify_waiters();
    }

    fn link_id(&self, generation: u64, task: &AbortHandle) -> Option<u64> {
        let mut st = lock(&self.state);
        if st.generation != generation || !st.active {
            task.abort();
            return None;
        }
        let id = st.next_link;
        st.next_link += 1;
        st.links.insert(id, task.clone());
        Some(id)
    }
}

/// Who runs a link and what it reports back to.
struct LinkCtx {
    inner: Arc<Inner>,
    generation: u64,
    link_id: u64,
    addr: SocketAddr,
    initiator: bool,
    done: Option<oneshot::Sender<Result<PeerId, WiredError>>>,
    pending: Option<PendingGuard>,
}

/// Runs one link until it ends: the handshake on this task, then (once established)
/// a writer task that seals and writes, while this task reads and opens.
async fn run_link(ctx: LinkCtx, stream: TcpStream, mut link: Link) -> LinkEnd {
    let LinkCtx {
        inner,
        generation,
        link_id,
        addr,
        initiator,
        mut done,
        mut pending,
    } = ctx;
    let (mut rd, mut wr) = stream.into_split();
    // Unregisters however the task ends, including when it is aborted.
    let mut guard = Unregister {
        inner: inner.clone(),
        link: link_id,
        peer: None,
    };
    let mut superseded = false;
    let mut registered: Option<PeerId> = None;
    let peer_seen;
    let result = match handshake(&inner, &mut rd, &mut wr, &mut link).await {
        Err(e) => {
            peer_seen = link.peer();
            Err(e)
        }
        Ok((peer, out)) => {
            peer_seen = Some(peer);
            pending.take();
            let init = if initiator { inner.me } else { peer };
            let key = link.peer_key();
            let (tx, rx) = mpsc::channel::<Command>(inner.config.send_queue.max(1));
            let limit = link.send_limit();
            let reg = (peer, key);
            if inner.register(generation, link_id, reg, init, addr, (tx, limit)) {
                registered = Some(peer);
                guard.peer = Some(peer);
                if let Some(d) = done.take() {
                    let _ = d.send(Ok(peer));
                }
                match link.split() {
                    Ok((writer, reader)) => {
                        let io = (rd, wr, out);
                        run_halves(&inner, peer, io, writer, reader, rx).await
                    }
                    Err((e, _)) => Err(e),
                }
            } else {
                superseded = true;
                if let Some(d) = done.take() {
                    let _ = d.send(Ok(peer));
                }
                Ok(())
            }
        }
    };
    // Refused: our policy rejected the proven peer, or the peer closed on us after it
    // learned who we are (its policy). Timeouts and garbage are not refusals.
    let refused = registered.is_none()
        && !superseded
        && peer_seen.is_some()
        && matches!(
            &result,
            Err(WiredError::Noise(
                ecomesh_identity::Error::PeerRefused(_)
                    | ecomesh_identity::Error::SelfConnection
                    | ecomesh_identity::Error::WrongPeer { .. }
            )) | Err(WiredError::Closed | WiredError::Io(_))
        );
    match &result {
        Ok(()) => tracing::debug!(%addr, "link closed"),
        Err(WiredError::Closed) if registered.is_some() => {
            tracing::debug!(%addr, "link closed by peer")
        }
        Err(e) => tracing::warn!(%addr, error = %e, "closing link"),
    }
    if let Some((peer, reason)) =
        misbehaviour(registered.or(peer_seen), registered.is_some(), &result)
    {
        tracing::info!(%peer, %reason, "authenticated peer broke the link protocol; reported");
        inner
            .listeners
            .emit(&TransportEvent::Misbehaved { peer, reason });
    }
    if let Some(d) = done.take() {
        let err = match result {
            Err(WiredError::Closed | WiredError::Io(_)) if peer_seen.is_some() && initiator => {
                peer_seen.map_or(WiredError::Closed, WiredError::Refused)
            }
            Err(e) => e,
            Ok(()) => WiredError::Closed,
        };
        let _ = d.send(Err(err));
    }
    drop(guard);
    LinkEnd {
        established: registered,
        superseded,
        refused,
    }
}

/// The peer to charge and why, when a link to a peer the handshake proved
/// ended because that peer broke the protocol: a malformed or oversized record
/// or an undecodable message, or (once established) a record that does not
/// open under the session. Timeouts, closes, I/O errors and access-policy
/// refusals are nobody's misbehaviour.
fn misbehaviour(
    peer: Option<PeerId>,
    established: bool,
    result: &Result<(), WiredError>,
) -> Option<(PeerId, String)> {
    let peer = peer?;
    let e = result.as_ref().err()?;
    let charged = match e {
        WiredError::Malformed(_) | WiredError::TooLarge { .. } | WiredError::Decode(_) => true,
        WiredError::Noise(_) => established,
        _ => false,
    };
    charged.then(|| (peer, e.to_string()))
}

/// Bytes being written: `buf[pos..]` is still to go.
struct Pending {
    buf: Vec<u8>,
    pos: usize,
}

impl Pending {
    fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Runs the handshake and the HELLO exchange: returns the peer and the output not yet
/// written once the link is established (the `Established` event taken).
async fn handshake(
    inner: &Inner,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    link: &mut Link,
) -> Result<(PeerId, Pending), WiredError> {
    let mut out = Pending {
        buf: Vec::new(),
        pos: 0,
    };
    loop {
        if out.is_done() {
            out.buf.clear();
            out.pos = 0;
            link.swap_output(&mut out.buf);
        }
        if let Some(ev) = link.poll_event() {
            return match ev {
                LinkEvent::Established(peer) => Ok((peer, out)),
                LinkEvent::Message(_) => Err(WiredError::Malformed("message before HELLO")),
            };
        }
        let deadline = tokio::time::Instant::from_std(
            inner.epoch + Duration::from_millis(link.next_timeout()),
        );
        tokio::select! {
            r = rd.read(link.read_buf()) => match r {
                Ok(0) => return Err(WiredError::Closed),
                Ok(n) => link.commit(n, inner.now_ms())?,
                Err(e) => return Err(e.into()),
            },
            r = wr.write(&out.buf[out.pos..]), if !out.is_done() => match r {
                Ok(n) => out.pos += n,
                Err(e) => return Err(e.into()),
            },
            _ = tokio::time::sleep_until(deadline) => link.handle_timeout(inner.now_ms())?,
        }
    }
}

/// What the reader asks the writer to seal.
#[derive(Clone, Copy, Debug)]
enum Control {
    Ping,
    Pong,
}

/// Aborts a task when dropped (the link's task was aborted or ended).
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs an established link: a writer task seals and writes (so sealing runs beside
/// this task's reading and opening, on another core when one is free), this task
/// reads, opens and delivers. Ends when either half fails, the peer closes, or every
/// sender of `rx` is gone (the peer was disconnected); messages handed over but not
/// written then are counted in a warning.
async fn run_halves(
    inner: &Arc<Inner>,
    peer: PeerId,
    (mut rd, wr, out): (OwnedReadHalf, OwnedWriteHalf, Pending),
    writer: LinkWriter,
    mut reader: LinkReader,
    rx: mpsc::Receiver<Command>,
) -> Result<(), WiredError> {
    // Control records are few (a PONG per PING received, a PING per keepalive
    // interval); when the writer is this far behind, more PONGs would say nothing new.
    let (ctl_tx, ctl_rx) = mpsc::channel::<Control>(8);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut writer_task = tokio::spawn(run_writer(wr, writer, out, rx, ctl_rx, stop_rx));
    let _abort = AbortOnDrop(writer_task.abort_handle());
    let mut ended: Option<WriterEnd> = None;
    let result: Result<(), WiredError> = loop {
        let mut failed = None;
        while let Some(ev) = reader.poll_event() {
            match ev {
                LinkEvent::Message(message) => inner.listeners.emit(&TransportEvent::Message {
                    from: peer,
                    message,
                }),
                LinkEvent::Established(_) => {
                    failed = Some(WiredError::Malformed("established twice"));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        for _ in 0..reader.take_pongs() {
            let _ = ctl_tx.try_send(Control::Pong);
        }
        let deadline = tokio::time::Instant::from_std(
            inner.epoch + Duration::from_millis(reader.next_timeout()),
        );
        tokio::select! {
            r = rd.read(reader.read_buf()) => match r {
                Ok(0) => break Err(WiredError::Closed),
                Ok(n) => {
                    if let Err(e) = reader.commit(n, inner.now_ms()) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e.into()),
            },
            w = &mut writer_task => match w {
                Ok(mut end) => {
                    let r = std::mem::replace(&mut end.result, Ok(()));
                    ended = Some(end);
                    break r;
                }
                Err(_) => {
                    ended = Some(WriterEnd { result: Ok(()), unsent_messages: 0, unsent_bytes: 0 });
                    break Err(WiredError::Closed);
                }
            },
            _ = tokio::time::sleep_until(deadline) => match reader.handle_timeout(inner.now_ms()) {
                Ok(true) => { let _ = ctl_tx.try_send(Control::Ping); }
                Ok(false) => {}
                Err(e) => break Err(e),
            }
        }
    };
    // Stop the writer (if it still runs) and count what it did not write.
    let _ = stop_tx.send(());
    if ended.is_none() {
        ended = (&mut writer_task).await.ok();
    }
    if let Some(end) = ended
        && (end.unsent_messages > 0 || end.unsent_bytes > 0)
    {
        tracing::warn!(
            %peer,
            messages = end.unsent_messages,
            sealed_bytes = end.unsent_bytes,
            "link ended with sends handed over but not written; they are dropped"
        );
    }
    result
}

/// How the writer task ended.
struct WriterEnd {
    result: Result<(), WiredError>,
    /// Messages handed over (`send` resolved) but never sealed.
    unsent_messages: usize,
    /// Sealed bytes not written to the socket.
    unsent_bytes: usize,
}

/// Seals handed-over messages and the reader's control records into one buffer, and
/// writes it while the next messages are sealed into the other one: each write
/// carries every record sealed since the previous write (up to [`OUTPUT_HIGH_WATER`]).
async fn run_writer(
    mut wr: OwnedWriteHalf,
    mut writer: LinkWriter,
    mut out: Pending,
    mut rx: mpsc::Receiver<Command>,
    mut ctl: mpsc::Receiver<Control>,
    mut stop: oneshot::Receiver<()>,
) -> WriterEnd {
    let seal = |writer: &mut LinkWriter, Command::Send(mut m): Command| {
        match writer.send_message(&mut m) {
            Ok(()) => Ok(()),
            Err(WiredError::TooLarge { size, max }) => {
                // `send` checked the peer's limit; this is a bug, not the peer's fault.
                tracing::warn!(size, max, "message over the link's limit dropped");
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    let result = loop {
        // Take what is already queued, up to the high-water mark, before writing.
        let mut failed = None;
        while out.left() + writer.output_len() < OUTPUT_HIGH_WATER {
            let Ok(cmd) = rx.try_recv() else { break };
            if let Err(e) = seal(&mut writer, cmd) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if out.is_done() {
            out.buf.clear();
            out.pos = 0;
            writer.swap_output(&mut out.buf);
        }
        let can_take = out.left() + writer.output_len() < OUTPUT_HIGH_WATER;
        tokio::select! {
            biased;
            _ = &mut stop => break Ok(()),
            c = ctl.recv() => {
                let r = match c {
                    Some(Control::Ping) => writer.send_ping(),
                    Some(Control::Pong) => writer.send_pong(),
                    // The reader ended: so does the link.
                    None => break Ok(()),
                };
                if let Err(e) = r {
                    break Err(e);
                }
            }
            r = wr.write(&out.buf[out.pos..]), if !out.is_done() => match r {
                Ok(n) => out.pos += n,
                Err(e) => break Err(e.into()),
            },
            cmd = rx.recv(), if can_take => match cmd {
                Some(cmd) => {
                    if let Err(e) = seal(&mut writer, cmd) {
                        break Err(e);
                    }
                }
                None => break Ok(()),
            },
        }
    };
    rx.close();
    let mut unsent_messages = 0;
    while rx.try_recv().is_ok() {
        unsent_messages += 1;
    }
    WriterEnd {
        result,
        unsent_messages,
        unsent_bytes: out.left() + writer.output_len(),
    }
}

/// Removes a link (and its peer, if the link was the peer's) from the state when dropped.
struct Unregister {
    inner: Arc<Inner>,
    link: u64,
    peer: Option<PeerId>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.inner.unregister(self.link, self.peer);
    }
}

/// Decrements the count of pending inbound handshakes when dropped.
struct PendingGuard(Arc<Inner>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending_handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(inner: Arc<Inner>, generation: u64, listener: TcpListener) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let n = inner.pending_handshakes.fetch_add(1, Ordering::AcqRel);
        let guard = PendingGuard(inner.clone());
        if n >= inner.config.max_pending_handshakes {
            tracing::warn!(%addr, "too many pending handshakes; closing connection");
            continue;
        }
        let link = match Link::responder(
            inner.identity.clone(),
            inner.policy.clone(),
            inner.config.link,
            inner.now_ms(),
        ) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start handshake");
                continue;
            }
        };
        let (id_tx, id_rx) = oneshot::channel::<u64>();
        let inner2 = inner.clone();
        let task = tokio::spawn(async move {
            let Ok(id) = id_rx.await else { return };
            let ctx = LinkCtx {
                inner: inner2,
                generation,
                link_id: id,
                addr,
                initiator: false,
                done: None,
                pending: Some(guard),
            };
            run_link(ctx, stream, link).await;
        });
        if let Some(id) = inner.link_id(generation, &task.abort_handle()) {
            let _ = id_tx.send(id);
        }
    }
}

async fn dial_once(
    inner: &Arc<Inner>,
    generation: u64,
    addr: SocketAddr,
    done: Option<oneshot::Sender<Result<PeerId, WiredError>>>,
) -> LinkEnd {
    let failed = |done: Option<oneshot::Sender<Result<PeerId, WiredError>>>, e: WiredError| {
        tracing::debug!(%addr, error = %e, "dial failed");
        if let Some(d) = done {
            let _ = d.send(Err(e));
        }
        LinkEnd {
            established: None,
            superseded: false,
            refused: false,
        }
    };
    let stream =
        match tokio::time::timeout(inner.config.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return failed(done, e.into()),
            Err(_) => return failed(done, WiredError::Timeout("connect")),
        };
    let _ = stream.set_nodelay(true);
    let link = match Link::initiator(
        inner.identity.clone(),
        inner.policy.clone(),
        None,
        inner.config.link,
        inner.now_ms(),
    ) {
        Ok(l) => l,
        Err(e) => return failed(done, e),
    };
    let id = {
        let mut st = lock(&inner.state);
        if st.generation != generation || !st.active {
            return failed(done, WiredError::Closed);
        }
        let id = st.next_link;
        st.next_link += 1;
        id
    };
    let ctx = LinkCtx {
        inner: inner.clone(),
        generation,
        link_id: id,
        addr,
        initiator: true,
        done,
        pending: None,
    };
    run_link(ctx, stream, link).await
}

async fn dial_loop(
    inner: Arc<Inner>,
    generation: u64,
    addr: SocketAddr,
    mut done: Option<oneshot::Sender<Result<PeerId, WiredError>>>,
) {
    let mut backoff = inner.config.backoff_initial;
    loop {
        let end = dial_once(&inner, generation, addr, done.take()).await;
        if let Some(p) = end.established {
            if let Some(d) = lock(&inner.state).dials.get_mut(&addr) {
                d.peer = Some(p);
            }
            backoff = inner.config.backoff_initial;
        } else if end.refused {
            tracing::info!(%addr, "peer refused by access policy; no more redials");
            let mut st = lock(&inner.state);
            st.dials.remove(&addr);
            return;
        } else {
            backoff = (backoff * 2).min(inner.config.backoff_max);
        }
        if end.superseded {
            // Another link to this peer won; wait until it drops before redialling.
            loop {
                let notified = inner.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = lock(&inner.state);
                    if st.generation != generation || !st.active {
                        return;
                    }
                    let connected = st
                        .dials
                        .get(&addr)
                        .and_then(|d| d.peer)
                        .is_some_and(|p| st.peers.contains_key(&p));
                    if !connected {
                        break;
                    }
                }
                notified.await;
            }
        }
        {
            let st = lock(&inner.state);
            if st.generation != generation || !st.active || !st.dials.contains_key(&addr) {
                return;
            }
        }
        tracing::debug!(%addr, ?backoff, "redialling");
        tokio::time::sleep(backoff).await;
    }
}

impl TransportAdapter for WiredTransport {
    fn transport_type(&self) -> TransportType {
        TransportType::Wired
    }

    fn capabilities(&self) -> TransportCapabilities {
        let mut c = TransportCapabilities::seed_defaults(TransportType::Wired);
        c.max_message_size = self.inner.config.link.max_message_size;
        c
    }

    fn start(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let addr = {
                let st = lock(&self.inner.state);
                if st.active {
                    return Ok(());
                }
                st.local_addr.unwrap_or(self.inner.config.listen)
            };
            let listener = TcpListener::bind(addr).await.map_err(Error::backend)?;
            let local = listener.local_addr().map_err(Error::backend)?;
            let mut st = lock(&self.inner.state);
            if st.active {
                return Ok(());
            }
            st.generation += 1;
            st.active = true;
            st.local_addr = Some(local);
            let generation = st.generation;
            let task = tokio::spawn(accept_loop(self.inner.clone(), generation, listener));
            st.accept_task = Some(task);
            let addrs: Vec<SocketAddr> = st.dials.keys().copied().collect();
            for a in addrs {
                let task = tokio::spawn(dial_loop(self.inner.clone(), generation, a, None));
                if let Some(d) = st.dials.get_mut(&a) {
                    d.task = Some(task.abort_handle());
                }
            }
            tracing::info!(peer = %self.inner.me, %local, "wired transport started");
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let (lost, accept) = {
                let mut st = lock(&self.inner.state);
                if !st.active {
                    return Ok(());
                }
                st.active = false;
                st.generation += 1;
                let accept = st.accept_task.take();
                if let Some(t) = &accept {
                    t.abort();
                }
                for (_, t) in st.links.drain() {
                    t.abort();
                }
                for d in st.dials.values_mut() {
                    if let Some(t) = d.task.take() {
                        t.abort();
                    }
                }
                let lost: Vec<PeerId> = st.peers.drain().map(|(p, _)| p).collect();
                (lost, accept)
            };
            // An abort takes effect when the runtime next drops the task: wait for
            // it, or a `start` right after this could find the port still bound.
            if let Some(t) = accept {
                let _ = t.await;
            }
            for p in lost {
                self.inner.listeners.emit(&TransportEvent::PeerLost(p));
            }
            self.inner.changed.notify_waiters();
            tracing::info!(peer = %self.inner.me, "wired transport stopped");
            Ok(())
        })
    }

    fn is_active(&self) -> bool {
        lock(&self.inner.state).active
    }

    fn peers(&self) -> Vec<PeerInfo> {
        lock(&self.inner.state)
            .peers
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    fn connect_to_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let addr = {
                let st = lock(&self.inner.state);
                if !st.active {
                    return Err(Error::NotStarted);
                }
                if st.peers.contains_key(&peer) {
                    return Ok(());
                }
                st.dials
                    .iter()
                    .find(|(_, d)| d.peer == Some(peer))
                    .map(|(a, _)| *a)
            };
            let Some(addr) = addr else {
                return Err(Error::Unreachable(peer));
            };
            let got = self.dial(addr).await?;
            if got != peer {
                return Err(Error::Unreachable(peer));
            }
            Ok(())
        })
    }

    fn disconnect_from_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let removed = {
                let mut st = lock(&self.inner.state);
                st.dials.retain(|_, d| {
                    if d.peer == Some(peer) {
                        if let Some(t) = d.task.take() {
                            t.abort();
                        }
                        false
                    } else {
                        true
                    }
                });
                st.peers.remove(&peer).is_some()
            };
            if removed {
                self.inner.listeners.emit(&TransportEvent::PeerLost(peer));
                self.inner.changed.notify_waiters();
            }
            Ok(())
        })
    }

    fn send(&self, peer: PeerId, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.inner.check_size(&message)?;
            let tx = {
                let st = lock(&self.inner.state);
                if !st.active {
                    return Err(Error::NotStarted);
                }
                st.peers.get(&peer).map(|e| (e.tx.clone(), e.send_limit))
            };
            let Some((tx, max)) = tx else {
                return Err(Error::Unreachable(peer));
            };
            let size = encoded_message_len(&message);
            if size > max {
                return Err(Error::MessageTooLarge { size, max });
            }
            // Resolved on hand-over: the link's writer seals and writes it in order.
            tx.send(Command::Send(message))
                .await
                .map_err(|_| Error::Unreachable(peer))
        })
    }

    fn broadcast(&self, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.inner.check_size(&message)?;
            let peers: Vec<PeerId> = {
                let st = lock(&self.inner.state);
                if !st.active {
                    return Err(Error::NotStarted);
                }
                st.peers.keys().copied().collect()
            };
            for p in peers {
                if let Err(e) = self.send(p, message.clone()).await {
                    tracing::debug!(peer = %p, error = %e, "broadcast to one peer failed");
                }
            }
            Ok(())
        })
    }

    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription {
        self.inner.listeners.subscribe(listener)
    }
}
