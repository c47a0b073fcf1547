//! Test vectors pinning the bytes of the wired link's record layer.
//!
//! `tests/vectors/wired_records.txt` holds one block per case (name, a readable input,
//! the exact bytes in hex, `-` for the CID: records have none). The bytes are the
//! plaintext records as `u16 big-endian length || record` (`link::message_records`,
//! `link::hello_record`, the keepalive records); on the wire each record travels
//! sealed as one Noise transport message, whose ciphertext depends on the session keys
//! and so cannot be pinned. The test builds every input here, encodes it and compares
//! with the file (a mismatch fails and prints the new block), then decodes the
//! committed hex and checks that it gives the input back. `UPDATE_VECTORS=1 cargo test
//! -p ecomesh-transport-wired --test vectors` rewrites the file instead, so a
//! deliberate format change is one command and a visible diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use ecomesh_transport_wired::link::{PING_RECORD, PONG_RECORD, hello_record, message_records};
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};

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

/// What a run of records means.
#[derive(Debug, PartialEq)]
enum Records {
    /// `HELLO` with the sender's maximum message size.
    Hello(u32),
    Ping,
    Pong,
    /// `MORE`* `END` carrying one message.
    Message(Box<NetworkMessage>),
}

/// Splits `u16 length || record` frames; panics on a malformed vector.
fn split(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        out.push(&bytes[2..2 + len]);
        bytes = &bytes[2 + len..];
    }
    out
}

fn decode(bytes: &[u8]) -> Records {
    let records = split(bytes);
    match records.as_slice() {
        [[0x00, 1, a, b, c, d]] => Records::Hello(u32::from_be_bytes([*a, *b, *c, *d])),
        [[0x03]] => Records::Ping,
        [[0x04]] => Records::Pong,
        _ => {
            let mut message = Vec::new();
            for (i, r) in records.iter().enumerate() {
                let want = if i + 1 == records.len() { 0x02 } else { 0x01 };
                assert_eq!(r[0], want, "record {i} kind");
                message.extend_from_slice(&r[1..]);
            }
            Records::Message(Box::new(
                ecomesh_wire::decode_message(&message).expect("message decodes"),
            ))
        }
    }
}

fn message(payload: Vec<u8>, recipient: bool, signed: bool) -> NetworkMessage {
    NetworkMessage {
        id: MessageId::new_v4([0x42; 16]),
        message_type: "sync/push".into(),
        payload,
        sender: PeerId::from_digest([0x11; 32]),
        recipient: recipient.then(|| PeerId::from_digest([0x22; 32])),
        timestamp_ms: 1_750_000_000_123,
        ttl_secs: 3600,
        hop_count: 1,
        max_hops: 7,
        signature: if signed {
            Signature([0x5a; 64])
        } else {
            Signature::UNSIGNED
        },
    }
}

fn case(name: &'static str, input: String, bytes: Vec<u8>, value: Records) -> (Case, Records) {
    (
        Case {
            name,
            input,
            bytes,
            cid: "-".into(),
        },
        value,
    )
}

#[test]
fn wired_records() {
    let small = message(b"hello".to_vec(), true, true);
    let broadcast = message(Vec::new(), false, false);
    let chunked = message((0..300_u32).map(|i| (i * 7) as u8).collect(), true, false);
    let cases = vec![
        case(
            "hello_16mib",
            "HELLO, version 1, max_message_size 16777216".into(),
            frame_one(&hello_record(16 << 20)),
            Records::Hello(16 << 20),
        ),
        case(
            "ping",
            "PING".into(),
            frame_one(&PING_RECORD),
            Records::Ping,
        ),
        case(
            "pong",
            "PONG".into(),
            frame_one(&PONG_RECORD),
            Records::Pong,
        ),
        case(
            "message_signed_unicast",
            format!("chunk_len 65518 (a link's), {small:?}"),
            message_records(&small, 65_518),
            Records::Message(Box::new(small)),
        ),
        case(
            "message_unsigned_broadcast_empty_payload",
            format!("chunk_len 65518 (a link's), {broadcast:?}"),
            message_records(&broadcast, 65_518),
            Records::Message(Box::new(broadcast)),
        ),
        case(
            "message_chunked",
            format!(
                "chunk_len 128, payload (i * 7) mod 256 for i in 0..300, {:?}",
                NetworkMessage {
                    payload: Vec::new(),
                    ..chunked.clone()
                }
            ),
            message_records(&chunked, 128),
            Records::Message(Box::new(chunked)),
        ),
    ];
    check(
        "wired_records",
        "wired_records: the wired link's plaintext records, each as u16 BE length || record (kind 0x00 HELLO, 0x01 MORE, 0x02 END, 0x03 PING, 0x04 PONG); encoder: ecomesh_transport_wired::link (message_records, hello_record); on the wire each record is sealed as one Noise XX transport message",
        cases,
        decode,
    );
}

fn frame_one(record: &[u8]) -> Vec<u8> {
    let mut out = (record.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(record);
    out
}
