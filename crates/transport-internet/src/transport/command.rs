//! [`Command`]: what the [`InternetTransport`](super::InternetTransport) handle asks of
//! the swarm task, each with its oneshot reply.

use ecomesh_types::PeerId;
use libp2p::Multiaddr;
use libp2p::kad::RecordKey;
use tokio::sync::{mpsc, oneshot};

use crate::error::InternetError;
use crate::protocol::{Request, Response};

use super::state::{Inner, lock};
use super::{GossipMessage, LookupStats};

/// Sends the command `make` builds to the swarm task and waits for its reply;
/// [`InternetError::NotStarted`] when the task is not running, [`InternetError::Closed`]
/// when it ended before answering.
pub(super) async fn call<T>(
    inner: &Inner,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, InternetError> {
    let tx = lock(&inner.state)
        .cmd
        .clone()
        .ok_or(InternetError::NotStarted)?;
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply))
        .await
        .map_err(|_| InternetError::Closed)?;
    rx.await.map_err(|_| InternetError::Closed)
}

// Commands and pending queries live briefly in a bounded channel or map; boxing the
// large variants would only add allocations.
#[allow(clippy::large_enum_variant)]
pub(super) enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, InternetError>>,
    },
    Connect {
        peer: libp2p::PeerId,
        reply: oneshot::Sender<Result<PeerId, InternetError>>,
    },
    Disconnect {
        peer: libp2p::PeerId,
        reply: oneshot::Sender<()>,
    },
    Request {
        peer: libp2p::PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, InternetError>>,
    },
    Provide {
        key: RecordKey,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    FindProviders {
        key: RecordKey,
        reply: oneshot::Sender<Result<(Vec<libp2p::PeerId>, LookupStats), InternetError>>,
    },
    ClosestPeers {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<(Vec<libp2p::PeerId>, LookupStats), InternetError>>,
    },
    PutRecord {
        key: RecordKey,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    GetRecord {
        key: RecordKey,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, InternetError>>,
    },
    Subscribe {
        topic: String,
        tx: mpsc::Sender<GossipMessage>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    TopicPeers {
        topic: String,
        mesh_only: bool,
        reply: oneshot::Sender<Vec<libp2p::PeerId>>,
    },
    ListenOn {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), InternetError>>,
    },
    /// Lists a peer that opened a message stream as reachable, as any request does.
    Register {
        peer: libp2p::PeerId,
        reply: oneshot::Sender<()>,
    },
    Stop,
}
