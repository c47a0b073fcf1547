//! The primary's door for devices, sans-io: a device proves its key by the
//! challenge-response of [`ecomesh_identity::auth`] (seed 8.3, seed 004's
//! genesis-node authentication) and receives a token that expires; nothing is
//! served or merged for a request without a valid token, and a merge takes at
//! most [`MAX_BATCH`] versions. [`DeviceAuth`] is the device's side.
//!
//! The transport (the node's HTTP API, or any other request-response link)
//! only carries the bytes these functions take and return: Hello in,
//! (session, Challenge) out; (session, Response) in, [`Grant`] out; then the
//! token with every request.

use std::collections::BTreeMap;
use std::sync::Arc;

use ecomesh_identity::auth::{AuthInitiator, AuthResponder};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_p2p_storage::Store;
use ecomesh_p2p_storage::kv::Backend;
use ecomesh_types::PeerId;

use crate::HybridError;
use crate::primary::{MAX_BATCH, VersionApplied, apply_version_to_store};

/// Most authentications waiting for their Response; the oldest is dropped
/// beyond it.
pub const MAX_PENDING: usize = 256;
/// How long a Challenge may wait for its Response.
pub const CHALLENGE_TTL_MS: u64 = 30_000;
/// A token's lifetime by default (one hour).
pub const TOKEN_TTL_MS: u64 = 3_600_000;
/// Longest token text accepted.
pub const MAX_TOKEN_LEN: usize = 256;

/// What a device receives after proving its key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grant {
    /// The primary's Confirm (its own signature over the session), which the
    /// device checks before trusting the token.
    pub confirm: Vec<u8>,
    /// The bearer token for the following requests.
    pub token: String,
    /// When it expires (ms).
    pub expires_ms: u64,
    /// The device it was issued to.
    pub device: PeerId,
}

impl Grant {
    /// A grant as a device receives it from a transport (the fields the
    /// primary's [`PrimaryGate::verify`] returned); [`DeviceAuth::on_grant`]
    /// checks its Confirm before trusting the token.
    pub fn new(confirm: Vec<u8>, token: String, expires_ms: u64, device: PeerId) -> Self {
        Grant {
            confirm,
            token,
            expires_ms,
            device,
        }
    }
}

/// The primary's side: pending challenges and token checks.
pub struct PrimaryGate {
    identity: Identity,
    policy: Arc<AccessPolicy>,
    pending: BTreeMap<u64, (AuthResponder, u64)>,
    next_session: u64,
    token_key: [u8; 32],
    token_ttl_ms: u64,
}

impl std::fmt::Debug for PrimaryGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryGate")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn unauthorized(reason: &'static str) -> HybridError {
    HybridError::Unauthorized(reason)
}

impl PrimaryGate {
    /// A gate for the primary `identity`, admitting the devices `policy`
    /// allows; tokens are keyed by a fresh random key, so a restart revokes them.
    pub fn new(identity: Identity, policy: Arc<AccessPolicy>) -> Result<Self, HybridError> {
        let mut token_key = [0u8; 32];
        getrandom::fill(&mut token_key).map_err(|_| unauthorized("no randomness"))?;
        Ok(PrimaryGate {
            identity,
            policy,
            pending: BTreeMap::new(),
            next_session: 1,
            token_key,
            token_ttl_ms: TOKEN_TTL_MS,
        })
    }

    /// Sets the token lifetime.
    #[must_use]
    pub fn with_token_ttl_ms(mut self, ms: u64) -> Self {
        self.token_ttl_ms = ms;
        self
    }

    /// Handles a device's Hello: refuses a device the policy does not admit,
    /// else returns the session number and the Challenge to send back.
    pub fn challenge(&mut self, hello: &[u8], now_ms: u64) -> Result<(u64, Vec<u8>), HybridError> {
        self.pending
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= CHALLENGE_TTL_MS);
        let mut responder = AuthResponder::new(self.identity.clone(), self.policy.clone(), &[])?;
        let challenge = responder.on_hello(hello)?;
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_first();
        }
        let session = self.next_session;
        self.next_session += 1;
        self.pending.insert(session, (responder, now_ms));
        Ok((session, challenge))
    }

    /// Handles the device's Response for `session`: on a valid signature,
    /// the Confirm and a token for the device.
    pub fn verify(
        &mut self,
        session: u64,
        response: &[u8],
        now_ms: u64,
    ) -> Result<Grant, HybridError> {
        let (mut responder, at) = self
            .pending
            .remove(&session)
            .ok_or_else(|| unauthorized("unknown or expired session"))?;
        if now_ms.saturating_sub(at) > CHALLENGE_TTL_MS {
            return Err(unauthorized("unknown or expired session"));
        }
        let (confirm, who) = responder.on_response(response)?;
        let device = who.peer.peer_id();
        let expires_ms = now_ms.saturating_add(self.token_ttl_ms);
        Ok(Grant {
            confirm,
            token: self.token(&device, expires_ms),
            expires_ms,
            device,
        })
    }

    fn mac(&self, device: &PeerId, expires_ms: u64) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.token_key);
        h.update(device.as_bytes())
            .update(&expires_ms.to_be_bytes());
        h.finalize()
    }

    fn token(&self, device: &PeerId, expires_ms: u64) -> String {
        format!(
            "{}.{expires_ms}.{}",
            device.to_base58(),
            self.mac(device, expires_ms).to_hex()
        )
    }

    /// Checks a presented token: the device it was issued to, when it is
    /// genuine, unexpired and the policy still admits the device.
    pub fn check(&self, token: &str, now_ms: u64) -> Result<PeerId, HybridError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(unauthorized("malformed token"));
        }
        let mut parts = token.split('.');
        let (Some(peer), Some(expires), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unauthorized("malformed token"));
        };
        let device: PeerId = peer.parse().map_err(|_| unauthorized("malformed token"))?;
        let expires_ms: u64 = expires
            .parse()
            .map_err(|_| unauthorized("malformed token"))?;
        let expected = self.mac(&device, expires_ms);
        let given = blake3::Hash::from_hex(mac).map_err(|_| unauthorized("malformed token"))?;
        // blake3::Hash compares in constant time.
        if given != expected {
            return Err(unauthorized("forged token"));
        }
        if now_ms >= expires_ms {
            return Err(unauthorized("expired token"));
        }
        if !self.policy.allows(&device) {
            return Err(unauthorized("device no longer admitted"));
        }
        Ok(device)
    }

    /// Admits a batch of `len` versions: the token is genuine and unexpired
    /// and `len` is at most [`MAX_BATCH`]. For a primary that merges through
    /// something other than a bare [`Store`] (the node's sync engine).
    pub fn admit(&self, token: &str, len: usize, now_ms: u64) -> Result<PeerId, HybridError> {
        let device = self.check(token, now_ms)?;
        if len > MAX_BATCH {
            return Err(HybridError::BatchTooLarge {
                len,
                max: MAX_BATCH,
            });
        }
        tracing::debug!(%device, versions = len, "admitting a device's batch");
        Ok(device)
    }

    /// Merges a device's batch into `store` after checking its token and the
    /// batch bound; one outcome per version, in order.
    pub fn apply<B: Backend>(
        &self,
        store: &Store<B>,
        token: &str,
        versions: &[Vec<u8>],
        now_ms: u64,
    ) -> Result<Vec<VersionApplied>, HybridError> {
        self.admit(token, versions.len(), now_ms)?;
        Ok(versions
            .iter()
            .map(|v| apply_version_to_store(store, v))
            .collect())
    }
}

/// The device's side of the authentication, and the token it holds.
pub struct DeviceAuth {
    initiator: Option<AuthInitiator>,
    token: Option<(String, u64)>,
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuth")
            .field("expires_ms", &self.token.as_ref().map(|t| t.1))
            .finish_non_exhaustive()
    }
}

impl DeviceAuth {
    /// Starts authenticating `identity` to a primary `policy` admits;
    /// returns the Hello to send.
    pub fn start(
        identity: Identity,
        policy: Arc<AccessPolicy>,
    ) -> Result<(Self, Vec<u8>), HybridError> {
        let (initiator, hello) = AuthInitiator::start(identity, policy, &[])?;
        Ok((
            DeviceAuth {
                initiator: Some(initiator),
                token: None,
            },
            hello,
        ))
    }

    /// Handles the primary's Challenge; returns the Response to send.
    pub fn on_challenge(&mut self, challenge: &[u8]) -> Result<Vec<u8>, HybridError> {
        let init = self
            .initiator
            .as_mut()
            .ok_or_else(|| unauthorized("authentication already finished"))?;
        Ok(init.on_challenge(challenge)?)
    }

    /// Handles the [`Grant`]: checks the primary's Confirm, then keeps the token.
    pub fn on_grant(&mut self, grant: &Grant) -> Result<(), HybridError> {
        let mut init = self
            .initiator
            .take()
            .ok_or_else(|| unauthorized("authentication already finished"))?;
        init.on_confirm(&grant.confirm)?;
        self.token = Some((grant.token.clone(), grant.expires_ms));
        Ok(())
    }

    /// The token, while it has more than `margin_ms` to live; `None` means
    /// authenticate again.
    pub fn token(&self, now_ms: u64, margin_ms: u64) -> Option<&str> {
        self.token
            .as_ref()
            .filter(|(_, exp)| now_ms.saturating_add(margin_ms) < *exp)
            .map(|(t, _)| t.as_str())
    }
}
