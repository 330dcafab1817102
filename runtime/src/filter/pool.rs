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

use super::{FilterFailure, FilterInstance, FilterModule, wit};
use crate::metrics::{FilterLabels, FilterOutcomeLabels, Metrics};

/// Metric handles of one pool, created once so a call records with atomics.
struct PoolMetrics {
    metrics: Arc<Metrics>,
    labels: FilterLabels,
    ok: prometheus_client::metrics::counter::Counter,
    duration: prometheus_client::metrics::histogram::Histogram,
    created: prometheus_client::metrics::counter::Counter,
    discarded: prometheus_client::metrics::counter::Counter,
    quarantined: prometheus_client::metrics::counter::Counter,
}

impl PoolMetrics {
    fn new(metrics: Arc<Metrics>, filter: &str, route: &str) -> PoolMetrics {
        let labels = FilterLabels {
            filter: filter.to_owned(),
            route: route.to_owned(),
        };
        let outcome = |o: &str| FilterOutcomeLabels {
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
        let quarantined = metrics.filter_quarantines.get_or_create(&labels).clone();
        PoolMetrics {
            metrics,
            labels,
            ok,
            duration,
            created,
            discarded,
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
#[derive(Debug)]
struct Quarantine {
    origin: std::time::Instant,
    streak: std::sync::atomic::AtomicU32,
    /// Milliseconds after `origin` until which calls fail fast.
    until_ms: AtomicU64,
    times: std::sync::atomic::AtomicU32,
}

impl Quarantine {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// `Some(remaining)` while quarantined.
    fn active(&self) -> Option<Duration> {
        let until = self.until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Records a call's result; returns the quarantine started, if any.
    fn record(&self, failed: bool, after: u32) -> Option<Duration> {
        if !failed {
            self.streak.store(0, Ordering::Relaxed);
            self.times.store(0, Ordering::Relaxed);
            return None;
        }
        if after == 0 {
            return None;
        }
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if n < after {
            return None;
        }
        // Benched; the first call after it is a trial, and one more failure
        // benches it again, twice as long.
        self.streak.store(after - 1, Ordering::Relaxed);
        let times = self.times.fetch_add(1, Ordering::Relaxed).min(16);
        let length = QUARANTINE_BASE
            .saturating_mul(1 << times)
            .min(QUARANTINE_MAX);
        self.until_ms
            .store(self.now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        Some(length)
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
    idle: ArrayQueue<FilterInstance>,
    permits: Semaphore,
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
        InstancePool {
            metrics: PoolMetrics::new(metrics, module.name(), &route),
            module,
            route,
            config,
            policy,
            idle: ArrayQueue::new(size),
            permits: Semaphore::new(size),
            created: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            quarantine: Quarantine {
                origin: std::time::Instant::now(),
                streak: Default::default(),
                until_ms: AtomicU64::new(0),
                times: Default::default(),
            },
        }
    }

    /// Runs one call under the pool's wall-clock budget and quarantine.
    async fn guarded<T>(
        &self,
        call: impl AsyncFnOnce(&mut FilterInstance) -> Result<T, FilterFailure>,
    ) -> Result<T, FilterFailure> {
        if let Some(remaining) = self.quarantine.active() {
            return Err(FilterFailure::Quarantined(remaining));
        }
        let started = std::time::Instant::now();
        let result = async {
            let mut lease = self.acquire().await?;
            let wall = self.policy.wall_limit;
            // A call cut off mid-way leaves its store in an unknown state:
            // the lease is not marked healthy, so the instance is discarded.
            let result = match tokio::time::timeout(wall, call(lease.instance_mut())).await {
                Ok(r) => r,
                Err(_) => Err(FilterFailure::WallClock(wall)),
            };
            lease.finish(result.is_ok());
            result
        }
        .await;
        self.metrics.record(started, &result);
        // Running out of instances is load, not a fault of the filter.
        let failed = matches!(&result, Err(f) if !matches!(f, FilterFailure::PoolExhausted { .. }));
        if let Some(length) = self.quarantine.record(failed, self.policy.quarantine_after) {
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

    /// The filter module.
    pub fn module(&self) -> &Arc<FilterModule> {
        &self.module
    }

    /// The pool's policy.
    pub fn policy(&self) -> PoolPolicy {
        self.policy
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
        req: &wit::Request,
    ) -> Result<wit::RequestDecision, FilterFailure> {
        self.guarded(async |i: &mut FilterInstance| i.on_request(req).await)
            .await
    }

    /// Samples gauges (idle instances) into the metrics.
    pub fn sample_metrics(&self) {
        let idle = self.idle.len() as i64;
        self.metrics
            .metrics
            .filter_instances_idle
            .get_or_create(&self.metrics.labels)
            .set(idle);
    }

    /// Runs `on-response` on an instance from the pool (not necessarily the
    /// one that ran `on-request`: per-request state travels in `context`).
    pub async fn on_response(
        &self,
        req: &wit::Request,
        resp: &wit::Response,
        context: Option<&[u8]>,
    ) -> Result<wit::ResponseDecision, FilterFailure> {
        self.guarded(async |i: &mut FilterInstance| i.on_response(req, resp, context).await)
            .await
    }

    async fn acquire(&self) -> Result<Lease<'_>, FilterFailure> {
        let permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout(self.policy.acquire_timeout, self.permits.acquire())
                    .await
                {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed; a timeout means every
                    // instance stayed busy.
                    Ok(Err(_)) | Err(_) => {
                        self.exhausted.fetch_add(1, Ordering::Relaxed);
                        return Err(FilterFailure::PoolExhausted {
                            size: self.policy.size,
                            waited: self.policy.acquire_timeout,
                        });
                    }
                }
            }
        };
        let reused = if self.policy.fresh {
            None
        } else {
            self.idle.pop()
        };
        let instance = match reused {
            Some(i) => i,
            None => {
                let i = self.module.instantiate(&self.route, &self.config).await;
                self.created.fetch_add(1, Ordering::Relaxed);
                self.metrics.created.inc();
                match i {
                    Ok(i) => i,
                    Err(e) => {
                        self.discarded.fetch_add(1, Ordering::Relaxed);
                        self.metrics.discarded.inc();
                        return Err(e);
                    }
                }
            }
        };
        Ok(Lease {
            pool: self,
            instance: Some(instance),
            _permit: permit,
            healthy: false,
        })
    }
}

/// An instance borrowed for one call. Returned to the pool when dropped if the
/// call succeeded and the instance is still within its policy; otherwise
/// discarded (its store and pooling slot are freed).
struct Lease<'a> {
    pool: &'a InstancePool,
    instance: Option<FilterInstance>,
    _permit: tokio::sync::SemaphorePermit<'a>,
    healthy: bool,
}

impl Lease<'_> {
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
        if !keep || self.pool.idle.push(instance).is_err() {
            self.pool.discarded.fetch_add(1, Ordering::Relaxed);
            self.pool.metrics.discarded.inc();
        }
        // The permit is released after the instance is back in the queue, so a
        // waiter always finds it.
    }
}
