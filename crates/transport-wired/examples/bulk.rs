//! Bulk throughput of one wired link on loopback, for profiling (`perf record -g`).
//!
//! `cargo run --release -p ecomesh-transport-wired --example bulk -- [PAYLOAD_BYTES] [TOTAL_MIB] [ROUNDS]`
//!
//! Two `WiredTransport`s on 127.0.0.1, A dialled to B; each round sends `TOTAL_MIB` of
//! unsigned messages with `PAYLOAD_BYTES` payloads (one `send` in flight) and waits until
//! B's subscription saw them all, then prints the payload throughput in MiB/s.
//! The messages are built before each round starts, so the figure is the link's.
//!
//! Beside the wall-clock rate it prints CPU figures that a loaded machine disturbs far
//! less: the whole process's CPU time per MiB moved (every thread's
//! `/proc/self/task/*/schedstat`, user and kernel, so the socket copies count), and the
//! cipher's own CPU time per MiB in the same run (`Session::encrypt_in_place` then
//! `decrypt_in_place` of 65519-byte records on this thread), and their ratio: the share
//! of the link's CPU that is the cipher (1.0 = the link costs only its cipher).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ecomesh_identity::noise::{Handshake, Session, SessionConfig};
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

/// CPU nanoseconds of every thread of this process (Linux), 0 where unreadable.
fn process_cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU nanoseconds of the calling thread (Linux), 0 where unreadable.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn session_pair() -> Result<(Session, Session), Box<dyn std::error::Error>> {
    let policy = Arc::new(AccessPolicy::Open);
    let (ia, ib) = (
        Identity::from_secret_bytes(&[3; 32]),
        Identity::from_secret_bytes(&[4; 32]),
    );
    let mut i = Handshake::xx_initiator(ia, policy.clone(), SessionConfig::default())?;
    let mut r = Handshake::xx_responder(ib, policy, SessionConfig::default())?;
    while !(i.is_finished() && r.is_finished()) {
        if i.wants_write() {
            r.read_message(&i.write_message()?)?;
        }
        if r.wants_write() {
            i.read_message(&r.write_message()?)?;
        }
    }
    Ok((i.into_session()?, r.into_session()?))
}

/// The cipher's CPU nanoseconds per MiB: (encrypt-only, decrypt-only), in place, of
/// `total` bytes in 65519-byte records, on this thread.
fn cipher_ns_per_mib(total: usize) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let (mut a, mut b) = session_pair()?;
    let record = a.max_plaintext_len();
    let plain: Vec<u8> = (0..record).map(|i| (i * 7) as u8).collect();
    let mut bufs: Vec<Vec<u8>> = (0..total.div_ceil(record))
        .map(|_| {
            let mut v = Vec::with_capacity(record + 16);
            v.extend_from_slice(&plain);
            v
        })
        .collect();
    let t0 = thread_cpu_ns();
    for buf in &mut bufs {
        a.encrypt_in_place(buf, 0)?;
    }
    let t1 = thread_cpu_ns();
    for buf in &mut bufs {
        b.decrypt_in_place(buf)?;
    }
    let t2 = thread_cpu_ns();
    let mib = (bufs.len() * record) as f64 / f64::from(1 << 20);
    Ok(((t1 - t0) as f64 / mib, (t2 - t1) as f64 / mib))
}

/// Raw loopback TCP: the process's CPU nanoseconds per MiB of `total` bytes written in
/// `size`-byte writes by one task and read by another.
async fn raw_tcp_ns_per_mib(size: usize, total: usize) -> Result<f64, Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0_u8; 256 << 10];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok::<usize, std::io::Error>(got)
    });
    let mut w = tokio::net::TcpStream::connect(addr).await?;
    w.set_nodelay(true)?;
    let chunk = vec![5_u8; size];
    let cpu0 = process_cpu_ns();
    let mut sent = 0;
    while sent < total {
        w.write_all(&chunk).await?;
        sent += size;
    }
    let got = reader.await??;
    let cpu = (process_cpu_ns() - cpu0) as f64;
    Ok(cpu / (got as f64 / f64::from(1 << 20)))
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
            let (enc, dec) = cipher_ns_per_mib(total)?;
            let cpu0 = process_cpu_ns();
            let start = Instant::now();
            for m in msgs {
                a.send(pb, m).await?;
            }
            let mut got = 0;
            for _ in 0..count {
                got += rx.recv().await.ok_or("receiver gone")?;
            }
            let secs = start.elapsed().as_secs_f64();
            let cpu = (process_cpu_ns() - cpu0) as f64;
            let tcp = raw_tcp_ns_per_mib(size, total).await?;
            assert_eq!(got, count * size);
            let mib = got as f64 / f64::from(1 << 20);
            let ceiling = 1e9 / enc.max(dec);
            println!(
                "{size} B messages: {:.1} MiB/s (ceiling {ceiling:.0} MiB/s, ratio {:.3}); \
                 CPU {:.0} us/MiB, cipher enc+dec {:.0} us/MiB, cipher share {:.3}; \
                 raw TCP CPU {:.0} us/MiB, (cipher + raw TCP) / link CPU {:.3}",
                mib / secs,
                mib / secs / ceiling,
                cpu / mib / 1e3,
                (enc + dec) / 1e3,
                (enc + dec) / (cpu / mib),
                tcp / 1e3,
                (enc + dec + tcp) / (cpu / mib),
            );
        }
        a.stop().await?;
        b.stop().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
