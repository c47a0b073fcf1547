//! An authenticated peer that breaks the record layer after the handshake is
//! reported as `TransportEvent::Misbehaved` (so the mesh charges it) and its
//! link is closed; garbage from a peer that never proved who it is names
//! nobody (issue 20, hostile peers).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecomesh_identity::noise::{Handshake, SessionConfig, frame};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_tests::EventLog;
use ecomesh_transport_wired::link::hello_record;
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::{TransportAdapter, TransportEvent};

fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(head))];
    s.read_exact(&mut body).unwrap();
    body
}

/// Completes Noise XX as `id` on a blocking socket, sends HELLO, then `record`
/// sealed by the session.
fn handshake_then(addr: SocketAddr, id: &Identity, record: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hs = Handshake::xx_initiator(
        id.clone(),
        Arc::new(AccessPolicy::Open),
        SessionConfig::default(),
    )
    .unwrap();
    loop {
        while hs.wants_write() {
            s.write_all(&frame(&hs.write_message().unwrap()).unwrap())
                .unwrap();
        }
        if hs.is_finished() {
            break;
        }
        hs.read_message(&read_frame(&mut s)).unwrap();
    }
    let (mut tx, _rx) = hs.into_session().unwrap().split();
    for r in [&hello_record(1 << 20)[..], record] {
        s.write_all(&frame(&tx.encrypt(r).unwrap()).unwrap())
            .unwrap();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_breaking_the_record_layer_is_reported_and_not_listed() {
    let config = WiredConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..WiredConfig::default()
    };
    let victim = WiredTransport::new(Identity::generate().unwrap(), AccessPolicy::Open, config);
    victim.start().await.unwrap();
    let addr = victim.local_addr().unwrap();
    let log = EventLog::attach(&victim);
    // Garbage before any handshake: nobody to charge.
    let mut g = TcpStream::connect(addr).unwrap();
    g.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
    // An authenticated peer sends a record of an unknown kind.
    let bad = Identity::generate().unwrap();
    let peer = bad.peer_id();
    eprintln!("victim {addr}, attacker {peer}");
    let s = tokio::task::spawn_blocking(move || handshake_then(addr, &bad, &[0x7f, 1, 2]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = log.events();
        let charged = events.iter().any(
            |e| matches!(e, TransportEvent::Misbehaved { peer: p, reason } if *p == peer && reason.contains("unknown record")),
        );
        if charged {
            let misbehaved = events
                .iter()
                .filter(|e| matches!(e, TransportEvent::Misbehaved { .. }))
                .count();
            assert_eq!(
                misbehaved, 1,
                "only the authenticated peer is named: {events:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not reported: {events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Established or not when its bad record arrived, it is not listed now.
    assert!(victim.peers().is_empty());
    drop((s, g));
    victim.stop().await.unwrap();
}
