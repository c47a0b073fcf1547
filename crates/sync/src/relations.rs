//! Relationships (issue 20, item 2; seed 001 reach): how this node relates
//! to other peers, which every reach decision uses.
//!
//! Three sources, the first that knows a peer wins:
//! 1. device links: a linked device is [`Trust::OwnDevice`] (`link/`);
//! 2. relationships set at run time ([`Node::set_relationship`]), kept in the
//!    local collection [`RELATIONS_COLLECTION`] so they survive a restart;
//! 3. relationships from configuration
//!    ([`NodeConfig::relationships`](crate::NodeConfig::relationships), the
//!    daemon's `[relationships]` table), applied at every start, never stored;
//!
//! and otherwise what [`P2PConfig::trust`](ecomesh_p2p_storage::P2PConfig::trust)
//! says (by default [`Trust::Stranger`]). The combined function replaces
//! `P2PConfig::trust` when the node opens, so replication (partner choice,
//! what is served to and taken from a peer, anti-entropy, delta pages,
//! fetches, sneakernet imports) and the blob service ask it at every check:
//! a change applies at once, also to sessions already open.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ecomesh_p2p_storage::{SledStore, TrustFn};
use ecomesh_types::{Map, PeerId, SetOptions, Value};

use crate::Trust;
use crate::error::{Result, SyncError};
use crate::node::Node;

/// The local collection holding the relationships set at run time (document
/// id: the peer id; field `level`: the [`Trust::name`]). Local collections
/// never leave the node.
pub const RELATIONS_COLLECTION: &str = "_relations";

/// Where a relationship comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RelationSource {
    /// A device link (own devices).
    Link,
    /// Set at run time ([`Node::set_relationship`]), stored.
    Runtime,
    /// Configuration ([`NodeConfig::relationships`](crate::NodeConfig::relationships)).
    Config,
}

impl RelationSource {
    /// `link`, `runtime` or `config`.
    pub const fn name(self) -> &'static str {
        match self {
            RelationSource::Link => "link",
            RelationSource::Runtime => "runtime",
            RelationSource::Config => "config",
        }
    }
}

/// One peer this node relates to, as [`Node::relationships`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Relationship {
    /// The peer.
    pub peer: PeerId,
    /// Its trust circle, the one reach decisions use.
    pub trust: Trust,
    /// Where that comes from.
    pub source: RelationSource,
}

/// The runtime and configured relationships of a node.
pub(crate) struct Relations {
    runtime: Arc<RwLock<BTreeMap<PeerId, Trust>>>,
    configured: Arc<BTreeMap<PeerId, Trust>>,
}

fn read(
    l: &RwLock<BTreeMap<PeerId, Trust>>,
) -> std::sync::RwLockReadGuard<'_, BTreeMap<PeerId, Trust>> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

impl Relations {
    /// Reads the stored relationships from `store` (an entry that does not
    /// parse is skipped with a warning) beside the `configured` ones.
    pub(crate) fn open(
        store: &SledStore,
        configured: BTreeMap<PeerId, Trust>,
    ) -> Result<Relations> {
        let mut runtime = BTreeMap::new();
        for doc in store.scan_collection(RELATIONS_COLLECTION)? {
            let level = match doc.fields.get("level") {
                Some(Value::Text(t)) => Trust::from_name(t),
                _ => None,
            };
            match (doc.id.parse::<PeerId>(), level) {
                (Ok(peer), Some(trust)) => {
                    runtime.insert(peer, trust);
                }
                _ => {
                    tracing::warn!(id = %doc.id, "stored relationship skipped: not a peer id and level")
                }
            }
        }
        Ok(Relations {
            runtime: Arc::new(RwLock::new(runtime)),
            configured: Arc::new(configured),
        })
    }

    /// `base` with the runtime, then the configured relationships over it.
    pub(crate) fn trust_over(&self, base: TrustFn) -> TrustFn {
        let runtime = self.runtime.clone();
        let configured = self.configured.clone();
        Arc::new(move |p: &PeerId| {
            if let Some(t) = read(&runtime).get(p) {
                return *t;
            }
            configured.get(p).copied().unwrap_or_else(|| base(p))
        })
    }
}

/// `text` as a peer id, or [`SyncError::InvalidPeerId`].
pub fn parse_peer_id(text: &str) -> Result<PeerId> {
    text.trim()
        .parse::<PeerId>()
        .map_err(|e| SyncError::InvalidPeerId {
            text: text.chars().take(80).collect(),
            reason: e.to_string(),
        })
}

/// `text` as a trust circle ([`Trust::from_name`]), or
/// [`SyncError::InvalidArgument`] listing the names.
pub fn parse_trust(text: &str) -> Result<Trust> {
    Trust::from_name(text).ok_or_else(|| {
        SyncError::InvalidArgument(format!(
            "{:?} is not a relationship level; levels are family, neighbour, municipal, \
             bioregional and stranger (own devices come from device links)",
            text.chars().take(40).collect::<String>()
        ))
    })
}

impl Node {
    /// Sets how this node relates to `peer` from now on (and after a
    /// restart): `family`, `neighbour`, `municipal`, `bioregional`, or
    /// `stranger` (which overrides a configured level). It wins over the
    /// configuration; a linked own device stays [`Trust::OwnDevice`].
    /// Refused: this node itself, and [`Trust::OwnDevice`] (own devices come
    /// from device links, [`Node::link_new`]).
    pub fn set_relationship(&self, peer: PeerId, trust: Trust) -> Result<()> {
        if peer == self.peer_id() {
            return Err(SyncError::InvalidArgument(
                "that is this node's own id; a relationship is with another peer".into(),
            ));
        }
        if trust == Trust::OwnDevice {
            return Err(SyncError::InvalidArgument(
                "own devices come from device links (ecomesh link new / accept), not from a \
                 relationship"
                    .into(),
            ));
        }
        let mut fields = Map::new();
        fields.insert("level".into(), Value::Text(trust.name().into()));
        self.inner.store.set(
            RELATIONS_COLLECTION,
            &peer.to_string(),
            fields,
            SetOptions::REPLACE,
        )?;
        self.inner
            .relations
            .runtime
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, trust);
        tracing::info!(%peer, level = trust.name(), "relationship set");
        Ok(())
    }

    /// Removes the relationship set at run time with `peer`; the peer is then
    /// what the configuration says, or a stranger. Returns whether there was one.
    pub fn remove_relationship(&self, peer: &PeerId) -> Result<bool> {
        let had = read(&self.inner.relations.runtime).contains_key(peer);
        if had {
            self.inner
                .store
                .delete(RELATIONS_COLLECTION, &peer.to_string())?;
            self.inner
                .relations
                .runtime
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(peer);
            tracing::info!(%peer, "relationship removed");
        }
        Ok(had)
    }

    /// Every peer this node has a relationship with, by peer id, with the
    /// level reach uses and its source (own devices, then the runtime
    /// entries, then the configured ones no runtime entry overrides).
    pub fn relationships(&self) -> Vec<Relationship> {
        let mut out: BTreeMap<PeerId, Relationship> = BTreeMap::new();
        let rel = &self.inner.relations;
        for (peer, trust) in rel.configured.iter() {
            out.insert(
                *peer,
                Relationship {
                    peer: *peer,
                    trust: *trust,
                    source: RelationSource::Config,
                },
            );
        }
        for (peer, trust) in read(&rel.runtime).iter() {
            out.insert(
                *peer,
                Relationship {
                    peer: *peer,
                    trust: *trust,
                    source: RelationSource::Runtime,
                },
            );
        }
        for d in self.own_devices() {
            out.insert(
                d.peer_id,
                Relationship {
                    peer: d.peer_id,
                    trust: Trust::OwnDevice,
                    source: RelationSource::Link,
                },
            );
        }
        out.into_values().collect()
    }
}
