//! Forwarding hygiene: hop-by-hop headers, X-Forwarded-*, request ids,
//! traceparent, and upstream-identifying response headers.

use wasmgate_tests::{Upstream, get, raw, start_gateway};

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
            ("te", "deflate"),
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
    // `TE: trailers` alone survives (gRPC needs it); other TE values do not.
    let reply = get(gw.addr(), "/", &[("te", "deflate, trailers")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(up.seen()[1].headers.get("te").unwrap(), "trailers");
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
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-real-ip", "6.6.6.6"),
        ],
    )
    .await;
    let seen = &up.seen()[0].headers;
    for claim in ["x-original-url", "x-rewrite-url", "x-real-ip"] {
        assert!(
            !seen.contains_key(claim),
            "{claim} from an untrusted client reached the upstream"
        );
    }
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
            ("x-real-ip", "198.51.100.7"),
        ],
    )
    .await;
    let seen = &up.seen()[0].headers;
    assert_eq!(
        seen.get("x-real-ip").unwrap(),
        "198.51.100.7",
        "a trusted hop's claims pass"
    );
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
    let r = get(
        gw.addr(),
        "/",
        &[
            ("traceparent", "00-nothex-00f067aa0ba902b7-01"),
            ("tracestate", "a=b"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.count(), 1, "forwarded, without the trace context");
    let seen = &up.seen()[0].headers;
    assert!(seen.get("traceparent").is_none() && seen.get("tracestate").is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(
        &up,
        "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]",
    ))
    .await;
    let head = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    let v1 = format!("PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\n{head}");
    let out = raw(gw.addr(), v1.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    // PROXY over TCP/IPv6: 2001:db8::9 port 5000 → 2001:db8::1 port 443.
    v2.extend_from_slice(&[0x21, 0x21, 0, 36]);
    let src: std::net::Ipv6Addr = "2001:db8::9".parse().unwrap();
    let dst: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    v2.extend_from_slice(&src.octets());
    v2.extend_from_slice(&dst.octets());
    v2.extend_from_slice(&5000u16.to_be_bytes());
    v2.extend_from_slice(&443u16.to_be_bytes());
    v2.extend_from_slice(head.as_bytes());
    let out = raw(gw.addr(), &v2).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    let seen = up.seen();
    assert_eq!(seen[0].headers["x-forwarded-for"], "203.0.113.7");
    assert_eq!(seen[1].headers["x-forwarded-for"], "2001:db8::9");

    // Without the header (or with a broken one) the connection is closed
    // unanswered.
    for bad in [head.to_owned(), format!("PROXY TCP4 nope\r\n{head}")] {
        let out = raw(gw.addr(), bad.as_bytes()).await;
        assert!(out.is_empty(), "{out}");
    }
    assert_eq!(up.count(), 2);
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("wasmgate_proxy_protocol_errors_total 2"),
        "{metrics}"
    );
    gw.shutdown().await;
}

/// A PROXY header names the client, so only the load balancers that send
/// it may: from any other peer, a well-formed header is refused with its
/// connection (otherwise a client reaching the port directly could claim
/// any address, and pass `trusted_proxies` checks as one of them).
#[tokio::test]
async fn a_proxy_protocol_header_from_a_peer_not_listed_is_refused() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(
        &up,
        "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"10.0.0.0/8\"]",
    ))
    .await;
    let forged = "PROXY TCP4 10.0.0.9 192.0.2.1 40000 443\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = raw(gw.addr(), forged.as_bytes()).await;
    assert!(out.is_empty(), "answered: {out}");
    assert_eq!(up.count(), 0, "nothing was forwarded");
    assert_eq!(
        wasmgate_tests::metric(&gw.metrics_text(), "wasmgate_proxy_protocol_errors_total"),
        Some(1.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_request_target_authority_wins_over_host() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let out = raw(
        gw.addr(),
        b"GET http://routed.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.seen();
    assert_eq!(seen[0].headers["host"], "routed.test");
    assert_eq!(seen[0].path, "/x");
    gw.shutdown().await;
}

#[tokio::test]
async fn early_refusals_carry_the_request_id_a_trusted_proxy_sent() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "trusted_proxies = [\"127.0.0.0/8\"]")).await;
    // Refused before routing (a path with no canonical form, a body past
    // the limit as declared): the answer names the same id in its header
    // and its body, and it is the one the trusted proxy sent.
    let bad_path = get(gw.addr(), "/a/%zz", &[("x-request-id", "edge-7")]).await;
    let too_big = wasmgate_tests::raw(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Request-Id: edge-8\r\nContent-Length: 999999999999\r\n\r\n",
    )
    .await;
    assert_eq!(bad_path.status, 400, "{}", bad_path.body);
    assert_eq!(bad_path.header("x-request-id"), Some("edge-7"));
    assert_eq!(bad_path.json()["request_id"], "edge-7");
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
    assert!(too_big.contains("x-request-id: edge-8"), "{too_big}");
    assert!(too_big.contains("\"request_id\":\"edge-8\""), "{too_big}");
    // An untrusted client's id is not taken: the gateway's own is, in the
    // header and the body alike.
    let gw2 = start_gateway(&config(&up, "")).await;
    let r = get(gw2.addr(), "/a/%zz", &[("x-request-id", "forged")]).await;
    let id = r.header("x-request-id").expect("request id on a refusal");
    assert_ne!(id, "forged");
    assert_eq!(r.json()["request_id"], id);
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
    gw2.shutdown().await;
}

/// Upstreams that disagree with the gateway about a path open a way past a
/// route that guards it: IIS treats `/ADMIN` as `/admin`, Tomcat drops
/// `;jsessionid=…` segment parameters before its own routing. A route can
/// match its path in any case (`case_sensitive = false`), and refuse `;`
/// parameters (`path_parameters = "reject"`).
#[tokio::test]
async fn routes_can_match_any_case_and_refuse_path_parameters() {
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
         [clusters.c]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"guard\"\npath_prefix = \"/admin\"\ncase_sensitive = false\nrespond = {{ status = 403, body = \"no\" }}\n\
         [[routes]]\nname = \"v1\"\npath_prefix = \"/v1\"\ncase_sensitive = false\nprefix_rewrite = \"/api\"\ncluster = \"c\"\n\
         [[routes]]\nname = \"tomcat\"\npath_prefix = \"/\"\npath_parameters = \"reject\"\ncluster = \"c\"\n",
        up.addr
    );
    let gw = start_gateway(&toml).await;
    for path in ["/admin", "/ADMIN/users", "/Admin/x"] {
        let r = get(gw.addr(), path, &[]).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    assert_eq!(up.count(), 0, "no case of the guarded path got through");

    let r = get(gw.addr(), "/V1/items?x=1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        up.seen()[0].path,
        "/api/items?x=1",
        "the matched prefix is rewritten in any case"
    );

    let r = get(gw.addr(), "/app/admin;jsessionid=1/users", &[]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["code"], "bad_request");
    assert!(r.body.contains("path parameters"), "{}", r.body);
    assert_eq!(up.count(), 1);
    assert_eq!(get(gw.addr(), "/app/users", &[]).await.status, 200);
    gw.shutdown().await;
}
