//! The response cache (issue 19, first part): what is stored and served by
//! RFC 9111's rules for a shared cache, keyed so that answers never mix,
//! with `Cache-Status` and `Age` on every answer of a cached route. The
//! test upstream counts what reaches it and sends the caching headers each
//! request asks for (`x-reply-header`); no test waits for time to pass
//! (stale answers arrive stale, with an old `Age`).

use wasmgate_tests::{RunningGateway, Upstream, artifacts, get, metric, send, start_gateway};

/// A gateway whose route `c` (path `/c`) caches with `route_cache` (the
/// inside of its `cache = { … }`), route `a` (path `/a`) caches behind the
/// api-key filter, and route `u` (everything else) does not cache.
async fn gateway(up: &Upstream, cache: &str, route_cache: &str) -> RunningGateway {
    start_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
         [engine]\nmax_instances = 16\n\
         [cache]\nstatus_header = \"x-cache\"\n{cache}\n\
         [filters.key]\npath = {key:?}\npool_size = 2\n\
         [filters.headers]\npath = {headers:?}\npool_size = 2\n\
         [clusters.up]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"c\"\npath_prefix = \"/c\"\ncluster = \"up\"\ncache = {{ {route_cache} }}\n\
         filters = [{{ name = \"headers\", config = {{ response = {{ set = {{ \"x-seen-by\" = \"response-filter\" }} }} }} }}]\n\
         [[routes]]\nname = \"a\"\npath_prefix = \"/a\"\ncluster = \"up\"\ncache = {{ {route_cache} }}\n\
         filters = [{{ name = \"key\", config = {{ keys = [\"k\"] }} }}]\n\
         [[routes]]\nname = \"u\"\ncluster = \"up\"\n",
        up.addr,
        key = artifacts::API_KEY,
        headers = artifacts::HEADERS,
    ))
    .await
}

const FRESH: (&str, &str) = ("x-reply-header", "cache-control: max-age=60");

fn status(r: &wasmgate_tests::Reply) -> String {
    r.header("cache-status").unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_fresh_answer_is_served_from_the_cache_and_filters_still_run() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();

    let first = get(addr, "/c/x?q=1", &[FRESH]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(status(&first), "wasmgate; fwd=uri-miss; stored");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(up.count(), 1);

    let hit = get(addr, "/c/x?q=1", &[FRESH]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, first.body, "the stored body");
    assert!(
        status(&hit).starts_with("wasmgate; hit; ttl="),
        "{}",
        status(&hit)
    );
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert!(hit.header("age").is_some(), "a hit says its age");
    assert_eq!(
        hit.header("x-seen-by"),
        Some("response-filter"),
        "response-side filters run on hits"
    );
    assert_eq!(up.count(), 1, "the hit did not reach the upstream");

    // Another query, another path, another route: other keys.
    assert_eq!(
        status(&get(addr, "/c/x?q=2", &[FRESH]).await),
        "wasmgate; fwd=uri-miss; stored"
    );
    assert_eq!(
        status(&get(addr, "/c/y", &[FRESH]).await),
        "wasmgate; fwd=uri-miss; stored"
    );
    let other_route = get(addr, "/other", &[FRESH]).await;
    assert!(
        other_route.header("cache-status").is_none(),
        "route u does not cache"
    );
    assert_eq!(up.count(), 4);

    // A HEAD is answered from the stored GET, without a body.
    let head = send(addr, "HEAD", "/c/x?q=1", &[FRESH]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("x-cache"), Some("HIT"));
    assert_eq!(up.count(), 4);

    let m = gw.metrics_text();
    assert_eq!(
        metric(&m, "wasmgate_cache_lookups_total{result=\"hit\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "wasmgate_cache_lookups_total{result=\"miss\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "wasmgate_cache_stores_total{outcome=\"ok\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(metric(&m, "wasmgate_cache_entries"), Some(3.0), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn only_what_may_be_stored_is_stored() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    // Each goes upstream twice: the first answer was not stored.
    let cases: [(&str, &[(&str, &str)]); 7] = [
        (
            "/c/no-store",
            &[("x-reply-header", "cache-control: no-store, max-age=60")],
        ),
        (
            "/c/private",
            &[("x-reply-header", "cache-control: private, max-age=60")],
        ),
        // Says nothing of its freshness, and the route has no default_ttl.
        ("/c/silent", &[]),
        // Arrives already stale: 100 s old with 60 s of freshness.
        ("/c/stale", &[FRESH, ("x-reply-header", "age: 100")]),
        ("/c/cookie", &[FRESH, ("x-reply-header", "set-cookie: s=1")]),
        ("/c/vary-star", &[FRESH, ("x-reply-header", "vary: *")]),
        ("/c/teapot/status/418", &[FRESH]),
    ];
    for (path, headers) in cases {
        let before = up.count();
        let r = get(addr, path, headers).await;
        assert_eq!(
            status(&r),
            "wasmgate; fwd=uri-miss",
            "{path}: {}",
            status(&r)
        );
        get(addr, path, headers).await;
        assert_eq!(up.count(), before + 2, "{path} was not stored");
    }
    // A request with Authorization is not looked up, nor stored.
    let before = up.count();
    for _ in 0..2 {
        let r = get(
            addr,
            "/c/authorized",
            &[FRESH, ("authorization", "Bearer t")],
        )
        .await;
        assert_eq!(status(&r), "wasmgate; fwd=bypass");
        assert_eq!(r.header("x-cache"), Some("BYPASS"));
    }
    assert_eq!(up.count(), before + 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_may_store_what_says_nothing_of_its_freshness_and_cookies() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "default_ttl = \"60s\", store_set_cookie = true").await;
    let addr = gw.addr();
    for (path, headers) in [
        ("/c/silent", &[][..]),
        (
            "/c/cookie",
            &[FRESH, ("x-reply-header", "set-cookie: s=1")][..],
        ),
    ] {
        let before = up.count();
        assert_eq!(
            status(&get(addr, path, headers).await),
            "wasmgate; fwd=uri-miss; stored"
        );
        assert_eq!(
            get(addr, path, headers).await.header("x-cache"),
            Some("HIT")
        );
        assert_eq!(up.count(), before + 1, "{path}");
    }
    // The stored copy has no cookie: one client's cookie is never handed
    // to the others.
    let hit = get(
        addr,
        "/c/cookie",
        &[FRESH, ("x-reply-header", "set-cookie: s=1")],
    )
    .await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert!(hit.header("set-cookie").is_none());
    // An explicit lifetime still wins over the default: already stale.
    let before = up.count();
    get(
        addr,
        "/c/stale",
        &[
            ("x-reply-header", "cache-control: max-age=10"),
            ("x-reply-header", "age: 20"),
        ],
    )
    .await;
    get(
        addr,
        "/c/stale",
        &[
            ("x-reply-header", "cache-control: max-age=10"),
            ("x-reply-header", "age: 20"),
        ],
    )
    .await;
    assert_eq!(up.count(), before + 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn vary_keeps_the_variants_apart() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    let vary = ("x-reply-header", "vary: accept-language");
    let en = [FRESH, vary, ("accept-language", "en")];
    let fr = [FRESH, vary, ("accept-language", "fr")];
    assert_eq!(
        status(&get(addr, "/c/v", &en).await),
        "wasmgate; fwd=uri-miss; stored"
    );
    assert_eq!(
        status(&get(addr, "/c/v", &fr).await),
        "wasmgate; fwd=vary-miss; stored"
    );
    assert_eq!(up.count(), 2);
    assert_eq!(get(addr, "/c/v", &en).await.header("x-cache"), Some("HIT"));
    assert_eq!(get(addr, "/c/v", &fr).await.header("x-cache"), Some("HIT"));
    assert_eq!(up.count(), 2, "each variant was served from its own entry");
    let seen = up.seen();
    assert_eq!(seen[0].headers["accept-language"], "en");
    assert_eq!(seen[1].headers["accept-language"], "fr");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_auth_filter_refuses_before_a_hit_is_served() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    let with_key = [FRESH, ("x-api-key", "k")];
    assert_eq!(get(addr, "/a/secret", &with_key).await.status, 200);
    assert_eq!(
        get(addr, "/a/secret", &with_key).await.header("x-cache"),
        Some("HIT")
    );
    let without = get(addr, "/a/secret", &[FRESH]).await;
    assert_eq!(
        without.status, 401,
        "the filter ran before the cache: {}",
        without.body
    );
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn large_bodies_stream_through_unstored_and_the_budget_holds() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "max_bytes = \"1MiB\"\nmax_entry_bytes = \"256KiB\"",
        "",
    )
    .await;
    let addr = gw.addr();

    // Past max_entry_bytes: the whole body reaches the client, and is not
    // stored.
    let big = [FRESH, ("x-reply-bytes", "300000")];
    let r = get(addr, "/c/big", &big).await;
    assert_eq!(r.body.len(), 300_000);
    assert_eq!(status(&r), "wasmgate; fwd=uri-miss");
    assert_eq!(get(addr, "/c/big", &big).await.body.len(), 300_000);
    assert_eq!(up.count(), 2);

    // Eight answers of 200 KB each do not fit 1 MiB: the oldest are
    // evicted, and the cache stays within its budget.
    let fill = [FRESH, ("x-reply-bytes", "200000")];
    for i in 0..8 {
        let r = get(addr, &format!("/c/fill/{i}"), &fill).await;
        assert_eq!(r.body.len(), 200_000);
        assert_eq!(status(&r), "wasmgate; fwd=uri-miss; stored");
    }
    let m = gw.metrics_text();
    let bytes = metric(&m, "wasmgate_cache_bytes").unwrap();
    assert!(bytes <= (1 << 20) as f64, "{bytes} bytes in a 1 MiB cache");
    assert!(
        metric(&m, "wasmgate_cache_evictions_total").unwrap() >= 3.0,
        "{m}"
    );
    // The newest is still there.
    assert_eq!(
        get(addr, "/c/fill/7", &fill).await.header("x-cache"),
        Some("HIT")
    );
    gw.shutdown().await;
}

/// Waits until the gateway's metric `sample` reads `value`.
async fn metric_reaches(gw: &RunningGateway, sample: &str, value: f64) {
    wasmgate_tests::within(&format!("{sample} to reach {value}"), async {
        loop {
            if metric(&gw.metrics_text(), sample) == Some(value) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn each_directive_decides_what_is_served_from_the_cache() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    let cc = |v: &'static str| ("x-reply-header", v);
    // (path, headers, hit on the second request?)
    type Case = (&'static str, Vec<(&'static str, &'static str)>, bool);
    let cases: [Case; 8] = [
        ("/c/max-age", vec![cc("cache-control: max-age=60")], true),
        // s-maxage wins over max-age for a shared cache: fresh.
        (
            "/c/s-maxage",
            vec![cc("cache-control: max-age=0, s-maxage=60")],
            true,
        ),
        // Expires against Date, an hour later: fresh.
        (
            "/c/expires",
            vec![
                cc("date: Thu, 01 Jan 2037 00:00:00 GMT"),
                cc("expires: Thu, 01 Jan 2037 01:00:00 GMT"),
            ],
            true,
        ),
        // Date 100 s ago with 60 s of freshness: arrived stale.
        (
            "/c/old-date",
            vec![FRESH, cc("date: Thu, 01 Jan 2015 00:00:00 GMT")],
            false,
        ),
        // no-cache without a validator: nothing to revalidate with.
        (
            "/c/no-cache",
            vec![cc("cache-control: no-cache, max-age=60")],
            false,
        ),
        ("/c/zero", vec![cc("cache-control: max-age=0")], false),
        // Expires already past.
        (
            "/c/expired",
            vec![
                cc("date: Thu, 01 Jan 2037 01:00:00 GMT"),
                cc("expires: Thu, 01 Jan 2037 00:00:00 GMT"),
            ],
            false,
        ),
        // must-revalidate alone changes nothing while fresh.
        (
            "/c/must-revalidate",
            vec![cc("cache-control: max-age=60, must-revalidate")],
            true,
        ),
    ];
    for (path, headers, hit) in cases {
        let before = up.count();
        get(addr, path, &headers).await;
        let second = get(addr, path, &headers).await;
        assert_eq!(
            second.header("x-cache") == Some("HIT"),
            hit,
            "{path}: {}",
            status(&second)
        );
        assert_eq!(up.count(), before + if hit { 1 } else { 2 }, "{path}");
    }
    // A client that asks for a fresh copy (no-cache) goes upstream.
    let r = get(
        addr,
        "/c/max-age",
        &[
            cc("cache-control: max-age=60"),
            ("cache-control", "no-cache"),
        ],
    )
    .await;
    assert_eq!(status(&r), "wasmgate; fwd=request; stored");
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_answers_are_revalidated_and_clients_get_304() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    let etag = ("x-reply-header", "etag: \"v1\"");
    let stale = [
        ("x-reply-header", "cache-control: max-age=10"),
        ("x-reply-header", "age: 20"),
    ];
    // Stored stale on arrival: kept because it can be revalidated.
    let first = get(addr, "/c/etag", &[stale[0], stale[1], etag]).await;
    assert_eq!(status(&first), "wasmgate; fwd=uri-miss; stored");

    // Stale: the gateway asks with its ETag, the upstream says 304, and
    // the stored body is served, renewed (this time fresh for 60 s).
    let second = get(addr, "/c/etag", &[FRESH, etag]).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        status(&second),
        "wasmgate; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(second.header("x-cache"), Some("REVALIDATED"));
    assert_eq!(second.body, first.body);
    let seen = up.seen();
    assert_eq!(seen[1].headers["if-none-match"], "\"v1\"");
    let third = get(addr, "/c/etag", &[FRESH, etag]).await;
    assert_eq!(third.header("x-cache"), Some("HIT"), "renewed by the 304");
    assert_eq!(up.count(), 2);

    // A client that has it gets a 304 from the cache, without a body.
    let cond = get(addr, "/c/etag", &[FRESH, etag, ("if-none-match", "\"v1\"")]).await;
    assert_eq!(cond.status, 304);
    assert!(cond.body.is_empty());
    assert_eq!(cond.header("etag"), Some("\"v1\""));
    let other = get(addr, "/c/etag", &[FRESH, etag, ("if-none-match", "\"v0\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(up.count(), 2);

    // Last-Modified: revalidated with If-Modified-Since, and a client's
    // own If-Modified-Since during the revalidation is answered by the
    // gateway with a 304.
    let lm = (
        "x-reply-header",
        "last-modified: Thu, 01 Jan 2026 00:00:00 GMT",
    );
    get(addr, "/c/lm", &[stale[0], stale[1], lm]).await;
    let r = get(
        addr,
        "/c/lm",
        &[
            FRESH,
            lm,
            ("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ],
    )
    .await;
    assert_eq!(r.status, 304, "{}", status(&r));
    assert_eq!(status(&r), "wasmgate; fwd=stale; fwd-status=304; stored");
    let seen = up.seen();
    assert_eq!(
        seen.last().unwrap().headers["if-modified-since"],
        "Thu, 01 Jan 2026 00:00:00 GMT",
        "the gateway's own validator"
    );
    assert_eq!(
        metric(&gw.metrics_text(), "wasmgate_cache_revalidated_total"),
        Some(2.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_while_one_refresh_runs() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    let swr = [
        (
            "x-reply-header",
            "cache-control: max-age=1, stale-while-revalidate=600",
        ),
        ("x-reply-header", "age: 10"),
    ];
    let first = get(addr, "/c/swr", &swr).await;
    assert_eq!(status(&first), "wasmgate; fwd=uri-miss; stored");
    // Twenty at once, stale within the window: each is answered with the
    // stale copy at once, and one refresh (fresh, this time) is made.
    let handles: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/c/swr", &[FRESH]).await }))
        .collect();
    let mut stale = 0;
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, first.body);
        if r.header("x-cache") == Some("STALE") {
            stale += 1;
            assert!(
                status(&r).starts_with("wasmgate; hit; ttl=-")
                    && status(&r).ends_with("; detail=stale-while-revalidate"),
                "{}",
                status(&r)
            );
        } else {
            assert_eq!(r.header("x-cache"), Some("HIT"), "{}", status(&r));
        }
    }
    assert!(stale >= 1);
    // The refresh's answer is stored: a hit, fresh.
    metric_reaches(&gw, "wasmgate_cache_stores_total{outcome=\"ok\"}", 2.0).await;
    let after = get(addr, "/c/swr", &[FRESH]).await;
    assert_eq!(after.header("x-cache"), Some("HIT"), "{}", status(&after));
    assert_eq!(up.count(), 2, "exactly one refresh reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_if_error_covers_an_upstream_that_fails_or_is_down() {
    let mut up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    let sie = [
        (
            "x-reply-header",
            "cache-control: max-age=1, stale-if-error=600",
        ),
        ("x-reply-header", "age: 10"),
    ];
    let first = get(addr, "/c/sie", &sie).await;
    assert_eq!(status(&first), "wasmgate; fwd=uri-miss; stored");

    // The upstream answers 500: the stale copy is served instead.
    let r = get(addr, "/c/sie", &[sie[0], sie[1], ("x-reply-status", "500")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, first.body);
    assert_eq!(r.header("x-cache"), Some("STALE"));
    assert!(
        status(&r).starts_with("wasmgate; fwd=stale; fwd-status=500; ttl=-")
            && status(&r).ends_with("; detail=stale-if-error"),
        "{}",
        status(&r)
    );

    // must-revalidate forbids it: the 500 goes through.
    let strict = [
        (
            "x-reply-header",
            "cache-control: max-age=1, stale-if-error=600, must-revalidate",
        ),
        ("x-reply-header", "age: 10"),
        ("x-reply-header", "etag: \"s\""),
    ];
    get(addr, "/c/strict", &strict).await;
    let r = get(
        addr,
        "/c/strict",
        &[strict[0], strict[1], ("x-reply-status", "500")],
    )
    .await;
    assert_eq!(r.status, 500, "{}", status(&r));

    // The upstream is down: the stale copy again.
    up.stop();
    let r = get(addr, "/c/sie", &sie).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, first.body);
    assert!(
        status(&r).starts_with("wasmgate; fwd=stale; ttl=-"),
        "{}",
        status(&r)
    );
    // Nothing stored for it: the failure is the gateway's own.
    let r = get(addr, "/c/never-stored", &sie).await;
    assert_eq!(r.status, 502, "{}", r.body);
    up.restart().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_send_one_request_upstream() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "lock_timeout = \"60s\"", "").await;
    let addr = gw.addr();
    let spawn = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        tokio::spawn(async move { get(addr, path, &headers).await })
    };
    // 100 misses of one key: one goes upstream (held there), 99 wait.
    let handles: Vec<_> = (0..100)
        .map(|_| spawn("/c/held/one", vec![FRESH]))
        .collect();
    metric_reaches(&gw, "wasmgate_cache_coalesced_waits_total", 99.0).await;
    assert_eq!(up.count(), 1);
    up.release();
    let mut collapsed = 0;
    let mut bodies = std::collections::HashSet::new();
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.insert(r.body.clone());
        if status(&r).ends_with("; collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(up.count(), 1, "one request reached the upstream");
    assert_eq!(collapsed, 99);
    assert_eq!(bodies.len(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_go_upstream_themselves_once_an_answer_is_not_storable() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "lock_timeout = \"60s\"", "").await;
    let addr = gw.addr();
    let no_store = ("x-reply-header", "cache-control: no-store");
    let handles: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "/c/held/uncacheable", &[no_store]).await }))
        .collect();
    metric_reaches(&gw, "wasmgate_cache_coalesced_waits_total", 9.0).await;
    up.release();
    for h in handles {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert_eq!(up.count(), 10, "the nine waiters went upstream themselves");
    // Later misses of that key do not queue behind one another.
    let handles: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/c/held/uncacheable", &[no_store]).await }))
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert_eq!(
        metric(&gw.metrics_text(), "wasmgate_cache_coalesced_waits_total"),
        Some(9.0)
    );
    assert_eq!(up.count(), 15);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unsafe_method_removes_what_is_stored_for_its_url() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    get(addr, "/c/item", &[FRESH]).await;
    assert_eq!(
        get(addr, "/c/item", &[FRESH]).await.header("x-cache"),
        Some("HIT")
    );
    // A failed POST changes nothing.
    let r = send(addr, "POST", "/c/item", &[("x-reply-status", "500")]).await;
    assert_eq!(status(&r), "wasmgate; fwd=bypass");
    assert_eq!(
        get(addr, "/c/item", &[FRESH]).await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(send(addr, "PUT", "/c/item", &[]).await.status, 200);
    assert_eq!(
        status(&get(addr, "/c/item", &[FRESH]).await),
        "wasmgate; fwd=uri-miss; stored"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn accept_encoding_is_made_canonical_for_vary() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "").await;
    let addr = gw.addr();
    let vary = ("x-reply-header", "vary: accept-encoding");
    get(
        addr,
        "/c/ae",
        &[FRESH, vary, ("accept-encoding", "gzip, br")],
    )
    .await;
    let r = get(
        addr,
        "/c/ae",
        &[FRESH, vary, ("accept-encoding", "br;q=1, gzip;q=0.8")],
    )
    .await;
    assert_eq!(r.header("x-cache"), Some("HIT"), "{}", status(&r));
    let r = get(addr, "/c/ae", &[FRESH, vary, ("accept-encoding", "gzip")]).await;
    assert_eq!(status(&r), "wasmgate; fwd=vary-miss; stored");
    let seen = up.seen();
    assert_eq!(seen[0].headers["accept-encoding"], "br, gzip");
    assert_eq!(seen[1].headers["accept-encoding"], "gzip");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_adds_its_own_key_parts() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "key = [\"header:x-plan\", \"cookie:region\"]").await;
    let addr = gw.addr();
    let ask = |plan: &'static str, cookie: &'static str| async move {
        get(addr, "/c/k", &[FRESH, ("x-plan", plan), ("cookie", cookie)]).await
    };
    assert_eq!(
        ask("gold", "a=1; region=eu").await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        ask("gold", "region=eu").await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(
        ask("free", "region=eu").await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        ask("gold", "region=us").await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(up.count(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn purges_by_url_prefix_and_tag() {
    let up = Upstream::start("u").await;
    let operator = "operator-token-0123456789";
    let gw = gateway(
        &up,
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{operator}\"\n"),
        "",
    )
    .await;
    let addr = gw.addr();
    let admin = gw.admin_addr().unwrap();
    let purge = |body: &'static str| async move {
        let r = wasmgate_tests::send_body(
            admin,
            "POST",
            "/cache/purge",
            &[
                ("host", "localhost"),
                ("authorization", "Bearer operator-token-0123456789"),
            ],
            body,
        )
        .await;
        (r.status, r.json())
    };
    let tagged = |t: &'static str| [FRESH, ("x-reply-header", t)];
    for (path, tags) in [
        ("/c/p/a?x=1", "surrogate-key: red"),
        ("/c/p/a?x=2", "surrogate-key: red blue"),
        ("/c/p/b", "surrogate-key: blue"),
        ("/c/q", "surrogate-key: green"),
    ] {
        get(addr, path, &tagged(tags)).await;
    }
    let hit = |path: &'static str| async move {
        get(addr, path, &[FRESH]).await.header("x-cache") == Some("HIT")
    };
    assert!(hit("/c/p/a?x=1").await);

    let (st, body) = purge(r#"{"url": "/c/p/a?x=1"}"#).await;
    assert_eq!((st, body["purged"].as_u64()), (200, Some(1)), "{body}");
    assert!(!hit("/c/p/a?x=1").await);
    assert!(hit("/c/p/a?x=2").await);

    let (_, body) = purge(r#"{"tag": "blue"}"#).await;
    assert_eq!(body["purged"], 2, "{body}");
    assert!(!hit("/c/p/b").await);
    assert!(hit("/c/q").await);

    // What the last two misses stored, and /c/p/a?x=1, go by prefix.
    let (_, body) = purge(r#"{"prefix": "/c/p/"}"#).await;
    assert_eq!(body["purged"], 2, "{body}");
    assert!(hit("/c/q").await);

    // Bad purges say what is wrong; nobody else may purge.
    for bad in [
        r#"{}"#,
        r#"{"url": "/a", "tag": "t"}"#,
        r#"{"prefix": "a"}"#,
        r#"{"flavour": 1}"#,
    ] {
        let (st, body) = purge(bad).await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    let r = wasmgate_tests::send_body(
        admin,
        "POST",
        "/cache/purge",
        &[("host", "localhost")],
        r#"{"tag": "green"}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(hit("/c/q").await);
    let m = gw.metrics_text();
    assert_eq!(metric(&m, "wasmgate_cache_purged_total"), Some(5.0), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_filter_made_value_is_a_key_part() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
         [cache]\nstatus_header = \"x-cache\"\n\
         [filters.contract]\npath = {:?}\n\
         [clusters.up]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"k\"\ncluster = \"up\"\ncache = {{ key = [\"context:contract\"] }}\n\
         filters = [{{ name = \"contract\" }}]\n",
        artifacts::CONTRACT_0_2_0,
        up.addr,
    ))
    .await;
    let addr = gw.addr();
    let ask = |extra: &'static str| async move {
        get(addr, "/k", &[FRESH, ("x-contract-context-extra", extra)])
            .await
            .header("x-cache")
            .map(str::to_owned)
    };
    assert_eq!(ask("gold").await.as_deref(), Some("MISS"));
    assert_eq!(ask("gold").await.as_deref(), Some("HIT"));
    assert_eq!(
        ask("free").await.as_deref(),
        Some("MISS"),
        "another value the filter made"
    );
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_cache_lives_across_reloads_until_a_route_changes_its_key() {
    let up = Upstream::start("u").await;
    let toml = |route_cache: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
             [cache]\nstatus_header = \"x-cache\"\n\
             [clusters.up]\nendpoints = [\"{}\"]\n\
             [[routes]]\nname = \"c\"\ncluster = \"up\"\ncache = {{ {route_cache} }}\n",
            up.addr
        )
    };
    let config = |route_cache: &str| {
        wasmgate::config::Config::parse(&toml(route_cache), "test.toml", std::path::Path::new("."))
            .unwrap()
    };
    let gw = start_gateway(&toml("")).await;
    let addr = gw.addr();
    get(addr, "/r", &[FRESH]).await;
    // Another setting, the same key scheme: the entry stays.
    gw.live()
        .apply_config(config("store_set_cookie = true"))
        .await
        .unwrap();
    assert_eq!(
        get(addr, "/r", &[FRESH]).await.header("x-cache"),
        Some("HIT")
    );
    // Another key scheme: its answers are keyed anew.
    gw.live()
        .apply_config(config("key = [\"header:x-plan\"]"))
        .await
        .unwrap();
    assert_eq!(
        get(addr, "/r", &[FRESH]).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

/// Two tenants caching on one gateway: `a` with its own `cache_bytes`.
fn tenant_main(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
         [engine]\nmax_instances = 16\n[cache]\nstatus_header = \"x-cache\"\n\
         [tenants]\ndir = \"tenants\"\nallow = [\"127.0.0.0/8\"]\nshared = [\"127.0.0.0/8\"]\n\
         [tenants.quota_overrides.a]\ncache_bytes = \"600KiB\"\n{extra}"
    )
}

fn caching_tenant(host: &str, up: &Upstream) -> String {
    format!(
        "hosts = [\"{host}\"]\n[clusters.api]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\ncluster = \"api\"\ncache = {{}}\n",
        up.addr
    )
}

#[tokio::test]
async fn a_tenant_past_its_cache_budget_evicts_only_its_own_answers() {
    let up = Upstream::start("u").await;
    let d = crate::tenants::layout(
        "cache-budget",
        &tenant_main(""),
        &[
            ("a", &caching_tenant("a.example", &up)),
            ("b", &caching_tenant("b.example", &up)),
        ],
    );
    let gw = wasmgate_tests::start_gateway_from(&d.join("gateway.toml")).await;
    let addr = gw.addr();
    let b = [FRESH, ("host", "b.example"), ("x-reply-bytes", "200000")];
    get(addr, "/kept", &b).await;
    let a = [FRESH, ("host", "a.example"), ("x-reply-bytes", "200000")];
    for i in 0..8 {
        let r = get(addr, &format!("/fill/{i}"), &a).await;
        assert_eq!(status(&r), "wasmgate; fwd=uri-miss; stored");
    }
    let m = gw.metrics_text();
    let used = metric(&m, "wasmgate_tenant_cache_bytes{tenant=\"a\"}").unwrap();
    assert!(used <= 600.0 * 1024.0, "{used} bytes against 600 KiB");
    assert!(
        metric(&m, "wasmgate_tenant_cache_evictions_total{tenant=\"a\"}").unwrap() >= 5.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "wasmgate_cache_evictions_total"),
        Some(0.0),
        "the cache itself was not full"
    );
    // a's newest stays, its oldest went; b's answer was never touched.
    assert_eq!(
        get(addr, "/fill/7", &a).await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(
        get(addr, "/fill/0", &a).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(get(addr, "/kept", &b).await.header("x-cache"), Some("HIT"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tenant_token_purges_only_its_own_tenant() {
    use wasmgate_tests::send_body;
    let up = Upstream::start("u").await;
    let operator = "operator-token-0123456789";
    let d = crate::tenants::layout(
        "cache-purge",
        "",
        &[
            ("a", &caching_tenant("a.example", &up)),
            ("b", &caching_tenant("b.example", &up)),
        ],
    );
    let main = tenant_main(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{operator}\"\ndata_dir = {:?}\n",
        d.join("data").display().to_string()
    ));
    std::fs::write(d.join("gateway.toml"), main).unwrap();
    let gw = wasmgate_tests::start_gateway_from(&d.join("gateway.toml")).await;
    let (addr, admin) = (gw.addr(), gw.admin_addr().unwrap());
    let call = |path: &'static str, token: String, body: &'static str| async move {
        let auth = format!("Bearer {token}");
        send_body(
            admin,
            "POST",
            path,
            &[("host", "localhost"), ("authorization", &auth)],
            body,
        )
        .await
    };
    let made = call("/tenants/a/tokens", operator.into(), "").await;
    let token = made.json()["token"].as_str().unwrap().to_owned();
    for host in ["a.example", "b.example"] {
        get(addr, "/same", &[FRESH, ("host", host)]).await;
    }
    let hit = |host: &'static str| async move {
        get(addr, "/same", &[FRESH, ("host", host)])
            .await
            .header("x-cache")
            == Some("HIT")
    };
    // a's token: a's entries only, whatever it asks.
    let r = call(
        "/tenants/a/cache/purge",
        token.clone(),
        r#"{"url": "/same"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["purged"].as_u64()),
        (200, Some(1)),
        "{}",
        r.body
    );
    assert!(!hit("a.example").await);
    assert!(hit("b.example").await);
    let r = call(
        "/tenants/a/cache/purge",
        token.clone(),
        r#"{"url": "/same", "tenant": "b"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        call(
            "/tenants/b/cache/purge",
            token.clone(),
            r#"{"url": "/same"}"#
        )
        .await
        .status,
        404
    );
    assert_eq!(
        call("/cache/purge", token, r#"{"url": "/same"}"#)
            .await
            .status,
        404
    );
    assert!(hit("b.example").await);
    // The operator reaches any tenant's.
    let r = call(
        "/cache/purge",
        operator.into(),
        r#"{"prefix": "/", "tenant": "b"}"#,
    )
    .await;
    assert_eq!(r.json()["purged"], 1, "{}", r.body);
    assert!(!hit("b.example").await);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_access_log_says_how_the_cache_served() {
    let up = Upstream::start("u").await;
    let path =
        std::env::temp_dir().join(format!("wasmgate-cache-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let gw = start_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\npath = {:?}\n\
         [clusters.up]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"c\"\ncluster = \"up\"\ncache = {{}}\n",
        path.display().to_string(),
        up.addr
    ))
    .await;
    let addr = gw.addr();
    get(addr, "/l", &[FRESH]).await;
    get(addr, "/l", &[FRESH]).await;
    send(addr, "DELETE", "/l", &[]).await;
    gw.shutdown().await;
    let lines = wasmgate_tests::within("three access log lines", async {
        loop {
            let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.len() >= 3 {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let cache: Vec<&str> = lines.iter().map(|l| l["cache"].as_str().unwrap()).collect();
    assert_eq!(cache, ["miss", "hit", "bypass"]);
}

/// Filters keep values in the cache (the `cache` import, contract 0.2.1):
/// each in its own namespace, within its `cache_bytes`, purged by tag.
async fn filter_cache_gateway(up: &Upstream, admin: &str) -> RunningGateway {
    start_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n{admin}\n\
         [engine]\nmax_instances = 16\n\
         [filters.f1]\npath = {fault:?}\npool_size = 1\ncache_bytes = \"4KiB\"\n\
         [filters.f2]\npath = {fault:?}\npool_size = 1\n\
         [filters.none]\npath = {fault:?}\npool_size = 1\ncache_bytes = 0\n\
         [clusters.up]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"one\"\npath_prefix = \"/one\"\ncluster = \"up\"\nfilters = [{{ name = \"f1\" }}]\n\
         [[routes]]\nname = \"two\"\npath_prefix = \"/two\"\ncluster = \"up\"\nfilters = [{{ name = \"f2\" }}]\n\
         [[routes]]\nname = \"none\"\npath_prefix = \"/none\"\ncluster = \"up\"\nfilters = [{{ name = \"none\" }}]\n",
        up.addr,
        fault = artifacts::FAULT,
    ))
    .await
}

async fn cache_op(addr: std::net::SocketAddr, route: &str, op: &str, arg: &str) -> (u16, String) {
    let r = get(addr, route, &[("x-fault", op), ("x-fault-arg", arg)]).await;
    (r.status, r.body)
}

#[tokio::test]
async fn filters_keep_values_in_the_cache_each_in_its_own_namespace() {
    let up = Upstream::start("u").await;
    let gw = filter_cache_gateway(&up, "").await;
    let addr = gw.addr();
    assert_eq!(
        cache_op(addr, "/one", "cache-set", "k=v1@60000").await,
        (200, "stored".into())
    );
    assert_eq!(
        cache_op(addr, "/one", "cache-get", "k").await,
        (200, "v1".into())
    );
    // Another filter, the same key: its own namespace, empty.
    assert_eq!(cache_op(addr, "/two", "cache-get", "k").await.0, 404);
    assert_eq!(cache_op(addr, "/two", "cache-set", "k=v2").await.0, 200);
    assert_eq!(cache_op(addr, "/one", "cache-get", "k").await.1, "v1");
    assert_eq!(cache_op(addr, "/two", "cache-get", "k").await.1, "v2");
    // Bad calls are refused, naming why; a filter with no grant has none.
    assert_eq!(
        cache_op(addr, "/one", "cache-set", "k=v@0").await,
        (507, "CacheError::InvalidTtl".into())
    );
    assert_eq!(
        cache_op(
            addr,
            "/one",
            "cache-set",
            &format!("k=v@1000#{}", "t,".repeat(17))
        )
        .await,
        (507, "CacheError::InvalidKey".into())
    );
    let big = format!("big={}", "x".repeat(5000));
    assert_eq!(
        cache_op(addr, "/one", "cache-set", &big).await,
        (507, "CacheError::TooLarge(4096)".into())
    );
    assert_eq!(
        cache_op(addr, "/none", "cache-set", "k=v").await,
        (507, "CacheError::NotGranted".into())
    );
    assert_eq!(cache_op(addr, "/none", "cache-get", "k").await.0, 404);
    // Expiry by TTL.
    assert_eq!(
        cache_op(addr, "/one", "cache-set", "short=v@1").await.0,
        200
    );
    wasmgate_tests::within("the 1 ms entry to expire", async {
        while cache_op(addr, "/one", "cache-get", "short").await.0 != 404 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // Past its quota, the filter's own oldest values make room: ten of
    // 1,000 bytes in 4 KiB.
    for i in 0..10 {
        let set = format!("fill{i}={}", "y".repeat(1000));
        assert_eq!(cache_op(addr, "/one", "cache-set", &set).await.0, 200);
    }
    assert_eq!(cache_op(addr, "/one", "cache-get", "fill9").await.0, 200);
    assert_eq!(cache_op(addr, "/one", "cache-get", "fill0").await.0, 404);
    // The other filter's value was never touched.
    assert_eq!(cache_op(addr, "/two", "cache-get", "k").await.1, "v2");
    let m = gw.metrics_text();
    assert!(
        metric(&m, "wasmgate_cache_filter_lookups_total{result=\"hit\"}").unwrap() >= 5.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "wasmgate_cache_filter_stores_total{outcome=\"rejected\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(up.count(), 0, "every answer was the filter's");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_filter_value_is_purged_by_its_tag() {
    let up = Upstream::start("u").await;
    let operator = "operator-token-0123456789";
    let gw = filter_cache_gateway(
        &up,
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{operator}\""),
    )
    .await;
    let (addr, admin) = (gw.addr(), gw.admin_addr().unwrap());
    let purge = |body: &'static str| async move {
        wasmgate_tests::send_body(
            admin,
            "POST",
            "/cache/purge",
            &[
                ("host", "localhost"),
                ("authorization", "Bearer operator-token-0123456789"),
            ],
            body,
        )
        .await
        .json()["purged"]
            .as_u64()
    };
    cache_op(addr, "/one", "cache-set", "/a=1@60000#user-7,plan").await;
    cache_op(addr, "/one", "cache-set", "/b=2@60000#user-8").await;
    // A purge by URL or prefix is for answers to requests, not filters' values.
    assert_eq!(purge(r#"{"prefix": "/"}"#).await, Some(0));
    assert_eq!(purge(r#"{"tag": "user-7"}"#).await, Some(1));
    assert_eq!(cache_op(addr, "/one", "cache-get", "/a").await.0, 404);
    assert_eq!(cache_op(addr, "/one", "cache-get", "/b").await.1, "2");
    gw.shutdown().await;
}

#[tokio::test]
async fn tenants_filters_of_one_name_keep_apart_values() {
    let up = Upstream::start("u").await;
    let tenant = |host: &str| {
        format!(
            "hosts = [\"{host}\"]\n[filters.f]\npath = {:?}\npool_size = 1\n\
             [clusters.api]\nendpoints = [\"{}\"]\n\
             [[routes]]\nname = \"r\"\ncluster = \"api\"\nfilters = [{{ name = \"f\" }}]\n",
            artifacts::FAULT,
            up.addr
        )
    };
    let d = crate::tenants::layout(
        "filter-cache",
        &tenant_main(""),
        &[("a", &tenant("a.example")), ("b", &tenant("b.example"))],
    );
    let gw = wasmgate_tests::start_gateway_from(&d.join("gateway.toml")).await;
    let addr = gw.addr();
    let op = |host: &'static str, op: &'static str, arg: &'static str| async move {
        get(
            addr,
            "/",
            &[("host", host), ("x-fault", op), ("x-fault-arg", arg)],
        )
        .await
        .status
    };
    assert_eq!(op("a.example", "cache-set", "secret=a").await, 200);
    assert_eq!(op("a.example", "cache-get", "secret").await, 200);
    assert_eq!(
        op("b.example", "cache-get", "secret").await,
        404,
        "b's f is not a's f"
    );
    // The value counts in a's cache budget.
    assert!(
        metric(
            &gw.metrics_text(),
            "wasmgate_tenant_cache_bytes{tenant=\"a\"}"
        )
        .unwrap()
            > 0.0
    );
    gw.shutdown().await;
}
