//! Encrypted ("private") collections: reach narrower than commons enforced by
//! a collection key (`docs/privacy.md`).
//!
//! The owner deals each key epoch ([`KeyEpoch`]: the key sealed to every
//! member, Shamir shares for recovery, signed by the owner) and publishes it
//! as a document of [`KEYS_COLLECTION`], which replicates like any other, so
//! the epochs reach members through relays that cannot open them. A node
//! accepts epochs of a collection only from the owner it was told to trust
//! ([`Node::join_private_collection`]), recorded in the local collection
//! `_private`. At rest the keys are those published epochs, sealed to this
//! device's identity key; the store's keyring holds them opened in memory.

use std::sync::Mutex;

use ecomesh_identity::PublicKey;
use ecomesh_identity::group::GroupKey;
use ecomesh_identity::key_epoch::KeyEpoch;
use ecomesh_types::{ContentId, Map, SetOptions, StorageAdapter, Value};

use crate::error::{Result, SyncError};
use crate::node::{Inner, Node, lock};

/// The replicated collection holding every published key epoch (document
/// `<collection>#<epoch>`, field `epoch`: the signed [`KeyEpoch`] bytes).
pub const KEYS_COLLECTION: &str = "ecomesh-keys";
/// The local collection recording, per encrypted collection, the owner this
/// node accepts key epochs from (field `owner`: the Ed25519 key).
const TRUST_COLLECTION: &str = "_private";

/// What this node knows of one encrypted collection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrivateCollection {
    /// The collection.
    pub name: String,
    /// The owner whose epochs this node accepts.
    pub owner: PublicKey,
    /// The latest epoch published by the owner that this node holds.
    pub latest_epoch: Option<u64>,
    /// The members of that epoch.
    pub members: Vec<PublicKey>,
    /// The epoch this node writes under (`None`: not a member of the latest).
    pub current_epoch: Option<u64>,
    /// The epochs whose key this node holds (it reads versions of those).
    pub epochs_held: Vec<u64>,
}

/// The node's bookkeeping: the key collection's root at the last refresh.
#[derive(Default)]
pub(crate) struct PrivateState {
    seen_root: Mutex<Option<Option<ContentId>>>,
}

fn invalid(msg: impl Into<String>) -> SyncError {
    SyncError::InvalidArgument(msg.into())
}

impl Node {
    /// Creates the encrypted collection `collection`, owned by this node, with
    /// `members` (this node is always one): deals epoch 0 and publishes it.
    /// From now on every write to it, here and on members, is sealed.
    pub async fn create_private_collection(
        &self,
        collection: &str,
        members: &[PublicKey],
    ) -> Result<u64> {
        self.running()?;
        check_name(collection)?;
        if self.trusted_owner(collection)?.is_some() {
            return Err(invalid(format!(
                "{collection} is already an encrypted collection here"
            )));
        }
        let me = *self.inner.identity.public_key();
        self.record_trust(collection, &me)?;
        self.deal(collection, None, members).await
    }

    /// Accepts key epochs of `collection` from `owner` (whom the application
    /// trusts for it): writes to it are sealed (refused until a key arrives)
    /// and keys published for this node are taken in as they replicate.
    pub async fn join_private_collection(&self, collection: &str, owner: PublicKey) -> Result<()> {
        self.running()?;
        check_name(collection)?;
        self.record_trust(collection, &owner)?;
        self.inner.store.keyring().mark_encrypted(collection);
        self.inner.refresh_keys(true)?;
        Ok(())
    }

    /// The owner only: deals a new epoch to `members` (rotation on any
    /// membership change), so a member left out cannot read later writes.
    /// Returns the new epoch.
    pub async fn set_private_members(
        &self,
        collection: &str,
        members: &[PublicKey],
    ) -> Result<u64> {
        self.running()?;
        let me = *self.inner.identity.public_key();
        if self.trusted_owner(collection)? != Some(me) {
            return Err(invalid(format!(
                "only the owner of {collection} changes its members"
            )));
        }
        let previous = self.inner.store.keyring().current(collection);
        let Some(previous) = previous else {
            return Err(invalid(format!("no current key of {collection}")));
        };
        self.deal(collection, Some(&previous), members).await
    }

    /// The owner only: adds `member` (a new epoch).
    pub async fn add_private_member(&self, collection: &str, member: PublicKey) -> Result<u64> {
        let mut members = self.latest_members(collection)?;
        members.push(member);
        self.set_private_members(collection, &members).await
    }

    /// The owner only: removes `member` (a new epoch it is not dealt).
    pub async fn remove_private_member(&self, collection: &str, member: &PublicKey) -> Result<u64> {
        let members: Vec<PublicKey> = self
            .latest_members(collection)?
            .into_iter()
            .filter(|m| m != member)
            .collect();
        self.set_private_members(collection, &members).await
    }

    /// What this node knows of the encrypted collection `collection`.
    pub fn private_collection(&self, collection: &str) -> Result<Option<PrivateCollection>> {
        let Some(owner) = self.trusted_owner(collection)? else {
            return Ok(None);
        };
        let latest = self.inner.epochs_of(collection, &owner)?.into_iter().last();
        let keyring = self.inner.store.keyring();
        Ok(Some(PrivateCollection {
            name: collection.to_owned(),
            owner,
            latest_epoch: latest.as_ref().map(KeyEpoch::epoch),
            members: latest.map(|e| e.member_keys()).unwrap_or_default(),
            current_epoch: keyring.current(collection).map(|k| k.epoch()),
            epochs_held: keyring.epochs(collection),
        }))
    }

    /// Recovery (seed 8.2's k-of-n): this member's Shamir share of
    /// `collection`'s key at `epoch`, sealed to `to` (the device that
    /// rebuilds the key with [`recover_private_key`](Self::recover_private_key)).
    pub fn recovery_share(&self, collection: &str, epoch: u64, to: &PublicKey) -> Result<Vec<u8>> {
        let owner = self
            .trusted_owner(collection)?
            .ok_or_else(|| invalid(format!("{collection} is not an encrypted collection here")))?;
        let e = self
            .inner
            .epochs_of(collection, &owner)?
            .into_iter()
            .find(|e| e.epoch() == epoch)
            .ok_or_else(|| invalid(format!("no epoch {epoch} of {collection}")))?;
        let share = e.open_share(&self.inner.identity)?;
        Ok(ecomesh_identity::sealed::seal(to, &share.to_bytes())?)
    }

    /// Rebuilds a key of `collection` from at least its threshold of shares
    /// sealed to this node ([`recovery_share`](Self::recovery_share)), adds it
    /// to the keyring (for reading; writing needs a current key) and opens the
    /// versions it unlocks. Returns the recovered epoch.
    pub fn recover_private_key(&self, collection: &str, sealed_shares: &[Vec<u8>]) -> Result<u64> {
        let shares = sealed_shares
            .iter()
            .map(|s| {
                let plain = zeroize::Zeroizing::new(ecomesh_identity::sealed::open(
                    &self.inner.identity,
                    s,
                )?);
                ecomesh_identity::group::GroupShare::from_bytes(&plain)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let key = GroupKey::recover(&shares)?;
        let epoch = key.epoch();
        let store = &self.inner.store;
        store.keyring().add(collection, key, false);
        store.open_held(collection)?;
        Ok(epoch)
    }

    /// The root CID of `collection`'s Merkle index here (`None` when empty):
    /// equal on two nodes when they hold the same versions, which for an
    /// encrypted collection are the ciphertext versions, whoever holds a key.
    pub fn collection_root(&self, collection: &str) -> Result<Option<ContentId>> {
        Ok(self.inner.store.collection_root(collection)?)
    }

    fn trusted_owner(&self, collection: &str) -> Result<Option<PublicKey>> {
        self.inner.trusted_owner(collection)
    }

    fn record_trust(&self, collection: &str, owner: &PublicKey) -> Result<()> {
        let mut fields = Map::new();
        fields.insert("owner".into(), Value::Bytes(owner.to_bytes().to_vec()));
        self.inner
            .store
            .set(TRUST_COLLECTION, collection, fields, SetOptions::REPLACE)?;
        Ok(())
    }

    fn latest_members(&self, collection: &str) -> Result<Vec<PublicKey>> {
        Ok(self
            .private_collection(collection)?
            .map(|p| p.members)
            .unwrap_or_default())
    }

    async fn deal(
        &self,
        collection: &str,
        previous: Option<&GroupKey>,
        members: &[PublicKey],
    ) -> Result<u64> {
        let (key, epoch) =
            KeyEpoch::deal(&self.inner.identity, collection, previous, members, None)?;
        let n = epoch.epoch();
        let mut fields = Map::new();
        fields.insert("epoch".into(), Value::Bytes(epoch.to_bytes()));
        StorageAdapter::set(
            &*self.inner.p2p,
            KEYS_COLLECTION,
            &format!("{collection}#{n}"),
            fields,
            SetOptions::REPLACE,
        )
        .await?;
        let store = &self.inner.store;
        store.keyring().add(collection, key, true);
        store.open_held(collection)?;
        tracing::info!(
            collection,
            epoch = n,
            members = epoch.member_keys().len(),
            "collection key dealt"
        );
        self.wake();
        Ok(n)
    }
}

fn check_name(collection: &str) -> Result<()> {
    if collection.is_empty() || collection.starts_with('_') || collection == KEYS_COLLECTION {
        return Err(invalid(format!(
            "{collection:?} cannot be an encrypted collection (empty, local or the key collection)"
        )));
    }
    Ok(())
}

impl Inner {
    pub(crate) fn trusted_owner(&self, collection: &str) -> Result<Option<PublicKey>> {
        let Some(doc) = self.store.get(TRUST_COLLECTION, collection)? else {
            return Ok(None);
        };
        match doc.fields.get("owner") {
            Some(Value::Bytes(b)) => {
                let bytes: [u8; 32] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| invalid("stored owner is not 32 bytes"))?;
                Ok(Some(PublicKey::from_bytes(&bytes)?))
            }
            _ => Err(invalid("stored owner missing")),
        }
    }

    /// The epochs of `collection` signed by `owner` that this node holds, by epoch.
    fn epochs_of(&self, collection: &str, owner: &PublicKey) -> Result<Vec<KeyEpoch>> {
        let mut out: Vec<KeyEpoch> = Vec::new();
        for doc in self.store.scan_collection(KEYS_COLLECTION)? {
            let Some(Value::Bytes(b)) = doc.fields.get("epoch") else {
                continue;
            };
            match KeyEpoch::from_bytes(b) {
                Ok(e) if e.collection() == collection && e.owner() == owner => out.push(e),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(doc = %doc.id, error = %e, "key epoch refused");
                }
            }
        }
        out.sort_by_key(KeyEpoch::epoch);
        Ok(out)
    }

    /// Takes in the key epochs published for this node, when the key
    /// collection changed since the last call (or always with `force`):
    /// every epoch of a trusted owner this node is a member of goes into the
    /// keyring, the latest one current when this node is one of its members
    /// (otherwise this node no longer writes the collection), and held
    /// versions they open are merged.
    pub(crate) fn refresh_keys(&self, force: bool) -> Result<()> {
        let root = self.store.collection_root(KEYS_COLLECTION)?;
        {
            let mut seen = lock(&self.private.seen_root);
            if !force && seen.as_ref() == Some(&root) {
                return Ok(());
            }
            *seen = Some(root);
        }
        let keyring = self.store.keyring();
        let me = self.identity.public_key();
        for trust in self.store.scan_collection(TRUST_COLLECTION)? {
            let collection = trust.id.as_str();
            let Some(owner) = self.trusted_owner(collection)? else {
                continue;
            };
            keyring.mark_encrypted(collection);
            let epochs = self.epochs_of(collection, &owner)?;
            for e in &epochs {
                if e.is_member(me) {
                    match e.open_key(&self.identity) {
                        Ok(key) => {
                            keyring.add(collection, key, false);
                        }
                        Err(err) => {
                            tracing::warn!(collection, epoch = e.epoch(), error = %err, "own key of an epoch does not open");
                        }
                    }
                }
            }
            match epochs.last() {
                Some(latest) if latest.is_member(me) => {
                    if let Some(k) = keyring.key(collection, latest.group_id(), latest.epoch()) {
                        keyring.add(collection, k, true);
                    }
                }
                Some(latest) => {
                    if keyring.current(collection).is_some() {
                        tracing::info!(
                            collection,
                            epoch = latest.epoch(),
                            "removed from an encrypted collection"
                        );
                    }
                    keyring.retire_current(collection);
                }
                None => {}
            }
            self.store.open_held(collection)?;
        }
        Ok(())
    }
}
