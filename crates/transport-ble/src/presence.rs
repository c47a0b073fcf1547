//! Unlinkable presence: the tag a device advertises rotates every [`EPOCH_SECS`] and
//! only holders of a shared [`PresenceKey`] can map it to a peer id.
//!
//! `tag = BLAKE3-keyed(key, "ecomesh ble presence v1" || epoch (u64 BE) || peer id)[..6]`
//! with `epoch = unix seconds / 900`, passed in by the caller (the core reads no
//! clock). BLAKE3 in keyed mode is a PRF: to anyone without the key, the tags of one
//! device in two epochs are as unrelated as the tags of two devices, and no byte of
//! the tag is stable. A holder of the key (linked devices, friends) computes the tags
//! of the peers it knows for the current epoch and its neighbours (clock skew, epoch
//! boundaries) and looks a received tag up ([`PresenceResolver`]).
//!
//! A device with no shared key advertises under a key of its own that it shares with
//! no one: its tags are then resolvable by no one, and peers learn who it is only
//! inside the Noise XX handshake (which encrypts both static keys).
//!
//! The radio's own address must rotate with the tag (BlueZ: `Privacy = device` for
//! resolvable private addresses) or the address links the epochs; the backend sets
//! that and restarts advertising at each epoch.

use std::collections::HashMap;

use ecomesh_types::PeerId;

/// Length of a presence tag: 48 bits (the advertisement has room for 6 bytes).
pub const TAG_LEN: usize = 6;
/// Rotation period: 15 minutes.
pub const EPOCH_SECS: u64 = 15 * 60;
/// Domain separation of the tag hash.
pub const TAG_CONTEXT: &[u8] = b"ecomesh ble presence v1";

/// A presence tag as advertised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresenceTag(pub [u8; TAG_LEN]);

/// The epoch of a wall-clock time in unix milliseconds.
pub fn epoch_of(unix_ms: u64) -> u64 {
    unix_ms / 1000 / EPOCH_SECS
}

/// The unix millisecond at which `epoch` ends (when the next tag is due).
pub fn epoch_end_ms(epoch: u64) -> u64 {
    epoch.saturating_add(1).saturating_mul(EPOCH_SECS * 1000)
}

/// A 32-byte key shared by the devices that may recognise each other.
#[derive(Clone, PartialEq, Eq)]
pub struct PresenceKey([u8; 32]);

impl std::fmt::Debug for PresenceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresenceKey(..)")
    }
}

impl PresenceKey {
    /// A key from its bytes (distributed by device linking or a friend exchange).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PresenceKey(bytes)
    }

    /// A key derived from a shared secret of any length (for example a group secret).
    pub fn derive(secret: &[u8]) -> Self {
        PresenceKey(blake3::derive_key("ecomesh ble presence key v1", secret))
    }

    /// The tag of `peer` in `epoch` under this key.
    pub fn tag(&self, epoch: u64, peer: &PeerId) -> PresenceTag {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(TAG_CONTEXT);
        h.update(&epoch.to_be_bytes());
        h.update(peer.as_bytes());
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        PresenceTag(tag)
    }
}

/// Maps received tags back to known peers, for the keys this device holds.
///
/// Its table covers epochs `e - 1`, `e`, `e + 1` around the epoch of the last
/// [`PresenceResolver::set_epoch`], for every (key, peer) pair: `3 * keys * peers`
/// entries, bounded by [`PresenceResolver::MAX_ENTRIES`] (pairs past it are left out,
/// with a warning).
#[derive(Debug, Default)]
pub struct PresenceResolver {
    keys: Vec<PresenceKey>,
    peers: Vec<PeerId>,
    epoch: Option<u64>,
    table: HashMap<PresenceTag, PeerId>,
}

impl PresenceResolver {
    /// Largest table kept.
    pub const MAX_ENTRIES: usize = 1 << 18;

    /// An empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a shared key.
    pub fn add_key(&mut self, key: PresenceKey) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
            self.rebuild();
        }
    }

    /// Adds a known peer (one whose tags this device should recognise).
    pub fn add_peer(&mut self, peer: PeerId) {
        if !self.peers.contains(&peer) {
            self.peers.push(peer);
            self.rebuild();
        }
    }

    /// Whether `peer` is among the known peers.
    pub fn knows(&self, peer: &PeerId) -> bool {
        self.peers.contains(peer)
    }

    /// Moves the table to `epoch` (cheap when unchanged).
    pub fn set_epoch(&mut self, epoch: u64) {
        if self.epoch != Some(epoch) {
            self.epoch = Some(epoch);
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.table.clear();
        let Some(epoch) = self.epoch else {
            return;
        };
        'fill: for e in [epoch.saturating_sub(1), epoch, epoch.saturating_add(1)] {
            for key in &self.keys {
                for peer in &self.peers {
                    if self.table.len() >= Self::MAX_ENTRIES {
                        tracing::warn!(
                            max = Self::MAX_ENTRIES,
                            "presence table full; some peers will not be recognised"
                        );
                        break 'fill;
                    }
                    self.table.insert(key.tag(e, peer), *peer);
                }
            }
        }
    }

    /// The known peer that advertises `tag` in the current epoch or a neighbouring
    /// one, under one of the held keys.
    pub fn resolve(&self, tag: &PresenceTag) -> Option<PeerId> {
        self.table.get(tag).copied()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use super::*;

    fn peer(i: u32) -> PeerId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        PeerId::from_digest(b)
    }

    #[test]
    fn epochs_are_fifteen_minutes() {
        assert_eq!(epoch_of(0), 0);
        assert_eq!(epoch_of(899_999), 0);
        assert_eq!(epoch_of(900_000), 1);
        assert_eq!(epoch_end_ms(1), 1_800_000);
    }

    #[test]
    fn two_rotations_are_linkable_with_the_key() {
        let key = PresenceKey::derive(b"family");
        let p = peer(7);
        let mut r = PresenceResolver::new();
        r.add_key(key.clone());
        for i in 0..50 {
            r.add_peer(peer(100 + i));
        }
        r.add_peer(p);
        for epoch in [1000, 1001] {
            r.set_epoch(epoch);
            assert_eq!(r.resolve(&key.tag(epoch, &p)), Some(p));
            // A tag of the previous epoch still resolves across the boundary.
            assert_eq!(r.resolve(&key.tag(epoch - 1, &p)), Some(p));
        }
        // Another key's holder (a passive scanner with its own key) maps nothing.
        let stranger = PresenceKey::derive(b"strangers");
        assert_eq!(r.resolve(&stranger.tag(1001, &p)), None);
        // An unknown peer under the right key is not recognised.
        assert_eq!(r.resolve(&key.tag(1001, &peer(9999))), None);
    }

    #[test]
    fn two_rotations_are_unlinkable_without_the_key() {
        let key = PresenceKey::derive(b"family");
        let (peers, epochs) = (200u32, 50u64);
        let mut all = HashSet::new();
        let mut same_peer_distance = 0u64;
        let mut other_peer_distance = 0u64;
        let mut pairs = 0u64;
        let mut ones = [0u64; TAG_LEN * 8];
        for i in 0..peers {
            for e in 0..epochs {
                let t = key.tag(e, &peer(i));
                assert!(all.insert(t), "collision at peer {i} epoch {e}");
                for (bit, count) in ones.iter_mut().enumerate() {
                    *count += u64::from((t.0[bit / 8] >> (bit % 8)) & 1);
                }
                if e > 0 {
                    let prev = key.tag(e - 1, &peer(i));
                    let other = key.tag(e - 1, &peer((i + 1) % peers));
                    assert_ne!(t, prev);
                    same_peer_distance += hamming(&t, &prev);
                    other_peer_distance += hamming(&t, &other);
                    pairs += 1;
                }
            }
        }
        // No stable part: every bit position is set in about half the tags
        // (n = 10000, sd = 50; 5 sd bounds).
        let n = u64::from(peers) * epochs;
        for (bit, &count) in ones.iter().enumerate() {
            assert!(
                count.abs_diff(n / 2) < 250,
                "bit {bit} set in {count} of {n} tags"
            );
        }
        // Consecutive rotations of one peer differ in half their bits on average,
        // exactly as tags of two different peers do (expected 24 of 48; the mean
        // over 9800 pairs has sd 0.035).
        let same = same_peer_distance as f64 / pairs as f64;
        let other = other_peer_distance as f64 / pairs as f64;
        assert!((same - 24.0).abs() < 0.3, "same-peer mean distance {same}");
        assert!(
            (other - 24.0).abs() < 0.3,
            "other-peer mean distance {other}"
        );
    }

    fn hamming(a: &PresenceTag, b: &PresenceTag) -> u64 {
        a.0.iter()
            .zip(b.0)
            .map(|(x, y)| u64::from((x ^ y).count_ones()))
            .sum()
    }

    #[test]
    fn tags_depend_on_key_epoch_and_peer() {
        let k1 = PresenceKey::derive(b"a");
        let k2 = PresenceKey::derive(b"b");
        let t = k1.tag(5, &peer(1));
        assert_eq!(t, k1.tag(5, &peer(1)));
        assert_ne!(t, k2.tag(5, &peer(1)));
        assert_ne!(t, k1.tag(6, &peer(1)));
        assert_ne!(t, k1.tag(5, &peer(2)));
    }
}
