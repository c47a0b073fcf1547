//! Messages per second through the `MultiTransportManager`, beside the raw cost
//! of what every message needs in the same run.
//!
//! - `manager_send_deliver_ack`: node A signs and sends a 256-byte message to B
//!   over transport-tests' in-memory network; B verifies it, dedups, delivers it to a
//!   subscriber and sends a signed ACK back; A verifies the ACK and clears the
//!   pending entry. One iteration is one message.
//! - `raw_sign_verify_x2`: the baseline, two signs and two verifies of the
//!   same messages with `ecomesh-identity` alone (the cryptographic floor of
//!   one message plus its ACK).
//!
//! `cargo bench -p ecomesh-benches --bench mesh -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ecomesh_identity::message::{KeyDirectory, verify_message};
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::{MeshConfig, MeshEvent, MultiTransportManager, SendOutcome};
use ecomesh_transport_tests::MemNetwork;
use ecomesh_transport_tests::memnet::block_on;
use ecomesh_types::{NetworkMessage, PeerId, Priority, TransportAdapter, TransportType};

struct Keys(BTreeMap<PeerId, PublicKey>);

impl KeyDirectory for Keys {
    fn public_key(&self, peer: &PeerId) -> Option<PublicKey> {
        self.0.get(peer).copied()
    }
}

fn bench_manager(c: &mut Criterion) {
    let ida = Identity::from_secret_bytes(&[1; 32]);
    let idb = Identity::from_secret_bytes(&[2; 32]);
    let (pa, pb) = (ida.peer_id(), idb.peer_id());
    let keys: Arc<dyn KeyDirectory + Send + Sync> = Arc::new(Keys(BTreeMap::from([
        (pa, *ida.public_key()),
        (pb, *idb.public_key()),
    ])));
    let a = MultiTransportManager::new(ida.clone(), keys.clone(), MeshConfig::default());
    let b = MultiTransportManager::new(idb.clone(), keys, MeshConfig::default());
    // Sends are delivered before they return: one wire between A and B.
    let net = MemNetwork::immediate();
    let la = net.join(pa, TransportType::Wired);
    let lb = net.join(pb, TransportType::Wired);
    a.add_transport(la.clone());
    b.add_transport(lb.clone());
    block_on(la.start()).unwrap();
    block_on(lb.start()).unwrap();
    net.link(pa, pb, TransportType::Wired);
    block_on(a.process(0));
    block_on(b.process(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let d = delivered.clone();
    let _sub = b.subscribe(Arc::new(move |e: &MeshEvent| {
        if matches!(e, MeshEvent::Message { .. }) {
            d.fetch_add(1, Ordering::Relaxed);
        }
    }));

    let mut g = c.benchmark_group("mesh");
    g.throughput(Throughput::Elements(1));
    let mut n: u64 = 0;
    g.bench_function("manager_send_deliver_ack", |bench| {
        bench.iter(|| {
            n += 1;
            let mut random = [0_u8; 16];
            // Bytes 6 and 8 carry UUID version/variant bits; keep the counter clear of them.
            random[..6].copy_from_slice(&n.to_be_bytes()[2..]);
            let m = a
                .new_message("chat", vec![7; 256], Some(pb), n, random)
                .unwrap();
            let id = m.id;
            let out = block_on(a.send(pb, m, Priority::Normal, n)).unwrap();
            assert_eq!(out, SendOutcome::Sent(TransportType::Wired));
            block_on(b.process(n));
            block_on(a.process(n));
            assert!(!a.is_pending(&id));
        });
    });
    assert_eq!(delivered.load(Ordering::Relaxed), n);

    let mut k: u64 = 0;
    g.bench_function("raw_sign_verify_x2", |bench| {
        bench.iter(|| {
            k += 1;
            for (signer, key) in [(&ida, *ida.public_key()), (&idb, *idb.public_key())] {
                let mut m = NetworkMessage {
                    id: ecomesh_types::MessageId::new_v4([k as u8; 16]),
                    message_type: "chat".into(),
                    payload: vec![7; 256],
                    sender: signer.peer_id(),
                    recipient: Some(pb),
                    timestamp_ms: k,
                    ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
                    hop_count: 0,
                    max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
                    signature: ecomesh_types::Signature::UNSIGNED,
                };
                signer.sign_message(&mut m).unwrap();
                verify_message(black_box(&m), &key).unwrap();
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench_manager);
criterion_main!(benches);
