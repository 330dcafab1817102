//! Upstream clusters: endpoints, balancing, health, retries, limits, and the
//! pooled keep-alive client that carries requests to them.
//!
//! ```text
//! forward ─▶ circuit breaker ─▶ pick (balancer over usable endpoints) ─▶ try ─┐
//!               ▲                                                             │
//!               └──── retry (policy, budget, backoff, another endpoint) ◀─────┘
//! ```
//! - [`balancer`]: round robin (weighted), least request, ring hash, random.
//! - [`endpoint`]: per-endpoint requests in flight, active-check state and
//!   passive outlier ejection.
//! - [`health`]: the active checker; [`dns`]: re-resolution of host names.
//! - [`client`]: the hyper client over TLS and a counting connector that
//!   enforces `max_connections`.
//!
//! An endpoint is usable when its active checks pass and it is not ejected.
//! With fewer usable endpoints than `panic_threshold` percent of all (but at
//! least one), requests spread over all of them, as Envoy's panic mode does;
//! with none, the cluster fails fast with 503.

pub mod balancer;
pub mod client;
pub mod dns;
pub mod endpoint;
pub mod guard;
pub mod health;
pub mod pool;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;

use crate::body::{self, ProxyBody};
use crate::error::GatewayError;
use balancer::{Cursor, EndpointSet, Filter};
use client::{ConnectionLimit, Overflow, ServerNames, UpstreamClient};
use endpoint::{ActiveGuard, Clock, Endpoint, Outcome, Verdict};
use wasmgate_config::cluster::{ClusterConfig, HashOn, RetryOn, UpstreamProtocol};
use wasmgate_metrics::{ClusterLabels, EndpointLabels, Metrics, OverflowLabels};

/// A named group of endpoints.
#[derive(Debug)]
pub struct Cluster {
    name: Arc<str>,
    pub config: ClusterConfig,
    set: ArcSwap<EndpointSet>,
    cursor: Cursor,
    clock: Clock,
    scheme: Scheme,
    /// The version requests are sent with: hyper refuses an HTTP/2 request on
    /// an HTTP/1.1 connection, and upgrades an HTTP/1.1 one on an h2 connection.
    version: http::Version,
    /// ALPN may pick h2 (`auto`).
    may_negotiate_h2: bool,
    client: UpstreamClient,
    connections: Arc<ConnectionLimit>,
    names: Arc<ServerNames>,
    active: Arc<AtomicUsize>,
    retrying: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    labels: ClusterLabels,
    /// A tenant's cluster: where it may connect.
    reach: Option<guard::Reach>,
}

/// A request body as the cluster gets it: kept (so a retry can send it
/// again) or streamed once.
#[derive(Debug)]
pub enum RequestBody {
    /// The whole body (and trailers), small enough to keep.
    Replayable(body::Kept),
    /// A body that can be sent only once.
    Once(ProxyBody),
}

/// A response and where it came from.
#[derive(Debug)]
pub struct Forwarded {
    /// The upstream's response.
    pub response: Response<Incoming>,
    /// The endpoint that answered.
    pub endpoint: Arc<Endpoint>,
    /// Keeps the request counted (endpoint and cluster) until dropped; hold
    /// it until the response body is done.
    pub hold: RequestHold,
}

/// See [`Forwarded::hold`].
#[derive(Debug)]
pub struct RequestHold {
    /// Dropped first: the connection goes back to its pool before the
    /// request stops counting as in flight.
    _connection: Option<pool::Lease>,
    _endpoint: ActiveGuard,
    _cluster: ClusterGuard,
}

impl RequestHold {
    /// The response was read to its end: its connection may go back to
    /// its pool when this is dropped (one dropped half read does not).
    pub fn complete(&mut self) {
        if let Some(c) = self._connection.as_mut() {
            c.complete();
        }
    }
}

#[derive(Debug)]
struct ClusterGuard(Arc<AtomicUsize>);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Cluster {
    /// Builds a cluster from its config; host names among the endpoints are
    /// resolved by `resolver` (see [`dns`]).
    pub async fn new(
        name: &str,
        tenant: &wasmgate_config::TenantId,
        config: &ClusterConfig,
        metrics: &Arc<Metrics>,
        resolver: &dyn dns::Resolve,
        reach: Option<guard::Reach>,
    ) -> Result<Cluster, String> {
        let built = client::build(config, reach.clone())?;
        let endpoints = dns::initial_endpoints(name, config, resolver).await;
        let cluster = Cluster {
            name: Arc::from(name),
            set: ArcSwap::from_pointee(EndpointSet::new(Vec::new(), config.balance)),
            cursor: Cursor::default(),
            clock: Clock::new(),
            scheme: if config.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            version: match config.protocol {
                UpstreamProtocol::H2 | UpstreamProtocol::H2c => http::Version::HTTP_2,
                UpstreamProtocol::Http1 | UpstreamProtocol::Auto => http::Version::HTTP_11,
            },
            may_negotiate_h2: config.protocol == UpstreamProtocol::Auto,
            client: built.client,
            connections: built.connections,
            names: built.names,
            active: Arc::new(AtomicUsize::new(0)),
            retrying: Arc::new(AtomicUsize::new(0)),
            metrics: metrics.clone(),
            labels: ClusterLabels {
                tenant: tenant.as_str().to_owned(),
                cluster: name.to_owned(),
            },
            config: config.clone(),
            reach,
        };
        cluster.replace_endpoints(endpoints);
        Ok(cluster)
    }

    /// Swaps in a new endpoint list; endpoints that stay keep their state.
    pub(crate) fn replace_endpoints(&self, fresh: Vec<(Authority, Arc<str>, u32)>) {
        let old = self.set.load();
        let endpoints: Vec<Arc<Endpoint>> = fresh
            .into_iter()
            .map(|(authority, origin, weight)| {
                old.endpoints
                    .iter()
                    .find(|e| e.authority == authority && e.weight == weight)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(authority, origin, weight)))
            })
            .collect();
        let mut names = std::collections::HashMap::new();
        for e in &endpoints {
            let host = e.origin.rsplit_once(':').map_or(&*e.origin, |(h, _)| h);
            if host != e.authority.host()
                && let Ok(n) = rustls::pki_types::ServerName::try_from(host.to_owned())
            {
                names.insert(e.authority.to_string(), n);
            }
        }
        self.names.set(names);
        self.set
            .store(Arc::new(EndpointSet::new(endpoints, self.config.balance)));
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.set.load().endpoints.clone()
    }

    /// The cluster's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Whether requests can be upgraded (WebSocket): only over HTTP/1.1.
    pub fn supports_upgrade(&self) -> bool {
        self.version == http::Version::HTTP_11 && !self.may_negotiate_h2
    }

    /// Whether a failed try may ever be retried (so the body is worth keeping).
    pub fn retries(&self) -> bool {
        self.config.retry.retries > 0
    }

    /// Largest request body kept for a retry.
    pub fn retry_body_limit(&self) -> usize {
        self.config.retry.body_limit
    }

    /// The `ring_hash` key of a request, if the cluster hashes and the
    /// request carries the key.
    pub fn hash_key(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Option<u64> {
        let on = self.config.hash_on.as_ref()?;
        match on {
            HashOn::Header(h) => headers.get(h).map(|v| balancer::hash(v.as_bytes())),
            HashOn::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(n, _)| n == name)
                .map(|(_, v)| balancer::hash(v.as_bytes())),
            HashOn::ClientIp => client.map(|ip| balancer::hash(ip.to_string().as_bytes())),
        }
    }

    /// Brings the sampled gauges up to date (at scrape time).
    pub fn sample_metrics(&self) {
        let m = &self.metrics;
        m.upstream_connections
            .get_or_create(&self.labels)
            .set(self.connections.open());
        m.upstream_active_requests
            .get_or_create(&self.labels)
            .set(self.active.load(Ordering::Relaxed) as i64);
        let now = self.clock.now_ms();
        for e in self.set.load().endpoints.iter() {
            let l = EndpointLabels {
                tenant: self.labels.tenant.clone(),
                cluster: self.labels.cluster.clone(),
                endpoint: e.authority.to_string(),
            };
            m.upstream_endpoint_healthy
                .get_or_create(&l)
                .set(i64::from(e.is_healthy(now)));
            m.upstream_endpoint_active
                .get_or_create(&l)
                .set(e.active() as i64);
        }
    }

    /// Health as the admin API shows it.
    pub fn health_report(&self) -> serde_json::Value {
        let now = self.clock.now_ms();
        let endpoints: Vec<_> = self
            .set
            .load()
            .endpoints
            .iter()
            .map(|e| {
                serde_json::json!({
                    "address": e.authority.as_str(),
                    "from": &*e.origin,
                    "weight": e.weight,
                    "healthy": e.is_healthy(now),
                    "check_passing": e.check_passing(),
                    "ejected": e.is_ejected(now),
                    "active_requests": e.active(),
                })
            })
            .collect();
        serde_json::json!({
            "name": &*self.name,
            "balance": format!("{:?}", self.config.balance),
            "protocol": format!("{:?}", self.config.protocol),
            "tls": self.config.tls.is_some(),
            "active_requests": self.active.load(Ordering::Relaxed),
            "open_connections": self.connections.open(),
            "endpoints": endpoints,
        })
    }

    pub(crate) fn client(&self) -> &UpstreamClient {
        &self.client
    }

    pub(crate) fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Counts an ejection decision.
    fn note(&self, e: &Endpoint, verdict: Verdict) {
        if let Verdict::Ejected(length) = verdict {
            self.metrics
                .upstream_ejections
                .get_or_create(&self.labels)
                .inc();
            tracing::warn!(
                cluster = &*self.name,
                endpoint = e.authority.as_str(),
                "endpoint ejected for {length:?} (outlier detection)"
            );
        }
    }

    /// Whether the ejection cap leaves room for one more.
    fn may_eject(&self, set: &EndpointSet, now: u64) -> bool {
        let total = set.endpoints.len();
        let ejected = set.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let cap = (total * usize::from(self.config.outlier.max_ejected_percent) / 100).max(1);
        ejected < cap
    }

    /// Sends a request to one of the endpoints, retrying as the policy
    /// allows. The request's URI carries the path and query; the endpoint's
    /// authority is filled in here.
    pub async fn forward(
        &self,
        parts: http::request::Parts,
        body: RequestBody,
        key: Option<u64>,
    ) -> Result<Forwarded, UpstreamFailure> {
        let active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        let cluster_guard = ClusterGuard(self.active.clone());
        if let Some(max) = self.config.circuit_breaker.max_requests
            && active > max
        {
            return Err(self.overflow("max_requests"));
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let policy = &self.config.retry;
        let idempotent = is_idempotent(&parts.method);
        let (mut body, replay) = match body {
            RequestBody::Replayable(b) => (None, Some(b)),
            RequestBody::Once(b) => (Some(b), None),
        };
        let mut parts = Some(parts);
        // A request a try gave back unsent (no connection could be made).
        let mut pending: Option<Request<ProxyBody>> = None;
        // Whether a try may follow one that sent the request, which then
        // needs the head again.
        let resend_after_sent = (idempotent
            && policy.on.iter().any(|r| {
                matches!(
                    r,
                    RetryOn::Reset
                        | RetryOn::PerTryTimeout
                        | RetryOn::FiveXx
                        | RetryOn::GatewayError
                )
            }))
            || policy.on.contains(&RetryOn::RefusedStream);
        let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
        // Held while a retry (its backoff and its try) is in flight.
        let mut _retry_slot: Option<ClusterGuard> = None;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let set = self.set.load_full();
            let now = self.clock.now_ms();
            let Some(idx) = self.choose(&set, key, &tried, now) else {
                self.metrics
                    .upstream_no_healthy
                    .get_or_create(&self.labels)
                    .inc();
                return Err(UpstreamFailure::NoHealthy);
            };
            tried.push(idx);
            let endpoint = set.endpoints[idx].clone();
            let guard = endpoint.begin();
            // This try's request: one that came back unsent from the last
            // try, or one made from the head (a copy only when a try after
            // this one could need it again: the endpoint may answer or
            // fail after the request left).
            let req = match pending.take() {
                Some(unsent) => unsent,
                None => {
                    let keep = attempt <= policy.retries && replay.is_some() && resend_after_sent;
                    let p = if keep {
                        parts.as_ref().map(copy_parts)
                    } else {
                        parts.take()
                    };
                    let Some(mut p) = p else {
                        return Err(UpstreamFailure::Other("request already sent".into()));
                    };
                    p.uri = Uri::from(path.clone());
                    let b = match (&replay, body.take()) {
                        (Some(kept), _) => kept.to_body(),
                        (None, Some(b)) => b,
                        (None, None) => {
                            return Err(UpstreamFailure::Other("request body already sent".into()));
                        }
                    };
                    Request::from_parts(p, b)
                }
            };
            let sent = self.client.send(endpoint.pool(), &endpoint.authority, req);
            let result = match policy.per_try_timeout {
                Some(t) => match tokio::time::timeout(t, sent).await {
                    Ok(r) => r.map_err(TryError::Http),
                    Err(_) => Err(TryError::Timeout(t)),
                },
                None => sent.await.map_err(TryError::Http),
            };
            let now = self.clock.now_ms();
            let (retry_on, outcome, failure): (Option<RetryOn>, Outcome, Option<UpstreamFailure>) =
                match result {
                    Ok((response, connection)) => {
                        let status = response.status().as_u16();
                        let verdict = endpoint.record_outcome(
                            Outcome::Status(status),
                            &self.config.outlier,
                            now,
                            || self.may_eject(&set, now),
                        );
                        self.note(&endpoint, verdict);
                        let why = if (502..=504).contains(&status)
                            && policy.on.contains(&RetryOn::GatewayError)
                        {
                            Some(RetryOn::GatewayError)
                        } else if status >= 500 && policy.on.contains(&RetryOn::FiveXx) {
                            Some(RetryOn::FiveXx)
                        } else {
                            None
                        };
                        let another = attempt <= policy.retries && parts.is_some();
                        let slot = match why {
                            Some(_) if another && idempotent => {
                                // This request's previous retry frees its place first.
                                _retry_slot = None;
                                self.retry_slot()
                            }
                            _ => None,
                        };
                        match (why, slot) {
                            (Some(why), Some(slot)) => {
                                tracing::debug!(
                                    cluster = &*self.name,
                                    endpoint = endpoint.authority.as_str(),
                                    status,
                                    "retrying after {why:?}"
                                );
                                drop(response);
                                drop(connection);
                                drop(guard);
                                _retry_slot = Some(slot);
                                self.backoff(attempt).await;
                                continue;
                            }
                            _ => {
                                return Ok(Forwarded {
                                    response,
                                    endpoint,
                                    hold: RequestHold {
                                        _connection: connection,
                                        _endpoint: guard,
                                        _cluster: cluster_guard,
                                    },
                                });
                            }
                        }
                    }
                    Err(TryError::Timeout(after)) => (
                        Some(RetryOn::PerTryTimeout),
                        // A slow upload can run out the clock as well as a
                        // slow endpoint: not counted against it.
                        Outcome::Inconclusive,
                        Some(UpstreamFailure::Timeout {
                            endpoint: endpoint.authority.clone(),
                            after,
                        }),
                    ),
                    Err(TryError::Http(mut e)) => {
                        if let client::SendError::Connect { request, .. } = &mut e {
                            pending = request.take().map(|r| *r);
                        }
                        if let Some(o) = find_source::<Overflow>(&e) {
                            return Err(self.overflow(o.0));
                        }
                        if let Some(d) = find_source::<guard::AddressDenied>(&e) {
                            return Err(self.denied(d));
                        }
                        if matches!(e, client::SendError::Connect { .. }) {
                            (
                                Some(RetryOn::ConnectFailure),
                                Outcome::ConnectFailure,
                                Some(UpstreamFailure::Connect {
                                    endpoint: endpoint.authority.clone(),
                                    detail: error_chain(&e),
                                }),
                            )
                        } else if find_source::<hyper::Error>(&e).is_some_and(|h| h.is_user()) {
                            // The request's own body failed (the client went
                            // away or sent too much): neither the endpoint's
                            // fault nor retryable.
                            (
                                None,
                                Outcome::Inconclusive,
                                Some(UpstreamFailure::Exchange {
                                    endpoint: endpoint.authority.clone(),
                                    detail: error_chain(&e),
                                }),
                            )
                        } else {
                            let refused = find_source::<h2::Error>(&e)
                                .is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM));
                            (
                                Some(if refused {
                                    RetryOn::RefusedStream
                                } else {
                                    RetryOn::Reset
                                }),
                                if refused {
                                    Outcome::Status(503)
                                } else {
                                    Outcome::Reset
                                },
                                Some(UpstreamFailure::Exchange {
                                    endpoint: endpoint.authority.clone(),
                                    detail: error_chain(&e),
                                }),
                            )
                        }
                    }
                };
            let verdict = endpoint.record_outcome(outcome, &self.config.outlier, now, || {
                self.may_eject(&set, now)
            });
            self.note(&endpoint, verdict);
            drop(guard);
            let failure = failure.unwrap_or_else(|| UpstreamFailure::Other("no answer".into()));
            let never_reached = matches!(
                retry_on,
                Some(RetryOn::ConnectFailure | RetryOn::RefusedStream)
            );
            let allowed =
                retry_on.is_some_and(|r| policy.on.contains(&r)) && (never_reached || idempotent);
            let can_resend = pending.is_some() || (replay.is_some() && parts.is_some());
            if attempt > policy.retries || !allowed || !can_resend {
                return Err(failure);
            }
            _retry_slot = None;
            let Some(slot) = self.retry_slot() else {
                return Err(failure);
            };
            _retry_slot = Some(slot);
            tracing::debug!(cluster = &*self.name, "retrying: {failure}");
            self.backoff(attempt).await;
        }
    }

    /// Chooses a usable endpoint not tried yet (or, when all usable ones
    /// were tried, any usable one).
    fn choose(
        &self,
        set: &EndpointSet,
        key: Option<u64>,
        tried: &[usize],
        now: u64,
    ) -> Option<usize> {
        let total = set.endpoints.len();
        // Active checks failing everywhere is evidence enough: fail fast.
        if !set.endpoints.iter().any(|e| e.check_passing()) {
            return None;
        }
        let healthy = set.endpoints.iter().filter(|e| e.is_healthy(now)).count();
        let threshold = usize::from(self.config.panic_threshold);
        let panic = threshold > 0 && healthy * 100 < total * threshold;
        let usable = |e: &Endpoint| panic || e.is_healthy(now);
        let pick = |tried: &[usize]| {
            let filter = Filter {
                usable: &usable,
                tried,
            };
            balancer::pick(set, self.config.balance, &self.cursor, key, &filter)
        };
        pick(tried).or_else(|| pick(&[]))
    }

    /// A place for one more retry in flight, if the budget has one: retries
    /// in flight may be `budget_percent` of the requests in flight, and
    /// `min_retry_concurrency` always.
    fn retry_slot(&self) -> Option<ClusterGuard> {
        let policy = &self.config.retry;
        let active = self.active.load(Ordering::Relaxed);
        let cap = (active * usize::from(policy.budget_percent) / 100)
            .max(policy.min_retry_concurrency as usize);
        let taken = self.retrying.fetch_add(1, Ordering::AcqRel);
        let slot = ClusterGuard(self.retrying.clone());
        if taken >= cap {
            drop(slot);
            self.metrics
                .upstream_retry_budget_exhausted
                .get_or_create(&self.labels)
                .inc();
            return None;
        }
        self.metrics
            .upstream_retries
            .get_or_create(&self.labels)
            .inc();
        Some(slot)
    }

    /// Waits before a retry: exponential with full jitter.
    async fn backoff(&self, attempt: u32) {
        let policy = &self.config.retry;
        let cap = policy
            .backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(policy.max_backoff);
        let wait = Duration::from_micros(fastrand::u64(..=cap.as_micros() as u64));
        tokio::time::sleep(wait).await;
    }

    fn denied(&self, d: &guard::AddressDenied) -> UpstreamFailure {
        tracing::warn!(cluster = %self.name, "{d}");
        self.metrics
            .upstream_address_denied
            .get_or_create(&wasmgate_metrics::TenantClusterLabels {
                tenant: d.tenant.as_str().to_owned(),
                cluster: self.labels.cluster.clone(),
            })
            .inc();
        UpstreamFailure::Denied
    }

    /// Where the cluster may connect, when it is a tenant's.
    pub fn reach(&self) -> Option<&guard::Reach> {
        self.reach.as_ref()
    }

    fn overflow(&self, limit: &'static str) -> UpstreamFailure {
        self.metrics
            .upstream_overflow
            .get_or_create(&OverflowLabels {
                tenant: self.labels.tenant.clone(),
                cluster: self.labels.cluster.clone(),
                limit,
            })
            .inc();
        UpstreamFailure::Overflow(limit)
    }
}

enum TryError {
    Http(client::SendError),
    Timeout(Duration),
}

fn copy_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// How forwarding failed. Its text is for the log (it may name the
/// endpoint); [`UpstreamFailure::to_gateway_error`] is what the client sees.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFailure {
    /// No connection could be made to the endpoint.
    #[error("connect to {endpoint} failed: {detail}")]
    Connect {
        /// The endpoint tried.
        endpoint: Authority,
        /// The error chain.
        detail: String,
    },
    /// The connection failed during the exchange.
    #[error("exchange with {endpoint} failed: {detail}")]
    Exchange {
        /// The endpoint tried.
        endpoint: Authority,
        /// The error chain.
        detail: String,
    },
    /// No answer within the per-try timeout.
    #[error("{endpoint} did not answer within {after:?}")]
    Timeout {
        /// The endpoint tried.
        endpoint: Authority,
        /// The timeout.
        after: Duration,
    },
    /// No endpoint is healthy.
    #[error("no healthy endpoint")]
    NoHealthy,
    /// A circuit-breaker limit was reached.
    #[error("circuit breaker: {0} reached")]
    Overflow(&'static str),
    /// A tenant's cluster named an address its tenant may not reach.
    #[error("the address is not one this tenant may reach")]
    Denied,
    /// The request could not be built.
    #[error("{0}")]
    Other(String),
}

impl UpstreamFailure {
    /// Whether the same request may succeed if the client sends it again
    /// later: the cluster was down, busy or slow, rather than the request
    /// being one it cannot send.
    pub fn retryable(&self) -> bool {
        !matches!(self, UpstreamFailure::Other(_) | UpstreamFailure::Denied)
    }

    /// The client-facing error. It names the cluster, never endpoint addresses.
    pub fn to_gateway_error(&self, cluster: &str) -> GatewayError {
        use http::StatusCode;
        match self {
            UpstreamFailure::Connect { .. } => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!("cluster {cluster:?} is unreachable"),
            ),
            UpstreamFailure::Exchange { .. } => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("cluster {cluster:?} failed to answer"),
            ),
            UpstreamFailure::Timeout { after, .. } => GatewayError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("cluster {cluster:?} did not answer within {after:?}"),
            ),
            UpstreamFailure::NoHealthy => GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_upstream",
                format!("cluster {cluster:?} has no healthy endpoint"),
            ),
            UpstreamFailure::Overflow(limit) => GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_overloaded",
                format!("cluster {cluster:?} is at its {limit} limit"),
            ),
            UpstreamFailure::Denied => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_address_denied",
                format!("cluster {cluster:?} points where this tenant may not connect"),
            ),
            UpstreamFailure::Other(_) => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("the request for cluster {cluster:?} could not be sent"),
            ),
        }
    }
}
