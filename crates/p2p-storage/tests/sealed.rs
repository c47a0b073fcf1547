//! Encrypted collections at the store: versions sealed under the collection
//! key, verified, stored and reconciled by a store without the key (which
//! reads them as `StoreError::Sealed`), opened by members, and a rotated key
//! that a removed member does not hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fields, identity};
use ecomesh_identity::group::GroupKey;
use ecomesh_p2p_storage::{
    ApplyOutcome, MemoryStore, StoreError, VersionNode, canonical_of_compact, compact_of_canonical,
};
use ecomesh_types::{ContentId, SetOptions, Value};

const MARKER: &str = "MARKER-sealed-7f3a9c";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn members(ns: &[u8]) -> Vec<ecomesh_identity::PublicKey> {
    ns.iter().map(|n| *identity(*n).public_key()).collect()
}

fn copy_all(from: &MemoryStore, to: &MemoryStore, collection: &str, id: &str) {
    for v in from.history(collection, id).unwrap() {
        let bytes = from.version_bytes(&v.cid).unwrap().unwrap();
        to.apply_remote(&bytes).unwrap();
    }
}

fn head(s: &MemoryStore, c: &str, id: &str) -> ContentId {
    let h = s.heads(c, id).unwrap();
    assert_eq!(h.len(), 1);
    h[0].clone()
}

#[test]
fn a_non_member_stores_and_reconciles_ciphertext_and_reads_it_as_sealed() {
    let (alice, bob, relay) = (common::memory(1), common::memory(2), common::memory(3));
    let (key, _) = GroupKey::create(&members(&[1, 2]), None).unwrap();
    alice.keyring().add("notes", key.clone(), true);
    bob.keyring().add("notes", key, true);
    alice
        .set(
            "notes",
            "n1",
            fields(&[("text", Value::from(MARKER))]),
            SetOptions::REPLACE,
        )
        .unwrap();
    let cid = head(&alice, "notes", "n1");
    let bytes = alice.version_bytes(&cid).unwrap().unwrap();
    assert!(
        !contains(&bytes, MARKER.as_bytes()),
        "plaintext in a version"
    );
    let node = alice.version(&cid).unwrap().unwrap();
    assert!(node.sealed.is_some() && node.delta.is_empty());
    node.verify().unwrap();

    // The compact wire form carries the same ciphertext and rebuilds the same bytes.
    let compact = compact_of_canonical(&bytes, &alice.peer_id()).unwrap();
    assert!(!contains(&compact, MARKER.as_bytes()));
    let key1 = identity(1).public_key().to_bytes();
    assert_eq!(canonical_of_compact(&compact, Some(&key1)).unwrap(), bytes);
    let with_author = compact_of_canonical(&bytes, &relay.peer_id()).unwrap();
    assert_eq!(canonical_of_compact(&with_author, None).unwrap(), bytes);

    // The relay verifies and stores it, without a key.
    assert!(matches!(
        relay.apply_remote(&bytes).unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    assert!(matches!(
        relay.get("notes", "n1"),
        Err(StoreError::Sealed { .. })
    ));
    assert!(matches!(
        relay.state_at(&cid),
        Err(StoreError::Sealed { .. })
    ));
    // Same heads and the same Merkle root as the author: anti-entropy works on
    // ciphertext CIDs.
    assert_eq!(relay.heads("notes", "n1").unwrap(), vec![cid.clone()]);
    assert_eq!(
        relay.collection_root("notes").unwrap(),
        alice.collection_root("notes").unwrap()
    );
    relay.verify_integrity().unwrap();
    // A relay that believes the collection encrypted cannot write it.
    relay.keyring().mark_encrypted("notes");
    assert!(matches!(
        relay.set(
            "notes",
            "n2",
            fields(&[("a", 1.into())]),
            SetOptions::REPLACE
        ),
        Err(StoreError::NoCollectionKey { .. })
    ));

    // The member gets it from the relay and reads it.
    copy_all(&relay, &bob, "notes", "n1");
    let doc = bob.get("notes", "n1").unwrap().unwrap();
    assert_eq!(doc.fields.get("text"), Some(&Value::from(MARKER)));
    bob.verify_integrity().unwrap();

    // A flipped ciphertext byte breaks the signature.
    let mut forged = node.clone();
    let s = forged.sealed.as_mut().unwrap();
    let last = s.len() - 1;
    s[last] ^= 1;
    assert!(matches!(
        forged.verify(),
        Err(StoreError::InvalidVersion { .. })
    ));
}

#[test]
fn a_key_that_arrives_later_opens_the_held_versions() {
    let (alice, dave) = (common::memory(1), common::memory(4));
    let (key, _) = GroupKey::create(&members(&[1, 4]), None).unwrap();
    alice.keyring().add("notes", key.clone(), true);
    alice
        .set(
            "notes",
            "n1",
            fields(&[("a", 1.into())]),
            SetOptions::REPLACE,
        )
        .unwrap();
    alice
        .update("notes", "n1", fields(&[("b", 2.into())]))
        .unwrap();
    copy_all(&alice, &dave, "notes", "n1");
    assert!(matches!(
        dave.get("notes", "n1"),
        Err(StoreError::Sealed { .. })
    ));
    dave.keyring().add("notes", key, true);
    assert_eq!(dave.open_held("notes").unwrap(), 2);
    let doc = dave.get("notes", "n1").unwrap().unwrap();
    assert_eq!(doc.fields.get("b"), Some(&Value::from(2)));
    dave.verify_integrity().unwrap();
    assert_eq!(dave.open_held("notes").unwrap(), 0);
}

#[test]
fn after_rotation_a_removed_member_keeps_old_versions_and_cannot_open_new_ones() {
    let (alice, bob, carol) = (common::memory(1), common::memory(2), common::memory(3));
    let (k0, _) = GroupKey::create(&members(&[1, 2, 3]), None).unwrap();
    for s in [&alice, &bob, &carol] {
        s.keyring().add("notes", k0.clone(), true);
    }
    alice
        .set(
            "notes",
            "n1",
            fields(&[("v", Value::from("old"))]),
            SetOptions::REPLACE,
        )
        .unwrap();
    let old = head(&alice, "notes", "n1");
    copy_all(&alice, &bob, "notes", "n1");
    copy_all(&alice, &carol, "notes", "n1");
    // Carol leaves: a fresh key for epoch 1, dealt to alice and bob only.
    let (k1, _) = k0.rotate(&members(&[1, 2]), None).unwrap();
    assert_eq!(k1.epoch(), 1);
    alice.keyring().add("notes", k1.clone(), true);
    bob.keyring().add("notes", k1, true);
    carol.keyring().retire_current("notes");
    alice
        .update("notes", "n1", fields(&[("v", Value::from(MARKER))]))
        .unwrap();
    let new = head(&alice, "notes", "n1");
    copy_all(&alice, &bob, "notes", "n1");
    copy_all(&alice, &carol, "notes", "n1");
    assert_eq!(
        bob.get("notes", "n1").unwrap().unwrap().fields.get("v"),
        Some(&Value::from(MARKER))
    );
    // Carol holds the new version but cannot read it...
    assert_eq!(carol.heads("notes", "n1").unwrap(), vec![new.clone()]);
    assert!(matches!(
        carol.get("notes", "n1"),
        Err(StoreError::Sealed { .. })
    ));
    assert!(matches!(
        carol.state_at(&new),
        Err(StoreError::Sealed { .. })
    ));
    let node = carol.version(&new).unwrap().unwrap();
    assert_eq!(node.sealing_key().unwrap().1, 1);
    // ...and still reads the old one.
    let state = carol.state_at(&old).unwrap();
    assert_eq!(
        state.materialize().unwrap().get("v"),
        Some(&Value::from("old"))
    );
    carol.verify_integrity().unwrap();
    // And cannot write any more.
    assert!(matches!(
        carol.update("notes", "n1", fields(&[("v", 3.into())])),
        Err(StoreError::NoCollectionKey { .. })
    ));
}

#[test]
fn sealed_nodes_round_trip_their_canonical_form() {
    let alice = identity(1);
    let (key, _) = GroupKey::create(&members(&[1]), None).unwrap();
    let store = common::memory(1);
    store.keyring().add("c", key.clone(), true);
    store
        .set("c", "d", fields(&[("x", 1.into())]), SetOptions::REPLACE)
        .unwrap();
    let cid = head(&store, "c", "d");
    let bytes = store.version_bytes(&cid).unwrap().unwrap();
    let node: VersionNode = ecomesh_wire::decode(&bytes).unwrap();
    assert_eq!(ecomesh_wire::encode(&node).unwrap(), bytes);
    assert_eq!(node.author, alice.public_key().to_bytes());
    let delta = node.open_delta(&key).unwrap();
    assert_eq!(delta.materialize().unwrap().get("x"), Some(&Value::from(1)));
    // The same ciphertext under another document's context does not open.
    let mut moved = node.clone();
    moved.id = "other".into();
    assert!(moved.open_delta(&key).is_err());
}
