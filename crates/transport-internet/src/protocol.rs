//! The `/ecomesh/req/1.0.0` request-response protocol: typed requests and responses, a
//! strict byte encoding, and (with the `swarm` feature) a bounded libp2p codec,
//! `EcomeshCodec`.
//!
//! # Wire form
//! Each request or response travels on its own libp2p stream as one frame: a 4-byte
//! big-endian body length, then the body. A length over the configured [`Limits`] is
//! refused before anything is allocated for it, and the body is read incrementally, so a
//! peer that announces a large frame and sends nothing costs nothing.
//!
//! Bodies start with a tag byte:
//!
//! | tag  | meaning                      | rest of the body                                   |
//! |------|------------------------------|----------------------------------------------------|
//! | 0x01 | [`Request::Message`]         | the full `ecomesh-wire` encoding of the message    |
//! | 0x02 | [`Request::VersionNode`]     | the CID bytes (1..=[`MAX_CID_LEN`])                |
//! | 0x03 | [`Request::ShardGet`]        | the CID bytes                                      |
//! | 0x04 | [`Request::ShardHave`]       | the CID bytes                                      |
//! | 0x05 | [`Request::ShardPush`]       | CID length (1 byte), CID, then the shard bytes     |
//! | 0x06 | [`Request::Hello`]           | nothing                                            |
//! | 0x81 | [`Response::Ack`]            | nothing                                            |
//! | 0x82 | [`Response::Data`]           | the bytes                                          |
//! | 0x83 | [`Response::Have`]           | one byte, 0 or 1                                   |
//! | 0x84 | [`Response::PushAck`]        | nothing                                            |
//! | 0x85 | [`Response::NotFound`]       | nothing                                            |
//! | 0x86 | [`Response::Refused`]        | nothing                                            |
//! | 0x87 | [`Response::Error`]          | UTF-8 text, at most [`MAX_ERROR_LEN`] bytes        |
//!
//! Decoding is strict: unknown tags, trailing bytes, empty or oversized CIDs, a `Have`
//! byte other than 0/1 and invalid UTF-8 are typed errors.
//!
//! # Message streams
//! Peers that both list `MESSAGE_PROTOCOL` (`/ecomesh/msg/1.0.0`) in identify carry
//! [`Request::Message`]s on one long-lived stream per direction instead of one
//! request-response exchange each: the stream is a sequence of frames, each exactly the
//! frame of a [`Request::Message`] (4-byte big-endian length, tag `0x01`, the message's
//! full encoding), with no responses. Any other tag on such a stream is an error
//! ([`decode_stream_message`]) and ends the stream. The same [`Limits`] apply.

#[cfg(feature = "swarm")]
use std::io;

use ecomesh_types::{ContentId, NetworkMessage};
#[cfg(feature = "swarm")]
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
#[cfg(feature = "swarm")]
use libp2p::{StreamProtocol, request_response};
use multiaddr::Multiaddr;

use crate::error::InternetError;

/// The protocol name negotiated with multistream-select.
#[cfg(feature = "swarm")]
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ecomesh/req/1.0.0");

/// The protocol of the long-lived message stream (see the module docs): a one-way
/// sequence of message frames. Peers that do not list it are sent messages over
/// [`PROTOCOL`].
#[cfg(feature = "swarm")]
pub const MESSAGE_PROTOCOL: StreamProtocol = StreamProtocol::new("/ecomesh/msg/1.0.0");

/// Longest CID accepted, in bytes (CIDv1 with a SHA-256 multihash is 36).
pub const MAX_CID_LEN: usize = 128;

/// Longest error text accepted in a [`Response::Error`], in bytes.
pub const MAX_ERROR_LEN: usize = 1024;

/// Largest encoded `NetworkMessage` the transport carries: the seed's 16 MiB.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Bytes a body may take beyond its payload: tag, CID length and CID.
pub const BODY_OVERHEAD: usize = 2 + MAX_CID_LEN;

const TAG_MESSAGE: u8 = 0x01;
const TAG_VERSION_NODE: u8 = 0x02;
const TAG_SHARD_GET: u8 = 0x03;
const TAG_SHARD_HAVE: u8 = 0x04;
const TAG_SHARD_PUSH: u8 = 0x05;
const TAG_HELLO: u8 = 0x06;
const TAG_ACK: u8 = 0x81;
const TAG_DATA: u8 = 0x82;
const TAG_HAVE: u8 = 0x83;
const TAG_PUSH_ACK: u8 = 0x84;
const TAG_NOT_FOUND: u8 = 0x85;
const TAG_REFUSED: u8 = 0x86;
const TAG_ERROR: u8 = 0x87;

/// A request to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// An ecomesh message for the mesh; answered with [`Response::Ack`] once delivered
    /// to the receiving transport's listeners.
    Message(NetworkMessage),
    /// Fetch the version node (history DAG node) with this CID.
    VersionNode {
        /// The node's CID.
        cid: ContentId,
    },
    /// Fetch the shard with this CID.
    ShardGet {
        /// The shard's CID.
        cid: ContentId,
    },
    /// Ask whether the peer holds the shard with this CID.
    ShardHave {
        /// The shard's CID.
        cid: ContentId,
    },
    /// Sent once after identify on each new connection; answered with [`Response::Ack`]
    /// after the receiver listed the sender as a peer, so neither side reports the link
    /// before both accepted it.
    Hello,
    /// Replicate a shard to the peer.
    ShardPush {
        /// The shard's CID.
        cid: ContentId,
        /// The shard bytes.
        data: Vec<u8>,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A message was delivered.
    Ack,
    /// The requested version node or shard.
    Data(Vec<u8>),
    /// Whether the shard is held.
    Have(bool),
    /// A pushed shard was accepted.
    PushAck,
    /// The requested content is not held.
    NotFound,
    /// The peer's policy or handler refused the request.
    Refused,
    /// The handler failed; the text says why.
    Error(String),
}

/// Size limits of frame bodies, enforced on both sending and receiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body.
    pub max_request: usize,
    /// Largest response body.
    pub max_response: usize,
}

impl Default for Limits {
    /// A 16 MiB message or shard plus [`BODY_OVERHEAD`], both ways.
    fn default() -> Self {
        Limits {
            max_request: MAX_MESSAGE_SIZE + BODY_OVERHEAD,
            max_response: MAX_MESSAGE_SIZE + BODY_OVERHEAD,
        }
    }
}

fn check_cid(cid: &[u8]) -> Result<(), InternetError> {
    if cid.is_empty() {
        return Err(InternetError::Malformed("empty CID"));
    }
    if cid.len() > MAX_CID_LEN {
        return Err(InternetError::Malformed("CID longer than 128 bytes"));
    }
    Ok(())
}

fn check_size(size: usize, max: usize) -> Result<(), InternetError> {
    if size > max {
        return Err(InternetError::FrameTooLarge {
            size: size as u64,
            max,
        });
    }
    Ok(())
}

/// Encodes a request body; [`InternetError::FrameTooLarge`] over `max`, and
/// [`InternetError::Malformed`] for an empty or oversized CID.
pub fn encode_request(req: &Request, max: usize) -> Result<Vec<u8>, InternetError> {
    let out = match req {
        Request::Message(msg) => {
            // The tag goes in front of the encoding in place (the encoder reserves
            // room to spare): no second buffer of the message's size.
            let mut out = ecomesh_wire::encode_message(msg);
            check_size(out.len() + 1, max)?;
            out.insert(0, TAG_MESSAGE);
            out
        }
        Request::Hello => vec![TAG_HELLO],
        Request::VersionNode { cid } => tagged_cid(TAG_VERSION_NODE, cid)?,
        Request::ShardGet { cid } => tagged_cid(TAG_SHARD_GET, cid)?,
        Request::ShardHave { cid } => tagged_cid(TAG_SHARD_HAVE, cid)?,
        Request::ShardPush { cid, data } => {
            check_cid(&cid.0)?;
            check_size(2 + cid.0.len() + data.len(), max)?;
            let mut out = Vec::with_capacity(2 + cid.0.len() + data.len());
            out.push(TAG_SHARD_PUSH);
            // check_cid bounds the length to MAX_CID_LEN, which fits a byte.
            out.push(u8::try_from(cid.0.len()).map_err(|_| InternetError::Malformed("CID"))?);
            out.extend_from_slice(&cid.0);
            out.extend_from_slice(data);
            out
        }
    };
    check_size(out.len(), max)?;
    Ok(out)
}

fn tagged_cid(tag: u8, cid: &ContentId) -> Result<Vec<u8>, InternetError> {
    check_cid(&cid.0)?;
    let mut out = Vec::with_capacity(1 + cid.0.len());
    out.push(tag);
    out.extend_from_slice(&cid.0);
    Ok(out)
}

/// Decodes a request body of at most `max` bytes.
pub fn decode_request(body: &[u8], max: usize) -> Result<Request, InternetError> {
    check_size(body.len(), max)?;
    let (&tag, rest) = body
        .split_first()
        .ok_or(InternetError::Malformed("empty body"))?;
    let cid = |rest: &[u8]| -> Result<ContentId, InternetError> {
        check_cid(rest)?;
        Ok(ContentId(rest.to_vec()))
    };
    match tag {
        TAG_MESSAGE => Ok(Request::Message(ecomesh_wire::decode_message(rest)?)),
        TAG_HELLO if rest.is_empty() => Ok(Request::Hello),
        TAG_HELLO => Err(InternetError::Malformed("trailing bytes")),
        TAG_VERSION_NODE => Ok(Request::VersionNode { cid: cid(rest)? }),
        TAG_SHARD_GET => Ok(Request::ShardGet { cid: cid(rest)? }),
        TAG_SHARD_HAVE => Ok(Request::ShardHave { cid: cid(rest)? }),
        TAG_SHARD_PUSH => {
            let (&len, rest) = rest
                .split_first()
                .ok_or(InternetError::Malformed("push without CID length"))?;
            let len = usize::from(len);
            if rest.len() < len {
                return Err(InternetError::Malformed("push CID truncated"));
            }
            let (c, data) = rest.split_at(len);
            Ok(Request::ShardPush {
                cid: cid(c)?,
                data: data.to_vec(),
            })
        }
        _ => Err(InternetError::Malformed("unknown request tag")),
    }
}

/// Decodes one frame body of a message stream: a [`Request::Message`] body of at most
/// `max` bytes. Any other request (or response) tag is [`InternetError::Malformed`].
pub fn decode_stream_message(body: &[u8], max: usize) -> Result<NetworkMessage, InternetError> {
    check_size(body.len(), max)?;
    match body.split_first() {
        Some((&TAG_MESSAGE, rest)) => Ok(ecomesh_wire::decode_message(rest)?),
        Some(_) => Err(InternetError::Malformed("stream frame is not a message")),
        None => Err(InternetError::Malformed("empty body")),
    }
}

/// The five bytes that precede a message's `encoded_len`-byte encoding in its frame:
/// the 4-byte big-endian body length (tag included) and the [`Request::Message`] tag.
/// [`InternetError::FrameTooLarge`] when the body would exceed `max`. So
/// `head || encode_message(msg)` is `frame(encode_request(&Request::Message(msg)))`.
pub fn message_frame_head(encoded_len: usize, max: usize) -> Result<[u8; 5], InternetError> {
    let size = encoded_len + 1;
    check_size(size, max)?;
    let len = u32::try_from(size).map_err(|_| InternetError::FrameTooLarge {
        size: size as u64,
        max,
    })?;
    let [a, b, c, d] = len.to_be_bytes();
    Ok([a, b, c, d, TAG_MESSAGE])
}

/// Encodes a response body; [`InternetError::FrameTooLarge`] over `max`, and an error
/// text over [`MAX_ERROR_LEN`] is cut at a character boundary.
pub fn encode_response(res: &Response, max: usize) -> Result<Vec<u8>, InternetError> {
    let out = match res {
        Response::Ack => vec![TAG_ACK],
        Response::PushAck => vec![TAG_PUSH_ACK],
        Response::NotFound => vec![TAG_NOT_FOUND],
        Response::Refused => vec![TAG_REFUSED],
        Response::Have(h) => vec![TAG_HAVE, u8::from(*h)],
        Response::Data(d) => {
            check_size(d.len() + 1, max)?;
            let mut out = Vec::with_capacity(d.len() + 1);
            out.push(TAG_DATA);
            out.extend_from_slice(d);
            out
        }
        Response::Error(text) => {
            let mut end = text.len().min(MAX_ERROR_LEN);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let mut out = Vec::with_capacity(end + 1);
            out.push(TAG_ERROR);
            out.extend_from_slice(&text.as_bytes()[..end]);
            out
        }
    };
    check_size(out.len(), max)?;
    Ok(out)
}

/// Decodes a response body of at most `max` bytes.
pub fn decode_response(body: &[u8], max: usize) -> Result<Response, InternetError> {
    check_size(body.len(), max)?;
    let (&tag, rest) = body
        .split_first()
        .ok_or(InternetError::Malformed("empty body"))?;
    let empty = |r: Response| {
        if rest.is_empty() {
            Ok(r)
        } else {
            Err(InternetError::Malformed("trailing bytes"))
        }
    };
    match tag {
        TAG_ACK => empty(Response::Ack),
        TAG_PUSH_ACK => empty(Response::PushAck),
        TAG_NOT_FOUND => empty(Response::NotFound),
        TAG_REFUSED => empty(Response::Refused),
        TAG_HAVE => match rest {
            [0] => Ok(Response::Have(false)),
            [1] => Ok(Response::Have(true)),
            _ => Err(InternetError::Malformed("have flag is not one byte 0 or 1")),
        },
        TAG_DATA => Ok(Response::Data(rest.to_vec())),
        TAG_ERROR => {
            if rest.len() > MAX_ERROR_LEN {
                return Err(InternetError::Malformed("error text too long"));
            }
            let text = std::str::from_utf8(rest)
                .map_err(|_| InternetError::Malformed("error text is not UTF-8"))?;
            Ok(Response::Error(text.to_owned()))
        }
        _ => Err(InternetError::Malformed("unknown response tag")),
    }
}

/// Splits one frame off the front of `buf`: `Ok(Some((body, consumed)))` for a whole
/// frame, `Ok(None)` when more bytes are needed, an error when the length head is over
/// `max` or zero. Sans-io form of what the async codec reads.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, InternetError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len_bytes = [0_u8; 4];
    len_bytes.copy_from_slice(head);
    let len = u32::from_be_bytes(len_bytes);
    let len = frame_len(len, max)?;
    Ok(buf.get(4..4 + len).map(|body| (body, 4 + len)))
}

fn frame_len(len: u32, max: usize) -> Result<usize, InternetError> {
    let len_usize = usize::try_from(len).map_err(|_| InternetError::FrameTooLarge {
        size: u64::from(len),
        max,
    })?;
    if len_usize > max {
        return Err(InternetError::FrameTooLarge {
            size: u64::from(len),
            max,
        });
    }
    if len_usize == 0 {
        return Err(InternetError::Malformed("empty frame"));
    }
    Ok(len_usize)
}

/// Prefixes `body` with its 4-byte big-endian length.
pub fn frame(body: &[u8]) -> Result<Vec<u8>, InternetError> {
    let len = u32::try_from(body.len()).map_err(|_| InternetError::FrameTooLarge {
        size: body.len() as u64,
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

#[cfg(feature = "swarm")]
fn invalid(e: InternetError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The first read of a frame body takes at most this many bytes; each later one at most
/// as many as arrived so far, so the buffer grows only as bytes arrive.
#[cfg(feature = "swarm")]
const FIRST_READ: usize = 64 << 10;

/// Reads one frame body of at most `max` bytes. The buffer grows only as bytes arrive
/// (at most doubling, from `FIRST_READ`), and is read into in large pieces.
#[cfg(feature = "swarm")]
pub async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut head = [0_u8; 4];
    io.read_exact(&mut head).await?;
    let len = frame_len(u32::from_be_bytes(head), max).map_err(invalid)?;
    let mut body = Vec::with_capacity(len.min(FIRST_READ));
    while body.len() < len {
        let have = body.len();
        let want = (len - have).min(have.max(FIRST_READ));
        body.resize(have + want, 0);
        let mut at = have;
        while at < have + want {
            match io.read(&mut body[at..]).await? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "frame ended early",
                    ));
                }
                n => at += n,
            }
        }
    }
    Ok(body)
}

#[cfg(feature = "swarm")]
async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| {
        invalid(InternetError::FrameTooLarge {
            size: body.len() as u64,
            max: u32::MAX as usize,
        })
    })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await?;
    io.close().await
}

/// Most addresses in one peers-topic announcement.
pub const MAX_ANNOUNCED_ADDRS: usize = 16;
/// Longest encoded address in an announcement, in bytes.
pub const MAX_ADDR_LEN: usize = 256;

/// Encodes the announcement a node publishes on the peers topic: a count byte, then each
/// address as a 2-byte big-endian length and the multiaddr bytes. Addresses beyond
/// [`MAX_ANNOUNCED_ADDRS`] or longer than [`MAX_ADDR_LEN`] are left out.
pub fn encode_announcement(addrs: &[Multiaddr]) -> Result<Vec<u8>, InternetError> {
    let kept: Vec<Vec<u8>> = addrs
        .iter()
        .map(|a| a.to_vec())
        .filter(|b| !b.is_empty() && b.len() <= MAX_ADDR_LEN)
        .take(MAX_ANNOUNCED_ADDRS)
        .collect();
    let mut out = Vec::with_capacity(1 + kept.iter().map(|b| b.len() + 2).sum::<usize>());
    out.push(u8::try_from(kept.len()).map_err(|_| InternetError::Malformed("count"))?);
    for b in kept {
        let len = u16::try_from(b.len()).map_err(|_| InternetError::Malformed("address"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// Decodes a peers-topic announcement strictly (count within bounds, every address
/// non-empty, at most [`MAX_ADDR_LEN`] bytes and a valid multiaddr, no trailing bytes).
pub fn decode_announcement(bytes: &[u8]) -> Result<Vec<Multiaddr>, InternetError> {
    let (&count, mut rest) = bytes
        .split_first()
        .ok_or(InternetError::Malformed("empty announcement"))?;
    let count = usize::from(count);
    if count > MAX_ANNOUNCED_ADDRS {
        return Err(InternetError::Malformed("too many announced addresses"));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (head, tail) = rest
            .split_at_checked(2)
            .ok_or(InternetError::Malformed("truncated address length"))?;
        let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
        if len == 0 || len > MAX_ADDR_LEN {
            return Err(InternetError::Malformed(
                "announced address length out of range",
            ));
        }
        let (addr, tail) = tail
            .split_at_checked(len)
            .ok_or(InternetError::Malformed("truncated address"))?;
        let addr = Multiaddr::try_from(addr.to_vec())
            .map_err(|_| InternetError::Malformed("invalid multiaddr"))?;
        out.push(addr);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(InternetError::Malformed("trailing bytes"));
    }
    Ok(out)
}

/// The bounded libp2p codec of [`PROTOCOL`].
#[cfg(feature = "swarm")]
#[derive(Clone, Copy, Debug, Default)]
pub struct EcomeshCodec {
    /// The size limits enforced.
    pub limits: Limits,
}

#[cfg(feature = "swarm")]
impl request_response::Codec for EcomeshCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_frame(io, self.limits.max_request).await?;
        decode_request(&body, self.limits.max_request).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_frame(io, self.limits.max_response).await?;
        decode_response(&body, self.limits.max_response).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if let Request::Message(msg) = &req {
            // The length and tag go out ahead of the message's encoding, which is
            // written as it is: no tagged copy of the body. Same bytes as
            // `frame(encode_request(..))`.
            let encoded = ecomesh_wire::encode_message(msg);
            let head =
                message_frame_head(encoded.len(), self.limits.max_request).map_err(invalid)?;
            io.write_all(&head).await?;
            io.write_all(&encoded).await?;
            return io.close().await;
        }
        let body = encode_request(&req, self.limits.max_request).map_err(invalid)?;
        write_frame(io, &body).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = encode_response(&res, self.limits.max_response).map_err(invalid)?;
        write_frame(io, &body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_types::{MessageId, PeerId, Signature};
    use proptest::prelude::*;

    const MAX: usize = 1 << 16;

    fn msg(payload: Vec<u8>) -> NetworkMessage {
        NetworkMessage {
            id: MessageId::new_v4([3; 16]),
            message_type: "t".into(),
            payload,
            sender: PeerId::from_digest([1; 32]),
            recipient: None,
            timestamp_ms: 5,
            ttl_secs: 60,
            hop_count: 0,
            max_hops: 3,
            signature: Signature::UNSIGNED,
        }
    }

    fn arb_cid() -> impl Strategy<Value = ContentId> {
        proptest::collection::vec(any::<u8>(), 1..=MAX_CID_LEN).prop_map(ContentId)
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256).prop_map(|p| Request::Message(msg(p))),
            Just(Request::Hello),
            arb_cid().prop_map(|cid| Request::VersionNode { cid }),
            arb_cid().prop_map(|cid| Request::ShardGet { cid }),
            arb_cid().prop_map(|cid| Request::ShardHave { cid }),
            (arb_cid(), proptest::collection::vec(any::<u8>(), 0..512))
                .prop_map(|(cid, data)| Request::ShardPush { cid, data }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::Ack),
            Just(Response::PushAck),
            Just(Response::NotFound),
            Just(Response::Refused),
            any::<bool>().prop_map(Response::Have),
            proptest::collection::vec(any::<u8>(), 0..512).prop_map(Response::Data),
            "[a-zA-Zé ]{0,64}".prop_map(Response::Error),
        ]
    }

    #[test]
    fn known_encodings() {
        let cid = ContentId(vec![0xAA, 0xBB]);
        assert_eq!(
            encode_request(
                &Request::ShardPush {
                    cid: cid.clone(),
                    data: vec![9]
                },
                MAX
            )
            .unwrap(),
            vec![0x05, 2, 0xAA, 0xBB, 9]
        );
        assert_eq!(
            encode_request(&Request::ShardHave { cid }, MAX).unwrap(),
            vec![0x04, 0xAA, 0xBB]
        );
        assert_eq!(
            encode_response(&Response::Have(true), MAX).unwrap(),
            vec![0x83, 1]
        );
        assert_eq!(frame(&[7, 8]).unwrap(), vec![0, 0, 0, 2, 7, 8]);
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        for bad in [
            &[][..],
            &[0x02][..],
            &[0x05][..],
            &[0x05, 3, 1][..],
            &[0x05, 0, 1][..],
            &[0x7f, 1][..],
            &[0x06, 0][..],
            &[0x01, 0xff][..],
        ] {
            assert!(decode_request(bad, MAX).is_err(), "{bad:?}");
        }
        let long_cid = vec![0x03; MAX_CID_LEN + 2];
        assert!(matches!(
            decode_request(&long_cid, MAX),
            Err(InternetError::Malformed(_))
        ));
        for bad in [
            &[][..],
            &[0x81, 0][..],
            &[0x83][..],
            &[0x83, 2][..],
            &[0x83, 1, 1][..],
            &[0x87, 0xff][..],
            &[0x01][..],
        ] {
            assert!(decode_response(bad, MAX).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oversized_is_refused_both_ways() {
        let big = Request::ShardPush {
            cid: ContentId(vec![1]),
            data: vec![0; 100],
        };
        assert!(matches!(
            encode_request(&big, 50),
            Err(InternetError::FrameTooLarge { max: 50, .. })
        ));
        let body = encode_request(&big, MAX).unwrap();
        assert!(matches!(
            decode_request(&body, 50),
            Err(InternetError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            encode_response(&Response::Data(vec![0; 100]), 50),
            Err(InternetError::FrameTooLarge { .. })
        ));
        // A length head over the limit is refused before the body arrives.
        assert!(matches!(
            split_frame(&[0xff, 0xff, 0xff, 0xff], MAX),
            Err(InternetError::FrameTooLarge {
                size: 0xffff_ffff,
                ..
            })
        ));
        assert!(split_frame(&[0, 0, 0, 0], MAX).is_err());
        assert_eq!(split_frame(&[0, 0, 0, 3, 1], MAX).unwrap(), None);
    }

    #[test]
    fn stream_frames_are_message_request_frames() {
        let m = msg(vec![7; 300]);
        let enc = ecomesh_wire::encode_message(&m);
        let mut framed = message_frame_head(enc.len(), MAX).unwrap().to_vec();
        framed.extend_from_slice(&enc);
        let want = frame(&encode_request(&Request::Message(m.clone()), MAX).unwrap()).unwrap();
        assert_eq!(framed, want);
        let (body, used) = split_frame(&framed, MAX).unwrap().unwrap();
        assert_eq!(used, framed.len());
        assert_eq!(decode_stream_message(body, MAX).unwrap(), m);
        assert!(matches!(
            message_frame_head(MAX, MAX),
            Err(InternetError::FrameTooLarge { .. })
        ));
        // Only message bodies: a hello, a shard request or a response is refused.
        for bad in [
            &[TAG_HELLO][..],
            &[TAG_SHARD_GET, 1][..],
            &[TAG_ACK][..],
            &[][..],
        ] {
            assert!(matches!(
                decode_stream_message(bad, MAX),
                Err(InternetError::Malformed(_))
            ));
        }
        assert!(matches!(
            decode_stream_message(&[TAG_MESSAGE, 0xff], MAX),
            Err(InternetError::Decode(_))
        ));
        assert!(matches!(
            decode_stream_message(&framed[4..], 10),
            Err(InternetError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn long_error_text_is_cut_on_a_char_boundary() {
        let text = "é".repeat(MAX_ERROR_LEN);
        let body = encode_response(&Response::Error(text), MAX).unwrap();
        assert!(body.len() <= MAX_ERROR_LEN + 1);
        let Response::Error(t) = decode_response(&body, MAX).unwrap() else {
            panic!("not an error response");
        };
        assert_eq!(t.len(), MAX_ERROR_LEN);
    }

    #[cfg(feature = "swarm")]
    #[test]
    fn async_codec_reads_frames_and_refuses_announced_floods() {
        futures::executor::block_on(async {
            let mut codec = EcomeshCodec {
                limits: Limits {
                    max_request: 64,
                    max_response: 64,
                },
            };
            use request_response::Codec;
            let mut out = Vec::new();
            let req = Request::ShardGet {
                cid: ContentId(vec![1, 2, 3]),
            };
            codec
                .write_request(
                    &PROTOCOL,
                    &mut futures::io::Cursor::new(&mut out),
                    req.clone(),
                )
                .await
                .unwrap();
            let got = codec
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&out))
                .await
                .unwrap();
            assert_eq!(got, req);
            // Announces 4 GiB: refused from the head alone.
            let e = codec
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(vec![0xff; 4]))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // Announces 60 bytes, sends 3, then ends.
            let e = codec
                .read_request(
                    &PROTOCOL,
                    &mut futures::io::Cursor::new(vec![0, 0, 0, 60, 3, 1, 2]),
                )
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        });
    }

    /// The codec writes a message request as `frame(encode_request(..))` without
    /// building the tagged body, and reads a body far larger than its first read.
    #[cfg(feature = "swarm")]
    #[test]
    fn async_codec_writes_message_requests_byte_identically() {
        use request_response::Codec;
        futures::executor::block_on(async {
            let mut codec = EcomeshCodec {
                limits: Limits::default(),
            };
            for len in [0usize, 1, 70_000, 1 << 20] {
                let req = Request::Message(NetworkMessage {
                    id: MessageId([3; 16]),
                    message_type: "bulk".into(),
                    payload: (0..len).map(|i| (i * 7) as u8).collect(),
                    sender: PeerId::from_digest([1; 32]),
                    recipient: Some(PeerId::from_digest([2; 32])),
                    timestamp_ms: 9,
                    ttl_secs: 60,
                    hop_count: 0,
                    max_hops: 3,
                    signature: Signature::UNSIGNED,
                });
                let mut out = Vec::new();
                codec
                    .write_request(
                        &PROTOCOL,
                        &mut futures::io::Cursor::new(&mut out),
                        req.clone(),
                    )
                    .await
                    .unwrap();
                let want = frame(&encode_request(&req, Limits::default().max_request).unwrap());
                assert_eq!(out, want.unwrap(), "payload {len}");
                let got = codec
                    .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&out))
                    .await
                    .unwrap();
                assert_eq!(got, req);
                // One byte short: the read ends early.
                let e = codec
                    .read_request(
                        &PROTOCOL,
                        &mut futures::io::Cursor::new(&out[..out.len() - 1]),
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            }
            // Over the limit: refused before anything is written.
            let mut small = EcomeshCodec {
                limits: Limits {
                    max_request: 64,
                    max_response: 64,
                },
            };
            let big = Request::Message(NetworkMessage {
                id: MessageId([3; 16]),
                message_type: "bulk".into(),
                payload: vec![0; 100],
                sender: PeerId::from_digest([1; 32]),
                recipient: None,
                timestamp_ms: 9,
                ttl_secs: 60,
                hop_count: 0,
                max_hops: 3,
                signature: Signature::UNSIGNED,
            });
            let mut out = Vec::new();
            let e = small
                .write_request(&PROTOCOL, &mut futures::io::Cursor::new(&mut out), big)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(out.is_empty());
        });
    }

    proptest! {
        #[test]
        fn prop_request_round_trip(req in arb_request()) {
            let body = encode_request(&req, MAX).unwrap();
            prop_assert_eq!(decode_request(&body, MAX).unwrap(), req);
            let framed = frame(&body).unwrap();
            let (b, used) = split_frame(&framed, MAX).unwrap().unwrap();
            prop_assert_eq!(b, &body[..]);
            prop_assert_eq!(used, framed.len());
        }

        #[test]
        fn prop_announcement_round_trip(ports in proptest::collection::vec((any::<[u8; 4]>(), any::<u16>(), any::<bool>()), 0..20)) {
            let addrs: Vec<Multiaddr> = ports
                .iter()
                .map(|(ip, port, quic)| {
                    let a = Multiaddr::empty().with(multiaddr::Protocol::Ip4((*ip).into()));
                    if *quic {
                        a.with(multiaddr::Protocol::Udp(*port))
                            .with(multiaddr::Protocol::QuicV1)
                    } else {
                        a.with(multiaddr::Protocol::Tcp(*port))
                    }
                })
                .collect();
            let body = encode_announcement(&addrs).unwrap();
            let got = decode_announcement(&body).unwrap();
            prop_assert_eq!(&got[..], &addrs[..addrs.len().min(MAX_ANNOUNCED_ADDRS)]);
            let _ = decode_announcement(&body[..body.len() - 1]);
        }

        #[test]
        fn prop_announcement_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(addrs) = decode_announcement(&bytes) {
                prop_assert!(addrs.len() <= MAX_ANNOUNCED_ADDRS);
                prop_assert_eq!(encode_announcement(&addrs).unwrap(), bytes);
            }
        }

        #[test]
        fn prop_response_round_trip(res in arb_response()) {
            let body = encode_response(&res, MAX).unwrap();
            prop_assert_eq!(decode_response(&body, MAX).unwrap(), res);
        }

        #[test]
        fn prop_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_request(&bytes, MAX);
            let _ = decode_response(&bytes, MAX);
            let _ = decode_stream_message(&bytes, MAX);
            let _ = split_frame(&bytes, MAX);
        }

        #[test]
        fn prop_decoded_requests_reencode_identically(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(req) = decode_request(&bytes, MAX) {
                // Messages re-encode canonically; every other form is byte-exact.
                if !matches!(req, Request::Message(_)) {
                    prop_assert_eq!(encode_request(&req, MAX).unwrap(), bytes.clone());
                }
            }
            if let Ok(res) = decode_response(&bytes, MAX) {
                prop_assert_eq!(encode_response(&res, MAX).unwrap(), bytes);
            }
        }
    }
}
