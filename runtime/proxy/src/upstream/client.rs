//! The hyper client a cluster sends through: TLS (rustls, ring) over a TCP
//! connector that counts open connections and, with `max_connections`,
//! limits them (requests beyond wait as pending, up to `max_pending`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_rustls::{HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::ProxyBody;
use wasmgate_config::cluster::{ClusterConfig, UpstreamProtocol, UpstreamTls};

/// The client type every cluster uses.
pub type UpstreamClient = Client<Deadline<HttpsConnector<CountingConnector>>, ProxyBody>;

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
    let connector = Deadline {
        inner: connector,
        limit: config.connect_timeout,
    };
    Ok(Built {
        client: client.build(connector),
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
