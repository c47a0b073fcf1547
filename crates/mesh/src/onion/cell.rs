//! Fixed-size onion cells: the only thing a hop ever sends or receives.
//!
//! ```text
//! cell = circuit id (u32, big-endian, non-zero) || kind (u8) || body (BODY_LEN bytes)
//! ```
//!
//! Every cell is exactly [`CELL_LEN`] bytes whatever it carries and wherever it
//! is on its circuit, so its size tells a hop nothing about its position.
//! The circuit id is per link (each hop picks the id on its outgoing link).

use crate::MeshError;

/// Bytes of every cell on the wire.
pub const CELL_LEN: usize = 1024;
/// Bytes of the circuit id and kind before the body.
pub const HEADER_LEN: usize = 5;
/// Bytes of a cell's body.
pub const BODY_LEN: usize = CELL_LEN - HEADER_LEN;

/// What a cell is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CellKind {
    /// Opens a circuit on a link: the client's ephemeral X25519 key.
    Create,
    /// Answers [`CellKind::Create`]: the hop's ephemeral key and authenticator.
    Created,
    /// A layered cell travelling away from the client.
    Forward,
    /// A layered cell travelling toward the client.
    Backward,
    /// Tears the circuit down on this link (its body is ignored).
    Destroy,
}

impl CellKind {
    /// The kind's byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            CellKind::Create => 1,
            CellKind::Created => 2,
            CellKind::Forward => 3,
            CellKind::Backward => 4,
            CellKind::Destroy => 5,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => CellKind::Create,
            2 => CellKind::Created,
            3 => CellKind::Forward,
            4 => CellKind::Backward,
            5 => CellKind::Destroy,
            _ => return None,
        })
    }
}

/// One decoded cell.
#[derive(Clone, PartialEq, Eq)]
pub struct Cell {
    /// The circuit on this link (never 0).
    pub circuit: u32,
    /// What the cell is.
    pub kind: CellKind,
    /// The body: opaque bytes, layered ciphertext for relay cells.
    pub body: [u8; BODY_LEN],
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("circuit", &self.circuit)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Cell {
    /// The cell's [`CELL_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CELL_LEN);
        out.extend_from_slice(&self.circuit.to_be_bytes());
        out.push(self.kind.to_byte());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes exactly [`CELL_LEN`] bytes; anything else (another length, an
    /// unknown kind, circuit id 0) is [`MeshError::BadCell`]. Never panics and
    /// allocates nothing.
    pub fn decode(bytes: &[u8]) -> Result<Cell, MeshError> {
        if bytes.len() != CELL_LEN {
            return Err(MeshError::BadCell {
                reason: "wrong cell length",
            });
        }
        let (head, rest) = bytes.split_at(HEADER_LEN);
        let mut id = [0_u8; 4];
        id.copy_from_slice(&head[..4]);
        let circuit = u32::from_be_bytes(id);
        if circuit == 0 {
            return Err(MeshError::BadCell {
                reason: "circuit id 0",
            });
        }
        let kind = CellKind::from_byte(head[4]).ok_or(MeshError::BadCell {
            reason: "unknown cell kind",
        })?;
        let mut body = [0_u8; BODY_LEN];
        body.copy_from_slice(rest);
        Ok(Cell {
            circuit,
            kind,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_round_trip_and_bad_headers_are_refused() {
        let mut body = [0_u8; BODY_LEN];
        body[0] = 9;
        let c = Cell {
            circuit: 7,
            kind: CellKind::Backward,
            body,
        };
        let bytes = c.encode();
        assert_eq!(bytes.len(), CELL_LEN);
        assert_eq!(Cell::decode(&bytes).unwrap(), c);
        assert!(Cell::decode(&bytes[1..]).is_err());
        let mut zero = bytes.clone();
        zero[..4].fill(0);
        assert!(Cell::decode(&zero).is_err());
        let mut kind = bytes;
        kind[4] = 0;
        assert!(Cell::decode(&kind).is_err());
    }

    #[test]
    fn forward_capacity_shrinks_16_bytes_per_relay_and_never_underflows() {
        use crate::onion::OnionRouter;
        assert_eq!(OnionRouter::forward_capacity(1), 984);
        assert_eq!(OnionRouter::forward_capacity(3), 952);
        assert_eq!(OnionRouter::forward_capacity(8), 872);
        assert_eq!(OnionRouter::forward_capacity(usize::MAX), 0);
    }
}
