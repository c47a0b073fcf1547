//! Benches for `ecomesh-crdt`: HLC ticks, document (LWW map) update and merge on
//! 1k- and 100k-field documents, and OR-Set merge at 1k and 100k elements.
//!
//! Each group also measures a raw baseline on plain std collections of the same
//! size, so figures can be read as ratios: `doc_merge` against a `BTreeMap`
//! union of the same field names, `orset_merge` against a `BTreeSet` union.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use ecomesh_crdt::{DocumentCrdt, Hlc, Merge, OrSet};
use ecomesh_types::{HlcTimestamp, Map, PeerId, Value};

const SIZES: [usize; 2] = [1_000, 100_000];

fn peer(b: u8) -> PeerId {
    PeerId::from_digest([b; 32])
}

fn field_name(i: usize) -> String {
    format!("field{i:06}")
}

/// A document with `n` integer fields written by `writer` at physical time `ms`.
fn document(n: usize, writer: u8, ms: u64) -> DocumentCrdt {
    let fields: Map = (0..n)
        .map(|i| (field_name(i), Value::Integer(i as i64)))
        .collect();
    let mut doc = DocumentCrdt::new();
    doc.update(fields, HlcTimestamp::new(ms, 0, peer(writer)))
        .unwrap();
    doc
}

fn hlc(c: &mut Criterion) {
    let mut group = c.benchmark_group("hlc");
    group.bench_function("send", |b| {
        let mut clock = Hlc::new(peer(1));
        let mut now = 1_000_000_u64;
        b.iter(|| {
            now += 1;
            black_box(clock.send_at(black_box(now / 4)).unwrap())
        });
    });
    group.bench_function("receive", |b| {
        let mut clock = Hlc::new(peer(1));
        let mut now = 1_000_000_u64;
        b.iter(|| {
            now += 1;
            // The remote is alternately ahead of and level with local time.
            let remote = HlcTimestamp::new(now / 4 + now % 2, (now % 7) as u32, peer(2));
            black_box(clock.receive_at(black_box(&remote), now / 4).unwrap())
        });
    });
    group.finish();
}

fn doc_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("doc_update_10_fields");
    for n in SIZES {
        if n > 10_000 {
            group.sample_size(20);
        }
        let base = document(n, 1, 1_000);
        let partial: Map = (0..10)
            .map(|i| (field_name(i * (n / 10)), Value::from("updated")))
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut doc = base.clone();
            let mut clock = Hlc::new(peer(1));
            let mut now = 2_000_u64;
            b.iter(|| {
                now += 1;
                let ts = clock.send_at(now).unwrap();
                black_box(doc.update(partial.clone(), ts).unwrap())
            });
        });
    }
    group.finish();
}

fn doc_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("doc_merge");
    for n in SIZES {
        if n > 10_000 {
            group.sample_size(10);
        }
        // Replica B rewrote every field later, so every register changes on merge.
        let a = document(n, 1, 1_000);
        let b_state = document(n, 2, 2_000);
        group.bench_with_input(BenchmarkId::new("full_state", n), &n, |b, _| {
            b.iter_batched_ref(
                || a.clone(),
                |target| target.merge(black_box(&b_state)),
                BatchSize::PerIteration,
            );
        });
        let mut writer = b_state.clone();
        let delta = writer
            .update(
                Map::from([(field_name(n / 2), Value::from("x"))]),
                HlcTimestamp::new(3_000, 0, peer(2)),
            )
            .unwrap();
        group.bench_with_input(BenchmarkId::new("one_field_delta", n), &n, |b, _| {
            let mut target = a.clone();
            b.iter(|| target.merge(black_box(&delta)));
        });
        // Raw baseline: overwrite every entry of a BTreeMap<String, Value> of the same size.
        let raw_a: BTreeMap<String, Value> = a.materialize().unwrap();
        let raw_b: BTreeMap<String, Value> = b_state.materialize().unwrap();
        group.bench_with_input(BenchmarkId::new("raw_btreemap_union", n), &n, |b, _| {
            b.iter_batched_ref(
                || raw_a.clone(),
                |target| {
                    for (k, v) in black_box(&raw_b) {
                        match target.get_mut(k) {
                            Some(slot) => slot.clone_from(v),
                            None => {
                                target.insert(k.clone(), v.clone());
                            }
                        }
                    }
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// An OR-Set of `n` integers added by `writer`, with every tenth element removed
/// and, for half of them, the same elements also added by the other replica.
fn orset(n: usize, writer: u8, offset: usize) -> OrSet<u64> {
    let mut set = OrSet::new();
    for i in 0..n {
        let item = (i + offset) as u64;
        set.add(item, HlcTimestamp::new(1_000 + i as u64, 0, peer(writer)));
        if i % 10 == 0 {
            set.remove(&item);
        }
    }
    set
}

fn orset_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("orset_merge");
    for n in SIZES {
        if n > 10_000 {
            group.sample_size(10);
        }
        let a = orset(n, 1, 0);
        let b_state = orset(n, 2, n / 2);
        group.bench_with_input(BenchmarkId::new("orset", n), &n, |b, _| {
            b.iter_batched_ref(
                || a.clone(),
                |target| target.merge(black_box(&b_state)),
                BatchSize::PerIteration,
            );
        });
        let raw_a: BTreeSet<u64> = a.iter().copied().collect();
        let raw_b: BTreeSet<u64> = b_state.iter().copied().collect();
        group.bench_with_input(BenchmarkId::new("raw_btreeset_union", n), &n, |b, _| {
            b.iter_batched_ref(
                || raw_a.clone(),
                |target| target.extend(black_box(&raw_b).iter().copied()),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, hlc, doc_update, doc_merge, orset_merge);
criterion_main!(benches);
