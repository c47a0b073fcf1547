//! Goal 2 of issue 16: a signed single-field update of a small document, as
//! it travels (the compact version node inside the compact `NetworkMessage`
//! the LoRa transport puts in one sealed frame).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use common::*;
use ecomesh_p2p_storage::{PUSH_TYPE, VersionNode, canonical_of_compact, compact_of_canonical};
use ecomesh_types::{MessageId, NetworkMessage, Value};
use ecomesh_wire::encode_message_compact;

#[test]
fn one_field_update_sizes() {
    let store = memory(1);
    store
        .set(
            "todos",
            "t1",
            fields(&[
                ("title", Value::Text("buy milk".into())),
                ("done", Value::Bool(false)),
                ("due", Value::Integer(20_260_107)),
            ]),
            Default::default(),
        )
        .unwrap();
    let w = store
        .update("todos", "t1", fields(&[("done", Value::Bool(true))]))
        .unwrap();
    let cid = w.version.unwrap();
    let canonical = store.version_bytes(&cid).unwrap().unwrap();
    let sender = common::identity(1);
    let compact = compact_of_canonical(&canonical, &sender.peer_id()).unwrap();
    let key = sender.public_key().to_bytes();
    assert_eq!(
        canonical_of_compact(&compact, Some(&key)).unwrap(),
        canonical
    );
    let node: VersionNode = ecomesh_wire::decode(&canonical).unwrap();
    let mut m = NetworkMessage {
        id: MessageId::new_v4([9; 16]),
        message_type: PUSH_TYPE.into(),
        payload: compact.clone(),
        sender: node.author_peer(),
        recipient: Some(common::identity(2).peer_id()),
        timestamp_ms: 1_700_000_000_000,
        ttl_secs: 120,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: ecomesh_types::Signature::UNSIGNED,
    };
    common::identity(1).sign_message(&mut m).unwrap();
    let msg = encode_message_compact(&m);
    println!(
        "canonical {} compact {} message {}",
        canonical.len(),
        compact.len(),
        msg.len()
    );
}
