//! The answering side of the shard protocol.

use ecomesh_types::PeerId;

use crate::ReplicationError;

use super::{ShardLimits, ShardRequest, ShardResponse, ShardStore};

/// What the server answered, and why it refused when the peer was at fault.
#[derive(Debug)]
pub struct Served {
    /// The response to send back.
    pub response: ShardResponse,
    /// Set when the request was refused because of the peer (a garbage
    /// frame, an oversized piece, pushed data that does not match its id),
    /// so that the caller can lower the peer's reputation. Store failures are
    /// not the peer's fault and are only logged.
    pub refused: Option<ReplicationError>,
}

impl Served {
    fn ok(response: ShardResponse) -> Self {
        Served {
            response,
            refused: None,
        }
    }
}

/// Answers shard requests from a [`ShardStore`].
///
/// Promises: `Get` returns exactly the stored bytes of the id or `NotFound`;
/// a `Push` is stored only when its data hashes to its id, otherwise it is
/// refused with [`ReplicationError::HashMismatch`] naming the sender and
/// nothing is written. Who may push or read what (reach, quotas) is decided
/// by the caller before handing a request over.
#[derive(Debug)]
pub struct ShardServer<S> {
    store: S,
    limits: ShardLimits,
}

impl<S: ShardStore> ShardServer<S> {
    /// A server over `store` that decodes requests within `limits`.
    pub fn new(store: S, limits: ShardLimits) -> Self {
        ShardServer { store, limits }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Decodes a request frame from `from` and answers it. A frame that does
    /// not decode is answered with `Error` and reported in [`Served::refused`].
    pub fn handle_frame(&mut self, from: PeerId, frame: &[u8]) -> Served {
        match ShardRequest::decode_with(frame, &self.limits) {
            Ok(request) => self.handle(from, request),
            Err(e) => {
                tracing::debug!(peer = %from, error = %e, "refused a shard request frame");
                Served {
                    response: ShardResponse::error(format!("bad request: {e}")),
                    refused: Some(e),
                }
            }
        }
    }

    /// Answers one decoded request from `from`.
    pub fn handle(&mut self, from: PeerId, request: ShardRequest) -> Served {
        match request {
            ShardRequest::Get { id } => match self.store.get(&id) {
                Ok(Some(data)) => Served::ok(ShardResponse::Data(data)),
                Ok(None) => Served::ok(ShardResponse::NotFound),
                // A corrupt local copy is not a copy.
                Err(ReplicationError::HashMismatch { .. }) => Served::ok(ShardResponse::NotFound),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "shard store read failed");
                    Served::ok(ShardResponse::error("storage error"))
                }
            },
            ShardRequest::Have { id } => match self.store.has(&id) {
                Ok(b) => Served::ok(ShardResponse::Have(b)),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "shard store lookup failed");
                    Served::ok(ShardResponse::error("storage error"))
                }
            },
            ShardRequest::Push { id, data } => {
                if data.len() > self.limits.max_shard {
                    let e = ReplicationError::TooLarge {
                        what: "shard data",
                        size: data.len(),
                        max: self.limits.max_shard,
                    };
                    return Served {
                        response: ShardResponse::error(e.to_string()),
                        refused: Some(e),
                    };
                }
                if let Err(e) = id.verify(&data, Some(from)) {
                    tracing::debug!(peer = %from, %id, "refused a pushed shard that does not match its id");
                    return Served {
                        response: ShardResponse::error("data does not match its id"),
                        refused: Some(e),
                    };
                }
                match self.store.put(&id, &data) {
                    Ok(()) => Served::ok(ShardResponse::PushAck),
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "shard store write failed");
                        Served::ok(ShardResponse::error("storage error"))
                    }
                }
            }
        }
    }
}
