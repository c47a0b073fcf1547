//! Test vectors pinning the bytes of the `/ecomesh/req/1.0.0` protocol.
//!
//! `tests/vectors/internet_requests.txt` and `internet_responses.txt` hold one block per
//! case (name, a readable input, the exact frame in hex: 4-byte big-endian body length,
//! then the body; `-` for the CID). The test builds every input here, encodes it
//! (`protocol::encode_request` / `encode_response`, then `protocol::frame`) and compares
//! with the file (a mismatch fails and prints the new block), then splits and decodes the
//! committed hex and checks that it gives the input back. `UPDATE_VECTORS=1 cargo test
//! -p ecomesh-transport-internet --test vectors` rewrites the files instead, so a
//! deliberate format change is one command and a visible diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use ecomesh_transport_internet::protocol::{
    Limits, decode_request, decode_response, encode_request, encode_response, frame, split_frame,
};
use ecomesh_transport_internet::{Request, Response};
use ecomesh_types::{ContentId, MessageId, NetworkMessage, PeerId, Signature};

/// One pinned case.
struct Case {
    name: &'static str,
    input: String,
    bytes: Vec<u8>,
    cid: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn block(case: &Case) -> String {
    format!(
        "name: {}\ninput: {}\nhex: {}\ncid: {}\n",
        case.name,
        case.input,
        hex(&case.bytes),
        case.cid
    )
}

fn render(header: &str, cases: &[Case]) -> String {
    let mut out = format!("# {header}\n");
    for case in cases {
        out.push('\n');
        out.push_str(&block(case));
    }
    out
}

/// The committed hex of each case, by name.
fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name: ") {
            name = Some(n.to_owned());
        } else if let Some(h) = line.strip_prefix("hex: ") {
            let n = name.take().expect("a hex line follows a name line");
            out.insert(n, h.to_owned());
        }
    }
    out
}

/// Compares the cases with `tests/vectors/<format>.txt` (or rewrites it with
/// `UPDATE_VECTORS=1`), then checks that `decode` gives each input back from
/// the committed bytes.
fn check<T: PartialEq + std::fmt::Debug>(
    format: &str,
    header: &str,
    cases: Vec<(Case, T)>,
    decode: impl Fn(&[u8]) -> T,
) {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "vectors"]
        .iter()
        .collect::<PathBuf>()
        .join(format!("{format}.txt"));
    let (pinned, inputs): (Vec<Case>, Vec<T>) = cases.into_iter().unzip();
    let expected = render(header, &pinned);
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_VECTORS=1 writes it)", path.display()));
    let committed_hex = parse(&committed);
    let mut failures = Vec::new();
    for case in &pinned {
        match committed_hex.get(case.name) {
            Some(h) if *h == hex(&case.bytes) => {}
            _ => failures.push(block(case)),
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} case(s) encode differently from the committed vectors; new blocks:\n\n{}",
        path.display(),
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        committed_hex.len(),
        pinned.len(),
        "{}: the file holds cases this test does not build",
        path.display()
    );
    assert_eq!(
        committed,
        expected,
        "{}: names, inputs or CIDs differ",
        path.display()
    );
    for (case, input) in pinned.iter().zip(&inputs) {
        let decoded = decode(&unhex(&committed_hex[case.name]));
        assert_eq!(
            &decoded, input,
            "{}: {} decodes differently",
            format, case.name
        );
    }
}

fn limits() -> Limits {
    Limits::default()
}

/// A fixed CIDv1 (dag-cbor, sha2-256) of `seed`.
fn cid(seed: &[u8]) -> ContentId {
    ecomesh_wire::to_content_id(&ecomesh_wire::cid_of_dag_cbor(seed))
}

fn message() -> NetworkMessage {
    NetworkMessage {
        id: MessageId::new_v4([0x42; 16]),
        message_type: "sync/push".into(),
        payload: b"hello".to_vec(),
        sender: PeerId::from_digest([0x11; 32]),
        recipient: Some(PeerId::from_digest([0x22; 32])),
        timestamp_ms: 1_750_000_000_123,
        ttl_secs: 3600,
        hop_count: 1,
        max_hops: 7,
        signature: Signature([0x5a; 64]),
    }
}

fn request_case(name: &'static str, req: Request) -> (Case, Request) {
    let body = encode_request(&req, limits().max_request).unwrap();
    (
        Case {
            name,
            input: format!("{req:?}"),
            bytes: frame(&body).unwrap(),
            cid: "-".into(),
        },
        req,
    )
}

fn response_case(name: &'static str, res: Response) -> (Case, Response) {
    let body = encode_response(&res, limits().max_response).unwrap();
    (
        Case {
            name,
            input: format!("{res:?}"),
            bytes: frame(&body).unwrap(),
            cid: "-".into(),
        },
        res,
    )
}

/// The body of one whole frame; panics on a malformed vector.
fn body(bytes: &[u8], max: usize) -> &[u8] {
    let (body, used) = split_frame(bytes, max).unwrap().expect("a whole frame");
    assert_eq!(used, bytes.len(), "one frame, nothing after it");
    body
}

#[test]
fn internet_requests() {
    let version = cid(b"\xa1\x61a\x01");
    let shard = cid(b"shard 0 of blob 1");
    let cases = vec![
        request_case("message", Request::Message(message())),
        request_case("hello", Request::Hello),
        request_case("version_node", Request::VersionNode { cid: version }),
        request_case("shard_get", Request::ShardGet { cid: shard.clone() }),
        request_case("shard_have", Request::ShardHave { cid: shard.clone() }),
        request_case(
            "shard_push",
            Request::ShardPush {
                cid: shard,
                data: vec![0xde, 0xad, 0xbe, 0xef],
            },
        ),
    ];
    let max = limits().max_request;
    check(
        "internet_requests",
        "internet_requests: /ecomesh/req/1.0.0 request frames, u32 BE body length || body (tag 0x01 message, 0x02 version node, 0x03 shard get, 0x04 shard have, 0x05 shard push, 0x06 hello); encoder: ecomesh_transport_internet::protocol (encode_request, frame)",
        cases,
        |bytes| decode_request(body(bytes, max), max).unwrap(),
    );
}

#[test]
fn internet_responses() {
    let cases = vec![
        response_case("ack", Response::Ack),
        response_case("data", Response::Data(b"version node bytes".to_vec())),
        response_case("have_true", Response::Have(true)),
        response_case("have_false", Response::Have(false)),
        response_case("push_ack", Response::PushAck),
        response_case("not_found", Response::NotFound),
        response_case("refused", Response::Refused),
        response_case("error", Response::Error("busy".into())),
    ];
    let max = limits().max_response;
    check(
        "internet_responses",
        "internet_responses: /ecomesh/req/1.0.0 response frames, u32 BE body length || body (tag 0x81 ack, 0x82 data, 0x83 have, 0x84 push ack, 0x85 not found, 0x86 refused, 0x87 error text); encoder: ecomesh_transport_internet::protocol (encode_response, frame)",
        cases,
        |bytes| decode_response(body(bytes, max), max).unwrap(),
    );
}
