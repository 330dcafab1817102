//! Assembles a running gateway from a validated [`Config`]: compiles the
//! filters, validates every route's filter config with the filter's own `init`,
//! builds clusters and the route table, then serves.
//!
//! Building is all-or-nothing: any error is reported (with its key path) and
//! nothing starts half-configured.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::chain::{ChainFilter, Needs};
use crate::config::FailurePolicy;
use crate::config::{Config, ConfigError, ConfigErrors, Isolation};
use crate::filter::services::{Outbound, OutboundGrant};
use crate::filter::{FilterEngine, FilterModule, InstancePool, Limits, PoolPolicy};
use crate::metrics::Metrics;
use crate::normalize::PathPolicy;
use crate::outbound::ClusterCaller;
use crate::proxy::{Proxy, Route, RouteMetrics, RouteTarget, Split};
use crate::router::{RouteMatch, RouteTable};
use crate::server;
use crate::tls::TlsTerminator;
use crate::upstream::Cluster;
use crate::upstream::dns::{Resolve, SystemResolver};

/// A gateway ready to serve: config loaded, filters compiled, routes built.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    proxy: Arc<Proxy>,
    tls: Option<Arc<TlsTerminator>>,
    metrics: Arc<Metrics>,
    resolver: Arc<dyn Resolve>,
    // Keeps the engine (and its epoch ticker) alive as long as the gateway.
    _engine: Arc<FilterEngine>,
}

impl Gateway {
    /// Builds everything the config describes. Filter files are read and
    /// compiled, and each route's filter config is run through the filter's
    /// `init`; every problem found is returned with its key path.
    pub async fn build(config: Config) -> Result<Gateway, ConfigErrors> {
        Gateway::build_with(config, Arc::new(SystemResolver)).await
    }

    /// [`Gateway::build`] with another resolver for endpoints given as host
    /// names (tests use one that answers from a table).
    pub async fn build_with(
        config: Config,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Gateway, ConfigErrors> {
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            source: config.source.clone(),
            errors,
        };
        let engine = FilterEngine::new(&config.engine)
            .map_err(|e| fail(vec![ConfigError::new("engine", format!("{e:#}"))]))?;
        let engine = Arc::new(engine);

        let metrics = Metrics::with_filter_metrics(engine.services().metrics.clone());
        let mut errors = Vec::new();
        let access_log = match &config.access_log {
            Some(target) => match AccessLog::start(target, metrics.clone()) {
                Ok(log) => Some(log),
                Err(e) => {
                    errors.push(ConfigError::new(
                        "access_log.path",
                        format!("cannot open: {e}"),
                    ));
                    None
                }
            },
            None => None,
        };
        let mut clusters: HashMap<String, Arc<Cluster>> = HashMap::new();
        for (n, c) in &config.clusters {
            match Cluster::new(n, c, &metrics, &*resolver).await {
                Ok(cluster) => {
                    clusters.insert(n.clone(), Arc::new(cluster));
                }
                Err(e) => errors.push(ConfigError::new(format!("clusters.{n}"), e)),
            }
        }

        // Filters call clusters through the same `Cluster`s as routes.
        let caller: Arc<dyn Outbound> = Arc::new(ClusterCaller::new(
            clusters.clone(),
            config.limits.max_buffered_body,
            metrics.clone(),
        ));
        let mut modules: BTreeMap<&str, Arc<FilterModule>> = BTreeMap::new();
        for (name, f) in &config.filters {
            let limits = Limits {
                memory: f.memory_limit,
                cpu: f.cpu_limit,
            };
            match engine.load(name, &f.path, limits) {
                Ok(mut m) => {
                    let outbound = match &f.outbound_clusters {
                        Some(list) if list.is_empty() => None,
                        list => Some(OutboundGrant {
                            sender: caller.clone(),
                            clusters: list.as_ref().map(|l| Arc::new(l.iter().cloned().collect())),
                            max_calls: f.max_outbound_calls,
                            timeout: f.outbound_timeout,
                        }),
                    };
                    m.grant(f.kv_quota, f.vars.clone(), outbound);
                    modules.insert(name, Arc::new(m));
                }
                Err(e) => errors.push(ConfigError::new(
                    format!("filters.{name}.path"),
                    e.to_string(),
                )),
            }
        }

        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let name: Arc<str> = Arc::from(r.name.as_str());
            let mut chain = Vec::new();
            for (j, rf) in r.filters.iter().enumerate() {
                let Some(module) = modules.get(rf.name.as_str()) else {
                    continue;
                };
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
                    metrics: RouteMetrics::new(&metrics, &name, &primary),
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
        let tls = match &config.server.tls {
            Some(t) => match TlsTerminator::new(t.clone()) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    errors.push(ConfigError::new("", e));
                    None
                }
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(fail(errors));
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
            tls: tls.clone(),
            overload: Arc::new(crate::overload::OverloadGuard::new(
                &config.overload,
                &metrics,
            )),
        };
        let proxy = Arc::new(Proxy::new(
            RouteTable::new(routes),
            clusters,
            metrics.clone(),
            access_log,
            policy,
        ));
        Ok(Gateway {
            config,
            proxy,
            tls,
            metrics,
            resolver,
            _engine: engine,
        })
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The config the gateway was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Binds the configured listen address and serves until `shutdown` flips
    /// to true; then stops accepting and lets open requests finish.
    pub async fn start(self) -> std::io::Result<RunningGateway> {
        let listener = TcpListener::bind(self.config.server.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        // The admin listener outlives the drain, so `/ready` can say so.
        let (admin_tx, admin_rx) = watch::channel(false);
        let (admin_addr, admin) = match &self.config.admin {
            Some(cfg) => {
                let admin_listener = TcpListener::bind(cfg.listen).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("admin listener {}: {e}", cfg.listen))
                })?;
                let admin_addr = admin_listener.local_addr()?;
                let state = Arc::new(AdminState {
                    config: cfg.clone(),
                    proxy: self.proxy.clone(),
                    ready: AtomicBool::new(true),
                });
                tokio::spawn(admin::serve(admin_listener, state.clone(), admin_rx));
                tracing::info!(addr = %admin_addr, "admin listening");
                (Some(admin_addr), Some(state))
            }
            None => (None, None),
        };
        let proxy = self.proxy.clone();
        let self_proxy = self.proxy.clone();
        let metrics = self.metrics.clone();
        let limits = self.config.limits;
        let tls = self.tls.clone();
        if let Some(tls) = &tls {
            tls.spawn_reloader();
        }
        self.proxy.overload().spawn();
        self._engine
            .services()
            .spawn_sweeper(std::time::Duration::from_secs(10));
        for cluster in self.proxy.clusters.values() {
            crate::upstream::health::spawn(cluster);
            crate::upstream::dns::spawn(cluster, self.resolver.clone());
        }
        let task = tokio::spawn(async move {
            let options = server::ListenerOptions {
                limits,
                tls,
                proxy_protocol: self.config.server.proxy_protocol,
            };
            server::serve(listener, proxy, metrics, options, rx).await;
            drop(self);
        });
        tracing::info!(%addr, "wasmgate listening");
        Ok(RunningGateway {
            proxy: self_proxy,
            addr,
            admin_addr,
            admin,
            shutdown: tx,
            admin_shutdown: admin_tx,
            task,
        })
    }
}

/// A gateway serving on a socket.
#[derive(Debug)]
pub struct RunningGateway {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    admin: Option<Arc<AdminState>>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// The address the proxy listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics in Prometheus text, as `/metrics` serves them.
    pub fn metrics_text(&self) -> String {
        self.proxy.metrics_text()
    }

    /// The admin listener's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(self) {
        if let Some(admin) = &self.admin {
            admin.ready.store(false, Ordering::Relaxed);
        }
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let _ = self.admin_shutdown.send(true);
    }
}
