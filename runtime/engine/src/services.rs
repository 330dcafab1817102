//! Host services behind the `kv`, `rate-limit`, `config`, `metrics` and
//! `outbound` imports: state the host keeps for filters, namespaced by filter
//! name, shared by every instance of that filter and atomic across them; and
//! calls to clusters through the [`Outbound`] seam, which the proxy
//! implements (this module knows nothing of clusters).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use wasmgate_config::Scoped;

use super::bindings::v0_2::wasmgate::filter::{
    cache, config, crypto, kv, metrics, outbound, rate_limit,
};
use super::host::HostState;
use wasmgate_metrics::filter_metrics::{FilterMetrics, Kind};

/// A tenant's filter instance idle this long is dropped by the sweep: an
/// idle tenant holds no instances (the operator's pools keep theirs).
pub const IDLE_INSTANCE_TTL: Duration = Duration::from_secs(60);

/// Longest key accepted.
pub const MAX_KEY: usize = 512;
/// Largest value accepted.
pub const MAX_VALUE: usize = 1 << 20;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    version: u64,
    expires: Option<Instant>,
    /// Bytes charged to the namespace's quota for this entry.
    counted: usize,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }

    fn size(key: &str, value: &[u8]) -> usize {
        key.len() + value.len() + 32
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    capacity: u64,
    refill: u64,
}

/// All filters' host-held state in one gateway.
#[derive(Debug, Default)]
pub struct HostServices {
    kv: DashMap<(Scoped, String), Entry>,
    /// Bytes used per namespace.
    used: DashMap<Scoped, usize>,
    buckets: DashMap<(Scoped, String), Bucket>,
    /// Buckets held per namespace (against `rate_limit_keys`).
    bucket_counts: DashMap<Scoped, usize>,
    /// What filters record through `metrics`.
    pub metrics: Arc<FilterMetrics>,
    /// Each tenant's quotas (none for the operator's scope).
    tenants: DashMap<wasmgate_config::TenantId, Arc<crate::quota::TenantQuota>>,
    /// Worker threads serving requests: the default of `filter_concurrency`
    /// is half of them (0: not told, the machine's cores).
    workers: std::sync::atomic::AtomicUsize,
}

impl HostServices {
    /// Tells the quotas how many worker threads serve requests.
    pub fn set_workers(&self, workers: usize) {
        self.workers
            .store(workers, std::sync::atomic::Ordering::Relaxed);
    }

    fn workers(&self) -> usize {
        match self.workers.load(std::sync::atomic::Ordering::Relaxed) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// `tenant`'s quotas, made with `settings` or brought up to them.
    pub fn set_quota(
        &self,
        tenant: &wasmgate_config::TenantId,
        settings: &wasmgate_config::QuotaSettings,
    ) -> Arc<crate::quota::TenantQuota> {
        let workers = self.workers();
        self.tenants
            .entry(tenant.clone())
            .and_modify(|q| q.set(settings, workers))
            .or_insert_with(|| {
                Arc::new(crate::quota::TenantQuota::new(
                    tenant.clone(),
                    settings,
                    workers,
                ))
            })
            .clone()
    }

    /// `tenant`'s quotas (none for the operator's scope); made with the
    /// built-in defaults if the tenant has none yet.
    pub fn quota(
        &self,
        tenant: &wasmgate_config::TenantId,
    ) -> Option<Arc<crate::quota::TenantQuota>> {
        if tenant.is_default() {
            return None;
        }
        if let Some(q) = self.tenants.get(tenant) {
            return Some(q.clone());
        }
        Some(self.set_quota(tenant, &wasmgate_config::QuotaSettings::builtin()))
    }

    /// `tenant`'s quotas as they are, or made with `settings` if it has
    /// none yet (a new tenant: its settings apply from its first request;
    /// a running tenant's change to them waits for [`Self::set_quota`]
    /// when its config is committed).
    pub fn quota_or_new(
        &self,
        tenant: &wasmgate_config::TenantId,
        settings: &wasmgate_config::QuotaSettings,
    ) -> Option<Arc<crate::quota::TenantQuota>> {
        if tenant.is_default() {
            return None;
        }
        let workers = self.workers();
        Some(
            self.tenants
                .entry(tenant.clone())
                .or_insert_with(|| {
                    Arc::new(crate::quota::TenantQuota::new(
                        tenant.clone(),
                        settings,
                        workers,
                    ))
                })
                .clone(),
        )
    }

    /// Every tenant's quotas.
    pub fn quotas(&self) -> Vec<Arc<crate::quota::TenantQuota>> {
        self.tenants.iter().map(|e| e.value().clone()).collect()
    }

    fn tenant_of(&self, ns: &Scoped) -> Option<Arc<crate::quota::TenantQuota>> {
        self.tenants.get(&ns.tenant).map(|q| q.clone())
    }

    /// Drops expired entries and idle full buckets (both would otherwise
    /// accumulate without bound), and tenants' filter instances idle for
    /// [`IDLE_INSTANCE_TTL`].
    pub fn sweep(&self) {
        for q in self.quotas() {
            q.expire_idle(IDLE_INSTANCE_TTL);
        }
        let now = Instant::now();
        self.kv.retain(|(ns, _), e| {
            let keep = e.live(now);
            if !keep {
                if let Some(mut u) = self.used.get_mut(ns) {
                    *u = u.saturating_sub(e.counted);
                }
                if let Some(q) = self.tenant_of(ns) {
                    q.kv_release(e.counted as u64);
                }
            }
            keep
        });
        // A bucket that has refilled completely is the same as no bucket.
        self.buckets.retain(|(ns, _), b| {
            let missing = (b.capacity as f64 - b.tokens).max(0.0);
            let keep = b.refill > 0
                && now.duration_since(b.last).as_secs_f64() * (b.refill as f64) < missing
                || b.refill == 0 && missing > 0.0;
            if !keep {
                if let Some(mut n) = self.bucket_counts.get_mut(ns) {
                    *n = n.saturating_sub(1);
                }
                if let Some(q) = self.tenant_of(ns) {
                    q.release_rate_limit_keys(1);
                }
            }
            keep
        });
    }

    /// Drops a filter's rate-limit buckets: it has left the config, and its
    /// state leaves with it (a filter of that name added later starts
    /// afresh).
    pub fn forget_buckets(&self, namespace: &Scoped) {
        self.buckets.retain(|(ns, _), _| ns != namespace);
        if let Some((_, n)) = self.bucket_counts.remove(namespace)
            && let Some(q) = self.tenant_of(namespace)
        {
            q.release_rate_limit_keys(n as u64);
        }
    }

    /// Drops everything a tenant's filters hold in the host: kv entries,
    /// rate-limit buckets and the metrics they recorded. The tenant has
    /// left; one added later under its name starts empty.
    pub fn forget_tenant(&self, tenant: &wasmgate_config::TenantId) {
        self.kv.retain(|(ns, _), _| ns.tenant != *tenant);
        self.used.retain(|ns, _| ns.tenant != *tenant);
        self.buckets.retain(|(ns, _), _| ns.tenant != *tenant);
        self.bucket_counts.retain(|ns, _| ns.tenant != *tenant);
        self.metrics.forget_tenant(tenant);
        self.tenants.remove(tenant);
    }

    /// Entries a namespace holds in `kv` now.
    pub fn kv_count(&self, namespace: &Scoped) -> usize {
        self.kv.iter().filter(|e| e.key().0 == *namespace).count()
    }

    /// Rate-limit buckets a namespace holds now.
    pub fn bucket_count(&self, namespace: &Scoped) -> usize {
        self.bucket_counts.get(namespace).map_or(0, |n| *n)
    }

    /// Sweeps every `every` until the services are dropped elsewhere.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(s) = weak.upgrade() else { return };
                s.sweep();
            }
        });
    }
}

/// What one filter may use: its namespace, quota and config values.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The namespace: the filter's name, in its tenant's scope. Its `kv`
    /// entries, rate-limit buckets and metric names are its own, and its
    /// outbound calls name clusters of its tenant.
    pub namespace: Scoped,
    /// Largest total size of its `kv` entries, in bytes.
    pub kv_quota: usize,
    /// Values its `config.get` returns.
    pub vars: Arc<HashMap<String, String>>,
    /// The shared state.
    pub services: Arc<HostServices>,
    /// Calls to clusters, if the gateway config allows any.
    pub outbound: Option<OutboundGrant>,
    /// Clusters a request edit may send the route's traffic to.
    pub reroute: ClusterGrant,
    /// Its log lines per second, shared by its versions and instances.
    pub log: Arc<crate::host::LogBudget>,
    /// Most rate-limit buckets (keys) it may hold at once.
    pub rate_limit_keys: usize,
    /// Which headers it may read and edit.
    pub headers: Arc<HeaderBounds>,
    /// What its limits refused, shared by its versions.
    pub refused: Arc<crate::LimitCounts>,
    /// Its tenant's quotas (none in the operator's scope).
    pub quota: Option<Arc<crate::quota::TenantQuota>>,
    /// Its share of the response cache, if granted.
    pub cache: Option<CacheGrant>,
}

/// The response cache as filters reach it: the seam between the filter
/// host and the proxy's cache (which implements it), keyed by the
/// filter's namespace so that a filter reaches only its own entries.
pub trait FilterCache: Send + Sync + std::fmt::Debug {
    /// The live value under `key` of `from`'s.
    fn get(&self, from: &Scoped, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key` of `from`'s for `ttl` with `tags`; past
    /// `quota` bytes of `from`'s entries (or the tenant's `tenant_budget`),
    /// its own oldest entries make room. False when it cannot fit at all.
    #[allow(clippy::too_many_arguments)]
    fn set(
        &self,
        from: &Scoped,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        tags: Vec<String>,
        quota: u64,
        tenant_budget: Option<u64>,
    ) -> bool;
    /// Removes `key` of `from`'s; whether it was there.
    fn delete(&self, from: &Scoped, key: &str) -> bool;
}

/// A filter's share of the response cache.
#[derive(Debug, Clone)]
pub struct CacheGrant {
    /// The cache.
    pub store: Arc<dyn FilterCache>,
    /// Bytes its entries may take together (`cache_bytes`).
    pub quota: u64,
}

/// The longest TTL a filter's cache entry may have.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(86_400);
/// The longest key of a filter's cache entry.
pub const MAX_CACHE_KEY: usize = 512;
/// Most tags on one entry, and the longest tag.
pub const MAX_CACHE_TAGS: (usize, usize) = (16, 256);

/// Default `rate_limit_keys`.
pub const DEFAULT_RATE_LIMIT_KEYS: usize = 100_000;

/// Which clusters of its tenant a filter may name, as the operator granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClusterGrant {
    /// None (the default).
    #[default]
    Nothing,
    /// These.
    These(Arc<HashSet<String>>),
    /// Every cluster (`["*"]` in the config).
    Every,
}

impl ClusterGrant {
    /// From a config list: none or empty grants nothing, `["*"]` every
    /// cluster.
    pub fn from_config(list: Option<&[String]>) -> ClusterGrant {
        match list {
            None | Some([]) => ClusterGrant::Nothing,
            Some(l) if l.iter().any(|c| c == "*") => ClusterGrant::Every,
            Some(l) => ClusterGrant::These(Arc::new(l.iter().cloned().collect())),
        }
    }

    /// Whether `cluster` is granted.
    pub fn allows(&self, cluster: &str) -> bool {
        match self {
            ClusterGrant::Nothing => false,
            ClusterGrant::These(set) => set.contains(cluster),
            ClusterGrant::Every => true,
        }
    }
}

/// Which headers a filter may read, or set and remove, on one side, as the
/// operator bounded it (`read_request_headers` and the like).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HeaderBound {
    /// Every header (the default; framing headers are never writable).
    #[default]
    All,
    /// These names, and names starting with these prefixes (`"x-*"`).
    These {
        /// Names, lower case.
        names: HashSet<String>,
        /// Prefixes, lower case, without the `*`.
        prefixes: Vec<String>,
    },
}

impl HeaderBound {
    /// From a config list (`None`: every header).
    pub fn from_config(list: Option<&[String]>) -> HeaderBound {
        let Some(list) = list else {
            return HeaderBound::All;
        };
        let (mut names, mut prefixes) = (HashSet::new(), Vec::new());
        for n in list {
            let n = n.to_ascii_lowercase();
            match n.strip_suffix('*') {
                Some(p) => prefixes.push(p.to_owned()),
                None => {
                    names.insert(n);
                }
            }
        }
        HeaderBound::These { names, prefixes }
    }

    /// Whether `name` (any case) is within the bound.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            HeaderBound::All => true,
            HeaderBound::These { names, prefixes } => {
                let name = name.to_ascii_lowercase();
                names.contains(&name) || prefixes.iter().any(|p| name.starts_with(p.as_str()))
            }
        }
    }

    /// Whether every header is allowed.
    pub fn is_all(&self) -> bool {
        matches!(self, HeaderBound::All)
    }
}

/// A filter's header bounds, per side and kind of access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderBounds {
    /// Request headers it may read.
    pub read_request: HeaderBound,
    /// Request headers it may set or remove.
    pub write_request: HeaderBound,
    /// Response headers it may read.
    pub read_response: HeaderBound,
    /// Response headers it may set or remove.
    pub write_response: HeaderBound,
}

/// A future an [`Outbound`] returns.
pub type OutboundFuture<'a> = Pin<
    Box<
        dyn Future<Output = Result<outbound::OutboundResponse, outbound::OutboundError>>
            + Send
            + 'a,
    >,
>;

/// Sends a filter's request to a cluster by name: the seam between the
/// filter host and the proxy's clusters.
pub trait Outbound: Send + Sync + std::fmt::Debug {
    /// Sends `req` for filter `from` (its name in its tenant's scope, which
    /// is where the cluster is looked up) on behalf of the request
    /// `request_id`, giving up after `timeout` (the whole response body
    /// included).
    fn send<'a>(
        &'a self,
        from: &'a Scoped,
        req: outbound::OutboundRequest,
        request_id: &'a str,
        timeout: Duration,
    ) -> OutboundFuture<'a>;

    /// Counts a call the host refused before sending it (not granted, or
    /// past the budget).
    fn refused(&self, from: &Scoped, error: &outbound::OutboundError);
}

/// Which clusters a filter may call, and how much.
#[derive(Debug, Clone)]
pub struct OutboundGrant {
    /// The clusters.
    pub sender: Arc<dyn Outbound>,
    /// The cluster names it may call; `None`: any cluster in the config.
    pub clusters: Option<Arc<HashSet<String>>>,
    /// Calls per request (its `on-request` and `on-response` together).
    pub max_calls: u32,
    /// Longest wait per call.
    pub timeout: Duration,
}

impl OutboundGrant {
    fn allows(&self, cluster: &str) -> bool {
        self.clusters.as_ref().is_none_or(|c| c.contains(cluster))
    }
}

impl Grants {
    /// A namespace with no values and the default quota.
    pub fn new(namespace: Scoped, services: Arc<HostServices>) -> Grants {
        let quota = services.quota(&namespace.tenant);
        Grants {
            namespace,
            kv_quota: 16 << 20,
            vars: Arc::default(),
            services,
            outbound: None,
            reroute: ClusterGrant::Nothing,
            log: Arc::default(),
            rate_limit_keys: DEFAULT_RATE_LIMIT_KEYS,
            headers: Arc::default(),
            refused: Arc::default(),
            quota,
            cache: None,
        }
    }
}

fn ttl(ms: Option<u64>, now: Instant) -> Option<Instant> {
    ms.map(|ms| now + Duration::from_millis(ms))
}

impl Grants {
    fn key(&self, key: &str) -> (Scoped, String) {
        (self.namespace.clone(), key.to_owned())
    }

    /// Writes under the quota, atomically: `make` sees the live entry (if
    /// any) and returns the new value, `None` to write nothing, or an error;
    /// nothing is stored unless a value is written. Versions keep growing
    /// across expiry, so a compare-and-set never mistakes a new entry for an
    /// old one. `ttl_on_create_only` keeps a live entry's expiry (for
    /// counters); otherwise the entry expires after `ttl_ms`, or never.
    fn write<T>(
        &self,
        key: String,
        ttl_ms: Option<u64>,
        ttl_on_create_only: bool,
        make: impl FnOnce(Option<&Entry>) -> Result<Option<(Vec<u8>, T)>, kv::KvError>,
    ) -> Result<Option<(u64, T)>, kv::KvError> {
        use dashmap::mapref::entry::Entry as Slot;
        if key.len() > MAX_KEY {
            return Err(kv::KvError::TooLarge);
        }
        let now = Instant::now();
        let svc = &self.services;
        let slot = svc.kv.entry(self.key(&key));
        let current = match &slot {
            Slot::Occupied(o) => Some(o.get()),
            Slot::Vacant(_) => None,
        };
        let live = current.filter(|e| e.live(now));
        let Some((value, out)) = make(live)? else {
            return Ok(None);
        };
        if value.len() > MAX_VALUE {
            return Err(kv::KvError::TooLarge);
        }
        let old_counted = current.map_or(0, |e| e.counted);
        let new_counted = Entry::size(&key, &value);
        {
            let mut used = svc.used.entry(self.namespace.clone()).or_insert(0);
            let after = used.saturating_sub(old_counted) + new_counted;
            if after > self.kv_quota {
                return Err(kv::KvError::QuotaExceeded);
            }
            if let Some(q) = &self.quota
                && !q.kv_change(old_counted as u64, new_counted as u64)
            {
                return Err(kv::KvError::QuotaExceeded);
            }
            *used = after;
        }
        let version = current.map_or(0, |e| e.version) + 1;
        let expires = match live {
            Some(e) if ttl_on_create_only => e.expires,
            _ => ttl(ttl_ms, now),
        };
        let entry = Entry {
            value,
            version,
            expires,
            counted: new_counted,
        };
        match slot {
            Slot::Occupied(mut o) => {
                o.insert(entry);
            }
            Slot::Vacant(v) => {
                v.insert(entry);
            }
        }
        Ok(Some((version, out)))
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<kv::Entry> {
        let g = self.grants();
        let e = g.services.kv.get(&g.key(&key))?;
        e.live(Instant::now()).then(|| kv::Entry {
            value: e.value.clone(),
            version: e.version,
        })
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<u64, kv::KvError> {
        self.grants()
            .write(key, ttl_ms, false, |_| Ok(Some((value, ()))))
            .map(|w| w.map_or(0, |(v, ())| v))
    }

    fn compare_and_set(
        &mut self,
        key: String,
        expected: u64,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, kv::KvError> {
        self.grants()
            .write(key, ttl_ms, false, |cur| {
                let version = cur.map_or(0, |e| e.version);
                Ok((version == expected).then_some((value, ())))
            })
            .map(|w| w.map(|(v, ())| v))
    }

    fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        self.grants()
            .write(key, ttl_ms, true, |cur| {
                let n: i64 = match cur {
                    None => 0,
                    Some(e) => std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .ok_or(kv::KvError::NotANumber)?,
                };
                let n = n.saturating_add(delta);
                Ok(Some((n.to_string().into_bytes(), n)))
            })
            .map(|w| w.map_or(0, |(_, n)| n))
    }

    fn delete(&mut self, key: String) -> bool {
        let g = self.grants();
        match g.services.kv.remove(&g.key(&key)) {
            Some(((ns, _), e)) => {
                if let Some(mut u) = g.services.used.get_mut(&ns) {
                    *u = u.saturating_sub(e.counted);
                }
                if let Some(q) = &g.quota {
                    q.kv_release(e.counted as u64);
                }
                e.live(Instant::now())
            }
            None => false,
        }
    }
}

impl cache::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        let g = self.grants();
        g.cache.as_ref()?.store.get(&g.namespace, &key)
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
        tags: Vec<String>,
    ) -> Result<(), cache::CacheError> {
        use cache::CacheError as E;
        let g = self.grants();
        let Some(grant) = &g.cache else {
            return Err(E::NotGranted);
        };
        if key.len() > MAX_CACHE_KEY
            || tags.len() > MAX_CACHE_TAGS.0
            || tags
                .iter()
                .any(|t| t.len() > MAX_CACHE_TAGS.1 || t.is_empty())
        {
            return Err(E::InvalidKey);
        }
        let ttl = Duration::from_millis(ttl_ms);
        if ttl.is_zero() || ttl > MAX_CACHE_TTL {
            return Err(E::InvalidTtl);
        }
        let budget = g.quota.as_ref().and_then(|q| q.cache_bytes());
        let stored = grant
            .store
            .set(&g.namespace, &key, value, ttl, tags, grant.quota, budget);
        if stored {
            Ok(())
        } else {
            Err(E::TooLarge(grant.quota))
        }
    }

    fn delete(&mut self, key: String) -> bool {
        let g = self.grants();
        g.cache
            .as_ref()
            .is_some_and(|c| c.store.delete(&g.namespace, &key))
    }
}

impl rate_limit::Host for HostState {
    fn take(&mut self, key: String, capacity: u64, refill: u64, cost: u64) -> rate_limit::Verdict {
        let g = self.grants();
        let now = Instant::now();
        let key: String = key.chars().take(MAX_KEY).collect();
        let mut b = match g.services.buckets.entry(g.key(&key)) {
            dashmap::mapref::entry::Entry::Occupied(b) => b.into_ref(),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let mut count = g
                    .services
                    .bucket_counts
                    .entry(g.namespace.clone())
                    .or_insert(0);
                if *count >= g.rate_limit_keys
                    || g.quota.as_ref().is_some_and(|q| !q.add_rate_limit_key())
                {
                    // Full: a new key is refused (a client cannot make room
                    // for itself by flooding keys), counted, and told to
                    // come back once the sweep has freed some.
                    drop(count);
                    g.refused
                        .rate_limit_keys
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return rate_limit::Verdict {
                        allowed: false,
                        remaining: 0,
                        retry_after_ms: 1000,
                        reset_ms: 1000,
                    };
                }
                *count += 1;
                drop(count);
                v.insert(Bucket {
                    tokens: capacity as f64,
                    last: now,
                    capacity,
                    refill,
                })
            }
        };
        // A changed shape (capacity or rate) takes effect at once.
        b.capacity = capacity;
        b.refill = refill;
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * refill as f64).min(capacity as f64);
        b.last = now;
        let allowed = b.tokens >= cost as f64;
        if allowed {
            b.tokens -= cost as f64;
        }
        let ms_for = |tokens: f64| -> u64 {
            if tokens <= 0.0 {
                0
            } else if refill == 0 {
                u64::MAX
            } else {
                (tokens / refill as f64 * 1000.0).ceil() as u64
            }
        };
        rate_limit::Verdict {
            allowed,
            remaining: b.tokens.floor() as u64,
            retry_after_ms: if allowed {
                0
            } else {
                ms_for(cost as f64 - b.tokens)
            },
            reset_ms: ms_for(capacity as f64 - b.tokens),
        }
    }
}

impl config::Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        self.grants().vars.get(&name).cloned()
    }
}

impl crypto::Host for HostState {
    fn verify_rsa_pkcs1_sha256(
        &mut self,
        public_key: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
            .verify(&message, &signature)
            .is_ok()
    }

    fn verify_ecdsa_p256_sha256(
        &mut self,
        public_key: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
            .verify(&message, &signature)
            .is_ok()
    }
}

impl metrics::Host for HostState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, delta: u64) {
        let g = self.grants();
        g.services
            .metrics
            .record(&g.namespace, Kind::Counter, &name, labels, delta as f64);
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        let g = self.grants();
        g.services
            .metrics
            .record(&g.namespace, Kind::Gauge, &name, labels, value);
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        let g = self.grants();
        g.services
            .metrics
            .record(&g.namespace, Kind::Histogram, &name, labels, value);
    }
}

impl HostState {
    /// Checks a call against the grant and the request's budget, and takes
    /// one call from the budget.
    fn admit(
        &mut self,
        req: &outbound::OutboundRequest,
    ) -> Result<(OutboundGrant, Duration), outbound::OutboundError> {
        use outbound::OutboundError as E;
        let Some(grant) = self.grants().outbound.clone() else {
            return Err(E::UnknownCluster);
        };
        let from = self.grants().namespace.clone();
        let refuse = |e: E| {
            grant.sender.refused(&from, &e);
            Err(e)
        };
        if !grant.allows(&req.cluster) {
            return refuse(E::UnknownCluster);
        }
        if !self.call.in_request {
            return refuse(E::InvalidRequest(
                "outbound calls are allowed only while serving a request, not in init".into(),
            ));
        }
        if self.call.outbound_used >= grant.max_calls {
            // Once per call: a guest looping on a refused call must not
            // flood the log.
            if !std::mem::replace(&mut self.call.budget_logged, true) {
                tracing::warn!(
                    filter = &*self.site().filter,
                    route = &*self.site().route,
                    request_id = self.call.request_id,
                    "outbound call refused: the filter used its {} calls for this request",
                    grant.max_calls
                );
            }
            return refuse(E::BudgetExhausted);
        }
        if let Some(q) = &self.grants().quota
            && !q.admit_outbound()
        {
            if !std::mem::replace(&mut self.call.budget_logged, true) {
                tracing::warn!(
                    filter = &*self.site().filter,
                    route = &*self.site().route,
                    request_id = self.call.request_id,
                    "outbound call refused: the tenant's outbound_per_second quota is used up"
                );
            }
            return refuse(E::BudgetExhausted);
        }
        self.call.outbound_used += 1;
        let timeout = req.timeout_ms.map_or(grant.timeout, |ms| {
            grant.timeout.min(Duration::from_millis(ms.into()))
        });
        Ok((grant, timeout))
    }
}

impl outbound::Host for HostState {
    async fn send(
        &mut self,
        req: outbound::OutboundRequest,
    ) -> Result<outbound::OutboundResponse, outbound::OutboundError> {
        let (grant, timeout) = self.admit(&req)?;
        let from = self.grants().namespace.clone();
        grant
            .sender
            .send(&from, req, &self.call.request_id, timeout)
            .await
    }

    async fn send_all(
        &mut self,
        reqs: Vec<outbound::OutboundRequest>,
    ) -> Vec<Result<outbound::OutboundResponse, outbound::OutboundError>> {
        let admitted: Vec<_> = reqs
            .into_iter()
            .map(|r| self.admit(&r).map(|(g, t)| (g, t, r)))
            .collect();
        let request_id = &self.call.request_id;
        let from = &self.grants().namespace;
        let calls = admitted.into_iter().map(|a| async move {
            let (grant, timeout, req) = a?;
            grant.sender.send(from, req, request_id, timeout).await
        });
        futures_util::future::join_all(calls).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(quota: usize) -> Grants {
        let mut g = Grants::new(Scoped::default_tenant("ns"), Arc::default());
        g.kv_quota = quota;
        g
    }

    fn set(g: &Grants, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<u64, kv::KvError> {
        g.write(key.into(), ttl_ms, false, |_| {
            Ok(Some((value.to_vec(), ())))
        })
        .map(|w| w.map_or(0, |(v, ())| v))
    }

    fn used(g: &Grants) -> usize {
        g.services
            .used
            .get(&Scoped::default_tenant("ns"))
            .map_or(0, |u| *u)
    }

    #[test]
    fn one_filter_name_in_two_tenants_is_two_namespaces() {
        let services = Arc::new(HostServices::default());
        let of = |tenant: &str| {
            let scope = Scoped::new(wasmgate_config::TenantId(Arc::from(tenant)), "f");
            let mut g = Grants::new(scope, services.clone());
            g.kv_quota = 1 << 20;
            g
        };
        let (a, b) = (of("a"), of("b"));
        assert_eq!(set(&a, "k", b"from a", None), Ok(1));
        assert_eq!(
            set(&b, "k", b"from b", None),
            Ok(1),
            "b's own first version"
        );
        let read = |g: &Grants| {
            g.services
                .kv
                .get(&g.key("k"))
                .map(|e| e.value.clone())
                .unwrap()
        };
        assert_eq!(read(&a), b"from a");
        assert_eq!(read(&b), b"from b");
        assert_eq!(services.used.len(), 2, "each charged to its own quota");
    }

    #[test]
    fn refused_writes_leave_no_trace_and_the_quota_holds() {
        let g = grants(200);
        assert_eq!(set(&g, "a", &[1; 100], None), Ok(1));
        let after_a = used(&g);
        assert_eq!(
            set(&g, "b", &[1; 100], None),
            Err(kv::KvError::QuotaExceeded)
        );
        // A compare-and-set that does not match writes nothing.
        let cas = g.write("c".into(), None, false, |cur| {
            Ok((cur.map_or(0, |e| e.version) == 7).then_some((vec![1], ())))
        });
        assert_eq!(cas, Ok(None));
        assert_eq!(used(&g), after_a, "refused writes charge nothing");
        assert_eq!(g.services.kv.len(), 1, "and leave no entry behind");
        g.services.sweep();
        assert_eq!(used(&g), after_a);
        // Overwriting charges the difference only.
        assert_eq!(set(&g, "a", &[1; 50], None), Ok(2));
        assert!(used(&g) < after_a);
    }

    #[test]
    fn expired_entries_keep_counting_until_replaced_and_versions_keep_growing() {
        let g = grants(1 << 20);
        assert_eq!(set(&g, "k", b"v", Some(0)), Ok(1));
        std::thread::sleep(Duration::from_millis(2));
        let charged = used(&g);
        // Expired: invisible, but its version is not reused.
        assert_eq!(set(&g, "k", b"w", None), Ok(2));
        assert_eq!(used(&g), charged, "the expired entry's bytes were released");
        g.services.sweep();
        assert_eq!(used(&g), charged, "the live entry stays counted");
    }

    #[test]
    fn a_counter_keeps_the_expiry_it_was_created_with() {
        let g = grants(1 << 20);
        let incr = |g: &Grants| {
            g.write("hits".into(), Some(60_000), true, |cur| {
                let n: i64 = cur.map_or(0, |e| String::from_utf8_lossy(&e.value).parse().unwrap());
                Ok(Some(((n + 1).to_string().into_bytes(), n + 1)))
            })
            .unwrap()
            .unwrap()
            .1
        };
        assert_eq!(incr(&g), 1);
        let first = g.services.kv.get(&g.key("hits")).unwrap().expires;
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(incr(&g), 2);
        assert_eq!(g.services.kv.get(&g.key("hits")).unwrap().expires, first);
    }

    #[test]
    fn full_buckets_are_swept_and_huge_ones_do_not_panic() {
        let s = Arc::new(HostServices::default());
        let now = Instant::now();
        s.buckets.insert(
            (Scoped::default_tenant("ns"), "full".into()),
            Bucket {
                tokens: 5.0,
                last: now,
                capacity: 5,
                refill: 1,
            },
        );
        s.buckets.insert(
            (Scoped::default_tenant("ns"), "huge".into()),
            Bucket {
                tokens: 0.0,
                last: now,
                capacity: u64::MAX,
                refill: 1,
            },
        );
        s.sweep();
        assert!(
            !s.buckets
                .contains_key(&(Scoped::default_tenant("ns"), "full".into()))
        );
        assert!(
            s.buckets
                .contains_key(&(Scoped::default_tenant("ns"), "huge".into()))
        );
    }
}
