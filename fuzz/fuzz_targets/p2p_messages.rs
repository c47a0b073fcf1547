//! The P2P adapter's mesh messages (crates/p2p-storage/src/p2p/wire.rs: anti-entropy
//! envelopes, fetch requests and answers, delta-sync requests and pages): no panic,
//! bounds kept, what decodes re-encodes to the same message. The check is
//! `ecomesh_p2p_storage::fuzzing::p2p_messages`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ecomesh_p2p_storage::fuzzing::p2p_messages(data);
});
