//! One endpoint: its address, weight, requests in flight, and health as the
//! active checks and the passive outlier detection see it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use tokio::time::Instant;

use wasmgate_config::cluster::Outlier;

/// A clock in milliseconds since a cluster-wide origin, cheap to store in
/// atomics.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Milliseconds since the origin (never 0, which means "unset").
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// An endpoint of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// The address dialled (`ip:port`, or `host:port` as configured).
    pub authority: Authority,
    /// The configured `host:port` it came from (for logs and metrics).
    pub origin: Arc<str>,
    /// Relative share of the traffic.
    pub weight: u32,
    /// Its connections: one pool per worker thread (thread-per-core, see
    /// [`crate::workers`]), and the last for threads that are not workers
    /// (the control plane's health checks, or every request when one
    /// runtime serves them all). Each is made when first used.
    pools: Box<[std::sync::OnceLock<Arc<super::pool::ConnPool>>]>,
    active: AtomicUsize,
    /// Set by active health checks; true until a check says otherwise.
    checked_healthy: AtomicBool,
    check_streak: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_connect: AtomicU32,
    /// Clock ms until which it is ejected (0: not ejected).
    ejected_until: AtomicU64,
    ejected_at: AtomicU64,
    ejections: AtomicU32,
}

/// What an outcome did to an endpoint's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed.
    Unchanged,
    /// The endpoint was ejected for this long.
    Ejected(Duration),
}

/// What one try at an endpoint came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection failed after the request was sent.
    Reset,
    /// No answer in time, or the request's own body failed (a client that
    /// stalls or aborts its upload): not evidence against the endpoint.
    Inconclusive,
}

impl Endpoint {
    /// A healthy endpoint.
    pub fn new(authority: Authority, origin: Arc<str>, weight: u32) -> Endpoint {
        Endpoint {
            authority,
            origin,
            weight: weight.max(1),
            pools: (0..=crate::workers::count())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            active: AtomicUsize::new(0),
            checked_healthy: AtomicBool::new(true),
            check_streak: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejected_at: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    /// The connections of this thread's worker (of the thread that is not
    /// a worker, on others): a connection's task runs on the thread that
    /// opened it, so a request never hands work to another thread.
    pub fn pool(&self) -> &Arc<super::pool::ConnPool> {
        let last = self.pools.len() - 1;
        let i = crate::workers::current().map_or(last, |w| w.min(last));
        self.pools[i].get_or_init(Arc::default)
    }

    /// Idle HTTP/1.1 connections to it, per pool (workers in order, then
    /// the one for other threads; 0 for a pool never used).
    pub fn idle_connections(&self) -> Vec<usize> {
        self.pools
            .iter()
            .map(|p| p.get().map_or(0, |p| p.idle()))
            .collect()
    }

    /// Requests in flight to it.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Usable: passing its active checks and not ejected.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        self.checked_healthy.load(Ordering::Relaxed) && !self.is_ejected(now_ms)
    }

    /// Ejected by outlier detection right now.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// Whether active checks currently pass.
    pub fn check_passing(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    /// Records an active check result; returns the new state if it flipped.
    pub fn record_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let healthy = self.checked_healthy.load(Ordering::Relaxed);
        if ok == healthy {
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if healthy {
            unhealthy_threshold
        } else {
            healthy_threshold
        };
        if streak >= needed {
            self.check_streak.store(0, Ordering::Relaxed);
            self.checked_healthy.store(ok, Ordering::Relaxed);
            Some(ok)
        } else {
            None
        }
    }

    /// Records a try's outcome for passive outlier detection. `may_eject`
    /// says whether the cluster's ejection cap leaves room.
    pub fn record_outcome(
        &self,
        outcome: Outcome,
        policy: &Outlier,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Verdict {
        let (counter, threshold, other) = match outcome {
            Outcome::Status(s) if s >= 500 => (
                &self.consecutive_5xx,
                policy.consecutive_5xx,
                Some(&self.consecutive_connect),
            ),
            // A connection that breaks mid-exchange is as much a sign of a
            // dead endpoint as one that cannot be made (Envoy's "gateway
            // failures" count both).
            Outcome::ConnectFailure | Outcome::Reset => (
                &self.consecutive_connect,
                policy.consecutive_connect_failures,
                None,
            ),
            Outcome::Inconclusive => return Verdict::Unchanged,
            Outcome::Status(_) => {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_connect.store(0, Ordering::Relaxed);
                // A run of good answers long after the last ejection forgets it.
                let at = self.ejected_at.load(Ordering::Relaxed);
                if at != 0 && now_ms.saturating_sub(at) > policy.max_ejection.as_millis() as u64 * 2
                {
                    self.ejections.store(0, Ordering::Relaxed);
                    self.ejected_at.store(0, Ordering::Relaxed);
                }
                return Verdict::Unchanged;
            }
        };
        if let Some(other) = other {
            // An answer (even a 5xx) means connecting works.
            other.store(0, Ordering::Relaxed);
        }
        if threshold == 0 {
            return Verdict::Unchanged;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n < threshold || self.is_ejected(now_ms) || !may_eject() {
            return Verdict::Unchanged;
        }
        counter.store(0, Ordering::Relaxed);
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = policy
            .base_ejection
            .saturating_mul(times)
            .min(policy.max_ejection);
        self.ejected_at.store(now_ms, Ordering::Relaxed);
        self.ejected_until
            .store(now_ms + length.as_millis() as u64, Ordering::Relaxed);
        Verdict::Ejected(length)
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Endpoint>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Outlier {
        Outlier {
            consecutive_5xx: 3,
            consecutive_connect_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 100,
        }
    }

    #[test]
    fn ejection_grows_with_each_time_and_is_capped() {
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap(), "a".into(), 1);
        let p = policy();
        let mut now = 1;
        let mut lengths = Vec::new();
        for _ in 0..3 {
            assert_eq!(
                e.record_outcome(Outcome::ConnectFailure, &p, now, || true),
                Verdict::Unchanged
            );
            match e.record_outcome(Outcome::ConnectFailure, &p, now, || true) {
                Verdict::Ejected(d) => lengths.push(d.as_secs()),
                v => panic!("{v:?}"),
            }
            assert!(!e.is_healthy(now));
            now += 30_000;
            assert!(e.is_healthy(now), "readmitted after the ejection");
        }
        assert_eq!(lengths, [10, 20, 25]);
    }

    #[test]
    fn a_good_answer_resets_the_run_and_the_cap_is_respected() {
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap(), "a".into(), 1);
        let p = policy();
        for s in [500, 503, 200, 500, 502] {
            assert_eq!(
                e.record_outcome(Outcome::Status(s), &p, 1, || true),
                Verdict::Unchanged
            );
        }
        assert_eq!(
            e.record_outcome(Outcome::Status(500), &p, 1, || false),
            Verdict::Unchanged,
            "no room to eject"
        );
        assert!(e.is_healthy(1));
        assert!(matches!(
            e.record_outcome(Outcome::Status(500), &p, 1, || true),
            Verdict::Ejected(_)
        ));
        assert!(!e.is_healthy(1));
    }

    #[test]
    fn active_checks_flip_after_their_thresholds() {
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap(), "a".into(), 1);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), Some(false));
        assert!(!e.is_healthy(1));
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(
            e.record_check(false, 2, 3),
            None,
            "a failure breaks the run"
        );
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), Some(true));
    }
}
