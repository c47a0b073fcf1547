//! Replays the `compact_version` fuzz target's seed corpus
//! (`fuzz/corpus/compact_version/*`) and its findings
//! (`tests/fuzz_regressions/compact_version/*`) through the same property as
//! the target, under plain `cargo test`: whatever decodes re-encodes to
//! exactly the input, and a decoded version node has canonical bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use ecomesh_p2p_storage::VersionNode;
use ecomesh_types::{HlcTimestamp, PeerId};
use ecomesh_wire::compact::{decode_delta_compact, decode_document_compact, encode_delta_compact};
use ecomesh_wire::{Limits, encode_document_compact};

/// The fuzz target's sender key (`fuzz/fuzz_targets/compact_version.rs`).
const SENDER_KEY: [u8; 32] = [0x5a; 32];

/// The target's property; whether the input was accepted.
fn run(data: &[u8]) -> bool {
    let Some((&which, bytes)) = data.split_first() else {
        return false;
    };
    match which % 4 {
        0 | 1 => {
            let key = (which % 4 == 1).then_some(&SENDER_KEY);
            // The canonical form too (clear and sealed nodes).
            let canonical = match ecomesh_wire::decode::<VersionNode>(bytes) {
                Ok(node) => {
                    assert_eq!(ecomesh_wire::encode(&node).unwrap(), bytes);
                    true
                }
                Err(_) => false,
            };
            match VersionNode::decode_compact(bytes, key) {
                Ok(node) => {
                    let sender = key.map(ecomesh_identity::peer_id_of);
                    assert_eq!(node.encode_compact(sender.as_ref()).unwrap(), bytes);
                    ecomesh_wire::encode(&node).unwrap();
                    true
                }
                Err(_) => canonical,
            }
        }
        2 => {
            let base = HlcTimestamp::new(1_767_225_600_000, 3, PeerId::from_digest([7; 32]));
            match decode_delta_compact(bytes, &base, &Limits::DEFAULT) {
                Ok(d) => {
                    assert_eq!(encode_delta_compact(&d, &base).unwrap(), bytes);
                    true
                }
                Err(_) => false,
            }
        }
        _ => match decode_document_compact(bytes, &Limits::DEFAULT) {
            Ok(d) => {
                assert_eq!(encode_document_compact(&d).unwrap(), bytes);
                true
            }
            Err(_) => false,
        },
    }
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

#[test]
fn seeds_and_findings_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = files(&root.join("../../fuzz/corpus/compact_version"));
    assert!(!seeds.is_empty(), "the committed seed corpus is missing");
    // The seeds are valid encodings (from the committed vectors): all accepted.
    for (i, s) in seeds.iter().enumerate() {
        assert!(run(s), "seed {i} refused");
        // A truncated seed is refused or re-encodes exactly; never a panic.
        run(&s[..s.len() / 2]);
    }
    for f in files(&root.join("tests/fuzz_regressions/compact_version")) {
        run(&f);
    }
}
