//! Messages per second through the `MultiTransportManager`, beside the raw cost
//! of what every message needs in the same run.
//!
//! - `manager_send_deliver_ack`: node A signs and sends a 256-byte message to B
//!   over an in-memory transport; B verifies it, dedups, delivers it to a
//!   subscriber and sends a signed ACK back; A verifies the ACK and clears the
//!   pending entry. One iteration is one message.
//! - `raw_sign_verify_x2`: the baseline, two signs and two verifies of the
//!   same messages with `ecomesh-identity` alone (the cryptographic floor of
//!   one message plus its ACK).
//!
//! `cargo bench -p ecomesh-benches --bench mesh -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ecomesh_identity::message::{KeyDirectory, verify_message};
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::{MeshConfig, MeshEvent, MultiTransportManager, SendOutcome};
use ecomesh_types::{
    BoxFuture, Error, Listener, Listeners, NetworkMessage, PeerId, PeerInfo, Priority,
    Subscription, TransportAdapter, TransportCapabilities, TransportEvent, TransportType,
};

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// An in-memory wired link end: `send` hands the message straight to the other end's listeners.
struct Link {
    owner: PeerId,
    other: Mutex<Option<(PeerId, Weak<Link>)>>,
    listeners: Listeners<TransportEvent>,
}

impl TransportAdapter for Link {
    fn transport_type(&self) -> TransportType {
        TransportType::Wired
    }
    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities::seed_defaults(TransportType::Wired)
    }
    fn start(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn is_active(&self) -> bool {
        true
    }
    fn peers(&self) -> Vec<PeerInfo> {
        Vec::new()
    }
    fn connect_to_peer(&self, _: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn disconnect_from_peer(&self, _: PeerId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn send(&self, peer: PeerId, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let other = self.other.lock().unwrap().clone();
            match other {
                Some((p, w)) if p == peer => {
                    let remote = w.upgrade().ok_or(Error::Closed)?;
                    remote.listeners.emit(&TransportEvent::Message {
                        from: self.owner,
                        message,
                    });
                    Ok(())
                }
                _ => Err(Error::Unreachable(peer)),
            }
        })
    }
    fn broadcast(&self, _: NetworkMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription {
        self.listeners.subscribe(listener)
    }
}

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
    let la = Arc::new(Link {
        owner: pa,
        other: Mutex::new(None),
        listeners: Listeners::new(),
    });
    let lb = Arc::new(Link {
        owner: pb,
        other: Mutex::new(None),
        listeners: Listeners::new(),
    });
    *la.other.lock().unwrap() = Some((pb, Arc::downgrade(&lb)));
    *lb.other.lock().unwrap() = Some((pa, Arc::downgrade(&la)));
    a.add_transport(la.clone());
    b.add_transport(lb.clone());
    la.listeners
        .emit(&TransportEvent::PeerDiscovered(PeerInfo::new(
            pb,
            TransportType::Wired,
            0,
        )));
    lb.listeners
        .emit(&TransportEvent::PeerDiscovered(PeerInfo::new(
            pa,
            TransportType::Wired,
            0,
        )));
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
