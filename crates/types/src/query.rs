//! Firestore-style queries and their reference semantics.
//!
//! [`Query::execute`] is the specification every [`StorageAdapter`](crate::StorageAdapter)
//! implements: a store may use indexes, but must return what a plain scan through
//! `execute` returns.
//!
//! # Semantics
//! - A filter on a field the document lacks never matches (also for `!=` and `not-in`).
//! - `<`, `<=`, `>`, `>=` match only values of the same kind as the operand
//!   (integers and floats are one kind, "number"), in the [`Value`] total order.
//! - `==`, `!=`, `in`, `not-in` use [`Value`] equality (`Integer(1) != Float(1.0)`).
//! - `array-contains` matches an array field holding the operand; `array-contains-any`
//!   an array field holding any element of the operand array.
//! - `in`, `not-in` and `array-contains-any` take an array operand.
//! - Results are sorted by the `order_by` fields in turn, then by document id
//!   ascending. A document lacking an `order_by` field is left out.
//! - `start_after` resumes strictly after a [`Cursor`] taken from a previous page;
//!   `limit` caps the page; [`QueryPage::next_cursor`] is set when more results follow.

use std::cmp::Ordering;

use crate::{Document, Error, Value, get_path};

/// A comparison operator of a [`Filter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum FilterOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `in`: equal to one element of the operand array.
    In,
    /// `not-in`: equal to no element of the operand array.
    NotIn,
    /// `array-contains`
    ArrayContains,
    /// `array-contains-any`
    ArrayContainsAny,
}

impl FilterOp {
    /// Every operator.
    pub const ALL: [FilterOp; 10] = [
        FilterOp::Eq,
        FilterOp::Ne,
        FilterOp::Lt,
        FilterOp::Le,
        FilterOp::Gt,
        FilterOp::Ge,
        FilterOp::In,
        FilterOp::NotIn,
        FilterOp::ArrayContains,
        FilterOp::ArrayContainsAny,
    ];

    /// The Firestore spelling: `==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not-in`,
    /// `array-contains`, `array-contains-any`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FilterOp::Eq => "==",
            FilterOp::Ne => "!=",
            FilterOp::Lt => "<",
            FilterOp::Le => "<=",
            FilterOp::Gt => ">",
            FilterOp::Ge => ">=",
            FilterOp::In => "in",
            FilterOp::NotIn => "not-in",
            FilterOp::ArrayContains => "array-contains",
            FilterOp::ArrayContainsAny => "array-contains-any",
        }
    }

    fn takes_array(self) -> bool {
        matches!(
            self,
            FilterOp::In | FilterOp::NotIn | FilterOp::ArrayContainsAny
        )
    }
}

impl std::str::FromStr for FilterOp {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        FilterOp::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| Error::UnknownName {
                kind: "filter operator",
                name: s.to_owned(),
            })
    }
}

/// One condition on a (dotted) field path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Filter {
    /// Dotted path of the field, e.g. `"address.city"`.
    pub field: String,
    /// The operator.
    pub op: FilterOp,
    /// The operand.
    pub value: Value,
}

impl Filter {
    /// True when `doc` satisfies this filter.
    pub fn matches(&self, doc: &Document) -> bool {
        let Some(field) = get_path(&doc.fields, &self.field) else {
            return false;
        };
        let same_kind = || kind(field) == kind(&self.value);
        match self.op {
            FilterOp::Eq => field == &self.value,
            FilterOp::Ne => field != &self.value,
            FilterOp::Lt => same_kind() && field < &self.value,
            FilterOp::Le => same_kind() && field <= &self.value,
            FilterOp::Gt => same_kind() && field > &self.value,
            FilterOp::Ge => same_kind() && field >= &self.value,
            FilterOp::In => operand_array(&self.value).iter().any(|v| v == field),
            FilterOp::NotIn => !operand_array(&self.value).iter().any(|v| v == field),
            FilterOp::ArrayContains => field
                .as_array()
                .is_some_and(|items| items.contains(&self.value)),
            FilterOp::ArrayContainsAny => field.as_array().is_some_and(|items| {
                operand_array(&self.value)
                    .iter()
                    .any(|wanted| items.contains(wanted))
            }),
        }
    }
}

fn operand_array(v: &Value) -> &[Value] {
    v.as_array().unwrap_or(&[])
}

/// The comparison class of a value for range filters: integers and floats share one.
fn kind(v: &Value) -> u8 {
    match v {
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

/// Sort direction of an [`OrderBy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Direction {
    /// Smallest first.
    #[default]
    Ascending,
    /// Largest first.
    Descending,
}

/// One sort key of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OrderBy {
    /// Dotted path of the field.
    pub field: String,
    /// Direction.
    pub direction: Direction,
}

/// A position in a query's result order: the sort-key values and id of one document.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Cursor {
    /// The document's values of the query's `order_by` fields, in order.
    pub values: Vec<Value>,
    /// The document's id.
    pub id: String,
}

/// A query over one collection: filters (all must hold), order, limit and cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Query {
    /// Conditions, all of which must hold.
    pub filters: Vec<Filter>,
    /// Sort keys, applied in turn; document id breaks the remaining ties.
    pub order_by: Vec<OrderBy>,
    /// Largest page size, if any.
    pub limit: Option<usize>,
    /// Resume strictly after this position.
    pub start_after: Option<Cursor>,
}

/// One page of query results.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QueryPage {
    /// Matching documents, in query order.
    pub documents: Vec<Document>,
    /// Where the next page starts, when more results follow this page.
    pub next_cursor: Option<Cursor>,
}

impl Query {
    /// A query with no conditions: every document, ordered by id.
    pub fn new() -> Self {
        Query::default()
    }

    /// Adds a filter.
    #[must_use]
    pub fn filter(
        mut self,
        field: impl Into<String>,
        op: FilterOp,
        value: impl Into<Value>,
    ) -> Self {
        self.filters.push(Filter {
            field: field.into(),
            op,
            value: value.into(),
        });
        self
    }

    /// Adds a sort key.
    #[must_use]
    pub fn order_by(mut self, field: impl Into<String>, direction: Direction) -> Self {
        self.order_by.push(OrderBy {
            field: field.into(),
            direction,
        });
        self
    }

    /// Caps the page size.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Resumes after `cursor`.
    #[must_use]
    pub fn start_after(mut self, cursor: Cursor) -> Self {
        self.start_after = Some(cursor);
        self
    }

    /// Checks the query's shape: array operands where required, non-empty field
    /// paths, and a cursor with one value per `order_by` field.
    pub fn validate(&self) -> Result<(), Error> {
        for f in &self.filters {
            if f.field.is_empty() || f.field.split('.').any(str::is_empty) {
                return Err(Error::InvalidArgument(format!(
                    "bad field path {:?}",
                    f.field
                )));
            }
            if f.op.takes_array() && f.value.as_array().is_none() {
                return Err(Error::InvalidArgument(format!(
                    "operator {} needs an array operand, got {}",
                    f.op.as_str(),
                    f.value.kind_name()
                )));
            }
        }
        for o in &self.order_by {
            if o.field.is_empty() || o.field.split('.').any(str::is_empty) {
                return Err(Error::InvalidArgument(format!(
                    "bad order-by path {:?}",
                    o.field
                )));
            }
        }
        if let Some(cursor) = &self.start_after
            && cursor.values.len() != self.order_by.len()
        {
            return Err(Error::InvalidArgument(format!(
                "cursor has {} values, the query orders by {} fields",
                cursor.values.len(),
                self.order_by.len()
            )));
        }
        Ok(())
    }

    /// True when `doc` passes every filter and has every `order_by` field.
    pub fn matches(&self, doc: &Document) -> bool {
        self.filters.iter().all(|f| f.matches(doc))
            && self
                .order_by
                .iter()
                .all(|o| get_path(&doc.fields, &o.field).is_some())
    }

    /// The cursor that points at `doc` in this query's order.
    ///
    /// `None` when `doc` lacks one of the `order_by` fields.
    pub fn cursor_of(&self, doc: &Document) -> Option<Cursor> {
        let values = self
            .order_by
            .iter()
            .map(|o| get_path(&doc.fields, &o.field).cloned())
            .collect::<Option<Vec<_>>>()?;
        Some(Cursor {
            values,
            id: doc.id.clone(),
        })
    }

    /// Compares two cursor positions in this query's order.
    pub fn cmp_cursors(&self, a: &Cursor, b: &Cursor) -> Ordering {
        for ((o, va), vb) in self.order_by.iter().zip(&a.values).zip(&b.values) {
            let ord = va.cmp(vb);
            let ord = match o.direction {
                Direction::Ascending => ord,
                Direction::Descending => ord.reverse(),
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        a.id.cmp(&b.id)
    }

    /// Runs the query over `docs` by a full scan: the reference semantics.
    pub fn execute<'a, I>(&self, docs: I) -> Result<QueryPage, Error>
    where
        I: IntoIterator<Item = &'a Document>,
    {
        self.validate()?;
        let mut hits: Vec<(Cursor, &Document)> = docs
            .into_iter()
            .filter(|d| self.matches(d))
            .filter_map(|d| self.cursor_of(d).map(|c| (c, d)))
            .filter(|(c, _)| {
                self.start_after
                    .as_ref()
                    .is_none_or(|after| self.cmp_cursors(c, after) == Ordering::Greater)
            })
            .collect();
        hits.sort_by(|(a, _), (b, _)| self.cmp_cursors(a, b));
        let more = self.limit.is_some_and(|limit| hits.len() > limit);
        if let Some(limit) = self.limit {
            hits.truncate(limit);
        }
        let next_cursor = if more {
            hits.last().map(|(c, _)| c.clone())
        } else {
            None
        };
        Ok(QueryPage {
            documents: hits.into_iter().map(|(_, d)| d.clone()).collect(),
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Map;

    fn doc(id: &str, fields: &[(&str, Value)]) -> Document {
        let map: Map = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        Document::new("c", id, map)
    }

    fn ids(page: &QueryPage) -> Vec<&str> {
        page.documents.iter().map(|d| d.id.as_str()).collect()
    }

    fn sample() -> Vec<Document> {
        vec![
            doc(
                "a",
                &[
                    ("age", 30.into()),
                    ("tags", Value::Array(vec!["x".into(), "y".into()])),
                ],
            ),
            doc(
                "b",
                &[("age", 25.into()), ("tags", Value::Array(vec!["y".into()]))],
            ),
            doc("c", &[("age", "old".into())]),
            doc("d", &[("name", "no age".into())]),
            doc("e", &[("age", Value::Float(25.5))]),
        ]
    }

    #[test]
    fn every_operator() {
        let docs = sample();
        let run = |q: Query| ids(&q.execute(&docs).unwrap()).join("");
        assert_eq!(run(Query::new().filter("age", FilterOp::Eq, 30)), "a");
        assert_eq!(run(Query::new().filter("age", FilterOp::Ne, 30)), "bce");
        assert_eq!(run(Query::new().filter("age", FilterOp::Lt, 30)), "be");
        assert_eq!(run(Query::new().filter("age", FilterOp::Le, 30)), "abe");
        assert_eq!(run(Query::new().filter("age", FilterOp::Gt, 25)), "ae");
        assert_eq!(run(Query::new().filter("age", FilterOp::Ge, 25)), "abe");
        assert_eq!(run(Query::new().filter("age", FilterOp::Gt, "a")), "c");
        let in_list = Value::Array(vec![25.into(), "old".into()]);
        assert_eq!(
            run(Query::new().filter("age", FilterOp::In, in_list.clone())),
            "bc"
        );
        assert_eq!(
            run(Query::new().filter("age", FilterOp::NotIn, in_list)),
            "ae"
        );
        assert_eq!(
            run(Query::new().filter("tags", FilterOp::ArrayContains, "x")),
            "a"
        );
        let any = Value::Array(vec!["y".into(), "z".into()]);
        assert_eq!(
            run(Query::new().filter("tags", FilterOp::ArrayContainsAny, any)),
            "ab"
        );
    }

    #[test]
    fn order_limit_and_cursor_pagination() {
        let docs = sample();
        let q = Query::new()
            .filter("age", FilterOp::Ge, 0)
            .order_by("age", Direction::Descending);
        assert_eq!(ids(&q.execute(&docs).unwrap()), ["a", "e", "b"]);
        let page1 = q.clone().limit(2).execute(&docs).unwrap();
        assert_eq!(ids(&page1), ["a", "e"]);
        let cursor = page1.next_cursor.clone().unwrap();
        let page2 = q
            .clone()
            .limit(2)
            .start_after(cursor)
            .execute(&docs)
            .unwrap();
        assert_eq!(ids(&page2), ["b"]);
        assert!(page2.next_cursor.is_none());
        // A document without the order-by field is left out.
        let all = Query::new()
            .order_by("age", Direction::Ascending)
            .execute(&docs)
            .unwrap();
        assert_eq!(ids(&all), ["b", "e", "a", "c"]);
    }

    #[test]
    fn bad_queries_are_typed_errors() {
        let docs = sample();
        assert!(matches!(
            Query::new().filter("age", FilterOp::In, 3).execute(&docs),
            Err(Error::InvalidArgument(_))
        ));
        assert!(
            Query::new()
                .filter("a..b", FilterOp::Eq, 3)
                .execute(&docs)
                .is_err()
        );
        let cursor = Cursor {
            values: vec![],
            id: "a".into(),
        };
        assert!(
            Query::new()
                .order_by("age", Direction::Ascending)
                .start_after(cursor)
                .execute(&docs)
                .is_err()
        );
        assert!("like".parse::<FilterOp>().is_err());
        for op in FilterOp::ALL {
            assert_eq!(op.as_str().parse::<FilterOp>().unwrap(), op);
        }
    }
}
