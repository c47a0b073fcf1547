//! Property tests: canonical round trips, order independence, codec round
//! trips for every type, and decoders that never panic.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ecomesh_crdt::{
    DagNode, DocumentCrdt, GSet, LwwRegister, OrSet, PnCounter, VectorClock, VersionDag,
};
use ecomesh_types::{ContentId, HlcTimestamp, Map, NetworkMessage, Value};
use ecomesh_wire::{
    Canonical, HashAlg, cid_of, cid_of_dag_cbor, cid_of_with, decode, decode_message,
    decode_message_compact, encode, encode_block, encode_message, encode_message_compact,
    from_dag_cbor, from_dag_json, from_dag_json_bytes, parse_cid, to_dag_cbor, to_dag_json,
};
use proptest::prelude::*;

fn round_trip<T: Canonical + PartialEq + std::fmt::Debug>(v: &T) -> Result<(), TestCaseError> {
    let bytes = encode(v).unwrap();
    let back: T = decode(&bytes).unwrap();
    prop_assert_eq!(&back, v);
    prop_assert_eq!(encode(&back).unwrap(), bytes.clone());
    // Every form is valid canonical DAG-CBOR: the generic decoder accepts it
    // unless it holds a u64 above i64::MAX (valid DAG-CBOR that `Value` cannot
    // hold), and serde_cbor always reads it.
    match from_dag_cbor(&bytes) {
        Ok(as_value) => prop_assert_eq!(to_dag_cbor(&as_value).unwrap(), bytes.clone()),
        Err(e) => prop_assert!(
            matches!(e, ecomesh_wire::WireError::IntegerOutOfRange { .. }),
            "{e}"
        ),
    }
    prop_assert!(serde_cbor::from_slice::<serde_cbor::Value>(&bytes).is_ok());
    Ok(())
}

/// Whatever a decoder accepts re-encodes to exactly the input.
fn accepts_only_canonical<T: Canonical>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(v) = decode::<T>(bytes) {
        prop_assert_eq!(encode(&v).unwrap(), bytes.to_vec());
    }
    Ok(())
}

fn all_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(v) = from_dag_cbor(bytes) {
        prop_assert_eq!(to_dag_cbor(&v).unwrap(), bytes.to_vec());
    }
    if let Ok(m) = decode_message(bytes) {
        prop_assert_eq!(encode_message(&m), bytes.to_vec());
    }
    if let Ok(m) = decode_message_compact(bytes) {
        prop_assert_eq!(encode_message_compact(&m), bytes.to_vec());
    }
    accepts_only_canonical::<HlcTimestamp>(bytes)?;
    accepts_only_canonical::<VectorClock>(bytes)?;
    accepts_only_canonical::<LwwRegister<Value>>(bytes)?;
    accepts_only_canonical::<GSet<Value>>(bytes)?;
    accepts_only_canonical::<OrSet<Value>>(bytes)?;
    accepts_only_canonical::<PnCounter>(bytes)?;
    accepts_only_canonical::<DocumentCrdt>(bytes)?;
    accepts_only_canonical::<DagNode<ContentId>>(bytes)?;
    accepts_only_canonical::<VersionDag<ContentId>>(bytes)?;
    if let Ok(v) = from_dag_json_bytes(bytes) {
        let text = to_dag_json(&v).unwrap();
        prop_assert_eq!(from_dag_json(&text).unwrap(), v);
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(cid) = parse_cid(text)
    {
        prop_assert_eq!(cid.to_string(), text);
    }
    Ok(())
}

fn arb_dag() -> impl Strategy<Value = VersionDag<ContentId>> {
    proptest::collection::vec(
        (
            arb_cid(),
            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
        ),
        0..8,
    )
    .prop_map(|nodes| {
        let mut dag = VersionDag::new();
        let mut ids: Vec<ContentId> = Vec::new();
        for (id, parents) in nodes {
            if dag.contains(&id) {
                continue;
            }
            let mut ps: Vec<ContentId> = if ids.is_empty() {
                vec![]
            } else {
                parents
                    .iter()
                    .map(|i| ids[i.index(ids.len())].clone())
                    .collect()
            };
            ps.sort();
            ps.dedup();
            dag.insert(id.clone(), ps).unwrap();
            ids.push(id);
        }
        dag
    })
}

proptest! {
    /// The CID hashed while encoding (whole blocks as the encoder passes
    /// them) is the CID of the finished bytes, for values spanning from
    /// under one SHA-256 block to many, with either hash.
    #[test]
    fn prop_cid_hashed_while_encoding_is_the_cid_of_the_bytes(
        v in arb_value(),
        copies in 1_usize..24,
        long in 0_usize..400,
    ) {
        let mut items = vec![v; copies];
        items.insert(copies / 2, Value::Bytes(vec![7; long]));
        let v = Value::Array(items);
        let bytes = to_dag_cbor(&v).unwrap();
        let expected = cid_of_dag_cbor(&bytes);
        prop_assert_eq!(cid_of(&v).unwrap(), expected);
        let (block, cid) = encode_block(&v, HashAlg::Sha2_256).unwrap();
        prop_assert_eq!(&block, &bytes);
        prop_assert_eq!(cid, expected);
        let (block, cid) = encode_block(&v, HashAlg::Blake3).unwrap();
        prop_assert_eq!(&block, &bytes);
        prop_assert_eq!(cid, cid_of_with(&v, HashAlg::Blake3).unwrap());
        let digest = blake3::hash(&bytes);
        prop_assert_eq!(cid.hash().digest(), digest.as_bytes());
    }

    #[test]
    fn prop_dag_cbor_round_trip(v in arb_value()) {
        let bytes = to_dag_cbor(&v).unwrap();
        let back = from_dag_cbor(&bytes).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(to_dag_cbor(&back).unwrap(), bytes);
    }

    #[test]
    fn prop_serde_cbor_reads_the_same_structure(v in arb_value()) {
        let bytes = to_dag_cbor(&v).unwrap();
        let theirs: serde_cbor::Value = serde_cbor::from_slice(&bytes).unwrap();
        prop_assert_eq!(count_items(&theirs), count_value_items(&v));
    }

    #[test]
    fn prop_field_order_independence(
        entries in proptest::collection::btree_map(arb_key(), arb_json_value(), 0..6),
        seed in any::<u64>(),
    ) {
        // The same document written as DAG-JSON with its keys in any order
        // gives the same DAG-CBOR bytes and CID.
        let canonical = Value::Map(entries.clone());
        let mut order: Vec<(&String, &Value)> = entries.iter().collect();
        let n = order.len().max(1);
        order.rotate_left((seed as usize) % n);
        if seed % 2 == 0 {
            order.reverse();
        }
        let mut text = String::from("{");
        for (i, (k, v)) in order.iter().enumerate() {
            if i > 0 {
                text.push_str(" , ");
            }
            text.push_str(&to_dag_json(&Value::Text((*k).clone())).unwrap());
            text.push_str(" : ");
            text.push_str(&to_dag_json(v).unwrap());
        }
        text.push('}');
        let parsed = from_dag_json(&text);
        // A lone "/" key may form a link/bytes: that is a different value.
        if let Ok(Value::Map(_)) = parsed {
            let parsed = parsed.unwrap();
            prop_assert_eq!(to_dag_cbor(&parsed).unwrap(), to_dag_cbor(&canonical).unwrap());
            prop_assert_eq!(cid_of(&parsed).unwrap(), cid_of(&canonical).unwrap());
        }
    }

    #[test]
    fn prop_dag_json_round_trip(v in arb_json_value()) {
        let text = to_dag_json(&v).unwrap();
        let back = from_dag_json(&text).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(to_dag_json(&back).unwrap(), text.clone());
        // An independent JSON parser accepts the export as JSON.
        prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{}", text);
    }

    #[test]
    fn prop_codec_round_trips(
        hlc in arb_hlc(),
        vc in arb_vclock(),
        lww in arb_lww(),
        gset in arb_gset(),
        orset in arb_orset(),
        pn in arb_pncounter(),
    ) {
        round_trip(&hlc)?;
        round_trip(&vc)?;
        round_trip(&lww)?;
        round_trip(&gset)?;
        round_trip(&orset)?;
        round_trip(&pn)?;
    }

    #[test]
    fn prop_document_and_dag_round_trips(doc in arb_doc(), dag in arb_dag()) {
        round_trip(&doc)?;
        round_trip(&dag)?;
        for node in dag.nodes() {
            round_trip(&node)?;
        }
    }

    #[test]
    fn prop_message_round_trips(m in arb_message()) {
        let full = encode_message(&m);
        prop_assert_eq!(decode_message(&full).unwrap(), m.clone());
        let compact = encode_message_compact(&m);
        prop_assert_eq!(decode_message_compact(&compact).unwrap(), m.clone());
        prop_assert!(compact.len() < full.len());
        round_trip::<NetworkMessage>(&m)?;
    }

    #[test]
    fn prop_decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        all_decoders(&bytes)?;
    }

    #[test]
    fn prop_decoders_never_panic_on_mutated_encodings(
        v in arb_value(),
        doc in arb_doc(),
        m in arb_message(),
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
    ) {
        for valid in [
            to_dag_cbor(&v).unwrap(),
            encode(&doc).unwrap(),
            encode_message(&m),
            encode_message_compact(&m),
            to_dag_json(&v).map(String::into_bytes).unwrap_or_default(),
        ] {
            all_decoders(&mutate(&valid, &ops))?;
        }
    }
}

fn count_value_items(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_value_items).sum::<usize>(),
        Value::Map(m) => 1 + m.values().map(count_value_items).sum::<usize>(),
        _ => 1,
    }
}

fn count_items(v: &serde_cbor::Value) -> usize {
    match v {
        serde_cbor::Value::Array(a) => 1 + a.iter().map(count_items).sum::<usize>(),
        serde_cbor::Value::Map(m) => 1 + m.values().map(count_items).sum::<usize>(),
        _ => 1,
    }
}

#[test]
fn empty_map_field_order_example() {
    let mut a = Map::new();
    a.insert("zeta".into(), Value::Integer(1));
    a.insert("a".into(), Value::Integer(2));
    let text1 = r#"{"zeta":1,"a":2}"#;
    let text2 = r#"{"a":2,"zeta":1}"#;
    let b1 = to_dag_cbor(&from_dag_json(text1).unwrap()).unwrap();
    let b2 = to_dag_cbor(&from_dag_json(text2).unwrap()).unwrap();
    assert_eq!(b1, b2);
    assert_eq!(b1, to_dag_cbor(&Value::Map(a)).unwrap());
    // length-first: "a" before "zeta".
    assert_eq!(b1[1], 0x61);
}
