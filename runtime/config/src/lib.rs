//! The gateway configuration: TOML parsed into raw serde structs (unknown keys
//! rejected), then validated into the typed [`Config`] the runtime uses.
//!
//! Every problem is reported with the key path that caused it, e.g.
//! `routes[1].cluster: unknown cluster "serch" (defined: cart, search)`, and
//! validation reports all problems it finds, not just the first. The schema is
//! documented in `docs/config.md`.
//!
//! Each section has its own module holding its raw struct as written, its
//! `validate` (which pushes problems to one list and returns a usable typed
//! value either way, so that the checks after it still run) and its typed
//! form: [`server`] (with [`tls`] and [`forwarding`]), [`limits`],
//! [`admin`], [`engine`], [`filter`], [`cluster`], [`route`] (with
//! [`route_config`]), [`access_log`], [`overload`], [`watch`] and
//! [`tenant`] (`[tenants]`, each tenant's file, and reading them into a
//! `Config`). This module
//! calls them in turn and makes the checks that span sections: routes and
//! filters naming clusters and filters that exist, and the filter pools
//! fitting `engine.max_instances`.
//!
//! Secrets (the admin token, filter `vars`) are not read by validation: it
//! records where each comes from, and [`Config::read_secrets`] reads them as
//! a step of its own (see [`secret`]). [`Config::load`] and [`Config::parse`]
//! take both steps; [`Config::parse_without_secrets`] only the first.
//! Configs compare by value (`PartialEq`), and their `Debug` output shows no
//! secret.
//!
//! Loading filters (reading and compiling the `.wasm` files, running each
//! route's `init`) is the filter engine's job, so those errors come from the
//! control plane's build; they use the same [`ConfigError`] shape.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub mod access_log;
pub mod admin;
pub mod cluster;
pub mod engine;
pub mod filter;
pub mod forwarding;
pub mod limits;
pub mod overload;
pub mod quota;
pub mod reach;
pub mod response_cache;
pub mod route;
pub mod route_config;
pub mod scope;
pub mod secret;
pub mod server;
pub mod tenant;
pub mod tls;
pub mod transcode;
pub mod watch;

pub use crate::admin::{AdminConfig, DEFAULT_ADMIN_LISTEN};
pub use crate::cluster::{
    Balance, ClusterConfig, EndpointConfig, HashOn, RetryOn, UpstreamProtocol, UpstreamTls,
};
pub use crate::engine::{
    DEFAULT_EPOCH_TICK, DEFAULT_MAX_INSTANCES, DEFAULT_MAX_MEMORY, EngineConfig, default_cache_dir,
    set_default_cache_dir,
};
pub use crate::filter::{
    DEFAULT_FILTER_CPU, DEFAULT_FILTER_MEMORY, DEFAULT_MAX_USES, DEFAULT_OUTBOUND_CALLS,
    DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, FailurePolicy, FilterConfig, Isolation,
    settings_without_path,
};
pub use crate::limits::LimitsConfig;
pub use crate::quota::{QuotaSettings, Quotas};
pub use crate::response_cache::{CacheConfig, RouteCacheConfig};
pub use crate::route::{PathMatch, RouteConfig, RouteFilter};
pub use crate::scope::{Scope, Scoped, TenantId};
pub use crate::secret::{Secret, SecretSetting, SecretSource};
pub use crate::server::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_LISTEN, MAX_DRAIN_TIMEOUT, ServerConfig};
pub use crate::tenant::{AddressRule, Managed, TenancyConfig, TenantConfig};
pub use crate::transcode::{DescriptorConfig, StreamMode, TranscodeConfig};
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
    engine: crate::engine::RawEngine,
    #[serde(default)]
    filters: BTreeMap<String, crate::filter::RawFilter>,
    #[serde(default)]
    clusters: BTreeMap<String, crate::cluster::RawCluster>,
    #[serde(default)]
    routes: Vec<crate::route::RawRoute>,
    #[serde(default)]
    descriptors: BTreeMap<String, crate::transcode::RawDescriptor>,
    admin: Option<crate::admin::RawAdmin>,
    access_log: Option<crate::access_log::RawAccessLog>,
    #[serde(default)]
    limits: crate::limits::RawLimits,
    overload: Option<crate::overload::RawOverload>,
    #[serde(default)]
    watch: crate::watch::RawWatch,
    tenants: Option<crate::tenant::RawTenancy>,
    cache: Option<crate::response_cache::RawCache>,
}

// ---------------------------------------------------------------------------
// Validated config.

/// The validated gateway configuration. Compared by value; its `Debug`
/// output shows no secret (see [`secret`]).
#[derive(Clone, PartialEq)]
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
    /// Protobuf descriptor sets by name, for the routes that transcode.
    pub descriptors: BTreeMap<String, DescriptorConfig>,
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
    /// `[cache]`: the response cache routes with `[routes.cache]` share.
    pub cache: CacheConfig,
    /// `[tenants]`, if the gateway is shared by tenants.
    pub tenancy: Option<TenancyConfig>,
    /// The tenants by name (file- and API-managed), each validated on its
    /// own. The fields above (`filters`, `clusters`, `routes`) are the
    /// operator's own tenant, [`TenantId::DEFAULT`].
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// Every field, except that `text` (which may hold the admin token and
/// filter vars as written) is shown by its length only.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Config {
            source,
            text,
            base,
            server,
            engine,
            filters,
            clusters,
            routes,
            descriptors,
            admin,
            access_log,
            limits,
            overload,
            watch,
            cache,
            tenancy,
            tenants,
        } = self;
        f.debug_struct("Config")
            .field("source", source)
            .field("text", &format_args!("<{} bytes>", text.len()))
            .field("base", base)
            .field("server", server)
            .field("engine", engine)
            .field("filters", filters)
            .field("clusters", clusters)
            .field("routes", routes)
            .field("descriptors", descriptors)
            .field("admin", admin)
            .field("access_log", access_log)
            .field("limits", limits)
            .field("overload", overload)
            .field("watch", watch)
            .field("cache", cache)
            .field("tenancy", tenancy)
            .field("tenants", tenants)
            .finish()
    }
}

impl Config {
    /// Reads and validates a config file. Relative filter paths are resolved
    /// against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let mut config = Config::load_main(path)?;
        let bad = config.load_tenants(None)?;
        match bad.into_iter().next() {
            // The first bad tenant's errors (each tenant's file is its own
            // source); `wasmgate check` and a start refuse on any.
            Some((_, e)) => Err(e),
            None => Ok(config),
        }
    }

    /// Reads and validates the config file alone (its tenants' folder not
    /// read).
    pub(crate) fn load_main(path: &Path) -> Result<Config, ConfigErrors> {
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

    /// Parses and validates config text, then reads its secrets (see
    /// [`Config::read_secrets`]). `base` is the folder relative paths are
    /// resolved against. All problems of both steps are reported together.
    pub fn parse(text: &str, source: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let (mut config, mut errors) = Config::check(text, source, base)?;
        if let Err(e) = config.read_secrets() {
            errors.extend(e);
        }
        ConfigErrors::of(source, errors).map_or(Ok(config), Err)
    }

    /// Parses and validates config text without reading any secret: the
    /// admin token and filter `vars` keep only where they come from (see
    /// [`Config::secrets`]) until [`Config::read_secrets`] runs; literals
    /// are known at once. For a caller that decides what a config may read
    /// before it reads anything.
    pub fn parse_without_secrets(
        text: &str,
        source: &str,
        base: &Path,
    ) -> Result<Config, ConfigErrors> {
        let (config, errors) = Config::check(text, source, base)?;
        ConfigErrors::of(source, errors).map_or(Ok(config), Err)
    }

    /// Reads every secret not read yet: `admin.token_env` and filter `vars`
    /// given as `{ env = "NAME" }` or `{ file = "path" }`, and makes the
    /// checks that need their values (the token's length, and that an admin
    /// listener others can reach has a token). Problems carry key paths
    /// (`admin.token_env`, `filters.NAME.vars.VAR`, ...), as validation's do.
    pub fn read_secrets(&mut self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if let Some(admin) = self.admin.as_mut() {
            crate::admin::read_secrets(admin, &mut errors);
        }
        for (name, f) in &mut self.filters {
            crate::filter::read_secrets(&format!("filters.{name}"), f, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every secret in the config with the key path that sets it
    /// (`admin.token`, `admin.token_env`, `filters.NAME.vars.VAR`): where it
    /// comes from and, once read, its value.
    pub fn secrets(&self) -> Vec<(String, &SecretSetting)> {
        let mut out = Vec::new();
        if let Some(token) = self.admin.as_ref().and_then(|a| a.token.as_ref()) {
            let key = match token.source() {
                SecretSource::Env(_) => "admin.token_env",
                SecretSource::Literal | SecretSource::File(_) => "admin.token",
            };
            out.push((key.to_owned(), token));
        }
        for (name, f) in &self.filters {
            for (var, setting) in &f.vars {
                out.push((format!("filters.{name}.vars.{var}"), setting));
            }
        }
        out
    }

    /// Parses and validates: the config (usable even when there are errors,
    /// so its secrets can be read for a complete report) and every problem.
    fn check(
        text: &str,
        source: &str,
        base: &Path,
    ) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        let raw = parse_raw(text).map_err(|e| ConfigErrors {
            source: source.to_owned(),
            errors: vec![e],
        })?;
        let (mut config, errors) = validate(raw, source, base);
        config.text = text.to_owned();
        Ok((config, errors))
    }
}

impl ConfigErrors {
    /// `errors` from `source`, if there are any.
    fn of(source: &str, errors: Vec<ConfigError>) -> Option<ConfigErrors> {
        (!errors.is_empty()).then(|| ConfigErrors {
            source: source.to_owned(),
            errors,
        })
    }
}

fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    parse_toml(text)
}

/// TOML as `T`, or the first error with its key path, line and column.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
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

pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Validates every section and the checks across them, reading no secret.
/// Returns the config as far as it could be made, and every problem.
fn validate(raw: RawConfig, source: &str, base: &Path) -> (Config, Vec<ConfigError>) {
    let mut errors = Vec::new();

    let server = crate::server::validate(raw.server, base, &mut errors);
    let watch = crate::watch::validate(raw.watch, &mut errors);
    let admin = raw
        .admin
        .map(|a| crate::admin::validate(a, base, &mut errors));
    let limits = crate::limits::validate(raw.limits, &mut errors);
    let overload = crate::overload::validate(raw.overload, &mut errors);
    let cache = raw
        .cache
        .map(|c| crate::response_cache::validate_cache(c, &mut errors))
        .unwrap_or_default();
    let access_log = crate::access_log::validate(raw.access_log, base, &mut errors);
    let engine = crate::engine::validate(raw.engine, base, &mut errors);

    let ScopeSections {
        filters,
        clusters,
        routes,
        descriptors,
    } = validate_scope(
        raw.filters,
        raw.clusters,
        raw.routes,
        Some(raw.descriptors),
        &engine,
        base,
        &mut errors,
    );
    let tenancy = raw
        .tenants
        .map(|t| crate::tenant::validate_tenancy(t, base, &mut errors));
    if routes.is_empty() && tenancy.is_none() {
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

    let config = Config {
        source: source.to_owned(),
        text: String::new(),
        base: base.to_path_buf(),
        server,
        engine,
        filters,
        clusters,
        routes,
        descriptors,
        admin,
        access_log,
        limits,
        overload,
        watch,
        cache,
        tenancy,
        tenants: BTreeMap::new(),
    };
    (config, errors)
}

/// The filters, clusters and routes of one scope (the main config's or a
/// tenant's), validated, with the checks across them: what the routes and
/// the filters' grants name must exist in the same scope.
/// `raw_descriptors` is `None` for a tenant: descriptor sets are the
/// operator's (their files are read from the gateway's disk), so a
/// tenant's route cannot transcode.
pub(crate) fn validate_scope(
    raw_filters: BTreeMap<String, crate::filter::RawFilter>,
    raw_clusters: BTreeMap<String, crate::cluster::RawCluster>,
    raw_routes: Vec<crate::route::RawRoute>,
    raw_descriptors: Option<BTreeMap<String, crate::transcode::RawDescriptor>>,
    engine: &EngineConfig,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> ScopeSections {
    let filters = crate::filter::validate_all(raw_filters, engine, base, errors);
    let clusters = crate::cluster::validate_all(raw_clusters, base, errors);
    // What a filter may call or send its route's traffic to must exist.
    for (name, f) in &filters {
        for (field, grants) in [
            ("outbound_clusters", &f.outbound_clusters),
            ("reroute_clusters", &f.reroute_clusters),
        ] {
            let grants = grants.as_deref().unwrap_or_default();
            for (j, c) in grants.iter().enumerate() {
                if c != "*" && !clusters.contains_key(c) {
                    errors.push(ConfigError::new(
                        format!("filters.{name}.{field}[{j}]"),
                        format!("no cluster named {c:?}"),
                    ));
                }
            }
        }
    }

    let mut names = crate::route::Names::default();
    let routes = crate::route::validate_all(raw_routes, &mut names, errors);
    // What the routes name must exist.
    for (key, c) in &names.clusters {
        if !clusters.contains_key(c) {
            errors.push(ConfigError::new(
                key,
                format!("unknown cluster {c:?} (defined: {})", list(clusters.keys())),
            ));
        }
    }
    for (key, f) in &names.filters {
        if !filters.contains_key(f) {
            errors.push(ConfigError::new(
                key,
                format!("unknown filter {f:?} (defined: {})", list(filters.keys())),
            ));
        }
    }
    let descriptors =
        crate::transcode::validate_scope(raw_descriptors, &names, &clusters, base, errors);
    ScopeSections {
        filters,
        clusters,
        routes,
        descriptors,
    }
}

/// One scope's sections, validated.
pub(crate) struct ScopeSections {
    pub(crate) filters: BTreeMap<String, FilterConfig>,
    pub(crate) clusters: BTreeMap<String, ClusterConfig>,
    pub(crate) routes: Vec<RouteConfig>,
    pub(crate) descriptors: BTreeMap<String, DescriptorConfig>,
}

pub(crate) fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
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

/// The part of a filter's exported metric names that comes from its name in
/// the config (`wasmgate_filter_<prefix>_…`): two filters whose prefixes are
/// the same are refused.
pub fn metric_prefix(filter: &str) -> String {
    filter
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, "test.toml", Path::new("/srv")) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn names_used_across_sections_must_exist() {
        let got = errors(
            "[filters.f]\npath = \"f.wasm\"\noutbound_clusters = [\"nope\"]\n\
             [clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n\
             [[routes]]\nname = \"r\"\nclusters = [{ name = \"c\", weight = 1 }, { name = \"x\", weight = 1 }]\n\
             filters = [{ name = \"f\" }, { name = \"g\" }]\n",
        );
        assert_eq!(
            got,
            [
                "filters.f.outbound_clusters[0]: no cluster named \"nope\"",
                "routes[0].clusters[1].name: unknown cluster \"x\" (defined: c)",
                "routes[0].filters[1].name: unknown filter \"g\" (defined: f)",
            ]
        );
    }

    #[test]
    fn routes_are_needed_unless_tenants_bring_them() {
        assert_eq!(
            errors(""),
            ["routes: no routes: add at least one [[routes]] entry"]
        );
        assert_eq!(errors("[tenants]\n"), Vec::<String>::new());
        assert_eq!(
            errors("[tenants]\ndefault = \"default\"\nallow = [\"10.0.0.0/8\", \"nope\"]\n"),
            [
                "tenants.allow[1]: \"nope\" is not an address range: write \"10.0.0.0/8\", \
                 \"192.0.2.7\", \"10.0.0.0/8:8000-8999\" or \"[2001:db8::/32]:443\"",
                "tenants.default: \"default\" is not a tenant name (lower-case letters, digits \
                 and single inner '-', at most 63; not \"default\")"
            ]
        );
    }

    #[test]
    fn the_pools_must_fit_the_engine() {
        let got = errors(
            "[engine]\nmax_instances = 8\n[filters.f]\npath = \"f.wasm\"\npool_size = 4\n\
             [[routes]]\nname = \"a\"\nrespond = {}\nfilters = [{ name = \"f\" }]\n\
             [[routes]]\nname = \"b\"\nrespond = {}\nfilters = [{ name = \"f\" }]\n",
        );
        assert_eq!(
            got,
            [
                "engine.max_instances: 8 is too small: the routes' filter pools can hold 8 \
              instances (pool_size summed over every filter of every route), plus one for \
              validation; raise it or lower the filters' pool_size"
            ]
        );
        let fits = "[engine]\nmax_instances = 9\n[filters.f]\npath = \"f.wasm\"\npool_size = 4\n\
             [[routes]]\nname = \"a\"\nrespond = {}\nfilters = [{ name = \"f\" }]\n\
             [[routes]]\nname = \"b\"\nrespond = {}\nfilters = [{ name = \"f\" }]\n";
        assert_eq!(errors(fits), Vec::<String>::new());
    }

    #[test]
    fn configs_compare_by_value() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n\
                    [[routes]]\nname = \"r\"\npath_regex = \"/v[0-9]+\"\ncluster = \"c\"\n";
        let parse = |t: &str| Config::parse(t, "test.toml", Path::new("/srv")).unwrap();
        let a = parse(text);
        let b = parse(text);
        assert_eq!(a, b);
        // Path regexes compare by their pattern.
        assert_eq!(a.routes, b.routes);
        let c = parse(&text.replace("[0-9]+", "[0-9]*"));
        assert_ne!(a.routes, c.routes);
        assert_eq!(a.server, c.server);
        let d = parse(&format!("{text}[limits]\nmax_connections = 5\n"));
        assert_ne!(a.limits, d.limits);
        assert_eq!(a.clusters, d.clusters);
    }

    const ROUTE: &str = "[[routes]]\nname = \"r\"\nrespond = {}\n";

    #[test]
    fn secrets_are_read_in_a_step_of_their_own() {
        let dir = std::env::temp_dir().join(format!("wasmgate-config-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key.txt"), "from-a-file\n").unwrap();
        let text = format!(
            "[admin]\ntoken_env = \"CARGO_MANIFEST_DIR\"\n\
             [filters.f]\npath = \"f.wasm\"\n\
             [filters.f.vars]\nplain = \"lit\"\nenv = {{ env = \"CARGO_PKG_NAME\" }}\nkey = {{ file = \"key.txt\" }}\n{ROUTE}"
        );
        let mut config = Config::parse_without_secrets(&text, "t.toml", &dir).unwrap();
        let sources: Vec<(String, SecretSource, Option<&str>)> = config
            .secrets()
            .into_iter()
            .map(|(k, s)| (k, s.source().clone(), s.expose()))
            .collect();
        assert_eq!(
            sources,
            [
                (
                    "admin.token_env".to_owned(),
                    SecretSource::Env("CARGO_MANIFEST_DIR".into()),
                    None
                ),
                (
                    "filters.f.vars.env".to_owned(),
                    SecretSource::Env("CARGO_PKG_NAME".into()),
                    None
                ),
                (
                    "filters.f.vars.key".to_owned(),
                    SecretSource::File(dir.join("key.txt")),
                    None
                ),
                (
                    "filters.f.vars.plain".to_owned(),
                    SecretSource::Literal,
                    Some("lit")
                ),
            ]
        );
        config.read_secrets().unwrap();
        let token = config.admin.as_ref().unwrap().token.as_ref().unwrap();
        assert_eq!(token.expose(), Some(env!("CARGO_MANIFEST_DIR")));
        let vars = &config.filters["f"].vars;
        assert_eq!(vars["env"].expose(), Some("wasmgate-config"));
        assert_eq!(vars["key"].expose(), Some("from-a-file"));
        // `parse` takes both steps and gives the same config.
        assert_eq!(config, Config::parse(&text, "t.toml", &dir).unwrap());
    }

    #[test]
    fn secret_errors_come_with_every_other_error() {
        let text = format!(
            "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_env = \"WASMGATE_TEST_SURELY_UNSET_99\"\n\
             [filters.f]\npath = \"f.wasm\"\npool_size = 0\n\
             [filters.f.vars]\nk = {{ file = \"/nonexistent/k\" }}\nboth = {{ env = \"A\", file = \"b\" }}\n{ROUTE}"
        );
        let got = errors(&text);
        assert_eq!(got.len(), 5, "{got:#?}");
        assert_eq!(got[0], "filters.f.pool_size: must be at least 1");
        assert_eq!(
            got[1],
            "filters.f.vars.both: give a string, { env = \"NAME\" } or { file = \"path\" }"
        );
        assert_eq!(
            got[2],
            "admin.token_env: the environment variable WASMGATE_TEST_SURELY_UNSET_99 is not set"
        );
        assert!(
            got[3].starts_with("admin.listen: 0.0.0.0:9901 is not a loopback address; refusing"),
            "{}",
            got[3]
        );
        assert!(
            got[4].starts_with("filters.f.vars.k: cannot read /nonexistent/k: "),
            "{}",
            got[4]
        );
        // Validation alone reports only its own.
        let e = Config::parse_without_secrets(&text, "t.toml", Path::new("/")).unwrap_err();
        assert_eq!(e.errors.len(), 2);
    }

    #[test]
    fn a_token_from_the_environment_is_checked_once_read() {
        let short = format!("[admin]\ntoken_env = \"CARGO_PKG_NAME\"\n{ROUTE}");
        assert_eq!(
            errors(&short),
            ["admin.token: must be at least 16 characters"]
        );
        let mut config = Config::parse_without_secrets(&short, "t.toml", Path::new("/")).unwrap();
        assert_eq!(
            config.read_secrets().unwrap_err(),
            [ConfigError::new(
                "admin.token",
                "must be at least 16 characters"
            )]
        );
        let public = format!(
            "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_env = \"CARGO_MANIFEST_DIR\"\n{ROUTE}"
        );
        assert_eq!(errors(&public), Vec::<String>::new());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let dir = std::env::temp_dir().join(format!("wasmgate-config-dbg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "file-secret-3141592\n").unwrap();
        let text = format!(
            "[admin]\ntoken = \"admin-secret-2718281828\"\n\
             [filters.f]\npath = \"f.wasm\"\n\
             [filters.f.vars]\nplain = \"literal-secret-1414\"\nkey = {{ file = \"k\" }}\n{ROUTE}"
        );
        let config = Config::parse(&text, "t.toml", &dir).unwrap();
        assert_eq!(
            config
                .admin
                .as_ref()
                .unwrap()
                .token
                .as_ref()
                .unwrap()
                .expose(),
            Some("admin-secret-2718281828")
        );
        assert_eq!(
            config.filters["f"].vars["key"].expose(),
            Some("file-secret-3141592")
        );
        for shown in [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{:?}", config.admin),
            format!("{:?}", config.filters),
            format!("{:?}", config.secrets()),
        ] {
            for secret in ["admin-secret", "file-secret", "literal-secret"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert!(format!("{config:?}").contains(&format!("text: <{} bytes>", text.len())));
    }
}
