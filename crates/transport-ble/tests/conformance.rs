//! The shared conformance suite (`ecomesh-transport-tests`) against the BLE transport on
//! simulated radios (`ecomesh_transport_ble::sim`). Every radio is created far from the
//! others (out of range); "introducing" one transport to another forces their pair into
//! range (as walking up to it would) and connects. Advertisements every 20 ms, no loss:
//! the suite requires an in-order burst, which the simulated link layer gives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_ble::engine::{DeviceAddr, EngineConfig};
use ecomesh_transport_ble::presence::PresenceKey;
use ecomesh_transport_ble::sim::{SimAir, SimCoc, SimConfig};
use ecomesh_transport_ble::{BleConfig, BleTransport};
use ecomesh_transport_tests as suite;
use ecomesh_types::{BoxFuture, Error, PeerId, TransportAdapter};

struct Ble {
    air: SimAir,
    radios: Mutex<Vec<(PeerId, DeviceAddr)>>,
    /// Every radio offers an L2CAP channel.
    coc: bool,
}

impl Ble {
    fn new() -> Self {
        Ble {
            coc: false,
            air: SimAir::new(SimConfig {
                adv_interval: std::time::Duration::from_millis(20),
                ..SimConfig::default()
            }),
            radios: Mutex::new(Vec::new()),
        }
    }

    fn addr_of(&self, p: PeerId) -> Option<DeviceAddr> {
        self.radios
            .lock()
            .unwrap()
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, a)| *a)
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        dial_grace_ms: 200,
        reconnect_base_ms: 50,
        reconnect_max_ms: 500,
        connect_timeout_ms: 4_000,
        ..EngineConfig::default()
    }
}

impl suite::TransportFactory for Ble {
    type Transport = BleTransport;

    fn create(
        &self,
        identity: Identity,
        policy: AccessPolicy,
    ) -> BoxFuture<'_, Result<Arc<BleTransport>, Error>> {
        Box::pin(async move {
            let n = self.radios.lock().unwrap().len();
            let addr = DeviceAddr([0xC0, 0, 0, 0, (n >> 8) as u8, n as u8]);
            // 1 km apart: nobody hears anybody until introduced.
            let radio = self
                .air
                .radio(addr, (1000.0 * n as f64, 0.0), 247, 7)
                .map_err(|e| e.into_transport_error())?;
            if self.coc {
                self.air
                    .offer_coc(addr, Some(SimCoc::default()))
                    .map_err(|e| e.into_transport_error())?;
            }
            let me = identity.peer_id();
            let mut cfg = BleConfig::new(PresenceKey::derive(me.as_bytes()));
            cfg.engine = config();
            let t = BleTransport::new(identity, policy, Arc::new(radio), cfg);
            t.start().await?;
            self.radios.lock().unwrap().push((me, addr));
            Ok(Arc::new(t))
        })
    }

    fn introduce<'a>(
        &'a self,
        from: &'a BleTransport,
        to: &'a BleTransport,
    ) -> BoxFuture<'a, Result<PeerId, Error>> {
        Box::pin(async move {
            let (a, b) = (from.peer_id(), to.peer_id());
            let (aa, ab) = (
                self.addr_of(a).ok_or(Error::NotStarted)?,
                self.addr_of(b).ok_or(Error::NotStarted)?,
            );
            self.air.set_link(aa, ab, Some(true));
            from.connect_to_peer(b).await?;
            Ok(b)
        })
    }

    fn raw_target(&self, _transport: &BleTransport) -> Option<SocketAddr> {
        None
    }
}

suite::conformance_tests!(Ble::new());

/// The suite again with every radio offering an L2CAP channel: every link runs over
/// one (checked after a run: no GATT value was carried).
mod coc {
    use super::*;

    fn ble() -> Ble {
        Ble {
            coc: true,
            ..Ble::new()
        }
    }

    suite::conformance_tests!(ble());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_run_over_the_channel() {
        use suite::TransportFactory;
        let f = ble();
        let a = f
            .create(Identity::generate().unwrap(), AccessPolicy::Open)
            .await
            .unwrap();
        let b = f
            .create(Identity::generate().unwrap(), AccessPolicy::Open)
            .await
            .unwrap();
        let pb = f.introduce(&a, &b).await.unwrap();
        suite::send_and_receive(&f).await.unwrap();
        assert!(matches!(
            a.link_channel(pb).await.unwrap(),
            Some(ecomesh_transport_ble::frag::Channel::Coc { .. })
        ));
        let s = f.air.stats();
        assert_eq!(s.gatt_values, 0, "{s:?}");
        assert!(s.coc_sdus > 0, "{s:?}");
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_raw_input_has_no_socket_target() {
    // Radio values are the only entry point; the framing, link and engine tests feed
    // them hostile bytes.
    let ran = suite::hostile_raw_input(&Ble::new(), 1).await.unwrap();
    assert!(!ran);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_carry_the_authenticated_key_and_bulk_is_refused() {
    use ecomesh_types::{PeerInfo, Priority, Value};
    use suite::TransportFactory;
    let f = Ble::new();
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
    let m = suite::test_message(a.peer_id(), Some(pb), vec![1; 10]);
    let e = a
        .send_with_priority(pb, m.clone(), Priority::Bulk)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Backend(inner) if inner.to_string().contains("bulk")),
        "{e:?}"
    );
    a.send_with_priority(pb, m, Priority::High).await.unwrap();
    assert_eq!(a.capabilities().max_message_size, 64 * 1024);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
