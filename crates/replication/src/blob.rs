//! Content-addressed blobs (seed 001, "Sharding Strategy").
//!
//! A blob is named by the blake3 hash of its bytes ([`BlobId`]). How it is
//! stored is described by a [`Manifest`], chosen by size ([`BlobConfig`]):
//!
//! | size (defaults) | [`Encoding`] | pieces |
//! |---|---|---|
//! | up to 16 MiB | `none` | 1: the blob itself |
//! | up to 100 MiB | `chunked` | sequential chunks of [`BlobConfig::chunk_size`] (default 1 MiB) |
//! | larger | `rs-4-7` | 7 Reed-Solomon shards: 4 data + 3 parity |
//!
//! Every piece is itself content-addressed, so each one is verified on arrival
//! ([`BlobId::verify`]). A `rs-4-7` blob is rebuilt from any 4 of its 7 shards;
//! [`place_shards`] spreads the shards so that losing one peer never loses more
//! than 2 of them.
//!
//! # Reed-Solomon layout
//!
//! `reed-solomon-simd` needs equal shards of a non-zero, even number of bytes.
//! The shard length is `ceil(len / 4)` rounded up to even (at least 2); the
//! blob is zero-padded to 4 shard lengths, cut into data shards 0..4, and the
//! 3 recovery shards are shards 4..7. The manifest records the original length
//! so that the padding is dropped on rebuild.
//!
//! # Manifest encoding
//!
//! A manifest is one DAG-CBOR map, canonical (so the same blob stored the same
//! way always has the same manifest bytes), with IPLD links so that any IPLD
//! tool can walk from a manifest to its pieces:
//!
//! ```text
//! {"id": link, "len": int, "pieces": [link, ...], "encoding": "none" | "chunked" | "rs-4-7", "piece_len": int}
//! ```
//!
//! Links are CIDv1 with codec `raw` (0x55) and a blake3 multihash, the same
//! form as [`BlobId::to_text`]. `piece_len` is the blob length for `none`, the
//! chunk size for `chunked` (the last chunk may be shorter) and the shard
//! length for `rs-4-7`.
//!
//! # Shards on the wire
//!
//! [`shard`] (also `ecomesh_replication::shard`) is the sans-io shard
//! protocol that moves these pieces between peers: requests and responses,
//! the per-peer shard store trait, the server and the fetcher. All blob and
//! shard logic that needs no store and no network lives under this module;
//! storing blobs and driving the protocol over the mesh is
//! `ecomesh_p2p_storage::blobs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use ecomesh_types::{ContentId, Map, PeerId, Value};
use ecomesh_wire::Limits;

use crate::ReplicationError;

pub mod shard;

type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// Data shards of the `rs-4-7` encoding.
pub const DATA_SHARDS: usize = 4;
/// Parity (recovery) shards of the `rs-4-7` encoding.
pub const PARITY_SHARDS: usize = 3;
/// All shards of the `rs-4-7` encoding.
pub const TOTAL_SHARDS: usize = DATA_SHARDS + PARITY_SHARDS;

/// The binary CID prefix of a [`BlobId`]: CIDv1, codec raw, multihash blake3, 32 bytes.
const CID_PREFIX: [u8; 4] = [0x01, 0x55, 0x1e, 0x20];

/// The blake3 hash of a blob or of one of its pieces.
///
/// Its text form ([`BlobId::to_text`], `Display`, `FromStr`) is the CIDv1 of
/// the bytes with codec `raw` and a blake3 multihash in base32-lower
/// (`bafkr4i...`, 59 characters); it never changes for the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId([u8; 32]);

impl BlobId {
    /// Length of the digest in bytes.
    pub const LEN: usize = 32;

    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobId(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps a blake3 digest.
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        BlobId(digest)
    }

    /// The digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 32 raw digest bytes; any other length is [`ReplicationError::Malformed`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let digest: [u8; 32] = bytes.try_into().map_err(|_| ReplicationError::Malformed {
            what: "blob id",
            detail: format!("{} bytes, expected 32", bytes.len()),
        })?;
        Ok(BlobId(digest))
    }

    /// True when `bytes` hash to this id.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        BlobId::of(bytes) == *self
    }

    /// Checks that `bytes` hash to this id; otherwise
    /// [`ReplicationError::HashMismatch`] naming `peer` (who sent them).
    pub fn verify(&self, bytes: &[u8], peer: Option<PeerId>) -> Result<()> {
        if self.matches(bytes) {
            Ok(())
        } else {
            Err(ReplicationError::HashMismatch {
                expected: self.to_text(),
                peer,
            })
        }
    }

    /// The binary CIDv1 (raw, blake3), 36 bytes.
    pub fn to_cid_bytes(&self) -> [u8; 36] {
        let mut out = [0_u8; 36];
        out[..4].copy_from_slice(&CID_PREFIX);
        out[4..].copy_from_slice(&self.0);
        out
    }

    /// The [`ContentId`] (binary CID) of this id, for links and content location.
    pub fn to_content_id(&self) -> ContentId {
        ContentId(self.to_cid_bytes().to_vec())
    }

    /// Parses a [`ContentId`]; only the raw/blake3 CIDv1 form of a [`BlobId`] is accepted.
    pub fn from_content_id(id: &ContentId) -> Result<Self> {
        Self::from_cid_bytes(&id.0)
    }

    fn from_cid_bytes(bytes: &[u8]) -> Result<Self> {
        match bytes.split_at_checked(CID_PREFIX.len()) {
            Some((prefix, digest)) if prefix == CID_PREFIX && digest.len() == Self::LEN => {
                Self::from_slice(digest)
            }
            _ => Err(ReplicationError::Malformed {
                what: "blob id",
                detail: "not a CIDv1 with codec raw and a 32-byte blake3 multihash".to_owned(),
            }),
        }
    }

    /// The text form: base32-lower CIDv1 (raw, blake3).
    pub fn to_text(&self) -> String {
        match ecomesh_wire::cid::cid_from_binary(&self.to_cid_bytes()) {
            Ok(cid) => ecomesh_wire::cid_to_text(&cid),
            // The 36 bytes above are always one canonical binary CID.
            Err(_) => String::from("<invalid>"),
        }
    }

    /// Parses the text form strictly (exactly what [`BlobId::to_text`] prints).
    pub fn parse(text: &str) -> Result<Self> {
        let cid = ecomesh_wire::parse_cid(text)?;
        Self::from_cid_bytes(&cid.to_bytes())
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_text())
    }
}

impl FromStr for BlobId {
    type Err = ReplicationError;
    fn from_str(s: &str) -> Result<Self> {
        BlobId::parse(s)
    }
}

/// Hashes a blob fed in order, in any number of slices: [`BlobHasher::finish`]
/// is the [`BlobId`] of all the bytes fed, as [`BlobId::of`] of their
/// concatenation, without holding them.
#[derive(Clone, Debug, Default)]
pub struct BlobHasher(blake3::Hasher);

impl BlobHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        BlobHasher::default()
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The id of every byte fed so far.
    pub fn finish(&self) -> BlobId {
        BlobId(*self.0.finalize().as_bytes())
    }
}

/// How a blob is cut into pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// One piece: the blob itself (its piece id is the blob id).
    None,
    /// Sequential chunks of a fixed size, the last one possibly shorter.
    Chunked,
    /// Reed-Solomon, 4 data + 3 parity shards of equal length; any 4 rebuild the blob.
    Rs4x7,
}

impl Encoding {
    /// The seed's name: `none`, `chunked` or `rs-4-7`.
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::None => "none",
            Encoding::Chunked => "chunked",
            Encoding::Rs4x7 => "rs-4-7",
        }
    }

    /// The encoding with the seed's name `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Encoding::None),
            "chunked" => Some(Encoding::Chunked),
            "rs-4-7" => Some(Encoding::Rs4x7),
            _ => None,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Size thresholds for choosing an [`Encoding`]; the defaults are the seed's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobConfig {
    /// Blobs of at most this many bytes are stored whole (`none`). Default 16 MiB.
    pub none_max: u64,
    /// Blobs above `none_max` and up to this many bytes are `chunked`; larger
    /// ones are `rs-4-7`. Default 100 MiB.
    pub chunked_max: u64,
    /// Chunk size of `chunked` blobs. Default 1 MiB.
    pub chunk_size: u64,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig {
            none_max: 16 * MIB,
            chunked_max: 100 * MIB,
            chunk_size: MIB,
        }
    }
}

impl BlobConfig {
    /// Checks that `chunk_size > 0` and `none_max <= chunked_max`.
    pub fn validate(&self) -> Result<()> {
        if self.chunk_size == 0 {
            return Err(ReplicationError::InvalidConfig(
                "blob chunk_size must be at least 1".to_owned(),
            ));
        }
        if self.none_max > self.chunked_max {
            return Err(ReplicationError::InvalidConfig(format!(
                "blob none_max ({}) exceeds chunked_max ({})",
                self.none_max, self.chunked_max
            )));
        }
        Ok(())
    }

    /// The encoding of a blob of `len` bytes.
    pub fn encoding_for(&self, len: u64) -> Encoding {
        if len <= self.none_max {
            Encoding::None
        } else if len <= self.chunked_max {
            Encoding::Chunked
        } else {
            Encoding::Rs4x7
        }
    }
}

/// The shard length of a `rs-4-7` blob of `len` bytes: `ceil(len / 4)` rounded
/// up to even, at least 2 (the rule of `reed-solomon-simd`).
pub fn rs_shard_len(len: u64) -> u64 {
    let quarter = len.div_ceil(DATA_SHARDS as u64);
    quarter.saturating_add(quarter % 2).max(2)
}

/// Bounds on a manifest read from untrusted bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Most pieces (chunks) a manifest may list. Default 65 536.
    pub max_pieces: usize,
    /// Largest piece (`piece_len`) accepted. Default 256 MiB, which bounds an
    /// `rs-4-7` blob to 1 GiB and every single transfer to 256 MiB.
    pub max_piece_len: u64,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        ManifestLimits {
            max_pieces: 65_536,
            max_piece_len: 256 * MIB,
        }
    }
}

/// How one blob is stored: its id and length, its encoding and the ids of its pieces.
///
/// A manifest is only built by [`encode_blob`] or decoded by
/// [`Manifest::from_bytes`], and both guarantee it is consistent: the piece
/// count and lengths follow from `len`, `encoding` and `piece_len` (see the
/// module docs), and a `none` manifest's only piece is the blob itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    id: BlobId,
    len: u64,
    encoding: Encoding,
    piece_len: u64,
    pieces: Vec<BlobId>,
}

impl Manifest {
    /// The blob's id (hash of all its bytes).
    pub fn id(&self) -> BlobId {
        self.id
    }

    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for the empty blob.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How the blob is cut.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The blob length (`none`), chunk size (`chunked`) or shard length (`rs-4-7`).
    pub fn piece_len(&self) -> u64 {
        self.piece_len
    }

    /// The ids of the pieces, in order (for `rs-4-7`: data shards 0..4, then parity 4..7).
    pub fn pieces(&self) -> &[BlobId] {
        &self.pieces
    }

    /// How many verified pieces rebuild the blob: all of them, except 4 for `rs-4-7`.
    pub fn pieces_needed(&self) -> usize {
        match self.encoding {
            Encoding::Rs4x7 => DATA_SHARDS,
            Encoding::None | Encoding::Chunked => self.pieces.len(),
        }
    }

    /// The exact length of piece `index`, or `None` when there is no such piece.
    pub fn piece_size(&self, index: usize) -> Option<u64> {
        if index >= self.pieces.len() {
            return None;
        }
        match self.encoding {
            Encoding::None | Encoding::Rs4x7 => Some(self.piece_len),
            Encoding::Chunked => {
                let start = (index as u64).saturating_mul(self.piece_len);
                Some(self.len.saturating_sub(start).min(self.piece_len))
            }
        }
    }

    /// Checks internal consistency and `limits` (every constructor calls this).
    fn check(&self, limits: &ManifestLimits) -> Result<()> {
        let bad = |detail: String| ReplicationError::Malformed {
            what: "blob manifest",
            detail,
        };
        if self.pieces.len() > limits.max_pieces {
            return Err(ReplicationError::TooLarge {
                what: "blob manifest pieces",
                size: self.pieces.len(),
                max: limits.max_pieces,
            });
        }
        if self.piece_len > limits.max_piece_len {
            return Err(ReplicationError::TooLarge {
                what: "blob piece",
                size: usize::try_from(self.piece_len).unwrap_or(usize::MAX),
                max: usize::try_from(limits.max_piece_len).unwrap_or(usize::MAX),
            });
        }
        match self.encoding {
            Encoding::None => {
                if self.pieces != [self.id] {
                    return Err(bad("a `none` blob's one piece is the blob".to_owned()));
                }
                if self.piece_len != self.len {
                    return Err(bad("a `none` blob's piece_len is its length".to_owned()));
                }
            }
            Encoding::Chunked => {
                if self.piece_len == 0 {
                    return Err(bad("chunk size 0".to_owned()));
                }
                let expected = self.len.div_ceil(self.piece_len);
                if self.pieces.len() as u64 != expected {
                    return Err(bad(format!(
                        "{} chunks listed, {expected} expected",
                        self.pieces.len()
                    )));
                }
            }
            Encoding::Rs4x7 => {
                if self.pieces.len() != TOTAL_SHARDS {
                    return Err(bad(format!("{} shards, 7 expected", self.pieces.len())));
                }
                if self.piece_len != rs_shard_len(self.len) {
                    return Err(bad(format!(
                        "shard length {} does not follow from the blob length",
                        self.piece_len
                    )));
                }
            }
        }
        Ok(())
    }

    /// The manifest as a DAG-CBOR value (see the module docs).
    pub fn to_value(&self) -> Result<Value> {
        let int = |n: u64, what: &'static str| {
            i64::try_from(n)
                .map(Value::Integer)
                .map_err(|_| ReplicationError::TooLarge {
                    what,
                    size: usize::try_from(n).unwrap_or(usize::MAX),
                    max: i64::MAX as usize,
                })
        };
        let mut m = Map::new();
        m.insert("id".to_owned(), Value::Link(self.id.to_content_id()));
        m.insert("len".to_owned(), int(self.len, "blob length")?);
        m.insert(
            "pieces".to_owned(),
            Value::Array(
                self.pieces
                    .iter()
                    .map(|p| Value::Link(p.to_content_id()))
                    .collect(),
            ),
        );
        m.insert(
            "encoding".to_owned(),
            Value::Text(self.encoding.name().to_owned()),
        );
        m.insert("piece_len".to_owned(), int(self.piece_len, "piece length")?);
        Ok(Value::Map(m))
    }

    /// The canonical DAG-CBOR bytes of the manifest.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(ecomesh_wire::to_dag_cbor(&self.to_value()?)?)
    }

    /// Decodes a manifest strictly under the default [`ManifestLimits`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with(bytes, &ManifestLimits::default())
    }

    /// Decodes a manifest strictly: non-canonical DAG-CBOR, unknown or missing
    /// fields, inconsistent piece counts or lengths and anything over `limits`
    /// are refused. Every accepted input re-encodes to exactly itself.
    pub fn from_bytes_with(bytes: &[u8], limits: &ManifestLimits) -> Result<Self> {
        let wire_limits = Limits {
            max_depth: 2,
            // Bounds the pieces array before it is read; links are 37 bytes.
            max_len: (limits.max_pieces as u64).max(64),
        };
        let value = ecomesh_wire::from_dag_cbor_with(bytes, &wire_limits)?;
        Self::from_value(&value, limits)
    }

    /// Reads a manifest from a DAG-CBOR value (see [`Manifest::from_bytes_with`]).
    pub fn from_value(value: &Value, limits: &ManifestLimits) -> Result<Self> {
        let bad = |detail: &str| ReplicationError::Malformed {
            what: "blob manifest",
            detail: detail.to_owned(),
        };
        let Value::Map(m) = value else {
            return Err(bad("not a map"));
        };
        const KEYS: [&str; 5] = ["id", "len", "pieces", "encoding", "piece_len"];
        if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(&format!("unknown field {k:?}")));
        }
        let field = |k: &str| m.get(k).ok_or_else(|| bad(&format!("missing field {k:?}")));
        let link = |v: &Value| match v {
            Value::Link(c) => BlobId::from_content_id(c),
            _ => Err(bad("expected a link")),
        };
        let uint = |v: &Value, k: &str| match v {
            Value::Integer(n) => u64::try_from(*n).map_err(|_| bad(&format!("negative {k}"))),
            _ => Err(bad(&format!("{k} is not an integer"))),
        };
        let id = link(field("id")?)?;
        let len = uint(field("len")?, "len")?;
        let piece_len = uint(field("piece_len")?, "piece_len")?;
        let encoding = match field("encoding")? {
            Value::Text(t) => Encoding::from_name(t).ok_or_else(|| bad("unknown encoding"))?,
            _ => return Err(bad("encoding is not text")),
        };
        let Value::Array(items) = field("pieces")? else {
            return Err(bad("pieces is not an array"));
        };
        if items.len() > limits.max_pieces {
            return Err(ReplicationError::TooLarge {
                what: "blob manifest pieces",
                size: items.len(),
                max: limits.max_pieces,
            });
        }
        let pieces = items.iter().map(link).collect::<Result<Vec<_>>>()?;
        let manifest = Manifest {
            id,
            len,
            encoding,
            piece_len,
            pieces,
        };
        manifest.check(limits)?;
        Ok(manifest)
    }
}

/// A blob cut into verified pieces, ready to be stored or pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBlob {
    /// How the blob is stored.
    pub manifest: Manifest,
    /// The piece bytes, in manifest order; piece `i` hashes to `manifest.pieces()[i]`.
    pub pieces: Vec<Vec<u8>>,
}

/// Cuts `data` into pieces as `config` says (see the module docs).
///
/// Fails only on an invalid `config` or on a blob whose pieces would exceed
/// the default [`ManifestLimits`] (too many chunks, or `rs-4-7` shards over
/// 256 MiB); use [`encode_blob_with`] for other limits.
pub fn encode_blob(data: &[u8], config: &BlobConfig) -> Result<EncodedBlob> {
    encode_blob_with(data, config, &ManifestLimits::default())
}

/// [`encode_blob`] with explicit limits, which the manifest must meet so that
/// a peer decoding it with the same limits accepts it.
pub fn encode_blob_with(
    data: &[u8],
    config: &BlobConfig,
    limits: &ManifestLimits,
) -> Result<EncodedBlob> {
    config.validate()?;
    let id = BlobId::of(data);
    let len = data.len() as u64;
    let encoding = config.encoding_for(len);
    let (piece_len, pieces): (u64, Vec<Vec<u8>>) = match encoding {
        Encoding::None => (len, vec![data.to_vec()]),
        Encoding::Chunked => {
            let size = usize::try_from(config.chunk_size).unwrap_or(usize::MAX);
            let count = data.len().div_ceil(size);
            if count > limits.max_pieces {
                return Err(ReplicationError::TooLarge {
                    what: "blob manifest pieces",
                    size: count,
                    max: limits.max_pieces,
                });
            }
            (
                config.chunk_size,
                data.chunks(size).map(<[u8]>::to_vec).collect(),
            )
        }
        Encoding::Rs4x7 => {
            let shard_len = rs_shard_len(len);
            if shard_len > limits.max_piece_len {
                return Err(ReplicationError::TooLarge {
                    what: "blob piece",
                    size: usize::try_from(shard_len).unwrap_or(usize::MAX),
                    max: usize::try_from(limits.max_piece_len).unwrap_or(usize::MAX),
                });
            }
            (shard_len, rs_encode(data, shard_len)?)
        }
    };
    let manifest = Manifest {
        id,
        len,
        encoding,
        piece_len,
        pieces: pieces.iter().map(|p| BlobId::of(p)).collect(),
    };
    manifest.check(limits)?;
    Ok(EncodedBlob { manifest, pieces })
}

fn rs_error(e: reed_solomon_simd::Error) -> ReplicationError {
    ReplicationError::Unrecoverable {
        what: "rs-4-7 blob".to_owned(),
        detail: e.to_string(),
    }
}

/// The 7 shards of `data`: 4 zero-padded data shards of `shard_len`, then 3 parity.
fn rs_encode(data: &[u8], shard_len: u64) -> Result<Vec<Vec<u8>>> {
    let shard_len = usize::try_from(shard_len).map_err(|_| ReplicationError::TooLarge {
        what: "blob piece",
        size: usize::MAX,
        max: usize::MAX,
    })?;
    let mut shards: Vec<Vec<u8>> = (0..DATA_SHARDS)
        .map(|i| {
            let start = (i * shard_len).min(data.len());
            let end = ((i + 1) * shard_len).min(data.len());
            let mut shard = Vec::with_capacity(shard_len);
            shard.extend_from_slice(&data[start..end]);
            shard.resize(shard_len, 0);
            shard
        })
        .collect();
    let parity =
        reed_solomon_simd::encode(DATA_SHARDS, PARITY_SHARDS, &shards).map_err(rs_error)?;
    shards.extend(parity);
    Ok(shards)
}

/// Rebuilds a blob from pieces keyed by their index in `manifest.pieces()`.
///
/// Every given piece is verified against its id first (a mismatch is
/// [`ReplicationError::HashMismatch`]); then all pieces are needed, except for
/// `rs-4-7` where any 4 shards do (more are ignored). Fewer is
/// [`ReplicationError::Unrecoverable`]. The result is checked against the
/// blob id, so a returned blob is always the right one.
pub fn rebuild(manifest: &Manifest, pieces: &BTreeMap<usize, Vec<u8>>) -> Result<Vec<u8>> {
    for (&index, bytes) in pieces {
        let id = manifest
            .pieces
            .get(index)
            .ok_or_else(|| ReplicationError::Malformed {
                what: "blob piece index",
                detail: format!("{index} >= {}", manifest.pieces.len()),
            })?;
        id.verify(bytes, None)?;
    }
    rebuild_verified(manifest, pieces)
}

/// [`rebuild_verified`] taking the pieces, so that the blob is assembled in
/// about its own size of memory: a `none` blob's one piece is the blob (no
/// copy), and `chunked` pieces are released as they are copied out. Checked
/// against the blob id like every rebuild.
pub(crate) fn rebuild_verified_owned(
    manifest: &Manifest,
    mut pieces: BTreeMap<usize, Vec<u8>>,
) -> Result<Vec<u8>> {
    let complete = pieces.len() == manifest.pieces.len()
        && pieces.keys().copied().eq(0..manifest.pieces.len())
        && pieces
            .iter()
            .all(|(&i, b)| manifest.piece_size(i) == Some(b.len() as u64));
    let out = match manifest.encoding {
        Encoding::None if complete => pieces.pop_first().map(|(_, b)| b).unwrap_or_default(),
        Encoding::Chunked if complete => {
            let len =
                usize::try_from(manifest.len).map_err(|_| ReplicationError::Unrecoverable {
                    what: manifest.id.to_text(),
                    detail: "too large".to_owned(),
                })?;
            let mut out = Vec::with_capacity(len);
            while let Some((_, bytes)) = pieces.pop_first() {
                out.extend_from_slice(&bytes);
            }
            out
        }
        _ => return rebuild_verified(manifest, &pieces),
    };
    manifest.id.verify(&out, None)?;
    Ok(out)
}

/// [`rebuild`] for pieces the caller has already verified.
pub(crate) fn rebuild_verified(
    manifest: &Manifest,
    pieces: &BTreeMap<usize, Vec<u8>>,
) -> Result<Vec<u8>> {
    let unrecoverable = |detail: String| ReplicationError::Unrecoverable {
        what: manifest.id.to_text(),
        detail,
    };
    let available = pieces
        .keys()
        .filter(|&&i| i < manifest.pieces.len())
        .count();
    if available < manifest.pieces_needed() {
        return Err(unrecoverable(format!(
            "{available} of {} pieces, {} needed",
            manifest.pieces.len(),
            manifest.pieces_needed()
        )));
    }
    for (&index, bytes) in pieces {
        if manifest.piece_size(index) != Some(bytes.len() as u64) {
            return Err(ReplicationError::Malformed {
                what: "blob piece",
                detail: format!("piece {index} has {} bytes", bytes.len()),
            });
        }
    }
    let len = usize::try_from(manifest.len).map_err(|_| unrecoverable("too large".to_owned()))?;
    let mut out = Vec::with_capacity(len);
    match manifest.encoding {
        Encoding::None | Encoding::Chunked => {
            for bytes in pieces.values() {
                out.extend_from_slice(bytes);
            }
        }
        Encoding::Rs4x7 => {
            let originals = pieces.range(..DATA_SHARDS);
            if originals.clone().count() == DATA_SHARDS {
                for bytes in pieces.range(..DATA_SHARDS).map(|(_, b)| b) {
                    out.extend_from_slice(bytes);
                }
            } else {
                let recovery = pieces
                    .range(DATA_SHARDS..TOTAL_SHARDS)
                    .map(|(i, b)| (i - DATA_SHARDS, b));
                let restored = reed_solomon_simd::decode(
                    DATA_SHARDS,
                    PARITY_SHARDS,
                    originals.map(|(i, b)| (*i, b)),
                    recovery,
                )
                .map_err(rs_error)?;
                for i in 0..DATA_SHARDS {
                    let shard = pieces
                        .get(&i)
                        .or_else(|| restored.get(&i))
                        .ok_or_else(|| unrecoverable(format!("shard {i} not restored")))?;
                    out.extend_from_slice(shard);
                }
            }
            out.truncate(len);
        }
    }
    manifest.id.verify(&out, None)?;
    Ok(out)
}

/// The fewest distinct peers [`place_shards`] accepts: with at most 2 shards
/// per peer, 7 shards need 4 peers.
pub const MIN_SHARD_PEERS: usize = TOTAL_SHARDS.div_ceil(2);

/// Chooses a peer for each of the 7 shards of a `rs-4-7` blob.
///
/// `candidates` are in order of preference (the caller ranks them, for example
/// by the partner selection of the replication policy); repeats are ignored.
/// Shard `i` goes to the `i mod n`-th distinct candidate, so:
/// - with 7 or more distinct candidates every shard has its own peer (the
///   first 7), and any 3 peers may be lost;
/// - with 4 to 6, no peer holds more than 2 shards, so losing any one peer
///   still leaves at least 5 shards (4 are enough);
/// - with fewer than 4 that promise cannot be kept and the result is
///   [`ReplicationError::Unrecoverable`].
///
/// Pure and deterministic: the same candidates always give the same placement.
pub fn place_shards(candidates: &[PeerId]) -> Result<[PeerId; TOTAL_SHARDS]> {
    let mut seen = BTreeSet::new();
    let distinct: Vec<PeerId> = candidates
        .iter()
        .filter(|p| seen.insert(**p))
        .copied()
        .collect();
    if distinct.len() < MIN_SHARD_PEERS {
        return Err(ReplicationError::Unrecoverable {
            what: "shard placement".to_owned(),
            detail: format!(
                "{} distinct peers, at least {MIN_SHARD_PEERS} needed for at most 2 of 7 shards each",
                distinct.len()
            ),
        });
    }
    Ok(std::array::from_fn(|i| distinct[i % distinct.len()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> BlobConfig {
        BlobConfig {
            none_max: 16,
            chunked_max: 100,
            chunk_size: 7,
        }
    }

    #[test]
    fn blob_id_text_round_trips_and_is_stable() {
        let id = BlobId::of(b"hello");
        let text = id.to_text();
        assert!(text.starts_with("bafkr4i"), "{text}");
        assert_eq!(text.len(), 59);
        assert_eq!(text.parse::<BlobId>().unwrap(), id);
        assert_eq!(BlobId::from_content_id(&id.to_content_id()).unwrap(), id);
        // Other CIDs (dag-cbor, sha2-256) are not blob ids.
        let other = ecomesh_wire::cid_to_text(&ecomesh_wire::cid_of_dag_cbor(b"\xa0"));
        assert!(BlobId::parse(&other).is_err());
        assert!(BlobId::parse(&text.to_uppercase()).is_err());
    }

    #[test]
    fn encoding_follows_the_thresholds() {
        let c = small();
        assert_eq!(c.encoding_for(0), Encoding::None);
        assert_eq!(c.encoding_for(16), Encoding::None);
        assert_eq!(c.encoding_for(17), Encoding::Chunked);
        assert_eq!(c.encoding_for(100), Encoding::Chunked);
        assert_eq!(c.encoding_for(101), Encoding::Rs4x7);
        let d = BlobConfig::default();
        assert_eq!(d.encoding_for(16 * MIB), Encoding::None);
        assert_eq!(d.encoding_for(100 * MIB + 1), Encoding::Rs4x7);
        assert!(
            BlobConfig {
                chunk_size: 0,
                ..small()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn shard_len_is_even_and_covers_the_blob() {
        for len in 0..300_u64 {
            let s = rs_shard_len(len);
            assert!(s >= 2 && s.is_multiple_of(2));
            assert!(s * 4 >= len);
            assert!(s * 4 < len + 12, "{len} -> {s}");
        }
    }

    #[test]
    fn chunked_blob_rebuilds_and_needs_every_chunk() {
        let data: Vec<u8> = (0..50_u8).collect();
        let enc = encode_blob(&data, &small()).unwrap();
        assert_eq!(enc.manifest.encoding(), Encoding::Chunked);
        assert_eq!(enc.pieces.len(), 8);
        assert_eq!(enc.pieces[7].len(), 1);
        let all: BTreeMap<_, _> = enc.pieces.iter().cloned().enumerate().collect();
        assert_eq!(rebuild(&enc.manifest, &all).unwrap(), data);
        let mut missing = all.clone();
        missing.remove(&3);
        assert!(matches!(
            rebuild(&enc.manifest, &missing),
            Err(ReplicationError::Unrecoverable { .. })
        ));
        let mut wrong = all;
        wrong.insert(2, vec![0; 7]);
        assert!(matches!(
            rebuild(&enc.manifest, &wrong),
            Err(ReplicationError::HashMismatch { .. })
        ));
    }

    #[test]
    fn owned_rebuild_matches_rebuild_for_every_encoding() {
        let rs = BlobConfig {
            none_max: 0,
            chunked_max: 0,
            chunk_size: 7,
        };
        for (config, len) in [(small(), 10), (small(), 50), (rs, 50), (small(), 0)] {
            let data: Vec<u8> = (0..len as u8).collect();
            let enc = encode_blob(&data, &config).unwrap();
            let all: BTreeMap<_, _> = enc.pieces.iter().cloned().enumerate().collect();
            assert_eq!(
                rebuild_verified_owned(&enc.manifest, all.clone()).unwrap(),
                data
            );
            // Pieces that do not fit the manifest are refused, not assembled.
            let mut short = all.clone();
            if let Some(p) = short.get_mut(&0) {
                p.push(0);
                assert!(rebuild_verified_owned(&enc.manifest, short).is_err());
            }
            if enc.manifest.encoding() == Encoding::Rs4x7 {
                let lost: BTreeMap<_, _> = all.into_iter().skip(3).collect();
                assert_eq!(rebuild_verified_owned(&enc.manifest, lost).unwrap(), data);
            }
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_inconsistency() {
        for len in [0_usize, 5, 16, 17, 99, 101, 1000] {
            let data = vec![7_u8; len];
            let m = encode_blob(&data, &small()).unwrap().manifest;
            let bytes = m.to_bytes().unwrap();
            let back = Manifest::from_bytes(&bytes).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.to_bytes().unwrap(), bytes);
        }
        let m = encode_blob(&[1; 50], &small()).unwrap().manifest;
        let mut v = m.to_value().unwrap();
        if let Value::Map(map) = &mut v {
            map.insert("len".to_owned(), Value::Integer(57));
        }
        let bytes = ecomesh_wire::to_dag_cbor(&v).unwrap();
        assert!(Manifest::from_bytes(&bytes).is_err());
        let tight = ManifestLimits {
            max_pieces: 4,
            ..ManifestLimits::default()
        };
        assert!(matches!(
            Manifest::from_bytes_with(&m.to_bytes().unwrap(), &tight),
            Err(ReplicationError::TooLarge { .. })
        ));
    }

    #[test]
    fn placement_spreads_and_caps_at_two() {
        let peers: Vec<PeerId> = (0..9_u8).map(|i| PeerId::from_digest([i; 32])).collect();
        let p = place_shards(&peers).unwrap();
        assert_eq!(p.iter().collect::<BTreeSet<_>>().len(), 7);
        for n in 4..7 {
            let p = place_shards(&peers[..n]).unwrap();
            for peer in &peers[..n] {
                let c = p.iter().filter(|x| *x == peer).count();
                assert!((1..=2).contains(&c));
            }
        }
        let repeated = [peers[0], peers[0], peers[1], peers[2], peers[1]];
        assert!(place_shards(&repeated).is_err());
    }
}
