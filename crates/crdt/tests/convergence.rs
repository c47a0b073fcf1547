//! Convergence: 3 to 8 replicas run random document operations with their own
//! hybrid logical clocks on fake physical clocks, and exchange deltas through a
//! simulated network that reorders, duplicates, loses (then retries) and
//! partitions. Once the network heals and drains, all replicas are identical.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::rc::Rc;

use common::{DocOp, arb_value, peers};
use ecomesh_crdt::{DocumentCrdt, DocumentDelta, Hlc, ManualClock, Merge};
use ecomesh_types::{HlcTimestamp, Map, Value};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Action {
    Local(usize, DocOp),
    Deliver(usize),
    Duplicate(usize),
    Drop(usize),
    Retry,
    Partition(u8),
    Heal,
    Tick(usize, i64),
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..8_usize, DocOp::arb()).prop_map(|(r, op)| Action::Local(r, op)),
        8 => any::<usize>().prop_map(Action::Deliver),
        1 => any::<usize>().prop_map(Action::Duplicate),
        2 => any::<usize>().prop_map(Action::Drop),
        1 => Just(Action::Retry),
        1 => any::<u8>().prop_map(Action::Partition),
        1 => Just(Action::Heal),
        3 => (0..8_usize, -5_i64..20).prop_map(|(r, ms)| Action::Tick(r, ms)),
    ]
}

struct Replica {
    hlc: Hlc,
    clock: ManualClock,
    doc: DocumentCrdt,
}

#[derive(Clone)]
struct Msg {
    to: usize,
    delta: Rc<DocumentDelta>,
}

struct Net {
    replicas: Vec<Replica>,
    queue: Vec<Msg>,
    dropped: Vec<Msg>,
    partition: u8,
    produced: Vec<Rc<DocumentDelta>>,
}

impl Net {
    fn new(n: usize, offsets: &[u64]) -> Self {
        let ps = peers();
        let replicas = (0..n)
            .map(|r| Replica {
                hlc: Hlc::new(ps[r]),
                clock: ManualClock::new(1_000_000 + offsets[r]),
                doc: DocumentCrdt::new(),
            })
            .collect();
        Net {
            replicas,
            queue: Vec::new(),
            dropped: Vec::new(),
            partition: 0,
            produced: Vec::new(),
        }
    }

    fn group(&self, r: usize) -> u8 {
        (self.partition >> r) & 1
    }

    /// Indices of queued messages that can cross the current partition.
    fn deliverable(&self) -> Vec<usize> {
        (0..self.queue.len())
            .filter(|&i| {
                let m = &self.queue[i];
                self.group(m.to) == self.group(self.sender_of(m))
            })
            .collect()
    }

    fn sender_of(&self, m: &Msg) -> usize {
        // The sender is the peer of the delta's timestamps; every delta carries
        // its operation's timestamp in `written` or `deleted`.
        let ts = m.delta.written().or(m.delta.deleted()).unwrap();
        peers().iter().position(|p| *p == ts.peer).unwrap()
    }

    fn deliver(&mut self, msg: &Msg) -> Result<(), TestCaseError> {
        let r = &mut self.replicas[msg.to];
        r.doc.merge(&msg.delta);
        if let Some(t) = msg.delta.max_timestamp() {
            let got = r.hlc.receive(&t, &r.clock);
            prop_assert!(got.is_ok(), "receive refused: {:?}", got);
            prop_assert!(got.unwrap() > t);
        }
        Ok(())
    }

    fn pick(&self, i: usize) -> Option<usize> {
        let d = self.deliverable();
        (!d.is_empty()).then(|| d[i % d.len()])
    }

    fn step(&mut self, action: &Action) -> Result<(), TestCaseError> {
        let n = self.replicas.len();
        match action {
            Action::Local(r, op) => {
                let r = r % n;
                let rep = &mut self.replicas[r];
                let before = rep.hlc.last();
                let ts = rep.hlc.send(&rep.clock).unwrap();
                prop_assert!(ts > before);
                let delta = Rc::new(op.run(&mut rep.doc, ts));
                self.produced.push(Rc::clone(&delta));
                for to in (0..n).filter(|&to| to != r) {
                    self.queue.push(Msg {
                        to,
                        delta: Rc::clone(&delta),
                    });
                }
            }
            Action::Deliver(i) => {
                if let Some(k) = self.pick(*i) {
                    let msg = self.queue.remove(k);
                    self.deliver(&msg)?;
                }
            }
            Action::Duplicate(i) => {
                if let Some(k) = self.pick(*i) {
                    let msg = self.queue[k].clone();
                    self.deliver(&msg)?;
                }
            }
            Action::Drop(i) => {
                if !self.queue.is_empty() {
                    let msg = self.queue.remove(i % self.queue.len());
                    self.dropped.push(msg);
                }
            }
            Action::Retry => self.queue.append(&mut self.dropped),
            Action::Partition(mask) => self.partition = *mask,
            Action::Heal => self.partition = 0,
            Action::Tick(r, ms) => {
                let clock = &self.replicas[r % n].clock;
                if *ms >= 0 {
                    clock.advance(ms.unsigned_abs());
                } else {
                    clock.set(clock_now(clock).saturating_sub(ms.unsigned_abs()));
                }
            }
        }
        Ok(())
    }

    /// Heals the partition, retries every lost message and delivers everything.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        self.partition = 0;
        self.queue.append(&mut self.dropped);
        for msg in std::mem::take(&mut self.queue) {
            self.deliver(&msg)?;
        }
        Ok(())
    }
}

fn clock_now(clock: &ManualClock) -> u64 {
    use ecomesh_crdt::PhysicalClock;
    clock.now_ms()
}

proptest! {
    #[test]
    fn prop_replicas_converge_through_a_faulty_network(
        n in 3..=8_usize,
        offsets in proptest::collection::vec(0..500_u64, 8),
        actions in proptest::collection::vec(arb_action(), 0..80),
    ) {
        let mut net = Net::new(n, &offsets);
        for action in &actions {
            net.step(action)?;
        }
        net.drain()?;
        let first = &net.replicas[0].doc;
        for r in &net.replicas[1..] {
            prop_assert_eq!(&r.doc, first);
            prop_assert_eq!(r.doc.materialize(), first.materialize());
        }
        // The converged state is the merge of every delta ever produced.
        let mut all = DocumentCrdt::new();
        for d in &net.produced {
            all.merge(d);
        }
        prop_assert_eq!(&all, first);
    }
}

/// Updates and deletes only, for the oracle below.
fn arb_update_or_delete() -> impl Strategy<Value = (usize, Option<Map>)> {
    let fields = proptest::collection::btree_map(
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned),
        arb_value(),
        0..3,
    );
    (
        0..3_usize,
        prop_oneof![3 => fields.prop_map(Some), 1 => Just(None)],
    )
}

proptest! {
    /// The documented delete/update rule, checked against an independent oracle:
    /// the document exists iff its latest update is later than its latest delete,
    /// and it shows, per field, the latest write if that write is later than the
    /// latest delete, whichever replica did what and in which order they merged.
    #[test]
    fn prop_delete_update_rule_matches_oracle(
        ops in proptest::collection::vec((arb_update_or_delete(), proptest::option::of(0..3_usize)), 0..30),
    ) {
        let ps = peers();
        let mut replicas = [DocumentCrdt::new(), DocumentCrdt::new(), DocumentCrdt::new()];
        let mut log: Vec<(HlcTimestamp, Option<Map>)> = Vec::new();
        let mut counts = [0_u64; 3];
        for ((r, op), sync_from) in &ops {
            // Unique per replica; equal time parts across peers exercise the tie-break.
            counts[*r] += 1;
            let ts = HlcTimestamp::new(counts[*r], 0, ps[*r]);
            match op {
                Some(fields) => replicas[*r].update(fields.clone(), ts).unwrap(),
                None => replicas[*r].delete(ts).unwrap(),
            };
            log.push((ts, op.clone()));
            if let Some(from) = sync_from {
                let state = replicas[*from].clone();
                replicas[(from + 1) % 3].merge(&state);
            }
        }
        let mut all = DocumentCrdt::new();
        for r in &replicas {
            all.merge(r);
        }
        let last_delete = log.iter().filter(|(_, op)| op.is_none()).map(|(t, _)| *t).max();
        let last_update = log.iter().filter(|(_, op)| op.is_some()).map(|(t, _)| *t).max();
        let mut latest: BTreeMap<String, (HlcTimestamp, Value)> = BTreeMap::new();
        for (t, op) in &log {
            for (name, value) in op.iter().flatten() {
                if latest.get(name).is_none_or(|(lt, _)| t > lt) {
                    latest.insert(name.clone(), (*t, value.clone()));
                }
            }
        }
        let expected = (last_update > last_delete).then(|| {
            latest
                .into_iter()
                .filter(|(_, (t, _))| Some(*t) > last_delete)
                .map(|(name, (_, v))| (name, v))
                .collect::<Map>()
        });
        prop_assert_eq!(all.materialize(), expected);
    }
}
