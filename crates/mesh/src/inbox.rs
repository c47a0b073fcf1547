//! The bounded queue of transport events between the transports' listeners
//! and [`MultiTransportManager::process`](crate::MultiTransportManager::process).
//!
//! When it is full, an event from an *established* neighbour (one that has
//! already sent valid messages, [`ReputationTable::established`](crate::reputation::ReputationTable::established))
//! takes the place of the newest queued event from a neighbour that is not
//! (its messages first, then its connection events); an event from anyone else
//! is dropped. So a storm of fresh identities (Sybil) or a flooding newcomer
//! cannot crowd an honest peer's messages out of the inbox (issue 20), while
//! every drop is still counted.

use std::collections::{BTreeSet, VecDeque};

use ecomesh_types::{PeerId, TransportEvent, TransportType};

/// The neighbour an event is about, when there is one.
fn source(ev: &TransportEvent) -> Option<PeerId> {
    match ev {
        TransportEvent::Message { from, .. } | TransportEvent::LinkMessage { from, .. } => {
            Some(*from)
        }
        TransportEvent::PeerDiscovered(info) => Some(info.peer_id),
        TransportEvent::PeerLost(p) => Some(*p),
        TransportEvent::Misbehaved { peer, .. } => Some(*peer),
        _ => None,
    }
}

fn is_message(ev: &TransportEvent) -> bool {
    matches!(
        ev,
        TransportEvent::Message { .. } | TransportEvent::LinkMessage { .. }
    )
}

/// The queue, its capacity, the count of dropped events and the neighbours
/// whose events are kept first.
#[derive(Debug)]
pub(crate) struct Inbox {
    events: VecDeque<(TransportType, TransportEvent)>,
    capacity: usize,
    dropped: u64,
    established: BTreeSet<PeerId>,
}

impl Inbox {
    /// An empty inbox of at most `capacity` events.
    pub(crate) fn new(capacity: usize) -> Self {
        Inbox {
            events: VecDeque::new(),
            capacity,
            dropped: 0,
            established: BTreeSet::new(),
        }
    }

    /// Queues `ev`; when full, makes room for an established neighbour's event
    /// or drops it (see the module documentation). Returns whether `ev` was queued.
    pub(crate) fn push(&mut self, ty: TransportType, ev: TransportEvent) -> bool {
        if self.events.len() < self.capacity {
            self.events.push_back((ty, ev));
            return true;
        }
        self.dropped += 1;
        let favoured = source(&ev).is_some_and(|p| self.established.contains(&p));
        if !favoured {
            return false;
        }
        let unfavoured = |(_, e): &(TransportType, TransportEvent)| {
            source(e).is_none_or(|p| !self.established.contains(&p))
        };
        let victim = self
            .events
            .iter()
            .rposition(|x| unfavoured(x) && is_message(&x.1))
            .or_else(|| self.events.iter().rposition(unfavoured));
        match victim {
            Some(i) => {
                self.events.remove(i);
                self.events.push_back((ty, ev));
                true
            }
            None => false,
        }
    }

    /// The oldest queued event.
    pub(crate) fn pop(&mut self) -> Option<(TransportType, TransportEvent)> {
        self.events.pop_front()
    }

    /// Events dropped (refused, or pushed out by an established neighbour's).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Replaces the set of established neighbours.
    pub(crate) fn set_established(&mut self, peers: BTreeSet<PeerId>) {
        self.established = peers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_types::{MessageId, NetworkMessage, PeerInfo, Signature};

    fn peer(n: u8) -> PeerId {
        PeerId::from_digest([n; 32])
    }

    fn msg(from: PeerId, n: u8) -> TransportEvent {
        TransportEvent::Message {
            from,
            message: NetworkMessage {
                id: MessageId([n; 16]),
                message_type: "t".into(),
                payload: Vec::new(),
                sender: from,
                recipient: None,
                timestamp_ms: 0,
                ttl_secs: 60,
                hop_count: 0,
                max_hops: 10,
                signature: Signature::UNSIGNED,
            },
        }
    }

    const W: TransportType = TransportType::Wired;

    /// A full inbox of strangers' events (a Sybil storm) still takes an
    /// established neighbour's messages, pushing out strangers' messages
    /// before their connection events; strangers are refused.
    #[test]
    fn an_established_neighbour_is_never_crowded_out() {
        let honest = peer(1);
        let mut inbox = Inbox::new(4);
        inbox.set_established([honest].into());
        assert!(inbox.push(
            W,
            TransportEvent::PeerDiscovered(PeerInfo::new(peer(10), W, 0))
        ));
        assert!(inbox.push(W, msg(peer(10), 1)));
        assert!(inbox.push(
            W,
            TransportEvent::PeerDiscovered(PeerInfo::new(peer(11), W, 0))
        ));
        assert!(inbox.push(W, msg(peer(11), 2)));
        assert!(
            !inbox.push(W, msg(peer(12), 3)),
            "a stranger is refused when full"
        );
        assert!(inbox.push(W, msg(honest, 4)));
        assert!(inbox.push(W, msg(honest, 5)));
        // Only connection events of strangers are left to push out.
        assert!(inbox.push(W, msg(honest, 6)));
        assert_eq!(inbox.dropped(), 4);
        let left: Vec<_> = std::iter::from_fn(|| inbox.pop()).map(|(_, e)| e).collect();
        assert_eq!(left.len(), 4);
        assert!(matches!(&left[0], TransportEvent::PeerDiscovered(i) if i.peer_id == peer(10)));
        assert_eq!(left[1..], [msg(honest, 4), msg(honest, 5), msg(honest, 6)]);
        // Full of established events: the newcomer is dropped, nothing else.
        let mut inbox = Inbox::new(1);
        inbox.set_established([honest].into());
        assert!(inbox.push(W, msg(honest, 7)));
        assert!(!inbox.push(W, msg(honest, 8)));
        assert_eq!(inbox.pop().map(|(_, e)| e), Some(msg(honest, 7)));
    }
}
