//! Blob manifests: whatever decodes re-encodes to exactly the input and is
//! internally consistent (piece counts and lengths follow from the encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ecomesh_replication::shard::fuzzing::manifest(data);
});
