//! [`BlobService::process`] and the request pipeline it runs: request ids, the bounded
//! queue, dispatch into free slots, failures and timeouts, and sending envelopes.

use ecomesh_mesh::MeshEvent;
use ecomesh_replication::shard::ShardRequest;
use ecomesh_types::{MessageId, PeerId, Priority};

use super::super::frame;
use super::{
    BlobService, Driver, GetState, InFlight, Outgoing, Purpose, Queued, SHARD_TYPE,
    ShardOrManifest, lock,
};
use crate::kv::Backend;

impl<B: Backend> BlobService<B> {
    pub(super) fn next_request(&self, d: &mut Driver) -> u64 {
        if d.next_request == 0 {
            // Start at a random point so a restarted node's requests are not
            // mistaken for its old ones.
            let mut r = [0_u8; 16];
            self.fill_random(&mut r);
            let mut b = [0_u8; 8];
            b.copy_from_slice(&r[..8]);
            d.next_request = u64::from_le_bytes(b) >> 1 | 1;
        }
        let r = d.next_request;
        d.next_request = d.next_request.wrapping_add(1).max(1);
        r
    }

    pub(super) fn enqueue(&self, d: &mut Driver, q: Queued) {
        if d.queue.len() >= self.config.max_queued {
            d.stats.dropped_requests += 1;
            tracing::warn!(peer = %q.peer, "blob request queue full; request dropped");
            let now = d.now_ms;
            self.failed(d, q.purpose, now);
            return;
        }
        d.queue.push_back(q);
    }

    /// Moves queued requests out while there are free slots.
    fn dispatch(&self, d: &mut Driver) {
        while d.out.len() < self.config.max_in_flight.max(1) {
            let Some(q) = d.queue.pop_front() else { break };
            if self.mesh.peer_transports(&q.peer).is_empty() {
                // Gone meanwhile: fail now rather than park bulk bytes in the
                // mesh's store-and-forward buffer.
                d.stats.timeouts += 1;
                let now = d.now_ms;
                self.failed(d, q.purpose, now);
                continue;
            }
            let (frame, bulk) = match q.request {
                ShardOrManifest::Shard(r) => (r.encode(), false),
                ShardOrManifest::Manifest(id) => (id.as_bytes().to_vec(), false),
                ShardOrManifest::PushStored(piece) => match self.store.piece(&piece) {
                    Ok(Some(data)) => (ShardRequest::Push { id: piece, data }.encode(), true),
                    Ok(None) => continue, // collected meanwhile
                    Err(e) => {
                        tracing::warn!(%piece, error = %e, "piece to push unreadable");
                        continue;
                    }
                },
            };
            if matches!(q.purpose, Purpose::Push { .. }) {
                d.stats.pieces_pushed += 1;
            }
            let request = self.next_request(d);
            let deadline_ms = d.now_ms.saturating_add(self.config.request_timeout_ms);
            d.out.insert(
                (q.peer, request),
                InFlight {
                    purpose: q.purpose,
                    deadline_ms,
                },
            );
            d.outbox.push_back(Outgoing {
                peer: q.peer,
                kind: q.kind,
                request,
                frame,
                bulk,
                enveloped: false,
            });
        }
    }

    /// A request failed (timeout, lost peer, dropped).
    fn failed(&self, d: &mut Driver, purpose: Purpose, now_ms: u64) {
        match purpose {
            Purpose::Piece { get, rid } => {
                if let Some(op) = d.gets.get_mut(&get)
                    && let GetState::Fetching(f) = &mut op.state
                {
                    f.on_failure(rid);
                }
            }
            Purpose::Manifest { get } => self.manifest_answer(d, get, None, now_ms),
            Purpose::Push { .. } | Purpose::Have { .. } => {}
        }
    }

    /// Handles queued mesh events (requests from peers, answers, lost
    /// peers), expires requests past their deadline, drives every running
    /// `get_blob`, and sends what that produced. Returns how many events
    /// were handled.
    pub async fn process(&self, now_ms: u64) -> usize {
        let events: Vec<MeshEvent> = lock(&self.inbox).0.drain(..).collect();
        let handled = events.len();
        let connected = events
            .iter()
            .any(|e| matches!(e, MeshEvent::PeerDiscovered(_)));
        let more;
        let outbox: Vec<Outgoing> = {
            let mut d = lock(&self.driver);
            d.now_ms = now_ms;
            for ev in events {
                match ev {
                    MeshEvent::Message { message, .. } => {
                        self.on_envelope(&mut d, message.sender, &message.payload);
                    }
                    MeshEvent::PeerLost(p) => {
                        let lost: Vec<(PeerId, u64)> = d
                            .out
                            .range((p, 0)..=(p, u64::MAX))
                            .map(|(k, _)| *k)
                            .collect();
                        for k in lost {
                            if let Some(f) = d.out.remove(&k) {
                                d.stats.timeouts += 1;
                                self.failed(&mut d, f.purpose, now_ms);
                            }
                        }
                        d.reassembly.retain(|(peer, _, _), _| *peer != p);
                        d.reassembly_bytes = d.reassembly.values().map(|r| r.bytes).sum::<usize>();
                    }
                    _ => {}
                }
            }
            let expired: Vec<(PeerId, u64)> = d
                .out
                .iter()
                .filter(|(_, f)| f.deadline_ms <= now_ms)
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                if let Some(f) = d.out.remove(&k) {
                    d.stats.timeouts += 1;
                    self.failed(&mut d, f.purpose, now_ms);
                }
            }
            let timeout = self.config.request_timeout_ms;
            let stale: Vec<_> = d
                .reassembly
                .iter()
                .filter(|(_, r)| now_ms.saturating_sub(r.started_ms) >= timeout)
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                let _ = self.drop_reassembly(&mut d, &k);
            }
            // Failures above may let fetchers ask elsewhere; their requests
            // and the queue go out now.
            // A request that fails while dispatched (its peer left) lets its
            // fetcher ask elsewhere at once; bounded, since each round either
            // empties the queue, fills the slots, or fails requests for good.
            for _ in 0..4 {
                self.drive_gets(&mut d);
                self.dispatch(&mut d);
                if d.queue.is_empty() || d.out.len() >= self.config.max_in_flight.max(1) {
                    break;
                }
            }
            self.drive_gets(&mut d);
            more = !d.queue.is_empty() && d.out.len() < self.config.max_in_flight.max(1);
            d.outbox.drain(..).collect()
        };
        if more {
            self.wake();
        }
        if connected && self.config.replicate_on_connect {
            self.replicate_originated();
        }
        for o in outbox {
            if o.enveloped {
                self.send(o.peer, o.frame, o.bulk, now_ms).await;
                continue;
            }
            let parts = frame::split(o.kind, o.request, &o.frame, self.config.max_part_bytes);
            for part in parts {
                self.send(o.peer, part, o.bulk, now_ms).await;
            }
        }
        handled
    }

    /// Signs and sends one envelope; its id when the mesh took it.
    async fn send(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
        bulk: bool,
        now_ms: u64,
    ) -> Option<MessageId> {
        let mut random = [0_u8; 16];
        if !self.fill_random(&mut random) {
            return None;
        }
        let message = match self
            .mesh
            .new_message(SHARD_TYPE, payload, Some(peer), now_ms, random)
        {
            Ok(mut m) => {
                // Not covered by the signature; a short TTL keeps stale blob
                // traffic out of store-and-forward buffers.
                m.ttl_secs = self.config.message_ttl_secs;
                m
            }
            Err(e) => {
                tracing::error!(error = %e, "could not sign a blob message");
                return None;
            }
        };
        let id = message.id;
        let priority = if bulk {
            Priority::Bulk
        } else {
            Priority::Normal
        };
        match self.mesh.send(peer, message, priority, now_ms).await {
            Ok(_) => Some(id),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "blob message not sent");
                None
            }
        }
    }
}
