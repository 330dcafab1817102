//! The access log: one JSON line per request, written when the response body
//! has been sent (so it has the byte count and the full duration), to stdout
//! or a file, by a dedicated writer thread. The request path never blocks on
//! it: when the writer falls behind, lines are dropped and counted
//! (`wasmgate_access_log_dropped_total`).

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use wasmgate_config::access_log::AccessLogTarget;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use wasmgate_metrics::Metrics;

/// The writer handle the request path uses.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    metrics: Arc<Metrics>,
}

/// Lines buffered between the request path and the writer thread.
const QUEUE: usize = 16 * 1024;

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn start(target: &AccessLogTarget, metrics: Arc<Metrics>) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("wasmgate-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AccessLog { tx, metrics })
    }

    fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

/// Longest a written line waits in the buffer before it reaches the file.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    // Lines are buffered and flushed at most every FLUSH_EVERY (or when the
    // buffer fills): one write system call per batch, not per request.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut dirty = false;
    loop {
        let next = if dirty {
            rx.recv_timeout(FLUSH_EVERY)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match next {
            Ok(line) => {
                let _ = out.write_all(line.as_bytes());
                let _ = out.write_all(b"\n");
                dirty = true;
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                dirty = false;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}

/// What is known about a request, filled in along the way.
#[derive(Debug, Default)]
pub struct Entry {
    /// The tenant whose request it is (the operator's, `default`, until
    /// the host names another).
    pub tenant: wasmgate_config::TenantId,
    /// Route name, if one matched.
    pub route: Option<Arc<str>>,
    /// Cluster the request went to.
    pub cluster: Option<Arc<str>>,
    /// Endpoint that answered.
    pub endpoint: Option<String>,
    /// Method.
    pub method: String,
    /// Path and query as forwarded.
    pub path: String,
    /// Client address as filters saw it.
    pub client: String,
    /// Request id.
    pub request_id: String,
    /// W3C trace id, if one arrived.
    pub trace_id: Option<String>,
    /// `filter:outcome` per filter call.
    pub filters: Vec<String>,
    /// On a cached route: `hit`, `stale`, `miss` or `bypass`.
    pub cache: Option<&'static str>,
    /// Response status.
    pub status: u16,
}

/// One access log line, serialised in this field order.
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "display")]
    time: humantime::Rfc3339Timestamp,
    tenant: &'a str,
    route: Option<&'a str>,
    cluster: Option<&'a str>,
    endpoint: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    client: &'a str,
    status: u16,
    bytes: u64,
    complete: bool,
    duration_ms: f64,
    request_id: &'a str,
    trace_id: Option<&'a str>,
    filters: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'a str>,
}

fn display<S: serde::Serializer>(v: &humantime::Rfc3339Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A response body that writes the access log line when it has been sent
/// (or dropped, if the client went away).
pub struct LoggedBody<B: Body> {
    inner: B,
    pending: Option<Box<(AccessLog, Entry, Instant)>>,
    bytes: u64,
    /// The request's place among its tenant's requests in flight, given
    /// back when the body is dropped.
    _admitted: Option<wasmgate_engine::RequestGuard>,
}

impl<B: Body> LoggedBody<B> {
    /// Wraps `inner`; `log` is `None` when logging is off.
    pub fn new(inner: B, log: Option<(AccessLog, Entry, Instant)>) -> Self {
        LoggedBody {
            inner,
            pending: log.map(Box::new),
            bytes: 0,
            _admitted: None,
        }
    }

    /// Holds the request's place among its tenant's requests in flight
    /// until the body is done with.
    pub fn holding(mut self, admitted: Option<wasmgate_engine::RequestGuard>) -> Self {
        self._admitted = admitted;
        self
    }

    fn finish(&mut self, complete: bool) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let (log, e, started) = *pending;
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()),
            tenant: e.tenant.as_str(),
            route: e.route.as_deref(),
            cluster: e.cluster.as_deref(),
            endpoint: e.endpoint.as_deref(),
            method: &e.method,
            path: &e.path,
            client: &e.client,
            status: e.status,
            bytes: self.bytes,
            complete,
            duration_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            request_id: &e.request_id,
            trace_id: e.trace_id.as_deref(),
            filters: &e.filters,
            cache: e.cache,
        };
        // Serialising a borrowed struct straight to text: no value tree.
        if let Ok(text) = serde_json::to_string(&line) {
            log.send(text);
        }
    }
}

impl<B: Body> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        // A body that was empty from the start is never polled: it is complete.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(true),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
