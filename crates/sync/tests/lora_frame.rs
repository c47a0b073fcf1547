//! Issue 16, goal 2: a signed single-field update of a small document as it
//! travels on LoRa. The version comes from the real store, is put in compact
//! form exactly as the replication push does, wrapped in the push message the
//! real mesh signs, and sent by real LoRa engines (`transport_lora::measure`: two
//! engines in virtual time with a formed session), counting the frames on air.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;

use ecomesh_crdt::ManualClock;
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::{MeshConfig, MultiTransportManager};
use ecomesh_p2p_storage::{
    MemoryStore, P2PConfig, PUSH_TYPE, StoreConfig, canonical_of_compact, compact_of_canonical,
};
use ecomesh_transport_lora::engine::{EngineConfig, SINGLE_FRAME_CAPACITY};
use ecomesh_transport_lora::envelope::{encode_envelope, encode_link_envelope};
use ecomesh_transport_lora::measure::{formed_line, send_along};
use ecomesh_types::{Map, PeerId, Value};
use ecomesh_wire::{decode_message_compact, encode_message_compact};

fn map(pairs: &[(&str, Value)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[test]
fn a_signed_one_field_update_on_lora() {
    let author = Identity::from_secret_bytes(&[1; 32]);
    let partner = Identity::from_secret_bytes(&[2; 32]);
    let clock = Arc::new(ManualClock::new(1_767_225_600_000));
    let store =
        MemoryStore::in_memory(author.clone(), StoreConfig::default().with_clock(clock)).unwrap();
    store
        .set(
            "todos",
            "t1",
            map(&[
                ("title", Value::Text("buy milk".into())),
                ("done", Value::Bool(false)),
                ("due", Value::Integer(20_260_107)),
            ]),
            Default::default(),
        )
        .unwrap();
    let cid = store
        .update("todos", "t1", map(&[("done", Value::Bool(true))]))
        .unwrap()
        .version
        .unwrap();
    let canonical = store.version_bytes(&cid).unwrap().unwrap();

    // The push payload, as the adapter makes it (the sender is the author).
    let payload = compact_of_canonical(&canonical, &author.peer_id()).unwrap();
    let key = author.public_key().to_bytes();
    assert_eq!(
        canonical_of_compact(&payload, Some(&key)).unwrap(),
        canonical
    );

    // The push message, as the adapter sends it: signed by the mesh, with the
    // adapter's replication TTL.
    let keys: HashMap<PeerId, PublicKey> = HashMap::new();
    let mesh = MultiTransportManager::new(author.clone(), Arc::new(keys), MeshConfig::default());
    let mut message = mesh
        .new_message(
            PUSH_TYPE,
            payload.clone(),
            Some(partner.peer_id()),
            1_767_225_600_123,
            [7; 16],
        )
        .unwrap();
    message.ttl_secs = P2PConfig::default().message_ttl_secs;
    let compact_message = encode_message_compact(&message);
    assert_eq!(decode_message_compact(&compact_message).unwrap(), message);
    // What the LoRa transport puts in its sealed unit: the binary envelope, which
    // leaves out the recipient when it is the next hop, and, on a message straight
    // from its sender to its recipient, the sender and the signature too (the
    // session authenticates the unit: the AEAD tag is the unicast authentication).
    let signed_envelope = encode_envelope(&message, &partner.peer_id()).unwrap();
    let envelope = encode_link_envelope(&message, &partner.peer_id()).unwrap();
    assert_eq!(envelope.len() + 32 + 64, signed_envelope.len());
    // On air between two engines with a formed session. The engines carry the
    // envelope without checking the signature (the mesh does), so the message is
    // re-addressed to the line's own peers; the envelope's size does not change.
    let mut line = formed_line(1, &EngineConfig::default()).unwrap();
    let mut on_air = message.clone();
    on_air.sender = line.id(0);
    on_air.recipient = Some(line.id(1));
    assert_eq!(
        encode_link_envelope(&on_air, &line.id(1)).unwrap().len(),
        envelope.len()
    );
    let report = send_along(&mut line, &on_air).unwrap();
    println!(
        "version node: canonical {} B, compact {} B; push envelope {} B ({} B besides the \
         version); LoRa: {} frame(s), {} B on air (one frame holds an envelope of {} B)",
        canonical.len(),
        payload.len(),
        envelope.len(),
        envelope.len() - payload.len(),
        report.frames,
        report.bytes,
        SINGLE_FRAME_CAPACITY,
    );
    // The version itself: the signature (64 B), the parent's digest (33 B)
    // and 31 B of everything else, against 405 B in canonical form.
    assert!(payload.len() <= 128, "compact version {} B", payload.len());
    assert!(3 * payload.len() <= canonical.len());
    // With the canonical version and the CBOR envelope it took four frames;
    // with the compact version and the signed binary envelope two; with the
    // link-authenticated envelope one (goal 2).
    assert_eq!(report.frames, 1, "{report:?}");
    assert!(
        envelope.len() <= SINGLE_FRAME_CAPACITY && signed_envelope.len() > SINGLE_FRAME_CAPACITY,
        "envelope {} B (signed {} B)",
        envelope.len(),
        signed_envelope.len()
    );
}
