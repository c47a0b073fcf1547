//! End-to-end sealed boxes to a recipient's identity (seed 8.2, with the cipher of
//! seed 003: X25519 + XChaCha20-Poly1305).
//!
//! ```text
//! sealed box = version (1) || ephemeral X25519 public key (32) || nonce (24) || ciphertext
//! ciphertext = XChaCha20-Poly1305(key, nonce, plaintext, aad = version || ephemeral public)
//! key        = blake3::derive_key("ecomesh 2026 e2ee v1",
//!                  u32 len || ephemeral public || u32 len || recipient X25519 public
//!                  || u32 len || X25519 shared secret)
//! ```
//! The recipient's X25519 key is the Montgomery form of its Ed25519 public key; its
//! private side is the clamped Ed25519 secret scalar. Every box uses a fresh ephemeral
//! key and a random 24-byte nonce. Nothing in clear says who sent the box or to whom.
//! [`OVERHEAD`] is 73 bytes.
//!
//! [`seal_signed`] puts the sender's identity *inside* the ciphertext: the sender's
//! Ed25519 key and a signature over the recipient's key and the plaintext, so the
//! recipient learns and can prove who wrote it, while relays learn nothing
//! ([`SIGNED_OVERHEAD`] is 169 bytes).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::{Identity, PublicKey, domain, rng};

/// Version byte of the sealed-box format.
pub const VERSION: u8 = 1;
/// Bytes added to the plaintext: version 1 + ephemeral key 32 + nonce 24 + tag 16.
pub const OVERHEAD: usize = 1 + 32 + 24 + 16;
/// Bytes added by [`seal_signed`]: [`OVERHEAD`] + sender key 32 + signature 64.
pub const SIGNED_OVERHEAD: usize = OVERHEAD + 32 + 64;
/// Largest plaintext accepted (bounds memory on both sides).
pub const MAX_PLAINTEXT: usize = 64 * 1024 * 1024;

const HEADER: usize = 1 + 32;

fn derive_key(
    eph_pub: &[u8; 32],
    recipient_x: &[u8; 32],
    shared: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let mut w = Writer::new();
    w.var(eph_pub).var(recipient_x).var(shared);
    let material = Zeroizing::new(w.finish());
    Zeroizing::new(blake3::derive_key(domain::E2EE_KDF, &material))
}

/// Encrypts `plaintext` so that only `recipient` can read it. The sender stays anonymous.
pub fn seal(recipient: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(Error::TooLarge {
            what: "sealed-box plaintext",
            len: plaintext.len(),
            max: MAX_PLAINTEXT,
        });
    }
    let eph_secret = StaticSecret::from(rng::array::<32>()?);
    let eph_pub = XPublic::from(&eph_secret).to_bytes();
    let recipient_x = recipient.to_x25519();
    let shared = eph_secret.diffie_hellman(&XPublic::from(recipient_x));
    if !shared.was_contributory() {
        // Impossible for a validated (non-weak) recipient key; kept as a guard.
        return Err(Error::InvalidPublicKey);
    }
    let key = derive_key(&eph_pub, &recipient_x, shared.as_bytes());
    let nonce = rng::array::<24>()?;

    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.push(VERSION);
    out.extend_from_slice(&eph_pub);
    out.extend_from_slice(&nonce);
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &out[..HEADER],
            },
        )
        .map_err(|_| Error::TooLarge {
            what: "sealed-box plaintext",
            len: plaintext.len(),
            max: MAX_PLAINTEXT,
        })?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a box made by [`seal`] for `recipient`. Any alteration, a box for someone else,
/// or a malformed box is an error; nothing is returned unless the tag verifies.
pub fn open(recipient: &Identity, sealed: &[u8]) -> Result<Vec<u8>> {
    let mut r = Reader::new(sealed, "sealed box");
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion {
            what: "sealed box",
            version,
        });
    }
    let eph_pub: [u8; 32] = r.array()?;
    let nonce: [u8; 24] = r.array()?;
    let ct = r.rest();
    if ct.len() < 16 {
        return Err(Error::Truncated {
            what: "sealed box",
            needed: 16,
            available: ct.len(),
        });
    }
    if ct.len() > MAX_PLAINTEXT + 16 {
        return Err(Error::TooLarge {
            what: "sealed box",
            len: sealed.len(),
            max: MAX_PLAINTEXT + OVERHEAD,
        });
    }
    let shared = recipient
        .x25519_secret()
        .diffie_hellman(&XPublic::from(eph_pub));
    if !shared.was_contributory() {
        return Err(Error::DecryptFailed);
    }
    let key = derive_key(
        &eph_pub,
        &recipient.public_key().to_x25519(),
        shared.as_bytes(),
    );
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ct,
                aad: &sealed[..HEADER],
            },
        )
        .map_err(|_| Error::DecryptFailed)
}

fn sender_signing_bytes(recipient: &PublicKey, plaintext: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_domain(domain::E2EE_SENDER);
    w.fixed(recipient.as_bytes()).var(plaintext);
    w.finish()
}

/// Like [`seal`], with the sender's identity and signature inside the ciphertext:
/// `inner = sender key (32) || signature (64) || plaintext`, the signature covering the
/// recipient's key and the plaintext (so the recipient cannot re-seal it to a third party
/// as if it had been sent to them).
pub fn seal_signed(sender: &Identity, recipient: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>> {
    if plaintext.len() > MAX_PLAINTEXT - 96 {
        return Err(Error::TooLarge {
            what: "sealed-box plaintext",
            len: plaintext.len(),
            max: MAX_PLAINTEXT - 96,
        });
    }
    let sig = sender.sign(&sender_signing_bytes(recipient, plaintext));
    let mut inner = Zeroizing::new(Vec::with_capacity(96 + plaintext.len()));
    inner.extend_from_slice(sender.public_key().as_bytes());
    inner.extend_from_slice(&sig.0);
    inner.extend_from_slice(plaintext);
    seal(recipient, &inner)
}

/// Opens a box made by [`seal_signed`]; returns the verified sender key and the plaintext.
pub fn open_signed(recipient: &Identity, sealed: &[u8]) -> Result<(PublicKey, Vec<u8>)> {
    let inner = Zeroizing::new(open(recipient, sealed)?);
    let mut r = Reader::new(&inner, "signed sealed box");
    let sender = PublicKey::from_bytes(&r.array()?)?;
    let sig = ecomesh_types::Signature(r.array()?);
    let plaintext = r.rest();
    sender.verify(
        &sender_signing_bytes(recipient.public_key(), plaintext),
        &sig,
    )?;
    Ok((sender, plaintext.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sizes() {
        let bob = Identity::from_secret_bytes(&[2; 32]);
        for len in [0, 1, 100, 5000] {
            let pt = vec![0xA5; len];
            let sealed = seal(bob.public_key(), &pt).unwrap();
            assert_eq!(sealed.len(), len + OVERHEAD);
            assert_eq!(open(&bob, &sealed).unwrap(), pt);
        }
        // Fresh ephemeral key and nonce each time.
        assert_ne!(
            seal(bob.public_key(), b"x").unwrap(),
            seal(bob.public_key(), b"x").unwrap()
        );
    }

    #[test]
    fn wrong_recipient_fails() {
        let bob = Identity::from_secret_bytes(&[2; 32]);
        let eve = Identity::from_secret_bytes(&[3; 32]);
        let sealed = seal(bob.public_key(), b"secret").unwrap();
        assert!(matches!(open(&eve, &sealed), Err(Error::DecryptFailed)));
    }

    #[test]
    fn sender_is_not_in_clear_and_is_verified_inside() {
        let alice = Identity::from_secret_bytes(&[1; 32]);
        let bob = Identity::from_secret_bytes(&[2; 32]);
        let sealed = seal_signed(&alice, bob.public_key(), b"hi bob").unwrap();
        assert_eq!(sealed.len(), 6 + SIGNED_OVERHEAD);
        let a = alice.public_key().as_bytes();
        assert!(!sealed.windows(32).any(|w| w == a));
        assert!(!sealed.windows(32).any(|w| w == alice.peer_id().as_bytes()));
        let (sender, pt) = open_signed(&bob, &sealed).unwrap();
        assert_eq!(sender, *alice.public_key());
        assert_eq!(pt, b"hi bob");
        // An anonymous box is not a valid signed box.
        let anon = seal(bob.public_key(), &[0; 100]).unwrap();
        assert!(open_signed(&bob, &anon).is_err());
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        let bob = Identity::from_secret_bytes(&[2; 32]);
        assert!(matches!(open(&bob, &[]), Err(Error::Truncated { .. })));
        assert!(matches!(
            open(&bob, &[2; 80]),
            Err(Error::UnsupportedVersion { .. })
        ));
        let mut short = vec![VERSION];
        short.extend_from_slice(&[9; 60]);
        assert!(matches!(open(&bob, &short), Err(Error::Truncated { .. })));
        // Low-order ephemeral key (all zeros) is refused.
        let mut zero = vec![VERSION];
        zero.extend_from_slice(&[0; 32 + 24 + 16]);
        assert!(matches!(open(&bob, &zero), Err(Error::DecryptFailed)));
    }
}
