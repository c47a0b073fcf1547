//! Device linking: two nodes of one person become each other's **own
//! devices** by a short code typed on one of them (seed 004 "identity
//! linking by signed challenge", seed 4.2 device links).
//!
//! Node A calls [`Node::link_new`]: it gets a [`LinkCode`] (a one-time
//! 80-bit secret, A's peer-id prefix and optionally the address it listens
//! on; 31 to 40 characters) that lives [`DEFAULT_LINK_TTL`] unless told
//! otherwise. Node B, once it reaches A over any transport, calls
//! [`Node::link_accept`] with the code. Four mesh messages of type
//! [`LINK_TYPE`] follow (see `proto`): B's request (a MAC keyed by the
//! secret: B holds the code), A's challenge (A's MAC, A's signature over
//! B's nonce, A's half of a [`DeviceLinkDeclaration`] naming both keys, and
//! the user's shared key encrypted under the secret), B's confirmation (B's
//! signature over A's nonce and B's half of the declaration) and A's done.
//! Both sides then hold a declaration signed by both devices, record it in
//! `devices.bin` (durable, verified again at every start) and treat each
//! other as [`Trust::OwnDevice`] for reach ([`Node::relationship`]) with one
//! user label and one shared user key.
//!
//! A code works once: a second request with it is refused with
//! [`LinkError::AlreadyUsed`], one after its lifetime with
//! [`LinkError::Expired`], one with another secret with
//! [`LinkError::WrongCode`]; a mistyped code fails its check digits before
//! anything is sent ([`LinkError::InvalidCode`]). Codes live in memory only:
//! a restart of the issuer voids its open codes (they are refused as wrong).

mod code;
mod devices;
mod proto;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ecomesh_identity::Identity;
use ecomesh_identity::device_link::DeviceLinkDeclaration;
use ecomesh_mesh::MultiTransportManager;
use ecomesh_replication::reach::Trust;
use ecomesh_types::{PeerId, Priority};
use tokio::sync::Notify;

pub use code::{ISSUER_PREFIX_LEN, LinkCode, MAX_CODE_TEXT, SECRET_LEN};
pub use devices::MAX_LINKS;
pub use proto::{LINK_TYPE, MAX_LINK_MESSAGE, PROOF_DOMAIN};

use crate::clock::now_ms;
use crate::error::{Result, SyncError};
use crate::node::{Node, lock};
use devices::Devices;
use proto::{CodeId, CodeKeys, LinkMessage, Nonce, Reason};

/// How long a code from [`Node::link_new`] is accepted by default: 10 minutes.
pub const DEFAULT_LINK_TTL: Duration = Duration::from_secs(600);
/// Most codes one node keeps (open, used or expired); a new one beyond it
/// replaces the oldest used or expired one, or is refused
/// ([`LinkError::TooManyCodes`]) when all are open.
pub const MAX_CODES: usize = 16;
/// Link messages queued between two passes of the node; more are dropped.
const INBOX_MAX: usize = 64;
/// How often a link waiting for its issuer to appear looks at the peers.
const PEER_POLL: Duration = Duration::from_millis(20);

/// Why linking failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The text is not a link code (a typo, a truncated copy).
    #[error("not a valid link code: {0}")]
    InvalidCode(String),
    /// The issuer knows no such code (another secret, or it restarted).
    #[error("the other device does not know this code: check it, or make a new one")]
    WrongCode,
    /// The code's lifetime is over.
    #[error("the code has expired: make a new one with `link new`")]
    Expired,
    /// The code was used already (by this or another device).
    #[error("the code was already used: make a new one with `link new`")]
    AlreadyUsed,
    /// The code is this node's own.
    #[error("this code was made by this node: enter it on the other device")]
    OwnCode,
    /// The issuer was not reachable before the deadline.
    #[error("the device that made the code is not reachable")]
    Unreachable,
    /// No answer before the deadline.
    #[error("no answer from the other device in time")]
    Timeout,
    /// This node already keeps [`MAX_CODES`] open codes.
    #[error("too many open link codes; wait until one is used or expires")]
    TooManyCodes,
    /// This node links at most [`MAX_LINKS`] devices.
    #[error("this node already has {MAX_LINKS} device links")]
    TooManyLinks,
    /// The exchange failed: a proof did not verify, or a side could not
    /// record the link.
    #[error("linking failed: {0}")]
    Failed(String),
}

impl From<Reason> for LinkError {
    fn from(r: Reason) -> Self {
        match r {
            Reason::WrongCode => LinkError::WrongCode,
            Reason::Expired => LinkError::Expired,
            Reason::AlreadyUsed => LinkError::AlreadyUsed,
            Reason::Failed => {
                LinkError::Failed("the other device could not record the link".into())
            }
        }
    }
}

/// One of this node's own devices.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnDevice {
    /// Its peer id.
    pub peer_id: PeerId,
    /// When the link was made, Unix ms (the declaration's time).
    pub linked_at_ms: u64,
}

enum Offer {
    Open,
    Challenged {
        peer: PeerId,
        nonce_a: Nonce,
        nonce_b: Nonce,
        decl: DeviceLinkDeclaration,
        label: String,
        user_key: [u8; 32],
    },
    Used(OwnDevice),
}

struct Offered {
    keys: CodeKeys,
    expires_ms: u64,
    offer: Offer,
}

enum Stage {
    Requested,
    Confirmed {
        nonce_a: Nonce,
        decl: DeviceLinkDeclaration,
        label: String,
        user_key: [u8; 32],
    },
    Finished(std::result::Result<OwnDevice, LinkError>),
}

struct Accepting {
    keys: CodeKeys,
    issuer: PeerId,
    nonce_b: Nonce,
    stage: Stage,
}

#[derive(Default)]
struct LinkState {
    devices: Devices,
    offered: BTreeMap<CodeId, Offered>,
    accepting: BTreeMap<CodeId, Accepting>,
    inbox: VecDeque<(PeerId, Vec<u8>)>,
}

/// The link service of a node.
pub(crate) struct Links {
    identity: Identity,
    path: PathBuf,
    mesh: Arc<MultiTransportManager>,
    st: Mutex<LinkState>,
    own: Arc<RwLock<BTreeSet<PeerId>>>,
    changed: Notify,
    wake: Arc<Notify>,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| SyncError::InvalidArgument(format!("no randomness: {e}")))?;
    Ok(b)
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut o = [0u8; 32];
    for (i, x) in o.iter_mut().enumerate() {
        *x = a[i] ^ b[i];
    }
    o
}

impl Links {
    /// Loads `devices.bin` from `path`; `own` is the set the trust function reads.
    pub(crate) fn open(
        identity: Identity,
        path: PathBuf,
        mesh: Arc<MultiTransportManager>,
        wake: Arc<Notify>,
    ) -> Links {
        let devices = devices::load(&path, identity.public_key());
        let own: BTreeSet<PeerId> = devices.own(identity.public_key()).into_keys().collect();
        mesh.carry_unacknowledged(LINK_TYPE);
        Links {
            identity,
            path,
            mesh,
            st: Mutex::new(LinkState {
                devices,
                ..LinkState::default()
            }),
            own: Arc::new(RwLock::new(own)),
            changed: Notify::new(),
            wake,
        }
    }

    /// The set of own devices' peer ids, shared with the trust function.
    pub(crate) fn own_set(&self) -> Arc<RwLock<BTreeSet<PeerId>>> {
        self.own.clone()
    }

    /// Queues a received link message (from the mesh callback).
    pub(crate) fn receive(&self, from: PeerId, payload: &[u8]) {
        let mut st = lock(&self.st);
        if st.inbox.len() >= INBOX_MAX || payload.len() > MAX_LINK_MESSAGE {
            tracing::warn!(%from, "link message dropped (queue full or oversized)");
            return;
        }
        st.inbox.push_back((from, payload.to_vec()));
        drop(st);
        self.wake.notify_one();
    }

    /// Handles the queued messages and sends the answers.
    pub(crate) async fn process(&self) {
        let mut replies = Vec::new();
        loop {
            let next = lock(&self.st).inbox.pop_front();
            let Some((from, payload)) = next else { break };
            let Some(msg) = LinkMessage::decode(&payload) else {
                tracing::warn!(%from, "malformed link message ignored");
                continue;
            };
            if let Some(reply) = self.handle(from, msg) {
                replies.push((from, reply));
            }
        }
        for (to, reply) in replies {
            if let Err(e) = self.send(to, &reply).await {
                tracing::warn!(%to, error = %e, "link answer not sent");
            }
        }
    }

    async fn send(&self, to: PeerId, m: &LinkMessage) -> Result<()> {
        let now = now_ms();
        let msg = self
            .mesh
            .new_message(LINK_TYPE, m.encode(), Some(to), now, random()?)?;
        self.mesh.send(to, msg, Priority::High, now).await?;
        Ok(())
    }

    fn handle(&self, from: PeerId, msg: LinkMessage) -> Option<LinkMessage> {
        let code = msg.code();
        let mut st = lock(&self.st);
        let st = &mut *st;
        let out = match msg {
            LinkMessage::Request { nonce_b, mac, .. } => {
                Some(self.on_request(st, from, code, nonce_b, &mac))
            }
            LinkMessage::Confirm {
                decl_sig,
                proof,
                mac,
                ..
            } => self.on_confirm(st, from, code, decl_sig, &proof, &mac),
            LinkMessage::Challenge {
                nonce_a,
                issued_at_ms,
                label,
                wrapped_key,
                decl_sig,
                proof,
                mac,
                ..
            } => {
                let challenge = Challenge {
                    nonce_a,
                    issued_at_ms,
                    label,
                    wrapped_key,
                    decl_sig,
                    proof,
                    mac,
                };
                self.on_challenge(st, from, code, challenge)
            }
            LinkMessage::Done { mac, .. } => {
                self.on_done(st, from, code, &mac);
                None
            }
            LinkMessage::Refused { reason, .. } => {
                if let Some(a) = st.accepting.get_mut(&code)
                    && a.issuer == from
                    && !matches!(a.stage, Stage::Finished(_))
                {
                    tracing::info!(%from, ?reason, "link refused by the other device");
                    a.stage = Stage::Finished(Err(reason.into()));
                }
                None
            }
        };
        self.changed.notify_waiters();
        out
    }

    /// The issuer's side: a device presents a code.
    fn on_request(
        &self,
        st: &mut LinkState,
        from: PeerId,
        code: CodeId,
        nonce_b: Nonce,
        mac: &proto::Mac,
    ) -> LinkMessage {
        let me = self.identity.peer_id();
        let refuse = |reason| {
            tracing::info!(%from, ?reason, "link request refused");
            LinkMessage::Refused { code, reason }
        };
        let Some(o) = st.offered.get_mut(&code) else {
            return refuse(Reason::WrongCode);
        };
        if !o.keys.check(
            b"request",
            &[&code, &nonce_b, me.as_bytes(), from.as_bytes()],
            mac,
        ) {
            return refuse(Reason::WrongCode);
        }
        match &o.offer {
            Offer::Used(_) => return refuse(Reason::AlreadyUsed),
            Offer::Challenged { peer, .. } if *peer != from => return refuse(Reason::AlreadyUsed),
            _ => {}
        }
        if now_ms() >= o.expires_ms {
            return refuse(Reason::Expired);
        }
        if st.devices.links.len() >= MAX_LINKS {
            return refuse(Reason::Failed);
        }
        let Some(peer_key) = self.mesh.public_key(&from) else {
            return refuse(Reason::Failed);
        };
        let label = if st.devices.label.is_empty() {
            format!("user:{me}")
        } else {
            st.devices.label.clone()
        };
        let user_key = if st.devices.user_key == [0; 32] {
            match random::<32>() {
                Ok(k) => k,
                Err(_) => return refuse(Reason::Failed),
            }
        } else {
            st.devices.user_key
        };
        let (Ok(nonce_a), issued_at_ms) = (random::<16>(), now_ms()) else {
            return refuse(Reason::Failed);
        };
        let decl = DeviceLinkDeclaration::new(
            &[*self.identity.public_key(), peer_key],
            &label,
            issued_at_ms,
        )
        .and_then(|mut d| d.sign(&self.identity).map(|()| d));
        let Ok(decl) = decl else {
            return refuse(Reason::Failed);
        };
        let t = proto::transcript(&code, &nonce_a, &nonce_b, &me, &from);
        let (Some(decl_sig), Some(proof)) = (
            decl.signature_of(self.identity.public_key()),
            proto::prove(&self.identity, b'A', &t),
        ) else {
            return refuse(Reason::Failed);
        };
        let wrapped_key = xor(&user_key, &o.keys.pad(&nonce_a, &nonce_b));
        let mac = o.keys.mac(
            b"challenge",
            &[
                &t,
                &issued_at_ms.to_be_bytes(),
                label.as_bytes(),
                &wrapped_key,
            ],
        );
        o.offer = Offer::Challenged {
            peer: from,
            nonce_a,
            nonce_b,
            decl,
            label: label.clone(),
            user_key,
        };
        LinkMessage::Challenge {
            code,
            nonce_a,
            issued_at_ms,
            label,
            wrapped_key,
            decl_sig,
            proof,
            mac,
        }
    }

    /// The issuer's side: the device signed; record the link.
    fn on_confirm(
        &self,
        st: &mut LinkState,
        from: PeerId,
        code: CodeId,
        decl_sig: ecomesh_types::Signature,
        proof: &ecomesh_types::Signature,
        mac: &proto::Mac,
    ) -> Option<LinkMessage> {
        let me = self.identity.peer_id();
        let o = st.offered.get_mut(&code)?;
        let Offer::Challenged {
            peer,
            nonce_a,
            nonce_b,
            decl,
            label,
            user_key,
        } = &mut o.offer
        else {
            return None;
        };
        if *peer != from {
            return None;
        }
        let t = proto::transcript(&code, nonce_a, nonce_b, &me, &from);
        let peer_key = self.mesh.public_key(&from)?;
        let refused = LinkMessage::Refused {
            code,
            reason: Reason::Failed,
        };
        if !o.keys.check(b"confirm", &[&t], mac)
            || !proto::proof_ok(&peer_key, b'B', &t, proof)
            || decl.add_signature(&peer_key, decl_sig).is_err()
        {
            tracing::warn!(%from, "link confirmation did not verify");
            return Some(refused);
        }
        let done_mac = o.keys.mac(b"done", &[&t]);
        let device = OwnDevice {
            peer_id: from,
            linked_at_ms: decl.issued_at_ms(),
        };
        let (decl, label, user_key) = (decl.clone(), label.clone(), *user_key);
        o.offer = Offer::Used(device.clone());
        if let Err(e) = self.record(st, decl, label, user_key) {
            tracing::error!(error = %e, "recording the link failed");
            return Some(refused);
        }
        tracing::info!(peer = %from, "device linked (issued code)");
        Some(LinkMessage::Done {
            code,
            mac: done_mac,
        })
    }

    /// The accepting side: the issuer proved the code and signed.
    fn on_challenge(
        &self,
        st: &mut LinkState,
        from: PeerId,
        code: CodeId,
        c: Challenge,
    ) -> Option<LinkMessage> {
        let me = self.identity.peer_id();
        let a = st.accepting.get_mut(&code)?;
        if a.issuer != from || !matches!(a.stage, Stage::Requested) {
            return None;
        }
        let t = proto::transcript(&code, &c.nonce_a, &a.nonce_b, &from, &me);
        let fail = |a: &mut Accepting, why: &str| {
            tracing::warn!(%from, why, "link challenge refused");
            a.stage = Stage::Finished(Err(LinkError::Failed(why.to_owned())));
            None
        };
        if !a.keys.check(
            b"challenge",
            &[
                &t,
                &c.issued_at_ms.to_be_bytes(),
                c.label.as_bytes(),
                &c.wrapped_key,
            ],
            &c.mac,
        ) {
            return fail(a, "the other device does not hold the code");
        }
        let Some(peer_key) = self.mesh.public_key(&from) else {
            return fail(a, "the other device's key is unknown");
        };
        if !proto::proof_ok(&peer_key, b'A', &t, &c.proof) {
            return fail(a, "the other device's proof does not verify");
        }
        let decl = DeviceLinkDeclaration::new(
            &[*self.identity.public_key(), peer_key],
            &c.label,
            c.issued_at_ms,
        )
        .and_then(|mut d| {
            d.add_signature(&peer_key, c.decl_sig)?;
            d.sign(&self.identity)?;
            Ok(d)
        });
        let Ok(decl) = decl else {
            return fail(a, "the other device's declaration does not verify");
        };
        let (Some(decl_sig), Some(proof)) = (
            decl.signature_of(self.identity.public_key()),
            proto::prove(&self.identity, b'B', &t),
        ) else {
            return fail(a, "could not sign");
        };
        let user_key = xor(&c.wrapped_key, &a.keys.pad(&c.nonce_a, &a.nonce_b));
        let mac = a.keys.mac(b"confirm", &[&t]);
        a.stage = Stage::Confirmed {
            nonce_a: c.nonce_a,
            decl,
            label: c.label,
            user_key,
        };
        Some(LinkMessage::Confirm {
            code,
            decl_sig,
            proof,
            mac,
        })
    }

    /// The accepting side: the issuer recorded the link; record it here.
    fn on_done(&self, st: &mut LinkState, from: PeerId, code: CodeId, mac: &proto::Mac) {
        let me = self.identity.peer_id();
        let Some(a) = st.accepting.get_mut(&code) else {
            return;
        };
        let Stage::Confirmed {
            nonce_a,
            decl,
            label,
            user_key,
        } = &a.stage
        else {
            return;
        };
        let t = proto::transcript(&code, nonce_a, &a.nonce_b, &from, &me);
        if a.issuer != from || !a.keys.check(b"done", &[&t], mac) {
            return;
        }
        let device = OwnDevice {
            peer_id: from,
            linked_at_ms: decl.issued_at_ms(),
        };
        let (decl, label, user_key) = (decl.clone(), label.clone(), *user_key);
        let result = self
            .record(st, decl, label, user_key)
            .map(|()| device)
            .map_err(|e| LinkError::Failed(format!("recording the link: {e}")));
        tracing::info!(peer = %from, ok = result.is_ok(), "device linked (accepted code)");
        if let Some(a) = st.accepting.get_mut(&code) {
            a.stage = Stage::Finished(result);
        }
    }

    /// Adds a complete declaration, adopts the user, saves, and updates the
    /// own-device set. On a failed save nothing changes.
    fn record(
        &self,
        st: &mut LinkState,
        decl: DeviceLinkDeclaration,
        label: String,
        user_key: [u8; 32],
    ) -> Result<()> {
        decl.verify()?;
        let mut next = st.devices.clone();
        next.links.retain(|d| d.devices() != decl.devices());
        if next.links.len() >= MAX_LINKS {
            return Err(LinkError::TooManyLinks.into());
        }
        next.links.push(decl);
        next.label = label;
        next.user_key = user_key;
        crate::fsutil::write_atomic(&self.path, &next.to_bytes())
            .map_err(|e| SyncError::io("writing the device links", &self.path, e))?;
        let own = next.own(self.identity.public_key());
        st.devices = next;
        *self.own.write().unwrap_or_else(|p| p.into_inner()) = own.into_keys().collect();
        Ok(())
    }
}

struct Challenge {
    nonce_a: Nonce,
    issued_at_ms: u64,
    label: String,
    wrapped_key: [u8; 32],
    decl_sig: ecomesh_types::Signature,
    proof: ecomesh_types::Signature,
    mac: proto::Mac,
}

impl Node {
    /// A new one-time link code for another device of the same person,
    /// accepted for `ttl` (at least 1 ms; [`DEFAULT_LINK_TTL`] is the usual
    /// choice). `address`, when given, is put in the code as where this
    /// node can be dialled (the node does not know its transports'
    /// addresses; the application does). Show the code's text to the user;
    /// [`link_wait`](Self::link_wait) waits for it to be used.
    pub fn link_new(&self, address: Option<SocketAddr>, ttl: Duration) -> Result<LinkCode> {
        self.running()?;
        let links = &self.inner.links;
        let secret = random::<SECRET_LEN>()?;
        let keys = CodeKeys::new(&secret);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let now = now_ms();
        let mut st = lock(&links.st);
        if st.offered.len() >= MAX_CODES {
            let spent = st
                .offered
                .iter()
                .filter(|(_, o)| matches!(o.offer, Offer::Used(_)) || now >= o.expires_ms)
                .min_by_key(|(_, o)| o.expires_ms)
                .map(|(id, _)| *id);
            match spent {
                Some(id) => {
                    st.offered.remove(&id);
                }
                None => return Err(LinkError::TooManyCodes.into()),
            }
        }
        st.offered.insert(
            keys.id,
            Offered {
                keys,
                expires_ms: now.saturating_add(ttl_ms),
                offer: Offer::Open,
            },
        );
        Ok(LinkCode::new(secret, &self.peer_id(), address))
    }

    /// Waits until `code` (made by [`link_new`](Self::link_new) on this node)
    /// is used, and returns the device it linked; [`LinkError::Expired`] when
    /// its lifetime ends first, [`LinkError::Timeout`] after `timeout`.
    pub async fn link_wait(&self, code: &LinkCode, timeout: Duration) -> Result<OwnDevice> {
        let links = &self.inner.links;
        let id = CodeKeys::new(code.secret()).id;
        let deadline = Instant::now() + timeout;
        loop {
            let notified = links.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let expires_in = {
                let st = lock(&links.st);
                let Some(o) = st.offered.get(&id) else {
                    return Err(LinkError::WrongCode.into());
                };
                match &o.offer {
                    Offer::Used(d) => return Ok(d.clone()),
                    Offer::Open if now_ms() >= o.expires_ms => {
                        return Err(LinkError::Expired.into());
                    }
                    _ => Duration::from_millis(o.expires_ms.saturating_sub(now_ms())),
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(LinkError::Timeout.into());
            }
            // An exchange under way may finish after the code's lifetime.
            let wait = (deadline - now).min(expires_in.max(Duration::from_millis(50)));
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    /// Links this node with the device that made `code`: waits (up to
    /// `timeout` in all) until that device is reachable, runs the exchange
    /// and records it as an own device. The application dials
    /// [`LinkCode::address`] first when the transports do not find the
    /// device by themselves.
    pub async fn link_accept(&self, code: &LinkCode, timeout: Duration) -> Result<OwnDevice> {
        self.running()?;
        let links = &self.inner.links;
        let keys = CodeKeys::new(code.secret());
        let id = keys.id;
        if lock(&links.st).offered.contains_key(&id) {
            return Err(LinkError::OwnCode.into());
        }
        let deadline = Instant::now() + timeout;
        let issuer = loop {
            let found = self
                .peers()
                .into_iter()
                .map(|p| p.peer_id)
                .find(|p| code.may_be_issued_by(p) && *p != self.peer_id());
            if let Some(p) = found {
                break p;
            }
            if Instant::now() >= deadline {
                return Err(LinkError::Unreachable.into());
            }
            tokio::time::sleep(PEER_POLL).await;
        };
        let nonce_b = random::<16>()?;
        let me = self.peer_id();
        let mac = keys.mac(
            b"request",
            &[&id, &nonce_b, issuer.as_bytes(), me.as_bytes()],
        );
        lock(&links.st).accepting.insert(
            id,
            Accepting {
                keys,
                issuer,
                nonce_b,
                stage: Stage::Requested,
            },
        );
        let request = LinkMessage::Request {
            code: id,
            nonce_b,
            mac,
        };
        if let Err(e) = links.send(issuer, &request).await {
            lock(&links.st).accepting.remove(&id);
            return Err(e);
        }
        loop {
            let notified = links.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lock(&links.st);
                if let Some(a) = st.accepting.get(&id)
                    && let Stage::Finished(r) = &a.stage
                {
                    let r = r.clone();
                    st.accepting.remove(&id);
                    return r.map_err(SyncError::from);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                lock(&links.st).accepting.remove(&id);
                return Err(LinkError::Timeout.into());
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    /// This node's own devices (linked by code, read back at every start).
    pub fn own_devices(&self) -> Vec<OwnDevice> {
        let st = lock(&self.inner.links.st);
        st.devices
            .own(self.inner.identity.public_key())
            .into_iter()
            .map(|(peer_id, (_, linked_at_ms))| OwnDevice {
                peer_id,
                linked_at_ms,
            })
            .collect()
    }

    /// The user label every linked device shares (`user:<first device's
    /// peer id>`), once this node has been linked.
    pub fn user_label(&self) -> Option<String> {
        let st = lock(&self.inner.links.st);
        (!st.devices.label.is_empty()).then(|| st.devices.label.clone())
    }

    /// How this node relates to `peer`: [`Trust::OwnDevice`] for a linked
    /// device, else the level set at run time
    /// ([`set_relationship`](Self::set_relationship)), else the configured
    /// one ([`NodeConfig::relationships`](crate::NodeConfig::relationships)),
    /// else what [`P2PConfig::trust`](ecomesh_p2p_storage::P2PConfig::trust)
    /// says (by default [`Trust::Stranger`]). Replication and the blob
    /// service decide reach with this same function.
    pub fn relationship(&self, peer: &PeerId) -> Trust {
        (self.inner.config.p2p.trust)(peer)
    }

    /// The presence key every own device shares once linked (BLAKE3 derived
    /// from the user key), for transports whose presence tags only own
    /// devices should resolve; `None` before the first link.
    pub fn presence_key(&self) -> Option<[u8; 32]> {
        let st = lock(&self.inner.links.st);
        (st.devices.user_key != [0; 32])
            .then(|| blake3::derive_key("ecomesh 2026 user presence key v1", &st.devices.user_key))
    }
}

/// Wraps `base` so linked devices are [`Trust::OwnDevice`].
pub(crate) fn trust_with_own(
    own: Arc<RwLock<BTreeSet<PeerId>>>,
    base: Arc<dyn Fn(&PeerId) -> Trust + Send + Sync>,
) -> Arc<dyn Fn(&PeerId) -> Trust + Send + Sync> {
    Arc::new(move |p: &PeerId| {
        if own.read().unwrap_or_else(|e| e.into_inner()).contains(p) {
            Trust::OwnDevice
        } else {
            base(p)
        }
    })
}

#[doc(hidden)]
/// For the fuzz target: decodes `bytes` as a link message, a code (bytes
/// and text) and a devices file; panics only if a decoded message does not
/// re-encode to the input.
pub fn fuzz_decoders(bytes: &[u8]) {
    if let Some(m) = LinkMessage::decode(bytes) {
        assert_eq!(m.encode(), bytes, "link message re-encodes");
    }
    if let Ok(c) = LinkCode::from_bytes(bytes) {
        assert_eq!(c.to_bytes(), bytes, "link code re-encodes");
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = s.parse::<LinkCode>();
    }
    let me = Identity::from_secret_bytes(&[1; 32]);
    let _ = Devices::from_bytes(bytes, me.public_key());
}
