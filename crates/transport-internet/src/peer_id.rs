//! The exact mapping between libp2p peer ids and ecomesh [`PeerId`]s.
//!
//! An ecomesh peer id is SHA-256 of the 32-byte Ed25519 public key (seed 4.2). A libp2p
//! Ed25519 peer id is the identity multihash (code `0x00`) of the protobuf-encoded public
//! key (`08 01 12 20 || key`), so it embeds the key: the ecomesh id is derived from a
//! libp2p id exactly, and the libp2p id is built from the key. Going from an ecomesh id
//! back to a libp2p id needs the key (a hash cannot be inverted), which
//! [`PeerTable`] learns from every libp2p id it sees.

use std::collections::HashMap;

use ecomesh_types::PeerId;
use libp2p::identity::{Keypair, PublicKey, ed25519};
use sha2::{Digest, Sha256};

use crate::error::InternetError;

/// Multihash code of the identity hash, which libp2p uses for keys of 42 bytes or less.
const IDENTITY_MULTIHASH: u64 = 0x00;

/// The libp2p keypair of a 32-byte Ed25519 secret seed (RFC 8032 private key): the same
/// key as `ecomesh_identity::Identity::from_secret_bytes(seed)`.
pub fn keypair_from_seed(seed: &[u8; 32]) -> Result<Keypair, InternetError> {
    // `ed25519_from_bytes` zeroizes the buffer it is given, so hand it a copy.
    let mut copy = *seed;
    Keypair::ed25519_from_bytes(&mut copy).map_err(|e| InternetError::InvalidKey(e.to_string()))
}

/// The libp2p peer id of a 32-byte Ed25519 public key.
pub fn libp2p_peer_id_of_key(key: &[u8; 32]) -> Result<libp2p::PeerId, InternetError> {
    let pk = ed25519::PublicKey::try_from_bytes(key)
        .map_err(|e| InternetError::InvalidKey(e.to_string()))?;
    Ok(libp2p::PeerId::from_public_key(&PublicKey::from(pk)))
}

/// The Ed25519 public key embedded in a libp2p peer id, or `None` when the id is not an
/// identity-multihash of an Ed25519 key (RSA, secp256k1, ECDSA or hashed ids).
pub fn ed25519_key_of(peer: &libp2p::PeerId) -> Option<[u8; 32]> {
    let mh = peer.as_ref();
    if mh.code() != IDENTITY_MULTIHASH {
        return None;
    }
    let pk = PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(ed.to_bytes())
}

/// The ecomesh peer id of an Ed25519 public key: SHA-256 of the 32 bytes.
pub fn ecomesh_peer_id_of_key(key: &[u8; 32]) -> PeerId {
    PeerId::from_digest(Sha256::digest(key).into())
}

/// The ecomesh peer id of a libp2p peer id; [`InternetError::NotEd25519`] for ids that do
/// not embed an Ed25519 key.
pub fn ecomesh_peer_id(peer: &libp2p::PeerId) -> Result<PeerId, InternetError> {
    ed25519_key_of(peer)
        .map(|k| ecomesh_peer_id_of_key(&k))
        .ok_or_else(|| InternetError::NotEd25519(peer.to_base58()))
}

/// Learns ecomesh id → libp2p id pairs from libp2p ids seen (connections, DHT results).
///
/// Bounded: once `capacity` entries are held, learning a new pair evicts an arbitrary
/// one that is not pinned (pinned entries are the connected peers).
#[derive(Debug)]
pub struct PeerTable {
    map: HashMap<PeerId, (libp2p::PeerId, bool)>,
    capacity: usize,
}

impl PeerTable {
    /// An empty table holding at most `capacity` unpinned pairs (at least 1).
    pub fn new(capacity: usize) -> Self {
        PeerTable {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `peer`, returning its ecomesh id; `pin` keeps it from eviction until
    /// [`PeerTable::unpin`].
    pub fn learn(&mut self, peer: &libp2p::PeerId, pin: bool) -> Result<PeerId, InternetError> {
        let id = ecomesh_peer_id(peer)?;
        if !self.map.contains_key(&id) && self.map.len() >= self.capacity {
            let victim = self.map.iter().find(|(_, (_, p))| !p).map(|(k, _)| *k);
            if let Some(v) = victim {
                self.map.remove(&v);
            }
        }
        let entry = self.map.entry(id).or_insert((*peer, false));
        entry.1 |= pin;
        Ok(id)
    }

    /// Lets `id` be evicted again.
    pub fn unpin(&mut self, id: &PeerId) {
        if let Some(e) = self.map.get_mut(id) {
            e.1 = false;
        }
    }

    /// The libp2p id of `id`, if learned.
    pub fn get(&self, id: &PeerId) -> Option<libp2p::PeerId> {
        self.map.get(id).map(|(p, _)| *p)
    }

    /// Number of pairs held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_identity::Identity;
    use proptest::prelude::*;

    #[test]
    fn known_key_gives_known_ids() {
        // RFC 8032 test vector 1: secret 9d61b19d..., public d75a9801...
        let seed: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let public: [u8; 32] = [
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ];
        let kp = keypair_from_seed(&seed).unwrap();
        let lp = kp.public().to_peer_id();
        // Identity multihash: 00 24 | 08 01 12 20 | key.
        let mut expected = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        expected.extend_from_slice(&public);
        assert_eq!(lp.to_bytes(), expected);
        assert_eq!(ed25519_key_of(&lp), Some(public));
        let id = Identity::from_secret_bytes(&seed);
        assert_eq!(id.public_key().to_bytes(), public);
        assert_eq!(ecomesh_peer_id(&lp).unwrap(), id.peer_id());
        assert_eq!(libp2p_peer_id_of_key(&public).unwrap(), lp);
    }

    #[test]
    fn non_ed25519_ids_are_refused() {
        // A sha2-256 multihash peer id (as RSA keys get) embeds no key.
        let mut bytes = vec![0x12, 0x20];
        bytes.extend_from_slice(&[7; 32]);
        let hashed = libp2p::PeerId::from_bytes(&bytes).unwrap();
        assert!(ed25519_key_of(&hashed).is_none());
        assert!(matches!(
            ecomesh_peer_id(&hashed),
            Err(InternetError::NotEd25519(_))
        ));
        // An identity multihash that is not a protobuf Ed25519 key.
        let junk = libp2p::PeerId::from_bytes(&[0x00, 0x03, 1, 2, 3]).unwrap();
        assert!(ed25519_key_of(&junk).is_none());
    }

    #[test]
    fn table_is_bounded_and_keeps_pinned() {
        let mut t = PeerTable::new(2);
        let ids: Vec<libp2p::PeerId> = (0..4u8)
            .map(|i| keypair_from_seed(&[i; 32]).unwrap().public().to_peer_id())
            .collect();
        let first = t.learn(&ids[0], true).unwrap();
        for p in &ids[1..] {
            t.learn(p, false).unwrap();
        }
        assert!(t.len() <= 2);
        assert_eq!(t.get(&first), Some(ids[0]));
        let last = ecomesh_peer_id(&ids[3]).unwrap();
        assert_eq!(t.get(&last), Some(ids[3]));
    }

    proptest! {
        #[test]
        fn prop_mapping_matches_identity(seed in proptest::array::uniform32(any::<u8>())) {
            let id = Identity::from_secret_bytes(&seed);
            let lp = keypair_from_seed(&seed).unwrap().public().to_peer_id();
            prop_assert_eq!(ecomesh_peer_id(&lp).unwrap(), id.peer_id());
            let key = id.public_key().to_bytes();
            prop_assert_eq!(ed25519_key_of(&lp), Some(key));
            prop_assert_eq!(libp2p_peer_id_of_key(&key).unwrap(), lp);
            // Round trip through the text and byte forms.
            let text: libp2p::PeerId = lp.to_base58().parse().unwrap();
            prop_assert_eq!(ecomesh_peer_id(&text).unwrap(), id.peer_id());
            let mut t = PeerTable::new(4);
            let learned = t.learn(&lp, false).unwrap();
            prop_assert_eq!(t.get(&learned), Some(lp));
        }

        #[test]
        fn prop_arbitrary_peer_id_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = libp2p::PeerId::from_bytes(&bytes)
                && let Some(k) = ed25519_key_of(&p)
            {
                prop_assert_eq!(libp2p_peer_id_of_key(&k).unwrap(), p);
            }
        }
    }
}
