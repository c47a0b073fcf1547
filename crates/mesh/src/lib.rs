//! The multi-transport mesh of ecomesh (seed 3.3, 4.3, 7.1, 7.2, 8.1).
//!
//! The protocol logic is sans-io and reads no clock: every function that
//! depends on time takes `now_ms` (Unix milliseconds) from the caller.
//!
//! - [`policy`]: the seed's routing table (size class x priority -> transport order).
//! - [`dedup`]: a bounded seen-set of message ids.
//! - [`reputation`]: per-peer scores from the seed's five weighted metrics.
//! - [`buffer`]: the bounded, persistent store-and-forward buffer.
//! - [`ack`]: delivery confirmations.
//! - [`keys`]: key discovery for senders whose key this node never learned.
//! - [`onion`]: onion circuits (sans-io core) for private delivery.
//! - [`topology`]: full mesh / partial mesh / star selection.
//! - [`MultiTransportManager`]: the thin layer that drives them over
//!   `Arc<dyn TransportAdapter>`s.

#![forbid(unsafe_code)]

pub mod ack;
pub mod buffer;
pub mod dedup;
mod error;
pub mod fuzzing;
mod inbox;
pub mod keys;
mod manager;
pub mod onion;
pub mod policy;
pub mod reputation;
pub mod topology;

pub use error::MeshError;
pub use manager::{
    MAX_LEARNED_KEYS, MeshConfig, MeshEvent, MultiTransportManager, PrivateOutcome, SUPER_PEER_KEY,
    SendOutcome,
};
