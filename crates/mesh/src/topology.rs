//! Topology policy of seed 7.2 as a pure function.
//!
//! - A super-peer is present and trusted (reputation >= 0.3): [`Topology::Star`]
//!   around it (the best-reputed one, ties broken by the Base58 text order of
//!   the peer id, smallest first).
//! - Otherwise, fewer than 20 peers: [`Topology::FullMesh`].
//! - Otherwise: [`Topology::PartialMesh`] with K = 6 below 100 peers, 7 below
//!   500 and 8 from 500 on (the seed's K = 6-8, growing with the network).
//!
//! Falling back: when the star centre leaves, the caller recomputes with the
//! remaining peers and gets a mesh.

use ecomesh_types::PeerId;

use crate::reputation::DEPRIORITIZE_BELOW;

/// Peer count from which the mesh is partial.
pub const FULL_MESH_BELOW: usize = 20;

/// What the node should connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Connect to every peer.
    FullMesh,
    /// Connect to `k` neighbours.
    PartialMesh {
        /// Number of neighbours.
        k: usize,
    },
    /// Connect through the super-peer `center`.
    Star {
        /// The relay every peer connects to.
        center: PeerId,
    },
}

/// A peer as the topology policy sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerView {
    /// The peer.
    pub peer: PeerId,
    /// Its local reputation.
    pub reputation: f64,
    /// True when it announced itself as a super-peer (always-on relay).
    pub super_peer: bool,
}

/// Chooses the topology for the known `peers` (not counting this node).
pub fn choose(peers: &[PeerView]) -> Topology {
    let center = peers
        .iter()
        .filter(|p| p.super_peer && p.reputation >= DEPRIORITIZE_BELOW)
        .min_by(|a, b| {
            b.reputation
                .total_cmp(&a.reputation)
                .then_with(|| a.peer.cmp_text(&b.peer))
        });
    if let Some(c) = center {
        return Topology::Star { center: c.peer };
    }
    let n = peers.len();
    if n < FULL_MESH_BELOW {
        Topology::FullMesh
    } else if n < 100 {
        Topology::PartialMesh { k: 6 }
    } else if n < 500 {
        Topology::PartialMesh { k: 7 }
    } else {
        Topology::PartialMesh { k: 8 }
    }
}

/// The peers to keep connections with under `topology`: everyone for a full
/// mesh, the centre for a star, and for a partial mesh the `k` best-reputed
/// trusted peers (deprioritized ones only when too few trusted remain).
pub fn neighbours(topology: Topology, peers: &[PeerView]) -> Vec<PeerId> {
    match topology {
        Topology::FullMesh => peers.iter().map(|p| p.peer).collect(),
        Topology::Star { center } => vec![center],
        Topology::PartialMesh { k } => {
            let mut sorted: Vec<&PeerView> = peers.iter().collect();
            sorted.sort_by(|a, b| {
                b.reputation
                    .total_cmp(&a.reputation)
                    .then_with(|| a.peer.cmp_text(&b.peer))
            });
            sorted.into_iter().take(k).map(|p| p.peer).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(n: usize) -> Vec<PeerView> {
        (0..n)
            .map(|i| PeerView {
                peer: PeerId::from_digest([
                    (i % 256) as u8,
                    (i / 256) as u8,
                    1,
                    2,
                    3,
                    4,
                    5,
                    6,
                    7,
                    8,
                    9,
                    10,
                    11,
                    12,
                    13,
                    14,
                    15,
                    16,
                    17,
                    18,
                    19,
                    20,
                    21,
                    22,
                    23,
                    24,
                    25,
                    26,
                    27,
                    28,
                    29,
                    30,
                ]),
                reputation: 0.5,
                super_peer: false,
            })
            .collect()
    }

    #[test]
    fn full_mesh_under_20() {
        assert_eq!(choose(&views(0)), Topology::FullMesh);
        assert_eq!(choose(&views(19)), Topology::FullMesh);
        assert_eq!(neighbours(Topology::FullMesh, &views(5)).len(), 5);
    }

    #[test]
    fn partial_mesh_k_6_to_8() {
        assert_eq!(choose(&views(20)), Topology::PartialMesh { k: 6 });
        assert_eq!(choose(&views(99)), Topology::PartialMesh { k: 6 });
        assert_eq!(choose(&views(100)), Topology::PartialMesh { k: 7 });
        assert_eq!(choose(&views(1000)), Topology::PartialMesh { k: 8 });
    }

    #[test]
    fn partial_mesh_prefers_reputation() {
        let mut v = views(30);
        v[29].reputation = 0.9;
        v[0].reputation = 0.05;
        let n = neighbours(Topology::PartialMesh { k: 6 }, &v);
        assert_eq!(n.len(), 6);
        assert_eq!(n[0], v[29].peer);
        assert!(!n.contains(&v[0].peer));
    }

    #[test]
    fn star_with_super_peer_and_fallback_when_it_leaves() {
        let mut v = views(30);
        v[3].super_peer = true;
        let t = choose(&v);
        assert_eq!(t, Topology::Star { center: v[3].peer });
        assert_eq!(neighbours(t, &v), vec![v[3].peer]);
        let center = v.remove(3);
        assert_eq!(choose(&v), Topology::PartialMesh { k: 6 });
        let small: Vec<PeerView> = std::iter::once(center).chain(views(3)).collect();
        assert_eq!(
            choose(&small),
            Topology::Star {
                center: center.peer
            }
        );
        assert_eq!(choose(&small[1..]), Topology::FullMesh);
    }

    #[test]
    fn untrusted_super_peer_is_not_a_center() {
        let mut v = views(5);
        v[0].super_peer = true;
        v[0].reputation = 0.29;
        assert_eq!(choose(&v), Topology::FullMesh);
        v[1].super_peer = true;
        v[1].reputation = 0.8;
        v[2].super_peer = true;
        v[2].reputation = 0.6;
        assert_eq!(choose(&v), Topology::Star { center: v[1].peer });
    }
}
