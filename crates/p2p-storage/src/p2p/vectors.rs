//! Test vectors pinning the payloads of the adapter's mesh messages (`wire.rs`, issue 16):
//! anti-entropy envelopes, read-miss fetches and their answers, delta-sync requests and
//! pages. Each case is built here from fixed inputs, encoded, compared with
//! `tests/vectors/<format>.txt`, and the committed bytes are decoded back to the input.
//! The codecs are private to `p2p`, so this is a unit test of the crate; after a
//! deliberate change `UPDATE_VECTORS=1 cargo test -p ecomesh-p2p-storage --lib vectors`
//! rewrites the files. Version node bytes inside are opaque here (they have their own
//! vectors).

use super::wire::{
    DeltaPage, Envelope, decode_delta, decode_envelope, decode_fetch, decode_fetched, decode_since,
    encode_delta, encode_envelope, encode_fetch, encode_fetched, encode_since,
};

fn bytes(start: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| start.wrapping_add(i as u8)).collect()
}

type EnvelopeFields = (u64, u64, u64, u64, Vec<Vec<u8>>);

fn envelope(name: &'static str, e: Envelope) -> Vector {
    let value: EnvelopeFields = (e.sid, e.seq, e.part, e.parts, e.frames.clone());
    let encoded = encode_envelope(&e);
    Vector::new(
        name,
        format!("(sid, seq, part, parts, frames) = {value:?}"),
        value,
        encoded,
        |b| decode_envelope(b).map(|e| (e.sid, e.seq, e.part, e.parts, e.frames)),
    )
}

#[test]
fn anti_entropy_envelopes() {
    let vectors = vec![
        envelope(
            "one-part",
            Envelope {
                sid: 0x0102_0304_0506,
                seq: 7,
                part: 0,
                parts: 1,
                frames: vec![bytes(0x10, 6), bytes(0x20, 3)],
            },
        ),
        envelope(
            "last-of-three-parts",
            Envelope {
                sid: 1,
                seq: 300,
                part: 2,
                parts: 3,
                frames: vec![Vec::new()],
            },
        ),
    ];
    check_vectors(
        "anti_entropy_envelope",
        "one part of one anti-entropy protocol message, a DAG-CBOR map (ecomesh-p2p-storage p2p/wire.rs, encode_envelope)",
        &vectors,
    );
}

#[test]
fn fetches() {
    let request: (i64, String, String) = (42, "notes".into(), "doc-1".into());
    let answer: (u64, Vec<Vec<u8>>) = (42, vec![bytes(0x40, 8), bytes(0x50, 4)]);
    let vectors = vec![
        Vector::new(
            "request",
            format!("(request id, collection, document) = {request:?}"),
            request.clone(),
            encode_fetch(42, &request.1, &request.2),
            decode_fetch,
        ),
        Vector::new(
            "answer",
            format!("(request id, version node bytes) = {answer:?}"),
            answer.clone(),
            encode_fetched(42, answer.1.clone()),
            |b| decode_fetched(b, 1 << 20),
        ),
    ];
    check_vectors(
        "fetch",
        "a read-miss fetch request or its answer, a DAG-CBOR map (ecomesh-p2p-storage p2p/wire.rs, encode_fetch / encode_fetched)",
        &vectors,
    );
}

fn page(name: &'static str, p: DeltaPage) -> Vector {
    let value = (p.next, p.more, p.versions.clone());
    let encoded = encode_delta(&p);
    Vector::new(
        name,
        format!("delta page (next, more, version node bytes) = {value:?}"),
        value,
        encoded,
        |b| decode_delta(b, 1 << 20).map(|p| (p.next, p.more, p.versions)),
    )
}

#[test]
fn delta_sync() {
    let vectors = vec![
        Vector::new(
            "since-start",
            "since request from position 0".into(),
            0u64,
            encode_since(0),
            decode_since,
        ),
        Vector::new(
            "since",
            "since request from position 123456789".into(),
            123_456_789u64,
            encode_since(123_456_789),
            decode_since,
        ),
        page(
            "page-more",
            DeltaPage {
                next: 17,
                more: true,
                versions: vec![bytes(0x60, 5), bytes(0x70, 2)],
            },
        ),
        page(
            "page-last-empty",
            DeltaPage {
                next: 17,
                more: false,
                versions: Vec::new(),
            },
        ),
    ];
    check_vectors(
        "delta_sync",
        "a delta-sync request (ecomesh/since) or page (ecomesh/delta), a DAG-CBOR map (ecomesh-p2p-storage p2p/wire.rs, encode_since / encode_delta)",
        &vectors,
    );
}

// ---- The vector file format (the same helper in every crate's `tests/vectors.rs`) ----

/// Checks that some bytes decode to a case's input.
type DecodeCheck = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One case: its input (as the file shows it), its exact bytes, its CID text (`-` for
/// none), and a check that decoding some bytes gives back the input.
struct Vector {
    name: &'static str,
    input: String,
    bytes: Vec<u8>,
    cid: String,
    decodes: DecodeCheck,
}

impl Vector {
    fn new<T: PartialEq + std::fmt::Debug + 'static>(
        name: &'static str,
        input: String,
        value: T,
        bytes: Vec<u8>,
        decode: impl Fn(&[u8]) -> Option<T> + 'static,
    ) -> Vector {
        Vector {
            name,
            input,
            bytes,
            cid: "-".into(),
            decodes: Box::new(move |b| match decode(b) {
                Some(v) if v == value => Ok(()),
                Some(v) => Err(format!("decodes to {v:?}, not the input {value:?}")),
                None => Err("does not decode".into()),
            }),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn block(format: &str, about: &str, v: &Vector) -> String {
    format!(
        "# {format}: {about}\nname: {}\ninput: {}\nhex: {}\ncid: {}\n",
        v.name,
        v.input,
        hex(&v.bytes),
        v.cid
    )
}

/// Checks `vectors` against the committed `tests/vectors/<format>.txt`: the file must be
/// exactly what the encoders give now (a mismatch fails and prints the new blocks), and
/// the committed bytes of each case must decode to its input. With `UPDATE_VECTORS=1`
/// the file is rewritten instead (a deliberate format change is one command and a diff).
fn check_vectors(format: &str, about: &str, vectors: &[Vector]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(format!("{format}.txt"));
    let want: Vec<String> = vectors.iter().map(|v| block(format, about, v)).collect();
    let want_text = want.join("\n");
    if std::env::var_os("UPDATE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want_text).unwrap();
    }
    let have_text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut committed = std::collections::HashMap::new();
    for b in have_text.split("\n\n") {
        let field = |k: &str| b.lines().find_map(|l| l.strip_prefix(k)).map(str::to_owned);
        if let (Some(n), Some(h)) = (field("name: "), field("hex: ")) {
            committed.insert(n, h);
        }
    }
    let mut problems = Vec::new();
    for (v, text) in vectors.iter().zip(&want) {
        match committed.get(v.name) {
            Some(h) if *h == hex(&v.bytes) => {}
            Some(_) => problems.push(format!(
                "{}: the encoder's bytes changed; new block:\n{text}",
                v.name
            )),
            None => problems.push(format!("{}: not in the file; new block:\n{text}", v.name)),
        }
        if let Some(bytes) = committed.get(v.name).and_then(|h| unhex(h))
            && let Err(e) = (v.decodes)(&bytes)
        {
            problems.push(format!("{}: the committed hex {e}", v.name));
        }
    }
    if problems.is_empty() && have_text != want_text {
        problems.push(format!(
            "{} differs from what the encoders give (stale cases or descriptions); expected:\n{want_text}",
            path.display()
        ));
    }
    assert!(
        problems.is_empty(),
        "{format} vectors (run with UPDATE_VECTORS=1 to accept a deliberate change):\n{}",
        problems.join("\n")
    );
}
