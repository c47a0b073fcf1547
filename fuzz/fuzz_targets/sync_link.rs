//! `ecomesh_sync::fuzz_decoders`: link messages, link codes and the devices file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ecomesh_sync::fuzz_decoders(data));
