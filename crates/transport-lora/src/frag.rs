//! Splitting of sealed units larger than one frame into parts, with hard caps, and
//! bounded reassembly (per sender and globally, with timeouts). Sans-io: time is passed in.
//!
//! Reassembly happens at each hop, before the unit's one tag is checked, so what it holds
//! is unauthenticated: it is bounded per sender (the oldest incomplete unit of a sender
//! gives way to a new one), globally in bytes, and in time, and it ignores parts of units
//! that completed and authenticated recently (a part sent again because its
//! acknowledgement was lost).

use std::collections::{HashMap, VecDeque};

use crate::error::LoraError;
use crate::frame::ShortId;

/// Splits `data` into at most `max_fragments` pieces of at most `capacity` bytes.
pub fn split(data: &[u8], capacity: usize, max_fragments: u8) -> Result<Vec<&[u8]>, LoraError> {
    let capacity = capacity.max(1);
    let n = data.len().div_ceil(capacity).max(1);
    if n > usize::from(max_fragments) {
        return Err(LoraError::TooLarge {
            size: data.len(),
            max: capacity * usize::from(max_fragments),
        });
    }
    if data.is_empty() {
        return Ok(vec![data]);
    }
    Ok(data.chunks(capacity).collect())
}

/// Units completed recently, remembered so late duplicates of their parts are ignored.
const RECENT: usize = 64;

/// Limits of a [`Reassembler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Most fragments per message.
    pub max_fragments: u8,
    /// Largest reassembled message, bytes.
    pub max_message: usize,
    /// Incomplete messages held per origin (a new one evicts that origin's oldest).
    pub per_origin: usize,
    /// Bytes held over all origins.
    pub global_bytes: usize,
    /// An incomplete message is dropped this long after its first fragment, ms.
    pub timeout_ms: u64,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_fragments: 8,
            max_message: 2048,
            per_origin: 4,
            global_bytes: 16 * 2048,
            timeout_ms: 120_000,
        }
    }
}

#[derive(Debug)]
struct Partial {
    count: u8,
    parts: Vec<Option<Vec<u8>>>,
    bytes: usize,
    started: u64,
}

/// Bounded reassembly of fragmented messages keyed by (origin, group).
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    partial: HashMap<(ShortId, u32), Partial>,
    recent: VecDeque<(ShortId, u32)>,
    bytes: usize,
}

impl Reassembler {
    /// An empty reassembler.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            partial: HashMap::new(),
            recent: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Bytes currently held.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Incomplete messages held.
    pub fn held_messages(&self) -> usize {
        self.partial.len()
    }

    /// Drops incomplete messages older than the timeout.
    pub fn expire(&mut self, now: u64) {
        let t = self.limits.timeout_ms;
        let mut freed = 0;
        self.partial.retain(|_, p| {
            let keep = p.started.saturating_add(t) > now;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Marks the message of `(origin, group)` as done (its caller authenticated it), so
    /// fragments of it that arrive late are ignored. A message that failed its check is
    /// not marked: the sender's copies of its fragments may still complete it.
    pub fn finished(&mut self, origin: ShortId, group: u32) {
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((origin, group));
    }

    /// Adds one fragment; returns the whole message once every fragment arrived. A
    /// fragment of a message marked [`finished`](Self::finished) recently is ignored
    /// (`Ok(None)`).
    pub fn push(
        &mut self,
        origin: ShortId,
        group: u32,
        index: u8,
        count: u8,
        data: &[u8],
        now: u64,
    ) -> Result<Option<Vec<u8>>, LoraError> {
        self.expire(now);
        if count == 0 || count > self.limits.max_fragments || index >= count {
            return Err(LoraError::Fragment("bad index or count"));
        }
        let key = (origin, group);
        if self.recent.contains(&key) {
            return Ok(None);
        }
        if !self.partial.contains_key(&key) {
            let from_origin = self.partial.keys().filter(|(o, _)| *o == origin).count();
            if from_origin >= self.limits.per_origin.max(1) {
                let oldest = self
                    .partial
                    .iter()
                    .filter(|((o, _), _)| *o == origin)
                    .min_by_key(|(_, p)| p.started)
                    .map(|(k, _)| *k);
                if let Some(p) = oldest.and_then(|k| self.partial.remove(&k)) {
                    tracing::debug!("incomplete lora unit evicted by a newer one of its sender");
                    self.bytes -= p.bytes;
                }
            }
            self.partial.insert(
                key,
                Partial {
                    count,
                    parts: vec![None; usize::from(count)],
                    bytes: 0,
                    started: now,
                },
            );
        }
        let p = self
            .partial
            .get_mut(&key)
            .ok_or(LoraError::Fragment("lost partial"))?;
        if p.count != count {
            return Err(LoraError::Fragment("fragment count changed"));
        }
        let slot = p
            .parts
            .get_mut(usize::from(index))
            .ok_or(LoraError::Fragment("bad index"))?;
        if slot.is_some() {
            return Ok(None);
        }
        if p.bytes + data.len() > self.limits.max_message {
            self.bytes -= p.bytes;
            self.partial.remove(&key);
            return Err(LoraError::Fragment("message over the reassembly cap"));
        }
        if self.bytes + data.len() > self.limits.global_bytes {
            return Err(LoraError::Fragment("global reassembly budget spent"));
        }
        *slot = Some(data.to_vec());
        p.bytes += data.len();
        self.bytes += data.len();
        if p.parts.iter().all(Option::is_some) {
            let p = self
                .partial
                .remove(&key)
                .ok_or(LoraError::Fragment("lost partial"))?;
            self.bytes -= p.bytes;
            let mut out = Vec::with_capacity(p.bytes);
            for part in p.parts.into_iter().flatten() {
                out.extend_from_slice(&part);
            }
            return Ok(Some(out));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn caps() {
        assert!(split(&[0; 100], 10, 10).is_ok());
        assert!(matches!(
            split(&[0; 101], 10, 10),
            Err(LoraError::TooLarge {
                size: 101,
                max: 100
            })
        ));
        let mut r = Reassembler::new(ReassemblyLimits {
            per_origin: 1,
            max_message: 30,
            global_bytes: 40,
            ..Default::default()
        });
        assert!(r.push([1; 4], 1, 0, 9, b"x", 0).is_err());
        assert!(r.push([1; 4], 1, 2, 2, b"x", 0).is_err());
        assert_eq!(r.push([1; 4], 1, 0, 2, &[0; 20], 0).unwrap(), None);
        // A second incomplete message from the same origin evicts the first.
        assert_eq!(r.push([1; 4], 2, 0, 2, b"x", 0).unwrap(), None);
        assert_eq!((r.held_bytes(), r.held_messages()), (1, 1));
        assert_eq!(
            r.push([1; 4], 2, 1, 2, b"y", 0).unwrap(),
            Some(b"xy".to_vec())
        );
        r.finished([1; 4], 2);
        // A late duplicate of a finished message is ignored.
        assert_eq!(r.push([1; 4], 2, 1, 2, b"y", 0).unwrap(), None);
        assert_eq!(r.held_messages(), 0);
        assert_eq!(r.push([1; 4], 1, 0, 2, &[0; 20], 0).unwrap(), None);
        // Over the message cap: dropped.
        assert!(r.push([1; 4], 1, 1, 2, &[0; 11], 0).is_err());
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.push([2; 4], 1, 0, 2, &[0; 20], 0).unwrap(), None);
        assert_eq!(r.push([3; 4], 1, 0, 2, &[0; 20], 0).unwrap(), None);
        // Global budget of 40 bytes is full.
        assert!(r.push([4; 4], 1, 0, 2, &[0; 1], 0).is_err());
        // Timeout frees everything.
        r.expire(ReassemblyLimits::default().timeout_ms);
        assert_eq!((r.held_bytes(), r.held_messages()), (0, 0));
    }

    proptest! {
        #[test]
        fn prop_split_reassemble_any_order(data in proptest::collection::vec(any::<u8>(), 0..1536), cap in 50usize..220, seed in any::<u64>()) {
            let parts = split(&data, cap, 32).unwrap();
            let n = u8::try_from(parts.len()).unwrap();
            let mut order: Vec<usize> = (0..parts.len()).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() { x ^= x << 13; x ^= x >> 7; x ^= x << 17; order.swap(i, (x % (i as u64 + 1)) as usize); }
            let mut r = Reassembler::new(ReassemblyLimits { max_fragments: 32, max_message: 1536, ..Default::default() });
            let mut out = None;
            for (k, i) in order.iter().enumerate() {
                // Duplicates are ignored.
                if k == 0 && let Some(m) = r.push([9; 4], 3, u8::try_from(*i).unwrap(), n, parts[*i], 5).unwrap() { out = Some(m); }
                if let Some(m) = r.push([9; 4], 3, u8::try_from(*i).unwrap(), n, parts[*i], 5).unwrap() { out = Some(m); }
            }
            prop_assert_eq!(out, Some(data));
            prop_assert_eq!(r.held_bytes(), 0);
        }
    }
}
