//! The driver: [`P2PStorageAdapter::process`] handles queued mesh events,
//! dispatches messages, merges versions and sends what that produced.

use std::collections::{BTreeMap, VecDeque};

use ecomesh_mesh::MeshEvent;
use ecomesh_mesh::reputation::Observation;
use ecomesh_replication::merkle::{ApplyResult, ReconcileStore};
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Priority};

use super::config::P2PStats;
use super::fetch::Fetch;
use super::session::AeSession;
use super::wire::{decode_delta, decode_fetch, decode_fetched, decode_since};
use super::{
    AE_TYPE, DELTA_TYPE, FETCH_TYPE, FETCHED_TYPE, P2PStorageAdapter, PUSH_TYPE, SINCE_TYPE, lock,
};
use crate::kv::Backend;
use crate::skew::ClockSkew;

/// A message the driver will send; `seq` names the sync-queue item a push serves.
pub(super) struct Outgoing {
    pub(super) peer: PeerId,
    pub(super) ty: &'static str,
    pub(super) payload: Vec<u8>,
    pub(super) seq: Option<u64>,
}

/// Most pushes remembered while waiting for their ACK.
const MAX_PUSH_ACKS: usize = 65_536;

pub(super) struct Driver<B: Backend> {
    pub(super) sessions: BTreeMap<PeerId, AeSession<B>>,
    pub(super) next_sid: u64,
    pub(super) now_ms: u64,
    pub(super) outbox: VecDeque<Outgoing>,
    /// Pushes awaiting their mesh ACK: message id -> (queue seq, peer).
    pub(super) push_acks: BTreeMap<MessageId, (u64, PeerId)>,
    pub(super) fetches: BTreeMap<u64, Fetch>,
    pub(super) next_fetch: u64,
    pub(super) last_sync: BTreeMap<PeerId, u64>,
    /// Delta requests awaiting their page: peer -> when asked.
    pub(super) since_asked: BTreeMap<PeerId, u64>,
    pub(super) stats: P2PStats,
    /// Peers' clock offsets, from the send times of their messages.
    pub(super) clocks: ClockSkew,
    /// Stream entries this node may still serve to peers that are not established.
    pub(super) serve_budget: super::delta::ServeBudget,
}

impl<B: Backend> P2PStorageAdapter<B> {
    pub(super) fn charge(&self, d: &mut Driver<B>, peer: PeerId, why: &dyn std::fmt::Display) {
        tracing::warn!(%peer, reason = %why, "peer sent invalid replication data");
        d.stats.rejected += 1;
        // The mesh credited the message for its signature: that credit becomes a failure.
        self.mesh.observe(peer, Observation::InvalidContent);
    }

    /// Merges a version from `from`; true when the store now has it.
    pub(super) fn merge(&self, d: &mut Driver<B>, from: PeerId, bytes: &[u8]) -> bool {
        match self.view_for(from).apply_version(bytes) {
            Ok(ApplyResult::Applied) => {
                d.stats.versions_merged += 1;
                true
            }
            Ok(ApplyResult::AlreadyPresent) => true,
            Ok(ApplyResult::MissingParents(_)) => {
                // A gap: reconcile to get the history.
                if !d.sessions.get(&from).is_some_and(AeSession::active) {
                    self.start_session(d, from);
                }
                false
            }
            Ok(ApplyResult::Invalid(reason)) => {
                self.charge(d, from, &reason);
                false
            }
            Ok(other) => {
                tracing::debug!(%from, ?other, "version not merged");
                false
            }
            Err(e) => {
                tracing::error!(%from, error = %e, "could not merge a version");
                false
            }
        }
    }

    /// Merges a version that travelled in compact form (a push, a fetch
    /// answer, a delta page): rebuilds its canonical bytes, which
    /// [`merge`](Self::merge) checks (CID, signature, author, parents) like
    /// any received version. Undecodable bytes count as invalid data.
    pub(super) fn merge_compact(&self, d: &mut Driver<B>, from: PeerId, compact: &[u8]) -> bool {
        // The mesh verified the message with the sender's key, so it knows it.
        let key = self.mesh.public_key(&from).map(|k| k.to_bytes());
        if key.is_none() && compact.first() == Some(&crate::records::COMPACT_VERSION_FORMAT_SENDER)
        {
            // Not the peer's fault (the key was forgotten since the message
            // verified): anti-entropy brings the version in canonical form.
            tracing::debug!(%from, "sender's key unknown; compact version not merged");
            return false;
        }
        match crate::records::canonical_of_compact(compact, key.as_ref()) {
            Ok(canonical) => self.merge(d, from, &canonical),
            Err(e) => {
                self.charge(d, from, &format_args!("malformed compact version: {e}"));
                false
            }
        }
    }

    fn on_message(&self, d: &mut Driver<B>, message: NetworkMessage, now_ms: u64) {
        let from = message.sender;
        match message.message_type.as_str() {
            AE_TYPE => self.on_envelope(d, from, &message.payload, now_ms),
            PUSH_TYPE => {
                self.merge_compact(d, from, &message.payload);
            }
            FETCH_TYPE => match decode_fetch(&message.payload) {
                Some((req, c, i)) => self.serve_fetch(d, from, req, &c, &i),
                None => self.charge(d, from, &"malformed fetch request"),
            },
            SINCE_TYPE => match decode_since(&message.payload) {
                Some(since) => self.serve_since(d, from, since),
                None => self.charge(d, from, &"malformed stream request"),
            },
            DELTA_TYPE => match decode_delta(&message.payload, self.config.max_fetch_bytes) {
                Some(delta) => self.on_delta(d, from, delta),
                None => self.charge(d, from, &"malformed stream page"),
            },
            FETCHED_TYPE => match decode_fetched(&message.payload, self.config.max_fetch_bytes) {
                Some((req, versions)) => self.on_fetched(d, from, req, versions),
                None => self.charge(d, from, &"malformed fetch answer"),
            },
            _ => {}
        }
    }

    /// Handles queued mesh events (anti-entropy frames, pushes, fetches,
    /// connections), expires fetches, starts due resyncs, and sends what that
    /// produced. Returns how many events were handled.
    pub async fn process(&self, now_ms: u64) -> usize {
        let events: Vec<MeshEvent> = lock(&self.inbox).0.drain(..).collect();
        let handled = events.len();
        let outbox: Vec<Outgoing> = {
            let mut d = lock(&self.driver);
            d.now_ms = now_ms;
            self.drop_stalled_sessions(&mut d, now_ms);
            for ev in events {
                self.on_event(&mut d, ev, now_ms);
            }
            self.start_due_resyncs(&mut d, now_ms);
            self.relay_taken_in(&mut d);
            self.expire_fetches(&mut d, now_ms);
            d.outbox.drain(..).collect()
        };
        for o in outbox {
            let sent = self.send(o.peer, o.ty, o.payload, now_ms).await;
            if let (Some(id), Some(seq)) = (sent, o.seq) {
                let mut d = lock(&self.driver);
                if d.push_acks.len() >= MAX_PUSH_ACKS {
                    d.push_acks.pop_first();
                }
                d.push_acks.insert(id, (seq, o.peer));
            }
        }
        handled
    }

    /// A session that stopped hearing from its peer (a message was lost)
    /// is dropped; the initiator opens a new one at once.
    fn drop_stalled_sessions(&self, d: &mut Driver<B>, now_ms: u64) {
        let stalled: Vec<(PeerId, bool)> = d
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.active()
                    && now_ms.saturating_sub(s.last_activity_ms) >= self.config.session_timeout_ms
            })
            .map(|(p, s)| (*p, s.initiator))
            .collect();
        for (p, initiator) in stalled {
            d.sessions.remove(&p);
            if initiator && d.last_sync.contains_key(&p) {
                tracing::debug!(peer = %p, "anti-entropy session stalled; restarting");
                self.start_session(d, p);
            }
        }
    }

    /// Handles one queued mesh event.
    fn on_event(&self, d: &mut Driver<B>, ev: MeshEvent, now_ms: u64) {
        let me = self.store.peer_id();
        match ev {
            MeshEvent::PeerDiscovered(info) => {
                let p = info.peer_id;
                d.last_sync.insert(p, now_ms);
                self.retry_pending(d, p);
                self.ask_since(d, p);
                if me < p {
                    self.start_session(d, p);
                }
            }
            MeshEvent::PeerLost(p) => {
                d.sessions.remove(&p);
                d.last_sync.remove(&p);
                d.since_asked.remove(&p);
            }
            MeshEvent::Message { message, from, .. } => {
                // Straight from its sender: its send time tells its clock.
                if message.hop_count == 0 && message.sender == from {
                    d.clocks.observe(from, message.timestamp_ms, now_ms);
                }
                self.on_message(d, message, now_ms);
            }
            MeshEvent::Acked { id, by } => {
                if let Some((seq, peer)) = d.push_acks.remove(&id)
                    && peer == by
                    && let Some(q) = &self.queue
                {
                    match q.ack(seq, by) {
                        Ok(outcome) => {
                            tracing::debug!(seq, %by, ?outcome, "push acknowledged")
                        }
                        Err(e) => tracing::error!(error = %e, "sync queue: ack failed"),
                    }
                }
            }
            _ => {}
        }
    }

    /// Opens a session with each peer (this side having the smaller id) last
    /// reconciled `resync_interval_ms` ago or more.
    fn start_due_resyncs(&self, d: &mut Driver<B>, now_ms: u64) {
        let me = self.store.peer_id();
        let due: Vec<PeerId> = d
            .last_sync
            .iter()
            .filter(|(p, t)| {
                me < **p && now_ms.saturating_sub(**t) >= self.config.resync_interval_ms
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            d.last_sync.insert(p, now_ms);
            if !d.sessions.get(&p).is_some_and(AeSession::active) {
                self.start_session(d, p);
            }
        }
    }

    /// Fills `out` from the configured source or the OS; false (logged) when
    /// the OS has no randomness to give.
    pub(super) fn fill_random(&self, out: &mut [u8; 16]) -> bool {
        let source = lock(&self.random).clone();
        match source {
            Some(f) => {
                f(out);
                true
            }
            None => match getrandom::fill(out) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "no randomness");
                    false
                }
            },
        }
    }

    /// Signs and sends one message; its id when the mesh took it.
    async fn send(
        &self,
        peer: PeerId,
        ty: &str,
        payload: Vec<u8>,
        now_ms: u64,
    ) -> Option<MessageId> {
        let mut random = [0u8; 16];
        if !self.fill_random(&mut random) {
            return None;
        }
        let message = match self
            .mesh
            .new_message(ty, payload, Some(peer), now_ms, random)
        {
            Ok(mut m) => {
                // The TTL is not covered by the signature; a short one keeps
                // stale replication traffic out of store-and-forward buffers.
                m.ttl_secs = self.config.message_ttl_secs;
                m
            }
            Err(e) => {
                tracing::error!(error = %e, "could not sign a replication message");
                return None;
            }
        };
        let id = message.id;
        match self
            .mesh
            .send(peer, message, Priority::Normal, now_ms)
            .await
        {
            Ok(_) => Some(id),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "replication message not sent");
                None
            }
        }
    }
}
