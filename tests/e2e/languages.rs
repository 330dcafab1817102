//! Filters in other languages than the SDK's Rust (issue 20): the examples
//! under `examples/filters/<lang>/` are built from source with their real
//! toolchains, and the one behaviour they share (an API key check against
//! keys from the config, 401 in the gateway's error format without one, and
//! `x-filter-lang: <lang>` on every response) is checked through the real
//! gateway for each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wasmgate_tests::{Upstream, get, start_gateway};

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate-e2e");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `program` run at a low priority: the toolchains build while other tests
/// run filters under CPU budgets, and must not take their turns.
fn niced(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "15"]).arg(program);
    cmd
}

/// Runs `cmd`, failing the test with its output if it fails.
fn run(what: &str, cmd: &mut Command) {
    // The outer build's settings are for the host, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The C example, built once per run with Debian's clang and the gateway's
/// own `filter bindings` and `filter componentize`.
fn c_filter() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join("target").join("examples").join("c");
        let _ = std::fs::remove_dir_all(&out);
        run(
            "examples/filters/c/build.sh (needs clang, lld, wasi-libc and libclang-rt-dev-wasm32: scripts/setup.sh installs them)",
            niced(repo().join("examples/filters/c/build.sh"))
                .arg(&out)
                .env("WASMGATE", BIN),
        );
        out.join("filter.wasm")
    })
}

/// The Rust example: its own cargo project, depending on the SDK by path.
fn rust_filter() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = repo().join("target").join("examples");
        run(
            "cargo build of examples/filters/rust",
            niced(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "--target",
                    "wasm32-wasip2",
                ])
                .arg("--manifest-path")
                .arg(repo().join("examples/filters/rust/Cargo.toml"))
                .arg("--target-dir")
                .arg(&target),
        );
        target.join("wasm32-wasip2/release/api_key_rust.wasm")
    })
}

/// The Python example, built once per run with componentize-py (pinned,
/// from PyPI, in a venv kept under `target/examples/`).
fn python_filter() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join("target").join("examples").join("python");
        run(
            "examples/filters/python/build.sh (needs python3 with venv, and PyPI)",
            niced(repo().join("examples/filters/python/build.sh"))
                .arg(&out)
                .env("WASMGATE", BIN)
                .env("VENV", repo().join("target/examples/python-venv")),
        );
        out.join("filter.wasm")
    })
}

/// The JavaScript example, built once per run with componentize-js (the
/// toolchain pinned by its package-lock.json, from npm).
fn js_filter() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join("target").join("examples").join("js");
        run(
            "examples/filters/js/build.sh (needs node and npm, and the npm registry)",
            niced(repo().join("examples/filters/js/build.sh"))
                .arg(&out)
                .env("WASMGATE", BIN),
        );
        out.join("filter.wasm")
    })
}

/// The shared behaviour, through the gateway.
async fn behaves(lang: &str, filter: &Path) {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
         [engine]\nmax_instances = 8\n\
         [filters.key]\npath = {:?}\npool_size = 2\ncpu_limit = \"200ms\"\n\
         [clusters.up]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\ncluster = \"up\"\n\
         filters = [{{ name = \"key\", config = {{ keys = [\"k1\", \"k2\"] }} }}]\n",
        filter.display().to_string(),
        up.addr
    ))
    .await;
    let addr = gw.addr();
    for headers in [
        &[][..],
        &[("x-api-key", "k3")][..],
        &[("x-api-key", "k")][..],
    ] {
        let r = get(addr, "/x", headers).await;
        assert_eq!(r.status, 401, "{lang} {headers:?}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"), "{lang}");
        let body = r.json();
        assert_eq!(body["status"], 401, "{lang}: {body}");
        assert_eq!(body["code"], "unauthorized", "{lang}: {body}");
    }
    assert_eq!(
        up.count(),
        0,
        "{lang}: refused requests never reach the upstream"
    );
    let r = get(addr, "/x", &[("x-api-key", "k2")]).await;
    assert_eq!(r.status, 200, "{lang}: {}", r.body);
    assert_eq!(r.header("x-filter-lang"), Some(lang));
    assert_eq!(up.count(), 1);
    gw.shutdown().await;

    // Its init refuses a config without keys, and the gateway says so.
    let err = wasmgate_tests::build_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[filters.key]\npath = {:?}\n\
         [clusters.up]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\ncluster = \"up\"\nfilters = [{{ name = \"key\", config = {{ keys = [] }} }}]\n",
        filter.display().to_string(),
        up.addr
    ))
    .await
    .err()
    .unwrap_or_else(|| panic!("{lang}: a config without keys was accepted"));
    assert!(err.contains("keys"), "{lang}: {err}");

    // The same behaviour offline: the examples' shared cases pass under
    // `wasmgate filter test`, and its report shows the language's mark.
    let cases = repo().join("examples/filters/cases.toml");
    let out = wasmgate_tests::gateway_command(BIN)
        .args(["filter", "test"])
        .arg(filter)
        .arg(&cases)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{lang}: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!("x-filter-lang: {lang}")),
        "{lang}: {report}"
    );
}

#[tokio::test]
async fn a_c_filter_built_from_source_runs_in_the_gateway() {
    let filter = c_filter();
    behaves("c", filter).await;
    // Small, and importing nothing but the contract (it calls no WASI).
    let size = std::fs::metadata(filter).unwrap().len();
    assert!(size < 100_000, "{size} bytes");
    let out = wasmgate_tests::gateway_command(BIN)
        .args([
            "filter",
            "inspect",
            "--json",
            "--config",
            r#"{"keys":["k"]}"#,
        ])
        .arg(filter)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["loads"], true, "{v}");
    assert!(v["contract"].as_str().unwrap().starts_with("0.2."), "{v}");
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["provided"] == true
                && i["name"].as_str().unwrap().starts_with("wasmgate:filter/")),
        "{v}"
    );
    assert_eq!(v["init"]["on_response"], true, "{v}");
}

#[tokio::test]
async fn a_python_filter_built_from_source_runs_in_the_gateway() {
    let filter = python_filter();
    behaves("python", filter).await;
    // It carries an interpreter, and says what it imports: WASI and the
    // contract, all of which the gateway provides.
    let out = wasmgate_tests::gateway_command(BIN)
        .args([
            "filter",
            "inspect",
            "--json",
            "--config",
            r#"{"keys":["k"]}"#,
        ])
        .arg(filter)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["loads"], true, "{v}");
    assert!(v["size"].as_u64().unwrap() > 1_000_000, "{v}");
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["provided"] == true),
        "{v}"
    );
}

#[tokio::test]
async fn a_javascript_filter_built_from_source_runs_in_the_gateway() {
    let filter = js_filter();
    behaves("js", filter).await;
    let out = wasmgate_tests::gateway_command(BIN)
        .args([
            "filter",
            "inspect",
            "--json",
            "--config",
            r#"{"keys":["k"]}"#,
        ])
        .arg(filter)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["loads"], true, "{v}");
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["provided"] == true),
        "wasi:http is left out: {v}"
    );
}

#[tokio::test]
async fn a_rust_filter_in_its_own_project_runs_in_the_gateway() {
    behaves("rust", rust_filter()).await;
}

/// `filter bindings` refuses a language whose toolchain reads the WIT
/// itself, and `filter componentize` refuses what is not a core module
/// built against the bindings, each saying why.
#[test]
fn the_c_tools_refuse_what_they_cannot_do() {
    let out = wasmgate_tests::gateway_command(BIN)
        .args(["filter", "bindings", "--lang", "python", "--out"])
        .arg(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("c only"));
    let not_core =
        std::env::temp_dir().join(format!("wasmgate-not-core-{}.wasm", std::process::id()));
    std::fs::write(&not_core, wat::parse_str("(module)").unwrap()).unwrap();
    let out = wasmgate_tests::gateway_command(BIN)
        .args(["filter", "componentize"])
        .arg(&not_core)
        .arg("-o")
        .arg(not_core.with_extension("component.wasm"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plugin_component_type.o") || err.contains("component-type"),
        "{err}"
    );
}

/// `wasmgate filter new` makes projects that build as they are, and whose
/// filter runs in the gateway (each adds `x-NAME: <greeting>` to the
/// request it passes on).
#[tokio::test]
async fn filter_new_makes_projects_that_build_and_run() {
    let root = repo().join("target").join("examples").join("scaffolds");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let new = |name: &str, lang: &str| {
        run(
            &format!("wasmgate filter new {name} --lang {lang}"),
            wasmgate_tests::gateway_command(BIN)
                .args(["filter", "new", name, "--lang", lang, "--dir"])
                .arg(root.join(name)),
        );
    };
    new("scaf-rust", "rust");
    new("scaf-c", "c");
    new("scaf-py", "python");
    new("scaf-js", "js");
    run(
        "cargo build of the Rust scaffold",
        niced(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .arg("--manifest-path")
            .arg(root.join("scaf-rust/Cargo.toml"))
            .arg("--target-dir")
            .arg(repo().join("target/examples/scaffold-target")),
    );
    run(
        "the C scaffold's build.sh",
        niced(root.join("scaf-c/build.sh")).env("WASMGATE", BIN),
    );
    run(
        "the Python scaffold's build.sh",
        niced(root.join("scaf-py/build.sh"))
            .env("WASMGATE", BIN)
            .env("VENV", repo().join("target/examples/python-venv")),
    );
    run(
        "the JavaScript scaffold's build.sh",
        niced(root.join("scaf-js/build.sh")).env("WASMGATE", BIN),
    );
    let built = [
        (
            "scaf-rust",
            repo().join("target/examples/scaffold-target/wasm32-wasip2/release/scaf_rust.wasm"),
        ),
        ("scaf-c", root.join("scaf-c/out/filter.wasm")),
        ("scaf-py", root.join("scaf-py/out/filter.wasm")),
        ("scaf-js", root.join("scaf-js/out/filter.wasm")),
    ];
    let up = Upstream::start("u").await;
    for (name, wasm) in built {
        let gw = start_gateway(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
             [engine]\nmax_instances = 8\n[filters.f]\npath = {:?}\npool_size = 1\ncpu_limit = \"200ms\"\n\
             [clusters.up]\nendpoints = [\"{}\"]\n\
             [[routes]]\nname = \"r\"\ncluster = \"up\"\nfilters = [{{ name = \"f\" }}]\n",
            wasm.display().to_string(),
            up.addr
        ))
        .await;
        assert_eq!(get(gw.addr(), "/", &[]).await.status, 200, "{name}");
        // And its own cases pass offline, as written.
        let out = wasmgate_tests::gateway_command(BIN)
            .args(["filter", "test"])
            .arg(&wasm)
            .arg(root.join(name).join("cases.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = up.seen();
        assert_eq!(
            seen.last().unwrap().headers[format!("x-{name}").as_str()],
            "hello",
            "{name}"
        );
        gw.shutdown().await;
    }
    // A name that is not one, a language not there yet, a folder in use.
    for (args, says) in [
        (
            &["filter", "new", "Bad_Name", "--lang", "rust"][..],
            "not a filter name",
        ),
        (
            &["filter", "new", "ok", "--lang", "cobol"][..],
            "one of rust, c, python, js",
        ),
    ] {
        let out = wasmgate_tests::gateway_command(BIN)
            .args(args)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}"
        );
    }
    let out = wasmgate_tests::gateway_command(BIN)
        .args(["filter", "new", "scaf-c", "--lang", "c", "--dir"])
        .arg(root.join("scaf-c"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}
