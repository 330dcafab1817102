//! Instance pools: reuse filter instances across requests, one request per
//! instance at a time.
//!
//! A pool belongs to one (filter version, route config) pair, so an instance's
//! `init` state always matches the route it serves. An instance goes back to
//! the pool after a successful call and is discarded instead after a failure
//! (trap, CPU budget, memory cap), after `max_uses` calls, or once its linear
//! memory has grown past `recycle_above`. In `fresh` mode every call gets a new
//! instance (the strongest isolation: no state survives a request).
//!
//! Pools are bounded: at most `size` instances exist per pool (idle or in
//! use). When all are busy, a call waits up to `acquire_timeout`, then fails
//! with [`FilterFailure::PoolExhausted`] rather than queueing without bound.
//! The gateway checks at load that the pools' sizes fit the engine's pooling
//! allocator, so instantiation never fails for lack of slots.
//!
//! The hot path takes no lock: a semaphore permit (atomic fast path) and a
//! lock-free queue of idle instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio::sync::Semaphore;

use super::exchange::{Exchange, FilterCarry, RequestOutcome, ResponseOutcome};
use super::{FilterFailure, FilterInstance, FilterModule};
use wasmgate_metrics::{FilterLabels, FilterOutcomeLabels, Metrics};

/// Metric handles of one pool, created once so a call records with atomics.
struct PoolMetrics {
    metrics: Arc<Metrics>,
    labels: FilterLabels,
    ok: prometheus_client::metrics::counter::Counter,
    duration: prometheus_client::metrics::histogram::Histogram,
    created: prometheus_client::metrics::counter::Counter,
    discarded: prometheus_client::metrics::counter::Counter,
    reaped: prometheus_client::metrics::counter::Counter,
    quarantined: prometheus_client::metrics::counter::Counter,
}

impl PoolMetrics {
    fn new(metrics: Arc<Metrics>, tenant: &str, filter: &str, route: &str) -> PoolMetrics {
        let labels = FilterLabels {
            tenant: tenant.to_owned(),
            filter: filter.to_owned(),
            route: route.to_owned(),
        };
        let outcome = |o: &str| FilterOutcomeLabels {
            tenant: tenant.to_owned(),
            filter: filter.to_owned(),
            route: route.to_owned(),
            outcome: o.to_owned(),
        };
        let ok = metrics.filter_calls.get_or_create(&outcome("ok")).clone();
        let duration = metrics.filter_duration.get_or_create(&labels).clone();
        let created = metrics
            .filter_instances_created
            .get_or_create(&labels)
            .clone();
        let discarded = metrics
            .filter_instances_discarded
            .get_or_create(&labels)
            .clone();
        let reaped = metrics
            .filter_instances_reaped
            .get_or_create(&labels)
            .clone();
        let quarantined = metrics.filter_quarantines.get_or_create(&labels).clone();
        PoolMetrics {
            metrics,
            labels,
            ok,
            duration,
            created,
            discarded,
            reaped,
            quarantined,
        }
    }

    fn record<T>(&self, started: std::time::Instant, result: &Result<T, FilterFailure>) {
        self.duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                self.ok.inc();
            }
            Err(e) => {
                let labels = FilterOutcomeLabels {
                    tenant: self.labels.tenant.clone(),
                    filter: self.labels.filter.clone(),
                    route: self.labels.route.clone(),
                    outcome: e.code().to_owned(),
                };
                self.metrics.filter_calls.get_or_create(&labels).inc();
            }
        }
    }
}

/// How a pool reuses instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Most instances (idle + busy) this pool may hold.
    pub size: usize,
    /// Calls an instance serves before it is replaced (bounds leaks in guests).
    pub max_uses: u64,
    /// An instance whose memory grew past this many bytes is replaced.
    pub recycle_above: u64,
    /// A new instance for every call, never reused.
    pub fresh: bool,
    /// How long a call waits for a free instance before failing.
    pub acquire_timeout: Duration,
    /// Longest a call may take in wall-clock time, host calls included.
    pub wall_limit: Duration,
    /// Failures in a row that quarantine the filter (0: never).
    pub quarantine_after: u32,
}

/// First quarantine; each one in a row doubles it, up to [`QUARANTINE_MAX`].
pub const QUARANTINE_BASE: Duration = Duration::from_secs(1);
/// Longest quarantine.
pub const QUARANTINE_MAX: Duration = Duration::from_secs(60);

/// A pool's run of failures and the quarantine it leads to.
///
/// `quarantine_after` failures in a row bench the filter: calls fail fast
/// until the quarantine ends. Then exactly one call is let through as a
/// trial (others keep failing fast meanwhile): a success ends the run, a
/// failure starts a quarantine twice as long. A busy pool is load, not a
/// fault, and changes nothing.
#[derive(Debug)]
struct Quarantine {
    origin: std::time::Instant,
    streak: std::sync::atomic::AtomicU32,
    /// Milliseconds after `origin` until which calls fail fast.
    until_ms: AtomicU64,
    /// Quarantines since the last success (0: none, the pool is healthy).
    times: std::sync::atomic::AtomicU32,
    /// A trial call is running.
    trial: std::sync::atomic::AtomicBool,
}

/// What a call may do under the quarantine.
enum Gate<'a> {
    /// Run normally.
    Open,
    /// Run as the trial call after a quarantine.
    Trial(TrialSlot<'a>),
    /// Fail fast; the quarantine ends in this long (zero: a trial is running).
    Closed(Duration),
}

impl Quarantine {
    fn new() -> Quarantine {
        Quarantine {
            origin: std::time::Instant::now(),
            streak: Default::default(),
            until_ms: AtomicU64::new(0),
            times: Default::default(),
            trial: Default::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn gate(&self) -> Gate<'_> {
        let until = self.until_ms.load(Ordering::Acquire);
        let now = self.now_ms();
        if until > now {
            return Gate::Closed(Duration::from_millis(until - now));
        }
        if self.times.load(Ordering::Acquire) == 0 {
            return Gate::Open;
        }
        match self
            .trial
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Gate::Trial(TrialSlot {
                quarantine: self,
                held: true,
            }),
            Err(_) => Gate::Closed(Duration::ZERO),
        }
    }

    /// Records a call's result (`None`: neutral, e.g. a busy pool), ending
    /// the trial if the call was one; returns the quarantine started, if any.
    fn record(
        &self,
        failed: Option<bool>,
        trial: Option<TrialSlot<'_>>,
        after: u32,
    ) -> Option<Duration> {
        let started = match failed {
            None => None,
            Some(false) => {
                self.streak.store(0, Ordering::Relaxed);
                self.times.store(0, Ordering::Release);
                None
            }
            Some(true) if after == 0 => None,
            Some(true) if trial.is_some() => Some(self.start()),
            // A call that was already running when a quarantine began.
            Some(true) if self.until_ms.load(Ordering::Acquire) > self.now_ms() => None,
            Some(true) => {
                let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
                (n >= after).then(|| self.start())
            }
        };
        // Dropping the slot ends the trial, after the outcome is in place.
        drop(trial);
        started
    }

    fn start(&self) -> Duration {
        self.streak.store(0, Ordering::Relaxed);
        let times = self.times.fetch_add(1, Ordering::AcqRel).min(16);
        let length = QUARANTINE_BASE
            .saturating_mul(1 << times)
            .min(QUARANTINE_MAX);
        self.until_ms
            .store(self.now_ms() + length.as_millis() as u64, Ordering::Release);
        length
    }
}

/// The trial call's hold on the quarantine, released however the call ends:
/// by [`Quarantine::record`], or by being dropped when the call's future is
/// (the client went away, an h2 stream was reset, `request_timeout` fired).
/// A trial that never finished says nothing about the filter, so the next
/// call becomes the trial instead; without this, every later call would fail
/// fast for good.
struct TrialSlot<'a> {
    quarantine: &'a Quarantine,
    held: bool,
}

impl Drop for TrialSlot<'_> {
    fn drop(&mut self) {
        if self.held {
            self.quarantine.trial.store(false, Ordering::Release);
        }
    }
}

/// Counters of one pool, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Idle instances ready for a call.
    pub idle: usize,
    /// Instances created so far.
    pub created: u64,
    /// Instances discarded so far (failure, uses, memory, fresh mode).
    pub discarded: u64,
    /// Calls that failed because every instance was busy.
    pub exhausted: u64,
}

/// The instances of one filter for one route config.
pub struct InstancePool {
    metrics: PoolMetrics,
    module: Arc<FilterModule>,
    route: Arc<str>,
    config: Arc<str>,
    policy: PoolPolicy,
    /// Shared with the tenant's quota, which may take an idle instance back
    /// to make room for another of the tenant's pools (`filter_instances`),
    /// and drops those idle too long.
    idle: Arc<ArrayQueue<FilterInstance>>,
    /// In an `Arc` so that an instance freed on the reaper thread can give
    /// its permit back from there (`reap::free`).
    permits: Arc<Semaphore>,
    created: AtomicU64,
    discarded: AtomicU64,
    exhausted: AtomicU64,
    quarantine: Quarantine,
}

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("filter", self.module.name())
            .field("route", &self.route)
            .field("policy", &self.policy)
            .field("stats", &self.stats())
            .finish()
    }
}

impl InstancePool {
    /// A pool for `module` configured with `config` on `route`. Creates no
    /// instance until the first call.
    pub fn new(
        module: Arc<FilterModule>,
        route: Arc<str>,
        config: Arc<str>,
        policy: PoolPolicy,
        metrics: Arc<Metrics>,
    ) -> InstancePool {
        let size = policy.size.max(1);
        let idle = Arc::new(ArrayQueue::new(size));
        if let Some(q) = module.quota() {
            q.register_idle(&idle);
        }
        InstancePool {
            metrics: PoolMetrics::new(metrics, module.tenant().as_str(), module.name(), &route),
            module,
            route,
            config,
            policy,
            idle,
            permits: Arc::new(Semaphore::new(size)),
            created: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            quarantine: Quarantine::new(),
        }
    }

    /// Runs one call under the pool's wall-clock budget and quarantine.
    async fn guarded<T>(
        &self,
        call: impl AsyncFnOnce(&mut FilterInstance, tokio::time::Instant) -> Result<T, FilterFailure>,
    ) -> Result<T, FilterFailure> {
        let trial = match self.quarantine.gate() {
            Gate::Open => None,
            Gate::Trial(slot) => Some(slot),
            Gate::Closed(remaining) => return Err(FilterFailure::Quarantined(remaining)),
        };
        let started = std::time::Instant::now();
        let result = self.run(call).await;
        self.metrics.record(started, &result);
        // Running out of instances is load, not a fault of the filter.
        let failed = match &result {
            Ok(_) => Some(false),
            // So is a tenant's quota: it says nothing of the filter.
            Err(FilterFailure::PoolExhausted { .. } | FilterFailure::Quota(_)) => None,
            Err(_) => Some(true),
        };
        if let Some(length) = self
            .quarantine
            .record(failed, trial, self.policy.quarantine_after)
        {
            tracing::error!(
                filter = &**self.module.name(),
                route = &*self.route,
                "filter quarantined for {length:?} after {} failures in a row",
                self.policy.quarantine_after
            );
            self.metrics.quarantined.inc();
        }
        result
    }

    /// Waits for a free slot (up to `acquire_timeout`), then runs `call` on an
    /// instance. One wall-clock budget covers all the guest code the call
    /// needs: creating a new instance (its start functions and `init`,
    /// which may block in a host call where the CPU deadline cannot reach)
    /// and the call itself, which gets the deadline to end by.
    async fn run<T>(
        &self,
        call: impl AsyncFnOnce(&mut FilterInstance, tokio::time::Instant) -> Result<T, FilterFailure>,
    ) -> Result<T, FilterFailure> {
        let permit = self.permit().await?;
        let wall = self.policy.wall_limit;
        let deadline = tokio::time::Instant::now() + wall;
        // An idle instance needs no guest code before the call (and no
        // timer): only a new one runs under the deadline first.
        let idle = if self.policy.fresh {
            None
        } else {
            self.idle.pop()
        };
        let mut lease = match idle {
            Some(instance) => Lease::of(self, instance, permit),
            // Boxed: instantiation's future is larger than the call's, and
            // every call's future would carry (and move) its size inline.
            None => match tokio::time::timeout_at(deadline, Box::pin(self.started(permit))).await {
                Ok(lease) => lease?,
                Err(_) => return Err(FilterFailure::WallClock(wall)),
            },
        };
        // A call cut off mid-way leaves its store in an unknown state: its
        // lease is not marked healthy, so the instance is discarded.
        let result = call(lease.instance_mut(), deadline).await;
        lease.finish(result.is_ok());
        result
    }

    /// The filter module.
    pub fn module(&self) -> &Arc<FilterModule> {
        &self.module
    }

    /// The route it serves and the config its instances were `init`ed with.
    pub fn serves(&self) -> (&str, &str) {
        (&self.route, &self.config)
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            idle: self.idle.len(),
            created: self.created.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
        }
    }

    /// Runs `on-request` on an instance from the pool.
    pub async fn on_request(
        &self,
        ex: &mut Exchange,
        carry: &mut FilterCarry,
    ) -> Result<RequestOutcome, FilterFailure> {
        self.guarded(async |i: &mut FilterInstance, deadline| {
            i.on_request(ex, carry, deadline).await
        })
        .await
    }

    /// Samples gauges (idle instances) into the metrics.
    /// `other_idle`: idle instances of another version on the same route
    /// (a canary), which share the gauge.
    pub fn sample_metrics(&self, other_idle: usize) {
        let idle = (self.idle.len() + other_idle) as i64;
        self.metrics
            .metrics
            .filter_instances_idle
            .get_or_create(&self.metrics.labels)
            .set(idle);
    }

    /// Runs `on-response` on an instance from the pool (not necessarily the
    /// one that ran `on-request`: per-request state travels in `carry`).
    pub async fn on_response(
        &self,
        ex: &mut Exchange,
        carry: &mut FilterCarry,
    ) -> Result<ResponseOutcome, FilterFailure> {
        self.guarded(async |i: &mut FilterInstance, deadline| {
            i.on_response(ex, carry, deadline).await
        })
        .await
    }

    /// A slot in the pool: at most `size` calls hold one at a time.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, FilterFailure> {
        if let Ok(p) = self.permits.try_acquire() {
            return Ok(p);
        }
        match tokio::time::timeout(self.policy.acquire_timeout, self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            // The semaphore is never closed; a timeout means every instance
            // stayed busy.
            Ok(Err(_)) | Err(_) => {
                self.exhausted.fetch_add(1, Ordering::Relaxed);
                Err(FilterFailure::PoolExhausted {
                    size: self.policy.size,
                    waited: self.policy.acquire_timeout,
                })
            }
        }
    }

    /// A new instance (instantiated and `init`ed) for the slot `permit`
    /// holds.
    async fn started<'a>(
        &'a self,
        permit: tokio::sync::SemaphorePermit<'a>,
    ) -> Result<Lease<'a>, FilterFailure> {
        let instance = self.module.instantiate(&self.route, &self.config).await;
        self.created.fetch_add(1, Ordering::Relaxed);
        self.metrics.created.inc();
        match instance {
            Ok(i) => Ok(Lease::of(self, i, permit)),
            Err(e) => {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                self.metrics.discarded.inc();
                Err(e)
            }
        }
    }
}

/// An instance borrowed for one call. Returned to the pool when dropped if the
/// call succeeded and the instance is still within its policy; otherwise
/// discarded (its store and pooling slot are freed: a large one on the
/// reaper thread, which gives the permit back once it is).
struct Lease<'a> {
    pool: &'a InstancePool,
    instance: Option<FilterInstance>,
    permit: Option<tokio::sync::SemaphorePermit<'a>>,
    healthy: bool,
}

impl<'a> Lease<'a> {
    fn of(
        pool: &'a InstancePool,
        instance: FilterInstance,
        permit: tokio::sync::SemaphorePermit<'a>,
    ) -> Lease<'a> {
        Lease {
            pool,
            instance: Some(instance),
            permit: Some(permit),
            healthy: false,
        }
    }

    fn instance_mut(&mut self) -> &mut FilterInstance {
        self.instance
            .as_mut()
            .expect("a lease holds its instance until dropped")
    }

    fn finish(&mut self, ok: bool) {
        self.healthy = ok;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(instance) = self.instance.take() else {
            return;
        };
        let policy = &self.pool.policy;
        let keep = self.healthy
            && !policy.fresh
            && instance.uses() < policy.max_uses
            && instance.memory_bytes() <= policy.recycle_above;
        let mut instance = instance;
        instance.idle_since = std::time::Instant::now();
        let dead = if keep {
            self.pool.idle.push(instance).err()
        } else {
            Some(instance)
        };
        if let Some(dead) = dead {
            self.pool.discarded.fetch_add(1, Ordering::Relaxed);
            self.pool.metrics.discarded.inc();
            if dead.memory_bytes() > crate::reap::REAP_ABOVE
                && let Some(permit) = self.permit.take()
            {
                permit.forget();
                crate::reap::free(
                    dead,
                    self.pool.permits.clone(),
                    self.pool.metrics.reaped.clone(),
                );
            }
        }
        // The permit is released after the instance is back in the queue (or
        // freed), so a waiter always finds it.
        drop(self.permit.take());
    }
}

#[cfg(test)]
mod quarantine_tests {
    use super::*;

    fn trial(q: &Quarantine) -> TrialSlot<'_> {
        match q.gate() {
            Gate::Trial(slot) => slot,
            Gate::Open => panic!("expected a trial, the gate is open"),
            Gate::Closed(d) => panic!("expected a trial, the gate is closed for {d:?}"),
        }
    }

    #[test]
    fn one_trial_after_a_quarantine_and_doubling_on_failure() {
        let q = Quarantine::new();
        for _ in 0..2 {
            assert!(matches!(q.gate(), Gate::Open));
            assert_eq!(q.record(Some(true), None, 3), None);
        }
        // A busy pool is neutral: the run goes on.
        assert_eq!(q.record(None, None, 3), None);
        assert_eq!(q.record(Some(true), None, 3), Some(QUARANTINE_BASE));
        assert!(matches!(q.gate(), Gate::Closed(d) if d > Duration::ZERO));
        // A call that was in flight and fails late does not re-arm it.
        assert_eq!(q.record(Some(true), None, 3), None);
        // Expire it by hand.
        q.until_ms.store(0, Ordering::Release);
        let slot = trial(&q);
        assert!(
            matches!(q.gate(), Gate::Closed(d) if d == Duration::ZERO),
            "only one trial at a time"
        );
        assert_eq!(
            q.record(Some(true), Some(slot), 3),
            Some(QUARANTINE_BASE * 2),
            "doubled"
        );
        q.until_ms.store(0, Ordering::Release);
        let slot = trial(&q);
        assert_eq!(q.record(Some(false), Some(slot), 3), None);
        assert!(matches!(q.gate(), Gate::Open), "a good trial ends the run");
    }

    #[test]
    fn a_trial_dropped_unfinished_lets_the_next_call_be_the_trial() {
        let q = Quarantine::new();
        assert_eq!(q.record(Some(true), None, 1), Some(QUARANTINE_BASE));
        q.until_ms.store(0, Ordering::Release);
        let slot = trial(&q);
        assert!(matches!(q.gate(), Gate::Closed(d) if d == Duration::ZERO));
        // The trial's future is dropped mid-call: no outcome is recorded.
        drop(slot);
        let slot = trial(&q);
        assert_eq!(q.record(Some(false), Some(slot), 1), None);
        assert!(matches!(q.gate(), Gate::Open));
    }
}
