//! The tokio driver on real time: heartbeats find the primary's return and
//! the queue replays without any call from the application.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ecomesh_hybrid_storage::{
    HealthConfig, HybridEvent, PrimaryHealth, Strategy, SyncMode, spawn_driver,
};
use ecomesh_types::{SetOptions, StorageAdapter};

use common::{Device, Fault, fields, primary};

fn wall_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Waits until `cond` holds, at most 10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_notices_the_outage_and_the_return_and_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let health = HealthConfig::default()
        .with_intervals(50, 200, 1_000)
        .with_request_timeout_ms(500);
    let h = Arc::new(dev.open_with(
        p.clone(),
        Strategy::LocalFirstWithPrimarySync,
        health,
        Arc::new(wall_ms),
    ));
    let driver = spawn_driver(h.clone());
    until("the first heartbeat", || {
        h.status(0).health == PrimaryHealth::Healthy
    })
    .await;

    p.set(Fault::Down);
    until("the outage", || h.status(0).mode == SyncMode::LocalOnly).await;
    for n in 0..20 {
        h.set(
            "c",
            &format!("d{n}"),
            fields(&[("n", n)]),
            SetOptions::REPLACE,
        )
        .await
        .unwrap();
    }
    assert_eq!(h.queued(), 20);

    p.set(Fault::Up);
    until("the replay", || h.queued() == 0).await;
    assert_eq!(p.store.count_documents("c").unwrap(), 20);
    assert_eq!(h.status(0).mode, SyncMode::Hybrid);
    let (events, _) = h.drain_events();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            HybridEvent::PrimaryUp { .. } => "up",
            HybridEvent::PrimaryDown { .. } => "down",
            HybridEvent::Replayed { .. } => "replayed",
            _ => "other",
        })
        .collect();
    // In this order (a spurious timeout on a loaded machine may add a
    // down/up pair, never reorder them): up, down, up, replayed.
    let mut want = ["up", "down", "up", "replayed"].into_iter().peekable();
    for k in &kinds {
        if want.peek() == Some(k) {
            want.next();
        }
    }
    assert!(want.peek().is_none(), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"replayed"), "{kinds:?}");
    drop(driver);
}
