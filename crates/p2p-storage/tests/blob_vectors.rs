//! Test vectors pinning the bytes of p2p-storage's own formats.
//!
//! Each file `tests/vectors/<format>.txt` holds one block per case (name, a
//! readable input, the exact bytes in hex, the CID or `-`). The test builds
//! every input here, encodes it and compares with the file (a mismatch fails
//! and prints the new block), then decodes the committed hex and checks that
//! it gives the input back. `UPDATE_VECTORS=1 cargo test -p
//! ecomesh-p2p-storage --test blob_vectors` rewrites the files instead, so a
//! deliberate format change is one command and a visible diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use ecomesh_p2p_storage::blobs::frame::{self, FrameKind};
use ecomesh_replication::blob::{BlobConfig, BlobId, Manifest, ManifestLimits, encode_blob};
use ecomesh_replication::shard::{ShardRequest, ShardResponse};

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

// ----- blob envelopes (`blobs/frame.rs`) --------------------------------------

/// What one envelope carries, decoded as far as its kind says.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Request(ShardRequest),
    Response(ShardResponse),
    ManifestRequest(BlobId),
    /// A `ManifestResponse` or `Announce`: collection and manifest, or
    /// nothing ("not held").
    Manifest(Option<(String, Manifest)>),
    /// One part of a multi-part frame: its raw bytes.
    Part(Vec<u8>),
}

/// One envelope: the header fields and the decoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pinned {
    kind: FrameKind,
    request: u64,
    part: u32,
    parts: u32,
    body: Body,
}

fn payload(body: &Body) -> Vec<u8> {
    match body {
        Body::Request(r) => r.encode(),
        Body::Response(r) => r.encode(),
        Body::ManifestRequest(id) => id.as_bytes().to_vec(),
        Body::Manifest(None) => Vec::new(),
        Body::Manifest(Some((c, m))) => frame::encode_manifest(c, &m.to_bytes().unwrap()),
        Body::Part(b) => b.clone(),
    }
}

fn decode_envelope(bytes: &[u8]) -> Pinned {
    let e = frame::decode(bytes, 1 << 20).unwrap();
    let body = if e.parts > 1 {
        Body::Part(e.payload.to_vec())
    } else {
        match e.kind {
            FrameKind::ShardRequest => Body::Request(ShardRequest::decode(e.payload).unwrap()),
            FrameKind::ShardResponse => Body::Response(ShardResponse::decode(e.payload).unwrap()),
            FrameKind::ManifestRequest => {
                Body::ManifestRequest(frame::decode_manifest_request(e.payload).unwrap())
            }
            FrameKind::ManifestResponse | FrameKind::Announce if e.payload.is_empty() => {
                Body::Manifest(None)
            }
            FrameKind::ManifestResponse | FrameKind::Announce => Body::Manifest(Some(
                frame::decode_manifest(e.payload, &ManifestLimits::default()).unwrap(),
            )),
        }
    };
    Pinned {
        kind: e.kind,
        request: e.request,
        part: e.part,
        parts: e.parts,
        body,
    }
}

fn envelope(name: &'static str, kind: FrameKind, request: u64, body: Body) -> (Case, Pinned) {
    let p = Pinned {
        kind,
        request,
        part: 0,
        parts: 1,
        body,
    };
    envelope_case(name, p)
}

fn envelope_case(name: &'static str, p: Pinned) -> (Case, Pinned) {
    let bytes = frame::encode(p.kind, p.request, p.part, p.parts, &payload(&p.body));
    let cid = match &p.body {
        // The blob the manifest describes, in its CID text form.
        Body::Manifest(Some((_, m))) => m.id().to_text(),
        _ => "-".into(),
    };
    (
        Case {
            name,
            input: format!("{p:?}"),
            bytes,
            cid,
        },
        p,
    )
}

fn envelopes() -> Vec<(Case, Pinned)> {
    let piece = BlobId::of(b"piece");
    let data = b"hello blob".to_vec();
    let small = BlobConfig {
        none_max: 16,
        chunked_max: 100,
        chunk_size: 16,
    };
    let chunked = encode_blob(&[0x5a; 50], &small).unwrap().manifest;
    let rs = BlobConfig {
        none_max: 0,
        chunked_max: 0,
        chunk_size: 16,
    };
    let sharded = encode_blob(&(0..40).collect::<Vec<u8>>(), &rs)
        .unwrap()
        .manifest;
    let whole = ShardResponse::Data((0..20).collect()).encode();
    let parts = frame::split(FrameKind::ShardResponse, 0x77, &whole, 8);
    assert_eq!(parts.len(), 3);
    let part = |i: u32| Pinned {
        kind: FrameKind::ShardResponse,
        request: 0x77,
        part: i,
        parts: 3,
        body: Body::Part(whole.chunks(8).nth(i as usize).unwrap().to_vec()),
    };
    vec![
        envelope(
            "get",
            FrameKind::ShardRequest,
            1,
            Body::Request(ShardRequest::Get { id: piece }),
        ),
        envelope(
            "have",
            FrameKind::ShardRequest,
            2,
            Body::Request(ShardRequest::Have { id: piece }),
        ),
        envelope(
            "push",
            FrameKind::ShardRequest,
            0x0102_0304_0506_0708,
            Body::Request(ShardRequest::Push {
                id: BlobId::of(&data),
                data: data.clone(),
            }),
        ),
        envelope(
            "data",
            FrameKind::ShardResponse,
            1,
            Body::Response(ShardResponse::Data(data)),
        ),
        envelope(
            "have_true",
            FrameKind::ShardResponse,
            2,
            Body::Response(ShardResponse::Have(true)),
        ),
        envelope(
            "have_false",
            FrameKind::ShardResponse,
            3,
            Body::Response(ShardResponse::Have(false)),
        ),
        envelope(
            "push_ack",
            FrameKind::ShardResponse,
            4,
            Body::Response(ShardResponse::PushAck),
        ),
        envelope(
            "not_found",
            FrameKind::ShardResponse,
            5,
            Body::Response(ShardResponse::NotFound),
        ),
        envelope(
            "error",
            FrameKind::ShardResponse,
            6,
            Body::Response(ShardResponse::error("pushes are not accepted")),
        ),
        envelope(
            "manifest_request",
            FrameKind::ManifestRequest,
            7,
            Body::ManifestRequest(chunked.id()),
        ),
        envelope(
            "manifest_response_chunked",
            FrameKind::ManifestResponse,
            7,
            Body::Manifest(Some(("photos".into(), chunked))),
        ),
        envelope(
            "manifest_response_not_held",
            FrameKind::ManifestResponse,
            8,
            Body::Manifest(None),
        ),
        envelope(
            "announce_rs_4_7",
            FrameKind::Announce,
            u64::MAX,
            Body::Manifest(Some(("backups".into(), sharded))),
        ),
        envelope_case("data_part_0_of_3", part(0)),
        envelope_case("data_part_1_of_3", part(1)),
        envelope_case("data_part_2_of_3", part(2)),
    ]
}

#[test]
fn blob_envelopes_match_their_vectors() {
    let cases = envelopes();
    // The multi-part cases are exactly what `split` sends.
    let whole = ShardResponse::Data((0..20).collect()).encode();
    let split = frame::split(FrameKind::ShardResponse, 0x77, &whole, 8);
    let pinned: Vec<&Vec<u8>> = cases
        .iter()
        .filter(|(c, _)| c.name.starts_with("data_part_"))
        .map(|(c, _)| &c.bytes)
        .collect();
    assert_eq!(pinned, split.iter().collect::<Vec<_>>());
    check(
        "blob_envelope",
        "blob_envelope: one mesh message of type ecomesh/shard: version, kind, request id, part, part count, payload (shard frames of ecomesh_replication::shard, manifest payloads); p2p-storage src/blobs/frame.rs",
        cases,
        decode_envelope,
    );
}
