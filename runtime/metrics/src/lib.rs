//! Prometheus metrics. One [`Metrics`] per gateway, passed as an `Arc`
//! handle (no global registry). Handles that the request path touches are
//! created up front (per route, per filter pool), so recording a request costs
//! atomic increments, not map lookups.
//!
//! # Declaring a metric
//!
//! Every metric the gateway exports is declared once, as a row in one of the
//! tables below (one table per subsystem, all in the one `metric_tables!`
//! invocation that makes [`Metrics`]):
//!
//! ```text
//! upstream {
//!     /// Sampled at scrape.
//!     upstream_connections: gauge[ClusterLabels] => "upstream_connections",
//!         "Open connections to each cluster";
//! }
//! ```
//!
//! The row gives the field of [`Metrics`], the kind (`counter`, `gauge` or
//! `histogram(buckets)`; `[Labels]` makes it a `Family` keyed by that label
//! set), the name (exported as `wasmgate_<name>`) and the help text; `///`
//! lines are notes for the field's docs. The macro generates the field, its
//! construction, its registration (in table order, which is the order of
//! `/metrics`) and its entry in [`Metrics::TABLE`]. Tests and docs read names
//! from the table (with [`gateway_metrics`], which adds the one metric
//! [`FilterMetrics`](filter_metrics::FilterMetrics) exports itself), never
//! from source text; filters may not record under a gateway name.
//!
//! To add a metric: add its row to its subsystem's table and record it
//! through the field. A new label set is a struct deriving `EncodeLabelSet`
//! (and `Default` under `cfg(test)`, so the tests can make a series). Names
//! are lowercase `snake_case`; a counter's name does not end in `_total` (the
//! exposition adds it), a histogram's ends in its unit (`_seconds`); help
//! text has no final `.` (the exposition adds one). The unit tests check all
//! of this, and that every row is exported.

pub mod filter_metrics;
#[macro_use]
mod table;

pub use table::{MetricInfo, PREFIX};

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

/// Labels of `wasmgate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct RequestLabels {
    /// The tenant (`default`: the operator's own).
    pub tenant: String,
    /// Route name, or `""` when no route matched.
    pub route: String,
    /// Cluster name, or `""` when nothing was forwarded.
    pub cluster: String,
    /// `1xx` … `5xx`.
    pub status_class: String,
}

/// A route label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct RouteLabels {
    /// The tenant (`default`: the operator's own).
    pub tenant: String,
    /// Route name.
    pub route: String,
}

/// One cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct ClusterLabels {
    /// The tenant whose cluster it is (`default`: the operator's).
    pub tenant: String,
    /// Cluster name.
    pub cluster: String,
}

/// One endpoint of a cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct EndpointLabels {
    /// The tenant whose cluster it is (`default`: the operator's).
    pub tenant: String,
    /// Cluster name.
    pub cluster: String,
    /// The address dialled.
    pub endpoint: String,
}

/// A circuit-breaker limit of a cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct OverflowLabels {
    /// The tenant whose cluster it is (`default`: the operator's).
    pub tenant: String,
    /// Cluster name.
    pub cluster: String,
    /// `max_requests`, `max_connections` or `max_pending`.
    pub limit: &'static str,
}

/// Why a client connection ended in an HTTP-level error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct ConnErrorLabels {
    /// `parse` (malformed request, answered 400 by the parser),
    /// `head_too_large` (431), `header_timeout` (slow head), `other`.
    pub kind: &'static str,
}

/// A worker thread (thread-per-core).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct WorkerLabels {
    /// The worker's index, from 0.
    pub worker: u32,
}

/// A filter's calls on one route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct FilterLabels {
    /// The tenant (`default`: the operator's own).
    pub tenant: String,
    /// Filter name.
    pub filter: String,
    /// Route name.
    pub route: String,
}

/// A filter's calls on one route by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct FilterOutcomeLabels {
    /// The tenant (`default`: the operator's own).
    pub tenant: String,
    /// Filter name.
    pub filter: String,
    /// Route name.
    pub route: String,
    /// `ok` or a failure code such as `filter_trap`.
    pub outcome: String,
}

/// Outbound calls of a filter by cluster and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
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
#[cfg_attr(test, derive(Default))]
pub struct OutcomeLabels {
    /// `ok` or `rejected`.
    pub outcome: &'static str,
}

/// A filter module upload by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct SwapLabels {
    /// Filter name.
    pub filter: String,
    /// `ok` or `rejected`.
    pub outcome: &'static str,
}

/// Requests one filter version handled, by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
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
#[cfg_attr(test, derive(Default))]
pub struct CanaryLabels {
    /// Filter name.
    pub filter: String,
    /// `started`, `promoted`, `rolled_back` or `auto_rolled_back`.
    pub event: &'static str,
}

/// One tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct TenantLabels {
    /// The tenant (`default`: the operator's own).
    pub tenant: String,
}

/// One cluster of one tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct TenantClusterLabels {
    /// The tenant.
    pub tenant: String,
    /// Cluster name.
    pub cluster: String,
}

/// What a filter asked for and was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct FilterRefusalLabels {
    /// The tenant (`default`: the operator's own).
    pub tenant: String,
    /// Filter name.
    pub filter: String,
    /// The grant or limit that refused it, by its config key
    /// (`reroute_clusters`, …).
    pub limit: &'static str,
}

/// Where a filter module's compiled code came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct LoadSourceLabels {
    /// `compiled`, `disk` (the compile cache) or `memory` (a component
    /// already compiled from the same bytes).
    pub source: &'static str,
}

/// What the response cache did with a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct CacheResultLabels {
    /// `hit`, `stale`, `miss` or `bypass`.
    pub result: &'static str,
}

/// One tenant's quota.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct TenantQuotaLabels {
    /// The tenant.
    pub tenant: String,
    /// The quota, by its key in `[tenants.quotas]`.
    pub quota: &'static str,
}

/// Why the admin listener refused a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct AdminRefusalLabels {
    /// `host_not_allowed` (a `Host` outside `admin.allowed_hosts`, or not
    /// a loopback name without a token) or `unauthorized` (no or a wrong
    /// token).
    pub reason: &'static str,
}

/// One filter name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[cfg_attr(test, derive(Default))]
pub struct FilterNameLabels {
    /// Filter name.
    pub filter: String,
}

/// The bucket bounds of request latency: 50 µs … ~26 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.0, 20)
}

/// The bucket bounds of filter calls: 1 µs … ~0.5 s.
fn filter_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000001, 2.0, 20)
}

metric_tables! {
    /// The gateway's metrics: one field per row of the tables below.
    pub struct Metrics;

    // Client connections and the requests on them (the server and the
    // request path).
    listener {
        requests: counter[RequestLabels] => "requests",
            "Requests answered, by route, cluster and status class";
        request_duration: histogram[RouteLabels](latency_buckets()) => "request_duration_seconds",
            "Time from the request head to the response head, by route";
        active_connections: gauge => "active_connections",
            "Open client connections";
        connections: counter => "connections",
            "Client connections accepted";
        worker_connections: counter[WorkerLabels] => "worker_connections",
            "Client connections accepted by each worker thread (with server.workers above 1: thread-per-core)";
        active_requests: gauge => "active_requests",
            "Requests in flight on client connections, from the request head until the response body is finished";
        drain_cutoff_requests: counter => "drain_cutoff_requests",
            "Requests still in flight when the drain deadline (server.drain_timeout) cut them off";
        drain_cutoff_connections: counter => "drain_cutoff_connections",
            "Client connections still open when the drain deadline (server.drain_timeout) cut them off";
        tls_handshakes: counter => "tls_handshakes",
            "TLS handshakes completed";
        tls_handshake_errors: counter => "tls_handshake_errors",
            "TLS handshakes that failed or timed out";
        /// Requests the parser refuses never reach routing, so they are
        /// counted here and not in `requests`.
        connection_errors: counter[ConnErrorLabels] => "connection_errors",
            "Client connections that ended in an HTTP-level error (requests refused by the parser, slow heads), by kind";
        proxy_protocol_errors: counter => "proxy_protocol_errors",
            "Connections closed for a missing, invalid or late PROXY protocol header, or from a peer not in server.proxy_protocol_from";
        upgrades: counter => "upgrades",
            "Requests upgraded to a tunnel (WebSocket)";
        active_tunnels: gauge => "active_tunnels",
            "Upgraded connections (WebSocket) open now";
    }

    // Filter calls and instances on each route (the engine's pools and the
    // chain), and filters' outbound calls.
    filters {
        filter_calls: counter[FilterOutcomeLabels] => "filter_calls",
            "Filter calls by filter, route and outcome";
        filter_duration: histogram[FilterLabels](filter_buckets()) => "filter_call_duration_seconds",
            "Filter call duration including instance acquisition";
        filter_instances_created: counter[FilterLabels] => "filter_instances_created",
            "Filter instances created";
        filter_instances_discarded: counter[FilterLabels] => "filter_instances_discarded",
            "Filter instances discarded (failure, max_uses, memory, fresh mode)";
        filter_instances_reaped: counter[FilterLabels] => "filter_instances_reaped",
            "Discarded filter instances with more than 4 MiB of memory, freed on the reaper thread instead of a worker";
        /// Sampled at scrape.
        filter_instances_idle: gauge[FilterLabels] => "filter_instances_idle",
            "Idle filter instances in each pool";
        filter_quarantines: counter[FilterLabels] => "filter_quarantines",
            "Times a filter was quarantined after failing repeatedly";
        filter_fail_open: counter[FilterLabels] => "filter_fail_open",
            "Filter failures skipped under failure_policy = fail-open";
        filter_outbound: counter[OutboundLabels] => "filter_outbound",
            "Outbound calls made by filters, by filter, cluster and outcome";
        filter_refusals: counter[FilterRefusalLabels] => "filter_refusals",
            "What filters asked for and a grant or limit the operator set refused, by filter and limit";
        filter_probes: counter[TenantLabels] => "filter_probes",
            "Filter starts a build made to check a route's config (instantiation and init), by tenant: a change to one tenant probes only its own filters";
    }

    // Upstream clusters and their endpoints.
    upstream {
        /// Sampled at scrape.
        upstream_connections: gauge[ClusterLabels] => "upstream_connections",
            "Open connections to each cluster";
        /// Sampled at scrape.
        upstream_active_requests: gauge[ClusterLabels] => "upstream_active_requests",
            "Requests in flight to each cluster";
        /// Sampled at scrape.
        upstream_endpoint_healthy: gauge[EndpointLabels] => "upstream_endpoint_healthy",
            "1 when an endpoint is usable (active checks pass, not ejected)";
        /// Sampled at scrape.
        upstream_endpoint_active: gauge[EndpointLabels] => "upstream_endpoint_active_requests",
            "Requests in flight to an endpoint";
        upstream_ejections: counter[ClusterLabels] => "upstream_ejections",
            "Endpoints ejected by outlier detection";
        upstream_no_healthy: counter[ClusterLabels] => "upstream_no_healthy",
            "Requests answered 503 because no endpoint was healthy";
        upstream_retries: counter[ClusterLabels] => "upstream_retries",
            "Retries made";
        upstream_retry_budget_exhausted: counter[ClusterLabels] => "upstream_retry_budget_exhausted",
            "Retries not made because the cluster's retry budget was spent";
        upstream_overflow: counter[OverflowLabels] => "upstream_overflow",
            "Requests refused by a cluster's circuit-breaker limit";
        upstream_address_denied: counter[TenantClusterLabels] => "upstream_address_denied",
            "Connections a tenant's cluster did not make: the address (after DNS) is one the tenant may not reach (tenants.allow, tenants.deny, built-in ranges, another party's cluster)";
    }

    // What each tenant uses of its quotas, and what they refused (all
    // sampled at scrape from the engine's counts).
    tenants {
        tenant_quota_refusals: counter[TenantQuotaLabels] => "tenant_quota_refusals",
            "What a tenant's quotas refused, by tenant and quota (requests answered 429 or 503, filter calls not made or ended, kv writes, rate-limit keys, outbound calls)";
        tenant_filter_cpu: seconds[TenantLabels] => "tenant_filter_cpu_seconds",
            "Time a tenant's filter calls spent running on the gateway's worker threads (instantiation and init included)";
        tenant_filter_slot_waits: counter[TenantLabels] => "tenant_filter_slot_waits",
            "Filter calls of a tenant that waited because filter_concurrency of its calls were running guest code";
        tenant_requests_in_flight: gauge[TenantLabels] => "tenant_requests_in_flight",
            "Requests of a tenant in flight (against concurrent_requests)";
        tenant_filter_instances: gauge[TenantLabels] => "tenant_filter_instances",
            "Filter instances a tenant holds (against filter_instances)";
        tenant_filter_memory: gauge[TenantLabels] => "tenant_filter_memory_bytes",
            "Linear memory of a tenant's filter instances together (against filter_memory)";
    }

    // The response cache (sampled at scrape from its counts).
    cache {
        cache_lookups: counter[CacheResultLabels] => "cache_lookups",
            "Requests on cached routes by what the cache did: hit (served fresh from it), stale (a stale answer served under stale-while-revalidate or stale-if-error), miss (went upstream), bypass (not looked up: an unsafe method, a Range or an Authorization header)";
        cache_revalidated: counter => "cache_revalidated",
            "Stale answers the upstream confirmed with a 304 (renewed in the cache, not fetched again)";
        cache_coalesced_waits: counter => "cache_coalesced_waits",
            "Misses that waited for another request fetching the same key rather than going upstream themselves";
        cache_filter_lookups: counter[CacheResultLabels] => "cache_filter_lookups",
            "Filters' cache.get calls by result: hit (a live value) or miss";
        cache_filter_stores: counter[OutcomeLabels] => "cache_filter_stores",
            "Filters' cache.set calls: stored (ok), or refused (rejected: larger than the filter's cache_bytes or its tenant's cache budget)";
        cache_purged: counter => "cache_purged",
            "Entries removed by a purge through the admin API or by a successful unsafe method on their URL";
        cache_stores: counter[OutcomeLabels] => "cache_stores",
            "Upstream answers to misses offered to the cache: stored (ok), or not (rejected: not cacheable, too large, trailers)";
        cache_evictions: counter => "cache_evictions",
            "Cache entries evicted to keep within cache.max_bytes";
        tenant_cache_bytes: gauge[TenantLabels] => "tenant_cache_bytes",
            "Bytes a tenant's answers weigh in the response cache (against its cache_bytes quota)";
        tenant_cache_evictions: counter[TenantLabels] => "tenant_cache_evictions",
            "A tenant's own entries removed to keep its answers within its cache_bytes quota";
        cache_entries: gauge => "cache_entries",
            "Entries (keys, each with its Vary variants) in the response cache";
        cache_bytes: gauge => "cache_bytes",
            "Bytes the response cache's entries weigh (keys, heads and bodies), against cache.max_bytes";
    }

    // The access log.
    access_log {
        access_log_dropped: counter => "access_log_dropped",
            "Access log lines dropped because the writer fell behind";
    }

    // The process, as the overload guard samples it, and what it sheds.
    process {
        process_resident_memory: gauge => "process_resident_memory_bytes",
            "Resident memory, as the overload guard last sampled it";
        process_open_files: gauge => "process_open_files",
            "Open file descriptors, as the overload guard last sampled them";
        overload_shed: counter[ConnErrorLabels] => "overload_shed",
            "Requests shed with 503 by the overload guard, by kind of pressure (memory, open_files)";
    }

    // What the control plane changes: config reloads, filter versions and
    // canaries, and the requests each version handled.
    control {
        config_reloads: counter[OutcomeLabels] => "config_reloads",
            "Config reloads, applied (ok) or refused with the running config kept (rejected)";
        tenant_refusals: counter[TenantLabels] => "tenant_config_refused",
            "Tenant configs refused (invalid, a host name another tenant holds, a filter that does not load), the tenant's running config kept; by tenant";
        filter_swaps: counter[SwapLabels] => "filter_swaps",
            "Filter module uploads, activated (ok) or refused with the current version kept (rejected)";
        /// Sampled at scrape.
        filter_versions_live: gauge[FilterNameLabels] => "filter_versions_live",
            "Versions of each filter alive: the current one, and old ones until their last request ends";
        /// Sampled at scrape.
        filter_instances_live: gauge[FilterNameLabels] => "filter_instances_live",
            "Instances of each filter alive, over every version and route";
        filter_version_requests: counter[VersionLabels] => "filter_version_requests",
            "Requests each filter version handled, by outcome: ok, 5xx (the response), filter_failed (the filter itself)";
        filter_canary_events: counter[CanaryLabels] => "filter_canary_events",
            "Canary releases started, promoted, rolled back by hand (rolled_back) or by the error-rate check (auto_rolled_back)";
        /// Sampled at scrape.
        filter_module_loads: counter[LoadSourceLabels] => "filter_module_loads",
            "Filter modules loaded, by where their compiled code came from: compiled now, the compile cache on disk, or a component already in memory from the same bytes (shared, not compiled again)";
        /// Sampled at scrape.
        filter_components: gauge => "filter_components",
            "Distinct compiled filter components held in memory, shared by every module loaded from the same bytes";
        /// Sampled at scrape.
        compile_cache_refused: counter => "compile_cache_refused",
            "Compile cache folders and entries refused because another user owns them or others may write them (the module is compiled instead)";
        admin_refused: counter[AdminRefusalLabels] => "admin_refused",
            "Admin requests refused, by reason (host_not_allowed, unauthorized)";
    }
}

/// Brings a counter sampled at scrape from a running total up to that total.
pub fn raise(c: &prometheus_client::metrics::counter::Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// [`raise`] for a counter of float seconds.
pub fn raise_seconds(
    c: &prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
    total: f64,
) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// Every metric the gateway itself exports: [`Metrics::TABLE`], and the one
/// [`FilterMetrics`](filter_metrics::FilterMetrics) adds for the records it
/// refuses. (What filters record is theirs, named `wasmgate_filter_<filter>_…`.)
pub fn gateway_metrics() -> impl Iterator<Item = &'static MetricInfo> {
    Metrics::TABLE
        .iter()
        .chain([&filter_metrics::REFUSED_RECORDS])
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
        let mut m = Metrics::registered_in(Registry::with_prefix(PREFIX));
        m.registry.register_collector(Box::new(filter_metrics));
        Arc::new(m)
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
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::filter_metrics::{FilterMetrics, Kind, clash};

    #[test]
    fn names_are_unique_and_follow_the_naming_rules() {
        let all: Vec<&MetricInfo> = gateway_metrics().collect();
        assert!(all.len() > 40, "{all:?}");
        let mut seen = HashSet::new();
        for m in &all {
            assert!(seen.insert(m.name), "{} is declared twice", m.name);
            assert_eq!(m.name, format!("{PREFIX}_{}", m.unprefixed));
            assert!(
                m.unprefixed
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && m.unprefixed.starts_with(|c: char| c.is_ascii_lowercase())
                    && !m.unprefixed.ends_with('_')
                    && !m.unprefixed.contains("__"),
                "{} is not lowercase snake_case",
                m.name
            );
            if m.kind == Kind::Counter {
                assert!(
                    !m.name.ends_with("_total"),
                    "{}: the exposition adds _total to a counter",
                    m.name
                );
            }
            if m.kind == Kind::Histogram {
                assert!(
                    m.name.ends_with("_seconds") || m.name.ends_with("_bytes"),
                    "{}: a histogram's name ends in its unit",
                    m.name
                );
            }
            assert!(
                !m.help.is_empty() && !m.help.ends_with('.'),
                "{}: help without a final `.` (the exposition adds it)",
                m.name
            );
            assert!(!m.subsystem.is_empty());
        }
        // No family's samples may take another's names (`x_total` next to
        // a counter `x`).
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(!clash(a.name, b.name), "{} and {} clash", a.name, b.name);
            }
        }
    }

    #[test]
    fn every_metric_in_the_table_is_exported_as_declared() {
        let filter_metrics = Arc::new(FilterMetrics::default());
        let m = Metrics::with_filter_metrics(filter_metrics.clone());
        // A family with no series is not exported: give each one a series.
        m.touch_all();
        filter_metrics.record(
            &wasmgate_config::Scoped::default_tenant("f"),
            Kind::Counter,
            "bad name",
            Vec::new(),
            1.0,
        );
        let text = m.encode();
        for info in gateway_metrics() {
            let kind = match info.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            // Registering a metric adds a final `.` to its help; the
            // filter metrics' collector writes its help as it is.
            let dot = if Metrics::TABLE.contains(info) {
                "."
            } else {
                ""
            };
            let head = format!(
                "# HELP {name} {help}{dot}\n# TYPE {name} {kind}\n",
                name = info.name,
                help = info.help
            );
            assert!(text.contains(&head), "{head:?} missing from\n{text}");
            for sample in info.samples() {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{sample}{{"))
                        || l.starts_with(&format!("{sample} "))),
                    "no sample {sample} in\n{text}"
                );
            }
        }
        // And nothing is exported that the tables do not declare.
        assert_eq!(
            text.matches("# TYPE ").count(),
            gateway_metrics().count(),
            "{text}"
        );
        // In table order.
        let order: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let table: Vec<&str> = gateway_metrics().map(|m| m.name).collect();
        assert_eq!(order, table);
    }

    #[test]
    fn filters_cannot_record_under_a_gateway_name() {
        // Every gateway name `filter_<a>_<b…>` (and its samples' names) is
        // what filter `a` recording `b…` would be exported as.
        let mut tried = 0;
        for info in gateway_metrics() {
            for name in [info.name.to_owned()].into_iter().chain(info.samples()) {
                let Some(rest) = name.strip_prefix("wasmgate_filter_") else {
                    continue;
                };
                let Some((filter, metric)) = rest.split_once('_') else {
                    continue;
                };
                let fm = FilterMetrics::default();
                let filter = wasmgate_config::Scoped::default_tenant(filter);
                fm.record(&filter, Kind::Gauge, metric, Vec::new(), 1.0);
                assert_eq!(fm.refused(&filter), 1, "{name} was not refused");
                tried += 1;
            }
        }
        assert!(tried >= 20, "{tried}");
    }
}

/// What a tenant that left had, for [`Metrics::forget_tenant`].
#[derive(Debug, Default)]
pub struct TenantSeries {
    /// Its routes, each with the filters of its chain.
    pub routes: Vec<(String, Vec<String>)>,
    /// Its clusters.
    pub clusters: Vec<String>,
    /// Each endpoint of its clusters, by cluster.
    pub endpoints: Vec<(String, String)>,
    /// Its filters.
    pub filters: Vec<String>,
    /// Every outcome a filter call is counted by (`ok` and the failure
    /// codes).
    pub outcomes: Vec<&'static str>,
    /// Every limit a refusal is counted by.
    pub limits: Vec<&'static str>,
}

impl Metrics {
    /// Drops the series labelled with `tenant` (it left; one added later
    /// under its name starts from zero). Series are found by their labels,
    /// so this takes what the tenant had.
    pub fn forget_tenant(&self, tenant: &str, had: &TenantSeries) {
        let t = || tenant.to_owned();
        let routes = had.routes.iter().map(|(r, _)| r.as_str()).chain([""]);
        for route in routes {
            for cluster in had.clusters.iter().map(String::as_str).chain([""]) {
                for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                    self.requests.remove(&RequestLabels {
                        tenant: t(),
                        route: route.to_owned(),
                        cluster: cluster.to_owned(),
                        status_class: class.to_owned(),
                    });
                }
            }
            self.request_duration.remove(&RouteLabels {
                tenant: t(),
                route: route.to_owned(),
            });
        }
        for (route, filters) in &had.routes {
            for filter in filters {
                let labels = FilterLabels {
                    tenant: t(),
                    filter: filter.clone(),
                    route: route.clone(),
                };
                self.filter_duration.remove(&labels);
                self.filter_instances_created.remove(&labels);
                self.filter_instances_discarded.remove(&labels);
                self.filter_instances_reaped.remove(&labels);
                self.filter_instances_idle.remove(&labels);
                self.filter_quarantines.remove(&labels);
                self.filter_fail_open.remove(&labels);
                for outcome in &had.outcomes {
                    self.filter_calls.remove(&FilterOutcomeLabels {
                        tenant: t(),
                        filter: filter.clone(),
                        route: route.clone(),
                        outcome: (*outcome).to_owned(),
                    });
                }
            }
        }
        for filter in &had.filters {
            for limit in &had.limits {
                self.filter_refusals.remove(&FilterRefusalLabels {
                    tenant: t(),
                    filter: filter.clone(),
                    limit,
                });
            }
        }
        for cluster in &had.clusters {
            self.upstream_address_denied.remove(&TenantClusterLabels {
                tenant: t(),
                cluster: cluster.clone(),
            });
            let labels = ClusterLabels {
                tenant: t(),
                cluster: cluster.clone(),
            };
            self.upstream_connections.remove(&labels);
            self.upstream_active_requests.remove(&labels);
            self.upstream_ejections.remove(&labels);
            self.upstream_no_healthy.remove(&labels);
            self.upstream_retries.remove(&labels);
            self.upstream_retry_budget_exhausted.remove(&labels);
            for limit in ["max_requests", "max_connections", "max_pending"] {
                self.upstream_overflow.remove(&OverflowLabels {
                    tenant: t(),
                    cluster: cluster.clone(),
                    limit,
                });
            }
        }
        for (cluster, endpoint) in &had.endpoints {
            let labels = EndpointLabels {
                tenant: t(),
                cluster: cluster.clone(),
                endpoint: endpoint.clone(),
            };
            self.upstream_endpoint_healthy.remove(&labels);
            self.upstream_endpoint_active.remove(&labels);
        }
        self.filter_probes.remove(&TenantLabels { tenant: t() });
        self.tenant_refusals.remove(&TenantLabels { tenant: t() });
        self.tenant_filter_cpu.remove(&TenantLabels { tenant: t() });
        self.tenant_filter_slot_waits
            .remove(&TenantLabels { tenant: t() });
        self.tenant_requests_in_flight
            .remove(&TenantLabels { tenant: t() });
        self.tenant_filter_instances
            .remove(&TenantLabels { tenant: t() });
        self.tenant_filter_memory
            .remove(&TenantLabels { tenant: t() });
        for quota in wasmgate_config::quota::QUOTA_KEYS {
            self.tenant_quota_refusals
                .remove(&TenantQuotaLabels { tenant: t(), quota });
        }
    }
}
