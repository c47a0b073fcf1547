//! Conflict-free replicated data types for ecomesh (seed 5.3, 5.4, 7.3).
//!
//! - [`Hlc`]: the hybrid logical clock issuing [`HlcTimestamp`]s, monotonic per
//!   peer, refusing remote timestamps too far in the future.
//! - [`VectorClock`]: causality between replicas (before / after / equal / concurrent).
//! - [`LwwRegister`], [`GSet`], [`OrSet`], [`PnCounter`]: the seed's CRDTs.
//! - [`DocumentCrdt`]: a document as a map of LWW / counter / set fields with a
//!   deletion tombstone; every operation returns a [`DocumentDelta`] that merges
//!   like a full state.
//! - [`VersionDag`]: the Merkle DAG of versions, generic over the id type.
//!
//! Every replicated type implements [`Merge`], whose merge is commutative,
//! associative and idempotent (checked by the property tests in `tests/`), and
//! can be taken apart into raw parts (accessors, `into_parts`) and rebuilt with a
//! validating `from_parts`, so other crates can encode it without serde.
//!
//! **Invariant: this crate does no I/O and reads no clock.** Physical time comes
//! from a [`PhysicalClock`] the caller passes (or a plain number of
//! milliseconds); [`ManualClock`] is provided for tests.

#![forbid(unsafe_code)]

mod dag;
mod document;
mod error;
mod gset;
mod hlc;
mod lww;
mod orset;
mod pncounter;
mod vclock;

pub use dag::{DagNode, VersionDag};
pub use document::{DocumentCrdt, DocumentDelta, Field, FieldOp, Slot};
pub use ecomesh_types::HlcTimestamp;
pub use error::Error;
pub use gset::GSet;
pub use hlc::{Hlc, ManualClock, PhysicalClock};
pub use lww::LwwRegister;
pub use orset::{OrSet, Tag};
pub use pncounter::PnCounter;
pub use vclock::{ClockOrdering, VectorClock};

/// A state-based CRDT: replicas converge by merging each other's states.
///
/// Every implementation promises that `merge` is commutative, associative and
/// idempotent up to `==`, and that a delta returned by one of the type's
/// operations merges into any replica exactly like the full state it came from.
pub trait Merge {
    /// Merges `other` into `self` (the least upper bound of the two states).
    fn merge(&mut self, other: &Self);
}
