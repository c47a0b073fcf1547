//! Identity and security for ecomesh: who a peer is and how its bytes are protected.
//!
//! - [`Identity`] / [`PublicKey`]: Ed25519 keys, the 0600 key file, [`peer_id_of`].
//! - [`message`]: signing and (batch) verification of `NetworkMessage`s (seed 3.1, 8.1).
//! - [`sealed`]: end-to-end sealed boxes to a recipient's identity (seed 8.2).
//! - [`group`]: k-of-n Shamir group keys with rotation (seed 8.2); [`key_epoch`]: one
//!   epoch of an encrypted collection's key, sealed to each member and signed by its owner.
//! - [`capability`]: capability tokens; [`device_link`]: "these PeerIds belong to me".
//! - [`backup`]: passphrase-protected export and import of the identity (Argon2id + XChaCha20-Poly1305).
//! - [`auth`]: the seed 8.3 challenge-response as a sans-io state machine.
//! - [`noise`]: Noise XX / IK sessions bound to the Ed25519 identity, the secure channel
//!   every transport shares, with the [`AccessPolicy`] deciding who may finish a handshake.
//! - [`fuzzing`]: the checks run by the cargo-fuzz targets and their regression replay.
//!
//! Everything is sans-io: bytes and time in, bytes and events out; nothing here opens a
//! socket or reads a clock. The only file I/O is the identity key file.
//!
//! # Encodings
//! Every byte string this crate signs, hashes or emits uses one framing (see the
//! [`domain`] constants): big-endian integers, `u32` length prefixes on variable fields,
//! a length-prefixed domain string at the start of everything signed or fed to a KDF,
//! and a kind byte plus a version byte at the start of every encoded object. Decoders are
//! strict (no trailing bytes, bounded lengths, no allocation from a length prefix) and
//! return typed errors.

#![forbid(unsafe_code)]

pub mod auth;
pub mod backup;
pub mod capability;
mod codec;
pub mod device_link;
mod error;
pub mod fuzzing;
pub mod group;
mod identity;
pub mod key_epoch;
pub mod message;
pub mod noise;

mod policy;
mod rng;
pub mod sealed;

pub use error::{Error, Result};
pub use identity::{Identity, KEY_FILE_LEN, PublicKey, peer_id_of};
pub use policy::AccessPolicy;

/// The domain-separation strings. Each is the first, length-prefixed field of the bytes
/// signed or fed to a KDF for that purpose; changing a format means a new version string.
pub mod domain {
    /// Signature over a `NetworkMessage` (type, payload length and BLAKE3 digest, sender,
    /// timestamp).
    pub const NETWORK_MESSAGE: &str = "ecomesh 2026 network-message signature v2";
    /// blake3 `derive_key` context of sealed-box keys.
    pub const E2EE_KDF: &str = "ecomesh 2026 e2ee v1";
    /// Signature of the sender inside a signed sealed box.
    pub const E2EE_SENDER: &str = "ecomesh 2026 e2ee sender v1";
    /// blake3 `derive_key` context of group data keys.
    pub const GROUP_DATA_KDF: &str = "ecomesh 2026 group data v1";
    /// blake3 `derive_key` context of the group key check value.
    pub const GROUP_KEY_CHECK: &str = "ecomesh 2026 group key check v1";
    /// Signature of a capability token.
    pub const CAPABILITY: &str = "ecomesh 2026 capability v1";
    /// Signature of an encrypted collection's key epoch by its owner.
    pub const COLLECTION_KEY_EPOCH: &str = "ecomesh 2026 collection key epoch v1";
    /// Signature of each device over a device-link declaration.
    pub const DEVICE_LINK: &str = "ecomesh 2026 device-link v1";
    /// Signatures of the seed 8.3 challenge-response.
    pub const AUTH: &str = "ecomesh 2026 peer-auth v1";
    /// Noise prologue, mixed into every handshake hash.
    pub const NOISE_PROLOGUE: &str = "ecomesh 2026 noise v1";
    /// Signature binding a Noise static key and handshake to an Ed25519 identity.
    pub const NOISE_IDENTITY: &str = "ecomesh 2026 noise identity v1";
}
