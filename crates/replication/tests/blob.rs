//! Blobs: encoding by size, rebuild from any 4 of 7 Reed-Solomon shards,
//! manifest round trips and strict decoding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use ecomesh_replication::ReplicationError;
use ecomesh_replication::blob::{
    BlobConfig, BlobId, Encoding, Manifest, TOTAL_SHARDS, encode_blob, rebuild, rs_shard_len,
};
use proptest::prelude::*;

/// Everything above 0 bytes is `rs-4-7`.
fn rs_only() -> BlobConfig {
    BlobConfig {
        none_max: 0,
        chunked_max: 0,
        chunk_size: 1,
    }
}

/// Every subset of {0..7} with exactly `k` members, as bit masks.
fn subsets(k: u32) -> impl Iterator<Item = u8> {
    (0_u8..128).filter(move |m| m.count_ones() == k)
}

fn pick(pieces: &[Vec<u8>], mask: u8) -> BTreeMap<usize, Vec<u8>> {
    (0..TOTAL_SHARDS)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| (i, pieces[i].clone()))
        .collect()
}

#[test]
fn rs_blob_has_seven_equal_even_shards_with_distinct_ids() {
    let data: Vec<u8> = (0..1001_u32).map(|i| (i * 31 % 251) as u8).collect();
    let enc = encode_blob(&data, &rs_only()).unwrap();
    let m = &enc.manifest;
    assert_eq!(m.encoding(), Encoding::Rs4x7);
    assert_eq!(m.len(), 1001);
    assert_eq!(m.piece_len(), rs_shard_len(1001));
    assert_eq!(m.piece_len(), 252);
    assert_eq!(enc.pieces.len(), 7);
    for (piece, id) in enc.pieces.iter().zip(m.pieces()) {
        assert_eq!(piece.len(), 252);
        assert_eq!(BlobId::of(piece), *id);
    }
    // Data shards are the blob, zero-padded.
    assert_eq!(&enc.pieces[0][..], &data[..252]);
    assert_eq!(&enc.pieces[3][..1001 - 3 * 252], &data[3 * 252..]);
    assert!(enc.pieces[3][1001 - 3 * 252..].iter().all(|b| *b == 0));
}

#[test]
fn every_four_subset_rebuilds_at_awkward_sizes() {
    assert_eq!(subsets(4).count(), 35);
    for len in [1_usize, 2, 3, 5, 63, 64, 65, 130, 255, 1001] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let enc = encode_blob(&data, &rs_only()).unwrap();
        for mask in subsets(4) {
            let got = rebuild(&enc.manifest, &pick(&enc.pieces, mask)).unwrap();
            assert_eq!(got, data, "len {len} mask {mask:07b}");
        }
    }
}

#[test]
fn three_shards_are_not_enough() {
    let data = vec![42_u8; 333];
    let enc = encode_blob(&data, &rs_only()).unwrap();
    for mask in subsets(3) {
        assert!(matches!(
            rebuild(&enc.manifest, &pick(&enc.pieces, mask)),
            Err(ReplicationError::Unrecoverable { .. })
        ));
    }
}

#[test]
fn a_corrupt_shard_is_named_not_used() {
    let data: Vec<u8> = (0..500_u32).map(|i| i as u8).collect();
    let enc = encode_blob(&data, &rs_only()).unwrap();
    let mut pieces = pick(&enc.pieces, 0b101_0101);
    pieces.get_mut(&2).unwrap()[0] ^= 1;
    match rebuild(&enc.manifest, &pieces) {
        Err(ReplicationError::HashMismatch { expected, peer }) => {
            assert_eq!(expected, enc.manifest.pieces()[2].to_text());
            assert_eq!(peer, None);
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
}

#[test]
fn default_thresholds_pick_none_for_small_blobs() {
    let data = vec![1_u8; 4096];
    let enc = encode_blob(&data, &BlobConfig::default()).unwrap();
    assert_eq!(enc.manifest.encoding(), Encoding::None);
    assert_eq!(enc.manifest.pieces(), &[BlobId::of(&data)]);
    assert_eq!(enc.pieces, vec![data.clone()]);
    let all: BTreeMap<_, _> = [(0, data.clone())].into();
    assert_eq!(rebuild(&enc.manifest, &all).unwrap(), data);
}

#[test]
fn manifest_decoder_refuses_garbage_and_non_canonical_forms() {
    let enc = encode_blob(&[3; 40], &rs_only()).unwrap();
    let bytes = enc.manifest.to_bytes().unwrap();
    // Trailing bytes, truncation, and an extra field.
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(Manifest::from_bytes(&trailing).is_err());
    for cut in 0..bytes.len() {
        assert!(Manifest::from_bytes(&bytes[..cut]).is_err());
    }
    let mut v = enc.manifest.to_value().unwrap();
    if let ecomesh_types::Value::Map(m) = &mut v {
        m.insert("x".to_owned(), ecomesh_types::Value::Null);
    }
    assert!(Manifest::from_bytes(&ecomesh_wire::to_dag_cbor(&v).unwrap()).is_err());
    // A shard length that does not follow from the blob length.
    let mut v = enc.manifest.to_value().unwrap();
    if let ecomesh_types::Value::Map(m) = &mut v {
        m.insert("piece_len".to_owned(), ecomesh_types::Value::Integer(12));
    }
    assert!(Manifest::from_bytes(&ecomesh_wire::to_dag_cbor(&v).unwrap()).is_err());
}

proptest! {
    /// Any 4 of the 7 shards rebuild the blob, and so does any larger set, for
    /// any length (including lengths not divisible by 4 or 64). Each case
    /// draws one of the 35 four-shard subsets (a Reed-Solomon decode has a
    /// fixed cost of about a millisecond, so all 35 per case would make 10 000
    /// cases take minutes); `every_four_subset_rebuilds_at_awkward_sizes`
    /// covers all 35 for fixed sizes.
    #[test]
    fn prop_rs_rebuilds_from_any_four_shards(
        data in prop::collection::vec(any::<u8>(), 1..1500),
        four in prop::sample::select(subsets(4).collect::<Vec<_>>()),
        larger in (0_u8..128).prop_filter("5 or more shards", |m| m.count_ones() >= 5),
    ) {
        let enc = encode_blob(&data, &rs_only()).unwrap();
        prop_assert_eq!(enc.manifest.encoding(), Encoding::Rs4x7);
        for mask in [four, larger] {
            let got = rebuild(&enc.manifest, &pick(&enc.pieces, mask)).unwrap();
            prop_assert_eq!(&got, &data, "mask {:07b}", mask);
        }
    }

    /// Chunked blobs rebuild from all chunks for any chunk size; every chunk
    /// but the last has the chunk size.
    #[test]
    fn prop_chunked_rebuilds(data in prop::collection::vec(any::<u8>(), 0..600), chunk in 1_u64..80) {
        let config = BlobConfig { none_max: 0, chunked_max: u64::MAX, chunk_size: chunk };
        let enc = encode_blob(&data, &config).unwrap();
        let n = enc.pieces.len();
        for (i, piece) in enc.pieces.iter().enumerate() {
            prop_assert_eq!(Some(piece.len() as u64), enc.manifest.piece_size(i));
            if i + 1 < n {
                prop_assert_eq!(piece.len() as u64, chunk);
            }
        }
        let all: BTreeMap<_, _> = enc.pieces.iter().cloned().enumerate().collect();
        prop_assert_eq!(rebuild(&enc.manifest, &all).unwrap(), data);
    }

    /// Manifests round-trip byte for byte, and any byte flip either fails to
    /// decode or decodes to something that re-encodes to exactly the input.
    #[test]
    fn prop_manifest_round_trips_and_flips_are_strict(
        len in 0_usize..400,
        none_max in 0_u64..100,
        chunk in 1_u64..50,
        flip in any::<prop::sample::Index>(),
        bit in 0_u8..8,
    ) {
        let config = BlobConfig { none_max, chunked_max: 200, chunk_size: chunk };
        let data = vec![0xa5_u8; len];
        let m = encode_blob(&data, &config).unwrap().manifest;
        let bytes = m.to_bytes().unwrap();
        prop_assert_eq!(&Manifest::from_bytes(&bytes).unwrap(), &m);
        let mut flipped = bytes.clone();
        let at = flip.index(flipped.len());
        flipped[at] ^= 1 << bit;
        if let Ok(other) = Manifest::from_bytes(&flipped) {
            prop_assert_eq!(other.to_bytes().unwrap(), flipped);
        }
    }
}
