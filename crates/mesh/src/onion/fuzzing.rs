//! Entry points for the `onion_cell` fuzz target (fuzz/), also run by the
//! unit tests below so the properties hold without a fuzzer.

use ecomesh_identity::Identity;
use ecomesh_types::PeerId;

use super::{CELL_LEN, Cell, OnionConfig, OnionRouter};

/// Feeds `data` to the cell decoder (whatever decodes re-encodes to exactly
/// the input) and, cut into cells (the last one zero-padded), to a router as
/// if two neighbours sent them: nothing panics and the relay state stays
/// within its bounds.
pub fn cells(data: &[u8]) {
    if let Ok(cell) = Cell::decode(data) {
        assert_eq!(
            cell.encode(),
            data,
            "a decoded cell re-encodes to its input"
        );
    }
    let config = OnionConfig {
        max_circuits: 4,
        max_circuits_per_peer: 2,
        max_queued_cells: 16,
        max_queued_per_peer: 8,
        max_message_len: 4096,
        ..OnionConfig::default()
    };
    let mut router = OnionRouter::new(Identity::from_secret_bytes(&[7; 32]), config, [1; 32]);
    let neighbours = [PeerId::from_digest([1; 32]), PeerId::from_digest([2; 32])];
    for (i, chunk) in data.chunks(CELL_LEN).enumerate() {
        let mut cell = [0_u8; CELL_LEN];
        cell[..chunk.len()].copy_from_slice(chunk);
        let _ = router.on_cell(neighbours[i % 2], &cell, i as u64);
        assert!(router.relayed_circuits() <= 4, "relay state over its bound");
    }
    router.tick(u64::MAX / 2);
    let mut sent = 0;
    while let Some((_, bytes)) = router.poll_transmit() {
        assert_eq!(bytes.len(), CELL_LEN);
        sent += 1;
    }
    assert!(sent <= 16, "queued cells over their bound");
    while router.poll_event().is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_properties_hold_for_sample_inputs() {
        cells(&[]);
        cells(&[0xff; 3]);
        // A CREATE, a FORWARD on it and garbage, from alternating neighbours.
        let mut data = vec![0_u8; CELL_LEN * 4];
        for (i, c) in data.chunks_mut(CELL_LEN).enumerate() {
            c[3] = 1;
            c[4] = [1, 1, 3, 9][i];
            c[5..37].fill(9);
        }
        cells(&data);
        let mut many = Vec::new();
        for i in 0..20_u8 {
            let mut c = vec![i; CELL_LEN];
            c[..4].copy_from_slice(&[0, 0, 0, i + 1]);
            c[4] = 1;
            many.extend_from_slice(&c);
        }
        cells(&many);
    }
}
