//! Serving peers' shard requests (Get / Have / Push) from the local store, within the
//! reach of the blobs that list each piece.

use ecomesh_replication::ReplicationError;
use ecomesh_replication::blob::BlobId;
use ecomesh_replication::shard::{ShardRequest, ShardResponse, ShardServer, ShardStore};
use ecomesh_types::PeerId;

use super::super::frame::{self, FrameKind, HEADER_LEN};
use super::super::store::BlobStore;
use super::{BlobService, Driver, Outgoing};
use crate::StoreError;
use crate::kv::Backend;

/// The store as the shard server sees it; writes are stamped `now_ms`.
struct Served<'a, B: Backend> {
    store: &'a BlobStore<B>,
    now_ms: u64,
}

fn storage(e: StoreError) -> ReplicationError {
    match e {
        StoreError::Blob(r) => r,
        StoreError::Corrupt { id, .. } => ReplicationError::HashMismatch {
            expected: id,
            peer: None,
        },
        e => ReplicationError::Storage(e.to_string()),
    }
}

impl<B: Backend> ShardStore for Served<'_, B> {
    fn put(&mut self, id: &BlobId, data: &[u8]) -> Result<(), ReplicationError> {
        self.store
            .put_piece(id, data, self.now_ms)
            .map(|_| ())
            .map_err(storage)
    }
    fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>, ReplicationError> {
        self.store.piece(id).map_err(storage)
    }
    fn has(&self, id: &BlobId) -> Result<bool, ReplicationError> {
        self.store.has_piece(id).map_err(storage)
    }
}

impl<B: Backend> BlobService<B> {
    /// Piece `piece` for `peer`, as the shard protocol's Get answers it: its
    /// verified bytes when this node holds it and the peer may have it (the
    /// reach of a local blob listing it admits the peer), else `None`. For
    /// carrying the shard protocol over a request-response transport.
    pub fn serve_piece(
        &self,
        peer: &PeerId,
        piece: &BlobId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.may_serve(peer, piece)? {
            return Ok(None);
        }
        self.store.piece(piece)
    }

    /// True when `peer` may have piece `piece`: some local blob listing it
    /// admits the peer, or no local manifest lists it (a piece held for
    /// others, whose blob this node does not know).
    fn may_serve(&self, peer: &PeerId, piece: &BlobId) -> Result<bool, StoreError> {
        let mut known = false;
        for blob in self.store.owners(piece)? {
            if let Some(stored) = self.store.manifest(&blob)? {
                known = true;
                if self.admits(peer, &stored.collection, &blob) {
                    return Ok(true);
                }
            }
        }
        Ok(!known)
    }

    /// The one envelope answering `Get` request `request` for piece `id`
    /// with its data, written straight from the store's copy (no re-hash:
    /// the fetcher verifies the piece): `None` when `from` may not have it,
    /// it is not held, or the frame needs more than one part (the general
    /// path answers those).
    fn data_envelope(&self, from: &PeerId, request: u64, id: &BlobId) -> Option<Vec<u8>> {
        match self.may_serve(from, id) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "blob index unreadable");
                return None;
            }
        }
        let max_part = self.config.max_part_bytes;
        let built = self.store.with_piece_unverified(id, |bytes| {
            // array(2) + uint + byte string head (at most 9 bytes).
            let frame_len = 11 + bytes.len();
            if frame_len > max_part {
                return None;
            }
            let mut envelope = Vec::with_capacity(HEADER_LEN + frame_len);
            envelope.extend_from_slice(&frame::encode(
                FrameKind::ShardResponse,
                request,
                0,
                1,
                &[],
            ));
            ShardResponse::encode_data_into(&mut envelope, bytes);
            Some(envelope)
        });
        match built {
            Ok(envelope) => envelope.flatten(),
            Err(e) => {
                tracing::warn!(piece = %id, error = %e, "blob piece unreadable");
                None
            }
        }
    }

    pub(super) fn serve(
        &self,
        d: &mut Driver,
        from: PeerId,
        request: u64,
        frame: &[u8],
        now_ms: u64,
    ) {
        d.stats.requests_served += 1;
        let decoded = ShardRequest::decode_with(frame, &self.config.limits);
        if let Ok(ShardRequest::Get { id }) = &decoded
            && let Some(envelope) = self.data_envelope(&from, request, id)
        {
            d.outbox.push_back(Outgoing {
                peer: from,
                kind: FrameKind::ShardResponse,
                request,
                frame: envelope,
                bulk: true,
                enveloped: true,
            });
            return;
        }
        let hidden = |id: &BlobId| match self.may_serve(&from, id) {
            Ok(ok) => !ok,
            Err(e) => {
                tracing::warn!(error = %e, "blob index unreadable");
                true
            }
        };
        let served =
            if !self.config.accept_pushes && matches!(decoded, Ok(ShardRequest::Push { .. })) {
                ShardResponse::error("pushes are not accepted")
            } else if let Ok(ShardRequest::Get { id }) = &decoded
                && hidden(id)
            {
                ShardResponse::NotFound
            } else if let Ok(ShardRequest::Have { id }) = &decoded
                && hidden(id)
            {
                ShardResponse::Have(false)
            } else {
                let mut server = ShardServer::new(
                    Served {
                        store: &self.store,
                        now_ms,
                    },
                    self.config.limits,
                );
                let s = server.handle_frame(from, frame);
                if let Some(e) = s.refused {
                    self.charge(d, from, &e);
                }
                s.response
            };
        let bulk = matches!(served, ShardResponse::Data(_));
        d.outbox.push_back(Outgoing {
            peer: from,
            kind: FrameKind::ShardResponse,
            request,
            frame: served.encode(),
            bulk,
            enveloped: false,
        });
    }
}
