//! The LoRa transport's decoders of untrusted bytes: the Meshtastic serial framing (in
//! arbitrary chunks, through the radio client), our frames, the sealed-unit plaintext and
//! the message envelope.
//! Nothing may panic; the serial buffer stays bounded; whatever decodes as a frame or a
//! plaintext re-encodes to exactly the input.
#![no_main]

use ecomesh_transport_lora::client::{ClientEvent, RadioClient};
use ecomesh_transport_lora::envelope::{decode_envelope, encode_decoded};
use ecomesh_transport_lora::frame::{Frame, NetworkKey, decode_inner, encode_inner};
use ecomesh_transport_lora::serial::{FrameDecoder, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut client = RadioClient::new(1000, 7);
    let mut dec = FrameDecoder::new();
    for chunk in data.chunks(split) {
        for ev in client.receive(chunk) {
            if let ClientEvent::Packet { payload, .. } = ev {
                let _ = Frame::decode(&payload, &NetworkKey::from_secret(b"fuzz"));
            }
        }
        let _ = dec.push::<ecomesh_transport_lora::proto::ToRadio>(chunk);
        assert!(dec.buffered() <= MAX_FRAME_LEN + 4 + split);
    }
    let key = NetworkKey::from_secret(b"fuzz");
    if let Ok(f) = Frame::decode(data, &key) {
        assert_eq!(f.encode(&key), data);
    }
    if let Ok((h, body)) = decode_inner(data) {
        assert_eq!(encode_inner(&h, &body), data);
    }
    let dest = ecomesh_types::PeerId::from_digest([0xDD; 32]);
    let session_peer = ecomesh_types::PeerId::from_digest([0x5E; 32]);
    if let Ok(e) = decode_envelope(data, &dest, Some(&session_peer)) {
        assert_eq!(encode_decoded(&e, &dest).ok().as_deref(), Some(data));
    }
    if let Ok(e) = decode_envelope(data, &dest, None) {
        assert!(!e.link_authenticated);
    }
});
