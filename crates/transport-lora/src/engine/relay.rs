//! Sealed data frames: decrypting, delivering, routing and forwarding them,
//! per-hop tracking and retries, and store-and-forward holding.

use ecomesh_types::{PeerId, Priority};
use ecomesh_wire::decode_message_compact;

use super::{Engine, EngineEvent, SEEN_SEALED};
use crate::error::LoraError;
use crate::frame::{Body, Frame, RouteHeader, ShortId, decode_inner, encode_inner, short_id};
use crate::proto::BROADCAST;

/// A frame kept until a next hop appears or `until` passes (store-and-forward).
pub(super) struct Held {
    pub(super) header: RouteHeader,
    pub(super) body: Body,
    pub(super) from: PeerId,
    pub(super) until: u64,
}

/// A data frame handed to the radio whose arrival at the next hop is not yet confirmed.
pub(super) struct InFlight {
    pub(super) header: RouteHeader,
    pub(super) body: Body,
    /// The neighbour it came from (our own id for frames we originated).
    pub(super) from: PeerId,
    /// The neighbour it was sent to.
    pub(super) via: PeerId,
    pub(super) priority: Priority,
    /// Sends so far beyond the first.
    pub(super) attempts: u8,
    /// When its verdict is overdue; set once the frame went to the radio.
    pub(super) deadline: Option<u64>,
}

impl Engine {
    pub(super) fn retry(&mut self, f: InFlight, now: u64) {
        if f.attempts >= self.config.hop_retries {
            tracing::warn!(
                dest = ?f.header.dest,
                seq = f.header.seq,
                attempts = f.attempts + 1,
                "lora frame not confirmed by any next hop; held for a new route"
            );
            self.hold(f.header, f.body, f.from, now);
            return;
        }
        tracing::debug!(dest = ?f.header.dest, seq = f.header.seq, "lora frame lost on a hop; sending again");
        let attempts = f.attempts + 1;
        // The best next hop now; else the same neighbour again (a flooded copy goes back
        // to the neighbour it was for, so retries never multiply copies); else as new.
        let via = self
            .next_hop(&f.header.dest, Some(&f.from), now)
            .or_else(|| Some(f.via).filter(|v| self.is_up(v) && *v != f.from));
        match via {
            Some(via) => {
                if let Err(e) =
                    self.send_tracked(&via, f.header, f.body, f.from, f.priority, attempts)
                {
                    tracing::debug!(error = %e, "resend failed");
                }
            }
            None => self.route(f.header, f.body, f.from, f.priority, attempts, now),
        }
    }

    pub(super) fn on_sealed(
        &mut self,
        sid: u16,
        counter: u32,
        ct: &[u8],
        node: u32,
        now: u64,
    ) -> Result<(), LoraError> {
        let mut datagram = Vec::with_capacity(8 + ct.len());
        datagram.extend_from_slice(&[0; 4]);
        datagram.extend_from_slice(&counter.to_be_bytes());
        datagram.extend_from_slice(ct);
        let mut found = None;
        let mut replay = false;
        for (peer, n) in self.neighbours.iter_mut().filter(|(_, n)| n.rx_sid == sid) {
            match n.session.decrypt(&datagram) {
                Ok(plain) => {
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
            self.deliver(h, body, from, now);
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

    fn deliver(&mut self, h: RouteHeader, body: Body, from: PeerId, now: u64) {
        let bytes = match body {
            Body::Message(m) => m,
            Body::Fragment {
                group,
                index,
                count,
                data,
            } => match self.reasm.push(h.origin, group, index, count, &data, now) {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "fragment dropped");
                    return;
                }
            },
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
        match decode_message_compact(&bytes) {
            Ok(message) => {
                if short_id(&message.sender) != h.origin || !self.policy.allows(&message.sender) {
                    tracing::debug!(sender = %message.sender, "message dropped: origin mismatch or refused sender");
                    return;
                }
                self.events.push_back(EngineEvent::Message {
                    from,
                    message,
                    hops: h.hops,
                });
            }
            Err(e) => tracing::debug!(error = %e, "undecodable message dropped"),
        }
    }

    fn next_hop(&self, dest: &ShortId, exclude: Option<&PeerId>, now: u64) -> Option<PeerId> {
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
    fn route(
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

    /// [`send_inner`](Self::send_inner) for a data frame the engine keeps until the radio
    /// confirms the next hop has it (when `want_ack` lets the radio say so).
    pub(super) fn send_tracked(
        &mut self,
        via: &PeerId,
        header: RouteHeader,
        body: Body,
        from: PeerId,
        priority: Priority,
        attempts: u8,
    ) -> Result<(), LoraError> {
        let (to, frame) = self.seal(via, &header, &body)?;
        if !self.config.want_ack || to == BROADCAST {
            return self.enqueue(to, frame, priority);
        }
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let ticket = self.next_ticket;
        self.inflight.insert(
            ticket,
            InFlight {
                header,
                body,
                from,
                via: *via,
                priority,
                attempts,
                deadline: None,
            },
        );
        let r = self.enqueue_ticket(to, frame, priority, Some(ticket));
        if r.is_err() {
            self.inflight.remove(&ticket);
        }
        r
    }

    pub(super) fn send_inner(
        &mut self,
        via: &PeerId,
        h: &RouteHeader,
        body: &Body,
        priority: Priority,
    ) -> Result<(), LoraError> {
        let (to, frame) = self.seal(via, h, body)?;
        self.enqueue(to, frame, priority)
    }

    /// Encrypts a frame for neighbour `via`: its node number and the frame bytes.
    fn seal(
        &mut self,
        via: &PeerId,
        h: &RouteHeader,
        body: &Body,
    ) -> Result<(u32, Vec<u8>), LoraError> {
        let plain = encode_inner(h, body);
        let n = self
            .neighbours
            .get_mut(via)
            .ok_or(LoraError::Unreachable(*via))?;
        let datagram = n.session.encrypt(&plain)?;
        let (nonce, ct) = datagram.split_at(8);
        if nonce[..4] != [0; 4] {
            // 2^32 frames in one session: start over with a new handshake.
            let p = *via;
            self.drop_neighbour(&p);
            return Err(LoraError::Rejected("session counter exhausted"));
        }
        let counter = u32::from_be_bytes([nonce[4], nonce[5], nonce[6], nonce[7]]);
        let frame = Frame::Sealed {
            sid: n.tx_sid,
            counter,
            ciphertext: ct.to_vec(),
        }
        .encode(&self.key);
        Ok((n.node.unwrap_or(BROADCAST), frame))
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
        let overdue: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in overdue {
            if let Some(f) = self.inflight.remove(&k) {
                self.retry(f, now);
            }
        }
    }
}
