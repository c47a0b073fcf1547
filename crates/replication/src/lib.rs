//! Replication for ecomesh (seed 5.1-5.4, 6, 7.3; seed 001): how many copies of
//! each collection exist and where, what may be garbage-collected, what is still
//! to be sent, how two replicas find and exchange their differences, who may
//! receive what (reach), and how large blobs are stored as shards.
//!
//! Protocol logic here is sans-io: it takes bytes, state and time in and gives
//! bytes, decisions and events out; the node drives it over the mesh.

#![forbid(unsafe_code)]

pub mod antientropy;
pub mod blob;
mod error;
pub mod fuzzing;
pub mod merkle;
pub mod policy;
pub mod queue;
pub mod reach;
pub mod stream;

pub use blob::shard;
pub use error::ReplicationError;
