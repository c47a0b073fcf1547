//! Capability checks on replication (issue 20, item 3): a collection made
//! non-public here ([`CapabilityGate::restrict`]) is served to a peer, and
//! versions of it are taken from a peer, only while this node holds a valid
//! capability token (`ecomesh_identity::capability`) issued by the
//! collection's issuer to that peer for `read` (serving: its Merkle index,
//! roots and version bytes) or `write` (taking in a pushed, fetched or
//! reconciled version). Everything else is refused and recorded as a
//! [`CapabilityRefusal`]. Revoked token ids never count again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, RwLock};

use ecomesh_identity::capability::{Action, Capability};
use ecomesh_types::PeerId;

/// Most refusals kept for the owner to drain (the oldest are dropped).
pub const MAX_REFUSALS: usize = 256;

/// One refused request or push.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapabilityRefusal {
    /// The peer refused.
    pub peer: PeerId,
    /// The collection.
    pub collection: String,
    /// What it was refused: `read` (being served) or `write` (a version taken in).
    pub action: &'static str,
}

/// The non-public collections of this node, the tokens it holds for them and
/// the tokens revoked; shared by the replication adapter's views.
#[derive(Default)]
pub struct CapabilityGate {
    /// Restricted collection -> the issuer whose tokens count.
    restricted: RwLock<BTreeMap<String, PeerId>>,
    /// Tokens by (audience, collection).
    tokens: RwLock<BTreeMap<(PeerId, String), Vec<Capability>>>,
    revoked: RwLock<BTreeSet<[u8; 16]>>,
    refusals: Mutex<VecDeque<CapabilityRefusal>>,
}

impl std::fmt::Debug for CapabilityGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapabilityGate")
            .field("restricted", &*read(&self.restricted))
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl CapabilityGate {
    /// Makes `collection` non-public: from now on peers need a token issued
    /// by `issuer` to be served it or to have versions of it taken in.
    pub fn restrict(&self, collection: &str, issuer: PeerId) {
        write(&self.restricted).insert(collection.to_owned(), issuer);
    }

    /// Whether `collection` is restricted here.
    pub fn is_restricted(&self, collection: &str) -> bool {
        read(&self.restricted).contains_key(collection)
    }

    /// The restricted collections with the issuer whose tokens count, by name.
    pub fn restricted(&self) -> Vec<(String, PeerId)> {
        read(&self.restricted)
            .iter()
            .map(|(c, p)| (c.clone(), *p))
            .collect()
    }

    /// The tokens held (revoked ones are dropped when revoked), by audience
    /// and collection.
    pub fn tokens(&self) -> Vec<Capability> {
        read(&self.tokens).values().flatten().cloned().collect()
    }

    /// Installs a token (its signature checked; its resource is the
    /// collection, its audience the peer it admits). Refused when revoked.
    pub fn install(&self, token: Capability) -> Result<(), ecomesh_identity::Error> {
        token.verify_signature()?;
        if read(&self.revoked).contains(token.token_id()) {
            return Err(ecomesh_identity::Error::InvalidArgument(
                "the token was revoked",
            ));
        }
        write(&self.tokens)
            .entry((*token.audience(), token.resource().to_owned()))
            .or_default()
            .push(token);
        Ok(())
    }

    /// Revokes a token by id: it never admits anyone here again.
    pub fn revoke(&self, token_id: [u8; 16]) {
        write(&self.revoked).insert(token_id);
        for list in write(&self.tokens).values_mut() {
            list.retain(|t| t.token_id() != &token_id);
        }
    }

    /// Whether `peer` may have `action` on `collection` at `now_ms`: always
    /// for an unrestricted collection, else a held, unrevoked token of the
    /// collection's issuer to `peer` that grants it and is valid now.
    pub fn allows(&self, peer: &PeerId, collection: &str, action: Action, now_ms: u64) -> bool {
        let Some(issuer) = read(&self.restricted).get(collection).copied() else {
            return true;
        };
        if *peer == issuer {
            return true;
        }
        let revoked = read(&self.revoked);
        read(&self.tokens)
            .get(&(*peer, collection.to_owned()))
            .is_some_and(|list| {
                list.iter().any(|t| {
                    !revoked.contains(t.token_id())
                        && t.verify(&issuer, peer, collection, action, now_ms).is_ok()
                })
            })
    }

    /// Records a refusal (deduplicated against the latest one), with a log line.
    pub fn refuse(&self, peer: PeerId, collection: &str, action: Action) {
        let r = CapabilityRefusal {
            peer,
            collection: collection.to_owned(),
            action: action.as_str(),
        };
        let mut q = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if q.back() == Some(&r) {
            return;
        }
        tracing::warn!(%peer, collection, action = action.as_str(), "refused: no valid capability");
        if q.len() >= MAX_REFUSALS {
            q.pop_front();
        }
        q.push_back(r);
    }

    /// The refusals recorded since the last call, oldest first.
    pub fn drain_refusals(&self) -> Vec<CapabilityRefusal> {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use ecomesh_identity::Identity;
    use ecomesh_identity::capability::Actions;

    use super::*;

    #[test]
    fn tokens_admit_their_audience_for_their_actions_within_their_window_until_revoked() {
        let (owner, bob, eve) = (
            Identity::from_secret_bytes(&[1; 32]),
            Identity::from_secret_bytes(&[2; 32]),
            Identity::from_secret_bytes(&[3; 32]),
        );
        let gate = CapabilityGate::default();
        assert!(gate.allows(&eve.peer_id(), "c", Action::Write, 0), "public");
        gate.restrict("c", owner.peer_id());
        let t = Capability::grant(
            &owner,
            bob.peer_id(),
            "c",
            Actions::new([Action::Read]).unwrap(),
            1000,
            2000,
        )
        .unwrap();
        gate.install(t.clone()).unwrap();
        assert!(gate.allows(&bob.peer_id(), "c", Action::Read, 1500));
        assert!(!gate.allows(&bob.peer_id(), "c", Action::Write, 1500));
        assert_eq!(gate.restricted(), vec![("c".to_owned(), owner.peer_id())]);
        assert_eq!(gate.tokens(), vec![t.clone()]);
        assert!(
            !gate.allows(&bob.peer_id(), "c", Action::Read, 2000),
            "expired"
        );
        assert!(
            !gate.allows(&bob.peer_id(), "c", Action::Read, 999),
            "not yet"
        );
        assert!(!gate.allows(&eve.peer_id(), "c", Action::Read, 1500));
        assert!(gate.allows(&owner.peer_id(), "c", Action::Write, 1500));
        // A token from someone else than the collection's issuer does not count.
        let forged = Capability::grant(
            &eve,
            eve.peer_id(),
            "c",
            Actions::new([Action::Read]).unwrap(),
            0,
            u64::MAX,
        )
        .unwrap();
        gate.install(forged).unwrap();
        assert!(!gate.allows(&eve.peer_id(), "c", Action::Read, 1500));
        gate.revoke(*t.token_id());
        assert!(!gate.allows(&bob.peer_id(), "c", Action::Read, 1500));
        assert!(
            !gate.tokens().contains(&t),
            "a revoked token is no longer listed"
        );
        assert!(gate.install(t).is_err());
        gate.refuse(eve.peer_id(), "c", Action::Read);
        gate.refuse(eve.peer_id(), "c", Action::Read);
        assert_eq!(gate.drain_refusals().len(), 1);
        assert!(gate.drain_refusals().is_empty());
    }
}
