//! A hostile peer for the node's real-process tests (issue 20, item 7): it
//! speaks the wired transport's real protocol (Noise XX over `u16`-length
//! frames, then sealed records, see `ecomesh_transport_wired::link`) with its
//! own identities, from this test process against `ecomesh node` processes,
//! and floods them with what an honest peer never sends.
//!
//! Every attack runs until its stop flag is raised, at most `rate` sends per
//! second, and counts what it did in [`Tally`]. Errors from the victim (a
//! closed link, a refused handshake) are expected: the attack reconnects.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecomesh_identity::noise::{Handshake, SessionConfig, SessionSender, frame};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_p2p_storage::VersionNode;
use ecomesh_transport_wired::link::hello_record;
use ecomesh_types::{HlcTimestamp, MessageId, NetworkMessage, PeerId, Signature};
use ecomesh_wire::{decode_message, encode_message};

use crate::common::wall_ms;

/// Record kinds of the wired link (`link.rs`).
const MORE: u8 = 0x01;
const END: u8 = 0x02;
/// The largest message the node accepts by default (`LinkConfig`).
const NODE_MAX_MESSAGE: usize = 16 << 20;
/// Body bytes per sealed record (a Noise message is at most 65535 bytes).
const CHUNK: usize = 65_000;
/// An `ecomesh/since` payload: `{"p": 0}` in DAG-CBOR (everything from the start).
const SINCE_ZERO: [u8; 4] = [0xa1, 0x61, b'p', 0x00];
/// Captured messages kept for replays.
const MAX_CAPTURED: usize = 256;

/// What an attack did.
#[derive(Default, Debug)]
pub(crate) struct Tally {
    /// Hostile messages, records or raw writes sent.
    pub(crate) sent: AtomicU64,
    /// Handshakes completed (a session was open).
    pub(crate) sessions: AtomicU64,
    /// Connections or handshakes the victim closed or refused.
    pub(crate) refused: AtomicU64,
}

impl Tally {
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub(crate) fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The attacks of issue 20 item 7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attack {
    /// Signed-looking messages whose signature is random bytes.
    BadSignature,
    /// Validly signed pushes carrying version nodes whose bytes do not match
    /// what their author signed (so their CID is not the signed one), and
    /// compact versions that do not decode.
    WrongCid,
    /// Raw garbage before and within the handshake, garbage records and
    /// undecodable messages after it, and messages over the node's limit.
    Garbage,
    /// Valid messages captured from the victim replayed to it, over the same
    /// session and new ones, and recorded handshakes replayed.
    Replay,
    /// Fresh identities, hundreds of them, each connecting and announcing.
    Sybil,
}

impl Attack {
    pub(crate) const ALL: [Attack; 5] = [
        Attack::BadSignature,
        Attack::WrongCid,
        Attack::Garbage,
        Attack::Replay,
        Attack::Sybil,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Attack::BadSignature => "invalid signatures",
            Attack::WrongCid => "wrong CIDs",
            Attack::Garbage => "garbage/oversized frames",
            Attack::Replay => "replays",
            Attack::Sybil => "Sybil announce storm",
        }
    }
}

/// A running attack: its identity (the one that stays, for reputation), its
/// counters, its stop flag and threads.
pub(crate) struct Running {
    pub(crate) attack: Attack,
    pub(crate) peer: PeerId,
    pub(crate) tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Raises the stop flag and waits for the attack's threads.
    pub(crate) fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.tally
    }
}

/// Starts `attack` against the node listening on `victim`, at most `rate`
/// hostile sends per second per thread.
pub(crate) fn start(attack: Attack, victim: SocketAddr, rate: u32) -> Running {
    let identity = Identity::generate().unwrap();
    let peer = identity.peer_id();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let captured: Arc<Mutex<Vec<NetworkMessage>>> = Arc::default();
    let ctx = Ctx {
        victim,
        identity,
        tally: tally.clone(),
        stop: stop.clone(),
        pace: Pace::new(rate),
        captured,
    };
    let threads = match attack {
        Attack::Sybil => (0..8)
            .map(|_| {
                let c = ctx.clone_fresh();
                std::thread::spawn(move || sybil(&c))
            })
            .collect(),
        Attack::Garbage => {
            let c = ctx.clone_fresh();
            vec![
                std::thread::spawn(move || garbage(&ctx, true)),
                std::thread::spawn(move || garbage(&c, false)),
            ]
        }
        _ => vec![std::thread::spawn(move || match attack {
            Attack::BadSignature => bad_signatures(&ctx),
            Attack::WrongCid => wrong_cids(&ctx),
            Attack::Replay => replays(&ctx),
            Attack::Garbage | Attack::Sybil => {}
        })],
    };
    Running {
        attack,
        peer,
        tally,
        stop,
        threads,
    }
}

/// Paces sends: at most `rate` per second.
#[derive(Clone, Copy)]
struct Pace {
    interval: Duration,
}

impl Pace {
    fn new(rate: u32) -> Self {
        Pace {
            interval: Duration::from_secs(1) / rate.max(1),
        }
    }
}

struct Ctx {
    victim: SocketAddr,
    identity: Identity,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    pace: Pace,
    captured: Arc<Mutex<Vec<NetworkMessage>>>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The same attack's context for another thread, with its own identity.
    fn clone_fresh(&self) -> Ctx {
        Ctx {
            victim: self.victim,
            identity: Identity::generate().unwrap(),
            tally: self.tally.clone(),
            stop: self.stop.clone(),
            pace: self.pace,
            captured: self.captured.clone(),
        }
    }

    /// Sleeps until the next send is due (`sent` so far since `start`).
    fn pace(&self, start: Instant, sent: u64) {
        let due = start + self.pace.interval * u32::try_from(sent).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }

    fn count(&self) {
        self.tally.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn refused(&self) {
        self.tally.refused.fetch_add(1, Ordering::Relaxed);
        // Do not spin on a victim that refuses: back off a little.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).unwrap();
    b
}

fn random_vec(len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    getrandom::fill(&mut b).unwrap();
    b
}

/// A message from `sender` of `ty` carrying `payload`, unsigned.
pub(crate) fn message(sender: PeerId, ty: &str, payload: Vec<u8>) -> NetworkMessage {
    NetworkMessage {
        id: MessageId::new_v4(random()),
        message_type: ty.to_owned(),
        payload,
        sender,
        recipient: None,
        timestamp_ms: wall_ms(),
        ttl_secs: 300,
        hop_count: 0,
        max_hops: 10,
        signature: Signature::UNSIGNED,
    }
}

/// An open session with the victim, speaking the link's record layer.
pub(crate) struct Session {
    stream: TcpStream,
    tx: SessionSender,
    /// The handshake frames this side sent, for replays.
    pub(crate) sent_handshake: Vec<Vec<u8>>,
    pub(crate) victim: PeerId,
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(head))];
    stream.read_exact(&mut body)?;
    Ok(body)
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Session {
    /// Dials `addr` and completes the Noise XX handshake as `identity`, then
    /// sends HELLO. With `capture`, a thread opens what the victim sends and
    /// keeps its messages there (up to [`MAX_CAPTURED`]); otherwise the
    /// victim's bytes are read and dropped, so its writes never block.
    pub(crate) fn open(
        addr: SocketAddr,
        identity: &Identity,
        capture: Option<Arc<Mutex<Vec<NetworkMessage>>>>,
    ) -> std::io::Result<Session> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        let mut hs = Handshake::xx_initiator(
            identity.clone(),
            Arc::new(AccessPolicy::Open),
            SessionConfig::default(),
        )
        .map_err(io_err)?;
        let mut sent_handshake = Vec::new();
        loop {
            while hs.wants_write() {
                let f = frame(&hs.write_message().map_err(io_err)?).map_err(io_err)?;
                stream.write_all(&f)?;
                sent_handshake.push(f);
            }
            if hs.is_finished() {
                break;
            }
            let m = read_frame(&mut stream)?;
            hs.read_message(&m).map_err(io_err)?;
        }
        let session = hs.into_session().map_err(io_err)?;
        let victim = session.remote_peer_id();
        let (tx, mut rx) = session.split();
        let mut reader = stream.try_clone()?;
        reader.set_read_timeout(None)?;
        std::thread::spawn(move || {
            let mut reassembly = Vec::new();
            while let Ok(f) = read_frame(&mut reader) {
                let Some(cap) = &capture else { continue };
                let Ok(record) = rx.decrypt(&f) else { return };
                match record.split_first() {
                    Some((&MORE, body)) => reassembly.extend_from_slice(body),
                    Some((&END, body)) => {
                        reassembly.extend_from_slice(body);
                        if let Ok(m) = decode_message(&reassembly) {
                            let mut c = cap.lock().unwrap();
                            if c.len() < MAX_CAPTURED {
                                c.push(m);
                            }
                        }
                        reassembly.clear();
                    }
                    _ => {}
                }
            }
        });
        let mut s = Session {
            stream,
            tx,
            sent_handshake,
            victim,
        };
        s.record(&hello_record(NODE_MAX_MESSAGE))?;
        Ok(s)
    }

    /// Seals one record and writes it.
    pub(crate) fn record(&mut self, record: &[u8]) -> std::io::Result<()> {
        let sealed = self.tx.encrypt(record).map_err(io_err)?;
        self.stream.write_all(&frame(&sealed).map_err(io_err)?)
    }

    /// Writes raw bytes (a frame the session did not seal).
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `encoded` (a message's bytes, or anything) as MORE records and a
    /// final END, as the link cuts a message.
    pub(crate) fn message_bytes(&mut self, encoded: &[u8]) -> std::io::Result<()> {
        let mut chunks = encoded.chunks(CHUNK).peekable();
        if chunks.peek().is_none() {
            return self.record(&[END]);
        }
        while let Some(c) = chunks.next() {
            let kind = if chunks.peek().is_some() { MORE } else { END };
            let mut r = Vec::with_capacity(c.len() + 1);
            r.push(kind);
            r.extend_from_slice(c);
            self.record(&r)?;
        }
        Ok(())
    }

    /// Sends a message as the link would.
    pub(crate) fn send(&mut self, m: &NetworkMessage) -> std::io::Result<()> {
        self.message_bytes(&encode_message(m))
    }
}

impl Drop for Session {
    /// Closes the connection (the reading thread holds a clone of the socket,
    /// which would keep it open).
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Runs `body` on sessions as `ctx.identity`, reopening one whenever the
/// victim closes it, until stopped.
fn on_sessions(
    ctx: &Ctx,
    capture: bool,
    mut body: impl FnMut(&mut Session) -> std::io::Result<()>,
) {
    while !ctx.stopped() {
        let cap = capture.then(|| ctx.captured.clone());
        match Session::open(ctx.victim, &ctx.identity, cap) {
            Ok(mut s) => {
                ctx.tally.sessions.fetch_add(1, Ordering::Relaxed);
                while !ctx.stopped() {
                    if body(&mut s).is_err() {
                        ctx.refused();
                        break;
                    }
                }
            }
            Err(_) => ctx.refused(),
        }
    }
}

fn bad_signatures(ctx: &Ctx) {
    let me = ctx.identity.peer_id();
    let start = Instant::now();
    let mut n = 0u64;
    on_sessions(ctx, false, |s| {
        let mut m = message(me, "ecomesh/push", random_vec(200));
        m.signature = Signature(random());
        ctx.pace(start, n);
        n += 1;
        s.send(&m)?;
        ctx.count();
        Ok(())
    });
}

/// A validly signed push of a version node `identity` signed, then altered
/// (its id) so its bytes are not the ones signed; every fourth one a compact
/// version that does not decode.
fn tampered_push(identity: &Identity, n: u64) -> NetworkMessage {
    let me = identity.peer_id();
    let payload = if n % 4 == 3 {
        let mut p = random_vec(120);
        p[0] = ecomesh_p2p_storage::COMPACT_VERSION_FORMAT;
        p
    } else {
        let ts = HlcTimestamp {
            physical_ms: wall_ms(),
            logical: 0,
            peer: me,
        };
        let mut node = VersionNode::signed(
            identity,
            "honest",
            &format!("h{n}"),
            Vec::new(),
            ts,
            Default::default(),
        )
        .unwrap();
        node.id = format!("forged{n}");
        node.encode_compact(None).unwrap()
    };
    let mut m = message(me, "ecomesh/push", payload);
    identity.sign_message(&mut m).unwrap();
    m
}

fn wrong_cids(ctx: &Ctx) {
    let start = Instant::now();
    let mut n = 0u64;
    on_sessions(ctx, false, |s| {
        let m = tampered_push(&ctx.identity, n);
        ctx.pace(start, n);
        n += 1;
        s.send(&m)?;
        ctx.count();
        Ok(())
    });
}

/// Garbage in every place a link can take it. `authenticated`: this thread
/// completes handshakes and then breaks the record layer (with the attack's
/// identity, so it can be charged); otherwise it sends raw garbage before or
/// within handshakes.
fn garbage(ctx: &Ctx, authenticated: bool) {
    let start = Instant::now();
    let mut n = 0u64;
    while !ctx.stopped() {
        ctx.pace(start, n);
        n += 1;
        let r = if authenticated {
            garbage_in_session(ctx, n)
        } else {
            garbage_in_handshake(ctx, n)
        };
        match r {
            Ok(()) => ctx.count(),
            Err(_) => ctx.refused(),
        }
    }
}

fn garbage_in_handshake(ctx: &Ctx, n: u64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&ctx.victim, Duration::from_secs(5))?;
    match n % 3 {
        // Random bytes instead of a handshake.
        0 => stream.write_all(&random_vec(4096))?,
        // A frame header announcing more than will come, then silence.
        1 => stream.write_all(&[0xff, 0xff, 1, 2, 3])?,
        // A real first handshake message, then a garbage frame.
        _ => {
            let mut hs = Handshake::xx_initiator(
                Identity::generate().map_err(io_err)?,
                Arc::new(AccessPolicy::Open),
                SessionConfig::default(),
            )
            .map_err(io_err)?;
            let m = hs.write_message().map_err(io_err)?;
            stream.write_all(&frame(&m).map_err(io_err)?)?;
            let _ = read_frame(&mut stream);
            stream.write_all(&frame(&random_vec(96)).map_err(io_err)?)?;
        }
    }
    Ok(())
}

fn garbage_in_session(ctx: &Ctx, n: u64) -> std::io::Result<()> {
    let mut s = Session::open(ctx.victim, &ctx.identity, None)?;
    ctx.tally.sessions.fetch_add(1, Ordering::Relaxed);
    match n % 5 {
        // A record of an unknown kind.
        0 => s.record(&[0x7f, 1, 2, 3]),
        // A message that does not decode.
        1 => s.message_bytes(&random_vec(1000)),
        // A frame that is not sealed by the session.
        2 => s.raw(&frame(&random_vec(200)).map_err(io_err)?),
        // A message over the node's limit: MORE records past 16 MiB.
        3 => {
            let chunk = random_vec(CHUNK);
            let mut r = vec![MORE];
            r.extend_from_slice(&chunk);
            for _ in 0..=NODE_MAX_MESSAGE / CHUNK {
                s.record(&r)?;
            }
            Ok(())
        }
        // A second HELLO.
        _ => s.record(&hello_record(NODE_MAX_MESSAGE)),
    }
}

fn replays(ctx: &Ctx) {
    let start = Instant::now();
    let mut n = 0u64;
    // First capture: the victim sends what it sends a new peer (anti-entropy,
    // stream requests) and pushes what it takes in.
    let mut handshake: Option<Vec<Vec<u8>>> = None;
    on_sessions(ctx, true, |s| {
        if handshake.is_none() {
            handshake = Some(s.sent_handshake.clone());
        }
        ctx.pace(start, n);
        n += 1;
        if n.is_multiple_of(8)
            && let Some(h) = &handshake
        {
            // A recorded handshake replayed on a new connection: its third
            // message cannot match the victim's fresh ephemeral key.
            let mut stream = TcpStream::connect_timeout(&ctx.victim, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            if let Some(first) = h.first() {
                stream.write_all(first)?;
                let _ = read_frame(&mut stream);
            }
            for f in h.iter().skip(1) {
                let _ = stream.write_all(f);
            }
            ctx.count();
            return Ok(());
        }
        let captured = ctx.captured.lock().unwrap().clone();
        if captured.is_empty() {
            // Nothing captured yet: replay our own valid message instead.
            let mut m = message(ctx.identity.peer_id(), "ecomesh/since", SINCE_ZERO.to_vec());
            ctx.identity.sign_message(&mut m).unwrap();
            ctx.captured.lock().unwrap().push(m);
            return Ok(());
        }
        let m = &captured[usize::try_from(n).unwrap() % captured.len()];
        s.send(m)?;
        ctx.count();
        Ok(())
    });
}

/// Fresh identities connect, announce themselves (their key, a stream
/// request) and leave, one after the other, on each Sybil thread.
fn sybil(ctx: &Ctx) {
    let start = Instant::now();
    let mut n = 0u64;
    while !ctx.stopped() {
        ctx.pace(start, n);
        n += 1;
        let id = Identity::generate().unwrap();
        let me = id.peer_id();
        let Ok(mut s) = Session::open(ctx.victim, &id, None) else {
            ctx.refused();
            continue;
        };
        ctx.tally.sessions.fetch_add(1, Ordering::Relaxed);
        let mut key = me.as_bytes().to_vec();
        key.extend_from_slice(&id.public_key().to_bytes());
        let mut announce = message(me, "ecomesh/key!", key);
        announce.recipient = Some(s.victim);
        id.sign_message(&mut announce).unwrap();
        let mut since = message(me, "ecomesh/since", SINCE_ZERO.to_vec());
        id.sign_message(&mut since).unwrap();
        if s.send(&announce).and_then(|()| s.send(&since)).is_ok() {
            ctx.count();
        } else {
            ctx.refused();
        }
        // Stay a moment, as a peer that announced itself does.
        std::thread::sleep(Duration::from_millis(50));
    }
}
