//! Upstreams that keep working: balancing algorithms, active and passive
//! health, retries and their budget, per-try timeouts, circuit breaking,
//! and endpoints re-resolved from host names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wasmgate_tests::{
    TableResolver, Upstream, UpstreamOptions, dead_addr, get, metric, send, start_gateway,
    start_gateway_with_resolver, within,
};

/// A gateway with one route to cluster `c`; `endpoints` is the TOML list,
/// `cluster_extra` goes in `[clusters.c]`.
fn config(endpoints: &str, cluster_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = {endpoints}\n{cluster_extra}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n"
    )
}

fn list(ups: &[&Upstream]) -> String {
    let items: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!("[{}]", items.join(", "))
}

/// Which upstream answered each of `n` sequential GETs of `path`.
async fn who(
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(addr, path, headers).await;
        assert_eq!(r.status, 200, "{}", r.body);
        out.push(r.header("x-upstream").unwrap_or_default().to_owned());
    }
    out
}

fn tally(names: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
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

#[tokio::test]
async fn weighted_round_robin_splits_exactly_by_weight() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let endpoints = format!(
        "[{{ address = \"{}\", weight = 1 }}, {{ address = \"{}\", weight = 2 }}, {{ address = \"{}\", weight = 3 }}]",
        a.addr, b.addr, c.addr
    );
    let gw = start_gateway(&config(&endpoints, "")).await;
    let t = tally(&who(gw.addr(), "/", 60, &[]).await);
    assert_eq!((t["a"], t["b"], t["c"]), (10, 20, 30), "{t:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn least_request_avoids_the_endpoint_with_requests_in_flight() {
    let slow = Upstream::start_with(
        "slow",
        UpstreamOptions {
            delay: Some(Duration::from_secs(3)),
            ..UpstreamOptions::http1()
        },
    )
    .await;
    let fast = Upstream::start("fast").await;
    let gw = start_gateway(&config(
        &list(&[&slow, &fast]),
        "balance = \"least_request\"",
    ))
    .await;
    let addr = gw.addr();
    // Concurrent requests until one is held on the slow endpoint.
    let mut held = Vec::new();
    eventually("a request in flight on slow", async || {
        held.push(tokio::spawn(async move { get(addr, "/", &[]).await }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        slow.count() >= 1
    })
    .await;
    // Now slow has requests in flight and fast has none: every new request
    // goes to fast.
    let names = who(gw.addr(), "/", 10, &[]).await;
    assert!(names.iter().all(|n| n == "fast"), "{names:?}");
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn ring_hash_sticks_keys_and_moves_only_a_removed_endpoints_keys() {
    let mut ups = vec![
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let extra = "balance = \"ring_hash\"\nhash_on = \"header:x-user\"\n[clusters.c.health_check]\ntcp = true\ninterval = \"50ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1";
    let gw = start_gateway(&config(&list(&ups.iter().collect::<Vec<_>>()), extra)).await;
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut before = HashMap::new();
    for u in &users {
        let first = who(gw.addr(), "/", 3, &[("x-user", u)]).await;
        assert!(
            first.windows(2).all(|w| w[0] == w[1]),
            "{u} moved: {first:?}"
        );
        before.insert(u.clone(), first[0].clone());
    }
    let spread = tally(&before.values().cloned().collect::<Vec<_>>());
    assert_eq!(
        spread.len(),
        3,
        "keys spread over every endpoint: {spread:?}"
    );

    // Take `c` away; once the health check notices, only c's keys move.
    let c = ups.pop().unwrap();
    c.stop();
    eventually("c marked unhealthy", async || {
        let m = gw.metrics_text();
        metric(
            &m,
            &format!(
                "wasmgate_upstream_endpoint_healthy{{tenant=\"default\",cluster=\"c\",endpoint=\"{}\"}}",
                c.addr
            ),
        ) == Some(0.0)
    })
    .await;
    for u in &users {
        let now = who(gw.addr(), "/", 1, &[("x-user", u)]).await.remove(0);
        if before[u] == "c" {
            assert_ne!(now, "c");
        } else {
            assert_eq!(now, before[u], "{u} moved although its endpoint stayed");
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_killed_endpoint_is_ejected_retried_around_and_readmitted() {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let extra = "[clusters.c.outlier]\nconsecutive_connect_failures = 1\nbase_ejection = \"300ms\"";
    let gw = start_gateway(&config(&list(&[&a, &b]), extra)).await;
    assert_eq!(tally(&who(gw.addr(), "/", 4, &[]).await).len(), 2);

    b.stop();
    // Every GET succeeds: a try that cannot connect to b goes to a.
    let names = who(gw.addr(), "/", 20, &[]).await;
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
    let m = gw.metrics_text();
    assert!(
        metric(
            &m,
            "wasmgate_upstream_ejections_total{tenant=\"default\",cluster=\"c\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "wasmgate_upstream_retries_total{tenant=\"default\",cluster=\"c\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );

    // b comes back: once its ejection runs out it gets traffic again.
    b.restart().await;
    let before = b.count();
    eventually("b readmitted", async || {
        let r = get(gw.addr(), "/", &[]).await;
        assert_eq!(r.status, 200);
        b.count() > before
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_post_that_reached_the_upstream_is_never_retried() {
    let up = Upstream::start("u").await;
    let extra = "[clusters.c.retry]\nretries = 2\non = [\"5xx\", \"reset\"]\nbackoff = \"1ms\"";
    let gw = start_gateway(&config(&list(&[&up]), extra)).await;

    let r = send(gw.addr(), "POST", "/status/503", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.count(), 1, "POST answered 503: not retried");
    let r = send(gw.addr(), "POST", "/close", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(up.count(), 2, "POST cut off after it was sent: not retried");

    let r = get(gw.addr(), "/status/503", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.count(), 5, "GET: the first try and two retries");
    let r = get(gw.addr(), "/close", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(up.count(), 8);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_post_that_never_reached_the_upstream_is_retried_elsewhere() {
    let dead = dead_addr().await;
    let up = Upstream::start("u").await;
    // Round robin starts with the first endpoint: the dead one.
    let endpoints = format!("[\"{dead}\", \"{}\"]", up.addr);
    let gw = start_gateway(&config(&endpoints, "")).await;
    let r = send(gw.addr(), "POST", "/x", &[("content-length", "0")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn per_try_timeout_is_504_or_a_retry_elsewhere() {
    let slow = Upstream::start_with(
        "slow",
        UpstreamOptions {
            delay: Some(Duration::from_secs(5)),
            ..UpstreamOptions::http1()
        },
    )
    .await;
    let fast = Upstream::start("fast").await;
    let retry = "[clusters.c.retry]\nretries = 1\non = [\"per-try-timeout\", \"connect-failure\"]\nper_try_timeout = \"200ms\"\nbackoff = \"1ms\"";
    // Only the slow endpoint: 504 after the retry times out too.
    let gw = start_gateway(&config(&list(&[&slow]), retry)).await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_timeout");
    assert_eq!(slow.count(), 2);
    gw.shutdown().await;

    // Slow first (round robin starts with it), then fast: the timed-out
    // try is retried on fast.
    let gw = start_gateway(&config(&list(&[&slow, &fast]), retry)).await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-upstream"), Some("fast"));
    assert_eq!(slow.count(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_retry_budget_caps_retries_in_a_full_outage() {
    let up = Upstream::start("down").await;
    let extra = "[clusters.c.retry]\nretries = 3\non = [\"5xx\"]\nbackoff = \"1ms\"\nbudget_percent = 0\nmin_retry_concurrency = 1\n[clusters.c.outlier]\nconsecutive_5xx = 0";
    let gw = start_gateway(&config(&list(&[&up]), extra)).await;
    let addr = gw.addr();
    // 20 requests at once, each answered 503 after 200 ms.
    let all: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/delay/200/status/503", &[]).await }))
        .collect();
    for h in all {
        assert_eq!(h.await.unwrap().status, 503);
    }
    // Without a budget: 20 × 4 tries. With one retry in flight at a time,
    // far fewer.
    let tries = up.count();
    assert!((20..40).contains(&tries), "{tries} tries");
    let m = gw.metrics_text();
    assert!(
        metric(
            &m,
            "wasmgate_upstream_retry_budget_exhausted_total{tenant=\"default\",cluster=\"c\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn all_endpoints_down_by_active_checks_is_a_fast_503() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let extra = "[clusters.c.health_check]\ntcp = true\ninterval = \"50ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1";
    let gw = start_gateway(&config(&format!("[\"{d1}\", \"{d2}\"]"), extra)).await;
    eventually("both marked down", async || {
        let m = gw.metrics_text();
        metric(
            &m,
            &format!("wasmgate_upstream_endpoint_healthy{{tenant=\"default\",cluster=\"c\",endpoint=\"{d1}\"}}"),
        ) == Some(0.0)
            && metric(
                &m,
                &format!("wasmgate_upstream_endpoint_healthy{{tenant=\"default\",cluster=\"c\",endpoint=\"{d2}\"}}"),
            ) == Some(0.0)
    })
    .await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["code"], "no_healthy_upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn circuit_breaker_limits_requests_and_connections() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(
        &list(&[&up]),
        "[clusters.c.circuit_breaker]\nmax_requests = 2",
    ))
    .await;
    let addr = gw.addr();
    let all: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/delay/500", &[]).await }))
        .collect();
    let mut statuses = Vec::new();
    for h in all {
        let r = h.await.unwrap();
        if r.status == 503 {
            assert_eq!(r.json()["code"], "cluster_overloaded");
        }
        statuses.push(r.status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503, 503, 503]);
    gw.shutdown().await;

    let gw = start_gateway(&config(
        &list(&[&up]),
        "[clusters.c.circuit_breaker]\nmax_connections = 1\nmax_pending = 0",
    ))
    .await;
    let addr = gw.addr();
    let all: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/delay/500", &[]).await }))
        .collect();
    let mut statuses: Vec<u16> = Vec::new();
    for h in all {
        statuses.push(h.await.unwrap().status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 503, 503], "one connection, nobody may wait");
    let m = gw.metrics_text();
    assert!(
        metric(
            &m,
            "wasmgate_upstream_overflow_total{tenant=\"default\",cluster=\"c\",limit=\"max_pending\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    gw.shutdown().await;
}

/// A [`TableResolver`] that counts the resolutions it failed.
#[derive(Debug, Default)]
struct CountingResolver {
    table: TableResolver,
    failed: std::sync::atomic::AtomicUsize,
}

impl wasmgate::upstream::dns::Resolve for CountingResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::io::Result<Vec<std::net::SocketAddr>>>
                + Send
                + '_,
        >,
    > {
        let answer = self.table.resolve(host, port);
        Box::pin(async move {
            let answer = answer.await;
            if answer.is_err() {
                self.failed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            answer
        })
    }
}

#[tokio::test]
async fn host_name_endpoints_follow_their_resolution() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let resolver = Arc::new(CountingResolver::default());
    resolver.table.set("svc.test", &[a.addr]);
    let gw = start_gateway_with_resolver(
        &config("[\"svc.test:80\"]", "dns_refresh = \"50ms\""),
        resolver.clone(),
    )
    .await;
    assert_eq!(who(gw.addr(), "/", 3, &[]).await, ["a", "a", "a"]);

    // Resolution failing keeps the last good address. Two failed
    // re-resolutions: the first has been acted on once the second is asked
    // (one refresh at a time).
    resolver.table.set("svc.test", &[]);
    eventually("two failed re-resolutions", async || {
        resolver.failed.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(who(gw.addr(), "/", 2, &[]).await, ["a", "a"]);

    // A new address is picked up.
    resolver.table.set("svc.test", &[b.addr]);
    eventually("b picked up", async || {
        get(gw.addr(), "/", &[]).await.header("x-upstream") == Some("b")
    })
    .await;
    assert_eq!(who(gw.addr(), "/", 3, &[]).await, ["b", "b", "b"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_timeout_bounds_every_try_together() {
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{}\"]\nretry = {{ retries = 3, on = [\"per-try-timeout\"], per_try_timeout = \"300ms\", backoff = \"1ms\" }}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\ntimeout = \"500ms\"\n",
        up.addr
    );
    let gw = start_gateway(&toml).await;
    let r = get(gw.addr(), "/delay/5000", &[]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_timeout");
    assert!(r.body.contains("route's timeout"), "{}", r.body);
    assert_eq!(up.count(), 2, "the route timeout cut the retries short");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_overload_guard_sheds_with_503_before_any_work() {
    let up = Upstream::start("u").await;
    // Any process is past 1 MiB resident.
    let toml = format!(
        "{}\n[overload]\nmax_memory = \"1MiB\"\ncheck_interval = \"20ms\"\n",
        config(&list(&[&up]), "")
    );
    let gw = start_gateway(&toml).await;
    eventually("shedding", async || {
        get(gw.addr(), "/", &[]).await.status == 503
    })
    .await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    let m = gw.metrics_text();
    assert!(
        metric(&m, "wasmgate_overload_shed_total{kind=\"memory\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(metric(&m, "wasmgate_process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
    gw.shutdown().await;
}
