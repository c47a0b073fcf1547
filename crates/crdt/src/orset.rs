//! Observed-remove set (seed 5.3).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use ecomesh_types::HlcTimestamp;

use crate::{Error, Merge};

/// The unique tag of one add operation.
///
/// A timestamp from the adding replica's [`Hlc`](crate::Hlc) is unique across
/// all replicas (it carries the peer id) and never reused, which is all a tag needs.
pub type Tag = HlcTimestamp;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct TagSets {
    live: BTreeSet<Tag>,
    removed: BTreeSet<Tag>,
}

impl TagSets {
    fn merge(&mut self, other: &TagSets) {
        self.removed.extend(other.removed.iter().copied());
        for tag in &other.live {
            if !self.removed.contains(tag) {
                self.live.insert(*tag);
            }
        }
        if !other.removed.is_empty() {
            let removed = &self.removed;
            self.live.retain(|tag| !removed.contains(tag));
        }
    }
}

/// A set whose elements can be added and removed concurrently.
///
/// Every add carries a unique [`Tag`]; a remove tombstones the tags of the element
/// that this replica has observed. An element is present while it has a tag that
/// is not tombstoned, so an add concurrent with a remove survives it ("add wins").
///
/// Per element the state is two disjoint tag sets: live tags and removed tags
/// (tombstones). Merge is the union of the tombstones, and the union of the live
/// tags minus all tombstones. Tombstones are kept forever (no garbage collection).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrSet<T: Ord> {
    entries: BTreeMap<T, TagSets>,
}

impl<T: Ord> Default for OrSet<T> {
    fn default() -> Self {
        OrSet {
            entries: BTreeMap::new(),
        }
    }
}

impl<T: Ord + Clone> OrSet<T> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from `(element, live tags, removed tags)` triples in any order.
    ///
    /// Fails with [`Error::InvalidParts`] when an element repeats, when both tag
    /// sets of an element are empty, or when a tag is both live and removed.
    pub fn from_parts(
        entries: impl IntoIterator<Item = (T, BTreeSet<Tag>, BTreeSet<Tag>)>,
    ) -> Result<Self, Error> {
        let mut map = BTreeMap::new();
        for (item, live, removed) in entries {
            if live.is_empty() && removed.is_empty() {
                return Err(Error::parts("OrSet", "element without tags"));
            }
            if !live.is_disjoint(&removed) {
                return Err(Error::parts("OrSet", "tag both live and removed"));
            }
            match map.entry(item) {
                Entry::Occupied(_) => return Err(Error::parts("OrSet", "repeated element")),
                Entry::Vacant(v) => {
                    v.insert(TagSets { live, removed });
                }
            }
        }
        Ok(OrSet { entries: map })
    }

    /// Every element with tags, present or not, as `(element, live tags, removed tags)`,
    /// sorted by element. This is the whole state: `from_parts` rebuilds it.
    pub fn entries(&self) -> impl Iterator<Item = (&T, &BTreeSet<Tag>, &BTreeSet<Tag>)> {
        self.entries.iter().map(|(k, t)| (k, &t.live, &t.removed))
    }

    /// The whole state as owned triples; see [`entries`](OrSet::entries).
    pub fn into_parts(self) -> Vec<(T, BTreeSet<Tag>, BTreeSet<Tag>)> {
        self.entries
            .into_iter()
            .map(|(k, t)| (k, t.live, t.removed))
            .collect()
    }

    /// Adds `item` under `tag` and returns the delta to send to other replicas.
    ///
    /// `tag` must never have been used before for `item` (a fresh HLC timestamp is
    /// fine); re-adding under a tag that was already removed changes nothing and
    /// returns an empty delta.
    pub fn add(&mut self, item: T, tag: Tag) -> OrSet<T> {
        let delta = self.add_delta(item, tag);
        self.merge(&delta);
        delta
    }

    /// Removes `item` as observed here: tombstones every live tag of it and returns
    /// the delta. Adds this replica has not seen are not affected. Removing an
    /// absent element returns an empty delta.
    pub fn remove(&mut self, item: &T) -> OrSet<T> {
        let delta = self.remove_delta(item);
        self.merge(&delta);
        delta
    }

    /// Removes every present element as observed here and returns the delta.
    pub fn clear(&mut self) -> OrSet<T> {
        let delta = self.clear_delta();
        self.merge(&delta);
        delta
    }

    /// The delta of [`add`](OrSet::add), without applying it.
    pub(crate) fn add_delta(&self, item: T, tag: Tag) -> OrSet<T> {
        let mut delta = OrSet::new();
        if self
            .entries
            .get(&item)
            .is_some_and(|t| t.removed.contains(&tag))
        {
            return delta;
        }
        delta.entries.insert(
            item,
            TagSets {
                live: BTreeSet::from([tag]),
                removed: BTreeSet::new(),
            },
        );
        delta
    }

    /// The delta of [`remove`](OrSet::remove), without applying it.
    pub(crate) fn remove_delta(&self, item: &T) -> OrSet<T> {
        let mut delta = OrSet::new();
        if let Some(tags) = self.entries.get(item)
            && !tags.live.is_empty()
        {
            delta.entries.insert(
                item.clone(),
                TagSets {
                    live: BTreeSet::new(),
                    removed: tags.live.clone(),
                },
            );
        }
        delta
    }

    /// The delta of [`clear`](OrSet::clear), without applying it.
    pub(crate) fn clear_delta(&self) -> OrSet<T> {
        let entries = self
            .entries
            .iter()
            .filter(|(_, t)| !t.live.is_empty())
            .map(|(k, t)| {
                (
                    k.clone(),
                    TagSets {
                        live: BTreeSet::new(),
                        removed: t.live.clone(),
                    },
                )
            })
            .collect();
        OrSet { entries }
    }

    /// Whether `item` is present.
    pub fn contains(&self, item: &T) -> bool {
        self.entries.get(item).is_some_and(|t| !t.live.is_empty())
    }

    /// The present elements, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries
            .iter()
            .filter(|(_, t)| !t.live.is_empty())
            .map(|(k, _)| k)
    }

    /// Number of present elements (walks the state).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when no element is present.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// True when the state holds no tags at all (not even tombstones).
    pub fn is_bottom(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<T: Ord + Clone> Merge for OrSet<T> {
    /// Unions tombstones and live tags; a tag removed on either side stays removed.
    fn merge(&mut self, other: &Self) {
        for (item, tags) in &other.entries {
            match self.entries.get_mut(item) {
                Some(mine) => mine.merge(tags),
                None => {
                    self.entries.insert(item.clone(), tags.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_types::PeerId;

    fn tag(ms: u64, p: u8) -> Tag {
        HlcTimestamp::new(ms, 0, PeerId::from_digest([p; 32]))
    }

    #[test]
    fn add_wins_over_concurrent_remove() {
        let mut a = OrSet::new();
        a.add("x", tag(1, 1));
        let mut b = a.clone();
        let rm = a.remove(&"x");
        assert!(!a.contains(&"x"));
        let add = b.add("x", tag(2, 2));
        a.merge(&add);
        b.merge(&rm);
        assert!(a.contains(&"x") && b.contains(&"x"));
        assert_eq!(a, b);
    }

    #[test]
    fn remove_before_add_arrives_still_removes_it() {
        let mut a = OrSet::new();
        let add = a.add(5, tag(1, 1));
        let rm = a.remove(&5);
        let mut b = OrSet::new();
        b.merge(&rm);
        b.merge(&add);
        assert!(!b.contains(&5));
        assert_eq!(a, b);
        assert!(a.is_empty() && !a.is_bottom());
        assert!(a.add(5, tag(1, 1)).is_bottom());
    }

    #[test]
    fn clear_and_parts_round_trip() {
        let mut a = OrSet::new();
        a.add(1, tag(1, 1));
        a.add(2, tag(2, 1));
        a.add(3, tag(3, 1));
        a.remove(&2);
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(a.len(), 2);
        let rebuilt = OrSet::from_parts(a.clone().into_parts()).unwrap();
        assert_eq!(rebuilt, a);
        let delta = a.clear();
        assert!(a.is_empty());
        let mut b = rebuilt;
        b.merge(&delta);
        assert_eq!(a, b);
    }

    #[test]
    fn bad_parts_are_rejected() {
        let t = BTreeSet::from([tag(1, 1)]);
        assert!(OrSet::from_parts([(1, BTreeSet::new(), BTreeSet::new())]).is_err());
        assert!(OrSet::from_parts([(1, t.clone(), t.clone())]).is_err());
        assert!(
            OrSet::from_parts([(1, t.clone(), BTreeSet::new()), (1, t, BTreeSet::new())]).is_err()
        );
    }
}
