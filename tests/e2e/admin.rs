//! The admin listener: health, readiness, metrics that count, and a token
//! that protects the management endpoints.

use wasmgate_tests::{Upstream, artifacts, get, metric, start_gateway, within};

const TOKEN: &str = "test-admin-token-0123456789";

async fn gateway(up: &Upstream) -> wasmgate_tests::RunningGateway {
    start_gateway(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
[engine]
max_instances = 32
[filters.api-key]
path = "{api_key}"
pool_size = 4
[clusters.c]
endpoints = ["{up}"]
[[routes]]
name = "r"
path_prefix = "/api"
cluster = "c"
filters = [{{ name = "api-key", config = {{ keys = ["k"] }} }}]
"#,
        api_key = artifacts::API_KEY,
        up = up.addr
    ))
    .await
}

#[tokio::test]
async fn health_ready_and_metrics_are_public_and_count() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up).await;
    let admin = gw.admin_addr().expect("admin listener");
    assert_eq!(get(admin, "/health", &[]).await.status, 200);
    assert_eq!(get(admin, "/ready", &[]).await.json()["status"], "ready");

    assert_eq!(
        get(gw.addr(), "/api/x", &[("x-api-key", "k")]).await.status,
        200
    );
    assert_eq!(
        get(gw.addr(), "/api/x", &[("x-api-key", "k")]).await.status,
        200
    );
    assert_eq!(get(gw.addr(), "/api/x", &[]).await.status, 401);
    assert_eq!(get(gw.addr(), "/nowhere", &[]).await.status, 404);

    let metrics = get(admin, "/metrics", &[]).await;
    assert_eq!(metrics.status, 200);
    let text = &metrics.body;
    for line in [
        "wasmgate_requests_total{route=\"r\",cluster=\"c\",status_class=\"2xx\"} 2",
        "wasmgate_requests_total{route=\"r\",cluster=\"c\",status_class=\"4xx\"} 1",
        "wasmgate_requests_total{route=\"\",cluster=\"\",status_class=\"4xx\"} 1",
        "wasmgate_filter_calls_total{filter=\"api-key\",route=\"r\",outcome=\"ok\"} 3",
        "wasmgate_request_duration_seconds_count{route=\"r\"} 3",
        "wasmgate_filter_instances_created_total{filter=\"api-key\",route=\"r\"} 1",
        "wasmgate_filter_instances_idle{filter=\"api-key\",route=\"r\"} 1",
        "wasmgate_connections_total 4",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("# TYPE wasmgate_active_connections gauge"));
    gw.shutdown().await;
}

#[tokio::test]
async fn management_endpoints_need_the_token() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up).await;
    let admin = gw.admin_addr().unwrap();
    let refused = get(admin, "/routes", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["code"], "unauthorized");
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let wrong = get(
        admin,
        "/routes",
        &[("authorization", "Bearer not-the-token-at-all")],
    )
    .await;
    assert_eq!(wrong.status, 401);

    let auth = format!("Bearer {TOKEN}");
    let routes = get(admin, "/routes", &[("authorization", &auth)]).await;
    assert_eq!(routes.status, 200);
    let body = routes.json();
    assert_eq!(body["routes"][0]["name"], "r");
    assert_eq!(body["routes"][0]["filters"][0]["name"], "api-key");
    assert_eq!(
        body["routes"][0]["filters"][0]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(get(admin, "/clusters", &[]).await.status, 401);
    let clusters = get(admin, "/clusters", &[("authorization", &auth)]).await;
    assert_eq!(clusters.status, 200);
    let c = &clusters.json()["clusters"][0];
    assert_eq!(c["endpoints"][0]["address"], up.addr.to_string());
    assert_eq!(c["endpoints"][0]["healthy"], true);
    assert_eq!(c["endpoints"][0]["weight"], 1);
    assert_eq!(
        get(admin, "/nothing", &[("authorization", &auth)])
            .await
            .status,
        404
    );
    gw.shutdown().await;
}

/// Without a token, the admin API trusts whoever can reach loopback, and a
/// web page can be among them: DNS rebinding points the attacker's own name
/// at 127.0.0.1, and the browser then sends `Host: evil.example`. Every
/// request must name a loopback host (or one in `admin.allowed_hosts`).
#[tokio::test]
async fn without_a_token_only_loopback_hosts_reach_the_admin_api() {
    let gw = start_gateway(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nrespond = { body = \"hi\" }\n",
    )
    .await;
    let admin = gw.admin_addr().unwrap();
    let port = admin.port();
    for host in [
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
    ] {
        for path in ["/routes", "/health"] {
            let r = get(admin, path, &[("host", &host)]).await;
            assert_eq!(r.status, 403, "{host} {path}: {}", r.body);
            assert_eq!(r.json()["code"], "host_not_allowed");
            assert!(
                r.body.contains("evil.example"),
                "names the Host: {}",
                r.body
            );
        }
        let r = wasmgate_tests::send(admin, "PUT", "/config", &[("host", &host)]).await;
        assert_eq!(r.status, 403, "a change is refused before anything else");
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".into(),
    ] {
        let r = get(admin, "/routes", &[("host", &host)]).await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(r.json()["routes"][0]["name"], "r");
    }
    let text = get(admin, "/metrics", &[("host", "localhost")]).await.body;
    assert_eq!(
        metric(
            &text,
            "wasmgate_admin_refused_total{reason=\"host_not_allowed\"}"
        ),
        Some(6.0),
        "{text}"
    );
    gw.shutdown().await;
}

/// The admin listener holds at most `admin.max_connections` connections,
/// and one that does not finish its request head is closed after the header-read
/// timeout: a local process cannot lock the operator out by opening
/// sockets and sending nothing.
#[tokio::test]
async fn silent_admin_connections_are_capped_and_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start_gateway(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\n\
         [limits]\nheader_read_timeout = \"300ms\"\n[access_log]\nenabled = false\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nrespond = { body = \"hi\" }\n",
    )
    .await;
    let admin = gw.admin_addr().unwrap();
    // A takes the only slot and never finishes its request head.
    let mut silent = tokio::net::TcpStream::connect(admin).await.unwrap();
    silent
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // B asks while A holds the slot.
    let mut b = tokio::net::TcpStream::connect(admin).await.unwrap();
    b.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    within("the second admin connection's answer", async {
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    })
    .await;
    // B was answered only after the gateway closed A: A's end (sent over
    // loopback before B was even accepted) is already here to read.
    let mut a = silent.into_std().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match std::io::Read::read(&mut a, &mut buf) {
            Ok(0) => break,
            Ok(_) => {} // a 408 before the close is fine
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                panic!("B was answered while the silent connection still held the only slot ({e})")
            }
        }
    }
    gw.shutdown().await;
}
