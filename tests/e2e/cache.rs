//! The compiled-component cache: a second load uses the stored code, a
//! corrupt entry is recompiled rather than loaded, and one others may write
//! is refused.

use std::path::PathBuf;

use wasmgate_tests::{artifacts, build_gateway, capture_logs};

fn cache_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmgate-cache-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path, filter: &str) -> String {
    format!(
        "[engine]\nmax_instances = 32\ncache_dir = {:?}\n[filters.{filter}]\npath = {:?}\n[clusters.c]\nendpoints = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{{ name = \"{filter}\", config = {{ keys = [\"k\"] }} }}]\n",
        dir.display().to_string(),
        artifacts::API_KEY
    )
}

fn entries(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_second_load_uses_the_cached_code() {
    let logs = capture_logs();
    let dir = cache_dir("hit");
    let filter = format!("cache-hit-{}", std::process::id());
    build_gateway(&config(&dir, &filter)).await.unwrap();
    let files = entries(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let sha = wasmgate::filter::sha256_hex(&std::fs::read(artifacts::API_KEY).unwrap());
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&sha)
    );
    assert_eq!(
        logs.lines_with(&["filter module loaded", &filter, "cache=Compiled"])
            .len(),
        1
    );

    build_gateway(&config(&dir, &filter)).await.unwrap();
    assert_eq!(
        logs.lines_with(&["filter module loaded", &filter, "cache=Hit"])
            .len(),
        1
    );
}

#[tokio::test]
async fn a_corrupt_entry_is_recompiled() {
    let logs = capture_logs();
    let dir = cache_dir("corrupt");
    let filter = format!("cache-corrupt-{}", std::process::id());
    build_gateway(&config(&dir, &filter)).await.unwrap();
    let entry = entries(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();

    build_gateway(&config(&dir, &filter)).await.unwrap();
    assert_eq!(
        logs.lines_with(&["discarding a corrupt compile cache entry"])
            .len(),
        1
    );
    assert_eq!(
        logs.lines_with(&["filter module loaded", &filter, "cache=Compiled"])
            .len(),
        2
    );
    // The entry was rewritten whole and is used next time.
    build_gateway(&config(&dir, &filter)).await.unwrap();
    assert_eq!(
        logs.lines_with(&["filter module loaded", &filter, "cache=Hit"])
            .len(),
        1
    );
}

/// Loading an entry runs its machine code, and its trailing digest is only
/// a check against accidents: anyone who can write the folder or an entry
/// could make the gateway run their code. A folder or entry that others may
/// write (or another user owns) is refused, logged and counted, left alone,
/// and the module compiled instead.
#[cfg(unix)]
#[tokio::test]
async fn a_cache_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let logs = capture_logs();
    let dir = cache_dir("untrusted");
    let filter = format!("cache-untrusted-{}", std::process::id());
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    build_gateway(&config(&dir, &filter)).await.unwrap();
    let entry = entries(&dir).pop().unwrap();
    let meta = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(meta(&dir), 0o700, "created private");
    assert_eq!(meta(&entry), 0o600, "written private");

    // An entry anyone may write.
    mode(&entry, 0o666);
    let served = |toml: String| {
        toml.replacen(
            "[engine]",
            "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[engine]",
            1,
        )
    };
    let gw = wasmgate_tests::start_gateway(&served(config(&dir, &filter))).await;
    assert_eq!(
        logs.lines_with(&[
            "compile cache refused",
            "-untrusted",
            "writable by others (mode 666)"
        ])
        .len(),
        1
    );
    assert_eq!(
        logs.lines_with(&["filter module loaded", &filter, "cache=Refused"])
            .len(),
        1
    );
    assert_eq!(
        wasmgate_tests::metric(&gw.metrics_text(), "wasmgate_compile_cache_refused_total"),
        Some(1.0)
    );
    gw.shutdown().await;
    assert!(entry.exists(), "left alone, not replaced");
    assert_eq!(meta(&entry), 0o666);

    // A folder its group may write: refused at start and at the load.
    mode(&entry, 0o600);
    mode(&dir, 0o770);
    build_gateway(&config(&dir, &filter)).await.unwrap();
    assert_eq!(
        logs.lines_with(&[
            "compile cache refused",
            "-untrusted",
            "writable by its group (mode 770)"
        ])
        .len(),
        2
    );
    assert_eq!(
        logs.lines_with(&["filter module loaded", &filter, "cache=Refused"])
            .len(),
        2
    );

    // Made private again: used.
    mode(&dir, 0o700);
    build_gateway(&config(&dir, &filter)).await.unwrap();
    assert_eq!(
        logs.lines_with(&["filter module loaded", &filter, "cache=Hit"])
            .len(),
        1
    );
}
