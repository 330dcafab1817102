//! The contract's version policy (`wit/README.md`) held by the real host: a
//! guest built against an older `0.1.x` runs unchanged, one built against a
//! newer `0.1.x` than the host knows is refused at load naming what the host
//! lacks, and a published version stays as it was published.

use std::path::Path;

use wasmgate_tests::{Upstream, artifacts, build_gateway, capture_logs, get, start_gateway};

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
        err.contains("contract-newer.wasm: does not implement the wasmgate:filter@0.1 contract"),
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
