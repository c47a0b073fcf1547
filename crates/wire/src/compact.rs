//! The compact wire form of CRDT deltas and states, for the links where every
//! byte counts (LoRa, BLE) and for bulk sync.
//!
//! It sits **beside** the canonical DAG-CBOR form of [`crate::codec`], never
//! instead of it: what is hashed or signed stays canonical DAG-CBOR, and a
//! receiver rebuilds the canonical bytes from the compact ones (and, for a
//! version node, recomputes the CID and checks the signature). The compact
//! form saves what the canonical one spends on self-description:
//!
//! - no field names of the CRDT structure itself (a flag byte says which parts follow);
//! - an **actor table**: every peer id appears once, timestamps and counter
//!   entries name it by a varint index; index 0 is the *base* peer, which the
//!   context supplies (a version node's author, derived from its key) and
//!   which therefore costs nothing;
//! - timestamps are coded **relative to a base timestamp** (a version node's
//!   own): the base itself is one byte, others an actor index (with a bit
//!   saying whether a logical counter follows: it is almost always 0), a
//!   zigzag varint of the physical-time difference (wrapping, so every pair
//!   of times has one) and the counter when it is not 0;
//! - integers are unsigned LEB128 varints.
//!
//! # Layout of a compact delta (any [`DocumentCrdt`])
//!
//! ```text
//! delta   = actors flags [written:ts] [deleted:ts] nfields field*
//! actors  = n:varint peer{n}              ; actors 1..=n, in order of first use
//! flags   = byte                          ; bit 0 written, bit 1 deleted
//! field   = name:str parts:byte [write] [counter] [set]   ; parts bits 0,1,2
//! write   = ts slot:byte [value]          ; slot 0 absent, 1 value, 2 counter, 3 set
//! counter = n:varint (actor n:varint){n} (inc), then the same for dec
//! set     = n:varint (value live:tags removed:tags){n}
//! tags    = n:varint ts{n}
//! ts      = 0                             ; the base timestamp itself
//!         | ((actor+1)*2 + l):varint dt:zigzag [logical:varint]
//!                                         ; l = 1 when the counter is not 0
//! str     = len:varint utf8
//! value   = one canonical DAG-CBOR item
//! ```
//!
//! Fields come in canonical order (byte order of their names), set entries
//! and tags in the types' own order, so each state has exactly one compact
//! encoding. The decoder is strict: it re-encodes what it read and refuses any
//! input that does not come back byte for byte (non-shortest varints, unused
//! or repeated actors, unsorted parts, stray flag bits), and it is bounded: no
//! allocation is sized by a count before the bytes are there, values are read
//! by the bounded DAG-CBOR reader under [`Limits`].
//!
//! A whole state or an update travelling on its own uses the tighter form of
//! [`crate::compact_state`] ([`encode_document_compact`], [`encode_state_compact`]);
//! this delta form is the one version nodes embed.

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_crdt::{DocumentCrdt, Field, LwwRegister, OrSet, PnCounter, Slot};
use ecomesh_types::{HlcTimestamp, PeerId, Value};

use crate::cbor::{Limits, Reader, Writer};
use crate::dag_cbor::{read_value, write_value};
use crate::error::{Result, WireError};

const CONTEXT: &str = "compact delta";

fn invalid(field: &'static str, reason: &'static str) -> WireError {
    WireError::InvalidField {
        context: CONTEXT,
        field,
        reason,
    }
}

/// Appends `v` as an unsigned LEB128 varint (shortest form, at most 10 bytes).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a length-prefixed byte string (`len:varint bytes`).
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Zigzag of a two's-complement difference: small differences either way are
/// small varints, and every `u64` pair has one (wrapping arithmetic).
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// A bounded reader over compact bytes: every read checks the bytes are there.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// The current offset.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes not read yet (the cursor does not move).
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Takes exactly `n` bytes, or fails with [`WireError::Truncated`].
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(WireError::Truncated { offset: self.pos });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads an unsigned LEB128 varint of at most 10 bytes that fits `u64`.
    /// (Shortest form is checked by the callers' re-encoding.)
    pub fn varint(&mut self) -> Result<u64> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(WireError::InvalidField {
                    context: CONTEXT,
                    field: "varint",
                    reason: "overflows 64 bits",
                });
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Truncated { offset: start })
    }

    /// Reads a count of items that each take at least one byte: larger than
    /// the bytes left is refused before anything is allocated.
    pub fn count(&mut self) -> Result<usize> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.remaining())
            .ok_or(WireError::Truncated { offset: self.pos })
    }

    /// Reads a length-prefixed byte string.
    pub fn str_bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.count()?;
        self.take(n)
    }

    /// Reads a length-prefixed UTF-8 string.
    pub fn text(&mut self) -> Result<&'a str> {
        let at = self.pos;
        std::str::from_utf8(self.str_bytes()?).map_err(|_| WireError::InvalidUtf8 { offset: at })
    }

    /// Reads one canonical DAG-CBOR value under `limits`.
    pub fn value(&mut self, limits: &Limits) -> Result<Value> {
        let mut r = Reader::new(self.rest(), *limits);
        let v = read_value(&mut r, 0)?;
        self.pos += r.position();
        Ok(v)
    }

    /// Fails with [`WireError::TrailingBytes`] unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                offset: self.pos,
                count: self.remaining(),
            })
        }
    }
}

/// The actor table being built while encoding.
struct Actors {
    base: PeerId,
    index: BTreeMap<PeerId, u64>,
    order: Vec<PeerId>,
}

impl Actors {
    fn new(base: PeerId) -> Self {
        Actors {
            base,
            index: BTreeMap::new(),
            order: Vec::new(),
        }
    }

    fn of(&mut self, peer: &PeerId) -> u64 {
        if *peer == self.base {
            return 0;
        }
        if let Some(i) = self.index.get(peer) {
            return *i;
        }
        self.order.push(*peer);
        let i = self.order.len() as u64;
        self.index.insert(*peer, i);
        i
    }
}

struct Enc<'b> {
    out: Vec<u8>,
    actors: Actors,
    base: &'b HlcTimestamp,
    max_depth: usize,
}

impl Enc<'_> {
    fn ts(&mut self, t: &HlcTimestamp) {
        if t == self.base {
            self.out.push(0);
            return;
        }
        let a = self.actors.of(&t.peer);
        // Actor indexes are below the input length, so the shift cannot overflow.
        put_varint(&mut self.out, ((a + 1) << 1) | u64::from(t.logical != 0));
        let dt = t.physical_ms.wrapping_sub(self.base.physical_ms) as i64;
        put_varint(&mut self.out, zigzag(dt));
        if t.logical != 0 {
            put_varint(&mut self.out, u64::from(t.logical));
        }
    }

    fn value(&mut self, v: &Value) -> Result<()> {
        let mut w = Writer::with_capacity(16);
        write_value(&mut w, v, 0, self.max_depth)?;
        self.out.extend_from_slice(&w.into_bytes());
        Ok(())
    }

    fn tags(&mut self, tags: &BTreeSet<HlcTimestamp>) {
        put_varint(&mut self.out, tags.len() as u64);
        for t in tags {
            self.ts(t);
        }
    }

    fn table(&mut self, table: &BTreeMap<PeerId, u64>) {
        put_varint(&mut self.out, table.len() as u64);
        for (peer, n) in table {
            let a = self.actors.of(peer);
            put_varint(&mut self.out, a);
            put_varint(&mut self.out, *n);
        }
    }

    fn field(&mut self, f: &Field) -> Result<()> {
        let has_counter = !f.counter().is_empty();
        let has_set = !f.set().is_bottom();
        let parts =
            u8::from(f.write().is_some()) | (u8::from(has_counter) << 1) | (u8::from(has_set) << 2);
        self.out.push(parts);
        if let Some(w) = f.write() {
            self.ts(&w.timestamp());
            match w.value() {
                Slot::Absent => self.out.push(0),
                Slot::Value(v) => {
                    self.out.push(1);
                    self.value(v)?;
                }
                Slot::Counter => self.out.push(2),
                Slot::Set => self.out.push(3),
            }
        }
        if has_counter {
            self.table(f.counter().increments());
            self.table(f.counter().decrements());
        }
        if has_set {
            let entries: Vec<_> = f.set().entries().collect();
            put_varint(&mut self.out, entries.len() as u64);
            for (item, live, removed) in entries {
                self.value(item)?;
                self.tags(live);
                self.tags(removed);
            }
        }
        Ok(())
    }

    fn delta(&mut self, d: &DocumentCrdt) -> Result<()> {
        let flags = u8::from(d.written().is_some()) | (u8::from(d.deleted().is_some()) << 1);
        self.out.push(flags);
        if let Some(t) = d.written() {
            self.ts(&t);
        }
        if let Some(t) = d.deleted() {
            self.ts(&t);
        }
        put_varint(&mut self.out, d.fields().len() as u64);
        // BTreeMap<String, _> iterates in byte order of the names.
        for (name, field) in d.fields() {
            put_str(&mut self.out, name.as_bytes());
            self.field(field)?;
        }
        Ok(())
    }
}

/// Appends the compact form of `delta` to `out`, timestamps coded relative to
/// `base` (whose peer is actor 0 and is not written).
pub fn write_delta_compact(
    out: &mut Vec<u8>,
    delta: &DocumentCrdt,
    base: &HlcTimestamp,
    limits: &Limits,
) -> Result<()> {
    let mut enc = Enc {
        out: Vec::with_capacity(64),
        actors: Actors::new(base.peer),
        base,
        max_depth: limits.effective_depth(),
    };
    enc.delta(delta)?;
    put_varint(out, enc.actors.order.len() as u64);
    for p in &enc.actors.order {
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(&enc.out);
    Ok(())
}

/// The compact form of `delta` relative to `base` (see the module docs).
pub fn encode_delta_compact(delta: &DocumentCrdt, base: &HlcTimestamp) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    write_delta_compact(&mut out, delta, base, &Limits::DEFAULT)?;
    Ok(out)
}

struct Dec<'a, 'b> {
    c: Cursor<'a>,
    actors: Vec<PeerId>,
    base: &'b HlcTimestamp,
    limits: Limits,
}

impl Dec<'_, '_> {
    fn actor(&mut self, a: u64) -> Result<PeerId> {
        if a == 0 {
            return Ok(self.base.peer);
        }
        usize::try_from(a - 1)
            .ok()
            .and_then(|i| self.actors.get(i))
            .copied()
            .ok_or(invalid("actor", "index beyond the actor table"))
    }

    fn ts(&mut self) -> Result<HlcTimestamp> {
        let code = self.c.varint()?;
        if code == 0 {
            return Ok(*self.base);
        }
        if code < 2 {
            return Err(invalid("ts", "no actor"));
        }
        let peer = self.actor((code >> 1) - 1)?;
        let dt = unzigzag(self.c.varint()?);
        let physical = self.base.physical_ms.wrapping_add(dt as u64);
        let logical = if code & 1 == 1 {
            u32::try_from(self.c.varint()?)
                .map_err(|_| invalid("ts", "logical counter out of range"))?
        } else {
            0
        };
        Ok(HlcTimestamp::new(physical, logical, peer))
    }

    fn tags(&mut self) -> Result<BTreeSet<HlcTimestamp>> {
        let n = self.c.count()?;
        let mut out = BTreeSet::new();
        for _ in 0..n {
            out.insert(self.ts()?);
        }
        Ok(out)
    }

    fn table(&mut self) -> Result<Vec<(PeerId, u64)>> {
        let n = self.c.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let a = self.c.varint()?;
            let peer = self.actor(a)?;
            out.push((peer, self.c.varint()?));
        }
        Ok(out)
    }

    fn field(&mut self) -> Result<Field> {
        let parts = self.c.byte()?;
        if parts & !0b111 != 0 {
            return Err(invalid("parts", "unknown part bits"));
        }
        let write = if parts & 1 != 0 {
            let ts = self.ts()?;
            let slot = match self.c.byte()? {
                0 => Slot::Absent,
                1 => Slot::Value(self.c.value(&self.limits)?),
                2 => Slot::Counter,
                3 => Slot::Set,
                _ => return Err(invalid("slot", "unknown slot kind")),
            };
            Some(LwwRegister::from_parts(slot, ts))
        } else {
            None
        };
        let counter = if parts & 2 != 0 {
            let inc = self.table()?;
            let dec = self.table()?;
            PnCounter::from_parts(inc, dec).map_err(|_| invalid("counter", "invalid counter"))?
        } else {
            PnCounter::new()
        };
        let set = if parts & 4 != 0 {
            let n = self.c.count()?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let item = self.c.value(&self.limits)?;
                let live = self.tags()?;
                let removed = self.tags()?;
                entries.push((item, live, removed));
            }
            OrSet::from_parts(entries).map_err(|_| invalid("set", "invalid set"))?
        } else {
            OrSet::new()
        };
        Field::from_parts(write, counter, set).map_err(|_| invalid("field", "all parts empty"))
    }

    fn delta(&mut self) -> Result<DocumentCrdt> {
        let n = self.c.count()?;
        // Each actor takes 32 bytes; `count` only bounded it by one byte each.
        if n.saturating_mul(32) > self.c.remaining() {
            return Err(WireError::Truncated {
                offset: self.c.position(),
            });
        }
        self.actors = Vec::with_capacity(n);
        for _ in 0..n {
            self.actors.push(PeerId::from_digest(self.c.array::<32>()?));
        }
        let flags = self.c.byte()?;
        if flags & !0b11 != 0 {
            return Err(invalid("flags", "unknown flag bits"));
        }
        let written = if flags & 1 != 0 {
            Some(self.ts()?)
        } else {
            None
        };
        let deleted = if flags & 2 != 0 {
            Some(self.ts()?)
        } else {
            None
        };
        let n = self.c.count()?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.c.text()?.to_owned();
            fields.push((name, self.field()?));
        }
        DocumentCrdt::from_parts(fields, written, deleted)
            .map_err(|_| invalid("fields", "empty or repeated field name"))
    }
}

/// Reads a compact delta relative to `base` from the front of `bytes`;
/// returns it and how many bytes it took. Not strict on its own: callers
/// compare a re-encoding (as [`decode_delta_compact`] does).
pub fn read_delta_compact(
    bytes: &[u8],
    base: &HlcTimestamp,
    limits: &Limits,
) -> Result<(DocumentCrdt, usize)> {
    let mut dec = Dec {
        c: Cursor::new(bytes),
        actors: Vec::new(),
        base,
        limits: *limits,
    };
    let delta = dec.delta()?;
    Ok((delta, dec.c.position()))
}

/// Decodes exactly one compact delta relative to `base`, refusing every input
/// that is not the one compact encoding of what it holds.
pub fn decode_delta_compact(
    bytes: &[u8],
    base: &HlcTimestamp,
    limits: &Limits,
) -> Result<DocumentCrdt> {
    let (delta, used) = read_delta_compact(bytes, base, limits)?;
    Cursor {
        buf: bytes,
        pos: used,
    }
    .finish()?;
    let mut again = Vec::with_capacity(bytes.len());
    write_delta_compact(&mut again, &delta, base, limits)?;
    if again != bytes {
        return Err(invalid("*", "not the canonical compact encoding"));
    }
    Ok(delta)
}

pub use crate::compact_state::{
    decode_document_compact, decode_state_compact, encode_document_compact, encode_state_compact,
};
