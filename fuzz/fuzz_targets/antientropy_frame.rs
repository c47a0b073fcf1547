//! Anti-entropy frames (crates/replication/src/antientropy/frame.rs, `Frame::decode`):
//! no panic, whatever decodes re-encodes to exactly the input, and its split parts
//! decode. The check is `ecomesh_replication::antientropy::fuzzing::frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ecomesh_replication::antientropy::fuzzing::frame(data);
});
