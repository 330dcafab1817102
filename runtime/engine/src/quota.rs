//! Tenant quotas at run time, and the CPU meter that makes isolation in
//! time possible.
//!
//! One [`TenantQuota`] per tenant, kept in [`HostServices`](crate::services::HostServices)
//! (`tenant_quota`) so that everything a tenant's filters do (instances,
//! memory, `kv`, `rate-limit`, outbound calls, CPU) and its requests (in
//! flight, per second) are counted against one object. Limits live in
//! atomics, so a reload changes them in place without losing what is in use.
//! The operator's own scope has none.
//!
//! The running slots (`filter_concurrency`) are counted here and taken by
//! [`metered`](crate::meter::metered), which runs every guest call.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use wasmgate_config::quota::QUOTA_KEYS;
use wasmgate_config::{QuotaSettings, TenantId};

/// A pool's idle instances.
pub(crate) type IdleQueue = crossbeam_queue::ArrayQueue<crate::FilterInstance>;

/// Which quota refused something; its name is the `quota` label. In the
/// order of [`QUOTA_KEYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    ConcurrentRequests,
    RequestsPerSecond,
    FilterCpuPerRequest,
    FilterCpuPerSecond,
    FilterMemory,
    FilterInstances,
    KvBytes,
    RateLimitKeys,
    OutboundPerSecond,
}

impl Quota {
    /// Every quota, in the order of [`TenantQuota::refusals`].
    pub const ALL: [Quota; 9] = [
        Quota::ConcurrentRequests,
        Quota::RequestsPerSecond,
        Quota::FilterCpuPerRequest,
        Quota::FilterCpuPerSecond,
        Quota::FilterMemory,
        Quota::FilterInstances,
        Quota::KvBytes,
        Quota::RateLimitKeys,
        Quota::OutboundPerSecond,
    ];

    /// Its key in `[tenants.quotas]`, and its metric label.
    pub fn name(self) -> &'static str {
        QUOTA_KEYS[self as usize]
    }

    /// The status a request refused by it gets: 429 for the rates a client
    /// controls (send fewer), 503 for capacity the tenant has used up.
    pub fn status(self) -> u16 {
        match self {
            Quota::RequestsPerSecond => 429,
            _ => 503,
        }
    }
}

/// A request or call a tenant's quota refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRefusal {
    /// Which quota.
    pub quota: Quota,
    /// When trying again can succeed, if that can be known.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for QuotaRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the tenant's {} quota is used up", self.quota.name())?;
        if let Some(d) = self.retry_after {
            write!(f, " (try again in {d:.1?})")?;
        }
        Ok(())
    }
}

impl std::error::Error for QuotaRefusal {}

impl QuotaRefusal {
    fn new(quota: Quota, retry_after: Option<Duration>) -> QuotaRefusal {
        QuotaRefusal { quota, retry_after }
    }

    /// `Retry-After` in whole seconds, rounded up, at least one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1))
    }
}

/// A token bucket refilled continuously: `rate` tokens per second, at most
/// `depth`. Tokens are f64 so CPU nanoseconds and requests share the code.
#[derive(Debug)]
struct Bucket {
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(depth: f64) -> Bucket {
        Bucket {
            state: Mutex::new((depth, Instant::now())),
        }
    }

    fn refill(state: &mut (f64, Instant), rate: f64, depth: f64) {
        let now = Instant::now();
        state.0 = (state.0 + now.duration_since(state.1).as_secs_f64() * rate).min(depth);
        state.1 = now;
    }

    /// Takes `cost` if the balance covers it; otherwise how long until it
    /// would.
    fn take(&self, cost: f64, rate: f64, depth: f64) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::refill(&mut s, rate, depth);
        if s.0 >= cost {
            s.0 -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (cost - s.0) / rate.max(f64::MIN_POSITIVE),
            ))
        }
    }

    /// Whether the balance is above zero; otherwise how long until it is.
    fn positive(&self, rate: f64, depth: f64) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::refill(&mut s, rate, depth);
        if s.0 > 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (-s.0 + 1.0) / rate.max(f64::MIN_POSITIVE),
            ))
        }
    }

    /// Charges `cost` whatever the balance (it may go below zero: work done
    /// is paid for after the fact).
    fn charge(&self, cost: f64, rate: f64, depth: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::refill(&mut s, rate, depth);
        s.0 -= cost;
    }
}

/// A limit in an atomic: 0 means none.
#[derive(Debug, Default)]
struct Limit(AtomicU64);

impl Limit {
    fn set(&self, v: Option<u64>) {
        self.0.store(v.unwrap_or(0), Relaxed);
    }

    fn get(&self) -> Option<u64> {
        match self.0.load(Relaxed) {
            0 => None,
            v => Some(v),
        }
    }
}

/// One tenant's quotas: limits, what is in use, and what was refused.
#[derive(Debug)]
pub struct TenantQuota {
    tenant: TenantId,
    concurrent_requests: Limit,
    requests_per_second: Limit,
    request_burst: Limit,
    cpu_per_request_ns: Limit,
    cpu_per_second_ns: Limit,
    memory: Limit,
    instances: Limit,
    concurrency: AtomicU32,
    kv_bytes: Limit,
    rate_limit_keys: Limit,
    outbound_per_second: Limit,
    cache_bytes: Limit,

    requests: AtomicU32,
    request_bucket: Bucket,
    cpu_bucket: Bucket,
    outbound_bucket: Bucket,
    /// Bytes of linear memory the tenant's instances hold.
    pub(crate) memory_used: AtomicU64,
    /// Instances the tenant holds.
    instances_live: AtomicU32,
    /// Idle instances of the tenant's pools.
    idle: Mutex<Vec<std::sync::Weak<IdleQueue>>>,
    /// Calls running guest code now, and their waiters.
    running: AtomicU32,
    pub(crate) slot_freed: Arc<tokio::sync::Notify>,
    /// Bytes the tenant's filters hold in `kv`.
    pub(crate) kv_used: AtomicU64,
    /// `rate-limit` keys the tenant's filters hold.
    pub(crate) rate_limit_keys_used: AtomicU64,

    /// Guest CPU time the tenant's filters used, in nanoseconds.
    cpu_used_ns: AtomicU64,
    /// Calls that waited for a running slot.
    pub(crate) slot_waits: AtomicU64,
    refusals: [AtomicU64; 9],
}

impl TenantQuota {
    /// A tenant's quotas with `settings`; `workers` sets the default of
    /// `filter_concurrency`.
    pub fn new(tenant: TenantId, settings: &QuotaSettings, workers: usize) -> TenantQuota {
        let q = TenantQuota {
            tenant,
            concurrent_requests: Limit::default(),
            requests_per_second: Limit::default(),
            request_burst: Limit::default(),
            cpu_per_request_ns: Limit::default(),
            cpu_per_second_ns: Limit::default(),
            memory: Limit::default(),
            instances: Limit::default(),
            concurrency: AtomicU32::new(1),
            kv_bytes: Limit::default(),
            rate_limit_keys: Limit::default(),
            outbound_per_second: Limit::default(),
            cache_bytes: Limit::default(),
            requests: AtomicU32::new(0),
            request_bucket: Bucket::new(f64::from(settings.request_burst().unwrap_or(0))),
            cpu_bucket: Bucket::new(
                settings
                    .filter_cpu_per_second
                    .map_or(0.0, |d| d.as_nanos() as f64),
            ),
            outbound_bucket: Bucket::new(f64::from(settings.outbound_per_second.unwrap_or(0))),
            memory_used: AtomicU64::new(0),
            instances_live: AtomicU32::new(0),
            idle: Mutex::default(),
            running: AtomicU32::new(0),
            slot_freed: Arc::new(tokio::sync::Notify::new()),
            kv_used: AtomicU64::new(0),
            rate_limit_keys_used: AtomicU64::new(0),
            cpu_used_ns: AtomicU64::new(0),
            slot_waits: AtomicU64::new(0),
            refusals: Default::default(),
        };
        q.set(settings, workers);
        q
    }

    /// Applies new settings; what is in use stays counted.
    pub fn set(&self, s: &QuotaSettings, workers: usize) {
        let nanos =
            |d: Option<Duration>| d.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.concurrent_requests
            .set(s.concurrent_requests.map(u64::from));
        self.requests_per_second
            .set(s.requests_per_second.map(u64::from));
        self.request_burst.set(s.request_burst().map(u64::from));
        self.cpu_per_request_ns.set(nanos(s.filter_cpu_per_request));
        self.cpu_per_second_ns.set(nanos(s.filter_cpu_per_second));
        self.memory.set(s.filter_memory);
        self.instances.set(s.filter_instances.map(u64::from));
        let before = self
            .concurrency
            .swap(s.filter_concurrency_with(workers).max(1), Relaxed);
        if s.filter_concurrency_with(workers) > before {
            self.slot_freed.notify_waiters();
        }
        self.kv_bytes.set(s.kv_bytes);
        self.rate_limit_keys.set(s.rate_limit_keys.map(u64::from));
        self.outbound_per_second
            .set(s.outbound_per_second.map(u64::from));
        self.cache_bytes.set(s.cache_bytes);
    }

    /// Bytes its answers may take in the response cache.
    pub fn cache_bytes(&self) -> Option<u64> {
        self.cache_bytes.get()
    }

    /// Whose.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    fn refuse(&self, quota: Quota, retry_after: Option<Duration>) -> QuotaRefusal {
        self.count_refusal(quota);
        QuotaRefusal::new(quota, retry_after)
    }

    /// Counts a refusal made elsewhere (a memory growth the limiter
    /// refused, a `kv` write).
    pub(crate) fn count_refusal(&self, quota: Quota) {
        self.refusals[quota as usize].fetch_add(1, Relaxed);
    }

    /// Refusals so far, by quota name.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Quota::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(q, n)| (q.name(), n.load(Relaxed)))
    }

    /// Guest CPU time its filters used so far.
    pub fn cpu_used(&self) -> Duration {
        Duration::from_nanos(self.cpu_used_ns.load(Relaxed))
    }

    /// Calls that had to wait for a running slot so far.
    pub fn slot_waits(&self) -> u64 {
        self.slot_waits.load(Relaxed)
    }

    /// Requests in flight now.
    pub fn requests_in_flight(&self) -> u32 {
        self.requests.load(Relaxed)
    }

    /// Instances held now.
    pub fn instances(&self) -> u32 {
        self.instances_live.load(Relaxed)
    }

    /// Linear memory its instances hold now, in bytes.
    pub fn memory(&self) -> u64 {
        self.memory_used.load(Relaxed)
    }

    /// Admits a request: within `concurrent_requests` and
    /// `requests_per_second`. The guard counts it in flight until dropped.
    pub fn admit_request(self: &Arc<Self>) -> Result<RequestGuard, QuotaRefusal> {
        if let Some(max) = self.concurrent_requests.get() {
            let before = self.requests.fetch_add(1, Relaxed);
            if u64::from(before) >= max {
                self.requests.fetch_sub(1, Relaxed);
                return Err(self.refuse(Quota::ConcurrentRequests, Some(Duration::from_secs(1))));
            }
        } else {
            self.requests.fetch_add(1, Relaxed);
        }
        let guard = RequestGuard(self.clone());
        if let Some(rate) = self.requests_per_second.get() {
            let depth = self.request_burst.get().unwrap_or(rate) as f64;
            if let Err(wait) = self.request_bucket.take(1.0, rate as f64, depth) {
                return Err(self.refuse(Quota::RequestsPerSecond, Some(wait)));
            }
        }
        Ok(guard)
    }

    /// The guest CPU time left to a request whose filters used `used`
    /// so far: `None` without a per-request quota.
    pub(crate) fn cpu_left_for_request(
        &self,
        used: Duration,
    ) -> Option<Result<Duration, QuotaRefusal>> {
        let max = Duration::from_nanos(self.cpu_per_request_ns.get()?);
        Some(match max.checked_sub(used) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(self.refuse(Quota::FilterCpuPerRequest, None)),
        })
    }

    /// Whether a call may start under `filter_cpu_per_second`.
    pub(crate) fn admit_call(&self) -> Result<(), QuotaRefusal> {
        if let Some(rate) = self.cpu_per_second_ns.get() {
            self.cpu_bucket
                .positive(rate as f64, rate as f64)
                .map_err(|wait| self.refuse(Quota::FilterCpuPerSecond, Some(wait)))?;
        }
        Ok(())
    }

    /// Charges guest CPU time a call used.
    pub(crate) fn charge_cpu(&self, used: Duration) {
        let ns = u64::try_from(used.as_nanos()).unwrap_or(u64::MAX);
        self.cpu_used_ns.fetch_add(ns, Relaxed);
        if let Some(rate) = self.cpu_per_second_ns.get() {
            self.cpu_bucket.charge(ns as f64, rate as f64, rate as f64);
        }
    }

    /// Counts a new instance against `filter_instances` (not yet refused:
    /// see [`Self::refuse_instance`]).
    pub(crate) fn add_instance(&self) -> Result<(), QuotaRefusal> {
        let before = self.instances_live.fetch_add(1, Relaxed);
        if let Some(max) = self.instances.get()
            && u64::from(before) >= max
        {
            self.instances_live.fetch_sub(1, Relaxed);
            return Err(QuotaRefusal::new(
                Quota::FilterInstances,
                Some(Duration::from_secs(1)),
            ));
        }
        Ok(())
    }

    /// Refuses a new instance, counted.
    pub(crate) fn refuse_instance(&self) -> QuotaRefusal {
        self.refuse(Quota::FilterInstances, Some(Duration::from_secs(1)))
    }

    /// Keeps an eye on a pool's idle instances.
    pub(crate) fn register_idle(&self, idle: &Arc<IdleQueue>) {
        let mut pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|w| w.strong_count() > 0);
        pools.push(Arc::downgrade(idle));
    }

    /// Drops one idle instance of the tenant's, from any of its pools:
    /// whether there was one.
    pub(crate) fn reclaim_idle(&self) -> bool {
        let pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .any(|q| q.pop().is_some())
    }

    /// Drops the instances idle for longer than `ttl`: a tenant that
    /// serves nothing holds none. Returns how many.
    pub fn expire_idle(&self, ttl: Duration) -> usize {
        let pools: Vec<Arc<IdleQueue>> = {
            let mut pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            pools.retain(|w| w.strong_count() > 0);
            pools.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        let mut dropped = 0;
        for q in pools {
            // Oldest first: the queue is FIFO, and instances go back to it
            // as their calls end.
            for _ in 0..q.len() {
                let Some(i) = q.pop() else { break };
                if i.idle_since.elapsed() >= ttl {
                    dropped += 1;
                } else if let Err(i) = q.push(i) {
                    drop(i);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// An instance is gone.
    pub(crate) fn remove_instance(&self) {
        self.instances_live.fetch_sub(1, Relaxed);
    }

    /// Whether linear memory may grow by `delta` bytes under
    /// `filter_memory`; counts it if so.
    pub(crate) fn grow_memory(&self, delta: u64) -> bool {
        let before = self.memory_used.fetch_add(delta, Relaxed);
        if let Some(max) = self.memory.get()
            && before.saturating_add(delta) > max
        {
            self.memory_used.fetch_sub(delta, Relaxed);
            self.count_refusal(Quota::FilterMemory);
            return false;
        }
        true
    }

    /// Linear memory given back (an instance dropped).
    pub(crate) fn release_memory(&self, bytes: u64) {
        self.memory_used.fetch_sub(bytes, Relaxed);
    }

    /// Whether `kv` use may go from `old` to `new` bytes for one entry;
    /// counts it if so.
    pub(crate) fn kv_change(&self, old: u64, new: u64) -> bool {
        if new > old {
            let delta = new - old;
            let before = self.kv_used.fetch_add(delta, Relaxed);
            if let Some(max) = self.kv_bytes.get()
                && before.saturating_add(delta) > max
            {
                self.kv_used.fetch_sub(delta, Relaxed);
                self.count_refusal(Quota::KvBytes);
                return false;
            }
        } else {
            self.kv_release(old - new);
        }
        true
    }

    /// `kv` bytes freed (an entry deleted or expired).
    pub(crate) fn kv_release(&self, bytes: u64) {
        let _ = self
            .kv_used
            .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(bytes)));
    }

    /// Whether one more `rate-limit` key fits; counts it if so.
    pub(crate) fn add_rate_limit_key(&self) -> bool {
        let before = self.rate_limit_keys_used.fetch_add(1, Relaxed);
        if let Some(max) = self.rate_limit_keys.get()
            && before >= max
        {
            self.rate_limit_keys_used.fetch_sub(1, Relaxed);
            self.count_refusal(Quota::RateLimitKeys);
            return false;
        }
        true
    }

    /// `n` `rate-limit` keys freed.
    pub(crate) fn release_rate_limit_keys(&self, n: u64) {
        let _ = self
            .rate_limit_keys_used
            .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(n)));
    }

    /// Whether an outbound call fits `outbound_per_second`.
    pub(crate) fn admit_outbound(&self) -> bool {
        let Some(rate) = self.outbound_per_second.get() else {
            return true;
        };
        if self
            .outbound_bucket
            .take(1.0, rate as f64, rate as f64)
            .is_err()
        {
            self.count_refusal(Quota::OutboundPerSecond);
            return false;
        }
        true
    }

    pub(crate) fn try_enter(&self) -> bool {
        let max = self.concurrency.load(Relaxed);
        self.running
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    pub(crate) fn leave(&self) {
        self.running.fetch_sub(1, Relaxed);
        self.slot_freed.notify_one();
    }
}

/// A request of the tenant in flight; dropping it ends it.
#[derive(Debug)]
pub struct RequestGuard(Arc<TenantQuota>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut QuotaSettings)) -> QuotaSettings {
        let mut s = QuotaSettings::builtin();
        f(&mut s);
        s
    }

    #[test]
    fn requests_past_the_concurrency_and_the_rate_are_refused_and_counted() {
        let q = Arc::new(TenantQuota::new(
            TenantId(Arc::from("t")),
            &settings(|s| {
                s.concurrent_requests = Some(2);
                s.requests_per_second = Some(1);
                s.request_burst = Some(3);
            }),
            2,
        ));
        let a = q.admit_request().expect("first");
        let b = q.admit_request().expect("second");
        let refused = q.admit_request().expect_err("third is past 2 in flight");
        assert_eq!(refused.quota, Quota::ConcurrentRequests);
        assert_eq!(refused.quota.status(), 503);
        drop((a, b));
        assert_eq!(q.requests_in_flight(), 0);
        // Two of the burst of three went to a and b; one is left.
        let c = q.admit_request().expect("third token");
        drop(c);
        let refused = q.admit_request().expect_err("the bucket is empty");
        assert_eq!(refused.quota, Quota::RequestsPerSecond);
        assert_eq!(refused.quota.status(), 429);
        assert!(
            refused
                .retry_after
                .is_some_and(|d| d <= Duration::from_secs(1))
        );
        assert_eq!(refused.retry_after_secs(), Some(1));
        assert_eq!(
            q.requests_in_flight(),
            0,
            "a refused request is not in flight"
        );
        let counts: Vec<_> = q.refusals().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            counts,
            [("concurrent_requests", 1), ("requests_per_second", 1)]
        );
    }

    #[test]
    fn cpu_per_second_is_paid_after_the_fact_and_refuses_until_refilled() {
        let q = TenantQuota::new(
            TenantId(Arc::from("t")),
            &settings(|s| s.filter_cpu_per_second = Some(Duration::from_millis(100))),
            2,
        );
        q.admit_call().expect("a full bucket");
        q.charge_cpu(Duration::from_millis(300));
        let refused = q.admit_call().expect_err("200 ms in debt");
        assert_eq!(refused.quota, Quota::FilterCpuPerSecond);
        let wait = refused.retry_after.expect("a debt is paid back in time");
        assert!(
            wait > Duration::from_millis(1500) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert_eq!(q.cpu_used(), Duration::from_millis(300));
    }

    #[test]
    fn memory_instances_kv_and_keys_are_bounded_and_given_back() {
        let q = TenantQuota::new(
            TenantId(Arc::from("t")),
            &settings(|s| {
                s.filter_memory = Some(100);
                s.filter_instances = Some(1);
                s.kv_bytes = Some(10);
                s.rate_limit_keys = Some(1);
            }),
            2,
        );
        assert!(q.grow_memory(60));
        assert!(!q.grow_memory(60), "120 > 100");
        q.release_memory(60);
        assert!(q.grow_memory(100));
        q.add_instance().expect("first instance");
        assert_eq!(
            q.add_instance().expect_err("one only").quota,
            Quota::FilterInstances
        );
        q.remove_instance();
        q.add_instance().expect("room again");
        assert!(q.kv_change(0, 8));
        assert!(!q.kv_change(0, 8), "16 > 10");
        assert!(q.kv_change(8, 2), "shrinking always fits");
        assert!(q.kv_change(0, 8));
        assert!(q.add_rate_limit_key());
        assert!(!q.add_rate_limit_key());
        q.release_rate_limit_keys(1);
        assert!(q.add_rate_limit_key());
    }

    #[test]
    fn a_lowered_limit_applies_in_place_and_a_raised_one_wakes_waiters() {
        let q = TenantQuota::new(TenantId(Arc::from("t")), &QuotaSettings::builtin(), 8);
        assert_eq!(q.concurrency.load(Relaxed), 4, "half of 8 workers");
        assert!(q.try_enter() && q.try_enter() && q.try_enter() && q.try_enter());
        assert!(!q.try_enter());
        q.set(&settings(|s| s.filter_concurrency = Some(6)), 8);
        assert!(q.try_enter());
        q.set(&settings(|s| s.filter_concurrency = Some(1)), 8);
        q.leave();
        assert!(!q.try_enter(), "4 still run, the limit is 1");
    }
}
