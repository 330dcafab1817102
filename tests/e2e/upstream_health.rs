//! Which endpoints get traffic: HTTP active health checks on a path, 5xx
//! outlier ejection and re-admission, the random and round-robin balancers
//! over usable endpoints only (and evenly), and host names resolved by the
//! system resolver.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasmgate_tests::{Upstream, capture_logs, get, metric, start_gateway, within};

/// The path the health-checked clusters here are checked on.
const HEALTH_PATH: &str = "/healthz";

/// A test upstream whose answers the test switches while it runs: `GET
/// /healthz` answers the `health` status, every other request the `status`
/// one (both 200 at first). It records every request, and names itself in
/// `x-upstream`.
struct Switchable {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One request a [`Switchable`] received.
#[derive(Debug, Clone)]
struct Received {
    method: http::Method,
    path: String,
    headers: HeaderMap,
}

impl Received {
    /// Sent by the gateway's active checker (by its `User-Agent`).
    fn is_check(&self) -> bool {
        self.headers
            .get("user-agent")
            .is_some_and(|v| v == "wasmgate-health-check")
    }
}

impl Switchable {
    async fn start(name: &str) -> Switchable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(AtomicU16::new(200));
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (name, h, s, log) = (
            name.to_owned(),
            health.clone(),
            status.clone(),
            seen.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (name, h, s, log) = (name.clone(), h.clone(), s.clone(), log.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map_or("/".into(), |p| p.to_string());
                        let code = if path == HEALTH_PATH { &h } else { &s }.load(Ordering::SeqCst);
                        log.lock().unwrap().push(Received {
                            method: req.method().clone(),
                            path,
                            headers: req.headers().clone(),
                        });
                        let resp = Response::builder()
                            .status(code)
                            .header("x-upstream", name.as_str())
                            .body(Full::new(Bytes::from(name.clone())))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Switchable {
            addr,
            health,
            status,
            seen,
            task,
        }
    }

    /// The status `GET /healthz` answers from now on.
    fn set_health(&self, code: u16) {
        self.health.store(code, Ordering::SeqCst);
    }

    /// The status every other request answers from now on.
    fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// The active checker's requests so far.
    fn checks(&self) -> Vec<Received> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.is_check())
            .cloned()
            .collect()
    }

    /// How many requests other than health checks arrived.
    fn traffic(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.is_check())
            .count()
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway with one route to cluster `c` over `endpoints` (a TOML list);
/// `cluster_extra` goes after `[clusters.c]`.
fn config(endpoints: &str, cluster_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = {endpoints}\n{cluster_extra}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n"
    )
}

fn list(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// Polls `cond` until it holds (the hang guard fails the test otherwise).
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    within(what, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
}

/// Which upstream answered each of `n` sequential GETs (all must be 200).
async fn who(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = get(addr, "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        out.push(r.header("x-upstream").unwrap_or_default().to_owned());
    }
    out
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

/// `wasmgate_upstream_endpoint_healthy` of `endpoint` in cluster `c`.
fn healthy(gw: &wasmgate_tests::RunningGateway, endpoint: SocketAddr) -> Option<f64> {
    metric(
        &gw.metrics_text(),
        &format!(
            "wasmgate_upstream_endpoint_healthy{{tenant=\"default\",cluster=\"c\",endpoint=\"{endpoint}\"}}"
        ),
    )
}

fn ejections(gw: &wasmgate_tests::RunningGateway) -> f64 {
    metric(
        &gw.metrics_text(),
        "wasmgate_upstream_ejections_total{tenant=\"default\",cluster=\"c\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn an_http_check_asks_its_path_and_a_failing_endpoint_leaves_and_rejoins_rotation() {
    let (a, b) = (Switchable::start("a").await, Switchable::start("b").await);
    let check = format!(
        "[clusters.c.health_check]\npath = \"{HEALTH_PATH}\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nunhealthy_threshold = 2\nhealthy_threshold = 2"
    );
    let gw = start_gateway(&config(&list(&[a.addr, b.addr]), &check)).await;

    // The checker sends each endpoint `GET /healthz`, with the endpoint's
    // address as `Host`.
    eventually("both endpoints checked", async || {
        !a.checks().is_empty() && !b.checks().is_empty()
    })
    .await;
    for up in [&a, &b] {
        let first = up.checks().remove(0);
        assert_eq!(first.method, http::Method::GET);
        assert_eq!(first.path, HEALTH_PATH);
        assert_eq!(first.headers["host"], up.addr.to_string().as_str());
    }
    let names = who(gw.addr(), 4).await;
    assert_eq!(
        (count(&names, "a"), count(&names, "b")),
        (2, 2),
        "{names:?}"
    );

    // b's check path fails while its traffic would still be answered 200:
    // the check alone takes it out.
    b.set_health(503);
    eventually("b marked unhealthy", async || {
        healthy(&gw, b.addr) == Some(0.0)
    })
    .await;
    let log = capture_logs();
    assert!(
        !log.lines_with(&["endpoint unhealthy (active check)", &b.addr.to_string()])
            .is_empty()
    );
    let before = b.traffic();
    let names = who(gw.addr(), 10).await;
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
    assert_eq!(
        b.traffic(),
        before,
        "no request reached b while it was down"
    );
    let checks_while_down = b.checks().len();

    // Its checks pass again: it is back in rotation.
    b.set_health(200);
    eventually("b marked healthy", async || {
        healthy(&gw, b.addr) == Some(1.0)
    })
    .await;
    assert!(
        b.checks().len() > checks_while_down,
        "checked again while down"
    );
    assert!(
        !log.lines_with(&["endpoint healthy again (active check)", &b.addr.to_string()])
            .is_empty()
    );
    let names = who(gw.addr(), 4).await;
    assert_eq!(
        (count(&names, "a"), count(&names, "b")),
        (2, 2),
        "{names:?}"
    );
    // Every check either endpoint got was for the configured path.
    for up in [&a, &b] {
        assert!(up.checks().iter().all(|c| c.path == HEALTH_PATH));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_answering_5xx_in_a_row_is_ejected_then_readmitted_after_its_ejection() {
    let (a, sick) = (
        Switchable::start("a").await,
        Switchable::start("sick").await,
    );
    // A long first ejection, so that the requests sent while it lasts surely
    // fall within it (checked below), on any machine.
    let outlier = "[clusters.c.outlier]\nconsecutive_5xx = 3\nbase_ejection = \"3s\"";
    let gw = start_gateway(&config(&list(&[a.addr, sick.addr]), outlier)).await;
    assert_eq!(healthy(&gw, sick.addr), Some(1.0));

    // sick answers 500 from now on. Round robin gives it every other
    // request; its third 500 in a row ejects it.
    sick.set_status(500);
    let mut seen_500 = 0;
    let mut ejecting_sent_at = None;
    eventually("sick ejected", async || {
        let sent_at = std::time::Instant::now();
        let r = get(gw.addr(), "/", &[]).await;
        if r.status == 500 {
            assert_eq!(r.header("x-upstream"), Some("sick"));
            seen_500 += 1;
        } else {
            assert_eq!((r.status, r.header("x-upstream")), (200, Some("a")));
        }
        ejecting_sent_at = Some(sent_at);
        ejections(&gw) == 1.0
    })
    .await;
    // The request that ejected it was sent no later than the ejection began.
    let ejecting_sent_at = ejecting_sent_at.unwrap();
    assert_eq!(seen_500, 3, "ejected by its third 5xx in a row");
    assert_eq!(healthy(&gw, sick.addr), Some(0.0));
    assert!(
        !capture_logs()
            .lines_with(&[
                "endpoint ejected for 3s (outlier detection)",
                &sick.addr.to_string()
            ])
            .is_empty()
    );

    // While it is ejected, every request goes to a.
    let before = sick.traffic();
    let names = who(gw.addr(), 20).await;
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
    assert_eq!(sick.traffic(), before, "no request reached sick");
    assert_eq!(
        (healthy(&gw, sick.addr), ejections(&gw)),
        (Some(0.0), 1.0),
        "the ejection outlasted the requests above (if not, the machine was very slow)"
    );

    // sick recovers. Nothing but the end of its ejection lets it back in:
    // once it has run out, it gets requests again, all answered.
    sick.set_status(200);
    eventually("sick readmitted", async || {
        let r = get(gw.addr(), "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.header("x-upstream") == Some("sick")
    })
    .await;
    // A lower bound only, so it cannot flake: the ejection lasted its length.
    assert!(
        ejecting_sent_at.elapsed() >= Duration::from_millis(2_990),
        "readmitted after {:?}",
        ejecting_sent_at.elapsed()
    );
    assert_eq!(healthy(&gw, sick.addr), Some(1.0));
    assert_eq!(ejections(&gw), 1.0);
    let names = who(gw.addr(), 4).await;
    assert_eq!(count(&names, "sick"), 2, "{names:?}");
    gw.shutdown().await;
}

/// The bounds `[lo, hi]` that a Binomial(`n`, `p`) count falls outside of
/// with probability below `alpha`, computed exactly from its distribution.
fn binomial_bounds(n: u64, p: f64, alpha: f64) -> (u64, u64) {
    let mut pmf = Vec::with_capacity(n as usize + 1);
    let mut x = (1.0 - p).powf(n as f64);
    for k in 0..=n {
        pmf.push(x);
        x *= (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p);
    }
    // Half of alpha for each tail.
    let (mut lo, mut tail) = (0, 0.0);
    while tail + pmf[lo as usize] < alpha / 2.0 {
        tail += pmf[lo as usize];
        lo += 1;
    }
    let (mut hi, mut tail) = (n, 0.0);
    while tail + pmf[hi as usize] < alpha / 2.0 {
        tail += pmf[hi as usize];
        hi -= 1;
    }
    (lo, hi)
}

#[tokio::test]
async fn random_spreads_evenly_over_usable_endpoints_only() {
    let ups = [
        Switchable::start("a").await,
        Switchable::start("b").await,
        Switchable::start("c").await,
        Switchable::start("down").await,
        Switchable::start("ejected").await,
    ];
    let [a, b, c, down, ejected] = &ups;
    // `down` fails its checks (its traffic would be answered 200: a request
    // sent there would show); `ejected` answers 500 and its first 500
    // ejects it for far longer than the test.
    down.set_health(503);
    ejected.set_status(500);
    let extra = format!(
        "balance = \"random\"\n[clusters.c.health_check]\npath = \"{HEALTH_PATH}\"\ninterval = \"50ms\"\nunhealthy_threshold = 1\n[clusters.c.outlier]\nconsecutive_5xx = 1\nbase_ejection = \"5m\""
    );
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let gw = start_gateway(&config(&list(&addrs), &extra)).await;
    eventually("down marked unhealthy", async || {
        healthy(&gw, down.addr) == Some(0.0)
    })
    .await;
    eventually("ejected ejected", async || {
        let r = get(gw.addr(), "/", &[]).await;
        assert!(
            r.status == 200 || r.header("x-upstream") == Some("ejected"),
            "{r:?}"
        );
        ejections(&gw) == 1.0
    })
    .await;
    assert_eq!(healthy(&gw, ejected.addr), Some(0.0));
    let (down_before, ejected_before) = (down.traffic(), ejected.traffic());
    assert_eq!(down_before, 0);

    // Three usable endpoints of five: each request goes to one of them,
    // each with probability 1/3. The bounds fail a correct balancer with
    // probability below 1e-9 (each of the 3 counts at most alpha / 3).
    const N: u64 = 600;
    let (lo, hi) = binomial_bounds(N, 1.0 / 3.0, 1e-9 / 3.0);
    let names = who(gw.addr(), N as usize).await;
    assert_eq!(down.traffic(), 0, "a down endpoint gets nothing");
    assert_eq!(
        ejected.traffic(),
        ejected_before,
        "an ejected endpoint gets nothing"
    );
    let counts: Vec<(&str, usize)> = ["a", "b", "c"]
        .into_iter()
        .map(|n| (n, count(&names, n)))
        .collect();
    assert_eq!(
        counts.iter().map(|(_, k)| k).sum::<usize>(),
        N as usize,
        "{counts:?}"
    );
    for (name, k) in &counts {
        assert!(
            (lo..=hi).contains(&(*k as u64)),
            "{name} got {k} of {N}, outside [{lo}, {hi}]: {counts:?}"
        );
    }
    // Random, not a fixed cycle (as round robin's): uniform choices repeat
    // with a period p all the way with probability (1/3)^(N - p); for all p
    // up to N / 2 together, below 1e-140.
    let period =
        (1..=names.len() / 2).find(|&p| names.iter().zip(&names[p..]).all(|(x, y)| x == y));
    assert_eq!(period, None, "a fixed cycle: {:?}", &names[..12]);
    for up in [a, b, c] {
        assert!(up.traffic() > 0);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn round_robin_spreads_a_down_endpoints_turns_over_all_the_others() {
    let ups = [
        Switchable::start("a").await,
        Switchable::start("b").await,
        Switchable::start("c").await,
        Switchable::start("down-1").await,
        Switchable::start("down-2").await,
    ];
    let [_, _, _, down1, down2] = &ups;
    down1.set_health(503);
    down2.set_health(503);
    let check = format!(
        "[clusters.c.health_check]\npath = \"{HEALTH_PATH}\"\ninterval = \"50ms\"\nunhealthy_threshold = 1"
    );
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let gw = start_gateway(&config(&list(&addrs), &check)).await;
    eventually("both marked down", async || {
        healthy(&gw, down1.addr) == Some(0.0) && healthy(&gw, down2.addr) == Some(0.0)
    })
    .await;

    // Round robin over what is usable: a b c a b c …, not a b c a a (the
    // endpoint after the down ones taking their turns, three times the
    // load of the others).
    let names = who(gw.addr(), 30).await;
    let counts: Vec<usize> = ["a", "b", "c"].iter().map(|n| count(&names, n)).collect();
    assert_eq!(counts, [10, 10, 10], "{names:?}");
    assert!(names.windows(4).all(|w| w[0] == w[3]), "{names:?}");
    assert_eq!((down1.traffic(), down2.traffic()), (0, 0));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_localhost_endpoint_is_resolved_by_the_system_resolver_and_served() {
    let up = Upstream::start("u").await;
    let port = up.addr.port();
    // What the system resolver says `localhost` is, here.
    let mut expected: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", port))
        .await
        .expect("localhost resolves")
        .collect();
    expected.sort();
    expected.dedup();
    assert!(
        expected.contains(&up.addr),
        "localhost must include 127.0.0.1 for this test: {expected:?}"
    );
    let gw = start_gateway(&config(&format!("[\"localhost:{port}\"]"), "")).await;

    // The endpoints are the resolved addresses (not the name, dialled as
    // written, which is what an unresolved name falls back to).
    let m = gw.metrics_text();
    let endpoints: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with("wasmgate_upstream_endpoint_healthy{tenant=\"default\",cluster=\"c\"")
        })
        .collect();
    assert_eq!(endpoints.len(), expected.len(), "{endpoints:?}");
    for a in &expected {
        assert_eq!(healthy(&gw, *a), Some(1.0), "{a} in {endpoints:?}");
    }
    assert!(!m.contains("endpoint=\"localhost:"), "{endpoints:?}");

    // Requests are served by the upstream behind it.
    for _ in 0..3 {
        let r = get(gw.addr(), "/via-localhost", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-upstream"), Some("u"));
    }
    assert_eq!(up.count(), 3);
    assert_eq!(up.seen()[0].path, "/via-localhost");
    gw.shutdown().await;
}
