//! Instance pools: reuse, recycling after N uses, discard after a trap or
//! memory growth, route-config keying, bounded size failing cleanly, and
//! fresh mode. The `fault` test filter tags each request with a random id of
//! the instance that served it and that instance's call count.

use std::collections::HashSet;

use wasmgate_tests::{Upstream, artifacts, get, metric, start_gateway, within};

/// One route `r` (and a second route `other` on `/other` with another tag)
/// through filter `pooled` = the fault filter with `settings`.
fn config(up: &Upstream, settings: &str) -> String {
    let settings = if settings.contains("pool_size") {
        settings.to_owned()
    } else {
        format!("{settings}\npool_size = 4")
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[engine]
max_instances = 32
[filters.pooled]
path = "{fault}"
memory_limit = "32MiB"
cpu_limit = "100ms"
{settings}
[clusters.c]
endpoints = ["{up}"]
[[routes]]
name = "r"
path_prefix = "/"
cluster = "c"
filters = [{{ name = "pooled", config = {{ tag = "route-r" }} }}]
[[routes]]
name = "other"
path_prefix = "/other"
cluster = "c"
filters = [{{ name = "pooled", config = {{ tag = "route-other" }} }}]
"#,
        fault = artifacts::FAULT,
        up = up.addr,
    )
}

/// (instance id, calls) the upstream saw for the last request.
fn last_instance(up: &Upstream) -> (String, u64) {
    let seen = up.seen();
    let h = &seen.last().expect("the upstream saw a request").headers;
    (
        h.get("x-instance").unwrap().to_str().unwrap().to_owned(),
        h.get("x-instance-calls")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap(),
    )
}

#[tokio::test]
async fn consecutive_requests_reuse_one_instance() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let mut ids = HashSet::new();
    for n in 1..=5 {
        assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
        let (id, calls) = last_instance(&up);
        assert_eq!(calls, n, "the same instance counts every call");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_instance_is_recycled_after_max_uses() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "max_uses = 3")).await;
    let mut runs = Vec::new();
    for _ in 0..7 {
        assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
        runs.push(last_instance(&up));
    }
    let calls: Vec<u64> = runs.iter().map(|r| r.1).collect();
    assert_eq!(calls, [1, 2, 3, 1, 2, 3, 1]);
    assert_eq!(runs[0].0, runs[2].0);
    assert_ne!(runs[2].0, runs[3].0, "a new instance after 3 uses");
    assert_ne!(runs[5].0, runs[6].0);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_instance_is_discarded_after_a_trap() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    for _ in 0..2 {
        let r = get(gw.addr(), "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let (before, calls) = last_instance(&up);
    assert_eq!(calls, 2);
    assert_eq!(
        get(gw.addr(), "/", &[("x-fault", "trap")]).await.status,
        500
    );
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    let (after, calls) = last_instance(&up);
    assert_ne!(before, after, "the trapped instance is not reused");
    assert_eq!(calls, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_instance_whose_memory_grew_past_the_bound_is_replaced() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "recycle_memory = \"4MiB\"")).await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.count(), 1);
    let (first, _) = last_instance(&up);
    // This call keeps 8 MiB alive: the instance must not serve again.
    assert_eq!(
        get(gw.addr(), "/", &[("x-fault", "grow")]).await.status,
        200
    );
    assert_eq!(up.count(), 2);
    let (grown, calls) = last_instance(&up);
    assert_eq!((grown.as_str(), calls), (first.as_str(), 2));
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.count(), 3);
    let (next, calls) = last_instance(&up);
    assert_ne!(next, grown);
    assert_eq!(calls, 1);
    gw.shutdown().await;
}

/// An instance discarded with more than 4 MiB of memory is freed on the
/// reaper thread, not on the worker that ran the call (its slot reset is
/// milliseconds of `madvise` for a large guest), and its pool's permit comes
/// back only once it is freed: a pool of one serves again on a new instance.
#[tokio::test]
async fn a_large_discarded_instance_is_freed_off_the_worker_and_its_slot_returns() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "pool_size = 1\nrecycle_memory = \"4MiB\"")).await;
    let reaped = |gw: &wasmgate_tests::RunningGateway| {
        metric(
            &gw.metrics_text(),
            "wasmgate_filter_instances_reaped_total{tenant=\"default\",filter=\"pooled\",route=\"r\"}",
        )
        .unwrap_or(0.0)
    };
    // A small instance, discarded after a trap, is freed in place.
    let r = get(gw.addr(), "/", &[("x-fault", "trap")]).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(reaped(&gw), 0.0, "a small instance is freed where it ran");
    // This call keeps 8 MiB alive: past recycle_memory, it is discarded.
    let r = get(gw.addr(), "/", &[("x-fault", "grow")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (grown, _) = last_instance(&up);
    within("the reaper to free the grown instance", async {
        while reaped(&gw) < 1.0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (next, calls) = last_instance(&up);
    assert_ne!(next, grown);
    assert_eq!(calls, 1);
    assert_eq!(reaped(&gw), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn routes_with_different_configs_never_share_instances() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let mut by_route: [HashSet<String>; 2] = Default::default();
    for i in 0..10 {
        let (path, tag, slot) = if i % 2 == 0 {
            ("/", "route-r", 0)
        } else {
            ("/other/x", "route-other", 1)
        };
        assert_eq!(get(gw.addr(), path, &[]).await.status, 200);
        let seen = up.seen();
        let h = &seen.last().unwrap().headers;
        assert_eq!(
            h.get("x-fault-seen").unwrap(),
            tag,
            "request {i} saw the other route's config"
        );
        by_route[slot].insert(h.get("x-instance").unwrap().to_str().unwrap().to_owned());
    }
    assert!(by_route[0].is_disjoint(&by_route[1]), "{by_route:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_fails_fast_with_503() {
    let up = Upstream::start("u").await;
    // One instance; its call sleeps 2 s inside a host call (the guest is
    // suspended, the gateway's threads are free). The sleeper itself then runs
    // past its budget, which is fine: the point is the other requests.
    let gw = start_gateway(&config(&up, "pool_size = 1\npool_timeout = \"10ms\"")).await;
    let addr = gw.addr();
    let sleeper = tokio::spawn(async move { get(addr, "/", &[("x-fault", "sleep")]).await });
    let mut refused = None;
    while !sleeper.is_finished() {
        let reply = get(addr, "/", &[]).await;
        if reply.status == 503 {
            refused = Some(reply);
            break;
        }
        tokio::task::yield_now().await;
    }
    let refused = refused.expect("while the only instance is busy, a request must be refused");
    assert_eq!(refused.json()["code"], "filter_pool_exhausted");
    // The sleeper ran past its wall-clock budget (1 s, the least there is).
    let slept = sleeper.await.unwrap();
    assert_eq!(slept.status, 504, "{}", slept.body);
    assert_eq!(slept.json()["code"], "filter_wall_clock", "{}", slept.body);
    assert_eq!(get(addr, "/", &[]).await.status, 200, "the pool recovers");
    gw.shutdown().await;
}

#[tokio::test]
async fn fresh_mode_uses_a_new_instance_for_every_request() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "isolation = \"fresh\"")).await;
    let mut ids = HashSet::new();
    for _ in 0..4 {
        assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
        let (id, calls) = last_instance(&up);
        assert_eq!(calls, 1);
        ids.insert(id);
    }
    assert_eq!(ids.len(), 4);
    gw.shutdown().await;
}
