//! The `wasmgate` command line as a process: `check` and `serve` with a
//! config reload on SIGHUP, a drain on SIGTERM (requests in flight finish,
//! or are cut off and counted at the deadline) and exit 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wasmgate_tests::{HANG_GUARD, Upstream, artifacts, get};

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate-e2e");

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `wasmgate check` on a config of the repository accepts it and says
/// `summary`.
fn check_accepts(config: &str, summary: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = wasmgate_tests::gateway_command(BIN)
        .args(["check", "--config"])
        .arg(root.join(config))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(summary), "{stdout}");
}

#[test]
fn check_accepts_the_default_gateway_toml() {
    check_accepts("gateway.toml", "ok (3 routes, 2 clusters, 5 filters)");
}

#[test]
fn check_accepts_the_two_tenant_example() {
    check_accepts(
        "examples/tenants/gateway.toml",
        "ok (0 routes, 0 clusters, 0 filters; 2 tenants: shop-a, shop-b)",
    );
}

#[test]
fn check_fails_on_a_tenant_whose_filter_refuses_its_config() {
    let dir = std::env::temp_dir().join(format!("wasmgate-cli-tenant-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tenants")).unwrap();
    std::fs::write(
        dir.join("tenants").join("t.toml"),
        format!(
            "hosts = [\"t.example\"]\n[filters.f]\npath = {:?}\n\
             [[routes]]\nname = \"r\"\nrespond = {{}}\nfilters = [{{ name = \"f\", config = {{ fail_init = true }} }}]\n",
            wasmgate_tests::artifacts::FAULT
        ),
    )
    .unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, "[tenants]\ndir = \"tenants\"\n").unwrap();
    let out = wasmgate_tests::gateway_command(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("tenant \"t\" was refused"), "{stderr}");
    assert!(
        stderr.contains("init failure requested by config"),
        "{stderr}"
    );
}

#[test]
fn check_rejects_an_invalid_config_with_a_message_and_nonzero_exit() {
    let path = write_config(
        "bad.toml",
        "[clusters.c]\nendpoints = [\"nope\"]\n[[routes]]\nname = \"r\"\ncluster = \"missing\"\n",
    );
    let out = wasmgate_tests::gateway_command(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 errors in config"), "{stderr}");
    assert!(
        stderr.contains("clusters.c.endpoints[0]: \"nope\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[0].cluster: unknown cluster \"missing\""),
        "{stderr}"
    );
}

fn signal(child: &std::process::Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// A `wasmgate serve` process, its listen address and its log lines.
struct Served {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Served {
    /// Starts `serve --config path` and waits until it says where it listens.
    fn start(path: &std::path::Path) -> Served {
        let mut cmd = wasmgate_tests::gateway_command(BIN);
        cmd.args(["serve", "--config"]).arg(path);
        Served::spawn(cmd)
    }

    /// Runs `cmd` (a `serve`) and waits until it says where it listens.
    fn spawn(cmd: Command) -> Served {
        Served::spawn_until(cmd, "addr=")
    }

    /// Runs `cmd` and waits for a log line containing `needle`; `addr` is
    /// the address on that line, if it names one.
    fn spawn_until(mut cmd: Command, needle: &str) -> Served {
        let mut child = cmd
            .env("WASMGATE_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut before = Vec::new();
        let addr = loop {
            let Some(line) = lines.next().transpose().unwrap() else {
                panic!("gateway exited before listening:\n{}", before.join("\n"));
            };
            before.push(line.clone());
            if line.contains(needle) {
                break line
                    .split("addr=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next()?.parse::<SocketAddr>().ok())
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            }
        };
        let (tx, log) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Served { child, addr, log }
    }

    /// The next log line containing `needle` (blocks this thread).
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + HANG_GUARD;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!(
                    "no log line with {needle:?} ({e}); the lines read:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    /// Waits for the process to exit (blocks this thread).
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // A failed test must not leave its gateway running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn serve_reloads_on_sighup_and_stops_cleanly_on_sigterm() {
    let up = Upstream::start("u").await;
    let text = |key: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[engine]\nmax_instances = 64\n[filters.api-key]\npath = {:?}\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{{ name = \"api-key\", config = {{ keys = [\"{key}\"] }} }}]\n",
            artifacts::API_KEY,
            up.addr
        )
    };
    let path = write_config("serve.toml", &text("k"));
    let mut gw = Served::start(&path);
    let addr = gw.addr;
    assert_eq!(get(addr, "/", &[]).await.status, 401);
    assert_eq!(get(addr, "/", &[("x-api-key", "k")]).await.status, 200);

    // SIGHUP with a broken file: refused and logged, the old config serves.
    std::fs::write(
        &path,
        text("k2").replace("cluster = \"c\"", "cluster = \"gone\""),
    )
    .unwrap();
    gw.signal("-HUP");
    let line = gw.wait_for("config reload rejected");
    assert!(line.contains("routes[0].cluster"), "{line}");
    assert_eq!(get(addr, "/", &[("x-api-key", "k")]).await.status, 200);

    // SIGHUP with a good file: the new key works, the old one no longer.
    std::fs::write(&path, text("k2")).unwrap();
    gw.signal("-HUP");
    gw.wait_for("config reloaded");
    assert_eq!(get(addr, "/", &[("x-api-key", "k2")]).await.status, 200);
    assert_eq!(get(addr, "/", &[("x-api-key", "k")]).await.status, 401);

    gw.signal("-TERM");
    let status = gw.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// `workers = 3`: thread-per-core. Three worker threads (named, so an
/// operator sees them in `top -H`), each with a listener of its own, serve
/// every connection; the admin API answers from the control thread; SIGTERM
/// drains them all and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_workers_runs_a_thread_per_worker_and_drains_them_all() {
    let up = Upstream::start("u").await;
    let path = write_config(
        "workers.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 3\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{}\"]\n\
             [[routes]]\nname = \"r\"\ncluster = \"c\"\n",
            up.addr
        ),
    );
    let mut cmd = wasmgate_tests::gateway_command(BIN);
    cmd.args(["serve", "--config"]).arg(&path);
    let mut gw = Served::spawn_until(cmd, "admin listening");
    let admin = gw.addr;
    let line = tokio::task::block_in_place(|| gw.wait_for("wasmgate listening"));
    assert!(line.contains("workers=3"), "{line}");
    let addr: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .expect("the listening line names the address");

    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", gw.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    // `comm` is cut to 15 bytes: "wasmgate-worker-0" reads "wasmgate-worker".
    assert_eq!(
        threads
            .iter()
            .filter(|t| t.starts_with("wasmgate-worker"))
            .count(),
        3,
        "one thread per worker: {threads:?}"
    );

    for _ in 0..30 {
        assert_eq!(get(addr, "/", &[]).await.status, 200);
    }
    let metrics = get(admin, "/metrics", &[("host", "localhost")]).await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let accepted: Vec<u64> = (0..3)
        .map(|w| {
            metrics
                .body
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "wasmgate_worker_connections_total{{worker=\"{w}\"}}"
                    ))
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(accepted.iter().sum::<u64>(), 30, "{accepted:?}");
    assert!(
        accepted.iter().filter(|&&n| n > 0).count() >= 2,
        "the connections were spread over the workers' listeners: {accepted:?}"
    );

    gw.signal("-TERM");
    let status = tokio::task::block_in_place(|| gw.wait_exit());
    assert!(status.success(), "exit status {status:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no worker accepts any longer"
    );
}

/// An upstream that answers `/fast` at once and holds every other request
/// until released (or forever): requests stay in flight exactly as long as
/// the test wants, with no timing involved.
pub(crate) struct HeldUpstream {
    pub(crate) addr: SocketAddr,
    arrived: tokio::sync::watch::Receiver<usize>,
    pub(crate) release: tokio::sync::watch::Sender<bool>,
}

impl HeldUpstream {
    pub(crate) async fn start() -> HeldUpstream {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrived_tx, arrived) = tokio::sync::watch::channel(0usize);
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let arrived_tx = std::sync::Arc::new(arrived_tx);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (arrived_tx, release_rx) = (arrived_tx.clone(), release_rx.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (arrived_tx, mut release_rx) = (arrived_tx.clone(), release_rx.clone());
                        async move {
                            if req.uri().path() != "/fast" {
                                arrived_tx.send_modify(|n| *n += 1);
                                let _ = release_rx.wait_for(|r| *r).await;
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"done")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HeldUpstream {
            addr,
            arrived,
            release,
        }
    }

    /// Waits until `n` held requests have arrived.
    pub(crate) async fn wait_arrived(&self, n: usize) {
        let mut rx = self.arrived.clone();
        wasmgate_tests::within("held requests arriving upstream", rx.wait_for(|a| *a >= n))
            .await
            .unwrap();
    }
}

pub(crate) fn drain_config(up: SocketAddr, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{up}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n"
    )
}

/// An HTTP/1.1 keep-alive connection that has already served one request.
pub(crate) async fn kept_alive_h1(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("/fast")
        .header("host", "gw")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("connection"), None, "kept alive");
    use http_body_util::BodyExt;
    resp.into_body().collect().await.unwrap();
    // Ready for the next request (sending before that fails with "not
    // ready" without writing anything).
    sender.ready().await.unwrap();
    (sender, conn)
}

/// What a raw HTTP/2 client saw, in order.
#[derive(Debug, PartialEq)]
enum H2Event {
    GoAway,
    /// A response head on a stream: the first byte of its header block
    /// (`0x88` is `:status 200` from the HPACK static table).
    Head(u32, u8),
    /// A stream's last frame.
    End(u32),
    /// The server closed the connection.
    Closed,
}

/// Opens an HTTP/2 (h2c, prior knowledge) connection, sends `GET path` on
/// streams 1, 3, … and records every GOAWAY, response head, stream end and
/// the close, in order. Raw frames, so a GOAWAY is seen even if no request
/// fails because of it.
async fn raw_h2(addr: SocketAddr, paths: &[&str]) -> tokio::task::JoinHandle<Vec<H2Event>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for (i, path) in paths.iter().enumerate() {
        // :method GET, :scheme http (static table), then :path and
        // :authority as literals without indexing.
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 2, b'g', b'w']);
        // END_STREAM | END_HEADERS
        out.extend(frame(0x1, 0x5, 2 * i as u32 + 1, &block));
    }
    stream.write_all(&out).await.unwrap();
    tokio::spawn(async move {
        let mut events = Vec::new();
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                events.push(H2Event::Closed);
                return events;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                events.push(H2Event::Closed);
                return events;
            }
            match kind {
                // SETTINGS (not an ack): acknowledge.
                0x4 if flags & 0x1 == 0 => {
                    let _ = stream.write_all(&frame(0x4, 0x1, 0, &[])).await;
                }
                // PING (not an ack): answer; graceful shutdown pings.
                0x6 if flags & 0x1 == 0 => {
                    let _ = stream.write_all(&frame(0x6, 0x1, 0, &payload)).await;
                }
                0x7 => events.push(H2Event::GoAway),
                0x1 => {
                    events.push(H2Event::Head(id, payload.first().copied().unwrap_or(0)));
                    if flags & 0x1 != 0 {
                        events.push(H2Event::End(id));
                    }
                }
                0x0 if flags & 0x1 != 0 => events.push(H2Event::End(id)),
                _ => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_and_closes_connections_gracefully() {
    let up = HeldUpstream::start().await;
    let path = write_config("drain.toml", &drain_config(up.addr, ""));
    let mut gw = Served::start(&path);
    let addr = gw.addr;

    // Two HTTP/1.1 keep-alive connections and one HTTP/2 connection with
    // two streams, all four requests held upstream.
    let mut h1 = Vec::new();
    for i in 0..2 {
        let (mut sender, conn) = kept_alive_h1(addr).await;
        let req = hyper::Request::get(format!("/slow/{i}"))
            .header("host", "gw")
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = tokio::spawn(sender.send_request(req));
        // The sender stays alive: dropping it could close the connection
        // before the request is written.
        h1.push((resp, conn, sender));
    }
    let h2 = raw_h2(addr, &["/slow/h2a", "/slow/h2b"]).await;
    up.wait_arrived(4).await;

    gw.signal("-TERM");
    gw.wait_for("shutting down");
    // The listener is closed while the requests are still in flight (they
    // are held until released below).
    wasmgate_tests::within("the listener to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(h1.iter().all(|(resp, _, _)| !resp.is_finished()));

    up.release.send(true).unwrap();
    for (resp, conn, _sender) in h1 {
        let resp = wasmgate_tests::within("HTTP/1.1 response", resp)
            .await
            .unwrap()
            .expect("the request in flight completes");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "the response in flight tells the client the connection closes: {:?}",
            resp.headers()
        );
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"done");
        wasmgate_tests::within("HTTP/1.1 connection close", conn)
            .await
            .unwrap()
            .expect("the connection ends cleanly");
    }
    let events = wasmgate_tests::within("HTTP/2 connection", h2)
        .await
        .unwrap();
    use H2Event::*;
    assert_eq!(events.first(), Some(&GoAway), "GOAWAY first: {events:?}");
    for id in [1, 3] {
        assert!(events.contains(&Head(id, 0x88)), "stream {id}: {events:?}");
        assert!(events.contains(&End(id)), "stream {id}: {events:?}");
    }
    assert_eq!(events.last(), Some(&Closed), "{events:?}");

    let status = gw.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    gw.wait_for("drained: all connections closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_cuts_off_what_is_left_counts_it_and_exits_zero() {
    let up = HeldUpstream::start().await;
    let path = write_config(
        "drain-deadline.toml",
        &drain_config(up.addr, "drain_timeout = \"1s\""),
    );
    let mut gw = Served::start(&path);
    let (mut sender, conn) = kept_alive_h1(gw.addr).await;
    // Never released: the upstream holds it for as long as the test runs.
    let req = hyper::Request::get("/never")
        .header("host", "gw")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tokio::spawn(sender.send_request(req));
    up.wait_arrived(1).await;

    gw.signal("-TERM");
    let line = gw.wait_for("drain deadline");
    assert!(line.contains("requests=1"), "{line}");
    assert!(line.contains("connections=1"), "{line}");
    let status = gw.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let cut = wasmgate_tests::within("the cut request", resp)
        .await
        .unwrap();
    assert!(cut.is_err(), "cut off, not answered: {cut:?}");
    let _ = wasmgate_tests::within("the cut connection", conn).await;
    drop(up.release);
}

/// `wasmgate serve` on a listening socket it inherits as fd 3 (the socket
/// activation protocol: `LISTEN_FDS=1`), instead of binding its own.
fn serve_on(socket: &socket2::Socket, config: &std::path::Path) -> Served {
    Served::spawn(serve_on_command(socket, config))
}

fn serve_on_command(socket: &socket2::Socket, config: &std::path::Path) -> Command {
    use command_fds::{CommandFdExt, FdMapping};
    // A duplicate becomes fd 3 in the child only: the test's own socket stays
    // close-on-exec, so children other tests spawn meanwhile do not inherit it.
    let fd = socket.try_clone().unwrap();
    let mut cmd = wasmgate_tests::gateway_command(BIN);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID");
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: std::os::fd::OwnedFd::from(fd),
        child_fd: 3,
    }])
    .unwrap();
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_over_the_listening_socket_and_no_connection_is_refused() {
    let up = Upstream::start("u").await;
    let path = write_config(
        "handoff.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
            up.addr
        ),
    );
    // The socket the two processes share (listen = 127.0.0.1:1 above is
    // never bound: the inherited socket takes its place).
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let socket = socket2::Socket::from(std_listener);
    let mut old = serve_on(&socket, &path);
    assert_eq!(old.addr, addr);

    // New connections all the way through, one request each.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Which process answered: request ids start with a per-process prefix.
    let load = {
        let (stop, served) = (stop.clone(), served.clone());
        tokio::spawn(async move {
            let (mut failures, mut answered_by) = (Vec::new(), Vec::<String>::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match tokio::net::TcpStream::connect(addr).await {
                    Err(e) => failures.push(format!("connect: {e}")),
                    Ok(_) => {
                        let r = get(addr, "/", &[]).await;
                        if r.status == 200 {
                            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let id = r.header("x-request-id").unwrap_or_default();
                            let process = id.get(..16).unwrap_or_default().to_owned();
                            if answered_by.last() != Some(&process) {
                                answered_by.push(process);
                            }
                        } else {
                            failures.push(format!("status {}", r.status));
                        }
                    }
                }
            }
            (failures, answered_by)
        })
    };
    let wait_served = |n: usize| {
        let served = served.clone();
        wasmgate_tests::within("requests served", async move {
            let start = served.load(std::sync::atomic::Ordering::Relaxed);
            while served.load(std::sync::atomic::Ordering::Relaxed) < start + n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_served(20).await;

    // The new process shares the socket; then the old one drains and exits.
    let mut new = serve_on(&socket, &path);
    assert_eq!(new.addr, addr);
    drop(socket);
    wait_served(20).await;
    old.signal("-TERM");
    let status = tokio::task::block_in_place(|| old.wait_exit());
    assert!(status.success(), "the old process exits 0: {status:?}");
    // Only the new process holds the socket now, and it serves.
    wait_served(20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (failures, answered_by) = wasmgate_tests::within("the load", load).await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    // The old process answered first, both answered while they shared the
    // socket, and the new one answered last.
    let mut processes = answered_by.clone();
    processes.sort();
    processes.dedup();
    assert_eq!(processes.len(), 2, "{answered_by:?}");
    assert_ne!(answered_by.first(), answered_by.last(), "{answered_by:?}");

    new.signal("-TERM");
    let status = tokio::task::block_in_place(|| new.wait_exit());
    assert!(status.success(), "{status:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nobody holds the socket any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_serves_at_once_and_takes_over_the_data_directory_when_released() {
    let up = Upstream::start("u").await;
    let data = std::env::temp_dir().join(format!("wasmgate-cli-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        data.display().to_string(),
        up.addr
    );
    let path = write_config("handoff-data.toml", &text);
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let socket = socket2::Socket::from(std_listener);
    // Each process's admin listener is its own (port 0); the proxy socket
    // is shared.
    let start = |socket: &socket2::Socket| {
        let served = Served::spawn_until(serve_on_command(socket, &path), "admin listening");
        let admin = served.addr;
        tokio::task::block_in_place(|| served.wait_for("wasmgate listening"));
        (served, admin)
    };
    let (mut old, old_admin) = start(&socket);
    assert_eq!(get(addr, "/", &[]).await.status, 200);

    // The new process builds from what the directory holds and serves at
    // once; it refuses changes while the old one holds the directory.
    let (mut new, new_admin) = start(&socket);
    drop(socket);
    let refused = wasmgate_tests::send_body(
        new_admin,
        "POST",
        "/config/reload",
        &[("host", "localhost")],
        Vec::new(),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("taking over"), "{}", refused.body);

    // A change made on the old process meanwhile...
    let with_extra = format!(
        "{text}[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nrespond = {{ status = 204 }}\n"
    );
    let r = wasmgate_tests::send_body(
        old_admin,
        "PUT",
        "/config",
        &[("host", "localhost")],
        with_extra.into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // ...is what the new one runs once the old one drains and lets go.
    old.signal("-TERM");
    let status = tokio::task::block_in_place(|| old.wait_exit());
    assert!(status.success(), "{status:?}");
    tokio::task::block_in_place(|| new.wait_for("took over the data directory"));
    assert_eq!(get(addr, "/extra", &[]).await.status, 204);
    // And it takes changes again.
    let r = wasmgate_tests::send_body(
        new_admin,
        "POST",
        "/config/reload",
        &[("host", "localhost")],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get(addr, "/extra", &[]).await.status,
        200,
        "back to the file"
    );
    new.signal("-TERM");
    let status = tokio::task::block_in_place(|| new.wait_exit());
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_second_gateway_on_a_held_data_directory_is_refused_at_once() {
    let data = std::env::temp_dir().join(format!("wasmgate-cli-held-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        data.display().to_string()
    );
    let path = write_config("held.toml", &text);
    let mut first = Served::start(&path);
    let second = wasmgate_tests::gateway_command(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another wasmgate process"), "{err}");
    first.signal("-TERM");
    assert!(first.wait_exit().success());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn an_inherited_socket_that_does_not_listen_is_refused_by_name() {
    let path = write_config(
        "not-listening.toml",
        "[server]\nlisten = \"127.0.0.1:1\"\n[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
    );
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let out = serve_on_command(&socket, &path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("inherited proxy socket") && err.contains("not listening"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_reload_whose_filter_blocks_in_init_exits_at_once() {
    let up = Upstream::start("u").await;
    // A wall-clock budget far past the hang guard: only abandoning the build
    // lets the process exit in time.
    let text = |config: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n[filters.fault]\npath = {:?}\npool_size = 2\ncpu_limit = \"100ms\"\nwall_limit = \"1h\"\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{{ name = \"fault\", config = {config} }}]\n",
            artifacts::FAULT,
            up.addr
        )
    };
    let path = write_config("blocks-in-init.toml", &text("{ tag = \"old\" }"));
    let mut gw = Served::start(&path);
    assert_eq!(get(gw.addr, "/", &[]).await.status, 200);
    std::fs::write(
        &path,
        text("{ tag = \"blocking\", sleep_init_ms = 36000000 }"),
    )
    .unwrap();
    gw.signal("-HUP");
    gw.wait_for("fault filter: sleeping in init (blocking)");
    // The old config serves while the reload waits on the guest...
    assert_eq!(get(gw.addr, "/", &[]).await.status, 200);
    assert_eq!(up.seen().last().unwrap().headers["x-fault-seen"], "old");
    // ...and the stop signal is heard: the build is abandoned, the drain
    // runs, and the process exits 0.
    gw.signal("-TERM");
    gw.wait_for("shutting down");
    let status = gw.wait_exit();
    assert!(status.success(), "{status}");
}

/// `wasmgate filter inspect`: what a component targets, whether this
/// gateway loads it, its imports (and any it would refuse), and what it
/// declares at `init` with a config.
#[test]
fn filter_inspect_says_what_a_component_is_and_whether_it_loads() {
    let inspect = |path: &str, extra: &[&str]| {
        let out = wasmgate_tests::gateway_command(BIN)
            .args(["filter", "inspect", path])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A first-party filter: 0.2, loads, declares its phases with a config.
    let (ok, out, err) = inspect(artifacts::API_KEY, &["--config", r#"{"keys":["k"]}"#]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("contract: wasmgate:filter@0.2."), "{out}");
    assert!(out.contains("loads: yes"), "{out}");
    assert!(out.contains("phases called: on-request"), "{out}");
    assert!(!out.contains("REFUSED"), "{out}");
    // Its init refuses a bad config: said, and the exit code fails.
    let (ok, out, _) = inspect(artifacts::API_KEY, &["--config", r#"{"keys":[]}"#]);
    assert!(!ok);
    assert!(out.contains("refused"), "{out}");
    // Timed: a compile, a load from the compile cache, a new instance,
    // each measured (the figures are the benchmark's, not checked here).
    let (ok, out, err) = inspect(
        artifacts::API_KEY,
        &["--json", "--timings", "--config", r#"{"keys":["k"]}"#],
    );
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in ["compile_ms", "cached_load_ms", "instantiate_ms"] {
        let ms = v["timings"][key].as_f64();
        assert!(ms.is_some_and(|ms| ms > 0.0), "{key}: {v}");
    }
    assert!(v["core_instances"].as_u64().is_some_and(|n| n >= 1), "{v}");
    // Timings need a filter that starts: a refused config times nothing.
    let (ok, out, _) = inspect(
        artifacts::API_KEY,
        &["--json", "--timings", "--config", r#"{"keys":[]}"#],
    );
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.get("timings").is_none(), "{v}");
    // A 0.1 guest, as JSON.
    let (ok, out, err) = inspect(artifacts::CONTRACT_0_1_0, &["--json"]);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["contract"].as_str().unwrap().starts_with("0.1."), "{v}");
    assert_eq!(v["loads"], true);
    // A component for another contract, and one importing what this host
    // lacks: each refused, naming why.
    let (ok, out, _) = inspect(artifacts::WRONG_CONTRACT, &[]);
    assert!(!ok);
    assert!(out.contains("contract: none"), "{out}");
    assert!(out.contains("loads: NO"), "{out}");
    let newer = wat::parse_str(
        r#"(component
             (import "wasmgate:filter/config@0.2.9" (instance
               (export "get" (func (param "name" string) (result (option string))))))
             (import "wasmgate:filter/clock@0.2.9" (instance
               (export "now-ms" (func (result u64))))))"#,
    )
    .unwrap();
    let path = write_config("newer.wasm", "");
    std::fs::write(&path, newer).unwrap();
    let (ok, out, _) = inspect(path.to_str().unwrap(), &[]);
    assert!(!ok);
    assert!(
        out.lines()
            .any(|l| l.contains("wasmgate:filter/clock@0.2.9") && l.contains("REFUSED")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("wasmgate:filter/config@0.2.9") && l.contains("provided")),
        "{out}"
    );
    // Not a component at all.
    let path = write_config("not.wasm", "hello");
    let (ok, _, err) = inspect(path.to_str().unwrap(), &[]);
    assert!(!ok);
    assert!(err.contains("not a WebAssembly file"), "{err}");
}
