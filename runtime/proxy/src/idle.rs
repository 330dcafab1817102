//! Idleness: when a connection last did something, and a future that
//! resolves once it has done nothing for a while.
//!
//! A client connection is idle when no request is in flight on it (from the
//! request head until its response body is finished) for `limits.idle_timeout`;
//! HTTP/2 pings do not count. An upgraded (WebSocket) tunnel is idle when no
//! byte moved either way for `limits.tunnel_idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

#[derive(Debug)]
struct State {
    base: Instant,
    /// Nanoseconds after `base` of the last activity.
    last: AtomicU64,
    in_flight: AtomicUsize,
    /// A request has begun on this connection.
    started: AtomicBool,
    /// Told when the first request begins.
    first: tokio::sync::Notify,
    /// Also counts this connection's requests in flight, with those of
    /// every other connection (the server's `active_requests`).
    total: Option<Gauge>,
}

/// Shared activity record of one connection.
#[derive(Debug, Clone)]
pub struct Activity(Arc<State>);

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    /// A record that starts now.
    pub fn new() -> Activity {
        Activity::with_total(None)
    }

    /// A record that starts now and also counts its requests in flight in
    /// `total` (shared by every connection of a listener).
    pub fn counted(total: Gauge) -> Activity {
        Activity::with_total(Some(total))
    }

    fn with_total(total: Option<Gauge>) -> Activity {
        Activity(Arc::new(State {
            base: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            first: tokio::sync::Notify::new(),
            total,
        }))
    }

    /// Notes activity now.
    pub fn touch(&self) {
        let nanos = self.0.base.elapsed().as_nanos() as u64;
        self.0.last.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(total) = &self.0.total {
            total.inc();
        }
        self.touch();
        if !self.0.started.load(Ordering::Relaxed) && !self.0.started.swap(true, Ordering::Relaxed)
        {
            self.0.first.notify_one();
        }
        InFlight(self.clone())
    }

    /// Whether a request has begun on this connection.
    pub fn started(&self) -> bool {
        self.0.started.load(Ordering::Relaxed)
    }

    /// Resolves once the first request has begun (at once if it has).
    pub async fn first_request(&self) {
        if !self.started() {
            // `notify_one` keeps its permit for a waiter that comes later.
            self.0.first.notified().await;
        }
    }

    fn last(&self) -> Instant {
        self.0.base + Duration::from_nanos(self.0.last.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has been in flight and nothing touched the
    /// record for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let now = Instant::now();
            let wake = if self.0.in_flight.load(Ordering::Relaxed) > 0 {
                now + idle
            } else {
                let deadline = self.last() + idle;
                if now >= deadline {
                    return;
                }
                deadline
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(total) = &self.0.0.total {
            total.dec();
        }
    }
}

/// A response body that keeps its request in flight until it is finished
/// or dropped.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An I/O stream that touches an [`Activity`] whenever bytes move.
#[derive(Debug)]
pub struct IdleIo<T> {
    inner: T,
    activity: Activity,
}

impl<T> IdleIo<T> {
    /// Wraps `inner` with a fresh record.
    pub fn new(inner: T) -> Self {
        IdleIo {
            inner,
            activity: Activity::new(),
        }
    }

    /// The record this stream touches.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_requests_in_flight_and_for_quiet() {
        let a = Activity::new();
        let guard = a.begin();
        let idle = tokio::spawn({
            let a = a.clone();
            async move { a.idle_for(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!idle.is_finished(), "a request is in flight");
        drop(guard);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!idle.is_finished(), "quiet for only 9 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle.await.unwrap();
    }

    #[test]
    fn a_counted_record_keeps_the_shared_total() {
        let total = Gauge::default();
        let (a, b) = (
            Activity::counted(total.clone()),
            Activity::counted(total.clone()),
        );
        let (one, two, three) = (a.begin(), a.begin(), b.begin());
        assert_eq!(total.get(), 3);
        drop(two);
        drop(three);
        assert_eq!(total.get(), 1);
        drop(one);
        assert_eq!(total.get(), 0);
    }
}
