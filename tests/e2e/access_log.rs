//! The access log: one JSON line per request with route, cluster, endpoint,
//! status, bytes, duration, request id and filter outcomes.

use std::time::Duration;

use wasmgate_tests::{Upstream, artifacts, get, start_gateway, within};

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
    assert_eq!(ok.status, 200, "{}", ok.body);
    let refused = get(gw.addr(), "/b", &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    // The upstream answers this one after 300 ms.
    let slow = get(gw.addr(), "/delay/300", &[("x-api-key", "k")]).await;
    assert_eq!(slow.status, 200, "{}", slow.body);
    gw.shutdown().await;

    // The writer thread flushes asynchronously: wait for the three lines.
    let lines = within("three access log lines", async {
        loop {
            let lines: Vec<String> = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            if lines.len() >= 3 {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(lines.len(), 3, "{lines:?}");
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

    // The duration covers the upstream's answer: the request cannot have
    // taken less than the upstream waited before answering.
    let third: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(third["path"], "/delay/300");
    assert_eq!(third["status"], 200);
    let ms = third["duration_ms"].as_f64().unwrap();
    assert!(ms >= 300.0, "logged {ms} ms for a 300 ms upstream wait");
}
