//! Runs `Store::batch` of 1000 sets over a 10,000-document sled store, the
//! workload of the `store` batch row of `cargo xtask bench --compare`, and
//! prints documents per second, of wall time and of the writing thread's CPU
//! time (read from `/proc/thread-self/schedstat` on Linux; on a loaded machine
//! the CPU figure is the steadier one): a target for `perf record` of the
//! batch path.
//!
//! `cargo run --release -p ecomesh-p2p-storage --example batch_profile [ROUNDS]`

// The allocator of the node binary and the compare bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use ecomesh_identity::Identity;
use ecomesh_p2p_storage::{FlushPolicy, SledStore, StoreConfig};
use ecomesh_types::{BatchOperation, Map, Value};

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

fn set_op(i: usize, fields: Map) -> BatchOperation {
    BatchOperation::Set {
        collection: "c".into(),
        id: format!("doc{i:07}"),
        fields,
        merge: false,
    }
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
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SledStore::open(
        dir.path(),
        Identity::from_secret_bytes(&[1; 32]),
        StoreConfig::default().with_flush(FlushPolicy::Manual),
    )
    .expect("open the store");
    for start in (0..N).step_by(BATCH) {
        let ops = (start..start + BATCH)
            .map(|i| set_op(i, fields(i)))
            .collect();
        store.batch(ops).expect("populate");
    }
    let mut best = f64::MAX;
    let mut total = 0.0;
    let mut cpu_ns = 0;
    for round in 1..=rounds {
        let ops: Vec<_> = (0..BATCH)
            .map(|k| {
                let i = (round * BATCH + k) * STRIDE % N;
                let mut f = fields(i);
                f.insert("amount".into(), Value::Integer(round as i64));
                set_op(i, f)
            })
            .collect();
        let t = Instant::now();
        let c = thread_cpu_ns();
        store.batch(ops).expect("batch");
        cpu_ns += thread_cpu_ns() - c;
        let s = t.elapsed().as_secs_f64();
        best = best.min(s);
        total += s;
    }
    println!(
        "batch of {BATCH} sets, {N} docs, {rounds} rounds: mean {:.0} docs/s, best {:.0} docs/s, \
         {:.0} docs per CPU second of the writing thread",
        (rounds * BATCH) as f64 / total,
        BATCH as f64 / best,
        (rounds * BATCH) as f64 / (cpu_ns as f64 / 1e9)
    );
}
