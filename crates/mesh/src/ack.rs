//! Delivery confirmations (seed 7.1 step 5).
//!
//! An ACK is an ordinary signed [`NetworkMessage`] of type [`ACK_TYPE`] whose
//! payload is the 16-byte id of the acknowledged message, addressed to that
//! message's sender and sent like any other message (store-and-forward when
//! needed). Its own id is derived from the acknowledged id, so the ACKs a
//! recipient sends for one message (e.g. after receiving it twice) deduplicate.
//! ACKs are never acknowledged.
//!
//! [`PendingAcks`] persists like the buffer (atomic write; strict bounded
//! decoding): `"ECMESHPA"`, `u8` version 1, `u32` count, then per entry the
//! 16-byte id, the 32-byte recipient and the `u64` expiry (big-endian).

use std::collections::BTreeMap;
use std::path::Path;

use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};

use crate::MeshError;
use crate::buffer::{read_bounded, write_atomic};

const MAGIC: &[u8; 8] = b"ECMESHPA";
const VERSION: u8 = 1;
const ENTRY_LEN: usize = 16 + 32 + 8;

/// The message type of an ACK.
pub const ACK_TYPE: &str = "ecomesh/ack";

/// The id of the ACK of message `acked`: its bytes XOR 0x5A, with the UUID v4
/// bits set (never equal to `acked` itself when `acked` is a v4 UUID).
pub fn ack_id(acked: &MessageId) -> MessageId {
    let mut b = acked.0;
    for x in &mut b {
        *x ^= 0x5A;
    }
    MessageId::new_v4(b)
}

/// An unsigned ACK from `me` for `message`, stamped `now_ms`.
pub fn ack_for(message: &NetworkMessage, me: PeerId, now_ms: u64) -> NetworkMessage {
    NetworkMessage {
        id: ack_id(&message.id),
        message_type: ACK_TYPE.to_owned(),
        payload: message.id.0.to_vec(),
        sender: me,
        recipient: Some(message.sender),
        timestamp_ms: now_ms,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature::UNSIGNED,
    }
}

/// The acknowledged id if `message` is a well-formed ACK.
pub fn acked_id(message: &NetworkMessage) -> Option<MessageId> {
    if message.message_type != ACK_TYPE {
        return None;
    }
    let bytes: [u8; 16] = message.payload.as_slice().try_into().ok()?;
    Some(MessageId(bytes))
}

/// Messages this node sent and waits to see acknowledged, with their expiry.
#[derive(Clone, Debug, Default)]
pub struct PendingAcks {
    pending: BTreeMap<MessageId, (PeerId, u64)>,
}

impl PendingAcks {
    /// Nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for an ACK of `message` until it expires.
    pub fn track(&mut self, message: &NetworkMessage) {
        if let Some(to) = message.recipient {
            self.pending
                .insert(message.id, (to, message.expires_at_ms()));
        }
    }

    /// Records an ACK of `id` from `from`; true when it confirmed a pending
    /// message sent to `from` (an ACK from anyone else is ignored).
    pub fn confirm(&mut self, id: &MessageId, from: &PeerId) -> bool {
        match self.pending.get(id) {
            Some((to, _)) if to == from => {
                self.pending.remove(id);
                true
            }
            _ => false,
        }
    }

    /// Stops waiting for `id` (it was refused or evicted, and is held nowhere
    /// in the mesh); true if it was waiting.
    pub fn forget(&mut self, id: &MessageId) -> bool {
        self.pending.remove(id).is_some()
    }

    /// True while `id` is waiting for its ACK.
    pub fn is_pending(&self, id: &MessageId) -> bool {
        self.pending.contains_key(id)
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Drops, and returns, the messages whose TTL passed unacknowledged.
    pub fn expire(&mut self, now_ms: u64) -> Vec<MessageId> {
        let gone: Vec<MessageId> = self
            .pending
            .iter()
            .filter(|(_, (_, exp))| now_ms >= *exp)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.pending.remove(id);
        }
        gone
    }

    /// The file image (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.pending.len() * ENTRY_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.pending.len() as u32).to_be_bytes());
        for (id, (to, exp)) in &self.pending {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(to.as_bytes());
            out.extend_from_slice(&exp.to_be_bytes());
        }
        out
    }

    /// Decodes a file image of at most `max_entries` entries.
    pub fn from_bytes(bytes: &[u8], max_entries: usize) -> Result<Self, MeshError> {
        let corrupt = |reason: String| MeshError::CorruptBuffer { reason };
        if bytes.len() < 13 || &bytes[..8] != MAGIC {
            return Err(corrupt("pending file: wrong magic or truncated".into()));
        }
        if bytes[8] != VERSION {
            return Err(corrupt(format!("pending file: version {}", bytes[8])));
        }
        let mut count = [0_u8; 4];
        count.copy_from_slice(&bytes[9..13]);
        let count = u32::from_be_bytes(count) as usize;
        if count > max_entries {
            return Err(corrupt(format!(
                "pending file: {count} entries over the bound"
            )));
        }
        let body = &bytes[13..];
        if body.len() != count * ENTRY_LEN {
            return Err(corrupt(
                "pending file: length does not match the count".into(),
            ));
        }
        let mut out = PendingAcks::new();
        for e in body.chunks_exact(ENTRY_LEN) {
            let (id, rest) = e.split_at(16);
            let (to, exp) = rest.split_at(32);
            let mut idb = [0_u8; 16];
            idb.copy_from_slice(id);
            let mut expb = [0_u8; 8];
            expb.copy_from_slice(exp);
            let to = PeerId::from_slice(to).map_err(|e| corrupt(e.to_string()))?;
            if out
                .pending
                .insert(MessageId(idb), (to, u64::from_be_bytes(expb)))
                .is_some()
            {
                return Err(corrupt("pending file: duplicate id".into()));
            }
        }
        Ok(out)
    }

    /// Writes the pending set to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), MeshError> {
        write_atomic(path, &self.to_bytes())
    }

    /// Reads a set saved by [`save`](Self::save) (at most `max_entries`); a
    /// missing file is an empty set.
    pub fn load(path: &Path, max_entries: usize) -> Result<Self, MeshError> {
        let bound = max_entries.saturating_mul(ENTRY_LEN).saturating_add(13);
        match read_bounded(path, bound)? {
            None => Ok(PendingAcks::new()),
            Some(bytes) => PendingAcks::from_bytes(&bytes, max_entries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> NetworkMessage {
        NetworkMessage {
            id: MessageId::new_v4([3; 16]),
            message_type: "chat".into(),
            payload: vec![1],
            sender: PeerId::from_digest([1; 32]),
            recipient: Some(PeerId::from_digest([2; 32])),
            timestamp_ms: 0,
            ttl_secs: 10,
            hop_count: 0,
            max_hops: 10,
            signature: Signature::UNSIGNED,
        }
    }

    #[test]
    fn ack_round_trip_and_confirm() {
        let msg = m();
        let ack = ack_for(&msg, PeerId::from_digest([2; 32]), 5);
        assert_eq!(ack.recipient, Some(msg.sender));
        assert_ne!(ack.id, msg.id);
        assert_eq!(acked_id(&ack), Some(msg.id));
        assert_eq!(acked_id(&msg), None);
        let mut p = PendingAcks::new();
        p.track(&msg);
        assert!(
            !p.confirm(&msg.id, &PeerId::from_digest([9; 32])),
            "wrong acker"
        );
        assert!(p.confirm(&msg.id, &ack.sender));
        assert!(p.is_empty());
    }

    #[test]
    fn unacked_messages_expire_with_their_ttl() {
        let msg = m();
        let mut p = PendingAcks::new();
        p.track(&msg);
        assert!(p.expire(9_999).is_empty());
        assert_eq!(p.expire(10_000), vec![msg.id]);
        assert!(!p.is_pending(&msg.id));
    }

    #[test]
    fn pending_set_persists_and_corrupt_files_are_errors() {
        let mut p = PendingAcks::new();
        p.track(&m());
        let mut other = m();
        other.id = MessageId([9; 16]);
        p.track(&other);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending.bin");
        p.save(&path).unwrap();
        let back = PendingAcks::load(&path, 100).unwrap();
        assert_eq!(back.pending, p.pending);
        assert!(
            PendingAcks::load(&dir.path().join("none"), 100)
                .unwrap()
                .is_empty()
        );
        let good = p.to_bytes();
        for n in 0..good.len() {
            assert!(PendingAcks::from_bytes(&good[..n], 100).is_err(), "{n}");
        }
        assert!(PendingAcks::from_bytes(&good, 1).is_err(), "over the bound");
        let mut bad = good.clone();
        bad.push(0);
        assert!(PendingAcks::from_bytes(&bad, 100).is_err());
        let mut dup = good.clone();
        dup.copy_within(13..13 + 16, 13 + ENTRY_LEN);
        assert!(PendingAcks::from_bytes(&dup, 100).is_err());
    }

    proptest::proptest! {
        #[test]
        fn prop_pending_from_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = PendingAcks::from_bytes(&bytes, 10);
        }
    }

    #[test]
    fn malformed_ack_is_none() {
        let mut ack = ack_for(&m(), PeerId::from_digest([2; 32]), 5);
        ack.payload.push(0);
        assert_eq!(acked_id(&ack), None);
    }
}
