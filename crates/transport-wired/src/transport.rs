//! The tokio driver: TCP listener, dialling with backoff, one task per link.

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use crate::error::WiredError;
use crate::link::{Link, LinkConfig, LinkEvent};

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

enum Command {
    Send(NetworkMessage, oneshot::Sender<Result<(), WiredError>>),
}

struct PeerEntry {
    info: PeerInfo,
    link: u64,
    initiator: PeerId,
    tx: mpsc::Sender<Command>,
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
        tx: mpsc::Sender<Command>,
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

/// Runs one link until it ends.
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
    let (tx, mut rx) = mpsc::channel::<Command>(inner.config.send_queue.max(1));
    let mut tx = Some(tx);
    // The bytes being written, `out[pos..]`; the link seals into its own buffer
    // meanwhile, and the two are swapped (not copied) when `out` is done.
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut registered: Option<PeerId> = None;
    // Unregisters however the task ends, including when it is aborted.
    let mut guard = Unregister {
        inner: inner.clone(),
        link: link_id,
        peer: None,
    };
    let mut superseded = false;
    let result: Result<(), WiredError> = loop {
        if pos == out.len() {
            out.clear();
            pos = 0;
            link.swap_output(&mut out);
        }
        let mut stop = None;
        while let Some(ev) = link.poll_event() {
            match ev {
                LinkEvent::Established(peer) => {
                    pending.take();
                    let init = if initiator { inner.me } else { peer };
                    let Some(t) = tx.take() else {
                        stop = Some(Err(WiredError::Malformed("established twice")));
                        break;
                    };
                    let key = link.peer_key();
                    if inner.register(generation, link_id, (peer, key), init, addr, t) {
                        registered = Some(peer);
                        guard.peer = Some(peer);
                        if let Some(d) = done.take() {
                            let _ = d.send(Ok(peer));
                        }
                    } else {
                        superseded = true;
                        if let Some(d) = done.take() {
                            let _ = d.send(Ok(peer));
                        }
                        stop = Some(Ok(()));
                        break;
                    }
                }
                LinkEvent::Message(message) => {
                    if let Some(from) = registered {
                        inner
                            .listeners
                            .emit(&TransportEvent::Message { from, message });
                    }
                }
            }
        }
        if let Some(s) = stop {
            break s;
        }
        let deadline = tokio::time::Instant::from_std(
            inner.epoch + Duration::from_millis(link.next_timeout()),
        );
        let can_take =
            registered.is_some() && out.len() - pos + link.output_len() < OUTPUT_HIGH_WATER;
        tokio::select! {
            // Read straight into the link's receive buffer.
            r = rd.read(link.read_buf()) => match r {
                Ok(0) => break Err(WiredError::Closed),
                Ok(n) => {
                    if let Err(e) = link.commit(n, inner.now_ms()) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e.into()),
            },
            r = wr.write(&out[pos..]), if pos < out.len() => match r {
                Ok(n) => pos += n,
                Err(e) => break Err(e.into()),
            },
            cmd = rx.recv(), if can_take => match cmd {
                Some(Command::Send(mut m, ack)) => match link.send_message(&mut m) {
                    Ok(()) => { let _ = ack.send(Ok(())); }
                    Err(WiredError::TooLarge { size, max }) => {
                        let _ = ack.send(Err(WiredError::TooLarge { size, max }));
                    }
                    Err(e) => {
                        let _ = ack.send(Err(WiredError::Closed));
                        break Err(e);
                    }
                },
                None => break Ok(()),
            },
            _ = tokio::time::sleep_until(deadline) => {
                if let Err(e) = link.handle_timeout(inner.now_ms()) {
                    break Err(e);
                }
            }
        }
    };
    // Refused: our policy rejected the proven peer, or the peer closed on us after it
    // learned who we are (its policy). Timeouts and garbage are not refusals.
    let refused = registered.is_none()
        && !superseded
        && link.peer().is_some()
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
    if let Some(d) = done.take() {
        let err = match result {
            Err(WiredError::Closed | WiredError::Io(_)) if link.peer().is_some() && initiator => {
                link.peer().map_or(WiredError::Closed, WiredError::Refused)
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
                st.peers.get(&peer).map(|e| e.tx.clone())
            };
            let Some(tx) = tx else {
                return Err(Error::Unreachable(peer));
            };
            let (ack, rx) = oneshot::channel();
            tx.send(Command::Send(message, ack))
                .await
                .map_err(|_| Error::Unreachable(peer))?;
            match rx.await {
                Ok(r) => r.map_err(WiredError::into_transport_error),
                Err(_) => Err(Error::Unreachable(peer)),
            }
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
