//! Property tests of the compact delta form: it round-trips to the same state
//! (so the canonical bytes rebuilt from it are the canonical bytes of the
//! original), it is never larger than the canonical form for realistic
//! deltas, and its strict decoder accepts only its own encodings and never
//! panics.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ecomesh_crdt::DocumentCrdt;
use ecomesh_types::{HlcTimestamp, Map, Value};
use ecomesh_wire::compact::{decode_delta_compact, decode_document_compact};
use ecomesh_wire::{Limits, encode, encode_delta_compact, encode_document_compact};
use ecomesh_wire::{decode_state_compact, encode_state_compact};
use proptest::prelude::*;

proptest! {
    #[test]
    fn prop_compact_delta_round_trips_to_the_canonical_bytes(doc in arb_doc(), base in arb_hlc()) {
        let compact = encode_delta_compact(&doc, &base).unwrap();
        let back = decode_delta_compact(&compact, &base, &Limits::DEFAULT).unwrap();
        prop_assert_eq!(encode(&back).unwrap(), encode(&doc).unwrap());
        prop_assert_eq!(&back, &doc);
        let standalone = encode_document_compact(&doc).unwrap();
        prop_assert_eq!(decode_document_compact(&standalone, &Limits::DEFAULT).unwrap(), doc);
    }

    #[test]
    fn prop_compact_decoders_accept_only_their_encodings(
        doc in arb_doc(),
        base in arb_hlc(),
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
    ) {
        let compact = encode_delta_compact(&doc, &base).unwrap();
        let bad = mutate(&compact, &ops);
        if let Ok(d) = decode_delta_compact(&bad, &base, &Limits::DEFAULT) {
            prop_assert_eq!(encode_delta_compact(&d, &base).unwrap(), bad);
        }
        let standalone = encode_document_compact(&doc).unwrap();
        let bad = mutate(&standalone, &ops);
        if let Ok(d) = decode_document_compact(&bad, &Limits::DEFAULT) {
            prop_assert_eq!(encode_document_compact(&d).unwrap(), bad);
        }
    }

    #[test]
    fn prop_compact_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96), base in arb_hlc()) {
        let _ = decode_delta_compact(&bytes, &base, &Limits::DEFAULT);
        let _ = decode_document_compact(&bytes, &Limits::DEFAULT);
    }
}

/// A one-field update by the base's own peer at the base's own time: every
/// timestamp is one byte and no peer id travels.
#[test]
fn one_field_update_by_the_author_is_a_few_bytes() {
    let peer = ecomesh_types::PeerId::from_digest([7; 32]);
    let ts = HlcTimestamp::new(1_767_225_600_000, 0, peer);
    let mut doc = DocumentCrdt::new();
    let mut m = Map::new();
    m.insert("done".into(), Value::Bool(true));
    let delta = doc.update(m, ts).unwrap();
    let compact = encode_delta_compact(&delta, &ts).unwrap();
    let canonical = encode(&delta).unwrap();
    // actors 0, flags, written, 1 field, "done", parts, ts, slot, true
    assert_eq!(
        compact.len(),
        1 + 1 + 1 + 1 + 5 + 1 + 1 + 1 + 1,
        "{compact:02x?}"
    );
    assert!(
        canonical.len() > 5 * compact.len(),
        "{} vs {}",
        canonical.len(),
        compact.len()
    );
}

proptest! {
    /// The form with a known author (an update sent by its author): it
    /// round-trips to the same state and the same canonical bytes whether or
    /// not the known peer is the state's base peer, and it is never larger
    /// than the standalone form.
    #[test]
    fn prop_state_with_known_author_round_trips(doc in arb_doc(), other in arb_peer()) {
        let author = doc.max_timestamp().map(|t| t.peer).unwrap_or(other);
        for known in [author, other] {
            let compact = encode_state_compact(&doc, Some(&known)).unwrap();
            let back = decode_state_compact(&compact, Some(&known), &Limits::DEFAULT).unwrap();
            prop_assert_eq!(encode(&back).unwrap(), encode(&doc).unwrap());
            prop_assert_eq!(&back, &doc);
            prop_assert!(compact.len() <= encode_document_compact(&doc).unwrap().len());
        }
    }

    /// Mutated bytes decode, if at all, only to a state that re-encodes to them.
    #[test]
    fn prop_state_decoder_accepts_only_its_encodings(
        doc in arb_doc(),
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
    ) {
        let author = doc.max_timestamp().map(|t| t.peer);
        let compact = encode_state_compact(&doc, author.as_ref()).unwrap();
        let bad = mutate(&compact, &ops);
        if let Ok(d) = decode_state_compact(&bad, author.as_ref(), &Limits::DEFAULT) {
            prop_assert_eq!(encode_state_compact(&d, author.as_ref()).unwrap(), bad);
        }
    }
}

/// The author of an update, known from the link, costs no byte; without it
/// the same bytes are refused (the decoder does not guess a peer).
#[test]
fn update_by_a_known_author_leaves_its_peer_id_out() {
    let peer = ecomesh_types::PeerId::from_digest([7; 32]);
    let ts = HlcTimestamp::new(1_767_225_600_000, 0, peer);
    let mut doc = DocumentCrdt::new();
    let mut m = Map::new();
    m.insert("done".into(), Value::Bool(true));
    let delta = doc.update(m, ts).unwrap();
    let known = encode_state_compact(&delta, Some(&peer)).unwrap();
    // head, 6-byte time, 1 field, "done" (1 + 4), field head, `true`
    assert_eq!(known.len(), 1 + 6 + 1 + 5 + 1 + 1, "{known:02x?}");
    assert_eq!(
        encode_document_compact(&delta).unwrap().len(),
        known.len() + 32
    );
    assert!(decode_state_compact(&known, None, &Limits::DEFAULT).is_err());
    let other = ecomesh_types::PeerId::from_digest([8; 32]);
    // Another known peer: the bytes decode to another author's write, which
    // re-encodes differently for that peer only if it is its base peer.
    let as_other = decode_state_compact(&known, Some(&other), &Limits::DEFAULT).unwrap();
    assert_eq!(as_other.max_timestamp().map(|t| t.peer), Some(other));
}

/// References and shared name prefixes rebuild text from few bytes; a decode
/// that would rebuild more than 64 times its input is refused, not allocated.
#[test]
fn text_references_cannot_amplify_without_bound() {
    let long = "x".repeat(4000);
    // One field whose value is an array of 4000 references to one long text.
    let mut bytes = vec![0x11];
    bytes.extend_from_slice(&[0x07; 32]);
    bytes.extend_from_slice(&[0x80, 0xd0, 0xea, 0xb6, 0xb7, 0x33]);
    bytes.push(1); // one field
    bytes.extend_from_slice(&[0x01, b'a']); // name "a"
    bytes.push(0x04); // a value written at the base time
    bytes.extend_from_slice(&[0x09, 0xa1, 0x1f]); // an array of 4001 items
    bytes.push(0x05); // the long text, added to the table
    bytes.extend_from_slice(&[0xa0, 0x1f]);
    bytes.extend_from_slice(long.as_bytes());
    for _ in 0..4000 {
        bytes.extend_from_slice(&[0x06, 0x00]); // a reference to it
    }
    let err = decode_document_compact(&bytes, &Limits::DEFAULT).unwrap_err();
    assert!(err.to_string().contains("rebuilds more text"), "{err}");
    // With few references the same shape decodes (and is its own encoding).
    // head, peer, time, field count, name, field head, array tag
    let at = 1 + 32 + 6 + 1 + 2 + 1 + 1;
    let mut small = bytes[..at].to_vec();
    small.push(0x03); // three items
    small.push(0x05);
    small.extend_from_slice(&[0xa0, 0x1f]);
    small.extend_from_slice(long.as_bytes());
    small.extend_from_slice(&[0x06, 0x00, 0x06, 0x00]);
    let doc = decode_document_compact(&small, &Limits::DEFAULT).unwrap();
    assert_eq!(encode_document_compact(&doc).unwrap(), small);
}

/// A value nested near the depth limit: whatever the compact decoder
/// accepts has canonical bytes (the canonical form counts the document's own
/// nesting around the value), as a field value and as a set element.
#[test]
fn deeply_nested_values_decode_only_with_canonical_bytes() {
    let peer = ecomesh_types::PeerId::from_digest([7; 32]);
    let ts = HlcTimestamp::new(1_767_225_600_000, 0, peer);
    for d in 50..=66 {
        let mut v = Value::Integer(1);
        for _ in 0..d {
            v = Value::Array(vec![v]);
        }
        let mut as_field = DocumentCrdt::new();
        let mut m = Map::new();
        m.insert("deep".into(), v.clone());
        as_field.set(m, ts).unwrap();
        let mut as_element = DocumentCrdt::new();
        as_element
            .apply(
                [("deep".to_owned(), ecomesh_crdt::FieldOp::AddToSet(vec![v]))],
                ts,
            )
            .unwrap();
        for doc in [as_field, as_element] {
            let Ok(bytes) = encode_state_compact(&doc, Some(&peer)) else {
                continue;
            };
            if let Ok(back) = decode_state_compact(&bytes, Some(&peer), &Limits::DEFAULT) {
                assert!(
                    encode(&back).is_ok(),
                    "depth {d} decoded without canonical bytes"
                );
            }
        }
    }
}
