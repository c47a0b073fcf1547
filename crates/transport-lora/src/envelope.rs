//! The LoRa envelope of a [`NetworkMessage`]: every field the message's signature covers,
//! in fixed binary fields, with the recipient left out when it is the frame's destination.
//!
//! It is what a sealed message body carries (see [`crate::frame`]). Against the compact
//! form of `ecomesh-wire` (CBOR with integer keys) it saves the keys and byte-string
//! headers (about 16 bytes) and, for a unicast message, the 32-byte recipient, which the
//! destination knows is itself: on a 1 KB delta that is 50 bytes per hop.
//!
//! Layout (big-endian integers):
//!
//! | field | bytes | present |
//! |---|---|---|
//! | flags | 1 | always: bit 0 recipient = the destination, bit 1 another recipient follows, bit 2 ttl, bit 3 hop count, bit 4 max hops, bit 5 signature, bit 6 link-authenticated; bit 7 0 |
//! | id | 16 | always |
//! | sender | 32 | unless bit 6 |
//! | timestamp (Unix ms) | 8 | always |
//! | recipient | 32 | flag bit 1 |
//! | ttl (s) | 4 | flag bit 2 (omitted at [`NetworkMessage::DEFAULT_TTL_SECS`]) |
//! | hop count | 1 | flag bit 3 (omitted at 0) |
//! | max hops | 1 | flag bit 4 (omitted at [`NetworkMessage::DEFAULT_MAX_HOPS`]) |
//! | signature | 64 | flag bit 5 (omitted when [`Signature::UNSIGNED`]) |
//! | type length | 1 | always (types over 255 bytes are refused) |
//! | type | that many | always, UTF-8 |
//! | payload | the rest | always |
//!
//! A field at its default must be omitted and the recipient must use bit 0 when it is the
//! destination, so each message has exactly one envelope per form and destination; the
//! decoder is strict and allocates only what the input holds.
//!
//! **Link-authenticated form** (bit 6, [`encode_link_envelope`]): a message its sender
//! sends straight to its recipient over their own session (the recipient is the next
//! hop, the hop count 0) leaves out the sender and the message signature, 96 bytes: the
//! session's AEAD already proves who sent the unit and that nothing changed on the way.
//! The receiver accepts the form only from a unit whose origin is the session peer and
//! that no relay carried ([`decode_envelope`]'s `link` argument), takes that peer as the
//! sender, and hands the message on as link-authenticated
//! ([`TransportEvent::LinkMessage`](ecomesh_types::TransportEvent::LinkMessage)); such a
//! message is delivered, never relayed. It requires bit 0 and excludes bits 1, 3 and 5.

use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};

use crate::error::LoraError;

const F_TO_DEST: u8 = 1;
const F_TO_OTHER: u8 = 2;
const F_TTL: u8 = 4;
const F_HOPS: u8 = 8;
const F_MAX_HOPS: u8 = 16;
const F_SIGNED: u8 = 32;
const F_LINK: u8 = 64;
const F_ALL: u8 = F_TO_DEST | F_TO_OTHER | F_TTL | F_HOPS | F_MAX_HOPS | F_SIGNED | F_LINK;

/// Bytes of an envelope besides the type and the payload when every optional field is
/// present (its largest overhead).
pub const MAX_OVERHEAD: usize = 1 + 16 + 32 + 8 + 32 + 4 + 1 + 1 + 64 + 1;

fn err(reason: &'static str) -> LoraError {
    LoraError::Frame(reason)
}

/// Encodes `msg` for the LoRa destination `dest`. Fails only when the message type is
/// longer than 255 bytes.
pub fn encode_envelope(msg: &NetworkMessage, dest: &PeerId) -> Result<Vec<u8>, LoraError> {
    encode(msg, dest, false)
}

/// True when `msg` may travel to `dest` in the link-authenticated form: it is addressed
/// to `dest` and has not been relayed. The caller also makes sure `dest` is the next hop
/// and this node the sender, so the session with `dest` is the sender's own.
pub fn link_form_allowed(msg: &NetworkMessage, dest: &PeerId) -> bool {
    msg.recipient.as_ref() == Some(dest) && msg.hop_count == 0
}

/// Encodes `msg` in the link-authenticated form (no sender, no signature) for `dest`,
/// its recipient and the next hop. Fails when [`link_form_allowed`] does not hold or
/// the message type is longer than 255 bytes.
pub fn encode_link_envelope(msg: &NetworkMessage, dest: &PeerId) -> Result<Vec<u8>, LoraError> {
    if !link_form_allowed(msg, dest) {
        return Err(err(
            "link-authenticated form for a relayed or forwarded message",
        ));
    }
    encode(msg, dest, true)
}

fn encode(msg: &NetworkMessage, dest: &PeerId, link: bool) -> Result<Vec<u8>, LoraError> {
    let ty = msg.message_type.as_bytes();
    let ty_len = u8::try_from(ty.len()).map_err(|_| err("message type over 255 bytes"))?;
    let mut flags = 0;
    match &msg.recipient {
        Some(r) if r == dest => flags |= F_TO_DEST,
        Some(_) => flags |= F_TO_OTHER,
        None => {}
    }
    if msg.ttl_secs != NetworkMessage::DEFAULT_TTL_SECS {
        flags |= F_TTL;
    }
    if msg.hop_count != 0 {
        flags |= F_HOPS;
    }
    if msg.max_hops != NetworkMessage::DEFAULT_MAX_HOPS {
        flags |= F_MAX_HOPS;
    }
    if link {
        flags |= F_LINK;
    } else if msg.signature != Signature::UNSIGNED {
        flags |= F_SIGNED;
    }
    let mut out = Vec::with_capacity(MAX_OVERHEAD + ty.len() + msg.payload.len());
    out.push(flags);
    out.extend_from_slice(msg.id.as_bytes());
    if !link {
        out.extend_from_slice(msg.sender.as_bytes());
    }
    out.extend_from_slice(&msg.timestamp_ms.to_be_bytes());
    if flags & F_TO_OTHER != 0
        && let Some(r) = &msg.recipient
    {
        out.extend_from_slice(r.as_bytes());
    }
    if flags & F_TTL != 0 {
        out.extend_from_slice(&msg.ttl_secs.to_be_bytes());
    }
    if flags & F_HOPS != 0 {
        out.push(msg.hop_count);
    }
    if flags & F_MAX_HOPS != 0 {
        out.push(msg.max_hops);
    }
    if flags & F_SIGNED != 0 {
        out.extend_from_slice(&msg.signature.0);
    }
    out.push(ty_len);
    out.extend_from_slice(ty);
    out.extend_from_slice(&msg.payload);
    Ok(out)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LoraError> {
        let end = self.at.checked_add(n).ok_or(err("envelope truncated"))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(err("envelope truncated"))?;
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LoraError> {
        self.take(N)?
            .try_into()
            .map_err(|_| err("envelope truncated"))
    }
}

/// The link-authenticated form of a signed envelope `bytes` addressed to `dest`, when
/// `sender` sent it and it may take that form ([`link_form_allowed`]); `None` otherwise.
pub fn link_form_of(bytes: &[u8], dest: &PeerId, sender: &PeerId) -> Option<Vec<u8>> {
    let e = decode_envelope(bytes, dest, None).ok()?;
    if e.message.sender != *sender || !link_form_allowed(&e.message, dest) {
        return None;
    }
    encode_link_envelope(&e.message, dest).ok()
}

/// A decoded envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The message. In the link-authenticated form its sender is the session peer and
    /// it carries no signature.
    pub message: NetworkMessage,
    /// The envelope was in the link-authenticated form: the session proved the sender.
    pub link_authenticated: bool,
}

/// Decodes an envelope that arrived at `dest` (this node). `link` is the session peer
/// when the unit came straight from its origin (no relay carried it); only then is the
/// link-authenticated form accepted, with that peer as the sender. Strict: unknown flag
/// bits, explicit defaults, a recipient equal to `dest` written out, or a type that is
/// not UTF-8 are errors, so whatever decodes re-encodes to the same bytes.
pub fn decode_envelope(
    bytes: &[u8],
    dest: &PeerId,
    link: Option<&PeerId>,
) -> Result<Envelope, LoraError> {
    let mut c = Cursor { bytes, at: 0 };
    let flags = c.array::<1>()?[0];
    if flags & !F_ALL != 0 || flags & (F_TO_DEST | F_TO_OTHER) == F_TO_DEST | F_TO_OTHER {
        return Err(err("envelope flags"));
    }
    let link_authenticated = flags & F_LINK != 0;
    if link_authenticated && (flags & F_TO_DEST == 0 || flags & (F_HOPS | F_SIGNED) != 0) {
        return Err(err("envelope flags"));
    }
    let id = MessageId(c.array()?);
    let sender = if link_authenticated {
        *link.ok_or(err("link-authenticated envelope not from its session peer"))?
    } else {
        PeerId::from_digest(c.array()?)
    };
    let timestamp_ms = u64::from_be_bytes(c.array()?);
    let recipient = if flags & F_TO_DEST != 0 {
        Some(*dest)
    } else if flags & F_TO_OTHER != 0 {
        let r = PeerId::from_digest(c.array()?);
        if r == *dest {
            return Err(err("envelope recipient is the destination"));
        }
        Some(r)
    } else {
        None
    };
    let ttl_secs = if flags & F_TTL != 0 {
        let v = u32::from_be_bytes(c.array()?);
        if v == NetworkMessage::DEFAULT_TTL_SECS {
            return Err(err("envelope ttl at its default"));
        }
        v
    } else {
        NetworkMessage::DEFAULT_TTL_SECS
    };
    let hop_count = if flags & F_HOPS != 0 {
        let v = c.array::<1>()?[0];
        if v == 0 {
            return Err(err("envelope hop count at its default"));
        }
        v
    } else {
        0
    };
    let max_hops = if flags & F_MAX_HOPS != 0 {
        let v = c.array::<1>()?[0];
        if v == NetworkMessage::DEFAULT_MAX_HOPS {
            return Err(err("envelope max hops at its default"));
        }
        v
    } else {
        NetworkMessage::DEFAULT_MAX_HOPS
    };
    let signature = if flags & F_SIGNED != 0 {
        let s = Signature(c.array()?);
        if s == Signature::UNSIGNED {
            return Err(err("envelope signature at its default"));
        }
        s
    } else {
        Signature::UNSIGNED
    };
    let ty_len = usize::from(c.array::<1>()?[0]);
    let message_type = std::str::from_utf8(c.take(ty_len)?)
        .map_err(|_| err("envelope type is not UTF-8"))?
        .to_owned();
    let payload = bytes.get(c.at..).unwrap_or_default().to_vec();
    let message = NetworkMessage {
        id,
        message_type,
        payload,
        sender,
        recipient,
        timestamp_ms,
        ttl_secs,
        hop_count,
        max_hops,
        signature,
    };
    Ok(Envelope {
        message,
        link_authenticated,
    })
}

/// Re-encodes a decoded envelope in the form it arrived in.
pub fn encode_decoded(envelope: &Envelope, dest: &PeerId) -> Result<Vec<u8>, LoraError> {
    encode(&envelope.message, dest, envelope.link_authenticated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dest() -> PeerId {
        PeerId::from_digest([0xDD; 32])
    }

    proptest! {
        #[test]
        fn prop_envelope_round_trips_and_is_canonical(
            id in any::<[u8; 16]>(), sender in any::<[u8; 32]>(), to in 0u8..3,
            ts in any::<u64>(), ttl in any::<u32>(), hops in any::<u8>(), max in any::<u8>(),
            signed in any::<bool>(), ty in "[a-z/]{0,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let m = NetworkMessage {
                id: MessageId(id),
                message_type: ty,
                payload,
                sender: PeerId::from_digest(sender),
                recipient: match to { 0 => None, 1 => Some(dest()), _ => Some(PeerId::from_digest([1; 32])) },
                timestamp_ms: ts,
                ttl_secs: ttl,
                hop_count: hops,
                max_hops: max,
                signature: if signed { Signature([7; 64]) } else { Signature::UNSIGNED },
            };
            let b = encode_envelope(&m, &dest()).unwrap();
            prop_assert!(b.len() <= MAX_OVERHEAD + m.message_type.len() + m.payload.len());
            prop_assert_eq!(decode_envelope(&b, &dest(), None).unwrap().message, m.clone());
            if link_form_allowed(&m, &dest()) {
                let l = encode_link_envelope(&m, &dest()).unwrap();
                prop_assert_eq!(l.len() + 32 + if signed { 64 } else { 0 }, b.len());
                let from = PeerId::from_digest([9; 32]);
                let back = decode_envelope(&l, &dest(), Some(&from)).unwrap();
                prop_assert!(back.link_authenticated);
                prop_assert_eq!(back.message.sender, from);
                prop_assert_eq!(back.message.signature, Signature::UNSIGNED);
                prop_assert_eq!(back.message.payload, m.payload);
                prop_assert!(decode_envelope(&l, &dest(), None).is_err());
            } else {
                prop_assert!(encode_link_envelope(&m, &dest()).is_err());
            }
        }

        #[test]
        fn prop_envelope_decode_never_panics_and_re_encodes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let from = PeerId::from_digest([9; 32]);
            if let Ok(e) = decode_envelope(&bytes, &dest(), Some(&from)) {
                prop_assert_eq!(encode_decoded(&e, &dest()).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn explicit_defaults_and_unknown_flags_are_refused() {
        let m = NetworkMessage {
            id: MessageId([1; 16]),
            message_type: "t".into(),
            payload: vec![],
            sender: PeerId::from_digest([2; 32]),
            recipient: Some(dest()),
            timestamp_ms: 5,
            ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
            hop_count: 0,
            max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
            signature: Signature::UNSIGNED,
        };
        let b = encode_envelope(&m, &dest()).unwrap();
        assert_eq!(b.len(), 1 + 16 + 32 + 8 + 1 + 1);
        let mut hops = b.clone();
        hops[0] |= F_HOPS;
        hops.insert(57, 0);
        assert!(decode_envelope(&hops, &dest(), None).is_err());
        let mut unknown = b.clone();
        unknown[0] |= 0x80;
        assert!(decode_envelope(&unknown, &dest(), None).is_err());
        let mut both = b.clone();
        both[0] |= F_TO_OTHER;
        assert!(decode_envelope(&both, &dest(), None).is_err());
        // The link form never names another recipient, a hop count or a signature.
        let from = PeerId::from_digest([9; 32]);
        let link = encode_link_envelope(&m, &dest()).unwrap();
        assert_eq!(link.len(), b.len() - 32);
        for bad in [F_TO_OTHER, F_HOPS, F_SIGNED] {
            let mut l = link.clone();
            l[0] |= bad;
            assert!(decode_envelope(&l, &dest(), Some(&from)).is_err());
        }
        let mut relayed = m.clone();
        relayed.hop_count = 1;
        assert!(encode_link_envelope(&relayed, &dest()).is_err());
        let mut elsewhere = m.clone();
        elsewhere.recipient = Some(from);
        assert!(encode_link_envelope(&elsewhere, &dest()).is_err());
        let long = NetworkMessage {
            message_type: "x".repeat(256),
            ..m
        };
        assert!(encode_envelope(&long, &dest()).is_err());
    }
}
