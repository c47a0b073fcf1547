//! Building a [`Node`]: configuration, identity, transports, content routing.

use std::path::PathBuf;
use std::sync::Arc;

use ecomesh_identity::Identity;
use ecomesh_types::TransportAdapter;

use crate::config::NodeConfig;
use crate::error::{Result, SyncError};
use crate::front::{DocumentFront, FrontFactory, LocalStorage};
use crate::layout::DataLayout;
use crate::node::Node;
use crate::routing::ContentRouting;

/// Collects what a [`Node`] runs with; [`start`](Self::start) opens and runs it.
#[must_use = "a builder does nothing until `start`"]
pub struct NodeBuilder {
    pub(crate) layout: DataLayout,
    pub(crate) identity: Option<Identity>,
    pub(crate) transports: Vec<Arc<dyn TransportAdapter>>,
    pub(crate) config: NodeConfig,
    pub(crate) routing: Option<Arc<dyn ContentRouting>>,
    pub(crate) front: Option<FrontFactory>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("data_dir", &self.layout.root())
            .field("transports", &self.transports.len())
            .field("config", &self.config)
            .field("content_routing", &self.routing.is_some())
            .field("front", &self.front.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    pub(crate) fn new(data_dir: impl Into<PathBuf>) -> NodeBuilder {
        NodeBuilder {
            layout: DataLayout::new(data_dir),
            identity: None,
            transports: Vec::new(),
            config: NodeConfig::default(),
            routing: None,
            front: None,
        }
    }

    /// The node's identity. Without one, `start` loads `identity.key` from
    /// the data directory, generating and saving a new key when there is none.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// A transport the mesh runs over (call once per transport). It should be
    /// started already; the node stops it at [`Node::shutdown`].
    pub fn transport(mut self, transport: Arc<dyn TransportAdapter>) -> Self {
        self.transports.push(transport);
        self
    }

    /// The node's tunables (default: [`NodeConfig::default`]).
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// The content location index the blob service announces to and looks
    /// holders up in. Without one, blobs are found only among connected peers.
    pub fn content_routing(mut self, routing: Arc<dyn ContentRouting>) -> Self {
        self.routing = Some(routing);
        self
    }

    /// A layer the replicated collections' reads and writes go through (see
    /// [`DocumentFront`]), built by `factory` over the node's local store
    /// when the node starts. Without one they use the local store.
    pub fn documents(
        mut self,
        factory: impl FnOnce(Arc<LocalStorage>) -> Result<Arc<dyn DocumentFront>> + Send + 'static,
    ) -> Self {
        self.front = Some(Box::new(factory));
        self
    }

    /// Opens the store, queue, stream and mesh state in the data directory
    /// (created, mode 0700, when missing), hands the transports to the mesh
    /// and starts the node's driving task. Needs a tokio runtime.
    pub async fn start(self) -> Result<Node> {
        let root = self.layout.root().to_path_buf();
        create_dir(&root)?;
        let identity = match self.identity.clone() {
            Some(i) => i,
            None => Identity::load_or_generate(&self.layout.identity())?,
        };
        if let Err(e) = tokio::runtime::Handle::try_current() {
            return Err(SyncError::InvalidArgument(format!("no tokio runtime: {e}")));
        }
        Node::open(self, identity)
    }
}

fn create_dir(root: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| SyncError::io("creating the data directory", root, e))
}
