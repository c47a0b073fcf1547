//! Noise IK sessions with neighbours: connecting, the handshake and its
//! confirmation, timers, and the neighbour table (up, dropped, closed).

use std::collections::HashSet;

use ecomesh_identity::PublicKey;
use ecomesh_identity::noise::{Handshake, Session, SessionConfig};
use ecomesh_types::{PeerId, Priority};

use super::{Engine, EngineEvent};
use crate::error::LoraError;
use crate::frame::{BLOOM_LEN, Body, Frame, RouteHeader, ShortId, short_id, types};
use crate::proto::BROADCAST;

/// A neighbour with a Noise session (confirmed or not yet).
pub(super) struct Neighbour {
    pub(super) key: PublicKey,
    pub(super) session: Session,
    pub(super) tx_sid: u16,
    pub(super) rx_sid: u16,
    /// The highest nonce a frame of this session was accepted with (completes the 16-bit
    /// counters of sealed parts).
    pub(super) rx_high: u64,
    /// The engine's number for this session.
    pub(super) session_no: u64,
    pub(super) epoch: Option<u32>,
    pub(super) node: Option<u32>,
    pub(super) last_heard: u64,
    pub(super) types: u16,
    pub(super) bloom: [u8; BLOOM_LEN],
    /// The confirm we sent as initiator, resent until the responder's first frame arrives.
    pub(super) confirm: Option<Vec<u8>>,
    /// Whether the peer proved it holds the session (responder: at once; initiator: on
    /// the first frame it decrypts from the peer). Only confirmed neighbours are used.
    pub(super) confirmed: bool,
    /// Initiator: when the confirm is resent / the session given up if unconfirmed.
    pub(super) confirm_retry: u64,
    pub(super) confirm_deadline: u64,
}

/// A Noise IK handshake in progress with a node.
pub(super) struct Pending {
    pub(super) hs: Handshake,
    pub(super) initiator: bool,
    pub(super) explicit: bool,
    pub(super) peer: Option<PeerId>,
    pub(super) first: Vec<u8>,
    pub(super) last_frame: Vec<u8>,
    pub(super) node: u32,
    pub(super) deadline: u64,
    pub(super) retry_at: u64,
}

/// A node's key as learnt from its announce, with its boot epoch and node number.
pub(super) struct KnownKey {
    pub(super) key: PublicKey,
    pub(super) epoch: u32,
    pub(super) node: u32,
}

/// The session id in the first two bytes of `b`.
pub(super) fn sid(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

impl Engine {
    /// Records which node number a peer speaks from, bounded: beyond 1024 entries only
    /// those of neighbours are kept.
    pub(super) fn remember_node(&mut self, node: u32, peer: PeerId) {
        if self.node_peer.len() >= 1024 {
            let keep: HashSet<PeerId> = self.neighbours.keys().copied().collect();
            self.node_peer.retain(|_, p| keep.contains(p));
        }
        self.node_peer.insert(node, peer);
    }

    pub(super) fn drop_neighbour(&mut self, peer: &PeerId) {
        if let Some(n) = self.neighbours.remove(peer) {
            self.routes.remove_via(peer);
            if n.confirmed {
                self.events.push_back(EngineEvent::PeerDown(*peer));
            }
        }
    }

    pub(super) fn maybe_connect(
        &mut self,
        short: ShortId,
        expect: Option<PeerId>,
        explicit: bool,
        now: u64,
    ) {
        let Some(k) = self.keys.get(&short) else {
            if let Some(p) = expect
                && explicit
            {
                self.wanted
                    .insert(short, (p, now + self.config.handshake_timeout_ms));
            }
            self.request_key(short, now);
            return;
        };
        let (key, node) = (k.key, k.node);
        let peer = key.peer_id();
        if expect.is_some_and(|e| e != peer) {
            return;
        }
        if self.neighbours.contains_key(&peer) || self.pending.contains_key(&short) {
            return;
        }
        if self.neighbours.len() + self.pending.len() >= self.config.max_neighbours {
            if explicit {
                self.events.push_back(EngineEvent::ConnectFailed {
                    peer,
                    reason: "too many neighbours".into(),
                });
            }
            return;
        }
        if !self.policy.allows(&peer) {
            if explicit {
                self.events.push_back(EngineEvent::ConnectFailed {
                    peer,
                    reason: "refused by the access policy".into(),
                });
            }
            return;
        }
        if !explicit {
            if !self.config.auto_connect || self.no_auto.contains(&peer) {
                return;
            }
            if self.my_short > short {
                // The smaller short id initiates; make sure it knows our key.
                self.announce_limited(now);
                return;
            }
        }
        let hs = Handshake::ik_initiator(
            self.identity.clone(),
            &key,
            self.policy.clone(),
            SessionConfig::datagram(),
        );
        let mut hs = match hs {
            Ok(h) => h,
            Err(e) => {
                self.events.push_back(EngineEvent::ConnectFailed {
                    peer,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let msg = match hs.write_message() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a handshake");
                return;
            }
        };
        let frame = Frame::Handshake {
            step: 1,
            explicit,
            from: self.my_short,
            to: short,
            noise: msg.clone(),
        }
        .encode(&self.key);
        let _ = self.enqueue(node, frame.clone(), Priority::High);
        tracing::debug!(%peer, "noise IK handshake started");
        self.pending.insert(
            short,
            Pending {
                hs,
                initiator: true,
                explicit,
                peer: Some(peer),
                first: msg,
                last_frame: frame,
                node,
                deadline: now + self.config.handshake_timeout_ms,
                retry_at: now + self.config.handshake_retry_ms,
            },
        );
    }

    pub(super) fn on_handshake(
        &mut self,
        step: u8,
        explicit: bool,
        from: ShortId,
        noise: &[u8],
        node: u32,
        now: u64,
    ) -> Result<(), LoraError> {
        match step {
            1 => {
                if !explicit && self.wanted.contains_key(&from) {
                    // We are connecting to this node ourselves (waiting for its key): our
                    // explicit handshake will win, so the connecting side always initiates.
                    return Ok(());
                }
                if let Some(p) = self.pending.get(&from) {
                    if p.initiator {
                        // Crossing handshakes: an explicit connect wins over an automatic
                        // one, else the smaller short id's.
                        let mine_wins = match (p.explicit, explicit) {
                            (true, false) => true,
                            (false, true) => false,
                            _ => self.my_short < from,
                        };
                        if mine_wins {
                            return Ok(());
                        }
                        self.pending.remove(&from);
                    } else if p.first == noise {
                        let f = p.last_frame.clone();
                        return self.enqueue(node, f, Priority::High);
                    }
                }
                if self.neighbours.len() + self.pending.len() >= self.config.max_neighbours {
                    return Err(LoraError::Rejected("too many neighbours and handshakes"));
                }
                let mut hs = Handshake::ik_responder(
                    self.identity.clone(),
                    self.policy.clone(),
                    SessionConfig::datagram(),
                )?;
                hs.read_message(noise)?;
                let peer = hs
                    .remote_public_key()
                    .map(PublicKey::peer_id)
                    .ok_or(LoraError::Rejected("handshake without identity"))?;
                if short_id(&peer) != from {
                    return Err(LoraError::Rejected(
                        "handshake sender does not match its short id",
                    ));
                }
                let reply = hs.write_message()?;
                let frame = Frame::Handshake {
                    step: 2,
                    explicit: false,
                    from: self.my_short,
                    to: from,
                    noise: reply,
                }
                .encode(&self.key);
                self.remember_node(node, peer);
                self.enqueue(node, frame.clone(), Priority::High)?;
                self.pending.insert(
                    from,
                    Pending {
                        hs,
                        initiator: false,
                        explicit,
                        peer: Some(peer),
                        first: noise.to_vec(),
                        last_frame: frame,
                        node,
                        deadline: now + self.config.handshake_timeout_ms,
                        retry_at: now + self.config.handshake_retry_ms,
                    },
                );
                Ok(())
            }
            2 => {
                let Some(mut p) = self.pending.remove(&from).filter(|p| p.initiator) else {
                    // Our confirm was lost and the responder repeats message 2.
                    let confirm = self
                        .neighbours
                        .iter()
                        .find(|(peer, _)| short_id(peer) == from)
                        .and_then(|(_, n)| n.confirm.clone());
                    if let Some(c) = confirm {
                        return self.enqueue(node, c, Priority::High);
                    }
                    return Ok(());
                };
                if let Err(e) = p.hs.read_message(noise) {
                    if let Some(peer) = p.peer {
                        self.events.push_back(EngineEvent::ConnectFailed {
                            peer,
                            reason: e.to_string(),
                        });
                    }
                    return Err(e.into());
                }
                let confirm = p.hs.write_message()?;
                let frame = Frame::Handshake {
                    step: 3,
                    explicit: false,
                    from: self.my_short,
                    to: from,
                    noise: confirm,
                }
                .encode(&self.key);
                self.enqueue(node, frame.clone(), Priority::High)?;
                let session = p.hs.into_session()?;
                self.establish(session, true, node, Some(frame), now);
                Ok(())
            }
            _ => {
                let Some(mut p) = self.pending.remove(&from).filter(|p| !p.initiator) else {
                    // The initiator repeats its confirm: our hello was lost.
                    let peer = self
                        .neighbours
                        .keys()
                        .find(|p| short_id(p) == from)
                        .copied();
                    if let Some(peer) = peer {
                        self.send_hello(&peer);
                    }
                    return Ok(());
                };
                p.hs.read_message(noise)?;
                let session = p.hs.into_session()?;
                self.establish(session, false, node, None, now);
                Ok(())
            }
        }
    }

    fn establish(
        &mut self,
        session: Session,
        initiator: bool,
        node: u32,
        confirm: Option<Vec<u8>>,
        now: u64,
    ) {
        let key = *session.remote_public_key();
        let peer = key.peer_id();
        let hh = *session.handshake_hash();
        let (tx_sid, rx_sid) = if initiator {
            (sid(&hh[0..2]), sid(&hh[2..4]))
        } else {
            (sid(&hh[2..4]), sid(&hh[0..2]))
        };
        let short = short_id(&peer);
        let epoch = self.keys.get(&short).map(|k| k.epoch);
        self.keys.insert(
            short,
            KnownKey {
                key,
                epoch: epoch.unwrap_or(0),
                node,
            },
        );
        self.remember_node(node, peer);
        self.next_session = self.next_session.wrapping_add(1);
        self.neighbours.insert(
            peer,
            Neighbour {
                key,
                session,
                tx_sid,
                rx_sid,
                rx_high: 0,
                session_no: self.next_session,
                epoch,
                node: Some(node),
                last_heard: now,
                types: types::ALL,
                bloom: [0; BLOOM_LEN],
                confirm,
                confirmed: false,
                confirm_retry: now + self.config.handshake_retry_ms,
                confirm_deadline: now + self.config.handshake_timeout_ms,
            },
        );
        self.wanted.remove(&short);
        // A new session may mean the node restarted: forget its old frame keys.
        self.seen.retain(|k| k.0 != short);
        if !initiator {
            self.confirm(&peer, now);
            self.send_hello(&peer);
        }
    }

    fn send_hello(&mut self, peer: &PeerId) {
        let h = RouteHeader {
            ttl: 0,
            hops: 0,
            origin: self.my_short,
            dest: short_id(peer),
            seq: self.next_seq(),
        };
        if let Err(e) = self.send_inner(peer, &h, &Body::Hello, Priority::High) {
            tracing::debug!(error = %e, "hello not sent");
        }
    }

    pub(super) fn confirm(&mut self, peer: &PeerId, now: u64) {
        let Some(n) = self.neighbours.get_mut(peer) else {
            return;
        };
        if n.confirmed {
            return;
        }
        n.confirmed = true;
        let key = n.key;
        self.routes.learn(short_id(peer), *peer, 1, now);
        tracing::info!(%peer, "lora session established");
        self.events
            .push_back(EngineEvent::PeerUp { peer: *peer, key });
        self.flush_held(now);
    }

    pub(super) fn is_up(&self, peer: &PeerId) -> bool {
        self.neighbours.get(peer).is_some_and(|n| n.confirmed)
    }

    pub(super) fn up_neighbours(&self) -> Vec<PeerId> {
        self.neighbours
            .iter()
            .filter(|(_, n)| n.confirmed)
            .map(|(p, _)| *p)
            .collect()
    }

    pub(super) fn close(&mut self, peer: &PeerId, leaving: bool) {
        if !self.neighbours.contains_key(peer) {
            return;
        }
        let h = RouteHeader {
            ttl: 0,
            hops: 0,
            origin: self.my_short,
            dest: short_id(peer),
            seq: self.next_seq(),
        };
        if let Err(e) = self.send_inner(peer, &h, &Body::Close { leaving }, Priority::Critical) {
            tracing::debug!(error = %e, "close not sent");
        }
        self.drop_neighbour(peer);
    }

    /// Resends or gives up pending handshakes and unconfirmed sessions, and drops
    /// neighbours not heard for `peer_timeout_ms`.
    pub(super) fn handshake_timers(&mut self, now: u64) {
        let mut failed = Vec::new();
        let mut resend = Vec::new();
        for (short, p) in &mut self.pending {
            if now >= p.deadline {
                failed.push(*short);
            } else if now >= p.retry_at {
                p.retry_at = now + self.config.handshake_retry_ms;
                resend.push((p.node, p.last_frame.clone()));
            }
        }
        for (node, frame) in resend {
            let _ = self.enqueue(node, frame, Priority::High);
        }
        for short in failed {
            if let Some(p) = self.pending.remove(&short)
                && p.initiator
                && let Some(peer) = p.peer
            {
                self.events.push_back(EngineEvent::ConnectFailed {
                    peer,
                    reason: "handshake timed out".into(),
                });
            }
        }
        let mut unconfirmed_failed = Vec::new();
        let mut confirms = Vec::new();
        let retry = self.config.handshake_retry_ms;
        for (p, n) in self.neighbours.iter_mut().filter(|(_, n)| !n.confirmed) {
            if now >= n.confirm_deadline {
                unconfirmed_failed.push(*p);
            } else if now >= n.confirm_retry {
                n.confirm_retry = now + retry;
                if let Some(c) = &n.confirm {
                    confirms.push((n.node.unwrap_or(BROADCAST), c.clone()));
                }
            }
        }
        for (node, c) in confirms {
            let _ = self.enqueue(node, c, Priority::High);
        }
        for p in unconfirmed_failed {
            self.neighbours.remove(&p);
            self.events.push_back(EngineEvent::ConnectFailed {
                peer: p,
                reason: "handshake not confirmed".into(),
            });
        }
        let timeout = self.config.peer_timeout_ms;
        let gone: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.last_heard.saturating_add(timeout) <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            tracing::info!(peer = %p, "neighbour timed out");
            self.drop_neighbour(&p);
        }
    }
}
