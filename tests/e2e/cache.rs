//! The compiled-component cache: a second load uses the stored code, and a
//! corrupt entry is recompiled rather than loaded.

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
