//! The one error type of `ecomesh-crdt`.

use std::fmt;

/// Everything that can go wrong in this crate: a clock at the end of its range, a
/// counter that would overflow, parts that do not form a valid state, or a DAG
/// insertion that would break the graph.
///
/// Every fallible operation leaves its receiver unchanged when it returns an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The clock's physical component would pass `u64::MAX` milliseconds.
    ClockOverflow,
    /// A counter (vector-clock entry or PN-Counter total) would pass `u64::MAX`.
    CounterOverflow,
    /// Raw parts handed to a `from_parts` constructor break the type's invariant.
    InvalidParts {
        /// The type being built, e.g. `"VectorClock"`.
        what: &'static str,
        /// The invariant that does not hold.
        reason: &'static str,
    },
    /// A document operation that cannot be applied (empty field name, a field
    /// named twice in one update...).
    InvalidOperation(String),
    /// A DAG node names a parent that is not in the DAG.
    MissingParent,
    /// A DAG node lists itself as a parent.
    Cycle,
    /// A DAG node id is already present with different parents.
    ConflictingNode,
    /// An id that is not in the DAG was given where a known node is required.
    UnknownNode,
}

impl Error {
    pub(crate) const fn parts(what: &'static str, reason: &'static str) -> Self {
        Error::InvalidParts { what, reason }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ClockOverflow => f.write_str("hybrid logical clock overflow"),
            Error::CounterOverflow => f.write_str("counter overflow"),
            Error::InvalidParts { what, reason } => write!(f, "invalid {what} parts: {reason}"),
            Error::InvalidOperation(msg) => write!(f, "invalid document operation: {msg}"),
            Error::MissingParent => f.write_str("DAG node names a parent that is not in the DAG"),
            Error::Cycle => f.write_str("DAG node lists itself as a parent"),
            Error::ConflictingNode => {
                f.write_str("DAG node id already present with different parents")
            }
            Error::UnknownNode => f.write_str("node is not in the DAG"),
        }
    }
}

impl std::error::Error for Error {}
