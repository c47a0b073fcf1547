//! The one error type of `ecomesh-mesh`.

use std::path::PathBuf;

use ecomesh_types::{MessageId, PeerId};

/// Everything that can go wrong in the mesh layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// Reading or writing the persisted buffer failed.
    #[error("buffer file {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The persisted buffer is not a valid buffer file (truncated, wrong magic,
    /// out-of-bound lengths, trailing bytes...).
    #[error("corrupt buffer file: {reason}")]
    CorruptBuffer {
        /// What was wrong.
        reason: String,
    },
    /// A stored message did not decode.
    #[error("corrupt message in buffer file: {0}")]
    Decode(#[from] ecomesh_wire::WireError),
    /// Signing or verifying failed.
    #[error("identity: {0}")]
    Identity(#[from] ecomesh_identity::Error),
    /// A message the buffer cannot hold at all (larger than its byte bound).
    #[error("message {id} of {size} bytes exceeds the buffer bound of {max} bytes")]
    TooLargeForBuffer {
        /// The message.
        id: MessageId,
        /// Its accounted size.
        size: usize,
        /// The buffer's byte bound.
        max: usize,
    },
    /// The message has passed its TTL.
    #[error("message {0} has expired")]
    Expired(MessageId),
    /// The message has used all its hops.
    #[error("message {0} has reached its hop limit")]
    HopsExhausted(MessageId),
    /// `send` was given a message whose recipient is not the peer it was sent to.
    #[error("message recipient {recipient:?} does not match the destination {peer}")]
    RecipientMismatch {
        /// The destination passed to `send`.
        peer: PeerId,
        /// The message's recipient field.
        recipient: Option<PeerId>,
    },
    /// The store-and-forward buffer is full and the message could not get room:
    /// everything held ranks higher, or is kept (a message this node sent and
    /// waits to see acknowledged, of equal or higher priority). Nothing was
    /// stored, nothing held was evicted; the caller may offer it again later.
    #[error(
        "message {id} refused: the store-and-forward buffer is full \
         (limit {max_messages} messages, {max_bytes} bytes)"
    )]
    BufferFull {
        /// The message refused.
        id: MessageId,
        /// The buffer's bound on messages.
        max_messages: usize,
        /// The buffer's bound on accounted bytes.
        max_bytes: usize,
    },
    /// The recipient's share of the store-and-forward buffer is full (seed
    /// 003's offline queue limits): the message is not stored, and may be
    /// offered again once earlier ones to the same peer are delivered or expire.
    #[error(
        "the offline queue for {peer} is full: message {id} not stored \
         (limit {max_messages} messages, {max_bytes} bytes per destination)"
    )]
    DestinationFull {
        /// The message refused.
        id: MessageId,
        /// Its recipient.
        peer: PeerId,
        /// The bound on messages per destination.
        max_messages: usize,
        /// The bound on accounted bytes per destination.
        max_bytes: usize,
    },
    /// A key request or reply whose payload is malformed (wrong length, not a
    /// valid Ed25519 key).
    #[error("malformed key discovery message: {reason}")]
    MalformedKeyMessage {
        /// What was wrong.
        reason: &'static str,
    },
    /// A key reply whose key does not hash to the peer id it claims to be the key of.
    #[error("key reply for {wanted} carries the key of {got}")]
    KeyMismatch {
        /// The peer id the reply claims the key is for.
        wanted: PeerId,
        /// The peer id the key actually belongs to.
        got: PeerId,
    },
    /// An onion cell that does not decode or does not authenticate.
    #[error("bad onion cell: {reason}")]
    BadCell {
        /// What was wrong.
        reason: &'static str,
    },
    /// An onion circuit path that cannot be built (see [`crate::onion`]).
    #[error("onion path refused: {reason}")]
    OnionPath {
        /// What was wrong.
        reason: &'static str,
    },
    /// A bound of the onion router was reached; nothing was queued.
    #[error("onion limit reached: {what} (max {max})")]
    OnionLimit {
        /// Which bound.
        what: &'static str,
        /// Its value.
        max: usize,
    },
    /// No onion circuit to this destination.
    #[error("no onion circuit to {0}")]
    NoCircuit(PeerId),
}
