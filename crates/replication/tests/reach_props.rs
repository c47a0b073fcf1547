//! Property tests of reach: levels nest, filtering and the sender's check agree.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use ecomesh_replication::ReplicationError;
use ecomesh_replication::reach::{Reach, ReachPolicy, Relation, Trust};
use ecomesh_types::PeerId;
use proptest::prelude::*;

fn peer(n: u8) -> PeerId {
    PeerId::from_digest([n; 32])
}

fn arb_trust() -> impl Strategy<Value = Trust> {
    prop_oneof![
        Just(Trust::OwnDevice),
        Just(Trust::Family),
        Just(Trust::Neighbour),
        Just(Trust::Municipal),
        Just(Trust::Bioregional),
        Just(Trust::Stranger),
    ]
}

fn arb_reach() -> impl Strategy<Value = Reach> {
    prop_oneof![
        Just(Reach::Private),
        proptest::collection::btree_set(0_u8..8, 0..4)
            .prop_map(|s| Reach::Invited(s.into_iter().map(peer).collect())),
        Just(Reach::Local),
        Just(Reach::Neighbourhood),
        Just(Reach::Municipal),
        Just(Reach::Bioregional),
        Just(Reach::Commons),
    ]
}

const LEVELS: [Reach; 6] = [
    Reach::Private,
    Reach::Local,
    Reach::Neighbourhood,
    Reach::Municipal,
    Reach::Bioregional,
    Reach::Commons,
];

proptest! {
    #[test]
    fn prop_wider_levels_admit_everyone_narrower_ones_do(n in 0_u8..8, trust in arb_trust()) {
        let r = Relation::new(peer(n), trust);
        for w in LEVELS.windows(2) {
            prop_assert!(!w[0].admits(&r) || w[1].admits(&r), "{:?} admits but {:?} does not", w[0], w[1]);
        }
        prop_assert!(Reach::Commons.admits(&r));
        prop_assert_eq!(Reach::Private.admits(&r), trust == Trust::OwnDevice);
        // Invited admits exactly what private admits plus the named peers.
        let invited = Reach::Invited(BTreeSet::from([peer(3)]));
        prop_assert_eq!(invited.admits(&r), trust == Trust::OwnDevice || n == 3);
    }

    #[test]
    fn prop_filter_and_ensure_agree_with_admits(
        default in arb_reach(),
        coll in arb_reach(),
        doc in arb_reach(),
        recipients in proptest::collection::vec((0_u8..8, arb_trust()), 0..12),
    ) {
        let mut p = ReachPolicy::new(default);
        p.set_collection("c", coll);
        p.set_document("c", "d", doc.clone());
        let rels: Vec<Relation> = recipients.iter().map(|(n, t)| Relation::new(peer(*n), *t)).collect();
        let kept = p.filter("c", Some("d"), rels.iter().copied());
        let expect: Vec<PeerId> = rels.iter().filter(|r| doc.admits(r)).map(|r| r.peer).collect();
        prop_assert_eq!(&kept, &expect);
        for r in &rels {
            match p.ensure_admitted("c", Some("d"), r) {
                Ok(()) => prop_assert!(doc.admits(r)),
                Err(ReplicationError::OutOfReach { peer: who, .. }) => {
                    prop_assert!(!doc.admits(r));
                    prop_assert_eq!(who, r.peer);
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}
