//! The drain at shutdown, in process (the CLI tests in `cli.rs` run it as a
//! process, with SIGTERM): what the deadline cuts off is counted, and only
//! that.

use wasmgate_tests::{metric, start_gateway, within};

use crate::cli::{HeldUpstream, drain_config, kept_alive_h1};

#[tokio::test]
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
