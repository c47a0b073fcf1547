//! [`BlobStore`]: pieces, manifests, pins, references, last-use times and
//! confirmed replicas in the `b` namespace of a [`Backend`], and GC.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use ecomesh_replication::ReplicationError;
use ecomesh_replication::blob::{
    BlobConfig, BlobHasher, BlobId, EncodedBlob, Encoding, Manifest, ManifestLimits,
    encode_blob_with, rebuild,
};
use ecomesh_replication::policy::{
    GcItem, GcVerdict, KeepReason, MAX_NAME_LEN, Pin, PinSet, ReplicationConfig, Scope,
    gc_eligibility,
};
use ecomesh_types::{Map, PeerId, Value};
use ecomesh_wire::Limits;

use super::frame;
use crate::StoreError;
use crate::kv::{Backend, WriteBatch, prefix_end};

/// The first byte of every key the blob store writes. The document store's
/// tags are upper-case letters (see the crate's key layout), so the two never
/// collide on a shared backend.
pub const NAMESPACE: u8 = b'b';

const PIECE: u8 = b'p';
const PIECE_USED: u8 = b't';
const MANIFEST: u8 = b'm';
const BLOB_USED: u8 = b'u';
const OWNER: u8 = b'x';
const CONFIRMED: u8 = b'c';
const PIN: u8 = b'k';
const REFERENCE: u8 = b'r';
const ORIGIN: u8 = b'o';

/// The collection GC judges a piece by when no local manifest lists it (a
/// piece pushed here before, or without, its manifest): its factor is the
/// configured default unless set, and pins on this collection keep such pieces.
pub const HELD_COLLECTION: &str = "_held";

/// Longest reference holder name, in bytes.
pub const MAX_HOLDER_LEN: usize = 1024;

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(NAMESPACE);
    k.push(tag);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn corrupt(id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        collection: "blob".to_owned(),
        id: id.to_owned(),
        reason: reason.to_string(),
    }
}

fn write_error(e: std::io::Error) -> StoreError {
    StoreError::Blob(ReplicationError::Storage(format!("writing a blob: {e}")))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_collection(collection: &str) -> Result<(), StoreError> {
    if collection.is_empty() || collection.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidArgument(format!(
            "collection name must be 1..={MAX_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

/// A manifest as this node keeps it: with the collection the blob belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    /// The collection whose replication factor and pins apply to the blob.
    pub collection: String,
    /// How the blob is stored.
    pub manifest: Manifest,
}

/// One piece GC deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcDeleted {
    /// The piece.
    pub piece: BlobId,
    /// The local blobs it belongs to (empty for a held piece).
    pub blobs: Vec<BlobId>,
    /// Bytes freed.
    pub bytes: u64,
}

/// One piece GC kept, and every reason why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcKept {
    /// The piece.
    pub piece: BlobId,
    /// The local blobs it belongs to (empty for a held piece).
    pub blobs: Vec<BlobId>,
    /// Why it stays (never empty; the union over its blobs).
    pub reasons: Vec<KeepReason>,
}

/// What one GC pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Pieces deleted.
    pub deleted: Vec<GcDeleted>,
    /// Pieces kept, with the reasons.
    pub kept: Vec<GcKept>,
}

impl GcReport {
    /// Bytes freed in total.
    pub fn freed_bytes(&self) -> u64 {
        self.deleted.iter().map(|d| d.bytes).sum()
    }

    /// True when `piece` was deleted.
    pub fn was_deleted(&self, piece: &BlobId) -> bool {
        self.deleted.iter().any(|d| d.piece == *piece)
    }

    /// The reasons `piece` was kept, if it was.
    pub fn kept_reasons(&self, piece: &BlobId) -> Option<&[KeepReason]> {
        self.kept
            .iter()
            .find(|k| k.piece == *piece)
            .map(|k| k.reasons.as_slice())
    }
}

/// Durable content-addressed blob storage on a [`Backend`] (see the module docs).
///
/// Promises:
/// - a piece is stored only when its bytes hash to its id, and is returned
///   only after it was hashed again on read: a damaged piece on disk is
///   [`StoreError::Corrupt`], never returned, never a panic;
/// - a piece and its index entries (last use, owning blob) are written in one
///   atomic batch, and so is a whole blob put with [`BlobStore::put_blob`]
///   (every piece, the manifest and the indexes), so a crash leaves all of it
///   or none;
/// - pins, references and confirmed replicas persist across reopen;
/// - [`BlobStore::gc`] deletes a piece only when [`gc_eligibility`] says every
///   local blob it belongs to may go.
///
/// Every key starts with [`NAMESPACE`], so it can share the document store's
/// backend (`store.backend().clone()`); open the document store first, since
/// it refuses a non-empty backend without its format marker.
pub struct BlobStore<B: Backend> {
    backend: B,
    local: PeerId,
    limits: ManifestLimits,
    pins: Mutex<PinSet>,
}

impl<B: Backend> std::fmt::Debug for BlobStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

const PIN_USER: i64 = 0;
const PIN_APP: i64 = 1;
const PIN_REGION: i64 = 2;

fn encode_pin(pin: &Pin) -> Result<Vec<u8>, StoreError> {
    let mut m = Map::new();
    let scope = pin.scope();
    m.insert("c".into(), Value::Text(scope.collection.clone()));
    if let Some(id) = &scope.id {
        m.insert("i".into(), Value::Text(id.clone()));
    }
    match pin {
        Pin::User { devices, .. } => {
            m.insert("k".into(), Value::Integer(PIN_USER));
            m.insert(
                "d".into(),
                Value::Array(
                    devices
                        .iter()
                        .map(|p| Value::Bytes(p.as_bytes().to_vec()))
                        .collect(),
                ),
            );
        }
        Pin::App { app, .. } => {
            m.insert("k".into(), Value::Integer(PIN_APP));
            m.insert("a".into(), Value::Text(app.clone()));
        }
        Pin::NetworkRegion { region, .. } => {
            m.insert("k".into(), Value::Integer(PIN_REGION));
            m.insert("a".into(), Value::Text(region.clone()));
        }
    }
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).map_err(|e| StoreError::Encode(e.to_string()))
}

/// The pin part of the `store_records` fuzz check (see [`crate::fuzzing`]): a pin
/// record that decodes encodes to bytes that decode to the same pin.
pub(crate) fn fuzz_pin(data: &[u8]) {
    if let Ok(pin) = decode_pin(data) {
        match encode_pin(&pin).map(|bytes| decode_pin(&bytes)) {
            Ok(Ok(again)) => assert_eq!(again, pin),
            Ok(Err(e)) | Err(e) => panic!("a decoded pin does not round-trip: {e}"),
        }
    }
}

/// Genuine pin records of each kind, for the fuzz target's seed corpus.
pub(crate) fn fuzz_pin_seeds() -> Vec<Vec<u8>> {
    let pins = [
        Pin::User {
            scope: Scope::document("notes", "a"),
            devices: BTreeSet::from([PeerId::from_digest([4; 32])]),
        },
        Pin::App {
            scope: Scope::collection("photos"),
            app: "gallery".into(),
        },
        Pin::NetworkRegion {
            scope: Scope::collection("records"),
            region: "eu".into(),
        },
    ];
    pins.iter().filter_map(|p| encode_pin(p).ok()).collect()
}

fn decode_pin(bytes: &[u8]) -> Result<Pin, StoreError> {
    let bad = |why: &str| corrupt("pin", why);
    let limits = Limits {
        max_depth: 3,
        max_len: 1 << 20,
    };
    let Ok(Value::Map(m)) = ecomesh_wire::from_dag_cbor_with(bytes, &limits) else {
        return Err(bad("not a map"));
    };
    let text = |k: &str| match m.get(k) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    };
    let collection = text("c").ok_or_else(|| bad("no collection"))?;
    let scope = match text("i") {
        Some(id) => Scope::document(&collection, &id),
        None => Scope::collection(&collection),
    };
    match m.get("k") {
        Some(Value::Integer(PIN_USER)) => {
            let Some(Value::Array(ds)) = m.get("d") else {
                return Err(bad("user pin without devices"));
            };
            let devices = ds
                .iter()
                .map(|d| match d {
                    Value::Bytes(b) => PeerId::from_slice(b).map_err(|_| bad("bad device id")),
                    _ => Err(bad("bad device id")),
                })
                .collect::<Result<BTreeSet<_>, _>>()?;
            Ok(Pin::User { scope, devices })
        }
        Some(Value::Integer(PIN_APP)) => Ok(Pin::App {
            scope,
            app: text("a").ok_or_else(|| bad("app pin without app"))?,
        }),
        Some(Value::Integer(PIN_REGION)) => Ok(Pin::NetworkRegion {
            scope,
            region: text("a").ok_or_else(|| bad("region pin without region"))?,
        }),
        _ => Err(bad("unknown pin kind")),
    }
}

fn u64_value(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(what, "last-use time is not 8 bytes"))
}

fn id_after(k: &[u8], skip: usize, what: &str) -> Result<BlobId, StoreError> {
    k.get(skip..skip + BlobId::LEN)
        .and_then(|b| BlobId::from_slice(b).ok())
        .ok_or_else(|| corrupt(what, "key too short"))
}

impl<B: Backend> BlobStore<B> {
    /// Opens the blob store in `backend` for node `local` (whose own copies
    /// never count as replicas); manifests are read within `limits`.
    /// Loads the pins; a pin record that does not decode is [`StoreError::Corrupt`].
    pub fn open(backend: B, local: PeerId, limits: ManifestLimits) -> Result<Self, StoreError> {
        let mut pins = PinSet::new();
        let start = key(PIN, &[]);
        let end = prefix_end(&start);
        for item in backend.scan(&start, end.as_deref()) {
            let (k, _) = item?;
            let pin = decode_pin(&k[2..])?;
            pins.add(pin)
                .map_err(|e| corrupt("pin", format!("invalid pin: {e}")))?;
        }
        Ok(BlobStore {
            backend,
            local,
            limits,
            pins: Mutex::new(pins),
        })
    }

    /// The node whose store this is.
    pub fn local(&self) -> PeerId {
        self.local
    }

    /// The manifest limits.
    pub fn limits(&self) -> &ManifestLimits {
        &self.limits
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.backend.apply(batch)?;
        self.backend.flush()
    }

    /// Cuts `data` as `config` says and stores every piece, the manifest (in
    /// `collection`) and the indexes in one atomic batch, last used `now_ms`.
    pub fn put_blob(
        &self,
        collection: &str,
        data: &[u8],
        config: &BlobConfig,
        now_ms: u64,
    ) -> Result<EncodedBlob, StoreError> {
        check_collection(collection)?;
        let encoded = encode_blob_with(data, config, &self.limits)?;
        let mut batch = WriteBatch::new();
        for (id, bytes) in encoded.manifest.pieces().iter().zip(&encoded.pieces) {
            batch.insert(key(PIECE, &[id.as_bytes()]), Some(bytes.clone()));
            batch.insert(
                key(PIECE_USED, &[id.as_bytes()]),
                Some(now_ms.to_be_bytes().to_vec()),
            );
        }
        self.manifest_batch(&mut batch, collection, &encoded.manifest, now_ms)?;
        batch.insert(
            key(ORIGIN, &[encoded.manifest.id().as_bytes()]),
            Some(vec![]),
        );
        self.apply(batch)?;
        Ok(encoded)
    }

    fn manifest_batch(
        &self,
        batch: &mut WriteBatch,
        collection: &str,
        manifest: &Manifest,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let id = manifest.id();
        let bytes = manifest.to_bytes()?;
        batch.insert(
            key(MANIFEST, &[id.as_bytes()]),
            Some(frame::encode_manifest(collection, &bytes)),
        );
        let used = self.blob_last_used(&id)?.unwrap_or(0).max(now_ms);
        batch.insert(
            key(BLOB_USED, &[id.as_bytes()]),
            Some(used.to_be_bytes().to_vec()),
        );
        for piece in manifest.pieces() {
            batch.insert(key(OWNER, &[piece.as_bytes(), id.as_bytes()]), Some(vec![]));
        }
        Ok(())
    }

    /// Stores `manifest` as belonging to `collection` (replacing the collection
    /// if it was stored before) and marks the blob used at `now_ms` (a
    /// later use time is kept).
    pub fn put_manifest(
        &self,
        collection: &str,
        manifest: &Manifest,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        check_collection(collection)?;
        let mut batch = WriteBatch::new();
        self.manifest_batch(&mut batch, collection, manifest, now_ms)?;
        self.apply(batch)
    }

    /// Stores a manifest received from a peer, unless one is already stored:
    /// a peer never changes the collection (and so the factor and pins) of
    /// a blob this node knows. True when it was stored.
    pub fn adopt_manifest(
        &self,
        collection: &str,
        manifest: &Manifest,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if self
            .backend
            .get(&key(MANIFEST, &[manifest.id().as_bytes()]))?
            .is_some()
        {
            return Ok(false);
        }
        self.put_manifest(collection, manifest, now_ms)?;
        Ok(true)
    }

    /// The stored manifest of `blob`.
    pub fn manifest(&self, blob: &BlobId) -> Result<Option<StoredManifest>, StoreError> {
        match self.backend.get(&key(MANIFEST, &[blob.as_bytes()]))? {
            None => Ok(None),
            Some(bytes) => {
                let (collection, manifest) = frame::decode_manifest(&bytes, &self.limits)
                    .map_err(|e| corrupt(&blob.to_text(), e))?;
                if manifest.id() != *blob {
                    return Err(corrupt(&blob.to_text(), "manifest of another blob"));
                }
                Ok(Some(StoredManifest {
                    collection,
                    manifest,
                }))
            }
        }
    }

    /// Every blob with a stored manifest, in id order.
    pub fn blobs(&self) -> Result<Vec<BlobId>, StoreError> {
        self.ids(MANIFEST)
    }

    /// The blobs stored here with [`BlobStore::put_blob`] (this node is
    /// their origin and answers for their replication), in id order.
    pub fn originated(&self) -> Result<Vec<BlobId>, StoreError> {
        self.ids(ORIGIN)
    }

    /// Every piece held, in id order.
    pub fn pieces(&self) -> Result<Vec<BlobId>, StoreError> {
        self.ids(PIECE_USED)
    }

    fn ids(&self, tag: u8) -> Result<Vec<BlobId>, StoreError> {
        let start = key(tag, &[]);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        for item in self.backend.scan(&start, end.as_deref()) {
            let (k, _) = item?;
            out.push(id_after(&k, 2, "index")?);
        }
        Ok(out)
    }

    /// Stores one piece whose bytes must hash to `id` (otherwise
    /// [`ReplicationError::HashMismatch`] and nothing is written), with its
    /// last use `now_ms`. Returns false when it was already held.
    pub fn put_piece(&self, id: &BlobId, data: &[u8], now_ms: u64) -> Result<bool, StoreError> {
        if data.len() as u64 > self.limits.max_piece_len {
            return Err(ReplicationError::TooLarge {
                what: "blob piece",
                size: data.len(),
                max: usize::try_from(self.limits.max_piece_len).unwrap_or(usize::MAX),
            }
            .into());
        }
        id.verify(data, None)?;
        let fresh = self.piece_batch(WriteBatch::new(), id, data, now_ms)?;
        self.backend.flush()?;
        Ok(fresh)
    }

    /// Stores a piece whose bytes the caller has just hashed to `id` (the
    /// fetcher verifies every piece on arrival), without hashing them again
    /// and without waiting for the disk: the atomic batch is applied and
    /// reaches the disk with the backend's next flush ([`BlobStore::flush`],
    /// which a finished get calls). A piece lost to a crash before then is
    /// fetched again. `from`, the peer that served the bytes, is recorded
    /// as a confirmed replica in the same batch. Returns false when the
    /// piece was already held.
    pub(crate) fn cache_verified_piece(
        &self,
        id: &BlobId,
        data: &[u8],
        from: &PeerId,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if data.len() as u64 > self.limits.max_piece_len {
            return Err(ReplicationError::TooLarge {
                what: "blob piece",
                size: data.len(),
                max: usize::try_from(self.limits.max_piece_len).unwrap_or(usize::MAX),
            }
            .into());
        }
        let mut batch = WriteBatch::new();
        if *from != self.local {
            batch.insert(
                key(CONFIRMED, &[id.as_bytes(), from.as_bytes()]),
                Some(vec![]),
            );
        }
        self.piece_batch(batch, id, data, now_ms)
    }

    /// Makes every write so far durable.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush()
    }

    /// Writes a verified piece and its last use with `batch` as one atomic
    /// batch (not flushed).
    fn piece_batch(
        &self,
        mut batch: WriteBatch,
        id: &BlobId,
        data: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let fresh = !self.has_piece(id)?;
        if fresh {
            batch.insert(key(PIECE, &[id.as_bytes()]), Some(data.to_vec()));
        }
        let used = self.piece_last_used(id)?.unwrap_or(0).max(now_ms);
        batch.insert(
            key(PIECE_USED, &[id.as_bytes()]),
            Some(used.to_be_bytes().to_vec()),
        );
        self.backend.apply(batch)?;
        Ok(fresh)
    }

    /// True when the piece is held (its bytes are not read).
    pub fn has_piece(&self, id: &BlobId) -> Result<bool, StoreError> {
        Ok(self
            .backend
            .get(&key(PIECE_USED, &[id.as_bytes()]))?
            .is_some())
    }

    /// The piece's bytes, hashed again: bytes that no longer match the id (or
    /// exceed the piece limit) are [`StoreError::Corrupt`].
    pub fn piece(&self, id: &BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(bytes) = self.backend.get(&key(PIECE, &[id.as_bytes()]))? else {
            return Ok(None);
        };
        if bytes.len() as u64 > self.limits.max_piece_len {
            return Err(corrupt(&id.to_text(), "piece larger than the piece limit"));
        }
        if !id.matches(&bytes) {
            return Err(corrupt(&id.to_text(), "piece does not match its id"));
        }
        Ok(Some(bytes))
    }

    /// Lends the stored bytes of piece `id` to `f` without copying or
    /// re-hashing them, and returns what `f` returned (`None` when the
    /// piece is not held). For serving: the receiver verifies every piece
    /// against its id anyway, so a piece that rotted here is refused there
    /// (and asked elsewhere), not passed on. A stored value over the piece
    /// limit is reported as [`StoreError::Corrupt`] and `f` is not called.
    pub fn with_piece_unverified<R>(
        &self,
        id: &BlobId,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StoreError> {
        let max = self.limits.max_piece_len;
        let mut f = Some(f);
        let mut out = None;
        let mut too_large = false;
        self.backend
            .get_with(&key(PIECE, &[id.as_bytes()]), &mut |bytes: &[u8]| {
                if bytes.len() as u64 > max {
                    too_large = true;
                } else if let Some(f) = f.take() {
                    out = Some(f(bytes));
                }
            })?;
        if too_large {
            return Err(corrupt(&id.to_text(), "piece larger than the piece limit"));
        }
        Ok(out)
    }

    /// Forgets a piece (its bytes and last use); true when it was held.
    pub fn remove_piece(&self, id: &BlobId) -> Result<bool, StoreError> {
        let held =
            self.has_piece(id)? || self.backend.get(&key(PIECE, &[id.as_bytes()]))?.is_some();
        let mut batch = WriteBatch::new();
        batch.insert(key(PIECE, &[id.as_bytes()]), None);
        batch.insert(key(PIECE_USED, &[id.as_bytes()]), None);
        self.apply(batch)?;
        Ok(held)
    }

    /// The verified local pieces of `manifest` by index; a damaged one is
    /// removed (so it can be fetched again) and left out.
    pub fn local_pieces(
        &self,
        manifest: &Manifest,
    ) -> Result<BTreeMap<usize, Vec<u8>>, StoreError> {
        let mut out = BTreeMap::new();
        for (i, id) in manifest.pieces().iter().enumerate() {
            match self.piece(id) {
                Ok(Some(b)) => {
                    out.insert(i, b);
                }
                Ok(None) => {}
                Err(StoreError::Corrupt { reason, .. }) => {
                    tracing::warn!(piece = %id, %reason, "damaged blob piece dropped");
                    self.remove_piece(id)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The blob rebuilt from local pieces alone, if its manifest and enough
    /// pieces are here (all of them, or any 4 of 7 shards). Verified against
    /// the blob id. Marks the blob used at `now_ms`. A `none` or `chunked`
    /// blob is assembled in its own size of memory (each piece is read once
    /// and hashed once, into the whole blob's hash; see
    /// [`BlobStore::write_local`]).
    pub fn read_local(&self, blob: &BlobId, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(stored) = self.manifest(blob)? else {
            return Ok(None);
        };
        if stored.manifest.encoding() != Encoding::Rs4x7 {
            if !self.holds_all(&stored.manifest)? {
                return Ok(None);
            }
            // Every piece is here, so the length is backed by bytes on disk.
            let mut out = Vec::with_capacity(usize::try_from(stored.manifest.len()).unwrap_or(0));
            return match self.stream_local(&stored.manifest, &mut out)? {
                Some(_) => {
                    self.touch(blob, now_ms)?;
                    Ok(Some(out))
                }
                None => Ok(None),
            };
        }
        let mut pieces = self.local_pieces(&stored.manifest)?;
        if pieces.len() < stored.manifest.pieces_needed() {
            return Ok(None);
        }
        // Data shards first: they rebuild without decoding.
        while pieces.len() > stored.manifest.pieces_needed() {
            pieces.pop_last();
        }
        let data = rebuild(&stored.manifest, &pieces)?;
        self.touch(blob, now_ms)?;
        Ok(Some(data))
    }

    /// Writes blob `blob` from local pieces to `out` and returns its length,
    /// or `None` (nothing written) when its manifest or pieces are not all
    /// here. A `none` or `chunked` blob streams: one piece in memory at a
    /// time, each read once and hashed once into the whole blob's hash,
    /// which is checked at the end (an `rs-4-7` blob is rebuilt in memory
    /// first, as [`BlobStore::read_local`] does). On an error the bytes
    /// already written are not the blob and must be discarded; a local
    /// piece found damaged is removed so that it can be fetched again.
    /// Marks the blob used at `now_ms`.
    pub fn write_local(
        &self,
        blob: &BlobId,
        out: &mut dyn std::io::Write,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(stored) = self.manifest(blob)? else {
            return Ok(None);
        };
        if stored.manifest.encoding() == Encoding::Rs4x7 {
            let Some(data) = self.read_local(blob, now_ms)? else {
                return Ok(None);
            };
            out.write_all(&data).map_err(write_error)?;
            return Ok(Some(data.len() as u64));
        }
        if !self.holds_all(&stored.manifest)? {
            return Ok(None);
        }
        let written = self.stream_local(&stored.manifest, out)?;
        if written.is_some() {
            self.touch(blob, now_ms)?;
        }
        Ok(written)
    }

    /// True when every piece of `manifest` is held (their bytes are not read).
    fn holds_all(&self, manifest: &Manifest) -> Result<bool, StoreError> {
        for id in manifest.pieces() {
            if !self.has_piece(id)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Streams the pieces of a `none` or `chunked` blob to `out` in order,
    /// hashing them into the blob's id; `None` when a piece is missing
    /// before anything was written.
    fn stream_local(
        &self,
        manifest: &Manifest,
        out: &mut dyn std::io::Write,
    ) -> Result<Option<u64>, StoreError> {
        let blob = manifest.id();
        let mut hasher = BlobHasher::new();
        let mut written = 0_u64;
        for (index, id) in manifest.pieces().iter().enumerate() {
            let Some(bytes) = self.backend.get(&key(PIECE, &[id.as_bytes()]))? else {
                if written == 0 {
                    return Ok(None);
                }
                return Err(ReplicationError::Unrecoverable {
                    what: blob.to_text(),
                    detail: format!("piece {index} was removed while the blob was read"),
                }
                .into());
            };
            if manifest.piece_size(index) != Some(bytes.len() as u64) {
                tracing::warn!(piece = %id, "local blob piece of the wrong length dropped");
                self.remove_piece(id)?;
                return Err(corrupt(&id.to_text(), "piece of the wrong length"));
            }
            hasher.update(&bytes);
            out.write_all(&bytes).map_err(write_error)?;
            written += bytes.len() as u64;
        }
        if hasher.finish() == blob {
            return Ok(Some(written));
        }
        // Which piece rotted? Each is hashed on its own to find out, and
        // dropped so that it is fetched again.
        for id in manifest.pieces() {
            if let Err(StoreError::Corrupt { reason, .. }) = self.piece(id) {
                tracing::warn!(piece = %id, %reason, "damaged blob piece dropped");
                self.remove_piece(id)?;
            }
        }
        Err(corrupt(
            &blob.to_text(),
            "local pieces do not rebuild the blob",
        ))
    }

    /// Marks `blob` used at `now_ms` (a later stored time is kept).
    pub fn touch(&self, blob: &BlobId, now_ms: u64) -> Result<(), StoreError> {
        let used = self.blob_last_used(blob)?.unwrap_or(0).max(now_ms);
        let mut batch = WriteBatch::new();
        batch.insert(
            key(BLOB_USED, &[blob.as_bytes()]),
            Some(used.to_be_bytes().to_vec()),
        );
        self.apply(batch)
    }

    /// When `blob` was last stored or read here.
    pub fn blob_last_used(&self, blob: &BlobId) -> Result<Option<u64>, StoreError> {
        self.backend
            .get(&key(BLOB_USED, &[blob.as_bytes()]))?
            .map(|b| u64_value(&b, "blob last use"))
            .transpose()
    }

    /// When piece `id` was last stored here.
    pub fn piece_last_used(&self, id: &BlobId) -> Result<Option<u64>, StoreError> {
        self.backend
            .get(&key(PIECE_USED, &[id.as_bytes()]))?
            .map(|b| u64_value(&b, "piece last use"))
            .transpose()
    }

    /// Records that `peer` proved it holds `piece` (it acknowledged a push,
    /// answered `Have(true)` or served verified bytes). This node itself is
    /// never recorded. True when it is new.
    pub fn confirm(&self, piece: &BlobId, peer: &PeerId) -> Result<bool, StoreError> {
        if *peer == self.local {
            return Ok(false);
        }
        let k = key(CONFIRMED, &[piece.as_bytes(), peer.as_bytes()]);
        if self.backend.get(&k)?.is_some() {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        batch.insert(k, Some(vec![]));
        self.apply(batch)?;
        Ok(true)
    }

    /// Forgets that `peer` holds `piece` (it answered `Have(false)`).
    pub fn unconfirm(&self, piece: &BlobId, peer: &PeerId) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.insert(key(CONFIRMED, &[piece.as_bytes(), peer.as_bytes()]), None);
        self.apply(batch)
    }

    /// The other peers confirmed to hold `piece`.
    pub fn confirmed(&self, piece: &BlobId) -> Result<BTreeSet<PeerId>, StoreError> {
        let start = key(CONFIRMED, &[piece.as_bytes()]);
        let end = prefix_end(&start);
        let mut out = BTreeSet::new();
        for item in self.backend.scan(&start, end.as_deref()) {
            let (k, _) = item?;
            let peer = k
                .get(2 + BlobId::LEN..)
                .and_then(|b| PeerId::from_slice(b).ok())
                .ok_or_else(|| corrupt(&piece.to_text(), "bad confirmation key"))?;
            out.insert(peer);
        }
        Ok(out)
    }

    /// The local blobs whose manifests list `piece`.
    pub fn owners(&self, piece: &BlobId) -> Result<Vec<BlobId>, StoreError> {
        let start = key(OWNER, &[piece.as_bytes()]);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        for item in self.backend.scan(&start, end.as_deref()) {
            let (k, _) = item?;
            out.push(id_after(&k, 2 + BlobId::LEN, "owner index")?);
        }
        Ok(out)
    }

    /// Adds a pin (persisted). A blob is pinned by a pin whose scope is its
    /// collection, or the document `(collection, blob id text)`; user pins
    /// keep it only when they name this device. False when already there.
    pub fn add_pin(&self, pin: Pin) -> Result<bool, StoreError> {
        let mut pins = lock(&self.pins);
        let encoded = encode_pin(&pin)?;
        let added = pins
            .add(pin)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        if added {
            let mut batch = WriteBatch::new();
            batch.insert(key(PIN, &[&encoded]), Some(vec![]));
            self.apply(batch)?;
        }
        Ok(added)
    }

    /// Removes a pin; true when it was there.
    pub fn remove_pin(&self, pin: &Pin) -> Result<bool, StoreError> {
        let mut pins = lock(&self.pins);
        let removed = pins.remove(pin);
        if removed {
            let mut batch = WriteBatch::new();
            batch.insert(key(PIN, &[&encode_pin(pin)?]), None);
            self.apply(batch)?;
        }
        Ok(removed)
    }

    /// The pins.
    pub fn pins(&self) -> PinSet {
        lock(&self.pins).clone()
    }

    /// Declares that `holder` (a document, an app, a session: any name of
    /// 1..=[`MAX_HOLDER_LEN`] bytes) refers to `blob`, which GC then keeps
    /// ([`KeepReason::Referenced`]) until every holder removed its reference.
    pub fn add_reference(&self, blob: &BlobId, holder: &str) -> Result<(), StoreError> {
        if holder.is_empty() || holder.len() > MAX_HOLDER_LEN {
            return Err(StoreError::InvalidArgument(format!(
                "reference holder must be 1..={MAX_HOLDER_LEN} bytes"
            )));
        }
        let mut batch = WriteBatch::new();
        batch.insert(
            key(REFERENCE, &[blob.as_bytes(), holder.as_bytes()]),
            Some(vec![]),
        );
        self.apply(batch)
    }

    /// Removes `holder`'s reference to `blob`.
    pub fn remove_reference(&self, blob: &BlobId, holder: &str) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.insert(key(REFERENCE, &[blob.as_bytes(), holder.as_bytes()]), None);
        self.apply(batch)
    }

    /// True when some holder declared a reference to `blob`.
    pub fn is_referenced(&self, blob: &BlobId) -> Result<bool, StoreError> {
        let start = key(REFERENCE, &[blob.as_bytes()]);
        let end = prefix_end(&start);
        match self.backend.scan(&start, end.as_deref()).next() {
            Some(item) => item.map(|_| true),
            None => Ok(false),
        }
    }

    /// Deletes every local piece that may go (seed 5.2), judged at `now_ms`
    /// under `config`'s factors and TTL:
    ///
    /// a piece is judged once per local blob whose manifest lists it (a
    /// piece no manifest lists is judged as document `piece id` of
    /// [`HELD_COLLECTION`]) with [`gc_eligibility`], where
    /// - pinned: a user pin naming this device or an app pin covers the
    ///   blob's collection or `(collection, blob id text)`;
    /// - referenced: [`BlobStore::add_reference`] holds a reference, or
    ///   `referenced(blob id)` says so;
    /// - last used: the later of the piece's and the blob's last use;
    /// - confirmed replicas: the other peers recorded by [`BlobStore::confirm`]
    ///   for this piece, at least the collection's factor of them.
    ///
    /// The piece is deleted only when every judgement is eligible; manifests,
    /// confirmations and references stay (so the blob can be fetched back).
    pub fn gc(
        &self,
        config: &ReplicationConfig,
        now_ms: u64,
        referenced: &dyn Fn(&BlobId) -> bool,
    ) -> Result<GcReport, StoreError> {
        let pins = self.pins();
        let mut report = GcReport::default();
        // Each blob's collection, read once per pass.
        let mut collections: BTreeMap<BlobId, Option<String>> = BTreeMap::new();
        for piece in self.pieces()? {
            let owners = self.owners(&piece)?;
            let confirmed = self.confirmed(&piece)?;
            let piece_used = self.piece_last_used(&piece)?.unwrap_or(0);
            let mut reasons: Vec<KeepReason> = Vec::new();
            let mut judge = |collection: &str, id: &BlobId, last_used_ms: u64, refd: bool| {
                let text = id.to_text();
                let item = GcItem {
                    collection,
                    id: Some(&text),
                    last_used_ms,
                    referenced: refd,
                    confirmed_replicas: &confirmed,
                };
                if let GcVerdict::Keep(why) =
                    gc_eligibility(config, &pins, &self.local, &item, now_ms)
                {
                    for r in why {
                        if !reasons.contains(&r) {
                            reasons.push(r);
                        }
                    }
                }
            };
            let mut blobs = Vec::new();
            for blob in &owners {
                if !collections.contains_key(blob) {
                    let c = self.manifest(blob)?.map(|s| s.collection);
                    collections.insert(*blob, c);
                }
                let Some(Some(collection)) = collections.get(blob) else {
                    continue;
                };
                let used = self.blob_last_used(blob)?.unwrap_or(0).max(piece_used);
                let refd = referenced(blob) || self.is_referenced(blob)?;
                judge(collection, blob, used, refd);
                blobs.push(*blob);
            }
            if blobs.is_empty() {
                let refd = referenced(&piece) || self.is_referenced(&piece)?;
                judge(HELD_COLLECTION, &piece, piece_used, refd);
            }
            if reasons.is_empty() {
                let bytes = self
                    .backend
                    .get(&key(PIECE, &[piece.as_bytes()]))?
                    .map_or(0, |b| b.len() as u64);
                self.remove_piece(&piece)?;
                tracing::debug!(%piece, bytes, "blob piece collected");
                report.deleted.push(GcDeleted {
                    piece,
                    blobs,
                    bytes,
                });
            } else {
                report.kept.push(GcKept {
                    piece,
                    blobs,
                    reasons,
                });
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryBackend;
    use ecomesh_replication::policy::PinKind;

    fn peer(n: u8) -> PeerId {
        PeerId::from_digest([n; 32])
    }

    fn small() -> BlobConfig {
        BlobConfig {
            none_max: 16,
            chunked_max: 64,
            chunk_size: 10,
        }
    }

    fn open(b: &MemoryBackend) -> BlobStore<MemoryBackend> {
        BlobStore::open(b.clone(), peer(0), ManifestLimits::default()).unwrap()
    }

    #[test]
    fn pieces_are_verified_on_write_and_read() {
        let backend = MemoryBackend::new();
        let s = open(&backend);
        let id = BlobId::of(b"piece");
        assert!(s.put_piece(&id, b"other", 1).is_err());
        assert!(!s.has_piece(&id).unwrap());
        assert!(s.put_piece(&id, b"piece", 1).unwrap());
        assert!(!s.put_piece(&id, b"piece", 2).unwrap());
        assert_eq!(s.piece_last_used(&id).unwrap(), Some(2));
        assert_eq!(s.piece(&id).unwrap(), Some(b"piece".to_vec()));
        // Bit rot on disk: a typed error, never the bytes.
        let mut batch = WriteBatch::new();
        batch.insert(key(PIECE, &[id.as_bytes()]), Some(b"rotten".to_vec()));
        backend.apply(batch).unwrap();
        assert!(matches!(s.piece(&id), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn blobs_round_trip_locally_in_every_encoding() {
        let s = open(&MemoryBackend::new());
        for len in [0_usize, 10, 50, 200] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let enc = s.put_blob("photos", &data, &small(), 5).unwrap();
            let id = enc.manifest.id();
            assert_eq!(s.read_local(&id, 6).unwrap(), Some(data));
            assert_eq!(s.manifest(&id).unwrap().unwrap().collection, "photos");
            for p in enc.manifest.pieces() {
                assert!(s.owners(p).unwrap().contains(&id));
            }
        }
        // A rs-4-7 blob rebuilds from any 4 shards.
        let data: Vec<u8> = (0..200_u32).map(|i| (i * 31 % 251) as u8).collect();
        let enc = s.put_blob("photos", &data, &small(), 5).unwrap();
        for p in &enc.manifest.pieces()[..3] {
            s.remove_piece(p).unwrap();
        }
        assert_eq!(s.read_local(&enc.manifest.id(), 7).unwrap(), Some(data));
        s.remove_piece(&enc.manifest.pieces()[3]).unwrap();
        assert_eq!(s.read_local(&enc.manifest.id(), 7).unwrap(), None);
    }

    #[test]
    fn pins_persist_and_gc_follows_the_rule() {
        let backend = MemoryBackend::new();
        let s = open(&backend);
        let mut config = ReplicationConfig::default();
        config.set_gc_ttl_ms(100).unwrap();
        config.set_factor("photos", 2).unwrap();
        let a = s.put_blob("photos", b"aaaa", &small(), 0).unwrap();
        let b = s.put_blob("photos", b"bbbb", &small(), 0).unwrap();
        let (pa, pb) = (a.manifest.pieces()[0], b.manifest.pieces()[0]);
        s.confirm(&pa, &peer(1)).unwrap();
        s.confirm(&pa, &peer(0)).unwrap(); // itself: ignored
        let r = s.gc(&config, 50, &|_| false).unwrap();
        assert!(r.deleted.is_empty());
        assert!(
            r.kept_reasons(&pa)
                .unwrap()
                .contains(&KeepReason::TooFewReplicas {
                    confirmed: 1,
                    needed: 2
                })
        );
        assert!(matches!(
            r.kept_reasons(&pa).unwrap()[0],
            KeepReason::TooYoung { .. }
        ));
        s.confirm(&pa, &peer(2)).unwrap();
        s.confirm(&pb, &peer(1)).unwrap();
        s.confirm(&pb, &peer(2)).unwrap();
        let pin = Pin::App {
            scope: Scope::document("photos", &b.manifest.id().to_text()),
            app: "gallery".into(),
        };
        assert!(s.add_pin(pin.clone()).unwrap());
        let again = open(&backend);
        assert_eq!(again.pins().len(), 1);
        let r = again.gc(&config, 500, &|_| false).unwrap();
        assert!(r.was_deleted(&pa));
        assert_eq!(
            r.kept_reasons(&pb),
            Some(&[KeepReason::Pinned(PinKind::App)][..])
        );
        assert!(!again.has_piece(&pa).unwrap());
        assert!(again.manifest(&a.manifest.id()).unwrap().is_some());
        assert!(again.remove_pin(&pin).unwrap());
        again.add_reference(&b.manifest.id(), "doc:1").unwrap();
        let r = again.gc(&config, 500, &|_| false).unwrap();
        assert_eq!(r.kept_reasons(&pb), Some(&[KeepReason::Referenced][..]));
        again.remove_reference(&b.manifest.id(), "doc:1").unwrap();
        let r = again
            .gc(&config, 500, &|id| *id == b.manifest.id())
            .unwrap();
        assert_eq!(r.kept_reasons(&pb), Some(&[KeepReason::Referenced][..]));
        let r = again.gc(&config, 500, &|_| false).unwrap();
        assert!(r.was_deleted(&pb));
        assert_eq!(r.freed_bytes(), 4);
    }
}
