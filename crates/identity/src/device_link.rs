//! Device-link declarations (seed 4.2 "these PeerIds belong to me", seed 004 "identity
//! linking by signed challenge"): a statement naming several device keys, signed by
//! *every* device it names, so no device can be claimed without its own consent.
//!
//! ```text
//! declaration = kind 0xD1 || version 1 || issued_at_ms (u64) || u32 len || label (UTF-8,
//!               at most 256 bytes, e.g. a CyberEco user id; may be empty)
//!               || count (u8, 1..=32) || device keys (32 each, strictly ascending)
//!               || signatures (64 each, in the order of the keys)
//! signed      = u32 len || "ecomesh 2026 device-link v1" || declaration without signatures
//! ```
//! All devices sign the same canonical bytes (keys sorted, no duplicates), so the order in
//! which devices were listed does not matter. Verification requires all signatures.

use std::collections::BTreeSet;

use ecomesh_types::{PeerId, Signature};

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::{Identity, PublicKey, domain};

const KIND: u8 = 0xD1;
const VERSION: u8 = 1;
/// Most devices one declaration may name.
pub const MAX_DEVICES: usize = 32;
/// Longest label in bytes.
pub const MAX_LABEL_LEN: usize = 256;
/// Largest encoded declaration.
pub const MAX_DECLARATION_LEN: usize = 2 + 8 + 4 + MAX_LABEL_LEN + 1 + MAX_DEVICES * (32 + 64);

/// A declaration that the named devices belong to one owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLinkDeclaration {
    issued_at_ms: u64,
    label: String,
    devices: Vec<PublicKey>,
    signatures: Vec<Option<Signature>>,
}

impl DeviceLinkDeclaration {
    /// An unsigned declaration naming `devices` (1 to [`MAX_DEVICES`], duplicates removed,
    /// sorted); each device then adds its signature with [`sign`](Self::sign).
    pub fn new(devices: &[PublicKey], label: &str, issued_at_ms: u64) -> Result<Self> {
        if label.len() > MAX_LABEL_LEN {
            return Err(Error::TooLarge {
                what: "device-link label",
                len: label.len(),
                max: MAX_LABEL_LEN,
            });
        }
        let devices: Vec<PublicKey> = devices
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if devices.is_empty() || devices.len() > MAX_DEVICES {
            return Err(Error::InvalidArgument(
                "a declaration names 1 to 32 devices",
            ));
        }
        let n = devices.len();
        Ok(DeviceLinkDeclaration {
            issued_at_ms,
            label: label.to_owned(),
            devices,
            signatures: vec![None; n],
        })
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_domain(domain::DEVICE_LINK);
        w.fixed(&self.body().finish());
        w.finish()
    }

    fn body(&self) -> Writer {
        let mut w = Writer::object(KIND, VERSION);
        w.u64(self.issued_at_ms).var(self.label.as_bytes());
        // At most MAX_DEVICES (32), checked by every constructor.
        w.u8(self.devices.len() as u8);
        for d in &self.devices {
            w.fixed(d.as_bytes());
        }
        w
    }

    /// Adds `device`'s signature; the device must be named ([`Error::NotADevice`]).
    pub fn sign(&mut self, device: &Identity) -> Result<()> {
        let idx = self
            .devices
            .iter()
            .position(|d| d == device.public_key())
            .ok_or(Error::NotADevice(device.peer_id()))?;
        let sig = device.sign(&self.signed_bytes());
        self.signatures[idx] = Some(sig);
        Ok(())
    }

    /// Adds a signature `device` made elsewhere (the other side of a link
    /// exchange); it is verified first, so a bad one is [`Error::BadSignature`]
    /// and leaves the declaration unchanged. A device not named is
    /// [`Error::NotADevice`].
    pub fn add_signature(&mut self, device: &PublicKey, signature: Signature) -> Result<()> {
        let idx = self
            .devices
            .iter()
            .position(|d| d == device)
            .ok_or(Error::NotADevice(device.peer_id()))?;
        device.verify(&self.signed_bytes(), &signature)?;
        self.signatures[idx] = Some(signature);
        Ok(())
    }

    /// The signature `device` made, when it has signed.
    pub fn signature_of(&self, device: &PublicKey) -> Option<Signature> {
        let idx = self.devices.iter().position(|d| d == device)?;
        self.signatures[idx]
    }

    /// Whether every named device has signed.
    pub fn is_complete(&self) -> bool {
        self.signatures.iter().all(Option::is_some)
    }

    /// Verifies every device's signature; returns the linked peer ids (ascending by key).
    /// A missing signature is [`Error::MissingDeviceSignature`], a bad one [`Error::BadSignature`].
    pub fn verify(&self) -> Result<Vec<PeerId>> {
        let bytes = self.signed_bytes();
        for (device, sig) in self.devices.iter().zip(&self.signatures) {
            let sig = sig
                .as_ref()
                .ok_or(Error::MissingDeviceSignature(device.peer_id()))?;
            device.verify(&bytes, sig)?;
        }
        Ok(self.peer_ids())
    }

    /// The named devices' peer ids (not a proof: see [`verify`](Self::verify)).
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.devices.iter().map(PublicKey::peer_id).collect()
    }

    /// The named device keys, ascending.
    pub fn devices(&self) -> &[PublicKey] {
        &self.devices
    }

    /// The owner label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// When the declaration was made, Unix ms.
    pub fn issued_at_ms(&self) -> u64 {
        self.issued_at_ms
    }

    /// The encoding of a complete declaration; an incomplete one is
    /// [`Error::MissingDeviceSignature`].
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut w = self.body();
        for (device, sig) in self.devices.iter().zip(&self.signatures) {
            let sig = sig
                .as_ref()
                .ok_or(Error::MissingDeviceSignature(device.peer_id()))?;
            w.fixed(&sig.0);
        }
        Ok(w.finish())
    }

    /// Decodes a complete declaration; strict (sorted distinct valid keys, bounded lengths,
    /// UTF-8 label, no trailing bytes). Call [`verify`](Self::verify) to check the signatures.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "device-link declaration";
        if bytes.len() > MAX_DECLARATION_LEN {
            return Err(Error::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_DECLARATION_LEN,
            });
        }
        let mut r = Reader::object(bytes, WHAT, KIND, VERSION)?;
        let issued_at_ms = r.u64()?;
        let label = std::str::from_utf8(r.var(MAX_LABEL_LEN, "device-link label")?)
            .map_err(|_| Error::Decode {
                what: WHAT,
                reason: "label is not UTF-8",
            })?
            .to_owned();
        let count = usize::from(r.u8()?);
        if count == 0 || count > MAX_DEVICES {
            return Err(Error::Decode {
                what: WHAT,
                reason: "device count out of range",
            });
        }
        let mut devices: Vec<PublicKey> = Vec::with_capacity(count);
        for _ in 0..count {
            let key = PublicKey::from_bytes(&r.array()?)?;
            if devices.last().is_some_and(|prev| *prev >= key) {
                return Err(Error::Decode {
                    what: WHAT,
                    reason: "device keys not strictly ascending",
                });
            }
            devices.push(key);
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            signatures.push(Some(Signature(r.array()?)));
        }
        r.finish()?;
        Ok(DeviceLinkDeclaration {
            issued_at_ms,
            label,
            devices,
            signatures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_must_sign() {
        let phone = Identity::from_secret_bytes(&[1; 32]);
        let laptop = Identity::from_secret_bytes(&[2; 32]);
        let stranger = Identity::from_secret_bytes(&[3; 32]);
        let mut d = DeviceLinkDeclaration::new(
            &[
                *laptop.public_key(),
                *phone.public_key(),
                *phone.public_key(),
            ],
            "user:42",
            1_700_000_000_000,
        )
        .unwrap();
        assert_eq!(d.devices().len(), 2);
        d.sign(&phone).unwrap();
        assert!(!d.is_complete());
        assert!(matches!(d.verify(), Err(Error::MissingDeviceSignature(_))));
        assert!(d.to_bytes().is_err());
        assert!(matches!(d.sign(&stranger), Err(Error::NotADevice(_))));
        d.sign(&laptop).unwrap();
        let ids = d.verify().unwrap();
        assert!(ids.contains(&phone.peer_id()) && ids.contains(&laptop.peer_id()));

        // Same canonical bytes whatever the order the devices were listed in.
        let mut e = DeviceLinkDeclaration::new(
            &[*phone.public_key(), *laptop.public_key()],
            "user:42",
            1_700_000_000_000,
        )
        .unwrap();
        e.sign(&laptop).unwrap();
        e.sign(&phone).unwrap();
        assert_eq!(e.to_bytes().unwrap(), d.to_bytes().unwrap());

        let decoded = DeviceLinkDeclaration::from_bytes(&d.to_bytes().unwrap()).unwrap();
        assert_eq!(decoded, d);
        decoded.verify().unwrap();
    }

    #[test]
    fn a_signature_made_elsewhere_is_verified_before_it_is_added() {
        let a = Identity::from_secret_bytes(&[1; 32]);
        let b = Identity::from_secret_bytes(&[2; 32]);
        let keys = [*a.public_key(), *b.public_key()];
        let mut on_a = DeviceLinkDeclaration::new(&keys, "user", 7).unwrap();
        let mut on_b = DeviceLinkDeclaration::new(&keys, "user", 7).unwrap();
        on_b.sign(&b).unwrap();
        let sig_b = on_b.signature_of(b.public_key()).unwrap();
        // B's signature claimed for A is refused and changes nothing.
        assert!(matches!(
            on_a.add_signature(a.public_key(), sig_b),
            Err(Error::BadSignature)
        ));
        assert!(on_a.signature_of(a.public_key()).is_none());
        let c = Identity::from_secret_bytes(&[3; 32]);
        assert!(matches!(
            on_a.add_signature(c.public_key(), sig_b),
            Err(Error::NotADevice(_))
        ));
        on_a.add_signature(b.public_key(), sig_b).unwrap();
        on_a.sign(&a).unwrap();
        assert_eq!(on_a.verify().unwrap().len(), 2);
    }

    #[test]
    fn a_signature_from_another_declaration_does_not_count() {
        let a = Identity::from_secret_bytes(&[1; 32]);
        let b = Identity::from_secret_bytes(&[2; 32]);
        let mut d1 =
            DeviceLinkDeclaration::new(&[*a.public_key(), *b.public_key()], "x", 1).unwrap();
        let mut d2 =
            DeviceLinkDeclaration::new(&[*a.public_key(), *b.public_key()], "x", 2).unwrap();
        d1.sign(&a).unwrap();
        d1.sign(&b).unwrap();
        d2.sign(&a).unwrap();
        let ib = d1
            .devices()
            .iter()
            .position(|k| k == b.public_key())
            .unwrap();
        d2.signatures[ib] = d1.signatures[ib];
        assert!(matches!(d2.verify(), Err(Error::BadSignature)));
    }
}
