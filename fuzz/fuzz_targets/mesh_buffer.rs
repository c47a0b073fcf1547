//! `ecomesh_mesh::buffer::StoreBuffer::from_bytes`: the store-and-forward
//! buffer's file (disk input) never panics, stays within its bounds, and what
//! loads saves and loads back to the same entries.
#![no_main]

use ecomesh_mesh::buffer::{BufferConfig, StoreBuffer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = BufferConfig {
        max_messages: 16,
        max_bytes: 64 * 1024,
        ..BufferConfig::default()
    };
    if let Ok(buf) = StoreBuffer::from_bytes(data, config) {
        assert!(buf.len() <= config.max_messages);
        assert!(buf.bytes() <= config.max_bytes);
        let again = StoreBuffer::from_bytes(&buf.to_bytes(), config).expect("own image loads");
        assert_eq!(again.entries(), buf.entries());
    }
});
