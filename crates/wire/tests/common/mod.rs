//! Generators shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use ecomesh_crdt::{DocumentCrdt, FieldOp, GSet, LwwRegister, OrSet, PnCounter, VectorClock};
use ecomesh_types::{
    ContentId, HlcTimestamp, Map, MessageId, NetworkMessage, PeerId, Signature, Value,
};
use ecomesh_wire::cid::{DAG_CBOR, HashAlg, RAW, cid_for_bytes};
use proptest::prelude::*;

pub fn arb_cid() -> impl Strategy<Value = ContentId> {
    (any::<u8>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(seed, raw, blake, v0)| {
        let alg = if blake {
            HashAlg::Blake3
        } else {
            HashAlg::Sha2_256
        };
        let codec = if raw { RAW } else { DAG_CBOR };
        let cid = cid_for_bytes(codec, alg, &[seed]);
        if v0 && !blake {
            let v0 = ecomesh_wire::Cid::new_v0(*cid.hash()).unwrap();
            ContentId(v0.to_bytes())
        } else {
            ContentId(cid.to_bytes())
        }
    })
}

pub fn arb_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(1e16),
        Just(5e-324),
        (-1000_i64..1000).prop_map(|i| i as f64 / 8.0),
    ]
}

pub fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{0,3}",
        "\\PC{0,4}",
        Just("/".to_owned()),
        Just("bytes".to_owned())
    ]
}

/// Any value the IPLD data model has (finite floats, valid links).
pub fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Integer),
        (-30_i64..30).prop_map(Value::Integer),
        arb_float().prop_map(Value::Float),
        "\\PC{0,8}".prop_map(Value::Text),
        "[\\x00-\\x1f\"\\\\/]{0,4}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        arb_cid().prop_map(Value::Link),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(arb_key(), inner, 0..5).prop_map(Value::Map),
        ]
    })
}

/// Values the DAG-JSON form can carry: maps never misuse the reserved "/" key.
pub fn arb_json_value() -> impl Strategy<Value = Value> {
    arb_value().prop_map(strip_reserved)
}

fn strip_reserved(v: Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.into_iter().map(strip_reserved).collect()),
        Value::Map(m) => {
            let mut m: Map = m.into_iter().map(|(k, v)| (k, strip_reserved(v))).collect();
            let bad = match m.get("/") {
                Some(Value::Text(_)) => true,
                Some(Value::Map(inner)) => matches!(inner.get("bytes"), Some(Value::Text(_))),
                _ => false,
            };
            if bad {
                m.remove("/");
            }
            Value::Map(m)
        }
        other => other,
    }
}

pub fn arb_peer() -> impl Strategy<Value = PeerId> {
    prop_oneof![
        (0_u8..4).prop_map(|b| PeerId::from_digest([b; 32])),
        any::<[u8; 32]>().prop_map(PeerId::from_digest),
    ]
}

pub fn arb_hlc() -> impl Strategy<Value = HlcTimestamp> {
    (
        prop_oneof![0_u64..5, any::<u64>()],
        prop_oneof![0_u32..3, any::<u32>()],
        arb_peer(),
    )
        .prop_map(|(t, l, p)| HlcTimestamp::new(t, l, p))
}

pub fn arb_vclock() -> impl Strategy<Value = VectorClock> {
    proptest::collection::btree_map(arb_peer(), 1_u64.., 0..5)
        .prop_map(|m| VectorClock::from_parts(m).unwrap())
}

pub fn arb_lww() -> impl Strategy<Value = LwwRegister<Value>> {
    (arb_value(), arb_hlc()).prop_map(|(v, t)| LwwRegister::from_parts(v, t))
}

pub fn arb_gset() -> impl Strategy<Value = GSet<Value>> {
    proptest::collection::btree_set(arb_value(), 0..6).prop_map(GSet::from_parts)
}

#[derive(Debug, Clone)]
pub enum SetOp {
    Add(Value, HlcTimestamp),
    Remove(Value),
}

pub fn arb_orset() -> impl Strategy<Value = OrSet<Value>> {
    let small = (0_i64..4).prop_map(Value::Integer);
    proptest::collection::vec(
        prop_oneof![
            (small.clone(), arb_hlc()).prop_map(|(v, t)| SetOp::Add(v, t)),
            small.prop_map(SetOp::Remove),
        ],
        0..8,
    )
    .prop_map(|ops| {
        let mut s = OrSet::new();
        for op in ops {
            match op {
                SetOp::Add(v, t) => {
                    s.add(v, t);
                }
                SetOp::Remove(v) => {
                    s.remove(&v);
                }
            }
        }
        s
    })
}

pub fn arb_pncounter() -> impl Strategy<Value = PnCounter> {
    proptest::collection::vec((arb_peer(), any::<i32>()), 0..6).prop_map(|ops| {
        let mut c = PnCounter::new();
        for (p, n) in ops {
            c.add(p, i64::from(n)).unwrap();
        }
        c
    })
}

#[derive(Debug, Clone)]
pub enum DocOp {
    Update(Map),
    Set(Map),
    Incr(String, i64),
    AddToSet(String, Vec<Value>),
    RemoveFromSet(String, Vec<Value>),
    Remove(String),
    Delete,
}

pub fn arb_doc() -> impl Strategy<Value = DocumentCrdt> {
    let name = "[a-d]{1,2}";
    let small = (0_i64..4).prop_map(Value::Integer);
    let op = prop_oneof![
        proptest::collection::btree_map(name, arb_value(), 0..3).prop_map(DocOp::Update),
        proptest::collection::btree_map(name, arb_value(), 0..3).prop_map(DocOp::Set),
        (name, -5_i64..5).prop_map(|(n, i)| DocOp::Incr(n, i)),
        (name, proptest::collection::vec(small.clone(), 0..3))
            .prop_map(|(n, v)| DocOp::AddToSet(n, v)),
        (name, proptest::collection::vec(small, 0..3))
            .prop_map(|(n, v)| DocOp::RemoveFromSet(n, v)),
        name.prop_map(DocOp::Remove),
        Just(DocOp::Delete),
    ];
    (proptest::collection::vec((op, arb_peer()), 0..8)).prop_map(|ops| {
        let mut d = DocumentCrdt::new();
        for (i, (op, peer)) in ops.into_iter().enumerate() {
            let ts = HlcTimestamp::new(i as u64 + 1, 0, peer);
            let _ = match op {
                DocOp::Update(m) => d.update(m, ts),
                DocOp::Set(m) => d.set(m, ts),
                DocOp::Incr(n, i) => d.apply([(n, FieldOp::Increment(i))], ts),
                DocOp::AddToSet(n, v) => d.apply([(n, FieldOp::AddToSet(v))], ts),
                DocOp::RemoveFromSet(n, v) => d.apply([(n, FieldOp::RemoveFromSet(v))], ts),
                DocOp::Remove(n) => d.apply([(n, FieldOp::Remove)], ts),
                DocOp::Delete => d.delete(ts),
            };
        }
        d
    })
}

pub fn arb_message() -> impl Strategy<Value = NetworkMessage> {
    (
        any::<[u8; 16]>(),
        "[a-z-]{0,12}",
        proptest::collection::vec(any::<u8>(), 0..64),
        arb_peer(),
        proptest::option::of(arb_peer()),
        any::<u64>(),
        prop_oneof![Just(NetworkMessage::DEFAULT_TTL_SECS), any::<u32>()],
        prop_oneof![Just(0_u8), any::<u8>()],
        prop_oneof![Just(NetworkMessage::DEFAULT_MAX_HOPS), any::<u8>()],
        prop_oneof![
            Just(Signature::UNSIGNED),
            any::<[u8; 32]>().prop_map(|h| {
                let mut s = [0_u8; 64];
                s[..32].copy_from_slice(&h);
                s[32..].copy_from_slice(&h);
                Signature(s)
            })
        ],
    )
        .prop_map(
            |(id, t, payload, sender, recipient, ts, ttl, hop, max, sig)| NetworkMessage {
                id: MessageId::new_v4(id),
                message_type: t,
                payload,
                sender,
                recipient,
                timestamp_ms: ts,
                ttl_secs: ttl,
                hop_count: hop,
                max_hops: max,
                signature: sig,
            },
        )
}

/// Mutations of a valid encoding: flip, overwrite, insert, delete or truncate.
pub fn mutate(bytes: &[u8], ops: &[(u8, usize, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(kind, at, val) in ops {
        let at = if out.is_empty() {
            0
        } else {
            at % (out.len() + 1)
        };
        match kind % 5 {
            0 if at < out.len() => out[at] ^= 1 << (val % 8),
            1 if at < out.len() => out[at] = val,
            2 => out.insert(at, val),
            3 if at < out.len() => {
                out.remove(at);
            }
            4 => out.truncate(at),
            _ => {}
        }
    }
    out
}
