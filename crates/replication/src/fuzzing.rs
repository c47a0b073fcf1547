//! The check the `replication_log` cargo-fuzz target runs on arbitrary bytes (the
//! records the sync queue and the durable stream keep on disk), and the genuine
//! records its committed seed corpus holds; `tests/fuzz_seeds.rs` replays
//! both under `cargo test`.

use std::collections::BTreeSet;

use ecomesh_types::{ContentId, PeerId};

use crate::queue::{Pending, SyncItem};
use crate::stream::{Source, StreamIndex};

/// The first byte picks the decoder, the rest is its input: `0` a sync queue
/// record (`Pending::from_bytes`), anything else the stream index
/// (`StreamIndex::from_bytes`). No panic, and whatever decodes re-encodes to
/// exactly the input.
///
/// # Panics
/// When a property does not hold (that is what the fuzzer looks for).
pub fn logs(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    if kind == 0 {
        if let Ok(p) = Pending::from_bytes(1, rest) {
            match p.to_bytes() {
                Ok(bytes) => assert_eq!(bytes, rest, "a queue record re-encodes to its input"),
                Err(e) => panic!("a decoded queue record does not encode: {e}"),
            }
        }
    } else if let Ok(index) = StreamIndex::from_bytes(rest) {
        assert_eq!(
            index.to_bytes(),
            rest,
            "a stream index re-encodes to its input"
        );
    }
}

/// Genuine records from the encoders (named seed inputs, with the selector byte).
pub fn log_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let cid = |n: u8| {
        let mut c = vec![0x01, 0x71, 0x12, 0x20];
        c.extend_from_slice(&[n; 32]);
        ContentId(c)
    };
    let peer = PeerId::from_digest([5; 32]);
    let with = |kind: u8, bytes: Vec<u8>| {
        let mut v = vec![kind];
        v.extend(bytes);
        v
    };
    let mut out = Vec::new();
    let items = [
        (
            "queue_replicate",
            SyncItem::Replicate {
                collection: "notes".into(),
                id: "a".into(),
                version: cid(1),
                factor: 2,
            },
        ),
        (
            "queue_tombstone",
            SyncItem::Tombstone {
                collection: "notes".into(),
                id: "b".into(),
                version: cid(2),
                factor: 1,
            },
        ),
        (
            "queue_push_blob",
            SyncItem::PushBlob {
                blob: cid(3),
                collection: "photos".into(),
                id: Some("c".into()),
                factor: 3,
            },
        ),
    ];
    for (name, item) in items {
        let acked_by = if item.factor() > 1 {
            BTreeSet::from([peer])
        } else {
            BTreeSet::new()
        };
        let p = Pending {
            seq: 1,
            item,
            acked_by,
        };
        if let Ok(bytes) = p.to_bytes() {
            out.push((name, with(0, bytes)));
        }
    }
    let mut index = StreamIndex::new();
    let _ = index.ingest(cid(10), Vec::new(), Source::Local);
    let _ = index.ingest(cid(11), vec![cid(10)], Source::Remote(peer));
    let _ = index.ingest(cid(13), vec![cid(12)], Source::Remote(peer));
    out.push(("stream_empty", with(1, StreamIndex::new().to_bytes())));
    out.push(("stream_entries_outlier", with(1, index.to_bytes())));
    out
}
