//! Properties of the CARv1 codec: any roots and blocks round-trip, any cut of a
//! file is either a complete file or a typed error, and arbitrary bytes never
//! panic the reader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ecomesh_wire::{CarLimits, CarReader, CarWriter, Cid, HashAlg, WireError, cid_for_bytes};
use proptest::prelude::*;

fn blocks() -> impl Strategy<Value = Vec<(Cid, Vec<u8>)>> {
    prop::collection::vec(
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)),
        0..8,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(blake, data)| {
                let alg = if blake {
                    HashAlg::Blake3
                } else {
                    HashAlg::Sha2_256
                };
                (cid_for_bytes(ecomesh_wire::cid::RAW, alg, &data), data)
            })
            .collect()
    })
}

/// A file's roots and its (cid, data) blocks.
type Car = (Vec<Cid>, Vec<(Cid, Vec<u8>)>);

fn read(bytes: &[u8]) -> Result<Car, WireError> {
    let mut r = CarReader::new(bytes, CarLimits::DEFAULT)?;
    let roots = r.roots().to_vec();
    let blocks = r
        .by_ref()
        .map(|b| {
            let b = b?;
            b.verify()?;
            Ok((b.cid, b.data))
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok((roots, blocks))
}

proptest! {
    #[test]
    fn round_trip_and_truncations(blocks in blocks(), nroots in 0_usize..3) {
        let roots: Vec<Cid> = blocks.iter().take(nroots).map(|b| b.0).collect();
        let mut w = CarWriter::new(Vec::new(), &roots).unwrap();
        let mut ends = vec![w.bytes_written()];
        for (c, d) in &blocks {
            w.write_block(c, d).unwrap();
            ends.push(w.bytes_written());
        }
        let file = w.finish().unwrap();
        let (r, b) = read(&file).unwrap();
        prop_assert_eq!(r, roots);
        prop_assert_eq!(&b, &blocks);
        for cut in 0..file.len() {
            match read(&file[..cut]) {
                Ok((_, b)) => {
                    prop_assert!(ends.contains(&(cut as u64)), "cut {} accepted", cut);
                    prop_assert_eq!(&b[..], &blocks[..b.len()]);
                }
                Err(e) => prop_assert!(matches!(e, WireError::Truncated { .. }), "cut {}: {:?}", cut, e),
            }
        }
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = read(&bytes);
    }

    #[test]
    fn flipped_bytes_are_errors_or_other_blocks(blocks in blocks(), at in any::<prop::sample::Index>(), bit in 0_u8..8) {
        let mut w = CarWriter::new(Vec::new(), &[]).unwrap();
        for (c, d) in &blocks {
            w.write_block(c, d).unwrap();
        }
        let mut file = w.finish().unwrap();
        let i = at.index(file.len());
        file[i] ^= 1 << bit;
        // Never a panic; when it still reads, every block still verifies.
        let _ = read(&file);
    }
}
