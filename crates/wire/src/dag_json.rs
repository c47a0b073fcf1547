//! DAG-JSON import and export of [`Value`] (IPLD DAG-JSON specification).
//!
//! Export is the canonical form: no whitespace, map keys sorted bytewise by
//! their UTF-8 (DAG-JSON's order, unlike DAG-CBOR's length-first order), links
//! as `{"/":"<CID text>"}`, bytes as `{"/":{"bytes":"<base64>"}}` (standard
//! alphabet, no padding), integers as plain digits and floats always with a
//! `.` or an exponent (Rust's shortest round-trip form, e.g. `1.0`, `0.1`,
//! `1e16`, `8.940696716308594e-8`), so integer and float kinds survive a round
//! trip. Text escapes `"`, `\` and control characters only.
//!
//! Import is a hand-written parser (so that integer range, duplicate keys and
//! depth can be enforced; generic JSON parsers silently turn big integers into
//! floats and keep the last duplicate). It accepts JSON whitespace and any key
//! order, and refuses: duplicate keys, integers outside `i64`, floats that
//! overflow to infinity, invalid CIDs or base64 in the reserved forms, nesting
//! beyond the depth limit, trailing data, and every map that misuses the
//! reserved `"/"` key. This crate's rule for `"/"` is slightly stricter than the
//! specification's "first key" wording: a map with a `"/"` key whose value is
//! a string, or a map holding a `"bytes"` string, is a link or bytes when it is
//! exactly that form and an error otherwise ([`WireError::ReservedKey`]); the
//! exporter refuses to write such maps, so every exported document imports to
//! the same value. [`from_dag_json_canonical`] additionally requires the input
//! to be byte-for-byte the canonical export.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ecomesh_types::{ContentId, Map, Value};

use crate::cbor::Limits;
use crate::cid::{cid_from_binary, parse_cid};
use crate::error::{Result, WireError};

/// The canonical DAG-JSON text of `value` (default depth limit).
///
/// Fails on NaN/infinite floats, invalid link bytes, maps that misuse the
/// reserved `"/"` key, and nesting beyond the depth limit.
pub fn to_dag_json(value: &Value) -> Result<String> {
    to_dag_json_with(value, &Limits::DEFAULT)
}

/// [`to_dag_json`] with explicit limits (only `max_depth` applies).
pub fn to_dag_json_with(value: &Value, limits: &Limits) -> Result<String> {
    let mut out = String::with_capacity(64);
    write_value(&mut out, value, 0, limits.effective_depth())?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value, depth: usize, max: usize) -> Result<()> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::Float(f) => {
            if !f.is_finite() {
                return Err(WireError::NonFiniteFloat { offset: None });
            }
            // Debug is the shortest text that parses back to the same bits and
            // always has a '.' or an exponent.
            out.push_str(&format!("{f:?}"));
        }
        Value::Text(s) => write_string(out, s),
        Value::Bytes(b) => {
            out.push_str(r#"{"/":{"bytes":""#);
            out.push_str(&STANDARD_NO_PAD.encode(b));
            out.push_str(r#""}}"#);
        }
        Value::Link(id) => {
            let cid = cid_from_binary(&id.0).map_err(|_| WireError::InvalidLink {
                offset: None,
                reason: "link bytes are not one binary CID",
            })?;
            out.push_str(r#"{"/":""#);
            out.push_str(&cid.to_string());
            out.push_str(r#""}"#);
        }
        Value::Array(items) => {
            if depth >= max {
                return Err(WireError::DepthExceeded { max });
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, depth + 1, max)?;
            }
            out.push(']');
        }
        Value::Map(map) => {
            if depth >= max {
                return Err(WireError::DepthExceeded { max });
            }
            if misuses_reserved_key(map) {
                return Err(WireError::ReservedKey { offset: None });
            }
            out.push('{');
            // BTreeMap<String, _> iterates in bytewise UTF-8 order: DAG-JSON's order.
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, v, depth + 1, max)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// True for a map that would read back as something else (or not at all):
/// its `"/"` entry is a string, or a map with a `"bytes"` string.
fn misuses_reserved_key(map: &Map) -> bool {
    match map.get("/") {
        Some(Value::Text(_)) => true,
        Some(Value::Map(inner)) => matches!(inner.get("bytes"), Some(Value::Text(_))),
        _ => false,
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses one DAG-JSON document (default limits). See the module docs for
/// what is accepted.
pub fn from_dag_json(text: &str) -> Result<Value> {
    from_dag_json_with(text, &Limits::DEFAULT)
}

/// Parses DAG-JSON from raw bytes, which must be UTF-8.
pub fn from_dag_json_bytes(bytes: &[u8]) -> Result<Value> {
    let text = std::str::from_utf8(bytes).map_err(|e| WireError::Json {
        offset: e.valid_up_to(),
        reason: "invalid UTF-8",
    })?;
    from_dag_json(text)
}

/// [`from_dag_json`] with explicit limits.
pub fn from_dag_json_with(text: &str, limits: &Limits) -> Result<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        limits: *limits,
    };
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err("trailing characters after the document"));
    }
    Ok(v)
}

/// Parses DAG-JSON and also requires the text to be exactly the canonical
/// export of the value it denotes (no whitespace, sorted keys, canonical
/// numbers and escapes).
pub fn from_dag_json_canonical(text: &str) -> Result<Value> {
    let v = from_dag_json(text)?;
    let canonical = to_dag_json(&v)?;
    if canonical != text {
        let offset = canonical
            .bytes()
            .zip(text.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(canonical.len().min(text.len()));
        return Err(WireError::Json {
            offset,
            reason: "not in canonical DAG-JSON form",
        });
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    limits: Limits,
}

impl Parser<'_> {
    fn err(&self, reason: &'static str) -> WireError {
        WireError::Json {
            offset: self.pos,
            reason,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect_literal(&mut self, lit: &'static str, v: Value) -> Result<Value> {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'n') => self.expect_literal("null", Value::Null),
            Some(b't') => self.expect_literal("true", Value::Bool(true)),
            Some(b'f') => self.expect_literal("false", Value::Bool(false)),
            Some(b'"') => Ok(Value::Text(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => self.array(depth),
            Some(b'{') => self.object(depth),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn enter(&self, depth: usize) -> Result<()> {
        let max = self.limits.effective_depth();
        if depth >= max {
            Err(WireError::DepthExceeded { max })
        } else {
            Ok(())
        }
    }

    fn check_len(&self, start: usize, len: usize) -> Result<()> {
        if len as u64 > self.limits.max_len {
            return Err(WireError::LengthExceeded {
                offset: start,
                len: len as u64,
                max: self.limits.max_len,
            });
        }
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<Value> {
        self.enter(depth)?;
        let start = self.pos;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.check_len(start, items.len())?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value> {
        self.enter(depth)?;
        let start = self.pos;
        self.pos += 1;
        let mut map = Map::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Map(map));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key_at = self.pos;
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            if map.insert(key, value).is_some() {
                return Err(WireError::Json {
                    offset: key_at,
                    reason: "duplicate key",
                });
            }
            self.check_len(start, map.len())?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
        interpret_reserved(map, start)
    }

    fn number(&mut self) -> Result<Value> {
        let start = self.pos;
        let mut is_float = false;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            is_float = true;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("expected digits after '.'"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            is_float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("expected exponent digits"));
            }
            self.digits();
        }
        // The slice is ASCII digits and signs only.
        let token =
            std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| self.err("number"))?;
        if is_float {
            let f: f64 = token.parse().map_err(|_| WireError::Json {
                offset: start,
                reason: "invalid float",
            })?;
            if !f.is_finite() {
                return Err(WireError::Json {
                    offset: start,
                    reason: "float out of range",
                });
            }
            Ok(Value::Float(f))
        } else {
            token
                .parse::<i64>()
                .map(Value::Integer)
                .map_err(|_| WireError::Json {
                    offset: start,
                    reason: "integer outside the 64-bit signed range",
                })
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let Some(chunk) = self.s.get(self.pos..self.pos + 4) else {
            return Err(self.err("truncated \\u escape"));
        };
        let mut v = 0_u32;
        for &c in chunk {
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + d;
        }
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        let start = self.pos;
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            // Copy the run of plain characters in one go.
            let run_start = self.pos;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The input is a &str and the run stops at ASCII bytes, so it is UTF-8.
            out.push_str(
                std::str::from_utf8(&self.s[run_start..self.pos])
                    .map_err(|_| self.err("invalid UTF-8"))?,
            );
            self.check_len(start, out.len())?;
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(esc) = self.peek() else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.pos..].starts_with(b"\\u") {
                                    return Err(self.err("lone high surrogate"));
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid low surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("lone low surrogate"));
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(code)
                                    .ok_or_else(|| self.err("invalid code point"))?,
                            );
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }
}

/// Applies the reserved-namespace rules to a parsed object.
fn interpret_reserved(mut map: Map, offset: usize) -> Result<Value> {
    let reserved = || WireError::ReservedKey {
        offset: Some(offset),
    };
    let single = map.len() == 1;
    match map.get("/") {
        Some(Value::Text(_)) if single => {
            let Some(Value::Text(text)) = map.remove("/") else {
                return Err(reserved());
            };
            let cid = parse_cid(&text).map_err(|_| WireError::Json {
                offset,
                reason: "invalid CID in link",
            })?;
            Ok(Value::Link(ContentId(cid.to_bytes())))
        }
        Some(Value::Text(_)) => Err(reserved()),
        Some(Value::Map(inner)) if matches!(inner.get("bytes"), Some(Value::Text(_))) => {
            if !single || inner.len() != 1 {
                return Err(reserved());
            }
            let Some(Value::Text(b64)) = inner.get("bytes") else {
                return Err(reserved());
            };
            let bytes = STANDARD_NO_PAD.decode(b64).map_err(|_| WireError::Json {
                offset,
                reason: "invalid base64 in bytes (standard alphabet, no padding)",
            })?;
            Ok(Value::Bytes(bytes))
        }
        _ => Ok(Value::Map(map)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_print_canonically() {
        let doc = r#"{"a":[1,-2,1.5,1.0,1e16,null,true,false],"b":{"/":{"bytes":"AQID"}},"c":"x\"\\\n\u0001y"}"#;
        let v = from_dag_json(doc).unwrap();
        let out = to_dag_json(&v).unwrap();
        assert_eq!(
            out,
            r#"{"a":[1,-2,1.5,1.0,1e16,null,true,false],"b":{"/":{"bytes":"AQID"}},"c":"x\"\\\n\u0001y"}"#
        );
        assert_eq!(from_dag_json(&out).unwrap(), v);
        assert_eq!(from_dag_json_canonical(&out).unwrap(), v);
        assert!(from_dag_json_canonical(r#"{"b":1, "a":2}"#).is_err());
    }

    #[test]
    fn integers_and_floats_keep_their_kind() {
        assert_eq!(from_dag_json("1").unwrap(), Value::Integer(1));
        assert_eq!(from_dag_json("1.0").unwrap(), Value::Float(1.0));
        assert_eq!(from_dag_json("1e2").unwrap(), Value::Float(100.0));
        assert_eq!(
            from_dag_json("-9223372036854775808").unwrap(),
            Value::Integer(i64::MIN)
        );
        assert!(from_dag_json("9223372036854775808").is_err());
        assert!(from_dag_json("1e400").is_err());
        assert_eq!(to_dag_json(&Value::Float(100.0)).unwrap(), "100.0");
        assert_eq!(to_dag_json(&Value::Float(-0.0)).unwrap(), "-0.0");
        assert!(to_dag_json(&Value::Float(f64::NAN)).is_err());
    }

    #[test]
    fn reserved_namespace() {
        let link = r#"{"/":"bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua"}"#;
        assert!(matches!(from_dag_json(link).unwrap(), Value::Link(_)));
        for bad in [
            r#"{"/":"bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua","a":1}"#,
            r#"{"/":"notacid"}"#,
            r#"{"/":{"bytes":"AQID","x":1}}"#,
            r#"{"/":{"bytes":"AQID"},"x":1}"#,
            r#"{"/":{"bytes":"AQI="}}"#,
            r#"{"/":{"bytes":"AQJ"}}"#,
            r#"{"/":{"bytes":"A"}}"#,
        ] {
            assert!(from_dag_json(bad).is_err(), "{bad}");
        }
        // Not reserved forms: plain maps.
        for ok in [r#"{"/":1}"#, r#"{"/":{"bytes":1}}"#, r#"{"/":{"a":"b"}}"#] {
            let v = from_dag_json(ok).unwrap();
            assert!(matches!(v, Value::Map(_)), "{ok}");
            assert_eq!(to_dag_json(&v).unwrap(), ok);
        }
        let mut m = Map::new();
        m.insert("/".into(), Value::from("x"));
        assert_eq!(
            to_dag_json(&Value::Map(m)),
            Err(WireError::ReservedKey { offset: None })
        );
    }

    #[test]
    fn malformed_json_is_typed() {
        for bad in [
            "",
            " ",
            "{",
            "[1,]",
            "[1 2]",
            r#"{"a":1,"a":2}"#,
            r#"{"a" 1}"#,
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "nul",
            "\"abc",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"a\nb\"",
            "[1] x",
            "{1:2}",
            "+1",
            "NaN",
            "Infinity",
        ] {
            assert!(from_dag_json(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            from_dag_json("\"\\ud83d\\ude00\"").unwrap(),
            Value::from("\u{1F600}")
        );
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(
            from_dag_json(&deep),
            Err(WireError::DepthExceeded { max: 64 })
        );
        let ok = "[".repeat(64) + &"]".repeat(64);
        from_dag_json(&ok).unwrap();
    }
}
