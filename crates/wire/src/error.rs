//! The one error type of `ecomesh-wire`.

/// Everything that can go wrong while encoding, decoding, hashing or parsing.
///
/// Decode errors carry the byte offset (for CBOR) or character offset (for
/// DAG-JSON, counted in bytes of the UTF-8 text) where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended before the item at `offset` was complete.
    #[error("input truncated at byte {offset}")]
    Truncated {
        /// Where the incomplete item starts or where more bytes were needed.
        offset: usize,
    },
    /// Bytes follow the single top-level item.
    #[error("{count} trailing bytes after the item, starting at byte {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many extra bytes there are.
        count: usize,
    },
    /// An integer, length or tag was not encoded in its shortest form.
    #[error("non-canonical (not shortest) integer or length encoding at byte {offset}")]
    NonShortestEncoding {
        /// Offset of the item head.
        offset: usize,
    },
    /// An indefinite-length item or a "break" byte.
    #[error("indefinite-length item or break at byte {offset}")]
    IndefiniteLength {
        /// Offset of the item head.
        offset: usize,
    },
    /// Additional information 28..=30, which CBOR reserves.
    #[error("reserved additional information at byte {offset}")]
    ReservedInfo {
        /// Offset of the item head.
        offset: usize,
    },
    /// A simple value other than false, true and null (this includes `undefined`).
    #[error("unsupported simple value {value} at byte {offset}")]
    UnsupportedSimple {
        /// Offset of the item head.
        offset: usize,
        /// The simple value.
        value: u8,
    },
    /// A 16- or 32-bit float: DAG-CBOR floats are always 64-bit.
    #[error("float at byte {offset} is not encoded as 64-bit")]
    ShortFloat {
        /// Offset of the item head.
        offset: usize,
    },
    /// NaN or an infinity, which the IPLD data model does not have.
    ///
    /// `offset` is `None` when the float was met while encoding.
    #[error("NaN or infinite float{}", fmt_offset(*.offset))]
    NonFiniteFloat {
        /// Offset of the item head when decoding.
        offset: Option<usize>,
    },
    /// A CBOR integer outside `i64`, the range of `Value::Integer`.
    #[error("integer at byte {offset} is outside the 64-bit signed range")]
    IntegerOutOfRange {
        /// Offset of the item head.
        offset: usize,
    },
    /// A tag other than 42 (DAG-CBOR links).
    #[error("unsupported tag {tag} at byte {offset}")]
    UnsupportedTag {
        /// Offset of the tag head.
        offset: usize,
        /// The tag number.
        tag: u64,
    },
    /// A link that is not a byte string holding 0x00 followed by exactly one binary CID.
    ///
    /// `offset` is `None` when the link was met while encoding.
    #[error("invalid link{}: {reason}", fmt_offset(*.offset))]
    InvalidLink {
        /// Offset of the tag or string when decoding.
        offset: Option<usize>,
        /// What is wrong.
        reason: &'static str,
    },
    /// A text string that is not valid UTF-8.
    #[error("invalid UTF-8 in text at byte {offset}")]
    InvalidUtf8 {
        /// Offset of the string head.
        offset: usize,
    },
    /// A map key of a kind this form does not allow (DAG-CBOR: only strings).
    #[error("map key at byte {offset} has the wrong kind")]
    InvalidKey {
        /// Offset of the key.
        offset: usize,
    },
    /// Map keys not in canonical order (DAG-CBOR: length first, then bytewise).
    #[error("map key at byte {offset} is out of canonical order")]
    UnsortedKeys {
        /// Offset of the key.
        offset: usize,
    },
    /// The same key twice in one map.
    #[error("duplicate map key at byte {offset}")]
    DuplicateKey {
        /// Offset of the second occurrence.
        offset: usize,
    },
    /// More nested arrays/maps than the configured limit.
    #[error("nesting deeper than the limit of {max}")]
    DepthExceeded {
        /// The configured limit.
        max: usize,
    },
    /// A length prefix larger than the configured limit.
    #[error("length {len} at byte {offset} exceeds the limit of {max}")]
    LengthExceeded {
        /// Offset of the item head.
        offset: usize,
        /// The declared length.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// A CBOR item of a kind the schema does not expect here.
    #[error("unexpected item at byte {offset}: expected {expected}")]
    UnexpectedKind {
        /// Offset of the item head.
        offset: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// A typed codec met a field it does not know.
    #[error("unknown field {field:?} in {context}")]
    UnknownField {
        /// The structure being decoded.
        context: &'static str,
        /// The key, as text.
        field: String,
    },
    /// A typed codec missed a required field.
    #[error("missing field {field:?} in {context}")]
    MissingField {
        /// The structure being decoded.
        context: &'static str,
        /// The field name.
        field: &'static str,
    },
    /// A field of a typed codec has an invalid value (wrong kind, length or range,
    /// or a default that the canonical form omits).
    #[error("invalid field {field:?} in {context}: {reason}")]
    InvalidField {
        /// The structure being decoded.
        context: &'static str,
        /// The field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A CID that cannot be parsed or is not in canonical form.
    #[error("invalid CID: {reason}")]
    InvalidCid {
        /// What is wrong.
        reason: String,
    },
    /// A multihash function this crate cannot compute.
    #[error("unsupported hash function 0x{code:x}")]
    UnsupportedHash {
        /// The multihash code.
        code: u64,
    },
    /// Bytes whose digest does not match the CID they were expected to have.
    #[error("content does not match its CID: expected {expected}, computed {actual}")]
    CidMismatch {
        /// The CID that was expected.
        expected: String,
        /// The CID computed from the bytes with the same codec and hash.
        actual: String,
    },
    /// Malformed or non-DAG-JSON text.
    #[error("invalid DAG-JSON at byte {offset}: {reason}")]
    Json {
        /// Offset in the UTF-8 input.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A map whose `"/"` entry collides with the DAG-JSON link or bytes forms.
    ///
    /// `offset` is `None` when the map was met while encoding.
    #[error("map uses the reserved DAG-JSON \"/\" key ambiguously{}", fmt_offset(*.offset))]
    ReservedKey {
        /// Offset of the map in the input when decoding.
        offset: Option<usize>,
    },
    /// A CAR varint that runs past 9 bytes or is not in its shortest form.
    #[error("invalid CAR varint at byte {offset}: {reason}")]
    CarVarint {
        /// Offset of its first byte in the file.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A CAR header whose version is not 1 (a CARv2 file says 2).
    #[error("CAR version {version} is not supported (only CARv1)")]
    CarVersion {
        /// The version the header gives.
        version: i64,
    },
    /// A CAR file with more blocks than the configured limit.
    #[error("more than {max} blocks in the CAR file")]
    TooManyBlocks {
        /// The configured limit.
        max: u64,
    },
    /// Reading or writing a stream failed.
    #[error("I/O error ({kind}): {message}")]
    Io {
        /// The kind of failure.
        kind: std::io::ErrorKind,
        /// The underlying error's text.
        message: String,
    },
}

fn fmt_offset(offset: Option<usize>) -> String {
    match offset {
        Some(o) => format!(" at byte {o}"),
        None => String::new(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = WireError> = std::result::Result<T, E>;
