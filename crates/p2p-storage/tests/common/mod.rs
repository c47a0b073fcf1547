//! Helpers shared by the store's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use ecomesh_crdt::ManualClock;
use ecomesh_identity::Identity;
use ecomesh_p2p_storage::{MemoryStore, SledStore, StoreConfig};
use ecomesh_types::{Map, Value};

/// Runs a store future; the store's futures complete on their first poll.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("store future was not ready on first poll"),
    }
}

pub fn identity(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32])
}

pub fn config(clock: &Arc<ManualClock>) -> StoreConfig {
    StoreConfig::default().with_clock(clock.clone())
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

pub fn memory(n: u8) -> MemoryStore {
    MemoryStore::in_memory(identity(n), config(&clock())).unwrap()
}

pub fn sled(dir: &std::path::Path, n: u8) -> SledStore {
    SledStore::open(dir, identity(n), config(&clock())).unwrap()
}

pub fn fields(pairs: &[(&str, Value)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Waits (bounded) until `cond` holds, polling; panics with `what` on timeout.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
