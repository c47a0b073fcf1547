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

use crate::cbor::{CID_TAG, Limits, Reader, Token, Writer, cmp_keys, for_each_canonical};
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
    static SCRATCH: std::cell::RefCell<Writer> = std::cell::RefCell::new(Writer::with_capacity(1024));
}

/// Encodes `value` into this thread's scratch buffer and hands the bytes to
/// `f`: one exactly sized copy (or none, when `f` only hashes them) instead
/// of a vector grown step by step.
pub(crate) fn with_encoded<T>(
    value: &Value,
    limits: &Limits,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T> {
    let max = limits.effective_depth();
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut w) => {
            w.clear();
            let out = write_value(&mut w, value, 0, max).map(|()| f(w.as_bytes()));
            if w.capacity() > SCRATCH_KEEP {
                *w = Writer::with_capacity(1024);
            }
            out
        }
        // Not reachable (encoding calls no user code), but never a panic.
        Err(_) => {
            let mut w = Writer::with_capacity(1024);
            write_value(&mut w, value, 0, max)?;
            Ok(f(w.as_bytes()))
        }
    })
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
