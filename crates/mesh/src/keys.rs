//! Key discovery: finding the public key of a sender this node has never met.
//!
//! The mesh verifies every message with its sender's Ed25519 key. A message from
//! an origin two or more hops away (carried by the mesh's own relays, or by a
//! transport's multi-hop routing) may come from a sender whose key no transport
//! announced here. Instead of dropping it, the manager holds it in
//! [`AwaitingKeys`] and asks for the key with a mesh control message:
//!
//! - [`KEY_REQUEST_TYPE`] (`ecomesh/key?`): payload the 32-byte wanted
//!   [`PeerId`]; addressed to the wanted peer (so relays and transport routing
//!   carry it toward it) and handed to the wanted peer directly when it is
//!   reachable, otherwise to the neighbour that handed the held message over.
//! - [`KEY_REPLY_TYPE`] (`ecomesh/key!`): payload the wanted `PeerId` (32
//!   bytes) followed by its Ed25519 public key (32 bytes), addressed to the
//!   requester. Any node that knows the key answers (the wanted peer itself or
//!   any relay that learned it) instead of relaying the request further.
//!
//! A reply is **self-certifying**: a `PeerId` is the SHA-256 of its public key,
//! so the requester checks `SHA-256(key) == wanted` and needs to trust no one.
//! Replies are still signed like every message, and the signature is checked
//! whenever it can be (the responder's key is known, or the responder is the
//! wanted peer and the payload key verifies it), so forgers are charged; a
//! reply from a responder whose key is unknown is accepted on the hash check
//! alone, since nothing in it could be forged without breaking SHA-256. Only
//! keys this node asked for are learned: unsolicited (even valid) keys would let
//! anyone fill the bounded table of learned keys.
//!
//! Requests for a key this node can answer are answered without verifying the
//! requester (a public key is public; answering must not wait for another key
//! exchange); they are bounded by the reply budget instead.
//!
//! Bounds: held messages are capped by count and accounted bytes (oldest
//! evicted first) and expire after `hold_ms` (or their own TTL); at most one
//! request per awaited sender per `request_interval_ms`, and at most
//! `request_budget` requests and `reply_budget` replies per window of
//! `request_interval_ms` in total, so a flood of messages from random unknown
//! senders neither grows memory without bound nor makes this node send an
//! unbounded number of requests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ecomesh_identity::PublicKey;
use ecomesh_types::{NetworkMessage, PeerId, TransportType};

use crate::MeshError;
use crate::buffer::accounted_size;

/// The message type of a key request.
pub const KEY_REQUEST_TYPE: &str = "ecomesh/key?";
/// The message type of a key reply.
pub const KEY_REPLY_TYPE: &str = "ecomesh/key!";
/// The length of a key request's payload (the wanted peer id).
pub const KEY_REQUEST_LEN: usize = 32;
/// The length of a key reply's payload (the wanted peer id, then its public key).
pub const KEY_REPLY_LEN: usize = 64;

/// True for the message types of key discovery.
pub fn is_key_message(message_type: &str) -> bool {
    message_type == KEY_REQUEST_TYPE || message_type == KEY_REPLY_TYPE
}

/// The payload of a request for the key of `wanted`.
pub fn key_request_payload(wanted: &PeerId) -> Vec<u8> {
    wanted.as_bytes().to_vec()
}

/// The wanted peer of a key request's payload; a payload of any other length
/// than [`KEY_REQUEST_LEN`] is [`MeshError::MalformedKeyMessage`].
pub fn decode_key_request(payload: &[u8]) -> Result<PeerId, MeshError> {
    if payload.len() != KEY_REQUEST_LEN {
        return Err(MeshError::MalformedKeyMessage {
            reason: "key request payload is not 32 bytes",
        });
    }
    PeerId::from_slice(payload).map_err(|_| MeshError::MalformedKeyMessage {
        reason: "key request payload is not a peer id",
    })
}

/// The payload of a reply carrying `key`.
pub fn key_reply_payload(key: &PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_REPLY_LEN);
    out.extend_from_slice(key.peer_id().as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The wanted peer and its key from a key reply's payload, only when the key
/// hashes to the peer id: a wrong length or an invalid Ed25519 point is
/// [`MeshError::MalformedKeyMessage`], a key of another peer is
/// [`MeshError::KeyMismatch`].
pub fn decode_key_reply(payload: &[u8]) -> Result<(PeerId, PublicKey), MeshError> {
    if payload.len() != KEY_REPLY_LEN {
        return Err(MeshError::MalformedKeyMessage {
            reason: "key reply payload is not 64 bytes",
        });
    }
    let (id, key) = payload.split_at(32);
    let wanted = PeerId::from_slice(id).map_err(|_| MeshError::MalformedKeyMessage {
        reason: "key reply does not start with a peer id",
    })?;
    let key = PublicKey::from_slice(key).map_err(|_| MeshError::MalformedKeyMessage {
        reason: "key reply carries no valid Ed25519 public key",
    })?;
    let got = key.peer_id();
    if got != wanted {
        return Err(MeshError::KeyMismatch { wanted, got });
    }
    Ok((wanted, key))
}

/// Bounds and pacing of key discovery (a field of
/// [`MeshConfig`](crate::MeshConfig)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyDiscoveryConfig {
    /// Most messages held while their sender's key is sought; 0 disables key
    /// discovery (such messages are dropped, and no request is sent).
    pub max_held: usize,
    /// Most accounted bytes (see [`accounted_size`]) held.
    pub max_held_bytes: usize,
    /// How long a message is held at most, in milliseconds.
    pub hold_ms: u64,
    /// The least time between two requests for the same key, and the length of
    /// the window the budgets below count in, in milliseconds.
    pub request_interval_ms: u64,
    /// Most key requests sent per window.
    pub request_budget: u32,
    /// Most key replies sent per window.
    pub reply_budget: u32,
}

impl Default for KeyDiscoveryConfig {
    fn default() -> Self {
        KeyDiscoveryConfig {
            max_held: 256,
            max_held_bytes: 1024 * 1024,
            hold_ms: 10 * 60 * 1000,
            request_interval_ms: 30_000,
            request_budget: 16,
            reply_budget: 32,
        }
    }
}

/// A message held until its sender's key is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// The neighbour that handed it over (charged if its signature turns out bad).
    pub from: PeerId,
    /// The transport it arrived on.
    pub transport: TransportType,
    /// The message, as received.
    pub message: NetworkMessage,
    size: usize,
    held_at_ms: u64,
}

/// What [`AwaitingKeys::hold`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Held; `ask` says whether a key request should be sent now (the rate
    /// limits allow it).
    Held {
        /// Send a key request for the sender now.
        ask: bool,
    },
    /// The same message (id and signature) is already held.
    Duplicate,
    /// Not held: key discovery is disabled or the message is larger than the byte bound.
    Refused,
}

/// The bounded, sans-io store of messages awaiting their sender's key, with the
/// rate limits of requests and replies (see the module docs).
#[derive(Debug)]
pub struct AwaitingKeys {
    config: KeyDiscoveryConfig,
    held: VecDeque<Held>,
    bytes: usize,
    /// When a key was last requested, per sender with held messages.
    asked: BTreeMap<PeerId, u64>,
    window_start_ms: Option<u64>,
    requests: u32,
    replies: u32,
    /// (requester, wanted) pairs answered in this window.
    answered: BTreeSet<(PeerId, PeerId)>,
    /// Keys this node looks up for itself (to seal to or address a peer it has
    /// not met), with when each was first wanted; at most `max_held`.
    wanted: BTreeMap<PeerId, u64>,
}

impl AwaitingKeys {
    /// Nothing held, with these bounds.
    pub fn new(config: KeyDiscoveryConfig) -> Self {
        AwaitingKeys {
            config,
            held: VecDeque::new(),
            bytes: 0,
            asked: BTreeMap::new(),
            window_start_ms: None,
            requests: 0,
            replies: 0,
            answered: BTreeSet::new(),
            wanted: BTreeMap::new(),
        }
    }

    /// Records that this node wants `peer`'s key for itself (no message of
    /// `peer` held), for `hold_ms`; returns whether a request may go out now.
    /// Refused (false, nothing recorded) when key discovery is disabled or
    /// `max_held` keys are already wanted.
    pub fn want(&mut self, peer: PeerId, now_ms: u64) -> bool {
        if self.config.max_held == 0 {
            return false;
        }
        if !self.wanted.contains_key(&peer) {
            if self.wanted.len() >= self.config.max_held {
                return false;
            }
            self.wanted.insert(peer, now_ms);
        }
        self.may_request(peer, now_ms)
    }

    /// Holds `message` (handed over by `from` on `transport`) at `now_ms`,
    /// evicting the oldest held messages to stay within the bounds.
    pub fn hold(
        &mut self,
        from: PeerId,
        transport: TransportType,
        message: NetworkMessage,
        now_ms: u64,
    ) -> HoldOutcome {
        let size = accounted_size(&message);
        if self.config.max_held == 0 || size > self.config.max_held_bytes {
            return HoldOutcome::Refused;
        }
        if self
            .held
            .iter()
            .any(|h| h.message.id == message.id && h.message.signature == message.signature)
        {
            return HoldOutcome::Duplicate;
        }
        while self.held.len() >= self.config.max_held
            || self.bytes + size > self.config.max_held_bytes
        {
            let Some(old) = self.held.pop_front() else {
                break;
            };
            self.bytes -= old.size;
            self.forget_if_unheld(&old.message.sender);
        }
        let sender = message.sender;
        self.bytes += size;
        self.held.push_back(Held {
            from,
            transport,
            message,
            size,
            held_at_ms: now_ms,
        });
        HoldOutcome::Held {
            ask: self.may_request(sender, now_ms),
        }
    }

    fn forget_if_unheld(&mut self, sender: &PeerId) {
        if !self.held.iter().any(|h| h.message.sender == *sender) {
            self.asked.remove(sender);
        }
    }

    fn roll_window(&mut self, now_ms: u64) {
        let fresh = match self.window_start_ms {
            None => true,
            Some(start) => {
                now_ms < start || now_ms - start >= self.config.request_interval_ms.max(1)
            }
        };
        if fresh {
            self.window_start_ms = Some(now_ms);
            self.requests = 0;
            self.replies = 0;
            self.answered.clear();
        }
    }

    /// Whether a request for `sender`'s key may go out at `now_ms` (and if so,
    /// records it): not within `request_interval_ms` of the last one for the
    /// same sender, and within the window's request budget.
    fn may_request(&mut self, sender: PeerId, now_ms: u64) -> bool {
        self.roll_window(now_ms);
        if let Some(last) = self.asked.get(&sender)
            && now_ms >= *last
            && now_ms - *last < self.config.request_interval_ms
        {
            return false;
        }
        if self.requests >= self.config.request_budget {
            return false;
        }
        self.requests += 1;
        self.asked.insert(sender, now_ms);
        true
    }

    /// Whether a reply giving `wanted`'s key to `requester` may go out at
    /// `now_ms` (and if so, records it): once per pair and window, within the
    /// window's reply budget.
    pub fn may_reply(&mut self, requester: PeerId, wanted: PeerId, now_ms: u64) -> bool {
        self.roll_window(now_ms);
        if self.replies >= self.config.reply_budget || self.answered.contains(&(requester, wanted))
        {
            return false;
        }
        self.replies += 1;
        self.answered.insert((requester, wanted));
        true
    }

    /// True when messages from `sender` are held (its key was or will be asked for).
    pub fn is_awaited(&self, sender: &PeerId) -> bool {
        self.asked.contains_key(sender)
            || self.wanted.contains_key(sender)
            || self.held.iter().any(|h| h.message.sender == *sender)
    }

    /// Removes and returns the messages held from `sender`, oldest first.
    pub fn take(&mut self, sender: &PeerId) -> Vec<Held> {
        self.asked.remove(sender);
        self.wanted.remove(sender);
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.held.len());
        for h in self.held.drain(..) {
            if h.message.sender == *sender {
                self.bytes -= h.size;
                out.push(h);
            } else {
                kept.push_back(h);
            }
        }
        self.held = kept;
        out
    }

    /// Drops the messages held longer than `hold_ms` or past their TTL at
    /// `now_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let hold = self.config.hold_ms;
        let before = self.held.len();
        let mut gone = BTreeSet::new();
        let mut bytes = self.bytes;
        self.held.retain(|h| {
            let keep = now_ms.saturating_sub(h.held_at_ms) < hold && !h.message.is_expired(now_ms);
            if !keep {
                bytes -= h.size;
                gone.insert(h.message.sender);
            }
            keep
        });
        self.bytes = bytes;
        self.wanted
            .retain(|_, since| now_ms.saturating_sub(*since) < hold && now_ms >= *since);
        for s in gone {
            self.forget_if_unheld(&s);
        }
        before - self.held.len()
    }

    /// The distinct senders of held messages, and the keys wanted by this node.
    pub fn senders(&self) -> BTreeSet<PeerId> {
        self.held
            .iter()
            .map(|h| h.message.sender)
            .chain(self.wanted.keys().copied())
            .collect()
    }

    /// The senders whose key should be asked for again at `now_ms` (the rate
    /// limits allow it), each with the neighbour that handed over its newest
    /// held message (a key wanted by this node names the peer itself: the
    /// request goes to it when reachable, else to trusted neighbours);
    /// records the requests.
    pub fn due(&mut self, now_ms: u64) -> Vec<(PeerId, PeerId)> {
        let mut via: BTreeMap<PeerId, PeerId> = self.wanted.keys().map(|p| (*p, *p)).collect();
        for h in &self.held {
            via.insert(h.message.sender, h.from);
        }
        via.into_iter()
            .filter(|(sender, _)| self.may_request(*sender, now_ms))
            .collect()
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Accounted bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_identity::Identity;
    use ecomesh_types::{MessageId, Signature};

    fn msg(sender: u8, n: u8, payload: usize) -> NetworkMessage {
        NetworkMessage {
            id: MessageId::new_v4([n; 16]),
            message_type: "chat".into(),
            payload: vec![0; payload],
            sender: PeerId::from_digest([sender; 32]),
            recipient: None,
            timestamp_ms: 0,
            ttl_secs: 100,
            hop_count: 0,
            max_hops: 10,
            signature: Signature::UNSIGNED,
        }
    }

    fn nb() -> PeerId {
        PeerId::from_digest([200; 32])
    }

    #[test]
    fn request_and_reply_payloads_round_trip() {
        let id = Identity::from_secret_bytes(&[5; 32]);
        let p = key_request_payload(&id.peer_id());
        assert_eq!(decode_key_request(&p).unwrap(), id.peer_id());
        let r = key_reply_payload(id.public_key());
        assert_eq!(r.len(), KEY_REPLY_LEN);
        assert_eq!(
            decode_key_reply(&r).unwrap(),
            (id.peer_id(), *id.public_key())
        );
    }

    #[test]
    fn malformed_and_lying_payloads_are_typed_errors() {
        let a = Identity::from_secret_bytes(&[5; 32]);
        let b = Identity::from_secret_bytes(&[6; 32]);
        for n in [0, 31, 33, 64] {
            assert!(matches!(
                decode_key_request(&vec![1; n]),
                Err(MeshError::MalformedKeyMessage { .. })
            ));
        }
        for n in [0, 32, 63, 65] {
            assert!(matches!(
                decode_key_reply(&vec![1; n]),
                Err(MeshError::MalformedKeyMessage { .. })
            ));
        }
        let mut lie = a.peer_id().as_bytes().to_vec();
        lie.extend_from_slice(b.public_key().as_bytes());
        assert!(matches!(
            decode_key_reply(&lie),
            Err(MeshError::KeyMismatch { wanted, got }) if wanted == a.peer_id() && got == b.peer_id()
        ));
    }

    #[test]
    fn held_messages_are_bounded_by_count_and_bytes_oldest_evicted() {
        let config = KeyDiscoveryConfig {
            max_held: 3,
            max_held_bytes: 3 * accounted_size(&msg(1, 0, 10)),
            ..KeyDiscoveryConfig::default()
        };
        let mut a = AwaitingKeys::new(config);
        for n in 0..5 {
            a.hold(nb(), TransportType::Wired, msg(n, n, 10), 0);
            assert!(a.len() <= 3);
        }
        assert_eq!(a.senders().len(), 3);
        assert!(!a.is_awaited(&PeerId::from_digest([0; 32])), "evicted");
        assert!(a.is_awaited(&PeerId::from_digest([4; 32])));
        // A bigger message evicts more than one.
        assert!(matches!(
            a.hold(nb(), TransportType::Wired, msg(9, 9, 200), 0),
            HoldOutcome::Held { .. }
        ));
        assert!(a.bytes() <= config.max_held_bytes);
        // Larger than the whole bound: refused.
        assert_eq!(
            a.hold(nb(), TransportType::Wired, msg(9, 10, 10_000), 0),
            HoldOutcome::Refused
        );
    }

    #[test]
    fn requests_are_rate_limited_per_sender_and_in_total() {
        let config = KeyDiscoveryConfig {
            request_budget: 2,
            request_interval_ms: 100,
            ..KeyDiscoveryConfig::default()
        };
        let mut a = AwaitingKeys::new(config);
        let h = |a: &mut AwaitingKeys, s: u8, n: u8, t: u64| {
            a.hold(nb(), TransportType::Wired, msg(s, n, 1), t)
        };
        assert_eq!(h(&mut a, 1, 1, 0), HoldOutcome::Held { ask: true });
        assert_eq!(h(&mut a, 1, 2, 10), HoldOutcome::Held { ask: false });
        assert_eq!(h(&mut a, 1, 2, 10), HoldOutcome::Duplicate);
        assert_eq!(h(&mut a, 2, 3, 10), HoldOutcome::Held { ask: true });
        assert_eq!(
            h(&mut a, 3, 4, 10),
            HoldOutcome::Held { ask: false },
            "budget"
        );
        assert!(a.due(50).is_empty());
        // Next window: every sender is due again, within the budget.
        assert_eq!(a.due(100).len(), 2);
        assert!(a.due(150).is_empty());
        let took = a.take(&PeerId::from_digest([1; 32]));
        assert_eq!(took.len(), 2);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn replies_are_rate_limited() {
        let config = KeyDiscoveryConfig {
            reply_budget: 2,
            request_interval_ms: 100,
            ..KeyDiscoveryConfig::default()
        };
        let mut a = AwaitingKeys::new(config);
        let p = |n| PeerId::from_digest([n; 32]);
        assert!(a.may_reply(p(1), p(9), 0));
        assert!(!a.may_reply(p(1), p(9), 1), "same pair in the window");
        assert!(a.may_reply(p(2), p(9), 1));
        assert!(!a.may_reply(p(3), p(9), 1), "budget");
        assert!(a.may_reply(p(1), p(9), 100));
    }

    #[test]
    fn held_messages_expire() {
        let config = KeyDiscoveryConfig {
            hold_ms: 1_000,
            ..KeyDiscoveryConfig::default()
        };
        let mut a = AwaitingKeys::new(config);
        a.hold(nb(), TransportType::Wired, msg(1, 1, 1), 0);
        a.hold(nb(), TransportType::Wired, msg(2, 2, 1), 500);
        assert_eq!(a.expire(999), 0);
        assert_eq!(a.expire(1_000), 1);
        assert!(!a.is_awaited(&PeerId::from_digest([1; 32])));
        // The message's own TTL (100 s) also ends it.
        let mut long = AwaitingKeys::new(KeyDiscoveryConfig {
            hold_ms: u64::MAX,
            ..config
        });
        long.hold(nb(), TransportType::Wired, msg(1, 1, 1), 0);
        assert_eq!(long.expire(100_000), 1);
        assert_eq!(long.bytes(), 0);
    }

    proptest::proptest! {
        #[test]
        fn prop_key_payload_decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let _ = decode_key_request(&bytes);
            let _ = decode_key_reply(&bytes);
        }

        #[test]
        fn prop_awaiting_stays_within_bounds(ops in proptest::collection::vec((0_u8..40, 0_u8..255, 0_usize..400, 0_u64..50), 0..200)) {
            let config = KeyDiscoveryConfig {
                max_held: 8,
                max_held_bytes: 2_000,
                hold_ms: 400,
                request_interval_ms: 100,
                request_budget: 3,
                reply_budget: 3,
            };
            let mut a = AwaitingKeys::new(config);
            let mut now = 0;
            let mut window: Vec<u64> = Vec::new();
            for (s, n, size, dt) in ops {
                now += dt;
                let asked = matches!(a.hold(nb(), TransportType::Wired, msg(s, n, size), now), HoldOutcome::Held { ask: true });
                let due = a.due(now).len();
                a.expire(now);
                for _ in 0..(usize::from(asked) + due) {
                    window.push(now);
                }
                proptest::prop_assert!(a.len() <= 8);
                proptest::prop_assert!(a.bytes() <= 2_000);
                proptest::prop_assert!(a.asked.len() <= 8);
                proptest::prop_assert_eq!(a.bytes(), a.held.iter().map(|h| h.size).sum::<usize>());
                // Never more than the budget within any window-length span.
                let recent = window.iter().filter(|t| now - **t < 100).count();
                proptest::prop_assert!(recent <= 6, "{recent} requests within one interval");
            }
        }
    }
}
