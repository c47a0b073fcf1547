//! `ecomesh-hybrid-storage`: the seed's `HybridStorageAdapter` (seed 000 §9,
//! seed 004): an always-on primary store (a community hub, a cloud VM) that
//! is authoritative while it is reachable, with the peer-to-peer store
//! carrying on when it is not, and nothing lost either way.
//!
//! - [`HybridStorageAdapter`] implements [`ecomesh_types::StorageAdapter`]
//!   over a [`PrimaryStore`] and a [`ecomesh_p2p_storage::P2PStorageAdapter`],
//!   with the two [`Strategy`]s of the seed. [`HybridStorageAdapter::get_sourced`]
//!   and [`HybridStorageAdapter::query_sourced`] say where a read was served
//!   from ([`ReadSource`]); `Document` and `QueryPage` are plain structs every
//!   crate builds, so the source travels beside them rather than in them.
//! - Writes always commit locally first, as signed version nodes. Their CIDs
//!   wait in a durable [`ReplayQueue`] (a sled tree, flushed on every push)
//!   until the primary merged them. The primary receives the same signed
//!   bytes ([`PrimaryStore::apply_versions`], at most [`MAX_BATCH`] per
//!   request), so the primary's merge is the CRDT merge, and a version it
//!   already holds is `AlreadyPresent`: replay is idempotent by CID, and a
//!   replay cut short by a crash or a lost answer is run again without
//!   applying anything twice. A replayed version concurrent with the
//!   primary's heads is reported as [`HybridEvent::Conflict`].
//! - [`Health`] is the sans-io health model (heartbeat 5 s, sync 30 s, stale
//!   after 60 s by default, a request timeout); time comes from the caller's
//!   clock, so tests drive it with a fake one. [`spawn_driver`] is the thin
//!   tokio task that ticks it.
//!
//! **Known window:** a crash after the local commit and before the queue's
//! flush leaves that write local only (it was never acknowledged to the
//! caller); peers still get it by replication, the primary only if it is
//! written to again or reaches it as a peer.
#![forbid(unsafe_code)]

mod adapter;
mod driver;
mod error;
mod gate;
mod health;
mod primary;
mod queue;

pub use adapter::{
    EventListener, HybridConfig, HybridEvent, HybridStatus, HybridStorageAdapter, MAX_EVENTS,
    ReadSource, ReplayReport, Sourced, Strategy,
};
pub use driver::{Driver, spawn_driver};
pub use error::HybridError;
pub use gate::{
    CHALLENGE_TTL_MS, DeviceAuth, Grant, MAX_PENDING, MAX_TOKEN_LEN, PrimaryGate, TOKEN_TTL_MS,
};
pub use health::{Health, HealthConfig, PrimaryHealth, SyncMode};
pub use primary::{MAX_BATCH, PrimaryStore, VersionApplied, apply_version_to_store};
pub use queue::ReplayQueue;
