//! Upstream clusters: endpoints, the balancer, and the pooled keep-alive
//! client that carries requests to them.
//!
//! Every cluster shares one hyper client, whose pool keeps idle keep-alive
//! connections per endpoint. Balancing is round robin; the [`Cluster::pick`]
//! seam is where other algorithms and health state plug in.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::config::ClusterConfig;
use crate::error::GatewayError;

/// A named group of endpoints.
#[derive(Debug)]
pub struct Cluster {
    name: Arc<str>,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    client: Client<HttpConnector, ProxyBody>,
}

impl Cluster {
    /// Builds a cluster from its config.
    pub fn new(name: &str, config: &ClusterConfig) -> Cluster {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Cluster {
            name: Arc::from(name),
            endpoints: config.endpoints.clone(),
            next: AtomicUsize::new(0),
            client,
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Picks the next endpoint, round robin.
    pub fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Sends `req` to one endpoint. The request's URI must carry only a path
    /// and query; the endpoint's authority is filled in here.
    pub async fn forward(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Authority), UpstreamFailure> {
        let endpoint = self.pick().clone();
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(endpoint.clone());
        parts.path_and_query = Some(path);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|e| UpstreamFailure::Other(e.to_string()))?;
        *req.version_mut() = http::Version::HTTP_11;
        match self.client.request(req).await {
            Ok(resp) => Ok((resp, endpoint)),
            Err(e) if e.is_connect() => Err(UpstreamFailure::Connect {
                endpoint,
                detail: error_chain(&e),
            }),
            Err(e) => Err(UpstreamFailure::Exchange {
                endpoint,
                detail: error_chain(&e),
            }),
        }
    }
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

/// How forwarding failed.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// No connection could be made to the endpoint.
    Connect {
        /// The endpoint tried.
        endpoint: Authority,
        /// The error chain.
        detail: String,
    },
    /// The connection failed during the exchange.
    Exchange {
        /// The endpoint tried.
        endpoint: Authority,
        /// The error chain.
        detail: String,
    },
    /// The request could not be built.
    Other(String),
}

impl UpstreamFailure {
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
            UpstreamFailure::Other(_) => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("the request for cluster {cluster:?} could not be sent"),
            ),
        }
    }
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamFailure::Connect { endpoint, detail } => {
                write!(f, "connect to {endpoint} failed: {detail}")
            }
            UpstreamFailure::Exchange { endpoint, detail } => {
                write!(f, "exchange with {endpoint} failed: {detail}")
            }
            UpstreamFailure::Other(d) => write!(f, "{d}"),
        }
    }
}
