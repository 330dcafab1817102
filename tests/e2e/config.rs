//! Bad config and bad modules: a folder of invalid configs, each with the
//! messages it must produce, and modules that are not components or do not
//! implement the contract. Nothing starts half-configured.

use std::path::{Path, PathBuf};

use wasmgate_tests::{artifacts, build_gateway};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Each `tests/configs/invalid/NAME.toml` has `NAME.expected`: lines that must
/// all appear in what `wasmgate check` prints. Filter paths in them are
/// relative to the file.
#[test]
fn check_fails_every_invalid_config_with_its_expected_message() {
    let dir = repo_root().join("tests/configs/invalid");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let expected_path = path.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} needs {}", path.display(), expected_path.display()));
        let out = wasmgate_tests::gateway_command(env!("CARGO_BIN_EXE_wasmgate-e2e"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{} must fail `check` with exit code 1",
            path.display()
        );
        let message = String::from_utf8_lossy(&out.stderr);
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                message.contains(line.trim()),
                "{}:\nexpected {line:?}\nin:\n{message}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} invalid configs found");
}

pub(crate) fn config_with_filter(path: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[engine]\nmax_instances = 64\n[filters.f]\npath = {:?}\n[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{{ name = \"f\" }}]\n",
        path.display().to_string()
    )
}

pub(crate) fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmgate-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn a_core_module_is_rejected_as_not_a_component() {
    // The smallest valid core module: magic + version 1.
    let path = temp_file("core.wasm", b"\0asm\x01\0\0\0");
    let err = build_gateway(&config_with_filter(&path)).await.unwrap_err();
    assert!(err.contains("filters.f.path"), "{err}");
    assert!(err.contains("core.wasm"), "{err}");
    assert!(
        err.contains("is a core WebAssembly module, not a component"),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_that_is_not_webassembly_is_rejected() {
    let path = temp_file("text.wasm", b"this is not wasm at all");
    let err = build_gateway(&config_with_filter(&path)).await.unwrap_err();
    assert!(err.contains("text.wasm: not a WebAssembly file"), "{err}");
}

#[tokio::test]
async fn a_truncated_component_is_rejected() {
    let bytes = std::fs::read(artifacts::API_KEY).unwrap();
    let path = temp_file("truncated.wasm", &bytes[..bytes.len() / 2]);
    let err = build_gateway(&config_with_filter(&path)).await.unwrap_err();
    assert!(
        err.contains("truncated.wasm: not a valid WebAssembly component"),
        "{err}"
    );
}

#[tokio::test]
async fn a_component_with_the_wrong_contract_is_rejected() {
    let err = build_gateway(&config_with_filter(Path::new(artifacts::WRONG_CONTRACT)))
        .await
        .unwrap_err();
    assert!(
        err.contains(
            "wrong_contract.wasm: does not implement the wasmgate:filter contract (0.2 or 0.1)"
        ),
        "{err}"
    );
    assert!(
        err.contains("wasmgate:filter/filter"),
        "names the missing export: {err}"
    );
}

#[tokio::test]
async fn a_missing_filter_file_is_named() {
    let err = build_gateway(&config_with_filter(Path::new("/nonexistent/filter.wasm")))
        .await
        .unwrap_err();
    assert!(
        err.contains("filters.f.path: cannot read /nonexistent/filter.wasm"),
        "{err}"
    );
}

#[tokio::test]
async fn init_failure_rejects_the_config_with_the_filters_message() {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[filters.fault]\npath = {:?}\n[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n[[routes.filters]]\nname = \"fault\"\nconfig = {{ fail_init = true }}\n",
        artifacts::FAULT
    );
    let err = build_gateway(&toml).await.unwrap_err();
    assert!(
        err.contains("routes[0].filters[0].config: filter \"fault\" rejected its config: fault filter: init failure requested by config"),
        "{err}"
    );
}
