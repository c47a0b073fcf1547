//! The Meshtastic client serial framing, sans-io.
//!
//! Every protobuf travels as `0x94 0xC3 || u16 big-endian length || ToRadio/FromRadio`,
//! the length at most [`MAX_FRAME_LEN`] (512). Between frames the radio may print debug
//! text; the decoder skips anything that is not a frame start, and after a bad header
//! (length over the limit) or an undecodable protobuf it drops the first start byte and
//! scans on for the next `0x94 0xC3`, so the stream resynchronises after garbage. The
//! buffer never holds more than one maximal frame plus the last read.

use prost::Message;

use crate::proto::{FromRadio, ToRadio};

/// First start byte.
pub const START1: u8 = 0x94;
/// Second start byte.
pub const START2: u8 = 0xC3;
/// Largest protobuf a frame carries (`MAX_TO_FROM_RADIO_SIZE`).
pub const MAX_FRAME_LEN: usize = 512;
const HEADER_LEN: usize = 4;

/// Frames one `ToRadio` for the serial line.
pub fn encode_to_radio(msg: &ToRadio) -> Vec<u8> {
    frame_bytes(&msg.encode_to_vec())
}

/// Frames one `FromRadio` (what a radio, or the simulator, writes).
pub fn encode_from_radio(msg: &FromRadio) -> Vec<u8> {
    frame_bytes(&msg.encode_to_vec())
}

fn frame_bytes(body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&[START1, START2]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// What the decoder found on the line.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded<T> {
    /// A well-formed message.
    Message(T),
    /// A frame was dropped: `reason` says why; the decoder resynchronised.
    Dropped {
        /// Why (`"oversized"`, `"protobuf"`).
        reason: &'static str,
    },
}

/// Incremental decoder of framed protobufs (`FromRadio` on the client, `ToRadio` in the
/// simulator). Bounded: holds at most `MAX_FRAME_LEN + 4` bytes plus one `push`.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    skipped: u64,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes that were not part of any frame (debug text, garbage), so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes buffered waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes from the line and returns every complete frame's outcome, in order.
    pub fn push<T: Message + Default>(&mut self, bytes: &[u8]) -> Vec<Decoded<T>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            // Find a frame start.
            let start = self
                .buf
                .windows(2)
                .position(|w| w[0] == START1 && w[1] == START2);
            match start {
                Some(0) => {}
                Some(n) => {
                    self.skipped += n as u64;
                    self.buf.drain(..n);
                }
                None => {
                    // Keep a trailing first start byte: its partner may come next.
                    let keep = usize::from(self.buf.last() == Some(&START1));
                    let drop = self.buf.len() - keep;
                    self.skipped += drop as u64;
                    self.buf.drain(..drop);
                    return out;
                }
            }
            if self.buf.len() < HEADER_LEN {
                return out;
            }
            let len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
            if len > MAX_FRAME_LEN {
                self.resync();
                out.push(Decoded::Dropped {
                    reason: "oversized",
                });
                continue;
            }
            if self.buf.len() < HEADER_LEN + len {
                return out;
            }
            match T::decode(&self.buf[HEADER_LEN..HEADER_LEN + len]) {
                Ok(m) => {
                    self.buf.drain(..HEADER_LEN + len);
                    out.push(Decoded::Message(m));
                }
                Err(_) => {
                    self.resync();
                    out.push(Decoded::Dropped { reason: "protobuf" });
                }
            }
        }
    }

    /// Drops the current start marker so the scan finds the next one (which may lie
    /// inside the bytes of the bad frame: a truncated frame followed by a good one).
    fn resync(&mut self) {
        self.skipped += 1;
        self.buf.drain(..1);
    }
}

/// Decodes a `FromRadio` stream (client side).
pub fn decode_from_radio(dec: &mut FrameDecoder, bytes: &[u8]) -> Vec<Decoded<FromRadio>> {
    dec.push::<FromRadio>(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    fn pkt(payload: Vec<u8>) -> FromRadio {
        FromRadio {
            id: 7,
            payload_variant: Some(FromRadioVariant::Packet(MeshPacket {
                from: 0x1234,
                to: BROADCAST,
                decoded: Some(Data {
                    portnum: PRIVATE_APP,
                    payload,
                    want_response: false,
                    request_id: 0,
                }),
                hop_limit: 1,
                hop_start: 3,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn known_bytes_of_want_config_and_heartbeat() {
        // want_config_id = 3 (field 3, varint): 0x18 0x03.
        let w = encode_to_radio(&ToRadio {
            payload_variant: Some(ToRadioVariant::WantConfigId(3)),
        });
        assert_eq!(w, [0x94, 0xC3, 0x00, 0x02, 0x18, 0x03]);
        // heartbeat (field 7, empty message): 0x3A 0x00.
        let h = encode_to_radio(&ToRadio {
            payload_variant: Some(ToRadioVariant::Heartbeat(Heartbeat {})),
        });
        assert_eq!(h, [0x94, 0xC3, 0x00, 0x02, 0x3A, 0x00]);
    }

    #[test]
    fn mesh_packet_field_encoding() {
        // from = fixed32 field 1 (tag 0x0D), to = fixed32 field 2 (0x15),
        // decoded = field 4 (0x22), hop_limit = field 9 (0x48), hop_start = field 15 (0x78),
        // portnum 256 as varint (0x08 0x80 0x02).
        let p = MeshPacket {
            from: 1,
            to: 2,
            decoded: Some(Data {
                portnum: PRIVATE_APP,
                payload: vec![0xAA],
                want_response: false,
                request_id: 0,
            }),
            hop_limit: 3,
            hop_start: 3,
            want_ack: true,
            ..Default::default()
        };
        let b = p.encode_to_vec();
        assert_eq!(
            b,
            [
                0x0D, 1, 0, 0, 0, 0x15, 2, 0, 0, 0, 0x22, 6, 0x08, 0x80, 0x02, 0x12, 1, 0xAA, 0x48,
                3, 0x50, 1, 0x78, 3
            ]
        );
    }

    #[test]
    fn frames_round_trip_across_split_reads_and_noise() {
        let a = encode_from_radio(&pkt(vec![1, 2, 3]));
        let b = encode_from_radio(&pkt(vec![9; 200]));
        let mut line = b"boot log: hello\r\n".to_vec();
        line.extend_from_slice(&a);
        line.extend_from_slice(&[0x94, 0x00, 0x55]);
        line.extend_from_slice(&b);
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in line.chunks(5) {
            got.extend(dec.push::<FromRadio>(chunk));
        }
        assert_eq!(
            got,
            vec![
                Decoded::Message(pkt(vec![1, 2, 3])),
                Decoded::Message(pkt(vec![9; 200]))
            ]
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn oversized_and_bad_frames_are_dropped_then_resync() {
        let good = encode_from_radio(&pkt(vec![4; 10]));
        let mut line = vec![0x94, 0xC3, 0xFF, 0xFF, 1, 2, 3];
        // A frame whose body is not a protobuf (field 0 is invalid).
        line.extend_from_slice(&[0x94, 0xC3, 0x00, 0x02, 0x00, 0x00]);
        // A truncated frame announcing 100 bytes, immediately followed by a good frame.
        line.extend_from_slice(&[0x94, 0xC3, 0x00, 0x64, 0x08]);
        line.extend_from_slice(&good);
        // Pad so the truncated frame's announced length is reached.
        line.extend_from_slice(&[0u8; 120]);
        line.extend_from_slice(&good);
        let mut dec = FrameDecoder::new();
        let got = dec.push::<FromRadio>(&line);
        let msgs: Vec<_> = got
            .iter()
            .filter(|d| matches!(d, Decoded::Message(_)))
            .collect();
        assert!(got.contains(&Decoded::Dropped {
            reason: "oversized"
        }));
        assert!(got.contains(&Decoded::Dropped { reason: "protobuf" }));
        // The last good frame is always recovered; the one hidden inside the truncated
        // frame's announced length may or may not be, depending on where the bytes parse.
        assert!(!msgs.is_empty());
        assert_eq!(got.last(), Some(&Decoded::Message(pkt(vec![4; 10]))));
    }

    proptest::proptest! {
        #[test]
        fn prop_decoder_never_panics_and_stays_bounded(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..700), 0..8)) {
            let mut dec = FrameDecoder::new();
            for c in &chunks {
                let _ = dec.push::<FromRadio>(c);
                proptest::prop_assert!(dec.buffered() <= MAX_FRAME_LEN + HEADER_LEN);
            }
        }

        #[test]
        fn prop_good_frames_survive_garbage_between_them(
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..233), 1..5),
            junk in proptest::collection::vec(proptest::collection::vec(0u8..0x90, 0..40), 5),
        ) {
            let mut line = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                line.extend_from_slice(&junk[i % junk.len()]);
                line.extend_from_slice(&encode_from_radio(&pkt(p.clone())));
            }
            let mut dec = FrameDecoder::new();
            let got: Vec<_> = dec.push::<FromRadio>(&line).into_iter().filter_map(|d| match d { Decoded::Message(m) => Some(m), Decoded::Dropped { .. } => None }).collect();
            let want: Vec<_> = payloads.iter().map(|p| pkt(p.clone())).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
