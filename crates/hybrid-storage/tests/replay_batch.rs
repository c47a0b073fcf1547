//! A long outage: more queued writes than one batch carries. They replay in
//! batches of at most `MAX_BATCH`, all of them, once, and the test prints the
//! time from the primary's return to an empty queue (the figure:
//! `cargo test --release -p ecomesh-hybrid-storage --test replay_batch -- --nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use ecomesh_hybrid_storage::{MAX_BATCH, PrimaryHealth, Strategy};
use ecomesh_types::{SetOptions, StorageAdapter};

use common::{Device, Fault, fields, primary};

#[tokio::test]
async fn a_thousand_and_one_queued_writes_replay_in_two_bounded_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
    p.set(Fault::Down);
    assert_eq!(h.heartbeat().await, PrimaryHealth::Down);
    let n = MAX_BATCH + 1;
    // The baseline, measured in the same run: the same writes made locally
    // (and queued) while the primary is away.
    let writing = std::time::Instant::now();
    for i in 0..n {
        h.set(
            "ledger",
            &format!("e{i:05}"),
            fields(&[("amount", i as i64)]),
            SetOptions::REPLACE,
        )
        .await
        .unwrap();
    }
    let write_time = writing.elapsed();
    assert_eq!(h.queued(), n);

    p.set(Fault::Up);
    let started = std::time::Instant::now();
    let report = h.replay().await.unwrap();
    let elapsed = started.elapsed();
    println!(
        "replayed {n} queued writes in {} requests: {:.1} ms from the primary's return to an empty queue; \
         writing them locally took {:.1} ms (ratio {:.2})",
        report.requests,
        elapsed.as_secs_f64() * 1e3,
        write_time.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() / write_time.as_secs_f64()
    );
    assert_eq!((report.applied, report.requests), (n, 2));
    assert_eq!(h.queued(), 0);
    assert_eq!(p.store.count_documents("ledger").unwrap(), n);
    let again = h.replay().await.unwrap();
    assert_eq!(again.applied + again.already_present, 0);
}
