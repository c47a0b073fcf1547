//! Bad input from disk and from other processes: typed errors, never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fields;
use ecomesh_p2p_storage::kv::{Backend, SledBackend, WriteBatch};
use ecomesh_p2p_storage::{SledStore, StoreConfig, StoreError};
use ecomesh_types::SetOptions;

#[test]
fn a_second_open_of_a_held_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = common::sled(dir.path(), 1);
    match SledStore::open(dir.path(), common::identity(1), StoreConfig::default()) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(common::sled(dir.path(), 1));
    {
        let raw = SledBackend::open(dir.path(), None).unwrap();
        let mut batch = WriteBatch::new();
        let mut key = vec![b'M'];
        key.extend_from_slice(b"format\0\x01");
        batch.insert(key, Some(99_u32.to_be_bytes().to_vec()));
        raw.apply(batch).unwrap();
        raw.flush().unwrap();
    }
    match SledStore::open(dir.path(), common::identity(1), StoreConfig::default()) {
        Err(StoreError::UnsupportedFormat {
            found: 99,
            supported: 1,
        }) => {}
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
}

#[test]
fn corrupt_records_name_the_document() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = common::sled(dir.path(), 1);
        s.set(
            "users",
            "u1",
            fields(&[("a", 1.into())]),
            SetOptions::REPLACE,
        )
        .unwrap();
        s.set(
            "users",
            "u2",
            fields(&[("a", 2.into())]),
            SetOptions::REPLACE,
        )
        .unwrap();
    }
    {
        // Damage u1's document record and a version node.
        let raw = SledBackend::open(dir.path(), None).unwrap();
        let mut batch = WriteBatch::new();
        let doc_key: Vec<u8> = raw
            .scan(b"D", None)
            .map(|r| r.unwrap().0)
            .find(|k| k.windows(2).any(|w| w == b"u1"))
            .unwrap();
        batch.insert(doc_key, Some(vec![0xFF, 0x00, 0x13]));
        let version_key = raw.scan(b"V", Some(b"W")).next().unwrap().unwrap().0;
        batch.insert(version_key, Some(vec![0xA0]));
        raw.apply(batch).unwrap();
        raw.flush().unwrap();
    }
    let s = common::sled(dir.path(), 1);
    match s.get("users", "u1") {
        Err(StoreError::Corrupt { collection, id, .. }) => {
            assert_eq!((collection.as_str(), id.as_str()), ("users", "u1"))
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(s.get("users", "u2").unwrap().is_some());
    assert!(s.verify_integrity().is_err());
    // The damaged version belongs to one of the two documents: walking that
    // document's history is a typed error, not a panic.
    let walks = [s.history("users", "u1"), s.history("users", "u2")];
    assert!(
        walks
            .iter()
            .any(|w| matches!(w, Err(StoreError::Corrupt { .. }))),
        "no history walk reported the damaged version: {walks:?}"
    );
}

#[test]
fn writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = {
        let s = common::sled(dir.path(), 1);
        for i in 0..50 {
            s.set(
                "c",
                &format!("d{i}"),
                fields(&[("i", i.into())]),
                SetOptions::REPLACE,
            )
            .unwrap();
        }
        s.root_cid().unwrap()
    };
    let s = common::sled(dir.path(), 1);
    assert_eq!(s.root_cid().unwrap(), root);
    assert_eq!(s.scan_collection("c").unwrap().len(), 50);
    // The clock keeps moving forward after a restart, even if the wall clock did not.
    let before = s.heads("c", "d0").unwrap();
    let w = s.update("c", "d0", fields(&[("j", 1.into())])).unwrap();
    let node = s.version(w.version.as_ref().unwrap()).unwrap().unwrap();
    let parent = s.version(&before[0]).unwrap().unwrap();
    assert!(node.timestamp > parent.timestamp);
    s.verify_integrity().unwrap();
}
