//! Each strategy's promise and its limit, against a real store as primary
//! that the tests take down, slow down or partition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use ecomesh_hybrid_storage::{
    HybridEvent, PrimaryHealth, PrimaryStore, ReadSource, Strategy, SyncMode,
};
use ecomesh_types::{SetOptions, StorageAdapter, Value};

use common::{Device, Fault, fields, history, primary};

fn int(doc: &Option<ecomesh_types::Document>, field: &str) -> Option<i64> {
    doc.as_ref()?.fields.get(field)?.as_i64()
}

#[tokio::test]
async fn fallback_reads_the_primary_while_healthy_and_local_copies_when_it_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);

    // A write another device made on the primary: only the primary has it.
    StorageAdapter::set(
        &*p.store,
        "notes",
        "theirs",
        fields(&[("v", 7)]),
        SetOptions::REPLACE,
    )
    .await
    .unwrap();
    // The device's own write reaches the primary before `set` returns.
    h.set("notes", "mine", fields(&[("v", 1)]), SetOptions::REPLACE)
        .await
        .unwrap();
    assert_eq!(h.queued(), 0);
    assert_eq!(int(&p.store.get("notes", "mine").unwrap(), "v"), Some(1));

    let r = h.get_sourced("notes", "theirs").await.unwrap();
    assert_eq!(r.source, ReadSource::Primary);
    assert_eq!(int(&r.value, "v"), Some(7));
    assert_eq!(h.status(0).mode, SyncMode::Hybrid);

    // Down: reads come from the local copy, which lacks the primary-only
    // document (the strategy's limit), and still has the device's own.
    p.set(Fault::Down);
    let r = h.get_sourced("notes", "theirs").await.unwrap();
    assert_eq!(r.source, ReadSource::Local);
    assert_eq!(r.value, None);
    let r = h.get_sourced("notes", "mine").await.unwrap();
    assert_eq!((r.source, int(&r.value, "v")), (ReadSource::Local, Some(1)));
    assert_eq!(h.status(0).health, PrimaryHealth::Down);
    assert_eq!(h.status(0).mode, SyncMode::LocalOnly);
    assert_eq!(h.status(2).mode, SyncMode::P2POnly);
    let (events, _) = h.drain_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, HybridEvent::PrimaryDown { .. }))
    );
}

#[tokio::test]
async fn a_slow_primary_times_out_and_the_read_is_served_locally() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
    h.set("notes", "a", fields(&[("v", 1)]), SetOptions::REPLACE)
        .await
        .unwrap();
    p.set(Fault::Slow);
    let started = std::time::Instant::now();
    let r = h.get_sourced("notes", "a").await.unwrap();
    assert_eq!((r.source, int(&r.value, "v")), (ReadSource::Local, Some(1)));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(h.status(0).health, PrimaryHealth::Down);
    // A write while it is slow is queued, not lost; it is local at once.
    p.set(Fault::Down);
    h.set("notes", "b", fields(&[("v", 2)]), SetOptions::REPLACE)
        .await
        .unwrap();
    assert_eq!(h.queued(), 1);
    assert_eq!(p.store.get("notes", "b").unwrap(), None);
}

#[tokio::test]
async fn writes_during_an_outage_are_replayed_in_order_exactly_once_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
    h.set("c", "doc", fields(&[("n", 0)]), SetOptions::REPLACE)
        .await
        .unwrap();
    p.set(Fault::Down);
    assert_eq!(h.heartbeat().await, PrimaryHealth::Down);
    for n in 1..=5 {
        dev.clock.advance(10);
        h.set("c", "doc", fields(&[("n", n)]), SetOptions::MERGE)
            .await
            .unwrap();
        h.set(
            "c",
            &format!("d{n}"),
            fields(&[("n", n)]),
            SetOptions::REPLACE,
        )
        .await
        .unwrap();
    }
    h.delete("c", "d1").await.unwrap();
    assert_eq!(h.queued(), 11);
    assert_eq!(int(&p.store.get("c", "doc").unwrap(), "n"), Some(0));

    p.set(Fault::Up);
    dev.clock.advance(5_000);
    assert_eq!(h.heartbeat().await, PrimaryHealth::Healthy);
    assert_eq!(h.queued(), 0);
    assert_eq!(int(&p.store.get("c", "doc").unwrap(), "n"), Some(5));
    assert_eq!(p.store.get("c", "d1").unwrap(), None);
    assert_eq!(int(&p.store.get("c", "d5").unwrap(), "n"), Some(5));
    // The primary holds exactly the device's versions, each once, in order.
    let local = history(h.local().store(), "c", "doc");
    assert_eq!(history(&p.store, "c", "doc"), local);
    assert_eq!(local.len(), 6);
    // A second replay has nothing to send.
    let again = h.replay().await.unwrap();
    assert_eq!((again.applied, again.requests), (0, 0));
    let (events, _) = h.drain_events();
    let up = events
        .iter()
        .position(|e| matches!(e, HybridEvent::PrimaryUp { .. }));
    let replayed = events
        .iter()
        .position(|e| matches!(e, HybridEvent::Replayed { versions: 11, .. }));
    assert!(
        up.is_some() && replayed.is_some() && up < replayed,
        "{events:?}"
    );
}

#[tokio::test]
async fn the_queue_survives_a_crash_and_is_replayed_after_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    {
        let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
        p.set(Fault::Down);
        for n in 0..5 {
            h.set(
                "c",
                &format!("d{n}"),
                fields(&[("n", n)]),
                SetOptions::REPLACE,
            )
            .await
            .unwrap();
        }
        assert_eq!(h.queued(), 5);
    } // dropped without any shutdown: the crash
    p.set(Fault::Up);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
    assert_eq!(h.queued(), 5);
    let report = h.replay().await.unwrap();
    assert_eq!(report.applied, 5);
    for n in 0..5 {
        assert_eq!(
            int(&p.store.get("c", &format!("d{n}")).unwrap(), "n"),
            Some(n)
        );
    }
}

#[tokio::test]
async fn a_replay_whose_answer_was_lost_is_not_applied_twice_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    {
        let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
        p.set(Fault::Partitioned);
        h.set("c", "doc", fields(&[("n", 1)]), SetOptions::REPLACE)
            .await
            .unwrap();
    }
    // The primary merged the first write but the device never heard so.
    assert_eq!(int(&p.store.get("c", "doc").unwrap(), "n"), Some(1));
    p.set(Fault::Up);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
    assert_eq!(h.queued(), 1);
    let report = h.replay().await.unwrap();
    assert_eq!((report.applied, report.already_present), (0, 1));
    assert_eq!(history(&p.store, "c", "doc").len(), 1);
    assert_eq!(h.queued(), 0);
}

#[tokio::test]
async fn concurrent_writes_on_the_primary_merge_and_are_reported_as_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
    h.set(
        "c",
        "doc",
        fields(&[("a", 0), ("b", 0)]),
        SetOptions::REPLACE,
    )
    .await
    .unwrap();
    p.set(Fault::Down);
    h.heartbeat().await;
    h.update("c", "doc", fields(&[("a", 1)])).await.unwrap();
    // Meanwhile someone else changes another field on the primary.
    StorageAdapter::update(&*p.store, "c", "doc", fields(&[("b", 2)]))
        .await
        .unwrap();
    p.set(Fault::Up);
    h.drain_events();
    let report = h.replay().await.unwrap();
    assert_eq!(report.conflicts, 1);
    let doc = p.store.get("c", "doc").unwrap();
    assert_eq!((int(&doc, "a"), int(&doc, "b")), (Some(1), Some(2)));
    let (events, _) = h.drain_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, HybridEvent::Conflict { collection, id, .. }
            if collection == "c" && id == "doc")),
        "{events:?}"
    );
}

#[tokio::test]
async fn versions_from_peers_the_primary_lacks_are_sent_before_the_writes_on_them() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
    // A peer's store writes a document; the device merges it by replication.
    let peer = ecomesh_p2p_storage::MemoryStore::in_memory(
        common::identity(3),
        ecomesh_p2p_storage::StoreConfig::default(),
    )
    .unwrap();
    let mut cids = Vec::new();
    for n in 0..3 {
        let w = StorageAdapter::set(&peer, "c", "doc", fields(&[("n", n)]), SetOptions::MERGE)
            .await
            .unwrap();
        cids.push(w.version.unwrap());
    }
    for cid in &cids {
        h.local()
            .store()
            .apply_remote(&peer.version_bytes(cid).unwrap().unwrap())
            .unwrap();
    }
    h.update("c", "doc", fields(&[("mine", 1)])).await.unwrap();
    assert_eq!(h.queued(), 0);
    let doc = p.store.get("c", "doc").unwrap();
    assert_eq!((int(&doc, "n"), int(&doc, "mine")), (Some(2), Some(1)));
    assert_eq!(
        history(&p.store, "c", "doc"),
        history(h.local().store(), "c", "doc")
    );
}

#[tokio::test]
async fn local_first_never_waits_for_the_primary_and_syncs_on_the_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let h = dev.open(p.clone(), Strategy::LocalFirstWithPrimarySync);
    StorageAdapter::set(
        &*p.store,
        "c",
        "theirs",
        fields(&[("v", 1)]),
        SetOptions::REPLACE,
    )
    .await
    .unwrap();
    // Promise: served locally, even with a healthy primary...
    assert_eq!(h.heartbeat().await, PrimaryHealth::Healthy);
    h.tick().await; // first sync: nothing queued yet
    let r = h.get_sourced("c", "theirs").await.unwrap();
    // ...and limit: what reached only the primary is not seen.
    assert_eq!((r.source, r.value), (ReadSource::Local, None));
    // A slow primary does not slow writes down.
    p.set(Fault::Slow);
    let started = std::time::Instant::now();
    h.set("c", "mine", fields(&[("v", 2)]), SetOptions::REPLACE)
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(common::TIMEOUT_MS));
    p.set(Fault::Up);
    // Limit: the primary lags until the next sync...
    dev.clock.advance(29_000);
    h.tick().await;
    assert_eq!(p.store.get("c", "mine").unwrap(), None);
    assert_eq!(h.queued(), 1);
    // ...which comes with the 30 s interval.
    dev.clock.advance(1_000);
    h.tick().await;
    assert_eq!(int(&p.store.get("c", "mine").unwrap(), "v"), Some(2));
    assert_eq!(h.queued(), 0);
    assert_eq!(h.status(0).last_sync_ms, Some(common::START_MS + 30_000));
}

#[tokio::test]
async fn health_follows_the_fake_clock_heartbeats_and_staleness() {
    let tmp = tempfile::tempdir().unwrap();
    let p = primary();
    let dev = Device::new(tmp.path(), 1);
    let h = dev.open(p.clone(), Strategy::PrimaryWithOfflineFallback);
    assert_eq!(h.status(0).health, PrimaryHealth::Unknown);
    assert_eq!(h.tick().await, 5_000);
    assert_eq!(h.status(0).health, PrimaryHealth::Healthy);
    // No heartbeat for 60 s: stale, and reads go local.
    dev.clock.advance(60_001);
    assert_eq!(h.status(0).health, PrimaryHealth::Stale);
    h.set("c", "a", fields(&[("v", 1)]), SetOptions::REPLACE)
        .await
        .unwrap();
    assert_eq!(h.queued(), 1, "a stale primary gets no synchronous write");
    assert_eq!(
        h.get_sourced("c", "a").await.unwrap().source,
        ReadSource::Local
    );
    // The next tick's heartbeat finds it and replays.
    h.tick().await;
    assert_eq!(h.status(0).health, PrimaryHealth::Healthy);
    assert_eq!(h.queued(), 0);
    assert_eq!(
        h.get_sourced("c", "a").await.unwrap().source,
        ReadSource::Primary
    );
    let v = p.store.get("c", "a").unwrap().unwrap().fields["v"].clone();
    assert_eq!(v, Value::Integer(1));
}

#[tokio::test]
async fn a_primary_refuses_a_batch_beyond_the_limit() {
    let p = primary();
    let too_many = vec![Vec::new(); ecomesh_hybrid_storage::MAX_BATCH + 1];
    assert!(p.store.apply_versions(too_many).await.is_err());
    let _: Arc<dyn PrimaryStore> = p;
}
