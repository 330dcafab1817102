//! Request coalescing (the cache lock of Pingora, nginx's
//! `proxy_cache_lock`): of the concurrent misses for one key, the first
//! goes upstream and the others wait for it, up to `lock_timeout`, then
//! look again. A key whose answer turned out not to be storable is
//! remembered for `lock_bypass_for`: its misses go upstream at once, side
//! by side, rather than queueing behind one another for nothing.
//!
//! The same lock makes `stale-while-revalidate` run exactly one refresh:
//! only the request that takes it starts one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

use super::Key;

enum State {
    /// One request is fetching; waiters watch for the sender to go.
    Fetching(watch::Receiver<()>),
    /// Not storable when last fetched: bypass the lock until then.
    Uncacheable(Instant),
}

/// The lock table.
pub(super) struct Locks {
    map: DashMap<Arc<Key>, State>,
    bypass_for: Duration,
    acquired: AtomicU64,
}

/// What a miss gets from the lock table.
pub(super) enum Acquired {
    /// It fetches; the others wait until the guard goes.
    Leader(LockGuard),
    /// Another request fetches: wait for this to change (or close).
    Wait(watch::Receiver<()>),
    /// The key is not worth waiting for.
    Pass,
}

impl Locks {
    pub(super) fn new(bypass_for: Duration) -> Locks {
        Locks {
            map: DashMap::new(),
            bypass_for,
            acquired: AtomicU64::new(0),
        }
    }

    pub(super) fn acquire(self: &Arc<Self>, key: &Arc<Key>) -> Acquired {
        use dashmap::mapref::entry::Entry;
        // Now and then, forget the uncacheable keys whose time is up.
        if self.acquired.fetch_add(1, Relaxed) % 1024 == 1023 {
            let now = Instant::now();
            self.map
                .retain(|_, s| !matches!(s, State::Uncacheable(until) if *until <= now));
        }
        match self.map.entry(key.clone()) {
            Entry::Occupied(mut e) => match e.get() {
                State::Fetching(rx) => Acquired::Wait(rx.clone()),
                State::Uncacheable(until) if Instant::now() < *until => Acquired::Pass,
                State::Uncacheable(_) => {
                    let (tx, rx) = watch::channel(());
                    e.insert(State::Fetching(rx));
                    Acquired::Leader(self.guard(key, tx))
                }
            },
            Entry::Vacant(e) => {
                let (tx, rx) = watch::channel(());
                e.insert(State::Fetching(rx));
                Acquired::Leader(self.guard(key, tx))
            }
        }
    }

    fn guard(self: &Arc<Self>, key: &Arc<Key>, tx: watch::Sender<()>) -> LockGuard {
        LockGuard {
            locks: self.clone(),
            key: key.clone(),
            tx: Some(tx),
            uncacheable: false,
        }
    }

    /// Keys held or remembered (for tests and the report).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Held by the one request fetching a key; dropping it wakes the waiters.
pub struct LockGuard {
    locks: Arc<Locks>,
    key: Arc<Key>,
    tx: Option<watch::Sender<()>>,
    uncacheable: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The answer was not storable: later misses skip the lock for a while.
    pub(super) fn uncacheable(&mut self) {
        self.uncacheable = true;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let ours = |state: &State| match state {
            State::Fetching(rx) => rx.same_channel(&tx.subscribe()),
            State::Uncacheable(_) => false,
        };
        if self.uncacheable {
            if let Some(mut state) = self.locks.map.get_mut(&self.key)
                && ours(&state)
            {
                *state = State::Uncacheable(Instant::now() + self.locks.bypass_for);
            }
        } else {
            self.locks.map.remove_if(&self.key, |_, state| ours(state));
        }
        // The sender goes last: a waiter woken looks the key up again and
        // finds what the leader stored.
        drop(tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Arc<Key> {
        Arc::new(Key {
            tenant: Arc::from("t"),
            route: Arc::from("r"),
            cluster: Arc::from("c"),
            scheme: "http",
            host: "h".into(),
            path_and_query: path.into(),
            extra: String::new(),
        })
    }

    #[tokio::test]
    async fn one_leader_the_rest_wait_until_it_is_done() {
        let locks = Arc::new(Locks::new(Duration::from_secs(60)));
        let k = key("/a");
        let Acquired::Leader(guard) = locks.acquire(&k) else {
            panic!("the first is the leader")
        };
        let Acquired::Wait(mut rx) = locks.acquire(&k) else {
            panic!("the second waits")
        };
        assert!(matches!(locks.acquire(&key("/b")), Acquired::Leader(_)));
        drop(guard);
        assert!(rx.changed().await.is_err(), "woken by the leader's end");
        assert!(matches!(locks.acquire(&k), Acquired::Leader(_)));
        assert_eq!(locks.len(), 0, "nothing is left behind");
    }

    #[tokio::test]
    async fn an_uncacheable_key_is_passed_for_a_while() {
        let locks = Arc::new(Locks::new(Duration::from_secs(60)));
        let k = key("/a");
        let Acquired::Leader(mut guard) = locks.acquire(&k) else {
            panic!()
        };
        guard.uncacheable();
        drop(guard);
        assert!(matches!(locks.acquire(&k), Acquired::Pass));
        let locks = Arc::new(Locks::new(Duration::ZERO));
        let Acquired::Leader(mut guard) = locks.acquire(&k) else {
            panic!()
        };
        guard.uncacheable();
        drop(guard);
        assert!(
            matches!(locks.acquire(&k), Acquired::Leader(_)),
            "once the time is up, misses coalesce again"
        );
    }
}
