//! The live configuration and the changes made to it while the gateway runs:
//! a config reload (SIGHUP, a watched file, the management API), a filter
//! module upload, and the version changes of the filter store (activate,
//! canary, promote, roll back). Every one ends in the same step: build a
//! whole new [`Proxy`] beside the running one, validate everything (compile,
//! link, every route's `init`), write the result to the data directory when
//! there is one, and only then swap it in with one atomic store.
//!
//! - **Atomic per request.** The server loads the current `Proxy` once per
//!   request, so a request runs wholly on the generation that was current
//!   when it arrived; requests in flight finish on the old one, which is
//!   freed (with its filter versions and instances) when the last of them
//!   ends.
//! - **The filter store.** Each filter name keeps its last [`HISTORY`]
//!   versions (bytes, sha256, where they came from, request counters): the
//!   current one, the one before it (what a rollback returns to), and a
//!   canary, which are never dropped. A version is made when new bytes
//!   arrive (an upload, or a module file whose bytes changed); re-sending
//!   the current bytes makes none.
//! - **Who decides the current version.** The module file, until a version
//!   is put in place through the API (upload, activate, promote, rollback):
//!   from then on the filter is *pinned* and a changed file is not read,
//!   until the config points the filter at another file.
//! - **Nothing is rebuilt that did not change.** A cluster whose config is
//!   the same keeps its `Cluster` (connection pools, health, outlier state);
//!   a filter version whose settings are the same keeps its compiled module.
//! - **A failure changes nothing.** Every error is reported with its key
//!   path, and the running generation keeps serving.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, mpsc};

use crate::store::{DataDir, Saved, SavedFilter, SavedVersion};
use wasmgate_config::{Config, ConfigError, ConfigErrors, FailurePolicy, FilterConfig, Isolation};
use wasmgate_engine::edits::Needs;
use wasmgate_engine::services::OutboundGrant;
use wasmgate_engine::{
    FilterEngine, FilterFailure, FilterLimits, FilterModule, InstancePool, PoolPolicy, sha256_hex,
};
use wasmgate_metrics::Metrics;
use wasmgate_proxy::access_log::AccessLog;
use wasmgate_proxy::canary::{Canary, CanarySpec, Tripped, VersionStats};
use wasmgate_proxy::chain::{Arm, ChainFilter};
use wasmgate_proxy::normalize::PathPolicy;
use wasmgate_proxy::outbound::ClusterCaller;
use wasmgate_proxy::overload::OverloadGuard;
use wasmgate_proxy::proxy::{Current, Proxy};
use wasmgate_proxy::route::{Route, RouteMetrics, RouteTarget, WeightedClusters};
use wasmgate_proxy::router::{RouteMatch, RouteTable};
use wasmgate_proxy::tls::TlsTerminator;
use wasmgate_proxy::upstream::Cluster;
use wasmgate_proxy::upstream::dns::Resolve;

/// Largest module accepted by upload.
pub const MAX_MODULE_SIZE: usize = 64 << 20;

/// Versions kept per filter (the current, previous and canary versions are
/// never dropped).
pub const HISTORY: usize = 8;

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

/// A filter version as one generation uses it.
#[derive(Debug, Clone)]
pub struct ModuleEntry {
    /// The compiled module.
    pub module: Arc<FilterModule>,
    /// The settings it was loaded with.
    pub config: FilterConfig,
    /// Its version number.
    pub version: u64,
    /// `"file"` or `"upload"`.
    pub source: &'static str,
    /// Requests it handled.
    pub stats: Arc<VersionStats>,
}

/// A generation as the control plane knows it: the data plane's [`Proxy`]
/// (what the server serves) and which version of each filter it runs (for
/// reports, the file watcher, and reusing compiled modules in the next
/// build). The data plane never sees this.
#[derive(Debug)]
pub struct Generation {
    /// What requests are served by.
    pub proxy: Arc<Proxy>,
    /// Every filter's versions in it, by name.
    pub modules: BTreeMap<String, Loaded>,
}

/// A filter's versions in one generation: the current one and a canary.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The current version.
    pub current: ModuleEntry,
    /// The canary version, with the canary that picks its requests.
    pub canary: Option<(ModuleEntry, Arc<Canary>)>,
}

/// One version in the filter store.
#[derive(Debug, Clone)]
struct Stored {
    version: u64,
    sha256: String,
    bytes: Arc<Vec<u8>>,
    source: &'static str,
    /// Milliseconds since the Unix epoch.
    created_ms: u64,
    stats: Arc<VersionStats>,
}

/// One filter name in the store.
#[derive(Debug, Clone, Default)]
struct FilterState {
    /// Oldest first.
    versions: VecDeque<Stored>,
    /// The last number given.
    last: u64,
    current: u64,
    /// The version `current` replaced (what a rollback returns to).
    previous: Option<u64>,
    /// The current version was put in place through the API; the file
    /// does not decide it.
    pinned: bool,
    /// The module file of the config last built.
    path: Option<PathBuf>,
    canary: Option<Arc<Canary>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FilterState {
    fn get(&self, version: u64) -> Option<&Stored> {
        self.versions.iter().find(|s| s.version == version)
    }

    fn by_sha(&self, sha: &str) -> Option<&Stored> {
        self.versions.iter().rev().find(|s| s.sha256 == sha)
    }

    /// Stores `bytes` as a new version and returns its number.
    fn add(
        &mut self,
        name: &str,
        bytes: Arc<Vec<u8>>,
        sha256: String,
        source: &'static str,
        metrics: &Metrics,
    ) -> u64 {
        self.last += 1;
        let version = self.last;
        self.versions.push_back(Stored {
            version,
            sha256,
            bytes,
            source,
            created_ms: now_ms(),
            stats: Arc::new(VersionStats::new(metrics, name, version)),
        });
        version
    }

    fn make_current(&mut self, version: u64) {
        if self.current != version {
            self.previous = (self.current != 0).then_some(self.current);
            self.current = version;
        }
    }

    /// Drops the oldest versions past [`HISTORY`] that are not in use;
    /// returns their numbers.
    fn trim(&mut self) -> Vec<u64> {
        let keep = |v: u64, st: &FilterState| {
            v == st.current
                || Some(v) == st.previous
                || st.canary.as_ref().is_some_and(|c| c.version() == v)
        };
        let mut dropped = Vec::new();
        while self.versions.len() > HISTORY {
            let Some(i) = self.versions.iter().position(|s| !keep(s.version, self)) else {
                break;
            };
            if let Some(s) = self.versions.remove(i) {
                dropped.push(s.version);
            }
        }
        dropped
    }

    /// What the data directory keeps of it.
    fn saved(&self) -> SavedFilter {
        SavedFilter {
            last: self.last,
            current: self.current,
            previous: self.previous,
            pinned: self.pinned,
            path: self.path.clone(),
            versions: self
                .versions
                .iter()
                .map(|s| SavedVersion {
                    version: s.version,
                    sha256: s.sha256.clone(),
                    source: s.source.to_owned(),
                    created_ms: s.created_ms,
                })
                .collect(),
            canary: self.canary.as_ref().map(|c| c.spec.clone()),
        }
    }
}

/// Held while a change is made: one change at a time.
#[derive(Debug)]
struct Control {
    /// The running config was put through the API (and is what a restart
    /// comes back with), rather than read from the file.
    from_api: bool,
    /// The gateway is shutting down: no more changes.
    closed: bool,
}

/// Why a change is refused once the gateway is shutting down.
const CLOSED: &str = "the gateway is shutting down; it takes no more changes";

/// Why a change is refused while the data directory is still held by the
/// process this one takes over from.
const PENDING: &str = "this gateway is taking over from another process, which still holds the \
                       data directory (until it starts draining); it takes no changes until then";

/// A data directory another process still holds (see
/// [`crate::gateway::Gateway::build_taking_over`]).
#[derive(Debug, Clone)]
pub struct Pending {
    /// Where it is.
    pub path: PathBuf,
    /// What it held when this gateway was built (`state.json`'s content as
    /// re-serialized), to tell whether the other process changed it since.
    pub started_from: String,
}

/// The running generation and how to replace it.
#[derive(Debug)]
pub struct Live {
    /// The data plane's slot: what the server serves new requests by.
    current: Arc<Current>,
    /// The running generation (its proxy is the one in `current`).
    generation: ArcSwap<Generation>,
    /// The config `proxy` was built from.
    config: ArcSwap<Config>,
    /// The config file the gateway started from (what a reload re-reads,
    /// even after a config was put through the API).
    file: std::path::PathBuf,
    control: Mutex<Control>,
    /// The filter store as the current generation was built from it.
    filters: ArcSwap<BTreeMap<String, FilterState>>,
    /// Where changes are kept across restarts, when configured (released,
    /// with its lock, by [`Live::close`]).
    data: std::sync::Mutex<Option<Arc<DataDir>>>,
    /// The data directory this gateway waits to take over, if any.
    pending: std::sync::Mutex<Option<Pending>>,
    /// Canaries report here when they trip.
    trips: mpsc::UnboundedSender<Tripped>,
    tripped: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Tripped>>>,
    /// Set as the gateway starts shutting down, before [`Live::close`]
    /// waits for the change in progress: a build still running (its filter
    /// probes, say) is abandoned at once, so a guest cannot hold up the
    /// drain for as long as its wall-clock budget.
    closing: tokio::sync::watch::Sender<bool>,
    deps: Deps,
}

/// Why a change to the filter store was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No `[filters.NAME]` in the config.
    #[error("no filter named {0:?} in the config")]
    UnknownFilter(String),
    /// The store has no such version of the filter.
    #[error("filter {filter:?} has no version {version} (GET /filters lists the versions kept)")]
    UnknownVersion {
        /// Filter name.
        filter: String,
        /// The version asked for.
        version: u64,
    },
    /// Promote or roll back a canary that is not there, or roll back with
    /// nothing to return to.
    #[error("{0}")]
    Conflict(String),
    /// A canary spec that does not hold together.
    #[error("invalid canary: {0}")]
    BadCanary(String),
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
    /// The data directory could not be written; nothing changed.
    #[error("{0}")]
    Persist(String),
    /// The gateway is shutting down.
    #[error("{CLOSED}")]
    Closed,
    /// The data directory is not this gateway's yet.
    #[error("{PENDING}")]
    Pending,
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

/// Where a config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file (SIGHUP, a watched file, `POST /config/reload`).
    File,
    /// A document put through the management API.
    Api,
}

/// A filter-store change: what to do to one filter's state.
enum Change {
    Upload {
        bytes: Vec<u8>,
        sha256: String,
        activate: bool,
    },
    Activate(u64),
    Canary(CanarySpec),
    Promote,
    Rollback,
    AutoRollback(Tripped),
}

impl Change {
    fn what(&self) -> &'static str {
        match self {
            Change::Upload { .. } => "upload",
            Change::Activate(_) => "activate",
            Change::Canary(_) => "canary",
            Change::Promote => "promote",
            Change::Rollback => "rollback",
            Change::AutoRollback(_) => "automatic rollback",
        }
    }
}

/// The sections of `new` that differ from `old` and apply to the listener or
/// the engine, so cannot change while the gateway runs.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    if old.server != new.server {
        fixed.push("server");
    }
    if old.engine != new.engine {
        fixed.push("engine");
    }
    if old.admin != new.admin {
        fixed.push("admin");
    }
    if old.overload != new.overload {
        fixed.push("overload");
    }
    if old.watch != new.watch {
        fixed.push("watch");
    }
    if old.limits.listener() != new.limits.listener() {
        fixed.push("limits");
    }
    fixed
}

/// Empties the store of a filter the config no longer has, keeping only its
/// last version number, so a filter that comes back never reuses a number.
fn retire(st: &mut FilterState) {
    *st = FilterState {
        last: st.last,
        ..FilterState::default()
    };
}

/// The versions `old` holds and `new` does not, by filter name.
fn gone(
    old: &BTreeMap<String, FilterState>,
    new: &BTreeMap<String, FilterState>,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (name, o) in old {
        for s in &o.versions {
            if new.get(name).and_then(|n| n.get(s.version)).is_none() {
                out.push((name.clone(), s.version));
            }
        }
    }
    out
}

impl Live {
    /// The first generation, built from `config`, with the filter store
    /// and config a data directory kept, if one is configured and holds
    /// any. Nothing is written until [`Live::save_initial`].
    pub(crate) async fn start(
        config: Config,
        data: Option<(DataDir, Saved)>,
        pending: Option<Pending>,
        deps: Deps,
    ) -> Result<Live, Vec<ConfigError>> {
        let (trips, tripped) = mpsc::unbounded_channel();
        let mut control = Control {
            from_api: false,
            closed: false,
        };
        let mut filters = BTreeMap::new();
        if let Some((dir, saved)) = &data {
            control.from_api = saved.config.is_some();
            filters =
                restore_all(dir, saved, &config, &deps.metrics, &trips).map_err(|(name, m)| {
                    vec![ConfigError::new(
                        format!("filters.{name}"),
                        format!("{}: {m}", dir.path().display()),
                    )]
                })?;
        }
        let built = build(&config, &deps, None, &mut filters, true).await;
        let generation = match built {
            Ok(p) => p,
            Err(e) => {
                for (name, version) in gone(&filters, &BTreeMap::new()) {
                    VersionStats::forget(&deps.metrics, &name, version);
                }
                return Err(e);
            }
        };
        deps.caller.set_clusters(
            generation.proxy.clusters.clone(),
            config.limits.max_buffered_body,
        );
        Ok(Live {
            current: Arc::new(ArcSwap::new(generation.proxy.clone())),
            generation: ArcSwap::from_pointee(generation),
            file: std::path::PathBuf::from(&config.source),
            config: ArcSwap::from_pointee(config),
            control: Mutex::new(control),
            filters: ArcSwap::from_pointee(filters),
            // A directory read without its lock is not kept: it is taken
            // over (locked) later.
            data: std::sync::Mutex::new(match pending {
                Some(_) => None,
                None => data.map(|(dir, _)| Arc::new(dir)),
            }),
            pending: std::sync::Mutex::new(pending),
            trips,
            tripped: std::sync::Mutex::new(Some(tripped)),
            closing: tokio::sync::watch::Sender::new(false),
            deps,
        })
    }

    /// Writes what the first build settled (a module file read for the
    /// first time, say), once the whole gateway has been built, so a restart
    /// finds it.
    pub(crate) async fn save_initial(&self) -> Result<(), String> {
        let control = self.control.lock().await;
        let filters = self.filters.load_full();
        self.persist(&filters, control.from_api, &self.config())
            .await
    }

    /// Refuses every later change and releases the data directory (and its
    /// lock, once a write in progress is done): the gateway is shutting
    /// down, and another process may take over the directory.
    pub async fn close(&self) {
        self.abandon_builds();
        let mut control = self.control.lock().await;
        control.closed = true;
        self.data.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Abandons a build in progress and any that starts later (each is
    /// refused as [`Live::close`] refuses changes), without waiting for
    /// anything: the first step of a shutdown.
    pub fn abandon_builds(&self) {
        self.closing.send_replace(true);
    }

    fn is_pending(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Takes over the data directory `dir` (now locked by this process):
    /// when the process it took over from changed it since this one was
    /// built, that state is applied (as a reload would); then this
    /// gateway's state is written and changes are taken again.
    async fn adopt(&self, dir: DataDir, pending: &Pending) {
        let mut control = self.control.lock().await;
        if control.closed {
            return;
        }
        let saved = match dir.load() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("taking over the data directory: {e}; keeping the running state");
                Saved::default()
            }
        };
        let changed = serde_json::to_string(&saved).unwrap_or_default() != pending.started_from;
        *self.data.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(dir));
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if changed {
            tracing::warn!(
                "the data directory changed while this gateway started (a change made on the \
                 process it took over from): applying it"
            );
            if let Err(e) = self.apply_saved(&mut control, saved).await {
                tracing::error!(
                    "the other process's last changes cannot be applied here, the running \
                     state is kept (and written): {e}"
                );
            } else {
                tracing::info!("took over the data directory");
                return;
            }
        }
        let filters = self.filters.load_full();
        match self
            .persist(&filters, control.from_api, &self.config())
            .await
        {
            Ok(()) => tracing::info!("took over the data directory"),
            Err(e) => tracing::error!("took over the data directory, but: {e}"),
        }
    }

    /// Rebuilds from a state the data directory holds (config and filter
    /// store), as the first build would have.
    async fn apply_saved(&self, control: &mut Control, mut saved: Saved) -> Result<(), String> {
        let dir = self
            .data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("no data directory")?;
        let file = Config::load(&self.file).map_err(|e| e.to_string())?;
        let config =
            crate::gateway::api_config(file, &dir, &mut saved).map_err(|e| e.to_string())?;
        let fixed = restart_only_changes(&self.config(), &config);
        if !fixed.is_empty() {
            return Err(format!(
                "[{}] differ from this process's",
                fixed.join("], [")
            ));
        }
        let mut filters = restore_all(&dir, &saved, &config, &self.deps.metrics, &self.trips)
            .map_err(|(name, m)| format!("filters.{name}: {m}"))?;
        let (proxy, prev) =
            self.build_next(&config, &mut filters, true)
                .await
                .map_err(|errors| {
                    one_line(&ConfigErrors {
                        source: config.source.clone(),
                        errors,
                    })
                })?;
        let from_api = saved.config.is_some();
        self.commit(
            control,
            Some((proxy, &prev)),
            filters,
            from_api,
            config,
            false,
        )
        .await
    }

    /// Whether [`Live::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.control.try_lock().is_ok_and(|c| c.closed)
    }

    /// The current generation. A request loads it once and keeps it.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.current.load_full()
    }

    /// The slot the server loads the current generation from.
    pub fn current(&self) -> &Arc<Current> {
        &self.current
    }

    /// The running generation, as the control plane knows it.
    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// The config file the gateway started from.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// The config the current generation was built from.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the config with one put through the API: everything is
    /// built and validated first; on any error the running generation stays
    /// and every error is returned.
    pub async fn apply_config(&self, config: Config) -> Result<(), ConfigErrors> {
        self.apply_parsed(Ok(config), Origin::Api).await
    }

    /// Reads the config file at `path` and applies it.
    pub async fn reload_from(&self, path: &std::path::Path) -> Result<(), ConfigErrors> {
        self.apply_parsed(Config::load(path), Origin::File).await
    }

    /// Applies a config that parsed; counts and logs the outcome either way.
    pub async fn apply_parsed(
        &self,
        parsed: Result<Config, ConfigErrors>,
        origin: Origin,
    ) -> Result<(), ConfigErrors> {
        let mut control = self.control.lock().await;
        let result = match parsed {
            Ok(config) => self.apply_locked(&mut control, config, origin).await,
            Err(e) => Err(e),
        };
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.deps
            .metrics
            .config_reloads
            .get_or_create(&wasmgate_metrics::OutcomeLabels { outcome })
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
        origin: Origin,
    ) -> Result<(), ConfigErrors> {
        let source = config.source.clone();
        let fail = |errors| ConfigErrors {
            source: source.clone(),
            errors,
        };
        if control.closed {
            return Err(fail(vec![ConfigError::new("", CLOSED)]));
        }
        if self.is_pending() {
            return Err(fail(vec![ConfigError::new("admin.data_dir", PENDING)]));
        }
        let fixed = restart_only_changes(&self.config(), &config);
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
        let mut filters = (*self.filters.load_full()).clone();
        for (name, st) in &mut filters {
            if !config.filters.contains_key(name) {
                retire(st);
            }
        }
        let (proxy, prev) = self
            .build_next(&config, &mut filters, true)
            .await
            .map_err(fail)?;
        let from_api = origin == Origin::Api;
        self.commit(
            control,
            Some((proxy, &prev)),
            filters,
            from_api,
            config,
            false,
        )
        .await
        .map_err(|m| fail(vec![ConfigError::new("admin.data_dir", m)]))
    }

    /// Builds the next generation beside the running one (returned too); on
    /// failure, forgets the counters of the versions the attempt made.
    async fn build_next(
        &self,
        config: &Config,
        filters: &mut BTreeMap<String, FilterState>,
        read_files: bool,
    ) -> Result<(Generation, Arc<Generation>), Vec<ConfigError>> {
        let prev = self.generation();
        let mut closing = self.closing.subscribe();
        let built = tokio::select! {
            built = build(config, &self.deps, Some(&prev), filters, read_files) => built,
            // Abandoned mid-way: the filter store was changed only in
            // `filters`, the caller's copy, and nothing was committed.
            _ = closing.wait_for(|c| *c) => Err(vec![ConfigError::new("", CLOSED)]),
        };
        match built {
            Ok(p) => Ok((p, prev)),
            Err(errors) => {
                self.discard(filters);
                Err(errors)
            }
        }
    }

    /// Stops exporting the counters of versions a refused change made.
    fn discard(&self, attempted: &BTreeMap<String, FilterState>) {
        for (name, version) in gone(attempted, &self.filters.load()) {
            VersionStats::forget(&self.deps.metrics, &name, version);
        }
    }

    /// Writes the new state to the data directory, then makes the new
    /// generation (if any) current. When the write fails, nothing changes,
    /// unless `force` (an automatic rollback: taking a failing canary out of
    /// service matters more than remembering that it was).
    async fn commit(
        &self,
        control: &mut Control,
        generation: Option<(Generation, &Generation)>,
        mut filters: BTreeMap<String, FilterState>,
        from_api: bool,
        config: Config,
        force: bool,
    ) -> Result<(), String> {
        for f in filters.values_mut() {
            f.trim();
        }
        if let Err(e) = self.persist(&filters, from_api, &config).await {
            if !force {
                self.discard(&filters);
                return Err(e);
            }
            tracing::error!("applying the change anyway: {e}");
        }
        for (name, version) in gone(&self.filters.load(), &filters) {
            VersionStats::forget(&self.deps.metrics, &name, version);
        }
        if let Some((next, prev)) = generation {
            self.activate(next, prev, config.limits.max_buffered_body);
            self.config.store(Arc::new(config));
        }
        self.filters.store(Arc::new(filters));
        control.from_api = from_api;
        Ok(())
    }

    /// Writes the filter store (and the config, when it came through the
    /// API) to the data directory, if there is one, off the async workers.
    async fn persist(
        &self,
        filters: &BTreeMap<String, FilterState>,
        from_api: bool,
        config: &Config,
    ) -> Result<(), String> {
        let dir = self.data.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(dir) = dir else {
            return Ok(());
        };
        let saved = Saved {
            config: from_api.then(|| config.text.clone()),
            filters: filters
                .iter()
                .map(|(n, f)| (n.clone(), f.saved()))
                .collect(),
        };
        let modules: Vec<(String, Arc<Vec<u8>>)> = filters
            .values()
            .flat_map(|f| f.versions.iter())
            .map(|s| (s.sha256.clone(), s.bytes.clone()))
            .collect();
        let path = dir.path().display().to_string();
        let written = tokio::task::spawn_blocking(move || {
            let modules: Vec<(&str, &[u8])> = modules
                .iter()
                .map(|(sha, bytes)| (sha.as_str(), bytes.as_slice()))
                .collect();
            dir.save(&saved, &modules)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        written.map_err(|e| {
            let message = format!("cannot write the data directory {path}: {e}");
            tracing::error!("{message}");
            message
        })
    }

    /// Validates `bytes` as a new version of filter `name` (compiled off the
    /// request path, linked, and `init` run with every route's config that
    /// uses it). With `activate`, it becomes the current version; without,
    /// it is only stored (for a canary, say). Returns the filter's report.
    pub async fn upload_module(
        &self,
        name: &str,
        bytes: Vec<u8>,
        expected_sha256: Option<&str>,
        activate: bool,
    ) -> Result<serde_json::Value, SwapError> {
        if bytes.len() > MAX_MODULE_SIZE {
            return self.finish(name, "upload", Err(SwapError::TooLarge(bytes.len())));
        }
        let sha256 = sha256_hex(&bytes);
        if let Some(expected) = expected_sha256
            && !sha256.eq_ignore_ascii_case(expected.trim())
        {
            let e = SwapError::Digest {
                expected: expected.to_owned(),
                actual: sha256,
            };
            return self.finish(name, "upload", Err(e));
        }
        let change = Change::Upload {
            bytes,
            sha256,
            activate,
        };
        self.change(name, change).await
    }

    /// Makes stored version `version` of `name` the current one (pinned).
    pub async fn activate_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<serde_json::Value, SwapError> {
        self.change(name, Change::Activate(version)).await
    }

    /// Starts (or replaces) a canary of a stored version of `name`.
    pub async fn start_canary(
        &self,
        name: &str,
        spec: CanarySpec,
    ) -> Result<serde_json::Value, SwapError> {
        self.change(name, Change::Canary(spec)).await
    }

    /// Makes the canary version of `name` its current version.
    pub async fn promote(&self, name: &str) -> Result<serde_json::Value, SwapError> {
        self.change(name, Change::Promote).await
    }

    /// Ends the canary of `name`; with none running, returns `name` to the
    /// version before the current one.
    pub async fn rollback(&self, name: &str) -> Result<serde_json::Value, SwapError> {
        self.change(name, Change::Rollback).await
    }

    /// Applies one filter-store change; counts and logs the outcome.
    async fn change(&self, name: &str, change: Change) -> Result<serde_json::Value, SwapError> {
        let what = change.what();
        let mut control = self.control.lock().await;
        let result = self.change_locked(&mut control, name, change).await;
        // The report is of this change, not of one made after it.
        let result = result.map(|changed| {
            let mut report = self.filter_report(name);
            if !changed {
                report["unchanged"] = true.into();
            }
            report
        });
        drop(control);
        self.finish(name, what, result)
    }

    fn finish(
        &self,
        name: &str,
        what: &str,
        result: Result<serde_json::Value, SwapError>,
    ) -> Result<serde_json::Value, SwapError> {
        let known = self.config().filters.contains_key(name);
        if what == "upload" && known {
            let outcome = if result.is_ok() { "ok" } else { "rejected" };
            self.deps
                .metrics
                .filter_swaps
                .get_or_create(&wasmgate_metrics::SwapLabels {
                    filter: name.to_owned(),
                    outcome,
                })
                .inc();
        }
        match &result {
            Ok(report) if report["unchanged"] == true => tracing::info!(
                filter = name,
                "filter {what}: nothing to do (the canary had already ended)"
            ),
            Ok(report) => tracing::info!(
                filter = name,
                version = %report["version"],
                canary = %report["canary"]["version"],
                "filter {what}: done"
            ),
            Err(SwapError::Invalid(e)) => tracing::error!(
                filter = name,
                "filter {what} rejected, the current version stays: {}",
                one_line(e)
            ),
            Err(e) => tracing::error!(
                filter = name,
                "filter {what} rejected, the current version stays: {e}"
            ),
        }
        result
    }

    async fn change_locked(
        &self,
        control: &mut Control,
        name: &str,
        change: Change,
    ) -> Result<bool, SwapError> {
        if control.closed {
            return Err(SwapError::Closed);
        }
        if self.is_pending() {
            return Err(SwapError::Pending);
        }
        let config = self.config();
        if !config.filters.contains_key(name) {
            return Err(SwapError::UnknownFilter(name.to_owned()));
        }
        let mut filters = (*self.filters.load_full()).clone();
        let st = filters.entry(name.to_owned()).or_default();
        let unknown = |version| SwapError::UnknownVersion {
            filter: name.to_owned(),
            version,
        };
        // Set when the change ends a canary: the event to count.
        let mut event = None;
        // An upload that is only stored is validated as if it were current,
        // and the state without it made current is what is kept.
        let mut store_only = None;
        match change {
            Change::Upload {
                bytes,
                sha256: sha,
                activate,
            } => {
                let version = match st.by_sha(&sha) {
                    Some(s) if s.version == st.current || !activate => s.version,
                    _ => st.add(name, Arc::new(bytes), sha, "upload", &self.deps.metrics),
                };
                if !activate {
                    store_only = Some((st.clone(), version));
                }
                // Validated as the current version either way.
                st.make_current(version);
                st.pinned = true;
            }
            Change::Activate(version) => {
                st.get(version).ok_or_else(|| unknown(version))?;
                if st.canary.as_ref().is_some_and(|c| c.version() == version) {
                    st.canary = None;
                    event = Some("promoted");
                }
                st.make_current(version);
                st.pinned = true;
            }
            Change::Canary(spec) => {
                let version = spec.version;
                st.get(version).ok_or_else(|| unknown(version))?;
                if version == st.current {
                    return Err(SwapError::BadCanary(format!(
                        "version {version} is the current version of {name:?}"
                    )));
                }
                let canary =
                    Canary::new(name, spec, self.trips.clone()).map_err(SwapError::BadCanary)?;
                st.canary = Some(Arc::new(canary));
                event = Some("started");
            }
            Change::Promote => {
                let Some(c) = st.canary.take() else {
                    return Err(SwapError::Conflict(format!(
                        "filter {name:?} has no canary to promote"
                    )));
                };
                st.make_current(c.version());
                st.pinned = true;
                event = Some("promoted");
            }
            Change::Rollback => {
                if st.canary.take().is_some() {
                    event = Some("rolled_back");
                } else {
                    let Some(previous) = st.previous.filter(|v| st.get(*v).is_some()) else {
                        return Err(SwapError::Conflict(format!(
                            "filter {name:?} has no canary and no previous version to roll back to"
                        )));
                    };
                    st.make_current(previous);
                    st.pinned = true;
                }
            }
            Change::AutoRollback(t) => {
                if st.canary.as_ref().is_none_or(|c| c.id() != t.id) {
                    // Ended or replaced meanwhile.
                    return Ok(false);
                }
                st.canary = None;
                event = Some("auto_rolled_back");
            }
        }
        let force = event == Some("auto_rolled_back");
        // A version change reads no module file: another filter's file being
        // rewritten must neither block it nor ride along with it.
        let (proxy, prev) = self
            .build_next(&config, &mut filters, false)
            .await
            .map_err(|errors| {
                SwapError::Invalid(ConfigErrors {
                    source: format!("filter {name:?}"),
                    errors,
                })
            })?;
        let from_api = control.from_api;
        if let Some((kept, version)) = store_only {
            // Valid: keep the version, leave the running generation alone.
            drop(proxy);
            let mut filters = (*self.filters.load_full()).clone();
            filters.insert(name.to_owned(), kept);
            self.commit(control, None, filters, from_api, (*config).clone(), false)
                .await
                .map_err(SwapError::Persist)?;
            tracing::info!(
                filter = name,
                version,
                "filter version stored, not activated"
            );
            return Ok(true);
        }
        self.commit(
            control,
            Some((proxy, &prev)),
            filters,
            from_api,
            (*config).clone(),
            force,
        )
        .await
        .map_err(SwapError::Persist)?;
        if let Some(event) = event {
            self.deps
                .metrics
                .filter_canary_events
                .get_or_create(&wasmgate_metrics::CanaryLabels {
                    filter: name.to_owned(),
                    event,
                })
                .inc();
        }
        Ok(true)
    }

    /// Makes `proxy` current; starts the background tasks of clusters it
    /// added.
    fn activate(&self, next: Generation, prev: &Generation, max_body: usize) {
        for (name, c) in &next.proxy.clusters {
            let kept = prev
                .proxy
                .clusters
                .get(name)
                .is_some_and(|p| Arc::ptr_eq(p, c));
            if !kept {
                wasmgate_proxy::upstream::health::spawn(c);
                wasmgate_proxy::upstream::dns::spawn(c, self.deps.resolver.clone());
            }
        }
        self.deps
            .caller
            .set_clusters(next.proxy.clusters.clone(), max_body);
        self.current.store(next.proxy.clone());
        self.generation.store(Arc::new(next));
    }

    /// Starts the background work: the first generation's cluster tasks,
    /// and the task that rolls back canaries that trip.
    pub(crate) fn spawn_tasks(self: &Arc<Self>) {
        for cluster in self.proxy().clusters.values() {
            wasmgate_proxy::upstream::health::spawn(cluster);
            wasmgate_proxy::upstream::dns::spawn(cluster, self.deps.resolver.clone());
        }
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(pending) = pending {
            // Waits for the process this one takes over from to release
            // the data directory (it does as it starts draining).
            let live = Arc::downgrade(self);
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut said = started;
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let Some(live) = live.upgrade() else { break };
                    if live.is_closed() {
                        break;
                    }
                    match DataDir::open(&pending.path) {
                        Ok(dir) => {
                            live.adopt(dir, &pending).await;
                            break;
                        }
                        Err(e) => {
                            if said.elapsed() >= std::time::Duration::from_secs(10) {
                                said = tokio::time::Instant::now();
                                tracing::warn!(
                                    "still waiting for the data directory after {:?}: {e}",
                                    started.elapsed()
                                );
                            }
                        }
                    }
                }
            });
        }
        let taken = self
            .tripped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut tripped) = taken {
            let live = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(t) = tripped.recv().await {
                    let Some(live) = live.upgrade() else { break };
                    tracing::error!(
                        filter = &*t.filter,
                        version = t.version,
                        "canary failing: {} of its last {} requests failed or answered 5xx; \
                         rolling it back",
                        t.bad,
                        t.requests
                    );
                    // Each rollback in its own task, retried until it is
                    // done or the canary has ended some other way.
                    tokio::spawn(async move {
                        let name = t.filter.to_string();
                        let mut delay = std::time::Duration::from_millis(500);
                        while live
                            .change(&name, Change::AutoRollback(t.clone()))
                            .await
                            .is_err()
                            && !live.is_closed()
                        {
                            tracing::error!(
                                filter = name,
                                "automatic rollback failed; trying again in {delay:?}"
                            );
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(std::time::Duration::from_secs(30));
                        }
                    });
                }
            });
        }
    }

    /// One filter: its current version, canary, the versions kept (with
    /// their request counters), and how many versions and instances of it
    /// are alive (old versions live until the requests that use them end).
    pub fn filter_report(&self, name: &str) -> serde_json::Value {
        let generation = self.generation();
        let Some(l) = generation.modules.get(name) else {
            return serde_json::Value::Null;
        };
        let counts = self
            .deps
            .engine
            .live_counts()
            .into_iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, c)| c);
        let get = |f: fn(&wasmgate_engine::LiveCounts) -> i64| counts.as_deref().map_or(0, f);
        let store = self.filters.load();
        let state = store.get(name);
        let versions: Vec<serde_json::Value> = state
            .map(|st| {
                st.versions
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "version": s.version,
                            "sha256": s.sha256,
                            "source": s.source,
                            "created_ms": s.created_ms,
                            "size": s.bytes.len(),
                            "requests": s.stats.report(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let e = &l.current;
        serde_json::json!({
            "name": name,
            "version": e.version,
            "sha256": e.module.sha256(),
            "source": e.source,
            "pinned": state.is_some_and(|s| s.pinned),
            "previous": state.and_then(|s| s.previous),
            "canary": l.canary.as_ref().map(|(_, c)| c.report()),
            "versions": versions,
            "live_versions": get(|c| c.versions.load(std::sync::atomic::Ordering::Relaxed)),
            "live_instances": get(|c| c.instances.load(std::sync::atomic::Ordering::Relaxed)),
        })
    }

    /// Every filter, as [`Live::filter_report`] describes one.
    pub fn filters_report(&self) -> serde_json::Value {
        let names: Vec<String> = self.generation().modules.keys().cloned().collect();
        let filters: Vec<_> = names.iter().map(|n| self.filter_report(n)).collect();
        serde_json::json!({ "filters": filters })
    }

    /// Brings the live-version and live-instance gauges up to date.
    pub(crate) fn sample_metrics(&self) {
        for (name, c) in self.deps.engine.live_counts() {
            let labels = wasmgate_metrics::FilterNameLabels {
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

/// Every filter's state as the data directory kept it: restored for the
/// filters `config` has, retired (only the last version number kept) for
/// the others. An error names its filter.
fn restore_all(
    dir: &DataDir,
    saved: &Saved,
    config: &Config,
    metrics: &Metrics,
    trips: &mpsc::UnboundedSender<Tripped>,
) -> Result<BTreeMap<String, FilterState>, (String, String)> {
    let mut filters = BTreeMap::new();
    for (name, f) in &saved.filters {
        let mut state = if config.filters.contains_key(name) {
            restore(dir, name, f, metrics, trips).map_err(|m| (name.clone(), m))?
        } else {
            FilterState::default()
        };
        state.last = state.last.max(f.last);
        if !config.filters.contains_key(name) {
            retire(&mut state);
        }
        filters.insert(name.clone(), state);
    }
    Ok(filters)
}

/// A filter's state as the data directory kept it, with its modules read
/// back (and their digests checked).
fn restore(
    dir: &DataDir,
    name: &str,
    f: &SavedFilter,
    metrics: &Metrics,
    trips: &mpsc::UnboundedSender<Tripped>,
) -> Result<FilterState, String> {
    let mut versions = VecDeque::new();
    for v in &f.versions {
        let bytes = dir.module(&v.sha256)?;
        versions.push_back(Stored {
            version: v.version,
            sha256: v.sha256.clone(),
            bytes: Arc::new(bytes),
            source: if v.source == "upload" {
                "upload"
            } else {
                "file"
            },
            created_ms: v.created_ms,
            stats: Arc::new(VersionStats::new(metrics, name, v.version)),
        });
    }
    let state = FilterState {
        versions,
        last: f.last,
        current: f.current,
        previous: f.previous,
        pinned: f.pinned,
        path: f.path.clone(),
        canary: match &f.canary {
            Some(spec) => Some(Arc::new(Canary::new(name, spec.clone(), trips.clone())?)),
            None => None,
        },
    };
    if state.current != 0 && state.get(state.current).is_none() {
        return Err(format!(
            "the data directory names version {} as current but does not hold it",
            state.current
        ));
    }
    Ok(state)
}

/// The module of one stored version, compiled with `f`'s settings, or kept
/// from `prev` when it ran there with the same settings (as the current
/// version or as a canary).
async fn entry(
    name: &str,
    f: &FilterConfig,
    deps: &Deps,
    prev: Option<&Generation>,
    s: &Stored,
) -> Result<ModuleEntry, String> {
    if let Some(l) = prev.and_then(|p| p.modules.get(name)) {
        let candidates = std::iter::once(&l.current).chain(l.canary.as_ref().map(|(e, _)| e));
        for e in candidates {
            if e.version == s.version && e.module.sha256() == s.sha256 && e.config == *f {
                return Ok(e.clone());
            }
        }
    }
    let limits = FilterLimits {
        memory: f.memory_limit,
        cpu: f.cpu_limit,
        wall: f.wall_limit,
    };
    let engine = deps.engine.clone();
    let owned_name = name.to_owned();
    let origin = match s.source {
        "upload" => format!("upload for {name:?}"),
        _ => f.path.display().to_string(),
    };
    let bytes = s.bytes.clone();
    // Compiling takes a while: off the async workers.
    let loaded = tokio::task::spawn_blocking(move || {
        engine.load_bytes(&owned_name, &origin, &bytes, limits)
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut m = loaded.map_err(|e| e.to_string())?;
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
    // Values never read (`Config::parse` reads them) are left out.
    let vars = f
        .vars
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.expose()?.to_owned())))
        .collect();
    m.grant(f.kv_quota, vars, outbound);
    Ok(ModuleEntry {
        module: Arc::new(m),
        config: f.clone(),
        version: s.version,
        source: s.source,
        stats: s.stats.clone(),
    })
}

/// Settles filter `name`'s current version (reading its module file when
/// `read_files` and the API has not pinned it, or when it has none yet) and
/// loads it and its canary.
async fn resolve(
    name: &str,
    f: &FilterConfig,
    deps: &Deps,
    prev: Option<&Generation>,
    st: &mut FilterState,
    read_files: bool,
) -> Result<Loaded, ConfigError> {
    let key = format!("filters.{name}.path");
    // The config points the filter at another file: the file decides again.
    if st.path.as_ref() != Some(&f.path) {
        st.pinned = false;
    }
    st.path = Some(f.path.clone());
    if (!st.pinned && read_files) || st.get(st.current).is_none() {
        let path = f.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path))
            .await
            .map_err(|e| ConfigError::new(&key, e.to_string()))?;
        let bytes = read.map_err(|e| {
            ConfigError::new(&key, format!("cannot read {}: {e}", f.path.display()))
        })?;
        let sha = sha256_hex(&bytes);
        let version = match st.get(st.current) {
            Some(s) if s.sha256 == sha => s.version,
            _ => st.add(name, Arc::new(bytes), sha, "file", &deps.metrics),
        };
        st.make_current(version);
        st.pinned = false;
    }
    let current = st.get(st.current).expect("the current version is stored");
    let current = entry(name, f, deps, prev, current)
        .await
        .map_err(|m| ConfigError::new(&key, m))?;
    let canary = match &st.canary {
        None => None,
        Some(c) => {
            let key = format!("filters.{name} canary");
            let s = st.get(c.version()).ok_or_else(|| {
                ConfigError::new(&key, format!("version {} is not stored", c.version()))
            })?;
            let e = entry(name, f, deps, prev, s)
                .await
                .map_err(|m| ConfigError::new(&key, format!("version {}: {m}", c.version())))?;
            Some((e, c.clone()))
        }
    };
    Ok(Loaded { current, canary })
}

/// Why a route's filter could not be set up.
struct ArmError {
    /// Reads after "filter NAME".
    message: String,
    /// Its probe ran out of wall-clock time: the build stops probing, so
    /// that a filter which blocks as it starts holds the build (and the
    /// control lock) up once, not once per route.
    hung: bool,
}

/// One version of a route's filter: its `init` run with the route's config,
/// and its instance pool.
async fn arm(
    route: &Arc<str>,
    config_json: &str,
    fc: &FilterConfig,
    e: &ModuleEntry,
    metrics: &Arc<Metrics>,
) -> Result<Arm, ArmError> {
    let info = e
        .module
        .probe(route, config_json)
        .await
        .map_err(|f| match f {
            FilterFailure::WallClock(wall) => ArmError {
                message: format!(
                    " on route {route:?} did not finish starting (instantiation and init) \
                     within its wall_limit of {wall:?}; a filter must not block while it starts"
                ),
                hung: true,
            },
            f => ArmError {
                message: format!(" {f}"),
                hung: false,
            },
        })?;
    let needs = Needs::from_wit(info).map_err(|m| ArmError {
        message: format!(": {m}"),
        hung: false,
    })?;
    let policy = PoolPolicy {
        size: fc.pool_size as usize,
        max_uses: fc.max_uses,
        recycle_above: fc.recycle_memory,
        fresh: fc.isolation == Isolation::Fresh,
        acquire_timeout: fc.pool_timeout,
        wall_limit: fc.wall_limit,
        quarantine_after: fc.quarantine_after,
    };
    Ok(Arm {
        pool: InstancePool::new(
            e.module.clone(),
            route.clone(),
            Arc::from(config_json),
            policy,
            metrics.clone(),
        ),
        needs,
        version: e.version,
        stats: e.stats.clone(),
    })
}

/// Builds a whole generation from `config` and the filter store, keeping
/// what did not change from `prev`; module files are read only with
/// `read_files` (a config reload, not a version change). Every error is
/// collected, with its key path.
async fn build(
    config: &Config,
    deps: &Deps,
    prev: Option<&Generation>,
    filters: &mut BTreeMap<String, FilterState>,
    read_files: bool,
) -> Result<Generation, Vec<ConfigError>> {
    let metrics = &deps.metrics;
    let mut errors = Vec::new();
    let access_log = match (&config.access_log, prev.map(|p| &p.proxy)) {
        (Some(target), Some(p)) if Some(target) == p.access_log_target() => p.access_log().cloned(),
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
        if let Some(p) = prev.and_then(|p| p.proxy.clusters.get(n))
            && p.config == *c
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

    let mut modules: BTreeMap<String, Loaded> = BTreeMap::new();
    for (name, f) in &config.filters {
        let st = filters.entry(name.clone()).or_default();
        match resolve(name, f, deps, prev, st, read_files).await {
            Ok(m) => {
                modules.insert(name.clone(), m);
            }
            Err(e) => errors.push(e),
        }
    }

    let mut routes = Vec::new();
    let mut hung = false;
    for (i, r) in config.routes.iter().enumerate() {
        if hung {
            break;
        }
        let name: Arc<str> = Arc::from(r.name.as_str());
        let mut chain = Vec::new();
        for (j, rf) in r.filters.iter().enumerate() {
            if hung {
                break;
            }
            let Some(loaded) = modules.get(rf.name.as_str()) else {
                continue;
            };
            let fc = &config.filters[&rf.name];
            let key = format!("routes[{i}].filters[{j}].config");
            let stable = arm(&name, &rf.config_json, fc, &loaded.current, metrics).await;
            let canary = match &loaded.canary {
                None => Ok(None),
                Some(_) if stable.as_ref().is_err_and(|e| e.hung) => Ok(None),
                Some((e, c)) => arm(&name, &rf.config_json, fc, e, metrics)
                    .await
                    .map(|a| Some((c.clone(), a)))
                    .map_err(|m| ArmError {
                        message: format!(" (canary version {}){}", e.version, m.message),
                        ..m
                    }),
            };
            match (stable, canary) {
                (Ok(stable), Ok(canary)) => chain.push(ChainFilter {
                    stable,
                    canary,
                    fail_open: fc.failure_policy == FailurePolicy::FailOpen,
                }),
                (stable, canary) => {
                    for m in [stable.err(), canary.err()].into_iter().flatten() {
                        hung |= m.hung;
                        errors.push(ConfigError::new(
                            &key,
                            format!("filter {:?}{}", rf.name, m.message),
                        ));
                    }
                }
            }
        }
        use wasmgate_config::route_config::Action;
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
                    Some(v) => RouteTarget::Weighted(WeightedClusters::new(v)),
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
                    wasmgate_config::PathMatch::Prefix(p) => Some(p.clone()),
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
    let policy = wasmgate_proxy::proxy::Policy {
        path: PathPolicy {
            allow_encoded_slashes: config.server.allow_encoded_slashes,
        },
        forwarding: wasmgate_proxy::forwarding::Forwarding::new(config.server.forwarding.clone()),
        limits: wasmgate_proxy::proxy::RequestLimits {
            max_request_body: config.limits.max_request_body,
            request_timeout: config.limits.request_timeout,
            tunnel_idle_timeout: config.limits.tunnel_idle_timeout,
            max_buffered_body: config.limits.max_buffered_body,
        },
        tls: deps.tls.clone(),
        overload: deps.overload.clone(),
    };
    let proxy = Proxy::new(
        RouteTable::new(routes),
        clusters,
        metrics.clone(),
        config.access_log.clone().zip(access_log),
        policy,
    );
    Ok(Generation {
        proxy: Arc::new(proxy),
        modules,
    })
}

impl Live {
    /// For the file watcher, read in one go between changes: the running
    /// config and generation, whether that config came through the
    /// management API (not from the file), and the filters the API pinned.
    pub(crate) async fn watch_view(&self) -> (Arc<Config>, Arc<Generation>, bool, Vec<String>) {
        let control = self.control.lock().await;
        let filters = self.filters.load();
        let pinned = filters.iter().filter(|(_, s)| s.pinned);
        let pinned = pinned.map(|(n, _)| n.clone()).collect();
        (self.config(), self.generation(), control.from_api, pinned)
    }
}
