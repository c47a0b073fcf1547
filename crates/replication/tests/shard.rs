//! The shard protocol end to end in memory: pushes to placed peers, a server
//! per peer, and the fetcher against lost shards, lying peers, garbage frames
//! and silent peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_replication::ReplicationError;
use ecomesh_replication::blob::{BlobConfig, EncodedBlob, Encoding, encode_blob, place_shards};
use ecomesh_replication::shard::{
    DirStore, FetchConfig, FetchPoll, Fetcher, MemoryStore, Outgoing, ShardLimits, ShardRequest,
    ShardResponse, ShardServer, ShardStore,
};
use ecomesh_types::PeerId;
use proptest::prelude::*;

fn peer(i: u8) -> PeerId {
    PeerId::from_digest([i; 32])
}

fn rs_only() -> BlobConfig {
    BlobConfig {
        none_max: 0,
        chunked_max: 0,
        chunk_size: 1,
    }
}

fn chunked(chunk: u64) -> BlobConfig {
    BlobConfig {
        none_max: 0,
        chunked_max: u64::MAX,
        chunk_size: chunk,
    }
}

/// How a simulated peer answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Serves what its store holds.
    Honest,
    /// Answers every Get with other bytes.
    Liar,
    /// Answers with a frame that does not decode.
    Garbage,
    /// Never answers (the driver reports a timeout).
    Silent,
    /// Answers with an Error response.
    Failing,
}

struct Net {
    servers: BTreeMap<PeerId, (ShardServer<MemoryStore>, Behaviour)>,
    /// Every request sent, in order.
    sent: Vec<Outgoing>,
    /// Faults the fetcher reported, by peer.
    faults: Vec<(PeerId, ReplicationError)>,
}

impl Net {
    fn new(peers: &[(PeerId, Behaviour)]) -> Self {
        Net {
            servers: peers
                .iter()
                .map(|(p, b)| {
                    (
                        *p,
                        (
                            ShardServer::new(MemoryStore::new(), ShardLimits::default()),
                            *b,
                        ),
                    )
                })
                .collect(),
            sent: Vec::new(),
            faults: Vec::new(),
        }
    }

    /// `from` pushes piece bytes to `to` over encoded frames; returns the response.
    fn push(&mut self, from: PeerId, to: PeerId, req: &ShardRequest) -> ShardResponse {
        let server = &mut self.servers.get_mut(&to).unwrap().0;
        let served = server.handle_frame(from, &req.encode());
        ShardResponse::decode(&served.response.encode()).unwrap()
    }

    /// Stores every piece on the peers `placement` names.
    fn store(&mut self, enc: &EncodedBlob, placement: &[Vec<PeerId>]) {
        for (i, holders) in placement.iter().enumerate() {
            for h in holders {
                let req = ShardRequest::Push {
                    id: enc.manifest.pieces()[i],
                    data: enc.pieces[i].clone(),
                };
                assert_eq!(self.push(peer(0), *h, &req), ShardResponse::PushAck);
            }
        }
    }

    /// The response frame `to` gives, or `None` when it stays silent.
    fn answer(&mut self, out: &Outgoing) -> Option<Vec<u8>> {
        let (server, behaviour) = self.servers.get_mut(&out.peer)?;
        match behaviour {
            Behaviour::Honest => Some(
                server
                    .handle_frame(peer(0), &out.request.encode())
                    .response
                    .encode(),
            ),
            Behaviour::Liar => Some(ShardResponse::Data(b"not the shard".to_vec()).encode()),
            Behaviour::Garbage => Some(vec![0x9f, 0xff, 0x00, 0x42]),
            Behaviour::Silent => None,
            Behaviour::Failing => Some(ShardResponse::error("disk on fire").encode()),
        }
    }

    /// Drives `fetcher` to the end, answering requests in the order given by
    /// `order` (a seed for a simple permutation), and returns its result.
    fn run(&mut self, fetcher: &mut Fetcher, order: u64) -> Result<Vec<u8>, ReplicationError> {
        let mut pending: Vec<Outgoing> = Vec::new();
        let mut step = order;
        loop {
            match fetcher.poll() {
                FetchPoll::Send(reqs) => {
                    self.sent.extend(reqs.iter().cloned());
                    pending.extend(reqs);
                }
                FetchPoll::Wait => {}
                FetchPoll::Done(blob) => return Ok(blob),
                FetchPoll::Failed(e) => return Err(e),
                FetchPoll::Fetched => panic!("keep_pieces is on: the blob comes with Done"),
                FetchPoll::Finished => panic!("polled after the end"),
            }
            assert!(!pending.is_empty(), "fetcher waits with nothing out");
            step = step
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let out = pending.swap_remove((step >> 33) as usize % pending.len());
            match self.answer(&out) {
                Some(frame) => {
                    if let Err(e) = fetcher.on_response(out.id, &frame) {
                        self.faults.push((out.peer, e));
                    }
                }
                None => fetcher.on_failure(out.id),
            }
        }
    }
}

#[test]
fn rs_blob_fetches_only_the_data_shards_when_all_are_there() {
    let data: Vec<u8> = (0..5000_u32).map(|i| (i % 253) as u8).collect();
    let enc = encode_blob(&data, &rs_only()).unwrap();
    let peers: Vec<PeerId> = (1..=7).map(peer).collect();
    let placement = place_shards(&peers).unwrap();
    let mut net = Net::new(
        &peers
            .iter()
            .map(|p| (*p, Behaviour::Honest))
            .collect::<Vec<_>>(),
    );
    let holders: Vec<Vec<PeerId>> = placement.iter().map(|p| vec![*p]).collect();
    net.store(&enc, &holders);
    let mut f = Fetcher::new(enc.manifest.clone(), holders, FetchConfig::default()).unwrap();
    assert_eq!(net.run(&mut f, 1).unwrap(), data);
    assert_eq!(net.sent.len(), 4);
    assert!(net.sent.iter().all(|o| o.piece < 4));
    assert_eq!(
        net.sent
            .iter()
            .map(|o| o.peer)
            .collect::<BTreeSet<_>>()
            .len(),
        4
    );
    assert!(net.faults.is_empty());
    assert!(matches!(f.poll(), FetchPoll::Finished));
}

#[test]
fn three_lost_shards_still_rebuild_four_do_not() {
    let data = vec![9_u8; 777];
    let enc = encode_blob(&data, &rs_only()).unwrap();
    let peers: Vec<PeerId> = (1..=7).map(peer).collect();
    let holders: Vec<Vec<PeerId>> = peers.iter().map(|p| vec![*p]).collect();
    for lost in [3_usize, 4] {
        let mut net = Net::new(
            &peers
                .iter()
                .map(|p| (*p, Behaviour::Honest))
                .collect::<Vec<_>>(),
        );
        net.store(&enc, &holders);
        // Shards 0..lost vanish from their holders.
        for (i, p) in peers.iter().enumerate().take(lost) {
            assert!(
                net.servers
                    .get_mut(p)
                    .unwrap()
                    .0
                    .store_mut()
                    .remove(&enc.manifest.pieces()[i])
            );
        }
        let mut f = Fetcher::new(
            enc.manifest.clone(),
            holders.clone(),
            FetchConfig::default(),
        )
        .unwrap();
        let result = net.run(&mut f, 7);
        if lost == 3 {
            assert_eq!(result.unwrap(), data);
        } else {
            assert!(
                matches!(result, Err(ReplicationError::Unrecoverable { .. })),
                "{result:?}"
            );
        }
        assert_eq!(net.sent.len(), 7.min(4 + lost));
        assert!(net.faults.is_empty(), "NotFound is not a fault");
    }
}

#[test]
fn lying_and_garbage_peers_are_named_and_skipped() {
    let data: Vec<u8> = (0..300_u16).map(|i| i as u8).collect();
    let enc = encode_blob(&data, &chunked(64)).unwrap();
    assert_eq!(enc.manifest.encoding(), Encoding::Chunked);
    let (liar, junk, silent, failing, good) = (peer(1), peer(2), peer(3), peer(4), peer(5));
    let mut net = Net::new(&[
        (liar, Behaviour::Liar),
        (junk, Behaviour::Garbage),
        (silent, Behaviour::Silent),
        (failing, Behaviour::Failing),
        (good, Behaviour::Honest),
    ]);
    let n = enc.pieces.len();
    net.store(&enc, &vec![vec![good]; n]);
    // Every chunk lists the bad peers first.
    let holders = vec![vec![liar, junk, silent, failing, good]; n];
    let mut f = Fetcher::new(enc.manifest.clone(), holders, FetchConfig::default()).unwrap();
    assert_eq!(net.run(&mut f, 3).unwrap(), data);
    let mismatches: BTreeSet<PeerId> = net
        .faults
        .iter()
        .filter_map(|(p, e)| match e {
            ReplicationError::HashMismatch {
                peer: Some(named), ..
            } => {
                assert_eq!(named, p);
                Some(*p)
            }
            _ => None,
        })
        .collect();
    assert_eq!(mismatches, BTreeSet::from([liar]));
    assert!(
        net.faults
            .iter()
            .any(|(p, e)| *p == junk && !matches!(e, ReplicationError::HashMismatch { .. }))
    );
    assert!(net.faults.iter().all(|(p, _)| *p == liar || *p == junk));
    // No peer was asked twice for the same chunk.
    let asked: BTreeSet<(usize, PeerId)> = net.sent.iter().map(|o| (o.piece, o.peer)).collect();
    assert_eq!(asked.len(), net.sent.len());
}

#[test]
fn requests_spread_over_holders_and_respect_the_in_flight_cap() {
    let data = vec![1_u8; 1000];
    let enc = encode_blob(&data, &chunked(100)).unwrap();
    let peers: Vec<PeerId> = (1..=3).map(peer).collect();
    let mut net = Net::new(
        &peers
            .iter()
            .map(|p| (*p, Behaviour::Honest))
            .collect::<Vec<_>>(),
    );
    let holders = vec![peers.clone(); 10];
    net.store(&enc, &holders);
    let config = FetchConfig {
        max_in_flight: 3,
        ..FetchConfig::default()
    };
    let mut f = Fetcher::new(enc.manifest.clone(), holders, config).unwrap();
    let FetchPoll::Send(first) = f.poll() else {
        panic!("expected requests");
    };
    assert_eq!(first.len(), 3);
    assert_eq!(
        first.iter().map(|o| o.peer).collect::<BTreeSet<_>>().len(),
        3
    );
    assert!(matches!(f.poll(), FetchPoll::Wait));
    for o in &first {
        let frame = net.answer(o).unwrap();
        f.on_response(o.id, &frame).unwrap();
    }
    assert_eq!(f.pieces_verified(), 3);
    assert_eq!(net.run(&mut f, 5).unwrap(), data);
}

#[test]
fn a_response_larger_than_the_piece_is_refused_from_its_head() {
    let data = vec![4_u8; 40];
    let enc = encode_blob(&data, &rs_only()).unwrap();
    assert_eq!(enc.manifest.piece_len(), 10);
    let (big, good) = (peer(1), peer(2));
    let mut f = Fetcher::new(
        enc.manifest.clone(),
        vec![vec![big, good]; 7],
        FetchConfig::default(),
    )
    .unwrap();
    let FetchPoll::Send(out) = f.poll() else {
        panic!("expected requests");
    };
    let first = &out[0];
    assert_eq!(first.peer, big);
    // Only the head of a 1 MiB byte string: refused before the bytes exist.
    let head = [0x82, 0x00, 0x5a, 0x00, 0x10, 0x00, 0x00];
    assert!(matches!(
        f.on_response(first.id, &head),
        Err(ReplicationError::TooLarge {
            size: 1_048_576,
            max: 10,
            ..
        })
    ));
    for o in &out[1..] {
        f.on_failure(o.id);
    }
    // Every shard is then asked of a holder not asked for it before.
    let FetchPoll::Send(retry) = f.poll() else {
        panic!("expected retries");
    };
    assert_eq!(retry.len(), 4);
    for o in &retry {
        assert!(!out.iter().any(|p| p.piece == o.piece && p.peer == o.peer));
    }
    assert!(retry.iter().any(|o| o.piece == 0 && o.peer == good));
    for o in retry {
        let frame = ShardResponse::Data(enc.pieces[o.piece].clone()).encode();
        f.on_response(o.id, &frame).unwrap();
    }
    assert!(matches!(f.poll(), FetchPoll::Done(b) if b == data));
}

#[test]
fn pushes_that_do_not_match_are_refused_and_not_stored() {
    let mut server = ShardServer::new(MemoryStore::new(), ShardLimits::default());
    let id = ecomesh_replication::blob::BlobId::of(b"real");
    let pusher = peer(9);
    let served = server.handle_frame(
        pusher,
        &ShardRequest::Push {
            id,
            data: b"fake".to_vec(),
        }
        .encode(),
    );
    assert!(matches!(served.response, ShardResponse::Error(_)));
    match served.refused {
        Some(ReplicationError::HashMismatch {
            peer: Some(p),
            expected,
        }) => {
            assert_eq!(p, pusher);
            assert_eq!(expected, id.to_text());
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert!(server.store().is_empty());
    let have = server.handle(pusher, ShardRequest::Have { id });
    assert_eq!(have.response, ShardResponse::Have(false));
    let get = server.handle(pusher, ShardRequest::Get { id });
    assert_eq!(get.response, ShardResponse::NotFound);

    // Garbage frames are answered with an error and reported.
    for frame in [&b""[..], &[0x80], &[0x82, 0x07, 0x40], &[0xff; 9]] {
        let served = server.handle_frame(pusher, frame);
        assert!(matches!(served.response, ShardResponse::Error(_)));
        assert!(served.refused.is_some());
    }
}

#[test]
fn a_dir_store_serves_verified_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path(), 1 << 20).unwrap();
    let mut server = ShardServer::new(store, ShardLimits::default());
    let data: Vec<u8> = (0..4096_u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let enc = encode_blob(&data, &rs_only()).unwrap();
    let distinct: BTreeSet<_> = enc.manifest.pieces().iter().collect();
    assert_eq!(distinct.len(), 7);
    for (id, piece) in enc.manifest.pieces().iter().zip(&enc.pieces) {
        let served = server.handle(
            peer(1),
            ShardRequest::Push {
                id: *id,
                data: piece.clone(),
            },
        );
        assert_eq!(served.response, ShardResponse::PushAck);
    }
    // Bit rot in one shard file: that shard is gone, the blob is not.
    let rotten = enc.manifest.pieces()[1];
    std::fs::write(server.store().path_of(&rotten), b"rot").unwrap();
    let holder = peer(1);
    let holders = vec![vec![holder]; 7];
    let mut f = Fetcher::new(enc.manifest.clone(), holders, FetchConfig::default()).unwrap();
    let mut asked = 0;
    let blob = loop {
        match f.poll() {
            FetchPoll::Send(reqs) => {
                for o in reqs {
                    asked += 1;
                    let served = server.handle_frame(peer(2), &o.request.encode());
                    f.on_response(o.id, &served.response.encode()).unwrap();
                }
            }
            FetchPoll::Done(blob) => break blob,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(blob, data);
    assert_eq!(asked, 5);
    assert!(!server.store().has(&rotten).unwrap());
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        3 => Just(Behaviour::Honest),
        1 => Just(Behaviour::Liar),
        1 => Just(Behaviour::Garbage),
        1 => Just(Behaviour::Silent),
        1 => Just(Behaviour::Failing),
    ]
}

proptest! {
    /// With any mix of honest, lying, garbage, silent and failing holders and
    /// any response order, the fetch returns exactly the blob when enough
    /// pieces (4 of 7 shards, or every chunk) have an honest holder, and fails
    /// otherwise; it never asks a holder twice for the same piece.
    #[test]
    fn prop_fetch_succeeds_iff_enough_pieces_have_an_honest_holder(
        len in 1_usize..700,
        rs in any::<bool>(),
        behaviours in prop::collection::vec(behaviour(), 1..8),
        holders_per_piece in 1_usize..4,
        offset in 0_usize..8,
        order in any::<u64>(),
        max_in_flight in 1_usize..6,
    ) {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
        let config = if rs { rs_only() } else { chunked(97) };
        let enc = encode_blob(&data, &config).unwrap();
        let peers: Vec<(PeerId, Behaviour)> = behaviours
            .iter()
            .enumerate()
            .map(|(i, b)| (peer(i as u8 + 1), *b))
            .collect();
        let mut net = Net::new(&peers);
        let n = enc.pieces.len();
        let holders: Vec<Vec<PeerId>> = (0..n)
            .map(|i| {
                (0..holders_per_piece.min(peers.len()))
                    .map(|k| peers[(i + offset + k) % peers.len()].0)
                    .collect()
            })
            .collect();
        net.store(&enc, &holders);
        let honest = holders
            .iter()
            .filter(|hs| hs.iter().any(|h| net.servers[h].1 == Behaviour::Honest))
            .count();
        let mut f = Fetcher::new(
            enc.manifest.clone(),
            holders,
            FetchConfig { max_in_flight, ..FetchConfig::default() },
        )
        .unwrap();
        let result = net.run(&mut f, order);
        if honest >= enc.manifest.pieces_needed() {
            prop_assert_eq!(result.unwrap(), data);
        } else {
            let is_unrecoverable = matches!(result, Err(ReplicationError::Unrecoverable { .. }));
            prop_assert!(is_unrecoverable);
        }
        let asked: BTreeSet<(usize, PeerId)> = net.sent.iter().map(|o| (o.piece, o.peer)).collect();
        prop_assert_eq!(asked.len(), net.sent.len());
        for (p, e) in &net.faults {
            let b = net.servers[p].1;
            prop_assert!(b == Behaviour::Liar || b == Behaviour::Garbage, "{:?} {:?}", b, e);
        }
    }

    /// Random bytes never panic either decoder, and whatever decodes
    /// re-encodes to exactly the input.
    #[test]
    fn prop_garbage_frames_never_panic(frame in prop::collection::vec(any::<u8>(), 0..80)) {
        let limits = ShardLimits { max_shard: 40, max_error: 16 };
        if let Ok(req) = ShardRequest::decode_with(&frame, &limits) {
            prop_assert_eq!(req.encode(), frame.clone());
        }
        if let Ok(resp) = ShardResponse::decode_with(&frame, &limits) {
            prop_assert_eq!(resp.encode(), frame.clone());
        }
    }

    /// Encoded requests and responses decode to themselves.
    #[test]
    fn prop_frames_round_trip(data in prop::collection::vec(any::<u8>(), 0..200), text in ".{0,40}", b in any::<bool>()) {
        let id = ecomesh_replication::blob::BlobId::of(&data);
        for req in [ShardRequest::Get { id }, ShardRequest::Have { id }, ShardRequest::Push { id, data: data.clone() }] {
            prop_assert_eq!(ShardRequest::decode(&req.encode()).unwrap(), req);
        }
        for resp in [ShardResponse::Data(data.clone()), ShardResponse::Have(b), ShardResponse::error(&text)] {
            prop_assert_eq!(ShardResponse::decode(&resp.encode()).unwrap(), resp);
        }
    }
}

#[test]
fn without_keep_pieces_every_piece_is_handed_over_once_and_none_is_held() {
    let data: Vec<u8> = (0..1000_u32).map(|i| (i * 7 % 251) as u8).collect();
    let enc = encode_blob(&data, &chunked(100)).unwrap();
    let holder = peer(1);
    let mut net = Net::new(&[(holder, Behaviour::Honest), (peer(2), Behaviour::Liar)]);
    // The liar is asked first for every piece: its bytes never reach the callback.
    let holders = vec![vec![peer(2), holder]; 10];
    net.store(&enc, &holders);
    let config = FetchConfig {
        max_in_flight: 4,
        keep_pieces: false,
        ..FetchConfig::default()
    };
    let mut f = Fetcher::new(enc.manifest.clone(), holders, config).unwrap();
    let mut handed: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut most_in_flight = 0;
    loop {
        match f.poll() {
            FetchPoll::Send(reqs) => {
                most_in_flight = most_in_flight.max(reqs.len());
                for o in reqs {
                    let frame = net.answer(&o).unwrap();
                    let index = o.piece;
                    let _ = f.on_response_with(o.id, &frame, |id, bytes| {
                        assert_eq!(id, enc.manifest.pieces()[index]);
                        assert!(
                            handed.insert(index, bytes.to_vec()).is_none(),
                            "piece {index} handed over twice"
                        );
                    });
                }
            }
            FetchPoll::Fetched => break,
            other => panic!("expected requests, then Fetched; got {other:?}"),
        }
        // Verified pieces are not held by the fetcher, only their indexes.
        assert!(f.pieces_verified() <= handed.len());
    }
    assert!(most_in_flight <= 4);
    assert_eq!(f.pieces_verified(), 0);
    assert!(matches!(f.poll(), FetchPoll::Finished));
    let rebuilt: Vec<u8> = handed.into_values().flatten().collect();
    assert_eq!(rebuilt, data);
}
