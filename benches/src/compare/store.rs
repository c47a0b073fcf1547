//! The `store` rows of the compare report (issue 16, goal 3).
//!
//! A single write (`Store::set`, `Store::update`) against its floor measured in
//! the same run: one Ed25519 signature over a version node's signing bytes,
//! SHA-256 over the Merkle index nodes the write rewrites (root to leaf, as
//! stored), and a raw sled insert of the document's bytes. Then
//! `Store::batch` throughput in documents per second against the 20,000/s
//! goal, and for context against raw sled inserts of the same documents.
//!
//! Both the store and raw sled run with their background flush off
//! (`FlushPolicy::Manual`), so every figure is the write path, not `fsync`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ecomesh_identity::Identity;
use ecomesh_p2p_storage::kv::{Backend, ScanIter, SledBackend, WriteBatch};
use ecomesh_p2p_storage::trie::Node;
use ecomesh_p2p_storage::{
    FlushPolicy, LocalWrite, Store, StoreConfig, StoreError, VERSION_SIGNATURE_DOMAIN, VersionNode,
};
use ecomesh_types::{BatchOperation, Map, SetOptions, Value};
use sha2::{Digest, Sha256};

use super::{Options, Row, Target, seconds_per_call};

/// Documents per `Store::batch` call in the batch rows.
const BATCH: usize = 1000;
/// The goal for batched writes, in documents per second.
const BATCH_GOAL: f64 = 20_000.0;
/// Stride between the documents successive writes touch (prime, so every
/// document comes round and neighbours in the key order are not reused).
const STRIDE: usize = 7919;

/// The benchmark document: four fields, one 64-byte text.
pub fn fields(i: usize) -> Map {
    let mut m = Map::new();
    m.insert("name".into(), Value::Text(format!("member {i}")));
    m.insert("bucket".into(), Value::Integer((i / 10) as i64));
    m.insert("amount".into(), Value::Integer((i * 37 % 1000) as i64));
    m.insert("note".into(), Value::Text("x".repeat(64)));
    m
}

fn doc_id(i: usize) -> String {
    format!("doc{i:07}")
}

fn set_op(i: usize, fields: Map) -> BatchOperation {
    BatchOperation::Set {
        collection: "c".into(),
        id: doc_id(i),
        fields,
        merge: false,
    }
}

/// The store's sled backend, keeping a copy of every batch it applies while
/// `recording` is on: the exact keys and values a write stored, to replay on
/// raw sled.
struct Recording {
    inner: SledBackend,
    recording: AtomicBool,
    batches: Mutex<Vec<WriteBatch>>,
}

impl Recording {
    fn take(&self) -> Vec<WriteBatch> {
        std::mem::take(&mut *self.batches.lock().expect("not poisoned"))
    }
}

impl Backend for Recording {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_> {
        self.inner.scan(start, end)
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.recording.load(Ordering::Relaxed) {
            self.batches
                .lock()
                .expect("not poisoned")
                .push(batch.clone());
        }
        self.inner.apply(batch)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

type BenchStore = Store<Recording>;

/// Applies recorded batches to raw sled.
fn replay(db: &sled::Db, batches: &[Vec<(sled::IVec, Option<sled::IVec>)>]) {
    replay_renaming_versions(db, batches, None);
}

/// Applies recorded batches to raw sled; with `fresh`, each version key gets
/// that suffix, so the replay inserts a new version as the store's write did
/// (sled skips a set of a key to the bytes it already holds).
fn replay_renaming_versions(
    db: &sled::Db,
    batches: &[Vec<(sled::IVec, Option<sled::IVec>)>],
    fresh: Option<u64>,
) {
    for batch in batches {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            let k = match fresh {
                Some(n) if k.first() == Some(&b'V') => {
                    let mut renamed = k.to_vec();
                    renamed.extend_from_slice(&n.to_be_bytes());
                    sled::IVec::from(renamed)
                }
                _ => k.clone(),
            };
            match v {
                Some(v) => b.insert(k, v.clone()),
                None => b.remove(k),
            }
        }
        db.apply_batch(b).expect("raw batch");
    }
}

fn ivecs(batches: Vec<WriteBatch>) -> Vec<Vec<(sled::IVec, Option<sled::IVec>)>> {
    batches
        .into_iter()
        .map(|b| {
            b.into_iter()
                .map(|(k, v)| (sled::IVec::from(k), v.map(sled::IVec::from)))
                .collect()
        })
        .collect()
}

/// A store of `n` documents in collection `c`, flushed only when asked, and
/// raw sled holding the same keys and values.
fn populated(n: usize) -> (tempfile::TempDir, BenchStore, tempfile::TempDir, sled::Db) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = Recording {
        inner: SledBackend::open(dir.path(), None).expect("open sled"),
        recording: AtomicBool::new(true),
        batches: Mutex::new(Vec::new()),
    };
    let store = Store::with_backend(
        backend,
        Identity::from_secret_bytes(&[1; 32]),
        StoreConfig::default().with_flush(FlushPolicy::Manual),
    )
    .expect("open the store");
    let mut i = 0;
    while i < n {
        let ops = (i..(i + BATCH).min(n))
            .map(|i| set_op(i, fields(i)))
            .collect();
        store.batch(ops).expect("populate");
        i += BATCH;
    }
    store.backend().recording.store(false, Ordering::Relaxed);
    let (raw_dir, db) = raw_sled();
    replay(&db, &ivecs(store.backend().take()));
    (dir, store, raw_dir, db)
}

/// Records the batches of two calls of `write` (given -1, then -2; each
/// stores new bytes at least under its state and Merkle keys), then returns
/// the seconds per replay of the two alternately on `db` (which holds what the
/// store holds), each version key renamed to a new key: every replay changes
/// what it writes, as the store's writes do. (Replaying one recording again
/// would set every key to the bytes it holds, which sled skips.)
fn replay_seconds(
    store: &BenchStore,
    db: &sled::Db,
    budget: Duration,
    rounds: u32,
    mut write: impl FnMut(i64),
) -> f64 {
    store.backend().recording.store(true, Ordering::Relaxed);
    write(-1);
    let first = ivecs(store.backend().take());
    write(-2);
    let second = ivecs(store.backend().take());
    store.backend().recording.store(false, Ordering::Relaxed);
    replay(db, &first);
    replay(db, &second);
    let mut n = 0_u64;
    seconds_per_call(budget, rounds, || {
        n += 1;
        let batches = if n.is_multiple_of(2) { &second } else { &first };
        replay_renaming_versions(db, batches, Some(n));
    })
}

/// Raw sled with its background flush off.
fn raw_sled() -> (tempfile::TempDir, sled::Db) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .expect("open sled");
    (dir, db)
}

/// The stored bytes of the Merkle index nodes from the root to the bucket
/// holding `id`: what a write of `id` re-hashes.
fn merkle_path(store: &BenchStore, collection: &str, id: &str) -> Vec<Vec<u8>> {
    let key_hash: [u8; 32] = Sha256::digest(id.as_bytes()).into();
    let mut path = Vec::new();
    let mut out = Vec::new();
    while let Some(node) = store.merkle_node(collection, &path).expect("merkle node") {
        out.push(ecomesh_wire::to_dag_cbor(&node.to_value()).expect("encode a node"));
        match node {
            Node::Bucket(_) => break,
            Node::Branch(_) => {
                let byte = key_hash[path.len() / 2];
                path.push(if path.len() % 2 == 0 {
                    byte >> 4
                } else {
                    byte & 0x0F
                });
            }
        }
    }
    out
}

/// Seconds of the floor of one write of document `i`: one signature over its
/// version's signing bytes, SHA-256 of its Merkle path, a raw sled insert of
/// its document bytes.
struct Floor {
    sign: f64,
    hash_path: f64,
    sled_insert: f64,
}

impl Floor {
    fn total(&self) -> f64 {
        self.sign + self.hash_path + self.sled_insert
    }
}

fn measure_floor(store: &BenchStore, n: usize, budget: Duration, rounds: u32) -> Floor {
    let identity = Identity::from_secret_bytes(&[1; 32]);
    // A real version node of the benchmark document, as the store writes it.
    let probe = doc_id(n / 2);
    let written = store
        .write_local(LocalWrite::Set {
            collection: "c".into(),
            id: probe.clone(),
            fields: fields(n / 2),
            options: SetOptions::REPLACE,
        })
        .expect("probe write");
    let node: VersionNode =
        ecomesh_wire::decode(&written[0].bytes).expect("the store's version decodes");
    let payload = node.signing_bytes().expect("signing bytes");
    let sign = seconds_per_call(budget, rounds, || {
        std::hint::black_box(
            identity
                .sign_with_domain(VERSION_SIGNATURE_DOMAIN, std::hint::black_box(&payload))
                .expect("sign"),
        );
    });
    let paths: Vec<Vec<Vec<u8>>> = (0..64)
        .map(|k| merkle_path(store, "c", &doc_id(k * STRIDE % n)))
        .collect();
    let mut k = 0;
    let hash_path = seconds_per_call(budget, rounds, || {
        k = (k + 1) % paths.len();
        for node in &paths[k] {
            std::hint::black_box(Sha256::digest(std::hint::black_box(node)));
        }
    });
    let (_dir, db) = raw_sled();
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| ecomesh_wire::to_dag_cbor(&Value::Map(fields(i))).expect("encode"))
        .collect();
    for (i, v) in values.iter().enumerate() {
        db.insert(doc_id(i), v.clone()).expect("insert");
    }
    let mut i = 0;
    let sled_insert = seconds_per_call(budget, rounds, || {
        i = (i + STRIDE) % n;
        db.insert(doc_id(i), values[i].clone()).expect("insert");
    });
    Floor {
        sign,
        hash_path,
        sled_insert,
    }
}

/// The rows of this area.
pub fn rows(options: &Options) -> Vec<Row> {
    let (n, budget, rounds) = if options.quick {
        (2_000, Duration::from_millis(300), 3)
    } else {
        (10_000, Duration::from_secs(3), 6)
    };
    let (_dir, store, _raw_dir, same) = populated(n);
    let floor = measure_floor(&store, n, budget, rounds);

    let mut i = 0;
    let set = seconds_per_call(budget, rounds, || {
        i = (i + STRIDE) % n;
        store
            .set("c", &doc_id(i), fields(i), SetOptions::REPLACE)
            .expect("set");
    });
    let update = seconds_per_call(budget, rounds, || {
        i = (i + STRIDE) % n;
        let mut change = Map::new();
        change.insert("amount".into(), Value::Integer(i as i64));
        store.update("c", &doc_id(i), change).expect("update");
    });
    let mut round = 0_usize;
    let batch = seconds_per_call(budget, rounds, || {
        round += 1;
        let ops = (0..BATCH)
            .map(|k| {
                let i = (round * BATCH + k) * STRIDE % n;
                let mut f = fields(i);
                f.insert("amount".into(), Value::Integer(round as i64));
                set_op(i, f)
            })
            .collect();
        store.batch(ops).expect("batch");
    });
    let batch_docs_per_s = BATCH as f64 / batch;

    // Raw sled writing exactly the keys and values each write stored.
    // The set row writes a document's own fields again: new state, version
    // and Merkle path, the same document record and index entries.
    let set_same = replay_seconds(&store, &same, budget, rounds, |_| {
        store
            .set("c", &doc_id(1), fields(1), SetOptions::REPLACE)
            .expect("set");
    });
    let batch_same = replay_seconds(&store, &same, budget, rounds, |amount| {
        let ops = (0..BATCH)
            .map(|k| {
                let i = k * STRIDE % n;
                let mut f = fields(i);
                f.insert("amount".into(), Value::Integer(amount));
                set_op(i, f)
            })
            .collect();
        store.batch(ops).expect("batch");
    });

    let (_raw_dir, db) = raw_sled();
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| ecomesh_wire::to_dag_cbor(&Value::Map(fields(i))).expect("encode"))
        .collect();
    let mut round = 0_usize;
    let raw_batch = seconds_per_call(budget, rounds, || {
        round += 1;
        let mut b = sled::Batch::default();
        for k in 0..BATCH {
            let i = (round * BATCH + k) * STRIDE % n;
            b.insert(doc_id(i).as_bytes(), values[i].clone());
        }
        db.apply_batch(b).expect("raw batch");
    });
    let raw_docs_per_s = BATCH as f64 / raw_batch;

    let us = 1e6;
    let floor_what = "floor: 1 Ed25519 signature + SHA-256 of the Merkle path + raw sled insert";
    let docs = format!("{n} docs");
    let share = |what: &str, v: f64| Row {
        goal: "3 store".into(),
        what: format!("floor part: {what}"),
        value: v * us,
        baseline: floor.total() * us,
        baseline_what: "the whole floor".into(),
        unit: "µs",
        target: Target::Info,
    };
    vec![
        Row {
            goal: "3 store".into(),
            what: format!("Store::set of a 4-field document, {docs}"),
            value: set * us,
            baseline: floor.total() * us,
            baseline_what: floor_what.into(),
            unit: "µs",
            target: Target::AtMost(2.0),
        },
        Row {
            goal: "3 store".into(),
            what: format!("Store::update of one field, {docs}"),
            value: update * us,
            baseline: floor.total() * us,
            baseline_what: floor_what.into(),
            unit: "µs",
            target: Target::AtMost(2.0),
        },
        share("Ed25519 signature of the version", floor.sign),
        share("SHA-256 of the Merkle path", floor.hash_path),
        share("raw sled insert of the document", floor.sled_insert),
        Row {
            goal: "3 store".into(),
            what: format!("Store::set of a 4-field document, {docs}"),
            value: set * us,
            baseline: set_same * us,
            baseline_what: "raw sled batch of exactly the keys and values the set stored".into(),
            unit: "µs",
            target: Target::Info,
        },
        Row {
            goal: "3 store".into(),
            what: format!("Store::batch of {BATCH} sets, {docs}"),
            value: batch_docs_per_s,
            baseline: BATCH_GOAL,
            baseline_what: "the goal".into(),
            unit: "docs/s",
            target: Target::AtLeast(1.0),
        },
        Row {
            goal: "3 store".into(),
            what: format!("Store::batch of {BATCH} sets, {docs}"),
            value: batch_docs_per_s,
            baseline: raw_docs_per_s,
            baseline_what: format!("raw sled batch of the {BATCH} documents' bytes"),
            unit: "docs/s",
            target: Target::Info,
        },
        Row {
            goal: "3 store".into(),
            what: format!("Store::batch of {BATCH} sets, {docs}"),
            value: batch_docs_per_s,
            baseline: BATCH as f64 / batch_same,
            baseline_what: "raw sled batch of exactly the keys and values the batch stored".into(),
            unit: "docs/s",
            target: Target::Info,
        },
    ]
}
