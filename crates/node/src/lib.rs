//! The ecomesh node: the daemon behind `ecomesh node` and the pieces the CLI shares with it.
//!
//! - [`api`]: the HTTP and WebSocket API under `/api/v1/` and the dashboard at `/`.
//! - [`daemon`]: starts the transports (wired with mDNS, internet, LoRa), hands them to an
//!   embedded [`ecomesh_sync::Node`] (store, mesh, replication, blobs, sealed texts and their
//!   outbox), and serves the control socket.
//! - `serve`: answers control requests by calling the `Node` API.
//! - [`control`]: the JSON-lines protocol on the local control socket, and its client.
//! - [`sneakernet`]: `ecomesh export` and `ecomesh import` (CARv1 files).
//! - [`clauses`]: the CLI's `--where`/`--order-by` clauses as query JSON.
//! - [`config`]: `ecomesh.toml`, the `node` flags' values from the data directory.
//! - [`human`]: times and sizes for people in the CLI's text output.
//! - [`progress`]: progress bars on a terminal, plain lines otherwise.
//! - [`output`]: the CLI's answer lines on stdout (a closed pipe ends it quietly).
//! - [`paths`]: the data directory (XDG default) and the files in it.
//! - [`hybrid`]: `ecomesh node --primary ADDR`, the node's documents through the hybrid adapter.
//! - [`relation`]: `ecomesh relation` and `ecomesh cap`, relationships and capabilities.
//! - [`remote`]: `RemoteStorageAdapter`, another node as this device's primary (issue 19).

#![forbid(unsafe_code)]

pub mod api;
pub mod backup;
pub mod clauses;
pub mod config;
pub mod control;
pub mod daemon;
pub mod human;
pub mod hybrid;
pub mod link;
pub mod output;
pub mod paths;
pub mod progress;
pub mod relation;
pub mod remote;
mod serve;
mod serve_stream;
pub mod sneakernet;
pub mod storage;
