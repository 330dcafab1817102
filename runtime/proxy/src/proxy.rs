//! The request path: route, run the filter chain's request side, forward to the
//! cluster, run the response side in reverse, answer.
//!
//! ```text
//! request ─▶ route ─▶ on-request 1..n ─▶ upstream ─▶ on-response n..1 ─▶ client
//!                         │ respond(r)                      ▲
//!                         └──── on-response of filters before it ──┘
//! ```
//! A filter failure (trap, CPU budget, memory cap, invalid decision) fails the
//! request it served with a 500 in the standard error format and a log line
//! naming route and filter; nothing else is affected.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::access_log::{AccessLog, Entry, LoggedBody};
use crate::body::{self, ProxyBody};
use crate::chain::{self, ChainFilter};
use crate::error::GatewayError;
use crate::forwarding::{ClientView, Forwarding};
use crate::normalize::{PathError, PathPolicy, normalize_path};
use crate::router::{RequestView, RouteTable, TenantId, normalize_host};
use crate::upstream::{Cluster, Forwarded, RequestBody, UpstreamFailure};
use wasmgate_engine::{FilterFailure, wit};
use wasmgate_metrics::{Metrics, RequestLabels, RouteLabels, status_class};

/// Metric handles of one route, created once.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Requests to the route's own cluster by status class (1xx…5xx).
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// Handles for `route` forwarding to `cluster`.
    pub fn new(metrics: &Metrics, route: &str, cluster: &str) -> RouteMetrics {
        let class = |c: &str| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: route.to_owned(),
                    cluster: cluster.to_owned(),
                    status_class: c.to_owned(),
                })
                .clone()
        };
        RouteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: metrics
                .request_duration
                .get_or_create(&RouteLabels {
                    route: route.to_owned(),
                })
                .clone(),
        }
    }
}

/// How far a request got, for the answer when the request timeout cuts it off.
#[derive(Debug, Default)]
struct Progress {
    route: Option<Arc<Route>>,
    request_id: Option<http::HeaderValue>,
}

/// What the request path knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address: the socket's peer, or the one a PROXY protocol
    /// header named.
    pub peer: SocketAddr,
    /// The TLS handshake's choices, on a TLS listener.
    pub tls: Option<crate::tls::TlsInfo>,
    /// The connection's place under `max_connections` and the listener's
    /// shutdown signal; an upgraded tunnel takes both over.
    pub hold: Option<ConnHold>,
}

/// See [`ConnInfo::hold`].
#[derive(Debug, Clone)]
pub struct ConnHold {
    /// Released when the connection and any tunnel made from it are gone.
    pub slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    /// Becomes true when the gateway shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// A route with everything the request path needs.
#[derive(Debug)]
pub struct Route {
    /// Metric handles.
    pub metrics: RouteMetrics,
    /// The route's name.
    pub name: Arc<str>,
    /// What the route does after its filters (unless a filter picks
    /// another cluster or answers itself).
    pub target: RouteTarget,
    /// The filter chain in request order.
    pub chain: Vec<ChainFilter>,
    /// The route's `path_prefix`, if it has one (without a trailing slash).
    pub path_prefix: Option<String>,
    /// Replaces `path_prefix` in the path when forwarding.
    pub prefix_rewrite: Option<String>,
    /// Time the upstream part (every try) may take.
    pub timeout: Option<std::time::Duration>,
}

/// A route's action with its clusters resolved.
#[derive(Debug)]
pub enum RouteTarget {
    /// One cluster.
    Cluster(Arc<Cluster>),
    /// Clusters in proportion to their weights.
    Split(Split),
    /// A redirect made by the gateway.
    Redirect(wasmgate_config::route_config::Redirect),
    /// A response made by the gateway.
    Respond(wasmgate_config::route_config::Respond),
}

/// A weighted split: a smooth weighted round-robin order over the clusters,
/// so the proportions hold exactly over every cycle.
#[derive(Debug)]
pub struct Split {
    clusters: Vec<Arc<Cluster>>,
    order: Vec<u32>,
    next: AtomicU64,
}

impl Split {
    /// A split over `clusters` with their weights.
    pub fn new(clusters: Vec<(Arc<Cluster>, u32)>) -> Split {
        let weights: Vec<u32> = clusters.iter().map(|(_, w)| *w).collect();
        Split {
            order: crate::upstream::balancer::smooth_order(&weights),
            clusters: clusters.into_iter().map(|(c, _)| c).collect(),
            next: AtomicU64::new(0),
        }
    }

    /// `[{cluster, weight}]` for the admin API.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        self.clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let weight = self.order.iter().filter(|&&o| o as usize == i).count();
                serde_json::json!({ "cluster": &**c.name(), "share": weight })
            })
            .collect()
    }

    fn pick(&self) -> &Arc<Cluster> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.order.len();
        &self.clusters[self.order[i] as usize]
    }
}

impl Route {
    /// The cluster this request goes to, if the route forwards.
    fn pick(&self) -> Option<&Arc<Cluster>> {
        match &self.target {
            RouteTarget::Cluster(c) => Some(c),
            RouteTarget::Split(s) => Some(s.pick()),
            RouteTarget::Redirect(_) | RouteTarget::Respond(_) => None,
        }
    }

    /// The cluster the route's pre-made metric handles are labelled with.
    pub fn primary(&self) -> Option<&Arc<Cluster>> {
        match &self.target {
            RouteTarget::Cluster(c) => Some(c),
            _ => None,
        }
    }

    /// The response of a redirect or direct-response route.
    fn local_response(&self, parts: &Parts, scheme: &str) -> Response<ProxyBody> {
        match &self.target {
            RouteTarget::Redirect(r) => redirect(r, self.path_prefix.as_deref(), parts, scheme),
            RouteTarget::Respond(r) => {
                let mut resp = Response::new(body::full(bytes::Bytes::from(r.body.clone())));
                *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
                for (n, v) in &r.headers {
                    resp.headers_mut().append(n.clone(), v.clone());
                }
                resp
            }
            RouteTarget::Cluster(_) | RouteTarget::Split(_) => {
                GatewayError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no target")
                    .into_response(None)
            }
        }
    }

    /// Replaces the matched prefix with `prefix_rewrite`, keeping the query.
    fn rewrite_path(&self, parts: &mut Parts) {
        let (Some(prefix), Some(replacement)) = (&self.path_prefix, &self.prefix_rewrite) else {
            return;
        };
        let Some(rest) = parts.uri.path().strip_prefix(prefix.as_str()) else {
            return;
        };
        let mut path = format!("{replacement}{rest}");
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        if let Some(q) = parts.uri.query() {
            path.push('?');
            path.push_str(q);
        }
        if let Ok(pq) = path.parse::<http::uri::PathAndQuery>() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(pq);
            if let Ok(u) = http::Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
    }
}

/// `cluster` when it is not the one the route's metric handles are
/// labelled with.
fn rerouted<'a>(route: &Route, cluster: Option<&'a Arc<Cluster>>) -> Option<&'a Arc<Cluster>> {
    match (cluster, route.primary()) {
        (Some(c), Some(p)) if Arc::ptr_eq(c, p) => None,
        (c, _) => c,
    }
}

/// Builds a redirect's `Location` from the request and the route's rule.
fn redirect(
    r: &wasmgate_config::route_config::Redirect,
    route_prefix: Option<&str>,
    parts: &Parts,
    scheme: &str,
) -> Response<ProxyBody> {
    let authority = authority_of(parts).unwrap_or_default();
    // `host[:port]`, where host may be a bracketed IPv6 literal.
    let (req_host, req_port) = match authority.rfind(':') {
        Some(i)
            if authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && !authority[..i].is_empty()
                && (!authority.starts_with('[') || authority[..i].ends_with(']')) =>
        {
            (&authority[..i], Some(&authority[i + 1..]))
        }
        _ => (authority, None),
    };
    let new_scheme = r.scheme.as_deref().unwrap_or(scheme);
    // The request's host goes into `Location`: only a plain host (no user
    // info, no path), or `https://example.com@evil.test/` would redirect
    // off-site.
    if r.host.is_none()
        && (req_host.is_empty()
            || req_host.contains(['@', '/', '\\', '?', '#', ' '])
            || req_host.parse::<http::uri::Authority>().is_err())
    {
        return GatewayError::bad_request("the request's host cannot be used in a redirect")
            .into_response(None);
    }
    let host = r.host.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.host, r.scheme.as_deref()) {
        (Some(p), _, _) => Some(p.to_string()),
        (None, None, None) => req_port.map(str::to_owned),
        _ => None,
    };
    let path = parts.uri.path();
    let new_path = match (&r.path, &r.prefix, route_prefix) {
        (Some(p), _, _) => p.clone(),
        (None, Some(replacement), Some(prefix)) => {
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
            if joined.is_empty() {
                "/".to_owned()
            } else {
                joined
            }
        }
        _ => path.to_owned(),
    };
    let mut location = format!("{new_scheme}://{host}");
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p);
    }
    location.push_str(&new_path);
    if !r.strip_query
        && let Some(q) = parts.uri.query()
    {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    match http::HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => {
            GatewayError::bad_request("the redirect target is not a valid URL").into_response(None)
        }
    }
}

/// The generation new requests are served by. The control plane stores a
/// new one; the server loads it once per request (never per connection), so
/// a request runs wholly on the generation current when it arrived.
pub type Current = arc_swap::ArcSwap<Proxy>;

/// One generation of the routing state the request path reads.
#[derive(Debug)]
pub struct Proxy {
    pub(crate) routes: RouteTable<Route>,
    /// Every cluster of this generation, by name.
    pub clusters: std::collections::HashMap<String, Arc<Cluster>>,
    tenant: TenantId,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    access_log_target: Option<wasmgate_config::access_log::AccessLogTarget>,
    policy: Policy,
}

/// The listener-wide rules the request path applies.
#[derive(Debug)]
pub struct Policy {
    /// How paths are made canonical.
    pub path: PathPolicy,
    /// The forwarding headers.
    pub forwarding: Forwarding,
    /// Request limits.
    pub limits: Limits,
    /// The listener's TLS terminator, for the 421 check.
    pub tls: Option<Arc<crate::tls::TlsTerminator>>,
    /// The gateway-wide overload guard.
    pub overload: Arc<crate::overload::OverloadGuard>,
}

impl Proxy {
    /// A generation of these routes and clusters.
    pub fn new(
        routes: RouteTable<Route>,
        clusters: std::collections::HashMap<String, Arc<Cluster>>,
        metrics: Arc<Metrics>,
        access_log: Option<(wasmgate_config::access_log::AccessLogTarget, AccessLog)>,
        policy: Policy,
    ) -> Proxy {
        let (access_log_target, access_log) = access_log.unzip();
        Proxy {
            routes,
            clusters,
            tenant: TenantId::default_tenant(),
            ids: RequestIds::new(),
            metrics,
            access_log,
            access_log_target,
            policy,
        }
    }

    /// Where this generation's access log writes.
    pub fn access_log_target(&self) -> Option<&wasmgate_config::access_log::AccessLogTarget> {
        self.access_log_target.as_ref()
    }

    /// This generation's access log writer.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// Handles one request from `peer`. Never fails: every error becomes a
    /// response in the standard error format.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<LoggedBody<ProxyBody>> {
        let started = Instant::now();
        let mut entry = self.access_log.as_ref().map(|_| Entry {
            tenant: TenantId::DEFAULT,
            method: req.method().as_str().to_owned(),
            ..Entry::default()
        });
        let mut progress = Progress::default();
        let resp = match tokio::time::timeout(
            self.policy.limits.request_timeout,
            self.handle_inner(req, conn, started, &mut entry, &mut progress),
        )
        .await
        {
            Ok(resp) => resp,
            Err(_) => {
                let request_id = progress
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let mut resp = GatewayError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "request_timeout",
                    format!(
                        "no response within the request timeout of {:?}",
                        self.policy.limits.request_timeout
                    ),
                )
                .into_response(Some(request_id));
                if let Some(id) = progress.request_id.take() {
                    self.policy
                        .forwarding
                        .apply_response(resp.headers_mut(), &id);
                }
                self.record(progress.route.as_deref(), None, 504, started);
                resp
            }
        };
        let log = match (&self.access_log, entry) {
            (Some(log), Some(mut e)) => {
                e.status = resp.status().as_u16();
                Some((log.clone(), e, started))
            }
            _ => None,
        };
        resp.map(|b| LoggedBody::new(b, log))
    }

    async fn handle_inner(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        started: Instant,
        entry: &mut Option<Entry>,
        progress: &mut Progress,
    ) -> Response<ProxyBody> {
        let id = self.ids.next();
        let pressure = self.policy.overload.pressure();
        if pressure != crate::overload::Pressure::None {
            self.metrics
                .overload_shed
                .get_or_create(&wasmgate_metrics::ConnErrorLabels {
                    kind: pressure.as_str(),
                })
                .inc();
            let mut resp = GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "the gateway is shedding load ({} pressure); retry shortly",
                    pressure.as_str()
                ),
            )
            .into_response(Some(&id.to_string()));
            let h = resp.headers_mut();
            h.insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            h.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            self.record(None, None, 503, started);
            return resp;
        }
        let (mut parts, body) = req.into_parts();
        if let Err(refusal) = self.precheck(&mut parts) {
            // Every refusal here closes the connection: a client that sends
            // what a proxy must refuse gets no second try on it.
            let mut resp = refusal.into_response(Some(&id.to_string()));
            resp.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            self.record(None, None, resp.status().as_u16(), started);
            return resp;
        }
        let upgrade = websocket_upgrade(&parts);
        let te_trailers = wants_trailers(&parts.headers);
        if parts.version == http::Version::HTTP_11
            && parts.headers.contains_key(header::TRANSFER_ENCODING)
        {
            parts.extensions.insert(ChunkedRequest);
        }
        strip_hop_by_hop(&mut parts.headers);
        keep_te_trailers(&mut parts.headers, te_trailers);
        if let Some(protocol) = upgrade {
            parts.headers.insert(
                header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            parts.headers.insert(header::UPGRADE, protocol);
            if let Some(hold) = &conn.hold {
                parts.extensions.insert(hold.clone());
            }
        }
        // HTTP/2 carries the host in `:authority`, an absolute-form HTTP/1.1
        // request in its target; either wins over a `Host` header (RFC 9112
        // §3.2.2), so what is routed and judged is what the upstream sees.
        if let Some(authority) = parts.uri.authority()
            && let Ok(v) = http::HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        let view = self.policy.forwarding.apply_request(
            &mut parts.headers,
            conn.peer,
            if conn.tls.is_some() { "https" } else { "http" },
            || {
                http::HeaderValue::from_bytes(&id.hex())
                    .unwrap_or_else(|_| http::HeaderValue::from_static("invalid-request-id"))
            },
        );
        progress.request_id = Some(view.request_id.clone());
        let request_id = view.request_id.to_str().unwrap_or_default();
        if let Some(e) = entry.as_mut() {
            e.path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            e.client = view.client_addr();
            request_id.clone_into(&mut e.request_id);
            e.trace_id = view.trace_id.clone();
        }
        let host = authority_of(&parts).and_then(normalize_host);
        if let (Some(info), Some(tls), Some(host)) = (&conn.tls, &self.policy.tls, host.as_deref())
            && tls.misdirected(info, host)
        {
            let resp = GatewayError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                format!(
                    "this connection was set up for {:?}; open a new one for {host:?}",
                    info.sni.as_deref().unwrap_or_default()
                ),
            )
            .into_response(Some(request_id));
            self.record(None, None, resp.status().as_u16(), started);
            return resp;
        }
        let route = {
            self.routes
                .find(
                    &self.tenant,
                    host.as_deref(),
                    &parts.method,
                    parts.uri.path(),
                    RequestView {
                        headers: &parts.headers,
                        query: parts.uri.query(),
                    },
                )
                .cloned()
        };
        progress.route.clone_from(&route);
        let mut resp = match route {
            None => {
                let resp = GatewayError::route_not_found().into_response(Some(request_id));
                self.record(None, None, resp.status().as_u16(), started);
                resp
            }
            // The lean path: nothing to copy, nothing to call.
            Some(route) if route.chain.is_empty() => {
                if let Some(e) = entry.as_mut() {
                    e.route = Some(route.name.clone());
                }
                let cluster = route.pick();
                let resp = self
                    .dispatch(
                        &route,
                        cluster,
                        parts,
                        ForwardBody::Stream(body),
                        &view,
                        entry,
                    )
                    .await;
                self.record(
                    Some(&route),
                    rerouted(&route, cluster),
                    resp.status().as_u16(),
                    started,
                );
                resp
            }
            Some(route) => {
                if let Some(e) = entry.as_mut() {
                    e.route = Some(route.name.clone());
                }
                // Boxed: the filter path's state is large, and keeping it out
                // of this future keeps the lean path's future small (hyper
                // moves it into place for every request).
                let (resp, cluster) =
                    Box::pin(self.handle_chain(&route, parts, body, &view, entry)).await;
                self.record(
                    Some(&route),
                    cluster.as_ref(),
                    resp.status().as_u16(),
                    started,
                );
                resp
            }
        };
        self.policy
            .forwarding
            .apply_response(resp.headers_mut(), &view.request_id);
        resp
    }

    /// The checks before anything else: the canonical path, unambiguous
    /// framing, and a declared body within the limit.
    fn precheck(&self, parts: &mut Parts) -> Result<(), GatewayError> {
        self.canonical_path(parts)
            .map_err(|e| GatewayError::bad_request(e.to_string()))?;
        check_framing(parts).map_err(GatewayError::bad_request)?;
        if let Some(len) = declared_length(&parts.headers)
            && len > self.policy.limits.max_request_body as u64
        {
            // Refused before reading: hyper sends no `100 Continue` for a body
            // nobody polls.
            return Err(GatewayError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_body_too_large",
                format!(
                    "the request body of {len} bytes exceeds the limit of {} bytes",
                    self.policy.limits.max_request_body
                ),
            ));
        }
        Ok(())
    }

    /// The gateway-wide overload guard.
    pub fn overload(&self) -> &Arc<crate::overload::OverloadGuard> {
        &self.policy.overload
    }

    /// Every route, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        self.routes.routes()
    }

    /// The gateway's metrics, with sampled gauges brought up to date.
    pub fn metrics_text(&self) -> String {
        for c in self.clusters.values() {
            c.sample_metrics();
        }
        for route in self.routes.routes() {
            for f in &route.chain {
                let canary_idle = f.canary.as_ref().map_or(0, |(_, a)| a.pool.stats().idle);
                f.stable.pool.sample_metrics(canary_idle);
            }
        }
        self.metrics.encode()
    }

    /// Counts a request. `cluster` is set when a filter sent it to another
    /// cluster than the route's own.
    fn record(
        &self,
        route: Option<&Route>,
        cluster: Option<&Arc<Cluster>>,
        status: u16,
        started: Instant,
    ) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        match (route, cluster) {
            (Some(r), None) => {
                r.metrics.by_class[class].inc();
                r.metrics.duration.observe(started.elapsed().as_secs_f64());
            }
            (Some(r), Some(c)) => {
                self.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        route: r.name.to_string(),
                        cluster: c.name().to_string(),
                        status_class: status_class(status).to_owned(),
                    })
                    .inc();
                r.metrics.duration.observe(started.elapsed().as_secs_f64());
            }
            (None, _) => {
                self.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        route: String::new(),
                        cluster: String::new(),
                        status_class: status_class(status).to_owned(),
                    })
                    .inc();
            }
        }
    }

    /// Picks each filter's version once, as the request enters the chain,
    /// runs the chain, and counts the request for the versions that ran.
    async fn handle_chain(
        &self,
        route: &Arc<Route>,
        parts: Parts,
        body: Incoming,
        view: &ClientView,
        entry: &mut Option<Entry>,
    ) -> (Response<ProxyBody>, Option<Arc<Cluster>>) {
        let request_id = view.request_id.to_str().unwrap_or_default();
        let picks: smallvec::SmallVec<[chain::Pick<'_>; 4]> = route
            .chain
            .iter()
            .map(|f| f.pick(&parts.headers, request_id))
            .collect();
        let (resp, cluster) = self
            .handle_with_filters(route, parts, body, view, entry, &picks)
            .await;
        for pick in &picks {
            pick.finish(resp.status().as_u16());
        }
        (resp, cluster)
    }

    async fn handle_with_filters(
        &self,
        route: &Arc<Route>,
        mut parts: Parts,
        body: Incoming,
        view: &ClientView,
        entry: &mut Option<Entry>,
        picks: &[chain::Pick<'_>],
    ) -> (Response<ProxyBody>, Option<Arc<Cluster>>) {
        let request_id = view.request_id.to_str().unwrap_or_default();
        let meta = wit::RequestMeta {
            request_id: request_id.to_owned(),
            route: route.name.to_string(),
            client_addr: view.client_addr(),
            tls: view.scheme == "https",
            received_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mut cluster: Option<Arc<Cluster>> = route.pick().cloned();
        let mut contexts: Vec<Option<Vec<u8>>> = Vec::with_capacity(route.chain.len());
        let mut short_circuit = None;
        // Built once; each call gets only the headers its filter declared, and
        // the request line is refreshed after edits.
        let mut wreq = wit::Request {
            method: String::new(),
            scheme: view.scheme.to_owned(),
            authority: String::new(),
            path_with_query: String::new(),
            headers: Vec::new(),
            body: None,
            meta,
        };
        sync_request_line(&mut wreq, &parts);

        // A filter that asked for the request body gets it whole, read just
        // before that filter runs: filters before it (authentication, say)
        // decide first, and no `100 Continue` goes out until then.
        let mut body = Some(body);
        let mut kept: Option<body::Kept> = None;

        // Request side.
        let mut skipped = vec![false; route.chain.len()];
        // Outbound calls each filter made for this request (its budget spans
        // both phases).
        let mut outbound_used = vec![0u32; route.chain.len()];
        for (i, f) in route.chain.iter().enumerate() {
            let arm = picks[i].arm;
            if arm.needs.request_body
                && let Some(b) = body.take()
            {
                let limits = &self.policy.limits;
                let limit = limits.max_buffered_body.min(limits.max_request_body);
                match Box::pin(body::collect(b, limit)).await {
                    Ok(k) => kept = Some(k),
                    Err(e) => return (refuse_body(e, request_id, limit), None),
                }
            }
            wreq.headers = arm.needs.request_headers.copy(&parts.headers);
            wreq.body = match (&kept, arm.needs.request_body) {
                (Some(k), true) => Some(k.data.to_vec()),
                _ => None,
            };
            picks[i].ran();
            let decision = match arm.pool.on_request(&wreq, &mut outbound_used[i]).await {
                Ok(d) => d,
                Err(failure) => {
                    picks[i].failed();
                    note(entry, f, failure.code());
                    if self.fail_open(route, f, &failure, request_id) {
                        skipped[i] = true;
                        contexts.push(None);
                        continue;
                    }
                    return (filter_failed(&route.name, f, &failure, request_id), None);
                }
            };
            let outcome = match &decision {
                wit::RequestDecision::Proceed(_) => "proceed",
                wit::RequestDecision::Respond(_) => "respond",
            };
            note(entry, f, outcome);
            match decision {
                wit::RequestDecision::Proceed(p) => {
                    let edited = self.apply_request_edits(
                        &mut parts,
                        &mut cluster,
                        &p.edits,
                        arm.needs.request_body,
                    );
                    if let (Ok(()), Some(b), Some(k)) = (&edited, &p.edits.body, kept.as_mut()) {
                        k.data = bytes::Bytes::from(b.clone());
                    }
                    if let Err(failure) = edited {
                        picks[i].failed();
                        if self.fail_open(route, f, &failure, request_id) {
                            skipped[i] = true;
                            contexts.push(None);
                            continue;
                        }
                        return (filter_failed(&route.name, f, &failure, request_id), None);
                    }
                    sync_request_line(&mut wreq, &parts);
                    contexts.push(p.context);
                }
                wit::RequestDecision::Respond(r) => match chain::build_response(r) {
                    Ok(resp) => {
                        contexts.push(None);
                        short_circuit = Some((i, resp));
                        break;
                    }
                    Err(failure) => {
                        picks[i].failed();
                        if self.fail_open(route, f, &failure, request_id) {
                            skipped[i] = true;
                            contexts.push(None);
                            continue;
                        }
                        return (filter_failed(&route.name, f, &failure, request_id), None);
                    }
                },
            }
        }

        // The request as forwarded, for the response side.
        wreq.headers.clear();
        wreq.body = None;
        let forwarded: Vec<Option<wit::Request>> = picks
            .iter()
            .zip(&skipped)
            .map(|(pick, skipped)| {
                let needs = &pick.arm.needs;
                (needs.wants_response && !skipped).then(|| wit::Request {
                    headers: needs.request_headers.copy(&parts.headers),
                    ..wreq.clone()
                })
            })
            .collect();

        let (mut resp, seen_by) = match short_circuit {
            Some((i, resp)) => (resp, i),
            None => {
                let fwd = match (kept, body) {
                    (Some(k), _) => ForwardBody::Kept(k),
                    (None, Some(b)) => ForwardBody::Stream(b),
                    (None, None) => unreachable!("the body is either kept or still streaming"),
                };
                let resp = self
                    .dispatch(route, cluster.as_ref(), parts, fwd, view, entry)
                    .await;
                (resp, route.chain.len())
            }
        };

        // A filter that asked for the response body gets it whole (not for
        // HEAD, whose response has none).
        let mut resp_body: Option<bytes::Bytes> = None;
        let mut resp_trailers: Option<HeaderMap> = None;
        if wreq.method != "HEAD"
            && (0..seen_by).any(|i| forwarded[i].is_some() && picks[i].arm.needs.response_body)
        {
            let limit = self.policy.limits.max_buffered_body;
            let (rparts, rbody) = resp.into_parts();
            match body::collect(rbody, limit).await {
                Ok(kept) => {
                    resp = Response::from_parts(rparts, body::empty());
                    chain::set_body(&mut resp, kept.data.clone());
                    resp_body = Some(kept.data);
                    resp_trailers = kept.trailers;
                }
                Err(e) => {
                    let (code, message) = match e {
                        body::FirstFrameError::TooLarge => (
                            "upstream_body_too_large",
                            format!(
                                "the response body exceeds the buffering limit of {limit} bytes"
                            ),
                        ),
                        body::FirstFrameError::Invalid(d) => (
                            "upstream_error",
                            format!("the response body could not be read: {d}"),
                        ),
                    };
                    tracing::warn!(route = &*route.name, request_id, "{message}");
                    let resp = GatewayError::new(StatusCode::BAD_GATEWAY, code, message)
                        .into_response(Some(request_id));
                    return (resp, rerouted(route, cluster.as_ref()).cloned());
                }
            }
        }

        // Response side, in reverse, for the filters that saw the request.
        for i in (0..seen_by).rev() {
            let f = &route.chain[i];
            let arm = picks[i].arm;
            let Some(wreq) = &forwarded[i] else { continue };
            let wresp = wit::Response {
                status: resp.status().as_u16(),
                headers: arm.needs.response_headers.copy(resp.headers()),
                body: match (&resp_body, arm.needs.response_body) {
                    (Some(b), true) => Some(b.to_vec()),
                    _ => None,
                },
            };
            let context = contexts.get(i).and_then(|c| c.as_deref());
            let decision = match arm
                .pool
                .on_response(wreq, &wresp, context, &mut outbound_used[i])
                .await
            {
                Ok(d) => d,
                Err(failure) => {
                    picks[i].failed();
                    note(entry, f, failure.code());
                    if self.fail_open(route, f, &failure, request_id) {
                        continue;
                    }
                    return (filter_failed(&route.name, f, &failure, request_id), None);
                }
            };
            let outcome = match &decision {
                wit::ResponseDecision::Proceed(_) => "response-proceed",
                wit::ResponseDecision::Replace(_) => "response-replace",
            };
            note(entry, f, outcome);
            let applied = match decision {
                wit::ResponseDecision::Proceed(edits) => {
                    let applied =
                        chain::apply_response_edits(&mut resp, &edits, arm.needs.response_body);
                    if let (Ok(()), Some(b)) = (&applied, edits.body) {
                        resp_body = Some(bytes::Bytes::from(b));
                    }
                    applied
                }
                wit::ResponseDecision::Replace(r) => {
                    let replaced_body = r.body.clone().map(bytes::Bytes::from);
                    chain::build_response(r).map(|r| {
                        resp = r;
                        // A filter-made response has no trailers.
                        resp_trailers = None;
                        if resp_body.is_some() {
                            resp_body = Some(replaced_body.unwrap_or_default());
                        }
                    })
                }
            };
            if let Err(failure) = applied {
                picks[i].failed();
                if self.fail_open(route, f, &failure, request_id) {
                    continue;
                }
                return (filter_failed(&route.name, f, &failure, request_id), None);
            }
        }
        // The upstream's trailers (gRPC status, say) follow the final body.
        if let (Some(data), Some(trailers)) = (resp_body, resp_trailers) {
            *resp.body_mut() = body::Kept {
                data,
                trailers: Some(trailers),
            }
            .to_body();
        }
        let rerouted = rerouted(route, cluster.as_ref()).cloned();
        (resp, rerouted)
    }

    /// Under `fail-open`, logs and counts a failure and says to skip the
    /// filter; under `fail-closed` (the default) says to fail the request.
    fn fail_open(
        &self,
        route: &Route,
        f: &ChainFilter,
        failure: &FilterFailure,
        request_id: &str,
    ) -> bool {
        if !f.fail_open {
            return false;
        }
        let filter = &**f.name();
        tracing::warn!(
            route = &*route.name,
            filter,
            code = failure.code(),
            request_id,
            "filter {filter:?} on route {:?} {failure}; skipped (fail-open)",
            route.name
        );
        self.metrics
            .filter_fail_open
            .get_or_create(&wasmgate_metrics::FilterLabels {
                filter: filter.to_owned(),
                route: route.name.to_string(),
            })
            .inc();
        true
    }

    /// Replaces the request's path with its canonical form (see
    /// [`crate::normalize`]); the query is kept as sent.
    fn canonical_path(&self, parts: &mut Parts) -> Result<(), PathError> {
        let path = parts.uri.path();
        let normalized = match normalize_path(path, self.policy.path)? {
            Cow::Borrowed(_) => return Ok(()),
            Cow::Owned(p) => p,
        };
        let pq = match parts.uri.query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(pq.parse().map_err(|_| PathError::BadEscape)?);
        parts.uri = http::Uri::from_parts(uri).map_err(|_| PathError::BadEscape)?;
        Ok(())
    }

    /// The route's last step: forward to `cluster` (with the prefix
    /// rewritten), or, when there is none, the route's own redirect or
    /// response.
    async fn dispatch(
        &self,
        route: &Route,
        cluster: Option<&Arc<Cluster>>,
        mut parts: Parts,
        body: ForwardBody,
        view: &ClientView,
        entry: &mut Option<Entry>,
    ) -> Response<ProxyBody> {
        match cluster {
            Some(c) => {
                route.rewrite_path(&mut parts);
                let forwarded = self.forward(route, c, parts, body, view, entry);
                match route.timeout {
                    None => forwarded.await,
                    Some(t) => match tokio::time::timeout(t, forwarded).await {
                        Ok(resp) => resp,
                        Err(_) => GatewayError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream_timeout",
                            format!(
                                "cluster {:?} did not answer within the route's timeout of {t:?}",
                                &**c.name()
                            ),
                        )
                        .into_response(view.request_id.to_str().ok()),
                    },
                }
            }
            None => route.local_response(&parts, view.scheme),
        }
    }

    /// Sends the request to `cluster` and returns its response with
    /// hop-by-hop headers removed, or the standard error.
    async fn forward(
        &self,
        route: &Route,
        cluster: &Arc<Cluster>,
        parts: Parts,
        body: ForwardBody,
        view: &ClientView,
        entry: &mut Option<Entry>,
    ) -> Response<ProxyBody> {
        let request_id = view.request_id.to_str().unwrap_or_default();
        let client_ip = view.forwarded_client.unwrap_or(view.peer.ip());
        if let Some(e) = entry.as_mut() {
            e.cluster = Some(cluster.name().clone());
        }
        let mut parts = parts;
        // The client's side of an upgrade; the upstream request must not carry it.
        let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let mut tunnel_hold = parts.extensions.remove::<ConnHold>();
        let upgrading = parts.headers.contains_key(header::UPGRADE);
        if upgrading && !cluster.supports_upgrade() {
            // HTTP/2 to the upstream has no Upgrade: send a plain request.
            parts.headers.remove(header::CONNECTION);
            parts.headers.remove(header::UPGRADE);
        }
        let limit = self.policy.limits.max_request_body;
        let chunked = parts.extensions.remove::<ChunkedRequest>().is_some();
        let body = match body {
            ForwardBody::Kept(kept) => {
                // The body went through filters and may have changed.
                parts.headers.remove(header::TRANSFER_ENCODING);
                if !kept.data.is_empty() || parts.headers.contains_key(header::CONTENT_LENGTH) {
                    parts.headers.insert(
                        header::CONTENT_LENGTH,
                        http::HeaderValue::from(kept.data.len()),
                    );
                }
                RequestBody::Replayable(kept)
            }
            ForwardBody::Stream(body) if hyper::body::Body::is_end_stream(&body) => {
                RequestBody::Replayable(body::Kept::default())
            }
            ForwardBody::Stream(body)
                if cluster.retries()
                    && !upgrading
                    && declared_length(&parts.headers)
                        .is_some_and(|n| n <= cluster.retry_body_limit() as u64) =>
            {
                // Small enough to keep for a retry.
                match Box::pin(body::collect(body, limit)).await {
                    Ok(b) => RequestBody::Replayable(b),
                    Err(e) => return refuse_body(e, request_id, limit),
                }
            }
            ForwardBody::Stream(body) if chunked => match body::stream_checked(body, limit).await {
                Ok(b) => RequestBody::Once(b),
                Err(e) => return refuse_body(e, request_id, limit),
            },
            ForwardBody::Stream(body) => RequestBody::Once(body::stream(body, limit)),
        };
        let key = cluster.hash_key(&parts.headers, Some(client_ip));
        // Boxed (as hyper-util boxes its own request future): the try loop's
        // state is large, and every future that holds it inline is moved
        // into place by value for every request.
        match Box::pin(cluster.forward(parts, body, key)).await {
            Ok(Forwarded {
                response: mut resp,
                endpoint,
                hold,
                ..
            }) => {
                if let Some(e) = entry.as_mut() {
                    e.endpoint = Some(endpoint.authority.to_string());
                }
                let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                let protocol = resp.headers().get(header::UPGRADE).cloned();
                if switching {
                    let websocket = protocol
                        .as_ref()
                        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
                    match (upgrading && websocket, client_upgrade) {
                        (true, Some(client)) => {
                            let upstream = hyper::upgrade::on(&mut resp);
                            tokio::spawn(tunnel(
                                client,
                                upstream,
                                self.policy.limits.tunnel_idle_timeout,
                                request_id.to_owned(),
                                self.metrics.clone(),
                                tunnel_hold.take(),
                            ));
                        }
                        _ => {
                            tracing::warn!(
                                route = &*route.name,
                                cluster = &**cluster.name(),
                                request_id,
                                "upstream: 101 Switching Protocols to a request that asked for no upgrade, or to another protocol than WebSocket"
                            );
                            return UpstreamFailure::Other("unexpected 101".into())
                                .to_gateway_error(cluster.name())
                                .into_response(Some(request_id));
                        }
                    }
                }
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                if let (true, Some(protocol)) = (switching, protocol) {
                    rparts.headers.insert(
                        header::CONNECTION,
                        http::HeaderValue::from_static("upgrade"),
                    );
                    rparts.headers.insert(header::UPGRADE, protocol);
                }
                Response::from_parts(rparts, body::stream_holding(rbody, hold))
            }
            Err(failure) => {
                tracing::warn!(
                    route = &*route.name,
                    cluster = &**cluster.name(),
                    request_id,
                    "upstream: {failure}"
                );
                failure
                    .to_gateway_error(cluster.name())
                    .into_response(Some(request_id))
            }
        }
    }

    fn apply_request_edits(
        &self,
        parts: &mut Parts,
        cluster: &mut Option<Arc<Cluster>>,
        edits: &wit::RequestEdits,
        body_buffered: bool,
    ) -> Result<(), FilterFailure> {
        if edits.body.is_some() && !body_buffered {
            return Err(FilterFailure::InvalidDecision(
                "a request body edit needs buffer-request-body in filter-info".into(),
            ));
        }
        // Validate everything first, so a rejected decision changes nothing.
        let method = edits
            .method
            .as_deref()
            .map(chain::parse_method)
            .transpose()?;
        let path = edits
            .path_with_query
            .as_deref()
            .map(chain::parse_path)
            .transpose()?;
        let new_cluster = match &edits.cluster {
            Some(name) => Some(self.clusters.get(name).cloned().ok_or_else(|| {
                FilterFailure::InvalidDecision(format!("cluster {name:?} does not exist"))
            })?),
            None => None,
        };
        let edits_host = edits
            .headers
            .set
            .iter()
            .chain(&edits.headers.append)
            .any(|(n, _)| n.eq_ignore_ascii_case("host"));
        if edits_host {
            // Several `Host` headers would let the upstream and the gateway
            // disagree on the target (RFC 9112 §3.2): refused as a whole.
            let mut trial = parts.headers.clone();
            chain::apply_header_edits(&mut trial, &edits.headers)?;
            if trial.get_all(http::header::HOST).iter().count() > 1 {
                return Err(FilterFailure::InvalidDecision(
                    "the header edits leave several Host headers".into(),
                ));
            }
            parts.headers = trial;
        } else {
            chain::apply_header_edits(&mut parts.headers, &edits.headers)?;
        }
        if let Some(m) = method {
            parts.method = m;
        }
        if let Some(p) = path {
            parts.uri = http::Uri::from(p);
        }
        if let Some(c) = new_cluster {
            *cluster = Some(c);
        }
        Ok(())
    }
}

/// Rejects what the HTTP parser lets through but a proxy must not forward:
/// ambiguous framing (both `Transfer-Encoding` and `Content-Length`, several
/// `Content-Length` headers) and a missing or repeated `Host` on HTTP/1.1.
fn check_framing(parts: &Parts) -> Result<(), &'static str> {
    let h = &parts.headers;
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err("both Transfer-Encoding and Content-Length are present");
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err("more than one Content-Length header");
    }
    let hosts = h.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err("more than one Host header");
    }
    if parts.version == http::Version::HTTP_11 && hosts == 0 && parts.uri.authority().is_none() {
        return Err("HTTP/1.1 request without a Host header");
    }
    Ok(())
}

/// The `Content-Length` a request declares, if any.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Limits the request path enforces, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request body accepted (413 past it).
    pub max_request_body: usize,
    /// Longest time from request head to response head (504 past it).
    pub request_timeout: std::time::Duration,
    /// An upgraded connection (WebSocket) with no bytes either way for this
    /// long is closed.
    pub tunnel_idle_timeout: std::time::Duration,
    /// Largest body buffered for filters.
    pub max_buffered_body: usize,
}

/// A request body on its way to the upstream.
#[derive(Debug)]
enum ForwardBody {
    /// Streamed from the client.
    Stream(Incoming),
    /// Read whole for filters (and possibly replaced by one).
    Kept(body::Kept),
}

/// Adds `filter:outcome` to the access log entry, if logging.
fn note(entry: &mut Option<Entry>, f: &ChainFilter, outcome: &str) {
    if let Some(e) = entry.as_mut() {
        e.filters.push(format!("{}:{outcome}", f.name()));
    }
}

fn filter_failed(
    route: &str,
    f: &ChainFilter,
    failure: &FilterFailure,
    request_id: &str,
) -> Response<ProxyBody> {
    let filter = &**f.name();
    tracing::error!(
        route,
        filter,
        code = failure.code(),
        request_id,
        "filter {filter:?} on route {route:?} {failure}"
    );
    let status = match failure {
        FilterFailure::Instantiate(_)
        | FilterFailure::PoolExhausted { .. }
        | FilterFailure::Quarantined(_) => StatusCode::SERVICE_UNAVAILABLE,
        FilterFailure::WallClock(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    GatewayError::new(status, failure.code(), format!("filter {filter:?} failed"))
        .into_response(Some(request_id))
}

fn authority_of(parts: &Parts) -> Option<&str> {
    if let Some(a) = parts.uri.authority() {
        return Some(a.as_str());
    }
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// Makes the WIT request's method, authority and path match `parts`,
/// allocating only for what changed.
fn sync_request_line(wreq: &mut wit::Request, parts: &Parts) {
    fn sync(field: &mut String, value: &str) {
        if field != value {
            value.clone_into(field);
        }
    }
    sync(&mut wreq.method, parts.method.as_str());
    sync(&mut wreq.authority, authority_of(parts).unwrap_or_default());
    sync(
        &mut wreq.path_with_query,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
    );
}

/// Marks a request whose body is chunked (HTTP/1.1 `Transfer-Encoding`, which
/// hop-by-hop stripping removes): its first chunk is read before forwarding.
#[derive(Debug, Clone, Copy)]
struct ChunkedRequest;

/// The answer to a request body whose first chunk could not be read: 413 past
/// the limit, 400 for broken framing; the connection is closed either way.
fn refuse_body(e: body::FirstFrameError, request_id: &str, limit: usize) -> Response<ProxyBody> {
    let err = match e {
        body::FirstFrameError::TooLarge => GatewayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_body_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        ),
        body::FirstFrameError::Invalid(detail) => {
            GatewayError::bad_request(format!("invalid request body: {detail}"))
        }
    };
    let mut resp = err.into_response(Some(request_id));
    resp.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// The protocol of an HTTP/1.1 WebSocket upgrade request (`Connection:
/// upgrade` and `Upgrade: websocket`), if it is one. Other upgrades (h2c,
/// anything unknown) are not passed on: their headers are hop-by-hop and
/// stripped, and the request goes upstream as a plain request.
fn websocket_upgrade(parts: &Parts) -> Option<http::HeaderValue> {
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let value = parts.headers.get(header::UPGRADE)?;
    (asks && value.as_bytes().eq_ignore_ascii_case(b"websocket")).then(|| value.clone())
}

/// Whether the client sent `TE: trailers` (gRPC needs it forwarded; every
/// other `TE` value is hop-by-hop and dropped).
fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

fn keep_te_trailers(headers: &mut HeaderMap, keep: bool) {
    if keep {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Splices an upgraded connection: bytes both ways until either side closes
/// or nothing moves for `idle`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: std::time::Duration,
    request_id: String,
    metrics: Arc<Metrics>,
    hold: Option<ConnHold>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(request_id, "upgrade not completed: {e}");
            return;
        }
    };
    metrics.upgrades.inc();
    metrics.active_tunnels.inc();
    let mut client = crate::idle::IdleIo::new(hyper_util::rt::TokioIo::new(client));
    let activity = client.activity();
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut shutdown = hold.as_ref().map(|h| h.shutdown.clone());
    let stopping = async {
        match shutdown.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|stop| *stop).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stopping => tracing::debug!(request_id, "tunnel closed: shutting down"),
        r = copy => match r {
            Ok((up, down)) => tracing::debug!(request_id, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(request_id, "tunnel ended: {e}"),
        },
        () = activity.idle_for(idle) => {
            tracing::debug!(request_id, "tunnel idle for {idle:?}: closed");
        }
    }
    metrics.active_tunnels.dec();
    // The connection's place under `max_connections` is released only now.
    drop(hold);
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Request ids: a random per-process prefix and a counter; unique within the
/// process and, with high probability, across processes.
#[derive(Debug)]
struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        RequestIds {
            prefix: h.finish(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> RequestId {
        RequestId {
            prefix: self.prefix,
            n: self.counter.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A request's id; rendered (32 hex digits) only when something needs the text.
#[derive(Debug, Clone, Copy)]
struct RequestId {
    prefix: u64,
    n: u64,
}

impl RequestId {
    /// 32 lower-case hex digits, without the formatting machinery (this runs
    /// for every request).
    fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, word) in [self.prefix, self.n].into_iter().enumerate() {
            for j in 0..16 {
                out[i * 16 + j] = DIGITS[((word >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        out
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or_default())
    }
}
