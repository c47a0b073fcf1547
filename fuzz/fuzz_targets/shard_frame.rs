//! Shard protocol frames (`/elohim/shard/1.0.0`): whatever decodes as a request
//! or response re-encodes to exactly the input; a server refuses garbage and
//! stores a push only when it matches its id; a fetcher accepts only the right bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ecomesh_replication::shard::fuzzing::frame(data);
});
