//! The ecomesh data model and the two abstractions everything else plugs into.
//!
//! - [`TransportAdapter`]: one physical network (internet, BLE, Wi-Fi Direct, LoRa, wired LAN).
//! - [`StorageAdapter`]: a Firestore-style document store, local or replicated.
//! - The values that cross them: [`PeerId`], [`PeerInfo`], [`NetworkMessage`],
//!   [`Value`] documents, [`Query`], [`HlcTimestamp`].
//!
//! This crate has no required dependencies (the optional `serde` feature adds
//! derives), does no I/O and reads no clock. Async methods return [`BoxFuture`]s
//! built from `std` only, so any executor can drive them.

#![forbid(unsafe_code)]

pub mod base58;
mod error;
mod hlc;
mod listener;
mod message;
mod peer;
mod query;
mod storage;
mod transport;
mod value;

pub use error::Error;
pub use hlc::HlcTimestamp;
pub use listener::{BoxFuture, Listener, Listeners, Subscription};
pub use message::{MessageId, NetworkMessage, Priority, Signature};
pub use peer::{PeerId, PeerInfo};
pub use query::{Cursor, Direction, Filter, FilterOp, OrderBy, Query, QueryPage};
pub use storage::{
    BatchOperation, BatchResult, Document, SetOptions, StorageAdapter, WriteResult, validate_key,
};
pub use transport::{
    PowerConsumption, TransportAdapter, TransportCapabilities, TransportEvent, TransportType,
};
pub use value::{ContentId, Map, Value, get_path};
