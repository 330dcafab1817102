//! Misbehaving filters: each failure is contained to the request it served,
//! answered with a 5xx in the standard format, logged with route and filter;
//! the next request is served normally. And the sandbox has nothing in it.

use wasmgate_tests::{Upstream, capture_logs, get, start_gateway};

use crate::filters_toml;

async fn fault_gateway(up: &Upstream) -> wasmgate_tests::RunningGateway {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"faulty-route\"\ncluster = \"c\"\n[[routes.filters]]\nname = \"fault\"\nconfig = {{ tag = \"ok\" }}\n",
        filters_toml(),
        up.addr
    );
    start_gateway(&toml).await
}

async fn contained(mode: &str, expected_code: &str) {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let gw = fault_gateway(&up).await;

    let failed = get(gw.addr(), "/", &[("x-fault", mode)]).await;
    assert_eq!(failed.status, 500, "{mode}: {}", failed.body);
    let body = failed.json();
    assert_eq!(body["code"], expected_code, "{mode}: {body}");
    assert_eq!(body["message"], "filter \"fault\" failed");
    let request_id = body["request_id"].as_str().unwrap().to_owned();
    let lines = logs.lines_with(&[&request_id, "faulty-route", "fault", expected_code]);
    assert_eq!(
        lines.len(),
        1,
        "{mode}: one log line naming route and filter, got {lines:?}"
    );
    assert_eq!(up.count(), 0, "{mode}: a failed filter stops the request");

    // The next request is served normally, on the same gateway.
    for _ in 0..3 {
        let next = get(gw.addr(), "/", &[]).await;
        assert_eq!(next.status, 200, "{mode}: after the failure: {}", next.body);
    }
    assert_eq!(
        up.seen()
            .last()
            .unwrap()
            .headers
            .get("x-fault-seen")
            .unwrap(),
        "ok"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_trap_fails_only_its_request() {
    contained("trap", "filter_trap").await;
}

#[tokio::test]
async fn an_endless_loop_is_interrupted_at_the_cpu_budget() {
    contained("loop", "filter_cpu_budget").await;
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_cap() {
    contained("alloc", "filter_memory_limit").await;
}

#[tokio::test]
async fn a_stack_overflow_fails_only_its_request() {
    contained("recurse", "filter_trap").await;
}

#[tokio::test]
async fn a_loop_does_not_stall_other_requests() {
    let up = Upstream::start("u").await;
    let gw = fault_gateway(&up).await;
    let addr = gw.addr();
    let spinners: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "/", &[("x-fault", "loop")]).await }))
        .collect();
    let normal: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "/", &[]).await }))
        .collect();
    for s in spinners {
        assert_eq!(s.await.unwrap().status, 500);
    }
    for n in normal {
        assert_eq!(n.await.unwrap().status, 200);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn the_sandbox_has_no_files_environment_or_network() {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let gw = fault_gateway(&up).await;
    let reply = get(gw.addr(), "/", &[("x-fault", "sandbox")]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let report = reply.json();
    assert_eq!(report["file_read"], false, "{report}");
    assert_eq!(report["dir_read"], false, "{report}");
    assert_eq!(report["file_write"], false, "{report}");
    assert_eq!(report["env_vars"], 0, "{report}");
    assert_eq!(report["args"], 0, "{report}");
    assert_eq!(report["tcp_connect"], false, "{report}");
    assert_eq!(report["udp_bind"], false, "{report}");
    assert_eq!(report["clock_ok"], true, "clocks are allowed: {report}");
    // stdout and stderr end up in the gateway log under the filter's name.
    let out = logs.lines_with(&[
        "fault filter: hello on stdout",
        "filter=\"fault\"",
        "stream=\"stdout\"",
    ]);
    assert!(!out.is_empty(), "stdout line in the log");
    let err = logs.lines_with(&[
        "fault filter: hello on stderr",
        "filter=\"fault\"",
        "stream=\"stderr\"",
    ]);
    assert!(!err.is_empty(), "stderr line in the log");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_log_import_names_route_and_filter() {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let gw = fault_gateway(&up).await;
    assert_eq!(get(gw.addr(), "/", &[("x-fault", "log")]).await.status, 200);
    let lines = logs.lines_with(&[
        "a warning through the log import",
        "WARN",
        "route=\"faulty-route\"",
        "filter=\"fault\"",
    ]);
    assert!(!lines.is_empty());
    gw.shutdown().await;
}
