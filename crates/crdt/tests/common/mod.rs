//! Strategies and a small replica harness shared by the property tests.
#![allow(clippy::unwrap_used)]
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use ecomesh_crdt::{DocumentCrdt, FieldOp, Merge};
use ecomesh_types::{HlcTimestamp, Map, PeerId, Value};
use proptest::prelude::*;

/// Eight peers whose byte order and Base58 text order disagree in places.
pub fn peers() -> Vec<PeerId> {
    let digests: [[u8; 32]; 8] = [
        [0x00; 32],
        [0xFF; 32],
        [0x0A; 32],
        {
            let mut d = [0xFF; 32];
            d[0] = 0x0A;
            d
        },
        [0x01; 32],
        [0x80; 32],
        {
            let mut d = [0x00; 32];
            d[31] = 1;
            d
        },
        [0x3C; 32],
    ];
    digests.into_iter().map(PeerId::from_digest).collect()
}

pub fn arb_peer() -> impl Strategy<Value = PeerId> {
    (0..8_usize).prop_map(|i| peers()[i])
}

/// Timestamps from a small space, so equal physical/logical parts are common.
pub fn arb_ts() -> impl Strategy<Value = HlcTimestamp> {
    (0..6_u64, 0..3_u32, arb_peer()).prop_map(|(p, l, peer)| HlcTimestamp::new(p, l, peer))
}

/// Small document values, including nested ones and ones that compare across kinds.
pub fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3_i64..4).prop_map(Value::Integer),
        prop_oneof![Just(1.0), Just(-0.0), Just(0.0), Just(f64::NAN)].prop_map(Value::Float),
        "[xy]{0,2}".prop_map(Value::Text),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        proptest::collection::vec(inner, 0..3).prop_map(Value::Array)
    })
}

/// Checks merge is commutative, associative and idempotent on `a`, `b`, `c`.
pub fn check_laws<T: Merge + Clone + PartialEq + Debug>(
    a: &T,
    b: &T,
    c: &T,
) -> Result<(), TestCaseError> {
    let merged = |x: &T, y: &T| {
        let mut m = x.clone();
        m.merge(y);
        m
    };
    prop_assert_eq!(merged(a, b), merged(b, a), "commutative");
    prop_assert_eq!(
        merged(&merged(a, b), c),
        merged(a, &merged(b, c)),
        "associative"
    );
    prop_assert_eq!(&merged(a, a), a, "idempotent");
    let ab = merged(a, b);
    prop_assert_eq!(merged(&ab, b), ab.clone(), "absorbs what it merged");
    Ok(())
}

/// A replicated type driven by random operations, each returning its delta.
pub trait Model: Merge + Clone + PartialEq + Debug + Default {
    /// One local operation.
    type Op: Debug + Clone;
    /// Random operations.
    fn arb_op() -> BoxedStrategy<Self::Op>;
    /// Applies `op` at `ts` (unique, increasing per replica) and returns the delta.
    fn apply(&mut self, op: &Self::Op, ts: HlcTimestamp) -> Self;
}

/// One step of a three-replica script.
#[derive(Debug, Clone)]
pub enum Step<Op> {
    /// Replica `.0 % 3` applies an operation.
    Local(usize, Op),
    /// Replica `.1 % 3` merges the full state of replica `.0 % 3`.
    Sync(usize, usize),
}

pub fn arb_script<M: Model>() -> impl Strategy<Value = Vec<Step<M::Op>>> {
    let step = prop_oneof![
        3 => (0..3_usize, M::arb_op()).prop_map(|(r, op)| Step::Local(r, op)),
        1 => (0..3_usize, 0..3_usize).prop_map(|(a, b)| Step::Sync(a, b)),
    ];
    proptest::collection::vec(step, 0..24)
}

/// Runs a script on three replicas (peers 0, 1, 2); returns their states and
/// every delta produced, in production order.
pub fn run_script<M: Model>(script: &[Step<M::Op>]) -> ([M; 3], Vec<M>) {
    let ps = peers();
    let mut replicas: [M; 3] = Default::default();
    let mut deltas = Vec::new();
    for (i, step) in script.iter().enumerate() {
        match step {
            Step::Local(r, op) => {
                let r = r % 3;
                // Unique per replica, increasing, and equal across replicas at the
                // same step count only in the peer, which exercises the tie-break.
                let ts = HlcTimestamp::new(i as u64 / 4, (i % 4) as u32, ps[r]);
                deltas.push(replicas[r].apply(op, ts));
            }
            Step::Sync(from, to) => {
                let from = replicas[from % 3].clone();
                replicas[to % 3].merge(&from);
            }
        }
    }
    (replicas, deltas)
}

/// Checks the laws on the three replicas, and that all the deltas, merged into an
/// empty state in the order given by sorting on `keys` (a random permutation),
/// then half of them again, give the full-state merge of the replicas.
pub fn check_model<M: Model>(script: &[Step<M::Op>], keys: &[u64]) -> Result<(), TestCaseError> {
    let ([a, b, c], deltas) = run_script::<M>(script);
    check_laws(&a, &b, &c)?;
    let mut full = a.clone();
    full.merge(&b);
    full.merge(&c);
    let mut order: Vec<usize> = (0..deltas.len()).collect();
    order.sort_by_key(|&i| (keys.get(i).copied().unwrap_or(0), i));
    let mut from_deltas = M::default();
    for &i in order.iter().chain(&order[..order.len() / 2]) {
        from_deltas.merge(&deltas[i]);
    }
    prop_assert_eq!(
        from_deltas,
        full,
        "deltas in any order equal the full-state merge"
    );
    Ok(())
}

/// Sort keys for [`check_model`]: one per possible delta of a script.
pub fn arb_keys() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(any::<u64>(), 24)
}

/// A document operation as the storage layer issues them.
#[derive(Debug, Clone)]
pub enum DocOp {
    /// `update` (merge-set) of some fields.
    Update(Map),
    /// `set`: replace the document.
    Set(Map),
    /// Field operations (counters, sets, removals).
    Apply(BTreeMap<String, FieldOp>),
    /// Delete the document.
    Delete,
}

fn arb_field_name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")].prop_map(str::to_owned)
}

fn arb_field_op() -> impl Strategy<Value = FieldOp> {
    let items = || proptest::collection::vec((-2_i64..3).prop_map(Value::Integer), 0..3);
    prop_oneof![
        3 => arb_value().prop_map(FieldOp::Set),
        1 => Just(FieldOp::Remove),
        2 => (-3_i64..4).prop_map(FieldOp::Increment),
        2 => items().prop_map(FieldOp::AddToSet),
        1 => items().prop_map(FieldOp::RemoveFromSet),
    ]
}

impl DocOp {
    /// Random document operations over fields a..d.
    pub fn arb() -> BoxedStrategy<DocOp> {
        let fields = || proptest::collection::btree_map(arb_field_name(), arb_value(), 0..3);
        prop_oneof![
            3 => fields().prop_map(DocOp::Update),
            2 => fields().prop_map(DocOp::Set),
            4 => proptest::collection::btree_map(arb_field_name(), arb_field_op(), 0..3).prop_map(DocOp::Apply),
            1 => Just(DocOp::Delete),
        ]
        .boxed()
    }

    /// Runs the operation at `ts` and returns its delta.
    pub fn run(&self, doc: &mut DocumentCrdt, ts: HlcTimestamp) -> DocumentCrdt {
        match self {
            DocOp::Update(m) => doc.update(m.clone(), ts).unwrap(),
            DocOp::Set(m) => doc.set(m.clone(), ts).unwrap(),
            DocOp::Apply(ops) => doc.apply(ops.clone(), ts).unwrap(),
            DocOp::Delete => doc.delete(ts).unwrap(),
        }
    }
}
