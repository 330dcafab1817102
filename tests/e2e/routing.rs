//! Routing by host, path and method with the documented precedence; round
//! robin; 404 and 502.

use wasmgate_tests::{Upstream, dead_addr, get, send, start_gateway};

use crate::filters_toml;

#[tokio::test]
async fn routes_by_host_path_and_method_with_precedence() {
    let names = ["exact", "long", "short", "wild", "host", "post", "any"];
    let mut ups = Vec::new();
    for n in names {
        ups.push(Upstream::start(n).await);
    }
    let mut toml = format!("[server]\nlisten = \"127.0.0.1:0\"\n{}", filters_toml());
    for u in &ups {
        toml += &format!("[clusters.{}]\nendpoints = [\"{}\"]\n", u.name, u.addr);
    }
    // Written in an order that differs from precedence, to prove sorting.
    toml += r#"
[[routes]]
name = "any"
path_prefix = "/"
cluster = "any"

[[routes]]
name = "short"
path_prefix = "/api"
cluster = "short"

[[routes]]
name = "long"
path_prefix = "/api/search"
cluster = "long"

[[routes]]
name = "exact"
path = "/api/search/health"
cluster = "exact"

[[routes]]
name = "long-later"
path_prefix = "/api/search"
cluster = "any"

[[routes]]
name = "wild"
hosts = ["*.example.com"]
path_prefix = "/"
cluster = "wild"

[[routes]]
name = "host"
hosts = ["api.example.com"]
path_prefix = "/"
cluster = "host"

[[routes]]
name = "post"
hosts = ["api.example.com"]
path_prefix = "/"
methods = ["POST"]
cluster = "post"
"#;
    let gw = start_gateway(&toml).await;
    let a = gw.addr();
    let which = |r: wasmgate_tests::Reply| r.header("x-upstream").map(str::to_owned);

    assert_eq!(
        which(get(a, "/api/search/health", &[]).await).as_deref(),
        Some("exact")
    );
    assert_eq!(
        which(get(a, "/api/search/x", &[]).await).as_deref(),
        Some("long"),
        "longest prefix, first in order"
    );
    assert_eq!(
        which(get(a, "/api/search", &[]).await).as_deref(),
        Some("long")
    );
    assert_eq!(
        which(get(a, "/api/searchx", &[]).await).as_deref(),
        Some("short"),
        "prefixes match whole segments"
    );
    assert_eq!(which(get(a, "/api", &[]).await).as_deref(), Some("short"));
    assert_eq!(which(get(a, "/other", &[]).await).as_deref(), Some("any"));
    // Host beats path; exact host beats wildcard; methods narrow.
    assert_eq!(
        which(get(a, "/api/search/health", &[("host", "api.example.com")]).await).as_deref(),
        Some("host")
    );
    assert_eq!(
        which(send(a, "POST", "/x", &[("host", "API.example.com:8080")]).await).as_deref(),
        Some("post")
    );
    assert_eq!(
        which(get(a, "/x", &[("host", "shop.example.com")]).await).as_deref(),
        Some("wild")
    );
    assert_eq!(
        which(get(a, "/x", &[("host", "example.com")]).await).as_deref(),
        Some("any")
    );
    // The upstream gets the path as sent.
    let seen = ups[1].seen();
    assert!(seen.iter().any(|s| s.path == "/api/search/x"), "{seen:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_route_is_404_in_the_standard_error_format() {
    let up = Upstream::start("only").await;
    let toml = crate::one_route(&up, "", "path_prefix = \"/api\"\nmethods = [\"GET\"]\n");
    let gw = start_gateway(&toml).await;
    for reply in [
        get(gw.addr(), "/nothing-here", &[]).await,
        send(gw.addr(), "DELETE", "/api", &[]).await,
    ] {
        assert_eq!(reply.status, 404);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.json();
        assert_eq!(body["status"], 404);
        assert_eq!(body["code"], "route_not_found");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(body["request_id"].as_str().map(str::len), Some(32));
    }
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn round_robin_spreads_across_two_endpoints() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[clusters.c]\nendpoints = [\"{}\", \"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        filters_toml(),
        a.addr,
        b.addr
    );
    let gw = start_gateway(&toml).await;
    let mut order = Vec::new();
    for _ in 0..10 {
        order.push(
            get(gw.addr(), "/", &[])
                .await
                .header("x-upstream")
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!((a.count(), b.count()), (5, 5), "order: {order:?}");
    assert!(
        order.windows(2).all(|w| w[0] != w[1]),
        "strict alternation: {order:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_names_no_address() {
    let dead = dead_addr().await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[clusters.gone]\nendpoints = [\"{dead}\"]\n[[routes]]\nname = \"r\"\ncluster = \"gone\"\n",
        filters_toml()
    );
    let gw = start_gateway(&toml).await;
    let reply = get(gw.addr(), "/", &[]).await;
    assert_eq!(reply.status, 502);
    let body = reply.json();
    assert_eq!(body["code"], "upstream_unavailable");
    assert!(
        !reply.body.contains(&dead.port().to_string()),
        "the error must not reveal the backend: {}",
        reply.body
    );
    // The gateway keeps serving.
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 502);
    gw.shutdown().await;
}

/// Malformed and smuggling-style requests over a raw socket: each gets a 400
/// and the connection is closed; the upstream, which counts what it
/// receives, sees none of them.
#[tokio::test]
async fn malformed_and_smuggling_requests_get_400_and_never_reach_the_upstream() {
    let up = Upstream::start("u").await;
    let toml = crate::one_route(&up, "", "");
    let gw = start_gateway(&toml).await;
    let cases: &[(&str, &[u8])] = &[
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        ("unknown HTTP version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
        ),
        (
            "conflicting Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
        (
            "Content-Length list",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 3\r\n\r\nab",
        ),
        (
            "negative Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        ),
        (
            "non-numeric Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e2\r\n\r\n",
        ),
        (
            "plus-signed Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nab",
        ),
        (
            "TE not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "unknown TE only",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "obs-fold in Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunk size not hex",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk size overflowing 64 bits",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk size with a bare LF",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        ),
        (
            "obs-fold in Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 2\r\n\r\nab",
        ),
        (
            "obs-fold in another header",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "bare CR in a header value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        ),
        ("bare CR line ending", b"GET / HTTP/1.1\rHost: x\r\n\r\n"),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        ),
        ("NUL in the path", b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("space in the path", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "missing Host on HTTP/1.1",
            b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n",
        ),
        (
            "duplicate Host",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "control character in header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nX\x01A: a\r\n\r\n",
        ),
        (
            "header name with a space",
            b"GET / HTTP/1.1\r\nHost: x\r\nX A: a\r\n\r\n",
        ),
        (
            "encoded slash in the path",
            b"GET /a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "backslash in the path",
            b"GET /a\\b HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "dot-parameter path",
            b"GET /a/..;/b HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (name, case) in cases {
        let out = wasmgate_tests::raw(gw.addr(), case).await;
        if !out.starts_with("HTTP/1.1 400") {
            failures.push(format!(
                "{name}: got {:?}",
                out.lines()
                    .next()
                    .unwrap_or("(connection closed, no answer)")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "not rejected with 400:\n{}",
        failures.join("\n")
    );
    assert!(cases.len() >= 25);
    assert_eq!(up.count(), 0, "nothing malformed may be forwarded");
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200, "still serving");
    gw.shutdown().await;
}

/// Ambiguous framing that the HTTP/1.1 parser resolves itself, as RFC 9112
/// allows: equal duplicate `Content-Length` headers are one length;
/// `Transfer-Encoding: chunked` with `Content-Length` is chunked, the length
/// dropped, and the connection closed after the response (RFC 9112 §6.1).
/// The request is served, and the upstream gets one re-serialised,
/// unambiguous request with exactly one framing header, never both.
#[tokio::test]
async fn ambiguous_framing_is_never_forwarded_ambiguously() {
    let up = Upstream::start("u").await;
    let toml = crate::one_route(&up, "", "");
    let gw = start_gateway(&toml).await;
    // (request, the one framing header forwarded)
    let cases: &[(&[u8], (&str, &str))] = &[
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
            ("content-length", "2"),
        ),
        // No `Connection: close`: the gateway closes the connection itself.
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ("transfer-encoding", "chunked"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            ("transfer-encoding", "chunked"),
        ),
    ];
    for (i, (case, framing)) in cases.iter().enumerate() {
        let out = wasmgate_tests::raw(gw.addr(), case).await;
        assert!(out.starts_with("HTTP/1.1 200"), "case {i}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "case {i}: the connection is closed after the response: {out}"
        );
        let seen = up.seen();
        assert_eq!(seen.len(), i + 1, "case {i}: forwarded once");
        let headers = &seen[i].headers;
        let te = headers.get_all("transfer-encoding").iter().count();
        let cl = headers.get_all("content-length").iter().count();
        assert_eq!(
            te + cl,
            1,
            "case {i}: ambiguous framing forwarded: {headers:?}"
        );
        assert_eq!(
            headers.get(framing.0).map(|v| v.to_str().unwrap()),
            Some(framing.1),
            "case {i}: {headers:?}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn one_canonical_path_for_routing_and_forwarding() {
    let (api, other) = (Upstream::start("api").await, Upstream::start("other").await);
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[clusters.api]\nendpoints = [\"{}\"]\n[clusters.other]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"api\"\npath_prefix = \"/api/search\"\ncluster = \"api\"\n[[routes]]\nname = \"other\"\ncluster = \"other\"\n",
        filters_toml(),
        api.addr,
        other.addr
    );
    let gw = start_gateway(&toml).await;
    let cases = [
        ("/api//search/./x?q=a%2Fb", "api", "/api/search/x?q=a%2Fb"),
        ("/api/x/../search", "api", "/api/search"),
        ("/%61pi/search", "api", "/api/search"),
        ("/api/search/%2e%2e/%2E%2E/admin", "other", "/admin"),
        ("/api/searchx/../search/y", "api", "/api/search/y"),
    ];
    for (sent, upstream, forwarded) in cases {
        let reply = get(gw.addr(), sent, &[]).await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.body);
        assert_eq!(reply.header("x-upstream"), Some(upstream), "{sent}");
        let seen = if upstream == "api" {
            api.seen()
        } else {
            other.seen()
        };
        assert_eq!(seen.last().unwrap().path, forwarded, "{sent}");
    }
    let before = api.count() + other.count();
    for rejected in [
        "/api/search%2F..%2Fadmin",
        "/api/%5Cadmin",
        "/api/..;/admin",
        "/api/%zz",
        "/api/%00",
    ] {
        let reply = get(gw.addr(), rejected, &[]).await;
        assert_eq!(reply.status, 400, "{rejected}");
        assert_eq!(reply.json()["code"], "bad_request", "{rejected}");
    }
    assert_eq!(
        api.count() + other.count(),
        before,
        "rejected paths are never forwarded"
    );
    gw.shutdown().await;
}

/// Header, query and path-regex conditions.
#[tokio::test]
async fn routes_match_on_headers_query_and_path_regex() {
    let (main, canary, users, v2) = (
        Upstream::start("main").await,
        Upstream::start("canary").await,
        Upstream::start("users").await,
        Upstream::start("v2").await,
    );
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[access_log]
enabled = false
[clusters.main]
endpoints = ["{}"]
[clusters.canary]
endpoints = ["{}"]
[clusters.users]
endpoints = ["{}"]
[clusters.v2]
endpoints = ["{}"]
[[routes]]
name = "main"
cluster = "main"
[[routes]]
name = "canary"
headers = [{{ name = "x-canary", value = "yes" }}, {{ name = "x-user", regex = "tester-[0-9]+" }}]
cluster = "canary"
[[routes]]
name = "users"
path_regex = "/users/[0-9]+(/profile)?"
cluster = "users"
[[routes]]
name = "v2"
query = [{{ name = "version", value = "2 beta" }}, {{ name = "debug", present = false }}]
cluster = "v2"
"#,
        main.addr, canary.addr, users.addr, v2.addr
    );
    let gw = start_gateway(&toml).await;
    let to = |r: wasmgate_tests::Reply| r.header("x-upstream").unwrap_or("?").to_owned();
    assert_eq!(to(get(gw.addr(), "/x", &[]).await), "main");
    assert_eq!(
        to(get(
            gw.addr(),
            "/x",
            &[("x-canary", "yes"), ("x-user", "tester-7")]
        )
        .await),
        "canary"
    );
    assert_eq!(
        to(get(
            gw.addr(),
            "/x",
            &[("x-canary", "yes"), ("x-user", "tester-7x")]
        )
        .await),
        "main",
        "the regex must match the whole value"
    );
    assert_eq!(
        to(get(gw.addr(), "/x", &[("x-canary", "no")]).await),
        "main"
    );
    assert_eq!(to(get(gw.addr(), "/users/42", &[]).await), "users");
    assert_eq!(to(get(gw.addr(), "/users/42/profile", &[]).await), "users");
    assert_eq!(to(get(gw.addr(), "/users/42/other", &[]).await), "main");
    assert_eq!(
        to(get(gw.addr(), "/x?version=2+beta", &[]).await),
        "v2",
        "decoded"
    );
    assert_eq!(
        to(get(gw.addr(), "/x?a=1&version=2%20beta", &[]).await),
        "v2"
    );
    assert_eq!(
        to(get(gw.addr(), "/x?version=2+beta&debug", &[]).await),
        "main"
    );
    assert_eq!(to(get(gw.addr(), "/x?version=3", &[]).await), "main");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_weighted_split_sends_exact_proportions() {
    let (stable, next) = (
        Upstream::start("stable").await,
        Upstream::start("next").await,
    );
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[clusters.stable]\nendpoints = [\"{}\"]\n[clusters.next]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\nclusters = [{{ name = \"stable\", weight = 9 }}, {{ name = \"next\", weight = 1 }}]\n",
        stable.addr, next.addr
    );
    let gw = start_gateway(&toml).await;
    for _ in 0..100 {
        assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    }
    assert_eq!((stable.count(), next.count()), (90, 10));
    let m = gw.metrics_text();
    assert_eq!(
        wasmgate_tests::metric(
            &m,
            "wasmgate_requests_total{tenant=\"default\",route=\"r\",cluster=\"next\",status_class=\"2xx\"}"
        ),
        Some(10.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn redirects_direct_responses_and_prefix_rewrites() {
    let up = Upstream::start("u").await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[access_log]
enabled = false
[clusters.c]
endpoints = ["{}"]
[[routes]]
name = "to-https"
hosts = ["plain.test"]
redirect = {{ scheme = "https" }}
[[routes]]
name = "moved"
path_prefix = "/old"
redirect = {{ status = 308, prefix = "/new", host = "new.test" }}
[[routes]]
name = "gone"
path = "/retired"
respond = {{ status = 410, body = "{{\"gone\":true}}", content_type = "application/json", headers = {{ "cache-control" = "max-age=60" }} }}
[[routes]]
name = "api"
path_prefix = "/api/v1"
prefix_rewrite = "/v1"
cluster = "c"
[[routes]]
name = "root"
path_prefix = "/strip"
prefix_rewrite = "/"
cluster = "c"
"#,
        up.addr
    );
    let gw = start_gateway(&toml).await;
    let r = get(gw.addr(), "/a/b?q=1", &[("host", "plain.test:8080")]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://plain.test/a/b?q=1"));

    let r = get(gw.addr(), "/old/page?x=y", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("http://new.test/new/page?x=y"));
    assert!(r.header("x-request-id").is_some());

    let r = get(gw.addr(), "/retired", &[]).await;
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["gone"], true);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert_eq!(
        up.count(),
        0,
        "redirects and direct responses never reach a cluster"
    );

    assert_eq!(get(gw.addr(), "/api/v1/users?id=3", &[]).await.status, 200);
    assert_eq!(get(gw.addr(), "/strip/x", &[]).await.status, 200);
    assert_eq!(get(gw.addr(), "/strip", &[]).await.status, 200);
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1/users?id=3", "/x", "/"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_redirect_never_echoes_a_host_that_points_elsewhere() {
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"all-to-https\"\nredirect = {{ scheme = \"https\" }}\n",
        up.addr
    );
    let gw = start_gateway(&toml).await;
    let ok = get(gw.addr(), "/a", &[("host", "good.test:8080")]).await;
    assert_eq!(ok.status, 301);
    assert_eq!(ok.header("location"), Some("https://good.test/a"));
    // User info in the host would make `Location` point off-site.
    let bad = get(gw.addr(), "/a", &[("host", "good.test@evil.test")]).await;
    assert_eq!(bad.status, 400, "{:?}", bad.header("location"));
    assert!(bad.header("location").is_none());
    gw.shutdown().await;
}
