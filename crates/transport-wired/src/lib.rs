//! The wired LAN transport of ecomesh (seed 3.2, issue 5).
//!
//! - [`link`]: the sans-io link state machine: Noise XX handshake over `u16`-length
//!   frames, then encrypted records carrying [`NetworkMessage`](ecomesh_types::NetworkMessage)s
//!   (fragmented to the Noise message size, reassembled up to the maximum message size),
//!   HELLO exchange and keepalive, with time passed in.
//! - [`WiredTransport`]: the tokio driver implementing
//!   [`TransportAdapter`](ecomesh_types::TransportAdapter): a TCP listener, dialling by
//!   address with reconnect and exponential backoff, mutual authentication under an
//!   [`AccessPolicy`](ecomesh_identity::AccessPolicy), one bounded send queue per peer.
//!
//! - [`discovery`]: mDNS announce/browse of `_ecomesh._tcp.local.` with `mdns-sd`
//!   ([`MdnsDiscovery`]), which dials discovered peers; the TXT codec and the peer table
//!   are sans-io. Without it, peers are reached by [`WiredTransport::dial`].

#![forbid(unsafe_code)]

pub mod discovery;
mod error;
pub mod link;
mod transport;

pub use discovery::{Announcement, MdnsDiscovery, SERVICE_TYPE};
pub use error::WiredError;
pub use link::{Link, LinkConfig, LinkEvent, LinkReader, LinkWriter, PROTOCOL_VERSION};
pub use transport::{WiredConfig, WiredTransport};
