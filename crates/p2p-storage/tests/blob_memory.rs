//! A blob fetched from a peer with `fetch_blob` and read with `write_local`
//! is never held whole in memory on the way: the process's peak RSS grows by
//! the fetching node's stored copy (its `MemoryBackend` holds every piece)
//! plus a bound set by the pieces in flight, not by further copies of the
//! blob. Alone in its test binary, so no other test shares the process
//! (nextest also runs each test in its own process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/blobnet.rs"]
mod blobnet;

use blobnet::BlobNet;
use ecomesh_p2p_storage::blobs::BlobServiceConfig;
use ecomesh_replication::blob::{BlobConfig, Encoding};

const MIB: u64 = 1 << 20;

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Counts what is written and keeps nothing.
struct Counting(u64);

impl std::io::Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn fetching_and_streaming_a_blob_holds_only_the_pieces_in_flight() {
    let len: u64 = 48 * MIB;
    let chunk: u64 = 256 << 10;
    let in_flight = 8;
    let config = BlobServiceConfig {
        blob: BlobConfig {
            none_max: MIB,
            chunked_max: u64::MAX,
            chunk_size: chunk,
        },
        fetch_in_flight: in_flight,
        replicate_on_connect: false,
        ..BlobServiceConfig::default()
    };
    let mut net = BlobNet::honest(2, config);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let now = net.now();
    let blob_config = net.config.blob;
    let put = net
        .store(0)
        .put_blob("files", &data, &blob_config, now)
        .unwrap();
    assert_eq!(put.manifest.encoding(), Encoding::Chunked);
    let id = put.manifest.id();
    drop(put);
    net.settle();
    // Reset the peak RSS to the current RSS ("5", Linux).
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
    let before = status_kib("VmRSS:");
    let fetch = net.service(1).fetch_blob(id, net.now());
    let mut got = None;
    for _ in 0..100_000 {
        got = fetch.try_take();
        if got.is_some() {
            break;
        }
        net.advance(1);
        net.step();
    }
    assert_eq!(got.expect("the fetch completes").unwrap(), len);
    let mut sink = Counting(0);
    let now = net.now();
    assert_eq!(
        net.store(1).write_local(&id, &mut sink, now).unwrap(),
        Some(len)
    );
    assert_eq!(sink.0, len);
    let growth_mib = status_kib("VmHWM:").saturating_sub(before) / 1024;
    // The stored copy (48 MiB) plus pieces in flight, their envelopes and
    // the mesh's copies awaiting ACKs: well under 16 MiB for 8 x 256 KiB.
    // Holding the blob once more (the rebuilt bytes, or every verified
    // piece until the end) would add 48 MiB.
    let bound = len / MIB + 16;
    assert!(
        growth_mib <= bound,
        "peak RSS grew by {growth_mib} MiB fetching a {} MiB blob (bound {bound} MiB)",
        len / MIB
    );
    // The streamed bytes are the blob.
    let mut check = Vec::new();
    net.store(1).write_local(&id, &mut check, now).unwrap();
    assert!(check == data, "streamed bytes differ from the blob");
}
