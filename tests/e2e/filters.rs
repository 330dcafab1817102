//! First-party filters running inside the real host, and the chain semantics:
//! header edits in both directions, short-circuit, reverse response order.

use wasmgate_tests::{Upstream, get, start_gateway};

fn one_route(up: &Upstream, filters: &str) -> String {
    crate::one_route(up, "", filters)
}

pub(crate) mod aggregate {
    use super::*;

    /// Clusters `search`, `cart` and `slow`, and route `r` (answered by the
    /// filter) with `backends` as the aggregate config.
    fn gateway_toml(search: &Upstream, cart: &Upstream, backends: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[clusters.search]\nendpoints = [\"{}\"]\n[clusters.cart]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\nrespond = {{ status = 404 }}\n[[routes.filters]]\nname = \"aggregate\"\nconfig = {{ forward_headers = [\"authorization\"], backends = [{backends}] }}\n",
            crate::filters_toml(),
            search.addr,
            cart.addr,
        )
    }

    #[tokio::test]
    pub(crate) async fn runs_in_the_real_host() {
        let search = Upstream::start("search").await;
        let cart = Upstream::start("cart").await;
        let gw = start_gateway(&gateway_toml(
            &search,
            &cart,
            r#"{ cluster = "search", path = "/search?q={query.q}", key = "search" },
               { cluster = "cart", path = "/cart/{header.x-user}", key = "cart" }"#,
        ))
        .await;
        let r = get(
            gw.addr(),
            "/home?q=red%20shoes&x=1",
            &[("x-user", "u 1"), ("authorization", "Bearer t")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-aggregate-completed"), Some("true"));
        let body = r.json();
        assert_eq!(body["search"]["upstream"], "search", "{body}");
        assert_eq!(body["search"]["path"], "/search?q=red%20shoes");
        assert_eq!(body["cart"]["upstream"], "cart");
        assert_eq!(body["cart"]["path"], "/cart/u%201", "values are encoded");
        assert!(body.get("_errors").is_none(), "{body}");
        // Each backend got one call with the forwarded header.
        assert_eq!(search.count(), 1);
        assert_eq!(cart.seen()[0].headers["authorization"], "Bearer t");
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_slow_and_a_failing_backend_give_a_marked_partial_answer() {
        let search = Upstream::start("search").await;
        let cart = Upstream::start("cart").await;
        let gw = start_gateway(&gateway_toml(
            &search,
            &cart,
            r#"{ cluster = "search", path = "/search", key = "search" },
               { cluster = "cart", path = "/delay/3000", key = "slow", timeout_ms = 300 },
               { cluster = "cart", path = "/status/503", key = "broken" }"#,
        ))
        .await;
        let r = get(gw.addr(), "/home", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-aggregate-completed"), Some("false"));
        let body = r.json();
        assert_eq!(body["search"]["upstream"], "search", "{body}");
        assert_eq!(body["_errors"]["slow"], "timeout", "{body}");
        assert_eq!(body["_errors"]["broken"], "status 503", "{body}");
        assert!(body.get("slow").is_none() && body.get("broken").is_none());
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_required_backend_failing_fails_the_request() {
        let search = Upstream::start("search").await;
        let cart = Upstream::start("cart").await;
        let gw = start_gateway(&gateway_toml(
            &search,
            &cart,
            r#"{ cluster = "search", path = "/search" },
               { cluster = "cart", path = "/status/500", required = true }"#,
        ))
        .await;
        let r = get(gw.addr(), "/home", &[]).await;
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(r.json()["code"], "aggregate_failed");
        assert!(
            r.json()["message"].as_str().unwrap().contains("\"cart\""),
            "{}",
            r.body
        );
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn backends_without_a_key_are_merged_at_the_top_level() {
        let search = Upstream::start("search").await;
        let cart = Upstream::start("cart").await;
        let gw = start_gateway(&gateway_toml(
            &search,
            &cart,
            r#"{ cluster = "search", path = "/a", key = "first" },
               { cluster = "cart", path = "/b" }"#,
        ))
        .await;
        let body = get(gw.addr(), "/home", &[]).await.json();
        assert_eq!(body["upstream"], "cart", "{body}");
        assert_eq!(body["path"], "/b");
        assert_eq!(body["first"]["path"], "/a");
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_bad_template_is_refused_at_load() {
        let search = Upstream::start("search").await;
        let cart = Upstream::start("cart").await;
        let err = wasmgate_tests::build_gateway(&gateway_toml(
            &search,
            &cart,
            r#"{ cluster = "search", path = "/s/{cookie.id}" }"#,
        ))
        .await
        .unwrap_err();
        assert!(err.contains("routes[0].filters[0].config"), "{err}");
        assert!(err.contains("unknown placeholder {cookie.id}"), "{err}");
    }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) mod api_key_hashed {
    use super::*;

    #[tokio::test]
    async fn keys_given_as_sha256_digests_are_accepted() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            &format!(
                "[[routes.filters]]\nname = \"api-key\"\nconfig = {{ keys = [\"sha256:{}\", \"plain-key\"] }}\n",
                sha256_hex("hashed-key")
            ),
        );
        let gw = start_gateway(&toml).await;
        assert_eq!(
            get(gw.addr(), "/", &[("x-api-key", "hashed-key")])
                .await
                .status,
            200
        );
        assert_eq!(
            get(gw.addr(), "/", &[("x-api-key", "plain-key")])
                .await
                .status,
            200
        );
        let digest_itself = format!("sha256:{}", sha256_hex("hashed-key"));
        assert_eq!(
            get(gw.addr(), "/", &[("x-api-key", &digest_itself)])
                .await
                .status,
            401,
            "the digest is not the key"
        );
        gw.shutdown().await;
    }
}

pub(crate) mod basic_auth {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        use std::io::Write;
        // Base64 by hand would be a second implementation; the test uses
        // the `base64` alphabet through a tiny encoder over known input.
        let raw = format!("{user}:{password}");
        let mut out = Vec::new();
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for chunk in raw.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(table[(n >> (18 - 6 * i) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
        let mut s = Vec::new();
        write!(s, "Basic {}", String::from_utf8(out).unwrap()).unwrap();
        String::from_utf8(s).unwrap()
    }

    #[tokio::test]
    pub(crate) async fn runs_in_the_real_host() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            &format!(
                "[[routes.filters]]\nname = \"basic-auth\"\nconfig = {{ realm = \"ops\", users = {{ alice = \"sha256:pepper:{}\", bob = \"sha256:{}\" }} }}\n",
                sha256_hex("pepperwonderland"),
                sha256_hex("builder")
            ),
        );
        let gw = start_gateway(&toml).await;
        let none = get(gw.addr(), "/", &[]).await;
        assert_eq!(none.status, 401);
        assert_eq!(
            none.header("www-authenticate"),
            Some("Basic realm=\"ops\", charset=\"UTF-8\"")
        );
        let wrong = get(
            gw.addr(),
            "/",
            &[("authorization", &basic("alice", "wonder"))],
        )
        .await;
        assert_eq!(wrong.status, 401);
        assert_eq!(wrong.json()["message"], "invalid credentials");
        // A client cannot claim to be someone by sending the header itself.
        let ok = get(
            gw.addr(),
            "/",
            &[
                ("authorization", &basic("alice", "wonderland")),
                ("x-authenticated-user", "mallory"),
            ],
        )
        .await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            get(
                gw.addr(),
                "/",
                &[("authorization", &basic("bob", "builder"))]
            )
            .await
            .status,
            200
        );
        let seen = up.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].headers["x-authenticated-user"], "alice");
        assert!(
            seen[0].headers.get("authorization").is_none(),
            "credentials hidden"
        );
        assert_eq!(seen[1].headers["x-authenticated-user"], "bob");
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn plain_passwords_are_refused_at_load() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            "[[routes.filters]]\nname = \"basic-auth\"\nconfig = { users = { alice = \"wonderland\" } }\n",
        );
        let err = wasmgate_tests::build_gateway(&toml)
            .await
            .expect_err("must not build");
        assert!(err.contains("not a plain password"), "{err}");
    }
}

pub(crate) mod cors {
    use super::*;

    #[tokio::test]
    pub(crate) async fn runs_in_the_real_host() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            r#"
[[routes.filters]]
name = "cors"
config = { origins = ["https://app.example.com", "https://*.partner.test"], methods = ["GET", "PUT"], headers = ["content-type", "x-token"], expose_headers = ["x-upstream"], credentials = true, max_age = 120 }
"#,
        );
        let gw = start_gateway(&toml).await;
        let pre = wasmgate_tests::send(
            gw.addr(),
            "OPTIONS",
            "/items",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "Content-Type, X-Token"),
            ],
        )
        .await;
        assert_eq!(pre.status, 204);
        assert_eq!(
            pre.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(pre.header("access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            pre.header("access-control-allow-headers"),
            Some("content-type, x-token")
        );
        assert_eq!(pre.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(pre.header("access-control-max-age"), Some("120"));
        assert_eq!(up.count(), 0, "preflights are answered at the gateway");

        for (origin, method, headers) in [
            ("https://evil.example", "PUT", ""),
            ("https://app.example.com", "DELETE", ""),
            ("https://app.example.com", "GET", "x-other"),
        ] {
            let mut h = vec![
                ("origin", origin),
                ("access-control-request-method", method),
            ];
            if !headers.is_empty() {
                h.push(("access-control-request-headers", headers));
            }
            let refused = wasmgate_tests::send(gw.addr(), "OPTIONS", "/items", &h).await;
            assert_eq!(refused.status, 403, "{origin} {method} {headers}");
            assert!(refused.header("access-control-allow-origin").is_none());
        }

        let actual = get(
            gw.addr(),
            "/items",
            &[("origin", "https://shop.partner.test")],
        )
        .await;
        assert_eq!(actual.status, 200);
        assert_eq!(
            actual.header("access-control-allow-origin"),
            Some("https://shop.partner.test")
        );
        assert_eq!(
            actual.header("access-control-expose-headers"),
            Some("x-upstream")
        );
        assert_eq!(actual.header("vary"), Some("Origin"));
        let other = get(gw.addr(), "/items", &[("origin", "https://evil.example")]).await;
        assert_eq!(other.status, 200, "not refused, just not allowed to read");
        assert!(other.header("access-control-allow-origin").is_none());
        assert_eq!(
            other.header("vary"),
            Some("Origin"),
            "caches must key on Origin"
        );
        gw.shutdown().await;
    }
}

pub(crate) mod transform {
    use wasmgate_tests::{Upstream, build_gateway, get, raw, send_body, start_gateway};

    use super::one_route;

    #[tokio::test]
    pub(crate) async fn runs_in_the_real_host() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            r#"
[[routes.filters]]
name = "transform"
[routes.filters.config.request]
headers = { remove = ["x-debug"], set = { "x-gateway" = "wasmgate" }, append = { "x-multi" = "added" }, rename = { "X-User" = "x-customer" } }
path = { strip_prefix = "/api", add_prefix = "/v2" }
query = { remove = ["debug"], rename = { q = "query" }, set = { page = "1", source = "the gateway" }, append = { tag = "a&b" } }
method = "POST"
[routes.filters.config.response]
headers = { remove = ["x-remove-me"], set = { "x-served-by" = "wasmgate" }, rename = { "x-upstream" = "x-origin" } }
"#,
        );
        let gw = start_gateway(&toml).await;
        let reply = get(
            gw.addr(),
            "/api/items?debug=1&q=red%20shoes&keep=a%2Bb+c&page=2&page=3",
            &[
                ("x-debug", "1"),
                ("x-user", "alice"),
                ("x-customer", "spoofed"),
                ("x-gateway", "spoofed"),
                ("x-multi", "original"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);

        let seen = &up.seen()[0];
        assert_eq!(seen.method, "POST");
        assert_eq!(
            seen.path,
            "/v2/items?query=red%20shoes&keep=a%2Bb+c&page=1&source=the%20gateway&tag=a%26b",
            "debug removed, q renamed, page set once in its place, source set and tag \
             appended percent-encoded, keep passed exactly as sent"
        );
        let all = |name: &str| -> Vec<&str> {
            seen.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert!(seen.headers.get("x-debug").is_none());
        assert!(seen.headers.get("x-user").is_none(), "renamed away");
        assert_eq!(
            all("x-customer"),
            ["alice"],
            "the renamed header replaces the spoofed one"
        );
        assert_eq!(all("x-gateway"), ["wasmgate"]);
        assert_eq!(all("x-multi"), ["original", "added"]);

        // Response side.
        assert_eq!(
            reply.header("x-origin"),
            Some("u"),
            "renamed from x-upstream"
        );
        assert!(reply.headers.get("x-upstream").is_none());
        assert!(reply.headers.get("x-remove-me").is_none());
        assert_eq!(reply.header("x-served-by"), Some("wasmgate"));

        // A path outside the prefix keeps its path; the other edits still apply.
        let r = get(gw.addr(), "/apix?debug=1", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(up.count(), 2);
        assert_eq!(
            up.seen()[1].path,
            "/apix?page=1&source=the%20gateway&tag=a%26b"
        );
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn paths_are_rewritten_by_prefix_on_whole_segments_or_by_regex_with_captures() {
        let up = Upstream::start("u").await;
        let toml = format!(
            r#"[server]
listen = "127.0.0.1:0"
{}
[clusters.c]
endpoints = ["{}"]

[[routes]]
name = "strip"
path_prefix = "/api"
cluster = "c"
filters = [{{ name = "transform", config = {{ request.path = {{ strip_prefix = "/api/" }} }} }}]

[[routes]]
name = "regex"
path_prefix = "/users"
cluster = "c"
filters = [{{ name = "transform", config = {{ request.path = {{ regex = '^/users/(\d+)/orders/(?P<order>\d+)$', replace = "/u/$1/o/${{order}}" }} }} }}]
"#,
            crate::filters_toml(),
            up.addr
        );
        let gw = start_gateway(&toml).await;
        for (sent, expected) in [
            ("/api/a/b?x=%2F", "/a/b?x=%2F"),
            ("/api", "/"),
            ("/api?x=1", "/?x=1"),
            ("/api/", "/"),
            ("/users/42/orders/7?sort=asc", "/u/42/o/7?sort=asc"),
            ("/users/42/orders/seven", "/users/42/orders/seven"),
        ] {
            let reply = get(gw.addr(), sent, &[]).await;
            assert_eq!(reply.status, 200, "{sent}: {}", reply.body);
            assert_eq!(up.seen().last().unwrap().path, expected, "{sent}");
        }
        gw.shutdown().await;
    }

    fn json_route(up: &Upstream) -> String {
        one_route(
            up,
            r#"
[[routes.filters]]
name = "transform"
[routes.filters.config.request.json]
remove = ["/password", "/absent"]
rename = { "/user" = "/customer" }
set = { "/meta/source" = "gateway", "/meta/version" = 2, "/tags/-" = "new" }
"#,
        )
    }

    #[tokio::test]
    async fn json_request_bodies_are_edited_and_sent_with_a_matching_content_length() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&json_route(&up)).await;
        let sent = r#"{"user":"ann","password":"hunter2","id":123456789012345678901234567890,"amount":1.10,"tags":["a"]}"#;
        // `id` and `amount` pass exactly as written (no float rounding), and
        // the renamed member keeps its place.
        let expected = r#"{"customer":"ann","id":123456789012345678901234567890,"amount":1.10,"tags":["a","new"],"meta":{"source":"gateway","version":2}}"#;
        let reply = send_body(
            gw.addr(),
            "POST",
            "/echo",
            &[("content-type", "application/json; charset=utf-8")],
            sent,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, expected, "the upstream got the edited body");
        assert_eq!(
            up.seen()[0].headers["content-length"],
            expected.len().to_string().as_str()
        );

        // Chunked on the way in; a `+json` type counts as JSON.
        let chunk1 = r#"{"user":"bo","#;
        let chunk2 = r#""password":"x"}"#;
        let out = raw(
            gw.addr(),
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.api+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk1}\r\n{:x}\r\n{chunk2}\r\n0\r\n\r\n",
                chunk1.len(),
                chunk2.len()
            )
            .as_bytes(),
        )
        .await;
        // A missing member before `-` is created as an array.
        let expected =
            r#"{"customer":"bo","meta":{"source":"gateway","version":2},"tags":["new"]}"#;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with(expected), "{out}");
        let seen = &up.seen()[1].headers;
        assert_eq!(seen["content-length"], expected.len().to_string().as_str());
        assert!(seen.get("transfer-encoding").is_none());
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn non_json_bodies_pass_untouched_and_invalid_json_is_refused_before_the_upstream() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&json_route(&up)).await;
        let text = r#"{"user":"ann","password":"hunter2"}"#;
        for content_type in [
            "text/plain",
            "application/jsonp",
            "application/x-www-form-urlencoded",
        ] {
            let reply = send_body(
                gw.addr(),
                "POST",
                "/echo",
                &[("content-type", content_type)],
                text,
            )
            .await;
            assert_eq!(reply.status, 200, "{content_type}");
            assert_eq!(reply.body, text, "{content_type}: not JSON, not edited");
        }
        // Compressed JSON cannot be read, so it is passed on as it is.
        let reply = send_body(
            gw.addr(),
            "POST",
            "/echo",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
            "\u{1b}not-really-brotli",
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "\u{1b}not-really-brotli");
        // JSON whose shape the edits do not fit (no object at the root) and
        // a request without a body pass as sent.
        let reply = send_body(
            gw.addr(),
            "POST",
            "/echo",
            &[("content-type", "application/json")],
            "[1, 2]",
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "[1, 2]", "not even re-serialized");
        let reply = get(gw.addr(), "/echo", &[("content-type", "application/json")]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "");
        let forwarded = up.count();
        assert_eq!(forwarded, 6);

        let bad = send_body(
            gw.addr(),
            "POST",
            "/echo",
            &[("content-type", "application/json")],
            r#"{"user": "ann", "#,
        )
        .await;
        assert_eq!(bad.status, 400, "{}", bad.body);
        let body = bad.json();
        assert_eq!(body["code"], "invalid_json");
        assert_eq!(body["status"], 400);
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("not valid JSON"), "{message}");
        assert!(message.contains("line 1 column"), "names where: {message}");
        assert_eq!(body["request_id"].as_str(), bad.header("x-request-id"));
        assert_eq!(
            up.count(),
            forwarded,
            "an invalid body never reaches the upstream"
        );
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn json_responses_are_edited_and_invalid_ones_pass_with_a_warning() {
        let up = Upstream::start("u").await;
        let toml = one_route(
            &up,
            r#"
[[routes.filters]]
name = "transform"
[routes.filters.config.response]
status = 203
headers = { set = { "x-transformed" = "yes" } }
json = { remove = ["/upstream"], rename = { "/path" = "/request/path" }, set = { "/via" = ["wasmgate", 1] } }
"#,
        );
        let gw = start_gateway(&toml).await;
        // The upstream answers `{"upstream":"u","path":"/things?x=1"}` as JSON.
        let reply = get(gw.addr(), "/things?x=1", &[]).await;
        assert_eq!(reply.status, 203);
        let expected = r#"{"request":{"path":"/things?x=1"},"via":["wasmgate",1]}"#;
        assert_eq!(reply.body, expected);
        assert_eq!(
            reply.header("content-length"),
            Some(expected.len().to_string().as_str())
        );
        assert_eq!(reply.header("x-transformed"), Some("yes"));

        // Labelled JSON but broken: passed on unchanged, with a warning.
        let logs = wasmgate_tests::capture_logs();
        let broken = r#"{"upstream": "#;
        let reply = send_body(
            gw.addr(),
            "POST",
            "/echo",
            &[("content-type", "application/json")],
            broken,
        )
        .await;
        assert_eq!(reply.status, 203, "the other edits still apply");
        assert_eq!(reply.header("x-transformed"), Some("yes"));
        assert_eq!(reply.body, broken);
        let id = reply
            .header("x-request-id")
            .expect("a request id")
            .to_owned();
        let lines = logs.lines_with(&["WARN", "not valid JSON", &id]);
        assert_eq!(lines.len(), 1, "one warning naming the request");
        assert!(lines[0].contains("transform"), "{}", lines[0]);

        // Not JSON: untouched.
        let reply = send_body(
            gw.addr(),
            "POST",
            "/echo",
            &[("content-type", "text/plain")],
            r#"{"upstream":"x"}"#,
        )
        .await;
        assert_eq!(reply.body, r#"{"upstream":"x"}"#);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn only_sides_with_json_edits_buffer_bodies() {
        let up = Upstream::start("u").await;
        let toml = format!(
            r#"[server]
listen = "127.0.0.1:0"
[limits]
max_buffered_body = "1KiB"
{}
[clusters.c]
endpoints = ["{}"]

[[routes]]
name = "streams"
path_prefix = "/echo/streams"
cluster = "c"
[[routes.filters]]
name = "transform"
config.request = {{ headers = {{ set = {{ "x-a" = "1" }} }}, query = {{ set = {{ b = "2" }} }} }}
config.response = {{ headers = {{ set = {{ "x-c" = "3" }} }}, status = 201 }}

[[routes]]
name = "buffers"
path_prefix = "/echo/buffers"
cluster = "c"
[[routes.filters]]
name = "transform"
config.request.json = {{ remove = ["/x"] }}
"#,
            crate::filters_toml(),
            up.addr
        );
        let gw = start_gateway(&toml).await;
        let big = "a".repeat(64 * 1024);
        let request = |path: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
                big.len()
            )
        };
        let out = raw(gw.addr(), request("/echo/streams").as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 201"),
            "{}",
            &out[..out.len().min(300)]
        );
        assert!(out.contains("x-c: 3"), "the response phase ran");
        assert!(out.ends_with(&big), "the whole body went through");
        assert_eq!(up.seen()[0].path, "/echo/streams?b=2");

        // The same body on a route with JSON edits is past the buffer limit.
        let out = raw(gw.addr(), request("/echo/buffers").as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 413"),
            "{}",
            &out[..out.len().min(300)]
        );
        assert_eq!(up.count(), 1);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn bad_configs_are_refused_at_load_with_the_filters_message() {
        let up = Upstream::start("u").await;
        for (config, message) in [
            ("{ request = { header = {} } }", "unknown field `header`"),
            ("{}", "nothing to do"),
            (
                r#"{ request.path = { regex = '^/u/(\d+', replace = "/x/$1" } }"#,
                r#"`request.path.regex`: "^/u/(\\d+" is not a valid regular expression"#,
            ),
            (
                r#"{ request.path = { regex = '^/u/(\d+)$', replace = "/x/$2" } }"#,
                r#"refers to group "2""#,
            ),
            (
                r#"{ request.path = { strip_prefix = "/a", regex = "^/a", replace = "/" } }"#,
                "not both",
            ),
            (
                r#"{ request.json.remove = ["password"] }"#,
                r#"`request.json.remove`: "password" is not a JSON Pointer"#,
            ),
            (
                r#"{ response.json.set = { "/a~2" = 1 } }"#,
                "'~' must be followed by 0 or 1",
            ),
            (
                r#"{ request.json.rename = { "/a" = "/a/b" } }"#,
                "cannot move into itself",
            ),
            (
                r#"{ request.json.rename = { "/a" = "/b", "/b" = "/c" } }"#,
                "renames into a pointer that is itself renamed",
            ),
            (
                r#"{ request.path = { regex = "^/s/(.*)$", replace = "/search?q=$1" } }"#,
                "contains '?', which a path cannot hold",
            ),
            (
                "{ response.status = 700 }",
                "`response.status`: 700 is not a final HTTP status",
            ),
            (
                r#"{ request.headers.remove = ["content-length"] }"#,
                "the content-length header is managed by the gateway",
            ),
            (
                r#"{ request.method = "GET POST" }"#,
                "is not an HTTP method",
            ),
        ] {
            let toml = one_route(
                &up,
                &format!("[[routes.filters]]\nname = \"transform\"\nconfig = {config}\n"),
            );
            let err = build_gateway(&toml)
                .await
                .err()
                .unwrap_or_else(|| panic!("{config} must not load"));
            assert!(
                err.contains("routes[0].filters[0].config"),
                "{config}: {err}"
            );
            assert!(err.contains(message), "{config}: {err}");
        }
    }
}

pub(crate) mod jwt {
    //! Keys are made once per test process (nothing is committed); good
    //! tokens are signed with `jsonwebtoken`, forged ones by hand.

    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::{SystemTime, UNIX_EPOCH};

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::Generate;
    use rsa::traits::PublicKeyParts;
    use serde_json::{Value, json};
    use wasmgate_tests::Reply;

    use super::*;

    const ISSUER: &str = "https://idp.test";

    struct Keys {
        rsa_private_pem: String,
        rsa_public_pem: String,
        ec_private_pem: String,
        ec_public_pem: String,
        hs_secret: String,
        /// The `[filters.jwt.vars]` table pointing at the files written.
        vars: String,
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let rsa = rsa::PrivateKey::generate();
            let rsa_public = rsa.to_public_key();
            let ec = p256::ecdsa::SigningKey::generate();
            let point = ec.verifying_key().to_sec1_point(false);
            let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
            // 32 random bytes, as 64 hex characters.
            let hs_secret = hex(&p256::ecdsa::SigningKey::generate().to_bytes());
            let rsa_jwk = |kid: &str, usage: &str| {
                json!({
                    "kty": "RSA", "kid": kid, "use": usage, "alg": "RS256",
                    "n": B64.encode(rsa_public.n_bytes()), "e": B64.encode(rsa_public.e_bytes()),
                })
            };
            let jwks = json!({ "keys": [
                rsa_jwk("rsa-jwks", "sig"),
                // Skipped: an encryption key and a key type the filter does not use.
                rsa_jwk("enc-key", "enc"),
                { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": B64.encode([7u8; 32]) },
                {
                    "kty": "EC", "crv": "P-256", "kid": "ec-jwks",
                    "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap()),
                },
            ]});
            let rsa_public_pem = rsa_public.to_public_key_pem(LineEnding::LF).unwrap();
            let dir = std::env::temp_dir().join(format!("wasmgate-e2e-jwt-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let write = |name: &str, text: &str| -> PathBuf {
                let path = dir.join(name);
                std::fs::write(&path, text).unwrap();
                path
            };
            let vars = format!(
                "\n[filters.jwt.vars]\nhs = {{ file = {:?} }}\njwks = {{ file = {:?} }}\nrsa_pem = {{ file = {:?} }}\nshort = \"only-31-bytes-of-secret-0123456\"\n",
                // A trailing newline, as secrets files have: not part of the secret.
                write("hs.secret", &format!("{hs_secret}\n")),
                write("jwks.json", &jwks.to_string()),
                write("rsa.pem", &rsa_public_pem),
            );
            Keys {
                rsa_private_pem: rsa.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                rsa_public_pem,
                ec_private_pem: ec.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                ec_public_pem: ec
                    .verifying_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap(),
                hs_secret,
                vars,
            }
        })
    }

    /// A route whose `jwt` filter has `config` (a TOML inline table's body).
    fn route(up: &Upstream, config: &str) -> String {
        one_route(
            up,
            &format!(
                "[[routes.filters]]\nname = \"jwt\"\nconfig = {{ {config} }}\n{}",
                keys().vars
            ),
        )
    }

    /// Every key source: HS256 from a file, RS256 from a PEM file and the
    /// JWKS, ES256 inline and from the JWKS.
    fn all_keys() -> String {
        format!(
            r#"keys = [{{ alg = "HS256", secret_var = "hs" }}, {{ kid = "rsa-pem", alg = "RS256", pem_var = "rsa_pem" }}, {{ alg = "ES256", pem = {:?} }}], jwks_var = "jwks", issuer = "{ISSUER}", audiences = ["orders"]"#,
            keys().ec_public_pem
        )
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Good claims for the route, with `changes` applied (null removes).
    fn claims(changes: Value) -> Value {
        let now = now();
        let mut c =
            json!({ "iss": ISSUER, "aud": "orders", "sub": "alice", "iat": now, "exp": now + 300 });
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(Into::into);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        let key = EncodingKey::from_secret(keys().hs_secret.as_bytes()).unwrap();
        sign(Algorithm::HS256, None, &key, claims)
    }

    fn rs256(kid: Option<&str>, claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(keys().rsa_private_pem.as_bytes()).unwrap();
        sign(Algorithm::RS256, kid, &key, claims)
    }

    fn es256(kid: Option<&str>, claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(keys().ec_private_pem.as_bytes()).unwrap();
        sign(Algorithm::ES256, kid, &key, claims)
    }

    async fn with_token(gw: &wasmgate_tests::RunningGateway, token: &str) -> Reply {
        get(
            gw.addr(),
            "/",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    /// A 401 `invalid_token` for `reason`, in the body and the challenge.
    fn assert_invalid(reply: &Reply, reason: &str) {
        assert_eq!(reply.status, 401, "{reason}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["code"], "unauthorized");
        assert_eq!(body["message"], reason);
        assert_eq!(
            reply.header("www-authenticate"),
            Some(
                format!(
                    "Bearer realm=\"wasmgate\", error=\"invalid_token\", error_description=\"{reason}\""
                )
                .as_str()
            )
        );
    }

    #[tokio::test]
    pub(crate) async fn runs_in_the_real_host() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&route(
            &up,
            &format!(
                "{}, claims_to_headers = {{ sub = \"x-jwt-sub\", email = \"x-user-email\", name = \"x-user-name\", groups = \"x-user-groups\" }}",
                all_keys()
            ),
        ))
        .await;

        // No token, or another scheme: a bare challenge (RFC 6750 3.1).
        for headers in [
            vec![],
            vec![("authorization", "Basic YWxpY2U6d29uZGVybGFuZA==")],
        ] {
            let missing = get(gw.addr(), "/", &headers).await;
            assert_eq!(missing.status, 401, "{}", missing.body);
            assert_eq!(
                missing.header("www-authenticate"),
                Some("Bearer realm=\"wasmgate\"")
            );
            assert_eq!(missing.json()["code"], "unauthorized");
            assert_eq!(missing.json()["message"], "missing bearer token");
        }
        assert_eq!(
            up.count(),
            0,
            "a refused request never reaches the upstream"
        );

        // A good token; the client also tries to name itself.
        let token = hs256(&claims(json!({
            "email": "alice@example.com",
            "name": "Zoë",
            "groups": ["ops", "dev"],
        })));
        let ok = get(
            gw.addr(),
            "/",
            &[
                ("authorization", &format!("bearer {token}")),
                ("x-jwt-sub", "mallory"),
                ("x_jwt-sub", "mallory"),
                ("x-jwt_sub", "mallory"),
            ],
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let seen = &up.seen()[0];
        assert_eq!(
            seen.headers.get_all("x-jwt-sub").iter().collect::<Vec<_>>(),
            ["alice"],
            "the claim replaces what the client sent"
        );
        assert!(
            seen.headers.get("x_jwt-sub").is_none() && seen.headers.get("x-jwt_sub").is_none(),
            "spellings a CGI-style server reads as x-jwt-sub are removed too"
        );
        assert_eq!(seen.headers["x-user-email"], "alice@example.com");
        assert_eq!(seen.headers["x-user-name"].as_bytes(), "Zoë".as_bytes());
        assert_eq!(seen.headers["x-user-groups"], "ops,dev");
        assert_eq!(
            seen.headers["authorization"],
            format!("bearer {token}"),
            "forwarded unless hide_credentials"
        );

        // A claim the token lacks: the client's header is removed, not kept.
        let ok = get(
            gw.addr(),
            "/",
            &[
                (
                    "authorization",
                    &format!("Bearer {}", hs256(&claims(json!({})))),
                ),
                ("x-user-email", "admin@example.com"),
            ],
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert!(up.seen()[1].headers.get("x-user-email").is_none());
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn every_algorithm_verifies_from_every_key_source() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&route(
            &up,
            &format!(
                "{}, claims_to_headers = {{ sub = \"x-jwt-sub\" }}",
                all_keys()
            ),
        ))
        .await;
        let good = |sub: &str| claims(json!({ "sub": sub }));
        for (source, token) in [
            ("HS256, secret from a file", hs256(&good("hs"))),
            (
                "RS256, PEM from a file, by kid",
                rs256(Some("rsa-pem"), &good("rs-pem")),
            ),
            (
                "RS256, from the JWKS, by kid",
                rs256(Some("rsa-jwks"), &good("rs-jwks")),
            ),
            ("RS256 without kid", rs256(None, &good("rs"))),
            ("ES256, inline PEM", es256(None, &good("es"))),
            (
                "ES256, from the JWKS, by kid",
                es256(Some("ec-jwks"), &good("es-jwks")),
            ),
        ] {
            let reply = with_token(&gw, &token).await;
            assert_eq!(reply.status, 200, "{source}: {}", reply.body);
        }
        let subs: Vec<_> = up
            .seen()
            .iter()
            .map(|s| s.headers["x-jwt-sub"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(subs, ["hs", "rs-pem", "rs-jwks", "rs", "es", "es-jwks"]);

        // A kid that names no key, or a JWKS key that is not for signing.
        for kid in ["nope", "enc-key"] {
            assert_invalid(
                &with_token(&gw, &rs256(Some(kid), &good("x"))).await,
                "unknown key id",
            );
        }
        assert_eq!(up.count(), 6);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn forged_and_tampered_tokens_are_refused() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&route(&up, &all_keys())).await;

        let other_secret = EncodingKey::from_secret(&[b'x'; 64]).unwrap();
        let wrong_secret = sign(Algorithm::HS256, None, &other_secret, &claims(json!({})));
        assert_invalid(&with_token(&gw, &wrong_secret).await, "invalid signature");

        let other_ec = p256::ecdsa::SigningKey::generate();
        let other_ec =
            EncodingKey::from_ec_pem(other_ec.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes())
                .unwrap();
        let wrong_key = sign(Algorithm::ES256, None, &other_ec, &claims(json!({})));
        assert_invalid(&with_token(&gw, &wrong_key).await, "invalid signature");

        // A genuine token whose payload is swapped for another.
        let genuine = rs256(Some("rsa-jwks"), &claims(json!({})));
        let parts: Vec<&str> = genuine.split('.').collect();
        let forged_payload = B64.encode(claims(json!({ "sub": "admin" })).to_string());
        let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_invalid(&with_token(&gw, &tampered).await, "invalid signature");
        let (_, sig) = genuine.rsplit_once('.').unwrap();
        let truncated = format!("{}.{}.{}", parts[0], parts[1], &sig[..sig.len() - 4]);
        assert_invalid(&with_token(&gw, &truncated).await, "invalid signature");

        // Unsigned.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(claims(json!({})).to_string())
        );
        assert_invalid(
            &with_token(&gw, &none).await,
            "algorithm none is not accepted",
        );

        for garbage in ["not-a-jwt", "a.b.c", &format!("{genuine}.extra")] {
            assert_invalid(&with_token(&gw, garbage).await, "malformed token");
        }
        assert_eq!(up.count(), 0, "nothing forged reaches the upstream");
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn an_rsa_public_key_is_never_used_as_an_hmac_secret() {
        // The classic confusion: the attacker signs HS256 with the public
        // key's PEM, hoping the verifier feeds the same bytes to HMAC.
        let up = Upstream::start("u").await;
        let public_pem_as_secret =
            EncodingKey::from_secret(keys().rsa_public_pem.as_bytes()).unwrap();
        let forged = sign(
            Algorithm::HS256,
            Some("rsa-pem"),
            &public_pem_as_secret,
            &claims(json!({})),
        );

        let rsa_only = start_gateway(&route(
            &up,
            r#"keys = [{ kid = "rsa-pem", alg = "RS256", pem_var = "rsa_pem" }]"#,
        ))
        .await;
        assert_invalid(
            &with_token(&rsa_only, &forged).await,
            "algorithm HS256 is not accepted",
        );
        assert_eq!(
            with_token(&rsa_only, &rs256(Some("rsa-pem"), &claims(json!({}))))
                .await
                .status,
            200
        );
        rsa_only.shutdown().await;

        // With an HMAC key configured too, HS256 is accepted, but only
        // checked against that key's secret.
        let both = start_gateway(&route(&up, &all_keys())).await;
        assert_invalid(&with_token(&both, &forged).await, "invalid signature");
        let no_kid = sign(
            Algorithm::HS256,
            None,
            &public_pem_as_secret,
            &claims(json!({})),
        );
        assert_invalid(&with_token(&both, &no_kid).await, "invalid signature");
        both.shutdown().await;
        assert_eq!(up.count(), 1, "only the genuine RS256 token passed");
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_the_clock_skew() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&route(&up, &format!("{}, max_lifetime = 3600", all_keys()))).await;
        let now = now();
        // The default skew is 60 s; ±30 s is inside it, ±120 s outside.
        for (changes, refusal) in [
            (
                json!({ "exp": now - 120, "iat": now - 400 }),
                Some("token expired"),
            ),
            (json!({ "exp": now - 30, "iat": now - 400 }), None),
            (json!({ "nbf": now + 120 }), Some("token not yet valid")),
            (json!({ "nbf": now + 30 }), None),
            (json!({ "exp": null }), Some("token has no exp claim")),
            (
                json!({ "exp": "tomorrow" }),
                Some("exp claim is not a number"),
            ),
            (
                json!({ "iat": null }),
                Some("token needs iat and exp claims"),
            ),
            (
                json!({ "exp": now + 7200 }),
                Some("token lifetime exceeds max_lifetime"),
            ),
            (
                json!({ "iat": now + 600, "exp": now + 900 }),
                Some("token issued in the future"),
            ),
        ] {
            let reply = with_token(&gw, &es256(None, &claims(changes.clone()))).await;
            match refusal {
                Some(reason) => assert_invalid(&reply, reason),
                None => assert_eq!(reply.status, 200, "{changes}: {}", reply.body),
            }
        }
        assert_eq!(up.count(), 2);
        gw.shutdown().await;

        let gw = start_gateway(&route(
            &up,
            &format!("{}, require_exp = false, clock_skew = 0", all_keys()),
        ))
        .await;
        assert_eq!(
            with_token(&gw, &hs256(&claims(json!({ "exp": null }))))
                .await
                .status,
            200,
            "exp is optional when not required"
        );
        assert_invalid(
            &with_token(&gw, &hs256(&claims(json!({ "exp": now - 5 })))).await,
            "token expired",
        );
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn issuer_and_audience_must_match() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&route(
            &up,
            &format!(
                r#"keys = [{{ alg = "HS256", secret_var = "hs" }}], issuer = ["{ISSUER}", "https://other.test"], audiences = ["orders", "billing"]"#
            ),
        ))
        .await;
        for (changes, refusal) in [
            (
                json!({ "iss": "https://evil.test" }),
                Some("issuer not accepted"),
            ),
            (json!({ "iss": null }), Some("token has no iss claim")),
            (json!({ "iss": "https://other.test" }), None),
            (json!({ "aud": "shipping" }), Some("audience not accepted")),
            (
                json!({ "aud": ["shipping", "returns"] }),
                Some("audience not accepted"),
            ),
            (json!({ "aud": null }), Some("token has no aud claim")),
            (json!({ "aud": ["shipping", "billing"] }), None),
        ] {
            let reply = with_token(&gw, &hs256(&claims(changes.clone()))).await;
            match refusal {
                Some(reason) => assert_invalid(&reply, reason),
                None => assert_eq!(reply.status, 200, "{changes}: {}", reply.body),
            }
        }
        assert_eq!(up.count(), 2);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_missing_scope_or_claim_is_forbidden() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&route(
            &up,
            r#"keys = [{ alg = "HS256", secret_var = "hs" }], scopes = ["orders:read", "orders:write"], claims = { role = ["admin", "ops"], email_verified = true }"#,
        ))
        .await;
        let forbidden = |reply: &Reply, reason: &str| {
            assert_eq!(reply.status, 403, "{reason}: {}", reply.body);
            assert_eq!(reply.json()["code"], "forbidden");
            assert_eq!(reply.json()["message"], reason);
            assert_eq!(
                reply.header("www-authenticate").unwrap(),
                format!(
                    "Bearer realm=\"wasmgate\", error=\"insufficient_scope\", error_description=\"{reason}\", scope=\"orders:read orders:write\""
                )
            );
        };
        let rights = |scope: Value, role: Value| {
            hs256(&claims(
                json!({ "scope": scope, "role": role, "email_verified": true }),
            ))
        };
        forbidden(
            &with_token(&gw, &rights(json!("orders:read"), json!("admin"))).await,
            "missing scope: orders:write",
        );
        forbidden(
            &with_token(&gw, &rights(json!(null), json!("admin"))).await,
            "missing scope: orders:read orders:write",
        );
        let scp = hs256(&claims(
            json!({ "scp": ["orders:read", "orders:write"], "role": "user", "email_verified": true }),
        ));
        forbidden(
            &with_token(&gw, &scp).await,
            "claim `role` has no accepted value",
        );
        let no_role = hs256(&claims(
            json!({ "scope": "orders:write orders:read", "email_verified": true }),
        ));
        forbidden(&with_token(&gw, &no_role).await, "missing claim `role`");
        let unverified = hs256(&claims(
            json!({ "scope": "orders:write orders:read", "role": "ops", "email_verified": false }),
        ));
        forbidden(
            &with_token(&gw, &unverified).await,
            "claim `email_verified` has no accepted value",
        );
        // Authentication comes first: a bad token is 401, not 403.
        let expired = hs256(&claims(json!({ "exp": now() - 3600, "iat": now() - 7200 })));
        assert_invalid(&with_token(&gw, &expired).await, "token expired");
        assert_eq!(up.count(), 0);

        let ok = with_token(
            &gw,
            &rights(json!("orders:write orders:read"), json!(["user", "ops"])),
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(up.count(), 1);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_token_in_a_cookie_is_accepted_and_hidden_when_asked() {
        let up = Upstream::start("u").await;
        let gw = start_gateway(&route(
            &up,
            r#"keys = [{ alg = "HS256", secret_var = "hs" }], cookie = "session", hide_credentials = true, realm = "shop""#,
        ))
        .await;
        let token = hs256(&claims(json!({})));
        let cookies = format!("theme=dark; session={token}; lang=en");
        assert_eq!(
            get(gw.addr(), "/", &[("cookie", &cookies)]).await.status,
            200
        );
        assert_eq!(
            get(gw.addr(), "/", &[("cookie", &format!("session={token}"))])
                .await
                .status,
            200
        );
        assert_eq!(with_token(&gw, &token).await.status, 200);
        let seen = up.seen();
        assert_eq!(
            seen[0].headers["cookie"], "theme=dark; lang=en",
            "only the token's cookie is removed"
        );
        assert!(seen[1].headers.get("cookie").is_none());
        assert!(
            seen[2].headers.get("authorization").is_none(),
            "the header is hidden"
        );

        // Two tokens: which one counts would be a guess (RFC 6750 2).
        let bearer = format!("Bearer {token}");
        let two = get(
            gw.addr(),
            "/",
            &[("authorization", &bearer), ("authorization", &bearer)],
        )
        .await;
        assert_eq!(two.status, 400, "{}", two.body);
        assert_eq!(
            two.header("www-authenticate"),
            Some(
                "Bearer realm=\"shop\", error=\"invalid_request\", error_description=\"more than one bearer token\""
            )
        );
        let missing = get(gw.addr(), "/", &[("cookie", "theme=dark")]).await;
        assert_eq!(missing.status, 401);
        assert_eq!(
            missing.header("www-authenticate"),
            Some("Bearer realm=\"shop\"")
        );
        assert_eq!(up.count(), 3);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_bad_config_is_refused_at_load_with_the_filters_message() {
        let up = Upstream::start("u").await;
        let bad_pem = "-----BEGIN PUBLIC KEY-----\\nbm90IGEga2V5\\n-----END PUBLIC KEY-----";
        let private_pem = format!("{:?}", keys().rsa_private_pem);
        for (config, message) in [
            (
                format!(r#"keys = [{{ kid = "k1", alg = "RS256", pem = "{bad_pem}" }}]"#),
                r#"keys[0] (kid "k1"): not an RSA public key PEM"#,
            ),
            (
                r#"keys = [{ alg = "HS512", secret_var = "hs" }]"#.into(),
                r#"keys[0]: alg "HS512" is not supported"#,
            ),
            (
                r#"keys = [{ alg = "none", secret_var = "hs" }]"#.into(),
                r#"keys[0]: alg "none" is not supported"#,
            ),
            (
                r#"keys = [{ alg = "HS256", secret = "hunter2" }]"#.into(),
                "give `secret_var`, the name of a `vars` value holding the secret",
            ),
            (
                r#"keys = [{ alg = "HS256", secret_var = "short" }]"#.into(),
                "keys[0]: an HS256 secret must be at least 32 bytes",
            ),
            (
                r#"keys = [{ alg = "HS256", secret_var = "absent" }]"#.into(),
                r#"keys[0]: the gateway grants no value "absent""#,
            ),
            (
                r#"keys = [{ kid = "ec", alg = "ES256", pem_var = "rsa_pem" }]"#.into(),
                r#"keys[0] (kid "ec"): not a P-256 public key PEM"#,
            ),
            (
                format!(r#"keys = [{{ alg = "RS256", pem = {private_pem} }}]"#),
                "keys[0]: this is a private key; give the public key",
            ),
            (
                r#"jwks_var = "hs""#.into(),
                r#"`jwks_var` "hs": not a JSON document"#,
            ),
            (String::new(), "give at least one key: `keys` or `jwks_var`"),
            (
                r#"keys = [{ alg = "HS256", secret_var = "hs" }], claims_to_headers = { sub = "Content-Length" }"#.into(),
                "`claims_to_headers`: the content-length header is managed by the gateway",
            ),
        ] {
            let err = wasmgate_tests::build_gateway(&route(&up, &config))
                .await
                .err()
                .unwrap_or_else(|| panic!("{config} must not load"));
            assert!(err.contains("routes[0].filters[0].config"), "{err}");
            assert!(err.contains(message), "{config}:\n{err}");
            assert!(
                !err.contains(&keys().hs_secret) && !err.contains("hunter2"),
                "no secret in the message: {err}"
            );
        }
    }
}
