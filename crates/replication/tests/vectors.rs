//! Test vectors pinning the bytes of replication's own formats.
//!
//! Each file `tests/vectors/<format>.txt` holds one block per case (name, a
//! readable input, the exact bytes in hex, the CID or `-`). The test builds
//! every input here, encodes it and compares with the file (a mismatch fails
//! and prints the new block), then decodes the committed hex and checks that
//! it gives the input back. `UPDATE_VECTORS=1 cargo test -p
//! ecomesh-replication --test vectors` rewrites the files instead, so a
//! deliberate format change is one command and a visible diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use ecomesh_replication::antientropy::frame::{
    ColPart, DIGEST_LEN, EntrySummary, FLAG_END, FLAG_HELLO, Frame, Need, Summary,
};
use ecomesh_types::ContentId;

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

// ----- anti-entropy frames ---------------------------------------------------

/// A fixed CIDv1 (dag-cbor, sha2-256) of `seed`.
fn cid(seed: &[u8]) -> ContentId {
    ecomesh_wire::to_content_id(&ecomesh_wire::cid_of_dag_cbor(seed))
}

fn frame_case(name: &'static str, frame: Frame) -> (Case, Frame) {
    let bytes = frame.encode();
    (
        Case {
            name,
            input: format!("{frame:?}"),
            bytes,
            cid: "-".into(),
        },
        frame,
    )
}

fn frames() -> Vec<(Case, Frame)> {
    let mut branch: [Option<[u8; DIGEST_LEN]>; 16] = Default::default();
    branch[0] = Some([0x01, 0x02, 0x03, 0x04]);
    branch[7] = Some([0xa0, 0xb1, 0xc2, 0xd3]);
    branch[15] = Some([0xff, 0xee, 0xdd, 0xcc]);
    let version = cid(b"\xa1\x61a\x01");
    let parent = cid(b"\xa1\x61a\x00");
    vec![
        frame_case("empty", Frame::default()),
        frame_case(
            "hello_root_only",
            Frame {
                flags: FLAG_HELLO | FLAG_END,
                cols: vec![ColPart {
                    name: "notes".into(),
                    root: Some([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]),
                    nodes: vec![(vec![], Summary::Branch(branch))],
                    needs: vec![],
                }],
                ..Frame::default()
            },
        ),
        frame_case(
            "descend_nodes",
            Frame {
                flags: FLAG_END,
                cols: vec![
                    ColPart {
                        name: "a".into(),
                        root: None,
                        nodes: vec![
                            (vec![3], Summary::Empty),
                            (
                                vec![7, 12],
                                Summary::Entries(vec![
                                    EntrySummary {
                                        key: [0x7c, 1, 2, 3, 4, 5, 6, 7],
                                        heads: Some(vec![[0xaa; 8], [0xbb; 8]]),
                                    },
                                    EntrySummary {
                                        key: [0x7c, 9, 9, 9, 9, 9, 9, 9],
                                        heads: Some(vec![]),
                                    },
                                    EntrySummary {
                                        key: [0x7c, 0xff, 0, 0, 0, 0, 0, 0],
                                        heads: None,
                                    },
                                ]),
                            ),
                        ],
                        needs: vec![],
                    },
                    ColPart {
                        name: "b".into(),
                        root: None,
                        nodes: vec![],
                        needs: vec![
                            Need {
                                key: [0x42; 8],
                                heads: vec![[1; 8], [2; 8]],
                                tail: vec![[3; 8]],
                            },
                            Need {
                                key: [0x43; 8],
                                heads: vec![],
                                tail: vec![],
                            },
                        ],
                    },
                ],
                ..Frame::default()
            },
        ),
        frame_case(
            "wants_and_pushes",
            Frame {
                flags: 0,
                cols: vec![],
                wants: vec![parent.clone()],
                pushes: vec![(version, b"\xa1\x61a\x01".to_vec())],
                fin: None,
            },
        ),
        frame_case(
            "final_with_root",
            Frame {
                flags: FLAG_END,
                cols: vec![],
                wants: vec![],
                pushes: vec![(parent, b"\xa1\x61a\x00".to_vec())],
                fin: Some(cid(b"\xa0")),
            },
        ),
    ]
}

#[test]
fn antientropy_frame_vectors() {
    check(
        "antientropy_frame",
        "antientropy_frame: one frame of an anti-entropy message, \
         ecomesh_replication::antientropy::frame::Frame::encode (crates/replication/src/antientropy/frame.rs)",
        frames(),
        |bytes| Frame::decode(bytes, 1 << 20).expect("a committed vector decodes"),
    );
}
