//! Subscription delivery: writers enqueue, one delivery thread calls listeners.
//!
//! Each subscription has a bounded mailbox. Writers only push into mailboxes
//! (never call listeners), so a slow listener cannot block a writer. Events of
//! one subscription are delivered in commit order and never twice. Every event
//! is a complete snapshot (a document's state, or a query's full result), so
//! when a listener falls more than the mailbox capacity behind, the oldest
//! snapshots it has not received yet are dropped and it still receives the
//! latest state, like a Firestore snapshot listener; `lagged` counts those.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ecomesh_types::{Document, Listener, Query};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a subscription watches.
pub(crate) enum Target {
    Document {
        collection: String,
        id: String,
    },
    Query {
        collection: String,
        query: Query,
        last: Option<Vec<Document>>,
    },
}

/// A pending snapshot for one listener.
pub(crate) enum Event {
    Document(Option<Document>),
    Query(Vec<Document>),
}

enum AnyListener {
    Document(Listener<Option<Document>>),
    Query(Listener<Vec<Document>>),
}

struct Mailbox {
    listener: AnyListener,
    queue: VecDeque<Event>,
    /// True while the delivery thread runs this subscription's listener.
    busy: bool,
}

#[derive(Default)]
struct Shared {
    mailboxes: BTreeMap<u64, Mailbox>,
    /// Subscriptions with pending events, in the order they became ready.
    ready: VecDeque<u64>,
}

/// Registry of subscriptions with their delivery thread.
pub(crate) struct Subscriptions {
    state: Arc<(Mutex<Shared>, Condvar)>,
    /// Targets, guarded by the engine's writer lock in practice.
    targets: Mutex<BTreeMap<u64, Target>>,
    next_id: AtomicU64,
    capacity: usize,
    lagged: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Subscriptions {
    pub(crate) fn new(capacity: usize) -> Self {
        let state: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ecomesh-store-subscriptions".into())
                .spawn(move || deliver_loop(&state, &stop))
                .ok()
        };
        Subscriptions {
            state,
            targets: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            capacity: capacity.max(1),
            lagged: Arc::default(),
            stop,
            thread: Mutex::new(thread),
        }
    }

    /// Snapshots dropped because a listener fell behind.
    pub(crate) fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    pub(crate) fn add_document(
        &self,
        collection: &str,
        id: &str,
        listener: Listener<Option<Document>>,
        initial: Option<Document>,
    ) -> u64 {
        let key = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.targets).insert(
            key,
            Target::Document {
                collection: collection.to_owned(),
                id: id.to_owned(),
            },
        );
        self.insert_mailbox(key, AnyListener::Document(listener));
        self.push(key, Event::Document(initial));
        key
    }

    pub(crate) fn add_query(
        &self,
        collection: &str,
        query: Query,
        listener: Listener<Vec<Document>>,
        initial: Vec<Document>,
    ) -> u64 {
        let key = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.targets).insert(
            key,
            Target::Query {
                collection: collection.to_owned(),
                query,
                last: Some(initial.clone()),
            },
        );
        self.insert_mailbox(key, AnyListener::Query(listener));
        self.push(key, Event::Query(initial));
        key
    }

    fn insert_mailbox(&self, key: u64, listener: AnyListener) {
        let (m, _) = &*self.state;
        lock(m).mailboxes.insert(
            key,
            Mailbox {
                listener,
                queue: VecDeque::new(),
                busy: false,
            },
        );
    }

    /// Removes a subscription; pending events are discarded.
    pub(crate) fn remove(&self, key: u64) {
        lock(&self.targets).remove(&key);
        let (m, _) = &*self.state;
        lock(m).mailboxes.remove(&key);
    }

    /// Runs `f` over every target (to compute new events after a commit).
    pub(crate) fn with_targets<R>(&self, f: impl FnOnce(&mut BTreeMap<u64, Target>) -> R) -> R {
        f(&mut lock(&self.targets))
    }

    /// Queues `event` for subscription `key` and wakes the delivery thread.
    pub(crate) fn push(&self, key: u64, event: Event) {
        let (m, cv) = &*self.state;
        let mut shared = lock(m);
        let Some(mailbox) = shared.mailboxes.get_mut(&key) else {
            return;
        };
        if mailbox.queue.len() >= self.capacity {
            mailbox.queue.pop_front();
            self.lagged.fetch_add(1, Ordering::Relaxed);
        }
        mailbox.queue.push_back(event);
        let idle = !mailbox.busy;
        if idle && !shared.ready.contains(&key) {
            shared.ready.push_back(key);
        }
        cv.notify_one();
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        {
            // Set under the lock: the delivery thread checks `stop` and then waits
            // with the lock held, so a notify sent between the two would be lost
            // and the join below would wait forever.
            let _shared = lock(&self.state.0);
            self.stop.store(true, Ordering::SeqCst);
        }
        self.state.1.notify_all();
        if let Some(handle) = lock(&self.thread).take()
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }
}

fn deliver_loop(state: &(Mutex<Shared>, Condvar), stop: &AtomicBool) {
    let (m, cv) = state;
    loop {
        let (key, event, listener) = {
            let mut shared = lock(m);
            loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(key) = shared.ready.pop_front() {
                    let Some(mailbox) = shared.mailboxes.get_mut(&key) else {
                        continue;
                    };
                    let Some(event) = mailbox.queue.pop_front() else {
                        continue;
                    };
                    mailbox.busy = true;
                    let listener = match &mailbox.listener {
                        AnyListener::Document(l) => AnyListener::Document(l.clone()),
                        AnyListener::Query(l) => AnyListener::Query(l.clone()),
                    };
                    break (key, event, listener);
                }
                shared = cv.wait(shared).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A panicking listener must not kill delivery for everyone else.
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match (&listener, &event) {
                (AnyListener::Document(l), Event::Document(d)) => l(d),
                (AnyListener::Query(l), Event::Query(q)) => l(q),
                _ => {}
            }));
        let mut shared = lock(m);
        if let Some(mailbox) = shared.mailboxes.get_mut(&key) {
            mailbox.busy = false;
            if !mailbox.queue.is_empty() {
                shared.ready.push_back(key);
            }
        }
    }
}
