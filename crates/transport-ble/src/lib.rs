//! The Bluetooth LE transport of ecomesh (seed 3.2 "BluetoothTransport", 8.1; issue 18).
//!
//! Sans-io layers, each with time passed in:
//! - [`frag`]: fragments of at most one ATT payload over the GATT characteristics,
//!   reassembly with hard caps, credit-based flow control per link.
//! - [`gatt`]: the service layout (one write and one notify characteristic) and the
//!   advertisement payload (service UUID plus a presence tag).
//! - [`presence`]: unlinkable presence tags: BLAKE3 keyed with a key shared by
//!   linked devices and friends, over a 15-minute epoch and the peer id.
//! - [`link`]: one link: Noise XX over the units, message records, keepalive, the
//!   payload policy (Bulk and oversize refused up front).
//! - [`engine`]: every link of a device in both roles, the connection limit and the
//!   policy of which neighbours to keep, reconnect backoff, the rotating advertisement.
//!
//! Then the driver: [`radio`] is the small BlueZ-shaped [`radio::Radio`] interface,
//! [`sim`] an in-memory radio simulator implementing it, and [`BleTransport`] the tokio
//! driver and [`TransportAdapter`](ecomesh_types::TransportAdapter).

#![forbid(unsafe_code)]

#[cfg(feature = "bluez")]
pub mod bluez;
pub mod engine;
mod error;
pub mod frag;
pub mod gatt;
pub mod link;
pub mod presence;
pub mod radio;
pub mod sim;
mod transport;

pub use error::BleError;
pub use transport::{BleConfig, BleTransport};
