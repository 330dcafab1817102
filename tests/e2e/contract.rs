//! The contract's version policy (`wit/README.md`) held by the real host: a
//! guest built against an older `0.1.x` runs unchanged, beside 0.2 guests on
//! the same route; one built against a newer version than the host knows is
//! refused at load naming what the host lacks; and a published version stays
//! as it was published. Also what 0.2 changed: a phase a filter did not
//! declare is not called at all, facts are read on demand, and an edit the
//! phase does not allow refuses the whole decision.

use std::path::Path;

use wasmgate_tests::{
    Upstream, artifacts, build_gateway, capture_logs, get, metric, start_gateway,
};

use crate::config::{config_with_filter, temp_file};

fn repo_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(rel)
}

/// `filters/testing/contract-0-1-0` binds the frozen `wit/0.1.0/filter.wit`
/// without the SDK: it imports `wasmgate:filter/log@0.1.0` and exports
/// `wasmgate:filter/filter@0.1.0`, and the host (bound to the newest
/// contract) links both by their semver-compatible names.
#[tokio::test]
async fn a_guest_built_against_0_1_0_runs_in_todays_host() {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 8\n[filters.old]\npath = {:?}\npool_size = 2\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{{ name = \"old\" }}]\n",
        artifacts::CONTRACT_0_1_0,
        up.addr
    );
    let gw = start_gateway(&toml).await;
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // on-request ran: its edit reached the upstream, and its `log@0.1.0`
    // import reached the gateway's log under the filter's name.
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-contract-request"], "0.1.0");
    let id = r
        .header("x-request-id")
        .expect("the gateway sets a request id");
    assert_eq!(
        logs.lines_with(&[&format!("contract 0.1.0 guest saw {id}"), "old"])
            .len(),
        1,
        "the guest's log line, once"
    );

    // on-response ran, with the context on-request left.
    assert_eq!(r.header("x-contract"), Some("0.1.0"));
    assert_eq!(r.header("x-contract-context"), Some("0.1.0"));
    gw.shutdown().await;
}

/// One route, a 0.1 build and a 0.2 build of the same filter
/// (`contract-0-1-0` binds the frozen 0.1.0 contract, `contract-0-2-0` the
/// newest; neither uses the SDK): both run both phases on every request,
/// each with its own context, in chain order on the way in and reverse
/// order on the way out.
#[tokio::test]
async fn a_0_1_build_and_a_0_2_build_run_side_by_side_on_one_route() {
    let logs = capture_logs();
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 8\n\
         [filters.old]\npath = {:?}\npool_size = 2\n[filters.new]\npath = {:?}\npool_size = 2\n\
         [clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n\
         filters = [{{ name = \"old\" }}, {{ name = \"new\", config = {{ prefix = \"x-b\", echo = \"id\" }} }}]\n",
        artifacts::CONTRACT_0_1_0,
        artifacts::CONTRACT_0_2_0,
        up.addr
    );
    let gw = start_gateway(&toml).await;
    for _ in 0..3 {
        let r = get(gw.addr(), "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-contract"), Some("0.1.0"));
        assert_eq!(r.header("x-contract-context"), Some("0.1.0"));
        assert_eq!(r.header("x-b"), Some("0.2.0"));
        assert_eq!(r.header("x-b-context"), Some("0.2.0"));
        // The 0.2 guest asked for the request id on demand.
        let id = r.header("x-request-id").expect("a request id");
        let seen = up.seen();
        let last = seen.last().expect("the upstream saw it");
        assert_eq!(last.headers["x-contract-request"], "0.1.0");
        assert_eq!(last.headers["x-b-request"], "0.2.0");
        assert_eq!(last.headers["x-b-request-id"], id);
        for version in ["0.1.0", "0.2.0"] {
            let line = format!("contract {version} guest saw {id}");
            assert_eq!(logs.lines_with(&[&line]).len(), 1, "{line}");
        }
    }
    // The management API says which contract each module was built against.
    assert_eq!(gw.live().filter_report("old")["contract"], "0.1");
    assert_eq!(gw.live().filter_report("new")["contract"], "0.2");
    let m = gw.metrics_text();
    for filter in ["old", "new"] {
        let calls = format!(
            "wasmgate_filter_calls_total{{tenant=\"default\",filter=\"{filter}\",route=\"r\",outcome=\"ok\"}}"
        );
        assert_eq!(
            metric(&m, &calls),
            Some(6.0),
            "{filter}: two calls a request"
        );
    }
    gw.shutdown().await;
}

/// A filter that declares only the response phase gets no call on the way
/// in, and one that declares only the request phase none on the way out:
/// the calls a filter costs are the phases it asked for. `headers` with
/// only `response.set` is the case the contract was changed for.
#[tokio::test]
async fn a_phase_a_filter_did_not_declare_is_not_called() {
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 16\n\
         [filters.headers]\npath = {:?}\npool_size = 2\n[filters.probe]\npath = {:?}\npool_size = 2\n\
         [clusters.c]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"out\"\npath_prefix = \"/out\"\ncluster = \"c\"\n\
         filters = [{{ name = \"headers\", config = {{ response = {{ set = {{ x-out = \"1\" }} }} }} }}, \
                    {{ name = \"probe\", config = {{ phases = \"response\" }} }}]\n\
         [[routes]]\nname = \"both\"\npath_prefix = \"/both\"\ncluster = \"c\"\n\
         filters = [{{ name = \"headers\", config = {{ request = {{ set = {{ x-in = \"1\" }} }}, response = {{ set = {{ x-out = \"1\" }} }} }} }}]\n\
         [[routes]]\nname = \"in\"\npath_prefix = \"/in\"\ncluster = \"c\"\n\
         filters = [{{ name = \"probe\", config = {{ phases = \"request\" }} }}]\n",
        artifacts::HEADERS,
        artifacts::CONTRACT_0_2_0,
        up.addr
    );
    let gw = start_gateway(&toml).await;
    for _ in 0..4 {
        let r = get(gw.addr(), "/out", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-out"), Some("1"));
        // The probe's on-response ran, and its on-request did not: no
        // request mark, and no context to hand back.
        assert_eq!(r.header("x-contract"), Some("0.2.0"));
        assert_eq!(r.header("x-contract-context"), Some("none"));
        assert!(
            !up.seen()
                .last()
                .unwrap()
                .headers
                .contains_key("x-contract-request")
        );

        let r = get(gw.addr(), "/both", &[]).await;
        assert_eq!(r.header("x-out"), Some("1"));
        assert_eq!(up.seen().last().unwrap().headers["x-in"], "1");

        let r = get(gw.addr(), "/in", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-contract"), None, "no on-response");
        assert_eq!(
            up.seen().last().unwrap().headers["x-contract-request"],
            "0.2.0"
        );
    }
    let m = gw.metrics_text();
    let calls = |filter: &str, route: &str| {
        metric(
            &m,
            &format!(
                "wasmgate_filter_calls_total{{tenant=\"default\",filter=\"{filter}\",route=\"{route}\",outcome=\"ok\"}}"
            ),
        )
    };
    assert_eq!(calls("headers", "out"), Some(4.0), "one call a request");
    assert_eq!(calls("probe", "out"), Some(4.0));
    assert_eq!(calls("headers", "both"), Some(8.0), "two calls a request");
    assert_eq!(calls("probe", "in"), Some(4.0));
    gw.shutdown().await;
}

/// Edits are checked as a 0.2 guest makes them and applied whole: an edit
/// of the request in `on-response` (it has gone upstream) refuses that
/// call's decision (the log names why), and its other edits are not
/// applied.
#[tokio::test]
async fn an_edit_the_phase_does_not_allow_refuses_the_whole_decision() {
    let up = Upstream::start("u").await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]\nmax_instances = 8\n\
         [filters.probe]\npath = {:?}\npool_size = 2\n[clusters.c]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\ncluster = \"c\"\n\
         filters = [{{ name = \"probe\", config = {{ mode = \"edit-request-on-response\" }} }}]\n",
        artifacts::CONTRACT_0_2_0,
        up.addr
    );
    let logs = capture_logs();
    let gw = start_gateway(&toml).await;
    let r = get(gw.addr(), "/", &[]).await;
    // The client learns that the filter failed, not how.
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["code"], "filter_invalid_decision", "{}", r.body);
    assert_eq!(
        logs.lines_with(&[
            "probe",
            "invalid decision",
            "the request cannot be edited in on-response"
        ])
        .len(),
        1,
        "the log names the refused edit"
    );
    assert_eq!(r.header("x-contract"), None, "none of its edits applied");
    gw.shutdown().await;
}

/// What a guest built against a later `0.1.x` looks like to this host: it
/// imports an interface of its own version that the host satisfies by a
/// semver-compatible name (`config`, which this host has), and one the host
/// does not have. The load fails, naming that one, and only that one.
#[tokio::test]
async fn a_guest_built_against_a_newer_contract_is_refused_naming_the_missing_import() {
    let component = wat::parse_str(
        r#"(component
             (import "wasmgate:filter/config@0.1.2" (instance
               (export "get" (func (param "name" string) (result (option string))))))
             (import "wasmgate:filter/clock@0.1.2" (instance
               (export "now-ms" (func (result u64))))))"#,
    )
    .unwrap();
    let path = temp_file("contract-newer.wasm", &component);
    let err = build_gateway(&config_with_filter(&path)).await.unwrap_err();
    assert!(err.contains("filters.f.path"), "{err}");
    assert!(
        err.contains(
            "contract-newer.wasm: does not implement the wasmgate:filter contract (0.2 or 0.1)"
        ),
        "{err}"
    );
    assert!(
        err.contains("wasmgate:filter/clock@0.1.2"),
        "names the import the host lacks: {err}"
    );
    assert!(
        !err.contains("wasmgate:filter/config"),
        "the import the host has is not blamed: {err}"
    );
}

/// A published contract is frozen: `wit/0.1.0/filter.wit` is the skeleton's
/// `wit/filter.wit` of commit d9b7cda, byte for byte.
#[test]
fn the_published_0_1_0_contract_is_unchanged() {
    let text = std::fs::read(repo_file("wit/0.1.0/filter.wit")).unwrap();
    assert_eq!(
        wasmgate::filter::sha256_hex(&text),
        "70561db6ebb1b9842cd65595d7adcb3290584dec9dc439bec678fb9ec8a223c0",
        "wit/0.1.0/filter.wit is frozen: change wit/filter.wit under a new version instead"
    );
}

/// The last 0.1 release, `wit/0.1.1/filter.wit`, is `wit/filter.wit` of
/// commit 18715e9 byte for byte: the host binds it for 0.1 guests.
#[test]
fn the_published_0_1_1_contract_is_unchanged() {
    let text = std::fs::read(repo_file("wit/0.1.1/filter.wit")).unwrap();
    assert_eq!(
        wasmgate::filter::sha256_hex(&text),
        "3c35040a7ae82ba61c48b1128258f392291acf317ee12d0a2bd2b6317d50a003",
        "wit/0.1.1/filter.wit is frozen: change wit/filter.wit under a new version instead"
    );
}

/// The last 0.2.0 contract, `wit/0.2.0/filter.wit`, is `wit/filter.wit` of
/// commit 6c0b731 byte for byte: `contract-0-2-0` is built from it.
#[test]
fn the_published_0_2_0_contract_is_unchanged() {
    let text = std::fs::read(repo_file("wit/0.2.0/filter.wit")).unwrap();
    assert_eq!(
        wasmgate::filter::sha256_hex(&text),
        "21a0e4433bce311cfb60c90f8933b6c24fc880ff95c2aa0da5789e9e0382d911",
        "wit/0.2.0/filter.wit is frozen: change wit/filter.wit under a new version instead"
    );
}

/// Each frozen version in `wit/<version>/` declares that version, and the
/// one contract the host and SDK bind, `wit/filter.wit`, is newer than all
/// of them.
#[test]
fn the_bound_contract_is_newer_than_every_frozen_one() {
    fn version(text: &str) -> (u64, u64, u64) {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("package wasmgate:filter@"))
            .expect("a package line");
        let v: Vec<u64> = line
            .trim_end_matches(';')
            .split('.')
            .map(|n| n.parse().unwrap())
            .collect();
        (v[0], v[1], v[2])
    }
    let newest = version(&std::fs::read_to_string(repo_file("wit/filter.wit")).unwrap());
    let mut frozen = 0;
    for entry in std::fs::read_dir(repo_file("wit")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let v = version(&std::fs::read_to_string(dir.join("filter.wit")).unwrap());
        assert_eq!(
            format!("{}.{}.{}", v.0, v.1, v.2),
            name,
            "wit/{name}/filter.wit"
        );
        assert!(v < newest, "wit/filter.wit must be newer than wit/{name}/");
        frozen += 1;
    }
    assert!(frozen >= 1, "wit/0.1.0/ is kept");
}
