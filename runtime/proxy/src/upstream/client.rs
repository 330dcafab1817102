//! How a cluster sends a request: on a connection of the endpoint's own
//! pool ([`super::pool`]), or on a new one made by the connector stack, TLS
//! (rustls, ring) over a TCP connector that counts open connections and,
//! with `max_connections`, limits them (requests beyond wait as pending, up
//! to `max_pending`). Connections are hyper's (`client::conn::http1` and
//! `http2`), driven by a task each; the pool and the request path are
//! wasmgate's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pool::{ConnPool, Lease};
use crate::body::ProxyBody;
use wasmgate_config::cluster::{ClusterConfig, UpstreamProtocol, UpstreamTls};

/// The connector stack every cluster opens its connections through.
type Connector = Deadline<HttpsConnector<CountingConnector>>;

/// How long a connection may sit idle in a pool before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster's way of sending requests to its endpoints.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    connector: Connector,
    protocol: UpstreamProtocol,
    scheme: &'static str,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; the request was not sent, and comes
    /// back.
    Connect {
        /// Why (the connector's error, with its chain).
        error: BoxError,
        /// The request, unsent (taken by a retry).
        request: Option<Box<http::Request<ProxyBody>>>,
    },
    /// The exchange failed; the request may have been (partly) sent.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect { error, .. } => write!(f, "connect: {error}"),
            SendError::Http(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect { error, .. } => Some(&**error),
            SendError::Http(e) => Some(e),
        }
    }
}

impl UpstreamClient {
    /// Sends `req` to the endpoint at `authority` whose connections `pool`
    /// holds: on its HTTP/2 connection, on an idle HTTP/1.1 one (another,
    /// if that one turns out closed before the request went out), or on a
    /// new one. The request's URI is set here (origin-form for HTTP/1.1,
    /// absolute for HTTP/2). An HTTP/1.1 connection comes back as a
    /// [`Lease`], to be dropped when the response is done with.
    pub async fn send(
        &self,
        pool: &Arc<ConnPool>,
        authority: &http::uri::Authority,
        mut req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<Incoming>, Option<Lease>), SendError> {
        if let Some(mut h2) = pool.h2() {
            absolute(&mut req, self.scheme, authority);
            match h2.try_send_request(req).await {
                Ok(resp) => return Ok((resp, None)),
                Err(mut e) => match e.take_message() {
                    // The connection went away before the stream opened (a
                    // GOAWAY, say): forget it, and open another below.
                    Some(unsent) => {
                        pool.forget_h2();
                        req = unsent;
                    }
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let h2_only = matches!(self.protocol, UpstreamProtocol::H2 | UpstreamProtocol::H2c);
        if !h2_only {
            while let Some(mut sender) = pool.take_h1(IDLE_TIMEOUT).await {
                origin_form(&mut req, authority);
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, Some(Lease::new(sender, pool.clone())))),
                    Err(mut e) => match e.take_message() {
                        // Not sent (the endpoint closed it as it idled): the next.
                        Some(unsent) => req = unsent,
                        None => return Err(SendError::Http(e.into_error())),
                    },
                }
            }
        }
        // Boxed: opening a connection (the connector, the TLS and HTTP/2
        // handshakes) makes a future far larger than sending on a pooled
        // one, and every request's future would otherwise carry its size
        // (and be copied with it).
        Box::pin(self.open_and_send(pool, authority, req, h2_only)).await
    }

    /// No pooled connection would do: a new one, on which `req` goes first.
    async fn open_and_send(
        &self,
        pool: &Arc<ConnPool>,
        authority: &http::uri::Authority,
        mut req: http::Request<ProxyBody>,
        h2_only: bool,
    ) -> Result<(http::Response<Incoming>, Option<Lease>), SendError> {
        // One HTTP/2 connection per endpoint: whoever opens it, the others
        // wait for it and share it.
        let opening = if h2_only {
            let guard = pool.h2_opening().lock().await;
            if let Some(mut h2) = pool.h2() {
                absolute(&mut req, self.scheme, authority);
                return h2
                    .send_request(req)
                    .await
                    .map(|r| (r, None))
                    .map_err(SendError::Http);
            }
            Some(guard)
        } else {
            None
        };
        let uri = match Uri::builder()
            .scheme(self.scheme)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
        {
            Ok(u) => u,
            Err(e) => {
                return Err(SendError::Connect {
                    error: Box::new(e),
                    request: Some(Box::new(req)),
                });
            }
        };
        let mut connector = self.connector.clone();
        let io = match tower_service::Service::call(&mut connector, uri).await {
            Ok(io) => io,
            Err(error) => {
                return Err(SendError::Connect {
                    error,
                    request: Some(Box::new(req)),
                });
            }
        };
        if h2_only || io.connected().is_negotiated_h2() {
            let handshake = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await;
            let (mut h2, conn) = match handshake {
                Ok(pair) => pair,
                Err(e) => {
                    return Err(SendError::Connect {
                        error: Box::new(e),
                        request: Some(Box::new(req)),
                    });
                }
            };
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream HTTP/2 connection ended: {e}");
                }
            });
            pool.set_h2(&h2);
            drop(opening);
            absolute(&mut req, self.scheme, authority);
            return h2
                .send_request(req)
                .await
                .map(|r| (r, None))
                .map_err(SendError::Http);
        }
        let (mut sender, conn) = match http1::Builder::new().handshake(io).await {
            Ok(pair) => pair,
            Err(e) => {
                return Err(SendError::Connect {
                    error: Box::new(e),
                    request: Some(Box::new(req)),
                });
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        origin_form(&mut req, authority);
        let resp = sender.send_request(req).await.map_err(SendError::Http)?;
        Ok((resp, Some(Lease::new(sender, pool.clone()))))
    }
}

/// HTTP/1.1 sends the path alone, and `Host` says where (the client's
/// `Host` is kept; a request that had none gets the endpoint's).
fn origin_form(req: &mut http::Request<ProxyBody>, authority: &http::uri::Authority) {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
    if !req.headers().contains_key(http::header::HOST)
        && let Ok(v) = http::HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    *req.version_mut() = http::Version::HTTP_11;
}

/// HTTP/2 sends `:scheme` and `:authority` from an absolute URI.
fn absolute(
    req: &mut http::Request<ProxyBody>,
    scheme: &'static str,
    authority: &http::uri::Authority,
) {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if let Ok(uri) = Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
}

/// Bounds a whole connection setup (waiting for a place, TCP, TLS) by the
/// cluster's `connect_timeout`: an endpoint that accepts TCP and then stalls
/// the handshake fails like one that does not answer.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

/// A connection setup that took longer than `connect_timeout`.
#[derive(Debug)]
pub struct SetupTimeout(Duration);

impl std::fmt::Display for SetupTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connection setup (TCP and TLS) took longer than {:?}",
            self.0
        )
    }
}

impl std::error::Error for SetupTimeout {}

impl<S> tower_service::Service<Uri> for Deadline<S>
where
    S: tower_service::Service<Uri>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let fut = self.inner.call(dst);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(SetupTimeout(limit)) as BoxError),
            }
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `max_connections` were open and `max_pending` requests already waited,
/// or no connection freed up within the connect timeout.
#[derive(Debug)]
pub struct Overflow(pub &'static str);

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Overflow {}

/// Open connections of a cluster, and its `max_connections` limit.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: Gauge,
    limit: Option<Arc<Semaphore>>,
    pending: AtomicUsize,
    max_pending: usize,
    wait: Duration,
}

impl ConnectionLimit {
    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }

    async fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, Overflow> {
        let Some(sem) = &self.limit else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow("max_pending"));
        }
        let waited = tokio::time::timeout(self.wait, sem.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(Overflow("max_connections")),
        }
    }
}

/// A TCP connector that counts (and may limit) the connections it opens.
#[derive(Debug, Clone)]
pub struct CountingConnector {
    http: HttpConnector,
    limit: Arc<ConnectionLimit>,
    /// A tenant's cluster: where it may connect.
    reach: Option<crate::upstream::guard::Reach>,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let limit = self.limit.clone();
        let reach = self.reach.clone();
        Box::pin(async move {
            // A tenant's cluster dials the address it was checked for, not
            // a name that could resolve elsewhere a moment later.
            let dst = match &reach {
                None => dst,
                Some(reach) => {
                    let port = dst.port_u16().unwrap_or(match dst.scheme_str() {
                        Some("https") => 443,
                        _ => 80,
                    });
                    let addr = reach.resolve(dst.host().unwrap_or_default(), port).await?;
                    let mut parts = dst.into_parts();
                    parts.authority = Some(
                        http::uri::Authority::try_from(addr.to_string())
                            .map_err(|e| Box::new(e) as BoxError)?,
                    );
                    Uri::from_parts(parts).map_err(|e| Box::new(e) as BoxError)?
                }
            };
            let permit = limit.admit().await?;
            let io = http.call(dst).await?;
            limit.open.inc();
            Ok(Counted {
                io,
                limit,
                _permit: permit,
            })
        })
    }
}

/// A connection that holds its place in the count until it closes.
#[derive(Debug)]
pub struct Counted<T> {
    io: T,
    limit: Arc<ConnectionLimit>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.limit.open.dec();
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The TLS server name for each dialled address: the configured `sni`, or
/// the host name an endpoint was resolved from, or the address itself.
#[derive(Debug, Default)]
pub struct ServerNames {
    fixed: Option<ServerName<'static>>,
    by_address: ArcSwap<HashMap<String, ServerName<'static>>>,
}

impl ServerNames {
    /// Replaces the address → name map (after a resolution).
    pub fn set(&self, map: HashMap<String, ServerName<'static>>) {
        self.by_address.store(Arc::new(map));
    }
}

impl ResolveServerName for SharedNames {
    fn resolve(&self, uri: &Uri) -> Result<ServerName<'static>, BoxError> {
        if let Some(n) = &self.0.fixed {
            return Ok(n.clone());
        }
        let authority = uri.authority().map_or("", |a| a.as_str());
        if let Some(n) = self.0.by_address.load().get(authority) {
            return Ok(n.clone());
        }
        let host = uri.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        ServerName::try_from(host.to_owned()).map_err(|e| Box::new(e) as BoxError)
    }
}

/// [`ServerNames`] shared with the connector.
#[derive(Debug, Clone)]
pub struct SharedNames(pub Arc<ServerNames>);

/// What [`build`] makes.
pub struct Built {
    /// The client.
    pub client: UpstreamClient,
    /// Its connection count and limit.
    pub connections: Arc<ConnectionLimit>,
    /// Its TLS names.
    pub names: Arc<ServerNames>,
}

/// Builds a cluster's client. Fails when a TLS file cannot be read or holds
/// no usable certificate or key, or when the system has no roots.
pub fn build(
    config: &ClusterConfig,
    reach: Option<crate::upstream::guard::Reach>,
) -> Result<Built, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let connections = Arc::new(ConnectionLimit {
        open: Gauge::default(),
        limit: config
            .circuit_breaker
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n))),
        pending: AtomicUsize::new(0),
        max_pending: config.circuit_breaker.max_pending,
        wait: config.connect_timeout,
    });
    let counting = CountingConnector {
        http,
        limit: connections.clone(),
        reach,
    };
    let tls_config = match &config.tls {
        Some(t) => client_tls_config(t)?,
        // Never used: cleartext clusters send `http://` URIs only.
        None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let fixed = match config.tls.as_ref().and_then(|t| t.sni.as_deref()) {
        Some(sni) => Some(
            ServerName::try_from(sni.to_owned()).map_err(|e| format!("tls.sni {sni:?}: {e}"))?,
        ),
        None => None,
    };
    let names = Arc::new(ServerNames {
        fixed,
        by_address: ArcSwap::default(),
    });
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config);
    let builder = match &config.tls {
        Some(_) => builder.https_only(),
        None => builder.https_or_http(),
    }
    .with_server_name_resolver(SharedNames(names.clone()));
    // ALPN: only what the protocol allows, so an endpoint cannot pick
    // another version than the one configured.
    let connector = match config.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(counting),
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
            builder.enable_http2().wrap_connector(counting)
        }
        UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(counting),
    };
    let connector = Deadline {
        inner: connector,
        limit: config.connect_timeout,
    };
    Ok(Built {
        client: UpstreamClient {
            connector,
            protocol: config.protocol,
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
        },
        connections,
        names,
    })
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
