//! Host services that reach outside the filter: `outbound` calls to clusters
//! (grants, the per-request budget, timeouts, CPU versus wall-clock time)
//! and `metrics` (export, prefixes, caps). The `fault` test filter makes the
//! calls; real upstreams answer them.

use wasmgate_tests::{Upstream, get, metric, start_gateway};

/// `fault` on route `r` to cluster `c` (`up`), with `extra` in
/// `[filters.fault]` and `more` appended (other clusters).
fn config(up: &Upstream, extra: &str, more: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n[filters.fault]\npath = {:?}\npool_size = 2\n{extra}\n[clusters.c]\nendpoints = [\"{}\"]\n{more}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n[[routes.filters]]\nname = \"fault\"\n",
        wasmgate_tests::artifacts::FAULT,
        up.addr
    )
}

#[tokio::test]
async fn outbound_in_a_loop_stops_at_the_per_request_budget() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(
        &up,
        "outbound_clusters = [\"c\"]\nmax_outbound_calls = 3",
        "",
    ))
    .await;
    for round in 1..=2 {
        let r = get(gw.addr(), "/", &[("x-fault", "outbound-loop")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.body, "ok=3 error=OutboundError::BudgetExhausted",
            "round {round}: the budget is per request, so each round gets 3"
        );
    }
    // Only the outbound calls reached the upstream (the filter answered
    // the requests itself), and each carried its request's id.
    let seen = up.seen();
    assert_eq!(seen.len(), 6);
    let ids: std::collections::BTreeSet<_> = seen
        .iter()
        .map(|s| s.headers["x-request-id"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "one id per client request: {ids:?}");
    let m = gw.metrics_text();
    let count = |cluster: &str, outcome: &str| {
        metric(
            &m,
            &format!(
                "wasmgate_filter_outbound_total{{filter=\"fault\",cluster=\"{cluster}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(count("c", "2xx"), Some(6.0), "{m}");
    assert_eq!(count("", "budget_exhausted"), Some(2.0), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn outbound_reaches_only_granted_clusters_that_exist() {
    let up = Upstream::start("u").await;
    let secret = Upstream::start("secret").await;
    let gw = start_gateway(&config(
        &up,
        "outbound_clusters = [\"c\"]",
        &format!("[clusters.secret]\nendpoints = [\"{}\"]\n", secret.addr),
    ))
    .await;
    let call = |cluster: &'static str| {
        let addr = gw.addr();
        async move {
            get(
                addr,
                "/",
                &[("x-fault", "outbound-to"), ("x-fault-arg", cluster)],
            )
            .await
            .body
        }
    };
    assert_eq!(call("nope").await, "error=OutboundError::UnknownCluster");
    assert_eq!(
        call("secret").await,
        "error=OutboundError::UnknownCluster",
        "a cluster that exists but is not granted looks the same as none"
    );
    assert_eq!(secret.count(), 0);
    let ok = call("c").await;
    assert!(ok.starts_with("status=200 body="), "{ok}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/outbound");
    assert_eq!(seen[0].headers["x-from"], "fault");
    gw.shutdown().await;
}

#[tokio::test]
async fn send_all_answers_in_order_with_per_call_timeouts() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(
        &up,
        "wall_limit = \"5s\"\noutbound_clusters = [\"*\"]",
        "",
    ))
    .await;
    // The fault filter gives each call a 500 ms timeout.
    let r = get(
        gw.addr(),
        "/",
        &[
            ("x-fault", "outbound-all"),
            ("x-fault-arg", "/delay/200,/status/503,/delay/3000,/"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "200,503,OutboundError::Timeout,200");
    gw.shutdown().await;
}

#[tokio::test]
async fn waiting_on_outbound_is_not_cpu_time_but_is_wall_clock_time() {
    let up = Upstream::start("u").await;
    // Two calls of 300 ms each: far past the 20 ms CPU budget, within the
    // wall-clock limit. Only CPU would be an error here.
    let gw = start_gateway(&config(
        &up,
        "cpu_limit = \"20ms\"\nwall_limit = \"5s\"\nmax_outbound_calls = 2\noutbound_clusters = [\"c\"]",
        "",
    ))
    .await;
    let r = get(
        gw.addr(),
        "/",
        &[("x-fault", "outbound-loop"), ("x-fault-arg", "/delay/300")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "ok=2 error=OutboundError::BudgetExhausted");

    // Nor does waiting become CPU time: a filter that waited 2 s and then
    // spins is stopped at its 20 ms CPU budget, not after spinning for as
    // long as it waited (the bound below is loose on purpose: the two
    // outcomes are about 2 s apart).
    let started = std::time::Instant::now();
    let r = get(
        gw.addr(),
        "/",
        &[
            ("x-fault", "outbound-then-spin"),
            ("x-fault-arg", "/delay/2000"),
        ],
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["code"], "filter_cpu_budget");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(3500),
        "the spin ran for about as long as the wait: {:?}",
        started.elapsed()
    );
    gw.shutdown().await;

    // A filter that keeps waiting on slow calls (each within the call
    // timeout) is cut off at its wall limit, and other requests are served.
    let gw = start_gateway(&config(
        &up,
        "wall_limit = \"500ms\"\noutbound_clusters = [\"c\"]",
        "",
    ))
    .await;
    let r = get(
        gw.addr(),
        "/",
        &[("x-fault", "outbound-loop"), ("x-fault-arg", "/delay/200")],
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["code"], "filter_wall_clock");
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn filter_metrics_are_exported_under_the_filters_name_with_caps() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "", "")).await;
    // 300 label values: the metric keeps 256 series and drops the rest.
    let r = get(
        gw.addr(),
        "/",
        &[("x-fault", "metrics"), ("x-fault-arg", "300")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = gw.metrics_text();
    assert_eq!(
        metric(&m, "wasmgate_filter_fault_hits_total{kind=\"7\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(m.matches("wasmgate_filter_fault_hits_total{").count(), 256);
    assert_eq!(metric(&m, "wasmgate_filter_fault_depth"), Some(2.5), "{m}");
    assert_eq!(
        metric(&m, "wasmgate_filter_fault_work_seconds_count"),
        Some(1.0),
        "{m}"
    );
    let refused = |reason: &str| {
        metric(
            &m,
            &format!(
                "wasmgate_filter_metrics_refused_total{{filter=\"fault\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(refused("too_many_series"), Some(44.0), "{m}");
    assert_eq!(refused("bad_name"), Some(1.0), "{m}");
    gw.shutdown().await;
}
