//! `ecomesh_mesh::onion::fuzzing::cells`: the onion cell decoder (strict
//! round trip) and a router fed arbitrary cells (no panic, bounded state).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ecomesh_mesh::onion::fuzzing::cells(data));
