//! The access log: one JSON line per request with route, cluster, endpoint,
//! status, bytes, duration, request id and filter outcomes.

use std::time::Duration;

use wasmgate_tests::{Upstream, artifacts, get, start_gateway};

#[tokio::test]
async fn one_json_line_per_request_with_filter_outcomes() {
    let up = Upstream::start("u").await;
    let path = std::env::temp_dir().join(format!("wasmgate-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let gw = start_gateway(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[access_log]
path = {path:?}
[engine]
max_instances = 32
[filters.api-key]
path = "{api_key}"
pool_size = 4
[clusters.c]
endpoints = ["{up}"]
[[routes]]
name = "r"
cluster = "c"
filters = [{{ name = "api-key", config = {{ keys = ["k"] }} }}]
"#,
        path = path.display().to_string(),
        api_key = artifacts::API_KEY,
        up = up.addr
    ))
    .await;
    let ok = get(gw.addr(), "/a?b=c", &[("x-api-key", "k")]).await;
    let refused = get(gw.addr(), "/b", &[]).await;
    gw.shutdown().await;

    // The writer thread flushes asynchronously: wait for both lines.
    let mut lines = Vec::new();
    for _ in 0..600 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["route"], "r");
    assert_eq!(first["cluster"], "c");
    assert_eq!(first["endpoint"], up.addr.to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/a?b=c");
    assert_eq!(first["tenant"], "default");
    assert_eq!(first["bytes"], ok.body.len());
    assert_eq!(first["complete"], true);
    assert_eq!(first["request_id"], ok.header("x-request-id").unwrap());
    assert_eq!(first["filters"], serde_json::json!(["api-key:proceed"]));
    assert!(first["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));

    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["status"], 401);
    assert_eq!(second["filters"], serde_json::json!(["api-key:respond"]));
    assert!(second["endpoint"].is_null(), "nothing was forwarded");
    assert_eq!(second["bytes"], refused.body.len());
}
