//! The primary's door: challenge, signature and an expiring token before
//! anything is merged; bounded batches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use ecomesh_hybrid_storage::{DeviceAuth, HybridError, MAX_BATCH, PrimaryGate, VersionApplied};
use ecomesh_identity::AccessPolicy;
use ecomesh_p2p_storage::{MemoryStore, StoreConfig};
use ecomesh_types::{SetOptions, StorageAdapter};

use common::{fields, identity};

const NOW: u64 = 1_700_000_000_000;

fn authenticate(gate: &mut PrimaryGate, n: u8, now: u64) -> Result<DeviceAuth, HybridError> {
    let (mut dev, hello) = DeviceAuth::start(identity(n), Arc::new(AccessPolicy::Open))?;
    let (session, challenge) = gate.challenge(&hello, now)?;
    let response = dev.on_challenge(&challenge)?;
    let grant = gate.verify(session, &response, now)?;
    assert_eq!(grant.device, identity(n).peer_id());
    dev.on_grant(&grant)?;
    Ok(dev)
}

async fn one_version(n: u8) -> Vec<u8> {
    let s = MemoryStore::in_memory(identity(n), StoreConfig::default()).unwrap();
    let w = StorageAdapter::set(&s, "c", "d", fields(&[("v", 1)]), SetOptions::REPLACE)
        .await
        .unwrap();
    s.version_bytes(&w.version.unwrap()).unwrap().unwrap()
}

#[tokio::test]
async fn an_authenticated_device_merges_a_batch_and_its_token_expires() {
    let primary = MemoryStore::in_memory(identity(200), StoreConfig::default()).unwrap();
    let mut gate = PrimaryGate::new(identity(200), Arc::new(AccessPolicy::Open))
        .unwrap()
        .with_token_ttl_ms(60_000);
    let dev = authenticate(&mut gate, 1, NOW).unwrap();
    let token = dev.token(NOW, 1_000).unwrap().to_owned();
    let v = one_version(1).await;
    let out = gate
        .apply(&primary, &token, std::slice::from_ref(&v), NOW + 10)
        .unwrap();
    assert_eq!(out, vec![VersionApplied::Applied { concurrent: false }]);
    assert!(primary.get("c", "d").unwrap().is_some());
    // The same version again is a no-op.
    let out = gate
        .apply(&primary, &token, std::slice::from_ref(&v), NOW + 20)
        .unwrap();
    assert_eq!(out, vec![VersionApplied::AlreadyPresent]);
    // After its lifetime the token is refused, and the device knows to renew it.
    assert!(dev.token(NOW + 59_500, 1_000).is_none());
    assert!(matches!(
        gate.apply(&primary, &token, &[v], NOW + 60_000),
        Err(HybridError::Unauthorized("expired token"))
    ));
}

#[tokio::test]
async fn nothing_is_merged_without_a_genuine_token() {
    let primary = MemoryStore::in_memory(identity(200), StoreConfig::default()).unwrap();
    let mut gate = PrimaryGate::new(identity(200), Arc::new(AccessPolicy::Open)).unwrap();
    let v = one_version(1).await;
    for bad in ["", "x", "a.b.c", &"9".repeat(10_000)] {
        assert!(matches!(
            gate.apply(&primary, bad, std::slice::from_ref(&v), NOW),
            Err(HybridError::Unauthorized(_))
        ));
    }
    // A token from another primary (another key) is forged here.
    let mut other = PrimaryGate::new(identity(201), Arc::new(AccessPolicy::Open)).unwrap();
    let dev = authenticate(&mut other, 1, NOW).unwrap();
    let foreign = dev.token(NOW, 0).unwrap();
    assert!(matches!(
        gate.apply(&primary, foreign, std::slice::from_ref(&v), NOW),
        Err(HybridError::Unauthorized("forged token"))
    ));
    // A token whose expiry was edited is forged too.
    let dev = authenticate(&mut gate, 1, NOW).unwrap();
    let t = dev.token(NOW, 0).unwrap();
    let mut parts: Vec<&str> = t.split('.').collect();
    let later = (NOW + 10 * 3_600_000).to_string();
    parts[1] = &later;
    assert!(matches!(
        gate.apply(&primary, &parts.join("."), &[v], NOW),
        Err(HybridError::Unauthorized("forged token"))
    ));
    assert!(primary.get("c", "d").unwrap().is_none());
}

#[tokio::test]
async fn refused_devices_get_no_challenge_and_bad_signatures_no_token() {
    let allowed = identity(1).peer_id();
    let mut gate =
        PrimaryGate::new(identity(200), Arc::new(AccessPolicy::allow_only([allowed]))).unwrap();
    assert!(authenticate(&mut gate, 2, NOW).is_err());
    // A Response to someone else's session fails.
    let (_, hello_a) = DeviceAuth::start(identity(1), Arc::new(AccessPolicy::Open)).unwrap();
    let (mut b, hello_b) = DeviceAuth::start(identity(1), Arc::new(AccessPolicy::Open)).unwrap();
    let (session_a, _) = gate.challenge(&hello_a, NOW).unwrap();
    let (_, challenge_b) = gate.challenge(&hello_b, NOW).unwrap();
    let response_b = b.on_challenge(&challenge_b).unwrap();
    assert!(gate.verify(session_a, &response_b, NOW).is_err());
    // A session is single-use and expires.
    assert!(gate.verify(session_a, &response_b, NOW).is_err());
    let (mut c, hello_c) = DeviceAuth::start(identity(1), Arc::new(AccessPolicy::Open)).unwrap();
    let (session_c, challenge_c) = gate.challenge(&hello_c, NOW).unwrap();
    let response_c = c.on_challenge(&challenge_c).unwrap();
    assert!(matches!(
        gate.verify(session_c, &response_c, NOW + 31_000),
        Err(HybridError::Unauthorized(_))
    ));
    assert!(authenticate(&mut gate, 1, NOW).is_ok());
}

#[tokio::test]
async fn a_batch_beyond_the_bound_is_refused_before_any_merge() {
    let primary = MemoryStore::in_memory(identity(200), StoreConfig::default()).unwrap();
    let mut gate = PrimaryGate::new(identity(200), Arc::new(AccessPolicy::Open)).unwrap();
    let dev = authenticate(&mut gate, 1, NOW).unwrap();
    let v = one_version(1).await;
    let batch = vec![v; MAX_BATCH + 1];
    assert!(matches!(
        gate.apply(&primary, dev.token(NOW, 0).unwrap(), &batch, NOW),
        Err(HybridError::BatchTooLarge {
            len: 1001,
            max: 1000
        })
    ));
    assert!(primary.get("c", "d").unwrap().is_none());
}

#[test]
fn pending_challenges_are_bounded() {
    let mut gate = PrimaryGate::new(identity(200), Arc::new(AccessPolicy::Open)).unwrap();
    for i in 0..(ecomesh_hybrid_storage::MAX_PENDING + 10) {
        let (_, hello) = DeviceAuth::start(identity(1), Arc::new(AccessPolicy::Open)).unwrap();
        gate.challenge(&hello, NOW + i as u64).unwrap();
    }
    assert!(
        format!("{gate:?}").contains(&format!("pending: {}", ecomesh_hybrid_storage::MAX_PENDING))
    );
}
