//! Config reloads: SIGHUP, a watched file, `POST /config/reload`, `PUT /config`.

use super::{CLOSED, Control, Live, PENDING, one_line};
use crate::versions::retire;
use wasmgate_config::tenant::Refused;
use wasmgate_config::{Config, ConfigError, ConfigErrors};

/// Where a config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file (SIGHUP, a watched file, `POST /config/reload`).
    File,
    /// A document put through the management API.
    Api,
    /// A tenant put or removed through the management API: the main config
    /// stays where it came from.
    Tenants,
}

/// Why a tenant could not be put or removed through the API.
#[derive(Debug, thiserror::Error)]
pub enum TenantChangeError {
    /// `[tenants]` is not configured.
    #[error("this gateway takes no tenants: the config file has no [tenants] section")]
    NoTenancy,
    /// The tenant is its file's.
    #[error(
        "tenant {0:?} is managed by its file in the tenants folder; change the file (the API changes only API-managed tenants)"
    )]
    FileManaged(String),
    /// No such tenant.
    #[error("no tenant {0:?}")]
    Unknown(String),
    /// Refused, with every error.
    #[error("{0}")]
    Invalid(ConfigErrors),
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
    if old.cache != new.cache {
        fixed.push("cache");
    }
    if old.limits.listener() != new.limits.listener() {
        fixed.push("limits");
    }
    fixed
}

impl Live {
    /// Replaces the config with one put through the API: everything is
    /// built and validated first; on any error the running generation stays
    /// and every error is returned.
    pub async fn apply_config(&self, config: Config) -> Result<Refused, ConfigErrors> {
        self.apply_parsed(Ok((config, Vec::new())), Origin::Api)
            .await
    }

    /// Reads the config file at `path` (and the tenants' folder) and applies
    /// it. A tenant whose file is bad, or whose filters do not load, keeps
    /// running as it did; the others change.
    pub async fn reload_from(&self, path: &std::path::Path) -> Result<Refused, ConfigErrors> {
        let parsed = Config::load_beside(path, &self.config());
        self.apply_parsed(parsed, Origin::File).await
    }

    /// Applies a config that parsed (with the tenants refused as it was
    /// read); counts and logs the outcome either way. Returns every tenant
    /// refused, each with its errors.
    pub async fn apply_parsed(
        &self,
        parsed: Result<(Config, Refused), ConfigErrors>,
        origin: Origin,
    ) -> Result<Refused, ConfigErrors> {
        let mut control = self.control.lock().await;
        let result = match parsed {
            Ok((config, mut refused)) => {
                self.apply_locked(&mut control, config, origin)
                    .await
                    .map(|more| {
                        refused.extend(more);
                        refused
                    })
            }
            Err(e) => Err(e),
        };
        if let Ok(refused) = &result {
            for (tenant, e) in refused {
                self.deps
                    .metrics
                    .tenant_refusals
                    .get_or_create(&wasmgate_metrics::TenantLabels {
                        tenant: tenant.clone(),
                    })
                    .inc();
                tracing::error!(
                    tenant,
                    "tenant config refused, its running config stays: {}",
                    one_line(e)
                );
            }
        }
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.deps
            .metrics
            .config_reloads
            .get_or_create(&wasmgate_metrics::OutcomeLabels { outcome })
            .inc();
        match &result {
            Ok(_) => tracing::info!(source = %self.config().source, "config reloaded"),
            Err(e) => tracing::error!(
                "config reload rejected, the running config stays: {}",
                one_line(e)
            ),
        }
        result
    }

    /// Adds or replaces an API-managed tenant: validated and built alone,
    /// the others untouched. Refused for a file-managed one.
    pub async fn put_tenant(
        &self,
        tenant: wasmgate_config::TenantConfig,
    ) -> Result<(), TenantChangeError> {
        let mut control = self.control.lock().await;
        let mut config = (*self.config()).clone();
        if config.tenancy.is_none() {
            return Err(TenantChangeError::NoTenancy);
        }
        if let Some(t) = config.tenants.get(&tenant.name)
            && t.managed != wasmgate_config::Managed::Api
        {
            return Err(TenantChangeError::FileManaged(tenant.name));
        }
        let name = tenant.name.clone();
        config
            .admit_tenant(tenant)
            .map_err(TenantChangeError::Invalid)?;
        let refused = self
            .apply_locked(&mut control, config, Origin::Tenants)
            .await
            .map_err(TenantChangeError::Invalid)?;
        match refused.into_iter().find(|(t, _)| *t == name) {
            Some((_, e)) => Err(TenantChangeError::Invalid(e)),
            None => {
                tracing::info!(
                    tenant = name.as_str(),
                    "tenant applied through the admin API"
                );
                Ok(())
            }
        }
    }

    /// Removes an API-managed tenant; its requests in flight finish, then
    /// its state is cleared and its tokens revoked.
    pub async fn remove_tenant(&self, name: &str) -> Result<(), TenantChangeError> {
        let mut control = self.control.lock().await;
        let mut config = (*self.config()).clone();
        match config.tenants.get(name) {
            None => return Err(TenantChangeError::Unknown(name.to_owned())),
            Some(t) if t.managed != wasmgate_config::Managed::Api => {
                return Err(TenantChangeError::FileManaged(name.to_owned()));
            }
            Some(_) => {}
        }
        config.tenants.remove(name);
        let uploads = crate::tenant_admin::uploads_dir(&config, name);
        self.apply_locked(&mut control, config, Origin::Tenants)
            .await
            .map_err(TenantChangeError::Invalid)?;
        // Its uploads go with it (a module in use stays loaded until its
        // last request ends).
        if let Some(dir) = uploads
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(tenant = name, "its uploads were not removed: {e}");
        }
        Ok(())
    }

    async fn apply_locked(
        &self,
        control: &mut Control,
        mut config: Config,
        origin: Origin,
    ) -> Result<Refused, ConfigErrors> {
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
        let started = std::time::Instant::now();
        let mut filters = (*self.filters.load_full()).clone();
        for (name, st) in &mut filters {
            if config.filter_by_key(name).is_none() {
                retire(st);
            }
        }
        let (proxy, prev, refused) = self
            .build_next_apart(&mut config, &mut filters, origin != Origin::Tenants)
            .await
            .map_err(fail)?;
        let built = started.elapsed();
        let from_api = match origin {
            Origin::Api => true,
            Origin::File => false,
            Origin::Tenants => control.from_api,
        };
        let from_file = (origin == Origin::File).then(|| config.clone());
        let running = self.config();
        let config_tenants: std::collections::BTreeSet<String> =
            config.tenants.keys().cloned().collect();
        let removed: Vec<wasmgate_config::Scoped> = running
            .scopes()
            .flat_map(|s| {
                s.filters
                    .keys()
                    .map(move |n| wasmgate_config::Scoped::new(s.tenant.clone(), n.as_str()))
            })
            .filter(|n| config.filter_by_key(&n.key()).is_none())
            .collect();
        self.commit(
            control,
            Some((proxy, &prev)),
            filters,
            from_api,
            config,
            false,
        )
        .await
        .map_err(|m| fail(vec![ConfigError::new("admin.data_dir", m)]))?;
        tracing::debug!(
            ?origin,
            build_ms = built.as_secs_f64() * 1e3,
            commit_ms = (started.elapsed() - built).as_secs_f64() * 1e3,
            "change built and committed"
        );
        if let Some(file) = from_file {
            self.file_config.store(std::sync::Arc::new(file));
        }
        // Its host-held rate-limit state leaves with a removed filter.
        for name in removed {
            self.deps.engine.services().forget_buckets(&name);
        }
        // A tenant that left takes its host-held state with it, once its
        // requests in flight (on the generation they started on) are done.
        let gone: Vec<(
            String,
            Vec<std::sync::Weak<wasmgate_proxy::route::Route>>,
            TenantSeries,
        )> = running
            .tenants
            .keys()
            .filter(|t| !config_tenants.contains(*t))
            .map(|name| {
                let id = wasmgate_config::TenantId(std::sync::Arc::from(name.as_str()));
                let routes = prev
                    .proxy
                    .routes()
                    .iter()
                    .filter(|r| r.tenant == id)
                    .map(std::sync::Arc::downgrade)
                    .collect();
                let endpoints = prev
                    .proxy
                    .clusters
                    .get(&id)
                    .into_iter()
                    .flat_map(|m| m.iter())
                    .flat_map(|(c, cluster)| {
                        cluster
                            .endpoints()
                            .into_iter()
                            .map(move |e| (c.clone(), e.authority.to_string()))
                    })
                    .collect();
                (
                    name.clone(),
                    routes,
                    series(&running.tenants[name], endpoints),
                )
            })
            .collect();
        drop(prev);
        for (name, routes, had) in gone {
            if let Err(e) = self.tokens.forget(&name) {
                tracing::error!(tenant = name.as_str(), "its tokens were not revoked: {e}");
            }
            let clear = {
                let services = self.deps.engine.services().clone();
                let metrics = self.deps.metrics.clone();
                move || {
                    let id = wasmgate_config::TenantId(std::sync::Arc::from(name.as_str()));
                    services.forget_tenant(&id);
                    metrics.forget_tenant(&name, &had);
                    tracing::info!(
                        tenant = name.as_str(),
                        "tenant removed; its state is cleared"
                    );
                }
            };
            let drained = move || routes.iter().all(|r| r.strong_count() == 0);
            if drained() {
                clear();
                continue;
            }
            // Requests still run on its routes: clear once they are done
            // (or after the longest a request may take, and a margin).
            let deadline = tokio::time::Instant::now() + running.limits.request_timeout * 2;
            tokio::spawn(async move {
                while !drained() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                clear();
            });
        }
        Ok(refused)
    }
}

use wasmgate_metrics::TenantSeries;

/// The series tenant `t` had, for [`wasmgate_metrics::Metrics::forget_tenant`].
fn series(t: &wasmgate_config::TenantConfig, endpoints: Vec<(String, String)>) -> TenantSeries {
    let mut limits = vec!["reroute_clusters", "seal", "log_lines_per_second"];
    limits.extend(
        wasmgate_engine::limits::LimitCounts::default()
            .all()
            .map(|(l, _)| l),
    );
    TenantSeries {
        routes: t
            .routes
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.filters.iter().map(|f| f.name.clone()).collect(),
                )
            })
            .collect(),
        clusters: t.clusters.keys().cloned().collect(),
        endpoints,
        filters: t.filters.keys().cloned().collect(),
        outcomes: std::iter::once("ok")
            .chain(wasmgate_engine::FilterFailure::CODES)
            .collect(),
        limits,
    }
}
