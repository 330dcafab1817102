//! A generation of the data plane: the routes, clusters and listener-wide
//! rules the request path reads ([`Proxy`]), and the slot the server loads
//! it from ([`Current`]). The request path itself is [`crate::request`].

use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::forwarding::Forwarding;
use crate::normalize::PathPolicy;
use crate::request::RequestIds;
use crate::route::Route;
use crate::router::{RouteTable, TenantId};
use crate::upstream::Cluster;
use wasmgate_config::access_log::AccessLogTarget;
use wasmgate_metrics::Metrics;

/// What the request path knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address: the socket's peer, or the one a PROXY protocol
    /// header named.
    pub peer: std::net::SocketAddr,
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

/// Clusters by tenant, then by name within the tenant.
pub type Clusters =
    std::collections::HashMap<TenantId, std::collections::HashMap<String, Arc<Cluster>>>;

/// The generation new requests are served by. The control plane stores a
/// new one; the server loads it once per request (never per connection), so
/// a request runs wholly on the generation current when it arrived.
pub type Current = arc_swap::ArcSwap<Proxy>;

/// One generation of the routing state the request path reads.
#[derive(Debug)]
pub struct Proxy {
    pub(crate) routes: RouteTable<Route>,
    /// Every cluster of this generation, by tenant and name.
    pub clusters: Clusters,
    pub(crate) ids: RequestIds,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) access_log: Option<AccessLog>,
    access_log_target: Option<AccessLogTarget>,
    pub(crate) policy: Policy,
}

/// The listener-wide rules the request path applies.
#[derive(Debug)]
pub struct Policy {
    /// How paths are made canonical.
    pub path: PathPolicy,
    /// The forwarding headers.
    pub forwarding: Forwarding,
    /// Request limits.
    pub limits: RequestLimits,
    /// The listener's TLS terminator, for the 421 check.
    pub tls: Option<Arc<crate::tls::TlsTerminator>>,
    /// The gateway-wide overload guard.
    pub overload: Arc<crate::overload::OverloadGuard>,
    /// The response cache routes with `[routes.cache]` use.
    pub response_cache: Arc<crate::response_cache::ResponseCache>,
}

impl Proxy {
    /// A generation of these routes and clusters.
    pub fn new(
        routes: RouteTable<Route>,
        clusters: Clusters,
        metrics: Arc<Metrics>,
        access_log: Option<(AccessLogTarget, AccessLog)>,
        policy: Policy,
    ) -> Proxy {
        let (access_log_target, access_log) = access_log.unzip();
        Proxy {
            routes,
            clusters,
            ids: RequestIds::new(),
            metrics,
            access_log,
            access_log_target,
            policy,
        }
    }

    /// Where this generation's access log writes.
    pub fn access_log_target(&self) -> Option<&AccessLogTarget> {
        self.access_log_target.as_ref()
    }

    /// This generation's access log writer.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// Every route, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        self.routes.routes()
    }

    /// The gateway's metrics, with sampled gauges brought up to date.
    pub fn metrics_text(&self) -> String {
        for c in self.clusters.values().flat_map(|m| m.values()) {
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
}

/// Limits the request path enforces, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
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
