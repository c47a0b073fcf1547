//! The check the `mesh_keys` cargo-fuzz target runs on arbitrary bytes (key
//! discovery payloads from peers, the pending-ACK file from disk), and the genuine
//! inputs its committed seed corpus holds; `tests/fuzz_seeds.rs` replays
//! both under `cargo test`.

use ecomesh_identity::Identity;
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};

use crate::ack::{PendingAcks, ack_for};
use crate::keys::{decode_key_reply, decode_key_request, key_reply_payload, key_request_payload};

/// Most entries the check lets a pending-ACK file hold.
const MAX_ACKS: usize = 64;

/// Decodes `data` as a key request, a key reply and a pending-ACK file: no panic;
/// a request or reply that decodes re-encodes to exactly the input, a reply's key
/// hashes to the peer it names, and an ACK file that loads saves and loads back
/// the same within its bound.
///
/// # Panics
/// When a property does not hold (that is what the fuzzer looks for).
pub fn keys_and_acks(data: &[u8]) {
    if let Ok(wanted) = decode_key_request(data) {
        assert_eq!(key_request_payload(&wanted), data);
    }
    if let Ok((wanted, key)) = decode_key_reply(data) {
        assert_eq!(key.peer_id(), wanted, "a reply's key is the named peer's");
        assert_eq!(key_reply_payload(&key), data);
    }
    if let Ok(acks) = PendingAcks::from_bytes(data, MAX_ACKS) {
        assert!(acks.len() <= MAX_ACKS);
        let image = acks.to_bytes();
        match PendingAcks::from_bytes(&image, MAX_ACKS) {
            Ok(again) => assert_eq!(again.to_bytes(), image),
            Err(e) => panic!("a saved ACK file does not load: {e}"),
        }
    }
}

/// Genuine inputs from the encoders (named seed inputs): a key request, a key
/// reply, and pending-ACK files with none and two entries.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let alice = Identity::from_secret_bytes(&[7; 32]);
    let bob = Identity::from_secret_bytes(&[9; 32]);
    let message = |n: u8, to: PeerId| NetworkMessage {
        id: MessageId::new_v4([n; 16]),
        message_type: "chat".into(),
        payload: vec![n],
        sender: alice.peer_id(),
        recipient: Some(to),
        timestamp_ms: 1_700_000_000_000,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature::UNSIGNED,
    };
    let mut acks = PendingAcks::new();
    let none = acks.to_bytes();
    acks.track(&message(1, bob.peer_id()));
    acks.track(&ack_for(
        &message(2, bob.peer_id()),
        bob.peer_id(),
        1_700_000_000_500,
    ));
    vec![
        ("key_request", key_request_payload(&bob.peer_id())),
        ("key_reply", key_reply_payload(bob.public_key())),
        ("acks_empty", none),
        ("acks_two", acks.to_bytes()),
    ]
}
