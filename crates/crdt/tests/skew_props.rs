//! Documents under wrong clocks: replicas whose physical clocks are minutes,
//! hours or a day off (either way), or jump backwards, still converge; no
//! far-future timestamp drags a replica's clock past the drift bound; and a
//! write made after seeing a value supersedes it however far ahead the clock
//! of that value's writer ran.

#![allow(clippy::unwrap_used)]

mod common;

use common::{DocOp, arb_value, peers};
use ecomesh_crdt::{DocumentCrdt, Hlc, Merge};
use ecomesh_types::{Map, Value};
use proptest::prelude::*;

/// True time at the start of a run (Unix ms).
const T0: u64 = 1_800_000_000_000;

/// A device's clock offset from true time: small, the issue's ±5 min, ±2 h
/// and ±1 day, or anything within a day.
fn arb_offset() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0_i64),
        -2_000_i64..2_000,
        Just(5 * 60_000),
        Just(-5 * 60_000),
        Just(2 * 3_600_000),
        Just(-2 * 3_600_000),
        Just(86_400_000),
        Just(-86_400_000),
        -86_400_000_i64..86_400_000,
    ]
}

struct Replica {
    hlc: Hlc,
    offset: i64,
    /// The latest reading this replica's own physical clock ever gave.
    high: u64,
    doc: DocumentCrdt,
}

impl Replica {
    fn now(&mut self, true_now: u64) -> u64 {
        let now = true_now.saturating_add_signed(self.offset);
        self.high = self.high.max(now);
        now
    }

    /// The clock may run ahead of its own readings by the drift bound, never more.
    fn check_not_dragged(&self) -> Result<(), TestCaseError> {
        let limit = self.high + Hlc::DEFAULT_MAX_DRIFT_MS + 1;
        prop_assert!(
            self.hlc.last().physical_ms <= limit,
            "clock dragged to {:?} (own clock never passed {})",
            self.hlc.last(),
            self.high
        );
        Ok(())
    }

    /// A local operation, timestamped after everything the document holds.
    fn write(&mut self, op: &DocOp, true_now: u64) -> Result<DocumentCrdt, TestCaseError> {
        let floor = self.doc.max_timestamp();
        let now = self.now(true_now);
        let ts = self.hlc.send_after_at(floor.as_ref(), now).unwrap();
        prop_assert!(Some(ts) > floor, "write {ts:?} not after {floor:?}");
        self.check_not_dragged()?;
        Ok(op.run(&mut self.doc, ts))
    }

    fn merge(&mut self, delta: &DocumentCrdt, true_now: u64) -> Result<(), TestCaseError> {
        self.doc.merge(delta);
        if let Some(t) = delta.max_timestamp() {
            let now = self.now(true_now);
            // Never refused, whatever the sender's clock said.
            self.hlc.receive_at(&t, now).unwrap();
        }
        self.check_not_dragged()
    }
}

fn replicas(offsets: &[i64]) -> Vec<Replica> {
    let ps = peers();
    offsets
        .iter()
        .enumerate()
        .map(|(i, o)| Replica {
            hlc: Hlc::new(ps[i]),
            offset: *o,
            high: 0,
            doc: DocumentCrdt::new(),
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Action {
    /// Replica `r` runs an operation.
    Local(usize, DocOp),
    /// The oldest undelivered delta reaches replica `r` (index into the queue).
    Deliver(usize),
    /// True time passes.
    Tick(u64),
    /// Replica `r`'s clock is set to a new offset (for example back from +2 h to 0).
    Jump(usize, i64),
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => (0..5_usize, DocOp::arb()).prop_map(|(r, op)| Action::Local(r, op)),
        6 => any::<usize>().prop_map(Action::Deliver),
        3 => (0..120_000_u64).prop_map(Action::Tick),
        1 => (0..5_usize, arb_offset()).prop_map(|(r, o)| Action::Jump(r, o)),
    ]
}

proptest! {
    #[test]
    fn prop_replicas_with_wrong_clocks_converge(
        offsets in proptest::collection::vec(arb_offset(), 2..=5),
        actions in proptest::collection::vec(arb_action(), 0..80),
    ) {
        let n = offsets.len();
        let mut reps = replicas(&offsets);
        let mut now = T0;
        // (to, delta) in flight, delivered in any order.
        let mut queue: Vec<(usize, DocumentCrdt)> = Vec::new();
        for action in &actions {
            match action {
                Action::Local(r, op) => {
                    let r = r % n;
                    let delta = reps[r].write(op, now)?;
                    queue.extend((0..n).filter(|to| *to != r).map(|to| (to, delta.clone())));
                }
                Action::Deliver(i) => {
                    if !queue.is_empty() {
                        let (to, delta) = queue.remove(i % queue.len());
                        reps[to].merge(&delta, now)?;
                    }
                }
                Action::Tick(ms) => now += ms,
                Action::Jump(r, o) => reps[r % n].offset = *o,
            }
        }
        for (to, delta) in std::mem::take(&mut queue) {
            reps[to].merge(&delta, now)?;
        }
        for r in &reps[1..] {
            prop_assert_eq!(&r.doc, &reps[0].doc);
        }
    }

    #[test]
    fn prop_a_write_after_seeing_a_value_supersedes_it(
        offsets in proptest::collection::vec(arb_offset(), 2..=5),
        writes in proptest::collection::vec(
            (0..5_usize, prop_oneof![3 => arb_value().prop_map(Some), 1 => Just(None)], 0..5_000_u64),
            1..30,
        ),
    ) {
        // Each write is made by a replica that has seen every earlier write
        // (it merged them all first): causally after them, so it must win on
        // every replica, whatever the writers' clocks said. `None` deletes.
        let n = offsets.len();
        let mut reps = replicas(&offsets);
        let mut now = T0;
        let mut all = DocumentCrdt::new();
        let mut last: Option<Option<Value>> = None;
        for (r, value, dt) in &writes {
            now += dt;
            let r = r % n;
            reps[r].merge(&all, now)?;
            let op = match value {
                Some(v) => DocOp::Update(Map::from([("x".to_owned(), v.clone())])),
                None => DocOp::Delete,
            };
            let delta = reps[r].write(&op, now)?;
            all.merge(&delta);
            last = Some(value.clone());
            // The writer sees its own write at once.
            prop_assert_eq!(reps[r].doc.get("x"), value.clone());
        }
        for r in &mut reps {
            r.merge(&all, now)?;
            prop_assert_eq!(r.doc.get("x"), last.clone().flatten());
            prop_assert_eq!(r.doc.exists(), matches!(last, Some(Some(_))));
        }
    }
}
