//! Building a generation: compiling each filter version the config and the
//! store ask for (or keeping it from the running generation), running every
//! route's `init`, making the pools, clusters and route table; all errors
//! collected with their key paths.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::versions::{FilterVersions, StoredVersion, VersionSource};
use wasmgate_config::{
    Config, ConfigError, FailurePolicy, FilterConfig, Isolation, Scope, Scoped, TenantId,
};
use wasmgate_engine::edits::{Interest, Needs};
use wasmgate_engine::services::{
    ClusterGrant, FilterCache, HeaderBound, HeaderBounds, Outbound, OutboundGrant,
};
use wasmgate_engine::{
    FilterEngine, FilterFailure, FilterLimits, FilterModule, InstancePool, PoolPolicy, sha256_hex,
};
use wasmgate_metrics::Metrics;
use wasmgate_proxy::access_log::AccessLog;
use wasmgate_proxy::canary::{Canary, VersionStats};
use wasmgate_proxy::chain::{ChainFilter, RouteVersion};
use wasmgate_proxy::normalize::PathPolicy;
use wasmgate_proxy::outbound::ClusterCaller;
use wasmgate_proxy::overload::OverloadGuard;
use wasmgate_proxy::proxy::Proxy;
use wasmgate_proxy::route::{Route, RouteMetrics, RouteTarget, WeightedClusters};
use wasmgate_proxy::router::{RouteMatch, RouteTable, TenantTable};
use wasmgate_proxy::tls::TlsTerminator;
use wasmgate_proxy::upstream::Cluster;
use wasmgate_proxy::upstream::dns::Resolve;

/// What every generation shares: made once, at start.
#[derive(Debug)]
pub(crate) struct Deps {
    pub(crate) engine: Arc<FilterEngine>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) resolver: Arc<dyn Resolve>,
    pub(crate) overload: Arc<OverloadGuard>,
    pub(crate) tls: Option<Arc<TlsTerminator>>,
    pub(crate) caller: Arc<ClusterCaller>,
    /// Where tenant clusters may connect.
    pub(crate) guard: Arc<wasmgate_proxy::upstream::guard::AddressGuard>,
    /// The response cache, one for the gateway's life (its entries outlive
    /// config changes).
    pub(crate) response_cache: Arc<wasmgate_proxy::response_cache::ResponseCache>,
    /// The descriptor sets transcoding routes use, uploaded and parsed.
    pub(crate) descriptors: Arc<crate::descriptors::DescriptorStore>,
}

/// The tenants' certificates, for the listener to serve beside the
/// operator's, and what a client without SNI gets: the default tenant's
/// first certificate (the operator's when it has none), the operator's when
/// its own routes serve unclaimed names, else nothing.
pub(crate) fn tenant_certs(
    config: &Config,
) -> (
    Vec<wasmgate_config::tls::CertConfig>,
    wasmgate_proxy::tls::NoSni,
) {
    use wasmgate_proxy::tls::NoSni;
    let mut certs = Vec::new();
    let default = config.tenancy.as_ref().and_then(|t| t.default.as_deref());
    let mut no_sni = match (&config.tenancy, default) {
        (Some(_), None) if config.routes.is_empty() => NoSni::Refuse,
        _ => NoSni::Operator,
    };
    for t in config.tenants.values() {
        let Some(tls) = &t.tls else { continue };
        if Some(t.name.as_str()) == default && !tls.certificates.is_empty() {
            no_sni = NoSni::Tenant(certs.len());
        }
        certs.extend(tls.certificates.iter().cloned());
    }
    (certs, no_sni)
}

/// What the address guard checks for `config`: `[tenants]`'s rules, and
/// whose each endpoint address written in a cluster is (the operator's
/// first, then each tenant's).
/// Brings every tenant's quotas to what `config` says (at start, and when
/// a config is committed; what is in use stays counted).
pub(crate) fn apply_quotas(config: &Config, engine: &wasmgate_engine::FilterEngine) {
    let services = engine.services();
    services.set_workers(config.server.workers.unwrap_or(0));
    for name in config.tenants.keys() {
        let tenant = TenantId(Arc::from(name.as_str()));
        services.set_quota(&tenant, &config.quotas(&tenant));
    }
}

pub(crate) fn guard_rules(config: &Config) -> wasmgate_proxy::upstream::guard::GuardRules {
    let mut owners = std::collections::HashMap::new();
    for scope in config.scopes() {
        for addr in scope.endpoint_addrs() {
            owners.entry(addr).or_insert_with(|| scope.tenant.clone());
        }
    }
    let t = config.tenancy.clone().unwrap_or_default();
    wasmgate_proxy::upstream::guard::GuardRules {
        allow: t.allow,
        deny: t.deny,
        shared: t.shared,
        owners,
    }
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
    pub modules: BTreeMap<String, RunningVersions>,
    /// The operator's descriptor sets, by name.
    pub descriptors: BTreeMap<String, crate::descriptors::LoadedSet>,
}

/// A filter version as one generation uses it.
#[derive(Debug, Clone)]
pub struct CompiledVersion {
    /// The compiled module.
    pub module: Arc<FilterModule>,
    /// The settings it was loaded with.
    pub config: FilterConfig,
    /// Its version number.
    pub version: u64,
    /// `"file"` or `"upload"`.
    pub source: VersionSource,
    /// Requests it handled.
    pub stats: Arc<VersionStats>,
}

/// A filter's versions in one generation: the current one and a canary.
#[derive(Debug, Clone)]
pub struct RunningVersions {
    /// The current version.
    pub current: CompiledVersion,
    /// The canary version, with the canary that picks its requests.
    pub canary: Option<(CompiledVersion, Arc<Canary>)>,
}

/// The module of one stored version, compiled with `f`'s settings, or kept
/// from `prev` when it ran there with the same settings (as the current
/// version or as a canary).
pub(crate) async fn compile(
    name: &str,
    f: &FilterConfig,
    deps: &Deps,
    prev: Option<&Generation>,
    s: &StoredVersion,
) -> Result<CompiledVersion, String> {
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
    // Its kv data, buckets, metrics and outbound calls are its tenant's.
    let owned_name = wasmgate_config::Scoped::from_key(name);
    let origin = match s.source {
        VersionSource::Upload => format!("upload for {name:?}"),
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
    grant(&mut m, f, deps.caller.clone(), deps.response_cache.clone());
    Ok(CompiledVersion {
        module: Arc::new(m),
        config: f.clone(),
        version: s.version,
        source: s.source,
        stats: s.stats.clone(),
    })
}

/// Grants a loaded module what its `[filters.NAME]` settings give it: its
/// `kv` quota and `config` values, outbound calls through `caller`, the
/// clusters it may reroute to, its share of `cache`, its log rate,
/// rate-limit keys and header bounds. The gateway's builds and the offline
/// runner (`wasmgate filter test`, with in-memory stand-ins for the two
/// seams) grant through this one function.
pub fn grant(
    m: &mut FilterModule,
    f: &FilterConfig,
    caller: Arc<dyn Outbound>,
    cache: Arc<dyn FilterCache>,
) {
    // No grant, no outbound calls; `"*"` grants every cluster.
    let outbound = match f.outbound_clusters.as_deref() {
        None | Some([]) => None,
        Some(list) => Some(OutboundGrant {
            sender: caller,
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
    let reroute = ClusterGrant::from_config(f.reroute_clusters.as_deref());
    m.grant(f.kv_quota, vars, outbound, reroute);
    m.set_cache(
        (f.cache_bytes > 0).then(|| wasmgate_engine::services::CacheGrant {
            store: cache,
            quota: f.cache_bytes,
        }),
    );
    m.set_log_rate(f.log_lines_per_second);
    m.set_rate_limit_keys(f.rate_limit_keys);
    m.set_header_bounds(HeaderBounds {
        read_request: HeaderBound::from_config(f.read_request_headers.as_deref()),
        write_request: HeaderBound::from_config(f.write_request_headers.as_deref()),
        read_response: HeaderBound::from_config(f.read_response_headers.as_deref()),
        write_response: HeaderBound::from_config(f.write_response_headers.as_deref()),
    });
}

/// Settles filter `name`'s current version (reading its module file when
/// `read_files` and the API has not pinned it, or when it has none yet) and
/// loads it and its canary.
pub(crate) async fn resolve(
    name: &str,
    f: &FilterConfig,
    deps: &Deps,
    prev: Option<&Generation>,
    st: &mut FilterVersions,
    read_files: bool,
) -> Result<RunningVersions, ConfigError> {
    let scoped = wasmgate_config::Scoped::from_key(name);
    let key = key_path(&scoped.tenant, &format!("filters.{}.path", scoped.name));
    // The config points the filter at another file: the file decides again,
    // and is read even when files are not (a tenant's change through the
    // API reads its own new files, not every other tenant's).
    let moved = st.path.as_ref() != Some(&f.path);
    if moved {
        st.pinned = false;
    }
    st.path = Some(f.path.clone());
    if (!st.pinned && (read_files || moved)) || st.get(st.current).is_none() {
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
            _ => st.add(
                name,
                Arc::new(bytes),
                sha,
                VersionSource::File,
                &deps.metrics,
            ),
        };
        st.make_current(version);
        st.pinned = false;
    }
    let current = st.get(st.current).expect("the current version is stored");
    let current = compile(name, f, deps, prev, current)
        .await
        .map_err(|m| ConfigError::new(&key, m))?;
    let canary = match &st.canary {
        None => None,
        Some(c) => {
            let key = key_path(&scoped.tenant, &format!("filters.{} canary", scoped.name));
            let s = st.get(c.version()).ok_or_else(|| {
                ConfigError::new(&key, format!("version {} is not stored", c.version()))
            })?;
            let e = compile(name, f, deps, prev, s)
                .await
                .map_err(|m| ConfigError::new(&key, format!("version {}: {m}", c.version())))?;
            Some((e, c.clone()))
        }
    };
    Ok(RunningVersions { current, canary })
}

/// A key path in `tenant`'s scope: as written for the operator's own
/// sections, under `tenants.NAME.` for a tenant's.
pub(crate) fn key_path(tenant: &TenantId, path: &str) -> String {
    if tenant.is_default() {
        path.to_owned()
    } else {
        format!("tenants.{}.{path}", tenant.as_str())
    }
}

/// Why one version of a filter could not be set up for a route.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteVersionError {
    /// Instantiation and `init` did not finish within `wall_limit`. The
    /// build stops probing, so that a filter which blocks as it starts holds
    /// the build (and the control lock) up once, not once per route.
    #[error(
        "on route {route:?} did not finish starting (instantiation and init) within its \
         wall_limit of {wall:?}; a filter must not block while it starts"
    )]
    Hung {
        /// The route.
        route: Arc<str>,
        /// The filter's `wall_limit`.
        wall: std::time::Duration,
    },
    /// Instantiation or `init` failed (`init` refused the route's config,
    /// say).
    #[error("{0}")]
    Start(FilterFailure),
    /// What `init` declared does not hold together.
    #[error("{0}")]
    Info(String),
}

impl RouteVersionError {
    /// The error as a config error's message: `filter "NAME" ...`, with the
    /// canary version when it is the canary's.
    fn describe(&self, filter: &str, canary: Option<u64>) -> String {
        let who = match canary {
            Some(v) => format!("filter {filter:?} (canary version {v})"),
            None => format!("filter {filter:?}"),
        };
        match self {
            RouteVersionError::Info(m) => format!("{who}: {m}"),
            e => format!("{who} {e}"),
        }
    }
}

/// Whether the headers a filter declares it reads (a 0.1 guest's list, or
/// every header) are within what the operator lets it read; if not, names
/// what it asked for.
fn within_bounds(needs: &Needs, bounds: &HeaderBounds) -> Result<(), String> {
    for (side, interest, bound, key) in [
        (
            "request",
            &needs.request_headers,
            &bounds.read_request,
            "read_request_headers",
        ),
        (
            "response",
            &needs.response_headers,
            &bounds.read_response,
            "read_response_headers",
        ),
    ] {
        match interest {
            Interest::All if !bound.is_all() => {
                return Err(format!(
                    "it declares it reads every {side} header, and {key} does not allow that"
                ));
            }
            Interest::Names(names) => {
                let over: Vec<&str> = names
                    .iter()
                    .map(http::HeaderName::as_str)
                    .filter(|n| !bound.allows(n))
                    .collect();
                if !over.is_empty() {
                    return Err(format!(
                        "it declares it reads {side} headers outside its {key}: {}",
                        over.join(", ")
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One version of a route's filter: its `init` run with the route's config,
/// and its instance pool.
pub(crate) async fn route_version(
    route: &Arc<str>,
    config_json: &str,
    fc: &FilterConfig,
    e: &CompiledVersion,
    metrics: &Arc<Metrics>,
) -> Result<Arc<RouteVersion>, RouteVersionError> {
    metrics
        .filter_probes
        .get_or_create(&wasmgate_metrics::TenantLabels {
            tenant: e.module.tenant().as_str().to_owned(),
        })
        .inc();
    let declared = e
        .module
        .probe(route, config_json)
        .await
        .map_err(|f| match f {
            FilterFailure::WallClock(wall) => RouteVersionError::Hung {
                route: route.clone(),
                wall,
            },
            f => RouteVersionError::Start(f),
        })?;
    let needs = declared
        .and_then(|n| within_bounds(&n, e.module.header_bounds()).map(|()| n))
        .map_err(RouteVersionError::Info)?;
    let policy = PoolPolicy {
        size: fc.pool_size as usize,
        max_uses: fc.max_uses,
        recycle_above: fc.recycle_memory,
        fresh: fc.isolation == Isolation::Fresh,
        acquire_timeout: fc.pool_timeout,
        wall_limit: fc.wall_limit,
        quarantine_after: fc.quarantine_after,
    };
    Ok(Arc::new(RouteVersion {
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
    }))
}

/// The running generation's version of `route`'s filter at position `j`,
/// when it is `v`'s very module (the same version, kept with the same
/// settings) with the same route config: nothing to probe or pool again,
/// and its pool carries over (warm instances, quarantine). A generation is
/// thus rebuilt only where the config or the store changed.
fn kept_version(
    route: &Route,
    j: usize,
    v: &CompiledVersion,
    config_json: &str,
) -> Option<Arc<RouteVersion>> {
    let f = route.chain.get(j)?;
    let arms = std::iter::once(&f.stable).chain(f.canary.as_ref().map(|(_, a)| a));
    arms.into_iter()
        .find(|a| {
            a.version == v.version
                && Arc::ptr_eq(a.pool.module(), &v.module)
                && a.pool.serves() == (&*route.name, config_json)
        })
        .cloned()
}

/// Builds a whole generation from `config` and the filter store, keeping
/// what did not change from `prev`; module files are read only with
/// `read_files` (a config reload, not a version change). Every error is
/// collected, with its key path and the tenant whose scope it is in (the
/// caller may then leave a failing tenant out and try again: what did not
/// change is kept, not rebuilt).
pub(crate) async fn build(
    config: &Config,
    deps: &Deps,
    prev: Option<&Generation>,
    filters: &mut BTreeMap<String, FilterVersions>,
    read_files: bool,
    frozen: &std::collections::HashSet<TenantId>,
) -> Result<Generation, Vec<(TenantId, ConfigError)>> {
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

    let mut errors: Vec<(TenantId, ConfigError)> = errors
        .into_iter()
        .map(|e| (TenantId::default_tenant(), e))
        .collect();
    let mut clusters = wasmgate_proxy::proxy::Clusters::new();
    let mut modules: BTreeMap<String, RunningVersions> = BTreeMap::new();
    let mut tables = Vec::new();
    let mut hung = false;
    let descriptors = deps.descriptors.load_all(&config.descriptors, |e| {
        errors.push((TenantId::default_tenant(), e));
    });
    for scope in config.scopes() {
        let mut scope_errors = Vec::new();
        let built = build_scope(
            &scope,
            &descriptors,
            config.quotas(&scope.tenant),
            deps,
            prev,
            filters,
            read_files && !frozen.contains(&scope.tenant),
            &mut modules,
            &mut scope_errors,
            &mut hung,
        )
        .await;
        errors.extend(scope_errors.into_iter().map(|e| (scope.tenant.clone(), e)));
        let (table, scope_clusters) = built;
        clusters.insert(scope.tenant.clone(), scope_clusters);
        tables.push(table);
        if hung {
            break;
        }
    }

    // Every (route, filter) pool, a canary's included, must fit the engine's
    // instances (validation counted the pools without canaries), with one
    // spare for probes: a canary that does not fit is refused, not left to
    // take other filters' instances.
    // A tenant's pools count up to its `filter_instances` quota, which it
    // cannot go past.
    let needed: u64 = config
        .scopes()
        .map(|scope| {
            let pools: u64 = scope
                .routes
                .iter()
                .flat_map(|r| &r.filters)
                .filter_map(|rf| {
                    let key = Scoped::new(scope.tenant.clone(), rf.name.as_str()).key();
                    let arms = 1 + u64::from(modules.get(&key)?.canary.is_some());
                    Some(arms * u64::from(scope.filters.get(&rf.name)?.pool_size))
                })
                .sum();
            config.instance_share(&scope.tenant, pools)
        })
        .sum();
    if needed + 1 > u64::from(config.engine.max_instances) {
        let canaries: Vec<&str> = modules
            .iter()
            .filter(|(_, m)| m.canary.is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        errors.push((
            TenantId::default_tenant(),
            ConfigError::new(
                "engine.max_instances",
                format!(
                    "{} is too small: with the canaries of {} the filter pools can hold {needed} \
                     instances, plus one for validation; end a canary, or raise engine.max_instances",
                    config.engine.max_instances,
                    canaries.join(", ")
                ),
            ),
        ));
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
        response_cache: deps.response_cache.clone(),
    };
    let unclaimed = config
        .tenancy
        .as_ref()
        .and_then(|t| t.default.as_deref())
        .map_or_else(TenantId::default_tenant, |d| TenantId(Arc::from(d)));
    let proxy = Proxy::new(
        RouteTable::with_tenants(tables, &unclaimed),
        clusters,
        metrics.clone(),
        config.access_log.clone().zip(access_log),
        policy,
    );
    Ok(Generation {
        proxy: Arc::new(proxy),
        modules,
        descriptors,
    })
}

/// One scope's clusters, filter versions and routes (its part of the route
/// table), keeping what did not change from `prev`. Errors go to `errors`,
/// with key paths as the scope's own file writes them; `hung` is set when
/// a filter blocked as it started (the build then stops probing).
#[allow(clippy::too_many_arguments)]
async fn build_scope(
    scope: &Scope<'_>,
    descriptors: &BTreeMap<String, crate::descriptors::LoadedSet>,
    quotas: wasmgate_config::QuotaSettings,
    deps: &Deps,
    prev: Option<&Generation>,
    filters: &mut BTreeMap<String, FilterVersions>,
    read_files: bool,
    modules: &mut BTreeMap<String, RunningVersions>,
    errors: &mut Vec<ConfigError>,
    hung: &mut bool,
) -> (TenantTable<Route>, HashMap<String, Arc<Cluster>>) {
    let metrics = &deps.metrics;
    let tenant = &scope.tenant;
    // Before its filters load: their grants hold it.
    let quota = deps.engine.services().quota_or_new(tenant, &quotas);
    if let Some(tls) = scope.tls
        && let Err(e) = wasmgate_proxy::tls::check_certs(&tls.certificates)
    {
        errors.push(ConfigError::new("tls", e));
    }
    let mut clusters: HashMap<String, Arc<Cluster>> = HashMap::new();
    for (n, c) in scope.clusters {
        if let Some(p) = prev
            .and_then(|p| p.proxy.clusters.get(tenant))
            .and_then(|m| m.get(n))
            && p.config == *c
        {
            clusters.insert(n.clone(), p.clone());
            continue;
        }
        // The operator's own clusters go anywhere; a tenant's only where
        // the guard lets it.
        let reach = (!tenant.is_default()).then(|| wasmgate_proxy::upstream::guard::Reach {
            guard: deps.guard.clone(),
            tenant: tenant.clone(),
        });
        match Cluster::new(n, tenant, c, metrics, &*deps.resolver, reach).await {
            Ok(cluster) => {
                clusters.insert(n.clone(), Arc::new(cluster));
            }
            Err(e) => errors.push(ConfigError::new(format!("clusters.{n}"), e)),
        }
    }

    for (name, f) in scope.filters {
        let key = Scoped::new(tenant.clone(), name.as_str()).key();
        let st = filters.entry(key.clone()).or_default();
        match resolve(&key, f, deps, prev, st, read_files).await {
            Ok(m) => {
                modules.insert(key, m);
            }
            Err(mut e) => {
                // The path as the scope's own file writes it.
                if let Some(rest) = e
                    .path
                    .strip_prefix(&format!("tenants.{}.", tenant.as_str()))
                {
                    e.path = rest.to_owned();
                }
                errors.push(e);
            }
        }
    }

    // The running generation's routes of this scope, by name, to keep what
    // did not change.
    let running: HashMap<&str, &Route> = prev
        .map(|p| {
            p.proxy
                .routes()
                .iter()
                .filter(|r| r.tenant == *tenant)
                .map(|r| (&*r.name, &**r))
                .collect()
        })
        .unwrap_or_default();
    let mut routes = Vec::new();
    for (i, r) in scope.routes.iter().enumerate() {
        if *hung {
            break;
        }
        let name: Arc<str> = Arc::from(r.name.as_str());
        let mut chain = Vec::new();
        for (j, rf) in r.filters.iter().enumerate() {
            if *hung {
                break;
            }
            let Some(loaded) = modules.get(&Scoped::new(tenant.clone(), rf.name.as_str()).key())
            else {
                continue;
            };
            let fc = &scope.filters[&rf.name];
            let key = format!("routes[{i}].filters[{j}].config");
            let kept = |v: &CompiledVersion| {
                running
                    .get(&*name)
                    .and_then(|r| kept_version(r, j, v, &rf.config_json))
            };
            let stable = match kept(&loaded.current) {
                Some(kept) => Ok(kept),
                None => route_version(&name, &rf.config_json, fc, &loaded.current, metrics).await,
            };
            let hung_stable = matches!(stable, Err(RouteVersionError::Hung { .. }));
            let canary = match &loaded.canary {
                None => Ok(None),
                Some(_) if hung_stable => Ok(None),
                Some((e, c)) => match kept(e) {
                    Some(kept) => Ok(Some((c.clone(), kept))),
                    None => route_version(&name, &rf.config_json, fc, e, metrics)
                        .await
                        .map(|a| Some((c.clone(), a)))
                        .map_err(|m| (e.version, m)),
                },
            };
            match (stable, canary) {
                (Ok(stable), Ok(canary)) => chain.push(ChainFilter {
                    stable,
                    canary,
                    fail_open: fc.failure_policy == FailurePolicy::FailOpen,
                    seal: rf
                        .seal
                        .iter()
                        .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                        .collect(),
                }),
                (stable, canary) => {
                    let failed = [
                        stable.err().map(|e| (None, e)),
                        canary.err().map(|(v, e)| (Some(v), e)),
                    ];
                    for (canary, e) in failed.into_iter().flatten() {
                        *hung |= matches!(e, RouteVersionError::Hung { .. });
                        errors.push(ConfigError::new(&key, e.describe(&rf.name, canary)));
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
        let split: Vec<Arc<str>> = match &target {
            RouteTarget::Weighted(w) => w.clusters().iter().map(|c| c.name().clone()).collect(),
            _ => Vec::new(),
        };
        let translation = match crate::descriptors::translation(r, descriptors) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError::new(format!("routes[{i}].transcode"), e));
                continue;
            }
        };
        routes.push(RouteMatch {
            hosts: r.hosts.clone(),
            path: r.path.clone(),
            case_sensitive: r.case_sensitive,
            methods: r.methods.clone(),
            matchers: r.matchers.clone(),
            order: r.order,
            target: Arc::new(Route {
                metrics: RouteMetrics::new(metrics, tenant, &name, &primary, &split),
                name,
                tenant: tenant.clone(),
                target,
                chain,
                path_prefix: match &r.path {
                    wasmgate_config::PathMatch::Prefix(p) => Some(p.clone()),
                    _ => None,
                },
                prefix_rewrite: r.prefix_rewrite.clone(),
                reject_path_parameters: r.reject_path_parameters,
                timeout: r.timeout,
                cache: r.cache.clone(),
                quota: quota.clone(),
                translation,
            }),
        });
    }
    let table = TenantTable {
        tenant: tenant.clone(),
        hosts: scope.hosts.to_vec(),
        routes,
    };
    (table, clusters)
}

/// Errors of [`build`] as one list, a tenant's key paths under
/// `tenants.NAME.`.
pub(crate) fn flatten(errors: Vec<(TenantId, ConfigError)>) -> Vec<ConfigError> {
    errors
        .into_iter()
        .map(|(t, mut e)| {
            e.path = key_path(&t, &e.path);
            e
        })
        .collect()
}

/// What runs now, for [`build_apart`] to fall back on.
pub(crate) struct Running<'a> {
    pub(crate) config: &'a Config,
    pub(crate) filters: &'a BTreeMap<String, FilterVersions>,
}

/// Builds `config` with each tenant apart: a tenant whose part fails (a
/// module that does not load, a route config its filter refuses) goes back
/// to how it runs in `running` (out, if it is new there), its module files
/// not read again, and the build is tried again. What did not change is
/// kept, not rebuilt, so another try costs little. Returns the generation
/// and the tenants refused, each with its errors; fails when the operator's
/// own part does.
pub(crate) async fn build_apart(
    config: &mut Config,
    deps: &Deps,
    prev: Option<&Generation>,
    running: Option<Running<'_>>,
    filters: &mut BTreeMap<String, FilterVersions>,
    read_files: bool,
) -> Result<(Generation, wasmgate_config::tenant::Refused), Vec<ConfigError>> {
    let mut refused: wasmgate_config::tenant::Refused = Vec::new();
    let mut frozen = std::collections::HashSet::new();
    loop {
        let errors = match build(config, deps, prev, filters, read_files, &frozen).await {
            Ok(g) => return Ok((g, refused)),
            Err(errors) => errors,
        };
        if errors.iter().any(|(t, _)| t.is_default()) {
            return Err(flatten(errors));
        }
        let mut by_tenant: BTreeMap<TenantId, Vec<ConfigError>> = BTreeMap::new();
        for (t, e) in errors {
            by_tenant.entry(t).or_default().push(e);
        }
        for (t, errors) in by_tenant {
            let name = t.as_str().to_owned();
            let source = config
                .tenants
                .get(&name)
                .map_or_else(|| name.clone(), |c| c.source.clone());
            let back = running.as_ref().and_then(|r| r.config.tenants.get(&name));
            match back {
                // Failing as it runs (which it should not): out.
                Some(old) if !frozen.contains(&t) => {
                    config.tenants.insert(name.clone(), old.clone());
                    frozen.insert(t.clone());
                }
                _ => {
                    config.tenants.remove(&name);
                }
            }
            // Its filter store as it runs.
            let prefix = format!("{name}/");
            filters.retain(|k, _| !k.starts_with(&prefix));
            if let Some(r) = &running {
                for (k, v) in r.filters {
                    if k.starts_with(&prefix) {
                        filters.insert(k.clone(), v.clone());
                    }
                }
            }
            refused.push((name, wasmgate_config::ConfigErrors { source, errors }));
        }
    }
}
