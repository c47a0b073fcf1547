//! The `cid` rows of the compare report (goal 5): canonical DAG-CBOR encode
//! plus CID of a ~1 KB document against raw SHA-256 over the same bytes.

use std::hint::black_box;
use std::time::Duration;

use ecomesh_types::{Map, Value};
use ecomesh_wire::{HashAlg, cid_of_with, encode_block, to_dag_cbor};
use sha2::Digest as _;

use super::{Options, Row, Target, seconds_per_call};

/// A document of mixed fields (text, integers, floats, booleans, bytes,
/// arrays, nested maps with keys of several lengths), grown until its
/// DAG-CBOR form reaches `target` bytes. The `wire` criterion bench uses it too.
pub fn document(target: usize) -> Value {
    let mut fields = Map::new();
    let mut i = 0_i64;
    loop {
        let mut entry = Map::new();
        entry.insert("name".into(), Value::Text(format!("member number {i}")));
        entry.insert("joined".into(), Value::Integer(1_700_000_000_000 + i));
        entry.insert("score".into(), Value::Float(i as f64 / 7.0));
        entry.insert("active".into(), Value::Bool(i % 3 != 0));
        entry.insert("key".into(), Value::Bytes(vec![(i % 251) as u8; 16]));
        entry.insert(
            "tags".into(),
            Value::Array(vec![Value::from("a"), Value::from("bb"), Value::Integer(i)]),
        );
        fields.insert(format!("m{i:05}"), Value::Map(entry));
        i += 1;
        let doc = Value::Map(fields.clone());
        if to_dag_cbor(&doc).map_or(usize::MAX, |b| b.len()) >= target {
            return doc;
        }
    }
}

/// Goal 5: `encode_block` (canonical bytes and their CIDv1, what a store
/// keeps) of a 1 KB document at most 2x raw SHA-256 over the same bytes;
/// the CID alone (`cid_of_with`) for context.
pub fn rows(options: &Options) -> Vec<Row> {
    let budget = if options.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    let rounds = if options.quick { 3 } else { 10 };
    let doc = document(1024);
    let Ok(bytes) = to_dag_cbor(&doc) else {
        return Vec::new();
    };
    let sha = seconds_per_call(budget, rounds, || {
        black_box(sha2::Sha256::digest(black_box(&bytes)));
    });
    let block = seconds_per_call(budget, rounds, || {
        let _ = black_box(encode_block(black_box(&doc), HashAlg::Sha2_256));
    });
    let cid = seconds_per_call(budget, rounds, || {
        let _ = black_box(cid_of_with(black_box(&doc), HashAlg::Sha2_256));
    });
    let us = |s: f64| s * 1e6;
    let raw = format!("raw SHA-256 of the same {} B", bytes.len());
    vec![
        Row {
            goal: "5 cid".into(),
            what: format!(
                "encode_block (DAG-CBOR + CIDv1) of a {} B document",
                bytes.len()
            ),
            value: us(block),
            baseline: us(sha),
            baseline_what: raw.clone(),
            unit: "µs",
            target: Target::AtMost(2.0),
        },
        Row {
            goal: "5 cid".into(),
            what: format!("cid_of (CID only) of the {} B document", bytes.len()),
            value: us(cid),
            baseline: us(sha),
            baseline_what: raw,
            unit: "µs",
            target: Target::Info,
        },
    ]
}
