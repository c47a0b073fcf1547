//! Deferred Merkle writes (issue 16, goal 3): the Merkle index nodes and
//! collection roots stay in memory between persists; a store abandoned with
//! such writes unpersisted (a crash: no `Drop`, no flush) reopens with the
//! index rebuilt from the state records and the same roots; the clock,
//! persisted as a bound, never issues a timestamp again after a reopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ecomesh_p2p_storage::kv::{Backend, MemoryBackend};
use ecomesh_p2p_storage::{MemoryStore, Store, StoreConfig};
use ecomesh_types::{BatchOperation, SetOptions, Value};

/// The stale marker's key (`M esc("merkle-stale")`).
fn marker_key() -> Vec<u8> {
    let mut k = b"Mmerkle-stale".to_vec();
    k.extend_from_slice(&[0, 1]);
    k
}

/// The collection root record of "c" as the backend itself holds it.
fn backend_root_record(backend: &MemoryBackend) -> Option<Vec<u8>> {
    let mut k = b"Cc".to_vec();
    k.extend_from_slice(&[0, 1]);
    backend.get(&k).unwrap()
}

fn write_docs(store: &MemoryStore, from: u32, to: u32) {
    for i in from..to {
        store
            .set(
                "c",
                &format!("d{i}"),
                common::fields(&[("n", Value::Integer(i64::from(i)))]),
                SetOptions::REPLACE,
            )
            .unwrap();
        if i % 7 == 0 {
            store.delete("c", &format!("d{}", i / 2)).unwrap();
        }
    }
    let ops = (0..50)
        .map(|j| BatchOperation::Set {
            collection: "other".into(),
            id: format!("o{}", from + j),
            fields: common::fields(&[("j", Value::Integer(i64::from(j)))]),
            merge: false,
        })
        .collect();
    store.batch(ops).unwrap();
}

fn open(backend: &MemoryBackend, config: StoreConfig) -> MemoryStore {
    Store::with_backend(backend.clone(), common::identity(1), config).unwrap()
}

#[test]
fn a_store_abandoned_with_deferred_merkle_writes_reopens_with_the_right_roots() {
    let clock = common::clock();
    let backend = MemoryBackend::new();
    let store = open(&backend, common::config(&clock));
    write_docs(&store, 0, 300);
    let root = store.root_cid().unwrap();
    let c_root = store.collection_root("c").unwrap().unwrap();
    let collections = store.collections().unwrap();
    store.verify_integrity().unwrap();
    // The index changes are in memory only: the backend holds the marker and
    // no root (or an older one) for "c".
    assert!(backend.get(&marker_key()).unwrap().is_some());
    assert_eq!(backend_root_record(&backend), None);
    // A crash: the store disappears without persisting anything.
    std::mem::forget(store);

    let reopened = open(&backend, common::config(&clock));
    assert_eq!(backend.get(&marker_key()).unwrap(), None, "rebuilt at open");
    assert!(backend_root_record(&backend).is_some());
    assert_eq!(reopened.root_cid().unwrap(), root);
    assert_eq!(reopened.collection_root("c").unwrap(), Some(c_root));
    assert_eq!(reopened.collections().unwrap(), collections);
    reopened.verify_integrity().unwrap();

    // Writes go on from the rebuilt index; a second crash after a persist
    // (flush) and more deferred writes is repaired as well.
    write_docs(&reopened, 300, 400);
    reopened.flush().unwrap();
    assert_eq!(backend.get(&marker_key()).unwrap(), None);
    write_docs(&reopened, 400, 450);
    let root = reopened.root_cid().unwrap();
    let persisted_c = backend_root_record(&backend);
    std::mem::forget(reopened);
    let again = open(&backend, common::config(&clock));
    assert_ne!(
        backend_root_record(&backend),
        persisted_c,
        "the stale root was replaced"
    );
    assert_eq!(again.root_cid().unwrap(), root);
    again.verify_integrity().unwrap();
}

#[test]
fn deferred_writes_are_persisted_at_the_bound_and_on_drop() {
    let clock = common::clock();
    let backend = MemoryBackend::new();
    let store = open(
        &backend,
        common::config(&clock).with_deferred_merkle_writes(20),
    );
    let mut persisted_roots = std::collections::BTreeSet::new();
    for i in 0..200 {
        store
            .set(
                "c",
                &format!("d{i}"),
                common::fields(&[("n", Value::Integer(i))]),
                SetOptions::REPLACE,
            )
            .unwrap();
        persisted_roots.insert(backend_root_record(&backend));
    }
    // The bound (20 writes of nodes and roots) was passed several times.
    assert!(persisted_roots.len() > 3, "{persisted_roots:?}");
    let root = store.root_cid().unwrap();
    drop(store);
    assert_eq!(backend.get(&marker_key()).unwrap(), None, "drop persisted");
    let reopened = open(&backend, common::config(&clock));
    assert_eq!(reopened.root_cid().unwrap(), root);
    reopened.verify_integrity().unwrap();
}

#[test]
fn without_deferral_every_write_persists_its_merkle_path() {
    let backend = MemoryBackend::new();
    let store = open(
        &backend,
        StoreConfig::default().with_deferred_merkle_writes(0),
    );
    store
        .set(
            "c",
            "a",
            common::fields(&[("n", Value::Integer(1))]),
            SetOptions::REPLACE,
        )
        .unwrap();
    assert_eq!(backend.get(&marker_key()).unwrap(), None);
    assert!(backend_root_record(&backend).is_some());
    std::mem::forget(store);
    let reopened = open(&backend, StoreConfig::default());
    reopened.verify_integrity().unwrap();
}

#[test]
fn a_reopened_store_never_issues_an_earlier_timestamp() {
    // The clock stands still, so every timestamp differs only in its logical
    // counter; the persisted bound must still put new ones after all of them.
    let clock = common::clock();
    let backend = MemoryBackend::new();
    let store = open(&backend, common::config(&clock));
    let mut last = None;
    for i in 0..50 {
        let w = store
            .set(
                "c",
                &format!("d{i}"),
                common::fields(&[]),
                SetOptions::REPLACE,
            )
            .unwrap();
        last = w.timestamp;
    }
    let last = last.unwrap();
    std::mem::forget(store);
    let reopened = open(&backend, common::config(&clock));
    let w = reopened
        .set("c", "d0", common::fields(&[]), SetOptions::REPLACE)
        .unwrap();
    let next = w.timestamp.unwrap();
    assert!(
        (next.physical_ms, next.logical) > (last.physical_ms, last.logical),
        "{next:?} after {last:?}"
    );
}
