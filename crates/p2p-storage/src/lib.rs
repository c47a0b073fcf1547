//! The local ecomesh document store (seed 5.1, 5.3, 5.4, 6).
//!
//! [`Store`] keeps documents as CRDT states ([`ecomesh_crdt::DocumentCrdt`])
//! with a complete, signed version DAG per document, automatic single-field
//! indexes, a Merkle collection index with one root CID for the whole
//! database, and subscriptions. It runs over any ordered key-value
//! [`Backend`](kv::Backend): [`SledStore`] on disk (sled 0.34) and
//! [`MemoryStore`] in memory share every line of logic, and both implement
//! [`StorageAdapter`](ecomesh_types::StorageAdapter).
//!
//! # Durability
//! A batch of writes is applied to the backend atomically. With the default
//! [`FlushPolicy::EveryWrite`], a write that returned `Ok` was flushed (and
//! fsynced by sled) first and survives a process crash (`kill -9`). sled's
//! flush is not a guarantee against power loss; see [`FlushPolicy`].
//! The Merkle index nodes and collection roots are derived from the state
//! records and kept in memory between persists
//! ([`StoreConfig::deferred_merkle_writes`]); after a crash the next open
//! rebuilds them, so they are never part of what a crash can lose.
//!
//! # Untrusted input
//! Everything read back from disk is decoded strictly; a record that does not
//! decode or whose CID does not match is [`StoreError::Corrupt`] naming the
//! collection and id. Versions from peers go through
//! [`Store::apply_remote`], which verifies CID, signature, author and clock
//! before merging.

#![forbid(unsafe_code)]

pub mod activity;
mod adapter;
pub mod blobs;
pub mod capabilities;
mod codec;
mod engine;
mod error;
pub mod fuzzing;
pub mod keyring;
mod keys;
pub mod kv;
mod p2p;
mod reconcile;
mod records;
mod skew;
mod subs;
pub mod trie;
mod txn;
pub mod witness;

pub use activity::SyncActivity;
pub use blobs::{BlobService, BlobServiceConfig, BlobStore, GcReport};
pub use engine::{
    ApplyOutcome, FORMAT_VERSION, FlushPolicy, GcPolicy, IntegrityReport, LocalWrite,
    MAX_NAMED_DAMAGED, MemoryStore, SledStore, Store, StoreConfig, StoreDamage, StoreHealth,
    SystemClock, VersionInfo, WrittenVersion,
};
pub use error::StoreError;
pub use keyring::Keyring;
pub use p2p::{
    AE_TYPE, DELTA_TYPE, FETCH_TYPE, FETCHED_TYPE, P2PConfig, P2PStats, P2PStorageAdapter,
    PUSH_TYPE, RandomSource, ReplicatedView, SINCE_TYPE, TrustFn,
};
pub use records::{
    COMPACT_SEALED_FORMAT, COMPACT_SEALED_FORMAT_SENDER, COMPACT_VERSION_FORMAT,
    COMPACT_VERSION_FORMAT_SENDER, StateRecord, VERSION_SIGNATURE_DOMAIN, VersionNode,
    canonical_of_compact, compact_of_canonical, sealing_context,
};
pub use skew::{ClockReport, OwnClock, PeerClock};
