//! Replays every input under `tests/fuzz_regressions/<target>/` (crashes found
//! by the cargo-fuzz targets `shard_frame` and `blob_manifest` in `fuzz/`, plus
//! the seed inputs) through the targets' checks.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use ecomesh_replication::blob::{BlobConfig, encode_blob};
use ecomesh_replication::shard::fuzzing;
use ecomesh_replication::shard::{ShardRequest, ShardResponse};

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().is_some_and(|f| f != ".gitkeep") {
            check(&fs::read(&path).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn replay_shard_fuzz_regressions() {
    assert!(replay("shard_frame", fuzzing::frame) > 0);
    assert!(replay("blob_manifest", fuzzing::manifest) > 0);
}

#[test]
fn fuzz_checks_pass_on_genuine_inputs_and_garbage() {
    let id = ecomesh_replication::blob::BlobId::of(b"fuzz");
    fuzzing::frame(
        &ShardRequest::Push {
            id,
            data: b"fuzz".to_vec(),
        }
        .encode(),
    );
    fuzzing::frame(&ShardResponse::Data(b"fuzz".to_vec()).encode());
    fuzzing::frame(&ShardResponse::Data(b"fuzZ".to_vec()).encode());
    for len in [0_usize, 10, 100, 1000] {
        let data = vec![3_u8; len];
        let config = BlobConfig {
            none_max: 10,
            chunked_max: 100,
            chunk_size: 9,
        };
        fuzzing::manifest(
            &encode_blob(&data, &config)
                .unwrap()
                .manifest
                .to_bytes()
                .unwrap(),
        );
    }
    for b in 0..=255_u8 {
        fuzzing::frame(&[0x82, b, 0x41, b]);
        fuzzing::manifest(&[0xa5, b]);
    }
}
