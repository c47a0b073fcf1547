//! Private delivery (seed 003's order: direct, then onion, then relay, then
//! queue) and the driver of the manager's [`OnionRouter`]: cells travel as
//! signed [`ONION_CELL_TYPE`] messages between neighbours only, handed to the
//! router as they arrive; what the router queues and reports is handled at the
//! end of every [`MultiTransportManager::process`].
//!
//! A message sent over a circuit carries its sender's public key before its
//! encoded bytes, so the destination verifies its signature without asking
//! anyone (key discovery would name the sender to the network). The
//! destination acknowledges over the same circuit, backward. The message is
//! kept in the buffer until that ACK like any message of this node, but never
//! handed to relays as a copy while it is private; if its circuit closes
//! before it left, it falls back to relays and the queue, and if it left but
//! its ACK had not come back when the circuit closed (a lost cell breaks a
//! circuit), it is sent again over a fresh circuit.

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_identity::message::{KeyDirectory, verify_message};
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Priority, TransportType};
use ecomesh_wire::{decode_message, encode_message};

use super::{
    MeshEvent, MultiTransportManager, SendOutcome, buffer_locked, learn_locked, lock,
    relay_candidates,
};
use crate::MeshError;
use crate::ack::{ACK_TYPE, ack_for, acked_id};
use crate::keys::is_key_message;
use crate::onion::{ONION_CELL_TYPE, OnionEvent, Origin};
use crate::reputation::Observation;

/// Lifetime of one cell message: cells are never stored, only handed over.
const CELL_TTL_SECS: u32 = 60;

/// Most router events and cells handled in one pass (the rest wait for the next).
const MAX_ONION_STEPS: usize = 65_536;

/// How [`MultiTransportManager::send_private`] handled a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrivateOutcome {
    /// The recipient is a neighbour: handed to it over this transport.
    Direct(TransportType),
    /// Sent over an onion circuit (`ready`), or waiting for the circuit being
    /// built (`!ready`; it falls back to relays if the build fails).
    Onion {
        /// Whether the circuit was already built.
        ready: bool,
    },
    /// No circuit could be had (too few reputable relays, unknown key...):
    /// handled as [`MultiTransportManager::send`] would.
    Fallback(SendOutcome),
}

/// Randomness for the router: 32 bytes from the OS, or (if the OS source
/// fails) a value derived from a signature of this identity over the process
/// id, with a warning.
pub(super) fn onion_seed(identity: &Identity) -> [u8; 32] {
    let mut seed = [0_u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        tracing::warn!("OS randomness unavailable; onion seed derived from the identity");
        let pid = std::process::id().to_le_bytes();
        match identity.sign_with_domain("ecomesh 2026 onion seed fallback v1", &pid) {
            Ok(sig) => seed = *blake3::hash(&sig.0).as_bytes(),
            Err(e) => tracing::warn!(error = %e, "onion seed fallback failed"),
        }
    }
    seed
}

/// The dedup set of cell messages: as many as the router queues, for as long as a cell lives.
pub(super) fn cell_seen_set() -> crate::dedup::SeenSet {
    crate::dedup::SeenSet::new(8192, u64::from(CELL_TTL_SECS) * 1000)
}

fn onion_payload(key: &PublicKey, message: &NetworkMessage) -> Vec<u8> {
    let mut out = key.as_bytes().to_vec();
    out.extend_from_slice(&encode_message(message));
    out
}

/// The signed message inside an onion payload, with its sender's key.
fn open_payload(data: &[u8]) -> Result<(PublicKey, NetworkMessage), MeshError> {
    let bad = MeshError::BadCell {
        reason: "onion payload is not a signed message",
    };
    if data.len() < 32 {
        return Err(bad);
    }
    let key = PublicKey::from_slice(&data[..32])?;
    let message = decode_message(&data[32..])?;
    if key.peer_id() != message.sender {
        return Err(bad);
    }
    verify_message(&message, &key)?;
    Ok((key, message))
}

impl MultiTransportManager {
    /// Sends `message` (whose recipient must be `peer`) in seed 003's order:
    /// directly when `peer` is a neighbour; else over an onion circuit of
    /// [`OnionConfig::relays`](crate::onion::OnionConfig::relays) reputable
    /// neighbours (built on first use, rotated hourly), so no relay learns
    /// both ends; else, when no circuit can be had, like [`send`](Self::send):
    /// relay copies, then the store-and-forward queue. A message sent over a
    /// circuit is acknowledged back over it and kept in the buffer meanwhile
    /// (never handed to relays as a copy unless its circuit fails first).
    /// [`send`](Self::send) is unchanged: this is the opt-in private path.
    pub async fn send_private(
        &self,
        peer: PeerId,
        message: NetworkMessage,
        priority: Priority,
        now_ms: u64,
    ) -> Result<PrivateOutcome, MeshError> {
        if message.recipient != Some(peer) {
            return Err(MeshError::RecipientMismatch {
                peer,
                recipient: message.recipient,
            });
        }
        if message.is_expired(now_ms) {
            return Err(MeshError::Expired(message.id));
        }
        if !self.peer_transports(&peer).is_empty() {
            return Ok(match self.send(peer, message, priority, now_ms).await? {
                SendOutcome::Sent(t) => PrivateOutcome::Direct(t),
                queued => PrivateOutcome::Fallback(queued),
            });
        }
        let id = message.id;
        {
            let mut st = lock(&self.state);
            st.seen.insert(id, now_ms);
            if message.message_type != ACK_TYPE
                && !is_key_message(&message.message_type)
                && !st.unacked_types.contains(&message.message_type)
            {
                st.pending.track(&message);
            }
            match buffer_locked(&mut st, message.clone(), priority, now_ms) {
                Ok(evicted) => {
                    st.private.insert(id);
                    drop(st);
                    self.report_evicted(evicted);
                }
                Err(e) => {
                    st.pending.forget(&id);
                    return Err(e);
                }
            }
        }
        match self.try_onion(peer, &message, now_ms) {
            Ok(ready) => {
                tracing::debug!(%id, ready, "message sent over an onion circuit");
                self.onion_process(now_ms).await;
                Ok(PrivateOutcome::Onion { ready })
            }
            Err(e) => {
                tracing::debug!(%id, error = %e, "no onion circuit; relay and queue instead");
                lock(&self.state).private.remove(&id);
                let outcome = self.forward(peer, message, priority, now_ms, &[]).await;
                if outcome.is_err() {
                    lock(&self.state).pending.forget(&id);
                }
                Ok(PrivateOutcome::Fallback(outcome?))
            }
        }
    }

    /// Hands `message` to the circuit to `peer`, building one if there is none.
    fn try_onion(
        &self,
        peer: PeerId,
        message: &NetworkMessage,
        now_ms: u64,
    ) -> Result<bool, MeshError> {
        let dest_key = self.public_key(&peer).ok_or(MeshError::OnionPath {
            reason: "the destination's key is unknown",
        })?;
        let candidates: Vec<(PeerId, [u8; 32])> = {
            let st = lock(&self.state);
            relay_candidates(&st, usize::MAX, |p| *p != peer)
                .into_iter()
                .filter_map(|p| {
                    super::Keys {
                        learned: &st.learned,
                        external: &*self.keys,
                    }
                    .public_key(&p)
                    .map(|k| (p, k.to_x25519()))
                })
                .collect()
        };
        let payload = onion_payload(self.identity.public_key(), message);
        let mut router = lock(&self.onion);
        if !router.has_circuit(&peer) {
            router.build_among((peer, dest_key.to_x25519()), &candidates, now_ms)?;
        }
        router.send(&peer, payload)
    }

    /// True when a circuit to `dest` is built.
    pub fn onion_ready(&self, dest: &PeerId) -> bool {
        lock(&self.onion).is_ready(dest)
    }

    /// The relays of this node's circuit to `dest`, in path order.
    pub fn onion_path(&self, dest: &PeerId) -> Option<Vec<PeerId>> {
        lock(&self.onion).path(dest)
    }

    /// What this node learned as an onion relay: cells relayed per (previous
    /// hop, next hop) pair (see [`OnionRouter::relayed_pairs`](crate::onion::OnionRouter::relayed_pairs)).
    pub fn onion_relayed_pairs(&self) -> BTreeMap<(PeerId, PeerId), u64> {
        lock(&self.onion).relayed_pairs()
    }

    /// Circuits this node relays or ends.
    pub fn onion_relayed_circuits(&self) -> usize {
        lock(&self.onion).relayed_circuits()
    }

    /// A cell message from neighbour `from` (already verified and deduplicated).
    pub(super) async fn on_onion_cell(&self, from: PeerId, message: &NetworkMessage, now_ms: u64) {
        let me = self.identity.peer_id();
        if message.sender != from || message.hop_count != 0 || message.recipient != Some(me) {
            tracing::debug!(%from, "onion cell not from the neighbour to this node; dropped");
            return;
        }
        if let Err(e) = lock(&self.onion).on_cell(from, &message.payload, now_ms) {
            tracing::debug!(%from, error = %e, "onion cell refused");
        }
    }

    /// Runs the router's timers, handles its events and hands its cells to
    /// neighbours (a neighbour that cannot be reached is treated as lost).
    pub(super) async fn onion_process(&self, now_ms: u64) {
        lock(&self.onion).tick(now_ms);
        for _ in 0..MAX_ONION_STEPS {
            let event = lock(&self.onion).poll_event();
            if let Some(event) = event {
                self.on_onion_event(event, now_ms).await;
                continue;
            }
            let cell = lock(&self.onion).poll_transmit();
            let Some((peer, bytes)) = cell else {
                return;
            };
            let digest = blake3::hash(&bytes);
            let mut random = [0_u8; 16];
            random.copy_from_slice(&digest.as_bytes()[..16]);
            let sent = match self.signed(
                ONION_CELL_TYPE,
                bytes,
                Some(peer),
                now_ms,
                random,
                CELL_TTL_SECS,
            ) {
                Ok(m) => self
                    .deliver_direct(peer, &m, Priority::High)
                    .await
                    .is_some(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not sign an onion cell");
                    false
                }
            };
            if !sent {
                tracing::debug!(%peer, "onion cell not delivered; circuits through the neighbour torn down");
                lock(&self.onion).peer_lost(peer);
            }
        }
    }

    async fn on_onion_event(&self, event: OnionEvent, now_ms: u64) {
        match event {
            OnionEvent::Misbehaved { peer, reason } => {
                tracing::info!(%peer, reason, "bad onion cell charged");
                self.observe(peer, Observation::Integrity(false));
            }
            OnionEvent::Delivered { origin, dest, data } => {
                self.on_onion_message(origin, dest, &data, now_ms).await;
            }
            OnionEvent::CircuitClosed {
                dest, undelivered, ..
            } => {
                let mut waiting = BTreeSet::new();
                for data in undelivered {
                    if let Ok((_, m)) = open_payload(&data) {
                        waiting.insert(m.id);
                    }
                    self.onion_fallback(dest, &data, now_ms).await;
                }
                self.resend_in_flight(dest, &waiting, now_ms).await;
            }
            OnionEvent::Undelivered { dest, data } => {
                self.onion_fallback(dest, &data, now_ms).await;
            }
            OnionEvent::CircuitReady { dest, relays } => {
                tracing::debug!(%dest, relays, "onion circuit ready");
            }
        }
    }

    /// A message that never left over its circuit: relays and the queue.
    async fn onion_fallback(&self, dest: PeerId, data: &[u8], now_ms: u64) {
        let message = match open_payload(data) {
            Ok((_, m)) => m,
            Err(e) => {
                tracing::warn!(error = %e, "own onion payload unreadable");
                return;
            }
        };
        let id = message.id;
        if !lock(&self.state).private.remove(&id) {
            return; // acknowledged or expired meanwhile
        }
        tracing::info!(%id, %dest, "onion circuit failed; message handed to relays");
        if let Err(e) = self
            .forward(dest, message, Priority::Normal, now_ms, &[])
            .await
        {
            tracing::info!(%id, error = %e, "message of a failed circuit not requeued");
        }
    }

    /// Sends again, over a fresh circuit, the private messages to `dest` that
    /// left over a circuit now closed and were not acknowledged (a cell lost
    /// on the way broke it); `skip` are those that never left (already handed
    /// to relays). If no circuit can be had, they go to relays and the queue.
    async fn resend_in_flight(&self, dest: PeerId, skip: &BTreeSet<MessageId>, now_ms: u64) {
        let again: Vec<(NetworkMessage, Priority)> = {
            let st = lock(&self.state);
            st.buffer
                .entries()
                .iter()
                .filter(|e| {
                    let id = e.message.id;
                    e.message.recipient == Some(dest)
                        && st.private.contains(&id)
                        && st.pending.is_pending(&id)
                        && !skip.contains(&id)
                })
                .map(|e| (e.message.clone(), e.priority))
                .collect()
        };
        for (message, priority) in again {
            let id = message.id;
            match self.try_onion(dest, &message, now_ms) {
                Ok(_) => {
                    tracing::debug!(%id, %dest, "unacknowledged private message sent again over a new circuit")
                }
                Err(e) => {
                    tracing::info!(%id, error = %e, "no new circuit; private message handed to relays");
                    lock(&self.state).private.remove(&id);
                    if let Err(e) = self.forward(dest, message, priority, now_ms, &[]).await {
                        tracing::info!(%id, error = %e, "message of a failed circuit not requeued");
                    }
                }
            }
        }
    }

    /// A whole message out of a circuit: ending here (`origin`), or coming
    /// back over this node's circuit to `dest`.
    async fn on_onion_message(
        &self,
        origin: Option<Origin>,
        dest: Option<PeerId>,
        data: &[u8],
        now_ms: u64,
    ) {
        let me = self.identity.peer_id();
        let (key, message) = match open_payload(data) {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(error = %e, "onion message refused");
                if let Some(d) = dest {
                    self.observe(d, Observation::Integrity(false));
                }
                return;
            }
        };
        if message.recipient != Some(me) || dest.is_some_and(|d| d != message.sender) {
            tracing::debug!(id = %message.id, "onion message not for this node; dropped");
            return;
        }
        learn_locked(&mut lock(&self.state), key);
        if let Some(acked) = acked_id(&message) {
            let confirmed = {
                let mut st = lock(&self.state);
                let ok = st.pending.confirm(&acked, &message.sender);
                if ok {
                    st.buffer.remove(&acked);
                    st.private.remove(&acked);
                }
                ok
            };
            if confirmed {
                self.listeners.emit(&MeshEvent::Acked {
                    id: acked,
                    by: message.sender,
                });
            }
            return;
        }
        let (first_seen, unacked) = {
            let mut st = lock(&self.state);
            (
                st.seen.insert(message.id, now_ms),
                st.unacked_types.contains(&message.message_type),
            )
        };
        if first_seen {
            let near = origin.map(|o| o.prev).or(dest);
            let transport = near
                .and_then(|p| self.peer_transports(&p).first().copied())
                .or_else(|| self.active_transports().first().copied())
                .unwrap_or(TransportType::Internet);
            self.listeners.emit(&MeshEvent::Message {
                from: message.sender,
                transport,
                message: message.clone(),
            });
        }
        if let (Some(o), false) = (origin, unacked) {
            self.acknowledge_over(o, &message, now_ms);
        }
    }

    /// Acknowledges `message` back over the circuit it came over.
    fn acknowledge_over(&self, origin: Origin, message: &NetworkMessage, now_ms: u64) {
        let mut ack = ack_for(message, self.identity.peer_id(), now_ms);
        if let Err(e) = self.identity.sign_message(&mut ack) {
            tracing::warn!(error = %e, "could not sign an onion ACK");
            return;
        }
        let payload = onion_payload(self.identity.public_key(), &ack);
        if let Err(e) = lock(&self.onion).reply(&origin, &payload) {
            tracing::debug!(error = %e, "onion ACK not sent");
        }
    }
}
