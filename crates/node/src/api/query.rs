//! Queries as JSON, and the opaque cursors of their pages.
//!
//! ```json
//! {"where": [["amount", ">", 5], ["tags", "array-contains", "food"]],
//!  "order_by": [["amount", "desc"], ["paid_by"]],
//!  "limit": 10,
//!  "start_after": "<next_cursor of the previous page>"}
//! ```
//! Operators are those of [`FilterOp`] (`==`, `!=`, `<`, `<=`, `>`, `>=`,
//! `in`, `not-in`, `array-contains`, `array-contains-any`); operands are
//! DAG-JSON values. Every key is optional.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ecomesh_sync::Value;
use ecomesh_types::{Cursor, Direction, Document, Filter, FilterOp, OrderBy, Query, get_path};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::json::value_to_json;
use axum::http::StatusCode;

/// Page size when a query names no limit.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page a query may ask for (`page_too_large` beyond it).
pub const MAX_PAGE: usize = 1000;
/// Most filters plus order-by fields in one query.
pub const MAX_CLAUSES: usize = 32;
/// Longest cursor text accepted.
const MAX_CURSOR: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryJson {
    #[serde(default, rename = "where")]
    filters: Vec<(String, String, serde_json::Value)>,
    #[serde(default)]
    order_by: Vec<OrderJson>,
    limit: Option<usize>,
    start_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OrderJson {
    Field((String,)),
    FieldDirection((String, String)),
}

/// A query from its JSON form; the page size is [`DEFAULT_PAGE`] unless the
/// query names one, refused above [`MAX_PAGE`].
pub fn query_from_json(json: &serde_json::Value) -> ApiResult<Query> {
    let q: QueryJson = serde_json::from_value(json.clone())
        .map_err(|e| ApiError::bad_json(format!("not a query: {e}; see docs/api.md, Queries")))?;
    if q.filters.len() + q.order_by.len() > MAX_CLAUSES {
        return Err(ApiError::bad_request(format!(
            "a query has at most {MAX_CLAUSES} filters and order-by fields together"
        )));
    }
    let mut query = Query::new();
    for (field, op, value) in q.filters {
        let op: FilterOp = op
            .parse()
            .map_err(|e| ApiError::bad_request(format!("{e}")))?;
        query.filters.push(Filter {
            field,
            op,
            value: value_from_json(&value)?,
        });
    }
    for o in q.order_by {
        let (field, direction) = match o {
            OrderJson::Field((f,)) => (f, Direction::Ascending),
            OrderJson::FieldDirection((f, d)) => {
                let d = match d.as_str() {
                    "asc" => Direction::Ascending,
                    "desc" => Direction::Descending,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "order direction {other:?}: use \"asc\" or \"desc\""
                        )));
                    }
                };
                (f, d)
            }
        };
        query.order_by.push(OrderBy { field, direction });
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "page_too_large",
            format!("limit {limit} is above the largest page, {MAX_PAGE}; page with start_after"),
        ));
    }
    query.limit = Some(limit);
    if let Some(c) = q.start_after {
        query.start_after = Some(cursor_from_text(&c)?);
    }
    query
        .validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.to_string()))?;
    Ok(query)
}

/// A DAG-JSON value (links and bytes in their `{"/": ...}` forms).
pub fn value_from_json(json: &serde_json::Value) -> ApiResult<Value> {
    ecomesh_wire::from_dag_json(&json.to_string())
        .map_err(|e| ApiError::bad_json(format!("not a DAG-JSON value: {e}")))
}

/// The cursor after `doc` in a query ordered by `query.order_by`, as opaque text.
pub fn cursor_after(query: &Query, doc: &Document) -> String {
    let values: Vec<Value> = query
        .order_by
        .iter()
        .map(|o| {
            get_path(&doc.fields, &o.field)
                .cloned()
                .unwrap_or(Value::Null)
        })
        .collect();
    let value = Value::Array(vec![Value::Array(values), Value::Text(doc.id.clone())]);
    let bytes = ecomesh_wire::to_dag_cbor(&value).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The next page's cursor: present when the page is full.
pub fn next_cursor(query: &Query, page: &[Document]) -> Option<String> {
    let full = query.limit.is_some_and(|l| l > 0 && page.len() >= l);
    full.then(|| page.last().map(|d| cursor_after(query, d)))
        .flatten()
}

fn cursor_from_text(text: &str) -> ApiResult<Cursor> {
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            format!(
                "start_after is not a cursor this node made ({why}); use a next_cursor it returned"
            ),
        )
    };
    if text.len() > MAX_CURSOR {
        return Err(bad("too long"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad("not base64url"))?;
    let value = ecomesh_wire::from_dag_cbor(&bytes).map_err(|_| bad("not DAG-CBOR"))?;
    match value {
        Value::Array(mut parts) if parts.len() == 2 => {
            let id = parts.pop();
            let values = parts.pop();
            match (values, id) {
                (Some(Value::Array(values)), Some(Value::Text(id))) => Ok(Cursor { values, id }),
                _ => Err(bad("wrong shape")),
            }
        }
        _ => Err(bad("wrong shape")),
    }
}

/// A document as JSON: `{"collection", "id", "fields"}`, fields in DAG-JSON.
pub fn doc_json(doc: &Document) -> ApiResult<serde_json::Value> {
    Ok(serde_json::json!({
        "collection": doc.collection,
        "id": doc.id,
        "fields": value_to_json(&Value::Map(doc.fields.clone()))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_cursors_round_trip() {
        let q = query_from_json(&serde_json::json!({
            "where": [["amount", ">", 5], ["tags", "in", ["a", "b"]]],
            "order_by": [["amount", "desc"], ["who"]],
            "limit": 2
        }))
        .unwrap();
        assert_eq!(q.filters.len(), 2);
        assert_eq!(q.filters[0].op, FilterOp::Gt);
        assert_eq!(q.order_by[0].direction, Direction::Descending);
        assert_eq!(q.order_by[1].direction, Direction::Ascending);
        let mut fields = ecomesh_types::Map::new();
        fields.insert("amount".into(), Value::Integer(7));
        let doc = Document::new("c", "d1", fields);
        let page = vec![doc.clone(), doc];
        let cursor = next_cursor(&q, &page).unwrap();
        let again = query_from_json(&serde_json::json!({
            "order_by": [["amount", "desc"], ["who"]],
            "start_after": cursor
        }))
        .unwrap();
        let c = again.start_after.unwrap();
        assert_eq!(c.id, "d1");
        assert_eq!(c.values, vec![Value::Integer(7), Value::Null]);
        assert_eq!(again.limit, Some(DEFAULT_PAGE));
    }

    #[test]
    fn bad_queries_are_typed_errors() {
        let kind = |j: serde_json::Value| query_from_json(&j).unwrap_err().kind;
        assert_eq!(kind(serde_json::json!({"limit": 5000})), "page_too_large");
        assert_eq!(kind(serde_json::json!({"start_after": "!!"})), "bad_cursor");
        assert_eq!(
            kind(serde_json::json!({"start_after": "AAAA"})),
            "bad_cursor"
        );
        assert_eq!(
            kind(serde_json::json!({"where": [["a", "~", 1]]})),
            "bad_request"
        );
        assert_eq!(
            kind(serde_json::json!({"where": [["a", "in", 1]]})),
            "invalid_query"
        );
        assert_eq!(kind(serde_json::json!({"wher": []})), "bad_json");
        assert_eq!(
            kind(serde_json::json!({"order_by": [["a", "up"]]})),
            "bad_request"
        );
    }
}
