//! The LoRa transport of ecomesh over stock Meshtastic radios (seed 3.2, 4.1, 7.1, 8.1;
//! issue 8).
//!
//! A user plugs any board running Meshtastic firmware into USB; ecomesh talks to it with
//! the Meshtastic client serial protocol ([`serial`], [`proto`], [`client`]): frames
//! `0x94 0xC3 || u16 length || protobuf`, the `want_config_id` handshake, periodic
//! heartbeats, and `MeshPacket`s whose `Data` uses the private application port (256).
//! Our own frames ([`frame`]) travel as that payload (at most 233 bytes); ecomesh does its
//! own multi-hop routing, so packets go out with `hop_limit` 0 by default and unicast
//! frames with `want_ack`: the firmware retransmits lost ones and tells the client each
//! packet's fate (a `ROUTING_APP` acknowledgement, or `MAX_RETRANSMIT` when it gave up).
//!
//! # Store-and-forward at each hop
//! A data unit (message, notification, grant: one sealed frame, or the parts of one
//! sealed unit) stays with the engine until the radio reports that the next hop received
//! every frame of it. When the radio gives up on a frame (collisions on a busy or
//! hidden-terminal channel exhaust the firmware's three retransmissions), or reports
//! nothing within `hop_ack_timeout_ms`, the engine sends that frame again (the same bytes
//! while the same next hop and session are still the best way; otherwise the whole unit,
//! sealed again for the best next hop), up to `hop_retries` times; after that it holds the
//! unit until a route appears. Duplicates (an acknowledgement lost after the frame
//! arrived) are dropped by the receivers' seen-sets and reassemblers. So a message that
//! `send` accepted is not lost to collisions on one hop while the next hop stays
//! reachable.
//!
//! # Layers
//! - [`serial`]: sans-io framing with resynchronisation after garbage (fuzzed).
//! - [`frame`]: the compact frames: fixed binary headers, CBOR bodies with small integer keys.
//! - [`envelope`]: a `NetworkMessage` as a sealed message body carries it.
//! - [`engine`]: the sans-io protocol engine: Noise IK sessions with neighbours, beacons,
//!   key discovery, routing ([`routing`]), parts of units ([`frag`]), store-and-forward,
//!   channel access ([`sched`], [`airtime`]).
//! - [`LoraTransport`]: the tokio driver and [`TransportAdapter`](ecomesh_types::TransportAdapter).
//! - `sim` (feature `sim`): Meshtastic devices simulated on pseudo-terminals sharing a
//!   channel with links, loss, airtime, listen-before-talk and collisions.
//!
//! # How frames are authenticated within the budgets
//! A 64-byte Ed25519 signature per frame would eat the 32-byte presence budget twice over.
//! Instead:
//!
//! - **Unicast (sealed) frames** ride a Noise session set up once per pair of neighbours
//!   with `Noise_IK_25519_ChaChaPoly_BLAKE2s` from `ecomesh-identity` (the initiator learns
//!   the responder's Ed25519 key from its announce; both identities are proven and checked
//!   against the [`AccessPolicy`](ecomesh_identity::AccessPolicy) before the session
//!   exists; the responder's first sealed frame confirms the session to the initiator).
//!   A unit that fits one frame then costs 23 bytes: kind (1), a 2-byte session id taken
//!   from the handshake hash (which session to try; a collision only costs a failed
//!   decryption), a 4-byte counter (the low half of the 64-bit Noise nonce; the session is
//!   dropped and renegotiated before it wraps) and the **full 16-byte ChaCha20-Poly1305
//!   tag**. A larger unit (a message up to `max_message_size`) is encrypted once, under
//!   one nonce and one tag, and its ciphertext travels in 2 to 8 parts of 6 header bytes
//!   (kind, session id, the nonce's low 16 bits, which the receiver completes from the
//!   highest nonce it accepted, and index/count); the receiver reassembles the parts
//!   (bounded per sender, globally and in time) and checks the one tag. A 1 KB delta so
//!   costs 6 frames per hop within 1.2x of its frame floor, where a tag per frame cost 7
//!   (1.44x). Parts are unauthenticated until the tag is checked: a forged part makes
//!   the unit fail its tag and be dropped (like jamming, a denial of service; the mesh's
//!   end-to-end acknowledgement and resend recover the message), never accepted. The
//!   receiver keeps a 128-nonce replay window, so loss and reordering are tolerated and
//!   replays, tampering and forgeries are rejected with the strength of the full tag. We
//!   chose the full tag over a truncated one: it still fits every budget (notification
//!   header 60 B of 64, permission grant 89 B of 96), and truncating Poly1305 would need
//!   our own AEAD construction.
//! - **Broadcast frames** (presence beacons, announces, key requests) carry an 8-byte
//!   truncated keyed BLAKE3 MAC under a **network key** derived from a secret every node
//!   of the deployment shares ([`EngineConfig::network_secret`]). This proves membership
//!   of the network, not the identity of the individual sender: any member can forge
//!   another member's beacon, and with the default secret (public) anyone can. We accept
//!   that because a beacon only *hints*: it can make us start a handshake or learn a
//!   route, never deliver data or make a peer appear — `PeerDiscovered` is emitted only
//!   after the Noise handshake proved the peer's key. A forged beacon can waste airtime and
//!   poison routes (frames then go the wrong way and are dropped there; routes expire).
//!   64-bit MACs resist online forgery (2^-64 per try). Relays rewrite the ttl/hops byte,
//!   which the MAC excludes, so a member could also stretch a beacon's reach.
//! - **Multi-hop** frames are decrypted and re-encrypted at each hop under that hop's
//!   session: per-hop authentication. A NetworkMessage keeps its Ed25519 signature end to
//!   end (it travels in the LoRa [`envelope`], which keeps every field the signature
//!   covers and leaves out only the recipient when it is the destination itself), so the
//!   destination's mesh still verifies the origin. The compact
//!   notification and grant frames have no signature: their origin is vouched for by the
//!   relays only — trust in them is trust in the network's members.
//!
//! # Payload strategy
//! Messages whose full encoding exceeds `max_message_size` (1536 B by default, a 1 KB
//! CRDT delta fits) or whose priority is `Bulk` are refused with typed errors; the mesh
//! routes them over other transports. A unit larger than one frame is split into at most
//! 8 parts and reassembled at each hop under per-sender and global byte limits with
//! timeouts.
//!
//! # Channel access
//! Transmissions start on slot boundaries after a random backoff (slotted ALOHA), under a
//! duty-cycle ledger over a sliding window (EU868: 10% in 869.4–869.65 MHz, 1%
//! elsewhere) that is never exceeded; what does not fit waits, most urgent first. Airtime
//! comes from the Semtech formula for the configured modem. The firmware's own
//! `want_ack` retransmissions are outside this ledger (Meshtastic enforces the EU868
//! limit in the firmware too).
#![forbid(unsafe_code)]

pub mod airtime;
pub mod client;
pub mod engine;
pub mod envelope;
mod error;
pub mod frag;
pub mod frame;
pub mod measure;
pub mod proto;
pub mod routing;
pub mod sched;
pub mod serial;
#[cfg(feature = "sim")]
pub mod sim;
mod transport;

pub use engine::{Engine, EngineConfig, EngineEvent};
pub use error::LoraError;
pub use transport::{CompactEvent, LoraConfig, LoraStatus, LoraTransport};
