//! The shared conformance suite (`ecomesh-transport-tests`) against the internet
//! transport, on loopback with OS-assigned ports, peers introduced by dialling each
//! other's TCP address (`/ip4/127.0.0.1/tcp/<port>/p2p/<id>`).
//!
//! `connect_both_ways` runs with the DHT off: it checks that two peers which never dialled
//! each other stay apart, which Kademlia's bootstrap would (rightly) undo by connecting
//! peers it learns about. Every other check runs with the DHT on.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_internet::InternetTransport;
use ecomesh_transport_tests as suite;
use ecomesh_types::{BoxFuture, Error, PeerId, TransportAdapter};

struct Internet {
    dht: bool,
}

impl suite::TransportFactory for Internet {
    type Transport = InternetTransport;

    fn create(
        &self,
        identity: Identity,
        policy: AccessPolicy,
    ) -> BoxFuture<'_, Result<Arc<InternetTransport>, Error>> {
        Box::pin(async move {
            let t = InternetTransport::new(
                &common::seed_of(&identity),
                policy,
                common::loopback_config(self.dht),
            )
            .map_err(Error::from)?;
            t.start().await?;
            eprintln!(
                "internet transport {} on {:?}",
                t.peer_id(),
                t.listen_addrs()
            );
            Ok(Arc::new(t))
        })
    }

    fn introduce<'a>(
        &'a self,
        from: &'a InternetTransport,
        to: &'a InternetTransport,
    ) -> BoxFuture<'a, Result<PeerId, Error>> {
        Box::pin(async move {
            let addr = to
                .dial_addr(|a| {
                    a.iter()
                        .any(|p| matches!(p, common::libp2p_protocol::Tcp(_)))
                })
                .ok_or(Error::NotStarted)?;
            from.dial(addr).await.map_err(Error::from)
        })
    }

    fn raw_target(&self, transport: &InternetTransport) -> Option<SocketAddr> {
        transport.tcp_addr()
    }
}

// Kademlia's bootstrap would connect the two peers `connect_both_ways` keeps
// apart, so that check runs without the DHT; every other check runs with it.
suite::conformance_tests!({ common::trace(); Internet { dht: false } }; connect_both_ways);
suite::conformance_tests!(
    { common::trace(); Internet { dht: true } };
    send_and_receive,
    broadcast,
    max_size_frame,
    oversize_refused,
    peer_lost_and_reconnected,
    disconnect_and_reconnect,
    unauthenticated_refused,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_raw_input() {
    common::trace();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("hostile_raw_input seed {seed}");
    let ran = suite::hostile_raw_input(&Internet { dht: true }, seed)
        .await
        .unwrap_or_else(|e| panic!("hostile_raw_input (seed {seed}): {e}"));
    assert!(ran, "the internet transport has a raw TCP target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_carry_the_authenticated_public_key() {
    use ecomesh_types::{PeerInfo, Value};
    use suite::TransportFactory;
    let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let kb = *ib.public_key();
    let f = Internet { dht: true };
    let a = f.create(ia, AccessPolicy::Open).await.unwrap();
    let b = f.create(ib, AccessPolicy::Open).await.unwrap();
    let pb = f.introduce(&a, &b).await.unwrap();
    let info = a
        .peers()
        .into_iter()
        .find(|i| i.peer_id == pb)
        .expect("dialled peer listed");
    assert_eq!(
        info.metadata.get(PeerInfo::PUBLIC_KEY),
        Some(&Value::Bytes(kb.to_bytes().to_vec()))
    );
    assert_eq!(ecomesh_identity::peer_id_of(&kb.to_bytes()), pb);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
