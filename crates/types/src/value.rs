//! Document values: the IPLD data model as Firestore-style documents use it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// A document's fields: name to value, sorted by name.
pub type Map = BTreeMap<String, Value>;

/// The binary form of a content identifier (a CIDv1, as `ecomesh-wire` builds and parses it).
///
/// This crate treats it as opaque bytes so it needs no CID library.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ContentId(pub Vec<u8>);

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentId(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// A document value.
///
/// # Total order
///
/// Values of different kinds compare by kind, in this order:
/// `Null < Bool < numbers (Integer and Float) < Text < Bytes < Link < Array < Map`.
/// Within a kind: `false < true`; numbers by numeric value, with NaN below every
/// other number, and an `Integer` before a `Float` of the same numeric value
/// (so `Integer(1) < Float(1.0)` and they are not equal); floats among
/// themselves by IEEE 754 `totalOrder` (so `-0.0 < 0.0`); text by UTF-8 bytes;
/// bytes and links bytewise; arrays element by element, then by length; maps as
/// their sorted `(key, value)` sequences. Equality agrees with this order, so
/// queries, `order-by` and sorting are deterministic on every peer.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Value {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer (Firestore's integer range).
    Integer(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// An ordered list.
    Array(Vec<Value>),
    /// A nested map.
    Map(Map),
    /// A link to content by its identifier.
    Link(ContentId),
}

impl Value {
    fn kind_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Integer(_) | Value::Float(_) => 2,
            Value::Text(_) => 3,
            Value::Bytes(_) => 4,
            Value::Link(_) => 5,
            Value::Array(_) => 6,
            Value::Map(_) => 7,
        }
    }

    /// The name of the value's kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Link(_) => "link",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }

    /// Follows a dotted field path (`"address.city"`) through nested maps.
    ///
    /// Returns `None` when a segment is missing or a non-map is met on the way.
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        let mut current = self;
        for segment in path.split('.') {
            match current {
                Value::Map(map) => current = map.get(segment)?,
                _ => return None,
            }
        }
        Some(current)
    }

    /// The text, if this is `Text`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is `Integer`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The map, if this is `Map`.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The array, if this is `Array`.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Looks up a dotted field path (`"address.city"`) in a document's fields.
pub fn get_path<'a>(fields: &'a Map, path: &str) -> Option<&'a Value> {
    let (first, rest) = match path.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    let value = fields.get(first)?;
    match rest {
        Some(rest) => value.get_path(rest),
        None => Some(value),
    }
}

/// Compares an integer and a float by exact numeric value; NaN is below every number.
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    // 2^63 is exactly representable; every i64 is below it and at or above -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let truncated = f.trunc();
    // In range, so the cast is exact.
    let t = truncated as i64;
    match i.cmp(&t) {
        Ordering::Equal => {
            let fract = f - truncated;
            if fract > 0.0 {
                Ordering::Less
            } else if fract < 0.0 {
                Ordering::Greater
            } else {
                // Same numeric value: integers sort before floats.
                Ordering::Less
            }
        }
        other => other,
    }
}

fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => a.to_bits().cmp(&b.to_bits()),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.total_cmp(&b),
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Bool(a), Bool(b)) => a.cmp(b),
            (Integer(a), Integer(b)) => a.cmp(b),
            (Float(a), Float(b)) => cmp_float(*a, *b),
            (Integer(a), Float(b)) => cmp_int_float(*a, *b),
            (Float(a), Integer(b)) => cmp_int_float(*b, *a).reverse(),
            (Text(a), Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Link(a), Link(b)) => a.cmp(b),
            (Array(a), Array(b)) => a.iter().cmp(b.iter()),
            (Map(a), Map(b)) => a.iter().cmp(b.iter()),
            _ => self.kind_rank().cmp(&other.kind_rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind_rank().hash(state);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Integer(i) => {
                0_u8.hash(state);
                i.hash(state);
            }
            Value::Float(f) => {
                1_u8.hash(state);
                // Equality is bitwise for floats (total order), except all NaNs
                // with equal bits; hashing the bits agrees with that.
                f.to_bits().hash(state);
            }
            Value::Text(s) => s.hash(state),
            Value::Bytes(b) => b.hash(state),
            Value::Link(l) => l.hash(state),
            Value::Array(a) => a.hash(state),
            Value::Map(m) => m.hash(state),
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Integer(i64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}
impl From<Map> for Value {
    fn from(v: Map) -> Self {
        Value::Map(v)
    }
}
impl From<ContentId> for Value {
    fn from(v: ContentId) -> Self {
        Value::Link(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Integer),
            prop_oneof![
                any::<f64>(),
                Just(0.0),
                Just(-0.0),
                Just(1.0),
                Just(f64::NAN),
                Just(9.223372036854776e18),
                (-5_i64..5).prop_map(|i| i as f64)
            ]
            .prop_map(Value::Float),
            (-5_i64..5).prop_map(Value::Integer),
            "[a-c]{0,3}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::Bytes),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(|b| Value::Link(ContentId(b))),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c]{1,2}", inner, 0..4).prop_map(Value::Map),
            ]
        })
    }

    #[test]
    fn kinds_order_as_documented() {
        let ordered = [
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Float(f64::NAN),
            Value::Integer(i64::MIN),
            Value::Float(-1.5),
            Value::Integer(-1),
            Value::Integer(0),
            Value::Float(-0.0),
            Value::Float(0.0),
            Value::Float(0.5),
            Value::Integer(1),
            Value::Float(1.0),
            Value::Integer(i64::MAX),
            Value::Float(9.3e18),
            Value::Float(f64::INFINITY),
            Value::from(""),
            Value::from("a"),
            Value::from("b"),
            Value::Bytes(vec![]),
            Value::Link(ContentId(vec![1])),
            Value::Array(vec![]),
            Value::Array(vec![Value::Null]),
            Value::Map(Map::new()),
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
        }
        assert_ne!(Value::Integer(1), Value::Float(1.0));
    }

    #[test]
    fn integer_float_edge_cases() {
        // i64::MAX is 2^63 - 1; as f64 it rounds to 2^63, which is larger.
        assert!(Value::Integer(i64::MAX) < Value::Float(i64::MAX as f64));
        assert!(Value::Integer(i64::MIN) < Value::Float(i64::MIN as f64));
        assert!(Value::Integer(i64::MIN) > Value::Float(-9.3e18));
        assert!(Value::Integer(3) > Value::Float(2.9999999));
        assert!(Value::Integer(-3) < Value::Float(-2.5));
    }

    #[test]
    fn dotted_paths() {
        let mut inner = Map::new();
        inner.insert("city".into(), Value::from("Lyon"));
        let mut doc = Map::new();
        doc.insert("address".into(), Value::Map(inner));
        doc.insert("n".into(), Value::Integer(1));
        assert_eq!(get_path(&doc, "address.city"), Some(&Value::from("Lyon")));
        assert_eq!(get_path(&doc, "n"), Some(&Value::Integer(1)));
        assert_eq!(get_path(&doc, "n.x"), None);
        assert_eq!(get_path(&doc, "address.zip"), None);
    }

    proptest! {
        #[test]
        fn prop_order_is_total_and_consistent(a in arb_value(), b in arb_value(), c in arb_value()) {
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a == b, a.cmp(&b) == Ordering::Equal);
            prop_assert_eq!(a.cmp(&a), Ordering::Equal);
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
        }
    }
}
