//! Sealed texts between nodes and the durable outbox.
//!
//! A text is sealed to the recipient's key (`identity::sealed::seal_signed`)
//! and travels as a signed mesh message of type [`TEXT_TYPE`]. A received
//! text is written to the store inside the mesh's delivery callback, before
//! the mesh sends its ACK, so an acknowledged text is never lost by a crash
//! of the receiver.
//!
//! The outbox is the source of truth for texts: a `pending` row is a text the
//! node accepted and has not seen acknowledged. The mesh's store-and-forward
//! buffer draws from it: on every pass of the node, each pending text the
//! mesh does not hold (not buffered, and not in flight to a reachable
//! recipient) is offered to the mesh again, oldest first, until the buffer
//! refuses for want of room; across a restart the pending rows are read back
//! and offered the same way. A text is refused up front only when the outbox
//! already holds [`NodeConfig::outbox_max`](crate::NodeConfig::outbox_max)
//! pending texts, and a pending text leaves that state only by its ACK
//! (`delivered`) or its TTL (`expired`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ecomesh_identity::sealed::{open_signed, seal_signed};
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::{MeshError, MultiTransportManager, SendOutcome};
use ecomesh_p2p_storage::SledStore;
use ecomesh_types::{Map, MessageId, NetworkMessage, PeerId, Priority, SetOptions, Value};
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::error::{Result, SyncError};
use crate::persist::MeshState;

/// How often a send waiting for a recipient's key looks again.
const KEY_POLL: Duration = Duration::from_millis(20);

/// The message type of a sealed text between two nodes.
pub const TEXT_TYPE: &str = "ecomesh/text";
/// The largest text, in bytes, that fits in one message.
pub const MAX_TEXT: usize = 64 * 1024;
/// The local collection of received texts (the `_` prefix keeps it off the network).
pub const INBOX: &str = "_inbox";
/// The local collection of sent texts.
pub const OUTBOX: &str = "_outbox";

/// Where a sent text stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TextStatus {
    /// Accepted, not acknowledged yet; queued in the mesh or the outbox.
    Pending,
    /// Acknowledged by the recipient.
    Delivered,
    /// Its TTL passed without an acknowledgement.
    Expired,
    /// A status this version does not know (kept as stored).
    Other(String),
}

impl TextStatus {
    /// The stored name: `pending`, `delivered`, `expired` or the unknown text.
    pub fn as_str(&self) -> &str {
        match self {
            TextStatus::Pending => "pending",
            TextStatus::Delivered => "delivered",
            TextStatus::Expired => "expired",
            TextStatus::Other(s) => s,
        }
    }

    fn parse(s: &str) -> TextStatus {
        match s {
            "pending" => TextStatus::Pending,
            "delivered" => TextStatus::Delivered,
            "expired" => TextStatus::Expired,
            other => TextStatus::Other(other.to_owned()),
        }
    }
}

/// A received text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxText {
    /// Its message id.
    pub id: String,
    /// The sender's peer id.
    pub from: String,
    /// The text.
    pub text: String,
    /// When the sender accepted it (its clock).
    pub sent_ms: u64,
    /// When this node stored it (this node's clock).
    pub received_ms: u64,
}

/// A sent text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxText {
    /// Its message id.
    pub id: String,
    /// The recipient's peer id.
    pub to: String,
    /// The text.
    pub text: String,
    /// When this node accepted it.
    pub sent_ms: u64,
    /// Where it stands.
    pub status: TextStatus,
}

/// What [`Node::send_text`](crate::Node::send_text) did with a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentText {
    /// The message id (also the outbox row's id).
    pub id: MessageId,
    /// Sent now over a transport, or queued until the recipient is reachable.
    pub outcome: SendOutcome,
}

/// A pending outbox text the mesh does not hold, to be offered again.
struct Waiting {
    id: MessageId,
    to: PeerId,
    sent_ms: u64,
}

/// The text protocol and the outbox that feeds the mesh.
pub(crate) struct Texts {
    identity: Identity,
    store: Arc<SledStore>,
    mesh: Arc<MultiTransportManager>,
    state: Arc<MeshState>,
    wake: Arc<Notify>,
    /// The outbox's pending texts: id -> (recipient, sent_ms).
    pending: Mutex<BTreeMap<MessageId, (PeerId, u64)>>,
    max: usize,
    /// Longest wait for an unknown recipient's key.
    key_wait: Duration,
    /// Serialises offering outbox texts to the mesh.
    feed_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Texts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Texts")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

pub(crate) fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Text(t)) => t.clone(),
        _ => String::new(),
    }
}

pub(crate) fn int(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Integer(i)) => u64::try_from(*i).unwrap_or(0),
        _ => 0,
    }
}

fn ms(v: u64) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Texts {
    /// The text service over `store` and `mesh`, with the pending rows of the
    /// outbox read back (offered to the mesh again on the next pass).
    pub(crate) fn open(
        identity: Identity,
        store: Arc<SledStore>,
        mesh: Arc<MultiTransportManager>,
        state: Arc<MeshState>,
        wake: Arc<Notify>,
        max: usize,
        key_wait: Duration,
    ) -> Result<Texts> {
        let pending = pending_texts(&store)?;
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "pending texts in the outbox; offered to the mesh again"
            );
        }
        Ok(Texts {
            identity,
            store,
            mesh,
            state,
            wake,
            pending: Mutex::new(pending),
            max,
            key_wait,
            feed_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<MessageId, (PeerId, u64)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when `id` is a pending outbox text.
    pub(crate) fn is_pending_text(&self, id: &MessageId) -> bool {
        self.pending().contains_key(id)
    }

    /// Stores text message `m` addressed to this node in the inbox (once).
    pub(crate) fn receive(&self, m: &NetworkMessage) -> Result<()> {
        let id = m.id.to_string();
        if self.store.get(INBOX, &id)?.is_some() {
            return Ok(());
        }
        let (key, plain) = open_signed(&self.identity, &m.payload)?;
        if key.peer_id() != m.sender {
            return Err(SyncError::InvalidArgument(format!(
                "sealed by {} but sent by {}",
                key.peer_id(),
                m.sender
            )));
        }
        let text = String::from_utf8(plain)
            .map_err(|_| SyncError::InvalidArgument("text is not UTF-8".into()))?;
        let mut f = Map::new();
        f.insert("from".into(), Value::Text(m.sender.to_string()));
        f.insert("text".into(), Value::Text(text));
        f.insert("sent_ms".into(), ms(m.timestamp_ms));
        f.insert("received_ms".into(), ms(now_ms()));
        self.store.set(INBOX, &id, f, SetOptions::default())?;
        tracing::info!(%id, from = %m.sender, "message received");
        Ok(())
    }

    /// Sets the status of outbox text `id` (`delivered` or `expired`); it is
    /// pending no more.
    pub(crate) fn mark(&self, id: &MessageId, status: &TextStatus) {
        self.pending().remove(id);
        let id = &id.to_string();
        let mut f = Map::new();
        f.insert("status".into(), Value::Text(status.as_str().into()));
        match self.store.get(OUTBOX, id) {
            Ok(Some(_)) => {
                if let Err(e) = self.store.update(OUTBOX, id, f) {
                    tracing::error!(%id, error = %e, "outbox not updated");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(%id, error = %e, "outbox unreadable"),
        }
    }

    /// The received texts, oldest first.
    pub(crate) fn inbox(&self) -> Result<Vec<InboxText>> {
        let mut rows: Vec<InboxText> = self
            .store
            .scan_collection(INBOX)?
            .into_iter()
            .map(|d| InboxText {
                from: text(d.fields.get("from")),
                text: text(d.fields.get("text")),
                sent_ms: int(d.fields.get("sent_ms")),
                received_ms: int(d.fields.get("received_ms")),
                id: d.id,
            })
            .collect();
        rows.sort_by(|a, b| a.received_ms.cmp(&b.received_ms).then(a.id.cmp(&b.id)));
        Ok(rows)
    }

    /// The sent texts, oldest first.
    pub(crate) fn outbox(&self) -> Result<Vec<OutboxText>> {
        let mut rows: Vec<OutboxText> = self
            .store
            .scan_collection(OUTBOX)?
            .into_iter()
            .map(|d| OutboxText {
                to: text(d.fields.get("to")),
                text: text(d.fields.get("text")),
                sent_ms: int(d.fields.get("sent_ms")),
                status: TextStatus::parse(&text(d.fields.get("status"))),
                id: d.id,
            })
            .collect();
        rows.sort_by(|a, b| a.sent_ms.cmp(&b.sent_ms).then(a.id.cmp(&b.id)));
        Ok(rows)
    }

    /// `to`'s public key: known, or found by the mesh's key discovery within
    /// `key_wait` (the node's loop handles the reply; this waits on the wake
    /// it gives and on a short poll as a fallback).
    async fn key_of(&self, to: PeerId) -> Result<PublicKey> {
        let deadline = tokio::time::Instant::now() + self.key_wait;
        loop {
            if let Some(key) = self.mesh.discover_key(to, now_ms()).await {
                return Ok(key);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SyncError::UnknownKey(to));
            }
            self.wake.notify_one();
            let step = deadline.min(tokio::time::Instant::now() + KEY_POLL);
            tokio::time::sleep_until(step).await;
        }
    }

    /// Seals `text` to `to`, records it as pending in the outbox and offers
    /// it to the mesh (behind older texts to `to` that wait for room).
    pub(crate) async fn send(&self, to: PeerId, text: String) -> Result<SentText> {
        if to == self.identity.peer_id() {
            return Err(SyncError::InvalidArgument(format!(
                "{to} is this node's own id; send to another node"
            )));
        }
        if text.len() > MAX_TEXT {
            return Err(SyncError::InvalidArgument(format!(
                "the text is {} bytes; at most {MAX_TEXT} bytes fit in one message",
                text.len()
            )));
        }
        let key = self.key_of(to).await?;
        // One offer at a time, so texts to one recipient enter the mesh in order.
        let _feeding = self.feed_lock.lock().await;
        let held = self.pending().len();
        if held >= self.max {
            return Err(SyncError::OutboxFull {
                held,
                max: self.max,
            });
        }
        let sealed = seal_signed(&self.identity, &key, text.as_bytes())?;
        let now = now_ms();
        let mut random = [0u8; 16];
        getrandom::fill(&mut random)
            .map_err(|e| SyncError::InvalidArgument(format!("no randomness: {e}")))?;
        let message = self
            .mesh
            .new_message(TEXT_TYPE, sealed, Some(to), now, random)?;
        let mid = message.id;
        let id = mid.to_string();
        let mut f = Map::new();
        f.insert("to".into(), Value::Text(to.to_string()));
        f.insert("text".into(), Value::Text(text));
        f.insert("sent_ms".into(), ms(now));
        f.insert("status".into(), Value::Text("pending".into()));
        self.store.set(OUTBOX, &id, f, SetOptions::default())?;
        self.pending().insert(mid, (to, now));
        // Older texts to the same recipient that wait for room go first.
        let behind = self.waiting(Some(to)).iter().any(|w| w.id != mid);
        let outcome = if behind {
            Ok(SendOutcome::Queued)
        } else {
            self.mesh.send(to, message, Priority::Normal, now).await
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(MeshError::BufferFull { max_messages, .. }) => {
                tracing::info!(%id, %to, max_messages,
                    "the mesh buffer is full; the text waits in the outbox until it has room");
                SendOutcome::Queued
            }
            Err(MeshError::DestinationFull { max_messages, .. }) => {
                tracing::info!(%id, %to, max_messages,
                    "the offline queue for this peer is full; the text waits in the outbox");
                SendOutcome::Queued
            }
            Err(e) => {
                // Refused up front: it is queued nowhere, so it leaves the outbox.
                self.pending().remove(&mid);
                if let Err(d) = self.store.delete(OUTBOX, &id) {
                    tracing::error!(%id, error = %d, "refused text not removed from the outbox");
                }
                return Err(e.into());
            }
        };
        self.state.persist();
        self.wake.notify_one();
        tracing::info!(%id, %to, ?outcome, "message accepted");
        Ok(SentText { id: mid, outcome })
    }

    /// How many pending texts the mesh does not hold.
    pub(crate) fn waiting_count(&self) -> usize {
        self.waiting(None).len()
    }

    /// The pending outbox texts the mesh does not hold (neither buffered nor
    /// waiting for an ACK from a reachable recipient), oldest first; only those
    /// to `to` when given.
    fn waiting(&self, to: Option<PeerId>) -> Vec<Waiting> {
        let held = self.mesh.buffered_ids();
        let pending: Vec<(MessageId, PeerId, u64)> = self
            .pending()
            .iter()
            .filter(|(_, (p, _))| to.is_none_or(|t| t == *p))
            .map(|(id, (p, sent))| (*id, *p, *sent))
            .collect();
        let mut out: Vec<Waiting> = pending
            .into_iter()
            .filter(|(id, p, _)| {
                let tracked = self.mesh.is_pending(id);
                !(tracked && (held.contains(id) || !self.mesh.peer_transports(p).is_empty()))
            })
            .map(|(id, to, sent_ms)| Waiting { id, to, sent_ms })
            .collect();
        out.sort_by_key(|w| (w.sent_ms, w.id));
        out
    }

    /// The signed, sealed message of outbox text `w`, with its original id and
    /// timestamp (so its TTL still counts from when it was accepted); `None`
    /// when the row is gone.
    fn rebuild(&self, w: &Waiting) -> Result<Option<NetworkMessage>> {
        let Some(doc) = self.store.get(OUTBOX, &w.id.to_string())? else {
            return Ok(None);
        };
        let body = text(doc.fields.get("text"));
        let key = self
            .mesh
            .public_key(&w.to)
            .ok_or(SyncError::UnknownKey(w.to))?;
        let sealed = seal_signed(&self.identity, &key, body.as_bytes())?;
        Ok(Some(self.mesh.new_message(
            TEXT_TYPE,
            sealed,
            Some(w.to),
            w.sent_ms,
            *w.id.as_bytes(),
        )?))
    }

    /// Offers the pending texts the mesh does not hold to it again, oldest
    /// first: those to reachable peers are sent, the others buffered while
    /// the buffer has room. Texts past their TTL are marked expired.
    pub(crate) async fn feed(&self) {
        let _feeding = self.feed_lock.lock().await;
        let now = now_ms();
        let ttl_ms = u64::from(NetworkMessage::DEFAULT_TTL_SECS) * 1000;
        let mut full = false;
        let mut full_for = std::collections::BTreeSet::new();
        for w in self.waiting(None) {
            if w.sent_ms.saturating_add(ttl_ms) <= now {
                tracing::warn!(id = %w.id, to = %w.to, "expired without delivery");
                self.mark(&w.id, &TextStatus::Expired);
                continue;
            }
            if (full || full_for.contains(&w.to)) && self.mesh.peer_transports(&w.to).is_empty() {
                continue;
            }
            let message = match self.rebuild(&w) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.pending().remove(&w.id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(id = %w.id, error = %e, "outbox text not offered again yet");
                    continue;
                }
            };
            match self.mesh.send(w.to, message, Priority::Normal, now).await {
                Ok(outcome) => {
                    tracing::debug!(id = %w.id, ?outcome, "outbox text offered again");
                    self.state.mark_dirty();
                }
                Err(MeshError::BufferFull { .. }) => full = true,
                Err(MeshError::DestinationFull { peer, .. }) => {
                    full_for.insert(peer);
                }
                Err(MeshError::Expired(_)) => self.mark(&w.id, &TextStatus::Expired),
                Err(e) => tracing::warn!(id = %w.id, error = %e, "outbox text not offered again"),
            }
        }
    }
}

/// The outbox's pending texts: id -> (recipient, sent_ms).
fn pending_texts(store: &SledStore) -> Result<BTreeMap<MessageId, (PeerId, u64)>> {
    let mut out = BTreeMap::new();
    for d in store.scan_collection(OUTBOX)? {
        if text(d.fields.get("status")) != "pending" {
            continue;
        }
        match (
            d.id.parse::<MessageId>(),
            text(d.fields.get("to")).parse::<PeerId>(),
        ) {
            (Ok(id), Ok(to)) => {
                out.insert(id, (to, int(d.fields.get("sent_ms"))));
            }
            _ => tracing::error!(id = %d.id, "unreadable outbox row; not offered again"),
        }
    }
    Ok(out)
}
