//! mDNS discovery on the loopback interface only: two nodes find each other and the
//! smaller peer id dials; dropping one's discovery withdraws it.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_wired::{MdnsDiscovery, WiredConfig, WiredTransport};
use ecomesh_types::{TransportAdapter, TransportEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_discover_each_other_on_loopback() {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mk = || {
        WiredTransport::new(
            Identity::generate().unwrap(),
            AccessPolicy::Open,
            WiredConfig {
                listen: SocketAddr::new(lo, 0),
                ..WiredConfig::default()
            },
        )
    };
    let (a, b) = (mk(), mk());
    a.start().await.unwrap();
    b.start().await.unwrap();
    eprintln!(
        "a {} on {:?}, b {} on {:?}",
        a.peer_id(),
        a.local_addr(),
        b.peer_id(),
        b.local_addr()
    );
    let events: Arc<Mutex<Vec<TransportEvent>>> = Arc::default();
    let e2 = events.clone();
    let _sub = a.subscribe(Arc::new(move |e: &TransportEvent| {
        e2.lock().unwrap().push(e.clone())
    }));
    let _da = MdnsDiscovery::start(a.clone(), Some(lo), vec!["notes".into()]).unwrap();
    let _db = MdnsDiscovery::start(b.clone(), Some(lo), vec![]).unwrap();
    let want = b.peer_id();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if a.peers().iter().any(|p| p.peer_id == want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "a did not connect to b through mDNS within 20 s"
    );
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, TransportEvent::PeerDiscovered(i) if i.peer_id == want))
    );
}
