//! Conflict-free replicated data types for ecomesh (seed 5.3, 5.4, 7.3).
//!
//! - [`Hlc`]: the hybrid logical clock issuing [`HlcTimestamp`]s, monotonic per
//!   peer, never refusing a remote timestamp: one too far in the future is
//!   clamped, so a peer with a wrong clock cannot drag this one along.
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
//!
//! # Example: two replicas of a document
//!
//! ```
//! use ecomesh_crdt::{DocumentCrdt, FieldOp, Hlc, ManualClock, Merge};
//! use ecomesh_types::{Map, PeerId, Value};
//!
//! let clock = ManualClock::new(1_700_000_000_000);
//! let (mut hlc_a, mut hlc_b) = (
//!     Hlc::new(PeerId::from_digest([1; 32])),
//!     Hlc::new(PeerId::from_digest([2; 32])),
//! );
//! let (mut a, mut b) = (DocumentCrdt::new(), DocumentCrdt::new());
//!
//! let ts = hlc_a.send(&clock)?;
//! let d1 = a.update(Map::from([("title".into(), Value::from("draft"))]), ts)?;
//! let ts = hlc_b.send(&clock)?;
//! let d2 = b.apply([("views".to_owned(), FieldOp::Increment(1))], ts)?;
//!
//! // Deltas cross in any order, any number of times.
//! a.merge(&d2);
//! b.merge(&d1);
//! b.merge(&d1);
//! if let Some(seen) = d2.max_timestamp() {
//!     hlc_a.receive(&seen, &clock)?;
//! }
//! assert_eq!(a, b);
//! assert_eq!(a.get("views"), Some(Value::Integer(1)));
//! # Ok::<(), ecomesh_crdt::Error>(())
//! ```

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
