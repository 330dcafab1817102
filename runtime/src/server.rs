//! Listeners and connections: accepts TCP connections and serves HTTP/1.1 on
//! each with hyper, handing every request to the [`Proxy`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use tokio::sync::Semaphore;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Time in-flight requests get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until `shutdown` becomes true, then drains.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    limits: LimitsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // At most `max_connections` open: past it the loop stops accepting and
    // new connections wait in the kernel's backlog.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_header_count)
        .max_header_size(limits.max_header_size)
        .keep_alive(true);
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
                let proxy = proxy.clone();
                let service = service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                metrics.connections.inc();
                metrics.active_connections.inc();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
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
