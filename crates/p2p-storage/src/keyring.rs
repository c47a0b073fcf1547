//! The collection keys a store seals and opens versions with (encrypted
//! collections, `docs/privacy.md`).
//!
//! A collection marked encrypted has its versions' deltas sealed under its
//! current key ([`Keyring::current`]); every epoch's key this node was given
//! stays here so older versions keep opening. The keyring is in memory only:
//! its owner (the sync node) keeps the keys at rest sealed to the device's own
//! identity and loads them at start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use ecomesh_identity::group::{GroupId, GroupKey};

/// The keys of one collection.
#[derive(Default)]
struct CollectionKeys {
    /// The epoch new writes are sealed under (`None`: none given, or this
    /// node is no longer a member).
    current: Option<(GroupId, u64)>,
    keys: BTreeMap<(GroupId, u64), GroupKey>,
}

/// Collection keys by collection, epoch and group; shared by the store and
/// its owner. Cheap to read; every method takes a short lock.
#[derive(Default)]
pub struct Keyring {
    encrypted: RwLock<BTreeSet<String>>,
    collections: RwLock<BTreeMap<String, CollectionKeys>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("encrypted", &*read(&self.encrypted))
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Keyring {
    /// Marks `collection` encrypted: from now on a local write to it is sealed
    /// under its current key, or refused ([`crate::StoreError::NoCollectionKey`])
    /// when this node holds none.
    pub fn mark_encrypted(&self, collection: &str) {
        write(&self.encrypted).insert(collection.to_owned());
    }

    /// Whether `collection` is marked encrypted.
    pub fn is_encrypted(&self, collection: &str) -> bool {
        read(&self.encrypted).contains(collection)
    }

    /// Adds a key of `collection` (marking it encrypted). With `current`, new
    /// writes are sealed under it, unless a later epoch of the same group is
    /// already current. Returns whether the key was new.
    pub fn add(&self, collection: &str, key: GroupKey, current: bool) -> bool {
        self.mark_encrypted(collection);
        let mut all = write(&self.collections);
        let entry = all.entry(collection.to_owned()).or_default();
        let id = (key.group_id(), key.epoch());
        if current && entry.current.is_none_or(|(g, e)| g != id.0 || e <= id.1) {
            entry.current = Some(id);
        }
        entry.keys.insert(id, key).is_none()
    }

    /// Stops sealing new writes of `collection` (this node was removed from
    /// it): older keys stay, so older versions still open, and writes are
    /// refused until a new current key is added.
    pub fn retire_current(&self, collection: &str) {
        if let Some(entry) = write(&self.collections).get_mut(collection) {
            entry.current = None;
        }
    }

    /// The key new writes of `collection` are sealed under.
    pub fn current(&self, collection: &str) -> Option<GroupKey> {
        let all = read(&self.collections);
        let entry = all.get(collection)?;
        entry.keys.get(&entry.current?).cloned()
    }

    /// The key of `collection` for `group` at `epoch`, if this node holds it.
    pub fn key(&self, collection: &str, group: GroupId, epoch: u64) -> Option<GroupKey> {
        read(&self.collections)
            .get(collection)?
            .keys
            .get(&(group, epoch))
            .cloned()
    }

    /// The epochs of `collection` this node holds keys for, oldest first.
    pub fn epochs(&self, collection: &str) -> Vec<u64> {
        read(&self.collections)
            .get(collection)
            .map(|c| c.keys.keys().map(|(_, e)| *e).collect())
            .unwrap_or_default()
    }
}
