//! CIDv1 content identifiers: compute, print, parse, verify, convert.
//!
//! The seed's choice (5.1) is CIDv1 with codec dag-cbor (0x71), a sha2-256
//! multihash and base32-lower text (`bafyrei...`); blake3 (multihash 0x1e,
//! `bafyr4i...`) is the faster option.

use std::str::FromStr;

use ecomesh_types::{ContentId, Value};
use sha2::Digest as _;

use crate::cbor::Limits;
use crate::error::{Result, WireError};

pub use cid::Cid;
use cid::Version;
use cid::multibase::Base;

/// Multicodec code of DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of DAG-JSON.
pub const DAG_JSON: u64 = 0x0129;
/// Multicodec code of raw bytes.
pub const RAW: u64 = 0x55;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of blake3 (32-byte output).
pub const BLAKE3: u64 = 0x1e;

/// The hash functions this crate computes CIDs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HashAlg {
    /// sha2-256, the seed's choice and the default.
    #[default]
    Sha2_256,
    /// blake3 with a 32-byte digest.
    Blake3,
}

impl HashAlg {
    /// The multihash code.
    pub const fn code(self) -> u64 {
        match self {
            HashAlg::Sha2_256 => SHA2_256,
            HashAlg::Blake3 => BLAKE3,
        }
    }

    /// The algorithm of a multihash code, if this crate supports it.
    pub fn from_code(code: u64) -> Result<Self> {
        match code {
            SHA2_256 => Ok(HashAlg::Sha2_256),
            BLAKE3 => Ok(HashAlg::Blake3),
            code => Err(WireError::UnsupportedHash { code }),
        }
    }

    /// The 32-byte digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> [u8; 32] {
        match self {
            HashAlg::Sha2_256 => {
                let out = sha2::Sha256::digest(bytes);
                let mut digest = [0_u8; 32];
                digest.copy_from_slice(&out);
                digest
            }
            HashAlg::Blake3 => *blake3::hash(bytes).as_bytes(),
        }
    }
}

fn multihash(alg: HashAlg, digest: &[u8; 32]) -> cid::multihash::Multihash<64> {
    // A 32-byte digest always fits the 64-byte multihash buffer.
    cid::multihash::Multihash::wrap(alg.code(), digest)
        .expect("a 32-byte digest fits a 64-byte multihash")
}

/// The CIDv1 of `bytes` under `codec`, hashed with `alg`.
pub fn cid_for_bytes(codec: u64, alg: HashAlg, bytes: &[u8]) -> Cid {
    Cid::new_v1(codec, multihash(alg, &alg.digest(bytes)))
}

/// The CIDv1 (dag-cbor, sha2-256) of bytes that are already DAG-CBOR.
pub fn cid_of_dag_cbor(bytes: &[u8]) -> Cid {
    cid_for_bytes(DAG_CBOR, HashAlg::Sha2_256, bytes)
}

/// The CIDv1 (dag-cbor, sha2-256) of a value's canonical DAG-CBOR encoding.
///
/// Fails only where [`crate::to_dag_cbor`] fails.
pub fn cid_of(value: &Value) -> Result<Cid> {
    cid_of_with(value, HashAlg::Sha2_256)
}

/// The CIDv1 (dag-cbor) of a value's canonical DAG-CBOR encoding, hashed with `alg`.
pub fn cid_of_with(value: &Value, alg: HashAlg) -> Result<Cid> {
    // Hashed straight from the scratch buffer: the bytes are not kept.
    match alg {
        HashAlg::Sha2_256 => {
            crate::dag_cbor::with_encoded_sha256(value, &Limits::DEFAULT, |_, digest| {
                Cid::new_v1(DAG_CBOR, multihash(alg, &digest))
            })
        }
        HashAlg::Blake3 => crate::dag_cbor::with_encoded(value, &Limits::DEFAULT, |bytes| {
            cid_for_bytes(DAG_CBOR, alg, bytes)
        }),
    }
}

/// A value's canonical DAG-CBOR bytes together with their CID: a block as a
/// store keeps it.
pub fn encode_block(value: &Value, alg: HashAlg) -> Result<(Vec<u8>, Cid)> {
    match alg {
        HashAlg::Sha2_256 => {
            crate::dag_cbor::with_encoded_sha256(value, &Limits::DEFAULT, |bytes, digest| {
                (
                    bytes.to_vec(),
                    Cid::new_v1(DAG_CBOR, multihash(alg, &digest)),
                )
            })
        }
        HashAlg::Blake3 => crate::dag_cbor::with_encoded(value, &Limits::DEFAULT, |bytes| {
            (bytes.to_vec(), cid_for_bytes(DAG_CBOR, alg, bytes))
        }),
    }
}

/// Checks that `bytes` hash to `expected` ("these bytes have this CID").
///
/// The hash function is the one `expected` names (sha2-256 or blake3, else
/// [`WireError::UnsupportedHash`]); a different digest is
/// [`WireError::CidMismatch`]. The codec is not checked against the bytes:
/// use [`decode_verified`] to also require that they are canonical DAG-CBOR.
pub fn verify(bytes: &[u8], expected: &Cid) -> Result<()> {
    let mh = expected.hash();
    let alg = HashAlg::from_code(mh.code())?;
    let digest = alg.digest(bytes);
    if mh.size() == 32 && mh.digest() == digest {
        return Ok(());
    }
    let actual_mh = multihash(alg, &digest);
    let actual = match expected.version() {
        Version::V0 => Cid::new_v0(actual_mh).map(|c| c.to_string()),
        Version::V1 => Ok(Cid::new_v1(expected.codec(), actual_mh).to_string()),
    }
    .unwrap_or_else(|_| format!("{actual_mh:?}"));
    Err(WireError::CidMismatch {
        expected: expected.to_string(),
        actual,
    })
}

/// Verifies `bytes` against `expected`, then decodes them as canonical DAG-CBOR.
///
/// `expected` must have the dag-cbor codec.
pub fn decode_verified(bytes: &[u8], expected: &Cid, limits: &Limits) -> Result<Value> {
    if expected.codec() != DAG_CBOR {
        return Err(WireError::InvalidCid {
            reason: format!("codec 0x{:x} is not dag-cbor", expected.codec()),
        });
    }
    verify(bytes, expected)?;
    crate::dag_cbor::from_dag_cbor_with(bytes, limits)
}

/// The canonical text form: base32-lower multibase (`b...`) for CIDv1, base58btc
/// (`Qm...`) for CIDv0.
pub fn cid_to_text(cid: &Cid) -> String {
    cid.to_string()
}

/// Parses a CID's text form strictly: CIDv1 only in canonical base32-lower
/// (`bafy...`), CIDv0 only in base58btc (`Qm...`), nothing else (no other
/// multibase, no `/ipfs/` prefix, no padding or upper case).
pub fn parse_cid(text: &str) -> Result<Cid> {
    let invalid = |reason: &str| WireError::InvalidCid {
        reason: reason.to_owned(),
    };
    if text.starts_with("Qm") {
        let bytes = Base::Base58Btc
            .decode(text)
            .map_err(|_| invalid("invalid base58btc"))?;
        let cid = cid_from_binary(&bytes)?;
        if cid.version() != Version::V0 || cid.to_string() != text {
            return Err(invalid("not a canonical CIDv0"));
        }
        return Ok(cid);
    }
    let (base, bytes) = cid::multibase::decode(text).map_err(|_| invalid("invalid multibase"))?;
    if base != Base::Base32Lower {
        return Err(invalid("CIDv1 text must be base32-lower (prefix 'b')"));
    }
    let cid = cid_from_binary(&bytes)?;
    if cid.version() != Version::V1 {
        return Err(invalid("a CIDv0 must be written in base58btc"));
    }
    if cid.to_string() != text {
        return Err(invalid("not the canonical base32-lower form"));
    }
    Ok(cid)
}

/// Checks that `bytes` is exactly one canonical binary CID.
pub(crate) fn check_binary_cid(bytes: &[u8]) -> Result<Cid, &'static str> {
    let cid = Cid::try_from(bytes).map_err(|_| "not a binary CID")?;
    if cid.encoded_len() != bytes.len() {
        return Err("bytes after the CID");
    }
    // Re-encoded on the stack (a CID with a digest of up to 64 bytes takes
    // at most 94), compared without allocating.
    let mut canonical = [0_u8; 96];
    let mut rest = &mut canonical[..];
    match cid.write_bytes(&mut rest) {
        Ok(n) if canonical.get(..n) == Some(bytes) => Ok(cid),
        _ => Err("CID not in canonical binary form"),
    }
}

/// Parses exactly one canonical binary CID (the form [`ContentId`] holds).
pub fn cid_from_binary(bytes: &[u8]) -> Result<Cid> {
    check_binary_cid(bytes).map_err(|reason| WireError::InvalidCid {
        reason: reason.to_owned(),
    })
}

/// The [`ContentId`] (binary CID bytes) of a CID.
pub fn to_content_id(cid: &Cid) -> ContentId {
    ContentId(cid.to_bytes())
}

/// The CID a [`ContentId`] holds; fails unless it is exactly one canonical binary CID.
pub fn from_content_id(id: &ContentId) -> Result<Cid> {
    cid_from_binary(&id.0)
}

/// A [`Value::Link`] to `cid`.
pub fn link(cid: &Cid) -> Value {
    Value::Link(to_content_id(cid))
}

/// Parses the canonical text form of a CID straight into a [`ContentId`].
pub fn parse_content_id(text: &str) -> Result<ContentId> {
    parse_cid(text).map(|c| to_content_id(&c))
}

/// A newtype with `FromStr`/`Display` for CID text, for CLIs and configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidText(pub Cid);

impl FromStr for CidText {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self> {
        parse_cid(s).map(CidText)
    }
}

impl std::fmt::Display for CidText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&cid_to_text(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_map_cid() {
        let cid = cid_of(&Value::Map(Default::default())).unwrap();
        assert_eq!(
            cid.to_string(),
            "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua"
        );
        assert_eq!(parse_cid(&cid.to_string()).unwrap(), cid);
        verify(&[0xa0], &cid).unwrap();
        assert!(matches!(
            verify(&[0x80], &cid),
            Err(WireError::CidMismatch { .. })
        ));
    }

    #[test]
    fn blake3_cid_has_its_own_prefix_and_verifies() {
        let v = Value::from("hello");
        let cid = cid_of_with(&v, HashAlg::Blake3).unwrap();
        assert_eq!(cid.hash().code(), BLAKE3);
        assert!(cid.to_string().starts_with("bafyr4i"), "{cid}");
        let bytes = crate::to_dag_cbor(&v).unwrap();
        verify(&bytes, &cid).unwrap();
        assert_eq!(
            cid.hash().digest(),
            blake3::hash(&bytes).as_bytes().as_slice()
        );
        assert_ne!(cid, cid_of(&v).unwrap());
    }

    #[test]
    fn strict_text_parsing() {
        let good = "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua";
        parse_cid(good).unwrap();
        for bad in [
            "",
            "b",
            "BAFYREIGBTJ4X7IP5LEGNFZNUFUOPL4SG4KNZC2COF6DUAS4B3Q2FY6SWUA",
            "Bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua",
            "/ipfs/bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua",
            "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swu",
            "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swuaa",
            "zdpuAmN3Tte8EjskEpmETN5ELkxQjx2CDBFbxfB9J8pjfGt1T",
            "mAXESIA",
        ] {
            assert!(parse_cid(bad).is_err(), "{bad}");
        }
        let v0 = "QmRgutAxd8t7oGkSm4wmeuByG6M51wcTso6cubDdQtuEfL";
        assert_eq!(parse_cid(v0).unwrap().to_string(), v0);
    }

    #[test]
    fn content_id_conversions_are_exact() {
        let cid = cid_of(&Value::Null).unwrap();
        let id = to_content_id(&cid);
        assert_eq!(from_content_id(&id).unwrap(), cid);
        let mut longer = id.0.clone();
        longer.push(0);
        assert!(from_content_id(&ContentId(longer)).is_err());
        assert!(from_content_id(&ContentId(id.0[..10].to_vec())).is_err());
        assert!(from_content_id(&ContentId(vec![])).is_err());
    }

    #[test]
    fn unsupported_hash_is_typed() {
        // sha2-512 multihash (0x13) with a 64-byte digest.
        let mh = cid::multihash::Multihash::<64>::wrap(0x13, &[7; 64]).unwrap();
        let cid = Cid::new_v1(DAG_CBOR, mh);
        assert_eq!(
            verify(b"x", &cid),
            Err(WireError::UnsupportedHash { code: 0x13 })
        );
    }
}
