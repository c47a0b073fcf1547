//! Passphrase-protected identity backups (issue 20 item 4): export the identity so a lost
//! device does not lose the user, import it on a new one.
//!
//! Format (version 1, 134 bytes, big-endian, as every encoding of this crate):
//!
//! ```text
//! kind 0xB1 || version 1 || m_cost KiB u32 || t_cost u32 || p_cost u32 || salt (16)
//!     || nonce (24) || XChaCha20-Poly1305(key, nonce, seed (32) || public key (32),
//!                                          aad = every byte before the nonce)
//! key = Argon2id(passphrase, salt, m_cost, t_cost, p_cost), 32 bytes
//! ```
//!
//! The header is authenticated, so a backup whose cost parameters were lowered does not
//! open. Decoding is bounded before any work: a backup asking for more than
//! [`MAX_M_COST_KIB`] of memory or more than [`MAX_T_COST`] passes is refused, so a
//! crafted file cannot make an import allocate gigabytes. A wrong passphrase and a damaged
//! backup are the same error ([`Error::DecryptFailed`]): the format cannot tell them apart
//! and does not try.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::{Identity, rng};

const KIND: u8 = 0xB1;
/// Version byte of the backup format.
pub const VERSION: u8 = 1;
const WHAT: &str = "identity backup";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const PLAIN_LEN: usize = 64;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 2 + 4 * 3 + SALT_LEN;
/// Size of a backup in bytes.
pub const BACKUP_LEN: usize = HEADER_LEN + NONCE_LEN + PLAIN_LEN + TAG_LEN;
/// Largest memory cost an import accepts: 1 GiB.
pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
/// Largest number of passes an import accepts.
pub const MAX_T_COST: u32 = 64;
/// Largest parallelism an import accepts.
pub const MAX_P_COST: u32 = 16;
/// Shortest passphrase [`export`] accepts, in bytes.
pub const MIN_PASSPHRASE: usize = 8;

/// Argon2id cost parameters of a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl BackupParams {
    /// RFC 9106's second recommended option (64 MiB, 3 passes), with one lane: about a
    /// quarter of a second on a phone-class core, per guess, for whoever holds the file.
    pub const RECOMMENDED: BackupParams = BackupParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Cheap parameters for tests and fuzzing only: they protect nothing.
    pub const INSECURE_FOR_TESTS: BackupParams = BackupParams {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    };

    /// Parameters with explicit costs; [`export`] checks them against the import bounds.
    pub fn new(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Self {
        BackupParams {
            m_cost_kib,
            t_cost,
            p_cost,
        }
    }

    fn check(self) -> Result<Params> {
        if self.m_cost_kib > MAX_M_COST_KIB {
            return Err(Error::TooLarge {
                what: "backup memory cost (KiB)",
                len: self.m_cost_kib as usize,
                max: MAX_M_COST_KIB as usize,
            });
        }
        if self.t_cost > MAX_T_COST {
            return Err(Error::TooLarge {
                what: "backup time cost",
                len: self.t_cost as usize,
                max: MAX_T_COST as usize,
            });
        }
        if self.p_cost > MAX_P_COST {
            return Err(Error::TooLarge {
                what: "backup parallelism",
                len: self.p_cost as usize,
                max: MAX_P_COST as usize,
            });
        }
        Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32)).map_err(|_| {
            Error::Decode {
                what: WHAT,
                reason: "Argon2 parameters out of range (memory below 8 KiB per lane, or zero)",
            }
        })
    }
}

fn derive(passphrase: &[u8], salt: &[u8], params: Params) -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0_u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut key[..])
        .map_err(|_| Error::InvalidArgument("Argon2 refused the passphrase or salt"))?;
    Ok(key)
}

/// The identity encrypted under `passphrase`, as [`BACKUP_LEN`] bytes to store anywhere.
///
/// Fails with [`Error::InvalidArgument`] for a passphrase shorter than
/// [`MIN_PASSPHRASE`] bytes, and with [`Error::TooLarge`] for costs an import would refuse.
pub fn export(identity: &Identity, passphrase: &[u8], params: BackupParams) -> Result<Vec<u8>> {
    if passphrase.len() < MIN_PASSPHRASE {
        return Err(Error::InvalidArgument(
            "a backup passphrase needs at least 8 bytes",
        ));
    }
    let argon = params.check()?;
    let salt = rng::array::<SALT_LEN>()?;
    let nonce = rng::array::<NONCE_LEN>()?;
    let mut header = Writer::object(KIND, VERSION);
    header
        .fixed(&params.m_cost_kib.to_be_bytes())
        .fixed(&params.t_cost.to_be_bytes())
        .fixed(&params.p_cost.to_be_bytes())
        .fixed(&salt);
    let header = header.finish();
    let key = derive(passphrase, &salt, argon)?;
    let mut plain = Zeroizing::new([0_u8; PLAIN_LEN]);
    plain[..32].copy_from_slice(&identity.secret_seed()[..]);
    plain[32..].copy_from_slice(identity.public_key().as_bytes());
    let sealed = XChaCha20Poly1305::new(&(*key).into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &plain[..],
                aad: &header,
            },
        )
        .map_err(|_| Error::InvalidArgument("encryption failed"))?;
    let mut out = Vec::with_capacity(BACKUP_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    debug_assert_eq!(out.len(), BACKUP_LEN);
    Ok(out)
}

/// The cost parameters a backup names, checked against the import bounds, without
/// deriving anything: cheap, for showing what an import will cost.
pub fn params_of(backup: &[u8]) -> Result<BackupParams> {
    let (params, _, _) = parse(backup)?;
    Ok(params)
}

fn parse(backup: &[u8]) -> Result<(BackupParams, &[u8], &[u8])> {
    if backup.len() != BACKUP_LEN {
        return Err(if backup.len() < BACKUP_LEN {
            Error::Truncated {
                what: WHAT,
                needed: BACKUP_LEN,
                available: backup.len(),
            }
        } else {
            Error::TooLarge {
                what: WHAT,
                len: backup.len(),
                max: BACKUP_LEN,
            }
        });
    }
    let mut r = Reader::object(backup, WHAT, KIND, VERSION)?;
    let m_cost_kib = u32::from_be_bytes(r.array()?);
    let t_cost = u32::from_be_bytes(r.array()?);
    let p_cost = u32::from_be_bytes(r.array()?);
    let params = BackupParams {
        m_cost_kib,
        t_cost,
        p_cost,
    };
    params.check()?;
    let _salt = r.take(SALT_LEN)?;
    let rest = r.rest();
    Ok((params, &backup[..HEADER_LEN], rest))
}

/// The identity in `backup`, decrypted with `passphrase`.
///
/// Every malformed input is a typed error, checked before any key derivation; a wrong
/// passphrase or altered bytes are [`Error::DecryptFailed`].
pub fn import(backup: &[u8], passphrase: &[u8]) -> Result<Identity> {
    let (params, header, rest) = parse(backup)?;
    let argon = params.check()?;
    let key = derive(passphrase, &header[HEADER_LEN - SALT_LEN..], argon)?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| Error::Truncated {
        what: WHAT,
        needed: NONCE_LEN,
        available: nonce.len(),
    })?;
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new(&(*key).into())
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: header,
                },
            )
            .map_err(|_| Error::DecryptFailed)?,
    );
    let mut seed = Zeroizing::new([0_u8; 32]);
    seed.copy_from_slice(&plain[..32]);
    let identity = Identity::from_secret_bytes(&seed);
    if identity.public_key().as_bytes()[..] != plain[32..] {
        return Err(Error::Decode {
            what: WHAT,
            reason: "the public key does not match the secret key",
        });
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &[u8] = b"correct horse battery staple";

    fn backup() -> (Identity, Vec<u8>) {
        let id = Identity::generate().unwrap();
        let b = export(&id, PASS, BackupParams::INSECURE_FOR_TESTS).unwrap();
        (id, b)
    }

    #[test]
    fn round_trip_gives_the_same_identity() {
        let (id, b) = backup();
        assert_eq!(b.len(), BACKUP_LEN);
        let back = import(&b, PASS).unwrap();
        assert_eq!(back.peer_id(), id.peer_id());
        assert_eq!(*back.secret_seed(), *id.secret_seed());
        assert_eq!(params_of(&b).unwrap(), BackupParams::INSECURE_FOR_TESTS);
    }

    #[test]
    fn the_secret_is_not_in_the_backup() {
        let (id, b) = backup();
        let seed = id.secret_seed();
        assert!(!b.windows(32).any(|w| w == &seed[..]));
        assert!(!b.windows(32).any(|w| w == id.public_key().as_bytes()));
    }

    #[test]
    fn two_exports_differ() {
        let id = Identity::generate().unwrap();
        let a = export(&id, PASS, BackupParams::INSECURE_FOR_TESTS).unwrap();
        let b = export(&id, PASS, BackupParams::INSECURE_FOR_TESTS).unwrap();
        assert_ne!(a, b, "salt and nonce are fresh per export");
    }

    #[test]
    fn wrong_passphrase_fails_typed() {
        let (_, b) = backup();
        assert!(matches!(
            import(&b, b"correct horse battery stapl3"),
            Err(Error::DecryptFailed)
        ));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let (_, b) = backup();
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x01;
            assert!(import(&d, PASS).is_err(), "flip at byte {i} was accepted");
        }
    }

    #[test]
    fn lowered_costs_do_not_open() {
        let id = Identity::generate().unwrap();
        let b = export(&id, PASS, BackupParams::new(16, 2, 1)).unwrap();
        let mut d = b.clone();
        d[2..6].copy_from_slice(&8_u32.to_be_bytes());
        assert!(matches!(import(&d, PASS), Err(Error::DecryptFailed)));
        let mut d = b;
        d[6..10].copy_from_slice(&1_u32.to_be_bytes());
        assert!(matches!(import(&d, PASS), Err(Error::DecryptFailed)));
    }

    #[test]
    fn costs_beyond_the_bounds_are_refused_before_any_work() {
        let (_, b) = backup();
        let mut d = b.clone();
        d[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(import(&d, PASS), Err(Error::TooLarge { .. })));
        let mut d = b.clone();
        d[6..10].copy_from_slice(&1000_u32.to_be_bytes());
        assert!(matches!(import(&d, PASS), Err(Error::TooLarge { .. })));
        let mut d = b.clone();
        d[10..14].copy_from_slice(&0_u32.to_be_bytes());
        assert!(matches!(import(&d, PASS), Err(Error::Decode { .. })));
        let id = Identity::generate().unwrap();
        assert!(matches!(
            export(&id, PASS, BackupParams::new(MAX_M_COST_KIB + 1, 1, 1)),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn wrong_lengths_kinds_and_versions_are_typed() {
        let (_, b) = backup();
        assert!(matches!(
            import(&b[..BACKUP_LEN - 1], PASS),
            Err(Error::Truncated { .. })
        ));
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(import(&long, PASS), Err(Error::TooLarge { .. })));
        let mut d = b.clone();
        d[0] = 0xB2;
        assert!(matches!(import(&d, PASS), Err(Error::Decode { .. })));
        let mut d = b;
        d[1] = 2;
        assert!(matches!(
            import(&d, PASS),
            Err(Error::UnsupportedVersion { version: 2, .. })
        ));
        assert!(import(&[], PASS).is_err());
    }

    #[test]
    fn short_passphrases_are_refused_at_export() {
        let id = Identity::generate().unwrap();
        assert!(matches!(
            export(&id, b"short", BackupParams::INSECURE_FOR_TESTS),
            Err(Error::InvalidArgument(_))
        ));
    }
}
