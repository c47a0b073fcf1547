//! Presence beacons, key announces and key requests: how neighbours learn of
//! this node and its key, and how it learns theirs.

use std::collections::HashSet;

use ecomesh_identity::PublicKey;
use ecomesh_types::Priority;

use super::{Engine, KnownKey, SEEN_PRESENCE, xorshift};
use crate::error::LoraError;
use crate::frame::{Frame, Presence, ShortId, short_id};
use crate::proto::BROADCAST;

impl Engine {
    pub(super) fn broadcast_frame(&mut self, f: &Frame, priority: Priority) {
        let bytes = f.encode(&self.key);
        if let Err(e) = self.enqueue(BROADCAST, bytes, priority) {
            tracing::debug!(error = %e, "broadcast frame dropped");
        }
    }

    fn announce(&mut self, now: u64) {
        self.last_announce = Some(now);
        let f = Frame::Announce {
            key: self.identity.public_key().to_bytes(),
            epoch: self.epoch,
            salt: (xorshift(&mut self.rng) >> 32) as u32,
        };
        self.broadcast_frame(&f, Priority::High);
    }

    pub(super) fn announce_limited(&mut self, now: u64) {
        let ok = self
            .last_announce
            .is_none_or(|t| now >= t.saturating_add(self.config.announce_min_interval_ms));
        if ok {
            self.announce(now);
        }
    }

    pub(super) fn request_key(&mut self, short: ShortId, now: u64) {
        let last = self.key_requests.get(&short).copied();
        if last.is_some_and(|t| now < t.saturating_add(self.config.announce_min_interval_ms * 2)) {
            return;
        }
        if self.key_requests.len() > 256 {
            self.key_requests.clear();
        }
        self.key_requests.insert(short, now);
        let f = Frame::KeyRequest {
            from: self.my_short,
            to: short,
            salt: (xorshift(&mut self.rng) >> 32) as u32,
        };
        self.broadcast_frame(&f, Priority::High);
    }

    pub(super) fn on_presence(&mut self, p: Presence, from_node: u32, radio_hops: u8, now: u64) {
        if p.origin == self.my_short || !self.seen.insert((p.origin, p.seq, SEEN_PRESENCE)) {
            return;
        }
        let via = self
            .node_peer
            .get(&from_node)
            .copied()
            .filter(|v| self.is_up(v));
        if p.hops == 0 && radio_hops == 0 {
            let direct = self
                .neighbours
                .iter_mut()
                .find(|(peer, _)| short_id(peer) == p.origin);
            match direct {
                Some((_, n)) => {
                    n.last_heard = now;
                    n.types = p.types;
                    n.bloom = p.bloom;
                    n.node = Some(from_node);
                }
                None => {
                    if self.keys.contains_key(&p.origin) {
                        self.maybe_connect(p.origin, None, false, now);
                    } else if self.config.auto_connect {
                        self.request_key(p.origin, now);
                    }
                }
            }
        }
        if let Some(v) = via {
            self.routes.learn(p.origin, v, p.hops + 1, now);
            self.flush_held(now);
        }
        if p.ttl > 0 {
            let relayed = Presence {
                ttl: p.ttl - 1,
                hops: p.hops.saturating_add(1),
                ..p
            };
            self.broadcast_frame(&Frame::Presence(relayed), Priority::Low);
        }
    }

    pub(super) fn on_announce(
        &mut self,
        key: &[u8; 32],
        epoch: u32,
        from_node: u32,
        now: u64,
    ) -> Result<(), LoraError> {
        let key = PublicKey::from_bytes(key)?;
        let peer = key.peer_id();
        if peer == self.me {
            return Ok(());
        }
        let short = short_id(&peer);
        self.keys.insert(
            short,
            KnownKey {
                key,
                epoch,
                node: from_node,
            },
        );
        if self.keys.len() > 1024 {
            // Bounded: forget keys of nodes that are not neighbours.
            let keep: HashSet<ShortId> = self.neighbours.keys().map(short_id).collect();
            self.keys.retain(|k, _| keep.contains(k) || *k == short);
        }
        self.remember_node(from_node, peer);
        if let Some(n) = self.neighbours.get_mut(&peer) {
            match n.epoch {
                Some(e) if e != epoch => {
                    tracing::info!(%peer, "neighbour restarted; its old session is gone");
                    self.drop_neighbour(&peer);
                }
                _ => {
                    n.epoch = Some(epoch);
                    n.node = Some(from_node);
                    n.last_heard = now;
                    return Ok(());
                }
            }
        }
        let explicit = self.wanted.remove(&short).is_some();
        self.maybe_connect(short, Some(peer), explicit, now);
        Ok(())
    }

    /// Sends this node's presence beacon (with an announce every `announce_every`
    /// beacons) and draws the next beacon time.
    pub(super) fn send_beacon(&mut self, now: u64) {
        if self
            .beacons_sent
            .is_multiple_of(self.config.announce_every.max(1))
        {
            self.announce(now);
        }
        self.beacons_sent = self.beacons_sent.wrapping_add(1);
        self.beacon_seq = self.beacon_seq.wrapping_add(1);
        let p = Presence {
            ttl: self.config.ttl,
            hops: 0,
            origin: self.my_short,
            seq: self.beacon_seq,
            types: self.types,
            bloom: self.bloom,
        };
        self.seen.insert((self.my_short, p.seq, SEEN_PRESENCE));
        self.broadcast_frame(&Frame::Presence(p), Priority::Normal);
        // ±10% jitter so beacons of nodes started together drift apart.
        let iv = self.config.beacon_interval_ms;
        let jitter = xorshift(&mut self.rng) % (iv / 5 + 1);
        self.next_beacon = now + iv - iv / 10 + jitter;
    }
}
