//! Walks of one document's version DAG through [`ReconcileStore`].

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_types::ContentId;

use crate::ReplicationError;
use crate::antientropy::frame::Short;
use crate::merkle::{ReconcileStore, short};

/// Positions (in breadth-first order from the heads, heads excluded) of the
/// ancestors a need lists, so the peer finds the common history after a
/// divergence of up to about this many versions without listing all of it.
const TAIL_POSITIONS: [usize; 11] = [0, 1, 2, 3, 5, 9, 17, 33, 65, 129, 257];

/// Every version reachable from a document's heads, with its parents.
#[derive(Debug, Default)]
pub(crate) struct DocDag {
    /// The heads, as read from the store.
    pub(crate) heads: Vec<ContentId>,
    /// Breadth-first order from the heads.
    order: Vec<ContentId>,
    parents: BTreeMap<ContentId, Vec<ContentId>>,
    by_short: BTreeMap<Short, ContentId>,
}

impl DocDag {
    /// Loads the DAG below `heads`; versions the store lacks are skipped.
    /// Fails when it holds more than `max` versions.
    pub(crate) fn load<S: ReconcileStore + ?Sized>(
        store: &S,
        heads: Vec<ContentId>,
        max: usize,
    ) -> Result<DocDag, ReplicationError> {
        let mut dag = DocDag {
            heads,
            ..DocDag::default()
        };
        let mut queue: std::collections::VecDeque<ContentId> = dag.heads.iter().cloned().collect();
        while let Some(cid) = queue.pop_front() {
            if dag.parents.contains_key(&cid) {
                continue;
            }
            let Some(parents) = store.version_parents(&cid)? else {
                continue;
            };
            if dag.order.len() >= max {
                return Err(ReplicationError::TooLarge {
                    what: "document history",
                    size: dag.order.len() + 1,
                    max,
                });
            }
            queue.extend(parents.iter().cloned());
            dag.by_short.insert(short(&cid), cid.clone());
            dag.order.push(cid.clone());
            dag.parents.insert(cid, parents);
        }
        Ok(dag)
    }

    /// The version with this short CID, if the DAG has one.
    pub(crate) fn find(&self, s: &Short) -> Option<&ContentId> {
        self.by_short.get(s)
    }

    /// Short CIDs of the heads, sorted.
    pub(crate) fn short_heads(&self) -> Vec<Short> {
        let mut out: Vec<Short> = self.heads.iter().map(short).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Short CIDs of some ancestors (see [`TAIL_POSITIONS`]), newest first,
    /// and always the oldest one: a document's first version is often where
    /// two replicas' histories part, so a peer that knows nothing newer still
    /// finds a common point and pushes only what lies above it.
    pub(crate) fn tail(&self) -> Vec<Short> {
        let heads: BTreeSet<&ContentId> = self.heads.iter().collect();
        let rest: Vec<&ContentId> = self.order.iter().filter(|c| !heads.contains(c)).collect();
        let mut out: Vec<Short> = TAIL_POSITIONS
            .iter()
            .filter_map(|i| rest.get(*i).map(|c| short(c)))
            .collect();
        if let Some(oldest) = rest.last().map(|c| short(c))
            && !out.contains(&oldest)
        {
            out.push(oldest);
        }
        out
    }

    /// The versions that are not ancestors (inclusive) of `known`, parents
    /// before children.
    pub(crate) fn missing_above(&self, known: &[ContentId]) -> Vec<ContentId> {
        let mut below: BTreeSet<&ContentId> = BTreeSet::new();
        let mut stack: Vec<&ContentId> = known.iter().collect();
        while let Some(c) = stack.pop() {
            if below.insert(c)
                && let Some(ps) = self.parents.get(c)
            {
                stack.extend(ps.iter());
            }
        }
        // Post-order: a version is emitted after all its parents in the set.
        let mut out = Vec::new();
        let mut done: BTreeSet<&ContentId> = BTreeSet::new();
        for start in self.order.iter().rev() {
            if below.contains(start) || done.contains(start) {
                continue;
            }
            let mut stack: Vec<(&ContentId, bool)> = vec![(start, false)];
            while let Some((c, expanded)) = stack.pop() {
                if done.contains(c) || below.contains(c) {
                    continue;
                }
                if expanded {
                    done.insert(c);
                    out.push(c.clone());
                    continue;
                }
                stack.push((c, true));
                if let Some(ps) = self.parents.get(c) {
                    for p in ps {
                        if !done.contains(p) && !below.contains(p) && self.parents.contains_key(p) {
                            stack.push((p, false));
                        }
                    }
                }
            }
        }
        out
    }
}
