//! Noise sessions bound to the Ed25519 identity: the secure channel every transport shares.
//!
//! # Patterns
//! - [`Pattern::XX`] = `Noise_XX_25519_ChaChaPoly_BLAKE2s`, for stream links (TCP, QUIC
//!   streams, BLE L2CAP/GATT, Wi-Fi Direct): neither side needs to know the other first.
//! - [`Pattern::IK`] = `Noise_IK_25519_ChaChaPoly_BLAKE2s`, for LoRa and other constrained
//!   links where the initiator already knows the responder's Ed25519 key (from discovery or
//!   a directory): fewer and smaller handshake bytes.
//!
//! Both use snow's ring-accelerated resolver (the workspace enables snow's
//! `ring-accelerated` feature): ChaCha20-Poly1305 from ring (one fused pass over the
//! bytes, about twice the throughput of the pure-Rust AEAD), X25519 via
//! curve25519-dalek and BLAKE2s from snow's default resolver.
//!
//! # Identity binding
//! The Noise static key of a node is the X25519 form of its Ed25519 identity (the
//! Montgomery form of the public key; the clamped secret scalar), so an IK initiator only
//! needs the responder's Ed25519 key. Each side's handshake payload is
//! `0x4E || version 1 || Ed25519 key (32) || signature (64)` (98 bytes), the signature
//! covering
//! ```text
//! u32 len || "ecomesh 2026 noise identity v1" || u32 len || protocol name
//! || u32 len || role ("initiator" | "responder") || handshake hash before this message (32)
//! || the signer's Noise static public key (32)
//! ```
//! The receiver checks that the Noise static key it authenticated by Diffie-Hellman is the
//! X25519 form of the presented Ed25519 key *and* that the signature verifies: the
//! handshake proves possession of both, bound to this handshake's ephemeral keys. The peer's
//! [`PublicKey`] (and so its `PeerId`) comes out of the handshake. The prologue is the
//! framed string `"ecomesh 2026 noise v1"`.
//!
//! # Messages
//! Both patterns take three messages, initiator first:
//!
//! | pattern | 1 (I→R) | 2 (R→I) | 3 (I→R) |
//! |---|---|---|---|
//! | XX | `e` (32 bytes) | `e, ee, s, es` + R identity (194) | `s, se` + I identity (162) |
//! | IK | `e, es, s, ss` + I identity (194) | `e, ee, se` + R identity (146) | confirm (16) |
//!
//! IK's third message is an empty transport message (nonce 0) from the initiator: it
//! proves the initiator holds this session's keys, so a replayed first IK message (which
//! Noise IK alone cannot detect) never completes a handshake on the responder.
//!
//! # Access policy
//! The [`AccessPolicy`] decides who may finish: the responder checks the initiator as soon
//! as its identity is proven (XX message 3, IK message 1) and refuses before completing
//! (IK: before sending message 2); the initiator checks the responder when message 2 arrives
//! (IK: also before sending anything) and refuses before sending message 3. Our own
//! identity is always refused.
//!
//! # Framing contract for transports
//! Every handshake message and every [`Session`] output is one *Noise message* of at most
//! [`MAX_MESSAGE_LEN`] = 65535 bytes.
//! - Stream transports send each as `u16 big-endian length || message` ([`frame`]) and
//!   reassemble with [`FrameDecoder`]; the session must run with [`Delivery::Ordered`]
//!   (implicit nonces, reliable in-order delivery, periodic rekey).
//! - Datagram transports (LoRa, BLE advertisements, UDP) send each message as one datagram
//!   (their own fragmentation below, if the link MTU is smaller) and use
//!   [`Delivery::Datagram`]: each message carries its 8-byte nonce and the receiver keeps
//!   a 128-message replay window, so loss and reordering are tolerated.
//!
//! Both sides must pick the same [`SessionConfig`].
//!
//! # Driving a handshake
//! ```
//! # use std::sync::Arc;
//! # use ecomesh_identity::{Identity, AccessPolicy, noise::{Handshake, SessionConfig}};
//! # fn main() -> Result<(), ecomesh_identity::Error> {
//! let (alice, bob) = (Identity::generate()?, Identity::generate()?);
//! let policy = Arc::new(AccessPolicy::Open);
//! let mut i = Handshake::xx_initiator(alice, policy.clone(), SessionConfig::default())?;
//! let mut r = Handshake::xx_responder(bob, policy, SessionConfig::default())?;
//! // A transport loop: whoever `wants_write()` sends, the other reads, until both finish.
//! while !(i.is_finished() && r.is_finished()) {
//!     let (from, to) = if i.wants_write() { (&mut i, &mut r) } else { (&mut r, &mut i) };
//!     let msg = from.write_message()?;
//!     to.read_message(&msg)?;
//! }
//! let (mut a, mut b) = (i.into_session()?, r.into_session()?);
//! let wire = a.encrypt(b"hello")?;
//! assert_eq!(b.decrypt(&wire)?, b"hello");
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use ecomesh_types::{PeerId, Signature};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::{HandshakeState, StatelessTransportState};
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::{AccessPolicy, Identity, PublicKey, domain};

/// Largest Noise message (handshake or transport), fixed by the Noise specification.
pub const MAX_MESSAGE_LEN: usize = 65535;
/// Authentication tag added to every encrypted payload.
pub const TAG_LEN: usize = 16;
/// Size of the explicit nonce in front of each [`Delivery::Datagram`] message.
pub const DATAGRAM_NONCE_LEN: usize = 8;
/// Size of the length prefix of [`frame`].
pub const FRAME_HEADER_LEN: usize = 2;
/// Messages per direction between two automatic rekeys in [`Delivery::Ordered`] mode, by default.
pub const DEFAULT_REKEY_INTERVAL: u64 = 1 << 20;
/// Size of the replay window of [`Delivery::Datagram`] sessions, in messages.
pub const REPLAY_WINDOW: u64 = 128;

const IDENTITY_KIND: u8 = 0x4E;
const IDENTITY_VERSION: u8 = 1;
const IDENTITY_PAYLOAD_LEN: usize = 2 + 32 + 64;
const HASH_LEN: usize = 32;

/// The Noise handshake pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `Noise_XX_25519_ChaChaPoly_BLAKE2s`: mutual, no prior knowledge; stream links.
    XX,
    /// `Noise_IK_25519_ChaChaPoly_BLAKE2s`: initiator knows the responder; LoRa.
    IK,
}

impl Pattern {
    /// The Noise protocol name.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Pattern::XX => "Noise_XX_25519_ChaChaPoly_BLAKE2s",
            Pattern::IK => "Noise_IK_25519_ChaChaPoly_BLAKE2s",
        }
    }
}

/// How the transport delivers messages; both sides must agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Delivery {
    /// Reliable and in order (streams): implicit nonces, no per-message overhead beyond the
    /// tag, automatic rekey every [`SessionConfig::rekey_interval`] messages. A message
    /// that fails to decrypt closes the session.
    #[default]
    Ordered,
    /// Lossy or reordering (datagrams): an 8-byte explicit nonce per message and a
    /// [`REPLAY_WINDOW`]-message replay window; a bad datagram is dropped and the session
    /// goes on. No rekey.
    Datagram,
}

/// Session parameters, identical on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Delivery mode.
    pub delivery: Delivery,
    /// In [`Delivery::Ordered`] mode, both directions rekey (Noise `REKEY`) after every
    /// this many messages; 0 disables rekeying.
    pub rekey_interval: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            delivery: Delivery::Ordered,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
        }
    }
}

impl SessionConfig {
    /// Datagram delivery (see [`Delivery::Datagram`]).
    pub fn datagram() -> Self {
        SessionConfig {
            delivery: Delivery::Datagram,
            rekey_interval: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
        }
    }
}

enum Phase {
    Handshaking(Box<HandshakeState>),
    /// IK after message 2: transport keys exist, the confirm message is pending.
    Confirming(Box<StatelessTransportState>),
    /// Transport keys in `Handshake::split`.
    Finished,
    Failed,
}

/// A Noise handshake in progress, sans-io: [`write_message`](Self::write_message) when
/// [`wants_write`](Self::wants_write), otherwise [`read_message`](Self::read_message) with
/// the next message from the peer, until [`is_finished`](Self::is_finished); then
/// [`into_session`](Self::into_session). Any error is final (the handshake is closed).
pub struct Handshake {
    pattern: Pattern,
    role: Role,
    identity: Identity,
    policy: Arc<AccessPolicy>,
    config: SessionConfig,
    expected: Option<PeerId>,
    remote: Option<PublicKey>,
    handshake_hash: [u8; HASH_LEN],
    /// Messages processed so far (0..=3).
    step: u8,
    phase: Phase,
    /// Noise `Split()`'s two transport keys (initiator to responder, responder to
    /// initiator), taken when the handshake finished; the [`Session`] seals with them.
    split: Option<Zeroizing<[[u8; 32]; 2]>>,
}

impl Handshake {
    /// XX initiator (stream links).
    pub fn xx_initiator(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        config: SessionConfig,
    ) -> Result<Self> {
        Self::build(Pattern::XX, Role::Initiator, identity, None, policy, config)
    }

    /// XX responder (stream links).
    pub fn xx_responder(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        config: SessionConfig,
    ) -> Result<Self> {
        Self::build(Pattern::XX, Role::Responder, identity, None, policy, config)
    }

    /// IK initiator: `responder` is the Ed25519 key of the peer to reach. Refused at once
    /// if the policy does not accept that peer.
    pub fn ik_initiator(
        identity: Identity,
        responder: &PublicKey,
        policy: Arc<AccessPolicy>,
        config: SessionConfig,
    ) -> Result<Self> {
        admit(&policy, &identity, responder)?;
        let mut hs = Self::build(
            Pattern::IK,
            Role::Initiator,
            identity,
            Some(responder),
            policy,
            config,
        )?;
        hs.expected = Some(responder.peer_id());
        Ok(hs)
    }

    /// IK responder.
    pub fn ik_responder(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        config: SessionConfig,
    ) -> Result<Self> {
        Self::build(Pattern::IK, Role::Responder, identity, None, policy, config)
    }

    /// Requires the peer to be `peer` (e.g. when dialing a known peer id over XX): any
    /// other identity fails with [`Error::WrongPeer`] before the handshake completes.
    pub fn expect_peer(mut self, peer: PeerId) -> Self {
        self.expected = Some(peer);
        self
    }

    fn build(
        pattern: Pattern,
        role: Role,
        identity: Identity,
        remote: Option<&PublicKey>,
        policy: Arc<AccessPolicy>,
        config: SessionConfig,
    ) -> Result<Self> {
        let params = pattern.protocol_name().parse()?;
        let secret = identity.x25519_secret_bytes();
        let prologue = Writer::with_domain(domain::NOISE_PROLOGUE).finish();
        let remote_x = remote.map(PublicKey::to_x25519);
        let mut builder = snow::Builder::new(params)
            .local_private_key(&secret[..])?
            .prologue(&prologue)?;
        if let Some(rx) = &remote_x {
            builder = builder.remote_public_key(rx)?;
        }
        let state = match role {
            Role::Initiator => builder.build_initiator()?,
            Role::Responder => builder.build_responder()?,
        };
        Ok(Handshake {
            pattern,
            role,
            identity,
            policy,
            config,
            expected: None,
            remote: None,
            handshake_hash: [0; HASH_LEN],
            step: 0,
            phase: Phase::Handshaking(Box::new(state)),
            split: None,
        })
    }

    /// The pattern.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Whether this side is the initiator.
    pub fn is_initiator(&self) -> bool {
        self.role == Role::Initiator
    }

    /// True when this side must produce the next message.
    pub fn wants_write(&self) -> bool {
        !matches!(self.phase, Phase::Finished | Phase::Failed) && self.my_turn()
    }

    fn my_turn(&self) -> bool {
        self.step.is_multiple_of(2) == (self.role == Role::Initiator)
    }

    /// True once the handshake completed on this side.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// True once an error closed the handshake.
    pub fn is_failed(&self) -> bool {
        matches!(self.phase, Phase::Failed)
    }

    /// The peer's identity, once its handshake payload has been verified.
    pub fn remote_public_key(&self) -> Option<&PublicKey> {
        self.remote.as_ref()
    }

    /// Produces the next handshake message to send (at most [`MAX_MESSAGE_LEN`] bytes).
    pub fn write_message(&mut self) -> Result<Vec<u8>> {
        if !self.wants_write() {
            return Err(if self.is_failed() {
                Error::Closed
            } else {
                Error::UnexpectedMessage("write")
            });
        }
        let result = self.write_inner();
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn carries_identity(&self, step: u8) -> bool {
        match self.pattern {
            Pattern::XX => step == 1 || step == 2,
            Pattern::IK => step == 0 || step == 1,
        }
    }

    fn write_inner(&mut self) -> Result<Vec<u8>> {
        let mut out = vec![0_u8; MAX_MESSAGE_LEN];
        let step = self.step;
        let with_identity = self.carries_identity(step);
        let n = match &mut self.phase {
            Phase::Handshaking(hs) => {
                let payload = if with_identity {
                    identity_payload(
                        &self.identity,
                        self.pattern,
                        self.role,
                        hs.get_handshake_hash(),
                    )
                } else {
                    Vec::new()
                };
                hs.write_message(&payload, &mut out)?
            }
            Phase::Confirming(ts) => ts.write_message(0, &[], &mut out)?,
            Phase::Finished | Phase::Failed => return Err(Error::Closed),
        };
        out.truncate(n);
        self.advance()?;
        Ok(out)
    }

    /// Processes the peer's next handshake message.
    pub fn read_message(&mut self, message: &[u8]) -> Result<()> {
        if self.is_failed() {
            return Err(Error::Closed);
        }
        if self.my_turn() || self.is_finished() {
            return Err(Error::UnexpectedMessage("handshake message"));
        }
        let result = self.read_inner(message);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn read_inner(&mut self, message: &[u8]) -> Result<()> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLarge {
                what: "noise handshake message",
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let mut payload = vec![0_u8; MAX_MESSAGE_LEN];
        let with_identity = self.carries_identity(self.step);
        match &mut self.phase {
            Phase::Handshaking(hs) => {
                let mut h_before = [0_u8; HASH_LEN];
                h_before.copy_from_slice(hs.get_handshake_hash());
                let n = hs
                    .read_message(message, &mut payload)
                    .map_err(noise_read_error)?;
                let payload = &payload[..n];
                if with_identity {
                    let remote_static = hs
                        .get_remote_static()
                        .ok_or(Error::HandshakeIdentity("no remote static key"))?;
                    let peer_role = match self.role {
                        Role::Initiator => Role::Responder,
                        Role::Responder => Role::Initiator,
                    };
                    let key = verify_identity_payload(
                        payload,
                        self.pattern,
                        peer_role,
                        &h_before,
                        remote_static,
                    )?;
                    self.accept_peer(key)?;
                } else if !payload.is_empty() {
                    return Err(Error::Decode {
                        what: "noise handshake message",
                        reason: "unexpected payload",
                    });
                }
            }
            Phase::Confirming(ts) => {
                let n = ts
                    .read_message(0, message, &mut payload)
                    .map_err(noise_read_error)?;
                if n != 0 {
                    return Err(Error::Decode {
                        what: "noise confirm message",
                        reason: "unexpected payload",
                    });
                }
            }
            Phase::Finished | Phase::Failed => return Err(Error::Closed),
        }
        self.advance()
    }

    fn accept_peer(&mut self, key: PublicKey) -> Result<()> {
        if let Some(expected) = self.expected
            && key.peer_id() != expected
        {
            return Err(Error::WrongPeer {
                expected,
                found: key.peer_id(),
            });
        }
        admit(&self.policy, &self.identity, &key)?;
        self.remote = Some(key);
        Ok(())
    }

    /// Counts a processed message and moves to transport mode when Noise is done.
    fn advance(&mut self) -> Result<()> {
        self.step += 1;
        let phase = std::mem::replace(&mut self.phase, Phase::Failed);
        self.phase = match phase {
            Phase::Handshaking(mut hs) if hs.is_handshake_finished() => {
                self.handshake_hash.copy_from_slice(hs.get_handshake_hash());
                let (k1, k2) = hs.dangerously_get_raw_split();
                self.split = Some(Zeroizing::new([k1, k2]));
                let ts = Box::new(hs.into_stateless_transport_mode()?);
                match self.pattern {
                    Pattern::XX => Phase::Finished,
                    Pattern::IK => Phase::Confirming(ts),
                }
            }
            Phase::Confirming(_) => Phase::Finished,
            other => other,
        };
        if self.is_finished() {
            tracing::debug!(
                pattern = ?self.pattern,
                initiator = self.is_initiator(),
                peer = ?self.remote.map(|k| k.peer_id()),
                "noise handshake finished"
            );
        }
        Ok(())
    }

    /// The established session; [`Error::UnexpectedMessage`] before the handshake finished.
    pub fn into_session(self) -> Result<Session> {
        let (Phase::Finished, Some(split)) = (&self.phase, &self.split) else {
            return Err(if matches!(self.phase, Phase::Failed) {
                Error::Closed
            } else {
                Error::UnexpectedMessage("into_session before the handshake finished")
            });
        };
        let remote = self
            .remote
            .ok_or(Error::HandshakeIdentity("peer identity missing"))?;
        // IK's confirm used nonce 0 from initiator to responder.
        let first = u64::from(self.pattern == Pattern::IK);
        let (send_start, recv_start) = match self.role {
            Role::Initiator => (first, 0),
            Role::Responder => (0, first),
        };
        let (send_key, recv_key) = match self.role {
            Role::Initiator => (&split[0], &split[1]),
            Role::Responder => (&split[1], &split[0]),
        };
        Ok(Session {
            sender: SessionSender {
                key: TransportKey::new(send_key),
                config: self.config,
                nonce: send_start,
            },
            receiver: SessionReceiver {
                key: TransportKey::new(recv_key),
                config: self.config,
                window: ReplayWindow::new(recv_start),
                closed: false,
            },
            remote,
            handshake_hash: self.handshake_hash,
        })
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("pattern", &self.pattern)
            .field("role", &self.role)
            .field("step", &self.step)
            .field("finished", &self.is_finished())
            .field("failed", &self.is_failed())
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

fn noise_read_error(e: snow::Error) -> Error {
    match e {
        snow::Error::Decrypt => Error::DecryptFailed,
        other => Error::Noise(other),
    }
}

fn admit(policy: &AccessPolicy, me: &Identity, peer: &PublicKey) -> Result<()> {
    if peer == me.public_key() {
        return Err(Error::SelfConnection);
    }
    let id = peer.peer_id();
    if !policy.allows(&id) {
        tracing::info!(peer = %id, "noise handshake refused by access policy");
        return Err(Error::PeerRefused(id));
    }
    Ok(())
}

fn identity_signed_bytes(
    pattern: Pattern,
    role: Role,
    h_before: &[u8],
    static_pub: &[u8; 32],
) -> Vec<u8> {
    let mut w = Writer::with_domain(domain::NOISE_IDENTITY);
    w.var(pattern.protocol_name().as_bytes())
        .var(role.label().as_bytes())
        .fixed(h_before)
        .fixed(static_pub);
    w.finish()
}

fn identity_payload(identity: &Identity, pattern: Pattern, role: Role, h_before: &[u8]) -> Vec<u8> {
    let static_pub = identity.public_key().to_x25519();
    let sig = identity.sign(&identity_signed_bytes(pattern, role, h_before, &static_pub));
    let mut w = Writer::object(IDENTITY_KIND, IDENTITY_VERSION);
    w.fixed(identity.public_key().as_bytes()).fixed(&sig.0);
    w.finish()
}

/// Decodes and checks a peer's identity payload against the Noise static key it proved.
fn verify_identity_payload(
    payload: &[u8],
    pattern: Pattern,
    role: Role,
    h_before: &[u8],
    remote_static: &[u8],
) -> Result<PublicKey> {
    const WHAT: &str = "noise identity payload";
    if payload.len() != IDENTITY_PAYLOAD_LEN {
        return Err(Error::Decode {
            what: WHAT,
            reason: "wrong length",
        });
    }
    let mut r = Reader::object(payload, WHAT, IDENTITY_KIND, IDENTITY_VERSION)?;
    let key = PublicKey::from_bytes(&r.array()?)?;
    let sig = Signature(r.array()?);
    r.finish()?;
    let static_pub = key.to_x25519();
    if remote_static != static_pub {
        return Err(Error::HandshakeIdentity(
            "Noise static key is not the X25519 form of the presented identity",
        ));
    }
    key.verify(
        &identity_signed_bytes(pattern, role, h_before, &static_pub),
        &sig,
    )?;
    Ok(key)
}

/// Receive-side nonce tracking: strict sequence for ordered delivery, a sliding window
/// for datagrams.
#[derive(Clone, Copy, Debug)]
struct ReplayWindow {
    /// One past the highest accepted nonce.
    next: u64,
    /// Bit `i` set: nonce `next - 1 - i` is seen (or below the first valid nonce).
    seen: u128,
}

impl ReplayWindow {
    fn new(start: u64) -> Self {
        ReplayWindow {
            next: start,
            seen: u128::MAX,
        }
    }

    fn check(&self, n: u64) -> Result<()> {
        if n >= self.next {
            return Ok(());
        }
        let d = self.next - 1 - n;
        if d >= u64::from(u128::BITS) || (self.seen >> d) & 1 == 1 {
            return Err(Error::Replay(n));
        }
        Ok(())
    }

    fn accept(&mut self, n: u64) {
        if n >= self.next {
            let shift = n - self.next + 1;
            self.seen = if shift >= u64::from(u128::BITS) {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.next = n + 1;
        } else {
            self.seen |= 1 << (self.next - 1 - n);
        }
    }
}

/// An established, mutually authenticated Noise session (transport phase).
///
/// [`encrypt`](Self::encrypt) turns one plaintext of at most
/// [`max_plaintext_len`](Self::max_plaintext_len) bytes into one Noise message; the peer's
/// [`decrypt`](Self::decrypt) turns it back. Larger application messages are split by the
/// caller. Output sizes: plaintext + 16 ([`Delivery::Ordered`]) or + 24
/// ([`Delivery::Datagram`]). [`split`](Self::split) separates the two directions, so that
/// one task (or core) can encrypt while another decrypts.
pub struct Session {
    sender: SessionSender,
    receiver: SessionReceiver,
    remote: PublicKey,
    handshake_hash: [u8; HASH_LEN],
}

/// The sending direction of a [`Session`] ([`Session::split`]): the same messages, byte
/// for byte, as the session's own `encrypt*` calls would have produced.
pub struct SessionSender {
    key: TransportKey,
    config: SessionConfig,
    nonce: u64,
}

/// The receiving direction of a [`Session`] ([`Session::split`]): the same checks as the
/// session's own `decrypt*` calls; in ordered mode any failure closes it for good.
pub struct SessionReceiver {
    key: TransportKey,
    config: SessionConfig,
    window: ReplayWindow,
    closed: bool,
}

/// One direction's Noise `CipherState` key for `ChaChaPoly`, sealed and opened with ring in
/// place: the nonce is 32 zero bits then the 64-bit counter little-endian, the associated
/// data is empty (transport messages), and `REKEY(k)` is the first 32 bytes of
/// `ENCRYPT(k, 2^64 - 1, "", zeros(32))` (Noise specification, sections 5.1 and 11.3;
/// byte-identical to snow's transport state, pinned by a test against snow).
struct TransportKey(LessSafeKey);

impl TransportKey {
    fn new(key: &[u8; 32]) -> Self {
        TransportKey(LessSafeKey::new(
            UnboundKey::new(&aead::CHACHA20_POLY1305, key)
                .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 takes 32-byte keys")),
        ))
    }

    fn nonce(n: u64) -> Nonce {
        let mut bytes = [0u8; 12];
        bytes[4..].copy_from_slice(&n.to_le_bytes());
        Nonce::assume_unique_for_key(bytes)
    }

    /// Encrypts `in_out` in place and returns its tag.
    fn seal(&self, n: u64, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Self::nonce(n), Aad::empty(), in_out)
            .unwrap_or_else(|_| unreachable!("ring refuses only inputs above 2^38 bytes"));
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks and decrypts `ciphertext || tag` in place; the plaintext's length on success.
    fn open(&self, n: u64, in_out: &mut [u8]) -> Result<usize> {
        self.0
            .open_in_place(Self::nonce(n), Aad::empty(), in_out)
            .map(|p| p.len())
            .map_err(|_| Error::DecryptFailed)
    }

    fn rekey(&mut self) {
        let mut k = Zeroizing::new([0u8; 32]);
        let _tag = self.seal(u64::MAX, &mut k[..]);
        *self = TransportKey::new(&k);
    }
}

fn rekey_due(config: &SessionConfig, nonce: u64) -> bool {
    config.delivery == Delivery::Ordered
        && config.rekey_interval != 0
        && nonce != 0
        && nonce.is_multiple_of(config.rekey_interval)
}

fn nonce_prefix_len(config: &SessionConfig) -> usize {
    match config.delivery {
        Delivery::Ordered => 0,
        Delivery::Datagram => DATAGRAM_NONCE_LEN,
    }
}

impl Session {
    /// The peer's proven Ed25519 key.
    pub fn remote_public_key(&self) -> &PublicKey {
        &self.remote
    }

    /// The peer's id (SHA-256 of its key).
    pub fn remote_peer_id(&self) -> PeerId {
        self.remote.peer_id()
    }

    /// The Noise handshake hash: unique to this session, identical on both sides; usable
    /// as a channel binding (e.g. for [`crate::auth`]).
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// The session's configuration.
    pub fn config(&self) -> SessionConfig {
        self.sender.config
    }

    /// Whether a failure closed the session (ordered mode).
    pub fn is_closed(&self) -> bool {
        self.receiver.closed
    }

    /// Largest plaintext per message: 65519 (ordered) or 65511 (datagram) bytes.
    pub fn max_plaintext_len(&self) -> usize {
        self.sender.max_plaintext_len()
    }

    /// Separates the two directions: encrypting and decrypting then need no shared state
    /// (each half keeps its key and nonce). A session closed by a failure stays closed
    /// on its receiving half; its sending half goes on (the caller closes the link).
    pub fn split(self) -> (SessionSender, SessionReceiver) {
        (self.sender, self.receiver)
    }

    fn check_open(&self) -> Result<()> {
        if self.receiver.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Encrypts one message.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.check_open()?;
        self.sender.encrypt(plaintext)
    }

    /// Encrypts one message, appending it to `out` (lets transports reuse buffers). The
    /// plaintext is copied once, into `out`, and sealed there.
    pub fn encrypt_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.check_open()?;
        self.sender.encrypt_into(plaintext, out)
    }

    /// Encrypts the plaintext `buf[start..]` in place and appends its tag: the same Noise
    /// message as [`encrypt_into`](Self::encrypt_into) of that plaintext, without a copy.
    /// Ordered sessions only ([`Error::UnexpectedMessage`] for datagram sessions, whose
    /// nonce goes in front of the message); on error `buf` is unchanged.
    pub fn encrypt_in_place(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<()> {
        self.check_open()?;
        self.sender.encrypt_in_place(buf, start)
    }

    /// Decrypts one message from the peer.
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        self.receiver.decrypt(message)
    }

    /// Decrypts one message from the peer, appending the plaintext to `out` (the
    /// ciphertext is copied once, into `out`, and opened there).
    ///
    /// Ordered mode: any failure closes the session (a stream cannot resynchronise).
    /// Datagram mode: a replayed, too old, or forged datagram is refused
    /// ([`Error::Replay`], [`Error::DecryptFailed`]) and the session goes on.
    pub fn decrypt_into(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.receiver.decrypt_into(message, out)
    }

    /// Decrypts one message from the peer in place: returns the plaintext, a part of
    /// `message` (after the nonce of a datagram message, without the tag). Same checks and
    /// failure rules as [`decrypt_into`](Self::decrypt_into); on failure the bytes of
    /// `message` are unspecified.
    pub fn decrypt_in_place<'a>(&mut self, message: &'a mut [u8]) -> Result<&'a mut [u8]> {
        self.receiver.decrypt_in_place(message)
    }
}

impl SessionSender {
    /// Largest plaintext per message: 65519 (ordered) or 65511 (datagram) bytes.
    pub fn max_plaintext_len(&self) -> usize {
        MAX_MESSAGE_LEN - TAG_LEN - nonce_prefix_len(&self.config)
    }

    /// Encrypts one message (see [`Session::encrypt`]).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out =
            Vec::with_capacity(plaintext.len() + TAG_LEN + nonce_prefix_len(&self.config));
        self.encrypt_into(plaintext, &mut out)?;
        Ok(out)
    }

    /// Encrypts one message, appending it to `out` (see [`Session::encrypt_into`]).
    pub fn encrypt_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.check_plaintext(plaintext.len())?;
        if self.config.delivery == Delivery::Datagram {
            out.extend_from_slice(&self.nonce.to_be_bytes());
        }
        let body = out.len();
        out.extend_from_slice(plaintext);
        let tag = self.seal_next(&mut out[body..]);
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Encrypts `buf[start..]` in place and appends its tag (see
    /// [`Session::encrypt_in_place`]); on error `buf` is unchanged.
    pub fn encrypt_in_place(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<()> {
        if self.config.delivery != Delivery::Ordered {
            return Err(Error::UnexpectedMessage(
                "in-place encryption of a datagram session",
            ));
        }
        let len = buf.len().checked_sub(start).ok_or(Error::Truncated {
            what: "noise plaintext",
            needed: start,
            available: buf.len(),
        })?;
        self.check_plaintext(len)?;
        let tag = self.seal_next(&mut buf[start..]);
        buf.extend_from_slice(&tag);
        Ok(())
    }

    fn check_plaintext(&self, len: usize) -> Result<()> {
        let max = self.max_plaintext_len();
        if len > max {
            return Err(Error::TooLarge {
                what: "noise plaintext",
                len,
                max,
            });
        }
        if self.nonce == u64::MAX {
            return Err(Error::NonceExhausted);
        }
        Ok(())
    }

    /// Seals with the next send nonce (checked by `check_plaintext`), rekeying when due.
    fn seal_next(&mut self, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = self.nonce;
        if rekey_due(&self.config, nonce) {
            self.key.rekey();
        }
        self.nonce += 1;
        self.key.seal(nonce, in_out)
    }
}

impl SessionReceiver {
    /// Whether a failure closed this direction (ordered mode).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Decrypts one message from the peer (see [`Session::decrypt`]).
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(message.len());
        self.decrypt_into(message, &mut out)?;
        Ok(out)
    }

    /// Decrypts one message, appending the plaintext to `out` (see
    /// [`Session::decrypt_into`]).
    pub fn decrypt_into(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        if message.len() > MAX_MESSAGE_LEN {
            // Checked before copying anything.
            return self.fail(Error::TooLarge {
                what: "noise message",
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let start = out.len();
        let prefix = match self.config.delivery {
            Delivery::Ordered => 0,
            Delivery::Datagram => DATAGRAM_NONCE_LEN.min(message.len()),
        };
        out.extend_from_slice(&message[prefix..]);
        let result = self.open_at(&message[..prefix], &mut out[start..]);
        match result {
            Ok(n) => {
                out.truncate(start + n);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Decrypts one message in place, returning the plaintext (see
    /// [`Session::decrypt_in_place`]).
    pub fn decrypt_in_place<'a>(&mut self, message: &'a mut [u8]) -> Result<&'a mut [u8]> {
        if self.closed {
            return Err(Error::Closed);
        }
        let prefix = match self.config.delivery {
            Delivery::Ordered => 0,
            Delivery::Datagram => DATAGRAM_NONCE_LEN.min(message.len()),
        };
        if message.len() > MAX_MESSAGE_LEN {
            return self.fail(Error::TooLarge {
                what: "noise message",
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let (head, body) = message.split_at_mut(prefix);
        let n = self.open_at(head, body)?;
        Ok(&mut body[..n])
    }

    fn fail<T>(&mut self, e: Error) -> Result<T> {
        if self.config.delivery == Delivery::Ordered {
            self.closed = true;
        }
        Err(e)
    }

    /// Opens `body` (ciphertext and tag) in place; `nonce_prefix` is the datagram nonce
    /// (empty for ordered sessions). Closes an ordered session on any failure.
    fn open_at(&mut self, nonce_prefix: &[u8], body: &mut [u8]) -> Result<usize> {
        if self.closed {
            return Err(Error::Closed);
        }
        let result = self.open_inner(nonce_prefix, body);
        if result.is_err() && self.config.delivery == Delivery::Ordered {
            self.closed = true;
        }
        result
    }

    fn open_inner(&mut self, nonce_prefix: &[u8], body: &mut [u8]) -> Result<usize> {
        let nonce = match self.config.delivery {
            Delivery::Ordered => self.window.next,
            Delivery::Datagram => {
                let mut r = Reader::new(nonce_prefix, "noise datagram");
                let nonce = r.u64()?;
                self.window.check(nonce)?;
                nonce
            }
        };
        if body.len() < TAG_LEN {
            return Err(Error::Truncated {
                what: "noise message",
                needed: TAG_LEN,
                available: body.len(),
            });
        }
        if nonce == u64::MAX {
            return Err(Error::NonceExhausted);
        }
        if rekey_due(&self.config, nonce) && self.window.next == nonce {
            self.key.rekey();
        }
        let n = self.key.open(nonce, body)?;
        self.window.accept(nonce);
        Ok(n)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.remote.peer_id())
            .field("config", &self.sender.config)
            .field("send_nonce", &self.sender.nonce)
            .field("closed", &self.receiver.closed)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SessionSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSender")
            .field("config", &self.config)
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SessionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionReceiver")
            .field("config", &self.config)
            .field("next_nonce", &self.window.next)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// Frames one Noise message for a stream: `u16 big-endian length || message`.
pub fn frame(message: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(message.len()).map_err(|_| Error::TooLarge {
        what: "noise message",
        len: message.len(),
        max: MAX_MESSAGE_LEN,
    })?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + message.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

/// Reassembles [`frame`]d Noise messages from stream bytes that arrive in arbitrary chunks.
///
/// Buffers at most `capacity` bytes (default: two maximal frames); the transport pushes
/// what it read, then drains [`next_frame`](Self::next_frame) until `None`.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    capacity: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder buffering up to two maximal frames.
    pub fn new() -> Self {
        Self::with_capacity(2 * (FRAME_HEADER_LEN + MAX_MESSAGE_LEN))
    }

    /// A decoder buffering up to `capacity` bytes (at least one maximal frame is always allowed).
    pub fn with_capacity(capacity: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            capacity: capacity.max(FRAME_HEADER_LEN + MAX_MESSAGE_LEN),
        }
    }

    /// Appends received stream bytes; refuses ([`Error::TooLarge`]) if the buffer would
    /// exceed its capacity (the transport should drain frames first or close the stream).
    pub fn push(&mut self, bytes: &[u8]) -> Result<()> {
        let len = self.buf.len().saturating_add(bytes.len());
        if len > self.capacity {
            return Err(Error::TooLarge {
                what: "frame decoder buffer",
                len,
                max: self.capacity,
            });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete message, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        let header: [u8; FRAME_HEADER_LEN] = self.buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        let len = usize::from(u16::from_be_bytes(header));
        let end = FRAME_HEADER_LEN + len;
        if self.buf.len() < end {
            return None;
        }
        let message = self.buf[FRAME_HEADER_LEN..end].to_vec();
        self.buf.drain(..end);
        Some(message)
    }

    /// Bytes buffered but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring transport keys produce the very Noise transport messages snow's
    /// transport state produces from the same `Split()`, across nonces and rekeys.
    #[test]
    fn transport_keys_match_snow_byte_for_byte() {
        let params: snow::params::NoiseParams =
            "Noise_NN_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
        let mut i = snow::Builder::new(params.clone())
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(params).build_responder().unwrap();
        let (mut buf, mut tmp) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n], &mut tmp).unwrap();
        let n = r.write_message(&[], &mut buf).unwrap();
        i.read_message(&buf[..n], &mut tmp).unwrap();
        let (k1, k2) = i.dangerously_get_raw_split();
        let mut snow_i = i.into_stateless_transport_mode().unwrap();
        let mut snow_r = r.into_stateless_transport_mode().unwrap();
        let (mut send, mut recv) = (TransportKey::new(&k1), TransportKey::new(&k2));
        for round in 0..3usize {
            for (nonce, len) in [
                (0u64, 0usize),
                (1, 1),
                (2, 100),
                (3, 65519),
                (1 << 40, 5000),
            ] {
                let plain: Vec<u8> = (0..len).map(|x| (x * 7 + round) as u8).collect();
                let mut ours = plain.clone();
                let tag = send.seal(nonce, &mut ours);
                ours.extend_from_slice(&tag);
                let mut theirs = vec![0; len + TAG_LEN];
                snow_i.write_message(nonce, &plain, &mut theirs).unwrap();
                assert_eq!(ours, theirs, "round {round} nonce {nonce} len {len}");
                let mut back = vec![0; len + TAG_LEN];
                snow_r.write_message(nonce, &plain, &mut back).unwrap();
                // Tamper with a copy of the sealed bytes: flipping the buffer after it
                // was opened in place would flip plaintext, which for one byte equals
                // the ciphertext whenever the keystream byte is 1 (1 run in ~85).
                let mut tampered = back.clone();
                tampered[0] ^= 1;
                let n = recv.open(nonce, &mut back).unwrap();
                assert_eq!(&back[..n], &plain[..]);
                assert!(recv.open(nonce, &mut tampered).is_err());
            }
            send.rekey();
            recv.rekey();
            snow_i.rekey_outgoing();
            snow_r.rekey_outgoing();
        }
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::new(1);
        assert!(w.check(0).is_err());
        w.check(1).unwrap();
        w.accept(1);
        assert!(w.check(1).is_err());
        w.check(5).unwrap();
        w.accept(5);
        w.check(3).unwrap();
        w.accept(3);
        assert!(w.check(3).is_err());
        w.check(2).unwrap();
        w.accept(1000);
        assert!(w.check(1000 - 128).is_err());
        w.check(1000 - 127).unwrap();
        assert!(w.check(1000).is_err());
        w.accept(u64::MAX - 1);
        assert!(w.check(1000).is_err());
    }

    #[test]
    fn frames_reassemble_across_chunks() {
        let msgs: Vec<Vec<u8>> = vec![vec![1; 3], vec![], vec![7; 300]];
        let stream: Vec<u8> = msgs.iter().flat_map(|m| frame(m).unwrap()).collect();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(7) {
            d.push(chunk).unwrap();
            while let Some(m) = d.next_frame() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(d.buffered(), 0);
        assert!(frame(&vec![0; MAX_MESSAGE_LEN + 1]).is_err());
        let mut small = FrameDecoder::with_capacity(0);
        assert!(small.push(&vec![0; 2 * MAX_MESSAGE_LEN]).is_err());
    }
}
