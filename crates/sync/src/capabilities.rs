//! Capabilities on the node (issue 20, item 3): non-public collections, and
//! the tokens that admit peers to be served them (`read`) or to push
//! versions of them (`write`). The checks themselves are the replication
//! adapter's (`ecomesh_p2p_storage::capabilities`); refusals are drained with
//! [`Node::capability_refusals`].

use std::time::Duration;

use ecomesh_identity::capability::{Action, Actions, Capability};
use ecomesh_p2p_storage::capabilities::CapabilityRefusal;
use ecomesh_types::PeerId;

use crate::error::{Result, SyncError};
use crate::node::Node;

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
        self.inner.p2p.capabilities().install(token.clone())?;
        tracing::info!(collection, %to, "capability granted");
        Ok(token)
    }

    /// Installs a token received from elsewhere (strictly decoded, its
    /// signature checked; whether its issuer counts is decided per collection
    /// by [`restrict_collection_to`](Self::restrict_collection_to)).
    pub fn install_capability(&self, bytes: &[u8]) -> Result<Capability> {
        let token = Capability::from_bytes(bytes)?;
        self.inner.p2p.capabilities().install(token.clone())?;
        Ok(token)
    }

    /// Revokes a token by id on this node: it admits no one here from now on.
    pub fn revoke_capability(&self, token_id: [u8; 16]) {
        self.inner.p2p.capabilities().revoke(token_id);
        tracing::info!("capability revoked");
    }

    /// The requests and pushes refused for want of a capability since the
    /// last call, oldest first (at most
    /// [`MAX_REFUSALS`](ecomesh_p2p_storage::capabilities::MAX_REFUSALS)).
    pub fn capability_refusals(&self) -> Vec<CapabilityRefusal> {
        self.inner.p2p.capabilities().drain_refusals()
    }
}
