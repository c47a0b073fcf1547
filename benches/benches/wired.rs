//! Bulk throughput of the wired transport beside its raw parts, measured in the same run.
//!
//! Every variant moves the same 16 MiB from A to B, as messages (or chunks) of 64 KiB and
//! of 1 MiB payload; throughput counts payload bytes.
//! - `wired`: two `WiredTransport`s on 127.0.0.1 (TCP + Noise XX session + framing +
//!   `NetworkMessage` encoding); A sends unsigned `NetworkMessage`s to B one after the
//!   other through `TransportAdapter::send`, and an iteration ends when B's subscription
//!   has received all of them. The messages are built before the timed part.
//! - `raw_chacha20poly1305`: encrypt + decrypt in place of the same bytes in the same
//!   chunk sizes with ChaCha20-Poly1305 (the AEAD of `Noise_XX_25519_ChaChaPoly_BLAKE2s`),
//!   no network.
//! - `raw_tcp`: a plain tokio `TcpStream` over loopback: a writer task writes the chunks,
//!   the reader reads until it has all the bytes.
//!
//! Ratios to read: `wired / raw_tcp` and `wired / raw_chacha20poly1305` at each size.
//!
//! `cargo bench -p ecomesh-benches --bench wired`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::{
    MessageId, NetworkMessage, PeerId, Signature, TransportAdapter, TransportEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Payload bytes moved per iteration.
const TOTAL: usize = 16 << 20;
/// (label, payload bytes per message or chunk).
const SIZES: [(&str, usize); 2] = [("64KiB", 64 << 10), ("1MiB", 1 << 20)];
/// The wired transport's read buffer size, used by the raw TCP reader too.
const READ_CHUNK: usize = 64 << 10;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn message(sender: PeerId, recipient: PeerId, n: u64, payload: Vec<u8>) -> NetworkMessage {
    let mut random = [0_u8; 16];
    // Bytes 6 and 8 carry UUID version/variant bits; keep the counter clear of them.
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

/// Two started transports, A dialled B; B's subscription reports each message's payload length.
struct WiredPair {
    a: WiredTransport,
    b: WiredTransport,
    pa: PeerId,
    pb: PeerId,
    received: mpsc::UnboundedReceiver<usize>,
    _sub: ecomesh_types::Subscription,
}

fn wired_pair(rt: &Runtime) -> WiredPair {
    rt.block_on(async {
        let config = WiredConfig {
            listen: loopback(),
            ..WiredConfig::default()
        };
        let ia = Identity::from_secret_bytes(&[1; 32]);
        let ib = Identity::from_secret_bytes(&[2; 32]);
        let a = WiredTransport::new(ia, AccessPolicy::Open, config.clone());
        let b = WiredTransport::new(ib, AccessPolicy::Open, config);
        a.start().await.unwrap();
        b.start().await.unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        let sub = b.subscribe(Arc::new(move |e: &TransportEvent| {
            if let TransportEvent::Message { message, .. } = e {
                let _ = tx.send(message.payload.len());
            }
        }));
        let pb = a.dial(b.local_addr().unwrap()).await.unwrap();
        let pa = a.peer_id();
        assert_eq!(pb, b.peer_id());
        let mut pair = WiredPair {
            a,
            b,
            pa,
            pb,
            received,
            _sub: sub,
        };
        // One message through before measuring: B has registered the link.
        pair.a
            .send(pb, message(pa, pb, 0, vec![1; 16]))
            .await
            .unwrap();
        assert_eq!(pair.received.recv().await, Some(16));
        pair
    })
}

/// A connected loopback TCP pair: (writer side, reader side).
fn tcp_pair(rt: &Runtime) -> (TcpStream, TcpStream) {
    rt.block_on(async {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let w = dialled.unwrap();
        w.set_nodelay(true).unwrap();
        (w, accepted.unwrap().0)
    })
}

fn bench_bulk(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut pair = wired_pair(&rt);
    let (writer, mut reader) = tcp_pair(&rt);
    let mut writer = Some(writer);
    let cipher = ChaCha20Poly1305::new(&[9_u8; 32].into());

    let mut g = c.benchmark_group("wired_bulk");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));

    for (label, size) in SIZES {
        let count = TOTAL / size;
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();

        let mut n = 0_u64;
        g.bench_function(BenchmarkId::new("wired", label), |b| {
            let (pa, pb) = (pair.pa, pair.pb);
            b.iter_batched(
                || {
                    (0..count)
                        .map(|_| {
                            n += 1;
                            message(pa, pb, n, data.clone())
                        })
                        .collect::<Vec<_>>()
                },
                |msgs| {
                    rt.block_on(async {
                        for m in msgs {
                            pair.a.send(pb, m).await.unwrap();
                        }
                        let mut got = 0;
                        for _ in 0..count {
                            got += pair.received.recv().await.unwrap();
                        }
                        assert_eq!(got, TOTAL);
                    })
                },
                BatchSize::PerIteration,
            )
        });

        let mut counter = 0_u64;
        let mut buf = Vec::with_capacity(size + 16);
        g.bench_function(BenchmarkId::new("raw_chacha20poly1305", label), |b| {
            b.iter(|| {
                for _ in 0..count {
                    counter += 1;
                    let mut nonce = [0_u8; 12];
                    nonce[4..].copy_from_slice(&counter.to_le_bytes());
                    let nonce = Nonce::from(nonce);
                    buf.clear();
                    buf.extend_from_slice(black_box(&data));
                    cipher.encrypt_in_place(&nonce, &[], &mut buf).unwrap();
                    cipher.decrypt_in_place(&nonce, &[], &mut buf).unwrap();
                    black_box(buf.len());
                }
            })
        });

        let chunk = Arc::new(data);
        let mut rbuf = vec![0_u8; READ_CHUNK];
        g.bench_function(BenchmarkId::new("raw_tcp", label), |b| {
            b.iter(|| {
                let mut w = writer
                    .take()
                    .expect("writer returned by the last iteration");
                let chunk = chunk.clone();
                writer = Some(rt.block_on(async {
                    let task = tokio::spawn(async move {
                        for _ in 0..count {
                            w.write_all(&chunk).await.unwrap();
                        }
                        w
                    });
                    let mut got = 0;
                    while got < TOTAL {
                        let r = reader.read(&mut rbuf).await.unwrap();
                        assert_ne!(r, 0, "writer closed early");
                        got += r;
                    }
                    assert_eq!(got, TOTAL);
                    task.await.unwrap()
                }));
            })
        });
    }
    g.finish();

    rt.block_on(async {
        pair.a.stop().await.unwrap();
        pair.b.stop().await.unwrap();
    });
}

criterion_group!(benches, bench_bulk);
criterion_main!(benches);
