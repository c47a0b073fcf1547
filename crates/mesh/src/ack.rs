//! Delivery confirmations (seed 7.1 step 5).
//!
//! An ACK is an ordinary signed [`NetworkMessage`] of type [`ACK_TYPE`] whose
//! payload is the 16-byte id of the acknowledged message, addressed to that
//! message's sender and sent like any other message (store-and-forward when
//! needed). Its own id is derived from the acknowledged id, so the ACKs a
//! recipient sends for one message (e.g. after receiving it twice) deduplicate.
//! ACKs are never acknowledged.

use std::collections::BTreeMap;

use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};

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
    fn malformed_ack_is_none() {
        let mut ack = ack_for(&m(), PeerId::from_digest([2; 32]), 5);
        ack.payload.push(0);
        assert_eq!(acked_id(&ack), None);
    }
}
