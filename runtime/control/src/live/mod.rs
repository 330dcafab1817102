//! The live configuration and the changes made to it while the gateway runs:
//! a config reload (SIGHUP, a watched file, the management API), a filter
//! module upload, and the version changes of the filter store (activate,
//! canary, promote, roll back). Every one ends in the same step: build a
//! new [`Generation`] beside the running one ([`crate::build`]), validate
//! everything (compile, link, every changed route's `init`), write the
//! result to the data directory when there is one, and only then swap it
//! in with one atomic store.
//!
//! - **Atomic per request.** The server loads the current `Proxy` once per
//!   request, so a request runs wholly on the generation that was current
//!   when it arrived; requests in flight finish on the old one, which is
//!   freed (with its filter versions and instances) when the last of them
//!   ends.
//! - **The filter store** ([`crate::versions`]). Each filter name keeps its
//!   last [`HISTORY`](crate::versions::HISTORY)
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
//!   a filter version whose settings are the same keeps its compiled module,
//!   and a route's use of it whose route config is the same keeps its
//!   `RouteVersion` (no `init` again, the pool carries over).
//! - **Descriptor sets** ([`crate::descriptors`]) are read at every build;
//!   one put through the API stands in for its file, rebuilt the same way.
//! - **A failure changes nothing.** Every error is reported with its key
//!   path, and the running generation keeps serving.

mod config_change;
mod descriptor_change;
mod filter_change;
mod report;
mod takeover;

pub use config_change::{Origin, TenantChangeError, restart_only_changes};
pub use descriptor_change::DescriptorError;
pub use filter_change::{MAX_MODULE_SIZE, SwapError};
pub use takeover::Pending;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, mpsc};

pub(crate) use crate::build::Deps;
use crate::build::build;
pub use crate::build::{Generation, RunningVersions};
use crate::store::{DataDir, Saved};
use crate::versions::{FilterVersions, gone};
use filter_change::Change;
use takeover::restore_all;
use wasmgate_config::{Config, ConfigError, ConfigErrors};
use wasmgate_proxy::canary::{Tripped, VersionStats};
use wasmgate_proxy::proxy::{Current, Proxy};

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
    /// The config as the file (or the embedder) last gave it: what a config
    /// put through the API may reach is judged against it
    /// ([`Config::api_reach_errors`]).
    file_config: ArcSwap<Config>,
    control: Mutex<Control>,
    /// The filter store as the current generation was built from it.
    filters: ArcSwap<BTreeMap<String, FilterVersions>>,
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
    /// The tenants' admin tokens (hashed, in the data directory).
    tokens: Arc<crate::tokens::TenantTokens>,
    deps: Deps,
}

impl Live {
    /// The first generation, built from `config`, with the filter store
    /// and config a data directory kept, if one is configured and holds
    /// any. Nothing is written until [`Live::save_initial`].
    pub(crate) async fn start(
        config: Config,
        file_config: Config,
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
            deps.descriptors
                .restore_saved(dir, saved)
                .map_err(|(name, m)| vec![ConfigError::new(format!("descriptors.{name}"), m)])?;
            filters =
                restore_all(dir, saved, &config, &deps.metrics, &trips).map_err(|(name, m)| {
                    vec![ConfigError::new(
                        format!("filters.{name}"),
                        format!("{}: {m}", dir.path().display()),
                    )]
                })?;
        }
        let tokens = crate::tokens::TenantTokens::open(
            config.admin.as_ref().and_then(|a| a.data_dir.as_deref()),
        )
        .map(Arc::new)
        .map_err(|m| vec![ConfigError::new("admin.data_dir", m)])?;
        let mut config = config;
        deps.guard.set(crate::build::guard_rules(&config));
        crate::build::apply_quotas(&config, &deps.engine);
        let built =
            crate::build::build_apart(&mut config, &deps, None, None, &mut filters, true).await;
        let generation = match built {
            Ok((p, refused)) => {
                for (tenant, e) in &refused {
                    deps.metrics
                        .tenant_refusals
                        .get_or_create(&wasmgate_metrics::TenantLabels {
                            tenant: tenant.clone(),
                        })
                        .inc();
                    tracing::error!(tenant, "tenant not started: {}", one_line(e));
                }
                deps.guard.set(crate::build::guard_rules(&config));
                crate::build::apply_quotas(&config, &deps.engine);
                if let Some(tls) = &deps.tls
                    && let Err(e) = {
                        let (certs, no_sni) = crate::build::tenant_certs(&config);
                        tls.set_tenant_certs(certs, no_sni)
                    }
                {
                    tracing::error!("the tenants' certificates are not served: {e}");
                }
                p
            }
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
            file_config: ArcSwap::from_pointee(file_config),
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
            tokens,
            deps,
        })
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

    /// Whether [`Live::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.control.try_lock().is_ok_and(|c| c.closed)
    }

    /// The current generation. A request loads it once and keeps it.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.current.load_full()
    }

    /// The response cache (one for the gateway's life, across reloads).
    pub fn response_cache(&self) -> &Arc<wasmgate_proxy::response_cache::ResponseCache> {
        &self.deps.response_cache
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

    /// The config as the file (or the embedder) last gave it, which decides
    /// what a config put through the admin API may reach.
    pub fn file_config(&self) -> Arc<Config> {
        self.file_config.load_full()
    }

    /// Builds the next generation beside the running one (returned too); on
    /// failure, forgets the counters of the versions the attempt made.
    async fn build_next(
        &self,
        config: &Config,
        filters: &mut BTreeMap<String, FilterVersions>,
        read_files: bool,
    ) -> Result<(Generation, Arc<Generation>), Vec<ConfigError>> {
        let prev = self.generation();
        let mut closing = self.closing.subscribe();
        let none_frozen = std::collections::HashSet::new();
        let built = tokio::select! {
            built = build(config, &self.deps, Some(&prev), filters, read_files, &none_frozen) => {
                built.map_err(crate::build::flatten)
            }
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

    /// As [`Live::build_next`], with each tenant apart (see
    /// [`crate::build::build_apart`]): `config` loses (or gets back as they
    /// run) the tenants refused, which are returned with their errors.
    /// `read_files`: read every filter's module file again (a reload); a
    /// tenant's change through the API reads only the files it names anew.
    async fn build_next_apart(
        &self,
        config: &mut Config,
        filters: &mut BTreeMap<String, FilterVersions>,
        read_files: bool,
    ) -> Result<
        (
            Generation,
            Arc<Generation>,
            wasmgate_config::tenant::Refused,
        ),
        Vec<ConfigError>,
    > {
        let prev = self.generation();
        let running_config = self.config();
        let running_filters = self.filters.load_full();
        let running = crate::build::Running {
            config: &running_config,
            filters: &running_filters,
        };
        let mut closing = self.closing.subscribe();
        let built = tokio::select! {
            built = crate::build::build_apart(config, &self.deps, Some(&prev), Some(running), filters, read_files) => built,
            _ = closing.wait_for(|c| *c) => Err(vec![ConfigError::new("", CLOSED)]),
        };
        match built {
            Ok((p, refused)) => Ok((p, prev, refused)),
            Err(errors) => {
                self.discard(filters);
                Err(errors)
            }
        }
    }

    /// Stops exporting the counters of versions a refused change made.
    fn discard(&self, attempted: &BTreeMap<String, FilterVersions>) {
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
        mut filters: BTreeMap<String, FilterVersions>,
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
            self.deps.guard.set(crate::build::guard_rules(&config));
            crate::build::apply_quotas(&config, &self.deps.engine);
            if let Some(tls) = &self.deps.tls
                && let Err(e) = {
                    let (certs, no_sni) = crate::build::tenant_certs(&config);
                    tls.set_tenant_certs(certs, no_sni)
                }
            {
                tracing::error!("the tenants' certificates are not served: {e}");
            }
            let used: Vec<&str> = next.descriptors.values().map(|s| &*s.sha256).collect();
            self.deps.descriptors.keep_only(&used);
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
        filters: &BTreeMap<String, FilterVersions>,
        from_api: bool,
        config: &Config,
    ) -> Result<(), String> {
        let dir = self.data.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(dir) = dir else {
            return Ok(());
        };
        // The sets put through the API that the config still has.
        let descriptors: Vec<(String, Arc<Vec<u8>>, std::path::PathBuf, String)> = self
            .deps
            .descriptors
            .uploaded()
            .into_iter()
            .filter(|(n, _, replaces)| {
                config
                    .descriptors
                    .get(n)
                    .is_some_and(|d| &d.path == replaces)
            })
            .map(|(n, bytes, replaces)| {
                let sha = wasmgate_engine::sha256_hex(&bytes);
                (n, bytes, replaces, sha)
            })
            .collect();
        let saved = Saved {
            config: from_api.then(|| config.text.clone()),
            tenants: config
                .tenants
                .iter()
                .filter(|(_, t)| t.managed == wasmgate_config::Managed::Api)
                .map(|(n, t)| (n.clone(), t.text.clone()))
                .collect(),
            filters: filters
                .iter()
                .map(|(n, f)| (n.clone(), f.saved()))
                .collect(),
            descriptors: descriptors
                .iter()
                .map(|(n, _, replaces, sha256)| {
                    let kept = crate::store::SavedDescriptor {
                        sha256: sha256.clone(),
                        replaces: replaces.clone(),
                    };
                    (n.clone(), kept)
                })
                .collect(),
        };
        let modules: Vec<(String, Arc<Vec<u8>>)> = filters
            .values()
            .flat_map(|f| f.versions.iter())
            .map(|s| (s.sha256.clone(), s.bytes.clone()))
            .collect();
        let descriptors: Vec<(String, Arc<Vec<u8>>)> = descriptors
            .into_iter()
            .map(|(_, bytes, _, sha)| (sha, bytes))
            .collect();
        let path = dir.path().display().to_string();
        let written = tokio::task::spawn_blocking(move || {
            dir.save(&saved, &as_slices(&modules), &as_slices(&descriptors))
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

    /// Makes `proxy` current; starts the background tasks of clusters it
    /// added.
    fn activate(&self, next: Generation, prev: &Generation, max_body: usize) {
        for (tenant, clusters) in &next.proxy.clusters {
            for (name, c) in clusters {
                let kept = prev
                    .proxy
                    .clusters
                    .get(tenant)
                    .and_then(|m| m.get(name))
                    .is_some_and(|p| Arc::ptr_eq(p, c));
                if !kept {
                    wasmgate_proxy::upstream::health::spawn(c);
                    wasmgate_proxy::upstream::dns::spawn(c, self.deps.resolver.clone());
                }
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
        for cluster in self.proxy().clusters.values().flat_map(|m| m.values()) {
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

    /// The shared parts every generation uses.
    /// The tenants' admin tokens.
    pub fn tokens(&self) -> &crate::tokens::TenantTokens {
        &self.tokens
    }

    pub(crate) fn deps(&self) -> &Deps {
        &self.deps
    }
}

/// (sha256, bytes) pairs as the data directory's `save` takes them.
fn as_slices(list: &[(String, Arc<Vec<u8>>)]) -> Vec<(&str, &[u8])> {
    list.iter()
        .map(|(sha, bytes)| (sha.as_str(), bytes.as_slice()))
        .collect()
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
