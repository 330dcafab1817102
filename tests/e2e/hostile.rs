//! The filter author as the attacker (issue 16's threat model: filter
//! authors are not trusted, only the operator is). Each test has a test-only
//! guest (`filters/testing/fault`) attempt an escape, and asserts it is
//! contained: the attempt fails or is refused, only its own request feels
//! it, and another party's backend or data is never reached.

use wasmgate_tests::{Upstream, artifacts, capture_logs, get, metric, start_gateway};

/// A request edit may name another cluster (`set-cluster`), which would let
/// a filter send its route's traffic, with a path and headers of its
/// choosing, to any backend in the config. Only clusters the operator
/// granted the filter in `reroute_clusters` are accepted; a cluster it was
/// not granted fails exactly like one that does not exist, so a filter
/// cannot even learn which names exist.
#[tokio::test]
async fn a_filter_reroutes_only_to_clusters_it_was_granted() {
    let logs = capture_logs();
    let mine = Upstream::start("mine").await;
    let theirs = Upstream::start("theirs").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 8\n\
         [filters.plain]\npath = {fault:?}\npool_size = 2\n\
         [filters.granted]\npath = {fault:?}\npool_size = 2\nreroute_clusters = [\"theirs\"]\n\
         [clusters.mine]\nendpoints = [\"{}\"]\n[clusters.theirs]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"a\"\npath_prefix = \"/a\"\ncluster = \"mine\"\nfilters = [{{ name = \"plain\" }}]\n\
         [[routes]]\nname = \"b\"\npath_prefix = \"/b\"\ncluster = \"mine\"\nfilters = [{{ name = \"granted\" }}]\n",
        mine.addr,
        theirs.addr,
        fault = artifacts::FAULT,
    );
    let gw = start_gateway(&toml).await;
    let reroute = |to: &'static str| [("x-fault", "reroute"), ("x-fault-arg", to)];

    // Without a grant: an existing cluster and a made-up one, refused alike.
    let existing = get(gw.addr(), "/a", &reroute("theirs")).await;
    let made_up = get(gw.addr(), "/a", &reroute("nowhere")).await;
    for r in [&existing, &made_up] {
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(r.json()["code"], "filter_invalid_decision", "{}", r.body);
    }
    assert_eq!(
        existing.json()["message"],
        made_up.json()["message"],
        "the answer does not tell a granted name from a missing one"
    );
    for name in ["theirs", "nowhere"] {
        let line = format!(
            "cluster \"{name}\" does not exist or is not in this filter's reroute_clusters"
        );
        assert_eq!(
            logs.lines_with(&["plain", &line]).len(),
            1,
            "the log says the same for both: {line}"
        );
    }
    assert_eq!(theirs.count(), 0, "the other backend was never reached");
    assert_eq!(mine.count(), 0, "a refused decision is not forwarded");

    // With a grant: that cluster and no other.
    let r = get(gw.addr(), "/b", &reroute("theirs")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = theirs.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/rerouted");
    let r = get(gw.addr(), "/b", &reroute("mine")).await;
    assert_eq!(r.status, 500, "a cluster not in its grant: {}", r.body);
    assert_eq!(mine.count(), 0);

    // The route itself is unharmed.
    assert_eq!(get(gw.addr(), "/a", &[]).await.status, 200);
    gw.shutdown().await;
}

/// A filter's log lines are its own: one entry each, with newlines and
/// other control characters escaped (it cannot write a line that looks
/// like the gateway's), and at most `log_lines_per_second` of them, the
/// rest dropped and counted, so a flood neither fills the disk nor holds
/// the worker thread writing.
#[tokio::test]
async fn a_filter_cannot_forge_or_flood_the_log() {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 4\n\
         [filters.noisy]\npath = {fault:?}\npool_size = 1\nlog_lines_per_second = 5\n\
         [clusters.c]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\ncluster = \"c\"\nfilters = [{{ name = \"noisy\" }}]\n",
        up.addr,
        fault = artifacts::FAULT,
    );
    let gw = start_gateway(&toml).await;
    let r = get(
        gw.addr(),
        "/",
        &[("x-fault", "log-flood"), ("x-fault-arg", "200")],
    )
    .await;
    assert_eq!(r.status, 200, "the flood costs only its lines: {}", r.body);

    for forged in ["FORGED-import", "FORGED-stdout"] {
        for line in logs.lines_with(&[forged]) {
            assert!(
                !line.starts_with(forged) && line.contains("noisy"),
                "a forged line of its own: {line:?}"
            );
        }
    }
    let written = logs.lines_with(&["noisy", "FORGED-import"]).len()
        + logs.lines_with(&["noisy", "FORGED-stdout"]).len();
    assert!(
        (1..=20).contains(&written),
        "a burst of twice the rate (and what refills meanwhile), not 201: {written}"
    );
    let text = gw.metrics_text();
    let dropped = metric(
        &text,
        "wasmgate_filter_refusals_total{tenant=\"default\",filter=\"noisy\",limit=\"log_lines_per_second\"}",
    );
    assert_eq!(
        dropped,
        Some((201 - written) as f64),
        "every line not written is counted\n{text}"
    );
    assert!(
        !logs
            .lines_with(&["noisy", "more than its 5 log lines per second"])
            .is_empty(),
        "the drop is said"
    );
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

/// Rate-limit buckets live in the host, one per key a filter names: a
/// filter (or clients choosing its keys) could otherwise grow host memory
/// without bound. Past `rate_limit_keys` a new key is refused and counted;
/// and a filter's buckets leave with it.
#[tokio::test]
async fn rate_limit_keys_are_bounded_per_filter_and_leave_with_it() {
    let up = Upstream::start("u").await;
    let config = |with_filter: bool| {
        let (filter, chain) = if with_filter {
            (
                format!(
                    "[filters.limited]\npath = {:?}\npool_size = 2\nrate_limit_keys = 2\n",
                    artifacts::RATE_LIMIT
                ),
                "filters = [{ name = \"limited\", config = { requests = 100, key = \"header:x-key\" } }]\n",
            )
        } else {
            (String::new(), "")
        };
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 8\n\
             {filter}[clusters.c]\nendpoints = [\"{}\"]\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\ncluster = \"c\"\n{chain}",
            up.addr
        )
    };
    let gw = start_gateway(&config(true)).await;
    let with_key = |k: &'static str| [("x-key", k)];
    assert_eq!(get(gw.addr(), "/", &with_key("a")).await.status, 200);
    assert_eq!(get(gw.addr(), "/", &with_key("b")).await.status, 200);
    let third = get(gw.addr(), "/", &with_key("c")).await;
    assert_eq!(
        third.status, 429,
        "a third key past the quota: {}",
        third.body
    );
    assert_eq!(
        get(gw.addr(), "/", &with_key("a")).await.status,
        200,
        "keys it holds keep working"
    );
    assert_eq!(
        metric(
            &gw.metrics_text(),
            "wasmgate_filter_refusals_total{tenant=\"default\",filter=\"limited\",limit=\"rate_limit_keys\"}"
        ),
        Some(1.0)
    );

    // Removed and added back: it starts afresh (its buckets left with it).
    let parse = |t: &str| {
        wasmgate::config::Config::parse(t, "test.toml", std::path::Path::new(".")).unwrap()
    };
    gw.live().apply_config(parse(&config(false))).await.unwrap();
    gw.live().apply_config(parse(&config(true))).await.unwrap();
    assert_eq!(get(gw.addr(), "/", &with_key("c")).await.status, 200);
    assert_eq!(get(gw.addr(), "/", &with_key("d")).await.status, 200);
    assert_eq!(get(gw.addr(), "/", &with_key("e")).await.status, 429);
    gw.shutdown().await;
}

/// A component that cannot run within its memory cap is refused when it is
/// loaded, with the reason, rather than failing every request later (or
/// taking instance slots only to fail).
#[tokio::test]
async fn a_component_that_cannot_fit_its_memory_limit_is_refused_at_load() {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[engine]\nmax_instances = 8\n\
         [filters.tight]\npath = {fault:?}\npool_size = 1\nmemory_limit = \"64KiB\"\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nrespond = {{ status = 204 }}\nfilters = [{{ name = \"tight\" }}]\n",
        fault = artifacts::FAULT,
    );
    let err = wasmgate_tests::build_gateway(&toml)
        .await
        .expect_err("a component larger than its cap at start");
    assert!(
        err.contains("filters.tight")
            && err.contains("cannot run within its limits")
            && err.contains("more than its memory_limit"),
        "{err}"
    );
}

/// The engine's per-component slots are sized for the largest filter it
/// accepts (the Python and JavaScript interpreters included): a component
/// with more linear memories or core instances than a slot holds is refused
/// when it is loaded, from a config or uploaded through the API, naming the
/// limit, and the running version keeps serving.
#[tokio::test]
async fn a_component_beyond_the_per_component_slots_is_refused_at_load() {
    let wat_component = |memories: usize, instances: usize| {
        let mut text =
            String::from("(component\n  (core module $m (memory 1))\n  (core module $n)\n");
        for _ in 0..memories {
            text.push_str("  (core instance (instantiate $m))\n");
        }
        for _ in 0..instances {
            text.push_str("  (core instance (instantiate $n))\n");
        }
        text.push(')');
        wat::parse_str(&text).unwrap()
    };
    let dir = std::env::temp_dir().join(format!("wasmgate-slots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "memories",
            wat_component(wasmgate::filter::MAX_MEMORIES as usize + 1, 0),
            // wasmtime's own words, as it checks the slots.
            format!(
                "contains {} Wasm linear memories, which exceeds the configured maximum of {}",
                wasmgate::filter::MAX_MEMORIES + 1,
                wasmgate::filter::MAX_MEMORIES
            ),
        ),
        (
            "instances",
            wat_component(0, wasmgate::filter::MAX_CORE_INSTANCES as usize + 1),
            format!(
                "instantiates {} core modules; a filter may have at most {} core instances",
                wasmgate::filter::MAX_CORE_INSTANCES + 1,
                wasmgate::filter::MAX_CORE_INSTANCES
            ),
        ),
    ];
    for (what, bytes, says) in &cases {
        let path = dir.join(format!("{what}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[engine]\nmax_instances = 8\n\
             [filters.wide]\npath = {path:?}\npool_size = 1\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nrespond = {{ status = 204 }}\nfilters = [{{ name = \"wide\" }}]\n",
        );
        let err = wasmgate_tests::build_gateway(&toml)
            .await
            .expect_err("a component beyond the slots");
        assert!(
            err.contains("filters.wide")
                && err.contains("cannot run within its limits")
                && err.contains(says.as_str()),
            "{what}: {err}"
        );
    }
    // Uploaded through the API: refused with the reason; the running
    // version serves on.
    let up = Upstream::start("u").await;
    let gw = start_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"admin-secret-0123456789\"\n\
         [access_log]\nenabled = false\n[engine]\nmax_instances = 16\n\
         [filters.v]\npath = {:?}\npool_size = 2\n\
         [clusters.c]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\ncluster = \"c\"\nfilters = [{{ name = \"v\" }}]\n",
        artifacts::VERSION_A,
        up.addr
    ))
    .await;
    let admin = gw.admin_addr().expect("an admin listener");
    for (what, bytes, says) in cases {
        let r = wasmgate_tests::send_body(
            admin,
            "PUT",
            "/filters/v/module",
            &[("authorization", "Bearer admin-secret-0123456789")],
            bytes,
        )
        .await;
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        assert_eq!(r.json()["code"], "invalid_module", "{what}: {}", r.body);
        assert!(r.body.contains(says.as_str()), "{what}: {}", r.body);
        let still = get(gw.addr(), "/", &[]).await;
        assert_eq!(still.header("x-version"), Some("aa"), "{what}");
    }
    gw.shutdown().await;
}

/// The operator bounds which headers a filter reads and edits: a read
/// outside `read_request_headers` sees nothing (and is counted), an edit
/// outside `write_request_headers` refuses the decision, and a route can
/// seal what one filter set (an identity header, say) against the filters
/// after it.
#[tokio::test]
async fn header_reads_and_edits_stay_within_the_operators_bounds() {
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n\
         [filters.bounded]\npath = {fault:?}\npool_size = 2\n\
         read_request_headers = [\"x-fault*\", \"x-allowed\"]\nwrite_request_headers = [\"x-ok\", \"x-user\"]\n\
         [filters.identity]\npath = {headers:?}\npool_size = 2\n\
         [clusters.c]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"bounded\"\npath_prefix = \"/b\"\ncluster = \"c\"\nfilters = [{{ name = \"bounded\" }}]\n\
         [[routes]]\nname = \"sealed\"\npath_prefix = \"/s\"\ncluster = \"c\"\nfilters = [\
         {{ name = \"identity\", seal = [\"x-user\"], config = {{ request = {{ set = {{ \"x-user\" = \"alice\" }} }} }} }}, \
         {{ name = \"bounded\" }}]\n",
        up.addr,
        fault = artifacts::FAULT,
        headers = artifacts::HEADERS,
    );
    let gw = start_gateway(&toml).await;
    let read = |name: &'static str| {
        [
            ("x-fault", "read-header"),
            ("x-fault-arg", name),
            ("authorization", "Bearer secret"),
            ("x-allowed", "yes"),
        ]
    };
    // Reads: within the bound, the value; outside, nothing.
    assert_eq!(
        get(gw.addr(), "/b", &read("x-allowed")).await.body,
        "[\"yes\"]"
    );
    assert_eq!(
        get(gw.addr(), "/b", &read("authorization")).await.body,
        "[]"
    );

    // Edits: within the bound, applied; outside, the decision is refused.
    let set = |name: &'static str| [("x-fault", "set-header"), ("x-fault-arg", name)];
    assert_eq!(get(gw.addr(), "/b", &set("x-ok")).await.status, 200);
    assert_eq!(up.seen()[0].headers["x-ok"], "forged");
    let r = get(gw.addr(), "/b", &set("x-forwarded-for")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["code"], "filter_invalid_decision");
    assert_eq!(up.count(), 1, "a refused decision is not forwarded");

    // Sealed: the identity filter's x-user cannot be rewritten after it,
    // though the bound alone would allow it.
    let r = get(gw.addr(), "/s", &set("x-user")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(up.count(), 1);
    assert_eq!(get(gw.addr(), "/s", &set("x-ok")).await.status, 200);
    assert_eq!(up.seen()[1].headers["x-user"], "alice");

    let text = gw.metrics_text();
    for (limit, n) in [
        ("read_request_headers", 1.0),
        ("write_request_headers", 1.0),
        ("seal", 1.0),
    ] {
        assert_eq!(
            metric(
                &text,
                &format!(
                    "wasmgate_filter_refusals_total{{tenant=\"default\",filter=\"bounded\",limit=\"{limit}\"}}"
                )
            ),
            Some(n),
            "{limit}\n{text}"
        );
    }
    gw.shutdown().await;
}

/// A filter that declares it reads headers its bound does not allow is
/// refused at load, naming what it asked for (here a 0.1 guest, whose
/// header list is copied into every call).
#[tokio::test]
async fn a_filter_declaring_more_than_its_bound_is_refused_at_load() {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[engine]\nmax_instances = 8\n\
         [filters.old]\npath = {old:?}\npool_size = 1\nread_request_headers = [\"x-other\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nrespond = {{ status = 204 }}\nfilters = [{{ name = \"old\" }}]\n",
        old = artifacts::CONTRACT_0_1_0,
    );
    let err = wasmgate_tests::build_gateway(&toml)
        .await
        .expect_err("declares x-contract-key, allowed only x-other");
    assert!(
        err.contains("read_request_headers") && err.contains("x-contract-key"),
        "{err}"
    );
}

/// What a filter hands back is bounded: a `context` held across the whole
/// upstream call, and the header bytes of its edits. Past a bound the
/// decision is refused whole, and only that request fails. Its rate-limit
/// buckets, whatever keys it names, stop at its quota.
#[tokio::test]
async fn a_filter_cannot_hand_back_or_hold_more_than_the_host_keeps() {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 8\n\
         [filters.greedy]\npath = {fault:?}\npool_size = 1\nrate_limit_keys = 50\n\
         [clusters.c]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\ncluster = \"c\"\nfilters = [{{ name = \"greedy\" }}]\n",
        up.addr,
        fault = artifacts::FAULT,
    );
    let gw = start_gateway(&toml).await;
    for (what, says) in [
        (
            "context",
            "the context of 102400 bytes exceeds the limit of 65536 bytes",
        ),
        ("headers", "the header edits of"),
    ] {
        let r = get(
            gw.addr(),
            "/",
            &[("x-fault", "oversize"), ("x-fault-arg", what)],
        )
        .await;
        assert_eq!(r.status, 500, "{what}: {}", r.body);
        assert_eq!(r.json()["code"], "filter_invalid_decision", "{what}");
        assert_eq!(
            logs.lines_with(&["greedy", says]).len(),
            1,
            "{what}: {says}"
        );
    }
    assert_eq!(up.count(), 0, "nothing of a refused decision went upstream");
    assert_eq!(
        get(gw.addr(), "/", &[]).await.status,
        200,
        "the route serves on"
    );
    assert_eq!(
        metric(
            &gw.metrics_text(),
            "wasmgate_filter_refusals_total{tenant=\"default\",filter=\"greedy\",limit=\"decision_size\"}"
        ),
        Some(2.0)
    );

    let r = get(
        gw.addr(),
        "/",
        &[("x-fault", "bucket-flood"), ("x-fault-arg", "500")],
    )
    .await;
    assert_eq!(r.body, "50", "{}", r.body);
    assert_eq!(
        metric(
            &gw.metrics_text(),
            "wasmgate_filter_refusals_total{tenant=\"default\",filter=\"greedy\",limit=\"rate_limit_keys\"}"
        ),
        Some(450.0)
    );
    gw.shutdown().await;
}
