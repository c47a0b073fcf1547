//! The link exchange's mesh messages (type [`LINK_TYPE`]), their strict
//! codec and the keyed MACs and transcripts both sides compute.
//!
//! ```text
//! request   = 1 || code id (8) || nonce_b (16) || mac (32)
//! challenge = 2 || code id (8) || nonce_a (16) || issued_at_ms (u64 BE)
//!               || label len (u16 BE, <= 256) || label || wrapped user key (32)
//!               || declaration signature of A (64) || proof of A (64) || mac (32)
//! confirm   = 3 || code id (8) || declaration signature of B (64) || proof of B (64) || mac (32)
//! done      = 4 || code id (8) || mac (32)
//! refused   = 5 || code id (8) || reason (u8)
//! ```
//! A is the node that issued the code, B the one that typed it. Every MAC
//! is BLAKE3 keyed with a key derived from the code's secret, over a
//! message-specific string and the transcript `code id || nonce_a || nonce_b
//! || A's peer id || B's peer id` (the request's MAC has no nonce_a yet):
//! it proves the sender holds the code. Each proof is an Ed25519 signature
//! (domain [`PROOF_DOMAIN`]) over the role byte and that transcript: each side
//! signs the other's fresh nonce. The user key travels XORed with a pad
//! derived from the secret and both nonces, so it is used once.

use ecomesh_identity::{Identity, PublicKey};
use ecomesh_types::{PeerId, Signature};

use super::code::SECRET_LEN;

/// The mesh message type of the link exchange.
pub const LINK_TYPE: &str = "ecomesh/link";
/// The domain of the proofs each side signs.
pub const PROOF_DOMAIN: &str = "ecomesh 2026 link proof v1";
/// Longest user label.
pub(crate) const MAX_LABEL: usize = ecomesh_identity::device_link::MAX_LABEL_LEN;
/// Largest link message payload.
pub const MAX_LINK_MESSAGE: usize = 1 + 8 + 16 + 8 + 2 + MAX_LABEL + 32 + 64 + 64 + 32;

pub(crate) type CodeId = [u8; 8];
pub(crate) type Nonce = [u8; 16];
pub(crate) type Mac = [u8; 32];

/// Why the issuer refused a request (the `reason` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No such code, or the secret does not match.
    WrongCode = 1,
    /// The code's lifetime is over.
    Expired = 2,
    /// The code was used (or is being used by another device).
    AlreadyUsed = 3,
    /// The issuer could not complete (its files, its limits).
    Failed = 4,
}

impl Reason {
    fn from_u8(b: u8) -> Option<Reason> {
        Some(match b {
            1 => Reason::WrongCode,
            2 => Reason::Expired,
            3 => Reason::AlreadyUsed,
            4 => Reason::Failed,
            _ => return None,
        })
    }
}

/// One message of the exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LinkMessage {
    Request {
        code: CodeId,
        nonce_b: Nonce,
        mac: Mac,
    },
    Challenge {
        code: CodeId,
        nonce_a: Nonce,
        issued_at_ms: u64,
        label: String,
        wrapped_key: [u8; 32],
        decl_sig: Signature,
        proof: Signature,
        mac: Mac,
    },
    Confirm {
        code: CodeId,
        decl_sig: Signature,
        proof: Signature,
        mac: Mac,
    },
    Done {
        code: CodeId,
        mac: Mac,
    },
    Refused {
        code: CodeId,
        reason: Reason,
    },
}

impl LinkMessage {
    pub(crate) fn code(&self) -> CodeId {
        match self {
            LinkMessage::Request { code, .. }
            | LinkMessage::Challenge { code, .. }
            | LinkMessage::Confirm { code, .. }
            | LinkMessage::Done { code, .. }
            | LinkMessage::Refused { code, .. } => *code,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(160);
        match self {
            LinkMessage::Request { code, nonce_b, mac } => {
                w.push(1);
                w.extend_from_slice(code);
                w.extend_from_slice(nonce_b);
                w.extend_from_slice(mac);
            }
            LinkMessage::Challenge {
                code,
                nonce_a,
                issued_at_ms,
                label,
                wrapped_key,
                decl_sig,
                proof,
                mac,
            } => {
                w.push(2);
                w.extend_from_slice(code);
                w.extend_from_slice(nonce_a);
                w.extend_from_slice(&issued_at_ms.to_be_bytes());
                // Labels are at most MAX_LABEL (256) bytes, checked where they are made.
                w.extend_from_slice(&(label.len() as u16).to_be_bytes());
                w.extend_from_slice(label.as_bytes());
                w.extend_from_slice(wrapped_key);
                w.extend_from_slice(&decl_sig.0);
                w.extend_from_slice(&proof.0);
                w.extend_from_slice(mac);
            }
            LinkMessage::Confirm {
                code,
                decl_sig,
                proof,
                mac,
            } => {
                w.push(3);
                w.extend_from_slice(code);
                w.extend_from_slice(&decl_sig.0);
                w.extend_from_slice(&proof.0);
                w.extend_from_slice(mac);
            }
            LinkMessage::Done { code, mac } => {
                w.push(4);
                w.extend_from_slice(code);
                w.extend_from_slice(mac);
            }
            LinkMessage::Refused { code, reason } => {
                w.push(5);
                w.extend_from_slice(code);
                w.push(*reason as u8);
            }
        }
        w
    }

    /// Decodes a payload; `None` for anything malformed (wrong kind or
    /// length, trailing bytes, a label that is too long or not UTF-8).
    pub(crate) fn decode(bytes: &[u8]) -> Option<LinkMessage> {
        if bytes.len() > MAX_LINK_MESSAGE {
            return None;
        }
        let mut r = Reader(bytes);
        let kind = r.take::<1>()?[0];
        let code = r.take::<8>()?;
        let m = match kind {
            1 => LinkMessage::Request {
                code,
                nonce_b: r.take()?,
                mac: r.take()?,
            },
            2 => {
                let nonce_a = r.take()?;
                let issued_at_ms = u64::from_be_bytes(r.take()?);
                let len = usize::from(u16::from_be_bytes(r.take()?));
                if len > MAX_LABEL {
                    return None;
                }
                let label = std::str::from_utf8(r.slice(len)?).ok()?.to_owned();
                LinkMessage::Challenge {
                    code,
                    nonce_a,
                    issued_at_ms,
                    label,
                    wrapped_key: r.take()?,
                    decl_sig: Signature(r.take()?),
                    proof: Signature(r.take()?),
                    mac: r.take()?,
                }
            }
            3 => LinkMessage::Confirm {
                code,
                decl_sig: Signature(r.take()?),
                proof: Signature(r.take()?),
                mac: r.take()?,
            },
            4 => LinkMessage::Done {
                code,
                mac: r.take()?,
            },
            5 => LinkMessage::Refused {
                code,
                reason: Reason::from_u8(r.take::<1>()?[0])?,
            },
            _ => return None,
        };
        r.0.is_empty().then_some(m)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn slice(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.slice(N)?.try_into().ok()
    }
}

/// The keys one code's secret gives.
pub(crate) struct CodeKeys {
    pub(crate) id: CodeId,
    mac_key: [u8; 32],
    secret: [u8; SECRET_LEN],
}

impl CodeKeys {
    pub(crate) fn new(secret: &[u8; SECRET_LEN]) -> CodeKeys {
        let id_full = blake3::derive_key("ecomesh 2026 link code id v1", secret);
        let mut id = [0u8; 8];
        id.copy_from_slice(&id_full[..8]);
        CodeKeys {
            id,
            mac_key: blake3::derive_key("ecomesh 2026 link mac v1", secret),
            secret: *secret,
        }
    }

    /// The MAC of `what` over `parts`.
    pub(crate) fn mac(&self, what: &[u8], parts: &[&[u8]]) -> Mac {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        h.update(&(what.len() as u64).to_be_bytes());
        h.update(what);
        for p in parts {
            h.update(&(p.len() as u64).to_be_bytes());
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// Compares a received MAC in constant time (blake3's `Hash` equality).
    pub(crate) fn check(&self, what: &[u8], parts: &[&[u8]], mac: &Mac) -> bool {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        h.update(&(what.len() as u64).to_be_bytes());
        h.update(what);
        for p in parts {
            h.update(&(p.len() as u64).to_be_bytes());
            h.update(p);
        }
        h.finalize() == blake3::Hash::from_bytes(*mac)
    }

    /// The one-time pad for the user key of this exchange.
    pub(crate) fn pad(&self, nonce_a: &Nonce, nonce_b: &Nonce) -> [u8; 32] {
        let mut material = Vec::with_capacity(SECRET_LEN + 32);
        material.extend_from_slice(&self.secret);
        material.extend_from_slice(nonce_a);
        material.extend_from_slice(nonce_b);
        blake3::derive_key("ecomesh 2026 link user key pad v1", &material)
    }
}

/// The transcript both proofs cover.
pub(crate) fn transcript(
    code: &CodeId,
    nonce_a: &Nonce,
    nonce_b: &Nonce,
    a: &PeerId,
    b: &PeerId,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(8 + 32 + 64);
    t.extend_from_slice(code);
    t.extend_from_slice(nonce_a);
    t.extend_from_slice(nonce_b);
    t.extend_from_slice(a.as_bytes());
    t.extend_from_slice(b.as_bytes());
    t
}

/// `role`'s proof over `transcript`.
pub(crate) fn prove(identity: &Identity, role: u8, transcript: &[u8]) -> Option<Signature> {
    let mut p = Vec::with_capacity(1 + transcript.len());
    p.push(role);
    p.extend_from_slice(transcript);
    identity.sign_with_domain(PROOF_DOMAIN, &p).ok()
}

/// Whether `proof` is `key`'s proof as `role` over `transcript`.
pub(crate) fn proof_ok(key: &PublicKey, role: u8, transcript: &[u8], proof: &Signature) -> bool {
    let mut p = Vec::with_capacity(1 + transcript.len());
    p.push(role);
    p.extend_from_slice(transcript);
    key.verify_with_domain(PROOF_DOMAIN, &p, proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<LinkMessage> {
        vec![
            LinkMessage::Request {
                code: [1; 8],
                nonce_b: [2; 16],
                mac: [3; 32],
            },
            LinkMessage::Challenge {
                code: [1; 8],
                nonce_a: [4; 16],
                issued_at_ms: 1_700_000_000_000,
                label: "user:x".to_owned(),
                wrapped_key: [5; 32],
                decl_sig: Signature([6; 64]),
                proof: Signature([7; 64]),
                mac: [8; 32],
            },
            LinkMessage::Confirm {
                code: [1; 8],
                decl_sig: Signature([6; 64]),
                proof: Signature([7; 64]),
                mac: [8; 32],
            },
            LinkMessage::Done {
                code: [1; 8],
                mac: [9; 32],
            },
            LinkMessage::Refused {
                code: [1; 8],
                reason: Reason::Expired,
            },
        ]
    }

    #[test]
    fn messages_round_trip_and_anything_else_is_refused() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(LinkMessage::decode(&bytes), Some(m.clone()));
            for cut in 0..bytes.len() {
                assert_eq!(
                    LinkMessage::decode(&bytes[..cut]),
                    None,
                    "{m:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(LinkMessage::decode(&longer), None);
        }
        assert_eq!(LinkMessage::decode(&[9; 9]), None);
        assert_eq!(LinkMessage::decode(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 99]), None);
    }

    #[test]
    fn macs_depend_on_the_secret_and_every_part() {
        let k = CodeKeys::new(&[1; SECRET_LEN]);
        let other = CodeKeys::new(&[2; SECRET_LEN]);
        let m = k.mac(b"req", &[b"ab", b"c"]);
        assert!(k.check(b"req", &[b"ab", b"c"], &m));
        assert!(!k.check(b"req", &[b"a", b"bc"], &m));
        assert!(!other.check(b"req", &[b"ab", b"c"], &m));
        assert_ne!(k.id, other.id);
    }
}
