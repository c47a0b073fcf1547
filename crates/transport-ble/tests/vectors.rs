//! Test vectors pinning the BLE transport's own formats (issue 18): the advertising
//! data (`gatt.rs`), the presence tag (`presence.rs`), the fragments of the GATT framing
//! (`frag.rs`, every kind, and a unit cut at the minimum MTU) and the plaintext records
//! of a link (`link.rs`: HELLO with and without the wait flag, READY, PING, PONG, BYE).
//! Each case is built here from fixed inputs, encoded, compared with
//! `tests/vectors/<format>.txt`, and the committed bytes are decoded back to the input.
//! `UPDATE_VECTORS=1 cargo test -p ecomesh-transport-ble --test vectors` rewrites the
//! files after a deliberate change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ecomesh_transport_ble::frag::{Fragment, Framer, FramerConfig, INITIAL_CREDITS};
use ecomesh_transport_ble::gatt::Advertisement;
use ecomesh_transport_ble::link::{hello_record, record};
use ecomesh_transport_ble::presence::{PresenceKey, PresenceTag};
use ecomesh_types::PeerId;

/// An owned fragment, for comparing decodes.
#[derive(Debug, PartialEq)]
enum Frag {
    First(u16, Vec<u8>),
    Cont(Vec<u8>),
    Credit(u8),
}

fn own(f: Fragment<'_>) -> Frag {
    match f {
        Fragment::First { unit_len, data } => Frag::First(unit_len, data.to_vec()),
        Fragment::Cont(d) => Frag::Cont(d.to_vec()),
        Fragment::Credit(n) => Frag::Credit(n),
    }
}

fn fragment(name: &'static str, f: Fragment<'_>) -> Vector {
    let mut bytes = Vec::new();
    f.encode(&mut bytes);
    let value = own(f);
    Vector::new(name, format!("{value:?}"), value, bytes, |b| {
        Fragment::decode(b).ok().map(own)
    })
}

fn bytes(start: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| start.wrapping_add(i as u8)).collect()
}

#[test]
fn ble_advertisement() {
    let adv = Advertisement {
        tag: PresenceTag([0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6]),
    };
    let v = vec![Vector::new(
        "advertisement",
        format!("{adv:?}"),
        adv,
        adv.encode(),
        |b| Advertisement::decode(b).ok().flatten(),
    )];
    assert_eq!(v[0].bytes.len(), 31);
    check_vectors(
        "ble_advertisement",
        "legacy advertising data (ecomesh-transport-ble gatt.rs, Advertisement::encode): flags, the 128-bit service UUID, manufacturer data 0xFFFF with the 6-byte tag",
        &v,
    );
}

#[test]
fn ble_presence_tag() {
    let key = PresenceKey::derive(b"ecomesh test vectors");
    let peer = PeerId::from_digest([0x42; 32]);
    let cases = [
        ("epoch-0", 0u64),
        ("epoch-1", 1),
        ("epoch-2000000", 2_000_000),
    ];
    let v: Vec<Vector> = cases
        .iter()
        .map(|&(name, epoch)| {
            let tag = key.tag(epoch, &peer);
            let k = key.clone();
            Vector::new(
                name,
                format!("epoch {epoch}, peer [0x42; 32]"),
                tag,
                tag.0.to_vec(),
                move |b| {
                    let t = PresenceTag(b.try_into().ok()?);
                    (t == k.tag(epoch, &peer)).then_some(t)
                },
            )
        })
        .collect();
    check_vectors(
        "ble_presence_tag",
        "a presence tag (ecomesh-transport-ble presence.rs): BLAKE3 keyed with PresenceKey::derive(b\"ecomesh test vectors\") over the context, the epoch and the peer id, first 6 bytes",
        &v,
    );
}

#[test]
fn ble_fragments() {
    let unit = bytes(0x10, 60);
    let mut v = vec![
        fragment(
            "first-whole",
            Fragment::First {
                unit_len: 5,
                data: &unit[..5],
            },
        ),
        fragment(
            "first-partial",
            Fragment::First {
                unit_len: 60,
                data: &unit[..17],
            },
        ),
        fragment("cont", Fragment::Cont(&unit[17..36])),
        fragment("credit", Fragment::Credit(4)),
    ];
    // A 60-byte unit at the minimum MTU (23): FIRST with 17 bytes, then CONTs of 19.
    let mut framer = Framer::new(
        FramerConfig {
            window: INITIAL_CREDITS,
            ..FramerConfig::default()
        },
        23,
    )
    .unwrap();
    framer.send_unit(unit.clone()).unwrap();
    let names = [
        "unit60-mtu23-0",
        "unit60-mtu23-1",
        "unit60-mtu23-2",
        "unit60-mtu23-3",
    ];
    let mut n = 0;
    while let Some(f) = framer.poll_transmit() {
        let value = own(Fragment::decode(&f).unwrap());
        v.push(Vector::new(names[n], format!("{value:?}"), value, f, |b| {
            Fragment::decode(b).ok().map(own)
        }));
        n += 1;
    }
    assert_eq!(n, 4);
    check_vectors(
        "ble_fragment",
        "one GATT value of the framing (ecomesh-transport-ble frag.rs, Fragment::encode)",
        &v,
    );
}

#[test]
fn ble_records() {
    let rec = |name: &'static str, r: Vec<u8>| {
        let value = r.clone();
        Vector::new(name, format!("{r:?}"), value, r, |b| Some(b.to_vec()))
    };
    let v = vec![
        rec("hello", hello_record(65536, 0).to_vec()),
        rec(
            "hello-wait",
            hello_record(65536, record::HELLO_WAIT).to_vec(),
        ),
        rec("ready", vec![record::READY]),
        rec("ping", vec![record::PING]),
        rec("pong", vec![record::PONG]),
        rec("bye", vec![record::BYE]),
    ];
    check_vectors(
        "ble_record",
        "the plaintext of one Noise transport message of a link (ecomesh-transport-ble link.rs); the unit on the air is it encrypted plus a 16-byte tag",
        &v,
    );
}

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
