//! First-party filters running inside the real host, and the chain semantics:
//! header edits in both directions, short-circuit, reverse response order.

use wasmgate_tests::{Upstream, get, start_gateway};

fn one_route(up: &Upstream, filters: &str) -> String {
    crate::one_route(up, "", filters)
}

pub(crate) mod api_key {
    use super::*;

    #[tokio::test]
    pub(crate) async fn runs_in_the_real_host() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            r#"
[[routes.filters]]
name = "api-key"
config = { header = "x-api-key", keys = ["k-one", "k-two"] }
"#,
        );
        let gw = start_gateway(&toml).await;
        let missing = get(gw.addr(), "/", &[]).await;
        assert_eq!(missing.status, 401);
        assert_eq!(missing.json()["code"], "unauthorized");
        assert_eq!(missing.header("www-authenticate"), Some("ApiKey"));
        let wrong = get(gw.addr(), "/", &[("x-api-key", "k-on")]).await;
        assert_eq!(wrong.status, 401);
        assert_eq!(wrong.json()["message"], "invalid API key");
        assert_eq!(
            up.count(),
            0,
            "a refused request never reaches the upstream"
        );

        let ok = get(gw.addr(), "/", &[("x-api-key", "k-two")]).await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            up.seen()[0].headers.get("x-api-key").unwrap(),
            "k-two",
            "forwarded unless hidden"
        );
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn hide_credentials_removes_the_key_before_forwarding() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            r#"
[[routes.filters]]
name = "api-key"
config = { keys = ["secret"], hide_credentials = true }
"#,
        );
        let gw = start_gateway(&toml).await;
        assert_eq!(
            get(gw.addr(), "/", &[("x-api-key", "secret")]).await.status,
            200
        );
        assert!(up.seen()[0].headers.get("x-api-key").is_none());
        gw.shutdown().await;
    }
}

pub(crate) mod headers {
    use super::*;

    #[tokio::test]
    pub(crate) async fn runs_in_the_real_host() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            r#"
[[routes.filters]]
name = "headers"
[routes.filters.config.request]
set = { "x-gateway" = "wasmgate" }
append = { "x-multi" = "added" }
remove = ["x-drop-me"]
[routes.filters.config.response]
set = { "x-served-by" = "wasmgate" }
remove = ["x-remove-me"]
"#,
        );
        let gw = start_gateway(&toml).await;
        let reply = get(
            gw.addr(),
            "/",
            &[
                ("x-drop-me", "1"),
                ("x-multi", "original"),
                ("x-gateway", "spoofed"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200);
        // Response side.
        assert_eq!(reply.header("x-served-by"), Some("wasmgate"));
        assert!(reply.headers.get("x-remove-me").is_none());
        assert_eq!(reply.header("x-upstream"), Some("u"));
        // Request side, as the upstream saw it.
        let seen = &up.seen()[0];
        assert_eq!(
            seen.headers.get_all("x-gateway").iter().collect::<Vec<_>>(),
            ["wasmgate"]
        );
        assert_eq!(
            seen.headers.get_all("x-multi").iter().collect::<Vec<_>>(),
            ["original", "added"]
        );
        assert!(seen.headers.get("x-drop-me").is_none());
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn invalid_config_is_rejected_with_the_filters_message() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            r#"
[[routes.filters]]
name = "headers"
config.request.set = { "bad header" = "x" }
"#,
        );
        let err = wasmgate_tests::build_gateway(&toml).await.unwrap_err();
        assert!(err.contains("routes[0].filters[0].config"), "{err}");
        assert!(
            err.contains("\"bad header\" is not a valid header name"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn short_circuit_is_seen_by_earlier_filters_on_the_way_back() {
    let up = Upstream::start("u").await;
    let toml = one_route(
        &up,
        r#"
[[routes.filters]]
name = "headers"
config.response.set = { "x-outer" = "saw-it" }

[[routes.filters]]
name = "api-key"
config = { keys = ["k"] }

[[routes.filters]]
name = "headers"
config.response.set = { "x-inner" = "saw-it" }
"#,
    );
    let gw = start_gateway(&toml).await;
    let refused = get(gw.addr(), "/", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("x-outer"),
        Some("saw-it"),
        "the filter before the one that answered sees the answer"
    );
    assert!(
        refused.headers.get("x-inner").is_none(),
        "filters after it are skipped"
    );
    assert_eq!(up.count(), 0);

    let ok = get(gw.addr(), "/", &[("x-api-key", "k")]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-outer"), Some("saw-it"));
    assert_eq!(ok.header("x-inner"), Some("saw-it"));
    gw.shutdown().await;
}

#[tokio::test]
async fn response_filters_run_in_reverse_order() {
    let up = Upstream::start("u").await;
    // Both set the same header; the outer (first) filter runs last on the way
    // back, so its value wins.
    let toml = one_route(
        &up,
        r#"
[[routes.filters]]
name = "headers"
config.response.set = { "x-order" = "first-filter" }

[[routes.filters]]
name = "headers"
config.response.set = { "x-order" = "second-filter" }
"#,
    );
    let gw = start_gateway(&toml).await;
    assert_eq!(
        get(gw.addr(), "/", &[]).await.header("x-order"),
        Some("first-filter")
    );
    gw.shutdown().await;
}

pub(crate) mod rate_limit {
    use std::time::Duration;

    use wasmgate_tests::{Upstream, artifacts, get, start_gateway, within};

    fn toml(up: &Upstream, config: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n[filters.rate-limit]\npath = {:?}\npool_size = 4\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{{ name = \"rate-limit\", config = {config} }}]\n",
            artifacts::RATE_LIMIT,
            up.addr
        )
    }

    #[tokio::test]
    pub(crate) async fn runs_in_the_real_host() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&toml(&up, "{ requests = 2, per = \"second\" }")).await;
        let first = get(gw.addr(), "/", &[]).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.header("ratelimit-limit"), Some("2"));
        assert_eq!(first.header("ratelimit-remaining"), Some("1"));
        assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
        let refused = get(gw.addr(), "/", &[]).await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(refused.json()["code"], "rate_limited");
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
        assert_eq!(up.count(), 2);
        // The bucket refills at two per second.
        within("refill", async {
            while get(gw.addr(), "/", &[]).await.status != 200 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn the_bucket_is_shared_by_every_instance_under_concurrency() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&toml(
            &up,
            "{ requests = 1, per = \"hour\", burst = 5, key = \"header:x-api-key\" }",
        ))
        .await;
        let addr = gw.addr();
        let all: Vec<_> = (0..20)
            .map(|_| tokio::spawn(async move { get(addr, "/", &[("x-api-key", "alice")]).await }))
            .collect();
        let mut ok = 0;
        for h in all {
            match h.await.unwrap().status {
                200 => ok += 1,
                429 => {}
                s => panic!("status {s}"),
            }
        }
        assert_eq!(
            ok, 5,
            "exactly the burst passes, across four pooled instances"
        );
        // Another key has its own bucket.
        assert_eq!(get(addr, "/", &[("x-api-key", "bob")]).await.status, 200);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_bad_config_is_refused_at_load_with_the_filters_message() {
        let up = Upstream::start("u").await;
        let err = wasmgate_tests::build_gateway(&toml(&up, "{ requests = 5, key = \"cookie\" }"))
            .await
            .expect_err("must not build");
        assert!(err.contains("routes[0].filters[0].config"), "{err}");
        assert!(err.contains("\"header:NAME\""), "{err}");
    }
}
