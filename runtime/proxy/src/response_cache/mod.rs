//! The response cache: one moka cache for the whole gateway, living across
//! config reloads, that routes with `[routes.cache]` store their upstream's
//! answers in and serve hits from (the slots in `request/cache.rs`).
//!
//! - **Semantics** are RFC 9111's for a shared cache. `http-cache-semantics`
//!   (`CachePolicy`) decides storability, freshness from `Cache-Control`,
//!   `Expires` and `Age`, `Vary` matching, `private`, `no-store`,
//!   `no-cache`, `must-revalidate`, and updates a stored answer from a
//!   `304`; [`rules`] adds what it leaves out: the age `Date` shows,
//!   `stale-while-revalidate` and `stale-if-error` (RFC 5861), the
//!   client's own conditional request, `Accept-Encoding` made canonical,
//!   surrogate tags. There is no heuristic freshness: a response that says
//!   nothing of its freshness is stored only when its route sets
//!   `default_ttl`. A request with `Authorization` and a response with
//!   `Set-Cookie` are not stored unless the route says so; `Vary: *` is
//!   never stored; range requests pass through uncached (`Range` bypasses).
//! - **Keys** hold the tenant, the route, the cluster that served, the
//!   scheme, host, canonical path and query, and the route's extra key
//!   parts (named, so a changed key scheme makes new keys); `GET` and
//!   `HEAD` share a key (a `HEAD` is served from a stored `GET`, never
//!   stored itself). The variants of one key (by `Vary`) live together in
//!   one entry, at most [`MAX_VARIANTS`].
//! - **Bodies** are stored as they stream to the client: the upstream's
//!   body is teed ([`crate::body::Tee`]) and the entry inserted when it ends;
//!   past `max_entry_bytes` (or with trailers) the copy is dropped and the
//!   body streams on. What is stored is the upstream's answer; response-side
//!   filters run on hits as on misses.
//! - **Misses coalesce** ([`lock`]): one request per key goes upstream, the
//!   rest wait for its answer to be stored.
//! - **Memory**: moka weighs each entry by its size (key, heads, bodies)
//!   against `max_bytes`, evicting the least recently used (LRU, chosen over
//!   moka's default TinyLFU admission so that a response just stored is
//!   there for the next request), and drops an entry once it is past use
//!   (fresh, then servable stale, then worth revalidating). Each tenant's
//!   own budget inside it is kept by [`budget`].

mod budget;
mod filter;
mod lock;
mod purge;
mod rules;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};

use crate::body::{self, ProxyBody};
use lock::{Acquired, Locks};
use rules::Staleness;
use wasmgate_config::{CacheConfig, RouteCacheConfig};

pub use lock::LockGuard;
pub use purge::Purge;

use filter::{FILTER_SCHEME, FilterValue, filter_owner};

/// RFC 9211's header.
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// Variants (by `Vary`) kept under one key.
pub const MAX_VARIANTS: usize = 8;

/// How long past its freshness an answer with validators (`ETag`,
/// `Last-Modified`) is kept to be revalidated, at least.
const REVALIDATE_KEEP: Duration = Duration::from_secs(600);

/// The longest an entry is kept, whatever its lifetime.
const MAX_KEEP: Duration = Duration::from_secs(365 * 24 * 3600);

/// What one stored answer is found by (its `Vary` variants share it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The tenant.
    pub tenant: Arc<str>,
    /// The route.
    pub route: Arc<str>,
    /// The cluster that served it (after any reroute or weighted pick).
    pub cluster: Arc<str>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The request's host, lower-case, without port.
    pub host: String,
    /// The canonical path and the query.
    pub path_and_query: String,
    /// The route's extra key parts, each as `kind:name=value`.
    pub extra: String,
}

impl Key {
    fn size(&self) -> usize {
        self.tenant.len()
            + self.route.len()
            + self.cluster.len()
            + self.host.len()
            + self.path_and_query.len()
            + self.extra.len()
            + 64
    }

    /// The path without the query.
    fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(&self.path_and_query, |(p, _)| p)
    }
}

/// One stored answer.
#[derive(Debug)]
struct Stored {
    policy: CachePolicy,
    status: StatusCode,
    /// Its head as stored (what a stale answer is made from).
    headers: HeaderMap,
    body: Bytes,
    size: usize,
    tags: Box<[Box<str>]>,
    /// Its freshness lifetime.
    lifetime: Duration,
    staleness: Staleness,
    /// When it stops being fresh.
    fresh_until: SystemTime,
    /// When it was made (its age is the time since).
    born: SystemTime,
    /// The request headers its `Vary` names, with the values it was
    /// stored for.
    vary: Box<[(http::HeaderName, Option<HeaderValue>)]>,
}

impl Stored {
    /// A stored answer judged by `policy` at `now`, for `request`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        policy: CachePolicy,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        size: usize,
        tags: Box<[Box<str>]>,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Stored {
        Stored {
            lifetime: rules::freshness_lifetime(&headers),
            staleness: Staleness::of(&headers),
            fresh_until: now + policy.time_to_live(now),
            born: now.checked_sub(policy.age(now)).unwrap_or(now),
            vary: rules::vary_of(&headers, request),
            policy,
            status,
            headers,
            body,
            size,
            tags,
        }
    }

    /// Whether it is fresh for a request with `headers` that says nothing
    /// of caching (no `Cache-Control`, no `Pragma`): the common case, judged
    /// without the policy's general path (the key already matched the
    /// target and host; a `GET` and a `HEAD` are both served from a `GET`).
    fn fresh_for_plain(&self, headers: &HeaderMap, now: SystemTime) -> bool {
        now < self.fresh_until
            && self
                .vary
                .iter()
                .all(|(name, value)| headers.get(name) == value.as_ref())
    }

    /// How long it has been stale; `None` while fresh.
    fn stale_for(&self, now: SystemTime) -> Option<Duration> {
        self.policy
            .is_stale(now)
            .then(|| self.policy.age(now).saturating_sub(self.lifetime))
    }

    /// How long from `now` it is worth keeping: fresh, then servable
    /// stale, then (with validators) to be revalidated.
    fn keep(&self, now: SystemTime) -> Duration {
        let revalidate = if self.headers.contains_key(header::ETAG)
            || self.headers.contains_key(header::LAST_MODIFIED)
        {
            REVALIDATE_KEEP.max(self.lifetime)
        } else {
            Duration::ZERO
        };
        let stale = self.stale_for(now).unwrap_or_default();
        (self.policy.time_to_live(now) + self.staleness.longest().max(revalidate))
            .saturating_sub(stale)
            .min(MAX_KEEP)
    }

    /// Its head as served at `now`, with its current `Age`.
    fn head_at(&self, now: SystemTime) -> HeaderMap {
        let mut h = self.headers.clone();
        let age = now.duration_since(self.born).unwrap_or_default();
        h.insert(header::AGE, HeaderValue::from(age.as_secs()));
        h
    }
}

/// The variants stored under one key (or, under a filter's key, its value).
#[derive(Debug)]
struct Entry {
    variants: Vec<Arc<Stored>>,
    value: Option<FilterValue>,
    /// Its weight.
    size: usize,
    /// How long from its insert it is worth keeping.
    keep: Duration,
}

/// Drops an entry once no variant is worth keeping.
struct KeepFor;

impl moka::Expiry<Arc<Key>, Arc<Entry>> for KeepFor {
    fn expire_after_create(
        &self,
        _: &Arc<Key>,
        v: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.keep)
    }

    fn expire_after_update(
        &self,
        _: &Arc<Key>,
        v: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.keep)
    }
}

/// Counters of the cache, exported at scrape.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Answers served fresh from the cache.
    pub hits: AtomicU64,
    /// Lookups that found nothing fresh (the request went upstream).
    pub misses: AtomicU64,
    /// Requests the cache did not look at (a method or header that bypasses it).
    pub bypasses: AtomicU64,
    /// Stale answers served (`stale-while-revalidate`, `stale-if-error`).
    pub stale: AtomicU64,
    /// Stale answers the upstream confirmed with a `304`.
    pub revalidated: AtomicU64,
    /// Misses that waited for another request of the same key.
    pub coalesced: AtomicU64,
    /// Answers stored.
    pub stores: AtomicU64,
    /// Answers not stored (not cacheable, too large, trailers).
    pub not_stored: AtomicU64,
    /// Entries evicted for room (the whole cache's).
    pub evictions: AtomicU64,
    /// Entries removed by purges and unsafe methods.
    pub purged: AtomicU64,
    /// Filters' `cache.get` that found a value.
    pub filter_hits: AtomicU64,
    /// Filters' `cache.get` that found none.
    pub filter_misses: AtomicU64,
    /// Filters' values stored.
    pub filter_stores: AtomicU64,
    /// Filters' values refused (past their quota or their tenant's budget).
    pub filter_refused: AtomicU64,
}

/// The gateway's response cache.
pub struct ResponseCache {
    entries: moka::sync::Cache<Arc<Key>, Arc<Entry>>,
    max_entry: usize,
    status_header: Option<http::HeaderName>,
    tag_header: http::HeaderName,
    lock_timeout: Duration,
    locks: Arc<Locks>,
    /// Tenants' budgets.
    budgets: Arc<budget::Budgets>,
    /// Filters' quotas for their values (owner `tenant/filter`).
    filter_budgets: Arc<budget::Budgets>,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish_non_exhaustive()
    }
}

/// What a lookup found: what the request does next.
#[derive(Debug)]
pub enum Lookup {
    /// A fresh stored answer: serve it.
    Hit(Response<ProxyBody>),
    /// A stale answer served under `stale-while-revalidate`; `refresh` is
    /// the one refresh to start, if this request is the one to start it.
    Stale {
        /// The stale answer.
        response: Response<ProxyBody>,
        /// The refresh this request starts.
        refresh: Option<Box<Pending>>,
    },
    /// Go upstream; [`ResponseCache::answer`] takes the response.
    Miss(Box<Pending>),
    /// The cache does not take part; a successful unsafe method removes
    /// what is stored under `invalidate`.
    Bypass {
        /// The key an unsafe method's success invalidates.
        invalidate: Option<Arc<Key>>,
    },
}

/// How a miss fared, for `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forward {
    /// Nothing stored under its key.
    UriMiss,
    /// Something stored under its key, but not for its `Vary` headers.
    VaryMiss,
    /// Stored, but stale: revalidated or fetched again.
    Stale,
    /// Stored and fresh, but the request asked for it anew (`no-cache`).
    Request,
}

impl Forward {
    fn name(self) -> &'static str {
        match self {
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Request => "request",
        }
    }
}

/// What a miss carries to [`ResponseCache::answer`].
#[derive(Debug)]
pub struct Pending {
    key: Arc<Key>,
    /// The request's head as judged (origin-form target, `Host` from the
    /// key, the client's conditionals taken out when revalidating).
    request: Parts,
    /// The client's own `If-None-Match` / `If-Modified-Since`, answered by
    /// the gateway when it revalidates for it.
    conditionals: HeaderMap,
    forward: Forward,
    /// A stale variant it matched (to revalidate, or serve on error).
    stale: Option<Arc<Stored>>,
    /// The validators sent upstream for `stale`.
    validators: Option<HeaderMap>,
    lock: Option<LockGuard>,
    /// A `HEAD`: served from a stored `GET`, never stored itself.
    head: bool,
    /// The tenant's `cache_bytes`.
    budget: Option<u64>,
}

impl Pending {
    /// Puts the cache's own conditional headers on the request going
    /// upstream, in place of the client's, to revalidate a stale answer.
    pub fn prepare(&self, parts: &mut Parts) {
        if let Some(v) = &self.validators {
            rules::take_conditionals(&mut parts.headers);
            for (name, value) in v {
                parts.headers.append(name.clone(), value.clone());
            }
        }
    }

    /// The head of a background refresh: a `GET` like the request going
    /// upstream, without the client's conditionals, with the validators.
    pub fn refresh_request(&self, like: &Parts) -> Parts {
        let mut parts = copy_head(like, http::Method::GET);
        rules::take_conditionals(&mut parts.headers);
        self.prepare(&mut parts);
        parts
    }

    /// Whether a stale answer may stand in for a failed one, and which.
    fn stale_if_error(&self, now: SystemTime) -> Option<&Arc<Stored>> {
        let stale = self.stale.as_ref()?;
        let late = stale.stale_for(now).unwrap_or_default();
        (!stale.staleness.never && late <= stale.staleness.if_error).then_some(stale)
    }
}

impl ResponseCache {
    /// A cache with `config`'s budget.
    pub fn new(config: &CacheConfig) -> ResponseCache {
        let stats = Arc::new(CacheStats::default());
        let budgets = Arc::new(budget::Budgets::default());
        let filter_budgets = Arc::new(budget::Budgets::default());
        let (evicted, released, released_filter) =
            (stats.clone(), budgets.clone(), filter_budgets.clone());
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_: &Arc<Key>, v: &Arc<Entry>| u32::try_from(v.size).unwrap_or(u32::MAX))
            .expire_after(KeepFor)
            .eviction_listener(move |k: Arc<Arc<Key>>, v: Arc<Entry>, cause| {
                released.removed(&k.tenant, v.size as u64);
                if k.scheme == FILTER_SCHEME {
                    released_filter.removed(&filter_owner(&k), v.size as u64);
                }
                if cause == moka::notification::RemovalCause::Size {
                    evicted.evictions.fetch_add(1, Relaxed);
                }
            })
            .build();
        ResponseCache {
            entries,
            max_entry: usize::try_from(config.max_entry_bytes).unwrap_or(usize::MAX),
            status_header: config.status_header.clone(),
            tag_header: config.tag_header.clone(),
            lock_timeout: config.lock_timeout,
            locks: Arc::new(Locks::new(config.lock_bypass_for)),
            budgets,
            filter_budgets,
            stats,
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Entries and their bytes, after pending maintenance.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Bytes and budget evictions by tenant.
    pub fn tenant_usage(&self) -> Vec<(Arc<str>, u64, u64)> {
        self.budgets.report()
    }

    /// Removes `owner`'s oldest entries in `budgets` until `incoming` more
    /// bytes fit `budget`, sparing `key`.
    fn make_room(
        &self,
        budgets: &budget::Budgets,
        owner: &Arc<str>,
        budget: u64,
        incoming: u64,
        key: &Arc<Key>,
    ) {
        budgets.make_room(owner, budget, incoming, |k| {
            k != key && self.entries.remove(k).is_some()
        });
    }

    /// Looks the request up under `key`. `parts` is the request going
    /// upstream on a miss: its `Accept-Encoding` is made canonical here.
    /// `budget` is the tenant's `cache_bytes`.
    pub async fn lookup(
        self: &Arc<Self>,
        key: Key,
        parts: &mut Parts,
        route: &RouteCacheConfig,
        budget: Option<u64>,
    ) -> Lookup {
        use http::Method;
        let method = &parts.method;
        if matches!(
            *method,
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        ) {
            self.stats.bypasses.fetch_add(1, Relaxed);
            return Lookup::Bypass {
                invalidate: Some(Arc::new(key)),
            };
        }
        if !(*method == Method::GET || *method == Method::HEAD)
            || parts.headers.contains_key(header::RANGE)
            || (!route.store_authorized && parts.headers.contains_key(header::AUTHORIZATION))
        {
            self.stats.bypasses.fetch_add(1, Relaxed);
            return Lookup::Bypass { invalidate: None };
        }
        rules::normalize_accept_encoding(&mut parts.headers);
        let key = Arc::new(key);
        let head = *method == Method::HEAD;
        // A request that says nothing of caching is judged on the fast path
        // (`Stored::fresh_for_plain`); the others, and what is not fresh,
        // by the policy, as a GET of the key's host and target, however it
        // came (HTTP/1.1 or 2, origin or absolute form).
        let plain = !parts.headers.contains_key(header::CACHE_CONTROL)
            && !parts.headers.contains_key(header::PRAGMA);
        let mut judged: Option<Parts> = None;
        let mut waited = false;
        loop {
            let now = SystemTime::now();
            let mut forward = Forward::UriMiss;
            let mut stale = None;
            let entry = self.entries.get(&key);
            let collapsed = if waited { "; collapsed" } else { "" };
            if plain
                && let Some(entry) = &entry
                && let Some(stored) = entry
                    .variants
                    .iter()
                    .find(|v| v.fresh_for_plain(&parts.headers, now))
            {
                let ttl = stored.fresh_until.duration_since(now).unwrap_or_default();
                return self.hit(stored, parts, head, now, ttl, collapsed);
            }
            let request = judged.get_or_insert_with(|| judged_request(parts, &key));
            if let Some(entry) = &entry {
                forward = Forward::VaryMiss;
                for stored in &entry.variants {
                    match stored.policy.before_request(&*request, now) {
                        BeforeRequest::Fresh(_) => {
                            let ttl = stored.policy.time_to_live(now);
                            return self.hit(stored, parts, head, now, ttl, collapsed);
                        }
                        BeforeRequest::Stale {
                            matches: true,
                            request: revalidation,
                        } if stale.is_none() => {
                            forward = if stored.policy.is_stale(now) {
                                Forward::Stale
                            } else {
                                Forward::Request
                            };
                            stale = Some((stored.clone(), revalidation));
                        }
                        BeforeRequest::Stale { .. } => {}
                    }
                }
            }
            // stale-while-revalidate: serve it, and let one refresh run.
            let while_revalidate = stale.as_ref().and_then(|(stored, _)| {
                let late = stored.stale_for(now)?;
                (!stored.staleness.never && late <= stored.staleness.while_revalidate)
                    .then_some(late)
            });
            if let Some(late) = while_revalidate
                && let Some((stored, revalidation)) = stale.take()
            {
                self.stats.stale.fetch_add(1, Relaxed);
                let refresh = match self.locks.acquire(&key) {
                    Acquired::Leader(lock) => Some(self.pending(
                        &key,
                        judged.take().unwrap_or_else(|| judged_request(parts, &key)),
                        HeaderMap::new(),
                        forward,
                        Some((stored.clone(), revalidation.headers)),
                        Some(lock),
                        false,
                        budget,
                    )),
                    Acquired::Wait(_) | Acquired::Pass => None,
                };
                let response = self.serve(
                    &stored,
                    stored.head_at(now),
                    parts,
                    head,
                    "STALE",
                    &format!(
                        "wasmgate; hit; ttl=-{}; detail=stale-while-revalidate",
                        late.as_secs()
                    ),
                );
                return Lookup::Stale { response, refresh };
            }
            // A HEAD never fetches for others (its answer is not stored),
            // and a request that waited once goes on alone.
            let lock = if waited || head {
                None
            } else {
                match self.locks.acquire(&key) {
                    Acquired::Leader(lock) => Some(lock),
                    Acquired::Wait(mut rx) => {
                        self.stats.coalesced.fetch_add(1, Relaxed);
                        let _ = tokio::time::timeout(self.lock_timeout, rx.changed()).await;
                        waited = true;
                        continue;
                    }
                    Acquired::Pass => None,
                }
            };
            self.stats.misses.fetch_add(1, Relaxed);
            let mut pending = self.pending(
                &key,
                judged.take().unwrap_or_else(|| judged_request(parts, &key)),
                HeaderMap::new(),
                forward,
                stale.map(|(s, r)| (s, r.headers)),
                lock,
                head,
                budget,
            );
            pending.conditionals = if pending.validators.is_some() {
                // The gateway revalidates: the client's own conditionals
                // are answered here, from what comes back.
                rules::take_conditionals(&mut parts.headers)
            } else {
                // They go upstream as they are; kept to answer the client
                // if a stale answer stands in for a failure.
                rules::conditionals_of(&parts.headers)
            };
            return Lookup::Miss(pending);
        }
    }

    /// A fresh stored answer, served.
    fn hit(
        &self,
        stored: &Stored,
        client: &Parts,
        head: bool,
        now: SystemTime,
        ttl: Duration,
        collapsed: &str,
    ) -> Lookup {
        self.stats.hits.fetch_add(1, Relaxed);
        Lookup::Hit(self.serve(
            stored,
            stored.head_at(now),
            client,
            head,
            "HIT",
            &format!("wasmgate; hit; ttl={}{collapsed}", ttl.as_secs()),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn pending(
        &self,
        key: &Arc<Key>,
        request: Parts,
        conditionals: HeaderMap,
        forward: Forward,
        stale: Option<(Arc<Stored>, HeaderMap)>,
        lock: Option<LockGuard>,
        head: bool,
        budget: Option<u64>,
    ) -> Box<Pending> {
        let (stale, validators) = match stale {
            Some((stored, revalidation)) => {
                let validators: HeaderMap = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE]
                    .into_iter()
                    .filter_map(|n| Some((n.clone(), revalidation.get(&n)?.clone())))
                    .collect();
                (Some(stored), (!validators.is_empty()).then_some(validators))
            }
            None => (None, None),
        };
        Box::new(Pending {
            key: key.clone(),
            request,
            conditionals,
            forward,
            stale,
            validators,
            lock,
            head,
            budget,
        })
    }

    /// A stored answer as a response: its head `headers`, its body (none
    /// for a `HEAD`), or a `304` when the client already has it.
    fn serve(
        &self,
        stored: &Stored,
        headers: HeaderMap,
        client: &Parts,
        head: bool,
        simple: &'static str,
        status: &str,
    ) -> Response<ProxyBody> {
        let not_modified =
            stored.status == StatusCode::OK && rules::not_modified(&client.headers, &headers);
        self.serve_with(
            stored,
            headers,
            &HeaderMap::new(),
            not_modified,
            head,
            simple,
            status,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn serve_with(
        &self,
        stored: &Stored,
        headers: HeaderMap,
        conditionals: &HeaderMap,
        not_modified: bool,
        head: bool,
        simple: &'static str,
        status: &str,
    ) -> Response<ProxyBody> {
        let not_modified = not_modified
            || (stored.status == StatusCode::OK && rules::not_modified(conditionals, &headers));
        let body = if head || not_modified {
            body::empty()
        } else {
            body::full(stored.body.clone())
        };
        let mut resp = Response::new(body);
        *resp.headers_mut() = headers;
        if not_modified {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            rules::not_modified_head(resp.headers_mut());
        } else {
            *resp.status_mut() = stored.status;
        }
        self.mark(resp.headers_mut(), simple, status);
        resp
    }

    fn mark(&self, h: &mut HeaderMap, simple: &'static str, status: &str) {
        if let Ok(v) = HeaderValue::from_str(status) {
            h.append(CACHE_STATUS, v);
        }
        if let Some(name) = &self.status_header {
            h.insert(name.clone(), HeaderValue::from_static(simple));
        }
    }

    /// Says on a response the cache did not look at that it was bypassed.
    pub fn mark_bypass(&self, resp: &mut Response<ProxyBody>) {
        self.mark(resp.headers_mut(), "BYPASS", "wasmgate; fwd=bypass");
    }

    /// A stale answer in place of a failed one (`stale-if-error`), if the
    /// stored one allows it; `status` is the upstream's, if it answered.
    pub fn stale_if_error(
        &self,
        pending: &Pending,
        status: Option<StatusCode>,
    ) -> Option<Response<ProxyBody>> {
        let now = SystemTime::now();
        let stored = pending.stale_if_error(now)?;
        self.stats.stale.fetch_add(1, Relaxed);
        let late = stored.stale_for(now).unwrap_or_default().as_secs();
        let fwd_status = status.map_or(String::new(), |s| format!("; fwd-status={}", s.as_u16()));
        Some(self.serve_with(
            stored,
            stored.head_at(now),
            &pending.conditionals,
            false,
            pending.head,
            "STALE",
            &format!("wasmgate; fwd=stale{fwd_status}; ttl=-{late}; detail=stale-if-error"),
        ))
    }

    /// Takes the upstream's answer to a miss: a `304` to the cache's own
    /// revalidation renews the stored answer (which is served); otherwise,
    /// if it may be stored, its body is teed into the cache as it streams
    /// to the client.
    pub fn answer(
        self: &Arc<Self>,
        mut pending: Box<Pending>,
        route: &RouteCacheConfig,
        mut resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let forward = pending.forward.name();
        if resp.status() == StatusCode::NOT_MODIFIED
            && pending.validators.is_some()
            && let Some(renewed) = self.renew(&mut pending, &resp)
        {
            return renewed;
        }
        if pending.head || resp.status() == StatusCode::NOT_MODIFIED {
            // Nothing to store: a HEAD's answer, or a 304 to the client's
            // own conditional request.
            self.mark(
                resp.headers_mut(),
                "MISS",
                &format!("wasmgate; fwd={forward}"),
            );
            return resp;
        }
        let stored = self.try_store(&mut pending, route, &mut resp);
        let status = if stored {
            format!("wasmgate; fwd={forward}; stored")
        } else {
            self.stats.not_stored.fetch_add(1, Relaxed);
            // Not storable: misses of this key skip the lock for a while
            // (not for a failure, which says nothing of the next answer).
            if let Some(lock) = pending.lock.as_mut()
                && !resp.status().is_server_error()
            {
                lock.uncacheable();
            }
            format!("wasmgate; fwd={forward}")
        };
        let simple = if pending.forward == Forward::Stale {
            "EXPIRED"
        } else {
            "MISS"
        };
        self.mark(resp.headers_mut(), simple, &status);
        resp
    }

    /// The stored answer renewed by the upstream's `304`, served.
    fn renew(
        self: &Arc<Self>,
        pending: &mut Pending,
        resp: &Response<ProxyBody>,
    ) -> Option<Response<ProxyBody>> {
        let stale = pending.stale.clone()?;
        let mut head = http::Response::new(());
        *head.status_mut() = resp.status();
        *head.headers_mut() = resp.headers().clone();
        let now = SystemTime::now();
        let (policy, parts) = match stale.policy.after_response(&pending.request, &head, now) {
            AfterResponse::NotModified(policy, parts) => (policy, parts),
            AfterResponse::Modified(..) => {
                // A 304 for other validators than the stored answer's: the
                // client did not ask for it, so it gets the stored answer,
                // left as it is.
                drop(pending.lock.take());
                return Some(self.serve_with(
                    &stale,
                    stale.head_at(now),
                    &pending.conditionals,
                    false,
                    pending.head,
                    "EXPIRED",
                    "wasmgate; fwd=stale; fwd-status=304",
                ));
            }
        };
        self.stats.revalidated.fetch_add(1, Relaxed);
        let mut headers = parts.headers;
        headers.remove(header::AGE);
        let renewed = Arc::new(Stored::new(
            policy,
            stale.status,
            headers,
            stale.body.clone(),
            stale.size,
            stale.tags.clone(),
            &pending.request.headers,
            now,
        ));
        self.insert(
            &pending.key,
            &pending.request,
            renewed.clone(),
            pending.budget,
        );
        drop(pending.lock.take());
        Some(self.serve_with(
            &renewed,
            renewed.head_at(now),
            &pending.conditionals,
            false,
            pending.head,
            "REVALIDATED",
            "wasmgate; fwd=stale; fwd-status=304; stored",
        ))
    }

    fn try_store(
        self: &Arc<Self>,
        pending: &mut Pending,
        route: &RouteCacheConfig,
        resp: &mut Response<ProxyBody>,
    ) -> bool {
        let h = resp.headers();
        if !rules::cacheable_status(resp.status())
            || (!route.store_set_cookie && h.contains_key(header::SET_COOKIE))
            || rules::vary_star(h)
            || body::declared_len(resp).is_some_and(|n| n > self.max_entry as u64)
        {
            return false;
        }
        let now = SystemTime::now();
        let options = CacheOptions {
            shared: true,
            cache_heuristic: 0.0,
            immutable_min_time_to_live: Duration::ZERO,
            ignore_cargo_cult: false,
        };
        // What the policy judges: the response's head, with the route's
        // default freshness when it says nothing of its own, and the age
        // its Date shows.
        let mut judged = http::Response::new(());
        *judged.status_mut() = resp.status();
        *judged.headers_mut() = resp.headers().clone();
        let jh = judged.headers_mut();
        if let Some(ttl) = route.default_ttl
            && !rules::explicit_freshness(jh)
        {
            let cc = match jh.get(header::CACHE_CONTROL) {
                Some(v) => format!(
                    "{}, max-age={}",
                    v.to_str().unwrap_or_default(),
                    ttl.as_secs()
                ),
                None => format!("max-age={}", ttl.as_secs()),
            };
            if let Ok(v) = HeaderValue::from_str(&cc) {
                jh.insert(header::CACHE_CONTROL, v);
            }
        }
        let age = rules::initial_age(jh, now);
        if !age.is_zero() {
            jh.insert(header::AGE, HeaderValue::from(age.as_secs()));
        }
        if route.store_set_cookie {
            // Stored without it: a cookie is one client's, never replayed
            // to others (the client whose miss this is still gets it).
            jh.remove(header::SET_COOKIE);
        }
        let mut req = copy_head(&pending.request, pending.request.method.clone());
        if route.store_authorized {
            // The route allows it: judged as if the request carried none.
            req.headers.remove(header::AUTHORIZATION);
        }
        let (judged, ()) = judged.into_parts();
        let policy = CachePolicy::new_options(&req, &judged, now, options);
        if !policy.is_storable() {
            return false;
        }
        let mut headers = judged.headers;
        headers.remove(header::AGE);
        let head_size: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 8)
            .sum();
        let tags = rules::tags(&headers, &self.tag_header);
        let stored = Stored::new(
            policy,
            resp.status(),
            headers,
            Bytes::new(),
            head_size * 2 + 512,
            tags,
            &req.headers,
            now,
        );
        if stored.keep(now).is_zero() {
            // Stale on arrival, with nothing to revalidate and no stale
            // serving: of no use.
            return false;
        }
        let cache = self.clone();
        let key = pending.key.clone();
        let lock = pending.lock.take();
        let budget = pending.budget;
        body::tee(
            resp.body_mut(),
            self.max_entry,
            Box::new(move |bytes: Option<Bytes>| {
                match bytes {
                    Some(body) => {
                        let stored = Stored {
                            size: stored.size + body.len(),
                            body,
                            ..stored
                        };
                        cache.insert(&key, &req, Arc::new(stored), budget);
                    }
                    None => {
                        cache.stats.not_stored.fetch_add(1, Relaxed);
                    }
                }
                // Stored (or not): the waiters look again.
                drop(lock);
            }),
        )
    }

    fn insert(&self, key: &Arc<Key>, req: &Parts, stored: Arc<Stored>, budget: Option<u64>) {
        let now = SystemTime::now();
        let old = self.entries.get(key);
        let mut variants: Vec<Arc<Stored>> = old
            .as_ref()
            .map(|e| {
                e.variants
                    .iter()
                    // The new answer replaces the variants it stands for
                    // (the same Vary values) and those of no more use.
                    .filter(|v| {
                        !v.keep(now).is_zero()
                            && !matches!(
                                v.policy.before_request(req, now),
                                BeforeRequest::Fresh(_)
                                    | BeforeRequest::Stale { matches: true, .. }
                            )
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        variants.insert(0, stored);
        variants.truncate(MAX_VARIANTS);
        let size = key.size() + variants.iter().map(|s| s.size).sum::<usize>();
        let keep = variants
            .iter()
            .map(|v| v.keep(now))
            .max()
            .unwrap_or_default();
        if let Some(budget) = budget {
            if size as u64 > budget {
                self.stats.not_stored.fetch_add(1, Relaxed);
                return;
            }
            let incoming = size.saturating_sub(old.as_ref().map_or(0, |e| e.size)) as u64;
            self.make_room(&self.budgets, &key.tenant, budget, incoming, key);
        }
        self.entries.insert(
            key.clone(),
            Arc::new(Entry {
                variants,
                value: None,
                size,
                keep,
            }),
        );
        self.budgets.added(&key.tenant, key, size as u64, |k| {
            self.entries.contains_key(k)
        });
        self.stats.stores.fetch_add(1, Relaxed);
    }
}

/// The request as the cache judges it: a `GET` of the key's host and
/// target, however it came (HTTP/1.1 or 2, origin or absolute form).
///
/// It carries none of the client's conditionals: those are the client's
/// question, answered by the gateway from what it serves, and must not mix
/// with the stored answer's own validators when it is revalidated.
fn judged_request(parts: &Parts, key: &Key) -> Parts {
    let mut request = copy_head(parts, http::Method::GET);
    rules::take_conditionals(&mut request.headers);
    if let Ok(host) = HeaderValue::from_str(&key.host) {
        request.headers.insert(header::HOST, host);
    }
    if let Ok(uri) = key.path_and_query.parse() {
        request.uri = uri;
    }
    request
}

/// A copy of a request's head (method, target, headers) with `method`.
fn copy_head(req: &Parts, method: http::Method) -> Parts {
    let mut copy = http::Request::new(());
    *copy.method_mut() = method;
    *copy.uri_mut() = req.uri.clone();
    *copy.version_mut() = req.version;
    *copy.headers_mut() = req.headers.clone();
    copy.into_parts().0
}
