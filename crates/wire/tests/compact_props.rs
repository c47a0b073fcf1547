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
