//! Metrics that filters record through the `metrics` import, exported on
//! `/metrics` with the gateway's own through a prometheus-client
//! [`Collector`].
//!
//! A filter's metric `name` is exported as `wasmgate_filter_<filter>_<name>`
//! (the filter's config name with `-` as `_`; counters get `_total`). What a
//! filter can create is capped, so a filter that puts user input in names or
//! label values cannot grow the gateway's memory or the scrape without bound:
//! [`MAX_NAMES`] names per filter, [`MAX_SERIES`] label combinations per
//! name, [`MAX_LABELS`] labels per series. A record past a cap, with a bad
//! name, or using one name as two kinds is dropped and counted in
//! `wasmgate_filter_metrics_refused_total{filter, reason}`.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use wasmgate_config::Scoped;

use crate::MetricInfo;

/// Metric names one filter may create.
pub const MAX_NAMES: usize = 64;
/// Label combinations one metric may have.
pub const MAX_SERIES: usize = 256;
/// Labels one series may have.
pub const MAX_LABELS: usize = 8;
/// Longest metric or label name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest label value.
pub const MAX_VALUE_LEN: usize = 256;

/// The metric [`FilterMetrics`] exports itself:
/// `wasmgate_filter_metrics_refused_total{filter, reason}`.
pub const REFUSED_RECORDS: MetricInfo = MetricInfo {
    name: "wasmgate_filter_metrics_refused",
    unprefixed: "filter_metrics_refused",
    kind: Kind::Counter,
    help: "filter metric records dropped (bad name or labels, a cap reached, kind mismatch)",
    subsystem: "filters",
};

/// The gateway's own metric names (without the `wasmgate_` prefix), read
/// from its tables: a filter metric may not take one of these names, nor one
/// whose samples would collide with theirs.
pub fn reserved() -> impl Iterator<Item = &'static str> {
    crate::gateway_metrics().map(|m| m.unprefixed)
}

/// Suffixes exposition adds to a family's name for its samples.
const SAMPLE_SUFFIXES: &[&str] = &["_total", "_bucket", "_sum", "_count", "_created", "_info"];

/// Whether families named `a` and `b` would write samples of the same name.
pub(crate) fn clash(a: &str, b: &str) -> bool {
    let under = |long: &str, short: &str| {
        long.strip_prefix(short)
            .is_some_and(|rest| SAMPLE_SUFFIXES.contains(&rest))
    };
    a == b || under(a, b) || under(b, a)
}

/// Prometheus' default buckets.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(String, String)>;

/// The kind of a metric (a filter's is fixed by its first record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Set to any value.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

#[derive(Debug)]
enum Series {
    Counter(Counter),
    Gauge(Gauge<f64, AtomicU64>),
    /// The histogram, and its observations (the client library keeps its
    /// count to itself).
    Histogram(Histogram, AtomicU64),
}

#[derive(Debug)]
struct Metric {
    kind: Kind,
    /// The exported name, without the registry's `wasmgate_` prefix.
    exported: String,
    series: DashMap<Labels, Series>,
}

/// Why a record was dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The metric name is not `[a-zA-Z_][a-zA-Z0-9_]*` or is too long.
    BadName,
    /// A label name or value is not acceptable, or there are too many.
    BadLabels,
    /// The filter has [`MAX_NAMES`] metrics already.
    TooManyNames,
    /// The metric has [`MAX_SERIES`] label combinations already.
    TooManySeries,
    /// The name is already used for another kind.
    KindMismatch,
    /// A gauge or histogram value that is not a finite number.
    NotFinite,
    /// The exported name would clash with a gateway metric or another
    /// filter's (e.g. filter `a` metric `b_c` and filter `a_b` metric `c`).
    NameTaken,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::BadName => "bad_name",
            Refused::BadLabels => "bad_labels",
            Refused::TooManyNames => "too_many_names",
            Refused::TooManySeries => "too_many_series",
            Refused::KindMismatch => "kind_mismatch",
            Refused::NotFinite => "not_finite",
            Refused::NameTaken => "name_taken",
        }
    }
}

/// One series a filter recorded, as [`FilterMetrics::snapshot`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The filter's own name for the metric.
    pub name: String,
    /// Its labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: Value,
}

/// A series' value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A counter's total.
    Counter(u64),
    /// A gauge's value.
    Gauge(f64),
    /// A histogram's observations.
    Histogram(u64),
}

/// All filters' metrics in one gateway.
#[derive(Debug, Default)]
pub struct FilterMetrics {
    /// (filter, name) → metric.
    metrics: DashMap<(Scoped, String), Metric>,
    /// Metric names per filter.
    names: DashMap<Scoped, usize>,
    /// (filter, reason) → records dropped.
    refused: DashMap<(Scoped, &'static str), AtomicU64>,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= MAX_NAME_LEN
}

pub use wasmgate_config::metric_prefix as prefix_of;

/// The exported name (after `wasmgate_`) of `filter`'s metric `name`:
/// `filter_<filter>_<name>` for the operator's filters, and
/// `t_<tenant>__<filter>_<name>` for a tenant's, the tenant's name with
/// `-` read as `_`. Tenant names hold only lower-case letters, digits and
/// single inner `-`, so `t_<tenant>__` names one tenant: no name one
/// tenant's filter records can be another party's, whatever either writes.
fn exported_name(filter: &Scoped, name: &str) -> String {
    if filter.tenant.is_default() {
        format!("filter_{}_{name}", prefix_of(&filter.name))
    } else {
        format!(
            "t_{}__{}_{name}",
            filter.tenant.as_str().replace('-', "_"),
            prefix_of(&filter.name)
        )
    }
}

impl FilterMetrics {
    /// Records `value` for `filter`'s metric `name` with `labels`; a record
    /// the caps or the naming rules refuse is dropped and counted.
    pub fn record(&self, filter: &Scoped, kind: Kind, name: &str, labels: Labels, value: f64) {
        if let Err(why) = self.try_record(filter, kind, name, labels, value) {
            self.refused
                .entry((filter.clone(), why.label()))
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                filter = filter.to_string().as_str(),
                metric = name,
                "metric record refused: {why:?}"
            );
        }
    }

    fn try_record(
        &self,
        filter: &Scoped,
        kind: Kind,
        name: &str,
        mut labels: Labels,
        value: f64,
    ) -> Result<(), Refused> {
        if !valid_name(name) {
            return Err(Refused::BadName);
        }
        if !value.is_finite() {
            return Err(Refused::NotFinite);
        }
        if labels.len() > MAX_LABELS
            || labels
                .iter()
                .any(|(n, v)| !valid_name(n) || n.starts_with("__") || v.len() > MAX_VALUE_LEN)
        {
            return Err(Refused::BadLabels);
        }
        // One series per label set, whatever order the filter lists them in.
        labels.sort();
        if labels.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(Refused::BadLabels);
        }
        let key = (filter.clone(), name.to_owned());
        let metric = match self.metrics.get(&key) {
            Some(m) => m,
            None => {
                {
                    let mut count = self.names.entry(filter.clone()).or_default();
                    if *count >= MAX_NAMES {
                        return Err(Refused::TooManyNames);
                    }
                    let exported = exported_name(filter, name);
                    // Creating a name is rare: checking it against every
                    // other exported name is cheap enough.
                    if reserved().any(|r| clash(&exported, r))
                        || self
                            .metrics
                            .iter()
                            .any(|m| m.key() != &key && clash(&exported, &m.exported))
                    {
                        return Err(Refused::NameTaken);
                    }
                    let created = match self.metrics.entry(key.clone()) {
                        dashmap::mapref::entry::Entry::Occupied(_) => false,
                        dashmap::mapref::entry::Entry::Vacant(v) => {
                            v.insert(Metric {
                                kind,
                                exported,
                                series: DashMap::new(),
                            });
                            true
                        }
                    };
                    if created {
                        *count += 1;
                    }
                }
                self.metrics.get(&key).ok_or(Refused::TooManyNames)?
            }
        };
        if metric.kind != kind {
            return Err(Refused::KindMismatch);
        }
        let series = match metric.series.get(&labels) {
            Some(s) => s,
            None => {
                if metric.series.len() >= MAX_SERIES {
                    return Err(Refused::TooManySeries);
                }
                metric
                    .series
                    .entry(labels.clone())
                    .or_insert_with(|| match kind {
                        Kind::Counter => Series::Counter(Counter::default()),
                        Kind::Gauge => Series::Gauge(Gauge::default()),
                        Kind::Histogram => {
                            Series::Histogram(Histogram::new(BUCKETS), AtomicU64::new(0))
                        }
                    })
                    .downgrade()
            }
        };
        match &*series {
            Series::Counter(c) => {
                c.inc_by(value as u64);
            }
            Series::Gauge(g) => {
                g.set(value);
            }
            Series::Histogram(h, n) => {
                h.observe(value);
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Drops every metric a tenant's filters recorded (the tenant has left).
    pub fn forget_tenant(&self, tenant: &wasmgate_config::TenantId) {
        self.metrics.retain(|(f, _), _| f.tenant != *tenant);
        self.names.retain(|f, _| f.tenant != *tenant);
        self.refused.retain(|(f, _), _| f.tenant != *tenant);
    }

    /// Every series `filter` recorded, sorted by name then labels (for
    /// the offline filter runner, which shows what a filter recorded).
    pub fn snapshot(&self, filter: &Scoped) -> Vec<Recorded> {
        let mut out = Vec::new();
        for m in self.metrics.iter().filter(|m| &m.key().0 == filter) {
            for s in m.series.iter() {
                let value = match s.value() {
                    Series::Counter(c) => Value::Counter(c.get()),
                    Series::Gauge(g) => Value::Gauge(g.get()),
                    Series::Histogram(_, n) => Value::Histogram(n.load(Ordering::Relaxed)),
                };
                out.push(Recorded {
                    name: m.key().1.clone(),
                    labels: s.key().clone(),
                    value,
                });
            }
        }
        out.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        out
    }

    /// How many records of `filter` were refused (all reasons).
    pub fn refused(&self, filter: &Scoped) -> u64 {
        self.refused
            .iter()
            .filter(|e| &e.key().0 == filter)
            .map(|e| e.value().load(Ordering::Relaxed))
            .sum()
    }
}

impl Collector for FilterMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for m in self.metrics.iter() {
            let (help, metric_type) = match m.kind {
                Kind::Counter => ("a counter recorded by a filter", MetricType::Counter),
                Kind::Gauge => ("a gauge recorded by a filter", MetricType::Gauge),
                Kind::Histogram => ("a histogram recorded by a filter", MetricType::Histogram),
            };
            let mut family = encoder.encode_descriptor(&m.exported, help, None, metric_type)?;
            for s in m.series.iter() {
                let e = family.encode_family(s.key())?;
                match s.value() {
                    Series::Counter(c) => c.encode(e)?,
                    Series::Gauge(g) => g.encode(e)?,
                    Series::Histogram(h, _) => h.encode(e)?,
                }
            }
        }
        if !self.refused.is_empty() {
            let mut family = encoder.encode_descriptor(
                REFUSED_RECORDS.unprefixed,
                REFUSED_RECORDS.help,
                None,
                MetricType::Counter,
            )?;
            for r in self.refused.iter() {
                let filter = r.key().0.to_string();
                let labels = [("filter", filter.as_str()), ("reason", r.key().1)];
                ConstCounter::new(r.value().load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn text(fm: Arc<FilterMetrics>) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("wasmgate");
        registry.register_collector(Box::new(fm));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn records_are_exported_under_the_filters_prefix() {
        let fm = Arc::new(FilterMetrics::default());
        let f = Scoped::default_tenant("my-filter");
        let l = |v: &str| {
            vec![
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), v.to_owned()),
            ]
        };
        fm.record(&f, Kind::Counter, "hits", l("1"), 2.0);
        fm.record(&f, Kind::Counter, "hits", l("1"), 3.0);
        fm.record(&f, Kind::Gauge, "depth", vec![], 1.5);
        fm.record(&f, Kind::Histogram, "lag", vec![], 0.2);
        let out = text(fm.clone());
        assert!(
            out.contains(r#"wasmgate_filter_my_filter_hits_total{a="1",b="2"} 5"#),
            "{out}"
        );
        assert!(out.contains("wasmgate_filter_my_filter_depth 1.5"), "{out}");
        assert!(
            out.contains(r#"wasmgate_filter_my_filter_lag_bucket{le="0.25"} 1"#),
            "{out}"
        );
        assert_eq!(fm.refused(&Scoped::default_tenant("my-filter")), 0);
    }

    #[test]
    fn no_name_one_tenant_records_is_another_partys() {
        let fm = Arc::new(FilterMetrics::default());
        let t = |tenant: &str, filter: &str| {
            Scoped::new(wasmgate_config::TenantId(Arc::from(tenant)), filter)
        };
        // Names that, written together, read alike.
        let all = [
            t("a", "b_c"),
            t("a-b", "c"),
            t("b", "b_c"),
            Scoped::default_tenant("a_b_c"),
            Scoped::default_tenant("t_a__b_c"),
        ];
        for (i, f) in all.iter().enumerate() {
            // Each its own kind: nothing may merge them.
            let kind = [Kind::Counter, Kind::Gauge][i % 2];
            fm.record(f, kind, "x", vec![], 1.0);
        }
        for f in &all {
            assert_eq!(fm.refused(f), 0, "{f}");
        }
        let out = text(fm.clone());
        for name in [
            "wasmgate_t_a__b_c_x_total 1",
            "wasmgate_t_a_b__c_x 1",
            "wasmgate_t_b__b_c_x_total 1",
            "wasmgate_filter_a_b_c_x 1",
            "wasmgate_filter_t_a__b_c_x_total 1",
        ] {
            assert!(out.contains(name), "{name} in {out}");
        }
    }

    #[test]
    fn names_that_would_clash_are_refused() {
        let fm = Arc::new(FilterMetrics::default());
        let (a, ab, call) = (
            Scoped::default_tenant("a"),
            Scoped::default_tenant("a_b"),
            Scoped::default_tenant("call"),
        );
        fm.record(&a, Kind::Counter, "b_c", vec![], 1.0);
        fm.record(&ab, Kind::Gauge, "c", vec![], 1.0);
        fm.record(&ab, Kind::Gauge, "c_total", vec![], 1.0);
        fm.record(&call, Kind::Histogram, "duration_seconds", vec![], 1.0);
        assert_eq!(fm.refused(&Scoped::default_tenant("a")), 0);
        assert_eq!(
            fm.refused(&Scoped::default_tenant("a_b")),
            2,
            "c clashes with a's b_c, c_total with its samples"
        );
        assert_eq!(
            fm.refused(&Scoped::default_tenant("call")),
            1,
            "the gateway's own filter_call_duration_seconds"
        );
        let out = text(fm);
        assert_eq!(
            out.matches("# TYPE wasmgate_filter_a_b_c ").count(),
            1,
            "{out}"
        );
    }

    #[test]
    fn caps_and_bad_records_are_refused_and_counted() {
        let fm = Arc::new(FilterMetrics::default());
        let f = Scoped::default_tenant("f");
        fm.record(&f, Kind::Counter, "bad-name", vec![], 1.0);
        fm.record(
            &f,
            Kind::Counter,
            "x",
            vec![("__r".into(), "v".into())],
            1.0,
        );
        fm.record(&f, Kind::Gauge, "x", vec![], f64::NAN);
        fm.record(&f, Kind::Counter, "c", vec![], 1.0);
        fm.record(&f, Kind::Gauge, "c", vec![], 1.0);
        for i in 0..MAX_SERIES + 10 {
            fm.record(
                &f,
                Kind::Counter,
                "many",
                vec![("id".into(), i.to_string())],
                1.0,
            );
        }
        for i in 0..MAX_NAMES + 5 {
            fm.record(&f, Kind::Counter, &format!("n{i}"), vec![], 1.0);
        }
        // bad name, bad label, NaN, kind mismatch, 10 series and 7 names
        // past their caps (c and many already took two names).
        assert_eq!(fm.refused(&Scoped::default_tenant("f")), 4 + 10 + 7);
        let out = text(fm);
        assert!(
            out.contains(
                r#"wasmgate_filter_metrics_refused_total{filter="f",reason="too_many_series"} 10"#
            ),
            "{out}"
        );
        assert_eq!(
            out.matches("wasmgate_filter_f_many_total{").count(),
            MAX_SERIES
        );
    }
}
