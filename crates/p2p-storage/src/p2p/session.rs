//! Anti-entropy sessions with peers (`ecomesh/ae`): opening them, and the
//! envelopes that carry each protocol message once and in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use ecomesh_replication::ReplicationError;
use ecomesh_replication::antientropy::{Event as AeEvent, Session};
use ecomesh_types::PeerId;

use super::process::{Driver, Outgoing};
use super::wire::{Envelope, MAX_PART_BYTES, decode_envelope, encode_envelope};
use super::{AE_TYPE, P2PStorageAdapter, ReplicatedView, lock};
use crate::activity::SyncActivity;
use crate::kv::Backend;

/// One anti-entropy session with a peer, with the envelope state that keeps
/// its messages in order: the mesh may lose, duplicate, reorder or (after a
/// reconnection) replay messages, while a session needs each protocol message
/// once and in order.
pub(super) struct AeSession<B: Backend> {
    pub(super) session: Session<Arc<ReplicatedView<B>>>,
    pub(super) sid: u64,
    pub(super) initiator: bool,
    pub(super) next_out: u64,
    pub(super) next_in: u64,
    pub(super) parts: BTreeMap<u64, Vec<Vec<u8>>>,
    pub(super) parts_bytes: usize,
    pub(super) last_activity_ms: u64,
    pub(super) applied_reported: u64,
}

impl<B: Backend> AeSession<B> {
    pub(super) fn active(&self) -> bool {
        !self.session.is_done()
    }
}

impl<B: Backend> P2PStorageAdapter<B> {
    pub(super) fn start_session(&self, d: &mut Driver<B>, peer: PeerId) {
        let now_ms = d.now_ms;
        let mut session = Session::new(self.view_for(peer), peer, self.config.antientropy.clone());
        match session.start() {
            Ok(frames) => {
                d.stats.sessions_started += 1;
                lock(&self.view.activity).push(SyncActivity::SessionStarted { peer });
                // Session ids start at a random point, so a restarted node's
                // new sessions are not mistaken for its old ones.
                if d.next_sid == 0 {
                    let mut r = [0u8; 16];
                    self.fill_random(&mut r);
                    let [a, b, c, e, f, g, h, i, ..] = r;
                    d.next_sid = u64::from_le_bytes([a, b, c, e, f, g, h, i]) >> 1 | 1;
                }
                let sid = d.next_sid;
                d.next_sid = d.next_sid.wrapping_add(1).max(1);
                let mut ae = AeSession {
                    session,
                    sid,
                    initiator: true,
                    next_out: 0,
                    next_in: 1,
                    parts: BTreeMap::new(),
                    parts_bytes: 0,
                    last_activity_ms: now_ms,
                    applied_reported: 0,
                };
                Self::send_protocol_message(d, peer, &mut ae, frames);
                d.sessions.insert(peer, ae);
            }
            Err(e) => tracing::warn!(%peer, error = %e, "anti-entropy not started"),
        }
    }

    /// Queues one protocol message (its frames) in as few envelopes as fit.
    fn send_protocol_message(
        d: &mut Driver<B>,
        peer: PeerId,
        ae: &mut AeSession<B>,
        frames: Vec<Vec<u8>>,
    ) {
        let mut parts: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut size = 0usize;
        for f in frames {
            if size + f.len() > MAX_PART_BYTES && !parts.last().is_some_and(Vec::is_empty) {
                parts.push(Vec::new());
                size = 0;
            }
            size += f.len();
            if let Some(last) = parts.last_mut() {
                last.push(f);
            }
        }
        let total = parts.len() as u64;
        for (k, frames) in parts.into_iter().enumerate() {
            let e = Envelope {
                sid: ae.sid,
                seq: ae.next_out,
                part: k as u64,
                parts: total,
                frames,
            };
            d.outbox.push_back(Outgoing {
                peer,
                ty: AE_TYPE,
                payload: encode_envelope(&e),
                seq: None,
            });
        }
        ae.next_out += 2;
    }

    /// Handles one anti-entropy envelope from `from`.
    pub(super) fn on_envelope(&self, d: &mut Driver<B>, from: PeerId, payload: &[u8], now_ms: u64) {
        let Some(env) = decode_envelope(payload) else {
            self.charge(d, from, &"malformed anti-entropy envelope");
            return;
        };
        let me = self.store.peer_id();
        let current = d
            .sessions
            .get(&from)
            .map(|s| (s.sid, s.initiator, s.active()));
        match current {
            Some((sid, _, _)) if sid == env.sid => {}
            _ if env.seq != 0 => return, // a stale message of an older session
            // A hello of a new session from the peer. If this side opened one
            // too, the one opened by the smaller id wins.
            Some((_, true, true)) if me < from => return,
            _ => {
                lock(&self.view.activity).push(SyncActivity::SessionStarted { peer: from });
                d.sessions.insert(
                    from,
                    AeSession {
                        session: Session::new(
                            self.view_for(from),
                            from,
                            self.config.antientropy.clone(),
                        ),
                        sid: env.sid,
                        initiator: false,
                        next_out: 1,
                        next_in: 0,
                        parts: BTreeMap::new(),
                        parts_bytes: 0,
                        last_activity_ms: now_ms,
                        applied_reported: 0,
                    },
                );
            }
        }
        let Some(mut ae) = d.sessions.remove(&from) else {
            return;
        };
        if env.seq != ae.next_in || ae.parts.contains_key(&env.part) {
            d.sessions.insert(from, ae); // a duplicate or an old message
            return;
        }
        ae.last_activity_ms = now_ms;
        ae.parts_bytes += env.frames.iter().map(Vec::len).sum::<usize>();
        if ae.parts_bytes > self.config.antientropy.max_message_bytes {
            self.charge(d, from, &"anti-entropy message too large");
            return;
        }
        ae.parts.insert(env.part, env.frames);
        if (ae.parts.len() as u64) < env.parts {
            d.sessions.insert(from, ae);
            return;
        }
        let frames: Vec<Vec<u8>> = std::mem::take(&mut ae.parts)
            .into_values()
            .flatten()
            .collect();
        ae.parts_bytes = 0;
        ae.next_in += 2;
        let mut reply = Vec::new();
        for f in frames {
            match ae.session.handle(&f) {
                Ok(out) => {
                    reply.extend(out.frames);
                    for ev in out.events {
                        match ev {
                            AeEvent::Rejected { peer, cid, reason } => {
                                self.charge(d, peer, &format!("version {cid:?}: {reason}"));
                            }
                            other => tracing::debug!(?other, "anti-entropy event"),
                        }
                    }
                }
                Err(e) => {
                    match e {
                        ReplicationError::Storage(_) => {
                            tracing::error!(%from, error = %e, "anti-entropy: local storage failure");
                        }
                        e => self.charge(d, from, &e),
                    }
                    return;
                }
            }
        }
        let applied = ae.session.stats().versions_applied;
        d.stats.versions_merged += applied - ae.applied_reported;
        ae.applied_reported = applied;
        if !reply.is_empty() {
            Self::send_protocol_message(d, from, &mut ae, reply);
        }
        if !ae.active() {
            d.stats.sessions_done += 1;
            lock(&self.view.activity).push(SyncActivity::SessionEnded { peer: from });
        }
        d.sessions.insert(from, ae);
    }
}
