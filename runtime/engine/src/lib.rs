//! The filter engine: the only part of the host that touches wasmtime.
//!
//! - [`FilterEngine`] owns the one `wasmtime::Engine` (component model, pooling
//!   allocator, epoch interruption), the `Linker` with WASI and the host imports,
//!   and the epoch ticker thread that enforces CPU budgets.
//! - [`FilterModule`] is a compiled, pre-linked component (`InstancePre`): a
//!   filter is compiled once at load, never per request.
//! - [`FilterInstance`] is one instance in its own `Store`, with a memory cap and
//!   a per-call CPU deadline. A trap, a blown CPU budget or the memory cap fails
//!   the call with a [`FilterFailure`]; the instance is then dropped.
//!
//! - [`InstancePool`] reuses instances, one call at a time each, per (filter
//!   version, route config); see `pool.rs`.

mod bindings;
mod cache;
mod contract_0_1;
pub mod edits;
pub mod exchange;
mod host;
pub mod inspect;
pub mod limits;
mod meter;
mod pool;
pub mod quota;
mod reap;
pub mod services;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use bindings::{v0_1, v0_2};
pub use bindings::{wit, wit_outbound};
use cache::CompileCache;
pub use cache::{CacheOutcome, sha256_hex};
use edits::Needs;
use exchange::{Exchange, FilterCarry, Phase, RequestOutcome, ResponseOutcome};
pub use host::CallSite;
use host::HostState;
pub use limits::{LimitCounts, LiveCounts, MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLES};
pub use pool::{InstancePool, PoolPolicy, PoolStats};
pub use quota::{Quota, QuotaRefusal, RequestGuard, TenantQuota};

use wasmgate_config::{EngineConfig, Scoped};

/// Why a filter module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not WebAssembly, a core module, or an invalid component.
    #[error("{path}: {reason}")]
    NotAComponent {
        /// The file.
        path: String,
        /// What it is instead.
        reason: String,
    },
    /// A component that cannot run within its limits (too many memories or
    /// tables, or more memory at start than its cap).
    #[error("{path}: cannot run within its limits: {reason}")]
    TooLarge {
        /// The file.
        path: String,
        /// What does not fit.
        reason: String,
    },
    /// A valid component that does not fit the host: wrong exports or imports
    /// the host does not provide.
    #[error("{path}: does not implement the wasmgate:filter contract (0.2 or 0.1): {reason}")]
    Contract {
        /// The file.
        path: String,
        /// What is missing or mismatched.
        reason: String,
    },
}

/// How a filter call failed. Each one fails only the request it served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FilterFailure {
    /// The guest trapped (panic, unreachable, stack overflow, ...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past its CPU budget and was interrupted.
    #[error("exceeded its CPU budget of {0:?}")]
    CpuBudget(Duration),
    /// The instance tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {0} bytes")]
    Memory(u64),
    /// `init` returned an error for this route's config.
    #[error("rejected its config: {0}")]
    Init(String),
    /// No instance could be created (e.g. every pooling slot is in use).
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    /// The filter returned something the host cannot apply.
    #[error("returned an invalid decision: {0}")]
    InvalidDecision(edits::InvalidEdit),
    /// Every instance of the route's pool stayed busy for the whole wait.
    #[error("had no free instance: all {size} were busy for {waited:?}")]
    PoolExhausted {
        /// The pool's size.
        size: usize,
        /// How long the call waited.
        waited: Duration,
    },
    /// The call took longer than its wall-clock budget (host calls included).
    #[error("exceeded its wall-clock budget of {0:?}")]
    WallClock(Duration),
    /// The filter failed too often in a row and is benched for a while (the
    /// time left; zero while its trial call runs); calls fail at once
    /// without running it.
    #[error("is quarantined after failing repeatedly (next try in {0:?})")]
    Quarantined(Duration),
    /// The call was not made, or was ended, because its tenant used up a
    /// quota: the tenant's load, not the filter's fault.
    #[error("could not run: {0}")]
    Quota(QuotaRefusal),
}

impl FilterFailure {
    /// Every [`FilterFailure::code`].
    pub const CODES: [&'static str; 10] = [
        "filter_trap",
        "filter_cpu_budget",
        "filter_memory_limit",
        "filter_init_failed",
        "filter_unavailable",
        "filter_invalid_decision",
        "filter_pool_exhausted",
        "filter_wall_clock",
        "filter_quarantined",
        "tenant_quota",
    ];

    /// A short machine-readable code for error bodies, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            FilterFailure::Trap(_) => "filter_trap",
            FilterFailure::CpuBudget(_) => "filter_cpu_budget",
            FilterFailure::Memory(_) => "filter_memory_limit",
            FilterFailure::Init(_) => "filter_init_failed",
            FilterFailure::Instantiate(_) => "filter_unavailable",
            FilterFailure::InvalidDecision(_) => "filter_invalid_decision",
            FilterFailure::PoolExhausted { .. } => "filter_pool_exhausted",
            FilterFailure::WallClock(_) => "filter_wall_clock",
            FilterFailure::Quarantined(_) => "filter_quarantined",
            FilterFailure::Quota(_) => "tenant_quota",
        }
    }
}

/// Per-filter limits, from `[filters.NAME]`.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// Linear memory cap per instance.
    pub memory: u64,
    /// CPU time per call.
    pub cpu: Duration,
    /// Wall-clock time per entry into the guest: instantiation with `init`,
    /// and each call. It bounds what the CPU deadline cannot reach, a guest
    /// blocked inside a host call (a WASI sleep or poll, say).
    pub wall: Duration,
}

/// How much of a table slot is reset in place rather than decommitted when
/// PAGEMAP_SCAN finds its written pages: all of it (the pool's tables hold
/// wasmtime's default 20,000 elements, well under this).
const TABLE_KEEP_RESIDENT: usize = 1 << 20;

/// The same for a linear memory: its lowest 4 MiB, which hold a typical
/// guest's stack, data and working heap. Written pages above it are given
/// back to the kernel, so a freed slot keeps at most this much resident
/// however large its last instance grew.
const MEMORY_KEEP_RESIDENT: u64 = 4 << 20;

/// The shared wasmtime engine, linker and epoch ticker.
pub struct FilterEngine {
    engine: Engine,
    linker: Linker<HostState>,
    tick: Duration,
    ticker_stop: Arc<AtomicBool>,
    cache: Option<CompileCache>,
    services: Arc<services::HostServices>,
    live: dashmap::DashMap<Scoped, Arc<LiveCounts>>,
    /// Compiled components by the sha256 of their bytes, shared by every
    /// module loaded from the same bytes.
    components: Arc<Components>,
    /// Modules loaded so far, by where their compiled code came from.
    loads: [std::sync::atomic::AtomicU64; 3],
}

/// Components no module uses any more, kept for reuse (a swap back to an
/// earlier build, a tenant removed and added again).
const RECENT_COMPONENTS: usize = 8;

/// Compiled components by the sha256 of their bytes: every one a loaded
/// module uses (so modules with the same bytes, in any number of tenants,
/// share one compiled copy), and the [`RECENT_COMPONENTS`] last ones no
/// module uses any more.
#[derive(Default)]
struct Components {
    inner: std::sync::Mutex<ComponentsInner>,
}

#[derive(Default)]
struct ComponentsInner {
    used: std::collections::HashMap<String, (wasmtime::component::Component, usize)>,
    recent: std::collections::VecDeque<(String, wasmtime::component::Component)>,
}

/// A module's hold on its compiled component; the last one's drop moves it
/// to the recent few.
struct ComponentRef {
    set: Arc<Components>,
    sha256: String,
}

impl Components {
    fn lock(&self) -> std::sync::MutexGuard<'_, ComponentsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The component compiled from bytes with this digest, if one is kept,
    /// with a hold on it.
    fn get(
        self: &Arc<Self>,
        sha256: &str,
    ) -> Option<(wasmtime::component::Component, ComponentRef)> {
        let mut inner = self.lock();
        let component = if let Some((c, n)) = inner.used.get_mut(sha256) {
            *n += 1;
            c.clone()
        } else {
            let i = inner.recent.iter().position(|(s, _)| s == sha256)?;
            let (s, c) = inner.recent.remove(i)?;
            inner.used.insert(s, (c.clone(), 1));
            c
        };
        Some((component, self.hold(sha256)))
    }

    /// Keeps a component just compiled, with a hold on it.
    fn insert(
        self: &Arc<Self>,
        sha256: &str,
        component: &wasmtime::component::Component,
    ) -> ComponentRef {
        let mut inner = self.lock();
        inner
            .used
            .entry(sha256.to_owned())
            .or_insert_with(|| (component.clone(), 0))
            .1 += 1;
        self.hold(sha256)
    }

    fn hold(self: &Arc<Self>, sha256: &str) -> ComponentRef {
        ComponentRef {
            set: self.clone(),
            sha256: sha256.to_owned(),
        }
    }

    /// Distinct compiled components in memory.
    fn len(&self) -> usize {
        let inner = self.lock();
        inner.used.len() + inner.recent.len()
    }
}

impl Drop for ComponentRef {
    fn drop(&mut self) {
        let mut inner = self.set.lock();
        let Some((_, n)) = inner.used.get_mut(&self.sha256) else {
            return;
        };
        *n -= 1;
        if *n == 0
            && let Some((c, _)) = inner.used.remove(&self.sha256)
        {
            inner
                .recent
                .push_front((std::mem::take(&mut self.sha256), c));
            inner.recent.truncate(RECENT_COMPONENTS);
        }
    }
}

impl std::fmt::Debug for FilterEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterEngine")
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

impl FilterEngine {
    /// Creates the engine and starts its epoch ticker thread.
    pub fn new(config: &EngineConfig) -> anyhow::Result<FilterEngine> {
        // One shared budget, counted in component instances: every other
        // kind of slot is sized so that `n` instances of the largest
        // component allowed fit, so a filter whose component has many
        // memories or core instances cannot use up another's slots. A
        // filter's share is its pools (pool_size per route it is on).
        let n = config.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(MAX_CORE_INSTANCES))
            .total_memories(n.saturating_mul(MAX_MEMORIES))
            .total_tables(n.saturating_mul(MAX_TABLES))
            .total_stacks(n)
            .max_memory_size(config.max_memory as usize)
            .max_core_instances_per_component(MAX_CORE_INSTANCES)
            .max_tables_per_component(MAX_TABLES)
            .max_memories_per_component(MAX_MEMORIES);
        // A slot given back (an instance ended: every call in `fresh`
        // isolation) is reset to its module's image. With Linux's
        // PAGEMAP_SCAN (6.7+) wasmtime finds the pages the instance wrote and
        // copies the image back over just those: no `madvise`, and no page
        // faults when the slot is next used (27.7 µs → 11.2 µs for a fresh
        // instance, its `init` and one call, in the `filter_call` bench).
        // Without it, keeping memory resident would mean a `memset` of all of
        // it, slower than `madvise`; the default stays.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(config.max_memory.min(MEMORY_KEEP_RESIDENT) as usize)
                .table_keep_resident(TABLE_KEEP_RESIDENT);
            tracing::debug!("filter slots are reset in place (PAGEMAP_SCAN)");
        } else {
            tracing::info!(
                "filter slots are reset with madvise (no PAGEMAP_SCAN, Linux < 6.7): \
                 isolation = \"fresh\" costs more per call"
            );
        }
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)
            .map_err(|e| anyhow::anyhow!("cannot create the filter engine: {e:#}"))?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        v0_2::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("cannot link host imports: {e:#}"))?;
        v0_1::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("cannot link the 0.1 host imports: {e:#}"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let tick = config.epoch_tick;
        {
            let engine = engine.weak();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("wasmgate-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker: {e}"))?;
        }
        let cache = config.cache_dir.as_deref().and_then(|dir| {
            CompileCache::open(dir, &engine)
                .inspect_err(|e| {
                    tracing::warn!(dir = %dir.display(), "compile cache disabled: cannot create it: {e}")
                })
                .ok()
        });
        Ok(FilterEngine {
            engine,
            linker,
            tick,
            ticker_stop,
            cache,
            services: Arc::default(),
            live: dashmap::DashMap::new(),
            components: Arc::default(),
            loads: Default::default(),
        })
    }

    /// Distinct compiled components held in memory.
    pub fn components_in_memory(&self) -> usize {
        self.components.len()
    }

    /// Modules loaded so far by where their compiled code came from:
    /// `compiled` now, `disk` (the compile cache), `memory` (a component
    /// already compiled from the same bytes).
    pub fn module_loads(&self) -> [(&'static str, u64); 3] {
        let n = |i: usize| self.loads[i].load(Ordering::Relaxed);
        [("compiled", n(0)), ("disk", n(1)), ("memory", n(2))]
    }

    /// Live versions and instances of each filter name ever loaded.
    pub fn live_counts(&self) -> Vec<(Scoped, Arc<LiveCounts>)> {
        self.live
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Forgets the counts of `name` once nothing of it is alive (its tenant
    /// left): whether it did.
    pub fn forget_live(&self, name: &Scoped) -> bool {
        self.live
            .remove_if(name, |_, c| {
                c.versions.load(Ordering::Relaxed) == 0 && c.instances.load(Ordering::Relaxed) == 0
            })
            .is_some()
    }

    /// Compile cache folders and entries refused so far because another
    /// user owns them or others may write them.
    pub fn compile_cache_refusals(&self) -> u64 {
        self.cache
            .as_ref()
            .map_or(0, |c| c.refusals().load(Ordering::Relaxed))
    }

    /// The state the host keeps for filters (`kv`, `rate-limit`).
    pub fn services(&self) -> &Arc<services::HostServices> {
        &self.services
    }

    /// Compiles (or takes from the compile cache) and pre-links a filter
    /// component from its bytes; `origin` names them in errors. The returned
    /// module is ready to instantiate; nothing is compiled later.
    pub fn load_bytes(
        &self,
        name: &Scoped,
        origin: &str,
        bytes: &[u8],
        limits: FilterLimits,
    ) -> Result<FilterModule, LoadError> {
        let not_component = |reason: String| LoadError::NotAComponent {
            path: origin.to_owned(),
            reason,
        };
        check_component_header(bytes).map_err(not_component)?;
        let sha256 = sha256_hex(bytes);
        let started = std::time::Instant::now();
        let (component, held, outcome) = match self.components.get(&sha256) {
            Some((c, held)) => (c, held, CacheOutcome::Memory),
            None => {
                // Counted before compiling: a component with more core
                // instances than a slot holds is not worth compiling.
                crate::limits::check_core_instances(bytes).map_err(|reason| {
                    LoadError::TooLarge {
                        path: origin.to_owned(),
                        reason,
                    }
                })?;
                let compiled = match &self.cache {
                    Some(cache) => cache.load_or_compile(&self.engine, bytes, &sha256),
                    None => {
                        cache::compile(&self.engine, bytes).map(|c| (c, CacheOutcome::Disabled))
                    }
                };
                let (c, outcome) = compiled.map_err(|e| compile_error(origin, &e))?;
                let held = self.components.insert(&sha256, &c);
                (c, held, outcome)
            }
        };
        let source = match outcome {
            CacheOutcome::Hit => 1,
            CacheOutcome::Memory => 2,
            _ => 0,
        };
        self.loads[source].fetch_add(1, Ordering::Relaxed);
        crate::limits::fits(&component, limits.memory).map_err(|reason| LoadError::TooLarge {
            path: origin.to_owned(),
            reason,
        })?;
        let filter = name.to_string();
        tracing::info!(
            filter = filter.as_str(),
            sha256 = &sha256[..16],
            cache = ?outcome,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "filter module loaded"
        );
        let contract = |e: wasmtime::Error| LoadError::Contract {
            path: origin.to_owned(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(contract)?;
        let pre = Pre::new(&component, instance_pre).map_err(contract)?;
        let live = self.live.entry(name.clone()).or_default().clone();
        live.versions.fetch_add(1, Ordering::Relaxed);
        let mut grants = services::Grants::new(name.clone(), self.services.clone());
        grants.log = live.log.clone();
        grants.refused = live.refused.clone();
        Ok(FilterModule {
            _component: held,
            name: name.name.clone(),
            sha256,
            grants,
            pre,
            limits,
            live,
        })
    }
}

/// Why a component could not be compiled: it does not fit the engine's
/// per-component slots (wasmtime checks its memories and tables against
/// the pooling allocator when it takes the compiled code), or it is not a
/// valid component.
pub(crate) fn compile_error(origin: &str, e: &wasmtime::Error) -> LoadError {
    let reason = format!("{e:#}");
    if reason.contains("in the pooling allocator") {
        LoadError::TooLarge {
            path: origin.to_owned(),
            reason,
        }
    } else {
        LoadError::NotAComponent {
            path: origin.to_owned(),
            reason: format!("not a valid WebAssembly component: {reason}"),
        }
    }
}

impl Drop for FilterEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Tells a core module or a non-WebAssembly file from a component before
/// handing it to the compiler, for a message that says what to do.
fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly file (no \\0asm header)".into());
    }
    // Bytes 4..6 are the version, 6..8 the layer: 0 = core module, 1 = component.
    match (bytes[6], bytes[7]) {
        (0, 0) => Err(
            "is a core WebAssembly module, not a component; build the filter for \
                       wasm32-wasip2 or wrap it with `wasm-tools component new`"
                .into(),
        ),
        (1, 0) => Ok(()),
        _ => Err("unknown WebAssembly layer (neither a core module nor a component)".into()),
    }
}

/// The contract versions the host serves, newest first.
pub const CONTRACTS: [&str; 2] = ["0.2", "0.1"];

/// A component pre-linked for the contract version it was built against.
enum Pre {
    V0_2(v0_2::PluginPre<HostState>),
    V0_1(v0_1::PluginPre<HostState>),
}

impl Pre {
    /// Picks the contract by what the component exports: 0.2's `filter`
    /// interface, else 0.1's (matched by semver track).
    fn new(
        component: &wasmtime::component::Component,
        pre: wasmtime::component::InstancePre<HostState>,
    ) -> wasmtime::Result<Pre> {
        let exports = |name: &str| component.get_export_index(None, name).is_some();
        if exports("wasmgate:filter/filter@0.2.0") {
            return v0_2::PluginPre::new(pre).map(Pre::V0_2);
        }
        if exports("wasmgate:filter/filter@0.1.1") {
            return v0_1::PluginPre::new(pre).map(Pre::V0_1);
        }
        // Neither: the 0.2 check names what is missing.
        v0_2::PluginPre::new(pre).map(Pre::V0_2)
    }

    fn engine(&self) -> &Engine {
        match self {
            Pre::V0_2(p) => p.engine(),
            Pre::V0_1(p) => p.engine(),
        }
    }

    fn contract(&self) -> &'static str {
        match self {
            Pre::V0_2(_) => CONTRACTS[0],
            Pre::V0_1(_) => CONTRACTS[1],
        }
    }
}

/// An instance's exports, in the contract version it was built against.
enum Guest {
    V0_2(v0_2::Plugin),
    V0_1(v0_1::Plugin),
}

/// A compiled, pre-linked filter component.
pub struct FilterModule {
    /// Its hold on the shared compiled component.
    _component: ComponentRef,
    name: Arc<str>,
    sha256: String,
    grants: services::Grants,
    pre: Pre,
    limits: FilterLimits,
    live: Arc<LiveCounts>,
}

impl Drop for FilterModule {
    fn drop(&mut self) {
        self.live.versions.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FilterModule {
    /// Sets what the filter may use: its `kv` quota, `config` values,
    /// outbound calls, and the clusters it may send its route's traffic to.
    pub fn grant(
        &mut self,
        kv_quota: usize,
        vars: std::collections::HashMap<String, String>,
        outbound: Option<services::OutboundGrant>,
        reroute: services::ClusterGrant,
    ) {
        self.grants.kv_quota = kv_quota;
        self.grants.vars = Arc::new(vars);
        self.grants.outbound = outbound;
        self.grants.reroute = reroute;
    }

    /// Whether the operator lets this filter send its route's traffic to
    /// `cluster` (a request edit's `cluster`). A cluster it may not name
    /// and one that does not exist are refused alike, so a filter cannot
    /// probe for names.
    pub fn may_reroute(&self, cluster: &str) -> bool {
        self.grants.reroute.allows(cluster)
    }

    /// Sets how many log lines per second the filter may write (every
    /// version of it shares the budget; the newest config's rate holds).
    pub fn set_log_rate(&self, per_second: u32) {
        self.grants.log.set_rate(per_second);
    }

    /// Grants the filter its share of the response cache (`None`: none).
    pub fn set_cache(&mut self, cache: Option<services::CacheGrant>) {
        self.grants.cache = cache;
    }

    /// Sets how many rate-limit buckets (keys) the filter may hold.
    pub fn set_rate_limit_keys(&mut self, keys: usize) {
        self.grants.rate_limit_keys = keys;
    }

    /// Bounds which headers the filter may read and edit.
    pub fn set_header_bounds(&mut self, bounds: services::HeaderBounds) {
        self.grants.headers = Arc::new(bounds);
    }

    /// Which headers the filter may read and edit.
    pub fn header_bounds(&self) -> &services::HeaderBounds {
        &self.grants.headers
    }
}

impl std::fmt::Debug for FilterModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterModule")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish()
    }
}

impl FilterModule {
    /// The filter's name in the config.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The tenant whose filter it is.
    pub fn tenant(&self) -> &wasmgate_config::TenantId {
        &self.grants.namespace.tenant
    }

    /// Its tenant's quotas (none in the operator's scope).
    pub fn quota(&self) -> Option<&Arc<TenantQuota>> {
        self.grants.quota.as_ref()
    }

    /// Hex SHA-256 of the component's bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The contract version (`"0.2"`, `"0.1"`) the filter was built against.
    pub fn contract(&self) -> &'static str {
        self.pre.contract()
    }

    /// Creates an instance for `route` and runs its `init` with `config_json`,
    /// within the filter's wall-clock budget.
    pub async fn instantiate(
        &self,
        route: &Arc<str>,
        config_json: &str,
    ) -> Result<FilterInstance, FilterFailure> {
        self.started(route, config_json, true)
            .await
            .map(|(instance, _)| instance)
    }

    /// Creates an instance, runs `init`, and returns what the filter declared,
    /// within the filter's wall-clock budget. Used at load to validate a
    /// route's config and learn the filter's needs. The gateway's own check,
    /// so not counted against the tenant's instances, memory, CPU per second
    /// or share of the workers (a tenant busy up to its quotas can still
    /// change its config); its filter's own budgets hold.
    pub async fn probe(
        &self,
        route: &Arc<str>,
        config_json: &str,
    ) -> Result<Result<Needs, String>, FilterFailure> {
        self.started(route, config_json, false)
            .await
            .map(|(_, info)| info)
    }

    /// A new instance past its `init`. Both run guest code, which the CPU
    /// deadline bounds only while it runs: a guest blocked in a host call
    /// (a WASI sleep) is stopped by the wall-clock budget instead.
    async fn started(
        &self,
        route: &Arc<str>,
        config_json: &str,
        counted: bool,
    ) -> Result<(FilterInstance, Result<Needs, String>), FilterFailure> {
        let wall = self.limits.wall;
        let started = tokio::time::timeout(wall, async {
            let mut instance = self.new_instance(route, counted).await?;
            let info = instance.init(config_json).await?;
            Ok((instance, info))
        });
        started.await.unwrap_or(Err(FilterFailure::WallClock(wall)))
    }

    /// A new instance; `counted` against its tenant's quotas (a probe's
    /// is not).
    async fn new_instance(
        &self,
        route: &Arc<str>,
        counted: bool,
    ) -> Result<FilterInstance, FilterFailure> {
        let quota = self.grants.quota.clone().filter(|_| counted);
        let slot = InstanceSlot::take(quota.clone())?;
        if let Some(q) = &quota {
            q.admit_call().map_err(FilterFailure::Quota)?;
        }
        let site = CallSite {
            filter: self.name.clone(),
            route: route.clone(),
        };
        let mut store = Store::new(
            self.pre.engine(),
            HostState::new(site, self.limits.memory, self.grants.clone(), counted),
        );
        store.limiter(|s| &mut s.limiter);
        // The deadline is one epoch tick away, and each time it comes the
        // call's time on the thread (measured by `meter::metered`: time
        // awaiting a host call or waiting to be scheduled again is not
        // counted) is checked against its CPU budget: past it the call is
        // interrupted, otherwise it yields (`Yield`) and its deadline moves
        // one tick on. So a guest that spins holds its worker thread for one
        // tick at a time, not for its whole budget: the worker runs other
        // tenants' tasks and polls the I/O and timer driver in between, and
        // the wall-clock limit can end a call that waited.
        //
        // The yield is tokio's `yield_now`, which defers the task until the
        // worker has polled its I/O driver and run every other task ready
        // to run. A plain wake would put it straight back on the run
        // queue, and a worker busy with spinning guests polls its driver
        // only every 61 tasks: on a thread-per-core worker, where no other
        // thread steals the connections it holds, that stalled them for
        // tens of milliseconds (the noisy-neighbour bench, mode N).
        store.epoch_deadline_callback(|ctx| {
            let meter = &ctx.data().call.meter;
            if meter.used() >= meter.budget() {
                return Err(Trap::Interrupt.into());
            }
            meter.mark_yield();
            Ok(wasmtime::UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store.set_epoch_deadline(1);
        // Instantiation runs guest code (start functions): under the budget.
        store.data_mut().call.begin(None, 0, self.limits.cpu, false);
        let meter = store.data().call.meter.clone();
        let plugin = match &self.pre {
            Pre::V0_2(pre) => {
                meter::metered(pre.instantiate_async(&mut store), &meter, quota.as_ref())
                    .await
                    .map(Guest::V0_2)
            }
            Pre::V0_1(pre) => {
                meter::metered(pre.instantiate_async(&mut store), &meter, quota.as_ref())
                    .await
                    .map(Guest::V0_1)
            }
        };
        if let Some(q) = &quota {
            q.charge_cpu(meter.used());
        }
        let plugin = match plugin {
            Ok(p) => p,
            Err(e) => return Err(classify(&store, e, self.limits, FilterFailure::Instantiate)),
        };
        self.live.instances.fetch_add(1, Ordering::Relaxed);
        Ok(FilterInstance {
            store,
            plugin,
            limits: self.limits,
            uses: 0,
            needs: Needs::nothing(),
            live: self.live.clone(),
            quota,
            _slot: slot,
            idle_since: std::time::Instant::now(),
        })
    }
}

/// An instance's place in its tenant's `filter_instances` quota, given
/// back when the instance (or its failed creation) ends.
struct InstanceSlot(Option<Arc<TenantQuota>>);

impl InstanceSlot {
    /// A place for a new instance; when the tenant's are all taken, one of
    /// its idle instances (in any of its pools) is dropped to make room.
    fn take(quota: Option<Arc<TenantQuota>>) -> Result<InstanceSlot, FilterFailure> {
        if let Some(q) = &quota
            && q.add_instance().is_err()
        {
            // Another call may take the room made before this one does.
            if !q.reclaim_idle() || q.add_instance().is_err() {
                return Err(FilterFailure::Quota(q.refuse_instance()));
            }
        }
        Ok(InstanceSlot(quota))
    }
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        if let Some(q) = &self.0 {
            q.remove_instance();
        }
    }
}

/// Names why a call into a store failed. `not_a_trap` builds the failure for
/// an error that is not a guest trap (it differs between instantiation and
/// calls).
fn classify(
    store: &Store<HostState>,
    e: wasmtime::Error,
    limits: FilterLimits,
    not_a_trap: fn(String) -> FilterFailure,
) -> FilterFailure {
    if store.data().limiter.exceeded {
        return FilterFailure::Memory(limits.memory);
    }
    if store.data().limiter.tenant_exceeded {
        return FilterFailure::Quota(QuotaRefusal {
            quota: Quota::FilterMemory,
            retry_after: None,
        });
    }
    let call = &store.data().call;
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) if call.tenant_bound => {
            if let Some(q) = &store.data().grants().quota {
                q.count_refusal(Quota::FilterCpuPerRequest);
            }
            FilterFailure::Quota(QuotaRefusal {
                quota: Quota::FilterCpuPerRequest,
                retry_after: None,
            })
        }
        Some(Trap::Interrupt) => FilterFailure::CpuBudget(call.meter.budget()),
        Some(Trap::StackOverflow) => FilterFailure::Trap("stack overflow".into()),
        Some(_) => FilterFailure::Trap(format!("{e:#}")),
        None => not_a_trap(format!("{e:#}")),
    }
}

/// One live instance of a filter in its own store.
pub struct FilterInstance {
    store: Store<HostState>,
    plugin: Guest,
    limits: FilterLimits,
    uses: u64,
    /// What this instance's `init` declared.
    needs: Needs,
    live: Arc<LiveCounts>,
    /// Its tenant's quotas.
    quota: Option<Arc<TenantQuota>>,
    _slot: InstanceSlot,
    /// When it last went back to its pool.
    pub(crate) idle_since: std::time::Instant,
}

impl Drop for FilterInstance {
    fn drop(&mut self) {
        self.live.instances.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FilterInstance {
    /// Calls served (`on-request` and `on-response` each count).
    pub fn uses(&self) -> u64 {
        self.uses
    }

    /// Current size of the instance's linear memories together, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.current as u64
    }

    fn classify(&self, e: wasmtime::Error) -> FilterFailure {
        // A host-side error during a call (e.g. from a WASI import) still
        // fails the guest's call: report it as a trap.
        classify(&self.store, e, self.limits, FilterFailure::Trap)
    }

    /// Runs `init`. The outer result fails the instance; the inner one is
    /// what the filter declared, or why the declarations do not fit.
    async fn init(&mut self, config_json: &str) -> Result<Result<Needs, String>, FilterFailure> {
        if let Some(q) = &self.quota {
            q.admit_call().map_err(FilterFailure::Quota)?;
        }
        self.store
            .data_mut()
            .call
            .begin(None, 0, self.limits.cpu, false);
        self.store.data_mut().pending.begin(Phase::Init, None, None);
        self.store.set_epoch_deadline(1);
        let meter = self.store.data().call.meter.clone();
        let quota = self.quota.clone();
        let declared = match &self.plugin {
            Guest::V0_2(p) => {
                let setup = wasmtime::component::Resource::new_borrow(0);
                let call =
                    p.wasmgate_filter_filter()
                        .call_init(&mut self.store, config_json, setup);
                let called = meter::metered(call, &meter, quota.as_ref()).await;
                if let Some(q) = &quota {
                    q.charge_cpu(meter.used());
                }
                match called {
                    Ok(Ok(())) => Ok(self
                        .store
                        .data_mut()
                        .pending
                        .declared
                        .take()
                        .unwrap_or_else(Needs::nothing)
                        .check()),
                    Ok(Err(message)) => Err(FilterFailure::Init(message)),
                    Err(e) => Err(self.classify(e)),
                }
            }
            Guest::V0_1(p) => {
                let call = p
                    .wasmgate_filter_filter()
                    .call_init(&mut self.store, config_json);
                let called = meter::metered(call, &meter, quota.as_ref()).await;
                if let Some(q) = &quota {
                    q.charge_cpu(meter.used());
                }
                match called {
                    Ok(Ok(info)) => Ok(contract_0_1::needs(info)),
                    Ok(Err(message)) => Err(FilterFailure::Init(message)),
                    Err(e) => Err(self.classify(e)),
                }
            }
        }?;
        if let Ok(needs) = &declared {
            self.needs = needs.clone();
            self.store.data_mut().pending.declared = Some(needs.clone());
        }
        Ok(declared)
    }

    /// Starts a call for the exchange: the request id for host calls,
    /// the outbound budget so far, the CPU budget (the filter's, or what the
    /// tenant's `filter_cpu_per_request` leaves if that is less) and
    /// deadline. Refused if the tenant's CPU per second is used up.
    fn begin(&mut self, ex: &Exchange, carry: &FilterCarry) -> Result<(), FilterFailure> {
        let mut cpu = self.limits.cpu;
        let mut tenant_bound = false;
        if let Some(q) = &self.quota {
            q.admit_call().map_err(FilterFailure::Quota)?;
            if let Some(left) = q.cpu_left_for_request(ex.filter_cpu) {
                let left = left.map_err(FilterFailure::Quota)?;
                if left < cpu {
                    (cpu, tenant_bound) = (left, true);
                }
            }
        }
        self.uses += 1;
        let id = ex.facts.request_id.to_str().unwrap_or_default();
        self.store
            .data_mut()
            .call
            .begin(Some(id), carry.outbound_used, cpu, tenant_bound);
        self.store.set_epoch_deadline(1);
        Ok(())
    }

    /// Charges a call's time on the thread to the request and the tenant.
    fn charge(&self, ex: &mut Exchange) {
        let used = self.store.data().call.meter.used();
        ex.filter_cpu += used;
        if let Some(q) = &self.quota {
            q.charge_cpu(used);
        }
    }

    /// Calls `on-request`, ending by `deadline` at the latest. A 0.2 call
    /// has the exchange moved into the store while it runs; it is back in
    /// `ex` when this returns, whatever happened.
    pub async fn on_request(
        &mut self,
        ex: &mut Exchange,
        carry: &mut FilterCarry,
        deadline: tokio::time::Instant,
    ) -> Result<RequestOutcome, FilterFailure> {
        self.begin(ex, carry)?;
        let meter = self.store.data().call.meter.clone();
        let quota = self.quota.clone();
        let result = match &self.plugin {
            Guest::V0_2(p) => {
                let moved = std::mem::replace(ex, Exchange::placeholder());
                self.store
                    .data_mut()
                    .pending
                    .begin(Phase::Request, Some(moved), None);
                let req = wasmtime::component::Resource::new_borrow(0);
                let call = p
                    .wasmgate_filter_filter()
                    .call_on_request(&mut self.store, req);
                let call = meter::metered(call, &meter, quota.as_ref());
                let called = tokio::time::timeout_at(deadline, call).await;
                let pending = &mut self.store.data_mut().pending;
                if let Some(moved) = pending.exchange.take() {
                    *ex = moved;
                }
                match called {
                    Ok(Ok(d)) => {
                        let outcome = pending.request_outcome(d);
                        if matches!(outcome, RequestOutcome::Proceed(_)) {
                            carry.context = pending.context.take();
                        }
                        Ok(outcome)
                    }
                    Ok(Err(e)) => Err(self.classify(e)),
                    Err(_) => Err(FilterFailure::WallClock(self.limits.wall)),
                }
            }
            Guest::V0_1(p) => {
                let req = contract_0_1::request_record(ex, &self.needs, true);
                let call = p
                    .wasmgate_filter_filter()
                    .call_on_request(&mut self.store, &req);
                let call = meter::metered(call, &meter, quota.as_ref());
                match tokio::time::timeout_at(deadline, call).await {
                    Ok(Ok(d)) => Ok(contract_0_1::request_outcome(d, carry)),
                    Ok(Err(e)) => Err(self.classify(e)),
                    Err(_) => Err(FilterFailure::WallClock(self.limits.wall)),
                }
            }
        };
        self.charge(ex);
        carry.outbound_used = self.store.data().call.outbound_used;
        let grants = self.store.data().grants();
        result.map(|o| o.bounded(&mut carry.context, grants))
    }

    /// Calls `on-response`, ending by `deadline` at the latest; like
    /// [`FilterInstance::on_request`].
    pub async fn on_response(
        &mut self,
        ex: &mut Exchange,
        carry: &mut FilterCarry,
        deadline: tokio::time::Instant,
    ) -> Result<ResponseOutcome, FilterFailure> {
        self.begin(ex, carry)?;
        let meter = self.store.data().call.meter.clone();
        let quota = self.quota.clone();
        let result = match &self.plugin {
            Guest::V0_2(p) => {
                let moved = std::mem::replace(ex, Exchange::placeholder());
                self.store.data_mut().pending.begin(
                    Phase::Response,
                    Some(moved),
                    carry.context.clone(),
                );
                let req = wasmtime::component::Resource::new_borrow(0);
                let resp = wasmtime::component::Resource::new_borrow(0);
                let call = p
                    .wasmgate_filter_filter()
                    .call_on_response(&mut self.store, req, resp);
                let call = meter::metered(call, &meter, quota.as_ref());
                let called = tokio::time::timeout_at(deadline, call).await;
                let pending = &mut self.store.data_mut().pending;
                if let Some(moved) = pending.exchange.take() {
                    *ex = moved;
                }
                match called {
                    Ok(Ok(d)) => Ok(pending.response_outcome(d)),
                    Ok(Err(e)) => Err(self.classify(e)),
                    Err(_) => Err(FilterFailure::WallClock(self.limits.wall)),
                }
            }
            Guest::V0_1(p) => {
                let req = contract_0_1::request_record(ex, &self.needs, false);
                let resp = contract_0_1::response_record(ex, &self.needs);
                let call = p.wasmgate_filter_filter().call_on_response(
                    &mut self.store,
                    &req,
                    &resp,
                    carry.context.as_deref(),
                );
                let call = meter::metered(call, &meter, quota.as_ref());
                match tokio::time::timeout_at(deadline, call).await {
                    Ok(Ok(d)) => Ok(contract_0_1::response_outcome(d)),
                    Ok(Err(e)) => Err(self.classify(e)),
                    Err(_) => Err(FilterFailure::WallClock(self.limits.wall)),
                }
            }
        };
        self.charge(ex);
        carry.outbound_used = self.store.data().call.outbound_used;
        let grants = self.store.data().grants();
        result.map(|o| o.bounded(grants))
    }
}
