//! The edge of the gateway: the open-files overload guard tripped and
//! cleared in a gateway process of its own (with its own descriptor limit),
//! and the PROXY protocol in front of TLS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use wasmgate_tests::pki::{Pki, client_config, dir, write};
use wasmgate_tests::{Upstream, get, metric, start_gateway, within};

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate-e2e");

/// A `wasmgate serve` process with its own open-files limit.
struct Process {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: mpsc::UnboundedReceiver<String>,
}

impl Process {
    /// Starts `serve --config path` under `ulimit -n nofile` and waits until
    /// both listeners are up.
    async fn start(path: &std::path::Path, nofile: u64) -> Process {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n \"$1\" && exec \"$0\" serve --config \"$2\"")
            .arg(BIN)
            .arg(nofile.to_string())
            .arg(path)
            .env("WASMGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, mut log) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let addr_on = |line: &str| -> SocketAddr {
            line.split("addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        };
        let (mut addr, mut admin) = (None, None);
        let mut before = Vec::new();
        within("gateway process listening", async {
            while addr.is_none() || admin.is_none() {
                let Some(line) = log.recv().await else {
                    panic!("gateway exited before listening:\n{}", before.join("\n"));
                };
                if line.contains("admin listening") {
                    admin = Some(addr_on(&line));
                } else if line.contains("wasmgate listening") {
                    addr = Some(addr_on(&line));
                }
                before.push(line);
            }
        })
        .await;
        Process {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            log,
        }
    }

    /// Waits for the next log line containing every one of `needles`.
    async fn wait_for(&mut self, needles: &[&str]) -> String {
        within(&format!("a log line with {needles:?}"), async {
            loop {
                let line = self
                    .log
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("the gateway exited; no line with {needles:?}"));
                if needles.iter().all(|n| line.contains(n)) {
                    return line;
                }
            }
        })
        .await
    }

    /// Whether a line with every one of `needles` has been logged (without
    /// waiting), consuming the lines read.
    fn logged(&mut self, needles: &[&str]) -> bool {
        while let Ok(line) = self.log.try_recv() {
            if needles.iter().all(|n| line.contains(n)) {
                return true;
            }
        }
        false
    }

    /// The process's metrics, from its admin listener.
    async fn metrics(&self) -> String {
        let r = get(self.admin, "/metrics", &[("host", "localhost")]).await;
        assert_eq!(r.status, 200);
        r.body
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client connection kept open (HTTP/1.1, keep-alive).
struct Held {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

/// What one request on a [`Held`] connection got.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Held {
    /// Connects to `addr` (the gateway may still close it unanswered).
    async fn open(addr: SocketAddr) -> Held {
        let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Held { send }
    }

    /// `GET path` on this connection; an error if it was closed unanswered.
    async fn get(&mut self, path: &str) -> Result<Answer, hyper::Error> {
        within(&format!("GET {path}"), async {
            self.send.ready().await?;
            let req = http::Request::get(path)
                .header("host", "gateway.test")
                .body(Empty::new())
                .unwrap();
            let resp = self.send.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_short_of_descriptors_sheds_requests_and_connections_until_they_are_released() {
    // The guard compares the process's open descriptors with a share of its
    // own soft RLIMIT_NOFILE. The test process's limit cannot be lowered
    // safely (other tests run in it), so the gateway runs as a process of
    // its own, with a limit of its own: 1024 descriptors, shedding at 10 %,
    // 102. Far below the limit itself, so that however many connections
    // are opened before the guard's next sample, accepting never fails.
    const NOFILE: u64 = 1024;
    const LIMIT: u64 = NOFILE / 10;
    let up = Upstream::start("u").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 8\n[limits]\nheader_read_timeout = \"10m\"\nidle_timeout = \"10m\"\n[overload]\nmax_open_files_percent = 10\ncheck_interval = \"20ms\"\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        up.addr
    );
    let d = dir("overload-files");
    let path = std::path::PathBuf::from(write(&d, "gateway.toml", &config));
    let mut gw = Process::start(&path, NOFILE).await;
    let open_files = async |gw: &Process| {
        metric(&gw.metrics().await, "wasmgate_process_open_files").expect("open files sampled")
            as u64
    };
    // Zero until the sampler's first round.
    let baseline = within("first sample", async {
        loop {
            match open_files(&gw).await {
                0 => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                n => return n,
            }
        }
    })
    .await;
    assert!(
        baseline + 8 < LIMIT,
        "the gateway already holds {baseline} descriptors at start; the test needs it well \
         under {LIMIT}"
    );

    // Open connections, one request on each, and keep them, until the guard
    // trips: each holds a descriptor in the gateway.
    let mut held = Vec::new();
    let tripped = ["overloaded: shedding new requests with 503", "open_files"];
    let mut logged = false;
    loop {
        if gw.logged(&tripped) {
            logged = true;
            break;
        }
        assert!(
            baseline + (held.len() as u64) < 2 * LIMIT,
            "never tripped, with {} connections open over a baseline of {baseline}",
            held.len()
        );
        let mut c = Held::open(gw.addr).await;
        match c.get("/").await {
            Ok(a) if a.status == 200 => held.push(c),
            // Accepted just before the guard tripped (503), or closed as
            // soon as accepted after it: either way, tripped.
            Ok(a) => {
                assert_eq!(a.status, 503, "{}", a.body);
                break;
            }
            Err(_) => break,
        }
    }
    if !logged {
        gw.wait_for(&tripped).await;
    }
    // Besides the connections held: the upstream connection, an admin
    // connection, the connection that found the guard tripped.
    assert!(
        baseline + held.len() as u64 + 6 >= LIMIT,
        "tripped at {} connections over a baseline of {baseline}: not by the connections",
        held.len()
    );
    let served = up.count();

    // A request on a connection opened before is shed: 503 in the standard
    // format, before any work (nothing reaches the upstream).
    let r = held[0].get("/").await.expect("answered");
    assert_eq!(r.status, 503, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(body["code"], "overloaded");
    assert!(
        body["message"].as_str().unwrap().contains("open_files"),
        "{body}"
    );
    assert!(body["request_id"].is_string(), "{body}");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["content-type"], "application/json");
    // A new connection is closed as soon as it is accepted.
    let mut fresh = Held::open(gw.addr).await;
    assert!(fresh.get("/").await.is_err(), "a new connection is served");
    drop(fresh);
    assert_eq!(up.count(), served);
    let m = gw.metrics().await;
    assert!(
        metric(&m, "wasmgate_overload_shed_total{kind=\"open_files\"}").unwrap_or(0.0) >= 2.0,
        "the shed request and connection: {m}"
    );
    assert!(
        metric(&m, "wasmgate_process_open_files").unwrap_or(0.0) >= LIMIT as f64,
        "{m}"
    );

    // The connections are released: the guard clears, and new connections
    // and requests are served again.
    let _earlier = gw.logged(&["overload cleared"]);
    drop(held);
    gw.wait_for(&["overload cleared: serving requests again"])
        .await;
    let mut c = Held::open(gw.addr).await;
    let r = c.get("/").await.expect("served after the guard cleared");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.count(), served + 1);
    assert!(open_files(&gw).await < LIMIT);
}

/// A stream that sends `head` in the same write as the first bytes written
/// to it (the TLS ClientHello, here), as a load balancer that forwards the
/// PROXY header and the client's first bytes in one segment would.
struct Prepend {
    head: Vec<u8>,
    inner: TcpStream,
}

impl AsyncRead for Prepend {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prepend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        while !this.head.is_empty() {
            let mut both = this.head.clone();
            both.extend_from_slice(buf);
            match Pin::new(&mut this.inner).poll_write(cx, &both) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) if n > this.head.len() => {
                    let head = std::mem::take(&mut this.head).len();
                    return Poll::Ready(Ok(n - head));
                }
                Poll::Ready(Ok(n)) => {
                    this.head.drain(..n);
                }
                other => return other,
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How the PROXY header reaches the gateway.
enum Header {
    /// None at all: TLS from the first byte.
    Missing,
    /// Written alone, then the TLS handshake.
    Alone(Vec<u8>),
    /// In the same write as the ClientHello.
    WithClientHello(Vec<u8>),
}

/// A GET over TLS (`config`, SNI `proxy.test`) carrying an `X-Forwarded-For`
/// of the client's own, after the PROXY `header`; the status, or the error
/// that ended the connection.
async fn https_get(
    addr: SocketAddr,
    header: Header,
    config: Arc<rustls::ClientConfig>,
    xff: &str,
) -> std::io::Result<u16> {
    within("https request after a PROXY header", async {
        let mut tcp = TcpStream::connect(addr).await?;
        let head = match header {
            Header::Missing => Vec::new(),
            Header::Alone(h) => {
                tcp.write_all(&h).await?;
                Vec::new()
            }
            Header::WithClientHello(h) => h,
        };
        let stream = Prepend { head, inner: tcp };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("proxy.test").unwrap(), stream)
            .await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let req = http::Request::builder()
            .header("x-forwarded-for", xff)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = if h2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let mut req = req;
            *req.uri_mut() = "https://proxy.test/h2".parse().unwrap();
            send.send_request(req)
                .await
                .map_err(std::io::Error::other)?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let mut req = req;
            *req.uri_mut() = "/h1".parse().unwrap();
            req.headers_mut()
                .insert("host", http::HeaderValue::from_static("proxy.test"));
            send.send_request(req)
                .await
                .map_err(std::io::Error::other)?
        };
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?;
        Ok(status)
    })
    .await
}

/// PROXY v1 naming `src` (to 192.0.2.1:443).
fn v1(src: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {} 192.0.2.1 {} 443\r\n", src.ip(), src.port()).into_bytes()
}

/// PROXY v2 (PROXY command, TCP over IPv4) naming `src` (to 192.0.2.1:443).
fn v2(src: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&[192, 0, 2, 1]);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_protocol_before_tls_names_the_client_and_is_required() {
    let pki = Pki::new();
    let d = dir("proxy-protocol-tls");
    let leaf = pki.leaf(&["proxy.test"]);
    let up = Upstream::start("u").await;
    // 10.0.0.0/8 is an inner proxy the gateway trusts; the socket's own peer
    // (127.0.0.1) is not trusted. A long header read timeout: a connection
    // refused below is refused for what it sent, not for being slow.
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_protocol_from = [\"127.0.0.0/8\"]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[server.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n[limits]\nheader_read_timeout = \"10m\"\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        write(&d, "p.pem", &leaf.cert_pem),
        write(&d, "p.key", &leaf.key_pem),
        up.addr
    );
    let gw = start_gateway(&toml).await;
    let h1 = client_config(&pki, &[b"http/1.1"], None);
    let h2 = client_config(&pki, &[b"h2"], None);

    // v1 from an untrusted client, in the ClientHello's segment: the
    // client's own X-Forwarded-For is replaced by the PROXY source.
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let status = https_get(
        gw.addr(),
        Header::WithClientHello(v1(client)),
        h1.clone(),
        "6.6.6.6",
    )
    .await
    .expect("served");
    assert_eq!(status, 200);
    // v2 from the trusted inner proxy, alone, then h2: what it forwarded is
    // kept and it is appended.
    let inner = "10.1.2.3:5000".parse().unwrap();
    let status = https_get(
        gw.addr(),
        Header::Alone(v2(inner)),
        h2.clone(),
        "198.51.100.20",
    )
    .await
    .expect("served");
    assert_eq!(status, 200);
    // And v2 in the ClientHello's segment, from an untrusted client.
    let other = "198.51.100.99:6000".parse().unwrap();
    let status = https_get(gw.addr(), Header::WithClientHello(v2(other)), h2, "6.6.6.6")
        .await
        .expect("served");
    assert_eq!(status, 200);

    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    let xff: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["x-forwarded-for"].to_str().unwrap())
        .collect();
    assert_eq!(
        xff,
        ["203.0.113.7", "198.51.100.20, 10.1.2.3", "198.51.100.99"]
    );
    for s in &seen {
        assert_eq!(s.headers["x-forwarded-proto"], "https");
    }
    assert_eq!(
        (seen[0].path.as_str(), seen[1].path.as_str()),
        ("/h1", "/h2")
    );

    // Without the header, the TLS handshake alone is refused: the
    // connection is closed unanswered and nothing reaches the upstream.
    let refused = https_get(gw.addr(), Header::Missing, h1, "6.6.6.6").await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(up.count(), 3);
    let m = gw.metrics_text();
    assert_eq!(
        metric(&m, "wasmgate_proxy_protocol_errors_total"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "wasmgate_tls_handshakes_total"), Some(3.0));
    gw.shutdown().await;
}
