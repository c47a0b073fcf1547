//! Merge laws (commutative, associative, idempotent), delta/full-state
//! equivalence and parts round trips for every CRDT of the crate.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    DocOp, Model, arb_keys, arb_script, arb_ts, arb_value, check_laws, check_model, run_script,
};
use ecomesh_crdt::{DocumentCrdt, Field, GSet, LwwRegister, Merge, OrSet, PnCounter, VectorClock};
use ecomesh_types::{HlcTimestamp, Value};
use proptest::prelude::*;

/// An LWW register that may be unset, so it has a bottom to start replicas from.
#[derive(Debug, Clone, PartialEq, Default)]
struct Reg(Option<LwwRegister<Value>>);

impl Merge for Reg {
    fn merge(&mut self, other: &Self) {
        match (&mut self.0, &other.0) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.0 = Some(b.clone()),
            (_, None) => {}
        }
    }
}

impl Model for Reg {
    type Op = Value;
    fn arb_op() -> BoxedStrategy<Value> {
        arb_value().boxed()
    }
    fn apply(&mut self, op: &Value, ts: HlcTimestamp) -> Self {
        let delta = Reg(Some(LwwRegister::new(op.clone(), ts)));
        self.merge(&delta);
        delta
    }
}

impl Model for GSet<u8> {
    type Op = u8;
    fn arb_op() -> BoxedStrategy<u8> {
        (0..8_u8).boxed()
    }
    fn apply(&mut self, op: &u8, _ts: HlcTimestamp) -> Self {
        self.insert(*op)
    }
}

/// An OR-Set operation.
#[derive(Debug, Clone)]
pub enum SetOp {
    /// Add an element.
    Add(u8),
    /// Remove an element.
    Remove(u8),
    /// Remove everything.
    Clear,
}

impl Model for OrSet<u8> {
    type Op = SetOp;
    fn arb_op() -> BoxedStrategy<SetOp> {
        prop_oneof![
            4 => (0..5_u8).prop_map(SetOp::Add),
            3 => (0..5_u8).prop_map(SetOp::Remove),
            1 => Just(SetOp::Clear),
        ]
        .boxed()
    }
    fn apply(&mut self, op: &SetOp, ts: HlcTimestamp) -> Self {
        match op {
            SetOp::Add(x) => self.add(*x, ts),
            SetOp::Remove(x) => self.remove(x),
            SetOp::Clear => self.clear(),
        }
    }
}

/// A PN-Counter operation.
#[derive(Debug, Clone)]
pub enum CounterOp {
    /// Add (or subtract).
    Add(i64),
    /// Observed reset to zero.
    Reset,
}

impl Model for PnCounter {
    type Op = CounterOp;
    fn arb_op() -> BoxedStrategy<CounterOp> {
        prop_oneof![
            5 => prop_oneof![-5_i64..6, Just(i64::MIN / 4), Just(i64::MAX / 4)].prop_map(CounterOp::Add),
            1 => Just(CounterOp::Reset),
        ]
        .boxed()
    }
    fn apply(&mut self, op: &CounterOp, ts: HlcTimestamp) -> Self {
        let before = self.clone();
        let result = match op {
            CounterOp::Add(n) => self.add(ts.peer, *n),
            CounterOp::Reset => self.reset(ts.peer),
        };
        match result {
            Ok(delta) => delta,
            Err(e) => {
                // Only a total past u64::MAX fails, and it changes nothing.
                assert_eq!(e, ecomesh_crdt::Error::CounterOverflow);
                assert_eq!(*self, before);
                PnCounter::new()
            }
        }
    }
}

impl Model for VectorClock {
    type Op = ();
    fn arb_op() -> BoxedStrategy<()> {
        Just(()).boxed()
    }
    fn apply(&mut self, _op: &(), ts: HlcTimestamp) -> Self {
        let count = self.increment(ts.peer).unwrap();
        VectorClock::from_parts([(ts.peer, count)]).unwrap()
    }
}

impl Model for DocumentCrdt {
    type Op = DocOp;
    fn arb_op() -> BoxedStrategy<DocOp> {
        DocOp::arb()
    }
    fn apply(&mut self, op: &DocOp, ts: HlcTimestamp) -> Self {
        op.run(self, ts)
    }
}

fn rebuild_document(doc: &DocumentCrdt) -> DocumentCrdt {
    let (fields, written, deleted) = doc.clone().into_parts();
    let fields: Vec<(String, Field)> = fields
        .into_iter()
        .map(|(name, f)| {
            let (write, counter, set) = f.into_parts();
            let counter = PnCounter::from_parts(
                counter.increments().iter().map(|(p, v)| (*p, *v)),
                counter.decrements().iter().map(|(p, v)| (*p, *v)),
            )
            .unwrap();
            let set = OrSet::from_parts(set.into_parts()).unwrap();
            let write = write.map(|w| {
                let (v, t) = w.into_parts();
                LwwRegister::from_parts(v, t)
            });
            (name, Field::from_parts(write, counter, set).unwrap())
        })
        .collect();
    DocumentCrdt::from_parts(fields, written, deleted).unwrap()
}

proptest! {
    #[test]
    fn prop_lww_laws_on_arbitrary_registers(
        a in (arb_value(), arb_ts()), b in (arb_value(), arb_ts()), c in (arb_value(), arb_ts()),
    ) {
        let reg = |(v, t): (Value, HlcTimestamp)| LwwRegister::new(v, t);
        let (a, b, c) = (reg(a), reg(b), reg(c));
        check_laws(&a, &b, &c)?;
        // The winner is the greater timestamp; the seed's peer tie-break is in its order.
        let mut m = a.clone();
        m.merge(&b);
        prop_assert_eq!(m.timestamp(), a.timestamp().max(b.timestamp()));
        if a.timestamp().physical_ms == b.timestamp().physical_ms
            && a.timestamp().logical == b.timestamp().logical
            && a.writer() != b.writer()
        {
            let text_greater = if a.writer().to_string() > b.writer().to_string() { &a } else { &b };
            prop_assert_eq!(&m, text_greater);
        }
    }

    #[test]
    fn prop_lww_merge_laws_and_deltas(script in arb_script::<Reg>(), keys in arb_keys()) {
        check_model::<Reg>(&script, &keys)?;
    }

    #[test]
    fn prop_gset_merge_laws_and_deltas(script in arb_script::<GSet<u8>>(), keys in arb_keys()) {
        check_model::<GSet<u8>>(&script, &keys)?;
        let ([a, ..], _) = run_script::<GSet<u8>>(&script);
        prop_assert_eq!(GSet::from_parts(a.clone().into_parts()), a);
    }

    #[test]
    fn prop_orset_merge_laws_and_deltas(script in arb_script::<OrSet<u8>>(), keys in arb_keys()) {
        check_model::<OrSet<u8>>(&script, &keys)?;
        let ([a, ..], _) = run_script::<OrSet<u8>>(&script);
        prop_assert_eq!(OrSet::from_parts(a.clone().into_parts()).unwrap(), a);
    }

    #[test]
    fn prop_pncounter_merge_laws_and_deltas(script in arb_script::<PnCounter>(), keys in arb_keys()) {
        check_model::<PnCounter>(&script, &keys)?;
        let ([a, ..], _) = run_script::<PnCounter>(&script);
        let rebuilt = PnCounter::from_parts(
            a.increments().iter().map(|(p, v)| (*p, *v)),
            a.decrements().iter().map(|(p, v)| (*p, *v)),
        ).unwrap();
        prop_assert_eq!(rebuilt, a);
    }

    #[test]
    fn prop_pncounter_value_sums_all_operations(amounts in proptest::collection::vec((0..3_usize, -100_i64..100), 0..20)) {
        let ps = common::peers();
        let mut replicas = [PnCounter::new(), PnCounter::new(), PnCounter::new()];
        for (r, n) in &amounts {
            replicas[*r].add(ps[*r], *n).unwrap();
        }
        let mut all = PnCounter::new();
        for r in &replicas {
            all.merge(r);
        }
        prop_assert_eq!(all.value(), amounts.iter().map(|(_, n)| i128::from(*n)).sum::<i128>());
    }

    #[test]
    fn prop_vector_clock_merge_laws_and_deltas(script in arb_script::<VectorClock>(), keys in arb_keys()) {
        check_model::<VectorClock>(&script, &keys)?;
        let ([a, b, _], _) = run_script::<VectorClock>(&script);
        prop_assert_eq!(VectorClock::from_parts(a.entries().iter().map(|(p, v)| (*p, *v))).unwrap(), a.clone());
        let ord = a.compare(&b);
        prop_assert_eq!(b.compare(&a), match ord {
            ecomesh_crdt::ClockOrdering::Before => ecomesh_crdt::ClockOrdering::After,
            ecomesh_crdt::ClockOrdering::After => ecomesh_crdt::ClockOrdering::Before,
            other => other,
        });
        prop_assert_eq!(ord == ecomesh_crdt::ClockOrdering::Equal, a == b);
        let mut m = a.clone();
        m.merge(&b);
        prop_assert!(m.dominates(&a) && m.dominates(&b));
    }

    #[test]
    fn prop_document_merge_laws_and_deltas(script in arb_script::<DocumentCrdt>(), keys in arb_keys()) {
        check_model::<DocumentCrdt>(&script, &keys)?;
        let ([a, b, c], _) = run_script::<DocumentCrdt>(&script);
        for doc in [&a, &b, &c] {
            prop_assert_eq!(&rebuild_document(doc), doc);
        }
        // Equal states show equal documents, whichever order they were merged in.
        let mut x = a.clone();
        x.merge(&b);
        x.merge(&c);
        let mut y = c.clone();
        y.merge(&a);
        y.merge(&b);
        prop_assert_eq!(x.materialize(), y.materialize());
    }
}
