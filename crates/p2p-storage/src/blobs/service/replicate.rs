//! Putting blobs and keeping them replicated: pushes to policy-chosen partners,
//! replica probes, and garbage collection.

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_replication::blob::{BlobId, Encoding, Manifest, TOTAL_SHARDS, place_shards};
use ecomesh_replication::policy::{Candidate, MAX_FACTOR, Origin, partners_in_reach};
use ecomesh_replication::shard::ShardRequest;
use ecomesh_types::PeerId;
#[cfg(doc)]
use ecomesh_types::Priority;

use super::super::frame::{self, FrameKind};
#[cfg(doc)]
use super::super::store::BlobStore;
use super::super::store::GcReport;
use super::{BlobService, Outgoing, Purpose, Queued, ShardOrManifest, lock};
use crate::StoreError;
use crate::kv::Backend;

impl<B: Backend> BlobService<B> {
    /// Stores `data` as a blob of `collection` (whose factor and pins apply)
    /// and queues its replication; returns its manifest at once.
    ///
    /// Replication (sent by the next [`process`](Self::process)): every
    /// target peer first gets the manifest (an `Announce`), then its pieces
    /// as `Push` requests at [`Priority::Bulk`]. For `rs-4-7` the 7 shards go
    /// to the peers [`place_shards`] picks from the partners ranked by the
    /// replication policy (at most 2 shards per peer when 4 or more are
    /// eligible; with fewer, round-robin over those there are, logged).
    /// Otherwise every piece goes to the collection's factor of partners
    /// chosen by [`partners_in_reach`]. Each `PushAck` records its sender as a
    /// confirmed replica of the piece.
    pub fn put_blob(
        &self,
        collection: &str,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Manifest, StoreError> {
        let encoded = self
            .store
            .put_blob(collection, data, &self.config.blob, now_ms)?;
        self.replicate(&encoded.manifest.id())?;
        Ok(encoded.manifest)
    }

    /// Queues pushes of the locally held pieces of `blob` that have fewer
    /// confirmed holders than they should (what [`put_blob`](Self::put_blob)
    /// does for a new blob), to the connected peers the policy picks: for
    /// `rs-4-7`, each shard with no confirmed holder goes to its
    /// [`place_shards`] peer; otherwise each piece goes to as many partners
    /// not yet confirmed for it as its collection's factor still lacks.
    /// Call it when peers connect (or from a retry queue) to heal blobs put
    /// while partners were away. Returns how many pushes were queued (0
    /// without a local manifest).
    pub fn replicate(&self, blob: &BlobId) -> Result<usize, StoreError> {
        let Some(stored) = self.store.manifest(blob)? else {
            return Ok(0);
        };
        let (collection, manifest) = (stored.collection, stored.manifest);
        let id_text = manifest.id().to_text();
        let candidates: Vec<Candidate> = self
            .mesh
            .peers()
            .iter()
            .map(Candidate::from_peer_info)
            .collect();
        let origin = Origin {
            peer: self.me(),
            network: None,
        };
        let pins = self.store.pins();
        let factor = self.config.replication.factor_for(&collection);
        let pick = |factor: u32, without: &BTreeSet<PeerId>| {
            partners_in_reach(
                factor,
                &collection,
                Some(&id_text),
                &origin,
                &pins,
                candidates
                    .iter()
                    .filter(|c| !without.contains(&c.peer))
                    .cloned(),
                |c| self.admits(&c.peer, &collection, blob),
            )
            .partners
        };
        let mut targets: Vec<(BlobId, PeerId)> = Vec::new();
        let mut held = Vec::new();
        for (i, piece) in manifest.pieces().iter().enumerate() {
            if self.store.has_piece(piece)? {
                held.push((i, *piece, self.store.confirmed(piece)?));
            }
        }
        if manifest.encoding() == Encoding::Rs4x7 {
            let ranked = pick(MAX_FACTOR, &BTreeSet::new());
            let placement: Vec<PeerId> = match place_shards(&ranked) {
                Ok(p) => p.to_vec(),
                Err(e) if !ranked.is_empty() => {
                    tracing::warn!(blob = %id_text, error = %e, "too few partners for a safe shard placement; spreading round-robin");
                    (0..TOTAL_SHARDS)
                        .map(|i| ranked[i % ranked.len()])
                        .collect()
                }
                Err(e) => {
                    tracing::warn!(blob = %id_text, error = %e, "no partner for the shards");
                    Vec::new()
                }
            };
            for (i, piece, confirmed) in &held {
                if let Some(peer) = placement.get(*i)
                    && confirmed.is_empty()
                {
                    targets.push((*piece, *peer));
                }
            }
        } else {
            // Pieces with the same confirmed holders get the same partners.
            let mut chosen: BTreeMap<BTreeSet<PeerId>, Vec<PeerId>> = BTreeMap::new();
            for (_, piece, confirmed) in &held {
                let lacking = (factor as usize).saturating_sub(confirmed.len());
                if lacking == 0 {
                    continue;
                }
                let partners = chosen
                    .entry(confirmed.clone())
                    .or_insert_with(|| pick(u32::try_from(lacking).unwrap_or(factor), confirmed));
                targets.extend(partners.iter().map(|p| (*piece, *p)));
            }
        }
        let announce = frame::encode_manifest(&collection, &manifest.to_bytes()?);
        let queued = targets.len();
        {
            let mut d = lock(&self.driver);
            let peers: BTreeSet<PeerId> = targets.iter().map(|(_, p)| *p).collect();
            for peer in peers {
                let request = self.next_request(&mut d);
                d.outbox.push_back(Outgoing {
                    peer,
                    kind: FrameKind::Announce,
                    request,
                    frame: announce.clone(),
                    bulk: false,
                    enveloped: false,
                });
            }
            for (piece, peer) in targets {
                self.enqueue(
                    &mut d,
                    Queued {
                        peer,
                        kind: FrameKind::ShardRequest,
                        request: ShardOrManifest::PushStored(piece),
                        purpose: Purpose::Push { piece },
                    },
                );
            }
        }
        if queued > 0 {
            self.wake();
        }
        Ok(queued)
    }

    /// [`replicate`](Self::replicate) for every blob this node originated;
    /// the pushes go out with the next [`process`](Self::process).
    pub(super) fn replicate_originated(&self) {
        let blobs = match self.store.originated() {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "blob index unreadable"),
        };
        for blob in blobs {
            if let Err(e) = self.replicate(&blob) {
                tracing::warn!(%blob, error = %e, "blob not replicated");
            }
        }
    }

    /// Asks every connected peer whether it holds each piece of `blob`
    /// (`Have`), recording `Have(true)` as a confirmed replica and forgetting
    /// the peers that answer `Have(false)`: run it before [`gc`](Self::gc)
    /// to refresh confirmations peers may have dropped. Returns how many
    /// requests were queued (0 without a local manifest).
    pub fn probe_replicas(&self, blob: &BlobId) -> Result<usize, StoreError> {
        let Some(stored) = self.store.manifest(blob)? else {
            return Ok(0);
        };
        let peers = self.connected();
        let mut n = 0;
        {
            let mut d = lock(&self.driver);
            for piece in stored.manifest.pieces() {
                for peer in &peers {
                    n += 1;
                    self.enqueue(
                        &mut d,
                        Queued {
                            peer: *peer,
                            kind: FrameKind::ShardRequest,
                            request: ShardOrManifest::Shard(ShardRequest::Have { id: *piece }),
                            purpose: Purpose::Have { piece: *piece },
                        },
                    );
                }
            }
        }
        self.wake();
        Ok(n)
    }

    /// Garbage-collects local pieces at `now_ms` under the configured
    /// factors and TTL (see [`BlobStore::gc`]); `referenced` declares which
    /// blobs the caller still refers to, beside the persistent references.
    pub fn gc(
        &self,
        now_ms: u64,
        referenced: &dyn Fn(&BlobId) -> bool,
    ) -> Result<GcReport, StoreError> {
        self.store.gc(&self.config.replication, now_ms, referenced)
    }
}
