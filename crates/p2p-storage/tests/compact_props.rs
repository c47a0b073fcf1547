//! Property tests of the compact wire form of version nodes: for any signed
//! node, the canonical bytes the receiver rebuilds from the compact form are
//! exactly the node's canonical bytes (so the CID and signature check as
//! before), for both forms (author's key sent or left out), and the strict
//! decoder refuses every mutation that does not re-encode to itself.
#![allow(clippy::unwrap_used)]

use ecomesh_crdt::{DocumentCrdt, FieldOp};
use ecomesh_identity::Identity;
use ecomesh_p2p_storage::{VersionNode, canonical_of_compact, compact_of_canonical};
use ecomesh_types::{ContentId, HlcTimestamp, Value};
use proptest::prelude::*;

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Integer),
        "[a-z ]{0,12}".prop_map(Value::Text),
        Just(Value::Null),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Set(String, Value),
    Incr(String, i64),
    Add(String, Value),
    Remove(String),
    Delete,
}

fn arb_op() -> impl Strategy<Value = Op> {
    let name = "[a-e]{1,6}";
    prop_oneof![
        (name, arb_value()).prop_map(|(n, v)| Op::Set(n, v)),
        (name, -9_i64..9).prop_map(|(n, i)| Op::Incr(n, i)),
        (name, arb_value()).prop_map(|(n, v)| Op::Add(n, v)),
        name.prop_map(Op::Remove),
        Just(Op::Delete),
    ]
}

fn arb_parent() -> impl Strategy<Value = ContentId> {
    prop_oneof![
        // The store's own CIDs (v1, dag-cbor, sha2-256).
        any::<[u8; 32]>().prop_map(|d| {
            let mut c = vec![0x01, 0x71, 0x12, 0x20];
            c.extend_from_slice(&d);
            ContentId(c)
        }),
        // Another kind of CID (blake3), sent in full.
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|data| {
            ecomesh_wire::to_content_id(&ecomesh_wire::cid_for_bytes(
                ecomesh_wire::cid::DAG_CBOR,
                ecomesh_wire::HashAlg::Blake3,
                &data,
            ))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_compact_version_rebuilds_the_canonical_bytes(
        seed in any::<u8>(),
        ops in proptest::collection::vec((arb_op(), 0_u64..100_000, 0_u32..3, any::<bool>()), 1..6),
        parents in proptest::collection::vec(arb_parent(), 0..3),
        collection in "[a-z]{1,8}",
        id in "[a-z0-9]{1,8}",
        mutation in (any::<usize>(), any::<u8>()),
    ) {
        let author = Identity::from_secret_bytes(&[seed; 32]);
        let other = Identity::from_secret_bytes(&[seed.wrapping_add(1); 32]);
        let mut doc = DocumentCrdt::new();
        let mut delta = DocumentCrdt::new();
        let mut last = HlcTimestamp::new(0, 0, author.peer_id());
        for (op, ms, logical, by_other) in ops {
            // The node's own timestamp is the latest; others' writes come before.
            let who = if by_other { other.peer_id() } else { author.peer_id() };
            let ts = HlcTimestamp::new(1_767_225_600_000 + ms, logical, who);
            let d = match op {
                Op::Set(n, v) => doc.apply([(n, FieldOp::Set(v))], ts),
                Op::Incr(n, i) => doc.apply([(n, FieldOp::Increment(i))], ts),
                Op::Add(n, v) => doc.apply([(n, FieldOp::AddToSet(vec![v]))], ts),
                Op::Remove(n) => doc.apply([(n, FieldOp::Remove)], ts),
                Op::Delete => doc.delete(ts),
            };
            if let Ok(d) = d {
                ecomesh_crdt::Merge::merge(&mut delta, &d);
            }
            last = last.max(ts);
        }
        prop_assume!(!delta.is_empty());
        let ts = HlcTimestamp::new(last.physical_ms + 1, 0, author.peer_id());
        let node = VersionNode::signed(&author, &collection, &id, parents, ts, delta).unwrap();
        let canonical = ecomesh_wire::encode(&node).unwrap();
        let key = author.public_key().to_bytes();
        // Sent by its author (key left out) and by anyone else (key sent).
        let by_author = compact_of_canonical(&canonical, &author.peer_id()).unwrap();
        let by_other = compact_of_canonical(&canonical, &other.peer_id()).unwrap();
        prop_assert_eq!(by_author.len() + 32, by_other.len());
        prop_assert_eq!(&canonical_of_compact(&by_author, Some(&key)).unwrap(), &canonical);
        prop_assert_eq!(&canonical_of_compact(&by_other, None).unwrap(), &canonical);
        prop_assert_eq!(&canonical_of_compact(&by_other, Some(&other.public_key().to_bytes())).unwrap(), &canonical);
        prop_assert!(by_other.len() < canonical.len());
        // Without the sender's key the short form cannot be rebuilt.
        prop_assert!(canonical_of_compact(&by_author, None).is_err());
        // A changed byte is refused, or decodes to a node that re-encodes to it.
        let mut bad = by_other.clone();
        let at = mutation.0 % bad.len();
        bad[at] ^= mutation.1 | 1;
        if let Ok(n) = VersionNode::decode_compact(&bad, None) {
            prop_assert_eq!(n.encode_compact(None).unwrap(), bad);
        }
    }
}
