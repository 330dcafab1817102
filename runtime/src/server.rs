//! Listeners and connections: accepts TCP connections (terminating TLS when
//! configured) and serves HTTP/1.1 and HTTP/2 on each with hyper (HTTP/2 by
//! ALPN over TLS, or by prior knowledge in cleartext: h2c), handing every
//! request to the [`Proxy`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::tls::TlsTerminator;

/// Time in-flight requests get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Accepts connections until `shutdown` becomes true, then drains.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    limits: LimitsConfig,
    tls: Option<Arc<TlsTerminator>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // At most `max_connections` open: past it the loop stops accepting and
    // new connections wait in the kernel's backlog.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let http = Arc::new(http_builder(&limits));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
        };
        tokio::select! {
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
                let _ = stream.set_nodelay(true);
                metrics.connections.inc();
                metrics.active_connections.inc();
                let (proxy, metrics, http, tls) = (proxy.clone(), metrics.clone(), http.clone(), tls.clone());
                let watcher = graceful.watcher();
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    let secure = tls.is_some();
                    let service = service_fn(move |req| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(proxy.handle(req, peer, secure).await) }
                    });
                    let result = match tls {
                        None => watcher.watch(http.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned()).await,
                        Some(tls) => match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                metrics.tls_handshakes.inc();
                                watcher.watch(http.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned()).await
                            }
                            Ok(Err(e)) => {
                                metrics.tls_handshake_errors.inc();
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                                Ok(())
                            }
                            Err(_) => {
                                metrics.tls_handshake_errors.inc();
                                tracing::debug!(%peer, "TLS handshake timed out");
                                Ok(())
                            }
                        },
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended with an error: {e}");
                    }
                    metrics.active_connections.dec();
                    drop(slot);
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain timeout: closing remaining connections"),
    }
}
