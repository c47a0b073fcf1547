//! Model-based property test: indexed queries return exactly what a naive scan
//! (the reference `Query::execute` over a plain map of documents) returns,
//! after any sequence of writes and deletes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use ecomesh_types::{Direction, Document, FilterOp, Map, Query, SetOptions, Value};
use proptest::prelude::*;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3_i64..4).prop_map(Value::Integer),
        prop_oneof![
            Just(-1.5),
            Just(0.0),
            Just(-0.0),
            Just(2.0),
            Just(2.5),
            Just(f64::NAN)
        ]
        .prop_map(Value::Float),
        prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(9_007_199_254_740_993)]
            .prop_map(Value::Integer),
        "[ab]{0,2}".prop_map(Value::Text),
        proptest::collection::vec(0_u8..2, 0..2).prop_map(Value::Bytes),
    ]
}

/// A scalar that can be stored (DAG-CBOR has no NaN); queries still use NaN operands.
fn storable() -> impl Strategy<Value = Value> {
    scalar().prop_map(|v| match v {
        Value::Float(f) if f.is_nan() => Value::Float(-0.5),
        other => other,
    })
}

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => storable(),
        1 => proptest::collection::vec(storable(), 0..3).prop_map(Value::Array),
        1 => proptest::collection::btree_map("[xy]", storable(), 0..2).prop_map(Value::Map),
    ]
}

fn doc_fields() -> impl Strategy<Value = Map> {
    proptest::collection::btree_map(
        prop_oneof![
            Just("f".to_owned()),
            Just("g".to_owned()),
            Just("h".to_owned())
        ],
        field_value(),
        0..3,
    )
}

#[derive(Debug, Clone)]
enum Op {
    Set(u8, Map),
    Merge(u8, Map),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0_u8..12, doc_fields()).prop_map(|(d, f)| Op::Set(d, f)),
        1 => (0_u8..12, doc_fields()).prop_map(|(d, f)| Op::Merge(d, f)),
        1 => (0_u8..12).prop_map(Op::Delete),
    ]
}

fn query() -> impl Strategy<Value = Query> {
    let op = prop_oneof![
        Just(FilterOp::Eq),
        Just(FilterOp::Ne),
        Just(FilterOp::Lt),
        Just(FilterOp::Le),
        Just(FilterOp::Gt),
        Just(FilterOp::Ge),
        Just(FilterOp::In),
        Just(FilterOp::NotIn),
        Just(FilterOp::ArrayContains),
        Just(FilterOp::ArrayContainsAny),
    ];
    let field = prop_oneof![
        Just("f".to_owned()),
        Just("g".to_owned()),
        Just("h.x".to_owned())
    ];
    let filter = (
        field.clone(),
        op,
        scalar(),
        proptest::collection::vec(scalar(), 0..3),
    )
        .prop_map(|(f, op, v, list)| {
            let operand = match op {
                FilterOp::In | FilterOp::NotIn | FilterOp::ArrayContainsAny => Value::Array(list),
                _ => v,
            };
            (f, op, operand)
        });
    let order = (
        field,
        prop_oneof![Just(Direction::Ascending), Just(Direction::Descending)],
    );
    (
        proptest::collection::vec(filter, 0..3),
        proptest::option::of(order),
        proptest::option::of(0_usize..5),
    )
        .prop_map(|(filters, order, limit)| {
            let mut q = Query::new();
            for (f, op, v) in filters {
                q = q.filter(f, op, v);
            }
            if let Some((f, d)) = order {
                q = q.order_by(f, d);
            }
            if let Some(l) = limit {
                q = q.limit(l);
            }
            q
        })
}

proptest! {
    #[test]
    fn prop_indexed_queries_equal_a_naive_scan(ops in proptest::collection::vec(op(), 1..40), queries in proptest::collection::vec(query(), 1..6)) {
        let store = common::memory(1);
        let mut model: BTreeMap<String, Map> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Set(d, f) => {
                    store.set("c", &format!("d{d}"), f.clone(), SetOptions::REPLACE).unwrap();
                    model.insert(format!("d{d}"), f);
                }
                Op::Merge(d, f) => {
                    store.set("c", &format!("d{d}"), f.clone(), SetOptions::MERGE).unwrap();
                    model.entry(format!("d{d}")).or_default().extend(f);
                }
                Op::Delete(d) => {
                    store.delete("c", &format!("d{d}")).unwrap();
                    model.remove(&format!("d{d}"));
                }
            }
        }
        let docs: Vec<Document> = model.iter().map(|(id, f)| Document::new("c", id.clone(), f.clone())).collect();
        for q in queries {
            let expected = q.execute(&docs).unwrap();
            let mut got = store.query("c", &q).unwrap();
            prop_assert_eq!(&got, &expected, "query {:?}", q);
            // Follow the cursor through every page.
            while let Some(cursor) = got.next_cursor.clone() {
                let next = q.clone().start_after(cursor);
                got = store.query("c", &next).unwrap();
                prop_assert_eq!(&got, &next.execute(&docs).unwrap());
            }
        }
        store.verify_integrity().unwrap();
    }
}
