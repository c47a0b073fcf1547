//! [`NetworkMessage`] codecs: the full canonical DAG-CBOR form and a compact
//! form for constrained links (LoRa, BLE).
//!
//! **Full form** (DAG-CBOR map, every field, seed 3.1 names): `id` (16 bytes),
//! `type` (text), `payload` (bytes), `sender` (32 bytes), `recipient` (32
//! bytes, or `null` for a broadcast), `timestamp` (Unix ms), `ttl` (seconds),
//! `hopCount`, `maxHops`, `signature` (64 bytes).
//!
//! **Compact form** (deterministic CBOR, *not* DAG-CBOR because its keys are
//! integers): a map with small unsigned keys in ascending order, 0 `id`,
//! 1 `type`, 2 `payload`, 3 `sender`, 4 `recipient`, 5 `timestamp`, 6 `ttl`,
//! 7 `hopCount`, 8 `maxHops`, 9 `signature`. Fields at their defaults are
//! omitted and must be: `recipient` when broadcast, `ttl` at
//! [`NetworkMessage::DEFAULT_TTL_SECS`], `hopCount` at 0, `maxHops` at
//! [`NetworkMessage::DEFAULT_MAX_HOPS`], `signature` when
//! [`Signature::UNSIGNED`]. Writing a default explicitly is a decode error, so
//! each message has exactly one compact encoding.
//!
//! Both decoders are strict (canonical order, no unknown or duplicate fields,
//! exact lengths and ranges) and bounded by [`Limits`].

use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};

use crate::cbor::{Limits, Reader, Writer};
use crate::dag_cbor::read_key;
use crate::error::{Result, WireError};

const FULL: &str = "NetworkMessage";
const COMPACT: &str = "compact NetworkMessage";

/// Encodes every field of `msg` as a canonical DAG-CBOR map.
pub fn encode_message(msg: &NetworkMessage) -> Vec<u8> {
    let mut w = Writer::with_capacity(200 + msg.payload.len() + msg.message_type.len());
    // Keys in DAG-CBOR order: length first, then bytewise.
    w.map(10);
    w.text("id");
    w.bytes(msg.id.as_bytes());
    w.text("ttl");
    w.uint(u64::from(msg.ttl_secs));
    w.text("type");
    w.text(&msg.message_type);
    w.text("sender");
    w.bytes(msg.sender.as_bytes());
    w.text("maxHops");
    w.uint(u64::from(msg.max_hops));
    w.text("payload");
    w.bytes(&msg.payload);
    w.text("hopCount");
    w.uint(u64::from(msg.hop_count));
    w.text("recipient");
    match &msg.recipient {
        Some(p) => w.bytes(p.as_bytes()),
        None => w.null(),
    }
    w.text("signature");
    w.bytes(&msg.signature.0);
    w.text("timestamp");
    w.uint(msg.timestamp_ms);
    w.into_bytes()
}

/// The length of [`encode_message`]`(msg)`, computed without encoding (for size checks
/// such as routing, which must not copy a large payload only to measure it).
pub fn encoded_message_len(msg: &NetworkMessage) -> usize {
    /// Length of a CBOR head whose argument is `v` (shortest form, as the writer emits).
    fn head(v: u64) -> usize {
        match v {
            0..24 => 1,
            24..=0xff => 2,
            0x100..=0xffff => 3,
            0x1_0000..=0xffff_ffff => 5,
            _ => 9,
        }
    }
    // The map head, then the ten text keys (each shorter than 24 bytes: a 1-byte head).
    let keys = 1 + [
        "id",
        "ttl",
        "type",
        "sender",
        "maxHops",
        "payload",
        "hopCount",
        "recipient",
        "signature",
        "timestamp",
    ]
    .iter()
    .map(|k| 1 + k.len())
    .sum::<usize>();
    let bytes = |n: usize| head(n as u64) + n;
    keys + bytes(16)
        + head(u64::from(msg.ttl_secs))
        + bytes(msg.message_type.len())
        + bytes(32)
        + head(u64::from(msg.max_hops))
        + bytes(msg.payload.len())
        + head(u64::from(msg.hop_count))
        + msg.recipient.as_ref().map_or(1, |_| bytes(32))
        + bytes(64)
        + head(msg.timestamp_ms)
}

/// Decodes the full form with the default [`Limits`].
pub fn decode_message(bytes: &[u8]) -> Result<NetworkMessage> {
    decode_message_with(bytes, &Limits::DEFAULT)
}

/// Decodes the full form under `limits`.
pub fn decode_message_with(bytes: &[u8], limits: &Limits) -> Result<NetworkMessage> {
    let mut r = Reader::new(bytes, *limits);
    let msg = read_message(&mut r)?;
    r.finish()?;
    Ok(msg)
}

/// Reads one full-form message from `r` (which may hold more after it).
pub(crate) fn read_message(r: &mut Reader<'_>) -> Result<NetworkMessage> {
    let n = r.read_map_len()?;
    let mut f = Fields::default();
    let mut prev: Option<&str> = None;
    for _ in 0..n {
        let key = read_key(r, prev)?;
        match key {
            "id" => f.id = Some(read_id(r, FULL)?),
            "ttl" => f.ttl = Some(read_u32(r, FULL, "ttl")?),
            "type" => f.message_type = Some(r.read_text()?.to_owned()),
            "sender" => f.sender = Some(read_peer(r, FULL, "sender")?),
            "maxHops" => f.max_hops = Some(read_u8(r, FULL, "maxHops")?),
            "payload" => f.payload = Some(r.read_bytes()?.to_vec()),
            "hopCount" => f.hop_count = Some(read_u8(r, FULL, "hopCount")?),
            "recipient" => {
                f.recipient = Some(if r.read_null_or()? {
                    None
                } else {
                    Some(read_peer(r, FULL, "recipient")?)
                })
            }
            "signature" => f.signature = Some(read_signature(r, FULL)?),
            "timestamp" => f.timestamp = Some(r.read_uint()?),
            other => {
                return Err(WireError::UnknownField {
                    context: FULL,
                    field: other.to_owned(),
                });
            }
        }
        prev = Some(key);
    }
    Ok(NetworkMessage {
        id: req(f.id, FULL, "id")?,
        message_type: req(f.message_type, FULL, "type")?,
        payload: req(f.payload, FULL, "payload")?,
        sender: req(f.sender, FULL, "sender")?,
        recipient: req(f.recipient, FULL, "recipient")?,
        timestamp_ms: req(f.timestamp, FULL, "timestamp")?,
        ttl_secs: req(f.ttl, FULL, "ttl")?,
        hop_count: req(f.hop_count, FULL, "hopCount")?,
        max_hops: req(f.max_hops, FULL, "maxHops")?,
        signature: req(f.signature, FULL, "signature")?,
    })
}

/// Encodes `msg` in the compact form (see the module docs).
pub fn encode_message_compact(msg: &NetworkMessage) -> Vec<u8> {
    let mut w = Writer::with_capacity(140 + msg.payload.len() + msg.message_type.len());
    let recipient = msg.recipient.as_ref();
    let ttl = msg.ttl_secs != NetworkMessage::DEFAULT_TTL_SECS;
    let hops = msg.hop_count != 0;
    let max_hops = msg.max_hops != NetworkMessage::DEFAULT_MAX_HOPS;
    let signed = msg.signature != Signature::UNSIGNED;
    let n = 5 + [recipient.is_some(), ttl, hops, max_hops, signed]
        .iter()
        .filter(|b| **b)
        .count();
    w.map(n);
    w.uint(0);
    w.bytes(msg.id.as_bytes());
    w.uint(1);
    w.text(&msg.message_type);
    w.uint(2);
    w.bytes(&msg.payload);
    w.uint(3);
    w.bytes(msg.sender.as_bytes());
    if let Some(p) = recipient {
        w.uint(4);
        w.bytes(p.as_bytes());
    }
    w.uint(5);
    w.uint(msg.timestamp_ms);
    if ttl {
        w.uint(6);
        w.uint(u64::from(msg.ttl_secs));
    }
    if hops {
        w.uint(7);
        w.uint(u64::from(msg.hop_count));
    }
    if max_hops {
        w.uint(8);
        w.uint(u64::from(msg.max_hops));
    }
    if signed {
        w.uint(9);
        w.bytes(&msg.signature.0);
    }
    w.into_bytes()
}

/// Decodes the compact form with the default [`Limits`].
pub fn decode_message_compact(bytes: &[u8]) -> Result<NetworkMessage> {
    decode_message_compact_with(bytes, &Limits::DEFAULT)
}

/// Decodes the compact form under `limits`.
pub fn decode_message_compact_with(bytes: &[u8], limits: &Limits) -> Result<NetworkMessage> {
    let mut r = Reader::new(bytes, *limits);
    let n = r.read_map_len()?;
    let mut f = Fields::default();
    let mut prev: Option<u64> = None;
    for _ in 0..n {
        let offset = r.position();
        let key = match r.read_uint() {
            Ok(k) => k,
            Err(WireError::UnexpectedKind { .. }) => {
                return Err(WireError::InvalidKey { offset });
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = prev {
            if key == p {
                return Err(WireError::DuplicateKey { offset });
            }
            if key < p {
                return Err(WireError::UnsortedKeys { offset });
            }
        }
        prev = Some(key);
        match key {
            0 => f.id = Some(read_id(&mut r, COMPACT)?),
            1 => f.message_type = Some(r.read_text()?.to_owned()),
            2 => f.payload = Some(r.read_bytes()?.to_vec()),
            3 => f.sender = Some(read_peer(&mut r, COMPACT, "sender")?),
            4 => f.recipient = Some(Some(read_peer(&mut r, COMPACT, "recipient")?)),
            5 => f.timestamp = Some(r.read_uint()?),
            6 => {
                let v = read_u32(&mut r, COMPACT, "ttl")?;
                not_default(v == NetworkMessage::DEFAULT_TTL_SECS, "ttl")?;
                f.ttl = Some(v);
            }
            7 => {
                let v = read_u8(&mut r, COMPACT, "hopCount")?;
                not_default(v == 0, "hopCount")?;
                f.hop_count = Some(v);
            }
            8 => {
                let v = read_u8(&mut r, COMPACT, "maxHops")?;
                not_default(v == NetworkMessage::DEFAULT_MAX_HOPS, "maxHops")?;
                f.max_hops = Some(v);
            }
            9 => {
                let v = read_signature(&mut r, COMPACT)?;
                not_default(v == Signature::UNSIGNED, "signature")?;
                f.signature = Some(v);
            }
            other => {
                return Err(WireError::UnknownField {
                    context: COMPACT,
                    field: other.to_string(),
                });
            }
        }
    }
    r.finish()?;
    Ok(NetworkMessage {
        id: req(f.id, COMPACT, "id")?,
        message_type: req(f.message_type, COMPACT, "type")?,
        payload: req(f.payload, COMPACT, "payload")?,
        sender: req(f.sender, COMPACT, "sender")?,
        recipient: f.recipient.flatten(),
        timestamp_ms: req(f.timestamp, COMPACT, "timestamp")?,
        ttl_secs: f.ttl.unwrap_or(NetworkMessage::DEFAULT_TTL_SECS),
        hop_count: f.hop_count.unwrap_or(0),
        max_hops: f.max_hops.unwrap_or(NetworkMessage::DEFAULT_MAX_HOPS),
        signature: f.signature.unwrap_or(Signature::UNSIGNED),
    })
}

#[derive(Default)]
struct Fields {
    id: Option<MessageId>,
    message_type: Option<String>,
    payload: Option<Vec<u8>>,
    sender: Option<PeerId>,
    recipient: Option<Option<PeerId>>,
    timestamp: Option<u64>,
    ttl: Option<u32>,
    hop_count: Option<u8>,
    max_hops: Option<u8>,
    signature: Option<Signature>,
}

fn req<T>(v: Option<T>, context: &'static str, field: &'static str) -> Result<T> {
    v.ok_or(WireError::MissingField { context, field })
}

fn not_default(is_default: bool, field: &'static str) -> Result<()> {
    if is_default {
        Err(WireError::InvalidField {
            context: COMPACT,
            field,
            reason: "a default value must be omitted",
        })
    } else {
        Ok(())
    }
}

fn read_id(r: &mut Reader<'_>, context: &'static str) -> Result<MessageId> {
    let b = r.read_bytes()?;
    let arr: [u8; 16] = b.try_into().map_err(|_| WireError::InvalidField {
        context,
        field: "id",
        reason: "expected 16 bytes",
    })?;
    Ok(MessageId(arr))
}

pub(crate) fn read_peer(
    r: &mut Reader<'_>,
    context: &'static str,
    field: &'static str,
) -> Result<PeerId> {
    let b = r.read_bytes()?;
    PeerId::from_slice(b).map_err(|_| WireError::InvalidField {
        context,
        field,
        reason: "expected 32 bytes",
    })
}

fn read_signature(r: &mut Reader<'_>, context: &'static str) -> Result<Signature> {
    let b = r.read_bytes()?;
    Signature::from_slice(b).ok_or(WireError::InvalidField {
        context,
        field: "signature",
        reason: "expected 64 bytes",
    })
}

pub(crate) fn read_u32(
    r: &mut Reader<'_>,
    context: &'static str,
    field: &'static str,
) -> Result<u32> {
    u32::try_from(r.read_uint()?).map_err(|_| WireError::InvalidField {
        context,
        field,
        reason: "out of the 32-bit range",
    })
}

fn read_u8(r: &mut Reader<'_>, context: &'static str, field: &'static str) -> Result<u8> {
    u8::try_from(r.read_uint()?).map_err(|_| WireError::InvalidField {
        context,
        field,
        reason: "out of the 8-bit range",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NetworkMessage {
        NetworkMessage {
            id: MessageId::new_v4([7; 16]),
            message_type: "sync-event".into(),
            payload: vec![1, 2, 3],
            sender: PeerId::from_digest([1; 32]),
            recipient: Some(PeerId::from_digest([2; 32])),
            timestamp_ms: 1_700_000_000_000,
            ttl_secs: 60,
            hop_count: 3,
            max_hops: 5,
            signature: Signature([9; 64]),
        }
    }

    #[test]
    fn encoded_len_matches_the_encoding_at_every_head_boundary() {
        let lens = [0usize, 1, 23, 24, 255, 256, 65_535, 65_536, 70_000];
        let nums = [
            0u64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        for (i, &n) in nums.iter().enumerate() {
            let l = lens[i % lens.len()];
            for recipient in [None, Some(PeerId::from_digest([2; 32]))] {
                let m = NetworkMessage {
                    message_type: "t".repeat(lens[(i + 3) % lens.len()].min(300)),
                    payload: vec![5; l],
                    recipient,
                    timestamp_ms: n,
                    ttl_secs: u32::try_from(n).unwrap_or(u32::MAX),
                    hop_count: u8::try_from(n).unwrap_or(u8::MAX),
                    max_hops: u8::try_from(nums[(i + 1) % nums.len()]).unwrap_or(u8::MAX),
                    ..sample()
                };
                assert_eq!(encoded_message_len(&m), encode_message(&m).len(), "{i}");
            }
        }
    }

    #[test]
    fn full_form_is_canonical_dag_cbor() {
        for m in [
            sample(),
            NetworkMessage {
                recipient: None,
                ..sample()
            },
        ] {
            let bytes = encode_message(&m);
            // The generic strict decoder accepts it, so keys are in canonical order.
            let v = crate::from_dag_cbor(&bytes).unwrap();
            assert_eq!(v.as_map().unwrap().len(), 10);
            assert_eq!(decode_message(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn compact_form_round_trips_and_omits_defaults() {
        let m = sample();
        assert_eq!(
            decode_message_compact(&encode_message_compact(&m)).unwrap(),
            m
        );
        let d = NetworkMessage {
            recipient: None,
            ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
            hop_count: 0,
            max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
            signature: Signature::UNSIGNED,
            ..sample()
        };
        let bytes = encode_message_compact(&d);
        assert_eq!(bytes[0], 0xa5, "five fields only");
        assert_eq!(decode_message_compact(&bytes).unwrap(), d);
    }

    #[test]
    fn compact_form_refuses_explicit_defaults_and_disorder() {
        let d = NetworkMessage {
            hop_count: 0,
            ..sample()
        };
        let mut bytes = encode_message_compact(&d);
        // Append key 7 = 0 and bump the map count: an explicit default.
        bytes[0] += 1;
        bytes.extend_from_slice(&[0x07, 0x00]);
        assert!(decode_message_compact(&bytes).is_err());
        // Key 9 before key 8 (signature then maxHops).
        let m = sample();
        let enc = encode_message_compact(&m);
        let sig_at = enc.len() - 67;
        let mut swapped = enc[..sig_at - 2].to_vec();
        swapped.extend_from_slice(&enc[sig_at..]);
        swapped.extend_from_slice(&enc[sig_at - 2..sig_at]);
        assert!(matches!(
            decode_message_compact(&swapped),
            Err(WireError::UnsortedKeys { .. })
        ));
    }

    #[test]
    fn wrong_lengths_and_missing_fields_are_typed() {
        let mut v = crate::from_dag_cbor(&encode_message(&sample())).unwrap();
        if let ecomesh_types::Value::Map(m) = &mut v {
            m.insert("sender".into(), ecomesh_types::Value::Bytes(vec![1; 31]));
        }
        assert!(matches!(
            decode_message(&crate::to_dag_cbor(&v).unwrap()),
            Err(WireError::InvalidField {
                field: "sender",
                ..
            })
        ));
        if let ecomesh_types::Value::Map(m) = &mut v {
            m.remove("sender");
        }
        assert!(matches!(
            decode_message(&crate::to_dag_cbor(&v).unwrap()),
            Err(WireError::MissingField {
                field: "sender",
                ..
            })
        ));
        if let ecomesh_types::Value::Map(m) = &mut v {
            m.insert("extra".into(), ecomesh_types::Value::Null);
        }
        assert!(matches!(
            decode_message(&crate::to_dag_cbor(&v).unwrap()),
            Err(WireError::UnknownField { .. })
        ));
    }
}
