//! The live configuration and the changes made to it while the gateway runs:
//! a config reload (SIGHUP, the management API) and a filter module swap (the
//! management API), both ending in the same step: build a whole new [`Proxy`]
//! beside the running one, validate everything (compile, link, every route's
//! `init`), and only then swap it in with one atomic store.
//!
//! - **Atomic per request.** The server loads the current `Proxy` once per
//!   request, so a request runs wholly on the generation that was current
//!   when it arrived; requests in flight finish on the old one, which is
//!   freed (with its filter versions and instances) when the last of them
//!   ends.
//! - **Nothing is rebuilt that did not change.** A cluster whose config is
//!   the same keeps its `Cluster` (connection pools, health, outlier state);
//!   a filter whose bytes and settings are the same keeps its compiled
//!   module (and its version number).
//! - **A failure changes nothing.** Every error is reported with its key
//!   path, and the running generation keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::access_log::AccessLog;
use crate::chain::{ChainFilter, Needs};
use crate::config::{Config, ConfigError, ConfigErrors, FailurePolicy, FilterConfig, Isolation};
use crate::filter::services::OutboundGrant;
use crate::filter::{FilterEngine, FilterModule, InstancePool, Limits, PoolPolicy, sha256_hex};
use crate::metrics::Metrics;
use crate::normalize::PathPolicy;
use crate::outbound::ClusterCaller;
use crate::overload::OverloadGuard;
use crate::proxy::{Proxy, Route, RouteMetrics, RouteTarget, Split};
use crate::router::{RouteMatch, RouteTable};
use crate::tls::TlsTerminator;
use crate::upstream::Cluster;
use crate::upstream::dns::Resolve;

/// Largest module accepted by upload.
pub const MAX_MODULE_SIZE: usize = 64 << 20;

/// What every generation shares: made once, at start.
#[derive(Debug)]
pub(crate) struct Deps {
    pub(crate) engine: Arc<FilterEngine>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) resolver: Arc<dyn Resolve>,
    pub(crate) overload: Arc<OverloadGuard>,
    pub(crate) tls: Option<Arc<TlsTerminator>>,
    pub(crate) caller: Arc<ClusterCaller>,
}

/// A filter module as one generation uses it.
#[derive(Debug, Clone)]
pub struct ModuleEntry {
    /// The compiled module.
    pub module: Arc<FilterModule>,
    /// The settings it was loaded with.
    pub config: FilterConfig,
    /// Counts activations of a new module (new bytes or settings) for this
    /// filter name, from 1.
    pub version: u64,
    /// `"file"` or `"upload"`.
    pub source: &'static str,
}

/// A module delivered through the management API.
#[derive(Debug, Clone)]
struct Upload {
    bytes: Arc<Vec<u8>>,
}

/// The state changes are made from, one change at a time.
#[derive(Debug)]
struct Control {
    uploads: BTreeMap<String, Upload>,
    /// The last version number given to each filter name.
    versions: HashMap<String, u64>,
}

/// The running generation and how to replace it.
#[derive(Debug)]
pub struct Live {
    proxy: ArcSwap<Proxy>,
    /// The config `proxy` was built from.
    config: ArcSwap<Config>,
    /// The config file the gateway started from (what a reload re-reads,
    /// even after a config was put through the API).
    file: std::path::PathBuf,
    control: Mutex<Control>,
    deps: Deps,
}

/// Why a module upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No `[filters.NAME]` in the config.
    #[error("no filter named {0:?} in the config")]
    UnknownFilter(String),
    /// Larger than [`MAX_MODULE_SIZE`].
    #[error("the module is {0} bytes; at most {MAX_MODULE_SIZE} are accepted")]
    TooLarge(usize),
    /// The body's SHA-256 is not the one the caller expected.
    #[error("the module's sha256 is {actual}, not the expected {expected}")]
    Digest {
        /// Given by the caller.
        expected: String,
        /// Of the bytes received.
        actual: String,
    },
    /// It does not load, link or initialise.
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// Every error of `e` on one log line: `source: path: message; ...`.
fn one_line(e: &ConfigErrors) -> String {
    let all: Vec<String> = e
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    format!("{}: {}", e.source, all.join("; "))
}

/// Equal `Debug` output means equal values for the plain-data config types
/// compared here (derived `Debug` prints every field); used only to decide
/// what a new generation can keep.
fn same<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

impl Live {
    /// The first generation, built from `config`.
    pub(crate) async fn start(config: Config, deps: Deps) -> Result<Live, Vec<ConfigError>> {
        let mut control = Control {
            uploads: BTreeMap::new(),
            versions: HashMap::new(),
        };
        let proxy = build(
            &config,
            &deps,
            None,
            &control.uploads,
            &mut control.versions,
        )
        .await?;
        deps.caller
            .set_clusters(proxy.clusters.clone(), config.limits.max_buffered_body);
        Ok(Live {
            proxy: ArcSwap::from_pointee(proxy),
            file: std::path::PathBuf::from(&config.source),
            config: ArcSwap::from_pointee(config),
            control: Mutex::new(control),
            deps,
        })
    }

    /// The current generation. A request loads it once and keeps it.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy.load_full()
    }

    /// The config file the gateway started from.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// The config the current generation was built from.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the config: everything is built and validated first; on any
    /// error the running generation stays and every error is returned.
    pub async fn apply_config(&self, config: Config) -> Result<(), ConfigErrors> {
        self.apply_parsed(Ok(config)).await
    }

    /// Reads the config file at `path` and applies it ([`Live::apply_config`]).
    pub async fn reload_from(&self, path: &std::path::Path) -> Result<(), ConfigErrors> {
        self.apply_parsed(Config::load(path)).await
    }

    /// Applies a config that parsed; counts and logs the outcome either way.
    pub async fn apply_parsed(
        &self,
        parsed: Result<Config, ConfigErrors>,
    ) -> Result<(), ConfigErrors> {
        let mut control = self.control.lock().await;
        let result = match parsed {
            Ok(config) => self.apply_locked(&mut control, config).await,
            Err(e) => Err(e),
        };
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.deps
            .metrics
            .config_reloads
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
        match &result {
            Ok(()) => tracing::info!(source = %self.config().source, "config reloaded"),
            Err(e) => tracing::error!(
                "config reload rejected, the running config stays: {}",
                one_line(e)
            ),
        }
        result
    }

    async fn apply_locked(
        &self,
        control: &mut Control,
        config: Config,
    ) -> Result<(), ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source: config.source.clone(),
            errors,
        };
        let old = self.config();
        let mut fixed = Vec::new();
        if !same(&old.server, &config.server) {
            fixed.push("server");
        }
        if !same(&old.engine, &config.engine) {
            fixed.push("engine");
        }
        if !same(&old.admin, &config.admin) {
            fixed.push("admin");
        }
        if !same(&old.overload, &config.overload) {
            fixed.push("overload");
        }
        if old.watch != config.watch {
            fixed.push("watch");
        }
        if !same(&old.limits.listener(), &config.limits.listener()) {
            fixed.push("limits");
        }
        if !fixed.is_empty() {
            return Err(fail(
                fixed
                    .into_iter()
                    .map(|k| {
                        ConfigError::new(
                            k,
                            "this section changed; it is read at start (listener, engine, file watching), \
                             so changing it needs a restart",
                        )
                    })
                    .collect(),
            ));
        }
        // A module uploaded for a filter the new config no longer has is
        // forgotten; one it still has keeps serving.
        let mut uploads = control.uploads.clone();
        uploads.retain(|name, _| config.filters.contains_key(name));
        let mut versions = control.versions.clone();
        let prev = self.proxy();
        let proxy = build(&config, &self.deps, Some(&prev), &uploads, &mut versions)
            .await
            .map_err(fail)?;
        self.activate(proxy, &prev, config.limits.max_buffered_body);
        self.config.store(Arc::new(config));
        control.uploads = uploads;
        control.versions = versions;
        Ok(())
    }

    /// Validates `bytes` as the new module of filter `name` (compiled off
    /// the request path, linked, and `init` run with every route's config
    /// that uses it), then activates it. Returns the new version.
    pub async fn upload_module(
        &self,
        name: &str,
        bytes: Vec<u8>,
        expected_sha256: Option<&str>,
    ) -> Result<ModuleEntry, SwapError> {
        let mut control = self.control.lock().await;
        let result = self
            .upload_locked(&mut control, name, bytes, expected_sha256)
            .await;
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        if self.config().filters.contains_key(name) {
            self.deps
                .metrics
                .filter_swaps
                .get_or_create(&crate::metrics::SwapLabels {
                    filter: name.to_owned(),
                    outcome,
                })
                .inc();
        }
        match &result {
            Ok(e) => tracing::info!(
                filter = name,
                version = e.version,
                sha256 = e.module.sha256(),
                "filter module activated"
            ),
            Err(SwapError::Invalid(e)) => tracing::error!(
                filter = name,
                "filter module rejected, the current version stays: {}",
                one_line(e)
            ),
            Err(e) => tracing::error!(
                filter = name,
                "filter module rejected, the current version stays: {e}"
            ),
        }
        result
    }

    async fn upload_locked(
        &self,
        control: &mut Control,
        name: &str,
        bytes: Vec<u8>,
        expected_sha256: Option<&str>,
    ) -> Result<ModuleEntry, SwapError> {
        let config = self.config();
        if !config.filters.contains_key(name) {
            return Err(SwapError::UnknownFilter(name.to_owned()));
        }
        if bytes.len() > MAX_MODULE_SIZE {
            return Err(SwapError::TooLarge(bytes.len()));
        }
        if let Some(expected) = expected_sha256 {
            let actual = sha256_hex(&bytes);
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(SwapError::Digest {
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        let mut uploads = control.uploads.clone();
        uploads.insert(
            name.to_owned(),
            Upload {
                bytes: Arc::new(bytes),
            },
        );
        let mut versions = control.versions.clone();
        let prev = self.proxy();
        let proxy = build(&config, &self.deps, Some(&prev), &uploads, &mut versions)
            .await
            .map_err(|errors| {
                SwapError::Invalid(ConfigErrors {
                    source: format!("upload for filter {name:?}"),
                    errors,
                })
            })?;
        let entry = proxy.modules[name].clone();
        self.activate(proxy, &prev, config.limits.max_buffered_body);
        control.uploads = uploads;
        control.versions = versions;
        Ok(entry)
    }

    /// Makes `proxy` current; starts the background tasks of clusters it
    /// added.
    fn activate(&self, proxy: Proxy, prev: &Proxy, max_body: usize) {
        for (name, c) in &proxy.clusters {
            let kept = prev.clusters.get(name).is_some_and(|p| Arc::ptr_eq(p, c));
            if !kept {
                crate::upstream::health::spawn(c);
                crate::upstream::dns::spawn(c, self.deps.resolver.clone());
            }
        }
        self.deps
            .caller
            .set_clusters(proxy.clusters.clone(), max_body);
        self.proxy.store(Arc::new(proxy));
    }

    /// Starts the background tasks of the first generation's clusters.
    pub(crate) fn spawn_cluster_tasks(&self) {
        for cluster in self.proxy().clusters.values() {
            crate::upstream::health::spawn(cluster);
            crate::upstream::dns::spawn(cluster, self.deps.resolver.clone());
        }
    }

    /// Every filter: its current version, where it came from, and how many
    /// versions and instances of it are alive (old versions live until the
    /// requests that use them finish).
    pub fn filters_report(&self) -> serde_json::Value {
        let proxy = self.proxy();
        let live: HashMap<_, _> = self.deps.engine.live_counts().into_iter().collect();
        let filters: Vec<_> = proxy
            .modules
            .iter()
            .map(|(name, e)| {
                let counts = live.get(name.as_str());
                let get = |f: fn(&crate::filter::LiveCounts) -> i64| counts.map_or(0, |c| f(c));
                serde_json::json!({
                    "name": name,
                    "version": e.version,
                    "sha256": e.module.sha256(),
                    "source": e.source,
                    "live_versions": get(|c| c.versions.load(std::sync::atomic::Ordering::Relaxed)),
                    "live_instances": get(|c| c.instances.load(std::sync::atomic::Ordering::Relaxed)),
                })
            })
            .collect();
        serde_json::json!({ "filters": filters })
    }

    /// Brings the live-version and live-instance gauges up to date.
    pub(crate) fn sample_metrics(&self) {
        for (name, c) in self.deps.engine.live_counts() {
            let labels = crate::metrics::FilterNameLabels {
                filter: name.to_string(),
            };
            let m = &self.deps.metrics;
            m.filter_versions_live
                .get_or_create(&labels)
                .set(c.versions.load(std::sync::atomic::Ordering::Relaxed));
            m.filter_instances_live
                .get_or_create(&labels)
                .set(c.instances.load(std::sync::atomic::Ordering::Relaxed));
        }
    }

    /// The shared parts every generation uses.
    pub(crate) fn deps(&self) -> &Deps {
        &self.deps
    }
}

/// Loads (or keeps from `prev`) the module of filter `name`.
async fn module(
    name: &str,
    f: &FilterConfig,
    deps: &Deps,
    prev: Option<&Proxy>,
    uploads: &BTreeMap<String, Upload>,
    versions: &mut HashMap<String, u64>,
) -> Result<ModuleEntry, ConfigError> {
    let key = format!("filters.{name}.path");
    let (bytes, origin, source) = match uploads.get(name) {
        Some(u) => (u.bytes.clone(), format!("upload for {name:?}"), "upload"),
        None => {
            let path = f.path.clone();
            let read = tokio::task::spawn_blocking(move || std::fs::read(&path))
                .await
                .map_err(|e| ConfigError::new(&key, e.to_string()))?;
            let bytes = read.map_err(|e| {
                ConfigError::new(&key, format!("cannot read {}: {e}", f.path.display()))
            })?;
            (Arc::new(bytes), f.path.display().to_string(), "file")
        }
    };
    let sha = sha256_hex(&bytes);
    if let Some(p) = prev.and_then(|p| p.modules.get(name))
        && p.module.sha256() == sha
        && same(&p.config, f)
    {
        return Ok(ModuleEntry {
            source,
            ..p.clone()
        });
    }
    let limits = Limits {
        memory: f.memory_limit,
        cpu: f.cpu_limit,
    };
    let engine = deps.engine.clone();
    let owned_name = name.to_owned();
    // Compiling takes a while: off the async workers.
    let loaded = tokio::task::spawn_blocking(move || {
        engine.load_bytes(&owned_name, &origin, &bytes, limits)
    })
    .await
    .map_err(|e| ConfigError::new(&key, e.to_string()))?;
    let mut m = loaded.map_err(|e| ConfigError::new(&key, e.to_string()))?;
    // No grant, no outbound calls; `"*"` grants every cluster.
    let outbound = match f.outbound_clusters.as_deref() {
        None | Some([]) => None,
        Some(list) => Some(OutboundGrant {
            sender: deps.caller.clone(),
            clusters: (!list.iter().any(|c| c == "*"))
                .then(|| Arc::new(list.iter().cloned().collect())),
            max_calls: f.max_outbound_calls,
            timeout: f.outbound_timeout,
        }),
    };
    m.grant(f.kv_quota, f.vars.clone().into_iter().collect(), outbound);
    let version = versions.entry(name.to_owned()).or_insert(0);
    *version += 1;
    Ok(ModuleEntry {
        module: Arc::new(m),
        config: f.clone(),
        version: *version,
        source,
    })
}

/// Builds a whole generation from `config`, keeping what did not change
/// from `prev`. Every error is collected, with its key path.
async fn build(
    config: &Config,
    deps: &Deps,
    prev: Option<&Proxy>,
    uploads: &BTreeMap<String, Upload>,
    versions: &mut HashMap<String, u64>,
) -> Result<Proxy, Vec<ConfigError>> {
    let metrics = &deps.metrics;
    let mut errors = Vec::new();
    let access_log = match (&config.access_log, prev) {
        (Some(target), Some(p)) if same(&Some(target), &p.access_log_target()) => {
            p.access_log().cloned()
        }
        (Some(target), _) => match AccessLog::start(target, metrics.clone()) {
            Ok(log) => Some(log),
            Err(e) => {
                errors.push(ConfigError::new(
                    "access_log.path",
                    format!("cannot open: {e}"),
                ));
                None
            }
        },
        (None, _) => None,
    };

    let mut clusters: HashMap<String, Arc<Cluster>> = HashMap::new();
    for (n, c) in &config.clusters {
        if let Some(p) = prev.and_then(|p| p.clusters.get(n))
            && same(&p.config, c)
        {
            clusters.insert(n.clone(), p.clone());
            continue;
        }
        match Cluster::new(n, c, metrics, &*deps.resolver).await {
            Ok(cluster) => {
                clusters.insert(n.clone(), Arc::new(cluster));
            }
            Err(e) => errors.push(ConfigError::new(format!("clusters.{n}"), e)),
        }
    }

    let mut modules: BTreeMap<String, ModuleEntry> = BTreeMap::new();
    for (name, f) in &config.filters {
        match module(name, f, deps, prev, uploads, versions).await {
            Ok(m) => {
                modules.insert(name.clone(), m);
            }
            Err(e) => errors.push(e),
        }
    }

    let mut routes = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        let name: Arc<str> = Arc::from(r.name.as_str());
        let mut chain = Vec::new();
        for (j, rf) in r.filters.iter().enumerate() {
            let Some(entry) = modules.get(rf.name.as_str()) else {
                continue;
            };
            let module = &entry.module;
            let key = format!("routes[{i}].filters[{j}].config");
            match module.probe(&name, &rf.config_json).await {
                Ok(info) => match Needs::from_wit(info) {
                    Ok(needs) => {
                        let fc = &config.filters[&rf.name];
                        let policy = PoolPolicy {
                            size: fc.pool_size as usize,
                            max_uses: fc.max_uses,
                            recycle_above: fc.recycle_memory,
                            fresh: fc.isolation == Isolation::Fresh,
                            acquire_timeout: fc.pool_timeout,
                            wall_limit: fc.wall_limit,
                            quarantine_after: fc.quarantine_after,
                        };
                        let pool = InstancePool::new(
                            module.clone(),
                            name.clone(),
                            Arc::from(rf.config_json.as_str()),
                            policy,
                            metrics.clone(),
                        );
                        chain.push(ChainFilter {
                            pool,
                            needs,
                            fail_open: fc.failure_policy == FailurePolicy::FailOpen,
                        })
                    }
                    Err(m) => {
                        errors.push(ConfigError::new(key, format!("filter {:?}: {m}", rf.name)))
                    }
                },
                Err(failure) => errors.push(ConfigError::new(
                    key,
                    format!("filter {:?} {failure}", rf.name),
                )),
            }
        }
        use crate::route_config::Action;
        let target = match &r.action {
            Action::Cluster(c) => match clusters.get(c) {
                Some(c) => RouteTarget::Cluster(c.clone()),
                None => continue,
            },
            Action::Split(split) => {
                let resolved: Option<Vec<_>> = split
                    .iter()
                    .map(|(c, w)| clusters.get(c).map(|c| (c.clone(), *w)))
                    .collect();
                match resolved {
                    Some(v) => RouteTarget::Split(Split::new(v)),
                    None => continue,
                }
            }
            Action::Redirect(redirect) => RouteTarget::Redirect(redirect.clone()),
            Action::Respond(respond) => RouteTarget::Respond(respond.clone()),
        };
        let primary = match &target {
            RouteTarget::Cluster(c) => c.name().to_string(),
            _ => String::new(),
        };
        routes.push(RouteMatch {
            hosts: r.hosts.clone(),
            path: r.path.clone(),
            methods: r.methods.clone(),
            matchers: r.matchers.clone(),
            order: r.order,
            target: Arc::new(Route {
                metrics: RouteMetrics::new(metrics, &name, &primary),
                name,
                target,
                chain,
                path_prefix: match &r.path {
                    crate::config::PathMatch::Prefix(p) => Some(p.clone()),
                    _ => None,
                },
                prefix_rewrite: r.prefix_rewrite.clone(),
                timeout: r.timeout,
            }),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let policy = crate::proxy::Policy {
        path: PathPolicy {
            allow_encoded_slashes: config.server.allow_encoded_slashes,
        },
        forwarding: config.server.forwarding.clone(),
        limits: crate::proxy::Limits {
            max_request_body: config.limits.max_request_body,
            request_timeout: config.limits.request_timeout,
            tunnel_idle_timeout: config.limits.tunnel_idle_timeout,
            max_buffered_body: config.limits.max_buffered_body,
        },
        tls: deps.tls.clone(),
        overload: deps.overload.clone(),
    };
    Ok(Proxy::new(
        RouteTable::new(routes),
        clusters,
        modules,
        metrics.clone(),
        config.access_log.clone().zip(access_log),
        policy,
    ))
}
