//! Routes as the request path holds them: what a route matched is decided
//! by [`crate::router`]; this is what it does. A cluster (or a weighted
//! split over several), or an answer the gateway makes itself (a redirect,
//! a direct response); its prefix rewrite; its metric handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header;
use http::request::Parts;
use http::{Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::body::{self, ProxyBody};
use crate::chain::ChainFilter;
use crate::request::RequestError;
use crate::upstream::Cluster;
use wasmgate_metrics::{Metrics, RequestLabels, RouteLabels};

/// Metric handles of one route, created once.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Requests to the route's own cluster by status class (1xx…5xx).
    pub(crate) by_class: [Counter; 5],
    /// The same for each cluster of a weighted split, so a split route
    /// makes no labels and looks up no map per request.
    split: Vec<(Arc<str>, [Counter; 5])>,
    pub(crate) duration: Histogram,
}

impl RouteMetrics {
    /// Handles for `route` forwarding to `cluster` (or, for a weighted
    /// split, to each of `split`).
    pub fn new(
        metrics: &Metrics,
        tenant: &wasmgate_config::TenantId,
        route: &str,
        cluster: &str,
        split: &[Arc<str>],
    ) -> RouteMetrics {
        let classes = |cluster: &str| {
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| {
                metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        tenant: tenant.as_str().to_owned(),
                        route: route.to_owned(),
                        cluster: cluster.to_owned(),
                        status_class: c.to_owned(),
                    })
                    .clone()
            })
        };
        RouteMetrics {
            by_class: classes(cluster),
            split: split.iter().map(|c| (c.clone(), classes(c))).collect(),
            duration: metrics
                .request_duration
                .get_or_create(&RouteLabels {
                    tenant: tenant.as_str().to_owned(),
                    route: route.to_owned(),
                })
                .clone(),
        }
    }

    /// The handles for `cluster`, one of the route's split; none for a
    /// cluster a filter chose outside it.
    pub(crate) fn of_cluster(&self, cluster: &str) -> Option<&[Counter; 5]> {
        self.split
            .iter()
            .find(|(name, _)| &**name == cluster)
            .map(|(_, c)| c)
    }
}

/// A route with everything the request path needs.
#[derive(Debug)]
pub struct Route {
    /// Metric handles.
    pub metrics: RouteMetrics,
    /// The route's name, unique within its tenant.
    pub name: Arc<str>,
    /// Whose route it is.
    pub tenant: wasmgate_config::TenantId,
    /// What the route does after its filters (unless a filter picks
    /// another cluster or answers itself).
    pub target: RouteTarget,
    /// The filter chain in request order.
    pub chain: Vec<ChainFilter>,
    /// The route's `path_prefix`, if it has one (without a trailing slash).
    pub path_prefix: Option<String>,
    /// Replaces `path_prefix` in the path when forwarding.
    pub prefix_rewrite: Option<String>,
    /// Answer 400 to paths with `;` segment parameters.
    pub reject_path_parameters: bool,
    /// Time the upstream part (every try) may take.
    pub timeout: Option<std::time::Duration>,
    /// `[routes.cache]`: its answers are cached, and how.
    pub cache: Option<wasmgate_config::RouteCacheConfig>,
    /// Its tenant's quotas (none for the operator's routes).
    pub quota: Option<Arc<wasmgate_engine::TenantQuota>>,
    /// `transcode` / `grpc_web`: what it translates.
    pub translation: Option<Arc<crate::translation::Translation>>,
}

/// A route's action with its clusters resolved.
#[derive(Debug)]
pub enum RouteTarget {
    /// One cluster.
    Cluster(Arc<Cluster>),
    /// Clusters in proportion to their weights.
    Weighted(WeightedClusters),
    /// A redirect made by the gateway.
    Redirect(wasmgate_config::route_config::Redirect),
    /// A response made by the gateway.
    Respond(wasmgate_config::route_config::Respond),
}

/// A weighted split: a smooth weighted round-robin order over the clusters,
/// so the proportions hold exactly over every cycle.
#[derive(Debug)]
pub struct WeightedClusters {
    clusters: Vec<Arc<Cluster>>,
    order: Vec<u32>,
    next: AtomicU64,
}

impl WeightedClusters {
    /// A split over `clusters` with their weights.
    pub fn new(clusters: Vec<(Arc<Cluster>, u32)>) -> WeightedClusters {
        let weights: Vec<u32> = clusters.iter().map(|(_, w)| *w).collect();
        WeightedClusters {
            order: crate::upstream::balancer::smooth_order(&weights),
            clusters: clusters.into_iter().map(|(c, _)| c).collect(),
            next: AtomicU64::new(0),
        }
    }

    /// The clusters of the split.
    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
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
    pub(crate) fn pick(&self) -> Option<&Arc<Cluster>> {
        match &self.target {
            RouteTarget::Cluster(c) => Some(c),
            RouteTarget::Weighted(s) => Some(s.pick()),
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
    pub(crate) fn local_response(
        &self,
        parts: &Parts,
        scheme: &str,
    ) -> Result<Response<ProxyBody>, RequestError> {
        match &self.target {
            RouteTarget::Redirect(r) => redirect(r, self.path_prefix.as_deref(), parts, scheme),
            RouteTarget::Respond(r) => {
                let mut resp = Response::new(body::full(bytes::Bytes::from(r.body.clone())));
                *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
                for (n, v) in &r.headers {
                    resp.headers_mut().append(n.clone(), v.clone());
                }
                Ok(resp)
            }
            RouteTarget::Cluster(_) | RouteTarget::Weighted(_) => Err(RequestError::NoTarget),
        }
    }

    /// Replaces the matched prefix with `prefix_rewrite`, keeping the query.
    pub(crate) fn rewrite_path(&self, parts: &mut Parts) {
        let (Some(prefix), Some(replacement)) = (&self.path_prefix, &self.prefix_rewrite) else {
            return;
        };
        // The route matched, so the path starts with the prefix (in some
        // case, if the route is not case-sensitive).
        let path = parts.uri.path();
        let Some(rest) = path
            .get(..prefix.len())
            .filter(|head| head.eq_ignore_ascii_case(prefix))
            .and_then(|_| path.get(prefix.len()..))
        else {
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
pub(crate) fn rerouted<'a>(
    route: &Route,
    cluster: Option<&'a Arc<Cluster>>,
) -> Option<&'a Arc<Cluster>> {
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
) -> Result<Response<ProxyBody>, RequestError> {
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
        return Err(RequestError::BadRequest(
            "the request's host cannot be used in a redirect".into(),
        ));
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
            Ok(resp)
        }
        Err(_) => Err(RequestError::BadRequest(
            "the redirect target is not a valid URL".into(),
        )),
    }
}

/// The request's authority: from its target (HTTP/2, absolute form), else
/// its `Host` header (the one the engine shows filters).
pub(crate) use wasmgate_engine::edits::authority_of;
