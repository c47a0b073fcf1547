//! Messages that cross transports.

use std::fmt;
use std::str::FromStr;

use crate::{Error, PeerId};

/// A message identifier: a UUID, version 4 when built by [`MessageId::new_v4`].
///
/// Shown and parsed as the hyphenated lower-case UUID form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A version-4 UUID from 16 random bytes the caller supplies (this crate has no RNG).
    ///
    /// The version and variant bits are set; the other 122 bits are kept.
    pub fn new_v4(mut random: [u8; 16]) -> Self {
        random[6] = (random[6] & 0x0F) | 0x40;
        random[8] = (random[8] & 0x3F) | 0x80;
        MessageId(random)
    }

    /// The 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = Error;

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex digits of either case).
    fn from_str(s: &str) -> Result<Self, Error> {
        let bytes = s.as_bytes();
        if bytes.len() != 36 {
            return Err(Error::InvalidMessageId);
        }
        let mut out = [0_u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if bytes[i] != b'-' {
                    return Err(Error::InvalidMessageId);
                }
                i += 1;
                continue;
            }
            let hi = hex_digit(bytes[i]).ok_or(Error::InvalidMessageId)?;
            let lo = hex_digit(bytes[i + 1]).ok_or(Error::InvalidMessageId)?;
            out[n] = (hi << 4) | lo;
            n += 1;
            i += 2;
        }
        Ok(MessageId(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Delivery priority (seed 3.3); `Critical` is the most urgent.
///
/// `Ord` puts the most urgent first: `Critical < High < Normal < Low < Bulk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Priority {
    /// Emergency traffic: small messages go out on the longest-range link first.
    Critical,
    /// Ahead of normal traffic.
    High,
    /// The default.
    #[default]
    Normal,
    /// Behind normal traffic.
    Low,
    /// Background bulk replication.
    Bulk,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 5] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
        Priority::Bulk,
    ];

    /// The seed's name: `critical`, `high`, `normal`, `low` or `bulk`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
            Priority::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| Error::UnknownName {
                kind: "priority",
                name: s.to_owned(),
            })
    }
}

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// The all-zero placeholder of a message that is not signed yet; it never verifies.
    pub const UNSIGNED: Signature = Signature([0; 64]);

    /// Parses 64 raw bytes; any other length is `None`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Signature)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..)")
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                Signature::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Signature, A::Error> {
                let mut out = [0_u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(65, &self));
                }
                Ok(Signature(out))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// A message as it crosses any transport (seed 3.1), with every field of the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NetworkMessage {
    /// Unique message id (UUID v4); the mesh deduplicates by it.
    pub id: MessageId,
    /// Message type used for routing to a handler, e.g. `"sync-event"`.
    pub message_type: String,
    /// CBOR-encoded content.
    pub payload: Vec<u8>,
    /// The sender's peer id.
    pub sender: PeerId,
    /// The recipient, or `None` for a broadcast.
    pub recipient: Option<PeerId>,
    /// Creation time, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Time to live in seconds, counted from `timestamp_ms`.
    pub ttl_secs: u32,
    /// Incremented at each relay.
    pub hop_count: u8,
    /// The message is dropped when `hop_count` reaches this.
    pub max_hops: u8,
    /// Ed25519 signature over (type, payload, sender, timestamp), made by `ecomesh-identity`.
    pub signature: Signature,
}

impl NetworkMessage {
    /// Default time to live of the seed's store-and-forward: 7 days.
    pub const DEFAULT_TTL_SECS: u32 = 7 * 24 * 3600;
    /// Default hop limit of the seed's store-and-forward.
    pub const DEFAULT_MAX_HOPS: u8 = 10;

    /// When the message expires, in Unix milliseconds (saturating).
    pub fn expires_at_ms(&self) -> u64 {
        self.timestamp_ms
            .saturating_add(u64::from(self.ttl_secs) * 1000)
    }

    /// True once `now_ms` is at or past [`expires_at_ms`](Self::expires_at_ms).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms()
    }

    /// True when another relay hop is not allowed.
    pub fn hops_exhausted(&self) -> bool {
        self.hop_count >= self.max_hops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_round_trip_and_v4_bits() {
        let id = MessageId::new_v4([0xFF; 16]);
        let text = id.to_string();
        assert_eq!(text, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(text.parse::<MessageId>().unwrap(), id);
        assert_eq!(
            "123E4567-E89B-12D3-A456-426614174000"
                .parse::<MessageId>()
                .unwrap()
                .to_string(),
            "123e4567-e89b-12d3-a456-426614174000"
        );
        for bad in [
            "",
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400g",
            "123e4567-e89b-12d3-a456_426614174000",
            "123e4567-e89b-12d3-a456-4266141740000",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn priority_names_and_order() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
        }
        assert!(Priority::Critical < Priority::Bulk);
        assert!("urgent".parse::<Priority>().is_err());
    }

    #[test]
    fn expiry_and_hops() {
        let m = NetworkMessage {
            id: MessageId::new_v4([0; 16]),
            message_type: "t".into(),
            payload: vec![],
            sender: PeerId::from_digest([0; 32]),
            recipient: None,
            timestamp_ms: 1_000,
            ttl_secs: 2,
            hop_count: 9,
            max_hops: 10,
            signature: Signature::UNSIGNED,
        };
        assert!(!m.is_expired(2_999));
        assert!(m.is_expired(3_000));
        assert!(!m.hops_exhausted());
        assert!(NetworkMessage { hop_count: 10, ..m }.hops_exhausted());
    }
}
