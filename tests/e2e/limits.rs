//! Limits against bad clients: too many or too large headers (431), too large
//! bodies (413 before reading), slow request heads, slow responses (504).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::{Upstream, artifacts, get, metric, raw, start_gateway};

async fn gateway(up: &Upstream, limits: &str) -> wasmgate_tests::RunningGateway {
    start_gateway(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[access_log]
enabled = false
[limits]
{limits}
[engine]
max_instances = 32
[filters.fault]
path = "{fault}"
pool_size = 4
cpu_limit = "5s"
[clusters.c]
endpoints = ["{up}"]
[[routes]]
name = "r"
cluster = "c"
[[routes]]
name = "slow"
path_prefix = "/slow"
cluster = "c"
filters = [{{ name = "fault" }}]
"#,
        fault = artifacts::FAULT,
        up = up.addr
    ))
    .await
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "max_header_count = 10").await;
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        req += &format!("x-h{i}: v\r\n");
    }
    req += "\r\n";
    let out = raw(gw.addr(), req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn refusals_before_routing_are_counted() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "max_header_size = \"8KiB\"\nmax_request_body = \"1KiB\"",
    )
    .await;
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert!(
        raw(gw.addr(), big_head.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    assert!(
        raw(gw.addr(), b"GARBAGE\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    assert!(
        raw(gw.addr(), b"GET /a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    assert!(
        raw(
            gw.addr(),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        )
        .await
        .starts_with("HTTP/1.1 413")
    );
    // The connection tasks finish just after the client sees the close.
    let text = wasmgate_tests::within("metrics", async {
        loop {
            let text = gw.metrics_text();
            if metric(&text, "wasmgate_connection_errors_total{kind=\"parse\"}").is_some()
                && metric(
                    &text,
                    "wasmgate_connection_errors_total{kind=\"head_too_large\"}",
                )
                .is_some()
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        metric(&text, "wasmgate_connection_errors_total{kind=\"parse\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "wasmgate_connection_errors_total{kind=\"head_too_large\"}"
        ),
        Some(1.0)
    );
    // The path and the body size are judged by the proxy: counted as
    // requests without a route.
    assert_eq!(
        metric(
            &text,
            "wasmgate_requests_total{tenant=\"default\",route=\"\",cluster=\"\",status_class=\"4xx\"}"
        ),
        Some(2.0)
    );
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn too_large_a_head_is_431() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "max_header_size = \"8KiB\"").await;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let out = raw(gw.addr(), req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn too_large_a_body_is_413_before_it_is_read() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "max_request_body = \"1KiB\"").await;
    // The client announces a large body and waits for 100 Continue, which it
    // must not get: the answer is 413 straight away.
    let out = raw(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(!out.contains("100 Continue"), "{out}");
    assert!(out.contains("\"code\":\"request_body_too_large\""), "{out}");
    assert_eq!(up.count(), 0);
    // A body within the limit passes.
    let ok = raw(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "header_read_timeout = \"300ms\"").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Never finish the head: the gateway must close the connection.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection stayed open");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

/// A client that stops reading a large answer (the slow-read attack) is cut
/// off once the gateway's writes have waited `send_timeout`; its upstream
/// request ends with it, and another client is served meanwhile and after.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_at_the_send_timeout() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "send_timeout = \"300ms\"").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    // 64 MiB: far more than the sockets on the way can buffer.
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nx-reply-bytes: 67108864\r\n\r\n")
        .await
        .unwrap();
    let stalled = "wasmgate_connection_errors_total{kind=\"send_timeout\"}";
    wasmgate_tests::within("the stalled connection to be cut off", async {
        while metric(&gw.metrics_text(), stalled).unwrap_or(0.0) < 1.0 {
            // Served while the slow reader waits.
            assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The client, reading now, gets the start of the answer and then the
    // end of the connection, well short of 64 MiB.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < 64 << 20, "{} bytes", got.len());
    assert_eq!(
        metric(&gw.metrics_text(), "wasmgate_active_requests"),
        Some(0.0),
        "nothing of the cut-off request is left in flight"
    );
    assert_eq!(get(gw.addr(), "/", &[]).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_504() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "request_timeout = \"300ms\"").await;
    // The fault filter holds the request for 2 s.
    let reply = get(gw.addr(), "/slow", &[("x-fault", "sleep")]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["code"], "request_timeout");
    let id = reply.header("x-request-id").expect("request id on a 504");
    assert_eq!(reply.json()["request_id"], id);
    assert_eq!(up.count(), 0);
    assert_eq!(
        metric(
            &gw.metrics_text(),
            "wasmgate_requests_total{tenant=\"default\",route=\"slow\",cluster=\"c\",status_class=\"5xx\"}"
        ),
        Some(1.0),
        "the 504 is counted on its route"
    );
    // The pool is fine afterwards.
    assert_eq!(get(gw.addr(), "/slow", &[]).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let up = Upstream::start("u").await;
    // The head timeout is long, so only the idle timeout can close it.
    let gw = gateway(
        &up,
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"60s\"",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read the answer, then say nothing more: the gateway must close.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_in_flight_keeps_its_connection_open_past_the_idle_timeout() {
    use http_body_util::{BodyExt, Empty};
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "idle_timeout = \"200ms\"").await;
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // The fault filter holds the first request for 2 s, ten times the idle
    // timeout. Had the connection been judged idle meanwhile, the answer
    // would close it and the second request would fail.
    for fault in ["sleep", "none"] {
        let req = http::Request::builder()
            .uri("/slow")
            .header("host", "x")
            .header("x-fault", fault)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = wasmgate_tests::within("request", send.send_request(req))
            .await
            .expect("the connection stayed usable");
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("connection").is_none(), "{resp:?}");
        resp.into_body().collect().await.unwrap();
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn chunked_bodies_stream_through_and_an_oversized_first_chunk_is_413() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "max_request_body = \"1KiB\"").await;
    // The upstream's /grpc path echoes the body it received.
    let ok = raw(
        gw.addr(),
        b"POST /grpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("hello world"), "{ok}");
    assert_eq!(up.count(), 1);

    let big = format!(
        "POST /grpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "a".repeat(0x800)
    );
    let out = raw(gw.addr(), big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(up.count(), 1, "refused before forwarding");
    gw.shutdown().await;
}
