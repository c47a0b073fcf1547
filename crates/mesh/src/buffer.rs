//! The store-and-forward buffer (seed 7.1).
//!
//! Bounded by message count (default 1000) and accounted bytes (default
//! 10 MiB), and per destination (seed 003's offline queue: at most 100
//! messages and 1 MiB for any one recipient, each held at most 72 hours by
//! this node's clock, counted from when it was stored here). When an insertion
//! goes over its destination's bounds, that destination's own messages are the
//! only candidates for eviction, and a newcomer that ranks lowest among them is
//! refused with [`MeshError::DestinationFull`]; the global bounds are then
//! applied to everyone. The hold applies to copies held for others; the
//! manager exempts the messages this node originated, which stay until their
//! own TTL ([`StoreBuffer::expire_keeping`]). When an insertion goes over a global bound, messages are evicted in this
//! order: lowest priority first (`Bulk` before `Critical`), then shortest
//! remaining TTL, then lowest reputation of the recipient, then the larger id
//! (so eviction is deterministic). The message being inserted takes part: if
//! it ranks lowest it is refused ([`MeshError::BufferFull`]).
//!
//! [`StoreBuffer::insert_keeping`] marks some entries as kept (the manager keeps
//! the messages this node originated and still waits to see acknowledged): a
//! kept entry is evicted only for a newcomer of strictly higher priority, and
//! never for one of equal or lower priority, so accepted messages of the same
//! priority never push each other out; a newcomer that finds no room is refused
//! with [`MeshError::BufferFull`], which names the bounds. Every id evicted is
//! returned to the caller, who reports it.
//!
//! Persistence: [`StoreBuffer::save`] writes the whole buffer atomically (temp
//! file, fsync, rename, fsync of the directory); [`StoreBuffer::load`] decodes it
//! strictly under the buffer's bounds and returns typed errors for any corrupt
//! file. File format (all integers big-endian):
//! `"ECMESHSF"` magic, `u8` version 2, `u32` count, then per entry `u8`
//! priority (0 = critical .. 4 = bulk), `u64` the local time in ms it was
//! stored here, `u32` length and the message in the full DAG-CBOR form of
//! `ecomesh_wire::encode_message`. Version 1 files (no stored time) still load;
//! their messages count their hold from the first [`StoreBuffer::expire`].

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ecomesh_types::{MessageId, NetworkMessage, PeerId, Priority};
use ecomesh_wire::{Limits, decode_message_with, encode_message};

use crate::MeshError;

/// Default bound on the number of buffered messages.
pub const DEFAULT_MAX_MESSAGES: usize = 1000;
/// Default bound on buffered bytes: 10 MiB.
pub const DEFAULT_MAX_BYTES: usize = 10 * 1024 * 1024;
/// Bytes accounted for each message besides its type and payload.
pub const PER_MESSAGE_OVERHEAD: usize = 160;

const MAGIC: &[u8; 8] = b"ECMESHSF";
const VERSION: u8 = 2;
/// Default bound on the messages held for one recipient (seed 003).
pub const DEFAULT_PER_DESTINATION_MESSAGES: usize = 100;
/// Default bound on the accounted bytes held for one recipient: 1 MiB (seed 003's 1 MB).
pub const DEFAULT_PER_DESTINATION_BYTES: usize = 1024 * 1024;
/// Default longest hold of a message by this node: 72 hours (seed 003).
pub const DEFAULT_MAX_HOLD_MS: u64 = 72 * 3600 * 1000;

/// Bounds of a [`StoreBuffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferConfig {
    /// Most messages held.
    pub max_messages: usize,
    /// Most accounted bytes held (see [`accounted_size`]).
    pub max_bytes: usize,
    /// Most messages held for any one recipient (broadcasts are not counted).
    pub per_destination_messages: usize,
    /// Most accounted bytes held for any one recipient.
    pub per_destination_bytes: usize,
    /// Longest a message stays here, by this node's clock from when it was
    /// stored; it leaves earlier when its own TTL passes.
    pub max_hold_ms: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_messages: DEFAULT_MAX_MESSAGES,
            max_bytes: DEFAULT_MAX_BYTES,
            per_destination_messages: DEFAULT_PER_DESTINATION_MESSAGES,
            per_destination_bytes: DEFAULT_PER_DESTINATION_BYTES,
            max_hold_ms: DEFAULT_MAX_HOLD_MS,
        }
    }
}

/// The bytes a message counts for: type + payload + [`PER_MESSAGE_OVERHEAD`].
pub fn accounted_size(m: &NetworkMessage) -> usize {
    m.payload
        .len()
        .saturating_add(m.message_type.len())
        .saturating_add(PER_MESSAGE_OVERHEAD)
}

/// A [`StoreBuffer`] in figures (see [`StoreBuffer::summary`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferSummary {
    /// Messages held.
    pub messages: usize,
    /// Accounted bytes held.
    pub bytes: usize,
    /// The bounds.
    pub config: BufferConfig,
    /// Messages held per recipient (`None`: broadcasts), most first.
    pub by_destination: Vec<(Option<PeerId>, usize)>,
}

/// One buffered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The message, with the hop count it will be sent with.
    pub message: NetworkMessage,
    /// Its delivery priority.
    pub priority: Priority,
    /// This node's clock (ms) when the message was stored here; `None` for
    /// a message loaded from a version 1 file until the next expiry pass.
    pub held_since_ms: Option<u64>,
}

/// Bounded store-and-forward buffer of messages addressed to absent peers.
#[derive(Debug)]
pub struct StoreBuffer {
    config: BufferConfig,
    entries: Vec<Entry>,
    bytes: usize,
    /// Bumped by every call that may change the held messages (see
    /// [`generation`](StoreBuffer::generation)).
    generation: u64,
}

fn priority_code(p: Priority) -> u8 {
    match p {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Low => 3,
        _ => 4,
    }
}

fn priority_from(code: u8) -> Option<Priority> {
    Priority::ALL.get(usize::from(code)).copied()
}

impl StoreBuffer {
    /// An empty buffer with `config`'s bounds.
    pub fn new(config: BufferConfig) -> Self {
        StoreBuffer {
            config,
            entries: Vec::new(),
            bytes: 0,
            generation: 0,
        }
    }

    /// A counter that changes whenever the held messages may have changed
    /// (conservatively: an insert bumps it even when refused), so an owner that
    /// persists the buffer can skip rewriting an unchanged one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The bounds.
    pub fn config(&self) -> BufferConfig {
        self.config
    }

    /// Number of messages held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Accounted bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when a message with `id` is held.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.entries.iter().any(|e| e.message.id == *id)
    }

    /// The entries, in insertion order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// What the buffer holds, in figures: messages and accounted bytes, its
    /// bounds, and the messages held per recipient (broadcasts under `None`),
    /// most messages first, then by recipient.
    pub fn summary(&self) -> BufferSummary {
        let mut per: BTreeMap<Option<PeerId>, usize> = BTreeMap::new();
        for e in &self.entries {
            *per.entry(e.message.recipient).or_default() += 1;
        }
        let mut by_destination: Vec<(Option<PeerId>, usize)> = per.into_iter().collect();
        by_destination.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        BufferSummary {
            messages: self.entries.len(),
            bytes: self.bytes,
            config: self.config,
            by_destination,
        }
    }

    /// Stores `message` for later delivery; returns the ids evicted to make room.
    ///
    /// Refuses an expired message, one whose hops are exhausted, one larger
    /// than the byte bound, and one that would itself be the first evicted.
    /// A message already held (same id) is not stored twice.
    /// `reputation` gives the recipient's score for the third eviction key.
    pub fn insert(
        &mut self,
        message: NetworkMessage,
        priority: Priority,
        now_ms: u64,
        reputation: &dyn Fn(&PeerId) -> f64,
    ) -> Result<Vec<MessageId>, MeshError> {
        self.insert_keeping(message, priority, now_ms, reputation, &|_| false)
    }

    /// Like [`insert`](Self::insert), but an entry for which `kept` is true is
    /// evicted only to make room for a newcomer of strictly higher priority.
    /// When the message cannot get room it is refused with
    /// [`MeshError::BufferFull`] and nothing held is evicted. Every evicted id is
    /// returned (none is dropped without the caller hearing of it).
    pub fn insert_keeping(
        &mut self,
        message: NetworkMessage,
        priority: Priority,
        now_ms: u64,
        reputation: &dyn Fn(&PeerId) -> f64,
        kept: &dyn Fn(&MessageId) -> bool,
    ) -> Result<Vec<MessageId>, MeshError> {
        self.generation = self.generation.wrapping_add(1);
        let id = message.id;
        if message.is_expired(now_ms) {
            return Err(MeshError::Expired(id));
        }
        if message.hops_exhausted() {
            return Err(MeshError::HopsExhausted(id));
        }
        let size = accounted_size(&message);
        if size > self.config.max_bytes || self.config.max_messages == 0 {
            return Err(MeshError::TooLargeForBuffer {
                id,
                size,
                max: self.config.max_bytes,
            });
        }
        if self.contains(&id) {
            return Ok(Vec::new());
        }
        let destination = message.recipient;
        self.bytes += size;
        self.entries.push(Entry {
            message,
            priority,
            held_since_ms: Some(now_ms),
        });
        let newcomer = self.entries.len() - 1;
        // Kept entries of equal or higher priority than the newcomer are not
        // candidates; the newcomer itself always is.
        let code = priority_code(priority);
        let mut chosen: Vec<usize> = (0..newcomer)
            .filter(|&i| {
                let e = &self.entries[i];
                kept(&e.message.id) && priority_code(e.priority) <= code
            })
            .collect();
        let protected = chosen.len();
        // Choose victims worst-first without touching the buffer, so a refused
        // newcomer costs nobody else their place.
        let (mut count, mut bytes) = (self.entries.len(), self.bytes);
        if let Some(dest) = destination {
            let mine = |e: &Entry| e.message.recipient == Some(dest);
            let (mut dcount, mut dbytes) = self
                .entries
                .iter()
                .filter(|e| mine(e))
                .fold((0_usize, 0_usize), |(c, b), e| {
                    (c + 1, b + accounted_size(&e.message))
                });
            while dcount > self.config.per_destination_messages
                || dbytes > self.config.per_destination_bytes
            {
                let worst = self.worst(now_ms, reputation, &chosen, &mine);
                if worst.is_none() || worst == Some(newcomer) {
                    self.entries.pop();
                    self.bytes -= size;
                    return Err(MeshError::DestinationFull {
                        id,
                        peer: dest,
                        max_messages: self.config.per_destination_messages,
                        max_bytes: self.config.per_destination_bytes,
                    });
                }
                let Some(worst) = worst else { break };
                chosen.push(worst);
                let freed = accounted_size(&self.entries[worst].message);
                (dcount, dbytes) = (dcount - 1, dbytes - freed);
                (count, bytes) = (count - 1, bytes - freed);
            }
        }
        while count > self.config.max_messages || bytes > self.config.max_bytes {
            let Some(worst) = self.worst(now_ms, reputation, &chosen, &|_| true) else {
                break;
            };
            if worst == newcomer {
                self.entries.pop();
                self.bytes -= size;
                return Err(MeshError::BufferFull {
                    id,
                    max_messages: self.config.max_messages,
                    max_bytes: self.config.max_bytes,
                });
            }
            chosen.push(worst);
            count -= 1;
            bytes -= accounted_size(&self.entries[worst].message);
        }
        let mut chosen = chosen.split_off(protected);
        chosen.sort_unstable();
        let mut evicted = Vec::with_capacity(chosen.len());
        for i in chosen.into_iter().rev() {
            let e = self.entries.remove(i);
            self.bytes -= accounted_size(&e.message);
            evicted.push(e.message.id);
        }
        Ok(evicted)
    }

    fn worst(
        &self,
        now_ms: u64,
        reputation: &dyn Fn(&PeerId) -> f64,
        skip: &[usize],
        among: &dyn Fn(&Entry) -> bool,
    ) -> Option<usize> {
        let key = |e: &Entry| {
            let remaining = e.message.expires_at_ms().saturating_sub(now_ms);
            let rep = e.message.recipient.as_ref().map_or(0.0, reputation);
            (priority_code(e.priority), remaining, rep, e.message.id)
        };
        let mut best: Option<(usize, (u8, u64, f64, MessageId))> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if skip.contains(&i) || !among(e) {
                continue;
            }
            let k = key(e);
            let worse = match &best {
                None => true,
                Some((_, b)) => {
                    k.0 > b.0
                        || (k.0 == b.0
                            && (k.1 < b.1
                                || (k.1 == b.1 && (k.2 < b.2 || (k.2 == b.2 && k.3 > b.3)))))
                }
            };
            if worse {
                best = Some((i, k));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Removes and returns every message addressed to `peer`, most urgent
    /// first, then oldest first (by timestamp), for delivery now that it is reachable.
    pub fn take_for(&mut self, peer: &PeerId) -> Vec<Entry> {
        let (mut out, keep): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.message.recipient.as_ref() == Some(peer));
        self.entries = keep;
        self.bytes = self
            .entries
            .iter()
            .map(|e| accounted_size(&e.message))
            .sum();
        if !out.is_empty() {
            self.generation = self.generation.wrapping_add(1);
        }
        out.sort_by_key(|e| (priority_code(e.priority), e.message.timestamp_ms));
        out
    }

    /// Removes the message with `id` (e.g. once acknowledged); true if it was held.
    pub fn remove(&mut self, id: &MessageId) -> bool {
        match self.entries.iter().position(|e| e.message.id == *id) {
            Some(i) => {
                let e = self.entries.remove(i);
                self.bytes -= accounted_size(&e.message);
                self.generation = self.generation.wrapping_add(1);
                true
            }
            None => false,
        }
    }

    /// Discards every message whose TTL has passed at `now_ms`, or that was
    /// held here longer than the configured hold; returns their ids.
    pub fn expire(&mut self, now_ms: u64) -> Vec<MessageId> {
        self.expire_keeping(now_ms, &|_| false)
    }

    /// Like [`expire`](Self::expire), but the hold does not apply to entries
    /// for which `kept` is true (the manager keeps the messages this node
    /// originated until their own TTL): only their TTL ends them.
    pub fn expire_keeping(
        &mut self,
        now_ms: u64,
        kept: &dyn Fn(&MessageId) -> bool,
    ) -> Vec<MessageId> {
        let mut gone = Vec::new();
        let max_hold = self.config.max_hold_ms;
        self.entries.retain_mut(|e| {
            let since = *e.held_since_ms.get_or_insert(now_ms);
            let held_out = now_ms.saturating_sub(since) >= max_hold && !kept(&e.message.id);
            let expired = e.message.is_expired(now_ms) || held_out;
            if expired {
                gone.push(e.message.id);
            }
            !expired
        });
        if !gone.is_empty() {
            self.generation = self.generation.wrapping_add(1);
        }
        self.bytes = self
            .entries
            .iter()
            .map(|e| accounted_size(&e.message))
            .sum();
        gone
    }

    /// The file image of the buffer (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.bytes);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            let enc = encode_message(&e.message);
            out.push(priority_code(e.priority));
            // A version 1 entry not yet through an expiry pass: stored as "now or later".
            out.extend_from_slice(&e.held_since_ms.unwrap_or(u64::MAX).to_be_bytes());
            out.extend_from_slice(&(enc.len() as u32).to_be_bytes());
            out.extend_from_slice(&enc);
        }
        out
    }

    /// Decodes a file image strictly under `config`'s bounds.
    pub fn from_bytes(bytes: &[u8], config: BufferConfig) -> Result<Self, MeshError> {
        let corrupt = |reason: &str| MeshError::CorruptBuffer {
            reason: reason.to_owned(),
        };
        let mut r = bytes;
        let mut take = |n: usize, what: &str| -> Result<&[u8], MeshError> {
            if r.len() < n {
                return Err(corrupt(&format!("truncated {what}")));
            }
            let (head, rest) = r.split_at(n);
            r = rest;
            Ok(head)
        };
        if take(8, "magic")? != MAGIC {
            return Err(corrupt("wrong magic"));
        }
        let version = take(1, "version")?[0];
        if version != VERSION && version != 1 {
            return Err(corrupt(&format!("unsupported version {version}")));
        }
        let count = u32_of(take(4, "count")?) as usize;
        if count > config.max_messages {
            return Err(corrupt(&format!(
                "{count} messages, more than the bound {}",
                config.max_messages
            )));
        }
        let max_len = config.max_bytes.saturating_add(4096);
        let limits = Limits {
            max_len: max_len as u64,
            ..Limits::DEFAULT
        };
        let mut buf = StoreBuffer::new(config);
        for _ in 0..count {
            let code = take(1, "priority")?[0];
            let priority = priority_from(code)
                .ok_or_else(|| corrupt(&format!("unknown priority code {code}")))?;
            let held_since_ms = if version == 1 {
                None
            } else {
                let mut t = [0_u8; 8];
                t.copy_from_slice(take(8, "time")?);
                Some(u64::from_be_bytes(t)).filter(|&t| t != u64::MAX)
            };
            let len = u32_of(take(4, "length")?) as usize;
            if len > max_len {
                return Err(corrupt(&format!("message of {len} bytes over the bound")));
            }
            let message = decode_message_with(take(len, "message")?, &limits)?;
            let size = accounted_size(&message);
            if buf.contains(&message.id) {
                return Err(corrupt("duplicate message id"));
            }
            buf.bytes += size;
            if buf.bytes > config.max_bytes {
                return Err(corrupt("messages exceed the byte bound"));
            }
            buf.entries.push(Entry {
                message,
                priority,
                held_since_ms,
            });
        }
        if !r.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(buf)
    }

    /// Writes the buffer to `path` atomically: a temporary file beside it is
    /// written and fsynced, then renamed over `path`, then the directory is fsynced.
    pub fn save(&self, path: &Path) -> Result<(), MeshError> {
        write_atomic(path, &self.to_bytes())
    }

    /// Reads a buffer saved by [`save`](Self::save); a missing file is an empty buffer.
    /// The file is read only up to its bound (a larger file is corrupt).
    pub fn load(path: &Path, config: BufferConfig) -> Result<Self, MeshError> {
        let bound = config
            .max_messages
            .saturating_mul(4096 + 13)
            .saturating_add(config.max_bytes.saturating_mul(2))
            .saturating_add(13);
        match read_bounded(path, bound)? {
            None => Ok(StoreBuffer::new(config)),
            Some(bytes) => StoreBuffer::from_bytes(&bytes, config),
        }
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, directory fsync).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MeshError> {
    let io = |p: &Path| {
        let p: PathBuf = p.to_owned();
        move |source| MeshError::Io { path: p, source }
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Directory fsync makes the rename durable; not every platform allows opening a directory.
        if let Ok(d) = fs::File::open(dir) {
            d.sync_all().map_err(io(dir))?;
        }
    }
    Ok(())
}

/// Reads at most `bound` bytes of `path`: `None` when it does not exist, a
/// [`MeshError::CorruptBuffer`] when it is larger.
pub(crate) fn read_bounded(path: &Path, bound: usize) -> Result<Option<Vec<u8>>, MeshError> {
    let io = |source| MeshError::Io {
        path: path.to_owned(),
        source,
    };
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(f, (bound as u64).saturating_add(1)),
        &mut bytes,
    )
    .map_err(io)?;
    if bytes.len() > bound {
        return Err(MeshError::CorruptBuffer {
            reason: format!("file larger than the bound of {bound} bytes"),
        });
    }
    Ok(Some(bytes))
}

fn u32_of(b: &[u8]) -> u32 {
    let mut a = [0_u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_types::Signature;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn peer(n: u8) -> PeerId {
        PeerId::from_digest([n; 32])
    }

    fn msg(n: u8, to: u8, ts: u64, ttl_secs: u32, payload: usize) -> NetworkMessage {
        NetworkMessage {
            id: MessageId([n; 16]),
            message_type: "t".into(),
            payload: vec![n; payload],
            sender: peer(0),
            recipient: Some(peer(to)),
            timestamp_ms: ts,
            ttl_secs,
            hop_count: 0,
            max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
            signature: Signature([n; 64]),
        }
    }

    fn neutral(_: &PeerId) -> f64 {
        0.5
    }

    /// Global bounds only: the per-destination bounds and the hold are lifted.
    fn cfg(max_messages: usize, max_bytes: usize) -> BufferConfig {
        BufferConfig {
            max_messages,
            max_bytes,
            per_destination_messages: usize::MAX,
            per_destination_bytes: usize::MAX,
            max_hold_ms: u64::MAX,
        }
    }

    fn msg_id(id: u16, to: u8, payload: usize) -> NetworkMessage {
        let mut m = msg(0, to, 0, 7 * 24 * 3600, payload);
        m.id = MessageId([0; 16]);
        m.id.0[..2].copy_from_slice(&id.to_be_bytes());
        m.id.0[2] = to;
        m
    }

    #[test]
    fn per_destination_count_refuses_the_101st_and_leaves_other_peers_room() {
        let mut b = StoreBuffer::new(BufferConfig::default());
        for i in 0..100 {
            b.insert(msg_id(i, 9, 10), Priority::Normal, 0, &neutral)
                .unwrap();
        }
        let extra = msg_id(100, 9, 10);
        match b.insert(extra.clone(), Priority::Normal, 0, &neutral) {
            Err(MeshError::DestinationFull {
                id,
                peer: p,
                max_messages,
                max_bytes,
            }) => {
                assert_eq!((id, p), (extra.id, peer(9)));
                assert_eq!((max_messages, max_bytes), (100, 1024 * 1024));
            }
            other => panic!("expected DestinationFull, got {other:?}"),
        }
        assert!(!b.contains(&extra.id));
        assert_eq!(b.len(), 100);
        // Another recipient, and broadcasts, are not limited by peer 9's share.
        b.insert(msg_id(0, 8, 10), Priority::Normal, 0, &neutral)
            .unwrap();
        let mut bc = msg_id(1, 7, 10);
        bc.recipient = None;
        b.insert(bc, Priority::Normal, 0, &neutral).unwrap();
        assert_eq!(b.len(), 102);
    }

    #[test]
    fn per_destination_bytes_bound_a_peer_below_the_global_bound() {
        let mut b = StoreBuffer::new(BufferConfig::default());
        let big = 300 * 1024;
        for i in 0..3 {
            b.insert(msg_id(i, 9, big), Priority::Normal, 0, &neutral)
                .unwrap();
        }
        assert!(matches!(
            b.insert(msg_id(3, 9, big), Priority::Normal, 0, &neutral),
            Err(MeshError::DestinationFull { .. })
        ));
        b.insert(msg_id(3, 8, big), Priority::Normal, 0, &neutral)
            .unwrap();
    }

    #[test]
    fn a_more_urgent_newcomer_evicts_only_from_its_own_destination() {
        let config = BufferConfig {
            per_destination_messages: 2,
            ..BufferConfig::default()
        };
        let mut b = StoreBuffer::new(config);
        b.insert(msg_id(1, 8, 0), Priority::Bulk, 0, &neutral)
            .unwrap();
        b.insert(msg_id(1, 9, 0), Priority::Low, 0, &neutral)
            .unwrap();
        b.insert(msg_id(2, 9, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        let ev = b
            .insert(msg_id(3, 9, 0), Priority::Critical, 0, &neutral)
            .unwrap();
        assert_eq!(ev, vec![msg_id(1, 9, 0).id], "peer 9's least urgent goes");
        assert!(
            b.contains(&msg_id(1, 8, 0).id),
            "peer 8's bulk message stays"
        );
        // Entries the owner keeps are not evicted for an equal priority.
        let keep = msg_id(2, 9, 0).id;
        assert!(matches!(
            b.insert_keeping(msg_id(4, 9, 0), Priority::Normal, 0, &neutral, &|id| *id
                == keep),
            Err(MeshError::DestinationFull { .. })
        ));
    }

    #[test]
    fn a_message_is_held_at_most_72_hours_by_this_nodes_clock() {
        let mut b = StoreBuffer::new(BufferConfig::default());
        // The sender's clock says the message is from long ago: that does not shorten the hold.
        let mut m = msg_id(1, 9, 4);
        m.timestamp_ms = 10_000 * DAY_MS;
        let t0 = 20_000 * DAY_MS;
        m.timestamp_ms = t0 - 2 * DAY_MS; // TTL (7 days) still has 5 days to run at t0
        b.insert(m.clone(), Priority::Normal, t0, &neutral).unwrap();
        assert!(b.expire(t0 + 72 * 3600 * 1000 - 1).is_empty());
        assert_eq!(b.expire(t0 + 72 * 3600 * 1000), vec![m.id]);
        assert!(b.is_empty());
    }

    #[test]
    fn hold_times_survive_a_save_and_version_1_files_still_load() {
        let mut b = StoreBuffer::new(BufferConfig::default());
        let t0 = 1_000 * DAY_MS;
        let m = msg_id(1, 9, 4);
        let mut m = m;
        m.timestamp_ms = t0;
        b.insert(m.clone(), Priority::High, t0, &neutral).unwrap();
        let back = StoreBuffer::from_bytes(&b.to_bytes(), BufferConfig::default()).unwrap();
        assert_eq!(back.entries(), b.entries());
        assert_eq!(back.entries()[0].held_since_ms, Some(t0));
        // A version 1 image: no stored time; the hold counts from the first expiry pass.
        let enc = encode_message(&m);
        let mut v1 = MAGIC.to_vec();
        v1.push(1);
        v1.extend_from_slice(&1_u32.to_be_bytes());
        v1.push(priority_code(Priority::High));
        v1.extend_from_slice(&(enc.len() as u32).to_be_bytes());
        v1.extend_from_slice(&enc);
        let mut old = StoreBuffer::from_bytes(&v1, BufferConfig::default()).unwrap();
        assert_eq!(old.entries()[0].held_since_ms, None);
        assert!(old.expire(t0 + DAY_MS).is_empty());
        assert!(
            old.expire(t0 + 3 * DAY_MS).is_empty(),
            "held since t0 + 1 day"
        );
        assert_eq!(old.expire(t0 + 4 * DAY_MS), vec![m.id]);
    }

    #[test]
    fn generation_changes_with_every_change_and_only_then() {
        let mut b = StoreBuffer::new(cfg(10, usize::MAX));
        let g0 = b.generation();
        b.insert(msg(1, 9, 0, 100, 4), Priority::Normal, 0, &neutral)
            .unwrap();
        b.insert(msg(2, 8, 0, 1, 4), Priority::Normal, 0, &neutral)
            .unwrap();
        let g1 = b.generation();
        assert_ne!(g1, g0);
        // Nothing held changes: the generation stays.
        assert!(!b.remove(&MessageId([7; 16])));
        assert!(b.take_for(&peer(5)).is_empty());
        assert!(b.expire(500).is_empty());
        assert_eq!(b.generation(), g1);
        // Each change moves it.
        assert_eq!(b.expire(5_000).len(), 1);
        let g2 = b.generation();
        assert_ne!(g2, g1);
        assert_eq!(b.take_for(&peer(9)).len(), 1);
        let g3 = b.generation();
        assert_ne!(g3, g2);
        b.insert(msg(3, 9, 0, 100, 4), Priority::Normal, 0, &neutral)
            .unwrap();
        let g4 = b.generation();
        assert_ne!(g4, g3);
        assert!(b.remove(&MessageId([3; 16])));
        assert_ne!(b.generation(), g4);
    }

    #[test]
    fn summary_counts_messages_per_recipient() {
        let mut b = StoreBuffer::new(cfg(10, usize::MAX));
        b.insert(msg(1, 9, 0, 100, 4), Priority::Normal, 0, &neutral)
            .unwrap();
        b.insert(msg(2, 8, 0, 100, 4), Priority::Normal, 0, &neutral)
            .unwrap();
        b.insert(msg(3, 8, 0, 100, 4), Priority::Normal, 0, &neutral)
            .unwrap();
        let s = b.summary();
        assert_eq!(s.messages, 3);
        assert_eq!(s.bytes, b.bytes());
        assert_eq!(s.config.max_messages, 10);
        assert_eq!(
            s.by_destination,
            vec![(Some(peer(8)), 2), (Some(peer(9)), 1)]
        );
    }

    #[test]
    fn defaults_are_the_seed_figures() {
        let c = BufferConfig::default();
        assert_eq!((c.max_messages, c.max_bytes), (1000, 10 * 1024 * 1024));
        assert_eq!(
            (
                c.per_destination_messages,
                c.per_destination_bytes,
                c.max_hold_ms
            ),
            (100, 1024 * 1024, 72 * 3600 * 1000)
        );
    }

    #[test]
    fn eviction_lowest_priority_first() {
        let mut b = StoreBuffer::new(cfg(2, usize::MAX));
        b.insert(msg(1, 9, 0, 100, 0), Priority::Bulk, 0, &neutral)
            .unwrap();
        b.insert(msg(2, 9, 0, 100, 0), Priority::Critical, 0, &neutral)
            .unwrap();
        let ev = b
            .insert(msg(3, 9, 0, 100, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        assert_eq!(ev, vec![MessageId([1; 16])]);
        // A newcomer that ranks lowest is refused and evicts nobody.
        let r = b.insert(msg(4, 9, 0, 100, 0), Priority::Low, 0, &neutral);
        assert!(matches!(
            r,
            Err(MeshError::BufferFull {
                max_messages: 2,
                ..
            })
        ));
        assert_eq!(b.len(), 2);
        assert!(b.contains(&MessageId([2; 16])) && b.contains(&MessageId([3; 16])));
    }

    #[test]
    fn kept_entries_are_never_evicted_for_an_equal_priority_newcomer() {
        let kept_ids = [MessageId([1; 16]), MessageId([2; 16]), MessageId([5; 16])];
        let kept = |id: &MessageId| kept_ids.contains(id);
        let mut b = StoreBuffer::new(cfg(3, usize::MAX));
        // A relayed copy (not kept), and two kept messages with shorter TTLs.
        b.insert_keeping(msg(3, 9, 0, 100, 0), Priority::Normal, 0, &neutral, &kept)
            .unwrap();
        b.insert_keeping(msg(1, 9, 0, 10, 0), Priority::Normal, 0, &neutral, &kept)
            .unwrap();
        b.insert_keeping(msg(2, 9, 0, 10, 0), Priority::Normal, 0, &neutral, &kept)
            .unwrap();
        // A kept newcomer evicts the relayed copy, not the kept messages that
        // rank lower by TTL.
        let ev = b
            .insert_keeping(msg(5, 9, 0, 500, 0), Priority::Normal, 0, &neutral, &kept)
            .unwrap();
        assert_eq!(ev, vec![MessageId([3; 16])]);
        // Full of kept messages: the next one is refused with the bounds named,
        // and nothing held moves.
        let before = b.entries().to_vec();
        let r = b.insert_keeping(msg(6, 9, 0, 900, 0), Priority::Normal, 0, &neutral, &kept);
        match r {
            Err(e @ MeshError::BufferFull { .. }) => {
                let text = e.to_string();
                assert!(text.contains("3 messages"), "{text}");
            }
            other => panic!("expected BufferFull, got {other:?}"),
        }
        let r = b.insert_keeping(msg(7, 9, 0, 900, 0), Priority::Low, 0, &neutral, &kept);
        assert!(matches!(r, Err(MeshError::BufferFull { .. })));
        assert_eq!(b.entries(), &before[..]);
        // Only a strictly more urgent newcomer may take a kept message's place,
        // and the evicted id is returned to be reported.
        let ev = b
            .insert_keeping(msg(8, 9, 0, 900, 0), Priority::High, 0, &neutral, &kept)
            .unwrap();
        assert_eq!(ev.len(), 1);
        assert!(kept(&ev[0]));
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn eviction_then_shortest_remaining_ttl() {
        let mut b = StoreBuffer::new(cfg(2, usize::MAX));
        b.insert(msg(1, 9, 0, 1_000, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        b.insert(msg(2, 9, 0, 10, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        let ev = b
            .insert(msg(3, 9, 0, 500, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        assert_eq!(ev, vec![MessageId([2; 16])]);
    }

    #[test]
    fn eviction_then_lowest_recipient_reputation() {
        let rep = |p: &PeerId| if *p == peer(8) { 0.2 } else { 0.9 };
        let mut b = StoreBuffer::new(cfg(2, usize::MAX));
        b.insert(msg(1, 8, 0, 100, 0), Priority::Normal, 0, &rep)
            .unwrap();
        b.insert(msg(2, 9, 0, 100, 0), Priority::Normal, 0, &rep)
            .unwrap();
        let ev = b
            .insert(msg(3, 9, 0, 100, 0), Priority::Normal, 0, &rep)
            .unwrap();
        assert_eq!(ev, vec![MessageId([1; 16])]);
    }

    #[test]
    fn byte_bound_evicts_as_many_as_needed() {
        let unit = accounted_size(&msg(1, 9, 0, 100, 100));
        let mut b = StoreBuffer::new(cfg(100, unit * 3));
        for n in 1..=3 {
            b.insert(msg(n, 9, 0, 100, 100), Priority::Low, 0, &neutral)
                .unwrap();
        }
        assert_eq!(b.bytes(), unit * 3);
        // Twice the size: two Low messages must go.
        let ev = b
            .insert(msg(4, 9, 0, 100, 100 + unit), Priority::High, 0, &neutral)
            .unwrap();
        assert_eq!(ev.len(), 2);
        assert!(b.bytes() <= unit * 3);
        let too_big = msg(5, 9, 0, 100, unit * 3);
        assert!(matches!(
            b.insert(too_big, Priority::Critical, 0, &neutral),
            Err(MeshError::TooLargeForBuffer { .. })
        ));
    }

    #[test]
    fn count_bound_holds_at_default() {
        let mut b = StoreBuffer::new(BufferConfig::default());
        for n in 0..1100_u32 {
            // Spread over 20 recipients, so the per-destination bound (100) is not the one met.
            let mut m = msg(0, (n % 20) as u8 + 1, 0, 100, 0);
            m.id = MessageId::new_v4([
                (n % 256) as u8,
                (n / 256) as u8,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                1,
            ]);
            let _ = b.insert(m, Priority::Normal, 0, &neutral);
            assert!(b.len() <= DEFAULT_MAX_MESSAGES);
        }
        assert_eq!(b.len(), DEFAULT_MAX_MESSAGES);
    }

    #[test]
    fn expiry_and_hops() {
        let mut b = StoreBuffer::new(BufferConfig::default());
        b.insert(
            msg(1, 9, 0, 7 * 24 * 3600, 0),
            Priority::Normal,
            0,
            &neutral,
        )
        .unwrap();
        b.insert(msg(2, 9, 0, 3600, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        assert_eq!(b.expire(3_599_999), Vec::<MessageId>::new());
        assert_eq!(b.expire(3_600_000), vec![MessageId([2; 16])]);
        assert_eq!(b.expire(7 * DAY_MS), vec![MessageId([1; 16])]);
        assert!(b.is_empty() && b.bytes() == 0);
        assert!(matches!(
            b.insert(msg(3, 9, 0, 1, 0), Priority::Normal, 1_000, &neutral),
            Err(MeshError::Expired(_))
        ));
        let mut m = msg(4, 9, 0, 100, 0);
        m.hop_count = m.max_hops;
        assert!(matches!(
            b.insert(m, Priority::Normal, 0, &neutral),
            Err(MeshError::HopsExhausted(_))
        ));
    }

    #[test]
    fn take_for_returns_urgent_then_oldest() {
        let mut b = StoreBuffer::new(BufferConfig::default());
        b.insert(msg(1, 9, 5, 100, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        b.insert(msg(2, 8, 1, 100, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        b.insert(msg(3, 9, 1, 100, 0), Priority::Normal, 0, &neutral)
            .unwrap();
        b.insert(msg(4, 9, 9, 100, 0), Priority::Critical, 0, &neutral)
            .unwrap();
        let ids: Vec<u8> = b
            .take_for(&peer(9))
            .iter()
            .map(|e| e.message.id.0[0])
            .collect();
        assert_eq!(ids, vec![4, 3, 1]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.bytes(), accounted_size(&msg(2, 8, 1, 100, 0)));
        assert!(b.remove(&MessageId([2; 16])));
        assert!(b.is_empty());
    }

    #[test]
    fn persistence_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffer.bin");
        let mut b = StoreBuffer::new(BufferConfig::default());
        b.insert(msg(1, 9, 5, 100, 10), Priority::Bulk, 0, &neutral)
            .unwrap();
        b.insert(msg(2, 8, 1, 100, 0), Priority::Critical, 0, &neutral)
            .unwrap();
        b.save(&path).unwrap();
        let back = StoreBuffer::load(&path, BufferConfig::default()).unwrap();
        assert_eq!(back.entries(), b.entries());
        assert_eq!(back.bytes(), b.bytes());
        let missing = StoreBuffer::load(&dir.path().join("none"), BufferConfig::default()).unwrap();
        assert!(missing.is_empty());
    }

    #[test]
    fn corrupt_files_are_typed_errors() {
        let mut b = StoreBuffer::new(BufferConfig::default());
        b.insert(msg(1, 9, 5, 100, 10), Priority::Bulk, 0, &neutral)
            .unwrap();
        let good = b.to_bytes();
        let c = BufferConfig::default();
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(StoreBuffer::from_bytes(&good[..n], c).is_err(), "{n}");
        }
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(matches!(
            StoreBuffer::from_bytes(&bad, c),
            Err(MeshError::CorruptBuffer { .. })
        ));
        let mut bad = good.clone();
        bad[13] = 9;
        assert!(matches!(
            StoreBuffer::from_bytes(&bad, c),
            Err(MeshError::CorruptBuffer { .. })
        ));
        let mut bad = good.clone();
        bad.push(0);
        assert!(StoreBuffer::from_bytes(&bad, c).is_err());
        // A count over the bound is refused before anything is allocated.
        let mut bad = good.clone();
        bad[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            StoreBuffer::from_bytes(&bad, c),
            Err(MeshError::CorruptBuffer { .. })
        ));
        // A huge length prefix.
        let mut bad = good.clone();
        bad[22..26].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(StoreBuffer::from_bytes(&bad, c).is_err());
        // Garbage message bytes decode to a typed wire error.
        let mut bad = good;
        let last = bad.len() - 1;
        bad[26] = 0xFF;
        bad[last] ^= 0xFF;
        assert!(StoreBuffer::from_bytes(&bad, c).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffer.bin");
        std::fs::write(&path, b"not a buffer").unwrap();
        assert!(StoreBuffer::load(&path, c).is_err());
    }

    proptest::proptest! {
        #[test]
        fn prop_from_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = StoreBuffer::from_bytes(&bytes, BufferConfig::default());
        }

        #[test]
        fn prop_kept_entries_leave_only_for_more_urgent_ones(ops in proptest::collection::vec((0_u8..5, 0_usize..300, 1_u32..100, proptest::bool::ANY), 0..60)) {
            let mut b = StoreBuffer::new(cfg(5, 1500));
            let mut kept_ids: Vec<MessageId> = Vec::new();
            for (i, (p, size, ttl, keep)) in ops.into_iter().enumerate() {
                let mut m = msg(0, 9, 0, ttl, size);
                m.id = MessageId([i as u8; 16]);
                if keep {
                    kept_ids.push(m.id);
                }
                let priority = Priority::ALL[usize::from(p)];
                let before: Vec<Entry> = b.entries().to_vec();
                let kept = |id: &MessageId| kept_ids.contains(id);
                match b.insert_keeping(m, priority, 0, &neutral, &kept) {
                    Ok(evicted) => {
                        // Every entry that left was returned.
                        proptest::prop_assert_eq!(b.len(), before.len() + 1 - evicted.len());
                        for id in evicted {
                            let e = before.iter().find(|e| e.message.id == id).unwrap();
                            proptest::prop_assert!(!kept(&id) || priority_code(priority) < priority_code(e.priority));
                        }
                    }
                    Err(_) => proptest::prop_assert_eq!(b.entries(), &before[..]),
                }
                proptest::prop_assert!(b.len() <= 5 && b.bytes() <= 1500);
            }
        }

        #[test]
        fn prop_bounds_always_hold(ops in proptest::collection::vec((0_u8..5, 0_usize..300, 1_u32..100), 0..60)) {
            let mut b = StoreBuffer::new(cfg(5, 1500));
            for (i, (p, size, ttl)) in ops.into_iter().enumerate() {
                let mut m = msg(0, 9, 0, ttl, size);
                m.id = MessageId([i as u8; 16]);
                let _ = b.insert(m, Priority::ALL[usize::from(p)], 0, &neutral);
                proptest::prop_assert!(b.len() <= 5 && b.bytes() <= 1500);
                let sum: usize = b.entries().iter().map(|e| accounted_size(&e.message)).sum();
                proptest::prop_assert_eq!(sum, b.bytes());
            }
        }
    }
}
