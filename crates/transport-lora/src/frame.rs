//! The over-the-air frames ecomesh puts in a Meshtastic packet's `Data.payload`
//! (at most [`MAX_APP_PAYLOAD`](crate::airtime::MAX_APP_PAYLOAD) = 233 bytes).
//!
//! Every frame starts with one kind byte (`0xE1..=0xE9`: the high nibble marks ecomesh
//! traffic on the private port). Headers are fixed binary fields (each byte counts).
//!
//! | kind | frame | layout | authenticated by |
//! |---|---|---|---|
//! | `E1` | presence beacon | ttl/hops (1), masked [origin (4), seq (4), CBOR `[types, bloom(8)]`], MAC (8) | network key, truncated BLAKE3 MAC |
//! | `E2` | announce | masked [public key (32), epoch (4), salt (4)], MAC (8) | network key; the key is self-certifying (PeerId = SHA-256 of it) |
//! | `E7` | key request | masked [from (4), to (4), salt (4)], MAC (8) | network key |
//! | `E3`/`E4`/`E5`/`E8` | Noise IK message 1/2/3, explicit 1 | masked [from (4), to (4)], Noise message | Noise IK itself |
//! | `E6` | sealed | session id (2), counter (4), ChaCha20-Poly1305 ciphertext + tag (16) | the neighbour's Noise session |
//! | `E9` | sealed part | session id (2), counter (low 16 bits) (2), index << 4 \| count (1), a piece of the ciphertext + tag | the whole unit's tag, checked once every part is in |
//!
//! The plaintext of a sealed unit (one `E6` frame, or 2 to 15 `E9` parts whose pieces
//! concatenate to one ciphertext under one nonce and one tag) is a routing header
//! (ttl/hops (1), origin (4), destination (4), seq (2)), a body kind (1) and the body
//! ([`Body`]): a message's [`envelope`](crate::envelope) to the end, a close flag (1),
//! a CBOR map with small integer keys for notifications and grants, nothing for a hello.
//! Short ids are the first 4 bytes of a PeerId.
//!
//! **Unlinkable to outsiders.** Every field that names a node (short ids, the announced
//! key) is *masked*: XORed with a keystream of BLAKE3 in keyed XOF mode under a subkey
//! of the [`NetworkKey`], whose nonce is the frame's MAC (an SIV construction: the MAC
//! is computed over the unmasked fields, so a wrong key or a flipped bit fails it) or,
//! for handshakes, the first 16 bytes of the Noise message (a fresh ephemeral key or
//! ciphertext). A beacon's plaintext changes with its sequence number, and an
//! announce or key request carries a fresh random salt, so to a listener without the
//! network key two frames of one node share no byte beyond the kind and ttl/hops
//! bytes, the same as frames of two nodes; members of the network (who hold the key
//! and must route) unmask them. The Meshtastic header around the payload still
//! carries the radio's node number, which the firmware fixes (and a session's
//! sealed frames share its session id while it lasts).

use ecomesh_types::PeerId;
use ecomesh_wire::{Limits, Reader, Writer};

use crate::error::LoraError;

/// Presence beacon.
pub const K_PRESENCE: u8 = 0xE1;
/// Public key announce.
pub const K_ANNOUNCE: u8 = 0xE2;
/// Noise IK message 1.
pub const K_HS1: u8 = 0xE3;
/// Noise IK message 2.
pub const K_HS2: u8 = 0xE4;
/// Noise IK message 3 (confirm).
pub const K_HS3: u8 = 0xE5;
/// Session-encrypted frame.
pub const K_SEALED: u8 = 0xE6;
/// Key request.
pub const K_KEYREQ: u8 = 0xE7;
/// Noise IK message 1 of an explicit connect (wins over an automatic one when two cross).
pub const K_HS1_EXPLICIT: u8 = 0xE8;
/// One part of a sealed unit too large for one frame.
pub const K_SEALED_PART: u8 = 0xE9;

/// Length of a broadcast frame's MAC.
pub const MAC_LEN: usize = 8;
/// Length of the AEAD tag of a sealed frame.
pub const TAG_LEN: usize = 16;
/// Sealed frame header: kind, session id, counter.
pub const SEALED_HEADER_LEN: usize = 1 + 2 + 4;
/// Sealed part header: kind, session id, low 16 bits of the counter, index and count.
pub const PART_HEADER_LEN: usize = 1 + 2 + 2 + 1;
/// Most parts of one sealed unit (the count is a 4-bit field).
pub const MAX_PARTS: u8 = 15;
/// Routing header inside a sealed frame.
pub const ROUTE_HEADER_LEN: usize = 1 + 4 + 4 + 2;
/// Routing header and body kind: the plaintext bytes of a unit before its body.
pub const INNER_HEADER_LEN: usize = ROUTE_HEADER_LEN + 1;
/// Bytes of a Bloom filter of collections in a beacon.
pub const BLOOM_LEN: usize = 8;
/// Hash functions of the Bloom filter.
pub const BLOOM_K: usize = 3;

/// A short peer id: the first 4 bytes of a [`PeerId`].
pub type ShortId = [u8; 4];

/// The short form of `peer`.
pub fn short_id(peer: &PeerId) -> ShortId {
    let b = peer.as_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// The key that authenticates broadcast frames (presence, announce, key request): every
/// node of one ecomesh LoRa network shares it.
#[derive(Clone)]
pub struct NetworkKey([u8; 32]);

impl std::fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkKey(..)")
    }
}

impl NetworkKey {
    /// Derives the key from a network secret (a passphrase or random bytes shared out of band).
    pub fn from_secret(secret: &[u8]) -> Self {
        NetworkKey(blake3::derive_key(
            "ecomesh 2026 lora network key v1",
            secret,
        ))
    }

    /// XORs `data` with the keystream of `nonce` under the masking subkey (its own
    /// inverse).
    fn mask(&self, nonce: &[u8], data: &mut [u8]) {
        let sub = blake3::derive_key("ecomesh 2026 lora frame mask v1", &self.0);
        let mut xof = blake3::Hasher::new_keyed(&sub).update(nonce).finalize_xof();
        let mut stream = [0u8; 64];
        for chunk in data.chunks_mut(stream.len()) {
            let ks = &mut stream[..chunk.len()];
            xof.fill(ks);
            for (b, k) in chunk.iter_mut().zip(ks.iter()) {
                *b ^= k;
            }
        }
    }

    fn mac(&self, data: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for d in data {
            h.update(d);
        }
        let full = h.finalize();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
        out
    }
}

/// A presence beacon (seed 4.1): who, what it speaks, what it replicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// Relays left (decremented per hop).
    pub ttl: u8,
    /// Relays taken so far.
    pub hops: u8,
    /// The beaconing node.
    pub origin: ShortId,
    /// Its beacon sequence number.
    pub seq: u32,
    /// Bitmap of supported frame/message types ([`types`]).
    pub types: u16,
    /// Bloom filter of replicated collections.
    pub bloom: [u8; BLOOM_LEN],
}

/// Bits of [`Presence::types`].
pub mod types {
    /// Carries ecomesh `NetworkMessage`s.
    pub const MESSAGES: u16 = 1;
    /// Carries compact notification headers.
    pub const NOTIFICATIONS: u16 = 2;
    /// Carries compact permission grants.
    pub const GRANTS: u16 = 4;
    /// Relays (store-and-forward) for others.
    pub const RELAY: u16 = 8;
    /// Everything this implementation does.
    pub const ALL: u16 = MESSAGES | NOTIFICATIONS | GRANTS | RELAY;
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Presence beacon.
    Presence(Presence),
    /// A node's Ed25519 public key and boot epoch.
    Announce {
        /// The key.
        key: [u8; 32],
        /// Random per start of the transport: a new epoch means the node restarted.
        epoch: u32,
        /// Fresh random bytes per frame, so that two announces of one node do not
        /// look alike to a listener without the network key.
        salt: u32,
    },
    /// Asks `to` to announce its key.
    KeyRequest {
        /// Requester.
        from: ShortId,
        /// Whose key is wanted.
        to: ShortId,
        /// Fresh random bytes per frame (as [`Frame::Announce`]'s).
        salt: u32,
    },
    /// A Noise IK handshake message (`step` 1, 2 or 3).
    Handshake {
        /// 1, 2 or 3.
        step: u8,
        /// Message 1 of an explicit connect.
        explicit: bool,
        /// Sender.
        from: ShortId,
        /// Recipient.
        to: ShortId,
        /// The Noise message.
        noise: Vec<u8>,
    },
    /// A session-encrypted frame.
    Sealed {
        /// The receiver's session id.
        sid: u16,
        /// The low 32 bits of the Noise nonce.
        counter: u32,
        /// Ciphertext and tag.
        ciphertext: Vec<u8>,
    },
    /// One part of a sealed unit sent in several frames.
    SealedPart {
        /// The receiver's session id.
        sid: u16,
        /// The low 16 bits of the unit's Noise nonce (the receiver completes it from the
        /// highest nonce it has accepted in the session).
        counter: u16,
        /// This part's index, from 0.
        index: u8,
        /// Parts of the unit, 2 to [`MAX_PARTS`].
        count: u8,
        /// This part's piece of the unit's ciphertext and tag.
        piece: Vec<u8>,
    },
}

fn err(reason: &'static str) -> LoraError {
    LoraError::Frame(reason)
}

fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], LoraError> {
    let end = at.checked_add(n).ok_or(err("truncated"))?;
    let s = b.get(*at..end).ok_or(err("truncated"))?;
    *at = end;
    Ok(s)
}

/// The nonce that masks a handshake's short ids: the start of its Noise message (an
/// ephemeral public key or ciphertext, fresh per handshake).
fn handshake_nonce(noise: &[u8]) -> &[u8] {
    &noise[..noise.len().min(16)]
}

fn arr4(s: &[u8]) -> ShortId {
    [s[0], s[1], s[2], s[3]]
}

impl Frame {
    /// Encodes the frame, adding the MAC under `key` for broadcast kinds.
    pub fn encode(&self, key: &NetworkKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Frame::Presence(p) => {
                out.push(K_PRESENCE);
                out.push((p.ttl.min(15) << 4) | p.hops.min(15));
                out.extend_from_slice(&p.origin);
                out.extend_from_slice(&p.seq.to_be_bytes());
                let mut w = Writer::new();
                w.array(2);
                w.uint(u64::from(p.types));
                w.bytes(&p.bloom);
                out.extend_from_slice(&w.into_bytes());
                // The ttl/hops byte changes at each relay and is outside the MAC and the mask.
                let mac = key.mac(&[&[K_PRESENCE], &out[2..]]);
                key.mask(&mac, &mut out[2..]);
                out.extend_from_slice(&mac);
            }
            Frame::Announce {
                key: k,
                epoch,
                salt,
            } => {
                out.push(K_ANNOUNCE);
                out.extend_from_slice(k);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&salt.to_be_bytes());
                let mac = key.mac(&[&out]);
                key.mask(&mac, &mut out[1..]);
                out.extend_from_slice(&mac);
            }
            Frame::KeyRequest { from, to, salt } => {
                out.push(K_KEYREQ);
                out.extend_from_slice(from);
                out.extend_from_slice(to);
                out.extend_from_slice(&salt.to_be_bytes());
                let mac = key.mac(&[&out]);
                key.mask(&mac, &mut out[1..]);
                out.extend_from_slice(&mac);
            }
            Frame::Handshake {
                step,
                explicit,
                from,
                to,
                noise,
            } => {
                out.push(match step {
                    1 if *explicit => K_HS1_EXPLICIT,
                    1 => K_HS1,
                    2 => K_HS2,
                    _ => K_HS3,
                });
                let mut ids = [0u8; 8];
                ids[..4].copy_from_slice(from);
                ids[4..].copy_from_slice(to);
                key.mask(handshake_nonce(noise), &mut ids);
                out.extend_from_slice(&ids);
                out.extend_from_slice(noise);
            }
            Frame::Sealed {
                sid,
                counter,
                ciphertext,
            } => {
                out.push(K_SEALED);
                out.extend_from_slice(&sid.to_be_bytes());
                out.extend_from_slice(&counter.to_be_bytes());
                out.extend_from_slice(ciphertext);
            }
            Frame::SealedPart {
                sid,
                counter,
                index,
                count,
                piece,
            } => {
                out.push(K_SEALED_PART);
                out.extend_from_slice(&sid.to_be_bytes());
                out.extend_from_slice(&counter.to_be_bytes());
                out.push(((*index).min(15) << 4) | (*count).min(15));
                out.extend_from_slice(piece);
            }
        }
        out
    }

    /// Decodes and authenticates (broadcast kinds) one frame. Never panics; every
    /// malformed, foreign or forged input is a typed error.
    pub fn decode(bytes: &[u8], key: &NetworkKey) -> Result<Frame, LoraError> {
        if bytes.len() > crate::airtime::MAX_APP_PAYLOAD {
            return Err(err("longer than a Meshtastic payload"));
        }
        let (&kind, _) = bytes.split_first().ok_or(err("empty"))?;
        // The broadcast kinds' fields are unmasked into a copy (at most a payload
        // long, checked above), then authenticated, then parsed.
        let mut plain = bytes.to_vec();
        let bytes: &[u8] = match kind {
            K_PRESENCE | K_ANNOUNCE | K_KEYREQ => {
                let lower = if kind == K_PRESENCE { 2 } else { 1 };
                let body_end = plain.len().checked_sub(MAC_LEN).ok_or(err("truncated"))?;
                if body_end < lower {
                    return Err(err("truncated"));
                }
                let (body, mac) = plain.split_at_mut(body_end);
                key.mask(mac, &mut body[lower..]);
                &plain
            }
            K_HS1 | K_HS2 | K_HS3 | K_HS1_EXPLICIT => {
                if plain.len() <= 9 {
                    return Err(err("empty handshake"));
                }
                let (ids, noise) = plain[1..].split_at_mut(8);
                key.mask(handshake_nonce(noise), ids);
                &plain
            }
            _ => bytes,
        };
        let mut at = 1;
        let check_mac = |body_end: usize, parts: &[&[u8]]| -> Result<(), LoraError> {
            let mac = bytes.get(body_end..).ok_or(err("truncated"))?;
            if mac.len() != MAC_LEN {
                return Err(err("bad MAC length"));
            }
            let want = key.mac(parts);
            // Constant time is moot for a public-verifier MAC, but cheap.
            let diff = want.iter().zip(mac).fold(0u8, |a, (x, y)| a | (x ^ y));
            if diff != 0 {
                return Err(LoraError::BadMac);
            }
            Ok(())
        };
        match kind {
            K_PRESENCE => {
                if bytes.len() < 2 + 4 + 4 + MAC_LEN {
                    return Err(err("truncated"));
                }
                let body_end = bytes.len() - MAC_LEN;
                check_mac(body_end, &[&[K_PRESENCE], &bytes[2..body_end]])?;
                let th = take(bytes, &mut at, 1)?[0];
                let origin = arr4(take(bytes, &mut at, 4)?);
                let seq = u32::from_be_bytes(arr4(take(bytes, &mut at, 4)?));
                let mut r = Reader::new(&bytes[at..body_end], Limits::DEFAULT);
                let n = r.read_array_len().map_err(|_| err("presence body"))?;
                if n != 2 {
                    return Err(err("presence body"));
                }
                let types = u16::try_from(r.read_uint().map_err(|_| err("presence types"))?)
                    .map_err(|_| err("presence types"))?;
                let bloom: [u8; BLOOM_LEN] = r
                    .read_bytes()
                    .map_err(|_| err("presence bloom"))?
                    .try_into()
                    .map_err(|_| err("presence bloom"))?;
                r.finish().map_err(|_| err("presence trailing bytes"))?;
                Ok(Frame::Presence(Presence {
                    ttl: th >> 4,
                    hops: th & 0x0F,
                    origin,
                    seq,
                    types,
                    bloom,
                }))
            }
            K_ANNOUNCE => {
                if bytes.len() != 1 + 32 + 4 + 4 + MAC_LEN {
                    return Err(err("announce length"));
                }
                check_mac(41, &[&bytes[..41]])?;
                let mut k = [0u8; 32];
                k.copy_from_slice(take(bytes, &mut at, 32)?);
                let epoch = u32::from_be_bytes(arr4(take(bytes, &mut at, 4)?));
                let salt = u32::from_be_bytes(arr4(take(bytes, &mut at, 4)?));
                Ok(Frame::Announce {
                    key: k,
                    epoch,
                    salt,
                })
            }
            K_KEYREQ => {
                if bytes.len() != 1 + 8 + 4 + MAC_LEN {
                    return Err(err("key request length"));
                }
                check_mac(13, &[&bytes[..13]])?;
                let from = arr4(take(bytes, &mut at, 4)?);
                let to = arr4(take(bytes, &mut at, 4)?);
                let salt = u32::from_be_bytes(arr4(take(bytes, &mut at, 4)?));
                Ok(Frame::KeyRequest { from, to, salt })
            }
            K_HS1 | K_HS2 | K_HS3 | K_HS1_EXPLICIT => {
                let from = arr4(take(bytes, &mut at, 4)?);
                let to = arr4(take(bytes, &mut at, 4)?);
                let noise = bytes[at..].to_vec();
                if noise.is_empty() {
                    return Err(err("empty handshake"));
                }
                let (step, explicit) = match kind {
                    K_HS1_EXPLICIT => (1, true),
                    k => (k - K_HS1 + 1, false),
                };
                Ok(Frame::Handshake {
                    step,
                    explicit,
                    from,
                    to,
                    noise,
                })
            }
            K_SEALED => {
                let s = take(bytes, &mut at, 2)?;
                let sid = u16::from_be_bytes([s[0], s[1]]);
                let counter = u32::from_be_bytes(arr4(take(bytes, &mut at, 4)?));
                let ciphertext = bytes[at..].to_vec();
                if ciphertext.len() < TAG_LEN {
                    return Err(err("sealed frame shorter than its tag"));
                }
                Ok(Frame::Sealed {
                    sid,
                    counter,
                    ciphertext,
                })
            }
            K_SEALED_PART => {
                let s = take(bytes, &mut at, 2)?;
                let sid = u16::from_be_bytes([s[0], s[1]]);
                let c = take(bytes, &mut at, 2)?;
                let counter = u16::from_be_bytes([c[0], c[1]]);
                let ic = take(bytes, &mut at, 1)?[0];
                let (index, count) = (ic >> 4, ic & 0x0F);
                if count < 2 || index >= count {
                    return Err(err("sealed part index or count"));
                }
                let piece = bytes[at..].to_vec();
                if piece.is_empty() {
                    return Err(err("empty sealed part"));
                }
                Ok(Frame::SealedPart {
                    sid,
                    counter,
                    index,
                    count,
                    piece,
                })
            }
            _ => Err(err("not an ecomesh frame")),
        }
    }
}

/// The routing header inside a sealed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteHeader {
    /// Relays left.
    pub ttl: u8,
    /// Relays taken.
    pub hops: u8,
    /// The originating node.
    pub origin: ShortId,
    /// The destination node.
    pub dest: ShortId,
    /// The origin's frame sequence number (duplicate suppression).
    pub seq: u16,
}

/// A compact notification header (seed 3.2 "notification header", budget 64 bytes on air).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationHeader {
    /// 32-bit hash of the collection name.
    pub collection: u32,
    /// 64-bit hash of the document key.
    pub document: u64,
    /// What happened (application-defined: created, updated, deleted...).
    pub change: u8,
    /// When, Unix seconds.
    pub at_secs: u32,
}

/// A compact permission grant (seed 3.2 "permission grant", budget 96 bytes on air).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionGrant {
    /// Who receives the permission.
    pub grantee: PeerId,
    /// 64-bit hash of the resource (collection or document path).
    pub resource: u64,
    /// Action bits (read, write, ...; application-defined).
    pub actions: u8,
    /// Expiry, Unix seconds.
    pub expires_secs: u32,
}

/// The body of a sealed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A NetworkMessage in its LoRa [`envelope`](crate::envelope) (relays carry the
    /// bytes on without decoding them).
    Message(Vec<u8>),
    /// The neighbour closes the session: `leaving` when it stops (it will come back and
    /// may be reconnected to), otherwise an explicit disconnect (do not reconnect by itself).
    Close {
        /// The node is stopping rather than disconnecting from us.
        leaving: bool,
    },
    /// A notification header.
    Notification(NotificationHeader),
    /// A permission grant.
    Grant(PermissionGrant),
    /// The responder's first frame of a session: proves to the initiator that the
    /// handshake completed on both sides.
    Hello,
}

const B_MESSAGE: u8 = 0;
const B_CLOSE: u8 = 2;
const B_NOTIFICATION: u8 = 3;
const B_GRANT: u8 = 4;
const B_HELLO: u8 = 5;

/// Encodes a routing header and body (the plaintext of a sealed unit).
pub fn encode_inner(h: &RouteHeader, body: &Body) -> Vec<u8> {
    let extra = match body {
        Body::Message(m) => m.len(),
        _ => 48,
    };
    let mut out = Vec::with_capacity(INNER_HEADER_LEN + extra);
    out.push((h.ttl.min(15) << 4) | h.hops.min(15));
    out.extend_from_slice(&h.origin);
    out.extend_from_slice(&h.dest);
    out.extend_from_slice(&h.seq.to_be_bytes());
    match body {
        Body::Message(m) => {
            out.push(B_MESSAGE);
            out.extend_from_slice(m);
        }
        Body::Close { leaving } => {
            out.push(B_CLOSE);
            out.push(u8::from(*leaving));
        }
        Body::Notification(n) => {
            out.push(B_NOTIFICATION);
            let mut w = Writer::new();
            w.map(4);
            w.uint(0);
            w.uint(u64::from(n.collection));
            w.uint(1);
            w.bytes(&n.document.to_be_bytes());
            w.uint(2);
            w.uint(u64::from(n.change));
            w.uint(3);
            w.uint(u64::from(n.at_secs));
            out.extend_from_slice(&w.into_bytes());
        }
        Body::Hello => out.push(B_HELLO),
        Body::Grant(g) => {
            out.push(B_GRANT);
            let mut w = Writer::new();
            w.map(4);
            w.uint(0);
            w.bytes(g.grantee.as_bytes());
            w.uint(1);
            w.bytes(&g.resource.to_be_bytes());
            w.uint(2);
            w.uint(u64::from(g.actions));
            w.uint(3);
            w.uint(u64::from(g.expires_secs));
            out.extend_from_slice(&w.into_bytes());
        }
    }
    out
}

fn small<T: TryFrom<u64>>(r: &mut Reader<'_>, what: &'static str) -> Result<T, LoraError> {
    let v = r.read_uint().map_err(|_| err(what))?;
    T::try_from(v).map_err(|_| err(what))
}

fn key(r: &mut Reader<'_>, want: u64) -> Result<(), LoraError> {
    if r.read_uint().map_err(|_| err("map key"))? != want {
        return Err(err("unexpected map key"));
    }
    Ok(())
}

fn arr8(b: &[u8], what: &'static str) -> Result<[u8; 8], LoraError> {
    b.try_into().map_err(|_| err(what))
}

/// Decodes the plaintext of a sealed unit. Strict: exact lengths, CBOR keys in order, no
/// trailing bytes (a message body runs to the end).
pub fn decode_inner(bytes: &[u8]) -> Result<(RouteHeader, Body), LoraError> {
    let mut at = 0;
    let th = take(bytes, &mut at, 1)?[0];
    let origin = arr4(take(bytes, &mut at, 4)?);
    let dest = arr4(take(bytes, &mut at, 4)?);
    let s = take(bytes, &mut at, 2)?;
    let seq = u16::from_be_bytes([s[0], s[1]]);
    let h = RouteHeader {
        ttl: th >> 4,
        hops: th & 0x0F,
        origin,
        dest,
        seq,
    };
    let kind = take(bytes, &mut at, 1)?[0];
    let rest = &bytes[at..];
    let body = match kind {
        B_MESSAGE => Body::Message(rest.to_vec()),
        B_CLOSE => match rest {
            [0] => Body::Close { leaving: false },
            [1] => Body::Close { leaving: true },
            _ => return Err(err("close flag")),
        },
        B_HELLO if rest.is_empty() => Body::Hello,
        B_NOTIFICATION => {
            let mut r = Reader::new(rest, Limits::DEFAULT);
            if r.read_map_len().map_err(|_| err("notification"))? != 4 {
                return Err(err("notification arity"));
            }
            key(&mut r, 0)?;
            let collection = small(&mut r, "collection")?;
            key(&mut r, 1)?;
            let document = u64::from_be_bytes(arr8(
                r.read_bytes().map_err(|_| err("document"))?,
                "document",
            )?);
            key(&mut r, 2)?;
            let change = small(&mut r, "change")?;
            key(&mut r, 3)?;
            let at_secs = small(&mut r, "time")?;
            r.finish().map_err(|_| err("trailing bytes"))?;
            Body::Notification(NotificationHeader {
                collection,
                document,
                change,
                at_secs,
            })
        }
        B_GRANT => {
            let mut r = Reader::new(rest, Limits::DEFAULT);
            if r.read_map_len().map_err(|_| err("grant"))? != 4 {
                return Err(err("grant arity"));
            }
            key(&mut r, 0)?;
            let grantee = PeerId::from_slice(r.read_bytes().map_err(|_| err("grantee"))?)
                .map_err(|_| err("grantee"))?;
            key(&mut r, 1)?;
            let resource = u64::from_be_bytes(arr8(
                r.read_bytes().map_err(|_| err("resource"))?,
                "resource",
            )?);
            key(&mut r, 2)?;
            let actions = small(&mut r, "actions")?;
            key(&mut r, 3)?;
            let expires_secs = small(&mut r, "expiry")?;
            r.finish().map_err(|_| err("trailing bytes"))?;
            Body::Grant(PermissionGrant {
                grantee,
                resource,
                actions,
                expires_secs,
            })
        }
        _ => return Err(err("unknown body")),
    };
    Ok((h, body))
}

/// Adds `collection` to a Bloom filter.
pub fn bloom_insert(bloom: &mut [u8; BLOOM_LEN], collection: &str) {
    for bit in bloom_bits(collection) {
        bloom[bit / 8] |= 1 << (bit % 8);
    }
}

/// Whether a Bloom filter may contain `collection` (false positives possible, no false negatives).
pub fn bloom_contains(bloom: &[u8; BLOOM_LEN], collection: &str) -> bool {
    bloom_bits(collection)
        .into_iter()
        .all(|bit| bloom[bit / 8] & (1 << (bit % 8)) != 0)
}

fn bloom_bits(collection: &str) -> [usize; BLOOM_K] {
    let h = blake3::hash(collection.as_bytes());
    let b = h.as_bytes();
    let mut out = [0usize; BLOOM_K];
    for (i, o) in out.iter_mut().enumerate() {
        *o = usize::from(u16::from_be_bytes([b[2 * i], b[2 * i + 1]])) % (BLOOM_LEN * 8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> NetworkKey {
        NetworkKey::from_secret(b"test network")
    }

    #[test]
    fn presence_fits_its_budget_and_relays_keep_the_mac() {
        let mut bloom = [0u8; BLOOM_LEN];
        for c in ["notes", "expenses", "tasks"] {
            bloom_insert(&mut bloom, c);
        }
        let p = Presence {
            ttl: 5,
            hops: 0,
            origin: [1, 2, 3, 4],
            seq: u32::MAX,
            types: types::ALL,
            bloom,
        };
        let b = Frame::Presence(p.clone()).encode(&key());
        assert!(b.len() <= 32, "presence is {} bytes", b.len());
        assert_eq!(
            Frame::decode(&b, &key()).unwrap(),
            Frame::Presence(p.clone())
        );
        let mut relayed = b.clone();
        relayed[1] = (4 << 4) | 1;
        assert!(
            matches!(Frame::decode(&relayed, &key()), Ok(Frame::Presence(q)) if q.ttl == 4 && q.hops == 1)
        );
        for i in 2..b.len() {
            let mut t = b.clone();
            t[i] ^= 1;
            assert!(Frame::decode(&t, &key()).is_err(), "byte {i}");
        }
        assert!(matches!(
            Frame::decode(&b, &NetworkKey::from_secret(b"other")),
            Err(LoraError::BadMac)
        ));
        assert!(bloom_contains(&bloom, "notes") && bloom_contains(&bloom, "tasks"));
    }

    #[test]
    fn announce_and_key_request() {
        let a = Frame::Announce {
            key: [7; 32],
            epoch: 9,
            salt: 3,
        };
        let b = a.encode(&key());
        assert_eq!(b.len(), 49);
        assert_eq!(Frame::decode(&b, &key()).unwrap(), a);
        let k = Frame::KeyRequest {
            from: [1; 4],
            to: [2; 4],
            salt: 4,
        };
        let b = k.encode(&key());
        assert_eq!(b.len(), 21);
        assert_eq!(Frame::decode(&b, &key()).unwrap(), k);
        for f in [a, k] {
            let b = f.encode(&key());
            for i in 1..b.len() {
                let mut t = b.clone();
                t[i] ^= 0x80;
                assert!(Frame::decode(&t, &key()).is_err(), "byte {i}");
            }
            assert!(matches!(
                Frame::decode(&b, &NetworkKey::from_secret(b"other")),
                Err(LoraError::BadMac)
            ));
        }
    }

    /// Issue 18: to a listener without the network key, two beacons (or
    /// announces, key requests, handshakes) of one node share no byte beyond the
    /// kind and ttl/hops bytes: over 2000 frames of one node and 2000 of
    /// different nodes, the bytes that name the node differ as often as chance
    /// says, and no field position is stable. With the key, each decodes to its
    /// node.
    #[test]
    fn frames_of_one_node_are_unlinkable_without_the_network_key() {
        let k = key();
        let me = [0xAB, 0xCD, 0xEF, 0x01];
        let beacon = |origin: ShortId, seq: u32| {
            Frame::Presence(Presence {
                ttl: 5,
                hops: 0,
                origin,
                seq,
                types: types::ALL,
                bloom: [0; BLOOM_LEN],
            })
            .encode(&k)
        };
        // Bytes 2..6 are where the origin was in the clear.
        let same: Vec<Vec<u8>> = (0..2000u32).map(|s| beacon(me, s)).collect();
        let others: Vec<Vec<u8>> = (0..2000u32)
            .map(|s| beacon(s.wrapping_mul(2_654_435_761).to_be_bytes(), s))
            .collect();
        let equal_origin_bytes = |frames: &[Vec<u8>]| -> usize {
            frames
                .windows(2)
                .map(|w| (2..6).filter(|&i| w[0][i] == w[1][i]).count())
                .sum()
        };
        // Chance: 1999 pairs x 4 bytes / 256 = about 31 equal bytes.
        let (a, b) = (equal_origin_bytes(&same), equal_origin_bytes(&others));
        assert!(a < 80 && b < 80, "one node {a}, different nodes {b}");
        for i in 2..same[0].len() {
            assert!(
                same.iter().any(|f| f[i] != same[0][i]),
                "byte {i} of one node's beacons never changes"
            );
        }
        for (s, f) in same.iter().enumerate().take(50) {
            match Frame::decode(f, &k).unwrap() {
                Frame::Presence(p) => assert_eq!((p.origin, p.seq), (me, s as u32)),
                other => panic!("{other:?}"),
            }
        }
        // One node's announces and key requests with fresh salts.
        let announces: Vec<Vec<u8>> = (0..64u32)
            .map(|salt| {
                Frame::Announce {
                    key: [7; 32],
                    epoch: 9,
                    salt,
                }
                .encode(&k)
            })
            .collect();
        for i in 1..announces[0].len() {
            assert!(
                announces.iter().any(|f| f[i] != announces[0][i]),
                "byte {i} of one node's announces never changes"
            );
        }
        // Handshakes: the short ids change with the Noise message's fresh start.
        let hs = |noise: Vec<u8>| {
            Frame::Handshake {
                step: 1,
                explicit: false,
                from: me,
                to: [1, 2, 3, 4],
                noise,
            }
            .encode(&k)
        };
        let h1 = hs(vec![1; 48]);
        let h2 = hs(vec![2; 48]);
        assert_ne!(h1[1..9], h2[1..9]);
        assert!(
            matches!(Frame::decode(&h1, &k).unwrap(), Frame::Handshake { from, .. } if from == me)
        );
    }

    #[test]
    fn inner_bodies_round_trip() {
        let h = RouteHeader {
            ttl: 5,
            hops: 2,
            origin: [1; 4],
            dest: [2; 4],
            seq: 513,
        };
        for body in [
            Body::Message(vec![1, 2, 3]),
            Body::Message(Vec::new()),
            Body::Close { leaving: true },
            Body::Close { leaving: false },
            Body::Hello,
            Body::Notification(NotificationHeader {
                collection: u32::MAX,
                document: u64::MAX,
                change: 255,
                at_secs: u32::MAX,
            }),
            Body::Grant(PermissionGrant {
                grantee: PeerId::from_digest([3; 32]),
                resource: 1,
                actions: 3,
                expires_secs: 1_900_000_000,
            }),
        ] {
            let b = encode_inner(&h, &body);
            assert_eq!(decode_inner(&b).unwrap(), (h, body));
        }
    }

    proptest! {
        #[test]
        fn prop_frame_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::decode(&bytes, &key());
            let _ = decode_inner(&bytes);
        }

        #[test]
        fn prop_frames_round_trip(from in any::<[u8; 4]>(), to in any::<[u8; 4]>(), noise in proptest::collection::vec(any::<u8>(), 1..200), sid in any::<u16>(), counter in any::<u32>()) {
            for f in [
                Frame::Handshake { step: 2, explicit: false, from, to, noise: noise.clone() },
                Frame::Handshake { step: 1, explicit: true, from, to, noise: noise.clone() },
                Frame::Sealed { sid, counter, ciphertext: [noise.clone(), vec![0; 16]].concat() },
                Frame::SealedPart { sid, counter: counter as u16, index: from[0] % 15, count: 15, piece: noise.clone() },
                Frame::SealedPart { sid, counter: 0, index: 1, count: 2, piece: noise.clone() },
                Frame::KeyRequest { from, to, salt: counter },
            ] {
                prop_assert_eq!(Frame::decode(&f.encode(&key()), &key()).unwrap(), f);
            }
        }

        #[test]
        fn prop_inner_round_trip(origin in any::<[u8; 4]>(), seq in any::<u16>(), data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let h = RouteHeader { ttl: 3, hops: 1, origin, dest: origin, seq };
            let body = Body::Message(data);
            prop_assert_eq!(decode_inner(&encode_inner(&h, &body)).unwrap(), (h, body));
        }
    }
}
