//! Key discovery payloads (crates/mesh/src/keys.rs: `decode_key_request`,
//! `decode_key_reply`) and the pending-ACK file (crates/mesh/src/ack.rs:
//! `PendingAcks::from_bytes`): no panic, strict round trips, a reply's key is the
//! named peer's. The check is `ecomesh_mesh::fuzzing::keys_and_acks`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ecomesh_mesh::fuzzing::keys_and_acks(data);
});
