//! The Bluetooth LE transport of ecomesh (seed 3.2 "BluetoothTransport", 8.1; issue 18).
//!
//! Sans-io layers, each with time passed in:
//! - [`frag`]: fragments of at most one ATT payload over the GATT characteristics,
//!   reassembly with hard caps, credit-based flow control per link.
//! - [`gatt`]: the service layout (one write and one notify characteristic) and the
//!   advertisement payload (service UUID plus a presence tag).
//! - [`presence`]: unlinkable presence tags: BLAKE3 keyed with a key shared by
//!   linked devices and friends, over a 15-minute epoch and the peer id.

#![forbid(unsafe_code)]

pub mod engine;
mod error;
pub mod frag;
pub mod gatt;
pub mod link;
pub mod presence;

pub use error::BleError;
