//! `[filters.NAME]`: a filter module, its limits, and what it may use (its
//! `config` values, `kv` quota and outbound calls), as written
//! (`RawFilter`), validated and typed (`FilterConfig`).
//!
//! A filter's limits are checked against `[engine]`'s (its memory against
//! `engine.max_memory`, its CPU budget against `engine.epoch_tick`), so the
//! engine is validated first; whether its `outbound_clusters` exist is
//! checked by the caller, which knows the clusters.
//!
//! Its `vars` may be secrets: validation records where each comes from (see
//! [`crate::secret`]), and [`crate::Config::read_secrets`] reads the
//! environment variables and files among them, as a step of its own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::EngineConfig;
use crate::secret::{SecretSetting, SecretSource};
use crate::{ConfigError, HumanDuration, HumanSize};

/// Default memory limit of one filter instance.
/// Default `cache_bytes` of a filter: what its `cache` entries may take.
pub const DEFAULT_FILTER_CACHE_BYTES: u64 = 1 << 20;
pub const DEFAULT_FILTER_MEMORY: u64 = 64 << 20;
/// Default CPU budget of one filter call.
pub const DEFAULT_FILTER_CPU: Duration = Duration::from_millis(50);
/// Default number of instances per (route, filter) pool.
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// Default number of calls an instance serves before it is replaced.
pub const DEFAULT_MAX_USES: u64 = 10_000;
/// Default wait for a free instance.
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_millis(100);
/// Default outbound calls a filter may make per request.
pub const DEFAULT_OUTBOUND_CALLS: u32 = 8;
/// Default `log_lines_per_second` (the engine's `DEFAULT_LOG_RATE`).
pub const DEFAULT_LOG_LINES_PER_SECOND: u32 = 100;
/// Default `rate_limit_keys` (the engine's `DEFAULT_RATE_LIMIT_KEYS`).
pub const DEFAULT_RATE_LIMIT_KEYS: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilter {
    path: String,
    memory_limit: Option<HumanSize>,
    cpu_limit: Option<HumanDuration>,
    isolation: Option<Isolation>,
    pool_size: Option<u32>,
    max_uses: Option<u64>,
    recycle_memory: Option<HumanSize>,
    pool_timeout: Option<HumanDuration>,
    wall_limit: Option<HumanDuration>,
    failure_policy: Option<FailurePolicy>,
    quarantine_after: Option<u32>,
    kv_quota: Option<HumanSize>,
    cache_bytes: Option<HumanSize>,
    #[serde(default)]
    vars: BTreeMap<String, RawVar>,
    outbound_clusters: Option<Vec<String>>,
    reroute_clusters: Option<Vec<String>>,
    max_outbound_calls: Option<u32>,
    log_lines_per_second: Option<u32>,
    rate_limit_keys: Option<usize>,
    read_request_headers: Option<Vec<String>>,
    write_request_headers: Option<Vec<String>>,
    read_response_headers: Option<Vec<String>>,
    write_response_headers: Option<Vec<String>>,
    outbound_timeout: Option<HumanDuration>,
}

/// A `config` value for a filter: a literal, an environment variable, or a
/// file's contents.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawVar {
    Literal(String),
    From(RawVarSource),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVarSource {
    env: Option<String>,
    file: Option<String>,
}

/// How a filter's instances are shared between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Instances are reused, one request at a time each (the default).
    #[default]
    Pooled,
    /// A new instance for every call: no state survives a request.
    Fresh,
}

/// `[filters.NAME]`: a filter module and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// The module file, resolved against the config file's folder.
    pub path: PathBuf,
    /// Linear memory one instance may grow to.
    pub memory_limit: u64,
    /// CPU time one call (`init`, `on-request`, `on-response`) may take.
    pub cpu_limit: Duration,
    /// Pooled (default) or a fresh instance per call.
    pub isolation: Isolation,
    /// Most instances per (route, filter) pool.
    pub pool_size: u32,
    /// Calls an instance serves before it is replaced.
    pub max_uses: u64,
    /// An instance whose memory grew past this is replaced after its call.
    pub recycle_memory: u64,
    /// How long a call waits for a free instance before failing with 503.
    pub pool_timeout: Duration,
    /// Wall-clock time one call may take, host calls included.
    pub wall_limit: Duration,
    /// What a failure of this filter does to the request.
    pub failure_policy: FailurePolicy,
    /// Failures in a row that quarantine the filter (0: never).
    pub quarantine_after: u32,
    /// Largest total size of its `kv` entries.
    pub kv_quota: usize,
    /// Largest total size of its entries in the response cache (`cache`
    /// import); 0: no cache.
    pub cache_bytes: u64,
    /// Values its `config.get` returns: where each comes from and, once
    /// [`crate::Config::read_secrets`] has run, the value.
    pub vars: BTreeMap<String, SecretSetting>,
    /// Clusters its `outbound` calls may name (`None` or empty: none;
    /// `["*"]`: every cluster in the config).
    pub outbound_clusters: Option<Vec<String>>,
    /// Clusters a request edit may send its route's traffic to (`None` or
    /// empty: none, the default; `["*"]`: every cluster in the config).
    pub reroute_clusters: Option<Vec<String>>,
    /// Outbound calls per request.
    pub max_outbound_calls: u32,
    /// Log lines (the `log` import, stdout and stderr) per second, shared
    /// by every route and instance of the filter; past it lines are
    /// dropped and counted. 0 drops every line.
    pub log_lines_per_second: u32,
    /// Rate-limit buckets (keys) the filter may hold at once; past it a new
    /// key is refused (`allowed: false`) until the sweep frees some.
    pub rate_limit_keys: usize,
    /// Request headers it may read (`None`: all; names lower case, a
    /// trailing `*` matches a prefix).
    pub read_request_headers: Option<Vec<String>>,
    /// Request headers it may set or remove (`None`: all but framing).
    pub write_request_headers: Option<Vec<String>>,
    /// Response headers it may read.
    pub read_response_headers: Option<Vec<String>>,
    /// Response headers it may set or remove.
    pub write_response_headers: Option<Vec<String>>,
    /// Longest wait per outbound call.
    pub outbound_timeout: Duration,
}

/// What a filter's failure does to the request it was serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The request fails with a 5xx in the standard error format.
    #[default]
    FailClosed,
    /// The filter is skipped (logged and counted) and the request goes on.
    FailOpen,
}

/// Validates `[filters.NAME]`; problems go to `errors` with their key paths.
pub(crate) fn validate(
    name: &str,
    f: RawFilter,
    engine: &EngineConfig,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> FilterConfig {
    let key = format!("filters.{name}");
    if !crate::is_valid_name(name) {
        errors.push(ConfigError::new(
            &key,
            "filter names use letters, digits, '-', '_' and '.' (at most 64)",
        ));
    }
    let memory_limit = f
        .memory_limit
        .map_or(DEFAULT_FILTER_MEMORY.min(engine.max_memory), |s| s.0);
    if memory_limit < 64 << 10 {
        errors.push(ConfigError::new(
            format!("{key}.memory_limit"),
            "must be at least 64KiB (one WebAssembly page)",
        ));
    } else if memory_limit > engine.max_memory {
        errors.push(ConfigError::new(
            format!("{key}.memory_limit"),
            format!(
                "{memory_limit} bytes is more than engine.max_memory ({} bytes)",
                engine.max_memory
            ),
        ));
    }
    let cpu_limit = f.cpu_limit.map_or(DEFAULT_FILTER_CPU, |d| d.0);
    if cpu_limit < engine.epoch_tick {
        errors.push(ConfigError::new(
            format!("{key}.cpu_limit"),
            format!(
                "must be at least engine.epoch_tick ({:?})",
                engine.epoch_tick
            ),
        ));
    }
    if f.path.trim().is_empty() {
        errors.push(ConfigError::new(
            format!("{key}.path"),
            "must name a .wasm file",
        ));
    }
    let pool_size = f.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    if pool_size == 0 {
        errors.push(ConfigError::new(
            format!("{key}.pool_size"),
            "must be at least 1",
        ));
    }
    let max_uses = f.max_uses.unwrap_or(DEFAULT_MAX_USES);
    if max_uses == 0 {
        errors.push(ConfigError::new(
            format!("{key}.max_uses"),
            "must be at least 1",
        ));
    }
    let recycle_memory = f.recycle_memory.map_or(memory_limit / 2, |s| s.0);
    if recycle_memory > memory_limit {
        errors.push(ConfigError::new(
            format!("{key}.recycle_memory"),
            format!("{recycle_memory} bytes is more than memory_limit ({memory_limit} bytes)"),
        ));
    }
    // Only where each value comes from: reading them is a step of its own
    // (`Config::read_secrets`).
    let mut vars = BTreeMap::new();
    for (var, source) in &f.vars {
        let setting = match source {
            RawVar::Literal(v) => SecretSetting::literal(v.clone()),
            RawVar::From(RawVarSource {
                env: Some(e),
                file: None,
            }) => SecretSetting::unread(SecretSource::Env(e.clone())),
            RawVar::From(RawVarSource {
                env: None,
                file: Some(path),
            }) => SecretSetting::unread(SecretSource::File(base.join(path))),
            RawVar::From(_) => {
                errors.push(ConfigError::new(
                    format!("{key}.vars.{var}"),
                    "give a string, { env = \"NAME\" } or { file = \"path\" }",
                ));
                continue;
            }
        };
        vars.insert(var.clone(), setting);
    }
    // Default: room for the CPU budget plus waiting on the host.
    let wall_limit = f
        .wall_limit
        .map_or((cpu_limit * 10).max(Duration::from_secs(1)), |d| d.0);
    if wall_limit < cpu_limit {
        errors.push(ConfigError::new(
            format!("{key}.wall_limit"),
            format!("{wall_limit:?} is less than cpu_limit ({cpu_limit:?})"),
        ));
    }
    // A call cannot outlive the wall-clock limit anyway.
    let outbound_timeout = f.outbound_timeout.map_or(wall_limit, |d| d.0);
    if outbound_timeout > wall_limit {
        errors.push(ConfigError::new(
            format!("{key}.outbound_timeout"),
            format!(
                "{outbound_timeout:?} is more than wall_limit ({wall_limit:?}), which \
                 would cut every call that long off first"
            ),
        ));
    }
    if outbound_timeout.is_zero() {
        errors.push(ConfigError::new(
            format!("{key}.outbound_timeout"),
            "must be more than 0",
        ));
    }
    if f.rate_limit_keys == Some(0) {
        errors.push(ConfigError::new(
            format!("{key}.rate_limit_keys"),
            "must be more than 0",
        ));
    }
    for (field, grants) in [
        ("outbound_clusters", &f.outbound_clusters),
        ("reroute_clusters", &f.reroute_clusters),
    ] {
        let grants = grants.as_deref().unwrap_or_default();
        if grants.len() > 1 && grants.iter().any(|c| c == "*") {
            errors.push(ConfigError::new(
                format!("{key}.{field}"),
                "\"*\" (every cluster) must be the only entry",
            ));
        }
    }
    let path = base.join(&f.path);
    FilterConfig {
        path,
        memory_limit,
        cpu_limit,
        isolation: f.isolation.unwrap_or_default(),
        pool_size,
        max_uses,
        recycle_memory,
        pool_timeout: f.pool_timeout.map_or(DEFAULT_POOL_TIMEOUT, |d| d.0),
        wall_limit,
        failure_policy: f.failure_policy.unwrap_or_default(),
        quarantine_after: f.quarantine_after.unwrap_or(5),
        kv_quota: f
            .kv_quota
            .map_or(16 << 20, |q| usize::try_from(q.0).unwrap_or(usize::MAX)),
        cache_bytes: f.cache_bytes.map_or(DEFAULT_FILTER_CACHE_BYTES, |q| q.0),
        vars,
        outbound_clusters: f.outbound_clusters,
        reroute_clusters: f.reroute_clusters,
        max_outbound_calls: f.max_outbound_calls.unwrap_or(DEFAULT_OUTBOUND_CALLS),
        log_lines_per_second: f
            .log_lines_per_second
            .unwrap_or(DEFAULT_LOG_LINES_PER_SECOND),
        rate_limit_keys: f.rate_limit_keys.unwrap_or(DEFAULT_RATE_LIMIT_KEYS),
        read_request_headers: header_list(
            &key,
            "read_request_headers",
            f.read_request_headers,
            errors,
        ),
        write_request_headers: header_list(
            &key,
            "write_request_headers",
            f.write_request_headers,
            errors,
        ),
        read_response_headers: header_list(
            &key,
            "read_response_headers",
            f.read_response_headers,
            errors,
        ),
        write_response_headers: header_list(
            &key,
            "write_response_headers",
            f.write_response_headers,
            errors,
        ),
        outbound_timeout,
    }
}

/// A list of header names (a trailing `*` matches a prefix), lower-cased;
/// problems go to `errors` under `key.field[i]`.
fn header_list(
    key: &str,
    field: &str,
    list: Option<Vec<String>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<String>> {
    let list = list?;
    let mut out = Vec::with_capacity(list.len());
    for (i, h) in list.into_iter().enumerate() {
        let name = h.strip_suffix('*').unwrap_or(&h);
        let valid = if h.ends_with('*') {
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'+^`|~".contains(&b))
        } else {
            http::HeaderName::from_bytes(name.as_bytes()).is_ok()
        };
        if valid {
            out.push(h.to_ascii_lowercase());
        } else {
            errors.push(ConfigError::new(
                format!("{key}.{field}[{i}]"),
                format!("{h:?} is not a header name (or a prefix ending in `*`)"),
            ));
        }
    }
    Some(out)
}

/// Reads the `vars` of the filter at `key` that come from the environment
/// or a file; problems go to `errors` with their key paths.
pub(crate) fn read_secrets(key: &str, f: &mut FilterConfig, errors: &mut Vec<ConfigError>) {
    for (var, setting) in &mut f.vars {
        if let Err(m) = setting.read() {
            errors.push(ConfigError::new(format!("{key}.vars.{var}"), m));
        }
    }
}

/// A filter's settings written without a `path` (the `[filter]` table of
/// an offline test file, for `wasmgate filter test`): the keys of
/// `[filters.NAME]`, validated as the gateway validates them (against the
/// default `[engine]`) with `module` as the path, and their `vars` read.
/// Errors name their keys under `key` (`filter.cpu_limit`, say).
pub fn settings_without_path(
    key: &str,
    mut table: toml::Table,
    module: &Path,
    base: &Path,
) -> Result<FilterConfig, Vec<ConfigError>> {
    if table.contains_key("path") {
        return Err(vec![ConfigError::new(
            format!("{key}.path"),
            "the module is the one given on the command line; leave path out",
        )]);
    }
    table.insert(
        "path".into(),
        toml::Value::String(module.display().to_string()),
    );
    let raw: RawFilter =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let at = e.path().to_string();
            let path = if at == "." || at.is_empty() {
                key.to_owned()
            } else {
                format!("{key}.{at}")
            };
            vec![ConfigError::new(path, e.into_inner().to_string())]
        })?;
    let mut errors = Vec::new();
    let name = "filter";
    let mut f = validate(name, raw, &EngineConfig::default(), base, &mut errors);
    read_secrets(&format!("filters.{name}"), &mut f, &mut errors);
    if errors.is_empty() {
        return Ok(f);
    }
    let prefix = format!("filters.{name}");
    Err(errors
        .into_iter()
        .map(|e| ConfigError {
            path: e.path.replacen(&prefix, key, 1),
            message: e.message,
        })
        .collect())
}

/// Validates every `[filters.NAME]`, and that no two of them would export
/// metrics under one name.
pub(crate) fn validate_all(
    raw: BTreeMap<String, RawFilter>,
    engine: &EngineConfig,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, FilterConfig> {
    let filters: BTreeMap<String, FilterConfig> = raw
        .into_iter()
        .map(|(name, f)| {
            let filter = validate(&name, f, engine, base, errors);
            (name, filter)
        })
        .collect();
    let mut prefixes: HashMap<String, &str> = HashMap::new();
    for name in filters.keys() {
        // Metric names are prefixed by the filter's name with '-' and '.'
        // as '_': two filters must not end up with one prefix.
        if let Some(other) = prefixes.insert(crate::metric_prefix(name), name) {
            errors.push(ConfigError::new(
                format!("filters.{name}"),
                format!(
                    "its metrics would be named like those of filters.{other} \
                     ('-' and '.' read as '_'); rename one of them"
                ),
            ));
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> EngineConfig {
        EngineConfig {
            max_instances: 64,
            max_memory: 32 << 20,
            epoch_tick: Duration::from_millis(5),
            cache_dir: None,
        }
    }

    fn check(text: &str) -> (FilterConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let raw = toml::from_str(text).unwrap();
        let f = validate("f", raw, &engine(), Path::new("/srv"), &mut errors);
        (f, errors)
    }

    fn messages(errors: &[ConfigError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_follow_the_engine() {
        let (f, errors) = check("path = \"f.wasm\"");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(f.path, Path::new("/srv/f.wasm"));
        // The default memory limit is capped by the engine's.
        assert_eq!(f.memory_limit, 32 << 20);
        assert_eq!(f.recycle_memory, 16 << 20);
        assert_eq!(f.cpu_limit, DEFAULT_FILTER_CPU);
        assert_eq!(f.wall_limit, Duration::from_secs(1));
        assert_eq!(f.outbound_timeout, f.wall_limit);
        assert_eq!(f.isolation, Isolation::Pooled);
        assert_eq!(f.failure_policy, FailurePolicy::FailClosed);
        assert_eq!(
            (f.pool_size, f.max_uses, f.quarantine_after, f.kv_quota),
            (DEFAULT_POOL_SIZE, DEFAULT_MAX_USES, 5, 16 << 20)
        );
        assert_eq!(f.pool_timeout, DEFAULT_POOL_TIMEOUT);
        assert_eq!(f.max_outbound_calls, DEFAULT_OUTBOUND_CALLS);
        assert_eq!(f.log_lines_per_second, DEFAULT_LOG_LINES_PER_SECOND);
        assert_eq!(f.rate_limit_keys, DEFAULT_RATE_LIMIT_KEYS);
        assert_eq!(f.outbound_clusters, None);
    }

    #[test]
    fn limits_are_checked_against_each_other_and_the_engine() {
        let (_, errors) = check(
            "path = \" \"\nmemory_limit = \"64MiB\"\ncpu_limit = \"1ms\"\npool_size = 0\n\
             max_uses = 0\nwall_limit = \"1s\"\noutbound_timeout = \"2s\"\n",
        );
        assert_eq!(
            messages(&errors),
            [
                "filters.f.memory_limit: 67108864 bytes is more than engine.max_memory (33554432 bytes)",
                "filters.f.cpu_limit: must be at least engine.epoch_tick (5ms)",
                "filters.f.path: must name a .wasm file",
                "filters.f.pool_size: must be at least 1",
                "filters.f.max_uses: must be at least 1",
                "filters.f.outbound_timeout: 2s is more than wall_limit (1s), which would cut \
                 every call that long off first",
            ]
        );
        let (_, errors) = check(
            "path = \"f.wasm\"\nmemory_limit = 1024\nrecycle_memory = \"1MiB\"\n\
             cpu_limit = \"2s\"\nwall_limit = \"1s\"\noutbound_timeout = \"0s\"\n",
        );
        assert_eq!(
            messages(&errors),
            [
                "filters.f.memory_limit: must be at least 64KiB (one WebAssembly page)",
                "filters.f.recycle_memory: 1048576 bytes is more than memory_limit (1024 bytes)",
                "filters.f.wall_limit: 1s is less than cpu_limit (2s)",
                "filters.f.outbound_timeout: must be more than 0",
            ]
        );
    }

    #[test]
    fn every_cluster_is_the_only_grant() {
        let (f, errors) = check("path = \"f.wasm\"\noutbound_clusters = [\"*\"]");
        assert!(errors.is_empty());
        assert_eq!(f.outbound_clusters, Some(vec!["*".to_owned()]));
        let (_, errors) = check("path = \"f.wasm\"\noutbound_clusters = [\"*\", \"a\"]");
        assert_eq!(
            messages(&errors),
            ["filters.f.outbound_clusters: \"*\" (every cluster) must be the only entry"]
        );
    }

    #[test]
    fn names_must_be_plain_and_their_metric_prefixes_distinct() {
        let raw: BTreeMap<String, RawFilter> = toml::from_str(
            "[a-b]\npath = \"x.wasm\"\n[a_b]\npath = \"y.wasm\"\n[\"no way\"]\npath = \"z.wasm\"\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        let filters = validate_all(raw, &engine(), Path::new("/"), &mut errors);
        assert_eq!(filters.len(), 3);
        assert_eq!(
            messages(&errors),
            [
                "filters.no way: filter names use letters, digits, '-', '_' and '.' (at most 64)",
                "filters.a_b: its metrics would be named like those of filters.a-b \
                 ('-' and '.' read as '_'); rename one of them",
            ]
        );
    }
}
