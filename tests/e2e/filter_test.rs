//! `wasmgate filter test`: a filter run offline on the gateway's own engine
//! against the cases of a TOML file. Every first-party filter passes the
//! expectation file kept next to it (`filters/<name>/cases.toml`); the
//! runner's host services, failures and exit codes are shown with the
//! test-only `fault` guest.

use std::path::{Path, PathBuf};

use wasmgate_tests::artifacts;

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate-e2e");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `wasmgate filter test FILTER CASES [extra]`: its exit code, stdout
/// and stderr.
fn filter_test(filter: &str, cases: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = wasmgate_tests::gateway_command(BIN)
        .args(["filter", "test", filter])
        .arg(cases)
        .args(extra)
        .output()
        .expect("runs wasmgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cases_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmgate-filter-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_first_party_filter_passes_the_cases_kept_next_to_it() {
    let built = Path::new(artifacts::API_KEY)
        .parent()
        .expect("the filters' folder")
        .to_path_buf();
    let mut ran = Vec::new();
    let mut failed = Vec::new();
    macro_rules! run_cases {
        ($name:ident) => {{
            let krate = stringify!($name);
            let dir = krate.replace('_', "-");
            let cases = repo().join("filters").join(&dir).join("cases.toml");
            assert!(
                cases.exists(),
                "filters/{dir} has no cases.toml: every first-party filter keeps its \
                 expectations next to it"
            );
            let wasm = built.join(format!("{krate}.wasm"));
            let (code, out, err) = filter_test(wasm.to_str().unwrap(), &cases, &[]);
            let summary = out.lines().last().unwrap_or_default().to_owned();
            // A file of one case shows too little.
            assert!(
                summary.contains(" cases: "),
                "filters/{dir}/cases.toml: {out}{err}"
            );
            if code != Some(0) {
                failed.push(format!("filters/{dir} (exit {code:?}):\n{out}{err}"));
            }
            ran.push(dir);
        }};
    }
    wasmgate_tests::foreach_first_party_filter!(run_cases);
    assert!(ran.len() >= 8, "{ran:?}");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The runner's host services are the gateway's: `kv` state carries from
/// case to case, `config` values come from `[filter] vars`, the cache
/// import has its own store, and log lines are captured.
#[test]
fn host_services_run_in_memory_and_state_carries_between_cases() {
    let cases = cases_file(
        "services.toml",
        r#"
config = { tag = "t1" }

[filter]
vars = { greeting = "hello" }
cache_bytes = "4KiB"

[[case]]
name = "kv counts from one"
request = { headers = { x-fault = "kv-incr" } }
expect = { on_request = "proceed", upstream = { headers = { x-hits = "1" } } }

[[case]]
name = "and the count carries to the next case"
request = { headers = { x-fault = "kv-incr" } }
expect = { upstream = { headers = { x-hits = "2" } } }

[[case]]
name = "config values from vars"
request = { headers = { x-fault = "var" } }
expect = { upstream = { headers = { x-greeting = "hello" } } }

[[case]]
name = "the cache stores"
request = { headers = { x-fault = "cache-set", x-fault-arg = "k=v1@60000" } }
expect = { on_request = "respond", status = 200, body = "stored", forwarded = false }

[[case]]
name = "and gives back"
request = { headers = { x-fault = "cache-get", x-fault-arg = "k" } }
expect = { status = 200, body = "v1" }

[[case]]
name = "a line through the log import is captured"
request = { headers = { x-fault = "log" } }
expect = { logs = ["a warning through the log import"] }
"#,
    );
    let (code, out, err) = filter_test(artifacts::FAULT, &cases, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("6 cases: 6 passed, 0 failed"), "{out}");
    assert!(
        out.contains("log          warn: fault filter: a warning through the log import"),
        "{out}"
    );
}

/// A filter that fails gets the answer the gateway would give (the request
/// path's own error, in the standard format), or is skipped under
/// fail-open; a spinning filter is stopped by its CPU budget.
#[test]
fn failures_get_the_gateways_answer_and_budgets_hold() {
    let cases = cases_file(
        "failures.toml",
        r#"
[filter]
cpu_limit = "20ms"

[[case]]
name = "a trap is a 500 in the standard format"
request = { headers = { x-fault = "trap" }, id = "req-1" }
[case.expect]
on_request = "failed"
error = "filter_trap"
status = 500
forwarded = false
body_json = { status = 500, code = "filter_trap", message = "filter \"fault\" failed", request_id = "req-1" }

[[case]]
name = "a loop runs into its CPU budget"
request = { headers = { x-fault = "loop" } }
expect = { on_request = "failed", error = "exceeded its CPU budget of 20ms", status = 500 }

[[case]]
name = "and the next request is served by a new instance"
request = { headers = { x-other = "1" } }
expect = { on_request = "proceed", status = 200, upstream = { headers = { x-instance-calls = "1" } } }
"#,
    );
    let (code, out, err) = filter_test(artifacts::FAULT, &cases, &[]);
    assert_eq!(code, Some(0), "{out}{err}");

    // Fail-open: the failing filter is skipped and the request goes on.
    let open = cases_file(
        "fail-open.toml",
        r#"
[filter]
failure_policy = "fail-open"

[[case]]
name = "skipped"
request = { headers = { x-fault = "trap" } }
expect = { on_request = "failed", forwarded = true, status = 200, upstream = { absent_headers = ["x-fault-seen"] } }
"#,
    );
    let (code, out, err) = filter_test(artifacts::FAULT, &open, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// Expectations that do not hold fail the exit code (1) and are named; a
/// file the runner cannot use is refused (2) naming the case and key;
/// `--case` runs one case and `--json` reports each.
#[test]
fn mismatches_and_bad_files_fail_the_exit_code() {
    let wrong = cases_file(
        "wrong.toml",
        r#"
[[case]]
name = "right"
request = { path = "/a" }
expect = { status = 200, upstream = { path = "/a" } }

[[case]]
name = "wrong"
request = { path = "/a" }
expect = { status = 401, headers = { x-nope = "1" } }
"#,
    );
    let (code, out, _) = filter_test(artifacts::FAULT, &wrong, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("ok   case 1: right"), "{out}");
    assert!(out.contains("FAIL case 2: wrong"), "{out}");
    assert!(
        out.contains("MISMATCH     status: expected 401, got 200"),
        "{out}"
    );
    assert!(
        out.contains("MISMATCH     response header x-nope: expected [\"1\"], got none"),
        "{out}"
    );
    assert!(out.contains("2 cases: 1 passed, 1 failed"), "{out}");

    // One case alone, as JSON.
    let (code, out, _) = filter_test(artifacts::FAULT, &wrong, &["--case", "right", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["passed"], 1);
    assert_eq!(v["failed"], 0);
    let case = &v["cases"][0];
    assert_eq!(case["name"], "right");
    assert_eq!(case["on_request"]["decision"], "proceed");
    assert!(case["on_request"]["cpu_us"].as_f64().is_some(), "{case}");
    assert_eq!(case["forwarded"]["path"], "/a");
    assert_eq!(case["client"]["status"], 200);
    assert!(v["contract"].as_str().unwrap().starts_with("0.2"), "{v}");

    // A file the runner cannot use: named, exit 2, nothing run.
    for (text, named) in [
        (
            "[[case]]\nname = \"x\"\nexpectt = {}\n",
            "unknown field `expectt`",
        ),
        (
            "[[case]]\nname = \"x\"\nrequest = { headers = { \"bad name\" = \"1\" } }\n",
            "case 1 (\"x\"): request.headers: \"bad name\" is not a header name",
        ),
        (
            "[[case]]\nname = \"x\"\nexpect = { on_request = \"allowed\" }\n",
            "expect.on_request: \"allowed\" is not one of proceed, respond, failed, not-called",
        ),
        (
            "[filter]\ncpu_limit = \"0ms\"\n[[case]]\nname = \"x\"\n",
            "filter.cpu_limit: must be at least engine.epoch_tick",
        ),
        (
            "[filter]\npath = \"other.wasm\"\n[[case]]\nname = \"x\"\n",
            "filter.path: the module is the one given on the command line",
        ),
    ] {
        let path = cases_file("bad.toml", text);
        let (code, out, err) = filter_test(artifacts::FAULT, &path, &[]);
        assert_eq!(code, Some(2), "{text}: {out}{err}");
        assert!(err.contains(named), "{text}: {err}");
        assert!(out.is_empty(), "{out}");
    }
    // Not a component.
    let path = cases_file("ok.toml", "[[case]]\nname = \"x\"\n");
    let (code, _, err) = filter_test(path.to_str().unwrap(), &path, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a WebAssembly file"), "{err}");
}

/// A config its `init` refuses is reported as such, and expected with
/// `init_error`.
#[test]
fn a_refused_config_is_expected_with_init_error() {
    let cases = cases_file(
        "init.toml",
        r#"
[[case]]
name = "refused"
config = { keys = [] }
expect = { init_error = "at least one key" }

[[case]]
name = "accepted, but a key is missing"
config = { keys = ["k1"] }
expect = { on_request = "respond", status = 401, forwarded = false }
"#,
    );
    let (code, out, err) = filter_test(artifacts::API_KEY, &cases, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("init         refused:"), "{out}");
}
