//! DAG-CBOR encode/decode throughput and CIDs per second on ~1 KB and ~64 KB
//! documents, beside raw sha2-256 and blake3 over the same bytes.
//!
//! `cargo bench -p ecomesh-benches --bench wire`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ecomesh_types::{Map, Value};
use ecomesh_wire::{HashAlg, cid_of_with, from_dag_cbor, to_dag_cbor};
use sha2::Digest as _;

/// A document of mixed fields, grown until its DAG-CBOR form reaches `target` bytes.
fn document(target: usize) -> Value {
    let mut fields = Map::new();
    let mut i = 0_i64;
    loop {
        let mut entry = Map::new();
        entry.insert("name".into(), Value::Text(format!("member number {i}")));
        entry.insert("joined".into(), Value::Integer(1_700_000_000_000 + i));
        entry.insert("score".into(), Value::Float(i as f64 / 7.0));
        entry.insert("active".into(), Value::Bool(i % 3 != 0));
        entry.insert("key".into(), Value::Bytes(vec![(i % 251) as u8; 16]));
        entry.insert(
            "tags".into(),
            Value::Array(vec![Value::from("a"), Value::from("bb"), Value::Integer(i)]),
        );
        fields.insert(format!("m{i:05}"), Value::Map(entry));
        i += 1;
        let doc = Value::Map(fields.clone());
        if to_dag_cbor(&doc).unwrap().len() >= target {
            return doc;
        }
    }
}

fn bench_wire(c: &mut Criterion) {
    for (label, target) in [("1KB", 1024), ("64KB", 64 * 1024)] {
        let doc = document(target);
        let bytes = to_dag_cbor(&doc).unwrap();
        let mut g = c.benchmark_group(format!("wire/{label}"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function("dag_cbor_encode", |b| {
            b.iter(|| to_dag_cbor(black_box(&doc)).unwrap())
        });
        g.bench_function("dag_cbor_decode", |b| {
            b.iter(|| from_dag_cbor(black_box(&bytes)).unwrap())
        });
        g.bench_function("cid_sha2_256", |b| {
            b.iter(|| cid_of_with(black_box(&doc), HashAlg::Sha2_256).unwrap())
        });
        g.bench_function("cid_blake3", |b| {
            b.iter(|| cid_of_with(black_box(&doc), HashAlg::Blake3).unwrap())
        });
        g.bench_function("raw_sha2_256", |b| {
            b.iter(|| sha2::Sha256::digest(black_box(&bytes)))
        });
        g.bench_function("raw_blake3", |b| b.iter(|| blake3::hash(black_box(&bytes))));
        g.finish();
    }
}

criterion_group!(benches, bench_wire);
criterion_main!(benches);
