//! Canary releases of filter versions: which requests a canary takes, the
//! per-version request counters, and the error-rate window that rolls a bad
//! canary back on its own.
//!
//! - **Deterministic split.** A percentage canary takes a request when
//!   `xxh3_64(key) % 10000 < percent × 100`, where the key is the request's
//!   `x-request-id` (the default) or the value of a chosen header; a request
//!   without that header stays on the current version. The same key always
//!   lands on the same side, so a client retrying with its request id, or a
//!   user keyed by a header, sees one version, and tests can predict every
//!   choice exactly. A header canary takes exactly the requests that carry
//!   the header (with the given value, if one is given).
//! - **Per version, not per route.** A canary applies to every route that
//!   uses the filter; its counters and window span all of them and outlive
//!   config reloads.
//! - **Automatic rollback.** Each request a canary version took is counted
//!   in a sliding window (ten buckets); a request is bad when the filter
//!   failed (trap, limit, invalid answer) or the response was a 5xx. Once the
//!   window holds `min_requests` and the bad share exceeds `max_error_rate`,
//!   the canary trips once and the gateway removes it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use wasmgate_metrics::{Metrics, VersionLabels};

/// A canary as the management API takes it (and as it is stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// The stored version the canary runs.
    pub version: u64,
    /// Share of requests, in percent (0.01 steps), for a percentage split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// What the percentage split hashes: `request-id` (default) or
    /// `header:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// For a header canary: the header that selects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// For a header canary: the value the header must have (any value if
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When to roll back on its own: `false` turns it off, `true` or
    /// absent means the defaults, an object gives thresholds
    /// ([`RollbackFields`]). Kept as given; checked by
    /// [`CanarySpec::resolve`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<serde_json::Value>,
}

/// The thresholds object of `rollback` (each defaults as in
/// [`RollbackPolicy::default`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackFields {
    /// Bad share of requests above which the canary is rolled back.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Requests the window must hold before the rate counts.
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Length of the sliding window, e.g. `"60s"`.
    #[serde(default)]
    pub window: Option<String>,
}

/// The thresholds of automatic rollback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollbackPolicy {
    /// Bad share (0..1) above which the canary is rolled back.
    pub max_error_rate: f64,
    /// Requests the window must hold before the rate is judged.
    pub min_requests: u64,
    /// Length of the sliding window.
    pub window: Duration,
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy {
            max_error_rate: 0.05,
            min_requests: 20,
            window: Duration::from_secs(60),
        }
    }
}

/// Which requests a canary takes.
#[derive(Debug, Clone)]
pub enum Selector {
    /// `basis_points` of 10 000, by a hash of the key.
    Percent {
        /// Share in hundredths of a percent.
        basis_points: u32,
        /// What is hashed.
        by: SplitKey,
    },
    /// Requests carrying a header (with a value, if given).
    Header {
        /// The header.
        name: HeaderName,
        /// The value it must have.
        value: Option<HeaderValue>,
    },
}

/// What a percentage split hashes.
#[derive(Debug, Clone)]
pub enum SplitKey {
    /// The request's `x-request-id`.
    RequestId,
    /// A header's value.
    Header(HeaderName),
}

/// Where a key falls in 0..10 000: the documented, stable split function.
pub fn bucket(key: &[u8]) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % 10_000) as u32
}

impl CanarySpec {
    /// Checks the spec and resolves its split and rollback policy.
    pub fn resolve(&self) -> Result<(Selector, Option<RollbackPolicy>), String> {
        let split = match (&self.percent, &self.header) {
            (Some(_), Some(_)) => {
                return Err("give either `percent` or `header`, not both".into());
            }
            (None, None) => {
                return Err(
                    "give `percent` (a share of requests) or `header` (requests \
                     carrying it)"
                        .into(),
                );
            }
            (Some(p), None) => {
                if !(p.is_finite() && *p >= 0.01 && *p <= 100.0) {
                    return Err(format!(
                        "`percent` must be from 0.01 (its step) to 100, not {p}"
                    ));
                }
                if self.value.is_some() {
                    return Err("`value` goes with `header`, not with `percent`".into());
                }
                let by = match self.by.as_deref() {
                    None | Some("request-id") => SplitKey::RequestId,
                    Some(b) => match b.strip_prefix("header:") {
                        Some(h) => SplitKey::Header(header_name(h, "by")?),
                        None => {
                            return Err(format!(
                                "`by` is `request-id` or `header:NAME`, not {b:?}"
                            ));
                        }
                    },
                };
                Selector::Percent {
                    basis_points: (p * 100.0).round() as u32,
                    by,
                }
            }
            (None, Some(h)) => {
                if self.by.is_some() {
                    return Err("`by` goes with `percent`, not with `header`".into());
                }
                let value = match &self.value {
                    Some(v) => Some(
                        HeaderValue::from_str(v)
                            .map_err(|_| format!("`value` {v:?} is not a valid header value"))?,
                    ),
                    None => None,
                };
                Selector::Header {
                    name: header_name(h, "header")?,
                    value,
                }
            }
        };
        let rollback = match &self.rollback {
            None | Some(serde_json::Value::Bool(true)) => Some(RollbackPolicy::default()),
            Some(serde_json::Value::Bool(false)) => None,
            Some(v @ serde_json::Value::Object(_)) => {
                let RollbackFields {
                    max_error_rate,
                    min_requests,
                    window,
                } = serde_json::from_value(v.clone()).map_err(|e| format!("`rollback`: {e}"))?;
                let d = RollbackPolicy::default();
                let max_error_rate = max_error_rate.unwrap_or(d.max_error_rate);
                if !(0.0..1.0).contains(&max_error_rate) {
                    return Err(format!(
                        "`rollback.max_error_rate` is a share from 0 up to (not including) 1, \
                         not {max_error_rate}"
                    ));
                }
                let min_requests = min_requests.unwrap_or(d.min_requests);
                if min_requests == 0 {
                    return Err("`rollback.min_requests` must be at least 1".into());
                }
                let window = match window {
                    None => d.window,
                    Some(w) => humantime::parse_duration(&w)
                        .map_err(|e| format!("`rollback.window` {w:?}: {e}"))?,
                };
                if window < Duration::from_secs(1) || window > Duration::from_secs(86_400) {
                    return Err("`rollback.window` must be from 1s to 24h".into());
                }
                Some(RollbackPolicy {
                    max_error_rate,
                    min_requests,
                    window,
                })
            }
            Some(other) => {
                return Err(format!(
                    "`rollback` is true, false or an object of thresholds, not {other}"
                ));
            }
        };
        Ok((split, rollback))
    }
}

fn header_name(h: &str, key: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("`{key}` {h:?} is not a valid header name"))
}

/// A canary told the gateway to roll it back.
#[derive(Debug, Clone)]
pub struct Tripped {
    /// Which canary (a replacement of the same version is another one).
    pub id: u64,
    /// The filter.
    pub filter: Arc<str>,
    /// The canary's version.
    pub version: u64,
    /// Requests in the window when it tripped.
    pub requests: u64,
    /// Bad ones among them.
    pub bad: u64,
}

/// A running canary: its split, and the window that judges it.
#[derive(Debug)]
pub struct Canary {
    id: u64,
    filter: Arc<str>,
    /// The spec it was started with.
    pub spec: CanarySpec,
    selector: Selector,
    rollback: Option<RollbackPolicy>,
    window: std::sync::Mutex<Window>,
    tripped: AtomicBool,
    trips: mpsc::UnboundedSender<Tripped>,
}

#[derive(Debug)]
struct Window {
    /// (bucket start, requests, bad), oldest first.
    buckets: VecDeque<(Instant, u64, u64)>,
    width: Duration,
}

impl Canary {
    /// A canary of `spec.version` of `filter`; trips are sent to `trips`.
    pub fn new(
        filter: &str,
        spec: CanarySpec,
        trips: mpsc::UnboundedSender<Tripped>,
    ) -> Result<Canary, String> {
        let (split, rollback) = spec.resolve()?;
        let width = rollback.map_or(Duration::from_secs(6), |r| r.window / 10);
        static IDS: AtomicU64 = AtomicU64::new(1);
        Ok(Canary {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            filter: Arc::from(filter),
            spec,
            selector: split,
            rollback,
            window: std::sync::Mutex::new(Window {
                buckets: VecDeque::new(),
                width,
            }),
            tripped: AtomicBool::new(false),
            trips,
        })
    }

    /// The version it runs.
    pub fn version(&self) -> u64 {
        self.spec.version
    }

    /// What tells it apart from any other canary, of any version.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Lets it trip again (after a rollback it asked for failed).
    pub fn rearm(&self) {
        self.tripped.store(false, Ordering::Relaxed);
    }

    /// Whether this request goes to the canary.
    pub fn takes(&self, headers: &HeaderMap, request_id: &str) -> bool {
        match &self.selector {
            Selector::Percent { basis_points, by } => {
                let key = match by {
                    SplitKey::RequestId => request_id.as_bytes(),
                    SplitKey::Header(h) => match headers.get(h) {
                        Some(v) => v.as_bytes(),
                        None => return false,
                    },
                };
                bucket(key) < *basis_points
            }
            Selector::Header { name, value } => match (headers.get(name), value) {
                (Some(got), Some(want)) => got == want,
                (Some(_), None) => true,
                (None, _) => false,
            },
        }
    }

    /// Counts one request the canary took; trips the canary (once) when the
    /// window's bad share passes the threshold.
    pub fn record(&self, bad: bool) {
        self.record_at(bad, Instant::now());
    }

    fn record_at(&self, bad: bool, now: Instant) {
        let Some(policy) = self.rollback else { return };
        if self.tripped.load(Ordering::Relaxed) {
            return;
        }
        let (requests, bad_total) = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            let width = w.width;
            while w
                .buckets
                .front()
                .is_some_and(|(start, _, _)| now.duration_since(*start) >= policy.window)
            {
                w.buckets.pop_front();
            }
            match w.buckets.back_mut() {
                Some((start, n, b)) if now.duration_since(*start) < width => {
                    *n += 1;
                    *b += u64::from(bad);
                }
                _ => w.buckets.push_back((now, 1, u64::from(bad))),
            }
            w.buckets
                .iter()
                .fold((0, 0), |(n, b), (_, bn, bb)| (n + bn, b + bb))
        };
        if requests >= policy.min_requests
            && bad_total as f64 > policy.max_error_rate * requests as f64
            && !self.tripped.swap(true, Ordering::Relaxed)
        {
            let _ = self.trips.send(Tripped {
                id: self.id,
                filter: self.filter.clone(),
                version: self.spec.version,
                requests,
                bad: bad_total,
            });
        }
    }

    /// The window's totals: (requests, bad).
    pub fn window_totals(&self) -> (u64, u64) {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.rollback.map_or(Duration::MAX, |r| r.window);
        let now = Instant::now();
        w.buckets
            .iter()
            .filter(|(start, _, _)| now.duration_since(*start) < window)
            .fold((0, 0), |(n, b), (_, bn, bb)| (n + bn, b + bb))
    }

    /// For reports: the spec, with the resolved rollback policy.
    pub fn report(&self) -> serde_json::Value {
        let (requests, bad) = self.window_totals();
        let mut v = serde_json::to_value(&self.spec).unwrap_or_default();
        v["rollback"] = match self.rollback {
            None => serde_json::Value::Bool(false),
            Some(p) => serde_json::json!({
                "max_error_rate": p.max_error_rate,
                "min_requests": p.min_requests,
                "window": humantime::format_duration(p.window).to_string(),
            }),
        };
        v["window"] = serde_json::json!({ "requests": requests, "bad": bad });
        v
    }
}

/// Requests one filter version handled, over every route, by outcome.
#[derive(Debug)]
pub struct VersionStats {
    ok: Counter,
    error: Counter,
    failed: Counter,
}

impl VersionStats {
    /// The counters of `version` of `filter`, exported as
    /// `wasmgate_filter_version_requests_total`.
    pub fn new(metrics: &Metrics, filter: &str, version: u64) -> VersionStats {
        let counter = |outcome| {
            metrics
                .filter_version_requests
                .get_or_create(&VersionLabels {
                    filter: filter.to_owned(),
                    version: version.to_string(),
                    outcome,
                })
                .clone()
        };
        VersionStats {
            ok: counter("ok"),
            error: counter("5xx"),
            failed: counter("filter_failed"),
        }
    }

    /// Stops exporting the counters of a version the store forgot.
    pub fn forget(metrics: &Metrics, filter: &str, version: u64) {
        for outcome in ["ok", "5xx", "filter_failed"] {
            metrics.filter_version_requests.remove(&VersionLabels {
                filter: filter.to_owned(),
                version: version.to_string(),
                outcome,
            });
        }
    }

    /// Counts one request: the filter failed, or the response had `status`.
    /// Returns whether it was bad (a failure or a 5xx).
    pub fn record(&self, status: u16, failed: bool) -> bool {
        if failed {
            self.failed.inc();
        } else if status >= 500 {
            self.error.inc();
        } else {
            self.ok.inc();
            return false;
        }
        true
    }

    /// The counts, for reports.
    pub fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok.get(),
            "5xx": self.error.get(),
            "filter_failed": self.failed.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> CanarySpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn specs_are_checked() {
        for (bad, why) in [
            (r#"{"version":2}"#, "give `percent`"),
            (r#"{"version":2,"percent":10,"header":"x"}"#, "not both"),
            (r#"{"version":2,"percent":0}"#, "from 0.01"),
            (r#"{"version":2,"percent":101}"#, "to 100"),
            (r#"{"version":2,"percent":10,"by":"cookie"}"#, "request-id"),
            (r#"{"version":2,"header":"bad header"}"#, "header name"),
            (
                r#"{"version":2,"percent":5,"rollback":{"max_error_rate":1.5}}"#,
                "max_error_rate",
            ),
            (
                r#"{"version":2,"percent":5,"rollback":{"window":"soon"}}"#,
                "window",
            ),
            (
                r#"{"version":2,"percent":5,"rollback":{"max_eror_rate":0.5}}"#,
                "unknown field `max_eror_rate`",
            ),
            (
                r#"{"version":2,"percent":5,"rollback":"yes"}"#,
                "true, false",
            ),
            (r#"{"version":2,"percent":0.001}"#, "0.01"),
        ] {
            let err = spec(bad).resolve().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(serde_json::from_str::<CanarySpec>(r#"{"version":2,"pct":1}"#).is_err());
    }

    #[test]
    fn the_split_is_the_documented_hash() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let c = Canary::new("f", spec(r#"{"version":2,"percent":10}"#), tx).unwrap();
        let h = HeaderMap::new();
        let mut taken = 0;
        for i in 0..10_000 {
            let id = format!("req-{i}");
            let t = c.takes(&h, &id);
            assert_eq!(t, bucket(id.as_bytes()) < 1000);
            taken += usize::from(t);
        }
        assert!((900..1100).contains(&taken), "{taken}");
    }

    #[test]
    fn header_canaries_take_matching_requests_only() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let c = Canary::new(
            "f",
            spec(r#"{"version":2,"header":"X-Canary","value":"on"}"#),
            tx,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        assert!(!c.takes(&h, "a"));
        h.insert("x-canary", HeaderValue::from_static("off"));
        assert!(!c.takes(&h, "a"));
        h.insert("x-canary", HeaderValue::from_static("on"));
        assert!(c.takes(&h, "a"));
    }

    #[test]
    fn a_bad_window_trips_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Canary::new(
            "f",
            spec(
                r#"{"version":7,"percent":50,"rollback":{"max_error_rate":0.2,"min_requests":10}}"#,
            ),
            tx,
        )
        .unwrap();
        // 9 bad of 9: below min_requests, nothing yet.
        for _ in 0..9 {
            c.record(true);
        }
        assert!(rx.try_recv().is_err());
        c.record(true);
        let t = rx.try_recv().unwrap();
        assert_eq!((t.version, t.requests, t.bad), (7, 10, 10));
        c.record(true);
        assert!(rx.try_recv().is_err(), "trips once");

        // 1 bad of 10 is under 20 %.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Canary::new(
            "f",
            spec(
                r#"{"version":7,"percent":50,"rollback":{"max_error_rate":0.2,"min_requests":10}}"#,
            ),
            tx,
        )
        .unwrap();
        c.record(true);
        for _ in 0..9 {
            c.record(false);
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(c.window_totals(), (10, 1));
    }

    #[test]
    fn old_requests_leave_the_window() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Canary::new(
            "f",
            spec(r#"{"version":7,"percent":50,"rollback":{"max_error_rate":0.5,"min_requests":4,"window":"10s"}}"#),
            tx,
        )
        .unwrap();
        let start = Instant::now();
        // Three bad requests, then (11 s later) four good ones: the bad ones
        // have left the window, so it never holds a bad share above 50 %.
        for _ in 0..3 {
            c.record_at(true, start);
        }
        let later = start + Duration::from_secs(11);
        for _ in 0..4 {
            c.record_at(false, later);
        }
        assert!(rx.try_recv().is_err());
        // Within the window, the same mix trips it.
        for _ in 0..5 {
            c.record_at(true, later);
        }
        assert_eq!(rx.try_recv().unwrap().bad, 5);
        // A rollback that failed re-arms it.
        c.rearm();
        c.record_at(true, later);
        assert!(rx.try_recv().is_ok());
    }
}
