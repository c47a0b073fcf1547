//! The records the store keeps: signed version nodes and per-document state.

use ecomesh_crdt::{DocumentCrdt, DocumentDelta};
use ecomesh_identity::{Identity, PublicKey, peer_id_of};
use ecomesh_types::{ContentId, HlcTimestamp, PeerId, Value};
use ecomesh_wire::compact::{Cursor, put_str, put_varint, read_delta_compact, write_delta_compact};
use ecomesh_wire::{Canonical, Limits, Reader, WireError, Writer};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Domain string of a version node signature.
pub const VERSION_SIGNATURE_DOMAIN: &str = "ecomesh 2026 version-node signature v1";

/// One version of one document: a node of its Merkle DAG (seed 5.4).
///
/// Encoded as a canonical DAG-CBOR map `{"id", "ts", "sig", "delta", "author",
/// "parents", "collection"}`; its CID (dag-cbor, sha2-256) is its identity. The
/// signature covers the same map without `"sig"`, so a node cannot be altered,
/// re-parented or re-attributed without invalidating it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionNode {
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub id: String,
    /// The versions this one follows, sorted, without duplicates.
    pub parents: Vec<ContentId>,
    /// The author's Ed25519 public key.
    pub author: [u8; 32],
    /// When the change was made; its peer is the author's [`PeerId`].
    pub timestamp: HlcTimestamp,
    /// The CRDT delta of the change (for a restored version, the full state to
    /// write). Empty in a sealed node, whose delta is inside [`sealed`](Self::sealed).
    pub delta: DocumentDelta,
    /// The delta encrypted under the collection's key (an encrypted collection,
    /// see `docs/privacy.md`): a group ciphertext of `ecomesh_identity::group`
    /// over the compact delta, bound to [`sealing_context`]. `None` for a clear node.
    pub sealed: Option<Vec<u8>>,
    /// The author's Ed25519 signature.
    pub signature: [u8; 64],
}

/// The context a sealed delta is bound to (associated data of its AEAD):
/// collection, id, author and timestamp, so a ciphertext opens only in the
/// version it was made for.
pub fn sealing_context(
    collection: &str,
    id: &str,
    author: &[u8; 32],
    timestamp: &HlcTimestamp,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(collection.len() + id.len() + 52);
    out.extend_from_slice(&(collection.len() as u32).to_be_bytes());
    out.extend_from_slice(collection.as_bytes());
    out.extend_from_slice(&(id.len() as u32).to_be_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(author);
    out.extend_from_slice(&timestamp.physical_ms.to_be_bytes());
    out.extend_from_slice(&timestamp.logical.to_be_bytes());
    out
}

const NODE: &str = "VersionNode";

fn key(w: &mut Writer, k: &str) {
    w.text(k);
}

fn expect_key(r: &mut Reader<'_>, context: &'static str, k: &'static str) -> Result<(), WireError> {
    let got = r
        .read_text()
        .map_err(|_| WireError::MissingField { context, field: k })?;
    if got != k {
        return Err(WireError::UnknownField {
            context,
            field: got.to_owned(),
        });
    }
    Ok(())
}

fn read_fixed<const N: usize>(
    r: &mut Reader<'_>,
    context: &'static str,
    field: &'static str,
) -> Result<[u8; N], WireError> {
    r.read_bytes()?
        .try_into()
        .map_err(|_| WireError::InvalidField {
            context,
            field,
            reason: "wrong length",
        })
}

fn write_links(
    w: &mut Writer,
    links: &[ContentId],
    depth: usize,
    max: usize,
) -> Result<(), WireError> {
    w.array(links.len());
    for l in links {
        Value::Link(l.clone()).write_to(w, depth + 1, max)?;
    }
    Ok(())
}

fn read_links(
    r: &mut Reader<'_>,
    depth: usize,
    context: &'static str,
    field: &'static str,
) -> Result<Vec<ContentId>, WireError> {
    let n = r.read_array_len()?;
    let mut out: Vec<ContentId> = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        match Value::read_from(r, depth + 1)? {
            Value::Link(l) => {
                if out.last().is_some_and(|prev| prev >= &l) {
                    return Err(WireError::InvalidField {
                        context,
                        field,
                        reason: "links not sorted and unique",
                    });
                }
                out.push(l)
            }
            _ => {
                return Err(WireError::InvalidField {
                    context,
                    field,
                    reason: "not a link",
                });
            }
        }
    }
    Ok(out)
}

impl VersionNode {
    /// Builds and signs a node.
    pub fn signed(
        identity: &Identity,
        collection: &str,
        id: &str,
        parents: Vec<ContentId>,
        timestamp: HlcTimestamp,
        delta: DocumentDelta,
    ) -> Result<Self, StoreError> {
        Self::signed_encoded(identity, collection, id, parents, timestamp, delta).map(|(n, _, _)| n)
    }

    /// Builds and signs a node and returns it with its canonical bytes and CID
    /// (the bytes [`encode`](Self::encode) gives), encoding the delta once: the
    /// signed map and the stored map differ only by the `"sig"` entry, which
    /// sorts right after `"ts"`.
    pub fn signed_encoded(
        identity: &Identity,
        collection: &str,
        id: &str,
        parents: Vec<ContentId>,
        timestamp: HlcTimestamp,
        delta: DocumentDelta,
    ) -> Result<(Self, Vec<u8>, ContentId), StoreError> {
        Self::sign_encoded(identity, collection, id, parents, timestamp, delta, None)
    }

    /// Builds and signs a sealed node: `delta` is encrypted with `key` (random
    /// nonce, bound to [`sealing_context`]) and the signature covers the
    /// ciphertext, so anyone can verify, store and forward the node without
    /// the key. Returns the node (its `delta` empty), its canonical bytes and CID.
    pub fn signed_sealed(
        identity: &Identity,
        key: &ecomesh_identity::group::GroupKey,
        collection: &str,
        id: &str,
        parents: Vec<ContentId>,
        timestamp: HlcTimestamp,
        delta: &DocumentDelta,
    ) -> Result<(Self, Vec<u8>, ContentId), StoreError> {
        let mut plain = Vec::with_capacity(128);
        write_delta_compact(&mut plain, delta, &timestamp, &Limits::DEFAULT)
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        let author = identity.public_key().to_bytes();
        let context = sealing_context(collection, id, &author, &timestamp);
        let plain = zeroize::Zeroizing::new(plain);
        let sealed = key
            .encrypt_bound(&plain, &context)
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        Self::sign_encoded(
            identity,
            collection,
            id,
            parents,
            timestamp,
            DocumentDelta::new(),
            Some(sealed),
        )
    }

    /// Builds and signs a sealed node over a ciphertext made elsewhere (for
    /// committed vectors and tools; [`signed_sealed`](Self::signed_sealed)
    /// encrypts as well). The ciphertext is taken as is.
    pub fn signed_over_ciphertext(
        identity: &Identity,
        collection: &str,
        id: &str,
        parents: Vec<ContentId>,
        timestamp: HlcTimestamp,
        sealed: Vec<u8>,
    ) -> Result<Self, StoreError> {
        Self::sign_encoded(
            identity,
            collection,
            id,
            parents,
            timestamp,
            DocumentDelta::new(),
            Some(sealed),
        )
        .map(|(n, _, _)| n)
    }

    fn sign_encoded(
        identity: &Identity,
        collection: &str,
        id: &str,
        mut parents: Vec<ContentId>,
        timestamp: HlcTimestamp,
        delta: DocumentDelta,
        sealed: Option<Vec<u8>>,
    ) -> Result<(Self, Vec<u8>, ContentId), StoreError> {
        parents.sort();
        parents.dedup();
        let mut node = VersionNode {
            collection: collection.to_owned(),
            id: id.to_owned(),
            parents,
            author: identity.public_key().to_bytes(),
            timestamp,
            delta,
            sealed,
            signature: [0; 64],
        };
        let enc = |e: WireError| StoreError::Encode(e.to_string());
        let max = Limits::DEFAULT.effective_depth();
        // The map's entries up to "ts", and from "delta" on, each written once.
        let mut head = Writer::with_capacity(128);
        head.map(6);
        node.write_until_sig(&mut head, 0, max).map_err(enc)?;
        let head = head.into_bytes();
        let mut tail = Writer::with_capacity(256);
        node.write_after_sig(&mut tail, 0, max).map_err(enc)?;
        let tail = tail.into_bytes();
        let mut signing = Vec::with_capacity(head.len() + tail.len());
        signing.extend_from_slice(&head);
        signing.extend_from_slice(&tail);
        node.signature = identity
            .sign_with_domain(VERSION_SIGNATURE_DOMAIN, &signing)
            .map_err(|e| StoreError::Encode(e.to_string()))?
            .0;
        let mut sig = Writer::with_capacity(72);
        key(&mut sig, "sig");
        sig.bytes(&node.signature);
        let sig = sig.into_bytes();
        let mut bytes = signing;
        // A map of 7 instead of 6 entries: the one-byte head 0xa6 becomes 0xa7.
        bytes[0] = 0xa7;
        bytes.splice(head.len()..head.len(), sig);
        let cid = crate::codec::cid_of_bytes(&bytes);
        debug_assert_eq!(node.encode().ok(), Some((bytes.clone(), cid.clone())));
        Ok((node, bytes, cid))
    }

    /// Decrypts a sealed node's delta with `key` and checks it as
    /// [`verify`](Self::verify) checks a clear one (not empty, no timestamp
    /// later than the node's). A clear node gives its own delta.
    pub fn open_delta(
        &self,
        key: &ecomesh_identity::group::GroupKey,
    ) -> Result<DocumentDelta, StoreError> {
        let Some(sealed) = &self.sealed else {
            return Ok(self.delta.clone());
        };
        let bad = |reason: String| StoreError::InvalidVersion {
            collection: self.collection.clone(),
            id: self.id.clone(),
            reason,
        };
        let context = sealing_context(&self.collection, &self.id, &self.author, &self.timestamp);
        let plain = zeroize::Zeroizing::new(
            key.decrypt_bound(sealed, &context)
                .map_err(|e| bad(format!("sealed delta does not open: {e}")))?,
        );
        let (delta, used) = read_delta_compact(&plain, &self.timestamp, &Limits::DEFAULT)
            .map_err(|e| bad(format!("sealed delta does not decode: {e}")))?;
        if used != plain.len() {
            return Err(bad("trailing bytes after the sealed delta".into()));
        }
        check_delta(&delta, &self.timestamp).map_err(|r| bad(r.into()))?;
        Ok(delta)
    }

    /// The author's peer id.
    pub fn author_peer(&self) -> PeerId {
        peer_id_of(&self.author)
    }

    fn write_fields(
        &self,
        w: &mut Writer,
        with_sig: bool,
        depth: usize,
        max: usize,
    ) -> Result<(), WireError> {
        w.map(if with_sig { 7 } else { 6 });
        self.write_until_sig(w, depth, max)?;
        if with_sig {
            key(w, "sig");
            w.bytes(&self.signature);
        }
        self.write_after_sig(w, depth, max)
    }

    /// The entries before `"sig"` in canonical key order: `"id"`, `"ts"`.
    fn write_until_sig(&self, w: &mut Writer, depth: usize, max: usize) -> Result<(), WireError> {
        key(w, "id");
        w.text(&self.id);
        key(w, "ts");
        self.timestamp.write_to(w, depth + 1, max)
    }

    /// The entries after `"sig"`: `"delta"`, `"author"`, `"parents"`,
    /// `"collection"`; a sealed node has `"author"`, `"sealed"` in place of
    /// `"delta"`, `"author"` (canonical order: length first, then bytes).
    fn write_after_sig(&self, w: &mut Writer, depth: usize, max: usize) -> Result<(), WireError> {
        if let Some(sealed) = &self.sealed {
            key(w, "author");
            w.bytes(&self.author);
            key(w, "sealed");
            w.bytes(sealed);
        } else {
            key(w, "delta");
            self.delta.write_to(w, depth + 1, max)?;
            key(w, "author");
            w.bytes(&self.author);
        }
        key(w, "parents");
        write_links(w, &self.parents, depth + 1, max)?;
        key(w, "collection");
        w.text(&self.collection);
        Ok(())
    }

    /// The bytes the signature covers: the canonical map without `"sig"`.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, StoreError> {
        let mut w = Writer::with_capacity(256);
        self.write_fields(&mut w, false, 0, Limits::DEFAULT.effective_depth())
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        Ok(w.into_bytes())
    }

    /// The node's canonical bytes and CID.
    pub fn encode(&self) -> Result<(Vec<u8>, ContentId), StoreError> {
        let bytes = ecomesh_wire::encode(self).map_err(|e| StoreError::Encode(e.to_string()))?;
        let cid = crate::codec::cid_of_bytes(&bytes);
        Ok((bytes, cid))
    }

    /// Checks what a node received from anywhere must satisfy: the signature
    /// verifies under `author`, the timestamp's peer is the author, every
    /// timestamp inside the delta is at most the node's, and the delta is not
    /// empty.
    pub fn verify(&self) -> Result<(), StoreError> {
        let bad = |reason: &str| StoreError::InvalidVersion {
            collection: self.collection.clone(),
            id: self.id.clone(),
            reason: reason.to_owned(),
        };
        ecomesh_types::validate_key(&self.collection, &self.id).map_err(|e| bad(&e.to_string()))?;
        let key =
            PublicKey::from_bytes(&self.author).map_err(|_| bad("author is not an Ed25519 key"))?;
        let payload = self.signing_bytes()?;
        key.verify_with_domain(
            VERSION_SIGNATURE_DOMAIN,
            &payload,
            &ecomesh_types::Signature(self.signature),
        )
        .map_err(|_| bad("signature does not verify"))?;
        if self.timestamp.peer != key.peer_id() {
            return Err(bad("timestamp peer is not the author"));
        }
        match &self.sealed {
            Some(sealed) => {
                if !self.delta.is_empty() {
                    return Err(bad("a sealed node carries a clear delta"));
                }
                ecomesh_identity::group::ciphertext_key(sealed)
                    .map_err(|_| bad("sealed delta is not a group ciphertext"))?;
                Ok(())
            }
            None => check_delta(&self.delta, &self.timestamp).map_err(bad),
        }
    }

    /// The group and epoch whose key opens a sealed node (`None` for a clear one).
    pub fn sealing_key(&self) -> Option<(ecomesh_identity::group::GroupId, u64)> {
        self.sealed
            .as_ref()
            .and_then(|s| ecomesh_identity::group::ciphertext_key(s).ok())
    }
}

/// What every delta must satisfy: not empty, no timestamp after its node's.
fn check_delta(delta: &DocumentDelta, timestamp: &HlcTimestamp) -> Result<(), &'static str> {
    if delta.is_empty() {
        return Err("empty delta");
    }
    if delta.max_timestamp().is_some_and(|t| t > *timestamp) {
        return Err("delta holds a timestamp later than the node's");
    }
    Ok(())
}

/// First byte of the compact form of a version node that carries its author's key.
pub const COMPACT_VERSION_FORMAT: u8 = 1;
/// First byte of the compact form of a version node sent by its own author:
/// the key is left out and the receiver takes the sender's (which verified
/// the message it came in).
pub const COMPACT_VERSION_FORMAT_SENDER: u8 = 2;
/// First byte of the compact form of a sealed version node that carries its author's key.
pub const COMPACT_SEALED_FORMAT: u8 = 3;
/// First byte of the compact form of a sealed version node sent by its own author.
pub const COMPACT_SEALED_FORMAT_SENDER: u8 = 4;

/// The bytes a CIDv1 dag-cbor sha2-256 starts with (version, codec, hash, length).
const CID_PREFIX: [u8; 4] = [0x01, 0x71, 0x12, 0x20];

const COMPACT: &str = "compact VersionNode";

fn compact_invalid(field: &'static str, reason: &'static str) -> WireError {
    WireError::InvalidField {
        context: COMPACT,
        field,
        reason,
    }
}

impl VersionNode {
    /// The compact wire form of the node, as versions travel between peers
    /// (pushes, fetch answers, delta pages). It is not hashed or signed: the
    /// receiver rebuilds the canonical bytes with [`decode_compact`](Self::decode_compact)
    /// and [`encode`](Self::encode), recomputes the CID and checks the signature.
    ///
    /// ```text
    /// node   = 0x01 collection:str id:str author:32 physical:varint logical:varint
    ///          nparents:varint parent* signature:64 delta
    ///        | 0x02 collection:str id:str physical:varint ...   ; author = the sender
    /// parent = 0x00 sha256:32        ; CIDv1 dag-cbor sha2-256 (the store's own)
    ///        | 0x01 cid:str          ; any other CID
    /// delta  = the compact delta of `ecomesh_wire::compact`, relative to the
    ///          node's timestamp, whose peer is the author's (derived from the key)
    /// ```
    ///
    /// `sender` is the peer the bytes will come from: when it is the author,
    /// the author's key is left out (form `0x02`, 32 bytes less) and the
    /// receiver supplies the sender's key to [`decode_compact`](Self::decode_compact).
    ///
    /// Fails when the timestamp's peer is not the author's (such a node never
    /// verifies, so it is never stored or sent).
    pub fn encode_compact(&self, sender: Option<&PeerId>) -> Result<Vec<u8>, StoreError> {
        let enc = |e: WireError| StoreError::Encode(e.to_string());
        if self.timestamp.peer != self.author_peer() {
            return Err(StoreError::Encode(
                "timestamp peer is not the author".into(),
            ));
        }
        let implied = sender == Some(&self.timestamp.peer);
        let mut out = Vec::with_capacity(160 + self.collection.len() + self.id.len());
        out.push(match (self.sealed.is_some(), implied) {
            (false, true) => COMPACT_VERSION_FORMAT_SENDER,
            (false, false) => COMPACT_VERSION_FORMAT,
            (true, true) => COMPACT_SEALED_FORMAT_SENDER,
            (true, false) => COMPACT_SEALED_FORMAT,
        });
        put_str(&mut out, self.collection.as_bytes());
        put_str(&mut out, self.id.as_bytes());
        if !implied {
            out.extend_from_slice(&self.author);
        }
        put_varint(&mut out, self.timestamp.physical_ms);
        put_varint(&mut out, u64::from(self.timestamp.logical));
        put_varint(&mut out, self.parents.len() as u64);
        for p in &self.parents {
            match p.0.strip_prefix(&CID_PREFIX) {
                Some(digest) if digest.len() == 32 => {
                    out.push(0);
                    out.extend_from_slice(digest);
                }
                _ => {
                    out.push(1);
                    put_str(&mut out, &p.0);
                }
            }
        }
        out.extend_from_slice(&self.signature);
        match &self.sealed {
            Some(sealed) => put_str(&mut out, sealed),
            None => write_delta_compact(&mut out, &self.delta, &self.timestamp, &Limits::DEFAULT)
                .map_err(enc)?,
        }
        Ok(out)
    }

    /// Decodes [`encode_compact`](Self::encode_compact)'s form strictly (the
    /// input must be exactly the encoding of what it holds for the same
    /// sender) and boundedly. `sender_key` is the Ed25519 key of the peer the
    /// bytes came from, needed by the form that leaves the author's key out.
    /// The node is not verified: callers rebuild the canonical bytes and
    /// check them as for any received node.
    pub fn decode_compact(bytes: &[u8], sender_key: Option<&[u8; 32]>) -> Result<Self, WireError> {
        let mut c = Cursor::new(bytes);
        let (is_sealed, implied) = match c.byte()? {
            COMPACT_VERSION_FORMAT => (false, false),
            COMPACT_VERSION_FORMAT_SENDER => (false, true),
            COMPACT_SEALED_FORMAT => (true, false),
            COMPACT_SEALED_FORMAT_SENDER => (true, true),
            _ => return Err(compact_invalid("format", "unknown compact version format")),
        };
        let collection = c.text()?.to_owned();
        let id = c.text()?.to_owned();
        let author = if implied {
            *sender_key.ok_or(compact_invalid("author", "the sender's key is not known"))?
        } else {
            c.array::<32>()?
        };
        let physical = c.varint()?;
        let logical = u32::try_from(c.varint()?)
            .map_err(|_| compact_invalid("ts", "logical counter out of range"))?;
        let timestamp = HlcTimestamp::new(physical, logical, peer_id_of(&author));
        let n = c.count()?;
        let mut parents: Vec<ContentId> = Vec::with_capacity(n);
        for _ in 0..n {
            let p = match c.byte()? {
                0 => {
                    let mut cid = CID_PREFIX.to_vec();
                    cid.extend_from_slice(c.take(32)?);
                    ContentId(cid)
                }
                1 => {
                    // Any other CID, given whole: it must be one binary CID,
                    // as the canonical form requires of every link.
                    let bytes = c.str_bytes()?;
                    ecomesh_wire::cid::cid_from_binary(bytes)
                        .map_err(|_| compact_invalid("parents", "not a binary CID"))?;
                    ContentId(bytes.to_vec())
                }
                _ => return Err(compact_invalid("parents", "unknown parent form")),
            };
            if parents.last().is_some_and(|prev| prev >= &p) {
                return Err(compact_invalid("parents", "links not sorted and unique"));
            }
            parents.push(p);
        }
        let signature = c.array::<64>()?;
        let (delta, sealed) = if is_sealed {
            (DocumentDelta::new(), Some(c.str_bytes()?.to_vec()))
        } else {
            let (delta, used) = read_delta_compact(c.rest(), &timestamp, &Limits::DEFAULT)?;
            c.take(used)?;
            (delta, None)
        };
        c.finish()?;
        let node = VersionNode {
            collection,
            id,
            parents,
            author,
            timestamp,
            delta,
            sealed,
            signature,
        };
        let sender = sender_key.map(peer_id_of);
        match node.encode_compact(sender.as_ref()) {
            Ok(again) if again == bytes => Ok(node),
            _ => Err(compact_invalid("*", "not the canonical compact encoding")),
        }
    }
}

/// The compact form of a version node given in canonical bytes, to be sent
/// by `sender` (see [`VersionNode::encode_compact`]).
pub fn compact_of_canonical(canonical: &[u8], sender: &PeerId) -> Result<Vec<u8>, StoreError> {
    let node = ecomesh_wire::decode::<VersionNode>(canonical)
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    node.encode_compact(Some(sender))
}

/// The canonical bytes of a version node given in compact form, received from
/// the peer whose key is `sender_key` (strictly decoded; the node is not
/// verified here).
pub fn canonical_of_compact(
    compact: &[u8],
    sender_key: Option<&[u8; 32]>,
) -> Result<Vec<u8>, WireError> {
    let node = VersionNode::decode_compact(compact, sender_key)?;
    ecomesh_wire::encode(&node)
}

impl Canonical for VersionNode {
    const NAME: &'static str = NODE;

    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<(), WireError> {
        if depth + 1 > max_depth {
            return Err(WireError::DepthExceeded { max: max_depth });
        }
        self.write_fields(w, true, depth, max_depth)
    }

    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self, WireError> {
        let max = r.limits().effective_depth();
        if depth + 1 > max {
            return Err(WireError::DepthExceeded { max });
        }
        if r.read_map_len()? != 7 {
            return Err(WireError::InvalidField {
                context: NODE,
                field: "*",
                reason: "expected 7 fields",
            });
        }
        expect_key(r, NODE, "id")?;
        let id = r.read_text()?.to_owned();
        expect_key(r, NODE, "ts")?;
        let timestamp = HlcTimestamp::read_from(r, depth + 1)?;
        expect_key(r, NODE, "sig")?;
        let signature = read_fixed::<64>(r, NODE, "sig")?;
        let next = r.read_text().map_err(|_| WireError::MissingField {
            context: NODE,
            field: "delta",
        })?;
        let (delta, author, sealed) = match next {
            "delta" => {
                let delta = DocumentCrdt::read_from(r, depth + 1)?;
                expect_key(r, NODE, "author")?;
                (delta, read_fixed::<32>(r, NODE, "author")?, None)
            }
            "author" => {
                let author = read_fixed::<32>(r, NODE, "author")?;
                expect_key(r, NODE, "sealed")?;
                let sealed = r.read_bytes()?.to_vec();
                (DocumentCrdt::new(), author, Some(sealed))
            }
            other => {
                return Err(WireError::UnknownField {
                    context: NODE,
                    field: other.to_owned(),
                });
            }
        };
        expect_key(r, NODE, "parents")?;
        let parents = read_links(r, depth + 1, NODE, "parents")?;
        expect_key(r, NODE, "collection")?;
        let collection = r.read_text()?.to_owned();
        Ok(VersionNode {
            collection,
            id,
            parents,
            author,
            timestamp,
            delta,
            sealed,
            signature,
        })
    }
}

/// What the store keeps per document: the merged CRDT state and the DAG heads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateRecord {
    /// The versions no other local version follows, sorted.
    pub heads: Vec<ContentId>,
    /// The merge of every version's delta.
    pub state: DocumentCrdt,
}

const STATE: &str = "StateRecord";

impl StateRecord {
    /// Digest of the heads: the value of the document's Merkle index entry.
    pub fn heads_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for head in &self.heads {
            h.update((head.0.len() as u32).to_be_bytes());
            h.update(&head.0);
        }
        h.finalize().into()
    }
}

impl Canonical for StateRecord {
    const NAME: &'static str = STATE;

    fn write_to(&self, w: &mut Writer, depth: usize, max_depth: usize) -> Result<(), WireError> {
        if depth + 1 > max_depth {
            return Err(WireError::DepthExceeded { max: max_depth });
        }
        w.map(2);
        key(w, "heads");
        write_links(w, &self.heads, depth + 1, max_depth)?;
        key(w, "state");
        self.state.write_to(w, depth + 1, max_depth)
    }

    fn read_from(r: &mut Reader<'_>, depth: usize) -> Result<Self, WireError> {
        let max = r.limits().effective_depth();
        if depth + 1 > max {
            return Err(WireError::DepthExceeded { max });
        }
        if r.read_map_len()? != 2 {
            return Err(WireError::InvalidField {
                context: STATE,
                field: "*",
                reason: "expected 2 fields",
            });
        }
        expect_key(r, STATE, "heads")?;
        let heads = read_links(r, depth + 1, STATE, "heads")?;
        expect_key(r, STATE, "state")?;
        let state = DocumentCrdt::read_from(r, depth + 1)?;
        Ok(StateRecord { heads, state })
    }
}
