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
        "wasmgate_requests_total{tenant=\"default\",route=\"r\",cluster=\"c\",status_class=\"2xx\"} 2",
        "wasmgate_requests_total{tenant=\"default\",route=\"r\",cluster=\"c\",status_class=\"4xx\"} 1",
        "wasmgate_requests_total{tenant=\"default\",route=\"\",cluster=\"\",status_class=\"4xx\"} 1",
        "wasmgate_filter_calls_total{tenant=\"default\",filter=\"api-key\",route=\"r\",outcome=\"ok\"} 3",
        "wasmgate_request_duration_seconds_count{tenant=\"default\",route=\"r\"} 3",
        "wasmgate_filter_instances_created_total{tenant=\"default\",filter=\"api-key\",route=\"r\"} 1",
        "wasmgate_filter_instances_idle{tenant=\"default\",filter=\"api-key\",route=\"r\"} 1",
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
    // A takes the only slot (its first request is answered, so it holds
    // it), then never finishes its second request head.
    let mut silent = tokio::net::TcpStream::connect(admin).await.unwrap();
    silent
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    within("the first answer on the held connection", async {
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&head).contains("\"ok\"") {
            let n = silent.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&head));
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    silent
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
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

/// The admin token lets its holder replace the routing config, not read or
/// write the machine's files: a config put through the API may name only
/// the files and environment variables the config file names, or those
/// under `admin.api_paths` / in `admin.api_env`, and keeps the file's
/// access log. Anything else is refused by its key, before it is touched.
#[tokio::test]
async fn a_config_through_the_api_reaches_only_what_the_file_allows() {
    let up = Upstream::start("u").await;
    let dir = std::env::temp_dir().join(format!("wasmgate-api-reach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let allowed = dir.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let file = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         api_paths = [{allowed:?}]\napi_env = [\"WASMGATE_API_REACH_OK\"]\n\
         [access_log]\nenabled = false\n[engine]\nmax_instances = 16\n\
         [filters.api-key]\npath = {api_key:?}\npool_size = 2\n\
         [clusters.c]\nendpoints = [\"{up}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/api\"\ncluster = \"c\"\n\
         filters = [{{ name = \"api-key\", config = {{ keys = [\"k\"] }} }}]\n",
        allowed = allowed.display().to_string(),
        api_key = artifacts::API_KEY,
        up = up.addr
    );
    let gw = start_gateway(&file).await;
    let admin = gw.admin_addr().unwrap();
    let auth = format!("Bearer {TOKEN}");
    let put = |text: String| {
        let auth = auth.clone();
        async move {
            wasmgate_tests::send_body(admin, "PUT", "/config", &[("authorization", &auth)], text)
                .await
        }
    };
    let with_filter = |name: &str, extra: &str| {
        file.replace(
            "[clusters.c]",
            &format!("[filters.{name}]\n{extra}\npool_size = 1\n[clusters.c]"),
        )
    };

    let stolen = dir.join("written-by-the-api.log");
    for (text, key, says) in [
        (
            with_filter("x", "path = \"/etc/passwd\""),
            "filters.x.path",
            "admin.api_paths",
        ),
        (
            with_filter(
                "x",
                &format!(
                    "path = {:?}\nvars = {{ home = {{ env = \"HOME\" }} }}",
                    artifacts::API_KEY
                ),
            ),
            "filters.x.vars.home",
            "admin.api_env",
        ),
        (
            with_filter(
                "x",
                &format!(
                    "path = {:?}\nvars = {{ k = {{ file = \"/etc/hostname\" }} }}",
                    artifacts::API_KEY
                ),
            ),
            "filters.x.vars.k",
            "admin.api_paths",
        ),
        (
            with_filter(
                "x",
                &format!("path = \"{}/../../etc/x.wasm\"", allowed.display()),
            ),
            "filters.x.path",
            "`..`",
        ),
        (
            file.replace(
                "[access_log]\nenabled = false\n",
                &format!("[access_log]\npath = {:?}\n", stolen.display().to_string()),
            ),
            "access_log",
            "config file only",
        ),
    ] {
        let r = put(text).await;
        assert_eq!(r.status, 400, "{key}: {}", r.body);
        let body = r.json();
        assert_eq!(body["code"], "invalid_config");
        let e = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == key)
            .unwrap_or_else(|| panic!("no error for {key}: {body}"));
        assert!(e["message"].as_str().unwrap().contains(says), "{key}: {e}");
    }
    assert!(!stolen.exists(), "the refused access log was never opened");

    // An allowed variable passes the check and is read (it is not set
    // here, so reading it is what fails).
    let r = put(with_filter(
        "x",
        &format!(
            "path = {:?}\nvars = {{ v = {{ env = \"WASMGATE_API_REACH_OK\" }} }}",
            artifacts::API_KEY
        ),
    ))
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["errors"][0];
    assert_eq!(e["path"], "filters.x.vars.v", "{e}");
    assert!(
        !e["message"].as_str().unwrap().contains("admin.api_env"),
        "{e}"
    );

    // What the file names, and files under api_paths, are fine.
    std::fs::copy(artifacts::API_KEY, allowed.join("mine.wasm")).unwrap();
    let ok = with_filter(
        "mine",
        &format!(
            "path = {:?}",
            allowed.join("mine.wasm").display().to_string()
        ),
    ) + "[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nrespond = { status = 204 }\n";
    let r = put(ok).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(gw.addr(), "/extra", &[]).await.status, 204);
    assert_eq!(
        get(gw.addr(), "/api/x", &[("x-api-key", "k")]).await.status,
        200
    );
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
