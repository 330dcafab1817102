//! Harness for the end-to-end tests: real upstream servers on `127.0.0.1:0`,
//! the real gateway built from a TOML config, an HTTP client, raw sockets, and
//! a capture of the gateway's log.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use wasmgate::RunningGateway;
use wasmgate::config::Config;

pub mod middlebox;
pub mod pki;

/// Paths of the WASM guests that `build.rs` compiled.
pub mod grpc;
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// Generous guard against hangs. Tests assert outcomes, never timings.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Awaits `fut`, failing the test if it takes longer than [`HANG_GUARD`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {HANG_GUARD:?} (hung)"),
    }
}

/// What a test upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// The HTTP version it arrived with.
    pub version: http::Version,
    /// The TLS server name the gateway sent, if TLS.
    pub sni: Option<String>,
    /// Whether the gateway presented a client certificate.
    pub client_cert: bool,
}

/// A real HTTP/1.1 server on `127.0.0.1:0` that records what it receives and
/// answers 200 with JSON naming itself.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name (in the `x-upstream` header and body of every answer).
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    options: UpstreamOptions,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// How a test upstream serves.
#[derive(Clone, Default)]
pub struct UpstreamOptions {
    /// Serve over TLS with this config (its ALPN decides h2 or HTTP/1.1).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Serve HTTP/1.1 only (otherwise HTTP/1.1 and HTTP/2, including h2c
    /// with prior knowledge).
    pub http1_only: bool,
    /// Answer every request after this long.
    pub delay: Option<Duration>,
    /// Holds requests whose path has `/held` until [`Upstream::release`].
    pub gate: Arc<Gate>,
}

/// Holds requests until released (see [`UpstreamOptions::gate`]).
#[derive(Default)]
pub struct Gate {
    open: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
}

impl Gate {
    async fn pass(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let notified = self.opened.notified();
            if self.open.load(SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl UpstreamOptions {
    /// Cleartext HTTP/1.1.
    pub fn http1() -> Self {
        UpstreamOptions {
            http1_only: true,
            ..Default::default()
        }
    }
}

/// What the upstream knows about the connection a request came on.
#[derive(Clone, Default)]
struct ConnInfo {
    sni: Option<String>,
    client_cert: bool,
}

impl Upstream {
    /// Starts a cleartext HTTP/1.1 upstream called `name`.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_with(
            name,
            UpstreamOptions {
                http1_only: true,
                ..Default::default()
            },
        )
        .await
    }

    /// Starts an upstream called `name` with `options`.
    ///
    /// Every request is recorded. Besides the JSON answer, it has two
    /// behaviours for protocol tests (and, for caching tests, each request
    /// header `x-reply-header: name: value` is added to the answer,
    /// `x-reply-bytes: N` makes the body N bytes, `x-reply-status: NNN`
    /// sets the status, a request whose `If-None-Match` or
    /// `If-Modified-Since` matches the answer's `ETag` or `Last-Modified`
    /// gets a `304`, and a path with `/held` waits for
    /// [`Upstream::release`]):
    /// - `Upgrade: websocket`: answers 101 and echoes WebSocket messages;
    /// - a path under `/grpc`: answers gRPC-style, echoing the request body
    ///   with trailers `grpc-status: 0`, `grpc-message` and, if the request
    ///   had a trailer `x-client-trailer`, `x-echo-trailer` with its value.
    pub async fn start_with(name: &str, options: UpstreamOptions) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let task = spawn_upstream(listener, name, &options, &seen, &conns);
        Upstream {
            addr,
            name: name.to_owned(),
            seen,
            options,
            task,
            conns,
        }
    }

    /// Stops it as a crash would: the listener closes and every open
    /// connection is cut.
    pub fn stop(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Starts it again on the same address.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = within("rebind upstream", async {
            loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => return l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        self.task = spawn_upstream(listener, &self.name, &self.options, &self.seen, &self.conns);
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Lets the requests held at `/held` (and those to come) be answered.
    pub fn release(&self) {
        self.options
            .gate
            .open
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.options.gate.opened.notify_waiters();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spawn_upstream(
    listener: TcpListener,
    name: &str,
    options: &UpstreamOptions,
    seen: &Arc<Mutex<Vec<Seen>>>,
    conns: &Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
) -> tokio::task::JoinHandle<()> {
    let (name_c, seen_c, options, conns) = (
        name.to_owned(),
        seen.clone(),
        options.clone(),
        conns.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (name, seen, options) = (name_c.clone(), seen_c.clone(), options.clone());
            let conn = tokio::spawn(async move {
                match &options.tls {
                    None => serve_upstream(stream, ConnInfo::default(), &options, name, seen).await,
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let (_, conn) = tls.get_ref();
                        let info = ConnInfo {
                            sni: conn.server_name().map(str::to_owned),
                            client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                        };
                        serve_upstream(tls, info, &options, name, seen).await
                    }
                }
            });
            let mut open = conns.lock().unwrap();
            open.retain(|c| !c.is_finished());
            open.push(conn.abort_handle());
        }
    })
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn serve_upstream<S>(
    stream: S,
    info: ConnInfo,
    options: &UpstreamOptions,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let delay = options.delay;
    let gate = options.gate.clone();
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let (name, seen, info, gate) = (name.clone(), seen.clone(), info.clone(), gate.clone());
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/".into(), |p| p.to_string());
            seen.lock().unwrap().push(Seen {
                method: req.method().clone(),
                path: path.clone(),
                headers: req.headers().clone(),
                version: req.version(),
                sni: info.sni.clone(),
                client_cert: info.client_cert,
            });
            if req
                .headers()
                .get("upgrade")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
            {
                return Ok::<_, std::io::Error>(websocket_echo(req));
            }
            if path.starts_with("/grpc") {
                return Ok(grpc_echo(req).await);
            }
            // `/echo`: answers the request body (with its Content-Type).
            if path.starts_with("/echo") {
                let content_type = req.headers().get("content-type").cloned();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let mut resp = Response::new(Full::new(body).map_err(|n| match n {}).boxed());
                resp.headers_mut()
                    .insert("x-upstream", name.parse().unwrap());
                if let Some(ct) = content_type {
                    resp.headers_mut().insert("content-type", ct);
                }
                return Ok(resp);
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if path.contains("/held") {
                gate.pass().await;
            }
            // `/delay/MS…`: answer after MS milliseconds.
            if let Some(ms) = path
                .strip_prefix("/delay/")
                .and_then(|r| r.split(['/', '?']).next())
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            // `/close`: cut the connection without answering.
            if path.starts_with("/close") {
                return Err(std::io::Error::other("closing without an answer"));
            }
            // `x-reply-bytes: N`: a body of N bytes instead of the JSON.
            let body = match req
                .headers()
                .get("x-reply-bytes")
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            {
                Some(n) => Bytes::from(vec![b'a'; n]),
                None => {
                    Bytes::from(serde_json::json!({ "upstream": name, "path": path }).to_string())
                }
            };
            let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
            // Each `x-reply-header: name: value` is added to the answer.
            for v in req.headers().get_all("x-reply-header") {
                if let Some((k, v)) = v.to_str().ok().and_then(|v| v.split_once(':'))
                    && let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.trim().as_bytes()),
                        http::HeaderValue::from_str(v.trim()),
                    )
                {
                    resp.headers_mut().append(k, v);
                }
            }
            // `/status/NNN…` answers NNN.
            if let Some(code) = path
                .find("/status/")
                .and_then(|i| path.get(i + 8..i + 11))
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| http::StatusCode::from_u16(c).ok())
            {
                *resp.status_mut() = code;
            }
            if let Some(code) = req
                .headers()
                .get("x-reply-status")
                .and_then(|v| http::StatusCode::from_bytes(v.as_bytes()).ok())
            {
                *resp.status_mut() = code;
            }
            // An ETag among those listed, or the very Last-Modified date.
            let matches = |cond: &str, validator: &str| {
                req.headers().get(cond).is_some_and(|c| {
                    resp.headers().get(validator).is_some_and(|v| {
                        let (c, v) = (
                            c.to_str().unwrap_or_default(),
                            v.to_str().unwrap_or_default(),
                        );
                        c == v || (cond == "if-none-match" && c.split(',').any(|c| c.trim() == v))
                    })
                })
            };
            if matches("if-none-match", "etag") || matches("if-modified-since", "last-modified") {
                *resp.status_mut() = http::StatusCode::NOT_MODIFIED;
                *resp.body_mut() = Full::new(Bytes::new()).map_err(|n| match n {}).boxed();
            }
            let h = resp.headers_mut();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert("x-upstream", name.parse().unwrap());
            h.insert("x-remove-me", "upstream-secret".parse().unwrap());
            h.insert("server", "test-upstream/1.0".parse().unwrap());
            h.insert("x-powered-by", "upstream-framework".parse().unwrap());
            Ok(resp)
        }
    });
    let io = TokioIo::new(stream);
    if options.http1_only {
        let _ = http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades()
            .await;
    } else {
        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection_with_upgrades(io, service)
            .await;
    }
}

/// Answers a WebSocket handshake with 101 and echoes every message.
fn websocket_echo(req: Request<hyper::body::Incoming>) -> Response<UpstreamBody> {
    use futures_util::{SinkExt, StreamExt};
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()));
    let Some(accept) = key else {
        let mut resp = Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed());
        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
        return resp;
    };
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                let _ = ws.close(None).await;
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
        .unwrap()
}

/// Echoes the request body with gRPC-style trailers.
async fn grpc_echo(req: Request<hyper::body::Incoming>) -> Response<UpstreamBody> {
    let collected = match req.into_body().collect().await {
        Ok(c) => c,
        Err(e) => {
            let mut resp = Response::new(
                Full::new(Bytes::from(format!("body: {e}")))
                    .map_err(|n| match n {})
                    .boxed(),
            );
            *resp.status_mut() = http::StatusCode::BAD_REQUEST;
            return resp;
        }
    };
    let client_trailer = collected
        .trailers()
        .and_then(|t| t.get("x-client-trailer"))
        .cloned();
    let data = collected.to_bytes();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("grpc-message", "echoed".parse().unwrap());
    if let Some(v) = client_trailer {
        trailers.insert("x-echo-trailer", v);
    }
    let body = Full::new(data)
        .map_err(|n| match n {})
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

/// The value of one sample in Prometheus text, e.g.
/// `metric(text, "wasmgate_requests_total{tenant=\"default\",route=\"r\",cluster=\"c\",status_class=\"2xx\"}")`.
///
/// The sample must be one of a metric the gateway declares, or a filter's
/// (see [`is_metric_sample`]): a misspelt or renamed name fails here rather
/// than reading as a sample not recorded yet.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    let name = sample.split_once('{').map_or(sample, |(name, _)| name);
    assert!(
        is_metric_sample(name),
        "{name} is not a sample of a metric the gateway exports \
         (wasmgate::metrics::gateway_metrics) nor a filter's"
    );
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `name` is the name of a sample of a gateway metric, as its tables
/// declare them (`wasmgate_requests_total`, `wasmgate_active_connections`,
/// `wasmgate_request_duration_seconds_count`, ...), or of a metric a filter
/// records (any other `wasmgate_filter_…`).
pub fn is_metric_sample(name: &str) -> bool {
    let gateway =
        wasmgate::metrics::gateway_metrics().any(|m| m.samples().iter().any(|s| s == name));
    gateway || name.starts_with("wasmgate_filter_")
}

/// An address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    // Bound but never listening: connections are refused, and no other test
    // (tests run in parallel) can take the port while the socket lives. It
    // lives until the test process ends.
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    std::mem::forget(s);
    addr
}

/// This test run's compile cache: `XDG_CACHE_HOME` for gateway processes
/// (so their cache is its `wasmgate/`), and the default `engine.cache_dir`
/// of every config this process reads once [`hermetic`] ran. Made empty
/// when the run starts, so no result depends on an earlier run, and never
/// the user's `~/.cache/wasmgate`. Folders left by earlier runs whose
/// process is gone are removed on the way.
pub fn cache_home() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        const PREFIX: &str = "wasmgate-test-cache.";
        let base = std::env::temp_dir();
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(format!("{PREFIX}{}", std::process::id()));
        // A folder of an earlier process that had this pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test run's compile cache folder");
        dir
    })
}

/// Makes every config read later in this process use [`cache_home`]'s
/// compile cache unless it names one, and installs the log capture. Every
/// harness function that builds a gateway calls it; a test that reads a
/// config itself calls it (or [`capture_logs`]) first.
pub fn hermetic() {
    capture_logs();
}

/// A command running the gateway binary `bin` with this run's compile
/// cache ([`cache_home`]).
pub fn gateway_command(bin: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.env("XDG_CACHE_HOME", cache_home());
    cmd
}

/// Parses and builds a gateway from TOML, or returns every error as text.
pub async fn build_gateway(toml: &str) -> Result<wasmgate::Gateway, String> {
    hermetic();
    let config =
        Config::parse(toml, "test.toml", std::path::Path::new(".")).map_err(|e| e.to_string())?;
    wasmgate::Gateway::build(config)
        .await
        .map_err(|e| e.to_string())
}

/// A resolver answering from a table the test changes at will.
#[derive(Debug, Default)]
pub struct TableResolver(Mutex<std::collections::HashMap<String, Vec<SocketAddr>>>);

impl TableResolver {
    /// Makes `host` resolve to `addrs` (an empty list: resolution fails).
    pub fn set(&self, host: &str, addrs: &[SocketAddr]) {
        self.0
            .lock()
            .unwrap()
            .insert(host.to_owned(), addrs.to_vec());
    }
}

impl wasmgate::upstream::dns::Resolve for TableResolver {
    fn resolve(
        &self,
        host: &str,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>> {
        let found = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            match found {
                Some(a) if !a.is_empty() => Ok(a),
                _ => Err(std::io::Error::other("no such host (test table)")),
            }
        })
    }
}

/// Builds and starts a gateway whose host-name endpoints resolve through
/// `resolver`.
pub async fn start_gateway_with_resolver(
    toml: &str,
    resolver: Arc<dyn wasmgate::upstream::dns::Resolve>,
) -> RunningGateway {
    hermetic();
    let config = Config::parse(toml, "test.toml", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("config:\n{e}"));
    let gw = wasmgate::Gateway::build_with(config, resolver)
        .await
        .unwrap_or_else(|e| panic!("gateway did not build:\n{e}"));
    gw.start().await.expect("gateway did not start")
}

/// Builds and starts a gateway from a config file (and the tenants'
/// folder it names), as `wasmgate serve` reads it.
pub async fn start_gateway_from(path: &std::path::Path) -> RunningGateway {
    hermetic();
    let config = Config::load(path).unwrap_or_else(|e| panic!("config:\n{e}"));
    let gw = wasmgate::Gateway::build(config)
        .await
        .unwrap_or_else(|e| panic!("gateway did not build:\n{e}"));
    gw.start().await.expect("gateway did not start")
}

/// Builds and starts a gateway; panics with the config errors if it fails.
/// The config should listen on `127.0.0.1:0`.
pub async fn start_gateway(toml: &str) -> RunningGateway {
    let gw = build_gateway(toml)
        .await
        .unwrap_or_else(|e| panic!("gateway did not build:\n{e}"));
    gw.start().await.expect("gateway did not start")
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request on a new connection and reads the whole answer.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    send_body(addr, method, path, headers, []).await
}

/// [`send`] with a body (and its `Content-Length`).
pub async fn send_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Reply {
    let body = Bytes::copy_from_slice(body.as_ref());
    within(&format!("{method} {path}"), async {
        let stream = TcpStream::connect(addr).await.expect("connect to gateway");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            req = req.header("host", "gateway.test");
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(Full::new(body)).unwrap();
        let resp = sender.send_request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("read body").to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into(),
        }
    })
    .await
}

/// `GET path` with headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", path, headers).await
}

/// Writes raw bytes on a new connection and reads until the peer closes or
/// a response head and a little more arrive; returns what was read.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    within("raw request", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// The gateway's log, captured for assertions (process-wide, shared by tests;
/// filter by something unique such as a request id).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Lines that contain every needle.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let buf = self.0.lock().unwrap();
        String::from_utf8_lossy(&buf)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

use std::io::Write;

/// Installs (once) a log subscriber that captures the gateway's log, and
/// makes the run [`hermetic`].
pub fn capture_logs() -> LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    wasmgate::config::set_default_cache_dir(cache_home().join("wasmgate"));
    CAPTURE
        .get_or_init(|| {
            let capture = LogCapture::default();
            let writer = capture.clone();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info,wasmgate=debug"))
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .try_init();
            capture
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::is_metric_sample;

    #[test]
    fn metric_names_are_checked_against_the_gateway_tables() {
        for m in wasmgate::metrics::gateway_metrics() {
            for sample in m.samples() {
                assert!(is_metric_sample(&sample), "{sample}");
            }
        }
        assert!(is_metric_sample("wasmgate_filter_fault_hits_total"));
        // A counter's family name is not a sample; a misspelt name is
        // nothing.
        assert!(!is_metric_sample("wasmgate_requests"));
        assert!(!is_metric_sample("wasmgate_upstream_retrys_total"));
    }
}
