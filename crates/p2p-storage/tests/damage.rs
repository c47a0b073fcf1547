//! Damaged storage (issue 21, item 7): a store whose `db` file had 4 KiB
//! overwritten at the start, the middle, the end or at random offsets opens
//! without a panic, says it was damaged and what it lost (sled 0.34 itself
//! opens such a file silently without the records after the damage), moves
//! the damaged directory aside, and holds a consistent store of what still
//! read whose Merkle index claims nothing it lost. Offsets are printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use ecomesh_identity::Identity;
use ecomesh_p2p_storage::blobs::BlobStore;
use ecomesh_p2p_storage::witness::{self, Acknowledged};
use ecomesh_p2p_storage::{SledStore, StoreConfig, StoreHealth};
use ecomesh_replication::blob::{BlobConfig, ManifestLimits};
use ecomesh_types::{Map, SetOptions, Value};

const DOCS: i64 = 50;

/// 50 documents of about 300 bytes (and one blob), flushed as every write is.
fn fill(dir: &Path, identity: &Identity) {
    let s = SledStore::open(dir, identity.clone(), StoreConfig::default()).unwrap();
    for i in 0..DOCS {
        let mut m = Map::new();
        m.insert("n".into(), Value::Integer(i));
        m.insert("pad".into(), Value::Text("x".repeat(300)));
        s.set("notes", &format!("d{i:02}"), m, SetOptions::REPLACE)
            .unwrap();
    }
    let blobs = BlobStore::open(
        s.backend().clone(),
        identity.peer_id(),
        ManifestLimits::default(),
    )
    .unwrap();
    blobs
        .put_blob("files", &[7_u8; 3000], &BlobConfig::default(), 1)
        .unwrap();
    s.flush().unwrap();
}

fn overwrite(file: &Path, offset: u64, seed: u64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut x = seed | 1;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    f.write_all(&junk).unwrap();
}

/// Damages `db` at `offset` (a fraction of its length when below 1.0) and
/// checks what the next open says and leaves.
fn damage_and_check(label: &str, fraction: Option<f64>, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let identity = Identity::generate().unwrap();
    fill(&path, &identity);
    let Acknowledged::Counts(acked) = witness::read(&path) else {
        panic!("no witness after writes")
    };
    assert_eq!((acked.versions, acked.documents), (50, 50));
    let db = path.join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    let offset = match fraction {
        Some(f) => ((len as f64 * f) as u64).min(len.saturating_sub(4096)),
        None => (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % len.saturating_sub(4096),
    };
    eprintln!("{label}: 4 KiB of {len} overwritten at offset {offset} (seed {seed})");
    overwrite(&db, offset, seed);

    let (store, health) =
        SledStore::open_checked(&path, identity.clone(), StoreConfig::default()).unwrap();
    let report = store.verify_integrity().unwrap();
    let present = (0..DOCS)
        .filter(|i| store.get("notes", &format!("d{i:02}")).unwrap().is_some())
        .count() as u64;
    assert_eq!(present, report.live_documents as u64);
    match health {
        StoreHealth::Healthy => {
            // Damage that hit no acknowledged record (free log space).
            assert_eq!(
                present, DOCS as u64,
                "{label}: healthy but documents missing"
            );
        }
        StoreHealth::Recovered(d) => {
            eprintln!("{label}: {d:?}");
            assert_eq!(d.acknowledged, Some(acked));
            assert_eq!(d.recovered.documents, present);
            assert_eq!(d.lost_documents, DOCS as u64 - present);
            assert_eq!(d.lost_versions, 50 - report.versions as u64);
            assert!(d.moved_to.join("db").exists(), "damaged files kept");
            assert!(
                d.moved_to
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("store.damaged-")
            );
            // The Merkle index claims exactly the documents present.
            let fresh = ecomesh_p2p_storage::MemoryStore::in_memory(
                identity.clone(),
                StoreConfig::default(),
            )
            .unwrap();
            for i in 0..DOCS {
                let id = format!("d{i:02}");
                for v in store.history("notes", &id).unwrap_or_default() {
                    let bytes = store.version_bytes(&v.cid).unwrap().unwrap();
                    fresh.apply_remote(&bytes).unwrap();
                }
            }
            assert_eq!(store.root_cid().unwrap(), fresh.root_cid().unwrap());
        }
        other => panic!("{other:?}"),
    }
    drop(store);
    // Writing goes on, and the next open finds the store healthy.
    let (store, health) =
        SledStore::open_checked(&path, identity.clone(), StoreConfig::default()).unwrap();
    assert_eq!(health, StoreHealth::Healthy, "{label}: second open");
    store
        .set("notes", "after", Map::new(), SetOptions::REPLACE)
        .unwrap();
    store.verify_integrity().unwrap();
}

#[test]
fn damage_at_the_start_of_the_database_is_reported_and_rebuilt() {
    damage_and_check("start", Some(0.0), 1);
}

#[test]
fn damage_in_the_middle_of_the_database_is_reported_and_rebuilt() {
    damage_and_check("middle", Some(0.5), 2);
}

#[test]
fn damage_at_the_end_of_the_database_is_reported_or_harmless() {
    damage_and_check("end", Some(1.0), 3);
}

#[test]
fn damage_in_random_blocks_is_reported_and_rebuilt() {
    let base: u64 = std::env::var("ECOMESH_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    for k in 0..4 {
        damage_and_check("random", None, base + k);
    }
}

#[test]
fn a_damaged_witness_or_conf_file_rebuilds_without_losing_records() {
    for file in [witness::FILE_NAME, "conf"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let identity = Identity::generate().unwrap();
        fill(&path, &identity);
        std::fs::write(path.join(file), b"garbage").unwrap();
        let (store, health) =
            SledStore::open_checked(&path, identity, StoreConfig::default()).unwrap();
        let report = store.verify_integrity().unwrap();
        eprintln!("{file}: {health:?}, {report:?}");
        if file == "conf" {
            // sled rewrites a conf it cannot read or refuses to open: either
            // way nothing the log holds is lost.
            assert_eq!(report.live_documents, DOCS as usize);
            continue;
        }
        let StoreHealth::Recovered(d) = health else {
            panic!("a damaged witness must be reported")
        };
        assert_eq!(d.acknowledged, None);
        assert_eq!(report.live_documents, DOCS as usize, "nothing lost");
        assert_eq!(d.lost_versions, 0);
    }
}

#[test]
fn a_store_opened_twice_without_damage_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let identity = Identity::generate().unwrap();
    fill(&path, &identity);
    for _ in 0..2 {
        let (_s, health) =
            SledStore::open_checked(&path, identity.clone(), StoreConfig::default()).unwrap();
        assert_eq!(health, StoreHealth::Healthy);
    }
    let siblings = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(siblings, 1, "nothing moved aside");
}
