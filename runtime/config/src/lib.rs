//! The gateway configuration: TOML parsed into raw serde structs (unknown keys
//! rejected), then validated into the typed [`Config`] the runtime uses.
//!
//! Every problem is reported with the key path that caused it, e.g.
//! `routes[1].cluster: unknown cluster "serch" (defined: cart, search)`, and
//! validation reports all problems it finds, not just the first. The schema is
//! documented in `docs/config.md`.
//!
//! Loading filters (reading and compiling the `.wasm` files, running each
//! route's `init`) is the filter engine's job, so those errors come from the
//! control plane's build; they use the same [`ConfigError`] shape.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod access_log;
pub mod cluster;
pub mod forwarding;
pub mod limits;
pub mod overload;
pub mod route_config;
pub mod server;
pub mod tls;
pub mod watch;

pub use crate::cluster::{
    Balance, ClusterConfig, EndpointConfig, HashOn, RetryOn, UpstreamProtocol, UpstreamTls,
};
pub use crate::limits::LimitsConfig;
pub use crate::server::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_LISTEN, MAX_DRAIN_TIMEOUT, ServerConfig};
pub use crate::watch::{DEFAULT_WATCH_DEBOUNCE, WatchConfig};

/// One problem in a config, with the key path that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `routes[0].filters[1].name`; empty for the file.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file the errors are about (or `<inline>`).
    pub source: String,
    /// At least one error.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {} error{} in config",
            self.source,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------
// Human-friendly value types.

/// A duration written as `"50ms"`, `"5s"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. \"50ms\" or \"5s\""
                ))
            })
    }
}

/// A size written as `"64MiB"`, `"512KiB"`, `"1GB"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(HumanSize(n)),
            Raw::Text(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| HumanSize(b.as_u64()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "invalid size {s:?} ({e}); write e.g. \"64MiB\""
                    ))
                }),
        }
    }
}

// ---------------------------------------------------------------------------
// Raw (as written) config.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: crate::server::RawServer,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    filters: BTreeMap<String, RawFilter>,
    #[serde(default)]
    clusters: BTreeMap<String, crate::cluster::RawCluster>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    admin: Option<RawAdmin>,
    access_log: Option<crate::access_log::RawAccessLog>,
    #[serde(default)]
    limits: crate::limits::RawLimits,
    overload: Option<crate::overload::RawOverload>,
    #[serde(default)]
    watch: crate::watch::RawWatch,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
    #[serde(default)]
    protect_metrics: bool,
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    compile_cache: Option<bool>,
    cache_dir: Option<String>,
    max_instances: Option<u32>,
    max_memory: Option<HumanSize>,
    epoch_tick: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
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
    #[serde(default)]
    vars: BTreeMap<String, RawVar>,
    outbound_clusters: Option<Vec<String>>,
    max_outbound_calls: Option<u32>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<crate::route_config::RawMatch>,
    #[serde(default)]
    query: Vec<crate::route_config::RawMatch>,
    cluster: Option<String>,
    clusters: Option<Vec<crate::route_config::RawWeightedCluster>>,
    redirect: Option<crate::route_config::RawRedirect>,
    respond: Option<crate::route_config::RawRespond>,
    prefix_rewrite: Option<String>,
    timeout: Option<HumanDuration>,
    #[serde(default)]
    filters: Vec<RawRouteFilter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteFilter {
    name: String,
    #[serde(default)]
    config: Option<toml::Table>,
}

// ---------------------------------------------------------------------------
// Validated config.

/// Default number of filter instances that may exist at once (pooling slots).
pub const DEFAULT_MAX_INSTANCES: u32 = 256;
/// Default upper bound of any filter's memory (the pooling slot size).
pub const DEFAULT_MAX_MEMORY: u64 = 256 << 20;
/// Default interval of the epoch ticker that enforces CPU budgets.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(5);
/// Default memory limit of one filter instance.
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
/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: String,
    /// The text it was parsed from (what the management API shows).
    pub text: String,
    /// The folder relative paths in it are resolved against.
    pub base: std::path::PathBuf,
    /// The proxy listener.
    pub server: ServerConfig,
    /// The filter engine.
    pub engine: EngineConfig,
    /// Filter modules by name.
    pub filters: BTreeMap<String, FilterConfig>,
    /// Upstream clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Routes in config order.
    pub routes: Vec<RouteConfig>,
    /// The admin listener, if configured.
    pub admin: Option<AdminConfig>,
    /// Where access log lines go; `None` = off.
    pub access_log: Option<crate::access_log::AccessLogTarget>,
    /// Request and connection limits.
    pub limits: LimitsConfig,
    /// The gateway-wide overload guard.
    pub overload: crate::overload::OverloadConfig,
    /// Reloading when the config file or a module file changes.
    pub watch: WatchConfig,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Its address (loopback by default).
    pub listen: SocketAddr,
    /// The bearer token protecting it, if any.
    pub token: Option<String>,
    /// Whether `/metrics` needs the token too.
    pub protect_metrics: bool,
    /// Where changes made through the API are kept across restarts.
    pub data_dir: Option<std::path::PathBuf>,
}

/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// `[engine]`: settings of the one wasmtime engine all filters share.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Filter instances that can exist at once; more concurrent calls fail fast.
    pub max_instances: u32,
    /// The largest memory any filter may be given (pooling slot size).
    pub max_memory: u64,
    /// Epoch ticker interval: the granularity of CPU budgets.
    pub epoch_tick: Duration,
    /// Folder of the compiled-component cache; `None` = no cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_instances: DEFAULT_MAX_INSTANCES,
            max_memory: DEFAULT_MAX_MEMORY,
            epoch_tick: DEFAULT_EPOCH_TICK,
            cache_dir: default_cache_dir(),
        }
    }
}

/// Set by [`set_default_cache_dir`].
static DEFAULT_CACHE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes `dir` the compile cache of every config this process reads later
/// without an `engine.cache_dir`, in place of the user's cache folder: for a
/// program that embeds the gateway, and for tests, whose results must not
/// depend on what earlier runs left in the user's cache. Only the first call
/// counts; returns whether it was this one.
pub fn set_default_cache_dir(dir: PathBuf) -> bool {
    DEFAULT_CACHE_DIR.set(dir).is_ok()
}

/// The folder set by [`set_default_cache_dir`], else
/// `$XDG_CACHE_HOME/wasmgate`, else `$HOME/.cache/wasmgate`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = DEFAULT_CACHE_DIR.get() {
        return Some(dir.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("wasmgate"))
}

/// `[filters.NAME]`: a filter module and its limits.
#[derive(Debug, Clone)]
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
    /// Values its `config.get` returns, resolved at load.
    pub vars: BTreeMap<String, String>,
    /// Clusters its `outbound` calls may name (`None` or empty: none;
    /// `["*"]`: every cluster in the config).
    pub outbound_clusters: Option<Vec<String>>,
    /// Outbound calls per request.
    pub max_outbound_calls: u32,
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

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with these whole segments (`/api` matches `/api` and
    /// `/api/x`, not `/apix`). Stored without a trailing slash; `/` is empty.
    Prefix(String),
    /// The whole path matches this regular expression.
    Regex(crate::route_config::FullRegex),
}

/// `[[routes]]`
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique name, used in logs, metrics and filter metadata.
    pub name: String,
    /// Host patterns (lower-case; `*.example.com` wildcards); empty = any host.
    pub hosts: Vec<String>,
    /// Path match.
    pub path: PathMatch,
    /// Methods (upper-case); empty = any method.
    pub methods: Vec<http::Method>,
    /// Header and query conditions, all of which must hold.
    pub matchers: Vec<crate::route_config::Matcher>,
    /// What the route does: a cluster, a split, a redirect, a response.
    pub action: crate::route_config::Action,
    /// Replaces the matched `path_prefix` when forwarding.
    pub prefix_rewrite: Option<String>,
    /// Time the upstream part (every try) may take; 504 past it.
    pub timeout: Option<Duration>,
    /// The filter chain, in request order.
    pub filters: Vec<RouteFilter>,
    /// Position in the config, which breaks ties between equal matches.
    pub order: usize,
}

/// One filter in a route's chain.
#[derive(Debug, Clone)]
pub struct RouteFilter {
    /// Name of a `[filters.NAME]` entry.
    pub name: String,
    /// The route's config for it, as the JSON text handed to `init`.
    pub config_json: String,
}

impl Config {
    /// Reads and validates a config file. Relative filter paths are resolved
    /// against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigError::new(
                "",
                format!("cannot read the config file: {e}"),
            )],
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&text, &source, &base)
    }

    /// Parses and validates config text. `base` is the folder relative filter
    /// paths are resolved against.
    pub fn parse(text: &str, source: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source: source.to_owned(),
            errors,
        };
        let raw = parse_raw(text).map_err(|e| fail(vec![e]))?;
        let mut config = validate(raw, source, base).map_err(fail)?;
        config.text = text.to_owned();
        Ok(config)
    }
}

fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error("", &e, text))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        toml_error(&path, e.inner(), text)
    })
}

fn toml_error(path: &str, e: &toml::de::Error, text: &str) -> ConfigError {
    let location = e
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" (line {line}, column {column})")
        })
        .unwrap_or_default();
    ConfigError::new(path, format!("{}{location}", e.message().trim_end()))
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn validate(raw: RawConfig, source: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();

    let server = crate::server::validate(raw.server, base, &mut errors);
    let watch = crate::watch::validate(raw.watch, &mut errors);
    let admin = raw.admin.map(|a| {
        let text = a.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let listen = text.parse::<SocketAddr>().unwrap_or_else(|e| {
            errors.push(ConfigError::new(
                "admin.listen",
                format!("{text:?} is not an address ({e})"),
            ));
            SocketAddr::from(([127, 0, 0, 1], 9901))
        });
        let token = match (a.token, a.token_env) {
            (Some(_), Some(_)) => {
                errors.push(ConfigError::new("admin", "give `token` or `token_env`, not both"));
                None
            }
            (Some(t), None) => Some(t),
            (None, Some(var)) => match std::env::var(&var) {
                Ok(t) => Some(t),
                Err(_) => {
                    errors.push(ConfigError::new(
                        "admin.token_env",
                        format!("the environment variable {var} is not set"),
                    ));
                    None
                }
            },
            (None, None) => None,
        };
        if token.as_deref().is_some_and(|t| t.len() < 16) {
            errors.push(ConfigError::new("admin.token", "must be at least 16 characters"));
        }
        if token.is_none() && !listen.ip().is_loopback() {
            errors.push(ConfigError::new(
                "admin.listen",
                format!("{listen} is not a loopback address; refusing to expose the admin API without a token (set admin.token or admin.token_env)"),
            ));
        }
        AdminConfig {
            listen,
            token,
            protect_metrics: a.protect_metrics,
            data_dir: a.data_dir.as_ref().map(|d| base.join(d)),
        }
    });
    let limits = crate::limits::validate(raw.limits, &mut errors);
    let overload = crate::overload::validate(raw.overload, &mut errors);
    let access_log = crate::access_log::validate(raw.access_log, base, &mut errors);
    let mut engine = EngineConfig::default();
    match (raw.engine.compile_cache, raw.engine.cache_dir) {
        (Some(false), Some(_)) => errors.push(ConfigError::new(
            "engine.cache_dir",
            "is set but engine.compile_cache is false",
        )),
        (Some(false), None) => engine.cache_dir = None,
        (_, Some(dir)) => engine.cache_dir = Some(base.join(dir)),
        (_, None) => {}
    }
    if let Some(n) = raw.engine.max_instances {
        if n == 0 || n > 100_000 {
            errors.push(ConfigError::new(
                "engine.max_instances",
                format!("must be between 1 and 100000, got {n}"),
            ));
        } else {
            engine.max_instances = n;
        }
    }
    if let Some(HumanSize(n)) = raw.engine.max_memory {
        if !(64 << 10..=4 << 30).contains(&n) {
            errors.push(ConfigError::new(
                "engine.max_memory",
                format!("must be between 64KiB and 4GiB, got {n} bytes"),
            ));
        } else {
            engine.max_memory = n;
        }
    }
    if let Some(HumanDuration(d)) = raw.engine.epoch_tick {
        if d < Duration::from_millis(1) || d > Duration::from_secs(1) {
            errors.push(ConfigError::new(
                "engine.epoch_tick",
                "must be between 1ms and 1s",
            ));
        } else {
            engine.epoch_tick = d;
        }
    }

    let mut filters = BTreeMap::new();
    for (name, f) in raw.filters {
        let key = format!("filters.{name}");
        if !is_valid_name(&name) {
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
        let mut vars = BTreeMap::new();
        for (var, source) in &f.vars {
            let vkey = format!("{key}.vars.{var}");
            let value = match source {
                RawVar::Literal(v) => Some(v.clone()),
                RawVar::From(RawVarSource {
                    env: Some(e),
                    file: None,
                }) => match std::env::var(e) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        errors.push(ConfigError::new(
                            &vkey,
                            format!("the environment variable {e} is not set"),
                        ));
                        None
                    }
                },
                RawVar::From(RawVarSource {
                    env: None,
                    file: Some(path),
                }) => {
                    let p = base.join(path);
                    match std::fs::read_to_string(&p) {
                        // Secrets files usually end in a newline that is not
                        // part of the secret.
                        Ok(v) => Some(
                            v.strip_suffix('\n')
                                .map_or(v.as_str(), |v| v.strip_suffix('\r').unwrap_or(v))
                                .to_owned(),
                        ),
                        Err(e) => {
                            errors.push(ConfigError::new(
                                &vkey,
                                format!("cannot read {}: {e}", p.display()),
                            ));
                            None
                        }
                    }
                }
                RawVar::From(_) => {
                    errors.push(ConfigError::new(
                        &vkey,
                        "give a string, { env = \"NAME\" } or { file = \"path\" }",
                    ));
                    None
                }
            };
            if let Some(v) = value {
                vars.insert(var.clone(), v);
            }
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
        let path = base.join(&f.path);
        filters.insert(
            name,
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
                vars,
                outbound_clusters: f.outbound_clusters,
                max_outbound_calls: f.max_outbound_calls.unwrap_or(DEFAULT_OUTBOUND_CALLS),
                outbound_timeout,
            },
        );
    }

    let mut clusters = BTreeMap::new();
    for (name, c) in raw.clusters {
        let key = format!("clusters.{name}");
        if !is_valid_name(&name) {
            errors.push(ConfigError::new(
                &key,
                "cluster names use letters, digits, '-', '_' and '.' (at most 64)",
            ));
        }
        let cluster = crate::cluster::validate(&key, c, base, &mut errors);
        clusters.insert(name, cluster);
    }

    let mut prefixes: HashMap<String, &str> = HashMap::new();
    for (name, f) in &filters {
        let key = format!("filters.{name}");
        let grants = f.outbound_clusters.as_deref().unwrap_or_default();
        if grants.len() > 1 && grants.iter().any(|c| c == "*") {
            errors.push(ConfigError::new(
                format!("{key}.outbound_clusters"),
                "\"*\" (every cluster) must be the only entry",
            ));
        }
        for (j, c) in grants.iter().enumerate() {
            if c != "*" && !clusters.contains_key(c) {
                errors.push(ConfigError::new(
                    format!("{key}.outbound_clusters[{j}]"),
                    format!("no cluster named {c:?}"),
                ));
            }
        }
        // Metric names are prefixed by the filter's name with '-' and '.'
        // as '_': two filters must not end up with one prefix.
        if let Some(other) = prefixes.insert(metric_prefix(name), name) {
            errors.push(ConfigError::new(
                &key,
                format!(
                    "its metrics would be named like those of filters.{other} \
                     ('-' and '.' read as '_'); rename one of them"
                ),
            ));
        }
    }

    let mut routes = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        if !is_valid_name(&r.name) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!(
                    "{:?}: route names use letters, digits, '-', '_' and '.' (at most 64)",
                    r.name
                ),
            ));
        } else if !names.insert(r.name.clone()) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        let mut hosts = Vec::new();
        for (j, h) in r.hosts.iter().enumerate() {
            match parse_host_pattern(h) {
                Ok(h) => hosts.push(h),
                Err(m) => errors.push(ConfigError::new(format!("{key}.hosts[{j}]"), m)),
            }
        }
        let path = match (r.path, r.path_prefix, r.path_regex) {
            (Some(p), None, None) => {
                if let Err(m) = check_path(&p) {
                    errors.push(ConfigError::new(format!("{key}.path"), m));
                }
                PathMatch::Exact(p)
            }
            (None, Some(p), None) => {
                if let Err(m) = check_path(&p) {
                    errors.push(ConfigError::new(format!("{key}.path_prefix"), m));
                }
                PathMatch::Prefix(p.trim_end_matches('/').to_owned())
            }
            (None, None, Some(re)) => match crate::route_config::FullRegex::new(&re) {
                Ok(re) => PathMatch::Regex(re),
                Err(m) => {
                    errors.push(ConfigError::new(format!("{key}.path_regex"), m));
                    PathMatch::Prefix(String::new())
                }
            },
            (None, None, None) => PathMatch::Prefix(String::new()),
            _ => {
                errors.push(ConfigError::new(
                    &key,
                    "give one of `path` (exact), `path_prefix` or `path_regex`, not several",
                ));
                PathMatch::Prefix(String::new())
            }
        };
        let matchers = crate::route_config::matchers(&key, &r.headers, &r.query, &mut errors);
        let has_prefix = matches!(&path, PathMatch::Prefix(p) if !p.is_empty());
        if let Some(p) = &r.prefix_rewrite {
            if !has_prefix {
                errors.push(ConfigError::new(
                    format!("{key}.prefix_rewrite"),
                    "replaces the matched path_prefix: the route needs a path_prefix",
                ));
            }
            if let Err(m) = check_path(p) {
                errors.push(ConfigError::new(format!("{key}.prefix_rewrite"), m));
            }
        }
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) if !methods.contains(&m) => methods.push(m),
                Ok(_) => errors.push(ConfigError::new(
                    format!("{key}.methods[{j}]"),
                    format!("{m:?} is listed twice"),
                )),
                Err(_) => errors.push(ConfigError::new(
                    format!("{key}.methods[{j}]"),
                    format!("{m:?} is not an HTTP method"),
                )),
            }
        }
        let defined = list(clusters.keys());
        let action = crate::route_config::action(
            &key,
            crate::route_config::RawAction {
                cluster: r.cluster,
                clusters: r.clusters,
                redirect: r.redirect,
                respond: r.respond,
            },
            has_prefix,
            &|c| clusters.contains_key(c),
            &defined,
            &mut errors,
        );
        if r.prefix_rewrite.is_some()
            && matches!(
                action,
                crate::route_config::Action::Redirect(_) | crate::route_config::Action::Respond(_)
            )
        {
            errors.push(ConfigError::new(
                format!("{key}.prefix_rewrite"),
                "applies to forwarded requests; this route answers itself",
            ));
        }
        let mut chain = Vec::new();
        for (j, f) in r.filters.into_iter().enumerate() {
            if !filters.contains_key(&f.name) {
                errors.push(ConfigError::new(
                    format!("{key}.filters[{j}].name"),
                    format!(
                        "unknown filter {:?} (defined: {})",
                        f.name,
                        list(filters.keys())
                    ),
                ));
            }
            let config_json = match f.config {
                Some(table) => serde_json::to_string(&table).unwrap_or_else(|e| {
                    errors.push(ConfigError::new(
                        format!("{key}.filters[{j}].config"),
                        format!("cannot be converted to JSON: {e}"),
                    ));
                    "{}".into()
                }),
                None => "{}".into(),
            };
            chain.push(RouteFilter {
                name: f.name,
                config_json,
            });
        }
        routes.push(RouteConfig {
            name: r.name,
            hosts,
            path,
            methods,
            matchers,
            action,
            prefix_rewrite: r.prefix_rewrite.map(|p| p.trim_end_matches('/').to_owned()),
            timeout: match r.timeout {
                Some(HumanDuration(d)) if d.is_zero() => {
                    errors.push(ConfigError::new(
                        format!("{key}.timeout"),
                        "must be more than 0",
                    ));
                    None
                }
                t => t.map(|t| t.0),
            },
            filters: chain,
            order: i,
        });
    }
    if routes.is_empty() {
        errors.push(ConfigError::new(
            "routes",
            "no routes: add at least one [[routes]] entry",
        ));
    }
    // Every (route, filter) pair has its own pool; all of them together must
    // fit the engine's pooling allocator, with one slot spare for validation.
    let needed: u64 = routes
        .iter()
        .flat_map(|r| &r.filters)
        .filter_map(|f| filters.get(&f.name))
        .map(|f| u64::from(f.pool_size))
        .sum();
    if needed + 1 > u64::from(engine.max_instances) {
        errors.push(ConfigError::new(
            "engine.max_instances",
            format!(
                "{} is too small: the routes' filter pools can hold {needed} instances \
                 (pool_size summed over every filter of every route), plus one for validation; \
                 raise it or lower the filters' pool_size",
                engine.max_instances
            ),
        ));
    }

    if errors.is_empty() {
        Ok(Config {
            source: source.to_owned(),
            text: String::new(),
            base: base.to_path_buf(),
            server,
            engine,
            filters,
            clusters,
            routes,
            admin,
            access_log,
            limits,
            overload,
            watch,
        })
    } else {
        Err(errors)
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

pub(crate) fn parse_host_pattern(h: &str) -> Result<String, String> {
    let lower = h.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(format!(
            "{h:?} is not a host name or a \"*.domain\" wildcard"
        ));
    }
    Ok(lower)
}

fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.contains(['?', '#']) || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{p:?} must be a plain path (no query, fragment, spaces or control characters)"
        ));
    }
    Ok(())
}

/// The part of a filter's exported metric names that comes from its name in
/// the config (`wasmgate_filter_<prefix>_…`): two filters whose prefixes are
/// the same are refused.
pub fn metric_prefix(filter: &str) -> String {
    filter
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
