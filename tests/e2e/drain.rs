//! The drain at shutdown, in process (the CLI tests in `cli.rs` run it as a
//! process, with SIGTERM): what the deadline cuts off is counted, and only
//! that.

use wasmgate_tests::{metric, start_gateway, within};

use crate::cli::{HeldUpstream, drain_config, kept_alive_h1};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_counts_the_requests_and_connections_it_cut_off() {
    let up = HeldUpstream::start().await;
    let gw = start_gateway(&drain_config(up.addr, "drain_timeout = \"3s\"")).await;
    // One connection idle (closed gracefully at once, well within the
    // deadline), one with a request the upstream never answers.
    let (_idle, idle_conn) = kept_alive_h1(gw.addr()).await;
    let (mut busy, busy_conn) = kept_alive_h1(gw.addr()).await;
    let req = hyper::Request::get("/never")
        .header("host", "gw")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tokio::spawn(busy.send_request(req));
    up.wait_arrived(1).await;
    let m = gw.metrics_text();
    assert_eq!(metric(&m, "wasmgate_active_requests"), Some(1.0), "{m}");

    let live = gw.live().clone();
    within("shutdown", gw.shutdown()).await;
    let m = live.proxy().metrics_text();
    assert_eq!(
        metric(&m, "wasmgate_drain_cutoff_requests_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "wasmgate_drain_cutoff_connections_total"),
        Some(1.0),
        "only the busy connection was cut: {m}"
    );
    assert_eq!(metric(&m, "wasmgate_active_requests"), Some(0.0), "{m}");
    let cut = within("the cut request", resp).await.unwrap();
    assert!(cut.is_err(), "cut off, not answered: {cut:?}");
    within("the idle connection", idle_conn)
        .await
        .unwrap()
        .expect("the idle connection was closed gracefully");
    let _ = within("the cut connection", busy_conn).await;
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_in_its_proxy_protocol_header_is_cut_at_the_deadline_too() {
    use tokio::io::AsyncReadExt;
    let up = HeldUpstream::start().await;
    // The header may take longer than the hang guard: only the drain
    // deadline can end this connection in time.
    let config = drain_config(
        up.addr,
        "drain_timeout = \"1s\"\nproxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]\n[limits]\nheader_read_timeout = \"10m\"",
    );
    let gw = start_gateway(&config).await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    // Accepted (it holds a connection slot) before the shutdown starts.
    wasmgate_tests::within("the connection to be accepted", async {
        while metric(&gw.metrics_text(), "wasmgate_active_connections") != Some(1.0) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let live = gw.live().clone();
    within("shutdown", gw.shutdown()).await;
    let mut buf = [0u8; 16];
    let read = within("the silent connection to be closed", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
    let m = live.proxy().metrics_text();
    assert_eq!(
        metric(&m, "wasmgate_drain_cutoff_connections_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "wasmgate_drain_cutoff_requests_total"),
        Some(0.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_just_before_shutdown_gets_its_first_request_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = wasmgate_tests::Upstream::start("u").await;
    let gw = start_gateway(&drain_config(up.addr, "drain_timeout = \"5s\"")).await;
    // Connected and accepted, but the request is not sent yet.
    let mut fresh = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    within("the connection to be accepted", async {
        while metric(&gw.metrics_text(), "wasmgate_active_connections") != Some(1.0) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let live = gw.live().clone();
    let shutdown = tokio::spawn(gw.shutdown());
    within("the shutdown to begin", async {
        while !live.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // The request the client was about to send is answered, with the
    // connection closed after it (not reset before it).
    fresh
        .write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the answer", fresh.read_to_end(&mut answer))
        .await
        .expect("answered, not reset");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    within("shutdown", shutdown).await.unwrap();
}
