//! Test vectors pinning `ecomesh-wire`'s own formats (issue 16). Each case is built here
//! from fixed inputs, encoded, compared with `tests/vectors/<format>.txt`, and the
//! committed bytes are decoded back to the input. After a deliberate change,
//! `UPDATE_VECTORS=1 cargo test -p ecomesh-wire --test vectors` rewrites the files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ecomesh_types::Value;
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};
use ecomesh_wire::{
    CarLimits, CarReader, CarWriter, Cid, HashAlg, decode_message, decode_message_compact,
    encode_message, encode_message_compact,
};

/// The `NetworkMessage` cases: (name, short description, message).
fn messages() -> Vec<(&'static str, String, NetworkMessage)> {
    let base = NetworkMessage {
        id: MessageId([0x5A; 16]),
        message_type: "sync-event".into(),
        payload: (0x80..0x90).collect(),
        sender: PeerId::from_digest([0x11; 32]),
        recipient: Some(PeerId::from_digest([0x22; 32])),
        timestamp_ms: 1_790_000_000_000,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature([0x33; 64]),
    };
    vec![
        (
            "unicast-signed-defaults",
            "id [0x5a; 16], type sync-event, payload 80..8f, sender [0x11; 32], recipient [0x22; 32], timestamp 1790000000000 ms, default ttl/hops/max hops, signature [0x33; 64]".into(),
            base.clone(),
        ),
        (
            "broadcast-unsigned-empty",
            "as unicast-signed-defaults but type presence, empty payload, no recipient, unsigned".into(),
            NetworkMessage {
                message_type: "presence".into(),
                payload: Vec::new(),
                recipient: None,
                signature: Signature::UNSIGNED,
                ..base.clone()
            },
        ),
        (
            "relayed-every-field",
            "as unicast-signed-defaults but ttl 300 s, hop count 3, max hops 7, timestamp 0".into(),
            NetworkMessage {
                ttl_secs: 300,
                hop_count: 3,
                max_hops: 7,
                timestamp_ms: 0,
                ..base
            },
        ),
    ]
}

#[test]
fn network_message_full() {
    let vectors: Vec<Vector> = messages()
        .into_iter()
        .map(|(name, input, m)| {
            let bytes = encode_message(&m);
            Vector::new(name, input, m, bytes, |b| decode_message(b).ok())
        })
        .collect();
    check_vectors(
        "network_message",
        "the full NetworkMessage, canonical DAG-CBOR with the seed's field names (ecomesh-wire message.rs, encode_message); identified by its id, no CID",
        &vectors,
    );
}

#[test]
fn network_message_compact() {
    let vectors: Vec<Vector> = messages()
        .into_iter()
        .map(|(name, input, m)| {
            let bytes = encode_message_compact(&m);
            Vector::new(name, input, m, bytes, |b| decode_message_compact(b).ok())
        })
        .collect();
    check_vectors(
        "network_message_compact",
        "the compact NetworkMessage for constrained links, CBOR map with integer keys, defaults omitted (ecomesh-wire message.rs, encode_message_compact); no CID",
        &vectors,
    );
}

/// The CAR cases: (name, description, roots, blocks).
type CarCase = (&'static str, &'static str, Vec<Cid>, Vec<(Cid, Vec<u8>)>);

fn car_cases() -> Vec<CarCase> {
    let cbor = ecomesh_wire::to_dag_cbor(&Value::from("hello")).unwrap();
    let cbor_cid = ecomesh_wire::cid_of_dag_cbor(&cbor);
    let raw = vec![0xAB; 5];
    let raw_cid = ecomesh_wire::cid_for_bytes(ecomesh_wire::cid::RAW, HashAlg::Blake3, &raw);
    let v0 =
        Cid::new_v0(*ecomesh_wire::cid_for_bytes(0x70, HashAlg::Sha2_256, b"v0").hash()).unwrap();
    vec![
        ("empty", "no roots, no blocks", vec![], vec![]),
        (
            "two-blocks",
            "root = the dag-cbor block \"hello\" (sha2-256); blocks: it, then 5 bytes 0xab as raw (blake3)",
            vec![cbor_cid],
            vec![(cbor_cid, cbor.clone()), (raw_cid, raw)],
        ),
        (
            "cid-v0",
            "root and one block \"v0\" named by a CIDv0 (the bare sha2-256 multihash)",
            vec![v0],
            vec![(v0, b"v0".to_vec())],
        ),
    ]
}

#[test]
fn car_files() {
    let vectors: Vec<Vector> = car_cases()
        .into_iter()
        .map(|(name, input, roots, blocks)| {
            let mut w = CarWriter::new(Vec::new(), &roots).unwrap();
            for (cid, data) in &blocks {
                // The section holds the `cid` crate's own binary form.
                assert_eq!(cid.to_bytes(), ecomesh_wire::to_content_id(cid).0);
                w.write_block(cid, data).unwrap();
            }
            let bytes = w.finish().unwrap();
            Vector::new(name, input.into(), (roots, blocks), bytes, |b| {
                let mut r = CarReader::new(b, CarLimits::DEFAULT).ok()?;
                let roots = r.roots().to_vec();
                let blocks = r
                    .by_ref()
                    .map(|b| b.map(|b| (b.cid, b.data)))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                Some((roots, blocks))
            })
        })
        .collect();
    check_vectors(
        "car",
        "a CARv1 file (ecomesh-wire car.rs, CarWriter): varint header length, DAG-CBOR header {roots, version: 1}, then per block varint(len(cid)+len(data)), binary CID, data",
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
