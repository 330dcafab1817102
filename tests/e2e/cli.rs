//! The `wasmgate` command line as a process: `check` and `serve` with a
//! clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmgate_tests::{Upstream, artifacts, get};

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate-e2e");

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_default_gateway_toml() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(root.join("gateway.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok (3 routes, 2 clusters, 5 filters)"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_an_invalid_config_with_a_message_and_nonzero_exit() {
    let path = write_config(
        "bad.toml",
        "[clusters.c]\nendpoints = [\"nope\"]\n[[routes]]\nname = \"r\"\ncluster = \"missing\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 errors in config"), "{stderr}");
    assert!(
        stderr.contains("clusters.c.endpoints[0]: \"nope\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[0].cluster: unknown cluster \"missing\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_answers_then_stops_cleanly_on_sigterm() {
    let up = Upstream::start("u").await;
    let path = write_config(
        "serve.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[engine]\nmax_instances = 64\n[filters.api-key]\npath = {:?}\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{{ name = \"api-key\", config = {{ keys = [\"k\"] }} }}]\n",
            artifacts::API_KEY,
            up.addr
        ),
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("WASMGATE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log says where it listens.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("gateway exited before listening")
            .unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.trim().parse::<std::net::SocketAddr>().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(get(addr, "/", &[]).await.status, 401);
    assert_eq!(get(addr, "/", &[("x-api-key", "k")]).await.status, 200);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
