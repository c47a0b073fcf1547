//! The `links` rows of the compare report (issue 16, goal 4): the wired and internet
//! transports' bulk throughput beside the cipher's ceiling, measured in the same run.
//!
//! Every transport figure moves 16 MiB of payload from A to B on 127.0.0.1 as
//! unsigned `NetworkMessage`s of 64 KiB or 1 MiB payload, one `send` in flight (each
//! awaited before the next), and ends when B's subscription has seen them all; the
//! throughput counts payload bytes (MiB/s). The messages are built before the clock
//! starts (building them is the caller's work, not the link's).
//!
//! - **Ceiling**: raw ChaCha20-Poly1305 (the AEAD of `Noise_XX_25519_ChaChaPoly_BLAKE2s`)
//!   encrypt-only and decrypt-only, in place, one message of the size per call, on one
//!   core each, with ring (the implementation the Noise sessions use). A link encrypts
//!   on one core and decrypts on the other, so it can move at most the slower of the two.
//!   RustCrypto's `chacha20poly1305` (two passes: ChaCha20, then Poly1305) is a context
//!   row.
//! - **Wired**: two `WiredTransport`s (TCP + Noise XX + framing + message encoding);
//!   goal: at least 0.9× the ceiling.
//! - **Internet**: two `InternetTransport`s over TCP (Noise + Yamux, one long-lived
//!   `/ecomesh/msg/1.0.0` stream per peer, `send` resolving on hand-off as the wired
//!   link's does); goal: at least 0.8× the wired link. QUIC, TCP with 8 sends in flight
//!   and TCP with one `/ecomesh/req/1.0.0` exchange per message (what peers without
//!   message streams get; `send` waits for the receiver's acknowledgement) are context
//!   rows, and so is the CPU time per MiB of both nodes beside the wired link's.
//! - **Raw TCP**: a plain tokio stream, context: the socket is not the bound.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_internet::{InternetConfig, InternetTransport, Multiaddr};
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::{
    MessageId, NetworkMessage, PeerId, Signature, Subscription, TransportAdapter, TransportEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::{Options, Row, Target, seconds_per_call};

/// Payload bytes moved per measured call of a transport.
const TOTAL: usize = 16 << 20;
/// (label, payload bytes per message).
const SIZES: [(&str, usize); 2] = [("64 KiB", 64 << 10), ("1 MiB", 1 << 20)];
const GOAL: &str = "4 links";
const MIB: f64 = (1 << 20) as f64;

/// Measurement budget per figure and the number of rounds (the best round counts).
fn budget(options: &Options) -> (Duration, u32) {
    if options.quick {
        (Duration::from_millis(400), 2)
    } else {
        (Duration::from_secs(3), 6)
    }
}

/// The rows of this area.
pub fn rows(options: &Options) -> Vec<Row> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "links: no tokio runtime");
            return Vec::new();
        }
    };
    let mut wired = wired_pair(&rt);
    let mut tcp = internet_pair(&rt, false, true, 10);
    let mut tcp_rr = internet_pair(&rt, false, false, 30);
    let mut quic = internet_pair(&rt, true, true, 20);
    let (writer, mut reader) = tcp_pair(&rt);
    let mut writer = Some(writer);
    let (time, rounds) = budget(options);
    let mut rows = Vec::new();
    for (label, size) in SIZES {
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let rate = |seconds: f64, bytes: usize| bytes as f64 / MIB / seconds;
        let (rc_enc, rc_dec) = cipher_rates(&data, time, rounds);
        let (enc, dec) = ring_rates(&data, time, rounds);
        let ceiling = enc.min(dec);
        let (seal, open) = link_cpu_rates(&data, time, rounds);
        let mut n = 0_u64;
        // (MiB/s, CPU milliseconds per MiB)
        let mut move_with = |pair: &mut Pair<dyn TransportAdapter>, window: usize| {
            let (pa, pb) = (pair.pa, pair.pb);
            let (s, cpu) = seconds_per_move(
                time,
                rounds,
                || batch(pa, pb, &mut n, &data),
                |msgs| rt.block_on(move_all(pair, msgs, window)),
            );
            (rate(s, TOTAL), cpu * 1e3 * MIB / TOTAL as f64)
        };
        let (w, w_cpu) = move_with(&mut wired, 1);
        let (w8, _) = move_with(&mut wired, 8);
        let (i_tcp, i_tcp_cpu) = move_with(&mut tcp, 1);
        let (i_tcp8, _) = move_with(&mut tcp, 8);
        let (i_rr, i_rr_cpu) = move_with(&mut tcp_rr, 1);
        let (i_quic, _) = move_with(&mut quic, 1);
        let chunk = Arc::new(data.clone());
        let raw_tcp = rate(
            seconds_per_call(time, rounds, || {
                raw_tcp_move(&rt, &mut writer, &mut reader, &chunk)
            }),
            TOTAL,
        );
        let row = |what: String, value: f64, baseline_what: &str, baseline: f64, target| Row {
            goal: GOAL.into(),
            what,
            value,
            baseline,
            baseline_what: baseline_what.into(),
            unit: "MiB/s",
            target,
        };
        let ceiling_what = "min(raw encrypt, raw decrypt) (ring)";
        rows.push(row(
            format!("wired link, {label} messages"),
            w,
            ceiling_what,
            ceiling,
            Target::AtLeast(0.9),
        ));
        rows.push(row(
            format!("wired link, 8 sends in flight, {label}"),
            w8,
            ceiling_what,
            ceiling,
            Target::Info,
        ));
        rows.push(row(
            format!("internet (TCP), {label} messages"),
            i_tcp,
            "wired link",
            w,
            Target::AtLeast(0.8),
        ));
        let cpu_row = |what: String, value: f64, baseline: f64| Row {
            goal: GOAL.into(),
            what,
            value,
            baseline,
            baseline_what: "wired link, same messages".into(),
            unit: "ms/MiB",
            target: Target::Info,
        };
        rows.push(cpu_row(
            format!("internet (TCP) CPU time per MiB (both nodes), {label}"),
            i_tcp_cpu,
            w_cpu,
        ));
        rows.push(row(
            format!(
                "internet (TCP), a request-response per message (peers without streams), {label}"
            ),
            i_rr,
            "wired link",
            w,
            Target::Info,
        ));
        rows.push(cpu_row(
            format!("internet (TCP) CPU per MiB, a request-response per message, {label}"),
            i_rr_cpu,
            w_cpu,
        ));
        rows.push(row(
            format!("raw ChaCha20-Poly1305 decrypt-only, {label}"),
            dec,
            "encrypt-only",
            enc,
            Target::Info,
        ));
        rows.push(row(
            format!("RustCrypto chacha20poly1305 min(encrypt, decrypt), {label}"),
            rc_enc.min(rc_dec),
            "ring (the link's cipher)",
            ceiling,
            Target::Info,
        ));
        rows.push(row(
            format!("wired link CPU, sender (sans-io), {label}"),
            seal,
            "encrypt-only",
            enc,
            Target::Info,
        ));
        rows.push(row(
            format!("wired link CPU, receiver (sans-io), {label}"),
            open,
            "decrypt-only",
            dec,
            Target::Info,
        ));
        rows.push(row(
            format!("internet (QUIC), {label} messages"),
            i_quic,
            "wired link",
            w,
            Target::Info,
        ));
        rows.push(row(
            format!("internet (TCP), 8 sends in flight, {label}"),
            i_tcp8,
            "wired link",
            w,
            Target::Info,
        ));
        rows.push(row(
            format!("raw loopback TCP, {label} writes"),
            raw_tcp,
            ceiling_what,
            ceiling,
            Target::Info,
        ));
    }
    rt.block_on(async {
        for t in [
            &wired.a, &wired.b, &tcp.a, &tcp.b, &tcp_rr.a, &tcp_rr.b, &quic.a, &quic.b,
        ] {
            let _ = t.stop().await;
        }
    });
    rows
}

/// Seconds per transport move: the best of `rounds` rounds of about `time / rounds`
/// each (after one warm-up move). Each move's messages are built by `make` before its
/// clock starts, so building 16 MiB of payloads is not counted as the link's time.
///
/// Also returns the process's CPU seconds (every thread, user + system: both nodes) per
/// move, over every timed move: the figure a loaded machine disturbs least.
fn seconds_per_move(
    time: Duration,
    rounds: u32,
    mut make: impl FnMut() -> Vec<NetworkMessage>,
    mut run: impl FnMut(Vec<NetworkMessage>),
) -> (f64, f64) {
    let rounds = rounds.max(1);
    let per_round = time / rounds;
    run(make());
    let mut best = f64::INFINITY;
    let (mut cpu, mut moves) = (0.0, 0_u32);
    for _ in 0..rounds {
        let (mut spent, mut calls) = (Duration::ZERO, 0_u32);
        while spent < per_round || calls == 0 {
            let msgs = make();
            let start = Instant::now();
            let cpu_start = super::blob::cpu_seconds();
            run(msgs);
            cpu += super::blob::cpu_seconds() - cpu_start;
            spent += start.elapsed();
            calls += 1;
        }
        moves += calls;
        best = best.min(spent.as_secs_f64() / f64::from(calls));
    }
    black_box((best, cpu / f64::from(moves.max(1))))
}

/// Raw encrypt-only and decrypt-only throughput (MiB/s) of one `data`-sized message per
/// call, in place, as a Noise transport message is sealed (96-bit nonce of a counter,
/// no associated data, detached 16-byte tag).
fn cipher_rates(data: &[u8], time: Duration, rounds: u32) -> (f64, f64) {
    let cipher = ChaCha20Poly1305::new(&[9_u8; 32].into());
    let nonce = |n: u64| {
        let mut b = [0_u8; 12];
        b[4..].copy_from_slice(&n.to_le_bytes());
        Nonce::from(b)
    };
    let mut buf = data.to_vec();
    let mut counter = 0_u64;
    let enc = seconds_per_call(time, rounds, || {
        counter += 1;
        let tag =
            cipher.encrypt_inout_detached(&nonce(counter), &[], black_box(&mut buf[..]).into());
        black_box(tag.is_ok());
    });
    // Decrypt-only of a genuine ciphertext: out of place from the sealed bytes (which
    // stay intact) into a second buffer, so every call authenticates and decrypts.
    let mut sealed = data.to_vec();
    let tag = cipher
        .encrypt_inout_detached(&nonce(0), &[], (&mut sealed[..]).into())
        .ok();
    let mut out = vec![0_u8; data.len()];
    let dec = seconds_per_call(time, rounds, || {
        if let (Some(t), Ok(io)) = (&tag, InOutBuf::new(black_box(&sealed), &mut out)) {
            let ok = cipher.decrypt_inout_detached(&nonce(0), &[], io, t);
            black_box(ok.is_ok());
        }
    });
    let bytes = data.len() as f64 / MIB;
    (bytes / enc, bytes / dec)
}

/// [`cipher_rates`] of ring's ChaCha20-Poly1305 (one fused pass; the implementation the
/// Noise sessions use, through snow's `ring-accelerated` resolver). ring decrypts only in
/// place, so decrypt-only is (restore the sealed bytes + decrypt) less (restore).
#[allow(clippy::expect_used)]
fn ring_rates(data: &[u8], time: Duration, rounds: u32) -> (f64, f64) {
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[9_u8; 32]).expect("key"));
    let nonce = |n: u64| {
        let mut b = [0_u8; 12];
        b[4..].copy_from_slice(&n.to_le_bytes());
        Nonce::assume_unique_for_key(b)
    };
    let mut buf = data.to_vec();
    let mut counter = 0_u64;
    let enc = seconds_per_call(time, rounds, || {
        counter += 1;
        let tag = key.seal_in_place_separate_tag(nonce(counter), Aad::empty(), black_box(&mut buf));
        black_box(tag.is_ok());
    });
    let mut sealed = data.to_vec();
    let tag = key
        .seal_in_place_separate_tag(nonce(0), Aad::empty(), &mut sealed)
        .expect("seal");
    let mut work = sealed.clone();
    let restore_and_open = seconds_per_call(time, rounds, || {
        work.copy_from_slice(black_box(&sealed));
        let ok = key.open_in_place_separate_tag(nonce(0), Aad::empty(), tag, &mut work, 0..);
        black_box(ok.is_ok());
    });
    let restore = seconds_per_call(time, rounds, || {
        work.copy_from_slice(black_box(&sealed));
        black_box(&mut work);
    });
    let dec = (restore_and_open - restore).max(f64::MIN_POSITIVE);
    let bytes = data.len() as f64 / MIB;
    (bytes / enc, bytes / dec)
}

/// The wired link's own CPU work per message, without sockets or tasks (MiB/s of
/// payload): the sender's `send_message` (encode, seal into the output), and the
/// receiver's `receive` (copy in, as a socket read would, decrypt, reassemble, decode).
/// The receiver's figure is the sender-and-receiver time less the sender's.
#[allow(clippy::expect_used)]
fn link_cpu_rates(data: &[u8], time: Duration, rounds: u32) -> (f64, f64) {
    use ecomesh_transport_wired::{Link, LinkConfig};
    let (ia, ib) = (
        Identity::from_secret_bytes(&[1; 32]),
        Identity::from_secret_bytes(&[2; 32]),
    );
    // A fresh established pair (the send-only figure leaves its receiver behind).
    let pair = || {
        let policy = Arc::new(AccessPolicy::Open);
        let mut a = Link::initiator(ia.clone(), policy.clone(), None, LinkConfig::default(), 0)
            .expect("initiator");
        let mut b =
            Link::responder(ib.clone(), policy, LinkConfig::default(), 0).expect("responder");
        while a.has_output() || b.has_output() {
            b.receive(&a.take_output(), 0).expect("handshake");
            a.receive(&b.take_output(), 0).expect("handshake");
        }
        while a.poll_event().is_some() || b.poll_event().is_some() {}
        (a, b)
    };
    let (mut a, _) = pair();
    let mut msg = message(ia.peer_id(), ib.peer_id(), 1, data.to_vec());
    let mut out = Vec::new();
    let send = seconds_per_call(time, rounds, || {
        out.clear();
        a.send_message(&mut msg).expect("send");
        a.swap_output(&mut out);
    });
    let (mut a, mut b) = pair();
    let both = seconds_per_call(time, rounds, || {
        out.clear();
        a.send_message(&mut msg).expect("send");
        a.swap_output(&mut out);
        b.receive(&out, 0).expect("receive");
        black_box(b.poll_event());
    });
    let bytes = data.len() as f64 / MIB;
    (bytes / send, bytes / (both - send).max(f64::MIN_POSITIVE))
}

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

/// [`TOTAL`] bytes of messages whose payload is `data`.
fn batch(pa: PeerId, pb: PeerId, n: &mut u64, data: &[u8]) -> Vec<NetworkMessage> {
    (0..TOTAL / data.len())
        .map(|_| {
            *n += 1;
            message(pa, pb, *n, data.to_vec())
        })
        .collect()
}

/// Two started transports, A connected to B; B's subscription reports each message's
/// payload length.
struct Pair<T: ?Sized> {
    pa: PeerId,
    pb: PeerId,
    received: mpsc::UnboundedReceiver<usize>,
    _sub: Subscription,
    a: Box<T>,
    b: Box<T>,
}

fn finish_pair(
    rt: &Runtime,
    a: Box<dyn TransportAdapter>,
    b: Box<dyn TransportAdapter>,
    pb: PeerId,
    pa: PeerId,
    sub: (Subscription, mpsc::UnboundedReceiver<usize>),
) -> Pair<dyn TransportAdapter> {
    let (sub, mut received) = sub;
    rt.block_on(async {
        // One message through before measuring: B has registered the link.
        a.send(pb, message(pa, pb, 0, vec![1; 16]))
            .await
            .expect("first send");
        assert_eq!(received.recv().await, Some(16));
    });
    Pair {
        pa,
        pb,
        received,
        _sub: sub,
        a,
        b,
    }
}

fn count_payloads(b: &dyn TransportAdapter) -> (Subscription, mpsc::UnboundedReceiver<usize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = b.subscribe(Arc::new(move |e: &TransportEvent| {
        if let TransportEvent::Message { message, .. } = e {
            let _ = tx.send(message.payload.len());
        }
    }));
    (sub, rx)
}

#[allow(clippy::expect_used)]
fn wired_pair(rt: &Runtime) -> Pair<dyn TransportAdapter> {
    let config = WiredConfig {
        listen: loopback(),
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
    let pb = rt.block_on(async {
        a.start().await.expect("start A");
        b.start().await.expect("start B");
        a.dial(b.local_addr().expect("B listens"))
            .await
            .expect("dial")
    });
    let sub = count_payloads(&b);
    let pa = a.peer_id();
    finish_pair(rt, Box::new(a), Box::new(b), pb, pa, sub)
}

#[allow(clippy::expect_used)]
fn internet_pair(rt: &Runtime, quic: bool, streams: bool, base: u8) -> Pair<dyn TransportAdapter> {
    let listen: Multiaddr = if quic {
        "/ip4/127.0.0.1/udp/0/quic-v1"
    } else {
        "/ip4/127.0.0.1/tcp/0"
    }
    .parse()
    .expect("multiaddr");
    let config = InternetConfig {
        listen: vec![listen],
        dht: false,
        message_streams: streams,
        ..InternetConfig::default()
    };
    let a = InternetTransport::new(&[base; 32], AccessPolicy::Open, config.clone())
        .expect("transport A");
    let b =
        InternetTransport::new(&[base + 1; 32], AccessPolicy::Open, config).expect("transport B");
    let pb = rt.block_on(async {
        a.start().await.expect("start A");
        b.start().await.expect("start B");
        let target = b.dial_addr(|_| true).expect("B listens");
        a.dial(target).await.expect("dial")
    });
    let sub = count_payloads(&b);
    let pa = a.peer_id();
    finish_pair(rt, Box::new(a), Box::new(b), pb, pa, sub)
}

/// Sends `msgs` from A to B, `window` at a time, and waits until B received them all.
#[allow(clippy::expect_used)]
async fn move_all(pair: &mut Pair<dyn TransportAdapter>, msgs: Vec<NetworkMessage>, window: usize) {
    let count = msgs.len();
    let pb = pair.pb;
    let mut it = msgs.into_iter().peekable();
    while it.peek().is_some() {
        let sends = it.by_ref().take(window).map(|m| pair.a.send(pb, m));
        for r in futures::future::join_all(sends).await {
            r.expect("send");
        }
    }
    let mut got = 0;
    for _ in 0..count {
        got += pair.received.recv().await.expect("receiver alive");
    }
    assert_eq!(got, TOTAL, "every payload byte arrived");
}

#[allow(clippy::expect_used)]
fn tcp_pair(rt: &Runtime) -> (TcpStream, TcpStream) {
    rt.block_on(async {
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let w = dialled.expect("connect");
        w.set_nodelay(true).expect("nodelay");
        (w, accepted.expect("accept").0)
    })
}

/// Writes [`TOTAL`] bytes in `chunk`-sized writes from a task (so writing and reading
/// run on the two cores) while this side reads them.
#[allow(clippy::expect_used)]
fn raw_tcp_move(
    rt: &Runtime,
    writer: &mut Option<TcpStream>,
    reader: &mut TcpStream,
    chunk: &Arc<Vec<u8>>,
) {
    let count = TOTAL / chunk.len();
    let mut rbuf = vec![0_u8; 64 << 10];
    let Some(mut w) = writer.take() else {
        return;
    };
    let chunk = chunk.clone();
    *writer = Some(rt.block_on(async {
        let task = tokio::spawn(async move {
            for _ in 0..count {
                w.write_all(&chunk).await.expect("write");
            }
            w
        });
        let mut got = 0;
        while got < TOTAL {
            let r = reader.read(&mut rbuf).await.expect("read");
            assert_ne!(r, 0, "writer closed early");
            got += r;
        }
        task.await.expect("writer task")
    }));
}
