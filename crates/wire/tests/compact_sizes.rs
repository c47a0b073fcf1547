//! Sizes of the compact NetworkMessage form next to the full form for the
//! seed's typical constrained-link payloads (LoRa, 3.2): presence heartbeat
//! (32 bytes), notification header (64 bytes), permission grant (96 bytes).
//! Run with `--nocapture` to see the table.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};
use ecomesh_wire::{
    decode_message, decode_message_compact, encode_message, encode_message_compact,
};

fn message(kind: &str, payload_len: usize, recipient: bool) -> NetworkMessage {
    NetworkMessage {
        id: MessageId::new_v4([0x5a; 16]),
        message_type: kind.into(),
        payload: vec![0xa7; payload_len],
        sender: PeerId::from_digest([0x11; 32]),
        recipient: recipient.then(|| PeerId::from_digest([0x22; 32])),
        timestamp_ms: 1_767_225_600_000,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature([0x33; 64]),
    }
}

#[test]
fn compact_form_is_smaller_for_typical_messages() {
    let cases = [
        ("presence heartbeat", message("presence", 32, false)),
        ("notification header", message("notify", 64, true)),
        ("permission grant", message("grant", 96, true)),
        (
            "relayed heartbeat (hop 3, ttl 300 s)",
            NetworkMessage {
                hop_count: 3,
                ttl_secs: 300,
                ..message("presence", 32, false)
            },
        ),
    ];
    println!(
        "{:<38} {:>7} {:>5} {:>7} {:>6}",
        "message", "payload", "full", "compact", "saved"
    );
    for (name, m) in cases {
        let full = encode_message(&m);
        let compact = encode_message_compact(&m);
        assert_eq!(decode_message(&full).unwrap(), m);
        assert_eq!(decode_message_compact(&compact).unwrap(), m);
        println!(
            "{name:<38} {:>7} {:>5} {:>7} {:>6}",
            m.payload.len(),
            full.len(),
            compact.len(),
            full.len() - compact.len()
        );
        assert!(compact.len() < full.len(), "{name}");
        // Beyond the raw id, sender, recipient, signature, type and payload, the
        // compact form spends at most 1 map head + 10 one-byte keys + 6 string
        // heads of <= 2 bytes + a 9-byte timestamp + 3 small fields of <= 5 bytes.
        let raw =
            16 + 32 + 64 + m.message_type.len() + m.payload.len() + m.recipient.map_or(0, |_| 32);
        let bound = raw + 1 + 10 + 12 + 9 + 15;
        assert!(
            compact.len() <= bound,
            "{name}: {} > {bound}",
            compact.len()
        );
    }
}
