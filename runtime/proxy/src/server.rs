//! Listeners and connections: accepts TCP connections (reading a PROXY
//! protocol header first and terminating TLS when configured) and serves
//! HTTP/1.1 and HTTP/2 on each with hyper (HTTP/2 by ALPN over TLS, or by
//! prior knowledge in cleartext: h2c), handing every request to the
//! [`Proxy`](crate::proxy::Proxy).
//!
//! Each connection ends when the client closes it, when it has been idle
//! (no request in flight) for `limits.idle_timeout`, or at shutdown; the
//! last two close it gracefully (HTTP/1.1: `Connection: close` on the
//! response in flight, then close; HTTP/2: GOAWAY, then the open streams
//! finish).
//!
//! **Drain.** At shutdown the listener closes at once (new connections are
//! refused) and every connection is closed gracefully. Connections still
//! open after `server.drain_timeout` are cut: the requests still in flight
//! on them are counted in `wasmgate_drain_cutoff_requests_total` (and the
//! connections in `wasmgate_drain_cutoff_connections_total`) and logged.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::idle::{Activity, Tracked};
use crate::proxy::{ConnHold, ConnInfo, Current};
use crate::proxy_protocol::{self, Prefixed};
use crate::stall::{SendTimeout, is_send_stalled};
use crate::tls::TlsTerminator;
use wasmgate_config::LimitsConfig;
use wasmgate_metrics::{ConnErrorLabels, Metrics, WorkerLabels};

/// How long cut connections get to wind down after the drain deadline
/// (dropping a connection's task is immediate; this only bounds the wait
/// for their slots to come back before `serve` returns).
const CUT_GRACE: Duration = Duration::from_secs(1);

/// At shutdown, how long a connection that has sent no request yet may take
/// to send its first (at most `limits.header_read_timeout`).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How the listener accepts connections.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Request and connection limits.
    pub limits: LimitsConfig,
    /// TLS termination, if configured.
    pub tls: Option<Arc<TlsTerminator>>,
    /// Require a PROXY protocol header on every connection, and accept
    /// connections only from these peers (the load balancers that send it).
    pub proxy_protocol: Option<Arc<[ipnet::IpNet]>>,
    /// Time in-flight requests get to finish after shutdown starts
    /// (`server.drain_timeout`).
    pub drain_timeout: Duration,
    /// The gateway-wide overload guard: fresh connections are closed while
    /// descriptors run short.
    pub overload: Arc<crate::overload::OverloadGuard>,
}

fn http_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_header_count)
        // The read buffer bounds the request head (431 past it).
        .max_buf_size(limits.max_header_size.max(8192))
        .keep_alive(true);
    // HTTP/2: bounded streams and header lists; h2 (0.4.x) carries the
    // rapid-reset and CONTINUATION-flood fixes and bounds pending resets.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// One open connection in a gauge, from `new` until dropped.
struct Open(prometheus_client::metrics::gauge::Gauge);

impl Open {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Everything a connection task needs, shared by all of them.
struct Shared {
    current: Arc<Current>,
    metrics: Arc<Metrics>,
    http: auto::Builder<TokioExecutor>,
    options: ListenerOptions,
}

/// A listening socket and the worker runtime that accepts on it.
#[derive(Debug)]
pub struct Acceptor {
    /// The socket (made non-blocking here).
    pub listener: std::net::TcpListener,
    /// The worker thread's runtime that accepts on it and serves what it
    /// accepts (thread-per-core); `None`: the runtime `serve` runs on.
    pub worker: Option<(usize, tokio::runtime::Handle)>,
}

/// Accepts connections on every acceptor until `shutdown` becomes true,
/// then drains them all.
///
/// All acceptors share one `max_connections` (a semaphore: a worker waits
/// for a slot another worker's connection frees only at the limit) and one
/// drain: the drain deadline is counted from the shutdown, for every
/// worker's connections alike.
pub async fn serve(
    acceptors: Vec<Acceptor>,
    current: Arc<Current>,
    metrics: Arc<Metrics>,
    options: ListenerOptions,
    shutdown: watch::Receiver<bool>,
) {
    // At most `max_connections` open: past it the loops stop accepting and
    // new connections wait in the kernel's backlog. Each connection holds a
    // permit; all permits back means all connections closed.
    let max = options.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    // Becomes true when the drain deadline has passed: connections still
    // open are dropped (in whatever phase: PROXY header, TLS handshake,
    // HTTP), with the requests in flight on them.
    let (cut, cut_rx) = watch::channel(false);
    let drain_timeout = options.drain_timeout;
    let shared = Arc::new(Shared {
        current,
        metrics,
        http: http_builder(&options.limits),
        options,
    });
    let mut loops = Vec::with_capacity(acceptors.len());
    for Acceptor { listener, worker } in acceptors {
        let accept = accept_loop(
            listener,
            worker.as_ref().map(|(i, _)| *i),
            shared.clone(),
            slots.clone(),
            shutdown.clone(),
            cut_rx.clone(),
        );
        loops.push(match worker {
            Some((_, handle)) => handle.spawn(accept),
            None => tokio::spawn(accept),
        });
    }
    // Every loop ends at the shutdown (its listener closed); the drain is
    // then waited for here, over all of them.
    for l in loops {
        if let Err(e) = l.await {
            tracing::error!("an accept loop ended abnormally: {e}");
        }
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => {
            tracing::info!("drained: all connections closed");
            return;
        }
        () = tokio::time::sleep(drain_timeout) => {}
    }
    // The deadline passed: count what is cut off, then cut it.
    let metrics = &shared.metrics;
    let requests = u64::try_from(metrics.active_requests.get()).unwrap_or(0);
    let connections = max.saturating_sub(slots.available_permits()) as u64;
    metrics.drain_cutoff_requests.inc_by(requests);
    metrics.drain_cutoff_connections.inc_by(connections);
    tracing::warn!(
        requests,
        connections,
        "drain deadline ({drain_timeout:?}) passed: cutting off {requests} requests in flight \
         on {connections} open connections"
    );
    let _ = cut.send(true);
    if tokio::time::timeout(CUT_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::debug!("some connections were still closing when the drain ended");
    }
}

/// One listener's accept loop, on the runtime that serves what it accepts:
/// runs until the shutdown, then closes the listener.
async fn accept_loop(
    listener: std::net::TcpListener,
    worker: Option<usize>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    cut_rx: watch::Receiver<bool>,
) {
    // Registered with this runtime's reactor, so made here.
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(?worker, "cannot accept on the listener: {e}");
            return;
        }
    };
    let accepted_here = worker.map(|w| {
        shared
            .metrics
            .worker_connections
            .get_or_create_owned(&WorkerLabels {
                worker: u32::try_from(w).unwrap_or(u32::MAX),
            })
    });
    loop {
        // Shutdown first (`biased`): once it is asked for, not one more
        // connection is taken from the queue (another process sharing the
        // socket takes them, or they are refused when it closes).
        let slot = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off briefly
                        // rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if shared.options.overload.pressure() == crate::overload::Pressure::Files {
                    // Out of descriptors soon: close at once rather than
                    // hold one more socket open.
                    shared
                        .metrics
                        .overload_shed
                        .get_or_create(&ConnErrorLabels { kind: "open_files" })
                        .inc();
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                shared.metrics.connections.inc();
                if let Some(c) = &accepted_here {
                    c.inc();
                }
                let active = Open::new(&shared.metrics.active_connections);
                let (shared, shutdown) = (shared.clone(), shutdown.clone());
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    // Counted open until this task ends, by any path
                    // (a panic in the connection included).
                    let _active = active;
                    // The slot is released when the connection and any
                    // tunnel upgraded from it are gone.
                    let hold = ConnHold { slot: Arc::new(slot), shutdown: shutdown.clone() };
                    tokio::select! {
                        () = connection(&shared, stream, peer, shutdown, hold) => {}
                        // Already counted by the drain.
                        _ = cut.wait_for(|cut| *cut) => {
                            tracing::debug!(%peer, "drain deadline: connection cut");
                        }
                    }
                });
            }
        }
    }
}

/// One client connection: PROXY header, TLS handshake, then HTTP.
async fn connection(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    hold: ConnHold,
) {
    let limits = &shared.options.limits;
    // The PROXY header and the TLS handshake each get `header_read_timeout`.
    let (client, stream) = if let Some(senders) = &shared.options.proxy_protocol {
        // A header from anyone else would let a client claim any address
        // (an IPv4 peer on a dual-stack socket is compared as IPv4).
        if !senders
            .iter()
            .any(|n| n.contains(&peer.ip().to_canonical()))
        {
            shared.metrics.proxy_protocol_errors.inc();
            tracing::debug!(%peer, "PROXY protocol: the peer is not in server.proxy_protocol_from; closed");
            return;
        }
        match tokio::time::timeout(
            limits.header_read_timeout,
            proxy_protocol::accept(stream, peer),
        )
        .await
        {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                shared.metrics.proxy_protocol_errors.inc();
                tracing::debug!(%peer, "PROXY protocol: {e}");
                return;
            }
            Err(_) => {
                shared.metrics.proxy_protocol_errors.inc();
                tracing::debug!(%peer, "PROXY protocol header timed out");
                return;
            }
        }
    } else {
        (peer, Prefixed::plain(stream))
    };
    match &shared.options.tls {
        None => {
            let info = ConnInfo {
                peer: client,
                tls: None,
                hold: Some(hold),
            };
            serve_http(shared, stream, info, shutdown).await;
        }
        Some(tls) => {
            match tokio::time::timeout(limits.header_read_timeout, tls.accept(stream)).await {
                Ok(Ok((stream, tls_info))) => {
                    shared.metrics.tls_handshakes.inc();
                    let info = ConnInfo {
                        peer: client,
                        tls: Some(tls_info),
                        hold: Some(hold),
                    };
                    serve_http(shared, stream, info, shutdown).await;
                }
                Ok(Err(e)) => {
                    shared.metrics.tls_handshake_errors.inc();
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                }
                Err(_) => {
                    shared.metrics.tls_handshake_errors.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// Serves HTTP on an established stream until it closes, idles out or the
/// gateway shuts down.
async fn serve_http<S>(
    shared: &Shared,
    stream: S,
    info: ConnInfo,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::counted(shared.metrics.active_requests.clone());
    let peer = info.peer;
    let info = Arc::new(info);
    let service = {
        let (current, activity) = (shared.current.clone(), activity.clone());
        let stopping = shutdown.clone();
        service_fn(move |req: Request<Incoming>| {
            // Each request runs wholly on the generation current when it
            // arrived (a reload or module swap affects only later requests).
            let (proxy, info) = (current.load_full(), info.clone());
            let in_flight = activity.begin();
            let stopping = stopping.clone();
            let http1 = req.version() < http::Version::HTTP_2;
            async move {
                let mut resp = proxy.handle(req, &info).await;
                // An HTTP/1.1 response made once the gateway is shutting
                // down says so itself, whichever of the shutdown and the
                // response the connection's task sees first.
                if http1
                    && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                    && *stopping.borrow()
                {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        })
    };
    let conn = shared.http.serve_connection_with_upgrades(
        TokioIo::new(SendTimeout::new(stream, shared.options.limits.send_timeout)),
        service,
    );
    tokio::pin!(conn);
    let idle_timeout = shared.options.limits.idle_timeout;
    // At shutdown, a connection that has not sent its first request yet (it
    // was accepted, or finished its TLS handshake, just before) gets a
    // moment to send it: closing it at once would fail a request the client
    // is sending on a connection the gateway accepted. That request is
    // answered with `Connection: close` (or under GOAWAY).
    let first_request_grace = shared
        .options
        .limits
        .header_read_timeout
        .min(FIRST_REQUEST_GRACE);
    let mut closing = false;
    let mut close_by: Option<tokio::time::Instant> = None;
    if *shutdown.borrow() {
        close_by = Some(tokio::time::Instant::now() + first_request_grace);
    }
    let result = loop {
        let waiting = close_by.is_some() && !closing;
        let deadline = close_by.unwrap_or_else(tokio::time::Instant::now);
        // `biased`, shutdown first: when the shutdown and a response in
        // flight wake this task together (a busy machine runs it late), the
        // connection is told to close before the response is written, so
        // the response says `Connection: close` (or goes out under GOAWAY).
        tokio::select! {
            biased;
            changed = shutdown.changed(), if !closing && close_by.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    if activity.started() {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        close_by = Some(tokio::time::Instant::now() + first_request_grace);
                    }
                }
            }
            () = activity.idle_for(idle_timeout), if !closing && close_by.is_none() => {
                tracing::debug!(%peer, "idle for {idle_timeout:?}: closing");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.first_request(), if waiting => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline), if waiting => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            r = conn.as_mut() => break r,
        }
    };
    if let Err(e) = result {
        let kind = match e.downcast_ref::<hyper::Error>() {
            _ if is_send_stalled(&*e) => "send_timeout",
            Some(h) if h.is_parse_too_large() => "head_too_large",
            Some(h) if h.is_parse() => "parse",
            Some(h) if h.is_timeout() => "header_timeout",
            Some(h) if h.is_canceled() || h.is_incomplete_message() => "closed",
            None if e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted) =>
            {
                // hyper-util's protocol sniffing, cancelled by a graceful close.
                "closed"
            }
            _ => "other",
        };
        if kind != "closed" {
            shared
                .metrics
                .connection_errors
                .get_or_create(&ConnErrorLabels { kind })
                .inc();
        }
        tracing::debug!(%peer, kind, "connection ended with an error: {e}");
    }
}
