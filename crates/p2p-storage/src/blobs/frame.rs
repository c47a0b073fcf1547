//! The envelope that carries shard-protocol frames and manifests over the mesh
//! (message type [`SHARD_TYPE`](super::SHARD_TYPE)).
//!
//! One mesh message carries one part of one frame:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | version, always 1 |
//! | 1 | [`FrameKind`] |
//! | 2..10 | request id, u64 big-endian (a response repeats its request's id) |
//! | 10..14 | part index, u32 big-endian |
//! | 14..18 | part count, u32 big-endian (at least 1) |
//! | 18.. | the part's bytes |
//!
//! A frame larger than the sender's part size is cut into parts (every part
//! but a frame's only one is non-empty) and joined by the receiver within a
//! byte budget. Manifest payloads ([`FrameKind::ManifestResponse`] and
//! [`FrameKind::Announce`]) are `collection length (u16 BE) || collection
//! (UTF-8) || manifest (canonical DAG-CBOR)`; an empty `ManifestResponse`
//! means "not held". A `ManifestRequest` is the 32 raw bytes of the blob id.

use ecomesh_replication::ReplicationError;
use ecomesh_replication::blob::{BlobId, Manifest, ManifestLimits};
use ecomesh_replication::policy::MAX_NAME_LEN;

/// Envelope format version.
pub const VERSION: u8 = 1;
/// Length of the envelope header.
pub const HEADER_LEN: usize = 18;

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameKind {
    /// A [`ShardRequest`](ecomesh_replication::shard::ShardRequest) frame.
    ShardRequest,
    /// A [`ShardResponse`](ecomesh_replication::shard::ShardResponse) frame.
    ShardResponse,
    /// "Send me the manifest of this blob": 32 raw id bytes.
    ManifestRequest,
    /// The answer: collection and manifest, or empty when not held.
    ManifestResponse,
    /// "I stored this blob and pushed you pieces of it": collection and manifest.
    Announce,
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::ShardRequest => 0,
            FrameKind::ShardResponse => 1,
            FrameKind::ManifestRequest => 2,
            FrameKind::ManifestResponse => 3,
            FrameKind::Announce => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => FrameKind::ShardRequest,
            1 => FrameKind::ShardResponse,
            2 => FrameKind::ManifestRequest,
            3 => FrameKind::ManifestResponse,
            4 => FrameKind::Announce,
            _ => return None,
        })
    }

    /// True for the kinds that answer a request (matched by request id).
    pub fn is_response(self) -> bool {
        matches!(self, FrameKind::ShardResponse | FrameKind::ManifestResponse)
    }
}

/// One decoded envelope, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// What the (whole) frame is.
    pub kind: FrameKind,
    /// Correlates a response with its request.
    pub request: u64,
    /// This part's index.
    pub part: u32,
    /// How many parts the frame has (at least 1).
    pub parts: u32,
    /// This part's bytes.
    pub payload: &'a [u8],
}

fn malformed(detail: impl Into<String>) -> ReplicationError {
    ReplicationError::Malformed {
        what: "blob envelope",
        detail: detail.into(),
    }
}

/// Encodes one part.
pub fn encode(kind: FrameKind, request: u64, part: u32, parts: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(VERSION);
    out.push(kind.code());
    out.extend_from_slice(&request.to_be_bytes());
    out.extend_from_slice(&part.to_be_bytes());
    out.extend_from_slice(&parts.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Cuts `frame` into envelopes of at most `max_part` payload bytes each
/// (at least one envelope; `max_part` 0 is taken as 1).
pub fn split(kind: FrameKind, request: u64, frame: &[u8], max_part: usize) -> Vec<Vec<u8>> {
    let max_part = max_part.max(1);
    if frame.len() <= max_part {
        return vec![encode(kind, request, 0, 1, frame)];
    }
    let chunks: Vec<&[u8]> = frame.chunks(max_part).collect();
    let parts = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    chunks
        .iter()
        .take(parts as usize)
        .enumerate()
        .map(|(i, c)| encode(kind, request, i as u32, parts, c))
        .collect()
}

/// Decodes one envelope strictly: exact version, known kind, `part < parts`,
/// a non-empty payload in a multi-part frame, and at most `max_payload`
/// payload bytes. Never panics.
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Envelope<'_>, ReplicationError> {
    let Some((header, payload)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err(malformed(format!(
            "{} bytes, header is {HEADER_LEN}",
            bytes.len()
        )));
    };
    if header[0] != VERSION {
        return Err(malformed(format!("version {}", header[0])));
    }
    let kind = FrameKind::from_code(header[1])
        .ok_or_else(|| malformed(format!("unknown kind {}", header[1])))?;
    let u64_at = |i: usize| {
        let mut b = [0_u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let u32_at = |i: usize| {
        let mut b = [0_u8; 4];
        b.copy_from_slice(&header[i..i + 4]);
        u32::from_be_bytes(b)
    };
    let (request, part, parts) = (u64_at(2), u32_at(10), u32_at(14));
    if parts == 0 || part >= parts {
        return Err(malformed(format!("part {part} of {parts}")));
    }
    if parts > 1 && payload.is_empty() {
        return Err(malformed("empty part of a multi-part frame"));
    }
    if payload.len() > max_payload {
        return Err(ReplicationError::TooLarge {
            what: "blob envelope payload",
            size: payload.len(),
            max: max_payload,
        });
    }
    Ok(Envelope {
        kind,
        request,
        part,
        parts,
        payload,
    })
}

/// The payload of a `ManifestResponse` or `Announce`.
pub fn encode_manifest(collection: &str, manifest_bytes: &[u8]) -> Vec<u8> {
    let name = &collection.as_bytes()[..collection.len().min(MAX_NAME_LEN)];
    let mut out = Vec::with_capacity(2 + name.len() + manifest_bytes.len());
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(manifest_bytes);
    out
}

/// Decodes a `ManifestResponse` / `Announce` payload: a collection name of
/// 1..=[`MAX_NAME_LEN`] UTF-8 bytes and a manifest decoded within `limits`.
pub fn decode_manifest(
    payload: &[u8],
    limits: &ManifestLimits,
) -> Result<(String, Manifest), ReplicationError> {
    let Some((len, rest)) = payload.split_at_checked(2) else {
        return Err(malformed("manifest payload shorter than its length prefix"));
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len == 0 || len > MAX_NAME_LEN {
        return Err(malformed(format!("collection name of {len} bytes")));
    }
    let Some((name, manifest)) = rest.split_at_checked(len) else {
        return Err(malformed("collection name cut short"));
    };
    let name = std::str::from_utf8(name).map_err(|_| malformed("collection is not UTF-8"))?;
    let manifest = Manifest::from_bytes_with(manifest, limits)?;
    Ok((name.to_owned(), manifest))
}

/// Decodes a `ManifestRequest` payload.
pub fn decode_manifest_request(payload: &[u8]) -> Result<BlobId, ReplicationError> {
    BlobId::from_slice(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_replication::blob::{BlobConfig, encode_blob};

    #[test]
    fn envelopes_round_trip_and_split() {
        let e = encode(FrameKind::Announce, 7, 0, 1, b"abc");
        let d = decode(&e, 10).unwrap();
        assert_eq!(
            (d.kind, d.request, d.part, d.parts, d.payload),
            (FrameKind::Announce, 7, 0, 1, &b"abc"[..])
        );
        let frame: Vec<u8> = (0..=255).collect();
        let parts = split(FrameKind::ShardResponse, 9, &frame, 100);
        assert_eq!(parts.len(), 3);
        let joined: Vec<u8> = parts
            .iter()
            .flat_map(|p| decode(p, 100).unwrap().payload.to_vec())
            .collect();
        assert_eq!(joined, frame);
        assert_eq!(split(FrameKind::ShardRequest, 1, b"", 10).len(), 1);
    }

    #[test]
    fn bad_envelopes_are_refused() {
        assert!(decode(b"short", 10).is_err());
        let mut e = encode(FrameKind::Announce, 1, 0, 1, b"x");
        e[0] = 2;
        assert!(decode(&e, 10).is_err());
        let mut e = encode(FrameKind::Announce, 1, 0, 1, b"x");
        e[1] = 9;
        assert!(decode(&e, 10).is_err());
        assert!(decode(&encode(FrameKind::Announce, 1, 2, 2, b"x"), 10).is_err());
        assert!(decode(&encode(FrameKind::Announce, 1, 0, 0, b"x"), 10).is_err());
        assert!(decode(&encode(FrameKind::Announce, 1, 0, 2, b""), 10).is_err());
        assert!(matches!(
            decode(&encode(FrameKind::Announce, 1, 0, 1, &[0; 11]), 10),
            Err(ReplicationError::TooLarge { .. })
        ));
    }

    const KINDS: [FrameKind; 5] = [
        FrameKind::ShardRequest,
        FrameKind::ShardResponse,
        FrameKind::ManifestRequest,
        FrameKind::ManifestResponse,
        FrameKind::Announce,
    ];

    proptest::proptest! {
        #[test]
        fn prop_envelopes_round_trip_in_parts(
            kind in 0_usize..5,
            request in proptest::prelude::any::<u64>(),
            frame in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            max_part in 1_usize..200,
        ) {
            let kind = KINDS[kind];
            let parts = split(kind, request, &frame, max_part);
            proptest::prop_assert_eq!(parts.len(), frame.len().div_ceil(max_part).max(1));
            let mut joined = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let e = decode(p, max_part).unwrap();
                proptest::prop_assert_eq!((e.kind, e.request), (kind, request));
                proptest::prop_assert_eq!((e.part as usize, e.parts as usize), (i, parts.len()));
                proptest::prop_assert_eq!(encode(e.kind, e.request, e.part, e.parts, e.payload), p.clone());
                joined.extend_from_slice(e.payload);
            }
            proptest::prop_assert_eq!(joined, frame);
        }

        #[test]
        fn prop_decoders_never_panic_and_reencode(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            max in 0_usize..80,
        ) {
            if let Ok(e) = decode(&bytes, max) {
                proptest::prop_assert_eq!(encode(e.kind, e.request, e.part, e.parts, e.payload), bytes.clone());
            }
            if let Ok((c, m)) = decode_manifest(&bytes, &ManifestLimits::default()) {
                proptest::prop_assert_eq!(encode_manifest(&c, &m.to_bytes().unwrap()), bytes.clone());
            }
            let _ = decode_manifest_request(&bytes);
        }
    }

    #[test]
    fn manifest_payloads_round_trip() {
        let m = encode_blob(&[5; 40], &BlobConfig::default())
            .unwrap()
            .manifest;
        let p = encode_manifest("photos", &m.to_bytes().unwrap());
        let (c, back) = decode_manifest(&p, &ManifestLimits::default()).unwrap();
        assert_eq!((c.as_str(), back), ("photos", m));
        assert!(decode_manifest(&p[..1], &ManifestLimits::default()).is_err());
        assert!(decode_manifest(&[0, 0, 1], &ManifestLimits::default()).is_err());
        assert!(decode_manifest(&[0, 9, b'a'], &ManifestLimits::default()).is_err());
    }
}
