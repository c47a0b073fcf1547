//! Blob envelopes of `ecomesh/shard` (crates/p2p-storage/src/blobs/frame.rs):
//! decoding never panics or over-allocates, and whatever decodes re-encodes
//! to exactly the input; manifest payloads likewise.
#![no_main]

use ecomesh_p2p_storage::blobs::frame;
use ecomesh_replication::blob::ManifestLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = frame::decode(data, 1 << 20) {
        assert_eq!(
            frame::encode(e.kind, e.request, e.part, e.parts, e.payload),
            data
        );
    }
    if let Ok((collection, manifest)) = frame::decode_manifest(data, &ManifestLimits::default())
        && let Ok(bytes) = manifest.to_bytes()
    {
        assert_eq!(frame::encode_manifest(&collection, &bytes), data);
    }
    let _ = frame::decode_manifest_request(data);
});
