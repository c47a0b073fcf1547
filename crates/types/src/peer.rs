//! Peer identity and the peer table entry.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::{Error, TransportType, Value, base58};

/// A peer's identity: the 32-byte SHA-256 digest of its Ed25519 public key (seed 4.2).
///
/// `ecomesh-identity` computes it from a key; this crate only carries the bytes.
/// Its text form is Base58 (Bitcoin alphabet), 43 or 44 characters.
///
/// `Ord` is the byte order, which is fast and stable; [`PeerId::cmp_text`] gives
/// the order of the Base58 text, which the seed's tie-breaks use.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// Length of the digest in bytes.
    pub const LEN: usize = 32;

    /// Wraps a SHA-256 digest of an Ed25519 public key.
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        PeerId(digest)
    }

    /// Parses the 32 raw bytes; any other length is [`Error::InvalidPeerId`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::InvalidPeerId { len: bytes.len() })?;
        Ok(PeerId(digest))
    }

    /// The digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Base58 text form (same as `Display`).
    pub fn to_base58(&self) -> String {
        base58::encode(&self.0)
    }

    /// Compares the Base58 text forms, as the seed's "lexicographically greater peerId" does.
    /// Allocates nothing.
    pub fn cmp_text(&self, other: &PeerId) -> Ordering {
        if self == other {
            return Ordering::Equal;
        }
        let (a, a_len) = base58::encode_32(&self.0);
        let (b, b_len) = base58::encode_32(&other.0);
        a[..a_len].cmp(&b[..b_len])
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base58())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = Error;

    /// Parses Base58 text that decodes to exactly 32 bytes.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bytes = base58::decode(s, Self::LEN)?;
        PeerId::from_slice(&bytes)
    }
}

/// What one transport (or the mesh manager, merged over transports) knows about a peer.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PeerInfo {
    /// The peer's identity.
    pub peer_id: PeerId,
    /// A human-readable name the peer announced, if any.
    pub display_name: Option<String>,
    /// The transports this peer is reachable on, without duplicates.
    pub transports: Vec<TransportType>,
    /// When the peer was last heard from, in Unix milliseconds.
    pub last_seen_ms: u64,
    /// Local, subjective reputation in `0.0..=1.0` (seed 4.3).
    pub reputation: f64,
    /// Transport-specific facts (addresses, protocol version, collections...).
    pub metadata: BTreeMap<String, Value>,
}

impl PeerInfo {
    /// The `metadata` key under which a transport that authenticated the peer puts its
    /// 32-byte Ed25519 public key (`Value::Bytes`); receivers check it hashes to `peer_id`.
    pub const PUBLIC_KEY: &'static str = "publicKey";

    /// A peer seen on one transport at `last_seen_ms`, with neutral reputation 0.5.
    pub fn new(peer_id: PeerId, transport: TransportType, last_seen_ms: u64) -> Self {
        PeerInfo {
            peer_id,
            display_name: None,
            transports: vec![transport],
            last_seen_ms,
            reputation: 0.5,
            metadata: BTreeMap::new(),
        }
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::PeerId;

    impl serde::Serialize for PeerId {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                s.serialize_str(&self.to_base58())
            } else {
                s.serialize_bytes(self.as_bytes())
            }
        }
    }

    impl<'de> serde::Deserialize<'de> for PeerId {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = PeerId;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a Base58 peer id or 32 bytes")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PeerId, E> {
                    v.parse().map_err(E::custom)
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<PeerId, E> {
                    PeerId::from_slice(v).map_err(E::custom)
                }
            }
            if d.is_human_readable() {
                d.deserialize_str(Visitor)
            } else {
                d.deserialize_bytes(Visitor)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_length() {
        let id = PeerId::from_digest([0xAB; 32]);
        let text = id.to_string();
        assert!(text.len() == 43 || text.len() == 44);
        assert_eq!(text.parse::<PeerId>().unwrap(), id);
        // All-ones digest is the largest value: 44 characters.
        assert_eq!(PeerId::from_digest([0xFF; 32]).to_string().len(), 44);
        // Leading zero bytes become leading '1's.
        assert_eq!(PeerId::from_digest([0; 32]).to_string(), "1".repeat(32));
    }

    #[test]
    fn sha256_of_empty_input_has_known_base58() {
        // SHA-256("") = e3b0c442...b855; its Base58 form, computed independently
        // (Python: repeated divmod by 58 of int.from_bytes(hashlib.sha256(b"").digest())).
        let digest = [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ];
        let id = PeerId::from_digest(digest);
        assert_eq!(
            id.to_string(),
            "GKot5hBsd81kMupNCXHaqbhv3huEbxAFMLnpcX2hniwn"
        );
        assert_eq!(
            "GKot5hBsd81kMupNCXHaqbhv3huEbxAFMLnpcX2hniwn"
                .parse::<PeerId>()
                .unwrap(),
            id
        );
    }

    #[test]
    fn wrong_lengths_are_typed_errors() {
        assert!(matches!(
            "2g".parse::<PeerId>(),
            Err(Error::InvalidPeerId { len: 1 })
        ));
        assert!(matches!(
            PeerId::from_slice(&[1; 33]),
            Err(Error::InvalidPeerId { len: 33 })
        ));
        // 45 characters of 'z' decode to more than 32 bytes.
        assert!("z".repeat(45).parse::<PeerId>().is_err());
        assert!("".parse::<PeerId>().is_err());
    }

    #[test]
    fn text_order_differs_from_byte_order_where_lengths_differ() {
        // A leading zero byte gives a leading '1', which sorts first as text.
        let mut small = [0xFF; 32];
        small[0] = 0;
        let a = PeerId::from_digest(small);
        let b = PeerId::from_digest([0x01; 32]);
        assert_eq!(a.cmp(&b), Ordering::Less);
        assert_eq!(a.cmp_text(&b), a.to_string().cmp(&b.to_string()));
    }

    proptest::proptest! {
        #[test]
        fn prop_cmp_text_is_the_order_of_the_text(a in proptest::array::uniform32(0_u8..3), b in proptest::array::uniform32(0_u8..3)) {
            let (a, b) = (PeerId::from_digest(a), PeerId::from_digest(b));
            proptest::prop_assert_eq!(a.cmp_text(&b), a.to_string().cmp(&b.to_string()));
        }
    }
}
