//! Anti-entropy figures (issue 6): bytes exchanged and round trips when two
//! stores of n documents differ in d documents, beside the floor and beside a
//! naive full-id exchange. These are counts, not times, so this bench prints a
//! table instead of running criterion.
//!
//! - Stores: `MemoryStore`s; the first is filled with batched writes, the second
//!   is a copy of its backend opened under another identity, so both start equal.
//! - Differences: d documents updated, alternately on each side (half the new
//!   versions travel each way); *spread* picks them evenly over the ids,
//!   *clustered* picks d documents adjacent in `sha256(id)` order (one subtree).
//! - floor = d x 32 bytes + the bytes of the versions one side lacks.
//! - naive = one side lists all n (32-byte id hash, 32-byte heads digest)
//!   pairs, the other asks for d ids and both send the missing versions:
//!   n x 64 + d x 32 + version bytes (1.5 round trips, computed, not run).
//! - round trips: messages both ways / 2 (a final one-way push counts half).
//!
//! `RECONCILE_SIZES=10000,100000` picks the sizes (default 10k, 100k, 1M).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::time::Instant;

use ecomesh_identity::Identity;
use ecomesh_p2p_storage::kv::{Backend, MemoryBackend, WriteBatch};
use ecomesh_p2p_storage::{FlushPolicy, MemoryStore, Store, StoreConfig};
use ecomesh_replication::antientropy::{Config, Session, SessionStats};
use ecomesh_types::{BatchOperation, Map, PeerId, SetOptions, Value};
use sha2::{Digest, Sha256};

const DS: [usize; 3] = [1, 100, 1000];

fn doc_id(i: usize) -> String {
    format!("member-{i:08}")
}

fn fields(i: usize, tag: &str) -> Map {
    let mut m = Map::new();
    m.insert("name".into(), Value::Text(format!("member {i}")));
    m.insert("amount".into(), Value::Integer((i * 37 % 1000) as i64));
    m.insert("tag".into(), Value::Text(tag.into()));
    m
}

fn config() -> StoreConfig {
    StoreConfig::default().with_flush(FlushPolicy::Manual)
}

fn build(n: usize) -> MemoryStore {
    let store = MemoryStore::in_memory(Identity::from_secret_bytes(&[1; 32]), config()).unwrap();
    let mut i = 0;
    while i < n {
        let end = (i + 2000).min(n);
        let ops = (i..end)
            .map(|j| BatchOperation::Set {
                collection: "members".into(),
                id: doc_id(j),
                fields: fields(j, "base"),
                merge: false,
            })
            .collect();
        store.batch(ops).unwrap();
        i = end;
    }
    store
}

fn copy(store: &MemoryStore, seed: u8) -> MemoryStore {
    let backend = MemoryBackend::new();
    let mut batch = WriteBatch::new();
    for item in store.backend().scan(&[], None) {
        let (k, v) = item.unwrap();
        batch.insert(k, Some(v));
    }
    backend.apply(batch).unwrap();
    Store::with_backend(backend, Identity::from_secret_bytes(&[seed; 32]), config()).unwrap()
}

/// Runs one session (a initiates) to the end; returns a's stats and how many passes.
fn reconcile(a: &MemoryStore, b: &MemoryStore) -> SessionStats {
    let mut sa = Session::new(a, PeerId::from_digest([2; 32]), Config::default());
    let mut sb = Session::new(b, PeerId::from_digest([1; 32]), Config::default());
    let mut to_b = sa.start().unwrap();
    while !to_b.is_empty() {
        let mut to_a = Vec::new();
        for f in to_b.drain(..) {
            to_a.extend(sb.handle(&f).unwrap().frames);
        }
        for f in to_a {
            to_b.extend(sa.handle(&f).unwrap().frames);
        }
    }
    assert!(sa.is_done() && sb.is_done());
    sa.stats().clone()
}

fn main() {
    let sizes: Vec<usize> = std::env::var("RECONCILE_SIZES")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    println!(
        "| n | d | pattern | bytes | round trips | passes | floor | bytes/floor | naive | naive/bytes | session ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let t = Instant::now();
        let a = build(n);
        let b = copy(&a, 2);
        eprintln!("built two stores of {n} documents in {:.1?}", t.elapsed());
        // Ids in sha256 order, for clustered picks.
        let mut by_hash: Vec<usize> = (0..n).collect();
        by_hash.sort_by_cached_key(|i| <[u8; 32]>::from(Sha256::digest(doc_id(*i).as_bytes())));
        let mut round = 0;
        for pattern in ["spread", "clustered"] {
            for d in DS {
                if d > n {
                    continue;
                }
                round += 1;
                let picks: Vec<usize> = match pattern {
                    "spread" => (0..d).map(|k| (k * (n / d) + round) % n).collect(),
                    _ => {
                        let start = (round * 7919) % (n - d + 1);
                        by_hash[start..start + d].to_vec()
                    }
                };
                let mut missing_bytes = 0_u64;
                for (k, i) in picks.iter().enumerate() {
                    let side = if k % 2 == 0 { &a } else { &b };
                    let w = side
                        .set(
                            "members",
                            &doc_id(*i),
                            fields(*i, &format!("edit {round}")),
                            SetOptions::MERGE,
                        )
                        .unwrap();
                    let cid = w.version.unwrap();
                    missing_bytes += side.version_bytes(&cid).unwrap().unwrap().len() as u64;
                }
                let t = Instant::now();
                let stats = reconcile(&a, &b);
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(a.root_cid().unwrap(), b.root_cid().unwrap());
                assert_eq!(stats.versions_applied + stats.versions_sent, d as u64);
                let bytes = stats.bytes_total();
                let floor = d as u64 * 32 + missing_bytes;
                let naive = n as u64 * 64 + d as u64 * 32 + missing_bytes;
                println!(
                    "| {n} | {d} | {pattern} | {bytes} | {} | {} | {floor} | {:.2} | {naive} | {:.0} | {ms:.0} |",
                    stats.round_trips(),
                    stats.passes,
                    bytes as f64 / floor as f64,
                    naive as f64 / bytes as f64,
                );
            }
        }
    }
}
