//! Onion routing over any transport (seed 003, issue 20): circuits of 1 to
//! [`MAX_RELAYS`] relays chosen among reputable peers, layered X25519 +
//! XChaCha20-Poly1305, fixed-size cells, circuits rotated hourly.
//!
//! The core ([`OnionRouter`]) is sans-io like the rest of the mesh: cells
//! (bytes) and the time come in through [`OnionRouter::on_cell`] and
//! [`OnionRouter::tick`]; cells to hand to neighbours come out of
//! [`OnionRouter::poll_transmit`] and what happened out of
//! [`OnionRouter::poll_event`]. The [`MultiTransportManager`] carries cells
//! as signed messages of type [`ONION_CELL_TYPE`] between neighbours only
//! (never relayed or buffered by the mesh) and offers the onion route in
//! [`send_private`]'s delivery order: direct, then onion, then relay, then
//! queue.
//!
//! A circuit is built hop by hop (telescoping, as Tor): CREATE/CREATED with
//! the first relay, then EXTEND through the circuit to each next one, the
//! destination last. Each hop knows only its previous and next hop; with two
//! or more relays no relay learns both ends, and the destination learns the
//! sender only from what the message itself says. See [`crypto`] for the
//! handshake and the layers, and [`cell`] for the wire form.
//!
//! What a relay keeps is bounded ([`OnionConfig`]): circuits per previous hop
//! and in all, cells queued per neighbour and in all, messages waiting for a
//! circuit, reassembled message bytes. A cell that does not decode or whose
//! layer does not authenticate (tampered, replayed, reordered) is refused
//! with [`OnionEvent::Misbehaved`] naming the neighbour that handed it over,
//! which the manager charges (integrity), and the circuit is torn down.
//!
//! Limits of this design: a relay can tell whether it is the last hop (it has
//! no next), as in Tor; timing correlation by colluding relays is not
//! addressed (no cover traffic); cells must arrive in order on each link
//! (counters are implicit), so a lost cell breaks the circuit, which the
//! client rebuilds.
//!
//! [`MultiTransportManager`]: crate::MultiTransportManager
//! [`send_private`]: crate::MultiTransportManager::send_private

pub mod cell;
pub mod crypto;
pub mod fuzzing;
mod router;

use ecomesh_types::PeerId;

pub use cell::{BODY_LEN, CELL_LEN, Cell, CellKind};
pub use router::{OnionRouter, is_cell_sized};

/// Most relays in a circuit (seed 003: 1 to 8 hops).
pub const MAX_RELAYS: usize = 8;

/// The message type that carries one cell between neighbours.
pub const ONION_CELL_TYPE: &str = "ecomesh/onion";

/// Tunables and bounds of an [`OnionRouter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnionConfig {
    /// Relays in the circuits this node builds (1 to [`MAX_RELAYS`]; default 3).
    pub relays: usize,
    /// Age at which a circuit is closed and a fresh one built (default one hour).
    pub rotate_ms: u64,
    /// How long each step of a circuit build (one hop's answer) may take.
    pub build_timeout_ms: u64,
    /// Relay state unused for this long is dropped (default two hours).
    pub idle_ms: u64,
    /// Most circuits one previous hop may hold open through this node.
    pub max_circuits_per_peer: usize,
    /// Most circuits this node relays or ends in all.
    pub max_circuits: usize,
    /// Most cells waiting to be handed to neighbours in all.
    pub max_queued_cells: usize,
    /// Most cells waiting for one neighbour.
    pub max_queued_per_peer: usize,
    /// Most messages waiting for one circuit to be built.
    pub max_pending_messages: usize,
    /// Largest message carried over a circuit (reassembly bound).
    pub max_message_len: usize,
}

impl Default for OnionConfig {
    fn default() -> Self {
        OnionConfig {
            relays: 3,
            rotate_ms: 3_600_000,
            build_timeout_ms: 10_000,
            idle_ms: 7_200_000,
            max_circuits_per_peer: 64,
            max_circuits: 4096,
            max_queued_cells: 8192,
            max_queued_per_peer: 1024,
            max_pending_messages: 64,
            max_message_len: 256 * 1024,
        }
    }
}

/// An inbound circuit (one that ends at this node), as its last link: the
/// handle to [`OnionRouter::reply`] on. It names the previous hop only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The neighbour the circuit arrives from.
    pub prev: PeerId,
    /// The circuit's id on that link.
    pub link: u32,
}

/// Why a circuit this node built was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// It reached [`OnionConfig::rotate_ms`].
    Rotated,
    /// A build step got no answer in time.
    Timeout,
    /// A hop could not extend it (next hop unreachable or refused).
    ExtendFailed,
    /// A hop tore it down.
    Destroyed,
    /// Its first hop (or destination) vanished.
    HopLost,
    /// A cell on it failed authentication or broke the protocol.
    BadCell,
}

/// What an [`OnionRouter`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnionEvent {
    /// The circuit to `dest` is built; messages waiting for it were sent.
    CircuitReady {
        /// The destination.
        dest: PeerId,
        /// Its relays.
        relays: usize,
    },
    /// A circuit this node built was closed; `undelivered` are the messages
    /// that were still waiting for it (to be sent another way).
    CircuitClosed {
        /// The destination.
        dest: PeerId,
        /// Why.
        reason: CloseReason,
        /// Messages handed to [`OnionRouter::send`] that never left.
        undelivered: Vec<Vec<u8>>,
    },
    /// A message waiting for the circuit to `dest` could not be sent when it was built.
    Undelivered {
        /// The destination.
        dest: PeerId,
        /// The message.
        data: Vec<u8>,
    },
    /// A whole message arrived: over an inbound circuit (`origin`, answer with
    /// [`OnionRouter::reply`]) or back over this node's circuit to `dest`.
    Delivered {
        /// The inbound circuit it came over, when it ended here.
        origin: Option<Origin>,
        /// The destination of this node's circuit it came back over.
        dest: Option<PeerId>,
        /// The message.
        data: Vec<u8>,
    },
    /// A neighbour handed over a bad cell (charge it).
    Misbehaved {
        /// The neighbour.
        peer: PeerId,
        /// What was wrong.
        reason: &'static str,
    },
}
