//! Base58 text (crates/types/src/base58.rs `decode`, the text form of peer ids
//! peers and users hand over): no panic, the result within the length bound, and
//! what decodes encodes to text that decodes to the same bytes.
#![no_main]

use ecomesh_types::base58::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = decode(text, 64) {
        assert!(bytes.len() <= 64);
        assert_eq!(decode(&encode(&bytes), 64).ok(), Some(bytes));
    }
});
