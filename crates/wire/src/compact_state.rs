//! The standalone compact form of a whole [`DocumentCrdt`] state or update:
//! what [`encode_document_compact`] and [`encode_state_compact`] write, for
//! updates sent on their own and for whole-state sync.
//!
//! Like the delta form of [`crate::compact`] (which version nodes embed, and
//! which stays as it is), it sits beside the canonical DAG-CBOR form: the
//! receiver rebuilds the state and, from it, the exact canonical bytes. It
//! spends its bytes as follows (see `docs/benchmarks.md`, "compact byte budget"):
//!
//! - one **head** byte says what follows: the base timestamp (the state's
//!   [`max_timestamp`](DocumentCrdt::max_timestamp)), whether its peer is the
//!   *known* author (the authenticated sender of the bytes, which the link
//!   supplies: then the 32-byte peer id is not written), whether its logical
//!   counter is not 0, and the document's `written`/`deleted` timestamps
//!   (most often the base itself: then they cost no byte);
//! - peers appear **inline, once**: a timestamp or counter entry naming a
//!   peer not seen yet carries its 32 bytes, later ones a varint index
//!   (index 0 is the base peer);
//! - timestamps are coded relative to the base (zigzag physical difference,
//!   logical counter only when not 0); a field written at the base time or at
//!   the time of the field before it costs no timestamp byte at all;
//! - field names are **front-coded** against the previous name (fields are
//!   sorted), so `k100`, `k101` share their prefix;
//! - values use a compact tagged form: integers 0..=239, booleans and null in
//!   the tag byte, other integers as zigzag varints, and a **string table**:
//!   a map key or text seen before in the same state is a varint reference.
//!
//! # Layout
//!
//! ```text
//! state  = 0x00                                   ; the empty state
//!        | head [peer:32] [physical:varint] [logical:varint]
//!          [written:ts] [deleted:ts] nfields:varint field*
//! head   = bit 0: 1 (not empty)
//!          bit 1: the base peer is the known author (not written)
//!          bit 2: the base logical counter follows
//!          bit 3: no base: no timestamp anywhere (base = 0.0 @ zero peer, not written)
//!          bits 4-5 written, bits 6-7 deleted: 0 none, 1 the base, 2 a ts follows
//! field  = name fhead [ts] [cval] [counter] [set]
//! name   = ((shared << 4) | min(len, 15)):varint [len - 15:varint] suffix{len}
//!                                                 ; shared = prefix bytes of the previous name
//! fhead  = bits 0-2 write: 0 none, 1 absent, 2 counter, 3 set, 4 value (a cval follows)
//!          bit 3 counter part, bit 4 set part
//!          bits 5-6 write time: 0 the base, 1 the previous field's write time, 2 a ts follows
//! ts     = 0                                      ; the base (not used after fhead)
//!        | (1 + (a << 1 | l)):varint [peer:32 if a = 0] dt:zigzag [logical:varint if l]
//!                                                 ; a = 0: a new peer; a = k + 1: peer k
//! actor  = 0 peer:32 | (k + 1):varint             ; as in ts
//! counter = n:varint (actor n:varint){n} for increments, then decrements
//! set    = n:varint (cval live:tags removed:tags){n};  tags = n:varint ts{n}
//! cval   = 0x00 null | 0x01 false | 0x02 true | 0x03 float:8 (big endian)
//!        | 0x04 int:zigzag                        ; an integer outside 0..=239
//!        | 0x05 str                               ; a text not in the table (then added)
//!        | 0x06 k:varint                          ; the table's text k
//!        | 0x07 str                               ; bytes
//!        | 0x08 str                               ; a link (binary CID)
//!        | 0x09 n:varint cval{n}                  ; array
//!        | 0x0a n:varint (key cval){n}            ; map, keys in byte order
//!        | 0x10 + v                               ; the integer v, 0..=239
//! key    = 0 str (added to the table) | (k + 1):varint
//! str    = len:varint bytes
//! ```
//!
//! Every choice above is forced (the shortest form is always taken), so each
//! state has exactly one encoding for a given known author; the decoder
//! re-encodes what it read and refuses any input that does not come back byte
//! for byte. It is bounded: counts are checked against the bytes left before
//! anything is allocated, nesting against [`Limits::max_depth`], and the text
//! that references and shared prefixes can rebuild from few bytes is capped
//! at 64 times the input (and at [`Limits::max_len`]).

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_crdt::{DocumentCrdt, Field, LwwRegister, OrSet, PnCounter, Slot};
use ecomesh_types::{ContentId, HlcTimestamp, Map, PeerId, Value};

use crate::cbor::Limits;
use crate::compact::{Cursor, put_str, put_varint, unzigzag, zigzag};
use crate::error::{Result, WireError};

const CONTEXT: &str = "compact state";

const HEAD_NONEMPTY: u8 = 0x01;
const HEAD_KNOWN_PEER: u8 = 0x02;
const HEAD_LOGICAL: u8 = 0x04;
const HEAD_NO_BASE: u8 = 0x08;
const HEAD_WRITTEN: u32 = 4;
const HEAD_DELETED: u32 = 6;

const WRITE_NONE: u8 = 0;
const WRITE_ABSENT: u8 = 1;
const WRITE_COUNTER: u8 = 2;
const WRITE_SET: u8 = 3;
const WRITE_VALUE: u8 = 4;
const PART_COUNTER: u8 = 0x08;
const PART_SET: u8 = 0x10;
const TIME_SHIFT: u32 = 5;
const TIME_BASE: u8 = 0;
const TIME_PREVIOUS: u8 = 1;
const TIME_FOLLOWS: u8 = 2;

const V_NULL: u8 = 0x00;
const V_FALSE: u8 = 0x01;
const V_TRUE: u8 = 0x02;
const V_FLOAT: u8 = 0x03;
const V_INT: u8 = 0x04;
const V_TEXT: u8 = 0x05;
const V_TEXT_REF: u8 = 0x06;
const V_BYTES: u8 = 0x07;
const V_LINK: u8 = 0x08;
const V_ARRAY: u8 = 0x09;
const V_MAP: u8 = 0x0a;
const V_SMALL: u8 = 0x10;
/// Integers `0..SMALL_INTS` sit in the tag byte.
const SMALL_INTS: i64 = 256 - V_SMALL as i64;

/// More than the maps and arrays the canonical document form opens around a
/// field's value or set element.
const CANONICAL_WRAPPING: usize = 8;

/// How many times its input length a decode may rebuild as text from
/// references and shared prefixes.
const EXPANSION: usize = 64;

fn invalid(field: &'static str, reason: &'static str) -> WireError {
    WireError::InvalidField {
        context: CONTEXT,
        field,
        reason,
    }
}

/// The base of a state: its latest timestamp, or (when it has none) the zero
/// timestamp, which is not written.
fn base_of(state: &DocumentCrdt) -> (HlcTimestamp, bool) {
    match state.max_timestamp() {
        Some(t) => (t, true),
        None => (HlcTimestamp::new(0, 0, PeerId::from_digest([0; 32])), false),
    }
}

struct Enc<'s> {
    out: Vec<u8>,
    base: HlcTimestamp,
    actors: BTreeMap<PeerId, u64>,
    strings: BTreeMap<&'s str, u64>,
    prev_write: Option<HlcTimestamp>,
    max_depth: usize,
}

impl<'s> Enc<'s> {
    /// `(1 + (a << 1 | l))` and what follows; never the byte 0.
    fn ts_follows(&mut self, t: &HlcTimestamp) {
        let l = u64::from(t.logical != 0);
        let a = self.actor_code(&t.peer);
        put_varint(&mut self.out, 1 + ((a << 1) | l));
        if a == 0 {
            self.out.extend_from_slice(t.peer.as_bytes());
        }
        let dt = t.physical_ms.wrapping_sub(self.base.physical_ms) as i64;
        put_varint(&mut self.out, zigzag(dt));
        if l == 1 {
            put_varint(&mut self.out, u64::from(t.logical));
        }
    }

    fn ts(&mut self, t: &HlcTimestamp) {
        if *t == self.base {
            self.out.push(0);
        } else {
            self.ts_follows(t);
        }
    }

    /// 0 for a peer not seen yet (which it then adds), else its index + 1.
    fn actor_code(&mut self, peer: &PeerId) -> u64 {
        if let Some(k) = self.actors.get(peer) {
            return k + 1;
        }
        let k = self.actors.len() as u64;
        self.actors.insert(*peer, k);
        0
    }

    fn actor(&mut self, peer: &PeerId) {
        let a = self.actor_code(peer);
        put_varint(&mut self.out, a);
        if a == 0 {
            self.out.extend_from_slice(peer.as_bytes());
        }
    }

    /// The string's table index, adding it when it is new.
    fn string(&mut self, s: &'s str) -> Option<u64> {
        if let Some(k) = self.strings.get(s) {
            return Some(*k);
        }
        let k = self.strings.len() as u64;
        self.strings.insert(s, k);
        None
    }

    fn value(&mut self, v: &'s Value, depth: usize) -> Result<()> {
        match v {
            Value::Null => self.out.push(V_NULL),
            Value::Bool(false) => self.out.push(V_FALSE),
            Value::Bool(true) => self.out.push(V_TRUE),
            Value::Integer(i) if (0..SMALL_INTS).contains(i) => {
                // In range by the guard.
                self.out.push(V_SMALL + *i as u8);
            }
            Value::Integer(i) => {
                self.out.push(V_INT);
                put_varint(&mut self.out, zigzag(*i));
            }
            Value::Float(f) => {
                if !f.is_finite() {
                    return Err(WireError::NonFiniteFloat { offset: None });
                }
                self.out.push(V_FLOAT);
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Text(s) => match self.string(s) {
                Some(k) => {
                    self.out.push(V_TEXT_REF);
                    put_varint(&mut self.out, k);
                }
                None => {
                    self.out.push(V_TEXT);
                    put_str(&mut self.out, s.as_bytes());
                }
            },
            Value::Bytes(b) => {
                self.out.push(V_BYTES);
                put_str(&mut self.out, b);
            }
            Value::Link(id) => {
                crate::cid::check_binary_cid(&id.0).map_err(|reason| WireError::InvalidLink {
                    offset: None,
                    reason,
                })?;
                self.out.push(V_LINK);
                put_str(&mut self.out, &id.0);
            }
            Value::Array(items) => {
                if depth >= self.max_depth {
                    return Err(WireError::DepthExceeded {
                        max: self.max_depth,
                    });
                }
                self.out.push(V_ARRAY);
                put_varint(&mut self.out, items.len() as u64);
                for item in items {
                    self.value(item, depth + 1)?;
                }
            }
            Value::Map(map) => {
                if depth >= self.max_depth {
                    return Err(WireError::DepthExceeded {
                        max: self.max_depth,
                    });
                }
                self.out.push(V_MAP);
                put_varint(&mut self.out, map.len() as u64);
                for (k, item) in map {
                    match self.string(k) {
                        Some(i) => put_varint(&mut self.out, i + 1),
                        None => {
                            self.out.push(0);
                            put_str(&mut self.out, k.as_bytes());
                        }
                    }
                    self.value(item, depth + 1)?;
                }
            }
        }
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
            self.actor(peer);
            put_varint(&mut self.out, *n);
        }
    }

    fn name(&mut self, prev: &str, name: &str) {
        let shared = prev
            .bytes()
            .zip(name.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let suffix = &name.as_bytes()[shared..];
        let len = suffix.len();
        put_varint(&mut self.out, ((shared as u64) << 4) | (len.min(15) as u64));
        if len >= 15 {
            put_varint(&mut self.out, (len - 15) as u64);
        }
        self.out.extend_from_slice(suffix);
    }

    fn field(&mut self, f: &'s Field) -> Result<()> {
        let has_counter = !f.counter().is_empty();
        let has_set = !f.set().is_bottom();
        let mut head = (u8::from(has_counter) * PART_COUNTER) | (u8::from(has_set) * PART_SET);
        let write = f.write();
        if let Some(w) = write {
            head |= match w.value() {
                Slot::Absent => WRITE_ABSENT,
                Slot::Counter => WRITE_COUNTER,
                Slot::Set => WRITE_SET,
                Slot::Value(_) => WRITE_VALUE,
            };
            let t = w.timestamp();
            let time = if t == self.base {
                TIME_BASE
            } else if self.prev_write == Some(t) {
                TIME_PREVIOUS
            } else {
                TIME_FOLLOWS
            };
            head |= time << TIME_SHIFT;
            self.out.push(head);
            if time == TIME_FOLLOWS {
                self.ts_follows(&t);
            }
            self.prev_write = Some(t);
            if let Slot::Value(v) = w.value() {
                self.value(v, 0)?;
            }
        } else {
            self.out.push(head | WRITE_NONE);
        }
        if has_counter {
            self.table(f.counter().increments());
            self.table(f.counter().decrements());
        }
        if has_set {
            let entries: Vec<_> = f.set().entries().collect();
            put_varint(&mut self.out, entries.len() as u64);
            for (item, live, removed) in entries {
                self.value(item, 0)?;
                self.tags(live);
                self.tags(removed);
            }
        }
        Ok(())
    }
}

fn presence(t: Option<HlcTimestamp>, base: &HlcTimestamp) -> u8 {
    match t {
        None => 0,
        Some(t) if t == *base => 1,
        Some(_) => 2,
    }
}

/// The compact form of `state` (see the module docs). When `known` is the
/// peer of the state's latest timestamp (an update sent by its own author
/// over a link that authenticated it), that peer's id is left out and the
/// receiver supplies it to [`decode_state_compact`].
///
/// Fails on what has no canonical DAG-CBOR form either (non-finite floats,
/// invalid links, nesting beyond the default depth).
pub fn encode_state_compact(state: &DocumentCrdt, known: Option<&PeerId>) -> Result<Vec<u8>> {
    if state.is_empty() && state.max_timestamp().is_none() {
        return Ok(vec![0]);
    }
    let (base, has_base) = base_of(state);
    let mut enc = Enc {
        out: Vec::with_capacity(64),
        base,
        actors: BTreeMap::new(),
        strings: BTreeMap::new(),
        prev_write: None,
        max_depth: Limits::DEFAULT.effective_depth(),
    };
    enc.actors.insert(base.peer, 0);
    let written = presence(state.written(), &base);
    let deleted = presence(state.deleted(), &base);
    let mut head = HEAD_NONEMPTY | (written << HEAD_WRITTEN) | (deleted << HEAD_DELETED);
    if has_base {
        let implied = known == Some(&base.peer);
        head |=
            (u8::from(implied) * HEAD_KNOWN_PEER) | (u8::from(base.logical != 0) * HEAD_LOGICAL);
        enc.out.push(head);
        if !implied {
            enc.out.extend_from_slice(base.peer.as_bytes());
        }
        put_varint(&mut enc.out, base.physical_ms);
        if base.logical != 0 {
            put_varint(&mut enc.out, u64::from(base.logical));
        }
    } else {
        enc.out.push(head | HEAD_NO_BASE);
    }
    for (t, p) in [(state.written(), written), (state.deleted(), deleted)] {
        if let (Some(t), 2) = (t, p) {
            enc.ts_follows(&t);
        }
    }
    put_varint(&mut enc.out, state.fields().len() as u64);
    let mut prev = "";
    for (name, field) in state.fields() {
        enc.name(prev, name);
        enc.field(field)?;
        prev = name;
    }
    Ok(enc.out)
}

struct Dec<'a> {
    c: Cursor<'a>,
    base: HlcTimestamp,
    actors: Vec<PeerId>,
    strings: Vec<String>,
    prev_write: Option<HlcTimestamp>,
    /// Text bytes the decode may still rebuild.
    budget: usize,
    max_depth: usize,
    /// The deepest nesting of a value seen.
    deepest: usize,
}

impl Dec<'_> {
    fn spend(&mut self, n: usize) -> Result<()> {
        self.budget = self
            .budget
            .checked_sub(n)
            .ok_or(invalid("text", "rebuilds more text than the input allows"))?;
        Ok(())
    }

    fn peer(&mut self) -> Result<PeerId> {
        let p = PeerId::from_digest(self.c.array::<32>()?);
        self.actors.push(p);
        Ok(p)
    }

    fn actor_of(&mut self, a: u64) -> Result<PeerId> {
        if a == 0 {
            return self.peer();
        }
        usize::try_from(a - 1)
            .ok()
            .and_then(|i| self.actors.get(i))
            .copied()
            .ok_or(invalid("actor", "index beyond the peers seen"))
    }

    fn ts_follows(&mut self) -> Result<HlcTimestamp> {
        let code = self.c.varint()?;
        let code = code
            .checked_sub(1)
            .ok_or(invalid("ts", "the base where a timestamp must follow"))?;
        let peer = self.actor_of(code >> 1)?;
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

    fn ts(&mut self) -> Result<HlcTimestamp> {
        if self.c.rest().first() == Some(&0) {
            self.c.byte()?;
            return Ok(self.base);
        }
        self.ts_follows()
    }

    fn text(&mut self) -> Result<String> {
        let at = self.c.position();
        let bytes = self.c.str_bytes()?;
        self.spend(bytes.len())?;
        let s = std::str::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8 { offset: at })?;
        self.strings.push(s.to_owned());
        Ok(s.to_owned())
    }

    fn text_ref(&mut self, k: u64) -> Result<String> {
        let s = usize::try_from(k)
            .ok()
            .and_then(|k| self.strings.get(k))
            .cloned()
            .ok_or(invalid("text", "reference beyond the string table"))?;
        self.spend(s.len())?;
        Ok(s)
    }

    fn nested(&mut self, depth: usize) -> Result<()> {
        self.deepest = self.deepest.max(depth + 1);
        if depth >= self.max_depth {
            return Err(WireError::DepthExceeded {
                max: self.max_depth,
            });
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        let tag = self.c.byte()?;
        Ok(match tag {
            V_NULL => Value::Null,
            V_FALSE => Value::Bool(false),
            V_TRUE => Value::Bool(true),
            V_FLOAT => {
                let f = f64::from_be_bytes(self.c.array::<8>()?);
                if !f.is_finite() {
                    return Err(WireError::NonFiniteFloat {
                        offset: Some(self.c.position()),
                    });
                }
                Value::Float(f)
            }
            V_INT => Value::Integer(unzigzag(self.c.varint()?)),
            V_TEXT => Value::Text(self.text()?),
            V_TEXT_REF => {
                let k = self.c.varint()?;
                Value::Text(self.text_ref(k)?)
            }
            V_BYTES => Value::Bytes(self.c.str_bytes()?.to_vec()),
            V_LINK => {
                let at = self.c.position();
                let id = self.c.str_bytes()?.to_vec();
                crate::cid::check_binary_cid(&id).map_err(|reason| WireError::InvalidLink {
                    offset: Some(at),
                    reason,
                })?;
                Value::Link(ContentId(id))
            }
            V_ARRAY => {
                self.nested(depth)?;
                let n = self.c.count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            V_MAP => {
                self.nested(depth)?;
                let n = self.c.count()?;
                let mut map = Map::new();
                for _ in 0..n {
                    let k = match self.c.varint()? {
                        0 => self.text()?,
                        k => self.text_ref(k - 1)?,
                    };
                    let v = self.value(depth + 1)?;
                    map.insert(k, v);
                }
                Value::Map(map)
            }
            t if t >= V_SMALL => Value::Integer(i64::from(t - V_SMALL)),
            _ => return Err(invalid("value", "unknown value tag")),
        })
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
            let peer = self.actor_of(a)?;
            out.push((peer, self.c.varint()?));
        }
        Ok(out)
    }

    fn name(&mut self, prev: &str) -> Result<String> {
        let at = self.c.position();
        let code = self.c.varint()?;
        let shared = usize::try_from(code >> 4)
            .ok()
            .filter(|s| *s <= prev.len())
            .ok_or(invalid("name", "shares more than the previous name"))?;
        let mut len = (code & 15) as usize;
        if len == 15 {
            len = usize::try_from(self.c.varint()?)
                .ok()
                .and_then(|n| n.checked_add(15))
                .ok_or(WireError::Truncated { offset: at })?;
        }
        let suffix = self.c.take(len)?;
        self.spend(shared + len)?;
        let mut bytes = Vec::with_capacity(shared + len);
        bytes.extend_from_slice(&prev.as_bytes()[..shared]);
        bytes.extend_from_slice(suffix);
        String::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8 { offset: at })
    }

    fn field(&mut self) -> Result<Field> {
        let head = self.c.byte()?;
        if head & 0x80 != 0 {
            return Err(invalid("field", "unknown field bits"));
        }
        let kind = head & 0b111;
        let write = if kind == WRITE_NONE {
            None
        } else {
            let t = match (head >> TIME_SHIFT) & 0b11 {
                TIME_BASE => self.base,
                TIME_PREVIOUS => self
                    .prev_write
                    .ok_or(invalid("field", "no previous write time"))?,
                TIME_FOLLOWS => self.ts_follows()?,
                _ => return Err(invalid("field", "unknown write time form")),
            };
            self.prev_write = Some(t);
            let slot = match kind {
                WRITE_ABSENT => Slot::Absent,
                WRITE_COUNTER => Slot::Counter,
                WRITE_SET => Slot::Set,
                WRITE_VALUE => Slot::Value(self.value(0)?),
                _ => return Err(invalid("field", "unknown write kind")),
            };
            Some(LwwRegister::from_parts(slot, t))
        };
        let counter = if head & PART_COUNTER != 0 {
            let inc = self.table()?;
            let dec = self.table()?;
            PnCounter::from_parts(inc, dec).map_err(|_| invalid("counter", "invalid counter"))?
        } else {
            PnCounter::new()
        };
        let set = if head & PART_SET != 0 {
            let n = self.c.count()?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let item = self.value(0)?;
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

    fn presence(&mut self, p: u8) -> Result<Option<HlcTimestamp>> {
        match p {
            0 => Ok(None),
            1 => Ok(Some(self.base)),
            2 => self.ts_follows().map(Some),
            _ => Err(invalid("head", "unknown timestamp presence")),
        }
    }

    fn state(&mut self, head: u8, known: Option<&PeerId>) -> Result<DocumentCrdt> {
        if head & HEAD_NO_BASE == 0 {
            let peer = if head & HEAD_KNOWN_PEER != 0 {
                *known.ok_or(invalid("head", "the known author is not given"))?
            } else {
                PeerId::from_digest(self.c.array::<32>()?)
            };
            let physical = self.c.varint()?;
            let logical = if head & HEAD_LOGICAL != 0 {
                u32::try_from(self.c.varint()?)
                    .map_err(|_| invalid("ts", "logical counter out of range"))?
            } else {
                0
            };
            self.base = HlcTimestamp::new(physical, logical, peer);
        }
        self.actors.push(self.base.peer);
        let written = self.presence((head >> HEAD_WRITTEN) & 0b11)?;
        let deleted = self.presence((head >> HEAD_DELETED) & 0b11)?;
        let n = self.c.count()?;
        let mut fields: Vec<(String, Field)> = Vec::with_capacity(n);
        let mut prev = String::new();
        for _ in 0..n {
            let name = self.name(&prev)?;
            let field = self.field()?;
            prev.clone_from(&name);
            fields.push((name, field));
        }
        DocumentCrdt::from_parts(fields, written, deleted)
            .map_err(|_| invalid("fields", "empty or repeated field name"))
    }
}

/// Decodes [`encode_state_compact`]'s form strictly and boundedly: `known`
/// must be what the sender encoded with (the authenticated sender, for an
/// update from its author), and the input must be exactly the one encoding
/// of what it holds.
pub fn decode_state_compact(
    bytes: &[u8],
    known: Option<&PeerId>,
    limits: &Limits,
) -> Result<DocumentCrdt> {
    let mut dec = Dec {
        c: Cursor::new(bytes),
        base: HlcTimestamp::new(0, 0, PeerId::from_digest([0; 32])),
        actors: Vec::new(),
        strings: Vec::new(),
        prev_write: None,
        budget: bytes
            .len()
            .saturating_mul(EXPANSION)
            .min(usize::try_from(limits.max_len).unwrap_or(usize::MAX)),
        max_depth: limits.effective_depth(),
        deepest: 0,
    };
    let head = dec.c.byte()?;
    let state = if head == 0 {
        DocumentCrdt::new()
    } else if head & HEAD_NONEMPTY == 0 {
        return Err(invalid("head", "unknown state kind"));
    } else {
        dec.state(head, known)?
    };
    dec.c.finish()?;
    if encode_state_compact(&state, known)? != bytes {
        return Err(invalid("*", "not the canonical compact encoding"));
    }
    // The canonical form counts the document's own maps and arrays around a
    // value toward the same depth limit: a value nested near the limit is
    // accepted only when the state has canonical bytes.
    if dec.deepest + CANONICAL_WRAPPING >= dec.max_depth {
        crate::codec::encode_with(&state, limits)?;
    }
    Ok(state)
}

/// A whole state in compact form, standing on its own (every peer id
/// written): [`encode_state_compact`] with no known author.
pub fn encode_document_compact(state: &DocumentCrdt) -> Result<Vec<u8>> {
    encode_state_compact(state, None)
}

/// Decodes [`encode_document_compact`]'s form strictly (it must re-encode to `bytes`).
pub fn decode_document_compact(bytes: &[u8], limits: &Limits) -> Result<DocumentCrdt> {
    decode_state_compact(bytes, None, limits)
}
