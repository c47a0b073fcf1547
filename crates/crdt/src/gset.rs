//! Grow-only set (seed 5.3).

use std::collections::BTreeSet;

use crate::Merge;

/// A set that only grows; merge is union.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GSet<T: Ord> {
    items: BTreeSet<T>,
}

impl<T: Ord> Default for GSet<T> {
    fn default() -> Self {
        GSet {
            items: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Clone> GSet<T> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding `items`. Every set is valid.
    pub fn from_parts(items: BTreeSet<T>) -> Self {
        GSet { items }
    }

    /// The elements, sorted.
    pub fn items(&self) -> &BTreeSet<T> {
        &self.items
    }

    /// The elements, taking ownership.
    pub fn into_parts(self) -> BTreeSet<T> {
        self.items
    }

    /// Adds `item` and returns the delta (the one-element set) to send to other replicas.
    pub fn insert(&mut self, item: T) -> GSet<T> {
        self.items.insert(item.clone());
        GSet {
            items: BTreeSet::from([item]),
        }
    }

    /// Whether `item` was ever added.
    pub fn contains(&self, item: &T) -> bool {
        self.items.contains(item)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing was ever added.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<T: Ord + Clone> Merge for GSet<T> {
    /// Union.
    fn merge(&mut self, other: &Self) {
        if self.items.is_empty() {
            self.items.clone_from(&other.items);
            return;
        }
        self.items.extend(other.items.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_returns_delta_and_merge_is_union() {
        let mut a = GSet::new();
        let d = a.insert(1);
        a.insert(2);
        let mut b = GSet::new();
        b.merge(&d);
        b.insert(3);
        a.merge(&b);
        assert_eq!(a.into_parts(), BTreeSet::from([1, 2, 3]));
        assert!(b.contains(&1) && !b.contains(&2) && b.len() == 2 && !b.is_empty());
    }
}
