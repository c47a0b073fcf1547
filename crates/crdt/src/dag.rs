//! The version DAG of document history (seed 5.4).

use std::collections::{BTreeMap, BTreeSet};

use crate::Error;

/// One version in a [`VersionDag`]: its id and the ids of its parents.
///
/// Parents are kept sorted and without duplicates; a node with no parent is a root,
/// one with several is a merge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DagNode<Id> {
    id: Id,
    parents: Vec<Id>,
}

impl<Id: Ord + Clone> DagNode<Id> {
    /// Builds a node; `parents` may come in any order.
    ///
    /// Fails with [`Error::Cycle`] when the node lists itself and with
    /// [`Error::InvalidParts`] when a parent repeats.
    pub fn from_parts(id: Id, mut parents: Vec<Id>) -> Result<Self, Error> {
        parents.sort();
        if parents.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::parts("DagNode", "repeated parent"));
        }
        if parents.binary_search(&id).is_ok() {
            return Err(Error::Cycle);
        }
        Ok(DagNode { id, parents })
    }

    /// The version's id.
    pub fn id(&self) -> &Id {
        &self.id
    }

    /// The parents' ids, sorted.
    pub fn parents(&self) -> &[Id] {
        &self.parents
    }

    /// The id and the sorted parents.
    pub fn into_parts(self) -> (Id, Vec<Id>) {
        (self.id, self.parents)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Links<Id> {
    parents: Vec<Id>,
    children: BTreeSet<Id>,
}

/// A Merkle DAG of versions, generic over the id type (a content id in practice,
/// computed by a crate that has a hash).
///
/// Invariant: every node's parents are in the DAG, so it is always closed under
/// ancestry and acyclic (a node can only point at nodes inserted before it).
/// Nodes whose parents are not here yet are refused with [`Error::MissingParent`];
/// the caller holds such orphans until their parents arrive
/// ([`missing_parents`](VersionDag::missing_parents) says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDag<Id: Ord> {
    nodes: BTreeMap<Id, Links<Id>>,
    tips: BTreeSet<Id>,
}

impl<Id: Ord + Clone> Default for VersionDag<Id> {
    fn default() -> Self {
        VersionDag {
            nodes: BTreeMap::new(),
            tips: BTreeSet::new(),
        }
    }
}

impl<Id: Ord + Clone> VersionDag<Id> {
    /// The empty DAG.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a DAG from nodes in any order.
    ///
    /// Fails with [`Error::MissingParent`] when a parent is not among the nodes,
    /// [`Error::Cycle`] when the nodes form a cycle, and [`Error::ConflictingNode`]
    /// when an id comes twice with different parents.
    pub fn from_nodes(nodes: impl IntoIterator<Item = DagNode<Id>>) -> Result<Self, Error> {
        let mut pending: BTreeMap<Id, Vec<Id>> = BTreeMap::new();
        for node in nodes {
            match pending.get(&node.id) {
                Some(existing) if *existing != node.parents => return Err(Error::ConflictingNode),
                Some(_) => {}
                None => {
                    pending.insert(node.id, node.parents);
                }
            }
        }
        if pending.values().flatten().any(|p| !pending.contains_key(p)) {
            return Err(Error::MissingParent);
        }
        let order = topological(&pending, |id| {
            pending.get(id).map(Vec::as_slice).unwrap_or(&[])
        });
        if order.len() != pending.len() {
            return Err(Error::Cycle);
        }
        let mut dag = VersionDag::new();
        for id in order {
            let parents = pending.get(&id).cloned().unwrap_or_default();
            dag.insert(id, parents)?;
        }
        Ok(dag)
    }

    /// Adds the version `id` with `parents` (several for a merge node); returns
    /// `true` if it was new, `false` if the same node was already here.
    ///
    /// Fails, leaving the DAG unchanged, with [`Error::Cycle`] if `id` is among its
    /// parents, [`Error::InvalidParts`] if a parent repeats, [`Error::MissingParent`]
    /// if a parent is not in the DAG, and [`Error::ConflictingNode`] if `id` is
    /// present with other parents.
    pub fn insert(&mut self, id: Id, parents: impl IntoIterator<Item = Id>) -> Result<bool, Error> {
        let node = DagNode::from_parts(id, parents.into_iter().collect())?;
        self.insert_node(node)
    }

    /// [`insert`](VersionDag::insert) for a node built with [`DagNode::from_parts`].
    pub fn insert_node(&mut self, node: DagNode<Id>) -> Result<bool, Error> {
        if let Some(existing) = self.nodes.get(&node.id) {
            return if existing.parents == node.parents {
                Ok(false)
            } else {
                Err(Error::ConflictingNode)
            };
        }
        if node.parents.iter().any(|p| !self.nodes.contains_key(p)) {
            return Err(Error::MissingParent);
        }
        for parent in &node.parents {
            if let Some(links) = self.nodes.get_mut(parent) {
                links.children.insert(node.id.clone());
            }
            self.tips.remove(parent);
        }
        self.tips.insert(node.id.clone());
        self.nodes.insert(
            node.id,
            Links {
                parents: node.parents,
                children: BTreeSet::new(),
            },
        );
        Ok(true)
    }

    /// The ids among `parents` that are not in the DAG (what an orphan waits for).
    pub fn missing_parents<'a>(&self, parents: impl IntoIterator<Item = &'a Id>) -> Vec<Id>
    where
        Id: 'a,
    {
        parents
            .into_iter()
            .filter(|p| !self.nodes.contains_key(*p))
            .cloned()
            .collect()
    }

    /// Whether `id` is in the DAG.
    pub fn contains(&self, id: &Id) -> bool {
        self.nodes.contains_key(id)
    }

    /// The parents of `id`, sorted (None if `id` is not in the DAG).
    pub fn parents(&self, id: &Id) -> Option<&[Id]> {
        self.nodes.get(id).map(|l| l.parents.as_slice())
    }

    /// The children of `id` (None if `id` is not in the DAG).
    pub fn children(&self, id: &Id) -> Option<&BTreeSet<Id>> {
        self.nodes.get(id).map(|l| &l.children)
    }

    /// Number of versions.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the DAG has no version.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The tips (heads): versions that are nobody's parent.
    pub fn tips(&self) -> &BTreeSet<Id> {
        &self.tips
    }

    /// Every node, parents before children (ties by id), so inserting them in this
    /// order into an empty DAG rebuilds this one.
    pub fn nodes(&self) -> Vec<DagNode<Id>> {
        self.to_nodes(self.nodes.keys().cloned().collect())
    }

    /// The strict ancestors of `id` (its parents, their parents...), or
    /// [`Error::UnknownNode`] if `id` is not in the DAG.
    pub fn ancestors(&self, id: &Id) -> Result<BTreeSet<Id>, Error> {
        let links = self.nodes.get(id).ok_or(Error::UnknownNode)?;
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&Id> = links.parents.iter().collect();
        while let Some(next) = stack.pop() {
            if seen.insert(next.clone())
                && let Some(l) = self.nodes.get(next)
            {
                stack.extend(l.parents.iter());
            }
        }
        Ok(seen)
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors
    /// ([`Error::UnknownNode`] if either is not in the DAG).
    pub fn is_ancestor(&self, ancestor: &Id, descendant: &Id) -> Result<bool, Error> {
        if !self.nodes.contains_key(ancestor) {
            return Err(Error::UnknownNode);
        }
        Ok(ancestor == descendant || self.ancestors(descendant)?.contains(ancestor))
    }

    /// The versions we have that a peer whose tips are `remote_tips` lacks, parents
    /// before children: everything that is not one of those tips or their ancestors.
    ///
    /// Remote tips unknown here are ignored (the peer has versions we lack; they
    /// do not tell which of ours it has). Sending these nodes in order and
    /// inserting them on the peer gives it every version we have.
    pub fn missing_since(&self, remote_tips: &[Id]) -> Vec<DagNode<Id>> {
        let mut covered = BTreeSet::new();
        let mut stack: Vec<&Id> = remote_tips.iter().filter(|t| self.contains(t)).collect();
        while let Some(next) = stack.pop() {
            if covered.insert(next.clone())
                && let Some(l) = self.nodes.get(next)
            {
                stack.extend(l.parents.iter());
            }
        }
        let missing = self
            .nodes
            .keys()
            .filter(|id| !covered.contains(*id))
            .cloned()
            .collect();
        self.to_nodes(missing)
    }

    /// The lowest common ancestors of `ids`: versions that are ancestors of (or
    /// equal to) every one of `ids` and have no descendant with that property.
    /// Several when the histories were merged criss-cross; empty when the ids share
    /// no history or `ids` is empty. [`Error::UnknownNode`] if an id is not in the DAG.
    pub fn lowest_common_ancestors(&self, ids: &[Id]) -> Result<BTreeSet<Id>, Error> {
        let mut common: Option<BTreeSet<Id>> = None;
        for id in ids {
            let mut closure = self.ancestors(id)?;
            closure.insert(id.clone());
            common = Some(match common {
                None => closure,
                Some(c) => c.intersection(&closure).cloned().collect(),
            });
        }
        let common = common.unwrap_or_default();
        // `common` is closed under ancestry, so a member is not lowest exactly
        // when it is the parent of another member.
        let not_lowest: BTreeSet<&Id> = common
            .iter()
            .filter_map(|id| self.nodes.get(id))
            .flat_map(|l| l.parents.iter())
            .collect();
        Ok(common
            .iter()
            .filter(|id| !not_lowest.contains(id))
            .cloned()
            .collect())
    }

    /// `subset` as nodes in topological order (ties by id).
    fn to_nodes(&self, subset: BTreeSet<Id>) -> Vec<DagNode<Id>> {
        let parents_of = |id: &Id| {
            self.nodes
                .get(id)
                .map(|l| l.parents.as_slice())
                .unwrap_or(&[])
        };
        let set: BTreeMap<Id, ()> = subset.into_iter().map(|id| (id, ())).collect();
        topological(&set, parents_of)
            .into_iter()
            .map(|id| {
                let parents = parents_of(&id).to_vec();
                DagNode { id, parents }
            })
            .collect()
    }
}

/// Kahn's algorithm over the keys of `set`, counting only parents inside `set`;
/// ready nodes are taken in id order. Leaves out nodes on a cycle.
fn topological<'a, Id: Ord + Clone + 'a, V>(
    set: &BTreeMap<Id, V>,
    parents_of: impl Fn(&Id) -> &'a [Id],
) -> Vec<Id> {
    let mut waiting: BTreeMap<&Id, usize> = BTreeMap::new();
    let mut children: BTreeMap<&Id, Vec<&Id>> = BTreeMap::new();
    for id in set.keys() {
        let inside: Vec<&Id> = parents_of(id)
            .iter()
            .filter(|p| set.contains_key(*p))
            .collect();
        waiting.insert(id, inside.len());
        for p in inside {
            if let Some((key, _)) = set.get_key_value(p) {
                children.entry(key).or_default().push(id);
            }
        }
    }
    let mut ready: BTreeSet<&Id> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| *id)
        .collect();
    let mut order = Vec::with_capacity(set.len());
    while let Some(id) = ready.pop_first() {
        order.push(id.clone());
        for child in children.get(id).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(child) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(child);
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's example: v1 <- v2 <- {v3a, v3b} <- v4.
    fn seed_dag() -> VersionDag<&'static str> {
        let mut dag = VersionDag::new();
        dag.insert("v1", []).unwrap();
        dag.insert("v2", ["v1"]).unwrap();
        dag.insert("v3a", ["v2"]).unwrap();
        dag.insert("v3b", ["v2"]).unwrap();
        dag
    }

    #[test]
    fn branches_and_merge_node() {
        let mut dag = seed_dag();
        assert_eq!(dag.tips(), &BTreeSet::from(["v3a", "v3b"]));
        assert_eq!(
            dag.lowest_common_ancestors(&["v3a", "v3b"]).unwrap(),
            BTreeSet::from(["v2"])
        );
        let tips: Vec<_> = dag.tips().iter().copied().collect();
        assert!(dag.insert("v4", tips).unwrap());
        assert_eq!(dag.tips(), &BTreeSet::from(["v4"]));
        assert_eq!(dag.parents(&"v4").unwrap(), ["v3a", "v3b"]);
        assert_eq!(
            dag.ancestors(&"v4").unwrap(),
            BTreeSet::from(["v1", "v2", "v3a", "v3b"])
        );
        assert!(dag.is_ancestor(&"v1", &"v4").unwrap());
        assert!(!dag.is_ancestor(&"v3a", &"v3b").unwrap());
        assert!(!dag.insert("v4", ["v3b", "v3a"]).unwrap());
    }

    #[test]
    fn insertion_errors_leave_the_dag_unchanged() {
        let mut dag = seed_dag();
        let before = dag.clone();
        assert_eq!(dag.insert("x", ["nope"]), Err(Error::MissingParent));
        assert_eq!(dag.insert("x", ["x"]), Err(Error::Cycle));
        assert_eq!(dag.insert("v2", ["v3a"]), Err(Error::ConflictingNode));
        assert!(matches!(
            dag.insert("x", ["v1", "v1"]),
            Err(Error::InvalidParts { .. })
        ));
        assert_eq!(dag, before);
        assert_eq!(dag.missing_parents(&["v1", "q"]), vec!["q"]);
        assert_eq!(dag.ancestors(&"q"), Err(Error::UnknownNode));
    }

    #[test]
    fn missing_since_is_parents_first() {
        let dag = seed_dag();
        let ids = |nodes: Vec<DagNode<&'static str>>| {
            nodes
                .into_iter()
                .map(|n| n.into_parts().0)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(dag.missing_since(&["v2"])), vec!["v3a", "v3b"]);
        assert_eq!(ids(dag.missing_since(&["v3a"])), vec!["v3b"]);
        assert_eq!(
            ids(dag.missing_since(&["unknown"])),
            vec!["v1", "v2", "v3a", "v3b"]
        );
        assert!(dag.missing_since(&["v3a", "v3b"]).is_empty());
    }

    #[test]
    fn criss_cross_has_two_lowest_common_ancestors() {
        let mut dag = VersionDag::new();
        dag.insert(0, []).unwrap();
        dag.insert(1, [0]).unwrap();
        dag.insert(2, [0]).unwrap();
        dag.insert(3, [1, 2]).unwrap();
        dag.insert(4, [1, 2]).unwrap();
        assert_eq!(
            dag.lowest_common_ancestors(&[3, 4]).unwrap(),
            BTreeSet::from([1, 2])
        );
        assert_eq!(
            dag.lowest_common_ancestors(&[3]).unwrap(),
            BTreeSet::from([3])
        );
        dag.insert(9, []).unwrap();
        assert!(dag.lowest_common_ancestors(&[9, 4]).unwrap().is_empty());
    }

    #[test]
    fn from_nodes_round_trip_and_errors() {
        let mut dag = seed_dag();
        dag.insert("v4", ["v3a", "v3b"]).unwrap();
        let mut nodes = dag.nodes();
        nodes.reverse();
        assert_eq!(VersionDag::from_nodes(nodes).unwrap(), dag);
        let a = DagNode::from_parts("a", vec!["b"]).unwrap();
        let b = DagNode::from_parts("b", vec!["a"]).unwrap();
        assert_eq!(VersionDag::from_nodes([a.clone(), b]), Err(Error::Cycle));
        assert_eq!(
            VersionDag::from_nodes([a.clone()]),
            Err(Error::MissingParent)
        );
        let a2 = DagNode::from_parts("a", vec![]).unwrap();
        assert_eq!(VersionDag::from_nodes([a, a2]), Err(Error::ConflictingNode));
    }
}
