//! Live snapshots: `watch_doc` / `watch_query` streams, and which documents
//! have local writes no peer has acknowledged yet (`has_pending_writes`).
//!
//! A local write is pending from the moment it starts (so the snapshot the
//! write itself fires already says so) until one peer acknowledged its
//! version in the durable sync queue. After every pass of the node, each
//! watch whose last snapshot had pending writes is checked again, and a
//! snapshot with the new metadata is sent when they were acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use ecomesh_replication::queue::{SyncItem, SyncQueue};
use ecomesh_types::{Document, Subscription};
use futures::Stream;
use tokio::sync::mpsc;

use crate::node::lock;

type DocKey = (String, String);

/// A document as a watch sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DocSnapshot {
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
    /// The document, or `None` when it does not exist (or was deleted).
    pub document: Option<Document>,
    /// True while a local write of this document has not been acknowledged
    /// by any peer.
    pub has_pending_writes: bool,
}

/// A query's result as a watch sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuerySnapshot {
    /// The matching documents, in query order.
    pub documents: Vec<Document>,
    /// True while a local write of one of them has not been acknowledged by
    /// any peer.
    pub has_pending_writes: bool,
}

/// The local writes in flight (begun, not yet in the sync queue).
#[derive(Debug, Default)]
pub(crate) struct PendingWrites {
    writing: Mutex<BTreeMap<DocKey, usize>>,
    watches: Mutex<Vec<Weak<dyn Refresh>>>,
}

/// Marks a document as being written until dropped.
pub(crate) struct Writing<'a> {
    owner: &'a PendingWrites,
    keys: Vec<DocKey>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut w = lock(&self.owner.writing);
        for k in &self.keys {
            if let Some(n) = w.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    w.remove(k);
                }
            }
        }
    }
}

impl PendingWrites {
    /// Marks `keys` as being written by this node until the guard drops
    /// (after the write is in the sync queue).
    pub(crate) fn begin(&self, keys: Vec<DocKey>) -> Writing<'_> {
        let mut w = lock(&self.writing);
        for k in &keys {
            *w.entry(k.clone()).or_default() += 1;
        }
        Writing { owner: self, keys }
    }

    /// The documents with a local write no peer acknowledged: in flight, or
    /// in `queue` with no acknowledgement.
    pub(crate) fn unacknowledged(&self, queue: Option<&SyncQueue>) -> BTreeSet<DocKey> {
        let mut out: BTreeSet<DocKey> = lock(&self.writing).keys().cloned().collect();
        let Some(queue) = queue else { return out };
        let mut from = 0;
        loop {
            let page = match queue.pending(from, 256) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "sync queue unreadable");
                    return out;
                }
            };
            for p in page.items.iter().filter(|p| p.acked_by.is_empty()) {
                match &p.item {
                    SyncItem::Replicate { collection, id, .. }
                    | SyncItem::Tombstone { collection, id, .. } => {
                        out.insert((collection.clone(), id.clone()));
                    }
                    _ => {}
                }
            }
            match page.next {
                Some(n) => from = n,
                None => return out,
            }
        }
    }

    fn register(&self, w: Weak<dyn Refresh>) {
        let mut ws = lock(&self.watches);
        ws.retain(|w| w.strong_count() > 0);
        ws.push(w);
    }

    /// Sends a new snapshot on every watch whose pending writes were
    /// acknowledged since its last one.
    pub(crate) fn refresh(&self, queue: Option<&SyncQueue>) {
        let live: Vec<Arc<dyn Refresh>> = {
            let mut ws = lock(&self.watches);
            ws.retain(|w| w.strong_count() > 0);
            ws.iter().filter_map(Weak::upgrade).collect()
        };
        if !live.iter().any(|w| w.had_pending()) {
            return;
        }
        let pending = self.unacknowledged(queue);
        for w in live {
            w.refresh(&pending);
        }
    }
}

/// A watch whose metadata can change without a new snapshot from the store.
trait Refresh: Send + Sync {
    fn had_pending(&self) -> bool;
    fn refresh(&self, pending: &BTreeSet<DocKey>);
}

/// The sending half of a watch: its last snapshot, the channel, and how to
/// tell whether a snapshot has pending writes.
struct Feed<T> {
    last: Mutex<Option<T>>,
    tx: mpsc::UnboundedSender<T>,
}

impl<T: Clone> Feed<T> {
    fn emit(&self, snap: T) {
        *lock(&self.last) = Some(snap.clone());
        // A closed receiver means the watch was dropped; nothing to do.
        let _ = self.tx.send(snap);
    }
}

impl Refresh for Feed<DocSnapshot> {
    fn had_pending(&self) -> bool {
        lock(&self.last)
            .as_ref()
            .is_some_and(|s| s.has_pending_writes)
    }

    fn refresh(&self, pending: &BTreeSet<DocKey>) {
        let next = {
            let last = lock(&self.last);
            match last.as_ref() {
                Some(s)
                    if s.has_pending_writes
                        && !pending.contains(&(s.collection.clone(), s.id.clone())) =>
                {
                    let mut s = s.clone();
                    s.has_pending_writes = false;
                    Some(s)
                }
                _ => None,
            }
        };
        if let Some(s) = next {
            self.emit(s);
        }
    }
}

fn any_pending(docs: &[Document], pending: &BTreeSet<DocKey>) -> bool {
    docs.iter()
        .any(|d| pending.contains(&(d.collection.clone(), d.id.clone())))
}

impl Refresh for Feed<QuerySnapshot> {
    fn had_pending(&self) -> bool {
        lock(&self.last)
            .as_ref()
            .is_some_and(|s| s.has_pending_writes)
    }

    fn refresh(&self, pending: &BTreeSet<DocKey>) {
        let next = {
            let last = lock(&self.last);
            match last.as_ref() {
                Some(s) if s.has_pending_writes && !any_pending(&s.documents, pending) => {
                    let mut s = s.clone();
                    s.has_pending_writes = false;
                    Some(s)
                }
                _ => None,
            }
        };
        if let Some(s) = next {
            self.emit(s);
        }
    }
}

/// A stream of snapshots ([`DocSnapshot`] or [`QuerySnapshot`]): the
/// current one first, then one after every change, and one when pending
/// writes become acknowledged. It never ends on its own; dropping it
/// unsubscribes.
#[must_use = "a watch delivers snapshots only while it is polled"]
pub struct Watch<T> {
    rx: mpsc::UnboundedReceiver<T>,
    _feed: Arc<Feed<T>>,
    _sub: Subscription,
}

impl<T> std::fmt::Debug for Watch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl<T> Stream for Watch<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

impl<T> Unpin for Watch<T> {}

/// How a watch computes the pending-writes flag when the store fires.
pub(crate) type PendingOf = Arc<dyn Fn() -> BTreeSet<DocKey> + Send + Sync>;

/// Watches document `collection`/`id` through `subscribe`.
pub(crate) fn watch_doc(
    writes: &PendingWrites,
    collection: String,
    id: String,
    pending: PendingOf,
    subscribe: impl FnOnce(ecomesh_types::Listener<Option<Document>>) -> crate::Result<Subscription>,
) -> crate::Result<Watch<DocSnapshot>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let feed = Arc::new(Feed {
        last: Mutex::new(None),
        tx,
    });
    let weak = Arc::downgrade(&feed);
    let key = (collection.clone(), id.clone());
    let sub = subscribe(Arc::new(move |doc: &Option<Document>| {
        if let Some(feed) = weak.upgrade() {
            feed.emit(DocSnapshot {
                collection: collection.clone(),
                id: id.clone(),
                document: doc.clone(),
                has_pending_writes: pending().contains(&key),
            });
        }
    }))?;
    let dyn_feed: Arc<dyn Refresh> = feed.clone();
    writes.register(Arc::downgrade(&dyn_feed));
    Ok(Watch {
        rx,
        _feed: feed,
        _sub: sub,
    })
}

/// Watches `query` over a collection through `subscribe`.
pub(crate) fn watch_query(
    writes: &PendingWrites,
    pending: PendingOf,
    subscribe: impl FnOnce(ecomesh_types::Listener<Vec<Document>>) -> crate::Result<Subscription>,
) -> crate::Result<Watch<QuerySnapshot>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let feed = Arc::new(Feed {
        last: Mutex::new(None),
        tx,
    });
    let weak = Arc::downgrade(&feed);
    let sub = subscribe(Arc::new(move |docs: &Vec<Document>| {
        if let Some(feed) = weak.upgrade() {
            let has = any_pending(docs, &pending());
            feed.emit(QuerySnapshot {
                documents: docs.clone(),
                has_pending_writes: has,
            });
        }
    }))?;
    let dyn_feed: Arc<dyn Refresh> = feed.clone();
    writes.register(Arc::downgrade(&dyn_feed));
    Ok(Watch {
        rx,
        _feed: feed,
        _sub: sub,
    })
}
