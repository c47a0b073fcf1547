//! The conformance suite every ecomesh transport passes (issue 5).
//!
//! A transport crate implements [`TransportFactory`] in its own tests and calls the
//! checks of this crate, each a `pub async fn` returning [`Result`] with a message
//! that names what went wrong:
//!
//! - [`connect_both_ways`]: either side may open the link; both see the other.
//! - [`send_and_receive`]: messages arrive intact, in order, in both directions.
//! - [`broadcast`]: one broadcast reaches every connected peer.
//! - [`max_size_frame`]: a message of exactly `max_message_size` encoded bytes arrives.
//! - [`oversize_refused`]: one byte more is [`Error::MessageTooLarge`].
//! - [`disconnect_and_reconnect`]: `disconnect_from_peer` is seen on both sides and the
//!   peers can connect again.
//! - [`peer_lost_and_reconnected`]: stopping a transport is seen as a loss; after it
//!   restarts (either side) the peers find each other again and messages flow.
//! - [`hostile_raw_input`]: garbage, truncated and flooding byte streams on a raw socket
//!   are dropped, the link is closed before it buffers without bound, and the transport
//!   keeps serving its real peers.
//! - [`unauthenticated_refused`]: blocklisted peers and peers missing from an allowlist
//!   never become reachable, whichever side dials.
//!
//! Every wait is bounded by [`WAIT`] (or a multiple of it), so a broken transport fails
//! the check instead of hanging the test; no check sleeps for a fixed time.
//! The checks need a tokio runtime with the time and net drivers enabled.
//!
//! [`memnet`] is the one shared in-memory network ([`MemNetwork`] of
//! [`MemTransport`] endpoints) that the mesh and storage tests, the simulator
//! and the benches run on: virtual clock, seeded link models, partitions,
//! restarts and a traffic log.

#![forbid(unsafe_code)]

pub mod memnet;

pub use memnet::{
    Delivery, Fate, LinkModel, MemNetwork, MemTransport, SplitMix64, Topology, Traffic,
};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_types::{
    BoxFuture, Error, MessageId, NetworkMessage, PeerId, Signature, Subscription, TransportAdapter,
    TransportEvent,
};
use ecomesh_wire::encode_message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Declares one `#[tokio::test]` per conformance check, each creating its
/// factory with `$factory` (an expression evaluated afresh in every test) and
/// failing with the check's name and message. The caller needs `tokio` (with
/// the `macros` and `rt-multi-thread` features) as a dev-dependency.
///
/// `conformance_tests!(MyFactory::new())` declares every check that needs only
/// a factory: [`connect_both_ways`], [`send_and_receive`], [`broadcast`],
/// [`max_size_frame`], [`oversize_refused`], [`peer_lost_and_reconnected`],
/// [`disconnect_and_reconnect`] and [`unauthenticated_refused`].
/// `conformance_tests!(MyFactory::new(); broadcast, max_size_frame)` declares
/// only the named ones (for checks that need a differently configured factory).
/// [`hostile_raw_input`] takes a seed and stays a test of its own.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(
            $factory;
            connect_both_ways,
            send_and_receive,
            broadcast,
            max_size_frame,
            oversize_refused,
            peer_lost_and_reconnected,
            disconnect_and_reconnect,
            unauthenticated_refused
        );
    };
    ($factory:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let factory = $factory;
                if let Err(e) = $crate::$check(&factory).await {
                    panic!("{}: {e}", stringify!($check));
                }
            }
        )+
    };
}

/// Longest time a check waits for one expected event.
pub const WAIT: Duration = Duration::from_secs(20);

/// A failed conformance check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// The transport behaved differently from what the check requires.
    #[error("conformance check failed: {0}")]
    Failed(String),
    /// An operation the check needs returned an error.
    #[error("{context}: {source}")]
    Transport {
        /// What the check was doing.
        context: String,
        /// The transport's error.
        #[source]
        source: Error,
    },
    /// An expected event did not happen within the deadline.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline in seconds.
        secs: u64,
    },
}

/// The result of a check.
pub type Result<T, E = ConformanceError> = std::result::Result<T, E>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(ConformanceError::Failed(msg.into()))
}

fn ctx<T>(context: impl Into<String>, r: std::result::Result<T, Error>) -> Result<T> {
    r.map_err(|source| ConformanceError::Transport {
        context: context.into(),
        source,
    })
}

/// How the suite creates and wires up the transport under test.
pub trait TransportFactory: Send + Sync {
    /// The transport under test.
    type Transport: TransportAdapter + 'static;

    /// A new, started transport for `identity` under `policy`, on a fresh local address
    /// (loopback only), not yet connected to anything.
    fn create(
        &self,
        identity: Identity,
        policy: AccessPolicy,
    ) -> BoxFuture<'_, std::result::Result<Arc<Self::Transport>, Error>>;

    /// Makes `from` open a link to `to` (dial by address, or wait for discovery) and
    /// resolves with `to`'s peer id once the link is authenticated and usable, or with
    /// the error that refused it (for example [`Error::PeerRejected`]).
    ///
    /// A transport that reconnects after a loss must keep trying to reach `to` after
    /// either side restarts.
    fn introduce<'a>(
        &'a self,
        from: &'a Self::Transport,
        to: &'a Self::Transport,
    ) -> BoxFuture<'a, std::result::Result<PeerId, Error>>;

    /// A TCP address where raw bytes reach `transport`'s link layer, for the hostile
    /// input check; `None` if the transport has no such entry point (the check then
    /// reports that it was skipped).
    fn raw_target(&self, transport: &Self::Transport) -> Option<SocketAddr>;
}

/// Records every event of one transport and lets a check wait for one.
#[derive(Debug)]
pub struct EventLog {
    events: Arc<Mutex<Vec<TransportEvent>>>,
    notify: Arc<Notify>,
    _subscription: Subscription,
}

impl EventLog {
    /// Subscribes to `transport`.
    pub fn attach(transport: &dyn TransportAdapter) -> Self {
        let events: Arc<Mutex<Vec<TransportEvent>>> = Arc::default();
        let notify = Arc::new(Notify::new());
        let (e, n) = (events.clone(), notify.clone());
        let subscription = transport.subscribe(Arc::new(move |event: &TransportEvent| {
            lock(&e).push(event.clone());
            n.notify_waiters();
        }));
        EventLog {
            events,
            notify,
            _subscription: subscription,
        }
    }

    /// Number of events seen so far: a mark for [`EventLog::wait_for`].
    pub fn mark(&self) -> usize {
        lock(&self.events).len()
    }

    /// A copy of every event seen so far.
    pub fn events(&self) -> Vec<TransportEvent> {
        lock(&self.events).clone()
    }

    /// Waits up to `timeout` for an event at index `from` or later that `pred` accepts,
    /// and returns it.
    pub async fn wait_for(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&TransportEvent) -> bool,
    ) -> Result<TransportEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = lock(&self.events).iter().skip(from).find(|e| pred(e)) {
                return Ok(e.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ConformanceError::Timeout {
                    what: what.to_owned(),
                    secs: timeout.as_secs(),
                });
            }
        }
    }

    /// Waits for `PeerDiscovered(peer)` at or after `from`.
    pub async fn wait_discovered(&self, from: usize, peer: PeerId, who: &str) -> Result<()> {
        self.wait_for(
            from,
            &format!("{who} to discover {peer}"),
            WAIT,
            |e| matches!(e, TransportEvent::PeerDiscovered(i) if i.peer_id == peer),
        )
        .await
        .map(|_| ())
    }

    /// Waits for `PeerLost(peer)` at or after `from`.
    pub async fn wait_lost(&self, from: usize, peer: PeerId, who: &str) -> Result<()> {
        self.wait_for(
            from,
            &format!("{who} to lose {peer}"),
            WAIT,
            |e| matches!(e, TransportEvent::PeerLost(p) if *p == peer),
        )
        .await
        .map(|_| ())
    }

    /// Waits for a message with `id` from `from_peer` at or after `from`, signed
    /// ([`TransportEvent::Message`]) or link-authenticated
    /// ([`TransportEvent::LinkMessage`], whose invariants it checks), and returns it.
    pub async fn wait_message(
        &self,
        from: usize,
        from_peer: PeerId,
        id: MessageId,
        who: &str,
    ) -> Result<Received> {
        let e = self
            .wait_for(
                from,
                &format!("{who} to receive message {id} from {from_peer}"),
                WAIT,
                |e| match e {
                    TransportEvent::Message { from, message }
                    | TransportEvent::LinkMessage { from, message } => {
                        *from == from_peer && message.id == id
                    }
                    _ => false,
                },
            )
            .await?;
        match e {
            TransportEvent::Message { message, .. } => Ok(Received {
                message,
                link: false,
            }),
            TransportEvent::LinkMessage { message, .. } => {
                if message.sender != from_peer
                    || message.hop_count != 0
                    || message.signature != ecomesh_types::Signature::UNSIGNED
                {
                    return fail(format!(
                        "a link-authenticated message must come unsigned and unrelayed from its \
                         sender: {message:?} from {from_peer}"
                    ));
                }
                Ok(Received {
                    message,
                    link: true,
                })
            }
            _ => fail("wait_message matched a non-message event"),
        }
    }

    /// Whether any event so far says `peer` was discovered.
    pub fn ever_discovered(&self, peer: PeerId) -> bool {
        lock(&self.events)
            .iter()
            .any(|e| matches!(e, TransportEvent::PeerDiscovered(i) if i.peer_id == peer))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A unique test message from `sender` with `payload` (unsigned: transports do not check
/// signatures, the mesh does).
pub fn test_message(sender: PeerId, recipient: Option<PeerId>, payload: Vec<u8>) -> NetworkMessage {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut id = [0x42u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    // Keep the UUID v4 shape (version and variant bits).
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    NetworkMessage {
        id: MessageId(id),
        message_type: "conformance".to_owned(),
        payload,
        sender,
        recipient,
        timestamp_ms: 1_700_000_000_000 + n,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature::UNSIGNED,
    }
}

/// A test message whose full encoding ([`encode_message`]) is exactly `size` bytes, if
/// one exists (it does for every size from a few hundred bytes up).
pub fn message_of_encoded_size(sender: PeerId, size: usize) -> Option<NetworkMessage> {
    let mut msg = test_message(sender, None, Vec::new());
    let base = encode_message(&msg).len();
    let mut len = size.checked_sub(base)?;
    // The byte-string length header grows with the payload; shrink until it fits.
    for _ in 0..16 {
        msg.payload = pattern(len);
        let got = encode_message(&msg).len();
        if got == size {
            return Some(msg);
        }
        len = len.checked_sub(got.checked_sub(size)?)?;
    }
    None
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn identity() -> Result<Identity> {
    Identity::generate().map_err(|e| ConformanceError::Failed(format!("generate identity: {e}")))
}

fn peer_of(t: &dyn TransportAdapter, p: PeerId) -> bool {
    t.peers().iter().any(|i| i.peer_id == p)
}

/// Two open transports with event logs, `a` having dialled `b`.
struct Pair<T> {
    a: Arc<T>,
    b: Arc<T>,
    ida: PeerId,
    idb: PeerId,
    la: EventLog,
    lb: EventLog,
}

async fn open<F: TransportFactory>(f: &F) -> Result<(Arc<F::Transport>, PeerId, EventLog)> {
    let id = identity()?;
    let pid = id.peer_id();
    let t = ctx("create transport", f.create(id, AccessPolicy::Open).await)?;
    let log = EventLog::attach(t.as_ref());
    Ok((t, pid, log))
}

async fn connected_pair<F: TransportFactory>(f: &F) -> Result<Pair<F::Transport>> {
    let (a, ida, la) = open(f).await?;
    let (b, idb, lb) = open(f).await?;
    let got = ctx("a dials b", f.introduce(&a, &b).await)?;
    if got != idb {
        return fail(format!("introduce returned {got}, expected {idb}"));
    }
    la.wait_discovered(0, idb, "a").await?;
    lb.wait_discovered(0, ida, "b").await?;
    Ok(Pair {
        a,
        b,
        ida,
        idb,
        la,
        lb,
    })
}

/// Sends one message `from` → `to` and checks it arrives intact.
/// A message as a transport delivered it.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The message.
    pub message: NetworkMessage,
    /// It came as a [`TransportEvent::LinkMessage`]: the link authenticated it, and its
    /// signature was left off the air.
    pub link: bool,
}

impl Received {
    /// True when this is `sent` as delivered: identical, or, link-authenticated,
    /// identical but for the signature.
    pub fn is(&self, sent: &NetworkMessage) -> bool {
        if self.link {
            let unsigned = NetworkMessage {
                signature: ecomesh_types::Signature::UNSIGNED,
                ..sent.clone()
            };
            self.message == unsigned
        } else {
            self.message == *sent
        }
    }
}

async fn roundtrip(
    from: &dyn TransportAdapter,
    from_id: PeerId,
    to_log: &EventLog,
    to_id: PeerId,
    payload: Vec<u8>,
) -> Result<()> {
    let msg = test_message(from_id, Some(to_id), payload);
    let mark = to_log.mark();
    ctx("send", from.send(to_id, msg.clone()).await)?;
    let got = to_log
        .wait_message(mark, from_id, msg.id, "receiver")
        .await?;
    if !got.is(&msg) {
        return fail("received message differs from the one sent");
    }
    Ok(())
}

/// Either side may open a link: `a` dials `b`, `c` dials `a`; every pair sees the other
/// in `PeerDiscovered` and `peers()`, and `connect_to_peer` on a connected peer is `Ok`.
pub async fn connect_both_ways<F: TransportFactory>(f: &F) -> Result<()> {
    let p = connected_pair(f).await?;
    let (c, idc, lc) = open(f).await?;
    let mark = p.la.mark();
    let got = ctx("c dials a", f.introduce(&c, &p.a).await)?;
    if got != p.ida {
        return fail(format!("introduce returned {got}, expected {}", p.ida));
    }
    p.la.wait_discovered(mark, idc, "a").await?;
    lc.wait_discovered(0, p.ida, "c").await?;
    for (t, who, peer) in [
        (&p.a, "a", p.idb),
        (&p.a, "a", idc),
        (&p.b, "b", p.ida),
        (&c, "c", p.ida),
    ] {
        if !peer_of(t.as_ref(), peer) {
            return fail(format!("{who}.peers() does not list {peer}"));
        }
    }
    if peer_of(p.b.as_ref(), idc) {
        return fail("b lists c although they never connected");
    }
    ctx(
        "connect_to_peer on a connected peer",
        p.a.connect_to_peer(p.idb).await,
    )?;
    ctx(
        "connect_to_peer on a connected peer",
        c.connect_to_peer(p.ida).await,
    )?;
    Ok(())
}

/// Messages arrive intact and in order both ways; an unknown peer is
/// [`Error::Unreachable`].
pub async fn send_and_receive<F: TransportFactory>(f: &F) -> Result<()> {
    let p = connected_pair(f).await?;
    roundtrip(p.a.as_ref(), p.ida, &p.lb, p.idb, b"hello b".to_vec()).await?;
    roundtrip(p.b.as_ref(), p.idb, &p.la, p.ida, b"hello a".to_vec()).await?;
    roundtrip(p.a.as_ref(), p.ida, &p.lb, p.idb, Vec::new()).await?;
    // Order: a burst of messages arrives in the order sent.
    let mark = p.lb.mark();
    let burst: Vec<NetworkMessage> = (0..50u8)
        .map(|i| test_message(p.ida, Some(p.idb), vec![i; 100 + usize::from(i)]))
        .collect();
    for m in &burst {
        ctx("send burst", p.a.send(p.idb, m.clone()).await)?;
    }
    let Some(last) = burst.last() else {
        return fail("empty burst");
    };
    p.lb.wait_message(mark, p.ida, last.id, "b (end of burst)")
        .await?;
    let got: Vec<MessageId> = p.lb.events()[mark..]
        .iter()
        .filter_map(|e| match e {
            TransportEvent::Message { from, message }
            | TransportEvent::LinkMessage { from, message }
                if *from == p.ida =>
            {
                Some(message.id)
            }
            _ => None,
        })
        .collect();
    let want: Vec<MessageId> = burst.iter().map(|m| m.id).collect();
    if got != want {
        return fail(format!(
            "burst arrived as {} messages out of order or incomplete (sent {})",
            got.len(),
            want.len()
        ));
    }
    let stranger = identity()?.peer_id();
    match p.a.send(stranger, test_message(p.ida, None, vec![1])).await {
        Err(Error::Unreachable(x)) if x == stranger => Ok(()),
        other => fail(format!(
            "send to an unknown peer returned {other:?}, expected Unreachable"
        )),
    }
}

/// One broadcast reaches every connected peer.
pub async fn broadcast<F: TransportFactory>(f: &F) -> Result<()> {
    let (hub, idh, _lh) = open(f).await?;
    let mut spokes = Vec::new();
    for _ in 0..3 {
        let (t, id, log) = open(f).await?;
        ctx("spoke dials hub", f.introduce(&t, &hub).await)?;
        log.wait_discovered(0, idh, "spoke").await?;
        spokes.push((t, id, log));
    }
    for (_, id, _) in &spokes {
        if !peer_of(hub.as_ref(), *id) {
            return fail(format!("hub does not list spoke {id}"));
        }
    }
    let msg = test_message(idh, None, b"to everyone".to_vec());
    let marks: Vec<usize> = spokes.iter().map(|(_, _, l)| l.mark()).collect();
    ctx("broadcast", hub.broadcast(msg.clone()).await)?;
    for ((_, _, log), mark) in spokes.iter().zip(marks) {
        let got = log.wait_message(mark, idh, msg.id, "spoke").await?;
        if !got.is(&msg) {
            return fail("broadcast message altered in transit");
        }
    }
    Ok(())
}

/// A message whose encoding is exactly `capabilities().max_message_size` bytes arrives.
pub async fn max_size_frame<F: TransportFactory>(f: &F) -> Result<()> {
    let p = connected_pair(f).await?;
    let max = p.a.capabilities().max_message_size;
    let Some(msg) = message_of_encoded_size(p.ida, max) else {
        return fail(format!("cannot build a message of exactly {max} bytes"));
    };
    let mark = p.lb.mark();
    ctx(
        "send maximum-size message",
        p.a.send(p.idb, msg.clone()).await,
    )?;
    let got = p.lb.wait_message(mark, p.ida, msg.id, "b").await?;
    if !got.is(&msg) {
        return fail("maximum-size message altered in transit");
    }
    // The link still works afterwards, in both directions.
    roundtrip(p.b.as_ref(), p.idb, &p.la, p.ida, b"after max".to_vec()).await
}

/// A message one byte over `max_message_size` is refused by `send` and `broadcast` with
/// [`Error::MessageTooLarge`], and the link stays usable.
pub async fn oversize_refused<F: TransportFactory>(f: &F) -> Result<()> {
    let p = connected_pair(f).await?;
    let max = p.a.capabilities().max_message_size;
    let Some(msg) = message_of_encoded_size(p.ida, max + 1) else {
        return fail(format!("cannot build a message of {} bytes", max + 1));
    };
    match p.a.send(p.idb, msg.clone()).await {
        Err(Error::MessageTooLarge { size, max: m }) if size == max + 1 && m == max => {}
        other => {
            return fail(format!(
                "oversize send returned {other:?}, expected MessageTooLarge {{ size: {}, max: {max} }}",
                max + 1
            ));
        }
    }
    match p.a.broadcast(msg).await {
        Err(Error::MessageTooLarge { .. }) => {}
        other => return fail(format!("oversize broadcast returned {other:?}")),
    }
    roundtrip(p.a.as_ref(), p.ida, &p.lb, p.idb, b"still fine".to_vec()).await
}

/// Stopping `b` makes `a` lose it; when `b` starts again `a` finds it again and messages
/// flow. Then the same with the dialling side `a` restarting.
pub async fn peer_lost_and_reconnected<F: TransportFactory>(f: &F) -> Result<()> {
    let p = connected_pair(f).await?;
    for (round, (stopped, stopped_id, other_log, other_id, other)) in [
        (&p.b, p.idb, &p.la, p.ida, &p.a),
        (&p.a, p.ida, &p.lb, p.idb, &p.b),
    ]
    .into_iter()
    .enumerate()
    {
        let mark = other_log.mark();
        ctx("stop", stopped.stop().await)?;
        if stopped.is_active() {
            return fail("is_active() after stop");
        }
        other_log
            .wait_lost(mark, stopped_id, &format!("round {round}: survivor"))
            .await?;
        if peer_of(other.as_ref(), stopped_id) {
            return fail(format!(
                "round {round}: peers() still lists the stopped peer"
            ));
        }
        match stopped
            .send(other_id, test_message(stopped_id, None, vec![0]))
            .await
        {
            Err(Error::NotStarted) | Err(Error::Unreachable(_)) => {}
            r => {
                return fail(format!(
                    "round {round}: send on a stopped transport returned {r:?}"
                ));
            }
        }
        let mark = other_log.mark();
        ctx("restart", stopped.start().await)?;
        if !stopped.is_active() {
            return fail("is_active() false after start");
        }
        other_log
            .wait_discovered(mark, stopped_id, &format!("round {round}: survivor"))
            .await?;
        let stopped_log = if round == 0 { &p.lb } else { &p.la };
        roundtrip(
            other.as_ref(),
            other_id,
            stopped_log,
            stopped_id,
            vec![7; 64],
        )
        .await?;
        // The restarted side must also be able to reach the survivor.
        let deadline = tokio::time::Instant::now() + WAIT;
        while !peer_of(stopped.as_ref(), other_id) {
            if tokio::time::Instant::now() > deadline {
                return fail(format!(
                    "round {round}: restarted side never lists survivor"
                ));
            }
            stopped_log
                .wait_discovered(0, other_id, "restarted side")
                .await?;
        }
        roundtrip(
            stopped.as_ref(),
            stopped_id,
            other_log,
            other_id,
            vec![8; 64],
        )
        .await?;
    }
    Ok(())
}

/// `disconnect_from_peer` ends the link: both sides report the loss and stop listing
/// each other; introducing them again reconnects them.
pub async fn disconnect_and_reconnect<F: TransportFactory>(f: &F) -> Result<()> {
    let p = connected_pair(f).await?;
    let (ma, mb) = (p.la.mark(), p.lb.mark());
    ctx(
        "disconnect_from_peer",
        p.a.disconnect_from_peer(p.idb).await,
    )?;
    p.la.wait_lost(ma, p.idb, "a").await?;
    p.lb.wait_lost(mb, p.ida, "b").await?;
    if peer_of(p.a.as_ref(), p.idb) {
        return fail("a still lists b after disconnect_from_peer");
    }
    match p.a.send(p.idb, test_message(p.ida, None, vec![1])).await {
        Err(Error::Unreachable(_)) => {}
        r => return fail(format!("send after disconnect returned {r:?}")),
    }
    let (ma, mb) = (p.la.mark(), p.lb.mark());
    ctx("b dials a again", f.introduce(&p.b, &p.a).await)?;
    p.la.wait_discovered(ma, p.idb, "a").await?;
    p.lb.wait_discovered(mb, p.ida, "b").await?;
    roundtrip(p.a.as_ref(), p.ida, &p.lb, p.idb, b"again".to_vec()).await
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing case can be replayed.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Waits until the transport closes `s` (read returns end of stream or an error).
async fn wait_closed(s: &mut TcpStream, what: &str, timeout: Duration) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                return Err(ConformanceError::Timeout {
                    what: format!("transport to close {what}"),
                    secs: timeout.as_secs(),
                });
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Bytes a flooding connection may push before the transport must have closed it:
/// far more than socket buffers plus a transport's bounded frame buffer hold.
pub const FLOOD_LIMIT: usize = 256 << 20;

/// Hostile bytes on raw connections to `a`: random garbage, a truncated frame then close,
/// a truncated frame held open (closed by the transport's handshake timeout, within
/// `3 × WAIT`), zero-length frames, and a flood the transport must cut off before
/// [`FLOOD_LIMIT`] bytes. Meanwhile and afterwards `a` and `b` keep exchanging messages,
/// and `a` never reports a peer other than `b`.
///
/// Returns `Ok(false)` if the factory has no raw target (the check did not run).
pub async fn hostile_raw_input<F: TransportFactory>(f: &F, seed: u64) -> Result<bool> {
    let p = connected_pair(f).await?;
    let Some(target) = f.raw_target(&p.a) else {
        return Ok(false);
    };
    let connect = || async {
        ctx(
            format!("raw connect to {target}"),
            TcpStream::connect(target).await.map_err(Error::backend),
        )
    };
    // Held open with a frame that never completes.
    let mut held = connect().await?;
    let _ = held.write_all(&[0xff, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8]).await;

    for (i, len) in [1usize, 2, 33, 500, 4096, 70_000].into_iter().enumerate() {
        let mut s = connect().await?;
        let bytes = garbage(seed.wrapping_add(i as u64), len);
        // The transport may close early; a failed write is fine.
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        wait_closed(
            &mut s,
            &format!("garbage connection {i} ({len} bytes)"),
            WAIT,
        )
        .await?;
    }
    // Truncated frame, then end of stream.
    {
        let mut s = connect().await?;
        let _ = s.write_all(&[0x01, 0x00, 9, 9, 9]).await;
        let _ = s.shutdown().await;
        wait_closed(&mut s, "truncated frame connection", WAIT).await?;
    }
    // Zero-length frames.
    {
        let mut s = connect().await?;
        let _ = s.write_all(&[0u8; 64]).await;
        let _ = s.shutdown().await;
        wait_closed(&mut s, "zero-length frames connection", WAIT).await?;
    }
    roundtrip(p.b.as_ref(), p.idb, &p.la, p.ida, b"during".to_vec()).await?;
    // Flood: a valid-looking maximal frame header followed by endless bytes.
    {
        let mut s = connect().await?;
        let chunk = garbage(seed ^ 0xf100d, 1 << 16);
        let mut sent = 0usize;
        let flood = async {
            while sent < FLOOD_LIMIT {
                if s.write_all(&chunk).await.is_err() {
                    return true;
                }
                sent += chunk.len();
            }
            false
        };
        match tokio::time::timeout(WAIT * 3, flood).await {
            Ok(true) => {}
            Ok(false) => {
                return fail(format!(
                    "transport accepted {FLOOD_LIMIT} bytes of garbage on one connection without closing it"
                ));
            }
            Err(_) => {
                return Err(ConformanceError::Timeout {
                    what: "transport to close a flooding connection".to_owned(),
                    secs: (WAIT * 3).as_secs(),
                });
            }
        }
    }
    wait_closed(&mut held, "held-open truncated frame", WAIT * 3).await?;
    roundtrip(p.a.as_ref(), p.ida, &p.lb, p.idb, b"after a".to_vec()).await?;
    roundtrip(p.b.as_ref(), p.idb, &p.la, p.ida, b"after b".to_vec()).await?;
    if !p.a.is_active() {
        return fail("transport stopped after hostile input");
    }
    let others: Vec<PeerId> =
        p.a.peers()
            .into_iter()
            .map(|i| i.peer_id)
            .filter(|x| *x != p.idb)
            .collect();
    if !others.is_empty() {
        return fail(format!("hostile connections became peers: {others:?}"));
    }
    let ghosts =
        p.la.events()
            .iter()
            .filter(|e| matches!(e, TransportEvent::PeerDiscovered(i) if i.peer_id != p.idb))
            .count();
    if ghosts != 0 {
        return fail(format!("{ghosts} discoveries of peers other than b"));
    }
    Ok(true)
}

/// Blocklisted peers and peers missing from an allowlist never become reachable,
/// whichever side dials; a peer the policies accept still connects.
pub async fn unauthenticated_refused<F: TransportFactory>(f: &F) -> Result<()> {
    let (ib, ic, id) = (identity()?, identity()?, identity()?);
    let ia = identity()?;
    let (pa, pb, pc, pd) = (ia.peer_id(), ib.peer_id(), ic.peer_id(), id.peer_id());
    // a blocks b; c allows only a; b and d are open.
    let a = ctx("create a", f.create(ia, AccessPolicy::block([pb])).await)?;
    let b = ctx("create b", f.create(ib, AccessPolicy::Open).await)?;
    let c = ctx(
        "create c",
        f.create(ic, AccessPolicy::allow_only([pa])).await,
    )?;
    let d = ctx("create d", f.create(id, AccessPolicy::Open).await)?;
    let (la, lb, lc, ld) = (
        EventLog::attach(a.as_ref()),
        EventLog::attach(b.as_ref()),
        EventLog::attach(c.as_ref()),
        EventLog::attach(d.as_ref()),
    );
    for (from, to, what) in [
        (&b, &a, "b dials a (a blocks b)"),
        (&a, &b, "a dials b (a blocks b)"),
        (&d, &c, "d dials c (c allows only a)"),
        (&c, &d, "c dials d (c allows only a)"),
    ] {
        match tokio::time::timeout(WAIT, f.introduce(from, to)).await {
            Ok(Err(_)) => {}
            Ok(Ok(p)) => return fail(format!("{what}: link to {p} accepted")),
            Err(_) => return fail(format!("{what}: no refusal within {} s", WAIT.as_secs())),
        }
    }
    // Positive control, which also orders the logs: anything about the refused peers
    // would have been emitted before these discoveries.
    ctx(
        "a dials c (both policies accept)",
        f.introduce(&a, &c).await,
    )?;
    la.wait_discovered(0, pc, "a").await?;
    lc.wait_discovered(0, pa, "c").await?;
    ctx("b dials d (both open)", f.introduce(&b, &d).await)?;
    lb.wait_discovered(0, pd, "b").await?;
    ld.wait_discovered(0, pb, "d").await?;
    for (log, t, who, other) in [
        (&la, &a, "a", pb),
        (&lb, &b, "b", pa),
        (&lc, &c, "c", pd),
        (&ld, &d, "d", pc),
    ] {
        if log.ever_discovered(other) || peer_of(t.as_ref(), other) {
            return fail(format!("{who} accepted refused peer {other}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_wire::decode_message;

    #[test]
    fn exact_sizes_are_built() {
        let sender = PeerId::from_digest([7; 32]);
        for size in [300usize, 1000, 65_535, 65_536, 65_537, 1 << 20, 16 << 20] {
            let m = message_of_encoded_size(sender, size).unwrap();
            let enc = encode_message(&m);
            assert_eq!(enc.len(), size);
            assert_eq!(decode_message(&enc).unwrap(), m);
        }
        assert!(message_of_encoded_size(sender, 10).is_none());
    }

    #[test]
    fn messages_are_unique() {
        let s = PeerId::from_digest([1; 32]);
        let (a, b) = (test_message(s, None, vec![]), test_message(s, None, vec![]));
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn garbage_is_deterministic_and_varied() {
        assert_eq!(garbage(5, 100), garbage(5, 100));
        assert_ne!(garbage(5, 100), garbage(6, 100));
        let g = garbage(9, 4096);
        let distinct: std::collections::BTreeSet<u8> = g.iter().copied().collect();
        assert!(distinct.len() > 200);
    }
}
