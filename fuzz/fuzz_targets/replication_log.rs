//! The records the replication layer keeps on disk (crates/replication/src/queue.rs:
//! `Pending::from_bytes`; crates/replication/src/stream.rs: `StreamIndex::from_bytes`;
//! the first byte picks): no panic, strict re-encoding. The check is
//! `ecomesh_replication::fuzzing::logs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ecomesh_replication::fuzzing::logs(data);
});
