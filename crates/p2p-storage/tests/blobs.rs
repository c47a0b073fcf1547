//! Blobs over an in-memory mesh: rebuild after losing shard holders, every
//! encoding round-trips, tampered pieces are refused and charged, GC keeps
//! exactly what the seed's rule says, state survives a sled reopen, and a
//! property test over random sizes and configurations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/blobnet.rs"]
mod blobnet;

use std::collections::BTreeSet;

use blobnet::{BlobNet, Role};
use ecomesh_p2p_storage::StoreError;
use ecomesh_p2p_storage::blobs::{BlobServiceConfig, BlobStore, frame};
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_replication::ReplicationError;
use ecomesh_replication::blob::{BlobConfig, BlobId, Encoding, ManifestLimits, TOTAL_SHARDS};
use ecomesh_replication::policy::{KeepReason, Pin, PinKind, ReplicationConfig, Scope};
use ecomesh_replication::shard::ShardRequest;
use ecomesh_types::{PeerId, Priority};
use proptest::prelude::*;

fn small_blobs() -> BlobConfig {
    BlobConfig {
        none_max: 64,
        chunked_max: 256,
        chunk_size: 40,
    }
}

fn config() -> BlobServiceConfig {
    let mut replication = ReplicationConfig::default();
    replication.set_gc_ttl_ms(10_000).unwrap();
    replication.set_factor("photos", 2).unwrap();
    replication.set_factor("precious", 5).unwrap();
    replication.set_factor("single", 1).unwrap();
    BlobServiceConfig {
        blob: small_blobs(),
        replication,
        request_timeout_ms: 500,
        ..BlobServiceConfig::default()
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
        .collect()
}

#[test]
fn rs_blob_is_rebuilt_after_three_shard_holders_and_the_origin_stop() {
    // Small parts, so every piece also travels as a multi-part frame.
    let mut net = BlobNet::honest(
        8,
        BlobServiceConfig {
            max_part_bytes: 64,
            ..config()
        },
    );
    let data = bytes(1000, 1);
    let now = net.now();
    let manifest = net.service(0).put_blob("videos", &data, now).unwrap();
    assert_eq!(manifest.encoding(), Encoding::Rs4x7);
    net.settle();
    // Seven distinct holders, one shard each, every push confirmed.
    let mut shard_holder = Vec::new();
    for piece in manifest.pieces() {
        let others: Vec<usize> = net.holders(piece).into_iter().filter(|i| *i != 0).collect();
        assert_eq!(others.len(), 1, "{piece}");
        shard_holder.push(others[0]);
        assert_eq!(
            net.store(0).confirmed(piece).unwrap(),
            BTreeSet::from([net.peer(others[0])])
        );
    }
    assert_eq!(
        shard_holder.iter().collect::<BTreeSet<_>>().len(),
        TOTAL_SHARDS
    );
    assert_eq!(net.service(0).stats().pushes_acked, 7);
    // B holds shard 6 (parity); stop the origin and the holders of the
    // three data shards 0..3, so B must decode from parity.
    let b = shard_holder[6];
    net.stop(0);
    for holder in &shard_holder[..3] {
        net.stop(*holder);
    }
    let now = net.now();
    let get = net.service(b).get_blob(manifest.id(), now);
    assert_eq!(net.wait(&get).unwrap(), data);
    assert!(net.service(b).stats().pieces_fetched >= 3);
    // Cached: B now answers from its own pieces.
    let store = net.store(b);
    assert_eq!(store.read_local(&manifest.id(), now).unwrap(), Some(data));
}

#[test]
fn small_and_chunked_blobs_round_trip_through_partners() {
    let mut net = BlobNet::honest(4, config());
    let small = bytes(50, 2);
    let chunked = bytes(200, 3);
    let now = net.now();
    let ms = net.service(0).put_blob("photos", &small, now).unwrap();
    let mc = net.service(0).put_blob("photos", &chunked, now).unwrap();
    assert_eq!(ms.encoding(), Encoding::None);
    assert_eq!(mc.encoding(), Encoding::Chunked);
    assert_eq!(mc.pieces().len(), 5);
    net.settle();
    // "photos" has factor 2: two of the three peers hold every piece.
    let partners: BTreeSet<usize> = net.holders(&ms.pieces()[0]).into_iter().collect();
    assert_eq!(partners.len(), 3, "origin plus 2 partners");
    for p in mc.pieces() {
        assert_eq!(net.holders(p).len(), 3);
        assert_eq!(net.store(0).confirmed(p).unwrap().len(), 2);
    }
    let outsider = (1..4).find(|i| !partners.contains(i)).unwrap();
    net.stop(0);
    let now = net.now();
    for (m, data) in [(&ms, &small), (&mc, &chunked)] {
        let get = net.service(outsider).get_blob(m.id(), now);
        assert_eq!(&net.wait(&get).unwrap(), data);
    }
    // An unknown blob fails with a typed error, not a hang.
    let get = net
        .service(outsider)
        .get_blob(BlobId::of(b"nobody has this"), now);
    assert!(matches!(
        net.wait(&get),
        Err(StoreError::Blob(ReplicationError::Unrecoverable { .. }))
    ));
}

/// Node 0 puts a blob, pushed to node 1 (a liar or honest), then stops;
/// node 2 fetches it from node 1 alone, then node 1 pushes node 2 one piece
/// (with bytes that do not match its id when `tamper`). Returns the get's
/// result, node 1's reputation at node 2 after the get and after the push,
/// whether node 2 stored the pushed piece, and node 2's rejection count.
fn serve_through(tamper: bool) -> (Result<Vec<u8>, StoreError>, f64, f64, bool, u64) {
    let role = if tamper { Role::Liar } else { Role::Honest };
    let mut net = BlobNet::new(&[Role::Honest, role, Role::Honest], config());
    net.stop(2);
    let data = bytes(60, 4);
    let now = net.now();
    let m = net.service(0).put_blob("photos", &data, now).unwrap();
    net.settle();
    assert_eq!(net.holders(&m.pieces()[0]), vec![0, 1]);
    net.stop(0);
    net.start(2);
    let now = net.now();
    let get = net.service(2).get_blob(m.id(), now);
    let result = net.wait(&get);
    net.settle();
    let server = net.peer(1);
    let after_get = net.live(2).mesh.reputation(&server);
    let claimed = BlobId::of(b"claimed");
    let push = ShardRequest::Push {
        id: claimed,
        data: if tamper {
            b"something else".to_vec()
        } else {
            b"claimed".to_vec()
        },
    };
    let env = frame::encode(frame::FrameKind::ShardRequest, 77, 0, 1, &push.encode());
    let victim = net.peer(2);
    net.send_raw(1, victim, env, Priority::Bulk);
    net.settle();
    let after_push = net.live(2).mesh.reputation(&server);
    let stored = net.store(2).has_piece(&claimed).unwrap();
    let rejected = net.service(2).stats().rejected;
    (result, after_get, after_push, stored, rejected)
}

#[test]
fn tampered_pieces_are_refused_and_cost_reputation() {
    let (honest, h_get, h_push, h_stored, h_rejected) = serve_through(false);
    let (lied, l_get, l_push, l_stored, l_rejected) = serve_through(true);
    assert_eq!(honest.unwrap(), bytes(60, 4));
    assert!(h_stored);
    assert_eq!(h_rejected, 0);
    // The same exchanges, but the tampered piece is refused (the get fails:
    // no other holder), nothing is stored, and the sender is charged.
    assert!(matches!(
        lied,
        Err(StoreError::Blob(ReplicationError::Unrecoverable { .. }))
    ));
    assert!(!l_stored);
    assert_eq!(l_rejected, 2);
    assert!(l_get < h_get, "{l_get} < {h_get}");
    assert!(l_push < h_push, "{l_push} < {h_push}");
    assert!(h_push - l_push > h_get - l_get, "the push is charged too");
}

#[test]
fn a_tampered_holder_is_skipped_for_an_honest_one() {
    // 0: honest origin, 1: liar, 2: victim; both 0 and 1 hold the piece.
    let mut net = BlobNet::new(&[Role::Honest, Role::Liar, Role::Honest], config());
    net.stop(2);
    let data = bytes(60, 5);
    let now = net.now();
    let m = net.service(0).put_blob("single", &data, now).unwrap();
    net.settle();
    net.start(2);
    // Make the liar the first choice: it looks best before it is caught.
    let liar = net.peer(1);
    for _ in 0..20 {
        net.live(2)
            .mesh
            .observe(liar, ecomesh_mesh::reputation::Observation::Storage(true));
    }
    let now = net.now();
    let get = net.service(2).get_blob(m.id(), now);
    assert_eq!(net.wait(&get).unwrap(), data);
    assert!(net.service(2).stats().rejected >= 1);
    // Garbage that is not an envelope at all is charged as well.
    let rejected = net.service(2).stats().rejected;
    let victim = net.peer(2);
    net.send_raw(1, victim, b"garbage".to_vec(), Priority::Normal);
    net.settle();
    assert_eq!(net.service(2).stats().rejected, rejected + 1);
}

#[test]
fn an_unanswered_request_times_out_and_another_holder_is_asked() {
    // 0: honest origin, 1: holds the piece but never answers a Get, 2: fetcher.
    let mut net = BlobNet::new(&[Role::Honest, Role::Silent, Role::Honest], config());
    net.stop(2);
    let data = bytes(60, 6);
    let now = net.now();
    let m = net.service(0).put_blob("single", &data, now).unwrap();
    net.settle();
    assert_eq!(net.holders(&m.pieces()[0]), vec![0, 1]);
    net.start(2);
    let silent = net.peer(1);
    for _ in 0..20 {
        net.live(2)
            .mesh
            .observe(silent, ecomesh_mesh::reputation::Observation::Storage(true));
    }
    let now = net.now();
    let get = net.service(2).get_blob(m.id(), now);
    assert_eq!(net.wait(&get).unwrap(), data);
    let stats = net.service(2).stats();
    assert_eq!(stats.timeouts, 1, "{stats:?}");
    assert_eq!(stats.rejected, 0);
    assert_eq!(net.service(2).pending_requests(), 0);
}

#[test]
fn replicate_heals_a_blob_put_while_partners_were_away() {
    let mut net = BlobNet::honest(4, config());
    for i in 1..4 {
        net.stop(i);
    }
    let now = net.now();
    let data = bytes(200, 7);
    let m = net.service(0).put_blob("photos", &data, now).unwrap();
    net.settle();
    assert!(m.pieces().iter().all(|p| net.holders(p) == vec![0]));
    assert_eq!(net.store(0).originated().unwrap(), vec![m.id()]);
    // As partners connect, the blob is pushed to them ("photos" has factor
    // 2: every chunk to 2 partners).
    for i in 1..4 {
        net.start(i);
    }
    assert_eq!(
        net.service(0).stats().pieces_pushed,
        2 * m.pieces().len() as u64
    );
    for p in m.pieces() {
        assert_eq!(net.store(0).confirmed(p).unwrap().len(), 2);
        assert_eq!(net.holders(p).len(), 3);
    }
    // Nothing is lacking any more.
    assert_eq!(net.service(0).replicate(&m.id()).unwrap(), 0);
    // One partner loses a chunk and says so: only that one is pushed again.
    let p0 = m.pieces()[0];
    let partner = net.holders(&p0)[1];
    net.store(partner).remove_piece(&p0).unwrap();
    net.service(0).probe_replicas(&m.id()).unwrap();
    net.settle();
    assert_eq!(net.store(0).confirmed(&p0).unwrap().len(), 1);
    assert_eq!(net.service(0).replicate(&m.id()).unwrap(), 1);
    net.settle();
    assert_eq!(net.store(0).confirmed(&p0).unwrap().len(), 2);
}

#[test]
fn a_peer_cannot_relabel_a_known_blob() {
    let mut net = BlobNet::honest(2, config());
    let now = net.now();
    let m = net
        .service(0)
        .put_blob("precious", &bytes(40, 8), now)
        .unwrap();
    net.settle();
    // Node 1 announces the same manifest under a collection with a lower factor.
    let payload = frame::encode_manifest("notifications", &m.to_bytes().unwrap());
    let env = frame::encode(frame::FrameKind::Announce, 5, 0, 1, &payload);
    let origin = net.peer(0);
    net.send_raw(1, origin, env, Priority::Normal);
    net.settle();
    assert_eq!(
        net.store(0).manifest(&m.id()).unwrap().unwrap().collection,
        "precious"
    );
    // Node 1 learned the blob as "precious" from the announce it got.
    assert_eq!(
        net.store(1).manifest(&m.id()).unwrap().unwrap().collection,
        "precious"
    );
}

#[test]
fn a_peer_outside_the_reach_never_gets_the_blob() {
    use ecomesh_replication::reach::{Reach, Trust};
    let family = ecomesh_identity::Identity::from_secret_bytes(&[2; 32]).peer_id();
    let mut cfg = config();
    cfg.reach.set_collection("family", Reach::Local);
    cfg.trust = std::sync::Arc::new(move |p: &PeerId| {
        if *p == family {
            Trust::Family
        } else {
            Trust::Stranger
        }
    });
    // 0: origin, 1: family, 2: stranger.
    let mut net = BlobNet::honest(3, cfg);
    assert_eq!(net.peer(1), family);
    let now = net.now();
    let data = bytes(100, 10);
    let m = net.service(0).put_blob("family", &data, now).unwrap();
    net.settle();
    for p in m.pieces() {
        assert_eq!(net.holders(p), vec![0, 1]);
    }
    let get = net.service(2).get_blob(m.id(), now);
    assert!(matches!(
        net.wait(&get),
        Err(StoreError::Blob(ReplicationError::Unrecoverable { .. }))
    ));
    assert!(net.store(2).manifest(&m.id()).unwrap().is_none());
    // Even knowing the manifest, its pieces are answered NotFound.
    let now = net.now();
    net.store(2).put_manifest("family", &m, now).unwrap();
    let get = net.service(2).get_blob(m.id(), now);
    assert!(matches!(
        net.wait(&get),
        Err(StoreError::Blob(ReplicationError::Unrecoverable { .. }))
    ));
    assert!(net.store(2).pieces().unwrap().is_empty());
    assert_eq!(net.service(2).stats().rejected, 0);
    // The family member gets it.
    net.store(1).remove_piece(&m.pieces()[0]).unwrap();
    let get = net.service(1).get_blob(m.id(), net.now());
    assert_eq!(net.wait(&get).unwrap(), data);
}

#[test]
fn gc_deletes_only_eligible_pieces_and_the_blob_stays_retrievable() {
    let mut net = BlobNet::honest(4, config());
    let now = net.now();
    let put = |net: &BlobNet, collection: &str, seed: u8| {
        net.service(0)
            .put_blob(collection, &bytes(30, seed), now)
            .unwrap()
    };
    let free = put(&net, "photos", 10);
    let pinned = put(&net, "photos", 11);
    let referenced = put(&net, "photos", 12);
    let called = put(&net, "photos", 13);
    let scarce = put(&net, "precious", 14);
    net.settle();
    let store = net.store(0).clone();
    store
        .add_pin(Pin::App {
            scope: Scope::document("photos", &pinned.id().to_text()),
            app: "gallery".into(),
        })
        .unwrap();
    store
        .add_reference(&referenced.id(), "doc:notes/1")
        .unwrap();
    let refd = |id: &BlobId| *id == called.id();

    // Too young: nothing goes.
    let report = net.service(0).gc(net.now(), &refd).unwrap();
    assert!(report.deleted.is_empty());
    assert!(matches!(
        report.kept_reasons(&free.pieces()[0]).unwrap(),
        [KeepReason::TooYoung { .. }]
    ));

    net.advance(20_000);
    let report = net.service(0).gc(net.now(), &refd).unwrap();
    let deleted: Vec<BlobId> = report.deleted.iter().map(|d| d.piece).collect();
    assert_eq!(deleted, vec![free.pieces()[0]]);
    assert_eq!(report.deleted[0].blobs, vec![free.id()]);
    assert_eq!(report.deleted[0].bytes, 30);
    assert_eq!(
        report.kept_reasons(&pinned.pieces()[0]),
        Some(&[KeepReason::Pinned(PinKind::App)][..])
    );
    assert_eq!(
        report.kept_reasons(&referenced.pieces()[0]),
        Some(&[KeepReason::Referenced][..])
    );
    assert_eq!(
        report.kept_reasons(&called.pieces()[0]),
        Some(&[KeepReason::Referenced][..])
    );
    // "precious" wants 5 replicas; only 3 other peers exist.
    assert_eq!(
        report.kept_reasons(&scarce.pieces()[0]),
        Some(
            &[KeepReason::TooFewReplicas {
                confirmed: 3,
                needed: 5
            }][..]
        )
    );
    assert!(!store.has_piece(&free.pieces()[0]).unwrap());
    for kept in [&pinned, &referenced, &called, &scarce] {
        assert!(store.has_piece(&kept.pieces()[0]).unwrap());
    }
    // A second pass finds nothing more to delete.
    assert!(
        net.service(0)
            .gc(net.now(), &refd)
            .unwrap()
            .deleted
            .is_empty()
    );

    // The collected blob comes back from its confirmed holders.
    let now = net.now();
    let get = net.service(0).get_blob(free.id(), now);
    assert_eq!(net.wait(&get).unwrap(), bytes(30, 10));
    assert!(store.has_piece(&free.pieces()[0]).unwrap());
    // ... and was just used, so it is too young to collect again.
    let report = net.service(0).gc(net.now(), &refd).unwrap();
    assert!(matches!(
        report.kept_reasons(&free.pieces()[0]).unwrap(),
        [KeepReason::TooYoung { .. }]
    ));
}

#[test]
fn probes_refresh_confirmations() {
    let mut net = BlobNet::honest(3, config());
    let now = net.now();
    let m = net
        .service(0)
        .put_blob("photos", &bytes(20, 5), now)
        .unwrap();
    net.settle();
    let piece = m.pieces()[0];
    assert_eq!(net.store(0).confirmed(&piece).unwrap().len(), 2);
    // Peer 1 drops its copy; a probe notices.
    net.store(1).remove_piece(&piece).unwrap();
    assert_eq!(net.service(0).probe_replicas(&m.id()).unwrap(), 2);
    net.settle();
    assert_eq!(
        net.store(0).confirmed(&piece).unwrap(),
        BTreeSet::from([net.peer(2)])
    );
}

#[test]
fn pieces_pins_and_confirmations_survive_a_sled_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let me = PeerId::from_digest([1; 32]);
    let other = PeerId::from_digest([2; 32]);
    let data = bytes(500, 6);
    let pin = Pin::User {
        scope: Scope::collection("videos"),
        devices: BTreeSet::from([me]),
    };
    let (manifest, held) = {
        let backend = SledBackend::open(dir.path(), None).unwrap();
        let store = BlobStore::open(backend, me, ManifestLimits::default()).unwrap();
        let enc = store.put_blob("videos", &data, &small_blobs(), 42).unwrap();
        assert_eq!(enc.manifest.encoding(), Encoding::Rs4x7);
        store.add_pin(pin.clone()).unwrap();
        store.confirm(&enc.manifest.pieces()[2], &other).unwrap();
        store.add_reference(&enc.manifest.id(), "doc:x").unwrap();
        let held = BlobId::of(b"held for a peer");
        store.put_piece(&held, b"held for a peer", 43).unwrap();
        (enc.manifest, held)
    };
    let backend = SledBackend::open(dir.path(), None).unwrap();
    let store = BlobStore::open(backend, me, ManifestLimits::default()).unwrap();
    assert_eq!(store.read_local(&manifest.id(), 50).unwrap(), Some(data));
    let stored = store.manifest(&manifest.id()).unwrap().unwrap();
    assert_eq!(
        (stored.collection.as_str(), &stored.manifest),
        ("videos", &manifest)
    );
    assert_eq!(store.pins().iter().collect::<Vec<_>>(), vec![&pin]);
    assert_eq!(
        store.confirmed(&manifest.pieces()[2]).unwrap(),
        BTreeSet::from([other])
    );
    assert!(store.is_referenced(&manifest.id()).unwrap());
    assert_eq!(
        store.piece(&held).unwrap(),
        Some(b"held for a peer".to_vec())
    );
    assert_eq!(store.piece_last_used(&held).unwrap(), Some(43));
    assert_eq!(store.blob_last_used(&manifest.id()).unwrap(), Some(50));
    // The user pin names this device: GC keeps the blob whatever its age.
    let mut config = ReplicationConfig::default();
    config.set_gc_ttl_ms(1).unwrap();
    let report = store.gc(&config, 1_000_000, &|_| false).unwrap();
    assert!(
        report
            .kept_reasons(&manifest.pieces()[0])
            .unwrap()
            .contains(&KeepReason::Pinned(PinKind::User))
    );
}

proptest! {
    #[test]
    fn prop_put_then_get_returns_the_bytes(
        len in 0_usize..1500,
        seed in any::<u8>(),
        none_max in 0_u64..300,
        chunk_extra in 0_u64..600,
        chunk_size in 16_u64..200,
        lose in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        part in 16_usize..4096,
    ) {
        let blob = BlobConfig { none_max, chunked_max: none_max + chunk_extra, chunk_size };
        let mut net = BlobNet::honest(8, BlobServiceConfig {
            blob,
            max_part_bytes: part,
            ..config()
        });
        let data = bytes(len, seed);
        let now = net.now();
        let m = net.service(0).put_blob("media", &data, now).unwrap();
        net.settle();
        // Node 7 fetches; the origin and up to 3 (rs-4-7) or 2 (whole
        // copies, factor 3) other nodes are lost.
        let max_lost = if m.encoding() == Encoding::Rs4x7 { 3 } else { 2 };
        net.stop(0);
        let mut lost = BTreeSet::new();
        for ix in lose.iter().take(max_lost) {
            let victim = 1 + ix.index(6);
            if lost.insert(victim) {
                net.stop(victim);
            }
        }
        let now = net.now();
        let get = net.service(7).get_blob(m.id(), now);
        prop_assert_eq!(net.wait(&get).unwrap(), data);
    }
}

#[test]
fn blobs_share_the_document_stores_sled_backend() {
    use ecomesh_identity::Identity;
    use ecomesh_p2p_storage::{SledStore, StoreConfig};
    use ecomesh_types::{Map, SetOptions, Value};

    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::from_secret_bytes(&[9; 32]);
    let data = bytes(300, 9);
    let id = {
        let docs = SledStore::open(dir.path(), identity.clone(), StoreConfig::default()).unwrap();
        let blobs = BlobStore::open(
            docs.backend().clone(),
            identity.peer_id(),
            ManifestLimits::default(),
        )
        .unwrap();
        let m = blobs
            .put_blob("photos", &data, &small_blobs(), 1)
            .unwrap()
            .manifest;
        let mut fields = Map::new();
        fields.insert("photo".into(), Value::Link(m.id().to_content_id()));
        docs.set("albums", "a1", fields, SetOptions::REPLACE)
            .unwrap();
        docs.verify_integrity().unwrap();
        m.id()
    };
    // Both reopen from the one database, each seeing only its own keys.
    let docs = SledStore::open(dir.path(), identity.clone(), StoreConfig::default()).unwrap();
    let report = docs.verify_integrity().unwrap();
    assert_eq!(report.documents, 1);
    let blobs = BlobStore::open(
        docs.backend().clone(),
        identity.peer_id(),
        ManifestLimits::default(),
    )
    .unwrap();
    assert_eq!(blobs.read_local(&id, 2).unwrap(), Some(data));
    assert_eq!(blobs.blobs().unwrap(), vec![id]);
}
