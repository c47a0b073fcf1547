//! Issue 16, goal 2: a signed single-field update of a small document as it
//! travels on LoRa. The version comes from the real store, is put in compact
//! form exactly as the replication push does, wrapped in the push message the
//! real mesh signs, and cut into the sealed frames the LoRa transport sends
//! (its public framing: routing header, body, AEAD tag, fragmentation).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;

use ecomesh_crdt::ManualClock;
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::{MeshConfig, MultiTransportManager};
use ecomesh_p2p_storage::{
    MemoryStore, P2PConfig, PUSH_TYPE, StoreConfig, canonical_of_compact, compact_of_canonical,
};
use ecomesh_transport_lora::airtime::MAX_APP_PAYLOAD;
use ecomesh_transport_lora::engine::{FRAGMENT_CAPACITY, SINGLE_FRAME_CAPACITY};
use ecomesh_transport_lora::frag::split;
use ecomesh_transport_lora::frame::{
    Body, RouteHeader, SEALED_HEADER_LEN, TAG_LEN, encode_inner, short_id,
};
use ecomesh_types::{Map, PeerId, Value};
use ecomesh_wire::{decode_message_compact, encode_message_compact};

fn map(pairs: &[(&str, Value)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The sealed LoRa frames (`Data.payload` bytes, as many as the transport
/// sends) of one compact message from `from` to `to`.
fn lora_frames(compact: &[u8], from: &PeerId, to: &PeerId) -> Vec<usize> {
    let bodies = if compact.len() <= SINGLE_FRAME_CAPACITY {
        vec![Body::Message(compact.to_vec())]
    } else {
        let parts = split(compact, FRAGMENT_CAPACITY, u8::MAX).unwrap();
        let count = u8::try_from(parts.len()).unwrap();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, d)| Body::Fragment {
                group: 0xffff,
                index: u8::try_from(i).unwrap(),
                count,
                data: d.to_vec(),
            })
            .collect()
    };
    bodies
        .iter()
        .map(|body| {
            let h = RouteHeader {
                ttl: 3,
                hops: 0,
                origin: short_id(from),
                dest: short_id(to),
                seq: 0xffff,
            };
            // Sealed frame: kind, session id, counter, then the ciphertext of
            // the routing header and body with its tag.
            SEALED_HEADER_LEN + encode_inner(&h, body).len() + TAG_LEN
        })
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
    let frames = lora_frames(&compact_message, &author.peer_id(), &partner.peer_id());
    let envelope = compact_message.len() - payload.len();
    println!(
        "version node: canonical {} B, compact {} B; push message {} B (envelope {} B); \
         LoRa frames {:?} (one frame holds a message of {} B)",
        canonical.len(),
        payload.len(),
        compact_message.len(),
        envelope,
        frames,
        SINGLE_FRAME_CAPACITY,
    );
    assert!(frames.iter().all(|f| *f <= MAX_APP_PAYLOAD));
    // The version itself: the signature (64 B), the parent's digest (33 B)
    // and 31 B of everything else, against 405 B in canonical form.
    assert!(payload.len() <= 128, "compact version {} B", payload.len());
    assert!(3 * payload.len() <= canonical.len());
    // With the canonical version it took four frames; now two. One frame
    // (goal 2) needs the message envelope on LoRa to shrink: the 64-byte
    // message signature, the 32-byte sender and recipient and the 12-byte
    // type take 186 B of the 194 B a frame holds, and the version's own
    // signature alone is 64 B.
    assert!(frames.len() <= 2, "{frames:?}");
    assert!(
        envelope + 64 > SINGLE_FRAME_CAPACITY,
        "the envelope now leaves room: make this test assert one frame"
    );
}
