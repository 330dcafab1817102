//! The access log: one JSON line per request, written when the response body
//! has been sent (so it has the byte count and the full duration), to stdout
//! or a file, by a dedicated writer thread. The request path never blocks on
//! it and never wakes it for a line: each worker thread appends to a buffer
//! of its own (an uncontended lock), which the writer takes every
//! [`FLUSH_EVERY`], or sooner once one holds [`FLUSH_AT`] bytes (as Envoy's
//! access-log flushing does). When the writer falls behind, lines are
//! dropped and counted (`wasmgate_access_log_dropped_total`).

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use wasmgate_config::access_log::AccessLogTarget;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use wasmgate_metrics::Metrics;

/// The writer handle the request path uses.
#[derive(Debug, Clone)]
pub struct AccessLog {
    buffers: Arc<Buffers>,
    metrics: Arc<Metrics>,
}

/// The lines waiting for the writer.
#[derive(Debug)]
struct Buffers {
    /// One per worker thread (see [`crate::workers`]), and one for the
    /// threads that are not workers.
    lines: Box<[Mutex<Vec<u8>>]>,
    /// Set (and the writer woken) when a buffer passes [`FLUSH_AT`].
    full: Mutex<bool>,
    wake: Condvar,
}

/// Longest a written line waits before it reaches the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A buffer this large wakes the writer before its tick.
pub const FLUSH_AT: usize = 64 << 10;

/// The most one buffer holds: past it (the writer has fallen that far
/// behind) lines are dropped and counted.
const BUFFER_MAX: usize = 4 << 20;

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
        let buffers = Arc::new(Buffers {
            lines: (0..=crate::workers::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            full: Mutex::new(false),
            wake: Condvar::new(),
        });
        let theirs = buffers.clone();
        std::thread::Builder::new()
            .name("wasmgate-access-log".into())
            .spawn(move || write_lines(&theirs, out))?;
        Ok(AccessLog { buffers, metrics })
    }

    /// Appends `line` to this thread's buffer, serialised in place (no
    /// value tree, no string of its own).
    fn send(&self, line: &Line<'_>) {
        let lines = &self.buffers.lines;
        let last = lines.len() - 1;
        let i = crate::workers::current().map_or(last, |w| w.min(last));
        let mut buf = lines[i].lock().unwrap_or_else(PoisonError::into_inner);
        if buf.len() >= BUFFER_MAX {
            drop(buf);
            self.metrics.access_log_dropped.inc();
            return;
        }
        let before = buf.len();
        if serde_json::to_writer(&mut *buf, line).is_err() {
            buf.truncate(before);
            return;
        }
        buf.push(b'\n');
        let crossed = before < FLUSH_AT && buf.len() >= FLUSH_AT;
        drop(buf);
        if crossed {
            *self
                .buffers
                .full
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = true;
            self.buffers.wake.notify_one();
        }
    }
}

/// The writer thread: every tick (or when a buffer fills), takes each
/// buffer's lines (swapping in an empty one, so a worker waits at most for
/// a swap) and writes them; ends, after a last write, when the handles are
/// all gone.
fn write_lines(buffers: &Arc<Buffers>, mut out: Box<dyn Write + Send>) {
    let mut spare = Vec::new();
    loop {
        {
            let mut full = buffers.full.lock().unwrap_or_else(PoisonError::into_inner);
            if !*full {
                full = buffers
                    .wake
                    .wait_timeout(full, FLUSH_EVERY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            *full = false;
        }
        // Checked before the buffers are taken: a line sent before the
        // last handle went is in them.
        let last = Arc::strong_count(buffers) == 1;
        let mut wrote = false;
        for lines in &buffers.lines {
            std::mem::swap(
                &mut *lines.lock().unwrap_or_else(PoisonError::into_inner),
                &mut spare,
            );
            if !spare.is_empty() {
                let _ = out.write_all(&spare);
                wrote = true;
                spare.clear();
            }
        }
        if wrote {
            let _ = out.flush();
        }
        if last {
            return;
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
        log.send(&line);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(log: &AccessLog, request_id: &str) {
        let entry = Entry {
            method: "GET".into(),
            path: "/".into(),
            request_id: request_id.into(),
            status: 200,
            ..Entry::default()
        };
        let body = http_body_util::Empty::<Bytes>::new();
        drop(LoggedBody::new(
            body,
            Some((log.clone(), entry, Instant::now())),
        ));
    }

    #[test]
    fn lines_from_every_thread_reach_the_file_and_the_last_handle_flushes_them() {
        let dir = std::env::temp_dir().join(format!("wasmgate-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::start(&AccessLogTarget::File(path.clone()), Metrics::new()).unwrap();
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        logged(&log, &format!("t{t}-{i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(log);
        // The writer takes what is left and ends once no handle is left.
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= 1500 || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ids: std::collections::HashSet<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
                v["request_id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 1500, "every line once, none torn");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_buffer_past_its_bound_drops_lines_and_counts_them() {
        let metrics = Metrics::new();
        // No writer thread: as if it had fallen BUFFER_MAX behind.
        let log = AccessLog {
            buffers: Arc::new(Buffers {
                lines: vec![Mutex::new(Vec::new())].into_boxed_slice(),
                full: Mutex::new(false),
                wake: Condvar::new(),
            }),
            metrics: metrics.clone(),
        };
        logged(&log, "kept");
        assert!(!*log.buffers.full.lock().unwrap(), "one line wakes no one");
        // A line that takes the buffer past FLUSH_AT wakes the writer.
        log.buffers.lines[0]
            .lock()
            .unwrap()
            .resize(FLUSH_AT - 1, b'\n');
        logged(&log, "crossing");
        assert!(*log.buffers.full.lock().unwrap(), "the writer was woken");
        // Past BUFFER_MAX a line is dropped and counted.
        log.buffers.lines[0]
            .lock()
            .unwrap()
            .resize(BUFFER_MAX, b'\n');
        logged(&log, "dropped");
        assert_eq!(metrics.access_log_dropped.get(), 1);
        let buf = log.buffers.lines[0].lock().unwrap();
        assert_eq!(buf.len(), BUFFER_MAX, "nothing appended past the bound");
        assert!(buf.windows(4).any(|w| w == b"kept"));
    }
}
