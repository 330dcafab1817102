//! The filter store's versions under traffic: canary releases (an exact
//! deterministic share, or requests carrying a header), promotion and
//! rollback by hand, automatic rollback of a failing canary, many swaps
//! freeing their versions, and the store surviving a restart through the
//! data directory.

use std::time::Duration;

use wasmgate_tests::{Reply, Upstream, artifacts, get, metric, start_gateway, within};

const TOKEN: &str = "admin-secret-0123456789";

async fn admin(gw: &wasmgate_tests::RunningGateway, method: &str, path: &str, body: &str) -> Reply {
    let addr = gw.admin_addr().expect("admin listener");
    let auth = format!("Bearer {TOKEN}");
    wasmgate_tests::send_body(
        addr,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.as_bytes().to_vec(),
    )
    .await
}

async fn upload(gw: &wasmgate_tests::RunningGateway, path: &str, bytes: Vec<u8>) -> Reply {
    let addr = gw.admin_addr().expect("admin listener");
    let auth = format!("Bearer {TOKEN}");
    wasmgate_tests::send_body(addr, "PUT", path, &[("authorization", &auth)], bytes).await
}

/// Filter `v` (build a from its file) on route `/`; request ids from
/// loopback are believed, so tests choose them; `extra` is appended.
fn config(up: &Upstream, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{extra}\n[access_log]\nenabled = false\n[engine]\nmax_instances = 64\n[filters.v]\npath = {:?}\npool_size = 4\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\ncluster = \"c\"\nfilters = [{{ name = \"v\" }}]\n",
        artifacts::VERSION_A,
        up.addr
    )
}

fn build_b() -> Vec<u8> {
    std::fs::read(artifacts::VERSION_B).unwrap()
}

/// The documented split, computed independently of the gateway.
fn takes(percent: u64, key: &str) -> bool {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % 10_000 < percent * 100
}

async fn version_of(gw: &wasmgate_tests::RunningGateway, headers: &[(&str, &str)]) -> String {
    let r = get(gw.addr(), "/", headers).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.header("x-version").unwrap_or("none").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_canary_takes_exactly_its_share_and_is_promoted_or_rolled_back() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;

    // Stored, not activated: version 2, and version 1 keeps serving.
    let stored = upload(&gw, "/filters/v/module?activate=false", build_b()).await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(stored.json()["version"], 1, "{}", stored.body);
    assert_eq!(
        stored.json()["versions"][1]["version"],
        2,
        "{}",
        stored.body
    );
    assert_eq!(version_of(&gw, &[]).await, "aa");

    // Bad canaries are refused, with the reason; nothing changes.
    for (body, status, code) in [
        (r#"{"version":2}"#, 400, "invalid_canary"),
        (
            r#"{"version":2,"percent":10,"header":"x"}"#,
            400,
            "invalid_canary",
        ),
        (r#"{"version":1,"percent":10}"#, 400, "invalid_canary"),
        (r#"{"version":9,"percent":10}"#, 404, "unknown_version"),
        (r#"{"version":2,"percentage":10}"#, 400, "invalid_json"),
    ] {
        let r = admin(&gw, "PUT", "/filters/v/canary", body).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.json()["code"], code, "{body}: {}", r.body);
    }
    let r = admin(&gw, "POST", "/filters/v/promote", "").await;
    assert_eq!(r.status, 409, "nothing to promote: {}", r.body);

    let r = admin(
        &gw,
        "PUT",
        "/filters/v/canary",
        r#"{"version":2,"percent":10}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["canary"]["version"], 2, "{}", r.body);

    // Every request goes where the documented hash says, so the share is
    // exactly the one predicted.
    let mut expected = 0;
    let mut got = 0;
    for i in 0..1000 {
        let id = format!("req-{i}");
        let v = version_of(&gw, &[("x-request-id", &id)]).await;
        let want = if takes(10, &id) { "bb" } else { "aa" };
        assert_eq!(v, want, "request {id}");
        expected += usize::from(takes(10, &id));
        got += usize::from(v == "bb");
    }
    assert_eq!(got, expected);
    assert!((70..130).contains(&got), "about 10 %: {got} of 1000");
    let report = admin(&gw, "GET", "/filters/v", "").await.json();
    assert_eq!(report["versions"][1]["requests"]["ok"], got, "{report}");
    assert_eq!(
        report["versions"][0]["requests"]["ok"],
        1001 - got,
        "{report}"
    );
    let m = gw.metrics_text();
    assert_eq!(
        metric(
            &m,
            "wasmgate_filter_version_requests_total{filter=\"v\",version=\"2\",outcome=\"ok\"}"
        ),
        Some(got as f64),
        "{m}"
    );

    // A header canary: exactly the requests carrying the header.
    let r = admin(
        &gw,
        "PUT",
        "/filters/v/canary",
        r#"{"version":2,"header":"x-canary","value":"yes"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for i in 0..20 {
        let id = format!("h-{i}");
        assert_eq!(version_of(&gw, &[("x-request-id", &id)]).await, "aa");
        assert_eq!(
            version_of(&gw, &[("x-request-id", &id), ("x-canary", "yes")]).await,
            "bb"
        );
        assert_eq!(version_of(&gw, &[("x-canary", "no")]).await, "aa");
    }

    // Promote: version 2 answers everything.
    let r = admin(&gw, "POST", "/filters/v/promote", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 2);
    assert!(r.json()["canary"].is_null(), "{}", r.body);
    assert_eq!(version_of(&gw, &[]).await, "bb");
    // Roll back with no canary: back to the version before.
    let r = admin(&gw, "POST", "/filters/v/rollback", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 1);
    assert_eq!(version_of(&gw, &[]).await, "aa");
    // Activate by number.
    let r = admin(&gw, "POST", "/filters/v/activate", r#"{"version":2}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(version_of(&gw, &[]).await, "bb");
    let r = admin(&gw, "POST", "/filters/v/activate", r#"{"version":7}"#).await;
    assert_eq!(r.status, 404, "{}", r.body);
    // A canary rolled back by hand: the current version takes everything.
    let r = admin(
        &gw,
        "PUT",
        "/filters/v/canary",
        r#"{"version":1,"percent":50}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin(&gw, "POST", "/filters/v/rollback", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["version"],
        2,
        "a canary rollback keeps the current version"
    );
    for i in 0..50 {
        let id = format!("after-{i}");
        assert_eq!(version_of(&gw, &[("x-request-id", &id)]).await, "bb");
    }
    // Without the token: refused.
    let addr = gw.admin_addr().unwrap();
    for (method, path) in [
        ("PUT", "/filters/v/canary"),
        ("POST", "/filters/v/promote"),
        ("POST", "/filters/v/rollback"),
        ("POST", "/filters/v/activate"),
        ("GET", "/filters/v"),
    ] {
        let r = wasmgate_tests::send_body(addr, method, path, &[], b"{}".to_vec()).await;
        assert_eq!(r.status, 401, "{method} {path}");
    }
    let m = gw.metrics_text();
    for (event, n) in [("started", 3.0), ("promoted", 1.0), ("rolled_back", 1.0)] {
        assert_eq!(
            metric(
                &m,
                &format!("wasmgate_filter_canary_events_total{{filter=\"v\",event=\"{event}\"}}")
            ),
            Some(n),
            "{event}: {m}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_canary_is_rolled_back_on_its_own() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let r = upload(&gw, "/filters/v/module?activate=false", build_b()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin(
        &gw,
        "PUT",
        "/filters/v/canary",
        r#"{"version":2,"percent":50,"rollback":{"max_error_rate":0.2,"min_requests":10,"window":"1m"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Build b traps on these requests; build a does not. Send until the
    // gateway has rolled the canary back.
    let mut failed = 0;
    let rolled_back = within("automatic rollback", async {
        let mut i = 0;
        loop {
            let id = format!("trap-{i}");
            i += 1;
            let r = get(gw.addr(), "/", &[("x-request-id", &id), ("x-trap", "b")]).await;
            if r.status == 200 {
                assert_eq!(r.header("x-version"), Some("aa"));
            } else {
                assert!(takes(50, &id), "only the canary's requests fail: {id}");
                failed += 1;
            }
            let report = admin(&gw, "GET", "/filters/v", "").await.json();
            if report["canary"].is_null() {
                return report;
            }
        }
    })
    .await;
    assert_eq!(rolled_back["version"], 1, "{rolled_back}");
    assert!(failed >= 10, "it waited for min_requests: {failed}");
    assert_eq!(
        rolled_back["versions"][1]["requests"]["filter_failed"], failed,
        "{rolled_back}"
    );
    // Everything is served by the current version again.
    for i in 0..50 {
        let id = format!("after-{i}");
        let r = get(gw.addr(), "/", &[("x-request-id", &id), ("x-trap", "b")]).await;
        assert_eq!((r.status, r.header("x-version")), (200, Some("aa")), "{id}");
    }
    let m = gw.metrics_text();
    assert_eq!(
        metric(
            &m,
            "wasmgate_filter_canary_events_total{filter=\"v\",event=\"auto_rolled_back\"}"
        ),
        Some(1.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_swaps_leave_one_live_version_and_a_bounded_store() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let builds = [std::fs::read(artifacts::VERSION_A).unwrap(), build_b()];
    for i in 0..200 {
        let r = upload(&gw, "/filters/v/module", builds[(i + 1) % 2].clone()).await;
        assert_eq!(r.status, 200, "swap {i}: {}", r.body);
        // A request on every version, so each is used before it is dropped.
        let want = if i % 2 == 0 { "bb" } else { "aa" };
        assert_eq!(version_of(&gw, &[]).await, want, "swap {i}");
    }
    let report = admin(&gw, "GET", "/filters/v", "").await.json();
    assert_eq!(report["version"], 201, "{report}");
    assert_eq!(
        report["versions"].as_array().unwrap().len(),
        8,
        "the store keeps the last 8 versions: {report}"
    );
    within("old versions freed", async {
        loop {
            let m = gw.metrics_text();
            if metric(&m, "wasmgate_filter_versions_live{filter=\"v\"}") == Some(1.0) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Counters of dropped versions are not exported any more.
    let m = gw.metrics_text();
    let series = m
        .lines()
        .filter(|l| l.starts_with("wasmgate_filter_version_requests_total{"))
        .count();
    assert_eq!(series, 8 * 3, "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_store_and_an_api_config_survive_a_restart() {
    wasmgate_tests::hermetic();
    let dir = std::env::temp_dir().join(format!("wasmgate-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let up = Upstream::start("u").await;
    let data = format!("data_dir = {:?}", dir.join("state").display().to_string());
    let file_config = config(&up, &data);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, &file_config).unwrap();
    let start = || async {
        let config = wasmgate::config::Config::load(&file).unwrap();
        let gw = wasmgate::Gateway::build(config)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(gw.start().await.unwrap())
    };

    let gw = start().await.unwrap();
    // A config through the API (one more route), a new version, a canary of
    // the old one.
    let api_config = format!(
        "{file_config}[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nrespond = {{ status = 204 }}\n"
    );
    let r = admin(&gw, "PUT", "/config", &api_config).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = upload(&gw, "/filters/v/module", build_b()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin(
        &gw,
        "PUT",
        "/filters/v/canary",
        r#"{"version":1,"percent":10}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let before = admin(&gw, "GET", "/filters/v", "").await.json();
    gw.shutdown().await;

    // Restarted from the same file: the API's config, versions and canary
    // come back.
    let gw = start().await.unwrap();
    let after = admin(&gw, "GET", "/filters/v", "").await.json();
    for key in ["version", "sha256", "pinned", "previous"] {
        assert_eq!(after[key], before[key], "{key}: {after}");
    }
    assert_eq!(after["canary"]["version"], 1, "{after}");
    assert_eq!(after["canary"]["percent"], 10.0, "{after}");
    let shas = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["sha256"].clone())
            .collect()
    };
    assert_eq!(shas(&after), shas(&before));
    assert_eq!(get(gw.addr(), "/extra", &[]).await.status, 204);
    for i in 0..40 {
        let id = format!("r-{i}");
        let want = if takes(10, &id) { "aa" } else { "bb" };
        assert_eq!(version_of(&gw, &[("x-request-id", &id)]).await, want);
    }
    // Back to the file: the API config is dropped, the store stays.
    let r = admin(&gw, "POST", "/config/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // (An id the 10 % canary of version 1 does not take.)
    let id = (0..)
        .map(|i| format!("x-{i}"))
        .find(|id| !takes(10, id))
        .unwrap();
    assert_eq!(
        get(gw.addr(), "/extra", &[("x-request-id", &id)])
            .await
            .header("x-version"),
        Some("bb")
    );
    gw.shutdown().await;

    // A damaged module file stops the start, naming it.
    let modules = dir.join("state").join("modules");
    for f in std::fs::read_dir(&modules).unwrap() {
        std::fs::write(f.unwrap().path(), b"not the module").unwrap();
    }
    let err = start().await.unwrap_err();
    assert!(err.contains("damaged") && err.contains("modules"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_megabyte_module_swaps_in_and_back() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let large = std::fs::read(artifacts::VERSION_LARGE).unwrap();
    assert!(large.len() > 4 << 20, "{} bytes", large.len());
    let r = upload(&gw, "/filters/v/module", large).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = get(gw.addr(), "/", &[]).await;
    assert_eq!(reply.header("x-version"), Some("ll"));
    assert!(
        reply.header("x-table-byte").is_some(),
        "the table is read at run time"
    );
    let r = admin(&gw, "POST", "/filters/v/rollback", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(version_of(&gw, &[]).await, "aa");
    gw.shutdown().await;
}

/// `config` plus filter `k` (api-key) guarding route `/guarded` in front of
/// `v`, and filter `w` from `w_path`.
fn two_filter_config(up: &Upstream, w_path: &std::path::Path, extra: &str) -> String {
    format!(
        "{}[filters.k]\npath = {:?}\n[filters.w]\npath = {:?}\n[[routes]]\nname = \"guarded\"\npath_prefix = \"/guarded\"\ncluster = \"c\"\n[[routes.filters]]\nname = \"k\"\nconfig = {{ header = \"x-api-key\", keys = [\"good-key\"] }}\n[[routes.filters]]\nname = \"v\"\n[[routes]]\nname = \"w\"\npath_prefix = \"/w\"\ncluster = \"c\"\nfilters = [{{ name = \"w\" }}]\n",
        config(up, extra),
        artifacts::API_KEY,
        w_path.display().to_string()
    )
}

#[tokio::test]
async fn version_changes_read_no_files_count_only_requests_that_reached_the_filter_and_never_reuse_numbers()
 {
    let dir = std::env::temp_dir().join(format!("wasmgate-vc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w_path = dir.join("w.wasm");
    std::fs::copy(artifacts::VERSION_A, &w_path).unwrap();
    let up = Upstream::start("u").await;
    let toml = two_filter_config(&up, &w_path, "");
    let gw = start_gateway(&toml).await;
    let r = upload(&gw, "/filters/v/module?activate=false", build_b()).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Filter w's file is being rewritten (half of it so far): a version
    // change of v neither fails on it nor picks it up.
    let whole = std::fs::read(&w_path).unwrap();
    std::fs::write(&w_path, &whole[..whole.len() / 2]).unwrap();
    let r = admin(
        &gw,
        "PUT",
        "/filters/v/canary",
        r#"{"version":2,"header":"x-canary"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let w = admin(&gw, "GET", "/filters/w", "").await.json();
    assert_eq!(w["versions"].as_array().unwrap().len(), 1, "{w}");
    // A config reload does read it, and refuses the half-written file.
    let r = admin(&gw, "PUT", "/config", &toml).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.json()["errors"][0]["path"],
        "filters.w.path",
        "{}",
        r.body
    );
    std::fs::write(&w_path, &whole).unwrap();

    // Requests the api-key filter turns away never reach v's canary.
    for i in 0..30 {
        let id = format!("k-{i}");
        let r = get(
            gw.addr(),
            "/guarded",
            &[("x-request-id", &id), ("x-canary", "1")],
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let ok = get(
        gw.addr(),
        "/guarded",
        &[("x-api-key", "good-key"), ("x-canary", "1")],
    )
    .await;
    assert_eq!(ok.header("x-version"), Some("bb"));
    let report = admin(&gw, "GET", "/filters/v", "").await.json();
    assert_eq!(report["versions"][1]["requests"]["ok"], 1, "{report}");
    assert_eq!(report["canary"]["window"]["requests"], 1, "{report}");

    // Filter w leaves the config, then comes back: a new number, not 1.
    let without_w = toml
        .replace("[filters.w]", "[filters.unused]")
        .replace("filters = [{ name = \"w\" }]", "");
    let r = admin(&gw, "PUT", "/config", &without_w).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin(&gw, "PUT", "/config", &toml).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let w = admin(&gw, "GET", "/filters/w", "").await.json();
    assert_eq!(w["version"], 2, "{w}");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_change_the_data_directory_cannot_keep_is_refused_whole() {
    let dir = std::env::temp_dir().join(format!("wasmgate-unwritable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let up = Upstream::start("u").await;
    let data = format!("data_dir = {:?}", dir.display().to_string());
    let gw = start_gateway(&config(&up, &data)).await;
    // state.json cannot be replaced: a folder stands in its way.
    std::fs::remove_file(dir.join("state.json")).unwrap();
    std::fs::create_dir_all(dir.join("state.json").join("x")).unwrap();
    let r = upload(&gw, "/filters/v/module", build_b()).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["code"], "data_dir_unwritable", "{}", r.body);
    assert_eq!(version_of(&gw, &[]).await, "aa", "nothing changed");
    let report = admin(&gw, "GET", "/filters/v", "").await.json();
    assert_eq!(report["versions"].as_array().unwrap().len(), 1, "{report}");
    let m = gw.metrics_text();
    assert!(
        !m.contains("version=\"2\""),
        "no counters for the refused version: {m}"
    );
    // Once it can be written again, the same upload goes through.
    std::fs::remove_dir_all(dir.join("state.json")).unwrap();
    let r = upload(&gw, "/filters/v/module", build_b()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 2, "{}", r.body);
    assert_eq!(version_of(&gw, &[]).await, "bb");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn check_leaves_the_data_directory_alone_and_a_changed_admin_section_wins_over_a_kept_config()
{
    wasmgate_tests::hermetic();
    let dir = std::env::temp_dir().join(format!("wasmgate-kept-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let up = Upstream::start("u").await;
    let data = format!("data_dir = {:?}", dir.display().to_string());
    let toml = config(&up, &data);
    let parse = |t: &str| {
        wasmgate::config::Config::parse(t, "test.toml", std::path::Path::new(".")).unwrap()
    };
    wasmgate::Gateway::check(parse(&toml)).await.unwrap();
    assert!(!dir.exists(), "check did not create the data directory");

    let gw = start_gateway(&toml).await;
    let with_extra = format!(
        "{toml}[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nrespond = {{ status = 204 }}\n"
    );
    let r = admin(&gw, "PUT", "/config", &with_extra).await;
    assert_eq!(r.status, 200, "{}", r.body);
    gw.shutdown().await;

    // The operator rotates the admin token in the file and restarts: the
    // file is what runs (the new token works, the old does not), and the
    // config kept from the API is dropped.
    let rotated = toml.replace(TOKEN, "a-brand-new-token-0123456789");
    let gw = start_gateway(&rotated).await;
    assert_eq!(
        get(gw.addr(), "/extra", &[]).await.header("x-version"),
        Some("aa")
    );
    let addr = gw.admin_addr().unwrap();
    let new = wasmgate_tests::send_body(
        addr,
        "GET",
        "/filters",
        &[("authorization", "Bearer a-brand-new-token-0123456789")],
        Vec::new(),
    )
    .await;
    assert_eq!(new.status, 200);
    assert_eq!(admin(&gw, "GET", "/filters", "").await.status, 401);
    gw.shutdown().await;
    let saved = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(saved.contains("\"config\": null"), "{saved}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A canary has pools of its own, which config validation (it knows no
/// canaries) did not count: one that would not fit the engine's instances
/// is refused, naming the limit, and the current version keeps serving,
/// rather than the canary taking instances other filters were promised.
#[tokio::test]
async fn a_canary_that_does_not_fit_the_engine_is_refused() {
    let up = Upstream::start("u").await;
    // Pools of 4, and 6 instances: the stable arm and a spare fit, a
    // second arm of 4 does not.
    let gw =
        start_gateway(&config(&up, "").replace("max_instances = 64", "max_instances = 6")).await;
    let stored = upload(&gw, "/filters/v/module?activate=false", build_b()).await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    let r = admin(
        &gw,
        "PUT",
        "/filters/v/canary",
        r#"{"version":2,"percent":50}"#,
    )
    .await;
    assert!(r.status >= 400, "{}", r.body);
    assert!(
        r.body.contains("engine.max_instances") && r.body.contains("canaries of v"),
        "{}",
        r.body
    );
    assert_eq!(
        version_of(&gw, &[]).await,
        "aa",
        "the current version serves on"
    );
    let report = admin(&gw, "GET", "/filters/v", "").await.json();
    assert!(report["canary"].is_null(), "{report}");
    gw.shutdown().await;
}
