//! Envelopes from peers: decoding, joining multi-part frames, dispatch by frame kind,
//! and the answers to this node's requests.

use std::collections::BTreeMap;

use ecomesh_mesh::reputation::Observation;
use ecomesh_replication::ReplicationError;
use ecomesh_replication::shard::ShardResponse;
use ecomesh_types::PeerId;

use super::super::frame::{self, FrameKind};
use super::{BlobService, Driver, GetOp, GetState, InFlight, Outgoing, Purpose, Reassembly};
use crate::kv::Backend;

/// True for errors that are the sending peer's fault.
fn peer_fault(e: &ReplicationError) -> bool {
    matches!(
        e,
        ReplicationError::Malformed { .. }
            | ReplicationError::TooLarge { .. }
            | ReplicationError::HashMismatch { .. }
            | ReplicationError::Wire(_)
    )
}

impl<B: Backend> BlobService<B> {
    pub(super) fn on_envelope(&self, d: &mut Driver, from: PeerId, payload: &[u8]) {
        let env = match frame::decode(payload, self.max_frame()) {
            Ok(e) => e,
            Err(e) => return self.charge(d, from, &e),
        };
        // A one-part frame (every default-sized piece) is used where it lies.
        let joined;
        let whole: &[u8] = if env.parts == 1 {
            env.payload
        } else {
            match self.reassemble(d, from, &env) {
                Ok(Some(w)) => {
                    joined = w;
                    &joined
                }
                Ok(None) => return,
                Err(e) => return self.charge(d, from, &e),
            }
        };
        let now = d.now_ms;
        match env.kind {
            FrameKind::ShardRequest => self.serve(d, from, env.request, whole, now),
            FrameKind::ShardResponse => self.on_shard_response(d, from, env.request, whole),
            FrameKind::ManifestRequest => match frame::decode_manifest_request(whole) {
                Ok(id) => {
                    d.stats.requests_served += 1;
                    let answer = match self.store.manifest(&id) {
                        Ok(Some(s)) if !self.admits(&from, &s.collection, &id) => Vec::new(),
                        Ok(Some(s)) => s
                            .manifest
                            .to_bytes()
                            .map(|b| frame::encode_manifest(&s.collection, &b))
                            .unwrap_or_default(),
                        Ok(None) => Vec::new(),
                        Err(e) => {
                            tracing::warn!(error = %e, "manifest unreadable");
                            Vec::new()
                        }
                    };
                    d.outbox.push_back(Outgoing {
                        peer: from,
                        kind: FrameKind::ManifestResponse,
                        request: env.request,
                        frame: answer,
                        bulk: false,
                        enveloped: false,
                    });
                }
                Err(e) => self.charge(d, from, &e),
            },
            FrameKind::ManifestResponse => {
                let Some(InFlight {
                    purpose: Purpose::Manifest { get },
                    ..
                }) = d.out.remove(&(from, env.request))
                else {
                    return;
                };
                if whole.is_empty() {
                    return self.manifest_answer(d, get, None, now);
                }
                let expected = d.gets.get(&get).map(|op| op.id);
                match frame::decode_manifest(whole, &self.config.manifest_limits) {
                    Ok((c, m)) if Some(m.id()) == expected => {
                        self.manifest_answer(d, get, Some((c, m)), now);
                    }
                    Ok(_) if expected.is_none() => {}
                    Ok(_) => {
                        self.charge(d, from, &"manifest of another blob");
                        self.manifest_answer(d, get, None, now);
                    }
                    Err(e) => {
                        self.charge(d, from, &e);
                        self.manifest_answer(d, get, None, now);
                    }
                }
            }
            FrameKind::Announce => {
                match frame::decode_manifest(whole, &self.config.manifest_limits) {
                    Ok((c, m)) => {
                        if let Err(e) = self.store.adopt_manifest(&c, &m, now) {
                            tracing::warn!(error = %e, "announced manifest not stored");
                        }
                    }
                    Err(e) => self.charge(d, from, &e),
                }
            }
        }
    }

    fn on_shard_response(&self, d: &mut Driver, from: PeerId, request: u64, frame: &[u8]) {
        let Some(InFlight { purpose, .. }) = d.out.remove(&(from, request)) else {
            return; // late, duplicate or unknown: ignored
        };
        let now = d.now_ms;
        match purpose {
            Purpose::Piece { get, rid } => {
                let Some(GetOp {
                    state: GetState::Fetching(f),
                    ..
                }) = d.gets.get_mut(&get)
                else {
                    return;
                };
                // The fetcher decodes the frame and hashes the piece once;
                // verified bytes are cached from its callback.
                let mut cached = None;
                let result = f.on_response_with(rid, frame, |id, bytes| {
                    // The serving peer is recorded as a replica in the same batch.
                    if let Err(e) = self.store.cache_verified_piece(&id, bytes, &from, now) {
                        tracing::warn!(error = %e, "fetched piece not cached");
                    }
                    cached = Some(id);
                });
                match result {
                    Ok(()) => {
                        if cached.is_some() {
                            d.stats.pieces_fetched += 1;
                            self.mesh.observe(from, Observation::Storage(true));
                        }
                    }
                    Err(e) if peer_fault(&e) => {
                        // It was asked for a piece and served other bytes.
                        self.mesh.observe(from, Observation::Storage(false));
                        self.charge(d, from, &e);
                    }
                    Err(e) => tracing::debug!(peer = %from, error = %e, "piece answer not used"),
                }
            }
            Purpose::Push { piece } => {
                match ShardResponse::decode_with(frame, &self.config.limits) {
                    Ok(ShardResponse::PushAck) => {
                        d.stats.pushes_acked += 1;
                        self.mesh.observe(from, Observation::Storage(true));
                        if let Err(e) = self.store.confirm(&piece, &from) {
                            tracing::warn!(error = %e, "replica confirmation not stored");
                        }
                    }
                    Ok(ShardResponse::Error(t)) => {
                        tracing::debug!(peer = %from, %piece, reason = %t, "push refused");
                    }
                    Ok(other) => self.charge(d, from, &format!("{other:?} answering a push")),
                    Err(e) => self.charge(d, from, &e),
                }
            }
            Purpose::Have { piece } => {
                match ShardResponse::decode_with(frame, &self.config.limits) {
                    Ok(ShardResponse::Have(true)) => {
                        if let Err(e) = self.store.confirm(&piece, &from) {
                            tracing::warn!(error = %e, "replica confirmation not stored");
                        }
                    }
                    Ok(ShardResponse::Have(false)) => {
                        // A confirmed holder that dropped the piece failed to keep it.
                        if self
                            .store
                            .confirmed(&piece)
                            .is_ok_and(|c| c.contains(&from))
                        {
                            self.mesh.observe(from, Observation::Storage(false));
                        }
                        if let Err(e) = self.store.unconfirm(&piece, &from) {
                            tracing::warn!(error = %e, "replica confirmation not removed");
                        }
                    }
                    Ok(ShardResponse::Error(_)) => {}
                    Ok(other) => self.charge(d, from, &format!("{other:?} answering Have")),
                    Err(e) => self.charge(d, from, &e),
                }
            }
            Purpose::Manifest { get } => {
                self.charge(d, from, &"a shard frame answering a manifest request");
                self.manifest_answer(d, get, None, now);
            }
        }
    }

    /// Joins the parts of a multi-part frame; the whole frame once complete.
    fn reassemble(
        &self,
        d: &mut Driver,
        from: PeerId,
        env: &frame::Envelope<'_>,
    ) -> Result<Option<Vec<u8>>, ReplicationError> {
        let max_frame = self.max_frame();
        let key = (from, env.kind, env.request);
        let now = d.now_ms;
        let r = d.reassembly.entry(key).or_insert_with(|| Reassembly {
            parts: BTreeMap::new(),
            total: env.parts,
            bytes: 0,
            started_ms: now,
        });
        if r.parts.contains_key(&env.part) && r.total == env.parts {
            return Ok(None); // a duplicate
        }
        let size = env.payload.len();
        let inconsistent = r.total != env.parts;
        let too_large = r.bytes.saturating_add(size) > max_frame;
        let over_budget =
            d.reassembly_bytes.saturating_add(size) > self.config.max_reassembly_bytes;
        if inconsistent || too_large || over_budget {
            let _ = self.drop_reassembly(d, &key);
            if inconsistent {
                return Err(ReplicationError::Malformed {
                    what: "blob envelope",
                    detail: "part count changed within a frame".to_owned(),
                });
            }
            if too_large {
                return Err(ReplicationError::TooLarge {
                    what: "blob frame",
                    size: max_frame.saturating_add(size),
                    max: max_frame,
                });
            }
            tracing::debug!(peer = %from, "reassembly budget exhausted; frame dropped");
            return Ok(None);
        }
        r.bytes += size;
        r.parts.insert(env.part, env.payload.to_vec());
        let complete = r.parts.len() as u64 == u64::from(r.total);
        d.reassembly_bytes += size;
        if !complete {
            return Ok(None);
        }
        let Some(r) = self.drop_reassembly(d, &key) else {
            return Ok(None);
        };
        let mut whole = Vec::with_capacity(r.bytes);
        for p in r.parts.into_values() {
            whole.extend_from_slice(&p);
        }
        Ok(Some(whole))
    }

    pub(super) fn drop_reassembly(
        &self,
        d: &mut Driver,
        key: &(PeerId, FrameKind, u64),
    ) -> Option<Reassembly> {
        let r = d.reassembly.remove(key)?;
        d.reassembly_bytes = d.reassembly_bytes.saturating_sub(r.bytes);
        Some(r)
    }

    /// The largest whole frame accepted: a piece plus framing, or a manifest.
    fn max_frame(&self) -> usize {
        let manifest = self
            .config
            .manifest_limits
            .max_pieces
            .saturating_mul(40)
            .saturating_add(2 + ecomesh_replication::policy::MAX_NAME_LEN + 64);
        self.config
            .limits
            .max_shard
            .saturating_add(64)
            .max(manifest)
    }
}
