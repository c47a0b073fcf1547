//! The shared conformance suite (`ecomesh-transport-tests`) against the LoRa transport on
//! simulated Meshtastic radios (pseudo-terminals, the real serial code). A transport is
//! "introduced" to another by linking their radios in the simulated channel (moving into
//! range) and connecting. The sim runs without collisions here: the suite requires
//! in-order delivery of a 50-message burst, which LoRa does not promise under loss (see
//! the crate docs); collisions are exercised in `tests/sim.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_lora::LoraTransport;
use ecomesh_transport_lora::sim::{SimChannel, SimConfig, SimRadio};
use ecomesh_transport_tests as suite;
use ecomesh_types::{BoxFuture, Error, PeerId, TransportAdapter};

struct Lora {
    chan: SimChannel,
    radios: Mutex<HashMap<PeerId, SimRadio>>,
}

impl Lora {
    fn new() -> Self {
        Lora {
            chan: SimChannel::new(SimConfig {
                collisions: false,
                ..SimConfig::default()
            }),
            radios: Mutex::new(HashMap::new()),
        }
    }

    fn node(&self, p: PeerId) -> Option<u32> {
        self.radios.lock().unwrap().get(&p).map(|r| r.node)
    }
}

impl suite::TransportFactory for Lora {
    type Transport = LoraTransport;

    fn create(
        &self,
        identity: Identity,
        policy: AccessPolicy,
    ) -> BoxFuture<'_, Result<Arc<LoraTransport>, Error>> {
        Box::pin(async move {
            let (t, radio) =
                common::transport_on(&self.chan, identity, policy, common::fast_engine()).await?;
            self.radios.lock().unwrap().insert(t.peer_id(), radio);
            Ok(Arc::new(t))
        })
    }

    fn introduce<'a>(
        &'a self,
        from: &'a LoraTransport,
        to: &'a LoraTransport,
    ) -> BoxFuture<'a, Result<PeerId, Error>> {
        Box::pin(async move {
            let (a, b) = (from.peer_id(), to.peer_id());
            let (na, nb) = (
                self.node(a).ok_or(Error::NotStarted)?,
                self.node(b).ok_or(Error::NotStarted)?,
            );
            self.chan.link(na, nb, 0.0);
            from.connect_to_peer(b).await?;
            Ok(b)
        })
    }

    fn raw_target(&self, _transport: &LoraTransport) -> Option<SocketAddr> {
        None
    }
}

suite::conformance_tests!(Lora::new());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_raw_input_has_no_socket_target() {
    // The serial line is the only entry point; `tests/sim.rs` feeds it hostile bytes.
    let ran = suite::hostile_raw_input(&Lora::new(), 1).await.unwrap();
    assert!(!ran);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_carry_the_authenticated_public_key() {
    use ecomesh_types::{PeerInfo, Value};
    use suite::TransportFactory;
    let f = Lora::new();
    let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let kb = *ib.public_key();
    let a = f.create(ia, AccessPolicy::Open).await.unwrap();
    let b = f.create(ib, AccessPolicy::Open).await.unwrap();
    let pb = f.introduce(&a, &b).await.unwrap();
    let info = a
        .peers()
        .into_iter()
        .find(|i| i.peer_id == pb)
        .expect("peer listed");
    assert_eq!(
        info.metadata.get(PeerInfo::PUBLIC_KEY),
        Some(&Value::Bytes(kb.to_bytes().to_vec()))
    );
    assert_eq!(a.capabilities().max_message_size, 1536);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
