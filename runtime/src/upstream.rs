//! Upstream clusters: endpoints, the balancer, and the pooled keep-alive
//! client that carries requests to them.
//!
//! Each cluster has its own hyper client, whose pool keeps idle keep-alive
//! connections per endpoint. A cluster speaks HTTP/1.1, HTTP/2 over TLS
//! (`h2`), cleartext HTTP/2 (`h2c`), or whatever ALPN picks (`auto`), with
//! optional TLS (rustls, ring) verified against the system's or configured
//! roots, a fixed SNI name and a client certificate. Balancing is round
//! robin; the [`Cluster::pick`] seam is where other algorithms and health
//! state plug in.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};

use crate::body::ProxyBody;
use crate::config::{ClusterConfig, UpstreamProtocol, UpstreamTls};
use crate::error::GatewayError;

/// A named group of endpoints.
#[derive(Debug)]
pub struct Cluster {
    name: Arc<str>,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    scheme: Scheme,
    /// The version requests are sent with: hyper refuses an HTTP/2 request on
    /// an HTTP/1.1 connection, and upgrades an HTTP/1.1 one on an h2 connection.
    version: http::Version,
    /// ALPN may pick h2 (`auto`).
    may_negotiate_h2: bool,
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
}

impl Cluster {
    /// Builds a cluster from its config. Fails when a TLS file cannot be read
    /// or holds no usable certificate or key, or when the system has no roots.
    pub fn new(name: &str, config: &ClusterConfig) -> Result<Cluster, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls_config = match &config.tls {
            Some(t) => client_tls_config(t)?,
            // Never used: cleartext clusters send `http://` URIs only.
            None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config);
        let builder = match &config.tls {
            Some(_) => builder.https_only(),
            None => builder.https_or_http(),
        };
        let builder = match config.tls.as_ref().and_then(|t| t.sni.as_deref()) {
            Some(sni) => {
                let name = ServerName::try_from(sni.to_owned())
                    .map_err(|e| format!("tls.sni {sni:?}: {e}"))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        // ALPN: only what the protocol allows, so an endpoint cannot pick
        // another version than the one configured.
        let connector = match config.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
                builder.enable_http2().wrap_connector(http)
            }
            UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256);
        if matches!(
            config.protocol,
            UpstreamProtocol::H2 | UpstreamProtocol::H2c
        ) {
            client.http2_only(true);
        }
        Ok(Cluster {
            name: Arc::from(name),
            endpoints: config.endpoints.clone(),
            next: AtomicUsize::new(0),
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
            client: client.build(connector),
        })
    }

    /// Whether requests can be upgraded (WebSocket): only over HTTP/1.1.
    pub fn supports_upgrade(&self) -> bool {
        self.version == http::Version::HTTP_11 && !self.may_negotiate_h2
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
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(endpoint.clone());
        parts.path_and_query = Some(path);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|e| UpstreamFailure::Other(e.to_string()))?;
        *req.version_mut() = self.version;
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

/// The rustls client config of a TLS cluster: TLS 1.2 and 1.3, the
/// configured or the system's roots, an optional client certificate.
fn client_tls_config(t: &UpstreamTls) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca {
        Some(ca) => {
            for cert in crate::tls::load_chain(ca).map_err(|e| format!("tls.ca: {e}"))? {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.ca: {}: {e}", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(String::new, |e| format!(" ({e})"));
                return Err(format!(
                    "tls: no system root certificates found{why}; set tls.ca to a PEM file of the roots to trust"
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match &t.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain =
                crate::tls::load_chain(cert).map_err(|e| format!("tls.client_cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("tls.client_key: {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls.client_key: {e}"))
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
