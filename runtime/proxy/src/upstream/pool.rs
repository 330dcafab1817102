//! The connections to one endpoint, owned by the gateway (as Pingora owns
//! its): HTTP/1.1 connections idle in a lock-free queue, taken by one
//! request at a time and handed back when its response body is done
//! (through [`Lease`], held by the request until then); one shared HTTP/2
//! connection that every request multiplexes on.
//!
//! No task runs between a response and the next request on the same
//! connection (hyper-util's pool spawns one per returned connection to wait
//! for it to be ready), no lock is taken, and a request that was not sent
//! (a kept-alive connection the endpoint had just closed) comes back to be
//! sent on another, so the request head is never copied for that case.
//!
//! What stays cluster-wide does not live here: `max_connections` and
//! `max_pending` are the connector's (`client::ConnectionLimit`, a
//! semaphore taken only when a connection is opened), the circuit
//! breaker's `max_requests` an atomic of the cluster, health and outlier
//! state atomics of the endpoint.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use crate::body::ProxyBody;

/// Idle HTTP/1.1 connections kept per endpoint at most.
pub const MAX_IDLE: usize = 256;

/// How long a request waits for a pooled connection whose last response
/// ended to say it is ready, before it takes another (a guard: the wait is
/// for one step of the connection's own task).
const READY_WAIT: Duration = Duration::from_millis(50);

/// An endpoint's connections.
pub struct ConnPool {
    idle: ArrayQueue<Idle>,
    h2: ArcSwapOption<http2::SendRequest<ProxyBody>>,
    /// Serializes opening the HTTP/2 connection, so requests arriving
    /// together share one rather than each opening their own.
    h2_opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.idle.len())
            .field("h2", &self.h2.load().is_some())
            .finish()
    }
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

impl Default for ConnPool {
    fn default() -> Self {
        ConnPool {
            idle: ArrayQueue::new(MAX_IDLE),
            h2: ArcSwapOption::empty(),
            h2_opening: tokio::sync::Mutex::new(()),
        }
    }
}

impl ConnPool {
    /// An idle HTTP/1.1 connection ready for a request, dropping the ones
    /// closed or idle past `idle_timeout`. Only connections whose last
    /// response was read to its end come back here, so one not ready yet is
    /// one whose task has not yet taken that end in (it runs on another
    /// worker): it is waited for, briefly.
    pub(crate) async fn take_h1(
        &self,
        idle_timeout: Duration,
    ) -> Option<http1::SendRequest<ProxyBody>> {
        while let Some(Idle { mut sender, since }) = self.idle.pop() {
            if sender.is_closed() || since.elapsed() > idle_timeout {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            match poll_ready_once(&mut sender) {
                Poll::Ready(Ok(())) => return Some(sender),
                Poll::Ready(Err(_)) => continue,
                Poll::Pending => {}
            }
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                return Some(sender);
            }
        }
        None
    }

    /// The shared HTTP/2 connection, while it is open.
    pub(crate) fn h2(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let shared = self.h2.load_full()?;
        if shared.is_closed() {
            self.h2.store(None);
            return None;
        }
        Some((*shared).clone())
    }

    /// Forgets the shared HTTP/2 connection once it takes no more
    /// requests (a new one that took its place meanwhile is kept).
    pub(crate) fn forget_h2(&self) {
        if self
            .h2
            .load()
            .as_ref()
            .is_some_and(|s| s.is_closed() || !s.is_ready())
        {
            self.h2.store(None);
        }
    }

    pub(crate) fn set_h2(&self, sender: &http2::SendRequest<ProxyBody>) {
        self.h2.store(Some(Arc::new(sender.clone())));
    }

    pub(crate) fn h2_opening(&self) -> &tokio::sync::Mutex<()> {
        &self.h2_opening
    }

    /// Connections idle now (HTTP/1.1).
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// Asks a connection whether it is ready, without waiting.
fn poll_ready_once(sender: &mut http1::SendRequest<ProxyBody>) -> Poll<hyper::Result<()>> {
    sender.poll_ready(&mut Context::from_waker(Waker::noop()))
}

/// An HTTP/1.1 connection lent to one request: back to its pool when the
/// request is done with it, if its response was read to its end and it is
/// still open (an upgrade takes it over; a body dropped half read leaves
/// the connection to close).
pub struct Lease {
    sender: Option<http1::SendRequest<ProxyBody>>,
    pool: Arc<ConnPool>,
    /// The response was read to its end.
    complete: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

impl Lease {
    pub(crate) fn new(sender: http1::SendRequest<ProxyBody>, pool: Arc<ConnPool>) -> Lease {
        Lease {
            sender: Some(sender),
            pool,
            complete: false,
        }
    }

    /// Its response was read to its end: the connection may be reused.
    pub(crate) fn complete(&mut self) {
        self.complete = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take()
            && self.complete
            && !sender.is_closed()
        {
            // A full queue drops the connection.
            let _ = self.pool.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}
