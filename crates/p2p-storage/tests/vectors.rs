//! Committed test vectors of the version node: its canonical DAG-CBOR form
//! with its CID (`version_node.txt`) and its compact wire form
//! (`version_node_compact.txt`, with the CID of the canonical bytes the
//! receiver rebuilds). Keys come from fixed seeds and timestamps are fixed, so
//! the bytes (Ed25519 signatures included) are deterministic. A format change
//! fails here with the new block printed; `UPDATE_VECTORS=1` rewrites the files.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use ecomesh_crdt::DocumentCrdt;
use ecomesh_identity::Identity;
use ecomesh_p2p_storage::{VersionNode, canonical_of_compact};
use ecomesh_types::{ContentId, HlcTimestamp, Map, Value};

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

fn map(pairs: &[(&str, Value)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn cid(bytes: &[u8]) -> ContentId {
    ecomesh_wire::to_content_id(&ecomesh_wire::cid_of_dag_cbor(bytes))
}

fn cid_text(bytes: &[u8]) -> String {
    ecomesh_wire::cid_of_dag_cbor(bytes).to_string()
}

/// Alice writes a todo, ticks it, Bob edits it concurrently, Alice merges
/// both heads and deletes it.
fn nodes() -> Vec<(&'static str, VersionNode)> {
    let alice = Identity::from_secret_bytes(&[0xa1; 32]);
    let bob = Identity::from_secret_bytes(&[0xb0; 32]);
    let at = |ms: u64, who: &Identity| HlcTimestamp::new(T0 + ms, 0, who.peer_id());
    let mut doc = DocumentCrdt::new();
    let t = at(0, &alice);
    let delta = doc
        .set(
            map(&[
                ("title", Value::Text("buy milk".into())),
                ("done", Value::Bool(false)),
                ("due", Value::Integer(20_260_107)),
            ]),
            t,
        )
        .unwrap();
    let first = VersionNode::signed(&alice, "todos", "t1", vec![], t, delta).unwrap();
    let c1 = cid(&ecomesh_wire::encode(&first).unwrap());
    let t = at(5_000, &alice);
    let delta = doc.update(map(&[("done", Value::Bool(true))]), t).unwrap();
    let tick = VersionNode::signed(&alice, "todos", "t1", vec![c1.clone()], t, delta).unwrap();
    let c2 = cid(&ecomesh_wire::encode(&tick).unwrap());
    let t = at(6_000, &bob);
    let delta = DocumentCrdt::new()
        .update(map(&[("title", Value::Text("buy oat milk".into()))]), t)
        .unwrap();
    let edit = VersionNode::signed(&bob, "todos", "t1", vec![c1], t, delta).unwrap();
    let c3 = cid(&ecomesh_wire::encode(&edit).unwrap());
    let t = at(9_000, &alice);
    let delta = doc.delete(t).unwrap();
    let gone = VersionNode::signed(&alice, "todos", "t1", vec![c2, c3], t, delta).unwrap();
    // A sealed version of an encrypted collection: a fixed group ciphertext
    // (kind 0x6D, version 1, group id, epoch 2, nonce, 24 bytes of sealed delta and tag).
    let mut ciphertext = vec![0x6d, 1];
    ciphertext.extend_from_slice(&[0x11; 16]);
    ciphertext.extend_from_slice(&2_u64.to_be_bytes());
    ciphertext.extend_from_slice(&[0x22; 24]);
    ciphertext.extend_from_slice(&[0x33; 24]);
    let t = at(12_000, &alice);
    let sealed =
        VersionNode::signed_over_ciphertext(&alice, "diary", "d1", vec![], t, ciphertext).unwrap();
    vec![
        ("first version: a 3-field todo", first),
        ("one-field update: done = true", tick),
        ("a concurrent edit by another peer", edit),
        ("a delete following two heads", gone),
        ("a sealed version (encrypted collection)", sealed),
    ]
}

#[test]
fn version_node_vectors() {
    check_vectors(
        "version_node",
        "a signed version node in canonical DAG-CBOR, the bytes its CID hashes (ecomesh_p2p_storage::records, Canonical for VersionNode)",
        &nodes(),
        |n| ecomesh_wire::encode(n).unwrap(),
        |b, _| {
            let n: VersionNode = ecomesh_wire::decode(b).unwrap();
            n.verify().unwrap();
            n
        },
        |b, _| Some(cid_text(b)),
    );
}

#[test]
fn version_node_compact_vectors() {
    // Each node as its author sends it (the key left out) and as a relay does.
    let cases: Vec<(String, (VersionNode, bool))> = nodes()
        .into_iter()
        .flat_map(|(name, n)| {
            [
                (format!("{name}, sent by its author"), (n.clone(), true)),
                (format!("{name}, sent by another peer"), (n, false)),
            ]
        })
        .collect();
    let cases: Vec<(&str, (VersionNode, bool))> =
        cases.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
    let key = |(n, by_author): &(VersionNode, bool)| by_author.then_some(n.author);
    check_vectors(
        "version_node_compact",
        "a version node in its compact wire form (VersionNode::encode_compact); cid: of the canonical bytes the receiver rebuilds",
        &cases,
        |c| {
            let (n, by_author) = c;
            n.encode_compact(by_author.then(|| n.author_peer()).as_ref())
                .unwrap()
        },
        |b, c| {
            (
                VersionNode::decode_compact(b, key(c).as_ref()).unwrap(),
                c.1,
            )
        },
        |b, c| Some(cid_text(&canonical_of_compact(b, key(c).as_ref()).unwrap())),
    );
}
