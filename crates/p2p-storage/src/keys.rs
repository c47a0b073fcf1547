//! Layout of the store's keys, and an order-preserving encoding of index values.
//!
//! Every record lives in one ordered keyspace, told apart by a one-byte tag:
//!
//! | tag | key after the tag                               | value                          |
//! |-----|-------------------------------------------------|--------------------------------|
//! | `M` | meta name                                       | meta value                     |
//! | `D` | `esc(collection) esc(id)`                       | document record                |
//! | `V` | binary CID                                      | version node bytes             |
//! | `I` | `esc(collection) esc(field) value_key esc(id)`  | empty (field index entry)      |
//! | `A` | `esc(collection) esc(field) value_key esc(id)`  | empty (array element entry)    |
//! | `T` | `esc(collection) depth nibbles...`              | Merkle index node              |
//! | `C` | `esc(collection)`                               | collection's Merkle root       |
//! | `U` | `esc(collection) esc(id) binary CID`            | empty (sealed version held unopened) |
//!
//! `esc` escapes `0x00` as `0x00 0xFF` and ends with `0x00 0x01`, so
//! concatenated components sort component by component.

use ecomesh_types::Value;

pub(crate) const META: u8 = b'M';
pub(crate) const DOC: u8 = b'D';
pub(crate) const VERSION: u8 = b'V';
pub(crate) const INDEX: u8 = b'I';
pub(crate) const ARRAY_INDEX: u8 = b'A';
pub(crate) const TRIE: u8 = b'T';
pub(crate) const COLLECTION: u8 = b'C';
pub(crate) const HELD: u8 = b'U';

/// The key marking version `cid` of (collection, id) as held sealed: stored
/// and forwarded, its delta not merged for want of the key.
pub(crate) fn held_key(collection: &str, id: &str, cid: &[u8]) -> Vec<u8> {
    let mut k = key(HELD, &[collection.as_bytes(), id.as_bytes()]);
    k.extend_from_slice(cid);
    k
}

/// Splits a held-version key back into (collection, id, binary CID).
pub(crate) fn parse_held_key(k: &[u8]) -> Option<(String, String, Vec<u8>)> {
    let rest = k.strip_prefix(&[HELD])?;
    let (collection, rest) = take_escaped(rest)?;
    let (id, rest) = take_escaped(rest)?;
    Some((
        String::from_utf8(collection).ok()?,
        String::from_utf8(id).ok()?,
        rest.to_vec(),
    ))
}

/// Appends `bytes` escaped and terminated.
pub(crate) fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Reads one escaped component from the front of `input`; returns it and the rest.
pub(crate) fn take_escaped(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == 0 {
            match input.get(i + 1) {
                Some(0xFF) => {
                    out.push(0);
                    i += 2;
                }
                Some(0x01) => return Some((out, &input[i + 2..])),
                _ => return None,
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    None
}

/// `tag esc(a) esc(b)...`
pub(crate) fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![tag];
    for part in parts {
        push_escaped(&mut out, part);
    }
    out
}

/// The document record key of (collection, id).
pub(crate) fn doc_key(collection: &str, id: &str) -> Vec<u8> {
    key(DOC, &[collection.as_bytes(), id.as_bytes()])
}

/// Splits a document record key back into (collection, id).
pub(crate) fn parse_doc_key(k: &[u8]) -> Option<(String, String)> {
    let rest = k.strip_prefix(&[DOC])?;
    let (collection, rest) = take_escaped(rest)?;
    let (id, rest) = take_escaped(rest)?;
    if !rest.is_empty() {
        return None;
    }
    Some((
        String::from_utf8(collection).ok()?,
        String::from_utf8(id).ok()?,
    ))
}

/// Kind ranks, equal to the ranks of the `Value` total order.
const K_NULL: u8 = 0;
const K_BOOL: u8 = 1;
const K_NUMBER: u8 = 2;
const K_TEXT: u8 = 3;
const K_BYTES: u8 = 4;
const K_LINK: u8 = 5;

/// An index key for a scalar value, or `None` for arrays and maps (not indexed).
///
/// The map from values to keys is monotonic (non-decreasing) with respect to
/// the `Value` total order: `a < b` implies `value_key(a) <= value_key(b)`.
/// Distinct numbers may share a key (integers beyond 2^53 round to the same
/// float; `Integer(1)` and `Float(1.0)` coincide), so an index scan yields a
/// superset that the engine then filters exactly.
pub(crate) fn value_key(v: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match v {
        Value::Null => out.push(K_NULL),
        Value::Bool(b) => out.extend_from_slice(&[K_BOOL, u8::from(*b)]),
        Value::Integer(i) => {
            out.push(K_NUMBER);
            out.extend_from_slice(&sortable_f64(*i as f64));
        }
        Value::Float(f) => {
            out.push(K_NUMBER);
            out.extend_from_slice(&sortable_f64(*f));
        }
        Value::Text(s) => {
            out.push(K_TEXT);
            push_escaped(&mut out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(K_BYTES);
            push_escaped(&mut out, b);
        }
        Value::Link(cid) => {
            out.push(K_LINK);
            push_escaped(&mut out, &cid.0);
        }
        Value::Array(_) | Value::Map(_) => return None,
    }
    Some(out)
}

/// The key prefix shared by every value of `v`'s kind (for range scans within a kind).
pub(crate) fn kind_prefix(v: &Value) -> Option<u8> {
    match v {
        Value::Null => Some(K_NULL),
        Value::Bool(_) => Some(K_BOOL),
        Value::Integer(_) | Value::Float(_) => Some(K_NUMBER),
        Value::Text(_) => Some(K_TEXT),
        Value::Bytes(_) => Some(K_BYTES),
        Value::Link(_) => Some(K_LINK),
        Value::Array(_) | Value::Map(_) => None,
    }
}

/// Big-endian bytes whose order is the numeric order; every NaN sorts first
/// (as in the `Value` order) and -0.0 shares the key of 0.0.
fn sortable_f64(f: f64) -> [u8; 8] {
    if f.is_nan() {
        return [0; 8];
    }
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    let flipped = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    // NaN's all-zero key stays strictly below: flipped is 0 only for the
    // negative NaN bit patterns, which were handled above.
    flipped.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_types::ContentId;
    use proptest::prelude::*;

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Integer),
            (-3_i64..3).prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Float),
            prop_oneof![Just(0.0), Just(-0.0), Just(1.0), Just(f64::NAN), Just(-1.5)]
                .prop_map(Value::Float),
            ".{0,3}".prop_map(Value::Text),
            proptest::collection::vec(0_u8..3, 0..4).prop_map(Value::Bytes),
            proptest::collection::vec(0_u8..3, 0..4).prop_map(|b| Value::Link(ContentId(b))),
        ]
    }

    proptest! {
        #[test]
        fn prop_value_key_is_monotonic(a in scalar(), b in scalar()) {
            let (ka, kb) = (value_key(&a).unwrap(), value_key(&b).unwrap());
            if a < b {
                prop_assert!(ka <= kb, "{:?} < {:?} but keys {:?} > {:?}", a, b, ka, kb);
            }
            if a == b {
                prop_assert_eq!(ka, kb);
            }
        }

        #[test]
        fn prop_escaped_components_round_trip_and_sort(a in proptest::collection::vec(0_u8..3, 0..6),
                                                  b in proptest::collection::vec(0_u8..3, 0..6)) {
            let (ka, kb) = (key(DOC, &[&a, b"x"]), key(DOC, &[&b, b"x"]));
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            let (back, rest) = take_escaped(&ka[1..]).unwrap();
            prop_assert_eq!(back, a);
            prop_assert_eq!(take_escaped(rest).unwrap().0, b"x".to_vec());
        }
    }

    #[test]
    fn doc_keys_round_trip() {
        let k = doc_key("us\0ers", "id");
        assert_eq!(parse_doc_key(&k), Some(("us\0ers".into(), "id".into())));
        assert_eq!(parse_doc_key(b"Dbad"), None);
        assert!(value_key(&Value::Array(vec![])).is_none());
    }
}
