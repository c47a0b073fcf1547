//! The CLI's query clauses (`--where 'amount>5'`, `--where 'tags
//! array-contains food'`, `--order-by amount:desc`) turned into the query
//! JSON of [`crate::api::query`], which the node parses and runs.
//!
//! A where clause is `FIELD OP VALUE`: symbolic operators (`==`, `!=`, `<`,
//! `<=`, `>`, `>=`) need no spaces around them; word operators (`in`,
//! `not-in`, `array-contains`, `array-contains-any`) are separated by
//! spaces. VALUE is JSON (DAG-JSON for links and bytes) when it parses as
//! such (`5`, `true`, `["a","b"]`, `"5"`), else the text itself (`food`).

use ecomesh_types::FilterOp;

/// Longest clause accepted, in bytes.
pub const MAX_CLAUSE: usize = 4096;

/// Why a `--where` or `--order-by` clause was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClauseError {
    /// The clause is empty or only spaces.
    Empty,
    /// The clause is longer than [`MAX_CLAUSE`].
    TooLong(usize),
    /// No operator was found.
    NoOperator(String),
    /// The operator has no field before it.
    NoField(String),
    /// The operator has no value after it.
    NoValue(String),
    /// `--order-by FIELD:DIR` with a direction other than `asc` or `desc`.
    BadDirection(String),
}

impl std::fmt::Display for ClauseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops = FilterOp::ALL.map(FilterOp::as_str).join(" ");
        match self {
            ClauseError::Empty => {
                write!(f, "an empty clause; write FIELD OP VALUE, e.g. 'amount>5'")
            }
            ClauseError::TooLong(n) => {
                write!(
                    f,
                    "a clause of {n} bytes; at most {MAX_CLAUSE} are accepted"
                )
            }
            ClauseError::NoOperator(c) => write!(
                f,
                "no operator in {c:?}; write FIELD OP VALUE with OP one of: {ops} \
                 (word operators between spaces, e.g. 'tags array-contains food')"
            ),
            ClauseError::NoField(c) => write!(f, "no field before the operator in {c:?}"),
            ClauseError::NoValue(c) => write!(f, "no value after the operator in {c:?}"),
            ClauseError::BadDirection(d) => {
                write!(
                    f,
                    "order direction {d:?}; write FIELD, FIELD:asc or FIELD:desc"
                )
            }
        }
    }
}

impl std::error::Error for ClauseError {}

/// One `--where` clause as the query JSON's `[field, op, value]`.
pub fn parse_where(clause: &str) -> Result<serde_json::Value, ClauseError> {
    if clause.len() > MAX_CLAUSE {
        return Err(ClauseError::TooLong(clause.len()));
    }
    let text = clause.trim();
    if text.is_empty() {
        return Err(ClauseError::Empty);
    }
    let (field, op, value) = match split_word_op(text) {
        Some(parts) => parts,
        None => split_symbol_op(text).ok_or_else(|| ClauseError::NoOperator(text.to_owned()))?,
    };
    let (field, value) = (field.trim(), value.trim());
    if field.is_empty() {
        return Err(ClauseError::NoField(text.to_owned()));
    }
    if value.is_empty() {
        return Err(ClauseError::NoValue(text.to_owned()));
    }
    let value = serde_json::from_str::<serde_json::Value>(value)
        .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok(serde_json::json!([field, op.as_str(), value]))
}

/// `FIELD OP VALUE` with spaces around OP (any operator).
fn split_word_op(text: &str) -> Option<(&str, FilterOp, &str)> {
    let (field, rest) = text.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (op, value) = rest.split_once(char::is_whitespace)?;
    let op: FilterOp = op.parse().ok()?;
    Some((field, op, value))
}

/// `FIELD<OP>VALUE` with a symbolic OP, spaces optional.
fn split_symbol_op(text: &str) -> Option<(&str, FilterOp, &str)> {
    let at = text.find(['=', '!', '<', '>'])?;
    let rest = &text[at..];
    let (op, len) = [
        ("==", FilterOp::Eq),
        ("!=", FilterOp::Ne),
        ("<=", FilterOp::Le),
        (">=", FilterOp::Ge),
        ("<", FilterOp::Lt),
        (">", FilterOp::Gt),
    ]
    .into_iter()
    .find(|(s, _)| rest.starts_with(s))
    .map(|(s, op)| (op, s.len()))?;
    Some((&text[..at], op, &text[at + len..]))
}

/// One `--order-by FIELD[:asc|:desc]` as the query JSON's `[field, dir]`.
pub fn parse_order(clause: &str) -> Result<serde_json::Value, ClauseError> {
    if clause.len() > MAX_CLAUSE {
        return Err(ClauseError::TooLong(clause.len()));
    }
    let text = clause.trim();
    let (field, dir) = match text.rsplit_once(':') {
        Some((f, d)) => (f.trim(), d.trim()),
        None => (text, "asc"),
    };
    if field.is_empty() {
        return Err(ClauseError::Empty);
    }
    match dir {
        "asc" | "desc" => Ok(serde_json::json!([field, dir])),
        other => Err(ClauseError::BadDirection(other.to_owned())),
    }
}

/// The query JSON of the CLI's clauses.
pub fn query_json(
    wheres: &[String],
    order_by: &[String],
    limit: Option<usize>,
    start_after: Option<&str>,
) -> Result<serde_json::Value, ClauseError> {
    let filters = wheres
        .iter()
        .map(|w| parse_where(w))
        .collect::<Result<Vec<_>, _>>()?;
    let order = order_by
        .iter()
        .map(|o| parse_order(o))
        .collect::<Result<Vec<_>, _>>()?;
    let mut q = serde_json::json!({ "where": filters, "order_by": order });
    if let Some(l) = limit {
        q["limit"] = l.into();
    }
    if let Some(c) = start_after {
        q["start_after"] = c.into();
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn where_clauses_parse_symbolic_and_word_operators() {
        assert_eq!(parse_where("amount>5").unwrap(), json!(["amount", ">", 5]));
        assert_eq!(
            parse_where(" amount >= 5.5 ").unwrap(),
            json!(["amount", ">=", 5.5])
        );
        assert_eq!(
            parse_where("who==\"ann\"").unwrap(),
            json!(["who", "==", "ann"])
        );
        assert_eq!(
            parse_where("who != bob").unwrap(),
            json!(["who", "!=", "bob"])
        );
        assert_eq!(parse_where("n<=-1").unwrap(), json!(["n", "<=", -1]));
        assert_eq!(
            parse_where("tags array-contains food").unwrap(),
            json!(["tags", "array-contains", "food"])
        );
        assert_eq!(
            parse_where("who in [\"a\",\"b\"]").unwrap(),
            json!(["who", "in", ["a", "b"]])
        );
        assert_eq!(
            parse_where("note == two words").unwrap(),
            json!(["note", "==", "two words"])
        );
        assert_eq!(
            parse_where("a.b not-in [1, 2]").unwrap(),
            json!(["a.b", "not-in", [1, 2]])
        );
    }

    #[test]
    fn bad_clauses_are_typed_errors() {
        assert_eq!(parse_where("  "), Err(ClauseError::Empty));
        assert!(matches!(
            parse_where("amount"),
            Err(ClauseError::NoOperator(_))
        ));
        assert!(matches!(
            parse_where("amount ~ 5"),
            Err(ClauseError::NoOperator(_))
        ));
        assert!(matches!(parse_where(">5"), Err(ClauseError::NoField(_))));
        assert!(matches!(
            parse_where("amount>"),
            Err(ClauseError::NoValue(_))
        ));
        assert!(matches!(
            parse_where(&"a".repeat(MAX_CLAUSE + 1)),
            Err(ClauseError::TooLong(_))
        ));
        assert_eq!(
            parse_order("amount:up"),
            Err(ClauseError::BadDirection("up".into()))
        );
        assert_eq!(
            parse_order("amount:desc").unwrap(),
            json!(["amount", "desc"])
        );
        assert_eq!(parse_order("amount").unwrap(), json!(["amount", "asc"]));
        let e = parse_where("amount").unwrap_err().to_string();
        assert!(e.contains("array-contains-any"), "{e}");
    }

    #[test]
    fn clauses_make_a_query_the_api_accepts() {
        let q = query_json(
            &["amount>5".into(), "tags array-contains food".into()],
            &["amount:desc".into()],
            Some(10),
            None,
        )
        .unwrap();
        let query = crate::api::query::query_from_json(&q).unwrap();
        assert_eq!(query.filters.len(), 2);
        assert_eq!(query.limit, Some(10));
    }
}
