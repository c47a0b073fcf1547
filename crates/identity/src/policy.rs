//! Who may finish a handshake (seed 8.3: allowlist, blocklist, open).

use std::collections::BTreeSet;

use ecomesh_types::PeerId;

/// The access control of seed 8.3, consulted by [`crate::auth`] and [`crate::noise`]
/// handshakes as soon as the peer's identity is proven and before the handshake completes.
///
/// Our own peer id is always refused (see [`crate::Error::SelfConnection`]), whatever the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessPolicy {
    /// Accept any authenticated peer: the default for public networks.
    #[default]
    Open,
    /// Accept only these peers: private family networks.
    Allowlist(BTreeSet<PeerId>),
    /// Accept any authenticated peer except these: blocking malicious peers.
    Blocklist(BTreeSet<PeerId>),
}

impl AccessPolicy {
    /// An allowlist of the given peers.
    pub fn allow_only(peers: impl IntoIterator<Item = PeerId>) -> Self {
        AccessPolicy::Allowlist(peers.into_iter().collect())
    }

    /// A blocklist of the given peers.
    pub fn block(peers: impl IntoIterator<Item = PeerId>) -> Self {
        AccessPolicy::Blocklist(peers.into_iter().collect())
    }

    /// Whether an authenticated `peer` may connect.
    pub fn allows(&self, peer: &PeerId) -> bool {
        match self {
            AccessPolicy::Open => true,
            AccessPolicy::Allowlist(set) => set.contains(peer),
            AccessPolicy::Blocklist(set) => !set.contains(peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let a = PeerId::from_digest([1; 32]);
        let b = PeerId::from_digest([2; 32]);
        assert!(AccessPolicy::Open.allows(&a));
        let allow = AccessPolicy::allow_only([a]);
        assert!(allow.allows(&a) && !allow.allows(&b));
        let block = AccessPolicy::block([a]);
        assert!(!block.allows(&a) && block.allows(&b));
    }
}
