//! The host's two seams to the rest of the gateway, in memory, for the
//! offline runner: outbound calls answered from the test file
//! ([`CannedCalls`], the [`Outbound`] seam the proxy's clusters fill in a
//! gateway) and a response cache of its own ([`MemoryCache`], the
//! [`FilterCache`] seam). The other host services (`kv`, `rate-limit`,
//! `config`, `metrics`, `crypto`, `log`) are the engine's own and run as
//! they do in the gateway. Also the log capture: the filter's lines, taken
//! from the engine's `tracing` events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmgate_config::Scoped;
use wasmgate_engine::services::{FilterCache, Outbound, OutboundFuture};
use wasmgate_engine::wit_outbound::{OutboundError, OutboundRequest, OutboundResponse};

use super::spec::CannedOutbound;

/// One outbound call the filter made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallMade {
    /// The cluster it named.
    pub cluster: String,
    /// Its method.
    pub method: String,
    /// Its path and query.
    pub path: String,
    /// What it got: a status, or the error.
    pub answer: String,
}

/// Outbound calls answered from the current case's canned answers.
#[derive(Debug, Default)]
pub struct CannedCalls {
    state: Mutex<CannedState>,
}

#[derive(Debug, Default)]
struct CannedState {
    /// The case's answers; `None` once taken.
    answers: Vec<Option<CannedOutbound>>,
    made: Vec<CallMade>,
}

impl CannedCalls {
    /// Starts a case with its answers.
    pub fn begin(&self, answers: &[CannedOutbound]) {
        let mut s = self.state.lock().expect("canned calls");
        s.answers = answers.iter().cloned().map(Some).collect();
        s.made.clear();
    }

    /// The calls made in the case so far.
    pub fn made(&self) -> Vec<CallMade> {
        self.state.lock().expect("canned calls").made.clone()
    }

    fn answer(&self, req: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        let mut s = self.state.lock().expect("canned calls");
        let found = s.answers.iter_mut().find(|a| {
            a.as_ref().is_some_and(|a| {
                a.cluster == req.cluster
                    && a.method
                        .as_deref()
                        .is_none_or(|m| m.eq_ignore_ascii_case(&req.method))
                    && a.path.as_deref().is_none_or(|p| p == req.path_with_query)
            })
        });
        let result = match found.and_then(Option::take) {
            None => Err(OutboundError::Unavailable(format!(
                "the test file has no answer (left) for {} {} on cluster {:?}",
                req.method, req.path_with_query, req.cluster
            ))),
            Some(a) => match a.error.as_deref() {
                Some("timeout") => Err(OutboundError::Timeout),
                Some("response-too-large") => Err(OutboundError::ResponseTooLarge),
                Some(_) => Err(OutboundError::Unavailable(
                    "the test file's canned failure".into(),
                )),
                None => Ok(OutboundResponse {
                    status: a.status.unwrap_or(200),
                    headers: a
                        .headers
                        .iter()
                        .flat_map(|(n, v)| {
                            v.list()
                                .into_iter()
                                .map(|v| (n.to_ascii_lowercase(), v.to_owned()))
                                .collect::<Vec<_>>()
                        })
                        .collect(),
                    body: a.body.unwrap_or_default().into_bytes(),
                }),
            },
        };
        s.made.push(CallMade {
            cluster: req.cluster.clone(),
            method: req.method.clone(),
            path: req.path_with_query.clone(),
            answer: match &result {
                Ok(r) => r.status.to_string(),
                Err(e) => format!("{e:?}"),
            },
        });
        result
    }
}

impl Outbound for CannedCalls {
    fn send<'a>(
        &'a self,
        _from: &'a Scoped,
        req: OutboundRequest,
        _request_id: &'a str,
        _timeout: Duration,
    ) -> OutboundFuture<'a> {
        let answer = self.answer(&req);
        Box::pin(async move { answer })
    }

    fn refused(&self, _from: &Scoped, _error: &OutboundError) {}
}

/// Which canned-failure names the test file may use.
pub const CANNED_ERRORS: [&str; 3] = ["timeout", "unavailable", "response-too-large"];

#[derive(Debug)]
struct Cached {
    value: Vec<u8>,
    expires: Instant,
    size: u64,
    stored: u64,
}

/// The entries by (filter, key), and a clock that orders their stores.
type Entries = (HashMap<(Scoped, String), Cached>, u64);

/// The filter's share of a response cache, in memory.
#[derive(Debug, Default)]
pub struct MemoryCache {
    entries: Mutex<Entries>,
}

impl FilterCache for MemoryCache {
    fn get(&self, from: &Scoped, key: &str) -> Option<Vec<u8>> {
        let map = self.entries.lock().expect("cache");
        map.0
            .get(&(from.clone(), key.to_owned()))
            .filter(|c| c.expires > Instant::now())
            .map(|c| c.value.clone())
    }

    fn set(
        &self,
        from: &Scoped,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        tags: Vec<String>,
        quota: u64,
        _tenant_budget: Option<u64>,
    ) -> bool {
        let size = (key.len() + value.len() + tags.iter().map(String::len).sum::<usize>()) as u64;
        if size > quota {
            return false;
        }
        let mut guard = self.entries.lock().expect("cache");
        let (map, clock) = &mut *guard;
        let now = Instant::now();
        map.retain(|_, c| c.expires > now);
        map.remove(&(from.clone(), key.to_owned()));
        // The oldest of the filter's own entries make room.
        loop {
            let used: u64 = map
                .iter()
                .filter(|((f, _), _)| f == from)
                .map(|(_, c)| c.size)
                .sum();
            if used + size <= quota {
                break;
            }
            let oldest = map
                .iter()
                .filter(|((f, _), _)| f == from)
                .min_by_key(|(_, c)| c.stored)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => return false,
            }
        }
        *clock += 1;
        map.insert(
            (from.clone(), key.to_owned()),
            Cached {
                value,
                expires: now + ttl,
                size,
                stored: *clock,
            },
        );
        true
    }

    fn delete(&self, from: &Scoped, key: &str) -> bool {
        self.entries
            .lock()
            .expect("cache")
            .0
            .remove(&(from.clone(), key.to_owned()))
            .is_some()
    }
}

/// A line the filter logged (the `log` import, or its stdout and stderr).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// `error`, `warn`, `info`, `debug`, `trace`.
    pub level: String,
    /// The text.
    pub message: String,
}

/// Collects the engine's events about the filter (target
/// `wasmgate::filter…`), at every level.
#[derive(Debug, Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<LogLine>>>,
}

impl LogCapture {
    /// The lines logged since the last call.
    pub fn take(&self) -> Vec<LogLine> {
        std::mem::take(&mut *self.lines.lock().expect("log capture"))
    }
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogCapture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        if !meta.target().starts_with("wasmgate::filter") {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        self.lines.lock().expect("log capture").push(LogLine {
            level: meta.level().as_str().to_ascii_lowercase(),
            message: m.0,
        });
    }
}
