//! Runs single-document `Store::set` (and `Store::update`) over a
//! 10,000-document sled store, the workload of the `store` single-write rows of
//! `cargo xtask bench --compare`, and prints microseconds per write, of wall
//! time and of the writing thread's CPU time (read from
//! `/proc/thread-self/schedstat` on Linux): a target for `perf record` of the
//! single-write path.
//!
//! `cargo run --release -p ecomesh-p2p-storage --example write_profile [WRITES]`

// The allocator of the node binary and the compare bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use ecomesh_identity::Identity;
use ecomesh_p2p_storage::{FlushPolicy, SledStore, StoreConfig};
use ecomesh_types::{BatchOperation, Map, SetOptions, Value};

const N: usize = 10_000;
const BATCH: usize = 1000;
const STRIDE: usize = 7919;

fn fields(i: usize) -> Map {
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

/// Nanoseconds this thread has run on a CPU (0 where Linux's schedstat is missing).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[allow(clippy::print_stdout)] // An example prints its measurement.
fn main() {
    let writes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SledStore::open(
        dir.path(),
        Identity::from_secret_bytes(&[1; 32]),
        StoreConfig::default().with_flush(FlushPolicy::Manual),
    )
    .expect("open the store");
    for start in (0..N).step_by(BATCH) {
        let ops = (start..start + BATCH)
            .map(|i| BatchOperation::Set {
                collection: "c".into(),
                id: doc_id(i),
                fields: fields(i),
                merge: false,
            })
            .collect();
        store.batch(ops).expect("populate");
    }
    let mut i = 0;
    let t = Instant::now();
    let c = thread_cpu_ns();
    for _ in 0..writes {
        i = (i + STRIDE) % N;
        store
            .set("c", &doc_id(i), fields(i), SetOptions::REPLACE)
            .expect("set");
    }
    let set_cpu = thread_cpu_ns() - c;
    let set_wall = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let c = thread_cpu_ns();
    for _ in 0..writes {
        i = (i + STRIDE) % N;
        let mut change = Map::new();
        change.insert("amount".into(), Value::Integer(i as i64));
        store.update("c", &doc_id(i), change).expect("update");
    }
    let update_cpu = thread_cpu_ns() - c;
    let update_wall = t.elapsed().as_secs_f64();
    let w = writes as f64;
    println!(
        "{writes} writes over {N} docs: set {:.1} µs wall, {:.1} µs CPU; update {:.1} µs wall, {:.1} µs CPU",
        set_wall / w * 1e6,
        set_cpu as f64 / w / 1e3,
        update_wall / w * 1e6,
        update_cpu as f64 / w / 1e3,
    );
}
