//! Keepalive through the tokio driver: a peer behind a loopback proxy that stops
//! forwarding (sockets left open, nothing closes) is declared lost by the keepalive
//! timeout, and the link works while the proxy forwards.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_tests::{EventLog, test_message};
use ecomesh_transport_wired::{LinkConfig, WiredConfig, WiredTransport};
use ecomesh_types::TransportAdapter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Copies `from` to `to` while `open`; once closed, reads stop (the bytes stay unread).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    open: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 || !open.load(Ordering::SeqCst) {
            // Frozen: keep both sockets open but never forward again.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_lost_by_keepalive() {
    let config = WiredConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        link: LinkConfig {
            keepalive_interval_ms: 1_000,
            keepalive_timeout_ms: 1_000,
            ..LinkConfig::default()
        },
        ..WiredConfig::default()
    };
    let a = WiredTransport::new(
        Identity::generate().unwrap(),
        AccessPolicy::Open,
        config.clone(),
    );
    let b = WiredTransport::new(Identity::generate().unwrap(), AccessPolicy::Open, config);
    a.start().await.unwrap();
    b.start().await.unwrap();
    let b_addr = b.local_addr().unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    eprintln!("a {:?}, b {b_addr}, proxy {proxy_addr}", a.local_addr());
    let open = Arc::new(AtomicBool::new(true));
    let o = open.clone();
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = proxy.accept().await else {
                return;
            };
            let Ok(outbound) = TcpStream::connect(b_addr).await else {
                return;
            };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pipe(ir, ow, o.clone()));
            tokio::spawn(pipe(or, iw, o.clone()));
        }
    });
    let la = EventLog::attach(&a);
    let lb = EventLog::attach(&b);
    let idb = a.dial(proxy_addr).await.unwrap();
    assert_eq!(idb, b.peer_id());
    // The link works through the proxy.
    let msg = test_message(a.peer_id(), Some(idb), b"through the proxy".to_vec());
    a.send(idb, msg.clone()).await.unwrap();
    lb.wait_message(0, a.peer_id(), msg.id, "b").await.unwrap();
    let mark = la.mark();
    open.store(false, Ordering::SeqCst);
    // Nothing closes a socket: only the keepalive timeout can notice.
    la.wait_lost(mark, idb, "a").await.unwrap();
    lb.wait_lost(0, a.peer_id(), "b").await.unwrap();
    assert!(a.peers().is_empty());
}
