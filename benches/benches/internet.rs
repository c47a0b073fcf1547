//! The internet (libp2p) transport: bulk throughput beside the wired transport and raw
//! TCP measured in the same run, and DHT lookups at 8, 16, 32 and 64 nodes.
//!
//! **Bulk** (`internet_bulk`): every variant moves the same 16 MiB from A to B on
//! 127.0.0.1, as messages (or chunks) of 64 KiB and of 1 MiB payload; throughput counts
//! payload bytes.
//! - `internet_tcp` / `internet_quic`: two `InternetTransport`s, B listening only on TCP
//!   (Noise + Yamux) or only on QUIC; A sends unsigned `NetworkMessage`s with
//!   `TransportAdapter::send`, one after the other (each `send` resolves once the
//!   message is queued for the peer's long-lived `/ecomesh/msg/1.0.0` stream, as the
//!   wired link's does); an iteration ends when B's subscription has received all of them.
//! - `internet_tcp_window8`: the same over TCP with 8 sends in flight at once.
//! - `wired`: two `WiredTransport`s (TCP + Noise XX + framing), sends as above.
//! - `raw_tcp`: a plain tokio `TcpStream`: a writer task writes the chunks, the reader
//!   reads until it has all the bytes.
//!
//! Ratios to read: `internet_* / raw_tcp` and `internet_* / wired` at each size.
//!
//! **DHT** (`internet_dht_lookup/<n>`): `n` nodes on loopback, each bootstrapped from node
//! 0 only; one iteration is a Kademlia closest-peers lookup of a fresh random key from
//! the last node. Besides criterion's time, the bench prints the mean number of peers
//! queried (requests) and answering (successes) per lookup, from Kademlia's own query
//! statistics: the work (and an upper bound on the hops) a lookup takes at that size.
//!
//! `cargo bench -p ecomesh-benches --bench internet`
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_internet::{
    InternetConfig, InternetTransport, Multiaddr, multiaddr_protocol,
};
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
const READ_CHUNK: usize = 64 << 10;

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

/// A deterministic seed per node (benches need no secrecy).
fn seed(n: u32) -> [u8; 32] {
    let mut s = [0x5a_u8; 32];
    s[..4].copy_from_slice(&n.to_be_bytes());
    s
}

fn addr(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

/// Two started transports of any kind, A connected to B; B's subscription reports each
/// message's payload length.
struct Pair<T> {
    a: T,
    b: T,
    pa: PeerId,
    pb: PeerId,
    received: mpsc::UnboundedReceiver<usize>,
    _sub: ecomesh_types::Subscription,
}

fn count_payloads(
    b: &dyn TransportAdapter,
) -> (ecomesh_types::Subscription, mpsc::UnboundedReceiver<usize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = b.subscribe(Arc::new(move |e: &TransportEvent| {
        if let TransportEvent::Message { message, .. } = e {
            let _ = tx.send(message.payload.len());
        }
    }));
    (sub, rx)
}

fn internet_pair(rt: &Runtime, quic: bool, base: u32) -> Pair<InternetTransport> {
    rt.block_on(async {
        let listen = if quic {
            addr("/ip4/127.0.0.1/udp/0/quic-v1")
        } else {
            addr("/ip4/127.0.0.1/tcp/0")
        };
        let config = InternetConfig {
            listen: vec![listen],
            dht: false,
            ..InternetConfig::default()
        };
        let a = InternetTransport::new(&seed(base), AccessPolicy::Open, config.clone()).unwrap();
        let b = InternetTransport::new(&seed(base + 1), AccessPolicy::Open, config).unwrap();
        a.start().await.unwrap();
        b.start().await.unwrap();
        let (sub, mut received) = count_payloads(&b);
        let target = b.dial_addr(|_| true).unwrap();
        let pb = a.dial(target).await.unwrap();
        let pa = a.peer_id();
        a.send(pb, message(pa, pb, 0, vec![1; 16])).await.unwrap();
        assert_eq!(received.recv().await, Some(16));
        Pair {
            a,
            b,
            pa,
            pb,
            received,
            _sub: sub,
        }
    })
}

fn wired_pair(rt: &Runtime) -> Pair<WiredTransport> {
    rt.block_on(async {
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
        a.start().await.unwrap();
        b.start().await.unwrap();
        let (sub, mut received) = count_payloads(&b);
        let pb = a.dial(b.local_addr().unwrap()).await.unwrap();
        let pa = a.peer_id();
        a.send(pb, message(pa, pb, 0, vec![1; 16])).await.unwrap();
        assert_eq!(received.recv().await, Some(16));
        Pair {
            a,
            b,
            pa,
            pb,
            received,
            _sub: sub,
        }
    })
}

fn tcp_pair(rt: &Runtime) -> (TcpStream, TcpStream) {
    rt.block_on(async {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let w = dialled.unwrap();
        w.set_nodelay(true).unwrap();
        (w, accepted.unwrap().0)
    })
}

/// Sends `msgs` from A to B, `window` at a time, and waits until B received them all.
async fn move_all<T: TransportAdapter>(
    pair: &mut Pair<T>,
    msgs: Vec<NetworkMessage>,
    window: usize,
) {
    let count = msgs.len();
    let pb = pair.pb;
    let mut it = msgs.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<NetworkMessage> = it.by_ref().take(window).collect();
        let sends = batch.into_iter().map(|m| pair.a.send(pb, m));
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
    }
    let mut got = 0;
    for _ in 0..count {
        got += pair.received.recv().await.unwrap();
    }
    assert_eq!(got, TOTAL);
}

fn bench_bulk(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tcp = internet_pair(&rt, false, 10);
    let mut quic = internet_pair(&rt, true, 20);
    let mut wired = wired_pair(&rt);
    let (writer, mut reader) = tcp_pair(&rt);
    let mut writer = Some(writer);

    let mut g = c.benchmark_group("internet_bulk");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));

    for (label, size) in SIZES {
        let count = TOTAL / size;
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let mut n = 0_u64;
        let mut batch = |pa: PeerId, pb: PeerId| {
            (0..count)
                .map(|_| {
                    n += 1;
                    message(pa, pb, n, data.clone())
                })
                .collect::<Vec<_>>()
        };
        g.bench_function(BenchmarkId::new("internet_tcp", label), |b| {
            let (pa, pb) = (tcp.pa, tcp.pb);
            b.iter_batched(
                || batch(pa, pb),
                |msgs| rt.block_on(move_all(&mut tcp, msgs, 1)),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(BenchmarkId::new("internet_tcp_window8", label), |b| {
            let (pa, pb) = (tcp.pa, tcp.pb);
            b.iter_batched(
                || batch(pa, pb),
                |msgs| rt.block_on(move_all(&mut tcp, msgs, 8)),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(BenchmarkId::new("internet_quic", label), |b| {
            let (pa, pb) = (quic.pa, quic.pb);
            b.iter_batched(
                || batch(pa, pb),
                |msgs| rt.block_on(move_all(&mut quic, msgs, 1)),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(BenchmarkId::new("wired", label), |b| {
            let (pa, pb) = (wired.pa, wired.pb);
            b.iter_batched(
                || batch(pa, pb),
                |msgs| rt.block_on(move_all(&mut wired, msgs, 1)),
                BatchSize::PerIteration,
            )
        });
        let chunk = Arc::new(data.clone());
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
                    task.await.unwrap()
                }));
            })
        });
    }
    g.finish();
    rt.block_on(async {
        for p in [&tcp, &quic] {
            p.a.stop().await.unwrap();
            p.b.stop().await.unwrap();
        }
        wired.a.stop().await.unwrap();
        wired.b.stop().await.unwrap();
    });
}

fn bench_dht(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("internet_dht_lookup");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let mut table = Vec::new();
    for n in [8_u32, 16, 32, 64] {
        let nodes = rt.block_on(async {
            let config = |boot: Option<Multiaddr>| InternetConfig {
                listen: vec![addr("/ip4/127.0.0.1/tcp/0")],
                bootstrap: boot.into_iter().collect(),
                ..InternetConfig::default()
            };
            let boot =
                InternetTransport::new(&seed(1000 * n), AccessPolicy::Open, config(None)).unwrap();
            boot.start().await.unwrap();
            let boot_addr =
                boot.dial_addr(|a| a.iter().any(|p| matches!(p, multiaddr_protocol::Tcp(_))));
            let mut nodes = vec![boot];
            for i in 1..n {
                let t = InternetTransport::new(
                    &seed(1000 * n + i),
                    AccessPolicy::Open,
                    config(boot_addr.clone()),
                )
                .unwrap();
                t.start().await.unwrap();
                nodes.push(t);
            }
            // Each node looks itself up once so the routing tables fill.
            for t in &nodes {
                let _ = t.closest_peers(t.libp2p_peer_id().to_bytes()).await;
            }
            nodes
        });
        let seeker = nodes.last().unwrap().clone();
        let mut key_n = 0_u64;
        let mut sum = (0_u64, 0_u64, 0_u64);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                key_n += 1;
                let key = Identity::from_secret_bytes(&{
                    let mut s = [0_u8; 32];
                    s[..8].copy_from_slice(&key_n.to_be_bytes());
                    s[8] = n as u8;
                    s
                })
                .peer_id()
                .as_bytes()
                .to_vec();
                let (peers, stats) = rt.block_on(seeker.closest_peers(key)).unwrap();
                assert!(!peers.is_empty());
                sum.0 += 1;
                sum.1 += u64::from(stats.requests);
                sum.2 += u64::from(stats.successes);
            })
        });
        table.push((n, sum));
        rt.block_on(async {
            for t in &nodes {
                t.stop().await.unwrap();
            }
        });
    }
    g.finish();
    eprintln!(
        "\nDHT closest-peers lookup from a node bootstrapped from one peer (means per lookup):"
    );
    eprintln!(
        "{:>6} {:>10} {:>10} {:>10}",
        "nodes", "lookups", "requests", "answered"
    );
    for (n, (count, req, ok)) in table {
        let c = count.max(1) as f64;
        eprintln!(
            "{n:>6} {count:>10} {:>10.1} {:>10.1}",
            req as f64 / c,
            ok as f64 / c
        );
    }
}

criterion_group!(benches, bench_bulk, bench_dht);
criterion_main!(benches);
