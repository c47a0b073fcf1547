//! Sealed data units: decrypting, delivering, routing and forwarding them, and
//! store-and-forward holding. Sealing, per-hop tracking and retries are in `units.rs`.

use ecomesh_types::{PeerId, Priority};

use super::{Engine, EngineEvent, SEEN_SEALED};
use crate::envelope::{Envelope, decode_envelope};
use crate::error::LoraError;
use crate::frame::{Body, RouteHeader, ShortId, decode_inner, short_id};

/// A frame kept until a next hop appears or `until` passes (store-and-forward).
pub(super) struct Held {
    pub(super) header: RouteHeader,
    pub(super) body: Body,
    pub(super) from: PeerId,
    pub(super) until: u64,
}

impl Engine {
    /// A sealed unit from node `node`: `counter` is the whole low half of the nonce, or
    /// only its low 16 bits (`low16`, a unit sent in parts), completed from the highest
    /// nonce each candidate session has accepted.
    pub(super) fn on_sealed(
        &mut self,
        sid: u16,
        counter: u32,
        low16: bool,
        ct: &[u8],
        node: u32,
        now: u64,
    ) -> Result<(), LoraError> {
        let mut datagram = Vec::with_capacity(8 + ct.len());
        let mut found = None;
        let mut replay = false;
        for (peer, n) in self.neighbours.iter_mut().filter(|(_, n)| n.rx_sid == sid) {
            let nonce = if low16 {
                complete_counter(n.rx_high, counter as u16)
            } else {
                u64::from(counter)
            };
            datagram.clear();
            datagram.extend_from_slice(&nonce.to_be_bytes());
            datagram.extend_from_slice(ct);
            match n.session.decrypt(&datagram) {
                Ok(plain) => {
                    n.rx_high = n.rx_high.max(nonce);
                    found = Some((*peer, plain));
                    break;
                }
                Err(ecomesh_identity::Error::Replay(_)) => replay = true,
                Err(_) => {}
            }
        }
        let Some((from, plain)) = found else {
            return Err(LoraError::Rejected(if replay {
                "replayed"
            } else {
                "no session authenticates it"
            }));
        };
        if let Some(n) = self.neighbours.get_mut(&from) {
            n.last_heard = now;
            n.node = Some(node);
        }
        self.remember_node(node, from);
        self.confirm(&from, now);
        let (h, body) = decode_inner(&plain)?;
        if h.origin == self.my_short || !self.seen.insert((h.origin, u32::from(h.seq), SEEN_SEALED))
        {
            return Ok(());
        }
        self.routes
            .learn(h.origin, from, h.hops.saturating_add(1), now);
        if h.dest == self.my_short {
            self.deliver(h, body, from);
        } else if h.ttl > 0 {
            let fwd = RouteHeader {
                ttl: h.ttl - 1,
                hops: h.hops.saturating_add(1),
                ..h
            };
            self.forward(fwd, body, from, now);
        }
        Ok(())
    }

    fn deliver(&mut self, h: RouteHeader, body: Body, from: PeerId) {
        let bytes = match body {
            Body::Message(m) => m,
            Body::Close { leaving } => {
                if h.origin == short_id(&from) {
                    tracing::info!(peer = %from, leaving, "neighbour closed the session");
                    if !leaving {
                        self.no_auto.insert(from);
                    }
                    self.drop_neighbour(&from);
                }
                return;
            }
            Body::Hello => return,
            b @ (Body::Notification(_) | Body::Grant(_)) => {
                self.events.push_back(EngineEvent::Compact {
                    origin: h.origin,
                    from,
                    body: b,
                });
                return;
            }
        };
        // Only a unit no relay carried may use the link-authenticated form: its
        // origin is then the session peer that sealed it.
        let link = (h.hops == 0 && h.origin == short_id(&from)).then_some(&from);
        match decode_envelope(&bytes, &self.me, link) {
            Ok(Envelope {
                message,
                link_authenticated,
            }) => {
                if short_id(&message.sender) != h.origin || !self.policy.allows(&message.sender) {
                    tracing::debug!(sender = %message.sender, "message dropped: origin mismatch or refused sender");
                    return;
                }
                self.events.push_back(EngineEvent::Message {
                    from,
                    message,
                    hops: h.hops,
                    link_authenticated,
                });
            }
            Err(e) => tracing::debug!(error = %e, "undecodable message dropped"),
        }
    }

    pub(super) fn next_hop(
        &self,
        dest: &ShortId,
        exclude: Option<&PeerId>,
        now: u64,
    ) -> Option<PeerId> {
        if let Some((p, _)) = self
            .neighbours
            .iter()
            .find(|(p, n)| n.confirmed && short_id(p) == *dest && Some(*p) != exclude)
        {
            return Some(*p);
        }
        self.routes
            .lookup(dest, now)
            .map(|r| r.via)
            .filter(|v| self.is_up(v) && Some(v) != exclude)
    }

    fn forward(&mut self, h: RouteHeader, body: Body, from: PeerId, now: u64) {
        self.route(h, body, from, Priority::Normal, 0, now);
    }

    /// Sends a data frame on toward `h.dest` (`from`: the neighbour it came from, or our
    /// own id), tracked until the next hop has it; with no route, floods it to the other
    /// neighbours (TTL and the seen-sets bound that), or holds it until one appears.
    pub(super) fn route(
        &mut self,
        h: RouteHeader,
        body: Body,
        from: PeerId,
        priority: Priority,
        attempts: u8,
        now: u64,
    ) {
        if let Some(via) = self.next_hop(&h.dest, Some(&from), now) {
            if let Err(e) = self.send_tracked(&via, h, body, from, priority, attempts) {
                tracing::debug!(error = %e, "forward failed");
            }
            return;
        }
        // Only neighbours that proved they hold the session: one still in its handshake
        // may not be able to decrypt the frame, while its radio acknowledges it.
        let others: Vec<PeerId> = self
            .up_neighbours()
            .into_iter()
            .filter(|p| *p != from)
            .collect();
        if others.is_empty() {
            self.hold(h, body, from, now);
            return;
        }
        for via in others {
            let _ = self.send_tracked(&via, h, body.clone(), from, Priority::Low, attempts);
        }
    }

    /// Keeps a frame until a next hop appears, bounded by count (the oldest goes, with a
    /// warning) and time.
    pub(super) fn hold(&mut self, header: RouteHeader, body: Body, from: PeerId, now: u64) {
        if self.held.len() >= self.config.held_capacity
            && let Some(old) = self.held.pop_front()
        {
            tracing::warn!(dest = ?old.header.dest, seq = old.header.seq, "held lora frame dropped: the held queue is full");
        }
        self.held.push_back(Held {
            header,
            body,
            from,
            until: now + self.config.held_timeout_ms,
        });
    }

    pub(super) fn flush_held(&mut self, now: u64) {
        let held: Vec<Held> = self.held.drain(..).collect();
        for h in held {
            if h.until <= now {
                tracing::warn!(dest = ?h.header.dest, seq = h.header.seq, "held lora frame expired without a route");
                continue;
            }
            let has_next = self.next_hop(&h.header.dest, Some(&h.from), now).is_some()
                || self.up_neighbours().iter().any(|p| *p != h.from);
            if has_next {
                self.route(h.header, h.body, h.from, Priority::Normal, 0, now);
            } else {
                self.held.push_back(h);
            }
        }
    }

    pub(super) fn route_to(&self, peer: &PeerId, now: u64) -> Option<PeerId> {
        if self.is_up(peer) {
            return Some(*peer);
        }
        self.next_hop(&short_id(peer), None, now)
    }

    pub(super) fn next_seq(&mut self) -> u16 {
        self.seq = self.seq.wrapping_add(1);
        self.seen
            .insert((self.my_short, u32::from(self.seq), SEEN_SEALED));
        self.seq
    }

    /// Expires held frames past their time and resends overdue in-flight frames.
    pub(super) fn relay_timers(&mut self, now: u64) {
        while let Some(h) = self.held.pop_front_if(|h| h.until <= now) {
            tracing::warn!(dest = ?h.header.dest, seq = h.header.seq, "held lora frame expired without a route");
        }
        self.resend_overdue(now);
    }
}

/// The nonce whose low 16 bits are `low` nearest to `high` (the highest nonce accepted):
/// the session's replay window is far narrower than 2^15, so that is the sender's.
pub(super) fn complete_counter(high: u64, low: u16) -> u64 {
    let c = (high & !0xFFFF) | u64::from(low);
    if c > high.saturating_add(0x8000) && c >= 0x10000 {
        c - 0x10000
    } else if c.saturating_add(0x8000) < high {
        c.saturating_add(0x10000)
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::complete_counter;

    #[test]
    fn counters_complete_near_the_highest_accepted() {
        assert_eq!(complete_counter(0, 0), 0);
        assert_eq!(complete_counter(0, 5), 5);
        assert_eq!(complete_counter(10, 3), 3);
        assert_eq!(complete_counter(0xFFF0, 0x0002), 0x1_0002);
        assert_eq!(complete_counter(0x1_0002, 0xFFF0), 0xFFF0);
        assert_eq!(complete_counter(0x5_1234, 0x1300), 0x5_1300);
        assert_eq!(complete_counter(0x5_1234, 0x1200), 0x5_1200);
    }
}
