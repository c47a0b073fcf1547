//! The ecomesh node: the daemon behind `ecomesh node` and the pieces the CLI shares with it.
//!
//! - [`daemon`]: runs the sled store, the [`MultiTransportManager`](ecomesh_mesh::MultiTransportManager),
//!   the wired transport with mDNS discovery, and the control socket; texts between nodes
//!   are sealed end to end ([`ecomesh_identity::sealed::seal_signed`]) and travel as signed mesh
//!   messages, by store-and-forward when the recipient is away.
//! - [`control`]: the JSON-lines protocol on the local control socket, and its client.
//! - [`paths`]: the data directory (XDG default) and the files in it.

#![forbid(unsafe_code)]

pub mod control;
pub mod daemon;
pub mod paths;
