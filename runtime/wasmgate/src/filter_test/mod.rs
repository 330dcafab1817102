//! `wasmgate filter test FILTER.wasm CASES.toml`: runs a filter offline,
//! with no gateway and no network, on the gateway's own filter engine: the
//! component is loaded by [`FilterEngine::load_bytes`], granted what its
//! settings give it by the gateway's own [`wasmgate_control::build::grant`],
//! called through [`FilterInstance::on_request`] and
//! [`FilterInstance::on_response`] on an [`Exchange`], and its decisions
//! applied by the engine's pure edit functions ([`edits`]), as the request
//! path applies them. What the gateway would answer for a failure is the
//! request path's own [`RequestError`]. Only the two seams to the rest of the
//! gateway are stand-ins ([`fakes`]): outbound calls answered from the file,
//! and a response cache in memory.
//!
//! Each case is one request: `on-request`, then (if the request goes on)
//! the upstream's answer from the file and `on-response`. Cases run in
//! order on one engine, so host state (`kv`, rate-limit buckets, metrics)
//! carries from one to the next as in a running gateway, and on one pooled
//! instance (a new one after a failed call, and for each call under
//! `isolation = "fresh"`). The exit code is 0 when every expectation holds,
//! 1 when one does not, 2 when the file or the filter cannot be used.

mod fakes;
mod report;
mod spec;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::config::{FailurePolicy, FilterConfig, Isolation, Scoped};
use crate::filter::edits::{self, HeaderOp, MadeResponse, Needs, RequestEdits, ResponseEdits};
use crate::filter::exchange::{Exchange, Facts, FilterCarry, RequestOutcome, ResponseOutcome};
use crate::filter::{FilterEngine, FilterFailure, FilterInstance, FilterLimits, FilterModule};
use fakes::{CallMade, CannedCalls, LogCapture, LogLine, MemoryCache};
use spec::{Case, CasesFile};

/// The filter's name in the engine (its `kv` and metrics namespace, and
/// the name in the gateway's error messages): the component file's stem,
/// as a config would name it.
fn filter_name(path: &Path) -> Scoped {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    Scoped::default_tenant(if name.is_empty() {
        "filter".to_owned()
    } else {
        name
    })
}

/// A call's report: what the filter decided and what it cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallReport {
    /// `proceed`, `respond`, `replace` or `failed`.
    pub decision: &'static str,
    /// The edits, the response made, or the failure.
    pub detail: Vec<String>,
    /// The failure, if the call failed.
    pub error: Option<String>,
    /// Guest CPU time on the thread, in microseconds.
    pub cpu_us: f64,
    /// Wall-clock time of the call (instantiation included under
    /// `fresh`), in microseconds.
    pub wall_us: f64,
}

impl CallReport {
    /// A call that proceeded (the caller says otherwise), with its costs.
    fn new(cpu: Duration, started: Instant) -> CallReport {
        CallReport {
            decision: "proceed",
            detail: Vec::new(),
            error: None,
            cpu_us: cpu.as_secs_f64() * 1e6,
            wall_us: started.elapsed().as_secs_f64() * 1e6,
        }
    }
}

/// An HTTP message as a case saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    /// The method (requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path and query (requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The status (responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The cluster a filter sent the request to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Headers in order, values as text.
    pub headers: Vec<(String, String)>,
    /// The body, as text (invalid UTF-8 replaced).
    pub body: String,
}

/// What happened in one case.
#[derive(Debug, serde::Serialize)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// Every expectation held.
    pub passed: bool,
    /// `init` refused the config.
    pub init_error: Option<String>,
    /// `on-request` (`None`: not called).
    pub on_request: Option<CallReport>,
    /// `on-response` (`None`: not called).
    pub on_response: Option<CallReport>,
    /// The request the upstream got (`None`: not forwarded).
    pub forwarded: Option<Message>,
    /// The response the client got.
    pub client: Option<Message>,
    /// The filter's log lines.
    pub logs: Vec<LogLine>,
    /// What it recorded: counters' and histograms' increase, gauges' value.
    pub metrics: Vec<(String, f64)>,
    /// Its outbound calls.
    pub outbound: Vec<CallMade>,
    /// The expectations that did not hold.
    pub mismatches: Vec<String>,
}

/// Runs `cases` against `filter`; prints the report (JSON with `json`)
/// and returns the exit code.
pub fn run(filter: &Path, cases: &Path, json: bool, only: Option<&str>) -> ExitCode {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let capture = LogCapture::default();
    // Every level of the filter's own lines is captured; the gateway's
    // other warnings still reach stderr.
    let subscriber = tracing_subscriber::registry().with(capture.clone()).with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                !m.target().starts_with("wasmgate::filter") && *m.level() <= tracing::Level::WARN
            })),
    );
    // One thread: the guest's calls run on it, where the capture is the
    // default subscriber.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let _guard = tracing::subscriber::set_default(subscriber);
    let outcome = runtime.block_on(async {
        let mut runner = Runner::load(filter, cases, capture).await?;
        let mut reports = Vec::new();
        let all = std::mem::take(&mut runner.file.cases);
        for (i, case) in all.iter().enumerate() {
            if only.is_some_and(|o| o != case.name) {
                continue;
            }
            reports.push(runner.case(i, case).await);
        }
        if reports.is_empty() {
            return Err(match only {
                Some(o) => format!("{}: no case is named {o:?}", cases.display()),
                None => format!("{}: no [[case]] to run", cases.display()),
            });
        }
        Ok((runner.header(), reports))
    });
    match outcome {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok((header, reports)) => {
            if json {
                println!("{:#}", report::json(&header, &reports));
            } else {
                print!("{}", report::text(&header, &reports));
            }
            if reports.iter().all(|r| r.passed) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// What the report says about the run as a whole.
pub struct Header {
    /// The test file.
    pub file: String,
    /// The component.
    pub filter: String,
    /// Its contract version.
    pub contract: &'static str,
    /// Its SHA-256.
    pub sha256: String,
    /// How long loading it took (compiling, or from the compile cache).
    pub load_ms: f64,
}

struct Runner {
    file: CasesFile,
    /// The filter's name in the engine.
    name: Scoped,
    file_name: String,
    filter_name: String,
    settings: FilterConfig,
    module: FilterModule,
    load_ms: f64,
    route: Arc<str>,
    calls: Arc<CannedCalls>,
    capture: LogCapture,
    /// What `init` declared, or why it refused, by config.
    declared: HashMap<String, Result<Needs, String>>,
    /// Pooled instances, by config.
    pooled: HashMap<String, FilterInstance>,
    /// Every series' value after the last case.
    metrics_before: HashMap<String, f64>,
    /// `engine` outlives the module it loaded.
    engine: FilterEngine,
}

impl Runner {
    async fn load(filter: &Path, cases: &Path, capture: LogCapture) -> Result<Runner, String> {
        let file_name = cases.display().to_string();
        let text = std::fs::read_to_string(cases).map_err(|e| format!("{file_name}: {e}"))?;
        let file: CasesFile = toml::from_str(&text).map_err(|e| format!("{file_name}: {e}"))?;
        spec::check(&file).map_err(|e| format!("{file_name}: {e}"))?;
        let base = cases.parent().unwrap_or(Path::new("."));
        let settings =
            crate::config::settings_without_path("filter", file.filter.clone(), filter, base)
                .map_err(|errors| {
                    let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
                    format!("{file_name}: the [filter] settings:\n{}", lines.join("\n"))
                })?;
        let bytes = std::fs::read(filter).map_err(|e| format!("{}: {e}", filter.display()))?;
        let engine = FilterEngine::new(&crate::config::EngineConfig::default())
            .map_err(|e| format!("cannot start the filter engine: {e:#}"))?;
        let limits = FilterLimits {
            memory: settings.memory_limit,
            cpu: settings.cpu_limit,
            wall: settings.wall_limit,
        };
        let started = Instant::now();
        let origin = filter.display().to_string();
        let name = filter_name(filter);
        let mut module = engine
            .load_bytes(&name, &origin, &bytes, limits)
            .map_err(|e| e.to_string())?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let calls = Arc::new(CannedCalls::default());
        wasmgate_control::build::grant(
            &mut module,
            &settings,
            calls.clone(),
            Arc::new(MemoryCache::default()),
        );
        let route: Arc<str> = Arc::from(file.route.as_deref().unwrap_or("test"));
        Ok(Runner {
            name,
            filter_name: origin,
            file,
            file_name,
            settings,
            module,
            load_ms,
            route,
            calls,
            capture,
            declared: HashMap::new(),
            pooled: HashMap::new(),
            metrics_before: HashMap::new(),
            engine,
        })
    }

    fn header(&self) -> Header {
        Header {
            file: self.file_name.clone(),
            filter: self.filter_name.clone(),
            contract: self.module.contract(),
            sha256: self.module.sha256().to_owned(),
            load_ms: self.load_ms,
        }
    }

    /// What `init` declares with `config`, or why it refuses it (as the
    /// gateway checks a route's config when it loads it).
    async fn declared(&mut self, config: &str) -> Result<Needs, String> {
        if let Some(d) = self.declared.get(config) {
            return d.clone();
        }
        let d = match self.module.probe(&self.route, config).await {
            Ok(Ok(needs)) => Ok(needs),
            Ok(Err(why)) => Err(format!("its declarations do not fit together: {why}")),
            Err(failure) => Err(failure.to_string()),
        };
        self.declared.insert(config.to_owned(), d.clone());
        d
    }

    /// An instance for one call: the pooled one for `config` (made if there
    /// is none), or a new one under `fresh`.
    async fn instance(&mut self, config: &str) -> Result<FilterInstance, FilterFailure> {
        if self.settings.isolation == Isolation::Pooled
            && let Some(i) = self.pooled.remove(config)
        {
            return Ok(i);
        }
        self.module.instantiate(&self.route, config).await
    }

    /// Gives an instance back after a call: kept for the next one when
    /// pooled and the call did not fail.
    fn give_back(&mut self, config: &str, instance: FilterInstance, failed: bool) {
        if self.settings.isolation == Isolation::Pooled && !failed {
            self.pooled.insert(config.to_owned(), instance);
        }
    }

    async fn case(&mut self, i: usize, case: &Case) -> CaseReport {
        self.calls.begin(&case.outbound);
        let mut report = CaseReport {
            name: case.name.clone(),
            passed: false,
            init_error: None,
            on_request: None,
            on_response: None,
            forwarded: None,
            client: None,
            logs: Vec::new(),
            metrics: Vec::new(),
            outbound: Vec::new(),
            mismatches: Vec::new(),
        };
        let config = spec::config_json(case.config.as_ref().or(self.file.config.as_ref()))
            .expect("checked when the file was read");
        match self.declared(&config).await {
            Err(why) => report.init_error = Some(why),
            Ok(needs) => self.exchange(i, case, &config, &needs, &mut report).await,
        }
        report.logs = self.capture.take();
        report.outbound = self.calls.made();
        report.metrics = self.metrics_change();
        report.mismatches = report::check(&case.expect, &report);
        report.passed = report.mismatches.is_empty();
        report
    }

    /// One request through the filter: `on-request`, the upstream, and
    /// `on-response`, as the request path runs them for a chain of one.
    async fn exchange(
        &mut self,
        i: usize,
        case: &Case,
        config: &str,
        needs: &Needs,
        report: &mut CaseReport,
    ) {
        let (parts, body, facts) =
            spec::request(i, &self.route, &case.request).expect("checked when the file was read");
        let facts = Arc::new(facts);
        let mut ex = Exchange::new(facts.clone(), parts);
        let mut body = Bytes::from(body);
        if needs.request_body {
            ex.request_body = Some(body.clone());
        }
        let mut carry = FilterCarry::default();
        let fail_open = self.settings.failure_policy == FailurePolicy::FailOpen;
        let mut answer: Option<Message> = None;
        let mut cluster = None;
        // Whether on-response is called: the filter saw the request and
        // did not answer it, fail or get skipped.
        let mut responds = needs.on_response;
        if needs.on_request {
            let started = Instant::now();
            let cpu = ex.filter_cpu;
            let outcome = match self.instance(config).await {
                Ok(mut inst) => {
                    let deadline = self.deadline();
                    let r = inst.on_request(&mut ex, &mut carry, deadline).await;
                    self.give_back(config, inst, r.is_err());
                    r
                }
                Err(f) => Err(f),
            };
            let mut call = CallReport::new(ex.filter_cpu - cpu, started);
            let failure = match outcome {
                Ok(RequestOutcome::Proceed(e)) => {
                    call.detail = describe_request(&e);
                    let module = &self.module;
                    let applied = edits::apply_request_edits(
                        &mut ex.request,
                        e,
                        needs.request_body,
                        |name| module.may_reroute(name).then(|| name.to_owned()),
                    );
                    match applied {
                        Ok(change) => {
                            cluster = change.cluster;
                            if let Some(b) = change.body {
                                body = Bytes::from(b);
                            }
                            None
                        }
                        Err(invalid) => Some(FilterFailure::from(invalid)),
                    }
                }
                Ok(RequestOutcome::Respond(made)) => {
                    call.decision = "respond";
                    call.detail = describe_made(&made);
                    answer = Some(made_message(made));
                    responds = false;
                    None
                }
                Ok(RequestOutcome::Invalid(e)) => Some(e.into()),
                Err(f) => Some(f),
            };
            if let Some(f) = failure {
                call.decision = "failed";
                call.error = Some(format!("{} ({})", f, f.code()));
                responds = false;
                carry.context = None;
                if !fail_open {
                    answer = Some(self.gateway_error(f, &facts));
                }
            }
            report.on_request = Some(call);
        }
        if let Some(a) = answer {
            report.client = Some(a);
            return;
        }
        if needs.request_body {
            // As the request path forwards a body a filter held: its
            // length as it is now.
            let h = &mut ex.request.headers;
            h.remove(http::header::TRANSFER_ENCODING);
            if !body.is_empty() || h.contains_key(http::header::CONTENT_LENGTH) {
                h.insert(http::header::CONTENT_LENGTH, body.len().into());
            }
        }
        report.forwarded = Some(Message {
            method: Some(ex.request.method.to_string()),
            path: Some(
                ex.request
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
            ),
            status: None,
            cluster,
            headers: headers_of(&ex.request.headers),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let up = &case.upstream;
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = http::StatusCode::from_u16(up.status.unwrap_or(200))
            .expect("checked when the file was read");
        head.headers = spec::header_map(&up.headers).expect("checked when the file was read");
        let mut resp_body = Bytes::from(up.body.clone().unwrap_or_default());
        let is_head_request = ex.request.method == Method::HEAD;
        if responds {
            // The request as forwarded: its headers only if the filter
            // reads them on the response side.
            let (mut fwd, ()) = http::Request::new(()).into_parts();
            fwd.method = ex.request.method.clone();
            fwd.uri = ex.request.uri.clone();
            fwd.version = ex.request.version;
            if needs.request_headers_on_response {
                fwd.headers = ex.request.headers.clone();
            } else if let Some(h) = ex.request.headers.get(http::header::HOST) {
                fwd.headers.insert(http::header::HOST, h.clone());
            }
            let mut rex = Exchange::new(facts.clone(), fwd);
            rex.filter_cpu = ex.filter_cpu;
            rex.response = Some(head);
            if needs.response_body && !is_head_request {
                rex.response_body = Some(resp_body.clone());
            }
            let started = Instant::now();
            let outcome = match self.instance(config).await {
                Ok(mut inst) => {
                    let deadline = self.deadline();
                    let r = inst.on_response(&mut rex, &mut carry, deadline).await;
                    self.give_back(config, inst, r.is_err());
                    r
                }
                Err(f) => Err(f),
            };
            let mut call = CallReport::new(rex.filter_cpu - ex.filter_cpu, started);
            head = rex
                .response
                .take()
                .expect("the response is in the exchange");
            let failure = match outcome {
                Ok(ResponseOutcome::Proceed(e)) => {
                    call.detail = describe_response(&e);
                    match edits::apply_response_edits(
                        &mut head.status,
                        &mut head.headers,
                        e,
                        needs.response_body,
                    ) {
                        Ok(new_body) => {
                            if let Some(b) = new_body {
                                resp_body = Bytes::from(b);
                            }
                            None
                        }
                        Err(invalid) => Some(FilterFailure::from(invalid)),
                    }
                }
                Ok(ResponseOutcome::Replace(made)) => {
                    call.decision = "replace";
                    call.detail = describe_made(&made);
                    head.status = made.status;
                    head.headers = made.headers;
                    resp_body = Bytes::from(made.body);
                    None
                }
                Ok(ResponseOutcome::Invalid(e)) => Some(e.into()),
                Err(f) => Some(f),
            };
            if let Some(f) = failure {
                call.decision = "failed";
                call.error = Some(format!("{} ({})", f, f.code()));
                if !fail_open {
                    report.on_response = Some(call);
                    report.client = Some(self.gateway_error(f, &facts));
                    return;
                }
            }
            report.on_response = Some(call);
        }
        if needs.response_body && !is_head_request {
            // As the request path sends a body a filter held: its length
            // as it is now, for a status that has one.
            let s = head.status;
            if s == http::StatusCode::NO_CONTENT
                || s == http::StatusCode::NOT_MODIFIED
                || s.is_informational()
            {
                head.headers.remove(http::header::CONTENT_LENGTH);
            } else {
                head.headers
                    .insert(http::header::CONTENT_LENGTH, resp_body.len().into());
            }
        }
        report.client = Some(Message {
            method: None,
            path: None,
            status: Some(head.status.as_u16()),
            cluster: None,
            headers: headers_of(&head.headers),
            body: String::from_utf8_lossy(&resp_body).into_owned(),
        });
    }

    /// When a call made now must end: its wall-clock budget.
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.settings.wall_limit
    }

    /// The answer the gateway gives the client when the filter fails its
    /// request (the request path's own error, in the standard format).
    fn gateway_error(&self, failure: FilterFailure, facts: &Facts) -> Message {
        let error = wasmgate_proxy::request::RequestError::Filter {
            filter: self.name.name.clone(),
            failure,
        }
        .gateway_error();
        let mut body = serde_json::json!({
            "status": error.status.as_u16(),
            "code": error.code,
            "message": error.message,
        });
        if let Ok(id) = facts.request_id.to_str() {
            body["request_id"] = id.into();
        }
        Message {
            method: None,
            path: None,
            status: Some(error.status.as_u16()),
            cluster: None,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: body.to_string(),
        }
    }

    /// What the filter recorded since the last case: counters' and
    /// histograms' increase (those that moved), gauges' value (those set).
    fn metrics_change(&mut self) -> Vec<(String, f64)> {
        use crate::metrics::filter_metrics::Value;
        let now = self.engine.services().metrics.snapshot(&self.name);
        let mut out = Vec::new();
        let mut after = HashMap::new();
        for r in now {
            let key = report::metric_key(&r.name, &r.labels);
            let (value, cumulative) = match r.value {
                Value::Counter(n) => (n as f64, true),
                Value::Histogram(count) => (count as f64, true),
                Value::Gauge(g) => (g, false),
            };
            let before = self.metrics_before.get(&key).copied();
            let shown = if cumulative {
                value - before.unwrap_or(0.0)
            } else {
                value
            };
            if (cumulative && shown != 0.0) || (!cumulative && before != Some(value)) {
                out.push((key.clone(), shown));
            }
            after.insert(key, value);
        }
        self.metrics_before = after;
        out
    }
}

fn headers_of(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_owned(), edits::value_to_string(v)))
        .collect()
}

fn made_message(made: MadeResponse) -> Message {
    Message {
        method: None,
        path: None,
        status: Some(made.status.as_u16()),
        cluster: None,
        headers: headers_of(&made.headers),
        body: String::from_utf8_lossy(&made.body).into_owned(),
    }
}

fn describe_ops(ops: &[HeaderOp], out: &mut Vec<String>) {
    for op in ops {
        out.push(match op {
            HeaderOp::Remove(n) => format!("remove {n}"),
            HeaderOp::Set(n, v) => format!("set {n}: {}", edits::value_to_string(v)),
            HeaderOp::Append(n, v) => format!("append {n}: {}", edits::value_to_string(v)),
        });
    }
}

fn describe_request(e: &RequestEdits) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = &e.method {
        out.push(format!("method {m}"));
    }
    if let Some(p) = &e.path {
        out.push(format!("path {p}"));
    }
    if let Some(c) = &e.cluster {
        out.push(format!("cluster {c}"));
    }
    describe_ops(&e.headers, &mut out);
    if let Some(b) = &e.body {
        out.push(format!("body ({} bytes)", b.len()));
    }
    out
}

fn describe_response(e: &ResponseEdits) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = e.status {
        out.push(format!("status {}", s.as_u16()));
    }
    describe_ops(&e.headers, &mut out);
    if let Some(b) = &e.body {
        out.push(format!("body ({} bytes)", b.len()));
    }
    out
}

fn describe_made(m: &MadeResponse) -> Vec<String> {
    let mut out = vec![format!("status {}", m.status.as_u16())];
    for (n, v) in &m.headers {
        out.push(format!("{n}: {}", edits::value_to_string(v)));
    }
    out.push(format!("body ({} bytes)", m.body.len()));
    out
}
