//! Multi-hop state, sans-io: the routing table (which neighbour delivered a node's
//! frames, with expiry) and the bounded set of frames already seen.

use std::collections::{HashMap, HashSet, VecDeque};

use ecomesh_types::PeerId;

use crate::frame::ShortId;

/// A route to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The neighbour that delivered the node's frames.
    pub via: PeerId,
    /// Hops from us (1 = the neighbour itself).
    pub hops: u8,
    /// When the route expires, ms.
    pub expires: u64,
}

/// A small bounded routing table: at most `capacity` destinations, the oldest-expiring
/// evicted first.
#[derive(Debug)]
pub struct RoutingTable {
    capacity: usize,
    ttl_ms: u64,
    routes: HashMap<ShortId, Route>,
}

impl RoutingTable {
    /// A table of at most `capacity` routes living `ttl_ms` after they were last confirmed.
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        RoutingTable {
            capacity: capacity.max(1),
            ttl_ms,
            routes: HashMap::new(),
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Records that `via` delivered a frame from `dest` that took `hops` hops to reach us;
    /// keeps the shorter of two live routes, the fresher of two equal ones.
    pub fn learn(&mut self, dest: ShortId, via: PeerId, hops: u8, now: u64) {
        let expires = now.saturating_add(self.ttl_ms);
        if let Some(r) = self.routes.get_mut(&dest) {
            if r.expires <= now || hops <= r.hops || r.via == via {
                *r = Route { via, hops, expires };
            }
            return;
        }
        if self.routes.len() >= self.capacity {
            let oldest = self
                .routes
                .iter()
                .min_by_key(|(_, r)| r.expires)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.routes.remove(&k);
            }
        }
        self.routes.insert(dest, Route { via, hops, expires });
    }

    /// The live route to `dest`.
    pub fn lookup(&self, dest: &ShortId, now: u64) -> Option<Route> {
        self.routes.get(dest).copied().filter(|r| r.expires > now)
    }

    /// Forgets every route through `via` (the neighbour is gone).
    pub fn remove_via(&mut self, via: &PeerId) {
        self.routes.retain(|_, r| r.via != *via);
    }

    /// Every live route.
    pub fn routes(&self, now: u64) -> Vec<(ShortId, Route)> {
        self.routes
            .iter()
            .filter(|(_, r)| r.expires > now)
            .map(|(k, r)| (*k, *r))
            .collect()
    }
}

/// A bounded set of recently seen frame keys (oldest forgotten first).
#[derive(Debug)]
pub struct SeenSet<K> {
    capacity: usize,
    set: HashSet<K>,
    order: VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Copy> SeenSet<K> {
    /// A set remembering the last `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        SeenSet {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Inserts `key`; false if it was already there (a duplicate).
    pub fn insert(&mut self, key: K) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// Forgets every key `keep` rejects.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.order.retain(|k| keep(k));
        self.set.retain(|k| keep(k));
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_prefer_short_and_expire() {
        let (a, b) = (PeerId::from_digest([1; 32]), PeerId::from_digest([2; 32]));
        let mut t = RoutingTable::new(2, 100);
        t.learn([9; 4], a, 3, 0);
        t.learn([9; 4], b, 2, 10);
        assert_eq!(t.lookup(&[9; 4], 20).unwrap().via, b);
        t.learn([9; 4], a, 3, 20);
        assert_eq!(t.lookup(&[9; 4], 20).unwrap().via, b);
        assert!(t.lookup(&[9; 4], 110).is_none());
        t.learn([1; 4], a, 1, 0);
        // Full: the route expiring first ([1; 4], at 100) makes room.
        t.learn([2; 4], a, 1, 50);
        assert_eq!(t.len(), 2);
        assert!(t.lookup(&[1; 4], 50).is_none());
        t.remove_via(&a);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(&[9; 4], 50).unwrap().via, b);
    }

    #[test]
    fn seen_set_is_bounded() {
        let mut s = SeenSet::new(3);
        assert!(s.insert(1) && s.insert(2) && s.insert(3));
        assert!(!s.insert(2));
        assert!(s.insert(4));
        assert_eq!(s.len(), 3);
        assert!(s.insert(1), "the oldest was forgotten");
    }
}
