//! Large blobs on this node and over the mesh (seed 001 "Sharding Strategy",
//! "Shard Transfer Protocol"; seed 5.2 pinning and garbage collection).
//!
//! - [`BlobStore`] keeps blobs durably on the crate's [`Backend`](crate::kv::Backend)
//!   (sled or memory): the pieces cut by [`ecomesh_replication::blob`]
//!   (`none`, `chunked`, `rs-4-7`), each verified by its blake3 id on write
//!   and on read, the manifests with the collection each blob belongs to,
//!   pins, references, last-use times, and the peers confirmed to hold each
//!   piece. Keys live under [`NAMESPACE`] (`b`), apart from the document
//!   store's upper-case tags, so both can share one backend.
//! - [`BlobService`] carries the shard protocol over the mesh: it stores and
//!   replicates new blobs ([`BlobService::put_blob`]), fetches and rebuilds
//!   missing ones ([`BlobService::get_blob`]), answers peers, and runs GC.
//!
//! # Protocol
//!
//! Every message is a signed mesh message of type [`SHARD_TYPE`]
//! (`ecomesh/shard`) to one peer, whose payload is an envelope ([`frame`]):
//! a version, a kind, a request id (a response repeats it), and a part
//! index and count (frames above `max_part_bytes` travel in parts and are
//! joined within a byte budget). The kinds are the shard frames of
//! [`ecomesh_replication::shard`] — `Get { id }`, `Have { id }`,
//! `Push { id, data }` answered by `Data`, `Have(bool)`, `PushAck`,
//! `NotFound` or `Error` — and three manifest kinds: `ManifestRequest`
//! (a blob id) answered by `ManifestResponse` (collection and manifest, or
//! empty), and `Announce` (collection and manifest, sent to every partner
//! before its pieces). Messages that carry piece bytes go at
//! [`Priority::Bulk`](ecomesh_types::Priority::Bulk), the rest at `Normal`.
//!
//! - **Put**: the blob is cut and stored locally in one batch, then
//!   announced and pushed: `rs-4-7` shards to the peers of
//!   [`place_shards`](ecomesh_replication::blob::place_shards) (at most 2 of
//!   7 per peer), other pieces whole to the collection's factor of partners
//!   from [`select_partners`](ecomesh_replication::policy::select_partners)
//!   (proximity, diversity, reputation >= 0.5, pins). A `PushAck` records the
//!   sender as a confirmed replica of that piece. Whenever a peer connects,
//!   the origin pushes again whatever its blobs still lack
//!   ([`BlobService::replicate`]); partners never re-push what they hold.
//! - **Get**: local first; otherwise the manifest is asked of connected
//!   peers (one whose id differs is refused), then each missing piece is
//!   asked of one holder at a time (confirmed replicas first), every piece is
//!   verified against its id (once: the fetcher hashes it, the cache takes
//!   its word), verified pieces are cached with the sender as a confirmed
//!   replica in one batch (made durable when the get finishes; a piece lost
//!   to a crash before that is fetched again), and the blob is rebuilt (any
//!   4 of 7 shards) and checked against the blob id.
//! - **Serve**: `Get`, `Have` and `Push` are answered by
//!   [`ShardServer`](ecomesh_replication::shard::ShardServer) over the local
//!   store; a push whose bytes do not hash to its id is refused.
//! - **Reach**: a peer outside the reach of a blob's collection (or of
//!   `(collection, blob id text)`) in `BlobServiceConfig::reach` is never
//!   pushed its pieces and is answered `NotFound`, `Have(false)` and no
//!   manifest for it, as if this node did not hold it.
//! - **Faults**: a frame that does not decode, a piece or push whose bytes do
//!   not match the id, or a manifest of another blob is refused and charged
//!   to the sender as `Observation::InvalidContent` in the mesh reputation
//!   table. Requests are bounded (`max_in_flight` out, a bounded queue
//!   behind them) and fail after `request_timeout_ms` (time comes from
//!   `process(now_ms)`) or when their peer is lost; the fetcher then asks
//!   another holder.
//!
//! # Garbage collection
//!
//! [`BlobStore::gc`] (or [`BlobService::gc`]) deletes a local piece only when
//! [`gc_eligibility`](ecomesh_replication::policy::gc_eligibility) says
//! *Eligible* for every local blob listing it: no user pin naming this
//! device and no app pin covers the blob's collection or
//! `(collection, blob id text)`; no reference holds it (persistent ones from
//! [`BlobStore::add_reference`] or the caller's `referenced` callback); it
//! was last used at least the TTL ago (default 30 days); and at least the
//! collection's replication factor of *other* peers are confirmed to hold
//! that piece. Anything else is kept and reported with every reason.
//! Manifests and confirmations stay, so a collected blob can be fetched back
//! from its holders; [`BlobService::probe_replicas`] refreshes confirmations
//! with `Have` before a GC.

pub mod frame;
mod service;
mod store;

pub(crate) use store::{fuzz_pin, fuzz_pin_seeds};

pub use service::{
    BlobFetch, BlobGet, BlobRandom, BlobResult, BlobService, BlobServiceConfig, BlobStats,
    SHARD_TYPE,
};
pub use store::{
    BlobStore, GcDeleted, GcKept, GcReport, HELD_COLLECTION, MAX_HOLDER_LEN, NAMESPACE,
    StoredManifest,
};
