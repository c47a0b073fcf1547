//! The compact wire forms: a version node (`VersionNode::decode_compact`, with
//! and without the sender's key), a delta relative to a base timestamp
//! (`decode_delta_compact`) and a state (`decode_document_compact`, or
//! `decode_state_compact` with a known author when bit 2 of the first byte is set).
//! Whatever decodes re-encodes to exactly the input, and a decoded version
//! node has canonical bytes. The first byte picks the decoder.
#![no_main]

use ecomesh_p2p_storage::VersionNode;
use ecomesh_types::{HlcTimestamp, PeerId};
use ecomesh_wire::compact::{decode_delta_compact, decode_document_compact, encode_delta_compact};
use ecomesh_wire::{Limits, decode_state_compact, encode_document_compact, encode_state_compact};
use libfuzzer_sys::fuzz_target;

/// A fixed sender key (any 32 bytes stand for a key here: nothing is verified).
const SENDER_KEY: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 | 1 => {
            let key = (which % 4 == 1).then_some(&SENDER_KEY);
            if let Ok(node) = VersionNode::decode_compact(bytes, key) {
                let sender = key.map(ecomesh_identity::peer_id_of);
                assert_eq!(
                    node.encode_compact(sender.as_ref()).expect("re-encodes"),
                    bytes
                );
                ecomesh_wire::encode(&node).expect("has canonical bytes");
            }
            // The canonical form too (clear and sealed nodes): strict round trip.
            if let Ok(node) = ecomesh_wire::decode::<VersionNode>(bytes) {
                assert_eq!(ecomesh_wire::encode(&node).expect("re-encodes"), bytes);
            }
        }
        2 => {
            let base = HlcTimestamp::new(1_767_225_600_000, 3, PeerId::from_digest([7; 32]));
            if let Ok(d) = decode_delta_compact(bytes, &base, &Limits::DEFAULT) {
                assert_eq!(encode_delta_compact(&d, &base).expect("re-encodes"), bytes);
            }
        }
        _ if which & 4 == 0 => {
            if let Ok(d) = decode_document_compact(bytes, &Limits::DEFAULT) {
                assert_eq!(encode_document_compact(&d).expect("re-encodes"), bytes);
                ecomesh_wire::encode(&d).expect("has canonical bytes");
            }
        }
        _ => {
            // An update whose author the link authenticated.
            let known = PeerId::from_digest([0xa1; 32]);
            if let Ok(d) = decode_state_compact(bytes, Some(&known), &Limits::DEFAULT) {
                assert_eq!(
                    encode_state_compact(&d, Some(&known)).expect("re-encodes"),
                    bytes
                );
                ecomesh_wire::encode(&d).expect("has canonical bytes");
            }
        }
    }
});
