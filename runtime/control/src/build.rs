//! Building a generation: compiling each filter version the config and the
//! store ask for (or keeping it from the running generation), running every
//! route's `init`, making the pools, clusters and route table; all errors
//! collected with their key paths.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::versions::{FilterVersions, StoredVersion, VersionSource};
use wasmgate_config::{Config, ConfigError, FailurePolicy, FilterConfig, Isolation};
use wasmgate_engine::edits::{Interest, Needs};
use wasmgate_engine::services::{ClusterGrant, HeaderBound, HeaderBounds, OutboundGrant};
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
use wasmgate_proxy::router::{RouteMatch, RouteTable};
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
    // Every name is in the default tenant's scope until tenants exist.
    let owned_name = wasmgate_config::Scoped::default_tenant(name);
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
    let reroute = ClusterGrant::from_config(f.reroute_clusters.as_deref());
    m.grant(f.kv_quota, vars, outbound, reroute);
    m.set_log_rate(f.log_lines_per_second);
    m.set_rate_limit_keys(f.rate_limit_keys);
    m.set_header_bounds(HeaderBounds {
        read_request: HeaderBound::from_config(f.read_request_headers.as_deref()),
        write_request: HeaderBound::from_config(f.write_request_headers.as_deref()),
        read_response: HeaderBound::from_config(f.read_response_headers.as_deref()),
        write_response: HeaderBound::from_config(f.write_response_headers.as_deref()),
    });
    Ok(CompiledVersion {
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
pub(crate) async fn resolve(
    name: &str,
    f: &FilterConfig,
    deps: &Deps,
    prev: Option<&Generation>,
    st: &mut FilterVersions,
    read_files: bool,
) -> Result<RunningVersions, ConfigError> {
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
            let key = format!("filters.{name} canary");
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
/// collected, with its key path.
pub(crate) async fn build(
    config: &Config,
    deps: &Deps,
    prev: Option<&Generation>,
    filters: &mut BTreeMap<String, FilterVersions>,
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

    let mut modules: BTreeMap<String, RunningVersions> = BTreeMap::new();
    for (name, f) in &config.filters {
        let st = filters.entry(name.clone()).or_default();
        match resolve(name, f, deps, prev, st, read_files).await {
            Ok(m) => {
                modules.insert(name.clone(), m);
            }
            Err(e) => errors.push(e),
        }
    }

    // Every (route, filter) pool, a canary's included, must fit the engine's
    // instances (validation counted the pools without canaries), with one
    // spare for probes: a canary that does not fit is refused, not left to
    // take other filters' instances.
    let needed: u64 = config
        .routes
        .iter()
        .flat_map(|r| &r.filters)
        .filter_map(|rf| {
            let arms = 1 + u64::from(modules.get(&rf.name)?.canary.is_some());
            Some(arms * u64::from(config.filters.get(&rf.name)?.pool_size))
        })
        .sum();
    if needed + 1 > u64::from(config.engine.max_instances) {
        let canaries: Vec<&str> = modules
            .iter()
            .filter(|(_, m)| m.canary.is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        errors.push(ConfigError::new(
            "engine.max_instances",
            format!(
                "{} is too small: with the canaries of {} the filter pools can hold {needed} \
                 instances, plus one for validation; end a canary, or raise engine.max_instances",
                config.engine.max_instances,
                canaries.join(", ")
            ),
        ));
    }

    // The running generation's routes, by name, to keep what did not change.
    let running: HashMap<&str, &Route> = prev
        .map(|p| p.proxy.routes().iter().map(|r| (&*r.name, &**r)).collect())
        .unwrap_or_default();
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
                        hung |= matches!(e, RouteVersionError::Hung { .. });
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
        routes.push(RouteMatch {
            hosts: r.hosts.clone(),
            path: r.path.clone(),
            case_sensitive: r.case_sensitive,
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
                reject_path_parameters: r.reject_path_parameters,
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
