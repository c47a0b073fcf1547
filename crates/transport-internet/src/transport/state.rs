//! The state the [`InternetTransport`](super::InternetTransport) handle shares with its
//! swarm task, and what survives a `stop`/`start`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ecomesh_identity::AccessPolicy;
use ecomesh_types::{Listeners, NetworkMessage, PeerId, PeerInfo, TransportEvent};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, gossipsub};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::peer_id::PeerTable;

use super::command::Command;
use super::{GossipMessage, InternetConfig, InternetEvent, RequestHandler};

pub(super) struct PeerEntry {
    pub(super) info: PeerInfo,
}

#[derive(Clone)]
pub(super) struct Redial {
    pub(super) addrs: Vec<Multiaddr>,
    pub(super) backoff: Duration,
    pub(super) due: Option<Instant>,
}

/// What survives `stop`/`start`: redial targets, bound addresses and subscriptions.
#[derive(Default)]
pub(super) struct Carry {
    pub(super) redial: HashMap<libp2p::PeerId, Redial>,
    pub(super) rebind: Vec<Multiaddr>,
    pub(super) topics: HashMap<gossipsub::TopicHash, (String, Vec<mpsc::Sender<GossipMessage>>)>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) active: bool,
    pub(super) cmd: Option<mpsc::Sender<Command>>,
    pub(super) task: Option<JoinHandle<Carry>>,
    pub(super) carry: Option<Carry>,
    pub(super) peers: HashMap<PeerId, PeerEntry>,
    pub(super) table: Option<PeerTable>,
    pub(super) listen_addrs: Vec<Multiaddr>,
    /// Opens message streams; set while running with `message_streams` on.
    pub(super) streams: Option<libp2p_stream::Control>,
    /// Peers whose identify lists the message-stream protocol.
    pub(super) stream_capable: HashSet<PeerId>,
    /// The queue of each peer's message-stream writer task.
    pub(super) writers: HashMap<PeerId, mpsc::Sender<NetworkMessage>>,
    /// Inbound message streams open, per peer.
    pub(super) inbound_streams: HashMap<libp2p::PeerId, usize>,
    /// The task accepting inbound message streams.
    pub(super) accept_task: Option<JoinHandle<()>>,
}

impl State {
    /// Forgets the message-stream state of a peer that is gone: its writer's queue
    /// closes (the writer drains it and ends).
    pub(super) fn forget_streams(&mut self, peer: &PeerId) {
        self.stream_capable.remove(peer);
        self.writers.remove(peer);
    }
}

pub(super) struct Inner {
    pub(super) keypair: Keypair,
    pub(super) me: PeerId,
    pub(super) me_lp: libp2p::PeerId,
    pub(super) policy: Arc<AccessPolicy>,
    pub(super) config: InternetConfig,
    pub(super) listeners: Listeners<TransportEvent>,
    pub(super) net_listeners: Listeners<InternetEvent>,
    pub(super) handler: Mutex<Option<Arc<dyn RequestHandler>>>,
    pub(super) state: Mutex<State>,
    pub(super) lifecycle: tokio::sync::Mutex<()>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
