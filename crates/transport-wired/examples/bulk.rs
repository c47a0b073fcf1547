//! Bulk throughput of one wired link on loopback, for profiling (`perf record -g`).
//!
//! `cargo run --release -p ecomesh-transport-wired --example bulk -- [PAYLOAD_BYTES] [TOTAL_MIB] [ROUNDS]`
//!
//! Two `WiredTransport`s on 127.0.0.1, A dialled to B; each round sends `TOTAL_MIB` of
//! unsigned messages with `PAYLOAD_BYTES` payloads (one `send` in flight) and waits until
//! B's subscription saw them all, then prints the payload throughput in MiB/s.
//! The messages are built before each round starts, so the figure is the link's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::{
    MessageId, NetworkMessage, PeerId, Signature, TransportAdapter, TransportEvent,
};
use tokio::sync::mpsc;

fn message(sender: PeerId, recipient: PeerId, n: u64, payload: Vec<u8>) -> NetworkMessage {
    let mut random = [0_u8; 16];
    random[..6].copy_from_slice(&n.to_be_bytes()[2..]);
    NetworkMessage {
        id: MessageId::new_v4(random),
        message_type: "bulk".into(),
        payload,
        sender,
        recipient: Some(recipient),
        timestamp_ms: 1_750_000_000_000 + n,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature::UNSIGNED,
    }
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[allow(clippy::print_stdout)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size = arg(1, 64 << 10).max(1);
    let total = arg(2, 64) << 20;
    let rounds = arg(3, 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = WiredConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..WiredConfig::default()
    };
    let a = WiredTransport::new(
        Identity::from_secret_bytes(&[1; 32]),
        AccessPolicy::Open,
        config.clone(),
    );
    let b = WiredTransport::new(
        Identity::from_secret_bytes(&[2; 32]),
        AccessPolicy::Open,
        config,
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = b.subscribe(Arc::new(move |e: &TransportEvent| {
        if let TransportEvent::Message { message, .. } = e {
            let _ = tx.send(message.payload.len());
        }
    }));
    let (pa, pb) = (a.peer_id(), b.peer_id());
    rt.block_on(async {
        a.start().await?;
        b.start().await?;
        let addr = b.local_addr().ok_or("B does not listen")?;
        a.dial(addr).await?;
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let mut n = 0_u64;
        for _ in 0..rounds {
            let msgs: Vec<NetworkMessage> = (0..total / size)
                .map(|_| {
                    n += 1;
                    message(pa, pb, n, data.clone())
                })
                .collect();
            let count = msgs.len();
            let start = Instant::now();
            for m in msgs {
                a.send(pb, m).await?;
            }
            let mut got = 0;
            for _ in 0..count {
                got += rx.recv().await.ok_or("receiver gone")?;
            }
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(got, count * size);
            println!(
                "{size} B messages: {:.1} MiB/s",
                got as f64 / f64::from(1 << 20) / secs
            );
        }
        a.stop().await?;
        b.stop().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
