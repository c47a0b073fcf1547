//! `P2PStorageAdapter::import_version` and `replicated_version_bytes`: versions
//! carried without a peer (sneakernet files) merge through the path of a
//! version pushed by its author, and exports leave local collections out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use ecomesh_identity::PublicKey;
use ecomesh_mesh::{MeshConfig, MultiTransportManager};
use ecomesh_p2p_storage::kv::MemoryBackend;
use ecomesh_p2p_storage::{P2PConfig, P2PStorageAdapter, Store, VersionNode};
use ecomesh_replication::merkle::ApplyResult;
use ecomesh_replication::stream::DurableStream;
use ecomesh_types::{PeerId, SetOptions, Value};

use common::{fields, memory};

fn adapter(
    store: Store<MemoryBackend>,
    n: u8,
    stream: &std::path::Path,
) -> P2PStorageAdapter<MemoryBackend> {
    let keys: Arc<BTreeMap<PeerId, PublicKey>> = Arc::default();
    let mesh = Arc::new(MultiTransportManager::new(
        common::identity(n),
        keys,
        MeshConfig::default(),
    ));
    P2PStorageAdapter::new(Arc::new(store), mesh, P2PConfig::default())
        .with_stream(DurableStream::open(stream).unwrap())
}

#[test]
fn imported_versions_merge_once_and_local_ones_stay_home() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(memory(1), 1, &tmp.path().join("a"));
    let b = adapter(memory(2), 2, &tmp.path().join("b"));
    let s = a.store();
    let v1 = s
        .set(
            "notes",
            "n",
            fields(&[("t", Value::from("one"))]),
            SetOptions::default(),
        )
        .unwrap()
        .version
        .unwrap();
    let v2 = s
        .set(
            "notes",
            "n",
            fields(&[("t", Value::from("two"))]),
            SetOptions::default(),
        )
        .unwrap()
        .version
        .unwrap();
    let local = s
        .set(
            "_mine",
            "x",
            fields(&[("t", Value::from("x"))]),
            SetOptions::default(),
        )
        .unwrap()
        .version
        .unwrap();
    assert!(a.replicated_version_bytes(&local).unwrap().is_none());
    let local_bytes = s.version_bytes(&local).unwrap().unwrap();
    let b1 = a.replicated_version_bytes(&v1).unwrap().unwrap();
    let b2 = a.replicated_version_bytes(&v2).unwrap().unwrap();

    // The child first: its parent is missing, nothing changes.
    assert_eq!(
        b.import_version(&b2).unwrap(),
        ApplyResult::MissingParents(vec![v1.clone()])
    );
    assert_eq!(b.import_version(&b1).unwrap(), ApplyResult::Applied);
    assert_eq!(b.import_version(&b2).unwrap(), ApplyResult::Applied);
    assert_eq!(b.import_version(&b2).unwrap(), ApplyResult::AlreadyPresent);
    assert_eq!(b.stream_head(), 2, "both positioned in the stream");
    assert_eq!(b.store().heads("notes", "n").unwrap(), vec![v2]);
    assert_eq!(b.replicated_root().unwrap(), a.replicated_root().unwrap());

    // A local collection's version is not admitted (policy, no fault of the
    // sender) and a forged one is invalid.
    assert!(matches!(
        b.import_version(&local_bytes).unwrap(),
        ApplyResult::NotAdmitted(_)
    ));
    let mut forged: VersionNode = ecomesh_wire::decode(&b1).unwrap();
    forged.signature[5] ^= 1;
    let forged = ecomesh_wire::encode(&forged).unwrap();
    assert!(
        matches!(b.import_version(&forged).unwrap(), ApplyResult::Invalid(r) if r.contains("signature"))
    );
    assert!(matches!(
        b.import_version(b"junk").unwrap(),
        ApplyResult::Invalid(_)
    ));
    assert_eq!(b.stream_head(), 2);
}
