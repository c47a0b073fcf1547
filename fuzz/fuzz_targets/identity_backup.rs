//! `ecomesh_identity::fuzzing::backup`: see that function for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ecomesh_identity::fuzzing::backup(data));
