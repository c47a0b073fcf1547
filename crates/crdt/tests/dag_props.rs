//! Version DAG properties: exchanging `missing_since` in both directions makes
//! two replicas' DAGs (and tips) equal; lowest common ancestors are lowest and
//! common; node lists rebuild the DAG.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use ecomesh_crdt::{DagNode, VersionDag};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Act {
    /// Replica `.0 % 2` adds a node whose parents are picked among its nodes.
    Add(usize, Vec<usize>),
    /// Replica `.0 % 2` adds a merge node over all its tips.
    MergeTips(usize),
    /// Replica `.1 % 2` gets what replica `.0 % 2` has beyond its tips.
    Sync(usize, usize),
}

fn arb_acts() -> impl Strategy<Value = Vec<Act>> {
    let act = prop_oneof![
        5 => (0..2_usize, proptest::collection::vec(any::<usize>(), 0..3)).prop_map(|(r, p)| Act::Add(r, p)),
        1 => (0..2_usize).prop_map(Act::MergeTips),
        1 => (0..2_usize, 0..2_usize).prop_map(|(a, b)| Act::Sync(a, b)),
    ];
    proptest::collection::vec(act, 0..40)
}

/// Sends `from`'s missing nodes to `to`; each insert must succeed in order.
fn sync(from: &VersionDag<u32>, to: &mut VersionDag<u32>) -> Result<(), TestCaseError> {
    let tips: Vec<u32> = to.tips().iter().copied().collect();
    for node in from.missing_since(&tips) {
        let (id, parents) = node.into_parts();
        let inserted = to.insert(id, parents);
        prop_assert!(inserted.is_ok(), "parents before children: {:?}", inserted);
    }
    Ok(())
}

fn build(acts: &[Act]) -> Result<[VersionDag<u32>; 2], TestCaseError> {
    let mut dags = [VersionDag::new(), VersionDag::new()];
    let mut next = 0_u32;
    for act in acts {
        match act {
            Act::Add(r, picks) => {
                let dag = &mut dags[r % 2];
                let ids: Vec<u32> = dag.nodes().into_iter().map(|n| *n.id()).collect();
                let parents: BTreeSet<u32> = if ids.is_empty() {
                    BTreeSet::new()
                } else {
                    picks.iter().map(|p| ids[p % ids.len()]).collect()
                };
                prop_assert!(dag.insert(next, parents).unwrap());
                next += 1;
            }
            Act::MergeTips(r) => {
                let dag = &mut dags[r % 2];
                let tips: Vec<u32> = dag.tips().iter().copied().collect();
                prop_assert!(dag.insert(next, tips).unwrap());
                prop_assert_eq!(dag.tips(), &BTreeSet::from([next]));
                next += 1;
            }
            Act::Sync(a, b) if a % 2 != b % 2 => {
                let from = dags[a % 2].clone();
                sync(&from, &mut dags[b % 2])?;
            }
            Act::Sync(..) => {}
        }
    }
    Ok(dags)
}

proptest! {
    #[test]
    fn prop_dag_missing_since_exchange_equalizes(acts in arb_acts()) {
        let [a, b] = build(&acts)?;
        // When every remote tip is known here, nothing the remote has is sent.
        let b_tips: Vec<u32> = b.tips().iter().copied().collect();
        if b_tips.iter().all(|t| a.contains(t)) {
            for node in a.missing_since(&b_tips) {
                prop_assert!(!b.contains(node.id()));
            }
        }
        let (mut a2, mut b2) = (a.clone(), b.clone());
        sync(&b, &mut a2)?;
        sync(&a, &mut b2)?;
        prop_assert_eq!(a2.tips(), b2.tips());
        prop_assert_eq!(&a2, &b2);
        prop_assert_eq!(a2.len(), a.len() + b.len() - a.nodes().iter().filter(|n| b.contains(n.id())).count());
    }

    #[test]
    fn prop_dag_lowest_common_ancestors_are_lowest_and_common(
        acts in arb_acts(), x in any::<usize>(), y in any::<usize>(),
    ) {
        let [mut a, b] = build(&acts)?;
        sync(&b, &mut a)?;
        let ids: Vec<u32> = a.nodes().into_iter().map(|n| *n.id()).collect();
        prop_assume!(!ids.is_empty());
        let (x, y) = (ids[x % ids.len()], ids[y % ids.len()]);
        let lcas = a.lowest_common_ancestors(&[x, y]).unwrap();
        let closure = |id: u32| {
            let mut s = a.ancestors(&id).unwrap();
            s.insert(id);
            s
        };
        let common: BTreeSet<u32> = closure(x).intersection(&closure(y)).copied().collect();
        for l in &lcas {
            prop_assert!(common.contains(l));
            for m in &lcas {
                prop_assert!(l == m || !a.is_ancestor(l, m).unwrap());
            }
        }
        for c in &common {
            prop_assert!(lcas.iter().any(|l| a.is_ancestor(c, l).unwrap()));
        }
    }

    #[test]
    fn prop_dag_nodes_rebuild_the_dag(acts in arb_acts(), keys in proptest::collection::vec(any::<u64>(), 64)) {
        let [a, _] = build(&acts)?;
        let mut nodes: Vec<DagNode<u32>> = a.nodes();
        let mut k = 0;
        nodes.sort_by_cached_key(|_| { k += 1; keys[k % keys.len()] });
        prop_assert_eq!(VersionDag::from_nodes(nodes).unwrap(), a);
    }
}
