//! Blob encoding and rebuild throughput: `rs-4-7` encode (hash the blob, cut,
//! Reed-Solomon parity, hash the 7 shards), rebuild from the 4 data shards
//! (verify + copy, no decoding), rebuild with 3 data shards lost (verify +
//! Reed-Solomon decode), `chunked` encode, beside raw blake3 over the same
//! bytes and the raw `reed-solomon-simd` parity computation in the same run.
//! Throughput is over the blob length.
//!
//! `cargo bench -p ecomesh-benches --bench blob`
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ecomesh_replication::blob::{BlobConfig, MIB, encode_blob, rebuild};

fn blob(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn bench_blob(c: &mut Criterion) {
    // Thresholds lowered so that 16 MiB is `rs-4-7` (the seed's default starts
    // above 100 MiB; the per-byte cost is the same).
    let rs = BlobConfig {
        none_max: 0,
        chunked_max: 0,
        chunk_size: MIB,
    };
    let chunked = BlobConfig {
        none_max: 0,
        chunked_max: u64::MAX,
        chunk_size: MIB,
    };
    let len = 16 * MIB as usize;
    let data = blob(len);
    let enc = encode_blob(&data, &rs).unwrap();
    let all: BTreeMap<usize, Vec<u8>> = enc.pieces.iter().cloned().enumerate().collect();
    let data_shards: BTreeMap<_, _> = all.range(..4).map(|(i, b)| (*i, b.clone())).collect();
    let lost_three: BTreeMap<_, _> = all.range(3..).map(|(i, b)| (*i, b.clone())).collect();

    let mut g = c.benchmark_group("blob/16MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("raw_blake3", |b| b.iter(|| blake3::hash(black_box(&data))));
    // The library alone: parity of the 4 data shards, no hashing or copying.
    g.bench_function("raw_rs_parity", |b| {
        b.iter(|| reed_solomon_simd::encode(4, 3, black_box(&enc.pieces[..4])).unwrap())
    });
    g.bench_function("rs_4_7_encode", |b| {
        b.iter(|| encode_blob(black_box(&data), &rs).unwrap())
    });
    g.bench_function("rs_4_7_rebuild_data_shards", |b| {
        b.iter(|| rebuild(&enc.manifest, black_box(&data_shards)).unwrap())
    });
    g.bench_function("rs_4_7_rebuild_3_lost", |b| {
        b.iter(|| rebuild(&enc.manifest, black_box(&lost_three)).unwrap())
    });
    g.bench_function("chunked_1MiB_encode", |b| {
        b.iter(|| encode_blob(black_box(&data), &chunked).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_blob);
criterion_main!(benches);
