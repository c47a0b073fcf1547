//! The anti-entropy frame: one canonical CBOR array, decoded strictly and
//! with bounds.
//!
//! ```text
//! frame   = [1, flags, [col...], [want...], [push...], fin]
//! flags   = bit 0: last frame of the message; bit 1: the message opens a pass
//! col     = [name: text, root: null | bytes(8), [node...], [need...]]
//! node    = [path: bytes (one nibble per byte), summary]
//! summary = null                       ; nothing below this path
//!         | [bitmap: uint, digests]    ; branch: 4-byte CID tails of present children
//!         | bytes                      ; entries: (key8, n, head8 x n)*, n = 255: too many heads
//! need    = [key: bytes(8), heads: bytes(8 x k), tail: bytes(8 x t)]
//! want    = bytes                      ; a binary CID
//! push    = [cid: bytes, version: bytes]
//! fin     = null | bytes               ; the sender expects no reply; its database root CID
//! ```
//!
//! Every integer uses the shortest form and every length is checked against
//! the bytes that remain before anything is allocated, so decoding either
//! gives the one frame these bytes encode or a typed error.

use ecomesh_types::ContentId;
use ecomesh_wire::{Limits, Reader, Writer};

use crate::ReplicationError;

/// Protocol version carried in every frame.
pub const VERSION: u64 = 1;
/// Bytes of a branch child digest (the tail of its CID).
pub const DIGEST_LEN: usize = 4;
/// Bytes of a document key (the head of `sha256(id)`) and of a short version CID.
pub const SHORT_LEN: usize = 8;
/// Heads count meaning "too many to list" in an entries summary.
pub const MANY_HEADS: u8 = 255;
/// Most heads an entries summary lists per document.
pub const MAX_LISTED_HEADS: usize = 254;
/// Deepest path a node may have (nibbles of a 32-byte hash).
pub const MAX_PATH: usize = 64;
/// Longest collection name accepted.
pub const MAX_NAME: usize = 1024;
/// Longest binary CID accepted.
pub const MAX_CID: usize = 128;
/// Most heads or tail ids in one need.
pub const MAX_NEED_IDS: usize = 4096;

/// Flag: the last frame of a message.
pub const FLAG_END: u64 = 1;
/// Flag: the message opens a reconciliation pass.
pub const FLAG_HELLO: u64 = 2;

/// A short id: the head of a key hash or the tail of a version CID.
pub type Short = [u8; SHORT_LEN];

/// One frame of an anti-entropy message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// [`FLAG_END`] and [`FLAG_HELLO`].
    pub flags: u64,
    /// Per-collection parts.
    pub cols: Vec<ColPart>,
    /// Versions the sender asks for by CID.
    pub wants: Vec<ContentId>,
    /// Versions the sender pushes: (CID, bytes), parents before children.
    pub pushes: Vec<(ContentId, Vec<u8>)>,
    /// Present when the sender expects no reply: its database root CID after
    /// everything it received, for the final check.
    pub fin: Option<ContentId>,
}

/// What a frame says about one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColPart {
    /// The collection.
    pub name: String,
    /// In a hello: the tail of the sender's collection root CID.
    pub root: Option<Short>,
    /// The sender's nodes at some paths.
    pub nodes: Vec<(Vec<u8>, Summary)>,
    /// Documents the sender lacks versions of.
    pub needs: Vec<Need>,
}

/// The sender's node at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Summary {
    /// Nothing below this path.
    Empty,
    /// A branch: the 4-byte CID tails of its present children, by nibble.
    Branch([Option<[u8; DIGEST_LEN]>; 16]),
    /// Every entry below this path.
    Entries(Vec<EntrySummary>),
}

/// One document in an entries summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySummary {
    /// The first 8 bytes of `sha256(id)`.
    pub key: Short,
    /// The short CIDs of its heads, sorted; `None` when there are too many to list.
    pub heads: Option<Vec<Short>>,
}

/// "I lack versions of this document": the requester's heads and some older
/// versions it has, so the peer pushes only what is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// The first 8 bytes of `sha256(id)`.
    pub key: Short,
    /// Short CIDs of the requester's heads (empty: it has no version).
    pub heads: Vec<Short>,
    /// Short CIDs of some ancestors of those heads, newest first.
    pub tail: Vec<Short>,
}

fn malformed(detail: impl Into<String>) -> ReplicationError {
    ReplicationError::Malformed {
        what: "anti-entropy frame",
        detail: detail.into(),
    }
}

fn shorts_bytes(ids: &[Short]) -> Vec<u8> {
    ids.iter().flat_map(|s| s.iter().copied()).collect()
}

fn read_shorts(bytes: &[u8], max: usize, what: &str) -> Result<Vec<Short>, ReplicationError> {
    if !bytes.len().is_multiple_of(SHORT_LEN) {
        return Err(malformed(format!("{what}: not a multiple of 8 bytes")));
    }
    let n = bytes.len() / SHORT_LEN;
    if n > max {
        return Err(ReplicationError::TooLarge {
            what: "ids in a need",
            size: n,
            max,
        });
    }
    Ok(bytes
        .chunks_exact(SHORT_LEN)
        .map(|c| {
            let mut s = [0_u8; SHORT_LEN];
            s.copy_from_slice(c);
            s
        })
        .collect())
}

fn read_cid(r: &mut Reader<'_>) -> Result<ContentId, ReplicationError> {
    let b = r.read_bytes()?;
    if b.is_empty() || b.len() > MAX_CID {
        return Err(malformed(format!("CID of {} bytes", b.len())));
    }
    Ok(ContentId(b.to_vec()))
}

fn read_short(r: &mut Reader<'_>, what: &str) -> Result<Short, ReplicationError> {
    r.read_bytes()?
        .try_into()
        .map_err(|_| malformed(format!("{what} is not 8 bytes")))
}

impl Summary {
    fn write(&self, w: &mut Writer) {
        match self {
            Summary::Empty => w.null(),
            Summary::Branch(children) => {
                let mut bitmap = 0_u64;
                let mut digests = Vec::with_capacity(16 * DIGEST_LEN);
                for (i, c) in children.iter().enumerate() {
                    if let Some(d) = c {
                        bitmap |= 1 << i;
                        digests.extend_from_slice(d);
                    }
                }
                w.array(2);
                w.uint(bitmap);
                w.bytes(&digests);
            }
            Summary::Entries(entries) => {
                let mut out = Vec::with_capacity(entries.len() * (SHORT_LEN * 2 + 1));
                for e in entries {
                    out.extend_from_slice(&e.key);
                    match &e.heads {
                        Some(h) if h.len() <= MAX_LISTED_HEADS => {
                            out.push(h.len() as u8);
                            out.extend(shorts_bytes(h));
                        }
                        _ => out.push(MANY_HEADS),
                    }
                }
                w.bytes(&out);
            }
        }
    }

    fn read(r: &mut Reader<'_>, buf: &[u8]) -> Result<Summary, ReplicationError> {
        if r.read_null_or()? {
            return Ok(Summary::Empty);
        }
        match buf.get(r.position()).map(|b| b >> 5) {
            Some(4) => {
                if r.read_array_len()? != 2 {
                    return Err(malformed("branch summary is not [bitmap, digests]"));
                }
                let bitmap = r.read_uint()?;
                if bitmap == 0 || bitmap > 0xFFFF {
                    return Err(malformed("branch bitmap out of range"));
                }
                let digests = r.read_bytes()?;
                if digests.len() != bitmap.count_ones() as usize * DIGEST_LEN {
                    return Err(malformed("branch digests do not match the bitmap"));
                }
                let mut children: [Option<[u8; DIGEST_LEN]>; 16] = Default::default();
                let mut chunks = digests.chunks_exact(DIGEST_LEN);
                for (i, slot) in children.iter_mut().enumerate() {
                    if bitmap & (1 << i) != 0 {
                        let mut d = [0_u8; DIGEST_LEN];
                        d.copy_from_slice(chunks.next().unwrap_or(&[0; DIGEST_LEN]));
                        *slot = Some(d);
                    }
                }
                Ok(Summary::Branch(children))
            }
            Some(2) => {
                let bytes = r.read_bytes()?;
                let mut entries = Vec::new();
                let mut rest = bytes;
                while !rest.is_empty() {
                    if rest.len() < SHORT_LEN + 1 {
                        return Err(malformed("truncated entry"));
                    }
                    let mut key = [0_u8; SHORT_LEN];
                    key.copy_from_slice(&rest[..SHORT_LEN]);
                    let n = rest[SHORT_LEN];
                    rest = &rest[SHORT_LEN + 1..];
                    let heads = if n == MANY_HEADS {
                        None
                    } else {
                        let len = usize::from(n) * SHORT_LEN;
                        if rest.len() < len {
                            return Err(malformed("truncated entry heads"));
                        }
                        let heads = read_shorts(&rest[..len], MAX_LISTED_HEADS, "entry heads")?;
                        rest = &rest[len..];
                        Some(heads)
                    };
                    if entries
                        .last()
                        .is_some_and(|prev: &EntrySummary| prev.key >= key)
                    {
                        return Err(malformed("entries not sorted by key"));
                    }
                    entries.push(EntrySummary { key, heads });
                }
                Ok(Summary::Entries(entries))
            }
            _ => Err(malformed("summary is neither null, an array nor bytes")),
        }
    }
}

impl Frame {
    /// The frame's canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.array(6);
        w.uint(VERSION);
        w.uint(self.flags);
        w.array(self.cols.len());
        for c in &self.cols {
            w.array(4);
            w.text(&c.name);
            match &c.root {
                Some(r) => w.bytes(r),
                None => w.null(),
            }
            w.array(c.nodes.len());
            for (path, summary) in &c.nodes {
                w.array(2);
                w.bytes(path);
                summary.write(&mut w);
            }
            w.array(c.needs.len());
            for n in &c.needs {
                w.array(3);
                w.bytes(&n.key);
                w.bytes(&shorts_bytes(&n.heads));
                w.bytes(&shorts_bytes(&n.tail));
            }
        }
        w.array(self.wants.len());
        for cid in &self.wants {
            w.bytes(&cid.0);
        }
        w.array(self.pushes.len());
        for (cid, bytes) in &self.pushes {
            w.array(2);
            w.bytes(&cid.0);
            w.bytes(bytes);
        }
        match &self.fin {
            Some(cid) => w.bytes(&cid.0),
            None => w.null(),
        }
        w.into_bytes()
    }

    /// Decodes one frame of at most `max_bytes`, refusing anything that is not
    /// exactly the canonical encoding of a frame.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Frame, ReplicationError> {
        if bytes.len() > max_bytes {
            return Err(ReplicationError::TooLarge {
                what: "anti-entropy frame",
                size: bytes.len(),
                max: max_bytes,
            });
        }
        let limits = Limits {
            max_depth: 8,
            max_len: bytes.len() as u64,
        };
        let mut r = Reader::new(bytes, limits);
        if r.read_array_len()? != 6 {
            return Err(malformed("frame is not a 6-item array"));
        }
        let version = r.read_uint()?;
        if version != VERSION {
            return Err(malformed(format!("protocol version {version}")));
        }
        let flags = r.read_uint()?;
        if flags > (FLAG_END | FLAG_HELLO) {
            return Err(malformed("unknown flags"));
        }
        let ncols = r.read_array_len()?;
        let mut cols = Vec::with_capacity(ncols.min(r.remaining()));
        for _ in 0..ncols {
            if r.read_array_len()? != 4 {
                return Err(malformed("collection part is not a 4-item array"));
            }
            let name = r.read_text()?;
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(malformed("collection name empty or too long"));
            }
            if cols
                .last()
                .is_some_and(|p: &ColPart| p.name.as_str() >= name)
            {
                return Err(malformed("collections not sorted and unique"));
            }
            let root = if r.read_null_or()? {
                None
            } else {
                Some(read_short(&mut r, "collection root")?)
            };
            let nnodes = r.read_array_len()?;
            let mut nodes = Vec::with_capacity(nnodes.min(r.remaining()));
            for _ in 0..nnodes {
                if r.read_array_len()? != 2 {
                    return Err(malformed("node is not [path, summary]"));
                }
                let path = r.read_bytes()?;
                if path.len() > MAX_PATH || path.iter().any(|n| *n > 15) {
                    return Err(malformed("bad node path"));
                }
                let summary = Summary::read(&mut r, bytes)?;
                nodes.push((path.to_vec(), summary));
            }
            let nneeds = r.read_array_len()?;
            let mut needs = Vec::with_capacity(nneeds.min(r.remaining()));
            for _ in 0..nneeds {
                if r.read_array_len()? != 3 {
                    return Err(malformed("need is not [key, heads, tail]"));
                }
                let key = read_short(&mut r, "need key")?;
                let heads = read_shorts(r.read_bytes()?, MAX_NEED_IDS, "need heads")?;
                let tail = read_shorts(r.read_bytes()?, MAX_NEED_IDS, "need tail")?;
                needs.push(Need { key, heads, tail });
            }
            cols.push(ColPart {
                name: name.to_owned(),
                root,
                nodes,
                needs,
            });
        }
        let nwants = r.read_array_len()?;
        let mut wants = Vec::with_capacity(nwants.min(r.remaining()));
        for _ in 0..nwants {
            wants.push(read_cid(&mut r)?);
        }
        let npushes = r.read_array_len()?;
        let mut pushes = Vec::with_capacity(npushes.min(r.remaining()));
        for _ in 0..npushes {
            if r.read_array_len()? != 2 {
                return Err(malformed("push is not [cid, bytes]"));
            }
            let cid = read_cid(&mut r)?;
            let version = r.read_bytes()?.to_vec();
            pushes.push((cid, version));
        }
        let fin = if r.read_null_or()? {
            None
        } else {
            Some(read_cid(&mut r)?)
        };
        r.finish()?;
        let frame = Frame {
            flags,
            cols,
            wants,
            pushes,
            fin,
        };
        if frame.fin.is_some() && frame.asks() {
            return Err(malformed("a final frame cannot ask for anything"));
        }
        Ok(frame)
    }

    /// True when the frame asks the peer for something (nodes to compare,
    /// needs, wants or a new pass), so a reply must follow.
    pub fn asks(&self) -> bool {
        self.flags & FLAG_HELLO != 0
            || !self.wants.is_empty()
            || self
                .cols
                .iter()
                .any(|c| !c.nodes.is_empty() || !c.needs.is_empty())
    }

    /// Moves everything of `other` into `self` (joining the frames of one message).
    pub(crate) fn absorb(&mut self, other: Frame) {
        self.flags |= other.flags;
        for part in other.cols {
            match self.cols.iter_mut().find(|c| c.name == part.name) {
                Some(c) => {
                    if c.root.is_none() {
                        c.root = part.root;
                    }
                    c.nodes.extend(part.nodes);
                    c.needs.extend(part.needs);
                }
                None => self.cols.push(part),
            }
        }
        self.wants.extend(other.wants);
        self.pushes.extend(other.pushes);
        if other.fin.is_some() {
            self.fin = other.fin;
        }
    }

    /// Splits a message into frames of at most `max_bytes` each (the last
    /// one flagged [`FLAG_END`]); fails when one item alone does not fit.
    pub fn split(self, max_bytes: usize) -> Result<Vec<Vec<u8>>, ReplicationError> {
        let mut whole = self;
        whole.flags |= FLAG_END;
        let bytes = whole.encode();
        if bytes.len() <= max_bytes {
            return Ok(vec![bytes]);
        }
        let hello = whole.flags & FLAG_HELLO;
        // Room for a CID in `fin` and for the flags growing by a byte.
        let budget = max_bytes.saturating_sub(MAX_CID + 16);
        let empty = Frame::default().encode().len();
        let mut units: Vec<Frame> = Vec::new();
        for part in whole.cols {
            let col = |root, nodes, needs| Frame {
                cols: vec![ColPart {
                    name: part.name.clone(),
                    root,
                    nodes,
                    needs,
                }],
                ..Frame::default()
            };
            if part.root.is_some() {
                units.push(col(part.root, Vec::new(), Vec::new()));
            }
            for node in part.nodes {
                units.push(col(None, vec![node], Vec::new()));
            }
            for need in part.needs {
                units.push(col(None, Vec::new(), vec![need]));
            }
        }
        for want in whole.wants {
            units.push(Frame {
                wants: vec![want],
                ..Frame::default()
            });
        }
        for push in whole.pushes {
            units.push(Frame {
                pushes: vec![push],
                ..Frame::default()
            });
        }
        let mut frames = Vec::new();
        let mut current = Frame {
            flags: hello,
            ..Frame::default()
        };
        let mut size = empty;
        for unit in units {
            let add = unit.encode().len() - empty;
            if empty + add > budget {
                return Err(ReplicationError::TooLarge {
                    what: "anti-entropy item",
                    size: add,
                    max: budget.saturating_sub(empty),
                });
            }
            if size + add > budget {
                frames.push(std::mem::replace(
                    &mut current,
                    Frame {
                        flags: hello,
                        ..Frame::default()
                    },
                ));
                size = empty;
            }
            size += add;
            current.absorb(unit);
        }
        current.fin = whole.fin;
        current.flags |= FLAG_END;
        frames.push(current);
        Ok(frames.iter().map(Frame::encode).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        let mut children: [Option<[u8; DIGEST_LEN]>; 16] = Default::default();
        children[3] = Some([1, 2, 3, 4]);
        children[15] = Some([9, 9, 9, 9]);
        Frame {
            flags: FLAG_HELLO,
            cols: vec![ColPart {
                name: "c".into(),
                root: Some([7; 8]),
                nodes: vec![
                    (vec![], Summary::Branch(children)),
                    (vec![1, 2], Summary::Empty),
                    (
                        vec![3],
                        Summary::Entries(vec![
                            EntrySummary {
                                key: [1; 8],
                                heads: Some(vec![[2; 8]]),
                            },
                            EntrySummary {
                                key: [3; 8],
                                heads: None,
                            },
                        ]),
                    ),
                ],
                needs: vec![Need {
                    key: [4; 8],
                    heads: vec![[5; 8]],
                    tail: vec![],
                }],
            }],
            wants: vec![ContentId(vec![1, 2, 3])],
            pushes: vec![(ContentId(vec![4]), vec![5, 6])],
            fin: None,
        }
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let bytes = f.encode();
        assert_eq!(Frame::decode(&bytes, 1 << 20).unwrap(), f);
    }

    #[test]
    fn split_frames_join_back() {
        let mut f = sample();
        for i in 0..200_u8 {
            f.pushes.push((ContentId(vec![i; 36]), vec![i; 100]));
        }
        let frames = f.clone().split(1000).unwrap();
        assert!(frames.len() > 10);
        let mut joined = Frame::default();
        for (i, bytes) in frames.iter().enumerate() {
            assert!(bytes.len() <= 1000);
            let frame = Frame::decode(bytes, 1000).unwrap();
            assert_eq!(frame.flags & FLAG_END != 0, i + 1 == frames.len());
            joined.absorb(frame);
        }
        f.flags |= FLAG_END;
        assert_eq!(joined, f);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(Frame::decode(&bytes[..len], 1 << 20).is_err(), "{len}");
        }
    }
}
