//! What a filter instance's store holds, and the host side of the imports:
//! WASI with nothing behind it, the `log` interface, and the memory limiter.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::v0_2::wasmgate::filter::{log, types};

/// Who is running: attached to every log line a filter causes.
#[derive(Debug, Clone)]
pub struct CallSite {
    /// Filter name from the config.
    pub filter: Arc<str>,
    /// Route name from the config.
    pub route: Arc<str>,
}

/// The data of one filter instance's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    site: CallSite,
    grants: super::services::Grants,
    pub(crate) call: CallState,
    /// A 0.2 call's exchange and what the guest did with it.
    pub(crate) pending: super::exchange::Pending,
}

/// What the host knows about the call in progress.
#[derive(Debug, Default)]
pub(crate) struct CallState {
    /// Whether the call serves a request (`on-request`, `on-response`), as
    /// opposed to `init`.
    pub(crate) in_request: bool,
    /// The id of the request being served.
    pub(crate) request_id: String,
    /// Outbound calls this filter made for the request so far.
    pub(crate) outbound_used: u32,
    /// When the call started.
    pub(crate) started: Option<std::time::Instant>,
    /// Time spent awaiting host calls during the call: it does not count
    /// as CPU time (see the epoch deadline callback in `lib.rs`).
    pub(crate) host_wait: std::time::Duration,
    /// Whether a refused outbound call was already logged in this call.
    pub(crate) budget_logged: bool,
}

impl CallState {
    /// Starts a call for the request `request_id` (none: `init`).
    pub(crate) fn begin(&mut self, request_id: Option<&str>, outbound_used: u32) {
        self.in_request = request_id.is_some();
        self.request_id.clear();
        self.request_id.push_str(request_id.unwrap_or_default());
        self.outbound_used = outbound_used;
        self.started = Some(std::time::Instant::now());
        self.host_wait = std::time::Duration::ZERO;
        self.budget_logged = false;
    }

    /// CPU time the call has used so far: time since it started, less the
    /// time it waited on host calls.
    pub(crate) fn cpu_used(&self) -> std::time::Duration {
        self.started
            .map_or(std::time::Duration::ZERO, |s| s.elapsed())
            .saturating_sub(self.host_wait)
    }
}

impl HostState {
    /// A sandbox with no files, no environment, no arguments and no network;
    /// stdout and stderr go to the gateway log under the filter's name; clocks
    /// and randomness work.
    pub fn new(site: CallSite, memory_limit: u64, grants: super::services::Grants) -> Self {
        let wasi = WasiCtxBuilder::new()
            .stdout(LogStream {
                site: site.clone(),
                stream: "stdout",
            })
            .stderr(LogStream {
                site: site.clone(),
                stream: "stderr",
            })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit as usize,
                exceeded: false,
                current: 0,
            },
            site,
            grants,
            call: CallState::default(),
            pending: super::exchange::Pending::default(),
        }
    }

    /// Which filter, on which route.
    pub(crate) fn site(&self) -> &CallSite {
        &self.site
    }

    /// What the filter may use of the host's services.
    pub(crate) fn grants(&self) -> &super::services::Grants {
        &self.grants
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory per instance and remembers that the cap was hit, so a
/// trap can be reported as "out of memory" without matching error text.
pub struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: bool,
    /// Size of the largest memory after its last growth, in bytes.
    pub(crate) current: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            // An error (rather than `Ok(false)`) traps at the `memory.grow`
            // itself, which names the cause instead of a later allocator abort.
            return Err(wasmtime::format_err!(
                "filter memory limit of {} bytes exceeded",
                self.limit
            ));
        }
        self.current = self.current.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let (filter, route) = (&*self.site.filter, &*self.site.route);
        match level {
            types::LogLevel::Trace => {
                tracing::trace!(target: "wasmgate::filter", filter, route, "{message}")
            }
            types::LogLevel::Debug => {
                tracing::debug!(target: "wasmgate::filter", filter, route, "{message}")
            }
            types::LogLevel::Info => {
                tracing::info!(target: "wasmgate::filter", filter, route, "{message}")
            }
            types::LogLevel::Warn => {
                tracing::warn!(target: "wasmgate::filter", filter, route, "{message}")
            }
            types::LogLevel::Error => {
                tracing::error!(target: "wasmgate::filter", filter, route, "{message}")
            }
        }
    }

    fn enabled(&mut self, level: types::LogLevel) -> bool {
        match level {
            types::LogLevel::Trace => {
                tracing::enabled!(target: "wasmgate::filter", tracing::Level::TRACE)
            }
            types::LogLevel::Debug => {
                tracing::enabled!(target: "wasmgate::filter", tracing::Level::DEBUG)
            }
            types::LogLevel::Info => {
                tracing::enabled!(target: "wasmgate::filter", tracing::Level::INFO)
            }
            types::LogLevel::Warn => {
                tracing::enabled!(target: "wasmgate::filter", tracing::Level::WARN)
            }
            types::LogLevel::Error => {
                tracing::enabled!(target: "wasmgate::filter", tracing::Level::ERROR)
            }
        }
    }
}

/// A guest's stdout or stderr: each line becomes one log entry with the
/// filter's and route's names.
struct LogStream {
    site: CallSite,
    stream: &'static str,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            site: self.site.clone(),
            stream: self.stream,
            line: Vec::new(),
        })
    }
}

/// Longest line kept before it is flushed as it is (a guest cannot make the
/// host buffer without bound).
const MAX_LINE: usize = 4096;

struct LineWriter {
    site: CallSite,
    stream: &'static str,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\r', '\n']);
        tracing::info!(
            target: "wasmgate::filter::output",
            filter = &*self.site.filter,
            route = &*self.site.route,
            stream = self.stream,
            "{text}"
        );
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.emit();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
