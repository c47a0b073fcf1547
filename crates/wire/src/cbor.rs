//! The CBOR token layer: a canonical writer and a strict, bounded reader.
//!
//! Both follow RFC 8949 section 4.2 ("core deterministic encoding") with the
//! extra DAG-CBOR rules: definite lengths only, floats always 64-bit and
//! finite, tag 42 only, simple values false/true/null only. The typed codecs
//! of this crate are built on these two types; most users want
//! [`crate::to_dag_cbor`] and [`crate::from_dag_cbor`] instead.

use crate::error::{Result, WireError};

/// CBOR major types.
pub(crate) const MAJOR_UINT: u8 = 0;
pub(crate) const MAJOR_NINT: u8 = 1;
pub(crate) const MAJOR_BYTES: u8 = 2;
pub(crate) const MAJOR_TEXT: u8 = 3;
pub(crate) const MAJOR_ARRAY: u8 = 4;
pub(crate) const MAJOR_MAP: u8 = 5;
pub(crate) const MAJOR_TAG: u8 = 6;
pub(crate) const MAJOR_SIMPLE: u8 = 7;

/// The CBOR tag of IPLD links.
pub const CID_TAG: u64 = 42;

/// The largest `max_depth` a [`Limits`] may ask for; larger values are clamped
/// so that the recursive decoder cannot exhaust a thread's stack.
pub const HARD_MAX_DEPTH: usize = 1024;

/// Bounds applied by every decoder (and by the encoders, so that what they
/// write can be read back with the same limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most nested arrays/maps allowed (a scalar at the top is depth 0; each
    /// array or map adds one). Clamped to [`HARD_MAX_DEPTH`].
    pub max_depth: usize,
    /// Largest length prefix accepted for a byte string, text, array or map.
    pub max_len: u64,
}

impl Limits {
    /// The default limits: depth 64, lengths up to 16 MiB / 16 Mi items.
    pub const DEFAULT: Limits = Limits {
        max_depth: 64,
        max_len: 16 * 1024 * 1024,
    };

    /// The depth limit actually enforced.
    pub fn effective_depth(&self) -> usize {
        self.max_depth.min(HARD_MAX_DEPTH)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Appends canonical CBOR tokens to a byte vector.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }

    /// A writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Writes an item head with the shortest argument encoding.
    #[inline]
    pub(crate) fn head(&mut self, major: u8, arg: u64) {
        let m = major << 5;
        if arg < 24 {
            self.buf.push(m | arg as u8);
            return;
        }
        // One append of the initial byte and the big-endian argument.
        let (info, n) = if arg <= u64::from(u8::MAX) {
            (24, 1)
        } else if arg <= u64::from(u16::MAX) {
            (25, 2)
        } else if arg <= u64::from(u32::MAX) {
            (26, 4)
        } else {
            (27, 8)
        };
        let mut head = [0_u8; 9];
        head[0] = m | info;
        head[1..=n].copy_from_slice(&arg.to_be_bytes()[8 - n..]);
        self.buf.extend_from_slice(&head[..=n]);
    }

    /// Writes an unsigned integer.
    pub fn uint(&mut self, v: u64) {
        self.head(MAJOR_UINT, v);
    }

    /// Writes a signed integer (major type 0 or 1).
    pub fn int(&mut self, v: i64) {
        if v >= 0 {
            self.head(MAJOR_UINT, v as u64);
        } else {
            // -1 - v, computed without overflow: the bitwise complement.
            self.head(MAJOR_NINT, !(v as u64));
        }
    }

    /// Writes a 64-bit float; NaN and infinities are refused.
    pub fn float(&mut self, v: f64) -> Result<()> {
        if !v.is_finite() {
            return Err(WireError::NonFiniteFloat { offset: None });
        }
        self.buf.push(0xfb);
        self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
        Ok(())
    }

    /// Writes `false` or `true`.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { 0xf5 } else { 0xf4 });
    }

    /// Writes `null`.
    pub fn null(&mut self) {
        self.buf.push(0xf6);
    }

    /// Writes a byte string.
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.reserve(9 + v.len());
        self.head(MAJOR_BYTES, v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// Writes a text string.
    pub fn text(&mut self, v: &str) {
        self.buf.reserve(9 + v.len());
        self.head(MAJOR_TEXT, v.len() as u64);
        self.buf.extend_from_slice(v.as_bytes());
    }

    /// Writes the head of an array of `len` items; the caller writes the items.
    pub fn array(&mut self, len: usize) {
        self.head(MAJOR_ARRAY, len as u64);
    }

    /// Writes the head of a map of `len` entries; the caller writes keys and values
    /// in canonical order.
    pub fn map(&mut self, len: usize) {
        self.head(MAJOR_MAP, len as u64);
    }

    /// Appends bytes that are already a canonical encoding.
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes a DAG-CBOR link: tag 42 around 0x00 followed by the binary CID.
    ///
    /// The caller has checked that `cid_bytes` is one canonical binary CID.
    pub(crate) fn link_unchecked(&mut self, cid_bytes: &[u8]) {
        self.head(MAJOR_TAG, CID_TAG);
        self.head(MAJOR_BYTES, cid_bytes.len() as u64 + 1);
        self.buf.push(0x00);
        self.buf.extend_from_slice(cid_bytes);
    }
}

/// The head of one CBOR item as the strict reader saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Token {
    /// Major type 0.
    Uint(u64),
    /// Major type 1: the value is `-1 - n`.
    Nint(u64),
    /// Major type 2 with its length.
    Bytes(u64),
    /// Major type 3 with its length.
    Text(u64),
    /// Major type 4 with its item count.
    Array(u64),
    /// Major type 5 with its entry count.
    Map(u64),
    /// Major type 6 with its tag number.
    Tag(u64),
    /// `false` / `true`.
    Bool(bool),
    /// `null`.
    Null,
    /// A finite 64-bit float.
    Float(f64),
}

/// Reads CBOR tokens from a byte slice, rejecting every non-canonical form.
///
/// Lengths are checked against the bytes that remain before anything is
/// allocated, so a forged length prefix costs nothing.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: Limits,
}

impl<'a> Reader<'a> {
    /// A reader over `buf` with the given limits.
    pub fn new(buf: &'a [u8], limits: Limits) -> Self {
        Reader {
            buf,
            pos: 0,
            limits,
        }
    }

    /// The current offset.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The input bytes between two offsets already read.
    pub(crate) fn consumed(&self, start: usize, end: usize) -> &'a [u8] {
        &self.buf[start.min(end)..end.min(self.pos)]
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails with [`WireError::TrailingBytes`] unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                offset: self.pos,
                count: self.remaining(),
            })
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(WireError::Truncated { offset: self.pos });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let slice = self.take(N)?;
        let mut out = [0_u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    /// Reads one item head, enforcing every DAG-CBOR head rule.
    pub(crate) fn token(&mut self) -> Result<Token> {
        let offset = self.pos;
        let [initial] = self.take_array::<1>()?;
        let major = initial >> 5;
        let info = initial & 0x1f;
        if major == MAJOR_SIMPLE {
            return match info {
                20 => Ok(Token::Bool(false)),
                21 => Ok(Token::Bool(true)),
                22 => Ok(Token::Null),
                25 | 26 => Err(WireError::ShortFloat { offset }),
                27 => {
                    let v = f64::from_bits(u64::from_be_bytes(self.take_array::<8>()?));
                    if v.is_finite() {
                        Ok(Token::Float(v))
                    } else {
                        Err(WireError::NonFiniteFloat {
                            offset: Some(offset),
                        })
                    }
                }
                24 => {
                    let [value] = self.take_array::<1>()?;
                    Err(WireError::UnsupportedSimple { offset, value })
                }
                28..=30 => Err(WireError::ReservedInfo { offset }),
                31 => Err(WireError::IndefiniteLength { offset }),
                value => Err(WireError::UnsupportedSimple { offset, value }),
            };
        }
        let arg = match info {
            0..=23 => u64::from(info),
            24 => {
                let v = u64::from(self.take_array::<1>()?[0]);
                if v < 24 {
                    return Err(WireError::NonShortestEncoding { offset });
                }
                v
            }
            25 => {
                let v = u64::from(u16::from_be_bytes(self.take_array::<2>()?));
                if v <= u64::from(u8::MAX) {
                    return Err(WireError::NonShortestEncoding { offset });
                }
                v
            }
            26 => {
                let v = u64::from(u32::from_be_bytes(self.take_array::<4>()?));
                if v <= u64::from(u16::MAX) {
                    return Err(WireError::NonShortestEncoding { offset });
                }
                v
            }
            27 => {
                let v = u64::from_be_bytes(self.take_array::<8>()?);
                if v <= u64::from(u32::MAX) {
                    return Err(WireError::NonShortestEncoding { offset });
                }
                v
            }
            28..=30 => return Err(WireError::ReservedInfo { offset }),
            _ => return Err(WireError::IndefiniteLength { offset }),
        };
        Ok(match major {
            MAJOR_UINT => Token::Uint(arg),
            MAJOR_NINT => Token::Nint(arg),
            MAJOR_BYTES => Token::Bytes(arg),
            MAJOR_TEXT => Token::Text(arg),
            MAJOR_ARRAY => Token::Array(arg),
            MAJOR_MAP => Token::Map(arg),
            _ => Token::Tag(arg),
        })
    }

    fn check_len(&self, offset: usize, len: u64, min_bytes_each: u64) -> Result<usize> {
        if len > self.limits.max_len {
            return Err(WireError::LengthExceeded {
                offset,
                len,
                max: self.limits.max_len,
            });
        }
        // Every item needs at least `min_bytes_each` more bytes of input.
        let needed = len.saturating_mul(min_bytes_each);
        if needed > self.remaining() as u64 {
            return Err(WireError::Truncated { offset });
        }
        // `needed <= remaining`, so the length fits in usize.
        Ok(len as usize)
    }

    /// Reads the payload of a byte string whose head was `Token::Bytes(len)`.
    pub(crate) fn bytes_body(&mut self, offset: usize, len: u64) -> Result<&'a [u8]> {
        let n = self.check_len(offset, len, 1)?;
        self.take(n)
    }

    /// Reads the payload of a text string whose head was `Token::Text(len)`.
    pub(crate) fn text_body(&mut self, offset: usize, len: u64) -> Result<&'a str> {
        let n = self.check_len(offset, len, 1)?;
        let raw = self.take(n)?;
        std::str::from_utf8(raw).map_err(|_| WireError::InvalidUtf8 { offset })
    }

    /// Checks an array count against the limits and the remaining input.
    pub(crate) fn array_len(&self, offset: usize, len: u64) -> Result<usize> {
        self.check_len(offset, len, 1)
    }

    /// Checks a map count against the limits and the remaining input.
    pub(crate) fn map_len(&self, offset: usize, len: u64) -> Result<usize> {
        self.check_len(offset, len, 2)
    }

    /// Reads a complete link (tag already consumed): the byte string, its 0x00
    /// prefix and one canonical binary CID filling the rest.
    pub(crate) fn link_body(&mut self, tag_offset: usize) -> Result<&'a [u8]> {
        let offset = self.pos;
        let len = match self.token()? {
            Token::Bytes(len) => len,
            _ => {
                return Err(WireError::InvalidLink {
                    offset: Some(tag_offset),
                    reason: "tag 42 must wrap a byte string",
                });
            }
        };
        let raw = self.bytes_body(offset, len)?;
        match raw.split_first() {
            Some((0x00, cid)) => {
                crate::cid::check_binary_cid(cid).map_err(|reason| WireError::InvalidLink {
                    offset: Some(tag_offset),
                    reason,
                })?;
                Ok(cid)
            }
            Some(_) => Err(WireError::InvalidLink {
                offset: Some(tag_offset),
                reason: "missing the 0x00 multibase prefix",
            }),
            None => Err(WireError::InvalidLink {
                offset: Some(tag_offset),
                reason: "empty byte string",
            }),
        }
    }

    // ---- typed helpers for the schema codecs ----

    /// Reads an unsigned integer.
    pub fn read_uint(&mut self) -> Result<u64> {
        let offset = self.pos;
        match self.token()? {
            Token::Uint(v) => Ok(v),
            _ => Err(WireError::UnexpectedKind {
                offset,
                expected: "unsigned integer",
            }),
        }
    }

    /// Reads a signed integer that fits in `i64`.
    pub fn read_int(&mut self) -> Result<i64> {
        let offset = self.pos;
        match self.token()? {
            Token::Uint(v) => i64::try_from(v).map_err(|_| WireError::IntegerOutOfRange { offset }),
            Token::Nint(n) => i64::try_from(n)
                .map(|n| -1 - n)
                .map_err(|_| WireError::IntegerOutOfRange { offset }),
            _ => Err(WireError::UnexpectedKind {
                offset,
                expected: "integer",
            }),
        }
    }

    /// Reads a byte string.
    pub fn read_bytes(&mut self) -> Result<&'a [u8]> {
        let offset = self.pos;
        match self.token()? {
            Token::Bytes(len) => self.bytes_body(offset, len),
            _ => Err(WireError::UnexpectedKind {
                offset,
                expected: "byte string",
            }),
        }
    }

    /// Reads a text string.
    pub fn read_text(&mut self) -> Result<&'a str> {
        let offset = self.pos;
        match self.token()? {
            Token::Text(len) => self.text_body(offset, len),
            _ => Err(WireError::UnexpectedKind {
                offset,
                expected: "text string",
            }),
        }
    }

    /// Reads a map head and returns its entry count.
    pub fn read_map_len(&mut self) -> Result<usize> {
        let offset = self.pos;
        match self.token()? {
            Token::Map(len) => self.map_len(offset, len),
            _ => Err(WireError::UnexpectedKind {
                offset,
                expected: "map",
            }),
        }
    }

    /// Reads an array head and returns its item count.
    pub fn read_array_len(&mut self) -> Result<usize> {
        let offset = self.pos;
        match self.token()? {
            Token::Array(len) => self.array_len(offset, len),
            _ => Err(WireError::UnexpectedKind {
                offset,
                expected: "array",
            }),
        }
    }

    /// Reads `true` or `false`.
    pub fn read_bool(&mut self) -> Result<bool> {
        let offset = self.pos;
        match self.token()? {
            Token::Bool(b) => Ok(b),
            _ => Err(WireError::UnexpectedKind {
                offset,
                expected: "boolean",
            }),
        }
    }

    /// Reads a link and returns its binary CID (without the 0x00 prefix).
    pub fn read_link(&mut self) -> Result<&'a [u8]> {
        let offset = self.pos;
        match self.token()? {
            Token::Tag(CID_TAG) => self.link_body(offset),
            Token::Tag(tag) => Err(WireError::UnsupportedTag { offset, tag }),
            _ => Err(WireError::UnexpectedKind {
                offset,
                expected: "link",
            }),
        }
    }

    /// True when the next item is `null` (consuming it).
    pub fn read_null_or(&mut self) -> Result<bool> {
        if self.buf.get(self.pos) == Some(&0xf6) {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

/// The canonical DAG-CBOR order of two map keys: shorter first, then bytewise.
pub fn cmp_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Maps up to this many entries are put in canonical order on the stack.
const SMALL_MAP: usize = 16;

/// Calls `f` on the entries of a map whose keys come in bytewise order (a
/// `BTreeMap<String, _>`'s iteration order), in canonical DAG-CBOR order
/// (length-first, then bytewise), stopping at the first error.
///
/// Length-first-then-bytewise is the bytewise order stably sorted by length,
/// so no key is compared: a small map is insertion-sorted by length on the
/// stack in one pass, a large one is visited as it comes when its keys are
/// already in length order (all one length, the common case) and otherwise
/// collected and stably sorted by length.
pub(crate) fn for_each_canonical<'a, V: ?Sized + 'a, E>(
    entries: impl ExactSizeIterator<Item = (&'a String, &'a V)> + Clone,
    mut f: impl FnMut(&'a str, &'a V) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let n = entries.len();
    if n <= SMALL_MAP {
        // One pass: stable insertion by length (equal lengths keep their
        // bytewise order); keys already in length order move nothing.
        let mut sorted: [(&str, Option<&V>); SMALL_MAP] = [("", None); SMALL_MAP];
        let mut len = 0;
        for (k, v) in entries.take(SMALL_MAP) {
            let mut j = len;
            while j > 0 && sorted[j - 1].0.len() > k.len() {
                sorted[j] = sorted[j - 1];
                j -= 1;
            }
            sorted[j] = (k, Some(v));
            len += 1;
        }
        for (k, v) in &sorted[..len] {
            if let Some(v) = v {
                f(k, v)?;
            }
        }
        return Ok(());
    }
    let mut prev = 0;
    let in_order = entries.clone().all(|(k, _)| {
        let ok = k.len() >= prev;
        prev = k.len();
        ok
    });
    if in_order {
        for (k, v) in entries {
            f(k, v)?;
        }
    } else {
        let mut sorted: Vec<(&String, &V)> = entries.collect();
        // `sort_by_key` is stable: equal lengths keep their bytewise order.
        sorted.sort_by_key(|(k, _)| k.len());
        for (k, v) in sorted {
            f(k, v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_bytes(major: u8, arg: u64) -> Vec<u8> {
        let mut w = Writer::new();
        w.head(major, arg);
        w.into_bytes()
    }

    #[test]
    fn heads_are_shortest_at_every_boundary() {
        assert_eq!(head_bytes(0, 23), [0x17]);
        assert_eq!(head_bytes(0, 24), [0x18, 24]);
        assert_eq!(head_bytes(0, 255), [0x18, 0xff]);
        assert_eq!(head_bytes(0, 256), [0x19, 1, 0]);
        assert_eq!(head_bytes(0, 65535), [0x19, 0xff, 0xff]);
        assert_eq!(head_bytes(0, 65536), [0x1a, 0, 1, 0, 0]);
        assert_eq!(
            head_bytes(0, u64::from(u32::MAX)),
            [0x1a, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            head_bytes(0, u64::from(u32::MAX) + 1),
            [0x1b, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        for arg in [0, 23, 24, 255, 256, 65535, 65536, 1 << 32, u64::MAX] {
            let bytes = head_bytes(0, arg);
            let mut r = Reader::new(&bytes, Limits::DEFAULT);
            assert_eq!(r.token().unwrap(), Token::Uint(arg));
            r.finish().unwrap();
        }
    }

    #[test]
    fn non_shortest_heads_are_refused() {
        for bad in [
            &[0x18, 23][..],
            &[0x19, 0, 255],
            &[0x1a, 0, 0, 0xff, 0xff],
            &[0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            &[0x38, 0x00],
            &[0x59, 0x00, 0x01, 0x00],
        ] {
            let mut r = Reader::new(bad, Limits::DEFAULT);
            assert_eq!(
                r.token(),
                Err(WireError::NonShortestEncoding { offset: 0 }),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn integer_extremes() {
        let mut w = Writer::new();
        w.int(i64::MIN);
        w.int(i64::MAX);
        w.int(-1);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes, Limits::DEFAULT);
        assert_eq!(r.read_int().unwrap(), i64::MIN);
        assert_eq!(r.read_int().unwrap(), i64::MAX);
        assert_eq!(r.read_int().unwrap(), -1);
        r.finish().unwrap();
    }

    #[test]
    fn length_prefix_larger_than_input_is_truncation_not_allocation() {
        // A byte string claiming 2^63 bytes.
        let bad = [0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0];
        let mut r = Reader::new(
            &bad,
            Limits {
                max_depth: 64,
                max_len: u64::MAX,
            },
        );
        assert_eq!(r.read_bytes(), Err(WireError::Truncated { offset: 0 }));
        let mut r = Reader::new(&bad, Limits::DEFAULT);
        assert!(matches!(
            r.read_bytes(),
            Err(WireError::LengthExceeded { .. })
        ));
    }
}
