//! Property tests of partner selection and GC eligibility.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use ecomesh_replication::policy::{
    Candidate, Diversity, GcItem, MIN_REPUTATION, Origin, Pin, PinSet, ReplicationConfig,
    ReplicationManager, Scope, gc_eligibility, select_partners,
};
use ecomesh_replication::reach::{Reach, Relation, Trust};
use ecomesh_types::{PeerId, TransportType};
use proptest::prelude::*;

const NETWORKS: [&str; 3] = ["home", "office", "farm"];
const REGIONS: [&str; 2] = ["eu", "us"];

fn peer(n: u8) -> PeerId {
    PeerId::from_digest([n; 32])
}

fn arb_candidate() -> impl Strategy<Value = Candidate> {
    (
        0_u8..12,
        proptest::sample::subsequence(TransportType::ALL.to_vec(), 0..=3),
        prop_oneof![0.0_f64..=1.0, Just(0.5), Just(f64::NAN)],
        proptest::option::of(0_usize..NETWORKS.len()),
        proptest::option::of(0_usize..REGIONS.len()),
    )
        .prop_map(|(n, transports, rep, net, region)| Candidate {
            peer: peer(n),
            transports,
            reputation: rep,
            network: net.map(|i| NETWORKS[i].to_owned()),
            region: region.map(|i| REGIONS[i].to_owned()),
        })
}

fn arb_pins() -> impl Strategy<Value = PinSet> {
    (
        proptest::option::of(proptest::collection::btree_set(0_u8..12, 1..5)),
        proptest::option::of(0_usize..REGIONS.len()),
        any::<bool>(),
    )
        .prop_map(|(devices, region, doc_level)| {
            let scope = if doc_level {
                Scope::document("c", "d")
            } else {
                Scope::collection("c")
            };
            let mut pins = PinSet::new();
            if let Some(devices) = devices {
                pins.add(Pin::User {
                    scope: scope.clone(),
                    devices: devices.into_iter().map(peer).collect(),
                })
                .unwrap();
            }
            if let Some(r) = region {
                pins.add(Pin::NetworkRegion {
                    scope,
                    region: REGIONS[r].to_owned(),
                })
                .unwrap();
            }
            pins
        })
}

proptest! {
    #[test]
    fn prop_selection_respects_every_rule(
        factor in 1_u32..6,
        cands in proptest::collection::vec(arb_candidate(), 0..16),
        pins in arb_pins(),
        origin_net in proptest::option::of(0_usize..NETWORKS.len()),
    ) {
        let origin = Origin { peer: peer(0), network: origin_net.map(|i| NETWORKS[i].to_owned()) };
        let s = select_partners(factor, "c", Some("d"), &origin, &cands, &pins);
        let placement = pins.placement("c", Some("d"));
        prop_assert!(s.partners.len() <= factor as usize);
        let unique: BTreeSet<_> = s.partners.iter().collect();
        prop_assert_eq!(unique.len(), s.partners.len());
        // The first occurrence of a peer is the one judged.
        let first = |p: &PeerId| cands.iter().find(|c| &c.peer == p).unwrap();
        let eligible: Vec<&Candidate> = {
            let mut seen = BTreeSet::new();
            cands.iter().filter(|c| seen.insert(c.peer)).filter(|c| {
                c.peer != origin.peer
                    && c.reputation >= MIN_REPUTATION
                    && !c.transports.is_empty()
                    && placement.devices.as_ref().is_none_or(|d| d.contains(&c.peer))
                    && placement.regions.as_ref().is_none_or(|r| c.region.as_ref().is_some_and(|x| r.contains(x)))
            }).collect()
        };
        for p in &s.partners {
            let c = first(p);
            prop_assert!(c.reputation >= MIN_REPUTATION, "chose {:?} at {}", p, c.reputation);
            prop_assert!(*p != origin.peer);
            prop_assert!(!c.transports.is_empty());
            if let Some(devices) = &placement.devices {
                prop_assert!(devices.contains(p));
            }
            if let Some(regions) = &placement.regions {
                prop_assert!(c.region.as_ref().is_some_and(|r| regions.contains(r)));
            }
        }
        prop_assert_eq!(s.partners.len(), eligible.len().min(factor as usize));
        let diverse_possible = eligible.iter().any(|c| c.is_diverse_from(origin.network.as_deref()));
        let diverse_chosen = s.partners.iter().any(|p| first(p).is_diverse_from(origin.network.as_deref()));
        prop_assert_eq!(diverse_possible, diverse_chosen);
        prop_assert_eq!(s.diversity == Diversity::Met, diverse_chosen);
        // Every non-chosen candidate is either excluded or beyond the factor.
        prop_assert_eq!(s.excluded.len() + eligible.len(), cands.len());
        // Deterministic: the same inputs give the same selection.
        let again = select_partners(factor, "c", Some("d"), &origin, &cands, &pins);
        prop_assert_eq!(again, s);
    }

    #[test]
    fn prop_proximity_order_without_diversity_swap(
        cands in proptest::collection::vec(arb_candidate(), 0..16),
    ) {
        // With no origin network, diversity is unavailable and the partners are the
        // nearest eligible candidates, in non-decreasing proximity rank.
        let origin = Origin { peer: peer(0), network: None };
        let s = select_partners(64, "c", None, &origin, &cands, &PinSet::new());
        let first = |p: &PeerId| cands.iter().find(|c| &c.peer == p).unwrap();
        let ranks: Vec<u8> = s.partners.iter().map(|p| first(p).proximity()).collect();
        prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{:?}", ranks);
    }

    #[test]
    fn prop_gc_eligible_only_when_all_conditions_hold(
        age in 0_u64..100,
        ttl in 1_u64..100,
        referenced in any::<bool>(),
        replicas in proptest::collection::btree_set(0_u8..8, 0..8),
        app_pin in any::<bool>(),
        factor in 1_u32..6,
    ) {
        let mut cfg = ReplicationConfig::default();
        cfg.set_gc_ttl_ms(ttl).unwrap();
        cfg.set_factor("c", factor).unwrap();
        let mut pins = PinSet::new();
        if app_pin {
            pins.add(Pin::App { scope: Scope::collection("c"), app: "a".into() }).unwrap();
        }
        let replicas: BTreeSet<PeerId> = replicas.into_iter().map(peer).collect();
        let local = peer(0);
        let item = GcItem { collection: "c", id: Some("d"), last_used_ms: 1000, referenced, confirmed_replicas: &replicas };
        let v = gc_eligibility(&cfg, &pins, &local, &item, 1000 + age);
        let others = replicas.iter().filter(|p| **p != local).count();
        let expect = !app_pin && !referenced && age >= ttl && others >= factor as usize;
        prop_assert_eq!(v.is_eligible(), expect);
    }

    #[test]
    fn prop_manager_partners_are_inside_the_reach(
        cands in proptest::collection::vec((arb_candidate(), 0_usize..6), 0..16),
        level in 0_usize..6,
    ) {
        const TRUST: [Trust; 6] = [Trust::OwnDevice, Trust::Family, Trust::Neighbour, Trust::Municipal, Trust::Bioregional, Trust::Stranger];
        let levels = [Reach::Private, Reach::Local, Reach::Neighbourhood, Reach::Municipal, Reach::Bioregional, Reach::Commons];
        let mut m = ReplicationManager::new(Origin { peer: peer(0), network: Some("home".into()) });
        m.reach.set_collection("c", levels[level].clone());
        let cands: Vec<(Candidate, Trust)> = cands.into_iter().map(|(c, t)| (c, TRUST[t])).collect();
        let s = m.partners_for("c", None, &cands);
        prop_assert!(s.partners.len() <= m.factor_for("c") as usize);
        for p in &s.partners {
            let (c, t) = cands.iter().find(|(c, _)| c.peer == *p).unwrap();
            prop_assert!(levels[level].admits(&Relation::new(*p, *t)));
            prop_assert!(c.reputation >= MIN_REPUTATION);
        }
    }
}
