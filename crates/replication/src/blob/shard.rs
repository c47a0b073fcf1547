//! The shard transfer protocol `/elohim/shard/1.0.0` (seed 001, "Shard Transfer
//! Protocol"): ask a peer for a piece of a blob by its [`BlobId`], ask whether
//! it has one, or push one to it.
//!
//! Everything here is sans-io. [`ShardRequest`] / [`ShardResponse`] encode to
//! compact canonical CBOR and decode strictly within [`ShardLimits`];
//! [`ShardServer`] answers requests from a [`ShardStore`]; [`Fetcher`] is the
//! client state machine that gets the pieces of a blob from their holders,
//! verifies each one and rebuilds the blob. The node carries the frames over
//! its request-response transport and reports timeouts as failures.
//!
//! # Frames
//!
//! Each message is one CBOR array whose first item is a small tag; ids are
//! the 32 raw blake3 bytes:
//!
//! | message | frame |
//! |---|---|
//! | `Get { id }` | `[0, id]` |
//! | `Have { id }` | `[1, id]` |
//! | `Push { id, data }` | `[2, id, data]` |
//! | `Data(bytes)` | `[0, bytes]` |
//! | `Have(b)` | `[1, b]` |
//! | `PushAck` | `[2]` |
//! | `NotFound` | `[3]` |
//! | `Error(text)` | `[4, text]` |
//!
//! The decoder takes shortest-form heads only, refuses trailing bytes, unknown
//! tags and wrong arities, and checks every length prefix against
//! [`ShardLimits`] before it looks further: a piece over
//! [`ShardLimits::max_shard`] is [`ReplicationError::TooLarge`] as soon as
//! its head is read, and nothing is allocated for a length whose bytes are
//! not there. Whatever decodes re-encodes to exactly the same bytes.

mod fetch;
pub mod fuzzing;
mod server;
mod store;

pub use fetch::{FetchConfig, FetchPoll, Fetcher, Outgoing, RequestId};
pub use server::{Served, ShardServer};
pub use store::{DirStore, MemoryStore, ShardStore};

use ecomesh_wire::{Limits, Reader, WireError, Writer};

use crate::ReplicationError;
use crate::blob::{BlobId, MIB};

type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// The protocol name (seed 001).
pub const PROTOCOL: &str = "/elohim/shard/1.0.0";

/// Bounds on frames read from peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLimits {
    /// Largest piece carried by `Push` or `Data`. Default 256 MiB, the default
    /// [`ManifestLimits::max_piece_len`](crate::blob::ManifestLimits::max_piece_len).
    pub max_shard: usize,
    /// Longest `Error` text. Default 1024 bytes.
    pub max_error: usize,
}

impl Default for ShardLimits {
    fn default() -> Self {
        ShardLimits {
            max_shard: 256 * MIB as usize,
            max_error: 1024,
        }
    }
}

impl ShardLimits {
    fn wire(&self) -> Limits {
        Limits {
            max_depth: 1,
            max_len: self.max_shard.max(self.max_error).max(BlobId::LEN) as u64,
        }
    }
}

/// A request of the shard protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardRequest {
    /// Send me the piece with this id.
    Get {
        /// The piece.
        id: BlobId,
    },
    /// Do you hold the piece with this id?
    Have {
        /// The piece.
        id: BlobId,
    },
    /// Store this piece (replication); refused unless `data` hashes to `id`.
    Push {
        /// The piece's id.
        id: BlobId,
        /// Its bytes.
        data: Vec<u8>,
    },
}

/// A response of the shard protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardResponse {
    /// The requested piece.
    Data(Vec<u8>),
    /// Whether the piece is held.
    Have(bool),
    /// The pushed piece is stored.
    PushAck,
    /// The piece is not held.
    NotFound,
    /// The request failed; a short reason for people (at most
    /// [`ShardLimits::max_error`] bytes are sent).
    Error(String),
}

const GET: u64 = 0;
const HAVE: u64 = 1;
const PUSH: u64 = 2;
const R_DATA: u64 = 0;
const R_HAVE: u64 = 1;
const R_PUSH_ACK: u64 = 2;
const R_NOT_FOUND: u64 = 3;
const R_ERROR: u64 = 4;

/// Maps a length over the limit to [`ReplicationError::TooLarge`].
fn wire_error(e: WireError, what: &'static str) -> ReplicationError {
    match e {
        WireError::LengthExceeded { len, max, .. } => ReplicationError::TooLarge {
            what,
            size: usize::try_from(len).unwrap_or(usize::MAX),
            max: usize::try_from(max).unwrap_or(usize::MAX),
        },
        e => ReplicationError::Wire(e),
    }
}

fn malformed(what: &'static str, detail: impl Into<String>) -> ReplicationError {
    ReplicationError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Reads the array head and tag; returns the tag and the array length.
fn read_head(r: &mut Reader<'_>, what: &'static str) -> Result<(u64, usize)> {
    let n = r.read_array_len().map_err(|e| wire_error(e, what))?;
    if n == 0 {
        return Err(malformed(what, "empty frame"));
    }
    let tag = r.read_uint().map_err(|e| wire_error(e, what))?;
    Ok((tag, n))
}

fn arity(what: &'static str, tag: u64, n: usize, expected: usize) -> Result<()> {
    if n == expected {
        Ok(())
    } else {
        Err(malformed(
            what,
            format!("tag {tag} takes {expected} items, got {n}"),
        ))
    }
}

fn read_id(r: &mut Reader<'_>, what: &'static str) -> Result<BlobId> {
    let bytes = r.read_bytes().map_err(|e| wire_error(e, what))?;
    BlobId::from_slice(bytes)
}

/// The length a byte or text string head at `pos` announces, if one is there.
fn peek_len(frame: &[u8], pos: usize) -> Option<u64> {
    let (&initial, rest) = frame.get(pos..)?.split_first()?;
    // Major types 2 (bytes) and 3 (text) only; the reader reports anything else.
    if !matches!(initial >> 5, 2 | 3) {
        return None;
    }
    let n = |k: usize| -> Option<u64> {
        let b = rest.get(..k)?;
        Some(b.iter().fold(0_u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    match initial & 0x1f {
        info @ 0..=23 => Some(u64::from(info)),
        24 => n(1),
        25 => n(2),
        26 => n(4),
        27 => n(8),
        _ => None,
    }
}

/// Refuses a string whose head announces more than `max` bytes, before its
/// bytes are awaited or read.
fn check_head(r: &Reader<'_>, frame: &[u8], what: &'static str, max: usize) -> Result<()> {
    match peek_len(frame, r.position()) {
        Some(len) if len > max as u64 => Err(ReplicationError::TooLarge {
            what,
            size: usize::try_from(len).unwrap_or(usize::MAX),
            max,
        }),
        _ => Ok(()),
    }
}

fn read_piece(r: &mut Reader<'_>, frame: &[u8], limits: &ShardLimits) -> Result<Vec<u8>> {
    check_head(r, frame, "shard data", limits.max_shard)?;
    let bytes = r.read_bytes().map_err(|e| wire_error(e, "shard data"))?;
    if bytes.len() > limits.max_shard {
        return Err(ReplicationError::TooLarge {
            what: "shard data",
            size: bytes.len(),
            max: limits.max_shard,
        });
    }
    Ok(bytes.to_vec())
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate_text(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl ShardRequest {
    /// The id the request is about.
    pub fn id(&self) -> BlobId {
        match self {
            ShardRequest::Get { id }
            | ShardRequest::Have { id }
            | ShardRequest::Push { id, .. } => *id,
        }
    }

    /// The canonical frame (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let extra = match self {
            ShardRequest::Push { data, .. } => data.len() + 9,
            _ => 0,
        };
        let mut w = Writer::with_capacity(40 + extra);
        match self {
            ShardRequest::Get { id } => {
                w.array(2);
                w.uint(GET);
                w.bytes(id.as_bytes());
            }
            ShardRequest::Have { id } => {
                w.array(2);
                w.uint(HAVE);
                w.bytes(id.as_bytes());
            }
            ShardRequest::Push { id, data } => {
                w.array(3);
                w.uint(PUSH);
                w.bytes(id.as_bytes());
                w.bytes(data);
            }
        }
        w.into_bytes()
    }

    /// Decodes one frame under the default [`ShardLimits`].
    pub fn decode(frame: &[u8]) -> Result<Self> {
        Self::decode_with(frame, &ShardLimits::default())
    }

    /// Decodes one frame strictly within `limits` (see the module docs).
    /// Does not check that pushed data matches its id: [`ShardServer`] does.
    pub fn decode_with(frame: &[u8], limits: &ShardLimits) -> Result<Self> {
        const WHAT: &str = "shard request";
        let mut r = Reader::new(frame, limits.wire());
        let (tag, n) = read_head(&mut r, WHAT)?;
        let req = match tag {
            GET => {
                arity(WHAT, tag, n, 2)?;
                ShardRequest::Get {
                    id: read_id(&mut r, WHAT)?,
                }
            }
            HAVE => {
                arity(WHAT, tag, n, 2)?;
                ShardRequest::Have {
                    id: read_id(&mut r, WHAT)?,
                }
            }
            PUSH => {
                arity(WHAT, tag, n, 3)?;
                let id = read_id(&mut r, WHAT)?;
                let data = read_piece(&mut r, frame, limits)?;
                ShardRequest::Push { id, data }
            }
            other => return Err(malformed(WHAT, format!("unknown tag {other}"))),
        };
        r.finish().map_err(|e| wire_error(e, WHAT))?;
        Ok(req)
    }
}

impl ShardResponse {
    /// An `Error` response whose text is cut to the default
    /// [`ShardLimits::max_error`] so that every peer accepts it.
    pub fn error(reason: impl AsRef<str>) -> Self {
        let max = ShardLimits::default().max_error;
        ShardResponse::Error(truncate_text(reason.as_ref(), max).to_owned())
    }

    /// The canonical frame (see the module docs). An `Error` text longer than
    /// the default [`ShardLimits::max_error`] is cut to it on a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        let extra = match self {
            ShardResponse::Data(data) => data.len() + 9,
            ShardResponse::Error(text) => text.len() + 9,
            _ => 0,
        };
        let mut w = Writer::with_capacity(8 + extra);
        match self {
            ShardResponse::Data(data) => {
                w.array(2);
                w.uint(R_DATA);
                w.bytes(data);
            }
            ShardResponse::Have(b) => {
                w.array(2);
                w.uint(R_HAVE);
                w.bool(*b);
            }
            ShardResponse::PushAck => {
                w.array(1);
                w.uint(R_PUSH_ACK);
            }
            ShardResponse::NotFound => {
                w.array(1);
                w.uint(R_NOT_FOUND);
            }
            ShardResponse::Error(text) => {
                w.array(2);
                w.uint(R_ERROR);
                w.text(truncate_text(text, ShardLimits::default().max_error));
            }
        }
        w.into_bytes()
    }

    /// Appends the frame of `ShardResponse::Data(data)` to `out`, the
    /// same bytes as its [`encode`](Self::encode), without building the
    /// response first: a server can write a stored piece straight into an
    /// outgoing buffer.
    pub fn encode_data_into(out: &mut Vec<u8>, data: &[u8]) {
        out.reserve(11 + data.len());
        // array(2), uint(R_DATA), then a byte string head in its shortest form.
        out.push(0x82);
        out.push(R_DATA as u8);
        let len = data.len() as u64;
        if len < 24 {
            out.push(0x40 | len as u8);
        } else if let Ok(n) = u8::try_from(len) {
            out.extend_from_slice(&[0x58, n]);
        } else if let Ok(n) = u16::try_from(len) {
            out.push(0x59);
            out.extend_from_slice(&n.to_be_bytes());
        } else if let Ok(n) = u32::try_from(len) {
            out.push(0x5a);
            out.extend_from_slice(&n.to_be_bytes());
        } else {
            out.push(0x5b);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(data);
    }

    /// Decodes one frame under the default [`ShardLimits`].
    pub fn decode(frame: &[u8]) -> Result<Self> {
        Self::decode_with(frame, &ShardLimits::default())
    }

    /// Decodes one frame strictly within `limits` (see the module docs).
    pub fn decode_with(frame: &[u8], limits: &ShardLimits) -> Result<Self> {
        const WHAT: &str = "shard response";
        let mut r = Reader::new(frame, limits.wire());
        let (tag, n) = read_head(&mut r, WHAT)?;
        let resp = match tag {
            R_DATA => {
                arity(WHAT, tag, n, 2)?;
                ShardResponse::Data(read_piece(&mut r, frame, limits)?)
            }
            R_HAVE => {
                arity(WHAT, tag, n, 2)?;
                ShardResponse::Have(r.read_bool().map_err(|e| wire_error(e, WHAT))?)
            }
            R_PUSH_ACK => {
                arity(WHAT, tag, n, 1)?;
                ShardResponse::PushAck
            }
            R_NOT_FOUND => {
                arity(WHAT, tag, n, 1)?;
                ShardResponse::NotFound
            }
            R_ERROR => {
                arity(WHAT, tag, n, 2)?;
                check_head(&r, frame, "shard error text", limits.max_error)?;
                let text = r
                    .read_text()
                    .map_err(|e| wire_error(e, "shard error text"))?;
                if text.len() > limits.max_error {
                    return Err(ReplicationError::TooLarge {
                        what: "shard error text",
                        size: text.len(),
                        max: limits.max_error,
                    });
                }
                ShardResponse::Error(text.to_owned())
            }
            other => return Err(malformed(WHAT, format!("unknown tag {other}"))),
        };
        r.finish().map_err(|e| wire_error(e, WHAT))?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_written_in_place_is_the_encoded_response() {
        for len in [0, 1, 23, 24, 255, 256, 65_535, 65_536, (1 << 20) + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut out = vec![9_u8; 5];
            ShardResponse::encode_data_into(&mut out, &data);
            assert_eq!(out[..5], [9; 5]);
            assert!(
                out[5..] == ShardResponse::Data(data.clone()).encode(),
                "length {len}"
            );
        }
    }

    #[test]
    fn frames_are_compact_and_round_trip() {
        let id = BlobId::of(b"x");
        let get = ShardRequest::Get { id };
        assert_eq!(get.encode().len(), 1 + 1 + 2 + 32);
        for req in [
            get,
            ShardRequest::Have { id },
            ShardRequest::Push {
                id,
                data: b"x".to_vec(),
            },
        ] {
            assert_eq!(ShardRequest::decode(&req.encode()).unwrap(), req);
        }
        for resp in [
            ShardResponse::Data(vec![1, 2, 3]),
            ShardResponse::Have(true),
            ShardResponse::Have(false),
            ShardResponse::PushAck,
            ShardResponse::NotFound,
            ShardResponse::error("no"),
        ] {
            assert_eq!(ShardResponse::decode(&resp.encode()).unwrap(), resp);
        }
        assert_eq!(ShardResponse::NotFound.encode(), vec![0x81, 0x03]);
    }

    #[test]
    fn oversized_pieces_are_refused_by_their_head() {
        let limits = ShardLimits {
            max_shard: 100,
            max_error: 10,
        };
        let id = BlobId::of(b"x");
        let push = ShardRequest::Push {
            id,
            data: vec![0; 101],
        }
        .encode();
        assert!(matches!(
            ShardRequest::decode_with(&push, &limits),
            Err(ReplicationError::TooLarge {
                size: 101,
                max: 100,
                ..
            })
        ));
        // Only the head of a 4 GiB piece: refused without waiting for the bytes.
        let mut head = vec![0x82, 0x00, 0x5a];
        head.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            ShardResponse::decode_with(&head, &limits),
            Err(ReplicationError::TooLarge { .. })
        ));
        let long = ShardResponse::Error("x".repeat(11)).encode();
        assert!(matches!(
            ShardResponse::decode_with(&long, &limits),
            Err(ReplicationError::TooLarge { .. })
        ));
    }

    #[test]
    fn long_error_texts_are_cut_on_a_char_boundary() {
        let text = "é".repeat(1000);
        let ShardResponse::Error(cut) = ShardResponse::error(&text) else {
            panic!("not an error");
        };
        assert!(cut.len() <= 1024 && cut.len() >= 1022);
        let frame = ShardResponse::Error(text).encode();
        assert_eq!(
            ShardResponse::decode(&frame).unwrap(),
            ShardResponse::Error(cut)
        );
    }
}
