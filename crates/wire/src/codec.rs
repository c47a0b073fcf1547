//! Canonical DAG-CBOR codecs for the replicated types of `ecomesh-crdt` and the
//! version DAG, behind one trait, [`Canonical`].
//!
//! Every form is a DAG-CBOR map with string keys (sorted length-first), so the
//! bytes are valid DAG-CBOR that any IPLD tool reads, and hashing them gives a
//! stable CID ([`cid_of_canonical`]). Sets are arrays in strictly ascending
//! order of the element type's `Ord` (for [`Value`], its documented total
//! order); per-peer tables are arrays of `[peer, n]` pairs in ascending peer
//! byte order. Optional parts are omitted when empty and an explicit empty
//! part is refused, so each state has exactly one encoding.
//!
//! | type | form |
//! |---|---|
//! | [`HlcTimestamp`] | `{"l": logical, "p": peer (32 bytes), "t": physical ms}` |
//! | [`VectorClock`] | `{"entries": [[peer, count > 0], ...]}` |
//! | [`LwwRegister<T>`] | `{"ts": HLC, "value": T}` |
//! | [`GSet<T>`] | `{"items": [T, ...]}` |
//! | [`OrSet<T>`] | `{"entries": [[T, [live tags], [removed tags]], ...]}` (tags are HLCs) |
//! | [`PnCounter`] | `{"dec": [[peer, n > 0], ...], "inc": [[peer, n > 0], ...]}` |
//! | [`Slot`] | `{"kind": "absent" \| "counter" \| "set"}` or `{"kind": "value", "value": V}` |
//! | [`Field`] | `{"set"?: OrSet<Value>, "write"?: LWW<Slot>, "counter"?: PnCounter}` |
//! | [`DocumentCrdt`] (and its deltas) | `{"fields": {name: Field}, "deleted"?: HLC, "written"?: HLC}` |
//! | [`DagNode<ContentId>`] | `{"id": link, "parents": [link, ...]}` |
//! | [`VersionDag<ContentId>`] | `{"nodes": [DagNode, ...]}` parents before children |
//! | [`NetworkMessage`] | the full form of [`crate::message`] |
//!
//! Depth: each map or array of these forms counts toward [`Limits::max_depth`],
//! the same way when encoding and decoding, so whatever encodes under some
//! limits decodes under the same limits.

use std::collections::BTreeSet;

use ecomesh_crdt::{
    DagNode, DocumentCrdt, Field, GSet, LwwRegister, OrSet, PnCounter, Slot, VectorClock,
    VersionDag,
};
use ecomesh_types::{ContentId, HlcTimestamp, NetworkMessage, PeerId, Value};

use crate::cbor::{Limits, Reader, Writer};
use crate::cid::{Cid, HashAlg, cid_for_bytes};
use crate::dag_cbor::{read_key, read_value, write_link, write_value};
use crate::error::{Result, WireError};
use crate::message::{read_peer, read_u32};

/// A type with one canonical DAG-CBOR encoding and a strict, bounded decoder.
///
/// Implementations promise: `decode(encode(x)?) == x`, and for every input
/// `decode` accepts, `encode(decode(b)?) == b`.
pub trait Canonical: Sized {
    /// The name used in error messages.
    const NAME: &'static str;

    /// Appends the encoding; `depth` arrays/maps are already open around it.
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()>;

    /// Reads one encoding; `depth` arrays/maps are already open around it.
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self>;
}

/// The canonical bytes of `v` (default [`Limits`]).
pub fn encode<T: Canonical>(v: &T) -> Result<Vec<u8>> {
    encode_with(v, &Limits::DEFAULT)
}

/// The canonical bytes of `v` under `limits`.
pub fn encode_with<T: Canonical>(v: &T, limits: &Limits) -> Result<Vec<u8>> {
    let mut w = Writer::with_capacity(128);
    v.write_to(&mut w, 0, limits.effective_depth())?;
    Ok(w.into_bytes())
}

/// Decodes exactly one `T` (default [`Limits`]).
pub fn decode<T: Canonical>(bytes: &[u8]) -> Result<T> {
    decode_with(bytes, &Limits::DEFAULT)
}

/// Decodes exactly one `T` under `limits`, refusing every non-canonical form.
pub fn decode_with<T: Canonical>(bytes: &[u8], limits: &Limits) -> Result<T> {
    let mut r = Reader::new(bytes, *limits);
    let v = T::read_from(&mut r, 0)?;
    r.finish()?;
    Ok(v)
}

/// The CIDv1 (dag-cbor) of `v`'s canonical encoding, hashed with `alg`.
pub fn cid_of_canonical<T: Canonical>(v: &T, alg: HashAlg) -> Result<Cid> {
    Ok(cid_for_bytes(crate::cid::DAG_CBOR, alg, &encode(v)?))
}

fn enter(depth: usize, max: usize) -> Result<usize> {
    if depth >= max {
        Err(WireError::DepthExceeded { max })
    } else {
        Ok(depth + 1)
    }
}

fn parts_error(context: &'static str, e: ecomesh_crdt::Error) -> WireError {
    let reason = match e {
        ecomesh_crdt::Error::InvalidParts { reason, .. } => reason,
        ecomesh_crdt::Error::Cycle => "a node lists itself as a parent",
        ecomesh_crdt::Error::MissingParent => "a parent is not among the nodes",
        ecomesh_crdt::Error::ConflictingNode => "a node id repeats with other parents",
        _ => "invalid parts",
    };
    WireError::InvalidField {
        context,
        field: "parts",
        reason,
    }
}

/// Reads the entries of a string-keyed map whose keys the caller asks for in
/// canonical order.
struct MapIn<'r, 'a> {
    r: &'r mut Reader<'a>,
    remaining: usize,
    prev: Option<&'a str>,
    pending: Option<&'a str>,
    context: &'static str,
}

impl<'r, 'a> MapIn<'r, 'a> {
    fn open(r: &'r mut Reader<'a>, depth: usize, context: &'static str) -> Result<(Self, usize)> {
        let inner = enter(depth, r.limits().effective_depth())?;
        let remaining = r.read_map_len()?;
        Ok((
            MapIn {
                r,
                remaining,
                prev: None,
                pending: None,
                context,
            },
            inner,
        ))
    }

    fn optional<T>(
        &mut self,
        key: &'static str,
        f: impl FnOnce(&mut Reader<'a>) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.pending.is_none() && self.remaining > 0 {
            let k = read_key(self.r, self.prev)?;
            self.prev = Some(k);
            self.pending = Some(k);
        }
        if self.pending == Some(key) {
            self.pending = None;
            self.remaining -= 1;
            Ok(Some(f(self.r)?))
        } else {
            Ok(None)
        }
    }

    fn required<T>(
        &mut self,
        key: &'static str,
        f: impl FnOnce(&mut Reader<'a>) -> Result<T>,
    ) -> Result<T> {
        self.optional(key, f)?.ok_or(WireError::MissingField {
            context: self.context,
            field: key,
        })
    }

    fn end(self) -> Result<()> {
        if let Some(k) = self.pending {
            return Err(WireError::UnknownField {
                context: self.context,
                field: k.to_owned(),
            });
        }
        if self.remaining > 0 {
            let k = read_key(self.r, self.prev)?;
            return Err(WireError::UnknownField {
                context: self.context,
                field: k.to_owned(),
            });
        }
        Ok(())
    }
}

fn invalid(context: &'static str, field: &'static str, reason: &'static str) -> WireError {
    WireError::InvalidField {
        context,
        field,
        reason,
    }
}

/// Writes `items` as an array; each item is written by `f`.
fn write_array<I, T>(
    w: &mut Writer,
    items: I,
    depth: usize,
    max: usize,
    mut f: impl FnMut(&mut Writer, T, usize) -> Result<()>,
) -> Result<()>
where
    I: ExactSizeIterator<Item = T>,
{
    let inner = enter(depth, max)?;
    w.array(items.len());
    for item in items {
        f(w, item, inner)?;
    }
    Ok(())
}

/// Reads an array whose items must be strictly ascending by `Ord`.
fn read_sorted_array<'a, T: Ord>(
    r: &mut Reader<'a>,
    depth: usize,
    context: &'static str,
    field: &'static str,
    mut f: impl FnMut(&mut Reader<'a>, usize) -> Result<T>,
) -> Result<Vec<T>> {
    let inner = enter(depth, r.limits().effective_depth())?;
    let n = r.read_array_len()?;
    let mut out: Vec<T> = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        let item = f(r, inner)?;
        if out.last().is_some_and(|last| *last >= item) {
            return Err(invalid(context, field, "items not strictly ascending"));
        }
        out.push(item);
    }
    Ok(out)
}

/// `[peer, n]` with `n > 0`.
fn write_peer_count(
    w: &mut Writer,
    (peer, n): (&PeerId, &u64),
    depth: usize,
    max: usize,
) -> Result<()> {
    enter(depth, max)?;
    w.array(2);
    w.bytes(peer.as_bytes());
    w.uint(*n);
    Ok(())
}

fn read_peer_count(
    r: &mut Reader<'_>,
    depth: usize,
    context: &'static str,
) -> Result<(PeerId, u64)> {
    enter(depth, r.limits().effective_depth())?;
    if r.read_array_len()? != 2 {
        return Err(invalid(context, "entry", "expected a [peer, count] pair"));
    }
    let peer = read_peer(r, context, "peer")?;
    let n = r.read_uint()?;
    if n == 0 {
        return Err(invalid(context, "count", "zero entries are omitted"));
    }
    Ok((peer, n))
}

fn read_peer_table(
    r: &mut Reader<'_>,
    depth: usize,
    context: &'static str,
) -> Result<Vec<(PeerId, u64)>> {
    // (peer, n) pairs compare by peer first; a repeated peer is refused by the
    // types' `from_parts`.
    read_sorted_array(r, depth, context, "entries", |r, d| {
        read_peer_count(r, d, context)
    })
}

fn write_peer_table<'a>(
    w: &mut Writer,
    table: impl ExactSizeIterator<Item = (&'a PeerId, &'a u64)>,
    depth: usize,
    max: usize,
) -> Result<()> {
    // BTreeMap<PeerId, _> iterates in PeerId's byte order.
    write_array(w, table, depth, max, |w, e, d| {
        write_peer_count(w, e, d, max)
    })
}

impl Canonical for Value {
    const NAME: &'static str = "Value";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        write_value(w, self, depth, max_depth)
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        read_value(r, depth)
    }
}

impl Canonical for HlcTimestamp {
    const NAME: &'static str = "HlcTimestamp";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        enter(depth, max_depth)?;
        w.map(3);
        w.text("l");
        w.uint(u64::from(self.logical));
        w.text("p");
        w.bytes(self.peer.as_bytes());
        w.text("t");
        w.uint(self.physical_ms);
        Ok(())
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, _) = MapIn::open(r, depth, Self::NAME)?;
        let logical = m.required("l", |r| read_u32(r, Self::NAME, "l"))?;
        let peer = m.required("p", |r| read_peer(r, Self::NAME, "p"))?;
        let physical_ms = m.required("t", |r| r.read_uint())?;
        m.end()?;
        Ok(HlcTimestamp::new(physical_ms, logical, peer))
    }
}

impl Canonical for VectorClock {
    const NAME: &'static str = "VectorClock";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        w.map(1);
        w.text("entries");
        write_peer_table(w, self.entries().iter(), inner, max_depth)
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let entries = m.required("entries", |r| read_peer_table(r, inner, Self::NAME))?;
        m.end()?;
        VectorClock::from_parts(entries).map_err(|e| parts_error(Self::NAME, e))
    }
}

impl<T: Canonical> Canonical for LwwRegister<T> {
    const NAME: &'static str = "LwwRegister";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        w.map(2);
        w.text("ts");
        self.timestamp().write_to(w, inner, max_depth)?;
        w.text("value");
        self.value().write_to(w, inner, max_depth)
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let ts = m.required("ts", |r| HlcTimestamp::read_from(r, inner))?;
        let value = m.required("value", |r| T::read_from(r, inner))?;
        m.end()?;
        Ok(LwwRegister::from_parts(value, ts))
    }
}

impl<T: Canonical + Ord + Clone> Canonical for GSet<T> {
    const NAME: &'static str = "GSet";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        w.map(1);
        w.text("items");
        write_array(w, self.items().iter(), inner, max_depth, |w, item, d| {
            item.write_to(w, d, max_depth)
        })
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let items = m.required("items", |r| {
            read_sorted_array(r, inner, Self::NAME, "items", |r, d| T::read_from(r, d))
        })?;
        m.end()?;
        Ok(GSet::from_parts(items.into_iter().collect()))
    }
}

fn write_tags(
    w: &mut Writer,
    tags: &BTreeSet<HlcTimestamp>,
    depth: usize,
    max: usize,
) -> Result<()> {
    write_array(w, tags.iter(), depth, max, |w, t, d| t.write_to(w, d, max))
}

fn read_tags(r: &mut Reader<'_>, depth: usize) -> Result<BTreeSet<HlcTimestamp>> {
    let tags = read_sorted_array(r, depth, "OrSet", "tags", |r, d| {
        HlcTimestamp::read_from(r, d)
    })?;
    Ok(tags.into_iter().collect())
}

impl<T: Canonical + Ord + Clone> Canonical for OrSet<T> {
    const NAME: &'static str = "OrSet";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        w.map(1);
        w.text("entries");
        let entries: Vec<_> = self.entries().collect();
        write_array(
            w,
            entries.into_iter(),
            inner,
            max_depth,
            |w, (item, live, removed), d| {
                let d2 = enter(d, max_depth)?;
                w.array(3);
                item.write_to(w, d2, max_depth)?;
                write_tags(w, live, d2, max_depth)?;
                write_tags(w, removed, d2, max_depth)
            },
        )
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let entries = m.required("entries", |r| {
            let triples = read_sorted_array(r, inner, Self::NAME, "entries", |r, d| {
                let d2 = enter(d, r.limits().effective_depth())?;
                if r.read_array_len()? != 3 {
                    return Err(invalid(
                        Self::NAME,
                        "entry",
                        "expected [item, live, removed]",
                    ));
                }
                let item = T::read_from(r, d2)?;
                let live = read_tags(r, d2)?;
                let removed = read_tags(r, d2)?;
                Ok(OrEntry(item, live, removed))
            })?;
            Ok(triples.into_iter().map(|OrEntry(i, l, rm)| (i, l, rm)))
        })?;
        m.end()?;
        OrSet::from_parts(entries).map_err(|e| parts_error(Self::NAME, e))
    }
}

/// An OR-Set entry ordered by its element only (elements are unique).
struct OrEntry<T>(T, BTreeSet<HlcTimestamp>, BTreeSet<HlcTimestamp>);

impl<T: Ord> PartialEq for OrEntry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<T: Ord> Eq for OrEntry<T> {}
impl<T: Ord> PartialOrd for OrEntry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: Ord> Ord for OrEntry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl Canonical for PnCounter {
    const NAME: &'static str = "PnCounter";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        w.map(2);
        w.text("dec");
        write_peer_table(w, self.decrements().iter(), inner, max_depth)?;
        w.text("inc");
        write_peer_table(w, self.increments().iter(), inner, max_depth)
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let dec = m.required("dec", |r| read_peer_table(r, inner, Self::NAME))?;
        let inc = m.required("inc", |r| read_peer_table(r, inner, Self::NAME))?;
        m.end()?;
        PnCounter::from_parts(inc, dec).map_err(|e| parts_error(Self::NAME, e))
    }
}

impl Canonical for Slot {
    const NAME: &'static str = "Slot";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        let kind = match self {
            Slot::Absent => "absent",
            Slot::Value(_) => "value",
            Slot::Counter => "counter",
            Slot::Set => "set",
        };
        if let Slot::Value(v) = self {
            w.map(2);
            w.text("kind");
            w.text(kind);
            w.text("value");
            write_value(w, v, inner, max_depth)
        } else {
            w.map(1);
            w.text("kind");
            w.text(kind);
            Ok(())
        }
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let kind = m.required("kind", |r| r.read_text())?;
        let slot = match kind {
            "absent" => Slot::Absent,
            "counter" => Slot::Counter,
            "set" => Slot::Set,
            "value" => Slot::Value(m.required("value", |r| read_value(r, inner))?),
            _ => return Err(invalid(Self::NAME, "kind", "unknown slot kind")),
        };
        m.end()?;
        Ok(slot)
    }
}

impl Canonical for Field {
    const NAME: &'static str = "Field";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        let has_set = !self.set().is_bottom();
        let has_counter = !self.counter().is_empty();
        let n =
            usize::from(has_set) + usize::from(self.write().is_some()) + usize::from(has_counter);
        w.map(n);
        if has_set {
            w.text("set");
            self.set().write_to(w, inner, max_depth)?;
        }
        if let Some(write) = self.write() {
            w.text("write");
            write.write_to(w, inner, max_depth)?;
        }
        if has_counter {
            w.text("counter");
            self.counter().write_to(w, inner, max_depth)?;
        }
        Ok(())
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let set = m.optional("set", |r| OrSet::<Value>::read_from(r, inner))?;
        let write = m.optional("write", |r| LwwRegister::<Slot>::read_from(r, inner))?;
        let counter = m.optional("counter", |r| PnCounter::read_from(r, inner))?;
        m.end()?;
        if set.as_ref().is_some_and(OrSet::is_bottom) {
            return Err(invalid(Self::NAME, "set", "an empty set is omitted"));
        }
        if counter.as_ref().is_some_and(PnCounter::is_empty) {
            return Err(invalid(
                Self::NAME,
                "counter",
                "an empty counter is omitted",
            ));
        }
        Field::from_parts(write, counter.unwrap_or_default(), set.unwrap_or_default())
            .map_err(|e| parts_error(Self::NAME, e))
    }
}

impl Canonical for DocumentCrdt {
    const NAME: &'static str = "DocumentCrdt";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        let n = 1 + usize::from(self.deleted().is_some()) + usize::from(self.written().is_some());
        w.map(n);
        w.text("fields");
        let fields_depth = enter(inner, max_depth)?;
        // Field names are DAG-CBOR map keys: length-first order.
        w.map(self.fields().len());
        crate::cbor::for_each_canonical(self.fields().iter(), |name, field| {
            w.text(name);
            field.write_to(w, fields_depth, max_depth)
        })?;
        if let Some(d) = self.deleted() {
            w.text("deleted");
            d.write_to(w, inner, max_depth)?;
        }
        if let Some(t) = self.written() {
            w.text("written");
            t.write_to(w, inner, max_depth)?;
        }
        Ok(())
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let fields = m.required("fields", |r| {
            let fields_depth = enter(inner, r.limits().effective_depth())?;
            let n = r.read_map_len()?;
            let mut out = Vec::with_capacity(n.min(r.remaining()));
            let mut prev: Option<&str> = None;
            for _ in 0..n {
                let name = read_key(r, prev)?;
                prev = Some(name);
                out.push((name.to_owned(), Field::read_from(r, fields_depth)?));
            }
            Ok(out)
        })?;
        let deleted = m.optional("deleted", |r| HlcTimestamp::read_from(r, inner))?;
        let written = m.optional("written", |r| HlcTimestamp::read_from(r, inner))?;
        m.end()?;
        DocumentCrdt::from_parts(fields, written, deleted).map_err(|e| parts_error(Self::NAME, e))
    }
}

impl Canonical for DagNode<ContentId> {
    const NAME: &'static str = "DagNode";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        w.map(2);
        w.text("id");
        write_link(w, self.id())?;
        w.text("parents");
        write_array(w, self.parents().iter(), inner, max_depth, |w, p, _| {
            write_link(w, p)
        })
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let id = m.required("id", |r| Ok(ContentId(r.read_link()?.to_vec())))?;
        let parents = m.required("parents", |r| {
            read_sorted_array(r, inner, Self::NAME, "parents", |r, _| {
                Ok(ContentId(r.read_link()?.to_vec()))
            })
        })?;
        m.end()?;
        DagNode::from_parts(id, parents).map_err(|e| parts_error(Self::NAME, e))
    }
}

impl Canonical for VersionDag<ContentId> {
    const NAME: &'static str = "VersionDag";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        let inner = enter(depth, max_depth)?;
        w.map(1);
        w.text("nodes");
        let nodes = self.nodes();
        write_array(w, nodes.iter(), inner, max_depth, |w, n, d| {
            n.write_to(w, d, max_depth)
        })
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        let start = r.position();
        let (mut m, inner) = MapIn::open(r, depth, Self::NAME)?;
        let nodes = m.required("nodes", |r| {
            let d = enter(inner, r.limits().effective_depth())?;
            let n = r.read_array_len()?;
            let mut out = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                out.push(DagNode::<ContentId>::read_from(r, d)?);
            }
            Ok(out)
        })?;
        m.end()?;
        let end = r.position();
        let dag = VersionDag::from_nodes(nodes).map_err(|e| parts_error(Self::NAME, e))?;
        // The node order is the DAG's own (parents first, ties by id): check it
        // by re-encoding, and refuse duplicates or any other order.
        let again = encode_with(&dag, &r.limits())?;
        if again.len() != end - start || !r.consumed(start, end).eq(again.as_slice()) {
            return Err(invalid(Self::NAME, "nodes", "not in canonical order"));
        }
        Ok(dag)
    }
}

impl Canonical for NetworkMessage {
    const NAME: &'static str = "NetworkMessage";
    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<()> {
        enter(depth, max_depth)?;
        w.raw(&crate::message::encode_message(self));
        Ok(())
    }
    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self> {
        enter(depth, r.limits().effective_depth())?;
        crate::message::read_message(r)
    }
}
