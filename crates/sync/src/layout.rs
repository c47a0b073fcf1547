//! The files a node keeps under its data directory.

use std::path::{Path, PathBuf};

/// The files of one node under its data directory. The names are the ones
/// the `ecomesh` daemon has always used, so a data directory moves freely
/// between the daemon and an embedding application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataLayout {
    root: PathBuf,
}

impl DataLayout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataLayout {
        DataLayout { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The identity key file.
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    /// The sled store directory.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// The persisted store-and-forward buffer.
    pub fn buffer(&self) -> PathBuf {
        self.root.join("mesh-buffer.bin")
    }

    /// The persisted set of messages waiting for an ACK.
    pub fn pending(&self) -> PathBuf {
        self.root.join("mesh-pending.bin")
    }

    /// The public keys of peers met so far.
    pub fn known_keys(&self) -> PathBuf {
        self.root.join("known-keys.bin")
    }

    /// The node's stream of positioned versions (a sled database).
    pub fn stream(&self) -> PathBuf {
        self.root.join("stream")
    }

    /// The node's device links (own devices and the user they share).
    pub fn devices(&self) -> PathBuf {
        self.root.join("devices.bin")
    }

    /// The durable sync queue (a sled database).
    pub fn queue(&self) -> PathBuf {
        self.root.join("queue")
    }
}
