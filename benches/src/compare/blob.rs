//! The `blob` rows of the compare report (goal 6): fetching a 50 MB blob from
//! a LAN peer against the wired link's bulk throughput over the same loopback.
//!
//! - The subject drives the real fetch path: two nodes on 127.0.0.1, each a
//!   `WiredTransport` under a `MultiTransportManager` and a `BlobService`
//!   over a sled `BlobStore`, each driven by a task that runs
//!   `MultiTransportManager::process` then `BlobService::process` whenever
//!   a transport event or the service wakes it (as `ecomesh-sync`'s node
//!   loop does). A holds the blob (stored with `BlobStore::put_blob`, the
//!   seed's encoding for its size: 1 MiB chunks for 50 MB); B does what
//!   `ecomesh blob get -o FILE` does: `fetch_blob` asks A for the manifest,
//!   fetches and verifies the pieces into its store, then
//!   `BlobStore::write_local` streams the blob into a file (synced),
//!   checking it against its id. Timed from `fetch_blob` to the synced file.
//! - The baseline is the same wired link moving the same number of bytes as
//!   unsigned 1 MiB `NetworkMessage`s from A to B, timed until B's
//!   subscription has seen all of them.
//! - Memory: the process's peak RSS growth (`VmHWM`, reset through
//!   `/proc/self/clear_refs` before the get) while B fetches. Both nodes
//!   live in this process, so it counts the serving side too: an upper bound
//!   of the fetching side's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_mesh::{MeshConfig, MultiTransportManager};
use ecomesh_p2p_storage::blobs::{BlobService, BlobServiceConfig, BlobStore};
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_replication::blob::{BlobConfig, ManifestLimits};
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::{
    MessageId, NetworkMessage, PeerId, Signature, Subscription, TransportAdapter, TransportEvent,
};
use tokio::sync::{Notify, mpsc};

use super::{Options, Row, Target};

const MIB: f64 = 1024.0 * 1024.0;

/// The blob: `len` bytes of xorshift noise (incompressible, deterministic).
fn blob(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn loopback() -> WiredConfig {
    WiredConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..WiredConfig::default()
    }
}

/// A field of `/proc/self/status` in KiB (0 when unreadable).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system, all threads) this process has used so far,
/// from `/proc/self/stat` (clock ticks of 1/100 s; 0 when unreadable).
pub(super) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: utime and stime are the
    // 12th and 13th of them.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let mut fields = after.split_whitespace().skip(11);
    let tick = |f: Option<&str>| f.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(fields.next()) + tick(fields.next())) / 100.0
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn bulk_message(sender: PeerId, recipient: PeerId, n: u64, payload: Vec<u8>) -> NetworkMessage {
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

/// Seconds (wall, CPU) for the wired link to carry `total` payload bytes as
/// 1 MiB messages.
async fn link_seconds(total: usize) -> Option<(f64, f64)> {
    let a = WiredTransport::new(
        Identity::from_secret_bytes(&[1; 32]),
        AccessPolicy::Open,
        loopback(),
    );
    let b = WiredTransport::new(
        Identity::from_secret_bytes(&[2; 32]),
        AccessPolicy::Open,
        loopback(),
    );
    a.start().await.ok()?;
    b.start().await.ok()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = b.subscribe(Arc::new(move |e: &TransportEvent| {
        if let TransportEvent::Message { message, .. } = e {
            let _ = tx.send(message.payload.len());
        }
    }));
    let pb = a.dial(b.local_addr()?).await.ok()?;
    let pa = a.peer_id();
    a.send(pb, bulk_message(pa, pb, 0, vec![1; 16]))
        .await
        .ok()?;
    rx.recv().await?;
    let size = 1 << 20;
    let data = vec![7_u8; size];
    let count = total.div_ceil(size);
    let msgs: Vec<_> = (1..=count as u64)
        .map(|n| bulk_message(pa, pb, n, data.clone()))
        .collect();
    let start = Instant::now();
    let cpu = cpu_seconds();
    for m in msgs {
        a.send(pb, m).await.ok()?;
    }
    let mut got = 0;
    for _ in 0..count {
        got += rx.recv().await?;
    }
    let secs = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let _ = a.stop().await;
    let _ = b.stop().await;
    (got == count * size).then_some(secs)
}

/// One node: wired transport, mesh, blob store and service, and its driver task.
struct BlobNode {
    transport: Arc<WiredTransport>,
    mesh: Arc<MultiTransportManager>,
    service: Arc<BlobService<SledBackend>>,
    stop: Arc<Notify>,
    _wake_sub: Subscription,
}

impl BlobNode {
    async fn start(seed: u8, dir: &std::path::Path) -> Option<BlobNode> {
        let identity = Identity::from_secret_bytes(&[seed; 32]);
        let me = identity.peer_id();
        let transport = Arc::new(WiredTransport::new(
            identity.clone(),
            AccessPolicy::Open,
            loopback(),
        ));
        let keys: Arc<std::collections::BTreeMap<PeerId, ecomesh_identity::PublicKey>> =
            Arc::default();
        let mesh = Arc::new(MultiTransportManager::new(
            identity,
            keys,
            MeshConfig::default(),
        ));
        mesh.add_transport(transport.clone());
        let backend = SledBackend::open(dir, None).ok()?;
        let store = BlobStore::open(backend, me, ManifestLimits::default()).ok()?;
        let service = Arc::new(BlobService::new(
            Arc::new(store),
            mesh.clone(),
            BlobServiceConfig {
                replicate_on_connect: false,
                ..BlobServiceConfig::default()
            },
        ));
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        service.set_waker(Arc::new(move || w.notify_one()));
        let w = wake.clone();
        let wake_sub = transport.subscribe(Arc::new(move |_: &TransportEvent| w.notify_one()));
        transport.start().await.ok()?;
        let stop = Arc::new(Notify::new());
        let (m, s, st) = (mesh.clone(), service.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                m.process(now_ms()).await;
                s.process(now_ms()).await;
                tokio::select! {
                    () = st.notified() => break,
                    () = wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        Some(BlobNode {
            transport,
            mesh,
            service,
            stop,
            _wake_sub: wake_sub,
        })
    }

    async fn shutdown(self) {
        self.stop.notify_one();
        let _ = self.transport.stop().await;
    }
}

/// What one fetch measured.
struct Fetch {
    seconds: f64,
    /// CPU seconds of the whole process (both nodes) during the get.
    cpu: f64,
    /// Peak RSS growth during the get, in KiB.
    peak_kib: u64,
}

/// B fetches a `len`-byte blob that A holds; `None` when anything fails.
async fn fetch(data: &[u8]) -> Option<Fetch> {
    let dir = tempfile::tempdir().ok()?;
    let a = BlobNode::start(11, &dir.path().join("a")).await?;
    let b = BlobNode::start(12, &dir.path().join("b")).await?;
    let put = a
        .service
        .store()
        .put_blob("bench", data, &BlobConfig::default(), now_ms())
        .ok()?;
    let id = put.manifest.id();
    drop(put);
    a.transport.dial(b.transport.local_addr()?).await.ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.mesh.peers().is_empty() || b.mesh.peers().is_empty() {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Reset the peak RSS to the current RSS (Linux: "5" to clear_refs).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_kib("VmRSS:");
    let start = Instant::now();
    let cpu = cpu_seconds();
    // What `ecomesh blob get -o FILE` does: fetch the pieces into the
    // store, then stream the verified blob into the file.
    let len = tokio::time::timeout(Duration::from_secs(120), b.service.fetch_blob(id, now_ms()))
        .await
        .ok()?
        .ok()?;
    let out = dir.path().join("got.bin");
    let written = {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&out).ok()?);
        let n = b
            .service
            .store()
            .write_local(&id, &mut w, now_ms())
            .ok()??;
        w.into_inner().ok()?.sync_all().ok()?;
        n
    };
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let peak_kib = status_kib("VmHWM:").saturating_sub(rss_before);
    a.shutdown().await;
    b.shutdown().await;
    let ok = len == written && std::fs::read(&out).ok()? == data;
    if !ok {
        tracing::error!("fetched blob differs from the original");
        return None;
    }
    Some(Fetch {
        seconds,
        cpu,
        peak_kib,
    })
}

/// Goal 6: a 50 MB blob fetched from a LAN peer at least 0.8x the wired
/// link's bulk throughput in the same run; the peak memory for context.
pub fn rows(options: &Options) -> Vec<Row> {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let len = if options.quick { 20 << 20 } else { 50_000_000 };
    let rounds = if options.quick { 1 } else { 3 };
    let data = blob(len);
    let mut link = f64::INFINITY;
    let mut link_cpu = f64::INFINITY;
    let mut best: Option<Fetch> = None;
    for _ in 0..rounds {
        if let Some((s, cpu)) = rt.block_on(link_seconds(len)) {
            link = link.min(s);
            link_cpu = link_cpu.min(cpu);
        }
        match rt.block_on(fetch(&data)) {
            Some(f) if best.as_ref().is_none_or(|b| f.seconds < b.seconds) => best = Some(f),
            Some(_) => {}
            None => tracing::error!("blob fetch failed"),
        }
    }
    let Some(best) = best else {
        return Vec::new();
    };
    let mib = len as f64 / MIB;
    let link_rate = if link.is_finite() { mib / link } else { 0.0 };
    vec![
        Row {
            goal: "6 blob".into(),
            what: format!("blob get of {mib:.0} MiB from a peer over wired loopback"),
            value: mib / best.seconds,
            baseline: link_rate,
            baseline_what: "wired link, 1 MiB messages".into(),
            unit: "MiB/s",
            target: Target::AtLeast(0.8),
        },
        Row {
            goal: "6 blob".into(),
            what: "CPU time per MiB of the get (both nodes; robust to a loaded machine)".into(),
            value: best.cpu * 1000.0 / mib,
            baseline: if link_cpu.is_finite() {
                link_cpu * 1000.0 / mib
            } else {
                0.0
            },
            baseline_what: "wired link, 1 MiB messages".into(),
            unit: "ms/MiB",
            target: Target::Info,
        },
        Row {
            goal: "6 blob".into(),
            what: "peak RSS growth during the get (both nodes)".into(),
            value: best.peak_kib as f64 / 1024.0,
            baseline: mib,
            baseline_what: "blob size".into(),
            unit: "MiB",
            target: Target::Info,
        },
    ]
}
