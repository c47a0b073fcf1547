//! The checks run by the cargo-fuzz targets `shard_frame` and `blob_manifest`
//! (in `fuzz/`) and by the regression replay in `tests/shard_fuzz_regressions.rs`.
//!
//! Each takes arbitrary bytes and panics only when a promise is broken: a
//! decoder panicking, an accepted input that does not re-encode to itself, or
//! the server or fetcher accepting something they must refuse.

use ecomesh_types::PeerId;

use super::{
    FetchConfig, FetchPoll, Fetcher, MemoryStore, ShardLimits, ShardRequest, ShardResponse,
    ShardServer, ShardStore,
};
use crate::blob::{BlobConfig, BlobId, Encoding, Manifest, ManifestLimits, encode_blob};

/// Small limits, so that the fuzzer reaches the bounds.
const SMALL: ShardLimits = ShardLimits {
    max_shard: 64,
    max_error: 16,
};

/// Feeds `data` to both frame decoders (small and default limits), to a
/// server as a request and to a fetcher as the response to a `Get`.
pub fn frame(data: &[u8]) {
    for limits in [SMALL, ShardLimits::default()] {
        if let Ok(req) = ShardRequest::decode_with(data, &limits) {
            assert_eq!(req.encode(), data, "request does not re-encode");
        }
        if let Ok(resp) = ShardResponse::decode_with(data, &limits) {
            assert_eq!(resp.encode(), data, "response does not re-encode");
        }
    }

    let from = PeerId::from_digest([1; 32]);
    let mut server = ShardServer::new(MemoryStore::new(), SMALL);
    let served = server.handle_frame(from, data);
    match ShardRequest::decode_with(data, &SMALL) {
        Ok(ShardRequest::Push { id, data: piece }) => {
            let stored = server.store().has(&id).unwrap_or(false);
            assert_eq!(
                stored,
                id.matches(&piece),
                "push stored iff it matches its id"
            );
            assert_eq!(served.refused.is_none(), stored);
        }
        Ok(_) => assert!(served.refused.is_none()),
        Err(_) => assert!(served.refused.is_some(), "garbage not reported"),
    }
    assert!(ShardResponse::decode(&served.response.encode()).is_ok());

    // As the answer to a Get for the one piece of a small blob.
    let Ok(enc) = encode_blob(b"fuzz", &BlobConfig::default()) else {
        return;
    };
    let holder = PeerId::from_digest([2; 32]);
    let config = FetchConfig {
        max_in_flight: 1,
        limits: SMALL,
        keep_pieces: true,
    };
    let Ok(mut fetcher) = Fetcher::new(enc.manifest, vec![vec![holder]], config) else {
        return;
    };
    let FetchPoll::Send(out) = fetcher.poll() else {
        panic!("a new fetcher sends a request");
    };
    let Some(first) = out.first() else {
        panic!("a new fetcher sends a request");
    };
    let _ = fetcher.on_response(first.id, data);
    match fetcher.poll() {
        FetchPoll::Done(blob) => assert_eq!(blob, b"fuzz", "wrong blob accepted"),
        FetchPoll::Failed(_) => {}
        other => panic!("one holder, one answer: expected an end, got {other:?}"),
    }
}

/// Decodes `data` as a blob manifest (small and default limits); whatever
/// decodes re-encodes to itself and is internally consistent.
pub fn manifest(data: &[u8]) {
    let small = ManifestLimits {
        max_pieces: 16,
        max_piece_len: 1 << 20,
    };
    for limits in [small, ManifestLimits::default()] {
        let Ok(m) = Manifest::from_bytes_with(data, &limits) else {
            continue;
        };
        assert_eq!(
            m.to_bytes().ok().as_deref(),
            Some(data),
            "manifest does not re-encode"
        );
        assert!(m.pieces().len() <= limits.max_pieces);
        assert!(m.piece_len() <= limits.max_piece_len);
        let total: u64 = (0..m.pieces().len())
            .map(|i| m.piece_size(i).unwrap_or(0))
            .sum();
        match m.encoding() {
            Encoding::None => {
                assert_eq!(m.pieces(), &[m.id()]);
                assert_eq!(total, m.len());
            }
            Encoding::Chunked => assert_eq!(total, m.len()),
            Encoding::Rs4x7 => {
                assert_eq!(m.pieces().len(), 7);
                assert!(m.piece_len() * 4 >= m.len() && m.piece_len().is_multiple_of(2));
            }
        }
        assert_eq!(
            BlobId::from_content_id(&m.id().to_content_id()).ok(),
            Some(m.id())
        );
    }
}
