//! The shared conformance suite (`ecomesh-transport-tests`) against the wired transport,
//! on loopback with OS-assigned ports, peers introduced by dialling each other's address
//! (mDNS discovery is bypassed).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_tests as suite;
use ecomesh_transport_wired::{LinkConfig, WiredConfig, WiredTransport};
use ecomesh_types::{BoxFuture, Error, PeerId, TransportAdapter};

struct Wired;

impl suite::TransportFactory for Wired {
    type Transport = WiredTransport;

    fn create(
        &self,
        identity: Identity,
        policy: AccessPolicy,
    ) -> BoxFuture<'_, Result<Arc<WiredTransport>, Error>> {
        Box::pin(async move {
            let config = WiredConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                link: LinkConfig {
                    handshake_timeout_ms: 3_000,
                    ..LinkConfig::default()
                },
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
                ..WiredConfig::default()
            };
            let t = WiredTransport::new(identity, policy, config);
            t.start().await?;
            eprintln!("wired transport {} on {:?}", t.peer_id(), t.local_addr());
            Ok(Arc::new(t))
        })
    }

    fn introduce<'a>(
        &'a self,
        from: &'a WiredTransport,
        to: &'a WiredTransport,
    ) -> BoxFuture<'a, Result<PeerId, Error>> {
        Box::pin(async move {
            let addr = to.local_addr().ok_or(Error::NotStarted)?;
            from.dial(addr).await
        })
    }

    fn raw_target(&self, transport: &WiredTransport) -> Option<SocketAddr> {
        transport.local_addr()
    }
}

suite::conformance_tests!(Wired);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_raw_input() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("hostile_raw_input seed {seed}");
    let ran = suite::hostile_raw_input(&Wired, seed)
        .await
        .unwrap_or_else(|e| panic!("hostile_raw_input (seed {seed}): {e}"));
    assert!(ran, "the wired transport has a raw target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_carry_the_authenticated_public_key() {
    use ecomesh_types::{PeerInfo, Value};
    use suite::TransportFactory;
    let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let kb = *ib.public_key();
    let a = Wired.create(ia, AccessPolicy::Open).await.unwrap();
    let b = Wired.create(ib, AccessPolicy::Open).await.unwrap();
    let pb = Wired.introduce(&a, &b).await.unwrap();
    let info = a
        .peers()
        .into_iter()
        .find(|i| i.peer_id == pb)
        .expect("dialled peer listed");
    assert_eq!(
        info.metadata.get(PeerInfo::PUBLIC_KEY),
        Some(&Value::Bytes(kb.to_bytes().to_vec()))
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Regression: `forget` on the address of a link that is up used to abort the task
/// running that link without unregistering it, leaving a peer that never got lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_address_keeps_its_link_until_it_drops_then_loses_the_peer() {
    use ecomesh_types::TransportEvent;
    use suite::TransportFactory;
    let a = Wired
        .create(Identity::generate().unwrap(), AccessPolicy::Open)
        .await
        .unwrap();
    let b = Wired
        .create(Identity::generate().unwrap(), AccessPolicy::Open)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = a.subscribe(Arc::new(move |e: &TransportEvent| {
        let _ = tx.send(e.clone());
    }));
    let pb = Wired.introduce(&a, &b).await.unwrap();
    a.forget(b.local_addr().unwrap());
    assert!(
        a.peers().iter().any(|p| p.peer_id == pb),
        "the link stays up after forget"
    );
    b.stop().await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = rx.recv().await {
            if e == TransportEvent::PeerLost(pb) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(lost, Ok(true), "the peer is lost when its link drops");
    assert!(a.peers().is_empty());
    a.stop().await.unwrap();
}
