//! The embeddable ecomesh node that applications build on.
//!
//! [`Node::builder`] takes a data directory, an identity, transports (as
//! `Arc<dyn TransportAdapter>`: this crate links no transport) and an
//! optional [`ContentRouting`]; [`NodeBuilder::start`] opens the sled store,
//! the durable sync queue and stream, the mesh manager with its persisted
//! buffer, pending ACKs and learned keys, the `P2PStorageAdapter`, the blob
//! service and the sealed-text outbox, and runs one task that drives them
//! (on every transport event and every [`NodeConfig::tick`]), garbage-collects
//! blobs and re-announces them every [`NodeConfig::blob_gc_interval`], and
//! saves the mesh state after every change. [`Node::shutdown`] stops it
//! cleanly.
//!
//! Modules, one purpose each:
//! - `builder`, `node`: assembly, the driving task, shutdown;
//! - `config`, `layout`: tunables with their defaults, the files on disk;
//! - `persist`: the mesh's persisted state;
//! - `docs`, `watch`: documents (`node.collection("c").doc(id)`), queries,
//!   batches, history, and live snapshots with `has_pending_writes`;
//! - `texts`: sealed texts and the durable outbox;
//! - `blobs`, `routing`: large content and its location index;
//! - `api`: status, peers, changes, texts, blobs, content answers;
//! - `capabilities`: non-public collections, capability grants and revocation;
//! - `private`: encrypted collections, their key epochs and members;
//! - `inspect`: collections with counts, a document at a version, queue figures;
//! - `sneakernet`: versions and blobs exported to and imported from CARv1
//!   files ([`Node::export`], [`Node::import`]);
//! - `front`: an optional layer the documents go through (a primary);
//! - `link`: device linking by a one-time code ([`Node::link_new`],
//!   [`Node::link_accept`]), own devices and [`Node::relationship`];
//! - `relations`: family, neighbours, municipal and bioregional peers from
//!   configuration and set at run time ([`Node::set_relationship`]), which
//!   every reach decision uses;
//! - `events`: sync events (`sync_events`), per-peer and node sync states,
//!   `force_sync`.

#![forbid(unsafe_code)]

mod api;
mod blobs;
mod builder;
mod capabilities;
mod clock;
mod config;
mod docs;
mod error;
mod events;
mod front;
mod fsutil;
mod health;
mod inspect;
mod layout;
mod link;
mod node;
mod persist;
mod private;
mod relations;
mod routing;
mod sneakernet;
mod texts;
mod watch;

pub use api::{Change, Changes, MergedVersion, NodeStatus};
pub use blobs::{BlobInfo, GcSummary};
pub use builder::NodeBuilder;
pub use capabilities::{CAPABILITIES_COLLECTION, parse_token_id, token_id_text};
pub use config::{DEFAULT_OUTBOX_MAX, NodeConfig};
pub use docs::{Collection, DocRef};
pub use error::{Result, SyncError};
pub use events::{Operation, PeerSyncStatus, SyncEvent, SyncEvents, SyncState, VersionEvent};
pub use front::{DocumentFront, FrontFactory, LocalStorage};
pub use fsutil::write_atomic;
pub use health::{DamagedDatabase, MAX_NAMED_MISSING, MissingVersion, StorageHealth, StorageState};
pub use inspect::{CollectionInfo, QueueStatus, VersionedDocument};
pub use layout::DataLayout;
pub use link::{
    DEFAULT_LINK_TTL, ISSUER_PREFIX_LEN, LINK_TYPE, LinkCode, LinkError, MAX_CODE_TEXT, MAX_CODES,
    MAX_LINK_MESSAGE, MAX_LINKS, OwnDevice, PROOF_DOMAIN, SECRET_LEN, fuzz_decoders,
};
pub use node::Node;
pub use private::{KEYS_COLLECTION, PrivateCollection};
pub use relations::{
    RELATIONS_COLLECTION, RelationSource, Relationship, parse_peer_id, parse_trust,
};
pub use routing::{ContentRouting, RoutingError};
pub use sneakernet::{
    ExportOptions, ExportSummary, IMPORT_LIMITS, ImportReport, MAX_PENDING_BYTES,
    MAX_REFUSED_LISTED, Progress, RefuseReason, Refused,
};
pub use texts::{INBOX, InboxText, MAX_TEXT, OUTBOX, OutboxText, SentText, TEXT_TYPE, TextStatus};
pub use watch::{DocSnapshot, QuerySnapshot, Watch};

pub use ecomesh_crdt::FieldOp;
pub use ecomesh_identity::capability::{Action, Capability};
pub use ecomesh_mesh::SendOutcome;
pub use ecomesh_p2p_storage::VersionInfo;
pub use ecomesh_p2p_storage::capabilities::CapabilityRefusal;
pub use ecomesh_p2p_storage::kv::SledBackend;
pub use ecomesh_p2p_storage::{ClockReport, OwnClock, PeerClock, StoreError};
pub use ecomesh_replication::blob::BlobId;
pub use ecomesh_replication::reach::{Reach, ReachPolicy, Trust};
pub use ecomesh_replication::stream::{EventKind, Source};
pub use ecomesh_types::{
    BatchOperation, BatchResult, ContentId, Document, Map, PeerId, PeerInfo, Query, SetOptions,
    TransportType, Value, WriteResult,
};
