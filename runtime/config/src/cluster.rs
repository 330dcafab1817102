//! `[clusters.NAME]`: what a cluster is made of and how it behaves, as
//! written (`RawCluster`) and validated (`ClusterConfig`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration, HumanSize};

/// Time allowed to open a connection to one endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    endpoints: Vec<RawEndpoint>,
    connect_timeout: Option<HumanDuration>,
    protocol: Option<UpstreamProtocol>,
    tls: Option<RawUpstreamTls>,
    balance: Option<Balance>,
    hash_on: Option<String>,
    panic_threshold: Option<u8>,
    health_check: Option<RawHealthCheck>,
    outlier: Option<RawOutlier>,
    retry: Option<RawRetry>,
    circuit_breaker: Option<RawCircuitBreaker>,
    dns_refresh: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Address(String),
    Weighted(RawWeighted),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeighted {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    sni: Option<String>,
    ca: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: Option<String>,
    #[serde(default)]
    tcp: bool,
    host: Option<String>,
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    consecutive_5xx: Option<u32>,
    consecutive_connect_failures: Option<u32>,
    base_ejection: Option<HumanDuration>,
    max_ejection: Option<HumanDuration>,
    max_ejected_percent: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    retries: Option<u32>,
    on: Option<Vec<RetryOn>>,
    per_try_timeout: Option<HumanDuration>,
    backoff: Option<HumanDuration>,
    max_backoff: Option<HumanDuration>,
    budget_percent: Option<u8>,
    min_retry_concurrency: Option<u32>,
    body_limit: Option<HumanSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCircuitBreaker {
    max_connections: Option<u32>,
    max_pending: Option<u32>,
    max_requests: Option<u32>,
}

/// How the gateway speaks HTTP to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default), over TLS when `tls` is set.
    #[default]
    #[serde(rename = "http1")]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`); needs `tls`.
    #[serde(rename = "h2")]
    H2,
    /// Cleartext HTTP/2 with prior knowledge; no `tls`.
    #[serde(rename = "h2c")]
    H2c,
    /// Over TLS, whatever ALPN picks: `h2` if the endpoint offers it, else
    /// HTTP/1.1; needs `tls`.
    #[serde(rename = "auto")]
    Auto,
}

/// How a cluster spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, in proportion to the weights (smooth weighted round robin).
    #[default]
    RoundRobin,
    /// The same as `round_robin` (which honours weights); accepted for
    /// those who name it.
    WeightedRoundRobin,
    /// Of two endpoints chosen at random, the one with fewer requests in
    /// flight relative to its weight (power of two choices).
    LeastRequest,
    /// A consistent hash ring over `hash_on`: a key sticks to an endpoint,
    /// and removing an endpoint moves only the keys it had.
    RingHash,
    /// Uniformly at random.
    Random,
}

/// What `ring_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client's address (as the forwarding rules determine it).
    ClientIp,
}

/// `[clusters.NAME.tls]`: TLS to the endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The server name sent (SNI) and verified; default: each endpoint's host.
    pub sni: Option<String>,
    /// PEM file of the roots trusted; default: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for endpoints that want mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// One configured endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// `host:port`; a host name is resolved (and re-resolved every
    /// `dns_refresh`), each address becoming an endpoint.
    pub authority: http::uri::Authority,
    /// Share of the traffic relative to the others (default 1).
    pub weight: u32,
}

/// `[clusters.NAME.health_check]`: active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `Some(path)`: `GET path` must answer 2xx or 3xx; `None`: a TCP
    /// connect must succeed.
    pub path: Option<String>,
    /// `Host` of HTTP checks (default: the endpoint's address).
    pub host: Option<String>,
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Successes in a row that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

/// `[clusters.NAME.outlier]`: passive ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// 5xx answers in a row that eject an endpoint (0: never).
    pub consecutive_5xx: u32,
    /// Connection failures (refused, reset, timed out) in a row that eject
    /// an endpoint (0: never).
    pub consecutive_connect_failures: u32,
    /// First ejection's length; the n-th in a row lasts n times as long.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most endpoints ejected at once, in percent (at least one may be).
    pub max_ejected_percent: u8,
}

/// When a failed try may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// No connection could be made (the request never left): any method.
    ConnectFailure,
    /// An HTTP/2 endpoint refused the stream (never processed): any method.
    RefusedStream,
    /// A 502, 503 or 504 answer: idempotent methods only.
    GatewayError,
    /// Any 5xx answer: idempotent methods only.
    #[serde(rename = "5xx")]
    FiveXx,
    /// The connection failed after the request was sent: idempotent only.
    Reset,
    /// No answer within `per_try_timeout`: idempotent only.
    PerTryTimeout,
}

/// `[clusters.NAME.retry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Tries after the first.
    pub retries: u32,
    /// What may be retried.
    pub on: Vec<RetryOn>,
    /// Time one try may take to answer (none: only the request timeout).
    pub per_try_timeout: Option<Duration>,
    /// First backoff; each retry doubles it (with full jitter) up to `max_backoff`.
    pub backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Retries in flight may be at most this percent of requests in flight…
    pub budget_percent: u8,
    /// …but this many are always allowed.
    pub min_retry_concurrency: u32,
    /// Request bodies up to this size are kept for a retry; a longer or
    /// unknown-length body is sent once.
    pub body_limit: usize,
}

/// `[clusters.NAME.circuit_breaker]`: limits past which requests fail fast
/// with `503 cluster_overloaded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Connections open to all endpoints together.
    pub max_connections: Option<usize>,
    /// Requests waiting for a connection when `max_connections` are open.
    pub max_pending: usize,
    /// Requests in flight to the cluster.
    pub max_requests: Option<usize>,
}

/// `[clusters.NAME]`: a group of upstream endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The endpoints, in config order.
    pub endpoints: Vec<EndpointConfig>,
    /// Time allowed to open a connection to one endpoint.
    pub connect_timeout: Duration,
    /// HTTP version spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints, if any.
    pub tls: Option<UpstreamTls>,
    /// Balancing algorithm.
    pub balance: Balance,
    /// What `ring_hash` hashes.
    pub hash_on: Option<HashOn>,
    /// Below this percentage of healthy endpoints, requests spread over all
    /// of them (0: never).
    pub panic_threshold: u8,
    /// Active health checks, if any.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection.
    pub outlier: Outlier,
    /// Retries.
    pub retry: Retry,
    /// Fail-fast limits.
    pub circuit_breaker: CircuitBreaker,
    /// How often host names among the endpoints are resolved again.
    pub dns_refresh: Duration,
}

impl ClusterConfig {
    /// A cluster of `endpoints` with every default.
    pub fn with_endpoints(endpoints: Vec<EndpointConfig>) -> ClusterConfig {
        ClusterConfig {
            endpoints,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            protocol: UpstreamProtocol::default(),
            tls: None,
            balance: Balance::default(),
            hash_on: None,
            panic_threshold: 50,
            health_check: None,
            outlier: Outlier {
                consecutive_5xx: 5,
                consecutive_connect_failures: 3,
                base_ejection: Duration::from_secs(30),
                max_ejection: Duration::from_secs(300),
                max_ejected_percent: 50,
            },
            retry: Retry {
                retries: 1,
                on: vec![
                    RetryOn::ConnectFailure,
                    RetryOn::RefusedStream,
                    RetryOn::Reset,
                ],
                per_try_timeout: None,
                backoff: Duration::from_millis(25),
                max_backoff: Duration::from_millis(250),
                budget_percent: 20,
                min_retry_concurrency: 10,
                body_limit: 64 << 10,
            },
            circuit_breaker: CircuitBreaker {
                max_connections: None,
                max_pending: 1024,
                max_requests: None,
            },
            dns_refresh: Duration::from_secs(30),
        }
    }
}

fn parse_endpoint(e: &str) -> Result<http::uri::Authority, String> {
    let a: http::uri::Authority = e
        .parse()
        .map_err(|_| format!("{e:?} is not \"host:port\""))?;
    if a.as_str().contains('@') {
        return Err(format!("{e:?}: user info is not allowed in an endpoint"));
    }
    if a.port_u16().is_none() {
        return Err(format!("{e:?} has no port; write \"host:port\""));
    }
    if a.host().is_empty() {
        return Err(format!("{e:?} has no host"));
    }
    Ok(a)
}

fn nonzero(
    key: &str,
    d: Option<HumanDuration>,
    default: Duration,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    match d {
        Some(HumanDuration(d)) if d.is_zero() => {
            errors.push(ConfigError::new(key, "must be more than 0"));
            default
        }
        Some(HumanDuration(d)) => d,
        None => default,
    }
}

fn percent(key: &str, p: Option<u8>, default: u8, errors: &mut Vec<ConfigError>) -> u8 {
    match p {
        Some(p) if p > 100 => {
            errors.push(ConfigError::new(
                key,
                format!("is a percentage (0 to 100), got {p}"),
            ));
            default
        }
        Some(p) => p,
        None => default,
    }
}

/// Validates every `[clusters.NAME]`, names included.
pub(crate) fn validate_all(
    raw: BTreeMap<String, RawCluster>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, ClusterConfig> {
    let mut clusters = BTreeMap::new();
    for (name, c) in raw {
        let key = format!("clusters.{name}");
        if !crate::is_valid_name(&name) {
            errors.push(ConfigError::new(
                &key,
                "cluster names use letters, digits, '-', '_' and '.' (at most 64)",
            ));
        }
        let cluster = validate(&key, c, base, errors);
        clusters.insert(name, cluster);
    }
    clusters
}

/// Validates `[clusters.NAME]`; problems go to `errors` with their key paths.
pub(crate) fn validate(
    key: &str,
    c: RawCluster,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> ClusterConfig {
    let mut out = ClusterConfig::with_endpoints(Vec::new());
    if c.endpoints.is_empty() {
        errors.push(ConfigError::new(
            format!("{key}.endpoints"),
            "must list at least one \"host:port\"",
        ));
    }
    for (i, e) in c.endpoints.into_iter().enumerate() {
        let (text, weight) = match e {
            RawEndpoint::Address(a) => (a, 1),
            RawEndpoint::Weighted(w) => (w.address, w.weight),
        };
        if !(1..=10_000).contains(&weight) {
            errors.push(ConfigError::new(
                format!("{key}.endpoints[{i}].weight"),
                format!("must be between 1 and 10000, got {weight}"),
            ));
        }
        match parse_endpoint(&text) {
            Ok(authority) => out.endpoints.push(EndpointConfig { authority, weight }),
            Err(m) => errors.push(ConfigError::new(format!("{key}.endpoints[{i}]"), m)),
        }
    }
    out.connect_timeout = nonzero(
        &format!("{key}.connect_timeout"),
        c.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
        errors,
    );
    out.protocol = c.protocol.unwrap_or_default();
    match (out.protocol, c.tls.is_some()) {
        (UpstreamProtocol::H2c, true) => errors.push(ConfigError::new(
            format!("{key}.protocol"),
            "\"h2c\" is cleartext HTTP/2; over TLS use \"h2\" or \"auto\"",
        )),
        (UpstreamProtocol::H2 | UpstreamProtocol::Auto, false) => errors.push(ConfigError::new(
            format!("{key}.protocol"),
            "\"h2\" and \"auto\" are negotiated with TLS (ALPN): add a [tls] table to the cluster, or use \"h2c\" for cleartext HTTP/2",
        )),
        _ => {}
    }
    out.tls = c.tls.map(|t| {
        if let Some(sni) = &t.sni
            && rustls::pki_types::ServerName::try_from(sni.as_str()).is_err()
        {
            errors.push(ConfigError::new(
                format!("{key}.tls.sni"),
                format!("{sni:?} is not a DNS name or IP address"),
            ));
        }
        let client_cert = match (t.client_cert, t.client_key) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            _ => {
                errors.push(ConfigError::new(
                    format!("{key}.tls"),
                    "give both client_cert and client_key, or neither",
                ));
                None
            }
        };
        UpstreamTls {
            sni: t.sni,
            ca: t.ca.map(|p| base.join(p)),
            client_cert,
        }
    });

    out.balance = c.balance.unwrap_or_default();
    out.hash_on = match c.hash_on.as_deref().map(parse_hash_on) {
        Some(Ok(h)) => Some(h),
        Some(Err(m)) => {
            errors.push(ConfigError::new(format!("{key}.hash_on"), m));
            None
        }
        None => None,
    };
    match (out.balance, c.hash_on.is_some()) {
        (Balance::RingHash, false) => errors.push(ConfigError::new(
            format!("{key}.hash_on"),
            "balance = \"ring_hash\" needs hash_on: \"header:NAME\", \"cookie:NAME\" or \"client_ip\"",
        )),
        (b, true) if b != Balance::RingHash => errors.push(ConfigError::new(
            format!("{key}.hash_on"),
            "is only used with balance = \"ring_hash\"",
        )),
        _ => {}
    }
    out.panic_threshold = percent(
        &format!("{key}.panic_threshold"),
        c.panic_threshold,
        50,
        errors,
    );

    out.health_check = c.health_check.map(|h| {
        let hk = format!("{key}.health_check");
        match (&h.path, h.tcp) {
            (Some(_), true) => errors.push(ConfigError::new(
                &hk,
                "give `path` (HTTP) or `tcp = true`, not both",
            )),
            (None, false) => errors.push(ConfigError::new(
                &hk,
                "give `path` (an HTTP GET that must answer 2xx/3xx) or `tcp = true` (a connect)",
            )),
            _ => {}
        }
        if let Some(p) = &h.path
            && !p.starts_with('/')
        {
            errors.push(ConfigError::new(
                format!("{hk}.path"),
                format!("{p:?} must start with '/'"),
            ));
        }
        let threshold = |name: &str, v: Option<u32>, errors: &mut Vec<ConfigError>| match v {
            Some(0) => {
                errors.push(ConfigError::new(
                    format!("{hk}.{name}"),
                    "must be at least 1",
                ));
                1
            }
            Some(n) => n,
            None => {
                if name == "healthy_threshold" {
                    2
                } else {
                    3
                }
            }
        };
        let healthy_threshold = threshold("healthy_threshold", h.healthy_threshold, errors);
        let unhealthy_threshold = threshold("unhealthy_threshold", h.unhealthy_threshold, errors);
        HealthCheck {
            path: h.path,
            host: h.host,
            interval: nonzero(
                &format!("{hk}.interval"),
                h.interval,
                Duration::from_secs(5),
                errors,
            ),
            timeout: nonzero(
                &format!("{hk}.timeout"),
                h.timeout,
                Duration::from_secs(1),
                errors,
            ),
            healthy_threshold,
            unhealthy_threshold,
        }
    });

    if let Some(o) = c.outlier {
        let ok = format!("{key}.outlier");
        let d = &mut out.outlier;
        d.consecutive_5xx = o.consecutive_5xx.unwrap_or(d.consecutive_5xx);
        d.consecutive_connect_failures = o
            .consecutive_connect_failures
            .unwrap_or(d.consecutive_connect_failures);
        d.base_ejection = nonzero(
            &format!("{ok}.base_ejection"),
            o.base_ejection,
            d.base_ejection,
            errors,
        );
        d.max_ejection = nonzero(
            &format!("{ok}.max_ejection"),
            o.max_ejection,
            d.max_ejection,
            errors,
        );
        if d.max_ejection < d.base_ejection {
            errors.push(ConfigError::new(
                format!("{ok}.max_ejection"),
                "must be at least base_ejection",
            ));
        }
        d.max_ejected_percent = percent(
            &format!("{ok}.max_ejected_percent"),
            o.max_ejected_percent,
            d.max_ejected_percent,
            errors,
        );
    }

    if let Some(r) = c.retry {
        let rk = format!("{key}.retry");
        let d = &mut out.retry;
        if let Some(n) = r.retries {
            if n > 10 {
                errors.push(ConfigError::new(
                    format!("{rk}.retries"),
                    format!("must be at most 10, got {n}"),
                ));
            }
            d.retries = n;
        }
        if let Some(on) = r.on {
            d.on = on;
        }
        d.per_try_timeout = match r.per_try_timeout {
            Some(HumanDuration(t)) if t.is_zero() => {
                errors.push(ConfigError::new(
                    format!("{rk}.per_try_timeout"),
                    "must be more than 0",
                ));
                None
            }
            Some(HumanDuration(t)) => Some(t),
            None => None,
        };
        d.backoff = r.backoff.map_or(d.backoff, |b| b.0);
        d.max_backoff = r.max_backoff.map_or(d.max_backoff.max(d.backoff), |b| b.0);
        if d.max_backoff < d.backoff {
            errors.push(ConfigError::new(
                format!("{rk}.max_backoff"),
                "must be at least backoff",
            ));
        }
        d.budget_percent = percent(
            &format!("{rk}.budget_percent"),
            r.budget_percent,
            d.budget_percent,
            errors,
        );
        d.min_retry_concurrency = r.min_retry_concurrency.unwrap_or(d.min_retry_concurrency);
        if let Some(HumanSize(n)) = r.body_limit {
            d.body_limit = usize::try_from(n).unwrap_or(usize::MAX);
        }
    }

    if let Some(cb) = c.circuit_breaker {
        let ck = format!("{key}.circuit_breaker");
        let positive = |name: &str, v: Option<u32>, errors: &mut Vec<ConfigError>| match v {
            Some(0) => {
                errors.push(ConfigError::new(
                    format!("{ck}.{name}"),
                    "must be at least 1",
                ));
                None
            }
            v => v.map(|n| n as usize),
        };
        out.circuit_breaker.max_connections =
            positive("max_connections", cb.max_connections, errors);
        out.circuit_breaker.max_requests = positive("max_requests", cb.max_requests, errors);
        if let Some(p) = cb.max_pending {
            out.circuit_breaker.max_pending = p as usize;
        }
    }
    out.dns_refresh = nonzero(
        &format!("{key}.dns_refresh"),
        c.dns_refresh,
        out.dns_refresh,
        errors,
    );
    out
}

fn parse_hash_on(s: &str) -> Result<HashOn, String> {
    if s == "client_ip" {
        return Ok(HashOn::ClientIp);
    }
    if let Some(h) = s.strip_prefix("header:") {
        return http::HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
            .map(HashOn::Header)
            .map_err(|_| format!("{h:?} is not a header name"));
    }
    if let Some(c) = s.strip_prefix("cookie:") {
        let c = c.trim();
        if c.is_empty() || c.contains([';', '=', ' ']) {
            return Err(format!("{c:?} is not a cookie name"));
        }
        return Ok(HashOn::Cookie(c.to_owned()));
    }
    Err(format!(
        "{s:?}: write \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
    ))
}
