//! The one error type of `ecomesh-identity`.

use std::path::PathBuf;

use ecomesh_types::PeerId;

/// Everything that can go wrong in this crate.
///
/// Decoders of untrusted bytes return [`Error::Decode`], [`Error::Truncated`],
/// [`Error::UnsupportedVersion`] or [`Error::TooLarge`] and never panic.
/// Cryptographic failures are deliberately coarse ([`Error::BadSignature`],
/// [`Error::DecryptFailed`]) so they do not act as oracles.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"write"`, `"rename"`...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A secret-key file that others can read or write.
    #[error(
        "identity key file {path} has mode {mode:04o}, wider than 0600 (owner read/write only); \
         fix it with `chmod 600 {path}` (and check nobody else copied the key)"
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret-key file of the wrong size: truncated, or not an ecomesh identity.
    #[error(
        "identity key file {path} is {len} bytes, expected {expected}; it is truncated or not an \
         ecomesh identity file: restore it from a backup or move it away to generate a new identity"
    )]
    KeyFileLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length of an identity file.
        expected: u64,
    },
    /// A secret-key file with the right length but wrong content.
    #[error(
        "identity key file {path} is not a valid ecomesh identity ({reason}); restore it from a \
         backup or move it away to generate a new identity"
    )]
    KeyFileInvalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The operating system's random source failed.
    #[error("the operating system random source failed: {0}")]
    Random(getrandom::Error),
    /// Bytes that are not a valid Ed25519 public key (or a weak, small-order one).
    #[error("invalid Ed25519 public key")]
    InvalidPublicKey,
    /// A signature that does not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// The key that signed does not hash to the claimed peer id.
    #[error("public key belongs to {key_peer}, but the sender is {claimed}")]
    SenderMismatch {
        /// The peer id claimed by the message.
        claimed: PeerId,
        /// The peer id of the key.
        key_peer: PeerId,
    },
    /// No public key is known for the sender.
    #[error("no public key known for peer {0}")]
    UnknownPeer(PeerId),
    /// Some signatures of a batch failed; the indices of the failing items, ascending.
    #[error("{} of the batch's signatures failed (first at index {})", .failed.len(), .failed.first().copied().unwrap_or(0))]
    BatchVerification {
        /// Indices (into the batch) of the items that did not verify.
        failed: Vec<usize>,
    },
    /// Input shorter than its encoding requires.
    #[error("truncated {what}: needed {needed} more bytes, {available} available")]
    Truncated {
        /// The structure being decoded.
        what: &'static str,
        /// Bytes needed by the next field.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// Input that is not a valid encoding.
    #[error("malformed {what}: {reason}")]
    Decode {
        /// The structure being decoded.
        what: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// An encoding of a kind or version this build does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// The structure being decoded.
        what: &'static str,
        /// The version (or kind) byte found.
        version: u8,
    },
    /// A field or message larger than allowed.
    #[error("{what} is {len} bytes, more than the maximum of {max}")]
    TooLarge {
        /// The field or message.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Authenticated decryption failed: wrong key, or the bytes were altered.
    #[error("decryption failed: wrong key or tampered ciphertext")]
    DecryptFailed,
    /// An invalid argument to a constructor (empty list, duplicate member...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Fewer Shamir shares than the threshold.
    #[error("not enough key shares: {have} distinct, {need} needed")]
    NotEnoughShares {
        /// Distinct shares supplied.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// Shares that do not belong together or do not rebuild the committed key.
    #[error("key shares do not match: {0}")]
    ShareMismatch(&'static str),
    /// Group data sealed under another epoch's key.
    #[error("group data is from epoch {found}, this key is epoch {expected}")]
    WrongEpoch {
        /// This key's epoch.
        expected: u64,
        /// The epoch in the data.
        found: u64,
    },
    /// A capability or declaration used before its start time.
    #[error("not valid before {not_before_ms} ms (now {now_ms} ms)")]
    NotYetValid {
        /// Start of validity, Unix ms.
        not_before_ms: u64,
        /// The time passed in.
        now_ms: u64,
    },
    /// A capability used at or after its expiry.
    #[error("expired at {expires_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// Expiry, Unix ms.
        expires_at_ms: u64,
        /// The time passed in.
        now_ms: u64,
    },
    /// A capability presented by someone it was not granted to, or issued by someone else.
    #[error("capability {field} is {found}, expected {expected}")]
    CapabilityMismatch {
        /// `"audience"` or `"issuer"`.
        field: &'static str,
        /// The peer expected by the verifier.
        expected: PeerId,
        /// The peer in the token.
        found: PeerId,
    },
    /// A capability for another resource.
    #[error("capability is for resource {found:?}, not {expected:?}")]
    WrongResource {
        /// The resource asked for.
        expected: String,
        /// The resource in the token.
        found: String,
    },
    /// A capability that does not grant the action asked for.
    #[error("capability does not grant {0}")]
    ActionNotGranted(&'static str),
    /// A device-link declaration lacking the signature of one of its devices.
    #[error("device-link declaration is not signed by device {0}")]
    MissingDeviceSignature(PeerId),
    /// The identity is not one of the declaration's devices.
    #[error("peer {0} is not named by this declaration")]
    NotADevice(PeerId),
    /// The access policy refused the peer.
    #[error("peer {0} refused by the access policy")]
    PeerRefused(PeerId),
    /// The peer presented our own identity.
    #[error("the peer presented this node's own identity")]
    SelfConnection,
    /// A protocol message that is not valid in the current state.
    #[error("unexpected {0} in the current handshake state")]
    UnexpectedMessage(&'static str),
    /// The handshake's proof of identity is inconsistent (static key not bound to the identity key...).
    #[error("handshake identity check failed: {0}")]
    HandshakeIdentity(&'static str),
    /// The peer's identity differs from the one we expected to reach.
    #[error("expected peer {expected}, reached {found}")]
    WrongPeer {
        /// The peer we meant to reach.
        expected: PeerId,
        /// The peer that answered.
        found: PeerId,
    },
    /// A handshake or session that failed earlier and can no longer be used.
    #[error("the handshake or session failed earlier and is closed")]
    Closed,
    /// The Noise implementation refused an operation.
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    /// A datagram whose nonce was already seen or is too old for the replay window.
    #[error("replayed or too old datagram (nonce {0})")]
    Replay(u64),
    /// The session's message counter is exhausted; start a new handshake.
    #[error("nonce space exhausted; start a new session")]
    NonceExhausted,
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
