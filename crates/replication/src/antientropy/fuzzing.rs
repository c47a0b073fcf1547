//! The check the `antientropy_frame` cargo-fuzz target runs on arbitrary bytes, and
//! the genuine frames its committed seed corpus holds; the crate's
//! `tests/fuzz_seeds.rs` replays both under `cargo test`.

use ecomesh_types::ContentId;

use super::frame::{
    ColPart, DIGEST_LEN, EntrySummary, FLAG_END, FLAG_HELLO, Frame, Need, SHORT_LEN, Summary,
};

/// Largest frame the check decodes (the adapter's part size is far below it).
const MAX_FRAME: usize = 1 << 20;

/// Decodes `data` as an anti-entropy frame: no panic, and whatever decodes
/// re-encodes to exactly the input and splits into parts that each decode.
///
/// # Panics
/// When a property does not hold (that is what the fuzzer looks for).
pub fn frame(data: &[u8]) {
    let Ok(frame) = Frame::decode(data, MAX_FRAME) else {
        return;
    };
    assert_eq!(
        frame.encode(),
        data,
        "a decoded frame re-encodes to its input"
    );
    if let Ok(parts) = frame.split(4096) {
        for part in parts {
            if let Err(e) = Frame::decode(&part, MAX_FRAME) {
                panic!("a split part does not decode: {e}");
            }
        }
    }
}

/// Genuine frames from the encoder (named seed inputs): a hello, nodes of each
/// summary kind, needs, wants, pushes and a final frame.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let cid = |n: u8| {
        let mut c = vec![0x01, 0x71, 0x12, 0x20];
        c.extend_from_slice(&[n; 32]);
        ContentId(c)
    };
    let short = |n: u8| [n; SHORT_LEN];
    let mut branch = [None; 16];
    branch[3] = Some([9; DIGEST_LEN]);
    branch[15] = Some([1; DIGEST_LEN]);
    let hello = Frame {
        flags: FLAG_HELLO,
        cols: vec![ColPart {
            name: "notes".into(),
            root: Some(short(1)),
            ..ColPart::default()
        }],
        ..Frame::default()
    };
    let nodes = Frame {
        cols: vec![ColPart {
            name: "notes".into(),
            root: None,
            nodes: vec![
                (Vec::new(), Summary::Branch(branch)),
                (vec![3], Summary::Empty),
                (
                    vec![15, 2],
                    Summary::Entries(vec![
                        EntrySummary {
                            key: short(4),
                            heads: Some(vec![short(5), short(6)]),
                        },
                        EntrySummary {
                            key: short(7),
                            heads: None,
                        },
                    ]),
                ),
            ],
            needs: vec![Need {
                key: short(8),
                heads: vec![short(9)],
                tail: vec![short(10), short(11)],
            }],
        }],
        ..Frame::default()
    };
    let data = Frame {
        flags: FLAG_END,
        wants: vec![cid(1), cid(2)],
        pushes: vec![(cid(3), b"version node bytes".to_vec())],
        fin: Some(cid(4)),
        ..Frame::default()
    };
    vec![
        ("empty", Frame::default().encode()),
        ("hello", hello.encode()),
        ("nodes_and_needs", nodes.encode()),
        ("wants_pushes_fin", data.encode()),
    ]
}
