//! mDNS discovery: two nodes find each other and the smaller peer id dials.
//!
//! mDNS sends to the multicast group 224.0.0.251, which is not a loopback
//! address, so the discovery itself runs in a network namespace the test creates
//! (and deletes) for itself: the test re-executes this binary's ignored
//! `discovery_inside_namespace` entry point under `ip netns exec`, where the only
//! interface is that namespace's own loopback. Needs root and iproute2 (CI has
//! both; `cargo xtask deps` installs iproute2).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_wired::{MdnsDiscovery, WiredConfig, WiredTransport};
use ecomesh_types::{TransportAdapter, TransportEvent};

/// Deletes the namespace however the test ends.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ip {} failed", args.join(" "));
}

#[test]
fn two_nodes_discover_each_other_in_a_private_namespace() {
    let ns = Namespace(format!("ecomesh-mdns-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip(&["-n", &ns.0, "link", "set", "lo", "multicast", "on"]);
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args([
            "--exact",
            "discovery_inside_namespace",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "discovery inside namespace {} failed",
        ns.0
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child ran no test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point run by two_nodes_discover_each_other_in_a_private_namespace inside its own network namespace"]
async fn discovery_inside_namespace() {
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
