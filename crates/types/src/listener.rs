//! Callback registration with unsubscribe-on-drop, shared by transports and stores.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

/// A boxed, `Send` future: the return type of the async methods of this crate's traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A callback that receives events of type `E`.
///
/// It runs on the emitter's thread or task, so it must return quickly; forward
/// into a bounded channel for real work.
pub type Listener<E> = Arc<dyn Fn(&E) + Send + Sync>;

/// Keeps a callback registered; dropping it (or calling [`Subscription::cancel`]) unregisters it.
#[must_use = "dropping a Subscription unsubscribes at once"]
pub struct Subscription {
    cancel: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// A subscription that runs `cancel` once when dropped.
    pub fn new(cancel: impl FnOnce() + Send + Sync + 'static) -> Self {
        Subscription {
            cancel: Some(Box::new(cancel)),
        }
    }

    /// A subscription with nothing to cancel (for sources that will never emit).
    pub fn empty() -> Self {
        Subscription { cancel: None }
    }

    /// Unsubscribes now.
    pub fn cancel(mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("active", &self.cancel.is_some())
            .finish()
    }
}

struct Inner<E> {
    next_id: u64,
    listeners: BTreeMap<u64, Listener<E>>,
}

/// A set of listeners that an event source calls in registration order.
///
/// Emitting does not hold the lock while callbacks run, so a callback may
/// subscribe or drop subscriptions without deadlocking.
pub struct Listeners<E> {
    inner: Arc<Mutex<Inner<E>>>,
}

impl<E> Default for Listeners<E> {
    fn default() -> Self {
        Listeners {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 0,
                listeners: BTreeMap::new(),
            })),
        }
    }
}

impl<E: 'static> fmt::Debug for Listeners<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners")
            .field("count", &self.len())
            .finish()
    }
}

impl<E: 'static> Listeners<E> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `listener` until the returned [`Subscription`] is dropped.
    pub fn subscribe(&self, listener: Listener<E>) -> Subscription {
        let id = {
            let mut inner = lock(&self.inner);
            let id = inner.next_id;
            inner.next_id += 1;
            inner.listeners.insert(id, listener);
            id
        };
        let weak: Weak<Mutex<Inner<E>>> = Arc::downgrade(&self.inner);
        Subscription::new(move || {
            if let Some(inner) = weak.upgrade() {
                lock(&inner).listeners.remove(&id);
            }
        })
    }

    /// Calls every registered listener with `event`, in registration order.
    pub fn emit(&self, event: &E) {
        let snapshot: Vec<Listener<E>> = lock(&self.inner).listeners.values().cloned().collect();
        for listener in snapshot {
            listener(event);
        }
    }

    /// Number of registered listeners.
    pub fn len(&self) -> usize {
        lock(&self.inner).listeners.len()
    }

    /// True when nobody listens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// A listener that panicked while the lock was not held cannot poison it; a
// poisoned lock still holds a consistent map, so recover it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn drop_unsubscribes() {
        let listeners = Listeners::<u32>::new();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let sub = listeners.subscribe(Arc::new(move |v: &u32| {
            s.fetch_add(*v as usize, Ordering::SeqCst);
        }));
        listeners.emit(&2);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        drop(sub);
        listeners.emit(&5);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        assert!(listeners.is_empty());
    }

    #[test]
    fn callback_may_unsubscribe_itself() {
        let listeners = Arc::new(Listeners::<()>::new());
        let slot: Arc<Mutex<Option<Subscription>>> = Arc::new(Mutex::new(None));
        let slot2 = slot.clone();
        let sub = listeners.subscribe(Arc::new(move |_| {
            slot2.lock().unwrap().take();
        }));
        *slot.lock().unwrap() = Some(sub);
        listeners.emit(&());
        assert!(listeners.is_empty());
    }

    #[test]
    fn subscription_outliving_source_is_harmless() {
        let listeners = Listeners::<()>::new();
        let sub = listeners.subscribe(Arc::new(|_| {}));
        drop(listeners);
        drop(sub);
    }
}
