//! Assembles a running gateway from a validated [`Config`]: the parts made
//! once (the filter engine, metrics, the TLS terminator, the overload guard)
//! and the first generation of routes, clusters and filter chains (built by
//! [`crate::build`] for [`crate::live::Live`], which also replaces it while
//! the gateway runs); then serves.
//!
//! Building is all-or-nothing: any error is reported (with its key path) and
//! nothing starts half-configured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::live::{Deps, Live};
use crate::store::{DataDir, OpenError, Saved};
use crate::watch::FileWatcher;
use wasmgate_config::{Config, ConfigError, ConfigErrors};
use wasmgate_engine::FilterEngine;
use wasmgate_metrics::Metrics;
use wasmgate_proxy::outbound::ClusterCaller;
use wasmgate_proxy::overload::OverloadGuard;
use wasmgate_proxy::server;
use wasmgate_proxy::tls::TlsTerminator;
use wasmgate_proxy::upstream::dns::{Resolve, SystemResolver};

/// A gateway ready to serve: config loaded, filters compiled, routes built.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    inherited: Inherited,
    /// The worker runtimes that accept and serve connections
    /// (thread-per-core); none: the runtime `start` runs on.
    workers: Vec<tokio::runtime::Handle>,
}

/// Listening sockets handed over by whoever started the process (systemd
/// socket activation, or a previous wasmgate's supervisor): used instead of
/// binding, so an old and a new process can share them and a restart
/// refuses no connection.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Takes the place of `server.listen`.
    pub proxy: Option<std::net::TcpListener>,
    /// Takes the place of `admin.listen`.
    pub admin: Option<std::net::TcpListener>,
}

impl Inherited {
    /// The sockets passed by the socket-activation protocol (`LISTEN_FDS`,
    /// and `LISTEN_PID` if set): the first for the proxy, the second for the
    /// admin listener. Call it before any thread starts: it clears those
    /// variables from the environment.
    pub fn from_env() -> std::io::Result<Inherited> {
        let given = std::env::var("LISTEN_FDS").ok();
        let mut fds = listenfd::ListenFd::from_env();
        if given.is_some() && fds.len() == 0 {
            // Not ours (`LISTEN_PID` names another process) or not a number:
            // said, so a bind error that follows is not a mystery.
            tracing::warn!(
                "LISTEN_FDS={} is set but passes no socket to this process; binding the \
                 configured addresses",
                given.unwrap_or_default()
            );
        }
        let inherited = Inherited {
            proxy: fds.take_tcp_listener(0)?,
            admin: fds.take_tcp_listener(1)?,
        };
        for (what, l) in [("proxy", &inherited.proxy), ("admin", &inherited.admin)] {
            if let Some(l) = l
                && !socket2::SockRef::from(l).is_listener()?
            {
                return Err(std::io::Error::other(format!(
                    "the inherited {what} socket (LISTEN_FDS) is not listening"
                )));
            }
        }
        Ok(inherited)
    }
}

/// An inherited socket as a tokio listener, or a new one bound to `addr`.
async fn open_listener(
    inherited: Option<std::net::TcpListener>,
    addr: SocketAddr,
    what: &str,
) -> std::io::Result<TcpListener> {
    match inherited {
        Some(l) => {
            l.set_nonblocking(true)?;
            let l = TcpListener::from_std(l)?;
            tracing::info!(
                addr = %l.local_addr()?,
                "{what}: using the inherited socket (its listen setting is not used)"
            );
            Ok(l)
        }
        None => TcpListener::bind(addr).await,
    }
}

/// The proxy's listening sockets, one per accept loop (`n`).
///
/// An inherited socket is shared: every loop accepts from its own
/// descriptor of it, so a process started beside this one on the same
/// socket (a zero-downtime restart) still takes over all of its queue.
/// Otherwise each loop gets a socket of its own bound with `SO_REUSEPORT`
/// to the same address, and the kernel spreads new connections over them
/// (the first binds, so port 0 picks one port for all). Only a process of
/// the same user can join a `SO_REUSEPORT` group on Linux.
fn open_proxy_listeners(
    inherited: Option<std::net::TcpListener>,
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let n = n.max(1);
    if let Some(l) = inherited {
        tracing::info!(
            addr = %l.local_addr()?,
            "proxy: using the inherited socket (its listen setting is not used)"
        );
        let mut all = Vec::with_capacity(n);
        for _ in 1..n {
            all.push(l.try_clone()?);
        }
        all.push(l);
        return Ok(all);
    }
    let bind = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // As tokio's own bind: a restart need not wait out TIME_WAIT.
        socket.set_reuse_address(true)?;
        if n > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    let first = bind(addr)?;
    // Port 0 took a port: the others join that one.
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind(addr)?);
    }
    Ok(all)
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
        Gateway::build_inner(config, resolver, false).await
    }

    /// [`Gateway::build`] for a process taking over the listening sockets of
    /// one still running: when that one holds the data directory, this one
    /// builds from what the directory says (read without the lock), serves,
    /// and takes the directory when the other releases it as it starts
    /// draining (see [`Live`]); until then it refuses changes.
    pub async fn build_taking_over(config: Config) -> Result<Gateway, ConfigErrors> {
        Gateway::build_inner(config, Arc::new(SystemResolver), true).await
    }

    async fn build_inner(
        config: Config,
        resolver: Arc<dyn Resolve>,
        taking_over: bool,
    ) -> Result<Gateway, ConfigErrors> {
        let data_dir = config.admin.as_ref().and_then(|a| a.data_dir.clone());
        let mut pending = None;
        let mut data = match data_dir {
            None => None,
            Some(path) => {
                let opened = match DataDir::open(&path) {
                    Ok(d) => Ok(d),
                    Err(OpenError::Locked(_)) if taking_over => {
                        tracing::warn!(
                            path = %path.display(),
                            "the data directory is held by the process this one takes over \
                             from: starting from what it holds; changes are refused until that \
                             process releases it (as it starts draining)"
                        );
                        pending = Some(path.clone());
                        Ok(DataDir::read_only(&path))
                    }
                    Err(OpenError::Locked(p)) => Err(format!(
                        "{p} is in use by another wasmgate process; two gateways cannot share \
                         one (a process started on inherited sockets takes it over instead)"
                    )),
                    Err(OpenError::Other(m)) => Err(m),
                };
                let (dir, saved) =
                    opened
                        .and_then(|d| d.load().map(|s| (d, s)))
                        .map_err(|m| ConfigErrors {
                            source: config.source.clone(),
                            errors: vec![ConfigError::new("admin.data_dir", m)],
                        })?;
                Some((dir, saved))
            }
        };
        // What the directory held, to tell at take-over whether it changed.
        let pending = pending.map(|path| crate::live::Pending {
            path,
            started_from: data
                .as_ref()
                .map(|(_, s)| serde_json::to_string(s).unwrap_or_default())
                .unwrap_or_default(),
        });
        let file_config = config.clone();
        let config = match data.as_mut() {
            Some((dir, saved)) => {
                let mut config = api_config(config, dir, saved)?;
                api_tenants(&mut config, dir, saved);
                config
            }
            None => config,
        };
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            source: config.source.clone(),
            errors,
        };
        let engine = FilterEngine::new(&config.engine)
            .map_err(|e| fail(vec![ConfigError::new("engine", format!("{e:#}"))]))?;
        let engine = Arc::new(engine);
        let metrics = Metrics::with_filter_metrics(engine.services().metrics.clone());
        let mut errors = Vec::new();
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
        let deps = Deps {
            engine,
            metrics: metrics.clone(),
            resolver,
            overload: Arc::new(OverloadGuard::new(&config.overload, &metrics)),
            tls,
            caller: Arc::new(ClusterCaller::new(
                config.limits.max_buffered_body,
                metrics.clone(),
            )),
            guard: Arc::default(),
            response_cache: Arc::new(wasmgate_proxy::response_cache::ResponseCache::new(
                &config.cache,
            )),
            descriptors: Arc::default(),
        };
        let live = Live::start(config.clone(), file_config, data, pending, deps).await;
        match live {
            Ok(live) if errors.is_empty() => {
                // Only a gateway that built whole writes its data directory.
                live.save_initial()
                    .await
                    .map_err(|m| fail(vec![ConfigError::new("admin.data_dir", m)]))?;
                // As it was applied: a tenant whose filters did not load is
                // not in it.
                let config = (*live.config()).clone();
                Ok(Gateway {
                    config,
                    live: Arc::new(live),
                    metrics,
                    inherited: Inherited::default(),
                    workers: Vec::new(),
                })
            }
            Ok(_) => Err(fail(errors)),
            Err(more) => {
                errors.extend(more);
                Err(fail(errors))
            }
        }
    }

    /// Serves on these sockets instead of binding the configured addresses.
    pub fn with_inherited(mut self, inherited: Inherited) -> Gateway {
        self.inherited = inherited;
        self
    }

    /// Accepts and serves connections on these worker runtimes, each on a
    /// listener of its own (thread-per-core, see
    /// [`wasmgate_proxy::workers`]), instead of the runtime `start` is
    /// called on (which keeps the admin API, reloads and health checks).
    pub fn with_workers(mut self, workers: Vec<tokio::runtime::Handle>) -> Gateway {
        self.workers = workers;
        self
    }

    /// Checks `config` as [`Gateway::build`] would, without opening its data
    /// directory: the file is what is checked, and a running gateway's data
    /// directory is left alone.
    pub async fn check(mut config: Config) -> Result<Gateway, ConfigErrors> {
        if let Some(admin) = config.admin.as_mut() {
            admin.data_dir = None;
        }
        Gateway::build(config).await
    }

    /// The config the gateway was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Binds the configured listen address and serves until `shutdown` flips
    /// to true; then stops accepting and lets open requests finish.
    pub async fn start(mut self) -> std::io::Result<RunningGateway> {
        let listeners = open_proxy_listeners(
            self.inherited.proxy.take(),
            self.config.server.listen,
            self.workers.len(),
        )?;
        let addr = listeners[0].local_addr()?;
        let (tx, rx) = watch::channel(false);
        // The admin listener outlives the drain, so `/ready` can say so.
        let (admin_tx, admin_rx) = watch::channel(false);
        let (admin_addr, admin) = match &self.config.admin {
            Some(cfg) => {
                let admin_listener =
                    open_listener(self.inherited.admin.take(), cfg.listen, "admin")
                        .await
                        .map_err(|e| {
                            std::io::Error::new(
                                e.kind(),
                                format!("admin listener {}: {e}", cfg.listen),
                            )
                        })?;
                let admin_addr = admin_listener.local_addr()?;
                let state = Arc::new(AdminState {
                    config: cfg.clone(),
                    header_read_timeout: self.config.limits.header_read_timeout,
                    live: self.live.clone(),
                    ready: AtomicBool::new(true),
                });
                tokio::spawn(admin::serve(admin_listener, state.clone(), admin_rx));
                tracing::info!(addr = %admin_addr, "admin listening");
                (Some(admin_addr), Some(state))
            }
            None => {
                if self.inherited.admin.take().is_some() {
                    tracing::warn!("a second socket was passed, but there is no [admin]: closed");
                }
                (None, None)
            }
        };
        let live = self.live.clone();
        let metrics = self.metrics.clone();
        let limits = self.config.limits;
        let deps = live.deps();
        let tls = deps.tls.clone();
        if let Some(tls) = &tls {
            tls.spawn_reloader();
        }
        deps.overload.spawn();
        deps.engine
            .services()
            .spawn_sweeper(std::time::Duration::from_secs(10));
        live.spawn_tasks();
        let watcher = match self.config.watch.enabled {
            true => Some(FileWatcher::start(live.clone(), &self.config.watch)?),
            false => None,
        };
        let options = server::ListenerOptions {
            limits,
            tls,
            proxy_protocol: self
                .config
                .server
                .proxy_protocol
                .then(|| self.config.server.proxy_protocol_from.clone().into()),
            drain_timeout: self.config.server.drain_timeout,
            overload: deps.overload.clone(),
        };
        let acceptors = match self.workers.len() {
            0 => listeners
                .into_iter()
                .map(|listener| server::Acceptor {
                    listener,
                    worker: None,
                })
                .collect(),
            _ => listeners
                .into_iter()
                .zip(self.workers.iter().cloned().enumerate())
                .map(|(listener, worker)| server::Acceptor {
                    listener,
                    worker: Some(worker),
                })
                .collect(),
        };
        let task = tokio::spawn(server::serve(
            acceptors,
            live.current().clone(),
            metrics,
            options,
            rx,
        ));
        tracing::info!(%addr, workers = self.workers.len().max(1), "wasmgate listening");
        Ok(RunningGateway {
            live,
            addr,
            admin_addr,
            admin,
            shutdown: tx,
            admin_shutdown: admin_tx,
            task,
            watcher,
        })
    }
}

/// A gateway serving on a socket.
#[derive(Debug)]
pub struct RunningGateway {
    live: Arc<Live>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    admin: Option<Arc<AdminState>>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    watcher: Option<FileWatcher>,
}

impl RunningGateway {
    /// The address the proxy listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics in Prometheus text, as `/metrics` serves them.
    pub fn metrics_text(&self) -> String {
        self.live.sample_metrics();
        self.live.proxy().metrics_text()
    }

    /// The live configuration: reload it, swap filter modules.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The admin listener's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(self) {
        // A build in progress (a reload whose filter is slow to start, say)
        // is abandoned rather than waited for.
        self.live.abandon_builds();
        // No reload starts during the drain.
        if let Some(w) = self.watcher {
            w.stop().await;
        }
        if let Some(admin) = &self.admin {
            admin.ready.store(false, Ordering::Relaxed);
        }
        // No change is taken while draining, and the data directory is
        // free for the next process.
        self.live.close().await;
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let _ = self.admin_shutdown.send(true);
    }
}

/// The config to start from: the one last put through the admin API, when
/// the data directory kept one and the file's restart-only sections have not
/// changed since (a changed `[server]` or `[admin]` in the file, say a new
/// token, means the operator restarted to apply it: the file wins, and the
/// kept config is dropped, with a warning).
pub(crate) fn api_config(
    file: Config,
    dir: &DataDir,
    saved: &mut Saved,
) -> Result<Config, ConfigErrors> {
    let Some(text) = &saved.config else {
        return Ok(file);
    };
    let source = format!(
        "{} (the config applied through the admin API)",
        dir.path().join("state.json").display()
    );
    let mut kept = Config::parse_without_secrets(text, &source, &file.base)?;
    // The file may have narrowed what an API config may reach since.
    let reach = kept.api_reach_errors(&file);
    if !reach.is_empty() {
        tracing::warn!(
            file = %file.source,
            "the config put through the admin API names what the file no longer allows ({}); \
             starting from the file, and dropping the config kept in {source}",
            reach
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        );
        saved.config = None;
        return Ok(file);
    }
    kept.read_secrets().map_err(|errors| ConfigErrors {
        source: source.clone(),
        errors,
    })?;
    let changed = crate::live::restart_only_changes(&kept, &file);
    if !changed.is_empty() {
        tracing::warn!(
            file = %file.source,
            "the file's [{}] changed since a config was put through the admin API; \
             starting from the file, and dropping the config kept in {source}",
            changed.join("], [")
        );
        saved.config = None;
        return Ok(file);
    }
    tracing::warn!(
        file = %file.source,
        "starting with the config last applied through the admin API, kept in {source}; \
         SIGHUP or POST /config/reload returns to the file"
    );
    // Reloads still re-read the file the gateway was started with.
    kept.source.clone_from(&file.source);
    // The tenants are not part of the main config: the file's stay.
    if kept.tenancy.is_some() {
        kept.tenants = file.tenants;
    }
    Ok(kept)
}

/// Adds the tenants put through the API that `saved` kept; one that no
/// longer fits (its names taken by a file-managed tenant since, say) is
/// left out, with a warning.
pub(crate) fn api_tenants(config: &mut Config, dir: &DataDir, saved: &Saved) {
    if config.tenancy.is_none() {
        return;
    }
    for (name, text) in &saved.tenants {
        let source = format!(
            "{} (tenant {name:?}, put through the admin API)",
            dir.path().join("state.json").display()
        );
        let uploads = crate::tenant_admin::uploads_dir(config, name)
            .unwrap_or_else(|| dir.path().join("uploads").join(name));
        let parsed = wasmgate_config::TenantConfig::parse(
            name,
            text,
            &source,
            &uploads,
            wasmgate_config::Managed::Api,
            &config.engine,
        )
        .and_then(|mut t| {
            let errors = t.resolve_uploads(&uploads);
            match errors.is_empty() {
                true => Ok(t),
                false => Err(ConfigErrors {
                    source: source.clone(),
                    errors,
                }),
            }
        });
        let admitted = parsed.and_then(|t| match config.tenants.get(name) {
            Some(_) => Err(ConfigErrors {
                source: source.clone(),
                errors: vec![ConfigError::new(
                    "",
                    "a tenant's file of that name exists now",
                )],
            }),
            None => config.admit_tenant(t),
        });
        if let Err(e) = admitted {
            tracing::warn!(
                tenant = name.as_str(),
                "the tenant kept from the admin API is left out: {e}"
            );
        }
    }
}
