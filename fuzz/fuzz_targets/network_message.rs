//! Whatever decodes as a full-form NetworkMessage re-encodes to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ecomesh_wire::decode_message(data) {
        assert_eq!(ecomesh_wire::encode_message(&m), data);
    }
});
