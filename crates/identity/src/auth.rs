//! The challenge-response peer authentication of seed 8.3, as sans-io state machines.
//!
//! ```text
//! Initiator                                   Responder
//!   Hello(init_pub)                       -->
//!                                         <--   Challenge(resp_pub, nonce_r)
//!   Response(nonce_i, sig_i)              -->
//!                                         <--   Confirm(sig_r)
//! ```
//! Both signatures cover the same transcript with a role label:
//! ```text
//! u32 len || "ecomesh 2026 peer-auth v1" || u32 len || role ("initiator" | "responder")
//! || init_pub (32) || resp_pub (32) || nonce_r (32) || nonce_i (32) || u32 len || binding
//! ```
//! Binding both keys and both fresh 32-byte nonces makes every signature single-use and
//! specific to this pair (no replay from an old session, no relay to a third party), and
//! the role label stops reflection (a responder's signature is never a valid initiator's).
//! `binding` is an optional channel binding (e.g. a TLS exporter value or a transport
//! session id) both sides pass in; the signatures then hold only on that channel.
//!
//! This protocol authenticates but does not encrypt; over an untrusted link use
//! [`crate::noise`], which proves the same identities and also protects the traffic.
//!
//! Messages are `kind || version 1 || fields`: Hello `0xA1 || key (32)` (34 bytes),
//! Challenge `0xA2 || key (32) || nonce (32)` (66), Response `0xA3 || nonce (32) || sig (64)`
//! (98), Confirm `0xA4 || sig (64)` (66).

use std::sync::Arc;

use ecomesh_types::Signature;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::{AccessPolicy, Identity, PublicKey, domain, rng};

const VERSION: u8 = 1;
const HELLO: u8 = 0xA1;
const CHALLENGE: u8 = 0xA2;
const RESPONSE: u8 = 0xA3;
const CONFIRM: u8 = 0xA4;
/// Longest channel binding accepted.
pub const MAX_BINDING_LEN: usize = 1024;

/// The outcome of a successful authentication: the peer's proven key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The peer's Ed25519 key (its peer id is `peer.peer_id()`).
    pub peer: PublicKey,
}

struct Transcript<'a> {
    init_pub: &'a PublicKey,
    resp_pub: &'a PublicKey,
    nonce_r: &'a [u8; 32],
    nonce_i: &'a [u8; 32],
    binding: &'a [u8],
}

impl Transcript<'_> {
    fn bytes(&self, role: &str) -> Vec<u8> {
        let mut w = Writer::with_domain(domain::AUTH);
        w.var(role.as_bytes())
            .fixed(self.init_pub.as_bytes())
            .fixed(self.resp_pub.as_bytes())
            .fixed(self.nonce_r)
            .fixed(self.nonce_i)
            .var(self.binding);
        w.finish()
    }
}

fn decode<'a>(bytes: &'a [u8], kind: u8, what: &'static str, len: usize) -> Result<Reader<'a>> {
    if bytes.len() != len {
        return Err(if bytes.len() < len {
            Error::Truncated {
                what,
                needed: len,
                available: bytes.len(),
            }
        } else {
            Error::TooLarge {
                what,
                len: bytes.len(),
                max: len,
            }
        });
    }
    Reader::object(bytes, what, kind, VERSION)
}

fn admit(policy: &AccessPolicy, me: &Identity, peer: &PublicKey) -> Result<()> {
    if peer == me.public_key() {
        return Err(Error::SelfConnection);
    }
    let id = peer.peer_id();
    if !policy.allows(&id) {
        tracing::info!(peer = %id, "peer refused by access policy");
        return Err(Error::PeerRefused(id));
    }
    Ok(())
}

fn check_binding(binding: &[u8]) -> Result<Vec<u8>> {
    if binding.len() > MAX_BINDING_LEN {
        return Err(Error::TooLarge {
            what: "channel binding",
            len: binding.len(),
            max: MAX_BINDING_LEN,
        });
    }
    Ok(binding.to_vec())
}

// One value per authentication attempt: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum InitState {
    SentHello,
    SentResponse {
        resp_pub: PublicKey,
        nonce_r: [u8; 32],
        nonce_i: [u8; 32],
    },
    Done,
    Failed,
}

/// The initiator's side. Create with [`AuthInitiator::start`], send the Hello, then feed
/// the peer's Challenge to [`on_challenge`](Self::on_challenge) and its Confirm to
/// [`on_confirm`](Self::on_confirm). Any error closes the state machine.
pub struct AuthInitiator {
    identity: Identity,
    policy: Arc<AccessPolicy>,
    binding: Vec<u8>,
    state: InitState,
}

impl AuthInitiator {
    /// Starts an authentication; returns the machine and the Hello message to send.
    pub fn start(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        binding: &[u8],
    ) -> Result<(Self, Vec<u8>)> {
        let binding = check_binding(binding)?;
        let mut w = Writer::object(HELLO, VERSION);
        w.fixed(identity.public_key().as_bytes());
        let hello = w.finish();
        Ok((
            AuthInitiator {
                identity,
                policy,
                binding,
                state: InitState::SentHello,
            },
            hello,
        ))
    }

    /// Handles the Challenge: checks the responder against the policy, returns the Response.
    pub fn on_challenge(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        if !matches!(self.state, InitState::SentHello) {
            return Err(Error::UnexpectedMessage("challenge"));
        }
        self.state = InitState::Failed;
        let mut r = decode(bytes, CHALLENGE, "auth challenge", 66)?;
        let resp_pub = PublicKey::from_bytes(&r.array()?)?;
        let nonce_r: [u8; 32] = r.array()?;
        admit(&self.policy, &self.identity, &resp_pub)?;
        let nonce_i = rng::array::<32>()?;
        let t = Transcript {
            init_pub: self.identity.public_key(),
            resp_pub: &resp_pub,
            nonce_r: &nonce_r,
            nonce_i: &nonce_i,
            binding: &self.binding,
        };
        let sig = self.identity.sign(&t.bytes("initiator"));
        let mut w = Writer::object(RESPONSE, VERSION);
        w.fixed(&nonce_i).fixed(&sig.0);
        self.state = InitState::SentResponse {
            resp_pub,
            nonce_r,
            nonce_i,
        };
        Ok(w.finish())
    }

    /// Handles the Confirm: verifies the responder's signature; on success both sides are
    /// authenticated.
    pub fn on_confirm(&mut self, bytes: &[u8]) -> Result<Authenticated> {
        let InitState::SentResponse {
            resp_pub,
            nonce_r,
            nonce_i,
        } = std::mem::replace(&mut self.state, InitState::Failed)
        else {
            return Err(Error::UnexpectedMessage("confirm"));
        };
        let mut r = decode(bytes, CONFIRM, "auth confirm", 66)?;
        let sig = Signature(r.array()?);
        let t = Transcript {
            init_pub: self.identity.public_key(),
            resp_pub: &resp_pub,
            nonce_r: &nonce_r,
            nonce_i: &nonce_i,
            binding: &self.binding,
        };
        resp_pub.verify(&t.bytes("responder"), &sig)?;
        self.state = InitState::Done;
        Ok(Authenticated { peer: resp_pub })
    }
}

impl std::fmt::Debug for AuthInitiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInitiator")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

// One value per authentication attempt: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum RespState {
    AwaitHello,
    SentChallenge {
        init_pub: PublicKey,
        nonce_r: [u8; 32],
    },
    Done,
    Failed,
}

/// The responder's side. Feed the Hello to [`on_hello`](Self::on_hello) (which refuses a
/// peer the policy does not accept before anything is signed), send the Challenge, then
/// feed the Response to [`on_response`](Self::on_response) and send the Confirm.
pub struct AuthResponder {
    identity: Identity,
    policy: Arc<AccessPolicy>,
    binding: Vec<u8>,
    state: RespState,
}

impl AuthResponder {
    /// A responder waiting for a Hello.
    pub fn new(identity: Identity, policy: Arc<AccessPolicy>, binding: &[u8]) -> Result<Self> {
        Ok(AuthResponder {
            identity,
            policy,
            binding: check_binding(binding)?,
            state: RespState::AwaitHello,
        })
    }

    /// Handles the Hello: checks the claimed key against the policy, returns the Challenge.
    pub fn on_hello(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        if !matches!(self.state, RespState::AwaitHello) {
            return Err(Error::UnexpectedMessage("hello"));
        }
        self.state = RespState::Failed;
        let mut r = decode(bytes, HELLO, "auth hello", 34)?;
        let init_pub = PublicKey::from_bytes(&r.array()?)?;
        admit(&self.policy, &self.identity, &init_pub)?;
        let nonce_r = rng::array::<32>()?;
        let mut w = Writer::object(CHALLENGE, VERSION);
        w.fixed(self.identity.public_key().as_bytes())
            .fixed(&nonce_r);
        self.state = RespState::SentChallenge { init_pub, nonce_r };
        Ok(w.finish())
    }

    /// Handles the Response: verifies the initiator's signature over this session's
    /// nonce; returns the Confirm to send and the authenticated initiator.
    pub fn on_response(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, Authenticated)> {
        let RespState::SentChallenge { init_pub, nonce_r } =
            std::mem::replace(&mut self.state, RespState::Failed)
        else {
            return Err(Error::UnexpectedMessage("response"));
        };
        let mut r = decode(bytes, RESPONSE, "auth response", 98)?;
        let nonce_i: [u8; 32] = r.array()?;
        let sig = Signature(r.array()?);
        let t = Transcript {
            init_pub: &init_pub,
            resp_pub: self.identity.public_key(),
            nonce_r: &nonce_r,
            nonce_i: &nonce_i,
            binding: &self.binding,
        };
        init_pub.verify(&t.bytes("initiator"), &sig)?;
        let confirm = self.identity.sign(&t.bytes("responder"));
        let mut w = Writer::object(CONFIRM, VERSION);
        w.fixed(&confirm.0);
        self.state = RespState::Done;
        Ok((w.finish(), Authenticated { peer: init_pub }))
    }
}

impl std::fmt::Debug for AuthResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthResponder")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Identity, Identity) {
        (
            Identity::from_secret_bytes(&[1; 32]),
            Identity::from_secret_bytes(&[2; 32]),
        )
    }

    #[test]
    fn mutual_authentication() {
        let (a, b) = ids();
        let open = Arc::new(AccessPolicy::Open);
        let (mut i, hello) = AuthInitiator::start(a.clone(), open.clone(), b"chan").unwrap();
        let mut r = AuthResponder::new(b.clone(), open, b"chan").unwrap();
        let challenge = r.on_hello(&hello).unwrap();
        let response = i.on_challenge(&challenge).unwrap();
        let (confirm, who) = r.on_response(&response).unwrap();
        assert_eq!(who.peer, *a.public_key());
        assert_eq!(i.on_confirm(&confirm).unwrap().peer, *b.public_key());
        // Finished machines accept nothing more.
        assert!(matches!(
            i.on_confirm(&confirm),
            Err(Error::UnexpectedMessage(_))
        ));
        assert!(matches!(
            r.on_hello(&hello),
            Err(Error::UnexpectedMessage(_))
        ));
    }

    #[test]
    fn replayed_response_and_confirm_fail() {
        let (a, b) = ids();
        let open = Arc::new(AccessPolicy::Open);
        let (mut i1, hello) = AuthInitiator::start(a.clone(), open.clone(), b"").unwrap();
        let mut r1 = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
        let response1 = i1.on_challenge(&r1.on_hello(&hello).unwrap()).unwrap();
        let (confirm1, _) = r1.on_response(&response1).unwrap();

        // An attacker replays the old Response to a new responder session: fresh nonce_r.
        let mut r2 = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
        r2.on_hello(&hello).unwrap();
        assert!(matches!(
            r2.on_response(&response1),
            Err(Error::BadSignature)
        ));

        // An old Confirm does not satisfy a new initiator session: fresh nonce_i.
        let (mut i2, hello2) = AuthInitiator::start(a, open.clone(), b"").unwrap();
        let mut r3 = AuthResponder::new(b, open, b"").unwrap();
        i2.on_challenge(&r3.on_hello(&hello2).unwrap()).unwrap();
        assert!(matches!(i2.on_confirm(&confirm1), Err(Error::BadSignature)));
    }

    #[test]
    fn channel_binding_mismatch_fails() {
        let (a, b) = ids();
        let open = Arc::new(AccessPolicy::Open);
        let (mut i, hello) = AuthInitiator::start(a, open.clone(), b"one").unwrap();
        let mut r = AuthResponder::new(b, open, b"two").unwrap();
        let response = i.on_challenge(&r.on_hello(&hello).unwrap()).unwrap();
        assert!(matches!(r.on_response(&response), Err(Error::BadSignature)));
    }

    #[test]
    fn policy_refuses_early_on_both_sides() {
        let (a, b) = ids();
        let (mut _i, hello) =
            AuthInitiator::start(a.clone(), Arc::new(AccessPolicy::Open), b"").unwrap();
        let mut r =
            AuthResponder::new(b.clone(), Arc::new(AccessPolicy::block([a.peer_id()])), b"")
                .unwrap();
        assert!(matches!(r.on_hello(&hello), Err(Error::PeerRefused(p)) if p == a.peer_id()));

        let (mut i, hello) = AuthInitiator::start(
            a.clone(),
            Arc::new(AccessPolicy::allow_only([a.peer_id()])),
            b"",
        )
        .unwrap();
        let mut r = AuthResponder::new(b.clone(), Arc::new(AccessPolicy::Open), b"").unwrap();
        let challenge = r.on_hello(&hello).unwrap();
        assert!(
            matches!(i.on_challenge(&challenge), Err(Error::PeerRefused(p)) if p == b.peer_id())
        );

        // Talking to oneself is refused.
        let (_, hello) =
            AuthInitiator::start(b.clone(), Arc::new(AccessPolicy::Open), b"").unwrap();
        let mut r = AuthResponder::new(b, Arc::new(AccessPolicy::Open), b"").unwrap();
        assert!(matches!(r.on_hello(&hello), Err(Error::SelfConnection)));
    }
}
