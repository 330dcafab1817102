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
    /// The call's time on the thread and its CPU budget (see the epoch
    /// deadline callback in `lib.rs`).
    pub(crate) meter: std::sync::Arc<crate::meter::CpuMeter>,
    /// Whether a refused outbound call was already logged in this call.
    pub(crate) budget_logged: bool,
    /// The budget is what the tenant's `filter_cpu_per_request` left, less
    /// than the filter's own.
    pub(crate) tenant_bound: bool,
}

impl CallState {
    /// Starts a call for the request `request_id` (none: `init`) with a CPU
    /// budget of `cpu` (`tenant_bound`: set by the tenant's quota).
    pub(crate) fn begin(
        &mut self,
        request_id: Option<&str>,
        outbound_used: u32,
        cpu: std::time::Duration,
        tenant_bound: bool,
    ) {
        self.tenant_bound = tenant_bound;
        self.in_request = request_id.is_some();
        self.request_id.clear();
        self.request_id.push_str(request_id.unwrap_or_default());
        self.outbound_used = outbound_used;
        self.meter.begin(cpu);
        self.budget_logged = false;
    }
}

impl HostState {
    /// A sandbox with no files, no environment, no arguments and no network;
    /// stdout and stderr go to the gateway log under the filter's name; clocks
    /// and randomness work.
    /// `counted`: its memory counts against its tenant's `filter_memory`
    /// (not a probe's).
    pub fn new(
        site: CallSite,
        memory_limit: u64,
        grants: super::services::Grants,
        counted: bool,
    ) -> Self {
        let wasi = WasiCtxBuilder::new()
            .stdout(LogStream {
                site: site.clone(),
                stream: "stdout",
                budget: grants.log.clone(),
            })
            .stderr(LogStream {
                site: site.clone(),
                stream: "stderr",
                budget: grants.log.clone(),
            })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        // wasmtime allows a million handles per table by default, and the
        // table lives as long as the pooled instance: a guest that leaks
        // handles (pollables, streams, 0.2 responses) grows host memory
        // without bound otherwise. Past the cap, the host call fails.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        HostState {
            wasi,
            table,
            limiter: MemoryLimiter {
                limit: memory_limit as usize,
                exceeded: false,
                current: 0,
                tenant: grants.quota.clone().filter(|_| counted),
                tenant_exceeded: false,
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

/// Caps linear memory per instance (all its memories together: a component
/// may have several, and a cap per memory would multiply) and remembers
/// that the cap was hit, so a trap can be reported as "out of memory"
/// without matching error text.
pub struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: bool,
    /// All the instance's memories together, in bytes.
    pub(crate) current: usize,
    /// The tenant's quotas, whose `filter_memory` bounds all its instances'
    /// memories together.
    tenant: Option<std::sync::Arc<crate::quota::TenantQuota>>,
    /// Growth was refused by the tenant's `filter_memory`.
    pub(crate) tenant_exceeded: bool,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if let Some(t) = &self.tenant {
            t.release_memory(self.current as u64);
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Each memory reports its own growth (from 0 when it is created).
        let total = self.current.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.exceeded = true;
            // An error (rather than `Ok(false)`) traps at the `memory.grow`
            // itself, which names the cause instead of a later allocator abort.
            return Err(wasmtime::format_err!(
                "filter memory limit of {} bytes exceeded",
                self.limit
            ));
        }
        if let Some(t) = &self.tenant
            && total > self.current
            && !t.grow_memory((total - self.current) as u64)
        {
            self.tenant_exceeded = true;
            return Err(wasmtime::format_err!(
                "the tenant's filter_memory quota is used up"
            ));
        }
        if let Some(t) = &self.tenant
            && total < self.current
        {
            t.release_memory((self.current - total) as u64);
        }
        self.current = total;
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
        if !self.grants.log.take(&self.site) {
            return;
        }
        let (filter, route) = (&*self.site.filter, &*self.site.route);
        let message = one_line(message.as_bytes());
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
    budget: Arc<LogBudget>,
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
            budget: self.budget.clone(),
        })
    }
}

/// Host handles (WASI resources, contract 0.2 requests and responses) one
/// instance may hold at once.
pub const MAX_HANDLES: usize = 1024;

/// Longest line kept before it is flushed as it is (a guest cannot make the
/// host buffer without bound).
const MAX_LINE: usize = 4096;

struct LineWriter {
    site: CallSite,
    stream: &'static str,
    line: Vec<u8>,
    budget: Arc<LogBudget>,
}

/// Guest text as one log line: control characters (a newline above all,
/// which would start a line the guest wrote to look like the gateway's)
/// escaped as `\n`, `\u{1b}` and so on, and at most [`MAX_LINE`] bytes.
fn one_line(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    fn escaped(text: &str) -> String {
        let mut out = String::with_capacity(text.len().min(MAX_LINE) + 16);
        for c in text.chars() {
            if out.len() >= MAX_LINE {
                out.push_str(" [cut]");
                break;
            }
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        out
    }
    let end = ['\r', '\n'];
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(text) => {
            let text = text.trim_end_matches(end);
            if text.len() <= MAX_LINE && !text.chars().any(char::is_control) {
                Cow::Borrowed(text)
            } else {
                Cow::Owned(escaped(text))
            }
        }
        Cow::Owned(text) => Cow::Owned(escaped(text.trim_end_matches(end))),
    }
}

/// Default log lines per second per filter.
pub const DEFAULT_LOG_RATE: u32 = 100;

/// A token bucket of log lines for one filter (every version and instance
/// of it): `rate` lines per second, bursts of up to twice that. Lines past
/// it are dropped and counted, and the drop is said once a second at most.
#[derive(Debug)]
pub struct LogBudget {
    rate: std::sync::atomic::AtomicU32,
    state: std::sync::Mutex<LogBucket>,
    /// Lines dropped so far.
    pub dropped: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct LogBucket {
    tokens: f64,
    refilled: std::time::Instant,
    warned: Option<std::time::Instant>,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            rate: std::sync::atomic::AtomicU32::new(DEFAULT_LOG_RATE),
            state: std::sync::Mutex::new(LogBucket {
                tokens: f64::from(DEFAULT_LOG_RATE) * 2.0,
                refilled: std::time::Instant::now(),
                warned: None,
            }),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl LogBudget {
    /// Sets the rate (lines per second; 0 drops every line).
    pub fn set_rate(&self, per_second: u32) {
        self.rate
            .store(per_second, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether one more line may be written now (counting it if not).
    pub fn take(&self, site: &CallSite) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let rate = f64::from(self.rate.load(Relaxed));
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate * 2.0);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        let dropped = self.dropped.fetch_add(1, Relaxed) + 1;
        if b.warned
            .is_none_or(|w| now.duration_since(w).as_secs() >= 1)
        {
            b.warned = Some(now);
            tracing::warn!(
                filter = &*site.filter,
                route = &*site.route,
                dropped,
                "the filter writes more than its {rate} log lines per second (log_lines_per_second); lines dropped"
            );
        }
        false
    }
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        if !self.budget.take(&self.site) {
            self.line.clear();
            return;
        }
        let text = one_line(&self.line);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_stays_on_one_line() {
        assert_eq!(one_line(b"plain text\n"), "plain text");
        let forged = one_line(b"ok\n2026-12-07T00:00:00Z  INFO wasmgate: admin token rotated");
        assert!(!forged.contains('\n'), "{forged}");
        assert!(forged.starts_with("ok\\n2026"), "{forged}");
        assert_eq!(
            one_line(b"bell\x07 esc\x1b[31m"),
            "bell\\u{7} esc\\u{1b}[31m"
        );
        let long = vec![b'a'; MAX_LINE * 2];
        let cut = one_line(&long);
        assert!(
            cut.len() <= MAX_LINE + 16 && cut.ends_with("[cut]"),
            "{}",
            cut.len()
        );
    }

    #[test]
    fn the_memory_cap_counts_every_memory_of_the_instance() {
        use wasmtime::ResourceLimiter;
        let mib = 1 << 20;
        let mut l = MemoryLimiter {
            limit: 64 * mib,
            exceeded: false,
            current: 0,
            tenant: None,
            tenant_exceeded: false,
        };
        // Four memories of 16 MiB each fit 64 MiB together, and no more.
        for _ in 0..4 {
            assert!(l.memory_growing(0, 16 * mib, None).unwrap());
        }
        assert_eq!(l.current, 64 * mib);
        assert!(l.memory_growing(16 * mib, 17 * mib, None).is_err());
        assert!(l.exceeded);
        assert!(
            l.memory_growing(0, mib, None).is_err(),
            "a fifth memory does not fit either"
        );
    }

    #[test]
    fn a_tenants_memory_quota_counts_all_its_instances_and_is_given_back() {
        use wasmtime::ResourceLimiter;
        let mib = 1 << 20;
        let mut settings = wasmgate_config::QuotaSettings::builtin();
        settings.filter_memory = Some(24 * mib as u64);
        let quota = std::sync::Arc::new(crate::quota::TenantQuota::new(
            wasmgate_config::TenantId(std::sync::Arc::from("t")),
            &settings,
            2,
        ));
        let limiter = || MemoryLimiter {
            limit: 64 * mib,
            exceeded: false,
            current: 0,
            tenant: Some(quota.clone()),
            tenant_exceeded: false,
        };
        let (mut a, mut b) = (limiter(), limiter());
        assert!(a.memory_growing(0, 16 * mib, None).unwrap());
        assert!(b.memory_growing(0, 8 * mib, None).unwrap());
        assert_eq!(quota.memory(), 24 * mib as u64);
        assert!(
            b.memory_growing(8 * mib, 9 * mib, None).is_err(),
            "each is within its own cap, together they are past the tenant's"
        );
        assert!(b.tenant_exceeded && !b.exceeded);
        drop(a);
        assert_eq!(quota.memory(), 8 * mib as u64, "a's memory is given back");
        assert!(b.memory_growing(8 * mib, 20 * mib, None).unwrap());
        drop(b);
        assert_eq!(quota.memory(), 0);
    }

    #[test]
    fn the_log_budget_drops_and_counts_past_its_rate() {
        let site = CallSite {
            filter: "f".into(),
            route: "r".into(),
        };
        let budget = LogBudget::default();
        budget.set_rate(5);
        // A burst of twice the rate; the default start holds more, so
        // drain it first.
        let taken = (0..1000).filter(|_| budget.take(&site)).count();
        assert!(taken <= 2 * DEFAULT_LOG_RATE as usize + 1, "{taken}");
        let dropped = budget.dropped.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(dropped as usize, 1000 - taken);
        budget.set_rate(0);
        assert!(!budget.take(&site), "rate 0 drops every line");
    }
}
