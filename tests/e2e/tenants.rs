//! Tenants sharing one gateway (issue 17): each with its own host names,
//! routes, clusters and filters under the same names as the others', served
//! by its own, its data out of the others' reach, and changed or refused
//! without touching the others.

use std::path::{Path, PathBuf};

use wasmgate_tests::{Upstream, artifacts, get, metric, start_gateway_from};

/// A fresh folder with `gateway.toml` (tenants in `tenants/`) and the
/// tenants' files.
pub(crate) fn layout(name: &str, main: &str, tenants: &[(&str, &str)]) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "wasmgate-e2e-tenants-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("tenants")).unwrap();
    std::fs::write(d.join("gateway.toml"), main).unwrap();
    for (t, text) in tenants {
        write_tenant(&d, t, text);
    }
    d
}

pub(crate) fn write_tenant(d: &Path, name: &str, text: &str) {
    std::fs::write(d.join("tenants").join(format!("{name}.toml")), text).unwrap();
}

const MAIN: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
                    [engine]\nmax_instances = 16\n[tenants]\ndir = \"tenants\"\n\
                    allow = [\"127.0.0.0/8\"]\n";

/// A tenant named by `hosts` whose cluster `api` is `up`, with filter `f`
/// (the fault guest) on route `r`, tagged `tag`, and filter `f`'s
/// outbound calls granted to `api`.
fn shop(hosts: &str, up: &Upstream, tag: &str) -> String {
    format!(
        "hosts = {hosts}\n\
         [filters.f]\npath = {fault:?}\npool_size = 1\noutbound_clusters = [\"api\"]\n\
         reroute_clusters = [\"api\"]\n\
         [clusters.api]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\ncluster = \"api\"\nfilters = [{{ name = \"f\", config = {{ tag = \"{tag}\" }} }}]\n",
        up.addr,
        fault = artifacts::FAULT,
    )
}

#[tokio::test]
async fn tenants_with_the_same_names_are_each_served_by_their_own() {
    let (ua, ub) = (
        Upstream::start("a-api").await,
        Upstream::start("b-api").await,
    );
    let d = layout(
        "served",
        MAIN,
        &[
            ("a", &shop("[\"a.example\", \"*.shop.example\"]", &ua, "A")),
            // An exact name under a's wildcard is b's.
            ("b", &shop("[\"b.shop.example\"]", &ub, "B")),
        ],
    );
    // This one logs its requests, to a file.
    let log = d.join("access.log");
    std::fs::write(
        d.join("gateway.toml"),
        MAIN.replace(
            "[access_log]\nenabled = false\n",
            &format!("[access_log]\npath = {:?}\n", log.display().to_string()),
        ),
    )
    .unwrap();
    let gw = start_gateway_from(&d.join("gateway.toml")).await;
    let host = |h: &'static str| [("host", h)];

    for (h, tag, up) in [
        ("a.example", "A", &ua),
        ("x.shop.example", "A", &ua),
        ("b.shop.example", "B", &ub),
        ("B.Shop.Example:8080", "B", &ub),
    ] {
        let before = up.count();
        let r = get(gw.addr(), "/p", &[("host", h)]).await;
        assert_eq!(r.status, 200, "{h}: {}", r.body);
        assert_eq!(up.count(), before + 1, "{h} went to its tenant's cluster");
        let seen = up.seen();
        let last = seen.last().unwrap();
        assert_eq!(
            last.headers["x-fault-seen"], tag,
            "{h} ran its tenant's filter"
        );
    }

    // A name no tenant claims, without a default tenant: the standard 404,
    // which names no host.
    let r = get(gw.addr(), "/p", &host("other.example")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["code"], "route_not_found");
    assert!(!r.body.contains("example"), "{}", r.body);

    // kv: one filter name, two tenants, two namespaces.
    let fault = |mode: &'static str| [("x-fault", mode)];
    let put = get(
        gw.addr(),
        "/p",
        &[("host", "a.example"), fault("kv-put")[0]],
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let read = |h: &'static str| {
        let addr = gw.addr();
        async move {
            get(addr, "/p", &[("host", h), ("x-fault", "kv-get")]).await;
        }
    };
    read("b.shop.example").await;
    assert_eq!(
        ub.seen().last().unwrap().headers["x-secret"],
        "none",
        "b cannot see a's value"
    );
    // Nor through any key b's filter forms, separators and all.
    for key in [
        "a/f/secret",
        "a/secret",
        "a:f:secret",
        "a\\f\\secret",
        "../a/f/secret",
        "f/secret",
        "default/f/secret",
        "a%2Ff%2Fsecret",
    ] {
        let h = [
            ("host", "b.shop.example"),
            ("x-fault", "kv-get-key"),
            ("x-fault-arg", key),
        ];
        assert_eq!(get(gw.addr(), "/p", &h).await.status, 200, "{key}");
        assert_eq!(
            ub.seen().last().unwrap().headers["x-secret"],
            "none",
            "{key}"
        );
    }
    read("a.example").await;
    assert_eq!(ua.seen().last().unwrap().headers["x-secret"], "A");

    // Outbound calls go to the caller's own `api`.
    let (a_before, b_before) = (ua.count(), ub.count());
    let r = get(
        gw.addr(),
        "/p",
        &[
            ("host", "b.shop.example"),
            ("x-fault", "outbound-to"),
            ("x-fault-arg", "api"),
        ],
    )
    .await;
    assert!(r.body.starts_with("status=200"), "{}", r.body);
    assert_eq!((ua.count(), ub.count()), (a_before, b_before + 1));

    // So do reroutes: `api` is the caller's own.
    let (a_before, b_before) = (ua.count(), ub.count());
    let r = get(
        gw.addr(),
        "/p",
        &[
            ("host", "b.shop.example"),
            ("x-fault", "reroute"),
            ("x-fault-arg", "api"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((ua.count(), ub.count()), (a_before, b_before + 1));
    assert_eq!(ub.seen().last().unwrap().path, "/rerouted");

    // The access log names each request's tenant.
    wasmgate_tests::within("the access log lines", async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tenants: Vec<String> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["tenant"].as_str().map(str::to_owned))
                .collect();
            if ["a", "b", "default"]
                .iter()
                .all(|t| tenants.iter().any(|x| x == t))
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;

    // Metrics carry the tenant.
    let text = gw.metrics_text();
    for t in ["a", "b"] {
        let sample = format!(
            "wasmgate_requests_total{{tenant=\"{t}\",route=\"r\",cluster=\"api\",status_class=\"2xx\"}}"
        );
        assert!(
            metric(&text, &sample).unwrap_or(0.0) >= 2.0,
            "{sample}\n{text}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_tenant_is_refused_alone_and_a_change_probes_only_its_own_filters() {
    let (ua, ub) = (
        Upstream::start("a-api").await,
        Upstream::start("b-api").await,
    );
    let d = layout(
        "apart",
        MAIN,
        &[
            ("a", &shop("[\"a.example\"]", &ua, "A")),
            ("b", &shop("[\"b.example\"]", &ub, "B")),
        ],
    );
    let gw = start_gateway_from(&d.join("gateway.toml")).await;
    let probes = |t: &str| {
        metric(
            &gw.metrics_text(),
            &format!("wasmgate_filter_probes_total{{tenant=\"{t}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (a0, b0) = (probes("a"), probes("b"));
    assert!(
        a0 >= 1.0 && b0 >= 1.0,
        "each tenant's filter was probed at start"
    );
    let tag = |h: &'static str| {
        let addr = gw.addr();
        async move {
            let r = get(addr, "/p", &[("host", h)]).await;
            assert_eq!(r.status, 200, "{h}: {}", r.body);
        }
    };

    // b's file breaks in three ways, one at a time; each time b keeps
    // serving as it did, a is untouched, and the refusal names b's file.
    let broken = [
        "hosts = [\"b.example\"\n".to_owned(),
        shop("[\"a.example\"]", &ub, "B2"),
        shop("[\"b.example\"]", &ub, "B2").replace("tag = \"B2\"", "fail_init = true"),
    ];
    for (i, text) in broken.iter().enumerate() {
        write_tenant(&d, "b", text);
        let refused = gw
            .live()
            .reload_from(&d.join("gateway.toml"))
            .await
            .unwrap_or_else(|e| panic!("the main config is fine: {e}"));
        assert_eq!(refused.len(), 1, "case {i}: {refused:?}");
        assert_eq!(refused[0].0, "b", "case {i}");
        assert!(
            refused[0].1.source.ends_with("b.toml"),
            "case {i}: {}",
            refused[0].1
        );
        tag("b.example").await;
        assert_eq!(
            ub.seen().last().unwrap().headers["x-fault-seen"],
            "B",
            "case {i}"
        );
        tag("a.example").await;
        assert_eq!(probes("a"), a0, "case {i}: a's filter was not probed again");
    }
    let refusals = metric(
        &gw.metrics_text(),
        "wasmgate_tenant_config_refused_total{tenant=\"b\"}",
    );
    assert_eq!(refusals, Some(3.0));

    // A good change to b probes b's filter, not a's.
    write_tenant(&d, "b", &shop("[\"b.example\"]", &ub, "B2"));
    let refused = gw
        .live()
        .reload_from(&d.join("gateway.toml"))
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    tag("b.example").await;
    assert_eq!(ub.seen().last().unwrap().headers["x-fault-seen"], "B2");
    assert_eq!(probes("a"), a0);
    assert!(probes("b") > b0);

    // Removing b: its names are no one's now, and its data goes with it;
    // a's stays.
    for h in ["a.example", "b.example"] {
        let r = get(gw.addr(), "/p", &[("host", h), ("x-fault", "kv-put")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let main = d.join("gateway.toml");
    let reload = || gw.live().reload_from(&main);
    std::fs::remove_file(d.join("tenants").join("b.toml")).unwrap();
    assert!(reload().await.unwrap().is_empty());
    assert_eq!(
        get(gw.addr(), "/p", &[("host", "b.example")]).await.status,
        404
    );
    tag("a.example").await;
    let text = gw.metrics_text();
    let left: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tenant=\"b\"") || l.contains("\"b/f\""))
        .collect();
    assert!(left.is_empty(), "b's series are gone: {left:#?}");
    assert!(text.contains("tenant=\"a\""));
    // b again, under the same name: it starts empty.
    write_tenant(&d, "b", &shop("[\"b.example\"]", &ub, "B3"));
    assert!(reload().await.unwrap().is_empty());
    get(
        gw.addr(),
        "/p",
        &[("host", "b.example"), ("x-fault", "kv-get")],
    )
    .await;
    assert_eq!(ub.seen().last().unwrap().headers["x-secret"], "none");
    get(
        gw.addr(),
        "/p",
        &[("host", "a.example"), ("x-fault", "kv-get")],
    )
    .await;
    assert_eq!(ua.seen().last().unwrap().headers["x-secret"], "A");
    gw.shutdown().await;
}

/// A tenant's cluster connects only where the operator lets tenants go,
/// judged on the address dialled: not loopback (the admin listener, the
/// gateway's own ports) unless `tenants.allow` names it, even through a
/// name that resolves there, and never another party's backend.
#[tokio::test]
async fn a_tenant_cluster_connects_only_where_the_operator_allows() {
    let up = Upstream::start("internal").await;
    let port = up.addr.port();
    let cluster = |endpoint: &str, hosts: &str| {
        format!(
            "hosts = [\"{hosts}\"]\n[clusters.api]\nendpoints = [\"{endpoint}\"]\n\
             [[routes]]\nname = \"r\"\ncluster = \"api\"\n"
        )
    };
    let main = "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
                [tenants]\ndir = \"tenants\"\n";
    let d = layout(
        "reach",
        main,
        &[
            ("a", &cluster(&up.addr.to_string(), "a.example")),
            ("b", &cluster(&format!("localhost:{port}"), "b.example")),
        ],
    );
    let gw = start_gateway_from(&d.join("gateway.toml")).await;
    for (t, h) in [("a", "a.example"), ("b", "b.example")] {
        let r = get(gw.addr(), "/", &[("host", h)]).await;
        assert_eq!(r.status, 502, "{t}: {}", r.body);
        assert_eq!(r.json()["code"], "upstream_address_denied", "{t}");
        assert!(
            !r.body.contains("127.0.0.1"),
            "the answer names no address: {}",
            r.body
        );
        let sample =
            format!("wasmgate_upstream_address_denied_total{{tenant=\"{t}\",cluster=\"api\"}}");
        assert_eq!(metric(&gw.metrics_text(), &sample), Some(1.0), "{sample}");
    }
    assert_eq!(up.count(), 0, "loopback was never reached");
    gw.shutdown().await;

    // Allowed by name, loopback is reachable; another party's address is
    // still not: written as an address it refuses the tenant, reached
    // through a name it is refused at connect.
    let main = format!("{main}allow = [\"127.0.0.1:{port}\"]\n");
    let d = layout(
        "reach-allowed",
        &main,
        &[
            ("a", &cluster(&up.addr.to_string(), "a.example")),
            ("b", &cluster(&format!("localhost:{port}"), "b.example")),
        ],
    );
    let gw = start_gateway_from(&d.join("gateway.toml")).await;
    assert_eq!(
        get(gw.addr(), "/", &[("host", "a.example")]).await.status,
        200
    );
    let r = get(gw.addr(), "/", &[("host", "b.example")]).await;
    assert_eq!(r.json()["code"], "upstream_address_denied", "{}", r.body);
    assert_eq!(up.count(), 1);
    write_tenant(&d, "c", &cluster(&up.addr.to_string(), "c.example"));
    let refused = gw
        .live()
        .reload_from(&d.join("gateway.toml"))
        .await
        .unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "c");
    assert!(
        refused[0].1.errors[0]
            .message
            .contains("is not an address this tenant may use"),
        "{}",
        refused[0].1
    );
    gw.shutdown().await;
}

/// The admin API per tenant: the operator makes tenant tokens (kept
/// hashed, two at a time) and puts API-managed tenants; a tenant's token
/// reads and changes its own tenant only, and everything else answers the
/// 404 of a path that does not exist.
#[tokio::test]
async fn tenant_tokens_reach_their_own_tenant_only() {
    use wasmgate_tests::send_body;
    let (ua, ub, uc) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let operator = "operator-token-0123456789";
    let d = layout(
        "admin",
        "",
        &[
            ("a", &shop("[\"a.example\"]", &ua, "A")),
            ("b", &shop("[\"b.example\"]", &ub, "B")),
        ],
    );
    let data = d.join("data");
    let main = format!(
        "{MAIN}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{operator}\"\ndata_dir = {:?}\n",
        data.display().to_string()
    );
    std::fs::write(d.join("gateway.toml"), &main).unwrap();
    let gw = start_gateway_from(&d.join("gateway.toml")).await;
    let admin = gw.admin_addr().unwrap();
    let call = |method: &'static str, path: String, token: String, body: String| async move {
        let auth = format!("Bearer {token}");
        send_body(
            admin,
            method,
            &path,
            &[("host", "localhost"), ("authorization", &auth)],
            body,
        )
        .await
    };
    let op = || operator.to_owned();

    // Tokens: made by the operator, shown once, two at a time.
    let made = call("POST", "/tenants/a/tokens".into(), op(), String::new()).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let token_a = made.json()["token"].as_str().unwrap().to_owned();
    let second = call("POST", "/tenants/a/tokens".into(), op(), String::new()).await;
    assert_eq!(second.status, 201);
    let third = call("POST", "/tenants/a/tokens".into(), op(), String::new()).await;
    assert_eq!(third.status, 409, "{}", third.body);
    let kept = std::fs::read_to_string(data.join("tenant-tokens.json")).unwrap();
    assert!(!kept.contains(&token_a), "only the hash is kept");

    // a's token: its own tenant.
    let own = call("GET", "/tenants/a".into(), token_a.clone(), String::new()).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.json()["name"], "a");
    assert!(
        own.json().get("tokens").is_none(),
        "tokens are the operator's to see"
    );
    let metrics = call(
        "GET",
        "/tenants/a/metrics".into(),
        token_a.clone(),
        String::new(),
    )
    .await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("tenant=\"a\""), "{}", metrics.body);
    assert!(!metrics.body.contains("tenant=\"b\""), "{}", metrics.body);
    // Everything else is the 404 of a path that does not exist.
    let missing = call(
        "GET",
        "/no/such/path".into(),
        token_a.clone(),
        String::new(),
    )
    .await;
    for (method, path) in [
        ("GET", "/tenants/b"),
        ("GET", "/tenants/b/config"),
        ("GET", "/tenants/zzz"),
        ("GET", "/tenants"),
        ("POST", "/tenants/a/tokens"),
        ("DELETE", "/tenants/a"),
        ("GET", "/routes"),
        ("GET", "/config"),
        ("GET", "/filters"),
        ("POST", "/config/reload"),
    ] {
        let r = call(method, path.into(), token_a.clone(), String::new()).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert_eq!(r.json()["code"], missing.json()["code"]);
        assert_eq!(
            r.json()["message"].as_str().unwrap().replace(path, "P"),
            missing.json()["message"]
                .as_str()
                .unwrap()
                .replace("/no/such/path", "P"),
            "{method} {path}"
        );
    }
    // A name that is not a tenant's is refused before anything is touched.
    for path in [
        "/tenants/../uploads",
        "/tenants/Shop/config",
        "/tenants/a%2F..%2Fb/uploads",
    ] {
        let r = call("PUT", path.into(), op(), "x".into()).await;
        assert!(
            matches!(r.status, 400 | 404),
            "{path}: {} {}",
            r.status,
            r.body
        );
    }
    assert!(!data.join("uploads").exists(), "nothing was written");
    // a is its file's: the API does not change it.
    let put = call(
        "PUT",
        "/tenants/a/config".into(),
        token_a.clone(),
        "hosts = [\"a.example\"]\n".into(),
    )
    .await;
    assert_eq!(put.status, 409, "{}", put.body);

    // Its filters' versions are its own to change: a module upload that
    // its route config refuses is refused, the same module again stored.
    let upload = |tenant: &'static str, token: String, path: &'static str| async move {
        let auth = format!("Bearer {token}");
        let bytes = std::fs::read(path).unwrap();
        send_body(
            admin,
            "PUT",
            &format!("/tenants/{tenant}/filters/f/module"),
            &[("host", "localhost"), ("authorization", &auth)],
            bytes,
        )
        .await
    };
    let wrong = upload("a", token_a.clone(), artifacts::HEADERS).await;
    assert_eq!(
        wrong.status, 422,
        "headers refuses fault's route config: {}",
        wrong.body
    );
    let same = upload("a", token_a.clone(), artifacts::FAULT).await;
    assert_eq!(same.status, 200, "{}", same.body);
    let report = call(
        "GET",
        "/tenants/a/filters/f".into(),
        token_a.clone(),
        String::new(),
    )
    .await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert_eq!(
        upload("b", token_a.clone(), artifacts::FAULT).await.status,
        404
    );
    let r = call(
        "POST",
        "/tenants/b/filters/f/rollback".into(),
        token_a.clone(),
        String::new(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        get(gw.addr(), "/p", &[("host", "a.example")]).await.status,
        200
    );

    // An API-managed tenant, put by the operator, changed by its own token.
    let c = |status: u16| {
        format!(
            "hosts = [\"c.example\"]\n[clusters.api]\nendpoints = [\"{}\"]\n\
             [[routes]]\nname = \"r\"\npath = \"/fixed\"\nrespond = {{ status = {status} }}\n\
             [[routes]]\nname = \"up\"\ncluster = \"api\"\n",
            uc.addr
        )
    };
    let put = call("PUT", "/tenants/c/config".into(), op(), c(201)).await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        get(gw.addr(), "/fixed", &[("host", "c.example")])
            .await
            .status,
        201
    );
    assert_eq!(
        get(gw.addr(), "/x", &[("host", "c.example")]).await.status,
        200
    );
    assert_eq!(uc.count(), 1);
    // One that names a module file on the host is refused, whole.
    let with_filter = format!("{}[filters.f]\npath = \"/etc/passwd\"\n", c(202));
    let refused = call("PUT", "/tenants/c/config".into(), op(), with_filter).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["errors"][0]["path"], "filters.f.path");
    let token_c = call("POST", "/tenants/c/tokens".into(), op(), String::new())
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = call("PUT", "/tenants/c/config".into(), token_c.clone(), c(203)).await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        get(gw.addr(), "/fixed", &[("host", "c.example")])
            .await
            .status,
        203
    );
    // Its filters' modules (and any file it names) are uploads, named by
    // their SHA-256.
    let auth = format!("Bearer {token_c}");
    let up = send_body(
        admin,
        "PUT",
        "/tenants/c/uploads",
        &[("host", "localhost"), ("authorization", &auth)],
        std::fs::read(artifacts::FAULT).unwrap(),
    )
    .await;
    assert_eq!(up.status, 200, "{}", up.body);
    let module = up.json()["ref"].as_str().unwrap().to_owned();
    assert!(module.starts_with("upload:"), "{module}");
    let with_upload = format!(
        "{}[filters.f]\npath = \"{module}\"\npool_size = 1\n",
        c(203).replace(
            "name = \"up\"\ncluster = \"api\"\n",
            "name = \"up\"\ncluster = \"api\"\nfilters = [{ name = \"f\", config = { tag = \"C\" } }]\n"
        )
    );
    let put = call(
        "PUT",
        "/tenants/c/config".into(),
        token_c.clone(),
        with_upload,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        get(gw.addr(), "/x", &[("host", "c.example")]).await.status,
        200
    );
    assert_eq!(uc.seen().last().unwrap().headers["x-fault-seen"], "C");
    let missing = format!(
        "{}[filters.f]\npath = \"upload:{}\"\n",
        c(203),
        "0".repeat(64)
    );
    let r = call("PUT", "/tenants/c/config".into(), token_c.clone(), missing).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("PUT /tenants/c/uploads first"),
        "{}",
        r.body
    );
    // A host another tenant holds is refused.
    let taken = call(
        "PUT",
        "/tenants/c/config".into(),
        token_c.clone(),
        c(204).replace("c.example", "a.example"),
    )
    .await;
    assert_eq!(taken.status, 400, "{}", taken.body);
    assert_eq!(
        get(gw.addr(), "/fixed", &[("host", "c.example")])
            .await
            .status,
        203
    );
    assert_eq!(
        get(gw.addr(), "/p", &[("host", "a.example")]).await.status,
        200
    );

    // Kept across a restart.
    gw.shutdown().await;
    let gw = start_gateway_from(&d.join("gateway.toml")).await;
    assert_eq!(
        get(gw.addr(), "/fixed", &[("host", "c.example")])
            .await
            .status,
        203
    );
    assert_eq!(
        get(gw.addr(), "/x", &[("host", "c.example")]).await.status,
        200
    );
    assert_eq!(
        uc.seen().last().unwrap().headers["x-fault-seen"],
        "C",
        "its upload too"
    );
    let admin = gw.admin_addr().unwrap();
    let call = |method: &'static str, path: &'static str, token: String| async move {
        let auth = format!("Bearer {token}");
        send_body(
            admin,
            method,
            path,
            &[("host", "localhost"), ("authorization", &auth)],
            "",
        )
        .await
    };
    assert_eq!(
        call("GET", "/tenants/c", token_c.clone()).await.status,
        200,
        "its token too"
    );
    // The file's tenant cannot be removed through the API; the API's can,
    // and its tokens go with it.
    assert_eq!(call("DELETE", "/tenants/a", op()).await.status, 409);
    assert_eq!(
        call("DELETE", "/tenants/c", token_c.clone()).await.status,
        404
    );
    assert_eq!(call("DELETE", "/tenants/c", op()).await.status, 200);
    assert_eq!(
        get(gw.addr(), "/fixed", &[("host", "c.example")])
            .await
            .status,
        404
    );
    assert_eq!(call("GET", "/tenants/c", token_c).await.status, 401);
    assert!(
        !data.join("uploads").join("c").exists(),
        "its uploads are gone"
    );
    gw.shutdown().await;
}
