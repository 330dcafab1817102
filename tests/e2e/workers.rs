//! Thread-per-core (`server.workers` above 1): each worker thread accepts
//! on a listener of its own and keeps its own upstream connections, so a
//! request never hands work to another thread.

use wasmgate::workers::Workers;
use wasmgate_tests::{Upstream, build_gateway, get, within};

/// The value of a sample line of the Prometheus text `text` that starts
/// with `name_and_labels`.
fn sample(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn each_worker_accepts_on_its_own_listener_and_keeps_its_own_upstream_connections() {
    let up = Upstream::start("u").await;
    let workers = Workers::start(2).expect("worker threads");
    let gw = build_gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
         [clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        up.addr
    ))
    .await
    .unwrap()
    .with_workers(workers.handles().to_vec())
    .start()
    .await
    .expect("gateway did not start");

    // Forty connections, one request each: the kernel spreads them over
    // the two SO_REUSEPORT listeners (all forty on one has odds of 2^-39).
    const CONNECTIONS: u64 = 40;
    for _ in 0..CONNECTIONS {
        assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    }
    let text = gw.metrics_text();
    let per_worker: Vec<u64> = (0..2)
        .map(|w| {
            sample(
                &text,
                &format!("wasmgate_worker_connections_total{{worker=\"{w}\"}}"),
            )
            .unwrap_or(0)
        })
        .collect();
    assert_eq!(
        per_worker.iter().sum::<u64>(),
        CONNECTIONS,
        "every connection counted by the worker that accepted it: {per_worker:?}"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers accepted connections: {per_worker:?}"
    );

    // Each worker's upstream connection went back to that worker's pool
    // (its connection task runs on that worker); the pool of threads that
    // are not workers (health checks) was never used.
    let endpoint = gw.live().proxy().routes()[0]
        .primary()
        .expect("one cluster")
        .endpoints()[0]
        .clone();
    let idle = within("both workers' connections back in their pools", async {
        loop {
            let idle = endpoint.idle_connections();
            if idle[0] > 0 && idle[1] > 0 {
                break idle;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        idle.last(),
        Some(&0),
        "no connection in the pool of threads that are not workers: {idle:?}"
    );

    // The drain waits for every worker's connections, then the workers stop.
    let addr = gw.addr();
    within("shutdown", gw.shutdown()).await;
    drop(workers);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no worker accepts any longer"
    );
}
