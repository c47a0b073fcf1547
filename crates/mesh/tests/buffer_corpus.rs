//! The committed seeds of the `mesh_buffer` fuzz target (`fuzz/corpus/mesh_buffer/`,
//! buffer files of versions 1 and 2) load under plain `cargo test`, and what
//! loads saves and loads back the same, as the fuzz target checks.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use ecomesh_mesh::buffer::{BufferConfig, StoreBuffer};

#[test]
fn mesh_buffer_seeds_load_and_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mesh_buffer");
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let buf = StoreBuffer::from_bytes(&bytes, BufferConfig::default()).unwrap();
        assert_eq!(buf.len(), 1);
        let again = StoreBuffer::from_bytes(&buf.to_bytes(), BufferConfig::default()).unwrap();
        assert_eq!(again.entries(), buf.entries());
        versions.push(bytes[8]);
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions, vec![1, 2], "seeds of both file versions");
}
