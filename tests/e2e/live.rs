//! Changes while the gateway runs: config reload through the management API
//! and SIGHUP, and filter module swaps under load. Each change is validated
//! whole before it is applied; a bad one leaves the running config serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use wasmgate_tests::{Reply, Upstream, artifacts, get, metric, start_gateway, within};

const TOKEN: &str = "admin-secret-0123456789";

/// An admin API call with the token (or none) and a body.
async fn admin(
    gw: &wasmgate_tests::RunningGateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Reply {
    let addr = gw
        .admin_addr()
        .expect("the test config has an admin listener");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut all = headers.to_vec();
    if let Some(a) = &auth {
        all.push(("authorization", a));
    }
    wasmgate_tests::send_body(addr, method, path, &all, body).await
}

/// A config with an admin listener, route `/` to `up` through filter `v`
/// (the module at `module`), and `extra` appended.
fn config(up: &Upstream, module: &str, extra: &str) -> String {
    named_config(up, "v", module, extra)
}

/// [`config`] with the filter called `name`.
fn named_config(up: &Upstream, name: &str, module: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 64\n[filters.{name}]\npath = {module:?}\npool_size = 8\nvars = {{ a = \"1\", b = \"2\", c = \"3\", d = \"4\" }}\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\ncluster = \"c\"\nfilters = [{{ name = \"{name}\" }}]\n{extra}",
        up.addr
    )
}

fn module(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn a_config_put_through_the_api_applies_whole_or_not_at_all() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let gw = start_gateway(&config(&one, artifacts::VERSION_A, "")).await;
    // A connection opened before the change keeps working across it.
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut kept, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let ask = |sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>| {
        let req = hyper::Request::get("/x")
            .header("host", "gw")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = sender.send_request(req);
        async move {
            let resp = fut.await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["upstream"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(ask(&mut kept).await, "one");

    // Without the token: refused, nothing changes.
    let new = config(&two, artifacts::VERSION_A, "");
    let refused = admin(&gw, "PUT", "/config", None, new.clone().into_bytes(), &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    // A config with errors: every one reported with its key path, and the
    // running config stays.
    let bad = new.clone() + "\n[limits]\nbogus = 1\n";
    let rejected = admin(&gw, "PUT", "/config", Some(TOKEN), bad.into_bytes(), &[]).await;
    assert_eq!(rejected.status, 400, "{}", rejected.body);
    let body = rejected.json();
    assert_eq!(body["code"], "invalid_config");
    let paths: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["limits.bogus"], "{body}");
    let unknown = new.replace("cluster = \"c\"", "cluster = \"nope\"");
    let rejected = admin(
        &gw,
        "PUT",
        "/config",
        Some(TOKEN),
        unknown.into_bytes(),
        &[],
    )
    .await;
    assert_eq!(rejected.status, 400, "{}", rejected.body);
    assert_eq!(
        rejected.json()["errors"][0]["path"],
        "routes[0].cluster",
        "{}",
        rejected.body
    );
    assert_eq!(ask(&mut kept).await, "one", "the old config still serves");
    // A change that needs a restart is refused, naming the section.
    let listener = new.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1);
    let restart = admin(
        &gw,
        "PUT",
        "/config",
        Some(TOKEN),
        listener.into_bytes(),
        &[],
    )
    .await;
    assert_eq!(restart.status, 400, "{}", restart.body);
    assert_eq!(
        restart.json()["errors"][0]["path"],
        "server",
        "{}",
        restart.body
    );

    // A good one is applied at once, on the connection that was open.
    let ok = admin(
        &gw,
        "PUT",
        "/config",
        Some(TOKEN),
        new.clone().into_bytes(),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ask(&mut kept).await, "two");
    assert_eq!(get(gw.addr(), "/y", &[]).await.json()["upstream"], "two");
    let filters = admin(&gw, "GET", "/filters", Some(TOKEN), Vec::new(), &[])
        .await
        .json();
    assert_eq!(
        filters["filters"][0]["version"], 1,
        "the filter did not change, so its module was kept: {filters}"
    );
    let shown = admin(&gw, "GET", "/config", Some(TOKEN), Vec::new(), &[]).await;
    assert_eq!(shown.body, new, "GET /config returns the applied document");
    let m = gw.metrics_text();
    assert_eq!(
        metric(&m, "wasmgate_config_reloads_total{outcome=\"ok\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "wasmgate_config_reloads_total{outcome=\"rejected\"}"),
        Some(3.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_modules_are_rejected_and_the_current_version_keeps_serving() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, artifacts::VERSION_A, "")).await;
    let good = module(artifacts::VERSION_B);
    let upload = |bytes: Vec<u8>, headers: Vec<(&'static str, String)>| {
        let gw = &gw;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            admin(gw, "PUT", "/filters/v/module", Some(TOKEN), bytes, &h).await
        }
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "invalid_module",
        ),
        ("not wasm", b"hello".to_vec(), "invalid_module"),
        (
            "wrong contract",
            module(artifacts::WRONG_CONTRACT),
            "invalid_module",
        ),
        // The route gives `v` no config; api-key's init refuses that.
        ("init fails", module(artifacts::API_KEY), "invalid_module"),
    ];
    for (what, bytes, code) in cases {
        let r = upload(bytes, Vec::new()).await;
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        assert_eq!(r.json()["code"], code, "{what}: {}", r.body);
        assert!(
            r.json()["errors"][0]["path"].as_str().is_some(),
            "{what}: the reason comes with its key path: {}",
            r.body
        );
        let still = get(gw.addr(), "/", &[]).await;
        assert_eq!(still.header("x-version"), Some("aa"), "{what}");
    }
    let wrong_digest = upload(good.clone(), vec![("x-wasmgate-sha256", "00".repeat(32))]).await;
    assert_eq!(wrong_digest.status, 422);
    assert_eq!(wrong_digest.json()["code"], "digest_mismatch");
    let unknown = admin(
        &gw,
        "PUT",
        "/filters/nope/module",
        Some(TOKEN),
        good.clone(),
        &[],
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let no_token = admin(&gw, "PUT", "/filters/v/module", None, good.clone(), &[]).await;
    assert_eq!(no_token.status, 401);
    assert_eq!(
        get(gw.addr(), "/", &[]).await.header("x-version"),
        Some("aa")
    );

    // The right digest: activated, version 2.
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&good)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let ok = upload(good, vec![("x-wasmgate-sha256", sha.clone())]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["version"], 2);
    assert_eq!(ok.json()["sha256"], sha.as_str());
    assert_eq!(
        get(gw.addr(), "/", &[]).await.header("x-version"),
        Some("bb")
    );
    let filters = admin(&gw, "GET", "/filters", Some(TOKEN), Vec::new(), &[])
        .await
        .json();
    assert_eq!(filters["filters"][0]["version"], 2, "{filters}");
    assert_eq!(filters["filters"][0]["source"], "upload", "{filters}");
    let m = gw.metrics_text();
    assert_eq!(
        metric(
            &m,
            "wasmgate_filter_swaps_total{filter=\"v\",outcome=\"rejected\"}"
        ),
        Some(5.0),
        "{m}"
    );
    gw.shutdown().await;
}

/// Sends requests until `stop`, over one kept-alive HTTP/1.1 or HTTP/2
/// connection; returns the versions seen, in order, counts failures, and
/// counts in `done` every request that has completed.
async fn client(
    addr: std::net::SocketAddr,
    h2: bool,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
) -> Vec<String> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    enum Sender {
        H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
        H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    }
    let mut sender = if h2 {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Sender::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Sender::H1(s)
    };
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let req = hyper::Request::get(format!("http://gw/{}", seen.len()))
            .header("host", "gw")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = match &mut sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        };
        match resp {
            Ok(resp) if resp.status() == 200 => {
                let v = resp
                    .headers()
                    .get("x-version")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                let _ = resp.into_body().collect().await;
                seen.push(v);
            }
            _ => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_module_swaps_under_load_fail_no_request_and_free_old_versions() {
    let logs = wasmgate_tests::capture_logs();
    let up = Upstream::start("u").await;
    // A filter name no other test uses: the compile log lines counted below
    // are this gateway's (the log capture is shared by every test).
    let name = "fifty-swaps";
    let gw = start_gateway(&named_config(&up, name, artifacts::VERSION_A, "")).await;
    let builds = [module(artifacts::VERSION_A), module(artifacts::VERSION_B)];
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done: Vec<_> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(client(
                gw.addr(),
                i % 2 == 1,
                stop.clone(),
                failures.clone(),
                done[i].clone(),
            ))
        })
        .collect();
    // 50 swaps, alternating the builds: b, a, b, ... (the first is a).
    let path = format!("/filters/{name}/module");
    for i in 0..50 {
        let bytes = builds[(i + 1) % 2].clone();
        let r = admin(&gw, "PUT", &path, Some(TOKEN), bytes, &[]).await;
        assert_eq!(r.status, 200, "swap {i}: {}", r.body);
        assert_eq!(r.json()["version"], i + 2);
    }
    // The last swap activated build a (version 51). Every client completes
    // two more requests: the second of them was sent after the swap.
    let at_swap: Vec<usize> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
    within(
        "every client to send a request after the last swap",
        async {
            while done
                .iter()
                .zip(&at_swap)
                .any(|(d, &n)| d.load(Ordering::SeqCst) < n + 2)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let seen = within("client", c).await.unwrap();
        assert!(!seen.is_empty());
        for v in &seen {
            assert!(
                v == "aa" || v == "bb",
                "every response ran on exactly one version, got {v:?}"
            );
        }
        assert_eq!(
            seen.last().map(String::as_str),
            Some("aa"),
            "after the last swap only the last version answers"
        );
        total += seen.len();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed");
    assert!(
        total > 50,
        "the swaps happened under load ({total} requests)"
    );
    // Only the first swap to each build compiled it (the start loaded a,
    // the first swap b): swapping back reuses the compiled code of the same
    // bytes.
    let filter = format!("filter=\"{name}\"");
    let loaded = logs.lines_with(&["filter module loaded", &filter]);
    let reused = loaded.iter().filter(|l| l.contains("cache=Memory")).count();
    assert_eq!(loaded.len(), 51, "one load per version: {loaded:#?}");
    assert_eq!(reused, 49, "{reused} swaps reused compiled code");
    // Old versions are freed once their requests are done.
    let m = gw.metrics_text();
    assert_eq!(
        metric(
            &m,
            &format!("wasmgate_filter_versions_live{{filter=\"{name}\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    gw.shutdown().await;
}

/// Two routes through the `fault` filter, each with its own config.
fn two_routes(up: &Upstream, tag_a: &str, tag_b: &str) -> wasmgate::config::Config {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n[filters.fault]\npath = {:?}\npool_size = 2\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\ncluster = \"c\"\nfilters = [{{ name = \"fault\", config = {{ tag = \"{tag_a}\" }} }}]\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\ncluster = \"c\"\nfilters = [{{ name = \"fault\", config = {{ tag = \"{tag_b}\" }} }}]\n",
        artifacts::FAULT,
        up.addr
    );
    wasmgate::config::Config::parse(&toml, "test.toml", std::path::Path::new(".")).unwrap()
}

/// The instance that served the upstream's last request, and its tag.
fn last_instance(up: &Upstream) -> (String, String) {
    let seen = up.seen();
    let h = &seen.last().unwrap().headers;
    (
        h["x-instance"].to_str().unwrap().to_owned(),
        h["x-fault-seen"].to_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_reload_rebuilds_only_the_route_filters_whose_config_changed() {
    let up = Upstream::start("u").await;
    wasmgate_tests::hermetic();
    let gw = wasmgate::Gateway::build(two_routes(&up, "a1", "b1"))
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    assert_eq!(get(gw.addr(), "/a", &[]).await.status, 200);
    let (a_before, _) = last_instance(&up);
    assert_eq!(get(gw.addr(), "/b", &[]).await.status, 200);
    let (b_before, _) = last_instance(&up);
    // Only route b's config of the filter changes.
    gw.live()
        .apply_config(two_routes(&up, "a1", "b2"))
        .await
        .unwrap();
    // Route a keeps its pool: the same (warm) instance serves it.
    assert_eq!(get(gw.addr(), "/a", &[]).await.status, 200);
    assert_eq!(last_instance(&up), (a_before, "a1".to_owned()));
    // Route b's filter was set up again with the new config.
    assert_eq!(get(gw.addr(), "/b", &[]).await.status, 200);
    let (b_after, tag) = last_instance(&up);
    assert_eq!(tag, "b2");
    assert_ne!(b_after, b_before, "a new instance, initialised with b2");
    gw.shutdown().await;
}
