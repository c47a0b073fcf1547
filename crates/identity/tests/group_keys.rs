//! Shamir group keys: any k of n shares rebuild the key, k-1 do not, rotation on join/leave.
#![allow(clippy::unwrap_used)]

mod common;

use common::identity;
use ecomesh_identity::group::{GroupKey, GroupShare, default_threshold};
use ecomesh_identity::{Error, Identity, PublicKey};
use proptest::prelude::*;

fn members(n: u8) -> (Vec<Identity>, Vec<PublicKey>) {
    let ids: Vec<Identity> = (1..=n).map(identity).collect();
    let keys = ids.iter().map(|i| *i.public_key()).collect();
    (ids, keys)
}

fn open_all(ids: &[Identity], dist: &ecomesh_identity::group::Distribution) -> Vec<GroupShare> {
    ids.iter()
        .zip(&dist.envelopes)
        .map(|(id, (peer, env))| {
            assert_eq!(*peer, id.peer_id());
            GroupShare::open(id, env).unwrap()
        })
        .collect()
}

/// All subsets of `0..n` of size `k`.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    (0_u32..1 << n)
        .filter(|m| m.count_ones() as usize == k)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn any_k_of_n_rebuild_and_k_minus_1_fail() {
    for n in 1..=6_u8 {
        let (ids, keys) = members(n);
        let (key, dist) = GroupKey::create(&keys, None).unwrap();
        let k = default_threshold(usize::from(n));
        assert_eq!(dist.threshold, k);
        let ct = key.encrypt(b"shared budget").unwrap();
        let shares = open_all(&ids, &dist);
        for subset in subsets(usize::from(n), k) {
            let picked: Vec<GroupShare> = subset.iter().map(|&i| shares[i].clone()).collect();
            let rebuilt = GroupKey::recover(&picked).unwrap();
            assert_eq!(rebuilt.decrypt(&ct).unwrap(), b"shared budget");
        }
        if k > 1 {
            for subset in subsets(usize::from(n), k - 1) {
                let picked: Vec<GroupShare> = subset.iter().map(|&i| shares[i].clone()).collect();
                match GroupKey::recover(&picked) {
                    Err(Error::NotEnoughShares { have, need }) => {
                        assert_eq!((have, need), (k - 1, k))
                    }
                    other => panic!("{other:?}"),
                }
            }
            // Duplicates do not count twice.
            let dup = vec![shares[0].clone(); k];
            assert!(matches!(
                GroupKey::recover(&dup),
                Err(Error::NotEnoughShares { have: 1, .. })
            ));
        }
    }
    assert!(matches!(
        GroupKey::recover(&[]),
        Err(Error::NotEnoughShares { have: 0, .. })
    ));
}

#[test]
fn envelopes_are_only_for_their_member() {
    let (ids, keys) = members(3);
    let (_, dist) = GroupKey::create(&keys, None).unwrap();
    assert!(matches!(
        GroupShare::open(&ids[1], &dist.envelopes[0].1),
        Err(Error::DecryptFailed)
    ));
}

#[test]
fn rotation_on_join_and_leave() {
    let (ids, keys) = members(4);
    let (k0, d0) = GroupKey::create(&keys[..3], None).unwrap();
    let old_ct = k0.encrypt(b"epoch 0").unwrap();
    // Member 4 joins.
    let (k1, d1) = k0.rotate(&keys, None).unwrap();
    assert_eq!((k1.epoch(), k1.group_id()), (1, k0.group_id()));
    assert_eq!(d1.envelopes.len(), 4);
    let new_ct = k1.encrypt(b"epoch 1").unwrap();
    assert!(matches!(
        k0.decrypt(&new_ct),
        Err(Error::WrongEpoch {
            expected: 0,
            found: 1
        })
    ));
    assert!(matches!(k1.decrypt(&old_ct), Err(Error::WrongEpoch { .. })));
    // Old-epoch shares cannot be mixed with new ones.
    let s0 = open_all(&ids[..3], &d0);
    let s1 = open_all(&ids, &d1);
    let mixed = vec![s0[0].clone(), s1[1].clone(), s1[2].clone()];
    assert!(matches!(
        GroupKey::recover(&mixed),
        Err(Error::ShareMismatch(_))
    ));
    let rebuilt = GroupKey::recover(&s1[1..]).unwrap();
    assert_eq!(rebuilt.decrypt(&new_ct).unwrap(), b"epoch 1");

    // Member 1 leaves: a new key it never gets a share of.
    let (k2, d2) = k1.rotate(&keys[1..], None).unwrap();
    assert_eq!(k2.epoch(), 2);
    assert!(d2.envelopes.iter().all(|(p, _)| *p != ids[0].peer_id()));
    for (_, env) in &d2.envelopes {
        assert!(GroupShare::open(&ids[0], env).is_err());
    }
    // A different group's key cannot read this group's data.
    let (other, _) = GroupKey::create(&keys, None).unwrap();
    assert!(other.decrypt(&new_ct).is_err());
}

#[test]
fn explicit_threshold_and_tampered_share() {
    let (ids, keys) = members(5);
    let (key, dist) = GroupKey::create(&keys, Some(2)).unwrap();
    let shares = open_all(&ids, &dist);
    let ct = key.encrypt(b"x").unwrap();
    assert_eq!(
        GroupKey::recover(&shares[3..])
            .unwrap()
            .decrypt(&ct)
            .unwrap(),
        b"x"
    );
    // A share whose y was altered (re-encoded by a cheating member) rebuilds a wrong key,
    // which the key check catches.
    let mut bytes = shares[0].to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad = GroupShare::from_bytes(&bytes).unwrap();
    assert!(matches!(
        GroupKey::recover(&[bad, shares[1].clone()]),
        Err(Error::ShareMismatch(_))
    ));
}

proptest! {
    #[test]
    fn prop_group_data_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_, keys) = members(2);
        let (key, _) = GroupKey::create(&keys, None).unwrap();
        let ct = key.encrypt(&data).unwrap();
        prop_assert_eq!(ct.len(), data.len() + ecomesh_identity::group::DATA_OVERHEAD);
        prop_assert_eq!(key.decrypt(&ct).unwrap(), data);
    }
}

#[test]
fn a_whole_key_sealed_to_a_member_opens_only_for_that_member_and_decrypts_bound_data() {
    let (ids, keys) = members(4);
    let (key, dist) = GroupKey::create(&keys, None).unwrap();
    let env = key.seal_to(&keys[1]).unwrap();
    let opened = GroupKey::open_sealed(&ids[1], &env).unwrap();
    assert!(opened.same_key(&key));
    assert!(GroupKey::open_sealed(&ids[0], &env).is_err());
    let ct = key.encrypt_bound(b"marker", b"notes/a").unwrap();
    assert_eq!(
        ecomesh_identity::group::ciphertext_key(&ct).unwrap(),
        (key.group_id(), key.epoch())
    );
    assert_eq!(opened.decrypt_bound(&ct, b"notes/a").unwrap(), b"marker");
    // Bound to its context: another context does not open it.
    assert!(matches!(
        opened.decrypt_bound(&ct, b"notes/b"),
        Err(Error::DecryptFailed)
    ));
    // The same key rebuilt from k shares opens it too (recovery).
    let shares = open_all(&ids, &dist);
    assert!(GroupKey::recover(&shares[..2]).is_err());
    let rebuilt = GroupKey::recover(&shares[1..]).unwrap();
    assert!(rebuilt.same_key(&key));
    assert_eq!(rebuilt.decrypt_bound(&ct, b"notes/a").unwrap(), b"marker");
    // An empty context is exactly the unbound form.
    let plain = key.encrypt(b"x").unwrap();
    assert_eq!(key.decrypt_bound(&plain, b"").unwrap(), b"x");
    // A tampered check value is refused.
    let mut bytes = key.to_secret_bytes().to_vec();
    bytes[30] ^= 1;
    assert!(matches!(
        GroupKey::from_secret_bytes(&bytes),
        Err(Error::ShareMismatch(_))
    ));
}
