//! GossipSub: topic subscriptions and publishing, delivery of received messages, and our
//! address announcements on the peers topic.

use libp2p::{Multiaddr, gossipsub};
use tokio::sync::{mpsc, oneshot};

use crate::error::InternetError;
use crate::peer_id::ecomesh_peer_id;
use crate::protocol::{decode_announcement, encode_announcement};

use super::super::GossipMessage;
use super::Driver;

impl Driver {
    pub(super) fn announce(&mut self) {
        let addrs: Vec<Multiaddr> = self
            .swarm
            .external_addresses()
            .chain(self.swarm.listeners())
            .cloned()
            .collect();
        let Ok(body) = encode_announcement(&addrs) else {
            return;
        };
        let topic = self.announce_topic.clone();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, body) {
            Ok(_) => tracing::trace!("announced on the peers topic"),
            Err(e) => tracing::trace!(error = %e, "no announcement"),
        }
    }

    /// Joins `topic`, delivering its messages to `tx` (kept across restarts).
    pub(super) fn subscribe(
        &mut self,
        topic: String,
        tx: mpsc::Sender<GossipMessage>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    ) {
        let t = gossipsub::IdentTopic::new(topic.clone());
        match self.swarm.behaviour_mut().gossipsub.subscribe(&t) {
            Ok(_) => {
                self.carry
                    .topics
                    .entry(t.hash())
                    .or_insert_with(|| (topic, Vec::new()))
                    .1
                    .push(tx);
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(InternetError::Gossip(e.to_string())));
            }
        }
    }

    /// Publishes `data` on `topic`.
    pub(super) fn publish(
        &mut self,
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), InternetError>>,
    ) {
        let t = gossipsub::IdentTopic::new(topic);
        let r = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(t, data)
            .map(|_| ())
            .map_err(|e| InternetError::Gossip(e.to_string()));
        let _ = reply.send(r);
    }

    /// The peers subscribed to `topic` (`mesh_only`: those in our mesh for it).
    pub(super) fn topic_peers(
        &mut self,
        topic: String,
        mesh_only: bool,
        reply: oneshot::Sender<Vec<libp2p::PeerId>>,
    ) {
        let hash = gossipsub::IdentTopic::new(topic).hash();
        let g = &self.swarm.behaviour().gossipsub;
        let peers: Vec<libp2p::PeerId> = if mesh_only {
            g.mesh_peers(&hash).copied().collect()
        } else {
            g.all_peers()
                .filter(|(_, ts)| ts.contains(&&hash))
                .map(|(p, _)| *p)
                .collect()
        };
        let _ = reply.send(peers);
    }

    pub(super) fn on_gossip(&mut self, ev: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message,
            ..
        } = ev
        else {
            tracing::trace!(?ev, "gossipsub");
            return;
        };
        if let Some(src) = message.source
            && !self.swarm.behaviour().gate.allows(&src)
        {
            return;
        }
        if message.topic == self.announce_topic.hash() {
            if let (Some(src), Ok(addrs)) = (message.source, decode_announcement(&message.data)) {
                let b = self.swarm.behaviour_mut();
                b.gate.add_addresses(src, &addrs);
                if let Some(k) = b.kad.as_mut() {
                    for a in addrs {
                        k.add_address(&src, a);
                    }
                }
            }
            return;
        }
        let Some((name, senders)) = self.carry.topics.get_mut(&message.topic) else {
            return;
        };
        let msg = GossipMessage {
            topic: name.clone(),
            source: message.source.and_then(|s| ecomesh_peer_id(&s).ok()),
            via: ecomesh_peer_id(&propagation_source).ok(),
            data: message.data,
        };
        senders.retain(|tx| !tx.is_closed());
        for tx in senders.iter() {
            if tx.try_send(msg.clone()).is_err() {
                tracing::warn!(topic = %msg.topic, "subscriber queue full; message dropped");
            }
        }
    }
}
