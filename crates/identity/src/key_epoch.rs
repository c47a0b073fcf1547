//! One epoch of an encrypted collection's key, as its owner publishes it
//! (`docs/privacy.md`): for every member, the whole key sealed to the member
//! (what it reads and writes with) and its Shamir share sealed to it (what k
//! members combine to rebuild the key without the owner), all signed by the
//! owner so that members accept epochs from the owner only.
//!
//! ```text
//! epoch  = kind 0x6E || version 1 || owner Ed25519 key (32) || u32 len || collection
//!          (UTF-8, at most 1024 bytes) || group id (16) || epoch (u64) || threshold (u8)
//!          || member count (u8, 1 to 255) || member* || signature (64)
//! member = Ed25519 key (32) || sealed whole key (147) || sealed share (149)
//! signed = u32 len || "ecomesh 2026 collection key epoch v1" || epoch without the signature
//! ```
//! Everything in it is public but the sealed boxes: anyone sees the
//! collection name, the owner, the members' keys, the epoch and the threshold.

use std::collections::BTreeSet;

use ecomesh_types::Signature;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::group::{self, GroupId, GroupKey, GroupShare};
use crate::{Identity, PublicKey, domain, sealed};

const KIND: u8 = 0x6E;
const FORMAT_VERSION: u8 = 1;
/// Longest collection name in bytes.
pub const MAX_COLLECTION_LEN: usize = 1024;
/// Size of a sealed whole key.
pub const SEALED_KEY_LEN: usize = sealed::OVERHEAD + group::KEY_LEN;
/// Size of a sealed share.
pub const SEALED_SHARE_LEN: usize = sealed::OVERHEAD + group::SHARE_LEN;
const MEMBER_LEN: usize = 32 + SEALED_KEY_LEN + SEALED_SHARE_LEN;

/// One member's entry of a [`KeyEpoch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochMember {
    /// The member's key.
    pub key: PublicKey,
    /// The whole key sealed to the member ([`GroupKey::seal_to`]).
    pub sealed_key: Vec<u8>,
    /// The member's Shamir share sealed to it ([`GroupShare::open`]).
    pub sealed_share: Vec<u8>,
}

/// A signed key epoch of one encrypted collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEpoch {
    owner: PublicKey,
    collection: String,
    group_id: GroupId,
    epoch: u64,
    threshold: u8,
    members: Vec<EpochMember>,
    signature: Signature,
}

impl KeyEpoch {
    /// Deals a fresh key to `members` (the owner is added when missing):
    /// epoch 0 of a new group when `previous` is `None`, else the epoch after
    /// `previous` (rotation on a membership change). Returns the key and the
    /// signed epoch to publish.
    pub fn deal(
        owner: &Identity,
        collection: &str,
        previous: Option<&GroupKey>,
        members: &[PublicKey],
        threshold: Option<usize>,
    ) -> Result<(GroupKey, KeyEpoch)> {
        if collection.len() > MAX_COLLECTION_LEN {
            return Err(Error::TooLarge {
                what: "collection name",
                len: collection.len(),
                max: MAX_COLLECTION_LEN,
            });
        }
        let mut all: Vec<PublicKey> = Vec::with_capacity(members.len() + 1);
        let mut seen = BTreeSet::new();
        for m in std::iter::once(owner.public_key()).chain(members) {
            if seen.insert(*m) {
                all.push(*m);
            }
        }
        let (key, dist) = match previous {
            None => GroupKey::create(&all, threshold)?,
            Some(prev) => prev.rotate(&all, threshold)?,
        };
        let members = all
            .iter()
            .zip(dist.envelopes)
            .map(|(m, (_, share))| {
                Ok(EpochMember {
                    key: *m,
                    sealed_key: key.seal_to(m)?,
                    sealed_share: share,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut epoch = KeyEpoch {
            owner: *owner.public_key(),
            collection: collection.to_owned(),
            group_id: key.group_id(),
            epoch: key.epoch(),
            threshold: u8::try_from(dist.threshold)
                .map_err(|_| Error::InvalidArgument("threshold too large"))?,
            members,
            signature: Signature([0; 64]),
        };
        epoch.signature = owner.sign(&epoch.signed_bytes());
        Ok((key, epoch))
    }

    fn body(&self) -> Writer {
        let mut w = Writer::object(KIND, FORMAT_VERSION);
        w.fixed(&self.owner.to_bytes())
            .var(self.collection.as_bytes())
            .fixed(&self.group_id.0)
            .u64(self.epoch)
            .u8(self.threshold)
            .u8(self.members.len() as u8);
        for m in &self.members {
            w.fixed(&m.key.to_bytes())
                .fixed(&m.sealed_key)
                .fixed(&m.sealed_share);
        }
        w
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_domain(domain::COLLECTION_KEY_EPOCH);
        w.fixed(&self.body().finish());
        w.finish()
    }

    /// The encoding (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = self.body();
        w.fixed(&self.signature.0);
        w.finish()
    }

    /// Decodes an epoch strictly and boundedly and checks the owner's
    /// signature: nothing is returned that the owner named inside did not sign.
    pub fn from_bytes(bytes: &[u8]) -> Result<KeyEpoch> {
        let what = "collection key epoch";
        let mut r = Reader::object(bytes, what, KIND, FORMAT_VERSION)?;
        let owner = PublicKey::from_bytes(&r.array()?)?;
        let collection = std::str::from_utf8(r.var(MAX_COLLECTION_LEN, "collection name")?)
            .map_err(|_| Error::Decode {
                what,
                reason: "collection name is not UTF-8",
            })?
            .to_owned();
        let group_id = GroupId(r.array()?);
        let epoch = r.u64()?;
        let threshold = r.u8()?;
        let n = usize::from(r.u8()?);
        if n == 0 || threshold == 0 || usize::from(threshold) > n {
            return Err(Error::Decode {
                what,
                reason: "member count or threshold out of range",
            });
        }
        if r.remaining() < n * MEMBER_LEN + 64 {
            return Err(Error::Truncated {
                what,
                needed: n * MEMBER_LEN + 64,
                available: r.remaining(),
            });
        }
        let mut members = Vec::with_capacity(n);
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            let key = PublicKey::from_bytes(&r.array()?)?;
            if !seen.insert(key) {
                return Err(Error::Decode {
                    what,
                    reason: "duplicate member",
                });
            }
            members.push(EpochMember {
                key,
                sealed_key: r.take(SEALED_KEY_LEN)?.to_vec(),
                sealed_share: r.take(SEALED_SHARE_LEN)?.to_vec(),
            });
        }
        let signature = Signature(r.array()?);
        r.finish()?;
        let e = KeyEpoch {
            owner,
            collection,
            group_id,
            epoch,
            threshold,
            members,
            signature,
        };
        e.owner.verify(&e.signed_bytes(), &e.signature)?;
        Ok(e)
    }

    /// The whole key for `me`, when it is a member: opened and checked to be
    /// this epoch's key.
    pub fn open_key(&self, me: &Identity) -> Result<GroupKey> {
        let m = self.member(me.public_key())?;
        let key = GroupKey::open_sealed(me, &m.sealed_key)?;
        if key.group_id() != self.group_id || key.epoch() != self.epoch {
            return Err(Error::ShareMismatch("sealed key of another group or epoch"));
        }
        Ok(key)
    }

    /// The Shamir share for `me`, when it is a member.
    pub fn open_share(&self, me: &Identity) -> Result<GroupShare> {
        let m = self.member(me.public_key())?;
        let share = GroupShare::open(me, &m.sealed_share)?;
        if share.group_id() != self.group_id || share.epoch() != self.epoch {
            return Err(Error::ShareMismatch("share of another group or epoch"));
        }
        Ok(share)
    }

    fn member(&self, key: &PublicKey) -> Result<&EpochMember> {
        self.members
            .iter()
            .find(|m| &m.key == key)
            .ok_or(Error::UnknownPeer(key.peer_id()))
    }

    /// Whether `key` is a member of this epoch.
    pub fn is_member(&self, key: &PublicKey) -> bool {
        self.members.iter().any(|m| &m.key == key)
    }

    /// The owner who dealt and signed it.
    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    /// The collection.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The group.
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Shares needed to rebuild the key.
    pub fn threshold(&self) -> usize {
        usize::from(self.threshold)
    }

    /// The members' keys, in dealing order.
    pub fn member_keys(&self) -> Vec<PublicKey> {
        self.members.iter().map(|m| m.key).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Identity {
        Identity::from_secret_bytes(&[n; 32])
    }

    #[test]
    fn members_open_their_key_and_share_and_others_do_not() {
        let (owner, bob, eve) = (id(1), id(2), id(3));
        let (key, e) = KeyEpoch::deal(&owner, "notes", None, &[*bob.public_key()], None).unwrap();
        let bytes = e.to_bytes();
        let back = KeyEpoch::from_bytes(&bytes).unwrap();
        assert_eq!(back, e);
        assert!(back.open_key(&bob).unwrap().same_key(&key));
        assert!(back.open_key(&owner).unwrap().same_key(&key));
        assert!(back.open_key(&eve).is_err());
        assert_eq!(back.threshold(), 2);
        let shares = [
            back.open_share(&owner).unwrap(),
            back.open_share(&bob).unwrap(),
        ];
        assert!(GroupKey::recover(&shares).unwrap().same_key(&key));
        // Every altered byte is refused (signature, or a decode error).
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(KeyEpoch::from_bytes(&b).is_err(), "byte {i}");
        }
        assert!(KeyEpoch::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        // Rotation: the next epoch, same group, without bob.
        let (k1, e1) = KeyEpoch::deal(&owner, "notes", Some(&key), &[], None).unwrap();
        assert_eq!((e1.epoch(), e1.group_id()), (1, key.group_id()));
        assert!(e1.open_key(&bob).is_err());
        assert!(e1.open_key(&owner).unwrap().same_key(&k1));
    }
}
