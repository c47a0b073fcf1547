//! Committed test vectors of the formats `ecomesh-wire` defines beyond the
//! IPLD fixtures: the compact delta form (`compact_delta.txt`) and the
//! standalone compact state (`compact_document.txt`) of `ecomesh_wire::compact`.
//! A format change fails here with the new block printed; `UPDATE_VECTORS=1`
//! rewrites the files so the change is one visible diff.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use ecomesh_crdt::{DocumentCrdt, FieldOp};
use ecomesh_types::{HlcTimestamp, Map, PeerId, Value};
use ecomesh_wire::compact::decode_delta_compact;
use ecomesh_wire::{
    Limits, decode_document_compact, decode_state_compact, encode_delta_compact,
    encode_document_compact, encode_state_compact,
};

/// Checks (or with `UPDATE_VECTORS=1` rewrites) the committed vector file
/// `tests/vectors/<format>.txt`: every case encodes to the committed bytes
/// (and CID), and the committed bytes decode back to the case's input
/// (`decode` gets the case for its context, such as a base timestamp).
fn check_vectors<T: PartialEq + std::fmt::Debug>(
    format: &str,
    about: &str,
    cases: &[(&str, T)],
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8], &T) -> T,
    cid: impl Fn(&[u8], &T) -> Option<String>,
) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("vectors")
        .join(format!("{format}.txt"));
    let block = |name: &str, input: &T, bytes: &[u8]| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "# {format}: {about}\nname: {name}\ninput: {input:?}\nhex: {hex}\ncid: {}\n",
            cid(bytes, input).unwrap_or_else(|| "-".into())
        )
    };
    let blocks: Vec<String> = cases
        .iter()
        .map(|(name, input)| block(name, input, &encode(input)))
        .collect();
    if std::env::var_os("UPDATE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(&path, blocks.join("\n")).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_VECTORS=1 to write it",
            path.display()
        )
    });
    let committed: Vec<&str> = committed.split("\n\n").collect();
    assert_eq!(
        committed.len(),
        cases.len(),
        "{format}: the file has {} cases, the test {}; run with UPDATE_VECTORS=1 after a deliberate change",
        committed.len(),
        cases.len()
    );
    for ((name, input), (want, got)) in cases.iter().zip(blocks.iter().zip(&committed)) {
        let got = got.trim_end_matches('\n');
        let field = |k: &str| {
            got.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("{format}/{name}: no `{k}` line"))
                .to_owned()
        };
        let hex = field("hex: ");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            &decode(&bytes, input),
            input,
            "{format}/{name}: the committed bytes decode to another value"
        );
        assert_eq!(
            want.trim_end_matches('\n'),
            got,
            "{format}/{name}: the encoding changed; the new block is:\n{want}"
        );
    }
}

const T0: u64 = 1_767_225_600_000;

fn alice() -> PeerId {
    PeerId::from_digest([0xa1; 32])
}

fn bob() -> PeerId {
    PeerId::from_digest([0xb0; 32])
}

fn map(pairs: &[(&str, Value)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The cases: (name, delta, base timestamp).
fn deltas() -> Vec<(&'static str, (DocumentCrdt, HlcTimestamp))> {
    let base = HlcTimestamp::new(T0, 0, alice());
    let todo = map(&[
        ("title", Value::Text("buy milk".into())),
        ("done", Value::Bool(false)),
        ("due", Value::Integer(20_260_107)),
    ]);
    let mut doc = DocumentCrdt::new();
    let first = doc.set(todo, base).unwrap();
    let t1 = HlcTimestamp::new(T0 + 5_000, 0, alice());
    let done = doc.update(map(&[("done", Value::Bool(true))]), t1).unwrap();
    let t2 = HlcTimestamp::new(T0 + 9_000, 2, bob());
    let count = doc
        .apply([("n".to_owned(), FieldOp::Increment(-3))], t2)
        .unwrap();
    let t3 = HlcTimestamp::new(T0 + 9_001, 0, bob());
    let tags = doc
        .apply(
            [(
                "tags".to_owned(),
                FieldOp::AddToSet(vec![Value::Text("home".into())]),
            )],
            t3,
        )
        .unwrap();
    let t4 = HlcTimestamp::new(T0 + 20_000, 0, alice());
    let gone = doc.delete(t4).unwrap();
    vec![
        ("set 3 fields by the base peer", (first, base)),
        ("update one field by the base peer", (done, t1)),
        ("counter by another peer", (count, t1)),
        ("set element by another peer", (tags, t3)),
        ("delete", (gone, t4)),
        ("merged state relative to an older base", (doc, base)),
    ]
}

#[test]
fn compact_delta_vectors() {
    check_vectors(
        "compact_delta",
        "a DocumentCrdt delta in compact form relative to a base timestamp (ecomesh_wire::compact::encode_delta_compact)",
        &deltas(),
        |(d, base)| encode_delta_compact(d, base).unwrap(),
        // The base timestamp is context the bytes leave out.
        |b, (_, base)| {
            (
                decode_delta_compact(b, base, &Limits::DEFAULT).unwrap(),
                *base,
            )
        },
        |_, _| None,
    );
}

#[test]
fn compact_document_vectors() {
    let cases: Vec<(&str, DocumentCrdt)> = deltas()
        .into_iter()
        .map(|(name, (d, _))| (name, d))
        .chain([("empty", DocumentCrdt::new()), ("values", values_doc())])
        .collect();
    check_vectors(
        "compact_document",
        "a whole DocumentCrdt state in standalone compact form (ecomesh_wire::compact::encode_document_compact)",
        &cases,
        |d| encode_document_compact(d).unwrap(),
        |b, _| decode_document_compact(b, &Limits::DEFAULT).unwrap(),
        |_, _| None,
    );
}

/// A state holding every kind of value the compact value form codes apart:
/// small and large integers, negative, float, bytes, null, nested arrays and
/// maps, and texts and map keys repeated (string-table references).
fn values_doc() -> DocumentCrdt {
    let item = |name: &str| {
        Value::Map(map(&[
            ("name", Value::Text(name.into())),
            ("address", Value::Text("here".into())),
        ]))
    };
    let mut doc = DocumentCrdt::new();
    doc.set(
        map(&[
            ("small", Value::Integer(239)),
            ("large", Value::Integer(240)),
            ("negative", Value::Integer(-1_000_000)),
            ("ratio", Value::Float(0.25)),
            ("raw", Value::Bytes(vec![0, 1, 2])),
            ("nothing", Value::Null),
            (
                "people",
                Value::Array(vec![item("ann"), item("bo"), item("here")]),
            ),
        ]),
        HlcTimestamp::new(T0, 0, alice()),
    )
    .unwrap();
    doc
}

#[test]
fn compact_update_vectors() {
    // (state, known author): the author is the authenticated sender, whose
    // peer id the bytes leave out when it is the base peer.
    let mut cases: Vec<(&str, (DocumentCrdt, Option<PeerId>))> = deltas()
        .into_iter()
        .map(|(name, (d, base))| (name, (d, Some(base.peer))))
        .collect();
    cases.push(("values by their author", (values_doc(), Some(alice()))));
    cases.push(("values by another sender", (values_doc(), Some(bob()))));
    check_vectors(
        "compact_update",
        "a DocumentCrdt state or update in compact form with a known author (ecomesh_wire::compact_state::encode_state_compact)",
        &cases,
        |(d, known)| encode_state_compact(d, known.as_ref()).unwrap(),
        // The known author is context the bytes leave out.
        |b, (_, known)| {
            (
                decode_state_compact(b, known.as_ref(), &Limits::DEFAULT).unwrap(),
                *known,
            )
        },
        |_, _| None,
    );
}
