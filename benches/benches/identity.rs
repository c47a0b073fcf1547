//! Identity costs beside their raw primitives, measured in the same run:
//! - sign / verify / batch-verify (64) `NetworkMessage`s vs raw ed25519-dalek on the same
//!   signed bytes;
//! - Noise transport encrypt+decrypt (ordered session, `Noise_XX_25519_ChaChaPoly_BLAKE2s`)
//!   vs raw ChaCha20-Poly1305 encrypt+decrypt in place on the same bytes, 1 KiB and 64000 B
//!   (the largest round size under the 65519-byte Noise plaintext limit).
//!
//! `cargo bench -p ecomesh-benches --bench identity -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ecomesh_identity::message::{signing_bytes, verify_batch, verify_message};
use ecomesh_identity::noise::{Handshake, Session, SessionConfig};
use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_types::{MessageId, NetworkMessage, Signature};
use ed25519_dalek::{Signer, SigningKey};

const BATCH: usize = 64;

fn message(id: &Identity, n: u8) -> NetworkMessage {
    NetworkMessage {
        id: MessageId::new_v4([n; 16]),
        message_type: "sync-event".into(),
        payload: vec![n; 256],
        sender: id.peer_id(),
        recipient: None,
        timestamp_ms: 1_750_000_000_000 + u64::from(n),
        ttl_secs: 3600,
        hop_count: 0,
        max_hops: 10,
        signature: Signature::UNSIGNED,
    }
}

fn bench_signatures(c: &mut Criterion) {
    let seeds: Vec<[u8; 32]> = (0..BATCH as u8).map(|i| [i.wrapping_add(1); 32]).collect();
    let ids: Vec<Identity> = seeds.iter().map(Identity::from_secret_bytes).collect();
    let raw_keys: Vec<SigningKey> = seeds.iter().map(SigningKey::from_bytes).collect();
    let msgs: Vec<NetworkMessage> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut m = message(id, i as u8);
            id.sign_message(&mut m).unwrap();
            m
        })
        .collect();
    let keys: Vec<PublicKey> = ids.iter().map(|i| *i.public_key()).collect();
    let bytes: Vec<Vec<u8>> = msgs.iter().map(|m| signing_bytes(m).unwrap()).collect();
    let raw_sigs: Vec<ed25519_dalek::Signature> = msgs
        .iter()
        .map(|m| ed25519_dalek::Signature::from_bytes(&m.signature.0))
        .collect();
    let raw_vks: Vec<ed25519_dalek::VerifyingKey> =
        raw_keys.iter().map(SigningKey::verifying_key).collect();

    let mut g = c.benchmark_group("ed25519");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_message", |b| {
        let mut m = msgs[0].clone();
        b.iter(|| ids[0].sign_message(black_box(&mut m)).unwrap())
    });
    g.bench_function("raw_sign", |b| {
        b.iter(|| raw_keys[0].sign(black_box(&bytes[0])))
    });
    g.bench_function("verify_message", |b| {
        b.iter(|| verify_message(black_box(&msgs[0]), &keys[0]).unwrap())
    });
    g.bench_function("raw_verify_strict", |b| {
        b.iter(|| {
            raw_vks[0]
                .verify_strict(black_box(&bytes[0]), &raw_sigs[0])
                .unwrap()
        })
    });
    g.throughput(Throughput::Elements(BATCH as u64));
    let items: Vec<(&NetworkMessage, &PublicKey)> = msgs.iter().zip(&keys).collect();
    g.bench_function("verify_batch_64", |b| {
        b.iter(|| verify_batch(black_box(&items)).unwrap())
    });
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    g.bench_function("raw_verify_batch_64", |b| {
        b.iter(|| ed25519_dalek::verify_batch(black_box(&refs), &raw_sigs, &raw_vks).unwrap())
    });
    g.finish();
}

fn session_pair() -> (Session, Session) {
    let open = Arc::new(AccessPolicy::Open);
    let mut i = Handshake::xx_initiator(
        Identity::from_secret_bytes(&[1; 32]),
        open.clone(),
        SessionConfig::default(),
    )
    .unwrap();
    let mut r = Handshake::xx_responder(
        Identity::from_secret_bytes(&[2; 32]),
        open,
        SessionConfig::default(),
    )
    .unwrap();
    while !(i.is_finished() && r.is_finished()) {
        let (from, to) = if i.wants_write() {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        let m = from.write_message().unwrap();
        to.read_message(&m).unwrap();
    }
    (i.into_session().unwrap(), r.into_session().unwrap())
}

fn bench_transport(c: &mut Criterion) {
    for (label, size) in [("1KiB", 1024_usize), ("64000B", 64_000)] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let mut g = c.benchmark_group(format!("encrypt_decrypt_{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function("noise_session", |b| {
            let (mut a, mut z) = session_pair();
            let mut wire = Vec::with_capacity(size + 16);
            let mut plain = Vec::with_capacity(size);
            b.iter(|| {
                wire.clear();
                plain.clear();
                a.encrypt_into(black_box(&data), &mut wire).unwrap();
                z.decrypt_into(&wire, &mut plain).unwrap();
                black_box(plain.len())
            })
        });
        g.bench_function("raw_chacha20poly1305", |b| {
            let cipher = ChaCha20Poly1305::new(&[9_u8; 32].into());
            let mut counter = 0_u64;
            let mut buf = Vec::with_capacity(size + 16);
            b.iter(|| {
                counter += 1;
                let mut n = [0_u8; 12];
                n[4..].copy_from_slice(&counter.to_le_bytes());
                let nonce = Nonce::from(n);
                buf.clear();
                buf.extend_from_slice(black_box(&data));
                cipher.encrypt_in_place(&nonce, &[], &mut buf).unwrap();
                cipher.decrypt_in_place(&nonce, &[], &mut buf).unwrap();
                black_box(buf.len())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench_signatures, bench_transport);
criterion_main!(benches);
