//! The admin listener: health, readiness, metrics that count, and a token
//! that protects the management endpoints.

use wasmgate_tests::{Upstream, artifacts, get, start_gateway};

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
