//! The records the document store keeps on disk (crates/p2p-storage: state records,
//! version nodes, Merkle trie nodes, blob pins; the first byte picks): no panic,
//! strict re-encoding. The check is `ecomesh_p2p_storage::fuzzing::store_records`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ecomesh_p2p_storage::fuzzing::store_records(data);
});
