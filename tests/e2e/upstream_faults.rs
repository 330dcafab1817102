//! Upstream faults, injected by a TCP middlebox between the gateway and a
//! real upstream (`wasmgate_tests::middlebox`): a reset before and during the
//! answer, a slow first byte, a half-open connection, a refused connection,
//! and a kept-alive connection closed just as a request is sent on it. For
//! each: the client gets the documented status, a non-idempotent request is
//! never sent twice, the pool recovers, and nothing outlives its timeout.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::middlebox::{Fault, Middlebox};
use wasmgate_tests::{Upstream, dead_addr, get, send, start_gateway, within};

fn gateway(endpoint: std::net::SocketAddr, cluster: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[clusters.c]
endpoints = ["{endpoint}"]
{cluster}
[[routes]]
name = "r"
cluster = "c"
"#
    )
}

/// Waits until the only endpoint has `n` idle connections pooled (a
/// connection goes back when its response body ends, which may be just after
/// the client has read it).
async fn pooled(gw: &wasmgate_tests::RunningGateway, n: usize) {
    let endpoint = gw.live().proxy().routes()[0]
        .primary()
        .expect("one cluster")
        .endpoints()[0]
        .clone();
    within("the upstream connection back in its pool", async {
        while endpoint.idle_connections().iter().sum::<usize>() != n {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// The answer is for this request, not a stale one left on a connection.
fn answered_for(r: &wasmgate_tests::Reply, path: &str) {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], path, "{}", r.body);
}

#[tokio::test]
async fn a_reset_before_the_answer_is_502_and_only_an_idempotent_request_is_retried() {
    let up = Upstream::start("u").await;
    let mb = Middlebox::start(up.addr, Fault::ResetAfter(0)).await;
    let gw = start_gateway(&gateway(
        mb.addr,
        "[clusters.c.retry]\nretries = 1\nbackoff = \"1ms\"",
    ))
    .await;

    let r = send(gw.addr(), "POST", "/post", &[("content-length", "0")]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_error");
    assert_eq!(
        up.count(),
        1,
        "a POST that reached the upstream is sent once"
    );

    let r = get(gw.addr(), "/get", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_error");
    assert_eq!(up.count(), 3, "a GET is tried again once (`reset`)");

    mb.set(Fault::Pass);
    answered_for(&get(gw.addr(), "/after", &[]).await, "/after");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reset_mid_body_cuts_the_clients_answer_and_the_pool_recovers() {
    let up = Upstream::start("u").await;
    let mb = Middlebox::start(up.addr, Fault::ResetAfter(64 * 1024)).await;
    let gw = start_gateway(&gateway(mb.addr, "")).await;

    // The head went out before the reset: the gateway cannot change the
    // status any more, so it ends the client's connection short of the
    // length it announced.
    let got = within("the cut-off answer", async {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nhost: gateway.test\r\nx-reply-bytes: 1048576\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = s.read(&mut buf).await
            && n > 0
        {
            out.extend_from_slice(&buf[..n]);
        }
        out
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("content-length: 1048576"), "{}", &text[..300]);
    let head = text.find("\r\n\r\n").unwrap() + 4;
    assert!(
        got.len() - head < 1 << 20,
        "the body stops short: {} bytes",
        got.len() - head
    );

    mb.set(Fault::Pass);
    answered_for(&get(gw.addr(), "/after", &[]).await, "/after");
    assert_eq!(mb.accepted(), 2, "the reset connection was not reused");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_first_byte_is_504_at_the_per_try_timeout_and_its_late_answer_is_never_served() {
    let up = Upstream::start("u").await;
    let mb = Middlebox::start(
        up.addr,
        Fault::SlowFirstByte(std::time::Duration::from_secs(3)),
    )
    .await;
    let gw = start_gateway(&gateway(
        mb.addr,
        "[clusters.c.retry]\nper_try_timeout = \"200ms\"",
    ))
    .await;

    let r = get(gw.addr(), "/slow", &[]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_timeout");
    let r = send(gw.addr(), "POST", "/slow-post", &[("content-length", "0")]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(up.count(), 2, "a timeout is not retried unless asked");

    // The slow answers are still on their way: a connection that timed out
    // is not pooled, so the next request is never answered with them.
    mb.set(Fault::Pass);
    answered_for(&get(gw.addr(), "/after", &[]).await, "/after");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_half_open_upstream_is_504_at_the_cluster_timeout_and_its_connection_is_closed() {
    let up = Upstream::start("u").await;
    let mb = Middlebox::start(up.addr, Fault::HalfOpen).await;
    // The route's `timeout` bounds the upstream part of the request.
    let toml = gateway(mb.addr, "").replace(
        "cluster = \"c\"\n",
        "cluster = \"c\"\ntimeout = \"300ms\"\n",
    );
    assert!(toml.contains("timeout = \"300ms\""));
    let gw = start_gateway(&toml).await;

    let r = get(gw.addr(), "/never", &[]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_timeout");
    assert_eq!(
        up.count(),
        0,
        "the middlebox answered nothing and sent nothing on"
    );
    within("the gateway to close the half-open connection", async {
        while mb.open() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_refused_connection_is_502_upstream_unavailable() {
    let gw = start_gateway(&gateway(dead_addr().await, "")).await;
    let r = send(gw.addr(), "POST", "/x", &[("content-length", "0")]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_unavailable");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_kept_alive_connection_closed_as_a_request_is_sent_is_retried_only_when_idempotent() {
    let up = Upstream::start("u").await;
    let mb = Middlebox::start(up.addr, Fault::CloseOnNextRequest).await;
    let gw = start_gateway(&gateway(mb.addr, "")).await;

    answered_for(&get(gw.addr(), "/first", &[]).await, "/first");
    assert_eq!(mb.accepted(), 1);
    pooled(&gw, 1).await;
    // Sent on the pooled connection, which closes as it arrives: tried
    // again on a new one.
    answered_for(&get(gw.addr(), "/second", &[]).await, "/second");
    assert_eq!(mb.accepted(), 2);
    assert_eq!(up.count(), 2);
    pooled(&gw, 1).await;
    // A POST on the next pooled connection meets the same close. It may
    // have been processed for all the gateway knows: not sent again.
    let r = send(gw.addr(), "POST", "/third", &[("content-length", "0")]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["code"], "upstream_error");
    assert_eq!(up.count(), 2, "the POST never reached the upstream");
    assert_eq!(mb.accepted(), 2, "and was not tried on a new connection");
    // The pool recovers.
    answered_for(&get(gw.addr(), "/fourth", &[]).await, "/fourth");
    gw.shutdown().await;
}
