//! Capability tokens (seed 002 "capability-based access"): an issuer grants an audience
//! some actions on a resource until an expiry, and signs it. Delegation chains are out
//! of scope: a token is valid only from its issuer to its audience.
//!
//! ```text
//! token  = kind 0xC1 || version 1 || issuer Ed25519 key (32) || audience PeerId (32)
//!          || u32 len || resource (UTF-8, at most 1024 bytes) || actions (u8 bit set)
//!          || not_before_ms (u64) || expires_at_ms (u64) || token id (16 random bytes)
//!          || signature (64)
//! signed = u32 len || "ecomesh 2026 capability v1" || token without the signature
//! ```
//! Validity is `not_before_ms <= now_ms < expires_at_ms`, with `now` passed in.

use std::fmt;

use ecomesh_types::{PeerId, Signature};

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::{Identity, PublicKey, domain, rng};

const KIND: u8 = 0xC1;
const VERSION: u8 = 1;
/// Longest resource name in bytes.
pub const MAX_RESOURCE_LEN: usize = 1024;
/// Largest encoded token.
pub const MAX_TOKEN_LEN: usize = 2 + 32 + 32 + 4 + MAX_RESOURCE_LEN + 1 + 8 + 8 + 16 + 64;

/// An action a capability can grant (the seed's `read | write | delete`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Read the resource.
    Read,
    /// Create or modify the resource.
    Write,
    /// Delete the resource.
    Delete,
}

impl Action {
    const fn bit(self) -> u8 {
        match self {
            Action::Read => 1,
            Action::Write => 2,
            Action::Delete => 4,
        }
    }

    /// Lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
        }
    }
}

/// A non-empty set of [`Action`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    const ALL_BITS: u8 = 7;

    /// The set of the given actions; empty is [`Error::InvalidArgument`].
    pub fn new(actions: impl IntoIterator<Item = Action>) -> Result<Self> {
        let bits = actions.into_iter().fold(0, |acc, a| acc | a.bit());
        if bits == 0 {
            return Err(Error::InvalidArgument(
                "a capability grants at least one action",
            ));
        }
        Ok(Actions(bits))
    }

    /// Whether `action` is in the set.
    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                [Action::Read, Action::Write, Action::Delete]
                    .into_iter()
                    .filter(|a| self.contains(*a))
                    .map(Action::as_str),
            )
            .finish()
    }
}

/// A signed capability token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    issuer: PublicKey,
    audience: PeerId,
    resource: String,
    actions: Actions,
    not_before_ms: u64,
    expires_at_ms: u64,
    token_id: [u8; 16],
    signature: Signature,
}

impl Capability {
    /// Issues a token from `issuer` to `audience` for `actions` on `resource`, valid from
    /// `not_before_ms` until (excluding) `expires_at_ms`.
    pub fn grant(
        issuer: &Identity,
        audience: PeerId,
        resource: &str,
        actions: Actions,
        not_before_ms: u64,
        expires_at_ms: u64,
    ) -> Result<Self> {
        if resource.len() > MAX_RESOURCE_LEN {
            return Err(Error::TooLarge {
                what: "capability resource",
                len: resource.len(),
                max: MAX_RESOURCE_LEN,
            });
        }
        if expires_at_ms <= not_before_ms {
            return Err(Error::InvalidArgument(
                "capability expires before it starts",
            ));
        }
        let mut cap = Capability {
            issuer: *issuer.public_key(),
            audience,
            resource: resource.to_owned(),
            actions,
            not_before_ms,
            expires_at_ms,
            token_id: rng::array()?,
            signature: Signature::UNSIGNED,
        };
        cap.signature = issuer.sign(&cap.signed_bytes());
        Ok(cap)
    }

    fn body(&self) -> Writer {
        let mut w = Writer::object(KIND, VERSION);
        w.fixed(self.issuer.as_bytes())
            .fixed(self.audience.as_bytes())
            .var(self.resource.as_bytes())
            .u8(self.actions.0)
            .u64(self.not_before_ms)
            .u64(self.expires_at_ms)
            .fixed(&self.token_id);
        w
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_domain(domain::CAPABILITY);
        w.fixed(&self.body().finish());
        w.finish()
    }

    /// Checks only the issuer's signature.
    pub fn verify_signature(&self) -> Result<()> {
        self.issuer.verify(&self.signed_bytes(), &self.signature)
    }

    /// Full check before allowing `action` on `resource` to `presenter` at `now_ms`:
    /// the token was issued by `issuer` (the peer the verifier trusts for this resource),
    /// to `presenter`, for exactly `resource`, grants `action`, is within its validity
    /// window, and its signature verifies.
    pub fn verify(
        &self,
        issuer: &PeerId,
        presenter: &PeerId,
        resource: &str,
        action: Action,
        now_ms: u64,
    ) -> Result<()> {
        self.verify_signature()?;
        let found_issuer = self.issuer.peer_id();
        if found_issuer != *issuer {
            return Err(Error::CapabilityMismatch {
                field: "issuer",
                expected: *issuer,
                found: found_issuer,
            });
        }
        if self.audience != *presenter {
            return Err(Error::CapabilityMismatch {
                field: "audience",
                expected: *presenter,
                found: self.audience,
            });
        }
        if self.resource != resource {
            return Err(Error::WrongResource {
                expected: resource.to_owned(),
                found: self.resource.clone(),
            });
        }
        if !self.actions.contains(action) {
            return Err(Error::ActionNotGranted(action.as_str()));
        }
        if now_ms < self.not_before_ms {
            return Err(Error::NotYetValid {
                not_before_ms: self.not_before_ms,
                now_ms,
            });
        }
        if now_ms >= self.expires_at_ms {
            return Err(Error::Expired {
                expires_at_ms: self.expires_at_ms,
                now_ms,
            });
        }
        Ok(())
    }

    /// The issuer's key.
    pub fn issuer(&self) -> &PublicKey {
        &self.issuer
    }
    /// The peer the token was granted to.
    pub fn audience(&self) -> &PeerId {
        &self.audience
    }
    /// The resource name.
    pub fn resource(&self) -> &str {
        &self.resource
    }
    /// The granted actions.
    pub fn actions(&self) -> Actions {
        self.actions
    }
    /// Start of validity, Unix ms.
    pub fn not_before_ms(&self) -> u64 {
        self.not_before_ms
    }
    /// Expiry, Unix ms (exclusive).
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
    /// The random token id (for revocation lists).
    pub fn token_id(&self) -> &[u8; 16] {
        &self.token_id
    }

    /// The encoding (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = self.body();
        w.fixed(&self.signature.0);
        w.finish()
    }

    /// Decodes a token; strict (no trailing bytes, bounded, valid UTF-8, valid issuer key,
    /// known action bits). Does not verify the signature: call [`verify`](Self::verify).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "capability";
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(Error::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let mut r = Reader::object(bytes, WHAT, KIND, VERSION)?;
        let issuer = PublicKey::from_bytes(&r.array()?)?;
        let audience = PeerId::from_digest(r.array()?);
        let resource = std::str::from_utf8(r.var(MAX_RESOURCE_LEN, "capability resource")?)
            .map_err(|_| Error::Decode {
                what: WHAT,
                reason: "resource is not UTF-8",
            })?
            .to_owned();
        let bits = r.u8()?;
        if bits == 0 || bits & !Actions::ALL_BITS != 0 {
            return Err(Error::Decode {
                what: WHAT,
                reason: "unknown or empty action set",
            });
        }
        let not_before_ms = r.u64()?;
        let expires_at_ms = r.u64()?;
        let token_id = r.array()?;
        let signature = Signature(r.array()?);
        r.finish()?;
        Ok(Capability {
            issuer,
            audience,
            resource,
            actions: Actions(bits),
            not_before_ms,
            expires_at_ms,
            token_id,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_verify_and_every_check() {
        let owner = Identity::from_secret_bytes(&[1; 32]);
        let bob = Identity::from_secret_bytes(&[2; 32]);
        let acts = Actions::new([Action::Read, Action::Write]).unwrap();
        let cap = Capability::grant(
            &owner,
            bob.peer_id(),
            "circle:123:members",
            acts,
            1000,
            2000,
        )
        .unwrap();
        let (o, b) = (owner.peer_id(), bob.peer_id());
        let r = "circle:123:members";
        cap.verify(&o, &b, r, Action::Read, 1000).unwrap();
        cap.verify(&o, &b, r, Action::Write, 1999).unwrap();
        assert!(matches!(
            cap.verify(&o, &b, r, Action::Delete, 1500),
            Err(Error::ActionNotGranted("delete"))
        ));
        assert!(matches!(
            cap.verify(&o, &b, r, Action::Read, 2000),
            Err(Error::Expired { .. })
        ));
        assert!(matches!(
            cap.verify(&o, &b, r, Action::Read, 999),
            Err(Error::NotYetValid { .. })
        ));
        assert!(matches!(
            cap.verify(&o, &o, r, Action::Read, 1500),
            Err(Error::CapabilityMismatch {
                field: "audience",
                ..
            })
        ));
        assert!(matches!(
            cap.verify(&b, &b, r, Action::Read, 1500),
            Err(Error::CapabilityMismatch {
                field: "issuer",
                ..
            })
        ));
        assert!(matches!(
            cap.verify(&o, &b, "circle:124:members", Action::Read, 1500),
            Err(Error::WrongResource { .. })
        ));

        let decoded = Capability::from_bytes(&cap.to_bytes()).unwrap();
        assert_eq!(decoded, cap);
        decoded.verify(&o, &b, r, Action::Read, 1500).unwrap();
        assert_eq!(format!("{:?}", cap.actions()), r#"{"read", "write"}"#);
    }

    #[test]
    fn bad_grants() {
        let owner = Identity::from_secret_bytes(&[1; 32]);
        let acts = Actions::new([Action::Read]).unwrap();
        assert!(Actions::new([]).is_err());
        assert!(Capability::grant(&owner, owner.peer_id(), "r", acts, 5, 5).is_err());
        let long = "x".repeat(MAX_RESOURCE_LEN + 1);
        assert!(Capability::grant(&owner, owner.peer_id(), &long, acts, 0, 5).is_err());
    }
}
