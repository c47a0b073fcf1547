//! The LoRa transport of ecomesh over stock Meshtastic radios (seed 3.2, issue 8).
#![forbid(unsafe_code)]

pub mod airtime;
pub mod client;
pub mod engine;
mod error;
pub mod frag;
pub mod frame;
pub mod proto;
pub mod routing;
pub mod sched;
pub mod serial;

pub use error::LoraError;
#[cfg(feature = "sim")]
pub mod sim;
mod transport;

pub use engine::{Engine, EngineConfig, EngineEvent};
pub use transport::{LoraConfig, LoraStatus, LoraTransport};
