//! k-of-n group keys (seed 8.2): a random 256-bit group key split with Shamir's secret
//! sharing (`blahaj`, the maintained `sharks` fork with the RUSTSEC-2024-0398 fix), one
//! share sealed to each member, data encrypted under the key with XChaCha20-Poly1305.
//!
//! - Default threshold: `k = n` for `n <= 2`, `k = ceil(n/2 + 1)` for `n >= 3`
//!   ([`default_threshold`]).
//! - Rotation: when a member joins or leaves, [`GroupKey::rotate`] deals a fresh random
//!   key for epoch `e + 1` to the new member list. Old shares are useless for the new
//!   epoch, and data is tagged with its epoch ([`Error::WrongEpoch`]).
//! - Fewer than `k` shares are [`Error::NotEnoughShares`]; by the Shamir property they
//!   carry no information about the key. A 16-byte key-check value (a blake3 KDF output
//!   of the key) inside each share detects shares that do not rebuild the dealt key.
//!
//! The dealer necessarily sees the key when dealing; it should keep only the shares
//! (a [`GroupKey`] zeroizes on drop).
//!
//! ```text
//! share (76 bytes)  = kind 0x67 || version 1 || group id (16) || epoch (u64)
//!                     || threshold (u8) || key check (16) || x (u8) || y (32)
//! group ciphertext  = kind 0x6D || version 1 || group id (16) || epoch (u64)
//!                     || nonce (24) || XChaCha20-Poly1305(data key, nonce, pt, aad = header)
//! data key          = blake3::derive_key("ecomesh 2026 group data v1",
//!                                        u32 len || key || group id || epoch)
//! ```

use std::collections::BTreeSet;
use std::fmt;

use blahaj::{Share, Sharks};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ecomesh_types::PeerId;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::rng::{self, OsRandom};
use crate::{Identity, PublicKey, domain, sealed};

const SHARE_KIND: u8 = 0x67;
const DATA_KIND: u8 = 0x6D;
const KEY_KIND: u8 = 0x6B;
const FORMAT_VERSION: u8 = 1;
/// Encoded size of a [`GroupShare`].
pub const SHARE_LEN: usize = 2 + 16 + 8 + 1 + 16 + 1 + 32;
/// Bytes added by [`GroupKey::encrypt`]: header 26 + nonce 24 + tag 16.
pub const DATA_OVERHEAD: usize = 2 + 16 + 8 + 24 + 16;
/// Encoded size of a whole group key ([`GroupKey::to_secret_bytes`]).
pub const KEY_LEN: usize = 2 + 16 + 8 + 16 + 32;
/// Largest group: Shamir over GF(256) has 255 evaluation points.
pub const MAX_MEMBERS: usize = 255;
/// Largest plaintext [`GroupKey::encrypt`] accepts.
pub const MAX_PLAINTEXT: usize = sealed::MAX_PLAINTEXT;

/// A group's stable random identifier (kept across epochs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GroupId(pub [u8; 16]);

/// The default threshold of seed 8.2 for `n` members: `n` for pairs (and a single
/// member), `ceil(n/2 + 1)` for `n >= 3`.
pub fn default_threshold(n: usize) -> usize {
    if n <= 2 { n } else { n / 2 + 1 + (n % 2) }
}

/// A group's symmetric key for one epoch. Zeroized on drop; `Debug` hides the key.
#[derive(Clone)]
pub struct GroupKey {
    group_id: GroupId,
    epoch: u64,
    key: Zeroizing<[u8; 32]>,
}

/// The result of dealing a key: what to send to each member.
#[derive(Clone, Debug)]
pub struct Distribution {
    /// The group.
    pub group_id: GroupId,
    /// The epoch of the dealt key.
    pub epoch: u64,
    /// Shares needed to rebuild the key.
    pub threshold: usize,
    /// One sealed share per member, in the order the members were given: the member's
    /// peer id and a sealed box only that member can open with [`GroupShare::open`].
    pub envelopes: Vec<(PeerId, Vec<u8>)>,
}

/// One member's Shamir share of a group key, opened from its envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupShare {
    group_id: GroupId,
    epoch: u64,
    threshold: u8,
    key_check: [u8; 16],
    x: u8,
    y: Zeroizing<[u8; 32]>,
}

fn key_check(key: &[u8; 32]) -> [u8; 16] {
    let full = blake3::derive_key(domain::GROUP_KEY_CHECK, key);
    let mut out = [0_u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

impl GroupKey {
    /// Creates a new group (random id, epoch 0) and deals its key to `members`.
    /// `threshold` `None` uses [`default_threshold`].
    pub fn create(
        members: &[PublicKey],
        threshold: Option<usize>,
    ) -> Result<(GroupKey, Distribution)> {
        Self::deal(GroupId(rng::array()?), 0, members, threshold)
    }

    /// Deals a fresh key for the next epoch to a new member list: call it when a member
    /// joins or leaves. The old key stays valid only for old data.
    pub fn rotate(
        &self,
        members: &[PublicKey],
        threshold: Option<usize>,
    ) -> Result<(GroupKey, Distribution)> {
        let epoch = self
            .epoch
            .checked_add(1)
            .ok_or(Error::InvalidArgument("group epoch exhausted"))?;
        Self::deal(self.group_id, epoch, members, threshold)
    }

    /// Deals a fresh random key for (`group_id`, `epoch`) to `members` (distinct keys,
    /// 1 to [`MAX_MEMBERS`]) with threshold `k` (1 to n; default [`default_threshold`]).
    pub fn deal(
        group_id: GroupId,
        epoch: u64,
        members: &[PublicKey],
        threshold: Option<usize>,
    ) -> Result<(GroupKey, Distribution)> {
        let n = members.len();
        if n == 0 || n > MAX_MEMBERS {
            return Err(Error::InvalidArgument("a group has 1 to 255 members"));
        }
        if members.iter().collect::<BTreeSet<_>>().len() != n {
            return Err(Error::InvalidArgument("duplicate group member"));
        }
        let k = threshold.unwrap_or_else(|| default_threshold(n));
        if k == 0 || k > n {
            return Err(Error::InvalidArgument(
                "threshold must be between 1 and the member count",
            ));
        }
        let k8 = u8::try_from(k).map_err(|_| Error::InvalidArgument("threshold too large"))?;
        let key = Zeroizing::new(rng::array::<32>()?);
        let check = key_check(&key);

        let mut random = OsRandom::default();
        let shares: Vec<Share> = Sharks(k8)
            .dealer_rng(&key[..], &mut random)
            .take(n)
            .collect();
        random.check()?;

        let mut envelopes = Vec::with_capacity(n);
        for (member, share) in members.iter().zip(&shares) {
            let bytes = Zeroizing::new(Vec::from(share));
            let (x, y) = bytes
                .split_first()
                .ok_or(Error::ShareMismatch("empty share"))?;
            let mut y32 = Zeroizing::new([0_u8; 32]);
            if y.len() != 32 {
                return Err(Error::ShareMismatch("share length"));
            }
            y32.copy_from_slice(y);
            let gs = GroupShare {
                group_id,
                epoch,
                threshold: k8,
                key_check: check,
                x: *x,
                y: y32,
            };
            let encoded = Zeroizing::new(gs.to_bytes());
            envelopes.push((member.peer_id(), sealed::seal(member, &encoded)?));
        }
        tracing::debug!(n, k, epoch, "dealt group key");
        Ok((
            GroupKey {
                group_id,
                epoch,
                key,
            },
            Distribution {
                group_id,
                epoch,
                threshold: k,
                envelopes,
            },
        ))
    }

    /// Rebuilds the key from at least `threshold` distinct shares of the same group and
    /// epoch. Duplicates (same x) count once. Fewer is [`Error::NotEnoughShares`]; shares
    /// of different groups, epochs or dealings are [`Error::ShareMismatch`].
    pub fn recover(shares: &[GroupShare]) -> Result<GroupKey> {
        let first = shares
            .first()
            .ok_or(Error::NotEnoughShares { have: 0, need: 1 })?;
        let mut seen = BTreeSet::new();
        let mut distinct = Vec::new();
        for s in shares {
            if s.group_id != first.group_id
                || s.epoch != first.epoch
                || s.threshold != first.threshold
                || s.key_check != first.key_check
            {
                return Err(Error::ShareMismatch(
                    "shares from different groups, epochs or dealings",
                ));
            }
            if seen.insert(s.x) {
                distinct.push(s);
            } else if distinct.iter().any(|d| d.x == s.x && d.y != s.y) {
                return Err(Error::ShareMismatch(
                    "two different shares at the same point",
                ));
            }
        }
        let need = usize::from(first.threshold);
        if distinct.len() < need {
            return Err(Error::NotEnoughShares {
                have: distinct.len(),
                need,
            });
        }
        let blahaj_shares: Vec<Share> = distinct
            .iter()
            .map(|s| {
                let mut b = Zeroizing::new(Vec::with_capacity(33));
                b.push(s.x);
                b.extend_from_slice(&s.y[..]);
                Share::try_from(&b[..]).map_err(|_| Error::ShareMismatch("share encoding"))
            })
            .collect::<Result<_>>()?;
        let secret = Zeroizing::new(Sharks(first.threshold).recover(&blahaj_shares).map_err(
            |_| Error::NotEnoughShares {
                have: distinct.len(),
                need,
            },
        )?);
        let key: [u8; 32] = secret[..]
            .try_into()
            .map_err(|_| Error::ShareMismatch("recovered key length"))?;
        let key = Zeroizing::new(key);
        if key_check(&key) != first.key_check {
            return Err(Error::ShareMismatch("shares do not rebuild the dealt key"));
        }
        Ok(GroupKey {
            group_id: first.group_id,
            epoch: first.epoch,
            key,
        })
    }

    /// The group.
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The epoch of this key.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        let mut w = Writer::new();
        w.var(&self.key[..]).fixed(&self.group_id.0).u64(self.epoch);
        let material = Zeroizing::new(w.finish());
        let data_key = Zeroizing::new(blake3::derive_key(domain::GROUP_DATA_KDF, &material));
        XChaCha20Poly1305::new(&(*data_key).into())
    }

    /// Encrypts group data under this epoch's key ([`DATA_OVERHEAD`] bytes added).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.encrypt_bound(plaintext, &[])
    }

    /// Decrypts data made by [`encrypt`](Self::encrypt) with this group's key of the same epoch.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.decrypt_bound(data, &[])
    }

    /// Like [`encrypt`](Self::encrypt), with `context` bound into the tag as
    /// associated data (after the header): the ciphertext opens only under the
    /// same context, so it cannot be moved to another place that names a
    /// different context. An empty context gives exactly [`encrypt`](Self::encrypt)'s form.
    pub fn encrypt_bound(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        let too_large = Error::TooLarge {
            what: "group plaintext",
            len: plaintext.len(),
            max: MAX_PLAINTEXT,
        };
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(too_large);
        }
        let nonce = rng::array::<24>()?;
        let mut w = Writer::object(DATA_KIND, FORMAT_VERSION);
        w.fixed(&self.group_id.0).u64(self.epoch);
        let mut out = w.finish();
        let mut aad = Vec::with_capacity(out.len() + context.len());
        aad.extend_from_slice(&out);
        aad.extend_from_slice(context);
        out.extend_from_slice(&nonce);
        let ct = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| too_large)?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts data made by [`encrypt_bound`](Self::encrypt_bound) with the same
    /// `context`, under this group's key of the same epoch.
    pub fn decrypt_bound(&self, data: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        let mut r = Reader::object(data, "group ciphertext", DATA_KIND, FORMAT_VERSION)?;
        let group = GroupId(r.array()?);
        let epoch = r.u64()?;
        let header_len = data.len() - r.remaining();
        let nonce: [u8; 24] = r.array()?;
        let ct = r.rest();
        if ct.len() < 16 {
            return Err(Error::Truncated {
                what: "group ciphertext",
                needed: 16,
                available: ct.len(),
            });
        }
        if group != self.group_id {
            return Err(Error::DecryptFailed);
        }
        if epoch != self.epoch {
            return Err(Error::WrongEpoch {
                expected: self.epoch,
                found: epoch,
            });
        }
        let mut aad = Vec::with_capacity(header_len + context.len());
        aad.extend_from_slice(&data[..header_len]);
        aad.extend_from_slice(context);
        self.cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| Error::DecryptFailed)
    }

    /// The whole key as bytes ([`KEY_LEN`]): kind `0x6B`, version 1, group id,
    /// epoch, key check, key. Secret: it leaves this process only sealed
    /// ([`seal_to`](Self::seal_to)).
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::object(KEY_KIND, FORMAT_VERSION);
        w.fixed(&self.group_id.0)
            .u64(self.epoch)
            .fixed(&key_check(&self.key))
            .fixed(&self.key[..]);
        Zeroizing::new(w.finish())
    }

    /// Decodes [`to_secret_bytes`](Self::to_secret_bytes) strictly; a key whose
    /// check value does not match is [`Error::ShareMismatch`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<GroupKey> {
        let mut r = Reader::object(bytes, "group key", KEY_KIND, FORMAT_VERSION)?;
        let group_id = GroupId(r.array()?);
        let epoch = r.u64()?;
        let check: [u8; 16] = r.array()?;
        let key = Zeroizing::new(r.array::<32>()?);
        r.finish()?;
        if key_check(&key) != check {
            return Err(Error::ShareMismatch("group key check value"));
        }
        Ok(GroupKey {
            group_id,
            epoch,
            key,
        })
    }

    /// The whole key sealed to `member` ([`sealed::seal`]): how a member that
    /// reads the group's data gets it, and how a device keeps it at rest
    /// (sealed to its own key).
    pub fn seal_to(&self, member: &PublicKey) -> Result<Vec<u8>> {
        sealed::seal(member, &self.to_secret_bytes())
    }

    /// Opens a key sealed by [`seal_to`](Self::seal_to) for `member`.
    pub fn open_sealed(member: &Identity, envelope: &[u8]) -> Result<GroupKey> {
        let bytes = Zeroizing::new(sealed::open(member, envelope)?);
        Self::from_secret_bytes(&bytes)
    }

    /// Whether two keys are the same key of the same group and epoch.
    pub fn same_key(&self, other: &GroupKey) -> bool {
        self.group_id == other.group_id && self.epoch == other.epoch && self.key == other.key
    }
}

/// The group and epoch a group ciphertext ([`GroupKey::encrypt`],
/// [`GroupKey::encrypt_bound`]) names in its clear header: which key opens it.
/// Fails on anything too short to hold a header, nonce and tag.
pub fn ciphertext_key(data: &[u8]) -> Result<(GroupId, u64)> {
    let mut r = Reader::object(data, "group ciphertext", DATA_KIND, FORMAT_VERSION)?;
    let group = GroupId(r.array()?);
    let epoch = r.u64()?;
    let _nonce: [u8; 24] = r.array()?;
    if r.remaining() < 16 {
        return Err(Error::Truncated {
            what: "group ciphertext",
            needed: 16,
            available: r.remaining(),
        });
    }
    Ok((group, epoch))
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupKey")
            .field("group_id", &self.group_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl GroupShare {
    /// Opens this member's envelope from a [`Distribution`].
    pub fn open(member: &Identity, envelope: &[u8]) -> Result<GroupShare> {
        let bytes = Zeroizing::new(sealed::open(member, envelope)?);
        Self::from_bytes(&bytes)
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

    /// The encoding ([`SHARE_LEN`] bytes). It is secret: send it only sealed
    /// (e.g. [`sealed::seal`] to the member who combines the shares).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::object(SHARE_KIND, FORMAT_VERSION);
        w.fixed(&self.group_id.0)
            .u64(self.epoch)
            .u8(self.threshold)
            .fixed(&self.key_check)
            .u8(self.x)
            .fixed(&self.y[..]);
        w.finish()
    }

    /// Decodes a share; strict and bounded.
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupShare> {
        let mut r = Reader::object(bytes, "group share", SHARE_KIND, FORMAT_VERSION)?;
        let group_id = GroupId(r.array()?);
        let epoch = r.u64()?;
        let threshold = r.u8()?;
        let key_check = r.array()?;
        let x = r.u8()?;
        let y = Zeroizing::new(r.array::<32>()?);
        r.finish()?;
        if threshold == 0 || x == 0 {
            return Err(Error::Decode {
                what: "group share",
                reason: "zero threshold or share point",
            });
        }
        Ok(GroupShare {
            group_id,
            epoch,
            threshold,
            key_check,
            x,
            y,
        })
    }
}

impl fmt::Debug for GroupShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupShare")
            .field("group_id", &self.group_id)
            .field("epoch", &self.epoch)
            .field("threshold", &self.threshold)
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_seed() {
        let got: Vec<usize> = (1..=8).map(default_threshold).collect();
        assert_eq!(got, vec![1, 2, 3, 3, 4, 4, 5, 5]);
        // ceil(n/2 + 1) computed in floating point for larger n.
        for n in 3..=255_usize {
            assert_eq!(default_threshold(n), (n as f64 / 2.0 + 1.0).ceil() as usize);
        }
    }

    #[test]
    fn bad_arguments() {
        let a = *Identity::from_secret_bytes(&[1; 32]).public_key();
        let b = *Identity::from_secret_bytes(&[2; 32]).public_key();
        assert!(GroupKey::create(&[], None).is_err());
        assert!(GroupKey::create(&[a, a], None).is_err());
        assert!(GroupKey::create(&[a, b], Some(3)).is_err());
        assert!(GroupKey::create(&[a, b], Some(0)).is_err());
    }

    #[test]
    fn share_decoding_is_strict() {
        assert!(GroupShare::from_bytes(&[]).is_err());
        let mut bytes = vec![SHARE_KIND, FORMAT_VERSION];
        bytes.extend_from_slice(&[1; SHARE_LEN - 2]);
        let share = GroupShare::from_bytes(&bytes).unwrap();
        assert_eq!(share.to_bytes(), bytes);
        bytes.push(0);
        assert!(matches!(
            GroupShare::from_bytes(&bytes),
            Err(Error::Decode { .. })
        ));
    }
}
