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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_does_not_stall_other_requests() {
    let up = Upstream::start("u").await;
    // A CPU budget of 30 s: the spinning call runs until the budget ends
    // it, long after the other requests are done (it is how long the loop
    // lasts, not a bound on how fast anything must be).
    let gw = policy_gateway(&up, "cpu_limit = \"30s\"").await;
    let addr = gw.addr();
    let mut spinner = tokio::spawn(async move { get(addr, "/", &[("x-fault", "loop")]).await });
    // The spinning request is in the gateway (it holds one of the two
    // worker threads from here until its budget runs out).
    let deadline = std::time::Instant::now() + wasmgate_tests::HANG_GUARD;
    loop {
        let in_flight = wasmgate_tests::metric(&gw.metrics_text(), "wasmgate_active_requests");
        if in_flight == Some(1.0) {
            break;
        }
        if spinner.is_finished() {
            let r = (&mut spinner).await.unwrap();
            panic!(
                "the spinning request ended before it was seen in flight: {} {}",
                r.status, r.body
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spinning request was never seen in flight (hung; requests in flight: {in_flight:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Requests through the same filter and route are served meanwhile.
    let normal: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "/", &[]).await }))
        .collect();
    for n in normal {
        let r = n.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(up.count(), 8);
    assert!(
        !spinner.is_finished(),
        "the loop ended before the other requests were served"
    );
    let spun = spinner.await.unwrap();
    assert_eq!(spun.status, 500, "{}", spun.body);
    assert_eq!(spun.json()["code"], "filter_cpu_budget", "{}", spun.body);
    gw.shutdown().await;
}

/// On a runtime with one thread (a gateway with `server.workers = 1`), a
/// spinning filter yields its thread every time slice: another request is
/// served while the loop still runs. Without slices, nothing else could run
/// on that thread until the loop's CPU budget (30 s) ended it.
#[tokio::test(flavor = "current_thread")]
async fn a_loop_yields_its_only_thread_to_other_requests() {
    let up = Upstream::start("u").await;
    let gw = policy_gateway(&up, "cpu_limit = \"30s\"").await;
    let addr = gw.addr();
    let mut spinner = tokio::spawn(async move { get(addr, "/", &[("x-fault", "loop")]).await });
    wasmgate_tests::within("the spinning request to arrive", async {
        while wasmgate_tests::metric(&gw.metrics_text(), "wasmgate_active_requests") != Some(1.0) {
            assert!(!spinner.is_finished(), "the spinning request ended early");
            tokio::task::yield_now().await;
        }
    })
    .await;
    let r = get(addr, "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !spinner.is_finished(),
        "the loop ended before the other request was served"
    );
    let spun = (&mut spinner).await.unwrap();
    assert_eq!(spun.json()["code"], "filter_cpu_budget", "{}", spun.body);
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

/// A gateway whose `fault` filter has `extra` in its `[filters.fault]`.
async fn policy_gateway(up: &Upstream, extra: &str) -> wasmgate_tests::RunningGateway {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n[filters.fault]\npath = {:?}\npool_size = 4\n{extra}\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n[[routes.filters]]\nname = \"fault\"\nconfig = {{ tag = \"ok\" }}\n",
        wasmgate_tests::artifacts::FAULT,
        up.addr
    );
    start_gateway(&toml).await
}

#[tokio::test]
async fn fail_open_skips_a_failing_filter_and_counts_it() {
    let up = Upstream::start("u").await;
    let gw = policy_gateway(&up, "failure_policy = \"fail-open\"").await;
    let r = get(gw.addr(), "/", &[("x-fault", "trap")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.count(), 1, "the request went on without the filter");
    assert!(
        up.seen()[0].headers.get("x-fault-seen").is_none(),
        "the failed filter's edits are not applied"
    );
    let m = gw.metrics_text();
    assert_eq!(
        wasmgate_tests::metric(
            &m,
            "wasmgate_filter_fail_open_total{tenant=\"default\",filter=\"fault\",route=\"r\"}"
        ),
        Some(1.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_keeps_trapping_is_quarantined_then_tried_again() {
    let up = Upstream::start("u").await;
    let gw = policy_gateway(&up, "quarantine_after = 3").await;
    for _ in 0..3 {
        let r = get(gw.addr(), "/", &[("x-fault", "trap")]).await;
        assert_eq!(r.json()["code"], "filter_trap");
    }
    // Benched: even a good request fails fast without running the filter.
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["code"], "filter_quarantined");
    assert_eq!(up.count(), 0);
    let m = gw.metrics_text();
    assert_eq!(
        wasmgate_tests::metric(
            &m,
            "wasmgate_filter_quarantines_total{tenant=\"default\",filter=\"fault\",route=\"r\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // After the quarantine (1 s) the filter gets a trial call, which passes.
    wasmgate_tests::within("quarantine over", async {
        while get(gw.addr(), "/", &[]).await.status != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_call_past_its_wall_clock_budget_is_504_and_its_instance_discarded() {
    let up = Upstream::start("u").await;
    // The fault filter's `sleep` waits 2 s in a host call: no CPU is used,
    // so only the wall-clock budget can stop it.
    let gw = policy_gateway(&up, "cpu_limit = \"100ms\"\nwall_limit = \"300ms\"").await;
    let r = get(gw.addr(), "/", &[("x-fault", "sleep")]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["code"], "filter_wall_clock");
    assert_eq!(
        get(gw.addr(), "/", &[]).await.status,
        200,
        "others unaffected"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn filters_that_ask_for_bodies_get_them_whole_and_may_replace_them() {
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[limits]\nmax_buffered_body = \"64KiB\"\n[engine]\nmax_instances = 16\n[filters.fault]\npath = {:?}\npool_size = 2\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n[[routes.filters]]\nname = \"fault\"\nconfig = {{ tag = \"outer\", bodies = true }}\n[[routes.filters]]\nname = \"fault\"\nconfig = {{ tag = \"inner\", bodies = true }}\n",
        wasmgate_tests::artifacts::FAULT,
        up.addr
    );
    let gw = start_gateway(&toml).await;
    // Chunked on the way in: the filter still sees the whole body.
    let out = wasmgate_tests::raw(
        gw.addr(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Upper-cased on the way up; on the way down, the inner filter appends
    // first, then the outer one (reverse order).
    assert!(
        out.ends_with("HELLO WORLD [seen by inner] [seen by outer]"),
        "{out}"
    );
    let len = "HELLO WORLD [seen by inner] [seen by outer]".len();
    assert!(out.contains(&format!("content-length: {len}")), "{out}");
    let seen = &up.seen()[0].headers;
    assert_eq!(seen["x-request-body-len"], "11");
    assert_eq!(seen["content-length"], "11");

    // Past the buffering limit: 413 before any filter runs.
    let big = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        100_000,
        "a".repeat(100_000)
    );
    let out = wasmgate_tests::raw(gw.addr(), big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_is_atomic_across_instances_and_namespaced_per_filter() {
    let up = Upstream::start("u").await;
    // The CPU budget is measured in wall-clock time less host waits, so on a
    // loaded machine a 40-request burst can push a call past the default
    // 50 ms: generous budgets, since budgets are not what this tests.
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n[filters.fault]\npath = {p:?}\npool_size = 4\ncpu_limit = \"2s\"\nvars = {{ greeting = \"hello\" }}\n[filters.other]\npath = {p:?}\npool_size = 2\ncpu_limit = \"2s\"\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\ncluster = \"c\"\nfilters = [{{ name = \"fault\", config = {{ tag = \"from-fault\" }} }}]\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\ncluster = \"c\"\nfilters = [{{ name = \"fault\", config = {{ tag = \"b\" }} }}]\n[[routes]]\nname = \"o\"\npath_prefix = \"/o\"\ncluster = \"c\"\nfilters = [{{ name = \"other\" }}]\n",
        up.addr,
        p = wasmgate_tests::artifacts::FAULT,
    );
    let gw = start_gateway(&toml).await;
    let addr = gw.addr();
    // 40 concurrent increments over two routes (two pools) of one filter.
    let all: Vec<_> = (0..40)
        .map(|i| {
            let path = if i % 2 == 0 { "/a" } else { "/b" };
            tokio::spawn(async move { get(addr, path, &[("x-fault", "kv-incr")]).await })
        })
        .collect();
    for h in all {
        assert_eq!(h.await.unwrap().status, 200);
    }
    let mut hits: Vec<i64> = up
        .seen()
        .iter()
        .map(|s| s.headers["x-hits"].to_str().unwrap().parse().unwrap())
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        (1..=40).collect::<Vec<_>>(),
        "every increment counted once"
    );

    // Written by `fault`, invisible to `other` (same module, other name).
    assert_eq!(get(addr, "/a", &[("x-fault", "kv-put")]).await.status, 200);
    for (path, mode) in [
        ("/b", "kv-get"),
        ("/o", "kv-get"),
        ("/a", "var"),
        ("/o", "var"),
    ] {
        let r = get(addr, path, &[("x-fault", mode)]).await;
        assert_eq!(r.status, 200, "{path} {mode}: {}", r.body);
    }
    let seen = up.seen();
    let n = seen.len();
    assert_eq!(n, 45, "every request reached the upstream");
    assert_eq!(seen[n - 4].headers["x-secret"], "from-fault");
    assert_eq!(seen[n - 3].headers["x-secret"], "none");
    assert_eq!(seen[n - 2].headers["x-greeting"], "hello");
    assert_eq!(
        seen[n - 1].headers["x-greeting"],
        "none",
        "vars are per filter"
    );
    gw.shutdown().await;
}

/// A gateway whose `fault` filter quarantines after one failure and whose
/// requests time out long before the filter's own wall-clock budget would.
async fn cut_off_gateway(up: &Upstream) -> wasmgate_tests::RunningGateway {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[limits]\nrequest_timeout = \"300ms\"\n[engine]\nmax_instances = 16\n[filters.fault]\npath = {:?}\npool_size = 4\nquarantine_after = 1\ncpu_limit = \"100ms\"\nwall_limit = \"30s\"\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n[[routes.filters]]\nname = \"fault\"\nconfig = {{ tag = \"ok\" }}\n",
        wasmgate_tests::artifacts::FAULT,
        up.addr
    );
    start_gateway(&toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_call_cut_off_mid_way_does_not_wedge_the_route() {
    let up = Upstream::start("u").await;
    let gw = cut_off_gateway(&up).await;
    let r = get(gw.addr(), "/", &[("x-fault", "trap")]).await;
    assert_eq!(r.json()["code"], "filter_trap", "{}", r.body);
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.json()["code"], "filter_quarantined", "{}", r.body);
    // Once the quarantine is over, the next call is the trial. Make it one
    // that blocks (a 2 s sleep) and is cut off by the request timeout: its
    // future is dropped mid-call, with no outcome recorded.
    wasmgate_tests::within("the trial call", async {
        loop {
            let r = get(gw.addr(), "/", &[("x-fault", "sleep")]).await;
            match (r.status, r.json()["code"].as_str()) {
                (503, Some("filter_quarantined")) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                (504, Some("request_timeout")) => break,
                _ => panic!("neither quarantined nor cut off: {} {}", r.status, r.body),
            }
        }
    })
    .await;
    // The unfinished trial said nothing about the filter: the next call is
    // the trial instead, it passes, and the route is healthy again.
    for _ in 0..3 {
        let r = get(gw.addr(), "/", &[]).await;
        assert_eq!(r.status, 200, "the route recovered: {}", r.body);
    }
    assert_eq!(up.count(), 3);
    gw.shutdown().await;
}

/// `[filters.fault]` with a long-enough CPU budget, `wall_limit` as given,
/// on route `r` with `config` as the filter's config table.
fn blocking_init_toml(up: &Upstream, wall_limit: &str, config: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n[filters.fault]\npath = {:?}\npool_size = 2\ncpu_limit = \"100ms\"\nwall_limit = \"{wall_limit}\"\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{{ name = \"fault\", config = {config} }}]\n",
        wasmgate_tests::artifacts::FAULT,
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_filter_blocks_in_init_is_refused_while_the_old_config_serves() {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let parse = |toml: &str| {
        wasmgate::config::Config::parse(toml, "test.toml", std::path::Path::new(".")).unwrap()
    };
    let gw = start_gateway(&blocking_init_toml(&up, "5s", "{ tag = \"old\" }")).await;
    // The new config's filter sleeps in `init` for an hour, in a WASI call
    // the CPU deadline cannot interrupt.
    let tag = format!("blocks-{}", std::process::id());
    let blocking = parse(&blocking_init_toml(
        &up,
        "5s",
        &format!("{{ tag = \"{tag}\", sleep_init_ms = 3600000 }}"),
    ));
    let live = gw.live().clone();
    let reload = tokio::spawn(async move { live.apply_config(blocking).await });
    wasmgate_tests::within("the new filter's init to block", async {
        let needle = format!("fault filter: sleeping in init ({tag})");
        while logs.lines_with(&[&needle]).is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // The running generation serves while the build waits on the guest.
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    assert_eq!(up.seen().last().unwrap().headers["x-fault-seen"], "old");
    assert!(
        !reload.is_finished(),
        "the request was served while the reload was still building"
    );
    // Refused at the filter's wall-clock budget, naming the filter, its
    // route and the key that bounds it.
    let refused = wasmgate_tests::within("the reload", reload)
        .await
        .unwrap()
        .expect_err("a filter that blocks in init is refused")
        .to_string();
    assert!(
        refused.contains("routes[0].filters[0].config")
            && refused.contains("filter \"fault\" on route \"r\"")
            && refused.contains("wall_limit of 5s"),
        "{refused}"
    );
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    assert_eq!(up.seen().last().unwrap().headers["x-fault-seen"], "old");
    // The control plane is free: the next change goes through.
    gw.live()
        .apply_config(parse(&blocking_init_toml(&up, "5s", "{ tag = \"new\" }")))
        .await
        .unwrap();
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    assert_eq!(up.seen().last().unwrap().headers["x-fault-seen"], "new");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_watched_reload_whose_filter_blocks_in_init() {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let dir = std::env::temp_dir().join(format!("wasmgate-blocks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    // A wall-clock budget far past the hang guard: only abandoning the
    // build lets the shutdown end in time.
    let text = |config: &str| {
        blocking_init_toml(&up, "1h", config).replace(
            "[engine]",
            "[watch]\nenabled = true\ndebounce = \"50ms\"\n[engine]",
        )
    };
    std::fs::write(&path, text("{ tag = \"old\" }")).unwrap();
    let config = wasmgate::config::Config::load(&path).unwrap();
    let gw = wasmgate::Gateway::build(config)
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    let tag = format!("watched-blocks-{}", std::process::id());
    let tmp = dir.join("gateway.toml.tmp");
    std::fs::write(
        &tmp,
        text(&format!("{{ tag = \"{tag}\", sleep_init_ms = 36000000 }}")),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wasmgate_tests::within("the watched reload's filter to block in init", async {
        let needle = format!("fault filter: sleeping in init ({tag})");
        while logs.lines_with(&[&needle]).is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    wasmgate_tests::within("shutdown", gw.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_blocks_in_init_at_request_time_is_cut_off_at_the_wall_clock_budget() {
    let up = Upstream::start("u").await;
    // The build's probe is the filter's first `init` and passes; every
    // instance made for a request then blocks in `init` for an hour.
    let toml = blocking_init_toml(
        &up,
        "2s",
        "{ tag = \"late\", sleep_init_ms = 3600000, sleep_init_after = 1 }",
    );
    let gw = start_gateway(&toml).await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["code"], "filter_wall_clock", "{}", r.body);
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}
