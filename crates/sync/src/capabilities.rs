//! Capabilities on the node (issue 20, item 3): non-public collections, and
//! the tokens that admit peers to be served them (`read`) or to push
//! versions of them (`write`). Restrictions, tokens and revocations are kept
//! in the local collection [`CAPABILITIES_COLLECTION`] and restored at every
//! start, before any peer is served. The checks themselves are the replication
//! adapter's (`ecomesh_p2p_storage::capabilities`); refusals are drained with
//! [`Node::capability_refusals`] and reported as
//! [`SyncEvent::CapabilityRefused`](crate::SyncEvent::CapabilityRefused).

use std::collections::VecDeque;
use std::time::Duration;

use ecomesh_identity::capability::{Action, Actions, Capability};
use ecomesh_p2p_storage::capabilities::{CapabilityRefusal, MAX_REFUSALS};
use ecomesh_types::{Map, PeerId, SetOptions, Value};

use crate::error::{Result, SyncError};
use crate::events::SyncEvent;
use crate::node::{Inner, Node, lock};

/// The local collection holding this node's restricted collections
/// (document `restricted/<collection>`, field `issuer`: the peer id text),
/// tokens (`token/<id hex>`, field `token`: its bytes) and revoked token ids
/// (`revoked/<id hex>`).
pub const CAPABILITIES_COLLECTION: &str = "_capabilities";

/// A capability token id as text: 32 lower-case hex digits.
pub fn token_id_text(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token id from its text ([`token_id_text`]), or
/// [`SyncError::InvalidArgument`].
pub fn parse_token_id(text: &str) -> Result<[u8; 16]> {
    let t = text.trim();
    unhex(t).ok_or_else(|| {
        SyncError::InvalidArgument(format!(
            "{:?} is not a token id (32 hex digits)",
            t.chars().take(40).collect::<String>()
        ))
    })
}

fn unhex(text: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// The refusals taken from the replication adapter and not yet drained by
/// [`Node::capability_refusals`] (at most [`MAX_REFUSALS`], oldest dropped).
#[derive(Default)]
pub(crate) struct Refusals(std::sync::Mutex<VecDeque<CapabilityRefusal>>);

impl Inner {
    fn record_capability(&self, id: &str, field: &str, value: Value) -> Result<()> {
        let mut fields = Map::new();
        fields.insert(field.into(), value);
        self.store
            .set(CAPABILITIES_COLLECTION, id, fields, SetOptions::REPLACE)?;
        Ok(())
    }

    /// Restores the restricted collections, revocations and tokens kept in
    /// [`CAPABILITIES_COLLECTION`]; an entry that does not decode, verify or
    /// install is skipped with a warning (a restriction whose issuer does not
    /// parse is kept restricted to this node, the safe side).
    pub(crate) fn load_capabilities(&self) -> Result<()> {
        let gate = self.p2p.capabilities();
        let docs = self.store.scan_collection(CAPABILITIES_COLLECTION)?;
        for d in &docs {
            if let Some(c) = d.id.strip_prefix("restricted/") {
                let issuer = match d.fields.get("issuer") {
                    Some(Value::Text(t)) => t.parse().ok(),
                    _ => None,
                };
                let issuer = issuer.unwrap_or_else(|| {
                    tracing::warn!(
                        collection = c,
                        "stored restriction without a valid issuer; restricted to this node"
                    );
                    self.identity.peer_id()
                });
                gate.restrict(c, issuer);
            } else if let Some(id) = d.id.strip_prefix("revoked/").and_then(unhex) {
                gate.revoke(id);
            }
        }
        for d in &docs {
            if d.id.starts_with("token/") {
                let installed = match d.fields.get("token") {
                    Some(Value::Bytes(b)) => Capability::from_bytes(b)
                        .and_then(|t| gate.install(t))
                        .map_err(|e| e.to_string()),
                    _ => Err("no token bytes".to_owned()),
                };
                if let Err(e) = installed {
                    tracing::warn!(id = %d.id, error = %e, "stored capability skipped");
                }
            }
        }
        Ok(())
    }

    /// Takes the adapter's new refusals: each one is a
    /// [`SyncEvent::CapabilityRefused`] and is kept for
    /// [`Node::capability_refusals`].
    pub(crate) fn take_refusals(&self) {
        let new = self.p2p.capabilities().drain_refusals();
        if new.is_empty() {
            return;
        }
        let mut kept = lock(&self.refusals.0);
        let sync = lock(&self.sync);
        for r in new {
            sync.emit(SyncEvent::CapabilityRefused {
                peer: r.peer,
                collection: r.collection.clone(),
                action: r.action,
            });
            if kept.len() >= MAX_REFUSALS {
                kept.pop_front();
            }
            kept.push_back(r);
        }
    }
}

impl Node {
    /// Makes `collection` non-public on this node, under tokens issued by
    /// this node: peers without a valid token are not served it and their
    /// pushes of it are refused (and reported).
    pub fn restrict_collection(&self, collection: &str) -> Result<()> {
        self.restrict_collection_to(collection, self.peer_id())
    }

    /// Like [`restrict_collection`](Self::restrict_collection), counting the
    /// tokens issued by `issuer` (the collection's owner, when this node is
    /// another replica of it).
    pub fn restrict_collection_to(&self, collection: &str, issuer: PeerId) -> Result<()> {
        if collection.is_empty() {
            return Err(SyncError::InvalidArgument("empty collection name".into()));
        }
        self.inner.record_capability(
            &format!("restricted/{collection}"),
            "issuer",
            Value::Text(issuer.to_string()),
        )?;
        self.inner.p2p.capabilities().restrict(collection, issuer);
        Ok(())
    }

    /// Issues (as this node) a token granting `to` the `actions` on
    /// `collection` for `valid_for` from now, installs it here, and returns
    /// it (its [`Capability::to_bytes`] go to other replicas that check it,
    /// through [`install_capability`](Self::install_capability)).
    pub fn grant_capability(
        &self,
        collection: &str,
        to: PeerId,
        actions: &[Action],
        valid_for: Duration,
    ) -> Result<Capability> {
        let now = self.inner.store.clock_now_ms();
        let until = now.saturating_add(u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX));
        let token = Capability::grant(
            &self.inner.identity,
            to,
            collection,
            Actions::new(actions.iter().copied())?,
            now,
            until,
        )?;
        self.keep_token(&token)?;
        tracing::info!(collection, %to, "capability granted");
        Ok(token)
    }

    /// Installs a token received from elsewhere (strictly decoded, its
    /// signature checked; whether its issuer counts is decided per collection
    /// by [`restrict_collection_to`](Self::restrict_collection_to)).
    pub fn install_capability(&self, bytes: &[u8]) -> Result<Capability> {
        let token = Capability::from_bytes(bytes)?;
        self.keep_token(&token)?;
        Ok(token)
    }

    /// Installs `token` in the gate and keeps it for the next start.
    fn keep_token(&self, token: &Capability) -> Result<()> {
        self.inner.p2p.capabilities().install(token.clone())?;
        self.inner.record_capability(
            &format!("token/{}", token_id_text(token.token_id())),
            "token",
            Value::Bytes(token.to_bytes()),
        )
    }

    /// Revokes a token by id on this node: it admits no one here from now
    /// on, also after a restart.
    pub fn revoke_capability(&self, token_id: [u8; 16]) -> Result<()> {
        self.inner.p2p.capabilities().revoke(token_id);
        let id = token_id_text(&token_id);
        self.inner
            .record_capability(&format!("revoked/{id}"), "revoked", Value::Bool(true))?;
        let token_doc = format!("token/{id}");
        if self
            .inner
            .store
            .get(CAPABILITIES_COLLECTION, &token_doc)?
            .is_some()
        {
            self.inner
                .store
                .delete(CAPABILITIES_COLLECTION, &token_doc)?;
        }
        tracing::info!(token = %id, "capability revoked");
        Ok(())
    }

    /// The collections restricted on this node, each with the peer whose
    /// tokens count for it, by name.
    pub fn restricted_collections(&self) -> Vec<(String, PeerId)> {
        self.inner.p2p.capabilities().restricted()
    }

    /// The capability tokens this node holds (granted here or installed),
    /// revoked ones excluded.
    pub fn capabilities(&self) -> Vec<Capability> {
        self.inner.p2p.capabilities().tokens()
    }

    /// The requests and pushes refused for want of a capability since the
    /// last call, oldest first (at most
    /// [`MAX_REFUSALS`](ecomesh_p2p_storage::capabilities::MAX_REFUSALS)).
    pub fn capability_refusals(&self) -> Vec<CapabilityRefusal> {
        self.inner.take_refusals();
        lock(&self.inner.refusals.0).drain(..).collect()
    }
}
