//! Content location: who holds a piece of content, behind a trait so this
//! crate links no transport.

use ecomesh_types::{BoxFuture, ContentId, PeerId};

/// The error a [`ContentRouting`] implementation reports, boxed so each
/// implementation keeps its own type as the source.
pub type RoutingError = Box<dyn std::error::Error + Send + Sync>;

/// A content location index (for example the internet transport's Kademlia
/// provider records). The node announces the blobs it holds through it and
/// looks up holders of a blob it lacks before asking the blob service.
///
/// Implementations live above this crate (the `ecomesh` binary adapts the
/// internet transport); every method may be slow and is bounded by the
/// node's [`NodeConfig`](crate::NodeConfig) timeouts.
pub trait ContentRouting: Send + Sync + 'static {
    /// Publishes this node as a holder of `id`.
    fn provide(&self, id: ContentId) -> BoxFuture<'static, Result<(), RoutingError>>;
    /// The peers that announced they hold `id`.
    fn find_providers(
        &self,
        id: ContentId,
    ) -> BoxFuture<'static, Result<Vec<PeerId>, RoutingError>>;
    /// Connects to `peer` (found as a provider), so the mesh can reach it.
    fn connect(&self, peer: PeerId) -> BoxFuture<'static, Result<(), RoutingError>>;
}
