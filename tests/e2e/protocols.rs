//! Upstream protocols and TLS per cluster (HTTP/1.1, h2, h2c, ALPN `auto`;
//! roots, SNI, client certificates), gRPC-style trailers end to end, and
//! WebSocket upgrades proxied both ways.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;
use wasmgate_tests::pki::{Leaf, Pki, dir, write};
use wasmgate_tests::{Upstream, UpstreamOptions, build_gateway, get, start_gateway, within};

/// A gateway with one route to cluster `c` at `up`; `cluster_extra` goes in
/// `[clusters.c]`.
fn config(up: &Upstream, cluster_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{}\"]\n{cluster_extra}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        up.addr
    )
}

/// An upstream serving `leaf` over TLS with `alpn`, optionally requiring a
/// client certificate from `client_ca`.
async fn tls_upstream(leaf: &Leaf, alpn: &[&[u8]], client_ca: Option<&Pki>) -> Upstream {
    Upstream::start_with(
        "tls-up",
        UpstreamOptions {
            tls: Some(leaf.server_config(alpn, client_ca)),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn upstream_tls_is_verified_against_the_configured_root_and_sends_sni() {
    let pki = Pki::new();
    let d = dir("up-tls");
    let leaf = pki.leaf(&["api.internal"]);
    let up = tls_upstream(&leaf, &[b"http/1.1"], None).await;
    let ca = write(&d, "ca.pem", &pki.root_pem);
    let gw = start_gateway(&config(
        &up,
        &format!("tls = {{ ca = {ca:?}, sni = \"api.internal\" }}"),
    ))
    .await;
    let r = get(gw.addr(), "/x", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some("api.internal"));
    assert_eq!(seen[0].version, http::Version::HTTP_11);
    assert!(!seen[0].client_cert);
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_certificate_from_another_root_or_name_is_refused_with_502() {
    let pki = Pki::new();
    let other = Pki::new();
    let d = dir("up-tls-refused");
    let leaf = pki.leaf(&["api.internal"]);
    let up = tls_upstream(&leaf, &[b"http/1.1"], None).await;

    // Trusting another root.
    let wrong_ca = write(&d, "other.pem", &other.root_pem);
    let gw = start_gateway(&config(
        &up,
        &format!("tls = {{ ca = {wrong_ca:?}, sni = \"api.internal\" }}"),
    ))
    .await;
    let r = get(gw.addr(), "/x", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_unavailable");
    gw.shutdown().await;

    // The right root, but the certificate is not for the name sent.
    let ca = write(&d, "ca.pem", &pki.root_pem);
    let gw = start_gateway(&config(
        &up,
        &format!("tls = {{ ca = {ca:?}, sni = \"other.internal\" }}"),
    ))
    .await;
    let r = get(gw.addr(), "/x", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    gw.shutdown().await;

    assert_eq!(up.count(), 0, "no request may reach an unverified upstream");
}

#[tokio::test]
async fn upstream_mtls_needs_the_configured_client_certificate() {
    let pki = Pki::new();
    let d = dir("up-mtls");
    let leaf = pki.leaf(&["api.internal"]);
    let client = pki.leaf(&["gateway"]);
    let up = tls_upstream(&leaf, &[b"http/1.1"], Some(&pki)).await;
    let ca = write(&d, "ca.pem", &pki.root_pem);

    let without = start_gateway(&config(
        &up,
        &format!("tls = {{ ca = {ca:?}, sni = \"api.internal\" }}"),
    ))
    .await;
    let r = get(without.addr(), "/x", &[]).await;
    assert_eq!(r.status, 502, "no client certificate: {}", r.body);
    without.shutdown().await;
    assert_eq!(up.count(), 0);

    let with = start_gateway(&config(
        &up,
        &format!(
            "tls = {{ ca = {ca:?}, sni = \"api.internal\", client_cert = {:?}, client_key = {:?} }}",
            write(&d, "client.pem", &client.cert_pem),
            write(&d, "client.key", &client.key_pem),
        ),
    ))
    .await;
    let r = get(with.addr(), "/x", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(up.seen()[0].client_cert);
    with.shutdown().await;
}

#[tokio::test]
async fn upstream_http2_over_tls_h2c_and_alpn_auto() {
    let pki = Pki::new();
    let d = dir("up-h2");
    let ca = write(&d, "ca.pem", &pki.root_pem);
    let leaf = pki.leaf(&["127.0.0.1"]);
    let tls = format!("tls = {{ ca = {ca:?} }}");

    // h2 over TLS; the endpoint is an IP address, verified as such.
    let h2_up = tls_upstream(&leaf, &[b"h2"], None).await;
    let gw = start_gateway(&config(&h2_up, &format!("protocol = \"h2\"\n{tls}"))).await;
    for _ in 0..2 {
        assert_eq!(get(gw.addr(), "/x", &[]).await.status, 200);
    }
    gw.shutdown().await;
    let seen = h2_up.seen();
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    assert_eq!(
        seen[0].headers.get("host").unwrap(),
        "gateway.test",
        "the client's host travels to an h2 upstream"
    );

    // auto: h2 where offered, HTTP/1.1 where not.
    let both = tls_upstream(&leaf, &[b"h2", b"http/1.1"], None).await;
    let gw = start_gateway(&config(&both, &format!("protocol = \"auto\"\n{tls}"))).await;
    assert_eq!(get(gw.addr(), "/x", &[]).await.status, 200);
    gw.shutdown().await;
    assert_eq!(both.seen()[0].version, http::Version::HTTP_2);
    let h1_only = tls_upstream(&leaf, &[b"http/1.1"], None).await;
    let gw = start_gateway(&config(&h1_only, &format!("protocol = \"auto\"\n{tls}"))).await;
    assert_eq!(get(gw.addr(), "/x", &[]).await.status, 200);
    gw.shutdown().await;
    assert_eq!(h1_only.seen()[0].version, http::Version::HTTP_11);

    // h2c: cleartext HTTP/2 with prior knowledge.
    let h2c_up = Upstream::start_with("h2c", UpstreamOptions::default()).await;
    let gw = start_gateway(&config(&h2c_up, "protocol = \"h2c\"")).await;
    assert_eq!(get(gw.addr(), "/x", &[]).await.status, 200);
    gw.shutdown().await;
    assert_eq!(h2c_up.seen()[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn a_missing_client_key_file_fails_the_build_naming_the_cluster() {
    let up = Upstream::start("u").await;
    let err = build_gateway(&config(
        &up,
        "tls = { client_cert = \"/nonexistent/c.pem\", client_key = \"/nonexistent/c.key\" }",
    ))
    .await
    .expect_err("must not build");
    assert!(err.contains("clusters.c"), "{err}");
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
}

/// A gRPC-style call: HTTP/2 from the client, h2c to the upstream, request
/// and response trailers carried through.
#[tokio::test]
async fn grpc_call_keeps_trailers_both_ways() {
    let up = Upstream::start_with("grpc", UpstreamOptions::default()).await;
    let gw = start_gateway(&config(&up, "protocol = \"h2c\"")).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);

    let mut request_trailers = http::HeaderMap::new();
    request_trailers.insert("x-client-trailer", "from-client".parse().unwrap());
    // A length-prefixed gRPC message: flag, 4-byte length, payload.
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let body = Full::new(message.clone())
        .with_trailers(std::future::ready(Some(Ok(request_trailers))))
        .boxed();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://grpc.test/grpc.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = within("grpc call", send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = within("grpc body", resp.into_body().collect())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(collected.to_bytes(), message);
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "echoed");
    assert_eq!(trailers["x-echo-trailer"], "from-client");

    let seen = up.seen();
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert_eq!(
        seen[0].headers.get("te").map(|v| v.to_str().unwrap()),
        Some("trailers"),
        "gRPC needs `te: trailers` forwarded"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrade_is_proxied_both_ways() {
    let up = Upstream::start("ws").await;
    let gw = start_gateway(&config(&up, "")).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut ws, resp) = within(
        "websocket handshake",
        tokio_tungstenite::client_async("ws://gateway.test/chat?room=1", tcp),
    )
    .await
    .expect("handshake through the gateway");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));

    for i in 0..3 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    let blob = vec![7u8; 100_000];
    ws.send(Message::binary(blob.clone())).await.unwrap();
    let echoed = within("binary echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed.into_data(), blob);
    ws.close(None).await.unwrap();

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/chat?room=1");
    assert_eq!(seen[0].headers["upgrade"], "websocket");
    assert!(
        seen[0].headers["connection"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("upgrade")
    );
    assert!(seen[0].headers.contains_key("x-forwarded-for"));
    gw.shutdown().await;
}

#[tokio::test]
async fn upgrades_other_than_websocket_are_not_passed_on() {
    // Upgrade is hop-by-hop: anything but WebSocket (h2c, unknown protocols)
    // is dropped, and the request goes upstream as a plain one.
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let r = get(
        gw.addr(),
        "/x",
        &[("connection", "upgrade"), ("upgrade", "h2c-nope")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.seen();
    assert!(!seen[0].headers.contains_key("upgrade"));
    assert!(!seen[0].headers.contains_key("connection"));
    gw.shutdown().await;
}

/// Connections waiting in the kernel's accept queue of the listening socket
/// on `addr` (on Linux, the `rx_queue` of a listening socket in
/// `/proc/net/tcp` is its accept backlog).
fn accept_queue(addr: std::net::SocketAddr) -> usize {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("an IPv4 listener: {addr}")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let queue = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local address, remote address, state (0A: listening), tx:rx.
        (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")).then(|| {
            let rx = f[4].split(':').nth(1).unwrap();
            usize::from_str_radix(rx, 16).unwrap()
        })
    });
    queue.unwrap_or_else(|| panic!("no listening socket {local} in /proc/net/tcp"))
}

#[tokio::test]
async fn a_websocket_tunnel_keeps_its_connection_slot() {
    let up = Upstream::start("ws").await;
    let gw = start_gateway(&format!(
        "{}\n[limits]\nmax_connections = 1\n",
        config(&up, "")
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut ws, _) = within(
        "websocket handshake",
        tokio_tungstenite::client_async("ws://gateway.test/chat", tcp),
    )
    .await
    .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    // The only slot is the tunnel's: another client waits in the backlog,
    // connected by the kernel but not accepted by the gateway.
    let addr = gw.addr();
    assert_eq!(accept_queue(addr), 0);
    let waiting = tokio::spawn(async move { get(addr, "/", &[]).await });
    within("the client to wait in the backlog", async {
        while accept_queue(addr) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // The gateway keeps working meanwhile (the tunnel echoes), and still
    // leaves the client where it is.
    ws.send(Message::text("y")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(
        accept_queue(addr),
        1,
        "accepted while the tunnel held the only slot"
    );
    assert_eq!(
        wasmgate_tests::metric(&gw.metrics_text(), "wasmgate_connections_total"),
        Some(1.0)
    );
    assert!(
        !waiting.is_finished(),
        "served while the tunnel held the only slot"
    );
    assert_eq!(up.count(), 1, "only the upgrade reached the upstream");
    ws.close(None).await.unwrap();
    drop(ws);
    assert_eq!(
        within("after the tunnel", waiting).await.unwrap().status,
        200
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_stalls_its_tls_handshake_fails_within_connect_timeout() {
    // Accepts TCP, never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let ca = write(&dir("stall"), "ca.pem", &Pki::new().root_pem);
    let gw = start_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{addr}\"]\nconnect_timeout = \"300ms\"\ntls = {{ ca = {ca:?} }}\nretry = {{ retries = 0 }}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n"
    ))
    .await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_unavailable");
    gw.shutdown().await;
}

/// The gateway's own connection pools: an HTTP/1.1 connection goes back to
/// its endpoint's pool when its response is done and serves the next
/// request; an HTTP/2 connection carries concurrent requests. With one
/// connection allowed and nobody allowed to wait for one, any request that
/// opened a second connection would be refused.
#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let one =
        "protocol = \"{}\"\n[clusters.c.circuit_breaker]\nmax_connections = 1\nmax_pending = 0";
    let h1 = Upstream::start("h1").await;
    let gw = start_gateway(&config(&h1, &one.replace("{}", "http1"))).await;
    for i in 0..20 {
        let r = get(gw.addr(), &format!("/seq/{i}"), &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let text = gw.metrics_text();
    assert_eq!(
        wasmgate_tests::metric(
            &text,
            "wasmgate_upstream_connections{tenant=\"default\",cluster=\"c\"}"
        ),
        Some(1.0),
        "{text}"
    );
    gw.shutdown().await;
    assert_eq!(h1.count(), 20);

    let h2c = Upstream::start_with("h2c", UpstreamOptions::default()).await;
    let gw = start_gateway(&config(&h2c, &one.replace("{}", "h2c"))).await;
    let addr = gw.addr();
    let all: Vec<_> = (0..10)
        .map(|i| tokio::spawn(async move { get(addr, &format!("/delay/100?{i}"), &[]).await }))
        .collect();
    for h in all {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    gw.shutdown().await;
    assert_eq!(h2c.count(), 10);
}
