//! Test vectors pinning the LoRa transport's own formats (issue 16): the over-the-air
//! frames (`frame.rs`, every kind), the plaintext of a sealed unit (`frame::encode_inner`,
//! every body) and the message envelope (`envelope.rs`). Each case is built here from
//! fixed inputs, encoded, compared with `tests/vectors/<format>.txt`, and the committed
//! bytes are decoded back to the input. `UPDATE_VECTORS=1 cargo test -p
//! ecomesh-transport-lora --test vectors` rewrites the files after a deliberate change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ecomesh_transport_lora::envelope::{decode_envelope, encode_envelope, encode_link_envelope};
use ecomesh_transport_lora::frame::{
    BLOOM_LEN, Body, Frame, NetworkKey, NotificationHeader, PermissionGrant, Presence, RouteHeader,
    bloom_insert, decode_inner, encode_inner, types,
};
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};

/// The network key of every frame case (broadcast kinds carry its MAC).
fn key() -> NetworkKey {
    NetworkKey::from_secret(b"ecomesh test vectors")
}

fn bytes(start: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| start.wrapping_add(i as u8)).collect()
}

fn frame(name: &'static str, f: Frame) -> Vector {
    let encoded = f.encode(&key());
    Vector::new(name, format!("{f:?}"), f, encoded, |b| {
        Frame::decode(b, &key()).ok()
    })
}

#[test]
fn lora_frames() {
    let mut bloom = [0u8; BLOOM_LEN];
    for c in ["notes", "tasks"] {
        bloom_insert(&mut bloom, c);
    }
    let presence = Presence {
        ttl: 5,
        hops: 0,
        origin: [0x01, 0x02, 0x03, 0x04],
        seq: 0x0A0B_0C0D,
        types: types::ALL,
        bloom,
    };
    let handshake = |step, explicit, len| Frame::Handshake {
        step,
        explicit,
        from: [0xA1, 0xA2, 0xA3, 0xA4],
        to: [0xB1, 0xB2, 0xB3, 0xB4],
        noise: bytes(0x20, len),
    };
    let vectors = vec![
        frame("presence", Frame::Presence(presence.clone())),
        frame(
            "presence-relayed",
            Frame::Presence(Presence {
                ttl: 4,
                hops: 1,
                ..presence
            }),
        ),
        frame(
            "announce",
            Frame::Announce {
                key: [0x11; 32],
                epoch: 0xA1B2_C3D4,
                salt: 0x5A17_5A17,
            },
        ),
        frame(
            "key-request",
            Frame::KeyRequest {
                from: [0xA1, 0xA2, 0xA3, 0xA4],
                to: [0xB1, 0xB2, 0xB3, 0xB4],
                salt: 0x5A17_5A17,
            },
        ),
        frame("noise-ik-1", handshake(1, false, 24)),
        frame("noise-ik-1-explicit", handshake(1, true, 24)),
        frame("noise-ik-2", handshake(2, false, 16)),
        frame("noise-ik-3", handshake(3, false, 8)),
        frame(
            "sealed",
            Frame::Sealed {
                sid: 0x1234,
                counter: 0x0000_0107,
                ciphertext: bytes(0x40, 28),
            },
        ),
        frame(
            "sealed-part",
            Frame::SealedPart {
                sid: 0x1234,
                counter: 0x0108,
                index: 1,
                count: 6,
                piece: bytes(0x60, 12),
            },
        ),
    ];
    check_vectors(
        "lora_frame",
        "an ecomesh LoRa frame, the Meshtastic Data.payload (ecomesh-transport-lora frame.rs, Frame::encode under NetworkKey::from_secret(b\"ecomesh test vectors\"))",
        &vectors,
    );
}

fn inner(name: &'static str, body: Body) -> Vector {
    let h = RouteHeader {
        ttl: 5,
        hops: 2,
        origin: [0x01, 0x02, 0x03, 0x04],
        dest: [0x05, 0x06, 0x07, 0x08],
        seq: 0x0102,
    };
    let value = (h, body);
    let encoded = encode_inner(&value.0, &value.1);
    Vector::new(name, format!("{value:?}"), value, encoded, |b| {
        decode_inner(b).ok()
    })
}

#[test]
fn lora_sealed_plaintexts() {
    let vectors = vec![
        inner("message", Body::Message(bytes(0x30, 10))),
        inner("close-leaving", Body::Close { leaving: true }),
        inner("close-disconnect", Body::Close { leaving: false }),
        inner(
            "notification",
            Body::Notification(NotificationHeader {
                collection: 0xDEAD_BEEF,
                document: 0x0123_4567_89AB_CDEF,
                change: 2,
                at_secs: 1_790_000_000,
            }),
        ),
        inner(
            "grant",
            Body::Grant(PermissionGrant {
                grantee: PeerId::from_digest([0x22; 32]),
                resource: 0x0123_4567_89AB_CDEF,
                actions: 3,
                expires_secs: 1_800_000_000,
            }),
        ),
        inner("hello", Body::Hello),
    ];
    check_vectors(
        "lora_plaintext",
        "the plaintext of a sealed LoRa unit: routing header, body kind, body (ecomesh-transport-lora frame.rs, encode_inner)",
        &vectors,
    );
}

fn dest() -> PeerId {
    PeerId::from_digest([0xDD; 32])
}

fn envelope(name: &'static str, input: String, m: NetworkMessage) -> Vector {
    let encoded = encode_envelope(&m, &dest()).unwrap();
    Vector::new(name, input, m, encoded, |b| {
        decode_envelope(b, &dest(), None).ok().map(|e| e.message)
    })
}

/// The link-authenticated form, decoded from the session peer that sent it.
fn link_envelope(name: &'static str, input: String, m: NetworkMessage) -> Vector {
    let encoded = encode_link_envelope(&m, &dest()).unwrap();
    let sender = m.sender;
    let received = NetworkMessage {
        signature: Signature::UNSIGNED,
        ..m
    };
    Vector::new(name, input, received, encoded, move |b| {
        decode_envelope(b, &dest(), Some(&sender))
            .ok()
            .filter(|e| e.link_authenticated)
            .map(|e| e.message)
    })
}

#[test]
fn lora_envelopes() {
    let base = NetworkMessage {
        id: MessageId([0x5A; 16]),
        message_type: "sync-event".into(),
        payload: bytes(0x80, 16),
        sender: PeerId::from_digest([0x11; 32]),
        recipient: Some(dest()),
        timestamp_ms: 1_790_000_000_000,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature([0x33; 64]),
    };
    let vectors = vec![
        envelope(
            "unicast-to-destination",
            "signed sync-event, 16-byte payload 80..8f, recipient = the destination ([0xdd; 32]), defaults".into(),
            base.clone(),
        ),
        envelope(
            "broadcast-unsigned",
            "unsigned presence, empty payload, no recipient, defaults".into(),
            NetworkMessage {
                message_type: "presence".into(),
                payload: Vec::new(),
                recipient: None,
                signature: Signature::UNSIGNED,
                ..base.clone()
            },
        ),
        envelope(
            "every-field",
            "signed, recipient [0x22; 32] (not the destination), ttl 300, hop count 3, max hops 7".into(),
            NetworkMessage {
                recipient: Some(PeerId::from_digest([0x22; 32])),
                ttl_secs: 300,
                hop_count: 3,
                max_hops: 7,
                ..base.clone()
            },
        ),
        link_envelope(
            "link-authenticated",
            "the unicast-to-destination message straight from its sender [0x11; 32] over their session: no sender, no signature".into(),
            base,
        ),
    ];
    check_vectors(
        "lora_envelope",
        "a NetworkMessage in its LoRa envelope, decoded at the destination [0xdd; 32] (ecomesh-transport-lora envelope.rs, encode_envelope)",
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
