//! The `/ecomesh/req/1.0.0` request-response codec and the peers-topic announcement of
//! `ecomesh-transport-internet` (crates/transport-internet/src/protocol.rs): decoding
//! never panics or over-allocates, a frame head over the limit is refused, and whatever
//! decodes re-encodes to exactly the input (messages re-encode canonically). The
//! message-stream decoder (`/ecomesh/msg/1.0.0`) accepts exactly the message requests.
#![no_main]

use ecomesh_transport_internet::protocol::{
    self, Request, decode_announcement, decode_request, decode_response, decode_stream_message,
    encode_announcement, encode_request, encode_response, split_frame,
};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data, MAX) {
        let again = encode_request(&req, MAX).expect("a decoded request re-encodes");
        if !matches!(req, Request::Message(_)) {
            assert_eq!(again, data);
        }
        assert_eq!(decode_request(&again, MAX).expect("round trip"), req);
    }
    match (decode_stream_message(data, MAX), decode_request(data, MAX)) {
        (Ok(m), Ok(Request::Message(r))) => assert_eq!(m, r),
        (Ok(_), other) => panic!("a stream message is not a message request: {other:?}"),
        (Err(_), Ok(Request::Message(_))) => panic!("a message request refused on a stream"),
        (Err(_), _) => {}
    }
    if let Ok(res) = decode_response(data, MAX) {
        assert_eq!(encode_response(&res, MAX).expect("re-encodes"), data);
    }
    match split_frame(data, MAX) {
        Ok(Some((body, used))) => {
            assert!(body.len() <= MAX && used == body.len() + 4);
            assert_eq!(protocol::frame(body).expect("frames"), &data[..used]);
        }
        Ok(None) => assert!(data.len() < 4 || data.len() < 4 + MAX),
        Err(_) => {}
    }
    if let Ok(addrs) = decode_announcement(data) {
        assert_eq!(encode_announcement(&addrs).expect("re-encodes"), data);
    }
});
