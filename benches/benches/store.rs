//! Benches for `ecomesh-p2p-storage` (the sled store): set, get, update and an
//! indexed equality query at 10k and 100k documents, beside raw sled insert and
//! get of the same bytes in the same run, and an indexed query beside a full
//! scan of the same collection.
//!
//! The store is opened with `FlushPolicy::Manual` and raw sled with its
//! background flush off, so both sides measure the write path, not fsync.
//! Ratios to read: `store/set` vs `raw_sled/insert` (what versioning, signing,
//! indexes and the Merkle index cost per write), `store/batch_1000` (one
//! `Store::batch` of 1000 sets; throughput in documents) vs the same,
//! `store/get` vs `raw_sled/get`, and `query/indexed` vs `query/full_scan`.
//! The goal ratios against the write's floor are in the compare report
//! (`compare --only store`).

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ecomesh_identity::Identity;
use ecomesh_p2p_storage::{FlushPolicy, SledStore, StoreConfig};
use ecomesh_types::{BatchOperation, FilterOp, Map, Query, SetOptions, Value};

const SIZES: [usize; 2] = [10_000, 100_000];
/// Documents per value of the indexed `bucket` field: an equality query returns 10.
const PER_BUCKET: usize = 10;

fn fields(i: usize) -> Map {
    let mut m = Map::new();
    m.insert("name".into(), Value::Text(format!("member {i}")));
    m.insert("bucket".into(), Value::Integer((i / PER_BUCKET) as i64));
    m.insert("amount".into(), Value::Integer((i * 37 % 1000) as i64));
    m.insert("note".into(), Value::Text("x".repeat(64)));
    m
}

fn populated(n: usize) -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(
        dir.path(),
        Identity::from_secret_bytes(&[1; 32]),
        StoreConfig::default().with_flush(FlushPolicy::Manual),
    )
    .unwrap();
    for i in 0..n {
        store
            .set("c", &format!("doc{i:07}"), fields(i), SetOptions::REPLACE)
            .unwrap();
    }
    (dir, store)
}

fn raw_sled(n: usize) -> (tempfile::TempDir, sled::Db, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .unwrap();
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| ecomesh_wire::to_dag_cbor(&Value::Map(fields(i))).unwrap())
        .collect();
    for (i, v) in values.iter().enumerate() {
        db.insert(format!("doc{i:07}"), v.clone()).unwrap();
    }
    (dir, db, values)
}

fn store(c: &mut Criterion) {
    for n in SIZES {
        let mut group = c.benchmark_group(format!("docs_{n}"));
        group.sample_size(20);
        group.measurement_time(std::time::Duration::from_secs(4));

        let (_raw_dir, db, values) = raw_sled(n);
        let mut i = 0_usize;
        group.bench_function("raw_sled/insert", |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                db.insert(format!("doc{i:07}"), values[i].clone()).unwrap();
            })
        });
        group.bench_function("raw_sled/get", |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(db.get(format!("doc{i:07}")).unwrap());
            })
        });
        drop(db);

        let (_dir, store) = populated(n);
        group.bench_function("store/set", |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                store
                    .set("c", &format!("doc{i:07}"), fields(i), SetOptions::REPLACE)
                    .unwrap();
            })
        });
        let mut round = 0_i64;
        group.throughput(Throughput::Elements(1000));
        group.bench_function("store/batch_1000", |b| {
            b.iter(|| {
                round += 1;
                let ops = (0..1000)
                    .map(|k| {
                        i = (i + 7919) % n;
                        let mut f = fields(i);
                        f.insert("amount".into(), Value::Integer(round + k));
                        BatchOperation::Set {
                            collection: "c".into(),
                            id: format!("doc{i:07}"),
                            fields: f,
                            merge: false,
                        }
                    })
                    .collect();
                store.batch(ops).unwrap();
            })
        });
        group.throughput(Throughput::Elements(1));
        group.bench_function("store/get", |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(store.get("c", &format!("doc{i:07}")).unwrap());
            })
        });
        group.bench_function("store/update", |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                let mut change = Map::new();
                change.insert("amount".into(), Value::Integer(i as i64));
                store.update("c", &format!("doc{i:07}"), change).unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("query", "indexed"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                let q = Query::new().filter("bucket", FilterOp::Eq, (i / PER_BUCKET) as i64);
                let page = store.query("c", &q).unwrap();
                assert_eq!(page.documents.len(), PER_BUCKET);
            })
        });
        group.bench_function(BenchmarkId::new("query", "full_scan"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                let q = Query::new().filter("bucket", FilterOp::Eq, (i / PER_BUCKET) as i64);
                let all = store.scan_collection("c").unwrap();
                let page = q.execute(&all).unwrap();
                assert_eq!(page.documents.len(), PER_BUCKET);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, store);
criterion_main!(benches);
