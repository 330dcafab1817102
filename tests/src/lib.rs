//! Harness for the end-to-end tests: real upstream servers on `127.0.0.1:0`,
//! the real gateway built from a TOML config, an HTTP client, raw sockets, and
//! a capture of the gateway's log.

use std::convert::Infallible;
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

/// Paths of the WASM guests that `build.rs` compiled.
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
}

/// A real HTTP/1.1 server on `127.0.0.1:0` that records what it receives and
/// answers 200 with JSON naming itself.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name (in the `x-upstream` header and body of every answer).
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream called `name`.
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (name_c, seen_c) = (name.to_owned(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (name, seen) = (name_c.clone(), seen_c.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (name, seen) = (name.clone(), seen.clone());
                        async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map_or("/".into(), |p| p.to_string());
                            seen.lock().unwrap().push(Seen {
                                method: req.method().clone(),
                                path: path.clone(),
                                headers: req.headers().clone(),
                            });
                            let body =
                                serde_json::json!({ "upstream": name, "path": path }).to_string();
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            let h = resp.headers_mut();
                            h.insert("content-type", "application/json".parse().unwrap());
                            h.insert("x-upstream", name.parse().unwrap());
                            h.insert("x-remove-me", "upstream-secret".parse().unwrap());
                            h.insert("server", "test-upstream/1.0".parse().unwrap());
                            h.insert("x-powered-by", "upstream-framework".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_owned(),
            seen,
            task,
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address where nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Parses and builds a gateway from TOML, or returns every error as text.
pub async fn build_gateway(toml: &str) -> Result<wasmgate::Gateway, String> {
    capture_logs();
    let config =
        Config::parse(toml, "test.toml", std::path::Path::new(".")).map_err(|e| e.to_string())?;
    wasmgate::Gateway::build(config)
        .await
        .map_err(|e| e.to_string())
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
        let req = req.body(Full::new(Bytes::new())).unwrap();
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

/// Installs (once) a log subscriber that captures the gateway's log.
pub fn capture_logs() -> LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
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
