//! Forwarding hygiene: hop-by-hop headers, X-Forwarded-*, request ids,
//! traceparent, and upstream-identifying response headers.

use wasmgate_tests::{Upstream, get, start_gateway};

fn config(up: &Upstream, server_extra: &str) -> String {
    crate::one_route(up, server_extra, "")
}

#[tokio::test]
async fn hop_by_hop_and_connection_listed_headers_are_stripped() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let reply = get(
        gw.addr(),
        "/",
        &[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "must not pass"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "passes"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = &up.seen()[0].headers;
    for h in ["x-secret-hop", "keep-alive", "te", "proxy-connection"] {
        assert!(seen.get(h).is_none(), "{h} reached the upstream: {seen:?}");
    }
    assert_eq!(seen.get("x-end-to-end").unwrap(), "passes");
    // Upstream-identifying response headers are hidden.
    assert!(reply.headers.get("server").is_none());
    assert!(reply.headers.get("x-powered-by").is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn untrusted_clients_cannot_forge_forwarding_headers_or_request_ids() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "forwarded_header = true")).await;
    let reply = get(
        gw.addr(),
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "forged-id"),
            ("forwarded", "for=6.6.6.6"),
        ],
    )
    .await;
    let seen = &up.seen()[0].headers;
    assert_eq!(seen.get("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(seen.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(seen.get("x-forwarded-host").unwrap(), "gateway.test");
    assert_eq!(
        seen.get("forwarded").unwrap(),
        "for=127.0.0.1;proto=http;host=\"gateway.test\""
    );
    let id = seen.get("x-request-id").unwrap().to_str().unwrap();
    assert_ne!(id, "forged-id");
    assert_eq!(id.len(), 32);
    assert_eq!(
        reply.header("x-request-id"),
        Some(id),
        "the client gets the same id"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn trusted_proxies_are_appended_to_and_their_request_id_kept() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "trusted_proxies = [\"127.0.0.0/8\"]")).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = get(
        gw.addr(),
        "/",
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-request-id", "edge-42"),
            ("traceparent", tp),
        ],
    )
    .await;
    let seen = &up.seen()[0].headers;
    assert_eq!(
        seen.get("x-forwarded-for").unwrap(),
        "198.51.100.7, 127.0.0.1"
    );
    assert_eq!(seen.get("x-request-id").unwrap(), "edge-42");
    assert_eq!(seen.get("traceparent").unwrap(), tp);
    assert_eq!(reply.header("x-request-id"), Some("edge-42"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_malformed_traceparent_is_dropped() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    get(
        gw.addr(),
        "/",
        &[
            ("traceparent", "00-nothex-00f067aa0ba902b7-01"),
            ("tracestate", "a=b"),
        ],
    )
    .await;
    let seen = &up.seen()[0].headers;
    assert!(seen.get("traceparent").is_none() && seen.get("tracestate").is_none());
    gw.shutdown().await;
}
