//! Canonical DAG-CBOR for [`Value`].
//!
//! Encoding follows the IPLD DAG-CBOR specification's strictness rules:
//! string map keys sorted length-first then bytewise, shortest integer and
//! length heads, definite lengths, 64-bit finite floats, links as tag 42 around
//! `0x00 ++ binary CID`, and no other tags or simple values. The decoder
//! refuses every other form with a typed [`WireError`], so for any accepted
//! input `to_dag_cbor(from_dag_cbor(b)?) == b`.
//!
//! `Value::Integer` is an `i64`: a CBOR integer outside `i64::MIN..=i64::MAX`
//! (valid DAG-CBOR, e.g. `0x1bffffffffffffffff`) is refused with
//! [`WireError::IntegerOutOfRange`].

use ecomesh_types::{ContentId, Map, Value};

use crate::cbor::{
    CID_TAG, Limits, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, MAJOR_NINT, MAJOR_TAG, MAJOR_TEXT,
    MAJOR_UINT, Reader, Token, Writer, cmp_keys, for_each_canonical,
};
use crate::error::{Result, WireError};

/// The canonical DAG-CBOR bytes of `value`, with the default [`Limits`].
///
/// Fails on NaN/infinite floats ([`WireError::NonFiniteFloat`]), links whose
/// bytes are not exactly one binary CID ([`WireError::InvalidLink`]) and
/// nesting deeper than the default depth limit ([`WireError::DepthExceeded`]).
pub fn to_dag_cbor(value: &Value) -> Result<Vec<u8>> {
    to_dag_cbor_with(value, &Limits::DEFAULT)
}

/// [`to_dag_cbor`] with explicit limits (only `max_depth` applies when encoding).
pub fn to_dag_cbor_with(value: &Value, limits: &Limits) -> Result<Vec<u8>> {
    with_encoded(value, limits, <[u8]>::to_vec)
}

/// A scratch buffer kept per thread at most this large between encodings.
const SCRATCH_KEEP: usize = 256 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Out> = std::cell::RefCell::new(Out::new());
}

/// Encodes `value` into this thread's scratch buffer and hands the bytes to
/// `f`: one exactly sized copy (or none, when `f` only hashes them) instead
/// of a vector grown step by step.
pub(crate) fn with_encoded<T>(
    value: &Value,
    limits: &Limits,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T> {
    encode_in_scratch(value, limits, false, |bytes, _| f(bytes))
}

/// Encodes `value` like [`with_encoded`] while hashing it with SHA-256, and
/// hands `f` the bytes and their digest.
///
/// Whole 64-byte blocks are hashed as the encoder passes them, so the
/// hashing of one block overlaps the encoding of the next in the CPU instead
/// of running as a second pass over the finished bytes.
pub(crate) fn with_encoded_sha256<T>(
    value: &Value,
    limits: &Limits,
    f: impl FnOnce(&[u8], [u8; 32]) -> T,
) -> Result<T> {
    encode_in_scratch(value, limits, true, |bytes, hash| {
        let digest = match hash {
            Some(h) => h.finalize_rest(bytes),
            None => {
                let mut h = Running::default();
                h.finalize_rest(bytes)
            }
        };
        f(bytes, digest)
    })
}

fn encode_in_scratch<T>(
    value: &Value,
    limits: &Limits,
    hash: bool,
    f: impl FnOnce(&[u8], Option<&mut Running>) -> T,
) -> Result<T> {
    let max = limits.effective_depth();
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut out) => {
            out.pos = 0;
            out.hash = hash.then(Running::default);
            let result = match out.item(value, 0, max) {
                Ok(()) => {
                    let Out { buf, pos, hash, .. } = &mut *out;
                    Ok(f(&buf[..*pos], hash.as_mut()))
                }
                Err(fail) => Err(fail.into_error(&out, max)),
            };
            if out.buf.len() > SCRATCH_KEEP {
                *out = Out::new();
            }
            result
        }
        // Not reachable (encoding calls no user code), but never a panic.
        Err(_) => {
            let mut out = Out::new();
            if let Err(fail) = out.item(value, 0, max) {
                return Err(fail.into_error(&out, max));
            }
            Ok(f(out.as_bytes(), None))
        }
    })
}

/// A SHA-256 computed over the encoder's output as it grows: `fed` bytes
/// (always whole blocks) are already in `sha`.
#[derive(Default)]
struct Running {
    sha: sha2::Sha256,
    fed: usize,
}

impl Running {
    /// Hashes the whole 64-byte blocks of `bytes` past `fed`, in one call once
    /// at least `FEED_AT` bytes wait.
    #[inline]
    fn feed(&mut self, bytes: &[u8]) {
        const FEED_AT: usize = 64;
        let waiting = bytes.len() - self.fed;
        if waiting >= FEED_AT {
            let n = waiting & !63;
            sha2::Digest::update(&mut self.sha, &bytes[self.fed..self.fed + n]);
            self.fed += n;
        }
    }

    /// The digest of all of `bytes` (of which the first `fed` are hashed).
    fn finalize_rest(&mut self, bytes: &[u8]) -> [u8; 32] {
        let sha = std::mem::take(&mut self.sha);
        let rest = &bytes[self.fed..];
        self.fed = 0;
        let out = sha2::Digest::finalize(sha2::Digest::chain_update(sha, rest));
        let mut digest = [0_u8; 32];
        digest.copy_from_slice(&out);
        digest
    }
}

/// Why the fast encoder stopped, turned into a [`WireError`] once at the top
/// (a small error keeps every recursive call's result in registers).
/// The reason of an invalid link is kept in [`Out::link_error`].
#[derive(Clone, Copy, Debug)]
enum Fail {
    NonFinite,
    Link,
    Depth,
}

impl Fail {
    fn into_error(self, out: &Out, max: usize) -> WireError {
        match self {
            Fail::NonFinite => WireError::NonFiniteFloat { offset: None },
            Fail::Link => WireError::InvalidLink {
                offset: None,
                reason: out.link_error,
            },
            Fail::Depth => WireError::DepthExceeded { max },
        }
    }
}

/// The filler of unused slots when a small map's entries are ordered on the stack.
static NULL: Value = Value::Null;

/// The encoder behind [`with_encoded`]: the same bytes as [`write_value`]
/// into a [`Writer`], written into an initialised buffer through a cursor, so
/// heads, floats and short strings are fixed-size stores instead of pushes
/// and `memcpy` calls.
struct Out {
    /// Zero-initialised room; only `buf[..pos]` is output.
    buf: Vec<u8>,
    pos: usize,
    /// Why the last [`Fail::Link`] link was refused.
    link_error: &'static str,
    /// The running hash of the output, when one is wanted.
    hash: Option<Running>,
}

impl Out {
    fn new() -> Self {
        Out {
            buf: vec![0; 1024],
            pos: 0,
            link_error: "",
            hash: None,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.pos]
    }

    /// Hands the finished whole blocks to the running hash, if any.
    #[inline(always)]
    fn feed(&mut self) {
        if let Some(h) = &mut self.hash {
            h.feed(&self.buf[..self.pos]);
        }
    }

    /// Makes room for `n` more bytes after the cursor.
    #[inline]
    fn reserve(&mut self, n: usize) {
        if self.buf.len() - self.pos < n {
            self.grow(n);
        }
    }

    #[cold]
    fn grow(&mut self, n: usize) {
        let want = (self.buf.len() * 2).max(self.pos + n);
        self.buf.resize(want, 0);
    }

    /// A head with the shortest argument: one byte below 24, else the
    /// initial byte and the big-endian argument stored as one 8-byte word
    /// (its unused tail is overwritten by what follows).
    #[inline]
    fn head(&mut self, major: u8, arg: u64) {
        self.reserve(9);
        let p = self.pos;
        let m = major << 5;
        if arg < 24 {
            self.buf[p] = m | arg as u8;
            self.pos = p + 1;
            return;
        }
        let (info, n) = if arg <= u64::from(u8::MAX) {
            (24, 1)
        } else if arg <= u64::from(u16::MAX) {
            (25, 2)
        } else if arg <= u64::from(u32::MAX) {
            (26, 4)
        } else {
            (27, 8)
        };
        let dst = &mut self.buf[p..p + 9];
        dst[0] = m | info;
        dst[1..9].copy_from_slice(&(arg << (64 - 8 * n)).to_be_bytes());
        self.pos = p + 1 + n;
    }

    /// A byte or text string: head, then the bytes, short ones copied with
    /// two overlapping fixed-size moves.
    #[inline(always)]
    fn string(&mut self, major: u8, s: &[u8]) {
        self.head(major, s.len() as u64);
        let n = s.len();
        self.reserve(n);
        let p = self.pos;
        let dst = &mut self.buf[p..p + n];
        if n >= 16 {
            dst.copy_from_slice(s);
        } else if n >= 8 {
            dst[..8].copy_from_slice(&s[..8]);
            dst[n - 8..].copy_from_slice(&s[n - 8..]);
        } else if n >= 4 {
            dst[..4].copy_from_slice(&s[..4]);
            dst[n - 4..].copy_from_slice(&s[n - 4..]);
        } else if n > 0 {
            dst[0] = s[0];
            dst[n / 2] = s[n / 2];
            dst[n - 1] = s[n - 1];
        }
        self.pos = p + n;
    }

    /// One value; scalars are written inline, arrays and maps by a call.
    #[inline(always)]
    fn item(&mut self, value: &Value, depth: usize, max: usize) -> std::result::Result<(), Fail> {
        match value {
            Value::Null => self.byte(0xf6),
            Value::Bool(b) => self.byte(if *b { 0xf5 } else { 0xf4 }),
            Value::Integer(i) => {
                let i = *i;
                if i >= 0 {
                    self.head(MAJOR_UINT, i as u64);
                } else {
                    // -1 - i, computed without overflow: the bitwise complement.
                    self.head(MAJOR_NINT, !(i as u64));
                }
            }
            Value::Float(f) => {
                if !f.is_finite() {
                    return Err(Fail::NonFinite);
                }
                self.reserve(9);
                let p = self.pos;
                let dst = &mut self.buf[p..p + 9];
                dst[0] = 0xfb;
                dst[1..].copy_from_slice(&f.to_bits().to_be_bytes());
                self.pos = p + 9;
            }
            Value::Text(s) => self.string(MAJOR_TEXT, s.as_bytes()),
            Value::Bytes(b) => self.string(MAJOR_BYTES, b),
            Value::Link(id) => self.link(&id.0)?,
            Value::Array(items) => {
                if depth >= max {
                    return Err(Fail::Depth);
                }
                self.array(items, depth, max)?;
            }
            Value::Map(map) => {
                if depth >= max {
                    return Err(Fail::Depth);
                }
                self.map(map, depth, max)?;
            }
        }
        Ok(())
    }

    #[inline(never)]
    fn link(&mut self, cid: &[u8]) -> std::result::Result<(), Fail> {
        if let Err(reason) = crate::cid::check_binary_cid(cid) {
            self.link_error = reason;
            return Err(Fail::Link);
        }
        self.head(MAJOR_TAG, CID_TAG);
        self.head(MAJOR_BYTES, cid.len() as u64 + 1);
        self.byte(0x00);
        self.string_body(cid);
        Ok(())
    }

    #[inline(never)]
    fn array(
        &mut self,
        items: &[Value],
        depth: usize,
        max: usize,
    ) -> std::result::Result<(), Fail> {
        self.head(MAJOR_ARRAY, items.len() as u64);
        for item in items {
            self.item(item, depth + 1, max)?;
            self.feed();
        }
        Ok(())
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        self.reserve(1);
        self.buf[self.pos] = b;
        self.pos += 1;
    }

    fn string_body(&mut self, s: &[u8]) {
        self.reserve(s.len());
        self.buf[self.pos..self.pos + s.len()].copy_from_slice(s);
        self.pos += s.len();
    }

    /// A map in canonical key order (length-first, then bytewise; the
    /// `BTreeMap` gives bytewise order, so a stable sort by length suffices).
    #[inline(never)]
    fn map(&mut self, map: &Map, depth: usize, max: usize) -> std::result::Result<(), Fail> {
        self.head(MAJOR_MAP, map.len() as u64);
        match map.len() {
            0..=8 => self.small_map::<8>(map, depth, max),
            9..=16 => self.small_map::<16>(map, depth, max),
            _ => for_each_canonical(map.iter(), |k, v| {
                self.string(MAJOR_TEXT, k.as_bytes());
                self.item(v, depth + 1, max)?;
                self.feed();
                Ok(())
            }),
        }
    }

    /// A map of at most `N` (at most 256) entries, put in order on the stack:
    /// the entries are gathered once; when their keys are not already in
    /// length order, a stable insertion sort of small `(length, index)` words
    /// gives the order, so no entry moves.
    #[inline(always)]
    fn small_map<const N: usize>(
        &mut self,
        map: &Map,
        depth: usize,
        max: usize,
    ) -> std::result::Result<(), Fail> {
        let mut entries: [(&str, &Value); N] = [("", &NULL); N];
        let mut len = 0;
        let mut in_order = true;
        let mut prev = 0;
        for (k, v) in map.iter().take(N) {
            entries[len] = (k.as_str(), v);
            in_order &= k.len() >= prev;
            prev = k.len();
            len += 1;
        }
        if in_order {
            for &(k, v) in &entries[..len] {
                self.entry(k, v, depth, max)?;
            }
            return Ok(());
        }
        // (key length << 8 | index): equal lengths keep their bytewise order.
        let mut order = [0_u64; N];
        for (i, (k, _)) in entries[..len].iter().enumerate() {
            let word = ((k.len() as u64) << 8) | i as u64;
            let mut j = i;
            while j > 0 && order[j - 1] > word {
                order[j] = order[j - 1];
                j -= 1;
            }
            order[j] = word;
        }
        for &word in &order[..len] {
            let (k, v) = entries[(word & 0xff) as usize];
            self.entry(k, v, depth, max)?;
        }
        Ok(())
    }

    /// One map entry: its key, its value, then whole blocks to the hash.
    #[inline(always)]
    fn entry(
        &mut self,
        k: &str,
        v: &Value,
        depth: usize,
        max: usize,
    ) -> std::result::Result<(), Fail> {
        self.string(MAJOR_TEXT, k.as_bytes());
        self.item(v, depth + 1, max)?;
        self.feed();
        Ok(())
    }
}

/// Appends the canonical encoding of `value` to `w`. `depth` is the number of
/// arrays/maps already open around it.
pub(crate) fn write_value(w: &mut Writer, value: &Value, depth: usize, max: usize) -> Result<()> {
    match value {
        Value::Null => w.null(),
        Value::Bool(b) => w.bool(*b),
        Value::Integer(i) => w.int(*i),
        Value::Float(f) => w.float(*f)?,
        Value::Text(s) => w.text(s),
        Value::Bytes(b) => w.bytes(b),
        Value::Link(id) => write_link(w, id)?,
        Value::Array(items) => {
            if depth >= max {
                return Err(WireError::DepthExceeded { max });
            }
            w.array(items.len());
            for item in items {
                write_value(w, item, depth + 1, max)?;
            }
        }
        Value::Map(map) => {
            if depth >= max {
                return Err(WireError::DepthExceeded { max });
            }
            write_map(w, map, depth, max)?;
        }
    }
    Ok(())
}

fn write_map(w: &mut Writer, map: &Map, depth: usize, max: usize) -> Result<()> {
    // BTreeMap orders keys bytewise; DAG-CBOR orders them length-first.
    w.map(map.len());
    for_each_canonical(map.iter(), |k, v| {
        w.text(k);
        write_value(w, v, depth + 1, max)
    })
}

/// Writes a link after checking that its bytes are one canonical binary CID.
pub(crate) fn write_link(w: &mut Writer, id: &ContentId) -> Result<()> {
    crate::cid::check_binary_cid(&id.0).map_err(|reason| WireError::InvalidLink {
        offset: None,
        reason,
    })?;
    w.link_unchecked(&id.0);
    Ok(())
}

/// Decodes exactly one canonical DAG-CBOR value, with the default [`Limits`].
pub fn from_dag_cbor(bytes: &[u8]) -> Result<Value> {
    from_dag_cbor_with(bytes, &Limits::DEFAULT)
}

/// Decodes exactly one canonical DAG-CBOR value under `limits`.
pub fn from_dag_cbor_with(bytes: &[u8], limits: &Limits) -> Result<Value> {
    let mut r = Reader::new(bytes, *limits);
    let v = read_value(&mut r, 0)?;
    r.finish()?;
    Ok(v)
}

/// Reads one value; `depth` is the number of arrays/maps already open.
pub(crate) fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<Value> {
    let offset = r.position();
    let max = r.limits().effective_depth();
    match r.token()? {
        Token::Uint(v) => i64::try_from(v)
            .map(Value::Integer)
            .map_err(|_| WireError::IntegerOutOfRange { offset }),
        Token::Nint(n) => i64::try_from(n)
            .map(|n| Value::Integer(-1 - n))
            .map_err(|_| WireError::IntegerOutOfRange { offset }),
        Token::Bytes(len) => Ok(Value::Bytes(r.bytes_body(offset, len)?.to_vec())),
        Token::Text(len) => Ok(Value::Text(r.text_body(offset, len)?.to_owned())),
        Token::Array(len) => {
            if depth >= max {
                return Err(WireError::DepthExceeded { max });
            }
            let n = r.array_len(offset, len)?;
            let mut items = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                items.push(read_value(r, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        Token::Map(len) => {
            if depth >= max {
                return Err(WireError::DepthExceeded { max });
            }
            let n = r.map_len(offset, len)?;
            let mut map = Map::new();
            let mut prev: Option<&str> = None;
            for _ in 0..n {
                let key = read_key(r, prev)?;
                let value = read_value(r, depth + 1)?;
                map.insert(key.to_owned(), value);
                prev = Some(key);
            }
            Ok(Value::Map(map))
        }
        Token::Tag(CID_TAG) => Ok(Value::Link(ContentId(r.link_body(offset)?.to_vec()))),
        Token::Tag(tag) => Err(WireError::UnsupportedTag { offset, tag }),
        Token::Bool(b) => Ok(Value::Bool(b)),
        Token::Null => Ok(Value::Null),
        Token::Float(f) => Ok(Value::Float(f)),
    }
}

/// Reads a map key: text, strictly after `prev` in canonical order.
pub(crate) fn read_key<'a>(r: &mut Reader<'a>, prev: Option<&str>) -> Result<&'a str> {
    let offset = r.position();
    let key = match r.token()? {
        Token::Text(len) => r.text_body(offset, len)?,
        _ => return Err(WireError::InvalidKey { offset }),
    };
    if let Some(prev) = prev {
        match cmp_keys(prev.as_bytes(), key.as_bytes()) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => return Err(WireError::DuplicateKey { offset }),
            std::cmp::Ordering::Greater => return Err(WireError::UnsortedKeys { offset }),
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn keys_sort_length_first() {
        let mut m = Map::new();
        for k in ["aaa", "b", "aa", "a", "ba"] {
            m.insert(k.into(), Value::Null);
        }
        let bytes = to_dag_cbor(&Value::Map(m)).unwrap();
        assert_eq!(
            bytes,
            hex("a56161f66162f6626161f6626261f663616161f6"),
            "a, b, aa, ba, aaa"
        );
    }

    #[test]
    fn canonical_order_holds_for_small_large_and_presorted_maps() {
        // 1..=40 keys of mixed lengths (the stack path up to 16, the sorted
        // path above), and 41 keys of one length (the in-order path).
        let mut x = 7_u64;
        for n in 1..=41 {
            let mut m = Map::new();
            for i in 0..n {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = if n == 41 { 3 } else { 1 + (x >> 60) as usize };
                let key: String = (0..len)
                    .map(|j| (b'a' + ((x >> (j * 3)) % 26) as u8) as char)
                    .collect();
                m.insert(key, Value::Integer(i));
            }
            let mut expected: Vec<(&String, &Value)> = m.iter().collect();
            expected.sort_by(|a, b| cmp_keys(a.0.as_bytes(), b.0.as_bytes()));
            let mut w = Writer::new();
            w.map(expected.len());
            for (k, v) in &expected {
                w.text(k);
                write_value(&mut w, v, 1, 64).unwrap();
            }
            assert_eq!(
                to_dag_cbor(&Value::Map(m.clone())).unwrap(),
                w.into_bytes(),
                "{n} keys"
            );
        }
    }

    /// The cursor encoder behind `to_dag_cbor`/`cid_of` writes exactly the
    /// bytes of the `Writer` path for strings of every short length, every
    /// head width, floats, links and maps of each size class.
    #[test]
    fn cursor_encoder_matches_writer() {
        let writer_bytes = |v: &Value| {
            let mut w = Writer::new();
            write_value(&mut w, v, 0, 64).unwrap();
            w.into_bytes()
        };
        let link = crate::cid::link(&crate::cid::cid_of(&Value::Null).unwrap());
        let mut items = vec![link, Value::Null, Value::Bool(true), Value::Float(-0.5)];
        for len in 0..40 {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            items.push(Value::Bytes(text.as_bytes().to_vec()));
            items.push(Value::Text(text));
        }
        for arg in [0, 23, 24, 255, 256, 65535, 65536, 1 << 32, i64::MAX as u64] {
            items.push(Value::Integer(arg as i64));
            items.push(Value::Integer(!(arg as i64)));
        }
        let mut doc = Value::Array(items.clone());
        for n in [0, 1, 7, 8, 9, 16, 17, 40] {
            let map: Map = items
                .iter()
                .take(n)
                .enumerate()
                .map(|(i, v)| ("k".repeat(1 + i % 5) + &i.to_string(), v.clone()))
                .collect();
            doc = Value::Array(vec![doc, Value::Map(map)]);
        }
        let big = Value::Bytes(vec![7; 5000]);
        for v in items.iter().chain([&doc, &big]) {
            assert_eq!(to_dag_cbor(v).unwrap(), writer_bytes(v), "{v:?}");
        }
    }

    #[test]
    fn strict_rejections() {
        type Check = fn(&WireError) -> bool;
        let cases: &[(&str, Check)] = &[
            // unsorted keys {"b":1,"a":2}
            ("a2616201616102", |e| {
                matches!(e, WireError::UnsortedKeys { .. })
            }),
            // longer key first {"aa":1,"b":2}
            ("a262616101616202", |e| {
                matches!(e, WireError::UnsortedKeys { .. })
            }),
            // duplicate keys
            ("a2616101616102", |e| {
                matches!(e, WireError::DuplicateKey { .. })
            }),
            // integer key
            ("a10101", |e| matches!(e, WireError::InvalidKey { .. })),
            // indefinite array
            ("9f01ff", |e| {
                matches!(e, WireError::IndefiniteLength { .. })
            }),
            // indefinite text
            ("7f6161ff", |e| {
                matches!(e, WireError::IndefiniteLength { .. })
            }),
            // half and single floats
            ("f93c00", |e| matches!(e, WireError::ShortFloat { .. })),
            ("fa3f800000", |e| matches!(e, WireError::ShortFloat { .. })),
            // NaN, +inf, -inf as 64-bit
            ("fb7ff8000000000000", |e| {
                matches!(e, WireError::NonFiniteFloat { .. })
            }),
            ("fb7ff0000000000000", |e| {
                matches!(e, WireError::NonFiniteFloat { .. })
            }),
            ("fbfff0000000000000", |e| {
                matches!(e, WireError::NonFiniteFloat { .. })
            }),
            // undefined, simple(16), simple(255)
            ("f7", |e| matches!(e, WireError::UnsupportedSimple { .. })),
            ("f0", |e| matches!(e, WireError::UnsupportedSimple { .. })),
            ("f8ff", |e| matches!(e, WireError::UnsupportedSimple { .. })),
            // trailing byte
            ("0000", |e| matches!(e, WireError::TrailingBytes { .. })),
            // invalid UTF-8
            ("62c328", |e| matches!(e, WireError::InvalidUtf8 { .. })),
            // tag 1 (epoch time)
            ("c11a514b67b0", |e| {
                matches!(e, WireError::UnsupportedTag { tag: 1, .. })
            }),
            // tag 42 written in 2 bytes
            ("d9002a4100", |e| {
                matches!(e, WireError::NonShortestEncoding { .. })
            }),
            // tag 42 around text, missing 0x00 prefix, empty, garbage CID
            ("d82a6161", |e| matches!(e, WireError::InvalidLink { .. })),
            ("d82a4101", |e| matches!(e, WireError::InvalidLink { .. })),
            ("d82a40", |e| matches!(e, WireError::InvalidLink { .. })),
            ("d82a420001", |e| matches!(e, WireError::InvalidLink { .. })),
            // integers beyond i64
            ("1bffffffffffffffff", |e| {
                matches!(e, WireError::IntegerOutOfRange { .. })
            }),
            ("3b8000000000000000", |e| {
                matches!(e, WireError::IntegerOutOfRange { .. })
            }),
            // truncated
            ("62", |e| matches!(e, WireError::Truncated { .. })),
            ("", |e| matches!(e, WireError::Truncated { .. })),
            ("fb00", |e| matches!(e, WireError::Truncated { .. })),
            // reserved info
            ("1c", |e| matches!(e, WireError::ReservedInfo { .. })),
            // stray break
            ("ff", |e| matches!(e, WireError::IndefiniteLength { .. })),
        ];
        for (input, check) in cases {
            let err = from_dag_cbor(&hex(input)).unwrap_err();
            assert!(check(&err), "{input}: {err:?}");
        }
    }

    #[test]
    fn i64_edges_decode() {
        assert_eq!(
            from_dag_cbor(&hex("3b7fffffffffffffff")).unwrap(),
            Value::Integer(i64::MIN)
        );
        assert_eq!(
            from_dag_cbor(&hex("1b7fffffffffffffff")).unwrap(),
            Value::Integer(i64::MAX)
        );
    }

    #[test]
    fn non_finite_floats_refused_on_encode() {
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                to_dag_cbor(&Value::Array(vec![Value::Float(f)])),
                Err(WireError::NonFiniteFloat { offset: None })
            );
        }
        assert_eq!(
            to_dag_cbor(&Value::Float(-0.0)).unwrap(),
            hex("fb8000000000000000")
        );
    }

    #[test]
    fn depth_limit_applies_both_ways() {
        let mut v = Value::Null;
        for _ in 0..65 {
            v = Value::Array(vec![v]);
        }
        assert_eq!(to_dag_cbor(&v), Err(WireError::DepthExceeded { max: 64 }));
        let deep = Limits {
            max_depth: 100,
            ..Limits::DEFAULT
        };
        let bytes = to_dag_cbor_with(&v, &deep).unwrap();
        assert_eq!(
            from_dag_cbor(&bytes),
            Err(WireError::DepthExceeded { max: 64 })
        );
        assert_eq!(from_dag_cbor_with(&bytes, &deep).unwrap(), v);
        // 64 levels are fine with the defaults.
        let mut ok = Value::Null;
        for _ in 0..64 {
            ok = Value::Array(vec![ok]);
        }
        assert_eq!(from_dag_cbor(&to_dag_cbor(&ok).unwrap()).unwrap(), ok);
    }

    #[test]
    fn invalid_link_bytes_refused_on_encode() {
        let v = Value::Link(ContentId(vec![1, 2, 3]));
        assert!(matches!(
            to_dag_cbor(&v),
            Err(WireError::InvalidLink { offset: None, .. })
        ));
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // Array and map claiming u32::MAX entries with nothing behind them.
        for input in ["9affffffff", "baffffffff", "5affffffff", "7affffffff"] {
            assert!(from_dag_cbor(&hex(input)).is_err(), "{input}");
        }
    }
}
