//! The edge of the gateway: the open-files overload guard tripped and
//! cleared in a gateway process of its own (with its own descriptor limit).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use wasmgate_tests::pki::{dir, write};
use wasmgate_tests::{Upstream, get, metric, within};

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
        let r = get(self.admin, "/metrics", &[]).await;
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
