//! Prometheus metrics. One [`Metrics`] per gateway, passed as an `Arc`
//! handle (no global registry). Handles that the request path touches are
//! created up front (per route, per filter pool), so recording a request costs
//! atomic increments, not map lookups.

pub mod filter_metrics;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `wasmgate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, or `""` when no route matched.
    pub route: String,
    /// Cluster name, or `""` when nothing was forwarded.
    pub cluster: String,
    /// `1xx` … `5xx`.
    pub status_class: String,
}

/// A route label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: String,
}

/// One cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Cluster name.
    pub cluster: String,
}

/// One endpoint of a cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Cluster name.
    pub cluster: String,
    /// The address dialled.
    pub endpoint: String,
}

/// A circuit-breaker limit of a cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    /// Cluster name.
    pub cluster: String,
    /// `max_requests`, `max_connections` or `max_pending`.
    pub limit: &'static str,
}

/// Why a client connection ended in an HTTP-level error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnErrorLabels {
    /// `parse` (malformed request, answered 400 by the parser),
    /// `head_too_large` (431), `header_timeout` (slow head), `other`.
    pub kind: &'static str,
}

/// A filter's calls on one route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabels {
    /// Filter name.
    pub filter: String,
    /// Route name.
    pub route: String,
}

/// A filter's calls on one route by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterOutcomeLabels {
    /// Filter name.
    pub filter: String,
    /// Route name.
    pub route: String,
    /// `ok` or a failure code such as `filter_trap`.
    pub outcome: String,
}

/// Outbound calls of a filter by cluster and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    /// Filter name.
    pub filter: String,
    /// Cluster name (`""` for a call refused before a cluster was chosen).
    pub cluster: String,
    /// `2xx` … `5xx`, or why no response came back (`timeout`,
    /// `unavailable`, `unknown_cluster`, `budget_exhausted`, ...).
    pub outcome: String,
}

/// An outcome: `ok` or `rejected`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `rejected`.
    pub outcome: &'static str,
}

/// A filter module upload by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwapLabels {
    /// Filter name.
    pub filter: String,
    /// `ok` or `rejected`.
    pub outcome: &'static str,
}

/// Requests one filter version handled, by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Filter name.
    pub filter: String,
    /// Version number.
    pub version: String,
    /// `ok`, `5xx` or `filter_failed`.
    pub outcome: &'static str,
}

/// A canary event of one filter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    /// Filter name.
    pub filter: String,
    /// `started`, `promoted`, `rolled_back` or `auto_rolled_back`.
    pub event: &'static str,
}

/// One filter name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterNameLabels {
    /// Filter name.
    pub filter: String,
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route, cluster and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request head to response head, by route.
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Open client connections.
    pub active_connections: Gauge,
    /// Client connections accepted.
    pub connections: Counter,
    /// Requests in flight on client connections (from the request head
    /// until the response body is finished).
    pub active_requests: Gauge,
    /// Requests still in flight when the drain deadline cut them off.
    pub drain_cutoff_requests: Counter,
    /// Connections still open when the drain deadline cut them off.
    pub drain_cutoff_connections: Counter,
    /// Filter calls by outcome.
    pub filter_calls: Family<FilterOutcomeLabels, Counter>,
    /// Filter call duration (host view: acquire + call).
    pub filter_duration: Family<FilterLabels, Histogram, fn() -> Histogram>,
    /// Filter instances created.
    pub filter_instances_created: Family<FilterLabels, Counter>,
    /// Filter instances discarded.
    pub filter_instances_discarded: Family<FilterLabels, Counter>,
    /// Times a filter was quarantined after failing repeatedly.
    pub filter_quarantines: Family<FilterLabels, Counter>,
    /// Calls whose failure was skipped under `failure_policy = "fail-open"`.
    pub filter_fail_open: Family<FilterLabels, Counter>,
    /// Idle filter instances (sampled at scrape).
    pub filter_instances_idle: Family<FilterLabels, Gauge>,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// TLS handshakes completed.
    pub tls_handshakes: Counter,
    /// TLS handshakes failed or timed out.
    pub tls_handshake_errors: Counter,
    /// Client connections that ended in an HTTP-level error, by kind. Requests
    /// the parser refuses never reach routing, so they are counted here and
    /// not in `requests`.
    pub connection_errors: Family<ConnErrorLabels, Counter>,
    /// Connections closed for a missing, invalid or late PROXY protocol header.
    pub proxy_protocol_errors: Counter,
    /// Open connections to each cluster (sampled at scrape).
    pub upstream_connections: Family<ClusterLabels, Gauge>,
    /// Requests in flight to each cluster (sampled at scrape).
    pub upstream_active_requests: Family<ClusterLabels, Gauge>,
    /// 1 when an endpoint is usable (sampled at scrape).
    pub upstream_endpoint_healthy: Family<EndpointLabels, Gauge>,
    /// Requests in flight to an endpoint (sampled at scrape).
    pub upstream_endpoint_active: Family<EndpointLabels, Gauge>,
    /// Endpoints ejected by outlier detection.
    pub upstream_ejections: Family<ClusterLabels, Counter>,
    /// Requests that found no healthy endpoint.
    pub upstream_no_healthy: Family<ClusterLabels, Counter>,
    /// Retries made.
    pub upstream_retries: Family<ClusterLabels, Counter>,
    /// Retries not made because the retry budget was spent.
    pub upstream_retry_budget_exhausted: Family<ClusterLabels, Counter>,
    /// Requests refused by a circuit-breaker limit.
    pub upstream_overflow: Family<OverflowLabels, Counter>,
    /// Resident memory, as the overload guard last saw it.
    pub process_resident_memory: Gauge,
    /// Open file descriptors, as the overload guard last saw them.
    pub process_open_files: Gauge,
    /// Requests shed by the overload guard, by pressure.
    pub overload_shed: Family<ConnErrorLabels, Counter>,
    /// Requests upgraded (WebSocket).
    pub upgrades: Counter,
    /// Upgraded connections open now.
    pub active_tunnels: Gauge,
    /// Filters' outbound calls.
    pub filter_outbound: Family<OutboundLabels, Counter>,
    /// Config reloads by outcome.
    pub config_reloads: Family<OutcomeLabels, Counter>,
    /// Filter module uploads by outcome.
    pub filter_swaps: Family<SwapLabels, Counter>,
    /// Versions of each filter alive (sampled at scrape).
    pub filter_versions_live: Family<FilterNameLabels, Gauge>,
    /// Instances of each filter alive, all versions and routes (sampled).
    pub filter_instances_live: Family<FilterNameLabels, Gauge>,
    /// Requests by filter version and outcome.
    pub filter_version_requests: Family<VersionLabels, Counter>,
    /// Canary starts, promotions and rollbacks.
    pub filter_canary_events: Family<CanaryLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~26 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

fn filter_histogram() -> Histogram {
    // 1 µs … ~0.5 s.
    Histogram::new(exponential_buckets(0.000001, 2.0, 20))
}

impl Metrics {
    /// Creates and registers every metric, with no filter metrics.
    pub fn new() -> Arc<Metrics> {
        Metrics::with_filter_metrics(Arc::default())
    }

    /// Creates and registers every metric; what filters record in
    /// `filter_metrics` is exported with them.
    pub fn with_filter_metrics(
        filter_metrics: Arc<crate::filter_metrics::FilterMetrics>,
    ) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("wasmgate");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            active_connections: Gauge::default(),
            connections: Counter::default(),
            active_requests: Gauge::default(),
            drain_cutoff_requests: Counter::default(),
            drain_cutoff_connections: Counter::default(),
            filter_calls: Family::default(),
            filter_duration: Family::new_with_constructor(filter_histogram),
            filter_instances_created: Family::default(),
            filter_instances_discarded: Family::default(),
            filter_instances_idle: Family::default(),
            filter_quarantines: Family::default(),
            filter_fail_open: Family::default(),
            access_log_dropped: Counter::default(),
            tls_handshakes: Counter::default(),
            tls_handshake_errors: Counter::default(),
            connection_errors: Family::default(),
            proxy_protocol_errors: Counter::default(),
            upstream_connections: Family::default(),
            upstream_active_requests: Family::default(),
            upstream_endpoint_healthy: Family::default(),
            upstream_endpoint_active: Family::default(),
            upstream_ejections: Family::default(),
            upstream_no_healthy: Family::default(),
            upstream_retries: Family::default(),
            upstream_retry_budget_exhausted: Family::default(),
            upstream_overflow: Family::default(),
            process_resident_memory: Gauge::default(),
            process_open_files: Gauge::default(),
            overload_shed: Family::default(),
            upgrades: Counter::default(),
            active_tunnels: Gauge::default(),
            filter_outbound: Family::default(),
            config_reloads: Family::default(),
            filter_swaps: Family::default(),
            filter_versions_live: Family::default(),
            filter_instances_live: Family::default(),
            filter_version_requests: Family::default(),
            filter_canary_events: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by route, cluster and status class",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from the request head to the response head, by route",
            m.request_duration.clone(),
        );
        registry.register(
            "active_connections",
            "Open client connections",
            m.active_connections.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "active_requests",
            "Requests in flight on client connections, from the request head until the response body is finished",
            m.active_requests.clone(),
        );
        registry.register(
            "drain_cutoff_requests",
            "Requests still in flight when the drain deadline (server.drain_timeout) cut them off",
            m.drain_cutoff_requests.clone(),
        );
        registry.register(
            "drain_cutoff_connections",
            "Client connections still open when the drain deadline (server.drain_timeout) cut them off",
            m.drain_cutoff_connections.clone(),
        );
        registry.register(
            "filter_calls",
            "Filter calls by filter, route and outcome",
            m.filter_calls.clone(),
        );
        registry.register(
            "filter_call_duration_seconds",
            "Filter call duration including instance acquisition",
            m.filter_duration.clone(),
        );
        registry.register(
            "filter_instances_created",
            "Filter instances created",
            m.filter_instances_created.clone(),
        );
        registry.register(
            "filter_instances_discarded",
            "Filter instances discarded (failure, max_uses, memory, fresh mode)",
            m.filter_instances_discarded.clone(),
        );
        registry.register(
            "filter_instances_idle",
            "Idle filter instances in each pool",
            m.filter_instances_idle.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes that failed or timed out",
            m.tls_handshake_errors.clone(),
        );
        registry.register(
            "connection_errors",
            "Client connections that ended in an HTTP-level error (requests refused by the parser, slow heads), by kind",
            m.connection_errors.clone(),
        );
        registry.register(
            "filter_quarantines",
            "Times a filter was quarantined after failing repeatedly",
            m.filter_quarantines.clone(),
        );
        registry.register(
            "filter_fail_open",
            "Filter failures skipped under failure_policy = fail-open",
            m.filter_fail_open.clone(),
        );
        registry.register(
            "proxy_protocol_errors",
            "Connections closed for a missing, invalid or late PROXY protocol header",
            m.proxy_protocol_errors.clone(),
        );
        for (name, help, family) in [
            (
                "upstream_connections",
                "Open connections to each cluster",
                &m.upstream_connections,
            ),
            (
                "upstream_active_requests",
                "Requests in flight to each cluster",
                &m.upstream_active_requests,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "upstream_endpoint_healthy",
            "1 when an endpoint is usable (active checks pass, not ejected)",
            m.upstream_endpoint_healthy.clone(),
        );
        registry.register(
            "upstream_endpoint_active_requests",
            "Requests in flight to an endpoint",
            m.upstream_endpoint_active.clone(),
        );
        for (name, help, family) in [
            (
                "upstream_ejections",
                "Endpoints ejected by outlier detection",
                &m.upstream_ejections,
            ),
            (
                "upstream_no_healthy",
                "Requests answered 503 because no endpoint was healthy",
                &m.upstream_no_healthy,
            ),
            ("upstream_retries", "Retries made", &m.upstream_retries),
            (
                "upstream_retry_budget_exhausted",
                "Retries not made because the cluster's retry budget was spent",
                &m.upstream_retry_budget_exhausted,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory, as the overload guard last sampled it",
            m.process_resident_memory.clone(),
        );
        registry.register(
            "process_open_files",
            "Open file descriptors, as the overload guard last sampled them",
            m.process_open_files.clone(),
        );
        registry.register(
            "overload_shed",
            "Requests shed with 503 by the overload guard, by kind of pressure (memory, open_files)",
            m.overload_shed.clone(),
        );
        registry.register(
            "upstream_overflow",
            "Requests refused by a cluster's circuit-breaker limit",
            m.upstream_overflow.clone(),
        );
        registry.register(
            "upgrades",
            "Requests upgraded to a tunnel (WebSocket)",
            m.upgrades.clone(),
        );
        registry.register(
            "active_tunnels",
            "Upgraded connections (WebSocket) open now",
            m.active_tunnels.clone(),
        );
        registry.register(
            "filter_outbound",
            "Outbound calls made by filters, by filter, cluster and outcome",
            m.filter_outbound.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads, applied (ok) or refused with the running config kept (rejected)",
            m.config_reloads.clone(),
        );
        registry.register(
            "filter_swaps",
            "Filter module uploads, activated (ok) or refused with the current version kept (rejected)",
            m.filter_swaps.clone(),
        );
        registry.register(
            "filter_versions_live",
            "Versions of each filter alive: the current one, and old ones until their last request ends",
            m.filter_versions_live.clone(),
        );
        registry.register(
            "filter_instances_live",
            "Instances of each filter alive, over every version and route",
            m.filter_instances_live.clone(),
        );
        registry.register(
            "filter_version_requests",
            "Requests each filter version handled, by outcome: ok, 5xx (the response), filter_failed (the filter itself)",
            m.filter_version_requests.clone(),
        );
        registry.register(
            "filter_canary_events",
            "Canary releases started, promoted, rolled back by hand (rolled_back) or by the error-rate check (auto_rolled_back)",
            m.filter_canary_events.clone(),
        );
        registry.register_collector(Box::new(filter_metrics));
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Status class label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_gateway_family_named_filter_is_reserved_from_filters() {
        // The names this file registers (a family with no series is not
        // encoded, so the exposition cannot be asked).
        let source = include_str!("lib.rs");
        let families: Vec<&str> = source
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix("\"filter_"))
            .filter_map(|l| l.strip_suffix("\","))
            .collect();
        assert!(families.len() >= 10, "{families:?}");
        for f in families {
            let name = format!("filter_{f}");
            assert!(
                crate::filter_metrics::RESERVED.contains(&name.as_str()),
                "{name} is missing from filter_metrics::RESERVED"
            );
        }
    }
}
